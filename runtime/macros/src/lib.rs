//! `#[rayish::remote]`: turns a function into a remote function.
//!
//! For `fn add(a: u64, b: u64) -> u64`, the function stays callable as before, and a
//! module of the same name appears beside it with:
//! - `add::remote(a, b) -> ObjectRef<u64>`: each argument a value or an `ObjectRef`;
//! - `add::remote_with(options, a, b)`: the same with `TaskOptions`;
//! - `add::NAME`: the stable name it is registered under (its module path).
//!
//! A function returning `Result<T, E>` (any type named `Result`) yields `ObjectRef<T>`,
//! and its `Err` becomes the error `get` returns.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{
    parse_macro_input, spanned::Spanned, FnArg, GenericArgument, ItemFn, Pat, PathArguments,
    ReturnType, Type, Visibility,
};

/// Makes a function remote. See the crate documentation.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[remote] takes no arguments; use remote_with(TaskOptions) per call",
        )
        .to_compile_error()
        .into();
    }
    let func = parse_macro_input!(item as ItemFn);
    match expand(func) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(func: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "remote functions cannot be generic: a worker must know the concrete types",
        ));
    }
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new(
            a.span(),
            "remote functions are synchronous; spawn async work inside if needed",
        ));
    }
    let name = &sig.ident;
    let mut arg_names = Vec::new();
    let mut arg_types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(pi) => {
                    arg_names.push(pi.ident.clone());
                    arg_types.push((*pt.ty).clone());
                }
                other => {
                    return Err(syn::Error::new(
                        other.span(),
                        "remote function arguments must be plain names",
                    ))
                }
            },
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "remote functions cannot take self; actors come later",
                ))
            }
        }
    }
    let (out_type, fallible) = match &sig.output {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (ok, true),
            None => ((**ty).clone(), false),
        },
    };
    let vis = match &func.vis {
        Visibility::Inherited => quote!(pub(super)),
        other => quote!(#other),
    };
    let mod_vis = &func.vis;
    let n = arg_names.len();
    let indices: Vec<usize> = (0..n).collect();
    let arg_labels: Vec<String> = arg_names.iter().map(|a| a.to_string()).collect();
    let decoded: Vec<_> = arg_names
        .iter()
        .map(|a| format_ident!("__arg_{}", a))
        .collect();
    let call_result = if fallible {
        quote!(let __out = super::#name(#(#decoded),*).map_err(::rayish::__private::fail)?;)
    } else {
        quote!(let __out = super::#name(#(#decoded),*);)
    };
    let doc = format!("Remote form of [`{name}`](fn@super::{name}): `{name}::remote(...)` runs it on the cluster.");
    Ok(quote! {
        #func

        #[doc = #doc]
        #[allow(non_snake_case, unused_imports, clippy::too_many_arguments)]
        #mod_vis mod #name {
            use super::*;

            /// The name this function is registered under.
            pub const NAME: &str = module_path!();

            /// Runs the function on the cluster; returns a reference to its result at once.
            #vis fn remote(#(#arg_names: impl ::core::convert::Into<::rayish::Arg<#arg_types>>),*) -> ::rayish::ObjectRef<#out_type> {
                remote_with(::rayish::TaskOptions::default(), #(#arg_names),*)
            }

            /// [`remote`] with per-call options (CPUs, GPUs, resources, retries).
            #vis fn remote_with(options: ::rayish::TaskOptions, #(#arg_names: impl ::core::convert::Into<::rayish::Arg<#arg_types>>),*) -> ::rayish::ObjectRef<#out_type> {
                ::rayish::__private::submit(
                    NAME,
                    ::std::vec![#(::rayish::__private::encode_arg::<#arg_types>(#arg_names.into())),*],
                    options,
                )
            }

            fn invoke(__args: &[::std::vec::Vec<u8>]) -> ::core::result::Result<::rayish::__private::Encoded, ::rayish::__private::InvokeError> {
                ::rayish::__private::check_arity(__args, #n)?;
                #(let #decoded: #arg_types = ::rayish::__private::decode_arg(&__args[#indices], #arg_labels)?;)*
                #call_result
                ::rayish::__private::encode_return::<#out_type>(&__out)
            }

            ::rayish::__private::inventory::submit! {
                ::rayish::__private::RemoteFunction { name: module_path!(), invoke }
            }
        }
    })
}

/// For `Result<T, ...>` (any path ending in `Result` with type arguments), `Some(T)`.
fn result_ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(tp) = ty else { return None };
    let last = tp.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    })
}
