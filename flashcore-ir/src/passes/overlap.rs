//! The overlap pass (sm_90a with a producer warpgroup): FlashAttention-3's intra-warpgroup
//! pipelining. In source order a K/V iteration is `S = Q·Kᵀ`, the softmax of `S`, `O += P·V`;
//! each matmul waits for itself, so the tensor cores idle through the softmax. The pass rotates
//! the loop so that the softmax of tile `j` runs while the tensor cores compute `P·V` of tile
//! `j − 1`:
//!
//! ```text
//! wait full_k[it]
//! V' = view of slot it_pv, or of zeros while pending = 0
//! S = mma_async Q, Kᵀ ; mma_commit           group 1
//! O += mma_async P, V' ; mma_commit          group 2 (adds 0 on a work item's first tile)
//! mma_wait 1                                 S is in (groups retire in order)
//! arrive empty_k[it]                         K's slot is free
//! softmax of S: row max, exp2, alpha, sums   "early": reads neither O nor P
//! when pending { mma_wait 0; arrive empty_v[it_pv]; it_pv += 1 }
//! mma_wait 0                                 (retires the P·V of zeros)
//! O *= alpha; P = to_f16 p                   "late": reads O, or computes P
//! wait full_v[it]                            this tile's V, for the next iteration's P·V
//! it += 1; pending += 1
//! ```
//!
//! and the epilogue issues the last `P·V` (`when pending { .. }`, whole). `P` is a variable
//! carried to the next iteration, `it_pv` counts the slots whose `P·V` has been issued, and
//! `pending` the tiles of this work item. K and V get rings of their own (FlashAttention-3's
//! two pipelines: the load warps wait on `empty_k` before copying K and on `empty_v` before
//! copying V), so K's slot goes back as soon as `Q·Kᵀ` has read it while V's is held until
//! the next iteration's `P·V` retires; with one ring for both, the producer would run a slot
//! behind (measured: 21-34% slower with 2 stages).
//!
//! Three shapes of the loop are what ptxas needs to keep the wgmmas asynchronous (each found on
//! the H200 with the ptxas of its driver, 13.0): no wgmma on a conditional path (C7519), hence the
//! view of zeros instead of a branch around the first `P·V`; no descriptor computed while another
//! wgmma is in flight (C7513), hence the previous tile's view before `Q·Kᵀ` (codegen prepares both
//! matmuls' descriptors ahead of the first issue); and the wait for `P·V` at the top of a basic
//! block of its own, since ptxas schedules a `wgmma.wait_group` at the top of its block, which
//! would put it before the softmax.
//!
//! The rotation moves every statement between the matmuls that reads `O` (or a value computed
//! from it), or that computes `P`, after the wait, and keeps the rest before it, in source order
//! on each side. It applies only where that is exact: the iteration is one `Q·Kᵀ`-shaped matmul,
//! then register-only statements, then one accumulating matmul whose `A` only it reads; no
//! statement kept early writes a variable a moved one reads, or reads one it writes; K's view is
//! read by `Q·Kᵀ` alone; the load warps copy K, then V, with one ring pair; and the registers it
//! keeps live fit the compute warpgroups' budget. Elsewhere the kernel is left as it was
//! ([`why_not`] says why).

use crate::error::IrError;
use crate::kernel::*;
use crate::source::Role;
use crate::Target;

pub fn run(mut kernel: Kernel) -> Result<Kernel, IrError> {
    if why_not(&kernel).is_some() {
        return Ok(kernel);
    }
    // V gets its own rings, so that K's slot is released as soon as Q·Kᵀ has read it while V's
    // is held until the next iteration's P·V retires (FlashAttention-3's two pipelines).
    let v_rings = split_rings(&mut kernel);
    let mut body = std::mem::take(&mut kernel.body);
    for inst in &mut body.insts {
        let Op::Roles { groups } = &mut inst.op else { continue };
        for group in groups.iter_mut() {
            if group.roles.contains(&Role::Load) {
                for inst in &mut group.body.insts {
                    if let Op::Tiles { body, .. } = &mut inst.op {
                        split_producer_in(body, &v_rings);
                    }
                }
                continue;
            }
            if !group.roles.contains(&Role::Compute) {
                continue;
            }
            let it_pv = new_value(&mut kernel, Type::Counter, "it_pv", true);
            for inst in &mut group.body.insts {
                if let Op::Tiles { body, .. } = &mut inst.op {
                    rotate_in(&mut kernel, body, it_pv, &v_rings);
                }
            }
            let span = group.body.insts.first().map_or(crate::source::SpanId::NONE, |i| i.span);
            group.body.insts.insert(0, Inst { op: Op::CounterInit { dst: it_pv }, role: None, span });
        }
    }
    kernel.body = body;
    Ok(kernel)
}

/// V's rings and buffer, next to the `full`/`empty` pair the warp-specialize pass made, which
/// K keeps.
#[derive(Clone, Copy)]
struct VRings {
    buffer: BufferId,
    full: MbarRingId,
    empty: MbarRingId,
}

/// Adds V's `full_v`/`empty_v` rings (as many slots and arrivals as K's) and renames K's.
fn split_rings(kernel: &mut Kernel) -> VRings {
    let buffer = v_buffer(kernel).expect("why_not found the shape");
    let (full, empty) = (kernel.mbarriers[0].clone(), kernel.mbarriers[1].clone());
    kernel.mbarriers[0].name = "full_k".into();
    kernel.mbarriers[1].name = "empty_k".into();
    kernel.mbarriers.push(MbarRing { name: "full_v".into(), ..full });
    kernel.mbarriers.push(MbarRing { name: "empty_v".into(), ..empty });
    let n = kernel.mbarriers.len() as u32;
    VRings { buffer, full: MbarRingId(n - 2), empty: MbarRingId(n - 1) }
}

/// The buffer the compute warps' accumulating matmul reads (V).
fn v_buffer(kernel: &Kernel) -> Option<BufferId> {
    let mut found = None;
    kernel.walk(&mut |inst| {
        if let Op::Pipeline { body, .. } = &inst.op {
            if let Ok(shape) = match_iteration(kernel, body) {
                found = body.insts.iter().find_map(|i| match i.op {
                    Op::StageView { dst, buffer, .. } if dst == shape.v_view => Some(buffer),
                    _ => None,
                });
            }
        }
    });
    found
}

/// The producer's K/V loops in `block`: V's copies wait on `empty_v` and arrive on `full_v`
/// (K's keep the first pair): `wait empty[it]; copy K; arrive full[it]; wait empty_v[it];
/// copy V; arrive full_v[it]; it += 1`.
fn split_producer_in(block: &mut Block, v: &VRings) {
    for inst in &mut block.insts {
        match &mut inst.op {
            Op::Loop { body, .. } => split_producer_in(body, v),
            Op::Pipeline { body, .. } => {
                // [`producer_shape`] checked the one copy of V, after K's, and the one arrival.
                let mut out = vec![];
                for inst in std::mem::take(&mut body.insts) {
                    match inst.op {
                        Op::AsyncCopy { buffer, slot, .. } if buffer == v.buffer => {
                            // K's copies are issued: they arrive on K's ring; then V's slot.
                            let at = |op| Inst { op, ..inst.clone() };
                            out.push(at(Op::MbarArriveAsync { ring: MbarRingId(0), iter: slot }));
                            out.push(at(Op::MbarWait { ring: v.empty, iter: slot, flip: true }));
                            out.push(inst);
                        }
                        Op::MbarArriveAsync { iter, .. } => {
                            out.push(Inst { op: Op::MbarArriveAsync { ring: v.full, iter }, ..inst });
                        }
                        _ => out.push(inst),
                    }
                }
                body.insts = out;
            }
            _ => {}
        }
    }
}

/// The producer's K/V loops in `block` copy K's buffer before V's, close them with one arrival
/// on `full` and count iterations with `it`: the shape [`split_producer_in`] splits.
fn producer_shape(block: &Block, v_buffer: BufferId) -> Result<(), String> {
    for inst in &block.insts {
        match &inst.op {
            Op::Loop { body, .. } => producer_shape(body, v_buffer)?,
            Op::Pipeline { body, .. } => {
                let kinds: Vec<u8> = body
                    .insts
                    .iter()
                    .map(|i| match &i.op {
                        Op::MbarWait { .. } => b'w',
                        Op::AsyncCopy { buffer, .. } if *buffer == v_buffer => b'v',
                        Op::AsyncCopy { .. } => b'k',
                        Op::MbarArriveAsync { .. } => b'a',
                        Op::CounterNext { .. } => b'n',
                        _ => b'?',
                    })
                    .collect();
                if kinds != b"wkvan" {
                    return Err("the load warps' iteration is not `wait, copy K, copy V, arrive`: the overlap gives V its own rings".into());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why the pass leaves `kernel`'s K/V loop as it is, or `None` when it rotates it.
pub fn why_not(kernel: &Kernel) -> Option<String> {
    if let Err(why) = applies(&kernel.config) {
        return Some(why);
    }
    if kernel.mbarriers.len() != 2 {
        return Some("the overlap splits the load warps' one ring pair (full, empty) in two".into());
    }
    // The compute warps' K/V loops first: their reason is the one a user can act on.
    let mut why = None;
    let groups = |role: Role| {
        kernel.body.insts.iter().flat_map(move |inst| match &inst.op {
            Op::Roles { groups } => groups.iter().filter(|g| g.roles.contains(&role)).collect(),
            _ => vec![],
        })
    };
    for group in groups(Role::Compute) {
        kernel.walk_block(&group.body, &mut |inst| {
            if let Op::Pipeline { body, .. } = &inst.op {
                if let Err(e) = match_iteration(kernel, body) {
                    why.get_or_insert(e);
                }
            }
        });
    }
    if why.is_some() {
        return why;
    }
    let Some(v_buffer) = v_buffer(kernel) else {
        return Some("no K/V loop of the compute warps has the shape the overlap rotates".into());
    };
    for group in groups(Role::Load) {
        for inst in &group.body.insts {
            if let Op::Tiles { body, .. } = &inst.op {
                if let Err(e) = producer_shape(body, v_buffer) {
                    why.get_or_insert(e);
                }
            }
        }
    }
    why
}

fn applies(cfg: &crate::Config) -> Result<(), String> {
    if !cfg.overlap {
        return Err(
            "off (Config::overlap, the `overlap` setting; the tuned table turns it on where it measured faster)".into()
        );
    }
    if cfg.target != Target::Sm90a {
        return Err("the overlap of softmax and matmul is sm_90a's (asynchronous wgmma)".into());
    }
    if cfg.load_warps == 0 {
        return Err("the overlap needs the producer warpgroup (load_warps = 4): the mbarrier ring lets the compute warpgroups hold two slots".into());
    }
    let (need, budget) = (overlap_registers(cfg), compute_registers(cfg));
    if need > budget {
        return Err(format!(
            "the overlap keeps about {need} registers a thread live (O, S, two copies of P, addresses) and the compute warpgroups have {budget}: ptxas would serialize the wgmmas (C7512)"
        ));
    }
    Ok(())
}

/// Registers a compute thread holds with the overlap: O (`D / 2`), S (`TILE_N / 2`), the P in
/// flight and the next one (`TILE_N / 4` each), and about 40 for addresses, counters and row
/// statistics.
fn overlap_registers(cfg: &crate::Config) -> u32 {
    cfg.head_dim / 2 + cfg.tile_n + 40
}

/// Registers a compute thread may use: with a producer warpgroup, what `setmaxnreg` gives each
/// compute warpgroup ([`crate::registers::register_split`]) or, where it gives none, the entry
/// count; else ptxas's 255.
fn compute_registers(cfg: &crate::Config) -> u32 {
    if cfg.load_warps == 0 || cfg.warps <= 4 {
        return 255;
    }
    crate::registers::register_split(cfg)
        .map_or_else(|| crate::registers::entry_registers(cfg.warps + cfg.load_warps), |split| split.compute)
}

/// Rotates every K/V loop in `block` (a work-loop body, or a range loop's in it); [`why_not`]
/// has checked that each has the shape.
fn rotate_in(kernel: &mut Kernel, block: &mut Block, it_pv: Value, v: &VRings) {
    let mut at = 0;
    while at < block.insts.len() {
        let span = block.insts[at].span;
        match &mut block.insts[at].op {
            Op::Loop { body, .. } => rotate_in(kernel, body, it_pv, v),
            Op::Pipeline { body, .. } => {
                let shape = match_iteration(kernel, body).expect("why_not found the shape");
                let (new_body, epilogue, before) = rotate(kernel, body, &shape, it_pv, v);
                let Op::Pipeline { body, epilogue: e, .. } = &mut block.insts[at].op else { unreachable!() };
                *body = new_body;
                *e = epilogue;
                let n = before.len();
                for (k, op) in before.into_iter().enumerate() {
                    block.insts.insert(at + k, Inst { op, role: Some(Role::Compute), span });
                }
                at += n;
            }
            _ => {}
        }
        at += 1;
    }
}

/// The parts of a consumer iteration the rotation moves.
struct Shape {
    /// Index of `S = Q·Kᵀ` and of `O' = P·V + O`.
    first: usize,
    second: usize,
    /// `O` (mutable), `P` (the half-precision A operand), `V`'s view and its op.
    acc: Value,
    p: Value,
    v_view: Value,
    /// The statements between the matmuls that move after the wait: those that read O (its
    /// rescale) or compute P, and what reads their results.
    late: Vec<bool>,
    /// The `empty` ring the iteration arrives on, and its slot counter.
    empty: MbarRingId,
    it: Value,
}

/// Register-only statements: what may stand between the two matmuls.
fn register_only(op: &Op) -> bool {
    matches!(
        op,
        Op::ScalarParam { .. }
            | Op::Const { .. }
            | Op::IntConst { .. }
            | Op::DimLen { .. }
            | Op::Position { .. }
            | Op::Unary { .. }
            | Op::MaskWhere { .. }
            | Op::Gather { .. }
            | Op::Convert { .. }
            | Op::Select { .. }
            | Op::Fill { .. }
            | Op::Assign { .. }
            | Op::MaskColumns { .. }
            | Op::Exp2 { .. }
            | Op::Exp2Scaled { .. }
            | Op::LogSumExp { .. }
            | Op::ToHalf { .. }
            | Op::Reduce { .. }
            | Op::Binary { .. }
            | Op::Transpose { .. }
    )
}

/// What `op` writes: its definition, or the variable it assigns.
fn writes(op: &Op) -> Option<Value> {
    match op {
        Op::Assign { dst, .. } => Some(*dst),
        op => op.def(),
    }
}

/// What `op` reads (an assignment reads only its source).
fn reads(op: &Op) -> Vec<Value> {
    match op {
        Op::Assign { src, .. } => vec![*src],
        op => op.uses(),
    }
}

fn match_iteration(kernel: &Kernel, body: &Block) -> Result<Shape, String> {
    let insts = &body.insts;
    let mmas: Vec<usize> = (0..insts.len()).filter(|&i| matches!(insts[i].op, Op::Mma { .. })).collect();
    let [first, second] = mmas[..] else {
        return Err(format!(
            "the K/V iteration has {} matmuls; the overlap rotates two (Q·Kᵀ, then P·V)",
            mmas.len()
        ));
    };
    let Op::Mma { acc: None, .. } = insts[first].op else {
        return Err("the first matmul accumulates: the overlap expects S = Q·Kᵀ".into());
    };
    let Op::Mma { dst: acc_new, a: p, b: v_view, acc: Some(acc) } = insts[second].op else {
        return Err("the second matmul does not accumulate: the overlap expects O = P·V + O".into());
    };
    if !kernel.value(acc).mutable {
        return Err("the second matmul's accumulator is not a variable carried across iterations".into());
    }
    let uses_of =
        |v: Value| (0..insts.len()).filter(|&i| insts[i].op.uses().contains(&v)).collect::<Vec<_>>();
    let p_def = (first + 1..second).find(|&i| insts[i].op.def() == Some(p));
    if p_def.is_none() || uses_of(p) != [second] {
        return Err(
            "P (the second matmul's A) must be computed between the matmuls and read by it alone".into()
        );
    }
    // Every other staged view (K's, and its transpose) is read by the first matmul alone: its
    // slot is released once that matmul has retired.
    let mut ring_views: Vec<Value> = vec![];
    for inst in insts {
        match inst.op {
            Op::StageView { dst, .. } if dst != v_view => ring_views.push(dst),
            Op::Transpose { dst, src } if ring_views.contains(&src) => ring_views.push(dst),
            _ => {}
        }
    }
    let k_reads = |i: usize| matches!(insts[i].op, Op::Transpose { .. }) || i == first;
    if ring_views.iter().any(|&view| uses_of(view).into_iter().any(|i| !k_reads(i))) {
        return Err("a staged tile other than V is read by more than the first matmul".into());
    }
    let v_def = (0..first).find(|&i| insts[i].op.def() == Some(v_view));
    if !v_def.is_some_and(|i| matches!(insts[i].op, Op::StageView { .. })) {
        return Err("the second matmul's B must be a staged tile viewed before the first".into());
    }
    // After the accumulating matmul: the slot's release, `O <- O'` and the counter, nothing else.
    let (mut empty, mut it, mut assigned) = (None, None, false);
    for inst in &insts[second + 1..] {
        match inst.op {
            Op::MbarArrive { ring, iter } if empty.is_none() => empty = Some((ring, iter)),
            Op::Assign { dst, src } if dst == acc && src == acc_new && !assigned => assigned = true,
            Op::CounterNext { dst } if Some(dst) == empty.map(|e| e.1) => it = Some(dst),
            _ => {
                return Err(format!(
                    "`{}` follows P·V: the overlap moves P·V past it",
                    kernel.inst_text(inst)
                ))
            }
        }
    }
    let (Some((empty, _)), Some(it), true) = (empty, it, assigned) else {
        return Err(
            "the iteration does not end by releasing its slot, O <- P·V + O and the slot counter".into()
        );
    };
    if uses_of(acc_new).len() != 1 || insts[..first].iter().any(|i| i.op.uses().contains(&acc)) {
        return Err("O is read outside the softmax".into());
    }
    // Between the matmuls: late = reads O, computes P, or reads what a late statement wrote.
    let mut late = vec![false; insts.len()];
    let mut late_values = vec![acc];
    for i in first + 1..second {
        let op = &insts[i].op;
        if !register_only(op) {
            return Err(format!(
                "`{}` between the matmuls is not a register-only statement",
                kernel.inst_text(&insts[i])
            ));
        }
        if p_def == Some(i) || op.uses().iter().any(|u| late_values.contains(u)) {
            late[i] = true;
            late_values.extend(writes(op));
        }
    }
    let moved: Vec<usize> = (first + 1..second).filter(|&i| late[i]).collect();
    // Moving a late statement past the early ones after it must not change what either reads.
    for l in moved {
        for e in (l + 1..second).filter(|&i| !late[i]) {
            let (lo, eo) = (&insts[l].op, &insts[e].op);
            let clash = writes(lo).is_some_and(|w| reads(eo).contains(&w) || writes(eo) == Some(w))
                || writes(eo).is_some_and(|w| reads(lo).contains(&w));
            if clash {
                return Err(format!(
                    "`{}` would move after `{}`, which reads or writes what it does",
                    kernel.inst_text(&insts[l]),
                    kernel.inst_text(&insts[e])
                ));
            }
        }
    }
    Ok(Shape { first, second, acc, p, v_view, late, empty, it })
}

fn new_value(kernel: &mut Kernel, ty: Type, name: &str, mutable: bool) -> Value {
    kernel.values.push(ValueData { ty, name: name.to_string(), mutable });
    Value(kernel.values.len() as u32 - 1)
}

/// The rotated body, the epilogue that issues the last `P·V`, and what goes before the loop.
fn rotate(
    kernel: &mut Kernel,
    body: &Block,
    shape: &Shape,
    it_pv: Value,
    v: &VRings,
) -> (Block, Block, Vec<Op>) {
    let insts = &body.insts;
    let at = |op: Op, span| Inst { op, role: Some(Role::Compute), span };
    let (first_span, second_span) = (insts[shape.first].span, insts[shape.second].span);
    let pending = new_value(kernel, Type::Counter, "pending", true);
    let p_data = kernel.value(shape.p).clone();
    let p_next = new_value(kernel, p_data.ty, &format!("{}_next", p_data.name), true);
    let (view_buffer, view_src) =
        match &insts.iter().find(|i| i.op.def() == Some(shape.v_view)).expect("matched").op {
            Op::StageView { buffer, src, .. } => (*buffer, src.clone()),
            _ => unreachable!("matched a view"),
        };
    let v_used_elsewhere =
        insts.iter().enumerate().any(|(i, inst)| i != shape.second && inst.op.uses().contains(&shape.v_view));
    // The view of the previous tile's V (`zero_unless`: a tile of zeros while none is pending).
    let previous_view = |kernel: &mut Kernel, zero_unless: Option<Value>| {
        let name = format!("{}_prev", kernel.value(shape.v_view).name);
        let view = new_value(kernel, kernel.ty(shape.v_view), &name, false);
        let op =
            Op::StageView { dst: view, buffer: view_buffer, src: view_src.clone(), slot: it_pv, zero_unless };
        (view, at(op, second_span))
    };
    let issue_previous =
        |view| at(Op::MmaAsync { dst: shape.acc, a: p_next, b: view, accumulate: true }, second_span);
    let release_previous = || {
        vec![
            at(Op::MbarArrive { ring: v.empty, iter: it_pv }, second_span),
            at(Op::CounterNext { dst: it_pv }, second_span),
        ]
    };
    let mut out: Vec<Inst> = insts[..shape.first]
        .iter()
        .filter(|i| i.op.def() != Some(shape.v_view) || v_used_elsewhere)
        .cloned()
        .collect();
    // The previous tile's V is viewed before this tile's Q·Kᵀ is issued, so that codegen
    // computes both matmuls' descriptors first: ptxas 13.0 (the H200 driver's JIT) serializes
    // every wgmma of a kernel that computes a wgmma's inputs while another is in flight (C7513).
    let (view, view_op) = previous_view(kernel, Some(pending));
    out.push(view_op);
    let Op::Mma { dst: s, a: q, b: k, .. } = insts[shape.first].op else { unreachable!("matched") };
    out.push(Inst {
        op: Op::MmaAsync { dst: s, a: q, b: k, accumulate: false },
        ..insts[shape.first].clone()
    });
    out.push(at(Op::MmaCommit, first_span));
    // Issued on every iteration, of a tile of zeros on a work item's first: a branch around a
    // wgmma makes ptxas serialize every wgmma of the kernel (C7519).
    out.push(issue_previous(view));
    out.push(at(Op::MmaCommit, second_span));
    out.push(at(Op::MmaWait { pending: 1 }, first_span));
    // K has been read: its slot goes back to the producer at once.
    out.push(at(Op::MbarArrive { ring: shape.empty, iter: shape.it }, first_span));
    out.extend((shape.first + 1..shape.second).filter(|&i| !shape.late[i]).map(|i| insts[i].clone()));
    // The wait for P·V in a branch of its own, and again after it (a no-op, but for the P·V of
    // the tile of zeros): ptxas 13.0 schedules a `wgmma.wait_group` at the top of its basic
    // block, which would put it before the softmax and leave nothing to overlap.
    let mut release = vec![at(Op::MmaWait { pending: 0 }, second_span)];
    release.extend(release_previous());
    out.push(at(Op::When { counter: pending, body: Block { insts: release } }, second_span));
    out.push(at(Op::MmaWait { pending: 0 }, second_span));
    out.extend((shape.first + 1..shape.second).filter(|&i| shape.late[i]).map(|i| insts[i].clone()));
    out.push(at(Op::Assign { dst: p_next, src: shape.p }, second_span));
    // This tile's V, which the next iteration's P·V reads (or the epilogue's): landed, and
    // fenced into the async proxy.
    out.push(at(Op::MbarWait { ring: v.full, iter: shape.it, flip: false }, second_span));
    out.push(at(Op::CounterNext { dst: shape.it }, second_span));
    out.push(at(Op::CounterNext { dst: pending }, second_span));
    // The last tile's P·V, whole (issue, commit, wait) inside the branch.
    let (view, view_op) = previous_view(kernel, None);
    let mut last = vec![
        view_op,
        issue_previous(view),
        at(Op::MmaCommit, second_span),
        at(Op::MmaWait { pending: 0 }, second_span),
    ];
    last.extend(release_previous());
    let epilogue = vec![at(Op::When { counter: pending, body: Block { insts: last } }, second_span)];
    // Before the loop: nothing pending; P's registers defined (the JIT wants every register a
    // wgmma names written first).
    let before = vec![Op::CounterInit { dst: pending }, Op::Fill { dst: p_next, value: 0.0 }];
    (Block { insts: out }, Block { insts: epilogue }, before)
}
