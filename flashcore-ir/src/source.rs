//! The kernel as the user wrote it: a small, span-carrying AST that `#[flash_kernel]` builds
//! from Rust syntax and that `lower` type-checks and turns into the tile-level IR.
//!
//! The macro constructs a [`Program`] at expansion time (to report errors at the user's spans)
//! and embeds code that constructs the same `Program` at run time (to lower it for any
//! `Config`). Nothing here depends on `syn`: spans are opaque [`SpanId`]s whose meaning (a
//! `proc_macro2::Span`) lives in the macro's own parallel table.

/// Index into the macro's span table; `SpanId::NONE` when the program was built by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub u32);

impl SpanId {
    pub const NONE: SpanId = SpanId(u32::MAX);
}

/// The 16-bit float types of tensors and mma operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DType {
    #[default]
    F16,
    Bf16,
}

impl DType {
    pub const ALL: [DType; 2] = [DType::F16, DType::Bf16];

    /// The name in the DSL, in PTX type suffixes and in error messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// A tensor's element type or a conversion's target as written: a concrete type, or the
/// kernel's generic element type (`fn attention<T>(q: Tensor<T, ..>)`), which each `Config`
/// binds (`Config::dtype`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ElemDecl {
    Fixed(DType),
    Generic(String),
    /// `f32`: a per-row output `[B, H, S]` (the log-sum-exp), or an input table read with
    /// `.at(..)`.
    F32,
    /// `i32`: an input table read with `.at(..)` (document ids, lengths).
    I32,
}

/// One axis of a tensor parameter's shape: a symbol (`S`, `D`) or a literal (`64`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Sym(String),
    Lit(u32),
}

/// A kernel parameter as declared in the function signature.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamDecl {
    /// `q: Tensor<f16, B, H, S, D>` (or `TensorMut` when `writable`).
    /// `Option<TensorMut<..>>` is `optional`: the caller may pass none, and stores to it are
    /// skipped.
    Tensor { name: String, dtype: ElemDecl, shape: Vec<Dim>, writable: bool, optional: bool, span: SpanId },
    /// `scale: f32`.
    Scalar { name: String, span: SpanId },
    /// `cu_q: SeqOffsets<B, S>` (or `Option<SeqOffsets<B, S>>` when `optional`): cumulative
    /// sequence offsets that make the `seq` axis ragged over the `batch` axis, as
    /// FlashAttention's varlen API does. Sequence `b` is rows `cu_q[b] .. cu_q[b + 1]` of
    /// tensors whose batch is packed into their sequence axis; `S` is then the longest length.
    ///
    /// With `lengths`, `cache_len: SeqLens<B, SK>`: each sequence's length (`i32[batch]`,
    /// FlashAttention's `seqused_k`, a KV cache's fill). Tensors keep their batch axis; sequence
    /// `b` is its first `min(cache_len[b], SK)` rows, the rest is never read.
    Offsets { name: String, batch: String, seq: String, optional: bool, lengths: bool, span: SpanId },
}

impl ParamDecl {
    pub fn name(&self) -> &str {
        match self {
            ParamDecl::Tensor { name, .. }
            | ParamDecl::Scalar { name, .. }
            | ParamDecl::Offsets { name, .. } => name,
        }
    }
}

/// Which warps run a statement (`#[role(..)]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Load,
    Compute,
    Softmax,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Load, Role::Compute, Role::Softmax];

    pub fn name(self) -> &'static str {
        match self {
            Role::Load => "load",
            Role::Compute => "compute",
            Role::Softmax => "softmax",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// The compile-time tile constants a kernel body may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TileConst {
    /// `TILE_M`: rows of the Q/O tile a CTA owns.
    M,
    /// `TILE_N`: rows of each K/V tile the inner loop walks.
    N,
}

/// A loop extent: `B`, or `S / TILE_M`.
#[derive(Clone, Debug, PartialEq)]
pub struct Extent {
    pub dim: String,
    pub per_tile: Option<TileConst>,
    pub span: SpanId,
}

/// `q[b, h, qt]`: the tile of a tensor that the index variables select.
#[derive(Clone, Debug, PartialEq)]
pub struct TileRef {
    pub tensor: String,
    pub indices: Vec<String>,
    /// Per index: `Some((H, HKV))` for `h / (H / HKV)` (grouped-query attention: query head `h`
    /// reads K/V head `h / (H / HKV)`), `None` for the plain index. Empty means all plain.
    pub groups: Vec<Option<(String, String)>>,
    /// `k_cache.tile(block_table[b], hk, kt)`: the i32 table (`[B, MAX_PAGES]`) whose row
    /// `indices[0]` lists the pages of the sequence. The tensor's batch axis is then the page
    /// pool and its sequence axis a page; `indices[2]` walks tiles of the logical sequence, whose
    /// row `j` is row `j % PAGE` of page `block_table[b, j / PAGE]`.
    pub pages: Option<String>,
    pub span: SpanId,
}

/// One axis of a `fill`/`zeros` shape: `TILE_M`, `TILE_N` or the head-dim symbol.
#[derive(Clone, Debug, PartialEq)]
pub enum ShapeAxis {
    Tile(TileConst),
    Dim(String),
}

/// Elementwise binary operators: arithmetic on floats and integers, comparisons (a boolean
/// result) and the boolean connectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `%`: the remainder of an integer division (integers only).
    Rem,
    Max,
    Min,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    /// `&&` on booleans.
    And,
    /// `||` on booleans.
    Or,
}

impl BinOp {
    pub const ALL: [BinOp; 15] = [
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Div,
        BinOp::Rem,
        BinOp::Max,
        BinOp::Min,
        BinOp::Lt,
        BinOp::Le,
        BinOp::Gt,
        BinOp::Ge,
        BinOp::Eq,
        BinOp::Ne,
        BinOp::And,
        BinOp::Or,
    ];

    /// The op printed as `name` in the text IR.
    pub fn from_name(name: &str) -> Option<BinOp> {
        BinOp::ALL.into_iter().find(|o| o.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            BinOp::Add => "add",
            BinOp::Sub => "sub",
            BinOp::Mul => "mul",
            BinOp::Div => "div",
            BinOp::Rem => "rem",
            BinOp::Max => "max",
            BinOp::Min => "min",
            BinOp::Lt => "lt",
            BinOp::Le => "le",
            BinOp::Gt => "gt",
            BinOp::Ge => "ge",
            BinOp::Eq => "eq",
            BinOp::Ne => "ne",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }

    /// How the operator is written in the DSL (for error messages).
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Max => "max",
            BinOp::Min => "min",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }

    /// A comparison: numbers in, a boolean out.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne)
    }

    /// `&&` or `||`: booleans in and out.
    pub fn is_logic(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or)
    }

    pub fn is_commutative(self) -> bool {
        matches!(
            self,
            BinOp::Add
                | BinOp::Mul
                | BinOp::Max
                | BinOp::Min
                | BinOp::Eq
                | BinOp::Ne
                | BinOp::And
                | BinOp::Or
        )
    }

    /// The comparison that gives the same result with its operands swapped (`a < b` is `b > a`).
    pub fn swapped(self) -> BinOp {
        match self {
            BinOp::Lt => BinOp::Gt,
            BinOp::Le => BinOp::Ge,
            BinOp::Gt => BinOp::Lt,
            BinOp::Ge => BinOp::Le,
            other => other,
        }
    }
}

/// Elementwise functions of one operand (`exp2` has its own op, the softmax's exponential).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    /// `-x` (floats and integers).
    Neg,
    /// `!x` (booleans).
    Not,
    /// `abs(x)` (floats and integers).
    Abs,
    /// `exp(x)`, the natural exponential.
    Exp,
    /// `log(x)`, the natural logarithm.
    Log,
    /// `sqrt(x)`.
    Sqrt,
    /// `tanh(x)`.
    Tanh,
    /// `fast_tanh(x)`: `tanh.approx.f32`, one special-function op (`tanh` takes two), within
    /// 2^-11 relative error; FlashAttention-3's soft-capping uses it.
    FastTanh,
}

impl UnaryOp {
    pub const FUNCTIONS: [UnaryOp; 6] =
        [UnaryOp::Abs, UnaryOp::Exp, UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Tanh, UnaryOp::FastTanh];

    pub const ALL: [UnaryOp; 8] = [
        UnaryOp::Neg,
        UnaryOp::Not,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Tanh,
        UnaryOp::FastTanh,
    ];

    /// The op printed as `name` in the text IR.
    pub fn from_name(name: &str) -> Option<UnaryOp> {
        UnaryOp::ALL.into_iter().find(|o| o.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Not => "not",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::FastTanh => "fast_tanh",
        }
    }

    /// The function called `name` in the DSL (`abs`, `exp`, `log`, `sqrt`, `tanh`).
    pub fn function(name: &str) -> Option<UnaryOp> {
        UnaryOp::FUNCTIONS.into_iter().find(|f| f.name() == name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Max,
    Sum,
}

/// Named floating-point constants (`NEG_INF`, `LOG2_E`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamedConst {
    NegInf,
    Log2E,
}

impl NamedConst {
    pub fn value(self) -> f32 {
        match self {
            NamedConst::NegInf => f32::NEG_INFINITY,
            NamedConst::Log2E => std::f32::consts::LOG2_E,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: SpanId,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A local, a loop variable or a scalar parameter.
    Var(String),
    /// A float literal (`0.5`), or an integer literal used where a float is expected.
    Lit(f32),
    /// An integer literal (`1`): an i32 where it meets integers, an f32 where it meets floats.
    Int(i64),
    Const(NamedConst),
    /// `load(q[b, h, qt])`: global memory to registers (an mma A operand).
    Load(TileRef),
    /// `stage(k[b, h, kt])`: global memory to a shared-memory stage (cp.async).
    Stage(TileRef),
    /// `x.t()`: the transposed view of a staged tile.
    Transpose(Box<Expr>),
    /// `x.to::<T>()` (or `x.to_f16()`, `x.to_bf16()`): an f32 register tile to 16 bits (an mma
    /// A operand); `x.to::<f32>()`: a 16-bit register tile (a loaded one) to f32, exactly.
    To(Box<Expr>, ElemDecl),
    /// `mma(a, b)` or `mma(a, b, acc)`.
    Mma {
        a: Box<Expr>,
        b: Box<Expr>,
        acc: Option<Box<Expr>>,
    },
    Exp2(Box<Expr>),
    /// `log_sum_exp(m, l)`: the natural log-sum-exp of each row from its exp2-domain running
    /// max `m` and sum `l`, `(m + log2 l) · ln 2`, +inf for a row with no key (`l = 0`).
    LogSumExp(Box<Expr>, Box<Expr>),
    RowReduce(ReduceOp, Box<Expr>),
    /// `col_max(x)`, `col_sum(x)`: a `[cols]` vector reducing each column of an f32 register
    /// tile over all of its rows.
    ColReduce(ReduceOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `-x`, `!x`, `abs(x)`, `exp(x)`, `log(x)`, `sqrt(x)`, `tanh(x)`.
    Unary(UnaryOp, Box<Expr>),
    /// `select(cond, a, b)`: `a` where `cond` holds, else `b`, elementwise.
    Select {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    /// `s.index(S)`: the position along runtime axis `dim` (a sequence axis) of every element
    /// of register tile `s`, counted from the start of the sequence: the global query row or
    /// key column, whichever of the tile's axes walks `dim`.
    Position {
        tile: Box<Expr>,
        dim: String,
    },
    /// `t.at(i, j, ..)`: elements of input table `t` (an f32 or i32 tensor of any rank), one
    /// index per axis: uniform integers or i32 tiles (positions); an index past its axis reads
    /// the axis's last element (the scores it could belong to are masked as the sequence's tail).
    At {
        table: String,
        indices: Vec<Expr>,
    },
    /// `mask(s, keep)`: the scores of `s` where `keep` is false do not exist. The compiler
    /// sets them to -inf after all of the kernel's score code, wherever `mask` is written, so
    /// no arithmetic on the scores can bring a masked one back.
    Mask {
        scores: Box<Expr>,
        keep: Box<Expr>,
    },
    /// `fill([TILE_M], NEG_INF)`; `zeros([TILE_M, D])` is a fill with 0.
    Fill {
        shape: Vec<ShapeAxis>,
        value: Box<Expr>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub role: Option<Role>,
    pub span: SpanId,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    Let {
        name: String,
        mutable: bool,
        value: Expr,
    },
    Assign {
        name: String,
        value: Expr,
    },
    /// `for (b, h, qt) in tiles(B, H, S / TILE_M) { .. }`: the CTA work loop.
    Tiles {
        vars: Vec<String>,
        extents: Vec<Extent>,
        body: Vec<Stmt>,
    },
    /// `for kt in pipeline(0..S / TILE_N) { .. }`: the loop whose stages the pipeline pass buffers.
    /// `pipeline(from..min(to, S / TILE_N))` walks only tiles `from..to` of the extent.
    Pipeline {
        var: String,
        from: Option<Expr>,
        extent: Extent,
        to: Option<Expr>,
        body: Vec<Stmt>,
    },
    /// `for g in from..to { .. }`: a sequential loop over the i32s `from..to` (expressions of
    /// the work item), directly in the `tiles` body; its body may hold a `pipeline` loop.
    Loop {
        var: String,
        from: Expr,
        to: Expr,
        body: Vec<Stmt>,
    },
    /// `store(o[b, h, qt], value)`.
    Store {
        target: TileRef,
        value: Expr,
    },
    /// `store(t.at(i, j, ..), value)`: element by element into output table `t` (an f32
    /// `TensorMut` of any rank), one index per axis as `.at(..)` reads: each element of the
    /// register tile that the indices and the value broadcast to is written at its indices,
    /// unless an index lies outside its axis or the element's row or column lies past the end of
    /// its sequence.
    StoreAt {
        table: String,
        indices: Vec<Expr>,
        value: Expr,
    },
}

/// A whole `#[flash_kernel]` function.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub name: String,
    pub params: Vec<ParamDecl>,
    pub body: Vec<Stmt>,
    /// `#[flash_kernel(packed_rows, ..)]`: the rows of the Q tile are not sequence positions
    /// (they pack several query heads' tokens, FlashAttention's packed GQA), so the `causal`
    /// flag, which compares a row's index with the key positions, is refused: such a kernel
    /// writes its mask with positions it computes (`kernels::decode::attention_decode_paged_packed`).
    pub packed_rows: bool,
}

impl Program {
    /// Visits every statement, loop bodies included, in program order.
    pub fn each_stmt(&self, f: &mut impl FnMut(&Stmt)) {
        fn walk(body: &[Stmt], f: &mut impl FnMut(&Stmt)) {
            for s in body {
                f(s);
                if let StmtKind::Tiles { body, .. }
                | StmtKind::Pipeline { body, .. }
                | StmtKind::Loop { body, .. } = &s.kind
                {
                    walk(body, f);
                }
            }
        }
        walk(&self.body, f)
    }

    /// Every name the body reads: variables, the tensors of tile references and tables.
    fn names_read(&self) -> std::collections::HashSet<String> {
        fn expr(e: &Expr, out: &mut std::collections::HashSet<String>) {
            match &e.kind {
                ExprKind::Var(v) => {
                    out.insert(v.clone());
                }
                ExprKind::Load(t) | ExprKind::Stage(t) => {
                    out.insert(t.tensor.clone());
                    out.extend(t.pages.clone());
                }
                ExprKind::At { table, indices } => {
                    out.insert(table.clone());
                    indices.iter().for_each(|i| expr(i, out));
                }
                ExprKind::Lit(_) | ExprKind::Int(_) | ExprKind::Const(_) => {}
                ExprKind::Transpose(a) | ExprKind::To(a, _) | ExprKind::Exp2(a) | ExprKind::Unary(_, a) => {
                    expr(a, out)
                }
                ExprKind::RowReduce(_, a)
                | ExprKind::ColReduce(_, a)
                | ExprKind::Position { tile: a, .. } => expr(a, out),
                ExprKind::Mma { a, b, acc } => {
                    expr(a, out);
                    expr(b, out);
                    if let Some(c) = acc {
                        expr(c, out);
                    }
                }
                ExprKind::LogSumExp(a, b)
                | ExprKind::Binary(_, a, b)
                | ExprKind::Mask { scores: a, keep: b } => {
                    expr(a, out);
                    expr(b, out);
                }
                ExprKind::Select { cond, then, otherwise } => {
                    expr(cond, out);
                    expr(then, out);
                    expr(otherwise, out);
                }
                ExprKind::Fill { value, .. } => expr(value, out),
            }
        }
        let mut out = std::collections::HashSet::new();
        self.each_stmt(&mut |s| match &s.kind {
            StmtKind::Let { value, .. } | StmtKind::Assign { value, .. } | StmtKind::Store { value, .. } => {
                expr(value, &mut out)
            }
            StmtKind::StoreAt { indices, value, .. } => {
                indices.iter().chain([value]).for_each(|e| expr(e, &mut out))
            }
            StmtKind::Pipeline { from, to, .. } => from.iter().chain(to).for_each(|b| expr(b, &mut out)),
            StmtKind::Loop { from, to, .. } => [from, to].into_iter().for_each(|b| expr(b, &mut out)),
            StmtKind::Tiles { .. } => {}
        });
        out
    }

    /// Inputs (tensors, tables, scalars) that the body never reads: a kernel that ignores an
    /// argument its caller passes probably does not compute what its author meant (the macro
    /// warns at the parameter). Sequence offsets are read by the work loop, not the body.
    pub fn unread_inputs(&self) -> Vec<(String, SpanId)> {
        let read = self.names_read();
        self.params
            .iter()
            .filter_map(|p| match p {
                ParamDecl::Tensor { name, writable: false, span, .. } | ParamDecl::Scalar { name, span } => {
                    (!read.contains(name)).then(|| (name.clone(), *span))
                }
                _ => None,
            })
            .collect()
    }

    /// Outputs that no `store` writes: the kernel would promise a result it never produces.
    pub fn outputs_never_stored(&self) -> Vec<(String, SpanId)> {
        let mut written = std::collections::HashSet::new();
        self.each_stmt(&mut |s| match &s.kind {
            StmtKind::Store { target, .. } => {
                written.insert(target.tensor.clone());
            }
            StmtKind::StoreAt { table, .. } => {
                written.insert(table.clone());
            }
            _ => {}
        });
        self.params
            .iter()
            .filter_map(|p| match p {
                ParamDecl::Tensor { name, writable: true, span, .. } => {
                    (!written.contains(name)).then(|| (name.clone(), *span))
                }
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, writable: bool) -> ParamDecl {
        let shape = ["B", "H", "S", "D"].iter().map(|d| Dim::Sym(d.to_string())).collect();
        ParamDecl::Tensor {
            name: name.into(),
            dtype: ElemDecl::Fixed(DType::F16),
            shape,
            writable,
            optional: false,
            span: SpanId(0),
        }
    }

    #[test]
    fn unread_inputs_and_unstored_outputs_are_found() {
        let var = |v: &str| Expr { kind: ExprKind::Var(v.into()), span: SpanId::NONE };
        let program = Program {
            name: "k".into(),
            params: vec![
                tensor("q", false),
                tensor("o", true),
                ParamDecl::Scalar { name: "scale".into(), span: SpanId(1) },
                ParamDecl::Scalar { name: "unused".into(), span: SpanId(2) },
            ],
            packed_rows: false,
            body: vec![Stmt {
                kind: StmtKind::Let { name: "x".into(), mutable: false, value: var("scale") },
                role: None,
                span: SpanId::NONE,
            }],
        };
        let names = |v: Vec<(String, SpanId)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(program.unread_inputs()), ["q", "unused"]);
        assert_eq!(names(program.outputs_never_stored()), ["o"]);
    }
}
