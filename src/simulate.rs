//! Runs a compiled kernel in the PTX simulator (`flashcore-sim`) instead of on a GPU: the same
//! PTX text and the same argument binding as [`crate::launch`], host slices instead of device
//! tensors. This is how CI executes every generated kernel without a GPU.

use flashcore_ir::kernel::{Param, TileSchedule};
use half::f16;

pub use flashcore_sim::{Options, SimError, Stats};

use crate::{bind_shapes, CompiledKernel, Error};

/// A launch argument for the simulator, in the order of the kernel's parameters.
pub enum HostArg<'a> {
    /// An input tensor and its `[B, H, S, D]` shape.
    Tensor(&'a [f16], [usize; 4]),
    /// An output tensor: read back after the launch.
    TensorMut(&'a mut [f16], [usize; 4]),
    F32(f32),
}

/// The simulated device: how many SMs a persistent kernel's grid is sized for (one CTA each),
/// and the scheduler's options.
#[derive(Clone, Copy, Debug)]
pub struct SimDevice {
    pub sm_count: u32,
    pub options: Options,
}

impl Default for SimDevice {
    fn default() -> SimDevice {
        SimDevice { sm_count: 2, options: Options::default() }
    }
}

/// Runs `kernel` on `args` in the simulator. Arguments are checked exactly as [`crate::launch`]
/// checks them; the outputs are written back into the `TensorMut` slices.
pub fn simulate(kernel: &CompiledKernel, args: &mut [HostArg], device: &SimDevice) -> Result<Stats, Error> {
    let k = &kernel.kernel;
    let bad = |arg: &str, message: String| Error::Argument {
        kernel: k.name.clone(),
        arg: arg.to_string(),
        message,
    };
    let mut shapes: Vec<Option<&[usize]>> = Vec::with_capacity(args.len());
    for (param, arg) in k.params.iter().zip(args.iter()) {
        let (name, shape, len) = match (param, arg) {
            (Param::Tensor(t), HostArg::Tensor(data, shape)) if !t.writable => (&t.name, shape, data.len()),
            (Param::Tensor(t), HostArg::TensorMut(data, shape)) if t.writable => (&t.name, shape, data.len()),
            (Param::Tensor(t), _) if t.writable => {
                return Err(bad(&t.name, "expected a mutable output tensor".into()))
            }
            (Param::Tensor(t), _) => return Err(bad(&t.name, "expected an input tensor".into())),
            (Param::Scalar { .. }, HostArg::F32(_)) => {
                shapes.push(None);
                continue;
            }
            (Param::Scalar { name }, _) => return Err(bad(name, "expected an f32 scalar".into())),
        };
        let elems: usize = shape.iter().product();
        if elems != len {
            return Err(bad(name, format!("shape {shape:?} holds {elems} elements but the slice has {len}")));
        }
        shapes.push(Some(&shape[..]));
    }
    shapes.extend(args.iter().skip(k.params.len()).map(|_| None));
    let binding = bind_shapes(k, &shapes)?;
    if binding.work_items == 0 {
        return Ok(Stats::default());
    }
    let grid = match flashcore_ir::passes::persist::schedule(k) {
        TileSchedule::OnePerCta => binding.work_items,
        TileSchedule::Persistent => binding.work_items.min(device.sm_count.max(1) as u64),
    };
    let mut machine = flashcore_sim::Machine::new(device.options);
    let mut sim_args = Vec::with_capacity(args.len() + binding.dims.len());
    let mut outputs = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        sim_args.push(match arg {
            HostArg::Tensor(data, _) => flashcore_sim::Arg::U64(machine.alloc(bytes_of(data))),
            HostArg::TensorMut(data, _) => {
                // Poisoned with NaN: a row the kernel forgets to write shows up in the check.
                let addr = machine.alloc(bytes_of(&vec![f16::NAN; data.len()]));
                outputs.push((i, addr));
                flashcore_sim::Arg::U64(addr)
            }
            HostArg::F32(x) => flashcore_sim::Arg::F32(*x),
        });
    }
    sim_args.extend(binding.dims.iter().map(|d| flashcore_sim::Arg::U32(*d)));
    let launch = flashcore_sim::Launch {
        grid: u32::try_from(grid)
            .map_err(|_| bad("(shapes)", "more work items than a 1-D grid can hold".into()))?,
        threads: kernel.ptx.threads_per_cta,
        shared_bytes: kernel.ptx.shared_bytes,
    };
    let stats =
        machine.launch(&flashcore_sim::parse(&kernel.ptx.text)?, &kernel.ptx.entry, launch, &sim_args)?;
    for (i, addr) in outputs {
        if let HostArg::TensorMut(data, _) = &mut args[i] {
            let bytes = machine.read(addr, data.len() * 2)?;
            for (x, b) in data.iter_mut().zip(bytes.chunks_exact(2)) {
                *x = f16::from_le_bytes([b[0], b[1]]);
            }
        }
    }
    Ok(stats)
}

fn bytes_of(data: &[f16]) -> Vec<u8> {
    data.iter().flat_map(|x| x.to_le_bytes()).collect()
}
