//! Runs a compiled kernel in the PTX simulator (`flashcore-sim`) instead of on a GPU: the same
//! PTX text and the same argument binding as [`crate::launch`], host slices instead of device
//! tensors. This is how CI executes every generated kernel without a GPU.
//!
//! ```
//! use flashcore::kernels::attention;
//! use flashcore::simulate::{check_attention, AttentionShape, SimDevice};
//!
//! // One launch of the declared kernel in the simulator, checked against float64.
//! let kernel = attention::compile(&attention::CONFIG)?;
//! let shape = AttentionShape { b: 1, h: 1, hk: 1, s: 64, sk: 64 };
//! let check = check_attention(&kernel, shape, flashcore::Layout::Bhsd, 1, &SimDevice::default())?;
//! assert!(check.err.rel_l2 < flashcore::tolerance(flashcore::DType::F16));
//! # Ok::<(), flashcore::Error>(())
//! ```

pub use flashcore_sim::{Options, SimError, Stats};

use crate::{
    bind_shapes, check_arg_kinds, grid_size, ArgKind, ArgView, CompiledKernel, DType, Error, HalfFloat,
    SeqOffsets, TensorView,
};
use half::{bf16, f16};

/// A launch argument for the simulator, in the order of the kernel's parameters; `T` is the
/// kernel's element type (`Config::dtype`).
pub enum HostArg<'a, T> {
    /// An input tensor: its buffer and how the kernel sees it.
    Tensor(&'a [T], HostView),
    /// An output tensor: the buffer is copied in (as a GPU buffer holds what it held) and the
    /// whole of it read back after the launch, so elements outside the view keep their values.
    TensorMut(&'a mut [T], HostView),
    /// An f32 output, copied in and read back likewise: a per-row `[B, H, S]` tensor (the
    /// log-sum-exp, the backward's Δ) or an output table (`TensorMut<f32, ..>` written with
    /// `store(t.at(..), ..)`).
    F32Mut(&'a mut [f32], HostView),
    /// Sequence offsets (a variable-length batch).
    Offsets(&'a SeqOffsets),
    /// An optional parameter left out.
    Absent,
    /// An f32 scalar.
    F32(f32),
    /// An input table of f32 (`Tensor<f32, ..>` read with `.at(..)`).
    F32Table(&'a [f32], HostView),
    /// An input table of i32 (`Tensor<i32, ..>`: document ids).
    I32Table(&'a [i32], HostView),
}

/// A view of a host buffer as the kernel sees it: shape and strides in elements (`[B, H, S, D]`,
/// `[B, H, S]` per row, or packed `[TOTAL, H, D]` / `[H, TOTAL]` under sequence offsets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView {
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl HostView {
    /// A view with explicit strides (in elements).
    pub fn strided(shape: &[usize], strides: &[usize]) -> HostView {
        HostView { shape: shape.to_vec(), strides: strides.to_vec() }
    }

    /// A contiguous, row-major view.
    pub fn contiguous(shape: &[usize]) -> HostView {
        HostView { shape: shape.to_vec(), strides: crate::runtime::contiguous_strides(shape) }
    }

    /// The logical shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The strides in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
}

/// The simulated device: how many SMs a persistent kernel's grid is sized for (one CTA each),
/// and the scheduler's options.
#[derive(Clone, Copy, Debug)]
pub struct SimDevice {
    /// SMs a persistent grid is sized for.
    pub sm_count: u32,
    /// The simulator's scheduling options (seed, slice length, limits).
    pub options: Options,
}

impl Default for SimDevice {
    fn default() -> SimDevice {
        SimDevice { sm_count: 2, options: Options::default() }
    }
}

/// Runs `kernel` on `args` in the simulator. Arguments are checked exactly as [`crate::launch`]
/// checks them; the outputs are written back into the `TensorMut` slices.
pub fn simulate<T: HalfFloat>(
    kernel: &CompiledKernel,
    args: &mut [HostArg<T>],
    device: &SimDevice,
) -> Result<Stats, Error> {
    let k = &kernel.kernel;
    check_arg_kinds(
        k,
        args.iter().map(|a| match a {
            HostArg::Tensor(..) | HostArg::F32Table(..) | HostArg::I32Table(..) => ArgKind::Input,
            HostArg::TensorMut(..) | HostArg::F32Mut(..) => ArgKind::Output,
            HostArg::Offsets(_) => ArgKind::Offsets,
            HostArg::Absent => ArgKind::Absent,
            HostArg::F32(x) => ArgKind::Scalar(*x),
        }),
    )?;
    let views: Vec<ArgView> = args
        .iter()
        .map(|arg| {
            let (view, len, dtype) = match arg {
                HostArg::Tensor(data, view) => (view, data.len(), T::NAME),
                HostArg::TensorMut(data, view) => (view, data.len(), T::NAME),
                HostArg::F32Mut(data, view) => (view, data.len(), "f32"),
                HostArg::F32Table(data, view) => (view, data.len(), "f32"),
                HostArg::I32Table(data, view) => (view, data.len(), "i32"),
                HostArg::Offsets(o) => return ArgView::Offsets(o),
                HostArg::Absent | HostArg::F32(_) => return ArgView::None,
            };
            ArgView::Tensor(TensorView {
                dtype,
                shape: view.shape(),
                strides: view.strides(),
                buffer_len: len,
            })
        })
        .collect();
    let binding = bind_shapes(k, &views)?;
    if binding.work_items == 0 {
        return Ok(Stats::default());
    }
    let grid = grid_size(k, binding.work_items, || Ok(device.sm_count.max(1) as u64))?;
    let mut machine = flashcore_sim::Machine::new(device.options);
    let mut per_param = Vec::with_capacity(args.len());
    let mut outputs = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        per_param.push(match arg {
            HostArg::Tensor(data, _) => flashcore_sim::Arg::U64(machine.alloc(bytes_of(data))),
            HostArg::TensorMut(data, _) => {
                let addr = machine.alloc(bytes_of(data));
                outputs.push((i, addr));
                flashcore_sim::Arg::U64(addr)
            }
            HostArg::F32Mut(data, ..) => {
                let addr = machine.alloc(data.iter().flat_map(|x| x.to_le_bytes()).collect());
                outputs.push((i, addr));
                flashcore_sim::Arg::U64(addr)
            }
            HostArg::Offsets(o) => flashcore_sim::Arg::U64(
                machine.alloc(o.as_slice().iter().flat_map(|x| x.to_le_bytes()).collect()),
            ),
            HostArg::Absent => flashcore_sim::Arg::U64(0),
            HostArg::F32(x) => flashcore_sim::Arg::F32(*x),
            HostArg::F32Table(data, _) => {
                flashcore_sim::Arg::U64(machine.alloc(data.iter().flat_map(|x| x.to_le_bytes()).collect()))
            }
            HostArg::I32Table(data, _) => {
                flashcore_sim::Arg::U64(machine.alloc(data.iter().flat_map(|x| x.to_le_bytes()).collect()))
            }
        });
    }
    // Split across CTAs: a zeroed workspace, after the parameters (`EntryParam::Workspace`).
    let workspace_bytes = crate::codegen::combine_workspace_bytes(k, binding.work_items);
    if workspace_bytes > 0 {
        per_param.push(flashcore_sim::Arg::U64(machine.alloc(vec![0u8; workspace_bytes as usize])));
    }
    // The tables the masks read along the key axis, summarised first (as a launch does), into
    // buffers poisoned with 0x5a bytes: a pair the summary kernel did not write reads as a
    // wrong range.
    let mut summaries = vec![];
    for (summary, launch) in crate::summary_launches(k, &views)? {
        let Some(flashcore_sim::Arg::U64(table)) = per_param.get(summary.param) else { continue };
        let buffer = machine.alloc(vec![0x5a; launch.bytes as usize]);
        let image = (
            crate::codegen::table_summary::table_summary_ptx(),
            crate::codegen::table_summary::TABLE_SUMMARY_ENTRY,
            crate::codegen::table_summary::TABLE_SUMMARY_THREADS,
        );
        crate::paged::simulate_hand_written(
            &mut machine,
            image,
            launch.ctas,
            &[*table, buffer],
            &launch.values,
        )?;
        summaries.push((summary, buffer));
    }
    // The entry parameters in the order `Kernel::entry_abi` states.
    let sim_args = k
        .entry_args(
            |p| per_param.get(p).copied(),
            |d| flashcore_sim::Arg::U32(binding.dims[d.0 as usize]),
            &binding.strides,
            |_, v| flashcore_sim::Arg::U32(v),
            |entry, strides| {
                let (param, map) = crate::tile_map(k, &binding, entry, strides)?;
                let flashcore_sim::Arg::U64(base) = per_param.get(param)? else { return None };
                Some(flashcore_sim::Arg::TensorMap(flashcore_sim::TensorMap {
                    base: *base,
                    dims: map.dims,
                    strides: map.strides,
                    box_dims: map.box_dims,
                }))
            },
            |summary| {
                let buffer = summaries.iter().find(|(s, _)| *s == summary).map_or(0, |(_, b)| *b);
                Some(flashcore_sim::Arg::U64(buffer))
            },
        )
        .ok_or_else(|| crate::abi_mismatch(k))?;
    let launch = flashcore_sim::Launch {
        grid,
        threads: kernel.ptx.threads_per_cta,
        shared_bytes: kernel.ptx.shared_bytes,
    };
    let stats =
        machine.launch(&flashcore_sim::parse(&kernel.ptx.text)?, &kernel.ptx.entry, launch, &sim_args)?;
    for (i, addr) in outputs {
        match &mut args[i] {
            HostArg::TensorMut(data, _) => {
                let bytes = machine.read(addr, data.len() * 2)?;
                for (x, b) in data.iter_mut().zip(bytes.chunks_exact(2)) {
                    *x = T::from_le_bytes([b[0], b[1]]);
                }
            }
            HostArg::F32Mut(data, ..) => {
                let bytes = machine.read(addr, data.len() * 4)?;
                for (x, b) in data.iter_mut().zip(bytes.chunks_exact(4)) {
                    *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            _ => {}
        }
    }
    Ok(stats)
}

fn bytes_of<T: HalfFloat>(data: &[T]) -> Vec<u8> {
    data.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A parameter of an attention variant after `scale`: an f32 scalar, or an input table
/// (row-major, contiguous).
#[derive(Clone, Debug, PartialEq)]
pub enum ExtraArg {
    /// An f32 parameter (`softcap`).
    F32(f32),
    /// A `Tensor<f32, ..>` table (a bias).
    F32Table {
        /// The elements, row-major.
        data: Vec<f32>,
        /// The table's shape.
        shape: Vec<usize>,
    },
    /// A `Tensor<i32, ..>` table (document ids).
    I32Table {
        /// The elements, row-major.
        data: Vec<i32>,
        /// The table's shape.
        shape: Vec<usize>,
    },
}

/// The shape of an attention problem: `[b, h, s, d]` queries, `[b, hk, sk, d]` keys and values.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Batch.
    pub b: usize,
    /// Query heads.
    pub h: usize,
    /// K/V heads.
    pub hk: usize,
    /// Query rows.
    pub s: usize,
    /// Key rows.
    pub sk: usize,
}

/// What [`check_attention`] found.
#[derive(Clone, Copy, Debug)]
pub struct AttentionCheck {
    /// The output against float64.
    pub err: crate::reference::ErrorStats,
    /// The log-sum-exp output against float64: the largest difference, and the rows where one
    /// side is infinite (or NaN) and the other is not.
    pub lse_max_abs: f64,
    /// Rows where one log-sum-exp is finite and the other not.
    pub lse_mismatched: usize,
    /// What the simulator counted.
    pub stats: Stats,
    /// Seconds spent in the simulator (not in the reference).
    pub seconds: f64,
}

/// Runs an attention kernel with the standard signature `(q, k, v, o, lse, scale, cu_q, cu_k)`
/// (a dense batch: no offsets) in the simulator on random inputs (from `seed`) of `shape` stored in `layout`, scale 1/√D, and compares its
/// output with the float64 reference (causal when the kernel's config is). The output buffer
/// is poisoned with NaN first, so a row the kernel forgets to write fails the check.
pub fn check_attention(
    kernel: &CompiledKernel,
    shape: AttentionShape,
    layout: crate::Layout,
    seed: u64,
    device: &SimDevice,
) -> Result<AttentionCheck, Error> {
    check_variant(kernel, shape, layout, seed, device, &[], &crate::reference::Variant::plain())
}

/// Like [`check_attention`] for an attention variant: a kernel with the standard signature plus
/// the parameters `extras` after `scale` (`(q, k, v, o, lse, scale, extras.., cu_q, cu_k)`: f32
/// scalars and input tables),
/// checked against the float64 reference of `variant` (FlexAttention's score and mask
/// functions, written out independently of the kernel).
pub fn check_variant(
    kernel: &CompiledKernel,
    shape: AttentionShape,
    layout: crate::Layout,
    seed: u64,
    device: &SimDevice,
    extras: &[ExtraArg],
    variant: &crate::reference::Variant,
) -> Result<AttentionCheck, Error> {
    match kernel.kernel.config.dtype {
        DType::F16 => check_typed::<f16>(kernel, shape, layout, seed, device, extras, variant),
        DType::Bf16 => check_typed::<bf16>(kernel, shape, layout, seed, device, extras, variant),
    }
}

fn check_typed<T: HalfFloat>(
    kernel: &CompiledKernel,
    shape: AttentionShape,
    layout: crate::Layout,
    seed: u64,
    device: &SimDevice,
    extras: &[ExtraArg],
    variant: &crate::reference::Variant,
) -> Result<AttentionCheck, Error> {
    use crate::reference::{self, Problem, Rng};
    let AttentionShape { b, h, hk, s, sk } = shape;
    let d = kernel.kernel.config.head_dim as usize;
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut gen = |n: usize| (0..n).map(|_| crate::round_to(T::DTYPE, rng.normal())).collect::<Vec<_>>();
    let (q, k, v) = (gen(b * h * s * d), gen(b * hk * sk * d), gen(b * hk * sk * d));
    let start = std::time::Instant::now();
    let scale = kernel.kernel.config.default_scale();
    let run = run_typed::<T>(kernel, shape, layout, [&q, &k, &v], scale, extras, device)?;
    let seconds = start.elapsed().as_secs_f64();
    let causal = kernel.kernel.config.causal;
    let scale = scale as f64;
    let problem = Problem { q: &q, k: &k, v: &v, b, h, hk, s, sk, d, scale, causal };
    let (want, want_lse) = reference::attention_variant(&problem, variant);
    let err = reference::compare(&run.out, &want);
    let (lse_max_abs, lse_mismatched) = reference::compare_lse(&run.lse, &want_lse);
    Ok(AttentionCheck { err, lse_max_abs, lse_mismatched, stats: run.stats, seconds })
}

/// What [`run_attention`] returns: the output `[B, H, S, D]` and log-sum-exp `[B, H, S]`.
pub struct AttentionRun {
    /// The output, `[B, H, S, D]`.
    pub out: Vec<f64>,
    /// The log-sum-exp, `[B, H, S]`.
    pub lse: Vec<f64>,
    /// What the simulator counted.
    pub stats: Stats,
}

/// Runs an attention kernel with the standard signature on the given inputs (logical
/// `[B, H, S, D]` / `[B, HKV, SK, D]`, converted to the kernel's element type and stored in
/// `layout`), scale 1/√D, outputs poisoned with NaN first.
pub fn run_attention(
    kernel: &CompiledKernel,
    shape: AttentionShape,
    layout: crate::Layout,
    inputs: [&[f64]; 3],
    device: &SimDevice,
) -> Result<AttentionRun, Error> {
    let scale = kernel.kernel.config.default_scale();
    run_attention_scaled(kernel, shape, layout, inputs, scale, device)
}

/// [`run_attention`] with softmax scale `scale` (the launch checks it as any launch does: a
/// negative one for a kernel whose fold needs it nonnegative is refused).
pub fn run_attention_scaled(
    kernel: &CompiledKernel,
    shape: AttentionShape,
    layout: crate::Layout,
    inputs: [&[f64]; 3],
    scale: f32,
    device: &SimDevice,
) -> Result<AttentionRun, Error> {
    match kernel.kernel.config.dtype {
        DType::F16 => run_typed::<f16>(kernel, shape, layout, inputs, scale, &[], device),
        DType::Bf16 => run_typed::<bf16>(kernel, shape, layout, inputs, scale, &[], device),
    }
}

fn run_typed<T: HalfFloat>(
    kernel: &CompiledKernel,
    shape: AttentionShape,
    layout: crate::Layout,
    [q, k, v]: [&[f64]; 3],
    scale: f32,
    extras: &[ExtraArg],
    device: &SimDevice,
) -> Result<AttentionRun, Error> {
    let AttentionShape { b, h, hk, s, sk } = shape;
    let d = kernel.kernel.config.head_dim as usize;
    let typed = |x: &[f64]| x.iter().map(|v| T::from_f64(*v)).collect::<Vec<T>>();
    let (q_shape, kv_shape) = ([b, h, s, d], [b, hk, sk, d]);
    let view = |shape: [usize; 4]| HostView::strided(&shape, &layout.strides(shape));
    let mut o = vec![T::NAN; b * h * s * d];
    let mut lse = vec![f32::NAN; b * h * s];
    let (qs, ks, vs) = (
        layout.store(&typed(q), q_shape),
        layout.store(&typed(k), kv_shape),
        layout.store(&typed(v), kv_shape),
    );
    let mut args = vec![
        HostArg::Tensor(&qs, view(q_shape)),
        HostArg::Tensor(&ks, view(kv_shape)),
        HostArg::Tensor(&vs, view(kv_shape)),
        HostArg::TensorMut(&mut o, view(q_shape)),
        HostArg::F32Mut(&mut lse, HostView::contiguous(&[b, h, s])),
        HostArg::F32(scale),
    ];
    let views: Vec<HostView> = extras
        .iter()
        .map(|e| match e {
            ExtraArg::F32Table { shape, .. } | ExtraArg::I32Table { shape, .. } => {
                HostView::contiguous(shape)
            }
            ExtraArg::F32(_) => HostView::contiguous(&[]),
        })
        .collect();
    args.extend(extras.iter().zip(&views).map(|(e, view)| match e {
        ExtraArg::F32(x) => HostArg::F32(*x),
        ExtraArg::F32Table { data, .. } => HostArg::F32Table(data, view.clone()),
        ExtraArg::I32Table { data, .. } => HostArg::I32Table(data, view.clone()),
    }));
    args.extend([HostArg::Absent, HostArg::Absent]);
    let stats = simulate(kernel, &mut args, device)?;
    let out = layout.load(&o, q_shape).iter().map(|x| x.to_f64()).collect();
    Ok(AttentionRun { out, lse: lse.iter().map(|x| *x as f64).collect(), stats })
}

/// Like [`check_attention`] for a variable-length batch: sequence `i` has `lens_q[i]` query and
/// `lens_k[i]` key rows, packed `[TOTAL, H, D]` as FlashAttention's varlen API takes them, with
/// `h` query and `hk` K/V heads; every row (and its log-sum-exp, `[H, TOTAL_Q]`) is compared.
pub fn check_varlen_attention(
    kernel: &CompiledKernel,
    lens_q: &[usize],
    lens_k: &[usize],
    (h, hk): (usize, usize),
    seed: u64,
    device: &SimDevice,
) -> Result<AttentionCheck, Error> {
    match kernel.kernel.config.dtype {
        DType::F16 => check_varlen_typed::<f16>(kernel, lens_q, lens_k, (h, hk), seed, device),
        DType::Bf16 => check_varlen_typed::<bf16>(kernel, lens_q, lens_k, (h, hk), seed, device),
    }
}

fn check_varlen_typed<T: HalfFloat>(
    kernel: &CompiledKernel,
    lens_q: &[usize],
    lens_k: &[usize],
    (h, hk): (usize, usize),
    seed: u64,
    device: &SimDevice,
) -> Result<AttentionCheck, Error> {
    use crate::reference::{self, Rng, VarlenProblem};
    let (cu_q, cu_k) = (SeqOffsets::from_lengths(lens_q)?, SeqOffsets::from_lengths(lens_k)?);
    let (tq, tk) = (cu_q.total(), cu_k.total());
    let d = kernel.kernel.config.head_dim as usize;
    let mut rng = Rng::new(seed ^ 0x7a51e4);
    let mut gen = |n: usize| (0..n).map(|_| T::from_f64(rng.normal())).collect::<Vec<_>>();
    let (q, k, v) = (gen(tq * h * d), gen(tk * hk * d), gen(tk * hk * d));
    let scale = kernel.kernel.config.default_scale();
    let mut o = vec![T::NAN; tq * h * d];
    let mut lse = vec![f32::NAN; h * tq];
    let start = std::time::Instant::now();
    let stats = simulate(
        kernel,
        &mut [
            HostArg::Tensor(&q, HostView::contiguous(&[tq, h, d])),
            HostArg::Tensor(&k, HostView::contiguous(&[tk, hk, d])),
            HostArg::Tensor(&v, HostView::contiguous(&[tk, hk, d])),
            HostArg::TensorMut(&mut o, HostView::contiguous(&[tq, h, d])),
            HostArg::F32Mut(&mut lse, HostView::contiguous(&[h, tq])),
            HostArg::F32(scale),
            HostArg::Offsets(&cu_q),
            HostArg::Offsets(&cu_k),
        ],
        device,
    )?;
    let seconds = start.elapsed().as_secs_f64();
    let f64s = |x: &[T]| x.iter().map(|v| v.to_f64()).collect::<Vec<_>>();
    let (qd, kd, vd) = (f64s(&q), f64s(&k), f64s(&v));
    let problem = VarlenProblem {
        q: &qd,
        k: &kd,
        v: &vd,
        cu_q: cu_q.as_slice(),
        cu_k: cu_k.as_slice(),
        h,
        hk,
        d,
        scale: scale as f64,
        causal: kernel.kernel.config.causal,
    };
    let rows: Vec<usize> = (0..tq * h).collect();
    let (want, want_lse) = reference::varlen_rows_lse(&problem, &rows);
    let err = reference::compare(&f64s(&o), &want);
    // The log-sum-exp is [H, TOTAL_Q]; the rows above are t · H + head.
    let got_lse: Vec<f64> = rows.iter().map(|r| lse[(r % h) * tq + r / h] as f64).collect();
    let (lse_max_abs, lse_mismatched) = reference::compare_lse(&got_lse, &want_lse);
    Ok(AttentionCheck { err, lse_max_abs, lse_mismatched, stats, seconds })
}

/// What [`check_backward`] found: each gradient (and `Δ`) against float64.
#[derive(Clone, Copy, Debug)]
pub struct BackwardCheck {
    /// dQ, `[B, H, S, D]`.
    pub dq: crate::reference::ErrorStats,
    /// dK per query head, `[B, H, SK, D]`.
    pub dk: crate::reference::ErrorStats,
    /// dV per query head.
    pub dv: crate::reference::ErrorStats,
    /// `Δ = rowsum(dO ∘ O)`, `[B, H, S]`.
    pub delta: crate::reference::ErrorStats,
}

impl BackwardCheck {
    /// Whether every gradient is finite and within `crate::tolerance` of float64 (Δ too: the
    /// kernels read O rounded to their type, which moves Δ by about that rounding).
    pub fn passes(&self, dtype: crate::DType) -> bool {
        let bound = crate::tolerance(dtype);
        [self.dq, self.dk, self.dv, self.delta].iter().all(|e| e.non_finite == 0 && e.rel_l2 < bound)
    }
}

/// Runs the backward (`kernels::backward`: the dQ kernel, then the dK/dV kernel, its causal
/// twin when `causal`) under `config` in the simulator, on fresh random inputs (from `seed`)
/// of `shape` and head dim `config.head_dim`, with O and the log-sum-exp from the float64
/// forward (O rounded to `T`), outputs poisoned with NaN; compares dQ, dK, dV (per query head)
/// and Δ with [`crate::reference::attention_backward_rows`]. Scale 1/√D.
pub fn check_backward<T: HalfFloat>(
    config: crate::Config,
    shape: AttentionShape,
    causal: bool,
    seed: u64,
) -> Result<BackwardCheck, Error> {
    use crate::kernels::backward::*;
    let pair = BackwardPair {
        dq: attention_backward_dq::compile,
        dkdv: if causal { attention_backward_dkdv_causal::compile } else { attention_backward_dkdv::compile },
        scalars: vec![],
    };
    check_backward_pair::<T>(&pair, config, shape, causal, seed, &|_, _, x| (x, 1.0))
}

/// A backward written as a dQ kernel and a dK/dV kernel with the signatures of
/// `kernels::backward`'s, plus f32 parameters after `scale` (softcap's `softcap`).
pub struct BackwardPair {
    /// Compiles the dQ kernel.
    pub dq: fn(&crate::Config) -> Result<std::sync::Arc<CompiledKernel>, Error>,
    /// Compiles the dK/dV kernel (the causal one for a causal check).
    pub dkdv: fn(&crate::Config) -> Result<std::sync::Arc<CompiledKernel>, Error>,
    /// The f32 parameters after `scale`, in order.
    pub scalars: Vec<f32>,
}

/// [`check_backward`] of any [`BackwardPair`], against the float64 gradients of
/// `softmax(f(scale · Q·Kᵀ)) · V` for the score modification `score` (`(i, j, x) ↦ (f(x),
/// f'(x))`, −inf where masked).
pub fn check_backward_pair<T: HalfFloat>(
    pair: &BackwardPair,
    config: crate::Config,
    shape: AttentionShape,
    causal: bool,
    seed: u64,
    score: &crate::reference::ScoreWithGrad,
) -> Result<BackwardCheck, Error> {
    check_backward_split::<T>(pair, (config, config), shape, causal, seed, score)
}

/// [`check_backward_pair`] with a config of its own for each kernel (dQ, dK/dV): their tiles
/// or targets may differ (the dK/dV kernel compiles for sm_90a where the dQ kernel cannot).
/// Both take the dtype and head dim of the first.
pub fn check_backward_split<T: HalfFloat>(
    pair: &BackwardPair,
    (config, dkdv_config): (crate::Config, crate::Config),
    shape: AttentionShape,
    causal: bool,
    seed: u64,
    score: &crate::reference::ScoreWithGrad,
) -> Result<BackwardCheck, Error> {
    let AttentionShape { b, h, hk, s, sk } = shape;
    let (d, dtype) = (config.head_dim as usize, T::DTYPE);
    let mut rng = crate::reference::Rng::new(seed);
    let mut gen = |n: usize| (0..n).map(|_| crate::round_to(dtype, rng.normal())).collect::<Vec<f64>>();
    let (q, k, v, g) = (gen(b * h * s * d), gen(b * hk * sk * d), gen(b * hk * sk * d), gen(b * h * s * d));
    let scale = 1.0 / (d as f64).sqrt();
    let problem = crate::reference::Problem { q: &q, k: &k, v: &v, b, h, hk, s, sk, d, scale, causal };
    let (all_q, all_k): (Vec<usize>, Vec<usize>) = ((0..b * h * s).collect(), (0..b * h * sk).collect());
    let want = crate::reference::attention_backward_rows_with(&problem, &g, &all_q, &all_k, score);
    let half = |x: &[f64]| x.iter().map(|v| T::from_f64(*v)).collect::<Vec<T>>();
    let (qh, kh, vh, gh, oh) = (half(&q), half(&k), half(&v), half(&g), half(&want.o));
    let lse: Vec<f32> = want.lse.iter().map(|x| *x as f32).collect();
    let configs = (
        crate::Config { dtype, causal, ..config },
        crate::Config { dtype, causal: false, head_dim: config.head_dim, ..dkdv_config },
    );
    let BackwardResult { dq, delta, dk, dv } =
        simulate_backward(pair, configs, shape, [&qh, &kh, &vh, &oh, &gh], &lse, scale as f32)?;
    let f = |x: &[T]| x.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
    let delta: Vec<f64> = delta.iter().map(|x| *x as f64).collect();
    let compare = crate::reference::compare;
    Ok(BackwardCheck {
        dq: compare(&f(&dq), &want.dq),
        dk: compare(&f(&dk), &want.dk),
        dv: compare(&f(&dv), &want.dv),
        delta: compare(&delta, &want.delta),
    })
}

/// What a backward pair wrote: dQ and Δ (`[B, H, S, ..]`), dK and dV per query head.
pub struct BackwardResult<T> {
    /// dQ, `[B, H, S, D]`.
    pub dq: Vec<T>,
    /// Δ, `[B, H, S]`.
    pub delta: Vec<f32>,
    /// dK, `[B, H, SK, D]`.
    pub dk: Vec<T>,
    /// dV, `[B, H, SK, D]`.
    pub dv: Vec<T>,
}

/// Runs `pair` in the simulator: its dQ kernel under `configs.0`, then its dK/dV kernel under
/// `configs.1` (head dim from the config), on contiguous host inputs `[q, k, v, o, d_out]` of
/// `shape` and the forward's log-sum-exp `lse`, with `pair.scalars` after `scale`; every output
/// poisoned with NaN first.
pub fn simulate_backward<T: HalfFloat>(
    pair: &BackwardPair,
    configs: (crate::Config, crate::Config),
    shape: AttentionShape,
    [q, k, v, o, d_out]: [&[T]; 5],
    lse: &[f32],
    scale: f32,
) -> Result<BackwardResult<T>, Error> {
    let AttentionShape { b, h, hk, s, sk } = shape;
    let d = configs.0.head_dim as usize;
    let (qv, kv, gv, rows) = (
        HostView::contiguous(&[b, h, s, d]),
        HostView::contiguous(&[b, hk, sk, d]),
        HostView::contiguous(&[b, h, sk, d]),
        HostView::contiguous(&[b, h, s]),
    );
    let device = SimDevice::default();
    let dq_kernel = (pair.dq)(&configs.0)?;
    let (mut dq, mut delta) = (vec![T::NAN; b * h * s * d], vec![f32::NAN; b * h * s]);
    let mut args = vec![
        HostArg::Tensor(q, qv.clone()),
        HostArg::Tensor(k, kv.clone()),
        HostArg::Tensor(v, kv.clone()),
        HostArg::Tensor(o, qv.clone()),
        HostArg::Tensor(d_out, qv.clone()),
        HostArg::F32Table(lse, rows.clone()),
        HostArg::TensorMut(&mut dq, qv.clone()),
        HostArg::F32Mut(&mut delta, rows.clone()),
        HostArg::F32(scale),
    ];
    args.extend(pair.scalars.iter().map(|x| HostArg::F32(*x)));
    // Optional parameters after those (sequence offsets): left out, the dense batch.
    args.resize_with(dq_kernel.kernel.params.len().max(args.len()), || HostArg::Absent);
    simulate(&dq_kernel, &mut args, &device)?;
    drop(args);
    let dkdv = (pair.dkdv)(&configs.1)?;
    let (mut dk, mut dv) = (vec![T::NAN; b * h * sk * d], vec![T::NAN; b * h * sk * d]);
    let mut args = vec![
        HostArg::Tensor(q, qv.clone()),
        HostArg::Tensor(k, kv.clone()),
        HostArg::Tensor(v, kv),
        HostArg::Tensor(d_out, qv),
        HostArg::F32Table(lse, rows.clone()),
        HostArg::F32Table(&delta, rows),
        HostArg::TensorMut(&mut dk, gv.clone()),
        HostArg::TensorMut(&mut dv, gv),
        HostArg::F32(scale),
    ];
    args.extend(pair.scalars.iter().map(|x| HostArg::F32(*x)));
    args.resize_with(dkdv.kernel.params.len().max(args.len()), || HostArg::Absent);
    simulate(&dkdv, &mut args, &device)?;
    drop(args);
    Ok(BackwardResult { dq, delta, dk, dv })
}

/// What [`check_varlen_backward`] found: each gradient (and `Δ`) of a variable-length batch
/// against float64.
#[derive(Clone, Copy, Debug)]
pub struct VarlenBackwardCheck {
    /// dQ, packed `[TOTAL_Q, H, D]`.
    pub dq: crate::reference::ErrorStats,
    /// dK, packed `[TOTAL_K, H or HKV, D]`.
    pub dk: crate::reference::ErrorStats,
    /// dV, likewise.
    pub dv: crate::reference::ErrorStats,
    /// `Δ = rowsum(dO ∘ O)`, `[H, TOTAL_Q]`.
    pub delta: crate::reference::ErrorStats,
}

impl VarlenBackwardCheck {
    /// Every gradient (and `Δ`) within `dtype`'s tolerance.
    pub fn passes(&self, dtype: crate::DType) -> bool {
        let tol = crate::tolerance(dtype);
        [self.dq, self.dk, self.dv, self.delta].iter().all(|e| e.rel_l2 < tol && e.non_finite == 0)
    }
}

/// A variable-length batch's backward problem in FlashAttention's varlen layout, with its
/// float64 answer: sequence `i` has `lens_q[i]` query and `lens_k[i]` key rows, `q`, `o`,
/// `d_out` packed `[TOTAL_Q, H, D]`, `k`, `v` `[TOTAL_K, HKV, D]`, the forward's log-sum-exp
/// `[H, TOTAL_Q]` (f32, as the varlen forward stores it); the wanted dQ, Δ, and dK/dV
/// (`[TOTAL_K, H or HKV, D]`: per query head, or with `grouped` summed over each group).
pub struct VarlenBackwardProblem<T> {
    /// The query sequences' offsets.
    pub cu_q: SeqOffsets,
    /// The key sequences' offsets.
    pub cu_k: SeqOffsets,
    /// Query and K/V heads.
    pub heads: (usize, usize),
    /// Head dim.
    pub d: usize,
    /// The softmax scale, `1 / √D`.
    pub scale: f32,
    /// Q, `[TOTAL_Q, H, D]`.
    pub q: Vec<T>,
    /// K, `[TOTAL_K, HKV, D]`.
    pub k: Vec<T>,
    /// V, `[TOTAL_K, HKV, D]`.
    pub v: Vec<T>,
    /// The forward's output, `[TOTAL_Q, H, D]`.
    pub o: Vec<T>,
    /// The output's gradient, `[TOTAL_Q, H, D]`.
    pub d_out: Vec<T>,
    /// The forward's log-sum-exp, `[H, TOTAL_Q]`.
    pub lse: Vec<f32>,
    /// dQ, dK, dV and Δ in float64.
    want: [Vec<f64>; 4],
    /// dK/dV per K/V head (summed over each group's query heads).
    grouped: bool,
}

impl<T: HalfFloat> VarlenBackwardProblem<T> {
    /// Random inputs (normal, rounded to `T`) and each sequence's float64 gradients, packed.
    pub fn random(
        lens_q: &[usize],
        lens_k: &[usize],
        (h, hk): (usize, usize),
        (d, causal, grouped): (usize, bool, bool),
        seed: u64,
    ) -> Result<Self, Error> {
        use crate::reference::{attention_backward_rows, Problem, Rng};
        let (cu_q, cu_k) = (SeqOffsets::from_lengths(lens_q)?, SeqOffsets::from_lengths(lens_k)?);
        let (tq, tk) = (cu_q.total(), cu_k.total());
        let scale = 1.0 / (d as f32).sqrt();
        let gh = if grouped { hk } else { h }; // dK/dV heads
        let mut rng = Rng::new(seed ^ 0xbac4);
        let mut gen = |n: usize| (0..n).map(|_| T::from_f64(rng.normal()).to_f64()).collect::<Vec<f64>>();
        let zeros = |n: usize| vec![0.0; n];
        let (mut q, mut k, mut v, mut d_out) =
            (zeros(tq * h * d), zeros(tk * hk * d), zeros(tk * hk * d), zeros(tq * h * d));
        let (mut o, mut lse, mut want_dq, mut want_delta) =
            (zeros(tq * h * d), zeros(h * tq), zeros(tq * h * d), zeros(h * tq));
        let (mut want_dk, mut want_dv) = (zeros(tk * gh * d), zeros(tk * gh * d));
        // Dense row `head · len + t` of a sequence is packed row `(start + t) · heads + head`
        // (added in, so that a group's query heads sum into their K/V head).
        let pack = |dst: &mut [f64], src: &[f64], (heads, into): (usize, usize), len: usize, start: usize| {
            for head in 0..heads {
                for t in 0..len {
                    let (from, to) = ((head * len + t) * d, ((start + t) * into + head * into / heads) * d);
                    dst[to..to + d].iter_mut().zip(&src[from..from + d]).for_each(|(a, b)| *a += b);
                }
            }
        };
        for (i, (&lq, &lk)) in lens_q.iter().zip(lens_k).enumerate() {
            let (q0, k0) = (cu_q.as_slice()[i] as usize, cu_k.as_slice()[i] as usize);
            let (qs, ks, vs, dos) = (gen(h * lq * d), gen(hk * lk * d), gen(hk * lk * d), gen(h * lq * d));
            let p = Problem {
                q: &qs,
                k: &ks,
                v: &vs,
                b: 1,
                h,
                hk,
                s: lq,
                sk: lk,
                d,
                scale: scale as f64,
                causal,
            };
            let (query_rows, key_rows): (Vec<usize>, Vec<usize>) =
                ((0..h * lq).collect(), (0..h * lk).collect());
            let g = attention_backward_rows(&p, &dos, &query_rows, &key_rows);
            pack(&mut q, &qs, (h, h), lq, q0);
            pack(&mut d_out, &dos, (h, h), lq, q0);
            pack(&mut o, &g.o, (h, h), lq, q0);
            pack(&mut want_dq, &g.dq, (h, h), lq, q0);
            pack(&mut k, &ks, (hk, hk), lk, k0);
            pack(&mut v, &vs, (hk, hk), lk, k0);
            pack(&mut want_dk, &g.dk, (h, gh), lk, k0);
            pack(&mut want_dv, &g.dv, (h, gh), lk, k0);
            for head in 0..h {
                for t in 0..lq {
                    lse[head * tq + q0 + t] = g.lse[head * lq + t];
                    want_delta[head * tq + q0 + t] = g.delta[head * lq + t];
                }
            }
        }
        let to_t = |x: &[f64]| x.iter().map(|v| T::from_f64(*v)).collect::<Vec<T>>();
        Ok(VarlenBackwardProblem {
            heads: (h, hk),
            d,
            scale,
            q: to_t(&q),
            k: to_t(&k),
            v: to_t(&v),
            o: to_t(&o),
            d_out: to_t(&d_out),
            lse: lse.iter().map(|x| *x as f32).collect(),
            want: [want_dq, want_dk, want_dv, want_delta],
            grouped,
            cu_q,
            cu_k,
        })
    }

    /// The shapes of `q` (and `o`, `d_out`, `dq`), `k` (and `v`), `dk` (and `dv`), and the
    /// rows (`lse`, `Δ`).
    pub fn shapes(&self) -> [Vec<usize>; 4] {
        let ((h, hk), d, (tq, tk)) = (self.heads, self.d, (self.cu_q.total(), self.cu_k.total()));
        let gh = if self.grouped { hk } else { h };
        [vec![tq, h, d], vec![tk, hk, d], vec![tk, gh, d], vec![h, tq]]
    }

    /// Computed gradients against the wanted ones.
    pub fn compare(&self, [dq, dk, dv]: [&[T]; 3], delta: &[f32]) -> VarlenBackwardCheck {
        use crate::reference::compare;
        let f64s = |x: &[T]| x.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
        let [want_dq, want_dk, want_dv, want_delta] = &self.want;
        VarlenBackwardCheck {
            dq: compare(&f64s(dq), want_dq),
            dk: compare(&f64s(dk), want_dk),
            dv: compare(&f64s(dv), want_dv),
            delta: compare(&delta.iter().map(|x| *x as f64).collect::<Vec<_>>(), want_delta),
        }
    }
}

/// The backward of a variable-length batch in the simulator ([`VarlenBackwardProblem`]):
/// `dq_kernel` (shaped as [`attention_backward_dq`], compiled with `varlen`) then
/// `dkdv_kernel` (as [`attention_backward_dkdv`], or with `grouped` as
/// [`attention_backward_dkdv_grouped`]: dK and dV per K/V head), with `h` query and `hk` K/V
/// heads, against each sequence's float64 gradients; every output poisoned first.
///
/// [`attention_backward_dq`]: crate::kernels::backward::attention_backward_dq
/// [`attention_backward_dkdv`]: crate::kernels::backward::attention_backward_dkdv
/// [`attention_backward_dkdv_grouped`]: crate::kernels::backward::attention_backward_dkdv_grouped
pub fn check_varlen_backward<T: HalfFloat>(
    (dq_kernel, dkdv_kernel, grouped): (&CompiledKernel, &CompiledKernel, bool),
    lens_q: &[usize],
    lens_k: &[usize],
    heads: (usize, usize),
    seed: u64,
    device: &SimDevice,
) -> Result<VarlenBackwardCheck, Error> {
    let config = dq_kernel.kernel.config;
    let p = VarlenBackwardProblem::<T>::random(
        lens_q,
        lens_k,
        heads,
        (config.head_dim as usize, config.causal, grouped),
        seed,
    )?;
    let [qs, ks, gs, rs] = p.shapes();
    let (qv, kv, gv, rows) = (
        HostView::contiguous(&qs),
        HostView::contiguous(&ks),
        HostView::contiguous(&gs),
        HostView::contiguous(&rs),
    );
    let n = |shape: &[usize]| shape.iter().product::<usize>();
    let (mut dq, mut delta) = (vec![T::NAN; n(&qs)], vec![f32::NAN; n(&rs)]);
    simulate(
        dq_kernel,
        &mut [
            HostArg::Tensor(&p.q, qv.clone()),
            HostArg::Tensor(&p.k, kv.clone()),
            HostArg::Tensor(&p.v, kv.clone()),
            HostArg::Tensor(&p.o, qv.clone()),
            HostArg::Tensor(&p.d_out, qv.clone()),
            HostArg::F32Table(&p.lse, rows.clone()),
            HostArg::TensorMut(&mut dq, qv.clone()),
            HostArg::F32Mut(&mut delta, rows.clone()),
            HostArg::F32(p.scale),
            HostArg::Offsets(&p.cu_q),
            HostArg::Offsets(&p.cu_k),
        ],
        device,
    )?;
    let (mut dk, mut dv) = (vec![T::NAN; n(&gs)], vec![T::NAN; n(&gs)]);
    simulate(
        dkdv_kernel,
        &mut [
            HostArg::Tensor(&p.q, qv.clone()),
            HostArg::Tensor(&p.k, kv.clone()),
            HostArg::Tensor(&p.v, kv),
            HostArg::Tensor(&p.d_out, qv),
            HostArg::F32Table(&p.lse, rows.clone()),
            HostArg::F32Table(&delta, rows),
            HostArg::TensorMut(&mut dk, gv.clone()),
            HostArg::TensorMut(&mut dv, gv),
            HostArg::F32(p.scale),
            HostArg::Offsets(&p.cu_q),
            HostArg::Offsets(&p.cu_k),
        ],
        device,
    )?;
    Ok(p.compare([&dq, &dk, &dv], &delta))
}
