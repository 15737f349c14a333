//! Where each element of a tile lives: register counts and indices of the mma fragment layouts
//! (PTX ISA, "Matrix fragments for mma.m16n8k16"), and the shared-memory tile layout with its
//! XOR swizzle.
//!
//! Each warp owns `rows_per_warp` consecutive rows of every `TILE_M` tile, as `mfrags` blocks of
//! 16 rows. With g = lane / 4 and t = lane % 4, a thread holds, per 16-row block:
//! - f32 accumulator tile `[16, C]`: per 8-column n-tile `nt`, c0 = (g, 8nt+2t), c1 = (g, 8nt+2t+1),
//!   c2 = (g+8, 8nt+2t), c3 = (g+8, 8nt+2t+1);
//! - f16 A-operand tile `[16, K]`: per 16-column k-slice `kk`, four b32 registers holding f16 pairs:
//!   a0 = (g, 16kk+2t..), a1 = (g+8, 16kk+2t..), a2 = (g, 16kk+8+2t..), a3 = (g+8, 16kk+8+2t..);
//! - row vector: one f32 for row g and one for row g+8.

use flashcore_ir::kernel::{Elem, TileDim, Type};
use flashcore_ir::Config;

/// Per-thread register shape of a value type.
#[derive(Clone, Copy, Debug)]
pub struct FragShape {
    pub mfrags: usize,
    /// 8-column n-tiles (f32 accumulator) or 16-column k-slices (f16 A operand).
    pub col_blocks: usize,
}

impl FragShape {
    /// Register index of accumulator element `i` (0..4) of n-tile `nt` in block `mf`.
    pub fn acc(&self, mf: usize, nt: usize, i: usize) -> usize {
        (mf * self.col_blocks + nt) * 4 + i
    }

    /// Every accumulator element in register order, with the row and column it holds relative
    /// to the thread's first (row `lane / 4` of the warp's rows, column `2·(lane % 4)`): element
    /// `e` of n-tile `nt` in block `mf` is row `16·mf + 8·(e / 2)`, column `8·nt + e % 2`.
    pub fn acc_elements(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.mfrags).flat_map(move |mf| {
            (0..self.col_blocks).flat_map(move |nt| {
                (0..4).map(move |e| (self.acc(mf, nt, e), 16 * mf + 8 * (e / 2), 8 * nt + e % 2))
            })
        })
    }

    /// Register index of A-operand register `i` (0..4) of k-slice `kk` in block `mf`.
    pub fn a(&self, mf: usize, kk: usize, i: usize) -> usize {
        (mf * self.col_blocks + kk) * 4 + i
    }

    pub fn regs(&self) -> usize {
        self.mfrags * self.col_blocks * 4
    }
}

/// Register index of the row-vector entry for block `mf`, half `h` (0: row g, 1: row g+8).
pub fn row_reg(mf: usize, h: usize) -> usize {
    mf * 2 + h
}

pub fn mfrags(cfg: &Config) -> usize {
    (cfg.rows_per_warp() / 16) as usize
}

/// The per-thread shape of a `[rows, cols]` fragment tile of one warp: its rows are the warp's
/// `rows_per_warp`, its columns `cols.per_warp` (split-KV gives a warp a slice of the keys).
pub fn frag_shape(cfg: &Config, cols: TileDim, elem: Elem) -> FragShape {
    let c = cols.per_warp(cfg) as usize;
    FragShape {
        mfrags: mfrags(cfg),
        col_blocks: match elem {
            // One register per element: the accumulator layout.
            Elem::F32 | Elem::I32 | Elem::Bool => c / 8,
            Elem::F16 | Elem::Bf16 => c / 16,
        },
    }
}

/// How many registers (and of which PTX type) a value of `ty` needs per thread. `None` for
/// values that live outside registers (shared-memory tiles).
/// The f32 registers a thread holds of an online-softmax state `(m, l, acc)` (what the in-CTA
/// merge publishes to shared memory and the combine across CTAs writes to its workspace).
pub fn state_registers(kernel: &flashcore_ir::Kernel, state: [flashcore_ir::Value; 3]) -> u32 {
    state.iter().map(|v| register_count(&kernel.config, &kernel.ty(*v)).unwrap_or(0) as u32).sum()
}

pub fn register_count(cfg: &Config, ty: &Type) -> Option<usize> {
    match *ty {
        Type::Index { .. } | Type::Scalar | Type::Int | Type::Bool | Type::Counter => Some(1),
        Type::Row { .. } => Some(mfrags(cfg) * 2),
        // Two columns per 8-column block of the warp's fragments (`2·(lane % 4) + e`).
        Type::Col { cols } => Some(cols.per_warp(cfg) as usize / 8 * 2),
        Type::Frag { cols, elem, .. } => Some(frag_shape(cfg, cols, elem).regs()),
        Type::Smem { .. } => None,
    }
}

/// Shared-memory tiles are `[rows][D]` f16, row-major, `2·D` bytes a row, in 16-byte chunks;
/// chunk `c` of row `r` is stored at chunk `c ^ (r % P)` with `P` = [`swizzle_period`] (8 when
/// the row has a multiple of 8 chunks: D = 64, 128), so the 8 row addresses of an `ldmatrix`
/// phase and the 8 chunks that a copy writes per row fall into 8 different bank groups. Rows of
/// 4 or 12 chunks (D = 32, 96) swizzle within aligned groups of 4 chunks (`P` = 4), which keeps
/// every chunk inside its row at the price of 2-way bank conflicts.
pub fn row_bytes(cfg: &Config) -> u32 {
    cfg.head_dim * 2
}

/// The swizzle period `P`: the largest power of two up to 8 that divides the chunks of a row.
pub fn swizzle_period(cfg: &Config) -> u32 {
    let chunks = chunks_per_row(cfg);
    [8, 4, 2, 1].into_iter().find(|p| chunks % p == 0).expect("1 divides everything")
}

/// 16-byte chunks per tile row.
pub fn chunks_per_row(cfg: &Config) -> u32 {
    cfg.head_dim / 8
}

/// The lane-dependent part of an `ldmatrix.x4` address: which row of the 16-row block this lane
/// points at and which bit it adds to the (even) chunk index. Each pattern loads four 8x8
/// matrices in the order the mma operands need them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LdmatrixPattern {
    /// A operand from `[m][k]`: matrices (rows 0-7, k lo), (rows 8-15, k lo), (rows 0-7, k hi),
    /// (rows 8-15, k hi) give a0..a3. Row = lane % 16, chunk bit = lane / 16.
    A,
    /// B operand from a `[n][k]` tile (K for S = Q·Kᵀ), no transpose: matrices (n 0-7, k lo),
    /// (n 0-7, k hi), (n 8-15, k lo), (n 8-15, k hi) give b0, b1 of n-tile 0 and of n-tile 1.
    /// Row = lane % 8 + 8·(lane / 16), chunk bit = (lane / 8) % 2.
    BFromRowsN,
    /// B operand from a `[k][n]` tile (V for O = P·V), with `.trans`: matrices (k 0-7, n lo),
    /// (k 8-15, n lo), (k 0-7, n hi), (k 8-15, n hi) give b0, b1 of n-tile 0 and of n-tile 1.
    /// Row = lane % 8 + 8·((lane / 8) % 2), chunk bit = lane / 16.
    BFromRowsK,
}

impl LdmatrixPattern {
    pub const ALL: [LdmatrixPattern; 3] =
        [LdmatrixPattern::A, LdmatrixPattern::BFromRowsN, LdmatrixPattern::BFromRowsK];

    /// (row within the 16-row block, chunk bit) for `lane`: the CPU-side twin of the PTX that
    /// `emit` generates, used by tests.
    pub fn lane_source(self, lane: u32) -> (u32, u32) {
        match self {
            LdmatrixPattern::A => (lane % 16, lane / 16),
            LdmatrixPattern::BFromRowsN => (lane % 8 + 8 * (lane / 16), (lane / 8) % 2),
            LdmatrixPattern::BFromRowsK => (lane % 8 + 8 * ((lane / 8) % 2), lane / 16),
        }
    }

    pub fn trans(self) -> bool {
        self == LdmatrixPattern::BFromRowsK
    }

    pub fn name(self) -> &'static str {
        match self {
            LdmatrixPattern::A => "a",
            LdmatrixPattern::BFromRowsN => "bn",
            LdmatrixPattern::BFromRowsK => "bk",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ldmatrix: lane l supplies row l % 8 of matrix l / 8. Check each pattern sends the right
    /// (row, chunk) of the tile to each of the four matrices, per the operand order in the doc.
    #[test]
    fn ldmatrix_patterns_feed_matrices_in_operand_order() {
        // (matrix index) -> (row block 0 or 8, chunk bit) expected for each pattern.
        let expect = |p: LdmatrixPattern, m: u32| match p {
            LdmatrixPattern::A => ((m % 2) * 8, m / 2),
            LdmatrixPattern::BFromRowsN => ((m / 2) * 8, m % 2),
            LdmatrixPattern::BFromRowsK => ((m % 2) * 8, m / 2),
        };
        for p in LdmatrixPattern::ALL {
            for lane in 0..32 {
                let (row, bit) = p.lane_source(lane);
                let matrix = lane / 8;
                let (block, want_bit) = expect(p, matrix);
                assert_eq!(row, block + lane % 8, "{p:?} lane {lane}");
                assert_eq!(bit, want_bit, "{p:?} lane {lane}");
            }
        }
    }

    #[test]
    fn swizzle_spreads_ldmatrix_rows_over_bank_groups() {
        for d in flashcore_ir::config::SUPPORTED_HEAD_DIMS {
            let cfg = Config { head_dim: d, ..Config::default() };
            let (p, chunks) = (swizzle_period(&cfg), chunks_per_row(&cfg));
            assert_eq!(p, if chunks % 8 == 0 { 8 } else { 4 }, "D = {d}");
            for c in 0..chunks {
                // The physical chunk stays in the row, and P consecutive rows reading logical
                // chunk c land in P distinct physical chunks.
                let mut seen: Vec<u32> = (0..p).map(|r| c ^ (r % p)).collect();
                assert!(seen.iter().all(|x| *x < chunks), "D = {d}, chunk {c}");
                seen.sort();
                seen.dedup();
                assert_eq!(seen.len() as u32, p);
            }
        }
    }
}
