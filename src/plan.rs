//! A launch written down as JSON: the PTX, its entry, the CTA size and shared memory, and every
//! kernel parameter's value or role, so that a program outside Rust (the Python benchmark,
//! `scripts/bench.py`) can launch a FlashCore kernel through the CUDA driver on its own tensors.
//!
//! The values come from the same [`bind_shapes`] a Rust launch uses, so the plan checks the
//! shapes as a launch would and its dims and strides are the ones a launch passes.
//!
//! ```
//! use flashcore::kernels::attention;
//! use flashcore::plan::{launch_plan, PlanArg};
//! use flashcore::TensorView;
//!
//! let kernel = attention::compile(&attention::CONFIG)?;
//! let (shape, strides) = ([1, 2, 128, 64], [16384, 8192, 64, 1]);
//! let t = TensorView { dtype: "f16", shape: &shape, strides: &strides, buffer_len: 16384 };
//! let args = [PlanArg::Tensor(t), PlanArg::Tensor(t), PlanArg::Tensor(t), PlanArg::TensorMut(t),
//!             PlanArg::Absent, PlanArg::F32(0.125), PlanArg::Absent, PlanArg::Absent];
//! let plan = launch_plan(&kernel, &args)?;
//! assert_eq!(plan.work_items, 2 * 128 / 64);
//! assert!(plan.to_json().contains("\"entry\": \"attention\""));
//! # Ok::<(), flashcore::Error>(())
//! ```

use serde::Serialize;

use crate::ir::abi::EntryParam;
use crate::ir::kernel::Param;
use crate::{bind_shapes, check_arg_kinds, ArgKind, ArgView, CompiledKernel, Error, TensorView};

/// One entry parameter, in order.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PlanParam {
    /// A device pointer the caller supplies: the tensor the kernel parameter `name` names, with
    /// the shape and element strides the plan was made for.
    Pointer {
        /// The kernel parameter.
        name: String,
        /// Whether the kernel writes it.
        output: bool,
        /// Element type name.
        dtype: String,
        /// The logical shape the plan was made for.
        shape: Vec<usize>,
        /// Its strides in elements.
        strides: Vec<usize>,
    },
    /// A null pointer: an optional parameter left out.
    Null {
        /// The kernel parameter.
        name: String,
    },
    /// An f32 scalar argument.
    F32 {
        /// The kernel parameter.
        name: String,
        /// Its value.
        value: f32,
    },
    /// A u32 the launcher adds: a bound dim or a stride.
    U32 {
        /// What it is, e.g. `dim S` or `q stride H`.
        name: String,
        /// Its value.
        value: u32,
    },
    /// A 128-byte `CUtensorMap` (passed by value) that the launcher encodes with
    /// `cuTensorMapEncodeTiled` over the tensor parameter `tensor`'s device pointer: rank 4,
    /// 16-bit elements of `dtype`, these extents, byte strides and box (innermost first),
    /// element strides 1, no interleave, 128-byte swizzle, L2 promotion 128 B, zero fill.
    TensorMap {
        /// The kernel parameter, e.g. `tmap_k`.
        name: String,
        /// The tensor parameter it maps.
        tensor: String,
        /// Element type name.
        dtype: String,
        /// Extents, innermost first.
        dims: Vec<u64>,
        /// Strides in bytes of the outer axes.
        strides: Vec<u64>,
        /// The box each copy brings, innermost first.
        box_dims: Vec<u32>,
    },
    /// A device pointer to the split-across-CTAs workspace (`Config::kv_ctas > 1`): `bytes`
    /// bytes that the launcher allocates once, zeroed, and passes to every launch (the kernel
    /// leaves it zero; launches on two streams at once would race on one).
    Workspace {
        /// The kernel parameter, `workspace`.
        name: String,
        /// Its size.
        bytes: u64,
    },
    /// A device pointer to a buffer of `summaries[index].bytes` bytes that the launcher
    /// allocates once and fills before every launch by launching `summaries[index]`.
    Summary {
        /// The kernel parameter, e.g. `summary_doc_1`.
        name: String,
        /// Which of the plan's `summaries`.
        index: usize,
    },
}

/// A launch that must run before the kernel's, on the same stream, every time: the table
/// summary kernel (`flashcore_codegen::table_summary`) over one table the masks read along the
/// key axis. Its arguments: the table's pointer, the summary buffer's, then `values`.
#[derive(Clone, Debug, Serialize)]
pub struct PlanSummary {
    /// The table parameter it reads.
    pub table: String,
    /// Bytes of its buffer.
    pub bytes: u64,
    /// The PTX `.entry`.
    pub entry: String,
    /// Threads per CTA.
    pub threads_per_cta: u32,
    /// CTAs.
    pub ctas: u32,
    /// The `u32` arguments after the two pointers.
    pub values: Vec<u32>,
    /// The PTX text.
    pub ptx: String,
}

/// Everything needed to launch one compiled kernel on one problem shape.
#[derive(Clone, Debug, Serialize)]
pub struct LaunchPlan {
    /// The kernel's name.
    pub kernel: String,
    /// The config, as `Config`'s `Display` writes it.
    pub config: String,
    /// The PTX `.entry` to launch.
    pub entry: String,
    /// Threads per CTA.
    pub threads_per_cta: u32,
    /// Dynamic shared memory per CTA, in bytes.
    pub shared_bytes: u32,
    /// CTAs of a one-per-work-item launch; a persistent kernel launches
    /// `min(work_items, CTAs per SM × SMs)` (the driver's occupancy calculator).
    pub work_items: u64,
    /// Whether the grid is sized by occupancy (persistent CTAs) rather than work items.
    pub persistent: bool,
    /// Every entry parameter, in order.
    pub params: Vec<PlanParam>,
    /// Launches before the kernel's, in order (`PlanParam::Summary` points at their buffers).
    pub summaries: Vec<PlanSummary>,
    /// The PTX text.
    pub ptx: String,
}

/// A launch argument as a plan takes it: shapes without memory.
#[derive(Clone, Copy, Debug)]
pub enum PlanArg<'a> {
    /// An input tensor's shape and strides.
    Tensor(TensorView<'a>),
    /// An output tensor's shape and strides.
    TensorMut(TensorView<'a>),
    /// An optional parameter left out.
    Absent,
    /// An f32 scalar.
    F32(f32),
}

/// The plan for launching `kernel` on `args` (one per parameter, as [`crate::launch`] takes
/// them). Variable-length launches are not planned: their offsets live in device memory the plan
/// cannot describe.
pub fn launch_plan(kernel: &CompiledKernel, args: &[PlanArg]) -> Result<LaunchPlan, Error> {
    let k = &kernel.kernel;
    check_arg_kinds(
        k,
        args.iter().map(|a| match a {
            PlanArg::Tensor(_) => ArgKind::Input,
            PlanArg::TensorMut(_) => ArgKind::Output,
            PlanArg::Absent => ArgKind::Absent,
            PlanArg::F32(x) => ArgKind::Scalar(*x),
        }),
    )?;
    let views: Vec<ArgView> = args
        .iter()
        .map(|a| match a {
            PlanArg::Tensor(t) | PlanArg::TensorMut(t) => ArgView::Tensor(*t),
            PlanArg::Absent | PlanArg::F32(_) => ArgView::None,
        })
        .collect();
    let binding = bind_shapes(k, &views)?;
    let mut per_param: Vec<PlanParam> = k
        .params
        .iter()
        .zip(args)
        .map(|(param, arg)| {
            let name = param.name().to_string();
            match arg {
                PlanArg::Tensor(t) | PlanArg::TensorMut(t) => PlanParam::Pointer {
                    name,
                    output: matches!(param, Param::Tensor(p) if p.writable),
                    dtype: t.dtype.to_string(),
                    shape: t.shape.to_vec(),
                    strides: t.strides.to_vec(),
                },
                PlanArg::Absent => PlanParam::Null { name },
                PlanArg::F32(value) => PlanParam::F32 { name, value: *value },
            }
        })
        .collect();
    // Split across CTAs: the workspace, after the parameters (`EntryParam::Workspace`).
    let workspace_bytes = crate::codegen::combine_workspace_bytes(k, binding.work_items);
    if workspace_bytes > 0 {
        per_param.push(PlanParam::Workspace { name: "workspace".into(), bytes: workspace_bytes });
    }
    // The tables the masks read along the key axis: their summary launches.
    let summaries: Vec<_> = crate::summary_launches(k, &views)?
        .into_iter()
        .map(|(summary, launch)| {
            use crate::codegen::table_summary::{
                table_summary_ptx, TABLE_SUMMARY_ENTRY, TABLE_SUMMARY_THREADS,
            };
            let plan = PlanSummary {
                table: k.params[summary.param].name().to_string(),
                bytes: launch.bytes,
                entry: TABLE_SUMMARY_ENTRY.into(),
                threads_per_cta: TABLE_SUMMARY_THREADS,
                ctas: launch.ctas,
                values: launch.values.to_vec(),
                ptx: table_summary_ptx(),
            };
            (summary, plan)
        })
        .collect();
    // The entry parameters in the order `Kernel::entry_abi` states, named as the PTX names them
    // (less the kernel's name).
    let short = |entry: EntryParam| {
        let name = entry.ptx_name(k);
        name.strip_prefix(&format!("{}_", k.name)).map_or(name.clone(), str::to_string)
    };
    let params: Vec<PlanParam> = k
        .entry_args(
            |p| per_param.get(p).cloned(),
            |dim| PlanParam::U32 {
                name: short(EntryParam::Dim { dim }),
                value: binding.dims[dim.0 as usize],
            },
            &binding.strides,
            |entry, value| PlanParam::U32 { name: short(entry), value },
            |entry, strides| {
                let (param, map) = crate::tile_map(k, &binding, entry, strides)?;
                Some(PlanParam::TensorMap {
                    name: short(entry),
                    tensor: k.params[param].name().to_string(),
                    dtype: k.config.dtype.name().to_string(),
                    dims: map.dims.to_vec(),
                    strides: map.strides.to_vec(),
                    box_dims: map.box_dims.to_vec(),
                })
            },
            |summary| {
                let name = short(EntryParam::Summary(summary));
                Some(match summaries.iter().position(|(s, _)| *s == summary) {
                    Some(index) => PlanParam::Summary { name, index },
                    None => PlanParam::Null { name },
                })
            },
        )
        .ok_or_else(|| crate::abi_mismatch(k))?;
    Ok(LaunchPlan {
        kernel: k.name.clone(),
        config: k.config.to_string(),
        entry: kernel.ptx.entry.clone(),
        threads_per_cta: kernel.ptx.threads_per_cta,
        shared_bytes: kernel.ptx.shared_bytes,
        work_items: binding.work_items,
        persistent: matches!(
            crate::ir::passes::persist::schedule(k),
            crate::ir::kernel::TileSchedule::Persistent
        ),
        params,
        summaries: summaries.into_iter().map(|(_, plan)| plan).collect(),
        ptx: kernel.ptx.text.clone(),
    })
}

impl LaunchPlan {
    /// The plan as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention;

    fn view<'a>(shape: &'a [usize], strides: &'a [usize], dtype: &'static str) -> TensorView<'a> {
        TensorView { dtype, shape, strides, buffer_len: shape.iter().product() }
    }

    /// The arguments of a kernel with the standard signature (`q, k, v, o, lse, scale,
    /// <tables>, cu_q, cu_k`), every tensor `t`, no sequence offsets.
    fn standard_args<'a>(
        t: TensorView<'a>,
        lse: PlanArg<'a>,
        scale: f32,
        tables: &[PlanArg<'a>],
    ) -> Vec<PlanArg<'a>> {
        let mut args = vec![
            PlanArg::Tensor(t),
            PlanArg::Tensor(t),
            PlanArg::Tensor(t),
            PlanArg::TensorMut(t),
            lse,
            PlanArg::F32(scale),
        ];
        args.extend_from_slice(tables);
        args.extend([PlanArg::Absent, PlanArg::Absent]);
        args
    }

    #[test]
    fn a_plan_lists_pointers_scalars_dims_and_strides_in_entry_order() {
        let compiled = attention::compile(&attention::CONFIG).unwrap();
        let (shape, strides) = ([1, 8, 512, 64], [262144, 32768, 64, 1]);
        let rows = ([1, 8, 512], [4096, 512, 1]);
        let t = view(&shape, &strides, "f16");
        let args = standard_args(t, PlanArg::TensorMut(view(&rows.0, &rows.1, "f32")), 0.125, &[]);
        let plan = launch_plan(&compiled, &args).unwrap();
        // The entry's .param names, in order: `attention_param_q`, `attention_dim_B`, ...
        let declared: Vec<String> = plan
            .ptx
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".param ."))
            .map(|l| l.split_whitespace().nth(1).unwrap().trim_end_matches(',').to_string())
            .collect();
        let named: Vec<String> = plan
            .params
            .iter()
            .map(|p| match p {
                PlanParam::Pointer { name, .. } | PlanParam::Null { name } | PlanParam::F32 { name, .. } => {
                    format!("attention_param_{name}")
                }
                PlanParam::U32 { name, .. }
                | PlanParam::TensorMap { name, .. }
                | PlanParam::Workspace { name, .. }
                | PlanParam::Summary { name, .. } => format!("attention_{name}"),
            })
            .collect();
        assert_eq!(named, declared);
        assert!(matches!(&plan.params[3], PlanParam::Pointer { name, output: true, .. } if name == "o"));
        assert!(matches!(&plan.params[6], PlanParam::Null { name } if name == "cu_q"));
        let u32s: Vec<u32> = plan
            .params
            .iter()
            .filter_map(|p| if let PlanParam::U32 { value, .. } = p { Some(*value) } else { None })
            .collect();
        assert_eq!(u32s[..5], [1, 8, 512, 8, 512], "B, H, S, HKV, SK");
        assert_eq!(u32s[5..8], [262144, 32768, 64], "q's B, H, S strides");
        assert_eq!(u32s[u32s.len() - 3..], [4096, 512, 1], "the lse strides come last");
        assert_eq!(plan.work_items, 8 * 512 / 64);
        assert!(plan.to_json().contains("\"kind\": \"pointer\""));
        // A plan checks shapes as a launch does.
        let wrong = [1, 8, 512, 128];
        let mut bad = args.clone();
        bad[0] = PlanArg::Tensor(view(&wrong, &strides, "f16"));
        let err = launch_plan(&compiled, &bad).unwrap_err().to_string();
        assert!(err.contains("head dim is 128"), "{err}");
        // And its scalars: the sm_90a kernel folded `scale` into its exponentials, so a negative
        // one is refused by name, as a launch refuses it.
        let folded =
            attention::compile(&crate::Config { target: crate::Target::Sm90a, ..attention::CONFIG }).unwrap();
        let mut negative = args.clone();
        negative[5] = PlanArg::F32(-0.125);
        assert!(launch_plan(&folded, &args).is_ok());
        let err = launch_plan(&folded, &negative).unwrap_err();
        assert!(matches!(&err, Error::Argument { arg, .. } if arg == "scale"), "{err}");
    }

    /// A table may span more than 4 GiB: a `[2, 16, 8192, 8192]` f32 bias (8 GiB, a batch
    /// stride of 2³⁰ elements) is planned with its strides in elements, which the kernel scales
    /// in 64 bits; an axis of 2³⁰ elements or more is refused by name.
    #[test]
    fn a_table_over_4_gib_is_planned_and_an_axis_of_2_to_the_30_is_refused() {
        let compiled = crate::kernels::variants::bias_attention::compile(
            &crate::kernels::variants::bias_attention::CONFIG.with_head_dim(128),
        )
        .unwrap();
        let (shape, strides) = ([2, 16, 8192, 128], [16 * 8192 * 128, 8192 * 128, 128, 1]);
        let rows = ([2, 16, 8192], [16 * 8192, 8192, 1]);
        let t = view(&shape, &strides, "f16");
        let (bias_shape, bias_strides) = ([2, 16, 8192, 8192], [1 << 30, 1 << 26, 8192, 1]);
        let bias =
            TensorView { dtype: "f32", shape: &bias_shape, strides: &bias_strides, buffer_len: 1 << 31 };
        let lse = PlanArg::TensorMut(view(&rows.0, &rows.1, "f32"));
        let args = |bias| standard_args(t, lse, 0.088, &[PlanArg::Tensor(bias)]);
        let plan = launch_plan(&compiled, &args(bias)).unwrap();
        let u32s: Vec<u32> = plan
            .params
            .iter()
            .filter_map(|p| if let PlanParam::U32 { value, .. } = p { Some(*value) } else { None })
            .collect();
        assert!(u32s.ends_with(&[1 << 30, 1 << 26, 8192, 1]), "the bias strides, in elements: {u32s:?}");
        let (long_shape, long_strides) = ([1, 1, 1, 1 << 30], [1 << 30, 1 << 30, 1 << 30, 1]);
        let long =
            TensorView { dtype: "f32", shape: &long_shape, strides: &long_strides, buffer_len: 1 << 30 };
        let err = launch_plan(&compiled, &args(long)).unwrap_err().to_string();
        assert!(err.contains("bias") && err.contains("a table's axis holds fewer than 2^30"), "{err}");
    }

    /// A kernel whose mask reads document ids along the keys: its plan runs the table summary
    /// kernel first, and the kernel's summary parameter points at that launch's buffer.
    #[test]
    fn a_plan_summarises_the_tables_its_masks_read_along_the_keys() {
        use crate::kernels::variants::document_attention;
        let compiled = document_attention::compile(&document_attention::CONFIG).unwrap();
        let (shape, strides) = ([2, 4, 300, 64], [76800, 19200, 64, 1]);
        let t = view(&shape, &strides, "f16");
        let ids = view(&[2, 300], &[300, 1], "i32");
        let args = standard_args(t, PlanArg::Absent, 0.125, &[PlanArg::Tensor(ids)]);
        let plan = launch_plan(&compiled, &args).unwrap();
        assert_eq!(plan.summaries.len(), 1);
        let summary = &plan.summaries[0];
        assert_eq!((summary.table.as_str(), summary.ctas), ("doc", 2));
        // 2 rows of ceil(300 / 64) = 5 blocks of 64 (a warp each: 2 CTAs of 256 threads),
        // along an axis of 300 with stride 1.
        assert_eq!(summary.values[..5], [10, 5, 64, 300, 1]);
        assert_eq!(summary.bytes, (300 + 4 + 1) * 8);
        assert!(summary.ptx.contains(&format!(".entry {}", summary.entry)));
        let pointing: Vec<_> =
            plan.params.iter().filter(|p| matches!(p, PlanParam::Summary { index: 0, .. })).collect();
        assert_eq!(pointing.len(), 1, "{:?}", plan.params);
        assert!(plan.to_json().contains("\"kind\": \"summary\""));
    }

    /// A kernel split across CTAs (`kv_ctas`) is planned with its workspace, sized as a launch
    /// sizes it, as its last parameter.
    #[test]
    fn a_plan_of_a_kernel_split_across_ctas_has_its_workspace() {
        let config = crate::Config { kv_ctas: 3, ..attention::CONFIG };
        let compiled = attention::compile(&config).unwrap();
        let (shape, strides) = ([1, 2, 64, 64], [8192, 4096, 64, 1]);
        let t = view(&shape, &strides, "f16");
        let args = standard_args(t, PlanArg::Absent, 0.125, &[]);
        let plan = launch_plan(&compiled, &args).unwrap();
        let want = crate::codegen::combine_workspace_bytes(&compiled.kernel, plan.work_items);
        assert!(want > 0);
        match plan.params.last() {
            Some(PlanParam::Workspace { bytes, .. }) => assert_eq!(*bytes, want),
            other => panic!("the last parameter is {other:?}"),
        }
        let declared = plan.ptx.lines().filter(|l| l.trim().starts_with(".param")).count();
        assert_eq!(declared, plan.params.len());
    }
}
