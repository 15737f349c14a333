//! The kernel's entry ABI, stated once: the PTX `.entry` parameters in order. The code generator
//! declares and loads them from this list; the launcher, the simulator and launch plans fill
//! them from it; `bind_shapes` orders its strides by it.
//!
//! The order: one entry per kernel parameter (a u64 pointer for each tensor, table and set of
//! sequence offsets, an f32 for each scalar), then a u32 length per runtime dim, then the u32
//! strides in elements: each tensor's `B, H, S` axes (its head dim is contiguous), each table's
//! every axis, in parameter order; then, for kernels whose tiles come through bulk tensor copies
//! (the TMA pass), a 128-byte tensor map per tensor they copy, in parameter order
//! ([`TileMap`] says what it maps); then a u64 pointer per table summary
//! ([`Kernel::table_summaries`]); last, for kernels split across CTAs (`Config::kv_ctas`), the
//! workspace's pointer.

use crate::kernel::{Kernel, Param, RtDim, TableSummary};

/// One `.entry` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryParam {
    /// A u64 global pointer: tensor, table or sequence offsets `param` (null for an optional
    /// one left out).
    Pointer { param: usize },
    /// The f32 scalar parameter `param`.
    F32 { param: usize },
    /// The u32 length of runtime dim `dim`.
    Dim { dim: RtDim },
    /// The u32 stride, in elements, of axis `axis` of tensor or table `param`, which walks `dim`.
    Stride { param: usize, axis: usize, dim: RtDim },
    /// The tensor map (a 64-byte aligned, 128-byte `CUtensorMap`, passed by value) through
    /// which the kernel's bulk tensor copies read tensor `param` in tiles of `rows` rows: see
    /// [`TileMap`].
    TensorMap { param: usize, rows: u32 },
    /// A u64 global pointer to the per-block (min, max) summary of i32 table `param` along
    /// `axis` ([`TableSummary`]), filled by the launch before the kernel runs.
    Summary(TableSummary),
    /// A u64 global pointer to the split-KV-across-CTAs workspace (`Config::kv_ctas > 1`): the
    /// CTAs' online-softmax states, then an arrival counter per work item, which must be zero
    /// before the first launch (the kernel leaves them zero). The callers pass it as the value of
    /// parameter index `params.len()`; its size is `flashcore_codegen::combine_workspace_bytes`.
    Workspace,
}

/// What the tensor map of a tensor read by bulk tensor copies describes, for whoever encodes
/// it (the runtime through `cuTensorMapEncodeTiled`, the simulator directly): the tensor as a
/// 4-D array of 16-bit elements, innermost axis first, `[D, S, H, B]`, and a box of
/// `[64, rows, 1, 1]` (one 128-byte swizzle span of `rows` rows), with 128-byte swizzle and
/// zeros outside the bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileMap {
    /// Extents, innermost first: `D`, then the lengths of the tensor's `S`, `H` and `B` axes.
    pub dims: [u64; 4],
    /// Strides in bytes of the `S`, `H` and `B` axes (`D` is contiguous). An axis of extent 1
    /// that the tensor gives stride 0 (a broadcast batch) gets its extent's worth instead,
    /// since the encoding wants multiples of 16 bytes.
    pub strides: [u64; 3],
    /// The box: `[64, rows, 1, 1]`.
    pub box_dims: [u32; 4],
}

impl TileMap {
    /// Columns of one box: 64 16-bit elements, the 128 bytes of one swizzle span.
    pub const BOX_COLUMNS: u32 = 64;

    /// The map of a tensor with head dim `head_dim`, axis lengths `[B, H, S]` and strides in
    /// elements `[B, H, S]`, copied in tiles of `rows` rows.
    pub fn new(head_dim: u32, lens: [u32; 3], strides: [u32; 3], rows: u32) -> TileMap {
        let [b, h, s] = lens.map(u64::from);
        let bytes = |stride: u32, fallback: u64| match stride {
            0 => fallback,
            n => n as u64 * 2,
        };
        let s_stride = bytes(strides[2], head_dim as u64 * 2);
        let h_stride = bytes(strides[1], s_stride * s.max(1));
        let b_stride = bytes(strides[0], h_stride * h.max(1));
        TileMap {
            dims: [head_dim as u64, s.max(1), h.max(1), b.max(1)],
            strides: [s_stride, h_stride, b_stride],
            box_dims: [Self::BOX_COLUMNS, rows, 1, 1],
        }
    }
}

impl EntryParam {
    /// Its `.param` name in the PTX: `{kernel}_param_q`, `{kernel}_dim_S`, `{kernel}_stride_q_S`.
    pub fn ptx_name(&self, kernel: &Kernel) -> String {
        let k = &kernel.name;
        match *self {
            EntryParam::Pointer { param } | EntryParam::F32 { param } => {
                format!("{k}_param_{}", kernel.params[param].name())
            }
            EntryParam::Dim { dim } => format!("{k}_dim_{}", kernel.dims[dim.0 as usize]),
            EntryParam::Stride { param, dim, .. } => {
                format!("{k}_stride_{}_{}", kernel.params[param].name(), kernel.dims[dim.0 as usize])
            }
            EntryParam::TensorMap { param, .. } => format!("{k}_tmap_{}", kernel.params[param].name()),
            EntryParam::Workspace => format!("{k}_workspace"),
            EntryParam::Summary(TableSummary { param, axis }) => {
                format!("{k}_summary_{}_{axis}", kernel.params[param].name())
            }
        }
    }

    /// Its declaration in the `.entry`'s parameter list.
    pub fn ptx_decl(&self, kernel: &Kernel) -> String {
        match self {
            EntryParam::TensorMap { .. } => format!(".param .align 64 .b8 {}[128]", self.ptx_name(kernel)),
            _ => format!(".param {} {}", self.ptx_type(), self.ptx_name(kernel)),
        }
    }

    /// Its PTX type.
    pub fn ptx_type(&self) -> &'static str {
        match self {
            EntryParam::Pointer { .. } | EntryParam::Workspace | EntryParam::Summary(_) => ".u64",
            EntryParam::F32 { .. } => ".f32",
            EntryParam::Dim { .. } | EntryParam::Stride { .. } => ".u32",
            EntryParam::TensorMap { .. } => ".b8",
        }
    }
}

impl Kernel {
    /// The entry arguments in the ABI's order, from the caller's values: `param(i)` for
    /// parameter `i`'s pointer or scalar, `dim(d)` for runtime dim `d`'s length, `stride(entry,
    /// value)` for each stride, whose values `strides` lists in the ABI's order. `None` when a
    /// value is missing (the launcher, the simulator and launch plans share this one walk).
    /// `tensor_map(entry, [B, H, S] strides)` gives the tensor map an
    /// [`EntryParam::TensorMap`] names, from its tensor's strides (which come earlier);
    /// `summary(s)` the pointer to table summary `s`.
    pub fn entry_args<T>(
        &self,
        mut param: impl FnMut(usize) -> Option<T>,
        mut dim: impl FnMut(RtDim) -> T,
        strides: &[u32],
        mut stride: impl FnMut(EntryParam, u32) -> T,
        mut tensor_map: impl FnMut(EntryParam, [u32; 3]) -> Option<T>,
        mut summary: impl FnMut(TableSummary) -> Option<T>,
    ) -> Option<Vec<T>> {
        let mut strides = strides.iter();
        // Each tensor's B, H, S strides, as they pass (tensor maps come after them).
        let mut tensor_strides: Vec<[u32; 3]> = vec![[0; 3]; self.params.len()];
        self.entry_abi()
            .into_iter()
            .map(|entry| match entry {
                EntryParam::Pointer { param: p } | EntryParam::F32 { param: p } => param(p),
                EntryParam::Dim { dim: d } => Some(dim(d)),
                EntryParam::Stride { param: p, axis, .. } => {
                    let v = *strides.next()?;
                    if let Some(s) = tensor_strides[p].get_mut(axis) {
                        *s = v;
                    }
                    Some(stride(entry, v))
                }
                EntryParam::TensorMap { param: p, .. } => tensor_map(entry, tensor_strides[p]),
                EntryParam::Summary(s) => summary(s),
                EntryParam::Workspace => param(self.params.len()),
            })
            .collect()
    }

    /// The entry parameters, in order (see the module documentation).
    pub fn entry_abi(&self) -> Vec<EntryParam> {
        let mut abi: Vec<EntryParam> = self
            .params
            .iter()
            .enumerate()
            .map(|(param, p)| match p {
                Param::Scalar { .. } => EntryParam::F32 { param },
                _ => EntryParam::Pointer { param },
            })
            .collect();
        abi.extend((0..self.dims.len()).map(|d| EntryParam::Dim { dim: RtDim(d as u32) }));
        for (param, p) in self.params.iter().enumerate() {
            let dims: &[RtDim] = match p {
                Param::Tensor(t) => &t.dims,
                Param::Table(t) => &t.dims,
                _ => continue,
            };
            abi.extend(dims.iter().enumerate().map(|(axis, dim)| EntryParam::Stride {
                param,
                axis,
                dim: *dim,
            }));
        }
        abi.extend(self.tensor_maps().into_iter().map(|(param, rows)| EntryParam::TensorMap { param, rows }));
        abi.extend(self.table_summaries().into_iter().map(EntryParam::Summary));
        if self.config.kv_ctas > 1 {
            abi.push(EntryParam::Workspace);
        }
        abi
    }
}
