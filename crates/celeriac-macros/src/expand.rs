//! Code generation: the task's unit struct, its hidden arguments struct with
//! `FromArgs`/`IntoArgs`, the `Task` impl, and the inherent `s`, `delay` and
//! `call` helpers.
//!
//! Every path in the output starts at the facade (`::celeriac` or the
//! `crate = ...` override) or at `::core`/`::std`, so a user's crate needs
//! only `celeriac` in its dependencies and cannot shadow anything the
//! generated code names.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::Ident;

use crate::func::{Returns, TaskFn};
use crate::options::TaskAttr;

/// Returns the items that replace the annotated function.
pub(crate) fn expand(attr: &TaskAttr, f: TaskFn) -> TokenStream {
    let krate = match &attr.krate {
        Some(path) => quote!(#path),
        None => quote!(::celeriac),
    };
    let private = quote!(#krate::__private);

    let vis = f.item.vis.clone();
    let ident = f.item.sig.ident.clone();
    let plain_name = ident.unraw().to_string();
    let args_ident = format_ident!("__{}_Args", plain_name, span = ident.span());
    let docs = &f.docs;
    let cfgs = &f.cfgs;

    let name = match &attr.name {
        Some(lit) => quote!(#lit),
        None => quote!(::core::concat!(::core::module_path!(), ".", #plain_name)),
    };

    // The generated locals get `mixed_site` hygiene, like a `macro_rules!`
    // local, so a task argument of the same name can never shadow them.
    let local = |name: &str| Ident::new(name, Span::mixed_site());
    let (ctx, args, kwargs, reader, value, result) = (
        local("__ctx"),
        local("__args"),
        local("__kwargs"),
        local("__reader"),
        local("__value"),
        local("__result"),
    );

    let fields: Vec<&Ident> = f.args.iter().map(|a| &a.ident).collect();
    let types: Vec<&syn::Type> = f.args.iter().map(|a| &*a.ty).collect();
    let names: Vec<&str> = f.args.iter().map(|a| a.name.as_str()).collect();

    // Spanned at each argument's type, so "does not implement Deserialize"
    // points at the parameter instead of at the attribute.
    let reads = f.args.iter().map(|a| {
        let (field, ty, name) = (&a.ident, &a.ty, &a.name);
        let span = Span::call_site().located_at(ty.span());
        quote_spanned!(span=> #field: #reader.next::<#ty>(#name)?,)
    });
    let writes = f.args.iter().map(|a| {
        let (field, name) = (&a.ident, &a.name);
        let span = Span::call_site().located_at(a.ty.span());
        quote_spanned!(span=> #private::encode_arg(#name, &self.#field)?,)
    });

    let output = match &f.returns {
        Returns::Unit => quote!(()),
        Returns::Plain(ty) => quote!(#ty),
        Returns::Result { ok, .. } => quote!(#ok),
    };
    let options = attr.builder_calls(&krate);

    let blocking = attr.is_blocking();
    // Located at the user's `async`, so the compiler's notes about the
    // future name the function.
    let async_span = match &f.item.sig.asyncness {
        Some(a) => Span::call_site().located_at(a.span()),
        None => Span::call_site(),
    };
    let body_ident = if f.has_context {
        Ident::new("__call_with_context", Span::call_site())
    } else {
        Ident::new("call", Span::call_site())
    };
    let call_args = if f.has_context {
        quote!(#ctx, #(#fields),*)
    } else {
        quote!(#(#fields),*)
    };
    let drop_ctx = if f.has_context {
        quote!()
    } else {
        quote!(::core::mem::drop(#ctx);)
    };
    // Turns the body's value, bound to `result`, into
    // `Result<Output, TaskError>`.
    let convert = match &f.returns {
        Returns::Unit | Returns::Plain(_) => quote!(::core::result::Result::Ok(#result)),
        Returns::Result { err_span, .. } => {
            let span = Span::call_site().located_at(*err_span);
            // The error that fails `Into<TaskError>` is reported where it
            // is used, so it too is located at the return type.
            let err = Ident::new("__e", Span::mixed_site().located_at(*err_span));
            quote_spanned! {span=>
                ::core::result::Result::map_err(
                    #result,
                    |#err| -> #krate::TaskError { ::core::convert::Into::into(#err) },
                )
            }
        }
    };
    let run_body = if blocking {
        quote! {
            #private::run_blocking(move || {
                let #result = Self::#body_ident(#call_args);
                #convert
            })
        }
    } else {
        quote_spanned! {async_span=>
            async move {
                let #result = Self::#body_ident(#call_args).await;
                #convert
            }
        }
    };

    // The body keeps the user's signature (patterns, `mut`, attributes) and
    // only changes its name, so it compiles exactly as written.
    let mut body = f.item;
    body.sig.ident = body_ident;
    let body_doc = if f.has_context {
        quote!(#[doc(hidden)])
    } else if blocking {
        quote! {
            /// Runs the task's body here and now, on this thread, without a
            /// broker or a worker; for unit tests of the task's logic.
        }
    } else {
        quote! {
            /// Runs the task's body here and now, without a broker or a
            /// worker; for unit tests of the task's logic.
        }
    };

    // `delay` takes the app first; it is called `app` unless a task
    // argument already has that name.
    let app = if names.contains(&"app") {
        Ident::new("__celeriac_app", Span::call_site())
    } else {
        Ident::new("app", Span::call_site())
    };
    let delay_doc = format!(
        "Sends this task with these arguments and returns a handle to its \
         result, like Celery's `delay`: `{plain_name}::delay(&app{})`.",
        names.iter().map(|n| format!(", {n}")).collect::<String>()
    );

    quote! {
        #(#cfgs)*
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::default::Default,
        )]
        #vis struct #ident;

        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #args_ident {
            #(pub #fields: #types,)*
        }

        #(#cfgs)*
        impl ::core::fmt::Debug for #args_ident {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                // Argument types need not be `Debug`, so none is printed.
                f.debug_struct(::core::stringify!(#args_ident)).finish_non_exhaustive()
            }
        }

        #(#cfgs)*
        impl #private::FromArgs for #args_ident {
            fn from_args(
                #args: ::std::vec::Vec<#private::Value>,
                #kwargs: #private::Map<::std::string::String, #private::Value>,
            ) -> ::core::result::Result<Self, #private::ArgsError> {
                #[allow(unused_mut)]
                let mut #reader = #private::ArgReader::new(#args, #kwargs);
                // Struct fields are evaluated in the order written, which is
                // the positional order.
                let #value = Self { #(#reads)* };
                #reader.finish()?;
                ::core::result::Result::Ok(#value)
            }
        }

        #(#cfgs)*
        impl #private::IntoArgs for #args_ident {
            fn into_args(
                self,
            ) -> ::core::result::Result<
                (
                    ::std::vec::Vec<#private::Value>,
                    #private::Map<::std::string::String, #private::Value>,
                ),
                #private::ArgsError,
            > {
                ::core::result::Result::Ok((
                    ::std::vec![#(#writes)*],
                    #private::Map::new(),
                ))
            }
        }

        #(#cfgs)*
        impl #krate::Task for #ident {
            const NAME: &'static str = #name;
            type Args = #args_ident;
            type Output = #output;

            fn options() -> #krate::TaskOptions {
                #krate::TaskOptions::new(<Self as #krate::Task>::NAME) #options
            }

            fn run(
                #ctx: #krate::TaskContext,
                #args: Self::Args,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<Self::Output, #krate::TaskError>,
            > + ::core::marker::Send
                   + 'static {
                #drop_ctx
                let #args_ident { #(#fields),* } = #args;
                #run_body
            }
        }

        #(#cfgs)*
        #[allow(dead_code)]
        impl #ident {
            /// Returns a signature of this task with these arguments, to set
            /// per-call options (queue, countdown, eta, ...) and send it.
            #[allow(clippy::too_many_arguments)]
            #vis fn s(#(#fields: #types),*) -> #krate::Signature<Self> {
                #krate::Signature::new(#args_ident { #(#fields),* })
            }

            #[doc = #delay_doc]
            #[allow(clippy::too_many_arguments)]
            #vis async fn delay(
                #app: &#krate::App,
                #(#fields: #types),*
            ) -> ::core::result::Result<#krate::AsyncResult<#output>, #krate::Error> {
                Self::s(#(#fields),*).send(#app).await
            }

            #body_doc
            // The task's shape is imposed by the framework: it must be
            // `async` (or `blocking`) and take owned arguments, so these
            // pedantic lints would only flag what the user cannot change.
            #[allow(
                clippy::unused_async,
                clippy::needless_pass_by_value,
                clippy::missing_errors_doc,
                clippy::missing_panics_doc
            )]
            #body
        }
    }
}
