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

/// Per-thread registers of an sm_90a kernel, set in the prologue.
pub(super) struct WgmmaRegs {
    /// Always true: wgmma's `scale-d` (accumulate into D).
    scale_d: String,
    /// This warp's warpgroup `g`: its barrier id `4 + g`, and the byte offset of its 64 rows in
    /// a kept tile's column block (`g · 64 · 128`).
    barrier: String,
    rows: String,
}

impl WgmmaRegs {
    pub(super) fn new(w: &mut PtxWriter, warp: &str, lane: &str) -> WgmmaRegs {
        let scale_d = w.named(RegClass::Pred, "%wgmma_scale_d");
        w.ins(format!("setp.eq.u32 {scale_d}, {lane}, {lane}"));
        let group = w.temp(RegClass::B32);
        w.ins(format!("shr.u32 {group}, {warp}, 2"));
        let barrier = w.named(RegClass::B32, "%warpgroup_barrier");
        w.ins(format!("add.u32 {barrier}, {group}, {WARPGROUP_BARRIER}"));
        let rows = w.named(RegClass::B32, "%warpgroup_rows");
        w.ins(format!("mul.lo.u32 {rows}, {group}, {}", 8 * GROUP_BYTES));
        WgmmaRegs { scale_d, barrier, rows }
    }
}

/// A wgmma's operands, computed ahead of its issue: per k-slice, A (registers, or a descriptor
/// and its `imm-trans-a` operand) and B's descriptor; `m64n{n}k16`; `imm-trans-b`.
pub(super) struct PreparedWgmma {
    n: u32,
    trans_b: u32,
    slices: Vec<PreparedSlice>,
}

/// One k-slice of a [`PreparedWgmma`]: the instructions that compute its descriptors when
/// they are deferred to just before its wgmma (empty when they were emitted at preparation),
/// and its operands.
pub(super) struct PreparedSlice {
    setup: String,
    a: String,
    trans_a: &'static str,
    b: String,
}

/// What a wgmma's accumulators hold before it adds `a · b`.
pub(super) enum WgmmaInit {
    /// Zero (`dst = a · b`).
    Zero,
    /// A copy of another value (`dst = a · b + acc`).
    CopyFrom(Value),
    /// What they hold (`dst += a · b`, the overlap pass's in-place accumulation).
    InPlace,
}

/// A wgmma's A operand as emitted: fragment registers, or a descriptor base.
enum WgmmaA<'f> {
    Registers(&'f RegFamily),
    Descriptor(String),
}

impl Emitter<'_> {
    /// The operands of `dst = a · b` on sm_90a: per 16-column k-slice, A (four registers, or a
    /// descriptor) and B's descriptor (the zero block's while a view's `zero_unless` is false).
    /// The descriptor bases are computed now; each k-slice's descriptors too, or with
    /// `deferred` just before its wgmma (a synchronous matmul, as it was emitted before the
    /// overlap pass: its PTX is unchanged).
    pub(super) fn wgmma_prepare(
        &mut self,
        a: &AOperand,
        tile: &SmemTile,
        n_dim: TileDim,
        k_dim: TileDim,
        deferred: bool,
    ) -> Result<PreparedWgmma, CodegenError> {
        let (n, k) = (n_dim.per_warp(&self.cfg), k_dim.per_warp(&self.cfg));
        // B's descriptor base: the tile's first byte; A's (a loaded tile kept in shared memory):
        // this warpgroup's 64 rows of the `TILE_M`-row tile, K-major like K.
        let b_base = self.descriptor_base(&tile.offset, None);
        let a = match a {
            AOperand::Registers(af) => WgmmaA::Registers(af),
            AOperand::Shared { region } => {
                let rows = self.wgmma_regs()?.rows.clone();
                WgmmaA::Descriptor(self.descriptor_base(region, Some(&rows)))
            }
        };
        // A view that may name the block of zeros: its descriptor, with no strides, reads only
        // the block's first 1024 bytes whatever the k-slice (the block is larger for
        // compute-sanitizer: [`crate::smem::zero_block_bytes`]).
        let zero = match &tile.zero_unless {
            Some(live) => {
                let offset = self.plan().zero_block.ok_or_else(|| {
                    CodegenError::Internal("a view of zeros in a kernel without the zero block".into())
                })?;
                let base = self.descriptor_base(&offset.to_string(), None);
                Some((live.clone(), self.descriptor(&base, (0, SWIZZLE_128B))))
            }
            None => None,
        };
        let a_shape = frag_shape(&self.cfg, k_dim, Elem::F16);
        let mut slices = vec![];
        for kk in 0..k / 16 {
            let mark = self.w.mark();
            let b_desc = self.descriptor(&b_base, k_slice(tile.transposed, tile.rows, kk));
            if let Some((live, zero_desc)) = &zero {
                self.w.ins(format!("selp.b64 {b_desc}, {b_desc}, {zero_desc}, {live}"));
            }
            let a_operand = match &a {
                WgmmaA::Registers(af) => {
                    let regs = (0..4).map(|i| af.at(a_shape.a(0, kk as usize, i))).collect::<Vec<_>>();
                    (format!("{{{}}}", regs.join(", ")), "")
                }
                WgmmaA::Descriptor(a_base) => {
                    (self.descriptor(a_base, k_slice(true, self.cfg.tile_m, kk)), "0, ")
                }
            };
            let setup = if deferred { self.w.take_since(mark) } else { String::new() };
            slices.push(PreparedSlice { setup, a: a_operand.0, trans_a: a_operand.1, b: b_desc });
        }
        Ok(PreparedWgmma { n, trans_b: u32::from(!tile.transposed), slices })
    }

    /// What `init` puts in `dst`'s accumulators before a wgmma adds `a · b` (every register a
    /// wgmma reads is written before it).
    pub(super) fn wgmma_init(&mut self, dst: Value, init: WgmmaInit) {
        let d = self.regs_of(dst);
        match init {
            WgmmaInit::Zero => {
                for i in 0..d.len {
                    self.w.ins(format!("mov.f32 {}, 0f00000000", d.at(i)));
                }
            }
            WgmmaInit::CopyFrom(acc) => {
                let c = self.regs_of(acc);
                if c.is(&d) {
                    return;
                }
                for i in 0..d.len {
                    self.w.ins(format!("mov.f32 {}, {}", d.at(i), c.at(i)));
                }
            }
            WgmmaInit::InPlace => {}
        }
    }

    /// Issues a prepared `dst = a · b` into `dst`'s accumulators as [`Emitter::wgmma_init`]
    /// left them: `wgmma.fence` and one `wgmma.mma_async` per k-slice, joining the open group;
    /// the caller commits and waits.
    pub(super) fn wgmma_issue_prepared(
        &mut self,
        dst: Value,
        prepared: &PreparedWgmma,
    ) -> Result<(), CodegenError> {
        let d = self.regs_of(dst);
        let operand = self.cfg.dtype.name();
        let d_list = (0..d.len).map(|i| d.at(i)).collect::<Vec<_>>().join(", ");
        let scale_d = self.wgmma_regs()?.scale_d.clone();
        let (n, trans) = (prepared.n, prepared.trans_b);
        self.w.ins("wgmma.fence.sync.aligned");
        for slice in &prepared.slices {
            self.w.put_back(&slice.setup);
            let (a_operand, trans_a, b_desc) = (&slice.a, slice.trans_a, &slice.b);
            self.w.ins(format!(
                "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{operand}.{operand} {{{d_list}}}, {a_operand}, {b_desc}, {scale_d}, 1, 1, {trans_a}{trans}"
            ));
        }
        Ok(())
    }

    fn wgmma_regs(&self) -> Result<&WgmmaRegs, CodegenError> {
        self.th()
            .wgmma
            .as_ref()
            .ok_or_else(|| CodegenError::Internal("wgmma outside an sm_90a kernel".into()))
    }

    /// `(shared address of the window + offset [+ extra]) >> 4`: a descriptor's start address
    /// field (bits 0-13), as a u64 register.
    fn descriptor_base(&mut self, offset: &str, extra: Option<&str>) -> String {
        let addr = self.w.temp(RegClass::B32);
        let smem = self.th().smem.clone();
        if offset == "0" {
            self.w.ins(format!("mov.u32 {addr}, {smem}"));
        } else {
            self.w.ins(format!("add.u32 {addr}, {smem}, {offset}"));
        }
        if let Some(extra) = extra {
            self.w.ins(format!("add.u32 {addr}, {addr}, {extra}"));
        }
        self.w.ins(format!("shr.u32 {addr}, {addr}, 4"));
        addr
    }

    /// The descriptor of a k-slice: `base` (the tile's first byte / 16, a 32-bit register)
    /// advanced by the slice's byte `offset`, with the `constant` part ([`k_slice`]). Only the
    /// low word is computed: the start address (bits 0-13) stays below 2^14 (shared memory is
    /// under 256 KB), so adding the constant's low word (bits 16-29) is the same as or-ing it,
    /// and the high word is the constant's. One 32-bit add per descriptor, where a 64-bit add
    /// and or cost ptxas six uniform instructions per k-slice.
    fn descriptor(&mut self, base: &str, (offset, constant): (u32, u64)) -> String {
        let (lo, hi) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        let low_word = (offset >> 4) + (constant & 0xFFFF_FFFF) as u32;
        self.w.ins(format!("add.u32 {lo}, {base}, {low_word:#x}"));
        self.w.ins(format!("mov.b32 {hi}, {:#x}", constant >> 32));
        let desc = self.w.temp(RegClass::B64);
        self.w.ins(format!("mov.b64 {desc}, {{{lo}, {hi}}}"));
        desc
    }

    /// `bar.sync 4 + g, 128`: the four warps of this warp's warpgroup `g` meet.
    pub(super) fn warpgroup_barrier(&mut self) -> Result<(), CodegenError> {
        let id = self.wgmma_regs()?.barrier.clone();
        self.w.ins(format!("bar.sync {id}, 128"));
        Ok(())
    }

    /// The column-block layout's rows (`wgmma_rows`, a tile that wgmma reads) where it applies:
    /// on sm_90a, for rows wider than one block (at D = 64 it is the sm_89 layout).
    pub(super) fn column_blocks(&self, wgmma_rows: Option<u32>) -> Option<u32> {
        wgmma_rows.filter(|_| self.cfg.target == Target::Sm90a && chunks_per_row(&self.cfg) > 8)
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
