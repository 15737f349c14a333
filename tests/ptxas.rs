//! Every snapshot configuration assembles with ptxas for its target's GPUs (sm_89 PTX for the L4
//! and the H100, sm_90a PTX for the H100) with no spills, no ignored `setmaxnreg` (C7508) and no
//! serialized wgmma (C7519),
//! within the register and shared-memory budget. With `CI` set, a missing ptxas fails.

use flashcore::kernels::attention;

const REGISTER_LIMIT: u32 = 255;

fn ptxas_or_skip() -> Option<std::path::PathBuf> {
    match flashcore::ptxas::find() {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => {
            panic!("ptxas is required in CI: run scripts/test.sh (it installs ptxas from PyPI)")
        }
        None => {
            eprintln!("skipping: ptxas not found (scripts/test.sh installs it)");
            None
        }
    }
}

#[test]
fn snapshot_configs_assemble_without_spills_within_budget() {
    let Some(ptxas) = ptxas_or_skip() else { return };
    for (name, config) in flashcore::kernels::reference_configs() {
        let compiled = attention::compile(&config).unwrap();
        // sm_89 PTX must fit the L4 (and runs on the H100 too); sm_90a PTX the H100.
        for arch in flashcore::occupancy::archs_for(config.target) {
            assert!(
                compiled.ptx.shared_bytes <= arch.shared_bytes_per_cta,
                "{name}: {} bytes of shared memory exceed {}'s {}",
                compiled.ptx.shared_bytes,
                arch.gpu,
                arch.shared_bytes_per_cta
            );
        }
        for arch in flashcore::occupancy::archs_for(config.target).iter().map(|a| a.sm) {
            let report = flashcore::ptxas::assemble(&ptxas, &compiled.ptx.text, arch)
                .unwrap_or_else(|e| panic!("{name} {arch}: {e}"));
            assert!(!report.text.contains("C7508"), "{name} {arch}: setmaxnreg ignored:\n{}", report.text);
            // C7519 and its kin: ptxas waits after every wgmma (a wgmma on a conditional path,
            // registers touched in flight), which undoes the overlap pass.
            assert!(
                !report.text.contains("wgmma.mma_async instructions are serialized"),
                "{name} {arch}: wgmma serialized:\n{}",
                report.text
            );
            eprintln!(
                "{name} {arch}: {} registers, {} bytes smem",
                report.registers, compiled.ptx.shared_bytes
            );
            assert_eq!(
                (report.spill_store_bytes, report.spill_load_bytes, report.stack_bytes),
                (0, 0, 0),
                "{name} {arch} spills:\n{}",
                report.text
            );
            assert!(
                report.registers > 0 && report.registers <= REGISTER_LIMIT,
                "{name} {arch}: {}",
                report.text
            );
        }
    }
}

/// The ptxas of the CUDA 13.0 driver (`FLASHCORE_PTXAS_DRIVER`; scripts/test.sh installs it),
/// whose JIT compiles the PTX on the H200, keeps every sm_90a reference config's wgmmas
/// asynchronous: it serializes them on patterns that 13.5 accepts (a descriptor computed while a
/// wgmma is in flight, C7513), which undid the overlap pass on the GPU until codegen prepared
/// them ahead. With `CI` set, a missing driver ptxas fails.
#[test]
fn the_driver_ptxas_keeps_sm90a_wgmma_asynchronous() {
    let Some(ptxas) = std::env::var_os("FLASHCORE_PTXAS_DRIVER").map(std::path::PathBuf::from) else {
        assert!(std::env::var_os("CI").is_none(), "CI needs FLASHCORE_PTXAS_DRIVER: run scripts/test.sh");
        eprintln!("skipping: FLASHCORE_PTXAS_DRIVER not set (scripts/test.sh installs ptxas 13.0)");
        return;
    };
    for (name, config) in flashcore::kernels::reference_configs() {
        if config.target != flashcore::Target::Sm90a {
            continue;
        }
        let compiled = attention::compile(&config).unwrap();
        let report = flashcore::ptxas::assemble(&ptxas, &compiled.ptx.text, "sm_90a")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !report.text.contains("wgmma.mma_async instructions are serialized"),
            "{name}: the driver's ptxas serializes wgmma:\n{}",
            report.text
        );
        assert_eq!((report.spill_store_bytes, report.spill_load_bytes), (0, 0), "{name}:\n{}", report.text);
    }
}

#[test]
fn broken_ptx_is_reported_not_ignored() {
    let Some(ptxas) = ptxas_or_skip() else { return };
    let err =
        flashcore::ptxas::assemble(&ptxas, ".version 7.8\n.target sm_89\nnot ptx", "sm_89").unwrap_err();
    assert!(err.to_string().contains("rejected"), "{err}");
}

/// Every attention variant assembles for sm_89 and sm_90 with no spills, at its declared config
/// and at D = 128, causal and not, f16 and bf16.
#[test]
fn variants_assemble_without_spills() {
    let Some(ptxas) = ptxas_or_skip() else { return };
    let variants: Vec<_> =
        flashcore::registry::kernels().into_iter().filter(|e| e.module.ends_with("variants")).collect();
    assert!(variants.len() >= 5, "the variants are registered");
    for entry in variants {
        let declared = entry.config;
        for config in [
            declared,
            flashcore::Config { causal: true, dtype: flashcore::DType::Bf16, ..declared },
            flashcore::Config { causal: true, ..declared.with_head_dim(128) },
        ] {
            assert_no_spills(&ptxas, entry, &config);
        }
    }
}

/// The backward kernels assemble for sm_89 and sm_90 without spills at their declared config
/// and bf16; their `backward_configs` at D = 96, 128 without spills for sm_89 and with at most
/// 128 bytes for sm_90, the autotuner's rule (the dK/dV kernel holds two [16, D] f32
/// accumulators a warp: 128 registers a thread at D = 128; the measured fastest schedules
/// spill a few bytes on sm_90).
#[test]
fn backward_kernels_assemble_without_spills() {
    let Some(ptxas) = ptxas_or_skip() else { return };
    let kernels: Vec<_> =
        flashcore::registry::kernels().into_iter().filter(|e| e.module.ends_with("backward")).collect();
    assert!(kernels.len() >= 5, "the backward kernels are registered");
    for entry in kernels {
        let declared = entry.config;
        let tuned = |d| {
            let c = flashcore::kernels::backward::backward_configs(d);
            match entry.name {
                name if name.ends_with("_dq") => flashcore::Config { causal: true, ..c.dq },
                name if name.ends_with("_causal") => c.dkdv_causal,
                _ => c.dkdv,
            }
        };
        for config in [declared, flashcore::Config { dtype: flashcore::DType::Bf16, ..declared }] {
            assert_no_spills(&ptxas, entry, &config);
        }
        for config in [tuned(96), tuned(128)] {
            assert_spills_within(&ptxas, entry, &config, 128);
        }
    }
}

/// `entry` compiled for `config` assembles for sm_89 and sm_90 with no spill and no stack.
fn assert_no_spills(
    ptxas: &std::path::Path,
    entry: &flashcore::registry::KernelEntry,
    config: &flashcore::Config,
) {
    assert_spills_within(ptxas, entry, config, 0);
}

/// `entry` compiled for `config` assembles for sm_89 with no spill and no stack, and for sm_90
/// with at most `sm90_limit` bytes of spill stores and loads (none, and no stack, when 0).
fn assert_spills_within(
    ptxas: &std::path::Path,
    entry: &flashcore::registry::KernelEntry,
    config: &flashcore::Config,
    sm90_limit: u32,
) {
    let compiled = flashcore::compile(&(entry.program)(), config).unwrap();
    for (arch, limit) in [("sm_89", 0), ("sm_90", sm90_limit)] {
        let report = flashcore::ptxas::assemble(ptxas, &compiled.ptx.text, arch)
            .unwrap_or_else(|e| panic!("{} {config} {arch}: {e}", entry.name));
        eprintln!("{} {config} {arch}: {} registers", entry.name, report.registers);
        if limit == 0 {
            assert_eq!(
                (report.spill_store_bytes, report.spill_load_bytes, report.stack_bytes),
                (0, 0, 0),
                "{} {config} {arch} spills:\n{}",
                entry.name,
                report.text
            );
        } else {
            assert!(
                report.spill_store_bytes.max(report.spill_load_bytes) <= limit,
                "{} {config} {arch} spills over {limit} bytes:\n{}",
                entry.name,
                report.text
            );
        }
    }
}

/// The decode kernels (paged gathers) assemble for sm_89 and sm_90 with no spills at their
/// declared configs, causal bf16, D = 64, the in-CTA split and splits across CTAs (the packed
/// kernel); and the plain one for sm_90a (wgmma) at a warpgroup's tile.
#[test]
fn decode_kernel_assembles_without_spills() {
    let Some(ptxas) = ptxas_or_skip() else { return };
    let entry = flashcore::registry::find("attention_decode_paged").expect("registered");
    let declared = entry.config;
    for config in [
        declared,
        flashcore::Config { causal: true, dtype: flashcore::DType::Bf16, ..declared },
        declared.with_head_dim(64),
        flashcore::Config { warps: 4, kv_splits: 4, ..declared },
    ] {
        assert_no_spills(&ptxas, entry, &config);
    }
    let packed = flashcore::registry::find("attention_decode_paged_packed").expect("registered");
    for config in [
        packed.config,
        flashcore::Config { kv_ctas: 32, ..packed.config },
        flashcore::Config { kv_ctas: 8, dtype: flashcore::DType::Bf16, ..packed.config.with_head_dim(64) },
    ] {
        assert_no_spills(&ptxas, packed, &config);
    }
    let hopper = flashcore::Config { target: flashcore::Target::Sm90a, tile_m: 64, warps: 4, ..declared };
    let compiled = flashcore::compile(&(entry.program)(), &hopper).unwrap();
    let report = flashcore::ptxas::assemble(&ptxas, &compiled.ptx.text, "sm_90a").unwrap();
    assert_eq!(
        (report.spill_store_bytes, report.spill_load_bytes, report.stack_bytes),
        (0, 0, 0),
        "{}",
        report.text
    );
}

/// The hand-written kernels (PTX not from the DSL: the paged cache's append kernel and table
/// check, the table summary kernel) assemble for sm_89 and sm_90 with no spills and no stack,
/// and with the CUDA 13.0 driver's ptxas too where it is installed: that one, like the driver's
/// JIT, refuses a non-ASCII character even in a comment.
#[test]
fn hand_written_kernels_assemble_without_spills() {
    let Some(ptxas) = ptxas_or_skip() else { return };
    let driver = std::env::var_os("FLASHCORE_PTXAS_DRIVER").map(std::path::PathBuf::from);
    for (name, ptx) in [
        ("append", flashcore::codegen::append::append_ptx()),
        ("table check", flashcore::codegen::table_check::table_check_ptx()),
        ("table summary", flashcore::codegen::table_summary::table_summary_ptx()),
    ] {
        for arch in ["sm_89", "sm_90"] {
            let report = flashcore::ptxas::assemble(&ptxas, &ptx, arch).unwrap();
            assert_eq!(
                (report.spill_store_bytes, report.spill_load_bytes, report.stack_bytes),
                (0, 0, 0),
                "{name}, {arch}: {}",
                report.text
            );
            println!("{name} kernel, {arch}: {} registers", report.registers);
            if let Some(driver) = &driver {
                flashcore::ptxas::assemble(driver, &ptx, arch)
                    .unwrap_or_else(|e| panic!("{name}, {arch}, the driver's ptxas: {e}"));
            }
        }
    }
}

/// Every config the shipped tuning table hands out (`tuning/attention.json`: the H100/H200
/// winners and the L4 section) assembles without spills for the GPUs of its target (issue 20: 0
/// spill bytes in every shipped config): a winner that spills ships local-memory traffic that
/// the next ptxas or GPU may make worse. Lists the spilling ones by key before failing.
#[test]
fn shipped_tuning_entries_assemble_without_spills() {
    let Some(ptxas) = ptxas_or_skip() else { return };
    let table = flashcore::tuning::Table::builtin();
    assert!(!table.entries.is_empty(), "the builtin tuning table is empty");
    let mut spilling = vec![];
    for entry in &table.entries {
        let dtype = flashcore::DType::from_name(&entry.key.dtype).expect("the table parsed");
        let config = entry.config(flashcore::Config { dtype, ..flashcore::Config::default() });
        let kernel = flashcore::registry::find(&entry.key.kernel)
            .unwrap_or_else(|| panic!("{}: no registered kernel of that name", entry.key));
        let compiled =
            flashcore::compile(&(kernel.program)(), &config).unwrap_or_else(|e| panic!("{}: {e}", entry.key));
        for arch in flashcore::occupancy::archs_for(config.target).iter().map(|a| a.sm) {
            let report = flashcore::ptxas::assemble(&ptxas, &compiled.ptx.text, arch)
                .unwrap_or_else(|e| panic!("{} {arch}: {e}", entry.key));
            if (report.spill_store_bytes, report.spill_load_bytes, report.stack_bytes) != (0, 0, 0) {
                spilling.push(format!(
                    "{} ({config}) {arch}: {} registers, {} bytes spill stores, {} spill loads, {} stack",
                    entry.key,
                    report.registers,
                    report.spill_store_bytes,
                    report.spill_load_bytes,
                    report.stack_bytes
                ));
            }
        }
    }
    assert!(spilling.is_empty(), "shipped configs that spill:\n{}", spilling.join("\n"));
}

/// The variants whose score code fills whole tiles (ALiBi's `slope · (j − i)`, a bias table's
/// gathered values) at every shipped sm_90a entry they borrow from the plain kernel: their
/// elementwise runs are written element by element (`emit/elementwise.rs`), so at most the
/// spills listed here remain. Written op by op they spilled at 8 of these 18 pairs, 24 to 536
/// bytes (ALiBi 208 B at 128 × 256 D = 64 causal, 24 B at both D = 128 causal entries; the bias
/// 112 B at every D = 128 non-causal entry). A new spill, or a listed one growing, fails here.
/// At the persistent 128 × 256 entry both grew by 12 B when Q came from the producer
/// (`passes::feed_loads`: the Q slot's counter and offset live across the work item).
#[test]
fn score_modifying_variants_at_the_shipped_sm90a_entries_spill_no_more_than_known() {
    let Some(ptxas) = ptxas_or_skip() else { return };
    // (kernel, the entry's config text, spill store bytes at most): measured with ptxas 13.5.
    let known: &[(&str, &str, u32)] = &[
        ("alibi_attention", "tile_m=128 tile_n=256 head_dim=64 stages=3 warps=8 load_warps=4 persistent causal overlap tma sm_90a", 104),
        // 116 B at the non-persistent entries these replaced (stages 4 without the overlap, 2 with).
        ("bias_attention", "tile_m=192 tile_n=128 head_dim=64 stages=2 warps=12 load_warps=4 persistent overlap tma sm_90a", 120),
        ("bias_attention", "tile_m=128 tile_n=256 head_dim=64 stages=3 warps=8 load_warps=4 persistent causal overlap tma sm_90a", 460),
        ("bias_attention", "tile_m=128 tile_n=128 head_dim=128 stages=2 warps=8 load_warps=4 persistent overlap tma sm_90a", 8),
    ];
    let table = flashcore::tuning::Table::builtin();
    let mut configs: Vec<flashcore::Config> = vec![];
    for entry in &table.entries {
        let dtype = flashcore::DType::from_name(&entry.key.dtype).expect("the table parsed");
        let config = entry.config(flashcore::Config { dtype, ..flashcore::Config::default() });
        if config.target == flashcore::Target::Sm90a && !configs.contains(&config) {
            configs.push(config);
        }
    }
    assert!(configs.len() >= 4, "the shipped table has {} sm_90a entries", configs.len());
    let mut over = vec![];
    for name in ["alibi_attention", "bias_attention"] {
        let kernel = flashcore::registry::find(name).expect("a registered variant");
        for config in &configs {
            let compiled = flashcore::compile(&(kernel.program)(), config)
                .unwrap_or_else(|e| panic!("{name} {config}: {e}"));
            let report = flashcore::ptxas::assemble(&ptxas, &compiled.ptx.text, "sm_90a")
                .unwrap_or_else(|e| panic!("{name} {config}: {e}"));
            let text = config.to_string();
            let allowed = known.iter().find(|(k, c, _)| *k == name && *c == text).map_or(0, |k| k.2);
            if report.spill_store_bytes > allowed {
                over.push(format!(
                    "{name} ({text}): {} bytes of spill stores, {allowed} allowed",
                    report.spill_store_bytes
                ));
            }
        }
    }
    assert!(over.is_empty(), "variants spilling more than known:\n{}", over.join("\n"));
}

/// FlashCore's defaults for compute capability 9.0 (`tuning::Source::Default`, what a Hopper
/// with no entry for a key gets) assemble without spills, at every kind of key and head dim 64,
/// 128 and 256, causal and not: they are shipped configs too.
#[test]
fn hopper_defaults_assemble_without_spills() {
    let Some(ptxas) = ptxas_or_skip() else { return };
    let gpu = flashcore::tuning::Gpu {
        name: "a Hopper with no entries".into(),
        props: flashcore::tuning::GpuProps::HOPPER_SXM,
    };
    let program = attention::program();
    let table = flashcore::tuning::Table::empty();
    let mut spilling = vec![];
    for shape in [[1, 8, 512, 512], [1, 8, 1024, 1024], [4, 16, 2048, 2048], [2, 16, 8192, 8192]] {
        for d in [64, 128, 256] {
            for causal in [false, true] {
                let declared = flashcore::Config { causal, ..attention::CONFIG.with_head_dim(d) };
                let (config, source) = table.pick_kernel(&program, "attention", &gpu, declared, shape, None);
                assert!(
                    matches!(source, flashcore::tuning::Source::Default { .. }),
                    "{shape:?} D={d}: {source}"
                );
                let compiled = attention::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
                let arch = if config.target == flashcore::Target::Sm90a { "sm_90a" } else { "sm_90" };
                let report = flashcore::ptxas::assemble(&ptxas, &compiled.ptx.text, arch)
                    .unwrap_or_else(|e| panic!("{config} {arch}: {e}"));
                if report.spill_store_bytes + report.spill_load_bytes + report.stack_bytes > 0 {
                    spilling.push(format!("{config} {arch}: {} B spill stores", report.spill_store_bytes));
                }
            }
        }
    }
    assert!(spilling.is_empty(), "defaults that spill:\n{}", spilling.join("\n"));
}

/// The backward's sm_90a schedules (`backward_configs_for`) assemble without spills: the plain
/// and causal dK/dV kernels' 64-query tiles at D = 128, the register room they were chosen for,
/// and the dQ kernel (`passes::split_a_loads`) at D = 64 and 128, causal and not; D = 32 and 96
/// keep sm_89 schedules.
#[test]
fn the_sm90a_backward_schedules_assemble_without_spills() {
    use flashcore::kernels::backward::{
        attention_backward_dkdv, attention_backward_dkdv_causal, attention_backward_dq, backward_configs_for,
    };
    use flashcore::Target;
    let Some(ptxas) = ptxas_or_skip() else { return };
    let at_128 = backward_configs_for(128, Target::Sm90a);
    for dtype in [flashcore::DType::F16, flashcore::DType::Bf16] {
        let config = flashcore::Config { dtype, ..at_128.dkdv };
        let compiled = attention_backward_dkdv::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        assert_sm90a_spill_free(&ptxas, &compiled, &config);
        let config = flashcore::Config { dtype, ..at_128.dkdv_causal };
        let compiled =
            attention_backward_dkdv_causal::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        assert_sm90a_spill_free(&ptxas, &compiled, &config);
    }
    for d in [32, 96] {
        assert_eq!(backward_configs_for(d, Target::Sm90a), flashcore::kernels::backward::backward_configs(d));
    }
    for d in [64, 128] {
        for causal in [false, true] {
            let config = flashcore::Config { causal, ..backward_configs_for(d, Target::Sm90a).dq };
            assert_eq!(config.target, Target::Sm90a);
            let compiled =
                attention_backward_dq::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
            assert_sm90a_spill_free(&ptxas, &compiled, &config);
        }
    }
}

/// `compiled` (for `config`) assembles for sm_90a with no spill and no stack.
fn assert_sm90a_spill_free(
    ptxas: &std::path::Path,
    compiled: &flashcore::CompiledKernel,
    config: &flashcore::Config,
) {
    let report = flashcore::ptxas::assemble(ptxas, &compiled.ptx.text, "sm_90a")
        .unwrap_or_else(|e| panic!("{config}: {e}"));
    assert_eq!(
        (report.spill_store_bytes, report.spill_load_bytes, report.stack_bytes),
        (0, 0, 0),
        "{config}: {} registers",
        report.registers
    );
}
