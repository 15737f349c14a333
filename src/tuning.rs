//! The autotuner's results: a versioned JSON table of the fastest config per (kernel, GPU,
//! dtype, head dim, causal, size class), and how a launch picks its config from it by default.
//!
//! `tuning/attention.json` is compiled in ([`Table::builtin`]); `FLASHCORE_TUNING=path` points
//! the runtime at another file; the user's tuning cache goes over either ([`Table::active`]).
//! `examples/autotune.rs` writes both, and [`crate::autotune::FirstUse`] the cache.
//!
//! Entries record the GPU they were tuned on by name and by its properties ([`GpuProps`]), so
//! that tuning carries across GPUs ([`Table::pick`]): a launch takes the entry of this GPU, else
//! one of a GPU with the same compute capability and limits (an H200 takes an H100's), else one
//! of the same compute capability; never one that does not fit the device, and never another
//! GPU's entry for a target its search did not weigh against this device's best (an sm_89 entry
//! from before the sm_90a backend, on a Hopper). A shape no entry covers gets, on a device of
//! compute capability 9.0, FlashCore's default for its kind of key ([`Source::Default`]: the
//! H200's winners); elsewhere (an untuned head dim, another architecture) the kernel's declared
//! config, or the nearest smaller pipeline of it that fits.
//!
//! ```
//! use flashcore::kernels::attention;
//! use flashcore::tuning::{Gpu, GpuProps, Source, Table};
//!
//! // A GPU of an architecture the table has no entry for (compute capability 8.0, an A100's)
//! // gets the declared config.
//! let a100 = GpuProps { compute_capability: [8, 0], sms: 108, ..GpuProps::L4 };
//! let gpu = Gpu { name: "no such GPU".into(), props: a100 };
//! let (config, source) = Table::builtin().pick("attention", &gpu, attention::CONFIG, [1, 8, 512, 512], &|_| Ok(()));
//! assert_eq!((config, source), (attention::CONFIG, Source::Declared));
//! // Another Ada GPU (compute capability 8.9) takes the L4's entries, chosen by the occupancy
//! // model, and says so.
//! let ada = Gpu { name: "an Ada GPU".into(), props: GpuProps { sms: 128, ..GpuProps::L4 } };
//! let (_, source) = Table::builtin().pick("attention", &ada, attention::CONFIG, [1, 8, 512, 512], &|_| Ok(()));
//! assert!(matches!(source, Source::Modeled(ref key, _) if key.gpu == "NVIDIA L4"));
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Config, DType, Error, Target};

/// The table format this build reads and writes; a file of another version is refused.
pub const FORMAT_VERSION: u32 = 1;

/// The format tag every table file starts with.
pub const FORMAT_NAME: &str = "flashcore-tuning";

/// The table compiled into the library.
const BUILTIN: &str = include_str!("../tuning/attention.json");

/// How much work a launch is, in the classes the tuner keys on: the best tiles for a
/// launch-bound problem (a few hundred CTAs' worth of work) are not those for a long one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeClass {
    /// Under 2²² (query, key) pairs over all heads: one wave of small CTAs or less, latency-
    /// bound (the headline 1x8x512x512 is 2²¹): where split-KV pays.
    Tiny,
    /// Under 2²⁶ pairs: launch- and latency-bound, a wave or two (1x8x1024², 2²³).
    Small,
    /// Under 2³⁰ pairs: a few waves of CTAs (4x16x2048², 16x32x1024²).
    Medium,
    /// 2³⁰ pairs and up: tensor-core-bound (2x16x8192², 1x32x16384²).
    Large,
}

impl SizeClass {
    /// Every class, smallest first.
    pub const ALL: [SizeClass; 4] = [SizeClass::Tiny, SizeClass::Small, SizeClass::Medium, SizeClass::Large];

    /// The class of a `b × h` heads, `s` query rows × `sk` key rows problem.
    pub fn of(b: usize, h: usize, s: usize, sk: usize) -> SizeClass {
        let pairs = (b as u128) * (h as u128) * (s as u128) * (sk as u128);
        if pairs < 1 << 22 {
            SizeClass::Tiny
        } else if pairs < 1 << 26 {
            SizeClass::Small
        } else if pairs < 1 << 30 {
            SizeClass::Medium
        } else {
            SizeClass::Large
        }
    }

    /// The name tables use: `tiny`, `small`, `medium`, `large`.
    pub fn name(self) -> &'static str {
        match self {
            SizeClass::Tiny => "tiny",
            SizeClass::Small => "small",
            SizeClass::Medium => "medium",
            SizeClass::Large => "large",
        }
    }
}

/// What a table entry is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Key {
    /// The `#[flash_kernel]` function's name.
    pub kernel: String,
    /// The device name as the driver reports it (`NVIDIA H100 80GB HBM3`).
    pub gpu: String,
    /// `f16` or `bf16`.
    pub dtype: String,
    /// The head dim.
    pub head_dim: u32,
    /// Causal or not.
    pub causal: bool,
    /// How much work the launch is.
    pub size_class: SizeClass,
}

impl Key {
    /// The key of a launch.
    pub fn new(kernel: &str, gpu: &str, dtype: DType, head_dim: u32, causal: bool, class: SizeClass) -> Key {
        Key {
            kernel: kernel.to_string(),
            gpu: gpu.to_string(),
            dtype: dtype.name().to_string(),
            head_dim,
            causal,
            size_class: class,
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {}, {} D={}{} {}",
            self.kernel,
            self.gpu,
            self.dtype,
            self.head_dim,
            if self.causal { " causal" } else { "" },
            self.size_class.name()
        )
    }
}

/// The schedule fields of a [`Config`] the tuner chooses; head dim, dtype, causal and varlen
/// come from the launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Schedule {
    /// `Config::tile_m`.
    pub tile_m: u32,
    /// `Config::tile_n`.
    pub tile_n: u32,
    /// `Config::warps`.
    pub warps: u32,
    /// `Config::stages`.
    pub stages: u32,
    /// `Config::load_warps`.
    pub load_warps: u32,
    /// `Config::softmax_warps`.
    pub softmax_warps: u32,
    /// `Config::persistent`.
    pub persistent: bool,
    /// `Config::a_in_smem` (absent in tables written before it existed: false).
    #[serde(default)]
    pub a_in_smem: bool,
    /// `Config::kv_splits` (absent in tables written before split-KV existed: 1).
    #[serde(default = "one")]
    pub kv_splits: u32,
    /// `Config::overlap` (absent in tables written before it existed: false).
    #[serde(default)]
    pub overlap: bool,
    /// `Config::tma` (absent in tables written before it existed: false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tma: bool,
    /// `Config::pingpong` (absent in tables written before it existed: false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub pingpong: bool,
    /// `Config::target`, as its name (absent in tables written before sm_90a existed: sm_89).
    /// A launch from a tuned entry runs the target it was timed on.
    #[serde(default = "sm_89", with = "target_name")]
    pub target: Target,
}

fn one() -> u32 {
    1
}

fn sm_89() -> Target {
    Target::Sm89
}

/// A [`Target`] in JSON: its name (`"sm_89"`, `"sm_90a"`).
mod target_name {
    use super::Target;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(target: &Target, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(target.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        let name = String::deserialize(d)?;
        Target::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("`{name}` is not a target (sm_89, sm_90a)")))
    }
}

impl Schedule {
    /// The schedule fields of `config`.
    pub fn of(config: &Config) -> Schedule {
        Schedule {
            tile_m: config.tile_m,
            tile_n: config.tile_n,
            warps: config.warps,
            stages: config.stages,
            load_warps: config.load_warps,
            softmax_warps: config.softmax_warps,
            persistent: config.persistent,
            a_in_smem: config.a_in_smem,
            kv_splits: config.kv_splits,
            overlap: config.overlap,
            tma: config.tma,
            pingpong: config.pingpong,
            target: config.target,
        }
    }

    /// `base` with this schedule.
    pub fn apply(&self, base: Config) -> Config {
        Config {
            tile_m: self.tile_m,
            tile_n: self.tile_n,
            warps: self.warps,
            stages: self.stages,
            load_warps: self.load_warps,
            softmax_warps: self.softmax_warps,
            persistent: self.persistent,
            a_in_smem: self.a_in_smem,
            kv_splits: self.kv_splits,
            overlap: self.overlap,
            tma: self.tma,
            pingpong: self.pingpong,
            target: self.target,
            ..base
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// JSON has no NaN: serde_json writes it as `null`, which reads back as NaN here.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// How the winner did when it was tuned: enough to notice a regression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// The shape it was timed at: `[B, H, S, SK]`.
    pub shape: [usize; 4],
    /// Median time of one launch, in microseconds (NaN: not timed, [`Measured::not_timed`]).
    #[serde(deserialize_with = "nan_if_null")]
    pub median_us: f64,
    /// Attention FLOPs (4·D per (query, key) pair a row attends to, over B·H heads) over that
    /// time, in TFLOP/s.
    #[serde(deserialize_with = "nan_if_null")]
    pub tflops: f64,
    /// Relative L2 error against float64 on the check that preceded the timing.
    #[serde(deserialize_with = "nan_if_null")]
    pub rel_err: f64,
    /// How many candidates were timed for this key.
    pub candidates: usize,
    /// The declared config's time at the same shape, in the same run (NaN if it failed).
    #[serde(deserialize_with = "nan_if_null")]
    pub declared_us: f64,
}

impl Measured {
    /// What an entry chosen without timing records ([`crate::model`]): the shape it was chosen
    /// for and the candidates scored; NaN times (JSON null).
    pub fn not_timed(shape: [usize; 4], candidates: usize) -> Measured {
        Measured {
            shape,
            median_us: f64::NAN,
            tflops: f64::NAN,
            rel_err: f64::NAN,
            candidates,
            declared_us: f64::NAN,
        }
    }

    /// Whether the entry's schedule was timed on its GPU (not chosen by the occupancy model).
    pub fn timed(&self) -> bool {
        self.median_us.is_finite()
    }
}

/// One autotuner candidate's outcome: a line of its progress file (JSON lines), which a rerun
/// reads to skip what was done (resume).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// What was tuned.
    pub key: Key,
    /// The candidate.
    pub schedule: Schedule,
    /// `ok`, `wrong` (failed the float64 check: a bug), `spills`, `smem` (over the device's
    /// limit) or `error`.
    pub status: String,
    /// NaN unless `ok`.
    #[serde(deserialize_with = "nan_if_null")]
    pub median_us: f64,
    /// Relative L2 error against float64 (NaN unless checked).
    #[serde(deserialize_with = "nan_if_null")]
    pub rel_err: f64,
    /// Why a trial that is not `ok` failed.
    pub note: String,
}

impl Trial {
    /// The trial as one line of the progress file.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a trial always serializes")
    }

    /// The trials of a progress file's text, by key and schedule (a later line wins).
    pub fn parse_lines(text: &str) -> Result<HashMap<(Key, Schedule), Trial>, Error> {
        let mut done = HashMap::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let trial: Trial = serde_json::from_str(line)
                .map_err(|e| Error::Tuning(format!("progress line {}: {e}", i + 1)))?;
            done.insert((trial.key.clone(), trial.schedule), trial);
        }
        Ok(done)
    }
}

/// What decides which configs fit a GPU and how they run: recorded with each entry, so that an
/// entry tuned on one GPU serves another of the same kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GpuProps {
    /// `[major, minor]`.
    pub compute_capability: [u32; 2],
    /// Streaming multiprocessors.
    pub sms: u32,
    /// The most dynamic shared memory one CTA may opt in to, in bytes.
    pub shared_per_block: u32,
    /// Shared memory of one SM, in bytes.
    pub shared_per_sm: u32,
    /// 32-bit registers of one SM.
    pub registers_per_sm: u32,
}

impl GpuProps {
    /// The NVIDIA L4 (Ada, compute capability 8.9): 58 SMs, the limits of [`crate::occupancy::L4`].
    pub const L4: GpuProps = GpuProps::of_arch(&crate::occupancy::L4, [8, 9], 58);
    /// The H100 SXM and the H200 (Hopper, compute capability 9.0): 132 SMs, the limits of
    /// [`crate::occupancy::H100`].
    pub const HOPPER_SXM: GpuProps = GpuProps::of_arch(&crate::occupancy::H100, [9, 0], 132);

    /// A GPU with the per-SM limits of the occupancy model's `arch`.
    const fn of_arch(arch: &crate::occupancy::Arch, compute_capability: [u32; 2], sms: u32) -> GpuProps {
        GpuProps {
            compute_capability,
            sms,
            shared_per_block: arch.shared_bytes_per_cta,
            shared_per_sm: arch.shared_bytes_per_sm,
            registers_per_sm: arch.registers_per_sm,
        }
    }

    /// `(major, minor)` as the driver reports it.
    pub fn capability(&self) -> (i32, i32) {
        (self.compute_capability[0] as i32, self.compute_capability[1] as i32)
    }

    /// The target a launch on this GPU compiles for unless told otherwise
    /// ([`Target::for_compute_capability`]).
    pub fn best_target(&self) -> Target {
        let (major, minor) = self.capability();
        Target::for_compute_capability(major, minor)
    }
}

impl std::fmt::Display for GpuProps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [major, minor] = self.compute_capability;
        write!(
            f,
            "compute capability {major}.{minor}, {} SMs, {} KiB shared a CTA, {} KiB an SM, {}K registers an SM",
            self.sms,
            self.shared_per_block / 1024,
            self.shared_per_sm / 1024,
            self.registers_per_sm / 1024
        )
    }
}

/// The GPU a launch runs on: its name (an exact entry's key) and properties.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpu {
    /// The device name as the driver reports it.
    pub name: String,
    /// Its properties.
    pub props: GpuProps,
}

/// GPUs known by a short name, for tools run without them (`flashcore tuned --gpu`,
/// `autotune --model`): (alias, the driver's name, properties).
pub const KNOWN_GPUS: &[(&str, &str, GpuProps)] = &[
    ("h200", "NVIDIA H200", GpuProps::HOPPER_SXM),
    ("h100", "NVIDIA H100 80GB HBM3", GpuProps::HOPPER_SXM),
    ("gh200", "NVIDIA GH200 480GB", GpuProps::HOPPER_SXM),
    ("l4", "NVIDIA L4", GpuProps::L4),
];

impl Gpu {
    /// The known GPU `name` (its alias, any case, or the driver's name), if it is one of
    /// [`KNOWN_GPUS`].
    pub fn named(name: &str) -> Option<Gpu> {
        KNOWN_GPUS
            .iter()
            .find(|(alias, full, _)| alias.eq_ignore_ascii_case(name) || *full == name)
            .map(|(_, full, props)| Gpu { name: full.to_string(), props: *props })
    }

    /// The GPU the driver describes.
    pub fn of(info: &crate::runtime::DeviceInfo) -> Gpu {
        let (major, minor) = info.compute_capability;
        Gpu {
            name: info.name.clone(),
            props: GpuProps {
                compute_capability: [major.max(0) as u32, minor.max(0) as u32],
                sms: info.sm_count,
                shared_per_block: info.max_shared_per_block,
                shared_per_sm: info.shared_per_sm,
                registers_per_sm: info.registers_per_sm,
            },
        }
    }
}

/// One winner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// What it won for.
    #[serde(flatten)]
    pub key: Key,
    /// The properties of the GPU it was tuned on (absent in tables written before they were
    /// recorded: such an entry serves its own GPU only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<GpuProps>,
    /// The winning schedule.
    pub schedule: Schedule,
    /// How it did.
    pub measured: Measured,
}

/// The file: a format tag, its version, and the winners.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Always `flashcore-tuning`.
    pub format: String,
    /// [`FORMAT_VERSION`] when written by this build.
    pub version: u32,
    /// The winners, one per key.
    pub entries: Vec<Entry>,
}

/// Which rule of [`Table::pick`] found an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// Tuned on this GPU (by name).
    ThisGpu,
    /// Tuned on a GPU with the same compute capability, SM count, shared memory and registers.
    SameLimits,
    /// Tuned on a GPU with the same compute capability (other limits).
    SameCapability,
}

impl Match {
    const ALL: [Match; 3] = [Match::ThisGpu, Match::SameLimits, Match::SameCapability];

    /// Whether an entry tuned on `name` with `props` serves `gpu` under this rule.
    fn admits(self, name: &str, props: Option<&GpuProps>, gpu: &Gpu) -> bool {
        match self {
            Match::ThisGpu => name == gpu.name,
            Match::SameLimits => props == Some(&gpu.props),
            Match::SameCapability => {
                props.is_some_and(|p| p.compute_capability == gpu.props.compute_capability)
            }
        }
    }
}

/// Where a launch's config came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The table's entry for this key, found by this rule.
    Tuned(Key, Match),
    /// The table's entry for this key, found by this rule, chosen by the occupancy model for
    /// its GPU's limits and never timed ([`crate::model`]).
    Modeled(Key, Match),
    /// No entry covers the launch (or none that fits): the kernel's declared config (at this
    /// head dim).
    Declared,
    /// No entry covers the launch on a device whose best target is sm_90a: the schedule the
    /// H200's search chose for this kind of key (size class, head dim, causal), as a default.
    Default {
        /// The kind of key (`large D=128`).
        why: String,
    },
    /// The declared config does not fit the device either: this smaller pipeline of it does.
    Shrunk {
        /// What did not fit, and what does.
        why: String,
    },
}

impl Match {
    /// What a source adds to say which rule found its entry (nothing for this GPU's own).
    fn describe(self) -> &'static str {
        match self {
            Match::ThisGpu => "",
            Match::SameLimits => " (a GPU with the same compute capability and limits)",
            Match::SameCapability => " (a GPU of the same compute capability)",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Tuned(key, rule) => write!(f, "the tuning table's entry for {key}{}", rule.describe()),
            Source::Modeled(key, rule) => write!(
                f,
                "the tuning table's entry for {key}{}, chosen by the occupancy model (not timed)",
                rule.describe()
            ),
            Source::Declared => write!(f, "declared (no tuning table entry for this GPU's kind and shape)"),
            Source::Default { why } => write!(
                f,
                "FlashCore's default for compute capability 9.0 at {why} (no tuning table entry for this GPU's kind and shape)"
            ),
            Source::Shrunk { why } => write!(f, "declared, made to fit: {why}"),
        }
    }
}

impl Table {
    /// A table with no entries.
    pub fn empty() -> Table {
        Table { format: FORMAT_NAME.to_string(), version: FORMAT_VERSION, entries: vec![] }
    }

    /// Parses and checks a table: its format and version, and that every entry's schedule is a
    /// valid config at its head dim.
    pub fn from_json(text: &str) -> Result<Table, Error> {
        let table: Table = serde_json::from_str(text).map_err(|e| Error::Tuning(e.to_string()))?;
        if table.format != FORMAT_NAME || table.version != FORMAT_VERSION {
            return Err(Error::Tuning(format!(
                "format `{}` version {}, this build reads `{FORMAT_NAME}` version {FORMAT_VERSION}",
                table.format, table.version
            )));
        }
        for entry in &table.entries {
            let dtype = DType::from_name(&entry.key.dtype)
                .ok_or_else(|| Error::Tuning(format!("{}: unknown dtype", entry.key)))?;
            let config = entry.config(Config { dtype, ..Config::default() });
            config.validate().map_err(|e| Error::Tuning(format!("{}: {e}", entry.key)))?;
        }
        Ok(table)
    }

    /// The table compiled into the library.
    pub fn builtin() -> Table {
        // A test pins that the builtin file parses; should it not, no entry is better than a panic.
        Table::from_json(BUILTIN).unwrap_or_else(|_| Table::empty())
    }

    /// Reads a table file.
    pub fn load(path: &Path) -> Result<Table, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Tuning(format!("reading {}: {e}", path.display())))?;
        Table::from_json(&text).map_err(|e| Error::Tuning(format!("{}: {e}", path.display())))
    }

    /// The table launches use: the file `FLASHCORE_TUNING` names, else the builtin one, with
    /// the user's tuning cache ([`crate::tuning_cache`]) over it (a cached entry replaces the
    /// table's of its key; `FLASHCORE_CACHE_DIR` pointing at an empty directory leaves the cache
    /// out). A cache file that cannot be used is reported on stderr and ignored.
    pub fn active() -> Result<Table, Error> {
        let mut table = match std::env::var_os("FLASHCORE_TUNING") {
            Some(path) => Table::load(Path::new(&path))?,
            None => Table::builtin(),
        };
        if let Some(cache) = crate::tuning_cache::TuningCache::user() {
            let (cached, report) = cache.load();
            if let Some(why) = report {
                eprintln!("flashcore: the tuning cache {why}");
            }
            table.merge(cached);
        }
        Ok(table)
    }

    /// Adds every entry of `other`, each replacing the entry of its key.
    pub fn merge(&mut self, other: Table) {
        for entry in other.entries {
            self.insert(entry);
        }
    }

    /// The table as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a table always serializes");
        text.push('\n');
        text
    }

    /// Writes the table, sorted by key so that a re-tune's diff shows what changed.
    pub fn save(&mut self, path: &Path) -> Result<(), Error> {
        self.sort();
        std::fs::write(path, self.to_json())
            .map_err(|e| Error::Tuning(format!("writing {}: {e}", path.display())))
    }

    /// The table sorted by key (kernel, GPU, dtype, head dim, causal, size class).
    pub fn sorted(mut self) -> Table {
        self.sort();
        self
    }

    fn sort(&mut self) {
        self.entries.sort_by(|a, b| {
            let k = |e: &Entry| {
                (e.key.kernel.clone(), e.key.gpu.clone(), e.key.dtype.clone(), e.key.head_dim, e.key.causal)
            };
            k(a).cmp(&k(b))
                .then(a.key.size_class.name().cmp(b.key.size_class.name()))
                .then(a.schedule.target.name().cmp(b.schedule.target.name()))
        });
    }

    /// Adds `entry`, replacing the one with its key and target: a GPU that runs both targets
    /// keeps a winner for each (a launch that asks for one takes its own; one that does not,
    /// the faster).
    pub fn insert(&mut self, entry: Entry) {
        self.entries.retain(|e| e.key != entry.key || e.schedule.target != entry.schedule.target);
        self.entries.push(entry);
    }

    /// The config to launch `declared` (the kernel's declared config, already at the launch's
    /// head dim, dtype and causal) with on `gpu` for a `[b, h, s, sk]` problem. The first rule
    /// of [`Match`] with an entry for this kernel, head dim, causal flag and size class that
    /// `fits` the device wins; within a rule an entry of the launch's dtype comes first, then
    /// for bf16 the f16 entry (the two run the same instructions but for the conversions, and
    /// time alike: see docs/measurements), then the GPU with the nearest SM count, then the
    /// fastest measured. The rules after the first pass over entries for a target their GPU's
    /// search did not cover (see `drop_searched_without`). With no such entry, on a device whose
    /// best target is sm_90a, FlashCore's default for the kind of key that fits
    /// ([`Source::Default`]); else `declared`; should it not fit, the nearest smaller pipeline
    /// that does ([`Source::Shrunk`]). `fits` says why a config cannot run on the device (shared memory,
    /// threads, a target the device cannot load).
    pub fn pick(
        &self,
        kernel: &str,
        gpu: &Gpu,
        declared: Config,
        [b, h, s, sk]: [usize; 4],
        fits: &dyn Fn(&Config) -> Result<(), String>,
    ) -> (Config, Source) {
        let class = SizeClass::of(b, h, s, sk);
        let dtypes: &[DType] = match declared.dtype {
            DType::Bf16 => &[DType::Bf16, DType::F16],
            DType::F16 => &[DType::F16],
        };
        for rule in Match::ALL {
            for &dtype in dtypes {
                let mut found: Vec<&Entry> = self
                    .entries
                    .iter()
                    .filter(|e| {
                        e.key.kernel == kernel
                            && e.key.dtype == dtype.name()
                            && e.key.head_dim == declared.head_dim
                            && e.key.causal == declared.causal
                            && e.key.size_class == class
                            && rule.admits(&e.key.gpu, e.device.as_ref(), gpu)
                    })
                    .collect();
                if rule != Match::ThisGpu {
                    drop_searched_without(&mut found, gpu.props.best_target());
                }
                // The nearest SM count, then the fastest measured (all were timed at the size
                // class's representative shape), then by name for a stable order.
                let sms_off = |e: &Entry| e.device.map_or(0, |p| p.sms.abs_diff(gpu.props.sms));
                found.sort_by(|a, b| {
                    sms_off(a)
                        .cmp(&sms_off(b))
                        .then(a.measured.median_us.total_cmp(&b.measured.median_us))
                        .then(a.key.gpu.cmp(&b.key.gpu))
                });
                for entry in found {
                    let config = entry.config(declared);
                    if fits(&config).is_ok() {
                        let key = entry.key.clone();
                        let source = if entry.measured.timed() {
                            Source::Tuned(key, rule)
                        } else {
                            Source::Modeled(key, rule)
                        };
                        return (config, source);
                    }
                }
            }
        }
        if gpu.props.best_target() == Target::Sm90a {
            let class_name = class.name();
            for config in hopper_defaults(declared, class) {
                if fits(&config).is_ok() {
                    let why = format!("{class_name} D={}", declared.head_dim);
                    return (config, Source::Default { why });
                }
            }
        }
        shrink_to_fit(declared, fits)
    }
}

/// Drops from `found` (one key's entries of other GPUs) each entry whose target is another than
/// `best` (this device's best target) when its GPU has no entry of `best` for the key: that GPU's
/// search did not cover `best` (the H100's entries of 2026-11-24 predate the sm_90a backend),
/// so its choice of the other target says nothing about this device. A GPU whose search covered
/// both keeps a winner of each ([`Table::insert`]), and the faster of them is picked as before.
fn drop_searched_without(found: &mut Vec<&Entry>, best: Target) {
    // An entry that names no target runs on the device's best one: no choice to distrust.
    let runs_best = |e: &Entry| matches!(e.schedule.target, Target::Auto) || e.schedule.target == best;
    let covered: Vec<&str> = found.iter().filter(|e| runs_best(e)).map(|e| e.key.gpu.as_str()).collect();
    found.retain(|e| runs_best(e) || covered.contains(&e.key.gpu.as_str()));
}

/// The last rule before the declared config on a device whose best target is sm_90a, for a key
/// no entry covers: the schedules the H200's own search chose for each kind of key
/// (`tuning/attention.json`, 2026-12-02 and 03, both targets searched), best first, each followed
/// by simpler forms should the kernel not compile with one of its features (a variant with no
/// producer form, no overlap). Small grids take sm_89's split-KV, which beat every sm_90a
/// schedule there on the H200 (fewer CTAs than SMs: split-KV spreads the keys; sm_90a has no
/// split-KV yet).
fn hopper_defaults(declared: Config, class: SizeClass) -> Vec<Config> {
    let (d, causal) = (declared.head_dim, declared.causal);
    let sm90a = Config { target: Target::Sm90a, kv_splits: 1, kv_ctas: 1, softmax_warps: 0, ..declared };
    let producer = |tile_m: u32, tile_n: u32, stages: u32| Config {
        tile_m,
        tile_n,
        stages,
        warps: tile_m / 16,
        load_warps: 4,
        tma: true,
        ..sm90a
    };
    let split_kv = |tile_m: u32, tile_n: u32, warps: u32, load_warps: u32, stages: u32| Config {
        target: Target::Sm89,
        tile_m,
        tile_n,
        warps,
        load_warps,
        stages,
        kv_splits: 2,
        softmax_warps: 0,
        ..declared
    };
    let first = match class {
        SizeClass::Tiny | SizeClass::Small if d > 128 => {
            Config { persistent: true, tma: false, ..producer(64, 64, 2) }
        }
        SizeClass::Tiny => split_kv(32, if d <= 64 { 256 } else { 128 }, 4, 2, 3),
        SizeClass::Small if d <= 64 => split_kv(64, 256, 8, 0, 2),
        SizeClass::Small => Config { persistent: true, tma: false, ..producer(64, 128, 2) },
        // Persistent since Q comes from the producer (`passes::feed_loads`): 2026-12-03.
        _ if d <= 64 && !causal => Config { persistent: true, overlap: true, ..producer(192, 128, 2) },
        SizeClass::Large if d <= 64 => Config { persistent: true, overlap: true, ..producer(128, 256, 3) },
        _ if d <= 64 => Config { tile_m: 64, tile_n: 128, warps: 4, stages: 2, ..sm90a },
        _ => {
            let tile_n = if d <= 128 { 128 } else { 64 };
            Config { persistent: !causal, overlap: true, pingpong: causal, ..producer(128, tile_n, 2) }
        }
    };
    // Simpler forms of the first pick: without the overlap and pingpong, then without TMA.
    let mut picks = vec![first];
    if first.target == Target::Sm90a && first.load_warps > 0 {
        picks.push(Config { overlap: false, pingpong: false, ..first });
        picks.push(Config { overlap: false, pingpong: false, tma: false, ..first });
    }
    picks.retain(|c| c.validate().is_ok());
    picks
}

impl Table {
    /// [`Table::pick`] for the kernel `kernel` (its `program`) on `gpu`, with the fit check
    /// every launch needs ([`fits_device`]: the config's target, `requested` else its own else
    /// the device's, loads there, and its shared memory and threads are within the device's
    /// limits; with `requested`, no entry timed for the other target). A variant without an
    /// entry of its own takes the plain `attention` kernel's,
    /// whose loop it shares but for a little score code (the source's key then names
    /// `attention`).
    pub fn pick_kernel(
        &self,
        program: &crate::ir::source::Program,
        kernel: &str,
        gpu: &Gpu,
        declared: Config,
        shape: [usize; 4],
        requested: Option<Target>,
    ) -> (Config, Source) {
        // With a target asked for, an entry timed for the other one is not a pick: its schedule
        // won with other instructions (the H200's sm_90a winners spill as sm_89).
        let fits = |cfg: &Config| match requested {
            Some(t) if cfg.target != Target::Auto && cfg.target != t => {
                Err(format!("tuned for {}, {t} asked for", cfg.target))
            }
            _ => fits_device(program, gpu, cfg, requested),
        };
        let picked = self.pick(kernel, gpu, declared, shape, &fits);
        if kernel != "attention" && !matches!(picked.1, Source::Tuned(..) | Source::Modeled(..)) {
            let plain = self.pick("attention", gpu, declared, shape, &fits);
            if matches!(plain.1, Source::Tuned(..) | Source::Modeled(..)) {
                return plain;
            }
        }
        picked
    }
}

impl Table {
    /// The schedules other GPUs of `gpu`'s compute capability won `key` with (its kernel, dtype,
    /// head dim, causal flag and size class), applied to `base`: where a search for `gpu` starts
    /// (what carries across GPUs is a good first guess, and a search that is not exhaustive can
    /// miss it).
    pub fn seeds(&self, key: &Key, gpu: &Gpu, base: Config) -> Vec<Config> {
        let mut seeds: Vec<Config> = self
            .entries
            .iter()
            .filter(|e| {
                e.key.gpu != key.gpu
                    && Key { gpu: key.gpu.clone(), ..e.key.clone() } == *key
                    && Match::SameCapability.admits(&e.key.gpu, e.device.as_ref(), gpu)
            })
            .map(|e| e.config(base))
            .collect();
        seeds.dedup();
        seeds
    }
}

/// The config to launch the registered kernel `kernel` with on `device` for a `[b, h, s, sk]`
/// problem, and where it came from: [`Table::pick_kernel`] over the active table ([`Table::active`],
/// read once a process: the shipped entries, the user's tuning cache, or `FLASHCORE_TUNING`).
/// `base` is the launch's config before tuning: the kernel's declared one at the launch's head
/// dim, dtype, causal flag and target (`Target::Auto`: the device's). A variant without entries of
/// its own takes the plain `attention` kernel's schedule, as the example does. With
/// `FLASHCORE_AUTOTUNE=1`, a key with no entry tuned on this GPU is tuned first
/// ([`crate::autotune::FirstUse`]: within `FLASHCORE_AUTOTUNE_SECONDS`, default 60, the winner
/// kept in the user's tuning cache for the next process).
///
/// ```no_run
/// use flashcore::kernels::attention;
/// use flashcore::runtime::Device;
///
/// let device = Device::new(0)?;
/// let base = attention::CONFIG.with_head_dim(128);
/// let (config, source) = flashcore::tuning::tuned_config(&device, "attention", base, [2, 16, 8192, 8192])?;
/// println!("{config} ({source})");
/// # Ok::<(), flashcore::Error>(())
/// ```
pub fn tuned_config(
    device: &crate::runtime::Device,
    kernel: &str,
    base: Config,
    shape: [usize; 4],
) -> Result<(Config, Source), Error> {
    let entry = crate::registry::find(kernel)
        .ok_or_else(|| Error::Tuning(format!("no kernel `{kernel}` is registered (`flashcore list`)")))?;
    tuned_config_of(device, kernel, &(entry.program)(), base, shape)
}

/// [`tuned_config`] for the kernel `kernel` whose source is `program` (two modules may
/// register kernels of one name; the typed launchers know their own).
pub fn tuned_config_of(
    device: &crate::runtime::Device,
    kernel: &str,
    program: &crate::ir::source::Program,
    base: Config,
    shape: [usize; 4],
) -> Result<(Config, Source), Error> {
    /// The active table, and the picks made from it this process: a pick compiles each
    /// candidate to check that it fits, too slow to repeat at every launch.
    struct Active {
        table: Table,
        picks: Vec<((String, crate::ir::source::Program, Config, SizeClass), (Config, Source))>,
    }
    static ACTIVE: std::sync::OnceLock<Result<std::sync::Mutex<Active>, String>> = std::sync::OnceLock::new();
    let mut active = ACTIVE
        .get_or_init(|| {
            Table::active()
                .map(|table| std::sync::Mutex::new(Active { table, picks: vec![] }))
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Tuning(e.clone()))?
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let [b, h, s, sk] = shape;
    let class = SizeClass::of(b, h, s, sk);
    // The cheap fields first: comparing programs walks them.
    let same = |(name, prog, cfg, cls): &(String, crate::ir::source::Program, Config, SizeClass)| {
        name == kernel && *cfg == base && *cls == class && prog == program
    };
    if let Some((_, picked)) = active.picks.iter().find(|(k, _)| same(k)) {
        return Ok(picked.clone());
    }
    // A target `base` names, else FLASHCORE_TARGET's, is kept: an entry timed for the other
    // one is no pick (its schedule applied would name its own target).
    let requested = match base.target {
        Target::Auto => crate::target::requested()?,
        named => Some(named),
    };
    let entries = active.table.entries.len();
    let (mut config, source) = match crate::autotune::FirstUse::from_env()? {
        Some(tuner) => tuner.config_of(device, &mut active.table, kernel, program, base, shape, requested)?,
        None => active.table.pick_kernel(program, kernel, &Gpu::of(device.info()), base, shape, requested),
    };
    if let Some(target) = requested {
        config.target = target;
    }
    let picked = (config, source);
    if active.table.entries.len() != entries {
        // First use tuned a key: earlier picks may take its entry now.
        active.picks.clear();
    }
    active.picks.push(((kernel.to_string(), program.clone(), base, class), picked.clone()));
    Ok(picked)
}

/// Whether `cfg` can run `program` on `gpu`: the target it resolves to (`requested`, else its
/// own, else the device's) loads there, and its CTA's shared memory and threads are within the
/// device's limits; else why not.
pub fn fits_device(
    program: &crate::ir::source::Program,
    gpu: &Gpu,
    cfg: &Config,
    requested: Option<Target>,
) -> Result<(), String> {
    let (major, minor) = gpu.props.capability();
    let (cfg, _) = crate::target::choose(program, *cfg, Some((major, minor)), requested);
    if !cfg.target.runs_on(major, minor) {
        return Err(format!("{} PTX does not load on compute capability {major}.{minor}", cfg.target));
    }
    let kernel = crate::compile(program, &cfg).map_err(|e| e.to_string())?;
    let (shared, threads) = (kernel.ptx.shared_bytes, kernel.ptx.threads_per_cta);
    if shared > gpu.props.shared_per_block {
        return Err(format!(
            "{shared} B of shared memory a CTA, the device allows {}",
            gpu.props.shared_per_block
        ));
    }
    if threads > 1024 {
        return Err(format!("{threads} threads a CTA, the device allows 1024"));
    }
    Ok(())
}

/// `declared` if it fits, else the first of fewer stages, then smaller K/V tiles, that does.
fn shrink_to_fit(declared: Config, fits: &dyn Fn(&Config) -> Result<(), String>) -> (Config, Source) {
    let why = match fits(&declared) {
        Ok(()) => return (declared, Source::Declared),
        Err(why) => why,
    };
    let mut tile_n = declared.tile_n;
    while tile_n >= 16 {
        for stages in (1..=declared.stages).rev() {
            let smaller = Config { tile_n, stages, ..declared };
            if smaller != declared && smaller.validate().is_ok() && fits(&smaller).is_ok() {
                let why =
                    format!("the declared config does not fit ({why}); stages {stages}, tile_n {tile_n} do");
                return (smaller, Source::Shrunk { why });
            }
        }
        tile_n /= 2;
    }
    // Nothing smaller fits either: the launch reports why.
    (declared, Source::Declared)
}

impl Entry {
    /// `base` (the launch's head dim, dtype, causal, varlen) with this entry's schedule.
    pub fn config(&self, base: Config) -> Config {
        self.schedule.apply(Config { head_dim: self.key.head_dim, causal: self.key.causal, ..base })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(class: SizeClass, tile_m: u32) -> Entry {
        let declared = Config::default();
        Entry {
            key: Key::new("attention", "GPU X", DType::F16, 64, false, class),
            device: Some(GpuProps::HOPPER_SXM),
            schedule: Schedule { tile_m, warps: 4, ..Schedule::of(&declared) },
            measured: Measured {
                shape: [1, 8, 512, 512],
                median_us: 10.0,
                tflops: 50.0,
                rel_err: 2.7e-4,
                candidates: 12,
                declared_us: 12.0,
            },
        }
    }

    #[test]
    fn size_classes_split_at_powers_of_two() {
        assert_eq!(SizeClass::of(1, 8, 512, 512), SizeClass::Tiny);
        assert_eq!(SizeClass::of(1, 8, 1024, 1024), SizeClass::Small);
        assert_eq!(SizeClass::of(4, 16, 2048, 2048), SizeClass::Medium);
        assert_eq!(SizeClass::of(16, 32, 1024, 1024), SizeClass::Medium);
        assert_eq!(SizeClass::of(2, 16, 8192, 8192), SizeClass::Large);
        assert_eq!(SizeClass::of(1, 32, 16384, 16384), SizeClass::Large);
        assert_eq!(SizeClass::of(0, 8, 512, 512), SizeClass::Tiny);
        assert_eq!(SizeClass::of(1, 8, 2048, 2048), SizeClass::Small);
    }

    fn gpu(name: &str, props: GpuProps) -> Gpu {
        Gpu { name: name.into(), props }
    }

    /// Every config fits.
    fn anything(_: &Config) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn a_table_round_trips_and_picks_by_key() {
        let mut table = Table::empty();
        table.insert(entry(SizeClass::Small, 64));
        table.insert(entry(SizeClass::Large, 128));
        table.insert(entry(SizeClass::Large, 128));
        assert_eq!(table.entries.len(), 2, "insert replaces an entry with the same key");
        let back = Table::from_json(&table.to_json()).unwrap();
        assert_eq!(back, table);
        let x = gpu("GPU X", GpuProps::HOPPER_SXM);
        let declared = Config { tile_m: 32, warps: 2, ..Config::default() };
        let (cfg, source) = back.pick("attention", &x, declared, [2, 16, 8192, 8192], &anything);
        assert_eq!((cfg.tile_m, cfg.warps), (128, 4));
        assert!(matches!(source, Source::Tuned(ref k, Match::ThisGpu) if k.size_class == SizeClass::Large));
        // bf16 without entries of its own takes f16's, and says so.
        let bf16 = Config { dtype: DType::Bf16, ..declared };
        let (cfg, source) = back.pick("attention", &x, bf16, [2, 16, 8192, 8192], &anything);
        assert_eq!((cfg.tile_m, cfg.dtype), (128, DType::Bf16));
        assert!(matches!(source, Source::Tuned(ref k, _) if k.dtype == "f16"));
        // Another architecture: the declared config; another head dim or causal flag on the
        // Hopper: FlashCore's default for compute capability 9.0 at that kind of key.
        let l4 = gpu("NVIDIA L4", GpuProps::L4);
        let d64 = Config { head_dim: 64, ..declared };
        assert_eq!(back.pick("attention", &l4, d64, [2, 16, 8192, 8192], &anything), (d64, Source::Declared));
        for (d, causal) in [(128, false), (64, true)] {
            let declared = Config { head_dim: d, causal, ..declared };
            let (cfg, source) = back.pick("attention", &x, declared, [2, 16, 8192, 8192], &anything);
            assert_eq!((cfg.target, cfg.head_dim, cfg.causal), (Target::Sm90a, d, causal));
            assert_eq!(source, Source::Default { why: format!("large D={d}") });
        }
    }

    /// Issue 20's fallback: another GPU's entry whose search did not cover this device's best
    /// target (the H100's sm_89 entries of 2026-11-24, from before the sm_90a backend) is not
    /// taken on a Hopper; one whose GPU has an sm_90a winner for the key too competes by time;
    /// with nothing left, FlashCore's default for the kind of key, which fits the device.
    #[test]
    fn another_gpus_entries_searched_without_this_devices_target_are_not_taken() {
        let shape = [2, 16, 8192, 8192];
        let with_target = |gpu_name: &str, target: Target, tile_m: u32, median_us: f64| {
            let mut e = entry(SizeClass::Large, tile_m);
            e.key.gpu = gpu_name.into();
            e.schedule.target = target;
            e.measured.median_us = median_us;
            e
        };
        let h200 = gpu("NVIDIA H200", GpuProps::HOPPER_SXM);
        let declared = Config { tile_m: 16, warps: 1, ..Config::default() };
        // Only an sm_89 entry from a GPU that never searched sm_90a: the default, not it.
        let mut table = Table::empty();
        table.insert(with_target("NVIDIA H100 80GB HBM3", Target::Sm89, 128, 100.0));
        let (cfg, source) = table.pick("attention", &h200, declared, shape, &anything);
        assert_eq!(source, Source::Default { why: "large D=64".into() });
        assert_eq!((cfg.tile_m, cfg.warps, cfg.load_warps, cfg.target), (192, 12, 4, Target::Sm90a));
        assert!(source.to_string().contains("default for compute capability 9.0"), "{source}");
        // The same GPU's sm_90a winner too: both compete, the faster is taken.
        table.insert(with_target("NVIDIA H100 80GB HBM3", Target::Sm90a, 64, 150.0));
        let (cfg, source) = table.pick("attention", &h200, declared, shape, &anything);
        assert_eq!((cfg.tile_m, cfg.target), (128, Target::Sm89), "{source:?}");
        // On this GPU's own entries no rule is second-guessed.
        let own = gpu("NVIDIA H100 80GB HBM3", GpuProps::HOPPER_SXM);
        let mut table = Table::empty();
        table.insert(with_target("NVIDIA H100 80GB HBM3", Target::Sm89, 128, 100.0));
        let (cfg, source) = table.pick("attention", &own, declared, shape, &anything);
        assert!(cfg.tile_m == 128 && matches!(source, Source::Tuned(_, Match::ThisGpu)), "{source:?}");
        // An L4 (best target sm_89) takes an sm_89 entry of another GPU of its kind.
        let mut table = Table::empty();
        let mut l4_entry = with_target("NVIDIA L4", Target::Sm89, 128, 100.0);
        l4_entry.device = Some(GpuProps::L4);
        table.insert(l4_entry);
        let other_l4 = gpu("an L4-like GPU", GpuProps::L4);
        let (cfg, source) = table.pick("attention", &other_l4, declared, shape, &anything);
        assert!(cfg.tile_m == 128 && matches!(source, Source::Tuned(_, Match::SameLimits)), "{source:?}");
        // Every kind of key's default validates, and a default that does not fit is passed over.
        for class in [SizeClass::Tiny, SizeClass::Small, SizeClass::Medium, SizeClass::Large] {
            for d in [64, 128, 256] {
                for causal in [false, true] {
                    let picks = hopper_defaults(Config { head_dim: d, causal, ..declared }, class);
                    assert!(!picks.is_empty(), "{class:?} D={d} causal {causal}");
                }
            }
        }
        let no_producer = |c: &Config| if c.load_warps > 0 { Err("no producer".to_string()) } else { Ok(()) };
        let (cfg, _) = Table::empty().pick("attention", &h200, declared, shape, &no_producer);
        assert_eq!(cfg, declared, "no default fits: the declared config");
    }

    #[test]
    fn a_gpu_keeps_a_winner_per_target_and_a_launch_takes_the_faster() {
        let timed = |target: Target, median_us: f64| {
            let mut e = entry(SizeClass::Large, if target == Target::Sm90a { 128 } else { 64 });
            e.schedule.target = target;
            e.measured.median_us = median_us;
            e
        };
        let mut table = Table::empty();
        table.insert(timed(Target::Sm89, 3400.0));
        table.insert(timed(Target::Sm90a, 2300.0));
        table.insert(timed(Target::Sm90a, 2200.0));
        assert_eq!(table.entries.len(), 2, "one entry per key and target");
        let x = gpu("GPU X", GpuProps::HOPPER_SXM);
        let shape = [2, 16, 8192, 8192];
        let (cfg, _) = table.pick("attention", &x, Config::default(), shape, &anything);
        assert_eq!((cfg.target, cfg.tile_m), (Target::Sm90a, 128), "the faster target's");
        // Asking for sm_89 (the fit check refuses the other target's): its own entry.
        let sm89_only =
            |c: &Config| if c.target == Target::Sm90a { Err("sm_90a".to_string()) } else { Ok(()) };
        let (cfg, source) = table.pick("attention", &x, Config::default(), shape, &sm89_only);
        assert_eq!((cfg.target, cfg.tile_m), (Target::Sm89, 64));
        assert!(matches!(source, Source::Tuned(_, Match::ThisGpu)));
    }

    #[test]
    fn a_search_starts_from_other_gpus_of_the_same_capability() {
        let mut table = Table::empty();
        let on = |name: &str, props: Option<GpuProps>, class: SizeClass, tile_m: u32| Entry {
            key: Key::new("attention", name, DType::F16, 64, false, class),
            device: props,
            ..entry(class, tile_m)
        };
        table.insert(on("GPU X", Some(GpuProps::HOPPER_SXM), SizeClass::Tiny, 32));
        table.insert(on("GPU Y", Some(GpuProps { sms: 114, ..GpuProps::HOPPER_SXM }), SizeClass::Tiny, 64));
        table.insert(on("GPU Y", Some(GpuProps::HOPPER_SXM), SizeClass::Large, 128));
        table.insert(on("an L4", Some(GpuProps::L4), SizeClass::Tiny, 16));
        table.insert(on("an old entry", None, SizeClass::Tiny, 16));
        let h200 = gpu("GPU Z", GpuProps::HOPPER_SXM);
        let key = Key::new("attention", "GPU Z", DType::F16, 64, false, SizeClass::Tiny);
        let seeds: Vec<u32> = table.seeds(&key, &h200, Config::default()).iter().map(|c| c.tile_m).collect();
        // X and Y (same capability, any limits); not the L4, not an entry without properties,
        // not another size class.
        assert_eq!(seeds, [32, 64]);
        // A GPU's own entry is not a seed for itself.
        let x = Key { gpu: "GPU X".into(), ..key };
        let seeds: Vec<u32> = table.seeds(&x, &h200, Config::default()).iter().map(|c| c.tile_m).collect();
        assert_eq!(seeds, [64]);
    }

    #[test]
    fn tuning_carries_to_gpus_of_the_same_kind_in_order_and_never_past_the_limits() {
        let shape = [2, 16, 8192, 8192];
        let at = |gpu_name: &str, device: Option<GpuProps>, tile_m: u32| Entry {
            key: Key::new("attention", gpu_name, DType::F16, 64, false, SizeClass::Large),
            device,
            ..entry(SizeClass::Large, tile_m)
        };
        let pcie = GpuProps { sms: 114, shared_per_block: 227 * 1024, ..GpuProps::HOPPER_SXM };
        let mut table = Table::empty();
        table.insert(at("NVIDIA H100 80GB HBM3", Some(GpuProps::HOPPER_SXM), 128));
        table.insert(at("NVIDIA H100 PCIe", Some(pcie), 64));
        table.insert(at("an old entry", None, 32));
        let declared = Config { tile_m: 16, warps: 1, ..Config::default() };
        let pick = |g: &Gpu, fits: &dyn Fn(&Config) -> Result<(), String>| {
            let (cfg, source) = table.pick("attention", g, declared, shape, fits);
            (cfg.tile_m, source)
        };
        // This GPU's own entry first, even where another has the same limits.
        let (m, source) = pick(&gpu("NVIDIA H100 PCIe", pcie), &anything);
        assert!(m == 64 && matches!(source, Source::Tuned(_, Match::ThisGpu)), "{source:?}");
        // An H200: the H100 SXM's limits exactly.
        let h200 = gpu("NVIDIA H200", GpuProps::HOPPER_SXM);
        let (m, source) = pick(&h200, &anything);
        assert!(
            m == 128
                && matches!(source, Source::Tuned(ref k, Match::SameLimits) if k.gpu == "NVIDIA H100 80GB HBM3")
        );
        assert!(source.to_string().contains("same compute capability and limits"), "{source}");
        // A Hopper with other limits: the same capability, the nearest SM count first.
        let other = gpu("H100 NVL", GpuProps { sms: 120, ..pcie });
        let (m, source) = pick(&other, &anything);
        assert!(m == 64 && matches!(source, Source::Tuned(_, Match::SameCapability)), "{source:?}");
        // An entry that does not fit is passed over, by every rule.
        let no_m128 =
            |c: &Config| if c.tile_m == 128 { Err("too much shared memory".to_string()) } else { Ok(()) };
        let (m, source) = pick(&h200, &no_m128);
        assert!(m == 64 && matches!(source, Source::Tuned(_, Match::SameCapability)), "{source:?}");
        // An entry without properties serves its own GPU only.
        assert_eq!(pick(&gpu("an old entry", GpuProps::L4), &anything).0, 32);
        assert_eq!(pick(&gpu("another", GpuProps::L4), &anything), (16, Source::Declared));
    }

    #[test]
    fn a_declared_config_that_does_not_fit_shrinks_its_pipeline_until_it_does() {
        let declared = Config { tile_n: 128, stages: 3, ..Config::default() };
        let small = |c: &Config| {
            let bytes = c.tile_n * c.stages;
            if bytes <= 128 {
                Ok(())
            } else {
                Err(format!("{bytes} > 128"))
            }
        };
        let gpu = gpu("tiny", GpuProps::L4);
        let (cfg, source) = Table::empty().pick("attention", &gpu, declared, [1, 8, 512, 512], &small);
        assert_eq!((cfg.tile_n, cfg.stages), (128, 1));
        assert!(source.to_string().contains("does not fit (384 > 128)"), "{source}");
        // Nothing fits: the declared config, whose launch then says why.
        let (cfg, source) =
            Table::empty().pick("attention", &gpu, declared, [1, 8, 512, 512], &|_| Err("no".into()));
        assert_eq!((cfg, source), (declared, Source::Declared));
    }

    #[test]
    fn the_device_fit_check_compiles_the_config_for_the_device() {
        use crate::kernels::attention;
        let program = attention::program();
        let hopper = gpu("NVIDIA H200", GpuProps::HOPPER_SXM);
        let l4 = gpu("NVIDIA L4", GpuProps::L4);
        let big =
            Config { head_dim: 128, tile_m: 128, tile_n: 128, warps: 8, stages: 3, ..attention::CONFIG };
        // 128 · 128 · 2 B a K or V tile, three stages of both, and the Q tile: over the L4's 99 KiB.
        let err = fits_device(&program, &l4, &big, None).unwrap_err();
        assert!(err.contains("B of shared memory a CTA, the device allows 101376"), "{err}");
        assert_eq!(fits_device(&program, &hopper, &big, None), Ok(()));
        // sm_90a PTX loads on compute capability 9.0 only.
        let wgmma = Config { target: Target::Sm90a, ..attention::CONFIG };
        let err = fits_device(&program, &l4, &wgmma, None).unwrap_err();
        assert!(err.contains("sm_90a PTX does not load on compute capability 8.9"), "{err}");
        assert_eq!(fits_device(&program, &l4, &wgmma, Some(Target::Sm89)), Ok(()));
        // An entry too big for a GPU of its capability and other limits is passed over, and so
        // is the declared config (80 KiB at two stages): one stage of it fits.
        let mut table = Table::empty();
        table.insert(Entry {
            key: Key::new("attention", "NVIDIA H100 80GB HBM3", DType::F16, 128, false, SizeClass::Large),
            device: Some(GpuProps::HOPPER_SXM),
            schedule: Schedule::of(&big),
            ..entry(SizeClass::Large, 64)
        });
        let small_hopper =
            gpu("a Hopper with 64 KiB", GpuProps { shared_per_block: 64 * 1024, ..GpuProps::HOPPER_SXM });
        let declared = attention::CONFIG.with_head_dim(128);
        let shape = [2, 16, 8192, 8192];
        let (cfg, source) = table.pick_kernel(&program, "attention", &small_hopper, declared, shape, None);
        assert_eq!(cfg, Config { stages: 1, ..declared });
        assert!(
            source.to_string().contains("81920 B of shared memory a CTA, the device allows 65536"),
            "{source}"
        );
        let (cfg, source) = table.pick_kernel(&program, "attention", &hopper, declared, shape, None);
        assert_eq!(cfg.tile_n, 128);
        assert!(matches!(source, Source::Tuned(_, Match::SameLimits)), "{source:?}");
    }

    #[test]
    fn a_variant_without_entries_takes_the_plain_kernels() {
        use crate::kernels::variants::softcap_attention;
        let program = softcap_attention::program();
        let hopper = gpu("NVIDIA H200", GpuProps::HOPPER_SXM);
        let mut table = Table::empty();
        table.insert(Entry {
            key: Key::new("attention", "NVIDIA H200", DType::F16, 64, false, SizeClass::Large),
            ..entry(SizeClass::Large, 128)
        });
        let declared = softcap_attention::CONFIG;
        let (cfg, source) =
            table.pick_kernel(&program, "softcap_attention", &hopper, declared, [2, 16, 8192, 8192], None);
        assert_eq!(cfg.tile_m, 128);
        assert!(
            matches!(source, Source::Tuned(ref k, Match::ThisGpu) if k.kernel == "attention"),
            "{source:?}"
        );
        // Its own entry first.
        table.insert(Entry {
            key: Key::new("softcap_attention", "NVIDIA H200", DType::F16, 64, false, SizeClass::Large),
            ..entry(SizeClass::Large, 64)
        });
        let (cfg, source) =
            table.pick_kernel(&program, "softcap_attention", &hopper, declared, [2, 16, 8192, 8192], None);
        assert_eq!(cfg.tile_m, 64);
        assert!(matches!(source, Source::Tuned(ref k, _) if k.kernel == "softcap_attention"), "{source:?}");
    }

    #[test]
    fn an_entry_without_device_properties_reads_and_writes_without_them() {
        let mut table = Table::empty();
        table.insert(Entry { device: None, ..entry(SizeClass::Small, 64) });
        let json = table.to_json();
        assert!(!json.contains("\"device\""), "{json}");
        assert_eq!(Table::from_json(&json).unwrap(), table);
    }

    #[test]
    fn trials_round_trip_through_the_progress_file_failed_ones_too() {
        let ok = Trial {
            key: entry(SizeClass::Small, 64).key,
            schedule: Schedule::of(&Config::default()),
            status: "ok".into(),
            median_us: 10.5,
            rel_err: 2.7e-4,
            note: String::new(),
        };
        let spilled = Trial {
            schedule: Schedule { tile_m: 128, ..ok.schedule },
            status: "spills".into(),
            median_us: f64::NAN,
            rel_err: f64::NAN,
            note: "255 registers, 380 bytes spilled".into(),
            ..ok.clone()
        };
        let text = format!("{}\n{}\n\n", ok.to_line(), spilled.to_line());
        let done = Trial::parse_lines(&text).unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(done[&(ok.key.clone(), ok.schedule)], ok);
        let back = &done[&(spilled.key.clone(), spilled.schedule)];
        assert!(back.median_us.is_nan() && back.rel_err.is_nan() && back.status == "spills");
        let err = Trial::parse_lines("{}").unwrap_err().to_string();
        assert!(err.contains("progress line 1"), "{err}");
        // A winner whose declared config failed (NaN) still reads back.
        let mut table = Table::empty();
        let mut winner = entry(SizeClass::Small, 64);
        winner.measured.declared_us = f64::NAN;
        table.insert(winner);
        assert!(Table::from_json(&table.to_json()).unwrap().entries[0].measured.declared_us.is_nan());
        // An entry the occupancy model chose: every time null, read back as not timed, and a
        // pick of it says so.
        let mut table = Table::empty();
        table.insert(Entry {
            measured: Measured::not_timed([1, 8, 512, 512], 40),
            ..entry(SizeClass::Tiny, 64)
        });
        let back = Table::from_json(&table.to_json()).unwrap();
        assert!(!back.entries[0].measured.timed());
        let x = gpu("GPU X", GpuProps::HOPPER_SXM);
        let (_, source) = back.pick("attention", &x, Config::default(), [1, 8, 512, 512], &anything);
        assert!(matches!(source, Source::Modeled(_, Match::ThisGpu)), "{source:?}");
        assert!(source.to_string().contains("chosen by the occupancy model (not timed)"), "{source}");
    }

    #[test]
    fn bad_tables_are_errors_that_say_why() {
        let mut table = Table::empty();
        table.version = FORMAT_VERSION + 1;
        let err = Table::from_json(&table.to_json()).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
        let mut table = Table::empty();
        table.insert(entry(SizeClass::Small, 40));
        let err = Table::from_json(&table.to_json()).unwrap_err().to_string();
        assert!(err.contains("tile_m = 40"), "{err}");
        assert!(Table::from_json("{").is_err());
    }

    #[test]
    fn a_schedule_written_before_a_in_smem_and_split_kv_existed_reads_as_without_them() {
        let old = r#"{"tile_m":128,"tile_n":64,"warps":4,"stages":2,"load_warps":0,"softmax_warps":0,"persistent":true}"#;
        let schedule: Schedule = serde_json::from_str(old).unwrap();
        assert!(!schedule.a_in_smem && schedule.persistent && schedule.kv_splits == 1);
        let applied = Schedule { a_in_smem: true, ..schedule }.apply(Config::default());
        assert!(applied.a_in_smem && applied.tile_m == 128 && applied.kv_splits == 1);
        let split = Schedule { tile_m: 32, warps: 4, kv_splits: 2, ..schedule };
        let applied = split.apply(Config::default());
        assert_eq!((applied.kv_splits, applied.rows_per_warp()), (2, 16));
        assert_eq!(Schedule::of(&applied), split);
        assert_eq!(schedule.target, Target::Sm89);
    }

    #[test]
    fn a_schedule_keeps_its_target_by_name() {
        let hopper =
            Schedule::of(&Config { tile_m: 128, warps: 8, target: Target::Sm90a, ..Config::default() });
        let json = serde_json::to_string(&hopper).unwrap();
        assert!(json.contains(r#""target":"sm_90a""#), "{json}");
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), hopper);
        assert_eq!(hopper.apply(Config::default()).target, Target::Sm90a);
        let bad = json.replace("sm_90a", "sm_99");
        let err = serde_json::from_str::<Schedule>(&bad).unwrap_err().to_string();
        assert!(err.contains("`sm_99` is not a target"), "{err}");
    }

    #[test]
    fn the_builtin_table_parses_and_is_valid() {
        let table = Table::from_json(BUILTIN).unwrap();
        let mut modeled = 0;
        for entry in &table.entries {
            assert_eq!(entry.key.kernel, "attention");
            // Every shipped entry records its GPU's properties, so it serves GPUs of its kind.
            let props = entry.device.unwrap_or_else(|| panic!("{}: no GPU properties", entry.key));
            if entry.measured.timed() {
                assert!(entry.measured.rel_err < 2e-3, "{}: {}", entry.key, entry.measured.rel_err);
                assert_eq!(props, GpuProps::HOPPER_SXM, "{}", entry.key);
            } else {
                // The L4 section: chosen by the occupancy model, sm_89, for the L4's limits.
                assert_eq!((props, entry.schedule.target), (GpuProps::L4, Target::Sm89), "{}", entry.key);
                assert!(entry.measured.candidates > 0, "{}", entry.key);
                modeled += 1;
            }
        }
        assert_eq!(modeled, 16, "the L4 section: D 64 and 128, causal or not, four size classes");
    }
}
