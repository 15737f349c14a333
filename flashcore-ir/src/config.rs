//! `Config`: the compile-time choices an autotuner varies (tile sizes, head dim, stages, warps),
//! and the rules every valid configuration obeys.

use std::fmt;

use crate::error::ConfigError;
use crate::source::DType;

/// Head dims the code generator supports today.
pub const SUPPORTED_HEAD_DIMS: [u32; 5] = [32, 64, 96, 128, 256];

/// The shape of an `mma.sync.m16n8k16` instruction, which every tile must be a multiple of.
pub const MMA_M: u32 = 16;
pub const MMA_N: u32 = 8;
pub const MMA_K: u32 = 16;

/// Registers a thread may use on sm_80 and later.
pub const MAX_REGISTERS: u32 = 255;

/// Most shared-memory buffers per staged tile the pipeline pass allocates.
pub const MAX_STAGES: u32 = 4;
/// The most CTAs one work item may be split across (`Config::kv_ctas`).
pub const MAX_KV_CTAS: u32 = 64;

/// The PTX a kernel compiles to. Both run on Hopper; only `Sm90a` uses its own instructions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Target {
    /// The device's (the default): resolved when a kernel is launched on a device, to `Sm90a`
    /// on compute capability 9.0 where the kernel compiles for it and `Sm89` elsewhere
    /// (`flashcore::target::choose`); compiled without a device, `Sm89` ([`Target::ptx`]).
    #[default]
    Auto,
    /// `.target sm_89`: cp.async, ldmatrix and mma.sync, for the L4 and every GPU from sm_89 on
    /// (the driver JIT-compiles it for newer ones).
    Sm89,
    /// `.target sm_90a`: the matmuls are warpgroup `wgmma.mma_async`, reading K and V straight
    /// from shared memory (128-byte swizzled, in column blocks of 64 elements). Loads only on
    /// compute capability 9.0 (H100, H200).
    Sm90a,
}

impl Target {
    /// The PTX targets (every target but `Auto`).
    pub const ALL: [Target; 2] = [Target::Sm89, Target::Sm90a];

    /// The name PTX (`.target`), ptxas (`--gpu-name`) and settings use: `sm_89`, `sm_90a`; and
    /// `auto`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Auto => "auto",
            Target::Sm89 => "sm_89",
            Target::Sm90a => "sm_90a",
        }
    }

    /// `sm_89`, `sm_90a` or `auto`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().chain([Target::Auto]).find(|t| t.name() == name)
    }

    /// The PTX target code is generated for: `Auto` not resolved by a device is `Sm89`, which
    /// runs everywhere.
    pub fn ptx(self) -> Target {
        match self {
            Target::Auto => Target::Sm89,
            target => target,
        }
    }

    /// Whether a device of compute capability `major.minor` loads this target's PTX: sm_89 (and
    /// `Auto` compiled without a device) from 8.9 on, sm_90a on 9.0 only.
    pub fn runs_on(self, major: i32, minor: i32) -> bool {
        match self.ptx() {
            Target::Sm90a => (major, minor) == (9, 0),
            _ => (major, minor) >= (8, 9),
        }
    }

    /// The target a device of compute capability `major.minor` runs best: `sm_90a` on 9.0
    /// exactly (the `a` features exist on no other chip), `sm_89` elsewhere.
    pub fn for_compute_capability(major: i32, minor: i32) -> Target {
        if (major, minor) == (9, 0) {
            Target::Sm90a
        } else {
            Target::Sm89
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One kernel configuration. `#[flash_kernel(..)]` declares the default one; any other can be
/// passed at run time, and is validated before it reaches the code generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Rows of the Q/O tile one CTA owns (`TILE_M`).
    pub tile_m: u32,
    /// Rows of each K/V tile of the inner loop (`TILE_N`).
    pub tile_n: u32,
    /// Head dimension `D`, fixed at compile time.
    pub head_dim: u32,
    /// Shared-memory buffers per staged tile of the pipelined loop.
    pub stages: u32,
    /// Compute warps per CTA; each owns `tile_m / warps` rows of the Q/O tile.
    pub warps: u32,
    /// Persistent CTAs: as many as fit on the device at once, each looping over work items.
    pub persistent: bool,
    /// Warps that only copy K/V tiles (producers, the `load` role). 0: every role runs on the
    /// `warps` compute warps; otherwise the warp-specialize pass gives `load` statements to
    /// these extra warps, synchronized with the compute warps through mbarriers.
    pub load_warps: u32,
    /// Warps that run the `softmax` statements apart from the compute warps: 0 (fused into the
    /// compute warps, which own the rows) or `warps` (softmax warp `w` handles the rows of
    /// compute warp `w`; scores, probabilities and row statistics travel through shared memory).
    pub softmax_warps: u32,
    /// Causal attention, aligned to the bottom right: query row `i` sees keys `j ≤ i + SK − S`.
    /// K/V tiles past a Q tile's diagonal are skipped, so causal costs about half.
    pub causal: bool,
    /// The element type bound to the kernel's generic tensors (`fn k<T>(q: Tensor<T, ..>)`) and
    /// of every mma operand: `f16` or `bf16` (f32 accumulation either way).
    pub dtype: DType,
    /// The variable-length path: each work item reads its sequence's bounds from the kernel's
    /// sequence offsets (`SeqOffsets<B, S>`) when they are given. Off, the kernel carries no
    /// trace of them and refuses them; the typed launchers switch it on when offsets are passed,
    /// so a dense launch runs the dense code.
    pub varlen: bool,
    /// mma A operands that come from a `load` (Q) stay in shared memory, where the load put
    /// them, and each mma re-reads them with ldmatrix instead of holding them in registers
    /// (FlashAttention-2's choice). Frees `rows_per_warp × D / 64` registers a thread, which lets
    /// a warp own 32 rows at D = 128 without spilling, so each K/V fragment read from shared
    /// memory feeds two mma row blocks instead of one. The loaded tiles share one region, so
    /// only a kernel with a single `load` keeps it there (a backward kernel loads several: they
    /// stay in registers, as without the flag).
    pub a_in_smem: bool,
    /// Split-KV inside the CTA: the compute warps form `kv_splits` groups of `warps / kv_splits`
    /// warps; every group covers all `TILE_M` rows, and group `g` takes keys
    /// `g·TILE_N/kv_splits ..` of each staged K/V tile, with its own running max, sum and
    /// accumulator. After the K/V loop the groups merge by log-sum-exp through shared memory
    /// (the `split_kv` pass inserts the merge) and group 0 stores. Each warp's chain of mma
    /// over the keys is `kv_splits` times shorter, which is what a grid too small to fill the
    /// GPU (small B·H·S, the headline shape) is bound by. 1: off.
    pub kv_splits: u32,
    /// Split-KV across CTAs (FlashDecoding): each work item is run by `kv_ctas` CTAs, CTA `c`
    /// walking the `c`-th of `kv_ctas` equal ranges of the K/V loop; each writes its
    /// online-softmax state (running max, sum, unnormalized accumulator) to a workspace the
    /// runtime provides, and the last of them to finish merges all states by log-sum-exp and
    /// stores (the `split_ctas` pass inserts the combine). For grids too small to fill the GPU
    /// with long K/V loops: decode. Needs the uniform layout (no load or softmax warps), one CTA
    /// per work item (not persistent) and no sm_90a overlap. 1: off.
    pub kv_ctas: u32,
    /// sm_90a with a producer warpgroup: the overlap pass rotates the K/V loop so that the
    /// softmax of each tile runs while the tensor cores compute `P·V` of the tile before
    /// (asynchronous wgmma, FlashAttention-3's intra-warpgroup overlap), with K and V in rings of
    /// their own. Off by default; the H200's tuned table turns it on where it measured faster
    /// (its first form, with one K/V ring, measured slower than without:
    /// docs/measurements/2026-12-02-h200-sm90a-overlap.txt). Ignored where the pass does not
    /// apply (`flashcore check` says why).
    pub overlap: bool,
    /// sm_90a with a producer warpgroup: the load warps' tile copies become bulk tensor copies
    /// (TMA, `cp.async.bulk.tensor` through tensor maps the runtime encodes), issued by one
    /// thread, completing on the `full` mbarriers with transaction bytes; the other producer
    /// warps exit. Ignored where the TMA pass does not apply (`flashcore check` says why).
    pub tma: bool,
    /// sm_90a with two compute warpgroups and the overlap: the warpgroups take turns issuing
    /// their matmuls (two named barriers), so that one's softmax runs while the other's wgmmas
    /// occupy the tensor cores (FlashAttention-3's pingpong). Ignored elsewhere (`flashcore
    /// check` says why).
    pub pingpong: bool,
    /// The PTX target (see [`Target`]; `Auto`, the default, is the device's). `sm_90a` needs
    /// warpgroups of compute warps: see `flashcore_codegen::target` for what it expresses today.
    pub target: Target,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tile_m: 64,
            tile_n: 64,
            head_dim: 64,
            stages: 1,
            warps: 4,
            persistent: false,
            load_warps: 0,
            softmax_warps: 0,
            causal: false,
            dtype: DType::F16,
            varlen: false,
            a_in_smem: false,
            kv_splits: 1,
            kv_ctas: 1,
            overlap: false,
            tma: false,
            pingpong: false,
            target: Target::Auto,
        }
    }
}

impl Config {
    /// This config at head dim `head_dim`, with the tiles a head dim needs: at D = 256 a warp's
    /// O accumulator alone is 128 registers a thread (16 rows × 256 columns of f32 over 32
    /// lanes) and its Q fragments 64 more, so K/V tiles shrink to 32 rows (S and P fragments
    /// of 16 and 8 registers), which ptxas fits in 255 registers without spilling; 64-row tiles
    /// spill. Smaller head dims keep the tiles as they are.
    pub fn with_head_dim(self, head_dim: u32) -> Config {
        let tile_n = if head_dim > 128 { self.tile_n.min(32) } else { self.tile_n };
        Config { head_dim, tile_n, ..self }
    }

    /// The softmax scale attention uses unless told otherwise: 1/√D.
    pub fn default_scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Rows of the Q tile each warp owns (with split-KV, each group of warps covers them all).
    pub fn rows_per_warp(&self) -> u32 {
        self.tile_m / self.warps_per_split()
    }

    /// Compute warps in one split-KV group (all of them without split-KV).
    pub fn warps_per_split(&self) -> u32 {
        self.warps / self.kv_splits.max(1)
    }

    /// Keys of each K/V tile one warp's fragments cover: `TILE_N / kv_splits`.
    pub fn keys_per_warp(&self) -> u32 {
        self.tile_n / self.kv_splits.max(1)
    }

    /// Threads per CTA: compute warps plus load warps.
    pub fn threads(&self) -> u32 {
        (self.warps + self.load_warps + self.softmax_warps) * 32
    }

    /// Checks the rules that make a configuration compilable. Each error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad =
            |field: &'static str, value: u32, why: String| Err(ConfigError::Invalid { field, value, why });
        if !SUPPORTED_HEAD_DIMS.contains(&self.head_dim) {
            return bad(
                "head_dim",
                self.head_dim,
                format!("supported head dims are {SUPPORTED_HEAD_DIMS:?}"),
            );
        }
        if self.warps == 0 || self.warps > 16 {
            return bad("warps", self.warps, "must be between 1 and 16".into());
        }
        if self.kv_splits == 0 || self.warps % self.kv_splits != 0 {
            return bad(
                "kv_splits",
                self.kv_splits,
                format!(
                    "must be a positive divisor of warps = {} (each split is a group of warps)",
                    self.warps
                ),
            );
        }
        let row_warps = self.warps_per_split();
        if self.tile_m == 0 || self.tile_m % (MMA_M * row_warps) != 0 {
            return bad(
                "tile_m",
                self.tile_m,
                format!(
                    "must be a positive multiple of {} (the mma M of {MMA_M} rows times {row_warps} warps{})",
                    MMA_M * row_warps,
                    if self.kv_splits > 1 { " per split" } else { "" }
                ),
            );
        }
        if self.tile_m > 256 {
            return bad("tile_m", self.tile_m, "must be at most 256".into());
        }
        if self.tile_n == 0 || self.tile_n % MMA_K != 0 || self.tile_n > 256 {
            return bad(
                "tile_n",
                self.tile_n,
                format!("must be a positive multiple of {MMA_K} (the mma K that P·V consumes), at most 256"),
            );
        }
        if self.load_warps > 8 || self.warps + self.load_warps + self.softmax_warps > 16 {
            return bad("load_warps", self.load_warps, "at most 8, and at most 16 warps in all".into());
        }
        if self.softmax_warps != 0 && (self.softmax_warps > self.warps || self.load_warps == 0) {
            return bad(
                "softmax_warps",
                self.softmax_warps,
                format!(
                    "must be 0 (softmax fused into the compute warps) or at most warps = {}, with load warps: as many as compute warps mirror their rows, fewer stream the rows through shared memory",
                    self.warps
                ),
            );
        }
        if self.kv_splits > 1 && self.tile_n % (MMA_K * self.kv_splits) != 0 {
            return bad(
                "kv_splits",
                self.kv_splits,
                format!(
                    "splits tile_n = {} into slices of {} keys, which must be a multiple of {MMA_K} (the mma K that P·V consumes)",
                    self.tile_n,
                    self.tile_n / self.kv_splits
                ),
            );
        }
        if self.kv_splits > 1 && self.softmax_warps > 0 {
            return bad(
                "kv_splits",
                self.kv_splits,
                "does not combine with softmax warps (they mirror one compute warp's rows each)".into(),
            );
        }
        if !(1..=MAX_KV_CTAS).contains(&self.kv_ctas) {
            return bad("kv_ctas", self.kv_ctas, format!("must be between 1 and {MAX_KV_CTAS}"));
        }
        if self.kv_ctas > 1 {
            let conflict = [
                (self.load_warps > 0, "load warps"),
                (self.softmax_warps > 0, "softmax warps"),
                (self.persistent, "persistent CTAs (a work item's CTAs must all run: one each)"),
                (self.overlap || self.tma || self.pingpong, "the sm_90a overlap, tma or pingpong"),
            ];
            if let Some((_, what)) = conflict.iter().find(|(on, _)| *on) {
                return bad(
                    "kv_ctas",
                    self.kv_ctas,
                    format!("splits the K/V loop across CTAs in the uniform layout; it does not combine with {what}"),
                );
            }
        }
        if !(1..=MAX_STAGES).contains(&self.stages) {
            return bad("stages", self.stages, format!("must be between 1 and {MAX_STAGES}"));
        }
        // A warp's O accumulator and score tile are f32 fragments live at once, spread over its
        // 32 lanes; past the 255 registers a thread has, every access would go to local memory.
        let (o_regs, s_regs) =
            (self.rows_per_warp() * self.head_dim / 32, self.rows_per_warp() * self.keys_per_warp() / 32);
        if o_regs + s_regs > MAX_REGISTERS {
            return bad(
                "tile_m",
                self.tile_m,
                format!(
                    "gives each warp {} rows, whose O accumulator ({o_regs}) and scores ({s_regs}) need {} f32 registers a thread, over the {MAX_REGISTERS} a thread has: use more warps, a smaller tile_m or a smaller tile_n",
                    self.rows_per_warp(),
                    o_regs + s_regs
                ),
            );
        }
        Ok(())
    }

    /// The whole-number field called `name` (`tile_m`, .., `kv_splits`), with its name, for
    /// the parsers of configs (`with_settings`, the `#[flash_kernel(..)]` attribute).
    pub fn number_field(&mut self, name: &str) -> Option<(&'static str, &mut u32)> {
        Some(match name {
            "tile_m" => ("tile_m", &mut self.tile_m),
            "tile_n" => ("tile_n", &mut self.tile_n),
            "head_dim" => ("head_dim", &mut self.head_dim),
            "stages" => ("stages", &mut self.stages),
            "warps" => ("warps", &mut self.warps),
            "load_warps" => ("load_warps", &mut self.load_warps),
            "softmax_warps" => ("softmax_warps", &mut self.softmax_warps),
            "kv_splits" => ("kv_splits", &mut self.kv_splits),
            "kv_ctas" => ("kv_ctas", &mut self.kv_ctas),
            _ => return None,
        })
    }

    /// The on/off field called `name` (`persistent`, `causal`, `varlen`, `a_in_smem`, `overlap`, `tma`, `pingpong`).
    pub fn flag_field(&mut self, name: &str) -> Option<&mut bool> {
        match name {
            "persistent" => Some(&mut self.persistent),
            "causal" => Some(&mut self.causal),
            "varlen" => Some(&mut self.varlen),
            "a_in_smem" => Some(&mut self.a_in_smem),
            "overlap" => Some(&mut self.overlap),
            "tma" => Some(&mut self.tma),
            "pingpong" => Some(&mut self.pingpong),
            _ => None,
        }
    }

    /// This config with `settings` applied: `name=value` pairs and flags, separated by spaces or
    /// commas, in the form [`Config`]'s `Display` writes (`tile_m=128 warps=8 persistent bf16`),
    /// so a printed config reads back as itself. `load_warps` and `softmax_warps` set the
    /// role warps, a flag alone (`causal`) sets it and `causal=false` clears it, and `f16` or
    /// `bf16` (or `dtype=..`) picks the element type. The result is not validated: see
    /// [`Config::validate`].
    pub fn with_settings(self, settings: &str) -> Result<Config, ConfigError> {
        let mut config = self;
        let bad = |setting: &str, why: String| ConfigError::Setting { setting: setting.to_string(), why };
        for setting in settings.split([' ', ',']).filter(|s| !s.is_empty()) {
            let (name, value) = match setting.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (setting, None),
            };
            if let Some(dtype) = DType::from_name(name).filter(|_| value.is_none()) {
                config.dtype = dtype;
                continue;
            }
            if let Some(target) = Target::from_name(name).filter(|_| value.is_none()) {
                config.target = target;
                continue;
            }
            if let Some(flag) = config.flag_field(name) {
                *flag = match value {
                    None | Some("true") => true,
                    Some("false") => false,
                    Some(_) => return Err(bad(setting, format!("expected `{name}` or `{name}=true|false`"))),
                };
                continue;
            }
            let Some(value) = value else {
                return Err(bad(setting, format!("expected `name=value` or a flag; {SETTINGS}")));
            };
            if name == "target" {
                config.target = Target::from_name(value).ok_or_else(|| {
                    bad(setting, "expected `target=sm_89`, `target=sm_90a` or `target=auto`".into())
                })?;
                continue;
            }
            if name == "dtype" {
                config.dtype = DType::from_name(value)
                    .ok_or_else(|| bad(setting, "expected `dtype=f16` or `dtype=bf16`".into()))?;
                continue;
            }
            let Some((_, field)) = config.number_field(name) else {
                return Err(bad(setting, format!("unknown setting `{name}`; {SETTINGS}")));
            };
            *field = value.parse().map_err(|_| bad(setting, format!("`{value}` is not a whole number")))?;
        }
        Ok(config)
    }
}

/// What [`Config::with_settings`] accepts, for its errors.
const SETTINGS: &str = "settings are tile_m, tile_n, head_dim, stages, warps, load_warps, softmax_warps, kv_splits, kv_ctas (=N), persistent, causal, varlen, a_in_smem, overlap, tma, pingpong (flags, or =true|false), f16, bf16 (or dtype=..), and sm_89, sm_90a (or target=..)";

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tile_m={} tile_n={} head_dim={} stages={} warps={}{}{}{}{}{}{}{}{}{}{}{}{}{}",
            self.tile_m,
            self.tile_n,
            self.head_dim,
            self.stages,
            self.warps,
            if self.load_warps > 0 { format!(" load_warps={}", self.load_warps) } else { String::new() },
            if self.softmax_warps > 0 {
                format!(" softmax_warps={}", self.softmax_warps)
            } else {
                String::new()
            },
            if self.persistent { " persistent" } else { "" },
            if self.causal { " causal" } else { "" },
            if self.varlen { " varlen" } else { "" },
            if self.a_in_smem { " a_in_smem" } else { "" },
            if self.kv_splits > 1 { format!(" kv_splits={}", self.kv_splits) } else { String::new() },
            if self.kv_ctas > 1 { format!(" kv_ctas={}", self.kv_ctas) } else { String::new() },
            if self.overlap { " overlap" } else { "" },
            if self.tma { " tma" } else { "" },
            if self.pingpong { " pingpong" } else { "" },
            if self.dtype != DType::F16 { format!(" {}", self.dtype.name()) } else { String::new() },
            if self.target != Target::Auto { format!(" {}", self.target) } else { String::new() }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn tile_not_multiple_of_mma_names_the_field() {
        let cfg = Config { tile_m: 40, ..Config::default() };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("tile_m = 40"), "{err}");
        assert!(err.contains("multiple of 64"), "{err}");
        let cfg = Config { tile_n: 24, ..Config::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("tile_n = 24"));
    }

    #[test]
    fn kv_splits_must_divide_the_warps_and_the_key_tile() {
        let split = Config { tile_m: 32, tile_n: 128, warps: 4, kv_splits: 2, ..Config::default() };
        split.validate().unwrap();
        assert_eq!((split.rows_per_warp(), split.keys_per_warp(), split.warps_per_split()), (16, 64, 2));
        assert!(split.to_string().ends_with(" kv_splits=2"), "{split}");
        let err = Config { kv_splits: 3, ..split }.validate().unwrap_err().to_string();
        assert!(err.contains("kv_splits = 3") && err.contains("divisor of warps = 4"), "{err}");
        let err = Config { tile_n: 16, ..split }.validate().unwrap_err().to_string();
        assert!(err.contains("kv_splits = 2") && err.contains("multiple of 16"), "{err}");
        let err = Config { tile_m: 16, ..split }.validate().unwrap_err().to_string();
        assert!(err.contains("tile_m = 16") && err.contains("per split"), "{err}");
        let err = Config { load_warps: 1, softmax_warps: 1, ..split }.validate().unwrap_err().to_string();
        assert!(err.contains("softmax warps"), "{err}");
        assert!(Config { kv_splits: 0, ..split }.validate().is_err());
    }

    #[test]
    fn settings_read_back_what_display_writes() {
        let configs = [
            Config::default(),
            Config { tile_m: 128, warps: 8, load_warps: 1, softmax_warps: 8, stages: 3, ..Config::default() },
            Config {
                persistent: true,
                causal: true,
                varlen: true,
                a_in_smem: true,
                kv_splits: 2,
                ..Config::default()
            },
            Config { dtype: DType::Bf16, head_dim: 256, tile_n: 32, ..Config::default() },
            Config { tile_m: 128, warps: 8, target: Target::Sm90a, ..Config::default() },
            Config {
                tile_m: 128,
                warps: 8,
                load_warps: 4,
                overlap: true,
                target: Target::Sm90a,
                ..Config::default()
            },
            Config { target: Target::Sm89, ..Config::default() },
        ];
        for c in configs {
            assert_eq!(Config::default().with_settings(&c.to_string()), Ok(c), "{c}");
        }
        let c = Config::default().with_settings("stages=3, persistent,causal=false dtype=bf16").unwrap();
        assert_eq!((c.stages, c.persistent, c.causal, c.dtype), (3, true, false, DType::Bf16));
        assert_eq!(Config::default().with_settings("target=sm_90a").unwrap().target, Target::Sm90a);
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let err = |s: &str| Config::default().with_settings(s).unwrap_err().to_string();
        assert!(err("tiles=3").contains("unknown setting `tiles`"), "{}", err("tiles=3"));
        assert!(err("tiles=3").contains("tile_m, tile_n"), "{}", err("tiles=3"));
        assert!(err("stages=two").contains("`two` is not a whole number"), "{}", err("stages=two"));
        assert!(err("persistent=yes").contains("`persistent=true|false`"), "{}", err("persistent=yes"));
        assert!(err("dtype=f32").contains("dtype=bf16"), "{}", err("dtype=f32"));
        assert!(err("stages").contains("expected `name=value`"), "{}", err("stages"));
        assert!(err("target=sm_80").contains("target=sm_90a"), "{}", err("target=sm_80"));
    }

    #[test]
    fn unsupported_head_dim_is_rejected() {
        let cfg = Config { head_dim: 80, ..Config::default() };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("head_dim = 80") && err.contains("[32, 64, 96, 128, 256]"), "{err}");
        Config::default().with_head_dim(256).validate().unwrap();
        assert_eq!(Config::default().with_head_dim(256).tile_n, 32);
        assert_eq!(Config::default().with_head_dim(128).tile_n, 64);
        assert_eq!(Config::default().with_head_dim(256).default_scale(), 0.0625);
    }
}
