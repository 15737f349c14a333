//! Float64 CPU references for attention: a fused per-row one (multithreaded, optionally on a
//! sample of rows, for checking large shapes) and a naive one that materializes
//! softmax(Q·Kᵀ·scale) before multiplying by V (to check the first). Plus the error metrics.
//!
//! ```
//! use flashcore::reference::{attention, attention_naive, compare, Problem, Rng};
//!
//! let (b, h, s, d) = (1, 2, 8, 4);
//! let mut rng = Rng::new(1);
//! let mut gen = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f64>>();
//! let (q, k, v) = (gen(b * h * s * d), gen(b * h * s * d), gen(b * h * s * d));
//! let p = Problem { q: &q, k: &k, v: &v, b, h, hk: h, s, sk: s, d, scale: 0.5, causal: true };
//! assert!(compare(&attention(&p), &attention_naive(&p)).rel_l2 < 1e-12);
//! ```

/// Row-major attention inputs, converted to f64: `q` is `[B, H, S, D]`, `k` and `v` are
/// `[B, HK, SK, D]` (query head `h` reads K/V head `h / (H / HK)`).
pub struct Problem<'a> {
    /// Q, `[B, H, S, D]`.
    pub q: &'a [f64],
    /// K, `[B, HK, SK, D]`.
    pub k: &'a [f64],
    /// V, `[B, HK, SK, D]`.
    pub v: &'a [f64],
    /// Batch.
    pub b: usize,
    /// Query heads.
    pub h: usize,
    /// K/V heads (a divisor of `h`).
    pub hk: usize,
    /// Query rows.
    pub s: usize,
    /// Key/value rows.
    pub sk: usize,
    /// Head dim.
    pub d: usize,
    /// The softmax scale (usually 1/√D).
    pub scale: f64,
    /// Causal, aligned to the bottom right (FlashAttention 2.1+): query row `i` sees keys
    /// `j ≤ i + SK − S`. A row that sees no key has output 0.
    pub causal: bool,
}

/// Keys `0..n` that query row `row` of `s` attends to among `sk` (bottom-right causal or not).
pub fn keys_seen(row: usize, s: usize, sk: usize, causal: bool) -> usize {
    if causal {
        (row as i64 + sk as i64 - s as i64 + 1).clamp(0, sk as i64) as usize
    } else {
        sk
    }
}

/// The (query, key) pairs one head of `s` queries and `sk` keys attends to: its useful work is
/// `4 · D` flops a pair.
pub fn attended_pairs(s: usize, sk: usize, causal: bool) -> usize {
    (0..s).map(|row| keys_seen(row, s, sk, causal)).sum()
}

impl Problem<'_> {
    /// Keys `0..n` that query row `row` attends to.
    pub fn keys_seen(&self, row: usize) -> usize {
        keys_seen(row, self.s, self.sk, self.causal)
    }

    /// Index of the first K/V element that query head `bh` (batch · H + head) reads.
    fn kv_base(&self, bh: usize) -> usize {
        let kv_head = (bh / self.h) * self.hk + (bh % self.h) / (self.h / self.hk);
        kv_head * self.sk * self.d
    }
}

/// An attention variant in float64, as PyTorch's FlexAttention states one: `score(b, h, i, j,
/// x)` rewrites the scaled score `x = q_i·k_j·scale` of query row `i` and key `j` (FlexAttention's
/// `score_mod`), and `keep(b, h, i, j)` says whether that score exists (`mask_mod`); the mask
/// applies after the score modification. `i` and `j` count from the start of each sequence.
///
/// ```
/// use flashcore::reference::{attention_variant, attention, compare, Problem, Rng, Variant};
///
/// let (b, h, s, d) = (1, 1, 6, 4);
/// let mut rng = Rng::new(3);
/// let mut gen = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f64>>();
/// let (q, k, v) = (gen(b * h * s * d), gen(b * h * s * d), gen(b * h * s * d));
/// let plain = Problem { q: &q, k: &k, v: &v, b, h, hk: h, s, sk: s, d, scale: 0.5, causal: false };
/// // Causal, written as a mask: the same as the causal flag.
/// let causal = Variant::new(|_, _, _, _, x| x, |_, _, i, j| j <= i);
/// let want = attention(&Problem { causal: true, ..plain });
/// assert!(compare(&attention_variant(&plain, &causal).0, &want).rel_l2 < 1e-12);
/// ```
pub struct Variant {
    /// `score(b, h, i, j, x)`: the modified score.
    pub score: Box<ScoreFn>,
    /// `keep(b, h, i, j)`: whether the score of query `i` and key `j` exists.
    pub keep: Box<KeepFn>,
}

/// `score(b, h, i, j, x)` of a [`Variant`].
pub type ScoreFn = dyn Fn(usize, usize, usize, usize, f64) -> f64 + Send + Sync;
/// `keep(b, h, i, j)` of a [`Variant`].
pub type KeepFn = dyn Fn(usize, usize, usize, usize) -> bool + Send + Sync;

impl Variant {
    /// The variant with these score and mask functions.
    pub fn new(
        score: impl Fn(usize, usize, usize, usize, f64) -> f64 + Send + Sync + 'static,
        keep: impl Fn(usize, usize, usize, usize) -> bool + Send + Sync + 'static,
    ) -> Variant {
        Variant { score: Box::new(score), keep: Box::new(keep) }
    }

    /// Plain attention: scores unchanged, every key kept.
    pub fn plain() -> Variant {
        Variant::new(|_, _, _, _, x| x, |_, _, _, _| true)
    }
}

/// Every output row and log-sum-exp of attention variant `variant` (on top of `p`'s causal
/// flag), in float64.
pub fn attention_variant(p: &Problem, variant: &Variant) -> (Vec<f64>, Vec<f64>) {
    let rows: Vec<usize> = (0..p.b * p.h * p.s).collect();
    variant_rows_lse(p, &rows, variant)
}

/// One output row: softmax(score(q_row · Kᵀ · scale), masked) · V for head `bh` and query row
/// `row`. Returns the row's log-sum-exp, ln Σ exp(score), +inf for a row that sees no key.
fn fused_row(p: &Problem, bh: usize, row: usize, out: &mut [f64], variant: &Variant) -> f64 {
    let d = p.d;
    let (qbase, kbase) = (bh * p.s * d, p.kv_base(bh));
    let (batch, head) = (bh / p.h, bh % p.h);
    let q = &p.q[qbase + row * d..qbase + (row + 1) * d];
    let mut scores = vec![0.0f64; p.keys_seen(row)];
    let mut max = f64::NEG_INFINITY;
    for (j, score) in scores.iter_mut().enumerate() {
        let k = &p.k[kbase + j * d..kbase + (j + 1) * d];
        let x = q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * p.scale;
        *score = if (variant.keep)(batch, head, row, j) {
            (variant.score)(batch, head, row, j, x)
        } else {
            f64::NEG_INFINITY
        };
        max = max.max(*score);
    }
    if max == f64::NEG_INFINITY {
        out.iter_mut().for_each(|o| *o = 0.0);
        return f64::INFINITY;
    }
    let mut sum = 0.0;
    for score in scores.iter_mut() {
        *score = (*score - max).exp();
        sum += *score;
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    for (j, w) in scores.iter().enumerate() {
        let v = &p.v[kbase + j * d..kbase + (j + 1) * d];
        for (o, x) in out.iter_mut().zip(v) {
            *o += w * x;
        }
    }
    if sum > 0.0 {
        out.iter_mut().for_each(|o| *o /= sum);
        max + sum.ln()
    } else {
        f64::INFINITY
    }
}

/// The output rows `rows` (indices into the `B·H·S` rows) of attention, in float64, spread
/// over the machine's cores. Returns them in the order given, `D` values each.
pub fn attention_rows(p: &Problem, rows: &[usize]) -> Vec<f64> {
    attention_rows_lse(p, rows).0
}

/// Like [`attention_rows`], with each row's log-sum-exp (+inf for a row that sees no key).
pub fn attention_rows_lse(p: &Problem, rows: &[usize]) -> (Vec<f64>, Vec<f64>) {
    variant_rows_lse(p, rows, &Variant::plain())
}

/// Like [`attention_rows_lse`] for attention variant `variant`.
pub fn variant_rows_lse(p: &Problem, rows: &[usize], variant: &Variant) -> (Vec<f64>, Vec<f64>) {
    let d = p.d;
    let mut out = vec![0.0; rows.len() * d];
    let mut lse = vec![0.0; rows.len()];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(64);
    let per = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for ((chunk_rows, chunk_out), chunk_lse) in
            rows.chunks(per).zip(out.chunks_mut(per * d)).zip(lse.chunks_mut(per))
        {
            scope.spawn(move || {
                for ((r, o), l) in chunk_rows.iter().zip(chunk_out.chunks_mut(d)).zip(chunk_lse) {
                    *l = fused_row(p, r / p.s, r % p.s, o, variant);
                }
            });
        }
    });
    (out, lse)
}

/// The gradients of attention (`softmax(scale · Q·Kᵀ) · V`, `p`'s causal flag) for an output
/// gradient `dO`, in float64, at the rows asked for: what FlashAttention-2's backward computes.
/// `dk`, `dv` are per query head (`[B, H, SK, D]`; with grouped K/V heads, a K/V head's gradient
/// is the sum over its query heads). A row that sees no key has P = 0 (its log-sum-exp +inf).
pub struct Gradients {
    /// `dQ` rows, `D` each, of `query_rows`.
    pub dq: Vec<f64>,
    /// `Δ = rowsum(dO ∘ O)` of `query_rows`.
    pub delta: Vec<f64>,
    /// The forward's log-sum-exp (natural log) of `query_rows`.
    pub lse: Vec<f64>,
    /// `O` rows of `query_rows`.
    pub o: Vec<f64>,
    /// `dK` rows, `D` each, of `key_rows` (indices into `[B, H, SK]`).
    pub dk: Vec<f64>,
    /// `dV` rows of `key_rows`.
    pub dv: Vec<f64>,
}

/// [`Gradients`] of `p` for `d_out` (`[B, H, S, D]`) at `query_rows` (indices into `[B, H, S]`)
/// and `key_rows` (indices into `[B, H, SK]`, per query head). A head with key rows asked for
/// has all its query rows computed (each key's gradient sums over them); rows are spread over
/// the machine's threads.
///
/// ```
/// use flashcore::reference::{attention_backward_rows, Problem, Rng};
///
/// let (b, h, s, d) = (1, 1, 5, 4);
/// let mut rng = Rng::new(7);
/// let mut gen = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f64>>();
/// let (q, k, v, g) = (gen(s * d), gen(s * d), gen(s * d), gen(s * d));
/// let p = Problem { q: &q, k: &k, v: &v, b, h, hk: h, s, sk: s, d, scale: 0.5, causal: true };
/// let all: Vec<usize> = (0..s).collect();
/// let grads = attention_backward_rows(&p, &g, &all, &all);
/// // The last key is seen only by the last query, with dV = P·dO there.
/// let p_last = 1.0 / grads.lse[s - 1].exp() * (0.5 * (0..d).map(|x| q[(s - 1) * d + x] * k[(s - 1) * d + x]).sum::<f64>()).exp();
/// assert!((grads.dv[(s - 1) * d] - p_last * g[(s - 1) * d]).abs() < 1e-12);
/// ```
pub fn attention_backward_rows(
    p: &Problem,
    d_out: &[f64],
    query_rows: &[usize],
    key_rows: &[usize],
) -> Gradients {
    attention_backward_rows_with(p, d_out, query_rows, key_rows, &|_, _, x| (x, 1.0))
}

/// A score modification with its derivative: `(i, j, x) ↦ (f(x), f'(x))` for the scaled score
/// `x = q·k·scale` of query row `i` and key `j` (softcap: `(cap · tanh(x / cap),
/// 1 − tanh²(x / cap))`); a masked score is `f = −inf` (a sliding window outside it).
pub type ScoreWithGrad = dyn Fn(usize, usize, f64) -> (f64, f64) + Sync;

/// [`attention_backward_rows`] of `softmax(f(scale · Q·Kᵀ)) · V` for a score modification `f`
/// given with its derivative: the gradients flow through `f'` (`dS` at a score is
/// `P ∘ (dP − Δ) · f'(x)`).
pub fn attention_backward_rows_with(
    p: &Problem,
    d_out: &[f64],
    query_rows: &[usize],
    key_rows: &[usize],
    score: &ScoreWithGrad,
) -> Gradients {
    let (d, s, sk) = (p.d, p.s, p.sk);
    let mut g = Gradients {
        dq: vec![0.0; query_rows.len() * d],
        delta: vec![0.0; query_rows.len()],
        lse: vec![0.0; query_rows.len()],
        o: vec![0.0; query_rows.len() * d],
        dk: vec![0.0; key_rows.len() * d],
        dv: vec![0.0; key_rows.len() * d],
    };
    let mut heads: Vec<usize> =
        query_rows.iter().map(|r| r / s).chain(key_rows.iter().map(|r| r / sk)).collect();
    heads.sort_unstable();
    heads.dedup();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(64);
    for bh in heads {
        // This head's keys asked for (position in `key_rows`, key), and its query rows: all of
        // them when a key is asked for.
        let keys: Vec<(usize, usize)> =
            key_rows.iter().enumerate().filter(|(_, r)| *r / sk == bh).map(|(n, r)| (n, r % sk)).collect();
        let asked: Vec<(usize, usize)> =
            query_rows.iter().enumerate().filter(|(_, r)| *r / s == bh).map(|(n, r)| (n, r % s)).collect();
        let rows: Vec<usize> =
            if keys.is_empty() { asked.iter().map(|(_, i)| *i).collect() } else { (0..s).collect() };
        let per = rows.len().div_ceil(threads).max(1);
        // Per thread: (row, dq, Δ, lse, O) of the asked rows it computed, and its dK/dV sums.
        let parts: Vec<(Vec<(usize, Vec<f64>, f64, f64, Vec<f64>)>, Vec<f64>, Vec<f64>)> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = rows
                    .chunks(per)
                    .map(|chunk| {
                        let (keys, asked) = (&keys, &asked);
                        scope.spawn(move || {
                            let (mut dk, mut dv) = (vec![0.0; keys.len() * d], vec![0.0; keys.len() * d]);
                            let mut out = vec![];
                            for &i in chunk {
                                let row = backward_row(p, d_out, bh, i, score);
                                for (n, &(_, j)) in keys.iter().enumerate() {
                                    let (pij, ds) = (row.p[j], row.ds[j]);
                                    if pij == 0.0 {
                                        continue;
                                    }
                                    for x in 0..d {
                                        dk[n * d + x] += p.scale * ds * p.q[(bh * s + i) * d + x];
                                        dv[n * d + x] += pij * d_out[(bh * s + i) * d + x];
                                    }
                                }
                                if asked.iter().any(|(_, a)| *a == i) {
                                    out.push((i, row.dq, row.delta, row.lse, row.o));
                                }
                            }
                            (out, dk, dv)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("a reference thread panicked")).collect()
            });
        for (out, dk, dv) in parts {
            for (i, dq, delta, lse, o) in out {
                for &(n, _) in asked.iter().filter(|(_, a)| *a == i) {
                    g.dq[n * d..(n + 1) * d].copy_from_slice(&dq);
                    g.o[n * d..(n + 1) * d].copy_from_slice(&o);
                    g.delta[n] = delta;
                    g.lse[n] = lse;
                }
            }
            for (m, &(n, _)) in keys.iter().enumerate() {
                for x in 0..d {
                    g.dk[n * d + x] += dk[m * d + x];
                    g.dv[n * d + x] += dv[m * d + x];
                }
            }
        }
    }
    g
}

/// One query row's share of the backward: its probabilities `P[i, ..]`, `dS[i, ..]` (with
/// respect to the scaled scores, through the score modification), and its
/// `dQ`, `Δ`, log-sum-exp and `O` row.
struct BackwardRow {
    p: Vec<f64>,
    ds: Vec<f64>,
    dq: Vec<f64>,
    delta: f64,
    lse: f64,
    o: Vec<f64>,
}

fn backward_row(p: &Problem, d_out: &[f64], bh: usize, i: usize, score: &ScoreWithGrad) -> BackwardRow {
    let (d, s, sk) = (p.d, p.s, p.sk);
    let (qi, kv, gi) = (&p.q[(bh * s + i) * d..][..d], p.kv_base(bh), &d_out[(bh * s + i) * d..][..d]);
    let seen = p.keys_seen(i);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (scores, grads): (Vec<f64>, Vec<f64>) =
        (0..seen).map(|j| score(i, j, p.scale * dot(qi, &p.k[kv + j * d..][..d]))).unzip();
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = if m == f64::NEG_INFINITY { 0.0 } else { scores.iter().map(|x| (x - m).exp()).sum() };
    let mut probs = vec![0.0; sk];
    for (j, x) in scores.iter().enumerate() {
        if m > f64::NEG_INFINITY {
            probs[j] = (x - m).exp() / sum;
        }
    }
    let mut o = vec![0.0; d];
    for (j, pj) in probs.iter().enumerate().take(seen) {
        for (x, ox) in o.iter_mut().enumerate() {
            *ox += pj * p.v[kv + j * d + x];
        }
    }
    let delta = dot(gi, &o);
    let mut ds = vec![0.0; sk];
    let mut dq = vec![0.0; d];
    for j in 0..seen {
        ds[j] = probs[j] * (dot(gi, &p.v[kv + j * d..][..d]) - delta) * grads[j];
        for (x, dqx) in dq.iter_mut().enumerate() {
            *dqx += p.scale * ds[j] * p.k[kv + j * d + x];
        }
    }
    let lse = if m == f64::NEG_INFINITY { f64::INFINITY } else { m + sum.ln() };
    BackwardRow { p: probs, ds, dq, delta, lse, o }
}

/// A variable-length batch packed as FlashAttention's varlen API takes it (row-major, f64):
/// `q` is `[TOTAL_Q, H, D]`, `k` and `v` are `[TOTAL_K, HK, D]`, and sequence `i` is rows
/// `cu_q[i] .. cu_q[i + 1]` of `q` and `cu_k[i] .. cu_k[i + 1]` of `k`, `v`.
pub struct VarlenProblem<'a> {
    /// Q, `[TOTAL_Q, H, D]`.
    pub q: &'a [f64],
    /// K, `[TOTAL_K, HK, D]`.
    pub k: &'a [f64],
    /// V, `[TOTAL_K, HK, D]`.
    pub v: &'a [f64],
    /// Query offsets: `B + 1` cumulative lengths from 0.
    pub cu_q: &'a [u32],
    /// Key offsets, likewise.
    pub cu_k: &'a [u32],
    /// Query heads.
    pub h: usize,
    /// K/V heads (a divisor of `h`).
    pub hk: usize,
    /// Head dim.
    pub d: usize,
    /// The softmax scale.
    pub scale: f64,
    /// Causal within each sequence, aligned to its bottom right.
    pub causal: bool,
}

impl VarlenProblem<'_> {
    /// Sequence `i` as a dense one-batch problem `[1, H, len, D]` (copied out of the packing).
    pub fn sequence(&self, i: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>, usize, usize) {
        let (q0, q1) = (self.cu_q[i] as usize, self.cu_q[i + 1] as usize);
        let (k0, k1) = (self.cu_k[i] as usize, self.cu_k[i + 1] as usize);
        // Packed [len, heads, D] to [heads, len, D].
        let unpack = |x: &[f64], first: usize, len: usize, heads: usize| {
            let mut out = vec![0.0; len * heads * self.d];
            for t in 0..len {
                for hh in 0..heads {
                    let src = ((first + t) * heads + hh) * self.d;
                    let dst = (hh * len + t) * self.d;
                    out[dst..dst + self.d].copy_from_slice(&x[src..src + self.d]);
                }
            }
            out
        };
        let (s, sk) = (q1 - q0, k1 - k0);
        (
            unpack(self.q, q0, s, self.h),
            unpack(self.k, k0, sk, self.hk),
            unpack(self.v, k0, sk, self.hk),
            s,
            sk,
        )
    }
}

/// Output rows and log-sum-exps of packed query rows `rows` (indices `t · H + head` into the
/// `[TOTAL_Q, H]` rows, `t` the packed row), each computed as the dense problem of its
/// sequence. Returns them in the order given, `D` values per row.
pub fn varlen_rows_lse(p: &VarlenProblem, rows: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let (d, batch) = (p.d, p.cu_q.len() - 1);
    let mut out = vec![0.0; rows.len() * d];
    let mut lse = vec![0.0; rows.len()];
    for i in 0..batch {
        let (q0, q1) = (p.cu_q[i] as usize, p.cu_q[i + 1] as usize);
        // The requested rows of this sequence: (position in `rows`, dense row head · len + t).
        let mine: Vec<(usize, usize)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| (q0..q1).contains(&(*r / p.h)))
            .map(|(at, r)| (at, (r % p.h) * (q1 - q0) + (r / p.h - q0)))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let (q, k, v, s, sk) = p.sequence(i);
        let dense = Problem {
            q: &q,
            k: &k,
            v: &v,
            b: 1,
            h: p.h,
            hk: p.hk,
            s,
            sk,
            d,
            scale: p.scale,
            causal: p.causal,
        };
        let dense_rows: Vec<usize> = mine.iter().map(|(_, r)| *r).collect();
        let (o, l) = attention_rows_lse(&dense, &dense_rows);
        for (j, (at, _)) in mine.iter().enumerate() {
            out[at * d..(at + 1) * d].copy_from_slice(&o[j * d..(j + 1) * d]);
            lse[*at] = l[j];
        }
    }
    (out, lse)
}

/// Largest difference between log-sum-exp values (+inf must match +inf exactly), and how many
/// are not equal where one is infinite or NaN.
pub fn compare_lse(got: &[f64], want: &[f64]) -> (f64, usize) {
    let (mut max_abs, mut mismatched) = (0.0f64, 0);
    for (g, w) in got.iter().zip(want) {
        if g.is_finite() && w.is_finite() {
            max_abs = max_abs.max((g - w).abs());
        } else if g != w {
            mismatched += 1;
        }
    }
    (max_abs, mismatched)
}

/// All output rows of attention in float64.
pub fn attention(p: &Problem) -> Vec<f64> {
    let rows: Vec<usize> = (0..p.b * p.h * p.s).collect();
    attention_rows(p, &rows)
}

/// The textbook form, one head at a time: P = softmax(mask(Q·Kᵀ·scale)) as a full S×SK matrix
/// (masked scores -inf), then P·V.
pub fn attention_naive(p: &Problem) -> Vec<f64> {
    let (s, sk, d) = (p.s, p.sk, p.d);
    let mut out = vec![0.0; p.b * p.h * s * d];
    for bh in 0..p.b * p.h {
        let (base, kbase) = (bh * s * d, p.kv_base(bh));
        let mut probs = vec![0.0f64; s * sk];
        for i in 0..s {
            for j in 0..sk {
                let mut dot = 0.0;
                for x in 0..d {
                    dot += p.q[base + i * d + x] * p.k[kbase + j * d + x];
                }
                let masked = p.causal && j as i64 > i as i64 + sk as i64 - s as i64;
                probs[i * sk + j] = if masked { f64::NEG_INFINITY } else { dot * p.scale };
            }
            let row = &mut probs[i * sk..(i + 1) * sk];
            if row.iter().all(|x| *x == f64::NEG_INFINITY) {
                row.iter_mut().for_each(|x| *x = 0.0);
                continue;
            }
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row
                .iter_mut()
                .map(|x| {
                    *x = (*x - max).exp();
                    *x
                })
                .sum();
            row.iter_mut().for_each(|x| *x /= sum);
        }
        for i in 0..s {
            for x in 0..d {
                out[base + i * d + x] = (0..sk).map(|j| probs[i * sk + j] * p.v[kbase + j * d + x]).sum();
            }
        }
    }
    out
}

/// How far `got` is from `want`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorStats {
    /// ‖got − want‖₂ / ‖want‖₂: the figure the acceptance thresholds use.
    pub rel_l2: f64,
    /// The largest absolute difference of finite elements.
    pub max_abs: f64,
    /// Elements of `got` that are NaN or infinite (a poisoned output left unwritten shows here).
    pub non_finite: usize,
}

/// How far `got` is from `want` (same length).
pub fn compare(got: &[f64], want: &[f64]) -> ErrorStats {
    assert_eq!(got.len(), want.len(), "compare: lengths differ");
    let (mut diff2, mut ref2, mut max_abs, mut non_finite) = (0.0, 0.0, 0.0f64, 0);
    for (g, w) in got.iter().zip(want) {
        if !g.is_finite() {
            non_finite += 1;
            continue;
        }
        diff2 += (g - w) * (g - w);
        ref2 += w * w;
        max_abs = max_abs.max((g - w).abs());
    }
    ErrorStats {
        rel_l2: if non_finite > 0 { f64::INFINITY } else { (diff2 / ref2.max(f64::MIN_POSITIVE)).sqrt() },
        max_abs,
        non_finite,
    }
}

/// A small deterministic generator (SplitMix64) for test inputs.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, rng: &mut Rng) -> Vec<f64> {
        (0..n).map(|_| rng.normal()).collect()
    }

    #[test]
    fn fused_reference_matches_naive_softmax() {
        let mut rng = Rng::new(7);
        let (b, h, d) = (2, 3, 16);
        // Self-attention, cross-attention both ways, grouped K/V heads, each plain and causal
        // (bottom-right; with S > SK the first S − SK rows see no key and give 0).
        for (s, sk, hk) in [(37, 37, 3), (21, 50, 3), (50, 21, 3), (37, 37, 1)] {
            for causal in [false, true] {
                let kv = b * hk * sk * d;
                let (q, k, v) = (random(b * h * s * d, &mut rng), random(kv, &mut rng), random(kv, &mut rng));
                let p = Problem { q: &q, k: &k, v: &v, b, h, hk, s, sk, d, scale: 0.25, causal };
                let fused = attention(&p);
                let naive = attention_naive(&p);
                let err = compare(&fused, &naive);
                assert!(err.rel_l2 < 1e-13, "{s}x{sk} hk={hk} causal={causal}: {err:?}");
                // Sampled rows agree with the full computation.
                let rows = [0, 5, s, b * h * s - 1];
                let sampled = attention_rows(&p, &rows);
                for (i, r) in rows.iter().enumerate() {
                    assert_eq!(&sampled[i * d..(i + 1) * d], &fused[r * d..(r + 1) * d]);
                }
            }
        }
    }

    /// The fused log-sum-exp against ln Σ exp of the textbook masked score matrix.
    #[test]
    fn fused_log_sum_exp_matches_the_definition() {
        let mut rng = Rng::new(8);
        let (b, h, hk, d) = (1, 2, 1, 8);
        for (s, sk, causal) in [(9, 9, false), (12, 5, true), (4, 11, true)] {
            let kv = b * hk * sk * d;
            let (q, k, v) = (random(b * h * s * d, &mut rng), random(kv, &mut rng), random(kv, &mut rng));
            let p = Problem { q: &q, k: &k, v: &v, b, h, hk, s, sk, d, scale: 0.3, causal };
            let rows: Vec<usize> = (0..b * h * s).collect();
            let (_, lse) = attention_rows_lse(&p, &rows);
            for r in rows {
                let (bh, i) = (r / s, r % s);
                let kb = p.kv_base(bh);
                let exps: f64 = (0..p.keys_seen(i))
                    .map(|j| {
                        let dot: f64 = (0..d).map(|x| q[r * d + x] * k[kb + j * d + x]).sum();
                        (dot * p.scale).exp()
                    })
                    .sum();
                let want = if exps > 0.0 { exps.ln() } else { f64::INFINITY };
                assert!(
                    lse[r] == want || (lse[r] - want).abs() < 1e-12,
                    "{s}x{sk} row {r}: {} vs {want}",
                    lse[r]
                );
            }
            // With S > SK some causal rows see no key: their LSE is +inf.
            if s > sk {
                assert_eq!(lse[0], f64::INFINITY);
            }
        }
    }

    #[test]
    fn grouped_heads_equal_multi_head_attention_on_repeated_k_v() {
        let mut rng = Rng::new(9);
        let (b, h, hk, s, d) = (2, 4, 2, 9, 8);
        let q = random(b * h * s * d, &mut rng);
        let (k, v) = (random(b * hk * s * d, &mut rng), random(b * hk * s * d, &mut rng));
        // Query head j of batch i reads K/V head j / 2: repeat each K/V head twice.
        let repeat = |x: &[f64]| -> Vec<f64> {
            (0..b * h)
                .flat_map(|bh| {
                    let head = (bh / h) * hk + (bh % h) / (h / hk);
                    x[head * s * d..(head + 1) * s * d].to_vec()
                })
                .collect()
        };
        let (kr, vr) = (repeat(&k), repeat(&v));
        let grouped = Problem { q: &q, k: &k, v: &v, b, h, hk, s, sk: s, d, scale: 0.3, causal: false };
        let full = Problem { q: &q, k: &kr, v: &vr, b, h, hk: h, s, sk: s, d, scale: 0.3, causal: false };
        assert_eq!(attention(&grouped), attention(&full));
    }

    #[test]
    fn causal_rows_see_the_keys_up_to_their_diagonal() {
        let (q, k, v) = (vec![0.0; 3], vec![0.0; 5], vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        // S = 3, SK = 5, D = 1: row i sees keys 0..=i + 2, so the means of 1..=3, 1..=4, 1..=5.
        let p =
            Problem { q: &q, k: &k, v: &v, b: 1, h: 1, hk: 1, s: 3, sk: 5, d: 1, scale: 1.0, causal: true };
        assert_eq!(attention(&p), vec![2.0, 2.5, 3.0]);
        // S = 5, SK = 3: rows 0 and 1 see nothing (output 0), row i ≥ 2 sees keys 0..=i − 2.
        let p =
            Problem { q: &v, k: &q, v: &q, b: 1, h: 1, hk: 1, s: 5, sk: 3, d: 1, scale: 1.0, causal: true };
        assert_eq!(p.keys_seen(0), 0);
        assert_eq!(p.keys_seen(4), 3);
    }

    #[test]
    fn one_key_gives_its_value_and_equal_scores_average() {
        // S = 1: the output is V itself.
        let (q, k, v) = (vec![0.3, -1.0], vec![2.0, 5.0], vec![7.0, -3.0]);
        let p =
            Problem { q: &q, k: &k, v: &v, b: 1, h: 1, hk: 1, s: 1, sk: 1, d: 2, scale: 1.0, causal: false };
        assert_eq!(attention(&p), vec![7.0, -3.0]);
        // Zero queries: uniform weights, the mean of V's rows.
        let q = vec![0.0; 4];
        let k = vec![1.0, 2.0, 3.0, 4.0];
        let v = vec![1.0, 10.0, 3.0, 30.0];
        let p =
            Problem { q: &q, k: &k, v: &v, b: 1, h: 1, hk: 1, s: 2, sk: 2, d: 2, scale: 1.0, causal: false };
        assert_eq!(attention(&p), vec![2.0, 20.0, 2.0, 20.0]);
    }

    #[test]
    fn compare_flags_non_finite_outputs() {
        let e = compare(&[1.0, f64::NAN], &[1.0, 2.0]);
        assert_eq!(e.non_finite, 1);
        assert!(e.rel_l2.is_infinite());
    }
}
