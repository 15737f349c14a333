//! The feed-loads pass (sm_90a, a TMA producer warpgroup, persistent CTAs): the work item's
//! loaded A operands (Q) come from the producer too, a work item ahead, instead of from the
//! compute warps at the start of each item. A persistent CTA's producer already runs ahead into
//! the next work item's K/V tiles; Q was the one copy left on the compute warps' critical path:
//! at every work item they issued it, waited for it to land (a global-memory latency) and met
//! at a warpgroup barrier before their first matmul. Now, per work item,
//!
//! ```text
//! compute:                                    producer:
//! qf = view @q[itq] (q[b, h, qt])             wait $empty_q[itq] (parity flipped)
//! wait $full_q[itq]                           arrive $full_q[itq] expecting BYTES bytes
//! .. K/V loop, wgmma reading qf ..            tma @q[itq] <- q[b, h, qt] completing $full_q[itq]
//! store o[b, h, qt], out via qf               itq += 1
//! arrive $empty_q[itq]                        .. the K/V loop's copies ..
//! itq += 1
//! ```
//!
//! The ring has two slots, so the producer copies item `i + 1`'s Q while the compute warps
//! work on item `i`. The O tile leaves through the Q slot it replaces (the tensor cores are
//! done with Q when the K/V loop ends; the slot is released after the store has read it back),
//! so the kernel needs no row-tile region: two Q slots take the shared memory of one Q slot and
//! one row tile. Q's rows past the sequence's end come from the tensor map's zero fill, as K's.
//!
//! It applies where the producer's K/V copies are bulk tensor copies ([`super::tma`]), the work
//! loop is persistent, and every `load` of the work item is read only as a matmul's A operand
//! and indexed by the work loop's own variables (elsewhere [`why_not`] says why). One CTA a work
//! item has no next item to run ahead into, so there it changes nothing.

use crate::error::IrError;
use crate::kernel::*;
use crate::source::{Role, SpanId};

/// Slots of the ring the producer feeds: the item being computed, and the next.
pub const SLOTS: u32 = 2;

pub fn run(mut kernel: Kernel) -> Result<Kernel, IrError> {
    if why_not(&kernel).is_some() {
        return Ok(kernel);
    }
    let cfg = kernel.config;
    let half = Elem::half(cfg.dtype);
    let mut body = std::mem::take(&mut kernel.body);
    let Some(roles) = body.insts.iter_mut().find_map(|i| match &mut i.op {
        Op::Roles { groups } => Some(groups),
        _ => None,
    }) else {
        kernel.body = body;
        return Ok(kernel);
    };
    let full = MbarRingId(kernel.mbarriers.len() as u32);
    kernel.mbarriers.push(MbarRing { name: "full_q".into(), slots: SLOTS, count: 1, tx: true });
    let empty = MbarRingId(kernel.mbarriers.len() as u32);
    kernel.mbarriers.push(MbarRing {
        name: "empty_q".into(),
        slots: SLOTS,
        count: cfg.warps * 32,
        tx: false,
    });
    let consumer_it = new_counter(&mut kernel, "it_q");
    let producer_it = new_counter(&mut kernel, "it_q_load");

    // The compute group: each load becomes a view of its ring, waited for before the first use.
    let mut fed: Vec<(BufferId, TileAccess)> = vec![];
    let mut consumer_vars = vec![];
    for group in roles.iter_mut().filter(|g| g.roles.contains(&Role::Compute)) {
        let (at, span) = tiles_of(&group.body);
        group.body.insts.insert(at, Inst { op: Op::CounterInit { dst: consumer_it }, role: None, span });
        let Some(Inst { op: Op::Tiles { vars, body: item, .. }, span, .. }) =
            group.body.insts.get_mut(at + 1)
        else {
            unreachable!("tiles_of found the work loop")
        };
        consumer_vars.clone_from(vars);
        let span = *span;
        let mut insts = vec![];
        let mut first_view = None;
        for mut inst in std::mem::take(&mut item.insts) {
            if let Op::Load { dst, src } = &inst.op {
                let (dst, src) = (*dst, src.clone());
                let buffer = BufferId(kernel.buffers.len() as u32);
                kernel.buffers.push(Buffer {
                    name: kernel.value(dst).name.clone(),
                    rows: TileDim::M,
                    slots: SLOTS,
                });
                kernel.values[dst.index()].ty =
                    Type::Smem { rows: TileDim::M, cols: TileDim::Head, transposed: false, elem: half };
                inst.op =
                    Op::StageView { dst, buffer, src: src.clone(), slot: consumer_it, zero_unless: None };
                inst.role = Some(Role::Compute);
                first_view.get_or_insert(dst);
                fed.push((buffer, src));
            }
            insts.push(inst);
        }
        let view = first_view.expect("why_not found a load");
        let last_view = insts.iter().rposition(|i| matches!(i.op, Op::StageView { .. })).expect("a view");
        let wait = Op::MbarWait { ring: full, iter: consumer_it, flip: false };
        insts.insert(last_view + 1, Inst { op: wait, role: Some(Role::Compute), span });
        // The O tile leaves through the slot (the shape of Q's).
        for inst in &mut insts {
            if let Op::Store { dst, via, .. } = &mut inst.op {
                if kernel.tensor(dst.param).is_some_and(|t| !t.is_rows()) {
                    *via = Some(view);
                }
            }
        }
        insts.push(Inst {
            op: Op::MbarArrive { ring: empty, iter: consumer_it },
            role: Some(Role::Compute),
            span,
        });
        insts.push(Inst { op: Op::CounterNext { dst: consumer_it }, role: Some(Role::Compute), span });
        item.insts = insts;
    }

    // The producer: the same copies at the top of each work item, in its own variables.
    let bytes = fed.iter().map(|(buffer, _)| kernel.slot_tile_bytes(*buffer)).sum();
    for group in roles.iter_mut().filter(|g| g.roles.contains(&Role::Load)) {
        let (at, span) = tiles_of(&group.body);
        group.body.insts.insert(at, Inst { op: Op::CounterInit { dst: producer_it }, role: None, span });
        let Some(Inst { op: Op::Tiles { vars, body: item, .. }, .. }) = group.body.insts.get_mut(at + 1)
        else {
            unreachable!("tiles_of found the work loop")
        };
        let rename = |v: Value| consumer_vars.iter().position(|c| *c == v).map_or(v, |i| vars[i]);
        let load = |op| Inst { op, role: Some(Role::Load), span };
        let mut copies = vec![
            load(Op::MbarWait { ring: empty, iter: producer_it, flip: true }),
            load(Op::MbarExpectTx { ring: full, iter: producer_it, bytes }),
        ];
        for (buffer, src) in &fed {
            let src = src.map_values(&rename);
            copies.push(load(Op::TmaCopy { buffer: *buffer, src, slot: producer_it, ring: full }));
        }
        copies.push(load(Op::CounterNext { dst: producer_it }));
        item.insts.splice(0..0, copies);
    }
    kernel.body = body;
    Ok(kernel)
}

/// Where a role group's work loop stands in its body, and its span.
fn tiles_of(body: &Block) -> (usize, SpanId) {
    let at =
        body.insts.iter().position(|i| matches!(i.op, Op::Tiles { .. })).expect("a role group's work loop");
    (at, body.insts[at].span)
}

fn new_counter(kernel: &mut Kernel, name: &str) -> Value {
    kernel.values.push(ValueData { ty: Type::Counter, name: name.to_string(), mutable: true });
    Value(kernel.values.len() as u32 - 1)
}

/// Why the pass leaves the loads on the compute warps, or `None` when it feeds them.
pub fn why_not(kernel: &Kernel) -> Option<String> {
    let cfg = &kernel.config;
    if let Some(why) = super::tma::why_not(kernel) {
        return Some(format!("the producer's copies are not bulk tensor copies ({why})"));
    }
    if !cfg.persistent {
        return Some("one CTA a work item: there is no next item to copy Q for ahead".into());
    }
    if cfg.kv_splits > 1 || cfg.kv_ctas > 1 || cfg.softmax_warps > 0 {
        return Some("split-KV and softmax warps load Q per group of warps".into());
    }
    // The compute group's work loop, and the loads anywhere in it.
    let mut work_loop = None;
    kernel.walk(&mut |inst| {
        if let Op::Roles { groups } = &inst.op {
            for g in groups.iter().filter(|g| g.roles.contains(&Role::Compute)) {
                work_loop = g.body.insts.iter().find(|i| matches!(i.op, Op::Tiles { .. }));
            }
        }
    });
    let Some(Inst { op: Op::Tiles { vars, body, .. }, .. }) = work_loop else {
        return Some("no work loop in the compute group".into());
    };
    let mut loads = vec![];
    kernel.walk_block(body, &mut |i| {
        if let Op::Load { dst, src } = &i.op {
            loads.push((*dst, src));
        }
    });
    if loads.is_empty() {
        return Some("no `load`ed tile".into());
    }
    for (dst, src) in loads {
        let name = &kernel.value(dst).name;
        let top_level = body.insts.iter().any(|i| matches!(&i.op, Op::Load { dst: d, .. } if *d == dst));
        let mut only_a = true;
        kernel.walk_block(body, &mut |u| {
            if u.op.uses().contains(&dst) {
                only_a &= u.op.reads_only_as_a(dst);
            }
        });
        if !top_level {
            return Some(format!("`{name}` is loaded inside a loop of the work item"));
        }
        if !only_a {
            return Some(format!("`{name}` is read other than as a matmul's A operand"));
        }
        if !src.coords.iter().all(|c| vars.contains(c)) || src.pages.is_some() {
            return Some(format!("`{name}` is not indexed by the work loop's variables"));
        }
        if kernel.tensor(src.param).is_none_or(|t| t.is_rows()) {
            return Some(format!("`{name}` is a load of something other than a [B, H, S, D] tensor"));
        }
    }
    if cfg.tile_m > 256 {
        return Some(format!("tiles of {} rows: a tensor map's box holds at most 256", cfg.tile_m));
    }
    None
}
