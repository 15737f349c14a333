//! Softmax on its own warps (part of the warp-specialize pass, `Config::softmax_warps > 0`):
//! the compute warps' work loop is split into a compute side and a softmax side. Softmax warp
//! `w` mirrors compute warp `w`: it holds the same rows in the same mma fragment layout, so a
//! value crosses sides by each thread writing its registers to shared memory and the thread of
//! the same lane in the partner warp reading them back (a *channel*, guarded by `full`/`empty`
//! mbarriers of one slot).
//!
//! Placement: a statement runs where its role says (`softmax` on the softmax side, the rest on
//! the compute side), except that a loop-carried variable lives on the side that assigns it (on
//! the compute side if both do), and a statement that reads the O accumulator (a `[TILE_M, D]`
//! tile) runs on the compute side: the big tile never moves, the scores, the probabilities and
//! the row statistics do. A conversion to f16 runs where its source lives, so P crosses as f16.
//! A statement left on the softmax side that runs an `mma` or reads a staged tile is an error at
//! its span: the softmax warps hold neither the stages nor the tensor-core work.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::{IrError, LowerError};
use crate::kernel::*;
use crate::source::{Role, SpanId};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Compute,
    Softmax,
}

/// The two work-loop bodies (compute side, softmax side), the softmax side's loop variables, and
/// the counters each side must zero at its start.
pub struct Split {
    pub compute_body: Block,
    pub softmax_body: Block,
    pub softmax_vars: Vec<Value>,
    pub compute_counters: Vec<Value>,
    pub softmax_counters: Vec<Value>,
}

fn new_value(kernel: &mut Kernel, ty: Type, name: &str, mutable: bool) -> Value {
    kernel.values.push(ValueData { ty, name: name.to_string(), mutable });
    Value(kernel.values.len() as u32 - 1)
}

fn inst(op: Op, role: Option<Role>, span: SpanId) -> Inst {
    Inst { op, role, span }
}

/// Splits the compute warps' work-loop body `body` (loop variables `vars`).
pub fn split(kernel: &mut Kernel, vars: &[Value], body: &Block) -> Result<Split, IrError> {
    let pipeline_at = body
        .insts
        .iter()
        .position(|i| matches!(i.op, Op::Pipeline { .. }))
        .ok_or_else(|| {
            LowerError::new(
                SpanId::NONE,
                "softmax warps need a `pipeline(..)` loop directly in the work loop (not inside a range loop)",
            )
        })?;
    let Op::Pipeline { var: kt, extent, stages, body: loop_body, .. } = &body.insts[pipeline_at].op else {
        unreachable!("found above")
    };

    // Owners of loop-carried variables: the side that assigns them (compute if both do).
    let mut assigned_by: HashMap<Value, HashSet<bool>> = HashMap::new();
    for i in &loop_body.insts {
        if let Op::Assign { dst, .. } = i.op {
            assigned_by.entry(dst).or_default().insert(i.role == Some(Role::Softmax));
        }
    }
    let var_side = |v: Value| match assigned_by.get(&v) {
        Some(s) if s.len() == 1 && s.contains(&true) => Side::Softmax,
        _ => Side::Compute,
    };
    let is_accumulator =
        |k: &Kernel, v: Value| matches!(k.ty(v), Type::Frag { cols: TileDim::Head, elem: Elem::F32, .. });

    // Sides of the loop body's statements, then of their values.
    let side_of =
        |v: Value, owner: &HashMap<Value, Side>| owner.get(&v).copied().unwrap_or_else(|| var_side(v));
    let mut owner: HashMap<Value, Side> = vars.iter().map(|v| (*v, Side::Compute)).collect();
    let mut sides: Vec<Side> = vec![];
    for i in &loop_body.insts {
        let mut side = match &i.op {
            // A variable declared inside the loop lives where its declaration runs; one carried
            // across iterations, on the side that assigns it.
            Op::Assign { dst, .. } => side_of(*dst, &owner),
            // A conversion runs where its source lives: P crosses as f16, half the bytes.
            Op::ToHalf { src, .. } => owner.get(src).copied().unwrap_or(Side::Compute),
            // The stage ring's views, waits, releases and counter are the compute warps', even
            // when the pipeline pass gave a release the role of the statement it follows.
            Op::StageView { .. } | Op::MbarWait { .. } | Op::MbarArrive { .. } | Op::CounterNext { .. } => {
                Side::Compute
            }
            _ if i.role == Some(Role::Softmax) => Side::Softmax,
            _ => Side::Compute,
        };
        if side == Side::Softmax
            && i.op.uses().iter().any(|u| is_accumulator(kernel, *u) && side_of(*u, &owner) == Side::Compute)
        {
            side = Side::Compute;
        }
        // An assignment runs where its variable lives; one that must move (it reads the O
        // accumulator, which stays on the compute warps) would split the variable in two.
        if let Op::Assign { dst, .. } = &i.op {
            let lives = side_of(*dst, &owner);
            if side != lives {
                return Err(LowerError::new(
                    i.span,
                    format!(
                        "`{}` lives on the {} warps, but this assignment reads the O accumulator, which stays on the compute warps: declare `{0}` outside `#[role(softmax)]`",
                        kernel.value(*dst).name,
                        if lives == Side::Softmax { "softmax" } else { "compute" },
                    ),
                )
                .into());
            }
        }
        if let Some(d) = i.op.def() {
            owner.insert(d, side);
        }
        // The softmax warps hold row statistics, scores and probabilities in registers; the
        // staged K/V tiles and the tensor-core work are the compute warps'.
        if side == Side::Softmax {
            let reads_stage = i.op.uses().iter().any(|u| matches!(kernel.ty(*u), Type::Smem { .. }));
            if matches!(i.op, Op::ColReduce { .. }) {
                return Err(LowerError::new(
                    i.span,
                    "a column reduction combines the rows of every compute warp through shared memory, so it runs on the compute warps: give it `#[role(compute)]`",
                )
                .into());
            }
            if reads_stage || matches!(i.op, Op::Mma { .. }) {
                return Err(LowerError::new(
                    i.span,
                    format!(
                        "this statement runs on the softmax warps (`#[role(softmax)]` with softmax_warps = {}), which neither read staged tiles nor run `mma`: give it `#[role(compute)]`",
                        kernel.config.softmax_warps
                    ),
                )
                .into());
            }
        }
        sides.push(side);
    }
    if !sides.contains(&Side::Softmax) {
        return Err(LowerError::new(
            body.insts[pipeline_at].span,
            format!(
                "softmax_warps = {} but no statement of this loop runs on them: give the softmax (row max, exp2, row sum) `#[role(softmax)]`",
                kernel.config.softmax_warps
            ),
        )
        .into());
    }

    // Renamed loop variables for the softmax side.
    let mut rename: HashMap<Value, Value> = HashMap::new();
    let mut softmax_vars = vec![];
    for v in vars.iter().chain(std::iter::once(kt)) {
        let d = kernel.value(*v).clone();
        let n = new_value(kernel, d.ty, &format!("{}_softmax", d.name), false);
        rename.insert(*v, n);
        if v != kt {
            softmax_vars.push(n);
        }
    }
    let kt_softmax = rename[kt];

    let mut channels: BTreeMap<Value, ChanSetup> = BTreeMap::new();
    let mut compute_counters = vec![];
    let mut softmax_counters = vec![];
    let (compute_threads, softmax_threads) = (kernel.config.warps * 32, kernel.config.softmax_warps * 32);
    let mut chan_for = |kernel: &mut Kernel, v: Value, from: Side| -> ChanSetup {
        if let Some(c) = channels.get(&v) {
            return *c;
        }
        let name = kernel.value(v).name.clone();
        let (senders, receivers) = match from {
            Side::Compute => (compute_threads, softmax_threads),
            Side::Softmax => (softmax_threads, compute_threads),
        };
        let ring = |kernel: &mut Kernel, suffix: &str, count: u32| {
            kernel.mbarriers.push(MbarRing { name: format!("{name}_{suffix}"), slots: 1, count, tx: false });
            MbarRingId(kernel.mbarriers.len() as u32 - 1)
        };
        let full = ring(kernel, "full", senders);
        let empty = ring(kernel, "empty", receivers);
        kernel.channels.push(Channel { name: name.clone(), ty: kernel.ty(v), full, empty });
        let send_count = new_value(kernel, Type::Counter, &format!("{name}_sent"), true);
        let recv_count = new_value(kernel, Type::Counter, &format!("{name}_received"), true);
        let (c_count, s_count) =
            if from == Side::Compute { (send_count, recv_count) } else { (recv_count, send_count) };
        compute_counters.push(c_count);
        softmax_counters.push(s_count);
        let setup =
            ChanSetup { chan: ChanId(kernel.channels.len() as u32 - 1), full, empty, send_count, recv_count };
        channels.insert(v, setup);
        setup
    };

    // Walk the loop body once, emitting each side's statements and the channel traffic.
    let mut compute_loop: Vec<Inst> = vec![];
    let mut softmax_loop: Vec<Inst> = vec![];
    // Received copies of crossing values in this iteration, per side.
    let mut received: HashMap<(Value, bool), Value> = HashMap::new();
    for (idx, i) in loop_body.insts.iter().enumerate() {
        let side = sides[idx];
        let mut op = i.op.clone();
        // Operands owned by the other side arrive through a channel, once per iteration.
        for u in i.op.uses() {
            let from = side_of(u, &owner);
            if from == side || vars.contains(&u) || u == *kt || kernel.ty(u) == Type::Counter {
                continue;
            }
            let key = (u, side == Side::Softmax);
            let local = match received.get(&key) {
                Some(l) => *l,
                None => {
                    let c = chan_for(kernel, u, from);
                    let ty = kernel.ty(u);
                    let name = format!("{}_in", kernel.value(u).name);
                    let local = new_value(kernel, ty, &name, false);
                    let (receiver, role) = match side {
                        Side::Compute => (&mut compute_loop, Some(Role::Compute)),
                        Side::Softmax => (&mut softmax_loop, Some(Role::Softmax)),
                    };
                    receiver.extend(c.receive(local, role, i.span));
                    received.insert(key, local);
                    local
                }
            };
            op = replace_use(op, u, local);
        }
        if side == Side::Softmax {
            op = rename_loop_vars(op, &rename);
        }
        let role = i.role;
        let def = op.def();
        let assigned = if let Op::Assign { dst, .. } = op { Some(dst) } else { None };
        match side {
            Side::Compute => compute_loop.push(inst(op, role, i.span)),
            Side::Softmax => softmax_loop.push(inst(op, role, i.span)),
        }
        // Values used on the other side leave through a channel right after their definition.
        for v in def.into_iter().chain(assigned) {
            let used_elsewhere = loop_body
                .insts
                .iter()
                .enumerate()
                .skip(idx + 1)
                .any(|(j, other)| sides[j] != side && other.op.uses().contains(&v));
            if used_elsewhere {
                let c = chan_for(kernel, v, side);
                let out = match side {
                    Side::Compute => &mut compute_loop,
                    Side::Softmax => &mut softmax_loop,
                };
                out.extend(c.send(v, role, i.span));
            }
        }
    }

    // Outside the loop: fills go to the side that owns their variable; the rest is compute's,
    // and reads of softmax-owned variables after the loop arrive through a channel.
    let mut compute_body = vec![];
    let mut softmax_body = vec![];
    for (idx, i) in body.insts.iter().enumerate() {
        if idx == pipeline_at {
            let pipeline = |body: Vec<Inst>, var: Value, role, extent: LoopExtent| {
                inst(
                    Op::Pipeline {
                        var,
                        extent,
                        stages: *stages,
                        prologue: Block::default(),
                        body: Block { insts: body },
                        epilogue: Block::default(),
                    },
                    role,
                    body_span(&loop_body.insts),
                )
            };
            compute_body.push(pipeline(std::mem::take(&mut compute_loop), *kt, None, *extent));
            let mut softmax_iteration = std::mem::take(&mut softmax_loop);
            if kernel.config.softmax_warps < kernel.config.warps {
                softmax_iteration = waits_first_arrivals_last(softmax_iteration);
            }
            let softmax_extent = extent.map_values(&|v| rename.get(&v).copied().unwrap_or(v));
            softmax_body.push(pipeline(softmax_iteration, kt_softmax, Some(Role::Softmax), softmax_extent));
            continue;
        }
        match &i.op {
            Op::Fill { dst, .. } if var_side(*dst) == Side::Softmax => softmax_body.push(i.clone()),
            op => {
                let mut op = op.clone();
                for u in i.op.uses() {
                    if side_of(u, &owner) == Side::Softmax && idx > pipeline_at {
                        let c = chan_for(kernel, u, Side::Softmax);
                        let name = format!("{}_in", kernel.value(u).name);
                        let local = new_value(kernel, kernel.ty(u), &name, false);
                        softmax_body.extend(c.send(u, Some(Role::Softmax), i.span));
                        compute_body.extend(c.receive(local, Some(Role::Compute), i.span));
                        op = replace_use(op, u, local);
                    }
                }
                compute_body.push(inst(op, i.role, i.span));
            }
        }
    }
    Ok(Split {
        compute_body: Block { insts: compute_body },
        softmax_body: Block { insts: softmax_body },
        softmax_vars,
        compute_counters,
        softmax_counters,
    })
}

/// Streaming softmax warps process their rows one after another, so the whole iteration must be
/// one run of row-local statements: every wait first, every arrival (and counter step) last. The
/// protocol check then verifies this order like any other.
fn waits_first_arrivals_last(insts: Vec<Inst>) -> Vec<Inst> {
    let (mut waits, mut work, mut arrivals) = (vec![], vec![], vec![]);
    for i in insts {
        match i.op {
            Op::MbarWait { .. } => waits.push(i),
            Op::MbarArrive { .. } | Op::CounterNext { .. } => arrivals.push(i),
            _ => work.push(i),
        }
    }
    waits.into_iter().chain(work).chain(arrivals).collect()
}

fn body_span(insts: &[Inst]) -> SpanId {
    insts.first().map_or(SpanId::NONE, |i| i.span)
}

#[derive(Clone, Copy)]
struct ChanSetup {
    chan: ChanId,
    full: MbarRingId,
    empty: MbarRingId,
    send_count: Value,
    recv_count: Value,
}

impl ChanSetup {
    /// Wait until the receiver has read the previous value, write, announce.
    fn send(&self, v: Value, role: Option<Role>, span: SpanId) -> Vec<Inst> {
        let n = self.send_count;
        vec![
            inst(Op::MbarWait { ring: self.empty, iter: n, flip: true }, role, span),
            inst(Op::ChanWrite { src: v, chan: self.chan, iter: n }, role, span),
            inst(Op::MbarArrive { ring: self.full, iter: n }, role, span),
            inst(Op::CounterNext { dst: n }, role, span),
        ]
    }

    /// Wait for the value, read it into `dst`, release the channel.
    fn receive(&self, dst: Value, role: Option<Role>, span: SpanId) -> Vec<Inst> {
        let n = self.recv_count;
        vec![
            inst(Op::MbarWait { ring: self.full, iter: n, flip: false }, role, span),
            inst(Op::ChanRead { dst, chan: self.chan, iter: n }, role, span),
            inst(Op::MbarArrive { ring: self.empty, iter: n }, role, span),
            inst(Op::CounterNext { dst: n }, role, span),
        ]
    }
}

fn map_values(op: Op, f: &dyn Fn(Value) -> Value) -> Op {
    let access = |a: TileAccess| a.map_values(f);
    match op {
        Op::Transpose { dst, src } => Op::Transpose { dst, src: f(src) },
        Op::Mma { dst, a, b, acc } => Op::Mma { dst, a: f(a), b: f(b), acc: acc.map(f) },
        // An accumulating `dst` is its own operand and definition: kept.
        Op::MmaAsync { dst, a, b, accumulate } => Op::MmaAsync { dst, a: f(a), b: f(b), accumulate },
        Op::Exp2 { dst, src } => Op::Exp2 { dst, src: f(src) },
        Op::Exp2Scaled { dst, src, scale, sub } => {
            Op::Exp2Scaled { dst, src: f(src), scale: f(scale), sub: f(sub) }
        }
        Op::LogSumExp { dst, max, sum } => Op::LogSumExp { dst, max: f(max), sum: f(sum) },
        Op::MaskColumns { dst, src, tile, causal, fill } => Op::MaskColumns {
            dst,
            src: f(src),
            tile: access(tile),
            causal: causal.map(|c| c.map_values(f)),
            fill,
        },
        Op::ToHalf { dst, src } => Op::ToHalf { dst, src: f(src) },
        Op::Reduce { dst, op, src } => Op::Reduce { dst, op, src: f(src) },
        Op::ColReduce { dst, op, src } => Op::ColReduce { dst, op, src: f(src) },
        Op::Binary { dst, op, lhs, rhs } => Op::Binary { dst, op, lhs: f(lhs), rhs: f(rhs) },
        Op::Unary { dst, op, src } => Op::Unary { dst, op, src: f(src) },
        Op::Convert { dst, src } => Op::Convert { dst, src: f(src) },
        Op::Select { dst, cond, then, otherwise } => {
            Op::Select { dst, cond: f(cond), then: f(then), otherwise: f(otherwise) }
        }
        Op::Position { dst, axis, index } => Op::Position { dst, axis, index: f(index) },
        Op::Gather { dst, param, indices } => {
            Op::Gather { dst, param, indices: indices.into_iter().map(f).collect() }
        }
        Op::MaskWhere { dst, src, keep, mask } => Op::MaskWhere { dst, src: f(src), keep: f(keep), mask },
        Op::Assign { dst, src } => Op::Assign { dst, src: f(src) },
        Op::Store { dst, src, via } => Op::Store { dst: access(dst), src: f(src), via: via.map(f) },
        Op::Scatter { param, indices, src, keep } => Op::Scatter {
            param,
            indices: indices.into_iter().map(f).collect(),
            src: f(src),
            keep: keep.map(f),
        },
        Op::Load { dst, src } => Op::Load { dst, src: access(src) },
        Op::StageView { dst, buffer, src, slot, zero_unless } => {
            Op::StageView { dst, buffer, src: access(src), slot, zero_unless }
        }
        other => other,
    }
}

fn replace_use(op: Op, from: Value, to: Value) -> Op {
    map_values(op, &|v| if v == from { to } else { v })
}

/// `op` with the values that `rename` maps replaced in its operands (its definition kept).
pub(crate) fn rename_uses(op: Op, rename: &HashMap<Value, Value>) -> Op {
    map_values(op, &|v| rename.get(&v).copied().unwrap_or(v))
}

fn rename_loop_vars(op: Op, rename: &HashMap<Value, Value>) -> Op {
    map_values(op, &|v| rename.get(&v).copied().unwrap_or(v))
}
