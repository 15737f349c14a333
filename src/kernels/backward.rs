//! The attention backward pass (FlashAttention-2's), written in the DSL as two kernels that
//! recompute the probabilities from the forward's log-sum-exp: one walks the queries and gives
//! `dQ` (and `Δ`), one walks the keys and gives `dK` and `dV`. Neither writes what the other
//! reads, so each gradient is computed once, without atomics: run to run, bitwise identical.
//!
//! With `P = softmax(scale · Q·Kᵀ)`, `O = P·V` and the output's gradient `dO`:
//! `Δ = rowsum(dO ∘ O)`, `dP = dO·Vᵀ`, `dS = P ∘ (dP − Δ)`, and then
//! `dQ = scale · dS·K`, `dK = scale · dSᵀ·Q`, `dV = Pᵀ·dO`. Run [`attention_backward_dq`]
//! first (it writes `Δ`), then [`attention_backward_dkdv`] (or its causal twin). Each takes the
//! forward's sequence offsets `cu_q`, `cu_k` (optional): given, the batch is packed as the
//! varlen forward's (`[TOTAL, H, D]`, the log-sum-exp and `Δ` `[H, TOTAL_Q]`), see
//! [`launch_varlen_backward_async`].
//!
//! ```
//! use flashcore::kernels::backward::{attention_backward_dkdv, attention_backward_dq};
//!
//! let dq = attention_backward_dq::compile(&attention_backward_dq::CONFIG)?;
//! let dkdv = attention_backward_dkdv::compile(&attention_backward_dkdv::CONFIG)?;
//! assert!(dq.ptx.text.contains("mma.sync") && dkdv.ptx.text.contains("mma.sync"));
//! # Ok::<(), flashcore::Error>(())
//! ```

use crate::runtime::{Device, DeviceTensor};
use crate::{flash_kernel, Config, Error, Target};

/// The schedule of each backward kernel at one head dim: see [`backward_configs`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackwardConfigs {
    /// For [`attention_backward_dq`] (its `causal` flag set by the caller).
    pub dq: Config,
    /// For [`attention_backward_dkdv`].
    pub dkdv: Config,
    /// For [`attention_backward_dkdv_causal`].
    pub dkdv_causal: Config,
    /// For [`attention_backward_dkdv_grouped`] (K and V kept in shared memory by the caller).
    pub dkdv_grouped: Config,
    /// For [`attention_backward_dkdv_grouped_causal`] (K and V kept in shared memory by the
    /// caller).
    pub dkdv_grouped_causal: Config,
}

/// Schedules for the backward kernels at head dim `head_dim`: the fastest measured on the
/// H200 (`docs/measurements/2026-12-01-h200-backward.txt`) among those that assemble without
/// spills for sm_89 and with at most 128 bytes for sm_90 (the autotuner's rule;
/// `tests/ptxas.rs`). Up to D = 64, the declared one. Above, the tiles the kernels load (K and
/// V, or Q) stay in shared memory (`a_in_smem`), one stage deep, and the dK/dV kernels' score
/// tiles are 32 queries wide: a warp's two `[16, D]` f32 accumulators alone take 128 registers
/// a thread at D = 128. At 2x16x8192x128 the dQ kernel takes 5150 µs with 64-key tiles against
/// 6116 with 32 (4 bytes of spill on sm_90), the causal dK/dV kernel 4305 µs against 5717 for
/// the spill-free 16-wide tiles (16 bytes on sm_90).
pub fn backward_configs(head_dim: u32) -> BackwardConfigs {
    let declared = attention_backward_dq::CONFIG.with_head_dim(head_dim);
    // The dQ kernel runs sm_89 unless a target is asked for: `backward_configs_for` gives it
    // sm_90a where that was timed (D = 64 and 128).
    let dq_sm89 = |c: Config| Config { target: Target::Sm89, ..c };
    if head_dim <= 64 {
        return BackwardConfigs {
            dq: dq_sm89(declared),
            dkdv: declared,
            dkdv_causal: declared,
            dkdv_grouped: declared,
            dkdv_grouped_causal: declared,
        };
    }
    let in_smem = Config { a_in_smem: true, ..declared };
    let narrow = Config { tile_n: 32, stages: 1, ..in_smem };
    BackwardConfigs {
        dq: dq_sm89(if head_dim <= 96 { in_smem } else { Config { stages: 1, ..in_smem } }),
        dkdv: narrow,
        dkdv_causal: narrow,
        dkdv_grouped: narrow,
        dkdv_grouped_causal: narrow,
    }
}

/// [`backward_configs`] for a launch that compiles for `target`. On sm_90a:
/// - the dQ kernel compiles for sm_90a at D = 64 and 128 (`passes::split_a_loads` keeps its
///   dO in shared memory for the wgmma), same tiles: at 2x16x8192x128 it took 3564 µs against
///   5101 for sm_89, 1852 against 2677 causal (`docs/measurements/2026-12-03-h200-backward-dq.txt`;
///   two stages or 128-query tiles were no faster); at 2x16x8192x64 1915 against 2827, 990
///   against 1438 causal (`docs/measurements/2026-12-03-h200-backward-schedules.txt`);
/// - at 64 < D ≤ 128 the plain and causal dK/dV kernels ([`attention_backward_dkdv`],
///   [`attention_backward_dkdv_causal`]) take 64-query score tiles two stages deep: their wgmma
///   warpgroups have the registers sm_89's `mma.sync` tiles lack. At 2x16x8192x128 one
///   warpgroup of 64-key tiles took 4640 µs against 5691 with the 32-wide single-stage tiles
///   (`docs/measurements/2026-12-03-h200-backward-dkdv.txt`), causal 2722 against 3233
///   (`…-backward-schedules.txt`);
/// - at 64 < D ≤ 128 all three run 128-row tiles on two compute warpgroups beside a producer
///   warpgroup that brings the staged tiles by TMA (168 registers a thread at entry, 232 in the
///   compute warpgroups, no spills; varlen keeps the producer with cp.async, which the tensor
///   maps cannot bound by sequence). At 2x16x8192x128, in one run against the one-warpgroup
///   schedules above: dQ 3548 -> 2507 µs, dK/dV 4829 -> 4177, causal dQ 1819 -> 1411, causal
///   dK/dV 2720 -> 2580; a 64-row tile with a producer was slower (dK/dV 5672)
///   (`docs/measurements/2026-12-03-h200-backward-producer.txt`).
///
/// The grouped dK/dV kernels, the variants' pairs and D > 128 keep [`backward_configs`]'s
/// until measured; D = 32 and 96, which sm_90a's tiles cannot take, keep them too.
pub fn backward_configs_for(head_dim: u32, target: Target) -> BackwardConfigs {
    let configs = backward_configs(head_dim);
    // sm_90a's swizzled tiles take head dims in multiples of 64 (D = 32 and 96 run on sm_89).
    if target != Target::Sm90a || head_dim > 128 || !head_dim.is_multiple_of(64) {
        return configs;
    }
    if head_dim <= 64 {
        return BackwardConfigs { dq: Config { target, ..configs.dq }, ..configs };
    }
    // Two compute warpgroups of 64 rows and a TMA producer warpgroup.
    let produced = |c: Config| Config {
        tile_m: 128,
        tile_n: 64,
        warps: 8,
        load_warps: 4,
        tma: true,
        stages: 2,
        target,
        ..c
    };
    BackwardConfigs {
        dq: produced(configs.dq),
        dkdv: produced(configs.dkdv),
        dkdv_causal: produced(configs.dkdv_causal),
        ..configs
    }
}

/// The backward's query side: per Q tile, `Δ = rowsum(dO ∘ O)` (stored in `delta` for
/// [`attention_backward_dkdv`]) and `dQ = scale · Σ dS·K` over the K/V tiles, with `P`
/// recomputed from `lse`, the forward's log-sum-exp (natural log). `Config::causal` masks as
/// the forward does (and skips the K/V tiles past the diagonal). K/V may have fewer heads
/// (`HKV`) than Q, as in the forward.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn attention_backward_dq<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: Tensor<T, B, H, S, D>,
    d_out: Tensor<T, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    dq: TensorMut<T, B, H, S, D>,
    delta: TensorMut<f32, B, H, S>,
    scale: f32,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let dof = load(d_out.tile(b, h, qt));
        let of = load(o.tile(b, h, qt));
        let dd = row_sum(dof.to::<f32>() * of.to::<f32>());
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            #[role(load)]
            {
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            {
                let s = mma(qf, ks.t());
                let p = exp2(s * (scale * LOG2_E) - lse.at(b, h, s.index(S)) * LOG2_E);
                let dp = mma(dof, vs.t());
                let ds = p * (dp - dd);
                acc = mma(ds.to::<T>(), ks, acc);
            }
        }
        store(delta.tile(b, h, qt), dd);
        store(dq.tile(b, h, qt), acc * scale);
    }
}

/// The backward's key side: per K/V tile, `dV = Σ Pᵀ·dO` and `dK = scale · Σ dSᵀ·Q` over the
/// Q tiles, with `Pᵀ` recomputed from `K·Qᵀ` and `lse`, and `Δ` from
/// [`attention_backward_dq`]. The score tiles are transposed (rows are keys), so `lse` and `Δ`
/// are read at each column's query. `dk`/`dv` have a head per query head: with fewer K/V heads
/// (`HKV < H`), a K/V head's gradient is the sum over its `H / HKV` query heads.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn attention_backward_dkdv<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    d_out: Tensor<T, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    delta: Tensor<f32, B, H, S>,
    dk: TensorMut<T, B, H, SK, D>,
    dv: TensorMut<T, B, H, SK, D>,
    scale: f32,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
) {
    for (b, h, kt) in tiles(B, H, SK / TILE_M) {
        #[role(compute)]
        let kf = load(k.tile(b, h / (H / HKV), kt));
        let vf = load(v.tile(b, h / (H / HKV), kt));
        let mut dk_acc = zeros([TILE_M, D]);
        let mut dv_acc = zeros([TILE_M, D]);
        for qt in pipeline(0..S / TILE_N) {
            #[role(load)]
            {
                let qs = stage(q.tile(b, h, qt));
                let dos = stage(d_out.tile(b, h, qt));
            }
            #[role(compute)]
            {
                let st = mma(kf, qs.t());
                let pt = exp2(st * (scale * LOG2_E) - lse.at(b, h, st.index(S)) * LOG2_E);
                dv_acc = mma(pt.to::<T>(), dos, dv_acc);
                let dpt = mma(vf, dos.t());
                let dst = pt * (dpt - delta.at(b, h, st.index(S)));
                dk_acc = mma(dst.to::<T>(), qs, dk_acc);
            }
        }
        store(dk.tile(b, h, kt), dk_acc * scale);
        store(dv.tile(b, h, kt), dv_acc);
    }
}

/// [`attention_backward_dkdv`] under the causal mask aligned to the bottom right (query `i`
/// sees key `j` iff `j ≤ i + SK − S`), written with positions, since the score tiles are
/// transposed. The compiler skips the Q tiles the mask empties (the loop adds only products
/// of probabilities, which are 0 there): the loop starts at the first tile whose last query
/// sees the tile's first key.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn attention_backward_dkdv_causal<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    d_out: Tensor<T, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    delta: Tensor<f32, B, H, S>,
    dk: TensorMut<T, B, H, SK, D>,
    dv: TensorMut<T, B, H, SK, D>,
    scale: f32,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
) {
    for (b, h, kt) in tiles(B, H, SK / TILE_M) {
        #[role(compute)]
        let kf = load(k.tile(b, h / (H / HKV), kt));
        let vf = load(v.tile(b, h / (H / HKV), kt));
        let mut dk_acc = zeros([TILE_M, D]);
        let mut dv_acc = zeros([TILE_M, D]);
        for qt in pipeline(0..S / TILE_N) {
            #[role(load)]
            {
                let qs = stage(q.tile(b, h, qt));
                let dos = stage(d_out.tile(b, h, qt));
            }
            #[role(compute)]
            {
                let st = mma(kf, qs.t());
                let st = mask(st, st.index(SK) <= st.index(S) + (SK - S));
                let pt = exp2(st * (scale * LOG2_E) - lse.at(b, h, st.index(S)) * LOG2_E);
                dv_acc = mma(pt.to::<T>(), dos, dv_acc);
                let dpt = mma(vf, dos.t());
                let dst = pt * (dpt - delta.at(b, h, st.index(S)));
                dk_acc = mma(dst.to::<T>(), qs, dk_acc);
            }
        }
        store(dk.tile(b, h, kt), dk_acc * scale);
        store(dv.tile(b, h, kt), dv_acc);
    }
}

/// [`attention_backward_dkdv`] with grouped K/V heads (`HKV < H`, GQA/MQA) summed in the
/// kernel: a work item is a K/V tile of a K/V head, and a range loop walks the `H / HKV` query
/// heads that read it, each through the whole Q loop, accumulating into one `dK`/`dV`, so
/// `dk`/`dv` come out per K/V head (no sum on the host, and K/V are read once per group).
/// Deterministic: the heads are summed in a fixed order. K and V stay in shared memory
/// (`a_in_smem`): they serve every query head of the group, and the causal twin's mask scan
/// needs the registers (without it, 4 bytes spill on sm_90).
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4, a_in_smem)]
pub fn attention_backward_dkdv_grouped<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    d_out: Tensor<T, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    delta: Tensor<f32, B, H, S>,
    dk: TensorMut<T, B, HKV, SK, D>,
    dv: TensorMut<T, B, HKV, SK, D>,
    scale: f32,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
) {
    for (b, hk, kt) in tiles(B, HKV, SK / TILE_M) {
        #[role(compute)]
        let kf = load(k.tile(b, hk, kt));
        let vf = load(v.tile(b, hk, kt));
        let mut dk_acc = zeros([TILE_M, D]);
        let mut dv_acc = zeros([TILE_M, D]);
        for g in 0..H / HKV {
            let h = hk * (H / HKV) + g;
            for qt in pipeline(0..S / TILE_N) {
                #[role(load)]
                {
                    let qs = stage(q.tile(b, h, qt));
                    let dos = stage(d_out.tile(b, h, qt));
                }
                #[role(compute)]
                {
                    let st = mma(kf, qs.t());
                    let pt = exp2(st * (scale * LOG2_E) - lse.at(b, h, st.index(S)) * LOG2_E);
                    dv_acc = mma(pt.to::<T>(), dos, dv_acc);
                    let dpt = mma(vf, dos.t());
                    let dst = pt * (dpt - delta.at(b, h, st.index(S)));
                    dk_acc = mma(dst.to::<T>(), qs, dk_acc);
                }
            }
        }
        store(dk.tile(b, hk, kt), dk_acc * scale);
        store(dv.tile(b, hk, kt), dv_acc);
    }
}

/// [`attention_backward_dkdv_grouped`] under the causal mask aligned to the bottom right,
/// written with positions as in [`attention_backward_dkdv_causal`]: each query head's Q loop
/// skips the tiles the mask empties.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4, a_in_smem)]
pub fn attention_backward_dkdv_grouped_causal<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    d_out: Tensor<T, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    delta: Tensor<f32, B, H, S>,
    dk: TensorMut<T, B, HKV, SK, D>,
    dv: TensorMut<T, B, HKV, SK, D>,
    scale: f32,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
) {
    for (b, hk, kt) in tiles(B, HKV, SK / TILE_M) {
        #[role(compute)]
        let kf = load(k.tile(b, hk, kt));
        let vf = load(v.tile(b, hk, kt));
        let mut dk_acc = zeros([TILE_M, D]);
        let mut dv_acc = zeros([TILE_M, D]);
        for g in 0..H / HKV {
            let h = hk * (H / HKV) + g;
            for qt in pipeline(0..S / TILE_N) {
                #[role(load)]
                {
                    let qs = stage(q.tile(b, h, qt));
                    let dos = stage(d_out.tile(b, h, qt));
                }
                #[role(compute)]
                {
                    let st = mma(kf, qs.t());
                    let st = mask(st, st.index(SK) <= st.index(S) + (SK - S));
                    let pt = exp2(st * (scale * LOG2_E) - lse.at(b, h, st.index(S)) * LOG2_E);
                    dv_acc = mma(pt.to::<T>(), dos, dv_acc);
                    let dpt = mma(vf, dos.t());
                    let dst = pt * (dpt - delta.at(b, h, st.index(S)));
                    dk_acc = mma(dst.to::<T>(), qs, dk_acc);
                }
            }
        }
        store(dk.tile(b, hk, kt), dk_acc * scale);
        store(dv.tile(b, hk, kt), dv_acc);
    }
}

/// Softcap's backward (`kernels::variants::softcap_attention`, Gemma 2): the scores are
/// `s = cap · t`, `t = tanh(x / cap)` for `x = q·k·scale`, so the gradient reaching `x` is
/// `dS · (1 − t²)`. [`attention_backward_dq`] with that one factor more, `t` recomputed with the
/// forward's `fast_tanh` (the forward's log-sum-exp came from it). `softcap` is `cap`.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn softcap_attention_backward_dq<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: Tensor<T, B, H, S, D>,
    d_out: Tensor<T, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    dq: TensorMut<T, B, H, S, D>,
    delta: TensorMut<f32, B, H, S>,
    scale: f32,
    softcap: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let dof = load(d_out.tile(b, h, qt));
        let of = load(o.tile(b, h, qt));
        let dd = row_sum(dof.to::<f32>() * of.to::<f32>());
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            #[role(load)]
            {
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            {
                let s = mma(qf, ks.t());
                let t = fast_tanh(s * (scale / softcap));
                let p = exp2(t * (softcap * LOG2_E) - lse.at(b, h, s.index(S)) * LOG2_E);
                let dp = mma(dof, vs.t());
                let ds = p * (dp - dd) * (1.0 - t * t);
                acc = mma(ds.to::<T>(), ks, acc);
            }
        }
        store(delta.tile(b, h, qt), dd);
        store(dq.tile(b, h, qt), acc * scale);
    }
}

/// Softcap's backward, key side: [`attention_backward_dkdv`] with `dSᵀ · (1 − t²)` (see
/// [`softcap_attention_backward_dq`]). K and V stay in shared memory (`a_in_smem`): with them
/// in registers the kernel sits at 255 registers on sm_90, where any reordering of its
/// integer code (ring slots as shifts instead of divisions did) spills a register.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4, a_in_smem)]
pub fn softcap_attention_backward_dkdv<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    d_out: Tensor<T, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    delta: Tensor<f32, B, H, S>,
    dk: TensorMut<T, B, H, SK, D>,
    dv: TensorMut<T, B, H, SK, D>,
    scale: f32,
    softcap: f32,
) {
    for (b, h, kt) in tiles(B, H, SK / TILE_M) {
        #[role(compute)]
        let kf = load(k.tile(b, h / (H / HKV), kt));
        let vf = load(v.tile(b, h / (H / HKV), kt));
        let mut dk_acc = zeros([TILE_M, D]);
        let mut dv_acc = zeros([TILE_M, D]);
        for qt in pipeline(0..S / TILE_N) {
            #[role(load)]
            {
                let qs = stage(q.tile(b, h, qt));
                let dos = stage(d_out.tile(b, h, qt));
            }
            #[role(compute)]
            {
                let st = mma(kf, qs.t());
                let tt = fast_tanh(st * (scale / softcap));
                let pt = exp2(tt * (softcap * LOG2_E) - lse.at(b, h, st.index(S)) * LOG2_E);
                dv_acc = mma(pt.to::<T>(), dos, dv_acc);
                let dpt = mma(vf, dos.t());
                let dst = pt * (dpt - delta.at(b, h, st.index(S))) * (1.0 - tt * tt);
                dk_acc = mma(dst.to::<T>(), qs, dk_acc);
            }
        }
        store(dk.tile(b, h, kt), dk_acc * scale);
        store(dv.tile(b, h, kt), dv_acc);
    }
}

/// [`softcap_attention_backward_dkdv`] under the causal mask aligned to the bottom right. The
/// mask applies to the capped scores that the softmax saw; `t = tanh(x / cap)` comes from the
/// unmasked product, so the factor `1 − t²` is finite everywhere and multiplies only
/// probabilities, which are 0 where the mask holds (the compiler refuses a `1 − t²` of masked
/// scores: 0 · −inf). The Q loop skips the tiles the mask empties. K and V stay in shared
/// memory (`a_in_smem`): with the tanh and the mask scan, 4 bytes spill on sm_90 without.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4, a_in_smem)]
pub fn softcap_attention_backward_dkdv_causal<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    d_out: Tensor<T, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    delta: Tensor<f32, B, H, S>,
    dk: TensorMut<T, B, H, SK, D>,
    dv: TensorMut<T, B, H, SK, D>,
    scale: f32,
    softcap: f32,
) {
    for (b, h, kt) in tiles(B, H, SK / TILE_M) {
        #[role(compute)]
        let kf = load(k.tile(b, h / (H / HKV), kt));
        let vf = load(v.tile(b, h / (H / HKV), kt));
        let mut dk_acc = zeros([TILE_M, D]);
        let mut dv_acc = zeros([TILE_M, D]);
        for qt in pipeline(0..S / TILE_N) {
            #[role(load)]
            {
                let qs = stage(q.tile(b, h, qt));
                let dos = stage(d_out.tile(b, h, qt));
            }
            #[role(compute)]
            {
                let xt = mma(kf, qs.t());
                let tt = fast_tanh(xt * (scale / softcap));
                let st = mask(tt * (softcap * LOG2_E), xt.index(SK) <= xt.index(S) + (SK - S));
                let pt = exp2(st - lse.at(b, h, xt.index(S)) * LOG2_E);
                dv_acc = mma(pt.to::<T>(), dos, dv_acc);
                let dpt = mma(vf, dos.t());
                let dst = pt * (dpt - delta.at(b, h, xt.index(S))) * (1.0 - tt * tt);
                dk_acc = mma(dst.to::<T>(), qs, dk_acc);
            }
        }
        store(dk.tile(b, h, kt), dk_acc * scale);
        store(dv.tile(b, h, kt), dv_acc);
    }
}

/// Sliding window's backward (`kernels::variants::sliding_window_attention`: query row `i`,
/// aligned to the bottom right at key `i + SK − S`, sees the keys `i + SK − S − left ..=
/// i + SK − S + right`): [`attention_backward_dq`] with the window written as a mask. The
/// compiler skips the K/V tiles outside it, as in the forward. `window_right = 0` is Mistral's
/// causal sliding window; the `causal` flag works too.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn sliding_window_attention_backward_dq<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: Tensor<T, B, H, S, D>,
    d_out: Tensor<T, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    dq: TensorMut<T, B, H, S, D>,
    delta: TensorMut<f32, B, H, S>,
    scale: f32,
    window_left: f32,
    window_right: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let dof = load(d_out.tile(b, h, qt));
        let of = load(o.tile(b, h, qt));
        let dd = row_sum(dof.to::<f32>() * of.to::<f32>());
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            #[role(load)]
            {
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            {
                let s = mma(qf, ks.t());
                let diag = s.index(S) + (SK - S);
                let s = mask(s, s.index(SK) >= diag - window_left && s.index(SK) <= diag + window_right);
                let p = exp2(s * (scale * LOG2_E) - lse.at(b, h, s.index(S)) * LOG2_E);
                let dp = mma(dof, vs.t());
                let ds = p * (dp - dd);
                acc = mma(ds.to::<T>(), ks, acc);
            }
        }
        store(delta.tile(b, h, qt), dd);
        store(dq.tile(b, h, qt), acc * scale);
    }
}

/// Sliding window's backward, key side: [`attention_backward_dkdv`] with the window as a mask
/// on the transposed scores (positions follow the tile's axes, so it reads as in the forward).
/// The compiler skips the Q tiles outside the window.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn sliding_window_attention_backward_dkdv<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    d_out: Tensor<T, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    delta: Tensor<f32, B, H, S>,
    dk: TensorMut<T, B, H, SK, D>,
    dv: TensorMut<T, B, H, SK, D>,
    scale: f32,
    window_left: f32,
    window_right: f32,
) {
    for (b, h, kt) in tiles(B, H, SK / TILE_M) {
        #[role(compute)]
        let kf = load(k.tile(b, h / (H / HKV), kt));
        let vf = load(v.tile(b, h / (H / HKV), kt));
        let mut dk_acc = zeros([TILE_M, D]);
        let mut dv_acc = zeros([TILE_M, D]);
        for qt in pipeline(0..S / TILE_N) {
            #[role(load)]
            {
                let qs = stage(q.tile(b, h, qt));
                let dos = stage(d_out.tile(b, h, qt));
            }
            #[role(compute)]
            {
                let st = mma(kf, qs.t());
                let diag = st.index(S) + (SK - S);
                let st = mask(st, st.index(SK) >= diag - window_left && st.index(SK) <= diag + window_right);
                let pt = exp2(st * (scale * LOG2_E) - lse.at(b, h, st.index(S)) * LOG2_E);
                dv_acc = mma(pt.to::<T>(), dos, dv_acc);
                let dpt = mma(vf, dos.t());
                let dst = pt * (dpt - delta.at(b, h, st.index(S)));
                dk_acc = mma(dst.to::<T>(), qs, dk_acc);
            }
        }
        store(dk.tile(b, h, kt), dk_acc * scale);
        store(dv.tile(b, h, kt), dv_acc);
    }
}

/// A grouped dK/dV kernel's `launch_async`.
type DkdvLaunch<T> = fn(
    &Device,
    &Config,
    &DeviceTensor<T>,
    &DeviceTensor<T>,
    &DeviceTensor<T>,
    &DeviceTensor<T>,
    &DeviceTensor<f32>,
    &DeviceTensor<f32>,
    &mut DeviceTensor<T>,
    &mut DeviceTensor<T>,
    f32,
    Option<&crate::DeviceSeqOffsets>,
    Option<&crate::DeviceSeqOffsets>,
) -> Result<(), Error>;

/// What the backward reads: the forward's inputs `q` `[B, H, S, D]`, `k`, `v` `[B, HKV, SK, D]`,
/// its output `o` and log-sum-exp `lse` `[B, H, S]` (f32, natural log, as the forward's `lse`
/// output gives it), and the output's gradient `d_out` `[B, H, S, D]`.
pub struct BackwardInputs<'a, T: crate::runtime::Element> {
    /// Q, `[B, H, S, D]`.
    pub q: &'a DeviceTensor<T>,
    /// K, `[B, HKV, SK, D]`.
    pub k: &'a DeviceTensor<T>,
    /// V, `[B, HKV, SK, D]`.
    pub v: &'a DeviceTensor<T>,
    /// The forward's output O, `[B, H, S, D]`.
    pub o: &'a DeviceTensor<T>,
    /// The forward's log-sum-exp, `[B, H, S]`.
    pub lse: &'a DeviceTensor<f32>,
    /// The gradient of the loss with respect to O, `[B, H, S, D]`.
    pub d_out: &'a DeviceTensor<T>,
}

/// What the backward writes: `dq` `[B, H, S, D]`; `dk`, `dv` `[B, HKV, SK, D]`, the gradients
/// of K and V (with `HKV < H`, each summed over its group's query heads in the kernel,
/// [`attention_backward_dkdv_grouped`]); and `delta` `[B, H, S]` f32, `Δ = rowsum(dO ∘ O)`,
/// which the dK/dV kernel reads.
pub struct BackwardOutputs<'a, T: crate::runtime::Element> {
    /// dQ, `[B, H, S, D]`.
    pub dq: &'a mut DeviceTensor<T>,
    /// dK, `[B, HKV, SK, D]`.
    pub dk: &'a mut DeviceTensor<T>,
    /// dV, `[B, HKV, SK, D]`.
    pub dv: &'a mut DeviceTensor<T>,
    /// Δ, `[B, H, S]`: a workspace the dK/dV kernel reads.
    pub delta: &'a mut DeviceTensor<f32>,
}

/// The backward of `kernels::attention` on `device`: the dQ kernel, then the dK/dV kernel (its
/// causal twin when `causal`; with fewer K/V heads than query heads, the grouped one, which
/// sums each group in the kernel), each with its schedule from [`backward_configs`] for the head
/// dim of `q` and the element type `T`; returns when both are enqueued (synchronize before
/// reading the outputs). Every argument is checked as the typed launchers check them: a wrong
/// shape, dtype or stride is an `Error::Argument` naming it.
///
/// ```no_run
/// use flashcore::kernels::backward::{launch_backward_async, BackwardInputs, BackwardOutputs};
/// use flashcore::runtime::Device;
/// use flashcore::f16;
///
/// let device = Device::new(0)?;
/// let (shape, rows) = ([1, 8, 512, 64], [1, 8, 512]);
/// let t = |x: f32| device.filled(&shape, f16::from_f32(x));
/// let (q, k, v, o, d_out) = (t(0.1)?, t(0.2)?, t(0.3)?, t(0.3)?, t(1.0)?);
/// let lse = device.filled(&rows, 7.0f32)?;
/// let (mut dq, mut dk, mut dv) = (t(f32::NAN)?, t(f32::NAN)?, t(f32::NAN)?);
/// let mut delta = device.filled(&rows, f32::NAN)?;
/// let inputs = BackwardInputs { q: &q, k: &k, v: &v, o: &o, lse: &lse, d_out: &d_out };
/// let outputs = BackwardOutputs { dq: &mut dq, dk: &mut dk, dv: &mut dv, delta: &mut delta };
/// launch_backward_async(&device, inputs, outputs, 0.125, true)?;
/// device.synchronize()?;
/// # Ok::<(), flashcore::Error>(())
/// ```
pub fn launch_backward_async<T: crate::HalfFloat>(
    device: &Device,
    inputs: BackwardInputs<'_, T>,
    outputs: BackwardOutputs<'_, T>,
    scale: f32,
    causal: bool,
) -> Result<(), Error> {
    launch_either(device, inputs, outputs, scale, causal, None)
}

/// [`launch_backward_async`] for a variable-length batch, FlashAttention's varlen layout:
/// sequence `i` is rows `cu_q[i] .. cu_q[i + 1]` of `q`, `o`, `d_out` and `dq` (packed `[TOTAL_Q,
/// H, D]`) and rows `cu_k[i] .. cu_k[i + 1]` of `k`, `v`, `dk` and `dv` (`[TOTAL_K, HKV, D]`);
/// `lse` and `delta` are `[H, TOTAL_Q]`, as the forward's varlen `lse` output gives it.
pub fn launch_varlen_backward_async<T: crate::HalfFloat>(
    device: &Device,
    inputs: BackwardInputs<'_, T>,
    outputs: BackwardOutputs<'_, T>,
    (cu_q, cu_k): (&crate::DeviceSeqOffsets, &crate::DeviceSeqOffsets),
    scale: f32,
    causal: bool,
) -> Result<(), Error> {
    launch_either(device, inputs, outputs, scale, causal, Some((cu_q, cu_k)))
}

/// Whether K/V have fewer heads than Q (GQA/MQA: dK and dV summed over each group). The head
/// axis is axis 1 of both layouts, `[B, H, S, D]` and packed `[TOTAL, H, D]`.
fn grouped_heads(q_shape: &[usize], k_shape: &[usize]) -> bool {
    q_shape.get(1) != k_shape.get(1)
}

fn launch_either<T: crate::HalfFloat>(
    device: &Device,
    inputs: BackwardInputs<'_, T>,
    outputs: BackwardOutputs<'_, T>,
    scale: f32,
    causal: bool,
    offsets: Option<(&crate::DeviceSeqOffsets, &crate::DeviceSeqOffsets)>,
) -> Result<(), Error> {
    let (cu_q, cu_k) = (offsets.map(|o| o.0), offsets.map(|o| o.1));
    let BackwardInputs { q, k, v, o, lse, d_out } = inputs;
    let BackwardOutputs { dq, dk, dv, delta } = outputs;
    let head_dim = match q.shape() {
        [_, _, _, d] if offsets.is_none() => *d as u32,
        [_, _, d] if offsets.is_some() => *d as u32,
        other => {
            return Err(Error::Argument {
                kernel: "attention_backward_dq".into(),
                arg: "q".into(),
                message: match offsets {
                    None => format!("expected a [B, H, S, D] tensor, got shape {other:?}"),
                    Some(_) => format!("expected a packed [TOTAL, H, D] tensor, got shape {other:?}"),
                },
            })
        }
    };
    // The target the launches take (`FLASHCORE_TARGET`'s, else the device's best): the dQ and
    // dK/dV schedules depend on it.
    let requested = crate::target::requested()?;
    let target = requested.unwrap_or_else(|| {
        let (major, minor) = device.info().compute_capability;
        Target::for_compute_capability(major, minor)
    });
    let configs = backward_configs_for(head_dim, target);
    let dtype = |c: Config| Config { dtype: T::DTYPE, ..c };
    let dq_config = Config { causal, target: requested.unwrap_or(configs.dq.target), ..dtype(configs.dq) };
    attention_backward_dq::launch_async(
        device, &dq_config, q, k, v, o, d_out, lse, dq, delta, scale, cu_q, cu_k,
    )?;
    // Grouped K/V heads: the kernels that sum each group's query heads (dK/dV per K/V head).
    if grouped_heads(q.shape(), k.shape()) {
        let (config, launch) = if causal {
            (
                dtype(configs.dkdv_grouped_causal),
                attention_backward_dkdv_grouped_causal::launch_async::<T> as DkdvLaunch<T>,
            )
        } else {
            (dtype(configs.dkdv_grouped), attention_backward_dkdv_grouped::launch_async::<T> as DkdvLaunch<T>)
        };
        // K and V stay in shared memory for the whole group (see the kernels' declarations).
        let config = Config { a_in_smem: true, ..config };
        return launch(device, &config, q, k, v, d_out, lse, delta, dk, dv, scale, cu_q, cu_k);
    }
    if causal {
        let config = dtype(configs.dkdv_causal);
        attention_backward_dkdv_causal::launch_async(
            device, &config, q, k, v, d_out, lse, delta, dk, dv, scale, cu_q, cu_k,
        )
    } else {
        let config = dtype(configs.dkdv);
        attention_backward_dkdv::launch_async(
            device, &config, q, k, v, d_out, lse, delta, dk, dv, scale, cu_q, cu_k,
        )
    }
}

#[cfg(test)]
mod tests {
    /// The packed layout's head axis is axis 1, as the dense one's: a packed GQA launch once
    /// read axis 0 (the total length) and took the per-query-head dK/dV kernel (found on the GPU).
    #[test]
    fn grouped_heads_reads_the_head_axis_of_both_layouts() {
        assert!(super::grouped_heads(&[2, 16, 700, 128], &[2, 4, 700, 128]));
        assert!(!super::grouped_heads(&[2, 16, 700, 128], &[2, 16, 900, 128]));
        assert!(super::grouped_heads(&[3049, 16, 128], &[3049, 4, 128]));
        assert!(!super::grouped_heads(&[3049, 16, 128], &[5000, 16, 128]));
    }
}
