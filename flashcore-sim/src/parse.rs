//! Parses the PTX subset FlashCore emits into decoded instructions; anything else is an
//! `Unsupported` error naming the line, never a silent skip.

use std::collections::HashMap;

use crate::error::SimError;

/// A parsed PTX module: its kernels.
#[derive(Debug)]
pub struct Module {
    pub kernels: Vec<Kernel>,
}

/// One `.entry`: parameters, registers, decoded instructions and labels.
#[derive(Debug)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<ParamDecl>,
    /// Register names, indexed by register number.
    pub registers: Vec<String>,
    pub insts: Vec<Inst>,
    /// `.maxntid` x, if declared.
    pub max_threads: Option<u32>,
    /// Whether the kernel declares `.extern .shared` (dynamic shared memory).
    pub dynamic_shared: bool,
}

#[derive(Clone, Debug)]
pub struct ParamDecl {
    pub name: String,
    pub ty: ParamType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    U32,
    U64,
    F32,
    /// `.param .align 64 .b8 NAME[128]`: a tensor map, passed by value (see
    /// [`crate::TensorMap`]).
    TensorMap,
}

impl ParamType {
    pub fn bytes(self) -> u32 {
        match self {
            ParamType::U64 => 8,
            ParamType::U32 | ParamType::F32 => 4,
            ParamType::TensorMap => 128,
        }
    }
}

/// The simulator's generic address of kernel parameter `i` (what `mov.u64 d, PARAM` and then
/// `cvta.param.u64` give): a tag in the top bits, the parameter's index below.
pub const PARAM_ADDRESS: u64 = 0x7fff_0000_0000_0000;

/// One decoded instruction, with the PTX line it came from (1-based) and its text.
#[derive(Clone, Debug)]
pub struct Inst {
    pub line: u32,
    pub text: String,
    pub guard: Option<Guard>,
    pub op: Op,
}

#[derive(Clone, Copy, Debug)]
pub struct Guard {
    pub reg: u32,
    pub negate: bool,
}

/// A source or destination operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Operand {
    Reg(u32),
    Imm(u64),
    Special(Special),
    /// The dynamic shared-memory window (address 0 of the shared space).
    SharedBase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
    GlobalTimer,
}

/// `[base + offset]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Address {
    pub base: AddrBase,
    pub offset: i64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AddrBase {
    Reg(u32),
    Param(u32),
    Shared,
}

/// Where a wgmma's A operand comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WgmmaA {
    /// Four registers of f16/bf16 pairs, the `mma.m16n8k16` A fragment of the warp's rows.
    Registers([Operand; 4]),
    /// A shared-memory descriptor (K-major, not transposed).
    Descriptor(Operand),
}

/// Integer types (`.b*` behave as unsigned).
/// The special functions of `*.approx.f32` (the simulator computes them exactly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApproxFn {
    /// 2^x.
    Ex2,
    /// log2 x: −inf at ±0, NaN below 0.
    Lg2,
    /// tanh x.
    Tanh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntType {
    U32,
    S32,
    U64,
    S64,
}

impl IntType {
    pub fn bits(self) -> u32 {
        match self {
            IntType::U32 | IntType::S32 => 32,
            IntType::U64 | IntType::S64 => 64,
        }
    }
    pub fn signed(self) -> bool {
        matches!(self, IntType::S32 | IntType::S64)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntOp {
    Add,
    Sub,
    MulLo,
    MulHi,
    Div,
    Rem,
    Shl,
    Shr,
    And,
    Or,
    Xor,
    Min,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatOp {
    Add,
    Sub,
    Mul,
    Max,
    Min,
    /// `div.rn.f32`: IEEE division, rounded to nearest.
    Div,
}

/// Float functions of one operand computed exactly: `neg.f32`, `abs.f32`, `sqrt.rn.f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatFn {
    Neg,
    Abs,
    Sqrt,
}

/// Integer functions of one operand: `neg.s32`, `abs.s32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntFn {
    Neg,
    Abs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    /// Not equal, or unordered (either side NaN): `setp.neu.f32`.
    Neu,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpType {
    Int(IntType),
    F32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Param,
    Shared,
    Global,
}

/// Element type of an `mma` A/B operand and of a packed `cvt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalfType {
    F16,
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Bfly,
    Up,
    Down,
    Idx,
}

#[derive(Clone, Debug)]
pub enum Op {
    Mov {
        d: u32,
        a: Operand,
    },
    /// `mov.b64 d, {lo, hi}`: two 32-bit words into one 64-bit register.
    Pack64 {
        d: u32,
        lo: Operand,
        hi: Operand,
    },
    Int {
        op: IntOp,
        ty: IntType,
        d: u32,
        a: Operand,
        b: Operand,
    },
    Mad {
        ty: IntType,
        d: u32,
        a: Operand,
        b: Operand,
        c: Operand,
    },
    MulWide {
        ty: IntType,
        d: u32,
        a: Operand,
        b: Operand,
    },
    Bfe {
        ty: IntType,
        d: u32,
        a: Operand,
        b: Operand,
        c: Operand,
    },
    Not {
        ty: IntType,
        d: u32,
        a: Operand,
    },
    /// Integer widening/narrowing conversion (`cvt.u64.u32` and friends).
    CvtInt {
        dst: IntType,
        src: IntType,
        d: u32,
        a: Operand,
    },
    /// `cvt.rn.{f16x2,bf16x2}.f32 d, hi, lo`: `hi` goes to the upper half.
    CvtPack {
        ty: HalfType,
        d: u32,
        hi: Operand,
        lo: Operand,
    },
    Float {
        op: FloatOp,
        ftz: bool,
        d: u32,
        a: Operand,
        b: Operand,
    },
    Fma {
        d: u32,
        a: Operand,
        b: Operand,
        c: Operand,
    },
    /// `ex2.approx[.ftz].f32` and `lg2.approx[.ftz].f32`.
    Approx {
        func: ApproxFn,
        ftz: bool,
        d: u32,
        a: Operand,
    },
    /// `rcp.rn.f32` and `rcp.approx[.ftz].f32` (computed exactly).
    Rcp {
        d: u32,
        a: Operand,
    },
    FloatUnary {
        func: FloatFn,
        d: u32,
        a: Operand,
    },
    IntUnary {
        func: IntFn,
        ty: IntType,
        d: u32,
        a: Operand,
    },
    /// `cvt.f32.f16 d, a`: the f16 in the lower 16 bits of `a` to f32 (exact).
    CvtFromHalf {
        d: u32,
        a: Operand,
    },
    /// `cvt.rn.f32.s32` (and `.u32`): integer to the nearest f32.
    CvtFloat {
        src: IntType,
        d: u32,
        a: Operand,
    },
    Setp {
        cmp: Cmp,
        ty: CmpType,
        p: u32,
        a: Operand,
        b: Operand,
    },
    Selp {
        d: u32,
        a: Operand,
        b: Operand,
        p: Operand,
    },
    Ld {
        space: Space,
        width: u32,
        d: Vec<u32>,
        addr: Address,
    },
    St {
        space: Space,
        width: u32,
        addr: Address,
        a: Vec<Operand>,
    },
    CpAsync {
        dst: Address,
        src: Address,
        size: u32,
        src_size: Option<Operand>,
    },
    CpAsyncCommit,
    CpAsyncWait {
        n: u32,
    },
    CpAsyncMbarArrive {
        addr: Address,
        noinc: bool,
    },
    /// `cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes
    /// [dst], [map, {c0, c1, c2, c3}], [mbar]`: the box of the tensor map at generic address
    /// `map` (a kernel parameter) at these coordinates into shared memory at `dst`, each byte
    /// completing on the mbarrier at `mbar`.
    TmaLoad {
        dst: Address,
        map: Operand,
        coords: Vec<Operand>,
        mbar: Address,
    },
    Ldmatrix {
        count: u32,
        trans: bool,
        d: Vec<u32>,
        addr: Address,
    },
    Mma {
        ty: HalfType,
        d: [u32; 4],
        a: [Operand; 4],
        b: [Operand; 2],
        c: [Operand; 4],
    },
    /// `wgmma.fence.sync.aligned`: orders the warp's register writes before the wgmmas that
    /// follow read them.
    WgmmaFence,
    /// `wgmma.commit_group.sync.aligned`: closes the group of wgmmas issued since the last one.
    WgmmaCommit,
    /// `wgmma.wait_group.sync.aligned n`: until at most `n` committed groups are in flight.
    WgmmaWait {
        n: u32,
    },
    /// `wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{f16,bf16}.{f16,bf16} d, a, b-desc,
    /// scale-d, 1, 1, [0,] trans-b`: A from registers (`{a0..a3}`) or a K-major shared-memory
    /// descriptor, B through a shared-memory descriptor.
    Wgmma {
        ty: HalfType,
        n: u32,
        d: Vec<u32>,
        a: WgmmaA,
        desc: Operand,
        scale_d: Operand,
        trans_b: bool,
    },
    /// `fence.proxy.async[.shared::cta]`: the thread's generic-proxy accesses before it are
    /// ordered with async-proxy (wgmma, TMA) accesses after it.
    FenceProxyAsync,
    /// `fence.acq_rel.gpu` / `membar.gl`: orders the thread's global accesses across CTAs. The
    /// simulator runs one CTA at a time, so every CTA's writes are visible to the next: nothing.
    FenceGpu,
    /// `atom.global[.acq_rel.gpu].{add,min}.u32 d, [addr], b`: per lane, `d` gets the old word
    /// and the word becomes `old + b` (`min`: the unsigned smaller of the two), lane by lane,
    /// in lane order.
    AtomAdd {
        d: u32,
        addr: Address,
        b: Operand,
        /// `min` instead of `add`.
        min: bool,
    },
    /// `setmaxnreg.{inc,dec}.sync.aligned.u32 count`: the warp's registers a thread become
    /// `count`; an increase waits until the SM sub-partition's register file has them.
    SetMaxNReg {
        inc: bool,
        count: u32,
    },
    /// `redux.sync.{min,max}.{s32,u32}`: every executing lane gets the reduction over them.
    Redux {
        op: IntOp,
        ty: IntType,
        d: u32,
        a: Operand,
        mask: Operand,
    },
    /// `vote.sync.any.pred` (`all` false) / `vote.sync.all.pred`: every executing lane gets
    /// whether any (all) of them has predicate `a` set.
    Vote {
        all: bool,
        d: u32,
        a: Operand,
        mask: Operand,
    },
    Shfl {
        mode: ShflMode,
        d: u32,
        a: Operand,
        b: Operand,
        c: Operand,
        mask: Operand,
    },
    /// `bar.sync` / `bar.arrive` (`wait` false) with a barrier id and an optional thread count.
    Bar {
        wait: bool,
        id: Operand,
        count: Option<Operand>,
    },
    BarWarp {
        mask: Operand,
    },
    MbarInit {
        addr: Address,
        count: Operand,
    },
    /// `mbarrier.arrive.shared.b64 d, [addr]`, or with `tx`
    /// `mbarrier.arrive.expect_tx.shared::cta.b64 d, [addr], tx` (the phase also waits for `tx`
    /// more transaction bytes).
    MbarArrive {
        d: Option<u32>,
        addr: Address,
        tx: Option<Operand>,
    },
    MbarTestWait {
        p: u32,
        addr: Address,
        parity: Operand,
    },
    Bra {
        target: usize,
        uni: bool,
    },
    Ret,
    Trap,
    Nanosleep,
}

impl Op {
    /// Instructions PTX requires every thread of the warp to execute together (`.aligned`,
    /// `.sync`): a divergent execution is reported.
    pub fn is_aligned(&self) -> bool {
        matches!(
            self,
            Op::Ldmatrix { .. }
                | Op::Mma { .. }
                | Op::WgmmaFence
                | Op::WgmmaCommit
                | Op::WgmmaWait { .. }
                | Op::Wgmma { .. }
                | Op::Shfl { .. }
                | Op::Vote { .. }
                | Op::Redux { .. }
                | Op::Bar { .. }
                | Op::BarWarp { .. }
                | Op::SetMaxNReg { .. }
        )
    }
}

/// Parses PTX text.
pub fn parse(text: &str) -> Result<Module, SimError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut kernels = Vec::new();
    let mut dynamic_shared = false;
    let mut i = 0;
    while i < lines.len() {
        let line = strip_comment(lines[i]).trim();
        if line.starts_with(".extern .shared") {
            dynamic_shared = true;
        }
        if line.contains(".entry") {
            let (kernel, next) = parse_entry(&lines, i, dynamic_shared)?;
            kernels.push(kernel);
            i = next;
            continue;
        }
        i += 1;
    }
    if kernels.is_empty() {
        return Err(SimError::Parse { line: 0, message: "no `.entry` in the PTX".into() });
    }
    Ok(Module { kernels })
}

fn strip_comment(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

struct Raw {
    line: u32,
    text: String,
}

fn parse_entry(lines: &[&str], start: usize, dynamic_shared: bool) -> Result<(Kernel, usize), SimError> {
    let perr = |line: usize, message: String| SimError::Parse { line: line as u32 + 1, message };
    let header = strip_comment(lines[start]).trim();
    let name = header
        .split(".entry")
        .nth(1)
        .and_then(|s| s.trim().split('(').next())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| perr(start, "an `.entry` without a name".into()))?;
    let mut params = Vec::new();
    let mut i = start + 1;
    // Parameters up to `)`.
    if header.contains('(') && !header.contains(')') {
        while i < lines.len() {
            let l = strip_comment(lines[i]).trim();
            i += 1;
            if l.starts_with(')') {
                break;
            }
            let l = l.trim_end_matches(',');
            let parts: Vec<&str> = l.split_whitespace().collect();
            if let [".param", ".align", "64", ".b8", name] = parts.as_slice() {
                if let Some(name) = name.strip_suffix("[128]") {
                    params.push(ParamDecl { name: name.to_string(), ty: ParamType::TensorMap });
                    continue;
                }
            }
            if parts.len() != 3 || parts[0] != ".param" {
                return Err(perr(i - 1, format!("cannot read the parameter `{l}`")));
            }
            let ty = match parts[1] {
                ".u64" | ".b64" | ".s64" => ParamType::U64,
                ".u32" | ".b32" | ".s32" => ParamType::U32,
                ".f32" => ParamType::F32,
                other => return Err(perr(i - 1, format!("unsupported parameter type `{other}`"))),
            };
            params.push(ParamDecl { name: parts[2].to_string(), ty });
        }
    }
    let mut max_threads = None;
    let mut registers: Vec<String> = Vec::new();
    let mut reg_index: HashMap<String, u32> = HashMap::new();
    let mut raw: Vec<Raw> = Vec::new();
    let mut labels: HashMap<String, usize> = HashMap::new();
    let mut depth = 0i32;
    let mut opened = false;
    while i < lines.len() {
        let l = strip_comment(lines[i]).trim();
        let line_no = i;
        i += 1;
        if l.is_empty() {
            continue;
        }
        if l.starts_with(".maxntid") {
            max_threads = l[".maxntid".len()..].split(',').next().and_then(|s| s.trim().parse().ok());
            continue;
        }
        if l.starts_with(".minnctapersm") || l.starts_with(".maxnreg") || l.starts_with(".reqntid") {
            continue;
        }
        if l == "{" {
            depth += 1;
            opened = true;
            continue;
        }
        if l == "}" {
            depth -= 1;
            if opened && depth == 0 {
                break;
            }
            continue;
        }
        if l.starts_with(".reg") {
            declare_registers(l, &mut registers, &mut reg_index).map_err(|m| perr(line_no, m))?;
            continue;
        }
        if let Some(label) = l.strip_suffix(':') {
            labels.insert(label.trim().to_string(), raw.len());
            continue;
        }
        for stmt in l.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            raw.push(Raw { line: line_no as u32 + 1, text: stmt.to_string() });
        }
    }
    let param_index: HashMap<String, u32> =
        params.iter().enumerate().map(|(k, p)| (p.name.clone(), k as u32)).collect();
    let ctx = Ctx { regs: &reg_index, params: &param_index, labels: &labels };
    let mut insts = Vec::with_capacity(raw.len());
    for r in &raw {
        let (guard, op) = decode(&ctx, &r.text).map_err(|m| match m {
            Decode::Unsupported => SimError::Unsupported { line: r.line, text: r.text.clone() },
            Decode::Bad(message) => {
                SimError::Parse { line: r.line, message: format!("{message}: `{}`", r.text) }
            }
        })?;
        insts.push(Inst { line: r.line, text: r.text.clone(), guard, op });
    }
    Ok((Kernel { name, params, registers, insts, max_threads, dynamic_shared }, i))
}

/// `.reg .b32 %r<601>;` declares `%r0`..`%r600`; `.reg .b32 %x;` declares `%x`.
fn declare_registers(
    l: &str,
    registers: &mut Vec<String>,
    index: &mut HashMap<String, u32>,
) -> Result<(), String> {
    let body = l.trim_end_matches(';');
    let mut parts = body.split_whitespace();
    parts.next(); // .reg
    parts.next().ok_or("a `.reg` without a type")?;
    let rest: String = parts.collect::<Vec<_>>().join(" ");
    for name in rest.split(',').map(str::trim) {
        let mut add = |n: String| -> Result<(), String> {
            // As ptxas: a register declared twice is an error, not a silent alias.
            if index.insert(n.clone(), registers.len() as u32).is_some() {
                return Err(format!("duplicate definition of register `{n}`"));
            }
            registers.push(n);
            Ok(())
        };
        if let Some(open) = name.find('<') {
            let count: u32 = name[open + 1..]
                .trim_end_matches('>')
                .parse()
                .map_err(|_| format!("cannot read the register count in `{name}`"))?;
            for k in 0..count {
                add(format!("{}{k}", &name[..open]))?;
            }
        } else {
            add(name.to_string())?;
        }
    }
    Ok(())
}

struct Ctx<'a> {
    regs: &'a HashMap<String, u32>,
    params: &'a HashMap<String, u32>,
    labels: &'a HashMap<String, usize>,
}

enum Decode {
    Unsupported,
    Bad(String),
}

type D<T> = Result<T, Decode>;

fn bad<T>(m: impl Into<String>) -> D<T> {
    Err(Decode::Bad(m.into()))
}

/// Splits operands at top-level commas (not inside `{}` or `[]`).
fn split_operands(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '{' | '[' => {
                depth += 1;
                cur.push(ch)
            }
            '}' | ']' => {
                depth -= 1;
                cur.push(ch)
            }
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
            }
            _ => cur.push(ch),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

impl Ctx<'_> {
    fn reg(&self, s: &str) -> D<u32> {
        self.regs.get(s).copied().ok_or_else(|| Decode::Bad(format!("undeclared register `{s}`")))
    }

    fn operand(&self, s: &str) -> D<Operand> {
        let s = s.trim();
        if s.starts_with('%') {
            let special = match s {
                "%tid.x" => Some(Special::Tid(0)),
                "%tid.y" => Some(Special::Tid(1)),
                "%tid.z" => Some(Special::Tid(2)),
                "%ntid.x" => Some(Special::Ntid(0)),
                "%ntid.y" => Some(Special::Ntid(1)),
                "%ntid.z" => Some(Special::Ntid(2)),
                "%ctaid.x" => Some(Special::Ctaid(0)),
                "%ctaid.y" => Some(Special::Ctaid(1)),
                "%ctaid.z" => Some(Special::Ctaid(2)),
                "%nctaid.x" => Some(Special::Nctaid(0)),
                "%nctaid.y" => Some(Special::Nctaid(1)),
                "%nctaid.z" => Some(Special::Nctaid(2)),
                "%laneid" => Some(Special::LaneId),
                "%warpid" => Some(Special::WarpId),
                "%globaltimer" => Some(Special::GlobalTimer),
                _ => None,
            };
            return match special {
                Some(sp) => Ok(Operand::Special(sp)),
                None => Ok(Operand::Reg(self.reg(s)?)),
            };
        }
        if let Some(hex) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
            return u32::from_str_radix(hex, 16)
                .map(|v| Operand::Imm(v as u64))
                .map_err(|_| Decode::Bad(format!("bad float literal `{s}`")));
        }
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            return u64::from_str_radix(hex, 16)
                .map(Operand::Imm)
                .map_err(|_| Decode::Bad(format!("bad literal `{s}`")));
        }
        if let Ok(v) = s.parse::<u64>() {
            return Ok(Operand::Imm(v));
        }
        if let Ok(v) = s.parse::<i64>() {
            return Ok(Operand::Imm(v as u64));
        }
        if s == "flashcore_smem" {
            return Ok(Operand::SharedBase);
        }
        if let Some(p) = self.params.get(s) {
            return Ok(Operand::Imm(PARAM_ADDRESS | *p as u64));
        }
        bad(format!("cannot read the operand `{s}`"))
    }

    fn dest(&self, s: &str) -> D<u32> {
        match self.operand(s)? {
            Operand::Reg(r) => Ok(r),
            _ => bad(format!("`{s}` is not a register")),
        }
    }

    fn vector(&self, s: &str) -> D<Vec<String>> {
        let inner = s
            .trim()
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .ok_or_else(|| Decode::Bad(format!("expected a `{{...}}` vector, got `{s}`")))?;
        Ok(inner.split(',').map(|x| x.trim().to_string()).collect())
    }

    fn dest_vector(&self, s: &str) -> D<Vec<u32>> {
        self.vector(s)?.iter().map(|x| self.dest(x)).collect()
    }

    fn operand_vector(&self, s: &str) -> D<Vec<Operand>> {
        self.vector(s)?.iter().map(|x| self.operand(x)).collect()
    }

    fn address(&self, s: &str) -> D<Address> {
        let inner = s
            .trim()
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .ok_or_else(|| Decode::Bad(format!("expected an address `[...]`, got `{s}`")))?
            .replace(' ', "");
        let (base, offset) = match inner.find(['+', '-']) {
            Some(k) if k > 0 => {
                let off: i64 = inner[k + 1..]
                    .parse()
                    .map_err(|_| Decode::Bad(format!("bad address offset in `{s}`")))?;
                (&inner[..k], if &inner[k..k + 1] == "-" { -off } else { off })
            }
            _ => (inner.as_str(), 0),
        };
        let base = if base.starts_with('%') {
            AddrBase::Reg(self.reg(base)?)
        } else if base == "flashcore_smem" {
            AddrBase::Shared
        } else if let Some(p) = self.params.get(base) {
            AddrBase::Param(*p)
        } else {
            return bad(format!("unknown address base `{base}`"));
        };
        Ok(Address { base, offset })
    }

    fn label(&self, s: &str) -> D<usize> {
        self.labels.get(s.trim()).copied().ok_or_else(|| Decode::Bad(format!("unknown label `{s}`")))
    }
}

fn int_type(m: &str) -> Option<IntType> {
    Some(match m {
        "u32" | "b32" => IntType::U32,
        "s32" => IntType::S32,
        "u64" | "b64" => IntType::U64,
        "s64" => IntType::S64,
        _ => return None,
    })
}

fn decode(ctx: &Ctx, stmt: &str) -> D<(Option<Guard>, Op)> {
    let mut s = stmt.trim();
    let mut guard = None;
    if let Some(rest) = s.strip_prefix('@') {
        let (g, tail) = rest.split_once(char::is_whitespace).ok_or(Decode::Bad("a lone guard".into()))?;
        let (negate, name) = match g.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, g),
        };
        guard = Some(Guard { reg: ctx.reg(name)?, negate });
        s = tail.trim();
    }
    let (opcode, rest) = match s.split_once(char::is_whitespace) {
        Some((o, r)) => (o, r.trim()),
        None => (s, ""),
    };
    let ops = split_operands(rest);
    let parts: Vec<&str> = opcode.split('.').collect();
    let base = parts[0];
    let mods = &parts[1..];
    let has = |m: &str| mods.contains(&m);
    let n = |k: usize| -> D<&String> {
        ops.get(k).ok_or_else(|| Decode::Bad(format!("`{opcode}` needs operand {}", k + 1)))
    };
    let last_int = || mods.iter().rev().find_map(|m| int_type(m));
    let op = match base {
        "mov" | "cvta" => {
            // `cvta.param` of a parameter's address: the simulator's parameter addresses are
            // generic already ([`PARAM_ADDRESS`]).
            if base == "cvta" && !(has("to") && has("global")) && !(has("param") && !has("to")) {
                return Err(Decode::Unsupported);
            }
            let src = n(1)?;
            if let Some(words) = src.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                let words = split_operands(words);
                if base != "mov" || !has("b64") || words.len() != 2 {
                    return Err(Decode::Unsupported);
                }
                Op::Pack64 { d: ctx.dest(n(0)?)?, lo: ctx.operand(&words[0])?, hi: ctx.operand(&words[1])? }
            } else {
                Op::Mov { d: ctx.dest(n(0)?)?, a: ctx.operand(src)? }
            }
        }
        "add" | "sub" | "mul" | "div" | "rem" | "shl" | "shr" | "and" | "or" | "xor" | "min" | "max"
            if mods.last() == Some(&"f32") =>
        {
            let op = match base {
                "add" => FloatOp::Add,
                "sub" => FloatOp::Sub,
                "mul" => FloatOp::Mul,
                "max" => FloatOp::Max,
                "min" => FloatOp::Min,
                "div" if has("rn") => FloatOp::Div,
                _ => return Err(Decode::Unsupported),
            };
            Op::Float {
                op,
                ftz: has("ftz"),
                d: ctx.dest(n(0)?)?,
                a: ctx.operand(n(1)?)?,
                b: ctx.operand(n(2)?)?,
            }
        }
        "add" | "sub" | "mul" | "div" | "rem" | "shl" | "shr" | "and" | "or" | "xor" | "min" | "max" => {
            // `and/or/xor.pred` combine predicates, which hold 0 or 1.
            let ty = match mods.last() {
                Some(&"pred") if matches!(base, "and" | "or" | "xor") => IntType::U32,
                _ => last_int().ok_or(Decode::Unsupported)?,
            };
            if base == "mul" && has("wide") {
                Op::MulWide { ty, d: ctx.dest(n(0)?)?, a: ctx.operand(n(1)?)?, b: ctx.operand(n(2)?)? }
            } else {
                let op = match base {
                    "add" => IntOp::Add,
                    "sub" => IntOp::Sub,
                    "mul" if has("hi") => IntOp::MulHi,
                    "mul" if has("lo") => IntOp::MulLo,
                    "mul" => return Err(Decode::Unsupported),
                    "div" => IntOp::Div,
                    "rem" => IntOp::Rem,
                    "shl" => IntOp::Shl,
                    "shr" => IntOp::Shr,
                    "and" => IntOp::And,
                    "or" => IntOp::Or,
                    "xor" => IntOp::Xor,
                    "min" => IntOp::Min,
                    _ => IntOp::Max,
                };
                Op::Int { op, ty, d: ctx.dest(n(0)?)?, a: ctx.operand(n(1)?)?, b: ctx.operand(n(2)?)? }
            }
        }
        // `not.pred`: predicates hold 0 or 1.
        "not" if mods.last() == Some(&"pred") => Op::Int {
            op: IntOp::Xor,
            ty: IntType::U32,
            d: ctx.dest(n(0)?)?,
            a: ctx.operand(n(1)?)?,
            b: Operand::Imm(1),
        },
        "neg" | "abs" | "sqrt" if mods.last() == Some(&"f32") => {
            let func = match base {
                "neg" => FloatFn::Neg,
                "abs" => FloatFn::Abs,
                _ if has("rn") => FloatFn::Sqrt,
                _ => return Err(Decode::Unsupported),
            };
            Op::FloatUnary { func, d: ctx.dest(n(0)?)?, a: ctx.operand(n(1)?)? }
        }
        "neg" | "abs" => Op::IntUnary {
            func: if base == "neg" { IntFn::Neg } else { IntFn::Abs },
            ty: last_int().ok_or(Decode::Unsupported)?,
            d: ctx.dest(n(0)?)?,
            a: ctx.operand(n(1)?)?,
        },
        "not" => Op::Not {
            ty: last_int().ok_or(Decode::Unsupported)?,
            d: ctx.dest(n(0)?)?,
            a: ctx.operand(n(1)?)?,
        },
        "mad" if mods.last() == Some(&"f32") => return Err(Decode::Unsupported),
        "mad" => {
            if !has("lo") {
                return Err(Decode::Unsupported);
            }
            Op::Mad {
                ty: last_int().ok_or(Decode::Unsupported)?,
                d: ctx.dest(n(0)?)?,
                a: ctx.operand(n(1)?)?,
                b: ctx.operand(n(2)?)?,
                c: ctx.operand(n(3)?)?,
            }
        }
        "fma" if mods.last() == Some(&"f32") => Op::Fma {
            d: ctx.dest(n(0)?)?,
            a: ctx.operand(n(1)?)?,
            b: ctx.operand(n(2)?)?,
            c: ctx.operand(n(3)?)?,
        },
        "bfe" => Op::Bfe {
            ty: last_int().ok_or(Decode::Unsupported)?,
            d: ctx.dest(n(0)?)?,
            a: ctx.operand(n(1)?)?,
            b: ctx.operand(n(2)?)?,
            c: ctx.operand(n(3)?)?,
        },
        "cvt" if mods == ["f32", "f16"] => Op::CvtFromHalf { d: ctx.dest(n(0)?)?, a: ctx.operand(n(1)?)? },
        "cvt" if mods.len() == 3 && mods[0] == "rn" && mods[1] == "f32" => Op::CvtFloat {
            src: int_type(mods[2]).ok_or(Decode::Unsupported)?,
            d: ctx.dest(n(0)?)?,
            a: ctx.operand(n(1)?)?,
        },
        "cvt" => {
            if (has("f16x2") || has("bf16x2")) && mods.last() == Some(&"f32") {
                if !has("rn") {
                    return Err(Decode::Unsupported);
                }
                let ty = if has("bf16x2") { HalfType::Bf16 } else { HalfType::F16 };
                Op::CvtPack { ty, d: ctx.dest(n(0)?)?, hi: ctx.operand(n(1)?)?, lo: ctx.operand(n(2)?)? }
            } else {
                let tys: Vec<IntType> = mods.iter().filter_map(|m| int_type(m)).collect();
                if tys.len() != 2 || mods.len() != 2 {
                    return Err(Decode::Unsupported);
                }
                Op::CvtInt { dst: tys[0], src: tys[1], d: ctx.dest(n(0)?)?, a: ctx.operand(n(1)?)? }
            }
        }
        "ex2" if has("approx") && mods.last() == Some(&"f32") => {
            Op::Approx { func: ApproxFn::Ex2, ftz: has("ftz"), d: ctx.dest(n(0)?)?, a: ctx.operand(n(1)?)? }
        }
        "lg2" if has("approx") && mods.last() == Some(&"f32") => {
            Op::Approx { func: ApproxFn::Lg2, ftz: has("ftz"), d: ctx.dest(n(0)?)?, a: ctx.operand(n(1)?)? }
        }
        "tanh" if has("approx") && mods.last() == Some(&"f32") => {
            Op::Approx { func: ApproxFn::Tanh, ftz: has("ftz"), d: ctx.dest(n(0)?)?, a: ctx.operand(n(1)?)? }
        }
        "rcp" if (has("rn") || has("approx")) && mods.last() == Some(&"f32") => {
            Op::Rcp { d: ctx.dest(n(0)?)?, a: ctx.operand(n(1)?)? }
        }
        "setp" => {
            // `setp.CMP.{and,or,xor}.TYPE p, a, b, c` combines with a fourth operand: not emitted,
            // so not decoded (rather than dropping the combination).
            if ops.len() != 3 || mods.len() != 2 {
                return Err(Decode::Unsupported);
            }
            let cmp = match mods.first().copied() {
                Some("eq") => Cmp::Eq,
                Some("ne") => Cmp::Ne,
                Some("neu") => Cmp::Neu,
                Some("lt") => Cmp::Lt,
                Some("le") => Cmp::Le,
                Some("gt") => Cmp::Gt,
                Some("ge") => Cmp::Ge,
                _ => return Err(Decode::Unsupported),
            };
            let ty = match mods.last().copied() {
                Some("f32") => CmpType::F32,
                Some(m) => CmpType::Int(int_type(m).ok_or(Decode::Unsupported)?),
                None => return Err(Decode::Unsupported),
            };
            Op::Setp { cmp, ty, p: ctx.dest(n(0)?)?, a: ctx.operand(n(1)?)?, b: ctx.operand(n(2)?)? }
        }
        "selp" => Op::Selp {
            d: ctx.dest(n(0)?)?,
            a: ctx.operand(n(1)?)?,
            b: ctx.operand(n(2)?)?,
            p: ctx.operand(n(3)?)?,
        },
        "ld" | "st" => {
            let space = if has("param") {
                Space::Param
            } else if has("shared") {
                Space::Shared
            } else if has("global") {
                Space::Global
            } else {
                return Err(Decode::Unsupported);
            };
            let width = match mods.last().copied() {
                Some("b32" | "u32" | "f32" | "s32") => 4,
                Some("b64" | "u64" | "s64") => 8,
                _ => return Err(Decode::Unsupported),
            };
            let vec = if has("v4") {
                4
            } else if has("v2") {
                2
            } else {
                1
            };
            if base == "ld" {
                let d = if vec > 1 { ctx.dest_vector(n(0)?)? } else { vec![ctx.dest(n(0)?)?] };
                if d.len() != vec {
                    return bad("vector length does not match `.v`");
                }
                Op::Ld { space, width, d, addr: ctx.address(n(1)?)? }
            } else {
                let a = if vec > 1 { ctx.operand_vector(n(1)?)? } else { vec![ctx.operand(n(1)?)?] };
                if a.len() != vec {
                    return bad("vector length does not match `.v`");
                }
                Op::St { space, width, addr: ctx.address(n(0)?)?, a }
            }
        }
        "cp" if opcode == "cp.async.commit_group" => Op::CpAsyncCommit,
        "cp" if opcode == "cp.async.wait_group" => match ctx.operand(n(0)?)? {
            Operand::Imm(v) => Op::CpAsyncWait { n: v as u32 },
            _ => return bad("wait_group needs an immediate"),
        },
        "cp" if opcode == "cp.async.wait_all" => Op::CpAsyncWait { n: 0 },
        "cp" if opcode.starts_with("cp.async.mbarrier.arrive") && has("shared") => {
            Op::CpAsyncMbarArrive { addr: ctx.address(n(0)?)?, noinc: has("noinc") }
        }
        "cp" if opcode
            == "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes" =>
        {
            let source = n(1)?
                .trim()
                .strip_prefix('[')
                .and_then(|x| x.strip_suffix(']'))
                .ok_or_else(|| Decode::Bad("expected `[map, {coordinates}]`".into()))?;
            let (map, coords) = source
                .split_once(',')
                .ok_or_else(|| Decode::Bad("expected `[map, {coordinates}]`".into()))?;
            let coords = ctx.operand_vector(coords)?;
            if coords.len() != 4 {
                return bad("a 4-d bulk tensor copy takes 4 coordinates");
            }
            Op::TmaLoad {
                dst: ctx.address(n(0)?)?,
                map: ctx.operand(map)?,
                coords,
                mbar: ctx.address(n(2)?)?,
            }
        }
        "cp" if has("async") && has("shared") && has("global") && (has("cg") || has("ca")) => {
            let size = match ctx.operand(n(2)?)? {
                Operand::Imm(v @ (4 | 8 | 16)) => v as u32,
                _ => return bad("cp.async copies 4, 8 or 16 bytes"),
            };
            if has("cg") && size != 16 {
                return bad("cp.async.cg copies 16 bytes");
            }
            let src_size = match ops.get(3) {
                Some(x) => Some(ctx.operand(x)?),
                None => None,
            };
            Op::CpAsync { dst: ctx.address(n(0)?)?, src: ctx.address(n(1)?)?, size, src_size }
        }
        "ldmatrix" if has("sync") && has("aligned") && has("m8n8") && has("shared") && has("b16") => {
            let count = if has("x4") {
                4
            } else if has("x2") {
                2
            } else if has("x1") {
                1
            } else {
                return Err(Decode::Unsupported);
            };
            let d = ctx.dest_vector(n(0)?)?;
            if d.len() != count as usize {
                return bad("ldmatrix destination count does not match .x");
            }
            Op::Ldmatrix { count, trans: has("trans"), d, addr: ctx.address(n(1)?)? }
        }
        "mma" => {
            let ty = match opcode {
                "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" => HalfType::F16,
                "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" => HalfType::Bf16,
                _ => return Err(Decode::Unsupported),
            };
            let d = ctx.dest_vector(n(0)?)?;
            let a = ctx.operand_vector(n(1)?)?;
            let b = ctx.operand_vector(n(2)?)?;
            let c = ctx.operand_vector(n(3)?)?;
            let (Ok(d), Ok(a), Ok(b), Ok(c)) = (
                <[u32; 4]>::try_from(d),
                <[Operand; 4]>::try_from(a),
                <[Operand; 2]>::try_from(b),
                <[Operand; 4]>::try_from(c),
            ) else {
                return bad("m16n8k16 takes 4 D, 4 A, 2 B and 4 C registers");
            };
            Op::Mma { ty, d, a, b, c }
        }
        "wgmma" if has("fence") && has("sync") && has("aligned") => Op::WgmmaFence,
        "wgmma" if has("commit_group") && has("sync") && has("aligned") => Op::WgmmaCommit,
        "wgmma" if has("wait_group") && has("sync") && has("aligned") => match ctx.operand(n(0)?)? {
            Operand::Imm(v) => Op::WgmmaWait { n: v as u32 },
            _ => return bad("wgmma.wait_group needs an immediate"),
        },
        "wgmma" if has("mma_async") && has("sync") && has("aligned") => {
            let ty = match mods.get(4..) {
                Some(["f32", "f16", "f16"]) => HalfType::F16,
                Some(["f32", "bf16", "bf16"]) => HalfType::Bf16,
                _ => return Err(Decode::Unsupported),
            };
            let cols = mods
                .get(3)
                .and_then(|shape| shape.strip_prefix("m64n"))
                .and_then(|x| x.strip_suffix("k16"))
                .and_then(|x| x.parse::<u32>().ok())
                .filter(|n| n % 8 == 0 && (8..=256).contains(n))
                .ok_or(Decode::Unsupported)?;
            // Register A: 7 operands; descriptor A: 8 (with imm-trans-a, which must be 0).
            let a = match ops.len() {
                7 => match <[Operand; 4]>::try_from(ctx.operand_vector(n(1)?)?) {
                    Ok(regs) => WgmmaA::Registers(regs),
                    Err(_) => return bad("a register A of m64nNk16 is 4 registers"),
                },
                8 if n(6)?.trim() == "0" => WgmmaA::Descriptor(ctx.operand(n(1)?)?),
                _ => return Err(Decode::Unsupported),
            };
            let d = ctx.dest_vector(n(0)?)?;
            if d.len() != (cols / 2) as usize {
                return bad("m64nNk16 with f32 accumulators takes N/2 D registers");
            }
            for (k, want) in [(4, "1"), (5, "1")] {
                if n(k)?.trim() != want {
                    return Err(Decode::Unsupported); // negated A or B
                }
            }
            let trans_b = match n(ops.len() - 1)?.trim() {
                "0" => false,
                "1" => true,
                _ => return bad("imm-trans-b is 0 or 1"),
            };
            Op::Wgmma { ty, n: cols, d, a, desc: ctx.operand(n(2)?)?, scale_d: ctx.operand(n(3)?)?, trans_b }
        }
        "fence" if has("proxy") && has("async") => Op::FenceProxyAsync,
        "fence" if has("gpu") && (has("acq_rel") || has("sc")) => Op::FenceGpu,
        "membar" if has("gl") => Op::FenceGpu,
        "atom" if has("global") && has("add") && (has("u32") || has("s32")) => {
            Op::AtomAdd { d: ctx.dest(n(0)?)?, addr: ctx.address(n(1)?)?, b: ctx.operand(n(2)?)?, min: false }
        }
        "atom" if has("global") && has("min") && has("u32") => {
            Op::AtomAdd { d: ctx.dest(n(0)?)?, addr: ctx.address(n(1)?)?, b: ctx.operand(n(2)?)?, min: true }
        }
        "setmaxnreg" if has("sync") && has("aligned") && (has("inc") || has("dec")) => {
            let count = n(0)?.trim().parse().map_err(|_| Decode::Unsupported)?;
            Op::SetMaxNReg { inc: has("inc"), count }
        }
        "redux" if has("sync") && (has("min") || has("max")) => {
            let ty = last_int().ok_or(Decode::Unsupported)?;
            if ops.len() != 3 {
                return Err(Decode::Unsupported);
            }
            let op = if has("min") { IntOp::Min } else { IntOp::Max };
            Op::Redux { op, ty, d: ctx.dest(n(0)?)?, a: ctx.operand(n(1)?)?, mask: ctx.operand(n(2)?)? }
        }
        "vote" if has("sync") && has("pred") && (has("any") || has("all")) => {
            if ops.len() != 3 {
                return Err(Decode::Unsupported);
            }
            Op::Vote {
                all: has("all"),
                d: ctx.dest(n(0)?)?,
                a: ctx.operand(n(1)?)?,
                mask: ctx.operand(n(2)?)?,
            }
        }
        "shfl" if has("sync") && has("b32") => {
            let mode = if has("bfly") {
                ShflMode::Bfly
            } else if has("up") {
                ShflMode::Up
            } else if has("down") {
                ShflMode::Down
            } else if has("idx") {
                ShflMode::Idx
            } else {
                return Err(Decode::Unsupported);
            };
            if ops.len() != 5 || ops[0].contains('|') {
                return Err(Decode::Unsupported);
            }
            Op::Shfl {
                mode,
                d: ctx.dest(n(0)?)?,
                a: ctx.operand(n(1)?)?,
                b: ctx.operand(n(2)?)?,
                c: ctx.operand(n(3)?)?,
                mask: ctx.operand(n(4)?)?,
            }
        }
        "bar" | "barrier" if has("warp") && has("sync") => Op::BarWarp { mask: ctx.operand(n(0)?)? },
        "bar" | "barrier" if has("sync") || has("arrive") => {
            let count = match ops.get(1) {
                Some(x) => Some(ctx.operand(x)?),
                None => None,
            };
            Op::Bar { wait: has("sync"), id: ctx.operand(n(0)?)?, count }
        }
        "mbarrier" if has("init") && has("shared") => {
            Op::MbarInit { addr: ctx.address(n(0)?)?, count: ctx.operand(n(1)?)? }
        }
        "mbarrier" if has("arrive") && has("expect_tx") && has("shared::cta") && has("b64") => {
            if ops.len() != 3 {
                return Err(Decode::Unsupported);
            }
            let d = if n(0)?.trim() == "_" { None } else { Some(ctx.dest(n(0)?)?) };
            Op::MbarArrive { d, addr: ctx.address(n(1)?)?, tx: Some(ctx.operand(n(2)?)?) }
        }
        "mbarrier" if has("arrive") && has("shared") && !has("expect_tx") => {
            if ops.len() == 2 {
                Op::MbarArrive { d: Some(ctx.dest(n(0)?)?), addr: ctx.address(n(1)?)?, tx: None }
            } else if ops.len() == 1 {
                Op::MbarArrive { d: None, addr: ctx.address(n(0)?)?, tx: None }
            } else {
                return Err(Decode::Unsupported);
            }
        }
        "mbarrier"
            if (has("test_wait") || has("try_wait"))
                && has("parity")
                && (has("shared") || has("shared::cta")) =>
        {
            Op::MbarTestWait { p: ctx.dest(n(0)?)?, addr: ctx.address(n(1)?)?, parity: ctx.operand(n(2)?)? }
        }
        "bra" => Op::Bra { target: ctx.label(n(0)?)?, uni: has("uni") },
        "ret" | "exit" => Op::Ret,
        "trap" => Op::Trap,
        "nanosleep" => Op::Nanosleep,
        _ => return Err(Decode::Unsupported),
    };
    Ok((guard, op))
}
