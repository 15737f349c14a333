//! The protocol check: proves at compile time that a kernel's producer/consumer schedule can
//! neither hang nor race, for every interleaving of its roles.
//!
//! A [`Schedule`] is the kernel reduced to what synchronization sees: per role (a group of warps
//! that run the same code), a sequence of [`Event`]s — async copies into ring slots, cp.async
//! group commits and waits, CTA barriers, slot reads, mbarrier arrivals and phase waits. It is
//! extracted from the IR after the passes ([`schedule_of`]), unrolled over two work items of
//! `2·stages + 1` iterations each (enough for every slot to be reused twice), and then explored:
//! every interleaving of the roles is searched (depth first, visited states memoized) and the
//! first violation is reported:
//!
//! - (a) deadlock: every unfinished role waits, and no arrival can come;
//! - (b) a read of a slot whose copy has not landed, or has not been made visible to the reader
//!   (by a CTA barrier after `wait_group`, or by waiting for the mbarrier phase the copy's
//!   async arrival completes);
//! - (c) a copy into a slot that another thread may still be reading (no barrier, or no mbarrier
//!   phase, orders the reads before the copy);
//! - (d) an mbarrier phase that receives more arrivals than its expected count, or that is left
//!   incomplete when every role has finished;
//! - (e) a parity wait more than one phase behind, or ahead of, the barrier (its parity test would
//!   hang or pass at once).
//!
//! Each error names the roles, the barrier and the slot involved.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use crate::kernel::*;

/// A ring slot: `ring` names the staged tile's buffer, `index` the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    pub ring: u32,
    pub index: u32,
}

/// What one role does, in order. `tag`s name the data a slot holds (the global iteration).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// Issue an async copy of data `tag` into `slot` (lands later).
    Copy { slot: Slot, tag: u64 },
    /// Write data `tag` into `slot` with ordinary stores (visible to others once the role
    /// arrives on a barrier they wait for).
    Write { slot: Slot, tag: u64 },
    /// Close the role's current cp.async group.
    Commit,
    /// Wait until at most `n` of the role's committed groups are in flight.
    WaitGroup(u32),
    /// A barrier over all threads of the role (the uniform schedule's `bar.sync`).
    CtaBarrier,
    /// Read `slot`, expecting data `tag`.
    Read { slot: Slot, tag: u64 },
    /// Every thread of the role arrives once on mbarrier `barrier`.
    Arrive { barrier: u32 },
    /// Every thread's copies issued so far arrive on `barrier` when they land.
    AsyncArrive { barrier: u32 },
    /// Wait for phase `phase` of `barrier` to complete (parity wait; phase -1 is the one before
    /// the first, complete from the start).
    Wait { barrier: u32, phase: i64 },
    /// One thread of the role arrives on `barrier` and adds `bytes` to the transaction bytes its
    /// current phase waits for (`mbarrier.arrive.expect_tx`).
    ExpectTx { barrier: u32, bytes: u32 },
    /// A bulk tensor copy of data `tag` into `slot`, whose `bytes` complete on `barrier`: the
    /// data is published through the phase those bytes complete.
    BulkCopy { slot: Slot, tag: u64, barrier: u32, bytes: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleTrace {
    pub name: String,
    /// Threads that perform each event (each arrives once on an `Arrive`).
    pub threads: u32,
    pub events: Vec<Event>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarrierDecl {
    pub name: String,
    /// Arrivals that complete a phase.
    pub count: u32,
}

/// The reduced kernel: roles, mbarriers, and the names of rings (for messages).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Schedule {
    pub roles: Vec<RoleTrace>,
    pub barriers: Vec<BarrierDecl>,
    pub rings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("protocol check: {kind}: {message}")]
pub struct ProtocolError {
    pub kind: ProtocolErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolErrorKind {
    Deadlock,
    ReadBeforeFill,
    OverwriteWhileRead,
    ArrivalCount,
    PhaseSkew,
}

impl fmt::Display for ProtocolErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtocolErrorKind::Deadlock => "deadlock",
            ProtocolErrorKind::ReadBeforeFill => "read before the copy landed",
            ProtocolErrorKind::OverwriteWhileRead => "slot overwritten while it may be read",
            ProtocolErrorKind::ArrivalCount => "arrival count mismatch",
            ProtocolErrorKind::PhaseSkew => "parity wait out of phase",
        })
    }
}

/// Where a slot's data stands, from the point of view of the synchronization.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SlotState {
    Empty,
    /// Copy issued by `role`, in its group number `group` (uncommitted groups are `u32::MAX`),
    /// not yet landed.
    InFlight {
        tag: u64,
        role: usize,
        group: u32,
    },
    /// Landed for the copying role's own threads (after `wait_group`), not yet visible to
    /// other threads.
    LandedLocal {
        tag: u64,
        role: usize,
    },
    /// Landed, published through mbarrier phase (barrier, phase) of an async arrival.
    Published {
        tag: u64,
        barrier: u32,
        phase: u32,
    },
    /// Stored by `role` with ordinary stores; `via` lists the mbarrier phases it arrived on
    /// since, each of which makes the data visible to whoever waits for it.
    Written {
        tag: u64,
        role: usize,
        via: BTreeSet<(u32, u32)>,
    },
    /// Visible to every thread of `role` (and to roles that waited on the publishing phase).
    Visible {
        tag: u64,
        role: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    pcs: Vec<usize>,
    /// Per barrier: completed phases, arrivals in the current phase.
    barriers: Vec<(u32, u32)>,
    /// Per barrier: transaction bytes its current phase still waits for (expected minus
    /// completed).
    tx: Vec<i64>,
    slots: BTreeMap<Slot, SlotState>,
    /// Slots each role has read since they were last written.
    reading: Vec<BTreeSet<Slot>>,
    /// Slots whose reads were released by an arrival in (barrier, phase): whoever waits for that
    /// phase may overwrite them.
    released: BTreeMap<(u32, u32), BTreeSet<Slot>>,
    /// Slots each role may overwrite (no other thread can still read them).
    writable: Vec<BTreeSet<Slot>>,
    /// Per role: groups committed so far, and copies not yet committed.
    committed: Vec<u32>,
    /// Per role: (barrier, phase) it has waited for (so it sees what was published there).
    seen: Vec<BTreeSet<(u32, u32)>>,
}

impl Schedule {
    /// A slot as messages name it: `ks[1]`, `channel s[0]`.
    pub fn slot_name(&self, s: Slot) -> String {
        let ring = self.rings.get(s.ring as usize).cloned().unwrap_or_else(|| format!("ring{}", s.ring));
        format!("{ring}[{}]", s.index)
    }

    /// An mbarrier as messages name it: `full[0]`.
    pub fn barrier_name(&self, b: u32) -> String {
        self.barriers.get(b as usize).map_or_else(|| format!("barrier{b}"), |d| d.name.clone())
    }
}

fn err(kind: ProtocolErrorKind, message: String) -> ProtocolError {
    ProtocolError { kind, message }
}

/// Explores every interleaving of `schedule`'s roles; `Ok` if none hangs or races.
pub fn check(schedule: &Schedule) -> Result<(), ProtocolError> {
    let n = schedule.roles.len();
    let all_slots: BTreeSet<Slot> = schedule
        .roles
        .iter()
        .flat_map(|r| r.events.iter())
        .filter_map(|e| match e {
            Event::Copy { slot, .. }
            | Event::Write { slot, .. }
            | Event::Read { slot, .. }
            | Event::BulkCopy { slot, .. } => Some(*slot),
            _ => None,
        })
        .collect();
    let start = State {
        pcs: vec![0; n],
        barriers: vec![(0, 0); schedule.barriers.len()],
        tx: vec![0; schedule.barriers.len()],
        slots: all_slots.iter().map(|s| (*s, SlotState::Empty)).collect(),
        reading: vec![BTreeSet::new(); n],
        released: BTreeMap::new(),
        writable: vec![all_slots.clone(); n],
        committed: vec![0; n],
        seen: vec![BTreeSet::new(); n],
    };
    let mut visited: HashSet<State> = HashSet::new();
    let mut stack = vec![start];
    while let Some(state) = stack.pop() {
        if !visited.insert(state.clone()) {
            continue;
        }
        if visited.len() > 2_000_000 {
            return Err(err(ProtocolErrorKind::Deadlock, "state space too large to explore".into()));
        }
        let mut moved = false;
        for role in 0..n {
            if let Some(next) = step(schedule, &state, role)? {
                moved = true;
                stack.push(next);
            }
        }
        let finished = (0..n).all(|r| state.pcs[r] == schedule.roles[r].events.len());
        if finished {
            for (b, (phase, arrivals)) in state.barriers.iter().enumerate() {
                if state.tx[b] != 0 {
                    return Err(err(
                        ProtocolErrorKind::ArrivalCount,
                        format!(
                            "every role has finished but phase {phase} of mbarrier `{}` still expects {} transaction bytes: its arrival announced bytes no copy brings",
                            schedule.barrier_name(b as u32),
                            state.tx[b]
                        ),
                    ));
                }
                if *arrivals != 0 {
                    return Err(err(
                        ProtocolErrorKind::ArrivalCount,
                        format!(
                            "every role has finished but mbarrier `{}` has {arrivals} of its {} arrivals in phase {phase}: some role arrives fewer times than the barrier expects",
                            schedule.barrier_name(b as u32),
                            schedule.barriers[b].count
                        ),
                    ));
                }
            }
        } else if !moved {
            let blocked: Vec<String> = (0..n)
                .filter(|r| state.pcs[*r] < schedule.roles[*r].events.len())
                .map(|r| describe_block(schedule, &state, r))
                .collect();
            return Err(err(
                ProtocolErrorKind::Deadlock,
                format!("every live role waits: {}", blocked.join("; ")),
            ));
        }
    }
    Ok(())
}

fn describe_block(schedule: &Schedule, state: &State, role: usize) -> String {
    let r = &schedule.roles[role];
    match &r.events[state.pcs[role]] {
        Event::Wait { barrier, phase } => {
            let (done, arrivals) = state.barriers[*barrier as usize];
            let bytes = match state.tx[*barrier as usize] {
                0 => String::new(),
                n => format!(", {n} transaction bytes it expects not brought by any copy"),
            };
            format!(
                "role `{}` waits for phase {phase} of mbarrier `{}` (phases completed: {done}, arrivals in the current one: {arrivals} of {}{bytes}) and no role will arrive",
                r.name,
                schedule.barrier_name(*barrier),
                schedule.barriers[*barrier as usize].count
            )
        }
        other => format!("role `{}` is stuck at {other:?}", r.name),
    }
}

/// Role `role` takes its next event from `state`: `Ok(None)` if it is blocked or finished.
fn step(schedule: &Schedule, state: &State, role: usize) -> Result<Option<State>, ProtocolError> {
    let trace = &schedule.roles[role];
    let Some(event) = trace.events.get(state.pcs[role]) else { return Ok(None) };
    let mut s = state.clone();
    s.pcs[role] += 1;
    let name = &trace.name;
    match event {
        Event::Copy { slot, tag } | Event::Write { slot, tag } | Event::BulkCopy { slot, tag, .. } => {
            if !s.writable[role].contains(slot) {
                let why = match (0..s.reading.len()).find(|r| *r != role && s.reading[*r].contains(slot)) {
                    Some(other) => format!(
                        "role `{}` may still be reading it: no barrier phase it arrived on after the read has been waited for",
                        schedule.roles[other].name
                    ),
                    None if s.reading[role].contains(slot) => {
                        "other threads of the same role may still be reading it (no barrier since the read)".into()
                    }
                    None => "what it holds has not been read yet, or its readers have not released it".into(),
                };
                return Err(err(
                    ProtocolErrorKind::OverwriteWhileRead,
                    format!(
                        "role `{name}` copies iteration {tag} into stage {} but {why}",
                        schedule.slot_name(*slot)
                    ),
                ));
            }
            if let SlotState::InFlight { tag: old, .. } = s.slots[slot] {
                return Err(err(
                    ProtocolErrorKind::OverwriteWhileRead,
                    format!(
                        "role `{name}` copies iteration {tag} into stage {} while the copy of iteration {old} into it is still in flight",
                        schedule.slot_name(*slot)
                    ),
                ));
            }
            let state = match event {
                Event::Write { .. } => SlotState::Written { tag: *tag, role, via: BTreeSet::new() },
                // The copy engine's bytes publish the data through the phase they complete: the
                // current one (the role announced them first).
                Event::BulkCopy { barrier, .. } => SlotState::Published {
                    tag: *tag,
                    barrier: *barrier,
                    phase: s.barriers[*barrier as usize].0,
                },
                _ => SlotState::InFlight { tag: *tag, role, group: u32::MAX },
            };
            s.slots.insert(*slot, state);
            // A new epoch of the slot: earlier reads and releases of it no longer count.
            for set in s.reading.iter_mut().chain(s.writable.iter_mut()).chain(s.released.values_mut()) {
                set.remove(slot);
            }
            if let Event::BulkCopy { barrier, bytes, .. } = event {
                let b = *barrier as usize;
                s.tx[b] -= *bytes as i64;
                let (phase, arrivals) = s.barriers[b];
                if s.tx[b] < 0 && arrivals == schedule.barriers[b].count {
                    return Err(err(
                        ProtocolErrorKind::ArrivalCount,
                        format!(
                            "role `{name}`'s bulk copy into stage {} completes {} bytes more than phase {phase} of mbarrier `{}` expects: the phase would complete before the data has landed",
                            schedule.slot_name(*slot),
                            -s.tx[b],
                            schedule.barrier_name(*barrier)
                        ),
                    ));
                }
                complete_phase(schedule, &mut s, b);
            }
        }
        Event::Commit => {
            let group = s.committed[role];
            for st in s.slots.values_mut() {
                if let SlotState::InFlight { role: r, group: g, .. } = st {
                    if *r == role && *g == u32::MAX {
                        *g = group;
                    }
                }
            }
            s.committed[role] += 1;
        }
        Event::WaitGroup(pending) => {
            let landed_below = s.committed[role].saturating_sub(*pending);
            for st in s.slots.values_mut() {
                if let SlotState::InFlight { tag, role: r, group } = *st {
                    if r == role && group < landed_below {
                        *st = SlotState::LandedLocal { tag, role };
                    }
                }
            }
        }
        Event::CtaBarrier => {
            for st in s.slots.values_mut() {
                if let SlotState::LandedLocal { tag, role: r } = *st {
                    if r == role {
                        *st = SlotState::Visible { tag, role };
                    }
                }
            }
            // Every thread of the role is past its reads: the slots may be refilled.
            let done: Vec<Slot> = s.reading[role].iter().copied().collect();
            s.writable[role].extend(done);
        }
        Event::Read { slot, tag } => {
            let ok = match &s.slots[slot] {
                SlotState::Visible { tag: t, role: r } => t == tag && *r == role,
                SlotState::Published { tag: t, barrier, phase } => {
                    t == tag && s.seen[role].contains(&(*barrier, *phase))
                }
                SlotState::Written { tag: t, via, .. } => {
                    t == tag && via.iter().any(|k| s.seen[role].contains(k))
                }
                _ => false,
            };
            if !ok {
                let why = match &s.slots[slot] {
                    SlotState::Empty => "nothing was copied into it".to_string(),
                    SlotState::InFlight { tag: t, role: r, .. } => format!(
                        "the copy of iteration {t} by role `{}` has not landed (no wait covers its group)",
                        schedule.roles[*r].name
                    ),
                    SlotState::LandedLocal { tag: t, .. } => {
                        format!("iteration {t} landed but no barrier made it visible to the other threads")
                    }
                    SlotState::Published { tag: t, barrier, phase } if t == tag => format!(
                        "role `{name}` did not wait for phase {phase} of mbarrier `{}`, which publishes it",
                        schedule.barrier_name(*barrier)
                    ),
                    SlotState::Written { tag: t, role: r, .. } if t == tag => format!(
                        "role `{name}` waited for no mbarrier phase that role `{}` arrived on after storing it",
                        schedule.roles[*r].name
                    ),
                    SlotState::Published { tag: t, .. }
                    | SlotState::Visible { tag: t, .. }
                    | SlotState::Written { tag: t, .. } => format!("it holds iteration {t}"),
                };
                return Err(err(
                    ProtocolErrorKind::ReadBeforeFill,
                    format!(
                        "role `{name}` reads stage {} expecting iteration {tag}, but {why}",
                        schedule.slot_name(*slot)
                    ),
                ));
            }
            s.reading[role].insert(*slot);
        }
        Event::Arrive { barrier } | Event::AsyncArrive { barrier } | Event::ExpectTx { barrier, .. } => {
            let b = *barrier as usize;
            let decl = &schedule.barriers[b];
            let (phase, arrivals) = s.barriers[b];
            // An expect_tx arrival is one thread's; the others, every thread of the role.
            let threads = if matches!(event, Event::ExpectTx { .. }) { 1 } else { trace.threads };
            if arrivals + threads > decl.count {
                return Err(err(
                    ProtocolErrorKind::ArrivalCount,
                    format!(
                        "role `{name}` ({threads} threads) arrives on mbarrier `{}` in phase {phase}, which already has {arrivals} of its {} expected arrivals",
                        decl.name, decl.count
                    ),
                ));
            }
            let key = (*barrier, phase);
            if matches!(event, Event::AsyncArrive { .. }) {
                // The role's copies land, then publish through this phase.
                for st in s.slots.values_mut() {
                    if let SlotState::InFlight { tag, role: r, .. } = *st {
                        if r == role {
                            *st = SlotState::Published { tag, barrier: *barrier, phase };
                        }
                    }
                }
            } else {
                // Every read the role has made so far happens before this arrival.
                let done: Vec<Slot> = s.reading[role].iter().copied().collect();
                s.released.entry(key).or_default().extend(done);
                // The role's stores so far are ordered before this arrival (release).
                for st in s.slots.values_mut() {
                    if let SlotState::Written { role: r, via, .. } = st {
                        if *r == role {
                            via.insert(key);
                        }
                    }
                }
            }
            if let Event::ExpectTx { bytes, .. } = event {
                s.tx[b] += *bytes as i64;
            }
            s.barriers[b] = (phase, arrivals + threads);
            complete_phase(schedule, &mut s, b);
        }
        Event::Wait { barrier, phase } => {
            let b = *barrier as usize;
            let (done, _) = s.barriers[b];
            let done = done as i64;
            if *phase + 1 < done {
                return Err(err(
                    ProtocolErrorKind::PhaseSkew,
                    format!(
                        "role `{name}` waits for phase {phase} of mbarrier `{}` but {done} phases have completed: its parity test would see phase {done} in progress with the same parity and hang (a waiter more than one phase behind)",
                        schedule.barrier_name(*barrier)
                    ),
                ));
            }
            if *phase > done {
                return Err(err(
                    ProtocolErrorKind::PhaseSkew,
                    format!(
                        "role `{name}` waits for phase {phase} of mbarrier `{}` while phase {done} is in progress: its parity test would pass at once",
                        schedule.barrier_name(*barrier)
                    ),
                ));
            }
            if *phase == done {
                return Ok(None); // blocked until the phase completes
            }
            if *phase >= 0 {
                let key = (*barrier, *phase as u32);
                s.seen[role].insert(key);
                if let Some(slots) = s.released.get(&key) {
                    let slots: Vec<Slot> = slots.iter().copied().collect();
                    s.writable[role].extend(slots);
                }
            }
        }
    }
    Ok(Some(s))
}

/// Completes barrier `b`'s current phase when all its arrivals and transaction bytes are in.
fn complete_phase(schedule: &Schedule, s: &mut State, b: usize) {
    let (phase, arrivals) = s.barriers[b];
    if arrivals == schedule.barriers[b].count && s.tx[b] == 0 {
        s.barriers[b] = (phase + 1, 0);
    }
}

/// Where in the kernel an event of a [`Schedule`] comes from: which of the two traced work
/// items, and which part of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Place {
    pub work: u32,
    pub part: Part,
}

/// The parts of a work item, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// Before the pipelined loop: barrier set-up, the Q tile.
    Setup,
    /// The pipeline's prologue: the first `stages - 1` fills.
    Prologue,
    /// Iteration `kt` of the pipelined loop's body (the steady state).
    Steady(u32),
    /// The pipeline's epilogue.
    Epilogue,
    /// After the loop: merges and stores.
    Finish,
}

/// Reduces a kernel (after the passes) to its synchronization schedule: one role per role group
/// (or one for the uniform schedule), two work items of `2·stages + 1` pipeline iterations.
pub fn schedule_of(kernel: &Kernel) -> Schedule {
    traced_schedule(kernel).0
}

/// Pipeline iterations a schedule traces per work item: `2·stages + 1`, enough for every slot
/// to be reused twice.
pub fn traced_iterations(config: &crate::Config) -> u32 {
    2 * config.stages.max(1) + 1
}

/// [`schedule_of`], with the [`Place`] of every event (per role, in event order).
pub fn traced_schedule(kernel: &Kernel) -> (Schedule, Vec<Vec<Place>>) {
    let cfg = &kernel.config;
    let iterations = traced_iterations(cfg);
    let mut schedule = Schedule {
        roles: vec![],
        barriers: kernel
            .mbarriers
            .iter()
            .flat_map(|r| {
                (0..r.slots).map(move |i| BarrierDecl { name: format!("{}[{i}]", r.name), count: r.count })
            })
            .collect(),
        rings: kernel
            .buffers
            .iter()
            .map(|b| b.name.clone())
            .chain(kernel.channels.iter().map(|c| format!("channel {}", c.name)))
            .collect(),
    };
    let ring_base: Vec<u32> = kernel
        .mbarriers
        .iter()
        .scan(0, |acc, r| {
            let base = *acc;
            *acc += r.slots;
            Some(base)
        })
        .collect();
    let mut groups: Vec<(String, u32, &Block)> = vec![];
    for inst in &kernel.body.insts {
        if let Op::Roles { groups: gs } = &inst.op {
            for g in gs {
                let names: Vec<&str> = g.roles.iter().map(|r| r.name()).collect();
                groups.push((names.join("+"), g.warps * 32, &g.body));
            }
        }
    }
    if groups.is_empty() {
        groups.push(("all".into(), cfg.threads(), &kernel.body));
    }
    let mut places = vec![];
    let range_iterations = traced_range_iterations(kernel);
    for (name, threads, body) in groups {
        let mut t = Tracer {
            kernel,
            iterations,
            ring_base: &ring_base,
            events: vec![],
            counters: BTreeMap::new(),
            views: BTreeMap::new(),
            kt: 0,
            work: 0,
            outer: 0,
            range_iterations,
            part: Part::Setup,
            places: vec![],
            async_open: vec![],
            async_groups: std::collections::VecDeque::new(),
        };
        t.block(body);
        schedule.roles.push(RoleTrace { name, threads, events: t.events });
        places.push(t.places);
    }
    (schedule, places)
}

/// Iterations traced of a range loop around the K/V loop: two, so that the second run of the
/// K/V loop meets the ring as the first left it.
const RANGE_ITERATIONS: u32 = 2;

/// Iterations a schedule traces of the range loop around the K/V loop: two when the kernel has
/// one, else 1.
pub fn traced_range_iterations(kernel: &Kernel) -> u32 {
    let mut has_range_loop = false;
    kernel.walk(&mut |i| has_range_loop |= matches!(i.op, Op::Loop { .. }));
    if has_range_loop {
        RANGE_ITERATIONS
    } else {
        1
    }
}

struct Tracer<'k> {
    kernel: &'k Kernel,
    iterations: u32,
    ring_base: &'k [u32],
    events: Vec<Event>,
    counters: BTreeMap<Value, u32>,
    /// Staged views (and their transposes): the slot and data they name this iteration.
    views: BTreeMap<Value, (Slot, u64)>,
    kt: u32,
    work: u32,
    /// The iteration of the range loop (if any) around the K/V loop.
    outer: u32,
    /// How many iterations of a range loop are traced: [`RANGE_ITERATIONS`] when the kernel
    /// has one, else 1 (the tags, which the schedule prints, count iterations as before).
    range_iterations: u32,
    /// Where the tracer is, and where each event in `events` came from.
    part: Part,
    places: Vec<Place>,
    /// Slots read by asynchronous matmuls since the last commit, and by each committed group
    /// not yet retired: such a read lasts until its group retires, so it is traced at the issue
    /// (the data must be there) and again at the wait that retires it (nothing may have
    /// refilled the slot in between).
    async_open: Vec<(Slot, u64)>,
    async_groups: std::collections::VecDeque<Vec<(Slot, u64)>>,
}

impl Tracer<'_> {
    fn tag(&self, ahead: u32) -> u64 {
        ((self.work * self.range_iterations + self.outer) * self.iterations + self.kt + ahead) as u64
    }

    fn slot_of(&self, buffer: BufferId, counter: Value, ahead: u32, is_loop_var: bool) -> Slot {
        let slots = self.kernel.buffers[buffer.0 as usize].slots;
        let base = if is_loop_var { self.kt } else { self.counters.get(&counter).copied().unwrap_or(0) };
        Slot { ring: buffer.0, index: (base + ahead) % slots }
    }

    fn barrier(&self, ring: MbarRingId, iter: Value) -> (u32, u32) {
        let r = &self.kernel.mbarriers[ring.0 as usize];
        let it = self.counters.get(&iter).copied().unwrap_or(0);
        (self.ring_base[ring.0 as usize] + it % r.slots, it / r.slots)
    }

    fn is_counter(&self, v: Value) -> bool {
        self.kernel.ty(v) == Type::Counter
    }

    fn block(&mut self, block: &Block) {
        for inst in &block.insts {
            self.inst(inst);
            let place = Place { work: self.work, part: self.part };
            self.places.resize(self.events.len(), place);
        }
    }

    fn inst(&mut self, inst: &Inst) {
        match &inst.op {
            Op::Tiles { body, .. } => {
                for w in 0..2 {
                    self.work = w;
                    self.part = Part::Setup;
                    self.block(body);
                }
            }
            Op::Loop { body, .. } => {
                for o in 0..self.range_iterations {
                    self.outer = o;
                    self.block(body);
                }
                self.outer = 0;
            }
            Op::Pipeline { prologue, body, epilogue, .. } => {
                self.kt = 0;
                self.part = Part::Prologue;
                self.block(prologue);
                for kt in 0..self.iterations {
                    self.kt = kt;
                    self.part = Part::Steady(kt);
                    self.block(body);
                }
                self.part = Part::Epilogue;
                self.block(epilogue);
                self.part = Part::Finish;
            }
            Op::Load { .. } => {
                self.events.push(Event::Commit);
                self.events.push(Event::WaitGroup(0));
            }
            Op::When { counter, body } => {
                if self.counters.get(counter).copied().unwrap_or(0) != 0 {
                    self.block(body);
                }
            }
            Op::MmaAsync { .. } => {
                for u in inst.op.uses() {
                    if let Some((slot, tag)) = self.views.get(&u).copied() {
                        self.events.push(Event::Read { slot, tag });
                        self.async_open.push((slot, tag));
                    }
                }
            }
            Op::MmaCommit => self.async_groups.push_back(std::mem::take(&mut self.async_open)),
            Op::MmaWait { pending } => {
                while self.async_groups.len() > *pending as usize {
                    for (slot, tag) in self.async_groups.pop_front().expect("a group") {
                        self.events.push(Event::Read { slot, tag });
                    }
                }
            }
            Op::AsyncCopy { buffer, ahead, slot, .. } => {
                if self.kt + ahead < self.iterations {
                    let s = self.slot_of(*buffer, *slot, *ahead, !self.is_counter(*slot));
                    self.events.push(Event::Copy { slot: s, tag: self.tag(*ahead) });
                }
            }
            Op::StageView { dst, zero_unless: Some(c), .. }
                if self.counters.get(c).copied().unwrap_or(0) == 0 =>
            {
                // The tile of zeros: no ring slot.
                self.views.remove(dst);
            }
            Op::StageView { dst, buffer, slot, .. } => {
                let s = self.slot_of(*buffer, *slot, 0, !self.is_counter(*slot));
                // A counter of iterations numbers them as tags do (every traced loop runs all its
                // iterations), so a view through one that lags the loop (the overlap pass's view
                // of the previous iteration's slot) names the data that slot holds.
                let tag = match self.is_counter(*slot) {
                    true => self.counters.get(slot).copied().unwrap_or(0) as u64,
                    false => self.tag(0),
                };
                self.views.insert(*dst, (s, tag));
            }
            Op::Transpose { dst, src } => {
                if let Some(v) = self.views.get(src).copied() {
                    self.views.insert(*dst, v);
                }
            }
            Op::CommitGroup => self.events.push(Event::Commit),
            Op::WaitGroup { younger } => self.events.push(Event::WaitGroup(*younger)),
            Op::Barrier { .. } | Op::InitBarriers => self.events.push(Event::CtaBarrier),
            // Two barriers over the compute warps: after the groups' states are written, and
            // after group 0 has read them.
            Op::MergeSplits { .. } => self.events.extend([Event::CtaBarrier, Event::CtaBarrier]),
            // Two barriers over the CTA: after its state is written (before the arrival), and
            // after the arrival's verdict is shared.
            Op::CombineCtas { .. } => self.events.extend([Event::CtaBarrier, Event::CtaBarrier]),
            // A column reduction: two barriers over the compute warps, after the warps' partial
            // columns are written and after they are read.
            Op::ColReduce { .. } => self.events.extend([Event::CtaBarrier, Event::CtaBarrier]),
            Op::CounterInit { dst } => {
                self.counters.insert(*dst, 0);
            }
            Op::CounterNext { dst } => *self.counters.entry(*dst).or_insert(0) += 1,
            Op::MbarWait { ring, iter, flip } => {
                let (barrier, phase) = self.barrier(*ring, *iter);
                self.events.push(Event::Wait { barrier, phase: phase as i64 - *flip as i64 });
            }
            Op::MbarArrive { ring, iter } => {
                let (barrier, _) = self.barrier(*ring, *iter);
                self.events.push(Event::Arrive { barrier });
            }
            Op::MbarArriveAsync { ring, iter } => {
                let (barrier, _) = self.barrier(*ring, *iter);
                self.events.push(Event::AsyncArrive { barrier });
            }
            Op::MbarExpectTx { ring, iter, bytes } => {
                let (barrier, _) = self.barrier(*ring, *iter);
                self.events.push(Event::ExpectTx { barrier, bytes: *bytes });
            }
            Op::TmaCopy { buffer, slot, ring, .. } => {
                let s = self.slot_of(*buffer, *slot, 0, !self.is_counter(*slot));
                let (barrier, _) = self.barrier(*ring, *slot);
                let bytes = self.kernel.slot_tile_bytes(*buffer);
                // Numbered as views number what they read (see `StageView`): by the counter, which
                // counts the ring's uses (a ring fed once a work item counts work items).
                let tag = match self.is_counter(*slot) {
                    true => self.counters.get(slot).copied().unwrap_or(0) as u64,
                    false => self.tag(0),
                };
                self.events.push(Event::BulkCopy { slot: s, tag, barrier, bytes });
            }
            Op::ChanWrite { chan, iter, .. } | Op::ChanRead { chan, iter, .. } => {
                // A channel is a one-slot ring after the staged buffers; its data is the use count.
                let slot = Slot { ring: self.kernel.buffers.len() as u32 + chan.0, index: 0 };
                let tag = self.counters.get(iter).copied().unwrap_or(0) as u64;
                self.events.push(match inst.op {
                    Op::ChanWrite { .. } => Event::Write { slot, tag },
                    _ => Event::Read { slot, tag },
                });
            }
            op => {
                for u in op.uses() {
                    if let Some((slot, tag)) = self.views.get(&u).copied() {
                        self.events.push(Event::Read { slot, tag });
                    }
                }
            }
        }
    }
}
