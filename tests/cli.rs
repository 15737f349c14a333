//! The `flashcore` command: help and outputs pinned as golden files (insta snapshots), emitted
//! code equal to the library's, every usage error with its message and exit status, and the
//! real binary's exit codes.

use std::process::Command;

use flashcore::cli::{run, CliError};
use flashcore::kernels::attention;
use flashcore::Config;

/// The seed kernel's warp layout: 4 load + 11 compute + 1 softmax warps, persistent.
const SEED: &str = "tile_m=176,warps=11,load_warps=4,softmax_warps=1,persistent";

fn output(args: &[&str]) -> Result<String, CliError> {
    let mut out = Vec::new();
    run(args, &mut out)?;
    Ok(String::from_utf8(out).expect("the command writes UTF-8"))
}

fn ok(args: &[&str]) -> String {
    output(args).unwrap_or_else(|e| panic!("flashcore {}: {e}", args.join(" ")))
}

#[test]
fn help_is_pinned() {
    insta::assert_snapshot!("help", ok(&["--help"]));
    for command in ["list", "emit", "check", "schedule", "tuned"] {
        let text = ok(&["help", command]);
        assert_eq!(text, ok(&[command, "--help"]), "`help {command}` and `{command} --help` agree");
        insta::assert_snapshot!(format!("help_{command}"), text);
    }
}

#[test]
fn tuned_says_which_config_a_launch_takes_and_why() {
    // The shipped table (a user's tuning cache could add to it; CI machines have none).
    let h200 = ok(&["tuned", "attention", "--gpu", "h200", "--shape", "2x16x8192x128"]);
    assert!(
        h200.contains("source     the tuning table's entry for attention on NVIDIA H200, f16 D=128 large"),
        "{h200}"
    );
    assert!(h200.contains("sm_90a"), "{h200}");
    // An H100 has no entries of its own (its entries of 2026-11-24 predate the sm_90a backend
    // and spilled: tuning/h100-2026-11-24.json): the H200's, the same chip and limits, sm_90a.
    let h100 = ok(&["tuned", "attention", "--gpu", "h100", "--shape", "2x16x8192x128"]);
    assert!(
        h100.contains("on NVIDIA H200, f16 D=128 large")
            && h100.contains("same compute capability and limits")
            && h100.contains("sm_90a"),
        "{h100}"
    );
    // A GH200 has no entries of its own either: those of the GPUs with its limits.
    let gh200 =
        ok(&["tuned", "attention", "--gpu", "gh200", "--shape", "2x16x8192x128", "--config", "causal"]);
    assert!(
        gh200.contains("on NVIDIA H200, f16 D=128 causal large")
            && gh200.contains("same compute capability and limits"),
        "{gh200}"
    );
    // The L4's entries were chosen by the occupancy model (no L4 to time them on), and say so;
    // the occupancy line shows it fits the L4's 99 KiB.
    let l4 = ok(&["tuned", "attention", "--gpu", "l4", "--shape", "2x16x8192x128"]);
    assert!(
        l4.contains("on NVIDIA L4, f16 D=128 large, chosen by the occupancy model (not timed)")
            && l4.contains("occupancy  1 CTA × 8 warps"),
        "{l4}"
    );
    // A GPU of a kind with no entries (an Ada GPU with other limits would take the L4's): an
    // sm_89 shape the table does not cover, D = 256, gets the declared config.
    let d256 = ok(&["tuned", "attention", "--gpu", "l4", "--shape", "2x16x8192x256"]);
    assert!(d256.contains("source     declared") || d256.contains("made to fit"), "{d256}");
    // On a Hopper the same shape gets FlashCore's default for its kind of key (sm_90a, a
    // producer warpgroup), and says so.
    let hopper = ok(&["tuned", "attention", "--gpu", "h200", "--shape", "2x16x8192x256"]);
    assert!(
        hopper.contains("load_warps=4")
            && hopper.contains("sm_90a")
            && hopper.contains("FlashCore's default for compute capability 9.0 at large D=256"),
        "{hopper}"
    );
    for (args, says) in [
        (
            &["tuned", "attention", "--gpu", "a100", "--shape", "1x1x64x64"][..],
            "`a100` is not a GPU this command knows",
        ),
        (&["tuned", "attention", "--gpu", "l4", "--shape", "1x64x64"][..], "is not BxHxSxD"),
        (&["tuned", "attention", "--gpu", "l4"][..], "`tuned` needs --gpu and --shape"),
    ] {
        let err = output(args).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{args:?}");
        assert!(err.to_string().contains(says), "{args:?}: {err}");
    }
}

#[test]
fn list_names_the_registered_kernels_and_configs() {
    insta::assert_snapshot!("list", ok(&["list"]));
}

#[test]
fn emit_prints_what_the_library_compiles() {
    let config = Config { stages: 3, load_warps: 1, ..attention::CONFIG };
    let settings = "stages=3,load_warps=1";
    assert_eq!(ok(&["emit", "attention", "--ptx"]), attention::ptx(&attention::CONFIG).unwrap());
    assert_eq!(ok(&["emit", "attention", "--config", settings, "--ptx"]), attention::ptx(&config).unwrap());
    let ir = |stage: &str| attention::ir_after(&config, stage).unwrap().to_string();
    for stage in ["lower", "pipeline", "split_kv", "persist", "warp_specialize"] {
        assert_eq!(ok(&["emit", "attention", "--config", settings, "--after", stage]), ir(stage), "{stage}");
    }
    assert_eq!(ok(&["emit", "attention", "--config", settings]), ir("warp_specialize"));
    // A reference config by name, then a setting over it; `--config=..` and repeats.
    let named = flashcore::kernels::reference_config("d128_s2").unwrap();
    let persistent = Config { persistent: true, ..named };
    assert_eq!(
        ok(&["emit", "attention", "--config", "d128_s2,persistent", "--ptx"]),
        attention::ptx(&persistent).unwrap()
    );
    assert_eq!(
        ok(&["emit", "attention", "--config=d128_s2", "--config", "persistent", "--ptx"]),
        attention::ptx(&persistent).unwrap()
    );
}

#[test]
fn check_reports_protocol_shared_memory_and_occupancy() {
    insta::assert_snapshot!("check_declared", ok(&["check", "attention", "--no-ptxas"]));
    insta::assert_snapshot!(
        "check_specialized",
        ok(&["check", "attention", "--config", "d64_s2_load1_softmax4", "--no-ptxas"])
    );
    // The seed layout needs 130 KiB of shared memory: over the L4's 99 KiB, so `check` fails.
    let mut out = Vec::new();
    let err = run(&["check", "attention", "--config", SEED, "--no-ptxas"], &mut out).unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("does not fit on the L4"), "{err}");
    insta::assert_snapshot!("check_seed", String::from_utf8(out).unwrap());
}

/// `check` names the tables a kernel's masks read along the keys, which each launch summarises
/// first (`Kernel::table_summaries`), and says nothing of the kind for a kernel without them.
#[test]
fn check_names_the_summarised_tables() {
    let text = ok(&["check", "document_attention", "--no-ptxas"]);
    let line = text.lines().find(|l| l.starts_with("summaries")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("`doc` along S (read at the keys)") && line.contains("a block of 64"), "{line}");
    assert!(!ok(&["check", "document_bounds_attention", "--no-ptxas"]).contains("summaries"));
}

#[test]
fn check_says_whether_the_producer_feeds_q() {
    let fed = "tile_m=128,tile_n=128,head_dim=128,stages=2,warps=8,load_warps=4,persistent,overlap,tma,pingpong,sm_90a";
    let line = |config: &str| {
        let text = ok(&["check", "attention", "--config", config, "--no-ptxas"]);
        text.lines().find(|l| l.starts_with("feed")).map(str::to_string).unwrap_or_else(|| panic!("{text}"))
    };
    assert!(line(fed).starts_with("feed       on: the producer copies each work item's Q"), "{}", line(fed));
    let one_per_cta = fed.replace("persistent,", "");
    assert!(line(&one_per_cta).contains("off: one CTA a work item"), "{}", line(&one_per_cta));
    // The Q slots replace the row-tile region: two 32 KiB slots and the K/V rings.
    let text = ok(&["check", "attention", "--config", fed, "--no-ptxas"]);
    assert!(text.contains("qf                     2 slots × 32768 B"), "{text}");
}

/// `check` says where Q's wait lands: after the K/V loop's prologue in a uniform layout (its
/// first tile's K and V copies still in flight), at the load where other warps copy K/V (the
/// compute warps' prologue copies nothing), and nowhere where the producer feeds Q.
#[test]
fn check_says_where_the_q_load_waits() {
    let line = |config: &str| {
        let text = ok(&["check", "attention", "--config", config, "--no-ptxas"]);
        text.lines()
            .find(|l| l.starts_with("load wait"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{text}"))
    };
    let uniform = line("stages=2");
    assert!(
        uniform.contains("after the K/V loop's prologue: `qf` (2 copy groups still in flight)"),
        "{uniform}"
    );
    assert!(line("stages=2,load_warps=1").contains("at the load"), "{}", line("stages=2,load_warps=1"));
    let fed = "tile_m=128,tile_n=128,head_dim=128,stages=2,warps=8,load_warps=4,persistent,overlap,tma,pingpong,sm_90a";
    assert!(line(fed).ends_with("no register loads"), "{}", line(fed));
}

#[test]
fn check_runs_ptxas_for_both_gpus_when_it_is_there() {
    if flashcore::ptxas::find().is_none() {
        eprintln!("skipped: no ptxas (scripts/test.sh installs it)");
        return;
    }
    let text = ok(&["check", "attention"]);
    for sm in ["sm_89", "sm_90"] {
        let line = text.lines().find(|l| l.starts_with(&format!("ptxas      {sm}: "))).expect(sm);
        let registers: u32 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!((32..=255).contains(&registers), "{line}");
        assert!(
            line.contains(" 0 B spill stores, 0 B spill loads"),
            "the declared config does not spill: {line}"
        );
    }
    let occupancy = text.lines().filter(|l| l.contains(" CTAs × 4 warps") || l.contains(" CTA × 4 warps"));
    assert_eq!(occupancy.count(), 2, "{text}");
}

#[test]
fn the_target_flag_picks_sm_90a_and_says_what_it_cannot_compile() {
    // `--target sm_90a` is the setting `sm_90a`: the same PTX, wgmma inside.
    let ptx = ok(&["emit", "attention", "--ptx", "--target", "sm_90a"]);
    let setting = ok(&["emit", "attention", "--ptx", "--config", "sm_90a"]);
    assert_eq!(ptx, setting);
    assert!(ptx.contains(".target sm_90a") && ptx.contains("wgmma.mma_async"), "{ptx}");
    // check sizes sm_90a PTX for the H100 only.
    let text = ok(&["check", "attention", "--target", "sm_90a", "--no-ptxas"]);
    assert!(text.contains("sm_90a H100") && !text.contains("sm_89 L4"), "{text}");
    // The score-scale fold, and why a variant's softmax keeps its multiply.
    assert!(text.contains("fold       on: `scale` scales the exponentials' argument"), "{text}");
    let softcap = ok(&["check", "softcap_attention", "--target", "sm_90a", "--no-ptxas"]);
    assert!(softcap.contains("fold       off: the scores are not `mma(q, k.t()) * c`"), "{softcap}");
    // What sm_90a cannot express is an error that says why.
    let err = output(&["check", "attention", "--target", "sm_90a", "--config", "load_warps=1", "--no-ptxas"])
        .unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(
        err.to_string().contains("sm_90a cannot compile this kernel: load_warps = 1: on sm_90a the load role is a producer warpgroup"),
        "{err}"
    );
    // A producer warpgroup: its registers go to the compute warpgroups, and check says how many.
    let text = ok(&[
        "check",
        "attention",
        "--target",
        "sm_90a",
        "--config",
        "tile_m=128,warps=8,tile_n=128,head_dim=128,load_warps=4",
        "--no-ptxas",
    ]);
    assert!(
        text.contains("registers  168 a thread at entry; setmaxnreg: 40 in the producer warpgroup, 232 in the 2 compute warpgroups (504 of the CTA pool's 504"),
        "{text}"
    );
    let err = output(&["emit", "attention", "--target", "sm_80"]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("`sm_80` is not a target"), "{err}");
}

#[test]
fn schedule_draws_the_roles_as_text_and_svg() {
    insta::assert_snapshot!("schedule_load1", ok(&["schedule", "attention", "--config", "d64_s2_load1"]));
    insta::assert_snapshot!("schedule_seed", ok(&["schedule", "attention", "--config", SEED]));
    let svg = ok(&["schedule", "attention", "--config", SEED, "--svg", "-"]);
    assert_well_formed(&svg);
    for lane in ["compute (11 warps)", "load (4 warps)", "softmax (1 warp)"] {
        assert!(svg.contains(&format!(">{lane}</text>")), "lane {lane}");
    }
    for part in ["w0 kt=0", "w1 finish"] {
        assert!(svg.contains(part), "{part}");
    }
    // Arrows join arrivals to the waits they release: the load warps' async arrival on full[0]
    // releases the compute warps.
    assert!(svg.contains("<title>full[0] #0 releases compute</title>"));
    // --svg FILE writes the same picture, and prints the text with where it went.
    let path = std::env::temp_dir().join(format!("flashcore-cli-{}.svg", std::process::id()));
    let text = ok(&["schedule", "attention", "--config", SEED, "--svg", path.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), svg);
    std::fs::remove_file(&path).unwrap();
    assert!(text.starts_with(&ok(&["schedule", "attention", "--config", SEED])));
    assert!(text.ends_with(&format!("wrote {}\n", path.display())));
}

/// Every element is closed, in order (the SVG parses as XML).
fn assert_well_formed(svg: &str) {
    let mut open: Vec<&str> = vec![];
    let mut rest = svg;
    while let Some(at) = rest.find('<') {
        let end = rest[at..].find('>').expect("a tag ends") + at;
        let tag = &rest[at + 1..end];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop(), Some(name), "closing </{name}>");
        } else if !tag.ends_with('/') {
            open.push(tag.split_whitespace().next().unwrap());
        }
        rest = &rest[end + 1..];
    }
    assert!(open.is_empty(), "unclosed: {open:?}");
}

#[test]
fn mistakes_are_usage_errors_that_say_what_to_do() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "no command given"),
        (&["frob"], "unknown command `frob`"),
        (&["help", "frob"], "unknown command `frob`"),
        (&["emit"], "`emit` needs a kernel: kernels are flashcore::kernels::variants::alibi_attention, flashcore::kernels::attention,"),
        (&["emit", "nope"], "no kernel `nope` in this program"),
        (&["emit", "attention", "extra"], "one kernel at a time"),
        (&["emit", "attention", "--after"], "`--after` needs a value"),
        (&["emit", "attention", "--after", "fuse"], "no pass is named `fuse`: passes are lower, pipeline"),
        (&["emit", "attention", "--ptx", "--after", "lower"], "leave out `--after`"),
        (&["emit", "attention", "--ptx=yes"], "`--ptx` takes no value"),
        (&["emit", "attention", "--fast"], "unknown option `--fast` for `emit`"),
        (&["check", "attention", "--svg", "x.svg"], "`--svg` is an option of `schedule`, not of `check`"),
        (&["emit", "attention", "--config", "tiles=3"], "unknown setting `tiles`"),
        (&["emit", "attention", "--config", "stages=two"], "`two` is not a whole number"),
        (&["emit", "attention", "--config", "tile_m=40"], "tile_m = 40: must be a positive multiple of 64"),
        (&["emit", "attention", "--config", "head_dim=80"], "head_dim = 80"),
        (&["list", "attention"], "`list` takes no arguments"),
    ];
    for (args, message) in cases {
        let err = output(args).expect_err(&format!("flashcore {}", args.join(" ")));
        assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        assert!(err.to_string().contains(message), "{args:?}: `{message}` not in: {err}");
    }
    let err = output(&["schedule", "attention", "--svg", "/nonexistent-dir/x.svg"]).unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("cannot write the SVG to `/nonexistent-dir/x.svg`"), "{err}");
}

#[test]
fn the_binary_exits_with_the_status_it_documents() {
    let flashcore =
        |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_flashcore")).args(args).output().unwrap();
    let done = flashcore(&["--version"]);
    assert_eq!(done.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&done.stdout), format!("flashcore {}\n", env!("CARGO_PKG_VERSION")));
    let usage = flashcore(&["emit", "nope"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).starts_with("error: no kernel `nope`"));
    assert!(usage.stdout.is_empty());
    let failed = flashcore(&["check", "attention", "--config", SEED, "--no-ptxas"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("a CTA does not fit on the L4 (sm_89)"));
    assert!(String::from_utf8_lossy(&failed.stdout).contains("OVER: at most 101376 B a CTA"));
}
