//! What each PTX target can express: the checks that decide whether a kernel and config compile
//! for `sm_90a` (else the runtime falls back to `sm_89`, which expresses every verified kernel).

use flashcore_ir::kernel::{Kernel, Op};
pub use flashcore_ir::registers::{entry_registers, register_split, RegisterSplit, CONSUMER_REGISTERS_MAX};
use flashcore_ir::Target;

/// Why `kernel` (with its config) cannot be compiled for `target`, or `Ok` when it can.
pub fn support(kernel: &Kernel, target: Target) -> Result<(), String> {
    match target {
        Target::Sm89 | Target::Auto => Ok(()),
        Target::Sm90a => sm90a_support(kernel),
    }
}

/// sm_90a's matmuls are warpgroup `wgmma`s (`emit/wgmma.rs`): each compute warp owns one
/// 16-row block of the Q tile and the compute warps form whole warpgroups, so the 64-row
/// `wgmma` accumulators are the registers the other ops expect. What it does not express yet
/// falls back to sm_89 with this reason.
pub fn sm90a_support(kernel: &Kernel) -> Result<(), String> {
    let cfg = &kernel.config;
    if cfg.softmax_warps > 0 {
        return Err(format!(
            "softmax_warps = {}: a softmax role apart from the wgmma warpgroups is not compiled for sm_90a yet",
            cfg.softmax_warps
        ));
    }
    if cfg.load_warps % 4 != 0 {
        return Err(format!(
            "load_warps = {}: on sm_90a the load role is a producer warpgroup (load_warps a multiple of 4), which gives its registers to the compute warpgroups (setmaxnreg)",
            cfg.load_warps
        ));
    }
    if cfg.kv_splits > 1 {
        return Err(format!("kv_splits = {}: split-KV groups are not warpgroups yet", cfg.kv_splits));
    }
    if cfg.warps % 4 != 0 || cfg.rows_per_warp() != 16 {
        return Err(format!(
            "tile_m = {} over warps = {}: wgmma needs whole warpgroups (warps a multiple of 4) with 16 rows a warp (tile_m = 16 · warps)",
            cfg.tile_m, cfg.warps
        ));
    }
    if cfg.head_dim % 64 != 0 {
        return Err(format!(
            "head_dim = {}: the 128-byte swizzled layout needs a multiple of 64 (D = 32 and 96 run on sm_89)",
            cfg.head_dim
        ));
    }
    // A loaded tile that is an mma A operand and also used otherwise would be a register A
    // operand live across the K/V loop, which the H200 driver's JIT miscompiles (emit/wgmma.rs).
    // The `split_a_loads` pass gives such matmuls their own load: this check guards that it ran.
    let kept = crate::smem::kept_a_operands(kernel);
    let mut loads = vec![];
    kernel.walk(&mut |inst| {
        if let Op::Load { dst, .. } = inst.op {
            loads.push(dst);
        }
    });
    let mut register_a = None;
    kernel.walk(&mut |inst| {
        if let Some((_, a, _)) = inst.op.matmul() {
            if loads.contains(&a) && !kept.contains(&a) && register_a.is_none() {
                register_a = Some(a);
            }
        }
    });
    if let Some(a) = register_a {
        return Err(format!(
            "the loaded tile `{}` is an mma A operand and is also used otherwise: it would stay in registers across the K/V loop, which ptxas 13.0 miscompiles for wgmma",
            kernel.value(a).name
        ));
    }
    let mut col_reduce = false;
    kernel.walk(&mut |inst| col_reduce |= matches!(inst.op, Op::ColReduce { .. }));
    if col_reduce {
        // Their named barrier is fine; what is untested is every other shape they need.
        return Err("column reductions are not compiled for sm_90a yet".into());
    }
    Ok(())
}

/// Why the compute warpgroups of `kernel` do not take turns issuing their matmuls
/// (`Config::pingpong`), or `None` when they do: it needs sm_90a, exactly two compute
/// warpgroups, and the overlap pass's asynchronous matmuls (the turn is handed over between
/// their issue and the wait for them).
pub fn pingpong_why_not(kernel: &Kernel) -> Option<String> {
    let cfg = &kernel.config;
    if !cfg.pingpong {
        return Some("off (Config::pingpong, the `pingpong` setting)".into());
    }
    if cfg.target != Target::Sm90a {
        return Some("the pingpong of warpgroups is sm_90a's".into());
    }
    if cfg.warps != 8 || cfg.kv_splits > 1 || cfg.softmax_warps > 0 {
        return Some(format!(
            "warps = {}: the pingpong takes exactly two compute warpgroups (warps = 8)",
            cfg.warps
        ));
    }
    let mut asynchronous = false;
    kernel.walk(&mut |i| asynchronous |= matches!(i.op, Op::MmaAsync { .. }));
    if !asynchronous {
        return Some(format!(
            "the overlap pass did not apply ({}): the turn is handed over between the asynchronous matmuls' issue and their wait",
            flashcore_ir::passes::overlap::why_not(kernel).unwrap_or_else(|| "its matmuls are synchronous".into())
        ));
    }
    None
}
