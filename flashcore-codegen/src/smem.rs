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
    /// never overlap in time because each one ends before the next begins (see `emit`). With
    /// split-KV, one such region per group of compute warps (group `g`'s at
    /// `offset + g · row_tile_bytes`), since every group loads all rows of the Q tile.
    pub row_tile_region: Option<u32>,
    /// Bytes of one group's row-tile region: `TILE_M · D · 2`.
    pub row_tile_bytes: u32,
    /// How many row-tile regions there are (each `kv_splits` groups' worth): one per loaded
    /// tile that stays in shared memory ([`kept_a_operands`]), and one more that the other
    /// loads pass through when there are such loads; stores pass through the first. Region
    /// `r` of group `g` is at `row_tile_region + (r · groups + g) · row_tile_bytes`.
    pub row_tile_slots: u32,
    /// The region of each `load` result: kept ones their own, the rest the shared one.
    pub load_slots: HashMap<Value, u32>,
    /// The loaded tiles that stay in shared memory ([`kept_a_operands`]).
    pub kept_a: Vec<Value>,
    /// Split-KV: where groups 1.. leave their online-softmax states for group 0
    /// (`merge_kv_splits`): per warp of those groups, `merge_regs` registers of 32 lanes × 4 bytes.
    pub merge_region: Option<u32>,
    /// Whether the merge region lies in the K/V ring's memory (the ring is idle while the
    /// merge runs: see [`plan`]); a merge then waits for every warp to be done reading it.
    pub merge_in_ring: bool,
    /// Registers a warp publishes for the merge: its row max, row sum and accumulator.
    pub merge_regs: u32,
    /// Column reductions: each compute warp's partial columns, `warps × col_region_cols` f32s
    /// (warp `w`'s column `c` at `col_region + 4·(w · col_region_cols + c)`).
    pub col_region: Option<u32>,
    /// The most columns one warp's fragments hold among the column reductions.
    pub col_region_cols: u32,
    /// A 1024-byte block of zeros, written once before the roles split, where a view of a ring
    /// buffer reads while its `zero_unless` counter is 0 (the overlap pass's previous tile on a
    /// work item's first iteration): a wgmma descriptor with no strides reads only it.
    pub zero_block: Option<u32>,
    /// Split-KV across CTAs: a word where thread 0 tells the CTA whether it is its work item's
    /// last to arrive.
    pub combine_flag: Option<u32>,
    /// Offset of each ring buffer (slot `i` at `offset + i * slot_bytes`).
    pub buffer_offsets: Vec<u32>,
    /// Bytes of one slot of each ring buffer.
    pub slot_bytes: Vec<u32>,
    /// Offset of each mbarrier ring (8 bytes a barrier).
    pub mbarrier_offsets: Vec<u32>,
    /// Offset of each channel: per sending warp, its registers, each 32 lanes × 4 bytes.
    pub channel_offsets: Vec<u32>,
    /// Bytes of each channel.
    pub channel_bytes: Vec<u32>,
    pub total_bytes: u32,
}

pub fn plan(kernel: &Kernel) -> SmemPlan {
    let cfg = &kernel.config;
    let mut next = 0u32;
    let mut alloc = |bytes: u32, align: u32| {
        let offset = next.div_ceil(align) * align;
        next = offset + bytes;
        offset
    };
    let mbarrier_offsets = kernel.mbarriers.iter().map(|r| alloc(8 * r.slots, BUFFER_ALIGN)).collect();
    let channel_bytes: Vec<u32> = kernel
        .channels
        .iter()
        .map(|c| cfg.warps * 128 * crate::layout::register_count(cfg, &c.ty).unwrap_or(0) as u32)
        .collect();
    let channel_offsets = channel_bytes.iter().map(|bytes| alloc(*bytes, BUFFER_ALIGN)).collect();
    // Loads pass through the region, and so do stores of fragment tiles, but for those that
    // leave through a ring slot (`via`).
    let mut needs_row_tile = false;
    kernel.walk(&mut |inst| match &inst.op {
        Op::Load { .. } => needs_row_tile = true,
        Op::Store { dst, via: None, .. } => {
            needs_row_tile |= kernel.tensor(dst.param).is_some_and(|t| !t.is_rows());
        }
        _ => {}
    });
    let row_tile_bytes = cfg.tile_m * row_bytes(cfg);
    let kept = kept_a_operands(kernel);
    let mut load_slots = HashMap::new();
    kernel.walk(&mut |inst| {
        if let Op::Load { dst, .. } = inst.op {
            let slot = kept.iter().position(|k| *k == dst).unwrap_or(kept.len());
            load_slots.insert(dst, slot as u32);
        }
    });
    let row_tile_slots = load_slots.values().map(|s| s + 1).max().unwrap_or(1);
    let wgmma_align = tile_align(cfg);
    let row_tile_region =
        needs_row_tile.then(|| alloc(row_tile_slots * cfg.kv_splits.max(1) * row_tile_bytes, wgmma_align));
    let mut merge_regs = 0;
    kernel.walk(&mut |inst| {
        if let Op::MergeSplits { max, sum, acc } = inst.op {
            merge_regs = crate::layout::state_registers(kernel, [max, sum, acc]);
        }
    });
    let partner_warps = cfg.warps - cfg.warps_per_split();
    let merge_bytes = partner_warps * merge_regs * 128;
    // The merge runs after the K/V loop has drained its ring, and every warp that fills the
    // ring takes part in it (no producer warps running ahead into the next work item): then the
    // ring's memory holds the merge region too.
    let merge_in_ring = merge_regs > 0
        && !kernel.buffers.is_empty()
        && cfg.load_warps == 0
        && cfg.softmax_warps == 0
        && !cfg.overlap
        && !cfg.tma
        && !cfg.pingpong;
    let merge_region = (merge_regs > 0 && !merge_in_ring).then(|| alloc(merge_bytes, BUFFER_ALIGN));
    let mut col_region_cols = 0;
    kernel.walk(&mut |inst| {
        if let Op::ColReduce { src, .. } = inst.op {
            if let flashcore_ir::kernel::Type::Frag { cols, .. } = kernel.ty(src) {
                col_region_cols = col_region_cols.max(cols.per_warp(cfg));
            }
        }
    });
    let col_region = (col_region_cols > 0).then(|| alloc(cfg.warps * col_region_cols * 4, BUFFER_ALIGN));
    let slot_bytes: Vec<u32> = kernel.buffers.iter().map(|b| b.rows.size(cfg) * row_bytes(cfg)).collect();
    let buffer_offsets: Vec<u32> = kernel
        .buffers
        .iter()
        .zip(&slot_bytes)
        .map(|(b, bytes)| alloc(bytes * b.slots, wgmma_align))
        .collect();
    let merge_region = match (merge_in_ring, buffer_offsets.first()) {
        // The ring's buffers lie one after another from the first: the region starts there,
        // and runs on past the ring's end if the ring is the smaller.
        (true, Some(&ring)) => {
            let last = kernel.buffers.len() - 1;
            let ring_end = buffer_offsets[last] + slot_bytes[last] * kernel.buffers[last].slots;
            if ring + merge_bytes > ring_end {
                alloc(ring + merge_bytes - ring_end, 1);
            }
            Some(ring)
        }
        _ => merge_region,
    };
    let mut zero_views = false;
    kernel.walk(&mut |inst| zero_views |= matches!(inst.op, Op::StageView { zero_unless: Some(_), .. }));
    let zero_block = zero_views.then(|| alloc(zero_block_bytes(cfg), tile_align(cfg)));
    let mut combines = false;
    kernel.walk(&mut |inst| combines |= matches!(inst.op, Op::CombineCtas { .. }));
    let combine_flag = combines.then(|| alloc(16, 16));
    SmemPlan {
        zero_block,
        combine_flag,
        row_tile_region,
        row_tile_bytes,
        row_tile_slots,
        load_slots,
        kept_a: kept,
        merge_region,
        merge_in_ring,
        merge_regs,
        col_region,
        col_region_cols,
        buffer_offsets,
        slot_bytes,
        mbarrier_offsets,
        channel_offsets,
        channel_bytes,
        total_bytes: next,
    }
}

/// Bytes of [`SmemPlan::zero_block`] (an sm_90a tile, aligned like one: [`tile_align`]). A
/// descriptor with no strides reads only its first 1024 bytes, but compute-sanitizer counts a
/// wgmma operand of `n` columns as the `n x 16 x 2` bytes from its start (4 KB for P.V at
/// D = 128), so the block covers the widest operand a view of it can be:
/// `32 x max(head_dim, tile_n)` bytes, in whole swizzle periods.
pub fn zero_block_bytes(cfg: &flashcore_ir::Config) -> u32 {
    (32 * cfg.head_dim.max(cfg.tile_n)).next_multiple_of(tile_align(cfg))
}

/// The alignment of the tiles an mma reads from shared memory (the ring buffers and the row-tile
/// region), and of the shared window itself: [`BUFFER_ALIGN`]; on sm_90a 1024 bytes, since
/// wgmma's 128-byte swizzle repeats every 1024 bytes of address (regions and slots are whole
/// multiples of it).
pub fn tile_align(cfg: &flashcore_ir::Config) -> u32 {
    match cfg.target.ptx() {
        flashcore_ir::Target::Sm90a => 1024,
        _ => BUFFER_ALIGN,
    }
}

/// With `Config::a_in_smem` or on sm_90a, the `load` results that stay in shared memory, where
/// the load put them, in program order: those whose every use is as the A operand of an mma
/// (each mma re-reads its fragments with ldmatrix; a wgmma reads them through a descriptor).
pub fn kept_a_operands(kernel: &Kernel) -> Vec<Value> {
    if !kernel.config.a_in_smem && kernel.config.target != flashcore_ir::Target::Sm90a {
        return vec![];
    }
    let mut loads = vec![];
    kernel.walk(&mut |inst| {
        if let Op::Load { dst, .. } = inst.op {
            loads.push(dst);
        }
    });
    loads.retain(|v| {
        let mut only_a = true;
        kernel.walk(&mut |inst| {
            if inst.op.uses().contains(v) {
                only_a &= inst.op.reads_only_as_a(*v);
            }
        });
        only_a
    });
    loads
}
