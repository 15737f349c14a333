//! Streaming softmax warps: when a kernel has fewer softmax warps than compute warps, each
//! softmax lane owns whole rows of the tile (row `lane + 32·(w + warps·j)` for its `j`-th slot)
//! and runs the softmax statements on one row at a time, reading the scores from the channel the
//! compute warps filled in their mma fragment layout and writing probabilities and row
//! statistics back in that layout. A value of a `[rows, cols]` tile type holds `cols` registers
//! per row slot, a row vector one.

use std::collections::HashMap;

use flashcore_ir::kernel::*;
use flashcore_ir::source::BinOp;

use crate::emit::Emitter;
use crate::layout::frag_shape;
use crate::writer::{RegClass, RegFamily};
use crate::CodegenError;

/// The row slots of this lane and their validity.
pub struct RowStream {
    /// Per slot: the row index (register) and whether it is inside the tile (predicate).
    pub rows: Vec<(String, String)>,
    /// Registers of values, per (value, slot).
    pub regs: HashMap<(Value, usize), RegFamily>,
}

/// Whether an op is row-local work the stream runs row by row (the rest is synchronization or
/// structure, emitted once).
pub fn is_row_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Fill { .. }
            | Op::Const { .. }
            | Op::ScalarParam { .. }
            | Op::Reduce { .. }
            | Op::Binary { .. }
            | Op::Exp2 { .. }
            | Op::ToHalf { .. }
            | Op::Assign { .. }
            | Op::ChanRead { .. }
            | Op::ChanWrite { .. }
    )
}

impl Emitter<'_> {
    /// Sets up the row slots of this lane for a streaming group of `warps` warps.
    pub(crate) fn start_stream(&mut self, warps: u32) {
        let tile_m = self.cfg().tile_m;
        let slots = tile_m.div_ceil(32 * warps) as usize;
        let (lane, warp) = (self.lane_reg(), self.group_warp_reg());
        let mut rows = vec![];
        for j in 0..slots {
            let (row, inside) = (self.w().temp(RegClass::B32), self.w().temp(RegClass::Pred));
            self.w().ins(format!("mad.lo.u32 {row}, {warp}, 32, {lane}"));
            self.w().ins(format!("add.u32 {row}, {row}, {}", 32 * warps * j as u32));
            self.w().ins(format!("setp.lt.u32 {inside}, {row}, {tile_m}"));
            rows.push((row, inside));
        }
        self.stream = Some(RowStream { rows, regs: HashMap::new() });
    }

    fn stream_regs(&mut self, v: Value, slot: usize) -> RegFamily {
        if let Some(f) = self.stream.as_ref().and_then(|s| s.regs.get(&(v, slot))) {
            return f.clone();
        }
        let (len, class) = match self.kernel().ty(v) {
            Type::Frag { cols, elem: Elem::F32, .. } => (cols.size(&self.cfg()) as usize, RegClass::F32),
            // f16 pairs (columns 2k, 2k+1, the lower in the low half).
            Type::Frag { cols, elem: Elem::F16 | Elem::Bf16, .. } => {
                (cols.size(&self.cfg()) as usize / 2, RegClass::B32)
            }
            Type::Row { .. } | Type::Scalar => (1, RegClass::F32),
            other => panic!("streaming softmax warps hold no {other}"),
        };
        let name = self.kernel().value(v).name.clone();
        let prefix =
            format!("%row{slot}_{}_{}_", name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"), v.0);
        let fam = self.w().family(class, prefix, len);
        self.stream.as_mut().expect("in a stream").regs.insert((v, slot), fam.clone());
        fam
    }

    /// Emits a run of row ops, one row slot after the other.
    pub(crate) fn stream_run(&mut self, run: &[&Inst]) -> Result<(), CodegenError> {
        let slots = self.stream.as_ref().expect("in a stream").rows.len();
        for slot in 0..slots {
            self.w().comment(format!("row slot {slot}"));
            for inst in run {
                self.stream_op(&inst.op, slot)?;
            }
        }
        Ok(())
    }

    fn stream_op(&mut self, op: &Op, slot: usize) -> Result<(), CodegenError> {
        match op {
            Op::Fill { dst, value } => {
                let d = self.stream_regs(*dst, slot);
                for i in 0..d.len {
                    self.w().ins(format!("mov.f32 {}, 0f{:08X}", d.at(i), value.to_bits()));
                }
            }
            Op::Const { dst, value } => {
                let d = self.stream_regs(*dst, slot);
                self.w().ins(format!("mov.f32 {}, 0f{:08X}", d.at(0), value.to_bits()));
            }
            Op::ScalarParam { dst, param } => {
                let d = self.stream_regs(*dst, slot);
                let name = flashcore_ir::abi::EntryParam::F32 { param: *param }.ptx_name(self.kernel());
                self.w().ins(format!("ld.param.f32 {}, [{name}]", d.at(0)));
            }
            Op::Assign { dst, src } => {
                let (d, s) = (self.stream_regs(*dst, slot), self.stream_regs(*src, slot));
                for i in 0..d.len {
                    self.w().ins(format!("mov.f32 {}, {}", d.at(i), s.at(i)));
                }
            }
            Op::ToHalf { dst, src } => {
                let (d, s) = (self.stream_regs(*dst, slot), self.stream_regs(*src, slot));
                let half = self.cfg().dtype.name();
                for k in 0..d.len {
                    self.w().ins(format!(
                        "cvt.rn.{half}x2.f32 {}, {}, {}",
                        d.at(k),
                        s.at(2 * k + 1),
                        s.at(2 * k)
                    ));
                }
            }
            Op::Exp2 { dst, src } => {
                let (d, s) = (self.stream_regs(*dst, slot), self.stream_regs(*src, slot));
                for i in 0..d.len {
                    self.w().ins(format!("ex2.approx.ftz.f32 {}, {}", d.at(i), s.at(i)));
                }
            }
            Op::Reduce { dst, op, src } => {
                // The whole row is in this lane: no shuffles.
                let (d, s) = (self.stream_regs(*dst, slot), self.stream_regs(*src, slot));
                let instr = crate::emit::reduce_instr(*op);
                self.w().ins(format!("mov.f32 {}, {}", d.at(0), s.at(0)));
                for i in 1..s.len {
                    self.w().ins(format!("{instr} {}, {}, {}", d.at(0), d.at(0), s.at(i)));
                }
            }
            Op::Binary { dst, op, lhs, rhs } => {
                let (d, l, mut r) = (
                    self.stream_regs(*dst, slot),
                    self.stream_regs(*lhs, slot),
                    self.stream_regs(*rhs, slot),
                );
                if *op == BinOp::Sub && matches!(self.kernel().ty(*rhs), Type::Row { .. }) {
                    r = self.neg_inf_rows_as_zero(*dst, &r);
                }
                let lt = self.kernel().ty(*lhs);
                if lt.elem() != Some(Elem::F32) || lt != self.kernel().ty(*dst) {
                    return Err(CodegenError::Unsupported(
                        "integer, boolean or left-broadcast arithmetic on streaming softmax warps".into(),
                    ));
                }
                let instr = crate::emit::binary_instr(*op, Elem::F32);
                for i in 0..d.len {
                    let ri = if r.len == 1 { 0 } else { i };
                    self.w().ins(format!("{instr} {}, {}, {}", d.at(i), l.at(i), r.at(ri)));
                }
            }
            Op::ChanRead { dst, chan, .. } => self.stream_channel(*dst, *chan, slot, false)?,
            Op::ChanWrite { src, chan, .. } => self.stream_channel(*src, *chan, slot, true)?,
            other => {
                return Err(CodegenError::Unsupported(format!(
                    "`{}` on streaming softmax warps",
                    self.kernel().inst_text(&Inst {
                        op: other.clone(),
                        role: None,
                        span: flashcore_ir::source::SpanId::NONE
                    })
                )))
            }
        }
        Ok(())
    }

    /// Reads (or writes) this row slot's part of a channel that the compute warps hold in their
    /// mma fragment layout. For tile row r owned by compute warp w (16-row block mf, r % 16 =
    /// 8·half + g), column c sits in register ((mf·n_tiles + c/8)·4 + 2·half + c%2) of lane
    /// 4g + (c%8)/2; a row vector entry in register 2·mf + half of the four lanes 4g..4g+3.
    fn stream_channel(
        &mut self,
        v: Value,
        chan: ChanId,
        slot: usize,
        write: bool,
    ) -> Result<(), CodegenError> {
        let cfg = self.cfg();
        let ty = self.kernel().ty(v);
        let base = self.plan().channel_offsets[chan.0 as usize];
        let fam = self.stream_regs(v, slot);
        let (row, inside) = self.stream.as_ref().expect("in a stream").rows[slot].clone();
        let smem = self.smem_reg();
        let rows_per_warp = cfg.rows_per_warp();
        let compute_regs = crate::layout::register_count(&cfg, &ty).expect("register value") as u32;
        // Runtime part: warp w, block mf, half, g of this row.
        let (w, rr, mf, g, half) = (
            self.w().temp(RegClass::B32),
            self.w().temp(RegClass::B32),
            self.w().temp(RegClass::B32),
            self.w().temp(RegClass::B32),
            self.w().temp(RegClass::B32),
        );
        self.w().div_u32_by(&w, &row, rows_per_warp);
        self.w().rem_u32_by(&rr, &row, rows_per_warp);
        self.w().ins(format!("shr.u32 {mf}, {rr}, 4"));
        self.w().ins(format!("and.b32 {g}, {rr}, 7"));
        self.w().ins(format!("bfe.u32 {half}, {rr}, 3, 1"));
        let addr = self.w().temp(RegClass::B32);
        let reg_index = self.w().temp(RegClass::B32);
        match ty {
            Type::Frag { cols, elem: Elem::F16 | Elem::Bf16, .. } => {
                // A-operand layout: register (mf·k_slices + c/16)·4 + 2·((c%16)/8) + half.
                let k_slices = frag_shape(&cfg, cols, Elem::F16).col_blocks as u32;
                self.w().ins(format!("mad.lo.u32 {reg_index}, {mf}, {}, {half}", k_slices * 4));
            }
            Type::Frag { cols, .. } => {
                let n_tiles = frag_shape(&cfg, cols, Elem::F32).col_blocks as u32;
                // register index of column 0: (mf·n_tiles)·4 + 2·half
                self.w().ins(format!("mul.lo.u32 {reg_index}, {mf}, {}", n_tiles * 4));
                self.w().ins(format!("mad.lo.u32 {reg_index}, {half}, 2, {reg_index}"));
            }
            Type::Row { .. } => {
                self.w().ins(format!("mad.lo.u32 {reg_index}, {mf}, 2, {half}"));
            }
            other => return Err(CodegenError::Unsupported(format!("a {other} channel on streaming warps"))),
        }
        // ((w·regs + reg_index)·32 + 4g)·4 + smem
        self.w().ins(format!("mad.lo.u32 {addr}, {w}, {compute_regs}, {reg_index}"));
        self.w().ins(format!("shl.b32 {addr}, {addr}, 5"));
        self.w().ins(format!("mad.lo.u32 {addr}, {g}, 4, {addr}"));
        self.w().ins(format!("shl.b32 {addr}, {addr}, 2"));
        self.w().ins(format!("add.u32 {addr}, {addr}, {smem}"));
        match ty {
            Type::Frag { elem: Elem::F16 | Elem::Bf16, .. } => {
                for k in 0..fam.len as u32 {
                    // Columns 2k, 2k+1: register (c/16)·4 + 2·((c%16)/8), lane offset (c%8)/2.
                    let c = 2 * k;
                    let offset = base + ((((c / 16) * 4 + 2 * ((c % 16) / 8)) * 32) + (c % 8) / 2) * 4;
                    if write {
                        self.w().ins(format!(
                            "@{inside} st.shared.b32 [{addr}+{offset}], {}",
                            fam.at(k as usize)
                        ));
                    } else {
                        self.w().ins(format!(
                            "@{inside} ld.shared.b32 {}, [{addr}+{offset}]",
                            fam.at(k as usize)
                        ));
                    }
                }
            }
            Type::Frag { .. } => {
                for c in 0..fam.len as u32 {
                    // Compile-time part: register (c/8)·4 + c%2, lane offset (c%8)/2.
                    let offset = base + (((c / 8) * 4 + c % 2) * 32 + (c % 8) / 2) * 4;
                    if write {
                        self.w().ins(format!(
                            "@{inside} st.shared.f32 [{addr}+{offset}], {}",
                            fam.at(c as usize)
                        ));
                    } else {
                        self.w().ins(format!(
                            "@{inside} ld.shared.f32 {}, [{addr}+{offset}]",
                            fam.at(c as usize)
                        ));
                    }
                }
            }
            _ => {
                if write {
                    // Every lane of the quad reads its own copy.
                    for t in 0..4u32 {
                        self.w().ins(format!(
                            "@{inside} st.shared.f32 [{addr}+{}], {}",
                            base + 4 * t,
                            fam.at(0)
                        ));
                    }
                } else {
                    self.w().ins(format!("@{inside} ld.shared.f32 {}, [{addr}+{base}]", fam.at(0)));
                }
            }
        }
        Ok(())
    }
}
