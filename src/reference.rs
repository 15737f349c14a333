//! Float64 CPU references for attention: a fused per-row one (multithreaded, optionally on a
//! sample of rows, for checking large shapes) and a naive one that materializes
//! softmax(Q·Kᵀ·scale) before multiplying by V (to check the first). Plus the error metrics.

/// `[B, H, S, D]` row-major attention inputs, converted to f64.
pub struct Problem<'a> {
    pub q: &'a [f64],
    pub k: &'a [f64],
    pub v: &'a [f64],
    pub b: usize,
    pub h: usize,
    pub s: usize,
    pub d: usize,
    pub scale: f64,
}

/// One output row: softmax(q_row · Kᵀ · scale) · V for head `bh` and query row `row`.
fn fused_row(p: &Problem, bh: usize, row: usize, out: &mut [f64]) {
    let (s, d) = (p.s, p.d);
    let base = bh * s * d;
    let q = &p.q[base + row * d..base + (row + 1) * d];
    let mut scores = vec![0.0f64; s];
    let mut max = f64::NEG_INFINITY;
    for (j, score) in scores.iter_mut().enumerate() {
        let k = &p.k[base + j * d..base + (j + 1) * d];
        *score = q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * p.scale;
        max = max.max(*score);
    }
    let mut sum = 0.0;
    for score in scores.iter_mut() {
        *score = (*score - max).exp();
        sum += *score;
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    for (j, w) in scores.iter().enumerate() {
        let v = &p.v[base + j * d..base + (j + 1) * d];
        for (o, x) in out.iter_mut().zip(v) {
            *o += w * x;
        }
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

/// The output rows `rows` (indices into the `B·H·S` rows) of attention, in float64, spread
/// over the machine's cores. Returns them in the order given, `D` values each.
pub fn attention_rows(p: &Problem, rows: &[usize]) -> Vec<f64> {
    let d = p.d;
    let mut out = vec![0.0; rows.len() * d];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(64);
    let per = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (chunk_rows, chunk_out) in rows.chunks(per).zip(out.chunks_mut(per * d)) {
            scope.spawn(move || {
                for (r, o) in chunk_rows.iter().zip(chunk_out.chunks_mut(d)) {
                    fused_row(p, r / p.s, r % p.s, o);
                }
            });
        }
    });
    out
}

/// All output rows of attention in float64.
pub fn attention(p: &Problem) -> Vec<f64> {
    let rows: Vec<usize> = (0..p.b * p.h * p.s).collect();
    attention_rows(p, &rows)
}

/// The textbook form, one head at a time: P = softmax(Q·Kᵀ·scale) as a full S×S matrix, then P·V.
pub fn attention_naive(p: &Problem) -> Vec<f64> {
    let (s, d) = (p.s, p.d);
    let mut out = vec![0.0; p.b * p.h * s * d];
    for bh in 0..p.b * p.h {
        let base = bh * s * d;
        let mut probs = vec![0.0f64; s * s];
        for i in 0..s {
            for j in 0..s {
                let mut dot = 0.0;
                for x in 0..d {
                    dot += p.q[base + i * d + x] * p.k[base + j * d + x];
                }
                probs[i * s + j] = dot * p.scale;
            }
            let row = &mut probs[i * s..(i + 1) * s];
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
                out[base + i * d + x] = (0..s).map(|j| probs[i * s + j] * p.v[base + j * d + x]).sum();
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
    pub max_abs: f64,
    /// Elements of `got` that are NaN or infinite (a poisoned output left unwritten shows here).
    pub non_finite: usize,
}

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
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

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
        let (b, h, s, d) = (2, 3, 37, 16);
        let n = b * h * s * d;
        let (q, k, v) = (random(n, &mut rng), random(n, &mut rng), random(n, &mut rng));
        let p = Problem { q: &q, k: &k, v: &v, b, h, s, d, scale: 0.25 };
        let fused = attention(&p);
        let naive = attention_naive(&p);
        let err = compare(&fused, &naive);
        assert!(err.rel_l2 < 1e-13, "{err:?}");
        // Sampled rows agree with the full computation.
        let rows = [0, 5, s, b * h * s - 1];
        let sampled = attention_rows(&p, &rows);
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(&sampled[i * d..(i + 1) * d], &fused[r * d..(r + 1) * d]);
        }
    }

    #[test]
    fn one_key_gives_its_value_and_equal_scores_average() {
        // S = 1: the output is V itself.
        let (q, k, v) = (vec![0.3, -1.0], vec![2.0, 5.0], vec![7.0, -3.0]);
        let p = Problem { q: &q, k: &k, v: &v, b: 1, h: 1, s: 1, d: 2, scale: 1.0 };
        assert_eq!(attention(&p), vec![7.0, -3.0]);
        // Zero queries: uniform weights, the mean of V's rows.
        let q = vec![0.0; 4];
        let k = vec![1.0, 2.0, 3.0, 4.0];
        let v = vec![1.0, 10.0, 3.0, 30.0];
        let p = Problem { q: &q, k: &k, v: &v, b: 1, h: 1, s: 2, d: 2, scale: 1.0 };
        assert_eq!(attention(&p), vec![2.0, 20.0, 2.0, 20.0]);
    }

    #[test]
    fn compare_flags_non_finite_outputs() {
        let e = compare(&[1.0, f64::NAN], &[1.0, 2.0]);
        assert_eq!(e.non_finite, 1);
        assert!(e.rel_l2.is_infinite());
    }
}
