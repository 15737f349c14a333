//! Inputs that stress attention's numerics (issue 7): scores near the edge of the fp16 range,
//! values near it, rows whose scores are all equal, and NaN or ±Inf in Q, K or V; and what each
//! output element must then be. The rule is IEEE arithmetic on the exact softmax, which is what
//! PyTorch's SDPA does: a NaN reaches exactly the outputs whose sum it enters (a NaN score
//! spoils its whole row, a NaN in V only its column of the rows that attend to it), an
//! infinite score makes its row NaN (`inf - inf`), an infinite value in V makes its column
//! infinite. `tests/numerics.rs` checks the kernels against these rules in the simulator, and
//! `examples/validate.rs numerics` (with `scripts/sdpa_numerics.py`) against SDPA on the GPU.
//!
//! ```
//! use flashcore::numerics::{cases, compare, expected, Expected};
//! use flashcore::DType;
//!
//! let all = cases([1, 1, 16, 16], 16, DType::F16, 7);
//! let nan_in_q = all.iter().find(|c| c.name.contains("nan_in_q")).expect("a NaN-in-Q case");
//! let want = expected(nan_in_q, 0.25, false);
//! assert!(want.iter().any(|e| *e == Expected::Nan));
//! // The expectation compared with itself: nothing of the wrong kind.
//! let exact: Vec<f64> = want.iter().map(|e| match e {
//!     Expected::Finite(x) | Expected::Inf(x) => *x,
//!     _ => f64::NAN,
//! }).collect();
//! assert_eq!(compare(&exact, &want).wrong_kind, 0);
//! ```

use crate::reference::{keys_seen, Rng};
use crate::DType;

/// One case: inputs `[B, H, S, D]` (K/V with `sk` rows and the same heads), already rounded to
/// the element type.
pub struct Case {
    /// What the case stresses, e.g. `nan_in_v`.
    pub name: &'static str,
    /// `[B, H, S, D]` of Q and O.
    pub shape: [usize; 4],
    /// Rows of K and V.
    pub sk: usize,
    /// Q, `[B, H, S, D]`, row-major.
    pub q: Vec<f64>,
    /// K, `[B, H, SK, D]`, row-major.
    pub k: Vec<f64>,
    /// V, `[B, H, SK, D]`, row-major.
    pub v: Vec<f64>,
}

/// What an output element must be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expected {
    /// A finite value, compared within the dtype's tolerance.
    Finite(f64),
    /// NaN.
    Nan,
    /// An infinity of this sign.
    Inf(f64),
    /// Finite in exact arithmetic, but a NaN or Inf sits in a key the causal mask hides from
    /// this row: PyTorch SDPA spreads it to every row (P·V multiplies it by 0), FlashCore to the
    /// rows whose Q tile processes that key's tile (0 · NaN in the P·V mma), not beyond. Either
    /// is accepted; a finite value must be close.
    Either(f64),
}

impl Expected {
    fn of(x: f64) -> Expected {
        if x.is_nan() {
            Expected::Nan
        } else if x.is_infinite() {
            Expected::Inf(x.signum())
        } else {
            Expected::Finite(x)
        }
    }

    /// Whether `got` is of the same kind (NaN, the same infinity, or finite).
    pub fn same_kind(self, got: f64) -> bool {
        match self {
            Expected::Finite(_) => got.is_finite(),
            Expected::Nan => got.is_nan(),
            Expected::Inf(sign) => got.is_infinite() && got.signum() == sign,
            Expected::Either(_) => true,
        }
    }
}

/// The largest finite f16.
const F16_MAX: f64 = 65504.0;

/// The cases at `shape` with `sk` keys (fresh random inputs from `seed`, rounded to `dtype`).
pub fn cases(shape: [usize; 4], sk: usize, dtype: DType, seed: u64) -> Vec<Case> {
    let [b, h, s, d] = shape;
    let mut rng = Rng::new(seed);
    let round = |x: f64| crate::round_to(dtype, x);
    let mut normal = |n: usize, scale: f64| (0..n).map(|_| round(rng.normal() * scale)).collect::<Vec<f64>>();
    let (nq, nk) = (b * h * s * d, b * h * sk * d);
    let mut out = vec![];
    // Scores of about ±3·10⁴ after scaling (q·k ≈ 100² · √D · N(0, 1)): softmax is one-hot and
    // any overflow in the exponent or the statistics would show.
    let big = 100.0;
    out.push(Case {
        name: "large_scores",
        shape,
        sk,
        q: normal(nq, big),
        k: normal(nk, big),
        v: normal(nk, 1.0),
    });
    // Values near the largest finite one: the accumulator and the output must not overflow.
    let v_large: Vec<f64> =
        normal(nk, 1.0).iter().map(|x| round((x / 4.0).clamp(-1.0, 1.0) * F16_MAX * 0.9)).collect();
    out.push(Case { name: "large_values", shape, sk, q: normal(nq, 1.0), k: normal(nk, 1.0), v: v_large });
    // Q = 0: every score is 0, each row the mean of the V rows it sees.
    out.push(Case {
        name: "equal_scores",
        shape,
        sk,
        q: vec![0.0; nq],
        k: normal(nk, 1.0),
        v: normal(nk, 1.0),
    });
    // One K row repeated: every score of a row equal, but not 0.
    let k_row = normal(d, 1.0);
    let k_same: Vec<f64> = (0..nk).map(|i| k_row[i % d]).collect();
    out.push(Case { name: "equal_keys", shape, sk, q: normal(nq, 1.0), k: k_same, v: normal(nk, 1.0) });
    // Specials at one element: the middle query row (head 0), the middle key (last head).
    let q_at = |row: usize, col: usize| (row * d + col).min(nq - 1);
    let kv_at = |row: usize, col: usize| ((b * h - 1) * sk * d + row * d + col).min(nk - 1);
    let (q_row, key) = (s / 2, sk / 2);
    for (name, tensor, special) in [
        ("nan_in_q", 'q', f64::NAN),
        ("nan_in_k", 'k', f64::NAN),
        ("nan_in_v", 'v', f64::NAN),
        ("inf_in_q", 'q', f64::INFINITY),
        ("inf_in_k", 'k', f64::NEG_INFINITY),
        ("inf_in_v", 'v', f64::INFINITY),
    ] {
        let (mut q, mut k, mut v) = (normal(nq, 1.0), normal(nk, 1.0), normal(nk, 1.0));
        match tensor {
            'q' => q[q_at(q_row, 3)] = special,
            'k' => k[kv_at(key, 5)] = special,
            _ => v[kv_at(key, 7)] = special,
        }
        out.push(Case { name, shape, sk, q, k, v });
    }
    out
}

/// Each output element of `case` (`[B, H, S, D]`) under IEEE arithmetic on the exact softmax,
/// in float64 (causal: bottom-right aligned, as the kernels mask).
pub fn expected(case: &Case, scale: f64, causal: bool) -> Vec<Expected> {
    let [b, h, s, d] = case.shape;
    let sk = case.sk;
    let mut out = Vec::with_capacity(b * h * s * d);
    for bh in 0..b * h {
        for i in 0..s {
            let q = &case.q[(bh * s + i) * d..][..d];
            let seen = keys_seen(i, s, sk, causal);
            let key = |j: usize| &case.k[(bh * sk + j) * d..][..d];
            let scores: Vec<f64> =
                (0..seen).map(|j| q.iter().zip(key(j)).map(|(a, b)| a * b).sum::<f64>() * scale).collect();
            // A NaN-propagating max, as torch's.
            let max = scores.iter().fold(f64::NEG_INFINITY, |m, x| {
                if x.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(*x)
                }
            });
            let p: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = p.iter().sum();
            let value = |j: usize, c: usize| case.v[(bh * sk + j) * d + c];
            let hidden_score_special =
                (seen..sk).any(|j| !q.iter().zip(key(j)).map(|(a, b)| a * b).sum::<f64>().is_finite());
            for c in 0..d {
                let acc: f64 = (0..seen).map(|j| p[j] * value(j, c)).sum();
                let exact = Expected::of(acc / sum);
                let hidden_special = hidden_score_special || (seen..sk).any(|j| !value(j, c).is_finite());
                out.push(match exact {
                    Expected::Finite(x) if hidden_special => Expected::Either(x),
                    other => other,
                });
            }
        }
    }
    out
}

/// How `got` compares with `want`: elements of another kind (NaN where none is due, finite
/// where NaN is, ...), and the largest difference of the finite ones relative to the largest
/// finite expected magnitude (a case's values can be near 6·10⁴).
pub struct Comparison {
    /// Elements of the wrong kind.
    pub wrong_kind: usize,
    /// The first of them: index, what was due, what came.
    pub first_wrong: Option<(usize, Expected, f64)>,
    /// Largest finite difference over the largest finite expected magnitude.
    pub finite_rel_err: f64,
    /// NaN elements in `got`.
    pub nan: usize,
    /// Infinite elements in `got`.
    pub inf: usize,
}

/// Compares an output with what the IEEE rule expects of each element.
pub fn compare(got: &[f64], want: &[Expected]) -> Comparison {
    let mut c = Comparison { wrong_kind: 0, first_wrong: None, finite_rel_err: 0.0, nan: 0, inf: 0 };
    let scale = want
        .iter()
        .filter_map(|w| if let Expected::Finite(x) = w { Some(x.abs()) } else { None })
        .fold(1e-30, f64::max);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        c.nan += g.is_nan() as usize;
        c.inf += g.is_infinite() as usize;
        if !w.same_kind(*g) {
            c.wrong_kind += 1;
            c.first_wrong.get_or_insert((i, *w, *g));
        } else if let (Expected::Finite(x) | Expected::Either(x), true) = (w, g.is_finite()) {
            c.finite_rel_err = c.finite_rel_err.max((g - x).abs() / scale);
        }
    }
    c
}
