//! FlashCore's PTX back end: tile-level IR in, `sm_89` or `sm_90a` PTX text out. Pure: no I/O, no driver,
//! deterministic names, so the same kernel and config always give the same text.

pub mod append;
mod emit;
pub mod layout;
pub mod smem;
mod stream;
pub mod table_check;
pub mod table_summary;
pub mod target;
mod writer;

use flashcore_ir::Kernel;

pub use emit::{deferred_loads, SMEM_SYMBOL};

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CodegenError {
    #[error("the code generator does not support {0} yet")]
    Unsupported(String),
    #[error("code generator bug: {0}")]
    Internal(String),
    /// The config asks for a target that cannot express this kernel (see [`target::support`]).
    #[error("{target} cannot compile this kernel: {why}")]
    Target { target: flashcore_ir::Target, why: String },
}

/// A generated kernel: the PTX text and what a launcher needs to know about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Ptx {
    pub text: String,
    /// The `.entry` name.
    pub entry: String,
    /// Dynamic shared memory per CTA, in bytes.
    pub shared_bytes: u32,
    pub threads_per_cta: u32,
}

/// Generates PTX for a verified kernel, for the target its config names.
pub fn generate(kernel: &Kernel) -> Result<Ptx, CodegenError> {
    let target = kernel.config.target.ptx();
    target::support(kernel, target).map_err(|why| CodegenError::Target { target, why })?;
    let plan = smem::plan(kernel);
    let text = emit::Emitter::new(kernel, &plan).emit()?;
    // The driver's JIT refuses PTX with any byte past ASCII (CUDA_ERROR_INVALID_PTX), comments
    // included; comments are transliterated (`PtxWriter::comment`), so this never fires.
    if let Some((line, _)) = text.lines().enumerate().find(|(_, l)| !l.is_ascii()) {
        return Err(CodegenError::Internal(format!("PTX line {} is not ASCII", line + 1)));
    }
    Ok(Ptx {
        text,
        entry: kernel.name.clone(),
        shared_bytes: plan.total_bytes,
        threads_per_cta: kernel.config.threads(),
    })
}

/// Split-KV across CTAs (`Config::kv_ctas > 1`): the f32 registers of the online-softmax state
/// each thread writes to the workspace (its running max, sum and accumulator), 0 for a kernel
/// that is not split.
pub fn combine_state_registers(kernel: &Kernel) -> u32 {
    let mut regs = 0;
    kernel.walk(&mut |inst| {
        if let flashcore_ir::Op::CombineCtas { max, sum, acc } = inst.op {
            regs = layout::state_registers(kernel, [max, sum, acc]);
        }
    });
    regs
}

/// Split-KV across CTAs: the threads of a CTA whose state goes to the workspace: all of them,
/// or with split-KV inside the CTA too, split group 0's (which holds the CTA's merged state).
pub fn combine_state_threads(config: &flashcore_ir::Config) -> u32 {
    if config.kv_splits > 1 {
        config.warps_per_split() * 32
    } else {
        config.threads()
    }
}

/// Split-KV across CTAs: the bytes of the workspace a launch of `work_items` work items needs
/// (`EntryParam::Workspace`): per work item, `kv_ctas` states of [`combine_state_registers`]
/// f32 a thread of [`combine_state_threads`], then a u32 arrival counter per work item (zero
/// before the first launch; every launch leaves them zero). 0 for a kernel that is not split.
pub fn combine_workspace_bytes(kernel: &Kernel, work_items: u64) -> u64 {
    let regs = combine_state_registers(kernel) as u64;
    if regs == 0 {
        return 0;
    }
    let state_bytes = regs * combine_state_threads(&kernel.config) as u64 * 4;
    work_items * (kernel.config.kv_ctas as u64 * state_bytes + 4)
}
