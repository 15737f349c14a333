//! How sm_90a's warpgroups share registers (`setmaxnreg`): the count ptxas gives every thread at
//! entry, and how a producer warpgroup hands its share to the compute warpgroups. One place for
//! the overlap pass (which sizes what the compute warps may hold) and codegen (which emits the
//! `setmaxnreg` counts).

use crate::{Config, Target};

/// Registers on one SM sub-partition, a thread of each of its warps (a quarter of the 64K
/// register file over 32 lanes); warp `w` of a CTA runs on sub-partition `w % 4`.
const SUBPARTITION_REGISTERS_PER_LANE: u32 = 512;

/// The most a compute thread asks for (ptxas's own limit is 255; `setmaxnreg` takes multiples
/// of 8). 232, not 240: with two compute warpgroups and the TMA producer's 24, 240 fits, but on
/// the H200 the D = 128 schedules ran 4-5% slower with it than with 232 (the same PTX otherwise;
/// docs/measurements/2026-12-02-h200-tma.txt, `scripts/gpu-sm90a.sh tma-regs`).
pub const CONSUMER_REGISTERS_MAX: u32 = 232;

/// The most `setmaxnreg` sets.
const SETMAXNREG_MAX: u32 = 256;

/// The registers ptxas gives every thread at entry of a kernel of `warps` warps, one CTA an SM
/// (`.maxntid`, `.minnctapersm 1`): the busiest sub-partition's share, a multiple of 8.
pub fn entry_registers(warps: u32) -> u32 {
    let per_subpartition = warps.div_ceil(4).max(1);
    (SUBPARTITION_REGISTERS_PER_LANE / per_subpartition / 8 * 8).min(255)
}

/// Registers a thread, as `setmaxnreg` counts them: (load warps', compute warps').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterSplit {
    pub load: u32,
    pub compute: u32,
}

/// On sm_90a with a producer warpgroup: how its threads and the compute warpgroups' share the
/// CTA's registers. `setmaxnreg.inc` takes registers from the CTA's pool (what the CTA was
/// launched with: the entry count for every thread; PTX ISA, `setmaxnreg`), and blocks until
/// the pool has them, so the counts must fit it: one lane of each warpgroup (all have 128
/// threads) holds at most `entry · warpgroups`. The compute warpgroups take what the producer's
/// floor ([`crate::passes::tma::producer_registers`]: 24 with bulk tensor copies, 40 with
/// cp.async) leaves, at most [`CONSUMER_REGISTERS_MAX`]; the producer keeps the rest (a
/// multiple of 8). Two compute warpgroups at 168 on entry: a pool of 504, 232 each and 40 for
/// the producer. `None` when there is no producer warpgroup or the compute warps would gain
/// nothing (the entry count is already the most they ask for).
pub fn register_split(cfg: &Config) -> Option<RegisterSplit> {
    if cfg.target != Target::Sm90a || cfg.load_warps == 0 || cfg.load_warps % 4 != 0 || cfg.warps % 4 != 0 {
        return None;
    }
    if cfg.softmax_warps > 0 {
        return None;
    }
    let entry = entry_registers(cfg.warps + cfg.load_warps);
    let (load_groups, compute_groups) = (cfg.load_warps / 4, cfg.warps / 4);
    let pool = entry * (load_groups + compute_groups);
    let floor = crate::passes::tma::producer_registers(cfg);
    let compute =
        (pool.saturating_sub(load_groups * floor) / compute_groups / 8 * 8).min(CONSUMER_REGISTERS_MAX);
    let load = ((pool - compute_groups * compute) / load_groups / 8 * 8).min(SETMAXNREG_MAX);
    (compute > entry).then_some(RegisterSplit { load, compute })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_producer_warpgroup_gives_its_registers_to_the_compute_warpgroups_within_the_cta_pool() {
        // Two compute warpgroups: 168 at entry, a pool of 3 · 168 = 504 a lane; the compute
        // warpgroups take 232 (their cap), the producer the 40 left.
        assert_eq!(register_split(&hopper(8, 4)), Some(RegisterSplit { load: 40, compute: 232 }));
        // Three: 128 at entry, a pool of 512; (512 - 40) / 3 = 157 -> 152, the producer 56.
        assert_eq!(register_split(&hopper(12, 4)), Some(RegisterSplit { load: 56, compute: 152 }));
        // One: 255 at entry already, nothing to gain.
        assert_eq!(register_split(&hopper(4, 4)), None);
        // Bulk tensor copies: the producer's floor is 24; (504 - 24) / 2 = 240, capped at 232,
        // and the producer keeps the 40 left (FlashAttention-3: 24 and 240, the same pool).
        assert_eq!(
            register_split(&Config { tma: true, head_dim: 128, ..hopper(8, 4) }),
            Some(RegisterSplit { load: 40, compute: 232 })
        );
        // (512 - 24) / 3 = 162 -> 160; the producer 32.
        assert_eq!(
            register_split(&Config { tma: true, ..hopper(12, 4) }),
            Some(RegisterSplit { load: 32, compute: 160 })
        );
        // No producer warpgroup, or sm_89.
        assert_eq!(register_split(&hopper(8, 0)), None);
        assert_eq!(register_split(&Config { target: Target::Sm89, ..hopper(8, 4) }), None);
        // Every split fits the CTA's pool, and keeps the producer at its floor or above.
        for (warps, load) in [(8, 4), (12, 4), (8, 8), (16, 4), (12, 8)] {
            for tma in [false, true] {
                let cfg = Config { tma, ..hopper(warps, load) };
                if let Some(split) = register_split(&cfg) {
                    let per_lane = (load / 4) * split.load + (warps / 4) * split.compute;
                    let pool = entry_registers(warps + load) * ((load + warps) / 4);
                    assert!(per_lane <= pool, "{warps}+{load}: {per_lane} of {pool}");
                    let floor = crate::passes::tma::producer_registers(&cfg);
                    assert!(split.load >= floor && split.load % 8 == 0, "{warps}+{load}: {split:?}");
                }
            }
        }
    }
}
