//! The IR passes and their driver. Each pass is one module with one entry function
//! `run(Kernel) -> Result<Kernel, IrError>`; the driver runs them in order and verifies the IR
//! after each one, so a pass that breaks an invariant is caught where it did.

pub mod feed_loads;
pub mod fold_scale;
pub mod overlap;
pub mod persist;
pub mod pipeline;
pub mod softmax_split;
pub mod split_a_loads;
pub mod split_ctas;
pub mod split_kv;
pub mod tma;
pub mod warp_specialize;

use crate::error::{IrError, LowerError};
use crate::kernel::{Block, Kernel, Op};
use crate::source::SpanId;
use crate::verify::verify;

/// Where the kernel's work loop (its one `tiles(..)` instruction) stands among `body`'s
/// top-level instructions: passes find it by what it is, not by where it is.
pub(crate) fn work_loop(body: &Block, pass: &str) -> Result<usize, IrError> {
    let found: Vec<usize> = body
        .insts
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i.op, Op::Tiles { .. }))
        .map(|(at, _)| at)
        .collect();
    match found[..] {
        [at] => Ok(at),
        [] => Err(LowerError::new(SpanId::NONE, format!("{pass} needs a `tiles(..)` work loop")).into()),
        _ => Err(LowerError::new(
            body.insts[found[1]].span,
            format!("{pass} needs one `tiles(..)` work loop, found {}", found.len()),
        )
        .into()),
    }
}

type Pass = fn(Kernel) -> Result<Kernel, IrError>;

/// The passes, in the order they run.
pub const PASSES: [(&str, Pass); 10] = [
    ("pipeline", pipeline::run),
    ("split_kv", split_kv::run),
    ("split_ctas", split_ctas::run),
    ("persist", persist::run),
    ("warp_specialize", warp_specialize::run),
    ("overlap", overlap::run),
    ("tma", tma::run),
    ("fold_scale", fold_scale::run),
    ("split_a_loads", split_a_loads::run),
    ("feed_loads", feed_loads::run),
];

/// Runs every pass up to and including `last` (all of them when `None`), verifying after each.
pub fn run_until(mut kernel: Kernel, last: Option<&str>) -> Result<Kernel, IrError> {
    if let Some(name) = last {
        if !PASSES.iter().any(|(n, _)| *n == name) {
            return Err(IrError::UnknownPass(name.to_string()));
        }
    }
    for (name, pass) in PASSES {
        kernel = pass(kernel)?;
        verify(&kernel)?;
        if Some(name) == last {
            break;
        }
    }
    Ok(kernel)
}

/// Runs all passes, then the protocol check on the schedule they produced.
pub fn run_all(kernel: Kernel) -> Result<Kernel, IrError> {
    let kernel = run_until(kernel, None)?;
    crate::protocol::check(&crate::protocol::schedule_of(&kernel))?;
    Ok(kernel)
}
