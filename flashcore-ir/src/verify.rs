//! The IR verifier: structural invariants every pass must keep. It runs after lowering and after
//! every pass; a failure is a compiler bug, reported with the offending instruction.

use std::collections::{HashSet, VecDeque};

use crate::error::VerifyError;
use crate::kernel::*;

pub fn verify(kernel: &Kernel) -> Result<(), VerifyError> {
    let mut v = Verifier {
        kernel,
        defined: HashSet::new(),
        scopes: vec![vec![]],
        pipelined: false,
        open: vec![],
        in_flight: VecDeque::new(),
    };
    v.block(&kernel.body, Where::Top)?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Where {
    Top,
    Tiles,
    Pipeline,
}

struct Verifier<'k> {
    kernel: &'k Kernel,
    /// Values visible at this point (defined earlier in an enclosing block).
    defined: HashSet<Value>,
    /// Values defined in each open block, removed from `defined` when it closes.
    scopes: Vec<Vec<Value>>,
    /// Whether the pipeline loop being checked has been through the pipeline pass.
    pipelined: bool,
    /// Registers of asynchronous matmuls issued since the last [`Op::MmaCommit`] (results and
    /// register A operands), and those of each committed group not yet retired, oldest first.
    open: Vec<Value>,
    in_flight: VecDeque<Vec<Value>>,
}

fn fail<T>(msg: String) -> Result<T, VerifyError> {
    Err(VerifyError(msg))
}

impl<'k> Verifier<'k> {
    fn name(&self, v: Value) -> String {
        match self.kernel.values.get(v.index()) {
            Some(d) => format!("%{}.{}", d.name, v.0),
            None => format!("%<invalid {}>", v.0),
        }
    }

    fn define(&mut self, v: Value) -> Result<(), VerifyError> {
        if v.index() >= self.kernel.values.len() {
            return fail(format!("value {} is out of the arena", v.0));
        }
        if !self.defined.insert(v) {
            return fail(format!("{} is defined twice", self.name(v)));
        }
        self.scopes.last_mut().expect("open scope").push(v);
        Ok(())
    }

    fn check_buffer(&self, b: BufferId) -> Result<(), VerifyError> {
        match self.kernel.buffers.get(b.0 as usize) {
            Some(buf) if buf.slots >= 1 => Ok(()),
            _ => fail(format!("buffer {} does not exist", b.0)),
        }
    }

    fn block(&mut self, block: &Block, at: Where) -> Result<(), VerifyError> {
        self.scopes.push(vec![]);
        for inst in &block.insts {
            self.inst(inst, at)?;
        }
        for v in self.scopes.pop().expect("open scope") {
            self.defined.remove(&v);
        }
        Ok(())
    }

    /// An asynchronous matmul still in flight at the end of `what` would be in flight across
    /// a loop's back edge or past its end.
    fn nothing_in_flight(&self, what: &str) -> Result<(), VerifyError> {
        match self.open.iter().chain(self.in_flight.iter().flatten()).next() {
            Some(v) => fail(format!(
                "{} is still written by an asynchronous matmul at the end of {what}",
                self.name(*v)
            )),
            None => Ok(()),
        }
    }

    /// Whether a ring's view or copy may stand here: in a pipelined loop, or in the work loop's
    /// body through a counter of work items (a ring fed once a work item: `passes::feed_loads`).
    fn in_ring_loop(&self, at: Where, slot: Value) -> bool {
        match at {
            Where::Pipeline => self.pipelined,
            Where::Tiles => self.kernel.ty(slot) == Type::Counter,
            _ => false,
        }
    }

    /// A matmul's operand types: a 16-bit fragment A, a staged B, the contraction dims equal,
    /// and `dst` the f32 fragment of A's rows and B's columns, which is returned.
    fn matmul_result(&self, dst: Value, a: Value, b: Value, what: &str) -> Result<Type, VerifyError> {
        let ty = |v: Value| self.kernel.ty(v);
        let (Some((ar, ak)), Some((bk, bn))) = (ty(a).matrix_dims(), ty(b).matrix_dims()) else {
            return fail(format!("{what} {} has non-tile operands", self.name(dst)));
        };
        // A is a 16-bit register tile, or (sm_90a, read by wgmma through a descriptor) a ring
        // view in its stored orientation: a Q tile the producer fed (`passes::feed_loads`).
        let a_ok = match ty(a) {
            Type::Frag { elem, .. } => elem.is_half(),
            Type::Smem { transposed: false, .. } => self.kernel.config.target == crate::Target::Sm90a,
            _ => false,
        };
        let b_ok = matches!(ty(b), Type::Smem { .. });
        let want = Type::Frag { rows: ar, cols: bn, elem: Elem::F32 };
        if !a_ok || !b_ok || ak != bk || ty(dst) != want {
            return fail(format!("{what} {} has mismatched operand types", self.name(dst)));
        }
        Ok(want)
    }

    fn inst(&mut self, inst: &Inst, at: Where) -> Result<(), VerifyError> {
        for u in inst.op.uses() {
            if !self.defined.contains(&u) {
                return fail(format!("{} is used before it is defined (or out of its scope)", self.name(u)));
            }
        }
        // Registers an asynchronous matmul reads or writes are off limits until its group retires.
        if !matches!(inst.op, Op::MmaAsync { .. }) {
            let touched = inst.op.uses().into_iter().chain(inst.op.def());
            if let Some(v) = touched
                .into_iter()
                .find(|v| self.open.contains(v) || self.in_flight.iter().any(|g| g.contains(v)))
            {
                return fail(format!(
                    "{} is touched while an asynchronous matmul that reads or writes it is in flight (no mma_wait retires it first)",
                    self.name(v)
                ));
            }
        }
        let ty = |v: Value| self.kernel.ty(v);
        match &inst.op {
            Op::Tiles { vars, extents, body, .. } => {
                if at != Where::Top || vars.len() != extents.len() {
                    return fail("a tiles loop must be top level with one extent per variable".into());
                }
                self.scopes.push(vec![]);
                for v in vars {
                    self.define(*v)?;
                }
                self.block(body, Where::Tiles)?;
                for v in self.scopes.pop().expect("open scope") {
                    self.defined.remove(&v);
                }
                return Ok(());
            }
            Op::Pipeline { var, stages, prologue, body, epilogue, .. } => {
                if at != Where::Tiles {
                    return fail("a pipeline loop must sit directly in the tiles loop".into());
                }
                if *stages == 0 && !(prologue.insts.is_empty() && epilogue.insts.is_empty()) {
                    return fail("an unpipelined loop has no prologue or epilogue".into());
                }
                self.pipelined = *stages > 0;
                self.scopes.push(vec![]);
                self.define(*var)?;
                self.block(prologue, Where::Pipeline)?;
                self.block(body, Where::Pipeline)?;
                self.nothing_in_flight("the K/V loop's body")?;
                self.block(epilogue, Where::Pipeline)?;
                self.nothing_in_flight("the K/V loop's epilogue")?;
                for v in self.scopes.pop().expect("open scope") {
                    self.defined.remove(&v);
                }
                return Ok(());
            }
            Op::Loop { var, body, .. } => {
                if at != Where::Tiles {
                    return fail("a range loop must sit directly in the tiles loop".into());
                }
                self.scopes.push(vec![]);
                self.define(*var)?;
                self.block(body, Where::Tiles)?;
                for v in self.scopes.pop().expect("open scope") {
                    self.defined.remove(&v);
                }
                return Ok(());
            }
            Op::Roles { groups } => {
                if at != Where::Top {
                    return fail("warp roles split the kernel at the top level only".into());
                }
                let mut next_warp = 0;
                for g in groups {
                    if g.first_warp != next_warp || g.warps == 0 {
                        return fail("role groups must cover consecutive, non-empty warp ranges".into());
                    }
                    next_warp += g.warps;
                    let mut cta_barrier = false;
                    self.kernel
                        .walk_block(&g.body, &mut |i| cta_barrier |= matches!(i.op, Op::Barrier { .. }));
                    if cta_barrier {
                        return fail("a CTA barrier (`bar.sync`) inside role-divergent code: roles synchronize through mbarriers".into());
                    }
                    self.block(&g.body, Where::Top)?;
                }
                return Ok(());
            }
            Op::MbarWait { ring, .. }
            | Op::MbarArrive { ring, .. }
            | Op::MbarArriveAsync { ring, .. }
            | Op::MbarExpectTx { ring, .. } => {
                if self.kernel.mbarriers.get(ring.0 as usize).is_none() {
                    return fail(format!("mbarrier ring {} does not exist", ring.0));
                }
            }
            Op::Stage { dst, .. } => {
                if at != Where::Pipeline || self.pipelined {
                    return fail(format!("stage {} outside an unpipelined pipeline loop", self.name(*dst)));
                }
            }
            Op::StageView { dst, buffer, slot, .. } => {
                if !self.in_ring_loop(at, *slot) {
                    return fail(format!("view {} outside a pipelined loop", self.name(*dst)));
                }
                self.check_buffer(*buffer)?;
            }
            Op::AsyncCopy { buffer, .. } => {
                if at != Where::Pipeline || !self.pipelined {
                    return fail("cp.async outside a pipelined loop".into());
                }
                self.check_buffer(*buffer)?;
            }
            Op::TmaCopy { buffer, ring, slot, .. } => {
                if !self.in_ring_loop(at, *slot) {
                    return fail("a bulk tensor copy outside a pipelined loop".into());
                }
                self.check_buffer(*buffer)?;
                if !self.kernel.mbarriers.get(ring.0 as usize).is_some_and(|r| r.tx) {
                    return fail(format!(
                        "a bulk tensor copy completes on mbarrier ring {}, which counts no transaction bytes",
                        ring.0
                    ));
                }
            }
            Op::Load { .. } | Op::Store { .. } if at != Where::Tiles => {
                return fail("load/store must sit in the tiles loop body".into());
            }
            Op::Assign { dst, src } => {
                if !self.kernel.value(*dst).mutable {
                    return fail(format!("assignment to immutable {}", self.name(*dst)));
                }
                if ty(*dst) != ty(*src) {
                    return fail(format!("assignment changes the type of {}", self.name(*dst)));
                }
            }
            Op::CombineCtas { max, sum, acc } => {
                if at != Where::Tiles || self.kernel.config.kv_ctas < 2 {
                    return fail("combine_ctas belongs in the work loop of a kernel with kv_ctas > 1".into());
                }
                let row = matches!(ty(*max), Type::Row { rows: TileDim::M }) && ty(*sum) == ty(*max);
                let frag = matches!(ty(*acc), Type::Frag { rows: TileDim::M, elem: Elem::F32, .. });
                let mutable = [max, sum, acc].iter().all(|v| self.kernel.value(**v).mutable);
                if !row || !frag || !mutable {
                    return fail(
                        "combine_ctas needs mutable row statistics and an f32 accumulator of the Q tile"
                            .into(),
                    );
                }
            }
            Op::MergeSplits { max, sum, acc } => {
                if at != Where::Tiles || self.kernel.config.kv_splits < 2 {
                    return fail(
                        "merge_kv_splits belongs in the work loop of a kernel with kv_splits > 1".into(),
                    );
                }
                let row = matches!(ty(*max), Type::Row { rows: TileDim::M }) && ty(*sum) == ty(*max);
                let frag = matches!(ty(*acc), Type::Frag { rows: TileDim::M, elem: Elem::F32, .. });
                let mutable = [max, sum, acc].iter().all(|v| self.kernel.value(**v).mutable);
                if !row || !frag || !mutable {
                    return fail(
                        "merge_kv_splits needs mutable row statistics and an f32 accumulator of the Q tile"
                            .into(),
                    );
                }
            }
            Op::Mma { dst, a, b, acc } => {
                let want = self.matmul_result(*dst, *a, *b, "mma")?;
                if acc.is_some_and(|c| ty(c) != want) {
                    return fail(format!("mma {} has mismatched operand types", self.name(*dst)));
                }
            }
            Op::MmaAsync { dst, a, b, accumulate } => {
                self.matmul_result(*dst, *a, *b, "mma_async")?;
                if *accumulate && !self.kernel.value(*dst).mutable {
                    return fail(format!("mma_async accumulates into immutable {}", self.name(*dst)));
                }
                if self.kernel.config.target != crate::Target::Sm90a {
                    return fail("asynchronous matmuls are warpgroup wgmmas: sm_90a only".into());
                }
                self.open.extend([*dst, *a]);
            }
            Op::MmaCommit => self.in_flight.push_back(std::mem::take(&mut self.open)),
            Op::MmaWait { pending } => {
                while self.in_flight.len() > *pending as usize {
                    self.in_flight.pop_front();
                }
            }
            Op::When { counter, body } => {
                if ty(*counter) != Type::Counter {
                    return fail(format!("`when` tests {}, which is not a counter", self.name(*counter)));
                }
                // The body may run or not: checked as if it runs (what it issues is in flight after).
                self.block(body, at)?;
                return Ok(());
            }
            Op::Binary { dst, op, lhs, rhs } => {
                let (l, r) = (ty(*lhs), ty(*rhs));
                let same_elem =
                    l.elem().is_some() && l.elem() == r.elem() && !l.elem().is_some_and(|e| e.is_half());
                let want = Type::broadcast(l, r).and_then(|t| {
                    t.with_elem(if op.is_comparison() { Elem::Bool } else { l.elem().unwrap_or(Elem::F32) })
                });
                if !same_elem || want != Some(ty(*dst)) {
                    return fail(format!("binary {} has incompatible operands", self.name(*dst)));
                }
            }
            Op::Unary { dst, src, .. } | Op::Convert { dst, src } => {
                let want = match inst.op {
                    Op::Convert { .. } => match ty(*src) {
                        Type::Frag { rows, cols, elem } if elem.is_half() => {
                            Some(Type::Frag { rows, cols, elem: Elem::F32 })
                        }
                        t => t.with_elem(Elem::F32).filter(|_| t.elem() == Some(Elem::I32)),
                    },
                    _ => Some(ty(*src)),
                };
                if want != Some(ty(*dst)) {
                    return fail(format!("{} has the wrong type for its operand", self.name(*dst)));
                }
            }
            Op::Exp2Scaled { dst, src, scale, sub } => {
                let ok = match (ty(*src), ty(*sub)) {
                    (Type::Frag { rows, elem: Elem::F32, .. }, Type::Row { rows: sub_rows }) => {
                        rows == sub_rows && ty(*scale) == Type::Scalar
                    }
                    _ => false,
                };
                if !ok || ty(*dst) != ty(*src) {
                    return fail(format!(
                        "exp2_scaled {} needs f32 scores, a uniform f32 scale and a row of theirs",
                        self.name(*dst)
                    ));
                }
            }
            Op::Select { dst, cond, then, otherwise } => {
                let shape =
                    Type::broadcast(ty(*then), ty(*otherwise)).and_then(|t| Type::broadcast(t, ty(*cond)));
                let ok = ty(*cond).elem() == Some(Elem::Bool)
                    && ty(*then).elem() == ty(*otherwise).elem()
                    && shape.and_then(|t| t.with_elem(ty(*then).elem()?)) == Some(ty(*dst));
                if !ok {
                    return fail(format!("select {} has incompatible operands", self.name(*dst)));
                }
            }
            Op::MaskWhere { dst, src, keep, mask } => {
                let scores = matches!(ty(*src), Type::Frag { elem: Elem::F32, .. }) && ty(*dst) == ty(*src);
                let cond = ty(*keep).elem() == Some(Elem::Bool);
                let known = mask.is_none_or(|m| (m.0 as usize) < self.kernel.masks.len());
                if !scores || !cond || !known {
                    return fail(format!(
                        "mask {} needs f32 scores, a bool condition and a known mask",
                        self.name(*dst)
                    ));
                }
            }
            Op::Position { dst, index, .. } => {
                let ok = matches!(ty(*index), Type::Index { tile: Some(_), .. })
                    && matches!(ty(*dst), Type::Frag { elem: Elem::I32, .. });
                if !ok {
                    return fail(format!("position {} needs a tile index and an i32 tile", self.name(*dst)));
                }
            }
            _ => {}
        }
        if let Some(d) = inst.op.def() {
            self.define(d)?;
        }
        Ok(())
    }
}
