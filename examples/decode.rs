//! Decode attention against a paged KV cache: builds a random cache (pages shuffled across the
//! pool, the rows no sequence uses poisoned with NaN), checks it on the host, runs
//! `kernels::decode::attention_decode_paged` on the GPU, checks the output against float64
//! and times it (CUDA events, median after warm-up, L2 flushed before each launch). Without a
//! GPU it says so and runs a small instance in the PTX simulator instead.
//!
//! ```text
//! cargo run --release --example decode -- --batch 8 --cache-len 8192 --page 16
//! cargo run --release --example decode -- --batch 1 --cache-len 32768 --new-tokens 4 --causal
//! cargo run --release --example decode -- --step --batch 8 --cache-len 8192 --new-tokens 4 --causal
//! ```
//!
//! `--npy DIR` reads the step's inputs from `.npy` files instead (`q.npy`, `k_cache.npy`,
//! `v_cache.npy` in vLLM's `[PAGES, PAGE, HKV, D]`, `block_table.npy`, `cache_len.npy`:
//! `flashcore::paged::STEP_FILES`; `PagedCache::write_npy` writes them), the shapes taken from
//! the files. `--step` runs a whole decode step through the typed API: the step's new keys and values
//! appended to the cache by the append kernel (`paged::append`), then `paged::decode_step`;
//! the pools checked bit for bit against the host's append and the output against float64,
//! then the same two launches captured in a CUDA graph, replayed and checked again, and both
//! ways timed.

use std::process::ExitCode;

use flashcore::kernels::decode::{
    attention_decode_paged, attention_decode_paged_packed, packed_schedule, split_ctas,
};
use flashcore::paged::{
    check_decode, check_decode_packed, decode_reference_heads, decode_step, rows_after, DevicePagedCache,
    PagedCache,
};
use flashcore::reference::{compare, Rng};
use flashcore::runtime::Device;
use flashcore::simulate::SimDevice;
use flashcore::{Config, DType, HalfFloat};
use half::{bf16, f16};

#[derive(Clone)]
struct Options {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    cache_len: usize,
    page: usize,
    new_tokens: usize,
    /// The schedules to run (`--config "a;b"`: each checked and timed on the same cache).
    configs: Vec<Config>,
    iters: usize,
    seed: u64,
    /// Packed GQA: `attention_decode_paged_packed` (the query heads of a K/V head in one tile).
    packed: bool,
    /// With `--packed`: the default schedules run through the typed API
    /// (`flashcore::paged::decode_step` on a `DevicePagedCache`), as a server would call it.
    api: bool,
    /// A whole decode step through the typed API: the new tokens' K/V appended by the append
    /// kernel, then `decode_step`, run directly and replayed from a CUDA graph.
    step: bool,
    /// Causal (the packed kernel takes it through `rows_after`, the plain one as its config).
    causal: bool,
    /// Per schedule: given as empty (or no `--config`), the kernel's declared one with
    /// `split_ctas`'s split for the problem.
    auto_split: Vec<bool>,
    /// `--npy DIR`: the step's inputs from `.npy` files (`flashcore::paged::STEP_FILES`)
    /// instead of random ones; the shapes come from the files.
    npy: Option<std::path::PathBuf>,
}

const USAGE: &str = "usage: decode [--batch B] [--heads H] [--kv-heads HKV] [--head-dim D] [--cache-len L] [--page P] [--new-tokens S] [--causal] [--bf16] [--packed [--api]] [--step] [--npy DIR] [--config SETTINGS[;SETTINGS..]] [--iters N] [--seed N]";

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        batch: 1,
        heads: 32,
        kv_heads: 8,
        cache_len: 4096,
        page: 16,
        new_tokens: 1,
        configs: vec![],
        iters: 50,
        seed: 1,
        packed: false,
        api: false,
        step: false,
        causal: false,
        npy: None,
        auto_split: vec![],
    };
    let (mut head_dim, mut causal, mut bf16, mut settings) = (128u32, false, false, String::new());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        let number = |v: String| v.parse::<usize>().map_err(|_| format!("`{v}` is not a number\n{USAGE}"));
        match flag.as_str() {
            "--batch" => o.batch = number(value("--batch")?)?,
            "--heads" => o.heads = number(value("--heads")?)?,
            "--kv-heads" => o.kv_heads = number(value("--kv-heads")?)?,
            "--head-dim" => head_dim = number(value("--head-dim")?)? as u32,
            "--cache-len" => o.cache_len = number(value("--cache-len")?)?,
            "--page" => o.page = number(value("--page")?)?,
            "--new-tokens" => o.new_tokens = number(value("--new-tokens")?)?,
            "--iters" => o.iters = number(value("--iters")?)?,
            "--seed" => o.seed = number(value("--seed")?)? as u64,
            "--causal" => causal = true,
            "--bf16" => bf16 = true,
            "--packed" => o.packed = true,
            "--api" => o.api = true,
            "--step" => o.step = true,
            "--npy" => o.npy = Some(value("--npy")?.into()),
            "--config" => settings = value("--config")?,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    o.causal = causal;
    o.auto_split = settings.split(';').map(|s| s.trim().is_empty()).collect();
    // The packed kernel is causal through its `rows_after` table, never through the flag.
    let declared =
        if o.packed { attention_decode_paged_packed::CONFIG } else { attention_decode_paged::CONFIG };
    let base = Config {
        causal: causal && !o.packed,
        dtype: if bf16 { DType::Bf16 } else { DType::F16 },
        ..declared.with_head_dim(head_dim)
    };
    o.configs = settings
        .split(';')
        .map(
            |s| if s.trim().is_empty() { Ok(base) } else { base.with_settings(s).map_err(|e| e.to_string()) },
        )
        .collect::<Result<_, _>>()?;
    if o.kv_heads == 0 || !o.heads.is_multiple_of(o.kv_heads) {
        return Err(format!("--heads {} is not a multiple of --kv-heads {}", o.heads, o.kv_heads));
    }
    if o.new_tokens == 0 || o.new_tokens > o.cache_len.max(1) {
        return Err(format!("--new-tokens {} must be 1 ..= the cache length {}", o.new_tokens, o.cache_len));
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match Device::new(0) {
        Ok(device) => match (o.configs[0].dtype, o.step) {
            (DType::F16, false) => on_gpu::<f16>(&device, &o),
            (DType::Bf16, false) => on_gpu::<bf16>(&device, &o),
            (DType::F16, true) => step_on_gpu::<f16>(&device, &o),
            (DType::Bf16, true) => step_on_gpu::<bf16>(&device, &o),
        },
        Err(e) => without_gpu(&e.to_string(), &o),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// No GPU: the same kernel and a small cache of the same page size and heads in the simulator.
fn without_gpu(reason: &str, o: &Options) -> Result<bool, flashcore::Error> {
    println!("no GPU: {reason}");
    // `--npy`: the files' cache (checked on the host) with random queries of their shape, if
    // small enough for the simulator; else a small random cache of the same page size and heads.
    let (from_files, npy_cache) = match &o.npy {
        Some(_) => {
            let (cache, _, o) = inputs(o)?;
            (o, Some(cache))
        }
        None => (o.clone(), None),
    };
    let o = &from_files;
    let config = o.configs[0];
    let small =
        |c: &PagedCache| c.lens.iter().map(|&n| n.max(0) as usize).sum::<usize>() * o.heads <= 1 << 15;
    let cache = match npy_cache.filter(small) {
        Some(cache) => cache,
        None => PagedCache::random_in(
            config.dtype,
            &[o.new_tokens.max(37), 2 * o.page + 5],
            o.kv_heads,
            config.head_dim as usize,
            o.page,
            &mut Rng::new(o.seed),
        ),
    };
    let lens = &cache.lens;
    cache.check()?;
    let heads = o.heads.min(2 * o.kv_heads);
    let got = if o.packed {
        let kernel = attention_decode_paged_packed::compile(&config)?;
        check_decode_packed(&kernel, &cache, heads, o.new_tokens, o.causal, o.seed, &SimDevice::default())?
    } else {
        let kernel = attention_decode_paged::compile(&config)?;
        check_decode(&kernel, &cache, heads, o.new_tokens, o.seed, &SimDevice::default())?
    };
    let mut ok = got.err.rel_l2 < flashcore::tolerance(config.dtype);
    if o.step {
        // The step's append: the new rows through the append kernel against the host's append.
        let mut appended = cache.clone();
        let n = lens.len() * o.kv_heads * o.new_tokens * config.head_dim as usize;
        let mut rng = Rng::new(o.seed + 1);
        let (k_new, v_new): (Vec<f64>, Vec<f64>) = (0..n).map(|_| (rng.normal(), rng.normal())).unzip();
        let to_f16 = |x: &[f64]| x.iter().map(|v| f16::from_f64(*v)).collect::<Vec<f16>>();
        let (k16, v16) = (to_f16(&k_new), to_f16(&v_new));
        let (mut k_pool, mut v_pool) = (to_f16(&cache.k), to_f16(&cache.v));
        flashcore::paged::simulate_append(&cache, (&k16, &v16), o.new_tokens, (&mut k_pool, &mut v_pool))?;
        let widen = |x: &[f16]| x.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
        appended.append_host(&widen(&k16), &widen(&v16), o.new_tokens);
        let bits = |x: &[f16]| x.iter().map(|v| v.to_bits()).collect::<Vec<u16>>();
        let same = bits(&k_pool) == bits(&to_f16(&appended.k)) && bits(&v_pool) == bits(&to_f16(&appended.v));
        println!(
            "simulator: append of {} new tokens: pools {} the host's append ({})",
            o.new_tokens,
            if same { "equal" } else { "DIFFER from" },
            if same { "ok" } else { "FAILED" }
        );
        ok &= same;
    }
    println!(
        "simulator: {} ({}), cache lengths {lens:?} in pages of {}, H={heads} HKV={}, {} new tokens: rel err {:.2e} vs float64 ({})",
        if o.packed { attention_decode_paged_packed::NAME } else { attention_decode_paged::NAME },
        config,
        o.page,
        o.kv_heads,
        o.new_tokens,
        got.err.rel_l2,
        if ok { "ok" } else { "FAILED" }
    );
    Ok(ok)
}

/// The step's cache and queries: from `--npy DIR` (the options' shapes then taken from the
/// files: batch, heads, new tokens, page size, head dim; the cache length its longest
/// sequence's), or random at the options' shapes. Checked on the host either way.
fn inputs(o: &Options) -> Result<(PagedCache, Vec<f64>, Options), flashcore::Error> {
    let dtype = o.configs[0].dtype;
    let mut o = o.clone();
    let (cache, q) = match &o.npy {
        Some(dir) => {
            let (cache, q, [b, h, s, d]) = PagedCache::read_npy(dir, dtype)?;
            (o.batch, o.heads, o.kv_heads, o.new_tokens, o.page) = (b, h, cache.hkv, s, cache.page_size);
            o.cache_len = cache.lens.iter().map(|&n| n.max(0) as usize).max().unwrap_or(0);
            o.configs = o.configs.iter().map(|c| c.with_head_dim(d as u32)).collect();
            println!(
                "inputs: {} (B={b} H={h} HKV={} S={s} D={d}, pages of {}, lengths {:?})",
                dir.display(),
                cache.hkv,
                cache.page_size,
                cache.lens
            );
            (cache, q)
        }
        None => {
            let d = o.configs[0].head_dim as usize;
            let mut rng = Rng::new(o.seed);
            let cache =
                PagedCache::random_in(dtype, &vec![o.cache_len; o.batch], o.kv_heads, d, o.page, &mut rng);
            let q = (0..o.batch * o.heads * o.new_tokens * d)
                .map(|_| flashcore::round_to(dtype, rng.normal()))
                .collect();
            (cache, q)
        }
    };
    cache.check()?;
    if o.batch == 0 || o.kv_heads == 0 || !o.heads.is_multiple_of(o.kv_heads) {
        return Err(flashcore::Error::Argument {
            kernel: "decode example".into(),
            arg: "q".into(),
            message: format!(
                "{} sequences of {} query heads over {} K/V heads",
                o.batch, o.heads, o.kv_heads
            ),
        });
    }
    Ok((cache, q, o))
}

/// The (sequence, head) pairs checked against float64: the first, one between, the last.
fn checked_pairs(o: &Options) -> [(usize, usize); 3] {
    [(0, 0), (o.batch / 2, o.heads / 2), (o.batch - 1, o.heads - 1)]
}

/// The rows of `pairs` in `x` (`[B, H, S, D]`, `heads` heads, `len = S · D` a head), in order.
fn pair_rows(x: &[f64], pairs: &[(usize, usize)], heads: usize, len: usize) -> Vec<f64> {
    pairs.iter().flat_map(|&(b, h)| x[(b * heads + h) * len..][..len].to_vec()).collect()
}

fn on_gpu<T: HalfFloat>(device: &Device, o: &Options) -> Result<bool, flashcore::Error> {
    let info = device.info();
    println!(
        "device: {} (sm_{}{}, {} SMs); seed {}",
        info.name, info.compute_capability.0, info.compute_capability.1, info.sm_count, o.seed
    );
    let (cache, q, o) = inputs(o)?;
    let o = &o;
    let d = o.configs[0].head_dim as usize;
    let to_t = |x: &[f64]| x.iter().map(|v| T::from_f64(*v)).collect::<Vec<T>>();
    let view = cache.view();
    let k = device.upload_strided(&to_t(&cache.k), view.shape(), view.strides())?;
    let v = device.upload_strided(&to_t(&cache.v), view.shape(), view.strides())?;
    let table = device.upload(&cache.block_table, &[o.batch, cache.max_pages])?;
    let cache_len = device.upload(&cache.lens, &[o.batch])?;
    let qo = [o.batch, o.heads, o.new_tokens, d];
    // Packed: the same [B, H, S, D] memory as [B, HKV, (H / HKV) · S, D].
    let groups = o.heads / o.kv_heads;
    let packed_shape = [o.batch, o.kv_heads, groups * o.new_tokens, d];
    let shape: &[usize] = if o.packed { &packed_shape } else { &qo };
    let q_dev = device.upload(&to_t(&q), shape)?;
    let after = rows_after(groups, o.new_tokens, o.causal);
    let after_dev = device.upload(&after, &[after.len()])?;
    // The typed API's own copies: the cache uploaded as a server would, q as [B, H, S, D].
    let api = match o.api && o.packed {
        true => Some((DevicePagedCache::<T>::upload(device, &cache)?, device.upload(&to_t(&q), &qo)?)),
        false => None,
    };
    // Work items of a schedule: a K/V head's row tiles (packed) or a query head's.
    let work_items = |config: &Config| {
        let tile = config.tile_m as usize;
        match o.packed {
            true => o.batch * o.kv_heads * (groups * o.new_tokens).div_ceil(tile),
            false => o.batch * o.heads * o.new_tokens.div_ceil(tile),
        }
    };
    let kv_tiles = o.cache_len.div_ceil(64);
    let scale = o.configs[0].default_scale();
    let pairs = checked_pairs(o);
    let rows = |x: &[f64]| pair_rows(x, &pairs, o.heads, o.new_tokens * d);
    let want =
        rows(&decode_reference_heads(&q, &cache, o.heads, o.new_tokens, scale as f64, o.causal, &pairs));
    let mut ok = true;
    let (q_dev, k, v, table, cache_len, after_dev) = (&q_dev, &k, &v, &table, &cache_len, &after_dev);
    for (&config, &auto) in o.configs.iter().zip(&o.auto_split) {
        // Without settings: the declared schedule split across CTAs as `split_ctas` says.
        let config = match auto {
            true => {
                let config = if o.packed { packed_schedule(config, groups * o.new_tokens) } else { config };
                Config {
                    kv_ctas: split_ctas(work_items(&config), info.sm_count as usize, kv_tiles),
                    ..config
                }
            }
            false => config,
        };
        type Launch<'a, T> =
            Box<dyn Fn(&mut flashcore::runtime::DeviceTensor<T>) -> Result<(), flashcore::Error> + 'a>;
        let (launch, config, mut out): (Launch<T>, Config, _) = match (&api, auto, o.packed) {
            (Some((cache, q_api)), true, _) => {
                // The schedule the API picks, for the report (it picks the same every call).
                let mut out = device.filled(&qo, T::NAN)?;
                let config = decode_step(device, cache, q_api, &mut out, scale, o.causal)?;
                (
                    Box::new(move |out| decode_step(device, cache, q_api, out, scale, o.causal).map(|_| ())),
                    config,
                    out,
                )
            }
            (_, _, true) => (
                Box::new(move |out| {
                    attention_decode_paged_packed::launch_async(
                        device, &config, q_dev, k, v, table, cache_len, after_dev, out, scale,
                    )
                }),
                config,
                device.filled(shape, T::NAN)?,
            ),
            (_, _, false) => (
                Box::new(move |out| {
                    attention_decode_paged::launch_async(
                        device, &config, q_dev, k, v, table, None, cache_len, out, scale,
                    )
                }),
                config,
                device.filled(shape, T::NAN)?,
            ),
        };
        launch(&mut out)?;
        let got: Vec<f64> = device.download(&out)?.iter().map(|x| x.to_f64()).collect();
        let err = compare(&rows(&got), &want);
        let unwritten = got.iter().filter(|x| !x.is_finite()).count();
        let us = flashcore::timing::median_launch_us::<flashcore::Error>(device, 5, o.iters, |_| {
            launch(&mut out)
        })?;
        // Every timed launch wrote the same output: bit for bit, whichever CTA of a work item
        // split across CTAs finished last (and the workspace's counters were left zero).
        let again: Vec<f64> = device.download(&out)?.iter().map(|x| x.to_f64()).collect();
        let same_bits = again.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
        let passed = err.rel_l2 < flashcore::tolerance(config.dtype) && unwritten == 0 && same_bits;
        ok &= passed;
        let kv_bytes =
            (2 * cache.lens.iter().map(|&n| n.max(0) as usize).sum::<usize>() * o.kv_heads * d * 2) as f64;
        println!(
            "decode{}{} ({config}): B={} H={} HKV={} D={d} cache {} in pages of {}, {} new tokens{}: {us:.1} µs, K/V {:.2} TB/s ({:.0} MB); rel err {:.2e} vs float64 on {} heads, {unwritten} unwritten, {} after {} launches ({})",
            if o.packed { " packed" } else { "" },
            if api.is_some() && auto { " (paged::decode_step)" } else { "" },
            o.batch,
            o.heads,
            o.kv_heads,
            o.cache_len,
            o.page,
            o.new_tokens,
            if o.causal { " causal" } else { "" },
            kv_bytes / us / 1e6,
            kv_bytes / 1e6,
            err.rel_l2,
            pairs.len(),
            if same_bits { "same bits" } else { "DIFFERENT bits" },
            o.iters + 6,
            if passed { "ok" } else { "FAILED" }
        );
    }
    Ok(ok)
}

/// `--step`: a whole decode step through the typed API, directly and from a CUDA graph.
fn step_on_gpu<T: HalfFloat>(device: &Device, o: &Options) -> Result<bool, flashcore::Error> {
    let info = device.info();
    println!("device: {} ({} SMs); seed {}", info.name, info.sm_count, o.seed);
    let (dtype, d, s) = (o.configs[0].dtype, o.configs[0].head_dim as usize, o.new_tokens);
    let mut rng = Rng::new(o.seed);
    // The cache as it stands after the step (its lengths count the new tokens), its new rows
    // holding stale values on the device until the append overwrites them.
    let mut cache =
        PagedCache::random_in(dtype, &vec![o.cache_len; o.batch], o.kv_heads, d, o.page, &mut rng);
    cache.check()?;
    let mut normal =
        |n: usize| (0..n).map(|_| flashcore::round_to(dtype, rng.normal())).collect::<Vec<f64>>();
    let q = normal(o.batch * o.heads * s * d);
    let (k_new, v_new) = (normal(o.batch * o.kv_heads * s * d), normal(o.batch * o.kv_heads * s * d));
    let to_t = |x: &[f64]| x.iter().map(|v| T::from_f64(*v)).collect::<Vec<T>>();
    let mut dev_cache = DevicePagedCache::<T>::upload(device, &cache)?;
    // The opt-in device check of the table and lengths (as if the device had written them).
    flashcore::paged::check_on_device(device, &dev_cache)?;
    println!("device table check: ok");
    cache.append_host(&k_new, &v_new, s);
    let new_shape = [o.batch, o.kv_heads, s, d];
    let (k_dev, v_dev) =
        (device.upload(&to_t(&k_new), &new_shape)?, device.upload(&to_t(&v_new), &new_shape)?);
    let qo = [o.batch, o.heads, s, d];
    let q_dev = device.upload(&to_t(&q), &qo)?;
    let mut out = device.filled(&qo, T::NAN)?;
    let scale = o.configs[0].default_scale();
    let pairs = checked_pairs(o);
    let rows = |x: &[f64]| pair_rows(x, &pairs, o.heads, o.new_tokens * d);
    let want = rows(&decode_reference_heads(&q, &cache, o.heads, s, scale as f64, o.causal, &pairs));
    let (k_want, v_want) = (to_t(&cache.k), to_t(&cache.v));
    // Checks the output against float64 and the pools bit for bit against the host's append.
    let check = |what: &str,
                 out: &flashcore::runtime::DeviceTensor<T>,
                 cache: &DevicePagedCache<T>,
                 config: &Config| {
        let got: Vec<f64> = device.download(out)?.iter().map(|x| x.to_f64()).collect();
        let err = compare(&rows(&got), &want);
        let unwritten = got.iter().filter(|x| !x.is_finite()).count();
        let same =
            |a: &[T], b: &[T]| a.iter().zip(b).all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits());
        let pools = same(&device.download(&cache.k)?, &k_want) && same(&device.download(&cache.v)?, &v_want);
        let ok = err.rel_l2 < flashcore::tolerance(dtype) && unwritten == 0 && pools;
        println!(
            "{what} ({config}): rel err {:.2e} vs float64 on {} heads, {unwritten} unwritten, pools {} the host's append ({})",
            err.rel_l2,
            pairs.len(),
            if pools { "equal" } else { "DIFFER from" },
            if ok { "ok" } else { "FAILED" }
        );
        Ok::<bool, flashcore::Error>(ok)
    };
    // 1. Directly: append, then attention.
    let config = run_step(device, &mut dev_cache, (&k_dev, &v_dev), &q_dev, &mut out, scale, o.causal)?;
    let mut ok = check("step: append + decode_step", &out, &dev_cache, &config)?;
    // 2. The same two launches captured in a CUDA graph (their modules and workspaces exist
    // now), replayed into a poisoned output.
    let graph = device.capture(|| {
        run_step(device, &mut dev_cache, (&k_dev, &v_dev), &q_dev, &mut out, scale, o.causal).map(|_| ())
    })?;
    device.overwrite(&mut out, &vec![T::NAN; o.batch * o.heads * s * d])?;
    graph.launch()?;
    device.synchronize()?;
    ok &= check("step replayed from a CUDA graph", &out, &dev_cache, &config)?;
    // 3. Both timed (an appended row is rewritten with the same values each time).
    let direct = flashcore::timing::median_launch_us::<flashcore::Error>(device, 5, o.iters, |_| {
        run_step(device, &mut dev_cache, (&k_dev, &v_dev), &q_dev, &mut out, scale, o.causal).map(|_| ())
    })?;
    let replayed =
        flashcore::timing::median_launch_us::<flashcore::Error>(device, 5, o.iters, |_| Ok(graph.launch()?))?;
    println!(
        "step timing: B={} H={} HKV={} D={d} cache {} in pages of {}, {s} new tokens{}: {direct:.1} µs launched, {replayed:.1} µs from the graph",
        o.batch,
        o.heads,
        o.kv_heads,
        o.cache_len,
        o.page,
        if o.causal { " causal" } else { "" }
    );
    ok &= check("step after the timed runs", &out, &dev_cache, &config)?;
    Ok(ok)
}

/// One decode step through the typed API: the new tokens' K/V appended, then the attention.
fn run_step<T: HalfFloat>(
    device: &Device,
    cache: &mut DevicePagedCache<T>,
    (k_new, v_new): (&flashcore::runtime::DeviceTensor<T>, &flashcore::runtime::DeviceTensor<T>),
    q: &flashcore::runtime::DeviceTensor<T>,
    out: &mut flashcore::runtime::DeviceTensor<T>,
    scale: f32,
    causal: bool,
) -> Result<Config, flashcore::Error> {
    flashcore::paged::append(device, cache, k_new, v_new)?;
    decode_step(device, cache, q, out, scale, causal)
}
