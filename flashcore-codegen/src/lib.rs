//! FlashCore's PTX back end: tile-level IR in, `sm_89` or `sm_90a` PTX text out. Pure: no I/O, no driver,
//! deterministic names, so the same kernel and config always give the same text.

mod emit;
pub mod layout;
pub mod smem;
mod stream;
pub mod target;
mod writer;

use flashcore_ir::Kernel;

pub use emit::SMEM_SYMBOL;

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
