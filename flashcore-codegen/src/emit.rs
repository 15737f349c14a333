//! Expansion of each tile-level IR op into per-thread PTX: cp.async tile copies, ldmatrix +
//! mma.sync, register-resident online-softmax arithmetic with quad shuffles, and the staged,
//! 16-byte-vectorized output store. Every expanded op is preceded by a comment naming it.

use std::collections::{HashMap, HashSet};

use flashcore_ir::abi::EntryParam;
use flashcore_ir::kernel::*;
use flashcore_ir::source::{BinOp, ReduceOp, UnaryOp};
use flashcore_ir::{Config, Target};

use crate::layout::{self, chunks_per_row, frag_shape, row_bytes, row_reg, swizzle_period, LdmatrixPattern};
use crate::smem::SmemPlan;
use crate::writer::{PtxWriter, RegClass, RegFamily};
use crate::CodegenError;

mod axes;
mod elementwise;
mod mask;
mod wgmma;
use wgmma::WgmmaInit;

/// A single mbarrier wait longer than this (10 s) traps: the kernel aborts instead of hanging
/// the GPU (and, at exit, the process). The runtime's launch timeout (5 s by default) fires
/// first and names the kernel.
pub const WATCHDOG_NS: u64 = 10_000_000_000;

/// The shared-memory symbol all buffers are carved from.
pub const SMEM_SYMBOL: &str = "flashcore_smem";

/// Per-thread registers computed once in the prologue.
struct ThreadRegs {
    /// %tid.x, its warp and its lane.
    thread: String,
    warp: String,
    lane: String,
    /// lane / 4 and lane % 4: a thread's row and column pair inside an mma fragment.
    group: String,
    quad_lane: String,
    smem: String,
    /// First row of the `TILE_M` tile this warp owns.
    warp_row0: String,
    /// Split-KV (`Config::kv_splits > 1`): this warp's group and where its keys start.
    split: Option<SplitRegs>,
    /// Per ldmatrix pattern: (byte offset of the lane's row, chunk bit ^ swizzle key).
    ldmatrix: HashMap<LdmatrixPattern, (String, String)>,
    /// sm_90a: the registers its wgmmas and warpgroup barriers share.
    wgmma: Option<wgmma::WgmmaRegs>,
}

/// A compute warp's place in split-KV: its group `index` (0 stores the output), the first key
/// of each K/V tile its fragments cover (`index · TILE_N / kv_splits`), and its group's
/// row-tile region (an offset in the shared window, when the kernel has one).
#[derive(Clone, Debug)]
struct SplitRegs {
    index: String,
    key0: String,
    row_tile: Option<String>,
}

/// The named barrier (`bar.sync 1, compute threads`) of `merge_kv_splits`; `bar.sync 0` is
/// the CTA barrier of the pipelined loop.
pub const MERGE_BARRIER: u32 = 1;

/// The named barrier (`bar.sync 2, compute threads`) of column reductions.
pub const COLUMN_BARRIER: u32 = 2;

/// sm_90a: warpgroup `g`'s barrier (`bar.sync 4 + g, 128`), where its four warps meet after
/// copying a tile that their wgmmas read from shared memory.
pub const WARPGROUP_BARRIER: u32 = 4;

/// sm_90a pingpong (`Config::pingpong`): warpgroup `g` waits at `bar.sync 8 + g, 256` for its
/// turn to issue its matmuls and hands the turn over with `bar.arrive 9 - g, 256`.
pub const PINGPONG_BARRIER: u32 = 8;

/// Where the emission of a K/V loop body stands with the pingpong's turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// Before the iteration's first asynchronous matmul: wait for the turn there.
    Waiting,
    /// The matmuls are being issued: hand the turn over before the first wait for them.
    Issuing,
    /// Handed over for this iteration.
    Done,
}

/// The pingpong state of a compute warp's code: its warpgroup's turn barrier and the other's
/// (registers), and where the K/V loop body being emitted stands (`None` outside one).
#[derive(Clone, Debug)]
struct PingPong {
    mine: String,
    other: String,
    turn: Option<Turn>,
}

/// The threads that share a copy: each thread's index among them, and how many there are.
#[derive(Clone, Debug, Default)]
struct Team {
    index: String,
    threads: u32,
}

/// A tile in shared memory: its byte offset from the shared window (an immediate or a
/// register, for ring slots chosen at run time), its rows (the ring buffer's) and whether the
/// value is the `.t()` view.
#[derive(Clone)]
struct SmemTile {
    offset: String,
    rows: u32,
    transposed: bool,
    /// A predicate that is false while the view names the plan's block of zeros instead
    /// (`StageView::zero_unless`): a wgmma picks the zero descriptor then.
    zero_unless: Option<String>,
}

/// A tensor or table parameter in global memory: its base pointer and the strides of its
/// axes (registers).
#[derive(Clone, Debug)]
struct GlobalTensor {
    ptr: String,
    /// A tensor's: one per outer axis (`B, H, S`), in bytes; the head dim is contiguous. A
    /// table's: one per axis, in 4-byte elements, so that an axis may span more than 4 GiB
    /// (a `[B, H, S, SK]` f32 bias at H = 16, S = SK = 8192): [`Emitter::axis_offset`] scales
    /// after its 64-bit multiply.
    strides: Vec<String>,
}

/// The first row of a tile in global memory and the byte step between its rows.
#[derive(Clone, Debug)]
struct GlobalTile {
    addr: String,
    row_stride: String,
    /// A paged tile's rows: `addr` is then row 0 of page 0 (at the tile's head).
    pages: Option<PagedRows>,
}

/// How a paged tile finds its rows ([`ir::kernel::TileAccess::pages`]): logical row `j` of the
/// sequence lies in row `j % page_rows` of page `table[b, j / page_rows]`.
#[derive(Clone, Debug)]
struct PagedRows {
    /// The address (u64) of the sequence's row of the page table.
    table_row: String,
    /// Bytes between two entries of that row.
    entry_stride: String,
    /// Entries in the row (`MAX_PAGES`): a page number past them is not read.
    entries: String,
    /// The logical row of the tile's first row.
    first_row: String,
    /// Rows per page (`PAGE`, the tensor's sequence axis).
    page_rows: String,
    /// Pages in the pool (the tensor's batch axis): an entry outside it reads as zeros.
    pool: String,
    /// Bytes between pages.
    page_stride: String,
}

/// Paged copies in whole 16-row blocks ([`Emitter::copy_paged_blocks`]): the pages of this
/// thread's blocks of the last such copy, and those of the blocks one copy further on, loaded
/// while the current copy's data is in flight. A copy whose first row and table row match the
/// keys takes its pages from here instead of waiting on the page table: the V copy reuses the K
/// copy's pages, and a pipelined K/V loop finds each tile's pages loaded an iteration earlier.
/// A copy that matches neither (another tile order, another sequence) looks its own up, so the
/// keys make the cache right for any order of copies.
struct PageCache {
    /// The copies it serves: the same rows per copy and page geometry (the registers of the
    /// page size and of the table's row length and stride).
    geometry: PageGeometry,
    current: CachedPages,
    next: CachedPages,
}

/// One copy's worth of [`PageCache`] pages, with the keys they were looked up for.
#[derive(Clone)]
struct CachedPages {
    /// The copy's first logical row, and its table row (an address).
    row: String,
    table: String,
    /// The first block's page entry (its index in the table row) and row in that page.
    entry: String,
    in_page: String,
    /// Per 16-row block: its page, or `-1` (outside every pool) where the block lies past the
    /// sequence or its entry past the table's row (nothing was read for it).
    pages: Vec<String>,
}

#[derive(Clone, PartialEq, Eq)]
struct PageGeometry {
    rows: u32,
    page_rows: String,
    entry_stride: String,
    entries: String,
}

impl CachedPages {
    /// Its registers: the keys (row, table), then the first block's position and the pages.
    fn registers(&self) -> Vec<String> {
        let mut regs = vec![self.row.clone(), self.table.clone(), self.entry.clone(), self.in_page.clone()];
        regs.extend(self.pages.iter().cloned());
        regs
    }
}

/// What a thread of a copy team copies ([`Emitter::copy_tile_async`]): its row in each pass
/// (`team_row`, then every `rows_per_pass` rows), its 16-byte chunk of the row (`chunk`; its
/// global address in the tile's first row, `chunk_base`), and the shared tile's swizzle blocks.
struct CopyLanes<'a> {
    team_row: &'a str,
    chunk: &'a str,
    chunk_base: &'a str,
    rows_per_pass: u32,
    swizzle_blocks: Option<u32>,
}

/// Where an mma's A fragments are: in registers, or (`Config::a_in_smem`) in the row-tile
/// region at `region`, ldmatrix-ed one k-slice at a time.
enum AOperand {
    Registers(RegFamily),
    Shared { region: String },
}

/// The fewest registers a thread of a fragment tile for [`Emitter::skip_unit_rescale`]'s branch
/// to pay (measured on the H200: 64, D = 128, gains; 32, D = 64, loses).
const SKIP_RESCALE_MIN_REGISTERS: usize = 64;

pub struct Emitter<'k> {
    kernel: &'k Kernel,
    cfg: Config,
    plan: &'k SmemPlan,
    w: PtxWriter,
    regs: HashMap<Value, RegFamily>,
    tiles: HashMap<Value, SmemTile>,
    /// sm_90a: the operands (descriptors) of asynchronous matmuls computed ahead of their issue,
    /// by result and B operand ([`Emitter::prepare_async_matmuls`]).
    prepared: HashMap<(Value, Value), wgmma::PreparedWgmma>,
    /// Loaded A operands left in their row-tile region (`Config::a_in_smem`), with the
    /// region's offset: each mma reads their fragments with ldmatrix where it needs them.
    smem_a: HashMap<Value, String>,
    /// Per parameter: the tensor's global base and strides (`None` for scalars).
    tensors: Vec<Option<GlobalTensor>>,
    /// Per tensor read through a tensor map: the map's generic address (a register).
    tensor_maps: HashMap<usize, String>,
    /// The compute warpgroups take turns issuing their matmuls (in their role group's body).
    pingpong: Option<PingPong>,
    dim_regs: Vec<String>,
    t: Option<ThreadRegs>,
    /// The threads that copy ring tiles in the code being emitted (all of them, or the
    /// producer warps of a warp-specialized kernel).
    team: Team,
    /// This warp's index within its role group.
    group_warp: String,
    /// Set while emitting a streaming softmax group (see `stream.rs`).
    pub(crate) stream: Option<crate::stream::RowStream>,
    /// Trip count register of the pipeline loop being emitted.
    pipeline_count: Option<String>,
    /// Grouped K/V head indices (`h / (H / HKV)`), computed once per work item.
    grouped: HashMap<(Value, HeadGroup), String>,
    /// The varlen variant's ragged dims, one per sequence-offsets parameter (empty otherwise).
    ragged: Vec<RaggedDim>,
    /// Split-KV across CTAs (`Config::kv_ctas > 1`): the workspace's address (from the entry).
    workspace: Option<String>,
    /// The global pointer of each table summary the masks read (`EntryParam::Summary`).
    summaries: HashMap<TableSummary, String>,
    /// Split-KV across CTAs, inside the work loop: this CTA's share of its work item.
    combine: Option<CombineRegs>,
    /// Set while a work loop's body is emitted: the ragged dims' registers then hold this work
    /// item's sequence, and every use of such a dim's length reads its `len` register.
    in_work_item: bool,
    /// How many ops read each value (a value read once may be overwritten in place).
    use_counts: HashMap<Value, usize>,
    /// Fragment values that vary along one tile axis only, which share registers along the
    /// other ([`axes`]).
    one_axis: HashMap<Value, TileAxis>,
    /// The index values of the work loop being emitted, and of its K/V loop.
    work_vars: Vec<Value>,
    pipeline_var: Option<Value>,
    /// Uniform parts of a mask, computed once while its per-element code is emitted.
    uniform_cache: Option<HashMap<String, mask::Range>>,
    /// The parts of a mask that read positions, per position register, while one mask's
    /// per-element code is emitted.
    element_cache: Option<HashMap<String, mask::Range>>,
    /// The parts of a mask that read no key position, computed before the bounds scan's loop.
    invariant_cache: Option<HashMap<String, mask::Range>>,
    /// Whether a mask's table runs are read by the whole (converged) warp together.
    cooperative_tables: bool,
    /// While a K/V loop is emitted: per mask, the warp's rows box and the ranges of its table
    /// reads on them, computed before the loop.
    hoisted_rows: HashMap<MaskId, ((String, String), HashMap<String, mask::Range>)>,
    /// Paged copies' pages, kept from one copy to the next ([`PageCache`]).
    page_cache: Option<PageCache>,
    /// Where the prologue's text ends: registers that must hold a value before the first
    /// work item are given it there once the body is emitted (the page cache's keys).
    prologue_end: usize,
    /// Set by `block` for the register load it is about to emit when that load's wait may
    /// move past the next K/V loop's prologue: the number of copy groups that prologue
    /// commits ([`deferrable_load`]).
    defer_next_load: Option<u32>,
    /// Register loads whose copies are in flight, landed right after the next K/V loop's
    /// prologue has issued its copies.
    deferred_loads: Vec<LoadInFlight>,
}

/// A register load whose `cp.async` copy has been issued, to land (the wait, then the
/// `ldmatrix`, or for wgmma the proxy fence and warpgroup barrier) at once (`younger` 0) or,
/// deferred, after the next K/V loop's prologue, so the tile's global round trip overlaps the
/// loop's bounds, table reads, page lookups and first K/V copies instead of preceding them.
/// `younger`: the copy groups committed after this load's that may stay in flight (the
/// `cp.async.wait_group` that leaves only those has this load's group done).
#[derive(Clone, Debug)]
struct LoadInFlight {
    dst: Value,
    region: String,
    /// The tile stays in shared memory as an A operand (`a_in_smem`, wgmma's descriptors).
    kept: bool,
    /// Read by wgmma: the warpgroup's copies are fenced into the async proxy and it meets.
    wgmma: bool,
    younger: u32,
}

/// Split-KV across CTAs: this CTA's split of its work item (`split`, 0 .. kv_ctas), the work
/// item's index (`item`) among `items`, and the label that ends the work item (where the CTAs
/// that are not the item's last to arrive go after the combine).
#[derive(Clone, Debug)]
struct CombineRegs {
    split: String,
    item: String,
    items: String,
    next: String,
}

/// A sequence dim made ragged by offsets: their pointer, and the registers that hold the
/// current work item's sequence (first packed row, length).
#[derive(Clone, Debug)]
struct RaggedDim {
    offsets: String,
    batch: RtDim,
    seq: RtDim,
    optional: bool,
    /// `SeqLens`: lengths, not offsets; `start` is not used (nothing is packed).
    lengths: bool,
    ptr: String,
    start: String,
    len: String,
}

/// Whether the register load `insts[0]` may finish after the K/V loop that follows it in
/// the same block has issued its prologue's copies, and if so how many copy groups that
/// prologue commits. Only plain code may stand between (constants, fills, parameters: no
/// reader of the loaded value, no copy, wait or barrier), and the prologue must be
/// straight-line copies and commits, so that every thread that issued the load commits
/// exactly that many groups after it: `cp.async.wait_group` with that count then leaves
/// the load's group complete (groups complete in order). A prologue that commits nothing
/// (a warp-specialized kernel's compute warps, whose K/V tiles other warps copy) gains
/// nothing, and the load stays as it is.
pub(crate) fn deferrable_load(kernel: &Kernel, insts: &[Inst]) -> Option<u32> {
    let (first, rest) = insts.split_first()?;
    let Op::Load { dst, .. } = first.op else { return None };
    for inst in rest {
        match &inst.op {
            Op::Const { .. }
            | Op::IntConst { .. }
            | Op::ScalarParam { .. }
            | Op::DimLen { .. }
            | Op::Fill { .. } => {}
            Op::Pipeline { prologue, body, .. } => {
                let mut commits = 0;
                for p in &prologue.insts {
                    match p.op {
                        Op::CommitGroup => commits += 1,
                        Op::AsyncCopy { .. } => {}
                        _ => return None,
                    }
                }
                let mut read = false;
                kernel.walk_block(body, &mut |i| read |= i.op.uses().contains(&dst));
                return (read && commits > 0).then_some(commits);
            }
            _ => return None,
        }
    }
    None
}

/// The register loads of `kernel` whose wait codegen moves past the next K/V loop's prologue
/// (`deferrable_load`: where only plain code separates a load from a K/V loop whose prologue
/// commits copies), each with the copy groups that prologue leaves in flight, in program order
/// (`flashcore check` prints them).
pub fn deferred_loads(kernel: &Kernel) -> Vec<(Value, u32)> {
    fn walk(kernel: &Kernel, block: &Block, out: &mut Vec<(Value, u32)>) {
        for (i, inst) in block.insts.iter().enumerate() {
            if let (Op::Load { dst, .. }, Some(younger)) =
                (&inst.op, deferrable_load(kernel, &block.insts[i..]))
            {
                out.push((*dst, younger));
            }
            for inner in inst.op.blocks() {
                walk(kernel, inner, out);
            }
        }
    }
    let mut out = vec![];
    walk(kernel, &kernel.body, &mut out);
    out
}

/// An online-softmax state's registers in the order its copies are laid out: `m`, `l`, `acc`
/// (the in-CTA merge's shared region, the combine's workspace, `Emitter::fold_state`).
fn state_regs([m, l, a]: [&RegFamily; 3]) -> Vec<String> {
    [m, l, a].iter().flat_map(|f| (0..f.len).map(|i| f.at(i))).collect()
}

/// The f32 instruction of a row reduction step.
pub(crate) fn reduce_instr(op: ReduceOp) -> &'static str {
    match op {
        ReduceOp::Max => "max.f32",
        ReduceOp::Sum => "add.f32",
    }
}

/// The instruction of an elementwise binary op on operands of element type `elem` (f32, i32
/// or bool). Float `!=` is unordered (true when either side is NaN), as in Rust.
pub(crate) fn binary_instr(op: BinOp, elem: Elem) -> String {
    let ty = match elem {
        Elem::I32 => "s32",
        Elem::Bool => "pred",
        _ => "f32",
    };
    let name = match op {
        BinOp::Add => "add",
        BinOp::Sub => "sub",
        BinOp::Mul if elem == Elem::I32 => "mul.lo",
        BinOp::Mul => "mul",
        BinOp::Div if elem == Elem::I32 => "div",
        BinOp::Div => "div.rn",
        BinOp::Rem => "rem",
        BinOp::Max => "max",
        BinOp::Min => "min",
        BinOp::Lt => "setp.lt",
        BinOp::Le => "setp.le",
        BinOp::Gt => "setp.gt",
        BinOp::Ge => "setp.ge",
        BinOp::Eq => "setp.eq",
        BinOp::Ne if elem == Elem::F32 => "setp.neu",
        BinOp::Ne => "setp.ne",
        BinOp::And => "and",
        BinOp::Or => "or",
    };
    format!("{name}.{ty}")
}

fn f32_hex(x: f32) -> String {
    format!("0f{:08X}", x.to_bits())
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

impl<'k> Emitter<'k> {
    pub fn new(kernel: &'k Kernel, plan: &'k SmemPlan) -> Self {
        Emitter {
            kernel,
            // Code is generated for a PTX target: `Auto` without a device is sm_89.
            cfg: Config { target: kernel.config.target.ptx(), ..kernel.config },
            plan,
            w: PtxWriter::default(),
            regs: HashMap::new(),
            tiles: HashMap::new(),
            prepared: HashMap::new(),
            smem_a: HashMap::new(),
            tensors: vec![],
            tensor_maps: HashMap::new(),
            pingpong: None,
            dim_regs: vec![],
            t: None,
            pipeline_count: None,
            grouped: HashMap::new(),
            ragged: vec![],
            workspace: None,
            summaries: HashMap::new(),
            combine: None,
            in_work_item: false,
            use_counts: {
                let mut counts = HashMap::new();
                kernel.walk(&mut |inst| {
                    for v in inst.op.uses() {
                        *counts.entry(v).or_insert(0) += 1;
                    }
                });
                counts
            },
            one_axis: axes::one_axis_values(kernel),
            work_vars: vec![],
            pipeline_var: None,
            uniform_cache: None,
            element_cache: None,
            invariant_cache: None,
            cooperative_tables: false,
            hoisted_rows: HashMap::new(),
            page_cache: None,
            prologue_end: 0,
            defer_next_load: None,
            deferred_loads: vec![],
            team: Team::default(),
            group_warp: String::new(),
            stream: None,
        }
    }

    fn th(&self) -> &ThreadRegs {
        self.t.as_ref().expect("prologue ran first")
    }

    fn vname(&self, v: Value) -> String {
        format!("%{}.{}", self.kernel.value(v).name, v.0)
    }

    /// The register family of value `v`, created on first request.
    fn regs_of(&mut self, v: Value) -> RegFamily {
        if let Some(f) = self.regs.get(&v) {
            return f.clone();
        }
        let ty = self.kernel.ty(v);
        let class = match ty.elem() {
            _ if matches!(ty, Type::Counter) => RegClass::B32,
            Some(Elem::F16 | Elem::Bf16 | Elem::I32) => RegClass::B32,
            Some(Elem::Bool) => RegClass::Pred,
            _ => RegClass::F32,
        };
        let len = layout::register_count(&self.cfg, &ty).expect("register-resident value");
        let prefix = format!("%v_{}_{}_", sanitize(&self.kernel.value(v).name), v.0);
        let slots = self.one_axis.get(&v).and_then(|axis| self.one_axis_slots(ty, *axis));
        let fam = match slots {
            Some(slots) => self.w.shared_family(class, prefix, slots),
            None => self.w.family(class, prefix, len),
        };
        self.regs.insert(v, fam.clone());
        fam
    }

    // ---------------------------------------------------------------------------------------
    // Entry, parameters, prologue

    pub fn emit(mut self) -> Result<String, CodegenError> {
        let params = self.prologue();
        let body = self.kernel.body.clone();
        self.block(&body)?;
        self.w.ins("ret");
        self.initialize_page_cache();
        let name = &self.kernel.name;
        let threads = self.cfg.threads();
        let mut out = String::new();
        out.push_str(&format!(
            "//\n// Generated by FlashCore from kernel `{name}` ({cfg}).\n// {threads} threads per CTA, {smem} bytes of dynamic shared memory.\n//\n\n",
            cfg = self.kernel.config,
            smem = self.plan.total_bytes
        ));
        let version = if self.cfg.target == Target::Sm90a { "8.0" } else { "7.8" };
        out.push_str(&format!(".version {version}\n.target {}\n.address_size 64\n\n", self.cfg.target));
        let align = crate::smem::tile_align(&self.cfg);
        out.push_str(&format!(".extern .shared .align {align} .b8 {SMEM_SYMBOL}[];\n\n"));
        out.push_str(&format!(".visible .entry {name}(\n"));
        out.push_str(&params.join(",\n"));
        out.push_str(&format!("\n)\n.maxntid {threads}, 1, 1\n.minnctapersm 1\n{{\n"));
        out.push_str(&self.w.finish());
        out.push_str("}\n");
        Ok(out)
    }

    /// Declares the entry's parameters (tensors, scalars, then runtime dims) and emits the
    /// per-thread setup. Returns the parameter declarations.
    fn prologue(&mut self) -> Vec<String> {
        let k = self.kernel;
        let mut decls = vec![];
        self.w.comment("prologue: parameters, thread coordinates, per-lane address parts");
        // The entry parameters, in the one order `Kernel::entry_abi` states.
        for entry in k.entry_abi() {
            let pname = entry.ptx_name(k);
            decls.push(format!("\t{}", entry.ptx_decl(k)));
            match entry {
                EntryParam::TensorMap { param, .. } => {
                    // Bulk tensor copies take the map's generic address (in parameter space).
                    let name = sanitize(k.params[param].name());
                    let reg = self.w.named(RegClass::B64, &format!("%tmap_{name}"));
                    self.w.ins(format!("mov.u64 {reg}, {pname}"));
                    self.w.ins(format!("cvta.param.u64 {reg}, {reg}"));
                    self.tensor_maps.insert(param, reg);
                }
                EntryParam::F32 { .. } => self.tensors.push(None),
                EntryParam::Summary(summary) => {
                    let raw = self.w.temp(RegClass::B64);
                    let name =
                        format!("%summary_{}_{}", sanitize(k.params[summary.param].name()), summary.axis);
                    let ptr = self.w.named(RegClass::B64, &name);
                    self.w.ins(format!("ld.param.u64 {raw}, [{pname}]"));
                    self.w.ins(format!("cvta.to.global.u64 {ptr}, {raw}"));
                    self.summaries.insert(summary, ptr);
                }
                EntryParam::Workspace => {
                    let raw = self.w.temp(RegClass::B64);
                    let ptr = self.w.named(RegClass::B64, "%workspace");
                    self.w.ins(format!("ld.param.u64 {raw}, [{pname}]"));
                    self.w.ins(format!("cvta.to.global.u64 {ptr}, {raw}"));
                    self.workspace = Some(ptr);
                }
                EntryParam::Pointer { param } => match &k.params[param] {
                    Param::Offsets(o) => {
                        self.tensors.push(None);
                        if !self.cfg.varlen && !o.lengths {
                            continue; // the dense variant never reads offsets (lengths, always)
                        }
                        let raw = self.w.temp(RegClass::B64);
                        let ptr = self.w.named(RegClass::B64, &format!("%ptr_{}", sanitize(&o.name)));
                        self.w.ins(format!("ld.param.u64 {raw}, [{pname}]"));
                        self.w.ins(format!("cvta.to.global.u64 {ptr}, {raw}"));
                        let seq_name = sanitize(&k.dims[o.seq.0 as usize]);
                        self.ragged.push(RaggedDim {
                            offsets: o.name.clone(),
                            batch: o.batch,
                            seq: o.seq,
                            optional: o.optional,
                            lengths: o.lengths,
                            ptr,
                            start: self.w.named(RegClass::B32, &format!("%seq_start_{seq_name}")),
                            len: self.w.named(RegClass::B32, &format!("%seq_len_{seq_name}")),
                        });
                    }
                    p => {
                        // A tensor's or table's global pointer; its strides come after the dims.
                        let raw = self.w.temp(RegClass::B64);
                        let ptr = self.w.named(RegClass::B64, &format!("%ptr_{}", sanitize(p.name())));
                        self.w.ins(format!("ld.param.u64 {raw}, [{pname}]"));
                        self.w.ins(format!("cvta.to.global.u64 {ptr}, {raw}"));
                        self.tensors.push(Some(GlobalTensor { ptr, strides: Default::default() }));
                    }
                },
                EntryParam::Dim { dim } => {
                    let reg =
                        self.w.named(RegClass::B32, &format!("%dim_{}", sanitize(&k.dims[dim.0 as usize])));
                    self.w.ins(format!("ld.param.u32 {reg}, [{pname}]"));
                    self.dim_regs.push(reg);
                }
                EntryParam::Stride { param, dim, .. } => {
                    // In elements; a tensor's kept in bytes (f32 rows: 4, 16-bit tensors: 2), a
                    // table's in elements (scaled per offset, in 64 bits: `axis_offset`).
                    let elem_shift = match &k.params[param] {
                        Param::Tensor(t) if !t.is_rows() => 1,
                        Param::Table(_) => 0,
                        _ => 2,
                    };
                    let name =
                        format!("{}_{}", sanitize(k.params[param].name()), sanitize(&k.dims[dim.0 as usize]));
                    let reg = self.w.named(RegClass::B32, &format!("%stride_{name}"));
                    self.w.ins(format!("ld.param.u32 {reg}, [{pname}]"));
                    if elem_shift > 0 {
                        self.w.ins(format!("shl.b32 {reg}, {reg}, {elem_shift}"));
                    }
                    if let Some(g) = self.tensors[param].as_mut() {
                        g.strides.push(reg);
                    }
                }
            }
        }

        let thread = self.w.named(RegClass::B32, "%thread");
        let warp = self.w.named(RegClass::B32, "%warp");
        let lane = self.w.named(RegClass::B32, "%lane");
        let group = self.w.named(RegClass::B32, "%group");
        let quad_lane = self.w.named(RegClass::B32, "%quad_lane");
        let smem = self.w.named(RegClass::B32, "%smem");
        let warp_row0 = self.w.named(RegClass::B32, "%warp_row0");
        self.w.ins(format!("mov.u32 {thread}, %tid.x"));
        self.w.ins(format!("shr.u32 {warp}, {thread}, 5"));
        self.w.ins(format!("and.b32 {lane}, {thread}, 31"));
        self.w.ins(format!("shr.u32 {group}, {lane}, 2"));
        self.w.ins(format!("and.b32 {quad_lane}, {lane}, 3"));
        self.w.ins(format!("mov.u32 {smem}, {SMEM_SYMBOL}"));
        let split = (self.cfg.kv_splits > 1).then(|| {
            // Split-KV: warp w is row block w % warps_per_split of group w / warps_per_split.
            let wps = self.cfg.warps_per_split();
            let (index, key0, block) = (
                self.w.named(RegClass::B32, "%kv_split"),
                self.w.named(RegClass::B32, "%kv_split_key0"),
                self.w.temp(RegClass::B32),
            );
            self.w.div_u32_by(&index, &warp, wps);
            self.w.rem_u32_by(&block, &warp, wps);
            self.w.ins(format!("mul.lo.u32 {warp_row0}, {block}, {}", self.cfg.rows_per_warp()));
            self.w.ins(format!("mul.lo.u32 {key0}, {index}, {}", self.cfg.keys_per_warp()));
            let row_tile = self.plan.row_tile_region.map(|region| {
                let r = self.w.named(RegClass::B32, "%kv_split_row_tile");
                self.w.ins(format!("mad.lo.u32 {r}, {index}, {}, {region}", self.plan.row_tile_bytes));
                r
            });
            SplitRegs { index, key0, row_tile }
        });
        if split.is_none() {
            self.w.ins(format!("mul.lo.u32 {warp_row0}, {warp}, {}", self.cfg.rows_per_warp()));
        }

        let rb = row_bytes(&self.cfg);
        let lane7 = self.w.temp(RegClass::B32);
        self.w.ins(format!("and.b32 {lane7}, {lane}, 7"));
        // The swizzle key: row % P (rows of an ldmatrix block start at a multiple of 8).
        let lane_key = self.swizzle_key(&lane7);
        let mut ldmatrix = HashMap::new();
        for p in LdmatrixPattern::ALL {
            // Mirrors LdmatrixPattern::lane_source.
            let (row, bit) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
            match p {
                LdmatrixPattern::A => {
                    self.w.ins(format!("and.b32 {row}, {lane}, 15"));
                    self.w.ins(format!("shr.u32 {bit}, {lane}, 4"));
                }
                LdmatrixPattern::BFromRowsN => {
                    let hi = self.w.temp(RegClass::B32);
                    self.w.ins(format!("shr.u32 {hi}, {lane}, 4"));
                    self.w.ins(format!("shl.b32 {hi}, {hi}, 3"));
                    self.w.ins(format!("or.b32 {row}, {lane7}, {hi}"));
                    self.w.ins(format!("bfe.u32 {bit}, {lane}, 3, 1"));
                }
                LdmatrixPattern::BFromRowsK => {
                    let mid = self.w.temp(RegClass::B32);
                    self.w.ins(format!("and.b32 {mid}, {lane}, 8"));
                    self.w.ins(format!("or.b32 {row}, {lane7}, {mid}"));
                    self.w.ins(format!("shr.u32 {bit}, {lane}, 4"));
                }
            }
            let off = self.w.named(RegClass::B32, &format!("%ldm_{}_row", p.name()));
            let key = self.w.named(RegClass::B32, &format!("%ldm_{}_key", p.name()));
            self.w.ins(format!("mul.lo.u32 {off}, {row}, {rb}"));
            // Rows of every ldmatrix block start at a multiple of 8, so row % P == lane % P.
            self.w.ins(format!("xor.b32 {key}, {bit}, {lane_key}"));
            ldmatrix.insert(p, (off, key));
        }

        let wgmma =
            (self.cfg.target == Target::Sm90a).then(|| wgmma::WgmmaRegs::new(&mut self.w, &warp, &lane));

        self.w.blank();
        self.t = Some(ThreadRegs {
            warp,
            thread,
            lane,
            group,
            quad_lane,
            smem,
            warp_row0,
            split,
            ldmatrix,
            wgmma,
        });
        self.team = Team { index: self.th().thread.clone(), threads: self.cfg.threads() };
        self.prologue_end = self.w.mark();
        decls
    }

    // ---------------------------------------------------------------------------------------
    // Structure

    fn block(&mut self, block: &Block) -> Result<(), CodegenError> {
        if self.stream.is_none() {
            self.coalesce_updates(block);
            let mut i = 0;
            while i < block.insts.len() {
                let inst = &block.insts[i];
                if let Some(len) = self.fused_run_len(&block.insts[i..]) {
                    self.fused_run(&block.insts[i..i + len])?;
                    i += len;
                    continue;
                }
                if matches!(inst.op, Op::MmaAsync { .. }) {
                    self.pass_turn(Turn::Waiting);
                    self.prepare_async_matmuls(&block.insts[i..])?;
                }
                self.defer_next_load = deferrable_load(self.kernel, &block.insts[i..]);
                self.inst(inst)?;
                self.defer_next_load = None;
                i += 1;
            }
            return Ok(());
        }
        // Streaming softmax warps: runs of row-local statements go row slot by row slot.
        let mut run: Vec<&Inst> = vec![];
        for inst in &block.insts {
            if crate::stream::is_row_op(&inst.op) {
                self.w.comment(self.kernel.inst_text(inst));
                run.push(inst);
                continue;
            }
            if !run.is_empty() {
                self.stream_run(&std::mem::take(&mut run))?;
            }
            self.inst(inst)?;
        }
        if !run.is_empty() {
            self.stream_run(&run)?;
        }
        Ok(())
    }

    /// Updates written in place: where `%y = f(%x, ..)` is followed in the same block by
    /// `%x <- %y`, `%y` is read by nothing else and nothing in between touches `%x`, `%y` takes
    /// `%x`'s registers and the assignment emits nothing. `f` is a matmul accumulating into
    /// `%x` (the online softmax's `acc <- mma p, v, acc`) or an elementwise op on a same-shaped
    /// `%x` (`acc <- acc * alpha`), which reads each register before writing it. Without this,
    /// a wgmma's accumulators are a fresh family copied in before and out after (64 moves each
    /// way at D = 128, which ptxas keeps: it gives the accumulator block to S between matmuls).
    fn coalesce_updates(&mut self, block: &Block) {
        for (i, inst) in block.insts.iter().enumerate() {
            // The result, and the operands whose registers it may take.
            let (y, candidates) = match &inst.op {
                Op::Mma { dst, acc: Some(acc), .. } => (*dst, vec![*acc]),
                Op::Binary { dst, lhs, rhs, .. } if matches!(self.kernel.ty(*dst), Type::Frag { .. }) => {
                    let dt = self.kernel.ty(*dst);
                    (*dst, [*lhs, *rhs].into_iter().filter(|v| self.kernel.ty(*v) == dt).collect())
                }
                _ => continue,
            };
            if self.use_counts.get(&y) != Some(&1) || self.regs.contains_key(&y) {
                continue;
            }
            let rest = &block.insts[i + 1..];
            let assigned = candidates.into_iter().find_map(|x| {
                let j = rest
                    .iter()
                    .position(|n| matches!(n.op, Op::Assign { dst, src } if dst == x && src == y))?;
                Some((x, j))
            });
            let Some((x, j)) = assigned else { continue };
            if self.one_axis.contains_key(&x) {
                continue;
            }
            let touches = |op: &Op| op.uses().contains(&x) || op.def() == Some(x);
            let touches_x = rest[..j].iter().any(|between| {
                let mut touched = touches(&between.op);
                for inner in between.op.blocks() {
                    self.kernel.walk_block(inner, &mut |n| touched |= touches(&n.op));
                }
                touched
            });
            if touches_x {
                continue;
            }
            let fam = self.regs_of(x);
            if fam.slots.is_none() {
                self.regs.insert(y, fam);
            }
        }
    }

    pub(crate) fn w(&mut self) -> &mut PtxWriter {
        &mut self.w
    }

    pub(crate) fn cfg(&self) -> Config {
        self.cfg
    }

    pub(crate) fn kernel(&self) -> &'k Kernel {
        self.kernel
    }

    pub(crate) fn plan(&self) -> &'k SmemPlan {
        self.plan
    }

    pub(crate) fn lane_reg(&self) -> String {
        self.th().lane.clone()
    }

    pub(crate) fn smem_reg(&self) -> String {
        self.th().smem.clone()
    }

    pub(crate) fn group_warp_reg(&self) -> String {
        self.group_warp.clone()
    }

    fn inst(&mut self, inst: &Inst) -> Result<(), CodegenError> {
        let text = self.kernel.inst_text(inst);
        self.w.comment(text.trim_end_matches(" {"));
        match &inst.op {
            Op::Tiles { vars, extents, body, .. } => self.tiles_loop(vars, extents, body),
            Op::Loop { var, from, to, body } => self.range_loop(*var, *from, *to, body),
            Op::Pipeline { var, extent, stages, prologue, body, epilogue } => {
                if *stages == 0 {
                    return Err(CodegenError::Internal("the pipeline pass has not run".into()));
                }
                self.pipeline_loop(*var, extent, prologue, body, epilogue)
            }
            Op::Stage { .. } => {
                Err(CodegenError::Internal("a `stage` reached codegen: the pipeline pass has not run".into()))
            }
            Op::StageView { dst, buffer, slot, zero_unless, .. } => {
                self.stage_view(*dst, *buffer, *slot, *zero_unless)
            }
            Op::AsyncCopy { buffer, src, ahead, slot } => self.async_copy(*buffer, src, *ahead, *slot),
            Op::InitBarriers => self.init_barriers(),
            Op::Roles { groups } => self.role_groups(groups),
            Op::CounterInit { dst } => {
                let r = self.regs_of(*dst).at(0);
                self.w.ins(format!("mov.u32 {r}, 0"));
                Ok(())
            }
            Op::CounterNext { dst } => {
                let r = self.regs_of(*dst).at(0);
                self.w.ins(format!("add.u32 {r}, {r}, 1"));
                Ok(())
            }
            Op::MbarWait { ring, iter, flip } => {
                self.mbar_wait(*ring, *iter, *flip)?;
                if !*flip && !self.kernel.mbarriers[ring.0 as usize].tx {
                    // A full slot: the load warps' copies are visible to this thread now. (Bulk
                    // tensor copies wrote through the async proxy already: no fence.)
                    self.fence_copies_for_wgmma();
                }
                Ok(())
            }
            Op::MbarExpectTx { ring, iter, bytes } => {
                let addr = self.mbar_address(*ring, *iter);
                let leader = self.team_leader();
                let state = self.w.temp(RegClass::B64);
                self.w.ins(format!(
                    "@{leader} mbarrier.arrive.expect_tx.shared::cta.b64 {state}, [{addr}], {bytes}"
                ));
                Ok(())
            }
            Op::TmaCopy { buffer, src, slot, ring } => self.tma_copy(*buffer, src, *slot, *ring),
            Op::ChanWrite { src, chan, .. } => self.channel(*src, *chan, true),
            Op::ChanRead { dst, chan, .. } => self.channel(*dst, *chan, false),
            Op::MbarArrive { ring, iter } => {
                let addr = self.mbar_address(*ring, *iter);
                let state = self.w.temp(RegClass::B64);
                self.w.ins(format!("mbarrier.arrive.shared.b64 {state}, [{addr}]"));
                Ok(())
            }
            Op::MbarArriveAsync { ring, iter } => {
                let addr = self.mbar_address(*ring, *iter);
                self.w.ins(format!("cp.async.mbarrier.arrive.noinc.shared.b64 [{addr}]"));
                Ok(())
            }
            Op::CommitGroup => {
                self.w.ins("cp.async.commit_group");
                Ok(())
            }
            Op::WaitGroup { younger } => {
                self.w.ins(format!("cp.async.wait_group {younger}"));
                self.fence_copies_for_wgmma();
                Ok(())
            }
            Op::Barrier { id } => {
                self.w.ins(format!("bar.sync {id}"));
                Ok(())
            }
            Op::ScalarParam { dst, param } => {
                let r = self.regs_of(*dst).at(0);
                let name = EntryParam::F32 { param: *param }.ptx_name(self.kernel);
                self.w.ins(format!("ld.param.f32 {r}, [{name}]"));
                Ok(())
            }
            Op::Const { dst, value } => {
                let r = self.regs_of(*dst).at(0);
                self.w.ins(format!("mov.f32 {r}, {}", f32_hex(*value)));
                Ok(())
            }
            Op::IntConst { dst, value } => {
                let r = self.regs_of(*dst).at(0);
                self.w.ins(format!("mov.s32 {r}, {value}"));
                Ok(())
            }
            Op::DimLen { dst, dim } => {
                let r = self.regs_of(*dst).at(0);
                let len = self.dim_reg(*dim);
                self.w.ins(format!("mov.b32 {r}, {len}"));
                Ok(())
            }
            Op::Position { dst, axis, index } => self.position(*dst, *axis, *index),
            Op::Unary { dst, op, src } => self.unary(*dst, *op, *src),
            Op::MaskWhere { dst, src, keep, mask } => self.mask_where(*dst, *src, *keep, *mask),
            Op::Gather { dst, param, indices } => self.gather(*dst, *param, indices),
            Op::Convert { dst, src } if self.kernel.ty(*src).elem().is_some_and(|e| e.is_half()) => {
                self.widen(*dst, *src)
            }
            Op::Convert { dst, src } => {
                let (d, s) = (self.regs_of(*dst), self.regs_of(*src));
                for i in d.written() {
                    self.w.element(Some(i));
                    self.w.ins(format!("cvt.rn.f32.s32 {}, {}", d.at(i), s.at(i)));
                }
                Ok(())
            }
            Op::Select { dst, cond, then, otherwise } => {
                let dst_ty = self.kernel.ty(*dst);
                let ty = match dst_ty.elem() {
                    Some(Elem::I32) => "s32",
                    Some(Elem::F16 | Elem::Bf16) => "b32",
                    _ => "f32",
                };
                let (d, c, a, b) =
                    (self.regs_of(*dst), self.regs_of(*cond), self.regs_of(*then), self.regs_of(*otherwise));
                let (ct, at, bt) = (self.kernel.ty(*cond), self.kernel.ty(*then), self.kernel.ty(*otherwise));
                for i in d.written() {
                    self.w.element(Some(i));
                    let (ci, ai, bi) = (
                        self.operand_index(ct, dst_ty, i),
                        self.operand_index(at, dst_ty, i),
                        self.operand_index(bt, dst_ty, i),
                    );
                    self.w.ins(format!("selp.{ty} {}, {}, {}, {}", d.at(i), a.at(ai), b.at(bi), c.at(ci)));
                }
                Ok(())
            }
            Op::Fill { dst, value } => {
                let fam = self.regs_of(*dst);
                for i in 0..fam.len {
                    self.w.ins(format!("mov.f32 {}, {}", fam.at(i), f32_hex(*value)));
                }
                Ok(())
            }
            Op::Assign { dst, src } => {
                let (d, s) = (self.regs_of(*dst), self.regs_of(*src));
                if d.is(&s) {
                    self.w.comment("(written in place)");
                    return Ok(());
                }
                let ty = match self.kernel.ty(*dst).elem() {
                    Some(Elem::F16 | Elem::Bf16 | Elem::I32) => "b32",
                    Some(Elem::Bool) => "pred",
                    _ => "f32",
                };
                for i in 0..d.len {
                    self.w.ins(format!("mov.{ty} {}, {}", d.at(i), s.at(i)));
                }
                Ok(())
            }
            Op::Load { dst, src } => self.load_to_registers(*dst, src),
            Op::Transpose { dst, src } => {
                let mut tile = self.tiles[src].clone();
                tile.transposed = !tile.transposed;
                self.tiles.insert(*dst, tile);
                Ok(())
            }
            Op::Mma { dst, a, b, acc } => self.mma(*dst, *a, *b, *acc),
            Op::MmaAsync { dst, a, b, accumulate } => self.mma_async(*dst, *a, *b, *accumulate),
            Op::MmaCommit => {
                self.w.ins("wgmma.commit_group.sync.aligned");
                Ok(())
            }
            Op::MmaWait { pending } => {
                self.pass_turn(Turn::Issuing);
                self.w.ins(format!("wgmma.wait_group.sync.aligned {pending}"));
                Ok(())
            }
            Op::When { counter, body } => {
                let c = self.regs_of(*counter).at(0);
                let (skip, label) = (self.w.temp(RegClass::Pred), self.w.label("when_skip"));
                self.w.ins(format!("setp.eq.u32 {skip}, {c}, 0"));
                self.w.ins(format!("@{skip} bra.uni {label}"));
                self.w.indent();
                self.block(body)?;
                self.w.dedent();
                self.w.place_label(&label);
                Ok(())
            }
            Op::MaskColumns { dst, src, tile, causal, fill } => {
                self.mask_columns(*dst, *src, tile, causal.as_ref(), *fill)
            }
            Op::Exp2 { dst, src } => {
                let (d, s) = (self.regs_of(*dst), self.regs_of(*src));
                for i in d.written() {
                    self.w.element(Some(i));
                    self.w.ins(format!("ex2.approx.ftz.f32 {}, {}", d.at(i), s.at(i)));
                }
                Ok(())
            }
            Op::Exp2Scaled { dst, src, scale, sub } => {
                // 2^(x · c − m): m's −inf rows as 0 (as `x − m` has them), negated once a row,
                // then one FMA an element.
                let (d, x, c, m) =
                    (self.regs_of(*dst), self.regs_of(*src), self.regs_of(*scale), self.regs_of(*sub));
                let safe = self.neg_inf_rows_as_zero(*dst, &m);
                let minus = self.w.family(RegClass::F32, format!("%minus_{}_", dst.0), safe.len);
                for i in 0..safe.len {
                    self.w.ins(format!("neg.f32 {}, {}", minus.at(i), safe.at(i)));
                }
                let (dt, st) = (self.kernel.ty(*dst), self.kernel.ty(*sub));
                for i in d.written() {
                    let row = minus.at(self.operand_index(st, dt, i));
                    self.w.ins(format!("fma.rn.f32 {}, {}, {}, {row}", d.at(i), x.at(i), c.at(0)));
                    self.w.ins(format!("ex2.approx.ftz.f32 {}, {}", d.at(i), d.at(i)));
                }
                Ok(())
            }
            Op::LogSumExp { dst, max, sum } => {
                let (d, m, l) = (self.regs_of(*dst), self.regs_of(*max), self.regs_of(*sum));
                let empty = self.w.temp(RegClass::Pred);
                for i in 0..d.len {
                    // (m + log2 l) · ln 2; a row with no key (l = 0) reports +inf.
                    self.w.ins(format!("lg2.approx.f32 {}, {}", d.at(i), l.at(i)));
                    self.w.ins(format!("add.f32 {0}, {0}, {1}", d.at(i), m.at(i)));
                    self.w.ins(format!("mul.f32 {0}, {0}, {1}", d.at(i), f32_hex(std::f32::consts::LN_2)));
                    self.w.ins(format!("setp.eq.f32 {empty}, {}, 0f00000000", l.at(i)));
                    self.w.ins(format!("selp.f32 {0}, 0f7F800000, {0}, {empty}", d.at(i)));
                }
                Ok(())
            }
            Op::ToHalf { dst, src } => self.to_half(*dst, *src),
            Op::Reduce { dst, op, src } => self.row_reduce(*dst, *op, *src),
            Op::ColReduce { dst, op, src } => self.col_reduce(*dst, *op, *src),
            Op::Binary { dst, op, lhs, rhs } => self.binary(*dst, *op, *lhs, *rhs),
            Op::Store { dst, src, via } => self.store(dst, *src, *via),
            Op::Scatter { param, indices, src, keep } => self.scatter(*param, indices, *src, *keep),
            Op::MergeSplits { max, sum, acc } => self.merge_splits(*max, *sum, *acc),
            Op::CombineCtas { max, sum, acc } => self.combine_ctas(*max, *sum, *acc),
        }
    }

    /// The length of runtime dim `d`: inside the work loop, this work item's sequence length
    /// for a ragged dim; otherwise the dim's parameter.
    fn dim_reg(&self, d: RtDim) -> String {
        match self.sequence_of(d) {
            Some(r) => r.len.clone(),
            None => self.dim_regs[d.0 as usize].clone(),
        }
    }

    /// Inside a work loop, the ragged dim `d`'s registers for this work item's sequence.
    fn sequence_of(&self, d: RtDim) -> Option<&RaggedDim> {
        self.ragged.iter().find(|r| self.in_work_item && r.seq == d)
    }

    fn extent_reg(&mut self, e: &LoopExtent) -> String {
        let dim = self.dim_reg(e.dim);
        let Some(t) = e.per_tile else { return dim };
        // Tiles cover the axis; the last one may be partial (its tail is masked).
        let (size, r) = (t.size(&self.cfg), self.w.temp(RegClass::B32));
        self.w.ins(format!("add.u32 {r}, {dim}, {}", size - 1));
        self.w.div_u32_by(&r, &r, size);
        if let Some(c) = e.causal {
            // Causal: stop after the tile holding key (q_tile + 1)·TILE_M − 1 + SK − S, the last
            // one the Q tile's bottom row sees (signed: with S > SK a Q tile may see none).
            self.w.comment("causal: skip the K/V tiles past this Q tile's diagonal");
            let q_tile = self.regs_of(c.q_tile).at(0);
            let q_len = self.dim_reg(c.q_dim);
            let last = self.w.temp(RegClass::B32);
            self.w.ins(format!(
                "mad.lo.u32 {last}, {q_tile}, {}, {}",
                self.cfg.tile_m,
                self.cfg.tile_m + size - 1
            ));
            self.w.ins(format!("add.u32 {last}, {last}, {dim}"));
            self.w.ins(format!("sub.u32 {last}, {last}, {q_len}"));
            self.w.ins(format!("max.s32 {last}, {last}, 0"));
            self.w.div_u32_by(&last, &last, size);
            self.w.ins(format!("min.u32 {r}, {r}, {last}"));
        }
        r
    }

    /// The swizzle key `row % P` from `row8` = row % 8 (itself when the period is 8).
    fn swizzle_key(&mut self, row8: &str) -> String {
        match swizzle_period(&self.cfg) {
            8 => row8.to_string(),
            period => {
                let key = self.w.temp(RegClass::B32);
                self.w.ins(format!("and.b32 {key}, {row8}, {}", period - 1));
                key
            }
        }
    }

    /// Grouped-query attention: the K/V head `h / (H / HKV)` of query head register `h`.
    fn head_group(&mut self, h: &str, g: HeadGroup) -> String {
        let (of, to) = (self.dim_regs[g.of.0 as usize].clone(), self.dim_regs[g.to.0 as usize].clone());
        let head = self.w.temp(RegClass::B32);
        self.w.ins(format!("div.u32 {head}, {of}, {to}"));
        self.w.ins(format!("div.u32 {head}, {h}, {head}"));
        head
    }

    /// The work loop: CTA `c` takes work items c, c + gridDim.x, ...; each item is decomposed
    /// into one index per loop variable (the last varies fastest, so neighbouring CTAs share K/V).
    /// Causal kernels walk Q tiles from the last: those see the most K/V tiles, and starting
    /// them first keeps the long CTAs from running alone at the end.
    fn tiles_loop(
        &mut self,
        vars: &[Value],
        extents: &[LoopExtent],
        body: &Block,
    ) -> Result<(), CodegenError> {
        self.work_vars = vars.to_vec();
        let counts: Vec<String> = extents.iter().map(|e| self.extent_reg(e)).collect();
        let total = self.w.temp(RegClass::B32);
        self.w.ins(format!("mov.u32 {total}, 1"));
        for c in &counts {
            self.w.ins(format!("mul.lo.u32 {total}, {total}, {c}"));
        }
        // Split-KV across CTAs: `kv_ctas` CTAs a work item, its splits on neighbouring CTAs.
        let kv_ctas = self.cfg.kv_ctas;
        let items = (kv_ctas > 1).then(|| {
            let items = self.w.named(RegClass::B32, "%work_items");
            self.w.ins(format!("mov.u32 {items}, {total}"));
            self.w.ins(format!("mul.lo.u32 {total}, {total}, {kv_ctas}"));
            items
        });
        let work = self.w.temp(RegClass::B32);
        self.w.ins(format!("mov.u32 {work}, %ctaid.x"));
        let (top, end) = (self.w.label("tiles"), self.w.label("tiles_end"));
        self.w.place_label(&top);
        self.w.indent();
        let done = self.w.temp(RegClass::Pred);
        self.w.ins(format!("setp.ge.u32 {done}, {work}, {total}"));
        self.w.ins(format!("@{done} bra.uni {end}"));
        let rest = self.w.temp(RegClass::B32);
        self.w.ins(format!("mov.u32 {rest}, {work}"));
        // Variable-length batches skip work items past their sequence's end, to `next`;
        // sequence lengths (`SeqLens`, read by every variant) load each work item's too; the CTAs
        // of a split work item that are not its last to finish leave it there.
        let next = (self.cfg.varlen || self.ragged.iter().any(|r| r.lengths) || items.is_some())
            .then(|| self.w.label("tiles_next"));
        self.combine = items.map(|items| {
            self.w.comment(format!(
                "split across CTAs: this CTA is split (work % {kv_ctas}) of work item (work / {kv_ctas})"
            ));
            let (split, item) =
                (self.w.named(RegClass::B32, "%cta_split"), self.w.named(RegClass::B32, "%work_item"));
            self.w.rem_u32_by(&split, &rest, kv_ctas);
            self.w.div_u32_by(&item, &rest, kv_ctas);
            self.w.ins(format!("mov.u32 {rest}, {item}"));
            CombineRegs { split, item, items, next: next.clone().unwrap_or_default() }
        });
        for (i, v) in vars.iter().enumerate().rev() {
            let r = self.regs_of(*v).at(0);
            if i == 0 {
                self.w.ins(format!("mov.u32 {r}, {rest}"));
            } else {
                self.w.ins(format!("rem.u32 {r}, {rest}, {}", counts[i]));
                self.w.ins(format!("div.u32 {rest}, {rest}, {}", counts[i]));
            }
            if self.cfg.causal && extents[i].per_tile == Some(TileDim::M) {
                self.w.comment("causal: the longest Q tiles first");
                self.w.ins(format!("sub.u32 {r}, {}, {r}", counts[i]));
                self.w.ins(format!("sub.u32 {r}, {r}, 1"));
            }
        }
        if let Some(next) = &next {
            self.work_item_sequences(vars, extents, next);
        }
        // Grouped K/V heads of this work item, once (not at every copy of the K/V loop).
        let mut groups = vec![];
        collect_head_groups(body, &mut groups);
        for (v, g) in groups {
            if vars.contains(&v) && !self.grouped.contains_key(&(v, g)) {
                self.w.comment("grouped-query attention: this work item's K/V head");
                let h = self.regs_of(v).at(0);
                let head = self.head_group(&h, g);
                self.grouped.insert((v, g), head);
            }
        }
        self.in_work_item = next.is_some();
        self.block(body)?;
        self.in_work_item = false;
        self.combine = None;
        if let Some(next) = &next {
            self.w.place_label(next);
        }
        let grid = self.w.temp(RegClass::B32);
        self.w.ins(format!("mov.u32 {grid}, %nctaid.x"));
        self.w.ins(format!("add.u32 {work}, {work}, {grid}"));
        self.w.ins(format!("bra.uni {top}"));
        self.w.dedent();
        self.w.place_label(&end);
        Ok(())
    }

    /// Variable-length batches: for each ragged dim, this work item's sequence (its first row in
    /// the packed tensors and its length) from the offsets of its batch index, loaded once. A
    /// work item whose tile starts past the end of its sequence branches to `next` (uniformly:
    /// every warp of every role computes the same answer, so counters and barriers stay in step).
    /// Optional offsets that were not given leave the dense batch: start 0, length the dim.
    fn work_item_sequences(&mut self, vars: &[Value], extents: &[LoopExtent], next: &str) {
        for r in self.ragged.clone() {
            let Some(b) = vars.iter().zip(extents).find(|(_, e)| e.dim == r.batch && e.per_tile.is_none())
            else {
                continue; // lowering requires the work loop to walk the batch
            };
            let (k, var) = (self.kernel, self.kernel.values[b.0.index()].name.clone());
            let b = self.regs_of(*b.0).at(0);
            if r.lengths {
                self.sequence_length(&r, &var, &b);
                continue;
            }
            let (name, batch_name, seq_name) =
                (&r.offsets, &k.dims[r.batch.0 as usize], &k.dims[r.seq.0 as usize]);
            self.w.comment(format!(
                "varlen ({name} given): `{seq_name}` of sequence {var} (walking `{batch_name}`) is packed rows {name}[{var}] .. {name}[{var} + 1]"
            ));
            let RaggedDim { ptr, start, len, .. } = &r;
            let dense = r.optional.then(|| {
                let (dense, absent) = (self.w.label("dense_batch"), self.w.temp(RegClass::Pred));
                self.w.ins(format!("mov.u32 {start}, 0"));
                self.w.ins(format!("mov.u32 {len}, {}", self.dim_regs[r.seq.0 as usize]));
                self.w.ins(format!("setp.eq.u64 {absent}, {ptr}, 0"));
                self.w.ins(format!("@{absent} bra.uni {dense}"));
                dense
            });
            let (addr, end) = (self.w.temp(RegClass::B64), self.w.temp(RegClass::B32));
            self.w.ins(format!("mul.wide.u32 {addr}, {b}, 4"));
            self.w.ins(format!("add.u64 {addr}, {ptr}, {addr}"));
            self.w.ins(format!("ld.global.nc.u32 {start}, [{addr}]"));
            self.w.ins(format!("ld.global.nc.u32 {end}, [{addr}+4]"));
            self.w.ins(format!("sub.u32 {len}, {end}, {start}"));
            if let Some(dense) = dense {
                self.w.place_label(&dense);
            }
        }
        for (v, e) in vars.iter().zip(extents) {
            let (Some(t), Some(r)) = (e.per_tile, self.ragged.iter().find(|r| r.seq == e.dim)) else {
                continue;
            };
            let len = r.len.clone();
            self.w.comment("varlen: this tile starts past the end of its sequence");
            let (first, past) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::Pred));
            let tile = self.regs_of(*v).at(0);
            self.w.ins(format!("mul.lo.u32 {first}, {tile}, {}", t.size(&self.cfg)));
            self.w.ins(format!("setp.ge.u32 {past}, {first}, {len}"));
            self.w.ins(format!("@{past} bra.uni {next}"));
        }
    }

    /// `SeqLens`: the length of sequence `b` (register `b`, named `var`), clamped into
    /// `[0, dim]` so that no row past the tensors (or a paged cache's capacity) is ever read; the
    /// dim itself when optional lengths were not given.
    fn sequence_length(&mut self, r: &RaggedDim, var: &str, b: &str) {
        let (name, seq_name) = (&r.offsets, self.kernel.dims[r.seq.0 as usize].clone());
        let dim = self.dim_regs[r.seq.0 as usize].clone();
        self.w.comment(format!(
            "lengths ({name}): `{seq_name}` of sequence {var} is rows 0 .. min({name}[{var}], {seq_name})"
        ));
        let (ptr, len) = (&r.ptr, &r.len);
        let given = r.optional.then(|| {
            let (given, absent) = (self.w.label("lengths_given"), self.w.temp(RegClass::Pred));
            self.w.ins(format!("mov.u32 {len}, {dim}"));
            self.w.ins(format!("setp.eq.u64 {absent}, {ptr}, 0"));
            self.w.ins(format!("@{absent} bra.uni {given}"));
            given
        });
        let addr = self.w.temp(RegClass::B64);
        self.w.ins(format!("mul.wide.u32 {addr}, {b}, 4"));
        self.w.ins(format!("add.u64 {addr}, {ptr}, {addr}"));
        self.w.ins(format!("ld.global.nc.u32 {len}, [{addr}]"));
        self.w.ins(format!("max.s32 {len}, {len}, 0"));
        self.w.ins(format!("min.u32 {len}, {len}, {dim}"));
        if let Some(given) = given {
            self.w.place_label(&given);
        }
    }

    /// A range loop: `var` from bound `from` while below bound `to`, one uniform branch a turn.
    fn range_loop(
        &mut self,
        var: Value,
        from: BoundId,
        to: BoundId,
        body: &Block,
    ) -> Result<(), CodegenError> {
        let g = self.regs_of(var).at(0);
        let start = self.loop_bound(from)?;
        let end = self.loop_bound(to)?;
        self.w.ins(format!("mov.b32 {g}, {start}"));
        self.counted_loop("range", &g, &end, "s32", body)
    }

    /// `while counter < end { body; counter += 1 }`, one uniform branch a turn (`ty`: the
    /// comparison's type, `u32` or `s32`); labels named after `name`.
    fn counted_loop(
        &mut self,
        name: &str,
        counter: &str,
        end: &str,
        ty: &str,
        body: &Block,
    ) -> Result<(), CodegenError> {
        let (top, done_label) = (self.w.label(name), self.w.label(&format!("{name}_end")));
        self.w.place_label(&top);
        self.w.indent();
        let done = self.w.temp(RegClass::Pred);
        self.w.ins(format!("setp.ge.{ty} {done}, {counter}, {end}"));
        self.w.ins(format!("@{done} bra.uni {done_label}"));
        self.block(body)?;
        self.w.ins(format!("add.{ty} {counter}, {counter}, 1"));
        self.w.ins(format!("bra.uni {top}"));
        self.w.dedent();
        self.w.place_label(&done_label);
        Ok(())
    }

    fn pipeline_loop(
        &mut self,
        var: Value,
        extent: &LoopExtent,
        prologue: &Block,
        body: &Block,
        epilogue: &Block,
    ) -> Result<(), CodegenError> {
        let count = self.extent_reg(extent);
        let i = self.regs_of(var).at(0);
        self.pipeline_var = Some(var);
        if let Some(to) = extent.to {
            self.w.comment(format!("the source's range: tiles before bound #{}", to.0));
            let end = self.loop_bound(to)?;
            self.w.ins(format!("max.s32 {end}, {end}, 0"));
            self.w.ins(format!("min.u32 {count}, {count}, {end}"));
        }
        let start = match extent.from {
            Some(from) => {
                self.w.comment(format!("the source's range: tiles from bound #{}", from.0));
                let start = self.loop_bound(from)?;
                self.w.ins(format!("max.s32 {start}, {start}, 0"));
                Some(start)
            }
            None => None,
        };
        match extent.skip {
            Some(mask) => {
                let first = self.mask_loop_bounds(mask, start.as_deref(), &count)?;
                self.w.ins(format!("mov.u32 {i}, {first}"));
            }
            None => self.w.ins(format!("mov.u32 {i}, 0")),
        }
        if let Some(start) = &start {
            self.w.ins(format!("max.u32 {i}, {i}, {start}"));
        }
        if let Some(c) = self.combine.clone() {
            // Split across CTAs: this CTA walks the `split`-th of kv_ctas equal shares of the
            // tiles `i .. count` (a share may be empty; its state then stays empty).
            let kv_ctas = self.cfg.kv_ctas;
            self.w.comment(format!("split across CTAs: this CTA's share (1 of {kv_ctas}) of the K/V tiles"));
            let (share, first) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
            self.w.ins(format!("max.u32 {count}, {count}, {i}"));
            self.w.ins(format!("sub.u32 {share}, {count}, {i}"));
            self.w.ins(format!("add.u32 {share}, {share}, {}", kv_ctas - 1));
            self.w.div_u32_by(&share, &share, kv_ctas);
            self.w.ins(format!("mad.lo.u32 {first}, {}, {share}, {i}", c.split));
            self.w.ins(format!("add.u32 {share}, {first}, {share}"));
            self.w.ins(format!("min.u32 {count}, {count}, {share}"));
            self.w.ins(format!("mov.u32 {i}, {first}"));
        }
        self.hoist_mask_tables(body)?;
        self.pipeline_count = Some(count.clone());
        self.w.comment("pipeline prologue");
        self.block(prologue)?;
        self.finish_deferred_loads()?;
        if let Some(p) = self.pingpong.as_mut() {
            p.turn = Some(Turn::Waiting);
        }
        self.counted_loop("pipeline", &i, &count, "u32", body)?;
        if let Some(p) = self.pingpong.as_mut() {
            if p.turn.take() == Some(Turn::Issuing) {
                return Err(CodegenError::Internal(
                    "pingpong: a K/V loop issues matmuls it never waits for".into(),
                ));
            }
        }
        self.w.comment("pipeline epilogue");
        self.block(epilogue)?;
        self.pipeline_count = None;
        self.hoisted_rows.clear();
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Memory

    /// Global address (u64) of the first row of the tile that `access` selects, and the byte
    /// step from one of its rows to the next; `seq` replaces its sequence-tile coordinate when
    /// given (copies for later iterations). Offsets are 64-bit: `b·stride_b + h·stride_h +
    /// row·stride_s`, each stride in bytes.
    fn tile_address(
        &mut self,
        access: &TileAccess,
        rows: u32,
        seq: Option<&str>,
    ) -> Result<GlobalTile, CodegenError> {
        let c = self.tile_coords(access, seq);
        let tensor = self.tensors[access.param].clone();
        let Some([stride_b, stride_h, stride_s]) = tensor.as_ref().map(|t| &t.strides[..]) else {
            return Err(CodegenError::Internal(
                "a tile of something other than a [B, H, S, D] tensor".into(),
            ));
        };
        if let Some(table) = access.pages {
            return self.paged_tile_address(access, table, &c, rows);
        }
        let first_row = self.w.temp(RegClass::B32);
        let dims = self.kernel.tensor(access.param).map(|t| t.dims);
        match dims.and_then(|d| self.packed_start(d[2])) {
            // A ragged sequence starts at its first packed row (the batch stride is 0).
            Some(start) => self.w.ins(format!("mad.lo.u32 {first_row}, {}, {rows}, {start}", c[2])),
            None => self.w.ins(format!("mul.lo.u32 {first_row}, {}, {rows}", c[2])),
        }
        let (off, part) = (self.w.temp(RegClass::B64), self.w.temp(RegClass::B64));
        self.w.ins(format!("mul.wide.u32 {off}, {}, {stride_b}", c[0]));
        self.w.ins(format!("mul.wide.u32 {part}, {}, {stride_h}", c[1]));
        self.w.ins(format!("add.u64 {off}, {off}, {part}"));
        self.w.ins(format!("mul.wide.u32 {part}, {first_row}, {stride_s}"));
        self.w.ins(format!("add.u64 {off}, {off}, {part}"));
        let addr = self.w.temp(RegClass::B64);
        let ptr = tensor.as_ref().map_or("", |t| &t.ptr);
        self.w.ins(format!("add.u64 {addr}, {ptr}, {off}"));
        Ok(GlobalTile { addr, row_stride: stride_s.clone(), pages: None })
    }

    /// [`Emitter::tile_address`] of a paged tile: the head's row 0 of page 0, and what each
    /// row's copy needs to find its page (`c`: the tile's coordinates).
    fn paged_tile_address(
        &mut self,
        access: &TileAccess,
        table: usize,
        c: &[String],
        rows: u32,
    ) -> Result<GlobalTile, CodegenError> {
        let missing = || CodegenError::Internal("a paged tile without its tensor or page table".into());
        let tensor = self.tensors[access.param].clone().ok_or_else(missing)?;
        let table_ptr = self.tensors[table].clone().ok_or_else(missing)?;
        let (Some(dims), Some(Param::Table(t))) =
            (self.kernel.tensor(access.param).map(|t| t.dims), self.kernel.params.get(table))
        else {
            return Err(missing());
        };
        let entries = self.dim_reg(t.dims[1]);
        let (pool, page_rows) = (self.dim_reg(dims[0]), self.dim_reg(dims[2]));
        self.w.comment(format!(
            "paged tile: row j of the sequence is row j % PAGE of page {}[{}, j / PAGE]",
            t.name,
            self.kernel.values[access.coords[0].index()].name
        ));
        let first_row = self.w.temp(RegClass::B32);
        self.w.ins(format!("mul.lo.u32 {first_row}, {}, {rows}", c[2]));
        let (table_row, addr) = (self.w.temp(RegClass::B64), self.w.temp(RegClass::B64));
        let table_offset = self.axis_offset(&c[0], &table_ptr.strides[0]);
        self.w.ins(format!("add.u64 {table_row}, {}, {table_offset}", table_ptr.ptr));
        self.w.ins(format!("mul.wide.u32 {addr}, {}, {}", c[1], tensor.strides[1]));
        self.w.ins(format!("add.u64 {addr}, {}, {addr}", tensor.ptr));
        Ok(GlobalTile {
            addr,
            row_stride: tensor.strides[2].clone(),
            pages: Some(PagedRows {
                table_row,
                entry_stride: table_ptr.strides[1].clone(),
                entries,
                first_row,
                page_rows,
                pool,
                page_stride: tensor.strides[0].clone(),
            }),
        })
    }

    /// The registers of the tile indices `access` selects (batch, head, sequence tile), its
    /// sequence-tile index replaced by `seq` if given, grouped heads divided down (GQA).
    fn tile_coords(&mut self, access: &TileAccess, seq: Option<&str>) -> Vec<String> {
        let mut c: Vec<String> = access.coords.iter().map(|v| self.regs_of(*v).at(0)).collect();
        if let Some(seq) = seq {
            c[2] = seq.to_string();
        }
        for axis in 0..c.len() {
            if let Some(g) = access.group(axis) {
                c[axis] = match self.grouped.get(&(access.coords[axis], g)) {
                    Some(head) => head.clone(),
                    None => self.head_group(&c[axis], g),
                };
            }
        }
        c
    }

    fn tile_rows(&self, access: &TileAccess) -> u32 {
        match self.kernel.ty(access.coords[2]) {
            Type::Index { tile: Some(t), .. } => t.size(&self.cfg),
            _ => 1,
        }
    }

    /// `team` copies rows `first_row .. first_row + rows` of a `[.][D]` tile from `global` (the
    /// tile's first row) into the same rows of the buffer at `smem_offset`, with 16-byte
    /// cp.async, the chunk index swizzled by row % 8.
    fn copy_tile_async(
        &mut self,
        global: &GlobalTile,
        smem_offset: &str,
        first_row: Option<&str>,
        rows: u32,
        team: &Team,
        valid_rows: &str,
        wgmma_rows: Option<u32>,
    ) {
        let cfg = self.cfg;
        let blocks = self.column_blocks(wgmma_rows);
        let cpr = chunks_per_row(&cfg);
        // Each pass copies `rows_per_pass` whole rows; when the team is not a multiple of the
        // chunks of a row (D = 96: 12 chunks), the threads past the last whole row sit out.
        let rows_per_pass = team.threads / cpr;
        let passes = rows.div_ceil(rows_per_pass);
        let (team_row, chunk) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.div_u32_by(&team_row, &team.index, cpr);
        self.w.rem_u32_by(&chunk, &team.index, cpr);
        // This thread's chunk in row 0 of the tile; each pass adds only its row's offset.
        let chunk_base = self.global_chunk_base(global, &chunk);
        let active = (team.threads % cpr != 0).then(|| {
            let p = self.w.temp(RegClass::Pred);
            self.w.ins(format!("setp.lt.u32 {p}, {}, {}", team.index, rows_per_pass * cpr));
            p
        });
        // A paged tile of whole 16-row blocks, from a multiple of 16: one page lookup a block.
        if let Some(pages) = &global.pages {
            let geometry = PageGeometry {
                rows,
                page_rows: pages.page_rows.clone(),
                entry_stride: pages.entry_stride.clone(),
                entries: pages.entries.clone(),
            };
            let whole_blocks = first_row.is_none()
                && rows.is_multiple_of(16)
                && 16u32.is_multiple_of(rows_per_pass)
                && active.is_none();
            if whole_blocks && self.page_cache_fits(&geometry) {
                let lanes = CopyLanes {
                    team_row: &team_row,
                    chunk: &chunk,
                    chunk_base: &chunk_base,
                    rows_per_pass,
                    swizzle_blocks: blocks,
                };
                self.copy_paged_blocks(pages, &global.row_stride, smem_offset, rows, &lanes, valid_rows);
                return;
            }
        }
        // A paged tile: this thread's first row's page entry and row in its page, by one
        // division; each later pass steps them on by `rows_per_pass` rows.
        let page_pos = global.pages.as_ref().map(|pages| {
            let (j, entry, in_page) =
                (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
            self.w.ins(format!("add.u32 {j}, {}, {team_row}", pages.first_row));
            if let Some(first) = first_row {
                self.w.ins(format!("add.u32 {j}, {j}, {first}"));
            }
            self.page_position([&entry, &in_page], &j, &pages.page_rows);
            (entry, in_page)
        });
        for pass in 0..passes {
            if let (Some((entry, in_page)), Some(pages), true) = (&page_pos, &global.pages, pass > 0) {
                self.step_page_position([entry, in_page], rows_per_pass, &pages.page_rows);
            }
            // Row within the copied range, then within the tile.
            let local = self.w.temp(RegClass::B32);
            self.w.ins(format!("add.u32 {local}, {team_row}, {}", pass * rows_per_pass));
            let guard = match ((pass + 1) * rows_per_pass > rows, &active) {
                (false, None) => String::new(),
                (false, Some(a)) => format!("@{a} "),
                (true, active) => {
                    let p = self.w.temp(RegClass::Pred);
                    self.w.ins(format!("setp.lt.u32 {p}, {local}, {rows}"));
                    if let Some(a) = active {
                        self.w.ins(format!("and.pred {p}, {p}, {a}"));
                    }
                    format!("@{p} ")
                }
            };
            let row = match first_row {
                Some(first) => {
                    let r = self.w.temp(RegClass::B32);
                    self.w.ins(format!("add.u32 {r}, {local}, {first}"));
                    r
                }
                None => local,
            };
            // Rows past the end of the sequence are zero-filled (source size 0, read from row 0).
            let inside = self.w.temp(RegClass::Pred);
            self.w.ins(format!("setp.lt.u32 {inside}, {row}, {valid_rows}"));
            // The source address and size: 16 bytes, or 0 (zero fill) outside the sequence.
            let (gaddr, size) = match &global.pages {
                None => {
                    let (src_row, size) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
                    self.w.ins(format!("selp.b32 {src_row}, {row}, 0, {inside}"));
                    self.w.ins(format!("selp.b32 {size}, 16, 0, {inside}"));
                    let gaddr = self.w.temp(RegClass::B64);
                    self.w.ins(format!("mul.wide.u32 {gaddr}, {src_row}, {}", global.row_stride));
                    self.w.ins(format!("add.u64 {gaddr}, {chunk_base}, {gaddr}"));
                    (gaddr, size)
                }
                // The page lookup may clear `inside` (an entry outside the table or the pool).
                Some(pages) => {
                    let (entry, in_page) = page_pos.clone().expect("a paged tile's page position");
                    let gaddr = self.paged_row_address(
                        pages,
                        &global.row_stride,
                        &chunk_base,
                        [&entry, &in_page],
                        &inside,
                    );
                    let size = self.w.temp(RegClass::B32);
                    self.w.ins(format!("selp.b32 {size}, 16, 0, {inside}"));
                    (gaddr, size)
                }
            };
            let saddr = self.tile_chunk_address(smem_offset, &row, &chunk, blocks);
            self.w.ins(format!("{guard}cp.async.cg.shared.global [{saddr}], [{gaddr}], 16, {size}"));
        }
    }

    /// A paged copy in whole 16-row blocks ([`Emitter::copy_tile_async`] of a paged tile that
    /// starts at a multiple of 16 and copies whole blocks): a page holds a multiple of 16 rows
    /// (the launcher checks), so the 16 rows of a block lie in one page, and each thread needs
    /// one page a block, not one a row. The pages come from the page cache where an earlier copy
    /// looked them up or loaded them ahead, else from the page table; after issuing its copies
    /// the thread loads the pages of the next copy's blocks into the cache. A block lying past
    /// the sequence or whose entry lies past the table's row, or whose page lies outside the
    /// pool, is zero-filled and nothing is read for it, as are rows past the sequence.
    fn copy_paged_blocks(
        &mut self,
        pages: &PagedRows,
        row_stride: &str,
        smem_offset: &str,
        rows: u32,
        lanes: &CopyLanes,
        valid_rows: &str,
    ) {
        let PagedRows { first_row: start, table_row, page_rows, pool, page_stride, .. } = pages;
        let cache = self.page_cache.as_ref().expect("a page cache that fits the copy");
        let (current, next) = (cache.current.clone(), cache.next.clone());
        self.w.comment("paged copy in 16-row blocks: a block's rows lie in one page, looked up once");
        let hit_current = self.keys_match(&current, start, table_row);
        let hit_next = self.keys_match(&next, start, table_row);
        let (take_next, cached) = (self.w.temp(RegClass::Pred), self.w.temp(RegClass::Pred));
        self.w.ins(format!("not.pred {take_next}, {hit_current}"));
        self.w.ins(format!("and.pred {take_next}, {take_next}, {hit_next}"));
        self.w.ins(format!("or.pred {cached}, {hit_current}, {hit_next}"));
        for (to, from) in current.registers().into_iter().zip(next.registers()).skip(2) {
            self.w.ins(format!("@{take_next} mov.u32 {to}, {from}"));
        }
        self.w.ins(format!("mov.u32 {}, {start}", current.row));
        self.w.ins(format!("mov.u64 {}, {table_row}", current.table));
        let looked_up = self.w.label("pages_looked_up");
        self.w.ins(format!("@{cached} bra.uni {looked_up}"));
        self.w.comment(
            "page cache miss: the first block's entry by one division, each block's page from the table",
        );
        self.page_position([&current.entry, &current.in_page], start, page_rows);
        self.load_block_pages(pages, &current, 0, valid_rows);
        self.w.place_label(&looked_up);

        // Row `team_row + j * rows_per_pass` of a block, in bytes from the block's first row.
        let passes_per_block = 16 / lanes.rows_per_pass;
        let row_offsets: Vec<String> = (0..passes_per_block)
            .map(|j| {
                let (row, offset) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B64));
                self.w.ins(format!("add.u32 {row}, {}, {}", lanes.team_row, j * lanes.rows_per_pass));
                self.w.ins(format!("mul.wide.u32 {offset}, {row}, {row_stride}"));
                offset
            })
            .collect();
        let (entry, in_page) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.ins(format!("mov.u32 {entry}, {}", current.entry));
        self.w.ins(format!("mov.u32 {in_page}, {}", current.in_page));
        for (block, page) in current.pages.iter().enumerate() {
            if block > 0 {
                self.step_page_position([&entry, &in_page], 16, page_rows);
            }
            // Unsigned: `-1` (not looked up) and a negative entry are outside the pool too.
            let ok = self.w.temp(RegClass::Pred);
            self.w.ins(format!("setp.lt.u32 {ok}, {page}, {pool}"));
            let block_addr =
                self.page_chunk_address(page_stride, row_stride, lanes.chunk_base, [page, &in_page], &ok);
            for (j, row_offset) in row_offsets.iter().enumerate() {
                let row = self.w.temp(RegClass::B32);
                let first = block as u32 * 16 + j as u32 * lanes.rows_per_pass;
                self.w.ins(format!("add.u32 {row}, {}, {first}", lanes.team_row));
                let (inside, size, gaddr) =
                    (self.w.temp(RegClass::Pred), self.w.temp(RegClass::B32), self.w.temp(RegClass::B64));
                self.w.ins(format!("setp.lt.u32 {inside}, {row}, {valid_rows}"));
                self.w.ins(format!("and.pred {inside}, {inside}, {ok}"));
                self.w.ins(format!("selp.b32 {size}, 16, 0, {inside}"));
                self.w.ins(format!("add.u64 {gaddr}, {block_addr}, {row_offset}"));
                let saddr = self.tile_chunk_address(smem_offset, &row, lanes.chunk, lanes.swizzle_blocks);
                self.w.ins(format!("cp.async.cg.shared.global [{saddr}], [{gaddr}], 16, {size}"));
            }
        }

        self.w.comment("page cache: load the pages of the next copy's blocks while this copy is in flight");
        let ahead = self.w.temp(RegClass::B32);
        self.w.ins(format!("add.u32 {ahead}, {start}, {rows}"));
        let have = self.keys_match(&next, &ahead, table_row);
        let loaded = self.w.label("pages_ahead");
        self.w.ins(format!("@{have} bra.uni {loaded}"));
        self.step_page_position([&entry, &in_page], 16, page_rows);
        self.w.ins(format!("mov.u32 {}, {entry}", next.entry));
        self.w.ins(format!("mov.u32 {}, {in_page}", next.in_page));
        self.load_block_pages(pages, &next, rows, valid_rows);
        self.w.ins(format!("mov.u32 {}, {ahead}", next.row));
        self.w.ins(format!("mov.u64 {}, {table_row}", next.table));
        self.w.place_label(&loaded);
    }

    /// Logical row `row`'s page entry (its index in the sequence's table row) and row in that
    /// page, into `entry` and `in_page`: one division by the page size.
    fn page_position(&mut self, [entry, in_page]: [&str; 2], row: &str, page_rows: &str) {
        self.w.ins(format!("div.u32 {entry}, {row}, {page_rows}"));
        self.w.ins(format!("mul.lo.u32 {in_page}, {entry}, {page_rows}"));
        self.w.ins(format!("sub.u32 {in_page}, {row}, {in_page}"));
    }

    /// Steps a page entry and row in its page on by `rows` rows, in place. Pages hold a multiple
    /// of 16 rows (the launcher checks), so the step crosses at most `ceil(rows / 16)` page ends.
    fn step_page_position(&mut self, [entry, in_page]: [&str; 2], rows: u32, page_rows: &str) {
        self.w.ins(format!("add.u32 {in_page}, {in_page}, {rows}"));
        for _ in 0..rows.div_ceil(16) {
            let past = self.w.temp(RegClass::Pred);
            self.w.ins(format!("setp.ge.u32 {past}, {in_page}, {page_rows}"));
            self.w.ins(format!("@{past} sub.u32 {in_page}, {in_page}, {page_rows}"));
            self.w.ins(format!("@{past} add.u32 {entry}, {entry}, 1"));
        }
    }

    /// Loads the pages of `target`'s blocks from the page table (its first block's entry and
    /// row in page set), the blocks starting `offset` rows past the copy's first row, of which
    /// `valid_rows` lie in the sequence: a block past the sequence or whose entry lies past the
    /// table's row gets `-1` and no load.
    fn load_block_pages(&mut self, pages: &PagedRows, target: &CachedPages, offset: u32, valid_rows: &str) {
        let (entry, in_page) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.ins(format!("mov.u32 {entry}, {}", target.entry));
        self.w.ins(format!("mov.u32 {in_page}, {}", target.in_page));
        for (block, page) in target.pages.iter().enumerate() {
            if block > 0 {
                self.step_page_position([&entry, &in_page], 16, &pages.page_rows);
            }
            let read = self.w.temp(RegClass::Pred);
            self.w.ins(format!("setp.gt.u32 {read}, {valid_rows}, {}", offset + block as u32 * 16));
            self.read_page(pages, &entry, &read, page, "-1");
        }
    }

    /// Whether the page cache holds a copy of `geometry`'s pages (made on the first paged
    /// copy; a copy of another geometry looks its pages up row by row).
    fn page_cache_fits(&mut self, geometry: &PageGeometry) -> bool {
        if let Some(cache) = &self.page_cache {
            return cache.geometry == *geometry;
        }
        let blocks = geometry.rows / 16;
        let mut pages = |which: &str| CachedPages {
            row: self.w.named(RegClass::B32, &format!("%pages_{which}_row")),
            table: self.w.named(RegClass::B64, &format!("%pages_{which}_table")),
            entry: self.w.named(RegClass::B32, &format!("%pages_{which}_entry")),
            in_page: self.w.named(RegClass::B32, &format!("%pages_{which}_in_page")),
            pages: (0..blocks).map(|b| self.w.named(RegClass::B32, &format!("%pages_{which}_{b}"))).collect(),
        };
        let (current, next) = (pages("current"), pages("next"));
        self.page_cache = Some(PageCache { geometry: geometry.clone(), current, next });
        true
    }

    /// Whether `pages`' keys are a copy's first row `start` and table row `table_row`.
    fn keys_match(&mut self, pages: &CachedPages, start: &str, table_row: &str) -> String {
        let (same_row, same_table) = (self.w.temp(RegClass::Pred), self.w.temp(RegClass::Pred));
        self.w.ins(format!("setp.eq.u32 {same_row}, {}, {start}", pages.row));
        self.w.ins(format!("setp.eq.u64 {same_table}, {}, {table_row}", pages.table));
        self.w.ins(format!("and.pred {same_row}, {same_row}, {same_table}"));
        same_row
    }

    /// The page cache's keys start out matching no copy (row `-1`) and its registers defined;
    /// written into the prologue once the body (which makes the cache) is emitted.
    fn initialize_page_cache(&mut self) {
        let Some(cache) = self.page_cache.as_ref() else { return };
        let body = self.w.take_since(self.prologue_end);
        self.w.comment("page cache: no pages looked up yet");
        for pages in [&cache.current, &cache.next] {
            self.w.ins(format!("mov.u64 {}, 0", pages.table));
            for reg in pages.registers().into_iter().filter(|r| *r != pages.table) {
                self.w.ins(format!("mov.u32 {reg}, -1"));
            }
        }
        self.w.blank();
        self.w.put_back(&body);
    }

    /// The global address of this thread's chunk of a paged tile's row, the row's page entry
    /// `entry` (its index in the sequence's row of the page table) and its row `in_page` in
    /// that page given: the page looked up in the page table. A row whose entry lies past the
    /// table's row or names a page outside the pool is cleared from `inside` (it is zero-filled
    /// and nothing is read for it), as are rows past the sequence (their entry is not even read).
    fn paged_row_address(
        &mut self,
        pages: &PagedRows,
        row_stride: &str,
        chunk_base: &str,
        [entry, in_page]: [&str; 2],
        inside: &str,
    ) -> String {
        let PagedRows { pool, page_stride, .. } = pages;
        let (ok, page) = (self.w.temp(RegClass::Pred), self.w.temp(RegClass::B32));
        self.read_page(pages, entry, inside, &page, "0");
        // Unsigned: a negative entry (an unused slot, often -1) is outside the pool too.
        self.w.ins(format!("setp.lt.u32 {ok}, {page}, {pool}"));
        self.w.ins(format!("and.pred {inside}, {inside}, {ok}"));
        self.page_chunk_address(page_stride, row_stride, chunk_base, [&page, in_page], inside)
    }

    /// `page = table_row[entry]` where `read` holds, `absent` otherwise; an entry past the
    /// table's row is not read (and clears `read`).
    fn read_page(&mut self, pages: &PagedRows, entry: &str, read: &str, page: &str, absent: &str) {
        let listed = self.w.temp(RegClass::Pred);
        self.w.ins(format!("setp.lt.u32 {listed}, {entry}, {}", pages.entries));
        self.w.ins(format!("and.pred {read}, {read}, {listed}"));
        let eaddr = self.axis_offset(entry, &pages.entry_stride);
        self.w.ins(format!("add.u64 {eaddr}, {}, {eaddr}", pages.table_row));
        self.w.ins(format!("mov.u32 {page}, {absent}"));
        self.w.ins(format!("@{read} ld.global.nc.u32 {page}, [{eaddr}]"));
    }

    /// The global address of this thread's chunk (`chunk_base`: in row 0 of page 0) in row
    /// `in_page` of page `page`, both taken as 0 where `valid` is clear: a real address, which
    /// a zero-size copy reads nothing at.
    fn page_chunk_address(
        &mut self,
        page_stride: &str,
        row_stride: &str,
        chunk_base: &str,
        [page, in_page]: [&str; 2],
        valid: &str,
    ) -> String {
        let (page_or_0, in_page_or_0) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
        self.w.ins(format!("selp.b32 {page_or_0}, {page}, 0, {valid}"));
        self.w.ins(format!("selp.b32 {in_page_or_0}, {in_page}, 0, {valid}"));
        let (addr, part) = (self.w.temp(RegClass::B64), self.w.temp(RegClass::B64));
        self.w.ins(format!("mul.wide.u32 {addr}, {page_or_0}, {page_stride}"));
        self.w.ins(format!("mul.wide.u32 {part}, {in_page_or_0}, {row_stride}"));
        self.w.ins(format!("add.u64 {addr}, {addr}, {part}"));
        self.w.ins(format!("add.u64 {addr}, {chunk_base}, {addr}"));
        addr
    }

    /// Rows of the tile `access` selects (its sequence coordinate replaced by `seq` if given)
    /// that lie inside the sequence: `S - tile · rows` (more than the tile holds for all but
    /// the last tile).
    fn valid_rows(&mut self, access: &TileAccess, seq: Option<&str>) -> String {
        let tensor = self.kernel.tensor(access.param).expect("tile access of a tensor").clone();
        let len = self.dim_reg(self.kernel.access_seq_dim(access).unwrap_or(tensor.dims[2]));
        let tile = match seq {
            Some(s) => s.to_string(),
            None => self.regs_of(access.coords[2]).at(0),
        };
        let valid = self.w.temp(RegClass::B32);
        self.w.ins(format!("mul.lo.u32 {valid}, {tile}, {}", self.tile_rows(access)));
        self.w.ins(format!("sub.u32 {valid}, {len}, {valid}"));
        // A computed batch or head index outside its axis: the tile has no rows (it reads as
        // zeros and is not stored).
        for axis in 0..2 {
            if self.kernel.ty(access.coords[axis]) == Type::Int {
                // A paged tile's batch index selects a row of its page table.
                let axis_dim = match (axis, access.pages.and_then(|t| self.kernel.params.get(t))) {
                    (0, Some(Param::Table(table))) => table.dims[0],
                    _ => tensor.dims[axis],
                };
                let (index, dim) = (self.regs_of(access.coords[axis]).at(0), self.dim_reg(axis_dim));
                let outside = self.w.temp(RegClass::Pred);
                self.w.ins(format!("setp.ge.u32 {outside}, {index}, {dim}"));
                self.w.ins(format!("selp.b32 {valid}, 0, {valid}, {outside}"));
            }
        }
        valid
    }

    /// Global address (u64) of 16-byte chunk `chunk` in the first row of the tile `global`.
    fn global_chunk_base(&mut self, global: &GlobalTile, chunk: &str) -> String {
        let (chunk_bytes, base) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B64));
        self.w.ins(format!("shl.b32 {chunk_bytes}, {chunk}, 4"));
        self.w.ins(format!("cvt.u64.u32 {base}, {chunk_bytes}"));
        self.w.ins(format!("add.u64 {base}, {}, {base}", global.addr));
        base
    }

    /// Shared address (u32) of 16-byte chunk `chunk` of row `row` in the buffer at `smem_base`,
    /// swizzled: row · row_bytes + (chunk ^ row % P) · 16.
    fn shared_chunk_address(&mut self, smem_base: &str, row: &str, chunk: &str) -> String {
        let rb = row_bytes(&self.cfg);
        let smem = self.th().smem.clone();
        let swz = self.w.temp(RegClass::B32);
        self.w.ins(format!("and.b32 {swz}, {row}, {}", swizzle_period(&self.cfg) - 1));
        self.w.ins(format!("xor.b32 {swz}, {swz}, {chunk}"));
        self.w.ins(format!("shl.b32 {swz}, {swz}, 4"));
        let saddr = self.w.temp(RegClass::B32);
        self.w.ins(format!("mad.lo.u32 {saddr}, {row}, {rb}, {swz}"));
        self.w.ins(format!("add.u32 {saddr}, {saddr}, {smem}"));
        if smem_base != "0" {
            self.w.ins(format!("add.u32 {saddr}, {saddr}, {smem_base}"));
        }
        saddr
    }

    /// Shared address (u32) of 16-byte chunk `chunk` of row `row` in the tile at `smem_base`: in
    /// wgmma's column blocks of a `rows`-row tile ([`Emitter::column_blocks`]), else swizzled
    /// rows.
    fn tile_chunk_address(&mut self, smem_base: &str, row: &str, chunk: &str, blocks: Option<u32>) -> String {
        match blocks {
            Some(rows) => self.block_chunk_address(smem_base, row, chunk, rows),
            None => self.shared_chunk_address(smem_base, row, chunk),
        }
    }

    /// Shared address of the ldmatrix source for this lane: block of 16 rows starting at
    /// `row0`, even chunk `chunk0` (the lane's bit is added and the swizzle applied via the key).
    fn ldmatrix_address(
        &mut self,
        pattern: LdmatrixPattern,
        offset: &str,
        row0: &str,
        chunk0: u32,
    ) -> String {
        let (row_off, key) = self.th().ldmatrix[&pattern].clone();
        let smem = self.th().smem.clone();
        let rb = row_bytes(&self.cfg);
        let addr = self.w.temp(RegClass::B32);
        self.w.ins(format!("mad.lo.u32 {addr}, {row0}, {rb}, {row_off}"));
        let chunk = self.w.temp(RegClass::B32);
        self.w.ins(format!("xor.b32 {chunk}, {key}, {chunk0}"));
        self.w.ins(format!("shl.b32 {chunk}, {chunk}, 4"));
        self.w.ins(format!("add.u32 {addr}, {addr}, {chunk}"));
        self.w.ins(format!("add.u32 {addr}, {addr}, {smem}"));
        if offset != "0" {
            self.w.ins(format!("add.u32 {addr}, {addr}, {offset}"));
        }
        addr
    }

    fn ldmatrix_x4(&mut self, pattern: LdmatrixPattern, dst: [String; 4], addr: &str) {
        let trans = if pattern.trans() { ".trans" } else { "" };
        self.w
            .ins(format!("ldmatrix.sync.aligned.m8n8.x4{trans}.shared.b16 {{{}}}, [{addr}]", dst.join(", ")));
    }

    fn row_tile_offset(&self) -> Result<u32, CodegenError> {
        self.plan.row_tile_region.ok_or_else(|| CodegenError::Internal("no row-tile region planned".into()))
    }

    /// Split-KV: the first key of each K/V tile this warp's fragments cover, when `dim` (a
    /// fragment's axis, or a staged tile's rows) is the key axis `TILE_N`.
    fn split_key0(&self, dim: TileDim) -> Option<String> {
        match (&self.th().split, dim) {
            (Some(split), TileDim::N) => Some(split.key0.clone()),
            _ => None,
        }
    }

    /// This warp's row-tile region: the kernel's, or with split-KV its group's (a register).
    fn own_row_tile(&self) -> Result<String, CodegenError> {
        let region = self.row_tile_offset()?;
        Ok(match self.th().split.as_ref().and_then(|s| s.row_tile.clone()) {
            Some(reg) => reg,
            None => region.to_string(),
        })
    }

    /// Q tile to A-operand fragments. Each warp copies only the rows it owns into the row-tile
    /// region, waits for its own copies, and loads its fragments: no other warp is involved, so
    /// a warp barrier suffices.
    fn load_to_registers(&mut self, dst: Value, src: &TileAccess) -> Result<(), CodegenError> {
        let region = self.own_row_tile()?;
        let slot = self.plan.load_slots.get(&dst).copied().unwrap_or(0);
        let region = if slot == 0 {
            region
        } else {
            let r = self.w.temp(RegClass::B32);
            let groups = self.cfg.kv_splits.max(1);
            self.w.ins(format!("add.u32 {r}, {region}, {}", slot * groups * self.plan.row_tile_bytes));
            r
        };
        let rows = self.tile_rows(src);
        let global = self.tile_address(src, rows, None)?;
        let (warp_row0, lane) = (self.th().warp_row0.clone(), self.th().lane.clone());
        let lanes = Team { index: lane, threads: 32 };
        let valid = self.valid_rows(src, None);
        // Lanes may still be reading these rows (the previous work item's O store) when others
        // start copying into them: the warp converges first.
        self.w.ins("bar.warp.sync 0xffffffff");
        let kept = self.plan.kept_a.contains(&dst);
        let wgmma_rows = (kept && self.cfg.target == Target::Sm90a).then_some(self.cfg.tile_m);
        self.copy_tile_async(
            &global,
            &region,
            Some(&warp_row0),
            self.cfg.rows_per_warp(),
            &lanes,
            &valid,
            wgmma_rows,
        );
        self.w.ins("cp.async.commit_group");
        let load = LoadInFlight { dst, region, kept, wgmma: wgmma_rows.is_some(), younger: 0 };
        if let Some(younger) = self.defer_next_load.take() {
            self.w.comment(format!(
                "{}: copy in flight; its wait follows the K/V loop's prologue",
                self.vname(dst)
            ));
            self.deferred_loads.push(LoadInFlight { younger, ..load });
            return Ok(());
        }
        // Register loads sit outside pipeline loops, whose epilogues drain every group.
        self.land_register_load(&load)
    }

    /// A register load's copy landing: `cp.async.wait_group` (its group done, `younger`
    /// groups left in flight), the warp (or, for wgmma, the warpgroup) converged, then the
    /// tile kept where it landed or read into its fragments.
    fn land_register_load(&mut self, load: &LoadInFlight) -> Result<(), CodegenError> {
        let LoadInFlight { dst, ref region, kept, wgmma, younger } = *load;
        self.w.ins(format!("cp.async.wait_group {younger}"));
        if wgmma {
            // A wgmma reads its warpgroup's 64 rows, which four warps copied: each fences its
            // copies into the async proxy, then the warpgroup meets at its barrier.
            self.fence_copies_for_wgmma();
            self.warpgroup_barrier()?;
        } else {
            self.w.ins("bar.warp.sync 0xffffffff");
        }
        if kept {
            // The tile stays where it landed; each mma loads the fragments it needs. No other
            // warp writes these rows, no other load this region, and the region is next
            // written by this warp's stores (after the last mma).
            self.w.comment(format!("{}: A operand kept in shared memory (a_in_smem)", self.vname(dst)));
            self.smem_a.insert(dst, region.clone());
            return Ok(());
        }
        self.ldmatrix_loaded_tile(dst, region)
    }

    /// The register loads deferred past the K/V loop's prologue, landed in the order they were
    /// issued.
    fn finish_deferred_loads(&mut self) -> Result<(), CodegenError> {
        for load in std::mem::take(&mut self.deferred_loads) {
            self.w.comment(format!("{}: the copy issued before the loop lands", self.vname(load.dst)));
            self.land_register_load(&load)?;
        }
        Ok(())
    }

    /// The `ldmatrix` of a register load's fragments from its row-tile region, once its copy
    /// has landed and the warp has converged.
    fn ldmatrix_loaded_tile(&mut self, dst: Value, region: &str) -> Result<(), CodegenError> {
        let warp_row0 = self.th().warp_row0.clone();
        let fam = self.regs_of(dst);
        let Type::Frag { cols, elem, .. } = self.kernel.ty(dst) else {
            return Err(CodegenError::Internal("load into a non-fragment".into()));
        };
        let shape = frag_shape(&self.cfg, cols, elem);
        for mf in 0..shape.mfrags {
            let row0 = self.w.temp(RegClass::B32);
            self.w.ins(format!("add.u32 {row0}, {warp_row0}, {}", mf * 16));
            for kk in 0..shape.col_blocks {
                let addr = self.ldmatrix_address(LdmatrixPattern::A, region, &row0, 2 * kk as u32);
                let regs = [0, 1, 2, 3].map(|i| fam.at(shape.a(mf, kk, i)));
                self.ldmatrix_x4(LdmatrixPattern::A, regs, &addr);
            }
        }
        Ok(())
    }

    /// The slot of `buffer` that holds this iteration's tile: `(iteration % slots) * slot_bytes`
    /// past the buffer's offset.
    fn stage_view(
        &mut self,
        dst: Value,
        buffer: BufferId,
        slot: Value,
        zero_unless: Option<Value>,
    ) -> Result<(), CodegenError> {
        let offset = self.slot_offset(buffer, slot, 0);
        let rows = self.kernel.buffers[buffer.0 as usize].rows.size(&self.cfg);
        let zero_unless = zero_unless.map(|c| {
            let c = self.regs_of(c).at(0);
            let live = self.w.temp(RegClass::Pred);
            self.w.ins(format!("setp.ne.u32 {live}, {c}, 0"));
            live
        });
        self.tiles.insert(dst, SmemTile { offset, rows, transposed: false, zero_unless });
        Ok(())
    }

    /// Byte offset (an operand) of the slot of `buffer` for the iteration `ahead` after `src`'s.
    fn slot_offset(&mut self, buffer: BufferId, slot_counter: Value, ahead: u32) -> String {
        let b = buffer.0 as usize;
        let (base, slot_bytes) = (self.plan.buffer_offsets[b], self.plan.slot_bytes[b]);
        let slots = self.kernel.buffers[b].slots;
        if slots == 1 {
            return base.to_string();
        }
        let iteration = self.regs_of(slot_counter).at(0);
        let slot = self.w.temp(RegClass::B32);
        if ahead > 0 {
            self.w.ins(format!("add.u32 {slot}, {iteration}, {ahead}"));
            self.w.rem_u32_by(&slot, &slot, slots);
        } else {
            self.w.rem_u32_by(&slot, &iteration, slots);
        }
        self.w.ins(format!("mad.lo.u32 {slot}, {slot}, {slot_bytes}, {base}"));
        slot
    }

    /// Shared address of mbarrier `ring[iter % slots]`.
    fn mbar_address(&mut self, ring: MbarRingId, iter: Value) -> String {
        let r = ring.0 as usize;
        let (base, slots) = (self.plan.mbarrier_offsets[r], self.kernel.mbarriers[r].slots);
        let it = self.regs_of(iter).at(0);
        let smem = self.th().smem.clone();
        let addr = self.w.temp(RegClass::B32);
        self.w.rem_u32_by(&addr, &it, slots);
        self.w.ins(format!("mad.lo.u32 {addr}, {addr}, 8, {base}"));
        self.w.ins(format!("add.u32 {addr}, {addr}, {smem}"));
        addr
    }

    /// sm_90a: copies that this thread knows have landed (a `wait_group`, a full-slot wait) went
    /// through the generic proxy; wgmma reads through the async proxy, which sees them only after
    /// `fence.proxy.async` (and, for other threads' copies, the barrier or wait that follows).
    fn fence_copies_for_wgmma(&mut self) {
        if self.cfg.target == Target::Sm90a {
            self.w.ins("fence.proxy.async.shared::cta");
        }
    }

    /// Spin until the phase of `ring[iter % slots]` with parity `(iter / slots) & 1 (^ 1)` has
    /// completed (`mbarrier.test_wait.parity` with a back-off on sm_89, `try_wait` on sm_90a).
    fn mbar_wait(&mut self, ring: MbarRingId, iter: Value, flip: bool) -> Result<(), CodegenError> {
        let addr = self.mbar_address(ring, iter);
        let slots = self.kernel.mbarriers[ring.0 as usize].slots;
        let it = self.regs_of(iter).at(0);
        let parity = self.w.temp(RegClass::B32);
        self.w.div_u32_by(&parity, &it, slots);
        self.w.ins(format!("and.b32 {parity}, {parity}, 1"));
        if flip {
            self.w.ins(format!("xor.b32 {parity}, {parity}, 1"));
        }
        let done = self.w.temp(RegClass::Pred);
        let (start, now) = (self.w.temp(RegClass::B64), self.w.temp(RegClass::B64));
        self.w.ins(format!("mov.u64 {start}, %globaltimer"));
        let spin = self.w.label("mbar_wait");
        self.w.place_label(&spin);
        let ready = self.w.label("mbar_ready");
        // sm_90a: try_wait suspends the warp in hardware until the phase completes or a time
        // limit passes: no issue slots spent spinning, and no sleep between the phase and the wake.
        let hopper = self.cfg.target == Target::Sm90a;
        let wait = if hopper { "try_wait.parity.shared::cta" } else { "test_wait.parity.shared" };
        self.w.ins(format!("mbarrier.{wait}.b64 {done}, [{addr}], {parity}"));
        self.w.ins(format!("@{done} bra {ready}"));
        if !hopper {
            // Back off so spinning warps leave issue slots to the warps doing the work.
            self.w.ins("nanosleep.u32 20");
        }
        // Watchdog: a wait this long is a hang; abort the kernel so the process can exit.
        let expired = self.w.temp(RegClass::Pred);
        self.w.ins(format!("mov.u64 {now}, %globaltimer"));
        self.w.ins(format!("sub.u64 {now}, {now}, {start}"));
        self.w.ins(format!("setp.gt.u64 {expired}, {now}, {WATCHDOG_NS}"));
        self.w.ins(format!("@{expired} trap"));
        self.w.ins(format!("bra {spin}"));
        self.w.place_label(&ready);
        Ok(())
    }

    /// Each thread writes (or reads back) its registers of `v` in channel `chan`: register `i` of
    /// lane `l` of the group's warp `w` at `((w · regs + i) · 32 + l) · 4`, so the thread of the
    /// same lane in the partner warp finds them, and a warp's 32 accesses hit 32 banks.
    fn channel(&mut self, v: Value, chan: ChanId, write: bool) -> Result<(), CodegenError> {
        let fam = self.regs_of(v);
        let base = self.plan.channel_offsets[chan.0 as usize];
        let (lane, smem) = (self.th().lane.clone(), self.th().smem.clone());
        let warp = self.group_warp.clone();
        if warp.is_empty() {
            return Err(CodegenError::Internal("a channel outside role groups".into()));
        }
        let addr = self.w.temp(RegClass::B32);
        self.w.ins(format!("mul.lo.u32 {addr}, {warp}, {}", fam.len * 32));
        self.w.ins(format!("add.u32 {addr}, {addr}, {lane}"));
        self.w.ins(format!("shl.b32 {addr}, {addr}, 2"));
        self.w.ins(format!("add.u32 {addr}, {addr}, {smem}"));
        let ty = match self.kernel.ty(v) {
            Type::Frag { elem: Elem::F16 | Elem::Bf16, .. } | Type::Index { .. } | Type::Counter => "b32",
            _ => "f32",
        };
        for i in 0..fam.len {
            let offset = base + (i as u32) * 128;
            if write {
                self.w.ins(format!("st.shared.{ty} [{addr}+{offset}], {}", fam.at(i)));
            } else {
                self.w.ins(format!("ld.shared.{ty} {}, [{addr}+{offset}]", fam.at(i)));
            }
        }
        Ok(())
    }

    /// Thread 0 initializes every mbarrier with its expected arrival count; a CTA barrier makes
    /// the initialization visible before any warp uses them.
    fn init_barriers(&mut self) -> Result<(), CodegenError> {
        let (thread, smem) = (self.th().thread.clone(), self.th().smem.clone());
        let not_first = self.w.temp(RegClass::Pred);
        let skip = self.w.label("init_done");
        self.w.ins(format!("setp.ne.u32 {not_first}, {thread}, 0"));
        self.w.ins(format!("@{not_first} bra {skip}"));
        for (r, ring) in self.kernel.mbarriers.iter().enumerate() {
            for slot in 0..ring.slots {
                let addr = self.w.temp(RegClass::B32);
                self.w.ins(format!("add.u32 {addr}, {smem}, {}", self.plan.mbarrier_offsets[r] + 8 * slot));
                self.w.ins(format!("mbarrier.init.shared.b64 [{addr}], {}", ring.count));
            }
        }
        self.w.place_label(&skip);
        if let Some(zero) = self.plan.zero_block {
            // The block of zeros: 16 bytes a thread, fenced into the async proxy (wgmma reads
            // it) before the barrier that publishes it.
            self.w.comment("the block of zeros a view of no tile reads");
            let chunks = crate::smem::zero_block_bytes(&self.cfg) / 16;
            let threads = self.cfg.threads();
            let z = self.w.temp(RegClass::B32);
            self.w.ins(format!("mov.b32 {z}, 0"));
            // Chunk `thread + pass * threads`, while there are chunks.
            for pass in 0..chunks.div_ceil(threads) {
                let (chunk, inside) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::Pred));
                self.w.ins(format!("add.u32 {chunk}, {thread}, {}", pass * threads));
                self.w.ins(format!("setp.lt.u32 {inside}, {chunk}, {chunks}"));
                let addr = self.w.temp(RegClass::B32);
                self.w.ins(format!("mad.lo.u32 {addr}, {chunk}, 16, {zero}"));
                self.w.ins(format!("add.u32 {addr}, {addr}, {smem}"));
                self.w.ins(format!("@{inside} st.shared.v4.b32 [{addr}], {{{z}, {z}, {z}, {z}}}"));
            }
            self.w.ins("fence.proxy.async.shared::cta");
        }
        self.w.ins("bar.sync 0");
        Ok(())
    }

    /// Each role group runs its body on its warps; the branch is warp-uniform. Inside a group,
    /// ring copies are shared among the group's threads.
    fn role_groups(&mut self, groups: &[RoleGroup]) -> Result<(), CodegenError> {
        let (warp, thread) = (self.th().warp.clone(), self.th().thread.clone());
        let end = self.w.label("roles_end");
        for g in groups {
            let roles: Vec<&str> = g.roles.iter().map(|r| r.name()).collect();
            self.w.comment(format!(
                "role group {}: warps {}..{}",
                roles.join(" + "),
                g.first_warp,
                g.first_warp + g.warps
            ));
            let next = self.w.label("next_group");
            let outside = self.w.temp(RegClass::Pred);
            let rel = self.w.temp(RegClass::B32);
            self.w.ins(format!("sub.u32 {rel}, {warp}, {}", g.first_warp));
            self.w.ins(format!("setp.ge.u32 {outside}, {rel}, {}", g.warps));
            self.w.ins(format!("@{outside} bra.uni {next}"));
            self.w.indent();
            let index = self.w.temp(RegClass::B32);
            self.w.ins(format!("sub.u32 {index}, {thread}, {}", g.first_warp * 32));
            let saved = std::mem::replace(&mut self.team, Team { index, threads: g.warps * 32 });
            let saved_warp = std::mem::replace(&mut self.group_warp, rel);
            if let Some(split) = crate::target::register_split(&self.cfg) {
                let loads = g.roles.contains(&flashcore_ir::source::Role::Load);
                let (dir, count) = if loads { ("dec", split.load) } else { ("inc", split.compute) };
                self.w.comment(format!(
                    "registers a thread: {} at entry, {count} in this warpgroup (the producer gives its registers to the wgmma warpgroups)",
                    crate::target::entry_registers(self.cfg.warps + self.cfg.load_warps)
                ));
                self.w.ins(format!("setmaxnreg.{dir}.sync.aligned.u32 {count}"));
            }
            if g.roles.contains(&flashcore_ir::source::Role::Load) && self.kernel.bulk_copies() {
                // Bulk tensor copies: one thread issues them all; the group's other warps have
                // nothing to do (their registers went to the compute warpgroups above).
                let idle = self.w.temp(RegClass::Pred);
                self.w.ins(format!("setp.ne.u32 {idle}, {}, 0", self.group_warp));
                self.w.ins(format!("@{idle} bra.uni {end}"));
            }
            let streaming = g.roles == [flashcore_ir::source::Role::Softmax] && g.warps < self.cfg.warps;
            if streaming {
                self.start_stream(g.warps);
            }
            let pingpong = g.roles.contains(&flashcore_ir::source::Role::Compute)
                && crate::target::pingpong_why_not(self.kernel).is_none();
            if pingpong {
                self.start_pingpong();
            }
            self.block(&g.body)?;
            if pingpong {
                self.end_pingpong();
            }
            self.stream = None;
            self.team = saved;
            self.group_warp = saved_warp;
            self.w.ins(format!("bra.uni {end}"));
            self.w.dedent();
            self.w.place_label(&next);
        }
        self.w.place_label(&end);
        Ok(())
    }

    /// cp.async of the tile `ahead` iterations on into its slot, skipped (uniformly) past the
    /// end of the loop. The group is committed by the following `CommitGroup` either way.
    fn async_copy(
        &mut self,
        buffer: BufferId,
        src: &TileAccess,
        ahead: u32,
        slot: Value,
    ) -> Result<(), CodegenError> {
        let count = self
            .pipeline_count
            .clone()
            .ok_or_else(|| CodegenError::Internal("cp.async outside a pipeline loop".into()))?;
        let iteration = self.regs_of(src.coords[2]).at(0);
        let seq = if ahead > 0 {
            let r = self.w.temp(RegClass::B32);
            self.w.ins(format!("add.u32 {r}, {iteration}, {ahead}"));
            r
        } else {
            iteration
        };
        let skip = self.w.label("copy_skip");
        let past_end = self.w.temp(RegClass::Pred);
        self.w.ins(format!("setp.ge.u32 {past_end}, {seq}, {count}"));
        self.w.ins(format!("@{past_end} bra.uni {skip}"));
        let rows = self.tile_rows(src);
        let global = self.tile_address(src, rows, Some(&seq))?;
        let offset = self.slot_offset(buffer, slot, ahead);
        let team = self.team.clone();
        let valid = self.valid_rows(src, Some(&seq));
        let buffer_rows = self.kernel.buffers[buffer.0 as usize].rows.size(&self.cfg);
        self.copy_tile_async(&global, &offset, None, rows, &team, &valid, Some(buffer_rows));
        self.w.place_label(&skip);
        Ok(())
    }

    /// Pingpong: warpgroup 1 hands warpgroup 0 the first turn. Registers: this warpgroup's turn
    /// barrier `8 + g` and the other's `9 - g`.
    fn start_pingpong(&mut self) {
        let g = self.w.temp(RegClass::B32);
        self.w.ins(format!("shr.u32 {g}, {}, 2", self.group_warp));
        let (mine, other) =
            (self.w.named(RegClass::B32, "%turn_mine"), self.w.named(RegClass::B32, "%turn_other"));
        self.w.ins(format!("add.u32 {mine}, {g}, {PINGPONG_BARRIER}"));
        self.w.ins(format!("sub.u32 {other}, {}, {g}", PINGPONG_BARRIER + 1));
        let (first, skip) = (self.w.temp(RegClass::Pred), self.w.label("pingpong_first"));
        self.w.comment("pingpong: warpgroup 0 issues first");
        self.w.ins(format!("setp.eq.u32 {first}, {g}, 0"));
        self.w.ins(format!("@{first} bra.uni {skip}"));
        self.w.ins(format!("bar.arrive {PINGPONG_BARRIER}, 256"));
        self.w.place_label(&skip);
        self.pingpong = Some(PingPong { mine, other, turn: None });
    }

    /// Pingpong, inside a K/V loop body standing at `at`: before the first matmul
    /// ([`Turn::Waiting`]) wait for this warpgroup's turn; before the first wait for the
    /// matmuls ([`Turn::Issuing`]) hand the turn to the other warpgroup.
    fn pass_turn(&mut self, at: Turn) {
        let Some(p) = self.pingpong.as_mut().filter(|p| p.turn == Some(at)) else { return };
        let (comment, ins, next) = match at {
            Turn::Waiting => (
                "this warpgroup's turn to issue its matmuls",
                format!("bar.sync {}, 256", p.mine),
                Turn::Issuing,
            ),
            Turn::Issuing => {
                ("the other warpgroup's turn", format!("bar.arrive {}, 256", p.other), Turn::Done)
            }
            Turn::Done => return,
        };
        p.turn = Some(next);
        self.w.comment(format!("pingpong: {comment}"));
        self.w.ins(ins);
    }

    /// Pingpong: warpgroup 0 takes the turn warpgroup 1 handed over after its last matmuls, so
    /// that every arrival on a turn barrier meets its wait.
    fn end_pingpong(&mut self) {
        let Some(p) = self.pingpong.take() else { return };
        let (second, skip) = (self.w.temp(RegClass::Pred), self.w.label("pingpong_last"));
        self.w.comment("pingpong: the turn warpgroup 1 handed over last");
        self.w.ins(format!("setp.ne.u32 {second}, {}, {PINGPONG_BARRIER}", p.mine));
        self.w.ins(format!("@{second} bra.uni {skip}"));
        self.w.ins(format!("bar.sync {PINGPONG_BARRIER}, 256"));
        self.w.place_label(&skip);
    }

    /// A predicate that holds in the copying team's first thread only (the one that issues
    /// bulk tensor copies and announces their bytes).
    fn team_leader(&mut self) -> String {
        let p = self.w.temp(RegClass::Pred);
        self.w.ins(format!("setp.eq.u32 {p}, {}, 0", self.team.index));
        p
    }

    /// The team's first thread copies tile `src` into slot `slot % slots` of `buffer`: one bulk
    /// tensor copy per 64-column block (`TileMap`'s box), each into its block of the slot (the
    /// column-block layout wgmma reads, which is the copy engine's 128-byte swizzle), completing
    /// its bytes on mbarrier `ring[slot % slots]`.
    fn tma_copy(
        &mut self,
        buffer: BufferId,
        src: &TileAccess,
        slot: Value,
        ring: MbarRingId,
    ) -> Result<(), CodegenError> {
        let map = self.tensor_maps.get(&src.param).cloned().ok_or_else(|| {
            CodegenError::Internal("a bulk tensor copy of a tensor without a tensor map".into())
        })?;
        let rows = self.kernel.slot_rows(buffer);
        let offset = self.slot_offset(buffer, slot, 0);
        let slot_base = self.w.temp(RegClass::B32);
        self.w.ins(format!("add.u32 {slot_base}, {}, {offset}", self.th().smem));
        let mbar = self.mbar_address(ring, slot);
        let leader = self.team_leader();
        // Coordinates, innermost first: column, row, head, batch.
        let c = self.tile_coords(src, None);
        let (batch, head, row) = (c[0].clone(), c[1].clone(), self.w.temp(RegClass::B32));
        self.w.ins(format!("mul.lo.u32 {row}, {}, {rows}", c[2]));
        let blocks = self.cfg.head_dim / flashcore_ir::abi::TileMap::BOX_COLUMNS;
        for block in 0..blocks {
            let dst = if block == 0 {
                slot_base.clone()
            } else {
                let d = self.w.temp(RegClass::B32);
                self.w.ins(format!("add.u32 {d}, {slot_base}, {}", block * rows * wgmma::BLOCK_ROW_BYTES));
                d
            };
            let column = self.w.temp(RegClass::B32);
            self.w.ins(format!("mov.u32 {column}, {}", block * flashcore_ir::abi::TileMap::BOX_COLUMNS));
            self.w.ins(format!(
                "@{leader} cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [{dst}], [{map}, {{{column}, {row}, {head}, {batch}}}], [{mbar}]"
            ));
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Tensor-core compute

    /// A matmul's operands as emitted: B's staged tile, the result's columns (n) and the
    /// contraction (k), and A (registers, or a region of shared memory).
    fn matmul_operands(
        &mut self,
        dst: Value,
        a: Value,
        b: Value,
    ) -> Result<(SmemTile, TileDim, TileDim, AOperand), CodegenError> {
        let tile = self
            .tiles
            .get(&b)
            .cloned()
            .ok_or_else(|| CodegenError::Internal(format!("{} is not a staged tile", self.vname(b))))?;
        let Type::Frag { cols: n_dim, .. } = self.kernel.ty(dst) else {
            return Err(CodegenError::Internal("mma result is not a fragment".into()));
        };
        let k_dim = match self.kernel.ty(a) {
            Type::Frag { cols, .. } => cols,
            // A ring view (sm_90a: a Q tile the producer fed), read through a descriptor.
            Type::Smem { cols, transposed: false, .. } if self.cfg.target == Target::Sm90a => cols,
            _ => return Err(CodegenError::Internal("mma A is not a fragment or a ring view".into())),
        };
        let af = if let Some(region) = self.smem_a.get(&a) {
            AOperand::Shared { region: region.clone() }
        } else if let Some(view) = self.tiles.get(&a) {
            AOperand::Shared { region: view.offset.clone() }
        } else {
            AOperand::Registers(self.regs_of(a))
        };
        Ok((tile, n_dim, k_dim, af))
    }

    /// sm_90a: `dst = a · b` or `dst += a · b` (in place) issued as asynchronous wgmmas into the
    /// open group; the overlap pass's `mma_commit` and `mma_wait` close and retire it.
    fn mma_async(&mut self, dst: Value, a: Value, b: Value, accumulate: bool) -> Result<(), CodegenError> {
        if self.cfg.target != Target::Sm90a {
            return Err(CodegenError::Internal("an asynchronous matmul outside an sm_90a kernel".into()));
        }
        let prepared = match self.prepared.remove(&(dst, b)) {
            Some(p) => p,
            None => self.prepare_matmul(dst, a, b)?,
        };
        self.wgmma_init(dst, if accumulate { WgmmaInit::InPlace } else { WgmmaInit::Zero });
        self.wgmma_issue_prepared(dst, &prepared)
    }

    fn prepare_matmul(
        &mut self,
        dst: Value,
        a: Value,
        b: Value,
    ) -> Result<wgmma::PreparedWgmma, CodegenError> {
        let (tile, n_dim, k_dim, af) = self.matmul_operands(dst, a, b)?;
        self.wgmma_prepare(&af, &tile, n_dim, k_dim, false)
    }

    /// Before the first of the asynchronous matmuls that `insts` starts with, the operands of
    /// every one up to the next `mma_wait`: ptxas 13.0 (the H200 driver's JIT) serializes every
    /// wgmma of a kernel that computes a wgmma's input registers (its descriptors) while an
    /// earlier one is in flight (C7513).
    fn prepare_async_matmuls(&mut self, insts: &[Inst]) -> Result<(), CodegenError> {
        for inst in insts.iter().take_while(|i| !matches!(i.op, Op::MmaWait { .. })) {
            if let Op::MmaAsync { dst, a, b, .. } = inst.op {
                if !self.prepared.contains_key(&(dst, b)) && self.tiles.contains_key(&b) {
                    let p = self.prepare_matmul(dst, a, b)?;
                    self.prepared.insert((dst, b), p);
                }
            }
        }
        Ok(())
    }

    fn mma(&mut self, dst: Value, a: Value, b: Value, acc: Option<Value>) -> Result<(), CodegenError> {
        let (tile, n_dim, k_dim, af) = self.matmul_operands(dst, a, b)?;
        if self.cfg.target == Target::Sm90a {
            self.wgmma_init(dst, acc.map_or(WgmmaInit::Zero, WgmmaInit::CopyFrom));
            let prepared = self.wgmma_prepare(&af, &tile, n_dim, k_dim, true)?;
            self.wgmma_issue_prepared(dst, &prepared)?;
            // Synchronous: the result is in `dst` when the next op reads it, and the shared tile
            // is free to be overwritten.
            self.w.ins("wgmma.commit_group.sync.aligned");
            self.w.ins("wgmma.wait_group.sync.aligned 0");
            return Ok(());
        }
        let d = self.regs_of(dst);
        let operand = self.cfg.dtype.name();
        let d_shape = frag_shape(&self.cfg, n_dim, Elem::F32);
        let a_shape = frag_shape(&self.cfg, k_dim, Elem::F16);
        match acc {
            Some(c) => {
                let cf = self.regs_of(c);
                if !cf.is(&d) {
                    for i in 0..d.len {
                        self.w.ins(format!("mov.f32 {}, {}", d.at(i), cf.at(i)));
                    }
                }
            }
            None => {
                for i in 0..d.len {
                    self.w.ins(format!("mov.f32 {}, 0f00000000", d.at(i)));
                }
            }
        }
        let pattern = if tile.transposed { LdmatrixPattern::BFromRowsN } else { LdmatrixPattern::BFromRowsK };
        let k_slices = k_dim.per_warp(&self.cfg) / 16;
        let n_pairs = n_dim.per_warp(&self.cfg) / 16;
        // The tile's rows are n (Kᵀ) or k (V); when they are keys, split-KV starts this warp's
        // rows at its group's first key.
        let key0 = self.split_key0(if tile.transposed { n_dim } else { k_dim });
        for kk in 0..k_slices {
            // This k-slice's A fragments: registers of `a`, or four ldmatrix'd registers per
            // 16-row block of the warp's rows.
            let a_regs: Vec<Vec<String>> = (0..d_shape.mfrags)
                .map(|mf| match &af {
                    AOperand::Registers(af) => (0..4).map(|i| af.at(a_shape.a(mf, kk as usize, i))).collect(),
                    AOperand::Shared { region } => {
                        let row0 = self.w.temp(RegClass::B32);
                        self.w.ins(format!("add.u32 {row0}, {}, {}", self.th().warp_row0, mf * 16));
                        let addr = self.ldmatrix_address(LdmatrixPattern::A, region, &row0, 2 * kk);
                        let regs: [String; 4] = std::array::from_fn(|_| self.w.temp(RegClass::B32));
                        self.ldmatrix_x4(LdmatrixPattern::A, regs.clone(), &addr);
                        regs.to_vec()
                    }
                })
                .collect();
            for np in 0..n_pairs {
                // K tile [n][k] (transposed view): rows are n, chunks are k.
                // V tile [k][n]: rows are k, chunks are n.
                let (row_block, chunk0) = if tile.transposed { (16 * np, 2 * kk) } else { (16 * kk, 2 * np) };
                let row0 = self.w.temp(RegClass::B32);
                match &key0 {
                    Some(key0) => self.w.ins(format!("add.u32 {row0}, {key0}, {row_block}")),
                    None => self.w.ins(format!("mov.u32 {row0}, {row_block}")),
                }
                let addr = self.ldmatrix_address(pattern, &tile.offset, &row0, chunk0);
                let b: [String; 4] = std::array::from_fn(|_| self.w.temp(RegClass::B32));
                self.ldmatrix_x4(pattern, b.clone(), &addr);
                for mf in 0..d_shape.mfrags {
                    for half in 0..2 {
                        let nt = (2 * np + half) as usize;
                        let dr: Vec<String> = (0..4).map(|i| d.at(d_shape.acc(mf, nt, i))).collect();
                        let ar = &a_regs[mf];
                        self.w.ins(format!(
                            "mma.sync.aligned.m16n8k16.row.col.f32.{operand}.{operand}.f32 {{{d}}}, {{{a}}}, {{{b0}, {b1}}}, {{{d}}}",
                            d = dr.join(", "),
                            a = ar.join(", "),
                            b0 = b[2 * half as usize],
                            b1 = b[2 * half as usize + 1],
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// `dst = src`, then, in the last and partial tile only (a uniform branch skips full ones),
    /// -inf in every column at or past the number of valid rows of `tile`.
    fn mask_columns(
        &mut self,
        dst: Value,
        src: Value,
        tile: &TileAccess,
        causal: Option<&Causal>,
        fill: ColumnFill,
    ) -> Result<(), CodegenError> {
        let Type::Frag { cols, .. } = self.kernel.ty(src) else {
            return Err(CodegenError::Internal("mask of a non-fragment".into()));
        };
        let fill = match fill {
            ColumnFill::NegInf => "0fFF800000",
            ColumnFill::Zero => "0f00000000",
        };
        let d = self.scores_in_place(dst, src);
        let valid = self.valid_rows(tile, None);
        // `n` columns in the tile; this warp's fragments hold `n_warp` of them, from `key0` on
        // (split-KV), so a column index c of the fragment is key `key0 + c` of the tile.
        let (n, n_warp) = (cols.size(&self.cfg), cols.per_warp(&self.cfg));
        let key0 = self.split_key0(cols);
        let (need, skip) = (self.w.temp(RegClass::Pred), self.w.label("mask_done"));
        self.w.ins(format!("setp.lt.u32 {need}, {valid}, {n}"));
        // Causal: this warp's row r sees columns up to r + SK − S (`diag` holds its first row's
        // limit, signed: negative when S > SK); a tile whose last column is within it needs no
        // causal mask.
        let diag = causal.map(|c| {
            let kv_len = self.dim_reg(self.kernel.access_seq_dim(tile).expect("K tile"));
            let q_len = self.dim_reg(c.q_dim);
            let (q_tile, kt) = (self.regs_of(c.q_tile).at(0), self.regs_of(tile.coords[2]).at(0));
            let warp_row0 = self.th().warp_row0.clone();
            let diag = self.w.temp(RegClass::B32);
            self.w.ins(format!("mad.lo.u32 {diag}, {q_tile}, {}, {warp_row0}", self.cfg.tile_m));
            self.w.ins(format!("add.u32 {diag}, {diag}, {kv_len}"));
            self.w.ins(format!("sub.u32 {diag}, {diag}, {q_len}"));
            let (first_col, last_col, crosses) =
                (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32), self.w.temp(RegClass::Pred));
            self.w.ins(format!("mul.lo.u32 {first_col}, {kt}, {}", self.tile_rows(tile)));
            if let Some(key0) = &key0 {
                self.w.ins(format!("add.u32 {first_col}, {first_col}, {key0}"));
            }
            self.w.ins(format!("add.u32 {last_col}, {first_col}, {}", n_warp - 1));
            self.w.ins(format!("setp.gt.s32 {crosses}, {last_col}, {diag}"));
            self.w.ins(format!("or.pred {need}, {need}, {crosses}"));
            (diag, first_col)
        });
        self.w.ins(format!("@!{need} bra.uni {skip}"));
        let quad_lane = self.th().quad_lane.clone();
        let base = self.w.temp(RegClass::B32);
        self.w.ins(format!("shl.b32 {base}, {quad_lane}, 1"));
        let shape = frag_shape(&self.cfg, cols, Elem::F32);
        // Columns of this warp's fragments still inside the sequence: signed, since a group's
        // keys may start past the end.
        let (valid, compare) = match &key0 {
            Some(key0) => {
                let own = self.w.temp(RegClass::B32);
                self.w.ins(format!("sub.u32 {own}, {valid}, {key0}"));
                (own, "s32")
            }
            None => (valid, "u32"),
        };
        for nt in 0..shape.col_blocks {
            for odd in 0..2 {
                // Accumulator element e holds column 8·nt + 2·(lane % 4) + (e % 2).
                let (col, past) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::Pred));
                self.w.ins(format!("add.u32 {col}, {base}, {}", 8 * nt + odd));
                self.w.ins(format!("setp.ge.{compare} {past}, {col}, {valid}"));
                for mf in 0..shape.mfrags {
                    for e in [odd, odd + 2] {
                        self.w.ins(format!("@{past} mov.f32 {}, {fill}", d.at(shape.acc(mf, nt, e))));
                    }
                }
            }
        }
        if let Some((diag, first_col)) = diag {
            // Element (mf, nt, e) is row 16·mf + 8·(e / 2) + g of the warp's rows and column
            // 8·nt + 2·(lane % 4) + e % 2 of the tile: masked when its column is past the row's limit.
            let group = self.th().group.clone();
            let mut limits = vec![];
            for mf in 0..shape.mfrags {
                for h in 0..2 {
                    let limit = self.w.temp(RegClass::B32);
                    self.w.ins(format!("add.u32 {limit}, {diag}, {group}"));
                    self.w.ins(format!("add.u32 {limit}, {limit}, {}", 16 * mf + 8 * h));
                    limits.push(limit);
                }
            }
            let (col, past) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::Pred));
            for nt in 0..shape.col_blocks {
                for odd in 0..2 {
                    self.w.ins(format!("add.u32 {col}, {first_col}, {base}"));
                    self.w.ins(format!("add.u32 {col}, {col}, {}", 8 * nt + odd));
                    for mf in 0..shape.mfrags {
                        for h in 0..2 {
                            self.w
                                .ins(format!("setp.gt.s32 {past}, {col}, {}", limits[(mf * 2 + h) as usize]));
                            let e = odd + 2 * h;
                            self.w.ins(format!("@{past} mov.f32 {}, 0fFF800000", d.at(shape.acc(mf, nt, e))));
                        }
                    }
                }
            }
        }
        self.w.place_label(&skip);
        Ok(())
    }

    /// The registers a mask of `src` writes `dst` into: `src`'s own when nothing else reads them
    /// (the usual case: the last score op's result), else a copy.
    pub(crate) fn scores_in_place(&mut self, dst: Value, src: Value) -> RegFamily {
        let s = self.regs_of(src);
        // (Registers shared along an axis cannot take per-element results.)
        if self.use_counts.get(&src) == Some(&1) && !self.regs.contains_key(&dst) && s.slots.is_none() {
            self.regs.insert(dst, s.clone());
            return s;
        }
        let d = self.regs_of(dst);
        for i in 0..d.len {
            self.w.ins(format!("mov.f32 {}, {}", d.at(i), s.at(i)));
        }
        d
    }

    /// Accumulator fragments of n-tiles 2j, 2j+1 become the A fragment of k-slice j.
    fn to_half(&mut self, dst: Value, src: Value) -> Result<(), CodegenError> {
        let Type::Frag { cols, .. } = self.kernel.ty(src) else {
            return Err(CodegenError::Internal("to_half of a non-fragment".into()));
        };
        let half = self.cfg.dtype.name();
        let (d, s) = (self.regs_of(dst), self.regs_of(src));
        let cs = frag_shape(&self.cfg, cols, Elem::F32);
        let ds = frag_shape(&self.cfg, cols, Elem::F16);
        for mf in 0..ds.mfrags {
            for kk in 0..ds.col_blocks {
                // (a register, source n-tile, source element pair)
                for (i, nt, e) in [(0, 2 * kk, 0), (1, 2 * kk, 2), (2, 2 * kk + 1, 0), (3, 2 * kk + 1, 2)] {
                    let lo = s.at(cs.acc(mf, nt, e));
                    let hi = s.at(cs.acc(mf, nt, e + 1));
                    // cvt.rn.{f16,bf16}x2.f32 puts its first source in the upper half.
                    self.w.ins(format!("cvt.rn.{half}x2.f32 {}, {hi}, {lo}", d.at(ds.a(mf, kk, i))));
                }
            }
        }
        Ok(())
    }

    /// The inverse of [`Self::to_half`]: the A fragment of k-slice j becomes the accumulator
    /// fragments of n-tiles 2j, 2j+1, each half of a register widened exactly to f32.
    fn widen(&mut self, dst: Value, src: Value) -> Result<(), CodegenError> {
        let Type::Frag { cols, elem, .. } = self.kernel.ty(src) else {
            return Err(CodegenError::Internal("widening of a non-fragment".into()));
        };
        let (d, s) = (self.regs_of(dst), self.regs_of(src));
        let cs = frag_shape(&self.cfg, cols, Elem::F32);
        let hs = frag_shape(&self.cfg, cols, Elem::F16);
        self.w.comment("widen the 16-bit tile to f32 (its A fragments are accumulator pairs)");
        for mf in 0..hs.mfrags {
            for kk in 0..hs.col_blocks {
                for (i, nt, e) in [(0, 2 * kk, 0), (1, 2 * kk, 2), (2, 2 * kk + 1, 0), (3, 2 * kk + 1, 2)] {
                    let pair = s.at(hs.a(mf, kk, i));
                    let (lo, hi) = (d.at(cs.acc(mf, nt, e)), d.at(cs.acc(mf, nt, e + 1)));
                    if elem == Elem::Bf16 {
                        // A bf16 is the upper half of the f32 with the same bits.
                        self.w.ins(format!("shl.b32 {lo}, {pair}, 16"));
                        self.w.ins(format!("and.b32 {hi}, {pair}, 0xffff0000"));
                    } else {
                        // cvt reads the lower 16 bits of a wider register.
                        let upper = self.w.temp(RegClass::B32);
                        self.w.ins(format!("cvt.f32.f16 {lo}, {pair}"));
                        self.w.ins(format!("shr.b32 {upper}, {pair}, 16"));
                        self.w.ins(format!("cvt.f32.f16 {hi}, {upper}"));
                    }
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Softmax arithmetic

    fn row_reduce(&mut self, dst: Value, op: ReduceOp, src: Value) -> Result<(), CodegenError> {
        let Type::Frag { cols, .. } = self.kernel.ty(src) else {
            return Err(CodegenError::Internal("row reduce of a non-fragment".into()));
        };
        let (d, s) = (self.regs_of(dst), self.regs_of(src));
        let shape = frag_shape(&self.cfg, cols, Elem::F32);
        let instr = reduce_instr(op);
        for mf in 0..shape.mfrags {
            for h in 0..2 {
                let r = d.at(row_reg(mf, h));
                let items: Vec<String> = (0..shape.col_blocks)
                    .flat_map(|nt| (0..2).map(move |e| (nt, e)))
                    .map(|(nt, e)| s.at(shape.acc(mf, nt, 2 * h + e)))
                    .collect();
                if op == ReduceOp::Max && items.len() >= 8 {
                    // Four interleaved chains, then combined: a max is exact in any order, and
                    // four chains cut the dependent latency before the shuffles from one
                    // instruction per element to a quarter of that (a sum keeps its order).
                    let chains: Vec<String> = (0..4).map(|_| self.w.temp(RegClass::F32)).collect();
                    for (c, chain) in chains.iter().enumerate() {
                        self.w.ins(format!("{instr} {chain}, {}, {}", items[c], items[c + 4]));
                    }
                    for (i, item) in items.iter().enumerate().skip(8) {
                        self.w.ins(format!("{instr} {c}, {c}, {item}", c = chains[i % 4]));
                    }
                    self.w.ins(format!("{instr} {}, {}, {}", chains[0], chains[0], chains[1]));
                    self.w.ins(format!("{instr} {}, {}, {}", chains[2], chains[2], chains[3]));
                    self.w.ins(format!("{instr} {r}, {}, {}", chains[0], chains[2]));
                } else {
                    self.w.ins(format!("mov.f32 {r}, {}", items[0]));
                    for item in &items[1..] {
                        self.w.ins(format!("{instr} {r}, {r}, {item}"));
                    }
                }
                // The four lanes of a quad hold the same row: combine them.
                for lane_mask in [1, 2] {
                    let other = self.w.temp(RegClass::F32);
                    self.w.ins(format!("shfl.sync.bfly.b32 {other}, {r}, {lane_mask}, 0x1f, 0xffffffff"));
                    self.w.ins(format!("{instr} {r}, {r}, {other}"));
                }
            }
        }
        Ok(())
    }

    /// Each column of a fragment tile reduced over all the rows of the warp's compute group:
    /// over the thread's two rows per 16-row block, then the 8 lane groups (butterfly shuffles
    /// over lane bits 2..4), then, with more than one warp in the group, through shared memory:
    /// lanes 0..3 of each warp publish the warp's columns, a barrier over the compute warps,
    /// every thread folds the group's warps in warp order (so every warp holds the same bits),
    /// and a second barrier before the region is written again.
    fn col_reduce(&mut self, dst: Value, op: ReduceOp, src: Value) -> Result<(), CodegenError> {
        let Type::Frag { cols, .. } = self.kernel.ty(src) else {
            return Err(CodegenError::Internal("column reduce of a non-fragment".into()));
        };
        let (d, s) = (self.regs_of(dst), self.regs_of(src));
        let shape = frag_shape(&self.cfg, cols, Elem::F32);
        let instr = reduce_instr(op);
        for nt in 0..shape.col_blocks {
            for e in 0..2 {
                let r = d.at(2 * nt + e);
                self.w.ins(format!("mov.f32 {r}, {}", s.at(shape.acc(0, nt, e))));
                self.w.ins(format!("{instr} {r}, {r}, {}", s.at(shape.acc(0, nt, 2 + e))));
                for mf in 1..shape.mfrags {
                    for h in 0..2 {
                        self.w.ins(format!("{instr} {r}, {r}, {}", s.at(shape.acc(mf, nt, 2 * h + e))));
                    }
                }
                // The 8 lane groups hold the column's other rows.
                for lane_mask in [4, 8, 16] {
                    let other = self.w.temp(RegClass::F32);
                    self.w.ins(format!("shfl.sync.bfly.b32 {other}, {r}, {lane_mask}, 0x1f, 0xffffffff"));
                    self.w.ins(format!("{instr} {r}, {r}, {other}"));
                }
            }
        }
        let wps = self.cfg.warps_per_split();
        if wps == 1 {
            return Ok(());
        }
        let region =
            self.plan.col_region.ok_or_else(|| CodegenError::Internal("no column region planned".into()))?;
        let stride = self.plan.col_region_cols * 4;
        let compute_threads = self.cfg.warps * 32;
        let (warp, group, quad_lane, smem) = (
            self.th().warp.clone(),
            self.th().group.clone(),
            self.th().quad_lane.clone(),
            self.th().smem.clone(),
        );
        // This lane's columns in warp slot `slot`'s row of the region.
        let lane_base = |e: &mut Self, slot: &str| {
            let base = e.w.temp(RegClass::B32);
            e.w.ins(format!("mul.lo.u32 {base}, {slot}, {stride}"));
            e.w.ins(format!("mad.lo.u32 {base}, {quad_lane}, 8, {base}"));
            e.w.ins(format!("add.u32 {base}, {base}, {smem}"));
            e.w.ins(format!("add.u32 {base}, {base}, {region}"));
            base
        };
        let (lead, published) = (self.w.temp(RegClass::Pred), self.w.label("columns_published"));
        self.w.ins(format!("setp.ne.u32 {lead}, {group}, 0"));
        self.w.ins(format!("@{lead} bra {published}"));
        let base = lane_base(self, &warp);
        for i in 0..d.len {
            let (nt, e) = (i / 2, i % 2);
            self.w.ins(format!("st.shared.f32 [{base}+{}], {}", 4 * (8 * nt + e), d.at(i)));
        }
        self.w.place_label(&published);
        self.w.ins(format!("bar.sync {COLUMN_BARRIER}, {compute_threads}"));
        let first = self.w.temp(RegClass::B32);
        self.w.div_u32_by(&first, &warp, wps);
        self.w.ins(format!("mul.lo.u32 {first}, {first}, {wps}"));
        for j in 0..wps {
            let slot = self.w.temp(RegClass::B32);
            self.w.ins(format!("add.u32 {slot}, {first}, {j}"));
            let base = lane_base(self, &slot);
            for i in 0..d.len {
                let (nt, e) = (i / 2, i % 2);
                let at = format!("[{base}+{}]", 4 * (8 * nt + e));
                if j == 0 {
                    self.w.ins(format!("ld.shared.f32 {}, {at}", d.at(i)));
                } else {
                    let x = self.w.temp(RegClass::F32);
                    self.w.ins(format!("ld.shared.f32 {x}, {at}"));
                    self.w.ins(format!("{instr} {0}, {0}, {x}", d.at(i)));
                }
            }
        }
        self.w.ins(format!("bar.sync {COLUMN_BARRIER}, {compute_threads}"));
        Ok(())
    }

    fn binary(&mut self, dst: Value, op: BinOp, lhs: Value, rhs: Value) -> Result<(), CodegenError> {
        let (lt, rt, dt) = (self.kernel.ty(lhs), self.kernel.ty(rhs), self.kernel.ty(dst));
        let (d, l, mut r) = (self.regs_of(dst), self.regs_of(lhs), self.regs_of(rhs));
        let elem = lt.elem().unwrap_or(Elem::F32);
        if elem == Elem::F32 && op == BinOp::Sub && matches!(rt, Type::Row { .. }) {
            r = self.neg_inf_rows_as_zero(dst, &r);
        }
        // Division of a tile or row by a row or scalar: one reciprocal per row (or scalar), then
        // multiply; a zero divisor gives 0 (a row that saw no key: its output is 0, not 0 / 0).
        let broadcast_divisor =
            rt.is_uniform() || matches!(rt, Type::Row { .. }) && !matches!(lt, Type::Row { .. });
        let (instr, r) =
            if elem == Elem::F32 && op == BinOp::Div && lt != rt && broadcast_divisor && !lt.is_uniform() {
                let inv = self.w.family(RegClass::F32, format!("%inv_{}_", dst.0), r.len);
                let zero = self.w.temp(RegClass::Pred);
                for i in 0..r.len {
                    self.w.ins(format!("rcp.rn.f32 {}, {}", inv.at(i), r.at(i)));
                    self.w.ins(format!("setp.eq.f32 {zero}, {}, 0f00000000", r.at(i)));
                    self.w.ins(format!("selp.f32 {}, 0f00000000, {}, {zero}", inv.at(i), inv.at(i)));
                }
                ("mul.f32".to_string(), inv)
            } else {
                (binary_instr(op, elem), r)
            };
        let skip = self.skip_unit_rescale(op, (lt, rt, elem), (&d, &l, &r));
        for i in d.written() {
            self.w.element(Some(i));
            let (li, ri) = (self.operand_index(lt, dt, i), self.operand_index(rt, dt, i));
            self.w.ins(format!("{instr} {}, {}, {}", d.at(i), l.at(li), r.at(ri)));
        }
        if let Some(skip) = skip {
            self.w.place_label(&skip);
        }
        Ok(())
    }

    /// A fragment tile scaled in place by a row of factors (the online softmax's `acc · α`):
    /// when no factor of the warp's rows differs from 1, which is most K/V tiles once the row
    /// maxima have settled, a warp-uniform branch skips the multiplies. Bit-exact: `x · 1 = x`
    /// for every float, NaN and infinities included. Returns the label that ends the multiplies.
    /// sm_90a only: its compute warpgroups have registers to spare under `setmaxnreg`, while on
    /// sm_89 the branch moved ptxas's allocation of the 255-register tilings of the tuning
    /// tables into spills (sm_90 JIT of the H200's 128×128 D = 128 entry: 28 B). And only for
    /// tiles of at least 64 registers a thread (D = 128 and up): on the H200 the branch cost
    /// 2% at D = 64 (32 multiplies saved when taken) and gained 1 to 6% at D = 128
    /// (`docs/measurements/2026-12-03-h200-fold.txt`).
    fn skip_unit_rescale(
        &mut self,
        op: BinOp,
        (lt, rt, elem): (Type, Type, Elem),
        (d, l, r): (&RegFamily, &RegFamily, &RegFamily),
    ) -> Option<String> {
        let in_place_row_scale = op == BinOp::Mul
            && elem == Elem::F32
            && matches!(lt, Type::Frag { .. })
            && matches!(rt, Type::Row { .. })
            && d.is(l)
            && self.stream.is_none()
            && self.cfg.target == Target::Sm90a
            && d.len >= SKIP_RESCALE_MIN_REGISTERS;
        if !in_place_row_scale || r.len == 0 {
            return None;
        }
        let (changes, skip) = (self.w.temp(RegClass::Pred), self.w.label("rescale_done"));
        self.w.comment("skip the rescale when every factor of this warp's rows is 1");
        self.w.ins(format!("setp.neu.f32 {changes}, {}, 0f3F800000", r.at(0)));
        for i in 1..r.len {
            let row_changes = self.w.temp(RegClass::Pred);
            self.w.ins(format!("setp.neu.f32 {row_changes}, {}, 0f3F800000", r.at(i)));
            self.w.ins(format!("or.pred {changes}, {changes}, {row_changes}"));
        }
        self.w.ins(format!("vote.sync.any.pred {changes}, {changes}, 0xffffffff"));
        self.w.ins(format!("@!{changes} bra.uni {skip}"));
        Some(skip)
    }

    /// Which register of an operand of type `operand` pairs with register `i` of an elementwise
    /// result of type `result`: uniforms broadcast (register 0), a row vector along the rows of
    /// a fragment tile, same-shaped operands register by register.
    fn operand_index(&self, operand: Type, result: Type, i: usize) -> usize {
        match (operand, result) {
            (o, _) if o.is_uniform() => 0,
            (Type::Row { .. }, Type::Frag { cols, .. }) => {
                // Accumulator register i = ((mf * n_tiles + nt) * 4 + e); rows: e / 2.
                let per_block = cols.per_warp(&self.cfg) as usize / 8 * 4;
                let (mf, e) = (i / per_block, i % 4);
                row_reg(mf, e / 2)
            }
            (Type::Col { .. }, Type::Frag { cols, .. }) => {
                // Accumulator register i = ((mf * n_tiles + nt) * 4 + e); columns: nt, e % 2.
                let per_block = cols.per_warp(&self.cfg) as usize / 8 * 4;
                let (nt, e) = (i % per_block / 4, i % 4);
                2 * nt + e % 2
            }
            _ => i,
        }
    }

    fn unary(&mut self, dst: Value, op: UnaryOp, src: Value) -> Result<(), CodegenError> {
        let (d, s) = (self.regs_of(dst), self.regs_of(src));
        let elem = self.kernel.ty(src).elem();
        for i in d.written() {
            self.w.element(Some(i));
            let (x, y) = (d.at(i), s.at(i));
            match (op, elem) {
                (UnaryOp::Not, _) => self.w.ins(format!("not.pred {x}, {y}")),
                (UnaryOp::Neg, Some(Elem::I32)) => self.w.ins(format!("neg.s32 {x}, {y}")),
                (UnaryOp::Abs, Some(Elem::I32)) => self.w.ins(format!("abs.s32 {x}, {y}")),
                // Registers of 16-bit pairs: the f32 instructions below would misread them.
                (_, Some(Elem::F16 | Elem::Bf16)) => {
                    return Err(CodegenError::Internal(format!("{op:?} of 16-bit floats")));
                }
                (UnaryOp::Neg, _) => self.w.ins(format!("neg.f32 {x}, {y}")),
                (UnaryOp::Abs, _) => self.w.ins(format!("abs.f32 {x}, {y}")),
                (UnaryOp::Sqrt, _) => self.w.ins(format!("sqrt.rn.f32 {x}, {y}")),
                (UnaryOp::Exp, _) => {
                    self.w.ins(format!("mul.f32 {x}, {y}, {}", f32_hex(std::f32::consts::LOG2_E)));
                    self.w.ins(format!("ex2.approx.ftz.f32 {x}, {x}"));
                }
                (UnaryOp::Log, _) => {
                    self.w.ins(format!("lg2.approx.f32 {x}, {y}"));
                    self.w.ins(format!("mul.f32 {x}, {x}, {}", f32_hex(std::f32::consts::LN_2)));
                }
                (UnaryOp::FastTanh, _) => self.w.ins(format!("tanh.approx.f32 {x}, {y}")),
                (UnaryOp::Tanh, _) => {
                    // tanh y = 1 − 2 / (e^{2y} + 1): accurate to a few ulp of 1 in absolute terms
                    // (tanh.approx.f32 errs by 2^-11 relative, too coarse for scores); ±inf give
                    // ±1 and NaN stays NaN.
                    self.w.ins(format!("mul.f32 {x}, {y}, {}", f32_hex(2.0 * std::f32::consts::LOG2_E)));
                    self.w.ins(format!("ex2.approx.ftz.f32 {x}, {x}"));
                    self.w.ins(format!("add.f32 {x}, {x}, 0f3F800000"));
                    self.w.ins(format!("rcp.approx.ftz.f32 {x}, {x}"));
                    self.w.ins(format!("fma.rn.f32 {x}, {x}, 0fC0000000, 0f3F800000"));
                }
            }
        }
        Ok(())
    }

    /// `dst = table[indices..]`: each index clamped into its axis (`[0, len − 1]`), the byte
    /// offsets summed in 64 bits, one `ld.global` per element (uniform indices broadcast).
    fn gather(&mut self, dst: Value, param: usize, indices: &[Value]) -> Result<(), CodegenError> {
        let Some(Param::Table(table)) = self.kernel.params.get(param) else {
            return Err(CodegenError::Internal("gather from a parameter that is not a table".into()));
        };
        let dims = &table.dims;
        let ty = if table.elem == Elem::I32 { "s32" } else { "f32" };
        let global = self.tensors[param]
            .clone()
            .ok_or_else(|| CodegenError::Internal("table without a pointer".into()))?;
        let dt = self.kernel.ty(dst);
        let d = self.regs_of(dst);
        let regs: Vec<RegFamily> = indices.iter().map(|i| self.regs_of(*i)).collect();
        let tys: Vec<Type> = indices.iter().map(|i| self.kernel.ty(*i)).collect();
        // Each axis's last index, once.
        let last: Vec<String> = dims
            .iter()
            .map(|dim| {
                let len = self.dim_reg(*dim);
                let r = self.w.temp(RegClass::B32);
                self.w.ins(format!("sub.s32 {r}, {len}, 1"));
                r
            })
            .collect();
        // A variable-length axis of a packed table: this work item's sequence starts at row
        // `start` of it (the batch axis has stride 0).
        let starts: Vec<Option<String>> = dims.iter().map(|dim| self.packed_start(*dim)).collect();
        // An axis's byte offset for index register `idx`, clamped into `[0, len − 1]`.
        let offset = |this: &mut Self, axis: usize, idx: &str| {
            let mut clamped = this.clamp_index(idx, &last[axis]);
            if let Some(start) = &starts[axis] {
                let row = this.w.temp(RegClass::B32);
                this.w.ins(format!("add.u32 {row}, {clamped}, {start}"));
                clamped = row;
            }
            this.axis_offset(&clamped, &global.strides[axis])
        };
        // Uniform indices (a batch, a head) address once; the others per element.
        let base = self.w.temp(RegClass::B64);
        self.w.ins(format!("mov.b64 {base}, {}", global.ptr));
        for (axis, (r, t)) in regs.iter().zip(&tys).enumerate() {
            if t.is_uniform() {
                let bytes = offset(self, axis, &r.at(0));
                self.w.ins(format!("add.u64 {base}, {base}, {bytes}"));
            }
        }
        // The address is built axis by axis, and each partial address is kept by the index
        // registers it used: an index register shared by a row's (or key's) elements is
        // clamped and scaled once (`offsets`), and a row's partial address serves all its
        // elements.
        let mut partial: HashMap<Vec<String>, String> = HashMap::new();
        let mut offsets: HashMap<(usize, String), String> = HashMap::new();
        for i in d.written() {
            self.w.element(Some(i));
            let (mut addr, mut key) = (base.clone(), vec![]);
            for (axis, (r, t)) in regs.iter().zip(&tys).enumerate() {
                if t.is_uniform() {
                    continue;
                }
                key.push(r.at(self.operand_index(*t, dt, i)));
                addr = match partial.get(&key) {
                    Some(known) => known.clone(),
                    None => {
                        let idx = key.last().expect("pushed above").clone();
                        let bytes = match offsets.get(&(axis, idx.clone())) {
                            Some(bytes) => bytes.clone(),
                            None => {
                                let bytes = offset(self, axis, &idx);
                                offsets.insert((axis, idx), bytes.clone());
                                bytes
                            }
                        };
                        let next = self.w.temp(RegClass::B64);
                        self.w.ins(format!("add.u64 {next}, {addr}, {bytes}"));
                        partial.insert(key.clone(), next.clone());
                        next
                    }
                };
            }
            self.w.ins(format!("ld.global.{ty} {}, [{addr}]", d.at(i)));
        }
        Ok(())
    }

    /// The first row of this work item's sequence along `dim` when `dim` is a variable-length
    /// axis whose tensors and tables are packed (the varlen path, sequence offsets given).
    pub(super) fn packed_start(&self, dim: RtDim) -> Option<String> {
        self.sequence_of(dim).filter(|r| !r.lengths).map(|r| r.start.clone())
    }

    /// `table[indices..] = src` element by element: each thread writes the elements of its
    /// fragments whose indices all lie inside their axes (one unsigned compare each, so negative
    /// indices fail too) and whose `keep` holds. Elements that share their address and value
    /// (operands the same along a row) are written once.
    fn scatter(
        &mut self,
        param: usize,
        indices: &[Value],
        src: Value,
        keep: Option<Value>,
    ) -> Result<(), CodegenError> {
        let Some(Param::Table(table)) = self.kernel.params.get(param) else {
            return Err(CodegenError::Internal("scatter into a parameter that is not a table".into()));
        };
        let (dims, optional) = (table.dims.clone(), table.optional);
        let global = self.tensors[param]
            .clone()
            .ok_or_else(|| CodegenError::Internal("table without a pointer".into()))?;
        let operands: Vec<Value> = indices.iter().copied().chain([src]).chain(keep).collect();
        let shape = operands
            .iter()
            .map(|v| self.kernel.ty(*v))
            .try_fold(Type::Int, Type::broadcast)
            .ok_or_else(|| CodegenError::Internal("scatter operands of different shapes".into()))?;
        let count = layout::register_count(&self.cfg, &shape)
            .ok_or_else(|| CodegenError::Internal("scatter of a value that is not in registers".into()))?;
        let mut skip = Some(self.w.label("scatter_skip"));
        self.skip_store(&mut skip, "scatter_skip", param, optional)?;
        let skip = skip.expect("made above");
        let regs: Vec<RegFamily> = indices.iter().map(|i| self.regs_of(*i)).collect();
        let tys: Vec<Type> = indices.iter().map(|i| self.kernel.ty(*i)).collect();
        let (s, s_ty) = (self.regs_of(src), self.kernel.ty(src));
        let k = keep.map(|k| (self.regs_of(k), self.kernel.ty(k)));
        // Uniform indices (a batch, a head): checked and addressed once; a uniform index outside
        // its axis skips the whole store.
        let base = self.w.temp(RegClass::B64);
        self.w.ins(format!("mov.b64 {base}, {}", global.ptr));
        for (axis, (r, t)) in regs.iter().zip(&tys).enumerate() {
            if t.is_uniform() {
                let len = self.dim_reg(dims[axis]);
                let outside = self.w.temp(RegClass::Pred);
                self.w.ins(format!("setp.ge.u32 {outside}, {}, {len}", r.at(0)));
                self.w.ins(format!("@{outside} bra.uni {skip}"));
                let bytes = self.axis_offset(&r.at(0), &global.strides[axis]);
                self.w.ins(format!("add.u64 {base}, {base}, {bytes}"));
            }
        }
        // Per element: the address and the in-bounds test, axis by axis, each partial result
        // kept by the index registers it used (a row's elements share their row's part).
        let mut partial: HashMap<Vec<String>, (String, Option<String>)> = HashMap::new();
        let mut written: HashSet<(String, String, Option<String>)> = HashSet::new();
        for i in 0..count {
            let (mut addr, mut inside, mut key) = (base.clone(), None::<String>, vec![]);
            for (axis, (r, t)) in regs.iter().zip(&tys).enumerate() {
                if t.is_uniform() {
                    continue;
                }
                key.push(r.at(self.operand_index(*t, shape, i)));
                (addr, inside) = match partial.get(&key) {
                    Some(known) => known.clone(),
                    None => {
                        let idx = key.last().expect("pushed above").clone();
                        let len = self.dim_reg(dims[axis]);
                        let ok = self.w.temp(RegClass::Pred);
                        self.w.ins(format!("setp.lt.u32 {ok}, {idx}, {len}"));
                        if let Some(prev) = &inside {
                            self.w.ins(format!("and.pred {ok}, {ok}, {prev}"));
                        }
                        let bytes = self.axis_offset(&idx, &global.strides[axis]);
                        let next = self.w.temp(RegClass::B64);
                        self.w.ins(format!("add.u64 {next}, {addr}, {bytes}"));
                        partial.insert(key.clone(), (next.clone(), Some(ok.clone())));
                        (next, Some(ok))
                    }
                };
            }
            let value = s.at(self.operand_index(s_ty, shape, i));
            let kept = k.as_ref().map(|(f, t)| f.at(self.operand_index(*t, shape, i)));
            if !written.insert((addr.clone(), value.clone(), kept.clone())) {
                continue;
            }
            let guard = match (inside, kept) {
                (None, None) => String::new(),
                (Some(p), None) | (None, Some(p)) => format!("@{p} "),
                (Some(a), Some(b)) => {
                    let both = self.w.temp(RegClass::Pred);
                    self.w.ins(format!("and.pred {both}, {a}, {b}"));
                    format!("@{both} ")
                }
            };
            self.w.ins(format!("{guard}st.global.f32 [{addr}], {value}"));
        }
        self.w.place_label(&skip);
        Ok(())
    }

    /// Table index `idx` clamped into `[0, last]`, as `t.at(..)` reads (gathers and the ranges
    /// masks take of tables).
    pub(super) fn clamp_index(&mut self, idx: &str, last: &str) -> String {
        let clamped = self.w.temp(RegClass::B32);
        self.w.ins(format!("max.s32 {clamped}, {idx}, 0"));
        self.w.ins(format!("min.s32 {clamped}, {clamped}, {last}"));
        clamped
    }

    /// The byte offset (64-bit) of element `idx` along a table's axis whose stride is `stride`
    /// 4-byte elements (tables are f32 or i32): `(idx · 4) · stride` in one wide multiply (which
    /// ptxas merges with the add that follows), so the offset may pass 4 GiB. `idx · 4` fits
    /// 32 bits: the launch refuses table axes of 2³⁰ elements or more, and indices are clamped
    /// into their axis.
    pub(super) fn axis_offset(&mut self, idx: &str, stride: &str) -> String {
        let (idx_bytes, bytes) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B64));
        self.w.ins(format!("shl.b32 {idx_bytes}, {idx}, 2"));
        self.w.ins(format!("mul.wide.u32 {bytes}, {idx_bytes}, {stride}"));
        bytes
    }

    /// `dst[r][c]` = `index · tile + r` (rows) or `+ c` (columns): element (mf, nt, e) of a
    /// fragment tile is row `warp_row0 + 16·mf + 8·(e / 2) + lane / 4` and column
    /// `key0 + 8·nt + 2·(lane % 4) + e % 2` (key0: the split-KV group's first key).
    fn position(&mut self, dst: Value, axis: TileAxis, index: Value) -> Result<(), CodegenError> {
        let (Type::Frag { cols, .. }, Type::Index { tile: Some(tile), .. }) =
            (self.kernel.ty(dst), self.kernel.ty(index))
        else {
            return Err(CodegenError::Internal("position of a non-fragment".into()));
        };
        let d = self.regs_of(dst);
        let written: HashSet<usize> = d.written().into_iter().collect();
        let idx = self.regs_of(index).at(0);
        let shape = frag_shape(&self.cfg, cols, Elem::F32);
        let elements: Vec<_> = shape.acc_elements().filter(|(reg, _, _)| written.contains(reg)).collect();
        let base = self.w.temp(RegClass::B32);
        match axis {
            TileAxis::Rows => {
                let (row0, group) = (self.th().warp_row0.clone(), self.th().group.clone());
                self.w.ins(format!("mad.lo.u32 {base}, {idx}, {}, {row0}", tile.size(&self.cfg)));
                self.w.ins(format!("add.u32 {base}, {base}, {group}"));
                for &(reg, row_offset, _) in &elements {
                    self.w.element(Some(reg));
                    self.w.ins(format!("add.u32 {}, {base}, {row_offset}", d.at(reg)));
                }
            }
            TileAxis::Cols => {
                let quad_lane = self.th().quad_lane.clone();
                self.w.ins(format!("shl.b32 {base}, {quad_lane}, 1"));
                self.w.ins(format!("mad.lo.u32 {base}, {idx}, {}, {base}", tile.size(&self.cfg)));
                if let Some(key0) = self.split_key0(cols) {
                    self.w.ins(format!("add.u32 {base}, {base}, {key0}"));
                }
                for &(reg, _, col_offset) in &elements {
                    self.w.element(Some(reg));
                    self.w.ins(format!("add.u32 {}, {base}, {col_offset}", d.at(reg)));
                }
            }
        }
        Ok(())
    }

    /// A copy of row registers `r` with -inf replaced by 0 (FlashAttention's check for rows that
    /// have seen no key yet: `x − max` stays -inf instead of becoming NaN).
    pub(crate) fn neg_inf_rows_as_zero(&mut self, dst: Value, r: &RegFamily) -> RegFamily {
        let safe = self.w.fresh_family(RegClass::F32, &format!("%safe_{}_", dst.0), r.len);
        let inf = self.w.temp(RegClass::Pred);
        for i in 0..r.len {
            self.w.ins(format!("setp.eq.f32 {inf}, {}, 0fFF800000", r.at(i)));
            self.w.ins(format!("selp.f32 {}, 0f00000000, {}, {inf}", safe.at(i), r.at(i)));
        }
        safe
    }

    // ---------------------------------------------------------------------------------------
    // Split-KV

    /// `merge_kv_splits`: groups 1.. of the compute warps publish their (m, l, acc) registers
    /// in the merge region (register r of lane L of warp w at `((w − wps)·R + r)·128 + 4L`,
    /// conflict-free), a named barrier over the compute warps, then each group-0 warp folds in
    /// the states of the warps with its rows in the other groups, a row at a time:
    /// `m' = max(m, mᵢ)`, `α = 2^(m − m')`, `β = 2^(mᵢ − m')` (a row still at −inf counts as 0),
    /// `l' = α·l + β·lᵢ`, `acc' = α·acc + β·accᵢ`. A second barrier keeps the region from being
    /// rewritten (next work item) before group 0 has read it.
    fn merge_splits(&mut self, max: Value, sum: Value, acc: Value) -> Result<(), CodegenError> {
        let split = self
            .th()
            .split
            .clone()
            .ok_or_else(|| CodegenError::Internal("merge_kv_splits without kv_splits > 1".into()))?;
        let region =
            self.plan.merge_region.ok_or_else(|| CodegenError::Internal("no merge region planned".into()))?;
        let (m, l, a) = (self.regs_of(max), self.regs_of(sum), self.regs_of(acc));
        let Type::Frag { cols, .. } = self.kernel.ty(acc) else {
            return Err(CodegenError::Internal("merge of a non-fragment accumulator".into()));
        };
        let shape = frag_shape(&self.cfg, cols, Elem::F32);
        let published = state_regs([&m, &l, &a]);
        let regs = published.len() as u32;
        if regs != self.plan.merge_regs {
            return Err(CodegenError::Internal("merge region sized for another state".into()));
        }
        let (wps, compute_threads) = (self.cfg.warps_per_split(), self.cfg.warps * 32);
        let (warp, lane, smem) = (self.th().warp.clone(), self.th().lane.clone(), self.th().smem.clone());
        // This lane's address for register 0 of warp slot `slot` (a register).
        let lane_base = |e: &mut Self, slot: &str| {
            let base = e.w.temp(RegClass::B32);
            e.w.ins(format!("mul.lo.u32 {base}, {slot}, {}", regs * 128));
            e.w.ins(format!("mad.lo.u32 {base}, {lane}, 4, {base}"));
            e.w.ins(format!("add.u32 {base}, {base}, {smem}"));
            e.w.ins(format!("add.u32 {base}, {base}, {region}"));
            base
        };
        if self.plan.merge_in_ring {
            self.w.comment("the merge region is the K/V ring's memory: every warp is done reading the ring");
            self.w.ins(format!("bar.sync {MERGE_BARRIER}, {compute_threads}"));
        }
        let (partner, published_done, merged) =
            (self.w.temp(RegClass::Pred), self.w.label("merge_published"), self.w.label("merge_done"));
        self.w.ins(format!("setp.ne.u32 {partner}, {}, 0", split.index));
        self.w.ins(format!("@!{partner} bra.uni {published_done}"));
        let slot = self.w.temp(RegClass::B32);
        self.w.ins(format!("sub.u32 {slot}, {warp}, {wps}"));
        let base = lane_base(self, &slot);
        for (r, reg) in published.iter().enumerate() {
            self.w.ins(format!("st.shared.f32 [{base}+{}], {reg}", r * 128));
        }
        self.w.place_label(&published_done);
        self.w.ins(format!("bar.sync {MERGE_BARRIER}, {compute_threads}"));
        self.w.ins(format!("@{partner} bra.uni {merged}"));
        for g in 1..self.cfg.kv_splits {
            self.w.comment(format!("fold in group {g}"));
            let slot = self.w.temp(RegClass::B32);
            self.w.ins(format!("add.u32 {slot}, {warp}, {}", (g - 1) * wps));
            let base = lane_base(self, &slot);
            let mut load = |e: &mut Self, r: usize| {
                let x = e.w.temp(RegClass::F32);
                e.w.ins(format!("ld.shared.f32 {x}, [{base}+{}]", r * 128));
                x
            };
            self.fold_state([&m, &l, &a], &shape, &mut load);
        }
        self.w.place_label(&merged);
        self.w.ins(format!("bar.sync {MERGE_BARRIER}, {compute_threads}"));
        Ok(())
    }

    /// Folds another online-softmax state of the same rows into `(m, l, acc)` in place, by
    /// log-sum-exp (`m = max(m, m')`, `l = 2^(m−m)·l + 2^(m'−m)·l'`, likewise `acc`; a row
    /// both states have seen no key of stays empty). `other(r)` gives the other state's
    /// register `r` in the order `m`, `l`, `acc` (a register it loads).
    fn fold_state(
        &mut self,
        [m, l, a]: [&RegFamily; 3],
        shape: &crate::layout::FragShape,
        other: &mut dyn FnMut(&mut Self, usize) -> String,
    ) {
        for row in 0..m.len {
            let (m_other, l_other) = (other(self, row), other(self, m.len + row));
            let (m_new, safe, alpha, beta) = (
                self.w.temp(RegClass::F32),
                self.w.temp(RegClass::F32),
                self.w.temp(RegClass::F32),
                self.w.temp(RegClass::F32),
            );
            let inf = self.w.temp(RegClass::Pred);
            self.w.ins(format!("max.f32 {m_new}, {}, {m_other}", m.at(row)));
            self.w.ins(format!("setp.eq.f32 {inf}, {m_new}, 0fFF800000"));
            self.w.ins(format!("selp.f32 {safe}, 0f00000000, {m_new}, {inf}"));
            self.w.ins(format!("sub.f32 {alpha}, {}, {safe}", m.at(row)));
            self.w.ins(format!("ex2.approx.ftz.f32 {alpha}, {alpha}"));
            self.w.ins(format!("sub.f32 {beta}, {m_other}, {safe}"));
            self.w.ins(format!("ex2.approx.ftz.f32 {beta}, {beta}"));
            self.w.ins(format!("mov.f32 {}, {m_new}", m.at(row)));
            self.w.ins(format!("mul.f32 {0}, {0}, {alpha}", l.at(row)));
            self.w.ins(format!("fma.rn.f32 {0}, {l_other}, {beta}, {0}", l.at(row)));
            // Accumulator elements of this row: block mf = row / 2, elements 2h, 2h + 1.
            let (mf, h) = (row / 2, row % 2);
            for nt in 0..shape.col_blocks {
                for e in [2 * h, 2 * h + 1] {
                    let i = shape.acc(mf, nt, e);
                    let x = other(self, m.len + l.len + i);
                    self.w.ins(format!("mul.f32 {0}, {0}, {alpha}", a.at(i)));
                    self.w.ins(format!("fma.rn.f32 {0}, {x}, {beta}, {0}", a.at(i)));
                }
            }
        }
    }

    /// Split-KV across CTAs ([`Op::CombineCtas`]): this CTA's state `(m, l, acc)` goes to its
    /// slot of the workspace (`[item][split][register][thread]` f32, each thread its own
    /// registers: every CTA of the kernel lays its fragments out alike), a barrier, thread 0
    /// counts the CTA in the item's arrival counter (after the states, `[item]` u32) and shares
    /// whether it was the last; the others leave the work item, the last reads split 0's state
    /// and folds splits 1.. in, in order (deterministic: the same sums whichever CTA is last),
    /// resets the counter for the next launch, and goes on to the stores.
    ///
    /// With split-KV inside the CTA too (`kv_splits` groups, merged before this op), only group
    /// 0 holds the CTA's state, and only it writes; the last CTA's groups then share the fold:
    /// group `g` folds splits `g, g + kv_splits, ..` (in order), and the groups' states are
    /// merged in the CTA as after the K/V loop. The fold's chain of dependent workspace reads is
    /// `kv_splits` times shorter.
    fn combine_ctas(&mut self, max: Value, sum: Value, acc: Value) -> Result<(), CodegenError> {
        let missing = || CodegenError::Internal("combine_ctas outside a work loop split across CTAs".into());
        let c = self.combine.clone().ok_or_else(missing)?;
        let workspace = self.workspace.clone().ok_or_else(missing)?;
        let flag = self.plan.combine_flag.ok_or_else(missing)?;
        let (m, l, a) = (self.regs_of(max), self.regs_of(sum), self.regs_of(acc));
        let Type::Frag { cols, .. } = self.kernel.ty(acc) else {
            return Err(CodegenError::Internal("combine of a non-fragment accumulator".into()));
        };
        let shape = frag_shape(&self.cfg, cols, Elem::F32);
        let state = state_regs([&m, &l, &a]);
        let (regs, threads, kv_ctas) = (state.len() as u32, self.cfg.threads(), self.cfg.kv_ctas);
        if regs != crate::combine_state_registers(self.kernel) {
            return Err(CodegenError::Internal("workspace sized for another state".into()));
        }
        let (thread, smem) = (self.th().thread.clone(), self.th().smem.clone());
        // The threads whose registers a slot holds: split group 0's with split-KV in the CTA.
        let group = self.th().split.clone();
        let writers = crate::combine_state_threads(&self.cfg);
        let state_bytes = regs * writers * 4;
        let slot_thread = match &group {
            Some(_) => {
                let t = self.w.temp(RegClass::B32);
                self.w.rem_u32_by(&t, &thread, writers);
                t
            }
            None => thread.clone(),
        };
        // The address of this thread's register 0 in split `split`'s slot of this work item.
        let slot_base = |e: &mut Self, split: &str| {
            let (slot, base) = (e.w.temp(RegClass::B32), e.w.temp(RegClass::B64));
            e.w.ins(format!("mad.lo.u32 {slot}, {}, {kv_ctas}, {split}", c.item));
            let (off, part) = (e.w.temp(RegClass::B64), e.w.temp(RegClass::B64));
            e.w.ins(format!("mul.wide.u32 {off}, {slot}, {state_bytes}"));
            e.w.ins(format!("mul.wide.u32 {part}, {slot_thread}, 4"));
            e.w.ins(format!("add.u64 {off}, {off}, {part}"));
            e.w.ins(format!("add.u64 {base}, {workspace}, {off}"));
            base
        };
        self.w.comment(format!(
            "combine across CTAs: this CTA's state ({regs} registers a thread) to the workspace"
        ));
        let written = group.as_ref().map(|g| {
            let (other_group, written) = (self.w.temp(RegClass::Pred), self.w.label("state_written"));
            self.w.comment("(only split group 0 holds the CTA's merged state)");
            self.w.ins(format!("setp.ne.u32 {other_group}, {}, 0", g.index));
            self.w.ins(format!("@{other_group} bra.uni {written}"));
            written
        });
        let own = slot_base(self, &c.split);
        for (r, reg) in state.iter().enumerate() {
            self.w.ins(format!("st.global.cg.f32 [{own}+{}], {reg}", r as u32 * writers * 4));
        }
        if let Some(written) = written {
            self.w.place_label(&written);
        }
        // The item's arrival counter, after every item's states.
        let (counter, off) = (self.w.temp(RegClass::B64), self.w.temp(RegClass::B64));
        self.w.ins(format!("mul.wide.u32 {off}, {}, {}", c.items, kv_ctas * state_bytes));
        self.w.ins(format!("add.u64 {counter}, {workspace}, {off}"));
        self.w.ins(format!("mul.wide.u32 {off}, {}, 4", c.item));
        self.w.ins(format!("add.u64 {counter}, {counter}, {off}"));
        self.w.ins("fence.acq_rel.gpu");
        self.w.ins(format!("bar.sync 0, {threads}"));
        let (first, arrived, last, flag_addr) = (
            self.w.temp(RegClass::Pred),
            self.w.temp(RegClass::B32),
            self.w.temp(RegClass::B32),
            self.w.temp(RegClass::B32),
        );
        self.w.ins(format!("add.u32 {flag_addr}, {smem}, {flag}"));
        self.w.ins(format!("setp.eq.u32 {first}, {thread}, 0"));
        self.w.comment("thread 0 counts this CTA in; the item's last CTA goes on, the others leave it");
        self.w.ins(format!("@{first} atom.global.acq_rel.gpu.add.u32 {arrived}, [{counter}], 1"));
        self.w.ins(format!("@{first} st.shared.u32 [{flag_addr}], {arrived}"));
        self.w.ins(format!("bar.sync 0, {threads}"));
        self.w.ins(format!("ld.shared.u32 {last}, [{flag_addr}]"));
        let not_last = self.w.temp(RegClass::Pred);
        self.w.ins(format!("setp.ne.u32 {not_last}, {last}, {}", kv_ctas - 1));
        self.w.ins(format!("@{not_last} bra.uni {}", c.next));
        self.w.ins("fence.acq_rel.gpu");
        self.w.ins(format!("@{first} st.global.u32 [{counter}], 0"));
        // Split `first`'s state, then splits `first + step, ..` folded in, in order: the same
        // arithmetic whichever CTA arrives last, so the output is identical launch to launch.
        // With split groups in the CTA, group g starts at split g (an empty state if there is
        // none) and steps by the groups; the groups are merged after.
        let (first, step) = match &group {
            Some(g) => (g.index.clone(), self.cfg.kv_splits),
            None => ("0".to_string(), 1),
        };
        let (split, fold_done) = (self.w.temp(RegClass::B32), self.w.label("combine_done"));
        self.w.ins(format!("mov.u32 {split}, {first}"));
        if group.is_some() {
            self.w.comment(format!(
                "the last CTA: split group g folds splits g, g + {step}, .. in order (none: an empty state)"
            ));
            let none = self.w.temp(RegClass::Pred);
            self.w.ins(format!("setp.ge.u32 {none}, {split}, {kv_ctas}"));
            for (r, reg) in state.iter().enumerate() {
                let empty = if r < m.len { "0fFF800000" } else { "0f00000000" };
                self.w.ins(format!("@{none} mov.f32 {reg}, {empty}"));
            }
            self.w.ins(format!("@{none} bra.uni {fold_done}"));
        } else {
            self.w
                .comment("the last CTA: split 0's state, then each other split's folded in, in split order");
        }
        let first_state = slot_base(self, &split);
        for (r, reg) in state.iter().enumerate() {
            self.w.ins(format!("ld.global.cg.f32 {reg}, [{first_state}+{}]", r as u32 * writers * 4));
        }
        let top = self.w.label("combine");
        let more = self.w.temp(RegClass::Pred);
        self.w.ins(format!("add.u32 {split}, {split}, {step}"));
        self.w.ins(format!("setp.lt.u32 {more}, {split}, {kv_ctas}"));
        self.w.ins(format!("@!{more} bra.uni {fold_done}"));
        self.w.place_label(&top);
        self.w.indent();
        let base = slot_base(self, &split);
        let mut load = |e: &mut Self, r: usize| {
            let x = e.w.temp(RegClass::F32);
            e.w.ins(format!("ld.global.cg.f32 {x}, [{base}+{}]", r as u32 * writers * 4));
            x
        };
        self.fold_state([&m, &l, &a], &shape, &mut load);
        self.w.ins(format!("add.u32 {split}, {split}, {step}"));
        self.w.ins(format!("setp.lt.u32 {more}, {split}, {kv_ctas}"));
        self.w.ins(format!("@{more} bra.uni {top}"));
        self.w.dedent();
        self.w.place_label(&fold_done);
        if group.is_some() {
            self.w.comment("the split groups' folds merged, as after the K/V loop");
            self.merge_splits(max, sum, acc)?;
        }
        // The flag word is read again by the next work item's combine.
        self.w.ins(format!("bar.sync 0, {threads}"));
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Output

    /// `store(t.tile(..), value)`: a register tile into a `[B, H, S, D]` tensor, or a row
    /// vector into a per-row `[B, H, S]` one.
    fn store(&mut self, dst: &TileAccess, src: Value, via: Option<Value>) -> Result<(), CodegenError> {
        let tensor = self.kernel.tensor(dst.param).expect("store to a tensor").clone();
        let mut skip = None;
        self.skip_store(&mut skip, "store_skip", dst.param, tensor.optional)?;
        if tensor.is_rows() {
            self.store_rows(dst, src)?;
        } else {
            // The tile passes through the row-tile region, or the ring slot of view `via`.
            let region = match via {
                Some(view) => self.tiles.get(&view).map(|t| t.offset.clone()).ok_or_else(|| {
                    CodegenError::Internal(format!("{} is not a staged tile", self.vname(view)))
                })?,
                None => self.row_tile_offset()?.to_string(),
            };
            self.store_tile(dst, src, &region, via.is_some())?;
        }
        if let Some(skip) = skip {
            self.w.place_label(&skip);
        }
        Ok(())
    }

    /// The branches past a store to `param` (to `skip`, a label named `hint`, made when first
    /// needed), both uniform: an optional output the caller did not pass (a null pointer); and,
    /// with split-KV, outside the K/V loop, every group but 0 (before the merge the groups hold
    /// the same rows, after it only group 0 holds them; inside the loop each writes its own keys).
    fn skip_store(
        &mut self,
        skip: &mut Option<String>,
        hint: &str,
        param: usize,
        optional: bool,
    ) -> Result<(), CodegenError> {
        if optional {
            let ptr = self.tensors[param].as_ref().map(|t| t.ptr.clone()).ok_or_else(|| {
                CodegenError::Internal(format!("`{}` has no pointer", self.kernel.params[param].name()))
            })?;
            let label = skip.get_or_insert_with(|| self.w.label(hint)).clone();
            let absent = self.w.temp(RegClass::Pred);
            self.w.ins(format!("setp.eq.u64 {absent}, {ptr}, 0"));
            self.w.ins(format!("@{absent} bra.uni {label}"));
        }
        if let Some(split) = self.th().split.clone().filter(|_| self.pipeline_count.is_none()) {
            let label = skip.get_or_insert_with(|| self.w.label(hint)).clone();
            let partner = self.w.temp(RegClass::Pred);
            self.w.ins(format!("setp.ne.u32 {partner}, {}, 0", split.index));
            self.w.ins(format!("@{partner} bra.uni {label}"));
        }
        Ok(())
    }

    /// One f32 per row: lane 0 of each quad (the four lanes hold the same row value) writes the
    /// rows of its warp that lie inside the sequence.
    fn store_rows(&mut self, dst: &TileAccess, src: Value) -> Result<(), CodegenError> {
        let s = self.regs_of(src);
        let t = self.t.as_ref().expect("prologue");
        let (warp_row0, group, quad_lane) = (t.warp_row0.clone(), t.group.clone(), t.quad_lane.clone());
        let rows = self.tile_rows(dst);
        let global = self.tile_address(dst, rows, None)?;
        let valid = self.valid_rows(dst, None);
        let lead = self.w.temp(RegClass::Pred);
        self.w.ins(format!("setp.eq.u32 {lead}, {quad_lane}, 0"));
        for mf in 0..self.cfg.rows_per_warp() as usize / 16 {
            for h in 0..2 {
                let row = self.w.temp(RegClass::B32);
                self.w.ins(format!("add.u32 {row}, {warp_row0}, {}", 16 * mf + 8 * h));
                self.w.ins(format!("add.u32 {row}, {row}, {group}"));
                let write = self.w.temp(RegClass::Pred);
                self.w.ins(format!("setp.lt.u32 {write}, {row}, {valid}"));
                self.w.ins(format!("and.pred {write}, {write}, {lead}"));
                let addr = self.w.temp(RegClass::B64);
                self.w.ins(format!("mul.wide.u32 {addr}, {row}, {}", global.row_stride));
                self.w.ins(format!("add.u64 {addr}, {}, {addr}", global.addr));
                self.w.ins(format!("@{write} st.global.f32 [{addr}], {}", s.at(row_reg(mf, h))));
            }
        }
        Ok(())
    }

    /// f32 fragments to the tensor's 16-bit type, through this warp's rows of the shared-memory
    /// region at `region` (the row-tile region's offset, or a register holding a ring slot's),
    /// then 16-byte coalesced stores. Only this warp touches those rows, so a warp barrier
    /// suffices, except on sm_90a where wgmmas read the region (a Q kept there, or `in_ring`:
    /// the slot of a Q tile the producer fed): there the warpgroup meets before the first write.
    fn store_tile(
        &mut self,
        dst: &TileAccess,
        src: Value,
        region: &str,
        in_ring: bool,
    ) -> Result<(), CodegenError> {
        let tensor = self.kernel.tensor(dst.param).expect("store to a tensor").clone();
        // The output is written in the tensor's own 16-bit type.
        let half = tensor.elem.name();
        let Type::Frag { cols, .. } = self.kernel.ty(src) else {
            return Err(CodegenError::Internal("store of a non-fragment".into()));
        };
        let s = self.regs_of(src);
        let shape = frag_shape(&self.cfg, cols, Elem::F32);
        let (rb, cpr) = (row_bytes(&self.cfg), chunks_per_row(&self.cfg));
        // sm_90a keeps loaded A tiles in this region in wgmma's column-block layout; the O tile
        // passes through in the same layout, so each warp's rows are the same bytes in both.
        let blocks = self.column_blocks(Some(self.cfg.tile_m));
        let rb = if blocks.is_some() { wgmma::BLOCK_ROW_BYTES } else { rb };
        let t = self.t.as_ref().expect("prologue");
        let (warp_row0, group, quad_lane, lane, smem) =
            (t.warp_row0.clone(), t.group.clone(), t.quad_lane.clone(), t.lane.clone(), t.smem.clone());
        // Each thread writes f16 pairs: row (warp_row0 + 16 mf + g + 8 h), chunk nt, byte 4 t.
        let quad_bytes = self.w.temp(RegClass::B32);
        self.w.ins(format!("shl.b32 {quad_bytes}, {quad_lane}, 2"));
        // The swizzle key of rows 16 mf + 8 h + g: g % P (warp_row0 is a multiple of 16).
        let row_key = self.swizzle_key(&group);
        // The warp read these rows before (its Q fragments, by ldmatrix); every lane's reads
        // are done before any lane overwrites them (racecheck flags it otherwise). On sm_90a the
        // warpgroup's wgmmas read every warp's rows of a Q kept here: the warpgroup meets first,
        // so no warp overwrites rows another's last wgmma may still read (with a producer
        // warpgroup no CTA barrier ends the K/V loop).
        if self.cfg.target == Target::Sm90a && (in_ring || !self.plan.kept_a.is_empty()) {
            self.warpgroup_barrier()?;
        } else {
            self.w.ins("bar.warp.sync 0xffffffff");
        }
        // A region in a register joins each row's base; a constant one each store's offset.
        let (region_reg, region_offset) = match region.parse::<u32>() {
            Ok(offset) => (None, offset),
            Err(_) => (Some(region.to_string()), 0),
        };
        for mf in 0..shape.mfrags {
            for h in 0..2 {
                let row = self.w.temp(RegClass::B32);
                self.w.ins(format!("add.u32 {row}, {warp_row0}, {}", 16 * mf + 8 * h));
                self.w.ins(format!("add.u32 {row}, {row}, {group}"));
                let base = self.w.temp(RegClass::B32);
                self.w.ins(format!("mad.lo.u32 {base}, {row}, {rb}, {quad_bytes}"));
                self.w.ins(format!("add.u32 {base}, {base}, {smem}"));
                if let Some(reg) = &region_reg {
                    self.w.ins(format!("add.u32 {base}, {base}, {reg}"));
                }
                for nt in 0..shape.col_blocks {
                    let packed = self.w.temp(RegClass::B32);
                    self.w.ins(format!(
                        "cvt.rn.{half}x2.f32 {packed}, {}, {}",
                        s.at(shape.acc(mf, nt, 2 * h + 1)),
                        s.at(shape.acc(mf, nt, 2 * h))
                    ));
                    // physical chunk = nt ^ (row % P); in column blocks, chunk nt % 8 of block nt / 8
                    let (block, in_row) = match blocks {
                        Some(rows) => ((nt as u32 / 8) * rows * wgmma::BLOCK_ROW_BYTES, nt % 8),
                        None => (0, nt),
                    };
                    let chunk = self.w.temp(RegClass::B32);
                    self.w.ins(format!("xor.b32 {chunk}, {row_key}, {in_row}"));
                    self.w.ins(format!("shl.b32 {chunk}, {chunk}, 4"));
                    self.w.ins(format!("add.u32 {chunk}, {chunk}, {base}"));
                    self.w.ins(format!("st.shared.b32 [{chunk}+{}], {packed}", region_offset + block));
                }
            }
        }
        self.w.ins("bar.warp.sync 0xffffffff");
        let rows = self.tile_rows(dst);
        let global = self.tile_address(dst, rows, None)?;
        let valid = self.valid_rows(dst, None);
        let rows_per_warp = self.cfg.rows_per_warp();
        let chunks_per_lane = (rows_per_warp * cpr).div_ceil(32);
        for j in 0..chunks_per_lane {
            // chunk id = lane + 32 j inside this warp's rows
            let id = self.w.temp(RegClass::B32);
            self.w.ins(format!("add.u32 {id}, {lane}, {}", 32 * j));
            let guard = if (j + 1) * 32 > rows_per_warp * cpr {
                let p = self.w.temp(RegClass::Pred);
                self.w.ins(format!("setp.lt.u32 {p}, {id}, {}", rows_per_warp * cpr));
                format!("@{p} ")
            } else {
                String::new()
            };
            let (row, chunk) = (self.w.temp(RegClass::B32), self.w.temp(RegClass::B32));
            self.w.div_u32_by(&row, &id, cpr);
            self.w.rem_u32_by(&chunk, &id, cpr);
            self.w.ins(format!("add.u32 {row}, {row}, {warp_row0}"));
            let gaddr = self.global_chunk_base(&global, &chunk);
            let row_offset = self.w.temp(RegClass::B64);
            self.w.ins(format!("mul.wide.u32 {row_offset}, {row}, {}", global.row_stride));
            self.w.ins(format!("add.u64 {gaddr}, {gaddr}, {row_offset}"));
            let saddr = self.tile_chunk_address(&region.to_string(), &row, &chunk, blocks);
            let v: [String; 4] = std::array::from_fn(|_| self.w.temp(RegClass::B32));
            self.w.ins(format!("{guard}ld.shared.v4.b32 {{{}}}, [{saddr}]", v.join(", ")));
            // Rows past the end of the sequence are not written.
            let inside = self.w.temp(RegClass::Pred);
            self.w.ins(format!("setp.lt.u32 {inside}, {row}, {valid}"));
            if let Some(p) = guard.strip_prefix('@').map(|g| g.trim().to_string()) {
                self.w.ins(format!("and.pred {inside}, {inside}, {p}"));
            }
            self.w.ins(format!("@{inside} st.global.v4.b32 [{gaddr}], {{{}}}", v.join(", ")));
        }
        if in_ring {
            // The producer's next bulk copy into this slot writes through the async proxy: this
            // thread's ordinary accesses to it are ordered before, ahead of its release.
            self.w.ins("fence.proxy.async.shared::cta");
        }
        Ok(())
    }
}

/// Every (index value, head group) that the tile accesses in `block` use.
fn collect_head_groups(block: &Block, out: &mut Vec<(Value, HeadGroup)>) {
    for inst in &block.insts {
        for group in inst.op.tile_access().into_iter().flat_map(TileAccess::head_groups) {
            if !out.contains(&group) {
                out.push(group);
            }
        }
        for b in inst.op.blocks() {
            collect_head_groups(b, out);
        }
    }
}
