//! flashcore-sim: runs the PTX FlashCore emits on the CPU, one CTA at a time, with deadlock,
//! shared-memory race, async-copy, barrier-misuse, divergence and bounds checks.
//!
//! It reads the same PTX text the runtime loads (so the printer is tested too). Each warp is a
//! 32-lane vector with per-lane program counters (the lanes at the lowest PC run together, so
//! structured branches reconverge); warps are scheduled in a seeded random order, each running a
//! random slice of instructions or until it blocks; `cp.async` copies land at random times, in
//! order per thread. See [`cta`] for the happens-before model behind the race check.
//!
//! ```
//! let ptx = r#"
//! .version 7.8
//! .target sm_89
//! .address_size 64
//! .visible .entry add_one(
//!     .param .u64 p
//! )
//! {
//!     .reg .b32 %r<4>;
//!     .reg .b64 %rd<4>;
//!     ld.param.u64 %rd0, [p];
//!     mov.u32 %r0, %tid.x;
//!     mul.wide.u32 %rd1, %r0, 4;
//!     add.u64 %rd2, %rd0, %rd1;
//!     ld.global.u32 %r1, [%rd2];
//!     add.u32 %r1, %r1, 1;
//!     st.global.u32 [%rd2], %r1;
//!     ret;
//! }
//! "#;
//! let module = flashcore_sim::parse(ptx).unwrap();
//! let mut gpu = flashcore_sim::Machine::new(flashcore_sim::Options::default());
//! let buf = gpu.alloc(vec![0u8; 32 * 4]);
//! let launch = flashcore_sim::Launch { grid: 1, threads: 32, shared_bytes: 0 };
//! gpu.launch(&module, "add_one", launch, &[flashcore_sim::Arg::U64(buf)]).unwrap();
//! assert_eq!(gpu.read(buf, 4).unwrap(), vec![1, 0, 0, 0]);
//! ```

pub mod cta;
pub mod error;
pub mod memory;
pub mod parse;

pub use error::{At, SimError};
pub use parse::{parse, Module};

use memory::GlobalMemory;
use parse::ParamType;

/// Scheduling and limits.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Seeds the warp order and the copy completion times; a seed replays exactly.
    pub seed: u64,
    /// A warp runs at most this many instructions before the scheduler picks again (1 = switch
    /// after every instruction).
    pub max_slice: u32,
    /// Warp instructions per launch before it is reported as an infinite loop.
    pub step_limit: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options { seed: 1, max_slice: 64, step_limit: 2_000_000_000 }
    }
}

/// A launch argument, in the order of the kernel's parameters.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    U32(u32),
    U64(u64),
    F32(f32),
    /// For a `.param .align 64 .b8 NAME[128]` tensor map.
    TensorMap(TensorMap),
}

/// What a tensor map the runtime would encode (`cuTensorMapEncodeTiled`) describes, as the
/// simulator reads it: a 4-D tensor of 16-bit elements at `base`, tiled mode, 128-byte swizzle,
/// zeros outside its bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorMap {
    /// The tensor's global address.
    pub base: u64,
    /// Extents, innermost first.
    pub dims: [u64; 4],
    /// Strides in bytes of the outer three axes.
    pub strides: [u64; 3],
    /// The box one copy brings, innermost first (the simulator models `[64, rows, 1, 1]`).
    pub box_dims: [u32; 4],
}

/// A 1-D grid of 1-D CTAs.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    pub grid: u32,
    pub threads: u32,
    pub shared_bytes: u32,
}

/// What a launch executed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub ctas: u32,
    /// Warp instructions issued.
    pub warp_instructions: u64,
    /// Lane instructions executed (a warp instruction counts once per lane whose predicate held).
    pub lane_instructions: u64,
}

/// The simulated device: global memory and the launch options.
pub struct Machine {
    global: GlobalMemory,
    options: Options,
}

/// The most shared memory a CTA may ask for (sm_90's 227 KiB).
pub const MAX_SHARED_BYTES: u32 = 232_448;

impl Machine {
    pub fn new(options: Options) -> Machine {
        Machine { global: GlobalMemory::default(), options }
    }

    /// Allocates global memory holding `bytes`; returns its device address (256-byte aligned).
    pub fn alloc(&mut self, bytes: Vec<u8>) -> u64 {
        self.global.alloc(bytes)
    }

    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, SimError> {
        self.global.read(addr, len).map(<[u8]>::to_vec).map_err(SimError::Launch)
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), SimError> {
        self.global.write(addr, data).map_err(SimError::Launch)
    }

    /// Runs kernel `entry` of `module`, its CTAs one after another.
    pub fn launch(
        &mut self,
        module: &Module,
        entry: &str,
        launch: Launch,
        args: &[Arg],
    ) -> Result<Stats, SimError> {
        let kernel = module
            .kernels
            .iter()
            .find(|k| k.name == entry)
            .ok_or_else(|| SimError::Launch(format!("no kernel `{entry}` in the module")))?;
        if args.len() != kernel.params.len() {
            return Err(SimError::Launch(format!(
                "`{entry}` takes {} parameters, got {}",
                kernel.params.len(),
                args.len()
            )));
        }
        let mut params = Vec::with_capacity(args.len());
        let mut tensor_maps = vec![];
        for (decl, arg) in kernel.params.iter().zip(args) {
            params.push(match (decl.ty, arg) {
                (ParamType::TensorMap, Arg::TensorMap(m)) => {
                    tensor_maps.push(*m);
                    tensor_maps.len() as u64 - 1
                }
                (ParamType::U64, Arg::U64(v)) => *v,
                (ParamType::U32, Arg::U32(v)) => *v as u64,
                (ParamType::F32, Arg::F32(v)) => v.to_bits() as u64,
                (ty, arg) => {
                    return Err(SimError::Launch(format!("parameter `{}` is {ty:?}, got {arg:?}", decl.name)))
                }
            });
        }
        if launch.threads == 0 || launch.threads > 1024 {
            return Err(SimError::Launch(format!("{} threads per CTA (1..=1024)", launch.threads)));
        }
        if let Some(max) = kernel.max_threads {
            if launch.threads > max {
                return Err(SimError::Launch(format!(
                    "{} threads exceed the kernel's .maxntid {max}",
                    launch.threads
                )));
            }
        }
        if launch.shared_bytes > MAX_SHARED_BYTES {
            return Err(SimError::Launch(format!(
                "{} bytes of shared memory exceed the device's {MAX_SHARED_BYTES}",
                launch.shared_bytes
            )));
        }
        let mut stats = Stats { ctas: launch.grid, ..Stats::default() };
        let mut budget = self.options.step_limit;
        for cta in 0..launch.grid {
            let setup = cta::CtaSetup {
                kernel,
                params: &params,
                tensor_maps: &tensor_maps,
                cta,
                grid: launch.grid,
                threads: launch.threads,
                shared_bytes: launch.shared_bytes,
                seed: self.options.seed,
                max_slice: self.options.max_slice,
                step_limit: self.options.step_limit,
            };
            let mut run = cta::Cta::new(setup, &mut self.global);
            let result = run.run(&mut budget);
            stats.warp_instructions += run.steps;
            stats.lane_instructions += run.lane_steps;
            result?;
        }
        Ok(stats)
    }
}
