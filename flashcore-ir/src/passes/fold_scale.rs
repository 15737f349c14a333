//! The score-scale fold (sm_90a): the online softmax's `p = 2^(s·c − m)` as one FMA an element,
//! where the kernel as written multiplies every score by the scale `c` and then subtracts the
//! row max (two instructions an element, on the chain that feeds the exponentials):
//!
//! ```text
//! x = mma(q, kᵀ)                        x = mma(q, kᵀ)
//! s = x * c                             c' = c + 2⁻¹²⁶
//! y = mask(s)                    =>     y = mask(x)
//! r = row_max(y)                        r = row_max(y) * c'
//! p = exp2(y − m)                       p = exp2_scaled(y, c', m)    (2^(y·c' − m), one FMA)
//! ```
//!
//! Why it computes the same softmax, for `c ≥ 0`:
//! - `row_max(y)·c'` is `row_max(y·c')` bit for bit: multiplying by `c' > 0` rounds monotonically.
//! - `y·c'` is `s` (`c'` is `c` except for `c < 2⁻¹⁰²`, where the 2⁻¹²⁶ adds nothing an
//!   exponential can see), and a masked score stays −inf after the scale since `c' > 0`
//!   (`mask` is any chain of the masks that drop scores to −inf: the kernel's own `mask(..)`
//!   ([`Op::MaskWhere`]), then the tail or causal one ([`Op::MaskColumns`]); their conditions
//!   are positions, never the scores' values, or the scores would have another reader)
//!   (`c' = 0` would give `0·−inf = NaN`; with the 2⁻¹²⁶ a zero scale is exact: every unmasked
//!   score's exponential is 1, as `0·x` gives).
//! - The FMA rounds once where the multiply and the subtraction rounded twice: the
//!   probabilities may differ in their last bit, towards the exact value.
//!
//! A negative `c` would need the row minimum instead, so the fold applies only where `c` is a
//! scalar parameter times a positive constant (`scale * LOG2_E`), and marks that parameter
//! `nonnegative`: a launch with a negative value is a typed error naming it
//! ([`crate::kernel::Param::Scalar`]; such a scale runs on sm_89). It also applies only to that
//! shape: the scores read by nothing but the mask, the row max and the one subtraction that
//! feeds an exponential (a score modification between them, such as a bias or a soft cap,
//! leaves the kernel as it is). sm_90a only: that is where it was measured
//! (`docs/measurements/2026-12-03-h200-fold.txt`: with the skipped unit rescale, 4 to 10% at
//! the issue's large shapes; the headline 1x8x512x64, 32 CTAs on 132 SMs, within 1%).

use std::collections::HashMap;

use crate::error::IrError;
use crate::kernel::*;
use crate::passes::softmax_split::rename_uses;
use crate::source::{BinOp, ReduceOp};
use crate::Target;

/// The smallest normal f32, added to `c ≥ 0` so that the folded scale is never 0.
const TINY: f32 = f32::MIN_POSITIVE;

pub fn run(kernel: Kernel) -> Result<Kernel, IrError> {
    if kernel.config.target != Target::Sm90a {
        return Ok(kernel);
    }
    match find(&kernel) {
        Some(fold) => Ok(apply(kernel, fold)),
        None => Ok(kernel),
    }
}

/// Why the fold does not apply to `kernel` (the IR before this pass), or `None` where it does.
pub fn why_not(kernel: &Kernel) -> Option<&'static str> {
    if kernel.config.target != Target::Sm90a {
        Some("sm_90a only (where it was measured)")
    } else if find(kernel).is_none() {
        Some("the scores are not `mma(q, k.t()) * c` read only by masks, one row max and one `exp2(s - m)`, with `c` a scalar parameter times a positive constant (a score modification, such as a bias or a soft cap, keeps the multiply)")
    } else {
        None
    }
}

/// The name of the parameter the fold made `nonnegative` in `kernel` (the IR after this pass),
/// if it folded (the fold alone marks parameters so).
pub fn folded_param(kernel: &Kernel) -> Option<&str> {
    kernel.params.iter().find_map(|p| match p {
        Param::Scalar { name, nonnegative: true } => Some(name.as_str()),
        _ => None,
    })
}

/// The values of one foldable softmax (names as in the module's sketch).
struct Fold {
    /// The scalar parameter `c` is a positive multiple of.
    param: usize,
    x: Value,
    c: Value,
    s: Value,
    y: Option<Value>,
    r: Value,
    sub: Value,
    p: Value,
    m: Value,
}

fn find(kernel: &Kernel) -> Option<Fold> {
    let mut defs: HashMap<Value, &Op> = HashMap::new();
    let mut users: HashMap<Value, Vec<&Op>> = HashMap::new();
    kernel.walk(&mut |inst| {
        if let Some(d) = inst.op.def() {
            defs.insert(d, &inst.op);
        }
        for u in inst.op.uses() {
            users.entry(u).or_default().push(&inst.op);
        }
    });
    let only_user = |v: Value| match users.get(&v).map(|u| &u[..]) {
        Some([one]) => Some(*one),
        _ => None,
    };
    let mut folds = kernel.values.iter().enumerate().filter_map(|(i, _)| {
        let s = Value(i as u32);
        let Some(Op::Binary { op: BinOp::Mul, lhs, rhs, .. }) = defs.get(&s) else { return None };
        let (x, c) = if kernel.ty(*rhs) == Type::Scalar { (*lhs, *rhs) } else { (*rhs, *lhs) };
        if !matches!(defs.get(&x)?, Op::Mma { acc: None, .. } | Op::MmaAsync { accumulate: false, .. }) {
            return None;
        }
        if !matches!(kernel.ty(x), Type::Frag { elem: Elem::F32, .. }) || only_user(x)?.def() != Some(s) {
            return None;
        }
        let param = positive_multiple_of_param(c, &defs)?;
        // Through the masks that drop scores to -inf (the kernel's own `mask(..)`, then the
        // tail or causal one), each the only reader of the one before: a positive scale
        // commutes with them (-inf · c' = -inf).
        let mut scores = s;
        while let Some(
            Op::MaskWhere { dst, src, .. } | Op::MaskColumns { dst, src, fill: ColumnFill::NegInf, .. },
        ) = only_user(scores)
        {
            if *src != scores {
                break;
            }
            scores = *dst;
        }
        let y = (scores != s).then_some(scores);
        // The scores (masked or not) feed one row max and one subtraction, whose only reader is
        // an exponential.
        let readers = users.get(&scores)?;
        let [first, second] = readers[..] else { return None };
        let (reduce, sub) = match (first, second) {
            (r @ Op::Reduce { .. }, b @ Op::Binary { .. })
            | (b @ Op::Binary { .. }, r @ Op::Reduce { .. }) => (r, b),
            _ => return None,
        };
        let Op::Reduce { dst: r, op: ReduceOp::Max, .. } = *reduce else { return None };
        let Op::Binary { dst: sub, op: BinOp::Sub, lhs, rhs: m } = *sub else { return None };
        if lhs != scores || !matches!(kernel.ty(m), Type::Row { .. }) {
            return None;
        }
        let Op::Exp2 { dst: p, .. } = only_user(sub)? else { return None };
        // The row max's readers are elementwise ops, which `rename_uses` reaches.
        if !users.get(&r)?.iter().all(|op| matches!(op, Op::Binary { .. })) {
            return None;
        }
        Some(Fold { param, x, c, s, y, r, sub, p: *p, m })
    });
    let fold = folds.next()?;
    // One softmax a kernel: a second candidate (a backward's recomputed probabilities next to
    // another) is left alone rather than folded half-way.
    folds.next().is_none().then_some(fold)
}

/// The scalar parameter that uniform `c` is a positive constant multiple of (`p`, `p * k` or
/// `k * p` with `k > 0`), if it is one.
fn positive_multiple_of_param(c: Value, defs: &HashMap<Value, &Op>) -> Option<usize> {
    let param = |v: Value| match defs.get(&v) {
        Some(Op::ScalarParam { param, .. }) => Some(*param),
        _ => None,
    };
    let positive =
        |v: Value| matches!(defs.get(&v), Some(Op::Const { value, .. }) if *value > 0.0 && value.is_finite());
    match defs.get(&c)? {
        Op::ScalarParam { param, .. } => Some(*param),
        Op::Binary { op: BinOp::Mul, lhs, rhs, .. } if positive(*rhs) => param(*lhs),
        Op::Binary { op: BinOp::Mul, lhs, rhs, .. } if positive(*lhs) => param(*rhs),
        _ => None,
    }
}

fn new_value(kernel: &mut Kernel, ty: Type, name: &str) -> Value {
    kernel.values.push(ValueData { ty, name: name.to_string(), mutable: false });
    Value(kernel.values.len() as u32 - 1)
}

fn apply(mut kernel: Kernel, f: Fold) -> Kernel {
    if let Some(Param::Scalar { nonnegative, .. }) = kernel.params.get_mut(f.param) {
        *nonnegative = true;
    }
    // Where the scores were scaled: c' = c + 2⁻¹²⁶.
    let (tiny, c_pos) =
        (new_value(&mut kernel, Type::Scalar, "tiny"), new_value(&mut kernel, Type::Scalar, "scale_folded"));
    let at_scale = vec![
        Op::Const { dst: tiny, value: TINY },
        Op::Binary { dst: c_pos, op: BinOp::Add, lhs: f.c, rhs: tiny },
    ];
    let (r_ty, r_name) = (kernel.ty(f.r), kernel.value(f.r).name.clone());
    let r_scaled = new_value(&mut kernel, r_ty, &r_name);
    let scores = f.y.unwrap_or(f.x);
    let mut edit = Edit {
        after: HashMap::from([(
            f.r,
            vec![Op::Binary { dst: r_scaled, op: BinOp::Mul, lhs: f.r, rhs: c_pos }],
        )]),
        instead: HashMap::from([
            (f.s, at_scale),
            (f.sub, vec![]),
            (f.p, vec![Op::Exp2Scaled { dst: f.p, src: scores, scale: c_pos, sub: f.m }]),
        ]),
        // The mask (or, unmasked, the row max) reads the unscaled scores; the row max's readers
        // read it scaled (the inserted multiply itself is not renamed).
        rename: HashMap::from([(f.s, f.x), (f.r, r_scaled)]),
    };
    let mut body = std::mem::take(&mut kernel.body);
    edit.block(&mut body);
    kernel.body = body;
    kernel
}

/// The rewrite, by the values the instructions define.
struct Edit {
    /// Ops inserted after the instruction that defines the key.
    after: HashMap<Value, Vec<Op>>,
    /// Ops that replace the instruction that defines the key.
    instead: HashMap<Value, Vec<Op>>,
    /// Operand renames, applied to every instruction of the kernel.
    rename: HashMap<Value, Value>,
}

impl Edit {
    fn block(&mut self, block: &mut Block) {
        let mut out = Vec::with_capacity(block.insts.len());
        for mut inst in std::mem::take(&mut block.insts) {
            let def = inst.op.def();
            let like = |op: Op| Inst { op, role: inst.role, span: inst.span };
            if let Some(ops) = def.and_then(|d| self.instead.remove(&d)) {
                out.extend(ops.into_iter().map(like));
                continue;
            }
            let after: Vec<Inst> =
                def.and_then(|d| self.after.remove(&d)).unwrap_or_default().into_iter().map(like).collect();
            inst.op = rename_uses(inst.op, &self.rename);
            for inner in inst.op.blocks_mut() {
                self.block(inner);
            }
            out.push(inst);
            out.extend(after);
        }
        block.insts = out;
    }
}
