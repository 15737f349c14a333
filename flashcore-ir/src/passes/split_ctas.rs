//! The split-KV-across-CTAs pass (FlashDecoding): with `Config::kv_ctas > 1`, each work item
//! is run by `kv_ctas` CTAs, CTA `c` walking the `c`-th of `kv_ctas` equal ranges of the work
//! loop's K/V loop (the code generator splits the grid and the loop's range). After the loop each
//! CTA holds an online-softmax state `(m, l, acc)` of the same rows over its own keys; this pass
//! inserts the `combine_ctas` right after the loop (after an in-CTA `merge_kv_splits`, if any),
//! before anything reads them: the states meet in a workspace, and the last CTA of the item
//! merges them by log-sum-exp and goes on to the stores.
//!
//! As for the in-CTA split, merging is only sound for the online-softmax recurrence, so the
//! loop must carry exactly it (`split_kv::online_softmax_state`); any other loop is rejected at
//! its span.

use crate::error::{IrError, LowerError};
use crate::kernel::*;
use crate::source::{Role, SpanId};

pub fn run(mut kernel: Kernel) -> Result<Kernel, IrError> {
    if kernel.config.kv_ctas < 2 {
        return Ok(kernel);
    }
    let mut body = std::mem::take(&mut kernel.body);
    let result = insert_combine(&kernel, &mut body);
    kernel.body = body;
    result.map(|()| kernel)
}

fn insert_combine(kernel: &Kernel, body: &mut Block) -> Result<(), IrError> {
    let work_at = super::work_loop(body, "kv_ctas")?;
    let Op::Tiles { body: work, .. } = &mut body.insts[work_at].op else {
        return Err(LowerError::new(SpanId::NONE, "kv_ctas needs a `tiles(..)` work loop").into());
    };
    let loops: Vec<usize> =
        (0..work.insts.len()).filter(|&i| matches!(work.insts[i].op, Op::Pipeline { .. })).collect();
    let [at] = loops[..] else {
        return Err(LowerError::new(
            SpanId::NONE,
            "kv_ctas splits exactly one K/V loop directly in the work loop (not inside a range loop)",
        )
        .into());
    };
    let Op::Pipeline { body: loop_body, .. } = &work.insts[at].op else { unreachable!() };
    let span = work.insts[at].span;
    let (max, sum, acc) = super::split_kv::online_softmax_state(&kernel.values, loop_body)
        .ok_or_else(|| LowerError::new(span, NOT_ONLINE_SOFTMAX))?;
    // After the in-CTA merge, when there is one: the CTA's state is then whole.
    let after = match work.insts.get(at + 1).map(|i| &i.op) {
        Some(Op::MergeSplits { .. }) => at + 2,
        _ => at + 1,
    };
    work.insts.insert(after, Inst { op: Op::CombineCtas { max, sum, acc }, role: Some(Role::Compute), span });
    Ok(())
}

const NOT_ONLINE_SOFTMAX: &str = "kv_ctas > 1 merges the K/V loop's online-softmax states of several CTAs by log-sum-exp, so the loop must carry a running max `m = max(m, row_max(s))`, a sum `l = l * exp2(m - m_new) + row_sum(p)` and an accumulator rescaled by the same factor and updated by `mma(.., acc)`";
