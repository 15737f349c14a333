//! FlashCore's runtime: opens a CUDA device through the driver API (`cudarc`, loaded at run time
//! so it builds and runs on machines without CUDA), JIT-loads generated PTX once per kernel
//! configuration, sets its dynamic shared memory, and launches it on typed, strided buffers
//! (`f16`, `bf16`, `f32`).
//! Every driver failure is a [`RuntimeError`] value, never a panic.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, DevicePtr, DeviceRepr, ValidAsZeroBits,
};

/// The stream a [`TensorArg`] is asked for its pointer on (for tensors from other libraries).
pub use cudarc::driver::CudaStream;
pub use half::{bf16, f16};

/// How long `synchronize` and synchronous launches wait before reporting a hang (the default
/// of [`Device::launch_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no CUDA driver: libcuda could not be loaded on this machine")]
    NoDriver,
    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice { ordinal: usize, count: i32 },
    #[error("CUDA driver call `{call}` failed: {message}")]
    Driver { call: &'static str, message: String },
    #[error("kernel `{kernel}` needs {requested} bytes of shared memory per CTA; this device allows {limit} ({} bytes over)", requested - limit)]
    SharedMemory { kernel: String, requested: u32, limit: u32 },
    #[error("kernel `{kernel}` needs {requested} threads per CTA; this device allows {limit}")]
    Threads { kernel: String, requested: u32, limit: u32 },
    #[error("the GPU did not finish within {seconds:.1} s: {context} (a hung kernel; this device's context is unusable now)")]
    Timeout { seconds: f64, context: String },
    #[error("buffer of {got} elements does not match shape {shape:?} ({expected} elements)")]
    Length { shape: Vec<usize>, expected: usize, got: usize },
    #[error("shape {shape:?} with strides {strides:?}: {why}")]
    Strides { shape: Vec<usize>, strides: Vec<usize>, why: String },
    #[error("argument {index}: device pointer {ptr:#x} is not 16-byte aligned (the kernels copy 16 bytes at a time)")]
    Misaligned { index: usize, ptr: u64 },
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

/// Wraps a driver call: its error becomes `RuntimeError::Driver` naming the call, and a panic
/// inside cudarc (it panics when a driver symbol is missing) becomes one too.
fn driver<T>(
    call: &'static str,
    f: impl FnOnce() -> std::result::Result<T, cudarc::driver::DriverError>,
) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RuntimeError::Driver { call, message: e.to_string() }),
        Err(panic) => Err(RuntimeError::Driver {
            call,
            message: panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked inside the driver bindings".into()),
        }),
    }
}

/// What a launcher needs to know about the device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub sm_count: u32,
    /// Largest dynamic shared memory a CTA may opt into, in bytes.
    pub max_shared_per_block: u32,
    pub max_threads_per_block: u32,
    /// Shared memory of one SM, in bytes.
    pub shared_per_sm: u32,
    /// 32-bit registers of one SM.
    pub registers_per_sm: u32,
}

/// A generated kernel, ready to be loaded: `key` identifies it in the module cache.
#[derive(Clone, Copy, Debug)]
pub struct KernelImage<'a> {
    pub key: u64,
    pub ptx: &'a str,
    pub entry: &'a str,
    pub shared_bytes: u32,
    pub threads_per_cta: u32,
}

/// Launches recorded by [`Device::capture`], replayed together on the device's stream.
pub struct Graph {
    graph: cudarc::driver::CudaGraph,
    /// The device's stream: replays are ordered with its other work.
    stream: Arc<CudaStream>,
}

impl Graph {
    /// Enqueues the recorded launches on the device's stream, in their order. Asynchronous,
    /// like a launch.
    pub fn launch(&self) -> Result<()> {
        driver("cuGraphLaunch", || {
            self.stream.context().bind_to_thread()?;
            // SAFETY: the executable graph is alive (owned by `self.graph`), the stream too.
            unsafe {
                cudarc::driver::result::graph::launch(self.graph.cu_graph_exec(), self.stream.cu_stream())
            }
        })
    }
}

/// One kernel argument, in the entry's parameter order.
pub enum LaunchArg<'a> {
    Buffer(&'a dyn TensorArg),
    BufferMut(&'a mut dyn TensorArg),
    /// A null pointer (an optional output left out).
    Null,
    F32(f32),
    U32(u32),
    /// A tensor map (`CUtensorMap`, by value) over the tensor that launch argument `tensor`
    /// (a `Buffer`, earlier in the list) points to.
    TensorMap {
        tensor: usize,
        map: TensorMapSpec,
    },
}

/// A tiled tensor map over a tensor of 16-bit elements, 128-byte swizzle, zeros outside its
/// bounds: what `cuTensorMapEncodeTiled` encodes at launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorMapSpec {
    /// bf16 elements (else f16).
    pub bf16: bool,
    /// Extents, innermost first.
    pub dims: [u64; 4],
    /// Strides in bytes of the outer three axes.
    pub strides: [u64; 3],
    /// The box a copy brings, innermost first.
    pub box_dims: [u32; 4],
}

impl TensorMapSpec {
    /// Encodes the map over the tensor at device address `ptr`.
    fn encode(&self, ptr: u64) -> Result<Box<cudarc::driver::sys::CUtensorMap>> {
        use cudarc::driver::sys::*;
        if let Some(s) = self.strides.iter().find(|s| **s % 16 != 0 || **s >= 1 << 40) {
            return Err(RuntimeError::Strides {
                shape: self.dims.iter().rev().map(|d| *d as usize).collect(),
                strides: self.strides.iter().rev().map(|s| *s as usize / 2).collect(),
                why: format!("a stride of {s} bytes: bulk tensor copies need strides that are multiples of 16 bytes (8 elements)"),
            });
        }
        let mut map = Box::new(CUtensorMap { opaque: [0; 16] });
        let element_strides = [1u32; 4];
        let dtype = if self.bf16 {
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
        } else {
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16
        };
        // SAFETY: every array has the rank's length (4, and 3 strides), `map` is a 64-byte
        // aligned CUtensorMap the call fills, and the driver only records `ptr`.
        driver("cuTensorMapEncodeTiled", || unsafe {
            cuTensorMapEncodeTiled(
                &mut *map,
                dtype,
                4,
                ptr as *mut std::ffi::c_void,
                self.dims.as_ptr(),
                self.strides.as_ptr(),
                self.box_dims.as_ptr(),
                element_strides.as_ptr(),
                CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
            .result()
        })?;
        Ok(map)
    }
}

/// Element types a device tensor holds.
pub trait Element: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + Unpin + 'static {
    /// The type's name in the DSL and in error messages.
    const NAME: &'static str;
}

impl Element for f16 {
    const NAME: &'static str = "f16";
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
}

impl Element for f32 {
    const NAME: &'static str = "f32";
}

/// Input tables of integers (document ids).
impl Element for i32 {
    const NAME: &'static str = "i32";
}

/// Sequence offsets (`cu_seqlens`).
impl Element for u32 {
    const NAME: &'static str = "u32";
}

/// A device buffer with a logical shape and strides (in elements). Tensors from
/// [`Device::upload`] are contiguous and row-major; [`Device::upload_strided`] takes any
/// strides that stay inside the buffer (a BSHD buffer viewed as `[B, H, S, D]`, for example).
pub struct DeviceTensor<T> {
    data: CudaSlice<T>,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl<T> DeviceTensor<T> {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Elements between neighbours along each axis.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Elements in the logical shape.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A device tensor of any element type, as the launcher sees it.
pub trait TensorArg {
    fn dtype(&self) -> &'static str;
    fn shape(&self) -> &[usize];
    fn strides(&self) -> &[usize];
    /// Elements the underlying buffer holds (at least what the strides reach).
    fn buffer_len(&self) -> usize;
    fn device_ptr(&self, stream: &Arc<CudaStream>) -> u64;
}

impl<T: Element> TensorArg for DeviceTensor<T> {
    fn dtype(&self) -> &'static str {
        T::NAME
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn strides(&self) -> &[usize] {
        &self.strides
    }
    fn buffer_len(&self) -> usize {
        self.data.len()
    }
    fn device_ptr(&self, stream: &Arc<CudaStream>) -> u64 {
        self.data.device_ptr(stream).0
    }
}

/// A tensor in device memory that another library allocated and owns (a PyTorch tensor, say),
/// launched on in place: its pointer, element type, logical shape and strides in elements.
#[derive(Clone, Debug)]
pub struct ForeignTensor {
    ptr: u64,
    dtype: &'static str,
    shape: Vec<usize>,
    strides: Vec<usize>,
    reach: usize,
}

impl ForeignTensor {
    /// The tensor at device address `ptr` of `dtype` (`f16`, `bf16`, `f32`, `i32`, `u32`) with
    /// `shape` and `strides` (in elements). The launcher checks shapes and strides against the
    /// kernel as for its own tensors; the elements the strides reach are taken to be the buffer.
    ///
    /// # Safety
    /// `ptr` must be memory of this process's primary context on the device it is launched on,
    /// holding every element `shape` and `strides` reach, and stay allocated until the launches
    /// that read or write it have finished.
    pub unsafe fn new(ptr: u64, dtype: &str, shape: &[usize], strides: &[usize]) -> Result<ForeignTensor> {
        const ELEMENTS: [&str; 5] = ["f16", "bf16", "f32", "i32", "u32"];
        let Some(dtype) = ELEMENTS.into_iter().find(|name| *name == dtype) else {
            return Err(RuntimeError::Strides {
                shape: shape.to_vec(),
                strides: strides.to_vec(),
                why: format!("element type `{dtype}` is not one of {}", ELEMENTS.join(", ")),
            });
        };
        if shape.len() != strides.len() {
            return Err(RuntimeError::Strides {
                shape: shape.to_vec(),
                strides: strides.to_vec(),
                why: "one stride per axis is needed".into(),
            });
        }
        let reach = if shape.contains(&0) {
            0
        } else {
            1 + shape.iter().zip(strides).map(|(n, s)| (n - 1) * s).sum::<usize>()
        };
        Ok(ForeignTensor { ptr, dtype, shape: shape.to_vec(), strides: strides.to_vec(), reach })
    }

    /// The device address of the first element.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
}

impl TensorArg for ForeignTensor {
    fn dtype(&self) -> &'static str {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn strides(&self) -> &[usize] {
        &self.strides
    }
    fn buffer_len(&self) -> usize {
        self.reach
    }
    fn device_ptr(&self, _stream: &Arc<CudaStream>) -> u64 {
        self.ptr
    }
}

/// A CUDA stream another library owns (`torch.cuda.current_stream().cuda_stream`), for
/// [`Device::launch_on`].
#[derive(Clone, Copy, Debug)]
pub struct ForeignStream(cudarc::driver::sys::CUstream);

// SAFETY: a CUstream handle may be used from any thread of the process (the driver serializes).
unsafe impl Send for ForeignStream {}
unsafe impl Sync for ForeignStream {}

impl ForeignStream {
    /// The stream whose driver handle is `handle` (0: the legacy default stream).
    ///
    /// # Safety
    /// `handle` must be a stream of the context the launches go to, alive until they finish.
    pub unsafe fn from_raw(handle: u64) -> ForeignStream {
        ForeignStream(handle as usize as cudarc::driver::sys::CUstream)
    }
}

/// Row-major strides of `shape`, in elements.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// Checks that `strides` fit `shape` and stay inside a buffer of `len` elements.
pub fn check_strides(shape: &[usize], strides: &[usize], len: usize) -> Result<()> {
    let bad =
        |why: String| Err(RuntimeError::Strides { shape: shape.to_vec(), strides: strides.to_vec(), why });
    if strides.len() != shape.len() {
        return bad(format!("{} strides for {} axes", strides.len(), shape.len()));
    }
    if shape.contains(&0) {
        return Ok(());
    }
    let mut last = 0usize;
    for (n, s) in shape.iter().zip(strides) {
        match (n - 1).checked_mul(*s).and_then(|x| x.checked_add(last)) {
            Some(x) => last = x,
            None => return bad("the strides overflow".into()),
        }
    }
    if last >= len {
        return bad(format!("they reach element {last} but the buffer holds {len}"));
    }
    Ok(())
}

struct LoadedKernel {
    function: CudaFunction,
    /// CTAs of this kernel that fit on one SM (asked of the driver once).
    ctas_per_sm: std::sync::OnceLock<u32>,
}

/// An open CUDA device with one stream and a cache of loaded kernels.
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    kernels: Mutex<HashMap<u64, Arc<LoadedKernel>>>,
    launch_timeout: Mutex<Duration>,
    /// Per kernel (by its key), the scratch buffer its launches share ([`Device::workspace`]).
    workspaces: Mutex<HashMap<u64, Arc<DeviceTensor<u32>>>>,
    /// Set while [`Device::capture`] records: the stream launches go to instead of `stream`
    /// (`stream`, the legacy default stream, cannot be captured).
    capturing: Mutex<Option<Arc<CudaStream>>>,
}

/// Scratch memory written between timed launches (see [`Device::flush_l2`]).
pub struct L2Flush(CudaSlice<u8>);

/// A recorded point on the device's stream, for timing with CUDA events.
pub struct Event(CudaEvent);

impl Event {
    /// Milliseconds between `self` and the later event `end` (both must have completed).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        driver("cuEventElapsedTime", || self.0.elapsed_ms(&end.0))
    }
}

impl Device {
    /// Opens device `ordinal`. Without a driver or without that device, a typed error.
    pub fn new(ordinal: usize) -> Result<Device> {
        // SAFETY: only probes whether the shared library can be opened. (When another crate makes
        // cudarc link libcuda, feature `link-cuda`, the process could not have started without it.)
        #[cfg(not(feature = "link-cuda"))]
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(RuntimeError::NoDriver);
        }
        let count = driver("cuDeviceGetCount", CudaContext::device_count)?;
        if ordinal as i64 >= count as i64 {
            return Err(RuntimeError::NoDevice { ordinal, count });
        }
        let ctx = driver("cuDevicePrimaryCtxRetain", || CudaContext::new(ordinal))?;
        // One stream, in order: cudarc's per-buffer event tracking is not needed.
        // SAFETY: every buffer of this device is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let attr = |a: CUdevice_attribute| driver("cuDeviceGetAttribute", || ctx.attribute(a));
        let info = DeviceInfo {
            name: driver("cuDeviceGetName", || ctx.name())?,
            compute_capability: driver("cuDeviceComputeCapability", || ctx.compute_capability())?,
            sm_count: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
            max_shared_per_block: attr(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )? as u32,
            max_threads_per_block: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?
                as u32,
            shared_per_sm: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)?
                as u32,
            registers_per_sm: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR)?
                as u32,
        };
        Ok(Device {
            ctx,
            stream,
            info,
            kernels: Mutex::new(HashMap::new()),
            launch_timeout: Mutex::new(DEFAULT_TIMEOUT),
            workspaces: Mutex::new(HashMap::new()),
            capturing: Mutex::new(None),
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// How long a synchronous launch waits for its kernel before reporting a hang.
    pub fn launch_timeout(&self) -> Duration {
        *self.launch_timeout.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_launch_timeout(&self, timeout: Duration) {
        *self.launch_timeout.lock().unwrap_or_else(|p| p.into_inner()) = timeout;
    }

    /// Copies `data` to a new contiguous device tensor of `shape`.
    pub fn upload<T: Element>(&self, data: &[T], shape: &[usize]) -> Result<DeviceTensor<T>> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(RuntimeError::Length { shape: shape.to_vec(), expected, got: data.len() });
        }
        self.upload_strided(data, shape, &contiguous_strides(shape))
    }

    /// Copies the buffer `data` to the device and views it as `shape` with `strides` (in
    /// elements), which must stay inside it.
    pub fn upload_strided<T: Element>(
        &self,
        data: &[T],
        shape: &[usize],
        strides: &[usize],
    ) -> Result<DeviceTensor<T>> {
        check_strides(shape, strides, data.len())?;
        // A zero-length allocation is not a valid device pointer: keep one element.
        let buf = if data.is_empty() {
            driver("cuMemAlloc", || self.stream.alloc_zeros::<T>(1))?
        } else {
            driver("cuMemcpyHtoD", || self.stream.clone_htod(data))?
        };
        Ok(DeviceTensor { data: buf, shape: shape.to_vec(), strides: strides.to_vec() })
    }

    /// The scratch buffer of kernel `key` (split-KV across CTAs: its CTAs' states and arrival
    /// counters), at least `words` u32 long: zeroed when first allocated (or grown), then kept
    /// for the kernel's later launches on this device, which must leave it as they found it
    /// where it matters (the counters zero). Launches of one kernel share it: they run in order on
    /// one stream.
    pub fn workspace(&self, key: u64, words: usize) -> Result<Arc<DeviceTensor<u32>>> {
        let mut all = self.workspaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ws) = all.get(&key).filter(|ws| ws.len() >= words) {
            return Ok(ws.clone());
        }
        let ws = Arc::new(self.filled(&[words.max(1)], 0u32)?);
        all.insert(key, ws.clone());
        Ok(ws)
    }

    /// A new contiguous device tensor of `shape` with every element set to `value` (use NaN to
    /// poison outputs, so an element the kernel never writes cannot pass a check).
    pub fn filled<T: Element>(&self, shape: &[usize], value: T) -> Result<DeviceTensor<T>> {
        let n: usize = shape.iter().product();
        self.upload(&vec![value; n], shape)
    }

    /// Copies `data` into `tensor`'s whole buffer (its storage, as [`Device::download`] gives
    /// it) in place: the same device memory, so launches recorded in a [`Graph`] see the new
    /// values. Ordered after the work enqueued before it.
    pub fn overwrite<T: Element>(&self, tensor: &mut DeviceTensor<T>, data: &[T]) -> Result<()> {
        if data.len() != tensor.data.len() {
            return Err(RuntimeError::Length {
                shape: tensor.shape.clone(),
                expected: tensor.data.len(),
                got: data.len(),
            });
        }
        driver("cuMemcpyHtoD", || self.stream.memcpy_htod(data, &mut tensor.data))
    }

    /// The tensor's whole buffer, in storage order (for a strided tensor, what the strides
    /// index into).
    pub fn download<T: Element>(&self, tensor: &DeviceTensor<T>) -> Result<Vec<T>> {
        let mut all = driver("cuMemcpyDtoH", || self.stream.clone_dtoh(&tensor.data))?;
        if tensor.shape.contains(&0) {
            all.clear();
        }
        Ok(all)
    }

    fn load(&self, image: &KernelImage) -> Result<Arc<LoadedKernel>> {
        let mut cache = self.kernels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cache.get(&image.key) {
            return Ok(k.clone());
        }
        if image.shared_bytes > self.info.max_shared_per_block {
            return Err(RuntimeError::SharedMemory {
                kernel: image.entry.to_string(),
                requested: image.shared_bytes,
                limit: self.info.max_shared_per_block,
            });
        }
        if image.threads_per_cta > self.info.max_threads_per_block {
            return Err(RuntimeError::Threads {
                kernel: image.entry.to_string(),
                requested: image.threads_per_cta,
                limit: self.info.max_threads_per_block,
            });
        }
        let module =
            driver("cuModuleLoadData", || self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(image.ptx)))?;
        let function = driver("cuModuleGetFunction", || module.load_function(image.entry))?;
        // Set once after load, not before every launch.
        driver("cuFuncSetAttribute", || {
            function.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                image.shared_bytes as i32,
            )
        })?;
        let loaded = Arc::new(LoadedKernel { function, ctas_per_sm: std::sync::OnceLock::new() });
        cache.insert(image.key, loaded.clone());
        Ok(loaded)
    }

    /// How many CTAs of `image` fit on one SM at once, given its registers, threads and shared
    /// memory (the driver's occupancy calculator).
    pub fn ctas_per_sm(&self, image: &KernelImage) -> Result<u32> {
        let kernel = self.load(image)?;
        if let Some(n) = kernel.ctas_per_sm.get() {
            return Ok(*n);
        }
        let n = driver("cuOccupancyMaxActiveBlocksPerMultiprocessor", || {
            kernel.function.occupancy_max_active_blocks_per_multiprocessor(
                image.threads_per_cta,
                image.shared_bytes as usize,
                None,
            )
        })?;
        Ok(*kernel.ctas_per_sm.get_or_init(|| n))
    }

    /// Enqueues `image` on `grid` CTAs on the device's stream. Asynchronous: call
    /// [`Device::synchronize`] to wait.
    pub fn launch(&self, image: &KernelImage, grid: u32, args: &mut [LaunchArg]) -> Result<()> {
        let stream = self.capturing.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|s| s.cu_stream());
        self.launch_raw(image, grid, args, stream.unwrap_or_else(|| self.stream.cu_stream()))
    }

    /// Enqueues `image` on `grid` CTAs on a stream another library owns (PyTorch's current
    /// stream, say), ordered with that library's work on it. Asynchronous: the caller
    /// synchronizes that stream.
    pub fn launch_on(
        &self,
        image: &KernelImage,
        grid: u32,
        args: &mut [LaunchArg],
        stream: ForeignStream,
    ) -> Result<()> {
        self.launch_raw(image, grid, args, stream.0)
    }

    fn launch_raw(
        &self,
        image: &KernelImage,
        grid: u32,
        args: &mut [LaunchArg],
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<()> {
        let kernel = self.load(image)?;
        /// Argument values, kept alive (and in place) until the launch has read them.
        enum Value {
            Pointer(u64),
            F32(f32),
            U32(u32),
            TensorMap(Box<cudarc::driver::sys::CUtensorMap>),
        }
        let mut values: Vec<Value> = Vec::with_capacity(args.len());
        for (index, a) in args.iter().enumerate() {
            let value = match a {
                LaunchArg::Buffer(t) => Value::Pointer(t.device_ptr(&self.stream)),
                LaunchArg::BufferMut(t) => Value::Pointer(t.device_ptr(&self.stream)),
                LaunchArg::Null => Value::Pointer(0),
                LaunchArg::F32(x) => Value::F32(*x),
                LaunchArg::U32(x) => Value::U32(*x),
                LaunchArg::TensorMap { tensor, map } => match values.get(*tensor) {
                    Some(Value::Pointer(ptr)) if *ptr != 0 => Value::TensorMap(map.encode(*ptr)?),
                    _ => {
                        return Err(RuntimeError::Driver {
                            call: "cuTensorMapEncodeTiled",
                            message: format!("argument {index}: the tensor map's tensor (argument {tensor}) is not a device buffer"),
                        })
                    }
                },
            };
            values.push(value);
            if let Some(Value::Pointer(ptr)) = values.last() {
                if ptr % 16 != 0 {
                    return Err(RuntimeError::Misaligned { index, ptr: *ptr });
                }
            }
        }
        let mut params: Vec<*mut std::ffi::c_void> = values
            .iter_mut()
            .map(|v| match v {
                Value::Pointer(p) => p as *mut u64 as *mut std::ffi::c_void,
                Value::F32(x) => x as *mut f32 as *mut std::ffi::c_void,
                Value::U32(x) => x as *mut u32 as *mut std::ffi::c_void,
                Value::TensorMap(m) => {
                    &mut **m as *mut cudarc::driver::sys::CUtensorMap as *mut std::ffi::c_void
                }
            })
            .collect();
        driver("cuCtxSetCurrent", || self.ctx.bind_to_thread())?;
        // SAFETY: the arguments match the entry's parameters in order and type: the caller
        // (flashcore's launcher) derives both from the same IR; `params` points into `values`,
        // alive until the call returns (the driver copies them at launch).
        driver("cuLaunchKernel", || unsafe {
            cudarc::driver::result::launch_kernel(
                kernel.function.cu_function(),
                (grid, 1, 1),
                (image.threads_per_cta, 1, 1),
                image.shared_bytes,
                stream,
                &mut params,
            )
        })
    }

    /// A scratch buffer of `bytes` for [`Device::flush_l2`].
    pub fn l2_flush_buffer(&self, bytes: usize) -> Result<L2Flush> {
        driver("cuMemAlloc", || self.stream.alloc_zeros::<u8>(bytes)).map(L2Flush)
    }

    /// Overwrites the flush buffer on the stream: evicts the inputs of the last launch from L2
    /// and, while the GPU is busy with it, lets the host enqueue the next timed launch, so an
    /// event pair around that launch measures the kernel and not the host's launch latency.
    pub fn flush_l2(&self, buffer: &mut L2Flush) -> Result<()> {
        driver("cuMemsetD8Async", || self.stream.memset_zeros(&mut buffer.0))
    }

    /// Records an event on the stream (for timing).
    pub fn record(&self) -> Result<Event> {
        driver("cuEventRecord", || self.stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))).map(Event)
    }

    /// Records the launches `record` makes through [`Device::launch`] into a CUDA graph instead
    /// of running them, for [`Graph::launch`] to replay on the device's stream in one call.
    /// Every launch is recorded with its arguments as they are now (pointers, sizes, scalars):
    /// a replay reads and writes the same buffers, whatever they then hold. The launches are
    /// recorded on a stream of their own (the device's stream, the legacy default stream,
    /// cannot be captured); copies and allocations `record` makes are not recorded, and run
    /// then. Run the launches once before capturing them: loading a module while the stream
    /// captures is a typed error. Capture always ends, also when `record` fails (its error is
    /// returned).
    pub fn capture<E: From<RuntimeError>>(
        &self,
        record: impl FnOnce() -> std::result::Result<(), E>,
    ) -> std::result::Result<Graph, E> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        let stream = driver("cuStreamCreate", || self.ctx.new_stream())?;
        // Work enqueued before the capture finishes first (a recorded stream runs nothing).
        driver("cuStreamSynchronize", || self.stream.synchronize())?;
        driver("cuStreamBeginCapture", || {
            stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        })?;
        *self.capturing.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream.clone());
        let recorded = record();
        *self.capturing.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let ended = driver("cuStreamEndCapture", || stream.end_capture(CUgraphInstantiate_flags(0)));
        recorded?;
        match ended? {
            Some(graph) => Ok(Graph { graph, stream: self.stream.clone() }),
            None => Err(RuntimeError::Driver {
                call: "cuStreamEndCapture",
                message: "nothing was recorded".into(),
            }
            .into()),
        }
    }

    /// Waits for all enqueued work, at most `timeout`; a hang becomes `RuntimeError::Timeout`
    /// naming `context` instead of a stuck process.
    pub fn synchronize_within(&self, timeout: Duration, context: &str) -> Result<()> {
        let done = driver("cuEventRecord", || self.stream.record_event(None))?;
        let start = Instant::now();
        loop {
            if driver("cuEventQuery", || done.try_is_complete())? {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(RuntimeError::Timeout {
                    seconds: timeout.as_secs_f64(),
                    context: context.to_string(),
                });
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    pub fn synchronize(&self) -> Result<()> {
        self.synchronize_within(DEFAULT_TIMEOUT, "synchronize")
    }
}
