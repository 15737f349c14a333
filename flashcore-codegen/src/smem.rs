//! Shared-memory planning: which buffer each tile lives in, at which offset, and how many bytes
//! the kernel needs in all (the dynamic shared memory the runtime requests at launch).

use std::collections::HashMap;

use flashcore_ir::kernel::{Kernel, Op, Value};

use crate::layout::row_bytes;

/// Buffers are 128-byte aligned so that every 16-byte chunk of a row is aligned for cp.async
/// and ldmatrix, and buffers start on a bank-group boundary.
pub const BUFFER_ALIGN: u32 = 128;

#[derive(Clone, Debug, PartialEq)]
pub struct SmemPlan {
    /// The `[TILE_M][D]` region that register loads (Q) and stores (O) pass through; their uses
    /// never overlap in time because each one ends before the next begins (see `emit`).
    pub row_tile_region: Option<u32>,
    /// Buffer offset of each staged tile.
    pub stage_offsets: HashMap<Value, u32>,
    pub total_bytes: u32,
}

pub fn plan(kernel: &Kernel) -> SmemPlan {
    let cfg = &kernel.config;
    let mut next = 0u32;
    let mut alloc = |bytes: u32| {
        let offset = next.div_ceil(BUFFER_ALIGN) * BUFFER_ALIGN;
        next = offset + bytes;
        offset
    };
    let mut needs_row_tile = false;
    let mut stages = vec![];
    kernel.walk(&mut |inst| match &inst.op {
        Op::Load { .. } | Op::Store { .. } => needs_row_tile = true,
        Op::Stage { dst, src } => {
            let rows = match kernel.ty(src.coords[2]) {
                flashcore_ir::Type::Index { tile: Some(t), .. } => t.size(cfg),
                _ => 1,
            };
            stages.push((*dst, rows));
        }
        _ => {}
    });
    let row_tile_region = needs_row_tile.then(|| alloc(cfg.tile_m * row_bytes(cfg)));
    let mut stage_offsets = HashMap::new();
    for (value, rows) in stages {
        stage_offsets.insert(value, alloc(rows * row_bytes(cfg) * cfg.stages));
    }
    SmemPlan {
        row_tile_region,
        stage_offsets,
        total_bytes: next,
    }
}
