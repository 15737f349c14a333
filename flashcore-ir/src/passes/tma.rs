//! The TMA pass (sm_90a, `Config::tma`, a producer warpgroup): the load warps' tile copies
//! become bulk tensor copies. Each producer iteration's
//!
//! ```text
//! wait $empty[it]                       wait $empty[it]
//! cp.async @k[it] <- k[..]              arrive $full[it] expecting BYTES bytes
//! cp.async @v[it] <- v[..]       =>     tma @k[it] <- k[..] completing $full[it]
//! arrive $full[it] when .. land         tma @v[it] <- v[..] completing $full[it]
//! ```
//!
//! (and likewise for each ring the overlap pass split off): one thread announces the bytes of
//! the slot's tiles (`mbarrier.arrive.expect_tx`) and issues one `cp.async.bulk.tensor` per
//! 64-column block of each tile, through a tensor map of the tensor that the runtime encodes
//! (128-byte swizzle, the layout wgmma's descriptors read). The phase completes when that one
//! arrival and all the bytes are in, so `full` expects one arrival instead of one per producer
//! thread, and the copy engine's writes reach the tensor cores without a proxy fence. The
//! tensor map's bounds zero-fill rows past the sequence's end and heads past the tensor (a
//! computed GQA head), as the cp.async path's zero fill did.
//!
//! It applies only where that is exact: sm_90a with a producer warpgroup, `D` a multiple of 64
//! (one 128-byte swizzle span per box), no variable-length sequences (packed sequences share
//! one tensor, so its bounds would not stop a tile at its own sequence's end), and every producer
//! copy of the current iteration's tile (no lookahead). Elsewhere the copies stay cp.async
//! ([`why_not`] says why).

use crate::error::IrError;
use crate::kernel::*;
use crate::source::Role;
use crate::Target;

/// The most rows one box of a tensor map may have.
const MAX_BOX_ROWS: u32 = 256;

pub fn run(mut kernel: Kernel) -> Result<Kernel, IrError> {
    if why_not(&kernel).is_some() {
        return Ok(kernel);
    }
    let mut body = std::mem::take(&mut kernel.body);
    let mut fed = vec![false; kernel.mbarriers.len()];
    for inst in &mut body.insts {
        let Op::Roles { groups } = &mut inst.op else { continue };
        for group in groups.iter_mut().filter(|g| g.roles.contains(&Role::Load)) {
            rewrite_block(&kernel, &mut group.body, &mut fed);
            // No cp.async is left in flight at the producer's exit: its closing commit and
            // wait go.
            group.body.insts.retain(|i| !matches!(i.op, Op::CommitGroup | Op::WaitGroup { .. }));
        }
    }
    for (ring, fed) in kernel.mbarriers.iter_mut().zip(fed) {
        if fed {
            // One arrival (the expect_tx) per phase; the copies complete the bytes.
            ring.count = 1;
            ring.tx = true;
        }
    }
    kernel.body = body;
    Ok(kernel)
}

/// Rewrites the pipelined loops in `block` (and in range loops and work loops in it).
fn rewrite_block(kernel: &Kernel, block: &mut Block, fed: &mut [bool]) {
    for inst in &mut block.insts {
        match &mut inst.op {
            Op::Tiles { body, .. } | Op::Loop { body, .. } => rewrite_block(kernel, body, fed),
            Op::Pipeline { body, .. } => rewrite_iteration(kernel, body, fed),
            _ => {}
        }
    }
}

/// Each run of copies closed by an async arrival on `ring[it]` becomes an expect_tx arrival
/// with their bytes, then the bulk copies completing on `ring[it]`.
fn rewrite_iteration(kernel: &Kernel, body: &mut Block, fed: &mut [bool]) {
    let mut out = vec![];
    let mut copies: Vec<Inst> = vec![];
    for inst in std::mem::take(&mut body.insts) {
        match inst.op {
            Op::AsyncCopy { .. } => copies.push(inst),
            Op::MbarArriveAsync { ring, iter } => {
                let bytes = copies
                    .iter()
                    .map(|c| match c.op {
                        Op::AsyncCopy { buffer, .. } => kernel.slot_tile_bytes(buffer),
                        _ => 0,
                    })
                    .sum();
                out.push(Inst { op: Op::MbarExpectTx { ring, iter, bytes }, ..inst.clone() });
                for c in copies.drain(..) {
                    let Op::AsyncCopy { buffer, src, slot, .. } = c.op else { continue };
                    out.push(Inst { op: Op::TmaCopy { buffer, src, slot, ring }, ..c });
                }
                fed[ring.0 as usize] = true;
            }
            _ => out.push(inst),
        }
    }
    out.extend(copies);
    body.insts = out;
}

/// Why the pass leaves the producer's copies as cp.async, or `None` when it rewrites them.
pub fn why_not(kernel: &Kernel) -> Option<String> {
    if let Err(why) = applies(&kernel.config) {
        return Some(why);
    }
    let mut why = None;
    let mut producer = false;
    kernel.walk(&mut |inst| {
        let Op::Roles { groups } = &inst.op else { return };
        for g in groups.iter().filter(|g| g.roles.contains(&Role::Load)) {
            producer = true;
            kernel.walk_block(&g.body, &mut |i| {
                if let Op::AsyncCopy { buffer, src, ahead, .. } = &i.op {
                    let rows = kernel.slot_rows(*buffer);
                    if *ahead != 0 {
                        why.get_or_insert("a producer copy runs ahead of its iteration".to_string());
                    } else if rows > MAX_BOX_ROWS {
                        why.get_or_insert(format!(
                            "tiles of {rows} rows: a tensor map's box holds at most {MAX_BOX_ROWS}"
                        ));
                    } else if kernel.tensor(src.param).is_none_or(|t| t.is_rows()) {
                        why.get_or_insert(
                            "a producer copy of something other than a [B, H, S, D] tensor".to_string(),
                        );
                    }
                }
            });
        }
    });
    if !producer {
        return Some("no producer role group (the warp-specialize pass did not run)".into());
    }
    why
}

/// What the config alone decides: whether the producer's copies become bulk tensor copies,
/// given the producer role group the warp-specialize pass makes (codegen sizes the producer's
/// registers by it).
pub fn applies(cfg: &crate::Config) -> Result<(), String> {
    if !cfg.tma {
        return Err("off (Config::tma, the `tma` setting)".into());
    }
    if cfg.target != Target::Sm90a {
        return Err("bulk tensor copies (TMA) are sm_90a's".into());
    }
    if cfg.load_warps == 0 {
        return Err("TMA needs the producer warpgroup (load_warps = 4) to issue the copies".into());
    }
    if !cfg.head_dim.is_multiple_of(64) {
        return Err(format!(
            "head_dim = {}: a tensor map's box is 64 columns (one 128-byte swizzle span)",
            cfg.head_dim
        ));
    }
    if cfg.varlen {
        return Err("varlen: packed sequences share one tensor, whose bounds would not zero-fill past each sequence's end".into());
    }
    Ok(())
}

/// The fewest registers each producer thread keeps after `setmaxnreg.dec` (the compute
/// warpgroups' share is computed from it; the producer then keeps whatever they leave of the
/// CTA's pool, [`crate::registers::register_split`]): with bulk tensor copies one thread issues a few copies from the tile
/// indices (24, the instruction's floor, as FlashAttention-3's producer), with cp.async every
/// producer thread computes its chunks' addresses (40).
pub fn producer_registers(cfg: &crate::Config) -> u32 {
    if applies(cfg).is_ok() {
        24
    } else {
        40
    }
}
