//! Table gathers issued under the matmul (sm_90a). A score modification that reads a table at
//! the scores' positions (a bias `bias[b, h, i, j]`) loads one value an element; written after
//! the scores, its loads wait for the asynchronous `S = Q·Kᵀ` to finish (`wgmma.wait_group`),
//! and ptxas keeps them there: every K/V tile then waits a global-memory latency on top of its
//! matmul (on the H200, 64 `LDG`s a thread right after `WARPGROUP.DEPBAR`). The gathers read only
//! positions, work indices and parameters, so this pass moves each (with the instructions that
//! compute its indices) above the iteration's first wait (for the K tile's copy, or the matmul):
//! the loads are in flight while the copy lands and the tensor cores work. Not in the overlapped
//! loop (asynchronous matmuls), whose registers hold the P·V in flight.
//!
//! ```text
//! wait $full[..]                       i = position of rows; j = position of cols
//! s = mma(q, kᵀ)                       g = bias.at(b, h, i, j)
//! i = position of rows          =>     wait $full[..]
//! j = position of cols                 s = mma(q, kᵀ)
//! g = bias.at(b, h, i, j)              s' = s + g
//! s' = s + g
//! ```
//!
//! A gather moves only when everything it reads is defined before the wait or moves with it
//! (positions, lengths, constants, integer arithmetic on them), none of it is reassigned in the
//! block, and nothing in the block writes its table.

use std::collections::HashSet;

use crate::error::IrError;
use crate::kernel::*;
use crate::Target;

pub fn run(mut kernel: Kernel) -> Result<Kernel, IrError> {
    if kernel.config.target != Target::Sm90a {
        return Ok(kernel);
    }
    let mut body = std::mem::take(&mut kernel.body);
    hoist_in(&kernel, &mut body);
    kernel.body = body;
    Ok(kernel)
}

fn hoist_in(kernel: &Kernel, block: &mut Block) {
    for inst in &mut block.insts {
        for inner in inst.op.blocks_mut() {
            hoist_in(kernel, inner);
        }
    }
    // The overlapped loop (asynchronous matmuls, P·V in flight across the softmax) has no
    // registers for a tile of gathered values besides: ptxas spilled 112 bytes at the H200's
    // D = 128 entries with the gathers above its wait.
    if block.insts.iter().any(|i| matches!(i.op, Op::MmaAsync { .. })) {
        return;
    }
    // The first wait of an iteration: for the K tile's copy (an mbarrier, or cp.async groups
    // and the CTA barrier after them), or the matmul's result.
    let waits = |op: &Op| {
        matches!(op, Op::MbarWait { .. } | Op::WaitGroup { .. } | Op::Barrier { .. } | Op::Mma { .. })
    };
    let Some(wait) = block.insts.iter().position(|i| waits(&i.op)) else { return };
    // Values (re)assigned in this block, and tables written in it: not to be read early.
    let assigned: HashSet<Value> = block
        .insts
        .iter()
        .filter_map(|i| match i.op {
            Op::Assign { dst, .. } => Some(dst),
            _ => None,
        })
        .collect();
    let written: HashSet<usize> = block
        .insts
        .iter()
        .filter_map(|i| match i.op {
            Op::Scatter { param, .. } => Some(param),
            _ => None,
        })
        .collect();
    let mut moving: Vec<usize> = vec![];
    for at in wait + 1..block.insts.len() {
        let Op::Gather { param, .. } = block.insts[at].op else { continue };
        if written.contains(&param) {
            continue;
        }
        if let Some(deps) = movable_with_deps(kernel, &block.insts, wait, at, &assigned, &moving) {
            moving.extend(deps);
            moving.push(at);
        }
    }
    if moving.is_empty() {
        return;
    }
    moving.sort_unstable();
    moving.dedup();
    let mut moved = Vec::with_capacity(moving.len());
    let mut rest = Vec::with_capacity(block.insts.len());
    for (i, inst) in std::mem::take(&mut block.insts).into_iter().enumerate() {
        if moving.binary_search(&i).is_ok() {
            moved.push(inst);
        } else {
            rest.push(inst);
        }
    }
    // Everything moved came after the wait: put it back just before it.
    rest.splice(wait..wait, moved);
    block.insts = rest;
}

/// The instructions between `wait` and `at` that the gather at `at` needs moved with it (in
/// block order), or `None` when it cannot move: an operand defined after the wait by an
/// instruction that is not a pure index computation, or reassigned in the block.
fn movable_with_deps(
    kernel: &Kernel,
    insts: &[Inst],
    wait: usize,
    at: usize,
    assigned: &HashSet<Value>,
    already: &[usize],
) -> Option<Vec<usize>> {
    let mut deps: Vec<usize> = vec![];
    let mut pending: Vec<Value> = insts[at].op.uses();
    let mut seen: HashSet<Value> = HashSet::new();
    while let Some(v) = pending.pop() {
        if !seen.insert(v) {
            continue;
        }
        if assigned.contains(&v) || kernel.value(v).mutable {
            return None;
        }
        let Some(def) = (wait + 1..at).find(|&i| insts[i].op.def() == Some(v)) else { continue };
        if already.contains(&def) || deps.contains(&def) {
            continue;
        }
        if !is_index_computation(&insts[def].op) {
            return None;
        }
        deps.push(def);
        pending.extend(insts[def].op.uses());
    }
    deps.sort_unstable();
    Some(deps)
}

/// Reads no memory, no scores and no state: positions, lengths, constants, parameters, and
/// arithmetic on those (whatever its operands are, they are checked in turn).
fn is_index_computation(op: &Op) -> bool {
    matches!(
        op,
        Op::Position { .. }
            | Op::DimLen { .. }
            | Op::Const { .. }
            | Op::IntConst { .. }
            | Op::ScalarParam { .. }
            | Op::Binary { .. }
            | Op::Unary { .. }
            | Op::Convert { .. }
    )
}
