//! Golden tests of the simulator against the PTX ISA, on hand-written PTX: the mma.m16n8k16 and
//! ldmatrix fragment layouts (the formulas are written out in the PTX and in the expectations
//! here, from the ISA's "Matrix fragments for mma.m16n8k16" and ldmatrix sections), and small
//! broken kernels that each check must catch.

use flashcore_sim::{parse, Arg, Launch, Machine, Options, SimError};
use half::f16;

const HEADER: &str =
    ".version 7.8\n.target sm_89\n.address_size 64\n.extern .shared .align 128 .b8 flashcore_smem[];\n";

fn machine(seed: u64) -> Machine {
    Machine::new(Options { seed, ..Options::default() })
}

/// The `bytes` bytes at `addr` as little-endian 32-bit words.
fn read_words(gpu: &Machine, addr: u64, bytes: usize) -> Vec<u32> {
    gpu.read(addr, bytes)
        .unwrap()
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Each lane loads its A, B and C fragments straight from global memory by the ISA's formulas
/// (g = lane / 4, t = lane % 4): A reg i = (row g + 8(i%2), k 2t + 8(i/2) .. +1), B reg i =
/// (k 2t + 8i .. +1, n g) with B stored as [n][k], C/D reg i = (row g + 8(i/2), col 2t + i%2).
const MMA: &str = r#"
.visible .entry mma_golden(
	.param .u64 pa,
	.param .u64 pbt,
	.param .u64 pc,
	.param .u64 pd
)
{
	.reg .b32 %r<32>;
	.reg .b64 %rd<16>;
	.reg .f32 %f<8>;
	ld.param.u64 %rd0, [pa];
	ld.param.u64 %rd1, [pbt];
	ld.param.u64 %rd2, [pc];
	ld.param.u64 %rd3, [pd];
	mov.u32 %r0, %tid.x;
	shr.u32 %r1, %r0, 2;
	and.b32 %r2, %r0, 3;
	shl.b32 %r3, %r2, 1;
	// A (16x16 row-major f16): element (g, 2t) at (16g + 2t) * 2 bytes
	mad.lo.u32 %r4, %r1, 16, %r3;
	mul.wide.u32 %rd4, %r4, 2;
	add.u64 %rd5, %rd0, %rd4;
	ld.global.b32 %r10, [%rd5];
	ld.global.b32 %r11, [%rd5+256];
	ld.global.b32 %r12, [%rd5+16];
	ld.global.b32 %r13, [%rd5+272];
	// B^T (8x16 row-major f16, [n][k]): element (n g, k 2t) at (16g + 2t) * 2 bytes
	add.u64 %rd6, %rd1, %rd4;
	ld.global.b32 %r14, [%rd6];
	ld.global.b32 %r15, [%rd6+16];
	// C (16x8 row-major f32): element (g, 2t) at (8g + 2t) * 4 bytes
	mad.lo.u32 %r5, %r1, 8, %r3;
	mul.wide.u32 %rd7, %r5, 4;
	add.u64 %rd8, %rd2, %rd7;
	ld.global.f32 %f0, [%rd8];
	ld.global.f32 %f1, [%rd8+4];
	ld.global.f32 %f2, [%rd8+256];
	ld.global.f32 %f3, [%rd8+260];
	mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%f4, %f5, %f6, %f7}, {%r10, %r11, %r12, %r13}, {%r14, %r15}, {%f0, %f1, %f2, %f3};
	add.u64 %rd9, %rd3, %rd7;
	st.global.f32 [%rd9], %f4;
	st.global.f32 [%rd9+4], %f5;
	st.global.f32 [%rd9+256], %f6;
	st.global.f32 [%rd9+260], %f7;
	ret;
}
"#;

fn check_mma(ty: &str, to_bits: impl Fn(f32) -> [u8; 2]) {
    let ptx = format!("{HEADER}{MMA}").replace(".f32.f16.f16.f32", &format!(".f32.{ty}.{ty}.f32"));
    let module = parse(&ptx).unwrap();
    let mut gpu = machine(1);
    // Small integers: every product and sum is exact in f32, so the result must match exactly.
    let a: Vec<f32> = (0..256).map(|i| ((i * 7 + 3) % 11) as f32 - 5.0).collect();
    let bt: Vec<f32> = (0..128).map(|i| ((i * 5 + 1) % 9) as f32 - 4.0).collect();
    let c: Vec<f32> = (0..128).map(|i| (i % 13) as f32).collect();
    let halves = |x: &[f32]| x.iter().flat_map(|v| to_bits(*v)).collect::<Vec<u8>>();
    let floats = |x: &[f32]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let (pa, pb, pc) = (gpu.alloc(halves(&a)), gpu.alloc(halves(&bt)), gpu.alloc(floats(&c)));
    let pd = gpu.alloc(vec![0xff; 512]);
    let launch = Launch { grid: 1, threads: 32, shared_bytes: 0 };
    gpu.launch(&module, "mma_golden", launch, &[Arg::U64(pa), Arg::U64(pb), Arg::U64(pc), Arg::U64(pd)])
        .unwrap();
    let d: Vec<f32> = gpu
        .read(pd, 512)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    for m in 0..16 {
        for n in 0..8 {
            let want = c[m * 8 + n] + (0..16).map(|k| a[m * 16 + k] * bt[n * 16 + k]).sum::<f32>();
            assert_eq!(d[m * 8 + n], want, "{ty} D[{m}][{n}]");
        }
    }
}

#[test]
fn mma_m16n8k16_matches_the_isa_fragment_layout() {
    check_mma("f16", |x| f16::from_f32(x).to_le_bytes());
    check_mma("bf16", |x| half::bf16::from_f32(x).to_le_bytes());
}

/// Shared memory holds four 8x8 b16 matrices, element (m, r, c) = 64m + 8r + c, row r of matrix
/// m at byte 32·(8m + r) (rows 32 bytes apart). Lane l writes and then addresses row l%8 of
/// matrix l/8, and stores what ldmatrix .x4, .x4.trans, .x2 and .x1 give it.
const LDMATRIX: &str = r#"
.visible .entry ldmatrix_golden(
	.param .u64 pout
)
{
	.reg .b32 %r<40>;
	.reg .b64 %rd<8>;
	ld.param.u64 %rd0, [pout];
	mov.u32 %r0, %tid.x;
	mov.u32 %r1, flashcore_smem;
	shl.b32 %r2, %r0, 5;
	add.u32 %r2, %r2, %r1;
	shl.b32 %r3, %r0, 3;
	add.u32 %r4, %r3, 1;
	shl.b32 %r4, %r4, 16;
	or.b32 %r10, %r3, %r4;
	add.u32 %r11, %r10, 0x00020002;
	add.u32 %r12, %r10, 0x00040004;
	add.u32 %r13, %r10, 0x00060006;
	st.shared.v4.b32 [%r2], {%r10, %r11, %r12, %r13};
	bar.sync 0;
	ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r20, %r21, %r22, %r23}, [%r2];
	ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%r24, %r25, %r26, %r27}, [%r2];
	ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%r28, %r29}, [%r2];
	ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%r30}, [%r2];
	mul.lo.u32 %r5, %r0, 48;
	cvt.u64.u32 %rd1, %r5;
	add.u64 %rd2, %rd0, %rd1;
	st.global.v4.b32 [%rd2], {%r20, %r21, %r22, %r23};
	st.global.v4.b32 [%rd2+16], {%r24, %r25, %r26, %r27};
	st.global.b32 [%rd2+32], %r28;
	st.global.b32 [%rd2+36], %r29;
	st.global.b32 [%rd2+40], %r30;
	ret;
}
"#;

#[test]
fn ldmatrix_matches_the_isa_fragment_layout() {
    let module = parse(&format!("{HEADER}{LDMATRIX}")).unwrap();
    let mut gpu = machine(2);
    let out = gpu.alloc(vec![0; 32 * 48]);
    let launch = Launch { grid: 1, threads: 32, shared_bytes: 1024 };
    gpu.launch(&module, "ldmatrix_golden", launch, &[Arg::U64(out)]).unwrap();
    let words = read_words(&gpu, out, 32 * 48);
    let element = |m: u32, r: u32, c: u32| 64 * m + 8 * r + c;
    let pair = |lo: u32, hi: u32| lo | (hi << 16);
    for l in 0..32u32 {
        let got = &words[l as usize * 12..l as usize * 12 + 11];
        for j in 0..4 {
            // Lane l holds row l/4, columns 2(l%4) and 2(l%4)+1 of matrix j.
            let plain = pair(element(j, l / 4, 2 * (l % 4)), element(j, l / 4, 2 * (l % 4) + 1));
            // With .trans: rows 2(l%4) and 2(l%4)+1, column l/4.
            let trans = pair(element(j, 2 * (l % 4), l / 4), element(j, 2 * (l % 4) + 1, l / 4));
            assert_eq!(got[j as usize], plain, "x4 lane {l} reg {j}");
            assert_eq!(got[4 + j as usize], trans, "x4.trans lane {l} reg {j}");
            if j < 2 {
                assert_eq!(got[8 + j as usize], plain, "x2 lane {l} reg {j}");
            }
        }
        assert_eq!(
            got[10],
            pair(element(0, l / 4, 2 * (l % 4)), element(0, l / 4, 2 * (l % 4) + 1)),
            "x1 lane {l}"
        );
    }
}

/// `cvt.rn.f16x2.f32 d, a, b` puts `a` in the upper half; `shfl.sync.bfly` exchanges across lanes.
#[test]
fn cvt_pack_order_and_butterfly_shuffle() {
    let ptx = format!(
        "{HEADER}{}",
        r#"
.visible .entry small(
	.param .u64 pout
)
{
	.reg .b32 %r<8>;
	.reg .f32 %f<4>;
	.reg .b64 %rd<4>;
	ld.param.u64 %rd0, [pout];
	mov.u32 %r0, %tid.x;
	cvt.rzi.s32.f32 %r1, %f0;
}
"#
    );
    // `cvt.rzi.s32.f32` is outside the subset: a clear error, not a silent skip.
    match parse(&ptx) {
        Err(SimError::Unsupported { text, .. }) => assert!(text.contains("cvt.rzi.s32.f32"), "{text}"),
        other => panic!("expected an unsupported-instruction error, got {other:?}"),
    }
    let ptx = format!(
        "{HEADER}{}",
        r#"
.visible .entry small(
	.param .u64 pout
)
{
	.reg .b32 %r<8>;
	.reg .f32 %f<4>;
	.reg .b64 %rd<4>;
	ld.param.u64 %rd0, [pout];
	mov.u32 %r0, %tid.x;
	mov.f32 %f0, 0f3F800000;
	mov.f32 %f1, 0fC0000000;
	cvt.rn.f16x2.f32 %r1, %f0, %f1;
	shfl.sync.bfly.b32 %r2, %r0, 1, 0x1f, 0xffffffff;
	shl.b32 %r3, %r0, 3;
	cvt.u64.u32 %rd1, %r3;
	add.u64 %rd2, %rd0, %rd1;
	st.global.b32 [%rd2], %r1;
	st.global.b32 [%rd2+4], %r2;
	ret;
}
"#
    );
    let module = parse(&ptx).unwrap();
    let mut gpu = machine(3);
    let out = gpu.alloc(vec![0; 256]);
    gpu.launch(&module, "small", Launch { grid: 1, threads: 32, shared_bytes: 0 }, &[Arg::U64(out)]).unwrap();
    let words = read_words(&gpu, out, 256);
    for l in 0..32 {
        // 1.0 = 0x3C00 (upper), -2.0 = 0xC000 (lower)
        assert_eq!(words[2 * l], 0x3C00_C000, "lane {l}");
        assert_eq!(words[2 * l + 1], (l ^ 1) as u32, "lane {l}");
    }
}

/// `lg2.approx.f32` per the ISA: log2, −inf for ±0, NaN for negative inputs.
#[test]
fn lg2_of_positive_zero_and_negative_inputs() {
    let ptx = small_kernel(
        r#"	.reg .f32 %f<4>;
	mov.f32 %f0, 0f41000000;
	lg2.approx.f32 %f1, %f0;
	mov.f32 %f0, 0f00000000;
	lg2.approx.f32 %f2, %f0;
	mov.f32 %f0, 0fBF800000;
	lg2.approx.f32 %f3, %f0;
	shl.b32 %r3, %r0, 4;
	cvt.u64.u32 %rd1, %r3;
	add.u64 %rd2, %rd0, %rd1;
	st.global.f32 [%rd2], %f1;
	st.global.f32 [%rd2+4], %f2;
	st.global.f32 [%rd2+8], %f3;
"#,
    );
    let module = parse(&ptx).unwrap();
    let mut gpu = machine(4);
    let out = gpu.alloc(vec![0; 32 * 16]);
    gpu.launch(&module, "k", Launch { grid: 1, threads: 32, shared_bytes: 0 }, &[Arg::U64(out)]).unwrap();
    let bytes = gpu.read(out, 32 * 16).unwrap();
    let f =
        |i: usize| f32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    for l in 0..32 {
        assert_eq!(f(4 * l), 3.0, "lane {l}: lg2(8)");
        assert_eq!(f(4 * l + 1), f32::NEG_INFINITY, "lane {l}: lg2(0)");
        assert!(f(4 * l + 2).is_nan(), "lane {l}: lg2(-1)");
    }
}

/// A one-parameter kernel (`pout`, also in `%rd0`) around `body`, with `%r0` = thread index and
/// `%r1` = warp index.
fn small_kernel(body: &str) -> String {
    format!(
        "{HEADER}.visible .entry k(\n\t.param .u64 pout\n)\n{{\n\t.reg .pred %p<4>;\n\t.reg .b32 %r<16>;\n\t.reg .b64 %rd<8>;\n\tld.param.u64 %rd0, [pout];\n\tmov.u32 %r0, %tid.x;\n\tshr.u32 %r1, %r0, 5;\n{body}\n\tret;\n}}\n"
    )
}

fn run_small_with(body: &str, threads: u32, shared: u32, options: Options) -> Result<(), SimError> {
    let module = parse(&small_kernel(body)).unwrap();
    let mut gpu = Machine::new(options);
    let out = gpu.alloc(vec![7; 1024]);
    gpu.launch(&module, "k", Launch { grid: 1, threads, shared_bytes: shared }, &[Arg::U64(out)]).map(|_| ())
}

fn run_small(body: &str, threads: u32, shared: u32) -> Result<(), SimError> {
    run_small_with(body, threads, shared, Options { seed: 4, ..Options::default() })
}

#[test]
fn a_named_barrier_count_that_is_not_a_multiple_of_32_is_misuse() {
    let err = run_small("\tbar.sync 1, 48;", 64, 0).unwrap_err();
    assert!(matches!(err, SimError::BarrierMisuse { .. }), "{err}");
    assert!(err.to_string().contains("48 is not a positive multiple of 32"), "{err}");
}

#[test]
fn a_warp_that_exits_before_a_cta_barrier_deadlocks_the_others() {
    let err = run_small("\tsetp.eq.u32 %p0, %r1, 1;\n\t@%p0 ret;\n\tbar.sync 0;", 64, 0).unwrap_err();
    let SimError::Deadlock { report } = &err else { panic!("expected a deadlock, got {err}") };
    assert!(report.contains("warp 0 (threads 0..31): waits in bar.sync 0, before PTX line"), "{report}");
    assert!(report.contains("named barrier 0: 32 of 64 threads arrived"), "{report}");
}

#[test]
fn a_divergent_uniform_branch_is_reported() {
    let err = run_small("\tsetp.lt.u32 %p0, %r0, 16;\n\t@%p0 bra.uni $L_x;\n$L_x:", 32, 0).unwrap_err();
    assert!(matches!(err, SimError::Divergence { .. }), "{err}");
}

#[test]
fn an_mbarrier_arrival_twice_in_one_phase_is_misuse() {
    let body = "\tmov.u32 %r2, flashcore_smem;\n\tmbarrier.init.shared.b64 [%r2], 64;\n\tbar.sync 0;\n\tmbarrier.arrive.shared.b64 %rd1, [%r2];\n\tmbarrier.arrive.shared.b64 %rd1, [%r2];";
    let err = run_small(body, 32, 64).unwrap_err();
    assert!(err.to_string().contains("arrives twice"), "{err}");
}

#[test]
fn unsynchronized_shared_memory_accesses_race() {
    // Warp 1 reads what warp 0 wrote, with no barrier between them.
    let body = "\tmov.u32 %r2, flashcore_smem;\n\tsetp.eq.u32 %p0, %r1, 0;\n\t@%p0 st.shared.b32 [%r2], %r0;\n\t@!%p0 ld.shared.b32 %r3, [%r2];";
    let err = run_small(body, 64, 64).unwrap_err();
    assert!(matches!(err, SimError::Race { .. }), "{err}");
    // With a barrier between them the same accesses are ordered.
    let body = "\tmov.u32 %r2, flashcore_smem;\n\tsetp.eq.u32 %p0, %r1, 0;\n\t@%p0 st.shared.b32 [%r2], %r0;\n\tbar.sync 0;\n\t@!%p0 ld.shared.b32 %r3, [%r2];";
    run_small(body, 64, 64).unwrap();
}

#[test]
fn out_of_bounds_and_misaligned_accesses_are_reported() {
    let err = run_small("\tst.global.b32 [%rd0+1024], %r0;", 32, 0).unwrap_err();
    assert!(matches!(err, SimError::OutOfBounds { .. }), "{err}");
    let err = run_small("\tst.global.b32 [%rd0+2], %r0;", 32, 0).unwrap_err();
    assert!(matches!(err, SimError::Misaligned { .. }), "{err}");
    let err =
        run_small("\tmov.u32 %r2, flashcore_smem;\n\tst.shared.b32 [%r2+64], %r0;", 32, 64).unwrap_err();
    assert!(matches!(err, SimError::OutOfBounds { .. }), "{err}");
}

#[test]
fn a_parity_wait_more_than_one_phase_behind_is_misuse() {
    // Two phases complete (the warp arrives twice with count 32), then the warp's first wait
    // asks for parity 1: it would observe phase 1 without having observed phase 0.
    let body = "\tmov.u32 %r2, flashcore_smem;\n\tmbarrier.init.shared.b64 [%r2], 32;\n\tbar.sync 0;\n\tmbarrier.arrive.shared.b64 %rd1, [%r2];\n\tmbarrier.arrive.shared.b64 %rd1, [%r2];\n\tmbarrier.test_wait.parity.shared.b64 %p0, [%r2], 1;";
    let err = run_small(body, 32, 64).unwrap_err();
    assert!(err.to_string().contains("more than one phase behind"), "{err}");
}

#[test]
fn reading_a_cp_async_destination_before_wait_group_is_caught() {
    // The copy lands at a random time: either the read finds it in flight, or it finds it landed
    // but not ordered by a wait_group; both are reported, and some seed sees it in flight.
    let body = "\tmov.u32 %r2, flashcore_smem;\n\tshl.b32 %r3, %r0, 4;\n\tadd.u32 %r2, %r2, %r3;\n\tcvt.u64.u32 %rd2, %r3;\n\tadd.u64 %rd3, %rd0, %rd2;\n\tcp.async.cg.shared.global [%r2], [%rd3], 16;\n\tcp.async.commit_group;\n\tld.shared.b32 %r4, [%r2];";
    let mut in_flight = 0;
    for seed in 0..8 {
        match run_small_with(body, 32, 512, Options { seed, max_slice: 1, ..Options::default() }).unwrap_err()
        {
            SimError::AsyncRead { .. } => in_flight += 1,
            err @ SimError::Race { .. } => assert!(err.to_string().contains("cp.async of warp 0"), "{err}"),
            other => panic!("unexpected: {other}"),
        }
    }
    assert!(in_flight > 0, "no seed read the copy in flight");
    // With the wait the same read is fine.
    run_small(&body.replace("\tld.shared", "\tcp.async.wait_group 0;\n\tld.shared"), 32, 512).unwrap();
}

/// The instructions score code compiles to, each against Rust's IEEE arithmetic: float division,
/// negation, absolute value, square root, tanh (approximated on the GPU, exact here, like ex2),
/// reciprocal, signed integer conversion, negation and absolute value, `setp.neu` (true for
/// NaN, unlike `setp.ne`) and `not.pred`.
#[test]
fn score_code_instructions() {
    let ptx = small_kernel(
        r#"	.reg .f32 %f<16>;
	mov.f32 %f0, 0f40E00000;
	mov.f32 %f1, 0fC0000000;
	div.rn.f32 %f2, %f0, %f1;
	neg.f32 %f3, %f0;
	abs.f32 %f4, %f1;
	sqrt.rn.f32 %f5, %f0;
	tanh.approx.f32 %f6, %f1;
	rcp.approx.ftz.f32 %f7, %f1;
	mov.s32 %r2, -5;
	cvt.rn.f32.s32 %f8, %r2;
	neg.s32 %r3, %r2;
	abs.s32 %r4, %r2;
	cvt.rn.f32.s32 %f9, %r3;
	cvt.rn.f32.s32 %f10, %r4;
	mov.f32 %f11, 0f7FC00000;
	setp.neu.f32 %p0, %f11, %f11;
	setp.ne.f32 %p1, %f11, %f11;
	not.pred %p2, %p1;
	selp.f32 %f12, 0f3F800000, 0f00000000, %p0;
	selp.f32 %f13, 0f3F800000, 0f00000000, %p1;
	selp.f32 %f14, 0f3F800000, 0f00000000, %p2;
	mul.lo.u32 %r5, %r0, 64;
	cvt.u64.u32 %rd1, %r5;
	add.u64 %rd2, %rd0, %rd1;
	st.global.f32 [%rd2], %f2;
	st.global.f32 [%rd2+4], %f3;
	st.global.f32 [%rd2+8], %f4;
	st.global.f32 [%rd2+12], %f5;
	st.global.f32 [%rd2+16], %f6;
	st.global.f32 [%rd2+20], %f7;
	st.global.f32 [%rd2+24], %f8;
	st.global.f32 [%rd2+28], %f9;
	st.global.f32 [%rd2+32], %f10;
	st.global.f32 [%rd2+36], %f12;
	st.global.f32 [%rd2+40], %f13;
	st.global.f32 [%rd2+44], %f14;
"#,
    );
    let module = parse(&ptx).unwrap();
    let mut gpu = machine(5);
    let out = gpu.alloc(vec![0; 32 * 64]);
    gpu.launch(&module, "k", Launch { grid: 1, threads: 32, shared_bytes: 0 }, &[Arg::U64(out)]).unwrap();
    let bytes = gpu.read(out, 32 * 64).unwrap();
    let f =
        |i: usize| f32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    for l in 0..32 {
        let want = [-3.5, -7.0, 2.0, 7f32.sqrt(), (-2f32).tanh(), -0.5, -5.0, 5.0, 5.0, 1.0, 0.0, 1.0];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(f(16 * l + i), *w, "lane {l}, value {i}");
        }
    }
}

/// `vote.sync.any.pred` / `vote.sync.all.pred` give every lane whether any (all) of the lanes'
/// predicates is set; a member mask other than the executing lanes is divergence; a `setp`
/// that combines with a fourth operand (`setp.ne.or.f32`) is refused, not decoded without it.
#[test]
fn vote_any_and_all_over_a_warp() {
    // Lane 5 alone has p0: any is true, all is false, on every lane; stored as words 0/1.
    let body = "\tsetp.eq.u32 %p0, %r0, 5;\n\tvote.sync.any.pred %p1, %p0, 0xffffffff;\n\tvote.sync.all.pred %p2, %p0, 0xffffffff;\n\tsetp.lt.u32 %p3, %r0, 64;\n\tvote.sync.all.pred %p3, %p3, 0xffffffff;\n\tselp.u32 %r2, 1, 0, %p1;\n\tselp.u32 %r3, 1, 0, %p2;\n\tselp.u32 %r4, 1, 0, %p3;\n\tmul.lo.u32 %r5, %r0, 12;\n\tcvt.u64.u32 %rd1, %r5;\n\tadd.u64 %rd2, %rd0, %rd1;\n\tst.global.b32 [%rd2], %r2;\n\tst.global.b32 [%rd2+4], %r3;\n\tst.global.b32 [%rd2+8], %r4;";
    let module = parse(&small_kernel(body)).unwrap();
    let mut gpu = machine(5);
    let out = gpu.alloc(vec![7; 1024]);
    gpu.launch(&module, "k", Launch { grid: 1, threads: 64, shared_bytes: 0 }, &[Arg::U64(out)]).unwrap();
    let words = read_words(&gpu, out, 64 * 12);
    for t in 0..64 {
        // Warp 1 (threads 32..63) has no lane 5 of the CTA: any is false there.
        let any = u32::from(t < 32);
        assert_eq!(&words[3 * t..3 * t + 3], &[any, 0, 1], "thread {t}");
    }
    let err =
        run_small("\tsetp.lt.u32 %p0, %r0, 16;\n\t@%p0 vote.sync.any.pred %p1, %p0, 0xffffffff;", 32, 0)
            .unwrap_err();
    assert!(matches!(err, SimError::Divergence { .. }), "{err}");
    match parse(&small_kernel("\tsetp.ne.or.u32 %p0, %r0, 1, %p1;")) {
        Err(SimError::Unsupported { text, .. }) => assert!(text.contains("setp.ne.or"), "{text}"),
        other => panic!("expected an unsupported-instruction error, got {other:?}"),
    }
}
