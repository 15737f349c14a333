//! Choosing the PTX target of a launch: the one asked for (a config's `target`, the
//! `FLASHCORE_TARGET` environment variable, a `--target` flag), else the device's best target
//! when it can compile the kernel, else `sm_89`, with a sentence saying which rule chose it.
//!
//! ```
//! use flashcore::kernels::attention;
//! use flashcore::target::choose;
//! use flashcore::{Config, Target};
//!
//! // On an H100/H200 (9.0) the declared config compiles for sm_90a.
//! let (config, why) = choose(&attention::program(), attention::CONFIG, Some((9, 0)), None);
//! assert_eq!(config.target, Target::Sm90a, "{why}");
//! // Load warps have no sm_90a form yet: sm_89, and the reason.
//! let specialized = Config { load_warps: 1, ..attention::CONFIG };
//! let (config, why) = choose(&attention::program(), specialized, Some((9, 0)), None);
//! assert_eq!(config.target, Target::Sm89);
//! assert!(why.contains("load_warps = 1"), "{why}");
//! ```

use crate::ir::source::Program;
use crate::{Config, Error, Target};

/// The environment variable that forces a target: `sm_89`, `sm_90a`, or `auto` (the default).
pub const TARGET_VARIABLE: &str = "FLASHCORE_TARGET";

/// The target `FLASHCORE_TARGET` asks for: `None` when unset, empty or `auto`. It overrides a
/// config's `Target::Auto` (a target set in the config itself stays); the typed launchers read
/// it at a config's first launch on a device.
pub fn requested() -> Result<Option<Target>, Error> {
    match std::env::var(TARGET_VARIABLE) {
        Err(_) => Ok(None),
        Ok(v) => parse(&v).map_err(|e| Error::Tuning(format!("{TARGET_VARIABLE}: {e}"))),
    }
}

/// `sm_89`, `sm_90a`, or `auto`/empty (`None`).
pub fn parse(name: &str) -> Result<Option<Target>, String> {
    match name.trim() {
        "" | "auto" => Ok(None),
        other => Target::from_name(other)
            .map(Some)
            .ok_or_else(|| format!("`{other}` is not a target: sm_89, sm_90a or auto")),
    }
}

/// `config` with its target chosen, and why. `requested` (a flag or `FLASHCORE_TARGET`) wins,
/// then a target the config names (a tuned entry's, or one set in code); compiling then fails
/// with a typed error if that target cannot express the kernel. For `Target::Auto` a device of
/// compute capability 9.0 gets `sm_90a` when the kernel compiles for it, and `sm_89` (with the
/// reason it does not) when not; every other device, or none, gets `sm_89`.
pub fn choose(
    program: &Program,
    config: Config,
    compute_capability: Option<(i32, i32)>,
    requested: Option<Target>,
) -> (Config, String) {
    choose_by(config, compute_capability, requested, |candidate| {
        crate::lower(program, candidate)
            .and_then(|k| Ok(crate::ir::passes::run_all(k)?))
            .map_err(|e| e.to_string())
            .and_then(|k| crate::codegen::target::support(&k, candidate.target))
    })
}

/// [`choose`]'s rules, with `supports` saying whether the kernel compiles for a candidate
/// config (its target the device's best), or why not: for a caller that holds a kernel's
/// `compile` rather than its source.
pub fn choose_by(
    config: Config,
    compute_capability: Option<(i32, i32)>,
    requested: Option<Target>,
    supports: impl FnOnce(&Config) -> Result<(), String>,
) -> (Config, String) {
    if let Some(target) = requested {
        return (Config { target, ..config }, format!("{target} (requested)"));
    }
    if config.target != Target::Auto {
        return (config, format!("{} (the config's)", config.target));
    }
    let Some((major, minor)) = compute_capability else {
        return (Config { target: Target::Sm89, ..config }, "sm_89 (no device)".into());
    };
    let best = Target::for_compute_capability(major, minor);
    let candidate = Config { target: best, ..config };
    if best == Target::Sm89 {
        return (candidate, format!("sm_89 (compute capability {major}.{minor})"));
    }
    match supports(&candidate) {
        Ok(()) => (candidate, format!("{best} (compute capability {major}.{minor})")),
        Err(why) => (Config { target: Target::Sm89, ..config }, format!("sm_89 ({best} cannot: {why})")),
    }
}
