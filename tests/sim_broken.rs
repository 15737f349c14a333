//! Generated attention kernels with one deliberate protocol bug each (planted by editing the PTX
//! text), which the simulator must catch with the right diagnostic: a missing
//! `cp.async.wait_group`, the Q tile's wait after the K/V loop's prologue one group too weak, a missing barrier before a stage is refilled, mbarrier counts and
//! parities off by one; on sm_90a, an accumulator read before its `wgmma.wait_group`, a missing
//! `fence.proxy.async` and a missing `wgmma.fence`; with a producer warpgroup, a consumer without
//! the fence after its full wait and `setmaxnreg` totals that cannot fit the CTA's register pool
//! (a deadlock); with the overlap pass, a ring slot released before the asynchronous P·V that
//! reads it retires, O rescaled while that P·V is in flight, and a block of zeros narrower than
//! the P·V operand as compute-sanitizer counts it. The unedited kernels pass in `tests/sim.rs`.

use flashcore::kernels::attention;
use flashcore::simulate::{check_attention, AttentionShape, Options, SimDevice};
use flashcore::{Config, Error};

/// Runs `config`'s kernel with its PTX edited by `edit` at 1x1x256 (four KV tiles, so every
/// stage is refilled), under `seeds` schedules; returns each run's error text.
fn run_edited(config: Config, edit: impl Fn(&str) -> String, seeds: &[u64]) -> Vec<String> {
    run_edited_at(config, edit, seeds, 256)
}

/// [`run_edited`] at 1x1xS.
fn run_edited_at(config: Config, edit: impl Fn(&str) -> String, seeds: &[u64], s: usize) -> Vec<String> {
    let mut compiled = flashcore::compile(&attention::program(), &config).unwrap();
    let edited = edit(&compiled.ptx.text);
    assert_ne!(edited, compiled.ptx.text, "the edit changed nothing");
    compiled.ptx.text = edited;
    let shape = AttentionShape { b: 1, h: 1, hk: 1, s, sk: s };
    seeds
        .iter()
        .map(|&seed| {
            let device = SimDevice { sm_count: 2, options: Options { seed, ..Options::default() } };
            match check_attention(&compiled, shape, flashcore::Layout::Bhsd, seed, &device) {
                Err(Error::Sim(e)) => {
                    eprintln!("seed {seed}: {e}");
                    e.to_string()
                }
                Err(e) => panic!("expected a simulator error, got {e}"),
                Ok(_) => panic!("seed {seed}: the broken kernel ran without a diagnostic"),
            }
        })
        .collect()
}

const SEEDS: [u64; 3] = [1, 2, 3];

/// Removes the first line containing `needle`.
fn remove_first(ptx: &str, needle: &str) -> String {
    let mut done = false;
    ptx.lines()
        .filter(|l| {
            let hit = !done && l.contains(needle);
            done |= hit;
            !hit
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The `n`-th (0-based) line containing `needle`, replaced by `with`.
fn replace_nth(ptx: &str, needle: &str, n: usize, with: impl Fn(&str) -> String) -> String {
    let mut seen = 0;
    ptx.lines()
        .map(|l| {
            let out = if l.contains(needle) {
                seen += 1;
                if seen == n + 1 {
                    with(l)
                } else {
                    l.to_string()
                }
            } else {
                l.to_string()
            };
            format!("{out}\n")
        })
        .collect()
}

fn uniform() -> Config {
    Config { stages: 2, ..attention::CONFIG }
}

fn specialized() -> Config {
    Config { stages: 2, load_warps: 1, ..attention::CONFIG }
}

#[test]
fn a_missing_wait_group_is_a_read_of_a_copy_in_flight() {
    // The main loop's `wait_group 1` before Q·Kᵀ: K may still be landing when it is read.
    for err in run_edited(uniform(), |p| remove_first(p, "cp.async.wait_group 1;"), &SEEDS) {
        assert!(
            err.contains("while a cp.async into it")
                || (err.contains("race") && err.contains("cp.async of warp")),
            "{err}"
        );
    }
}

/// The Q tile's wait, which follows the K/V loop's prologue (`wait_group 2` at two stages:
/// K and V of the first tile may stay in flight), weakened by one group: Q's copy may then still
/// be landing when `ldmatrix` reads it. (On sm_90a, where Q stays in shared memory for wgmma,
/// the same edit is no bug: the loop's first `wait_group 1`, for K, covers the older Q too,
/// before the first wgmma reads either.)
fn weaken_the_deferred_q_wait(ptx: &str) -> String {
    let at = ptx.find("the copy issued before the loop lands").expect("Q's wait is deferred");
    let (before, after) = ptx.split_at(at);
    format!("{before}{}", after.replacen("cp.async.wait_group 2;", "cp.async.wait_group 3;", 1))
}

#[test]
fn a_deferred_q_wait_one_group_too_weak_is_a_read_of_a_copy_in_flight() {
    for err in run_edited(uniform(), weaken_the_deferred_q_wait, &SEEDS) {
        assert!(err.contains("while a cp.async into it") || err.contains("race"), "{err}");
    }
}

#[test]
fn a_missing_barrier_before_a_stage_is_refilled_is_a_race() {
    // The `bar.sync 0` after `wait_group 1`: warps read K tiles other warps copied, unordered.
    let edit = |p: &str| replace_nth(p, "bar.sync 0;", 1, |_| "\t\t\t// (barrier removed)".into());
    for err in run_edited(uniform(), edit, &SEEDS) {
        assert!(err.contains("race") || err.contains("while a cp.async into it"), "{err}");
    }
}

#[test]
fn a_producer_that_does_not_wait_for_the_empty_barrier_races_the_consumers() {
    // The load warp's wait on `empty` always succeeds: it refills a stage still being read.
    let edit = |p: &str| {
        let last = p.matches("mbarrier.test_wait.parity").count() - 1;
        replace_nth(p, "mbarrier.test_wait.parity", last, |l| {
            let pred = l.split_whitespace().nth(1).unwrap().trim_end_matches(',');
            format!("\t\t\t\tsetp.eq.u32 {pred}, 0, 0;")
        })
    };
    for err in run_edited(specialized(), edit, &SEEDS) {
        assert!(err.contains("race") || err.contains("while a cp.async into it"), "{err}");
    }
}

#[test]
fn a_producer_parity_off_by_one_deadlocks_and_the_report_says_where() {
    // The load warp starts waiting on `empty` with parity 0 (not the flipped 1): it waits for a
    // release no consumer will give before the first fill.
    let edit = |p: &str| {
        let wait = p.find("// @load wait $empty").expect("the load role's empty wait");
        let (head, tail) = p.split_at(wait);
        format!("{head}{}", remove_first(tail, "xor.b32"))
    };
    for err in run_edited(specialized(), edit, &SEEDS) {
        assert!(err.starts_with("deadlock"), "{err}");
        assert!(err.contains("on the mbarrier at 0x80, waiting for parity 0"), "{err}");
        assert!(err.contains("on the mbarrier at 0x0, waiting for parity 0"), "{err}");
    }
}

#[test]
fn a_consumer_parity_off_by_one_reads_a_stage_before_it_is_filled() {
    // The compute warps' first wait on `full` uses the wrong parity: it passes at once.
    let edit = |p: &str| {
        replace_nth(p, "mbarrier.test_wait.parity", 0, |l| {
            let parity = l.trim().trim_end_matches(';').rsplit(", ").next().unwrap().to_string();
            format!("\t\t\t\txor.b32 {parity}, {parity}, 1;\n{l}")
        })
    };
    for err in run_edited(specialized(), edit, &SEEDS) {
        assert!(
            err.contains("while a cp.async into it")
                || err.contains("race")
                || err.contains("more than one phase behind"),
            "{err}"
        );
    }
}

#[test]
fn an_mbarrier_count_too_high_deadlocks() {
    // `empty` expects 160 arrivals per phase; the four compute warps give 128.
    let edit = |p: &str| replace_nth(p, "mbarrier.init.shared.b64", 2, |l| l.replace(", 128;", ", 160;"));
    for err in run_edited(specialized(), edit, &SEEDS) {
        assert!(err.starts_with("deadlock"), "{err}");
        assert!(err.contains("of 160 arrivals"), "{err}");
    }
}

#[test]
fn an_mbarrier_count_too_low_lets_the_producer_run_ahead() {
    // `empty` completes after 64 of the 128 releases: a phase completes before every consumer
    // has released the stage.
    let edit = |p: &str| replace_nth(p, "mbarrier.init.shared.b64", 2, |l| l.replace(", 128;", ", 64;"));
    for err in run_edited(specialized(), edit, &SEEDS) {
        assert!(
            err.contains("race")
                || err.contains("more than one phase behind")
                || err.contains("while a cp.async"),
            "{err}"
        );
    }
}

/// The sm_90a kernel at D = 128 (two column blocks of the wgmma layout): Q kept in shared
/// memory, wgmma reading Q, K and V through descriptors.
fn hopper() -> Config {
    Config { head_dim: 128, target: flashcore::Target::Sm90a, ..attention::CONFIG }
}

#[test]
fn an_accumulator_read_before_its_wgmma_wait_group_is_caught() {
    // Q·Kᵀ's `wgmma.wait_group 0`: the score scaling then reads accumulators still in flight.
    for err in run_edited(hopper(), |p| remove_first(p, "wgmma.wait_group.sync.aligned 0;"), &SEEDS) {
        assert!(err.contains("while a wgmma that reads or writes it is in flight"), "{err}");
    }
}

#[test]
fn shared_memory_read_by_wgmma_without_the_proxy_fence_is_caught() {
    // The fence after the main loop's `cp.async.wait_group 1`: wgmma (the async proxy) reads
    // K, which cp.async wrote through the generic proxy, with nothing ordering the two.
    let edit =
        |p: &str| replace_nth(p, "fence.proxy.async.shared::cta;", 1, |_| "\t\t\t// (fence removed)".into());
    for err in run_edited(hopper(), edit, &SEEDS) {
        assert!(err.contains("no fence.proxy.async since orders the two"), "{err}");
    }
}

#[test]
fn a_missing_wgmma_fence_is_caught() {
    // P·V's `wgmma.fence`: its accumulators were just written by the softmax rescaling.
    let edit =
        |p: &str| replace_nth(p, "wgmma.fence.sync.aligned;", 1, |_| "\t\t\t// (wgmma.fence removed)".into());
    for err in run_edited(hopper(), edit, &SEEDS) {
        assert!(err.contains("written after the last wgmma.fence"), "{err}");
    }
}

/// sm_90a with a producer warpgroup (the reference config): four load warps fill the mbarrier
/// ring with cp.async and give their registers to the two wgmma warpgroups (`setmaxnreg`).
fn hopper_producer() -> Config {
    flashcore::kernels::reference_config("sm90a_d128_m128_w8_n128_load4").expect("a reference config")
}

/// The producer config with the overlap pass (`Config::overlap`): the softmax of each K/V tile
/// under the asynchronous P·V of the tile before.
fn hopper_overlap() -> Config {
    flashcore::kernels::reference_config("sm90a_d128_m128_w8_n128_load4_overlap").expect("a reference config")
}

#[test]
fn a_consumer_without_the_proxy_fence_after_its_full_wait_is_caught() {
    // The fence after the consumers' wait on the full barrier: the producer's cp.async copies
    // are visible to the waiting thread, but not to its wgmmas (the async proxy).
    let edit = |p: &str| {
        let at = p.find("mbarrier.try_wait").expect("the consumers' full wait comes first");
        let (head, tail) = p.split_at(at);
        format!(
            "{head}{}",
            replace_nth(tail, "fence.proxy.async.shared::cta;", 0, |_| "\t\t\t// (fence removed)".into())
        )
    };
    for err in run_edited(hopper_producer(), edit, &SEEDS) {
        assert!(err.contains("no fence.proxy.async since orders the two"), "{err}");
    }
}

#[test]
fn a_producer_that_keeps_its_registers_starves_the_consumers_and_the_report_says_so() {
    // Without the producer's `setmaxnreg.dec`, the consumers' `setmaxnreg.inc` never finds its
    // registers: every consumer warp waits there and the producer waits for an empty slot.
    let edit = |p: &str| remove_first(p, "setmaxnreg.dec");
    for err in run_edited(hopper_producer(), edit, &SEEDS) {
        assert!(err.contains("deadlock") || err.contains("Deadlock"), "{err}");
        assert!(err.contains("waits in setmaxnreg.inc for 232 registers"), "{err}");
    }
}

#[test]
fn a_producer_that_keeps_more_than_the_cta_pool_leaves_starves_the_consumers() {
    // 168 registers at entry for 12 warps: the CTA's pool holds 3 · 168 = 504 a lane of each
    // sub-partition. The consumers' 2 · 232 leave the producer 40; with 48 the split adds up to
    // the sub-partition's 512 but not to the pool, and `setmaxnreg.inc` waits for ever (the
    // simulator once counted the sub-partition's 512 and let this pass).
    let edit = |p: &str| replace_nth(p, "setmaxnreg.dec", 0, |l| l.replace(" 40;", " 48;"));
    for err in run_edited(hopper_producer(), edit, &SEEDS[..1]) {
        assert!(err.contains("waits in setmaxnreg.inc for 232 registers"), "{err}");
        assert!(err.contains("of the CTA's 504 there"), "{err}");
    }
}

#[test]
fn a_setmaxnreg_count_outside_the_rules_is_caught() {
    let edit = |p: &str| replace_nth(p, "setmaxnreg.dec", 0, |l| l.replace(" 40;", " 44;"));
    for err in run_edited(hopper_producer(), edit, &SEEDS[..1]) {
        assert!(err.contains("a multiple of 8 from 24 to 256"), "{err}");
    }
}

/// The overlap pass's loop: the loop body's first `wgmma.wait_group 0`, which
/// retires the previous tile's P·V before its slot is released and O is rescaled.
fn overlap_wait(p: &str) -> (usize, usize) {
    let body = p.find("// @compute mma_wait 0").expect("the overlapped loop's wait for P.V");
    let line = body + p[body..].find("wgmma.wait_group.sync.aligned 0;").expect("its wait_group");
    (line, line + "wgmma.wait_group.sync.aligned 0;".len())
}

#[test]
fn a_slot_released_before_the_overlapped_p_v_retires_is_caught() {
    // The wait in the release's branch goes: the slot is released while the wgmma may still
    // read it (the wait after the branch comes too late), and the producer may refill V.
    let edit = |p: &str| {
        let (at, end) = overlap_wait(p);
        format!("{}// (wait removed){}", &p[..at], &p[end..])
    };
    // 1x1x512: four K/V tiles of 128 a CTA, so the two slots are refilled.
    for err in run_edited_at(hopper_overlap(), edit, &SEEDS, 512) {
        assert!(err.contains("changed while it was in flight") || err.contains("race"), "{err}");
    }
}

#[test]
fn o_rescaled_while_the_overlapped_p_v_is_in_flight_is_caught() {
    // Both waits for P.V (in the release's branch and after it) retire only Q.K^T's group
    // (wait_group 1): the rescale of O then touches the accumulators P.V is still writing.
    let edit = |p: &str| {
        let (at, end) = overlap_wait(p);
        let once = format!("{}wgmma.wait_group.sync.aligned 1;{}", &p[..at], &p[end..]);
        let (at, end) = overlap_wait(&once);
        format!("{}wgmma.wait_group.sync.aligned 1;{}", &once[..at], &once[end..])
    };
    for err in run_edited(hopper_overlap(), edit, &SEEDS) {
        assert!(err.contains("while a wgmma that reads or writes it is in flight"), "{err}");
    }
}

#[test]
fn a_zero_block_narrower_than_the_p_v_operand_is_caught() {
    // The first P.V of a work item multiplies the block of zeros. Its descriptor reads the
    // block's first 1024 bytes, but compute-sanitizer counts the operand as 16 x D x 2 bytes
    // from its start: moved to the block's last 1024 bytes, the operand's span runs past the
    // end of shared memory (what memcheck reported on the H200 before the block grew to 4 KB).
    let edit = |p: &str| {
        let zero_init = p.find("// the block of zeros").expect("the zero block is initialized");
        let line = p[zero_init..].lines().find(|l| l.contains(", 16, ")).expect("its address");
        let offset: u32 = line.trim().trim_end_matches(';').rsplit(", ").next().unwrap().parse().unwrap();
        p.replace(&format!("%smem, {offset};"), &format!("%smem, {};", offset + 3072))
    };
    for err in run_edited_at(hopper_overlap(), edit, &SEEDS, 512) {
        assert!(err.contains("wgmma operand B spans 4096 bytes"), "{err}");
        assert!(err.contains("past the"), "{err}");
    }
}

/// The producer config with bulk tensor copies (`Config::tma`): one thread announces each
/// slot's bytes (`mbarrier.arrive.expect_tx`) and copies K and V through tensor maps.
fn hopper_tma() -> Config {
    flashcore::kernels::reference_config("sm90a_d128_m128_w8_n128_load4_tma").expect("a reference config")
}

#[test]
fn an_expect_tx_count_too_high_deadlocks_and_the_report_shows_the_missing_bytes() {
    // The slot's K and V tiles bring 65536 bytes; the arrival announces 16 more, which no copy
    // completes: the consumers wait for the phase forever.
    let edit =
        |p: &str| replace_nth(p, "mbarrier.arrive.expect_tx", 0, |l| l.replace(", 65536;", ", 65552;"));
    for err in run_edited(hopper_tma(), edit, &SEEDS) {
        assert!(err.starts_with("deadlock"), "{err}");
        assert!(err.contains("16 transaction bytes outstanding"), "{err}");
    }
}

#[test]
fn an_expect_tx_count_too_low_is_caught_before_the_phase_completes_early() {
    // 16 bytes fewer than the copies bring: the phase completes with data still landing. Either
    // the last piece finds the phase's bytes all in, or (when the consumers' reads come first)
    // a read of shared memory the copy engine writes after the phase they waited for.
    let edit =
        |p: &str| replace_nth(p, "mbarrier.arrive.expect_tx", 0, |l| l.replace(", 65536;", ", 65520;"));
    for err in run_edited(hopper_tma(), edit, &SEEDS) {
        assert!(
            err.contains("its expect_tx count is too small")
                || (err.contains("shared-memory race") && err.contains("a bulk tensor copy of warp 8")),
            "{err}"
        );
    }
}

#[test]
fn a_pingpong_without_the_first_turn_deadlocks() {
    // Warpgroup 1 never hands warpgroup 0 the first turn: each waits for the other.
    let config =
        flashcore::kernels::reference_config("sm90a_d128_m128_w8_n128_load4_overlap_tma_pingpong_persistent")
            .expect("a reference config");
    for err in run_edited(config, |p| remove_first(p, "bar.arrive 8, 256;"), &SEEDS) {
        assert!(err.starts_with("deadlock"), "{err}");
        assert!(err.contains("named barrier 8") || err.contains("bar.sync"), "{err}");
    }
}
