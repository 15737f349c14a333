//! The public API's error paths that need no GPU: run-time configs, shape binding, the
//! no-driver case. Each bad input must be a typed error naming what is wrong, never a panic.

use flashcore::kernels::attention;
use flashcore::runtime::contiguous_strides;
use flashcore::{bind_shapes, ArgView, Config, Error, Layout, SeqOffsets, TensorView};

/// Binds contiguous f16 tensors of `shapes` (q, k, v, o) and the scale.
fn bind(shapes: [&[usize]; 4]) -> Result<flashcore::Binding, Error> {
    let strides: Vec<Vec<usize>> = shapes.iter().map(|s| contiguous_strides(s)).collect();
    let views: Vec<TensorView> = shapes
        .iter()
        .zip(&strides)
        .map(|(shape, strides)| TensorView {
            dtype: "f16",
            shape,
            strides,
            buffer_len: shape.iter().product(),
        })
        .collect();
    bind_views(&attention::CONFIG, views.try_into().ok().unwrap())
}

/// Binds q, k, v, o, no log-sum-exp output, and the scale.
fn bind_views(config: &Config, views: [TensorView; 4]) -> Result<flashcore::Binding, Error> {
    let mut all: Vec<ArgView> = views.into_iter().map(ArgView::Tensor).collect();
    all.extend([ArgView::None; 4]); // lse (left out), scale, cu_q and cu_k (dense)
    bind_shapes(&attention::ir(config).unwrap(), &all)
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
fn strides_over_4_gib_are_rejected() {
    let huge: &[usize] = &[2, 1 << 16, 1 << 12, 64];
    let err = bind([huge, huge, huge, huge]).unwrap_err().to_string();
    assert!(
        err.contains("argument `q`") && err.contains("stride of axis B") && err.contains("over 4 GiB"),
        "{err}"
    );
}

/// BSHD tensors (PyTorch's `(B, S, H, D)`, seen as BHSD) bind, and their strides go to the kernel.
#[test]
fn bshd_strides_bind_and_are_passed_in_parameter_order() {
    let shape = [2, 3, 100, 64];
    let st = Layout::Bshd.strides(shape);
    let v = TensorView { dtype: "f16", shape: &shape, strides: &st, buffer_len: 2 * 3 * 100 * 64 };
    let b = bind_views(&attention::CONFIG, [v, v, v, v]).unwrap();
    assert_eq!(st, [100 * 3 * 64, 64, 3 * 64, 1]);
    assert_eq!(
        b.strides,
        [st[..3].to_vec(), st[..3].to_vec(), st[..3].to_vec(), st[..3].to_vec(), vec![0; 3]]
            .concat()
            .iter()
            .map(|x| *x as u32)
            .collect::<Vec<_>>()
    );
    assert_eq!(b.dims, vec![2, 3, 100, 3, 100]);
}

/// Each layout rule is a typed error naming the argument and the rule.
#[test]
fn bad_strides_dtypes_and_buffers_are_errors_that_name_the_argument() {
    let shape = [1, 2, 64, 64];
    let good = contiguous_strides(&shape);
    let n = 2 * 64 * 64;
    let ok = TensorView { dtype: "f16", shape: &shape, strides: &good, buffer_len: n };
    let padded_s = [2 * 64 * 72, 64 * 72, 72, 1];
    let cases: [(TensorView, usize, &str); 6] = [
        (TensorView { strides: &[8192, 4096, 64, 2], ..ok }, 0, "head dim must be contiguous"),
        (
            TensorView { strides: &[8192, 4096, 68, 1], buffer_len: 1 << 20, ..ok },
            1,
            "stride of axis S is 68 elements, not a multiple of 8",
        ),
        (TensorView { buffer_len: n - 1, ..ok }, 2, "reach element 8191 but the buffer holds 8191"),
        (TensorView { dtype: "bf16", ..ok }, 1, "expected a f16 tensor, got bf16"),
        (TensorView { strides: &[0, 0, 64, 1], ..ok }, 3, "share an address"),
        // Padded rows are fine for inputs and outputs alike, as long as the buffer holds them.
        (TensorView { strides: &padded_s, buffer_len: 2 * 64 * 72 - 8, ..ok }, 3, ""),
    ];
    let names = ["q", "k", "v", "o"];
    for (view, at, want) in cases {
        let mut views = [ok, ok, ok, ok];
        views[at] = view;
        let result = bind_views(&attention::CONFIG, views);
        if want.is_empty() {
            result.unwrap();
            continue;
        }
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains(&format!("argument `{}`", names[at])) && err.contains(want),
            "expected `{want}` in: {err}"
        );
    }
    // Broadcast inputs (stride 0 over heads) are allowed: only outputs must not alias.
    let bcast = TensorView { strides: &[0, 0, 64, 1], buffer_len: 64 * 64, ..ok };
    bind_views(&attention::CONFIG, [ok, bcast, bcast, ok]).unwrap();
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
        // 64 rows of D = 256 per warp: 512 accumulator registers a thread.
        (Config { warps: 1, ..attention::CONFIG.with_head_dim(256) }, "over the 255 a thread has"),
    ] {
        let err = attention::ptx(&config).unwrap_err().to_string();
        assert!(err.contains(want), "expected `{want}` in: {err}");
    }
}

/// Sizes the kernel's 32-bit row and work-item indexing cannot hold are errors, not wrapped
/// offsets (no buffer is needed to see it: binding checks the shapes alone).
#[test]
fn sizes_past_32_bit_indexing_are_rejected() {
    let long: &[usize] = &[1, 1, 1 << 31, 64];
    let view = |shape: &'static [usize], strides: &'static [usize]| TensorView {
        dtype: "f16",
        shape,
        strides,
        buffer_len: usize::MAX,
    };
    let v = view(long, &[0, 0, 64, 1]);
    let err = bind_views(&attention::CONFIG, [v, v, v, v]).unwrap_err().to_string();
    assert!(err.contains("`S` = 2147483648 is over 2^31 - 1"), "{err}");
    // Every size and stride fits, but B · H · S/64 = 2^31 work items do not.
    let wide: &[usize] = &[1 << 13, 1 << 8, 1 << 16, 64];
    let v = view(wide, &[1 << 30, 1 << 22, 64, 1]);
    let err = bind_views(&attention::CONFIG, [v, v, v, v]).unwrap_err().to_string();
    assert!(err.contains("2147483648 work items") && err.contains("over 2^31 - 1"), "{err}");
}

/// Arguments of the wrong kind or number, through the same checks as `launch` (here the
/// simulator's entry, which needs no GPU).
#[test]
fn arguments_of_the_wrong_kind_or_number_are_errors_naming_them() {
    use flashcore::simulate::{simulate, HostArg, HostView, SimDevice};
    let kernel = attention::compile(&attention::CONFIG).unwrap();
    let shape = [1, 1, 64, 64];
    let data = vec![flashcore::f16::ZERO; 64 * 64];
    let mut out = data.clone();
    let view = || HostView::contiguous(&shape);
    let err = simulate(
        &kernel,
        &mut [
            HostArg::Tensor(&data, view()),
            HostArg::Tensor(&data, view()),
            HostArg::Tensor(&data, view()),
            HostArg::Tensor(&data, view()),
            HostArg::Absent,
            HostArg::F32(0.125),
            HostArg::Absent,
            HostArg::Absent,
        ],
        &SimDevice::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("argument `o`: expected a mutable output tensor"), "{err}");
    let err = simulate(
        &kernel,
        &mut [HostArg::Tensor(&data, view()), HostArg::TensorMut(&mut out, view())],
        &SimDevice::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("expected 8 arguments, got 2") || err.contains("argument `k`"), "{err}");
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

/// The optional log-sum-exp output: left out it gets zero strides (and a null pointer); given,
/// it is a `[B, H, S]` f32 tensor whose strides go to the kernel after the others'.
#[test]
fn the_log_sum_exp_output_is_optional_and_checked_when_given() {
    let shape = [2, 3, 100, 64];
    let st = contiguous_strides(&shape);
    let n = 2 * 3 * 100 * 64;
    let t = TensorView { dtype: "f16", shape: &shape, strides: &st, buffer_len: n };
    let kernel = attention::ir(&attention::CONFIG).unwrap();
    use ArgView::{None as N, Tensor as T};
    let absent = bind_shapes(&kernel, &[T(t), T(t), T(t), T(t), N, N, N, N]).unwrap();
    assert_eq!(absent.strides[12..], [0, 0, 0]);
    let (rows, row_strides) = ([2, 3, 100], [300, 100, 1]);
    let lse = TensorView { dtype: "f32", shape: &rows, strides: &row_strides, buffer_len: 600 };
    let given = bind_shapes(&kernel, &[T(t), T(t), T(t), T(t), T(lse), N, N, N]).unwrap();
    assert_eq!(given.strides[12..], [300, 100, 1]);
    let bad_rows = [2, 3, 99];
    let cases = [
        (
            TensorView { shape: &bad_rows, strides: &[297, 99, 1], buffer_len: 594, ..lse },
            "`S` is 99 here but 100 in `q`",
        ),
        (TensorView { dtype: "f16", ..lse }, "expected a f32 tensor, got f16"),
        (TensorView { shape: &shape, strides: &st, ..lse }, "expected 3 axes [B, H, S]"),
        (TensorView { strides: &[0, 0, 1], buffer_len: 100, ..lse }, "share an address"),
    ];
    for (view, want) in cases {
        let err = bind_shapes(&kernel, &[T(t), T(t), T(t), T(t), T(view), N, N, N]).unwrap_err().to_string();
        assert!(err.contains("argument `lse`") && err.contains(want), "expected `{want}` in: {err}");
    }
    // A required tensor cannot be left out.
    let err = bind_shapes(&kernel, &[T(t), N, T(t), T(t), N, N, N, N]).unwrap_err().to_string();
    assert!(err.contains("argument `k`") && err.contains("required"), "{err}");
}

/// Sequence offsets must be cumulative lengths starting at 0; anything else is refused when they
/// are made, before any launch could read past a tensor.
#[test]
fn sequence_offsets_that_are_not_cumulative_lengths_are_errors() {
    let ok = SeqOffsets::from_lengths(&[3, 0, 100]).unwrap();
    assert_eq!((ok.as_slice(), ok.batch(), ok.total(), ok.max_len()), (&[0, 3, 3, 103][..], 3, 103, 100));
    assert_eq!(ok.range(2), 3..103);
    for (offsets, want) in [
        (vec![], "no offsets"),
        (vec![1, 5], "the first offset is 1, not 0"),
        (vec![0, 5, 4], "offsets decrease at sequence 1: 5 then 4"),
    ] {
        let err = SeqOffsets::new(offsets).unwrap_err().to_string();
        assert!(err.starts_with("sequence offsets: ") && err.contains(want), "{err}");
    }
    let err = SeqOffsets::from_lengths(&[u32::MAX as usize, 1]).unwrap_err().to_string();
    assert!(err.contains("do not fit in 32 bits"), "{err}");
}

/// Varlen binding: the offsets bind `B` (sequences) and `S`/`SK` (the longest); packed tensors
/// are `[TOTAL, H, D]` passed with batch stride 0, the log-sum-exp `[H, TOTAL]`; a tensor whose
/// rows disagree with the offsets, or that is not packed, is an error naming it.
#[test]
fn variable_length_batches_bind_packed_tensors_and_check_them() {
    use ArgView::{None as N, Offsets as Off, Tensor as T};
    let kernel = attention::ir(&Config { varlen: true, ..attention::CONFIG }).unwrap();
    let (cu_q, cu_k) =
        (SeqOffsets::from_lengths(&[1, 77, 20]).unwrap(), SeqOffsets::from_lengths(&[5, 300, 0]).unwrap());
    let view = |shape: &'static [usize], strides: &'static [usize]| TensorView {
        dtype: "f16",
        shape,
        strides,
        buffer_len: shape.iter().product(),
    };
    let q = view(&[98, 4, 64], &[256, 64, 1]);
    let kv = view(&[305, 2, 64], &[128, 64, 1]);
    let lse_shape = [4, 98];
    let lse = TensorView { dtype: "f32", shape: &lse_shape, strides: &[98, 1], buffer_len: 4 * 98 };
    let b = bind_shapes(&kernel, &[T(q), T(kv), T(kv), T(q), T(lse), N, Off(&cu_q), Off(&cu_k)]).unwrap();
    // dims B, H, S, HKV, SK: 3 sequences, the longest 77 queries and 300 keys.
    assert_eq!(b.dims, vec![3, 4, 77, 2, 300]);
    assert_eq!(b.work_items, 3 * 4 * 77u64.div_ceil(64));
    assert_eq!(b.strides, vec![0, 64, 256, 0, 64, 128, 0, 64, 128, 0, 64, 256, 0, 98, 1]);
    // Queries packed, keys dense [B, HKV, SK, D] (B must still match the offsets).
    let dense_kv = view(&[3, 2, 300, 64], &[38400, 19200, 64, 1]);
    let b = bind_shapes(&kernel, &[T(q), T(dense_kv), T(dense_kv), T(q), N, N, Off(&cu_q), N]).unwrap();
    assert_eq!(b.dims, vec![3, 4, 77, 2, 300]);
    let short_q = view(&[97, 4, 64], &[256, 64, 1]);
    let two = SeqOffsets::from_lengths(&[5, 300]).unwrap();
    let cases: [([ArgView; 8], &str, &str); 5] = [
        (
            [T(short_q), T(kv), T(kv), T(q), N, N, Off(&cu_q), Off(&cu_k)],
            "q",
            "packs 97 rows (shape [97, 4, 64]) but the offsets `cu_q` end at row 98",
        ),
        (
            [T(q), T(kv), T(kv), T(dense_kv), N, N, Off(&cu_q), Off(&cu_k)],
            "o",
            "expected 3 axes [TOTAL, H, D]",
        ),
        ([T(q), T(kv), T(kv), T(q), N, N, Off(&cu_q), Off(&two)], "cu_k", "`B` is 2 here but 3 in `cu_q`"),
        (
            [T(q), T(kv), T(kv), T(q), T(view(&[4, 98, 1], &[98, 1, 1])), N, Off(&cu_q), Off(&cu_k)],
            "lse",
            "expected a f32 tensor",
        ),
        (
            [T(q), T(dense_kv), T(dense_kv), T(q), N, N, Off(&cu_q), Off(&cu_k)],
            "k",
            "expected 3 axes [TOTAL, H, D]",
        ),
    ];
    for (args, arg, want) in cases {
        let err = bind_shapes(&kernel, &args).unwrap_err().to_string();
        assert!(
            err.contains(&format!("argument `{arg}`")) && err.contains(want),
            "expected `{want}` naming `{arg}` in: {err}"
        );
    }
    // The dense variant has no variable-length path: offsets are refused, not ignored.
    let dense = attention::ir(&attention::CONFIG).unwrap();
    let args = [T(q), T(kv), T(kv), T(q), N, N, Off(&cu_q), Off(&cu_k)];
    let err = bind_shapes(&dense, &args).unwrap_err().to_string();
    assert!(err.contains("argument `cu_q`") && err.contains("varlen: true"), "{err}");
}

#[test]
fn a_tuned_launch_reads_its_key_shape_from_the_arguments() {
    use flashcore::runtime::ForeignTensor;
    use flashcore::Arg;
    // f16 tensors for binding only: shapes and strides, no device memory behind them.
    // SAFETY: nothing is launched on them.
    let host =
        |shape: &[usize]| unsafe { ForeignTensor::new(0, "f16", shape, &contiguous_strides(shape)) }.unwrap();
    let (q, k, v) = (host(&[2, 4, 100, 64]), host(&[2, 2, 130, 64]), host(&[2, 2, 130, 64]));
    let mut o = host(&[2, 4, 100, 64]);
    let kernel = attention::compile(&attention::CONFIG).unwrap();
    let mut shape_with = |v: &ForeignTensor| {
        let args = [
            Arg::Tensor(&q),
            Arg::Tensor(&k),
            Arg::Tensor(v),
            Arg::TensorMut(&mut o),
            Arg::Absent,
            Arg::F32(0.125),
            Arg::Absent,
            Arg::Absent,
        ];
        flashcore::problem_shape(&kernel, &args)
    };
    assert_eq!(shape_with(&v).unwrap(), [2, 4, 100, 130], "[B, H, S, SK]");
    // A shape that does not bind is the binding's error, naming the argument.
    let err = shape_with(&host(&[2, 2, 131, 64])).unwrap_err().to_string();
    assert!(err.contains("`v`"), "{err}");
}
