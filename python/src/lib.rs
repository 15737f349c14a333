//! `flashcore._native`: the Python package's native module. It takes what the Python side read
//! off torch tensors (device pointers, element types, shapes and strides in elements, the
//! current stream's handle) and launches FlashCore's attention through `flashcore::interop`, or
//! runs it in the simulator on host bytes. Errors keep their Rust message: an argument error
//! becomes `ValueError`, anything else `flashcore.FlashCoreError` (a `RuntimeError`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use flashcore::interop::{self, AttentionOptions, HostTensor};
use flashcore::runtime::{Device, ForeignStream, ForeignTensor};
use flashcore::simulate::HostView;
use flashcore::{bf16, f16, HalfFloat};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

create_exception!(
    flashcore,
    FlashCoreError,
    PyRuntimeError,
    "A FlashCore failure that is not a bad argument: no driver or device, a driver call, a timeout."
);

/// A CUDA tensor as the Python side describes it: data pointer, element type name (`f16`,
/// `bf16`, `f32`), shape and strides in elements, `[B, H, S, D]` (a BSHD tensor transposed).
type CudaSpec = (u64, String, Vec<usize>, Vec<usize>);

/// A host tensor for the simulator: the little-endian bytes of its storage, the offset of its
/// first element in elements, shape and strides in elements.
type HostSpec<'a> = (&'a [u8], usize, Vec<usize>, Vec<usize>);

fn to_py(e: flashcore::Error) -> PyErr {
    match e {
        flashcore::Error::Argument { .. } => PyValueError::new_err(e.to_string()),
        other => FlashCoreError::new_err(other.to_string()),
    }
}

/// Devices opened so far, by ordinal (CUDA_VISIBLE_DEVICES numbering, as torch's): each holds
/// the primary context torch uses too, and the kernels loaded into it.
fn device(ordinal: usize) -> PyResult<Arc<Device>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<Device>>>> = OnceLock::new();
    let mut devices = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = devices.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Arc::new(Device::new(ordinal).map_err(|e| to_py(e.into()))?);
    devices.insert(ordinal, d.clone());
    Ok(d)
}

fn target(name: Option<&str>) -> PyResult<Option<flashcore::Target>> {
    match name {
        None => Ok(None),
        Some(n) => flashcore::target::parse(n).map_err(PyValueError::new_err),
    }
}

fn foreign(name: &str, (ptr, dtype, shape, strides): CudaSpec) -> PyResult<ForeignTensor> {
    // SAFETY: the Python side passes the data pointer of a live CUDA tensor on `device`'s
    // ordinal, with its own shape and strides, and keeps the tensor referenced until the launch
    // is enqueued; torch's caching allocator keeps its memory until work queued on its stream
    // has finished.
    unsafe { ForeignTensor::new(ptr, &dtype, &shape, &strides) }
        .map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

/// Enqueues attention on the CUDA stream `stream` of device `ordinal`; returns the config's text
/// and where it came from (the tuning table's entry, the declared config, ...).
#[pyfunction]
#[pyo3(signature = (ordinal, stream, q, k, v, o, lse, causal, scale, target_name))]
#[allow(clippy::too_many_arguments)]
fn attention(
    py: Python<'_>,
    ordinal: usize,
    stream: u64,
    q: CudaSpec,
    k: CudaSpec,
    v: CudaSpec,
    o: CudaSpec,
    lse: Option<CudaSpec>,
    causal: bool,
    scale: Option<f32>,
    target_name: Option<&str>,
) -> PyResult<(String, String)> {
    let options = AttentionOptions { causal, scale, target: target(target_name)? };
    let (q, k, v) = (foreign("q", q)?, foreign("k", k)?, foreign("v", v)?);
    let mut o = foreign("o", o)?;
    let mut lse = lse.map(|l| foreign("lse", l)).transpose()?;
    let device = device(ordinal)?;
    // SAFETY: `stream` is torch's current stream on this device (its primary context).
    let stream = unsafe { ForeignStream::from_raw(stream) };
    let (config, source) = py
        .detach(|| interop::attention_on_stream(&device, &q, &k, &v, &mut o, lse.as_mut(), &options, stream))
        .map_err(to_py)?;
    Ok((config.to_string(), source.to_string()))
}

fn host<'a, T: HalfFloat>(
    name: &str,
    (bytes, offset, shape, strides): &HostSpec,
    buffer: &'a mut Vec<T>,
) -> PyResult<HostTensor<'a, T>> {
    if bytes.len() % 2 != 0 {
        return Err(PyValueError::new_err(format!(
            "{name}: {} bytes is not a whole number of 16-bit elements",
            bytes.len()
        )));
    }
    *buffer = bytes.chunks_exact(2).map(|c| T::from_le_bytes([c[0], c[1]])).collect();
    let data = buffer.get(*offset..).ok_or_else(|| {
        PyValueError::new_err(format!(
            "{name}: storage offset {offset} is past its {} elements",
            buffer.len()
        ))
    })?;
    Ok(HostTensor { data, view: HostView::strided(shape, strides) })
}

fn simulate_typed<T: HalfFloat>(
    py: Python<'_>,
    specs: [HostSpec; 3],
    options: &AttentionOptions,
) -> PyResult<(Py<PyBytes>, Vec<f32>)> {
    let mut buffers: [Vec<T>; 3] = Default::default();
    let [bq, bk, bv] = &mut buffers;
    let q = host("q", &specs[0], bq)?;
    let k = host("k", &specs[1], bk)?;
    let v = host("v", &specs[2], bv)?;
    let (o, lse) = py.detach(|| interop::simulate_attention(q, k, v, options)).map_err(to_py)?;
    let bytes: Vec<u8> = o.iter().flat_map(|x| x.to_le_bytes()).collect();
    Ok((PyBytes::new(py, &bytes).unbind(), lse))
}

/// Runs attention in the simulator on host tensors of `dtype` (`f16` or `bf16`); returns O's
/// bytes (row-major `[B, H, S, D]`) and the log-sum-exp (`[B, H, S]`, row-major).
#[pyfunction]
#[pyo3(signature = (dtype, q, k, v, causal, scale, target_name))]
#[allow(clippy::too_many_arguments)]
fn simulate_attention(
    py: Python<'_>,
    dtype: &str,
    q: HostSpec,
    k: HostSpec,
    v: HostSpec,
    causal: bool,
    scale: Option<f32>,
    target_name: Option<&str>,
) -> PyResult<(Py<PyBytes>, Vec<f32>)> {
    let options = AttentionOptions { causal, scale, target: target(target_name)? };
    match dtype {
        "f16" => simulate_typed::<f16>(py, [q, k, v], &options),
        "bf16" => simulate_typed::<bf16>(py, [q, k, v], &options),
        other => {
            Err(PyValueError::new_err(format!("q: element type is {other}; attention takes f16 or bf16")))
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FlashCoreError", m.py().get_type::<FlashCoreError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(attention, m)?)?;
    m.add_function(wrap_pyfunction!(simulate_attention, m)?)?;
    Ok(())
}
