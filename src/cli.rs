//! The `flashcore` command: shows what the compiler did with a kernel, for any config.
//!
//! `flashcore list` names the kernels linked into the program (every `#[flash_kernel]` registers
//! itself in [`crate::registry`]); `emit` prints the IR after any pass, or the PTX; `check`
//! gives the protocol check's verdict, the shared-memory budget, ptxas's resource report and the
//! occupancy they allow on the L4 (sm_89) and the H100 (sm_90); `schedule` draws the
//! warp-specialized schedule, as text or SVG; `tuned` says which config a launch takes on a GPU
//! for a shape, and which rule of the tuning table picked it.
//!
//! The `flashcore` binary sees the crate's own kernels. A crate with kernels of its own gets the
//! same command over them with a binary of one line:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     flashcore::cli::main()
//! }
//! ```
//!
//! [`run`] is the command without the process around it:
//!
//! ```
//! let mut out = Vec::new();
//! flashcore::cli::run(&["emit", "attention", "--config", "stages=3", "--after", "pipeline"], &mut out)?;
//! assert!(String::from_utf8(out).unwrap().contains("wait_group"));
//! # Ok::<(), flashcore::cli::CliError>(())
//! ```

use std::io::Write;
use std::process::ExitCode;

use crate::occupancy::{archs_for, occupancy, Arch, Limit, L4};
use crate::registry::{self, KernelEntry};
use crate::{ir, ptxas, Config};

const USAGE: &str = "\
flashcore: see what the FlashCore compiler does with a kernel

Usage: flashcore <command> [<kernel>] [options]

Commands:
  list                     the kernels this program knows, and the named configs
  emit <kernel>            the IR after every pass (or after one, --after PASS), or the PTX (--ptx)
  check <kernel>           protocol verdict, shared memory, ptxas registers and spills, occupancy
  schedule <kernel>        the warp-specialized schedule as text, or as SVG (--svg FILE)
  tuned <kernel>           the config a launch takes on a GPU for a shape (--gpu, --shape), and why
  help [<command>]         this text, or a command's

Every command that takes a kernel takes --config SETTINGS (see `flashcore help emit`).
Exit status: 0 done, 1 the kernel does not compile or check, 2 the command line is wrong.
";

const CONFIG_HELP: &str =
    "  --config SETTINGS   the config to compile for, starting from the kernel's declared one:
                      settings as the config prints them, separated by commas or spaces:
                      tile_m=128, tile_n=, head_dim=, stages=, warps=, load_warps=,
                      softmax_warps=, kv_splits=; the flags persistent, causal, varlen,
                      a_in_smem (or flag=false); f16 or bf16; sm_89 or sm_90a (the PTX
                      target). A reference config's name (`flashcore list`) stands for all
                      of its settings. May be repeated.
  --target TARGET     the PTX target, sm_89 or sm_90a (the same as the setting; sm_90a
                      refuses, with the reason, what it cannot compile yet)";

fn command_help(command: &str) -> Option<String> {
    let text = match command {
        "list" => "\
Usage: flashcore list

The kernels linked into this program (each `#[flash_kernel]` registers itself), with their
declared configs, and the reference configs --config accepts by name."
            .to_string(),
        "emit" => format!(
            "\
Usage: flashcore emit <kernel> [--config SETTINGS] [--after PASS | --ptx]

Prints the kernel's tile-level IR after every pass (what the code generator sees), or after
one pass, or its PTX.

Options:
{CONFIG_HELP}
  --after PASS        stop after PASS: lower, {passes}
  --ptx               print the PTX (for the config's target) instead of the IR

Examples:
  flashcore emit attention --after pipeline
  flashcore emit attention --config stages=3,load_warps=1 --ptx",
            passes = pass_names().join(", ")
        ),
        "check" => format!(
            "\
Usage: flashcore check <kernel> [--config SETTINGS] [--no-ptxas]

Compiles the kernel and reports: the protocol check's verdict (no deadlock, no read of a stage
before its copy lands, no overwrite of a stage being read, matching mbarrier arrivals and
phases, over every interleaving of the roles); the shared memory a CTA needs, buffer by buffer,
against the limits of the GPUs its target runs on (sm_89 PTX: the L4 and the H100; sm_90a PTX:
the H100); ptxas's registers, spills and stack for each (sm_89 and sm_90, or sm_90a); and the
CTAs an SM holds on each, with what limits them. ptxas comes from FLASHCORE_PTXAS, the
project's cache (scripts/test.sh installs it), PATH or /usr/local/cuda/bin. Fails (exit 1) if
the kernel does not compile, ptxas rejects it, or a CTA does not fit on the L4.

Options:
{CONFIG_HELP}
  --no-ptxas          skip ptxas (occupancy from threads and shared memory alone)

Example:
  flashcore check attention --config d128_s2,persistent"
        ),
        "schedule" => format!(
            "\
Usage: flashcore schedule <kernel> [--config SETTINGS] [--svg FILE]

Plays the kernel's synchronization schedule (the events the protocol check reasons about:
stage fills and their landing, reads, channel writes, cp.async commits and waits, barriers,
mbarrier arrivals and waits) for two work items, one role per lane, in logical steps (every
event takes one step; a copy lands {latency} steps after it is issued), and prints it with time
flowing down. With --svg it also draws it, time flowing right, with arrows from each
mbarrier phase's arrivals to the waits it releases (`--svg -` prints the SVG instead).

Options:
{CONFIG_HELP}
  --svg FILE          write the picture to FILE (`-`: standard output)

Example (the seed kernel's 4 load + 11 compute + 1 softmax warps):
  flashcore schedule attention --config tile_m=176,warps=11,load_warps=4,softmax_warps=1,persistent --svg seed.svg",
            latency = ir::timeline::COPY_LATENCY
        ),
        "tuned" => format!(
            "\
Usage: flashcore tuned <kernel> --gpu GPU --shape BxHxSxD [--config SETTINGS]

The config a launch of the kernel takes on GPU for a [B, H, S, D] problem (keys: S), the rule
that picked it, and its occupancy there: the tuning table's entry for this GPU (timed, or chosen
by the occupancy model and marked so: the L4's), else one of a GPU with the same compute
capability and limits, else of the same capability, never one that does not fit nor one whose
GPU's search never weighed this GPU's best target; else, on compute capability 9.0, FlashCore's
default for the kind of key (the H200's winners); else the declared config, made to fit. The
table is the active one (FLASHCORE_TUNING, else the shipped
entries with the user's tuning cache over them). --config sets what the launch fixes (dtype,
causal, target) before tuning.

Options:
  --gpu GPU           {gpus}, or its name as the driver reports it
  --shape BxHxSxD     e.g. 2x16x8192x128
{CONFIG_HELP}

Example:
  flashcore tuned attention --gpu h200 --shape 2x16x8192x128 --config causal",
            gpus = crate::tuning::KNOWN_GPUS.iter().map(|(alias, ..)| *alias).collect::<Vec<_>>().join(", ")
        ),
        "help" => "Usage: flashcore help [<command>]".to_string(),
        _ => return None,
    };
    Some(text + "\n")
}

/// Why the command failed: its exit status is 2 for a usage error, 1 otherwise.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong; the message says how, and what would be right.
    #[error("{0}")]
    Usage(String),
    /// The kernel does not compile or does not pass `check`.
    #[error("{0}")]
    Failed(String),
    /// Writing the output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) | CliError::Io(_) => 1,
        }
    }
}

/// The `flashcore` command on this process's arguments: output on stdout, errors on stderr.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stdout = std::io::stdout();
    match run(&args, &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`flashcore emit .. | head`) is not an error worth a message.
            if !matches!(&e, CliError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe) {
                eprintln!("error: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs the command `args` (without the program name), writing what it prints to `out`.
pub fn run<S: AsRef<str>>(args: &[S], out: &mut dyn Write) -> Result<(), CliError> {
    let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
    let Some((&command, rest)) = args.split_first() else {
        return Err(CliError::Usage(format!("no command given\n\n{USAGE}")));
    };
    match command {
        "-h" | "--help" => return Ok(out.write_all(USAGE.as_bytes())?),
        "-V" | "--version" => return Ok(writeln!(out, "flashcore {}", env!("CARGO_PKG_VERSION"))?),
        "help" => {
            let text = match rest {
                [] => USAGE.to_string(),
                [c] => command_help(c).ok_or_else(|| unknown_command(c))?,
                _ => return Err(CliError::Usage("`help` takes at most one command".into())),
            };
            return Ok(out.write_all(text.as_bytes())?);
        }
        _ => {}
    }
    let help = command_help(command).ok_or_else(|| unknown_command(command))?;
    if rest.iter().any(|a| *a == "-h" || *a == "--help") {
        return Ok(out.write_all(help.as_bytes())?);
    }
    let opts = Options::parse(command, rest)?;
    match command {
        "list" => list(out),
        "emit" => emit(&opts, out),
        "check" => check(&opts, out),
        "tuned" => tuned(&opts, out),
        _ => schedule(&opts, out),
    }
}

fn unknown_command(command: &str) -> CliError {
    CliError::Usage(format!("unknown command `{command}`\n\n{USAGE}"))
}

fn pass_names() -> Vec<&'static str> {
    ir::passes::PASSES.iter().map(|(name, _)| *name).collect()
}

/// A command's parsed arguments.
struct Options {
    kernel: Option<&'static KernelEntry>,
    config: Config,
    after: Option<String>,
    ptx: bool,
    no_ptxas: bool,
    svg: Option<String>,
    gpu: Option<crate::tuning::Gpu>,
    shape: Option<[usize; 4]>,
}

impl Options {
    fn parse(command: &str, args: &[&str]) -> Result<Options, CliError> {
        let usage = |message: String| {
            CliError::Usage(format!("{message}\n(`flashcore {command} --help` shows the options)"))
        };
        // (flag, takes a value, allowed for this command)
        let flags: &[(&str, bool, &[&str])] = &[
            ("--config", true, &["emit", "check", "schedule", "tuned"]),
            ("--target", true, &["emit", "check", "schedule", "tuned"]),
            ("--gpu", true, &["tuned"]),
            ("--shape", true, &["tuned"]),
            ("--after", true, &["emit"]),
            ("--ptx", false, &["emit"]),
            ("--no-ptxas", false, &["check"]),
            ("--svg", true, &["schedule"]),
        ];
        let mut kernel_name: Option<&str> = None;
        let mut settings: Vec<&str> = vec![];
        let mut target: Option<&str> = None;
        let mut opts = Options {
            kernel: None,
            config: Config::default(),
            after: None,
            ptx: false,
            no_ptxas: false,
            svg: None,
            gpu: None,
            shape: None,
        };
        let mut i = 0;
        while i < args.len() {
            let arg = args[i];
            i += 1;
            if !arg.starts_with("--") || arg == "-" {
                if command == "list" {
                    return Err(usage(format!("`list` takes no arguments, got `{arg}`")));
                }
                if let Some(first) = kernel_name {
                    return Err(usage(format!("one kernel at a time: got `{first}` and `{arg}`")));
                }
                kernel_name = Some(arg);
                continue;
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f, Some(v)),
                None => (arg, None),
            };
            let Some((_, takes_value, commands)) = flags.iter().find(|(f, ..)| *f == flag) else {
                return Err(usage(format!("unknown option `{flag}` for `{command}`")));
            };
            if !commands.contains(&command) {
                return Err(usage(format!(
                    "`{flag}` is an option of `{}`, not of `{command}`",
                    commands.join("`, `")
                )));
            }
            let value = match (takes_value, inline) {
                (false, None) => None,
                (false, Some(_)) => return Err(usage(format!("`{flag}` takes no value"))),
                (true, Some(v)) => Some(v),
                (true, None) => {
                    let v = args.get(i).ok_or_else(|| usage(format!("`{flag}` needs a value")))?;
                    i += 1;
                    Some(*v)
                }
            };
            match (flag, value) {
                ("--config", Some(v)) => settings.push(v),
                ("--target", Some(v)) => match crate::Target::from_name(v) {
                    // A bare target name is a setting; later settings win.
                    Some(_) => target = Some(v),
                    None => return Err(usage(format!("--target: `{v}` is not a target: sm_89 or sm_90a"))),
                },
                ("--after", Some(v)) => opts.after = Some(v.to_string()),
                ("--svg", Some(v)) => opts.svg = Some(v.to_string()),
                ("--gpu", Some(v)) => opts.gpu = Some(gpu_named(v).map_err(usage)?),
                ("--shape", Some(v)) => {
                    let dims: Vec<usize> = v.split('x').filter_map(|d| d.parse().ok()).collect();
                    let [b, h, s, d] = dims[..] else {
                        return Err(usage(format!("--shape: `{v}` is not BxHxSxD, e.g. 2x16x8192x128")));
                    };
                    opts.shape = Some([b, h, s, d]);
                }
                ("--ptx", _) => opts.ptx = true,
                _ => opts.no_ptxas = true,
            }
        }
        if command == "list" {
            return Ok(opts);
        }
        let Some(name) = kernel_name else {
            return Err(usage(format!("`{command}` needs a kernel: {}", known_kernels())));
        };
        let kernel = registry::find(name)
            .ok_or_else(|| usage(format!("no kernel `{name}` in this program: {}", known_kernels())))?;
        opts.kernel = Some(kernel);
        settings.extend(target);
        opts.config = config_from(kernel.config, &settings).map_err(usage)?;
        if command == "tuned" {
            let (Some(_), Some([.., d])) = (&opts.gpu, opts.shape) else {
                return Err(usage("`tuned` needs --gpu and --shape".into()));
            };
            // The launch's head dim, then what --config fixes.
            let declared = kernel.config.with_head_dim(d as u32);
            opts.config = config_from(declared, &settings).map_err(usage)?;
        }
        if opts.ptx && opts.after.is_some() {
            return Err(usage("`--ptx` prints the code after every pass: leave out `--after`".into()));
        }
        if let Some(after) = &opts.after {
            if after != "lower" && !pass_names().contains(&after.as_str()) {
                return Err(usage(format!(
                    "no pass is named `{after}`: passes are lower, {}",
                    pass_names().join(", ")
                )));
            }
        }
        Ok(opts)
    }

    fn kernel(&self) -> &'static KernelEntry {
        self.kernel.expect("every command but `list` has a kernel")
    }
}

fn gpu_named(name: &str) -> Result<crate::tuning::Gpu, String> {
    crate::tuning::Gpu::named(name).ok_or_else(|| {
        let known: Vec<String> =
            crate::tuning::KNOWN_GPUS.iter().map(|(a, f, _)| format!("{a} ({f})")).collect();
        format!("--gpu: `{name}` is not a GPU this command knows: {}", known.join(", "))
    })
}

/// `flashcore tuned`: the config a launch takes, and the rule that picked it.
fn tuned(opts: &Options, out: &mut dyn Write) -> Result<(), CliError> {
    let entry = opts.kernel();
    let (gpu, [b, h, s, _]) = (opts.gpu.as_ref().expect("parsed"), opts.shape.expect("parsed"));
    let table = crate::tuning::Table::active().map_err(|e| CliError::Failed(e.to_string()))?;
    let requested = (opts.config.target != crate::Target::Auto).then_some(opts.config.target);
    let program = (entry.program)();
    let (config, source) = table.pick_kernel(&program, entry.name, gpu, opts.config, [b, h, s, s], requested);
    writeln!(out, "gpu        {} ({})", gpu.name, gpu.props)?;
    writeln!(
        out,
        "shape      {b}x{h}x{s}x{} ({})",
        config.head_dim,
        crate::tuning::SizeClass::of(b, h, s, s).name()
    )?;
    writeln!(out, "config     {config}")?;
    writeln!(out, "source     {source}")?;
    // The occupancy on this GPU's kind, with ptxas's registers where it is found.
    let (resolved, _) = crate::target::choose(&program, config, Some(gpu.props.capability()), requested);
    let arch = crate::occupancy::arch_of(gpu.props.capability(), resolved.target);
    if let (Some(arch), Ok(kernel)) = (arch, crate::compile(&program, &resolved)) {
        let report = ptxas::find().and_then(|p| ptxas::assemble(&p, &kernel.ptx.text, arch.sm).ok());
        let registers = report.as_ref().map_or(0, |r| r.registers);
        let shared = kernel.ptx.shared_bytes + report.as_ref().map_or(0, |r| r.static_shared_bytes);
        let occ = occupancy(&arch, resolved.threads(), registers, shared);
        let counted = match &report {
            Some(_) => format!("{registers} registers (ptxas {}), {shared} B shared", arch.sm),
            None => format!("{shared} B shared; registers not counted (no ptxas)"),
        };
        writeln!(out, "occupancy  {}; {counted}", resident(&arch, &resolved, &occ))?;
    }
    Ok(())
}

/// One line of occupancy: the CTAs and warps resident on an SM of `arch`, and the limit.
fn resident(arch: &Arch, config: &Config, occ: &crate::occupancy::Occupancy) -> String {
    if let Limit::DoesNotFit { .. } = occ.limit {
        return format!("does not fit: {}", occ.limit);
    }
    format!(
        "{} CTA{} × {} warps = {} of {} warps ({:.0}%), limited by {}",
        occ.ctas,
        if occ.ctas == 1 { "" } else { "s" },
        config.threads() / 32,
        occ.warps,
        arch.max_warps_per_sm,
        occ.fraction * 100.0,
        occ.limit
    )
}

fn known_kernels() -> String {
    let names: Vec<String> =
        registry::kernels().iter().map(|k| format!("{}::{}", k.module, k.name)).collect();
    if names.is_empty() {
        "this program has no kernels (each #[flash_kernel] linked into it registers itself)".into()
    } else {
        format!("kernels are {} (`flashcore list`)", names.join(", "))
    }
}

/// `declared` with each `--config` applied in order, validated.
fn config_from(declared: Config, settings: &[&str]) -> Result<Config, String> {
    let mut config = declared;
    for setting in settings.iter().flat_map(|s| s.split([',', ' '])).filter(|s| !s.is_empty()) {
        config = match crate::kernels::reference_config(setting) {
            Some(named) => named,
            None => config.with_settings(setting).map_err(|e| e.to_string())?,
        };
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn list(out: &mut dyn Write) -> Result<(), CliError> {
    let kernels = registry::kernels();
    writeln!(out, "kernels ({}):", kernels.len())?;
    for k in &kernels {
        writeln!(out, "  {}  ({}::{})", k.name, k.module, k.name)?;
        if !k.summary.is_empty() {
            writeln!(out, "      {}", k.summary)?;
        }
        writeln!(out, "      declared: {}", k.config)?;
    }
    writeln!(out, "\nreference configs (--config NAME):")?;
    for (name, config) in crate::kernels::reference_configs() {
        writeln!(out, "  {name:<42} {config}")?;
    }
    Ok(())
}

fn failed(kernel: &KernelEntry, config: &Config, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("kernel `{}` ({config}): {e}", kernel.name))
}

fn emit(opts: &Options, out: &mut dyn Write) -> Result<(), CliError> {
    let (kernel, config) = (opts.kernel(), &opts.config);
    let program = (kernel.program)();
    let text = match (&opts.after, opts.ptx) {
        (Some(after), _) => crate::ir_after(&program, config, after).map(|k| k.to_string()),
        (None, true) => crate::compile(&program, config).map(|k| k.ptx.text),
        (None, false) => crate::compile(&program, config).map(|k| k.kernel.to_string()),
    }
    .map_err(|e| failed(kernel, config, e))?;
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}

fn check(opts: &Options, out: &mut dyn Write) -> Result<(), CliError> {
    let (entry, config) = (opts.kernel(), &opts.config);
    writeln!(out, "kernel     {} ({}::{})", entry.name, entry.module, entry.name)?;
    writeln!(out, "config     {config}")?;
    let warps = [(config.warps, "compute"), (config.load_warps, "load"), (config.softmax_warps, "softmax")];
    let warps: Vec<String> = warps.iter().filter(|(w, _)| *w > 0).map(|(w, r)| format!("{w} {r}")).collect();
    writeln!(out, "threads    {} a CTA: {} warps", config.threads(), warps.join(" + "))?;
    let resolved = crate::Config { target: config.target.ptx(), ..*config };
    if let Some(split) = crate::codegen::target::register_split(&resolved) {
        let (loads, computes) = (config.load_warps / 4, config.warps / 4);
        let entry = crate::codegen::target::entry_registers(config.warps + config.load_warps);
        writeln!(
            out,
            "registers  {} a thread at entry; setmaxnreg: {} in the producer warpgroup{}, {} in the {} compute warpgroup{} ({} of the CTA pool's {} a lane of each sub-partition)",
            entry,
            split.load,
            if loads == 1 { "" } else { "s" },
            split.compute,
            computes,
            if computes == 1 { "" } else { "s" },
            loads * split.load + computes * split.compute,
            entry * (loads + computes)
        )?;
    }
    // Lower and run the passes, then the protocol check on its own, so its verdict has a line.
    let program = (entry.program)();
    let kernel = crate::lower(&program, config)
        .and_then(|k| Ok(ir::passes::run_until(k, None)?))
        .map_err(|e| failed(entry, config, e))?;
    let schedule = ir::protocol::schedule_of(&kernel);
    let iterations = ir::protocol::traced_iterations(config);
    let range = match ir::protocol::traced_range_iterations(&kernel) {
        1 => String::new(),
        n => format!(" (× {n} of the range loop around them)"),
    };
    let roles: Vec<String> =
        schedule.roles.iter().map(|r| format!("{} ({} threads)", r.name, r.threads)).collect();
    match ir::protocol::check(&schedule) {
        Ok(()) => writeln!(
            out,
            "protocol   ok: {} role{} [{}], {} mbarriers; no deadlock, no read before a copy lands, no overwrite of a stage being read, arrivals and phases match, in every interleaving of 2 work items × {iterations} iterations{range}",
            schedule.roles.len(),
            if schedule.roles.len() == 1 { "" } else { "s" },
            roles.join(", "),
            schedule.barriers.len()
        )?,
        Err(e) => {
            writeln!(out, "protocol   FAILED: {e}")?;
            return Err(failed(entry, config, "the protocol check failed"));
        }
    }
    if resolved.target == crate::Target::Sm90a {
        // The IR up to a pass, for the reason a later one did not apply.
        let after = |pass| {
            crate::lower(&program, config)
                .and_then(|k| Ok(ir::passes::run_until(k, Some(pass))?))
                .map_err(|e| failed(entry, config, e))
        };
        let mut overlapped = false;
        kernel.walk(&mut |i| overlapped |= matches!(i.op, ir::kernel::Op::MmaAsync { .. }));
        let line = if overlapped {
            "on: the softmax of each K/V tile runs under the P.V of the one before (asynchronous wgmma)"
                .to_string()
        } else {
            format!("off: {}", ir::passes::overlap::why_not(&after("warp_specialize")?).unwrap_or_default())
        };
        writeln!(out, "overlap    {line}")?;
        let line = if kernel.bulk_copies() {
            "on: one producer thread copies each K/V tile through a tensor map (cp.async.bulk.tensor)"
                .to_string()
        } else {
            format!("off: {}", ir::passes::tma::why_not(&after("overlap")?).unwrap_or_default())
        };
        writeln!(out, "tma        {line}")?;
        let line = match crate::codegen::target::pingpong_why_not(&kernel) {
            None => "on: the two compute warpgroups take turns issuing their matmuls (named barriers 8, 9)"
                .to_string(),
            Some(why) => format!("off: {why}"),
        };
        writeln!(out, "pingpong   {line}")?;
        let line = match ir::passes::fold_scale::folded_param(&kernel) {
            Some(param) => format!(
                "on: `{param}` scales the exponentials' argument in one FMA an element (the scores' multiply and the max subtraction folded); a launch refuses a negative `{param}` (it runs on sm_89)"
            ),
            None => format!("off: {}", ir::passes::fold_scale::why_not(&after("tma")?).unwrap_or_default()),
        };
        writeln!(out, "fold       {line}")?;
        let line = match ir::passes::feed_loads::why_not(&after("split_a_loads")?) {
            None => "on: the producer copies each work item's Q a work item ahead (two slots), and O leaves through Q's slot"
                .to_string(),
            Some(why) => format!("off: {why}"),
        };
        writeln!(out, "feed       {line}")?;
    }
    // Register loads (Q) whose wait codegen moves past the K/V loop's prologue.
    let deferred = crate::codegen::deferred_loads(&kernel);
    let mut any_load = false;
    kernel.walk(&mut |i| any_load |= matches!(i.op, ir::kernel::Op::Load { .. }));
    let line = if !any_load {
        "no register loads".to_string()
    } else if deferred.is_empty() {
        "at the load: no register load is followed, past plain code only, by a K/V loop whose prologue copies tiles".to_string()
    } else {
        let loads: Vec<String> = deferred
            .iter()
            .map(|(v, groups)| format!("`{}` ({groups} copy groups still in flight)", kernel.value(*v).name))
            .collect();
        format!("after the K/V loop's prologue: {}", loads.join(", "))
    };
    writeln!(out, "load wait  {line}")?;
    // Tables the masks read along the keys: summarised by a launch before the kernel's.
    let summaries = kernel.table_summaries();
    if !summaries.is_empty() {
        let tables: Vec<String> = summaries
            .iter()
            .map(|s| {
                let ir::kernel::Param::Table(t) = &kernel.params[s.param] else { return String::new() };
                format!("`{}` along {} (read at the keys)", t.name, kernel.dims[t.dims[s.axis].0 as usize])
            })
            .collect();
        writeln!(
            out,
            "summaries  {}: each launch first writes their blocks' (min, max) a block of {} (the table summary kernel), and a K/V tile is decided from one pair",
            tables.join(", "),
            config.tile_n
        )?;
    }
    let ptx = crate::codegen::generate(&kernel).map_err(|e| failed(entry, config, e))?;
    shared_memory(&kernel, ptx.shared_bytes, out)?;
    // ptxas, for the L4's architecture and the H100's.
    let reports: Vec<(Arch, Option<ptxas::Report>)> = match (opts.no_ptxas, ptxas::find()) {
        (false, Some(path)) => {
            let mut reports = vec![];
            for arch in archs_for(config.target).iter().copied() {
                let report =
                    ptxas::assemble(&path, &ptx.text, arch.sm).map_err(|e| failed(entry, config, e))?;
                writeln!(
                    out,
                    "ptxas      {}: {} registers, {} B spill stores, {} B spill loads, {} B stack{}",
                    arch.sm,
                    report.registers,
                    report.spill_store_bytes,
                    report.spill_load_bytes,
                    report.stack_bytes,
                    if report.spill_store_bytes + report.spill_load_bytes > 0 {
                        "  (spills: registers go to local memory)"
                    } else {
                        ""
                    }
                )?;
                reports.push((arch, Some(report)));
            }
            reports
        }
        (skipped, _) => {
            let why = if skipped {
                "skipped (--no-ptxas)".to_string()
            } else {
                ptxas::PtxasError::NotFound.to_string()
            };
            writeln!(out, "ptxas      {why}: registers not counted in the occupancy below")?;
            archs_for(config.target).iter().map(|a| (*a, None)).collect()
        }
    };
    writeln!(out, "occupancy  (CTAs resident on one SM)")?;
    let mut fits_l4 = true;
    for (arch, report) in &reports {
        let registers = report.as_ref().map_or(0, |r| r.registers);
        let shared = ptx.shared_bytes + report.as_ref().map_or(0, |r| r.static_shared_bytes);
        let occ = occupancy(arch, config.threads(), registers, shared);
        if matches!(occ.limit, Limit::DoesNotFit { .. }) {
            fits_l4 &= arch.sm != L4.sm;
            writeln!(out, "  {} {:<5} does not fit: {}", arch.sm, arch.gpu, occ.limit)?;
            continue;
        }
        writeln!(out, "  {} {:<5} {}", arch.sm, arch.gpu, resident(arch, &config, &occ))?;
    }
    if !fits_l4 {
        return Err(failed(entry, config, "a CTA does not fit on the L4 (sm_89)"));
    }
    Ok(())
}

/// The shared-memory budget, buffer by buffer, against each GPU's limit for one CTA.
fn shared_memory(kernel: &ir::Kernel, total: u32, out: &mut dyn Write) -> Result<(), CliError> {
    let plan = crate::codegen::smem::plan(kernel);
    writeln!(out, "shared     {total} B a CTA ({:.1} KiB)", total as f64 / 1024.0)?;
    for (i, buffer) in kernel.buffers.iter().enumerate() {
        writeln!(
            out,
            "  {:<22} {} slots × {} B = {} B",
            buffer.name,
            buffer.slots,
            plan.slot_bytes[i],
            buffer.slots * plan.slot_bytes[i]
        )?;
    }
    if plan.row_tile_region.is_some() {
        let groups = kernel.config.kv_splits.max(1);
        let regions = if plan.row_tile_slots > 1 {
            format!("{} regions × ", plan.row_tile_slots)
        } else {
            String::new()
        };
        writeln!(
            out,
            "  {:<22} {regions}{} × {} B (the Q tile in, the O tile out)",
            "row tile", groups, plan.row_tile_bytes
        )?;
    }
    if plan.merge_region.is_some() {
        let warps = kernel.config.warps - kernel.config.warps_per_split();
        writeln!(out, "  {:<22} {} B (split-KV states)", "merge", warps * plan.merge_regs * 128)?;
    }
    for (channel, bytes) in kernel.channels.iter().zip(&plan.channel_bytes) {
        writeln!(out, "  {:<22} {bytes} B (channel to the softmax warps and back)", channel.name)?;
    }
    let barriers: u32 = kernel.mbarriers.iter().map(|r| r.slots).sum();
    if barriers > 0 {
        writeln!(out, "  {:<22} {} × 8 B", "mbarriers", barriers)?;
    }
    for arch in archs_for(kernel.config.target) {
        let verdict = if total <= arch.shared_bytes_per_cta { "fits" } else { "OVER" };
        writeln!(
            out,
            "  {} {:<5} {verdict}: at most {} B a CTA",
            arch.sm, arch.gpu, arch.shared_bytes_per_cta
        )?;
    }
    Ok(())
}

fn schedule(opts: &Options, out: &mut dyn Write) -> Result<(), CliError> {
    let (entry, config) = (opts.kernel(), &opts.config);
    // The passes and the protocol check; no code is generated.
    let kernel = crate::lower(&(entry.program)(), config)
        .and_then(|k| Ok(ir::passes::run_all(k)?))
        .map_err(|e| failed(entry, config, e))?;
    let picture = crate::schedule::Picture::of(&kernel);
    match opts.svg.as_deref() {
        Some("-") => out.write_all(picture.svg().as_bytes())?,
        Some(path) => {
            std::fs::write(path, picture.svg())
                .map_err(|e| CliError::Failed(format!("cannot write the SVG to `{path}`: {e}")))?;
            out.write_all(picture.text().as_bytes())?;
            writeln!(out, "wrote {path}")?;
        }
        None => out.write_all(picture.text().as_bytes())?,
    }
    Ok(())
}
