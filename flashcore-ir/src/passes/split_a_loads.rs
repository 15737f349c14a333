//! A loaded tile that is a matmul's A operand and also read otherwise, loaded twice (sm_90a).
//! wgmma reads a loaded A operand from shared memory through a descriptor; a tile that other
//! ops read too would have to stay in registers as a register A operand across the K/V loop,
//! which ptxas 13.0 miscompiles for wgmma (`flashcore_codegen::target::support` refused such a
//! kernel, the backward's dQ kernel among them: its `dO` feeds both `Δ = rowsum(dO ∘ O)` and
//! `dP = dO·Vᵀ`). This pass gives the matmuls their own load of the tile, right after the first:
//!
//! ```text
//! dof = load(d_out[b, h, qt])              dof = load(d_out[b, h, qt])
//! dd = row_sum(dof * of)            =>     dof_a = load(d_out[b, h, qt])
//! ... dp = mma(dof, vsᵀ) ...               dd = row_sum(dof * of)
//!                                          ... dp = mma(dof_a, vsᵀ) ...
//! ```
//!
//! The matmuls' copy stays in shared memory (only A operands read it); the other stays in
//! registers for its other readers, which are done with it before the loop in the kernels that
//! have this shape. The cost is one more read of the tile from global memory a work item.

use std::collections::HashMap;

use crate::error::IrError;
use crate::kernel::*;
use crate::Target;

pub fn run(mut kernel: Kernel) -> Result<Kernel, IrError> {
    if kernel.config.target != Target::Sm90a {
        return Ok(kernel);
    }
    let shared = loads_read_as_a_and_otherwise(&kernel);
    if shared.is_empty() {
        return Ok(kernel);
    }
    // Each such load's copy for the matmuls: a new value of the same type.
    let mut copies: HashMap<Value, Value> = HashMap::new();
    for &v in &shared {
        let data = ValueData { name: format!("{}_a", kernel.value(v).name), ..kernel.value(v).clone() };
        kernel.values.push(data);
        copies.insert(v, Value(kernel.values.len() as u32 - 1));
    }
    let mut body = std::mem::take(&mut kernel.body);
    rewrite(&mut body, &copies);
    kernel.body = body;
    Ok(kernel)
}

/// The `load` results that are the A operand of a matmul and are read by anything else too.
fn loads_read_as_a_and_otherwise(kernel: &Kernel) -> Vec<Value> {
    let mut loads = vec![];
    kernel.walk(&mut |inst| {
        if let Op::Load { dst, .. } = inst.op {
            loads.push(dst);
        }
    });
    loads.retain(|v| {
        let (mut as_a, mut otherwise) = (false, false);
        kernel.walk(&mut |inst| {
            if !inst.op.uses().contains(v) {
                return;
            }
            if inst.op.reads_only_as_a(*v) {
                as_a = true;
            } else {
                otherwise = true;
            }
        });
        as_a && otherwise
    });
    loads
}

/// Inserts each copy's load after its original and points the matmuls' A operands at it.
fn rewrite(block: &mut Block, copies: &HashMap<Value, Value>) {
    let mut out = Vec::with_capacity(block.insts.len());
    for mut inst in std::mem::take(&mut block.insts) {
        match &mut inst.op {
            Op::Mma { a, .. } | Op::MmaAsync { a, .. } => {
                if let Some(copy) = copies.get(a) {
                    *a = *copy;
                }
            }
            _ => {}
        }
        for inner in inst.op.blocks_mut() {
            rewrite(inner, copies);
        }
        let copy = match &inst.op {
            Op::Load { dst, src } => copies.get(dst).map(|c| Op::Load { dst: *c, src: src.clone() }),
            _ => None,
        };
        let (role, span) = (inst.role, inst.span);
        out.push(inst);
        if let Some(op) = copy {
            out.push(Inst { op, role, span });
        }
    }
    block.insts = out;
}
