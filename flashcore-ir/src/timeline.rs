//! The schedule as a timeline: one run of a [`Schedule`] in logical time, for pictures.
//!
//! The protocol check ([`crate::protocol`]) explores every interleaving; a picture needs one.
//! [`run`] plays the roles side by side in a simple timing model and records when each event
//! starts and how long it waited:
//!
//! - every event takes one step of its role; a blocked event waits, step by step, until it can go;
//! - an async copy lands [`COPY_LATENCY`] steps after it is issued; `wait_group(n)` waits for
//!   every copy of the role's groups but the youngest `n`; an async arrival on an mbarrier is
//!   counted when the role's copies issued so far have landed;
//! - an mbarrier phase completes when its expected arrivals have come (every thread of a role
//!   arrives once), and a parity wait goes once the phase it waits for has completed.
//!
//! Times are steps, not cycles: the picture shows the order and overlap the synchronization
//! allows, not how long the math takes.

use crate::protocol::{Event, Place, Schedule};

/// Steps from issuing a `cp.async` to its data landing in shared memory.
pub const COPY_LATENCY: u32 = 6;

/// One event of one role on the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub event: Event,
    pub place: Place,
    /// The step the role reached this event.
    pub reached: u32,
    /// The step it ran (after waiting `start - reached` steps); it takes one step.
    pub start: u32,
    /// For an arrival: the mbarrier phase it counted towards, and the step it was counted (for
    /// an async arrival, when the role's copies landed).
    pub arrival: Option<Arrival>,
}

/// When and where an arrival on an mbarrier counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub phase: u32,
    pub step: u32,
}

/// One role's lane: its name, warps and events in time order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    pub role: String,
    pub warps: u32,
    pub marks: Vec<Mark>,
}

/// A run of a schedule. `stalled` names the roles left waiting when no event could ever run
/// again (never for a schedule the protocol check accepts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    pub lanes: Vec<Lane>,
    /// Steps until the last role finished.
    pub steps: u32,
    pub stalled: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct RoleState {
    pc: usize,
    /// The step the current event was reached.
    reached: u32,
    /// Landing step of every copy issued, by group (`u32::MAX` for the open group).
    copies: Vec<(u32, u32)>,
    committed: u32,
}

/// Plays `schedule` (its events traced at `places`, as [`crate::protocol::traced_schedule`]
/// gives them) in the timing model above.
pub fn run(schedule: &Schedule, places: &[Vec<Place>]) -> Timeline {
    let n = schedule.roles.len();
    let mut roles = vec![RoleState::default(); n];
    let mut lanes: Vec<Lane> = schedule
        .roles
        .iter()
        .map(|r| Lane { role: r.name.clone(), warps: r.threads / 32, marks: vec![] })
        .collect();
    // Per barrier: completed phases, arrivals in the current one, and async arrivals still to
    // be counted (landing step, role, its mark).
    let mut phases = vec![(0u32, 0u32); schedule.barriers.len()];
    let mut pending: Vec<Vec<(u32, usize, usize)>> = vec![vec![]; schedule.barriers.len()];
    // Counts `threads` arrivals on `barrier` at `step`: the phase they went to.
    let arrive = |phases: &mut Vec<(u32, u32)>, barrier: usize, threads: u32, step: u32| {
        let count = schedule.barriers[barrier].count;
        let (done, arrived) = phases[barrier];
        phases[barrier] = if arrived + threads >= count { (done + 1, 0) } else { (done, arrived + threads) };
        Arrival { phase: done, step }
    };
    let mut step = 0u32;
    let mut idle_steps = 0u32;
    loop {
        // Async arrivals whose copies have landed by now count first.
        for (b, list) in pending.iter_mut().enumerate() {
            list.sort();
            while list.first().is_some_and(|(at, _, _)| *at <= step) {
                let (_, role, mark) = list.remove(0);
                let threads = schedule.roles[role].threads;
                lanes[role].marks[mark].arrival = Some(arrive(&mut phases, b, threads, step));
            }
        }
        let mut moved = false;
        for (r, trace) in schedule.roles.iter().enumerate() {
            let state = &mut roles[r];
            let Some(event) = trace.events.get(state.pc) else { continue };
            let can_go = match event {
                Event::WaitGroup(younger) => {
                    let must_land = state.committed.saturating_sub(*younger);
                    state.copies.iter().all(|(group, lands)| *group >= must_land || *lands <= step)
                }
                Event::Wait { phase, barrier } => *phase < phases[*barrier as usize].0 as i64,
                _ => true,
            };
            if !can_go {
                continue;
            }
            let mut arrival = None;
            match event {
                Event::Copy { .. } => state.copies.push((u32::MAX, step + COPY_LATENCY)),
                Event::Commit => {
                    for (group, _) in state.copies.iter_mut().filter(|(g, _)| *g == u32::MAX) {
                        *group = state.committed;
                    }
                    state.committed += 1;
                }
                Event::Arrive { barrier } => {
                    arrival = Some(arrive(&mut phases, *barrier as usize, trace.threads, step))
                }
                Event::AsyncArrive { barrier } => {
                    let lands = state.copies.iter().map(|(_, at)| *at).max().unwrap_or(step).max(step);
                    pending[*barrier as usize].push((lands, r, lanes[r].marks.len()));
                }
                // The announcing arrival counts once the bulk copies that follow it have landed:
                // each copy (issued a step after it, or after the one before) pushes it later.
                Event::ExpectTx { barrier, .. } => {
                    pending[*barrier as usize].push((step + COPY_LATENCY, r, lanes[r].marks.len()))
                }
                Event::BulkCopy { barrier, .. } => {
                    let lands = step + COPY_LATENCY;
                    state.copies.push((u32::MAX, lands));
                    if let Some(p) = pending[*barrier as usize].iter_mut().rev().find(|p| p.1 == r) {
                        p.0 = p.0.max(lands);
                    }
                }
                _ => {}
            }
            lanes[r].marks.push(Mark {
                event: event.clone(),
                place: places[r][state.pc],
                reached: state.reached,
                start: step,
                arrival,
            });
            state.pc += 1;
            state.reached = step + 1;
            moved = true;
        }
        step += 1;
        let finished = roles.iter().zip(&schedule.roles).all(|(s, t)| s.pc == t.events.len());
        let in_flight = pending.iter().any(|l| !l.is_empty())
            || roles.iter().any(|s| s.copies.iter().any(|(_, at)| *at >= step));
        idle_steps = if moved { 0 } else { idle_steps + 1 };
        if finished || (!moved && !in_flight && idle_steps > 1) {
            break;
        }
    }
    let stalled = roles
        .iter()
        .zip(&schedule.roles)
        .filter(|(s, t)| s.pc < t.events.len())
        .map(|(_, t)| t.name.clone())
        .collect();
    let steps = lanes.iter().filter_map(|l| l.marks.last()).map(|m| m.start + 1).max().unwrap_or(0);
    Timeline { lanes, steps, stalled }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BarrierDecl, Part, RoleTrace, Slot};

    /// A one-slot ring: `load` fills it and arrives (async) on `full`, `compute` waits on `full`,
    /// reads, and arrives on `empty`, which `load` waits on before the next fill.
    fn ring(iterations: u32, compute_waits: bool) -> (Schedule, Vec<Vec<Place>>) {
        let slot = Slot { ring: 0, index: 0 };
        let (mut load, mut compute) = (vec![], vec![]);
        for i in 0..iterations {
            load.push(Event::Wait { barrier: 1, phase: i as i64 - 1 });
            load.push(Event::Copy { slot, tag: i as u64 });
            load.push(Event::AsyncArrive { barrier: 0 });
            if compute_waits {
                compute.push(Event::Wait { barrier: 0, phase: i as i64 });
            }
            compute.push(Event::Read { slot, tag: i as u64 });
            compute.push(Event::Arrive { barrier: 1 });
        }
        let places = |n: usize| vec![Place { work: 0, part: Part::Steady(0) }; n];
        let places = vec![places(load.len()), places(compute.len())];
        let schedule = Schedule {
            roles: vec![
                RoleTrace { name: "load".into(), threads: 32, events: load },
                RoleTrace { name: "compute".into(), threads: 128, events: compute },
            ],
            barriers: vec![
                BarrierDecl { name: "full".into(), count: 32 },
                BarrierDecl { name: "empty".into(), count: 128 },
            ],
            rings: vec!["ks".into()],
        };
        (schedule, places)
    }

    #[test]
    fn a_consumer_waits_for_the_copy_to_land_and_the_producer_for_the_release() {
        let (schedule, places) = ring(2, true);
        let t = run(&schedule, &places);
        assert!(t.stalled.is_empty());
        let (load, compute) = (&t.lanes[0].marks, &t.lanes[1].marks);
        // The copy is issued at step 1 and lands at 1 + COPY_LATENCY, when the async arrival
        // completes phase 0 of `full` and the compute warps' wait goes.
        assert_eq!(load[1].start, 1);
        assert_eq!(load[2].arrival, Some(Arrival { phase: 0, step: 1 + COPY_LATENCY }));
        assert_eq!((compute[0].reached, compute[0].start), (0, 1 + COPY_LATENCY));
        // The read, then the arrival on `empty` releases the producer's second wait.
        let released = compute[2].start;
        assert_eq!(compute[2].arrival, Some(Arrival { phase: 0, step: released }));
        assert_eq!(load[3].event, Event::Wait { barrier: 1, phase: 0 });
        assert_eq!(load[3].start, released + 1);
        assert_eq!(t.steps, compute.last().unwrap().start + 1);
    }

    #[test]
    fn a_schedule_that_deadlocks_ends_with_the_stalled_roles() {
        // Two waits that nothing will ever complete: phase 1 of `full` with no second copy.
        let (mut schedule, places) = ring(1, true);
        schedule.roles[1].events.push(Event::Wait { barrier: 0, phase: 1 });
        let mut places = places;
        let place = places[1][0];
        places[1].push(place);
        let t = run(&schedule, &places);
        assert_eq!(t.stalled, vec!["compute".to_string()]);
        assert_eq!(t.lanes[1].marks.len(), 3, "wait, read, arrive; then the wait that hangs");
    }
}
