//! Snapshot tests: the IR and the PTX of the example kernel at each snapshot configuration,
//! pinned in `tests/snapshots/` and reviewed like code (`cargo insta review` after a change).

use flashcore::kernels::attention;

fn check_ir(name: &str, config: &flashcore::Config) {
    let kernel = attention::ir(config).expect("snapshot configs lower");
    insta::assert_snapshot!(format!("ir_{name}"), kernel.to_string());
}

fn check_ptx(name: &str, config: &flashcore::Config) {
    let ptx = attention::ptx(config).expect("snapshot configs compile");
    insta::assert_snapshot!(format!("ptx_{name}"), ptx);
}

#[test]
fn ir_snapshots() {
    for (name, config) in flashcore::kernels::reference_configs() {
        check_ir(name, &config);
    }
}

/// The IR after lowering and after each pass, for one config per pipeline shape.
#[test]
fn ir_after_each_pass_snapshots() {
    for (name, config) in flashcore::kernels::reference_configs() {
        if !matches!(
            name,
            "d64"
                | "d64_s2"
                | "d64_s3_persistent"
                | "d64_s2_load1"
                | "d64_s2_load1_softmax4"
                | "d64_m32_n128_w4_s2_load2_split2"
        ) {
            continue;
        }
        let stages: &[&str] = if config.kv_splits > 1 {
            &["lower", "pipeline", "split_kv", "persist", "warp_specialize"]
        } else {
            &["lower", "pipeline", "persist", "warp_specialize"]
        };
        for stage in stages {
            let kernel = attention::ir_after(&config, stage).expect("snapshot configs lower");
            insta::assert_snapshot!(format!("ir_{name}_after_{stage}"), kernel.to_string());
        }
    }
}

#[test]
fn ptx_snapshots() {
    for (name, config) in flashcore::kernels::reference_configs() {
        check_ptx(name, &config);
    }
}

#[test]
fn ptx_is_deterministic_and_uses_the_promised_instructions() {
    let config = attention::CONFIG;
    let ptx = attention::ptx(&config).unwrap();
    // Fresh compilation (not the cache) gives the same text.
    let again = flashcore::compile(&attention::program(), &config).unwrap().ptx.text;
    assert_eq!(ptx, again);
    for needle in [
        ".version 7.8",
        ".target sm_89",
        "cp.async.cg.shared.global",
        "cp.async.commit_group",
        "cp.async.wait_group",
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
        "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
        "ex2.approx.ftz.f32",
        "shfl.sync.bfly.b32",
        "cvt.rn.f16x2.f32",
        "st.global.v4.b32",
        "// @compute %s.11: frag<f32>[TILE_M, TILE_N] = mma",
    ] {
        assert!(ptx.contains(needle), "PTX lacks `{needle}`");
    }
    assert!(!ptx.contains("%tid_"), "no register may be named like a special register");
}

/// The variants' IR and PTX at their declared configs, causal: the score code between the mma
/// and the softmax, and the masks after it.
#[test]
fn variant_snapshots() {
    for entry in flashcore::registry::kernels() {
        if !entry.module.ends_with("variants") {
            continue;
        }
        let config = flashcore::Config { causal: true, ..entry.config };
        let program = (entry.program)();
        let kernel = flashcore::ir::lower(&program, &config).expect("variants lower");
        insta::assert_snapshot!(format!("variant_ir_{}", entry.name), kernel.to_string());
        let ptx = flashcore::compile(&program, &config).expect("variants compile").ptx.text.clone();
        insta::assert_snapshot!(format!("variant_ptx_{}", entry.name), ptx);
    }
}

/// The backward kernels' IR and PTX at their declared configs: the widening of dO and O, the
/// transposed score tiles, and `zero_columns` where dS (data with a sequence tail) becomes an
/// mma operand.
#[test]
fn backward_snapshots() {
    for entry in flashcore::registry::kernels() {
        if !entry.module.ends_with("backward") {
            continue;
        }
        let program = (entry.program)();
        let kernel = flashcore::ir::lower(&program, &entry.config).expect("the backward lowers");
        insta::assert_snapshot!(format!("backward_ir_{}", entry.name), kernel.to_string());
        let ptx =
            flashcore::compile(&program, &entry.config).expect("the backward compiles").ptx.text.clone();
        insta::assert_snapshot!(format!("backward_ptx_{}", entry.name), ptx);
    }
}

/// The decode kernel's IR and PTX at its declared config: the page-table gathers (`k_cache[
/// block_table[b], ..]`) and the sequence lengths each work item loads.
#[test]
fn decode_snapshots() {
    use flashcore::kernels::decode::attention_decode_paged;
    let program = attention_decode_paged::program();
    let config = attention_decode_paged::CONFIG;
    let kernel = flashcore::ir::lower(&program, &config).expect("the decode kernel lowers");
    // The text IR prints the gather and reads back to the same kernel.
    let text = kernel.to_string();
    assert!(text.contains("k_cache[block_table[%b.0]"), "{text}");
    assert_eq!(flashcore::ir::parse_kernel(&text).expect("the text IR parses").to_string(), text);
    insta::assert_snapshot!("decode_ir_attention_decode_paged", text);
    let ptx = flashcore::compile(&program, &config).expect("the decode kernel compiles").ptx.text.clone();
    insta::assert_snapshot!("decode_ptx_attention_decode_paged", ptx);
    // Packed GQA split across CTAs: the position mask through `rows_after` and the combine.
    use flashcore::kernels::decode::attention_decode_paged_packed as packed;
    let config = flashcore::Config { kv_ctas: 8, ..packed::CONFIG };
    let kernel = flashcore::ir::lower(&packed::program(), &config).expect("the packed kernel lowers");
    let ir = flashcore::ir::passes::run_all(kernel).expect("the passes run").to_string();
    assert!(ir.contains("combine_ctas"), "{ir}");
    insta::assert_snapshot!("decode_ir_attention_decode_paged_packed_kv_ctas8", ir);
    let ptx =
        flashcore::compile(&packed::program(), &config).expect("the packed kernel compiles").ptx.text.clone();
    assert!(ptx.contains("atom.global.acq_rel.gpu.add.u32"), "the arrival counter");
    insta::assert_snapshot!("decode_ptx_attention_decode_paged_packed_kv_ctas8", ptx);
}
