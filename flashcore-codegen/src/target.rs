//! What each PTX target can express: the checks that decide whether a kernel and config compile
//! for `sm_90a` (else the runtime falls back to `sm_89`, which expresses every verified kernel).

use flashcore_ir::kernel::{Kernel, Op};
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

/// Registers a thread, as `setmaxnreg` counts them: (load warps', compute warps').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterSplit {
    pub load: u32,
    pub compute: u32,
}

/// The most a compute thread asks for (ptxas's own limit is 255; `setmaxnreg` takes multiples of
/// 8). 232, not 240: with two compute warpgroups and the TMA producer's 24, 240 fits, but on the
/// H200 the D = 128 schedules ran 4-5% slower with it than with 232 (the same PTX otherwise;
/// docs/measurements/2026-12-02-h200-tma.txt, `scripts/gpu-sm90a.sh tma-regs`).
pub const CONSUMER_REGISTERS_MAX: u32 = 232;
/// Registers on one SM sub-partition (a quarter of the 64K register file); warp `w` of a CTA
/// runs on sub-partition `w % 4`, so each holds one warp of every warpgroup.
const REGISTERS_PER_SUBPARTITION: u32 = 16384;

/// The registers ptxas gives every thread at entry of a kernel of `warps` warps, one CTA an SM
/// (`.maxntid`, `.minnctapersm 1`): the busiest sub-partition's share, a multiple of 8.
pub fn entry_registers(warps: u32) -> u32 {
    let per_subpartition = warps.div_ceil(4).max(1);
    (REGISTERS_PER_SUBPARTITION / (per_subpartition * 32) / 8 * 8).min(255)
}

/// On sm_90a with a producer warpgroup, its threads drop to what
/// `flashcore_ir::passes::tma::producer_registers` says (`setmaxnreg.dec`: 24 with bulk tensor
/// copies, 40 with cp.async) and the compute warpgroups take what that frees (`setmaxnreg.inc`), as
/// much as fits every sub-partition. `None` when there is no producer warpgroup or the compute
/// warps would gain nothing (the entry count is already the most they ask for).
pub fn register_split(cfg: &flashcore_ir::Config) -> Option<RegisterSplit> {
    if cfg.target != Target::Sm90a || cfg.load_warps == 0 || cfg.load_warps % 4 != 0 || cfg.warps % 4 != 0 {
        return None;
    }
    if cfg.softmax_warps > 0 {
        return None;
    }
    let entry = entry_registers(cfg.warps + cfg.load_warps);
    let (load_groups, compute_groups) = (cfg.load_warps / 4, cfg.warps / 4);
    let per_thread_budget = REGISTERS_PER_SUBPARTITION / 32;
    let producer = flashcore_ir::passes::tma::producer_registers(cfg);
    let left = per_thread_budget - load_groups * producer;
    let compute = (left / compute_groups / 8 * 8).min(CONSUMER_REGISTERS_MAX);
    (compute > entry).then_some(RegisterSplit { load: producer, compute })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashcore_ir::Config;

    fn hopper(warps: u32, load_warps: u32) -> Config {
        Config { tile_m: 16 * warps, warps, load_warps, target: Target::Sm90a, ..Config::default() }
    }

    #[test]
    fn entry_registers_are_the_busiest_subpartitions_share() {
        assert_eq!(entry_registers(4), 255);
        assert_eq!(entry_registers(8), 255);
        assert_eq!(entry_registers(9), 168);
        assert_eq!(entry_registers(12), 168);
        assert_eq!(entry_registers(16), 128);
    }

    #[test]
    fn a_producer_warpgroup_gives_its_registers_to_the_compute_warpgroups() {
        // Two compute warpgroups: 168 at entry; 40 + 2 · 232 = 504 of 512 a sub-partition lane.
        assert_eq!(register_split(&hopper(8, 4)), Some(RegisterSplit { load: 40, compute: 232 }));
        // Three: 128 at entry; 40 + 3 · 152 = 496.
        assert_eq!(register_split(&hopper(12, 4)), Some(RegisterSplit { load: 40, compute: 152 }));
        // One: 255 at entry already, nothing to gain.
        assert_eq!(register_split(&hopper(4, 4)), None);
        // Bulk tensor copies: the producer keeps 24; (512 - 24) / 2 = 244, capped at 232.
        assert_eq!(
            register_split(&Config { tma: true, head_dim: 128, ..hopper(8, 4) }),
            Some(RegisterSplit { load: 24, compute: 232 })
        );
        assert_eq!(
            register_split(&Config { tma: true, ..hopper(12, 4) }),
            Some(RegisterSplit { load: 24, compute: 160 })
        );
        // No producer warpgroup, or sm_89.
        assert_eq!(register_split(&hopper(8, 0)), None);
        assert_eq!(register_split(&Config { target: Target::Sm89, ..hopper(8, 4) }), None);
        for (warps, load) in [(8, 4), (12, 4), (8, 8)] {
            if let Some(split) = register_split(&hopper(warps, load)) {
                let per_lane = (load / 4) * split.load + (warps / 4) * split.compute;
                assert!(per_lane <= 512, "{warps}+{load}: {per_lane}");
            }
        }
    }
}
