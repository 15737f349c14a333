//! Parsing: `#[flash_kernel(..)]` arguments into a `Config`, and the kernel function into the
//! IR crate's `source::Program`, recording the span of every node in a side table so that
//! errors found later (by `lower`) point at the user's code.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{braced, parenthesized, Token};

use flashcore_ir::source::*;
use flashcore_ir::Config;

/// The source tokens of the program's nodes, indexed by `SpanId`: an error built from them
/// (`syn::Error::new_spanned`) underlines the whole node, first token to last, on stable Rust.
#[derive(Default)]
pub struct SpanTable {
    nodes: Vec<TokenStream>,
}

impl SpanTable {
    pub fn add(&mut self, node: &impl ToTokens) -> SpanId {
        self.nodes.push(node.to_token_stream());
        SpanId(self.nodes.len() as u32 - 1)
    }

    /// The span of node `id`'s first token.
    pub fn span(&self, id: SpanId) -> Option<Span> {
        self.nodes.get(id.0 as usize).and_then(|t| t.clone().into_iter().next()).map(|t| t.span())
    }

    /// An error underlining node `id` (or `fallback` for programs built without spans).
    pub fn error(&self, id: SpanId, fallback: Span, message: &str) -> syn::Error {
        match self.nodes.get(id.0 as usize) {
            Some(tokens) if !tokens.is_empty() => syn::Error::new_spanned(tokens, message),
            _ => syn::Error::new(fallback, message),
        }
    }
}

/// `#[flash_kernel(tile_m = 64, ...)]`: the declared config, and where each field was written;
/// `packed_rows`, a property of the kernel rather than of a config ([`Program::packed_rows`]).
pub struct KernelAttr {
    pub config: Config,
    pub field_spans: Vec<(&'static str, TokenStream)>,
    pub packed_rows: bool,
}

impl Parse for KernelAttr {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut config = Config::default();
        let mut field_spans = vec![];
        let mut packed_rows = false;
        let items = Punctuated::<syn::Meta, Token![,]>::parse_terminated(input)?;
        for item in items {
            let key = item.path().get_ident().map(|i| i.to_string()).unwrap_or_default();
            if key == "packed_rows" {
                let syn::Meta::Path(_) = item else {
                    return Err(syn::Error::new_spanned(item, "expected `packed_rows` (no value)"));
                };
                packed_rows = true;
                continue;
            }
            // `persistent`, `causal`, or `<flag> = true/false`.
            if let Some(flag) = config.flag_field(&key) {
                *flag = match &item {
                    syn::Meta::Path(_) => true,
                    syn::Meta::NameValue(syn::MetaNameValue {
                        value: syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Bool(b), .. }),
                        ..
                    }) => b.value,
                    other => {
                        return Err(syn::Error::new_spanned(
                            other,
                            format!("expected `{key}` or `{key} = true|false`"),
                        ))
                    }
                };
                continue;
            }
            // `warps(compute = 4, load = 1)`.
            if let (syn::Meta::List(list), "warps") = (&item, key.as_str()) {
                let roles =
                    list.parse_args_with(Punctuated::<syn::MetaNameValue, Token![,]>::parse_terminated)?;
                for role in roles {
                    let name = role.path.get_ident().map(|i| i.to_string()).unwrap_or_default();
                    let value = int_value(&role.value)?;
                    let (field, slot): (&'static str, &mut u32) = match name.as_str() {
                        "compute" => ("warps", &mut config.warps),
                        "load" => ("load_warps", &mut config.load_warps),
                        "softmax" => ("softmax_warps", &mut config.softmax_warps),
                        _ => {
                            return Err(syn::Error::new_spanned(
                                &role.path,
                                format!("unknown role `{name}` in `warps(..)`; expected `compute`, `load` or `softmax`"),
                            ))
                        }
                    };
                    *slot = value;
                    field_spans.push((field, role.to_token_stream()));
                }
                continue;
            }
            let syn::Meta::NameValue(item) = item else {
                return Err(syn::Error::new_spanned(item, "expected `name = value`"));
            };
            // `dtype = f16 | bf16`: what a generic kernel's `T` is in the declared config.
            if key == "dtype" {
                let name = match &item.value {
                    syn::Expr::Path(p) => p.path.get_ident().map(|i| i.to_string()),
                    _ => None,
                };
                config.dtype = name.as_deref().and_then(DType::from_name).ok_or_else(|| {
                    syn::Error::new_spanned(&item.value, "expected `dtype = f16` or `dtype = bf16`")
                })?;
                field_spans.push(("dtype", item.to_token_stream()));
                continue;
            }
            let value = int_value(&item.value)?;
            let Some((field, slot)) = config.number_field(&key) else {
                return Err(syn::Error::new_spanned(
                        &item.path,
                        format!("unknown kernel option `{key}`; expected one of tile_m, tile_n, head_dim, stages, warps, load_warps, softmax_warps, kv_splits, kv_ctas, persistent, causal, varlen, a_in_smem, overlap, tma, pingpong, dtype, packed_rows, or warps(compute = .., load = .., softmax = ..)"),
                ));
            };
            *slot = value;
            field_spans.push((field, item.to_token_stream()));
        }
        Ok(KernelAttr { config, field_spans, packed_rows })
    }
}

/// The kernel function: signature parsed by hand (its parameter types are DSL types such as
/// `Tensor<f16, B, H, S, D>`, whose meaning is the DSL's, not Rust's), body parsed as a Rust block.
pub struct KernelFn {
    pub vis: syn::Visibility,
    pub name: syn::Ident,
    /// The generic element type, `T` in `fn attention<T>(..)`: bound to `Config::dtype`.
    pub elem_param: Option<syn::Ident>,
    pub params: Vec<RawParam>,
    pub body: syn::Block,
    pub attrs: Vec<syn::Attribute>,
}

pub enum RawType {
    /// `Tensor<..>`, `TensorMut<..>`, or `Option<TensorMut<..>>` (`optional`).
    Tensor {
        writable: bool,
        optional: bool,
        dtype: syn::Ident,
        dims: Vec<RawDim>,
    },
    /// `SeqOffsets<B, S>`, or `Option<SeqOffsets<B, S>>` (`optional`); `SeqLens<B, S>`
    /// (`lengths`).
    Offsets {
        optional: bool,
        lengths: bool,
        batch: syn::Ident,
        seq: syn::Ident,
    },
    Scalar(syn::Ident),
}

pub enum RawDim {
    Sym(syn::Ident),
    Lit(syn::LitInt),
}

pub struct RawParam {
    pub name: syn::Ident,
    pub ty: RawType,
    /// The parameter's first and last tokens (for errors that underline it).
    pub tokens: TokenStream,
}

impl Parse for RawParam {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name: syn::Ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let mut kind: syn::Ident = input.parse()?;
        // `Option<TensorMut<..>>`: an output the caller may leave out; `Option<SeqOffsets<..>>`:
        // offsets the caller may leave out (a dense batch).
        let optional = kind == "Option" && input.peek(Token![<]);
        if optional {
            input.parse::<Token![<]>()?;
            kind = input.parse()?;
            if kind != "TensorMut" && kind != "SeqOffsets" && kind != "SeqLens" {
                return Err(syn::Error::new_spanned(
                    &kind,
                    "only outputs and sequence offsets or lengths may be optional: `Option<TensorMut<..>>`, `Option<SeqOffsets<B, S>>`, `Option<SeqLens<B, S>>`",
                ));
            }
        }
        let mut last = kind.to_token_stream();
        let ty = match kind.to_string().as_str() {
            "Tensor" | "TensorMut" => {
                input.parse::<Token![<]>()?;
                let dtype: syn::Ident = input.parse()?;
                let mut dims = vec![];
                while input.peek(Token![,]) {
                    input.parse::<Token![,]>()?;
                    if input.peek(syn::LitInt) {
                        dims.push(RawDim::Lit(input.parse()?));
                    } else {
                        dims.push(RawDim::Sym(input.parse()?));
                    }
                }
                let mut close = input.parse::<Token![>]>()?;
                if optional {
                    close = input.parse::<Token![>]>()?;
                }
                last = close.to_token_stream();
                RawType::Tensor { writable: kind == "TensorMut", optional, dtype, dims }
            }
            "SeqOffsets" | "SeqLens" => {
                input.parse::<Token![<]>()?;
                let batch: syn::Ident = input.parse()?;
                input.parse::<Token![,]>()?;
                let seq: syn::Ident = input.parse()?;
                let mut close = input.parse::<Token![>]>()?;
                if optional {
                    close = input.parse::<Token![>]>()?;
                }
                last = close.to_token_stream();
                RawType::Offsets { optional, lengths: kind == "SeqLens", batch, seq }
            }
            _ => RawType::Scalar(kind),
        };
        Ok(RawParam { tokens: quote::quote!(#name #last), name, ty })
    }
}

impl Parse for KernelFn {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(syn::Attribute::parse_outer)?;
        let vis: syn::Visibility = input.parse()?;
        input.parse::<Token![fn]>()?;
        let name: syn::Ident = input.parse()?;
        let generics: syn::Generics = input.parse()?;
        let mut elem_param = None;
        for param in &generics.params {
            match param {
                syn::GenericParam::Type(t) if t.bounds.is_empty() && elem_param.is_none() => {
                    elem_param = Some(t.ident.clone())
                }
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "a kernel takes at most one generic parameter, its element type (`fn attention<T>(..)`), with no bounds",
                    ))
                }
            }
        }
        let content;
        parenthesized!(content in input);
        let params = Punctuated::<RawParam, Token![,]>::parse_terminated(&content)?.into_iter().collect();
        let body_content;
        let brace = braced!(body_content in input);
        let stmts = body_content.call(syn::Block::parse_within)?;
        Ok(KernelFn { vis, name, elem_param, params, body: syn::Block { brace_token: brace, stmts }, attrs })
    }
}

fn int_value(e: &syn::Expr) -> syn::Result<u32> {
    match e {
        syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(i), .. }) => i.base10_parse::<u32>(),
        other => Err(syn::Error::new_spanned(other, "expected an integer")),
    }
}

const FUNCTIONS: &str = "load, stage, mma, exp2, exp, log, sqrt, tanh, fast_tanh, abs, max, min, select, mask, row_max, row_sum, col_max, col_sum, log_sum_exp, fill, zeros";

/// Converts the parsed function into a `Program`, filling `spans`.
pub struct Converter<'s> {
    pub spans: &'s mut SpanTable,
    /// The kernel's generic element type, if it has one.
    pub elem_param: Option<syn::Ident>,
}

type R<T> = syn::Result<T>;

fn error<T>(tokens: impl quote::ToTokens, msg: impl std::fmt::Display) -> R<T> {
    Err(syn::Error::new_spanned(tokens, msg))
}

impl Converter<'_> {
    /// An element type as written: `f16`, `bf16`, or the kernel's generic parameter.
    fn elem(&self, ident: &syn::Ident) -> R<ElemDecl> {
        if self.elem_param.as_ref() == Some(ident) {
            return Ok(ElemDecl::Generic(ident.to_string()));
        }
        match DType::from_name(&ident.to_string()) {
            Some(d) => Ok(ElemDecl::Fixed(d)),
            None => error(
                ident,
                format!(
                    "unsupported dtype `{ident}`: tensors are `f16`, `bf16`, or the kernel's generic element type (`fn attention<T>(q: Tensor<T, ..>)`)"
                ),
            ),
        }
    }

    pub fn program(&mut self, f: &KernelFn) -> R<Program> {
        let mut params = vec![];
        for p in &f.params {
            let span = self.spans.add(&p.tokens);
            let name = p.name.to_string();
            params.push(match &p.ty {
                RawType::Scalar(ty) => {
                    if ty != "f32" {
                        return error(ty, format!("unsupported parameter type `{ty}`: scalars are `f32`, tensors `Tensor<f16, B, H, S, D>`"));
                    }
                    ParamDecl::Scalar { name, span }
                }
                RawType::Offsets { optional, lengths, batch, seq } => ParamDecl::Offsets {
                    name,
                    batch: batch.to_string(),
                    seq: seq.to_string(),
                    optional: *optional,
                    lengths: *lengths,
                    span,
                },
                RawType::Tensor { writable, optional, dtype, dims } => {
                    let dtype = match dtype.to_string().as_str() {
                        "f32" => ElemDecl::F32,
                        "i32" => ElemDecl::I32,
                        _ => self.elem(dtype)?,
                    };
                    let shape = dims
                        .iter()
                        .map(|d| match d {
                            RawDim::Sym(i) => Ok(Dim::Sym(i.to_string())),
                            RawDim::Lit(l) => Ok(Dim::Lit(l.base10_parse()?)),
                        })
                        .collect::<R<Vec<_>>>()?;
                    ParamDecl::Tensor {
                        name,
                        dtype,
                        shape,
                        writable: *writable,
                        optional: *optional,
                        span,
                    }
                }
            });
        }
        let body = self.stmts(&f.body.stmts, None)?;
        Ok(Program { name: f.name.to_string(), params, body, packed_rows: false })
    }

    fn role(&mut self, attrs: &[syn::Attribute], outer: Option<Role>) -> R<Option<Role>> {
        let mut role = outer;
        for attr in attrs {
            if !attr.path().is_ident("role") {
                return error(attr, "only `#[role(..)]` annotations are allowed inside a kernel");
            }
            let ident: syn::Ident = attr.parse_args()?;
            let Some(r) = Role::from_name(&ident.to_string()) else {
                return error(
                    &ident,
                    format!("unknown role `{ident}`; expected one of `load`, `compute`, `softmax`"),
                );
            };
            if outer.is_some_and(|o| o != r) {
                return error(
                    attr,
                    format!(
                        "`{}` statement inside a `{}` block",
                        r.name(),
                        outer.map(Role::name).unwrap_or("")
                    ),
                );
            }
            role = Some(r);
        }
        Ok(role)
    }

    fn stmts(&mut self, stmts: &[syn::Stmt], role: Option<Role>) -> R<Vec<Stmt>> {
        let mut out = vec![];
        for s in stmts {
            self.stmt(s, role, &mut out)?;
        }
        Ok(out)
    }

    fn stmt(&mut self, s: &syn::Stmt, outer: Option<Role>, out: &mut Vec<Stmt>) -> R<()> {
        let span = self.spans.add(s);
        match s {
            syn::Stmt::Local(local) => {
                let role = self.role(&local.attrs, outer)?;
                let syn::Pat::Ident(pat) = &local.pat else {
                    return error(&local.pat, "kernel `let`s bind a single name");
                };
                let Some(init) = &local.init else {
                    return error(local, "kernel `let`s need an initializer");
                };
                out.push(Stmt {
                    kind: StmtKind::Let {
                        name: pat.ident.to_string(),
                        mutable: pat.mutability.is_some(),
                        value: self.expr(&init.expr)?,
                    },
                    role,
                    span,
                });
            }
            syn::Stmt::Expr(expr, _) => match expr {
                syn::Expr::Block(b) => {
                    let role = self.role(&b.attrs, outer)?;
                    out.extend(self.stmts(&b.block.stmts, role)?);
                }
                syn::Expr::Assign(a) => {
                    // `#[role(r)] x = ..;` attaches the attribute to the left-hand side.
                    let mut attrs = a.attrs.clone();
                    if let syn::Expr::Path(p) = &*a.left {
                        attrs.extend(p.attrs.iter().cloned());
                    }
                    let role = self.role(&attrs, outer)?;
                    let syn::Expr::Path(p) = &*a.left else {
                        return error(&a.left, "only local variables can be assigned");
                    };
                    out.push(Stmt {
                        kind: StmtKind::Assign {
                            name: path_ident(p)?.to_string(),
                            value: self.expr(&a.right)?,
                        },
                        role,
                        span,
                    });
                }
                syn::Expr::ForLoop(f) => {
                    let role = self.role(&f.attrs, outer)?;
                    out.push(self.for_loop(f, role, span)?);
                }
                syn::Expr::Call(c) if callee(c).as_deref() == Some("store") => {
                    let role = self.role(&c.attrs, outer)?;
                    if c.args.len() != 2 {
                        return error(c, "`store(tensor.tile(..), value)` takes 2 arguments");
                    }
                    let kind = match &c.args[0] {
                        // `store(t.at(i, j), value)`: element by element into an output table.
                        syn::Expr::MethodCall(m) if m.method == "at" => {
                            let syn::Expr::Path(table) = &*m.receiver else {
                                return error(&m.receiver, "`.at(..)` names a table parameter: `store(t.at(i, j), value)`");
                            };
                            StmtKind::StoreAt {
                                table: path_ident(table)?.to_string(),
                                indices: m.args.iter().map(|a| self.expr(a)).collect::<R<Vec<_>>>()?,
                                value: self.expr(&c.args[1])?,
                            }
                        }
                        target => StmtKind::Store { target: self.tile_ref(target)?, value: self.expr(&c.args[1])? },
                    };
                    out.push(Stmt { kind, role, span });
                }
                other => return error(other, "expected `let`, an assignment, a `for` loop over `tiles(..)`/`pipeline(..)`, or `store(..)`"),
            },
            other => return error(other, "items and macros are not allowed inside a kernel"),
        }
        Ok(())
    }

    fn for_loop(&mut self, f: &syn::ExprForLoop, role: Option<Role>, span: SpanId) -> R<Stmt> {
        if let syn::Expr::Range(range) = &*f.expr {
            // `for g in from..to`: a sequential loop over i32s.
            let (Some(from), Some(to), syn::RangeLimits::HalfOpen(_)) =
                (&range.start, &range.end, &range.limits)
            else {
                return error(range, "a range loop runs over `from..to`, both ends written");
            };
            let (from, to) = (self.expr(from)?, self.expr(to)?);
            let body = self.stmts(&f.body.stmts, role)?;
            return Ok(Stmt { kind: StmtKind::Loop { var: pat_ident(&f.pat)?, from, to, body }, role, span });
        }
        let syn::Expr::Call(call) = &*f.expr else {
            return error(
                &f.expr,
                "kernel loops iterate over `tiles(..)`, `pipeline(0..n)` or a range of i32s `from..to`",
            );
        };
        let kind = match callee(call).as_deref() {
            Some("tiles") => {
                let vars = match &*f.pat {
                    syn::Pat::Tuple(t) => t.elems.iter().map(pat_ident).collect::<R<Vec<_>>>()?,
                    p => vec![pat_ident(p)?],
                };
                let extents = call.args.iter().map(|a| self.extent(a)).collect::<R<Vec<_>>>()?;
                StmtKind::Tiles { vars, extents, body: self.stmts(&f.body.stmts, role)? }
            }
            Some("pipeline") => {
                let var = pat_ident(&f.pat)?;
                let [syn::Expr::Range(range)] = call.args.iter().collect::<Vec<_>>()[..] else {
                    return error(call, "`pipeline` takes one range: `pipeline(0..S / TILE_N)`");
                };
                const RANGE: &str = "`pipeline` loops run over `0..DIM / TILE`, or over part of it: `from..min(to, DIM / TILE)`";
                let (Some(start), Some(end), syn::RangeLimits::HalfOpen(_)) =
                    (&range.start, &range.end, &range.limits)
                else {
                    return error(range, RANGE);
                };
                let starts_at_zero = matches!(&**start, syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(i), .. }) if i.base10_digits() == "0");
                let from = if starts_at_zero { None } else { Some(self.expr(start)?) };
                // The end: the extent itself, or `min(to, extent)` (either order).
                let (extent, to) = match &**end {
                    syn::Expr::Call(min) if callee(min).as_deref() == Some("min") && min.args.len() == 2 => {
                        let (a, b) = (&min.args[0], &min.args[1]);
                        let is_extent = |e: &syn::Expr| matches!(e, syn::Expr::Binary(b) if matches!(b.op, syn::BinOp::Div(_)) && matches!(&*b.right, syn::Expr::Path(p) if p.path.is_ident("TILE_N") || p.path.is_ident("TILE_M")));
                        match (is_extent(a), is_extent(b)) {
                            (_, true) => (self.extent(b)?, Some(self.expr(a)?)),
                            (true, false) => (self.extent(a)?, Some(self.expr(b)?)),
                            _ => return error(end, RANGE),
                        }
                    }
                    _ => (self.extent(end)?, None),
                };
                StmtKind::Pipeline { var, from, extent, to, body: self.stmts(&f.body.stmts, role)? }
            }
            _ => {
                return error(
                    &f.expr,
                    "kernel loops iterate over `tiles(..)`, `pipeline(0..n)` or a range of i32s `from..to`",
                )
            }
        };
        Ok(Stmt { kind, role, span })
    }

    fn extent(&mut self, e: &syn::Expr) -> R<Extent> {
        let span = self.spans.add(e);
        match e {
            syn::Expr::Path(p) => Ok(Extent { dim: path_ident(p)?.to_string(), per_tile: None, span }),
            syn::Expr::Binary(b) if matches!(b.op, syn::BinOp::Div(_)) => {
                let (syn::Expr::Path(dim), syn::Expr::Path(tile)) = (&*b.left, &*b.right) else {
                    return error(e, "extents are `DIM` or `DIM / TILE_M` / `DIM / TILE_N`");
                };
                let per_tile = match path_ident(tile)?.to_string().as_str() {
                    "TILE_M" => TileConst::M,
                    "TILE_N" => TileConst::N,
                    _ => return error(tile, "extents divide by `TILE_M` or `TILE_N`"),
                };
                Ok(Extent { dim: path_ident(dim)?.to_string(), per_tile: Some(per_tile), span })
            }
            _ => error(e, "extents are `DIM` or `DIM / TILE_M` / `DIM / TILE_N`"),
        }
    }

    fn tile_ref(&mut self, e: &syn::Expr) -> R<TileRef> {
        let span = self.spans.add(e);
        let syn::Expr::MethodCall(m) = e else {
            return error(e, "expected a tile such as `q.tile(b, h, qt)`");
        };
        if m.method != "tile" {
            return error(&m.method, "expected a tile such as `q.tile(b, h, qt)`");
        }
        let syn::Expr::Path(tensor) = &*m.receiver else {
            return error(&m.receiver, "`.tile(..)` applies to a tensor parameter");
        };
        let mut indices = vec![];
        let mut groups = vec![];
        let mut pages = None;
        for (i, a) in m.args.iter().enumerate() {
            // `block_table[b]`: the pages of sequence `b` (a paged tensor's batch index).
            if let (0, syn::Expr::Index(ix)) = (i, a) {
                let syn::Expr::Path(table) = &*ix.expr else {
                    return error(&ix.expr, "a page table is a tensor parameter: `block_table[b]`");
                };
                pages = Some(path_ident(table)?.to_string());
                let (index, group) = tile_index(&ix.index)?;
                if group.is_some() {
                    return error(&ix.index, "a page table's row is a sequence index: `block_table[b]`");
                }
                indices.push(index);
                groups.push(None);
                continue;
            }
            let (index, group) = tile_index(a)?;
            indices.push(index);
            groups.push(group);
        }
        if groups.iter().all(Option::is_none) {
            groups.clear();
        }
        Ok(TileRef { tensor: path_ident(tensor)?.to_string(), indices, groups, pages, span })
    }

    fn shape(&mut self, e: &syn::Expr) -> R<Vec<ShapeAxis>> {
        let syn::Expr::Array(a) = e else {
            return error(e, "a tile shape is written `[TILE_M]` or `[TILE_M, D]`");
        };
        a.elems
            .iter()
            .map(|el| {
                let syn::Expr::Path(p) = el else {
                    return error(el, "shape axes are `TILE_M`, `TILE_N` or the head dim");
                };
                let name = path_ident(p)?.to_string();
                Ok(match name.as_str() {
                    "TILE_M" => ShapeAxis::Tile(TileConst::M),
                    "TILE_N" => ShapeAxis::Tile(TileConst::N),
                    _ => ShapeAxis::Dim(name),
                })
            })
            .collect()
    }

    fn expr(&mut self, e: &syn::Expr) -> R<Expr> {
        let span = self.spans.add(e);
        let boxed = |c: &mut Self, e: &syn::Expr| c.expr(e).map(Box::new);
        let kind = match e {
            syn::Expr::Paren(p) => return self.expr(&p.expr),
            syn::Expr::Path(p) => {
                let name = path_ident(p)?.to_string();
                match name.as_str() {
                    "NEG_INF" => ExprKind::Const(NamedConst::NegInf),
                    "LOG2_E" => ExprKind::Const(NamedConst::Log2E),
                    _ => ExprKind::Var(name),
                }
            }
            syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(i), .. }) => ExprKind::Int(lit_int(i)?),
            syn::Expr::Lit(l) => ExprKind::Lit(lit_f32(&l.lit)?),
            syn::Expr::Unary(syn::ExprUnary { op: syn::UnOp::Neg(_), expr, .. }) => match &**expr {
                syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(i), .. }) => ExprKind::Int(-lit_int(i)?),
                syn::Expr::Lit(l) => ExprKind::Lit(-lit_f32(&l.lit)?),
                other => ExprKind::Unary(UnaryOp::Neg, boxed(self, other)?),
            },
            syn::Expr::Unary(syn::ExprUnary { op: syn::UnOp::Not(_), expr, .. }) => {
                ExprKind::Unary(UnaryOp::Not, boxed(self, expr)?)
            }
            syn::Expr::Binary(b) => {
                let op =
                    match b.op {
                        syn::BinOp::Add(_) => BinOp::Add,
                        syn::BinOp::Sub(_) => BinOp::Sub,
                        syn::BinOp::Mul(_) => BinOp::Mul,
                        syn::BinOp::Div(_) => BinOp::Div,
                        syn::BinOp::Rem(_) => BinOp::Rem,
                        syn::BinOp::Lt(_) => BinOp::Lt,
                        syn::BinOp::Le(_) => BinOp::Le,
                        syn::BinOp::Gt(_) => BinOp::Gt,
                        syn::BinOp::Ge(_) => BinOp::Ge,
                        syn::BinOp::Eq(_) => BinOp::Eq,
                        syn::BinOp::Ne(_) => BinOp::Ne,
                        syn::BinOp::And(_) => BinOp::And,
                        syn::BinOp::Or(_) => BinOp::Or,
                        _ => return error(
                            b.op,
                            "kernels use the operators + - * / %, the comparisons < <= > >= == != and && ||",
                        ),
                    };
                ExprKind::Binary(op, boxed(self, &b.left)?, boxed(self, &b.right)?)
            }
            syn::Expr::MethodCall(m) if m.method == "at" => {
                // `doc.at(b, s.index(S))`: elements of an input table.
                let table = match &*m.receiver {
                    syn::Expr::Path(p) => path_ident(p)?.to_string(),
                    other => return error(other, "`.at(..)` reads a table parameter: `doc.at(b, i)`"),
                };
                let indices = m.args.iter().map(|a| self.expr(a)).collect::<R<Vec<_>>>()?;
                ExprKind::At { table, indices }
            }
            syn::Expr::MethodCall(m) if m.method == "index" => {
                // `s.index(S)`: positions along axis `S`.
                let dim = match m.args.iter().collect::<Vec<_>>()[..] {
                    [syn::Expr::Path(p)] => path_ident(p)?.to_string(),
                    _ => return error(m, "`.index(..)` takes one axis name, e.g. `s.index(S)`"),
                };
                ExprKind::Position { tile: boxed(self, &m.receiver)?, dim }
            }
            syn::Expr::MethodCall(m) => {
                if !m.args.is_empty() {
                    return error(m, format!("`.{}()` takes no arguments", m.method));
                }
                match m.method.to_string().as_str() {
                    "t" => ExprKind::Transpose(boxed(self, &m.receiver)?),
                    "to_f16" => ExprKind::To(boxed(self, &m.receiver)?, ElemDecl::Fixed(DType::F16)),
                    "to_bf16" => ExprKind::To(boxed(self, &m.receiver)?, ElemDecl::Fixed(DType::Bf16)),
                    "to" => {
                        let target = match m.turbofish.as_ref().map(|t| t.args.iter().collect::<Vec<_>>()) {
                            Some(args) => match args[..] {
                                [syn::GenericArgument::Type(syn::Type::Path(p))] if p.path.is_ident("f32") => {
                                    ElemDecl::F32
                                }
                                [syn::GenericArgument::Type(syn::Type::Path(p))]
                                    if p.path.get_ident().is_some() =>
                                {
                                    self.elem(p.path.get_ident().expect("checked"))?
                                }
                                _ => return error(m, "`.to::<T>()` takes one element type"),
                            },
                            None => {
                                return error(m, "`.to()` needs its target: `.to::<T>()`, `.to::<f16>()`")
                            }
                        };
                        ExprKind::To(boxed(self, &m.receiver)?, target)
                    }
                    "tile" => {
                        return error(
                            m,
                            "a tile must be loaded first: `load(q.tile(..))` or `stage(k.tile(..))`",
                        )
                    }
                    other => {
                        return error(
                            &m.method,
                            format!(
                            "unknown method `.{other}()`; expected `.t()`, `.to::<T>()`, `.index(AXIS)` or `.at(..)`"
                        ),
                        )
                    }
                }
            }
            syn::Expr::Call(c) => {
                let Some(name) = callee(c) else {
                    return error(&c.func, "expected a function name");
                };
                let args: Vec<&syn::Expr> = c.args.iter().collect();
                let arity = |n: &[usize]| -> R<()> {
                    if n.contains(&args.len()) {
                        Ok(())
                    } else {
                        error(
                            c,
                            format!(
                                "`{name}` takes {} argument(s), found {}",
                                n.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" or "),
                                args.len()
                            ),
                        )
                    }
                };
                match name.as_str() {
                    "load" => {
                        arity(&[1])?;
                        ExprKind::Load(self.tile_ref(args[0])?)
                    }
                    "stage" => {
                        arity(&[1])?;
                        ExprKind::Stage(self.tile_ref(args[0])?)
                    }
                    "mma" => {
                        arity(&[2, 3])?;
                        ExprKind::Mma {
                            a: boxed(self, args[0])?,
                            b: boxed(self, args[1])?,
                            acc: match args.get(2) {
                                Some(a) => Some(boxed(self, a)?),
                                None => None,
                            },
                        }
                    }
                    "exp2" => {
                        arity(&[1])?;
                        ExprKind::Exp2(boxed(self, args[0])?)
                    }
                    "log_sum_exp" => {
                        arity(&[2])?;
                        ExprKind::LogSumExp(boxed(self, args[0])?, boxed(self, args[1])?)
                    }
                    "row_max" | "row_sum" => {
                        arity(&[1])?;
                        let op = if name == "row_max" { ReduceOp::Max } else { ReduceOp::Sum };
                        ExprKind::RowReduce(op, boxed(self, args[0])?)
                    }
                    "col_max" | "col_sum" => {
                        arity(&[1])?;
                        let op = if name == "col_max" { ReduceOp::Max } else { ReduceOp::Sum };
                        ExprKind::ColReduce(op, boxed(self, args[0])?)
                    }
                    "max" | "min" => {
                        arity(&[2])?;
                        let op = if name == "max" { BinOp::Max } else { BinOp::Min };
                        ExprKind::Binary(op, boxed(self, args[0])?, boxed(self, args[1])?)
                    }
                    "select" => {
                        arity(&[3])?;
                        ExprKind::Select {
                            cond: boxed(self, args[0])?,
                            then: boxed(self, args[1])?,
                            otherwise: boxed(self, args[2])?,
                        }
                    }
                    "mask" => {
                        arity(&[2])?;
                        ExprKind::Mask { scores: boxed(self, args[0])?, keep: boxed(self, args[1])? }
                    }
                    f if UnaryOp::function(f).is_some() => {
                        arity(&[1])?;
                        ExprKind::Unary(UnaryOp::function(f).expect("checked"), boxed(self, args[0])?)
                    }
                    "fill" => {
                        arity(&[2])?;
                        ExprKind::Fill { shape: self.shape(args[0])?, value: boxed(self, args[1])? }
                    }
                    "zeros" => {
                        arity(&[1])?;
                        let zero_span = self.spans.add(c);
                        ExprKind::Fill {
                            shape: self.shape(args[0])?,
                            value: Box::new(Expr { kind: ExprKind::Lit(0.0), span: zero_span }),
                        }
                    }
                    "store" => return error(c, "`store(..)` is a statement, not a value"),
                    _ => {
                        return error(
                            &c.func,
                            format!("unknown function `{name}`; kernels can call {FUNCTIONS}"),
                        )
                    }
                }
            }
            other => return error(other, "unsupported expression in a kernel"),
        };
        Ok(Expr { kind, span })
    }
}

fn callee(c: &syn::ExprCall) -> Option<String> {
    match &*c.func {
        syn::Expr::Path(p) => p.path.get_ident().map(|i| i.to_string()),
        _ => None,
    }
}

/// A tile index: a loop variable `h`, or `h / (H / HKV)` (the K/V head of query head `h` under
/// grouped-query attention).
fn tile_index(e: &syn::Expr) -> R<(String, Option<(String, String)>)> {
    const HINT: &str = "tile indices are loop variables, or `h / (H / HKV)` for grouped K/V heads";
    let name = |e: &syn::Expr| match e {
        syn::Expr::Path(p) => Ok(path_ident(p)?.to_string()),
        other => error(other, HINT),
    };
    match e {
        syn::Expr::Binary(b) if matches!(b.op, syn::BinOp::Div(_)) => {
            let ratio = match &*b.right {
                syn::Expr::Paren(p) => &*p.expr,
                other => other,
            };
            match ratio {
                syn::Expr::Binary(r) if matches!(r.op, syn::BinOp::Div(_)) => {
                    Ok((name(&b.left)?, Some((name(&r.left)?, name(&r.right)?))))
                }
                other => error(other, HINT),
            }
        }
        other => Ok((name(other)?, None)),
    }
}

fn path_ident(p: &syn::ExprPath) -> R<&syn::Ident> {
    p.path.get_ident().ok_or_else(|| syn::Error::new_spanned(p, "expected a plain name"))
}

fn pat_ident(p: &syn::Pat) -> R<String> {
    match p {
        syn::Pat::Ident(i) => Ok(i.ident.to_string()),
        other => error(other, "expected a loop variable name"),
    }
}

fn lit_int(i: &syn::LitInt) -> R<i64> {
    match i.base10_parse::<i64>() {
        Ok(v) if i32::try_from(v).is_ok() || i32::try_from(-v).is_ok() => Ok(v),
        _ => error(i, "this integer is out of the range of i32"),
    }
}

fn lit_f32(l: &syn::Lit) -> R<f32> {
    let value = match l {
        syn::Lit::Float(f) => f.base10_parse::<f32>()?,
        syn::Lit::Int(i) => i.base10_parse::<i64>()? as f32,
        other => return error(other, "expected a number"),
    };
    // Constants are f32 in the kernel (and f32 literals in the expansion, which must be finite).
    if !value.is_finite() {
        return error(l, "this constant is out of the range of f32 (at most about 3.4e38)");
    }
    Ok(value)
}
