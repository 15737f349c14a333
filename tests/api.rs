//! The public API's error paths that need no GPU: run-time configs, shape binding, the
//! no-driver case. Each bad input must be a typed error naming what is wrong, never a panic.

use flashcore::kernels::attention;
use flashcore::{bind_shapes, Config, Error};

fn bind(shapes: [&[usize]; 4]) -> Result<flashcore::Binding, Error> {
    bind_with(&attention::CONFIG, shapes)
}

fn bind_with(config: &Config, shapes: [&[usize]; 4]) -> Result<flashcore::Binding, Error> {
    let kernel = attention::ir(config).unwrap();
    let mut all: Vec<Option<&[usize]>> = shapes.iter().map(|s| Some(*s)).collect();
    all.push(None); // scale
    bind_shapes(&kernel, &all)
}

#[test]
fn good_shapes_bind_dims_and_count_work_items() {
    let s: &[usize] = &[2, 3, 256, 64];
    let b = bind([s, s, s, s]).unwrap();
    assert_eq!(b.dims, vec![2, 3, 256, 3, 256]);
    assert_eq!(b.work_items, 2 * 3 * (256 / 64));
    // Cross-attention: K/V have their own sequence length SK.
    let kv: &[usize] = &[2, 3, 1000, 64];
    let b = bind([s, kv, kv, s]).unwrap();
    assert_eq!(b.dims, vec![2, 3, 256, 3, 1000]);
    // Grouped-query attention: 3 query heads share 1 K/V head.
    let kv: &[usize] = &[2, 1, 256, 64];
    assert_eq!(bind([s, kv, kv, s]).unwrap().dims, vec![2, 3, 256, 1, 256]);
}

#[test]
fn query_heads_that_are_not_a_multiple_of_kv_heads_are_an_error_naming_k() {
    let (q, kv): (&[usize], &[usize]) = (&[1, 6, 128, 64], &[1, 4, 128, 64]);
    let err = bind([q, kv, kv, q]).unwrap_err().to_string();
    assert!(
        err.contains("argument `k`") && err.contains("`H` = 6 query heads are not a multiple of `HKV` = 4"),
        "{err}"
    );
}

#[test]
fn bad_shapes_are_errors_that_name_the_argument() {
    let good: &[usize] = &[1, 8, 512, 64];
    let cases: [([&[usize]; 4], &str); 4] = [
        ([good, &[1, 8, 256, 64], good, good], "`SK` is 512 here but 256 in `k`"),
        ([good, good, &[1, 8, 512, 128], good], "head dim is 128"),
        ([good, good, good, &[8, 512, 64]], "expected 4 axes"),
        ([good, good, good, &[2, 8, 512, 64]], "`B` is 2 here but 1 in `q`"),
    ];
    for (shapes, want) in cases {
        let err = bind(shapes).unwrap_err().to_string();
        assert!(err.contains(want), "expected `{want}` in: {err}");
        assert!(err.starts_with("kernel `attention`, argument `"), "{err}");
    }
}

#[test]
fn lengths_that_are_not_tile_multiples_round_the_work_up() {
    let s: &[usize] = &[2, 3, 100, 64];
    let b = bind([s, s, s, s]).unwrap();
    assert_eq!(b.work_items, 2 * 3 * 2, "100 rows need two 64-row tiles");
    let one: &[usize] = &[1, 1, 1, 64];
    assert_eq!(bind([one, one, one, one]).unwrap().work_items, 1);
    let empty: &[usize] = &[1, 8, 0, 64];
    assert_eq!(bind([empty, empty, empty, empty]).unwrap().work_items, 0);
}

#[test]
fn rows_past_32_bit_indexing_are_rejected() {
    let huge: &[usize] = &[1 << 12, 1 << 12, 1 << 10, 64];
    let err = bind([huge, huge, huge, huge]).unwrap_err().to_string();
    assert!(err.contains("32-bit row index"), "{err}");
}

#[test]
fn invalid_run_time_configs_name_the_field() {
    for (config, want) in [
        (Config { tile_m: 48, ..attention::CONFIG }, "tile_m = 48"),
        (Config { tile_n: 8, ..attention::CONFIG }, "tile_n = 8"),
        (Config { head_dim: 80, ..attention::CONFIG }, "head_dim = 80"),
        (Config { warps: 0, ..attention::CONFIG }, "warps = 0"),
        (Config { stages: 5, ..attention::CONFIG }, "stages = 5"),
        (Config { load_warps: 9, ..attention::CONFIG }, "load_warps = 9"),
        (Config { load_warps: 1, softmax_warps: 5, ..attention::CONFIG }, "softmax_warps = 5"),
        (Config { softmax_warps: 1, ..attention::CONFIG }, "softmax_warps = 1"),
    ] {
        let err = attention::ptx(&config).unwrap_err().to_string();
        assert!(err.contains(want), "expected `{want}` in: {err}");
    }
}

#[test]
fn opening_a_device_never_panics() {
    // On machines without a GPU (CI) this is a typed error; on the GPU machine it opens.
    match flashcore::runtime::Device::new(0) {
        Ok(device) => assert!(device.info().sm_count > 0),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if let Err(e) = flashcore::runtime::Device::new(1 << 20) {
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn ir_text_shows_roles_and_layouts() {
    let text = attention::ir_after(&attention::CONFIG, "lower").unwrap().to_string();
    assert!(
        text.contains("@load %ks.8: smem<f16>[TILE_N, D] = stage k[%b.0, %h.1 / (H/HKV), %kt.7]"),
        "{text}"
    );
    assert!(text.contains("pipeline %kt.7 in 0..SK/TILE_N {"), "{text}");
}
