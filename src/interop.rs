//! Attention on tensors other libraries own: CUDA memory PyTorch (or candle) allocated, launched
//! in place on that library's stream with the tuning table's config, and the same kernel run in
//! the simulator on host buffers. The Python package (`python/`) is a thin layer over this.
//!
//! ```
//! use flashcore::interop::{simulate_attention, AttentionOptions, HostTensor};
//! use flashcore::f16;
//!
//! // One head of 40 queries against 40 keys, D = 64, causal, in the simulator.
//! let (s, d) = (40, 64);
//! let data: Vec<f16> = (0..s * d).map(|i| f16::from_f32(((i * 7 % 13) as f32 - 6.0) / 8.0)).collect();
//! let view = HostTensor::contiguous(&data, &[1, 1, s, d]);
//! let options = AttentionOptions { causal: true, ..AttentionOptions::default() };
//! let (o, lse) = simulate_attention(view.clone(), view.clone(), view, &options)?;
//! assert_eq!((o.len(), lse.len()), (s * d, s));
//! # Ok::<(), flashcore::Error>(())
//! ```

use crate::kernels::attention;
use crate::runtime::{Device, ForeignStream, ForeignTensor, TensorArg};
use crate::simulate::{simulate, HostArg, HostView, SimDevice};
use crate::tuning::Source;
use crate::{Arg, Config, DType, Error, HalfFloat, KernelCache, Target};

/// What an attention call takes besides its tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AttentionOptions {
    /// Causal masking, aligned to the bottom right when S ≠ SK.
    pub causal: bool,
    /// The softmax scale; `None` for 1/√D.
    pub scale: Option<f32>,
    /// The PTX target; `None` for the device's (`FLASHCORE_TARGET` overrides it) on the GPU and
    /// sm_89 in the simulator.
    pub target: Option<Target>,
}

/// The kernels compiled for foreign launches, per config.
static KERNELS: KernelCache = KernelCache::new();

/// `attention`'s source, built once (a launch would otherwise rebuild it for the tuning lookup).
fn program() -> &'static crate::ir::source::Program {
    static PROGRAM: std::sync::OnceLock<crate::ir::source::Program> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(attention::program)
}

fn argument(arg: &str, message: String) -> Error {
    Error::Argument { kernel: "attention".into(), arg: arg.into(), message }
}

/// `attention`'s declared config for `q`'s element type and head dim (`[B, H, S, D]`) and the
/// options: what tuning keeps fixed.
fn base_config(
    dtype: &str,
    q_shape: &[usize],
    options: &AttentionOptions,
    simulator: bool,
) -> Result<Config, Error> {
    let dtype = match dtype {
        "f16" => DType::F16,
        "bf16" => DType::Bf16,
        other => return Err(argument("q", format!("element type is {other}; attention takes f16 or bf16"))),
    };
    let [.., d] = q_shape else {
        return Err(argument("q", format!("shape {q_shape:?}: a [B, H, S, D] tensor is needed")));
    };
    let head_dim = u32::try_from(*d).unwrap_or(u32::MAX);
    if !crate::ir::config::SUPPORTED_HEAD_DIMS.contains(&head_dim) {
        return Err(argument(
            "q",
            format!(
                "head dim {d} is not supported: attention takes {:?}",
                crate::ir::config::SUPPORTED_HEAD_DIMS
            ),
        ));
    }
    let target = match options.target {
        Some(t) => t,
        None if simulator => Target::Sm89,
        None => Target::Auto,
    };
    Ok(Config { dtype, causal: options.causal, target, ..attention::CONFIG.with_head_dim(head_dim) })
}

/// Runs `attention` on CUDA tensors another library owns, enqueued on its `stream` (nothing is
/// copied, nothing waited for): `q`, `o` `[B, H, S, D]`, `k`, `v` `[B, HKV, SK, D]` with any
/// strides the kernel takes (BHSD, or BSHD seen as `[B, H, S, D]`), `lse` `[B, H, S]` f32 when
/// wanted. The config is the tuning table's for this GPU and shape (with `FLASHCORE_AUTOTUNE=1`,
/// first-use tuning, which synchronizes the device). Returns the config and where it came from.
/// Shapes, element types, strides and alignment are checked first: a typed error names the
/// argument, and nothing is launched.
#[allow(clippy::too_many_arguments)]
pub fn attention_on_stream(
    device: &Device,
    q: &ForeignTensor,
    k: &ForeignTensor,
    v: &ForeignTensor,
    o: &mut ForeignTensor,
    lse: Option<&mut ForeignTensor>,
    options: &AttentionOptions,
    stream: ForeignStream,
) -> Result<(Config, Source), Error> {
    let base = base_config(q.dtype(), q.shape(), options, false)?;
    for (name, t) in
        [("q", &*q), ("k", k), ("v", v), ("o", &*o)].into_iter().chain(lse.as_deref().map(|l| ("lse", l)))
    {
        if t.ptr() % 16 != 0 {
            return Err(argument(
                name,
                format!(
                    "data pointer {:#x} is not 16-byte aligned (the kernels copy 16 bytes at a time): a view that starts inside its storage, e.g. a slice; pass a contiguous copy",
                    t.ptr()
                ),
            ));
        }
    }
    let scale = options.scale.unwrap_or_else(|| base.default_scale());
    let mut args = [
        Arg::Tensor(q),
        Arg::Tensor(k),
        Arg::Tensor(v),
        Arg::TensorMut(o),
        match lse {
            Some(l) => Arg::TensorMut(l),
            None => Arg::Absent,
        },
        Arg::F32(scale),
        Arg::Absent,
        Arg::Absent,
    ];
    let cc = device.info().compute_capability;
    let declared = KERNELS.get_or_compile_on(cc, &base, attention::program)?;
    let shape = crate::problem_shape(&declared, &args)?;
    let (config, source) = crate::tuning::tuned_config_of(device, attention::NAME, program(), base, shape)?;
    let kernel = KERNELS.get_or_compile_on(cc, &config, attention::program)?;
    crate::launch_on_stream(device, &kernel, &mut args, stream)?;
    Ok((config, source))
}

/// A host buffer and how the kernel sees it (shape and strides in elements), for
/// [`simulate_attention`].
#[derive(Clone, Debug)]
pub struct HostTensor<'a, T> {
    /// The buffer: every element the strides reach.
    pub data: &'a [T],
    /// Shape and strides.
    pub view: HostView,
}

impl<'a, T> HostTensor<'a, T> {
    /// `data` as a row-major tensor of `shape`.
    pub fn contiguous(data: &'a [T], shape: &[usize]) -> HostTensor<'a, T> {
        HostTensor { data, view: HostView::contiguous(shape) }
    }
}

/// Runs `attention` in the simulator (every lane of the generated PTX, on the CPU; small shapes
/// only) on host tensors laid out as [`attention_on_stream`] takes them. Returns `O` as a
/// row-major `[B, H, S, D]` buffer and the log-sum-exp as `[B, H, S]`.
pub fn simulate_attention<T: HalfFloat>(
    q: HostTensor<T>,
    k: HostTensor<T>,
    v: HostTensor<T>,
    options: &AttentionOptions,
) -> Result<(Vec<T>, Vec<f32>), Error> {
    let base = base_config(T::NAME, q.view.shape(), options, true)?;
    let kernel = KERNELS.get_or_compile(&base, attention::program)?;
    let [b, h, s, d] = q.view.shape() else {
        return Err(argument("q", format!("shape {:?}: a [B, H, S, D] tensor is needed", q.view.shape())));
    };
    let o_shape = [*b, *h, *s, *d];
    let mut o = vec![T::NAN; o_shape.iter().product()];
    let mut lse = vec![f32::NAN; b * h * s];
    let scale = options.scale.unwrap_or_else(|| base.default_scale());
    let mut args = [
        HostArg::Tensor(q.data, q.view.clone()),
        HostArg::Tensor(k.data, k.view.clone()),
        HostArg::Tensor(v.data, v.view.clone()),
        HostArg::TensorMut(&mut o, HostView::contiguous(&o_shape)),
        HostArg::F32Mut(&mut lse, HostView::contiguous(&o_shape[..3])),
        HostArg::F32(scale),
        HostArg::Absent,
        HostArg::Absent,
    ];
    simulate(&kernel, &mut args, &SimDevice::default())?;
    Ok((o, lse))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{self, Problem, Rng};
    use crate::{bf16, f16};

    fn random<T: HalfFloat>(rng: &mut Rng, n: usize) -> Vec<T> {
        (0..n).map(|_| T::from_f64(rng.normal())).collect()
    }

    /// BSHD buffers seen as `[B, H, S, D]`, GQA, S ≠ SK, tails, causal, an explicit scale:
    /// against float64.
    fn check<T: HalfFloat>(causal: bool, seed: u64) {
        let (b, h, hk, s, sk, d) = (2, 4, 2, 37, 53, 64);
        let mut rng = Rng::new(seed);
        let (q, k, v) = (
            random::<T>(&mut rng, b * s * h * d),
            random::<T>(&mut rng, b * sk * hk * d),
            random::<T>(&mut rng, b * sk * hk * d),
        );
        let bshd = |heads: usize, rows: usize| {
            HostView::strided(&[b, heads, rows, d], &[rows * heads * d, d, heads * d, 1])
        };
        let options = AttentionOptions { causal, scale: Some(0.1), target: None };
        let (o, lse) = simulate_attention(
            HostTensor { data: &q, view: bshd(h, s) },
            HostTensor { data: &k, view: bshd(hk, sk) },
            HostTensor { data: &v, view: bshd(hk, sk) },
            &options,
        )
        .unwrap();
        // The reference takes BHSD.
        let bhsd = |x: &[T], heads: usize, rows: usize| {
            let mut out = vec![0.0; x.len()];
            for (i, o) in out.iter_mut().enumerate() {
                let (bi, hi, si, di) = (i / (heads * rows * d), i / (rows * d) % heads, i / d % rows, i % d);
                *o = x[((bi * rows + si) * heads + hi) * d + di].to_f64();
            }
            out
        };
        let (q64, k64, v64) = (bhsd(&q, h, s), bhsd(&k, hk, sk), bhsd(&v, hk, sk));
        let problem = Problem { q: &q64, k: &k64, v: &v64, b, h, hk, s, sk, d, scale: 0.1, causal };
        let (want, want_lse) = reference::attention_variant(&problem, &reference::Variant::plain());
        let got: Vec<f64> = o.iter().map(|x| x.to_f64()).collect();
        let err = reference::compare(&got, &want);
        assert!(err.rel_l2 <= crate::tolerance(T::DTYPE), "{} causal={causal}: {err:?}", T::NAME);
        let lse: Vec<f64> = lse.iter().map(|x| *x as f64).collect();
        let (max_abs, mismatched) = reference::compare_lse(&lse, &want_lse);
        assert!(max_abs < 1e-3 && mismatched == 0, "lse: {max_abs} {mismatched}");
    }

    #[test]
    fn simulated_attention_on_bshd_gqa_tails_matches_float64() {
        check::<f16>(false, 1);
        check::<f16>(true, 2);
        check::<bf16>(true, 3);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_argument() {
        let data = vec![f16::ZERO; 2 * 40 * 80];
        let view = HostTensor::contiguous(&data, &[1, 2, 40, 80]);
        let err = simulate_attention(view.clone(), view.clone(), view, &AttentionOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`q`") || err.contains("q"), "{err}");
        assert!(err.contains("head dim 80 is not supported"), "{err}");
        let q = HostTensor::contiguous(&data[..2 * 40 * 64], &[1, 2, 40, 64]);
        let k = HostTensor::contiguous(&data[..2 * 40 * 32], &[1, 2, 40, 32]);
        let err = simulate_attention(q.clone(), k.clone(), k, &AttentionOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("head dim"), "{err}");
        let short = HostTensor::contiguous(&data[..10], &[1, 2, 40, 64]);
        assert!(simulate_attention(q.clone(), short.clone(), short, &AttentionOptions::default()).is_err());
    }
}
