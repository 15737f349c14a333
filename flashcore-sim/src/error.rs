//! What the simulator reports: each error names the warp(s), the PTX line and instruction, and
//! the address or barrier involved.

/// Where a warp was when something went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At {
    pub cta: u32,
    pub warp: u32,
    pub line: u32,
    pub inst: String,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CTA {} warp {} at PTX line {} `{}`", self.cta, self.warp, self.line, self.inst)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("PTX line {line}: {message}")]
    Parse { line: u32, message: String },
    #[error("PTX line {line}: unsupported instruction `{text}` (outside the subset FlashCore emits)")]
    Unsupported { line: u32, text: String },
    #[error("launch: {0}")]
    Launch(String),
    /// No warp can run, some have not exited, and no asynchronous copy is in flight.
    #[error("deadlock: no warp can make progress\n{report}")]
    Deadlock { report: String },
    /// Two accesses to one shared-memory word from different warps (or a warp and a cp.async),
    /// at least one a write, with no happens-before edge between them.
    #[error("shared-memory race at shared address {addr:#x}: {now} {now_kind} it, but {earlier}, and no barrier, mbarrier phase or cp.async.wait_group orders the two")]
    Race { addr: u32, now: At, now_kind: &'static str, earlier: String },
    /// A read of a `cp.async` destination whose group had not completed.
    #[error("{at} reads shared address {addr:#x} while a cp.async into it (issued by warp {warp} lane {lane} at PTX line {issued_line}) has not completed: a missing or too weak cp.async.wait_group / mbarrier wait")]
    AsyncRead { at: At, addr: u32, warp: u32, lane: u32, issued_line: u32 },
    #[error("{at}: {message}")]
    OutOfBounds { at: At, message: String },
    #[error("{at}: misaligned {space} access at {addr:#x} ({bytes}-byte access)")]
    Misaligned { at: At, space: &'static str, addr: u64, bytes: u32 },
    #[error("{at}: divergent execution: {message}")]
    Divergence { at: At, message: String },
    #[error("{at}: barrier misuse: {message}")]
    BarrierMisuse { at: At, message: String },
    #[error("{at}: trap executed (lane {lane})")]
    Trap { at: At, lane: u32 },
    #[error("{at}: {message}")]
    Arithmetic { at: At, message: String },
    /// A wgmma protocol error: an accumulator touched before its `wgmma.wait_group`, a register
    /// written after the last `wgmma.fence`, shared memory read without `fence.proxy.async`
    /// after its generic-proxy write, or a descriptor the simulator does not model.
    #[error("{at}: wgmma: {message}")]
    Wgmma { at: At, message: String },
    /// A `setmaxnreg` outside its rules: a count not a multiple of 8 in 24..=256, a decrease
    /// that raises or an increase that lowers the count.
    #[error("{at}: setmaxnreg: {message}")]
    Registers { at: At, message: String },
    #[error("the launch ran more than {limit} warp instructions without finishing (an infinite loop?)")]
    StepLimit { limit: u64 },
}
