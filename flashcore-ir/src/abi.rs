//! The kernel's entry ABI, stated once: the PTX `.entry` parameters in order. The code generator
//! declares and loads them from this list; the launcher, the simulator and launch plans fill
//! them from it; `bind_shapes` orders its strides by it.
//!
//! The order: one entry per kernel parameter (a u64 pointer for each tensor, table and set of
//! sequence offsets, an f32 for each scalar), then a u32 length per runtime dim, then the u32
//! strides in elements: each tensor's `B, H, S` axes (its head dim is contiguous), each table's
//! every axis, in parameter order.

use crate::kernel::{Kernel, Param, RtDim};

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
        }
    }

    /// Its PTX type.
    pub fn ptx_type(&self) -> &'static str {
        match self {
            EntryParam::Pointer { .. } => ".u64",
            EntryParam::F32 { .. } => ".f32",
            EntryParam::Dim { .. } | EntryParam::Stride { .. } => ".u32",
        }
    }
}

impl Kernel {
    /// The entry arguments in the ABI's order, from the caller's values: `param(i)` for
    /// parameter `i`'s pointer or scalar, `dim(d)` for runtime dim `d`'s length, `stride(entry,
    /// value)` for each stride, whose values `strides` lists in the ABI's order. `None` when a
    /// value is missing (the launcher, the simulator and launch plans share this one walk).
    pub fn entry_args<T>(
        &self,
        mut param: impl FnMut(usize) -> Option<T>,
        mut dim: impl FnMut(RtDim) -> T,
        strides: &[u32],
        mut stride: impl FnMut(EntryParam, u32) -> T,
    ) -> Option<Vec<T>> {
        let mut strides = strides.iter();
        self.entry_abi()
            .into_iter()
            .map(|entry| match entry {
                EntryParam::Pointer { param: p } | EntryParam::F32 { param: p } => param(p),
                EntryParam::Dim { dim: d } => Some(dim(d)),
                EntryParam::Stride { .. } => strides.next().map(|v| stride(entry, *v)),
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
        abi
    }
}
