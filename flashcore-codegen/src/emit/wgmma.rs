//! sm_90a instruction selection for the matmuls: `dst = a · b (+ acc)` as warpgroup
//! `wgmma.mma_async`, B read by the tensor cores straight from the staged shared-memory tile
//! through a matrix descriptor, A likewise when it is a loaded tile (Q: kept in shared memory,
//! as FlashAttention-3 keeps it) or else from registers (P, computed each iteration).
//!
//! Why a loaded A stays in shared memory: besides the registers it frees, ptxas 13.0 (the
//! H200 driver's JIT) miscompiles a register A operand that lives across the K/V loop: it
//! reuses Q's registers for temporaries after the first wgmma reads them, so every later
//! iteration multiplies garbage (seen in its SASS; ptxas 13.5 allocates it correctly).
//!
//! Why the rest of the emitter is untouched: with one 16-row block per warp
//! (`rows_per_warp == 16`) and warps in aligned groups of four, a warpgroup's `m64nNk16`
//! accumulator gives warp `w % 4` rows `16·(w % 4) ..` of the group's 64, each thread holding,
//! per 8 columns, the same four elements as an `mma.m16n8` accumulator; and a warp's A
//! registers per 16-column k-slice are the `mma.m16n8k16` A fragment. So every other op (masks,
//! softmax, stores) reads the same registers on both targets. Verified on the H200
//! (`docs/measurements/2026-12-02-h200-sm90a.txt`).
//!
//! Shared-memory layout (the 128-byte swizzle, descriptor mode 1): a staged `[rows][D]` tile is
//! stored as `D / 64` column blocks of `rows × 128` bytes; 16-byte chunk `c` of row `r` lies in
//! block `c / 8`, at `r · 128 + ((c % 8) ^ (r % 8)) · 16`. The hardware applies the XOR to
//! address bits 4-6 from bits 7-9, so every block starts on a 1024-byte boundary
//! ([`crate::smem`] aligns the ring buffers). At D = 64 this is the sm_89 layout.
//! - K-major B (`ks.t()`: rows are the n index, chunks the k index): k-slice `kk` starts at
//!   block `kk / 4`, byte `32 · (kk % 4)`; 8-row groups 1024 bytes apart (the stride byte
//!   offset); no transpose.
//! - MN-major B (`vs`: rows are the k index, chunks the n index): k-slice `kk` starts at row
//!   `16·kk`; 8-row groups 1024 bytes apart (stride byte offset), column blocks `rows · 128`
//!   bytes apart (leading byte offset); transposed (`imm-trans-b = 1`).

use super::*;

/// Bytes of one swizzled row of a column block (the 128-byte swizzle's width).
pub const BLOCK_ROW_BYTES: u32 = 128;
/// Bytes between 8-row groups of a column block: 8 rows × 128 bytes.
pub const GROUP_BYTES: u32 = 8 * BLOCK_ROW_BYTES;
/// Descriptor bits 62-63: the 128-byte swizzle.
const SWIZZLE_128B: u64 = 1 << 62;

/// The constant part of a descriptor: leading and stride byte offsets (bits 16-29 and 32-45,
/// in 16-byte units) and the swizzle mode.
pub fn descriptor_constant(leading_bytes: u32, stride_bytes: u32) -> u64 {
    (u64::from(leading_bytes >> 4) << 16) | (u64::from(stride_bytes >> 4) << 32) | SWIZZLE_128B
}

/// Byte offset of k-slice `kk`'s first element inside a staged tile of `rows` rows, and the
/// descriptor's constant part: see the module doc.
pub fn k_slice(transposed: bool, rows: u32, kk: u32) -> (u32, u64) {
    if transposed {
        ((kk / 4) * rows * BLOCK_ROW_BYTES + (kk % 4) * 32, descriptor_constant(16, GROUP_BYTES))
    } else {
        (kk * 2 * GROUP_BYTES, descriptor_constant(rows * BLOCK_ROW_BYTES, GROUP_BYTES))
    }
}

impl Emitter<'_> {
    /// `dst = a · b (+ acc)` on sm_90a: accumulators set (copied from `acc`, or zeroed: every
    /// register a wgmma reads is written first), `wgmma.fence`, one `wgmma.mma_async` per
    /// 16-column k-slice, then commit and wait for the group, so the result is in `dst`'s
    /// registers when the next op reads them and the shared tile is free to be overwritten.
    pub(super) fn wgmma(
        &mut self,
        dst: Value,
        a: &AOperand,
        tile: &SmemTile,
        acc: Option<Value>,
        n_dim: TileDim,
        k_dim: TileDim,
    ) -> Result<(), CodegenError> {
        let (n, k) = (n_dim.per_warp(&self.cfg), k_dim.per_warp(&self.cfg));
        let d = self.regs_of(dst);
        let acc_regs = acc.map(|c| self.regs_of(c));
        for i in 0..d.len {
            match &acc_regs {
                Some(c) => self.w.ins(format!("mov.f32 {}, {}", d.at(i), c.at(i))),
                None => self.w.ins(format!("mov.f32 {}, 0f00000000", d.at(i))),
            }
        }
        // Descriptor of the tile's first byte: (shared address >> 4) in bits 0-13.
        let smem = self.th().smem.clone();
        let addr = self.w.temp(RegClass::B32);
        if tile.offset == "0" {
            self.w.ins(format!("mov.u32 {addr}, {smem}"));
        } else {
            self.w.ins(format!("add.u32 {addr}, {smem}, {}", tile.offset));
        }
        let base = self.w.temp(RegClass::B64);
        self.w.ins(format!("cvt.u64.u32 {base}, {addr}"));
        self.w.ins(format!("shr.u64 {base}, {base}, 4"));
        // A in shared memory (a loaded tile kept there): this warpgroup's 64 rows of the
        // `TILE_M`-row tile, K-major like K.
        let a_base = match a {
            AOperand::Registers(_) => None,
            AOperand::Shared { region } => {
                let (group, addr) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
                self.w.ins(format!("shr.u32 {group}, {}, 2", self.th().warp));
                self.w.ins(format!("mad.lo.u32 {addr}, {group}, {}, {smem}", 8 * GROUP_BYTES));
                if region != "0" {
                    self.w.ins(format!("add.u32 {addr}, {addr}, {region}"));
                }
                let base = self.w.temp(RegClass::B64);
                self.w.ins(format!("cvt.u64.u32 {base}, {addr}"));
                self.w.ins(format!("shr.u64 {base}, {base}, 4"));
                Some(base)
            }
        };
        let operand = self.cfg.dtype.name();
        let trans = u32::from(!tile.transposed);
        let d_list = (0..d.len).map(|i| d.at(i)).collect::<Vec<_>>().join(", ");
        let a_shape = frag_shape(&self.cfg, k_dim, Elem::F16);
        let scale_d =
            self.th().scale_d.clone().ok_or_else(|| CodegenError::Internal("no scale-d predicate".into()))?;
        self.w.ins("wgmma.fence.sync.aligned");
        for kk in 0..k / 16 {
            let (offset, constant) = k_slice(tile.transposed, tile.rows, kk);
            let desc = self.w.temp(RegClass::B64);
            self.w.ins(format!("add.s64 {desc}, {base}, {}", offset >> 4));
            self.w.ins(format!("or.b64 {desc}, {desc}, {constant:#x}"));
            let a_operand = match (a, &a_base) {
                (AOperand::Registers(af), _) => {
                    let regs = (0..4).map(|i| af.at(a_shape.a(0, kk as usize, i))).collect::<Vec<_>>();
                    format!("{{{}}}", regs.join(", "))
                }
                (AOperand::Shared { .. }, Some(a_base)) => {
                    let (offset, constant) = k_slice(true, self.cfg.tile_m, kk);
                    let a_desc = self.w.temp(RegClass::B64);
                    self.w.ins(format!("add.s64 {a_desc}, {a_base}, {}", offset >> 4));
                    self.w.ins(format!("or.b64 {a_desc}, {a_desc}, {constant:#x}"));
                    a_desc
                }
                (AOperand::Shared { .. }, None) => unreachable!("a shared A has its base"),
            };
            let trans_a = if a_base.is_some() { "0, " } else { "" };
            self.w.ins(format!(
                "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{operand}.{operand} {{{d_list}}}, {a_operand}, {desc}, {scale_d}, 1, 1, {trans_a}{trans}"
            ));
        }
        self.w.ins("wgmma.commit_group.sync.aligned");
        self.w.ins("wgmma.wait_group.sync.aligned 0");
        Ok(())
    }

    /// `bar.sync 4 + g, 128`: the four warps of this warp's warpgroup `g` meet.
    pub(super) fn warpgroup_barrier(&mut self) {
        let (group, id) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.ins(format!("shr.u32 {group}, {}, 2", self.th().warp));
        self.w.ins(format!("add.u32 {id}, {group}, {WARPGROUP_BARRIER}"));
        self.w.ins(format!("bar.sync {id}, 128"));
    }

    /// Shared address (u32) of 16-byte chunk `chunk` of row `row` in a ring tile of `rows` rows
    /// at `smem_base`, in the column-block layout of the module doc.
    pub(super) fn block_chunk_address(
        &mut self,
        smem_base: &str,
        row: &str,
        chunk: &str,
        rows: u32,
    ) -> String {
        let smem = self.th().smem.clone();
        let (block, swz, saddr) =
            (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.ins(format!("shr.u32 {block}, {chunk}, 3"));
        self.w.ins(format!("and.b32 {swz}, {chunk}, 7"));
        let row7 = self.w.temp(RegClass::B32);
        self.w.ins(format!("and.b32 {row7}, {row}, 7"));
        self.w.ins(format!("xor.b32 {swz}, {swz}, {row7}"));
        self.w.ins(format!("shl.b32 {swz}, {swz}, 4"));
        self.w.ins(format!("mad.lo.u32 {saddr}, {row}, {BLOCK_ROW_BYTES}, {swz}"));
        self.w.ins(format!("mad.lo.u32 {saddr}, {block}, {}, {saddr}", rows * BLOCK_ROW_BYTES));
        self.w.ins(format!("add.u32 {saddr}, {saddr}, {smem}"));
        if smem_base != "0" {
            self.w.ins(format!("add.u32 {saddr}, {saddr}, {smem_base}"));
        }
        saddr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The descriptor constants the H200 probe verified (D = 128, 64-row tiles).
    #[test]
    fn k_slices_match_the_probed_layout() {
        assert_eq!(k_slice(true, 64, 0), (0, (1 << 16) | (64 << 32) | (1 << 62)));
        assert_eq!(k_slice(true, 64, 5).0, 8192 + 32);
        assert_eq!(k_slice(false, 64, 3), (3 * 2048, (512 << 16) | (64 << 32) | (1 << 62)));
    }
}
