//! `#[flash_kernel]`: parses a kernel written as tiled Rust-like pseudocode, checks it (shapes,
//! roles, mma operands, the declared config) at expansion time with errors at the user's spans,
//! and expands it into a kernel type with `program`, `ir`, `ptx`, `compile` and a typed `launch`.

mod error;
#[cfg(test)]
mod fuzz;
mod generate;
mod parse;

use proc_macro::TokenStream;

/// Declares a FlashCore kernel. See the crate `flashcore` for the DSL.
#[proc_macro_attribute]
pub fn flash_kernel(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into()).into()
}

fn expand(attr: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    let f: parse::KernelFn = match syn::parse2(item) {
        Ok(f) => f,
        Err(e) => return error::fallback(e, None),
    };
    let attr: parse::KernelAttr = match syn::parse2(attr) {
        Ok(a) => a,
        Err(e) => return error::fallback(e, Some(&f)),
    };
    let mut spans = parse::SpanTable::default();
    let mut program =
        match (parse::Converter { spans: &mut spans, elem_param: f.elem_param.clone() }).program(&f) {
            Ok(p) => p,
            Err(e) => return error::fallback(e, Some(&f)),
        };
    program.packed_rows = attr.packed_rows;
    // Lower for the declared config now, so mistakes surface as compile errors with spans.
    let lowered = flashcore_ir::lower(&program, &attr.config).and_then(flashcore_ir::passes::run_all);
    let kernel = match lowered {
        Ok(k) => k,
        Err(e) => {
            let err = error::to_syn_error(&e, &spans, &attr, f.name.span());
            return error::fallback(err, Some(&f));
        }
    };
    if let Err(e) = flashcore_codegen::generate(&kernel) {
        let err = syn::Error::new(f.name.span(), format!("code generation failed: {e}"));
        return error::fallback(err, Some(&f));
    }
    let expansion = generate::kernel(&f, &program, &attr.config);
    let warnings = program.unread_inputs().into_iter().map(|(name, id)| {
        let span = spans.span(id).unwrap_or_else(|| f.name.span());
        unread_input_warning(&name, &f.name.to_string(), span)
    });
    quote::quote!(#expansion #(#warnings)*)
}

/// A compiler warning at `span` that kernel input `name` is never read. Stable Rust gives
/// procedural macros no warnings of their own: this uses a deprecated item, whose note rustc
/// prints where it is used.
fn unread_input_warning(name: &str, kernel: &str, span: proc_macro2::Span) -> proc_macro2::TokenStream {
    let note = format!(
        "input `{name}` of kernel `{kernel}` is never read: the kernel ignores what the caller passes for it"
    );
    quote::quote_spanned! {span=>
        const _: () = {
            #[deprecated(note = #note)]
            #[allow(non_camel_case_types)]
            struct flashcore_unread_input;
            let _ = flashcore_unread_input;
        };
    }
}
