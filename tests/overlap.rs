//! The overlap pass (sm_90a, `flashcore-ir/src/passes/overlap.rs`): where it rotates the K/V
//! loop and where it says why not, the verifier's and the protocol check's view of the rotated
//! loop (a result read before its `mma_wait`, K's slot released before its matmul retires), and
//! the PTX it leads to
//! (every wgmma asynchronous: the softmax between the two waits). The rotated kernels run
//! against float64 in `tests/sim.rs` (the `*_overlap` reference configs) and their planted bugs
//! are in `tests/sim_broken.rs`.

use flashcore::ir::kernel::Op;
use flashcore::ir::{parse_kernel, passes, protocol, verify::verify};
use flashcore::kernels::{attention, reference_config};
use flashcore::Config;

fn after_passes(config: &Config) -> flashcore::ir::Kernel {
    passes::run_all(flashcore::ir::lower(&attention::program(), config).unwrap()).unwrap()
}

fn before_overlap(config: &Config) -> flashcore::ir::Kernel {
    let lowered = flashcore::ir::lower(&attention::program(), config).unwrap();
    passes::run_until(lowered, Some("warp_specialize")).unwrap()
}

fn rotated(kernel: &flashcore::ir::Kernel) -> bool {
    let mut found = false;
    kernel.walk(&mut |i| found |= matches!(i.op, Op::MmaAsync { .. }));
    found
}

fn producer() -> Config {
    reference_config("sm90a_d128_m128_w8_n128_load4_overlap").unwrap()
}

#[test]
fn the_producer_configs_are_rotated_and_the_others_say_why_not() {
    assert!(rotated(&after_passes(&producer())));
    assert_eq!(passes::overlap::why_not(&before_overlap(&producer())), None);
    let cases = [
        (Config { overlap: false, ..producer() }, "off (Config::overlap"),
        (Config { load_warps: 0, ..producer() }, "producer warpgroup"),
        (Config { target: flashcore::Target::Sm89, ..producer() }, "sm_90a"),
        (Config { tile_m: 192, warps: 12, head_dim: 64, ..producer() }, "registers"),
    ];
    for (config, why) in cases {
        assert!(!rotated(&after_passes(&config)), "{config}");
        let reason = passes::overlap::why_not(&before_overlap(&config)).expect("a reason");
        assert!(reason.contains(why), "{config}: {reason}");
    }
}

#[test]
fn a_score_read_before_its_mma_wait_is_a_verifier_error() {
    let text = after_passes(&producer()).to_string();
    assert!(text.contains("mma_wait 1"), "{text}");
    let broken = text.replacen("@compute mma_wait 1\n", "", 1);
    // The text reader verifies what it reads.
    let err = parse_kernel(&broken).expect_err("S is read while Q.K^T is in flight").to_string();
    assert!(err.contains("while an asynchronous matmul"), "{err}");
    // Unedited, the text reads back as it was, and verifies.
    let parsed = parse_kernel(&text).unwrap();
    assert_eq!(parsed.to_string(), text);
    verify(&parsed).unwrap();
}

#[test]
fn k_released_before_its_matmul_retires_is_caught_by_the_protocol_check() {
    // The rotated loop gives K's slot back right after `mma_wait 1`; given back before it, the
    // producer may refill K while Q.K^T still reads it. The protocol trace counts an
    // asynchronous read again at the wait that retires it, which then finds the slot refilled
    // (or being refilled).
    let text = after_passes(&producer()).to_string();
    let (wait, release) = ("@compute mma_wait 1\n", "@compute arrive $empty_k[%it.");
    let at = text.find(wait).expect("the wait for S");
    let line_start = at + text[at..].find(release).expect("K's release after it");
    let line_end = line_start + text[line_start..].find('\n').unwrap() + 1;
    let indent = &text[text[..at].rfind('\n').unwrap() + 1..at];
    let broken = format!("{}{}{indent}{wait}{}", &text[..at], &text[line_start..line_end], &text[line_end..]);
    let kernel = parse_kernel(&broken).expect("the edited text parses");
    let err = protocol::check(&protocol::schedule_of(&kernel)).expect_err("K refilled under Q.K^T");
    let kinds =
        [protocol::ProtocolErrorKind::OverwriteWhileRead, protocol::ProtocolErrorKind::ReadBeforeFill];
    assert!(kinds.contains(&err.kind) && err.message.contains("stage ks["), "{err}");
    // Unedited, the check passes, with one stage too: K's and V's rings are apart, so holding
    // the previous tile's V does not starve the producer of K's slot.
    protocol::check(&protocol::schedule_of(&after_passes(&producer()))).unwrap();
    let one_stage = Config { stages: 1, ..producer() };
    assert!(rotated(&after_passes(&one_stage)));
}

#[test]
fn every_rotated_loop_issues_both_matmuls_before_waiting() {
    let ptx = flashcore::compile(&attention::program(), &producer()).unwrap().ptx.text;
    let body = &ptx[ptx.find("mma_async %qf").expect("the rotated Q.K^T")..];
    let wait1 = body.find("wgmma.wait_group.sync.aligned 1;").expect("the wait for S");
    let wait0 = body.find("wgmma.wait_group.sync.aligned 0;").expect("the wait for P.V");
    // Two groups in flight before the first wait, the softmax's exponentials between the waits.
    assert_eq!(body[..wait1].matches("wgmma.commit_group").count(), 2);
    assert!(body[wait1..wait0].contains("ex2.approx"), "the softmax runs under P.V");
    // The descriptors of both groups are computed before the first issue (C7513 in ptxas 13.0).
    let first_issue = body.find("wgmma.mma_async").unwrap();
    assert!(!body[first_issue..wait1].contains("or.b64"), "a descriptor computed while a wgmma is in flight");
}

// A user's kernel that asks for the overlap in its attribute (it applies on sm_90a, where the
// launch resolves `Target::Auto`), and one whose K/V loop the overlap must leave alone: a
// statement after P·V that the rotation would move across the next iteration's softmax.
mod user {
    use flashcore::flash_kernel;

    #[flash_kernel(
        tile_m = 128,
        tile_n = 128,
        head_dim = 64,
        stages = 2,
        warps(compute = 8, load = 4),
        overlap = true
    )]
    pub fn overlapped_attention<T>(
        q: Tensor<T, B, H, S, D>,
        k: Tensor<T, B, H, SK, D>,
        v: Tensor<T, B, H, SK, D>,
        o: TensorMut<T, B, H, S, D>,
        lse: Option<TensorMut<f32, B, H, S>>,
        scale: f32,
        cu_q: Option<SeqOffsets<B, S>>,
        cu_k: Option<SeqOffsets<B, SK>>,
    ) {
        for (b, h, qt) in tiles(B, H, S / TILE_M) {
            #[role(compute)]
            let qf = load(q.tile(b, h, qt));
            let mut m = fill([TILE_M], NEG_INF);
            let mut l = fill([TILE_M], 0.0);
            let mut acc = zeros([TILE_M, D]);
            for kt in pipeline(0..SK / TILE_N) {
                #[role(load)]
                {
                    let ks = stage(k.tile(b, h, kt));
                    let vs = stage(v.tile(b, h, kt));
                }
                #[role(compute)]
                let s = mma(qf, ks.t()) * (scale * LOG2_E);
                #[role(softmax)]
                {
                    let m_new = max(m, row_max(s));
                    let p = exp2(s - m_new);
                    let alpha = exp2(m - m_new);
                    l = l * alpha + row_sum(p);
                    acc = acc * alpha;
                    m = m_new;
                }
                #[role(compute)]
                acc = mma(p.to::<T>(), vs, acc);
            }
            store(lse.tile(b, h, qt), log_sum_exp(m, l));
            store(o.tile(b, h, qt), acc / l);
        }
    }

    #[flash_kernel(
        tile_m = 128,
        tile_n = 128,
        head_dim = 64,
        stages = 2,
        warps(compute = 8, load = 4),
        overlap = true
    )]
    pub fn sum_after_pv_attention<T>(
        q: Tensor<T, B, H, S, D>,
        k: Tensor<T, B, H, SK, D>,
        v: Tensor<T, B, H, SK, D>,
        o: TensorMut<T, B, H, S, D>,
        lse: Option<TensorMut<f32, B, H, S>>,
        scale: f32,
        cu_q: Option<SeqOffsets<B, S>>,
        cu_k: Option<SeqOffsets<B, SK>>,
    ) {
        for (b, h, qt) in tiles(B, H, S / TILE_M) {
            #[role(compute)]
            let qf = load(q.tile(b, h, qt));
            let mut m = fill([TILE_M], NEG_INF);
            let mut l = fill([TILE_M], 0.0);
            let mut acc = zeros([TILE_M, D]);
            for kt in pipeline(0..SK / TILE_N) {
                #[role(load)]
                {
                    let ks = stage(k.tile(b, h, kt));
                    let vs = stage(v.tile(b, h, kt));
                }
                #[role(compute)]
                let s = mma(qf, ks.t()) * (scale * LOG2_E);
                #[role(softmax)]
                {
                    let m_new = max(m, row_max(s));
                    let p = exp2(s - m_new);
                    let alpha = exp2(m - m_new);
                    l = l * alpha;
                    acc = acc * alpha;
                    m = m_new;
                }
                #[role(compute)]
                acc = mma(p.to::<T>(), vs, acc);
                // The row sum after P·V: the rotation would move P·V past it.
                #[role(softmax)]
                l = l + row_sum(p);
            }
            store(lse.tile(b, h, qt), log_sum_exp(m, l));
            store(o.tile(b, h, qt), acc / l);
        }
    }
}

/// Both user kernels at sm_90a against float64 in the simulator at tails (S = 77, SK = 300: a
/// partial last tile, and K/V loops of three tiles, so every ring slot is reused); the first is
/// rotated, the second is not and `check` says why.
#[test]
fn a_users_kernel_with_the_overlap_matches_float64_and_one_it_cannot_rotate_is_left_alone() {
    use flashcore::simulate::{check_attention, AttentionShape, SimDevice};
    let hopper = |c: Config| Config { target: flashcore::Target::Sm90a, ..c };
    let shape = AttentionShape { b: 1, h: 2, hk: 2, s: 77, sk: 300 };
    let rotated_config = hopper(user::overlapped_attention::CONFIG);
    let kept_config = hopper(user::sum_after_pv_attention::CONFIG);
    for (config, compile, expect_rotated) in [
        (rotated_config, user::overlapped_attention::compile as fn(&Config) -> _, true),
        (kept_config, user::sum_after_pv_attention::compile, false),
    ] {
        let kernel = compile(&config).unwrap();
        let rotated_ptx = kernel.ptx.text.contains("wgmma.wait_group.sync.aligned 1;");
        assert_eq!(rotated_ptx, expect_rotated, "{config}");
        let check =
            check_attention(&kernel, shape, flashcore::Layout::Bhsd, 11, &SimDevice::default()).unwrap();
        assert!(check.lse_max_abs < 1e-3 && check.lse_mismatched == 0, "{config}: {check:?}");
        let err = check.err;
        assert!(
            err.rel_l2 < flashcore::tolerance(config.dtype) && err.non_finite == 0,
            "{config}: {check:?}"
        );
    }
    let lowered = flashcore::ir::lower(&user::sum_after_pv_attention::program(), &kept_config).unwrap();
    let before = passes::run_until(lowered, Some("warp_specialize")).unwrap();
    let why = passes::overlap::why_not(&before).expect("a reason");
    assert!(why.contains("follows P·V"), "{why}");
}
