//! The text IR read back: `parse_kernel` turns what `impl Display for Kernel` prints, lowered
//! or after any pass (stage buffers and copies, mbarrier rings, channels, role groups), into
//! the same `Kernel`, so passes can be tested on IR written or edited by hand, without the macro
//! (Cranelift's filetests are the model). A channel's rings are the ones named `NAME_full` and
//! `NAME_empty`, as the softmax split names them.
//! Value ids are kept (`%s.11` is `Value(11)`); ids the text never names are filled with
//! placeholders that no instruction uses.

use std::collections::HashMap;

use crate::config::Config;
use crate::kernel::*;
use crate::source::{BinOp, ReduceOp, Role, SpanId, UnaryOp};

/// A line of the text IR that does not parse, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

type R<T> = Result<T, String>;

/// Parses a kernel's text IR (what `Kernel`'s `Display` prints, before or after the passes).
pub fn parse_kernel(text: &str) -> Result<Kernel, ParseError> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with(';'))
        .collect();
    let mut p = Parser { lines, at: 0, current: 0, kernel: None, values: HashMap::new() };
    p.kernel().map_err(|message| ParseError { line: p.current, message })
}

struct Parser<'t> {
    lines: Vec<(usize, &'t str)>,
    at: usize,
    /// The line being read (1-based), for errors.
    current: usize,
    kernel: Option<Kernel>,
    values: HashMap<u32, ValueData>,
}

/// Splits `s` at top-level `sep` (outside brackets, parentheses and type arguments).
fn split_top(s: &str, sep: &str) -> Vec<String> {
    split_outside(s, sep, "([<", ")]>")
}

/// Splits `s` at `sep` outside the brackets `open`/`close`.
fn split_outside(s: &str, sep: &str, open: &str, close: &str) -> Vec<String> {
    let (mut out, mut depth, mut cur) = (vec![], 0i32, String::new());
    let mut rest = s;
    while !rest.is_empty() {
        if depth == 0 && rest.starts_with(sep) {
            out.push(std::mem::take(&mut cur));
            rest = &rest[sep.len()..];
            continue;
        }
        let c = rest.chars().next().expect("non-empty");
        if open.contains(c) {
            depth += 1;
        } else if close.contains(c) {
            depth -= 1;
        }
        cur.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// The index of `name` (written with its `sigil`: `$ring`, `@buffer`, `#channel`) among `names`.
fn position_of<'a>(names: impl Iterator<Item = &'a str>, name: &str, sigil: char, what: &str) -> R<u32> {
    let name = name.trim().trim_start_matches(sigil);
    let mut names = names;
    names.position(|n| n == name).map(|i| i as u32).ok_or_else(|| format!("no {what} `{sigil}{name}`"))
}

fn tile_dim(s: &str) -> R<TileDim> {
    match s.trim() {
        "TILE_M" => Ok(TileDim::M),
        "TILE_N" => Ok(TileDim::N),
        "D" => Ok(TileDim::Head),
        other => Err(format!("`{other}` is not a tile axis (TILE_M, TILE_N, D)")),
    }
}

fn elem(s: &str) -> R<Elem> {
    Ok(match s.trim() {
        "f16" => Elem::F16,
        "bf16" => Elem::Bf16,
        "f32" => Elem::F32,
        "i32" => Elem::I32,
        "bool" => Elem::Bool,
        other => return Err(format!("unknown element type `{other}`")),
    })
}

fn float(s: &str) -> R<f32> {
    match s.trim() {
        "inf" => Ok(f32::INFINITY),
        "-inf" => Ok(f32::NEG_INFINITY),
        "NaN" => Ok(f32::NAN),
        t => t.parse().map_err(|_| format!("`{t}` is not a number")),
    }
}

impl Parser<'_> {
    fn next(&mut self) -> R<&str> {
        let (n, line) = *self.lines.get(self.at).ok_or("unexpected end of the IR")?;
        self.current = n;
        self.at += 1;
        Ok(line)
    }

    fn k(&self) -> &Kernel {
        self.kernel.as_ref().expect("the header is parsed first")
    }

    fn dim(&self, name: &str) -> R<RtDim> {
        let name = name.trim();
        self.k()
            .dims
            .iter()
            .position(|d| d == name)
            .map(|i| RtDim(i as u32))
            .ok_or_else(|| format!("`{name}` is not one of the kernel's dims"))
    }

    fn ring_id(&self, name: &str) -> R<MbarRingId> {
        position_of(self.k().mbarriers.iter().map(|r| r.name.as_str()), name, '$', "mbarrier ring")
            .map(MbarRingId)
    }

    fn buffer_id(&self, name: &str) -> R<BufferId> {
        position_of(self.k().buffers.iter().map(|b| b.name.as_str()), name, '@', "buffer").map(BufferId)
    }

    fn chan_id(&self, name: &str) -> R<ChanId> {
        position_of(self.k().channels.iter().map(|c| c.name.as_str()), name, '#', "channel").map(ChanId)
    }

    /// `$ring[%iter % N]`: the ring and the iteration value.
    fn ring_at(&mut self, s: &str) -> R<(MbarRingId, Value)> {
        let (ring, rest) = s.trim().split_once('[').ok_or("expected `$ring[%i % N]`")?;
        let (iter, _) = rest.split_once(" % ").ok_or("expected `[%i % N]`")?;
        Ok((self.ring_id(ring)?, self.value(iter, None)?))
    }

    fn param(&self, name: &str) -> R<usize> {
        let name = name.trim();
        self.k().params.iter().position(|p| p.name() == name).ok_or_else(|| format!("no parameter `{name}`"))
    }

    fn ty(&self, s: &str) -> R<Type> {
        let s = s.trim();
        let shape = |s: &str| -> R<Vec<TileDim>> {
            let inner = s.strip_prefix('[').and_then(|x| x.split(']').next()).ok_or("expected `[..]`")?;
            inner.split(',').map(tile_dim).collect()
        };
        let bracketed = |prefix: &str| -> Option<(&str, &str)> {
            let rest = s.strip_prefix(prefix)?;
            let (e, rest) = rest.split_once('>')?;
            Some((e, rest))
        };
        Ok(match s {
            "f32" => Type::Scalar,
            "i32" => Type::Int,
            "bool" => Type::Bool,
            "counter" => Type::Counter,
            _ if s.starts_with("idx<") => {
                let inner = &s[4..s.len() - 1];
                let (d, tile) = match inner.split_once('/') {
                    Some((d, t)) => (d, Some(tile_dim(t)?)),
                    None => (inner, None),
                };
                let n: u32 = d.strip_prefix("dim").and_then(|n| n.parse().ok()).ok_or("expected `dimN`")?;
                Type::Index { dim: RtDim(n), tile }
            }
            _ => {
                if let Some((e, rest)) = bracketed("frag<") {
                    let [rows, cols] = shape(rest)?[..] else {
                        return Err("a fragment is [rows, cols]".into());
                    };
                    Type::Frag { rows, cols, elem: elem(e)? }
                } else if let Some((e, rest)) = bracketed("smem<") {
                    let [rows, cols] = shape(rest)?[..] else {
                        return Err("a staged tile is [rows, cols]".into());
                    };
                    Type::Smem { rows, cols, transposed: rest.ends_with(".t"), elem: elem(e)? }
                } else if let Some((_, rest)) = bracketed("col<") {
                    let [cols] = shape(rest)?[..] else { return Err("a column vector is [cols]".into()) };
                    Type::Col { cols }
                } else if let Some((_, rest)) = bracketed("row<") {
                    let [rows] = shape(rest)?[..] else { return Err("a row vector is [rows]".into()) };
                    Type::Row { rows }
                } else {
                    return Err(format!("unknown type `{s}`"));
                }
            }
        })
    }

    /// `%name.id`: the value, declared with `ty` when the text defines it here.
    fn value(&mut self, s: &str, def: Option<Type>) -> R<Value> {
        let s = s.trim();
        let (name, id) = s
            .strip_prefix('%')
            .and_then(|x| x.rsplit_once('.'))
            .ok_or_else(|| format!("expected a value `%name.id`, got `{s}`"))?;
        let id: u32 = id.parse().map_err(|_| format!("bad value id in `{s}`"))?;
        if let Some(ty) = def {
            let data = ValueData { ty, name: name.to_string(), mutable: false };
            if self.values.insert(id, data).is_some() {
                return Err(format!("`{s}` is defined twice"));
            }
        } else if !self.values.contains_key(&id) {
            return Err(format!("`{s}` is used before it is defined"));
        }
        Ok(Value(id))
    }

    fn access(&mut self, s: &str) -> R<TileAccess> {
        let s = s.trim();
        let (name, rest) = s.split_once('[').ok_or_else(|| format!("expected `tensor[..]`, got `{s}`"))?;
        let inner = rest.strip_suffix(']').ok_or("expected `]`")?;
        let param = self.param(name)?;
        let (mut coords, mut groups, mut pages) = (vec![], vec![], None);
        for (axis, c) in split_top(inner, ",").into_iter().enumerate() {
            // `block_table[b]`: the page table's row of sequence `b` (a paged tensor).
            if let (0, Some((table, row))) = (axis, c.trim().split_once('[')) {
                pages = Some(self.param(table)?);
                coords.push(self.value(row.strip_suffix(']').ok_or("expected `table[b]`")?, None)?);
                groups.push(None);
                continue;
            }
            match c.split_once(" / ") {
                Some((v, g)) => {
                    coords.push(self.value(v, None)?);
                    let (of, to) = g
                        .trim_start_matches('(')
                        .trim_end_matches(')')
                        .split_once('/')
                        .ok_or("expected `(H/HKV)`")?;
                    groups.push(Some(HeadGroup { of: self.dim(of)?, to: self.dim(to)? }));
                }
                None => {
                    coords.push(self.value(&c, None)?);
                    groups.push(None);
                }
            }
        }
        if groups.iter().all(Option::is_none) {
            groups.clear();
        }
        Ok(TileAccess { param, coords, groups, pages })
    }

    fn extent(&mut self, s: &str) -> R<LoopExtent> {
        let mut s = s.trim();
        let bound = |n: &str| n.trim().parse().map(BoundId).map_err(|_| "bad bound number");
        let mut to = None;
        if let Some((head, n)) = s.split_once(" to bound #") {
            to = Some(bound(n)?);
            s = head;
        }
        let mut from = None;
        if let Some((head, n)) = s.split_once(" from bound #") {
            from = Some(bound(n)?);
            s = head;
        }
        let mut skip = None;
        if let Some((head, m)) = s.split_once(" skipping tiles that mask #") {
            let n = m.trim_end_matches(" empties").parse().map_err(|_| "bad mask number")?;
            skip = Some(MaskId(n));
            s = head;
        }
        let mut causal = None;
        if let Some((head, c)) = s.split_once(" causal(") {
            let (q, d) = c.trim_end_matches(')').split_once(" of ").ok_or("expected `causal(%q of S)`")?;
            causal = Some(Causal { q_tile: self.value(q, None)?, q_dim: self.dim(d)? });
            s = head;
        }
        let (dim, per_tile) = match s.split_once('/') {
            Some((d, t)) => (self.dim(d)?, Some(tile_dim(t)?)),
            None => (self.dim(s)?, None),
        };
        Ok(LoopExtent { dim, per_tile, causal, skip, from, to })
    }

    fn mask_expr(&self, s: &str) -> R<MaskExpr> {
        let s = s.trim();
        let b = |x: MaskExpr| Box::new(x);
        if let Some(inner) = s.strip_prefix('(').and_then(|x| x.strip_suffix(')')) {
            let parts = split_outside(inner, " ", "(", ")");
            if parts.len() == 3 {
                let op = BinOp::ALL
                    .into_iter()
                    .find(|o| o.symbol() == parts[1])
                    .ok_or_else(|| format!("unknown mask operator `{}`", parts[1]))?;
                return Ok(MaskExpr::Binary(
                    op,
                    b(self.mask_expr(&parts[0])?),
                    b(self.mask_expr(&parts[2])?),
                ));
            }
            return Err(format!("expected `(a op b)`, got `{s}`"));
        }
        if let Some(x) = s.strip_prefix('!') {
            return Ok(MaskExpr::Unary(UnaryOp::Not, b(self.mask_expr(x)?)));
        }
        let call =
            |f: &str| s.strip_prefix(f).and_then(|x| x.strip_prefix('(')).and_then(|x| x.strip_suffix(')'));
        if let Some(x) = call("row_pos") {
            let n = x.trim_start_matches("work index ").parse().map_err(|_| "bad work index")?;
            return Ok(MaskExpr::RowPos(n));
        }
        if let Some(x) = call("f32") {
            return Ok(MaskExpr::ToFloat(b(self.mask_expr(x)?)));
        }
        if let Some(x) = call("len") {
            return Ok(MaskExpr::Len(self.dim(x)?));
        }
        if let Some(x) = call("neg") {
            return Ok(MaskExpr::Unary(UnaryOp::Neg, b(self.mask_expr(x)?)));
        }
        if let Some((table, args)) = s.strip_suffix(')').and_then(|x| x.split_once(".at(")) {
            let indices = split_outside(args, ",", "(", ")")
                .iter()
                .map(|i| self.mask_expr(i))
                .collect::<R<Vec<_>>>()?;
            return Ok(MaskExpr::Table { param: self.param(table)?, indices });
        }
        if s == "col_pos" {
            return Ok(MaskExpr::ColPos);
        }
        if let Some(n) = s.strip_prefix("work_index").and_then(|n| n.parse().ok()) {
            return Ok(MaskExpr::WorkIndex(n));
        }
        if let Ok(n) = s.parse::<i32>() {
            return Ok(MaskExpr::Int(n));
        }
        if let Ok(x) = float(s) {
            return Ok(MaskExpr::Float(x));
        }
        Ok(MaskExpr::Param(self.param(s)?))
    }

    fn header(&mut self) -> R<()> {
        let sig = self.next()?.to_string();
        let rest = sig.strip_prefix("kernel ").ok_or("expected `kernel NAME(..)`")?;
        let (name, params) = rest.split_once('(').ok_or("expected `(`")?;
        let params = params.strip_suffix(')').ok_or("expected `)`")?.to_string();
        let dims_line = self.next()?.to_string();
        let dims: Vec<String> = dims_line
            .strip_prefix("dims")
            .ok_or("expected `dims ..`")?
            .split_whitespace()
            .map(|d| d.split_once('=').map(|(_, n)| n.to_string()).ok_or_else(|| format!("bad dim `{d}`")))
            .collect::<R<_>>()?;
        let config_line = self.next()?.to_string();
        let settings = config_line.strip_prefix("config ").ok_or("expected `config ..`")?;
        let config = Config::default().with_settings(settings).map_err(|e| e.to_string())?;
        self.kernel = Some(Kernel {
            name: name.to_string(),
            config,
            params: vec![],
            dims,
            values: vec![],
            buffers: vec![],
            mbarriers: vec![],
            channels: vec![],
            masks: vec![],
            bounds: vec![],
            body: Block::default(),
        });
        for p in split_top(&params, ", ") {
            let (pname, ty) = p.split_once(": ").ok_or_else(|| format!("bad parameter `{p}`"))?;
            let param = if ty == "f32" || ty == "nonnegative f32" {
                Param::Scalar { name: pname.into(), nonnegative: ty != "f32" }
            } else if let Some((mods, t)) = ty.split_once("table ") {
                let (optional, writable) = (mods.contains("optional "), mods.contains("mut "));
                let (e, axes) = t.split_once('[').ok_or("expected `table e[..]`")?;
                let dims = axes.trim_end_matches(']').split(", ").map(|d| self.dim(d)).collect::<R<_>>()?;
                Param::Table(TableParam { name: pname.into(), elem: elem(e)?, dims, writable, optional })
            } else if ty.contains("seq_lens") {
                let optional = ty.starts_with("optional ");
                let (batch, seq) = ty
                    .split_once('[')
                    .and_then(|(_, r)| r.split_once("] ragged "))
                    .ok_or("expected `seq_lens[B] ragged S`")?;
                Param::Offsets(OffsetsParam {
                    name: pname.into(),
                    batch: self.dim(batch)?,
                    seq: self.dim(seq)?,
                    optional,
                    lengths: true,
                })
            } else if ty.contains("seq_offsets") {
                let optional = ty.starts_with("optional ");
                let (batch, seq) = ty
                    .split_once('[')
                    .and_then(|(_, r)| r.split_once(" + 1] ragged "))
                    .ok_or("expected `seq_offsets[B + 1] ragged S`")?;
                Param::Offsets(OffsetsParam {
                    name: pname.into(),
                    batch: self.dim(batch)?,
                    seq: self.dim(seq)?,
                    optional,
                    lengths: false,
                })
            } else {
                let optional = ty.contains("optional ");
                let writable = ty.contains("mut ");
                let t = ty.trim_start_matches("optional ").trim_start_matches("mut ");
                let (e, axes) = t.split_once('[').ok_or_else(|| format!("bad tensor type `{ty}`"))?;
                let axes: Vec<&str> = axes.trim_end_matches(']').split(", ").collect();
                let outer = [self.dim(axes[0])?, self.dim(axes[1])?, self.dim(axes[2])?];
                Param::Tensor(TensorParam {
                    name: pname.into(),
                    elem: elem(e)?,
                    dims: outer,
                    writable,
                    optional,
                })
            };
            self.kernel.as_mut().expect("made above").params.push(param);
        }
        while let Some((_, line)) = self.lines.get(self.at) {
            let Some(rest) = line.strip_prefix("mask #") else { break };
            let (_, keep) = rest.split_once(": keep ").ok_or("expected `mask #N: keep ..`")?;
            self.current = self.lines[self.at].0;
            let keep = self.mask_expr(keep)?;
            self.kernel.as_mut().expect("made above").masks.push(TileMask { keep });
            self.at += 1;
        }
        while let Some((_, line)) = self.lines.get(self.at) {
            let Some(rest) = line.strip_prefix("bound #") else { break };
            let (_, bound) = rest.split_once(": ").ok_or("expected `bound #N: ..`")?;
            self.current = self.lines[self.at].0;
            let bound = self.mask_expr(bound)?;
            self.kernel.as_mut().expect("made above").bounds.push(bound);
            self.at += 1;
        }
        // What the passes add: mbarrier rings, channels (their rings are `NAME_full` and
        // `NAME_empty`), shared-memory stage buffers.
        while let Some(&(n, line)) = self.lines.get(self.at) {
            self.current = n;
            if let Some(rest) = line.strip_prefix("mbarrier $") {
                let (name, rest) = rest.split_once(": x ").ok_or("expected `mbarrier $NAME: x SLOTS, ..`")?;
                let (rest, tx) = match rest.strip_suffix(" and its copies' bytes") {
                    Some(r) => (r, true),
                    None => (rest, false),
                };
                let (slots, count) = rest
                    .strip_suffix(" arrivals per phase")
                    .and_then(|r| r.split_once(", "))
                    .ok_or("expected `x SLOTS, COUNT arrivals per phase`")?;
                let ring = MbarRing {
                    name: name.into(),
                    slots: slots.parse().map_err(|_| "bad slot count")?,
                    count: count.parse().map_err(|_| "bad arrival count")?,
                    tx,
                };
                self.kernel.as_mut().expect("made above").mbarriers.push(ring);
            } else if let Some(rest) = line.strip_prefix("channel #") {
                let (name, ty) = rest.split_once(": ").ok_or("expected `channel #NAME: TYPE`")?;
                let ty = self.ty(ty)?;
                let (full, empty) =
                    (self.ring_id(&format!("{name}_full"))?, self.ring_id(&format!("{name}_empty"))?);
                self.kernel.as_mut().expect("made above").channels.push(Channel {
                    name: name.into(),
                    ty,
                    full,
                    empty,
                });
            } else if let Some(rest) = line.strip_prefix("buffer @") {
                let (name, rest) =
                    rest.split_once(": smem<").ok_or("expected `buffer @NAME: smem<..>[ROWS, D] x N`")?;
                let (rows, slots) = rest
                    .split_once(">[")
                    .and_then(|(_, r)| r.split_once(", D] x "))
                    .ok_or("expected `[ROWS, D] x SLOTS`")?;
                let buffer = Buffer {
                    name: name.into(),
                    rows: tile_dim(rows)?,
                    slots: slots.parse().map_err(|_| "bad slot count")?,
                };
                self.kernel.as_mut().expect("made above").buffers.push(buffer);
            } else {
                break;
            }
            self.at += 1;
        }
        Ok(())
    }

    fn kernel(&mut self) -> R<Kernel> {
        self.header()?;
        let body = self.block(true)?;
        let mut k = self.kernel.take().expect("parsed");
        let len = self.values.keys().max().map_or(0, |m| m + 1);
        k.values = (0..len)
            .map(|id| {
                self.values.remove(&id).unwrap_or(ValueData {
                    ty: Type::Scalar,
                    name: "unnamed".into(),
                    mutable: false,
                })
            })
            .collect();
        // Assigned values are the mutable ones.
        let mut assigned = vec![];
        k.walk_block(&body, &mut |i| {
            if let Op::Assign { dst, .. } = i.op {
                assigned.push(dst);
            }
        });
        for v in assigned {
            k.values[v.index()].mutable = true;
        }
        k.body = body;
        crate::verify::verify(&k).map_err(|e| format!("the parsed IR does not verify: {e}"))?;
        Ok(k)
    }

    /// Instructions up to a closing `}` (or the end, at the top level).
    fn block(&mut self, top: bool) -> R<Block> {
        let mut block = Block::default();
        while self.at < self.lines.len() {
            let (n, line) = self.lines[self.at];
            self.current = n;
            if line == "}" {
                if top {
                    return Err("unbalanced `}`".into());
                }
                self.at += 1;
                return Ok(block);
            }
            self.at += 1;
            block.insts.push(self.inst(line)?);
        }
        if top {
            Ok(block)
        } else {
            Err("a block is not closed".into())
        }
    }

    fn inst(&mut self, line: &str) -> R<Inst> {
        let (role, text) = match line.strip_prefix('@') {
            Some(r) => {
                let (role, rest) = r.split_once(' ').ok_or("expected `@role ..`")?;
                (Some(Role::from_name(role).ok_or_else(|| format!("unknown role `{role}`"))?), rest)
            }
            None => (None, line),
        };
        let op = self.op(text)?;
        Ok(Inst { op, role, span: SpanId::NONE })
    }

    fn op(&mut self, text: &str) -> R<Op> {
        if let Some(rest) = text.strip_prefix("tiles ") {
            let (head, schedule) = match rest.strip_suffix(" persistent {") {
                Some(h) => (h, TileSchedule::Persistent),
                None => (rest.strip_suffix(" {").ok_or("expected `{`")?, TileSchedule::OnePerCta),
            };
            let (mut vars, mut extents) = (vec![], vec![]);
            for part in split_top(head, ", ") {
                let (v, e) = part.split_once(" in ").ok_or("expected `%v in EXTENT`")?;
                let extent = self.extent(e)?;
                let ty = Type::Index { dim: extent.dim, tile: extent.per_tile };
                vars.push(self.value(v, Some(ty))?);
                extents.push(extent);
            }
            let body = self.block(false)?;
            return Ok(Op::Tiles { vars, extents, schedule, body });
        }
        if let Some(rest) = text.strip_prefix("loop ") {
            let head = rest.strip_suffix(" {").ok_or("expected `{`")?;
            let (v, range) = head.split_once(" in bound #").ok_or("expected `%v in bound #A..bound #B`")?;
            let (from, to) = range.split_once("..bound #").ok_or("expected `bound #A..bound #B`")?;
            let bound = |b: &str| b.parse().map(BoundId).map_err(|_| format!("bad bound `{b}`"));
            let (from, to) = (bound(from)?, bound(to)?);
            let var = self.value(v, Some(Type::Int))?;
            let body = self.block(false)?;
            return Ok(Op::Loop { var, from, to, body });
        }
        if let Some(rest) = text.strip_prefix("pipeline ") {
            let head = rest.strip_suffix(" {").ok_or("expected `{`")?;
            let (head, stages) = match head.rsplit_once(" stages ") {
                Some((h, n)) => (h, n.parse().map_err(|_| "bad stage count")?),
                None => (head, 0),
            };
            let (v, e) = head.split_once(" in 0..").ok_or("expected `%v in 0..EXTENT`")?;
            let extent = self.extent(e)?;
            let var = self.value(v, Some(Type::Index { dim: extent.dim, tile: extent.per_tile }))?;
            // `prologue { .. }`, the body, `epilogue { .. }`, then the pipeline's `}`.
            let mut prologue = Block::default();
            if self.lines.get(self.at).map(|l| l.1) == Some("prologue {") {
                self.at += 1;
                prologue = self.block(false)?;
            }
            let mut body = Block::default();
            let mut epilogue = Block::default();
            loop {
                let &(n, line) = self.lines.get(self.at).ok_or("a pipeline is not closed")?;
                self.current = n;
                self.at += 1;
                match line {
                    "}" => break,
                    "epilogue {" => epilogue = self.block(false)?,
                    _ => body.insts.push(self.inst(line)?),
                }
            }
            return Ok(Op::Pipeline { var, extent, stages, prologue, body, epilogue });
        }
        if let Some(rest) = text.strip_prefix("when ") {
            let counter = self.value(rest.strip_suffix(" {").ok_or("expected `when %c {`")?, None)?;
            let body = self.block(false)?;
            return Ok(Op::When { counter, body });
        }
        if let Some(rest) = text.strip_prefix("mma_async ") {
            // `mma_async %acc += %a, %b` (in place); the defining form reads as `%d: T = mma_async`.
            let (dst, operands) = rest.split_once(" += ").ok_or("expected `mma_async %acc += %a, %b`")?;
            let v = split_top(operands, ", ");
            let [a, b] = &v[..] else { return Err("mma_async takes two operands".into()) };
            let (dst, a, b) = (self.value(dst, None)?, self.value(a, None)?, self.value(b, None)?);
            return Ok(Op::MmaAsync { dst, a, b, accumulate: true });
        }
        if let Some(n) = text.strip_prefix("mma_wait ") {
            return Ok(Op::MmaWait { pending: n.parse().map_err(|_| "bad group count")? });
        }
        if text == "roles {" {
            let mut groups = vec![];
            loop {
                let &(n, line) = self.lines.get(self.at).ok_or("a `roles` block is not closed")?;
                self.current = n;
                self.at += 1;
                if line == "}" {
                    break;
                }
                let rest = line.strip_prefix("group ").and_then(|r| r.strip_suffix(") {"));
                let (roles, warps) = rest
                    .and_then(|r| r.split_once(" (warps "))
                    .ok_or("expected `group ROLE + .. (warps A..B) {`")?;
                let (first, end) = warps.split_once("..").ok_or("expected `A..B`")?;
                let roles = roles
                    .split(" + ")
                    .map(|r| Role::from_name(r).ok_or_else(|| format!("unknown role `{r}`")))
                    .collect::<R<Vec<_>>>()?;
                let first_warp: u32 = first.parse().map_err(|_| "bad warp")?;
                let end: u32 = end.parse().map_err(|_| "bad warp")?;
                let body = self.block(false)?;
                groups.push(RoleGroup { roles, first_warp, warps: end - first_warp, body });
            }
            return Ok(Op::Roles { groups });
        }
        match text {
            "init_barriers" => return Ok(Op::InitBarriers),
            "commit_group" => return Ok(Op::CommitGroup),
            "mma_commit" => return Ok(Op::MmaCommit),
            _ => {}
        }
        if let Some(n) = text.strip_prefix("wait_group ") {
            return Ok(Op::WaitGroup { younger: n.parse().map_err(|_| "bad group count")? });
        }
        if let Some(n) = text.strip_prefix("barrier ") {
            return Ok(Op::Barrier { id: n.parse().map_err(|_| "bad barrier id")? });
        }
        if let Some(rest) = text.strip_prefix("wait ") {
            let (ring, parity) = rest.split_once(" parity ").ok_or("expected `wait $r[..] parity ..`")?;
            let (ring, iter) = self.ring_at(ring)?;
            return Ok(Op::MbarWait { ring, iter, flip: parity.ends_with(" ^ 1") });
        }
        if let Some(rest) = text.strip_prefix("arrive ") {
            if let Some((ring, bytes)) = rest.strip_suffix(" bytes").and_then(|r| r.split_once(" expecting "))
            {
                let (ring, iter) = self.ring_at(ring)?;
                return Ok(Op::MbarExpectTx {
                    ring,
                    iter,
                    bytes: bytes.parse().map_err(|_| "bad byte count")?,
                });
            }
            return Ok(match rest.strip_suffix(" when this thread's cp.async copies land") {
                Some(r) => {
                    let (ring, iter) = self.ring_at(r)?;
                    Op::MbarArriveAsync { ring, iter }
                }
                None => {
                    let (ring, iter) = self.ring_at(rest)?;
                    Op::MbarArrive { ring, iter }
                }
            });
        }
        if let Some(rest) = text.strip_prefix("send ") {
            let (src, rest) = rest.split_once(" -> ").ok_or("expected `send %v -> #chan (%i)`")?;
            let (chan, iter) = rest.split_once(" (").ok_or("expected `#chan (%i)`")?;
            let (src, chan) = (self.value(src, None)?, self.chan_id(chan)?);
            return Ok(Op::ChanWrite { src, chan, iter: self.value(iter.trim_end_matches(')'), None)? });
        }
        if let Some(rest) = text.strip_prefix("tma ") {
            let (dst, src) =
                rest.split_once(" <- ").ok_or("expected `tma @buf[..] <- ACCESS completing $ring[..]`")?;
            let (buffer, slot) = dst.split_once('[').ok_or("expected `@buf[%slot % N]`")?;
            let (slot, _) = slot.split_once(" % ").ok_or("expected `[%slot % N]`")?;
            let (access, ring) =
                src.split_once(" completing ").ok_or("expected `ACCESS completing $ring[..]`")?;
            let (buffer, slot) = (self.buffer_id(buffer)?, self.value(slot, None)?);
            let (ring, _) = self.ring_at(ring)?;
            return Ok(Op::TmaCopy { buffer, src: self.access(access)?, slot, ring });
        }
        if let Some(rest) = text.strip_prefix("cp.async ") {
            let (dst, src) = rest.split_once(" <- ").ok_or("expected `cp.async @buf[..] <- ACCESS + A`")?;
            let (buffer, slot) = dst.split_once("[(").ok_or("expected `@buf[(%slot + A) % N]`")?;
            let (slot, _) = slot.split_once(" + ").ok_or("expected `(%slot + A)`")?;
            let (access, ahead) = src.rsplit_once(" + ").ok_or("expected `ACCESS + A`")?;
            let (buffer, slot) = (self.buffer_id(buffer)?, self.value(slot, None)?);
            let ahead = ahead.parse().map_err(|_| "bad lookahead")?;
            return Ok(Op::AsyncCopy { buffer, src: self.access(access)?, ahead, slot });
        }
        if let Some(rest) = text.strip_prefix("combine_ctas ") {
            let (vals, _) = rest.split_once(" (").ok_or("expected `combine_ctas %m, %l, %acc (..)`")?;
            let v = split_top(vals, ", ");
            let [m, l, a] = &v[..] else { return Err("combine_ctas takes three operands".into()) };
            let (max, sum, acc) = (self.value(m, None)?, self.value(l, None)?, self.value(a, None)?);
            return Ok(Op::CombineCtas { max, sum, acc });
        }
        if let Some(rest) = text.strip_prefix("merge_kv_splits ") {
            let (vals, _) = rest.split_once(" (").ok_or("expected `merge_kv_splits %m, %l, %acc (..)`")?;
            let v = split_top(vals, ", ");
            let [m, l, a] = &v[..] else { return Err("merge_kv_splits takes three operands".into()) };
            let (max, sum, acc) = (self.value(m, None)?, self.value(l, None)?, self.value(a, None)?);
            return Ok(Op::MergeSplits { max, sum, acc });
        }
        if let Some(v) = text.strip_suffix(" += 1") {
            return Ok(Op::CounterNext { dst: self.value(v, None)? });
        }
        if let Some(rest) =
            text.strip_prefix("store ").filter(|r| r.split(", ").next().is_some_and(|t| t.contains(".at(")))
        {
            // `store t.at(%i, %j), %v` or `.. where %keep`.
            let (target, rest) = rest.split_once("), ").ok_or("expected `store t.at(..), %v`")?;
            let (table, idx) = target.split_once(".at(").ok_or("expected `t.at(..)`")?;
            let param = self.param(table)?;
            let indices = split_top(idx, ", ").iter().map(|i| self.value(i, None)).collect::<R<Vec<_>>>()?;
            let (src, keep) = match rest.split_once(" where ") {
                Some((v, k)) => (self.value(v, None)?, Some(self.value(k, None)?)),
                None => (self.value(rest, None)?, None),
            };
            return Ok(Op::Scatter { param, indices, src, keep });
        }
        if let Some(rest) = text.strip_prefix("store ") {
            let (rest, via) = match rest.rsplit_once(" via ") {
                Some((rest, via)) => (rest, Some(self.value(via, None)?)),
                None => (rest, None),
            };
            let (access, v) = rest.rsplit_once(", ").ok_or("expected `store ACCESS, %v`")?;
            return Ok(Op::Store { dst: self.access(access)?, src: self.value(v, None)?, via });
        }
        if let Some((dst, src)) = text.split_once(" <- ") {
            return Ok(Op::Assign { dst: self.value(dst, None)?, src: self.value(src, None)? });
        }
        let (def, rhs) = text.split_once(" = ").ok_or_else(|| format!("unknown instruction `{text}`"))?;
        let (v, ty) = def.split_once(": ").ok_or("expected `%v: TYPE = ..`")?;
        let ty = self.ty(ty)?;
        let (name, args) = rhs.split_once(' ').unwrap_or((rhs, ""));
        let vals = |p: &mut Self, s: &str| -> R<Vec<Value>> {
            split_top(s, ", ").iter().map(|a| p.value(a, None)).collect()
        };
        // The operands are read before `dst` is defined (an op may not read its own result).
        let op_of: Box<dyn FnOnce(Value) -> Op> = match name {
            "param" => {
                let param = self.param(args)?;
                Box::new(move |dst| Op::ScalarParam { dst, param })
            }
            "const" if ty == Type::Int => {
                let value = args.parse().map_err(|_| "bad integer")?;
                Box::new(move |dst| Op::IntConst { dst, value })
            }
            "const" => {
                let value = float(args)?;
                Box::new(move |dst| Op::Const { dst, value })
            }
            "len" => {
                let dim = self.dim(args)?;
                Box::new(move |dst| Op::DimLen { dst, dim })
            }
            "fill" => {
                let value = float(args)?;
                Box::new(move |dst| Op::Fill { dst, value })
            }
            "load" => {
                let src = self.access(args)?;
                Box::new(move |dst| Op::Load { dst, src })
            }
            "stage" => {
                let src = self.access(args)?;
                Box::new(move |dst| Op::Stage { dst, src })
            }
            "view" => {
                let (args, zero_unless) = match args.rsplit_once(" or zeros while ") {
                    Some((a, c)) => {
                        let c = c.strip_suffix(" = 0").ok_or("expected `or zeros while %c = 0`")?;
                        (a, Some(self.value(c, None)?))
                    }
                    None => (args, None),
                };
                let (buffer, rest) =
                    args.split_once('[').ok_or("expected `view @buf[%slot % N] (ACCESS)`")?;
                let (slot, rest) = rest.split_once(" % ").ok_or("expected `[%slot % N]`")?;
                let (_, access) = rest.split_once("] (").ok_or("expected `] (ACCESS)`")?;
                let (buffer, slot) = (self.buffer_id(buffer)?, self.value(slot, None)?);
                let src = self.access(access.strip_suffix(')').ok_or("expected `)`")?)?;
                Box::new(move |dst| Op::StageView { dst, buffer, src, slot, zero_unless })
            }
            "counter" if args == "0" => Box::new(|dst| Op::CounterInit { dst }),
            "receive" => {
                let (chan, iter) = args.split_once(" (").ok_or("expected `receive #chan (%i)`")?;
                let (chan, iter) = (self.chan_id(chan)?, self.value(iter.trim_end_matches(')'), None)?);
                Box::new(move |dst| Op::ChanRead { dst, chan, iter })
            }
            "position" => {
                let (axis, index) = args
                    .strip_prefix("of ")
                    .and_then(|a| a.split_once(" along "))
                    .ok_or("expected `position of rows|cols along %i`")?;
                let axis = if axis == "rows" { TileAxis::Rows } else { TileAxis::Cols };
                let index = self.value(index, None)?;
                Box::new(move |dst| Op::Position { dst, axis, index })
            }
            "mask_columns" | "zero_columns" => {
                let fill = if name == "mask_columns" { ColumnFill::NegInf } else { ColumnFill::Zero };
                let (src, rest) = args
                    .split_once(" past the end of ")
                    .ok_or(format!("expected `{name} %v past the end of ..`"))?;
                let src = self.value(src, None)?;
                let (tile, causal) = match rest.split_once(" and past the diagonal of ") {
                    Some((t, c)) => {
                        let (q, d) = c.split_once(" of ").ok_or("expected `%q of S`")?;
                        (t, Some(Causal { q_tile: self.value(q, None)?, q_dim: self.dim(d)? }))
                    }
                    None => (rest, None),
                };
                let tile = self.access(tile)?;
                if causal.is_some() && fill == ColumnFill::Zero {
                    return Err("`zero_columns` takes no diagonal".into());
                }
                Box::new(move |dst| Op::MaskColumns { dst, src, tile, causal, fill })
            }
            "mask" => {
                let (src, rest) = args.split_once(" where ").ok_or("expected `mask %s where %k`")?;
                let (keep, mask) = match rest.split_once(" (mask #") {
                    Some((k, m)) => (
                        k,
                        Some(MaskId(m.split(':').next().and_then(|n| n.parse().ok()).ok_or("bad mask id")?)),
                    ),
                    None => (rest, None),
                };
                let (src, keep) = (self.value(src, None)?, self.value(keep, None)?);
                Box::new(move |dst| Op::MaskWhere { dst, src, keep, mask })
            }
            "mma" => {
                let parts = split_top(args, ", ");
                let a = self.value(&parts[0], None)?;
                let b = self.value(parts.get(1).ok_or("mma needs two operands")?, None)?;
                let acc = match parts.get(2) {
                    Some(c) => Some(self.value(c.strip_prefix("acc ").ok_or("expected `acc %c`")?, None)?),
                    None => None,
                };
                Box::new(move |dst| Op::Mma { dst, a, b, acc })
            }
            "mma_async" => {
                let v = vals(self, args)?;
                let [a, b] = v[..] else { return Err("mma_async takes two operands".into()) };
                Box::new(move |dst| Op::MmaAsync { dst, a, b, accumulate: false })
            }
            "select" => {
                let v = vals(self, args)?;
                let [cond, then, otherwise] = v[..] else { return Err("select takes three operands".into()) };
                Box::new(move |dst| Op::Select { dst, cond, then, otherwise })
            }
            "exp2_scaled" => {
                let v = vals(self, args)?;
                let [src, scale, sub] = v[..] else { return Err("exp2_scaled takes three operands".into()) };
                Box::new(move |dst| Op::Exp2Scaled { dst, src, scale, sub })
            }
            "log_sum_exp" => {
                let v = vals(self, args)?;
                let [max, sum] = v[..] else { return Err("log_sum_exp takes two operands".into()) };
                Box::new(move |dst| Op::LogSumExp { dst, max, sum })
            }
            "transpose" | "exp2" | "convert" | "to_f16" | "to_bf16" | "row_max" | "row_sum" | "col_max"
            | "col_sum" => {
                let src = self.value(args, None)?;
                let name = name.to_string();
                Box::new(move |dst| match name.as_str() {
                    "transpose" => Op::Transpose { dst, src },
                    "exp2" => Op::Exp2 { dst, src },
                    "convert" => Op::Convert { dst, src },
                    "row_max" => Op::Reduce { dst, op: ReduceOp::Max, src },
                    "row_sum" => Op::Reduce { dst, op: ReduceOp::Sum, src },
                    "col_max" => Op::ColReduce { dst, op: ReduceOp::Max, src },
                    "col_sum" => Op::ColReduce { dst, op: ReduceOp::Sum, src },
                    _ => Op::ToHalf { dst, src },
                })
            }
            other if BinOp::from_name(other).is_some() => {
                let op = BinOp::from_name(other).expect("the guard found it");
                let v = vals(self, args)?;
                let [lhs, rhs] = v[..] else { return Err(format!("`{other}` takes two operands")) };
                Box::new(move |dst| Op::Binary { dst, op, lhs, rhs })
            }
            other if UnaryOp::from_name(other).is_some() => {
                let op = UnaryOp::from_name(other).expect("the guard found it");
                let src = self.value(args, None)?;
                Box::new(move |dst| Op::Unary { dst, op, src })
            }
            other if other.contains(".at(") => {
                let (table, idx) = rhs.split_once(".at(").ok_or("expected `t.at(..)`")?;
                let param = self.param(table)?;
                let indices = vals(self, idx.trim_end_matches(')'))?;
                Box::new(move |dst| Op::Gather { dst, param, indices })
            }
            other => return Err(format!("`{other}` is not an op the text parser reads")),
        };
        let dst = self.value(v, Some(ty))?;
        Ok(op_of(dst))
    }
}
