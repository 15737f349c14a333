//! The attention variants as the examples run them: a registered `#[flash_kernel]` with the
//! standard signature (`q, k, v, o, lse, scale, <f32 parameters and tables>, cu_q, cu_k`), its
//! f32 parameters from the command line, its tables made for each problem, its float64
//! reference, and its launch arguments. Shared by `attention.rs` and `autotune.rs`.

use flashcore::ir::source::{Dim, ElemDecl, ParamDecl};
use flashcore::kernels::variants;
use flashcore::reference::{self, Rng};
use flashcore::registry::KernelEntry;
use flashcore::runtime::Device;
use flashcore::simulate::ExtraArg;
use flashcore::{CompiledKernel, Config};
use std::path::{Path, PathBuf};

/// The kernel parameter flags both examples take: `--softcap X`, `--prefix X`,
/// `--window LEFT,RIGHT` and `--param NAME=VALUE`. `Some` (the parameters it sets, or why not)
/// when `flag` is one of them; its value comes from `value`.
pub fn param_flag(
    flag: &str,
    value: &mut dyn FnMut() -> Result<String, String>,
) -> Option<Result<Vec<(String, f32)>, String>> {
    let parsed = match flag {
        "--softcap" | "--prefix" => {
            value().and_then(|v| Ok(vec![(flag.trim_start_matches("--").to_string(), float(flag, v)?)]))
        }
        "--window" => value().and_then(|v| {
            let (left, right) = v.split_once(',').ok_or_else(|| {
                format!("--window takes LEFT,RIGHT (keys before and after the diagonal), got `{v}`")
            })?;
            Ok(vec![
                ("window_left".to_string(), float(flag, left.into())?),
                ("window_right".to_string(), float(flag, right.into())?),
            ])
        }),
        "--param" => value().and_then(|v| {
            let (name, x) =
                v.split_once('=').ok_or_else(|| format!("--param takes NAME=VALUE, got `{v}`"))?;
            Ok(vec![(name.to_string(), float(flag, x.into())?)])
        }),
        _ => return None,
    };
    Some(parsed)
}

/// A number for an f32 kernel parameter.
pub fn float(flag: &str, text: String) -> Result<f32, String> {
    text.trim().parse::<f32>().map_err(|_| format!("{flag}: `{text}` is not a number"))
}

/// The kernel `--kernel` names, checked to have the standard signature, and its parameters after
/// `scale`: f32 values from the flags, and input tables made for each problem or read from
/// `.npy` files.
pub struct Chosen {
    pub entry: &'static KernelEntry,
    pub extras: Vec<(String, Extra)>,
    /// Tokens per document for `i32` tables (document ids: token `i` is in document `i / len`).
    pub doc_len: usize,
    /// Tables read from files (`--table NAME=FILE`, `--bias FILE`), by name.
    pub files: Vec<(String, PathBuf)>,
    /// Document ids `[B, S]` from a file (`--doc-ids FILE`): the `doc` table, or the `doc_start`
    /// and `doc_end` tables made from it.
    pub doc_ids: Option<PathBuf>,
}

/// The tables document ids give (see [`Chosen::doc_ids`]).
const DOCUMENT_TABLES: [&str; 3] = ["doc", "doc_start", "doc_end"];

/// A parameter after `scale`.
pub enum Extra {
    F32(f32),
    /// A table over these axes: `i32` ones hold document ids, `f32` ones random values (a bias).
    Table {
        int: bool,
        axes: Vec<String>,
    },
}

pub use flashcore::autotune::DeviceExtra;

impl Chosen {
    /// The registered kernel `kernel`, its f32 parameters from `values` (a later value wins).
    pub fn new(kernel: &str, values: &[(String, f32)], doc_len: usize) -> Result<Chosen, String> {
        let entry = flashcore::registry::find(kernel).ok_or_else(|| {
            let names: Vec<&str> = flashcore::registry::kernels().iter().map(|k| k.name).collect();
            format!("--kernel: no kernel `{}`; kernels are {}", kernel, names.join(", "))
        })?;
        let params = (entry.program)().params;
        let kinds: Vec<&str> = params
            .iter()
            .map(|p| match p {
                ParamDecl::Tensor { dtype: ElemDecl::F32 | ElemDecl::I32, writable: false, .. } => "table",
                ParamDecl::Tensor { writable: false, .. } => "in",
                ParamDecl::Tensor { optional: true, .. } => "opt",
                ParamDecl::Tensor { .. } => "out",
                ParamDecl::Scalar { .. } => "f32",
                ParamDecl::Offsets { .. } => "offsets",
            })
            .collect();
        let n = kinds.len();
        let standard = n >= 8
            && kinds[..6] == ["in", "in", "in", "out", "opt", "f32"]
            && kinds[n - 2..] == ["offsets", "offsets"]
            && kinds[6..n - 2].iter().all(|k| matches!(*k, "f32" | "table"));
        if !standard {
            return Err(format!(
                "--kernel {}: the example runs kernels with the standard signature (q, k, v, o, lse, scale, f32 parameters and tables.., cu_q, cu_k)",
                entry.name
            ));
        }
        let mut extras = vec![];
        for p in &params[6..n - 2] {
            let name = p.name().to_string();
            let extra = match p {
                ParamDecl::Tensor { dtype, shape, .. } => Extra::Table {
                    int: *dtype == ElemDecl::I32,
                    axes: shape
                        .iter()
                        .map(|d| match d {
                            Dim::Sym(s) => s.clone(),
                            Dim::Lit(n) => n.to_string(),
                        })
                        .collect(),
                },
                _ => Extra::F32(values.iter().rev().find(|(n, _)| *n == name).map(|(_, x)| *x).ok_or_else(
                    || format!("--kernel {}: give its parameter `{name}` (--param {name}=VALUE)", entry.name),
                )?),
            };
            extras.push((name, extra));
        }
        for (name, _) in values {
            if !extras.iter().any(|(n, e)| n == name && matches!(e, Extra::F32(_))) {
                let names: Vec<&str> = extras.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "--kernel {} has no f32 parameter `{name}` (it has: {})",
                    entry.name,
                    names.join(", ")
                ));
            }
        }
        Ok(Chosen { entry, extras, doc_len, files: vec![], doc_ids: None })
    }

    /// Tables from `.npy` files: `files` by name, and `doc_ids` for the document tables; each
    /// must name a table of the kernel.
    pub fn with_files(
        mut self,
        files: Vec<(String, PathBuf)>,
        doc_ids: Option<PathBuf>,
    ) -> Result<Chosen, String> {
        let tables: Vec<&str> = self
            .extras
            .iter()
            .filter(|(_, e)| matches!(e, Extra::Table { .. }))
            .map(|(n, _)| n.as_str())
            .collect();
        for (name, _) in &files {
            if !tables.contains(&name.as_str()) {
                return Err(format!(
                    "--table {name}: kernel {} has no table `{name}` (its tables: {})",
                    self.entry.name,
                    if tables.is_empty() { "none".to_string() } else { tables.join(", ") }
                ));
            }
        }
        if doc_ids.is_some() && !tables.iter().any(|t| DOCUMENT_TABLES.contains(t)) {
            return Err(format!(
                "--doc-ids: kernel {} has no document table (`doc`, or `doc_start` and `doc_end`)",
                self.entry.name
            ));
        }
        (self.files, self.doc_ids) = (files, doc_ids);
        Ok(self)
    }

    /// Whether some table comes from a file (the problem's shape is then the files').
    pub fn reads_files(&self) -> bool {
        !self.files.is_empty() || self.doc_ids.is_some()
    }

    pub fn compile(&self, cfg: &Config) -> Result<std::sync::Arc<CompiledKernel>, String> {
        flashcore::compile(&(self.entry.program)(), cfg).map(std::sync::Arc::new).map_err(|e| e.to_string())
    }

    /// The parameters after `scale` for a problem with these axis sizes (`B`, `H`, `HKV`, `S`,
    /// `SK`): documents of `doc_len` tokens along an i32 table's last axis (see
    /// [`document_rows`]), random f32 tables.
    pub fn problem_extras(
        &self,
        sizes: &[(&str, usize)],
        rng: &mut Rng,
    ) -> Result<Vec<(String, ExtraArg)>, String> {
        self.extras
            .iter()
            .map(|(name, e)| {
                let arg = match e {
                    Extra::F32(x) => ExtraArg::F32(*x),
                    Extra::Table { int, axes } => {
                        let shape = table_shape(name, axes, sizes)?;
                        if let Some(arg) = self.table_from_file(name, *int, &shape)? {
                            return Ok((name.clone(), arg));
                        }
                        let count: usize = shape.iter().product();
                        let last = *shape.last().unwrap_or(&1);
                        if *int {
                            let ids: Vec<i32> = (0..count)
                                .map(|i| ((i % last.max(1)) / self.doc_len.max(1)) as i32)
                                .collect();
                            ExtraArg::I32Table { data: document_rows(name, &ids, last), shape }
                        } else {
                            let data = (0..count).map(|_| rng.normal() as f32).collect();
                            ExtraArg::F32Table { data, shape }
                        }
                    }
                };
                Ok((name.clone(), arg))
            })
            .collect()
    }

    /// Table `name` (i32 when `int`) of `shape` from its file, if it has one: `--table`, or the
    /// document ids of `--doc-ids` (as they are for `doc`, as each token's document's first token
    /// and one past its last for `doc_start` and `doc_end`: a document is a run of equal ids).
    fn table_from_file(&self, name: &str, int: bool, shape: &[usize]) -> Result<Option<ExtraArg>, String> {
        let check = |path: &Path, got: &[usize]| {
            if got == shape {
                Ok(())
            } else {
                Err(format!(
                    "{}: shape {got:?}, but table `{name}` of kernel {} is {shape:?} for this problem",
                    path.display(),
                    self.entry.name
                ))
            }
        };
        if let Some((_, path)) = self.files.iter().rev().find(|(n, _)| n == name) {
            return Ok(Some(if int {
                let a = flashcore::npy::read_i32(path).map_err(|e| e.to_string())?;
                check(path, &a.shape)?;
                ExtraArg::I32Table { data: a.data, shape: a.shape }
            } else {
                let a = flashcore::npy::read(path).map_err(|e| e.to_string())?;
                check(path, &a.shape)?;
                ExtraArg::F32Table { data: a.data, shape: a.shape }
            }));
        }
        let (Some(path), true, true) = (&self.doc_ids, int, DOCUMENT_TABLES.contains(&name)) else {
            return Ok(None);
        };
        let ids = flashcore::npy::read_i32(path).map_err(|e| e.to_string())?;
        check(path, &ids.shape)?;
        let data = document_rows(name, &ids.data, *shape.last().unwrap_or(&1));
        Ok(Some(ExtraArg::I32Table { data, shape: shape.to_vec() }))
    }

    /// The float64 reference of this kernel's formula.
    pub fn reference(
        &self,
        extras: &[(String, ExtraArg)],
        h: usize,
        s: usize,
        sk: usize,
    ) -> Result<reference::Variant, String> {
        variants::reference(self.entry.name, extras, h, s, sk)
    }

    /// The extras on the device.
    pub fn upload(device: &Device, extras: &[(String, ExtraArg)]) -> Result<Vec<DeviceExtra>, String> {
        let r = |x: flashcore::runtime::RuntimeError| x.to_string();
        extras
            .iter()
            .map(|(_, e)| {
                Ok(match e {
                    ExtraArg::F32(x) => DeviceExtra::F32(*x),
                    ExtraArg::F32Table { data, shape } => {
                        DeviceExtra::F32Table(device.upload(data, shape).map_err(r)?)
                    }
                    ExtraArg::I32Table { data, shape } => {
                        DeviceExtra::I32Table(device.upload(data, shape).map_err(r)?)
                    }
                })
            })
            .collect()
    }
}

/// The shape of table `name` over `axes` for a problem with these axis sizes.
pub fn table_shape(name: &str, axes: &[String], sizes: &[(&str, usize)]) -> Result<Vec<usize>, String> {
    axes.iter()
        .map(|a| {
            sizes
                .iter()
                .find(|(n, _)| n == a)
                .map(|(_, s)| *s)
                .ok_or_else(|| format!("table `{name}`'s axis `{a}` is not one of the problem's"))
        })
        .collect()
}

/// The sizes of the axes a problem's tables may name.
pub fn axis_sizes([b, h, s, _]: [usize; 4], hk: usize, sk: usize) -> Vec<(&'static str, usize)> {
    vec![("B", b), ("H", h), ("HKV", hk), ("S", s), ("SK", sk)]
}

/// i32 table `name` from document ids in rows of `len` (a run of equal ids is a document): each
/// token's document's first token for `doc_start`, one past its last for `doc_end`
/// (`variants::document_bounds`), the ids themselves for any other table.
pub fn document_rows(name: &str, ids: &[i32], len: usize) -> Vec<i32> {
    ids.chunks(len.max(1))
        .flat_map(|row| {
            let (start, end) = variants::document_bounds(row);
            match name {
                "doc_start" => start,
                "doc_end" => end,
                _ => row.to_vec(),
            }
        })
        .collect()
}
