//! Attention variants written in the DSL, FlexAttention's score and mask modifications as code:
//! each is the standard kernel (`super::attention`) with a few lines of score code between the
//! Q·Kᵀ `mma` and the softmax. Masks (`mask(s, keep)`) are applied by the compiler after all of
//! the score code, so no score code can bring a masked score back.
//!
//! ```
//! use flashcore::kernels::variants::softcap_attention;
//!
//! // Every variant compiles for any valid config, like the standard kernel.
//! let compiled = softcap_attention::compile(&softcap_attention::CONFIG)?;
//! assert!(compiled.ptx.text.contains("ex2.approx"));
//! # Ok::<(), flashcore::Error>(())
//! ```

use crate::flash_kernel;
use crate::reference::Variant;
use crate::simulate::ExtraArg;

/// Logit soft-capping (Gemma 2): each score `x = q·k·scale` becomes `cap · tanh(x / cap)`
/// before the softmax, so no score exceeds `±cap`. `softcap` is `cap` (e.g. 30 or 50); causal
/// masking (`Config::causal`) applies after the cap. `fast_tanh` (`tanh.approx.f32`, as
/// FlashAttention-3) rather than the exact `tanh`: on the H200 at 2x16x8192x128 it took 3831 µs
/// against 4334, with the same error against float64 (2.8e-4).
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn softcap_attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    softcap: f32,
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
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            // cap · tanh(x / cap) for x = q·k·scale, in the exp2 domain of the softmax below;
            // the uniform factors are multiplied once, not once per score.
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale / softcap);
            #[role(compute)]
            let s = fast_tanh(s) * (softcap * LOG2_E);
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

/// Sliding-window (local) attention, FlashAttention's `window_size = (left, right)` (Mistral,
/// Gemma): query row `i`, aligned to the bottom right at key `i + SK − S`, sees the keys
/// `i + SK − S − left ..= i + SK − S + right`. `window_right = 0` with the causal flag is
/// Mistral's causal sliding window.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn sliding_window_attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    window_left: f32,
    window_right: f32,
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
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            #[role(compute)]
            let diag = s.index(S) + (SK - S);
            #[role(compute)]
            let s = mask(s, s.index(SK) >= diag - window_left && s.index(SK) <= diag + window_right);
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

/// ALiBi (Press et al.): each score gets a linear bias by distance, `x + slope_h · (j − i)`,
/// with head `h`'s slope `2^(−8 (h + 1) / H)` (the paper's geometric sequence) and query row
/// `i` aligned to the bottom right. Usually run causal (`Config::causal`).
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn alibi_attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
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
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            // In the exp2 domain of the softmax below: (x + slope · (j − i)) · log2 e, with the
            // uniform factors multiplied once and i + (SK − S) computed once per row.
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            #[role(compute)]
            let slope = exp2(-8.0 * (h + 1) / H) * LOG2_E;
            #[role(compute)]
            let s = s + slope * (s.index(SK) - (s.index(S) + (SK - S)));
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

/// Prefix-LM attention (T5, PaLI): the first `prefix` keys are seen by every query
/// (bidirectional over the prefix), the rest causally, aligned to the bottom right.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn prefix_lm_attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    prefix: f32,
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
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            #[role(compute)]
            let s = mask(s, s.index(SK) <= s.index(S) + (SK - S) || s.index(SK) < prefix);
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

/// Gemma 2's local layers: logit soft-capping and a sliding window together. The window is
/// written before the cap on purpose: masks apply after all score code wherever they are
/// written, so the cap's `tanh` never brings a masked score back finite.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn sliding_window_softcap_attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    softcap: f32,
    window_left: f32,
    window_right: f32,
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
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale / softcap);
            #[role(compute)]
            let diag = s.index(S) + (SK - S);
            #[role(compute)]
            let s = mask(s, s.index(SK) >= diag - window_left && s.index(SK) <= diag + window_right);
            #[role(compute)]
            let s = fast_tanh(s) * (softcap * LOG2_E);
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

/// Document masking with each token's document given as its bounds: token `i` of sequence `b`
/// belongs to the document that runs from token `doc_start[b, i]` up to, not including, token
/// `doc_end[b, i]` (what `cu_seqlens` says, per token; the host makes it from document ids in
/// one pass). The mask reads only the
/// query's row of the tables, so a Q tile's document bounds are read once per work item and
/// the K/V loop's bounds follow from interval arithmetic on key positions, as for a sliding
/// window; `document_attention` (ids) decides each K/V tile by reading its ids.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn document_bounds_attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    doc_start: Tensor<i32, B, S>,
    doc_end: Tensor<i32, B, S>,
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
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            #[role(compute)]
            let q_pos = s.index(S);
            #[role(compute)]
            let s = mask(s, s.index(SK) >= doc_start.at(b, q_pos) && s.index(SK) < doc_end.at(b, q_pos));
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

/// Document masking over a packed batch (FlexAttention's `document_mask`): each sequence of the
/// batch packs several documents, token `i` of sequence `b` belongs to document `doc[b, i]`, and
/// a query sees only the keys of its own document (with `Config::causal`, only those before it).
/// Self-attention: the keys are the same tokens (`SK = S`).
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn document_attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    doc: Tensor<i32, B, S>,
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
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            #[role(compute)]
            let s = mask(s, doc.at(b, s.index(S)) == doc.at(b, s.index(SK)));
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

/// An additive bias (relative-position biases, T5 and Swin): each score `x = q·k·scale` becomes
/// `x + bias[b, h, i, j]`, read from a `[B, H, S, SK]` f32 tensor element by element.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn bias_attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    bias: Tensor<f32, B, H, S, SK>,
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
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * scale;
            #[role(compute)]
            let s = (s + bias.at(b, h, s.index(S), s.index(SK))) * LOG2_E;
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

/// `document_bounds_attention`'s tables from a row of document ids: for each token, its
/// document's first token and one past its last, a document being a run of equal ids (packed
/// documents).
///
/// ```
/// let (start, end) = flashcore::kernels::variants::document_bounds(&[4, 4, 9, 9, 9, 4]);
/// assert_eq!((start, end), (vec![0, 0, 2, 2, 2, 5], vec![2, 2, 5, 5, 5, 6]));
/// ```
pub fn document_bounds(ids: &[i32]) -> (Vec<i32>, Vec<i32>) {
    let n = ids.len();
    let (mut start, mut end) = (vec![0i32; n], vec![0i32; n]);
    for i in 0..n {
        start[i] = if i > 0 && ids[i] == ids[i - 1] { start[i - 1] } else { i as i32 };
    }
    for i in (0..n).rev() {
        end[i] = if i + 1 < n && ids[i] == ids[i + 1] { end[i + 1] } else { i as i32 + 1 };
    }
    (start, end)
}

/// The float64 reference of library kernel `kernel` (`attention` or one of this module's), as
/// FlexAttention would state it: its score modification and mask, from the values of its
/// parameters after `scale` (`extras`, by name), for `heads` query heads, `s` query and `sk` key
/// rows (positions are aligned to the bottom right, as the kernels align them). Written from
/// each variant's formula, not from its DSL source. The example checks every run against it.
pub fn reference(
    kernel: &str,
    extras: &[(String, ExtraArg)],
    heads: usize,
    s: usize,
    sk: usize,
) -> Result<Variant, String> {
    let find = |name: &str| {
        extras
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e.clone())
            .ok_or_else(|| format!("`{kernel}` needs a value for its parameter `{name}`"))
    };
    let get = |name: &str| match find(name)? {
        ExtraArg::F32(x) => Ok(x as f64),
        _ => Err(format!("`{kernel}`'s parameter `{name}` is an f32, not a table")),
    };
    // Query row i sits at key position i + SK − S.
    let shift = sk as i64 - s as i64;
    let diag = move |i: usize| i as i64 + shift;
    Ok(match kernel {
        "attention" => Variant::plain(),
        "softcap_attention" => {
            let cap = get("softcap")?;
            Variant::new(move |_, _, _, _, x| cap * (x / cap).tanh(), |_, _, _, _| true)
        }
        "sliding_window_attention" => {
            let (left, right) = (get("window_left")?, get("window_right")?);
            Variant::new(
                |_, _, _, _, x| x,
                move |_, _, i, j| {
                    (j as f64) >= (diag(i) as f64) - left && (j as f64) <= (diag(i) as f64) + right
                },
            )
        }
        "alibi_attention" => {
            let heads = heads as f64;
            Variant::new(
                move |_, h, i, j, x| {
                    x + (-8.0 * (h as f64 + 1.0) / heads).exp2() * (j as i64 - diag(i)) as f64
                },
                |_, _, _, _| true,
            )
        }
        "prefix_lm_attention" => {
            let prefix = get("prefix")?;
            Variant::new(|_, _, _, _, x| x, move |_, _, i, j| j as i64 <= diag(i) || (j as f64) < prefix)
        }
        "sliding_window_softcap_attention" => {
            let (cap, left, right) = (get("softcap")?, get("window_left")?, get("window_right")?);
            Variant::new(
                move |_, _, _, _, x| cap * (x / cap).tanh(),
                move |_, _, i, j| {
                    (j as f64) >= (diag(i) as f64) - left && (j as f64) <= (diag(i) as f64) + right
                },
            )
        }
        "document_attention" => {
            let ExtraArg::I32Table { data, shape } = find("doc")? else {
                return Err("`document_attention`'s `doc` is an i32 table [B, S]".into());
            };
            // Positions past the table read its last element, as the kernel's `.at` does.
            let len = shape[1];
            let doc = move |b: usize, i: usize| data[b * len + i.min(len - 1)];
            Variant::new(|_, _, _, _, x| x, move |b, _, i, j| doc(b, i) == doc(b, j))
        }
        "document_bounds_attention" => {
            let (ExtraArg::I32Table { data: start, shape }, ExtraArg::I32Table { data: end, .. }) =
                (find("doc_start")?, find("doc_end")?)
            else {
                return Err(
                    "`document_bounds_attention`'s `doc_start`, `doc_end` are i32 tables [B, S]".into()
                );
            };
            let len = shape[1];
            let at = move |t: &[i32], b: usize, i: usize| t[b * len + i.min(len - 1)] as i64;
            Variant::new(
                |_, _, _, _, x| x,
                move |b, _, i, j| at(&start, b, i) <= j as i64 && (j as i64) < at(&end, b, i),
            )
        }
        "bias_attention" => {
            let ExtraArg::F32Table { data, shape } = find("bias")? else {
                return Err("`bias_attention`'s `bias` is an f32 table [B, H, S, SK]".into());
            };
            let [_, h, rows, cols] = shape[..] else {
                return Err("`bias_attention`'s `bias` is [B, H, S, SK]".into());
            };
            Variant::new(
                move |b, hh, i, j, x| x + data[((b * h + hh) * rows + i) * cols + j] as f64,
                |_, _, _, _| true,
            )
        }
        other => return Err(format!("no float64 reference for kernel `{other}`")),
    })
}
