//! The text IR reads back: every registered kernel, lowered for several configs and after each
//! pass, prints, parses (`flashcore::ir::parse_kernel`) and prints the same text, and the passes
//! give the same result on the parsed kernel as on the original. Plus file tests
//! (`tests/filetests/*.ir`): a kernel written as text, a pass, and the pinned text after it.

use flashcore::ir::{parse_kernel, passes};
use flashcore::{Config, DType};

fn configs(declared: Config) -> Vec<Config> {
    vec![
        declared,
        Config { causal: true, dtype: DType::Bf16, ..declared },
        Config { stages: 3, load_warps: 1, persistent: true, ..declared },
        Config { tile_m: 32, tile_n: 128, kv_splits: 2, varlen: true, ..declared },
    ]
}

/// `entry` lowered for `config`, or `None` where lowering or a pass refuses a config other
/// than the kernel's declared one (the backward kernels have no `causal` flag on transposed
/// scores, and no online softmax to split over `kv_splits` or give to softmax warps).
fn lower_if_accepted(
    entry: &flashcore::registry::KernelEntry,
    config: &Config,
) -> Option<flashcore::ir::Kernel> {
    let lowered = flashcore::ir::lower(&(entry.program)(), config);
    match lowered.and_then(|k| passes::run_all(k.clone()).map(|_| k)) {
        Ok(k) => Some(k),
        Err(e) if *config != entry.config => {
            println!("{} {config}: refused: {e}", entry.name);
            None
        }
        Err(e) => panic!("{} {config}: {e}", entry.name),
    }
}

#[test]
fn every_kernel_round_trips_through_the_text_ir() {
    let mut checked = 0;
    for entry in flashcore::registry::kernels() {
        for config in configs(entry.config) {
            let Some(lowered) = lower_if_accepted(entry, &config) else { continue };
            let text = lowered.to_string();
            let parsed =
                parse_kernel(&text).unwrap_or_else(|e| panic!("{} {config}: {e}\n{text}", entry.name));
            assert_eq!(parsed.to_string(), text, "{} {config}", entry.name);
            let (a, b) = (passes::run_all(lowered).unwrap(), passes::run_all(parsed).unwrap());
            assert_eq!(
                a.to_string(),
                b.to_string(),
                "{} {config}: the passes differ on the parsed IR",
                entry.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 4 * 8, "{checked} kernel configs checked");
}

#[test]
fn malformed_text_is_an_error_with_its_line() {
    let text = flashcore::kernels::attention::ir_after(&flashcore::kernels::attention::CONFIG, "lower")
        .unwrap()
        .to_string();
    let broken = text.replacen("row_max", "row_median", 1);
    let err = parse_kernel(&broken).unwrap_err();
    let line = broken.lines().position(|l| l.contains("row_median")).unwrap() + 1;
    assert_eq!(err.line, line, "{err}");
    assert!(err.to_string().contains("row_median"), "{err}");
    let undefined = text.replacen("= mma %qf.3", "= mma %qf.999", 1);
    assert!(parse_kernel(&undefined).unwrap_err().to_string().contains("used before it is defined"));
    // After the passes: a ring, buffer or channel that the header does not declare.
    let config = Config { load_warps: 1, softmax_warps: 4, ..flashcore::kernels::attention::CONFIG };
    let specialized =
        flashcore::kernels::attention::ir_after(&config, "warp_specialize").unwrap().to_string();
    for (from, to, why) in [
        ("wait $full[", "wait $fulll[", "no mbarrier ring `$fulll`"),
        ("cp.async @ks[", "cp.async @kss[", "no buffer `@kss`"),
        ("receive #s ", "receive #ss ", "no channel `#ss`"),
    ] {
        assert!(specialized.contains(from), "{from}\n{specialized}");
        let err = parse_kernel(&specialized.replacen(from, to, 1)).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
}

/// `tests/filetests/*.ir`: `; run until: PASS` and a lowered kernel as text, or `; run: PASS` and
/// a kernel's text at any point (after earlier passes too); then `; expect:` and the kernel's
/// text after the passes up to PASS, or after PASS alone. `FLASHCORE_BLESS=1` rewrites the
/// expectation.
#[test]
fn filetests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "ir"));
    files.sort();
    assert!(!files.is_empty(), "no file tests in {}", dir.display());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let (input, expected) = text.split_once("; expect:\n").unwrap_or((&text, ""));
        let kernel = parse_kernel(input).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let until = input.lines().find_map(|l| l.strip_prefix("; run until: "));
        let one = input.lines().find_map(|l| l.strip_prefix("; run: "));
        let (pass, after) = match (until, one) {
            (Some(pass), None) => (pass, passes::run_until(kernel, Some(pass.trim())).unwrap()),
            (None, Some(pass)) => {
                let (_, run) = passes::PASSES
                    .iter()
                    .find(|(n, _)| *n == pass.trim())
                    .unwrap_or_else(|| panic!("{}: no pass `{pass}`", path.display()));
                (pass, run(kernel).unwrap())
            }
            _ => panic!("{}: needs one `; run until: PASS` or `; run: PASS` line", path.display()),
        };
        let after = after.to_string();
        if std::env::var_os("FLASHCORE_BLESS").is_some() {
            std::fs::write(&path, format!("{input}; expect:\n{after}")).unwrap();
            continue;
        }
        assert_eq!(
            after,
            expected,
            "{}: the IR after `{pass}` differs (FLASHCORE_BLESS=1 rewrites it)",
            path.display()
        );
    }
}

/// Configs whose passes add every kind of post-pass IR: stage buffers and copies, load warps
/// (mbarrier rings, role groups), softmax warps (channels), split-KV merges, persistent CTAs.
fn pass_configs(declared: Config) -> Vec<Config> {
    vec![
        declared,
        Config { stages: 3, load_warps: 1, persistent: true, causal: true, ..declared },
        Config { stages: 2, load_warps: 1, softmax_warps: 4, ..declared },
        Config { tile_m: 32, tile_n: 128, warps: 4, kv_splits: 2, varlen: true, ..declared },
        // A producer warpgroup on sm_90a (and the overlap pass where it applies): the producer's
        // copy of index arithmetic (the grouped backward's head loop) defines values of its own,
        // since a value defined in two role groups cannot be read back.
        Config {
            tile_m: 128,
            warps: 8,
            load_warps: 4,
            overlap: true,
            target: flashcore::Target::Sm90a,
            ..declared
        },
    ]
}

/// The text IR reads back after every pass too: each registered kernel's IR after each pass
/// prints, parses and prints the same text, and the passes that follow give the same result on
/// the parsed kernel as on the original.
#[test]
fn every_kernel_round_trips_after_every_pass() {
    let mut checked = 0;
    for entry in flashcore::registry::kernels() {
        for config in pass_configs(entry.config) {
            let Some(mut kernel) = lower_if_accepted(entry, &config) else { continue };
            for (i, (name, pass)) in passes::PASSES.iter().enumerate() {
                kernel = pass(kernel).unwrap();
                let text = kernel.to_string();
                let parsed = parse_kernel(&text)
                    .unwrap_or_else(|e| panic!("{} {config} after {name}: {e}\n{text}", entry.name));
                assert_eq!(parsed.to_string(), text, "{} {config} after {name}", entry.name);
                let rest = |mut k: flashcore::ir::Kernel| {
                    for (_, later) in &passes::PASSES[i + 1..] {
                        k = later(k).unwrap();
                    }
                    k.to_string()
                };
                assert_eq!(
                    rest(parsed),
                    rest(kernel.clone()),
                    "{} {config}: the passes after {name} differ on the parsed IR",
                    entry.name
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 9 * 5 * 4, "{checked} kernel configs and passes checked");
}
