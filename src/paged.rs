//! Paged KV caches on the host (vLLM's layout): building one from per-sequence lengths,
//! checking one before a launch, the float64 reference of decode attention against it, and
//! running a decode kernel on one in the simulator.
//!
//! The pool holds `pages` pages of `page_size` rows, each row `HKV × D` elements:
//! `[PAGES, PAGE, HKV, D]` in memory, which the kernels see as the strided `[PAGES, HKV, PAGE, D]`
//! ([`PagedCache::view`]). `block_table[b, i]` is the page that holds rows
//! `i · PAGE .. (i + 1) · PAGE` of sequence `b`; entries past a sequence's pages are `-1`.
//!
//! ```
//! use flashcore::paged::PagedCache;
//! use flashcore::reference::Rng;
//!
//! let cache = PagedCache::random(&[5, 40], 2, 64, 16, &mut Rng::new(1));
//! assert_eq!(cache.max_pages, 3);
//! cache.check().unwrap();
//! // Row 17 of sequence 1 lies in row 1 of the page its table entry 1 names.
//! let page = cache.block_table[cache.max_pages + 1] as usize;
//! assert_eq!(cache.row_offset(1, 17, 0), cache.row_offset_in(page, 1, 0));
//! ```

use crate::reference::Rng;
use crate::simulate::{simulate, HostArg, HostView, SimDevice, Stats};
use crate::{CompiledKernel, DType, Error, HalfFloat};
use half::{bf16, f16};

/// A paged K/V cache in f64 (each value already rounded to the kernel's element type when it
/// was built for one): the pool, the block table and the lengths.
#[derive(Clone, Debug)]
pub struct PagedCache {
    /// Rows per page.
    pub page_size: usize,
    /// Pages in the pool.
    pub pages: usize,
    /// K/V heads.
    pub hkv: usize,
    /// Head dim.
    pub d: usize,
    /// The K pool, `[PAGES, PAGE, HKV, D]`. Rows no sequence uses hold NaN: a kernel that read
    /// them would show it.
    pub k: Vec<f64>,
    /// The V pool, likewise.
    pub v: Vec<f64>,
    /// Entries per sequence in the block table.
    pub max_pages: usize,
    /// `[B, MAX_PAGES]`: the page of each `PAGE` rows of each sequence, `-1` past its pages.
    pub block_table: Vec<i32>,
    /// Each sequence's length (rows of its cache in use).
    pub lens: Vec<i32>,
}

impl PagedCache {
    /// A cache holding sequences of `lens` rows in pages of `page_size` rows, with normal random
    /// K/V (rounded to f16), its pages in a shuffled order across the pool and two spare pages.
    /// Every row no sequence uses (the tail of a sequence's last page, the spare pages) is NaN.
    pub fn random(lens: &[usize], hkv: usize, d: usize, page_size: usize, rng: &mut Rng) -> PagedCache {
        Self::random_in(DType::F16, lens, hkv, d, page_size, rng)
    }

    /// [`PagedCache::random`] with values rounded to `dtype`.
    pub fn random_in(
        dtype: DType,
        lens: &[usize],
        hkv: usize,
        d: usize,
        page_size: usize,
        rng: &mut Rng,
    ) -> PagedCache {
        let per_seq: Vec<usize> = lens.iter().map(|l| l.div_ceil(page_size)).collect();
        let max_pages = per_seq.iter().copied().max().unwrap_or(0).max(1);
        let pages = per_seq.iter().sum::<usize>() + 2;
        // A shuffled assignment of pool pages (Fisher–Yates).
        let mut order: Vec<usize> = (0..pages).collect();
        for i in (1..pages).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let mut block_table = vec![-1i32; lens.len() * max_pages];
        let mut next = order.into_iter();
        for (b, &n) in per_seq.iter().enumerate() {
            for i in 0..n {
                block_table[b * max_pages + i] = next.next().expect("enough pages") as i32;
            }
        }
        let row = hkv * d;
        let mut cache = PagedCache {
            page_size,
            pages,
            hkv,
            d,
            k: vec![f64::NAN; pages * page_size * row],
            v: vec![f64::NAN; pages * page_size * row],
            max_pages,
            block_table,
            lens: lens.iter().map(|&l| l as i32).collect(),
        };
        for (b, &len) in lens.iter().enumerate() {
            for j in 0..len {
                let at = cache.row_offset(b, j, 0);
                for x in 0..row {
                    cache.k[at + x] = crate::round_to(dtype, rng.normal());
                    cache.v[at + x] = crate::round_to(dtype, rng.normal());
                }
            }
        }
        cache
    }

    /// Sequences in the cache.
    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// Offset in the pool of head `hk`'s row `row` of page `page`.
    pub fn row_offset_in(&self, page: usize, row: usize, hk: usize) -> usize {
        ((page * self.page_size + row) * self.hkv + hk) * self.d
    }

    /// Offset in the pool of head `hk`'s row `j` of sequence `b` (through the block table).
    pub fn row_offset(&self, b: usize, j: usize, hk: usize) -> usize {
        let page = self.block_table[b * self.max_pages + j / self.page_size] as usize;
        self.row_offset_in(page, j % self.page_size, hk)
    }

    /// How a kernel sees a pool: `[PAGES, HKV, PAGE, D]` over the `[PAGES, PAGE, HKV, D]` memory.
    pub fn view(&self) -> HostView {
        let (p, h, d) = (self.page_size, self.hkv, self.d);
        HostView::strided(&[self.pages, h, p, d], &[p * h * d, d, h * d, 1])
    }

    /// The block table's view, `[B, MAX_PAGES]`.
    pub fn table_view(&self) -> HostView {
        HostView::contiguous(&[self.batch(), self.max_pages])
    }

    /// The lengths' view, `[B]`.
    pub fn lens_view(&self) -> HostView {
        HostView::contiguous(&[self.batch()])
    }

    /// The checks a launch needs that the kernel cannot make cheaply, on the host data: the page
    /// size a multiple of 16, each length within `[0, MAX_PAGES · PAGE]`, and each page a
    /// sequence uses inside the pool. (The kernel reads nothing outside the cache even when
    /// these fail; it would compute with zeros instead.)
    pub fn check(&self) -> Result<(), Error> {
        let bad = |arg: &str, message: String| Error::Argument {
            kernel: "paged cache".into(),
            arg: arg.into(),
            message,
        };
        if self.page_size == 0 || !self.page_size.is_multiple_of(16) {
            return Err(bad(
                "page_size",
                format!("{} rows: pages hold a multiple of 16 rows", self.page_size),
            ));
        }
        if self.block_table.len() != self.batch() * self.max_pages {
            return Err(bad(
                "block_table",
                format!(
                    "{} entries for {} sequences of {} pages",
                    self.block_table.len(),
                    self.batch(),
                    self.max_pages
                ),
            ));
        }
        let capacity = self.max_pages * self.page_size;
        for (b, &len) in self.lens.iter().enumerate() {
            if len < 0 || len as usize > capacity {
                return Err(bad(
                    "cache_len",
                    format!("sequence {b} has length {len}; the block table holds 0 ..= {capacity} rows a sequence ({} pages of {})", self.max_pages, self.page_size),
                ));
            }
            for i in 0..(len as usize).div_ceil(self.page_size) {
                let page = self.block_table[b * self.max_pages + i];
                if page < 0 || page as usize >= self.pages {
                    return Err(bad(
                        "block_table",
                        format!("entry [{b}, {i}] = {page} is outside the pool of {} pages (sequence {b} uses it: length {len})", self.pages),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The float64 reference of decode attention: `q` is `[B, H, S, D]` (the step's `S` new tokens a
/// sequence), each sequence attending to its `lens[b]` cache rows, new token `i` (with
/// `causal`) to rows `0 ..= lens[b] − S + i`. A row that sees no key is 0.
pub fn decode_reference(
    q: &[f64],
    cache: &PagedCache,
    h: usize,
    s: usize,
    scale: f64,
    causal: bool,
) -> Vec<f64> {
    let pairs: Vec<(usize, usize)> =
        (0..cache.batch()).flat_map(|b| (0..h).map(move |head| (b, head))).collect();
    decode_reference_heads(q, cache, h, s, scale, causal, &pairs)
}

/// [`decode_reference`] for the `(sequence, query head)` pairs `pairs` only (the other rows of
/// the result are 0): what a check of a large problem computes.
pub fn decode_reference_heads(
    q: &[f64],
    cache: &PagedCache,
    h: usize,
    s: usize,
    scale: f64,
    causal: bool,
    pairs: &[(usize, usize)],
) -> Vec<f64> {
    let (b_count, d, hkv) = (cache.batch(), cache.d, cache.hkv);
    let mut out = vec![0.0; b_count * h * s * d];
    for &(b, head) in pairs {
        let len = cache.lens[b] as usize;
        {
            let hk = head / (h / hkv);
            for i in 0..s {
                let seen = if causal { (len + i + 1).saturating_sub(s).min(len) } else { len };
                if seen == 0 {
                    continue;
                }
                let qrow = &q[((b * h + head) * s + i) * d..][..d];
                let scores: Vec<f64> = (0..seen)
                    .map(|j| {
                        let k = &cache.k[cache.row_offset(b, j, hk)..][..d];
                        qrow.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = weights.iter().sum();
                let o = &mut out[((b * h + head) * s + i) * d..][..d];
                for (j, w) in weights.iter().enumerate() {
                    let v = &cache.v[cache.row_offset(b, j, hk)..][..d];
                    o.iter_mut().zip(v).for_each(|(o, v)| *o += w / sum * v);
                }
            }
        }
    }
    out
}

/// What [`check_decode`] measured.
#[derive(Clone, Copy, Debug)]
pub struct DecodeCheck {
    /// The output against [`decode_reference`].
    pub err: crate::reference::ErrorStats,
    /// What the simulator counted.
    pub stats: Stats,
}

/// Runs a decode kernel with the signature of `kernels::decode::attention_decode_paged`
/// (`q, k_cache, v_cache, block_table, cache_len, o, scale`) in the simulator on `cache` and
/// fresh random queries (`H = h`, `S = s`), the output poisoned with NaN first, and compares it
/// with [`decode_reference`]. The cache's unused rows are NaN, so any read of them shows.
pub fn check_decode(
    kernel: &CompiledKernel,
    cache: &PagedCache,
    h: usize,
    s: usize,
    seed: u64,
    device: &SimDevice,
) -> Result<DecodeCheck, Error> {
    check_decode_any(kernel, cache, h, s, None, seed, device)
}

/// [`check_decode`] for a kernel with the signature of
/// `kernels::decode::attention_decode_paged_packed` (`q, k_cache, v_cache, block_table,
/// cache_len, rows_after, o, scale`, Q and O viewed as `[B, HKV, (H / HKV) · S, D]`): causal
/// or not as `causal` says (through `rows_after`, [`rows_after`]).
pub fn check_decode_packed(
    kernel: &CompiledKernel,
    cache: &PagedCache,
    h: usize,
    s: usize,
    causal: bool,
    seed: u64,
    device: &SimDevice,
) -> Result<DecodeCheck, Error> {
    check_decode_any(kernel, cache, h, s, Some(causal), seed, device)
}

/// [`check_decode`] or [`check_decode_packed`] (`packed`: `Some(causal)`) in the kernel's dtype.
fn check_decode_any(
    kernel: &CompiledKernel,
    cache: &PagedCache,
    h: usize,
    s: usize,
    packed: Option<bool>,
    seed: u64,
    device: &SimDevice,
) -> Result<DecodeCheck, Error> {
    match kernel.kernel.config.dtype {
        DType::F16 => check_decode_typed::<f16>(kernel, cache, h, s, packed, seed, device),
        DType::Bf16 => check_decode_typed::<bf16>(kernel, cache, h, s, packed, seed, device),
    }
}

/// The `rows_after` table of the packed decode kernel for `groups = H / HKV` query heads a K/V
/// head and `s` new tokens: row `g · s + i` has `s − 1 − i` of the step's tokens after it when
/// `causal`, none otherwise (every new token then sees the whole cache, the others included).
pub fn rows_after(groups: usize, s: usize, causal: bool) -> Vec<i32> {
    (0..groups * s).map(|r| if causal { (s - 1 - r % s) as i32 } else { 0 }).collect()
}

/// `packed`: `Some(causal)` for the packed kernel's signature, `None` for the plain one's.
fn check_decode_typed<T: HalfFloat>(
    kernel: &CompiledKernel,
    cache: &PagedCache,
    h: usize,
    s: usize,
    packed: Option<bool>,
    seed: u64,
    device: &SimDevice,
) -> Result<DecodeCheck, Error> {
    let cfg = kernel.kernel.config;
    let (b, d) = (cache.batch(), cache.d);
    let mut rng = Rng::new(seed ^ 0xdec0de);
    let q: Vec<f64> = (0..b * h * s * d).map(|_| crate::round_to(cfg.dtype, rng.normal())).collect();
    let to_t = |x: &[f64]| x.iter().map(|v| T::from_f64(*v)).collect::<Vec<T>>();
    let (q_t, k_t, v_t) = (to_t(&q), to_t(&cache.k), to_t(&cache.v));
    let mut o_t = vec![T::NAN; q.len()];
    let scale = cfg.default_scale();
    let groups = h / cache.hkv.max(1);
    // Packed: the same contiguous [B, H, S, D] memory, viewed as [B, HKV, (H / HKV) · S, D].
    let (qo, after) = match packed {
        None => (HostView::contiguous(&[b, h, s, d]), vec![]),
        Some(causal) => (HostView::contiguous(&[b, cache.hkv, groups * s, d]), rows_after(groups, s, causal)),
    };
    let mut args = vec![
        HostArg::Tensor(&q_t, qo.clone()),
        HostArg::Tensor(&k_t, cache.view()),
        HostArg::Tensor(&v_t, cache.view()),
        HostArg::I32Table(&cache.block_table, cache.table_view()),
    ];
    if packed.is_none() {
        args.push(HostArg::Absent); // q_len: every row of q is a new token
    }
    args.push(HostArg::I32Table(&cache.lens, cache.lens_view()));
    if packed.is_some() {
        args.push(HostArg::I32Table(&after, HostView::contiguous(&[after.len()])));
    }
    args.push(HostArg::TensorMut(&mut o_t, qo));
    args.push(HostArg::F32(scale));
    let stats = simulate::<T>(kernel, &mut args, device)?;
    drop(args);
    let got: Vec<f64> = o_t.iter().map(|x| x.to_f64()).collect();
    let want = decode_reference(&q, cache, h, s, scale as f64, packed.unwrap_or(cfg.causal));
    Ok(DecodeCheck { err: crate::reference::compare(&got, &want), stats })
}

/// A paged K/V cache on the device, as an inference server keeps one: the K and V pools
/// (`[PAGES, HKV, PAGE, D]` views of `[PAGES, PAGE, HKV, D]` memory), the block table
/// `[B, MAX_PAGES]` and the lengths `[B]` (i32), and the small `rows_after` tables
/// [`decode_step`] has uploaded, by `(H / HKV, S, causal)`.
pub struct DevicePagedCache<T: crate::runtime::Element> {
    /// The K pool.
    pub k: crate::runtime::DeviceTensor<T>,
    /// The V pool.
    pub v: crate::runtime::DeviceTensor<T>,
    /// `[B, MAX_PAGES]`: each sequence's pages.
    pub block_table: crate::runtime::DeviceTensor<i32>,
    /// `[B]`: each sequence's length.
    pub lens: crate::runtime::DeviceTensor<i32>,
    rows_after:
        std::sync::Mutex<std::collections::HashMap<(usize, usize, bool), crate::runtime::DeviceTensor<i32>>>,
}

impl<T: HalfFloat> DevicePagedCache<T> {
    /// Uploads a host cache after [`PagedCache::check`] (its values converted to `T`).
    pub fn upload(device: &crate::runtime::Device, cache: &PagedCache) -> Result<Self, Error> {
        cache.check()?;
        let to_t = |x: &[f64]| x.iter().map(|v| T::from_f64(*v)).collect::<Vec<T>>();
        let view = cache.view();
        Ok(DevicePagedCache {
            k: device.upload_strided(&to_t(&cache.k), view.shape(), view.strides())?,
            v: device.upload_strided(&to_t(&cache.v), view.shape(), view.strides())?,
            block_table: device.upload(&cache.block_table, &[cache.batch(), cache.max_pages])?,
            lens: device.upload(&cache.lens, &[cache.batch()])?,
            rows_after: Default::default(),
        })
    }
}

/// A borrowed device tensor seen with another shape and strides (the packed kernel's
/// `[B, HKV, (H / HKV) · S, D]` view of a `[B, H, S, D]` query or output).
struct Reshaped<'a> {
    base: &'a dyn crate::runtime::TensorArg,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl crate::runtime::TensorArg for Reshaped<'_> {
    fn dtype(&self) -> &'static str {
        self.base.dtype()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn strides(&self) -> &[usize] {
        &self.strides
    }
    fn buffer_len(&self) -> usize {
        self.base.buffer_len()
    }
    fn device_ptr(&self, stream: &std::sync::Arc<crate::runtime::CudaStream>) -> u64 {
        self.base.device_ptr(stream)
    }
}

/// What [`decode_step`] launches for a step: the packed kernel's schedule and target for the
/// device, and the packed view of Q and O.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodePlan {
    /// The config (schedule, split across CTAs, target) the step runs.
    pub config: crate::Config,
    /// Query heads a K/V head (`H / HKV`).
    pub groups: usize,
    /// `[B, HKV, (H / HKV) · S, D]`: Q and O as the packed kernel sees them.
    pub packed_shape: Vec<usize>,
}

/// The plan of a decode step on a device described by `device` for `q` and `out` (contiguous
/// `[B, H, S, D]`, their shapes and strides) against a cache whose pool, block table and
/// lengths have the shapes given, in `dtype`: `packed_schedule` and `split_ctas` for the
/// problem, the device's target as the typed launchers choose it (`FLASHCORE_TARGET`
/// overrides), and the in-CTA split halved until the CTA fits the device's shared memory (the
/// declared split of four warp groups takes 80 KiB at D = 128, within the L4's 99 KiB). Shapes
/// that do not fit together are typed errors naming the argument.
pub fn decode_plan(
    device: &crate::runtime::DeviceInfo,
    dtype: DType,
    (q_shape, q_strides): (&[usize], &[usize]),
    (out_shape, out_strides): (&[usize], &[usize]),
    [pool, table, lens]: [&[usize]; 3],
) -> Result<DecodePlan, Error> {
    use crate::kernels::decode::{attention_decode_paged_packed as packed, packed_schedule, split_ctas};
    let bad = |arg: &str, message: String| Error::Argument {
        kernel: packed::NAME.into(),
        arg: arg.into(),
        message,
    };
    let [b, h, s, d] = q_shape[..] else {
        return Err(bad("q", format!("expected [B, H, S, D], got shape {q_shape:?}")));
    };
    if q_strides != crate::runtime::contiguous_strides(q_shape) {
        return Err(bad("q", format!("must be contiguous [B, H, S, D] (strides {q_strides:?})")));
    }
    if out_shape != q_shape || out_strides != q_strides {
        return Err(bad("out", format!("expected q's contiguous shape {q_shape:?}, got {out_shape:?}")));
    }
    let (hkv, page) = (pool.get(1).copied().unwrap_or(0), pool.get(2).copied().unwrap_or(0));
    if pool.len() != 4 || hkv == 0 || h % hkv != 0 {
        return Err(bad(
            "q",
            format!("{h} query heads are not a multiple of the cache's K/V heads (pool {pool:?})"),
        ));
    }
    if lens != [b] || table.len() != 2 || table[0] != b {
        return Err(bad(
            "q",
            format!("{b} sequences, but the cache's lengths are {lens:?} and its block table {table:?}"),
        ));
    }
    let (groups, rows) = (h / hkv, h / hkv * s);
    let base = crate::Config { dtype, ..packed::CONFIG.with_head_dim(d as u32) };
    let config = packed_schedule(base, rows);
    let work_items = b * hkv * rows.div_ceil(config.tile_m as usize);
    let kv_tiles = (table[1] * page).div_ceil(config.tile_n as usize);
    let config =
        crate::Config { kv_ctas: split_ctas(work_items, device.sm_count as usize, kv_tiles), ..config };
    let cc = Some(device.compute_capability);
    let mut config = chosen_target(config, cc, crate::target::requested()?);
    while packed::compile(&config)?.ptx.shared_bytes > device.max_shared_per_block && config.kv_splits > 1 {
        config = crate::Config { warps: config.warps / 2, kv_splits: config.kv_splits / 2, ..config };
    }
    Ok(DecodePlan { config, groups, packed_shape: vec![b, hkv, rows, d] })
}

/// `target::choose` for the packed kernel, once per config, device and request: choosing
/// lowers the kernel for the device's target to see whether it can (about 0.2 ms on the host,
/// several times a decode step on the GPU).
fn chosen_target(
    config: crate::Config,
    compute_capability: Option<(i32, i32)>,
    requested: Option<crate::Target>,
) -> crate::Config {
    use crate::kernels::decode::attention_decode_paged_packed as packed;
    type Key = (crate::Config, Option<(i32, i32)>, Option<crate::Target>);
    static CHOSEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<Key, crate::Config>>> =
        std::sync::OnceLock::new();
    let key = (config, compute_capability, requested);
    let chosen = CHOSEN.get_or_init(Default::default);
    if let Some(config) = chosen.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return *config;
    }
    let config = crate::target::choose(&packed::program(), config, compute_capability, requested).0;
    chosen.lock().unwrap_or_else(|e| e.into_inner()).insert(key, config);
    config
}

/// One decode step's attention on the device, enqueued without waiting: `out = softmax(q·Kᵀ ·
/// scale)·V` for the `S` new tokens of each sequence (`q`, `out`: contiguous `[B, H, S, D]`)
/// against `cache` (whose lengths count the new tokens, appended before the step), causal
/// from the bottom right when `causal`. Runs the packed-GQA kernel
/// (`kernels::decode::attention_decode_paged_packed`) as [`decode_plan`] says, and returns its
/// config. Wrong shapes, strides or dtypes are typed errors naming the argument.
pub fn decode_step<T: HalfFloat>(
    device: &crate::runtime::Device,
    cache: &DevicePagedCache<T>,
    q: &crate::runtime::DeviceTensor<T>,
    out: &mut crate::runtime::DeviceTensor<T>,
    scale: f32,
    causal: bool,
) -> Result<crate::Config, Error> {
    use crate::kernels::decode::attention_decode_paged_packed as packed;
    let plan = decode_plan(
        device.info(),
        T::DTYPE,
        (q.shape(), q.strides()),
        (out.shape(), out.strides()),
        [cache.k.shape(), cache.block_table.shape(), cache.lens.shape()],
    )?;
    let (groups, s, rows) = (plan.groups, q.shape()[2], plan.packed_shape[2]);
    let mut tables = cache.rows_after.lock().unwrap_or_else(|e| e.into_inner());
    let after = match tables.entry((groups, s, causal)) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(device.upload(&rows_after(groups, s, causal), &[rows])?)
        }
    };
    let strides = crate::runtime::contiguous_strides(&plan.packed_shape);
    let q_view = Reshaped { base: q, shape: plan.packed_shape.clone(), strides: strides.clone() };
    let mut out_view = Reshaped { base: &*out, shape: plan.packed_shape.clone(), strides };
    let kernel = packed::compile(&plan.config)?;
    let config = plan.config;
    crate::launch_async(
        device,
        &kernel,
        &mut [
            crate::Arg::Tensor(&q_view),
            crate::Arg::Tensor(&cache.k),
            crate::Arg::Tensor(&cache.v),
            crate::Arg::Tensor(&cache.block_table),
            crate::Arg::Tensor(&cache.lens),
            crate::Arg::Tensor(after),
            crate::Arg::TensorMut(&mut out_view),
            crate::Arg::F32(scale),
        ],
    )?;
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// Appending a step's new tokens (reshape-and-cache)

/// The append kernel's `u32` arguments ([`crate::codegen::append::APPEND_PARAMS`] after the
/// pointers) from the shapes and strides (in elements) of the new keys (`[B, HKV, S, D]`, V's
/// alike), the pools (`[PAGES, HKV, PAGE, D]`) and the block table (`[B, MAX_PAGES]`), with the
/// number of CTAs to launch: typed errors naming the argument for anything the kernel cannot
/// take.
pub fn append_arguments(
    new: (&[usize], &[usize]),
    pool: (&[usize], &[usize]),
    table: (&[usize], &[usize]),
) -> Result<([u32; 14], u32), Error> {
    let bad = |arg: &str, message: String| Error::Argument {
        kernel: crate::codegen::append::APPEND_ENTRY.into(),
        arg: arg.into(),
        message,
    };
    let ((ns, nst), (ps, pst), (ts, tst)) = (new, pool, table);
    if ns.len() != 4 || nst.len() != 4 || nst[3] != 1 {
        return Err(bad(
            "k_new",
            format!("want [B, HKV, S, D] with D contiguous, got shape {ns:?} strides {nst:?}"),
        ));
    }
    if ps.len() != 4 || pst.len() != 4 || pst[3] != 1 {
        return Err(bad(
            "k_pool",
            format!("want [PAGES, HKV, PAGE, D] with D contiguous, got shape {ps:?} strides {pst:?}"),
        ));
    }
    if ts.len() != 2 || tst.len() != 2 || tst[1] != 1 {
        return Err(bad(
            "block_table",
            format!("want a [B, MAX_PAGES] i32 table with rows contiguous, got {ts:?}"),
        ));
    }
    let (b, hkv, s, d) = (ns[0], ns[1], ns[2], ns[3]);
    if ts[0] != b {
        return Err(bad("k_new", format!("{b} sequences, but the block table has {} rows", ts[0])));
    }
    if ps[1] != hkv || ps[3] != d {
        return Err(bad(
            "k_new",
            format!("{hkv} K/V heads of dim {d}, but the pool holds {} of dim {}", ps[1], ps[3]),
        ));
    }
    if d == 0 || !d.is_multiple_of(8) {
        return Err(bad(
            "k_new",
            format!("head dim {d} is not a multiple of 8 (rows move in 16-byte chunks)"),
        ));
    }
    if ps[2] == 0 || !ps[2].is_multiple_of(16) {
        return Err(bad("k_pool", format!("pages of {} rows: want a multiple of 16", ps[2])));
    }
    if nst[..3].iter().chain(&pst[..3]).any(|s| !s.is_multiple_of(8)) {
        return Err(bad(
            "k_new",
            "rows must start on 16-byte boundaries (strides a multiple of 8 elements)".into(),
        ));
    }
    let u32_of =
        |arg: &str, x: usize| u32::try_from(x).map_err(|_| bad(arg, format!("{x} does not fit 32 bits")));
    let chunks = b * hkv * s * (d / 8);
    let threads = crate::codegen::append::APPEND_THREADS as usize;
    let ctas = u32_of("k_new", chunks.div_ceil(threads))?;
    if chunks >= 1 << 31 {
        return Err(bad("k_new", format!("{chunks} chunks of 16 bytes: at most 2^31 a step")));
    }
    let values = [
        u32_of("k_new", b)?,
        u32_of("k_new", hkv)?,
        u32_of("k_new", s)?,
        u32_of("k_new", d / 8)?,
        u32_of("k_pool", ps[2])?,
        u32_of("block_table", ts[1])?,
        u32_of("k_pool", ps[0])?,
        u32_of("k_new", nst[0])?,
        u32_of("k_new", nst[1])?,
        u32_of("k_new", nst[2])?,
        u32_of("k_pool", pst[0])?,
        u32_of("k_pool", pst[1])?,
        u32_of("k_pool", pst[2])?,
        u32_of("block_table", tst[0])?,
    ];
    Ok((values, ctas))
}

impl PagedCache {
    /// The host's append: writes the `S` new tokens' keys and values (`[B, HKV, S, D]`
    /// contiguous) into the rows they take, `cache_len[b] − S + i` (the lengths count them
    /// already), as the append kernel does: a row outside the sequence's table row or the pool
    /// is not written.
    pub fn append_host(&mut self, k_new: &[f64], v_new: &[f64], s: usize) {
        let (hkv, d) = (self.hkv, self.d);
        for b in 0..self.batch() {
            for hk in 0..hkv {
                for i in 0..s {
                    let pos = self.lens[b] as i64 - s as i64 + i as i64;
                    if pos < 0 || pos as usize >= self.max_pages * self.page_size {
                        continue;
                    }
                    let page = self.block_table[b * self.max_pages + pos as usize / self.page_size];
                    if page < 0 || page as usize >= self.pages {
                        continue;
                    }
                    let at = self.row_offset_in(page as usize, pos as usize % self.page_size, hk);
                    let from = ((b * hkv + hk) * s + i) * d;
                    self.k[at..at + d].copy_from_slice(&k_new[from..from + d]);
                    self.v[at..at + d].copy_from_slice(&v_new[from..from + d]);
                }
            }
        }
    }
}

/// The append kernel run in the PTX simulator on host data: `k_pool`/`v_pool` (laid out as
/// `cache`'s pools, in `T`) updated in place with the new tokens `k_new`/`v_new` (`[B, HKV, S,
/// D]` contiguous), through `cache`'s block table and lengths (the simulator faults on any
/// access outside an allocation).
pub fn simulate_append<T: HalfFloat>(
    cache: &PagedCache,
    (k_new, v_new): (&[T], &[T]),
    s: usize,
    (k_pool, v_pool): (&mut [T], &mut [T]),
) -> Result<(), Error> {
    use crate::codegen::append::{append_ptx, APPEND_ENTRY, APPEND_THREADS};
    let new_shape = [cache.batch(), cache.hkv, s, cache.d];
    let new_strides = crate::runtime::contiguous_strides(&new_shape);
    let (pool, table) = (cache.view(), cache.table_view());
    let (values, ctas) = append_arguments(
        (&new_shape, &new_strides),
        (pool.shape(), pool.strides()),
        (table.shape(), table.strides()),
    )?;
    if ctas == 0 {
        return Ok(());
    }
    let bytes = |x: &[T]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let mut machine = flashcore_sim::Machine::new(Default::default());
    let (kn, vn) = (machine.alloc(bytes(k_new)), machine.alloc(bytes(v_new)));
    let (kp, vp) = (machine.alloc(bytes(k_pool)), machine.alloc(bytes(v_pool)));
    let (tb, ln) = (machine.alloc(i32_bytes(&cache.block_table)), machine.alloc(i32_bytes(&cache.lens)));
    let kernel = (append_ptx(), APPEND_ENTRY, APPEND_THREADS);
    simulate_hand_written(&mut machine, kernel, ctas, &[kn, vn, kp, vp, tb, ln], &values)?;
    for (addr, pool) in [(kp, k_pool), (vp, v_pool)] {
        let read = machine.read(addr, pool.len() * 2)?;
        for (x, b) in pool.iter_mut().zip(read.chunks_exact(2)) {
            *x = T::from_le_bytes([b[0], b[1]]);
        }
    }
    Ok(())
}

/// Appends a decode step's new keys and values (`k_new`, `v_new`: `[B, HKV, S, D]`, the head
/// dim contiguous) to the device cache, enqueued without waiting: token `i` of sequence `b`
/// goes to row `cache_len[b] − S + i` (set the lengths to count the step's tokens first), for
/// every K/V head, through the block table. Typed errors for shapes the cache does not hold;
/// rows whose table entry is missing or outside the pool are not written (check tables built
/// on the host with [`PagedCache::check`]).
pub fn append<T: HalfFloat>(
    device: &crate::runtime::Device,
    cache: &mut DevicePagedCache<T>,
    k_new: &crate::runtime::DeviceTensor<T>,
    v_new: &crate::runtime::DeviceTensor<T>,
) -> Result<(), Error> {
    use crate::codegen::append::{append_ptx, APPEND_ENTRY, APPEND_THREADS};
    use crate::runtime::LaunchArg;
    if v_new.shape() != k_new.shape() || v_new.strides() != k_new.strides() {
        return Err(Error::Argument {
            kernel: APPEND_ENTRY.into(),
            arg: "v_new".into(),
            message: format!("shape {:?} strides {:?}: want k_new's", v_new.shape(), v_new.strides()),
        });
    }
    if cache.v.shape() != cache.k.shape() || cache.v.strides() != cache.k.strides() {
        return Err(Error::Argument {
            kernel: APPEND_ENTRY.into(),
            arg: "v_pool".into(),
            message: "the V pool is not laid out as the K pool".into(),
        });
    }
    let (values, ctas) = append_arguments(
        (k_new.shape(), k_new.strides()),
        (cache.k.shape(), cache.k.strides()),
        (cache.block_table.shape(), cache.block_table.strides()),
    )?;
    if ctas == 0 {
        return Ok(());
    }
    static PTX: std::sync::OnceLock<(String, u64)> = std::sync::OnceLock::new();
    let image = hand_written(&PTX, append_ptx, APPEND_ENTRY, APPEND_THREADS);
    let DevicePagedCache { k, v, block_table, lens, .. } = cache;
    let mut args = vec![
        LaunchArg::Buffer(k_new),
        LaunchArg::Buffer(v_new),
        LaunchArg::BufferMut(k),
        LaunchArg::BufferMut(v),
        LaunchArg::Buffer(&*block_table),
        LaunchArg::Buffer(&*lens),
    ];
    args.extend(values.into_iter().map(LaunchArg::U32));
    device.launch(&image, ctas, &mut args)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checking a device-resident table (the opt-in device check)

/// The table check's `u32` arguments ([`crate::codegen::table_check::TABLE_CHECK_PARAMS`] after
/// the pointers) from the shapes and strides (in elements) of the block table (`[B,
/// MAX_PAGES]`), the lengths (`[B]`) and the pool (`[PAGES, HKV, PAGE, D]`), with the CTAs to
/// launch.
pub fn table_check_arguments(
    table: (&[usize], &[usize]),
    lens: &[usize],
    pool: &[usize],
) -> Result<([u32; 5], u32), Error> {
    use crate::codegen::table_check::{TABLE_CHECK_ENTRY, TABLE_CHECK_THREADS};
    let bad = |arg: &str, message: String| Error::Argument {
        kernel: TABLE_CHECK_ENTRY.into(),
        arg: arg.into(),
        message,
    };
    let ((ts, tst), b) = (table, lens.first().copied().unwrap_or(0));
    if ts.len() != 2 || tst.len() != 2 || tst[1] != 1 || lens.len() != 1 || ts[0] != b {
        return Err(bad(
            "block_table",
            format!(
                "want a [B, MAX_PAGES] table with rows contiguous and [B] lengths, got {ts:?} and {lens:?}"
            ),
        ));
    }
    if pool.len() != 4 {
        return Err(bad("k_pool", format!("want [PAGES, HKV, PAGE, D], got {pool:?}")));
    }
    let entries = b * ts[1];
    if entries >= 1 << 30 {
        return Err(bad("block_table", format!("{entries} entries: at most 2^30")));
    }
    let u32_of =
        |arg: &str, x: usize| u32::try_from(x).map_err(|_| bad(arg, format!("{x} does not fit 32 bits")));
    let values = [
        u32_of("block_table", b)?,
        u32_of("block_table", ts[1])?,
        u32_of("k_pool", pool[2])?,
        u32_of("k_pool", pool[0])?,
        u32_of("block_table", tst[0])?,
    ];
    Ok((values, entries.div_ceil(TABLE_CHECK_THREADS as usize) as u32))
}

/// The table check's verdict word as a result: the first violation in table order as the
/// typed error [`PagedCache::check`] gives for it (without the offending value, which stays on
/// the device).
fn table_verdict(verdict: u32, max_pages: usize, page_rows: usize, pages: usize) -> Result<(), Error> {
    use crate::codegen::table_check::{BAD_LENGTH, BAD_PAGE};
    if verdict == u32::MAX {
        return Ok(());
    }
    let (index, kind) = ((verdict / 4) as usize, verdict % 4);
    let (b, e) = (index / max_pages.max(1), index % max_pages.max(1));
    let bad = |arg: &str, message: String| Error::Argument {
        kernel: "paged cache".into(),
        arg: arg.into(),
        message,
    };
    Err(match kind {
        BAD_LENGTH => bad(
            "cache_len",
            format!("sequence {b}'s length is outside 0 ..= {} rows, what the block table holds a sequence ({max_pages} pages of {page_rows}) (device check)", max_pages * page_rows),
        ),
        BAD_PAGE => bad(
            "block_table",
            format!("entry [{b}, {e}] is outside the pool of {pages} pages, and sequence {b} uses it (device check)"),
        ),
        _ => bad("block_table", format!("the table check's verdict {verdict:#x} is not one it writes")),
    })
}

/// The device table check run in the PTX simulator on `cache`'s table and lengths: what
/// [`check_on_device`] says of them.
pub fn simulate_table_check(cache: &PagedCache) -> Result<(), Error> {
    use crate::codegen::table_check::{table_check_ptx, TABLE_CHECK_ENTRY, TABLE_CHECK_THREADS};
    let table = cache.table_view();
    let (values, ctas) =
        table_check_arguments((table.shape(), table.strides()), &[cache.batch()], cache.view().shape())?;
    if ctas == 0 {
        return Ok(());
    }
    let mut machine = flashcore_sim::Machine::new(Default::default());
    let (tb, ln) = (machine.alloc(i32_bytes(&cache.block_table)), machine.alloc(i32_bytes(&cache.lens)));
    let verdict = machine.alloc(u32::MAX.to_le_bytes().to_vec());
    let kernel = (table_check_ptx(), TABLE_CHECK_ENTRY, TABLE_CHECK_THREADS);
    simulate_hand_written(&mut machine, kernel, ctas, &[tb, ln, verdict], &values)?;
    let word = machine.read(verdict, 4)?;
    table_verdict(
        u32::from_le_bytes([word[0], word[1], word[2], word[3]]),
        cache.max_pages,
        cache.page_size,
        cache.pages,
    )
}

/// The opt-in device check of a cache whose block table and lengths were written on the device
/// (by a server's scheduler, say), where [`PagedCache::check`] cannot see them: each length
/// within its table row's capacity, each entry it uses inside the pool. Waits for the check
/// (one small launch and a 4-byte copy back); the first violation in table order is the typed
/// error naming `cache_len` or `block_table`. The decode kernels read nothing outside the cache
/// without it; with it, a wrong table is an error rather than zeros in the output.
pub fn check_on_device<T: HalfFloat>(
    device: &crate::runtime::Device,
    cache: &DevicePagedCache<T>,
) -> Result<(), Error> {
    use crate::codegen::table_check::{table_check_ptx, TABLE_CHECK_ENTRY, TABLE_CHECK_THREADS};
    use crate::runtime::LaunchArg;
    let (table, pool) = (&cache.block_table, cache.k.shape());
    let (values, ctas) = table_check_arguments((table.shape(), table.strides()), cache.lens.shape(), pool)?;
    if ctas == 0 {
        return Ok(());
    }
    static PTX: std::sync::OnceLock<(String, u64)> = std::sync::OnceLock::new();
    let image = hand_written(&PTX, table_check_ptx, TABLE_CHECK_ENTRY, TABLE_CHECK_THREADS);
    let mut verdict = device.upload(&[u32::MAX], &[1])?;
    let mut args =
        vec![LaunchArg::Buffer(table), LaunchArg::Buffer(&cache.lens), LaunchArg::BufferMut(&mut verdict)];
    args.extend(values.into_iter().map(LaunchArg::U32));
    device.launch(&image, ctas, &mut args)?;
    drop(args);
    let word = device.download(&verdict)?;
    table_verdict(word[0], table.shape()[1], pool[2], pool[0])
}

/// A hand-written kernel (the append kernel, the table check) as the runtime launches it: its
/// PTX (`make`'s, made once per process in `cell`) keyed in the device's module cache by its
/// hash, entry `entry`, CTAs of `threads`, no shared memory.
pub(crate) fn hand_written(
    cell: &'static std::sync::OnceLock<(String, u64)>,
    make: fn() -> String,
    entry: &'static str,
    threads: u32,
) -> crate::runtime::KernelImage<'static> {
    let (ptx, key) = cell.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let ptx = make();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ptx.hash(&mut h);
        (ptx, h.finish())
    });
    crate::runtime::KernelImage { key: *key, ptx, entry, shared_bytes: 0, threads_per_cta: threads }
}

/// A hand-written kernel run in the simulator on `ctas` CTAs of `threads`: its arguments are
/// `pointers` (allocations in `machine`, in order) then `values` (`u32`s).
pub(crate) fn simulate_hand_written(
    machine: &mut flashcore_sim::Machine,
    (ptx, entry, threads): (String, &str, u32),
    ctas: u32,
    pointers: &[u64],
    values: &[u32],
) -> Result<(), Error> {
    use flashcore_sim::{Arg, Launch};
    let args: Vec<Arg> =
        pointers.iter().map(|p| Arg::U64(*p)).chain(values.iter().map(|v| Arg::U32(*v))).collect();
    let launch = Launch { grid: ctas, threads, shared_bytes: 0 };
    machine.launch(&flashcore_sim::parse(&ptx)?, entry, launch, &args)?;
    Ok(())
}

/// Little-endian bytes of i32s (a table or lengths for the simulator's memory).
fn i32_bytes(x: &[i32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// A decode step's inputs as .npy files

/// The `.npy` files of a decode step's inputs in a folder: `q.npy` (`[B, H, S, D]`),
/// `k_cache.npy` and `v_cache.npy` (`[PAGES, PAGE, HKV, D]`, vLLM's layout), `block_table.npy`
/// (`[B, MAX_PAGES]`, integers) and `cache_len.npy` (`[B]`, integers, counting the step's
/// tokens).
pub const STEP_FILES: [&str; 5] = ["q.npy", "k_cache.npy", "v_cache.npy", "block_table.npy", "cache_len.npy"];

impl PagedCache {
    /// Reads a decode step's inputs from the [`STEP_FILES`] in `dir` (values rounded to
    /// `dtype`): the cache, and `q` with its shape. Typed errors name the file for anything
    /// unreadable or shapes that do not fit together; check the cache with
    /// [`PagedCache::check`] before using it.
    pub fn read_npy(
        dir: &std::path::Path,
        dtype: DType,
    ) -> Result<(PagedCache, Vec<f64>, [usize; 4]), Error> {
        let bad = |file: &str, message: String| Error::Argument {
            kernel: "paged cache".into(),
            arg: file.into(),
            message,
        };
        let floats = |file: &str| crate::npy::read(&dir.join(file)).map_err(|e| bad(file, e.to_string()));
        let ints = |file: &str| crate::npy::read_i32(&dir.join(file)).map_err(|e| bad(file, e.to_string()));
        let (q, k, v) = (floats("q.npy")?, floats("k_cache.npy")?, floats("v_cache.npy")?);
        let (table, lens) = (ints("block_table.npy")?, ints("cache_len.npy")?);
        let [b, h, s, d] = <[usize; 4]>::try_from(q.shape.as_slice())
            .map_err(|_| bad("q.npy", format!("want [B, H, S, D], got {:?}", q.shape)))?;
        if k.shape.len() != 4 || k.shape[3] != d || v.shape != k.shape {
            return Err(bad(
                "k_cache.npy",
                format!("want k and v [PAGES, PAGE, HKV, {d}], got {:?} and {:?}", k.shape, v.shape),
            ));
        }
        if table.shape.len() != 2 || table.shape[0] != b {
            return Err(bad("block_table.npy", format!("want [{b}, MAX_PAGES], got {:?}", table.shape)));
        }
        if lens.shape != [b] {
            return Err(bad("cache_len.npy", format!("want [{b}], got {:?}", lens.shape)));
        }
        let round = |a: &crate::npy::Array| {
            a.data.iter().map(|x| crate::round_to(dtype, *x as f64)).collect::<Vec<f64>>()
        };
        let cache = PagedCache {
            page_size: k.shape[1],
            pages: k.shape[0],
            hkv: k.shape[2],
            d,
            k: round(&k),
            v: round(&v),
            max_pages: table.shape[1],
            block_table: table.data,
            lens: lens.data,
        };
        Ok((cache, round(&q), [b, h, s, d]))
    }

    /// Writes the cache and `q` (`[B, H, S, D]`, `q_shape`) as the [`STEP_FILES`] in `dir` (in
    /// f16, NaN rows included), for [`PagedCache::read_npy`] or numpy.
    pub fn write_npy(&self, dir: &std::path::Path, q: &[f64], q_shape: [usize; 4]) -> Result<(), Error> {
        let bad = |file: &str, message: String| Error::Argument {
            kernel: "paged cache".into(),
            arg: file.into(),
            message,
        };
        let halves = |x: &[f64]| x.iter().map(|v| f16::from_f64(*v)).collect::<Vec<f16>>();
        let pool = [self.pages, self.page_size, self.hkv, self.d];
        let write = |file: &str, bytes: Vec<u8>| {
            std::fs::write(dir.join(file), bytes).map_err(|e| bad(file, e.to_string()))
        };
        write("q.npy", crate::npy::to_bytes_f16(&halves(q), &q_shape))?;
        write("k_cache.npy", crate::npy::to_bytes_f16(&halves(&self.k), &pool))?;
        write("v_cache.npy", crate::npy::to_bytes_f16(&halves(&self.v), &pool))?;
        write(
            "block_table.npy",
            crate::npy::to_bytes_i32(&self.block_table, &[self.batch(), self.max_pages]),
        )?;
        write("cache_len.npy", crate::npy::to_bytes_i32(&self.lens, &[self.batch()]))
    }
}
