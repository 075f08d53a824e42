//! Reading the annotated function: its optional `TaskContext` parameter, its
//! arguments, its return type and its attributes, with a spanned error for
//! every shape the attribute does not support.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemFn, Pat, PatType, PathArguments, ReturnType, Type,
};

/// What the task function returns, which decides `Task::Output` and how the
/// body's value becomes a `Result<Output, TaskError>`.
pub(crate) enum Returns {
    /// Nothing: `Output = ()`, the body is wrapped in `Ok`.
    Unit,
    /// A plain value `T`: `Output = T`, wrapped in `Ok`.
    Plain(Box<Type>),
    /// `Result<T, E>` (or an alias `Result<T>`): `Output = T`, and the error
    /// goes through `Into<TaskError>`. `err_span` points at the type, for the
    /// error when `E` does not convert.
    Result { ok: Box<Type>, err_span: Span },
}

/// One task argument: a plain identifier and its type.
pub(crate) struct Arg {
    /// The identifier, without `mut`.
    pub(crate) ident: Ident,
    /// The name it has in kwargs (the identifier without `r#`).
    pub(crate) name: String,
    /// Its type.
    pub(crate) ty: Box<Type>,
}

/// The annotated function, taken apart.
pub(crate) struct TaskFn {
    /// The original function, whose signature and body become the
    /// generated `call` (or hidden `__call_with_context`) function.
    pub(crate) item: ItemFn,
    /// `#[doc]` attributes, moved to the generated struct.
    pub(crate) docs: Vec<Attribute>,
    /// `#[cfg]` attributes, copied to every generated item. (`cfg_attr` is
    /// not: the attribute it adds may only make sense on a function.)
    pub(crate) cfgs: Vec<Attribute>,
    /// Whether the first parameter is a `TaskContext`.
    pub(crate) has_context: bool,
    /// The task's arguments, after the context.
    pub(crate) args: Vec<Arg>,
    /// What it returns.
    pub(crate) returns: Returns,
}

impl TaskFn {
    /// Takes `item` apart, or returns every problem found, combined.
    ///
    /// `blocking` says whether the `blocking` option was given, and where;
    /// a plain `fn` needs it and an `async fn` must not have it.
    pub(crate) fn parse(mut item: ItemFn, blocking: Option<(bool, Span)>) -> syn::Result<Self> {
        let mut errors = Errors::default();
        check_signature(&item, blocking, &mut errors);

        let mut has_context = false;
        let mut args = Vec::new();
        for (index, input) in item.sig.inputs.iter().enumerate() {
            let typed = match input {
                FnArg::Receiver(r) => {
                    errors.push(syn::Error::new_spanned(
                        r,
                        "a task is a free function and cannot take `self`",
                    ));
                    continue;
                }
                FnArg::Typed(t) => t,
            };
            match context_kind(&typed.ty) {
                ContextKind::ByValue if index == 0 => {
                    has_context = true;
                    continue;
                }
                ContextKind::ByValue => {
                    errors.push(syn::Error::new_spanned(
                        &typed.ty,
                        "the `TaskContext` parameter must come first",
                    ));
                    continue;
                }
                ContextKind::ByReference => {
                    errors.push(syn::Error::new_spanned(
                        &typed.ty,
                        "take the `TaskContext` by value: `ctx: TaskContext`",
                    ));
                    continue;
                }
                ContextKind::No => {}
            }
            match parse_arg(typed) {
                Ok(arg) => args.push(arg),
                Err(e) => errors.push(e),
            }
        }

        let returns = match parse_returns(&item.sig.output) {
            Ok(r) => r,
            Err(e) => {
                errors.push(e);
                Returns::Unit
            }
        };
        errors.finish()?;

        // Docs describe the task, so they move to the struct users see; the
        // other attributes (lints, `#[must_use]`, ...) stay on the body.
        let (docs, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut item.attrs)
            .into_iter()
            .partition(|a| a.path().is_ident("doc"));
        let cfgs = rest
            .iter()
            .filter(|a| a.path().is_ident("cfg"))
            .cloned()
            .collect();
        item.attrs = rest;

        Ok(TaskFn {
            item,
            docs,
            cfgs,
            has_context,
            args,
            returns,
        })
    }
}

/// Collects several errors so the user sees all of them at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Rejects signatures a task cannot have: generics, `unsafe`, `extern`,
/// variadics, and a mismatch between `async` and the `blocking` option.
fn check_signature(item: &ItemFn, blocking: Option<(bool, Span)>, errors: &mut Errors) {
    let sig = &item.sig;
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "a task cannot be generic: its arguments and result are decoded from \
             messages, so their types must be concrete",
        ));
    }
    if let Some(w) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(
            w,
            "a task cannot have a `where` clause",
        ));
    }
    if let Some(u) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(u, "a task cannot be `unsafe`"));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(abi, "a task cannot be `extern`"));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(v, "a task cannot be variadic"));
    }
    let blocking_flag = matches!(blocking, Some((true, _)));
    match (&sig.asyncness, blocking) {
        (None, _) if !blocking_flag => errors.push(syn::Error::new(
            sig.fn_token.span(),
            "a task that is not `async` must be declared `blocking`: write \
             `#[celeriac::task(blocking)]` to run it on the blocking thread pool, \
             or make it an `async fn`",
        )),
        (Some(a), Some((true, span))) => {
            let mut e = syn::Error::new(
                span,
                "an `async fn` task cannot be `blocking`: remove `blocking`, or \
                 remove `async` to run the function on the blocking thread pool",
            );
            e.combine(syn::Error::new_spanned(a, "the function is `async` here"));
            errors.push(e);
        }
        _ => {}
    }
}

/// How a parameter's type relates to `TaskContext`.
enum ContextKind {
    /// Not a context.
    No,
    /// `TaskContext` (any path ending in it), by value.
    ByValue,
    /// `&TaskContext` or `&mut TaskContext`.
    ByReference,
}

/// Returns whether `ty` names `TaskContext`, matching the last path segment
/// so `TaskContext`, `celeriac::TaskContext` and re-exports all work.
fn context_kind(ty: &Type) -> ContextKind {
    match peel(ty) {
        Type::Path(p) if p.qself.is_none() => match p.path.segments.last() {
            Some(seg) if seg.ident == "TaskContext" && seg.arguments.is_none() => {
                ContextKind::ByValue
            }
            _ => ContextKind::No,
        },
        Type::Reference(r) => match context_kind(&r.elem) {
            ContextKind::ByValue => ContextKind::ByReference,
            _ => ContextKind::No,
        },
        _ => ContextKind::No,
    }
}

/// Removes the invisible groups and parentheses `macro_rules!` may wrap a
/// type in.
fn peel(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => peel(&g.elem),
        Type::Paren(p) => peel(&p.elem),
        other => other,
    }
}

/// Reads one argument, which must be a plain identifier with an owned type.
fn parse_arg(typed: &PatType) -> syn::Result<Arg> {
    let ident = match &*typed.pat {
        Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "task arguments must be plain identifiers (they are also the \
                 keyword-argument names), not patterns",
            ))
        }
    };
    match peel(&typed.ty) {
        Type::Reference(r) => {
            return Err(syn::Error::new_spanned(
                r,
                "task arguments are decoded from the message, so they must be owned: \
                 use `String` for `&str`, `Vec<T>` for `&[T]`",
            ))
        }
        Type::ImplTrait(t) => {
            return Err(syn::Error::new_spanned(
                t,
                "task arguments need a concrete type, not `impl Trait`",
            ))
        }
        _ => {}
    }
    Ok(Arg {
        name: ident.unraw().to_string(),
        ident,
        ty: typed.ty.clone(),
    })
}

/// Reads the return type.
fn parse_returns(output: &ReturnType) -> syn::Result<Returns> {
    let ty = match output {
        ReturnType::Default => return Ok(Returns::Unit),
        ReturnType::Type(_, ty) => ty,
    };
    let peeled = peel(ty);
    if let Type::ImplTrait(t) = peeled {
        return Err(syn::Error::new_spanned(
            t,
            "a task must return a concrete type (its result is stored), not `impl Trait`",
        ));
    }
    if let Type::Path(p) = peeled {
        if let Some(seg) = p.path.segments.last() {
            if seg.ident == "Result" {
                if let PathArguments::AngleBracketed(a) = &seg.arguments {
                    let types: Vec<&Type> = a
                        .args
                        .iter()
                        .filter_map(|g| match g {
                            GenericArgument::Type(t) => Some(t),
                            _ => None,
                        })
                        .collect();
                    if let (1 | 2, Some(ok)) = (types.len(), types.first()) {
                        if let Type::ImplTrait(t) = peel(ok) {
                            return Err(syn::Error::new_spanned(
                                t,
                                "a task must return a concrete type (its result is \
                                 stored), not `impl Trait`",
                            ));
                        }
                        return Ok(Returns::Result {
                            ok: Box::new((*ok).clone()),
                            err_span: ty.span(),
                        });
                    }
                }
            }
        }
    }
    Ok(Returns::Plain(ty.clone()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(tokens: proc_macro2::TokenStream) -> syn::Result<TaskFn> {
        TaskFn::parse(syn::parse2(tokens).unwrap(), None)
    }

    fn parse_blocking(tokens: proc_macro2::TokenStream) -> syn::Result<TaskFn> {
        TaskFn::parse(
            syn::parse2(tokens).unwrap(),
            Some((true, Span::call_site())),
        )
    }

    fn err(r: syn::Result<TaskFn>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(" | "),
        }
    }

    #[test]
    fn reads_context_args_and_result() {
        let f = parse(quote! {
            /// Adds.
            #[allow(unused)]
            async fn add(ctx: celeriac::TaskContext, x: i64, mut r#type: String) -> Result<i64, TaskError> { Ok(x) }
        })
        .unwrap();
        assert!(f.has_context);
        assert!(f.item.sig.asyncness.is_some());
        let names: Vec<_> = f.args.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["x", "type"]);
        assert_eq!(f.docs.len(), 1);
        assert_eq!(f.item.attrs.len(), 1);
        assert!(matches!(f.returns, Returns::Result { .. }));
    }

    #[test]
    fn reads_plain_unit_and_alias_returns() {
        let f = parse(quote!(
            async fn a() -> i64 {
                1
            }
        ))
        .unwrap();
        assert!(matches!(f.returns, Returns::Plain(_)));
        let f = parse(quote!(
            async fn a() {}
        ))
        .unwrap();
        assert!(matches!(f.returns, Returns::Unit));
        let f = parse(quote!(
            async fn a() -> std::io::Result<u8> {
                Ok(1)
            }
        ))
        .unwrap();
        assert!(matches!(f.returns, Returns::Result { .. }));
    }

    #[test]
    fn rejects_unsupported_shapes() {
        assert!(err(parse(quote!(
            async fn a<T>(x: T) {}
        )))
        .contains("cannot be generic"));
        assert!(err(parse(quote!(
            async fn a(&self) {}
        )))
        .contains("cannot take `self`"));
        assert!(err(parse(quote!(
            async fn a((x, y): (i64, i64)) {}
        )))
        .contains("plain identifiers"));
        assert!(err(parse(quote!(
            async fn a(x: &str) {}
        )))
        .contains("must be owned"));
        assert!(err(parse(quote!(
            async fn a(x: i64, c: TaskContext) {}
        )))
        .contains("must come first"));
        assert!(err(parse(quote!(
            async fn a(c: &TaskContext) {}
        )))
        .contains("by value"));
        assert!(err(parse(quote!(
            async fn a() -> impl Send {}
        )))
        .contains("concrete type"));
        assert!(err(parse(quote!(
            fn a() {}
        )))
        .contains("must be declared `blocking`"));
        assert!(err(parse_blocking(quote!(
            async fn a() {}
        )))
        .contains("cannot be `blocking`"));
        assert!(err(parse(quote!(
            unsafe fn a() {}
        )))
        .contains("`unsafe`"));
    }

    #[test]
    fn reports_every_problem_at_once() {
        let e = err(parse(quote!(
            fn a<T>(&self, x: &str) {}
        )));
        assert!(
            e.contains("generic")
                && e.contains("self")
                && e.contains("owned")
                && e.contains("blocking"),
            "{e}"
        );
    }

    #[test]
    fn accepts_a_blocking_plain_fn() {
        let f = parse_blocking(quote!(
            fn a(x: u8) -> u8 {
                x
            }
        ))
        .unwrap();
        assert!(f.item.sig.asyncness.is_none());
    }
}
