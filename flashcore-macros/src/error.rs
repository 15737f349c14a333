//! Turning IR errors into `syn::Error`s at the user's spans, and the fallback expansion that
//! keeps a broken kernel's name defined (so one mistake gives one error, not a cascade).

use proc_macro2::{Span, TokenStream};
use quote::quote;

use flashcore_ir::{ConfigError, IrError};

use crate::parse::{KernelAttr, KernelFn, SpanTable};

/// Where an error found while lowering the declared config should point.
pub fn to_syn_error(err: &IrError, spans: &SpanTable, attr: &KernelAttr, fallback: Span) -> syn::Error {
    match err {
        IrError::Lower(e) => spans.error(e.span, fallback, &e.message),
        IrError::Config(ConfigError::Invalid { field, .. }) => {
            match attr.field_spans.iter().find(|(f, _)| f == field) {
                Some((_, tokens)) => syn::Error::new_spanned(tokens, err.to_string()),
                None => syn::Error::new(fallback, err.to_string()),
            }
        }
        IrError::Protocol(_) | IrError::Config(ConfigError::Setting { .. }) => {
            syn::Error::new(fallback, err.to_string())
        }
        IrError::Verify(_) | IrError::UnknownPass(_) => {
            syn::Error::new(fallback, format!("internal compiler error: {err}"))
        }
    }
}

/// `compile_error!` plus an empty kernel type of the same name.
pub fn fallback(err: syn::Error, f: Option<&KernelFn>) -> TokenStream {
    let compile_error = err.to_compile_error();
    let Some(f) = f else { return compile_error };
    let (vis, name) = (&f.vis, &f.name);
    quote! {
        #compile_error
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #name;
    }
}
