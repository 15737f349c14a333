//! Lowering: type-checks a [`Program`] against a [`Config`] and builds the tile-level
//! [`Kernel`]. Every user mistake is a [`LowerError`] carrying the span of the offending source,
//! so the macro reports it where the user wrote it.

use std::collections::{HashMap, HashSet};

use crate::config::Config;
use crate::error::{IrError, LowerError};
use crate::kernel::*;
use crate::source::{
    BinOp, DType, Dim, ElemDecl, Expr, ExprKind, Extent, ParamDecl, Program, ReduceOp, Role, ShapeAxis,
    SpanId, Stmt, StmtKind, TileConst, TileRef, UnaryOp,
};

/// Lowers `program` for `config`, then runs the verifier.
pub fn lower(program: &Program, config: &Config) -> std::result::Result<Kernel, IrError> {
    config.validate()?;
    let mut lowerer = Lowerer::new(program, config)?;
    let mut body = Block::default();
    lowerer.block(&program.body, &mut body, Nesting::Top)?;
    if let Some((name, span)) = program.outputs_never_stored().into_iter().next() {
        return Err(LowerError::new(
            span,
            format!("output `{name}` is never stored: the kernel would leave it unwritten; `store` into it (`store({name}.tile(..), ..)`) or remove it"),
        )
        .into());
    }
    let kernel = Kernel {
        name: program.name.clone(),
        config: *config,
        params: lowerer.params,
        dims: lowerer.dims,
        values: lowerer.values,
        buffers: vec![],
        mbarriers: vec![],
        channels: vec![],
        masks: lowerer.masks,
        bounds: lowerer.bounds,
        body,
    };
    crate::verify::verify(&kernel)?;
    Ok(kernel)
}

#[derive(Clone, Copy, Debug)]
enum Binding {
    Value(Value),
    Tensor(usize),
    Scalar(usize),
    /// Sequence offsets: read by the work loop, not by the body.
    Offsets,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Nesting {
    Top,
    Tiles,
    Pipeline,
}

struct Lowerer {
    /// The tile each staged value (and its `.t()` view) holds.
    staged: HashMap<Value, TileAccess>,
    /// With `Config::causal`: the work loop's Q-tile index (the `tiles` axis walked in
    /// `TILE_M` tiles), once the work loop is entered.
    causal: Option<Causal>,
    causal_config: bool,
    /// [`Program::packed_rows`]: the `causal` flag is refused.
    packed_rows: bool,
    /// `Config::dtype`: the kernel's generic element type.
    dtype: DType,
    params: Vec<Param>,
    dims: Vec<String>,
    /// The head-dim axis as the user spelled it (a symbol such as `D`, or a literal).
    head_dim: Dim,
    /// The config lowered for (`TILE_M`, `TILE_N` and the head dim are its values).
    config: Config,
    values: Vec<ValueData>,
    scopes: Vec<HashMap<String, Binding>>,
    /// Where the statement being lowered sits.
    nesting: Nesting,
    /// Score tiles between their `mma` and the softmax, not yet masked (see [`Raw`]).
    raw: HashMap<Value, Raw>,
    /// Raw score values already masked: the masked value (each is masked once).
    masked_of: HashMap<Value, Value>,
    /// Values past the mask: masked scores (-inf where masked) and probabilities (0 there).
    state: HashMap<Value, Masked>,
    /// Tiles whose columns past the end of the sequence hold unspecified numbers (see
    /// [`Leaving::Data`]), with the staged tile those columns stand for: a row reduction or a
    /// conversion to an mma operand masks them first, with the identity of what reads them.
    tails: HashMap<Value, TileAccess>,
    /// Per register tile: the tile index that each of its axes walks (for `.index(DIM)`).
    axes: HashMap<Value, TileAxes>,
    /// Values that are functions of score positions and work-item uniforms, as expressions:
    /// masks built from them can be decided per tile ([`TileMask`]).
    sym: HashMap<Value, MaskExpr>,
    /// The work loop's index values, once it is entered.
    work_vars: Vec<Value>,
    /// The K/V loop's index, inside it.
    pipeline_var: Option<Value>,
    /// Inside a range loop (`for g in from..to`), which may not nest another.
    in_range_loop: bool,
    masks: Vec<TileMask>,
    /// Loop bounds written in the source ([`Kernel::bounds`]).
    bounds: Vec<MaskExpr>,
}

/// A score tile of the score code: the arithmetic between a `Q·Kᵀ` mma (or a `mask(..)`) and
/// the first exponential, reduction or row operation. Its masks are not applied yet; they are
/// applied once, after all of the score code, when the value leaves it ([`Lowerer::materialize`]).
/// So whatever the score code does to finite scores, a masked score is -inf when the softmax
/// sees it: FlexAttention's order (`score_mod`, then `mask_mod`), made structural.
#[derive(Clone, Debug)]
struct Raw {
    /// The value holding the scores (a `mask(..)` result is a handle with no code of its own:
    /// its numbers are those of the tile it masks).
    numbers: Value,
    /// The columns past the end of the K/V sequence (and, with `Config::causal`, past the
    /// diagonal): the compiler's own mask, from the staged tile of the mma.
    tail: Option<(TileAccess, Option<Causal>)>,
    /// The user's `mask(..)` conditions (bool tiles or uniforms): a score exists where all hold.
    keeps: Vec<Value>,
    /// Role and span of the score code's last op: the mask runs with them.
    role: Option<Role>,
    span: SpanId,
}

/// Where a score value goes when it leaves the score code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaving {
    /// Into the softmax (`exp`, `exp2`, `row_max`, or a row operand): its masks apply, with -inf.
    Softmax,
    /// Anywhere else. A value that only the compiler's sequence tail masks (no `mask(..)`) is
    /// then plain data, such as the backward's `dP = dO·Vᵀ`: the tail is not part of what the
    /// kernel says (those columns do not exist), so it is masked where it is read along the
    /// columns ([`Lowerer::tails`]), not with -inf, which `P ∘ dP` would turn into NaN. The
    /// `causal` flag masks the scores the softmax reads, so it does not apply to such data
    /// (its probabilities are 0 there). A value with user masks leaves as masked scores.
    Data,
}

/// Where a value past the mask stands: what arithmetic on it keeps masked scores masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Masked {
    /// -inf where masked: row max, subtracting a row vector, exponentials.
    Scores,
    /// 0 where masked (exponentials of masked scores): row sums, scaling by rows or scalars,
    /// conversion to the mma operand type.
    Probabilities,
}

/// The tile indices walked by the rows and the columns of a register tile, where known.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct TileAxes {
    rows: Option<Value>,
    cols: Option<Value>,
}

type Result<T> = std::result::Result<T, LowerError>;

fn err<T>(span: SpanId, message: impl Into<String>) -> Result<T> {
    Err(LowerError::new(span, message))
}

fn describe(ty: &Type) -> String {
    match *ty {
        Type::Index { .. } => "a tile index".into(),
        Type::Scalar => "an f32 scalar".into(),
        Type::Int => "an i32 scalar".into(),
        Type::Bool => "a bool scalar".into(),
        Type::Smem { rows, cols, transposed, .. } => {
            let (r, c) = if transposed { (cols, rows) } else { (rows, cols) };
            format!(
                "a staged shared-memory tile [{}, {}]{}",
                r.symbol(),
                c.symbol(),
                if transposed { " (transposed view)" } else { "" }
            )
        }
        Type::Frag { rows, cols, elem } => {
            format!("a register tile [{}, {}] of {}", rows.symbol(), cols.symbol(), elem.name())
        }
        Type::Row { rows } => format!("a row vector [{}]", rows.symbol()),
        Type::Col { cols } => format!("a column vector [{}]", cols.symbol()),
        Type::Counter => "an iteration counter".into(),
    }
}

impl Lowerer {
    /// The element type `decl` names for this config: the generic one is `Config::dtype`; a
    /// fixed one must agree with it (a kernel computes in one 16-bit type).
    fn resolve_elem(&self, decl: &ElemDecl, span: SpanId, what: &str) -> Result<DType> {
        match decl {
            ElemDecl::Generic(_) => Ok(self.dtype),
            ElemDecl::F32 | ElemDecl::I32 => {
                err(span, format!("{what} must be a 16-bit type (f16, bf16 or the generic one)"))
            }
            ElemDecl::Fixed(d) if *d == self.dtype => Ok(*d),
            ElemDecl::Fixed(d) => err(
                span,
                format!(
                    "{what} is {} but the config's dtype is {}: declare the kernel generic (`fn k<T>(q: Tensor<T, ..>)`, `.to::<T>()`) to run it in either",
                    d.name(),
                    self.dtype.name()
                ),
            ),
        }
    }

    /// The runtime dims of a table's axes, each of which must be a symbol, at least one.
    fn table_dims(&mut self, name: &str, shape: &[Dim], span: SpanId) -> Result<Vec<RtDim>> {
        let mut dims = vec![];
        for (axis, dim) in shape.iter().enumerate() {
            let Dim::Sym(sym) = dim else {
                return err(
                    span,
                    format!("axis {axis} of table `{name}` must be a symbol (such as `S`), found a literal"),
                );
            };
            dims.push(self.rt_dim(sym));
        }
        if dims.is_empty() {
            return err(
                span,
                format!("table `{name}` needs at least one axis; a single value is an f32 parameter"),
            );
        }
        Ok(dims)
    }

    /// The runtime dims of a tensor's `B, H, S` axes, each of which must be a symbol.
    fn outer_dims(&mut self, name: &str, axes: &[Dim], span: SpanId) -> Result<[RtDim; 3]> {
        let mut dims = [RtDim(0); 3];
        for (axis, dim) in axes.iter().enumerate() {
            let Dim::Sym(sym) = dim else {
                return err(
                    span,
                    format!("axis {axis} of `{name}` must be a symbol (such as `S`), found a literal"),
                );
            };
            dims[axis] = self.rt_dim(sym);
        }
        Ok(dims)
    }

    fn new(program: &Program, config: &Config) -> Result<Self> {
        let mut lowerer = Lowerer {
            staged: HashMap::new(),
            causal: None,
            causal_config: config.causal,
            packed_rows: program.packed_rows,
            dtype: config.dtype,
            params: vec![],
            dims: vec![],
            head_dim: Dim::Lit(config.head_dim),
            config: *config,
            values: vec![],
            scopes: vec![HashMap::new()],
            nesting: Nesting::Top,
            raw: HashMap::new(),
            masked_of: HashMap::new(),
            tails: HashMap::new(),
            state: HashMap::new(),
            axes: HashMap::new(),
            sym: HashMap::new(),
            work_vars: vec![],
            pipeline_var: None,
            in_range_loop: false,
            masks: vec![],
            bounds: vec![],
        };
        let mut head: Option<(Dim, String)> = None;
        // Outputs written element by element (`store(t.at(..), ..)`) are output tables.
        let mut stored_at = HashSet::new();
        program.each_stmt(&mut |s| {
            if let StmtKind::StoreAt { table, .. } = &s.kind {
                stored_at.insert(table.clone());
            }
        });
        for (index, decl) in program.params.iter().enumerate() {
            if lowerer.scopes[0].contains_key(decl.name()) {
                return err(span_of(decl), format!("parameter `{}` is declared twice", decl.name()));
            }
            match decl {
                ParamDecl::Scalar { name, .. } => {
                    lowerer.params.push(Param::Scalar { name: name.clone(), nonnegative: false });
                    lowerer.scopes[0].insert(name.clone(), Binding::Scalar(index));
                }
                ParamDecl::Offsets { name, batch, seq, optional, lengths, span } => {
                    if batch == seq {
                        let kind = if *lengths { "SeqLens" } else { "SeqOffsets" };
                        return err(
                            *span,
                            format!("`{name}: {kind}<{batch}, {seq}>` needs two different axes: the batch, then the sequence it makes ragged"),
                        );
                    }
                    if *lengths && crate::passes::tma::applies(config).is_ok() {
                        return err(
                            *span,
                            format!("`{name}` gives sequence lengths, but bulk tensor copies (`tma`) stop only at a tensor's end, so rows past a sequence's length would be read: compile without `tma`"),
                        );
                    }
                    let (batch, seq) = (lowerer.rt_dim(batch), lowerer.rt_dim(seq));
                    let param = OffsetsParam {
                        name: name.clone(),
                        batch,
                        seq,
                        optional: *optional,
                        lengths: *lengths,
                    };
                    lowerer.params.push(Param::Offsets(param));
                    lowerer.scopes[0].insert(name.clone(), Binding::Offsets);
                }
                ParamDecl::Tensor { name, dtype: ElemDecl::F32, writable: true, optional, shape, span }
                    if stored_at.contains(name) =>
                {
                    // An output table, written element by element with `store(t.at(..), ..)`.
                    let dims = lowerer.table_dims(name, shape, *span)?;
                    let table = TableParam {
                        name: name.clone(),
                        elem: Elem::F32,
                        dims,
                        writable: true,
                        optional: *optional,
                    };
                    lowerer.params.push(Param::Table(table));
                    lowerer.scopes[0].insert(name.clone(), Binding::Tensor(index));
                }
                ParamDecl::Tensor {
                    name,
                    dtype: dtype @ (ElemDecl::F32 | ElemDecl::I32),
                    shape,
                    writable: false,
                    optional,
                    span,
                } => {
                    // An input table, read element by element with `.at(..)`.
                    if *optional {
                        return err(*span, format!("only outputs may be optional; `{name}` is an input"));
                    }
                    let dims = lowerer.table_dims(name, shape, *span)?;
                    let elem = if *dtype == ElemDecl::I32 { Elem::I32 } else { Elem::F32 };
                    let table =
                        TableParam { name: name.clone(), elem, dims, writable: false, optional: false };
                    lowerer.params.push(Param::Table(table));
                    lowerer.scopes[0].insert(name.clone(), Binding::Tensor(index));
                }
                ParamDecl::Tensor { name, dtype: ElemDecl::I32, span, .. } => {
                    return err(*span, format!("i32 tensor `{name}` must be an input table `Tensor<i32, ..>`, read with `.at(..)`"));
                }
                ParamDecl::Tensor { name, dtype: ElemDecl::F32, shape, writable, optional, span } => {
                    // A per-row f32 output, `[B, H, S]` (the log-sum-exp).
                    if !writable || shape.len() != 3 {
                        return err(
                            *span,
                            format!("f32 tensor `{name}` must be a per-row output `TensorMut<f32, B, H, S>` (stored with `store({name}.tile(b, h, qt), rows)`), or an output table `TensorMut<f32, ..>` written element by element (`store({name}.at(..), tile)`)"),
                        );
                    }
                    let dims = lowerer.outer_dims(name, &shape[..3], *span)?;
                    lowerer.params.push(Param::Tensor(TensorParam {
                        name: name.clone(),
                        elem: Elem::F32,
                        dims,
                        writable: true,
                        optional: *optional,
                    }));
                    lowerer.scopes[0].insert(name.clone(), Binding::Tensor(index));
                }
                ParamDecl::Tensor { name, dtype, shape, writable, optional, span } => {
                    let dtype = lowerer.resolve_elem(dtype, *span, &format!("tensor `{name}`"))?;
                    if *optional && !writable {
                        return err(*span, format!("only outputs may be optional; `{name}` is an input"));
                    }
                    if shape.len() != 4 {
                        return err(
                            *span,
                            format!(
                                "tensor `{name}` must have 4 axes [batch, heads, sequence, head_dim], found {}",
                                shape.len()
                            ),
                        );
                    }
                    let last = &shape[3];
                    match &head {
                        None => {
                            if let Dim::Lit(d) = last {
                                if *d != config.head_dim {
                                    return err(
                                        *span,
                                        format!(
                                            "tensor `{name}` has head dim {d} but the kernel's head_dim is {}",
                                            config.head_dim
                                        ),
                                    );
                                }
                            }
                            head = Some((last.clone(), name.clone()));
                        }
                        Some((first, first_name)) if first != last => {
                            return err(
                                *span,
                                format!(
                                    "head-dim mismatch: `{name}` has head dim `{}` but `{first_name}` has `{}`",
                                    show_dim(last),
                                    show_dim(first)
                                ),
                            );
                        }
                        Some(_) => {}
                    }
                    let dims = lowerer.outer_dims(name, &shape[..3], *span)?;
                    lowerer.params.push(Param::Tensor(TensorParam {
                        name: name.clone(),
                        elem: Elem::half(dtype),
                        dims,
                        writable: *writable,
                        optional: *optional,
                    }));
                    lowerer.scopes[0].insert(name.clone(), Binding::Tensor(index));
                }
            }
        }
        lowerer.check_offsets(program)?;
        if let Some((dim, _)) = head {
            if let Dim::Sym(s) = &dim {
                if lowerer.dims.contains(s) {
                    return err(SpanId::NONE, format!("`{s}` names both the head dim and a runtime axis"));
                }
            }
            lowerer.head_dim = dim;
        }
        Ok(lowerer)
    }

    /// Sequence offsets make a sequence axis ragged over a batch axis: `seq` must be the
    /// sequence axis (and only that) of some tensor, `batch` only ever a batch axis, and no
    /// sequence axis may have two sets of offsets.
    fn check_offsets(&self, program: &Program) -> Result<()> {
        for (decl, param) in program.params.iter().zip(&self.params) {
            let Param::Offsets(o) = param else { continue };
            let (batch, seq) = (&self.dims[o.batch.0 as usize], &self.dims[o.seq.0 as usize]);
            let span = span_of(decl);
            let tensors = || {
                self.params.iter().filter_map(|p| match p {
                    Param::Tensor(t) => Some(t),
                    _ => None,
                })
            };
            // A paged cache's logical sequence is no tensor's axis: only the loops walk it.
            let walked = || {
                let mut walked = false;
                program.each_stmt(&mut |s| match &s.kind {
                    StmtKind::Tiles { extents, .. } => walked |= extents.iter().any(|e| e.dim == *seq),
                    StmtKind::Pipeline { extent, .. } => walked |= extent.dim == *seq,
                    _ => {}
                });
                walked
            };
            if !(tensors().any(|t| t.dims[2] == o.seq) || o.lengths && walked()) {
                return err(
                    span,
                    format!(
                        "`{seq}` is not the sequence axis of any tensor, so `{}` has nothing to make ragged",
                        o.name
                    ),
                );
            }
            for t in tensors() {
                for (axis, d) in t.dims.iter().enumerate() {
                    let (role, want) = if *d == o.seq {
                        ("sequence", 2)
                    } else if *d == o.batch {
                        ("batch", 0)
                    } else {
                        continue;
                    };
                    if axis != want {
                        return err(
                            span,
                            format!(
                                "`{}` makes `{seq}` ragged over `{batch}`, but axis {axis} of `{}` is `{}`, not its {role} axis",
                                o.name, t.name, self.dims[d.0 as usize]
                            ),
                        );
                    }
                }
            }
            let first = self.params.iter().find_map(|p| match p {
                Param::Offsets(other) if other.seq == o.seq => Some(&other.name),
                _ => None,
            });
            if first != Some(&o.name) {
                return err(
                    span,
                    format!("`{seq}` already has sequence offsets (`{}`)", first.unwrap_or(&o.name)),
                );
            }
        }
        Ok(())
    }

    fn rt_dim(&mut self, sym: &str) -> RtDim {
        match self.dims.iter().position(|d| d == sym) {
            Some(i) => RtDim(i as u32),
            None => {
                self.dims.push(sym.to_string());
                RtDim(self.dims.len() as u32 - 1)
            }
        }
    }

    fn new_value(&mut self, ty: Type, name: &str, mutable: bool) -> Value {
        self.values.push(ValueData { ty, name: name.to_string(), mutable });
        Value(self.values.len() as u32 - 1)
    }

    fn lookup(&self, name: &str) -> Option<Binding> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }

    fn bind(&mut self, name: &str, binding: Binding) {
        self.scopes.last_mut().expect("scope stack is never empty").insert(name.to_string(), binding);
    }

    fn ty(&self, v: Value) -> Type {
        self.values[v.index()].ty
    }

    fn block(&mut self, stmts: &[Stmt], out: &mut Block, nesting: Nesting) -> Result<()> {
        for stmt in stmts {
            self.stmt(stmt, out, nesting)?;
        }
        Ok(())
    }

    fn stmt(&mut self, stmt: &Stmt, out: &mut Block, nesting: Nesting) -> Result<()> {
        let role = stmt.role;
        self.nesting = nesting;
        match &stmt.kind {
            StmtKind::Let { name, mutable, value } => {
                if nesting == Nesting::Top {
                    return err(stmt.span, "statements must be inside the `tiles(..)` work loop");
                }
                let aliases_existing = matches!(value.kind, ExprKind::Var(_));
                // A `let` may name score code (it stays unmasked until it leaves the score
                // code); a mutable one is carried across statements and is masked first.
                let v = if *mutable {
                    self.expr(value, out, role, name)?
                } else {
                    self.expr_raw(value, out, role, name)?
                };
                if aliases_existing && (*mutable || self.values[v.index()].mutable) {
                    // `let mut x = y;` (or `let x = y;` of a mutable `y`) copies, so that
                    // assigning one never changes the other.
                    let var = self.new_value(self.ty(v), name, *mutable);
                    self.push(out, Op::Assign { dst: var, src: v }, role, stmt.span);
                    self.bind(name, Binding::Value(var));
                } else {
                    if *mutable {
                        self.values[v.index()].mutable = true;
                    }
                    self.bind(name, Binding::Value(v));
                }
            }
            StmtKind::Assign { name, value } => {
                let Some(Binding::Value(var)) = self.lookup(name) else {
                    return err(stmt.span, format!("cannot assign to `{name}`: not a local variable"));
                };
                if !self.values[var.index()].mutable {
                    return err(
                        stmt.span,
                        format!("cannot assign twice to immutable `{name}`; declare it with `let mut`"),
                    );
                }
                let v = self.expr(value, out, role, name)?;
                let (want, got) = (self.ty(var), self.ty(v));
                if want != got {
                    return err(
                        value.span,
                        format!("cannot assign {} to `{name}`, which is {}", describe(&got), describe(&want)),
                    );
                }
                out.insts.push(Inst { op: Op::Assign { dst: var, src: v }, role, span: stmt.span });
            }
            StmtKind::Tiles { vars, extents, body } => {
                if nesting != Nesting::Top {
                    return err(stmt.span, "`tiles(..)` must be the outermost loop");
                }
                if vars.len() != extents.len() {
                    return err(
                        stmt.span,
                        format!("`tiles` binds {} variables but has {} extents", vars.len(), extents.len()),
                    );
                }
                self.scopes.push(HashMap::new());
                let mut values = vec![];
                let mut loop_extents = vec![];
                for (var, extent) in vars.iter().zip(extents) {
                    let e = self.extent(extent)?;
                    let v = self.new_value(Type::Index { dim: e.dim, tile: e.per_tile }, var, false);
                    self.bind(var, Binding::Value(v));
                    values.push(v);
                    loop_extents.push(e);
                    if self.causal_config && e.per_tile == Some(TileDim::M) {
                        if self.packed_rows {
                            return err(
                                extent.span,
                                format!(
                                    "the `causal` flag masks score tiles by their rows' index along `{}`, but this kernel's rows are packed (`packed_rows`): they are not sequence positions; write the mask with the positions the rows stand for instead",
                                    self.dims[e.dim.0 as usize]
                                ),
                            );
                        }
                        // The causal flag masks in the forward orientation: the work loop's
                        // tiles are the queries, the sequence axis of the first tensor (`q`).
                        // A kernel whose work loop walks another axis (the keys of a backward's
                        // dK/dV) would be masked the wrong way round.
                        let queries = self.params.iter().find_map(|p| match p {
                            Param::Tensor(t) if !t.is_rows() => Some(t.dims[2]),
                            _ => None,
                        });
                        if let Some(q_dim) = queries.filter(|q| *q != e.dim) {
                            return err(
                                extent.span,
                                format!(
                                    "the `causal` flag masks score tiles whose rows are the queries (the sequence axis `{}` of the first tensor), but this work loop walks `{}`: write the mask with positions instead, e.g. `mask(s, s.index({}) <= s.index({}) + ({} - {}))`",
                                    self.dims[q_dim.0 as usize],
                                    self.dims[e.dim.0 as usize],
                                    self.dims[e.dim.0 as usize],
                                    self.dims[q_dim.0 as usize],
                                    self.dims[e.dim.0 as usize],
                                    self.dims[q_dim.0 as usize],
                                ),
                            );
                        }
                        self.causal = Some(Causal { q_tile: v, q_dim: e.dim });
                    }
                }
                for o in self.params.iter().filter_map(|p| match p {
                    Param::Offsets(o) => Some(o),
                    _ => None,
                }) {
                    let walks_batch =
                        loop_extents.iter().filter(|e| e.dim == o.batch && e.per_tile.is_none()).count();
                    if walks_batch != 1 {
                        let batch = &self.dims[o.batch.0 as usize];
                        return err(
                            stmt.span,
                            format!(
                                "`{}` makes `{}` ragged over `{batch}`: the work loop must walk `{batch}` once, one sequence at a time (`tiles({batch}, ..)`)",
                                o.name,
                                self.dims[o.seq.0 as usize]
                            ),
                        );
                    }
                }
                self.work_vars = values.clone();
                let mut inner = Block::default();
                self.block(body, &mut inner, Nesting::Tiles)?;
                self.nesting = nesting;
                self.scopes.pop();
                out.insts.push(Inst {
                    op: Op::Tiles {
                        vars: values,
                        extents: loop_extents,
                        schedule: TileSchedule::OnePerCta,
                        body: inner,
                    },
                    role,
                    span: stmt.span,
                });
            }
            StmtKind::Pipeline { var, from, extent, to, body } => {
                if nesting != Nesting::Tiles {
                    return err(
                        stmt.span,
                        "`pipeline(..)` must be directly inside the `tiles(..)` work loop",
                    );
                }
                let mut e = self.extent(extent)?;
                let what = "a `pipeline` bound is an i32 tile index";
                e.from = from.as_ref().map(|b| self.loop_bound(b, "from", what)).transpose()?;
                e.to = to.as_ref().map(|b| self.loop_bound(b, "to", what)).transpose()?;
                if self.causal_config {
                    if self.causal.is_none() {
                        return err(
                            stmt.span,
                            "a causal kernel needs a `tiles(..)` axis walked in TILE_M tiles (the Q tiles whose rows the mask compares)",
                        );
                    }
                    e.causal = self.causal;
                }
                self.scopes.push(HashMap::new());
                let v = self.new_value(Type::Index { dim: e.dim, tile: e.per_tile }, var, false);
                self.bind(var, Binding::Value(v));
                self.pipeline_var = Some(v);
                let mut inner = Block::default();
                self.block(body, &mut inner, Nesting::Pipeline)?;
                self.pipeline_var = None;
                self.nesting = nesting;
                self.scopes.pop();
                // A loop that stores element by element writes every tile it walks: it skips
                // none (the tiles a mask or the causal flag empties hold -inf scores to store).
                if inner.insts.iter().any(|i| matches!(i.op, Op::Scatter { .. })) {
                    e.causal = None;
                } else {
                    e.skip = skippable_mask(&self.values, &inner);
                }
                out.insts.push(Inst {
                    op: Op::Pipeline {
                        var: v,
                        extent: e,
                        stages: 0,
                        prologue: Block::default(),
                        body: inner,
                        epilogue: Block::default(),
                    },
                    role,
                    span: stmt.span,
                });
            }
            StmtKind::Loop { var, from, to, body } => {
                if nesting != Nesting::Tiles || self.in_range_loop {
                    return err(
                        stmt.span,
                        "a range loop `for g in from..to` must be directly inside the `tiles(..)` work loop, not inside another loop",
                    );
                }
                let what = "a loop bound is an i32";
                let (from, to) = (self.loop_bound(from, "from", what)?, self.loop_bound(to, "to", what)?);
                self.scopes.push(HashMap::new());
                let v = self.new_value(Type::Int, var, false);
                self.bind(var, Binding::Value(v));
                self.in_range_loop = true;
                let mut inner = Block::default();
                self.block(body, &mut inner, Nesting::Tiles)?;
                self.in_range_loop = false;
                self.nesting = nesting;
                self.scopes.pop();
                out.insts.push(Inst {
                    op: Op::Loop { var: v, from, to, body: inner },
                    role,
                    span: stmt.span,
                });
            }
            StmtKind::StoreAt { table, indices, value } => {
                if nesting == Nesting::Top {
                    return err(stmt.span, "statements must be inside the `tiles(..)` work loop");
                }
                self.store_at(table, indices, value, out, role, stmt.span)?;
            }
            StmtKind::Store { target, value } => {
                if nesting != Nesting::Tiles {
                    return err(stmt.span, "`store` must be in the `tiles(..)` loop body");
                }
                let access = self.tile_access(target, true)?;
                let src = self.expr(value, out, role, "out")?;
                let rows_tensor = matches!(&self.params[access.param], Param::Tensor(t) if t.is_rows());
                let want = if rows_tensor {
                    Type::Row { rows: TileDim::M }
                } else {
                    Type::Frag { rows: TileDim::M, cols: TileDim::Head, elem: Elem::F32 }
                };
                if self.ty(src) != want {
                    return err(
                        value.span,
                        format!("`store` writes {} but got {}", describe(&want), describe(&self.ty(src))),
                    );
                }
                self.check_rows(target, &access, TileDim::M)?;
                out.insts.push(Inst { op: Op::Store { dst: access, src, via: None }, role, span: stmt.span });
            }
        }
        Ok(())
    }

    /// The indices of a `t.at(..)` (a read or a store): each an i32, uniform or a tile; and the
    /// shape they broadcast to together with `shape` (`mismatch` when they cannot). Their values
    /// are named after `name`.
    fn table_indices(
        &mut self,
        indices: &[Expr],
        mut shape: Type,
        mismatch: &str,
        out: &mut Block,
        role: Option<Role>,
        name: &str,
    ) -> Result<(Vec<Value>, Type)> {
        let mut values = vec![];
        for index in indices {
            let v = self.expr(index, out, role, &format!("{name}_index"))?;
            let ty = self.ty(v);
            if ty.elem() != Some(Elem::I32) || matches!(ty, Type::Row { .. }) {
                return err(
                    index.span,
                    format!("table indices are integers (loop indices, positions `s.index(S)`, i32 arithmetic), not {}", describe(&ty)),
                );
            }
            shape = Type::broadcast(shape, ty).ok_or_else(|| LowerError::new(index.span, mismatch))?;
            values.push(v);
        }
        Ok((values, shape))
    }

    /// `store(t.at(i, j, ..), value)`: element by element into output table `t`.
    fn store_at(
        &mut self,
        table: &str,
        indices: &[Expr],
        value: &Expr,
        out: &mut Block,
        role: Option<Role>,
        span: SpanId,
    ) -> Result<()> {
        let param = match self.lookup(table) {
            Some(Binding::Tensor(p)) => p,
            _ => return err(span, format!("`{table}` is not a tensor parameter")),
        };
        let (rank, elem) = match &self.params[param] {
            Param::Table(t) if t.writable => (t.dims.len(), t.elem),
            Param::Table(_) => {
                return err(
                    span,
                    format!("`{table}` is an input table; declare it as `TensorMut<f32, ..>` to store into it"),
                )
            }
            _ => {
                return err(
                    span,
                    format!("`{table}` is written by tiles (`store({table}.tile(..), ..)`); `store(t.at(..), ..)` writes f32 output tables `TensorMut<f32, ..>` element by element"),
                )
            }
        };
        if indices.len() != rank {
            return err(
                span,
                format!("`{table}.at(..)` takes {rank} indices, one per axis, found {}", indices.len()),
            );
        }
        let src = self.expr(value, out, role, &format!("{table}_value"))?;
        let src_ty = self.ty(src);
        if src_ty.elem() != Some(elem) || matches!(src_ty, Type::Smem { .. } | Type::Counter) {
            return err(
                value.span,
                format!(
                    "`{table}` holds {}, so `store({table}.at(..), ..)` takes {} values, not {}",
                    elem.name(),
                    elem.name(),
                    describe(&src_ty)
                ),
            );
        }
        let mismatch =
            format!("the indices of `{table}.at(..)` and the value stored have different tile shapes");
        let (values, shape) = self.table_indices(indices, src_ty, &mismatch, out, role, table)?;
        let Type::Frag { rows, cols, .. } = shape else {
            return err(
                span,
                format!("`store({table}.at(..), ..)` writes a register tile element by element, but the value and the indices are {}: index it with positions (`s.index(S)`)", describe(&shape)),
            );
        };
        // The elements that exist: rows and columns inside their sequences.
        let mut axes = TileAxes::default();
        for v in values.iter().chain([&src]) {
            if let Some(a) = self.axes.get(v) {
                axes.rows = axes.rows.or(a.rows);
                axes.cols = axes.cols.or(a.cols);
            }
        }
        let mut keep: Option<Value> = None;
        for (axis, index) in [(TileAxis::Rows, axes.rows), (TileAxis::Cols, axes.cols)] {
            let name = format!("{table}_exists");
            let Some(inside) = self.in_sequence(axis, index, (rows, cols), &name, out, role, span) else {
                continue;
            };
            keep = Some(match keep {
                None => inside,
                Some(k) => {
                    let both = self.new_value(
                        Type::Frag { rows, cols, elem: Elem::Bool },
                        &format!("{table}_exists"),
                        false,
                    );
                    self.push(out, Op::Binary { dst: both, op: BinOp::And, lhs: k, rhs: inside }, role, span);
                    both
                }
            });
        }
        self.push(out, Op::Scatter { param, indices: values, src, keep }, role, span);
        Ok(())
    }

    fn extent(&mut self, extent: &Extent) -> Result<LoopExtent> {
        let Some(index) = self.dims.iter().position(|d| *d == extent.dim) else {
            return err(
                extent.span,
                format!(
                    "`{}` is not an axis of any tensor parameter (known: {})",
                    extent.dim,
                    self.dims.join(", ")
                ),
            );
        };
        Ok(LoopExtent {
            dim: RtDim(index as u32),
            per_tile: extent.per_tile.map(tile_dim),
            causal: None,
            skip: None,
            from: None,
            to: None,
        })
    }

    /// A bound of a `pipeline(from..min(to, DIM / TILE))` range: an i32 expression of the work
    /// item, kept as an expression that every role evaluates at its copy of the loop.
    fn loop_bound(&mut self, bound: &Expr, name: &str, what: &str) -> Result<BoundId> {
        let mut scratch = Block::default();
        let v = self.expr(bound, &mut scratch, None, name)?;
        let ty = self.ty(v);
        if ty != Type::Int {
            return err(bound.span, format!("{what}, not {}", describe(&ty)));
        }
        match self.sym_of(v) {
            Some(e) if !e.mentions_positions() => {
                self.bounds.push(e);
                Ok(BoundId(self.bounds.len() as u32 - 1))
            }
            _ => err(
                bound.span,
                "a `pipeline` bound is computed from the work loop's indices, lengths, TILE_M / TILE_N / D, integer constants and i32 tables read at those (`+ - * / % min max`)",
            ),
        }
    }

    fn tile_access(&mut self, target: &TileRef, write: bool) -> Result<TileAccess> {
        let param = match self.lookup(&target.tensor) {
            Some(Binding::Tensor(p)) => p,
            _ => return err(target.span, format!("`{}` is not a tensor parameter", target.tensor)),
        };
        let Param::Tensor(tensor) = &self.params[param] else {
            unreachable!("tensor bindings point at tensor params")
        };
        if write && !tensor.writable {
            return err(
                target.span,
                format!("`{}` is read-only; declare it as `TensorMut` to store into it", tensor.name),
            );
        }
        if !write && tensor.writable {
            return err(
                target.span,
                format!("`{}` is an output (`TensorMut`); kernels only store into it", tensor.name),
            );
        }
        if target.indices.len() != 3 {
            return err(
                target.span,
                format!(
                    "`{}[..]` takes 3 indices (batch, head, sequence tile), found {}",
                    tensor.name,
                    target.indices.len()
                ),
            );
        }
        let dims = tensor.dims;
        let tensor_name = tensor.name.clone();
        let pages = match &target.pages {
            None => None,
            Some(table) => Some(self.page_table(target, table, write)?),
        };
        let mut coords = vec![];
        let mut groups = vec![];
        for (axis, index) in target.indices.iter().enumerate() {
            let Some(Binding::Value(v)) = self.lookup(index) else {
                return err(target.span, format!("`{index}` is not a loop index"));
            };
            // `block_table[b]`: `b` walks the table's first axis (the sequences).
            if let (0, Some(table)) = (axis, pages) {
                let Param::Table(t) = &self.params[table] else { unreachable!("page_table checked it") };
                match self.ty(v) {
                    Type::Int => {}
                    Type::Index { dim, tile: None } if dim == t.dims[0] => {}
                    _ => {
                        return err(
                            target.span,
                            format!(
                                "`{}[{index}]` selects a sequence's pages: `{index}` must walk `{}`, the table's first axis",
                                t.name,
                                self.dims[t.dims[0].0 as usize]
                            ),
                        )
                    }
                }
                groups.push(None);
                coords.push(v);
                continue;
            }
            // A computed batch or head index (an i32, such as `hk * (H / HKV) + g`): a tile
            // whose index lies outside its axis reads as zeros and is not stored.
            if self.ty(v) == Type::Int && axis < 2 && target.groups.get(axis).cloned().flatten().is_none() {
                groups.push(None);
                coords.push(v);
                continue;
            }
            let Type::Index { dim: walked, tile } = self.ty(v) else {
                return err(
                    target.span,
                    format!("`{index}` is not a loop index (a batch or head index may also be an i32 computed from them)"),
                );
            };
            // `h / (H / HKV)`: `h` walks `H`, the quotient walks `HKV`.
            let mut dim = walked;
            let group = match target.groups.get(axis).cloned().flatten() {
                None => None,
                Some((of, to)) => {
                    let axis_of = |name: &str| -> Result<RtDim> {
                        match self.dims.iter().position(|d| d == name) {
                            Some(i) => Ok(RtDim(i as u32)),
                            None => {
                                err(target.span, format!("`{name}` is not an axis of any tensor parameter"))
                            }
                        }
                    };
                    let (of, to) = (axis_of(&of)?, axis_of(&to)?);
                    if walked != of || tile.is_some() {
                        return err(
                            target.span,
                            format!(
                                "`{index} / ({} / {})` needs `{index}` to walk `{}`",
                                self.dims[of.0 as usize], self.dims[to.0 as usize], self.dims[of.0 as usize]
                            ),
                        );
                    }
                    dim = to;
                    Some(HeadGroup { of, to })
                }
            };
            groups.push(group);
            // A paged tile walks the logical sequence (its rows are gathered from pages).
            let paged_rows = axis == 2 && pages.is_some();
            if dim != dims[axis] && !paged_rows {
                return err(
                    target.span,
                    format!(
                        "index `{index}` walks `{}` but axis {axis} of `{tensor_name}` is `{}`",
                        self.dims[dim.0 as usize], self.dims[dims[axis].0 as usize]
                    ),
                );
            }
            if axis < 2 && tile.is_some() {
                return err(
                    target.span,
                    format!(
                        "index `{index}` walks tiles; axis {axis} of `{tensor_name}` takes a plain index"
                    ),
                );
            }
            if axis == 2 && tile.is_none() {
                return err(
                    target.span,
                    format!(
                        "index `{index}` must walk tiles of the sequence axis (`{} / TILE_M` or `/ TILE_N`)",
                        self.dims[dims[axis].0 as usize]
                    ),
                );
            }
            coords.push(v);
        }
        if groups.iter().all(Option::is_none) {
            groups.clear();
        }
        Ok(TileAccess { param, coords, groups, pages })
    }

    /// The page table of a paged tile (`k_cache.tile(block_table[b], ..)`): an i32 input table
    /// of two axes (sequences, then their pages). Paged tensors are read, never stored into.
    fn page_table(&self, target: &TileRef, table: &str, write: bool) -> Result<usize> {
        if crate::passes::tma::applies(&self.config).is_ok() {
            return err(
                target.span,
                format!("`{}` is gathered through a page table, which a tensor map (`tma`) cannot do: compile without `tma`", target.tensor),
            );
        }
        if write {
            return err(
                target.span,
                format!(
                    "`{}` is stored through a page table; paged tiles are read-only (gathered)",
                    target.tensor
                ),
            );
        }
        let found = match self.lookup(table) {
            Some(Binding::Tensor(p)) => match &self.params[p] {
                Param::Table(t) if t.elem == Elem::I32 && !t.writable && t.dims.len() == 2 => Some(p),
                _ => None,
            },
            _ => None,
        };
        found.ok_or_else(|| {
            LowerError::new(
                target.span,
                format!(
                    "`{table}[..]` in a tile's batch position is a page table: an i32 input `Tensor<i32, B, MAX_PAGES>` (a row of page numbers per sequence)"
                ),
            )
        })
    }

    /// Rows of the tile that `access` selects (the tile size of its sequence index).
    fn access_rows(&self, access: &TileAccess) -> TileDim {
        match self.ty(access.coords[2]) {
            Type::Index { tile: Some(t), .. } => t,
            _ => unreachable!("tile_access checked the sequence index"),
        }
    }

    fn check_rows(&self, target: &TileRef, access: &TileAccess, want: TileDim) -> Result<()> {
        let rows = self.access_rows(access);
        if rows != want {
            return err(
                target.span,
                format!(
                    "this tile has {} rows; registers tiles (load/store) must have {} rows",
                    rows.symbol(),
                    want.symbol()
                ),
            );
        }
        Ok(())
    }

    fn push(&mut self, out: &mut Block, op: Op, role: Option<Role>, span: SpanId) {
        out.insts.push(Inst { op, role, span });
    }

    /// Lowers an expression, returning the value that holds its result, masked if it is score
    /// code (the value leaves the score code here). `name` names the values it creates (the
    /// `let` it initializes), so the text IR and the PTX read like the source.
    fn expr(&mut self, expr: &Expr, out: &mut Block, role: Option<Role>, name: &str) -> Result<Value> {
        let v = self.expr_raw(expr, out, role, name)?;
        Ok(self.materialize(v, out, Leaving::Data))
    }

    /// [`Lowerer::expr`] for an operand of the softmax (masked with -inf).
    fn softmax_operand(
        &mut self,
        expr: &Expr,
        out: &mut Block,
        role: Option<Role>,
        name: &str,
    ) -> Result<Value> {
        let v = self.expr_raw(expr, out, role, name)?;
        Ok(self.materialize(v, out, Leaving::Softmax))
    }

    /// Applies the masks of score value `v` (if it is one): the user's conditions as a select
    /// with -inf, then the compiler's tail and causal mask. Memoized: each score value is masked
    /// once, where it first leaves the score code, with the role of its last score op.
    fn materialize(&mut self, v: Value, out: &mut Block, leaving: Leaving) -> Value {
        let Some(raw) = self.raw.get(&v).cloned() else { return v };
        if leaving == Leaving::Data && raw.keeps.is_empty() {
            if let Some((tile, _)) = &raw.tail {
                self.tails.insert(raw.numbers, tile.clone());
            }
            return raw.numbers;
        }
        if let Some(done) = self.masked_of.get(&v) {
            return *done;
        }
        let (role, span) = (raw.role, raw.span);
        let name = self.values[raw.numbers.index()].name.clone();
        let ty = self.ty(raw.numbers);
        let mut current = raw.numbers;
        if let Some((&first, rest)) = raw.keeps.split_first() {
            let mut keep = first;
            for &k in rest {
                let kt = Type::broadcast(self.ty(keep), self.ty(k)).unwrap_or(self.ty(keep));
                let both = self.new_value(kt, &format!("{name}_keep"), false);
                self.push(out, Op::Binary { dst: both, op: BinOp::And, lhs: keep, rhs: k }, role, span);
                keep = both;
            }
            // A condition on positions and work-item values is kept as an expression too.
            let syms: Option<Vec<MaskExpr>> = raw.keeps.iter().map(|k| self.sym_of(*k)).collect();
            let mask = syms.and_then(|syms| {
                let all =
                    syms.into_iter().reduce(|a, b| MaskExpr::Binary(BinOp::And, Box::new(a), Box::new(b)))?;
                all.mentions_positions().then(|| {
                    self.masks.push(TileMask { keep: all });
                    MaskId(self.masks.len() as u32 - 1)
                })
            });
            let selected = self.new_value(ty, &format!("{name}_masked"), false);
            self.push(out, Op::MaskWhere { dst: selected, src: current, keep, mask }, role, span);
            current = selected;
        }
        if let Some((tile, causal)) = raw.tail {
            let masked = self.new_value(ty, &name, false);
            let fill = ColumnFill::NegInf;
            self.push(out, Op::MaskColumns { dst: masked, src: current, tile, causal, fill }, role, span);
            current = masked;
        }
        if let Some(axes) = self.axes.get(&v).copied() {
            self.axes.insert(current, axes);
        }
        self.state.insert(current, Masked::Scores);
        self.masked_of.insert(v, current);
        current
    }

    /// `v` as an expression of positions and work-item values, if it is one.
    fn sym_of(&self, v: Value) -> Option<MaskExpr> {
        if let Some(e) = self.sym.get(&v) {
            return Some(e.clone());
        }
        self.work_vars.iter().position(|w| *w == v).map(MaskExpr::WorkIndex)
    }

    /// The numbers of score value `v` (itself unless it is a `mask(..)` handle).
    fn numbers(&self, v: Value) -> Value {
        self.raw.get(&v).map_or(v, |r| r.numbers)
    }

    /// Merges the score state of the operands of a score-code op into its result `dst`.
    fn merge_raw(&mut self, dst: Value, operands: &[Value], role: Option<Role>, span: SpanId) -> Result<()> {
        let mut merged: Option<Raw> = None;
        for v in operands {
            let Some(r) = self.raw.get(v) else { continue };
            match &mut merged {
                None => merged = Some(Raw { numbers: dst, role, span, ..r.clone() }),
                Some(m) => {
                    match (&m.tail, &r.tail) {
                        (Some(a), Some(b)) if !(self.same_extent(&a.0, &b.0) && a.1 == b.1) => {
                            return err(
                                span,
                                "these scores come from different K/V tiles; combine scores of one tile",
                            )
                        }
                        (None, Some(_)) => m.tail = r.tail.clone(),
                        _ => {}
                    }
                    for k in &r.keeps {
                        if !m.keeps.contains(k) {
                            m.keeps.push(*k);
                        }
                    }
                }
            }
        }
        if let Some(m) = merged {
            self.raw.insert(dst, m);
        }
        Ok(())
    }

    /// A score operand of an op on rows: masked if the user masks it or a row max read it
    /// masked; otherwise still score code.
    fn enter_row_op(&mut self, v: Value, out: &mut Block) -> Value {
        match self.raw.get(&v) {
            Some(raw) if !raw.keeps.is_empty() || self.masked_of.contains_key(&v) => {
                self.materialize(v, out, Leaving::Softmax)
            }
            _ => v,
        }
    }

    /// Whether the rows of two staged tiles end at the same place: the same tile of the same
    /// sequence axis for the same batch (the K and the V tile of one step).
    fn same_extent(&self, a: &TileAccess, b: &TileAccess) -> bool {
        let seq = |t: &TileAccess| match &self.params[t.param] {
            Param::Tensor(p) => Some(p.dims[2]),
            _ => None,
        };
        a.coords[0] == b.coords[0] && a.coords[2] == b.coords[2] && seq(a) == seq(b) && a.pages == b.pages
    }

    /// Elementwise operands whose columns end at different places cannot meet.
    fn check_tails(&self, operands: &[Value], span: SpanId) -> Result<()> {
        let tails: Vec<&TileAccess> = operands.iter().filter_map(|v| self.tails.get(v)).collect();
        match tails[..] {
            [a, b] if !self.same_extent(a, b) => err(
                span,
                "these products come from tiles of different sequences; combine products of one tile",
            ),
            _ => Ok(()),
        }
    }

    /// The unspecified columns of the first operand that has them, for an elementwise result.
    fn inherit_tail(&mut self, dst: Value, operands: &[Value]) {
        if !matches!(self.ty(dst), Type::Frag { .. } | Type::Col { .. }) {
            return;
        }
        if let Some(t) = operands.iter().find_map(|v| self.tails.get(v).cloned()) {
            self.tails.insert(dst, t);
        }
    }

    /// `v` with its unspecified columns (if any) set to `fill`, ready for a reduction along its
    /// rows or a contraction over its columns.
    fn mask_tail(
        &mut self,
        v: Value,
        fill: ColumnFill,
        out: &mut Block,
        role: Option<Role>,
        span: SpanId,
    ) -> Value {
        let Some(tile) = self.tails.get(&v).cloned() else { return v };
        let name = self.values[v.index()].name.clone();
        let dst = self.new_value(self.ty(v), &format!("{name}_in_sequence"), false);
        self.push(out, Op::MaskColumns { dst, src: v, tile, causal: None, fill }, role, span);
        if let Some(a) = self.axes.get(&v).copied() {
            self.axes.insert(dst, a);
        }
        if let Some(s) = self.state.get(&v).copied() {
            self.state.insert(dst, s);
        }
        dst
    }

    /// Whether each element of a `[rows, cols]` register tile lies inside its sequence along
    /// `axis`, whose tile index is `index` (a bool tile: its position below the sequence's
    /// length); `None` when that axis walks no sequence in tiles (it has no tail).
    #[allow(clippy::too_many_arguments)]
    fn in_sequence(
        &mut self,
        axis: TileAxis,
        index: Option<Value>,
        (rows, cols): (TileDim, TileDim),
        name: &str,
        out: &mut Block,
        role: Option<Role>,
        span: SpanId,
    ) -> Option<Value> {
        let index = index?;
        let Type::Index { dim, tile: Some(_) } = self.ty(index) else { return None };
        let pos = self.new_value(Type::Frag { rows, cols, elem: Elem::I32 }, &format!("{name}_pos"), false);
        self.push(out, Op::Position { dst: pos, axis, index }, role, span);
        let len = self.new_value(Type::Int, &format!("{name}_len"), false);
        self.push(out, Op::DimLen { dst: len, dim }, role, span);
        let inside = self.new_value(Type::Frag { rows, cols, elem: Elem::Bool }, name, false);
        self.push(out, Op::Binary { dst: inside, op: BinOp::Lt, lhs: pos, rhs: len }, role, span);
        Some(inside)
    }

    /// `col_max(x)` / `col_sum(x)`: each column of f32 register tile `x` reduced over its rows.
    /// Rows past the end of their sequence (a Q tile's tail) count as the reduction's identity;
    /// the columns keep the tile's own tail, if any (they are masked where they are read).
    fn col_reduce(
        &mut self,
        op: ReduceOp,
        inner: &Expr,
        out: &mut Block,
        role: Option<Role>,
        span: SpanId,
        name: &str,
    ) -> Result<Value> {
        let what = match op {
            ReduceOp::Max => "`col_max`",
            ReduceOp::Sum => "`col_sum`",
        };
        let src = self.expr(inner, out, role, name)?;
        if op == ReduceOp::Sum {
            self.check_masked(src, &[Masked::Probabilities], what, span)?;
        }
        let ty = self.ty(src);
        let Type::Frag { rows, cols, elem: Elem::F32 } = ty else {
            return err(span, format!("{what} reduces f32 register tiles, not {}", describe(&ty)));
        };
        let axes = self.axes.get(&src).copied().unwrap_or_default();
        let mut operand = src;
        let row_exists = format!("{name}_row_exists");
        if let Some(inside) =
            self.in_sequence(TileAxis::Rows, axes.rows, (rows, cols), &row_exists, out, role, span)
        {
            let identity = match op {
                ReduceOp::Max => f32::NEG_INFINITY,
                ReduceOp::Sum => 0.0,
            };
            let fill = self.new_value(Type::Scalar, &format!("{name}_identity"), false);
            self.push(out, Op::Const { dst: fill, value: identity }, role, span);
            let rows_in = self.new_value(ty, &format!("{name}_rows_in_sequence"), false);
            self.push(out, Op::Select { dst: rows_in, cond: inside, then: src, otherwise: fill }, role, span);
            operand = rows_in;
        }
        let dst = self.new_value(Type::Col { cols }, name, false);
        self.push(out, Op::ColReduce { dst, op, src: operand }, role, span);
        self.axes.insert(dst, TileAxes { rows: None, cols: axes.cols });
        if let Some(t) = self.tails.get(&src).cloned() {
            self.tails.insert(dst, t);
        }
        Ok(dst)
    }

    /// The axes of the first operand that has them, for an elementwise result.
    fn inherit_axes(&mut self, dst: Value, operands: &[Value]) {
        if !matches!(self.ty(dst), Type::Frag { .. } | Type::Col { .. }) {
            return;
        }
        if let Some(a) = operands.iter().find_map(|v| self.axes.get(v).copied()) {
            self.axes.insert(dst, a);
        }
    }

    /// `v` as f32 (an i32 value is converted; an f32 one returned as is).
    fn promote_to_f32(&mut self, v: Value, out: &mut Block, role: Option<Role>, span: SpanId) -> Value {
        if self.ty(v).elem() != Some(Elem::I32) {
            return v;
        }
        let ty = self.ty(v).with_elem(Elem::F32).expect("i32 shapes hold f32");
        let name = format!("{}_f32", self.values[v.index()].name);
        let dst = self.new_value(ty, &name, false);
        self.push(out, Op::Convert { dst, src: v }, role, span);
        if let Some(e) = self.sym_of(v) {
            self.sym.insert(dst, MaskExpr::ToFloat(Box::new(e)));
        }
        if let Some(a) = self.axes.get(&v).copied() {
            self.axes.insert(dst, a);
        }
        self.inherit_tail(dst, &[v]);
        dst
    }

    /// Rejects arithmetic that could bring masked scores back (see [`Masked`]).
    fn check_masked(&self, v: Value, allowed: &[Masked], what: &str, span: SpanId) -> Result<()> {
        match self.state.get(&v) {
            Some(s) if !allowed.contains(s) => Err(masked_error(*s, what, span)),
            _ => Ok(()),
        }
    }

    /// Lowers an expression that may be score code: a score value comes back unmasked (the
    /// caller either continues the score code or calls [`Lowerer::materialize`]).
    fn expr_raw(&mut self, expr: &Expr, out: &mut Block, role: Option<Role>, name: &str) -> Result<Value> {
        let span = expr.span;
        let value = match &expr.kind {
            ExprKind::Var(var) => match self.lookup(var) {
                Some(Binding::Value(v)) => v,
                Some(Binding::Scalar(param)) => {
                    let dst = self.new_value(Type::Scalar, var, false);
                    self.push(out, Op::ScalarParam { dst, param }, role, span);
                    self.sym.insert(dst, MaskExpr::Param(param));
                    dst
                }
                Some(Binding::Tensor(_)) => {
                    return err(
                        span,
                        format!("tensor `{var}` must be indexed by tile, e.g. `{var}[b, h, t]`"),
                    )
                }
                Some(Binding::Offsets) => {
                    return err(
                        span,
                        format!(
                        "`{var}` holds sequence offsets, which the work loop reads; the body cannot use them"
                    ),
                    )
                }
                None => self.named_int(var, out, role, span)?,
            },
            ExprKind::Int(x) => {
                let Ok(value) = i32::try_from(*x) else {
                    return err(span, "this integer is out of the range of i32");
                };
                let dst = self.new_value(Type::Int, name, false);
                self.push(out, Op::IntConst { dst, value }, role, span);
                self.sym.insert(dst, MaskExpr::Int(value));
                dst
            }
            ExprKind::Lit(x) => {
                let dst = self.new_value(Type::Scalar, name, false);
                self.push(out, Op::Const { dst, value: *x }, role, span);
                self.sym.insert(dst, MaskExpr::Float(*x));
                dst
            }
            ExprKind::Const(c) => {
                let dst = self.new_value(Type::Scalar, name, false);
                self.push(out, Op::Const { dst, value: c.value() }, role, span);
                self.sym.insert(dst, MaskExpr::Float(c.value()));
                dst
            }
            ExprKind::Load(target) => {
                if self.nesting != Nesting::Tiles {
                    return err(
                        span,
                        "`load` reads a tile into registers once per work item: put it in the `tiles(..)` loop body, not in `pipeline(..)` (tiles read every iteration are staged with `stage(..)`)",
                    );
                }
                let src = self.tile_access(target, false)?;
                self.check_rows(target, &src, TileDim::M)?;
                let elem = Elem::half(self.dtype);
                let dst =
                    self.new_value(Type::Frag { rows: TileDim::M, cols: TileDim::Head, elem }, name, false);
                self.axes.insert(dst, TileAxes { rows: Some(src.coords[2]), cols: None });
                self.push(out, Op::Load { dst, src }, role, span);
                dst
            }
            ExprKind::Stage(target) => {
                let src = self.tile_access(target, false)?;
                let rows = self.access_rows(&src);
                let elem = Elem::half(self.dtype);
                let dst = self.new_value(
                    Type::Smem { rows, cols: TileDim::Head, transposed: false, elem },
                    name,
                    false,
                );
                self.staged.insert(dst, src.clone());
                self.axes.insert(dst, TileAxes { rows: Some(src.coords[2]), cols: None });
                self.push(out, Op::Stage { dst, src }, role, span);
                dst
            }
            ExprKind::Transpose(inner) => {
                let src = self.expr(inner, out, role, name)?;
                let Type::Smem { rows, cols, transposed, elem } = self.ty(src) else {
                    return err(
                        span,
                        format!(
                            "`.t()` applies to staged shared-memory tiles, not to {}",
                            describe(&self.ty(src))
                        ),
                    );
                };
                let dst = self.new_value(
                    Type::Smem { rows, cols, transposed: !transposed, elem },
                    &format!("{name}_t"),
                    false,
                );
                if let Some(tile) = self.staged.get(&src).cloned() {
                    self.staged.insert(dst, tile);
                }
                if let Some(a) = self.axes.get(&src).copied() {
                    self.axes.insert(dst, TileAxes { rows: a.cols, cols: a.rows });
                }
                self.push(out, Op::Transpose { dst, src }, role, span);
                dst
            }
            ExprKind::To(inner, ElemDecl::F32) => {
                let src = self.expr(inner, out, role, name)?;
                let Type::Frag { rows, cols, elem } = self.ty(src) else {
                    return err(
                        span,
                        format!(
                            "`.to::<f32>()` widens 16-bit register tiles, not {}",
                            describe(&self.ty(src))
                        ),
                    );
                };
                if !elem.is_half() {
                    return err(span, format!("this is already {}", describe(&self.ty(src))));
                }
                let dst =
                    self.new_value(Type::Frag { rows, cols, elem: Elem::F32 }, &format!("{name}_f32"), false);
                self.push(out, Op::Convert { dst, src }, role, span);
                self.inherit_axes(dst, &[src]);
                dst
            }
            ExprKind::To(inner, target) => {
                let dtype = self.resolve_elem(target, span, "the conversion")?;
                let src = self.expr(inner, out, role, name)?;
                self.check_masked(src, &[Masked::Probabilities], "conversion to 16 bits", span)?;
                // A 16-bit tile is an mma A operand, which contracts over its columns.
                let src = self.mask_tail(src, ColumnFill::Zero, out, role, span);
                let Type::Frag { rows, cols, elem: Elem::F32 } = self.ty(src) else {
                    return err(
                        span,
                        format!(
                            "`.to::<{}>()` converts f32 register tiles, not {}",
                            dtype.name(),
                            describe(&self.ty(src))
                        ),
                    );
                };
                let elem = Elem::half(dtype);
                let dst = self.new_value(
                    Type::Frag { rows, cols, elem },
                    &format!("{name}_{}", dtype.name()),
                    false,
                );
                self.push(out, Op::ToHalf { dst, src }, role, span);
                dst
            }
            ExprKind::Mma { a, b, acc } => {
                let av = self.expr(a, out, role, &format!("{name}_a"))?;
                let bv = self.expr(b, out, role, &format!("{name}_b"))?;
                let (a_rows, a_cols) = match self.ty(av) {
                    Type::Frag { rows, cols, elem } if elem.is_half() => (rows, cols),
                    Type::Frag { elem: Elem::F32, .. } => {
                        return err(
                            a.span,
                            format!(
                            "the A operand of `mma` must be {0}; convert the f32 tile with `.to::<{0}>()`",
                            self.dtype.name()
                        ),
                        )
                    }
                    other => {
                        return err(
                            a.span,
                            format!(
                                "the A operand of `mma` must be a 16-bit register tile, not {}",
                                describe(&other)
                            ),
                        )
                    }
                };
                let bt = self.ty(bv);
                let Type::Smem { .. } = bt else {
                    return err(
                        b.span,
                        format!(
                            "the B operand of `mma` must be a staged shared-memory tile, not {}",
                            describe(&bt)
                        ),
                    );
                };
                let (b_rows, b_cols) = bt.matrix_dims().expect("smem tiles have matrix dims");
                if a_cols != b_rows {
                    return err(
                        span,
                        format!(
                            "`mma` of incompatible tiles: A is [{}, {}] but B is [{}, {}]; the inner axes `{}` and `{}` differ{}",
                            a_rows.symbol(),
                            a_cols.symbol(),
                            b_rows.symbol(),
                            b_cols.symbol(),
                            a_cols.symbol(),
                            b_rows.symbol(),
                            if a_cols == TileDim::Head { " (did you mean `.t()`?)" } else { "" }
                        ),
                    );
                }
                let result = Type::Frag { rows: a_rows, cols: b_cols, elem: Elem::F32 };
                let acc_value = match acc {
                    None => None,
                    Some(acc) => {
                        let cv = self.expr(acc, out, role, &format!("{name}_acc"))?;
                        if self.ty(cv) != result {
                            return err(
                                acc.span,
                                format!(
                                    "the accumulator of `mma` must be {}, not {}",
                                    describe(&result),
                                    describe(&self.ty(cv))
                                ),
                            );
                        }
                        Some(cv)
                    }
                };
                if let Some(acc) = acc_value {
                    self.check_masked(acc, &[], "an mma accumulating", span)?;
                }
                let dst = self.new_value(result, name, false);
                self.push(out, Op::Mma { dst, a: av, b: bv, acc: acc_value }, role, span);
                let axes = TileAxes {
                    rows: self.axes.get(&av).and_then(|a| a.rows),
                    cols: self.axes.get(&bv).and_then(|b| b.cols),
                };
                self.axes.insert(dst, axes);
                // Q·Kᵀ: the columns are K's rows; those past the end of the sequence (and, when
                // causal, past the diagonal) must not take part in the softmax. The scores
                // are score code until they leave it; the mask is applied then.
                if let (Some(tile), Type::Smem { transposed: true, .. }) = (self.staged.get(&bv).cloned(), bt)
                {
                    let causal = self.causal;
                    let raw = Raw { numbers: dst, tail: Some((tile, causal)), keeps: vec![], role, span };
                    self.raw.insert(dst, raw);
                }
                dst
            }
            ExprKind::LogSumExp(max, sum) => {
                let m = self.expr(max, out, role, &format!("{name}_max"))?;
                let l = self.expr(sum, out, role, &format!("{name}_sum"))?;
                for (v, e) in [(m, max), (l, sum)] {
                    if !matches!(self.ty(v), Type::Row { rows: TileDim::M }) {
                        return err(
                            e.span,
                            format!(
                                "`log_sum_exp(m, l)` takes row vectors [TILE_M], not {}",
                                describe(&self.ty(v))
                            ),
                        );
                    }
                }
                let dst = self.new_value(Type::Row { rows: TileDim::M }, name, false);
                self.push(out, Op::LogSumExp { dst, max: m, sum: l }, role, span);
                dst
            }
            ExprKind::Exp2(inner) => {
                let src = self.softmax_operand(inner, out, role, name)?;
                self.check_masked(src, &[Masked::Scores], "`exp2`", span)?;
                let src = self.promote_to_f32(src, out, role, span);
                match self.ty(src) {
                    Type::Frag { elem: Elem::F32, .. } | Type::Row { .. } | Type::Scalar => {}
                    other => {
                        return err(
                            span,
                            format!("`exp2` takes f32 tiles, rows or scalars, not {}", describe(&other)),
                        )
                    }
                }
                let dst = self.new_value(self.ty(src), name, false);
                self.push(out, Op::Exp2 { dst, src }, role, span);
                if self.state.contains_key(&src) {
                    self.state.insert(dst, Masked::Probabilities);
                }
                self.inherit_axes(dst, &[src]);
                self.inherit_tail(dst, &[src]);
                dst
            }
            ExprKind::RowReduce(op, inner) => {
                let src = match op {
                    ReduceOp::Max => self.softmax_operand(inner, out, role, name)?,
                    ReduceOp::Sum => self.expr(inner, out, role, name)?,
                };
                match op {
                    ReduceOp::Max => {}
                    ReduceOp::Sum => self.check_masked(src, &[Masked::Probabilities], "`row_sum`", span)?,
                }
                let Type::Frag { rows, elem: Elem::F32, .. } = self.ty(src) else {
                    return err(
                        span,
                        format!(
                            "`{}` reduces f32 register tiles, not {}",
                            match op {
                                ReduceOp::Max => "row_max",
                                ReduceOp::Sum => "row_sum",
                            },
                            describe(&self.ty(src))
                        ),
                    );
                };
                let fill = match op {
                    ReduceOp::Max => ColumnFill::NegInf,
                    ReduceOp::Sum => ColumnFill::Zero,
                };
                let src = self.mask_tail(src, fill, out, role, span);
                let dst = self.new_value(Type::Row { rows }, name, false);
                self.push(out, Op::Reduce { dst, op: *op, src }, role, span);
                dst
            }
            ExprKind::ColReduce(op, inner) => self.col_reduce(*op, inner, out, role, span, name)?,
            ExprKind::Binary(op, lhs, rhs) => {
                let l = self.expr_raw(lhs, out, role, name)?;
                let r = self.expr_raw(rhs, out, role, name)?;
                self.binary(*op, l, r, out, role, span, name)?
            }
            ExprKind::Unary(op, inner) => {
                let src = self.expr_raw(inner, out, role, name)?;
                self.unary(*op, src, out, role, span, name)?
            }
            ExprKind::Select { cond, then, otherwise } => {
                let c = self.expr(cond, out, role, name)?;
                let a = self.expr_raw(then, out, role, name)?;
                let b = self.expr_raw(otherwise, out, role, name)?;
                self.select(c, a, b, out, role, span, name, [cond.span, then.span])?
            }
            ExprKind::Position { tile, dim } => {
                let t = self.expr_raw(tile, out, role, name)?;
                self.position(t, dim, out, role, span, name)?
            }
            ExprKind::At { table, indices } => self.gather(table, indices, out, role, span, name)?,
            ExprKind::Mask { scores, keep } => {
                let s = self.expr_raw(scores, out, role, name)?;
                let k = self.expr(keep, out, role, &format!("{name}_keep"))?;
                self.mask(s, k, span, keep.span, role)?
            }
            ExprKind::Fill { shape, value } => {
                let fill = match &value.kind {
                    ExprKind::Lit(x) => *x,
                    ExprKind::Int(x) => *x as f32,
                    ExprKind::Const(c) => c.value(),
                    _ => {
                        return err(value.span, "the fill value must be a constant (a literal or `NEG_INF`)")
                    }
                };
                let axes = shape.iter().map(|a| self.shape_axis(a, span)).collect::<Result<Vec<_>>>()?;
                let ty = match axes.as_slice() {
                    [TileDim::M] => Type::Row { rows: TileDim::M },
                    [TileDim::M, cols] => Type::Frag { rows: TileDim::M, cols: *cols, elem: Elem::F32 },
                    _ => {
                        return err(
                            span,
                            "register tiles are `[TILE_M]` (one value per row) or `[TILE_M, cols]`",
                        )
                    }
                };
                let dst = self.new_value(ty, name, false);
                self.push(out, Op::Fill { dst, value: fill }, role, span);
                dst
            }
        };
        Ok(value)
    }

    /// A name that is no local: `TILE_M`, `TILE_N`, the head dim (i32 constants) or a runtime
    /// axis such as `S` (its length, i32).
    fn named_int(&mut self, var: &str, out: &mut Block, role: Option<Role>, span: SpanId) -> Result<Value> {
        let constant = match var {
            "TILE_M" => Some(self.config.tile_m),
            "TILE_N" => Some(self.config.tile_n),
            _ if Dim::Sym(var.to_string()) == self.head_dim => Some(self.config.head_dim),
            _ => None,
        };
        if let Some(value) = constant {
            let dst = self.new_value(Type::Int, var, false);
            self.push(out, Op::IntConst { dst, value: value as i32 }, role, span);
            self.sym.insert(dst, MaskExpr::Int(value as i32));
            return Ok(dst);
        }
        match self.dims.iter().position(|d| d == var) {
            Some(i) => {
                let dst = self.new_value(Type::Int, var, false);
                self.push(out, Op::DimLen { dst, dim: RtDim(i as u32) }, role, span);
                self.sym.insert(dst, MaskExpr::Len(RtDim(i as u32)));
                Ok(dst)
            }
            None => err(span, format!("cannot find `{var}` in this scope")),
        }
    }

    /// An elementwise binary op: integers meeting floats become floats; uniforms and rows
    /// broadcast; score code stays score code; nothing may un-mask a masked score.
    #[allow(clippy::too_many_arguments)]
    fn binary(
        &mut self,
        op: BinOp,
        l: Value,
        r: Value,
        out: &mut Block,
        role: Option<Role>,
        span: SpanId,
        name: &str,
    ) -> Result<Value> {
        // A row operand (a reduction's result) means the softmax has begun: scores with masks
        // of the user's, or already masked for a row max, are masked. (Scores that only the
        // sequence tail masks stay score code: they may be data, such as `dP − Δ`.)
        let with_row = matches!(self.ty(l), Type::Row { .. }) || matches!(self.ty(r), Type::Row { .. });
        let (l, r) = if with_row { (self.enter_row_op(l, out), self.enter_row_op(r, out)) } else { (l, r) };
        // Past the mask, a score operand leaves the score code as data (`P ∘ dP`).
        let past_mask = self.state.contains_key(&l) || self.state.contains_key(&r);
        let (l, r) = if past_mask {
            (self.materialize(l, out, Leaving::Data), self.materialize(r, out, Leaving::Data))
        } else {
            (l, r)
        };
        let (ls, rs) = (self.state.get(&l).copied(), self.state.get(&r).copied());
        let is_data = |t: Type| matches!(t, Type::Frag { elem: Elem::F32, .. });
        let broadcast = |t: Type| t.is_uniform() || matches!(t, Type::Row { .. });
        let state = match (ls, rs) {
            (None, None) => None,
            (Some(Masked::Scores), None) if op == BinOp::Sub && matches!(self.ty(r), Type::Row { .. }) => {
                Some(Masked::Scores)
            }
            (Some(Masked::Probabilities), None)
                if matches!(op, BinOp::Mul | BinOp::Div) && broadcast(self.ty(r)) =>
            {
                Some(Masked::Probabilities)
            }
            (None, Some(Masked::Probabilities)) if op == BinOp::Mul && broadcast(self.ty(l)) => {
                Some(Masked::Probabilities)
            }
            // Probabilities times data (`P ∘ (dP − Δ)`): 0 wherever a score is masked, for
            // any finite data.
            (Some(Masked::Probabilities), None) if op == BinOp::Mul && is_data(self.ty(r)) => {
                Some(Masked::Probabilities)
            }
            (None, Some(Masked::Probabilities)) if op == BinOp::Mul && is_data(self.ty(l)) => {
                Some(Masked::Probabilities)
            }
            (Some(s), _) | (None, Some(s)) => {
                return Err(masked_error(s, &format!("`{}`", op.symbol()), span))
            }
        };
        let (nl, nr) = (self.numbers(l), self.numbers(r));
        let (lt, rt) = (self.ty(nl), self.ty(nr));
        let bad = || err(span, format!("cannot {} {} and {}", op.name(), describe(&lt), describe(&rt)));
        let (Some(le), Some(re)) = (lt.elem(), rt.elem()) else { return bad() };
        if le.is_half() || re.is_half() {
            return bad();
        }
        // Integers meeting floats become floats (exact below 2^24).
        let (nl, nr, elem) = match (le, re) {
            (a, b) if a == b => (nl, nr, a),
            (Elem::I32, Elem::F32) => (self.promote_to_f32(nl, out, role, span), nr, Elem::F32),
            (Elem::F32, Elem::I32) => (nl, self.promote_to_f32(nr, out, role, span), Elem::F32),
            _ => {
                return err(
                    span,
                    format!(
                        "`{}` of {} and {}: booleans combine only with `&&` and `||` (and `select` picks numbers by them)",
                        op.symbol(),
                        describe(&lt),
                        describe(&rt)
                    ),
                )
            }
        };
        let valid = match elem {
            Elem::Bool => op.is_logic(),
            Elem::I32 => !op.is_logic(),
            Elem::F32 => !op.is_logic() && op != BinOp::Rem,
            _ => false,
        };
        if !valid {
            let what = match elem {
                Elem::Bool => "booleans",
                Elem::I32 => "integers",
                _ => "floats",
            };
            return err(
                span,
                format!(
                    "`{}` does not apply to {what} ({} and {})",
                    op.symbol(),
                    describe(&lt),
                    describe(&rt)
                ),
            );
        }
        let (lt, rt) = (self.ty(nl), self.ty(nr));
        let Some(shape) = Type::broadcast(lt, rt) else { return bad() };
        let result_elem = if op.is_comparison() { Elem::Bool } else { elem };
        let Some(result) = shape.with_elem(result_elem) else {
            return err(
                span,
                format!(
                    "row vectors hold f32; `{}` of {} and {} would not",
                    op.symbol(),
                    describe(&lt),
                    describe(&rt)
                ),
            );
        };
        // Uniforms and rows broadcast on the right; commutative ops (and comparisons, mirrored)
        // swap them there.
        let swappable = op.is_commutative() || op.is_comparison();
        let (op, nl, nr) =
            if swappable && lt.rank() < rt.rank() { (op.swapped(), nr, nl) } else { (op, nl, nr) };
        let dst = self.new_value(result, name, false);
        self.push(out, Op::Binary { dst, op, lhs: nl, rhs: nr }, role, span);
        // Interval arithmetic bounds these ops exactly; an i32 product can wrap, which no
        // interval of the operands bounds, so a mask with one is applied element by element.
        // Uniform operands (no positions) have exact values, so there an i32 product, quotient
        // and remainder are kept too (loop bounds, `qt * TILE_M`).
        let bounded = !matches!(op, BinOp::Div | BinOp::Rem) && !(op == BinOp::Mul && elem == Elem::I32);
        let exact = matches!(op, BinOp::Mul | BinOp::Div | BinOp::Rem) && elem == Elem::I32;
        if let (Some(a), Some(b)) = (self.sym_of(nl), self.sym_of(nr)) {
            if bounded || exact && !a.mentions_positions() && !b.mentions_positions() {
                self.sym.insert(dst, MaskExpr::Binary(op, Box::new(a), Box::new(b)));
            }
        }
        // Past the mask the operands left the score code: the result is not score code.
        if !op.is_comparison() && !op.is_logic() && !past_mask {
            self.merge_raw(dst, &[l, r], role, span)?;
        }
        if let Some(st) = state {
            self.state.insert(dst, st);
        }
        self.inherit_axes(dst, &[nl, nr, l, r]);
        self.check_tails(&[nl, nr], span)?;
        self.inherit_tail(dst, &[nl, nr]);
        Ok(dst)
    }

    fn unary(
        &mut self,
        op: UnaryOp,
        src: Value,
        out: &mut Block,
        role: Option<Role>,
        span: SpanId,
        name: &str,
    ) -> Result<Value> {
        // `exp` starts the softmax, like `exp2`: its operand is masked first.
        let src = if op == UnaryOp::Exp { self.materialize(src, out, Leaving::Softmax) } else { src };
        let allowed: &[Masked] = if op == UnaryOp::Exp { &[Masked::Scores] } else { &[] };
        self.check_masked(src, allowed, &format!("`{}`", op.name()), span)?;
        let n = self.numbers(src);
        let ty = self.ty(n);
        let elem = ty.elem().filter(|e| !e.is_half());
        let n = match (op, elem) {
            (
                UnaryOp::Exp | UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Tanh | UnaryOp::FastTanh,
                Some(Elem::I32),
            ) => self.promote_to_f32(n, out, role, span),
            _ => n,
        };
        let ok = match (op, self.ty(n).elem()) {
            (UnaryOp::Not, Some(Elem::Bool)) => true,
            (UnaryOp::Neg | UnaryOp::Abs, Some(Elem::F32 | Elem::I32)) => true,
            (_, Some(Elem::F32)) => op != UnaryOp::Not,
            _ => false,
        };
        if !ok {
            let verb = match op {
                UnaryOp::Neg => "negate".to_string(),
                UnaryOp::Not => "apply `!` to".to_string(),
                other => format!("take `{}` of", other.name()),
            };
            return err(span, format!("cannot {verb} {}", describe(&ty)));
        }
        let dst = self.new_value(self.ty(n), name, false);
        self.push(out, Op::Unary { dst, op, src: n }, role, span);
        if let (UnaryOp::Neg | UnaryOp::Not, Some(e)) = (op, self.sym_of(n)) {
            self.sym.insert(dst, MaskExpr::Unary(op, Box::new(e)));
        }
        if op == UnaryOp::Exp && self.state.contains_key(&src) {
            self.state.insert(dst, Masked::Probabilities);
        }
        if op != UnaryOp::Exp {
            self.merge_raw(dst, &[src], role, span)?;
        }
        self.inherit_axes(dst, &[n, src]);
        self.inherit_tail(dst, &[n]);
        Ok(dst)
    }

    #[allow(clippy::too_many_arguments)]
    fn select(
        &mut self,
        cond: Value,
        a: Value,
        b: Value,
        out: &mut Block,
        role: Option<Role>,
        span: SpanId,
        name: &str,
        [cond_span, then_span]: [SpanId; 2],
    ) -> Result<Value> {
        for v in [a, b] {
            self.check_masked(v, &[], "`select`", span)?;
        }
        let ct = self.ty(cond);
        if ct.elem() != Some(Elem::Bool) {
            return err(
                cond_span,
                format!("the condition of `select` must be a bool (a comparison), not {}", describe(&ct)),
            );
        }
        let (na, nb) = (self.numbers(a), self.numbers(b));
        let (at, bt) = (self.ty(na), self.ty(nb));
        let (na, nb, elem) = match (at.elem(), bt.elem()) {
            (Some(x), Some(y)) if x == y && matches!(x, Elem::F32 | Elem::I32) => (na, nb, x),
            (Some(Elem::I32), Some(Elem::F32)) => (self.promote_to_f32(na, out, role, span), nb, Elem::F32),
            (Some(Elem::F32), Some(Elem::I32)) => (na, self.promote_to_f32(nb, out, role, span), Elem::F32),
            _ => {
                return err(
                    then_span,
                    format!(
                        "`select` picks between numbers (f32 or i32), not {} and {}; combine booleans with `&&` and `||`",
                        describe(&at),
                        describe(&bt)
                    ),
                )
            }
        };
        let shape = Type::broadcast(self.ty(na), self.ty(nb))
            .and_then(|t| Type::broadcast(t, ct))
            .and_then(|t| t.with_elem(elem));
        let Some(result) = shape else {
            return err(
                span,
                format!(
                    "`select` of {}, {} and {}: the shapes do not match",
                    describe(&ct),
                    describe(&at),
                    describe(&bt)
                ),
            );
        };
        let dst = self.new_value(result, name, false);
        self.push(out, Op::Select { dst, cond, then: na, otherwise: nb }, role, span);
        self.merge_raw(dst, &[a, b], role, span)?;
        self.inherit_axes(dst, &[na, nb, cond, a, b]);
        self.check_tails(&[na, nb], span)?;
        self.inherit_tail(dst, &[na, nb]);
        Ok(dst)
    }

    /// `t.at(i, ..)`: elements of input table `t`, one i32 index per axis (uniform or a tile).
    fn gather(
        &mut self,
        table: &str,
        indices: &[Expr],
        out: &mut Block,
        role: Option<Role>,
        span: SpanId,
        name: &str,
    ) -> Result<Value> {
        let param = match self.lookup(table) {
            Some(Binding::Tensor(p)) => p,
            _ => {
                return err(
                    span,
                    format!("`{table}` is not a table parameter (`{table}: Tensor<f32 or i32, ..>`)"),
                )
            }
        };
        let Param::Table(t) = &self.params[param] else {
            return err(
                span,
                format!("`{table}` is read by tiles (`load`, `stage`); `.at(..)` reads input tables `Tensor<f32, ..>` or `Tensor<i32, ..>`"),
            );
        };
        if t.writable {
            return err(
                span,
                format!("`{table}` is an output table (`TensorMut`); kernels only store into it (`store({table}.at(..), value)`)"),
            );
        }
        let (elem, rank) = (t.elem, t.dims.len());
        if indices.len() != rank {
            return err(
                span,
                format!("`{table}.at(..)` takes {rank} indices, one per axis, found {}", indices.len()),
            );
        }
        let mismatch = format!("the indices of `{table}.at(..)` have different tile shapes");
        let (values, shape) = self.table_indices(indices, Type::Int, &mismatch, out, role, name)?;
        let result = shape.with_elem(elem).expect("uniforms and tiles hold f32 and i32");
        let dst = self.new_value(result, name, false);
        self.push(out, Op::Gather { dst, param, indices: values.clone() }, role, span);
        // An i32 table read whose indices are expressions of positions is one too, so a mask
        // on it (document ids) can be decided per tile; at most one index may vary with the
        // position, which keeps its range over a tile one run of elements.
        let syms: Option<Vec<MaskExpr>> = values.iter().map(|v| self.sym_of(*v)).collect();
        if let Some(indices) = syms {
            if elem == Elem::I32 && indices.iter().filter(|i| i.mentions_positions()).count() <= 1 {
                self.sym.insert(dst, MaskExpr::Table { param, indices });
            }
        }
        self.inherit_axes(dst, &values);
        Ok(dst)
    }

    /// `t.index(DIM)`: the position along `dim` of each element of register tile `t`.
    fn position(
        &mut self,
        t: Value,
        dim: &str,
        out: &mut Block,
        role: Option<Role>,
        span: SpanId,
        name: &str,
    ) -> Result<Value> {
        let ty = self.ty(self.numbers(t));
        let Type::Frag { rows, cols, .. } = ty else {
            return err(
                span,
                format!("`.index({dim})` gives positions in a register tile, not in {}", describe(&ty)),
            );
        };
        let Some(d) = self.dims.iter().position(|x| x == dim).map(|i| RtDim(i as u32)) else {
            return err(
                span,
                format!("`{dim}` is not an axis of any tensor parameter (known: {})", self.dims.join(", ")),
            );
        };
        let axes = self.axes.get(&t).copied().unwrap_or_default();
        let walks = |v: Option<Value>| {
            v.filter(|v| matches!(self.ty(*v), Type::Index { dim, tile: Some(_) } if dim == d))
        };
        let (on_rows, on_cols) = (walks(axes.rows), walks(axes.cols));
        let axis_name = |v: Option<Value>| match v.map(|v| self.ty(v)) {
            Some(Type::Index { dim, .. }) => format!("`{}`", self.dims[dim.0 as usize]),
            _ => "no sequence axis".to_string(),
        };
        let (axis, index) = match (on_rows, on_cols) {
            (Some(i), None) => (TileAxis::Rows, i),
            (None, Some(i)) => (TileAxis::Cols, i),
            (Some(_), Some(_)) => {
                return err(
                    span,
                    format!("both axes of this tile walk `{dim}`, so its positions are ambiguous; give the K/V tensors their own sequence axis (e.g. `SK`)"),
                )
            }
            (None, None) => {
                return err(
                    span,
                    format!(
                        "no axis of this tile walks `{dim}`: its rows walk {} and its columns {}",
                        axis_name(axes.rows),
                        axis_name(axes.cols)
                    ),
                )
            }
        };
        let dst = self.new_value(Type::Frag { rows, cols, elem: Elem::I32 }, name, false);
        self.push(out, Op::Position { dst, axis, index }, role, span);
        self.axes.insert(dst, axes);
        // Positions along the work loop's Q tiles (rows) and the K/V loop's tiles (columns) can
        // be bounded per tile.
        let work_row = self.work_vars.iter().position(|w| *w == index);
        let sym = match (axis, rows, cols) {
            (TileAxis::Rows, TileDim::M, TileDim::N) => work_row.map(MaskExpr::RowPos),
            (TileAxis::Cols, TileDim::M, TileDim::N) if self.pipeline_var == Some(index) => {
                Some(MaskExpr::ColPos)
            }
            _ => None,
        };
        if let Some(sym) = sym {
            self.sym.insert(dst, sym);
        }
        Ok(dst)
    }

    /// `mask(s, keep)`: a handle on the scores of `s` with one more condition; no code until
    /// the scores leave the score code ([`Lowerer::materialize`]).
    fn mask(
        &mut self,
        s: Value,
        keep: Value,
        span: SpanId,
        keep_span: SpanId,
        role: Option<Role>,
    ) -> Result<Value> {
        self.check_masked(s, &[], "`mask`", span)?;
        let ty = self.ty(self.numbers(s));
        let Type::Frag { rows, cols, elem: Elem::F32 } = ty else {
            return err(span, format!("`mask` applies to f32 score tiles, not to {}", describe(&ty)));
        };
        let kt = self.ty(keep);
        let fits = match kt {
            Type::Bool => true,
            Type::Frag { rows: r, cols: c, elem: Elem::Bool } => r == rows && c == cols,
            _ => false,
        };
        if !fits {
            return err(
                keep_span,
                format!(
                    "the condition of `mask` must be a bool tile [{}, {}] (a comparison of positions such as `s.index(SK) <= s.index(S)`) or a bool, not {}",
                    rows.symbol(),
                    cols.symbol(),
                    describe(&kt)
                ),
            );
        }
        let name = format!("{}_mask", self.values[self.numbers(s).index()].name);
        let handle = self.new_value(ty, &name, false);
        let mut raw = match self.raw.get(&s) {
            Some(r) => r.clone(),
            None => Raw {
                numbers: s,
                tail: self.tails.get(&s).map(|t| (t.clone(), None)),
                keeps: vec![],
                role,
                span,
            },
        };
        raw.keeps.push(keep);
        raw.role = role;
        raw.span = span;
        self.raw.insert(handle, raw);
        if let Some(a) = self.axes.get(&s).copied() {
            self.axes.insert(handle, a);
        }
        Ok(handle)
    }

    fn shape_axis(&self, axis: &ShapeAxis, span: SpanId) -> Result<TileDim> {
        match axis {
            ShapeAxis::Tile(t) => Ok(tile_dim(*t)),
            ShapeAxis::Dim(name) if Dim::Sym(name.clone()) == self.head_dim => Ok(TileDim::Head),
            ShapeAxis::Dim(name) => err(
                span,
                format!(
                    "`{name}` is not a tile axis; use `TILE_M`, `TILE_N` or the head dim `{}`",
                    show_dim(&self.head_dim)
                ),
            ),
        }
    }
}

fn tile_dim(t: TileConst) -> TileDim {
    match t {
        TileConst::M => TileDim::M,
        TileConst::N => TileDim::N,
    }
}

fn show_dim(d: &Dim) -> String {
    match d {
        Dim::Sym(s) => s.clone(),
        Dim::Lit(n) => n.to_string(),
    }
}

fn span_of(decl: &ParamDecl) -> SpanId {
    match decl {
        ParamDecl::Tensor { span, .. } | ParamDecl::Scalar { span, .. } | ParamDecl::Offsets { span, .. } => {
            *span
        }
    }
}

/// `what` applied to values in state `s` (past the mask) could un-mask them.
fn masked_error(s: Masked, what: &str, span: SpanId) -> LowerError {
    let (values, masked_as) = match s {
        Masked::Scores => ("masked scores", "-inf"),
        Masked::Probabilities => ("probabilities of masked scores", "0"),
    };
    LowerError::new(
        span,
        format!(
            "{what} on {values} could un-mask them (masked ones are {masked_as}); arithmetic on scores belongs before the softmax, in the score code between the `mma` and the first `row_max`, exponential or row operation, where the compiler applies masks after it"
        ),
    )
}

/// The mask whose empty tiles the K/V loop `body` may skip, when skipping them changes nothing:
/// the loop has one score tile, masked by one mask of positions (`MaskWhere`) and then by the
/// compiler's own (`MaskColumns` with -inf), and either
/// - every row max reads those scores, every row sum and every accumulating mma reads their
///   exponentials `exp2(scores − row)`, and the loop carries exactly the online-softmax
///   recurrence (the forward): a K/V tile whose scores are all masked leaves the running max,
///   sum and accumulator as they were; or
/// - the loop carries nothing but accumulators, each updated by an mma whose A operand is 0
///   wherever a score is masked: an exponential of the scores, or a product with one (the
///   backward's `Pᵀ·dO` and `(P ∘ (dP − Δ))ᵀ·Q`), so a tile whose scores are all masked adds 0.
fn skippable_mask(values: &[ValueData], body: &Block) -> Option<MaskId> {
    let defs: HashMap<Value, &Op> =
        body.insts.iter().filter_map(|i| i.op.def().map(|d| (d, &i.op))).collect();
    let wheres: Vec<(Value, Option<MaskId>)> = body
        .insts
        .iter()
        .filter_map(|i| match i.op {
            Op::MaskWhere { dst, mask, .. } => Some((dst, mask)),
            _ => None,
        })
        .collect();
    let columns: Vec<(Value, Value)> = body
        .insts
        .iter()
        .filter_map(|i| match i.op {
            Op::MaskColumns { dst, src, fill: ColumnFill::NegInf, .. } => Some((dst, src)),
            _ => None,
        })
        .collect();
    let (&[(masked, Some(mask))], &[(scores, src)]) = (&wheres[..], &columns[..]) else { return None };
    if src != masked {
        return None;
    }
    // exp2(scores − row): zero wherever a score is masked.
    let probabilities = |v: &Value| match defs.get(v) {
        Some(Op::Exp2 { src, .. }) => {
            matches!(defs.get(src), Some(Op::Binary { op: BinOp::Sub, lhs, .. }) if *lhs == scores)
        }
        _ => false,
    };
    let reads_scores = body.insts.iter().all(|i| match &i.op {
        Op::Reduce { op: ReduceOp::Max, src, .. } => *src == scores,
        Op::Reduce { op: ReduceOp::Sum, src, .. } => probabilities(src),
        Op::Mma { a, acc: Some(_), .. } => {
            matches!(defs.get(a), Some(Op::ToHalf { src, .. }) if probabilities(src))
        }
        _ => true,
    });
    if reads_scores && crate::passes::split_kv::online_softmax_state(values, body).is_some() {
        return Some(mask);
    }
    accumulates_masked_products(body, &defs, scores).then_some(mask)
}

/// Whether every value loop `body` carries is an accumulator updated by an mma whose A operand
/// is 0 wherever `scores` is masked (-inf), and nothing in it stores or reduces: then an
/// iteration whose scores are all masked changes nothing.
fn accumulates_masked_products(body: &Block, defs: &HashMap<Value, &Op>, scores: Value) -> bool {
    fn zero_where_masked(v: Value, defs: &HashMap<Value, &Op>, scores: Value) -> bool {
        match defs.get(&v) {
            Some(Op::Exp2 { src, .. }) => {
                *src == scores
                    || matches!(defs.get(src), Some(Op::Binary { op: BinOp::Sub, lhs, .. }) if *lhs == scores)
            }
            Some(Op::Binary { op: BinOp::Mul, lhs, rhs, .. }) => {
                zero_where_masked(*lhs, defs, scores) || zero_where_masked(*rhs, defs, scores)
            }
            Some(Op::MaskColumns { src, fill: ColumnFill::Zero, .. }) => {
                zero_where_masked(*src, defs, scores)
            }
            _ => false,
        }
    }
    let mut assigns = 0;
    let carried_safely = body.insts.iter().all(|i| match &i.op {
        Op::Assign { dst, src } => {
            assigns += 1;
            matches!(defs.get(src), Some(Op::Mma { a, acc: Some(acc), .. })
                if acc == dst && matches!(defs.get(a), Some(Op::ToHalf { src, .. }) if zero_where_masked(*src, defs, scores)))
        }
        Op::Store { .. } | Op::Reduce { .. } | Op::MergeSplits { .. } | Op::CombineCtas { .. } => false,
        _ => true,
    });
    carried_safely && assigns > 0
}
