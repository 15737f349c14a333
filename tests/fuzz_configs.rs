//! Config fuzzing (issue 7, item 5): random `Config`s, valid and not, through lowering, every
//! IR pass, the verifier, the protocol check and the code generator; each one the compiler
//! accepts must assemble with ptxas for sm_89. Nothing may panic: a rejected config is a typed
//! error that names a field.

use std::panic::{catch_unwind, AssertUnwindSafe};

use flashcore::kernels::attention;
use flashcore::reference::Rng;
use flashcore::{Config, DType, Target};

/// How many random configs CI draws (about half compile, about 0.8 s of ptxas each);
/// `FLASHCORE_FUZZ_CONFIGS=N` runs a longer campaign.
const CONFIGS: usize = 100;

fn pick<T: Copy>(rng: &mut Rng, xs: &[T]) -> T {
    xs[(rng.next_u64() % xs.len() as u64) as usize]
}

/// A config drawn mostly from the values the fields take, with some out of range: half the
/// draws are built to be valid (warps dividing the tile and the splits), so that most of the
/// accepted space is covered, not only its rejections.
fn random_config(rng: &mut Rng) -> Config {
    if rng.next_u64() % 2 == 0 {
        return random_valid_config(rng);
    }
    let flag = |rng: &mut Rng| rng.next_u64() % 2 == 0;
    Config {
        tma: false,
        pingpong: false,
        tile_m: pick(rng, &[0, 16, 32, 48, 64, 96, 128, 176, 256, 272]),
        tile_n: pick(rng, &[0, 16, 24, 32, 64, 128, 256, 512]),
        head_dim: pick(rng, &[32, 64, 80, 96, 128, 256]),
        stages: pick(rng, &[0, 1, 2, 3, 4, 5]),
        warps: pick(rng, &[0, 1, 2, 3, 4, 8, 11, 16, 17]),
        persistent: flag(rng),
        load_warps: pick(rng, &[0, 0, 1, 2, 4, 9]),
        softmax_warps: pick(rng, &[0, 0, 0, 1, 2, 4]),
        causal: flag(rng),
        dtype: pick(rng, &[DType::F16, DType::Bf16]),
        varlen: flag(rng),
        a_in_smem: flag(rng),
        kv_splits: pick(rng, &[1, 1, 1, 2, 3, 4, 0]),
        kv_ctas: pick(rng, &[1, 1, 1, 2, 5, 0, 65]),
        overlap: flag(rng),
        target: pick(rng, &[Target::Auto, Target::Sm89, Target::Sm90a]),
    }
}

fn random_valid_config(rng: &mut Rng) -> Config {
    let flag = |rng: &mut Rng| rng.next_u64() % 2 == 0;
    let kv_splits = pick(rng, &[1, 1, 2, 4]);
    let rows_per_warp = pick(rng, &[16, 16, 32, 64]);
    let row_warps = pick(rng, &[1, 2, 4]);
    let head_dim = pick(rng, &[32, 64, 96, 128, 128, 256]);
    let load_warps = pick(rng, &[0, 0, 1, 2]);
    Config {
        tma: false,
        pingpong: false,
        tile_m: rows_per_warp * row_warps,
        tile_n: pick(rng, &[32, 64, 64, 128]).max(16 * kv_splits),
        head_dim,
        stages: pick(rng, &[1, 2, 3]),
        warps: row_warps * kv_splits,
        persistent: flag(rng),
        load_warps,
        softmax_warps: if load_warps > 0 && kv_splits == 1 { pick(rng, &[0, 0, 1, row_warps]) } else { 0 },
        causal: flag(rng),
        dtype: pick(rng, &[DType::F16, DType::Bf16]),
        varlen: flag(rng),
        a_in_smem: flag(rng),
        kv_splits,
        kv_ctas: if load_warps == 0 { pick(rng, &[1, 1, 2, 3]) } else { 1 },
        overlap: flag(rng),
        target: pick(rng, &[Target::Sm89, Target::Sm89, Target::Sm90a]),
    }
}

#[test]
fn random_configs_compile_or_are_rejected_and_what_compiles_assembles() {
    let ptxas = flashcore::ptxas::find();
    if ptxas.is_none() && std::env::var_os("CI").is_some() {
        panic!("ptxas is required in CI: run scripts/test.sh (it installs ptxas from PyPI)");
    }
    let count = std::env::var("FLASHCORE_FUZZ_CONFIGS").ok().and_then(|n| n.parse().ok()).unwrap_or(CONFIGS);
    let mut rng = Rng::new(0xF1A5_C0DE);
    let (mut rejected, mut compiled, mut assembled) = (0, 0, 0);
    let mut seen = std::collections::HashSet::new();
    let started = std::time::Instant::now();
    for _ in 0..count {
        let cfg = random_config(&mut rng);
        if !seen.insert(cfg) {
            continue;
        }
        let result = catch_unwind(AssertUnwindSafe(|| attention::compile(&cfg)))
            .unwrap_or_else(|_| panic!("compiling {cfg:?} panicked"));
        match (cfg.validate(), result) {
            (Err(_), Ok(_)) => panic!("{cfg:?} is invalid but compiled"),
            (Err(_), Err(e)) => {
                rejected += 1;
                assert!(e.to_string().contains("invalid config"), "{cfg:?}: {e}");
            }
            (Ok(()), Err(e)) => {
                // A valid config the compiler still refuses must say why in a typed error,
                // never an internal one.
                rejected += 1;
                let text = e.to_string();
                assert!(!text.to_lowercase().contains("internal"), "{cfg:?}: {text}");
            }
            (Ok(()), Ok(kernel)) => {
                compiled += 1;
                if let Some(ptxas) = &ptxas {
                    flashcore::ptxas::assemble(ptxas, &kernel.ptx.text, cfg.target.ptx().name())
                        .unwrap_or_else(|e| panic!("{cfg}: the PTX does not assemble: {e}"));
                    assembled += 1;
                }
            }
        }
    }
    eprintln!(
        "config fuzz: {} distinct configs: {rejected} rejected with typed errors, {compiled} compiled, {assembled} assembled by ptxas for their target ({:.0} s)",
        seen.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(compiled > 0 && rejected > 0);
}
