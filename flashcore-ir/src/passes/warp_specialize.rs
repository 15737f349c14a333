//! The warp-specialize pass: with `Config::load_warps > 0`, the `load` statements (the staged
//! K/V copies) move to their own warps, which run ahead of the compute warps by up to
//! `stages` iterations. Both sides walk the same sequence of (work item, KV tile) iterations,
//! counted across work items, and hand ring slots to each other through two mbarrier rings:
//!
//! - `full[s]` expects one arrival per producer thread per phase; each producer thread arrives
//!   with `cp.async.mbarrier.arrive.noinc` after issuing its copies of the slot, so the phase
//!   completes when the data has landed. Consumers wait for phase parity `(it / S) & 1`.
//! - `empty[s]` expects one arrival per consumer thread; consumers arrive after their last read
//!   of the slot. Producers wait for parity `((it / S) & 1) ^ 1`, which a fresh mbarrier
//!   reports as complete, so the first round of slots needs no arrival (ThunderKittens' trick).
//!
//! No CTA-wide barrier runs after the split: the Q/O row region is per warp, and the rings are
//! handed over only through the mbarriers. Softmax stays fused into the compute warps, which
//! own the rows (FlashAttention-2's layout).

use std::collections::HashMap;

use crate::error::{IrError, LowerError};
use crate::kernel::*;
use crate::source::{Role, SpanId};

pub fn run(mut kernel: Kernel) -> Result<Kernel, IrError> {
    let cfg = kernel.config;
    if cfg.load_warps == 0 {
        return Ok(kernel);
    }
    let body = std::mem::take(&mut kernel.body);
    let work_at = super::work_loop(&body, "warp specialization")?;
    let tiles_inst = &body.insts[work_at];
    let Op::Tiles { vars, extents, schedule, body: tiles_body } = &tiles_inst.op else {
        return Err(
            LowerError::new(tiles_inst.span, "warp specialization needs a `tiles(..)` work loop").into()
        );
    };
    // Only staged copies may run on load warps.
    let mut misplaced = None;
    kernel.walk_block(tiles_body, &mut |i| {
        if i.role == Some(Role::Load)
            && !matches!(i.op, Op::StageView { .. } | Op::AsyncCopy { .. } | Op::CommitGroup)
        {
            misplaced.get_or_insert(i.span);
        }
    });
    if let Some(span) = misplaced {
        return Err(LowerError::new(
            span,
            "only `stage(..)` can run on `load` warps: load warps copy tiles, compute warps own the rows",
        )
        .into());
    }
    let stages = cfg.stages;
    kernel.mbarriers.push(MbarRing {
        name: "full".into(),
        slots: stages,
        count: cfg.load_warps * 32,
        tx: false,
    });
    kernel.mbarriers.push(MbarRing { name: "empty".into(), slots: stages, count: cfg.warps * 32, tx: false });
    let (full, empty) = (MbarRingId(0), MbarRingId(1));

    let consumer_it = new_value(&mut kernel, Type::Counter, "it");
    let producer_it = new_value(&mut kernel, Type::Counter, "it_load");

    // Consumers: the work loop without the copies; a wait on `full` before the first read of
    // the ring, an arrival on `empty` after the last.
    let consumer_body = consumer_block(tiles_body, consumer_it, full, empty)?;

    // Producers: the same work loop (fresh loop variables), with only the copies.
    let mut rename: HashMap<Value, Value> = HashMap::new();
    let producer_vars: Vec<Value> =
        vars.iter().map(|v| producer_value(&mut kernel, *v, &mut rename)).collect();
    let mut needed: std::collections::HashSet<Value> = std::collections::HashSet::new();
    kernel.walk_block(tiles_body, &mut |i| {
        if let Op::StageView { src, .. } = &i.op {
            needed.extend(src.coords.iter().copied());
        }
    });
    let rings = Rings { full, empty, it: producer_it };
    let producer_tiles_body = producer_block(&mut kernel, tiles_body, &mut needed, &mut rename, rings);

    let at = |op| Inst { op, role: None, span: tiles_inst.span };
    let tiles = |vars: Vec<Value>, body: Block| {
        at(Op::Tiles { vars, extents: extents.clone(), schedule: *schedule, body })
    };
    let mut groups = vec![];
    if cfg.softmax_warps > 0 {
        let split = super::softmax_split::split(&mut kernel, vars, &consumer_body)?;
        let mut compute = vec![at(Op::CounterInit { dst: consumer_it })];
        compute.extend(split.compute_counters.iter().map(|c| at(Op::CounterInit { dst: *c })));
        compute.push(tiles(vars.clone(), split.compute_body));
        groups.push(RoleGroup {
            roles: vec![Role::Compute],
            first_warp: 0,
            warps: cfg.warps,
            body: Block { insts: compute },
        });
        let mut softmax: Vec<Inst> =
            split.softmax_counters.iter().map(|c| at(Op::CounterInit { dst: *c })).collect();
        softmax.push(tiles(split.softmax_vars, split.softmax_body));
        groups.push(RoleGroup {
            roles: vec![Role::Softmax],
            first_warp: cfg.warps,
            warps: cfg.softmax_warps,
            body: Block { insts: softmax },
        });
    } else {
        groups.push(RoleGroup {
            roles: vec![Role::Compute, Role::Softmax],
            first_warp: 0,
            warps: cfg.warps,
            body: Block {
                insts: vec![at(Op::CounterInit { dst: consumer_it }), tiles(vars.clone(), consumer_body)],
            },
        });
    }
    groups.push(RoleGroup {
        roles: vec![Role::Load],
        first_warp: cfg.warps + cfg.softmax_warps,
        warps: cfg.load_warps,
        body: Block {
            insts: vec![
                at(Op::CounterInit { dst: producer_it }),
                tiles(producer_vars, producer_tiles_body),
                // Nothing may be in flight when the producer warps exit: close the group of
                // the copies issued since the last commit, then wait for every group.
                at(Op::CommitGroup),
                at(Op::WaitGroup { younger: 0 }),
            ],
        },
    });
    // What stands around the work loop stays around the role groups, run by every warp.
    let mut insts = body.insts[..work_at].to_vec();
    insts.extend([at(Op::InitBarriers), at(Op::Roles { groups })]);
    insts.extend(body.insts[work_at + 1..].iter().cloned());
    kernel.body = Block { insts };
    Ok(kernel)
}

/// The consumer's copy of a work-loop body (or of a range loop's body in it): each K/V loop
/// without its copies ([`consumer_iteration`]), the rest as it is.
fn consumer_block(block: &Block, it: Value, full: MbarRingId, empty: MbarRingId) -> Result<Block, IrError> {
    let mut out = Block::default();
    for inst in &block.insts {
        let op = match &inst.op {
            Op::Pipeline { var, extent, stages, body, .. } => Op::Pipeline {
                var: *var,
                extent: *extent,
                stages: *stages,
                prologue: Block::default(),
                body: consumer_iteration(body, it, full, empty)?,
                epilogue: Block::default(),
            },
            Op::Loop { var, from, to, body } => {
                Op::Loop { var: *var, from: *from, to: *to, body: consumer_block(body, it, full, empty)? }
            }
            other => other.clone(),
        };
        out.insts.push(Inst { op, role: inst.role, span: inst.span });
    }
    Ok(out)
}

/// Which instructions of `block` the producer keeps, walking back from the copies: the K/V
/// loops, the range loops that hold one, and each instruction that defines a `needed` value,
/// whose operands are then needed in turn (inner blocks first, so that what a range loop's
/// body needs from around it is kept too).
fn producer_slice(block: &Block, needed: &mut std::collections::HashSet<Value>) -> Vec<bool> {
    let mut keep = vec![false; block.insts.len()];
    for (i, inst) in block.insts.iter().enumerate().rev() {
        keep[i] = match &inst.op {
            Op::Pipeline { .. } => true,
            Op::Loop { body, .. } => {
                let inner = producer_slice(body, needed);
                body.insts.iter().zip(inner).any(|(i, k)| k && matches!(i.op, Op::Pipeline { .. }))
            }
            op if op.def().is_some_and(|d| needed.contains(&d)) => {
                needed.extend(op.uses());
                true
            }
            _ => false,
        };
    }
    keep
}

/// The producer's rings and its iteration counter.
#[derive(Clone, Copy)]
struct Rings {
    full: MbarRingId,
    empty: MbarRingId,
    it: Value,
}

/// The producer's copy of a work-loop body (or of a range loop's body in it): each K/V loop
/// with only its copies (fresh loop variables, `rename`d), the range loops around them, and
/// the arithmetic that computes the copied tiles' indices (`needed`: the values those indices
/// read), which the producer evaluates itself.
fn producer_block(
    kernel: &mut Kernel,
    block: &Block,
    needed: &mut std::collections::HashSet<Value>,
    rename: &mut HashMap<Value, Value>,
    rings: Rings,
) -> Block {
    let keep = producer_slice(block, needed);
    let mut out = Block::default();
    for (inst, _) in block.insts.iter().zip(&keep).filter(|(_, k)| **k) {
        let op = match &inst.op {
            Op::Pipeline { var, extent, stages, body, .. } => {
                let kt = producer_value(kernel, *var, rename);
                let mut copies = vec![Inst {
                    op: Op::MbarWait { ring: rings.empty, iter: rings.it, flip: true },
                    role: Some(Role::Load),
                    span: inst.span,
                }];
                for i in &body.insts {
                    if let Op::StageView { buffer, src, .. } = &i.op {
                        let src = src.map_values(&|c| rename.get(&c).copied().unwrap_or(c));
                        copies.push(Inst {
                            op: Op::AsyncCopy { buffer: *buffer, src, ahead: 0, slot: rings.it },
                            role: Some(Role::Load),
                            span: i.span,
                        });
                    }
                }
                copies.push(Inst {
                    op: Op::MbarArriveAsync { ring: rings.full, iter: rings.it },
                    role: Some(Role::Load),
                    span: inst.span,
                });
                copies.push(Inst {
                    op: Op::CounterNext { dst: rings.it },
                    role: Some(Role::Load),
                    span: inst.span,
                });
                Op::Pipeline {
                    var: kt,
                    extent: extent.map_values(&|v| rename.get(&v).copied().unwrap_or(v)),
                    stages: *stages,
                    prologue: Block::default(),
                    body: Block { insts: copies },
                    epilogue: Block::default(),
                }
            }
            Op::Loop { var, from, to, body } => {
                let var = producer_value(kernel, *var, rename);
                let body = producer_block(kernel, body, needed, rename, rings);
                Op::Loop { var, from: *from, to: *to, body }
            }
            // Index arithmetic, evaluated by the producer too (registers are per thread), into
            // values of its own: each value is defined once, in one role group.
            other => {
                let mut op = super::softmax_split::rename_uses(other.clone(), rename);
                if let Some(dst) = op.def_mut() {
                    *dst = producer_value(kernel, *dst, rename);
                }
                op
            }
        };
        out.insts.push(Inst { op, role: Some(Role::Load), span: inst.span });
    }
    out
}

/// The producer's own copy of the consumer's value `v` (`name_load`), recorded in `rename` so
/// that the producer's later uses read it.
fn producer_value(kernel: &mut Kernel, v: Value, rename: &mut HashMap<Value, Value>) -> Value {
    let d = kernel.value(v).clone();
    let copy = new_value(kernel, d.ty, &format!("{}_load", d.name));
    rename.insert(v, copy);
    copy
}

fn new_value(kernel: &mut Kernel, ty: Type, name: &str) -> Value {
    kernel.values.push(ValueData { ty, name: name.to_string(), mutable: ty == Type::Counter });
    Value(kernel.values.len() as u32 - 1)
}

/// One consumer iteration: the pipelined body without copies and group waits, the ring slot
/// picked by the counter, `full` waited for before the first read, `empty` arrived on after
/// the last read.
fn consumer_iteration(
    body: &Block,
    it: Value,
    full: MbarRingId,
    empty: MbarRingId,
) -> Result<Block, IrError> {
    // Values that read the ring: the views and their transposes.
    let mut reads_ring: Vec<Value> = vec![];
    let mut kept: Vec<Inst> = vec![];
    for inst in &body.insts {
        match &inst.op {
            Op::AsyncCopy { .. } | Op::CommitGroup | Op::WaitGroup { .. } | Op::Barrier { .. } => continue,
            Op::StageView { dst, buffer, src, .. } => {
                reads_ring.push(*dst);
                kept.push(Inst {
                    op: Op::StageView {
                        dst: *dst,
                        buffer: *buffer,
                        src: src.clone(),
                        slot: it,
                        zero_unless: None,
                    },
                    role: Some(Role::Compute),
                    span: inst.span,
                });
                continue;
            }
            Op::Transpose { dst, src } if reads_ring.contains(src) => reads_ring.push(*dst),
            _ => {}
        }
        kept.push(inst.clone());
    }
    let reads = |i: &Inst| {
        i.op.uses().iter().any(|u| reads_ring.contains(u)) && !matches!(i.op, Op::Transpose { .. })
    };
    let (Some(first), Some(last)) = (kept.iter().position(reads), kept.iter().rposition(reads)) else {
        let span = body.insts.first().map_or(SpanId::NONE, |i| i.span);
        return Err(LowerError::new(span, "the pipeline loop stages tiles that no statement reads").into());
    };
    let span = kept[first].span;
    let mut out = Vec::with_capacity(kept.len() + 3);
    for (i, inst) in kept.into_iter().enumerate() {
        if i == first {
            out.push(Inst {
                op: Op::MbarWait { ring: full, iter: it, flip: false },
                role: Some(Role::Compute),
                span,
            });
        }
        let role = inst.role;
        let span = inst.span;
        out.push(inst);
        if i == last {
            out.push(Inst { op: Op::MbarArrive { ring: empty, iter: it }, role, span });
        }
    }
    out.push(Inst { op: Op::CounterNext { dst: it }, role: Some(Role::Compute), span: SpanId::NONE });
    Ok(Block { insts: out })
}
