//! The `#[celeriac::task]` attribute, used as users use it: through the
//! facade only. Checks the generated names, options and argument decoding,
//! the `call`/`s`/`delay` helpers, and tasks running on a worker over
//! `memory://`.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use celeriac::core::{ArgsError, FromArgs, IntoArgs};
use celeriac::{App, GetError, RetryPolicy, Task, TaskContext, TaskError, TaskErrorKind};
use serde_json::{json, Map, Value};

const WAIT: Duration = Duration::from_secs(20);

/// Adds two numbers.
#[celeriac::task(name = "tasks.add", max_retries = 3)]
pub async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

#[celeriac::task]
async fn default_name() {}

#[celeriac::task(
    name = "tasks.configured",
    queue = "reports",
    priority = 7,
    max_retries = 5,
    retry_backoff = 2,
    retry_backoff_max = 90.5,
    retry_jitter = false,
    soft_time_limit = 10,
    time_limit = 12.25,
    ignore_result,
    acks_late = false
)]
async fn configured() {}

#[celeriac::task(name = "tasks.partial_policy", retry_backoff_max = 30)]
async fn partial_policy() {}

/// Takes every kind of argument: a raw identifier, an optional one, a
/// collection and a `mut` binding.
#[celeriac::task(name = "tasks.describe")]
async fn describe(
    r#type: String,
    mut count: u32,
    tags: Vec<String>,
    note: Option<String>,
) -> String {
    count += 1;
    format!("{type}:{count}:{}:{note:?}", tags.join(","))
}

#[celeriac::task(name = "tasks.div")]
async fn div(x: i64, y: i64) -> Result<i64, TaskError> {
    if y == 0 {
        return Err(
            TaskError::permanent("division by zero").with_type("ZeroDivisionError", "builtins")
        );
    }
    Ok(x / y)
}

/// Returns an alias `Result` whose error converts with `Into<TaskError>`.
#[celeriac::task(name = "tasks.parse")]
async fn parse(text: String) -> Result<i64, std::num::ParseIntError> {
    text.parse()
}

/// CPU-bound work on the blocking pool.
#[celeriac::task(name = "tasks.checksum", blocking)]
fn checksum(data: Vec<u8>) -> u32 {
    data.iter()
        .fold(0u32, |h, b| h.rotate_left(5) ^ u32::from(*b))
}

#[celeriac::task(name = "tasks.blocking_panics", blocking)]
fn blocking_panics() -> Result<(), TaskError> {
    panic!("boom in a blocking task")
}

/// Reports what the context says about the attempt.
#[celeriac::task(name = "tasks.whoami")]
async fn whoami(ctx: TaskContext, tag: String) -> Result<String, TaskError> {
    Ok(format!(
        "{tag}:{}:{}:{}",
        ctx.name(),
        ctx.id(),
        ctx.retries()
    ))
}

#[celeriac::task(name = "tasks.blocking_ctx", blocking)]
fn blocking_ctx(ctx: celeriac::TaskContext) -> String {
    ctx.name().to_owned()
}

/// Fails until it has been retried `n` times, then returns its retry count.
#[celeriac::task(
    name = "tasks.flaky",
    max_retries = 3,
    retry_backoff = 0.01,
    retry_backoff_max = 0.05
)]
async fn flaky(ctx: TaskContext, key: String, n: u32) -> Result<u32, TaskError> {
    bump(&key);
    if ctx.retries() < n {
        return Err(TaskError::fail("not yet"));
    }
    Ok(ctx.retries())
}

/// An argument named `app` must not clash with `delay`'s own `app`.
#[celeriac::task(name = "tasks.named_app")]
async fn named_app(app: String) -> String {
    app
}

/// Arguments named like the generated code's locals cannot clash with them.
#[celeriac::task(name = "tasks.hygiene")]
async fn hygiene(
    ctx: TaskContext,
    __ctx: u32,
    __args: u32,
    __reader: u32,
    __result: u32,
    __e: u32,
) -> Result<String, TaskError> {
    let sum = __ctx + __args + __reader + __result + __e;
    Ok(format!("{}:{sum}", ctx.name()))
}

/// A `#[cfg]` under the attribute removes every generated item, so this
/// unknown type is never compiled.
#[celeriac::task]
#[cfg(any())]
async fn compiled_out(x: NoSuchType) {}

mod nested {
    /// A task in a child module, visible to the parent only.
    #[celeriac::task]
    pub(crate) async fn inner(x: u8) -> u8 {
        x
    }
}

/// The facade under another path, for the `crate = ...` option.
mod renamed {
    pub use celeriac::*;
}

#[celeriac::task(name = "tasks.renamed", crate = crate::renamed)]
async fn via_renamed(x: u8) -> u8 {
    x
}

/// Counts runs per key, so a test can see how often its task ran.
fn runs() -> &'static Mutex<HashMap<String, u32>> {
    static RUNS: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    RUNS.get_or_init(Default::default)
}

fn bump(key: &str) -> u32 {
    let mut m = runs().lock().unwrap();
    let n = m.entry(key.to_owned()).or_insert(0);
    *n += 1;
    *n
}

fn count(key: &str) -> u32 {
    runs().lock().unwrap().get(key).copied().unwrap_or(0)
}

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn args_of<T: Task>(args: Vec<Value>, kwargs: Value) -> Result<T::Args, ArgsError> {
    T::Args::from_args(args, kw(kwargs))
}

/// A fresh app on its own in-memory store with every task registered.
async fn app() -> App {
    App::builder()
        .broker(format!("memory://{}", celeriac::TaskId::new()))
        .task(add)
        .task(describe)
        .task(div)
        .task(parse)
        .task(checksum)
        .task(blocking_panics)
        .task(whoami)
        .task(blocking_ctx)
        .task(flaky)
        .task(named_app)
        .task(default_name)
        .task(hygiene)
        .build()
        .await
        .unwrap()
}

#[test]
fn name_defaults_to_module_path_and_fn_name() {
    assert_eq!(add::NAME, "tasks.add");
    assert_eq!(default_name::NAME, "macros.default_name");
    assert_eq!(nested::inner::NAME, "macros::nested.inner");
    assert_eq!(<add as Task>::options().name, "tasks.add");
    assert_eq!(default_name::options().name, default_name::NAME);
}

#[test]
fn options_map_to_task_options() {
    let o = configured::options();
    assert_eq!(o.name, "tasks.configured");
    assert_eq!(o.queue.as_deref(), Some("reports"));
    assert_eq!(o.priority, Some(7));
    assert_eq!(o.max_retries, 5);
    assert_eq!(
        o.retry_policy,
        RetryPolicy {
            base: Duration::from_secs(2),
            cap: Duration::from_millis(90_500),
            jitter: false,
        }
    );
    assert_eq!(o.soft_time_limit, Some(Duration::from_secs(10)));
    assert_eq!(o.time_limit, Some(Duration::from_millis(12_250)));
    assert!(o.ignore_result);
    assert!(!o.acks_late);
    assert!(!o.blocking);

    // Unset options keep the defaults, field by field.
    let o = partial_policy::options();
    let defaults = RetryPolicy::default();
    assert_eq!(o.retry_policy.base, defaults.base);
    assert_eq!(o.retry_policy.cap, Duration::from_secs(30));
    assert_eq!(o.retry_policy.jitter, defaults.jitter);
    assert_eq!(o.queue, None);
    assert_eq!(o.max_retries, 0);
    assert!(o.acks_late);

    assert!(checksum::options().blocking);
    assert_eq!(add::options().max_retries, 3);
}

#[test]
fn args_read_by_position_by_name_and_mixed() {
    let by_position = args_of::<add>(vec![json!(2), json!(3)], json!({})).unwrap();
    assert_eq!((by_position.x, by_position.y), (2, 3));

    let by_name = args_of::<add>(vec![], json!({"y": 3, "x": 2})).unwrap();
    assert_eq!((by_name.x, by_name.y), (2, 3));

    let mixed = args_of::<add>(vec![json!(2)], json!({"y": 3})).unwrap();
    assert_eq!((mixed.x, mixed.y), (2, 3));

    // A raw identifier is named without its `r#`; a missing `Option` is None.
    let d = args_of::<describe>(vec![json!("a"), json!(1)], json!({"tags": ["t"]})).unwrap();
    assert_eq!(d.r#type, "a");
    assert_eq!(d.note, None);

    // No arguments at all.
    args_of::<default_name>(vec![], json!({})).unwrap();
}

#[test]
fn args_report_each_mistake() {
    assert_eq!(
        args_of::<add>(vec![json!(2)], json!({})).unwrap_err(),
        ArgsError::Missing { name: "y".into() }
    );
    assert_eq!(
        args_of::<add>(vec![json!(1), json!(2), json!(3)], json!({})).unwrap_err(),
        ArgsError::TooMany {
            expected: 2,
            got: 3
        }
    );
    assert_eq!(
        args_of::<add>(vec![json!(1), json!(2)], json!({"z": 3})).unwrap_err(),
        ArgsError::Unexpected { name: "z".into() }
    );
    assert_eq!(
        args_of::<add>(vec![json!(1), json!(2)], json!({"x": 3})).unwrap_err(),
        ArgsError::Duplicate { name: "x".into() }
    );
    let err = args_of::<add>(vec![json!(1), json!("two")], json!({})).unwrap_err();
    assert!(
        matches!(&err, ArgsError::WrongType { name, .. } if name == "y"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "argument `y` has the wrong type: invalid type: string \"two\", expected i64"
    );
    assert!(matches!(
        args_of::<default_name>(vec![json!(1)], json!({})).unwrap_err(),
        ArgsError::TooMany {
            expected: 0,
            got: 1
        }
    ));
}

#[test]
fn args_encode_positionally_and_round_trip() {
    let args = args_of::<describe>(
        vec![json!("a"), json!(1), json!(["x", "y"])],
        json!({"note": "n"}),
    )
    .unwrap();
    let (positional, kwargs) = args.into_args().unwrap();
    assert_eq!(
        positional,
        vec![json!("a"), json!(1), json!(["x", "y"]), json!("n")]
    );
    assert!(kwargs.is_empty());
    let back = <describe as Task>::Args::from_args(positional, kwargs).unwrap();
    assert_eq!(back.tags, ["x", "y"]);
}

#[tokio::test]
async fn call_runs_the_body_directly() {
    assert_eq!(add::call(2, 3).await.unwrap(), 5);
    assert_eq!(div::call(7, 2).await.unwrap(), 3);
    let e = div::call(1, 0).await.unwrap_err();
    assert_eq!(e.kind(), TaskErrorKind::Permanent);
    assert_eq!(e.exception().exc_type, "ZeroDivisionError");
    assert!(parse::call("x".into()).await.is_err());
    assert_eq!(
        describe::call("k".into(), 1, vec!["a".into(), "b".into()], None).await,
        "k:2:a,b:None"
    );
    assert_eq!(checksum::call(vec![1, 2]), 34);
    assert_eq!(nested::inner::call(4).await, 4);
}

#[tokio::test]
async fn signature_builds_the_message() {
    let app = app().await;
    let m = add::s(2, 3)
        .countdown(Duration::from_secs(60))
        .into_message(&app)
        .unwrap();
    assert_eq!(m.headers.task, "tasks.add");
    assert_eq!(m.body.args, vec![json!(2), json!(3)]);
    assert!(m.body.kwargs.is_empty());
    assert!(m.headers.eta.is_some());

    // The trait's `s` takes the arguments struct; the inherent one shadows
    // it for users but both build the same call.
    let args = args_of::<add>(vec![json!(2), json!(3)], json!({})).unwrap();
    let m = <add as Task>::s(args).into_message(&app).unwrap();
    assert_eq!(m.body.args, vec![json!(2), json!(3)]);

    // `crate = ...` generates the same items through another path.
    assert_eq!(via_renamed::NAME, "tasks.renamed");
    let m = via_renamed::s(9).into_message(&app).unwrap();
    assert_eq!(m.body.args, vec![json!(9)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_on_a_worker() {
    let app = app().await;
    let sum = add::delay(&app, 2, 3).await.unwrap();
    let described = describe::delay(&app, "t".into(), 0, vec!["x".into()], Some("n".into()))
        .await
        .unwrap();
    let parsed = parse::delay(&app, "41".into()).await.unwrap();
    let unit = default_name::delay(&app).await.unwrap();
    let named = named_app::delay(&app, "mine".into()).await.unwrap();
    let worker = app.worker().spawn();

    assert_eq!(sum.get(WAIT).await.unwrap(), 5);
    assert_eq!(described.get(WAIT).await.unwrap(), "t:1:x:Some(\"n\")");
    assert_eq!(parsed.get(WAIT).await.unwrap(), 41);
    unit.get(WAIT).await.unwrap();
    assert_eq!(named.get(WAIT).await.unwrap(), "mine");

    worker.stop();
    worker.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_reach_the_result() {
    let app = app().await;
    let zero = div::delay(&app, 1, 0).await.unwrap();
    let bad = parse::delay(&app, "nope".into()).await.unwrap();
    let worker = app.worker().spawn();

    match zero.get(WAIT).await {
        Err(GetError::Failed { exception, .. }) => {
            assert_eq!(exception.exc_type, "ZeroDivisionError");
            assert_eq!(exception.exc_message, "division by zero");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    match bad.get(WAIT).await {
        Err(GetError::Failed { exception, .. }) => {
            assert!(
                exception.exc_message.contains("invalid digit"),
                "{exception:?}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }

    worker.stop();
    worker.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_tasks_run_on_the_blocking_pool() {
    let app = app().await;
    let sum = checksum::delay(&app, vec![1, 2]).await.unwrap();
    let panics = blocking_panics::delay(&app).await.unwrap();
    let named = blocking_ctx::delay(&app).await.unwrap();
    let worker = app.worker().spawn();

    assert_eq!(sum.get(WAIT).await.unwrap(), 34);
    assert_eq!(named.get(WAIT).await.unwrap(), "tasks.blocking_ctx");
    match panics.get(WAIT).await {
        Err(GetError::Failed { exception, .. }) => {
            assert!(
                exception.exc_message.contains("boom in a blocking task"),
                "{exception:?}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }

    worker.stop();
    worker.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_is_passed_and_is_not_an_argument() {
    let app = app().await;
    let r = whoami::delay(&app, "hi".into()).await.unwrap();
    let id = r.id().clone();
    let clashing = hygiene::delay(&app, 1, 2, 3, 4, 5).await.unwrap();
    let worker = app.worker().spawn();

    assert_eq!(clashing.get(WAIT).await.unwrap(), "tasks.hygiene:15");
    let args = args_of::<hygiene>(
        vec![json!(1)],
        json!({"__args": 2, "__reader": 3, "__result": 4, "__e": 5}),
    );
    assert_eq!(
        args.unwrap().into_args().unwrap().0,
        vec![json!(1), json!(2), json!(3), json!(4), json!(5)]
    );

    assert_eq!(
        r.get(WAIT).await.unwrap(),
        format!("hi:tasks.whoami:{id}:0")
    );
    // The context takes no argument slot: one positional argument only.
    let args = args_of::<whoami>(vec![json!("a")], json!({})).unwrap();
    assert_eq!(args.into_args().unwrap().0, vec![json!("a")]);

    worker.stop();
    worker.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_retries_drive_the_worker() {
    let app = app().await;
    let key = celeriac::TaskId::new().to_string();
    let r = flaky::delay(&app, key.clone(), 2).await.unwrap();
    let worker = app.worker().spawn();

    assert_eq!(r.get(WAIT).await.unwrap(), 2);
    assert_eq!(count(&key), 3);

    worker.stop();
    worker.join().await.unwrap();
}

#[test]
fn generated_items_are_copyable_tasks_and_send() {
    fn assert_task<T: Task + Copy + Default + std::fmt::Debug>(_: T) {}
    fn assert_send<T: Send>(_: &T) {}
    assert_task(add);
    assert_eq!(format!("{add:?}"), "add");
    let args = args_of::<add>(vec![json!(1), json!(2)], json!({})).unwrap();
    assert_eq!(format!("{args:?}"), "__add_Args { .. }");
    assert_send(&add::call(1, 2));
    assert_send(&whoami::s("x".into()));
}
