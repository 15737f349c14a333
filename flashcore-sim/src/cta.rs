//! Runs one CTA: warps as 32-lane vectors scheduled in a seeded random order, cp.async copies
//! that complete at random times, named barriers and mbarriers, and the checks (races through
//! vector clocks, reads of copies in flight, deadlock, barrier misuse, divergence, bounds).
//!
//! Happens-before: every warp is an agent, and so is each lane's stream of asynchronous copies
//! (a copy's write belongs to its lane's copy agent, at that agent's clock when it completes).
//! Edges come from `bar.sync` (all arrivals before all waiters leave), mbarrier phases (every
//! arrival of a phase before a wait that observes it), `cp.async.wait_group` (the lane's copies in
//! the waited groups before the warp) and `cp.async.mbarrier.arrive` (the lane's prior copies
//! before the arrival). A warp is one agent: lanes of a warp are not checked against each other.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use half::{bf16, f16};

use crate::error::{At, SimError};
use crate::memory::{Access, GlobalMemory, Shadow};
use crate::parse::{
    AddrBase, Address, ApproxFn, Cmp, CmpType, FloatFn, FloatOp, HalfType, Inst, IntFn, IntOp, IntType,
    Kernel, Op, Operand, ShflMode, Space, Special, WgmmaA,
};

pub const LANES: usize = 32;
const EXITED: u32 = u32::MAX;

/// What a launch gives each CTA.
pub struct CtaSetup<'a> {
    pub kernel: &'a Kernel,
    pub params: &'a [u64],
    /// The launch's tensor maps: a [`crate::parse::ParamType::TensorMap`] parameter's value indexes them.
    pub tensor_maps: &'a [crate::TensorMap],
    pub cta: u32,
    pub grid: u32,
    pub threads: u32,
    pub shared_bytes: u32,
    pub seed: u64,
    pub max_slice: u32,
    pub step_limit: u64,
}

/// A small deterministic generator (xorshift64*), so a seed replays a schedule exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WarpState {
    Ready,
    /// In `bar.sync` on this barrier id.
    Bar(u32),
    /// In `cp.async.wait_group n`.
    WaitGroup(u32),
    /// A `mbarrier.test_wait` (at PTX line `line`, for `parity`) failed: the warp spins until
    /// this mbarrier completes a phase.
    Parked {
        addr: u32,
        phases: u64,
        parity: u64,
        line: u32,
    },
    /// In `setmaxnreg.inc` to this many registers a thread, which its sub-partition does not
    /// have free yet.
    Registers(u32),
    Exited,
}

/// A mbarrier arrival that fires when the lane's copies up to `after_seq` have completed.
struct AsyncArrive<'a> {
    after_seq: u64,
    addr: u32,
    noinc: bool,
    vc: Rc<Vec<u32>>,
    site: Site<'a>,
}

#[derive(Default)]
struct LaneAsync<'a> {
    /// Copies in flight, oldest first (they complete in order).
    queue: VecDeque<usize>,
    issued: u64,
    completed: u64,
    /// Sequence number one past the last copy of each committed group.
    group_ends: Vec<u64>,
    /// Copy agent clock at which each completed copy landed, by sequence number.
    clock_of: Vec<u32>,
    arrivals: Vec<AsyncArrive<'a>>,
}

struct Copy {
    warp: u32,
    lane: u32,
    dst: u32,
    data: [u8; 16],
    len: u32,
    line: u32,
    /// A bulk tensor copy's piece: the mbarrier its bytes complete on (its write is the async
    /// proxy's).
    tx: Option<u32>,
}

struct Warp<'a> {
    regs: Vec<u64>,
    pc: [u32; LANES],
    state: WarpState,
    vc: Vec<u32>,
    lanes: Vec<LaneAsync<'a>>,
    /// Per mbarrier: the last phase this warp observed complete.
    seen: HashMap<u32, i64>,
    /// First thread of the warp in the CTA.
    thread0: u32,
    /// Registers a thread: the entry count, then what `setmaxnreg` set.
    registers: u32,
    /// wgmma state (kernels that use wgmma only): per register, how many issued and not yet
    /// waited-for wgmmas write it; the registers of the open (uncommitted) group and of each
    /// committed group in flight, oldest first; each register's last write by an ordinary
    /// instruction and the last `wgmma.fence`, in steps.
    wgmma: WarpWgmma,
}

impl Warp<'_> {
    /// Lane `l`'s value of a register or immediate operand, without the in-flight check (the
    /// wgmma reading its own accumulators and operands).
    fn regs_of(&self, o: Operand, l: usize) -> u64 {
        match o {
            Operand::Reg(r) => self.regs[r as usize * LANES + l],
            Operand::Imm(v) => v,
            _ => 0,
        }
    }
}

#[derive(Default)]
struct WarpWgmma {
    /// Per register: how many wgmmas in flight read or write it (accumulators and register A
    /// operands; the PTX ISA leaves touching either before the wait undefined).
    in_flight: Vec<u16>,
    open: Vec<u32>,
    groups: VecDeque<Vec<u32>>,
    /// Shared words (addresses) the open group's wgmmas read, and each committed group's: the
    /// hardware may read them until the group retires, so they are checked again then.
    open_reads: Vec<u32>,
    group_reads: VecDeque<Vec<u32>>,
    written_at: Vec<u64>,
    fence_step: u64,
}

struct NamedBar {
    expected: u32,
    arrived: u32,
    warps: Vec<u32>,
    accum: Vec<u32>,
    line: u32,
}

struct Mbar {
    expected: u32,
    remaining: u32,
    /// Transaction bytes the current phase still waits for (announced by `expect_tx`, less
    /// those bulk copies completed).
    tx: i64,
    phases: u64,
    arrived: HashSet<u32>,
    accum: Vec<u32>,
    completed_vc: Vec<u32>,
}

/// Where an instruction runs: enough to name it in an error, turned into an [`At`] (which copies
/// the instruction's text) only when there is one.
#[derive(Clone, Copy)]
struct Site<'a> {
    cta: u32,
    warp: u32,
    inst: &'a Inst,
}

impl Site<'_> {
    fn at(self) -> At {
        At { cta: self.cta, warp: self.warp, line: self.inst.line, inst: self.inst.text.clone() }
    }
}

pub struct Cta<'a> {
    s: CtaSetup<'a>,
    global: &'a mut GlobalMemory,
    warps: Vec<Warp<'a>>,
    nwarps: usize,
    shared: Vec<u8>,
    shadow: Vec<Shadow>,
    bars: HashMap<u32, NamedBar>,
    mbars: HashMap<u32, Mbar>,
    copies: Vec<Option<Copy>>,
    in_flight: usize,
    copy_clock: Vec<u32>,
    rng: Rng,
    pub steps: u64,
    pub lane_steps: u64,
    /// Whether the kernel uses wgmma: only then are register accesses checked against the
    /// accumulators in flight and the register writes before a `wgmma.fence` tracked.
    track_wgmma: bool,
    /// A register access of an ordinary instruction to a wgmma accumulator in flight (warp,
    /// register), found while the instruction ran and reported after it.
    wgmma_violation: std::cell::Cell<Option<(usize, u32)>>,
    /// Per agent: the clock up to which its shared-memory writes are ordered before the async
    /// proxy by some thread's `fence.proxy.async` (wgmma reads need it).
    proxy_fenced: Vec<u32>,
}

/// Registers one SM sub-partition holds a thread of each of its warps (16K registers, 32 lanes).
const SUBPARTITION_REGISTERS_PER_LANE: u32 = 512;

/// The registers a thread that ptxas gives a kernel of `warps` warps at one CTA an SM: the
/// busiest sub-partition's share (warp `w` runs on sub-partition `w % 4`), a multiple of 8.
fn entry_registers(warps: u32) -> u32 {
    (SUBPARTITION_REGISTERS_PER_LANE / warps.div_ceil(4).max(1) / 8 * 8).min(255)
}

/// Completes `m`'s current phase once its arrivals and transaction bytes are all in.
fn complete_phase_if_done(m: &mut Mbar) {
    if m.remaining == 0 && m.tx == 0 {
        m.phases += 1;
        m.remaining = m.expected;
        m.arrived.clear();
        let n = m.accum.len();
        m.completed_vc = std::mem::replace(&mut m.accum, vec![0; n]);
    }
}

/// A global access of `bytes` at `addr` must be aligned to its size.
fn global_aligned(site: Site, addr: u64, bytes: u32) -> Result<(), SimError> {
    if addr % bytes as u64 != 0 {
        return Err(SimError::Misaligned { at: site.at(), space: "global", addr, bytes });
    }
    Ok(())
}

/// Whether access `a` happens before the current point of agent `me`, whose vector clock is
/// `vc` (an agent's own accesses are in program order).
fn ordered(vc: &[u32], me: u32, a: &Access) -> bool {
    a.agent == me || a.clock <= vc[a.agent as usize]
}

fn join(into: &mut [u32], from: &[u32]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a = (*a).max(*b);
    }
}

fn f32_of(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

impl<'a> Cta<'a> {
    pub fn new(s: CtaSetup<'a>, global: &'a mut GlobalMemory) -> Cta<'a> {
        let nwarps = s.threads.div_ceil(LANES as u32) as usize;
        let agents = nwarps * (LANES + 1);
        let nregs = s.kernel.registers.len();
        let warps = (0..nwarps)
            .map(|w| {
                let mut pc = [0u32; LANES];
                for (l, p) in pc.iter_mut().enumerate() {
                    if (w * LANES + l) as u32 >= s.threads {
                        *p = EXITED;
                    }
                }
                // A warp's own clock starts at 1: an access at clock c is ordered before
                // another agent only once that agent's clock for this warp reaches c.
                let mut vc = vec![0; agents];
                vc[w] = 1;
                Warp {
                    regs: vec![0; nregs * LANES],
                    pc,
                    state: WarpState::Ready,
                    vc,
                    lanes: (0..LANES).map(|_| LaneAsync::default()).collect(),
                    seen: HashMap::new(),
                    thread0: (w * LANES) as u32,
                    registers: entry_registers(nwarps as u32),
                    wgmma: WarpWgmma {
                        in_flight: vec![0; nregs],
                        written_at: vec![0; nregs],
                        ..WarpWgmma::default()
                    },
                }
            })
            .collect();
        let track_wgmma = s.kernel.insts.iter().any(|i| matches!(i.op, Op::Wgmma { .. }));
        let words = (s.shared_bytes as usize).div_ceil(4);
        let mut rng = Rng::new(s.seed ^ ((s.cta as u64) << 32));
        rng.next();
        Cta {
            warps,
            nwarps,
            shared: vec![0xA5; words * 4],
            shadow: vec![Shadow::default(); words],
            bars: HashMap::new(),
            mbars: HashMap::new(),
            copies: Vec::new(),
            in_flight: 0,
            copy_clock: vec![0; nwarps * LANES],
            rng,
            steps: 0,
            lane_steps: 0,
            track_wgmma,
            wgmma_violation: std::cell::Cell::new(None),
            proxy_fenced: vec![0; agents],
            global,
            s,
        }
    }

    fn agent_of_copies(&self, warp: u32, lane: u32) -> u32 {
        self.nwarps as u32 + warp * LANES as u32 + lane
    }

    fn site(&self, w: usize, inst: &'a Inst) -> Site<'a> {
        Site { cta: self.s.cta, warp: w as u32, inst }
    }

    fn at(&self, w: usize, inst: &Inst) -> At {
        At { cta: self.s.cta, warp: w as u32, line: inst.line, inst: inst.text.clone() }
    }

    /// A warp-wide `what` (`redux.sync`, `vote.sync`) must name exactly the lanes that execute
    /// it in its member mask `mask`: divergence otherwise.
    fn members_are_the_executing_lanes(
        &self,
        w: usize,
        inst: &Inst,
        what: &str,
        mask: Operand,
        exec: u32,
    ) -> Result<(), SimError> {
        let m = self.val(w, mask, 0) as u32;
        if m == exec {
            return Ok(());
        }
        Err(SimError::Divergence {
            at: self.at(w, inst),
            message: format!("{what} member mask {m:#010x} but lanes {exec:#010x} execute it"),
        })
    }

    /// Runs the CTA to completion or to the first error.
    pub fn run(&mut self, step_budget: &mut u64) -> Result<(), SimError> {
        loop {
            self.complete_some_copies()?;
            self.wake_waiters()?;
            let ready: Vec<usize> =
                (0..self.nwarps).filter(|&w| self.warps[w].state == WarpState::Ready).collect();
            if ready.is_empty() {
                if self.warps.iter().all(|w| w.state == WarpState::Exited) && self.in_flight == 0 {
                    return Ok(());
                }
                if self.in_flight > 0 {
                    self.complete_one_copy()?;
                    continue;
                }
                if self.warps.iter().all(|w| w.state == WarpState::Exited) {
                    return Ok(());
                }
                return Err(SimError::Deadlock { report: self.deadlock_report() });
            }
            let w = ready[self.rng.below(ready.len() as u64) as usize];
            let slice = 1 + self.rng.below(self.s.max_slice.max(1) as u64);
            for _ in 0..slice {
                if self.warps[w].state != WarpState::Ready {
                    break;
                }
                if *step_budget == 0 {
                    return Err(SimError::StepLimit { limit: self.s.step_limit });
                }
                *step_budget -= 1;
                self.step(w)?;
            }
        }
    }

    // ----- asynchronous copies -----

    fn complete_some_copies(&mut self) -> Result<(), SimError> {
        if self.in_flight == 0 {
            return Ok(());
        }
        for w in 0..self.nwarps {
            for l in 0..LANES {
                if !self.warps[w].lanes[l].queue.is_empty() && self.rng.below(3) == 0 {
                    self.complete_copy(w, l)?;
                }
            }
        }
        Ok(())
    }

    fn complete_one_copy(&mut self) -> Result<(), SimError> {
        let busy: Vec<(usize, usize)> = (0..self.nwarps)
            .flat_map(|w| (0..LANES).map(move |l| (w, l)))
            .filter(|&(w, l)| !self.warps[w].lanes[l].queue.is_empty())
            .collect();
        let (w, l) = busy[self.rng.below(busy.len() as u64) as usize];
        self.complete_copy(w, l)
    }

    fn complete_copy(&mut self, w: usize, l: usize) -> Result<(), SimError> {
        let id = self.warps[w].lanes[l].queue.pop_front().expect("a copy in flight");
        let copy = self.copies[id].take().expect("copy not yet completed");
        self.in_flight -= 1;
        let agent = self.agent_of_copies(copy.warp, copy.lane);
        let slot = (copy.warp as usize) * LANES + copy.lane as usize;
        self.copy_clock[slot] += 1;
        let clock = self.copy_clock[slot];
        let dst = copy.dst as usize;
        self.shared[dst..dst + copy.len as usize].copy_from_slice(&copy.data[..copy.len as usize]);
        for word in dst / 4..(dst + copy.len as usize) / 4 {
            let sh = &mut self.shadow[word];
            sh.pending_copy = 0;
            sh.write = Some(Access { agent, clock, line: copy.line });
            sh.reads.clear();
        }
        if let Some(mbar) = copy.tx {
            // The copy engine writes through the async proxy: the tensor cores read it as is.
            self.proxy_fenced[agent as usize] = self.proxy_fenced[agent as usize].max(clock);
            let at =
                At { cta: self.s.cta, warp: copy.warp, line: copy.line, inst: "cp.async.bulk.tensor".into() };
            self.mbar_complete_tx(mbar, copy.len, agent as usize, clock, at)?;
        }
        let lane = &mut self.warps[w].lanes[l];
        lane.completed += 1;
        lane.clock_of.push(clock);
        // Arrivals whose copies have all landed fire now.
        let completed = lane.completed;
        let (fire, keep): (Vec<AsyncArrive>, Vec<AsyncArrive>) =
            std::mem::take(&mut lane.arrivals).into_iter().partition(|a| a.after_seq <= completed);
        lane.arrivals = keep;
        for a in fire {
            self.fire_async_arrive(w, l, a)?;
        }
        Ok(())
    }

    fn fire_async_arrive(&mut self, w: usize, l: usize, a: AsyncArrive<'a>) -> Result<(), SimError> {
        let mut vc = (*a.vc).clone();
        let lane = &self.warps[w].lanes[l];
        if a.after_seq > 0 {
            let agent = self.agent_of_copies(w as u32, l as u32) as usize;
            vc[agent] = vc[agent].max(lane.clock_of[a.after_seq as usize - 1]);
        }
        let thread = self.warps[w].thread0 + l as u32;
        self.mbar_arrive(a.addr, if a.noinc { Some(thread) } else { None }, &vc, a.site)
    }

    /// Whether lane `l` of warp `w` satisfies `cp.async.wait_group n`, and the sequence number
    /// up to which its copies are then known complete.
    fn wait_group_done(&self, w: usize, l: usize, n: u32) -> (bool, u64) {
        let lane = &self.warps[w].lanes[l];
        let groups = lane.group_ends.len();
        if groups <= n as usize {
            return (true, 0);
        }
        let boundary = lane.group_ends[groups - 1 - n as usize];
        (lane.completed >= boundary, boundary)
    }

    fn finish_wait_group(&mut self, w: usize, mask: u32, n: u32) -> bool {
        let mut bounds = [0u64; LANES];
        for (l, b) in bounds.iter_mut().enumerate() {
            if mask & (1 << l) != 0 {
                let (done, boundary) = self.wait_group_done(w, l, n);
                if !done {
                    return false;
                }
                *b = boundary;
            }
        }
        for (l, b) in bounds.iter().enumerate() {
            if *b > 0 {
                let agent = self.agent_of_copies(w as u32, l as u32) as usize;
                let clock = self.warps[w].lanes[l].clock_of[*b as usize - 1];
                let vc = &mut self.warps[w].vc[agent];
                *vc = (*vc).max(clock);
            }
        }
        true
    }

    fn wake_waiters(&mut self) -> Result<(), SimError> {
        for w in 0..self.nwarps {
            match self.warps[w].state {
                WarpState::WaitGroup(n) => {
                    let mask = self.live_mask(w);
                    if self.finish_wait_group(w, mask, n) {
                        self.warps[w].state = WarpState::Ready;
                    }
                }
                WarpState::Parked { addr, phases, .. } => {
                    if self.mbars.get(&addr).map_or(true, |m| m.phases != phases) {
                        self.warps[w].state = WarpState::Ready;
                    }
                }
                WarpState::Registers(count) => {
                    if self.registers_fit(w, count) {
                        self.warps[w].registers = count;
                        self.warps[w].state = WarpState::Ready;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    // ----- barriers -----

    fn mbar_arrive(
        &mut self,
        addr: u32,
        thread: Option<u32>,
        vc: &[u32],
        site: Site<'a>,
    ) -> Result<(), SimError> {
        let Some(m) = self.mbars.get_mut(&addr) else {
            return Err(SimError::BarrierMisuse {
                at: site.at(),
                message: format!("arrive on shared address {addr:#x}, which holds no initialized mbarrier"),
            });
        };
        if let Some(t) = thread {
            if !m.arrived.insert(t) {
                return Err(SimError::BarrierMisuse {
                    at: site.at(),
                    message: format!(
                        "thread {t} arrives twice on the mbarrier at {addr:#x} in phase {} (expected count {}, {} arrivals missing): re-arrival before the phase completed",
                        m.phases, m.expected, m.remaining
                    ),
                });
            }
        }
        if m.remaining == 0 {
            return Err(SimError::BarrierMisuse {
                at: site.at(),
                message: format!(
                    "arrival on the mbarrier at {addr:#x} in phase {}, whose {} expected arrivals are all in (it waits for {} transaction bytes)",
                    m.phases, m.expected, m.tx
                ),
            });
        }
        join(&mut m.accum, vc);
        m.remaining -= 1;
        complete_phase_if_done(m);
        Ok(())
    }

    /// A bulk copy's `bytes`, written by copy agent `agent` at `clock`, complete on the
    /// mbarrier at `addr`.
    fn mbar_complete_tx(
        &mut self,
        addr: u32,
        bytes: u32,
        agent: usize,
        clock: u32,
        at: At,
    ) -> Result<(), SimError> {
        let Some(m) = self.mbars.get_mut(&addr) else {
            return Err(SimError::BarrierMisuse {
                at,
                message: format!(
                    "a bulk copy completes on shared address {addr:#x}, which holds no initialized mbarrier"
                ),
            });
        };
        m.tx -= bytes as i64;
        if m.tx < 0 && m.remaining == 0 {
            return Err(SimError::BarrierMisuse {
                at,
                message: format!(
                    "bulk copies complete {} bytes more than phase {} of the mbarrier at {addr:#x} expects: its expect_tx count is too small, and the phase would complete before the data has landed",
                    -m.tx, m.phases
                ),
            });
        }
        m.accum[agent] = m.accum[agent].max(clock);
        complete_phase_if_done(m);
        Ok(())
    }

    fn deadlock_report(&self) -> String {
        let mut out = String::new();
        for (w, warp) in self.warps.iter().enumerate() {
            let pcs: Vec<u32> = warp.pc.iter().copied().filter(|&p| p != EXITED).collect();
            let pc = pcs.iter().copied().min();
            let where_ = match pc.and_then(|p| self.s.kernel.insts.get(p as usize)) {
                Some(i) => format!("PTX line {} `{}`", i.line, i.text),
                None => "past the end".into(),
            };
            let what = match warp.state {
                WarpState::Exited => continue,
                WarpState::Ready => format!("ready, at {where_}"),
                WarpState::Bar(id) => format!("waits in bar.sync {id}, before {where_}"),
                WarpState::WaitGroup(n) => format!("waits in cp.async.wait_group {n}, before {where_}"),
                WarpState::Registers(count) => format!(
                    "waits in setmaxnreg.inc for {count} registers a thread, before {where_}: the other warps of its sub-partition hold {} of the CTA's {} there",
                    self.subpartition_registers(w),
                    self.subpartition_pool(w)
                ),
                WarpState::Parked { addr, phases, parity, line } => format!(
                    "spins in the mbarrier.test_wait at PTX line {line} on the mbarrier at {addr:#x}, waiting for parity {parity} (phases completed: {phases})"
                ),
            };
            out += &format!(
                "  CTA {} warp {w} (threads {}..{}): {what}\n",
                self.s.cta,
                warp.thread0,
                warp.thread0 + LANES as u32 - 1
            );
        }
        let mut bars: Vec<_> = self.bars.iter().collect();
        bars.sort_by_key(|(id, _)| **id);
        for (id, b) in bars {
            out += &format!(
                "  named barrier {id}: {} of {} threads arrived (warps {:?}; first at PTX line {})\n",
                b.arrived, b.expected, b.warps, b.line
            );
        }
        let mut mbars: Vec<_> = self.mbars.iter().collect();
        mbars.sort_by_key(|(a, _)| **a);
        for (addr, m) in mbars {
            out += &format!(
                "  mbarrier at {addr:#x}: phase {} in progress (parity {}), {} of {} arrivals, {} transaction bytes outstanding\n",
                m.phases,
                m.phases % 2,
                m.expected - m.remaining,
                m.expected,
                m.tx
            );
        }
        out
    }

    // ----- lanes and operands -----

    fn live_mask(&self, w: usize) -> u32 {
        let mut m = 0;
        for (l, p) in self.warps[w].pc.iter().enumerate() {
            if *p != EXITED {
                m |= 1 << l;
            }
        }
        m
    }

    #[inline]
    fn reg(&self, w: usize, r: u32, l: usize) -> u64 {
        if self.track_wgmma && self.warps[w].wgmma.in_flight[r as usize] != 0 {
            self.wgmma_violation.set(Some((w, r)));
        }
        self.warps[w].regs[r as usize * LANES + l]
    }

    #[inline]
    fn set(&mut self, w: usize, r: u32, l: usize, v: u64) {
        if self.track_wgmma {
            let wg = &mut self.warps[w].wgmma;
            if wg.in_flight[r as usize] != 0 {
                self.wgmma_violation.set(Some((w, r)));
            }
            wg.written_at[r as usize] = self.steps;
        }
        self.warps[w].regs[r as usize * LANES + l] = v;
    }

    #[inline]
    fn val(&self, w: usize, o: Operand, l: usize) -> u64 {
        match o {
            Operand::Reg(r) => self.reg(w, r, l),
            Operand::Imm(v) => v,
            Operand::SharedBase => 0,
            Operand::Special(sp) => match sp {
                Special::Tid(0) => (self.warps[w].thread0 + l as u32) as u64,
                Special::Tid(_) => 0,
                Special::Ntid(0) => self.s.threads as u64,
                Special::Ntid(_) => 1,
                Special::Ctaid(0) => self.s.cta as u64,
                Special::Ctaid(_) => 0,
                Special::Nctaid(0) => self.s.grid as u64,
                Special::Nctaid(_) => 1,
                Special::LaneId => l as u64,
                Special::WarpId => w as u64,
                // Simulated nanoseconds: one per warp instruction.
                Special::GlobalTimer => self.steps,
            },
        }
    }

    fn address(&self, w: usize, a: &Address, l: usize) -> u64 {
        let base = match a.base {
            AddrBase::Reg(r) => self.reg(w, r, l),
            AddrBase::Shared => 0,
            AddrBase::Param(p) => p as u64,
        };
        base.wrapping_add(a.offset as u64)
    }

    fn shared_range(&self, site: Site<'a>, addr: u64, bytes: u32) -> Result<usize, SimError> {
        if addr % bytes.min(16) as u64 != 0 {
            return Err(SimError::Misaligned { at: site.at(), space: "shared", addr, bytes });
        }
        if addr + bytes as u64 > self.s.shared_bytes as u64 {
            return Err(SimError::OutOfBounds {
                at: site.at(),
                message: format!(
                    "shared access of {bytes} bytes at {addr:#x} is past the {} bytes of shared memory of this launch",
                    self.s.shared_bytes
                ),
            });
        }
        Ok(addr as usize)
    }

    fn describe(&self, a: &Access, wrote: bool) -> String {
        let nw = self.nwarps as u32;
        let line = a.line;
        if a.agent < nw {
            format!("warp {} {} it at PTX line {line}", a.agent, if wrote { "wrote" } else { "read" })
        } else {
            let k = a.agent - nw;
            let bulk =
                self.s.kernel.insts.iter().any(|i| i.line == line && matches!(i.op, Op::TmaLoad { .. }));
            format!(
                "a {} of warp {} lane {} (PTX line {line}) wrote it",
                if bulk { "bulk tensor copy" } else { "cp.async" },
                k / LANES as u32,
                k % LANES as u32
            )
        }
    }

    /// Race and in-flight checks for warp `w` reading (or writing) the words of `[addr, addr+bytes)`.
    fn check_shared(
        &mut self,
        w: usize,
        site: Site<'a>,
        addr: usize,
        bytes: usize,
        write: bool,
    ) -> Result<(), SimError> {
        let me = w as u32;
        let clock = self.warps[w].vc[w];
        for word in addr / 4..(addr + bytes).div_ceil(4) {
            let sh = &self.shadow[word];
            if sh.pending_copy != 0 {
                let c = self.copies[sh.pending_copy as usize - 1].as_ref().expect("copy in flight");
                if write {
                    return Err(SimError::Race {
                        addr: (word * 4) as u32,
                        now: site.at(),
                        now_kind: "writes",
                        earlier: format!(
                            "a cp.async of warp {} lane {} (PTX line {}) is still writing it",
                            c.warp, c.lane, c.line
                        ),
                    });
                }
                return Err(SimError::AsyncRead {
                    at: site.at(),
                    addr: (word * 4) as u32,
                    warp: c.warp,
                    lane: c.lane,
                    issued_line: c.line,
                });
            }
            let vc = &self.warps[w].vc;
            // A write first answers for the reads since the last write (a stage refilled while
            // it is still being read), then for the write itself.
            if write {
                if let Some(prev) = sh.reads.iter().find(|r| !ordered(vc, me, r)).copied() {
                    return Err(SimError::Race {
                        addr: (word * 4) as u32,
                        now: site.at(),
                        now_kind: "writes",
                        earlier: self.describe(&prev, false),
                    });
                }
            }
            if let Some(prev) = sh.write {
                if !ordered(vc, me, &prev) {
                    return Err(SimError::Race {
                        addr: (word * 4) as u32,
                        now: site.at(),
                        now_kind: if write { "writes" } else { "reads" },
                        earlier: self.describe(&prev, true),
                    });
                }
            }
            let sh = &mut self.shadow[word];
            let acc = Access { agent: me, clock, line: site.inst.line };
            if write {
                sh.write = Some(acc);
                sh.reads.clear();
            } else if let Some(r) = sh.reads.iter_mut().find(|r| r.agent == me) {
                *r = acc;
            } else {
                sh.reads.push(acc);
            }
        }
        Ok(())
    }

    /// Registers a thread that the warps sharing warp `w`'s sub-partition hold, `w` excluded.
    fn subpartition_registers(&self, w: usize) -> u32 {
        (0..self.nwarps).filter(|&o| o != w && o % 4 == w % 4).map(|o| self.warps[o].registers).sum()
    }

    /// Registers a thread that the CTA's pool holds on warp `w`'s sub-partition: what the CTA was
    /// launched with, the entry count for each of its warps there. `setmaxnreg.inc` takes from
    /// this pool, not from the sub-partition's free registers (PTX ISA, `setmaxnreg`).
    fn subpartition_pool(&self, w: usize) -> u32 {
        let warps_here = (0..self.nwarps).filter(|&o| o % 4 == w % 4).count() as u32;
        entry_registers(self.nwarps as u32) * warps_here
    }

    /// Whether warp `w` can hold `count` registers a thread next to its sub-partition's others,
    /// within the CTA's pool.
    fn registers_fit(&self, w: usize, count: u32) -> bool {
        self.subpartition_registers(w) + count <= self.subpartition_pool(w)
    }

    /// A warp performs a release (an arrival): later accesses are not ordered before it.
    fn release(&mut self, w: usize) {
        self.warps[w].vc[w] += 1;
    }

    // ----- one instruction -----

    fn step(&mut self, w: usize) -> Result<(), SimError> {
        if !self.track_wgmma {
            return self.step_inner(w);
        }
        let pc = self.warps[w].pc.iter().copied().min().unwrap_or(EXITED);
        self.step_inner(w)?;
        match self.wgmma_violation.take() {
            None => Ok(()),
            Some((warp, r)) => {
                let inst = &self.s.kernel.insts[pc as usize];
                Err(SimError::Wgmma {
                    at: self.at(warp, inst),
                    message: format!(
                        "touches register {} while a wgmma that reads or writes it is in flight: a missing or too weak wgmma.wait_group",
                        self.s.kernel.registers[r as usize]
                    ),
                })
            }
        }
    }

    fn step_inner(&mut self, w: usize) -> Result<(), SimError> {
        let k = self.s.kernel;
        self.steps += 1;
        let warp = &self.warps[w];
        let mut pc = EXITED;
        for &p in &warp.pc {
            pc = pc.min(p);
        }
        if pc == EXITED {
            self.warps[w].state = WarpState::Exited;
            return Ok(());
        }
        let mut active = 0u32;
        for (l, &p) in warp.pc.iter().enumerate() {
            if p == pc {
                active |= 1 << l;
            }
        }
        let Some(inst) = k.insts.get(pc as usize) else {
            // Falling off the end of the kernel exits.
            for l in 0..LANES {
                if active & (1 << l) != 0 {
                    self.warps[w].pc[l] = EXITED;
                }
            }
            return Ok(());
        };
        let mut exec = active;
        if let Some(g) = inst.guard {
            for l in 0..LANES {
                if active & (1 << l) != 0 && ((self.reg(w, g.reg, l) != 0) == g.negate) {
                    exec &= !(1 << l);
                }
            }
        }
        self.lane_steps += exec.count_ones() as u64;
        if inst.op.is_aligned() {
            let live = self.live_mask(w);
            if active != live || exec != active {
                return Err(SimError::Divergence {
                    at: self.at(w, inst),
                    message: format!(
                        "an .aligned/.sync instruction reached by lanes {active:#010x} (predicate true on {exec:#010x}) of the warp's live lanes {live:#010x}"
                    ),
                });
            }
        }
        let next = pc + 1;
        match &inst.op {
            Op::Bra { target, uni } => {
                if *uni && exec != 0 && exec != active {
                    return Err(SimError::Divergence {
                        at: self.at(w, inst),
                        message: format!("bra.uni taken by lanes {exec:#010x} of {active:#010x}"),
                    });
                }
                for l in 0..LANES {
                    if active & (1 << l) != 0 {
                        self.warps[w].pc[l] = if exec & (1 << l) != 0 { *target as u32 } else { next };
                    }
                }
                return Ok(());
            }
            Op::Ret => {
                for l in 0..LANES {
                    if exec & (1 << l) != 0 {
                        self.warps[w].pc[l] = EXITED;
                    }
                }
                let rest = active & !exec;
                for l in 0..LANES {
                    if rest & (1 << l) != 0 {
                        self.warps[w].pc[l] = next;
                    }
                }
                if self.live_mask(w) == 0 {
                    self.warps[w].state = WarpState::Exited;
                }
                return Ok(());
            }
            Op::Trap => {
                if exec != 0 {
                    return Err(SimError::Trap { at: self.at(w, inst), lane: exec.trailing_zeros() });
                }
            }
            Op::Nanosleep => {}
            Op::Mov { d, a } => self.lanes_map(w, exec, |c, l| (*d, c.val(w, *a, l))),
            Op::Pack64 { d, lo, hi } => self
                .lanes_map(w, exec, |c, l| (*d, (c.val(w, *lo, l) & 0xFFFF_FFFF) | (c.val(w, *hi, l) << 32))),
            Op::Int { op, ty, d, a, b } => {
                for l in lanes(exec) {
                    let (x, y) = (self.val(w, *a, l), self.val(w, *b, l));
                    let v = int_op(*op, *ty, x, y).ok_or_else(|| SimError::Arithmetic {
                        at: self.at(w, inst),
                        message: format!("integer division by zero (lane {l})"),
                    })?;
                    self.set(w, *d, l, v);
                }
            }
            Op::Mad { ty, d, a, b, c } => self.lanes_map(w, exec, |s, l| {
                let v = s.val(w, *a, l).wrapping_mul(s.val(w, *b, l)).wrapping_add(s.val(w, *c, l));
                (*d, trunc(*ty, v))
            }),
            Op::MulWide { ty, d, a, b } => self.lanes_map(w, exec, |s, l| {
                let (x, y) = (s.val(w, *a, l), s.val(w, *b, l));
                let v = if ty.signed() {
                    ((x as u32 as i32 as i64) * (y as u32 as i32 as i64)) as u64
                } else {
                    (x as u32 as u64) * (y as u32 as u64)
                };
                (*d, v)
            }),
            Op::Bfe { ty, d, a, b, c } => self.lanes_map(w, exec, |s, l| {
                let (x, pos, len) = (s.val(w, *a, l), s.val(w, *b, l) & 0xff, s.val(w, *c, l) & 0xff);
                let bits = ty.bits() as u64;
                let v = if len == 0 || pos >= bits {
                    0
                } else {
                    let x = trunc(*ty, x) >> pos;
                    if len >= 64 {
                        x
                    } else {
                        x & ((1u64 << len) - 1)
                    }
                };
                (*d, trunc(*ty, v))
            }),
            Op::Not { ty, d, a } => self.lanes_map(w, exec, |s, l| (*d, trunc(*ty, !s.val(w, *a, l)))),
            Op::CvtInt { dst, src, d, a } => self.lanes_map(w, exec, |s, l| {
                let x = s.val(w, *a, l);
                let wide = match src {
                    IntType::U32 => x as u32 as u64,
                    IntType::S32 => x as u32 as i32 as i64 as u64,
                    _ => x,
                };
                (*d, trunc(*dst, wide))
            }),
            Op::CvtPack { ty, d, hi, lo } => self.lanes_map(w, exec, |s, l| {
                let (h, lo) = (f32_of(s.val(w, *hi, l)), f32_of(s.val(w, *lo, l)));
                let pack = |x: f32| match ty {
                    HalfType::F16 => f16::from_f32(x).to_bits() as u64,
                    HalfType::Bf16 => bf16::from_f32(x).to_bits() as u64,
                };
                (*d, (pack(h) << 16) | pack(lo))
            }),
            Op::Float { op, ftz: flush, d, a, b } => self.lanes_map(w, exec, |s, l| {
                let (mut x, mut y) = (f32_of(s.val(w, *a, l)), f32_of(s.val(w, *b, l)));
                if *flush {
                    (x, y) = (ftz(x), ftz(y));
                }
                let mut r = match op {
                    FloatOp::Add => x + y,
                    FloatOp::Sub => x - y,
                    FloatOp::Mul => x * y,
                    FloatOp::Max => x.max(y),
                    FloatOp::Min => x.min(y),
                    FloatOp::Div => x / y,
                };
                if *flush {
                    r = ftz(r);
                }
                (*d, r.to_bits() as u64)
            }),
            Op::Fma { d, a, b, c } => self.lanes_map(w, exec, |s, l| {
                let r = f32_of(s.val(w, *a, l)).mul_add(f32_of(s.val(w, *b, l)), f32_of(s.val(w, *c, l)));
                (*d, r.to_bits() as u64)
            }),
            Op::Approx { func, ftz: flush, d, a } => self.lanes_map(w, exec, |s, l| {
                // `.ftz` flushes subnormal inputs and results to zero.
                let mut x = f32_of(s.val(w, *a, l));
                if *flush {
                    x = ftz(x);
                }
                let mut r = match func {
                    ApproxFn::Ex2 => x.exp2(),
                    ApproxFn::Lg2 => x.log2(),
                    ApproxFn::Tanh => x.tanh(),
                };
                if *flush {
                    r = ftz(r);
                }
                (*d, r.to_bits() as u64)
            }),
            Op::Rcp { d, a } => {
                self.lanes_map(w, exec, |s, l| (*d, (1.0 / f32_of(s.val(w, *a, l))).to_bits() as u64))
            }
            Op::FloatUnary { func, d, a } => self.lanes_map(w, exec, |s, l| {
                let x = f32_of(s.val(w, *a, l));
                let r = match func {
                    FloatFn::Neg => -x,
                    FloatFn::Abs => x.abs(),
                    FloatFn::Sqrt => x.sqrt(),
                };
                (*d, r.to_bits() as u64)
            }),
            Op::IntUnary { func, ty, d, a } => self.lanes_map(w, exec, |s, l| {
                let x = sext(*ty, s.val(w, *a, l));
                let r = match func {
                    IntFn::Neg => x.wrapping_neg(),
                    IntFn::Abs => x.wrapping_abs(),
                };
                (*d, trunc(*ty, r as u64))
            }),
            Op::CvtFromHalf { d, a } => self.lanes_map(w, exec, |s, l| {
                let half = f16::from_bits(s.val(w, *a, l) as u16);
                (*d, half.to_f32().to_bits() as u64)
            }),
            Op::CvtFloat { src, d, a } => self.lanes_map(w, exec, |s, l| {
                let v = s.val(w, *a, l);
                let r = if src.signed() { sext(*src, v) as f32 } else { trunc(*src, v) as f32 };
                (*d, r.to_bits() as u64)
            }),
            Op::Setp { cmp, ty, p, a, b } => self.lanes_map(w, exec, |s, l| {
                let (x, y) = (s.val(w, *a, l), s.val(w, *b, l));
                let r = match ty {
                    CmpType::F32 => {
                        let (x, y) = (f32_of(x), f32_of(y));
                        match cmp {
                            Cmp::Eq => x == y,
                            Cmp::Ne => x != y && !x.is_nan() && !y.is_nan(),
                            Cmp::Neu => x != y,
                            Cmp::Lt => x < y,
                            Cmp::Le => x <= y,
                            Cmp::Gt => x > y,
                            Cmp::Ge => x >= y,
                        }
                    }
                    CmpType::Int(t) => {
                        let o = if t.signed() {
                            sext(*t, x).cmp(&sext(*t, y))
                        } else {
                            trunc(*t, x).cmp(&trunc(*t, y))
                        };
                        match cmp {
                            Cmp::Eq => o.is_eq(),
                            Cmp::Ne | Cmp::Neu => o.is_ne(),
                            Cmp::Lt => o.is_lt(),
                            Cmp::Le => o.is_le(),
                            Cmp::Gt => o.is_gt(),
                            Cmp::Ge => o.is_ge(),
                        }
                    }
                };
                (*p, r as u64)
            }),
            Op::Selp { d, a, b, p } => self.lanes_map(w, exec, |s, l| {
                let v = if s.val(w, *p, l) != 0 { s.val(w, *a, l) } else { s.val(w, *b, l) };
                (*d, v)
            }),
            Op::Ld { space, width, d, addr } => self.load(w, inst, exec, *space, *width, d, addr)?,
            Op::St { space, width, addr, a } => self.store(w, inst, exec, *space, *width, addr, a)?,
            Op::FenceGpu => {}
            Op::AtomAdd { d, addr, b, min } => {
                let site = self.site(w, inst);
                for l in lanes(exec) {
                    let a = self.address(w, addr, l);
                    let bytes = self.global_read(site, a, 4, 4)?;
                    let old = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                    let b = self.val(w, *b, l) as u32;
                    let new = if *min { old.min(b) } else { old.wrapping_add(b) };
                    self.global
                        .write(a, &new.to_le_bytes())
                        .map_err(|message| SimError::OutOfBounds { at: site.at(), message })?;
                    self.set(w, *d, l, old as u64);
                }
            }
            Op::CpAsync { dst, src, size, src_size } => {
                self.cp_async(w, inst, exec, dst, src, *size, *src_size)?
            }
            Op::CpAsyncCommit => {
                for l in lanes(exec) {
                    let lane = &mut self.warps[w].lanes[l];
                    lane.group_ends.push(lane.issued);
                }
            }
            Op::CpAsyncWait { n } => {
                if !self.finish_wait_group(w, exec, *n) {
                    self.warps[w].state = WarpState::WaitGroup(*n);
                }
            }
            Op::CpAsyncMbarArrive { addr, noinc } => {
                let site = self.site(w, inst);
                let vc = Rc::new(self.warps[w].vc.clone());
                for l in lanes(exec) {
                    let a = self.address(w, addr, l);
                    let a = self.shared_range(site, a, 8)? as u32;
                    self.check_mbar_init(w, site, a)?;
                    if !noinc {
                        if let Some(m) = self.mbars.get_mut(&a) {
                            m.remaining += 1;
                        }
                    }
                    let lane = &mut self.warps[w].lanes[l];
                    let arrive =
                        AsyncArrive { after_seq: lane.issued, addr: a, noinc: *noinc, vc: vc.clone(), site };
                    if lane.completed >= lane.issued {
                        self.fire_async_arrive(w, l, arrive)?;
                    } else {
                        lane.arrivals.push(arrive);
                    }
                }
                self.release(w);
            }
            Op::TmaLoad { dst, map, coords, mbar } => {
                self.tma_load(w, inst, exec, dst, *map, coords, mbar)?
            }
            Op::Ldmatrix { count, trans, d, addr } => self.ldmatrix(w, inst, *count, *trans, d, addr)?,
            Op::Mma { ty, d, a, b, c } => self.mma(w, *ty, d, a, b, c),
            Op::Wgmma { ty, n, d, a, desc, scale_d, trans_b } => {
                self.wgmma(w, inst, *ty, *n, d, a, *desc, *scale_d, *trans_b)?
            }
            Op::WgmmaFence => self.warps[w].wgmma.fence_step = self.steps,
            Op::WgmmaCommit => {
                let wg = &mut self.warps[w].wgmma;
                wg.groups.push_back(std::mem::take(&mut wg.open));
                wg.group_reads.push_back(std::mem::take(&mut wg.open_reads));
            }
            Op::WgmmaWait { n } => {
                let site = self.site(w, inst);
                while self.warps[w].wgmma.groups.len() > *n as usize {
                    let wg = &mut self.warps[w].wgmma;
                    for r in wg.groups.pop_front().expect("a group") {
                        wg.in_flight[r as usize] -= 1;
                    }
                    // The group's shared reads last until now: nothing may have written those
                    // words since (a slot released before the wait and refilled, say).
                    for addr in wg.group_reads.pop_front().unwrap_or_default() {
                        self.check_shared(w, site, addr as usize, 4, false).map_err(|e| SimError::Wgmma {
                            at: site.at(),
                            message: format!(
                                "retires a wgmma that read shared address {addr:#x}, which changed while it was in flight (released before this wait?): {e}"
                            ),
                        })?;
                    }
                }
            }
            Op::SetMaxNReg { inc, count } => {
                let (inc, count) = (*inc, *count);
                let now = self.warps[w].registers;
                let why = if count % 8 != 0 || !(24..=256).contains(&count) {
                    Some(format!("{count} registers: the count is a multiple of 8 from 24 to 256"))
                } else if inc && count < now {
                    Some(format!("inc to {count} from {now} registers lowers the count"))
                } else if !inc && count > now {
                    Some(format!("dec to {count} from {now} registers raises the count"))
                } else {
                    None
                };
                if let Some(message) = why {
                    return Err(SimError::Registers { at: self.at(w, inst), message });
                }
                if !inc || self.registers_fit(w, count) {
                    self.warps[w].registers = count;
                } else {
                    self.warps[w].state = WarpState::Registers(count);
                }
            }
            Op::FenceProxyAsync => {
                for (fenced, seen) in self.proxy_fenced.iter_mut().zip(&self.warps[w].vc) {
                    *fenced = (*fenced).max(*seen);
                }
                // The warp's later writes are not covered by this fence.
                self.release(w);
            }
            Op::Redux { op, ty, d, a, mask } => {
                self.members_are_the_executing_lanes(w, inst, "redux.sync", *mask, exec)?;
                let mut all = lanes(exec).map(|l| self.val(w, *a, l));
                let first = all.next().unwrap_or(0);
                let total = all.fold(first, |acc, x| int_op(*op, *ty, acc, x).unwrap_or(acc));
                for l in lanes(exec) {
                    self.set(w, *d, l, total);
                }
            }
            Op::Vote { all, d, a, mask } => {
                self.members_are_the_executing_lanes(w, inst, "vote.sync", *mask, exec)?;
                let mut set = lanes(exec).map(|l| self.val(w, *a, l) != 0);
                let result = if *all { set.all(|x| x) } else { set.any(|x| x) };
                for l in lanes(exec) {
                    self.set(w, *d, l, result as u64);
                }
            }
            Op::Shfl { mode, d, a, b, c, mask } => {
                let m = self.val(w, *mask, 0) as u32;
                if m & exec != exec || m & !exec != 0 {
                    return Err(SimError::Divergence {
                        at: self.at(w, inst),
                        message: format!("shfl.sync member mask {m:#010x} but lanes {exec:#010x} execute it"),
                    });
                }
                let src: Vec<u64> = (0..LANES).map(|l| self.val(w, *a, l)).collect();
                for l in lanes(exec) {
                    let bval = (self.val(w, *b, l) & 31) as i64;
                    let cval = self.val(w, *c, l) as u32;
                    let segmask = ((cval >> 8) & 31) as i64;
                    let max_lane = ((l as i64) & segmask) | ((cval & 31) as i64 & !segmask);
                    let min_lane = (l as i64) & segmask;
                    let (j, ok) = match mode {
                        ShflMode::Bfly => {
                            let j = (l as i64) ^ bval;
                            (j, j <= max_lane)
                        }
                        ShflMode::Up => {
                            let j = l as i64 - bval;
                            (j, j >= min_lane)
                        }
                        ShflMode::Down => {
                            let j = l as i64 + bval;
                            (j, j <= max_lane)
                        }
                        ShflMode::Idx => {
                            let j = min_lane | (bval & !segmask);
                            (j, j <= max_lane)
                        }
                    };
                    let j = if ok { j as usize } else { l };
                    if exec & (1 << j) == 0 {
                        return Err(SimError::Divergence {
                            at: self.at(w, inst),
                            message: format!("lane {l} shuffles from inactive lane {j}"),
                        });
                    }
                    self.set(w, *d, l, src[j]);
                }
            }
            Op::BarWarp { mask } => {
                let m = self.val(w, *mask, 0) as u32;
                let live = self.live_mask(w);
                if m & live != exec {
                    return Err(SimError::Divergence {
                        at: self.at(w, inst),
                        message: format!("bar.warp.sync {m:#010x} reached by lanes {exec:#010x}"),
                    });
                }
            }
            Op::Bar { wait, id, count } => {
                let site = self.site(w, inst);
                let id = self.val(w, *id, 0) as u32;
                if id >= 16 {
                    return Err(SimError::BarrierMisuse {
                        at: site.at(),
                        message: format!("barrier id {id} is not in 0..16"),
                    });
                }
                let expected = match count {
                    Some(c) => self.val(w, *c, 0) as u32,
                    None => (self.nwarps * LANES) as u32,
                };
                if expected == 0 || expected % LANES as u32 != 0 {
                    return Err(SimError::BarrierMisuse {
                        at: site.at(),
                        message: format!(
                            "barrier {id} thread count {expected} is not a positive multiple of 32"
                        ),
                    });
                }
                let vc = self.warps[w].vc.clone();
                let nagents = vc.len();
                let bar = self.bars.entry(id).or_insert_with(|| NamedBar {
                    expected,
                    arrived: 0,
                    warps: Vec::new(),
                    accum: vec![0; nagents],
                    line: inst.line,
                });
                if bar.arrived > 0 && bar.expected != expected {
                    return Err(SimError::BarrierMisuse {
                        at: site.at(),
                        message: format!(
                            "barrier {id} counts {expected} threads here but {} at PTX line {}",
                            bar.expected, bar.line
                        ),
                    });
                }
                if bar.warps.contains(&(w as u32)) {
                    return Err(SimError::BarrierMisuse {
                        at: site.at(),
                        message: format!(
                            "warp {w} arrives at barrier {id} again before it completed ({} of {} threads arrived)",
                            bar.arrived, bar.expected
                        ),
                    });
                }
                if bar.arrived == 0 {
                    bar.expected = expected;
                    bar.line = inst.line;
                }
                bar.arrived += LANES as u32;
                bar.warps.push(w as u32);
                join(&mut bar.accum, &vc);
                if *wait {
                    self.warps[w].state = WarpState::Bar(id);
                }
                if bar.arrived >= bar.expected {
                    if bar.arrived > bar.expected {
                        return Err(SimError::BarrierMisuse {
                            at: site.at(),
                            message: format!(
                                "barrier {id}: {} threads arrived, {} expected",
                                bar.arrived, bar.expected
                            ),
                        });
                    }
                    let done = self.bars.remove(&id).expect("barrier");
                    for v in 0..self.nwarps {
                        if self.warps[v].state == WarpState::Bar(id) {
                            join(&mut self.warps[v].vc, &done.accum);
                            self.warps[v].state = WarpState::Ready;
                        }
                    }
                }
                self.release(w);
            }
            Op::MbarInit { addr, count } => {
                let site = self.site(w, inst);
                for l in lanes(exec) {
                    let a = self.address(w, addr, l);
                    let a = self.shared_range(site, a, 8)?;
                    self.check_shared(w, site, a, 8, true)?;
                    let expected = self.val(w, *count, l) as u32;
                    if expected == 0 {
                        return Err(SimError::BarrierMisuse {
                            at: site.at(),
                            message: "mbarrier.init with count 0".into(),
                        });
                    }
                    let n = self.warps[w].vc.len();
                    self.mbars.insert(
                        a as u32,
                        Mbar {
                            expected,
                            remaining: expected,
                            tx: 0,
                            phases: 0,
                            arrived: HashSet::new(),
                            accum: vec![0; n],
                            completed_vc: vec![0; n],
                        },
                    );
                }
            }
            Op::MbarArrive { d, addr, tx } => {
                let site = self.site(w, inst);
                let vc = self.warps[w].vc.clone();
                for l in lanes(exec) {
                    let a = self.address(w, addr, l);
                    let a = self.shared_range(site, a, 8)? as u32;
                    self.check_mbar_init(w, site, a)?;
                    let bytes = tx.map_or(0, |t| self.val(w, t, l) as i64);
                    let m = self.mbars.get_mut(&a).expect("checked above");
                    m.tx += bytes;
                    let state = m.phases;
                    self.mbar_arrive(a, Some(self.warps[w].thread0 + l as u32), &vc, site)?;
                    if let Some(d) = d {
                        self.set(w, *d, l, state);
                    }
                }
                self.release(w);
            }
            Op::MbarTestWait { p, addr, parity } => {
                let site = self.site(w, inst);
                let mut addr_of_warp = None;
                let mut result = None;
                let mut wanted = 0;
                for l in lanes(exec) {
                    let a = self.address(w, addr, l);
                    let a = self.shared_range(site, a, 8)? as u32;
                    self.check_mbar_init(w, site, a)?;
                    let par = self.val(w, *parity, l) & 1;
                    wanted = par;
                    let r = self.test_wait(w, site, a, par)?;
                    if addr_of_warp.is_some_and(|x| x != a) || result.is_some_and(|x| x != r) {
                        return Err(SimError::Divergence {
                            at: site.at(),
                            message: "lanes of one warp wait on different mbarriers or parities".into(),
                        });
                    }
                    addr_of_warp = Some(a);
                    result = Some(r);
                    self.set(w, *p, l, r as u64);
                }
                if let (Some(a), Some(false)) = (addr_of_warp, result) {
                    // The spin loop around the wait cannot progress until the phase changes.
                    self.warps[w].state = WarpState::Parked {
                        addr: a,
                        phases: self.mbars[&a].phases,
                        parity: wanted,
                        line: inst.line,
                    };
                } else if let (Some(a), Some(true)) = (addr_of_warp, result) {
                    let vc = self.mbars[&a].completed_vc.clone();
                    join(&mut self.warps[w].vc, &vc);
                }
            }
        }
        for l in 0..LANES {
            if active & (1 << l) != 0 {
                self.warps[w].pc[l] = next;
            }
        }
        Ok(())
    }

    /// `bytes` of global memory at `addr`, which must be aligned to `align`.
    fn global_read(&self, site: Site<'a>, addr: u64, bytes: u32, align: u32) -> Result<&[u8], SimError> {
        global_aligned(site, addr, align)?;
        self.global
            .read(addr, bytes as usize)
            .map_err(|message| SimError::OutOfBounds { at: site.at(), message })
    }

    fn lanes_map(&mut self, w: usize, exec: u32, f: impl Fn(&Self, usize) -> (u32, u64)) {
        for l in lanes(exec) {
            let (d, v) = f(self, l);
            self.set(w, d, l, v);
        }
    }

    fn check_mbar_init(&mut self, w: usize, site: Site<'a>, a: u32) -> Result<(), SimError> {
        if !self.mbars.contains_key(&a) {
            return Err(SimError::BarrierMisuse {
                at: site.at(),
                message: format!("shared address {a:#x} holds no initialized mbarrier"),
            });
        }
        // The initialization must happen before any use.
        let sh = &self.shadow[a as usize / 4];
        if let Some(prev) = sh.write {
            if !ordered(&self.warps[w].vc, w as u32, &prev) {
                return Err(SimError::Race {
                    addr: a,
                    now: site.at(),
                    now_kind: "uses the mbarrier at",
                    earlier: format!("{} (its mbarrier.init)", self.describe(&prev, true)),
                });
            }
        }
        Ok(())
    }

    /// `mbarrier.test_wait.parity`: true once the phase with parity `par` before the current one
    /// has completed. Also checks that the waiter observes phases one by one.
    fn test_wait(&mut self, w: usize, site: Site<'a>, a: u32, par: u64) -> Result<bool, SimError> {
        let m = &self.mbars[&a];
        let done = m.phases % 2 != par;
        let seen = self.warps[w].seen.get(&a).copied();
        let completed = m.phases as i64; // phases 0..completed-1 are complete
        if done {
            let k = completed - 1;
            let skipped = match seen {
                Some(last) => k > last + 1,
                None => k > 0,
            };
            if skipped {
                return Err(SimError::BarrierMisuse {
                    at: site.at(),
                    message: format!(
                        "parity wait on the mbarrier at {a:#x} is more than one phase behind: it observes phase {k} (parity {par}) but last observed phase {}",
                        seen.map_or("none".to_string(), |s| s.to_string())
                    ),
                });
            }
            self.warps[w].seen.insert(a, k);
        } else if let Some(last) = seen {
            if completed > last + 1 {
                return Err(SimError::BarrierMisuse {
                    at: site.at(),
                    message: format!(
                        "parity wait on the mbarrier at {a:#x} waits for parity {par}, but the next phase it has not observed (phase {}, parity {}) already completed: parity off by one, or the waiter is more than one phase behind",
                        last + 1,
                        (last + 1).rem_euclid(2)
                    ),
                });
            }
        }
        Ok(done)
    }

    fn load(
        &mut self,
        w: usize,
        inst: &'a Inst,
        exec: u32,
        space: Space,
        width: u32,
        d: &[u32],
        addr: &Address,
    ) -> Result<(), SimError> {
        let site = self.site(w, inst);
        let bytes = width * d.len() as u32;
        let mut data = [0u8; 32];
        for l in lanes(exec) {
            let a = self.address(w, addr, l);
            let data = &mut data[..bytes as usize];
            match space {
                Space::Param => {
                    let p = match addr.base {
                        AddrBase::Param(p) => p as usize,
                        _ => {
                            return Err(SimError::OutOfBounds {
                                at: site.at(),
                                message: "ld.param without a parameter".into(),
                            })
                        }
                    };
                    data.copy_from_slice(&self.s.params[p].to_le_bytes()[..bytes as usize]);
                }
                Space::Shared => {
                    let a = self.shared_range(site, a, bytes)?;
                    self.check_shared(w, site, a, bytes as usize, false)?;
                    data.copy_from_slice(&self.shared[a..a + bytes as usize]);
                }
                Space::Global => data.copy_from_slice(self.global_read(site, a, bytes, bytes)?),
            }
            for (k, r) in d.iter().enumerate() {
                let mut v = [0u8; 8];
                v[..width as usize].copy_from_slice(&data[k * width as usize..(k + 1) * width as usize]);
                self.set(w, *r, l, u64::from_le_bytes(v));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        w: usize,
        inst: &'a Inst,
        exec: u32,
        space: Space,
        width: u32,
        addr: &Address,
        src: &[Operand],
    ) -> Result<(), SimError> {
        let site = self.site(w, inst);
        let bytes = width * src.len() as u32;
        let mut data = [0u8; 32];
        for l in lanes(exec) {
            let a = self.address(w, addr, l);
            for (k, o) in src.iter().enumerate() {
                let at = k * width as usize;
                data[at..at + width as usize]
                    .copy_from_slice(&self.val(w, *o, l).to_le_bytes()[..width as usize]);
            }
            let data = &data[..bytes as usize];
            match space {
                Space::Param => {
                    return Err(SimError::OutOfBounds {
                        at: site.at(),
                        message: "st.param is not supported in kernels".into(),
                    })
                }
                Space::Shared => {
                    let a = self.shared_range(site, a, bytes)?;
                    self.check_shared(w, site, a, bytes as usize, true)?;
                    self.shared[a..a + bytes as usize].copy_from_slice(data);
                }
                Space::Global => {
                    global_aligned(site, a, bytes)?;
                    self.global
                        .write(a, data)
                        .map_err(|message| SimError::OutOfBounds { at: site.at(), message })?;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn cp_async(
        &mut self,
        w: usize,
        inst: &'a Inst,
        exec: u32,
        dst: &Address,
        src: &Address,
        size: u32,
        src_size: Option<Operand>,
    ) -> Result<(), SimError> {
        let site = self.site(w, inst);
        for l in lanes(exec) {
            let d = self.address(w, dst, l);
            let d = self.shared_range(site, d, size)?;
            let s = self.address(w, src, l);
            let n = src_size.map_or(size as u64, |o| self.val(w, o, l));
            if n > size as u64 {
                return Err(SimError::OutOfBounds {
                    at: site.at(),
                    message: format!("cp.async source size {n} exceeds the copy size {size}"),
                });
            }
            let mut data = [0u8; 16];
            if n > 0 {
                data[..n as usize].copy_from_slice(self.global_read(site, s, n as u32, size)?);
            }
            // The copy writes the destination: earlier accesses by other warps must be ordered
            // before its issue.
            self.check_shared(w, site, d, size as usize, true)?;
            let copy = Copy {
                warp: w as u32,
                lane: l as u32,
                dst: d as u32,
                data,
                len: size,
                line: inst.line,
                tx: None,
            };
            self.enqueue_copy(copy);
        }
        Ok(())
    }

    /// Puts `copy` on its lane's queue of copies in flight (they land in order, at random
    /// times): its destination reads as in flight until it lands.
    fn enqueue_copy(&mut self, copy: Copy) {
        let id = self.copies.len();
        let (w, l, dst, len) = (copy.warp as usize, copy.lane as usize, copy.dst as usize, copy.len as usize);
        self.copies.push(Some(copy));
        for word in dst / 4..(dst + len) / 4 {
            self.shadow[word].pending_copy = id as u32 + 1;
            self.shadow[word].write = None;
        }
        self.in_flight += 1;
        let lane = &mut self.warps[w].lanes[l];
        lane.queue.push_back(id);
        lane.issued += 1;
    }

    /// `cp.async.bulk.tensor.4d` (tile mode, 128-byte swizzle): the box of the tensor map at
    /// `coords` lands in shared memory at `dst` as 16-byte pieces on the lane's copy queue
    /// (landing in order, at random times, like cp.async), each completing its bytes on the
    /// mbarrier at `mbar`. Elements outside the tensor read as zeros. Row `r` of the box goes
    /// to `dst + 128·r`, its 16-byte chunk `c` to chunk `c ^ ((address / 128) % 8)`.
    #[allow(clippy::too_many_arguments)]
    fn tma_load(
        &mut self,
        w: usize,
        inst: &'a Inst,
        exec: u32,
        dst: &Address,
        map: Operand,
        coords: &[Operand],
        mbar: &Address,
    ) -> Result<(), SimError> {
        let site = self.site(w, inst);
        let bad = |message: String| SimError::OutOfBounds { at: site.at(), message };
        for l in lanes(exec) {
            let generic = self.val(w, map, l);
            let param = (generic & !crate::parse::PARAM_ADDRESS) as usize;
            if generic & crate::parse::PARAM_ADDRESS != crate::parse::PARAM_ADDRESS
                || self.s.kernel.params.get(param).map(|p| p.ty) != Some(crate::parse::ParamType::TensorMap)
            {
                return Err(bad(format!(
                    "tensor map operand {generic:#x} is not the address of a tensor-map parameter"
                )));
            }
            let tm = self.s.tensor_maps[self.s.params[param] as usize];
            if tm.box_dims[0] != 64 || tm.box_dims[2] != 1 || tm.box_dims[3] != 1 {
                return Err(bad(format!("box {:?}: the simulator models boxes of 64 16-bit columns (one 128-byte swizzle span) and one plane", tm.box_dims)));
            }
            let d = self.address(w, dst, l);
            if d % 128 != 0 {
                return Err(SimError::Misaligned { at: site.at(), space: "shared", addr: d, bytes: 128 });
            }
            let rows = tm.box_dims[1];
            let d = self.shared_range(site, d, 128 * rows)?;
            let m = self.address(w, mbar, l);
            let m = self.shared_range(site, m, 8)? as u32;
            self.check_mbar_init(w, site, m)?;
            let c: Vec<i64> = coords.iter().map(|o| self.val(w, *o, l) as u32 as i32 as i64).collect();
            for r in 0..rows as usize {
                let row_addr = d + 128 * r;
                for chunk in 0..8usize {
                    let at = [c[0] + 8 * chunk as i64, c[1] + r as i64, c[2], c[3]];
                    let inside = at.iter().zip(tm.dims).all(|(x, n)| *x >= 0 && (*x as u64) < n);
                    let mut data = [0u8; 16];
                    if inside {
                        let g = tm.base
                            + at[0] as u64 * 2
                            + at[1] as u64 * tm.strides[0]
                            + at[2] as u64 * tm.strides[1]
                            + at[3] as u64 * tm.strides[2];
                        data.copy_from_slice(self.global_read(site, g, 16, 16)?);
                    }
                    let to = row_addr + 16 * (chunk ^ ((row_addr / 128) % 8));
                    self.check_shared(w, site, to, 16, true)?;
                    self.enqueue_copy(Copy {
                        warp: w as u32,
                        lane: l as u32,
                        dst: to as u32,
                        data,
                        len: 16,
                        line: inst.line,
                        tx: Some(m),
                    });
                }
            }
        }
        Ok(())
    }

    fn ldmatrix(
        &mut self,
        w: usize,
        inst: &'a Inst,
        count: u32,
        trans: bool,
        d: &[u32],
        addr: &Address,
    ) -> Result<(), SimError> {
        let site = self.site(w, inst);
        // rows[m][r][c]: element (r, c) of matrix m, from the address lane 8m + r gives.
        let mut rows = [[[0u16; 8]; 8]; 4];
        for m in 0..count as usize {
            for r in 0..8 {
                let l = 8 * m + r;
                let a = self.address(w, addr, l);
                let a = self.shared_range(site, a, 16)?;
                self.check_shared(w, site, a, 16, false)?;
                for c in 0..8 {
                    rows[m][r][c] = u16::from_le_bytes([self.shared[a + 2 * c], self.shared[a + 2 * c + 1]]);
                }
            }
        }
        for l in 0..LANES {
            for (m, reg) in d.iter().enumerate() {
                let (lo, hi) = if trans {
                    (rows[m][2 * (l % 4)][l / 4], rows[m][2 * (l % 4) + 1][l / 4])
                } else {
                    (rows[m][l / 4][2 * (l % 4)], rows[m][l / 4][2 * (l % 4) + 1])
                };
                self.set(w, *reg, l, ((hi as u64) << 16) | lo as u64);
            }
        }
        Ok(())
    }

    /// `wgmma.mma_async.sync.aligned.m64n{n}k16` with A in registers, run for this warp's 16
    /// rows of the warpgroup's 64 (its A registers and accumulators have the layouts of
    /// `mma.m16n8k16`, per 8 columns: see `mma`), B read from shared memory through the
    /// descriptor. The result is in the registers at once, but they count as in flight until a
    /// `wgmma.wait_group` retires the group: an ordinary instruction touching them is an error.
    /// Also checked: `wgmma.fence` after the last ordinary write of any register the wgmma
    /// reads, and each shared word it reads: written before it (happens-before) and fenced
    /// into the async proxy.
    #[allow(clippy::too_many_arguments)]
    fn wgmma(
        &mut self,
        w: usize,
        inst: &'a Inst,
        ty: HalfType,
        n: u32,
        d: &[u32],
        a: &WgmmaA,
        desc: Operand,
        scale_d: Operand,
        trans_b: bool,
    ) -> Result<(), SimError> {
        let site = self.site(w, inst);
        let fail = |message: String| SimError::Wgmma { at: site.at(), message };
        let fence = self.warps[w].wgmma.fence_step;
        let a_operands: &[Operand] = match a {
            WgmmaA::Registers(regs) => regs,
            WgmmaA::Descriptor(_) => &[],
        };
        let a_regs = a_operands.iter().filter_map(|o| match o {
            Operand::Reg(r) => Some(*r),
            _ => None,
        });
        for r in d.iter().copied().chain(a_regs) {
            if self.warps[w].wgmma.written_at[r as usize] > fence {
                return Err(fail(format!(
                    "reads register {}, written after the last wgmma.fence (or with none): a missing wgmma.fence",
                    self.s.kernel.registers[r as usize]
                )));
            }
        }
        let uniform = |o: Operand| {
            let bits = self.warps[w].regs_of(o, 0);
            match (0..LANES).all(|l| self.warps[w].regs_of(o, l) == bits) {
                true => Descriptor::decode(bits).map_err(fail),
                false => Err(fail("the lanes pass different descriptors".into())),
            }
        };
        let descriptor = uniform(desc)?;
        let a_descriptor = match a {
            WgmmaA::Descriptor(o) => Some(uniform(*o)?),
            WgmmaA::Registers(_) => None,
        };
        // compute-sanitizer's memcheck counts an operand as the bytes from its start address
        // to start + rows x 16 x 2 (whatever its strides): all of that must lie in the launch's
        // shared memory, or memcheck reports an out-of-bounds read that the tensor cores never
        // make.
        let spans = std::iter::once(("B", descriptor.start, u64::from(n) * 32))
            .chain(a_descriptor.as_ref().map(|ad| ("A", ad.start, 64 * 32)));
        for (operand, start, bytes) in spans {
            if start + bytes > u64::from(self.s.shared_bytes) {
                return Err(SimError::OutOfBounds {
                    at: site.at(),
                    message: format!(
                        "wgmma operand {operand} spans {bytes} bytes from {start:#x} (as compute-sanitizer counts it), past the {} bytes of shared memory of this launch",
                        self.s.shared_bytes
                    ),
                });
            }
        }
        // B[n][k], a 4-byte word (two elements adjacent along a row) at a time: K-major rows
        // hold k, MN-major rows hold n.
        let cols = n as u64;
        let mut bm = vec![[0f32; 16]; cols as usize];
        for k in 0..16u64 {
            for c in 0..cols {
                let pair = if trans_b { c % 2 } else { k % 2 };
                if pair == 1 {
                    continue;
                }
                let words = self.read_async_pair(w, site, descriptor.element(trans_b, k, c))?;
                let [lo, hi] = words.map(|bits| half_to_f32(ty, bits));
                let (c, k) = (c as usize, k as usize);
                bm[c][k] = lo;
                if trans_b {
                    bm[c + 1][k] = hi;
                } else {
                    bm[c][k + 1] = hi;
                }
            }
        }
        let am = match a_descriptor {
            // K-major: rows are m, k along a row. The warpgroup's operation reads all 64 rows
            // (checked as this warp's reads: the hardware gives no order among the four
            // warps' parts); this warp's 16 rows are its A.
            Some(ad) => {
                let (own, mut am) = (16 * (w % 4), [[0f32; 16]; 16]);
                for m in 0..64usize {
                    for k in (0..16u64).step_by(2) {
                        let words = self.read_async_pair(w, site, ad.element(false, k, m as u64))?;
                        if (own..own + 16).contains(&m) {
                            let k = k as usize;
                            [am[m - own][k], am[m - own][k + 1]] = words.map(|bits| half_to_f32(ty, bits));
                        }
                    }
                }
                am
            }
            None => a_fragment(ty, |l, i| self.warps[w].regs_of(a_operands[i], l)),
        };
        let accumulate = self.warps[w].regs_of(scale_d, 0) != 0;
        for l in 0..LANES {
            let (g, t) = (l / 4, l % 4);
            for (i, reg) in d.iter().enumerate() {
                let (nt, e) = (i / 4, i % 4);
                let (row, col) = (g + 8 * (e / 2), 8 * nt + 2 * t + e % 2);
                let slot = *reg as usize * LANES + l;
                let mut acc = if accumulate { f32_of(self.warps[w].regs[slot]) } else { 0.0 };
                for k in 0..16 {
                    acc += am[row][k] * bm[col][k];
                }
                self.warps[w].regs[slot] = acc.to_bits() as u64;
            }
        }
        let wg = &mut self.warps[w].wgmma;
        for r in d.iter().copied().chain(a_operands.iter().filter_map(|o| match o {
            Operand::Reg(r) => Some(*r),
            _ => None,
        })) {
            wg.in_flight[r as usize] += 1;
            wg.open.push(r);
        }
        Ok(())
    }

    /// A wgmma's read of the two 16-bit elements at shared address `addr` (a word): in bounds,
    /// race-checked as warp `w`'s read, and fenced into the async proxy.
    fn read_async_pair(&mut self, w: usize, site: Site<'a>, addr: u64) -> Result<[u64; 2], SimError> {
        let addr = self.shared_range(site, addr, 4)?;
        self.check_shared(w, site, addr, 4, false)?;
        self.check_async_proxy(site, addr)?;
        self.warps[w].wgmma.open_reads.push(addr as u32);
        let element = |at: usize| u16::from_le_bytes([self.shared[at], self.shared[at + 1]]) as u64;
        Ok([element(addr), element(addr + 2)])
    }

    /// A wgmma (async proxy) reading the shared word at `addr`: its last write must be fenced
    /// into the async proxy by a `fence.proxy.async` that saw it.
    fn check_async_proxy(&self, site: Site<'a>, addr: usize) -> Result<(), SimError> {
        let Some(write) = self.shadow[addr / 4].write else { return Ok(()) };
        if write.clock <= self.proxy_fenced[write.agent as usize] {
            return Ok(());
        }
        Err(SimError::Wgmma {
            at: site.at(),
            message: format!(
                "reads shared address {addr:#x} through the async proxy, but {} through the generic proxy and no fence.proxy.async since orders the two",
                self.describe(&write, true)
            ),
        })
    }

    /// `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32`, fragments as in the PTX ISA
    /// (g = lane / 4, t = lane % 4): A reg i holds (row g + 8·(i%2), k 2t + 8·(i/2) + {0,1}), B reg i
    /// holds (k 2t + 8i + {0,1}, n g), C/D reg i holds (row g + 8·(i/2), n 2t + i%2).
    fn mma(
        &mut self,
        w: usize,
        ty: HalfType,
        d: &[u32; 4],
        a: &[Operand; 4],
        b: &[Operand; 2],
        c: &[Operand; 4],
    ) {
        let half = |bits: u64| half_to_f32(ty, bits);
        let am = a_fragment(ty, |l, i| self.val(w, a[i], l));
        let mut bm = [[0f32; 8]; 16];
        let mut cm = [[0f32; 8]; 16];
        for l in 0..LANES {
            let (g, t) = (l / 4, l % 4);
            for (i, o) in b.iter().enumerate() {
                let v = self.val(w, *o, l);
                let k = 2 * t + 8 * i;
                bm[k][g] = half(v & 0xffff);
                bm[k + 1][g] = half((v >> 16) & 0xffff);
            }
            for (i, o) in c.iter().enumerate() {
                cm[g + 8 * (i / 2)][2 * t + i % 2] = f32_of(self.val(w, *o, l));
            }
        }
        for l in 0..LANES {
            let (g, t) = (l / 4, l % 4);
            for (i, reg) in d.iter().enumerate() {
                let (row, col) = (g + 8 * (i / 2), 2 * t + i % 2);
                let mut acc = cm[row][col];
                for k in 0..16 {
                    acc += am[row][k] * bm[k][col];
                }
                self.set(w, *reg, l, acc.to_bits() as u64);
            }
        }
    }
}

/// A wgmma shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start
/// address, leading and stride byte offsets (bits 0-13, 16-29, 32-45, each in 16-byte units),
/// base offset (49-51) and swizzle mode (62-63).
struct Descriptor {
    start: u64,
    leading: u64,
    stride: u64,
}

impl Descriptor {
    fn decode(bits: u64) -> Result<Descriptor, String> {
        let field = |shift: u32| ((bits >> shift) & 0x3fff) << 4;
        let (base_offset, swizzle) = ((bits >> 49) & 7, bits >> 62);
        if swizzle != 1 || base_offset != 0 {
            return Err(format!(
                "descriptor {bits:#018x}: swizzle mode {swizzle} with base offset {base_offset} (the simulator models the 128-byte swizzle, mode 1, on 1024-byte aligned tiles)"
            ));
        }
        Ok(Descriptor { start: field(0), leading: field(16), stride: field(32) })
    }

    /// Shared address of element (k, n) of B (16-bit elements): K-major rows are n (8-row
    /// groups `stride` apart, 128-byte rows, k along a row); MN-major (`trans_b`) rows are k
    /// (8-row groups `stride` apart), n along a row in 64-element blocks `leading` apart. The
    /// 128-byte swizzle then XORs address bits 4-6 with bits 7-9.
    fn element(&self, trans_b: bool, k: u64, n: u64) -> u64 {
        let logical = if trans_b {
            self.start + (n / 64) * self.leading + (k / 8) * self.stride + (k % 8) * 128 + (n % 64) * 2
        } else {
            self.start + (n / 8) * self.stride + (n % 8) * 128 + k * 2
        };
        logical ^ (((logical >> 7) & 7) << 4)
    }
}

/// A 16-bit float (the low 16 bits of `bits`) of type `ty`, exactly.
fn half_to_f32(ty: HalfType, bits: u64) -> f32 {
    match ty {
        HalfType::F16 => f16::from_bits(bits as u16).to_f32(),
        HalfType::Bf16 => bf16::from_bits(bits as u16).to_f32(),
    }
}

/// The warp's `[16][16]` A matrix of an `mma.m16n8k16` (or a warp's share of a wgmma) from its
/// four fragment registers, `reg(lane, i)`: register i of lane (g = lane / 4, t = lane % 4)
/// holds row g + 8·(i % 2), columns 2t + 8·(i / 2) and the one after (low half first).
fn a_fragment(ty: HalfType, reg: impl Fn(usize, usize) -> u64) -> [[f32; 16]; 16] {
    let mut am = [[0f32; 16]; 16];
    for l in 0..LANES {
        let (g, t) = (l / 4, l % 4);
        for i in 0..4 {
            let v = reg(l, i);
            let (row, k) = (g + 8 * (i % 2), 2 * t + 8 * (i / 2));
            am[row][k] = half_to_f32(ty, v & 0xffff);
            am[row][k + 1] = half_to_f32(ty, (v >> 16) & 0xffff);
        }
    }
    am
}

fn lanes(mask: u32) -> impl Iterator<Item = usize> {
    (0..LANES).filter(move |l| mask & (1 << l) != 0)
}

fn trunc(ty: IntType, v: u64) -> u64 {
    if ty.bits() == 32 {
        v & 0xffff_ffff
    } else {
        v
    }
}

fn sext(ty: IntType, v: u64) -> i64 {
    if ty.bits() == 32 {
        v as u32 as i32 as i64
    } else {
        v as i64
    }
}

fn int_op(op: IntOp, ty: IntType, x: u64, y: u64) -> Option<u64> {
    let bits = ty.bits();
    let (sx, sy) = (sext(ty, x), sext(ty, y));
    let (ux, uy) = (trunc(ty, x), trunc(ty, y));
    let v = match op {
        IntOp::Add => ux.wrapping_add(uy),
        IntOp::Sub => ux.wrapping_sub(uy),
        IntOp::MulLo => ux.wrapping_mul(uy),
        IntOp::MulHi => {
            if ty.signed() {
                ((sx as i128 * sy as i128) >> bits) as u64
            } else {
                ((ux as u128 * uy as u128) >> bits) as u64
            }
        }
        IntOp::Div | IntOp::Rem if uy == 0 => return None,
        IntOp::Div if ty.signed() => sx.wrapping_div(sy) as u64,
        IntOp::Div => ux / uy,
        IntOp::Rem if ty.signed() => sx.wrapping_rem(sy) as u64,
        IntOp::Rem => ux % uy,
        IntOp::Shl => {
            if uy >= bits as u64 {
                0
            } else {
                ux << uy
            }
        }
        IntOp::Shr => {
            let s = uy.min(bits as u64 - 1);
            if ty.signed() {
                (sx >> s) as u64
            } else if uy >= bits as u64 {
                0
            } else {
                ux >> uy
            }
        }
        IntOp::And => ux & uy,
        IntOp::Or => ux | uy,
        IntOp::Xor => ux ^ uy,
        IntOp::Min if ty.signed() => sx.min(sy) as u64,
        IntOp::Min => ux.min(uy),
        IntOp::Max if ty.signed() => sx.max(sy) as u64,
        IntOp::Max => ux.max(uy),
    };
    Some(trunc(ty, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_ops_wrap_at_their_width() {
        assert_eq!(int_op(IntOp::Add, IntType::U32, 0xffff_ffff, 1), Some(0));
        assert_eq!(int_op(IntOp::Shr, IntType::S32, 0x8000_0000, 4), Some(0xf800_0000));
        assert_eq!(int_op(IntOp::Div, IntType::U32, 7, 0), None);
        assert_eq!(int_op(IntOp::MulHi, IntType::U32, 0x8000_0000, 4), Some(2));
    }
}
