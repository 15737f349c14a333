//! The tile-level IR: a kernel is an arena of typed values plus a structured body of
//! instructions (ops and loops). Values are small `Value(u32)` handles into `Kernel::values`.
//!
//! Tiles carry their layout in their type: a [`Type::Frag`] lives in registers as mma fragments
//! (f32 accumulator layout, or f16 A-operand layout), a [`Type::Smem`] lives in a shared-memory
//! buffer, a [`Type::Row`] holds one f32 per tile row (quad-replicated, as online softmax needs).

use crate::config::Config;
use crate::source::{BinOp, DType, ReduceOp, Role, SpanId, UnaryOp};

/// Handle of a value in [`Kernel::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value(pub u32);

impl Value {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Handle of a runtime dimension (`B`, `H`, `S`) in [`Kernel::dims`]; each becomes a `u32`
/// kernel parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RtDim(pub u32);

/// Compile-time tile axes. Kept symbolic so that `mma` operands are matched by meaning
/// (a `TILE_N` axis never meets a `D` axis even when both are 64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TileDim {
    M,
    N,
    Head,
}

impl TileDim {
    pub fn size(self, cfg: &Config) -> u32 {
        match self {
            TileDim::M => cfg.tile_m,
            TileDim::N => cfg.tile_n,
            TileDim::Head => cfg.head_dim,
        }
    }

    /// The columns of this axis one warp's fragments hold: split-KV gives each group of
    /// compute warps `TILE_N / kv_splits` of a K/V tile's keys.
    pub fn per_warp(self, cfg: &Config) -> u32 {
        match self {
            TileDim::N => cfg.keys_per_warp(),
            other => other.size(cfg),
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            TileDim::M => "TILE_M",
            TileDim::N => "TILE_N",
            TileDim::Head => "D",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F16,
    Bf16,
    F32,
    /// A 32-bit signed integer (positions, lengths, tile indices in arithmetic).
    I32,
    /// A boolean (comparisons, masks); a predicate register in PTX.
    Bool,
}

impl Elem {
    /// The 16-bit element of `dtype`.
    pub fn half(dtype: DType) -> Elem {
        match dtype {
            DType::F16 => Elem::F16,
            DType::Bf16 => Elem::Bf16,
        }
    }

    /// Packed two to a 32-bit register (mma A/B operands) rather than one f32 each.
    pub fn is_half(self) -> bool {
        matches!(self, Elem::F16 | Elem::Bf16)
    }

    pub fn name(self) -> &'static str {
        match self {
            Elem::F16 => "f16",
            Elem::Bf16 => "bf16",
            Elem::F32 => "f32",
            Elem::I32 => "i32",
            Elem::Bool => "bool",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// A tile coordinate along runtime dim `dim`, counted in tiles of `tile` rows (or in single
    /// rows when `tile` is `None`).
    Index { dim: RtDim, tile: Option<TileDim> },
    /// An f32 uniform across the CTA.
    Scalar,
    /// An i32 uniform across the CTA (a runtime length, a constant, arithmetic on indices).
    Int,
    /// A boolean uniform across the CTA.
    Bool,
    /// A 16-bit tile `[rows][cols]` in a shared-memory buffer; `transposed` marks the `.t()` view.
    Smem { rows: TileDim, cols: TileDim, transposed: bool, elem: Elem },
    /// A register tile `[rows][cols]` spread over the warps as mma fragments: f32 in the
    /// accumulator (C) layout, 16-bit in the A-operand layout.
    Frag { rows: TileDim, cols: TileDim, elem: Elem },
    /// One f32 per row of a `[rows][..]` tile.
    Row { rows: TileDim },
    /// One f32 per column of a `[..][cols]` tile (a column reduction): each thread holds its
    /// fragments' columns, the same in every lane group and every warp of its compute group.
    Col { cols: TileDim },
    /// A u32 iteration counter, uniform across the warps of a role.
    Counter,
}

impl Type {
    /// The element type of an elementwise operand: scalars, tile indices, row vectors and
    /// register tiles (`None` for shared-memory tiles and counters).
    pub fn elem(&self) -> Option<Elem> {
        match *self {
            Type::Scalar | Type::Row { .. } | Type::Col { .. } => Some(Elem::F32),
            Type::Int | Type::Index { .. } => Some(Elem::I32),
            Type::Bool => Some(Elem::Bool),
            Type::Frag { elem, .. } => Some(elem),
            Type::Smem { .. } | Type::Counter => None,
        }
    }

    /// Uniform across the CTA (one register, the same in every thread).
    pub fn is_uniform(&self) -> bool {
        matches!(self, Type::Scalar | Type::Int | Type::Bool | Type::Index { .. })
    }

    /// The same shape with element type `elem` (`None` where that shape cannot hold it: row
    /// vectors are f32 only).
    pub fn with_elem(&self, elem: Elem) -> Option<Type> {
        Some(match *self {
            Type::Scalar | Type::Int | Type::Bool | Type::Index { .. } => match elem {
                Elem::F32 => Type::Scalar,
                Elem::I32 => Type::Int,
                Elem::Bool => Type::Bool,
                Elem::F16 | Elem::Bf16 => return None,
            },
            Type::Row { .. } | Type::Col { .. } if elem == Elem::F32 => *self,
            Type::Frag { rows, cols, .. } => Type::Frag { rows, cols, elem },
            _ => return None,
        })
    }

    /// How far an elementwise operand spreads: uniforms 0, row vectors 1, register tiles 2
    /// (shared-memory tiles and counters 3: they take no part in elementwise ops).
    pub fn rank(&self) -> u8 {
        match self {
            t if t.is_uniform() => 0,
            Type::Row { .. } | Type::Col { .. } => 1,
            Type::Frag { .. } => 2,
            _ => 3,
        }
    }

    /// The shape two elementwise operands broadcast to, element type aside (that of the
    /// higher-ranked one): uniforms broadcast over rows and tiles, rows over tiles of as many
    /// rows; tiles must agree.
    pub fn broadcast(a: Type, b: Type) -> Option<Type> {
        let (hi, lo) = if a.rank() >= b.rank() { (a, b) } else { (b, a) };
        match (hi, lo) {
            (h, l) if h.is_uniform() && l.is_uniform() => Some(h),
            (Type::Row { .. }, l) if l.is_uniform() => Some(hi),
            (Type::Row { rows: x }, Type::Row { rows: y }) if x == y => Some(hi),
            (Type::Col { .. }, l) if l.is_uniform() => Some(hi),
            (Type::Col { cols: x }, Type::Col { cols: y }) if x == y => Some(hi),
            (Type::Frag { cols: x, .. }, Type::Col { cols: y }) if x == y => Some(hi),
            (Type::Frag { .. }, l) if l.is_uniform() => Some(hi),
            (Type::Frag { rows: x, .. }, Type::Row { rows: y }) if x == y => Some(hi),
            (Type::Frag { rows: r1, cols: c1, .. }, Type::Frag { rows: r2, cols: c2, .. })
                if r1 == r2 && c1 == c2 =>
            {
                Some(hi)
            }
            _ => None,
        }
    }

    /// The (rows, cols) a tile type presents to an mma (the transposed view swaps them).
    pub fn matrix_dims(&self) -> Option<(TileDim, TileDim)> {
        match *self {
            Type::Smem { rows, cols, transposed, .. } => {
                Some(if transposed { (cols, rows) } else { (rows, cols) })
            }
            Type::Frag { rows, cols, .. } => Some((rows, cols)),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValueData {
    pub ty: Type,
    /// The user's name for it (or a synthesized one); the printers make it unique.
    pub name: String,
    /// Declared `let mut`: may be the target of [`Op::Assign`].
    pub mutable: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorParam {
    pub name: String,
    /// `F16`/`Bf16`: a `[B, H, S, D]` tensor; `F32`: a per-row `[B, H, S]` tensor.
    pub elem: Elem,
    /// The three outer axes (`B, H, S`); the fourth, for 16-bit tensors, is the head dim.
    pub dims: [RtDim; 3],
    pub writable: bool,
    /// The caller may pass no tensor (a null pointer); stores to it are skipped.
    pub optional: bool,
}

impl TensorParam {
    /// A per-row `[B, H, S]` f32 tensor rather than a `[B, H, S, D]` one.
    pub fn is_rows(&self) -> bool {
        self.elem == Elem::F32
    }
}

/// Cumulative sequence offsets (`u32[batch + 1]`, FlashAttention's `cu_seqlens`): when given,
/// axis `seq` is ragged over axis `batch`. Every tensor whose sequence axis is `seq` then packs
/// its batch into that axis (batch stride 0): sequence `b` is its rows `offsets[b] ..
/// offsets[b + 1]`, and the runtime dim `seq` is the longest length (it sizes the work loop).
/// Each work item loads its sequence's start and length once; Q tiles past the end are skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct OffsetsParam {
    pub name: String,
    pub batch: RtDim,
    pub seq: RtDim,
    /// The caller may pass none (a null pointer): the batch is then dense.
    pub optional: bool,
    /// `SeqLens<B, S>`: `i32[batch]` lengths rather than offsets. Tensors keep their batch axis
    /// (nothing is packed) and sequence `b` is its first `min(lengths[b], S)` rows; the runtime
    /// dim `seq` is the tensors' own (or a paged tensor's capacity). Read by every variant.
    pub lengths: bool,
}

/// A table: an f32 or i32 tensor of any rank over runtime axes, read element by element
/// (`t.at(..)`, [`Op::Gather`]): per-head slopes, document ids per token, a bias `[B, H, S, SK]`;
/// or an f32 output written element by element ([`Op::Scatter`]): a `[B, H, S, SK]` tile of
/// scores, a product `A·Bᵀ`.
/// Its strides (one per axis, in elements) follow the tensors' in the entry ABI.
#[derive(Clone, Debug, PartialEq)]
pub struct TableParam {
    pub name: String,
    pub elem: Elem,
    pub dims: Vec<RtDim>,
    /// An output table (`TensorMut<f32, ..>`), written element by element with
    /// `store(t.at(..), value)` ([`Op::Scatter`]) and never read.
    pub writable: bool,
    /// The caller may pass no table (a null pointer): its stores are skipped.
    pub optional: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    Tensor(TensorParam),
    Table(TableParam),
    /// An f32 scalar. With `nonnegative`, a launch refuses a negative value (a pass relied on
    /// its sign: [`crate::passes::fold_scale`]).
    Scalar {
        name: String,
        nonnegative: bool,
    },
    Offsets(OffsetsParam),
}

impl Param {
    pub fn name(&self) -> &str {
        match self {
            Param::Tensor(t) => &t.name,
            Param::Scalar { name, .. } => name,
            Param::Offsets(o) => &o.name,
            Param::Table(t) => &t.name,
        }
    }

    /// Whether a launch may leave this parameter out (`Option<..>` in the kernel's source).
    pub fn is_optional(&self) -> bool {
        match self {
            Param::Tensor(t) => t.optional,
            Param::Table(t) => t.optional,
            Param::Offsets(o) => o.optional,
            Param::Scalar { .. } => false,
        }
    }
}

/// The tile of tensor parameter `param` at `coords` (one index value per outer axis).
#[derive(Clone, Debug, PartialEq)]
pub struct TileAccess {
    pub param: usize,
    pub coords: Vec<Value>,
    /// Per coordinate (empty: none): `Some(group)` when the tensor's axis is indexed by the
    /// coordinate divided by `dims[group.of] / dims[group.to]`.
    pub groups: Vec<Option<HeadGroup>>,
    /// A paged tensor's tile (`k_cache[block_table[b], hk, kt]`): the i32 table parameter
    /// (`[B, MAX_PAGES]`) whose row `coords[0]` lists the sequence's pages. The tensor's batch
    /// axis is then a pool of pages and its sequence axis one page (`PAGE` rows); `coords[2]`
    /// walks tiles of the logical sequence, whose row `j` lies in row `j % PAGE` of page
    /// `table[b, j / PAGE]`. Rows whose page entry lies outside the table or the pool are zeros.
    pub pages: Option<usize>,
}

impl TileAccess {
    /// The same tile with its index values renamed (copies for other role groups).
    pub fn map_values(&self, f: &dyn Fn(Value) -> Value) -> TileAccess {
        TileAccess {
            param: self.param,
            coords: self.coords.iter().map(|c| f(*c)).collect(),
            groups: self.groups.clone(),
            pages: self.pages,
        }
    }

    pub fn group(&self, axis: usize) -> Option<HeadGroup> {
        self.groups.get(axis).copied().flatten()
    }

    /// The grouped coordinates: (index value, its head group).
    pub fn head_groups(&self) -> impl Iterator<Item = (Value, HeadGroup)> + '_ {
        self.coords.iter().enumerate().filter_map(|(axis, c)| self.group(axis).map(|g| (*c, g)))
    }
}

/// Grouped-query attention: query head `h` (walking `of`, e.g. `H`) reads K/V head
/// `h / (of / to)` (of the `to` axis, e.g. `HKV`); the runtime checks that `to` divides `of`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeadGroup {
    pub of: RtDim,
    pub to: RtDim,
}

/// Handle of a shared-memory ring buffer in [`Kernel::buffers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub u32);

/// A ring of `slots` shared-memory tiles of `[rows][D]` f16, one per pipeline stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    pub name: String,
    pub rows: TileDim,
    pub slots: u32,
}

/// Handle of a ring of mbarriers in [`Kernel::mbarriers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MbarRingId(pub u32);

/// `slots` mbarriers, one per pipeline stage, each expecting `count` arrivals per phase.
#[derive(Clone, Debug, PartialEq)]
pub struct MbarRing {
    pub name: String,
    pub slots: u32,
    pub count: u32,
    /// Fed by bulk tensor copies (the TMA pass): a phase also waits for the transaction bytes
    /// its [`Op::MbarExpectTx`] announced, which the copies complete; the data they wrote came
    /// through the async proxy, so the tensor cores read it with no proxy fence.
    pub tx: bool,
}

/// Handle of a channel in [`Kernel::channels`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChanId(pub u32);

/// A register value handed from one role group to another through shared memory, guarded by
/// mbarrier rings `full` (the sender arrives after writing) and `empty` (the receiver arrives
/// after reading), one slot each.
#[derive(Clone, Debug, PartialEq)]
pub struct Channel {
    pub name: String,
    pub ty: Type,
    pub full: MbarRingId,
    pub empty: MbarRingId,
}

/// Warps `first_warp .. first_warp + warps`, running the statements of `roles`.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleGroup {
    pub roles: Vec<Role>,
    pub first_warp: u32,
    pub warps: u32,
    pub body: Block,
}

/// Which axis of a register tile a [`Op::Position`] counts along.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TileAxis {
    Rows,
    Cols,
}

/// Handle of a mask in [`Kernel::masks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaskId(pub u32);

/// A score mask that is a function of positions (FlexAttention's `mask_mod`), kept as an
/// expression so that the code generator can tell, per tile, whether every score of it is kept
/// (a full tile: the per-element mask is skipped), none is (an empty tile: the K/V loop skips
/// it) or some are.
#[derive(Clone, Debug, PartialEq)]
pub struct TileMask {
    /// The condition under which a score exists (a bool).
    pub keep: MaskExpr,
}

/// An expression over the positions of a score tile and values uniform over a work item.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskExpr {
    /// The position of a score's row along the sequence axis that work-loop index number
    /// `.0` (of the enclosing `tiles` loop) walks in `TILE_M` tiles (the query row).
    RowPos(usize),
    /// The position of a score's column along the axis the enclosing K/V loop walks in
    /// `TILE_N` tiles (the key).
    ColPos,
    /// Work-loop index number `.0` (`b`, `h`, `qt`), an i32.
    WorkIndex(usize),
    /// f32 scalar parameter number `.0`.
    Param(usize),
    /// The length of a runtime axis (per sequence under sequence offsets), an i32.
    Len(RtDim),
    Int(i32),
    Float(f32),
    /// Comparisons, arithmetic (add, sub, mul, min, max) and `&&`, `||`.
    Binary(BinOp, Box<MaskExpr>, Box<MaskExpr>),
    /// `-x` or `!x`.
    Unary(UnaryOp, Box<MaskExpr>),
    /// i32 to f32.
    ToFloat(Box<MaskExpr>),
    /// Element `indices` of i32 input table `param` (each index clamped into its axis, as
    /// [`Op::Gather`] reads it): document ids per token, sequence lengths. Over a box of
    /// positions its range is the exact minimum and maximum of the elements the box can read,
    /// found by reading them, so at most one index may vary with the position.
    Table {
        param: usize,
        indices: Vec<MaskExpr>,
    },
}

impl MaskExpr {
    /// The expression's operands (a table read's indices), in order.
    pub fn children(&self) -> Vec<&MaskExpr> {
        match self {
            MaskExpr::Binary(_, a, b) => vec![a, b],
            MaskExpr::Unary(_, a) | MaskExpr::ToFloat(a) => vec![a],
            MaskExpr::Table { indices, .. } => indices.iter().collect(),
            _ => vec![],
        }
    }

    /// Whether `pred` holds for the expression or any part of it.
    pub fn any(&self, pred: &impl Fn(&MaskExpr) -> bool) -> bool {
        pred(self) || self.children().into_iter().any(|c| c.any(pred))
    }

    /// Whether the expression reads a position (otherwise it is uniform over a work item).
    pub fn mentions_positions(&self) -> bool {
        self.any(&|e| matches!(e, MaskExpr::RowPos(_) | MaskExpr::ColPos))
    }

    /// Whether the expression reads a query position.
    pub fn mentions_rows(&self) -> bool {
        self.any(&|e| matches!(e, MaskExpr::RowPos(_)))
    }

    /// Whether the expression reads a key position (otherwise it is the same for every K/V
    /// tile of a work item).
    pub fn mentions_cols(&self) -> bool {
        self.any(&|e| matches!(e, MaskExpr::ColPos))
    }

    /// The element type of the expression's value.
    pub fn elem(&self) -> Elem {
        match self {
            MaskExpr::RowPos(_)
            | MaskExpr::ColPos
            | MaskExpr::WorkIndex(_)
            | MaskExpr::Len(_)
            | MaskExpr::Int(_)
            | MaskExpr::Table { .. } => Elem::I32,
            MaskExpr::Param(_) | MaskExpr::Float(_) | MaskExpr::ToFloat(_) => Elem::F32,
            MaskExpr::Binary(op, a, _) if !op.is_comparison() && !op.is_logic() => a.elem(),
            MaskExpr::Binary(..) => Elem::Bool,
            MaskExpr::Unary(_, a) => a.elem(),
        }
    }
}

/// A per-block summary of i32 table `param` along axis `axis` ([`Kernel::table_summaries`]):
/// for every index of the table's other axes and every block `k` of `TILE_N` elements along
/// `axis`, the minimum and maximum of the block's elements, as two i32s (8 bytes) at the
/// table's own element offset for the index with `axis` set to `k`, times 8 bytes. So the
/// summary of a `[B, S]` table with strides `[S, 1]` is `[B, S]` pairs, of which each row's
/// first `ceil(S / TILE_N)` are used. A launch fills it (the table summary kernel,
/// `flashcore_codegen::table_summary`) before the kernel that reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TableSummary {
    pub param: usize,
    pub axis: usize,
}

/// How work items of the `tiles` loop map onto CTAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileSchedule {
    /// One CTA per work item (the grid covers them all).
    OnePerCta,
    /// As many CTAs as fit on the device at once, each striding over the work items.
    Persistent,
}

/// `dim` or `dim / tile`: the trip count of a loop. With `causal`, the K/V loop of a Q tile
/// stops after the last K/V tile any of its rows may see.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoopExtent {
    pub dim: RtDim,
    pub per_tile: Option<TileDim>,
    pub causal: Option<Causal>,
    /// Block-sparse skipping: the loop walks only the K/V tiles from the first to the last that
    /// this mask keeps any score of, for the work item's Q tile (tiles it masks entirely add
    /// nothing to the online softmax).
    pub skip: Option<MaskId>,
    /// The source's own range, `pipeline(from..min(to, DIM / TILE))`: the loop walks tiles
    /// `max(from, 0) .. min(to, trip count)` ([`Kernel::bounds`], i32 expressions of the work
    /// item).
    pub from: Option<BoundId>,
    pub to: Option<BoundId>,
}

/// Handle of a loop bound in [`Kernel::bounds`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BoundId(pub u32);

impl LoopExtent {
    /// The extent with its Q-tile index renamed (loop copies of other role groups).
    pub fn map_values(self, f: &dyn Fn(Value) -> Value) -> LoopExtent {
        LoopExtent { causal: self.causal.map(|c| c.map_values(f)), ..self }
    }
}

/// Causal masking aligned to the bottom right (FlashAttention 2.1+): query row `i` sees key `j`
/// iff `j ≤ i + SK − S`, where `S` is `q_dim` and `SK` the K/V sequence axis. `q_tile` is the
/// work loop's index of the `TILE_M`-row Q tile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Causal {
    pub q_tile: Value,
    pub q_dim: RtDim,
}

impl Causal {
    /// The same mask with its Q-tile index renamed.
    pub fn map_values(self, f: &dyn Fn(Value) -> Value) -> Causal {
        Causal { q_tile: f(self.q_tile), ..self }
    }
}

/// What [`Op::MaskColumns`] writes into the columns past the end of a sequence: the identity
/// of what reads them next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnFill {
    /// -inf: scores entering the softmax (a row max ignores them, their exponentials are 0).
    NegInf,
    /// 0: a tile entering a row sum, or the A operand of an mma that contracts over its columns.
    Zero,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Read scalar parameter `param`.
    ScalarParam { dst: Value, param: usize },
    /// An f32 constant (scalar).
    Const { dst: Value, value: f32 },
    /// An i32 constant (scalar).
    IntConst { dst: Value, value: i32 },
    /// The length of runtime axis `dim` (i32; with sequence offsets, the work item's own
    /// sequence length).
    DimLen { dst: Value, dim: RtDim },
    /// `dst[r][c]` = the position of element (r, c) of register tile `dst` along the tensor
    /// axis that `axis` walks: `index · tile_rows + r` (or `+ c`), where `index` is a tile
    /// index whose `Type::Index::tile` gives `tile_rows`. Sequence-local under varlen.
    Position { dst: Value, axis: TileAxis, index: Value },
    /// Global tile to registers (A-operand fragments), staged through shared memory.
    Load { dst: Value, src: TileAccess },
    /// Global tile to a shared-memory stage (before the pipeline pass; it replaces each with
    /// the explicit copies, groups and waits below).
    Stage { dst: Value, src: TileAccess },
    /// After the pipeline pass: `dst` names the slot `slot % slots` of `buffer`, which holds
    /// this iteration's tile (`src`). `slot` counts iterations (the loop variable, or a counter
    /// that runs on across work items). With `zero_unless` (a counter), while that counter is 0
    /// the view names a tile of zeros instead (read only by matmuls, whose product with it adds
    /// nothing): the overlap pass's view of the previous tile, which a work item's first
    /// iteration does not have, without a branch around the matmul that reads it.
    StageView { dst: Value, buffer: BufferId, src: TileAccess, slot: Value, zero_unless: Option<Value> },
    /// cp.async of the tile `ahead` iterations after the current one (`src` names the current
    /// one) into slot `(slot + ahead) % slots` of `buffer`. Past the end of the loop nothing is
    /// copied, but a following commit still closes a group, so wait counts stay the same.
    AsyncCopy { buffer: BufferId, src: TileAccess, ahead: u32, slot: Value },
    /// Initialize every mbarrier of [`Kernel::mbarriers`] (one thread), then a CTA barrier,
    /// before the warps split into roles.
    InitBarriers,
    /// Warp specialization: each group of warps runs its own body.
    Roles { groups: Vec<RoleGroup> },
    /// `dst = 0`: a counter of pipeline iterations across work items (mutable).
    CounterInit { dst: Value },
    /// `dst += 1`.
    CounterNext { dst: Value },
    /// Spin until the phase of mbarrier `ring[iter % slots]` with parity
    /// `(iter / slots) & 1`, flipped when `flip`, has completed.
    MbarWait { ring: MbarRingId, iter: Value, flip: bool },
    /// Every thread of the group arrives once on `ring[iter % slots]`.
    MbarArrive { ring: MbarRingId, iter: Value },
    /// Every thread's cp.async copies issued so far arrive on `ring[iter % slots]` when they
    /// complete (`cp.async.mbarrier.arrive.noinc`: the arrival is one of the expected ones).
    MbarArriveAsync { ring: MbarRingId, iter: Value },
    /// The group's first thread arrives on `ring[iter % slots]` and adds `bytes` to the
    /// transaction bytes its phase waits for (`mbarrier.arrive.expect_tx`): the bytes of the
    /// [`Op::TmaCopy`]s that follow.
    MbarExpectTx { ring: MbarRingId, iter: Value, bytes: u32 },
    /// The group's first thread copies tile `src` into slot `slot % slots` of `buffer` with bulk
    /// tensor copies (TMA, one per 64-column block, through the tensor map of `src`'s tensor),
    /// which complete their bytes on mbarrier `ring[slot % slots]`. Rows and heads outside the
    /// tensor land as zeros (the map's bounds).
    TmaCopy { buffer: BufferId, src: TileAccess, slot: Value, ring: MbarRingId },
    /// Write register value `src` into channel `chan`'s shared memory, each thread its own
    /// registers (the receiving warp's thread of the same lane reads them back).
    ChanWrite { src: Value, chan: ChanId, iter: Value },
    /// Read channel `chan` into `dst`, a value of the channel's type.
    ChanRead { dst: Value, chan: ChanId, iter: Value },
    /// Close the current cp.async group.
    CommitGroup,
    /// Wait until at most `younger` committed groups are still in flight.
    WaitGroup { younger: u32 },
    /// A barrier over the threads that run this code (`bar.sync id`).
    Barrier { id: u32 },
    /// The `.t()` view of a staged tile (no code).
    Transpose { dst: Value, src: Value },
    /// `dst = a · b (+ acc)`, f16 inputs, f32 accumulation.
    Mma { dst: Value, a: Value, b: Value, acc: Option<Value> },
    /// sm_90a (the overlap pass): issue `dst = a · b`, or with `accumulate` `dst += a · b` into
    /// the mutable `dst` in place, as asynchronous warpgroup matmuls that join the open group
    /// ([`Op::MmaCommit`] closes it). Until an [`Op::MmaWait`] retires the group, `dst` and `a`
    /// (when in registers) may not be touched, nor the shared tile `b` refilled.
    MmaAsync { dst: Value, a: Value, b: Value, accumulate: bool },
    /// Close the open group of asynchronous matmuls (an empty group when none was issued, so
    /// that wait counts stay the same on every path).
    MmaCommit,
    /// Wait until at most `pending` committed groups of asynchronous matmuls are in flight.
    MmaWait { pending: u32 },
    /// Run `body` only when counter `counter` is not 0 (the same for every thread of the group).
    When { counter: Value, body: Block },
    /// `dst = src` with the columns past the end of the sequence set to `fill`: column `n`
    /// stands for row `n` of the staged tile `tile`, which lies past the end when
    /// `tile · rows + n ≥` the tensor's sequence length. With `causal` (only with
    /// [`ColumnFill::NegInf`]), also the columns past each row's diagonal. Tiles that need
    /// neither (all but the last and the diagonal ones) skip the masking code.
    MaskColumns { dst: Value, src: Value, tile: TileAccess, causal: Option<Causal>, fill: ColumnFill },
    /// Elementwise `2^x`.
    Exp2 { dst: Value, src: Value },
    /// `dst = 2^(src · scale − sub)`, elementwise over f32 fragment tile `src`, with `scale` a
    /// uniform and `sub` a row vector (a row still at −inf counts as 0, as in `src − sub`): the
    /// score scale folded into the exponent's subtraction, one FMA an element
    /// ([`crate::passes::fold_scale`]).
    Exp2Scaled { dst: Value, src: Value, scale: Value, sub: Value },
    /// `dst = (max + log2 sum) · ln 2` per row, +inf where `sum` is 0.
    LogSumExp { dst: Value, max: Value, sum: Value },
    /// f32 accumulator fragments to 16-bit A-operand fragments (of `dst`'s element type).
    ToHalf { dst: Value, src: Value },
    /// Reduce each row of a fragment tile.
    Reduce { dst: Value, op: ReduceOp, src: Value },
    /// Reduce each column of an f32 fragment tile over all its rows, across the warps of a
    /// compute group (through shared memory, between two barriers over the compute warps).
    ColReduce { dst: Value, op: ReduceOp, src: Value },
    /// Elementwise op; a `Row` or uniform operand broadcasts along the other's rows. Both
    /// operands have one element type (f32, i32 or bool); comparisons give bools.
    Binary { dst: Value, op: BinOp, lhs: Value, rhs: Value },
    /// Elementwise function of one operand.
    Unary { dst: Value, op: UnaryOp, src: Value },
    /// `dst = keep ? src : -inf`, elementwise: the user's masks applied to a score tile. With
    /// `mask`, `keep` is also that expression of positions: tiles where it holds everywhere
    /// skip the per-element code, and the rest evaluate it per element.
    MaskWhere { dst: Value, src: Value, keep: Value, mask: Option<MaskId> },
    /// `dst = table[indices..]`, elementwise over the indices (uniform i32s or i32 tiles, which
    /// broadcast); each index is clamped into its axis.
    Gather { dst: Value, param: usize, indices: Vec<Value> },
    /// `table[indices..] = src`, elementwise over the register tile that the indices (uniform
    /// i32s or i32 tiles), `src` and `keep` broadcast to: an element is written only where every
    /// index lies inside its axis and `keep` (if any: the element's row and column lie inside
    /// their sequences) holds.
    Scatter { param: usize, indices: Vec<Value>, src: Value, keep: Option<Value> },
    /// To f32, elementwise: i32 (round to nearest), or a 16-bit register tile (exactly).
    Convert { dst: Value, src: Value },
    /// `dst = cond ? then : otherwise`, elementwise; uniform operands broadcast.
    Select { dst: Value, cond: Value, then: Value, otherwise: Value },
    /// A tile or row vector filled with one constant.
    Fill { dst: Value, value: f32 },
    /// Overwrite mutable `dst` with `src` (the online-softmax state carried across iterations).
    Assign { dst: Value, src: Value },
    /// The CTA work loop over output tiles.
    Tiles { vars: Vec<Value>, extents: Vec<LoopExtent>, schedule: TileSchedule, body: Block },
    /// The loop over K/V tiles. `stages` is 0 until the pipeline pass has run; after it the
    /// `prologue` (run once, with the loop variable at 0) fills the first stages and the
    /// `epilogue` drains what is left in flight.
    Pipeline { var: Value, extent: LoopExtent, stages: u32, prologue: Block, body: Block, epilogue: Block },
    /// A sequential loop in the work loop's body: `var` (an i32, uniform) runs over
    /// `from..to` ([`Kernel::bounds`], expressions of the work item); the body may hold the
    /// K/V loop, which then runs once per iteration.
    Loop { var: Value, from: BoundId, to: BoundId, body: Block },
    /// Convert an f32 fragment tile to the tensor's dtype and write it to global memory (a row
    /// vector: to a per-row tensor). A fragment tile passes through shared memory to leave in
    /// 16-byte rows: through the row-tile region, or with `via` through the slot of the ring
    /// view `via` (a Q tile the producer fed, done with: [`crate::passes::feed_loads`]).
    Store { dst: TileAccess, src: Value, via: Option<Value> },
    /// Split-KV (`Config::kv_splits > 1`): the compute warps' groups merge their online-softmax
    /// states, which cover disjoint keys of the same rows, by log-sum-exp. Groups 1.. write
    /// `max`, `sum` and `acc` to shared memory, a barrier over the compute warps, group 0 reads
    /// them and updates its own in place (`m = max mᵢ`, `l = Σ 2^(mᵢ−m)·lᵢ`,
    /// `acc = Σ 2^(mᵢ−m)·accᵢ`), a second barrier frees the buffer; stores then run on group 0
    /// only. The protocol check sees the two barriers (over the role's warps).
    MergeSplits { max: Value, sum: Value, acc: Value },
    /// Split-KV across CTAs (`Config::kv_ctas > 1`): this CTA walked one of the work item's
    /// `kv_ctas` ranges of K/V tiles. It writes its `(max, sum, acc)` to the workspace, counts
    /// itself in the work item's arrival counter, and the last of the item's CTAs to arrive reads
    /// the others' states and merges them into its own in place, by log-sum-exp as
    /// [`Op::MergeSplits`]; the other CTAs skip the rest of the work item (its stores). The last
    /// CTA resets the counter, so the workspace is ready for the next launch.
    CombineCtas { max: Value, sum: Value, acc: Value },
}

/// The arms of [`Op::def`] and [`Op::def_mut`]: which ops define a value (`$dst` bound to it),
/// listed once for both.
macro_rules! op_def {
    ($op:expr, $dst:ident => $some:expr) => {
        match $op {
            Op::ScalarParam { dst: $dst, .. }
            | Op::Const { dst: $dst, .. }
            | Op::IntConst { dst: $dst, .. }
            | Op::DimLen { dst: $dst, .. }
            | Op::Position { dst: $dst, .. }
            | Op::Unary { dst: $dst, .. }
            | Op::MaskWhere { dst: $dst, .. }
            | Op::Gather { dst: $dst, .. }
            | Op::Convert { dst: $dst, .. }
            | Op::Select { dst: $dst, .. }
            | Op::Load { dst: $dst, .. }
            | Op::Stage { dst: $dst, .. }
            | Op::StageView { dst: $dst, .. }
            | Op::ChanRead { dst: $dst, .. }
            | Op::CounterInit { dst: $dst }
            | Op::Transpose { dst: $dst, .. }
            | Op::Mma { dst: $dst, .. }
            | Op::MmaAsync { dst: $dst, accumulate: false, .. }
            | Op::MaskColumns { dst: $dst, .. }
            | Op::Exp2 { dst: $dst, .. }
            | Op::Exp2Scaled { dst: $dst, .. }
            | Op::LogSumExp { dst: $dst, .. }
            | Op::ToHalf { dst: $dst, .. }
            | Op::Reduce { dst: $dst, .. }
            | Op::ColReduce { dst: $dst, .. }
            | Op::Binary { dst: $dst, .. }
            | Op::Fill { dst: $dst, .. } => Some($some),
            Op::Assign { .. }
            | Op::MmaAsync { accumulate: true, .. }
            | Op::MmaCommit
            | Op::MmaWait { .. }
            | Op::When { .. }
            | Op::Loop { .. }
            | Op::Tiles { .. }
            | Op::Pipeline { .. }
            | Op::Store { .. }
            | Op::AsyncCopy { .. }
            | Op::TmaCopy { .. }
            | Op::MbarExpectTx { .. }
            | Op::CommitGroup
            | Op::WaitGroup { .. }
            | Op::Barrier { .. }
            | Op::InitBarriers
            | Op::Roles { .. }
            | Op::CounterNext { .. }
            | Op::MbarWait { .. }
            | Op::MbarArrive { .. }
            | Op::MbarArriveAsync { .. }
            | Op::ChanWrite { .. }
            | Op::Scatter { .. }
            | Op::MergeSplits { .. }
            | Op::CombineCtas { .. } => None,
        }
    };
}

impl Op {
    /// The global tile this op reads or writes, if any.
    pub fn tile_access(&self) -> Option<&TileAccess> {
        match self {
            Op::Load { src, .. }
            | Op::Stage { src, .. }
            | Op::StageView { src, .. }
            | Op::AsyncCopy { src, .. }
            | Op::TmaCopy { src, .. } => Some(src),
            Op::MaskColumns { tile, .. } => Some(tile),
            Op::Store { dst, .. } => Some(dst),
            _ => None,
        }
    }

    /// A matmul's `(dst, a, b)`, synchronous or asynchronous.
    pub fn matmul(&self) -> Option<(Value, Value, Value)> {
        match *self {
            Op::Mma { dst, a, b, .. } | Op::MmaAsync { dst, a, b, .. } => Some((dst, a, b)),
            _ => None,
        }
    }

    /// The blocks nested in this op, in execution order.
    pub fn blocks(&self) -> Vec<&Block> {
        match self {
            Op::Tiles { body, .. } | Op::Loop { body, .. } | Op::When { body, .. } => vec![body],
            Op::Roles { groups } => groups.iter().map(|g| &g.body).collect(),
            Op::Pipeline { prologue, body, epilogue, .. } => vec![prologue, body, epilogue],
            _ => vec![],
        }
    }

    /// The blocks nested in this op, in execution order, to rewrite them ([`Op::blocks`]).
    pub fn blocks_mut(&mut self) -> Vec<&mut Block> {
        match self {
            Op::Tiles { body, .. } | Op::Loop { body, .. } | Op::When { body, .. } => vec![body],
            Op::Roles { groups } => groups.iter_mut().map(|g| &mut g.body).collect(),
            Op::Pipeline { prologue, body, epilogue, .. } => vec![prologue, body, epilogue],
            _ => vec![],
        }
    }

    /// Whether this op reads `v` as a matmul's A operand and in no other way (not as its B
    /// operand, accumulator or result): what wgmma reads from shared memory through a descriptor.
    pub fn reads_only_as_a(&self, v: Value) -> bool {
        match self {
            Op::Mma { a, b, acc, .. } => *a == v && *b != v && *acc != Some(v),
            Op::MmaAsync { dst, a, b, .. } => *a == v && *b != v && *dst != v,
            _ => false,
        }
    }

    /// The value this op defines, if any (`Assign` redefines an existing one and is not counted).
    pub fn def(&self) -> Option<Value> {
        op_def!(self, dst => *dst)
    }

    /// The value this op defines, to rename it ([`Op::def`]'s value, by reference).
    pub fn def_mut(&mut self) -> Option<&mut Value> {
        op_def!(self, dst => dst)
    }

    /// Values this op reads (loop bodies excluded).
    pub fn uses(&self) -> Vec<Value> {
        match self {
            Op::ScalarParam { .. }
            | Op::Const { .. }
            | Op::IntConst { .. }
            | Op::DimLen { .. }
            | Op::Fill { .. }
            | Op::CommitGroup
            | Op::WaitGroup { .. }
            | Op::MmaCommit
            | Op::MmaWait { .. }
            | Op::Barrier { .. }
            | Op::InitBarriers
            | Op::Roles { .. }
            | Op::CounterInit { .. } => vec![],
            Op::When { counter, .. } => vec![*counter],
            Op::CounterNext { dst } => vec![*dst],
            Op::MbarWait { iter, .. }
            | Op::MbarArrive { iter, .. }
            | Op::MbarArriveAsync { iter, .. }
            | Op::MbarExpectTx { iter, .. }
            | Op::ChanRead { iter, .. } => vec![*iter],
            Op::ChanWrite { src, iter, .. } => vec![*src, *iter],
            Op::Load { src, .. } | Op::Stage { src, .. } => src.coords.clone(),
            Op::StageView { src, slot, zero_unless, .. } => {
                let mut v = src.coords.clone();
                v.push(*slot);
                v.extend(*zero_unless);
                v
            }
            Op::AsyncCopy { src, slot, .. } | Op::TmaCopy { src, slot, .. } => {
                let mut v = src.coords.clone();
                v.push(*slot);
                v
            }
            Op::Position { index, .. } => vec![*index],
            Op::Select { cond, then, otherwise, .. } => vec![*cond, *then, *otherwise],
            Op::MaskWhere { src, keep, .. } => vec![*src, *keep],
            Op::Gather { indices, .. } => indices.clone(),
            Op::Scatter { indices, src, keep, .. } => {
                indices.iter().copied().chain([*src]).chain(*keep).collect()
            }
            Op::Transpose { src, .. }
            | Op::Unary { src, .. }
            | Op::Convert { src, .. }
            | Op::Exp2 { src, .. }
            | Op::ToHalf { src, .. }
            | Op::Reduce { src, .. }
            | Op::ColReduce { src, .. } => vec![*src],
            Op::Mma { a, b, acc, .. } => [Some(*a), Some(*b), *acc].into_iter().flatten().collect(),
            Op::MmaAsync { dst, a, b, accumulate } => {
                [Some(*a), Some(*b), accumulate.then_some(*dst)].into_iter().flatten().collect()
            }
            Op::MaskColumns { src, tile, causal, .. } => {
                let mut v = tile.coords.clone();
                v.push(*src);
                v.extend(causal.map(|c| c.q_tile));
                v
            }
            Op::Binary { lhs, rhs, .. } => vec![*lhs, *rhs],
            Op::Exp2Scaled { src, scale, sub, .. } => vec![*src, *scale, *sub],
            Op::LogSumExp { max, sum, .. } => vec![*max, *sum],
            Op::Assign { dst, src } => vec![*dst, *src],
            Op::MergeSplits { max, sum, acc } | Op::CombineCtas { max, sum, acc } => vec![*max, *sum, *acc],
            Op::Tiles { .. } | Op::Pipeline { .. } | Op::Loop { .. } => vec![],
            Op::Store { dst, src, via } => {
                let mut v = dst.coords.clone();
                v.push(*src);
                v.extend(via);
                v
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Inst {
    pub op: Op,
    /// The role annotation the statement carried, if any.
    pub role: Option<Role>,
    pub span: SpanId,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Block {
    pub insts: Vec<Inst>,
}

/// One kernel, lowered for one [`Config`].
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub config: Config,
    pub params: Vec<Param>,
    /// Runtime dimension symbols, in order of first appearance in the parameters.
    pub dims: Vec<String>,
    pub values: Vec<ValueData>,
    /// Shared-memory ring buffers (allocated by the pipeline pass).
    pub buffers: Vec<Buffer>,
    /// mbarrier rings (allocated by the warp-specialize pass).
    pub mbarriers: Vec<MbarRing>,
    /// Register values exchanged between role groups (softmax on its own warps).
    pub channels: Vec<Channel>,
    /// Score masks that are functions of positions ([`Op::MaskWhere`], [`LoopExtent::skip`]).
    pub masks: Vec<TileMask>,
    /// Loop bounds written in the source ([`LoopExtent::from`], [`LoopExtent::to`]): i32
    /// expressions of work-loop indices, lengths, constants, parameters and table reads.
    pub bounds: Vec<MaskExpr>,
    pub body: Block,
}

impl Kernel {
    /// Rows of one slot of stage buffer `buffer`.
    pub fn slot_rows(&self, buffer: BufferId) -> u32 {
        self.buffers[buffer.0 as usize].rows.size(&self.config)
    }

    /// Bytes of one slot of stage buffer `buffer`: `rows × D` 16-bit elements (what a
    /// [`Op::TmaCopy`] into it brings).
    pub fn slot_tile_bytes(&self, buffer: BufferId) -> u32 {
        self.slot_rows(buffer) * self.config.head_dim * 2
    }

    /// Whether the producer's tiles come through bulk tensor copies (the TMA pass ran): some
    /// mbarrier ring counts transaction bytes.
    pub fn bulk_copies(&self) -> bool {
        self.mbarriers.iter().any(|r| r.tx)
    }

    /// The i32 tables whose runs along a key axis the masks read ([`MaskExpr::Table`] with an
    /// index that follows the key position but not the query's: document ids per key), in
    /// parameter order. Deciding a K/V tile from such a run would read `TILE_N` elements a tile
    /// and a work item; a launch instead first summarises each run in blocks of `TILE_N`
    /// ([`TableSummary`]), once, and the kernel reads one (min, max) pair a block.
    pub fn table_summaries(&self) -> Vec<TableSummary> {
        fn walk(e: &MaskExpr, found: &mut Vec<TableSummary>) {
            if let MaskExpr::Table { param, indices } = e {
                for (axis, index) in indices.iter().enumerate() {
                    let summary = TableSummary { param: *param, axis };
                    if index.mentions_cols() && !index.mentions_rows() && !found.contains(&summary) {
                        found.push(summary);
                    }
                }
            }
            e.children().into_iter().for_each(|c| walk(c, found));
        }
        let mut found = vec![];
        self.masks.iter().for_each(|m| walk(&m.keep, &mut found));
        found.sort_by_key(|s| (s.param, s.axis));
        found
    }

    /// The tensors the kernel reads through tensor maps ([`Op::TmaCopy`]), in parameter order,
    /// with the rows of the tile each copy brings (the map's box).
    pub fn tensor_maps(&self) -> Vec<(usize, u32)> {
        let mut maps: Vec<(usize, u32)> = vec![];
        self.walk(&mut |inst| {
            if let Op::TmaCopy { buffer, src, .. } = &inst.op {
                if !maps.iter().any(|(p, _)| *p == src.param) {
                    maps.push((src.param, self.slot_rows(*buffer)));
                }
            }
        });
        maps.sort();
        maps
    }

    pub fn value(&self, v: Value) -> &ValueData {
        &self.values[v.index()]
    }

    pub fn ty(&self, v: Value) -> Type {
        self.values[v.index()].ty
    }

    pub fn tensor(&self, param: usize) -> Option<&TensorParam> {
        match self.params.get(param) {
            Some(Param::Tensor(t)) => Some(t),
            _ => None,
        }
    }

    /// The sequence axis a tile access walks: its tensor's, or for a paged tile the logical
    /// sequence its tile index walks (the tensor's own axis is then one page).
    pub fn access_seq_dim(&self, access: &TileAccess) -> Option<RtDim> {
        match (access.pages, self.ty(access.coords[2])) {
            (Some(_), Type::Index { dim, .. }) => Some(dim),
            _ => self.tensor(access.param).map(|t| t.dims[2]),
        }
    }

    /// Visits every instruction, loop bodies included, in program order (a pipeline's
    /// prologue, body, epilogue).
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Inst)) {
        self.walk_block(&self.body, f)
    }

    /// Visits every instruction of `block`, nested blocks included, in program order.
    pub fn walk_block<'a>(&self, block: &'a Block, f: &mut impl FnMut(&'a Inst)) {
        for inst in &block.insts {
            f(inst);
            for inner in inst.op.blocks() {
                self.walk_block(inner, f);
            }
        }
    }
}
