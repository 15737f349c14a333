//! The protocol checker on hand-built schedules: a correct producer/consumer ring passes, and
//! each class of broken schedule fails with a diagnostic naming the roles, barrier and stage.

use flashcore_ir::protocol::{check, BarrierDecl, Event, ProtocolErrorKind, RoleTrace, Schedule, Slot};

const STAGES: u32 = 2;
const ITERATIONS: u32 = 5;

fn slot(i: u32) -> Slot {
    Slot { ring: 0, index: i % STAGES }
}

/// Barriers 0..STAGES are `full[s]`, STAGES..2·STAGES are `empty[s]`.
fn barriers(full_count: u32, empty_count: u32) -> Vec<BarrierDecl> {
    let mut b: Vec<BarrierDecl> =
        (0..STAGES).map(|s| BarrierDecl { name: format!("full[{s}]"), count: full_count }).collect();
    b.extend((0..STAGES).map(|s| BarrierDecl { name: format!("empty[{s}]"), count: empty_count }));
    b
}

fn producer(skip_empty_wait: bool) -> RoleTrace {
    let mut events = vec![];
    for i in 0..ITERATIONS {
        if !skip_empty_wait {
            events.push(Event::Wait { barrier: STAGES + i % STAGES, phase: (i / STAGES) as i64 - 1 });
        }
        events.push(Event::Copy { slot: slot(i), tag: i as u64 });
        events.push(Event::AsyncArrive { barrier: i % STAGES });
    }
    RoleTrace { name: "load".into(), threads: 32, events }
}

fn consumer(wait_full: bool, phase_offset: i64) -> RoleTrace {
    let mut events = vec![];
    for i in 0..ITERATIONS {
        if wait_full {
            events.push(Event::Wait { barrier: i % STAGES, phase: (i / STAGES) as i64 + phase_offset });
        }
        events.push(Event::Read { slot: slot(i), tag: i as u64 });
        events.push(Event::Arrive { barrier: STAGES + i % STAGES });
    }
    RoleTrace { name: "compute".into(), threads: 128, events }
}

fn schedule(roles: Vec<RoleTrace>, full_count: u32, empty_count: u32) -> Schedule {
    Schedule { roles, barriers: barriers(full_count, empty_count), rings: vec!["ks".into()] }
}

fn expect(s: &Schedule, kind: ProtocolErrorKind, needles: &[&str]) {
    let e = check(s).expect_err("the broken schedule must be rejected");
    assert_eq!(e.kind, kind, "{e}");
    let text = e.to_string();
    for n in needles {
        assert!(text.contains(n), "`{n}` missing from: {text}");
    }
}

#[test]
fn a_correct_ring_passes() {
    check(&schedule(vec![producer(false), consumer(true, 0)], 32, 128)).unwrap();
}

#[test]
fn seed_failure_a_stage_no_consumer_waits_for_hangs() {
    // The producer fills a second ring (`vs`) and waits for its slots to be released, but no
    // consumer ever waits on it or releases it: the producer blocks on the second round.
    let mut p = producer(false);
    let mut extra = vec![];
    for i in 0..ITERATIONS {
        extra.push(Event::Wait { barrier: 2 * STAGES + i % STAGES, phase: (i / STAGES) as i64 - 1 });
        extra.push(Event::Copy { slot: Slot { ring: 1, index: i % STAGES }, tag: i as u64 });
        extra.push(Event::AsyncArrive { barrier: 3 * STAGES + i % STAGES });
    }
    p.events.extend(extra);
    let mut s = schedule(vec![p, consumer(true, 0)], 32, 128);
    s.rings.push("vs".into());
    s.barriers.extend((0..STAGES).map(|i| BarrierDecl { name: format!("empty_vs[{i}]"), count: 128 }));
    s.barriers.extend((0..STAGES).map(|i| BarrierDecl { name: format!("full_vs[{i}]"), count: 32 }));
    expect(
        &s,
        ProtocolErrorKind::Deadlock,
        &["role `load` waits for phase 0 of mbarrier `empty_vs[0]`", "no role will arrive"],
    );
}

#[test]
fn reading_without_waiting_is_a_read_before_fill() {
    expect(
        &schedule(vec![producer(false), consumer(false, 0)], 32, 128),
        ProtocolErrorKind::ReadBeforeFill,
        &["role `compute` reads stage ks[0] expecting iteration 0"],
    );
}

#[test]
fn copying_without_waiting_for_release_overwrites_a_slot_being_read() {
    expect(
        &schedule(vec![producer(true), consumer(true, 0)], 32, 128),
        ProtocolErrorKind::OverwriteWhileRead,
        &["role `load` copies iteration", "into stage ks["],
    );
}

#[test]
fn a_wait_one_phase_ahead_would_pass_at_once() {
    expect(
        &schedule(vec![producer(false), consumer(true, 1)], 32, 128),
        ProtocolErrorKind::PhaseSkew,
        &["role `compute` waits for phase 1 of mbarrier `full[0]`", "would pass at once"],
    );
}

#[test]
fn arrival_counts_that_do_not_match_the_barrier_are_rejected() {
    // full[] expects 16 arrivals but the 32 producer threads all arrive.
    expect(
        &schedule(vec![producer(false), consumer(true, 0)], 16, 128),
        ProtocolErrorKind::ArrivalCount,
        &["role `load` (32 threads) arrives on mbarrier `full[0]`", "16 expected arrivals"],
    );
}

#[test]
fn incomplete_phases_at_the_end_are_rejected() {
    // empty[] expects 256 arrivals per phase but only 128 consumer threads arrive: the
    // producer never waits for round 2 here (one round only), so nothing hangs, but the phase
    // is left incomplete.
    let p = RoleTrace {
        name: "load".into(),
        threads: 32,
        events: vec![Event::Copy { slot: slot(0), tag: 0 }, Event::AsyncArrive { barrier: 0 }],
    };
    let c = RoleTrace {
        name: "compute".into(),
        threads: 128,
        events: vec![
            Event::Wait { barrier: 0, phase: 0 },
            Event::Read { slot: slot(0), tag: 0 },
            Event::Arrive { barrier: STAGES },
        ],
    };
    expect(
        &schedule(vec![p, c], 32, 256),
        ProtocolErrorKind::ArrivalCount,
        &["empty[0]", "128 of its 256 arrivals"],
    );
}

#[test]
fn a_waiter_more_than_one_phase_behind_is_rejected() {
    let p = RoleTrace {
        name: "load".into(),
        threads: 32,
        events: (0..3).map(|_| Event::Arrive { barrier: 0 }).collect(),
    };
    let c = RoleTrace {
        name: "compute".into(),
        threads: 128,
        events: vec![Event::Wait { barrier: 0, phase: 0 }],
    };
    // Only after all three arrivals does the consumer get to run in some interleaving.
    expect(&schedule(vec![p, c], 32, 128), ProtocolErrorKind::PhaseSkew, &["more than one phase behind"]);
}

#[test]
fn uniform_schedule_needs_a_barrier_between_landing_and_reading() {
    let role = |barrier: bool| {
        let mut events = vec![Event::Copy { slot: slot(0), tag: 0 }, Event::Commit, Event::WaitGroup(0)];
        if barrier {
            events.push(Event::CtaBarrier);
        }
        events.push(Event::Read { slot: slot(0), tag: 0 });
        events.push(Event::CtaBarrier);
        events.push(Event::Copy { slot: slot(0), tag: 1 });
        RoleTrace { name: "all".into(), threads: 128, events }
    };
    check(&schedule(vec![role(true)], 32, 128)).unwrap();
    expect(
        &schedule(vec![role(false)], 32, 128),
        ProtocolErrorKind::ReadBeforeFill,
        &["no barrier made it visible"],
    );
}

#[test]
fn uniform_schedule_needs_a_barrier_between_reading_and_refilling() {
    let events = vec![
        Event::Copy { slot: slot(0), tag: 0 },
        Event::Commit,
        Event::WaitGroup(0),
        Event::CtaBarrier,
        Event::Read { slot: slot(0), tag: 0 },
        Event::Copy { slot: slot(0), tag: 1 },
    ];
    expect(
        &schedule(vec![RoleTrace { name: "all".into(), threads: 128, events }], 32, 128),
        ProtocolErrorKind::OverwriteWhileRead,
        &["other threads of the same role may still be reading it"],
    );
}
