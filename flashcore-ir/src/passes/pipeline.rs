//! The pipeline pass: gives every tile staged in a `pipeline(..)` loop a ring of
//! `Config::stages` shared-memory slots and makes the cp.async protocol explicit.
//!
//! With S stages and T staged tiles per iteration:
//! - S = 1: each iteration copies its tiles (one cp.async group per tile), waits for each at its
//!   first use (`wait_group n`, n = groups committed after it, so a later tile's copy overlaps
//!   the work on an earlier one), and ends with a barrier before the slots are refilled.
//! - S ≥ 2: the prologue copies the tiles of iterations 0..S-2. Each iteration waits for its
//!   first tile (n = T·(S-1) - 1), passes a barrier (now every warp is done with iteration
//!   kt-1, whose slots are free), then copies the tiles of iteration kt+S-1 into those slots.
//!   Past the end of the loop the copies are skipped but the groups still committed, so every
//!   iteration sees the same wait counts. The epilogue waits for everything.
//!
//! The pass checks its own bookkeeping: the groups in flight at the end of an iteration must be
//! those at its start, shifted by one iteration.

use std::collections::{HashMap, VecDeque};

use crate::error::{IrError, LowerError, VerifyError};
use crate::kernel::*;
use crate::source::SpanId;

/// The barrier id the uniform (all roles on all warps) schedule synchronizes on.
pub const CTA_BARRIER: u32 = 0;

pub fn run(mut kernel: Kernel) -> Result<Kernel, IrError> {
    let stages = kernel.config.stages;
    let mut body = std::mem::take(&mut kernel.body);
    for inst in &mut body.insts {
        if let Op::Tiles { body: tiles_body, .. } = &mut inst.op {
            for inner in &mut tiles_body.insts {
                match &mut inner.op {
                    Op::Pipeline { .. } => pipeline_loop(&mut kernel, inner, stages)?,
                    // A range loop's K/V loop runs once per iteration: prologue to epilogue.
                    Op::Loop { body, .. } => {
                        for nested in &mut body.insts {
                            if let Op::Pipeline { .. } = nested.op {
                                pipeline_loop(&mut kernel, nested, stages)?;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    kernel.body = body;
    Ok(kernel)
}

/// A staged tile of the loop: its value, the tile it copies, its ring buffer.
struct Staged {
    value: Value,
    src: TileAccess,
    buffer: BufferId,
    /// The role annotation of the `stage` statement; its copies keep it.
    role: Option<crate::source::Role>,
}

fn inst(op: Op, role: Option<crate::source::Role>, span: SpanId) -> Inst {
    Inst { op, role, span }
}

fn pipeline_loop(kernel: &mut Kernel, loop_inst: &mut Inst, stages: u32) -> Result<(), IrError> {
    let Op::Pipeline { stages: loop_stages, prologue, body, epilogue, .. } = &mut loop_inst.op else {
        unreachable!("called on pipeline loops")
    };
    if *loop_stages != 0 {
        return Ok(());
    }
    // One ring buffer per staged tile.
    let mut staged: Vec<Staged> = vec![];
    for i in &body.insts {
        if let (Op::Stage { dst, src }, role) = (&i.op, i.role) {
            let rows = match kernel.ty(src.coords[2]) {
                Type::Index { tile: Some(t), .. } => t,
                _ => return Err(VerifyError("staged tile without a tile index".into()).into()),
            };
            kernel.buffers.push(Buffer {
                name: kernel.values[dst.index()].name.clone(),
                rows,
                slots: stages,
            });
            staged.push(Staged {
                value: *dst,
                src: src.clone(),
                buffer: BufferId(kernel.buffers.len() as u32 - 1),
                role,
            });
        }
    }
    let body_spans: HashMap<Value, SpanId> =
        body.insts.iter().filter_map(|i| i.op.def().map(|d| (d, i.span))).collect();
    let index_of: HashMap<Value, usize> = staged.iter().enumerate().map(|(i, s)| (s.value, i)).collect();
    let copy = |t: &Staged, ahead: u32, span| {
        let role = t.role;
        [
            inst(
                Op::AsyncCopy { buffer: t.buffer, src: t.src.clone(), ahead, slot: t.src.coords[2] },
                role,
                span,
            ),
            inst(Op::CommitGroup, role, span),
        ]
    };

    // Groups in flight, as (staged tile, iterations ahead of the current one), oldest first.
    let mut in_flight: VecDeque<(usize, u32)> = VecDeque::new();
    let mut new_prologue = vec![];
    if stages >= 2 {
        for ahead in 0..stages - 1 {
            for (t, s) in staged.iter().enumerate() {
                new_prologue.extend(copy(s, ahead, SpanId::NONE));
                in_flight.push_back((t, ahead));
            }
        }
    }
    let at_start = in_flight.clone();

    // Values that read a staged tile (the tile itself and its `.t()` views).
    let mut reads_tile: HashMap<Value, usize> = index_of.clone();
    let mut waited = vec![false; staged.len()];
    let mut prefetched = false;
    let mut new_body = vec![];
    for old in std::mem::take(&mut body.insts) {
        match &old.op {
            Op::Stage { dst, src } => {
                let t = index_of[dst];
                if stages == 1 {
                    new_body.extend(copy(&staged[t], 0, old.span));
                    in_flight.push_back((t, 0));
                }
                new_body.push(inst(
                    Op::StageView {
                        dst: *dst,
                        buffer: staged[t].buffer,
                        src: src.clone(),
                        slot: src.coords[2],
                        zero_unless: None,
                    },
                    old.role,
                    old.span,
                ));
                continue;
            }
            Op::Transpose { dst, src } if reads_tile.contains_key(src) => {
                reads_tile.insert(*dst, reads_tile[src]);
                new_body.push(old);
                continue;
            }
            _ => {}
        }
        for used in old.op.uses() {
            let Some(&t) = reads_tile.get(&used) else { continue };
            if waited[t] {
                continue;
            }
            let pos = in_flight
                .iter()
                .position(|g| *g == (t, 0))
                .ok_or_else(|| VerifyError(format!("staged tile {t} is read but never copied")))?;
            let younger = (in_flight.len() - pos - 1) as u32;
            new_body.push(inst(Op::WaitGroup { younger }, old.role, old.span));
            new_body.push(inst(Op::Barrier { id: CTA_BARRIER }, old.role, old.span));
            for (done, _) in in_flight.drain(..=pos) {
                waited[done] = true;
            }
            if stages >= 2 && !prefetched {
                // Every warp has passed the barrier, so iteration kt-1's slots are free.
                for (t2, s) in staged.iter().enumerate() {
                    new_body.extend(copy(s, stages - 1, old.span));
                    in_flight.push_back((t2, stages - 1));
                }
                prefetched = true;
            }
        }
        new_body.push(old);
    }
    if let Some(t) = waited.iter().position(|w| !w) {
        let stage = &staged[t];
        let span = body_spans.get(&stage.value).copied().unwrap_or(SpanId::NONE);
        return Err(LowerError::new(
            span,
            format!(
                "stage `{name}` is filled every iteration but never read: role `{role}` would commit copies into ring @{name} that no role waits for (the seed kernel's hang); read it or remove it",
                name = kernel.values[stage.value.index()].name,
                role = stage.role.map_or("load", |r| r.name()),
            ),
        )
        .into());
    }
    if stages == 1 {
        new_body.push(inst(Op::Barrier { id: CTA_BARRIER }, None, SpanId::NONE));
    }
    let at_end: VecDeque<(usize, u32)> =
        in_flight.iter().map(|(t, a)| (*t, a.checked_sub(1).unwrap_or(u32::MAX))).collect();
    if at_end != at_start {
        return Err(VerifyError(format!(
            "pipeline bookkeeping: groups in flight at the end of an iteration {at_end:?} differ from those at its start {at_start:?}"
        ))
        .into());
    }
    body.insts = new_body;
    prologue.insts = new_prologue;
    // Drain the (empty) groups still in flight and let every warp finish with the slots before
    // the next work item's prologue refills them.
    epilogue.insts = vec![inst(Op::WaitGroup { younger: 0 }, None, SpanId::NONE)];
    if stages >= 2 {
        epilogue.insts.push(inst(Op::Barrier { id: CTA_BARRIER }, None, SpanId::NONE));
    }
    *loop_stages = stages;
    Ok(())
}
