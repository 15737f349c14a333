//! FlashCore: write fused attention kernels as tiled Rust-like pseudocode with
//! `#[flash_kernel]`, compile them to `sm_89` PTX, and run them through the CUDA driver.
//!
//! This facade re-exports the other crates ([`ir`], [`codegen`], [`runtime`], [`sim`] and the macro) and
//! holds what ties them together: compiling a program for a [`Config`] ([`compile`]), a
//! per-kernel cache ([`KernelCache`]), binding launch arguments to the kernel's symbolic shapes
//! ([`launch`]), a float64 CPU [`reference`](mod@reference), `.npy` I/O ([`npy`]), a [`ptxas`] driver, and
//! [`simulate`], which runs a compiled kernel in the PTX simulator when there is no GPU.
//!
//! Compiling a kernel needs no GPU: the IR after each pass and the PTX can be inspected for any
//! [`Config`], and every config is checked before code is generated.
//!
//! ```
//! use flashcore::kernels::attention;
//! use flashcore::Config;
//!
//! // The declared config, and a warp-specialized variant chosen at run time.
//! let declared = attention::CONFIG;
//! let specialized = Config { stages: 3, load_warps: 1, persistent: true, ..declared };
//! for config in [declared, specialized] {
//!     let ptx = attention::ptx(&config).expect("valid configs compile");
//!     assert!(ptx.contains(".target sm_89"));
//! }
//! // The pipeline pass made the cp.async protocol explicit in the IR.
//! let ir = attention::ir_after(&specialized, "pipeline").unwrap().to_string();
//! assert!(ir.contains("wait_group"));
//! // Invalid configs are errors that name the field.
//! let err = attention::ptx(&Config { tile_m: 40, ..declared }).unwrap_err();
//! assert!(err.to_string().contains("tile_m = 40"));
//! ```

#![warn(missing_docs)]

extern crate self as flashcore;

pub mod autotune;
pub mod cli;
pub mod interop;
pub mod kernels;
pub mod layout;
pub mod model;
pub mod npy;
pub mod numerics;
pub mod occupancy;
pub mod paged;
pub mod plan;
pub mod ptxas;
pub mod reference;
pub mod registry;
pub mod schedule;
pub mod simulate;
pub mod target;
pub mod timing;
pub mod tuning;
pub mod tuning_cache;
pub mod varlen;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

pub use flashcore_codegen as codegen;
pub use flashcore_ir as ir;
pub use flashcore_ir::{Config, Target};
pub use flashcore_macros::flash_kernel;
pub use flashcore_runtime as runtime;
pub use flashcore_sim as sim;
pub use half::{bf16, f16};
pub use ir::source::DType;
pub use layout::Layout;
pub use varlen::{DeviceSeqOffsets, SeqOffsets};

/// What the macro's expansion names: not part of the API.
#[doc(hidden)]
pub use inventory as __inventory;

use flashcore_ir::kernel::{Op, Param};
use runtime::{KernelImage, LaunchArg, TensorArg};

/// Everything that can go wrong compiling, binding or launching a kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel does not lower for this config (type error, invalid config, protocol check).
    #[error(transparent)]
    Ir(#[from] ir::IrError),
    /// Code generation failed.
    #[error(transparent)]
    Codegen(#[from] codegen::CodegenError),
    /// The CUDA driver, or the device, refused something (no GPU, launch failure, timeout).
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// The PTX simulator found a bug in the kernel (or the kernel uses PTX it does not model).
    #[error("simulator: {0}")]
    Sim(#[from] flashcore_sim::SimError),
    /// Sequence offsets that are not cumulative lengths.
    #[error("sequence offsets: {0}")]
    Offsets(String),
    /// A tuning table that cannot be read or holds an invalid config.
    #[error("tuning table: {0}")]
    Tuning(String),
    /// A launch argument does not fit the kernel's signature.
    #[error("kernel `{kernel}`, argument `{arg}`: {message}")]
    Argument {
        /// The kernel's name.
        kernel: String,
        /// The parameter, or `(all)` / `(shapes)` for the argument list as a whole.
        arg: String,
        /// What is wrong, and what was expected.
        message: String,
    },
}

/// A kernel lowered and compiled for one config.
#[derive(Debug)]
pub struct CompiledKernel {
    /// The IR after every pass.
    pub kernel: ir::Kernel,
    /// The generated PTX, its entry, CTA size and shared memory.
    pub ptx: codegen::Ptx,
    /// Identifies the PTX in the device's module cache.
    pub key: u64,
}

impl CompiledKernel {
    /// What the runtime needs to load and launch this kernel.
    pub fn image(&self) -> KernelImage<'_> {
        KernelImage {
            key: self.key,
            ptx: &self.ptx.text,
            entry: &self.ptx.entry,
            shared_bytes: self.ptx.shared_bytes,
            threads_per_cta: self.ptx.threads_per_cta,
        }
    }
}

/// Lowers `program` for `config` (type checks, verifier).
pub fn lower(program: &ir::source::Program, config: &Config) -> Result<ir::Kernel, Error> {
    Ok(ir::lower(program, config)?)
}

/// The IR after lowering (`"lower"`) or after the named pass (`"pipeline"`, `"persist"`).
pub fn ir_after(program: &ir::source::Program, config: &Config, stage: &str) -> Result<ir::Kernel, Error> {
    let kernel = lower(program, config)?;
    if stage == "lower" {
        return Ok(kernel);
    }
    Ok(ir::passes::run_until(kernel, Some(stage))?)
}

/// Lowers, runs every pass, and generates PTX.
pub fn compile(program: &ir::source::Program, config: &Config) -> Result<CompiledKernel, Error> {
    let kernel = ir::passes::run_all(lower(program, config)?)?;
    let ptx = codegen::generate(&kernel)?;
    let mut h = DefaultHasher::new();
    ptx.entry.hash(&mut h);
    ptx.text.hash(&mut h);
    Ok(CompiledKernel { kernel, ptx, key: h.finish() })
}

/// Compiled kernels per config, one cache per `#[flash_kernel]` (a `static` in its expansion).
pub struct KernelCache {
    inner: OnceLock<Mutex<HashMap<Config, Arc<CompiledKernel>>>>,
    /// `Target::Auto` configs per compute capability: the kernel compiled for the target chosen
    /// at the first launch (choosing lowers the kernel, so it is done once).
    on_device: OnceLock<Mutex<HashMap<(Config, (i32, i32)), Arc<CompiledKernel>>>>,
    /// The kernel's source, built once: the tuning table's picks are looked up by it at every
    /// tuned launch.
    program: OnceLock<ir::source::Program>,
}

impl KernelCache {
    /// An empty cache (a `const fn`, so it can be a `static`).
    pub const fn new() -> Self {
        KernelCache { inner: OnceLock::new(), on_device: OnceLock::new(), program: OnceLock::new() }
    }

    /// The kernel's source (`program()` the first time, the same one after).
    pub fn program(&self, program: fn() -> ir::source::Program) -> &ir::source::Program {
        self.program.get_or_init(program)
    }

    /// The kernel compiled for `config` on a device of `compute_capability`: a config whose
    /// target is `Target::Auto` takes `FLASHCORE_TARGET`'s, else the device's
    /// ([`target::choose`]: sm_90a on 9.0 where the kernel compiles for it, sm_89 elsewhere),
    /// decided at its first launch on such a device; any other target stays as the config
    /// names it.
    pub fn get_or_compile_on(
        &self,
        compute_capability: (i32, i32),
        config: &Config,
        program: fn() -> ir::source::Program,
    ) -> Result<Arc<CompiledKernel>, Error> {
        if config.target != Target::Auto {
            return self.get_or_compile(config, program);
        }
        let map = self.on_device.get_or_init(|| Mutex::new(HashMap::new()));
        let key = (*config, compute_capability);
        if let Some(k) = map.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(k.clone());
        }
        let resolved = match target::requested()? {
            Some(target) => Config { target, ..*config },
            None => target::choose(&program(), *config, Some(compute_capability), None).0,
        };
        let compiled = self.get_or_compile(&resolved, program)?;
        map.lock().unwrap_or_else(|p| p.into_inner()).insert(key, compiled.clone());
        Ok(compiled)
    }

    /// The kernel compiled for `config`: from the cache, or compiled from `program()` and kept.
    pub fn get_or_compile(
        &self,
        config: &Config,
        program: impl FnOnce() -> ir::source::Program,
    ) -> Result<Arc<CompiledKernel>, Error> {
        let map = self.inner.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(k) = map.lock().unwrap_or_else(|p| p.into_inner()).get(config) {
            return Ok(k.clone());
        }
        let compiled = Arc::new(compile(&program(), config)?);
        map.lock().unwrap_or_else(|p| p.into_inner()).insert(*config, compiled.clone());
        Ok(compiled)
    }
}

impl Default for KernelCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The 16-bit float types a kernel computes in, with what the host side needs of them.
pub trait HalfFloat: runtime::Element + PartialEq + std::fmt::Debug {
    /// The type's name in a `Config`.
    const DTYPE: DType;
    /// A quiet NaN, to poison outputs with.
    const NAN: Self;
    /// Rounds to nearest even.
    fn from_f64(x: f64) -> Self;
    /// Exact widening.
    fn to_f64(self) -> f64;
    /// The little-endian bytes (as a `.npy` file or a device buffer holds them).
    fn to_le_bytes(self) -> [u8; 2];
    /// The value of little-endian `bytes`.
    fn from_le_bytes(bytes: [u8; 2]) -> Self;
}

macro_rules! half_float {
    ($t:ty, $dtype:expr) => {
        impl HalfFloat for $t {
            const DTYPE: DType = $dtype;
            const NAN: Self = <$t>::NAN;
            fn from_f64(x: f64) -> Self {
                <$t>::from_f64(x)
            }
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            fn to_le_bytes(self) -> [u8; 2] {
                <$t>::to_le_bytes(self)
            }
            fn from_le_bytes(bytes: [u8; 2]) -> Self {
                <$t>::from_le_bytes(bytes)
            }
        }
    };
}

half_float!(f16, DType::F16);
half_float!(bf16, DType::Bf16);

/// The relative L2 error above which an attention result in `dtype` is a bug: 2e-3 for f16
/// (which lands near 3e-4), scaled by the unit roundoff for bf16 (2⁻⁸ against f16's 2⁻¹¹: 8×,
/// so 1.6e-2; bf16 lands near 2.2e-3, mostly the rounding of the output to bf16).
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2e-3,
        DType::Bf16 => 1.6e-2,
    }
}

/// `x` rounded to the nearest value of `dtype` (ties to even).
pub fn round_to(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F16 => f16::from_f64(x).to_f64(),
        DType::Bf16 => bf16::from_f64(x).to_f64(),
    }
}

/// A launch argument, in the order of the kernel's parameters.
pub enum Arg<'a> {
    /// An input tensor.
    Tensor(&'a dyn TensorArg),
    /// An output tensor.
    TensorMut(&'a mut dyn TensorArg),
    /// Sequence offsets (`SeqOffsets<B, S>`): a variable-length batch.
    Offsets(&'a DeviceSeqOffsets),
    /// Nothing, for an optional parameter: an output whose stores are skipped
    /// (`Option<TensorMut<..>>`) or offsets that leave the batch dense (`Option<SeqOffsets<..>>`).
    Absent,
    /// An `f32` scalar (`scale`).
    F32(f32),
}

/// A tensor argument as the launcher checks it: element type, logical shape `[B, H, S, D]`,
/// strides in elements, and how many elements its buffer holds.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// Element type name: `f16`, `bf16`, `f32`, `u32`.
    pub dtype: &'static str,
    /// The logical shape.
    pub shape: &'a [usize],
    /// Strides in elements, one per axis of `shape`.
    pub strides: &'a [usize],
    /// Elements the buffer holds.
    pub buffer_len: usize,
}

impl<'a> TensorView<'a> {
    /// The view of a device (or foreign) tensor.
    pub fn of(t: &'a dyn TensorArg) -> TensorView<'a> {
        TensorView { dtype: t.dtype(), shape: t.shape(), strides: t.strides(), buffer_len: t.buffer_len() }
    }
}

/// A launch argument as [`bind_shapes`] checks it.
#[derive(Clone, Copy, Debug)]
pub enum ArgView<'a> {
    /// A tensor argument.
    Tensor(TensorView<'a>),
    /// Sequence offsets (a variable-length batch).
    Offsets(&'a SeqOffsets),
    /// An optional parameter left out, or a scalar.
    None,
}

/// The runtime sizes bound to a kernel's symbolic dims, the CTA count they give, and the
/// stride arguments (for each tensor, its `B, H, S` strides in elements).
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    /// The size bound to each of the kernel's symbolic dims (`kernel.dims`), in order.
    pub dims: Vec<u32>,
    /// Work items (`B · H · ⌈S / TILE_M⌉` tiles): CTAs of a one-per-item launch.
    pub work_items: u64,
    /// The stride arguments, in the entry ABI's order (`Kernel::entry_abi`): each tensor's
    /// `B, H, S` strides in elements (0 for one left out), each table's every axis.
    pub strides: Vec<u32>,
}

/// Checks `args` (one per parameter) against the kernel's signature and binds its symbolic
/// dims. Every mismatch is an `Error::Argument` naming the argument.
///
/// Sequence offsets bind their batch dim to the number of sequences and their sequence dim to
/// the longest one; a tensor whose sequence axis they make ragged is packed: `[TOTAL, H, D]`
/// (`[H, TOTAL]` per row, as FlashAttention's varlen log-sum-exp), `TOTAL` the offsets' end,
/// passed to the kernel with batch stride 0.
pub fn bind_shapes(kernel: &ir::Kernel, args: &[ArgView]) -> Result<Binding, Error> {
    let bad = |arg: &str, message: String| Error::Argument {
        kernel: kernel.name.clone(),
        arg: arg.to_string(),
        message,
    };
    if args.len() != kernel.params.len() {
        return Err(bad("(all)", format!("expected {} arguments, got {}", kernel.params.len(), args.len())));
    }
    let mut bound: Vec<Option<(u64, String)>> = vec![None; kernel.dims.len()];
    let mut bind = |dim: ir::kernel::RtDim, size: u64, who: &str, context: String| -> Result<(), Error> {
        let dim = dim.0 as usize;
        match &bound[dim] {
            None => bound[dim] = Some((size, who.to_string())),
            Some((first, first_who)) if *first != size => {
                return Err(bad(
                    who,
                    format!("`{}` is {size} here but {first} in `{first_who}`{context}", kernel.dims[dim]),
                ))
            }
            Some(_) => {}
        }
        Ok(())
    };
    // Offsets first: they bind the dims of the ragged axes.
    // Per ragged dim: its offsets, their parameter's name, and the batch dim they walk.
    let mut ragged: HashMap<ir::kernel::RtDim, (&SeqOffsets, &str, ir::kernel::RtDim)> = HashMap::new();
    for (param, arg) in kernel.params.iter().zip(args) {
        let Param::Offsets(o) = param else { continue };
        if o.lengths {
            match arg {
                ArgView::Tensor(view) => {
                    bind_lengths(view).map_err(|m| bad(&o.name, m))?;
                    bind(o.batch, view.shape[0] as u64, &o.name, format!(" (shape {:?})", view.shape))?;
                }
                _ if o.optional => {}
                _ => return Err(bad(&o.name, "missing: these sequence lengths are required".into())),
            }
            continue;
        }
        match arg {
            ArgView::Offsets(_) if !kernel.config.varlen => {
                return Err(bad(
                    &o.name,
                    format!(
                        "sequence offsets given to a kernel compiled without the variable-length path ({}): compile it with `Config {{ varlen: true, .. }}` (the typed `launch` does so when offsets are passed)",
                        kernel.config
                    ),
                ))
            }
            ArgView::Offsets(offsets) => {
                let context = format!(" ({} sequences, the longest {})", offsets.batch(), offsets.max_len());
                bind(o.batch, offsets.batch() as u64, &o.name, context.clone())?;
                bind(o.seq, offsets.max_len() as u64, &o.name, context)?;
                ragged.insert(o.seq, (offsets, &o.name, o.batch));
            }
            _ if o.optional => {}
            _ => return Err(bad(&o.name, "missing: these sequence offsets are required".into())),
        }
    }
    // Each tensor's and table's strides, by parameter; ordered by the entry ABI at the end.
    let mut param_strides: Vec<Vec<u32>> = vec![vec![]; kernel.params.len()];
    for ((param, arg), strides) in kernel.params.iter().zip(args).zip(param_strides.iter_mut()) {
        if let Param::Table(t) = param {
            let ArgView::Tensor(view) = arg else {
                if t.optional {
                    // Left out: a null pointer, zero strides, and the kernel skips its stores.
                    strides.extend(t.dims.iter().map(|_| 0));
                    continue;
                }
                return Err(bad(&t.name, "missing: this table is required".into()));
            };
            // A table with a ragged axis, packed as its tensors are: that axis holds every
            // sequence's rows (TOTAL), and the batch axis is gone ([H, TOTAL] for [B, H, S]).
            let packed = t.dims.iter().position(|d| ragged.contains_key(d)).map(|axis| {
                let (offsets, name, batch) = ragged[&t.dims[axis]];
                (axis, t.dims.iter().position(|d| *d == batch), offsets, name)
            });
            match packed {
                None => {
                    bind_table(t, view, strides).map_err(|m| bad(&t.name, m))?;
                    for (axis, dim) in t.dims.iter().enumerate() {
                        bind(*dim, view.shape[axis] as u64, &t.name, format!(" (shape {:?})", view.shape))?;
                    }
                }
                Some((ragged_axis, Some(batch_axis), offsets, name)) if !t.writable => {
                    // The packed view's axes are the table's without the batch axis.
                    let logical: Vec<usize> = (0..t.dims.len()).filter(|a| *a != batch_axis).collect();
                    let unpacked = ir::kernel::TableParam {
                        dims: logical.iter().map(|a| t.dims[*a]).collect(),
                        ..t.clone()
                    };
                    let mut packed_strides = vec![];
                    bind_table(&unpacked, view, &mut packed_strides).map_err(|m| bad(&t.name, m))?;
                    let at = |axis: usize| logical.iter().position(|a| *a == axis).expect("a packed axis");
                    if view.shape[at(ragged_axis)] != offsets.total() {
                        return Err(bad(
                            &t.name,
                            format!(
                                "packs {} rows (shape {:?}) but the offsets `{name}` end at row {}",
                                view.shape[at(ragged_axis)],
                                view.shape,
                                offsets.total()
                            ),
                        ));
                    }
                    for axis in 0..t.dims.len() {
                        if axis == batch_axis {
                            strides.push(0);
                            continue;
                        }
                        strides.push(packed_strides[at(axis)]);
                        if axis != ragged_axis {
                            bind(t.dims[axis], view.shape[at(axis)] as u64, &t.name, format!(" (shape {:?})", view.shape))?;
                        }
                    }
                }
                Some(_) => {
                    return Err(bad(
                        &t.name,
                        "a table with a variable-length axis is read packed (its batch axis dropped, the sequences' rows one after another); writing one so, or one without the batch axis, is not supported".into(),
                    ))
                }
            }
            continue;
        }
        let Param::Tensor(t) = param else {
            continue;
        };
        let ArgView::Tensor(view) = arg else {
            // Left out: allowed for optional outputs, which get a null pointer and no strides.
            if !t.optional {
                return Err(bad(&t.name, "missing: this tensor is required".into()));
            }
            strides.extend([0; 3]);
            continue;
        };
        let want = t.elem.name();
        if view.dtype != want {
            return Err(bad(&t.name, format!("expected a {want} tensor, got {}", view.dtype)));
        }
        let packed = ragged.get(&t.dims[2]).copied();
        let (axes, rank) = match (packed.is_some(), t.is_rows()) {
            (false, false) => ("[B, H, S, D]", 4),
            (false, true) => ("[B, H, S]", 3),
            (true, false) => ("[TOTAL, H, D]", 3),
            (true, true) => ("[H, TOTAL]", 2),
        };
        if view.shape.len() != rank {
            return Err(bad(&t.name, format!("expected {rank} axes {axes}, got shape {:?}", view.shape)));
        }
        // The logical [B, H, S(, D)] view: a packed tensor is one batch of TOTAL rows.
        let (shape, view_strides): (Vec<usize>, Vec<usize>) = match (packed, t.is_rows()) {
            (None, _) => (view.shape.to_vec(), view.strides.to_vec()),
            (Some((offsets, name, _)), rows) => {
                let (h, total) = if rows { (0, 1) } else { (1, 0) };
                if view.shape[total] != offsets.total() {
                    return Err(bad(
                        &t.name,
                        format!(
                            "packs {} rows (shape {:?}) but the offsets `{name}` end at row {}",
                            view.shape[total],
                            view.shape,
                            offsets.total()
                        ),
                    ));
                }
                if view.strides.len() != view.shape.len() {
                    return Err(bad(
                        &t.name,
                        format!("{} strides for shape {:?}", view.strides.len(), view.shape),
                    ));
                }
                // One batch of TOTAL rows: [1, H, TOTAL(, D)] with batch stride 0.
                let mut shape = vec![1, view.shape[h], view.shape[total]];
                let mut st = vec![0, view.strides[h], view.strides[total]];
                if !rows {
                    shape.push(view.shape[2]);
                    st.push(view.strides[2]);
                }
                (shape, st)
            }
        };
        if !t.is_rows() && shape[3] != kernel.config.head_dim as usize {
            return Err(bad(
                &t.name,
                format!(
                    "head dim is {} but the kernel was compiled for head_dim = {}",
                    shape[3], kernel.config.head_dim
                ),
            ));
        }
        let logical = TensorView { shape: &shape, strides: &view_strides, ..*view };
        check_tensor_strides(&logical, t.is_rows(), t.writable).map_err(|m| bad(&t.name, m))?;
        strides.extend(view_strides[..3].iter().map(|s| *s as u32));
        // A packed tensor's batch and sequence dims are the offsets' to bind.
        let axes: &[usize] = if packed.is_some() { &[1] } else { &[0, 1, 2] };
        for &axis in axes {
            bind(t.dims[axis], shape[axis] as u64, &t.name, format!(" (shape {:?})", view.shape))?;
        }
    }
    // A paged tile's logical sequence, when no tensor has it, is the page table's capacity:
    // `MAX_PAGES · PAGE` rows (the kernel never reads an entry past the table's row).
    let mut paged = vec![];
    kernel.walk(&mut |inst| {
        if let Some(access) = inst.op.tile_access().filter(|a| a.pages.is_some()) {
            paged.push(access.clone());
        }
    });
    for access in paged {
        let (Some(seq), Some(tensor), Some(Param::Table(table))) = (
            kernel.access_seq_dim(&access),
            kernel.tensor(access.param),
            access.pages.and_then(|t| kernel.params.get(t)),
        ) else {
            continue;
        };
        let size = |d: ir::kernel::RtDim| bound[d.0 as usize].as_ref().map_or(0, |(s, _)| *s);
        // The kernel steps through a page 16 rows at a time at most (`copy_tile_async`).
        let page = size(tensor.dims[2]);
        if page == 0 || page % 16 != 0 {
            return Err(bad(
                &tensor.name,
                format!(
                    "pages of {page} rows (`{}`, axis 2 of the paged tensor): a page holds a multiple of 16 rows",
                    kernel.dims[tensor.dims[2].0 as usize]
                ),
            ));
        }
        if bound[seq.0 as usize].is_none() {
            let capacity = size(table.dims[1]) * size(tensor.dims[2]);
            bound[seq.0 as usize] = Some((capacity, table.name.clone()));
        }
    }
    let dims: Vec<u64> = bound.iter().map(|b| b.as_ref().map(|(s, _)| *s).unwrap_or(0)).collect();
    // The kernel indexes rows and work items in 32-bit registers, a tile past the last row
    // included: sizes up to 2³¹ - 1 leave that headroom.
    if let Some((i, d)) = dims.iter().enumerate().find(|(_, d)| **d > i32::MAX as u64) {
        return Err(bad(
            "(shapes)",
            format!("`{}` = {d} is over 2^31 - 1, the largest size 32-bit indexing allows", kernel.dims[i]),
        ));
    }
    // Grouped K/V heads: `to` (HKV) must divide `of` (H).
    let mut groups = vec![];
    kernel.walk(&mut |inst| {
        if let Some(access) = inst.op.tile_access() {
            groups.extend(access.head_groups().map(|(_, g)| (access.param, g)));
        }
    });
    for (param, g) in groups {
        let (of, to) = (dims[g.of.0 as usize], dims[g.to.0 as usize]);
        if to == 0 || of % to != 0 {
            return Err(bad(
                kernel.params[param].name(),
                format!(
                    "`{}` = {of} query heads are not a multiple of `{}` = {to} K/V heads",
                    kernel.dims[g.of.0 as usize], kernel.dims[g.to.0 as usize]
                ),
            ));
        }
    }
    // Tiles cover each axis they walk; the last one may be partial (the kernel masks its tail).
    let mut work_items: Option<u64> = None;
    kernel.walk(&mut |inst| {
        // Every role group walks the same work items: count them once, from the first loop.
        if let (Op::Tiles { extents, .. }, None) = (&inst.op, work_items) {
            let items = extents.iter().map(|e| {
                dims[e.dim.0 as usize].div_ceil(e.per_tile.map_or(1, |t| t.size(&kernel.config) as u64))
            });
            work_items = Some(items.product::<u64>());
        }
    });
    if work_items.is_some_and(|w| w * kernel.config.kv_ctas.max(1) as u64 > i32::MAX as u64) {
        return Err(bad(
            "(shapes)",
            format!(
                "{} work items (B · H · S / TILE_M tiles) is over 2^31 - 1, the most 32-bit indexing allows",
                work_items.unwrap_or(0)
            ),
        ));
    }
    let strides = kernel
        .entry_abi()
        .into_iter()
        .filter_map(|e| match e {
            ir::abi::EntryParam::Stride { param, axis, .. } => Some(param_strides[param][axis]),
            _ => None,
        })
        .collect();
    Ok(Binding {
        dims: dims.iter().map(|d| *d as u32).collect(),
        work_items: work_items.unwrap_or(0),
        strides,
    })
}

/// The layout rules of a tensor argument: for `[B, H, S, D]` tensors the head dim contiguous and
/// every other stride a multiple of 8 elements (16-byte copies); for per-row `[B, H, S]` f32
/// tensors any strides (4-byte stores); for both each stride in bytes within 32 bits, the
/// strides inside the buffer, and for an output no two elements at one address.
/// The arguments do not fill the entry ABI (a bug: `bind_shapes` checked their count).
/// The tensor map an [`ir::abi::EntryParam::TensorMap`] of `kernel` names, over the lengths
/// `binding` bound and its tensor's `[B, H, S]` strides (in elements): what the launcher, the
/// simulator and launch plans pass for it, with its tensor's parameter index.
pub(crate) fn tile_map(
    kernel: &ir::Kernel,
    binding: &Binding,
    entry: ir::abi::EntryParam,
    strides: [u32; 3],
) -> Option<(usize, ir::abi::TileMap)> {
    let ir::abi::EntryParam::TensorMap { param, rows } = entry else { return None };
    let tensor = kernel.tensor(param).filter(|t| !t.is_rows())?;
    let lens = [0, 1, 2].map(|axis| binding.dims[tensor.dims[axis].0 as usize]);
    Some((param, ir::abi::TileMap::new(kernel.config.head_dim, lens, strides, rows)))
}

fn abi_mismatch(kernel: &ir::Kernel) -> Error {
    Error::Argument {
        kernel: kernel.name.clone(),
        arg: "(all)".into(),
        message: "the arguments do not match the kernel's entry parameters".into(),
    }
}

/// Checks a `SeqLens` argument: an i32 tensor of one axis (the sequences), contiguous (the kernel
/// reads entry `b` at byte `4 · b`), within its buffer.
fn bind_lengths(view: &TensorView) -> Result<(), String> {
    if view.dtype != "i32" {
        return Err(format!("sequence lengths are an i32 tensor, got {}", view.dtype));
    }
    if view.shape.len() != 1 || view.strides.len() != 1 {
        return Err(format!("sequence lengths have one axis [B], got shape {:?}", view.shape));
    }
    if view.shape[0] > 1 && view.strides[0] != 1 {
        return Err(format!(
            "sequence lengths must be contiguous (stride 1), got stride {}",
            view.strides[0]
        ));
    }
    if view.shape[0] > view.buffer_len {
        return Err(format!("{} lengths in a buffer of {} elements", view.shape[0], view.buffer_len));
    }
    Ok(())
}

/// Checks a table's argument (element type, rank, strides inside its buffer, each stride in
/// elements within 32 bits and each axis under 2³⁰ elements: the kernel multiplies an index's
/// byte offset by the stride in 64 bits, so an axis may span more than 4 GiB) and appends its
/// strides, one per axis, to the entry's stride arguments.
fn bind_table(t: &ir::kernel::TableParam, view: &TensorView, strides: &mut Vec<u32>) -> Result<(), String> {
    if view.dtype != t.elem.name() {
        return Err(format!("expected a {} table, got {}", t.elem.name(), view.dtype));
    }
    if view.shape.len() != t.dims.len() || view.strides.len() != view.shape.len() {
        return Err(format!(
            "expected {} axes, got shape {:?} (strides {:?})",
            t.dims.len(),
            view.shape,
            view.strides
        ));
    }
    for (axis, (len, stride)) in view.shape.iter().zip(view.strides).enumerate() {
        if *stride as u64 > u32::MAX as u64 {
            return Err(format!(
                "stride of axis {axis} is {stride} elements, over the 2^32 - 1 a table's stride can be"
            ));
        }
        if *len >= 1 << 30 {
            return Err(format!("axis {axis} has {len} elements; a table's axis holds fewer than 2^30"));
        }
    }
    runtime::check_strides(view.shape, view.strides, view.buffer_len).map_err(|e| e.to_string())?;
    if t.writable {
        check_distinct_addresses(view.shape, view.strides)?;
    }
    strides.extend(view.strides.iter().map(|s| *s as u32));
    Ok(())
}

/// An output's strides must give every element of `shape` its own address.
fn check_distinct_addresses(shape: &[usize], strides: &[usize]) -> Result<(), String> {
    if shape.contains(&0) {
        return Ok(());
    }
    // Walk the axes from the smallest stride: each must step past everything inside it.
    let mut axes: Vec<usize> = (0..shape.len()).filter(|a| shape[*a] > 1).collect();
    axes.sort_by_key(|a| strides[*a]);
    let mut extent = 1usize;
    for a in axes {
        if strides[a] < extent {
            return Err(format!(
                "output strides {strides:?} make different elements of shape {shape:?} share an address"
            ));
        }
        extent = strides[a] * shape[a];
    }
    Ok(())
}

fn check_tensor_strides(view: &TensorView, rows: bool, output: bool) -> Result<(), String> {
    let (shape, strides) = (view.shape, view.strides);
    if strides.len() != shape.len() {
        return Err(format!("{} strides for shape {shape:?}", strides.len()));
    }
    if !rows && strides[3] != 1 && shape[3] > 1 {
        return Err(format!("the head dim must be contiguous (stride 1), got strides {strides:?}"));
    }
    let elem_bytes = if rows { 4 } else { 2 };
    for (axis, name) in ["B", "H", "S"].iter().enumerate() {
        let stride = strides[axis];
        if stride as u64 * elem_bytes > u32::MAX as u64 {
            return Err(format!("stride of axis {name} is {stride} elements, over 4 GiB"));
        }
        if !rows && stride % 8 != 0 {
            return Err(format!(
                "stride of axis {name} is {stride} elements, not a multiple of 8 (16 bytes): the kernel copies 16-byte chunks (strides {strides:?})"
            ));
        }
    }
    runtime::check_strides(shape, strides, view.buffer_len).map_err(|e| e.to_string())?;
    if output {
        check_distinct_addresses(shape, strides)?;
    }
    Ok(())
}

/// What a launch argument is, as far as the kernel's signature cares (a scalar with its value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ArgKind {
    Input,
    Output,
    Offsets,
    Absent,
    Scalar(f32),
}

/// Checks that each argument is the kind of its parameter (input tensor, output tensor, f32),
/// and each scalar against what the kernel's passes relied on: a `nonnegative` scalar (the
/// sm_90a score-scale fold's) given a negative value is an `Error::Argument` naming it. The
/// argument count is `bind_shapes`'s to check.
pub(crate) fn check_arg_kinds(
    kernel: &ir::Kernel,
    kinds: impl Iterator<Item = ArgKind>,
) -> Result<(), Error> {
    for (param, kind) in kernel.params.iter().zip(kinds) {
        let wrong = |message: String| Error::Argument {
            kernel: kernel.name.clone(),
            arg: param.name().to_string(),
            message,
        };
        let want = match param {
            Param::Tensor(t) if t.optional && kind == ArgKind::Absent => continue,
            Param::Offsets(o) if o.optional && kind == ArgKind::Absent => continue,
            Param::Offsets(o) if o.lengths => {
                (ArgKind::Input, "expected sequence lengths (an i32 tensor `[B]` on the device)")
            }
            Param::Offsets(_) => (ArgKind::Offsets, "expected sequence offsets (`DeviceSeqOffsets`)"),
            Param::Tensor(t) if t.writable => (ArgKind::Output, "expected a mutable output tensor"),
            Param::Tensor(_) => (ArgKind::Input, "expected an input tensor"),
            Param::Table(t) if t.optional && kind == ArgKind::Absent => continue,
            Param::Table(t) if t.writable => (
                ArgKind::Output,
                "expected a mutable output tensor (a table written with `store(t.at(..), ..)`)",
            ),
            Param::Table(_) => (ArgKind::Input, "expected an input tensor (a table read with `.at(..)`)"),
            Param::Scalar { nonnegative, .. } => match kind {
                ArgKind::Scalar(x) if *nonnegative && x < 0.0 => return Err(wrong(format!(
                    "{x} is negative, and this compiled kernel needs it ≥ 0: its softmax folds the scale into the exponentials' subtraction (the sm_90a score-scale fold), which takes the scores' row maximum before scaling; a negative softmax scale runs on sm_89 (`Config::target`)"
                ))),
                ArgKind::Scalar(_) => continue,
                _ => return Err(wrong("expected an f32 scalar".into())),
            },
        };
        if kind != want.0 {
            return Err(wrong(want.1.to_string()));
        }
    }
    Ok(())
}

/// CTAs to launch for `work_items`: one per item, or for a persistent kernel as many as the
/// device holds at once (`resident`), never more than there is work.
pub(crate) fn grid_size(
    kernel: &ir::Kernel,
    work_items: u64,
    resident: impl FnOnce() -> Result<u64, Error>,
) -> Result<u32, Error> {
    let ctas = match ir::passes::persist::schedule(kernel) {
        // Split across CTAs: `kv_ctas` CTAs a work item.
        ir::kernel::TileSchedule::OnePerCta => work_items * kernel.config.kv_ctas.max(1) as u64,
        ir::kernel::TileSchedule::Persistent => work_items.min(resident()?),
    };
    u32::try_from(ctas).map_err(|_| Error::Argument {
        kernel: kernel.name.clone(),
        arg: "(shapes)".into(),
        message: "more work items than a 1-D grid can hold".into(),
    })
}

/// What the shape binding sees of each launch argument.
fn views_of<'a>(args: &'a [Arg]) -> Vec<ArgView<'a>> {
    args.iter()
        .map(|a| match a {
            Arg::Tensor(t) => ArgView::Tensor(TensorView::of(*t)),
            Arg::TensorMut(t) => ArgView::Tensor(TensorView::of(&**t)),
            Arg::Offsets(o) => ArgView::Offsets(o.host()),
            Arg::Absent | Arg::F32(_) => ArgView::None,
        })
        .collect()
}

/// The `[B, H, S, SK]` a launch of `kernel` with `args` binds (SK = S for a kernel without
/// one): what the tuning table is keyed by. An error names the dim a kernel lacks, or what is
/// wrong with the arguments.
pub fn problem_shape(kernel: &CompiledKernel, args: &[Arg]) -> Result<[usize; 4], Error> {
    let k = &kernel.kernel;
    let binding = bind_shapes(k, &views_of(args))?;
    let dim = |name: &str| k.dims.iter().position(|d| d == name).map(|i| binding.dims[i] as usize);
    let need = |name: &str| {
        dim(name).ok_or_else(|| Error::Argument {
            kernel: k.name.clone(),
            arg: "(shapes)".into(),
            message: format!("a tuned launch needs the dims B, H and S (the tuning table's keys); the kernel has no `{name}`"),
        })
    };
    let s = need("S")?;
    Ok([need("B")?, need("H")?, s, dim("SK").unwrap_or(s)])
}

/// Launches `program` (the registered kernel `name`) with the config the tuning table gives for
/// this GPU and the arguments' shape ([`tuning::tuned_config`]: with `FLASHCORE_AUTOTUNE=1`, a
/// key with no entry tuned on this GPU is tuned first) and waits for it; returns the config and
/// where it came from. `base` fixes what tuning keeps (dtype, head dim, causal, varlen, target).
/// The generated `launch_tuned` of each kernel calls this.
pub fn launch_tuned(
    device: &runtime::Device,
    name: &str,
    program: fn() -> ir::source::Program,
    cache: &KernelCache,
    base: &Config,
    args: &mut [Arg],
) -> Result<(Config, tuning::Source), Error> {
    let cc = device.info().compute_capability;
    let declared = cache.get_or_compile_on(cc, base, program)?;
    let shape = problem_shape(&declared, args)?;
    let (config, source) = tuning::tuned_config_of(device, name, cache.program(program), *base, shape)?;
    let kernel = cache.get_or_compile_on(cc, &config, program)?;
    launch(device, &kernel, args)?;
    Ok((config, source))
}

/// Binds `args` to `kernel`'s parameters, launches it and waits for it, at most
/// `device.launch_timeout()`: a kernel that hangs becomes `RuntimeError::Timeout` naming the
/// kernel and its config, never a stuck process.
pub fn launch(device: &runtime::Device, kernel: &CompiledKernel, args: &mut [Arg]) -> Result<(), Error> {
    launch_async(device, kernel, args)?;
    let context = format!("kernel `{}` ({})", kernel.kernel.name, kernel.kernel.config);
    device.synchronize_within(device.launch_timeout(), &context)?;
    Ok(())
}

/// A kernel compiled for sm_90a loads only on compute capability 9.0 (its `a` features exist on
/// no other chip): anywhere else, an error that names the fix instead of the driver's refusal.
fn check_target(k: &ir::Kernel, (major, minor): (i32, i32)) -> Result<(), Error> {
    match k.config.target {
        ir::Target::Sm90a if !ir::Target::Sm90a.runs_on(major, minor) => Err(Error::Argument {
            kernel: k.name.clone(),
            arg: "(config)".into(),
            message: format!(
                "compiled for sm_90a (wgmma), which runs only on compute capability 9.0 (H100, H200); this device is {major}.{minor}: compile for sm_89 (Config::target, FLASHCORE_TARGET=sm_89)"
            ),
        }),
        _ => Ok(()),
    }
}

/// Like [`launch`] but returns once the kernel is enqueued (one CTA per work item, or as many as
/// fit for persistent kernels). The caller must synchronize, with a timeout, before reading
/// the outputs: `device.synchronize()`.
pub fn launch_async(
    device: &runtime::Device,
    kernel: &CompiledKernel,
    args: &mut [Arg],
) -> Result<(), Error> {
    enqueue(device, kernel, args, None)
}

/// Like [`launch_async`] but on a stream another library owns (PyTorch's current stream, with
/// tensors it allocated as [`runtime::ForeignTensor`]s): ordered with that library's work, the
/// caller synchronizes that stream.
pub fn launch_on_stream(
    device: &runtime::Device,
    kernel: &CompiledKernel,
    args: &mut [Arg],
    stream: runtime::ForeignStream,
) -> Result<(), Error> {
    enqueue(device, kernel, args, Some(stream))
}

fn enqueue(
    device: &runtime::Device,
    kernel: &CompiledKernel,
    args: &mut [Arg],
    stream: Option<runtime::ForeignStream>,
) -> Result<(), Error> {
    let k = &kernel.kernel;
    check_arg_kinds(
        k,
        args.iter().map(|a| match a {
            Arg::Tensor(_) => ArgKind::Input,
            Arg::TensorMut(_) => ArgKind::Output,
            Arg::Offsets(_) => ArgKind::Offsets,
            Arg::Absent => ArgKind::Absent,
            Arg::F32(x) => ArgKind::Scalar(*x),
        }),
    )?;
    let views = views_of(args);
    let binding = bind_shapes(k, &views)?;
    check_target(k, device.info().compute_capability)?;
    if binding.work_items == 0 {
        return Ok(());
    }
    let image = kernel.image();
    let grid = grid_size(k, binding.work_items, || {
        Ok(device.ctas_per_sm(&image)?.max(1) as u64 * device.info().sm_count as u64)
    })?;
    // The tables the masks read along the key axis, summarised first, on the same stream.
    let summaries = summarise_tables(device, kernel, (args, &views), stream)?;
    // Split across CTAs: the kernel's workspace, after the parameters (`EntryParam::Workspace`).
    let workspace_bytes = codegen::combine_workspace_bytes(k, binding.work_items);
    let workspace = (workspace_bytes > 0)
        .then(|| device.workspace(kernel.key, workspace_bytes.div_ceil(4) as usize))
        .transpose()?;
    let mut per_param: Vec<Option<LaunchArg>> = args
        .iter_mut()
        .map(|a| {
            Some(match a {
                Arg::Tensor(t) => LaunchArg::Buffer(*t),
                Arg::TensorMut(t) => LaunchArg::BufferMut(&mut **t),
                Arg::Offsets(o) => LaunchArg::Buffer(o.buffer()),
                Arg::Absent => LaunchArg::Null,
                Arg::F32(x) => LaunchArg::F32(*x),
            })
        })
        .collect();
    if let Some(ws) = &workspace {
        per_param.push(Some(LaunchArg::Buffer(&**ws)));
    }
    let mut launch_args = k
        .entry_args(
            |p| per_param.get_mut(p)?.take(),
            |d| LaunchArg::U32(binding.dims[d.0 as usize]),
            &binding.strides,
            |_, v| LaunchArg::U32(v),
            |entry, strides| {
                let (param, map) = tile_map(k, &binding, entry, strides)?;
                let spec = runtime::TensorMapSpec {
                    bf16: k.config.dtype == DType::Bf16,
                    dims: map.dims,
                    strides: map.strides,
                    box_dims: map.box_dims,
                };
                // The tensor's pointer is launch argument `param` (the ABI lists parameters first).
                Some(LaunchArg::TensorMap { tensor: param, map: spec })
            },
            |summary| {
                let buffer = summaries.iter().find(|(s, _)| *s == summary);
                Some(buffer.map_or(LaunchArg::Null, |(_, b)| LaunchArg::Buffer(&**b)))
            },
        )
        .ok_or_else(|| abi_mismatch(k))?;
    match stream {
        Some(stream) => device.launch_on(&image, grid, &mut launch_args, stream)?,
        None => device.launch(&image, grid, &mut launch_args)?,
    }
    Ok(())
}

/// The summary kernel's launch for table summary `summary` of `kernel` over a table of
/// `shape` and `strides` (`None`: an empty table); typed errors name the table. A table read
/// packed (a variable-length batch: its batch axis dropped, `bind_shapes`) is summarised along
/// the same axis of the packed view, whose blocks count from the first sequence's first row.
pub(crate) fn summary_launch(
    kernel: &ir::Kernel,
    summary: ir::kernel::TableSummary,
    shape: &[usize],
    strides: &[usize],
) -> Result<Option<codegen::table_summary::SummaryLaunch>, Error> {
    let name = kernel.params[summary.param].name();
    let bad = |message: String| Error::Argument { kernel: kernel.name.clone(), arg: name.into(), message };
    let ir::kernel::Param::Table(table) = &kernel.params[summary.param] else {
        return Err(bad("a table summary of a parameter that is not a table".into()));
    };
    let axis = if shape.len() + 1 == table.dims.len() {
        // Packed: the batch axis of the offsets whose sequence axis the table has is gone.
        let batch = kernel.params.iter().find_map(|p| match p {
            ir::kernel::Param::Offsets(o) if !o.lengths && table.dims.contains(&o.seq) => {
                table.dims.iter().position(|d| *d == o.batch)
            }
            _ => None,
        });
        match batch {
            Some(batch) if batch != summary.axis => summary.axis - usize::from(batch < summary.axis),
            _ => return Err(bad(format!("shape {shape:?}: want one axis per dim of the table"))),
        }
    } else if shape.len() == table.dims.len() {
        summary.axis
    } else {
        return Err(bad(format!("shape {shape:?}: want one axis per dim of the table")));
    };
    codegen::table_summary::summary_launch(shape, strides, axis, kernel.config.tile_n).map_err(bad)
}

/// The summary kernel's launch for each of `kernel`'s table summaries (`Kernel::table_summaries`)
/// over the tables `views` (one per parameter) give; a table left out or empty has none.
pub(crate) fn summary_launches(
    kernel: &ir::Kernel,
    views: &[ArgView],
) -> Result<Vec<(ir::kernel::TableSummary, codegen::table_summary::SummaryLaunch)>, Error> {
    let mut launches = vec![];
    for summary in kernel.table_summaries() {
        let Some(ArgView::Tensor(table)) = views.get(summary.param) else { continue };
        if let Some(launch) = summary_launch(kernel, summary, table.shape, table.strides)? {
            launches.push((summary, launch));
        }
    }
    Ok(launches)
}

/// A table summary's device buffer (see [`summarise_tables`]).
type SummaryBuffer = std::sync::Arc<runtime::DeviceTensor<u32>>;

/// Enqueues the table summary kernel for each of `kernel`'s table summaries
/// ([`summary_launches`]; `views` are `args`') on the launch's stream, into a buffer of the
/// device's kept for this kernel and table: each summary with its buffer. Like the split-KV
/// workspace, the buffer is shared by the kernel's launches: launches of the same kernel on two
/// streams at once would race on it.
fn summarise_tables(
    device: &runtime::Device,
    kernel: &CompiledKernel,
    (args, views): (&[Arg], &[ArgView]),
    stream: Option<runtime::ForeignStream>,
) -> Result<Vec<(ir::kernel::TableSummary, SummaryBuffer)>, Error> {
    use codegen::table_summary::{table_summary_ptx, TABLE_SUMMARY_ENTRY, TABLE_SUMMARY_THREADS};
    static PTX: std::sync::OnceLock<(String, u64)> = std::sync::OnceLock::new();
    let mut out = vec![];
    for (summary, launch) in summary_launches(&kernel.kernel, views)? {
        let Some(Arg::Tensor(table)) = args.get(summary.param) else { continue };
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (kernel.key, "table summary", summary.param, summary.axis).hash(&mut h);
            h.finish()
        };
        let buffer = device.workspace(key, launch.bytes.div_ceil(4) as usize)?;
        let image = paged::hand_written(&PTX, table_summary_ptx, TABLE_SUMMARY_ENTRY, TABLE_SUMMARY_THREADS);
        let mut launch_args = vec![LaunchArg::Buffer(*table), LaunchArg::Buffer(&*buffer)];
        launch_args.extend(launch.values.into_iter().map(LaunchArg::U32));
        match stream {
            Some(stream) => device.launch_on(&image, launch.ctas, &mut launch_args, stream)?,
            None => device.launch(&image, launch.ctas, &mut launch_args)?,
        }
        drop(launch_args);
        out.push((summary, buffer));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document table read packed (`[TOTAL]` for `doc: [B, S]` with sequence offsets) is
    /// summarised along its one axis; read dense, along its second.
    #[test]
    fn a_packed_table_is_summarised_along_its_packed_axis() {
        let kernel =
            kernels::variants::document_attention::compile(&kernels::variants::document_attention::CONFIG)
                .unwrap();
        let k = &kernel.kernel;
        let [summary] = k.table_summaries()[..] else { panic!("{:?}", k.table_summaries()) };
        assert_eq!(k.params[summary.param].name(), "doc");
        assert_eq!(summary.axis, 1);
        let dense = summary_launch(k, summary, &[2, 300], &[300, 1]).unwrap().unwrap();
        assert_eq!(dense.values[..5], [10, 5, 64, 300, 1]);
        let packed = summary_launch(k, summary, &[700], &[1]).unwrap().unwrap();
        assert_eq!(packed.values[..5], [11, 11, 64, 700, 1]);
        assert_eq!(packed.bytes, 11 * 8);
        let err = summary_launch(k, summary, &[2, 3, 300], &[900, 300, 1]).unwrap_err().to_string();
        assert!(err.contains("doc"), "{err}");
    }

    /// The table summary kernel, run in the simulator on a strided 3-D table summarised along
    /// its middle axis (a partial last block, rows apart in memory), writes each (row, block)
    /// the minimum and maximum of its elements, at the table's offset for it times 8 bytes,
    /// and nothing else.
    #[test]
    fn the_summary_kernel_writes_each_blocks_min_and_max() {
        use codegen::table_summary::{
            summary_launch, table_summary_ptx, TABLE_SUMMARY_ENTRY, TABLE_SUMMARY_THREADS,
        };
        let (shape, strides, block) = ([3usize, 150, 2], [400usize, 2, 1], 64u32);
        let len = 3 * 400;
        let mut seed = 7u64;
        let table: Vec<i32> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 33) as i32 - (1 << 30)
            })
            .collect();
        let launch = summary_launch(&shape, &strides, 1, block).unwrap().unwrap();
        let mut machine = flashcore_sim::Machine::new(Default::default());
        let t = machine.alloc(table.iter().flat_map(|x| x.to_le_bytes()).collect());
        let poison = 0x5a5a5a5au32 as i32;
        let s = machine.alloc(vec![0x5a; launch.bytes as usize]);
        let image = (table_summary_ptx(), TABLE_SUMMARY_ENTRY, TABLE_SUMMARY_THREADS);
        paged::simulate_hand_written(&mut machine, image, launch.ctas, &[t, s], &launch.values).unwrap();
        let got: Vec<i32> = machine
            .read(s, launch.bytes as usize)
            .unwrap()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut written = std::collections::HashSet::new();
        for (i, k) in (0..3).flat_map(|i| (0..2).map(move |k| (i, k))) {
            for blk in 0..150usize.div_ceil(block as usize) {
                let elems = (blk * 64..(blk * 64 + 64).min(150)).map(|j| table[i * 400 + j * 2 + k]);
                let (min, max) = (elems.clone().min().unwrap(), elems.max().unwrap());
                let at = i * 400 + blk * 2 + k;
                assert_eq!((got[2 * at], got[2 * at + 1]), (min, max), "row ({i}, {k}), block {blk}");
                written.insert(at);
            }
        }
        for (at, pair) in got.chunks_exact(2).enumerate() {
            if !written.contains(&at) {
                assert_eq!(pair, [poison, poison], "pair {at} is no block's");
            }
        }
    }

    #[test]
    fn sm90a_kernels_refuse_devices_other_than_compute_capability_9_0() {
        let hopper = Config { target: Target::Sm90a, ..kernels::attention::CONFIG };
        let kernel = kernels::attention::compile(&hopper).unwrap();
        check_target(&kernel.kernel, (9, 0)).unwrap();
        for cc in [(8, 9), (10, 0), (12, 0)] {
            let err = check_target(&kernel.kernel, cc).unwrap_err().to_string();
            assert!(err.contains(&format!("this device is {}.{}", cc.0, cc.1)), "{err}");
            assert!(err.contains("FLASHCORE_TARGET=sm_89"), "{err}");
        }
        let ada = kernels::attention::compile(&kernels::attention::CONFIG).unwrap();
        for cc in [(8, 9), (9, 0), (12, 0)] {
            check_target(&ada.kernel, cc).unwrap();
        }
    }

    /// What a typed launcher compiles for each device (FLASHCORE_TARGET unset in the tests).
    #[test]
    fn auto_configs_resolve_per_device_and_named_targets_stay() {
        if target::requested().ok().flatten().is_some() {
            return; // the environment forces a target
        }
        let cache = KernelCache::new();
        let program = kernels::attention::program;
        let declared = kernels::attention::CONFIG;
        assert_eq!(declared.target, Target::Auto);
        let on =
            |cc, config: &Config| cache.get_or_compile_on(cc, config, program).unwrap().kernel.config.target;
        assert_eq!(on((9, 0), &declared), Target::Sm90a);
        assert_eq!(on((8, 9), &declared), Target::Sm89);
        assert_eq!(on((10, 0), &declared), Target::Sm89);
        assert_eq!(on((9, 0), &Config { target: Target::Sm89, ..declared }), Target::Sm89);
        // What sm_90a cannot express runs sm_89 on 9.0 too.
        assert_eq!(on((9, 0), &Config { load_warps: 1, ..declared }), Target::Sm89);
    }
}
