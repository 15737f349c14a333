//! Code generation: the kernel type the macro expands to, with its `Program` rebuilt at run
//! time (so any `Config` can be lowered) and a typed launcher in parameter order.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use flashcore_ir::source::*;
use flashcore_ir::Config;

use crate::parse::{KernelFn, RawType};

fn span_id(s: SpanId) -> TokenStream {
    let n = s.0;
    quote!(::flashcore::ir::source::SpanId(#n))
}

fn string(s: &str) -> TokenStream {
    quote!(::std::string::String::from(#s))
}

fn strings(v: &[String]) -> TokenStream {
    let items = v.iter().map(|s| string(s));
    quote!(::std::vec![#(#items),*])
}

fn tile_const(t: TileConst) -> TokenStream {
    match t {
        TileConst::M => quote!(::flashcore::ir::source::TileConst::M),
        TileConst::N => quote!(::flashcore::ir::source::TileConst::N),
    }
}

fn role(r: Option<Role>) -> TokenStream {
    match r {
        None => quote!(::std::option::Option::None),
        Some(Role::Load) => quote!(::std::option::Option::Some(::flashcore::ir::source::Role::Load)),
        Some(Role::Compute) => quote!(::std::option::Option::Some(::flashcore::ir::source::Role::Compute)),
        Some(Role::Softmax) => quote!(::std::option::Option::Some(::flashcore::ir::source::Role::Softmax)),
    }
}

fn extent(e: &Extent) -> TokenStream {
    let dim = string(&e.dim);
    let per_tile = match e.per_tile {
        None => quote!(::std::option::Option::None),
        Some(t) => {
            let t = tile_const(t);
            quote!(::std::option::Option::Some(#t))
        }
    };
    let span = span_id(e.span);
    quote!(::flashcore::ir::source::Extent { dim: #dim, per_tile: #per_tile, span: #span })
}

fn tile_ref(t: &TileRef) -> TokenStream {
    let tensor = string(&t.tensor);
    let indices = strings(&t.indices);
    let groups = t.groups.iter().map(|g| match g {
        None => quote!(::std::option::Option::None),
        Some((of, to)) => {
            let (of, to) = (string(of), string(to));
            quote!(::std::option::Option::Some((#of, #to)))
        }
    });
    let pages = match &t.pages {
        None => quote!(::std::option::Option::None),
        Some(table) => {
            let table = string(table);
            quote!(::std::option::Option::Some(#table))
        }
    };
    let span = span_id(t.span);
    quote!(::flashcore::ir::source::TileRef { tensor: #tensor, indices: #indices, groups: ::std::vec![#(#groups),*], pages: #pages, span: #span })
}

fn reduce_op(op: ReduceOp) -> TokenStream {
    let p = quote!(::flashcore::ir::source);
    match op {
        ReduceOp::Max => quote!(#p::ReduceOp::Max),
        ReduceOp::Sum => quote!(#p::ReduceOp::Sum),
    }
}

fn expr(e: &Expr) -> TokenStream {
    let span = span_id(e.span);
    let b = |e: &Expr| {
        let t = expr(e);
        quote!(::std::boxed::Box::new(#t))
    };
    let p = quote!(::flashcore::ir::source);
    let kind = match &e.kind {
        ExprKind::Var(v) => {
            let v = string(v);
            quote!(#p::ExprKind::Var(#v))
        }
        ExprKind::Lit(x) => quote!(#p::ExprKind::Lit(#x)),
        ExprKind::Int(x) => quote!(#p::ExprKind::Int(#x)),
        ExprKind::Unary(op, x) => {
            let op = format_ident!("{}", format!("{op:?}"));
            let x = b(x);
            quote!(#p::ExprKind::Unary(#p::UnaryOp::#op, #x))
        }
        ExprKind::Select { cond, then, otherwise } => {
            let (c, t, o) = (b(cond), b(then), b(otherwise));
            quote!(#p::ExprKind::Select { cond: #c, then: #t, otherwise: #o })
        }
        ExprKind::Position { tile, dim } => {
            let (t, d) = (b(tile), string(dim));
            quote!(#p::ExprKind::Position { tile: #t, dim: #d })
        }
        ExprKind::At { table, indices } => {
            let t = string(table);
            let indices: Vec<TokenStream> = indices.iter().map(expr).collect();
            quote!(#p::ExprKind::At { table: #t, indices: ::std::vec![#(#indices),*] })
        }
        ExprKind::Mask { scores, keep } => {
            let (s, k) = (b(scores), b(keep));
            quote!(#p::ExprKind::Mask { scores: #s, keep: #k })
        }
        ExprKind::Const(NamedConst::NegInf) => quote!(#p::ExprKind::Const(#p::NamedConst::NegInf)),
        ExprKind::Const(NamedConst::Log2E) => quote!(#p::ExprKind::Const(#p::NamedConst::Log2E)),
        ExprKind::Load(t) => {
            let t = tile_ref(t);
            quote!(#p::ExprKind::Load(#t))
        }
        ExprKind::Stage(t) => {
            let t = tile_ref(t);
            quote!(#p::ExprKind::Stage(#t))
        }
        ExprKind::Transpose(x) => {
            let x = b(x);
            quote!(#p::ExprKind::Transpose(#x))
        }
        ExprKind::To(x, target) => {
            let (x, target) = (b(x), elem_decl(target));
            quote!(#p::ExprKind::To(#x, #target))
        }
        ExprKind::LogSumExp(m, l) => {
            let (m, l) = (b(m), b(l));
            quote!(#p::ExprKind::LogSumExp(#m, #l))
        }
        ExprKind::Mma { a, b: bb, acc } => {
            let (a, bb) = (b(a), b(bb));
            let acc = match acc {
                None => quote!(::std::option::Option::None),
                Some(c) => {
                    let c = b(c);
                    quote!(::std::option::Option::Some(#c))
                }
            };
            quote!(#p::ExprKind::Mma { a: #a, b: #bb, acc: #acc })
        }
        ExprKind::Exp2(x) => {
            let x = b(x);
            quote!(#p::ExprKind::Exp2(#x))
        }
        ExprKind::RowReduce(op, x) => {
            let (op, x) = (reduce_op(*op), b(x));
            quote!(#p::ExprKind::RowReduce(#op, #x))
        }
        ExprKind::ColReduce(op, x) => {
            let (op, x) = (reduce_op(*op), b(x));
            quote!(#p::ExprKind::ColReduce(#op, #x))
        }
        ExprKind::Binary(op, l, r) => {
            let op = format_ident!("{}", format!("{op:?}"));
            let op = quote!(#p::BinOp::#op);
            let (l, r) = (b(l), b(r));
            quote!(#p::ExprKind::Binary(#op, #l, #r))
        }
        ExprKind::Fill { shape, value } => {
            let axes = shape.iter().map(|a| match a {
                ShapeAxis::Tile(t) => {
                    let t = tile_const(*t);
                    quote!(#p::ShapeAxis::Tile(#t))
                }
                ShapeAxis::Dim(d) => {
                    let d = string(d);
                    quote!(#p::ShapeAxis::Dim(#d))
                }
            });
            let value = b(value);
            quote!(#p::ExprKind::Fill { shape: ::std::vec![#(#axes),*], value: #value })
        }
    };
    quote!(#p::Expr { kind: #kind, span: #span })
}

fn stmts(s: &[Stmt]) -> TokenStream {
    let items = s.iter().map(stmt);
    quote!(::std::vec![#(#items),*])
}

fn stmt(s: &Stmt) -> TokenStream {
    let p = quote!(::flashcore::ir::source);
    let kind = match &s.kind {
        StmtKind::Let { name, mutable, value } => {
            let (name, value) = (string(name), expr(value));
            quote!(#p::StmtKind::Let { name: #name, mutable: #mutable, value: #value })
        }
        StmtKind::Assign { name, value } => {
            let (name, value) = (string(name), expr(value));
            quote!(#p::StmtKind::Assign { name: #name, value: #value })
        }
        StmtKind::Tiles { vars, extents, body } => {
            let vars = strings(vars);
            let extents = extents.iter().map(extent);
            let body = stmts(body);
            quote!(#p::StmtKind::Tiles { vars: #vars, extents: ::std::vec![#(#extents),*], body: #body })
        }
        StmtKind::Pipeline { var, from, extent: e, to, body } => {
            let (var, e, body) = (string(var), extent(e), stmts(body));
            let bound = |b: &Option<Expr>| match b {
                Some(b) => {
                    let b = expr(b);
                    quote!(::std::option::Option::Some(#b))
                }
                None => quote!(::std::option::Option::None),
            };
            let (from, to) = (bound(from), bound(to));
            quote!(#p::StmtKind::Pipeline { var: #var, from: #from, extent: #e, to: #to, body: #body })
        }
        StmtKind::Loop { var, from, to, body } => {
            let (var, from, to, body) = (string(var), expr(from), expr(to), stmts(body));
            quote!(#p::StmtKind::Loop { var: #var, from: #from, to: #to, body: #body })
        }
        StmtKind::Store { target, value } => {
            let (target, value) = (tile_ref(target), expr(value));
            quote!(#p::StmtKind::Store { target: #target, value: #value })
        }
        StmtKind::StoreAt { table, indices, value } => {
            let (table, value) = (string(table), expr(value));
            let indices: Vec<TokenStream> = indices.iter().map(expr).collect();
            quote!(#p::StmtKind::StoreAt { table: #table, indices: ::std::vec![#(#indices),*], value: #value })
        }
    };
    let (role, span) = (role(s.role), span_id(s.span));
    quote!(#p::Stmt { kind: #kind, role: #role, span: #span })
}

fn program(prog: &Program) -> TokenStream {
    let p = quote!(::flashcore::ir::source);
    let name = string(&prog.name);
    let params = prog.params.iter().map(|param| match param {
        ParamDecl::Scalar { name, span } => {
            let (name, span) = (string(name), span_id(*span));
            quote!(#p::ParamDecl::Scalar { name: #name, span: #span })
        }
        ParamDecl::Offsets { name, batch, seq, optional, lengths, span } => {
            let (name, batch, seq, span) = (string(name), string(batch), string(seq), span_id(*span));
            quote!(#p::ParamDecl::Offsets { name: #name, batch: #batch, seq: #seq, optional: #optional, lengths: #lengths, span: #span })
        }
        ParamDecl::Tensor { name, dtype, shape, writable, optional, span } => {
            let dtype = elem_decl(dtype);
            let (name, span) = (string(name), span_id(*span));
            let dims = shape.iter().map(|d| match d {
                Dim::Sym(s) => {
                    let s = string(s);
                    quote!(#p::Dim::Sym(#s))
                }
                Dim::Lit(n) => quote!(#p::Dim::Lit(#n)),
            });
            quote!(#p::ParamDecl::Tensor {
                name: #name,
                dtype: #dtype,
                shape: ::std::vec![#(#dims),*],
                writable: #writable,
                optional: #optional,
                span: #span,
            })
        }
    });
    let body = stmts(&prog.body);
    let packed_rows = prog.packed_rows;
    quote!(#p::Program { name: #name, params: ::std::vec![#(#params),*], body: #body, packed_rows: #packed_rows })
}

fn dtype(d: DType) -> TokenStream {
    match d {
        DType::F16 => quote!(::flashcore::ir::source::DType::F16),
        DType::Bf16 => quote!(::flashcore::ir::source::DType::Bf16),
    }
}

fn elem_decl(e: &ElemDecl) -> TokenStream {
    let p = quote!(::flashcore::ir::source);
    match e {
        ElemDecl::Fixed(d) => {
            let d = dtype(*d);
            quote!(#p::ElemDecl::Fixed(#d))
        }
        ElemDecl::Generic(name) => {
            let name = string(name);
            quote!(#p::ElemDecl::Generic(#name))
        }
        ElemDecl::F32 => quote!(#p::ElemDecl::F32),
        ElemDecl::I32 => quote!(#p::ElemDecl::I32),
    }
}

fn config(c: &Config) -> TokenStream {
    let Config {
        tile_m,
        tile_n,
        head_dim,
        stages,
        warps,
        persistent,
        load_warps,
        softmax_warps,
        causal,
        dtype: elem,
        varlen,
        a_in_smem,
        kv_splits,
        kv_ctas,
        overlap,
        tma,
        pingpong,
        target,
    } = *c;
    let elem = dtype(elem);
    let target = match target {
        flashcore_ir::Target::Auto => quote!(::flashcore::Target::Auto),
        flashcore_ir::Target::Sm89 => quote!(::flashcore::Target::Sm89),
        flashcore_ir::Target::Sm90a => quote!(::flashcore::Target::Sm90a),
    };
    quote!(::flashcore::Config {
        tile_m: #tile_m,
        tile_n: #tile_n,
        head_dim: #head_dim,
        stages: #stages,
        warps: #warps,
        persistent: #persistent,
        load_warps: #load_warps,
        softmax_warps: #softmax_warps,
        causal: #causal,
        dtype: #elem,
        varlen: #varlen,
        a_in_smem: #a_in_smem,
        kv_splits: #kv_splits,
        kv_ctas: #kv_ctas,
        overlap: #overlap,
        tma: #tma,
        pingpong: #pingpong,
        target: #target,
    })
}

/// The expansion of a checked kernel.
pub fn kernel(f: &KernelFn, prog: &Program, cfg: &Config) -> TokenStream {
    let vis = &f.vis;
    let name = &f.name;
    let doc_attrs: Vec<&syn::Attribute> = f.attrs.iter().filter(|a| a.path().is_ident("doc")).collect();
    let program = program(prog);
    let config = config(cfg);
    let kernel_name = name.to_string();

    let mut launch_params = vec![];
    let mut launch_args = vec![];
    // Whether sequence offsets were passed: they select the config's variable-length variant.
    let mut offsets_given = vec![];
    // Tensors of the generic element type take `DeviceTensor<T>` for any element type `T`
    // (checked against the config's dtype at launch); fixed ones their own type.
    let elem_type = |dtype: &syn::Ident| match &f.elem_param {
        Some(t) if t == dtype => quote!(#t),
        _ if dtype == "f32" => quote!(f32),
        _ if dtype == "i32" => quote!(i32),
        _ => quote!(::flashcore::runtime::#dtype),
    };
    for p in &f.params {
        let ident = &p.name;
        match &p.ty {
            RawType::Tensor { writable: false, dtype, .. } => {
                let t = elem_type(dtype);
                launch_params.push(quote!(#ident: &::flashcore::runtime::DeviceTensor<#t>));
                launch_args.push(quote!(::flashcore::Arg::Tensor(#ident)));
            }
            RawType::Tensor { writable: true, optional: false, dtype, .. } => {
                let t = elem_type(dtype);
                launch_params.push(quote!(#ident: &mut ::flashcore::runtime::DeviceTensor<#t>));
                launch_args.push(quote!(::flashcore::Arg::TensorMut(#ident)));
            }
            RawType::Tensor { writable: true, optional: true, dtype, .. } => {
                let t = elem_type(dtype);
                launch_params
                    .push(quote!(#ident: ::std::option::Option<&mut ::flashcore::runtime::DeviceTensor<#t>>));
                launch_args.push(quote!(match #ident {
                    ::std::option::Option::Some(t) => ::flashcore::Arg::TensorMut(t),
                    ::std::option::Option::None => ::flashcore::Arg::Absent,
                }));
            }
            // Sequence lengths are an i32 tensor on the device (one per sequence).
            RawType::Offsets { lengths: true, optional: false, .. } => {
                launch_params.push(quote!(#ident: &::flashcore::runtime::DeviceTensor<i32>));
                launch_args.push(quote!(::flashcore::Arg::Tensor(#ident)));
            }
            RawType::Offsets { lengths: true, optional: true, .. } => {
                launch_params
                    .push(quote!(#ident: ::std::option::Option<&::flashcore::runtime::DeviceTensor<i32>>));
                launch_args.push(quote!(match #ident {
                    ::std::option::Option::Some(t) => ::flashcore::Arg::Tensor(t),
                    ::std::option::Option::None => ::flashcore::Arg::Absent,
                }));
            }
            RawType::Offsets { optional: false, .. } => {
                offsets_given.push(quote!(true));
                launch_params.push(quote!(#ident: &::flashcore::DeviceSeqOffsets));
                launch_args.push(quote!(::flashcore::Arg::Offsets(#ident)));
            }
            RawType::Offsets { optional: true, .. } => {
                offsets_given.push(quote!(#ident.is_some()));
                launch_params.push(quote!(#ident: ::std::option::Option<&::flashcore::DeviceSeqOffsets>));
                launch_args.push(quote!(match #ident {
                    ::std::option::Option::Some(o) => ::flashcore::Arg::Offsets(o),
                    ::std::option::Option::None => ::flashcore::Arg::Absent,
                }));
            }
            RawType::Scalar(_) => {
                launch_params.push(quote!(#ident: f32));
                launch_args.push(quote!(::flashcore::Arg::F32(#ident)));
            }
        }
    }
    let cache = format_ident!("__FLASHCORE_CACHE_{}", kernel_name.to_uppercase());
    // The doc comment's first sentence, for kernel lists.
    let doc: Vec<String> = doc_attrs
        .iter()
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(syn::MetaNameValue {
                value: syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }),
                ..
            }) => Some(s.value().trim().to_string()),
            _ => None,
        })
        .collect();
    let paragraph = doc.iter().take_while(|l| !l.is_empty()).cloned().collect::<Vec<_>>().join(" ");
    let summary = match paragraph.find(". ") {
        Some(end) => &paragraph[..=end],
        None => paragraph.as_str(),
    };
    let generics = match &f.elem_param {
        Some(t) => quote!(<#t: ::flashcore::runtime::Element>),
        None => quote!(),
    };

    quote! {
        #(#doc_attrs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #name;

        #[allow(non_upper_case_globals)]
        static #cache: ::flashcore::KernelCache = ::flashcore::KernelCache::new();

        // Found by name in `flashcore::registry` (and so by the `flashcore` command).
        ::flashcore::__inventory::submit! {
            ::flashcore::registry::KernelEntry {
                name: #kernel_name,
                summary: #summary,
                module: ::std::module_path!(),
                config: #config,
                program: #name::program,
            }
        }

        impl #name {
            /// The kernel's name (also its PTX `.entry`).
            pub const NAME: &'static str = #kernel_name;

            /// The configuration declared in `#[flash_kernel(..)]`, checked at compile time.
            pub const CONFIG: ::flashcore::Config = #config;

            /// The kernel as written, for lowering with any `Config`.
            pub fn program() -> ::flashcore::ir::source::Program {
                #program
            }

            /// The tile-level IR for `config`, after every pass (what the code generator sees).
            pub fn ir(config: &::flashcore::Config) -> ::std::result::Result<::flashcore::ir::Kernel, ::flashcore::Error> {
                ::std::result::Result::Ok(Self::compile(config)?.kernel.clone())
            }

            /// The IR after `stage`: `"lower"` or a pass name (`"pipeline"`, `"persist"`).
            pub fn ir_after(config: &::flashcore::Config, stage: &str) -> ::std::result::Result<::flashcore::ir::Kernel, ::flashcore::Error> {
                ::flashcore::ir_after(&Self::program(), config, stage)
            }

            /// The PTX for `config`.
            pub fn ptx(config: &::flashcore::Config) -> ::std::result::Result<::std::string::String, ::flashcore::Error> {
                ::std::result::Result::Ok(Self::compile(config)?.ptx.text.clone())
            }

            /// Lowers and generates code for `config` (cached per config).
            pub fn compile(config: &::flashcore::Config) -> ::std::result::Result<::std::sync::Arc<::flashcore::CompiledKernel>, ::flashcore::Error> {
                #cache.get_or_compile(config, Self::program)
            }

            /// Enqueues the kernel on `device` without waiting (see `flashcore::launch_async`).
            /// Sequence offsets, when passed, select `config`'s variable-length variant
            /// (`Config::varlen`); a `Target::Auto` config runs the device's target
            /// (`flashcore::KernelCache::get_or_compile_on`).
            pub fn launch_async #generics (
                device: &::flashcore::runtime::Device,
                config: &::flashcore::Config,
                #(#launch_params),*
            ) -> ::std::result::Result<(), ::flashcore::Error> {
                let config = &::flashcore::Config { varlen: config.varlen #(|| #offsets_given)*, ..*config };
                let kernel = #cache.get_or_compile_on(device.info().compute_capability, config, Self::program)?;
                ::flashcore::launch_async(device, &kernel, &mut [#(#launch_args),*])
            }

            /// Runs the kernel on `device` with the tuning table's config for this GPU and the
            /// arguments' shape (`flashcore::launch_tuned`; with `FLASHCORE_AUTOTUNE=1` a key
            /// this GPU has no timed entry for is tuned first) and waits for it. `base` fixes
            /// what tuning keeps: dtype, head dim, causal, target. Returns the config and where
            /// it came from.
            pub fn launch_tuned #generics (
                device: &::flashcore::runtime::Device,
                base: &::flashcore::Config,
                #(#launch_params),*
            ) -> ::std::result::Result<(::flashcore::Config, ::flashcore::tuning::Source), ::flashcore::Error> {
                let base = &::flashcore::Config { varlen: base.varlen #(|| #offsets_given)*, ..*base };
                ::flashcore::launch_tuned(device, Self::NAME, Self::program, &#cache, base, &mut [#(#launch_args),*])
            }

            /// Runs the kernel on `device` and waits for it (at most `device.launch_timeout()`),
            /// arguments in the order of the kernel's parameters. Sequence offsets, when passed,
            /// select `config`'s variable-length variant (`Config::varlen`); a `Target::Auto`
            /// config runs the device's target.
            pub fn launch #generics (
                device: &::flashcore::runtime::Device,
                config: &::flashcore::Config,
                #(#launch_params),*
            ) -> ::std::result::Result<(), ::flashcore::Error> {
                let config = &::flashcore::Config { varlen: config.varlen #(|| #offsets_given)*, ..*config };
                let kernel = #cache.get_or_compile_on(device.info().compute_capability, config, Self::program)?;
                ::flashcore::launch(device, &kernel, &mut [#(#launch_args),*])
            }
        }
    }
}
