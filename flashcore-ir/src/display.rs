//! The text form of the IR (`impl Display for Kernel`): what snapshots pin and what
//! `--emit ir` prints. One instruction per line, values as `%name.id`, types after a colon,
//! the role annotation (if any) as a leading `@role`.

use std::fmt::{self, Write};

use crate::kernel::*;
use crate::source::{ReduceOp, UnaryOp};

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Type::Index { dim, tile } => match tile {
                Some(t) => write!(f, "idx<dim{}/{}>", dim.0, t.symbol()),
                None => write!(f, "idx<dim{}>", dim.0),
            },
            Type::Scalar => f.write_str("f32"),
            Type::Int => f.write_str("i32"),
            Type::Bool => f.write_str("bool"),
            Type::Smem { rows, cols, transposed, elem } => {
                write!(f, "smem<{}>[{}, {}]", elem.name(), rows.symbol(), cols.symbol())?;
                if transposed {
                    f.write_str(".t")?;
                }
                Ok(())
            }
            Type::Frag { rows, cols, elem } => {
                write!(f, "frag<{}>[{}, {}]", elem.name(), rows.symbol(), cols.symbol())
            }
            Type::Row { rows } => write!(f, "row<f32>[{}]", rows.symbol()),
            Type::Col { cols } => write!(f, "col<f32>[{}]", cols.symbol()),
            Type::Counter => f.write_str("counter"),
        }
    }
}

struct Printer<'k> {
    kernel: &'k Kernel,
}

impl Printer<'_> {
    fn v(&self, v: Value) -> String {
        format!("%{}.{}", self.kernel.value(v).name, v.0)
    }

    fn def(&self, v: Value) -> String {
        format!("{}: {}", self.v(v), self.kernel.ty(v))
    }

    fn access(&self, a: &TileAccess) -> String {
        let coords: Vec<String> = a
            .coords
            .iter()
            .enumerate()
            .map(|(axis, c)| match a.group(axis) {
                Some(g) => format!(
                    "{} / ({}/{})",
                    self.v(*c),
                    self.kernel.dims[g.of.0 as usize],
                    self.kernel.dims[g.to.0 as usize]
                ),
                None => match (axis, a.pages) {
                    (0, Some(table)) => format!("{}[{}]", self.kernel.params[table].name(), self.v(*c)),
                    _ => self.v(*c),
                },
            })
            .collect();
        format!("{}[{}]", self.kernel.params[a.param].name(), coords.join(", "))
    }

    fn extent(&self, e: &LoopExtent) -> String {
        let dim = &self.kernel.dims[e.dim.0 as usize];
        let extent = match e.per_tile {
            Some(t) => format!("{dim}/{}", t.symbol()),
            None => dim.clone(),
        };
        let extent = match e.causal {
            Some(c) => format!("{extent} causal({})", self.causal(&c)),
            None => extent,
        };
        let extent = match e.skip {
            Some(m) => format!("{extent} skipping tiles that mask #{} empties", m.0),
            None => extent,
        };
        let extent = match e.from {
            Some(b) => format!("{extent} from bound #{}", b.0),
            None => extent,
        };
        match e.to {
            Some(b) => format!("{extent} to bound #{}", b.0),
            None => extent,
        }
    }

    /// A mask expression, with parameters and axes by name.
    fn mask_expr(&self, e: &MaskExpr) -> String {
        match e {
            MaskExpr::RowPos(i) => format!("row_pos(work index {i})"),
            MaskExpr::ColPos => "col_pos".to_string(),
            MaskExpr::WorkIndex(i) => format!("work_index{i}"),
            MaskExpr::Param(p) => self.kernel.params[*p].name().to_string(),
            MaskExpr::Len(d) => format!("len({})", self.kernel.dims[d.0 as usize]),
            MaskExpr::Int(x) => x.to_string(),
            MaskExpr::Float(x) => format!("{x:?}"),
            MaskExpr::Binary(op, a, b) => {
                format!("({} {} {})", self.mask_expr(a), op.symbol(), self.mask_expr(b))
            }
            MaskExpr::Unary(UnaryOp::Not, a) => format!("!{}", self.mask_expr(a)),
            MaskExpr::Unary(op, a) => format!("{}({})", op.name(), self.mask_expr(a)),
            MaskExpr::ToFloat(a) => format!("f32({})", self.mask_expr(a)),
            MaskExpr::Table { param, indices } => format!(
                "{}.at({})",
                self.kernel.params[*param].name(),
                indices.iter().map(|i| self.mask_expr(i)).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn causal(&self, c: &Causal) -> String {
        format!("{} of {}", self.v(c.q_tile), self.kernel.dims[c.q_dim.0 as usize])
    }

    /// One instruction as a line of text; loops give their header (`tiles .. {`).
    fn line(&self, inst: &Inst) -> String {
        let role = inst.role.map(|r| format!("@{} ", r.name())).unwrap_or_default();
        let text = match &inst.op {
            Op::ScalarParam { dst, param } => {
                format!("{} = param {}", self.def(*dst), self.kernel.params[*param].name())
            }
            Op::Const { dst, value } => format!("{} = const {value:?}", self.def(*dst)),
            Op::IntConst { dst, value } => format!("{} = const {value}", self.def(*dst)),
            Op::DimLen { dst, dim } => {
                format!("{} = len {}", self.def(*dst), self.kernel.dims[dim.0 as usize])
            }
            Op::Position { dst, axis, index } => format!(
                "{} = position of {} along {}",
                self.def(*dst),
                match axis {
                    TileAxis::Rows => "rows",
                    TileAxis::Cols => "cols",
                },
                self.v(*index)
            ),
            Op::Unary { dst, op, src } => format!("{} = {} {}", self.def(*dst), op.name(), self.v(*src)),
            Op::Gather { dst, param, indices } => format!(
                "{} = {}.at({})",
                self.def(*dst),
                self.kernel.params[*param].name(),
                indices.iter().map(|i| self.v(*i)).collect::<Vec<_>>().join(", ")
            ),
            Op::MaskWhere { dst, src, keep, mask } => format!(
                "{} = mask {} where {}{}",
                self.def(*dst),
                self.v(*src),
                self.v(*keep),
                mask.map(|m| format!(" (mask #{}: full tiles skip it)", m.0)).unwrap_or_default()
            ),
            Op::Convert { dst, src } => format!("{} = convert {}", self.def(*dst), self.v(*src)),
            Op::Select { dst, cond, then, otherwise } => format!(
                "{} = select {}, {}, {}",
                self.def(*dst),
                self.v(*cond),
                self.v(*then),
                self.v(*otherwise)
            ),
            Op::Load { dst, src } => format!("{} = load {}", self.def(*dst), self.access(src)),
            Op::Stage { dst, src } => format!("{} = stage {}", self.def(*dst), self.access(src)),
            Op::StageView { dst, buffer, src, slot, zero_unless } => format!(
                "{} = view {}[{} % {}] ({}){}",
                self.def(*dst),
                self.buffer(*buffer),
                self.v(*slot),
                self.kernel.buffers[buffer.0 as usize].slots,
                self.access(src),
                zero_unless.map(|c| format!(" or zeros while {} = 0", self.v(c))).unwrap_or_default()
            ),
            Op::AsyncCopy { buffer, src, ahead, slot } => format!(
                "cp.async {}[({} + {ahead}) % {}] <- {} + {ahead}",
                self.buffer(*buffer),
                self.v(*slot),
                self.kernel.buffers[buffer.0 as usize].slots,
                self.access(src)
            ),
            Op::InitBarriers => "init_barriers".to_string(),
            Op::Roles { .. } => "roles {".to_string(),
            Op::CounterInit { dst } => format!("{} = counter 0", self.def(*dst)),
            Op::CounterNext { dst } => format!("{} += 1", self.v(*dst)),
            Op::MbarWait { ring, iter, flip } => format!(
                "wait {} parity ({} / {}) & 1{}",
                self.ring(*ring, *iter),
                self.v(*iter),
                self.kernel.mbarriers[ring.0 as usize].slots,
                if *flip { " ^ 1" } else { "" }
            ),
            Op::MbarArrive { ring, iter } => format!("arrive {}", self.ring(*ring, *iter)),
            Op::ChanWrite { src, chan, iter } => {
                format!(
                    "send {} -> #{} ({})",
                    self.v(*src),
                    self.kernel.channels[chan.0 as usize].name,
                    self.v(*iter)
                )
            }
            Op::ChanRead { dst, chan, iter } => format!(
                "{} = receive #{} ({})",
                self.def(*dst),
                self.kernel.channels[chan.0 as usize].name,
                self.v(*iter)
            ),
            Op::MbarArriveAsync { ring, iter } => {
                format!("arrive {} when this thread's cp.async copies land", self.ring(*ring, *iter))
            }
            Op::MbarExpectTx { ring, iter, bytes } => {
                format!("arrive {} expecting {bytes} bytes", self.ring(*ring, *iter))
            }
            Op::TmaCopy { buffer, src, slot, ring } => format!(
                "tma {}[{} % {}] <- {} completing {}",
                self.buffer(*buffer),
                self.v(*slot),
                self.kernel.buffers[buffer.0 as usize].slots,
                self.access(src),
                self.ring(*ring, *slot)
            ),
            Op::CommitGroup => "commit_group".to_string(),
            Op::WaitGroup { younger } => format!("wait_group {younger}"),
            Op::Barrier { id } => format!("barrier {id}"),
            Op::CombineCtas { max, sum, acc } => format!(
                "combine_ctas {}, {}, {} ({} CTAs a work item, through the workspace, by log-sum-exp; the last to arrive goes on)",
                self.v(*max),
                self.v(*sum),
                self.v(*acc),
                self.kernel.config.kv_ctas
            ),
            Op::MergeSplits { max, sum, acc } => format!(
                "merge_kv_splits {}, {}, {} ({} groups of compute warps, by log-sum-exp)",
                self.v(*max),
                self.v(*sum),
                self.v(*acc),
                self.kernel.config.kv_splits
            ),
            Op::Transpose { dst, src } => {
                format!("{} = transpose {}", self.def(*dst), self.v(*src))
            }
            Op::Mma { dst, a, b, acc } => format!(
                "{} = mma {}, {}{}",
                self.def(*dst),
                self.v(*a),
                self.v(*b),
                acc.map(|c| format!(", acc {}", self.v(c))).unwrap_or_default()
            ),
            Op::MmaAsync { dst, a, b, accumulate: false } => {
                format!("{} = mma_async {}, {}", self.def(*dst), self.v(*a), self.v(*b))
            }
            Op::MmaAsync { dst, a, b, accumulate: true } => {
                format!("mma_async {} += {}, {}", self.v(*dst), self.v(*a), self.v(*b))
            }
            Op::MmaCommit => "mma_commit".to_string(),
            Op::MmaWait { pending } => format!("mma_wait {pending}"),
            Op::When { counter, .. } => format!("when {} {{", self.v(*counter)),
            Op::Exp2 { dst, src } => format!("{} = exp2 {}", self.def(*dst), self.v(*src)),
            Op::Exp2Scaled { dst, src, scale, sub } => format!(
                "{} = exp2_scaled {}, {}, {}",
                self.def(*dst),
                self.v(*src),
                self.v(*scale),
                self.v(*sub)
            ),
            Op::LogSumExp { dst, max, sum } => {
                format!("{} = log_sum_exp {}, {}", self.def(*dst), self.v(*max), self.v(*sum))
            }
            Op::MaskColumns { dst, src, tile, causal, fill } => format!(
                "{} = {} {} past the end of {}{}",
                self.def(*dst),
                match fill {
                    ColumnFill::NegInf => "mask_columns",
                    ColumnFill::Zero => "zero_columns",
                },
                self.v(*src),
                self.access(tile),
                causal.map(|c| format!(" and past the diagonal of {}", self.causal(&c))).unwrap_or_default()
            ),
            Op::ToHalf { dst, src } => {
                let elem = match self.kernel.ty(*dst) {
                    Type::Frag { elem, .. } => elem.name(),
                    _ => "?",
                };
                format!("{} = to_{elem} {}", self.def(*dst), self.v(*src))
            }
            Op::Reduce { dst, op, src } => format!(
                "{} = {} {}",
                self.def(*dst),
                match op {
                    ReduceOp::Max => "row_max",
                    ReduceOp::Sum => "row_sum",
                },
                self.v(*src)
            ),
            Op::ColReduce { dst, op, src } => format!(
                "{} = {} {}",
                self.def(*dst),
                match op {
                    ReduceOp::Max => "col_max",
                    ReduceOp::Sum => "col_sum",
                },
                self.v(*src)
            ),
            Op::Binary { dst, op, lhs, rhs } => {
                format!("{} = {} {}, {}", self.def(*dst), op.name(), self.v(*lhs), self.v(*rhs))
            }
            Op::Fill { dst, value } => format!("{} = fill {value:?}", self.def(*dst)),
            Op::Assign { dst, src } => format!("{} <- {}", self.v(*dst), self.v(*src)),
            Op::Store { dst, src, via } => match via {
                Some(via) => format!("store {}, {} via {}", self.access(dst), self.v(*src), self.v(*via)),
                None => format!("store {}, {}", self.access(dst), self.v(*src)),
            },
            Op::Scatter { param, indices, src, keep } => format!(
                "store {}.at({}), {}{}",
                self.kernel.params[*param].name(),
                indices.iter().map(|i| self.v(*i)).collect::<Vec<_>>().join(", "),
                self.v(*src),
                keep.map(|k| format!(" where {}", self.v(k))).unwrap_or_default()
            ),
            Op::Tiles { vars, extents, schedule, .. } => {
                let parts: Vec<String> = vars
                    .iter()
                    .zip(extents)
                    .map(|(v, e)| format!("{} in {}", self.v(*v), self.extent(e)))
                    .collect();
                let schedule = match schedule {
                    TileSchedule::OnePerCta => "",
                    TileSchedule::Persistent => " persistent",
                };
                format!("tiles {}{schedule} {{", parts.join(", "))
            }
            Op::Pipeline { var, extent, stages, .. } => {
                let stages = if *stages > 0 { format!(" stages {stages}") } else { String::new() };
                format!("pipeline {} in 0..{}{stages} {{", self.v(*var), self.extent(extent))
            }
            Op::Loop { var, from, to, .. } => {
                format!("loop {} in bound #{}..bound #{} {{", self.v(*var), from.0, to.0)
            }
        };
        format!("{role}{text}")
    }

    fn ring(&self, r: MbarRingId, iter: Value) -> String {
        let ring = &self.kernel.mbarriers[r.0 as usize];
        format!("${}[{} % {}]", ring.name, self.v(iter), ring.slots)
    }

    fn buffer(&self, b: BufferId) -> String {
        format!("@{}", self.kernel.buffers[b.0 as usize].name)
    }

    fn block(&self, out: &mut String, block: &Block, depth: usize) -> fmt::Result {
        let pad = "  ".repeat(depth);
        for inst in &block.insts {
            writeln!(out, "{pad}{}", self.line(inst))?;
            match &inst.op {
                Op::Tiles { body, .. } | Op::Loop { body, .. } | Op::When { body, .. } => {
                    self.block(out, body, depth + 1)?
                }
                Op::Roles { groups } => {
                    let inner = "  ".repeat(depth + 1);
                    for g in groups {
                        let roles: Vec<&str> = g.roles.iter().map(|r| r.name()).collect();
                        writeln!(
                            out,
                            "{inner}group {} (warps {}..{}) {{",
                            roles.join(" + "),
                            g.first_warp,
                            g.first_warp + g.warps
                        )?;
                        self.block(out, &g.body, depth + 2)?;
                        writeln!(out, "{inner}}}")?;
                    }
                }
                Op::Pipeline { prologue, body, epilogue, .. } => {
                    let inner = "  ".repeat(depth + 1);
                    if !prologue.insts.is_empty() {
                        writeln!(out, "{inner}prologue {{")?;
                        self.block(out, prologue, depth + 2)?;
                        writeln!(out, "{inner}}}")?;
                    }
                    self.block(out, body, depth + 1)?;
                    if !epilogue.insts.is_empty() {
                        writeln!(out, "{inner}epilogue {{")?;
                        self.block(out, epilogue, depth + 2)?;
                        writeln!(out, "{inner}}}")?;
                    }
                }
                _ => continue,
            }
            writeln!(out, "{pad}}}")?;
        }
        Ok(())
    }
}

impl Kernel {
    /// The text form of one instruction (a loop's header only), as the IR dump prints it.
    pub fn inst_text(&self, inst: &Inst) -> String {
        Printer { kernel: self }.line(inst)
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| match p {
                Param::Tensor(t) => {
                    let dims: Vec<&str> = t.dims.iter().map(|d| self.dims[d.0 as usize].as_str()).collect();
                    format!(
                        "{}: {}{}{}[{}{}]",
                        t.name,
                        if t.optional { "optional " } else { "" },
                        if t.writable { "mut " } else { "" },
                        t.elem.name(),
                        dims.join(", "),
                        if t.is_rows() { "" } else { ", D" }
                    )
                }
                Param::Scalar { name, nonnegative: false } => format!("{name}: f32"),
                Param::Scalar { name, nonnegative: true } => format!("{name}: nonnegative f32"),
                Param::Table(t) => {
                    let dims: Vec<&str> = t.dims.iter().map(|d| self.dims[d.0 as usize].as_str()).collect();
                    format!(
                        "{}: {}{}table {}[{}]",
                        t.name,
                        if t.optional { "optional " } else { "" },
                        if t.writable { "mut " } else { "" },
                        t.elem.name(),
                        dims.join(", ")
                    )
                }
                Param::Offsets(o) if o.lengths => format!(
                    "{}: {}seq_lens[{}] ragged {}",
                    o.name,
                    if o.optional { "optional " } else { "" },
                    self.dims[o.batch.0 as usize],
                    self.dims[o.seq.0 as usize]
                ),
                Param::Offsets(o) => format!(
                    "{}: {}seq_offsets[{} + 1] ragged {}",
                    o.name,
                    if o.optional { "optional " } else { "" },
                    self.dims[o.batch.0 as usize],
                    self.dims[o.seq.0 as usize]
                ),
            })
            .collect();
        let mut out = String::new();
        writeln!(out, "kernel {}({})", self.name, params.join(", "))?;
        let dims: Vec<String> = self.dims.iter().enumerate().map(|(i, d)| format!("dim{i}={d}")).collect();
        writeln!(out, "  dims {}", dims.join(" "))?;
        writeln!(out, "  config {}", self.config)?;
        for (i, m) in self.masks.iter().enumerate() {
            writeln!(out, "  mask #{i}: keep {}", Printer { kernel: self }.mask_expr(&m.keep))?;
        }
        for (i, b) in self.bounds.iter().enumerate() {
            writeln!(out, "  bound #{i}: {}", Printer { kernel: self }.mask_expr(b))?;
        }
        for r in &self.mbarriers {
            let tx = if r.tx { " and its copies' bytes" } else { "" };
            writeln!(out, "  mbarrier ${}: x {}, {} arrivals per phase{tx}", r.name, r.slots, r.count)?;
        }
        for c in &self.channels {
            writeln!(out, "  channel #{}: {}", c.name, c.ty)?;
        }
        for b in &self.buffers {
            writeln!(
                out,
                "  buffer @{}: smem<{}>[{}, D] x {}",
                b.name,
                self.config.dtype.name(),
                b.rows.symbol(),
                b.slots
            )?;
        }
        Printer { kernel: self }.block(&mut out, &self.body, 1)?;
        f.write_str(&out)
    }
}
