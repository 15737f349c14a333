//! The protocol check on real kernels: every layout the passes produce passes it (uniform,
//! load warps, load and softmax warps; a K/V loop inside a range loop), a broken IR
//! schedule is rejected with a named diagnostic, and the seed kernel's bug (a stage no one waits
//! for) is an error at run time through `compile` as it is at compile time through the macro
//! (`tests/ui/stage_never_read.rs`).

use flashcore::ir::kernel::{Block, Op};
use flashcore::ir::protocol::{check, schedule_of, ProtocolErrorKind};
use flashcore::ir::source::StmtKind;
use flashcore::kernels::attention;
use flashcore::Config;

fn layouts() -> Vec<Config> {
    let mut v = vec![];
    for stages in 1..=3 {
        for (load_warps, softmax_warps) in [(0, 0), (1, 0), (4, 0), (1, 4), (1, 1)] {
            for persistent in [false, true] {
                v.push(Config { stages, load_warps, softmax_warps, persistent, ..attention::CONFIG });
            }
        }
    }
    v
}

#[test]
fn every_layout_passes_the_protocol_check() {
    for config in layouts() {
        let kernel = attention::ir(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let schedule = schedule_of(&kernel);
        assert!(!schedule.roles.is_empty());
        check(&schedule).unwrap_or_else(|e| panic!("{config}: {e}"));
    }
}

/// Runs `f` on `block`, then on the blocks of the work, range and pipeline loops and role
/// groups inside it.
fn each_block_mut(block: &mut Block, f: &mut dyn FnMut(&mut Block)) {
    f(block);
    for inst in &mut block.insts {
        match &mut inst.op {
            Op::Tiles { body, .. } | Op::Loop { body, .. } => each_block_mut(body, f),
            Op::Pipeline { prologue, body, epilogue, .. } => {
                each_block_mut(prologue, f);
                each_block_mut(body, f);
                each_block_mut(epilogue, f);
            }
            Op::Roles { groups } => groups.iter_mut().for_each(|g| each_block_mut(&mut g.body, f)),
            _ => {}
        }
    }
}

fn remove_ops(block: &mut Block, pred: &dyn Fn(&Op) -> bool) {
    each_block_mut(block, &mut |b| b.insts.retain(|i| !pred(&i.op)));
}

#[test]
fn consumers_that_never_release_a_slot_deadlock_the_producer() {
    let config = Config { stages: 2, load_warps: 1, ..attention::CONFIG };
    let mut kernel = attention::ir(&config).unwrap();
    remove_ops(&mut kernel.body, &|op| matches!(op, Op::MbarArrive { .. }));
    let err = check(&schedule_of(&kernel)).unwrap_err();
    assert_eq!(err.kind, ProtocolErrorKind::Deadlock, "{err}");
    let text = err.to_string();
    assert!(text.contains("role `load` waits for phase 0 of mbarrier `empty[0]`"), "{text}");
}

#[test]
fn a_uniform_schedule_without_its_barriers_races() {
    let config = Config { stages: 2, ..attention::CONFIG };
    let mut kernel = attention::ir(&config).unwrap();
    remove_ops(&mut kernel.body, &|op| matches!(op, Op::Barrier { .. }));
    let err = check(&schedule_of(&kernel)).unwrap_err();
    assert_eq!(err.kind, ProtocolErrorKind::ReadBeforeFill, "{err}");
    assert!(err.to_string().contains("no barrier made it visible"), "{err}");
}

#[test]
fn a_stage_no_one_reads_is_rejected_at_run_time_too() {
    // The kernel without its P·V product: `vs` is staged every iteration and never read.
    let mut program = attention::program();
    fn drop_pv(stmts: &mut Vec<flashcore::ir::source::Stmt>) {
        stmts.retain(|s| !matches!(&s.kind, StmtKind::Assign { name, value } if name == "acc" && matches!(value.kind, flashcore::ir::source::ExprKind::Mma { .. })));
        for s in stmts {
            if let StmtKind::Tiles { body, .. } | StmtKind::Pipeline { body, .. } = &mut s.kind {
                drop_pv(body);
            }
        }
    }
    drop_pv(&mut program.body);
    for config in [attention::CONFIG, Config { stages: 2, load_warps: 1, ..attention::CONFIG }] {
        let err = flashcore::compile(&program, &config).unwrap_err().to_string();
        assert!(err.contains("stage `vs` is filled every iteration but never read"), "{err}");
        assert!(err.contains("role `load`"), "{err}");
    }
}

#[test]
fn a_cta_barrier_in_role_divergent_code_is_rejected() {
    let config = Config { stages: 2, load_warps: 1, ..attention::CONFIG };
    let mut kernel = attention::ir(&config).unwrap();
    flashcore::ir::verify::verify(&kernel).unwrap();
    for inst in &mut kernel.body.insts {
        if let Op::Roles { groups } = &mut inst.op {
            let barrier = flashcore::ir::kernel::Inst {
                op: Op::Barrier { id: 0 },
                role: None,
                span: flashcore::ir::source::SpanId::NONE,
            };
            groups[1].body.insts.push(barrier);
        }
    }
    let err = flashcore::ir::verify::verify(&kernel).unwrap_err().to_string();
    assert!(err.contains("inside role-divergent code"), "{err}");
}

/// A kernel whose K/V loop runs inside a range loop (the grouped dK/dV kernel: one Q loop per
/// query head of a K/V head) passes the check in every layout it accepts, traced over two
/// iterations of the range loop; the same plants as above are caught there.
#[test]
fn a_kv_loop_inside_a_range_loop_passes_and_its_plants_are_caught() {
    use flashcore::kernels::backward::attention_backward_dkdv_grouped as grouped;
    for stages in 1..=3 {
        for load_warps in [0, 1, 4] {
            for persistent in [false, true] {
                let config = Config { stages, load_warps, persistent, ..grouped::CONFIG };
                let kernel = grouped::ir(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
                check(&schedule_of(&kernel)).unwrap_or_else(|e| panic!("{config}: {e}"));
            }
        }
    }
    let mut kernel = grouped::ir(&Config { stages: 2, load_warps: 1, ..grouped::CONFIG }).unwrap();
    remove_ops(&mut kernel.body, &|op| matches!(op, Op::MbarArrive { .. }));
    let err = check(&schedule_of(&kernel)).unwrap_err();
    assert_eq!(err.kind, ProtocolErrorKind::Deadlock, "{err}");
    let mut kernel = grouped::ir(&Config { stages: 2, ..grouped::CONFIG }).unwrap();
    remove_ops(&mut kernel.body, &|op| matches!(op, Op::Barrier { .. }));
    let err = check(&schedule_of(&kernel)).unwrap_err();
    assert_eq!(err.kind, ProtocolErrorKind::ReadBeforeFill, "{err}");
}

/// Edits every `MbarExpectTx` of `block` (and of the blocks inside it).
fn edit_expect_tx(block: &mut Block, edit: &dyn Fn(&mut u32)) {
    each_block_mut(block, &mut |b| {
        for inst in &mut b.insts {
            if let Op::MbarExpectTx { bytes, .. } = &mut inst.op {
                edit(bytes);
            }
        }
    });
}

/// Bulk tensor copies (the TMA pass), without and with the overlap's split rings, pass; an
/// announced byte count too high is a deadlock (the phase waits for bytes no copy brings), one
/// too low an arrival-count error (the phase would complete before the data has landed).
#[test]
fn bulk_copies_pass_and_a_wrong_transaction_byte_count_is_caught() {
    let base = flashcore::kernels::reference_config("sm90a_d128_m128_w8_n128_load4_tma").unwrap();
    for config in [base, Config { overlap: true, ..base }, Config { stages: 3, persistent: true, ..base }] {
        let kernel = attention::ir(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let mut tx = 0;
        kernel.walk(&mut |i| tx += matches!(i.op, Op::MbarExpectTx { .. }) as u32);
        assert!(tx > 0, "{config}: the TMA pass did not run");
        check(&schedule_of(&kernel)).unwrap_or_else(|e| panic!("{config}: {e}"));
    }
    let kernel = attention::ir(&base).unwrap();
    let mut high = kernel.clone();
    edit_expect_tx(&mut high.body, &|b| *b += 16);
    let err = check(&schedule_of(&high)).unwrap_err();
    assert_eq!(err.kind, ProtocolErrorKind::Deadlock, "{err}");
    assert!(err.to_string().contains("16 transaction bytes it expects not brought by any copy"), "{err}");
    let mut low = kernel;
    edit_expect_tx(&mut low.body, &|b| *b -= 16);
    let err = check(&schedule_of(&low)).unwrap_err();
    assert_eq!(err.kind, ProtocolErrorKind::ArrivalCount, "{err}");
    assert!(err.to_string().contains("bytes more than phase 0 of mbarrier `full[0]` expects"), "{err}");
}
