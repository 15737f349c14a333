//! The split-KV pass: with `Config::kv_splits > 1`, the compute warps form groups that run the
//! same K/V loop over disjoint keys of each tile (the code generator gives group `g` the keys
//! `g·TILE_N/kv_splits ..` of every staged tile), so after the loop each group holds an
//! online-softmax state `(m, l, acc)` of the same rows over its own keys. This pass finds that
//! state in the loop and inserts the `merge_kv_splits` that combines the groups' states by
//! log-sum-exp right after the loop, before anything reads them.
//!
//! Merging is only sound for the online-softmax recurrence, so the pass checks the loop carries
//! exactly it: a running max `m ← max(m, row_max(..))`, a factor `α = exp2(m − m_new)`, a sum
//! `l ← l·α + row_sum(..)` and an accumulator `acc ← acc·α` then `acc ← mma(.., acc)`. Any
//! other loop is rejected at the loop's span instead of being merged wrongly.

use std::collections::HashMap;

use crate::error::{IrError, LowerError};
use crate::kernel::*;
use crate::source::{BinOp, ReduceOp, Role, SpanId};

pub fn run(mut kernel: Kernel) -> Result<Kernel, IrError> {
    if kernel.config.kv_splits < 2 {
        return Ok(kernel);
    }
    let mut body = std::mem::take(&mut kernel.body);
    let result = insert_merge(&kernel, &mut body);
    kernel.body = body;
    result.map(|()| kernel)
}

fn insert_merge(kernel: &Kernel, body: &mut Block) -> Result<(), IrError> {
    let work_at = super::work_loop(body, "split-KV")?;
    let Op::Tiles { body: work, .. } = &mut body.insts[work_at].op else {
        return Err(LowerError::new(SpanId::NONE, "split-KV needs a `tiles(..)` work loop").into());
    };
    let loops: Vec<usize> =
        (0..work.insts.len()).filter(|&i| matches!(work.insts[i].op, Op::Pipeline { .. })).collect();
    let [at] = loops[..] else {
        return Err(LowerError::new(
            SpanId::NONE,
            "split-KV needs exactly one K/V loop directly in the work loop (not inside a range loop)",
        )
        .into());
    };
    let Op::Pipeline { body: loop_body, .. } = &work.insts[at].op else { unreachable!() };
    let span = work.insts[at].span;
    let (max, sum, acc) = online_softmax_state(&kernel.values, loop_body)
        .ok_or_else(|| LowerError::new(span, NOT_ONLINE_SOFTMAX))?;
    work.insts
        .insert(at + 1, Inst { op: Op::MergeSplits { max, sum, acc }, role: Some(Role::Compute), span });
    Ok(())
}

const NOT_ONLINE_SOFTMAX: &str = "kv_splits > 1 merges the K/V loop's online-softmax states by log-sum-exp, so the loop must carry a running max `m = max(m, row_max(s))`, a sum `l = l * exp2(m - m_new) + row_sum(p)` and an accumulator rescaled by the same factor and updated by `mma(.., acc)`";

/// The loop's `(m, l, acc)`, if its assignments are exactly the online-softmax recurrence.
pub(crate) fn online_softmax_state(values: &[ValueData], body: &Block) -> Option<(Value, Value, Value)> {
    let defs: HashMap<Value, &Op> =
        body.insts.iter().filter_map(|i| i.op.def().map(|d| (d, &i.op))).collect();
    let def = |v: Value| defs.get(&v).copied();
    let binary = |v: Value, want: BinOp| match def(v) {
        Some(Op::Binary { op, lhs, rhs, .. }) if *op == want => Some((*lhs, *rhs)),
        _ => None,
    };
    let reduce = |v: Value, want: ReduceOp| matches!(def(v), Some(Op::Reduce { op, .. }) if *op == want);
    let mut assigns: Vec<(Value, Value)> = vec![];
    for i in &body.insts {
        if let Op::Assign { dst, src } = i.op {
            assigns.push((dst, src));
        }
    }
    // m <- max(m, row_max(..))
    let maxes: Vec<(Value, Value)> = assigns
        .iter()
        .copied()
        .filter(|&(m, new)| {
            binary(new, BinOp::Max).is_some_and(|(a, b)| {
                (a == m && reduce(b, ReduceOp::Max)) || (b == m && reduce(a, ReduceOp::Max))
            })
        })
        .collect();
    let [(m, m_new)] = maxes[..] else { return None };
    // alpha = exp2(m - m_new)
    let is_alpha = |v: Value| match def(v) {
        Some(Op::Exp2 { src, .. }) => binary(*src, BinOp::Sub) == Some((m, m_new)),
        _ => false,
    };
    // x * alpha (either order), returning x
    let scaled = |v: Value| {
        binary(v, BinOp::Mul).and_then(|(a, b)| {
            if is_alpha(b) {
                Some(a)
            } else if is_alpha(a) {
                Some(b)
            } else {
                None
            }
        })
    };
    // l <- l * alpha + row_sum(..)
    let sums: Vec<Value> = assigns
        .iter()
        .filter(|&&(l, new)| {
            binary(new, BinOp::Add).is_some_and(|(a, b)| {
                (scaled(a) == Some(l) && reduce(b, ReduceOp::Sum))
                    || (scaled(b) == Some(l) && reduce(a, ReduceOp::Sum))
            })
        })
        .map(|&(l, _)| l)
        .collect();
    let [l] = sums[..] else { return None };
    // acc <- acc * alpha; acc <- mma(.., acc)
    let accs: Vec<Value> = assigns
        .iter()
        .filter(|&&(acc, new)| matches!(def(new), Some(Op::Mma { acc: Some(c), .. }) if *c == acc))
        .map(|&(acc, _)| acc)
        .filter(|&acc| assigns.iter().any(|&(dst, new)| dst == acc && scaled(new) == Some(acc)))
        .collect();
    let [acc] = accs[..] else { return None };
    // Every other loop-carried value would be left unmerged.
    let carried = assigns.iter().all(|&(dst, _)| dst == m || dst == l || dst == acc);
    let typed = matches!(values[acc.index()].ty, Type::Frag { rows: TileDim::M, elem: Elem::F32, .. });
    (carried && typed).then_some((m, l, acc))
}
