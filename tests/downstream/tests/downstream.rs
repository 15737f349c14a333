//! The downstream crate's kernels as a user tests them: PTX pinned with insta, each kernel run in
//! the simulator against float64 (at tails, grouped K/V heads, S ≠ SK), and the `flashcore`
//! command finding them.

use flashcore::reference::Variant;
use flashcore::simulate::{check_variant, AttentionShape, ExtraArg, SimDevice};
use flashcore::Layout;
use flashcore_downstream::{capped_local_attention, my_attention};

/// S ≠ SK, neither a multiple of the 64-row tiles, two query heads a K/V head.
const SHAPES: [AttentionShape; 2] = [
    AttentionShape { b: 1, h: 2, hk: 1, s: 77, sk: 150 },
    AttentionShape { b: 2, h: 2, hk: 2, s: 130, sk: 100 },
];

#[test]
fn the_kernels_ptx_is_pinned() {
    insta::assert_snapshot!("my_attention", my_attention::ptx(&my_attention::CONFIG).unwrap());
    insta::assert_snapshot!(
        "capped_local_attention",
        capped_local_attention::ptx(&capped_local_attention::CONFIG).unwrap()
    );
}

fn run(kernel: &flashcore::CompiledKernel, extras: &[ExtraArg], variant: impl Fn(AttentionShape) -> Variant) {
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let got = check_variant(
            kernel,
            shape,
            Layout::Bhsd,
            5 + i as u64,
            &SimDevice::default(),
            extras,
            &variant(shape),
        )
        .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        assert!(
            got.err.rel_l2 < flashcore::tolerance(kernel.kernel.config.dtype),
            "{shape:?}: {:?}",
            got.err
        );
        assert!(got.lse_max_abs < 1e-2 && got.lse_mismatched == 0, "{shape:?}: {got:?}");
    }
}

#[test]
fn plain_attention_matches_float64_in_the_simulator() {
    let kernel = my_attention::compile(&my_attention::CONFIG).unwrap();
    run(&kernel, &[], |_| Variant::plain());
}

#[test]
fn the_variant_matches_its_formula_in_the_simulator() {
    let (cap, window) = (2.0f64, 40i64);
    let kernel = capped_local_attention::compile(&capped_local_attention::CONFIG).unwrap();
    let extras = [ExtraArg::F32(cap as f32), ExtraArg::F32(window as f32)];
    run(&kernel, &extras, |shape| {
        let diag = move |i: usize| i as i64 + shape.sk as i64 - shape.s as i64;
        Variant::new(
            move |_, _, _, _, x| cap * (x / cap).tanh(),
            move |_, _, i, j| (j as i64) <= diag(i) && (j as i64) > diag(i) - window,
        )
    });
}

#[test]
fn the_flashcore_command_finds_this_crates_kernels() {
    let cli = env!("CARGO_BIN_EXE_flashcore-downstream");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(cli).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let list = run(&["list"]);
    for kernel in ["my_attention", "capped_local_attention"] {
        assert!(list.contains(kernel), "{list}");
    }
    let check = run(&["check", "capped_local_attention", "--no-ptxas"]);
    assert!(check.contains("protocol   ok"), "{check}");
}
