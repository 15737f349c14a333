//! `flashcore._native`: the Python package's native module. It takes what the Python side read
//! off torch tensors (device pointers, element types, shapes and strides in elements, the
//! current stream's handle) and launches FlashCore's attention through `flashcore::interop`, or
//! runs it in the simulator on host bytes. Errors keep their Rust message: an argument error
//! becomes `ValueError`, anything else `flashcore.FlashCoreError` (a `RuntimeError`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use flashcore::interop::{self, AttentionOptions, BackwardTensors, HostTable, HostTensor};
use flashcore::runtime::{Device, ForeignStream, ForeignTensor};
use flashcore::simulate::HostView;
use flashcore::{bf16, f16, DeviceSeqOffsets, HalfFloat, SeqOffsets};
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

/// What every call takes besides its tensors; `target_name` `None` or `"auto"` for the default.
fn options(causal: bool, scale: Option<f32>, target_name: Option<&str>) -> PyResult<AttentionOptions> {
    let target = match target_name {
        None => None,
        Some(n) => flashcore::target::parse(n).map_err(PyValueError::new_err)?,
    };
    Ok(AttentionOptions { causal, scale, target })
}

/// Sequence offsets from their host values, checked.
fn host_offsets(name: &str, host: Vec<u32>) -> PyResult<SeqOffsets> {
    SeqOffsets::new(host).map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

fn foreign(name: &str, (ptr, dtype, shape, strides): CudaSpec) -> PyResult<ForeignTensor> {
    // SAFETY: the Python side passes the data pointer of a live CUDA tensor on `device`'s
    // ordinal, with its own shape and strides, and keeps the tensor referenced until the launch
    // is enqueued; torch's caching allocator keeps its memory until work queued on its stream
    // has finished.
    unsafe { ForeignTensor::new(ptr, &dtype, &shape, &strides) }
        .map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

/// Enqueues the library kernel `kernel` (`attention` or a variant) on the CUDA stream `stream`
/// of device `ordinal`, its parameters after `scale` as `scalars` and `tables` (each in the
/// kernel's order); returns the config's text and where it came from (the tuning table's entry,
/// the declared config, ...).
#[pyfunction]
#[pyo3(signature = (kernel, ordinal, stream, q, k, v, o, lse, scalars, tables, cu_seqlens, causal, scale, target_name))]
#[allow(clippy::too_many_arguments)]
fn attention(
    py: Python<'_>,
    kernel: &str,
    ordinal: usize,
    stream: u64,
    q: CudaSpec,
    k: CudaSpec,
    v: CudaSpec,
    o: CudaSpec,
    lse: Option<CudaSpec>,
    scalars: Vec<f32>,
    tables: Vec<CudaSpec>,
    cu_seqlens: Option<[(Vec<u32>, CudaSpec); 2]>,
    causal: bool,
    scale: Option<f32>,
    target_name: Option<&str>,
) -> PyResult<(String, String)> {
    let options = options(causal, scale, target_name)?;
    let (q, k, v) = (foreign("q", q)?, foreign("k", k)?, foreign("v", v)?);
    let mut o = foreign("o", o)?;
    let mut lse = lse.map(|l| foreign("lse", l)).transpose()?;
    let tables = tables.into_iter().map(|t| foreign("table", t)).collect::<PyResult<Vec<_>>>()?;
    let table_refs: Vec<&ForeignTensor> = tables.iter().collect();
    let offsets = match cu_seqlens {
        Some([cu_q, cu_k]) => {
            Some([device_offsets("cu_seqlens_q", cu_q)?, device_offsets("cu_seqlens_k", cu_k)?])
        }
        None => None,
    };
    let device = device(ordinal)?;
    // SAFETY: `stream` is torch's current stream on this device (its primary context).
    let stream = unsafe { ForeignStream::from_raw(stream) };
    let (config, source) = py
        .detach(|| {
            interop::kernel_on_stream(
                &device,
                kernel,
                &q,
                &k,
                &v,
                &mut o,
                lse.as_mut(),
                &scalars,
                &table_refs,
                offsets.as_ref().map(|[q, k]| [q, k]),
                &options,
                stream,
            )
        })
        .map_err(to_py)?;
    Ok((config.to_string(), source.to_string()))
}

/// Sequence offsets from their host values (checked) and the device tensor holding the same.
fn device_offsets(name: &str, (host, spec): (Vec<u32>, CudaSpec)) -> PyResult<DeviceSeqOffsets> {
    DeviceSeqOffsets::foreign(host_offsets(name, host)?, foreign(name, spec)?)
        .map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

/// A host table for the simulator: its storage's bytes, offset, shape, strides (elements) and
/// element type (`f32` or `i32`).
type HostTableSpec = (Vec<u8>, usize, Vec<usize>, Vec<usize>, String);

/// A host tensor decoded from its storage's bytes: the storage, where the tensor starts in it,
/// and its view.
struct HostBuffer<T> {
    storage: Vec<T>,
    offset: usize,
    view: HostView,
}

impl<T> HostBuffer<T> {
    /// `bytes` read as little-endian elements of `N` bytes each; `name` for the errors.
    fn decode<const N: usize>(
        name: &str,
        bytes: &[u8],
        offset: usize,
        view: HostView,
        element: impl Fn([u8; N]) -> T,
    ) -> PyResult<HostBuffer<T>> {
        if bytes.len() % N != 0 {
            return Err(PyValueError::new_err(format!(
                "{name}: {} bytes is not a whole number of {}-bit elements",
                bytes.len(),
                8 * N
            )));
        }
        let storage: Vec<T> =
            bytes.chunks_exact(N).map(|c| element(c.try_into().expect("chunks of N bytes"))).collect();
        if offset > storage.len() {
            return Err(PyValueError::new_err(format!(
                "{name}: storage offset {offset} is past its {} elements",
                storage.len()
            )));
        }
        Ok(HostBuffer { storage, offset, view })
    }

    /// The tensor, as the simulator takes it.
    fn tensor(&self) -> HostTensor<'_, T> {
        HostTensor { data: &self.storage[self.offset..], view: self.view.clone() }
    }
}

/// A q, k, v, o or d_out tensor of 16-bit elements.
fn decode16<T: HalfFloat>(name: &str, (bytes, offset, shape, strides): &HostSpec) -> PyResult<HostBuffer<T>> {
    HostBuffer::decode(name, bytes, *offset, HostView::strided(shape, strides), T::from_le_bytes)
}

/// A table (or the log-sum-exp) of 32-bit elements, f32 or i32.
enum Decoded {
    F32(HostBuffer<f32>),
    I32(HostBuffer<i32>),
}

fn decode32(name: &str, (bytes, offset, shape, strides, dtype): &HostTableSpec) -> PyResult<Decoded> {
    let view = HostView::strided(shape, strides);
    match dtype.as_str() {
        "f32" => HostBuffer::decode(name, bytes, *offset, view, f32::from_le_bytes).map(Decoded::F32),
        "i32" => HostBuffer::decode(name, bytes, *offset, view, i32::from_le_bytes).map(Decoded::I32),
        other => Err(PyValueError::new_err(format!("{name}: element type {other}; tables are f32 or i32"))),
    }
}

/// Row-major elements as the little-endian bytes Python reads them from.
fn to_bytes<T: HalfFloat>(py: Python<'_>, elements: &[T]) -> Py<PyBytes> {
    PyBytes::new(py, &elements.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unbind()
}

fn simulate_typed<T: HalfFloat>(
    py: Python<'_>,
    kernel: &str,
    specs: [HostSpec; 3],
    scalars: &[f32],
    tables: &[HostTableSpec],
    cu_seqlens: Option<[Vec<u32>; 2]>,
    options: &AttentionOptions,
) -> PyResult<(Py<PyBytes>, Vec<f32>)> {
    let offsets = match cu_seqlens {
        Some([cu_q, cu_k]) => {
            Some([host_offsets("cu_seqlens_q", cu_q)?, host_offsets("cu_seqlens_k", cu_k)?])
        }
        None => None,
    };
    let qkv = ["q", "k", "v"]
        .iter()
        .zip(&specs)
        .map(|(n, spec)| decode16::<T>(n, spec))
        .collect::<PyResult<Vec<_>>>()?;
    let decoded = tables.iter().map(|t| decode32("table", t)).collect::<PyResult<Vec<_>>>()?;
    let host_tables: Vec<HostTable> = decoded
        .iter()
        .map(|t| match t {
            Decoded::F32(b) => HostTable::F32(b.tensor()),
            Decoded::I32(b) => HostTable::I32(b.tensor()),
        })
        .collect();
    let [q, k, v] = [0, 1, 2].map(|i| qkv[i].tensor());
    let (o, lse) = py
        .detach(|| {
            interop::simulate_kernel(
                kernel,
                q,
                k,
                v,
                scalars,
                &host_tables,
                offsets.as_ref().map(|[q, k]| [q, k]),
                options,
            )
        })
        .map_err(to_py)?;
    Ok((to_bytes(py, &o), lse))
}

/// Runs the library kernel `kernel` in the simulator on host tensors of `dtype` (`f16` or
/// `bf16`), its parameters after `scale` as `scalars` and `tables`; returns O's bytes
/// (row-major `[B, H, S, D]`) and the log-sum-exp (`[B, H, S]`, row-major).
#[pyfunction]
#[pyo3(signature = (kernel, dtype, q, k, v, scalars, tables, cu_seqlens, causal, scale, target_name))]
#[allow(clippy::too_many_arguments)]
fn simulate_attention(
    py: Python<'_>,
    kernel: &str,
    dtype: &str,
    q: HostSpec,
    k: HostSpec,
    v: HostSpec,
    scalars: Vec<f32>,
    tables: Vec<HostTableSpec>,
    cu_seqlens: Option<[Vec<u32>; 2]>,
    causal: bool,
    scale: Option<f32>,
    target_name: Option<&str>,
) -> PyResult<(Py<PyBytes>, Vec<f32>)> {
    let options = options(causal, scale, target_name)?;
    match dtype {
        "f16" => simulate_typed::<f16>(py, kernel, [q, k, v], &scalars, &tables, cu_seqlens, &options),
        "bf16" => simulate_typed::<bf16>(py, kernel, [q, k, v], &scalars, &tables, cu_seqlens, &options),
        other => {
            Err(PyValueError::new_err(format!("q: element type is {other}; attention takes f16 or bf16")))
        }
    }
}

/// Enqueues the backward of `attention` (dQ, then dK/dV) on the CUDA stream `stream` of device
/// `ordinal`: reads `q`, `k`, `v`, the forward's `o` and `lse`, and `d_out`; writes `dq`, `dk`,
/// `dv` and the workspace `delta`.
#[pyfunction]
#[pyo3(signature = (ordinal, stream, q, k, v, o, lse, d_out, dq, dk, dv, delta, causal, scale, target_name))]
#[allow(clippy::too_many_arguments)]
fn attention_backward(
    py: Python<'_>,
    ordinal: usize,
    stream: u64,
    q: CudaSpec,
    k: CudaSpec,
    v: CudaSpec,
    o: CudaSpec,
    lse: CudaSpec,
    d_out: CudaSpec,
    dq: CudaSpec,
    dk: CudaSpec,
    dv: CudaSpec,
    delta: CudaSpec,
    causal: bool,
    scale: Option<f32>,
    target_name: Option<&str>,
) -> PyResult<()> {
    let options = options(causal, scale, target_name)?;
    let (q, k, v, o, lse, d_out) = (
        foreign("q", q)?,
        foreign("k", k)?,
        foreign("v", v)?,
        foreign("o", o)?,
        foreign("lse", lse)?,
        foreign("d_out", d_out)?,
    );
    let (mut dq, mut dk, mut dv, mut delta) =
        (foreign("dq", dq)?, foreign("dk", dk)?, foreign("dv", dv)?, foreign("delta", delta)?);
    let device = device(ordinal)?;
    // SAFETY: `stream` is torch's current stream on this device (its primary context).
    let stream = unsafe { ForeignStream::from_raw(stream) };
    let tensors = BackwardTensors {
        q: &q,
        k: &k,
        v: &v,
        o: &o,
        lse: &lse,
        d_out: &d_out,
        dq: &mut dq,
        dk: &mut dk,
        dv: &mut dv,
        delta: &mut delta,
    };
    py.detach(|| interop::attention_backward_on_stream(&device, tensors, &options, stream)).map_err(to_py)
}

fn simulate_backward_typed<T: HalfFloat>(
    py: Python<'_>,
    specs: [HostSpec; 5],
    lse: &HostTableSpec,
    options: &AttentionOptions,
) -> PyResult<[Py<PyBytes>; 3]> {
    let names = ["q", "k", "v", "o", "d_out"];
    let buffers =
        names.iter().zip(&specs).map(|(n, spec)| decode16::<T>(n, spec)).collect::<PyResult<Vec<_>>>()?;
    let Decoded::F32(lse) = decode32("lse", lse)? else {
        return Err(PyValueError::new_err("lse: a float32 tensor is needed"));
    };
    let [q, k, v, o, d_out] = [0, 1, 2, 3, 4].map(|i| buffers[i].tensor());
    let (inputs, lse) = ([q, k, v, o, d_out], lse.tensor());
    let (dq, dk, dv) =
        py.detach(|| interop::simulate_attention_backward(inputs, lse, options)).map_err(to_py)?;
    Ok([to_bytes(py, &dq), to_bytes(py, &dk), to_bytes(py, &dv)])
}

/// The backward in the simulator on host tensors of `dtype`: returns dQ's, dK's and dV's bytes,
/// row-major, shaped as q, k and v.
#[pyfunction]
#[pyo3(signature = (dtype, q, k, v, o, d_out, lse, causal, scale, target_name))]
#[allow(clippy::too_many_arguments)]
fn simulate_attention_backward(
    py: Python<'_>,
    dtype: &str,
    q: HostSpec,
    k: HostSpec,
    v: HostSpec,
    o: HostSpec,
    d_out: HostSpec,
    lse: HostTableSpec,
    causal: bool,
    scale: Option<f32>,
    target_name: Option<&str>,
) -> PyResult<[Py<PyBytes>; 3]> {
    let options = options(causal, scale, target_name)?;
    match dtype {
        "f16" => simulate_backward_typed::<f16>(py, [q, k, v, o, d_out], &lse, &options),
        "bf16" => simulate_backward_typed::<bf16>(py, [q, k, v, o, d_out], &lse, &options),
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
    m.add_function(wrap_pyfunction!(attention_backward, m)?)?;
    m.add_function(wrap_pyfunction!(simulate_attention_backward, m)?)?;
    m.add("KERNELS", interop::kernel_names())?;
    Ok(())
}
