//! The `#[celeriac::task]` attribute, which turns a function into a celeriac
//! task.
//!
//! Depend on the `celeriac` facade, not on this crate: the facade re-exports
//! the attribute as [`celeriac::task`](macro@task) (behind its default
//! `macros` feature), and the generated code names only `::celeriac` paths.
//! The attribute's documentation below is the reference.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | `options` | the `name = ..`, `max_retries = ..`, ... options and the `TaskOptions` they build |
//! | `func` | reading the function: context parameter, arguments, return type, with spanned errors |
//! | `expand` | the generated struct, arguments struct, `Task` impl and `s`/`delay`/`call` helpers |

use proc_macro::TokenStream;

mod expand;
mod func;
mod options;

/// Turns a function into a celeriac task.
///
/// ```
/// use std::time::Duration;
/// use celeriac::{App, TaskError};
///
/// /// Adds two numbers.
/// #[celeriac::task(name = "tasks.add", max_retries = 3)]
/// async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
///     Ok(x + y)
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // The function's name is now a type and a value: register it...
/// let app = App::builder().broker("memory://").task(add).build().await?;
/// // ...send it (Celery's `add.delay(2, 3)`)...
/// let result = add::delay(&app, 2, 3).await?;
/// // ...and run a worker (here in the background) to execute it.
/// let worker = app.worker().spawn();
/// assert_eq!(result.get(Duration::from_secs(5)).await?, 5);
/// worker.stop();
/// worker.join().await?;
/// # Ok(()) }
/// ```
///
/// # What it generates
///
/// For `async fn add(x: i64, y: i64) -> Result<i64, TaskError>`:
///
/// - `struct add;`, a unit struct with the function's visibility and doc
///   comments, so `add` is both a type (`Signature<add>`) and a value
///   (`App::builder().task(add)`). It derives `Debug`, `Clone`, `Copy` and
///   `Default`.
/// - `impl celeriac::Task for add`, with:
///   - `NAME`: the `name = ".."` option, or by default
///     `concat!(module_path!(), ".", "add")` (for example `"my_app::tasks.add"`).
///     Queued messages find their task by this name, so set it explicitly
///     for tasks whose module may move, and to match a Python task's name.
///   - `Args`: a hidden struct with one field per argument, read by position
///     first and then by name (Celery's `args` and `kwargs`), so
///     `add(2, 3)`, `add(2, y=3)` and `add(x=2, y=3)` all work from Python.
///     A missing, duplicated, extra or mistyped argument is a clear
///     `ArgsError`. A missing `Option<T>` argument reads as `None`. It is
///     sent as positional `args` with empty `kwargs`.
///   - `Output`: `i64` here (see *Return type*).
///   - `options()`: `TaskOptions::new(NAME)` with the options below applied.
///   - `run(ctx, args)`: runs the body with the arguments bound.
/// - Inherent functions on `add` (with the function's visibility):
///   - `add::s(x, y) -> Signature<add>`: the call, to set per-call options
///     (`.countdown(..)`, `.queue(..)`) and `.send(&app)`. It takes the
///     arguments flat, which shadows the trait's `Task::s(Args)`.
///   - `add::delay(&app, x, y) -> Result<AsyncResult<i64>, Error>`: sends
///     the task now; the same as `add::s(x, y).send(&app)`.
///   - `add::call(x, y)`: runs the body here and now, with no broker or
///     worker, and returns exactly what the function returns; for unit
///     tests. It is `async` for an `async fn` and plain for a `blocking`
///     one. Tasks that take a `TaskContext` have no `call`, since only a
///     worker makes a context.
///
/// # The function
///
/// - It is an `async fn`, run on the worker's async runtime, or a plain `fn`
///   declared `blocking`, run on the blocking thread pool so it never stalls
///   the runtime (or the lease heartbeats). A plain `fn` without `blocking`
///   is a compile error, as is an `async fn` with it.
/// - Its first parameter may be a `TaskContext` (matched by the last path
///   segment, so `TaskContext` and `celeriac::TaskContext` both work), taken
///   by value. It is not an argument: it carries the task id, retry count,
///   cancellation signal and the app.
/// - Every other parameter is an argument: a plain identifier (its name is
///   also the keyword-argument name, without any `r#`) of an owned type that
///   implements `serde::Serialize` and `serde::de::DeserializeOwned`.
///   References, patterns, `impl Trait`, `self`, generics, `where` clauses,
///   `unsafe` and `extern` are compile errors.
/// - The future an `async fn` returns must be `Send`, as a worker runs it
///   on a multi-threaded runtime.
///
/// # Return type
///
/// | the function returns | `Task::Output` | errors |
/// |---|---|---|
/// | `Result<T, E>` (any path ending in `Result`, also an alias such as `io::Result<T>`) | `T` | `E: Into<TaskError>`: `TaskError` itself, or any `std::error::Error + Send + Sync + 'static` (an ordinary, retried failure) |
/// | `T` | `T` | none |
/// | nothing | `()` | none |
///
/// `T` is stored as JSON, so it implements `Serialize` and
/// `DeserializeOwned`. Return `TaskError::permanent(..)` to fail without
/// retrying, and `TaskError::retry(..)` (or `ctx.retry(..)`) to ask for a
/// retry.
///
/// # Options
///
/// Options use Celery's names. Times are seconds, as integer or float
/// literals (`30`, `2.5`).
///
/// | option | value | effect (`TaskOptions`) |
/// |---|---|---|
/// | `name` | `"string"` | the stable task name (`NAME`); default `module_path!() + "." + fn name` |
/// | `queue` | `"string"` | the default queue; default: the app's routes, then `"celery"` |
/// | `priority` | integer `0..=9` | the default priority, higher first |
/// | `max_retries` | integer | retries allowed after the first attempt; default 0 |
/// | `retry_backoff` | seconds | the retry policy's base delay (`RetryPolicy::base`); default 1 |
/// | `retry_backoff_max` | seconds | the retry policy's largest delay (`RetryPolicy::cap`); default 600 |
/// | `retry_jitter` | `true`/`false` | full jitter on retry delays (`RetryPolicy::jitter`); default true |
/// | `soft_time_limit` | seconds | after this the task's cancellation signal fires |
/// | `time_limit` | seconds | after this the task is stopped and fails |
/// | `ignore_result` | flag, or `true`/`false` | store no result |
/// | `acks_late` | `true`/`false` (or flag) | acknowledge after running (default true) or before |
/// | `track_started` | `true`/`false` (or flag) | store `STARTED` (pid, worker name) when an attempt begins |
/// | `blocking` | flag, or `true`/`false` | run a plain `fn` on the blocking pool |
/// | `crate` | path, or `"path"` | where the facade is, when it is renamed; default `::celeriac` |
///
/// An unknown option, a repeated one, or a value of the wrong kind is a
/// compile error that points at it.
///
/// ```
/// use celeriac::{Task, TaskError};
/// use std::time::Duration;
///
/// #[celeriac::task(
///     name = "reports.render",
///     queue = "reports",
///     priority = 3,
///     max_retries = 5,
///     retry_backoff = 2,
///     retry_backoff_max = 120,
///     soft_time_limit = 50,
///     time_limit = 60.5,
///     ignore_result,
/// )]
/// async fn render(report_id: u64) -> Result<(), TaskError> {
///     Ok(())
/// }
///
/// let o = render::options();
/// assert_eq!(o.name, "reports.render");
/// assert_eq!(o.queue.as_deref(), Some("reports"));
/// assert_eq!(o.max_retries, 5);
/// assert_eq!(o.retry_policy.base, Duration::from_secs(2));
/// assert_eq!(o.time_limit, Some(Duration::from_millis(60_500)));
/// assert!(o.ignore_result);
/// ```
///
/// # Blocking tasks and the context
///
/// ```
/// use celeriac::{TaskContext, TaskError};
///
/// /// Hashes a file: CPU-heavy, so it runs on the blocking pool.
/// #[celeriac::task(blocking)]
/// fn checksum(data: Vec<u8>) -> u32 {
///     data.iter().fold(0u32, |h, b| h.rotate_left(5) ^ u32::from(*b))
/// }
///
/// /// Crawls until asked to stop (soft time limit, revoke or shutdown).
/// #[celeriac::task(name = "crawl", soft_time_limit = 30)]
/// async fn crawl(ctx: TaskContext, url: String) -> Result<u32, TaskError> {
///     let mut pages = 0;
///     while !ctx.is_cancelled() && pages < 10 {
///         pages += 1;
///     }
///     Ok(pages)
/// }
///
/// // `call` runs the body directly, for unit tests.
/// assert_eq!(checksum::call(vec![1, 2]), 34);
/// ```
///
/// # Testing a task's logic
///
/// ```
/// # use celeriac::TaskError;
/// #[celeriac::task(name = "tasks.div")]
/// async fn div(x: i64, y: i64) -> Result<i64, TaskError> {
///     if y == 0 {
///         return Err(TaskError::permanent("division by zero"));
///     }
///     Ok(x / y)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(div::call(6, 3).await.unwrap(), 2);
/// assert!(div::call(1, 0).await.is_err());
/// # }
/// ```
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut attr = options::TaskAttr::default();
    let parser = syn::meta::parser(|meta| attr.parse(meta));
    syn::parse_macro_input!(args with parser);
    let item = match syn::parse::<syn::ItemFn>(item) {
        Ok(item) => item,
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                "#[celeriac::task] applies to a function (`async fn`, or `fn` with `blocking`)",
            );
            return e.to_compile_error().into();
        }
    };
    match func::TaskFn::parse(item, attr.blocking) {
        Ok(f) => expand::expand(&attr, f).into(),
        Err(e) => e.to_compile_error().into(),
    }
}
