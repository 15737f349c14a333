//! Lowering: type-checks a [`Program`] against a [`Config`] and builds the tile-level
//! [`Kernel`]. Every user mistake is a [`LowerError`] carrying the span of the offending source,
//! so the macro reports it where the user wrote it.

use std::collections::HashMap;

use crate::config::Config;
use crate::error::{IrError, LowerError};
use crate::kernel::*;
use crate::source::{
    BinOp, DType, Dim, ElemDecl, Expr, ExprKind, Extent, ParamDecl, Program, ReduceOp, Role, ShapeAxis,
    SpanId, Stmt, StmtKind, TileConst, TileRef,
};

/// Lowers `program` for `config`, then runs the verifier.
pub fn lower(program: &Program, config: &Config) -> std::result::Result<Kernel, IrError> {
    config.validate()?;
    let mut lowerer = Lowerer::new(program, config)?;
    let mut body = Block::default();
    lowerer.block(&program.body, &mut body, Nesting::Top)?;
    let kernel = Kernel {
        name: program.name.clone(),
        config: *config,
        params: lowerer.params,
        dims: lowerer.dims,
        values: lowerer.values,
        buffers: vec![],
        mbarriers: vec![],
        channels: vec![],
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
    /// `Config::dtype`: the kernel's generic element type.
    dtype: DType,
    params: Vec<Param>,
    dims: Vec<String>,
    /// The head-dim axis as the user spelled it (a symbol such as `D`, or a literal).
    head_dim: Dim,
    values: Vec<ValueData>,
    scopes: Vec<HashMap<String, Binding>>,
    /// Where the statement being lowered sits.
    nesting: Nesting,
}

type Result<T> = std::result::Result<T, LowerError>;

fn err<T>(span: SpanId, message: impl Into<String>) -> Result<T> {
    Err(LowerError::new(span, message))
}

fn describe(ty: &Type) -> String {
    match *ty {
        Type::Index { .. } => "a tile index".into(),
        Type::Scalar => "an f32 scalar".into(),
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
        Type::Counter => "an iteration counter".into(),
    }
}

impl Lowerer {
    /// The element type `decl` names for this config: the generic one is `Config::dtype`; a
    /// fixed one must agree with it (a kernel computes in one 16-bit type).
    fn resolve_elem(&self, decl: &ElemDecl, span: SpanId, what: &str) -> Result<DType> {
        match decl {
            ElemDecl::Generic(_) => Ok(self.dtype),
            ElemDecl::F32 => err(span, format!("{what} must be a 16-bit type (f16, bf16 or the generic one)")),
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
            dtype: config.dtype,
            params: vec![],
            dims: vec![],
            head_dim: Dim::Lit(config.head_dim),
            values: vec![],
            scopes: vec![HashMap::new()],
            nesting: Nesting::Top,
        };
        let mut head: Option<(Dim, String)> = None;
        for (index, decl) in program.params.iter().enumerate() {
            if lowerer.scopes[0].contains_key(decl.name()) {
                return err(span_of(decl), format!("parameter `{}` is declared twice", decl.name()));
            }
            match decl {
                ParamDecl::Scalar { name, .. } => {
                    lowerer.params.push(Param::Scalar { name: name.clone() });
                    lowerer.scopes[0].insert(name.clone(), Binding::Scalar(index));
                }
                ParamDecl::Offsets { name, batch, seq, optional, span } => {
                    if batch == seq {
                        return err(
                            *span,
                            format!("`{name}: SeqOffsets<{batch}, {seq}>` needs two different axes: the batch, then the sequence it makes ragged"),
                        );
                    }
                    let (batch, seq) = (lowerer.rt_dim(batch), lowerer.rt_dim(seq));
                    let param = OffsetsParam { name: name.clone(), batch, seq, optional: *optional };
                    lowerer.params.push(Param::Offsets(param));
                    lowerer.scopes[0].insert(name.clone(), Binding::Offsets);
                }
                ParamDecl::Tensor { name, dtype: ElemDecl::F32, shape, writable, optional, span } => {
                    // A per-row f32 output, `[B, H, S]` (the log-sum-exp).
                    if !writable || shape.len() != 3 {
                        return err(
                            *span,
                            format!("f32 tensor `{name}` must be a per-row output `TensorMut<f32, B, H, S>`"),
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
            if !tensors().any(|t| t.dims[2] == o.seq) {
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
                let v = self.expr(value, out, role, name)?;
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
            StmtKind::Pipeline { var, extent, body } => {
                if nesting != Nesting::Tiles {
                    return err(
                        stmt.span,
                        "`pipeline(..)` must be directly inside the `tiles(..)` work loop",
                    );
                }
                let mut e = self.extent(extent)?;
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
                let mut inner = Block::default();
                self.block(body, &mut inner, Nesting::Pipeline)?;
                self.nesting = nesting;
                self.scopes.pop();
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
                out.insts.push(Inst { op: Op::Store { dst: access, src }, role, span: stmt.span });
            }
        }
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
        Ok(LoopExtent { dim: RtDim(index as u32), per_tile: extent.per_tile.map(tile_dim), causal: None })
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
        let mut coords = vec![];
        let mut groups = vec![];
        for (axis, index) in target.indices.iter().enumerate() {
            let Some(Binding::Value(v)) = self.lookup(index) else {
                return err(target.span, format!("`{index}` is not a loop index"));
            };
            let Type::Index { dim: walked, tile } = self.ty(v) else {
                return err(target.span, format!("`{index}` is not a loop index"));
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
            if dim != dims[axis] {
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
        Ok(TileAccess { param, coords, groups })
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

    /// Lowers an expression, returning the value that holds its result. `name` names the values
    /// it creates (the `let` it initializes), so the text IR and the PTX read like the source.
    fn expr(&mut self, expr: &Expr, out: &mut Block, role: Option<Role>, name: &str) -> Result<Value> {
        let span = expr.span;
        let value = match &expr.kind {
            ExprKind::Var(var) => match self.lookup(var) {
                Some(Binding::Value(v)) => v,
                Some(Binding::Scalar(param)) => {
                    let dst = self.new_value(Type::Scalar, var, false);
                    self.push(out, Op::ScalarParam { dst, param }, role, span);
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
                None => return err(span, format!("cannot find `{var}` in this scope")),
            },
            ExprKind::Lit(x) => {
                let dst = self.new_value(Type::Scalar, name, false);
                self.push(out, Op::Const { dst, value: *x }, role, span);
                dst
            }
            ExprKind::Const(c) => {
                let dst = self.new_value(Type::Scalar, name, false);
                self.push(out, Op::Const { dst, value: c.value() }, role, span);
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
                self.push(out, Op::Transpose { dst, src }, role, span);
                dst
            }
            ExprKind::ToHalf(inner, target) => {
                let dtype = self.resolve_elem(target, span, "the conversion")?;
                let src = self.expr(inner, out, role, name)?;
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
                let dst = self.new_value(result, name, false);
                self.push(out, Op::Mma { dst, a: av, b: bv, acc: acc_value }, role, span);
                // Q·Kᵀ: the columns are K's rows; those past the end of the sequence must not
                // take part in the softmax.
                match (self.staged.get(&bv).cloned(), bt) {
                    (Some(tile), Type::Smem { transposed: true, .. }) => {
                        let masked = self.new_value(result, name, false);
                        let causal = self.causal;
                        self.push(out, Op::MaskColumns { dst: masked, src: dst, tile, causal }, role, span);
                        masked
                    }
                    _ => dst,
                }
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
                let src = self.expr(inner, out, role, name)?;
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
                dst
            }
            ExprKind::RowReduce(op, inner) => {
                let src = self.expr(inner, out, role, name)?;
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
                let dst = self.new_value(Type::Row { rows }, name, false);
                self.push(out, Op::Reduce { dst, op: *op, src }, role, span);
                dst
            }
            ExprKind::Binary(op, lhs, rhs) => {
                let l = self.expr(lhs, out, role, name)?;
                let r = self.expr(rhs, out, role, name)?;
                let (lt, rt) = (self.ty(l), self.ty(r));
                // Scalars and rows broadcast on the right; for commutative ops, swap them there.
                let commutative = matches!(op, BinOp::Add | BinOp::Mul | BinOp::Max);
                let rank = |t: &Type| match t {
                    Type::Scalar => 0,
                    Type::Row { .. } => 1,
                    _ => 2,
                };
                let (l, r, lt, rt) =
                    if commutative && rank(&lt) < rank(&rt) { (r, l, rt, lt) } else { (l, r, lt, rt) };
                let ok = match (lt, rt) {
                    (Type::Scalar, Type::Scalar) => true,
                    (Type::Row { rows: a }, Type::Row { rows: b }) => a == b,
                    (Type::Row { .. }, Type::Scalar) => true,
                    (Type::Frag { elem: Elem::F32, .. }, Type::Scalar) => true,
                    (Type::Frag { rows: a, elem: Elem::F32, .. }, Type::Row { rows: b }) => a == b,
                    (Type::Frag { elem: Elem::F32, .. }, Type::Frag { elem: Elem::F32, .. }) => lt == rt,
                    _ => false,
                };
                if !ok {
                    return err(
                        span,
                        format!("cannot {} {} and {}", op.name(), describe(&lt), describe(&rt)),
                    );
                }
                let dst = self.new_value(lt, name, false);
                self.push(out, Op::Binary { dst, op: *op, lhs: l, rhs: r }, role, span);
                dst
            }
            ExprKind::Fill { shape, value } => {
                let fill = match &value.kind {
                    ExprKind::Lit(x) => *x,
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
