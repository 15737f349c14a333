//! The occupancy model's pick of a schedule for a GPU the autotuner has not run on (the L4): each
//! sm_89 candidate is compiled and assembled (ptxas gives its registers), spilling ones and ones
//! that do not fit are dropped, and the rest are scored from the GPU's limits alone. The winner
//! ships as a tuning-table entry marked as not timed ([`crate::tuning::Measured::timed`]), so a
//! launch says where its config came from and first-use tuning still times the key.
//!
//! The score multiplies six factors, each 1 when the resource is not the bottleneck:
//! - latency hiding: resident warps per SM over 8 (two per scheduler), at most 1;
//! - arithmetic intensity: Q rows per CTA over 128 (each staged K/V byte feeds `tile_m` rows'
//!   mma; below ~128 rows a CTA waits on shared-memory and L2 traffic), at most 1;
//! - wave quantization: work items over the CTA slots of the waves they take;
//! - rows per warp: 0.85 at 16 (each K/V fragment loaded from shared memory feeds one m-tile
//!   instead of two);
//! - the pipeline: 0.9 with a single stage (no copy overlaps the math);
//! - the loop: `tile_n / (tile_n + 24)`: each K/V tile costs a fixed overhead (its barriers, the
//!   row max and sum across the quad, the rescale of the accumulator) on top of its mma.
//!
//! Ties go to the fewer registers, then the smaller shared memory. It is a model: the entries it
//! writes say so, and `scripts/gpu-fallback.sh` style runs compare its picks to timed ones.
//!
//! ```
//! use flashcore::model::score;
//! use flashcore::occupancy::L4;
//! use flashcore::{kernels::attention, Config};
//!
//! // 128 query rows on 4 warps (32 rows each), 2 CTAs resident: every factor is 1 but the last
//! // wave's (2048 work items on 116 slots: 18 waves, 98% full) and the loop's (64 / 88).
//! let big = Config { tile_m: 128, warps: 4, tile_n: 64, ..attention::CONFIG.with_head_dim(128) };
//! let (s, occupancy) = score(&big, &L4, 58, 128, 40 * 1024, [2, 16, 8192, 8192]).unwrap();
//! assert_eq!((occupancy.ctas, occupancy.warps), (2, 8));
//! assert!((s - 2048.0 / (18.0 * 116.0) * 64.0 / 88.0).abs() < 1e-9);
//! // 64 rows a CTA halves the intensity factor.
//! let small = Config { tile_m: 64, warps: 2, ..big };
//! assert!(score(&small, &L4, 58, 128, 40 * 1024, [2, 16, 8192, 8192]).unwrap().0 < 0.6);
//! ```

use std::collections::HashMap;
use std::path::Path;

use crate::occupancy::{occupancy, Arch, Occupancy};
use crate::tuning::{Entry, Gpu, Key, Measured, Schedule, SizeClass};
use crate::{Config, Target};

/// Warps per SM that hide the mma and shared-memory latencies (two per scheduler).
const WARPS_TO_HIDE_LATENCY: f64 = 8.0;
/// Q rows per CTA from which each staged K/V byte feeds enough mma to keep the tensor cores busy.
const ROWS_FOR_INTENSITY: f64 = 128.0;
/// A K/V tile's fixed overhead, in key columns' worth of mma.
const LOOP_OVERHEAD_COLUMNS: f64 = 24.0;

/// The score of `config` (`registers` a thread from ptxas, `shared` bytes a CTA) on a GPU of
/// `arch` with `sms` SMs for a `[b, h, s, _]` problem, and its occupancy; `None` when a CTA does
/// not fit on an SM.
pub fn score(
    config: &Config,
    arch: &Arch,
    sms: u32,
    registers: u32,
    shared: u32,
    [b, h, s, _]: [usize; 4],
) -> Option<(f64, Occupancy)> {
    let occ = occupancy(arch, config.threads(), registers, shared);
    if occ.ctas == 0 {
        return None;
    }
    let latency = (f64::from(occ.warps) / WARPS_TO_HIDE_LATENCY).min(1.0);
    let intensity = (f64::from(config.tile_m) / ROWS_FOR_INTENSITY).min(1.0);
    let work = (b * h * s.div_ceil(config.tile_m as usize)) as f64;
    let slots = f64::from(occ.ctas * sms);
    let waves = (work / slots).ceil().max(1.0);
    let quantization = work / (waves * slots);
    let rows_per_warp = config.tile_m / (config.warps - config.load_warps - config.softmax_warps).max(1);
    let rows = if rows_per_warp >= 32 { 1.0 } else { 0.85 };
    let pipeline = if config.stages >= 2 { 1.0 } else { 0.9 };
    let tile_n = f64::from(config.tile_n);
    let loop_share = tile_n / (tile_n + LOOP_OVERHEAD_COLUMNS);
    Some((latency * intensity * quantization * rows * pipeline * loop_share, occ))
}

/// The candidates: the autotuner's sm_89 tilings, each with 1 to 3 stages (no load or softmax
/// warps, no split-KV: the model has no term for what they trade).
pub fn candidates(declared: Config) -> Vec<Config> {
    let declared = Config { target: Target::Sm89, ..declared };
    let mut out = vec![];
    for tiling in crate::autotune::tiling_candidates(declared) {
        for stages in 1..=3 {
            let cfg = Config { stages, ..tiling };
            if cfg.validate().is_ok() {
                out.push(cfg);
            }
        }
    }
    out
}

/// What ptxas said of one candidate: registers a thread, spilled bytes, shared memory a CTA.
#[derive(Clone, Copy, Debug)]
struct Resources {
    registers: u32,
    spilled: u32,
    shared: u32,
}

/// The model's picks over many keys, with each candidate compiled and assembled once (the
/// resources of a config do not depend on the size class).
pub struct Model<'a> {
    program: crate::ir::source::Program,
    arch: &'a Arch,
    gpu: &'a Gpu,
    ptxas: &'a Path,
    assembled: HashMap<Config, Result<Resources, String>>,
}

impl<'a> Model<'a> {
    /// A model of `gpu` (its SM count and name; `arch` its per-SM limits) for the kernel
    /// `program`, assembling with `ptxas`.
    pub fn new(
        program: crate::ir::source::Program,
        arch: &'a Arch,
        gpu: &'a Gpu,
        ptxas: &'a Path,
    ) -> Model<'a> {
        Model { program, arch, gpu, ptxas, assembled: HashMap::new() }
    }

    fn resources(&mut self, cfg: &Config) -> Result<Resources, String> {
        let (program, ptxas, arch) = (&self.program, self.ptxas, self.arch);
        self.assembled
            .entry(*cfg)
            .or_insert_with(|| {
                let kernel = crate::compile(program, cfg).map_err(|e| e.to_string())?;
                let report =
                    crate::ptxas::assemble(ptxas, &kernel.ptx.text, arch.sm).map_err(|e| e.to_string())?;
                Ok(Resources {
                    registers: report.registers,
                    spilled: report.spill_store_bytes,
                    shared: kernel.ptx.shared_bytes,
                })
            })
            .clone()
    }

    /// The entry for `kernel` (declared config `declared`, at its head dim, dtype and causal
    /// flag) and `class`: the best-scoring candidate at the class's representative shape that
    /// neither spills nor overflows the GPU, with the number scored; `None` if none qualifies.
    pub fn entry(
        &mut self,
        kernel: &str,
        declared: Config,
        class: SizeClass,
    ) -> Option<(Entry, f64, Occupancy)> {
        let [b, h, s, _] = crate::autotune::representative(class);
        let shape = [b, h, s, declared.head_dim as usize];
        let mut best: Option<(f64, u32, u32, Config, Occupancy)> = None;
        let mut scored = 0;
        for cfg in candidates(declared) {
            let Ok(r) = self.resources(&cfg) else { continue };
            if r.spilled > 0 || r.shared > self.gpu.props.shared_per_block {
                continue;
            }
            let Some((score, occ)) = score(&cfg, self.arch, self.gpu.props.sms, r.registers, r.shared, shape)
            else {
                continue;
            };
            scored += 1;
            // Higher score, then fewer registers, then less shared memory.
            // Scores within 1e-9 are a tie.
            let better = best.as_ref().is_none_or(|(s, regs, smem, _, _)| {
                score > s + 1e-9 || score >= s - 1e-9 && (r.registers, r.shared) < (*regs, *smem)
            });
            if better {
                best = Some((score, r.registers, r.shared, cfg, occ));
            }
        }
        let (score, _, _, cfg, occ) = best?;
        let entry = Entry {
            key: Key::new(kernel, &self.gpu.name, declared.dtype, declared.head_dim, declared.causal, class),
            device: Some(self.gpu.props),
            schedule: Schedule::of(&cfg),
            measured: Measured::not_timed([b, h, s, s], scored),
        };
        Some((entry, score, occ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::occupancy::L4;

    #[test]
    fn each_factor_of_the_score_moves_it() {
        // 32 rows on each of 4 warps, 3 CTAs resident (shared memory): 12 warps.
        let base = Config { tile_m: 128, warps: 4, tile_n: 64, stages: 2, ..Config::default() };
        let large = [2, 16, 8192, 8192];
        let at = |cfg: &Config, shared: u32, shape| score(cfg, &L4, 58, 128, shared * 1024, shape).unwrap().0;
        let full = at(&base, 32, large);
        assert!((full - 0.981 * 64.0 / 88.0).abs() < 0.001, "{full}");
        // Twice the K/V tile: less loop overhead.
        assert!(
            (at(&Config { tile_n: 128, ..base }, 32, large) / full - (128.0 / 152.0) / (64.0 / 88.0)).abs()
                < 1e-9
        );
        // One stage: 0.9.
        assert!((at(&Config { stages: 1, ..base }, 32, large) - 0.9 * full).abs() < 1e-9);
        // 16 rows a warp (8 warps, the same CTAs resident): 0.85.
        assert!((at(&Config { warps: 8, ..base }, 32, large) - 0.85 * full).abs() < 1e-9);
        // 64 rows a CTA: half the intensity (and other waves).
        assert!(at(&Config { tile_m: 64, warps: 2, ..base }, 32, large) < 0.55 * full);
        // One CTA of 4 warps resident (60 KB of shared memory): half the latency hiding.
        assert!(at(&base, 60, large) < 0.55 * full);
        // A tiny grid (8 work items on 174 slots) wastes most of them.
        assert!(at(&base, 32, [1, 8, 128, 128]) < 0.1);
        // A CTA over the SM's shared memory does not fit.
        assert!(score(&base, &L4, 58, 128, 120 * 1024, large).is_none());
    }

    #[test]
    fn candidates_are_valid_sm89_configs_with_every_stage_count() {
        let all = candidates(crate::kernels::attention::CONFIG.with_head_dim(128));
        assert!(all.iter().all(|c| c.target == Target::Sm89 && c.validate().is_ok()));
        for stages in 1..=3 {
            assert!(all.iter().any(|c| c.stages == stages));
        }
    }
}
