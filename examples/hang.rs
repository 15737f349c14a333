//! Shows the last line of defence against a broken producer/consumer protocol: a
//! warp-specialized attention kernel whose compute warps never release their ring slots.
//! The protocol check rejects it at compile time; generated anyway (bypassing the check) and
//! launched, the runtime's launch timeout turns the hang into an error instead of a stuck
//! process. Exits 0 when both happen as described.
//!
//! `cargo run --release --example hang`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use flashcore::ir::kernel::{Block, Op};
use flashcore::kernels::attention;
use flashcore::runtime::{Device, RuntimeError};
use flashcore::{f16, Arg, CompiledKernel, Config, Error};

fn drop_releases(block: &mut Block) {
    block.insts.retain(|i| !matches!(i.op, Op::MbarArrive { .. }));
    for inst in &mut block.insts {
        match &mut inst.op {
            Op::Tiles { body, .. } | Op::Pipeline { body, .. } => drop_releases(body),
            Op::Roles { groups } => groups.iter_mut().for_each(|g| drop_releases(&mut g.body)),
            _ => {}
        }
    }
}

fn main() -> ExitCode {
    let config = Config { stages: 2, load_warps: 1, ..attention::CONFIG };
    let mut kernel = attention::ir(&config).expect("the intact kernel compiles");
    drop_releases(&mut kernel.body);
    let verdict = flashcore::ir::protocol::check(&flashcore::ir::protocol::schedule_of(&kernel));
    match &verdict {
        Err(e) => println!("protocol check on the broken kernel: {e}"),
        Ok(()) => {
            eprintln!("error: the protocol check accepted a kernel whose slots are never released");
            return ExitCode::FAILURE;
        }
    }
    let ptx = flashcore::codegen::generate(&kernel).expect("codegen does not run the check");
    let compiled = CompiledKernel { kernel, ptx, key: 0x6861_6e67 };
    let device = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            println!("no GPU: {e}; the compile-time half of this check passed");
            return ExitCode::SUCCESS;
        }
    };
    device.set_launch_timeout(Duration::from_secs(2));
    let shape = [1, 8, 1024, 64];
    let upload = |v: f32| device.filled(&shape, f16::from_f32(v));
    let (q, k, v, mut o) = match (upload(0.1), upload(0.2), upload(0.3), upload(0.0)) {
        (Ok(q), Ok(k), Ok(v), Ok(o)) => (q, k, v, o),
        _ => {
            eprintln!("error: could not allocate inputs");
            return ExitCode::FAILURE;
        }
    };
    let start = Instant::now();
    let result = flashcore::launch(
        &device,
        &compiled,
        &mut [
            Arg::Tensor(&q),
            Arg::Tensor(&k),
            Arg::Tensor(&v),
            Arg::TensorMut(&mut o),
            Arg::Absent, // lse
            Arg::F32(0.125),
            Arg::Absent, // cu_q: a dense batch
            Arg::Absent, // cu_k
        ],
    );
    match result {
        Err(Error::Runtime(e @ RuntimeError::Timeout { .. })) => {
            println!("launch of the broken kernel after {:.1} s: {e}", start.elapsed().as_secs_f64());
            // The hung kernel is abandoned; exiting tears the context down.
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("error: expected a launch timeout, got {other:?}");
            ExitCode::FAILURE
        }
    }
}
