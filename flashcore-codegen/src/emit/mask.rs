//! Masks that are functions of positions ([`TileMask`]), decided per tile. Interval arithmetic
//! over a box of (row, column) positions tells whether a mask keeps every score in it (a full
//! tile: the per-element code is skipped), none (an empty tile: the K/V loop does not visit it)
//! or some; evaluated on a single position it is the mask itself, which masks partial tiles.
//!
//! All of it is uniform over a warp (work-loop indices, the K/V tile index, parameters, a
//! warp's rows), so the branches it takes are `bra.uni`, except in the bounds scan, where each
//! lane tries its own K/V tiles.

use super::*;

/// A mask expression's value over a box of positions: a number's range (`lo == hi`, the same
/// register, when it is exact), or whether a condition can hold and whether it can fail.
#[derive(Clone, Debug)]
pub(super) enum Range {
    Num { lo: String, hi: String, float: bool },
    Bool { can_hold: String, can_fail: String },
}

/// A box of positions: inclusive (first, last) rows and columns, in registers.
struct Region {
    rows: (String, String),
    cols: (String, String),
}

impl Emitter<'_> {
    fn mask_of(&self, id: MaskId) -> Result<MaskExpr, CodegenError> {
        self.kernel
            .masks
            .get(id.0 as usize)
            .map(|m| m.keep.clone())
            .ok_or_else(|| CodegenError::Internal(format!("mask #{} is not in the kernel", id.0)))
    }

    /// The register of work-loop index number `i` of the enclosing work loop.
    fn work_index(&mut self, i: usize) -> Result<String, CodegenError> {
        let v = *self.work_vars.get(i).ok_or_else(|| {
            CodegenError::Internal(format!("a mask reads work index {i} outside the work loop"))
        })?;
        Ok(self.regs_of(v).at(0))
    }

    /// The work-loop index whose Q tiles a mask's rows walk (`None`: it reads no row).
    fn row_var(e: &MaskExpr) -> Option<usize> {
        match e {
            MaskExpr::RowPos(i) => Some(*i),
            _ => e.children().into_iter().find_map(Self::row_var),
        }
    }

    /// `[tile · size + first, tile · size + first + n − 1]`.
    fn span_of_tile(&mut self, tile: &str, size: u32, first: Option<&str>, n: u32) -> (String, String) {
        let (lo, hi) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.ins(format!("mul.lo.u32 {lo}, {tile}, {size}"));
        if let Some(first) = first {
            self.w.ins(format!("add.u32 {lo}, {lo}, {first}"));
        }
        self.w.ins(format!("add.u32 {hi}, {lo}, {}", n - 1));
        (lo, hi)
    }

    /// The range of `e` over `r`. Subexpressions without positions are uniform over a work
    /// item: while `uniform_cache` is on (one mask's per-element code) each is computed once.
    fn mask_range(&mut self, e: &MaskExpr, r: &Region) -> Result<Range, CodegenError> {
        // While the caches are on, each part is computed once: per row or key position it
        // reads (`element_cache`, keyed by the position registers), per mask when it reads
        // none (`uniform_cache`), or per work item when it reads no key (`invariant_cache`,
        // the bounds scan's).
        let mut key = format!("{e:?}");
        if e.mentions_rows() {
            key += &format!(" @rows {}..{}", r.rows.0, r.rows.1);
        }
        if e.mentions_cols() {
            key += &format!(" @cols {}..{}", r.cols.0, r.cols.1);
        }
        if let Some(hit) = self.mask_cache(e).as_ref().and_then(|c| c.get(&key)) {
            return Ok(hit.clone());
        }
        let range = self.mask_range_uncached(e, r)?;
        if let Some(c) = self.mask_cache(e).as_mut() {
            c.insert(key, range.clone());
        }
        Ok(range)
    }

    /// The cache that holds `e`'s range (see [`Emitter::mask_range`]).
    fn mask_cache(&mut self, e: &MaskExpr) -> &mut Option<HashMap<String, Range>> {
        if self.invariant_cache.is_some() && !e.mentions_cols() {
            &mut self.invariant_cache
        } else if e.mentions_positions() {
            &mut self.element_cache
        } else {
            &mut self.uniform_cache
        }
    }

    /// Computes the parts of `e` that read no key position (with `tables_only`, just those
    /// that read a table) into `invariant_cache` (which must be on), so that a loop over K/V
    /// tiles emitted after this finds them there.
    fn hoist_key_invariant(
        &mut self,
        e: &MaskExpr,
        r: &Region,
        tables_only: bool,
    ) -> Result<(), CodegenError> {
        if !e.mentions_cols() && (!tables_only || reads_table(e)) {
            return self.mask_range(e, r).map(|_| ());
        }
        e.children().into_iter().try_for_each(|c| self.hoist_key_invariant(c, r, tables_only))
    }

    /// This warp's rows of the Q tile as a box of positions (unused by a mask that reads no
    /// row).
    fn warp_rows(&mut self, expr: &MaskExpr) -> Result<(String, String), CodegenError> {
        let row0 = self.th().warp_row0.clone();
        Ok(match Self::row_var(expr) {
            Some(i) => {
                let q_tile = self.work_index(i)?;
                self.span_of_tile(&q_tile, self.cfg.tile_m, Some(&row0), self.cfg.rows_per_warp())
            }
            None => (row0.clone(), row0),
        })
    }

    /// Before K/V loop `body`: the table reads of its masks that read no key (a warp's
    /// document ids) are the same for every K/V tile of a work item, so their ranges over the
    /// warp's rows are read once here, not per tile (see [`Emitter::mask_where`]).
    pub(super) fn hoist_mask_tables(&mut self, body: &Block) -> Result<(), CodegenError> {
        let mut ids = vec![];
        self.kernel.walk_block(body, &mut |inst| {
            if let Op::MaskWhere { mask: Some(id), .. } = inst.op {
                ids.push(id);
            }
        });
        ids.dedup();
        for id in ids {
            let expr = self.mask_of(id)?;
            if !reads_table(&expr) || self.hoisted_rows.contains_key(&id) {
                continue;
            }
            self.w.comment(format!("mask #{}: this warp's rows' table reads, once per work item", id.0));
            let rows = self.warp_rows(&expr)?;
            self.invariant_cache = Some(HashMap::new());
            self.cooperative_tables = true;
            let hoisted =
                self.hoist_key_invariant(&expr, &Region { rows: rows.clone(), cols: rows.clone() }, true);
            self.cooperative_tables = false;
            let cache = self.invariant_cache.take().unwrap_or_default();
            hoisted?;
            self.hoisted_rows.insert(id, (rows, cache));
        }
        Ok(())
    }

    fn mask_range_uncached(&mut self, e: &MaskExpr, r: &Region) -> Result<Range, CodegenError> {
        let num = |lo: String, hi: String, float: bool| Range::Num { lo, hi, float };
        let exact = |x: String, float: bool| Range::Num { lo: x.clone(), hi: x, float };
        Ok(match e {
            MaskExpr::RowPos(_) => num(r.rows.0.clone(), r.rows.1.clone(), false),
            MaskExpr::ColPos => num(r.cols.0.clone(), r.cols.1.clone(), false),
            MaskExpr::WorkIndex(i) => exact(self.work_index(*i)?, false),
            MaskExpr::Len(d) => exact(self.dim_reg(*d), false),
            MaskExpr::Param(p) => {
                let x = self.w.temp(RegClass::F32);
                let name = EntryParam::F32 { param: *p }.ptx_name(self.kernel);
                self.w.ins(format!("ld.param.f32 {x}, [{name}]"));
                exact(x, true)
            }
            MaskExpr::Int(v) => {
                let x = self.w.temp(RegClass::B32);
                self.w.ins(format!("mov.s32 {x}, {v}"));
                exact(x, false)
            }
            MaskExpr::Float(v) => {
                let x = self.w.temp(RegClass::F32);
                self.w.ins(format!("mov.f32 {x}, {}", f32_hex(*v)));
                exact(x, true)
            }
            MaskExpr::ToFloat(a) => {
                let Range::Num { lo, hi, .. } = self.mask_range(a, r)? else {
                    return Err(CodegenError::Internal("a mask converts a condition to f32".into()));
                };
                let f_lo = self.w.temp(RegClass::F32);
                self.w.ins(format!("cvt.rn.f32.s32 {f_lo}, {lo}"));
                if lo == hi {
                    exact(f_lo, true)
                } else {
                    let f_hi = self.w.temp(RegClass::F32);
                    self.w.ins(format!("cvt.rn.f32.s32 {f_hi}, {hi}"));
                    num(f_lo, f_hi, true)
                }
            }
            MaskExpr::Unary(op, a) => match (op, self.mask_range(a, r)?) {
                (UnaryOp::Not, Range::Bool { can_hold, can_fail }) => {
                    Range::Bool { can_hold: can_fail, can_fail: can_hold }
                }
                (UnaryOp::Neg, Range::Num { lo, hi, float }) => {
                    let ty = if float { "f32" } else { "s32" };
                    let class = if float { RegClass::F32 } else { RegClass::B32 };
                    let n_hi = self.w.temp(class);
                    self.w.ins(format!("neg.{ty} {n_hi}, {lo}"));
                    if lo == hi {
                        exact(n_hi, float)
                    } else {
                        let n_lo = self.w.temp(class);
                        self.w.ins(format!("neg.{ty} {n_lo}, {hi}"));
                        num(n_lo, n_hi, float)
                    }
                }
                _ => return Err(CodegenError::Internal(format!("mask op {op:?} on the wrong type"))),
            },
            MaskExpr::Binary(op, a, b) => {
                let (a, b) = (self.mask_range(a, r)?, self.mask_range(b, r)?);
                self.binary_range(*op, a, b)?
            }
            MaskExpr::Table { param, indices } => {
                let ranges = indices.iter().map(|i| self.mask_range(i, r)).collect::<Result<Vec<_>, _>>()?;
                // An index that follows the key (not the query): its runs are summarised.
                let summarised = (0..indices.len()).find(|&axis| {
                    let summary = TableSummary { param: *param, axis };
                    self.summaries.contains_key(&summary)
                        && indices[axis].mentions_cols()
                        && !indices[axis].mentions_rows()
                });
                self.table_range(*param, &ranges, summarised)?
            }
        })
    }

    /// The range of i32 table `param` read at index ranges `indices` (each clamped into its
    /// axis, as `t.at(..)` reads): one load when every index is exact; otherwise the minimum
    /// and maximum of the run of elements along the one index that varies. Each lane reads the
    /// run itself (8 loads in flight a step), or, with `cooperative_tables` on (a converged
    /// warp with one run for all its lanes), lane `l` reads elements `l, l + 32, ..` (2 loads
    /// in flight a step) and `redux.sync` combines the lanes. When the index that varies is
    /// axis `summarised`, whose summary the launch made (`TableSummary`), the run is read
    /// instead as the (min, max) pairs of the `TILE_N` blocks it touches: one, for a K/V tile's
    /// keys.
    fn table_range(
        &mut self,
        param: usize,
        indices: &[Range],
        summarised: Option<usize>,
    ) -> Result<Range, CodegenError> {
        let Some(Param::Table(table)) = self.kernel.params.get(param) else {
            return Err(CodegenError::Internal("a mask reads a parameter that is not a table".into()));
        };
        if table.elem != Elem::I32 || table.dims.len() != indices.len() {
            return Err(CodegenError::Internal("a mask reads a table that is not i32 at its rank".into()));
        }
        let dims = table.dims.clone();
        let global = self.tensors[param]
            .clone()
            .ok_or_else(|| CodegenError::Internal("table without a pointer".into()))?;
        // A packed table's variable-length axis: the work item's sequence starts at `start`.
        let clamp = |this: &mut Self, axis: usize, idx: &str| {
            let last = this.w.temp(RegClass::B32);
            this.w.ins(format!("sub.s32 {last}, {}, 1", this.dim_reg(dims[axis])));
            let clamped = this.clamp_index(idx, &last);
            match this.packed_start(dims[axis]) {
                Some(start) => {
                    let row = this.w.temp(RegClass::B32);
                    this.w.ins(format!("add.u32 {row}, {clamped}, {start}"));
                    row
                }
                None => clamped,
            }
        };
        // A run along the summarised axis is read from the summary, addressed as the table is
        // at 8 bytes an element instead of 4.
        let summary_ptr = summarised
            .filter(|&axis| matches!(&indices[axis], Range::Num { lo, hi, .. } if lo != hi))
            .map(|axis| {
                self.summaries.get(&TableSummary { param, axis }).cloned().ok_or_else(|| {
                    CodegenError::Internal("a summarised table read without the summary's pointer".into())
                })
            })
            .transpose()?;
        let base = self.w.temp(RegClass::B64);
        self.w.ins(format!("mov.b64 {base}, {}", summary_ptr.as_ref().unwrap_or(&global.ptr)));
        let mut varying = None;
        for (axis, index) in indices.iter().enumerate() {
            let Range::Num { lo, hi, float: false } = index else {
                return Err(CodegenError::Internal("a table index that is not an i32".into()));
            };
            if lo != hi {
                if varying.is_some() {
                    return Err(CodegenError::Internal("a mask's table read varies along two axes".into()));
                }
                varying = Some((axis, lo.clone(), hi.clone()));
                continue;
            }
            let clamped = clamp(self, axis, lo);
            let mut bytes = self.axis_offset(&clamped, &global.strides[axis]);
            if summary_ptr.is_some() {
                let twice = self.w.temp(RegClass::B64);
                self.w.ins(format!("shl.b64 {twice}, {bytes}, 1"));
                bytes = twice;
            }
            self.w.ins(format!("add.u64 {base}, {base}, {bytes}"));
        }
        let Some((axis, lo, hi)) = varying else {
            let x = self.w.temp(RegClass::B32);
            self.w.ins(format!("ld.global.s32 {x}, [{base}]"));
            return Ok(Range::Num { lo: x.clone(), hi: x, float: false });
        };
        let (first, last) = (clamp(self, axis, &lo), clamp(self, axis, &hi));
        let stride = global.strides[axis].clone();
        if summary_ptr.is_some() {
            return Ok(self.summary_range(&base, (&first, &last), &stride));
        }
        let (min, max, j) =
            (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.ins(format!("mov.s32 {min}, 2147483647"));
        self.w.ins(format!("mov.s32 {max}, -2147483648"));
        let cooperative = self.cooperative_tables;
        // Lanes apart, loads a step.
        let (apart, unroll) = if cooperative { (32, 2) } else { (1, 8) };
        if cooperative {
            self.w.ins(format!("add.s32 {j}, {first}, {}", self.th().lane));
        } else {
            self.w.ins(format!("mov.s32 {j}, {first}"));
        }
        let (top, done) = (self.w.label("table_run"), self.w.label("table_run_done"));
        let past = self.w.temp(RegClass::Pred);
        self.w.place_label(&top);
        self.w.ins(format!("setp.gt.s32 {past}, {j}, {last}"));
        self.w.ins(format!("@{past} bra {done}"));
        for u in 0..unroll {
            // Past the run's end a step rereads its last element, which leaves min and max as
            // they are.
            let (idx, addr, x) =
                (self.w.temp(RegClass::B32), self.w.temp(RegClass::B64), self.w.temp(RegClass::B32));
            self.w.ins(format!("add.s32 {idx}, {j}, {}", u * apart));
            self.w.ins(format!("min.s32 {idx}, {idx}, {last}"));
            let bytes = self.axis_offset(&idx, &stride);
            self.w.ins(format!("add.u64 {addr}, {base}, {bytes}"));
            self.w.ins(format!("ld.global.s32 {x}, [{addr}]"));
            self.w.ins(format!("min.s32 {min}, {min}, {x}"));
            self.w.ins(format!("max.s32 {max}, {max}, {x}"));
        }
        self.w.ins(format!("add.s32 {j}, {j}, {}", apart * unroll));
        self.w.ins(format!("bra {top}"));
        self.w.place_label(&done);
        if cooperative {
            self.w.ins(format!("redux.sync.min.s32 {min}, {min}, 0xffffffff"));
            self.w.ins(format!("redux.sync.max.s32 {max}, {max}, 0xffffffff"));
        }
        Ok(Range::Num { lo: min, hi: max, float: false })
    }

    /// The minimum and maximum of a table's elements `first ..= last` along a summarised axis
    /// (element `stride` apart), from the pairs of the blocks of `TILE_N` the run touches in the
    /// table's summary, whose other axes' pair `base` addresses.
    fn summary_range(&mut self, base: &str, (first, last): (&str, &str), stride: &str) -> Range {
        self.w.comment(format!(
            "the run's min and max from its blocks of {} (the table's summary)",
            self.cfg.tile_n
        ));
        let (block, last_block) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.ins(format!("div.u32 {block}, {first}, {}", self.cfg.tile_n));
        self.w.ins(format!("div.u32 {last_block}, {last}, {}", self.cfg.tile_n));
        let (min, max) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.ins(format!("mov.s32 {min}, 2147483647"));
        self.w.ins(format!("mov.s32 {max}, -2147483648"));
        let (top, done) = (self.w.label("summary_run"), self.w.label("summary_run_done"));
        let past = self.w.temp(RegClass::Pred);
        self.w.place_label(&top);
        self.w.ins(format!("setp.gt.u32 {past}, {block}, {last_block}"));
        self.w.ins(format!("@{past} bra {done}"));
        let (block_bytes, bytes, addr) =
            (self.w.temp(RegClass::B32), self.w.temp(RegClass::B64), self.w.temp(RegClass::B64));
        self.w.ins(format!("shl.b32 {block_bytes}, {block}, 3"));
        self.w.ins(format!("mul.wide.u32 {bytes}, {block_bytes}, {stride}"));
        self.w.ins(format!("add.u64 {addr}, {base}, {bytes}"));
        let (lo, hi) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.ins(format!("ld.global.v2.s32 {{{lo}, {hi}}}, [{addr}]"));
        self.w.ins(format!("min.s32 {min}, {min}, {lo}"));
        self.w.ins(format!("max.s32 {max}, {max}, {hi}"));
        self.w.ins(format!("add.u32 {block}, {block}, 1"));
        self.w.ins(format!("bra {top}"));
        self.w.place_label(&done);
        Range::Num { lo: min, hi: max, float: false }
    }

    fn binary_range(&mut self, op: BinOp, a: Range, b: Range) -> Result<Range, CodegenError> {
        let pred = |this: &mut Self| this.w.temp(RegClass::Pred);
        if let (Range::Bool { can_hold: at, can_fail: af }, Range::Bool { can_hold: bt, can_fail: bf }) =
            (&a, &b)
        {
            let (t, f) = (pred(self), pred(self));
            let (hold, fail) = match op {
                BinOp::And => ("and", "or"),
                BinOp::Or => ("or", "and"),
                _ => return Err(CodegenError::Internal(format!("mask op {op:?} on conditions"))),
            };
            self.w.ins(format!("{hold}.pred {t}, {at}, {bt}"));
            self.w.ins(format!("{fail}.pred {f}, {af}, {bf}"));
            return Ok(Range::Bool { can_hold: t, can_fail: f });
        }
        let (Range::Num { lo: al, hi: ah, float }, Range::Num { lo: bl, hi: bh, .. }) = (a, b) else {
            return Err(CodegenError::Internal(format!("mask op {op:?} mixes numbers and conditions")));
        };
        let (ty, class) = if float { ("f32", RegClass::F32) } else { ("s32", RegClass::B32) };
        let exact = al == ah && bl == bh;
        // Exact operands: the op itself, as the elementwise code computes it.
        if exact && !op.is_comparison() && !op.is_logic() {
            let x = self.w.temp(class);
            let instr = binary_instr(op, if float { Elem::F32 } else { Elem::I32 });
            self.w.ins(format!("{instr} {x}, {al}, {bl}"));
            return Ok(Range::Num { lo: x.clone(), hi: x, float });
        }
        let emit = |this: &mut Self, instr: &str, x: &str, y: &str| {
            let d = this.w.temp(class);
            this.w.ins(format!("{instr}.{ty} {d}, {x}, {y}"));
            d
        };
        let num = |lo: String, hi: String| Range::Num { lo, hi, float };
        Ok(match op {
            BinOp::Add | BinOp::Min | BinOp::Max => {
                let instr = match op {
                    BinOp::Add => "add",
                    BinOp::Min => "min",
                    _ => "max",
                };
                let lo = emit(self, instr, &al, &bl);
                let hi = emit(self, instr, &ah, &bh);
                num(lo, hi)
            }
            BinOp::Sub => {
                let lo = emit(self, "sub", &al, &bh);
                let hi = emit(self, "sub", &ah, &bl);
                num(lo, hi)
            }
            BinOp::Mul => {
                let mul = if float { "mul" } else { "mul.lo" };
                let products: Vec<String> = [(&al, &bl), (&al, &bh), (&ah, &bl), (&ah, &bh)]
                    .iter()
                    .map(|(x, y)| emit(self, mul, x, y))
                    .collect();
                let lo = emit(self, "min", &products[0], &products[1]);
                let lo = emit(self, "min", &lo, &products[2]);
                let lo = emit(self, "min", &lo, &products[3]);
                let hi = emit(self, "max", &products[0], &products[1]);
                let hi = emit(self, "max", &hi, &products[2]);
                let hi = emit(self, "max", &hi, &products[3]);
                num(lo, hi)
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                // x < y can hold when min x < max y and fail when max x ≥ min y (NaN: neither).
                let ((xl, xh), (yl, yh), strict) = match op {
                    BinOp::Lt => ((&al, &ah), (&bl, &bh), true),
                    BinOp::Le => ((&al, &ah), (&bl, &bh), false),
                    BinOp::Gt => ((&bl, &bh), (&al, &ah), true),
                    _ => ((&bl, &bh), (&al, &ah), false),
                };
                let (hold, fail) = if strict { ("lt", "ge") } else { ("le", "gt") };
                let (t, f) = (pred(self), pred(self));
                self.w.ins(format!("setp.{hold}.{ty} {t}, {xl}, {yh}"));
                self.w.ins(format!("setp.{fail}.{ty} {f}, {xh}, {yl}"));
                Range::Bool { can_hold: t, can_fail: f }
            }
            BinOp::Eq | BinOp::Ne => {
                // Equal can hold when the ranges overlap, and fail unless both are one value.
                let (overlap, t2, same) = (pred(self), pred(self), pred(self));
                self.w.ins(format!("setp.le.{ty} {overlap}, {al}, {bh}"));
                self.w.ins(format!("setp.le.{ty} {t2}, {bl}, {ah}"));
                self.w.ins(format!("and.pred {overlap}, {overlap}, {t2}"));
                self.w.ins(format!("setp.eq.{ty} {same}, {al}, {ah}"));
                self.w.ins(format!("setp.eq.{ty} {t2}, {bl}, {bh}"));
                self.w.ins(format!("and.pred {same}, {same}, {t2}"));
                self.w.ins(format!("setp.eq.{ty} {t2}, {al}, {bl}"));
                self.w.ins(format!("and.pred {same}, {same}, {t2}"));
                let differ = pred(self);
                self.w.ins(format!("not.pred {differ}, {same}"));
                if op == BinOp::Eq {
                    Range::Bool { can_hold: overlap, can_fail: differ }
                } else {
                    Range::Bool { can_hold: differ, can_fail: overlap }
                }
            }
            other => return Err(CodegenError::Internal(format!("mask op {other:?} is not bounded"))),
        })
    }

    /// The condition's (can hold, can fail) predicates over `region`.
    fn mask_bounds(&mut self, e: &MaskExpr, region: &Region) -> Result<(String, String), CodegenError> {
        match self.mask_range(e, region)? {
            Range::Bool { can_hold, can_fail } => Ok((can_hold, can_fail)),
            Range::Num { .. } => Err(CodegenError::Internal("a mask that is not a condition".into())),
        }
    }

    /// `dst = keep ? src : -inf`. With a mask of positions: a warp whose rows and keys the mask
    /// keeps entirely skips the per-element code (a uniform branch); the others evaluate the
    /// mask at each element's position.
    pub(super) fn mask_where(
        &mut self,
        dst: Value,
        src: Value,
        keep: Value,
        mask: Option<MaskId>,
    ) -> Result<(), CodegenError> {
        let Type::Frag { cols, .. } = self.kernel.ty(src) else {
            return Err(CodegenError::Internal("mask of a non-fragment".into()));
        };
        let d = self.scores_in_place(dst, src);
        let Some(id) = mask else {
            let (kt, dt) = (self.kernel.ty(keep), self.kernel.ty(dst));
            let k = self.regs_of(keep);
            for i in 0..d.len {
                let ki = self.operand_index(kt, dt, i);
                self.w.ins(format!("@!{} mov.f32 {}, 0fFF800000", k.at(ki), d.at(i)));
            }
            return Ok(());
        };
        let expr = self.mask_of(id)?;
        let kv = self
            .pipeline_var
            .ok_or_else(|| CodegenError::Internal("a tile mask outside the K/V loop".into()))?;
        let kt = self.regs_of(kv).at(0);
        let key0 = self.split_key0(cols);
        let keys_per_warp = cols.per_warp(&self.cfg);
        // This warp's box: its rows of the Q tile (with the table reads on them, when they were
        // hoisted out of the K/V loop), its keys of the K/V tile.
        let (rows, hoisted) = match self.hoisted_rows.get(&id).cloned() {
            Some((rows, cache)) => (rows, Some(cache)),
            None => (self.warp_rows(&expr)?, None),
        };
        let cols_box = self.span_of_tile(&kt, self.cfg.tile_n, key0.as_deref(), keys_per_warp);
        self.w.comment(format!("mask #{}: a warp whose scores it keeps everywhere skips it", id.0));
        // The caches stay on through the per-element code, which the check dominates.
        self.uniform_cache = Some(HashMap::new());
        self.element_cache = Some(HashMap::new());
        self.cooperative_tables = true;
        self.invariant_cache = hoisted;
        let bounds = self.mask_bounds(&expr, &Region { rows: rows.clone(), cols: cols_box.clone() });
        (self.cooperative_tables, self.invariant_cache) = (false, None);
        let (can_hold, can_fail) = bounds?;
        let (full, skip) = (self.w.temp(RegClass::Pred), self.w.label("mask_full"));
        self.w.ins(format!("not.pred {full}, {can_fail}"));
        self.w.ins(format!("and.pred {full}, {full}, {can_hold}"));
        self.w.ins(format!("@{full} bra.uni {skip}"));
        let (group, quad_lane) = (self.th().group.clone(), self.th().quad_lane.clone());
        let (row_base, col_base) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.ins(format!("add.u32 {row_base}, {}, {group}", rows.0));
        self.w.ins(format!("shl.b32 {col_base}, {quad_lane}, 1"));
        self.w.ins(format!("add.u32 {col_base}, {col_base}, {}", cols_box.0));
        let shape = frag_shape(&self.cfg, cols, Elem::F32);
        // One register per row and per key position, so that the parts of the mask that read
        // only the row (or only the key) are computed once per row (or key), not per element.
        let (mut row_regs, mut col_regs) = (HashMap::new(), HashMap::new());
        // The register holding `base + offset`, made on first use.
        let position = |this: &mut Self, regs: &mut HashMap<usize, String>, base: &str, offset: usize| {
            regs.entry(offset)
                .or_insert_with(|| {
                    let r = this.w.temp(RegClass::B32);
                    this.w.ins(format!("add.u32 {r}, {base}, {offset}"));
                    r
                })
                .clone()
        };
        for (reg, row_offset, col_offset) in shape.acc_elements() {
            let row = position(self, &mut row_regs, &row_base, row_offset);
            let col = position(self, &mut col_regs, &col_base, col_offset);
            let region = Region { rows: (row.clone(), row), cols: (col.clone(), col) };
            let (keep, _) = self.mask_bounds(&expr, &region)?;
            self.w.ins(format!("@!{keep} mov.f32 {}, 0fFF800000", d.at(reg)));
        }
        self.uniform_cache = None;
        self.element_cache = None;
        self.w.place_label(&skip);
        Ok(())
    }

    /// The value of loop bound `id` (an i32 expression of the work item), in a register of its
    /// own.
    pub(super) fn loop_bound(&mut self, id: BoundId) -> Result<String, CodegenError> {
        let expr =
            self.kernel.bounds.get(id.0 as usize).cloned().ok_or_else(|| {
                CodegenError::Internal(format!("loop bound #{} is not in the kernel", id.0))
            })?;
        let zero = self.w.temp(RegClass::B32);
        self.w.ins(format!("mov.u32 {zero}, 0"));
        let nowhere = Region { rows: (zero.clone(), zero.clone()), cols: (zero.clone(), zero) };
        let Range::Num { lo, hi, float: false } = self.mask_range(&expr, &nowhere)? else {
            return Err(CodegenError::Internal(format!("loop bound #{} is not an i32", id.0)));
        };
        if lo != hi {
            return Err(CodegenError::Internal(format!("loop bound #{} depends on positions", id.0)));
        }
        let value = self.w.temp(RegClass::B32);
        self.w.ins(format!("mov.b32 {value}, {lo}"));
        Ok(value)
    }

    /// Block-sparse K/V loop bounds: the first and one past the last K/V tile (from `start`,
    /// the source's range, or 0, and below `count`) that `mask` keeps any score of for this
    /// work item's Q tile. Each lane tries tiles `start + lane, start + lane + 32, ..`; a
    /// butterfly takes the warp's min and max. `count` is lowered to the end; the returned
    /// register is the first tile (at most `count`).
    pub(super) fn mask_loop_bounds(
        &mut self,
        id: MaskId,
        start: Option<&str>,
        count: &str,
    ) -> Result<String, CodegenError> {
        let expr = self.mask_of(id)?;
        self.w
            .comment(format!("block-sparse: visit only the K/V tiles that mask #{} keeps a score of", id.0));
        let lane = self.th().lane.clone();
        let rows = match Self::row_var(&expr) {
            Some(i) => {
                let q_tile = self.work_index(i)?;
                self.span_of_tile(&q_tile, self.cfg.tile_m, None, self.cfg.tile_m)
            }
            None => {
                let zero = self.w.temp(RegClass::B32);
                self.w.ins(format!("mov.u32 {zero}, 0"));
                (zero.clone(), zero)
            }
        };
        // The parts of the mask that read no key (a Q tile's document ids) are computed once,
        // before the scan, by the whole warp.
        self.invariant_cache = Some(HashMap::new());
        self.cooperative_tables = true;
        let hoisted =
            self.hoist_key_invariant(&expr, &Region { rows: rows.clone(), cols: rows.clone() }, false);
        self.cooperative_tables = false;
        if let Err(e) = hoisted {
            self.invariant_cache = None;
            return Err(e);
        }
        let (first, end, t) =
            (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.ins(format!("mov.s32 {first}, 2147483647"));
        self.w.ins(format!("mov.s32 {end}, 0"));
        match start {
            // The source's range starts later: the scan need not look before it.
            Some(start) => self.w.ins(format!("add.u32 {t}, {start}, {lane}")),
            None => self.w.ins(format!("mov.u32 {t}, {lane}")),
        }
        let (top, done) = (self.w.label("mask_scan"), self.w.label("mask_scan_done"));
        self.w.place_label(&top);
        let past = self.w.temp(RegClass::Pred);
        self.w.ins(format!("setp.ge.u32 {past}, {t}, {count}"));
        self.w.ins(format!("@{past} bra {done}"));
        let cols = self.span_of_tile(&t, self.cfg.tile_n, None, self.cfg.tile_n);
        self.element_cache = Some(HashMap::new());
        let bounds = self.mask_bounds(&expr, &Region { rows, cols });
        (self.invariant_cache, self.element_cache) = (None, None);
        let (can_hold, _) = bounds?;
        let next = self.w.temp(RegClass::B32);
        self.w.ins(format!("add.u32 {next}, {t}, 1"));
        self.w.ins(format!("@{can_hold} min.s32 {first}, {first}, {t}"));
        self.w.ins(format!("@{can_hold} max.s32 {end}, {end}, {next}"));
        self.w.ins(format!("add.u32 {t}, {t}, 32"));
        self.w.ins(format!("bra {top}"));
        self.w.place_label(&done);
        for lanes in [16, 8, 4, 2, 1] {
            let other = self.w.temp(RegClass::B32);
            self.w.ins(format!("shfl.sync.bfly.b32 {other}, {first}, {lanes}, 0x1f, 0xffffffff"));
            self.w.ins(format!("min.s32 {first}, {first}, {other}"));
            self.w.ins(format!("shfl.sync.bfly.b32 {other}, {end}, {lanes}, 0x1f, 0xffffffff"));
            self.w.ins(format!("max.s32 {end}, {end}, {other}"));
        }
        self.w.ins(format!("min.u32 {count}, {count}, {end}"));
        self.w.ins(format!("min.u32 {first}, {first}, {count}"));
        Ok(first)
    }
}

/// Whether a mask expression reads an input table.
fn reads_table(e: &MaskExpr) -> bool {
    e.any(&|e| matches!(e, MaskExpr::Table { .. }))
}
