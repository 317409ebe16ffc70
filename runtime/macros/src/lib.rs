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
    check_callable(sig, "remote function")?;
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        return Err(syn::Error::new(
            r.span(),
            "remote functions cannot take self; put methods in an #[actor] impl block",
        ));
    }
    let name = &sig.ident;
    let args = Args::of(sig, "remote function")?;
    let (out_type, fallible) = output_type(sig);
    let vis = match &func.vis {
        Visibility::Inherited => quote!(pub(super)),
        other => quote!(#other),
    };
    let mod_vis = &func.vis;
    let (arg_names, arg_types, decoded) = (&args.names, &args.types, &args.decoded);
    let decode_args = args.decoding();
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

            fn invoke(__args: &[::rayish::__private::Bytes]) -> ::core::result::Result<::rayish::__private::Encoded, ::rayish::__private::InvokeError> {
                #decode_args
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

/// Makes the type of an `impl` block an actor class.
///
/// For `impl Counter { pub fn new(start: u64) -> Self; pub fn add(&mut self, n: u64) -> u64 }`:
/// - `Counter::remote(start) -> CounterHandle` creates the actor on the cluster, and
///   `Counter::remote_with(ActorOptions, start)` does so with options;
/// - `CounterHandle` (cloneable, serializable, derefs to `rayish::ActorHandle`) has one
///   method per `&self`/`&mut self` method, taking each argument as a value or an
///   `ObjectRef` and returning `ObjectRef<R>` at once;
/// - `new` is the constructor (it may return `Self` or `Result<Self, E>`); other
///   associated functions stay local. The type must be `Send + 'static`.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[actor] takes no arguments; use Type::remote_with(ActorOptions, ..)",
        )
        .to_compile_error()
        .into();
    }
    let block = parse_macro_input!(item as syn::ItemImpl);
    match expand_actor(block) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// A signature's arguments (receiver aside): their names and types, the names their
/// decoded values get in a worker, and the code that decodes them from `__args`.
struct Args {
    names: Vec<syn::Ident>,
    types: Vec<Type>,
    decoded: Vec<syn::Ident>,
}

impl Args {
    /// The arguments of `sig`, a `what` ("remote function", "actor method"); each must
    /// be a plain name.
    fn of(sig: &syn::Signature, what: &str) -> syn::Result<Self> {
        let mut names = Vec::new();
        let mut types = Vec::new();
        for input in &sig.inputs {
            if let FnArg::Typed(pt) = input {
                match &*pt.pat {
                    Pat::Ident(pi) => {
                        names.push(pi.ident.clone());
                        types.push((*pt.ty).clone());
                    }
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            format!("{what} arguments must be plain names"),
                        ))
                    }
                }
            }
        }
        let decoded = names.iter().map(|a| format_ident!("__arg_{}", a)).collect();
        Ok(Args {
            names,
            types,
            decoded,
        })
    }

    /// Checks the count, then binds each decoded argument to its `decoded` name.
    fn decoding(&self) -> proc_macro2::TokenStream {
        let n = self.names.len();
        let indices: Vec<usize> = (0..n).collect();
        let labels: Vec<String> = self.names.iter().map(|a| a.to_string()).collect();
        let (decoded, types) = (&self.decoded, &self.types);
        quote! {
            ::rayish::__private::check_arity(__args, #n)?;
            #(let #decoded: #types = ::rayish::__private::decode_arg(&__args[#indices], #labels)?;)*
        }
    }
}

/// Refuses what a worker cannot call by name: generic or `async` signatures.
fn check_callable(sig: &syn::Signature, what: &str) -> syn::Result<()> {
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            format!("{what}s cannot be generic: a worker must know the concrete types"),
        ));
    }
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new(
            a.span(),
            format!("{what}s are synchronous; spawn async work inside if needed"),
        ));
    }
    Ok(())
}

/// The type a call's `ObjectRef` holds, and whether the function returns a `Result`
/// (whose `Err` becomes the task's failure).
fn output_type(sig: &syn::Signature) -> (Type, bool) {
    match &sig.output {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (ok, true),
            None => ((**ty).clone(), false),
        },
    }
}

fn expand_actor(block: syn::ItemImpl) -> syn::Result<proc_macro2::TokenStream> {
    if !block.generics.params.is_empty() || block.trait_.is_some() {
        return Err(syn::Error::new(
            block.impl_token.span(),
            "#[actor] goes on a plain `impl Type` block of a non-generic type",
        ));
    }
    let self_ty = &block.self_ty;
    let Type::Path(tp) = &**self_ty else {
        return Err(syn::Error::new(
            self_ty.span(),
            "#[actor] needs a named type",
        ));
    };
    let Some(class) = tp.path.segments.last().map(|s| s.ident.clone()) else {
        return Err(syn::Error::new(
            self_ty.span(),
            "#[actor] needs a named type",
        ));
    };
    let handle = format_ident!("{}Handle", class);
    let class_label = class.to_string();

    let mut constructor = None;
    let mut methods = Vec::new();
    for item in &block.items {
        let syn::ImplItem::Fn(f) = item else { continue };
        check_callable(&f.sig, "actor method")?;
        let receiver = f.sig.inputs.iter().find_map(|i| match i {
            FnArg::Receiver(r) => Some(r.clone()),
            _ => None,
        });
        match receiver {
            Some(r) if r.reference.is_some() => methods.push(f.sig.clone()),
            Some(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "actor methods take &self or &mut self: the actor lives on between calls",
                ))
            }
            None if f.sig.ident == "new" => constructor = Some(f.sig.clone()),
            None => {}
        }
    }
    let Some(ctor) = constructor else {
        return Err(syn::Error::new(
            block.impl_token.span(),
            "an actor class needs a constructor `fn new(..) -> Self` in this impl block",
        ));
    };

    // The constructor.
    let ctor_args = Args::of(&ctor, "actor method")?;
    let (ctor_fallible, ctor_decoded) = (output_type(&ctor).1, &ctor_args.decoded);
    let (ctor_names, ctor_types) = (&ctor_args.names, &ctor_args.types);
    let decode_ctor_args = ctor_args.decoding();
    let build = if ctor_fallible {
        quote!(<#self_ty>::new(#(#ctor_decoded),*).map_err(::rayish::__private::fail)?)
    } else {
        quote!(<#self_ty>::new(#(#ctor_decoded),*))
    };

    // The methods.
    let mut handle_methods = Vec::new();
    let mut invokers = Vec::new();
    let mut registrations = Vec::new();
    for sig in &methods {
        let name = &sig.ident;
        let args = Args::of(sig, "actor method")?;
        let (names, types, decoded) = (&args.names, &args.types, &args.decoded);
        let decode_args = args.decoding();
        let (out_type, fallible) = output_type(sig);
        let invoker = format_ident!("__rayish_invoke_{}", name);
        let method_label = format!("::{}::{}", class_label, name);
        let call = if fallible {
            quote!(let __out = __this.#name(#(#decoded),*).map_err(::rayish::__private::fail)?;)
        } else {
            quote!(let __out = __this.#name(#(#decoded),*);)
        };
        let doc = format!("Calls [`{class_label}::{name}`] on the actor; returns a reference to its result at once.");
        handle_methods.push(quote! {
            #[doc = #doc]
            #[allow(clippy::too_many_arguments)]
            pub fn #name(&self, #(#names: impl ::core::convert::Into<::rayish::Arg<#types>>),*) -> ::rayish::ObjectRef<#out_type> {
                ::rayish::__private::call_actor(
                    &self.0,
                    ::core::concat!(::core::module_path!(), #method_label),
                    ::std::vec![#(::rayish::__private::encode_arg::<#types>(#names.into())),*],
                )
            }
        });
        invokers.push(quote! {
            #[doc(hidden)]
            #[allow(non_snake_case)]
            fn #invoker(
                __actor: &mut ::rayish::__private::ActorInstance,
                __args: &[::rayish::__private::Bytes],
            ) -> ::core::result::Result<::rayish::__private::Encoded, ::rayish::__private::InvokeError> {
                #decode_args
                let __this = __actor.downcast_mut::<#self_ty>().ok_or_else(|| {
                    ::rayish::__private::InvokeError::Codec(
                        ::std::format!("this worker's actor is not a {}", #class_label),
                    )
                })?;
                #call
                ::rayish::__private::encode_return::<#out_type>(&__out)
            }
        });
        registrations.push(quote! {
            ::rayish::__private::inventory::submit! {
                ::rayish::__private::ActorMethod {
                    name: ::core::concat!(::core::module_path!(), #method_label),
                    invoke: <#self_ty>::#invoker,
                }
            }
        });
    }
    let class_path = format!("::{class_label}");
    let handle_doc = format!("A handle to a [`{class_label}`] actor: its methods run on the actor and return `ObjectRef`s.");
    let new_label = format!("::{class_label}::new");

    Ok(quote! {
        #block

        #[doc = #handle_doc]
        #[derive(Clone, Debug)]
        pub struct #handle(::rayish::ActorHandle);

        impl ::core::convert::From<::rayish::ActorHandle> for #handle {
            fn from(h: ::rayish::ActorHandle) -> Self {
                Self(h)
            }
        }

        impl ::core::ops::Deref for #handle {
            type Target = ::rayish::ActorHandle;
            fn deref(&self) -> &::rayish::ActorHandle {
                &self.0
            }
        }

        impl ::rayish::__private::serde::Serialize for #handle {
            fn serialize<S: ::rayish::__private::serde::Serializer>(&self, s: S) -> ::core::result::Result<S::Ok, S::Error> {
                ::rayish::__private::serde::Serialize::serialize(&self.0, s)
            }
        }

        impl<'de> ::rayish::__private::serde::Deserialize<'de> for #handle {
            fn deserialize<D: ::rayish::__private::serde::Deserializer<'de>>(d: D) -> ::core::result::Result<Self, D::Error> {
                <::rayish::ActorHandle as ::rayish::__private::serde::Deserialize>::deserialize(d).map(Self)
            }
        }

        impl #handle {
            #(#handle_methods)*
        }

        impl ::rayish::ActorClass for #self_ty {
            const NAME: &'static str = ::core::concat!(::core::module_path!(), #class_path);
            type Handle = #handle;
        }

        #[allow(clippy::too_many_arguments)]
        impl #self_ty {
            /// Creates the actor on the cluster; returns its handle at once.
            pub fn remote(#(#ctor_names: impl ::core::convert::Into<::rayish::Arg<#ctor_types>>),*) -> #handle {
                Self::remote_with(::rayish::ActorOptions::default(), #(#ctor_names),*)
            }

            /// [`Self::remote`] with options (resources, restarts, name, lifetime).
            pub fn remote_with(options: ::rayish::ActorOptions, #(#ctor_names: impl ::core::convert::Into<::rayish::Arg<#ctor_types>>),*) -> #handle {
                #handle(::rayish::__private::create_actor(
                    <Self as ::rayish::ActorClass>::NAME,
                    ::std::vec![#(::rayish::__private::encode_arg::<#ctor_types>(#ctor_names.into())),*],
                    options,
                ))
            }

            #[doc(hidden)]
            #[allow(non_snake_case)]
            fn __rayish_construct(
                __args: &[::rayish::__private::Bytes],
            ) -> ::core::result::Result<::rayish::__private::ActorInstance, ::rayish::__private::InvokeError> {
                #decode_ctor_args
                ::core::result::Result::Ok(::std::boxed::Box::new(#build))
            }

            #(#invokers)*
        }

        ::rayish::__private::inventory::submit! {
            ::rayish::__private::ActorConstructor {
                name: ::core::concat!(::core::module_path!(), #new_label),
                construct: <#self_ty>::__rayish_construct,
            }
        }

        #(#registrations)*
    })
}
