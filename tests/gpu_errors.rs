//! Hostile input that only a GPU can answer (issue 7, item 4): a device pointer that is not
//! 16-byte aligned, and a config whose shared memory is over the device's limit, come back as
//! typed errors before anything is launched, and the device stays usable. Without a GPU the
//! test says so and passes (CI has none); `scripts/gpu-validate.sh hostile` runs this binary on
//! the GPU machine, next to the `hang` example (a hung kernel becomes a timeout error).

use std::sync::Arc;

use flashcore::kernels::attention;
use flashcore::runtime::{Device, DeviceTensor, RuntimeError, TensorArg};
use flashcore::{f16, Arg, Config, Error};

/// A `[B, H, S, D]` view one element into a larger flat buffer: what a foreign pointer (a
/// slice of someone else's allocation) can look like.
struct Offset<'a> {
    inner: &'a DeviceTensor<f16>,
    shape: Vec<usize>,
    strides: Vec<usize>,
    bytes: u64,
}

impl TensorArg for Offset<'_> {
    fn dtype(&self) -> &'static str {
        self.inner.dtype()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn strides(&self) -> &[usize] {
        &self.strides
    }
    fn buffer_len(&self) -> usize {
        self.inner.buffer_len() - 1
    }
    fn device_ptr(&self, stream: &Arc<flashcore::runtime::CudaStream>) -> u64 {
        self.inner.device_ptr(stream) + self.bytes
    }
}

fn args<'a>(q: &'a dyn TensorArg, kv: &'a DeviceTensor<f16>, o: &'a mut DeviceTensor<f16>) -> [Arg<'a>; 8] {
    [
        Arg::Tensor(q),
        Arg::Tensor(kv),
        Arg::Tensor(kv),
        Arg::TensorMut(o),
        Arg::Absent,
        Arg::F32(0.125),
        Arg::Absent,
        Arg::Absent,
    ]
}

#[test]
fn misaligned_pointers_and_shared_memory_over_the_limit_are_typed_errors() {
    let device = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("no GPU ({e}): skipped; run on the GPU machine with scripts/gpu-validate.sh hostile");
            return;
        }
    };
    let shape = [1, 2, 128, 64];
    let kv = device.filled(&shape, f16::from_f32(0.25)).unwrap();
    let mut o = device.filled(&shape, f16::NAN).unwrap();
    let kernel = attention::compile(&attention::CONFIG).unwrap();

    // One f16 in: aligned for f16, not for the kernel's 16-byte copies.
    let flat = device.filled(&[2 * 128 * 64 + 8], f16::from_f32(0.5)).unwrap();
    let strides = flashcore::runtime::contiguous_strides(&shape);
    let shifted = Offset { inner: &flat, shape: shape.to_vec(), strides, bytes: 2 };
    let err = flashcore::launch(&device, &kernel, &mut args(&shifted, &kv, &mut o)).unwrap_err();
    assert!(matches!(err, Error::Runtime(RuntimeError::Misaligned { index: 0, .. })), "{err}");
    assert!(err.to_string().contains("not 16-byte aligned"), "{err}");

    // D = 256 with 128-key tiles in 4 stages: 557,056 bytes of shared memory.
    let config = Config { tile_n: 128, stages: 4, ..attention::CONFIG.with_head_dim(256) };
    let big = attention::compile(&config).unwrap();
    let shape = [1, 2, 128, 256];
    let (q, kv) = (device.filled(&shape, f16::ONE).unwrap(), device.filled(&shape, f16::ONE).unwrap());
    let mut o = device.filled(&shape, f16::NAN).unwrap();
    let err = flashcore::launch(&device, &big, &mut args(&q, &kv, &mut o)).unwrap_err();
    match &err {
        Error::Runtime(RuntimeError::SharedMemory { requested, limit, .. }) => {
            assert_eq!(*requested, big.ptx.shared_bytes);
            assert!(limit < requested);
        }
        other => panic!("expected a shared-memory error, got {other}"),
    }

    // Nothing was launched, and the device still runs a good kernel.
    let (q, kv) = (
        device.filled(&[1, 2, 128, 64], f16::ONE).unwrap(),
        device.filled(&[1, 2, 128, 64], f16::ONE).unwrap(),
    );
    let mut o = device.filled(&[1, 2, 128, 64], f16::NAN).unwrap();
    flashcore::launch(&device, &kernel, &mut args(&q, &kv, &mut o)).unwrap();
    let out = device.download(&o).unwrap();
    assert!(out.iter().all(|x| *x == f16::ONE), "softmax-weighted mean of ones is one");
}
