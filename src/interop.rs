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

use crate::ir::kernel::Param;
use crate::ir::source::Program;
use crate::kernels::{attention, backward};
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

/// A kernel of the library the interop launches: `attention` or one of its variants
/// ([`crate::kernels::variants`]), all with attention's signature `(q, k, v, o, lse, scale,
/// extras.., cu_q, cu_k)`, with its compiled configs and source.
struct LibraryKernel {
    name: &'static str,
    program: fn() -> Program,
    config: Config,
    cache: KernelCache,
}

impl LibraryKernel {
    /// The kernel compiled for `config` on a device of `compute_capability` (see
    /// [`KernelCache::get_or_compile_on`]).
    fn compiled(
        &self,
        compute_capability: (i32, i32),
        config: &Config,
    ) -> Result<std::sync::Arc<crate::CompiledKernel>, Error> {
        self.cache.get_or_compile_on(compute_capability, config, self.program)
    }
}

macro_rules! library_kernels {
    ($($path:path),* $(,)?) => {
        [$({
            use $path as k;
            LibraryKernel { name: k::NAME, program: k::program, config: k::CONFIG, cache: KernelCache::new() }
        }),*]
    };
}

/// The kernels [`kernel_on_stream`] and [`simulate_kernel`] take, by name.
static LIBRARY: [LibraryKernel; 9] = {
    use crate::kernels::variants;
    library_kernels![
        attention,
        variants::softcap_attention,
        variants::sliding_window_attention,
        variants::alibi_attention,
        variants::prefix_lm_attention,
        variants::sliding_window_softcap_attention,
        variants::document_bounds_attention,
        variants::document_attention,
        variants::bias_attention,
    ]
};

/// The names of the kernels the interop launches: `attention` and its variants.
pub fn kernel_names() -> Vec<&'static str> {
    LIBRARY.iter().map(|k| k.name).collect()
}

/// The library kernel `name`.
fn library_kernel(name: &str) -> Result<&'static LibraryKernel, Error> {
    LIBRARY.iter().find(|k| k.name == name).ok_or_else(|| Error::Argument {
        kernel: name.into(),
        arg: "(kernel)".into(),
        message: format!("no such library kernel: the interop launches {}", kernel_names().join(", ")),
    })
}

fn argument(kernel: &str, arg: &str, message: String) -> Error {
    Error::Argument { kernel: kernel.into(), arg: arg.into(), message }
}

/// `q`'s element type and head dim as a config takes them; an error naming `q` for any other.
fn element_and_head_dim(kernel: &str, dtype: &str, d: usize) -> Result<(DType, u32), Error> {
    let dtype = match dtype {
        "f16" => DType::F16,
        "bf16" => DType::Bf16,
        other => {
            return Err(argument(
                kernel,
                "q",
                format!("element type is {other}; attention takes f16 or bf16"),
            ))
        }
    };
    let head_dim = u32::try_from(d).unwrap_or(u32::MAX);
    if !crate::ir::config::SUPPORTED_HEAD_DIMS.contains(&head_dim) {
        let supported = crate::ir::config::SUPPORTED_HEAD_DIMS;
        return Err(argument(
            kernel,
            "q",
            format!("head dim {d} is not supported: attention takes {supported:?}"),
        ));
    }
    Ok((dtype, head_dim))
}

/// A kernel's declared config for `q`'s element type and head dim (`[B, H, S, D]`) and the
/// options: what tuning keeps fixed.
fn base_config(
    kernel: &LibraryKernel,
    dtype: &str,
    q_shape: &[usize],
    options: &AttentionOptions,
    simulator: bool,
) -> Result<Config, Error> {
    let name = kernel.name;
    let [.., d] = q_shape else {
        return Err(argument(name, "q", format!("shape {q_shape:?}: a [B, H, S, D] tensor is needed")));
    };
    let (dtype, head_dim) = element_and_head_dim(name, dtype, *d)?;
    let target = match options.target {
        Some(t) => t,
        None if simulator => Target::Sm89,
        None => Target::Auto,
    };
    Ok(Config { dtype, causal: options.causal, target, ..kernel.config.with_head_dim(head_dim) })
}

/// A parameter of a kernel between `scale` and the sequence offsets, as [`extras`] fills it.
enum Extra<'a, T> {
    /// An f32 parameter.
    Scalar(f32),
    /// A tensor parameter.
    Table(&'a T),
}

/// The parameters of `kernel` between `scale` and the sequence offsets, in order, filled from
/// `scalars` (its f32 parameters, in order) and `tables` (its tensor parameters, in order): a
/// count that does not match is an error naming what the kernel takes.
fn extras<'a, T>(
    kernel: &crate::ir::Kernel,
    scalars: &[f32],
    tables: &'a [T],
) -> Result<Vec<Extra<'a, T>>, Error> {
    let params = &kernel.params;
    let standard = params.len() >= 8
        && params[..6].iter().map(|p| p.name()).eq(["q", "k", "v", "o", "lse", "scale"])
        && params[params.len() - 2..].iter().all(|p| matches!(p, Param::Offsets(_)));
    if !standard {
        return Err(argument(
            &kernel.name,
            "(kernel)",
            "not attention's signature `(q, k, v, o, lse, scale, .., cu_q, cu_k)`".into(),
        ));
    }
    let wanted = &params[6..params.len() - 2];
    let describe = || {
        let list: Vec<String> = wanted
            .iter()
            .map(|p| match p {
                Param::Scalar { name, .. } => format!("{name} (f32)"),
                other => format!("{} (tensor)", other.name()),
            })
            .collect();
        if list.is_empty() {
            "nothing".to_string()
        } else {
            list.join(", ")
        }
    };
    let scalars_wanted = wanted.iter().filter(|p| matches!(p, Param::Scalar { .. })).count();
    if scalars_wanted != scalars.len() || wanted.len() - scalars_wanted != tables.len() {
        return Err(argument(
            &kernel.name,
            "(extras)",
            format!(
                "it takes {} after scale; got {} scalar(s) and {} tensor(s)",
                describe(),
                scalars.len(),
                tables.len()
            ),
        ));
    }
    let (mut scalars, mut tables) = (scalars.iter(), tables.iter());
    Ok(wanted
        .iter()
        .map(|p| match p {
            Param::Scalar { .. } => Extra::Scalar(*scalars.next().expect("counted")),
            _ => Extra::Table(tables.next().expect("counted")),
        })
        .collect())
}

fn check_aligned(kernel: &str, tensors: &[(&str, &ForeignTensor)]) -> Result<(), Error> {
    for (name, t) in tensors {
        if t.ptr() % 16 != 0 {
            return Err(argument(
                kernel,
                name,
                format!(
                    "data pointer {:#x} is not 16-byte aligned (the kernels copy 16 bytes at a time): a view that starts inside its storage, e.g. a slice; pass a contiguous copy",
                    t.ptr()
                ),
            ));
        }
    }
    Ok(())
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
    kernel_on_stream(device, attention::NAME, q, k, v, o, lse, &[], &[], None, options, stream)
}

/// [`attention_on_stream`] for the library kernel `kernel` (`attention` or a variant of
/// [`crate::kernels::variants`], [`kernel_names`]), its parameters after `scale` given as
/// `scalars` (its f32 parameters in order, e.g. `softcap`) and `tables` (its tensor parameters in
/// order, e.g. `bias` `[B, H, S, SK]` f32, `doc` `[B, S]` i32). A variant without tuning entries
/// of its own takes `attention`'s. With `offsets` (`cu_seqlens` of Q and of K/V), the batch is
/// variable-length: `q`, `o` are packed `[TOTAL_Q, H, D]`, `k`, `v` `[TOTAL_K, HKV, D]`, `lse`
/// `[H, TOTAL_Q]` (FlashAttention's varlen layout).
#[allow(clippy::too_many_arguments)]
pub fn kernel_on_stream(
    device: &Device,
    kernel: &str,
    q: &ForeignTensor,
    k: &ForeignTensor,
    v: &ForeignTensor,
    o: &mut ForeignTensor,
    lse: Option<&mut ForeignTensor>,
    scalars: &[f32],
    tables: &[&ForeignTensor],
    offsets: Option<[&crate::DeviceSeqOffsets; 2]>,
    options: &AttentionOptions,
    stream: ForeignStream,
) -> Result<(Config, Source), Error> {
    let entry = library_kernel(kernel)?;
    let base =
        Config { varlen: offsets.is_some(), ..base_config(entry, q.dtype(), q.shape(), options, false)? };
    let mut named = vec![("q", q), ("k", k), ("v", v), ("o", &*o)];
    named.extend(lse.as_deref().map(|l| ("lse", l)));
    named.extend(tables.iter().map(|t| ("(table)", *t)));
    check_aligned(entry.name, &named)?;
    let cc = device.info().compute_capability;
    let declared = entry.compiled(cc, &base)?;
    let scale = options.scale.unwrap_or_else(|| base.default_scale());
    let mut args = vec![
        Arg::Tensor(q),
        Arg::Tensor(k),
        Arg::Tensor(v),
        Arg::TensorMut(o),
        match lse {
            Some(l) => Arg::TensorMut(l),
            None => Arg::Absent,
        },
        Arg::F32(scale),
    ];
    args.extend(extras(&declared.kernel, scalars, tables)?.into_iter().map(|extra| match extra {
        Extra::Scalar(x) => Arg::F32(x),
        Extra::Table(t) => Arg::Tensor(*t),
    }));
    match offsets {
        Some([cu_q, cu_k]) => args.extend([Arg::Offsets(cu_q), Arg::Offsets(cu_k)]),
        None => args.extend([Arg::Absent, Arg::Absent]),
    }
    let shape = crate::problem_shape(&declared, &args)?;
    let program = entry.cache.program(entry.program);
    let (config, source) = crate::tuning::tuned_config_of(device, entry.name, program, base, shape)?;
    let compiled = entry.compiled(cc, &config)?;
    crate::launch_on_stream(device, &compiled, &mut args, stream)?;
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

/// A tensor parameter of a variant for [`simulate_kernel`]: an f32 table (a bias) or an i32
/// one (document ids or bounds).
#[derive(Clone, Debug)]
pub enum HostTable<'a> {
    /// `Tensor<f32, ..>`.
    F32(HostTensor<'a, f32>),
    /// `Tensor<i32, ..>`.
    I32(HostTensor<'a, i32>),
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
    simulate_kernel(attention::NAME, q, k, v, &[], &[], None, options)
}

/// [`simulate_attention`] for the library kernel `kernel`, with its parameters after `scale` and
/// its sequence offsets as [`kernel_on_stream`] takes them. Returns O row-major in `q`'s logical
/// shape (`[B, H, S, D]`, or packed `[TOTAL_Q, H, D]` with offsets) and the log-sum-exp
/// (`[B, H, S]`, or `[H, TOTAL_Q]`).
#[allow(clippy::too_many_arguments)]
pub fn simulate_kernel<T: HalfFloat>(
    kernel: &str,
    q: HostTensor<T>,
    k: HostTensor<T>,
    v: HostTensor<T>,
    scalars: &[f32],
    tables: &[HostTable],
    offsets: Option<[&crate::SeqOffsets; 2]>,
    options: &AttentionOptions,
) -> Result<(Vec<T>, Vec<f32>), Error> {
    let entry = library_kernel(kernel)?;
    let base =
        Config { varlen: offsets.is_some(), ..base_config(entry, T::NAME, q.view.shape(), options, true)? };
    let compiled = entry.cache.get_or_compile(&base, entry.program)?;
    let (o_shape, lse_shape) = match (q.view.shape(), offsets) {
        ([b, h, s, d], None) => (vec![*b, *h, *s, *d], vec![*b, *h, *s]),
        ([total, h, d], Some(_)) => (vec![*total, *h, *d], vec![*h, *total]),
        (shape, _) => {
            let want = if offsets.is_some() { "a packed [TOTAL, H, D]" } else { "a [B, H, S, D]" };
            return Err(argument(entry.name, "q", format!("shape {shape:?}: {want} tensor is needed")));
        }
    };
    let mut o = vec![T::NAN; o_shape.iter().product()];
    let mut lse = vec![f32::NAN; lse_shape.iter().product()];
    let scale = options.scale.unwrap_or_else(|| base.default_scale());
    // The same check and order as a launch; the simulator takes host buffers.
    let extras = extras(&compiled.kernel, scalars, tables)?;
    let mut args = vec![
        HostArg::Tensor(q.data, q.view.clone()),
        HostArg::Tensor(k.data, k.view.clone()),
        HostArg::Tensor(v.data, v.view.clone()),
        HostArg::TensorMut(&mut o, HostView::contiguous(&o_shape)),
        HostArg::F32Mut(&mut lse, HostView::contiguous(&lse_shape)),
        HostArg::F32(scale),
    ];
    args.extend(extras.into_iter().map(|extra| match extra {
        Extra::Scalar(x) => HostArg::F32(x),
        Extra::Table(HostTable::F32(t)) => HostArg::F32Table(t.data, t.view.clone()),
        Extra::Table(HostTable::I32(t)) => HostArg::I32Table(t.data, t.view.clone()),
    }));
    match offsets {
        Some([cu_q, cu_k]) => args.extend([HostArg::Offsets(cu_q), HostArg::Offsets(cu_k)]),
        None => args.extend([HostArg::Absent, HostArg::Absent]),
    }
    simulate(&compiled, &mut args, &SimDevice::default())?;
    Ok((o, lse))
}

/// The backward's kernels for foreign launches: dQ, then dK/dV (plain, causal, grouped,
/// grouped causal), each with its compiled configs.
static BACKWARD_CACHES: [KernelCache; 5] = [const { KernelCache::new() }; 5];

/// The two launches of the backward of `attention` at `q`'s head dim and element type: each
/// kernel's cache index, config and source (as [`backward::launch_backward_async`] picks them).
fn backward_plan(
    dtype: &str,
    q_shape: &[usize],
    k_shape: &[usize],
    causal: bool,
    target: Option<Target>,
) -> Result<[(usize, Config, fn() -> Program); 2], Error> {
    use backward::*;
    let kernel = attention_backward_dq::NAME;
    let (Some(&d), Some(&h), Some(&hk)) = (q_shape.get(3), q_shape.get(1), k_shape.get(1)) else {
        return Err(argument(
            kernel,
            "q",
            format!("shapes {q_shape:?}, {k_shape:?}: [B, H, S, D] tensors are needed"),
        ));
    };
    let (dtype, head_dim) = element_and_head_dim(kernel, dtype, d)?;
    // The schedules for the target asked for (sm_90a's dQ and dK/dV differ); without one, the
    // target is the device's, decided at launch, and the schedules are `backward_configs`'s.
    let configs = target.map_or(backward_configs(head_dim), |t| backward_configs_for(head_dim, t));
    let set = |c: Config| Config { dtype, target: target.unwrap_or(c.target), ..c };
    let dq = (0, Config { causal, ..set(configs.dq) }, attention_backward_dq::program as fn() -> Program);
    // Grouped K/V heads: the kernels that sum each group's query heads, K and V kept in shared
    // memory for the whole group.
    let (index, config, program): (usize, Config, fn() -> Program) = match (h != hk, causal) {
        (false, false) => (1, set(configs.dkdv), attention_backward_dkdv::program),
        (false, true) => (2, set(configs.dkdv_causal), attention_backward_dkdv_causal::program),
        (true, false) => (
            3,
            Config { a_in_smem: true, ..set(configs.dkdv_grouped) },
            attention_backward_dkdv_grouped::program,
        ),
        (true, true) => (
            4,
            Config { a_in_smem: true, ..set(configs.dkdv_grouped_causal) },
            attention_backward_dkdv_grouped_causal::program,
        ),
    };
    let dkdv = (index, config, program);
    Ok([dq, dkdv])
}

/// What the backward of `attention` reads and writes, as tensors another library owns: the
/// forward's `q` `[B, H, S, D]`, `k`, `v` `[B, HKV, SK, D]`, its output `o` and log-sum-exp `lse`
/// `[B, H, S]` f32, the output's gradient `d_out`; it writes `dq`, `dk`, `dv` (shaped as `q`, `k`,
/// `v`) and `delta` `[B, H, S]` f32, a workspace (`rowsum(dO ∘ O)`).
pub struct BackwardTensors<'a> {
    /// Q.
    pub q: &'a ForeignTensor,
    /// K.
    pub k: &'a ForeignTensor,
    /// V.
    pub v: &'a ForeignTensor,
    /// The forward's output.
    pub o: &'a ForeignTensor,
    /// The forward's log-sum-exp.
    pub lse: &'a ForeignTensor,
    /// The gradient of the loss with respect to O.
    pub d_out: &'a ForeignTensor,
    /// dQ, written.
    pub dq: &'a mut ForeignTensor,
    /// dK, written (with fewer K/V heads, each summed over its group's query heads).
    pub dk: &'a mut ForeignTensor,
    /// dV, written likewise.
    pub dv: &'a mut ForeignTensor,
    /// Δ, a workspace.
    pub delta: &'a mut ForeignTensor,
}

/// The backward of [`attention_on_stream`] (dQ, dK, dV; causal and GQA as the forward), its two
/// kernels enqueued on `stream`; `options` as the forward's (the same causal flag and scale).
pub fn attention_backward_on_stream(
    device: &Device,
    t: BackwardTensors,
    options: &AttentionOptions,
    stream: ForeignStream,
) -> Result<(), Error> {
    let BackwardTensors { q, k, v, o, lse, d_out, dq, dk, dv, delta } = t;
    let plan = backward_plan(q.dtype(), q.shape(), k.shape(), options.causal, options.target)?;
    check_aligned(
        backward::attention_backward_dq::NAME,
        &[
            ("q", q),
            ("k", k),
            ("v", v),
            ("o", o),
            ("lse", lse),
            ("d_out", d_out),
            ("dq", dq),
            ("dk", dk),
            ("dv", dv),
            ("delta", delta),
        ],
    )?;
    let scale = options.scale.unwrap_or_else(|| plan[0].1.default_scale());
    let cc = device.info().compute_capability;
    let [(dq_index, dq_config, dq_program), (dkdv_index, dkdv_config, dkdv_program)] = plan;
    let dq_kernel = BACKWARD_CACHES[dq_index].get_or_compile_on(cc, &dq_config, dq_program)?;
    let dkdv_kernel = BACKWARD_CACHES[dkdv_index].get_or_compile_on(cc, &dkdv_config, dkdv_program)?;
    {
        let mut args = [
            Arg::Tensor(q),
            Arg::Tensor(k),
            Arg::Tensor(v),
            Arg::Tensor(o),
            Arg::Tensor(d_out),
            Arg::Tensor(lse),
            Arg::TensorMut(&mut *dq),
            Arg::TensorMut(&mut *delta),
            Arg::F32(scale),
            Arg::Absent, // cu_q, cu_k: dense
            Arg::Absent,
        ];
        crate::launch_on_stream(device, &dq_kernel, &mut args, stream)?;
    }
    let mut args = [
        Arg::Tensor(q),
        Arg::Tensor(k),
        Arg::Tensor(v),
        Arg::Tensor(d_out),
        Arg::Tensor(lse),
        Arg::Tensor(&*delta),
        Arg::TensorMut(dk),
        Arg::TensorMut(dv),
        Arg::F32(scale),
        Arg::Absent, // cu_q, cu_k: dense
        Arg::Absent,
    ];
    crate::launch_on_stream(device, &dkdv_kernel, &mut args, stream)?;
    Ok(())
}

/// [`attention_backward_on_stream`] in the simulator on host tensors: `[q, k, v, o, d_out]` and
/// `lse` as the forward took and gave them; returns dQ, dK, dV row-major, shaped as `q`, `k`,
/// `v`.
#[allow(clippy::type_complexity)]
pub fn simulate_attention_backward<T: HalfFloat>(
    [q, k, v, o, d_out]: [HostTensor<T>; 5],
    lse: HostTensor<f32>,
    options: &AttentionOptions,
) -> Result<(Vec<T>, Vec<T>, Vec<T>), Error> {
    let options = AttentionOptions { target: Some(options.target.unwrap_or(Target::Sm89)), ..*options };
    let plan = backward_plan(T::NAME, q.view.shape(), k.view.shape(), options.causal, options.target)?;
    let scale = options.scale.unwrap_or_else(|| plan[0].1.default_scale());
    let [(dq_index, dq_config, dq_program), (dkdv_index, dkdv_config, dkdv_program)] = plan;
    let dq_kernel = BACKWARD_CACHES[dq_index].get_or_compile(&dq_config, dq_program)?;
    let dkdv_kernel = BACKWARD_CACHES[dkdv_index].get_or_compile(&dkdv_config, dkdv_program)?;
    let shape_of = |t: &HostTensor<T>| t.view.shape().to_vec();
    let (q_shape, k_shape) = (shape_of(&q), shape_of(&k));
    let rows = &q_shape[..3.min(q_shape.len())];
    let mut dq = vec![T::NAN; q_shape.iter().product()];
    let mut dk = vec![T::NAN; k_shape.iter().product()];
    let mut dv = vec![T::NAN; k_shape.iter().product()];
    let mut delta = vec![f32::NAN; rows.iter().product()];
    let device = SimDevice::default();
    let mut args = vec![
        HostArg::Tensor(q.data, q.view.clone()),
        HostArg::Tensor(k.data, k.view.clone()),
        HostArg::Tensor(v.data, v.view.clone()),
        HostArg::Tensor(o.data, o.view.clone()),
        HostArg::Tensor(d_out.data, d_out.view.clone()),
        HostArg::F32Table(lse.data, lse.view.clone()),
        HostArg::TensorMut(&mut dq, HostView::contiguous(&q_shape)),
        HostArg::F32Mut(&mut delta, HostView::contiguous(rows)),
        HostArg::F32(scale),
        HostArg::Absent, // cu_q, cu_k: dense
        HostArg::Absent,
    ];
    simulate(&dq_kernel, &mut args, &device)?;
    drop(args);
    let mut args = vec![
        HostArg::Tensor(q.data, q.view.clone()),
        HostArg::Tensor(k.data, k.view.clone()),
        HostArg::Tensor(v.data, v.view.clone()),
        HostArg::Tensor(d_out.data, d_out.view.clone()),
        HostArg::F32Table(lse.data, lse.view.clone()),
        HostArg::F32Table(&delta, HostView::contiguous(rows)),
        HostArg::TensorMut(&mut dk, HostView::contiguous(&k_shape)),
        HostArg::TensorMut(&mut dv, HostView::contiguous(&k_shape)),
        HostArg::F32(scale),
        HostArg::Absent, // cu_q, cu_k: dense
        HostArg::Absent,
    ];
    simulate(&dkdv_kernel, &mut args, &device)?;
    drop(args);
    Ok((dq, dk, dv))
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

    /// Variants through the same path: their parameters after `scale` placed by the kernel's
    /// signature (a scalar, a table), against the float64 reference of their formulas.
    #[test]
    fn simulated_variants_take_their_parameters_in_signature_order() {
        use crate::kernels::variants;
        use crate::simulate::ExtraArg;
        let (b, h, s, d) = (1, 2, 45, 64);
        let mut rng = Rng::new(7);
        let (q, k, v) = (
            random::<f16>(&mut rng, b * h * s * d),
            random(&mut rng, b * h * s * d),
            random(&mut rng, b * h * s * d),
        );
        let bias: Vec<f32> = (0..b * h * s * s).map(|_| rng.normal() as f32).collect();
        let shape = [b, h, s, d];
        let to64 = |x: &[f16]| x.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
        let (q64, k64, v64) = (to64(&q), to64(&k), to64(&v));
        let cases: [(&str, Vec<f32>, Vec<(String, ExtraArg)>); 2] = [
            ("softcap_attention", vec![5.0], vec![("softcap".into(), ExtraArg::F32(5.0))]),
            (
                "bias_attention",
                vec![],
                vec![("bias".into(), ExtraArg::F32Table { data: bias.clone(), shape: vec![b, h, s, s] })],
            ),
        ];
        for (kernel, scalars, named) in cases {
            let tables: Vec<HostTable> = if kernel == "bias_attention" {
                vec![HostTable::F32(HostTensor::contiguous(&bias, &[b, h, s, s]))]
            } else {
                vec![]
            };
            let (o, _) = simulate_kernel(
                kernel,
                HostTensor::contiguous(&q, &shape),
                HostTensor::contiguous(&k, &shape),
                HostTensor::contiguous(&v, &shape),
                &scalars,
                &tables,
                None,
                &AttentionOptions { causal: true, ..AttentionOptions::default() },
            )
            .unwrap();
            let variant = variants::reference(kernel, &named, h, s, s).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let problem =
                Problem { q: &q64, k: &k64, v: &v64, b, h, hk: h, s, sk: s, d, scale, causal: true };
            let (want, _) = reference::attention_variant(&problem, &variant);
            let err = reference::compare(&o.iter().map(|x| x.to_f64()).collect::<Vec<_>>(), &want);
            assert!(err.rel_l2 < 2e-3, "{kernel}: {err:?}");
        }
        // A parameter missing, and one too many: the error says what the kernel takes.
        let t = HostTensor::contiguous(&q, &[b, h, s, d]);
        let refused = |kernel: &str, scalars: &[f32]| {
            simulate_kernel(
                kernel,
                t.clone(),
                t.clone(),
                t.clone(),
                scalars,
                &[],
                None,
                &AttentionOptions::default(),
            )
            .unwrap_err()
            .to_string()
        };
        let err = refused("softcap_attention", &[]);
        assert!(err.contains("softcap (f32)") && err.contains("got 0 scalar(s)"), "{err}");
        let err = refused("attention", &[1.0]);
        assert!(err.contains("takes nothing after scale"), "{err}");
        let err = refused("flex_attention", &[]);
        assert!(err.contains("softcap_attention") && err.contains("bias_attention"), "{err}");
    }

    /// The backward through the interop: the forward's O and log-sum-exp from the simulator,
    /// then dQ, dK, dV against float64 (causal, tails, S != SK).
    #[test]
    fn simulated_backward_matches_float64() {
        use crate::reference::attention_backward_rows;
        let (b, h, s, sk, d) = (1, 2, 37, 50, 64);
        let mut rng = Rng::new(11);
        let (q, k, v, g) = (
            random::<f16>(&mut rng, b * h * s * d),
            random::<f16>(&mut rng, b * h * sk * d),
            random::<f16>(&mut rng, b * h * sk * d),
            random::<f16>(&mut rng, b * h * s * d),
        );
        let (qs, ks) = ([b, h, s, d], [b, h, sk, d]);
        let options = AttentionOptions { causal: true, ..AttentionOptions::default() };
        let (o, lse) = simulate_attention(
            HostTensor::contiguous(&q, &qs),
            HostTensor::contiguous(&k, &ks),
            HostTensor::contiguous(&v, &ks),
            &options,
        )
        .unwrap();
        let (dq, dk, dv) = simulate_attention_backward(
            [
                HostTensor::contiguous(&q, &qs),
                HostTensor::contiguous(&k, &ks),
                HostTensor::contiguous(&v, &ks),
                HostTensor::contiguous(&o, &qs),
                HostTensor::contiguous(&g, &qs),
            ],
            HostTensor::contiguous(&lse, &[b, h, s]),
            &options,
        )
        .unwrap();
        let to64 = |x: &[f16]| x.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
        let (q64, k64, v64, g64) = (to64(&q), to64(&k), to64(&v), to64(&g));
        let scale = 1.0 / (d as f64).sqrt();
        let p = Problem { q: &q64, k: &k64, v: &v64, b, h, hk: h, s, sk, d, scale, causal: true };
        let want = attention_backward_rows(
            &p,
            &g64,
            &(0..b * h * s).collect::<Vec<_>>(),
            &(0..b * h * sk).collect::<Vec<_>>(),
        );
        for (name, got, want) in [("dq", &dq, &want.dq), ("dk", &dk, &want.dk), ("dv", &dv, &want.dv)] {
            let err = reference::compare(&to64(got), want);
            assert!(err.rel_l2 < 2e-3 && err.non_finite == 0, "{name}: {err:?}");
        }
    }

    /// A variable-length batch through the interop: packed `[TOTAL, H, D]` tensors and offsets,
    /// each sequence (an empty one among them) against float64, causal bottom-right, GQA.
    #[test]
    fn simulated_varlen_batches_match_float64_per_sequence() {
        use crate::SeqOffsets;
        let (h, hk, d) = (4, 2, 64);
        let (lens_q, lens_k) = ([5usize, 0, 37], [9usize, 3, 50]);
        let (cu_q, cu_k) =
            (SeqOffsets::from_lengths(&lens_q).unwrap(), SeqOffsets::from_lengths(&lens_k).unwrap());
        let (tq, tk) = (cu_q.total(), cu_k.total());
        let mut rng = Rng::new(13);
        let (q, k, v) = (
            random::<f16>(&mut rng, tq * h * d),
            random::<f16>(&mut rng, tk * hk * d),
            random::<f16>(&mut rng, tk * hk * d),
        );
        let options = AttentionOptions { causal: true, ..AttentionOptions::default() };
        let (o, lse) = simulate_kernel(
            "attention",
            HostTensor::contiguous(&q, &[tq, h, d]),
            HostTensor::contiguous(&k, &[tk, hk, d]),
            HostTensor::contiguous(&v, &[tk, hk, d]),
            &[],
            &[],
            Some([&cu_q, &cu_k]),
            &options,
        )
        .unwrap();
        assert_eq!((o.len(), lse.len()), (tq * h * d, h * tq));
        // Each sequence on its own, BHSD with B = 1, against the reference.
        let bhsd = |x: &[f16], range: std::ops::Range<usize>, heads: usize| {
            let rows = range.len();
            let mut out = vec![0.0; heads * rows * d];
            for (hi, r, di) in
                (0..heads).flat_map(|hi| (0..rows).flat_map(move |r| (0..d).map(move |di| (hi, r, di))))
            {
                out[(hi * rows + r) * d + di] = x[((range.start + r) * heads + hi) * d + di].to_f64();
            }
            out
        };
        for b in 0..lens_q.len() {
            let (rq, rk) = (cu_q.range(b), cu_k.range(b));
            if rq.is_empty() {
                continue;
            }
            let (s, sk) = (rq.len(), rk.len());
            let (qb, kb, vb) = (bhsd(&q, rq.clone(), h), bhsd(&k, rk.clone(), hk), bhsd(&v, rk, hk));
            let scale = 1.0 / (d as f64).sqrt();
            let p = Problem { q: &qb, k: &kb, v: &vb, b: 1, h, hk, s, sk, d, scale, causal: true };
            let (want, _) = reference::attention_variant(&p, &reference::Variant::plain());
            let got = bhsd(&o, rq, h);
            let err = reference::compare(&got, &want);
            assert!(err.rel_l2 < 2e-3 && err.non_finite == 0, "sequence {b}: {err:?}");
        }
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
