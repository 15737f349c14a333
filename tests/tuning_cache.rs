//! The user's tuning cache under concurrent writers and bad files: two processes inserting at
//! once leave a valid file with every entry of both; a corrupt or foreign file is reported,
//! ignored, and replaced by the next write; files are named by FlashCore's version.

use std::path::{Path, PathBuf};
use std::process::Command;

use flashcore::tuning::{Entry, GpuProps, Key, Measured, Schedule, SizeClass};
use flashcore::tuning_cache::TuningCache;
use flashcore::{Config, DType};

/// Set in a child process: the cache directory and the child's number.
const CHILD_DIR: &str = "FLASHCORE_TEST_CACHE_CHILD_DIR";
const CHILD_ID: &str = "FLASHCORE_TEST_CACHE_CHILD_ID";
/// Entries each child writes, one insert (lock, read, merge, write, rename) each.
const PER_CHILD: usize = 25;

fn entry(gpu: &str, head_dim: u32) -> Entry {
    Entry {
        key: Key::new("attention", gpu, DType::F16, head_dim, false, SizeClass::Large),
        device: Some(GpuProps::HOPPER_SXM),
        schedule: Schedule::of(&Config::default()),
        measured: Measured {
            shape: [2, 16, 8192, 8192],
            median_us: 1000.0,
            tflops: 300.0,
            rel_err: 2.8e-4,
            candidates: 10,
            declared_us: 1200.0,
        },
    }
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flashcore-cache-test-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

/// Not a test on its own: the body of a child process of
/// `two_processes_inserting_at_once_keep_every_entry_and_a_valid_file`.
#[test]
fn cache_writer_child() {
    let (Some(dir), Some(id)) = (std::env::var_os(CHILD_DIR), std::env::var_os(CHILD_ID)) else { return };
    let cache = TuningCache::in_dir(Path::new(&dir));
    let id = id.to_string_lossy().to_string();
    for i in 0..PER_CHILD {
        let report = cache.insert(entry(&format!("GPU {id}.{i}"), 64)).unwrap();
        assert!(report.is_none(), "child {id}: {report:?}");
    }
}

#[test]
fn two_processes_inserting_at_once_keep_every_entry_and_a_valid_file() {
    let dir = fresh_dir("concurrent");
    let me = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|id| {
            Command::new(&me)
                .args(["--exact", "cache_writer_child", "--nocapture", "--test-threads", "1"])
                .env(CHILD_DIR, &dir)
                .env(CHILD_ID, id.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a writer failed: {out:?}");
    }
    let cache = TuningCache::in_dir(&dir);
    let (table, report) = cache.load();
    assert!(report.is_none(), "{report:?}");
    assert_eq!(table.entries.len(), 2 * PER_CHILD, "every insert of both processes is in the file");
    for id in 0..2 {
        for i in 0..PER_CHILD {
            assert!(table.entries.iter().any(|e| e.key.gpu == format!("GPU {id}.{i}")), "GPU {id}.{i}");
        }
    }
    // No lock or temporary file is left behind.
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(left, [format!("tuning-{}.json", env!("CARGO_PKG_VERSION"))]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_corrupt_or_foreign_file_is_reported_ignored_and_replaced() {
    let dir = fresh_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    let cache = TuningCache::in_dir(&dir);
    for (text, says) in [
        ("{\"format\": \"flashcore-tuning\", \"version\": 1, \"entries\": [", "EOF"),
        (
            "{\"format\": \"someone-else\", \"version\": 7, \"entries\": []}",
            "format `someone-else` version 7",
        ),
        ("\u{0}\u{1}binary", "expected value"),
    ] {
        std::fs::write(cache.path(), text).unwrap();
        let (table, report) = cache.load();
        let report = report.expect("a bad file is reported");
        assert!(table.entries.is_empty());
        assert!(report.contains(&cache.path().display().to_string()) && report.contains(says), "{report}");
        assert!(report.ends_with("ignored"), "{report}");
        // The next write replaces it with a valid file holding the new entry.
        let replaced = cache.insert(entry("GPU A", 128)).unwrap();
        assert!(replaced.is_some_and(|r| r.contains(says)));
        let (table, report) = cache.load();
        assert!(report.is_none() && table.entries.len() == 1, "{report:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn entries_replace_their_key_and_files_are_named_by_version() {
    let dir = fresh_dir("replace");
    let cache = TuningCache::in_dir(&dir);
    assert!(cache.path().ends_with(format!("tuning-{}.json", env!("CARGO_PKG_VERSION"))));
    cache.insert(entry("GPU A", 64)).unwrap();
    cache.insert(entry("GPU A", 128)).unwrap();
    let mut faster = entry("GPU A", 64);
    faster.measured.median_us = 900.0;
    cache.insert(faster).unwrap();
    let (table, _) = cache.load();
    assert_eq!(table.entries.len(), 2);
    let d64 = table.entries.iter().find(|e| e.key.head_dim == 64).unwrap();
    assert_eq!(d64.measured.median_us, 900.0);
    // An unwritable place is an error that names it, not a panic.
    let blocked = dir.join("a file, not a directory");
    std::fs::write(&blocked, "x").unwrap();
    let err = TuningCache::in_dir(&blocked).insert(entry("GPU B", 64)).unwrap_err().to_string();
    assert!(err.contains("a file, not a directory"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Set in a child process: check `Table::active` against the cache in `FLASHCORE_CACHE_DIR`.
const ACTIVE_CHILD: &str = "FLASHCORE_TEST_CACHE_ACTIVE";

/// Not a test on its own: the body of a child process of
/// `launches_see_the_cache_over_the_shipped_table_and_survive_a_bad_one`.
#[test]
fn cache_active_child() {
    let Some(mode) = std::env::var_os(ACTIVE_CHILD) else { return };
    let table = flashcore::tuning::Table::active().unwrap();
    let builtin = flashcore::tuning::Table::builtin();
    let cached = table.entries.iter().any(|e| e.key.gpu == "GPU Z");
    assert_eq!(cached, mode == "cached", "{mode:?}");
    // The shipped entries are all still there (none has GPU Z's key).
    assert_eq!(table.entries.len(), builtin.entries.len() + usize::from(cached));
}

#[test]
fn launches_see_the_cache_over_the_shipped_table_and_survive_a_bad_one() {
    let dir = fresh_dir("active");
    let cache = TuningCache::in_dir(&dir);
    cache.insert(entry("GPU Z", 64)).unwrap();
    let me = std::env::current_exe().unwrap();
    let run = |mode: &str| {
        let out = Command::new(&me)
            .args(["--exact", "cache_active_child", "--nocapture", "--test-threads", "1"])
            .env(ACTIVE_CHILD, mode)
            .env("FLASHCORE_CACHE_DIR", &dir)
            .env_remove("FLASHCORE_TUNING")
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode}: {out:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    run("cached");
    std::fs::write(cache.path(), "not json").unwrap();
    let stderr = run("ignored");
    assert!(stderr.contains("flashcore: the tuning cache") && stderr.contains("ignored"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// First-use tuning on the GPU (skipped without one): a key with no entry for this GPU is tuned
/// within its budget, the winner lands in the cache, and a second lookup with the cache merged
/// in (what the next process does) takes it without tuning again.
#[test]
fn first_use_tunes_a_key_once_within_its_budget_then_reads_the_cache() {
    use flashcore::autotune::FirstUse;
    use flashcore::tuning::{Match, Source, Table};
    use std::time::{Duration, Instant};
    let device = match flashcore::runtime::Device::new(0) {
        Ok(d) => d,
        Err(e) => return eprintln!("skipping the GPU check: {e}"),
    };
    let dir = fresh_dir("first-use");
    let budget = Duration::from_secs(20);
    let tuner = FirstUse { budget, cache: Some(TuningCache::in_dir(&dir)), progress: true };
    let base = flashcore::kernels::attention::CONFIG.with_head_dim(64);
    let shape = [1, 8, 512, 512];
    let started = Instant::now();
    let (config, source) =
        tuner.config(&device, &mut Table::empty(), "attention", base, shape, None).unwrap();
    let first = started.elapsed();
    // The budget bounds when the last candidate may start; one candidate at this shape takes
    // well under a second.
    assert!(first < budget + Duration::from_secs(10), "tuning took {first:?} of a {budget:?} budget");
    let Source::Tuned(key, Match::ThisGpu) = &source else { panic!("first use gave {source}") };
    let (cached, report) = TuningCache::in_dir(&dir).load();
    assert!(report.is_none(), "{report:?}");
    let entry = cached.entries.iter().find(|e| &e.key == key).expect("the winner is in the cache");
    assert_eq!(entry.config(base), config);
    assert!(entry.measured.rel_err < flashcore::tolerance(DType::F16) && entry.measured.median_us > 0.0);
    let mut next_process = Table::empty();
    next_process.merge(cached);
    let started = Instant::now();
    let again = tuner.config(&device, &mut next_process, "attention", base, shape, None).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "the cached key was tuned again");
    assert_eq!(again, (config, source));
    eprintln!("first use: tuned in {first:?}, then read from the cache in {:?}", started.elapsed());
    std::fs::remove_dir_all(&dir).ok();
}

/// The typed `launch_tuned` on the GPU (skipped without one): the table's config for this GPU
/// and the arguments' shape, checked against float64 on a poisoned output.
#[test]
fn launch_tuned_takes_the_tables_config_and_computes_attention() {
    use flashcore::kernels::attention;
    use flashcore::reference::{attention_rows, compare, Problem, Rng};
    let device = match flashcore::runtime::Device::new(0) {
        Ok(d) => d,
        Err(e) => return eprintln!("skipping the GPU check: {e}"),
    };
    type F = flashcore::f16;
    let (b, h, s, d) = (1, 8, 600, 64);
    let mut rng = Rng::new(std::process::id() as u64);
    let mut gen =
        |n: usize| (0..n).map(|_| flashcore::round_to(DType::F16, rng.normal())).collect::<Vec<f64>>();
    let (q, k, v) = (gen(b * h * s * d), gen(b * h * s * d), gen(b * h * s * d));
    let up = |x: &[f64]| {
        device.upload(&x.iter().map(|x| F::from_f64(*x)).collect::<Vec<F>>(), &[b, h, s, d]).unwrap()
    };
    let (qd, kd, vd) = (up(&q), up(&k), up(&v));
    let mut o = device.filled(&[b, h, s, d], F::NAN).unwrap();
    let base = attention::CONFIG.with_head_dim(d as u32);
    let scale = base.default_scale();
    let (config, source) =
        attention::launch_tuned(&device, &base, &qd, &kd, &vd, &mut o, None, scale, None, None).unwrap();
    eprintln!("launch_tuned: {config} ({source})");
    let got: Vec<f64> = device.download(&o).unwrap().iter().map(|x| x.to_f64()).collect();
    let rows: Vec<usize> = (0..b * h * s).collect();
    let p = Problem { q: &q, k: &k, v: &v, b, h, hk: h, s, sk: s, d, scale: scale as f64, causal: false };
    let err = compare(&got, &attention_rows(&p, &rows));
    assert!(err.rel_l2 < 2e-3 && err.non_finite == 0, "{err:?}");
    // A target the base config names is kept, whatever target the table's entries were timed on.
    let sm89 = Config { target: flashcore::Target::Sm89, ..base };
    let (config, source) =
        attention::launch_tuned(&device, &sm89, &qd, &kd, &vd, &mut o, None, scale, None, None).unwrap();
    eprintln!("launch_tuned, sm_89 asked for: {config} ({source})");
    assert_eq!(config.target, flashcore::Target::Sm89);
}
