//! Signatures: a task with its arguments and per-call options, ready to send
//! (Celery's `apply_async`).

use std::marker::PhantomData;
use std::time::Duration;

use celeriac_core::{Error, ErrorKind, IntoArgs, Message, TaskId};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::app::App;
use crate::result::AsyncResult;
use crate::task::Task;

/// Per-call options, as Celery's `apply_async` takes them.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CallOptions {
    /// The queue; overrides the task's and the routes.
    pub queue: Option<String>,
    /// The priority, 0..=9, higher first.
    pub priority: Option<u8>,
    /// Do not run before this instant.
    pub eta: Option<DateTime<Utc>>,
    /// Run not before this long from now (turned into `eta` at send).
    pub countdown: Option<Duration>,
    /// Do not run after this instant.
    pub expires: Option<DateTime<Utc>>,
    /// The task id; a fresh UUID when unset.
    pub task_id: Option<TaskId>,
    /// Store no result.
    pub ignore_result: Option<bool>,
    /// Soft time limit for this call.
    pub soft_time_limit: Option<Duration>,
    /// Hard time limit for this call.
    pub time_limit: Option<Duration>,
}

impl CallOptions {
    /// Builds the message for task `name` with these options over the task's
    /// declared defaults.
    pub(crate) fn build_message(
        &self,
        app: &App,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Message {
        let mut m = Message::new(name, args, kwargs);
        if let Some(id) = &self.task_id {
            m.headers.id = id.clone();
            m.headers.root_id = Some(id.clone());
            m.properties.correlation_id = Some(id.as_str().to_owned());
        }
        let declared = app.registry().options(name);
        let queue = self
            .queue
            .clone()
            .or_else(|| declared.and_then(|o| o.queue.clone()))
            .unwrap_or_else(|| app.route(name));
        m.set_queue(queue);
        m.properties.priority = self.priority.or(declared.and_then(|o| o.priority));
        let now = Utc::now();
        m.headers.eta = match (self.eta, self.countdown) {
            (Some(eta), _) => Some(eta),
            (None, Some(c)) => chrono::Duration::from_std(c).ok().map(|c| now + c),
            (None, None) => None,
        };
        if let Some(exp) = self.expires {
            m.headers.expires = Some(exp);
            let ttl = (exp - now).num_milliseconds().max(0);
            m.properties.expiration = Some(ttl.to_string());
        }
        m.headers.ignore_result = self
            .ignore_result
            .or(declared.map(|o| o.ignore_result))
            .unwrap_or(false);
        let soft = self
            .soft_time_limit
            .or(declared.and_then(|o| o.soft_time_limit));
        let hard = self.time_limit.or(declared.and_then(|o| o.time_limit));
        m.headers.timelimit.soft = soft.map(|d| d.as_secs_f64());
        m.headers.timelimit.hard = hard.map(|d| d.as_secs_f64());
        m.headers.origin = Some(app.origin().to_owned());
        m
    }
}

macro_rules! option_setters {
    () => {
        /// Sends to this queue.
        pub fn queue(mut self, queue: impl Into<String>) -> Self {
            self.options.queue = Some(queue.into());
            self
        }

        /// Sends with this priority (0..=9, higher runs first).
        pub fn priority(mut self, priority: u8) -> Self {
            self.options.priority = Some(priority.min(9));
            self
        }

        /// Runs not before `eta`.
        pub fn eta(mut self, eta: DateTime<Utc>) -> Self {
            self.options.eta = Some(eta);
            self
        }

        /// Runs not before `countdown` from now.
        pub fn countdown(mut self, countdown: Duration) -> Self {
            self.options.countdown = Some(countdown);
            self
        }

        /// Does not run after `expires` (then the state is `REVOKED`).
        pub fn expires(mut self, expires: DateTime<Utc>) -> Self {
            self.options.expires = Some(expires);
            self
        }

        /// Does not run after `d` from now.
        pub fn expires_in(mut self, d: Duration) -> Self {
            self.options.expires = chrono::Duration::from_std(d).ok().map(|d| Utc::now() + d);
            self
        }

        /// Uses this task id.
        pub fn task_id(mut self, id: impl Into<TaskId>) -> Self {
            self.options.task_id = Some(id.into());
            self
        }

        /// Stores no result (or does, overriding the task).
        pub fn ignore_result(mut self, yes: bool) -> Self {
            self.options.ignore_result = Some(yes);
            self
        }

        /// Sets the soft time limit for this call.
        pub fn soft_time_limit(mut self, d: Duration) -> Self {
            self.options.soft_time_limit = Some(d);
            self
        }

        /// Sets the hard time limit for this call.
        pub fn time_limit(mut self, d: Duration) -> Self {
            self.options.time_limit = Some(d);
            self
        }

        /// Returns the options set so far.
        pub fn options(&self) -> &CallOptions {
            &self.options
        }
    };
}

/// A typed task call, ready to send.
///
/// ```no_run
/// # use celeriac::{App, Task, TaskContext, TaskError};
/// # struct Add;
/// # impl Task for Add {
/// #     const NAME: &'static str = "tasks.add";
/// #     type Args = (i64, i64);
/// #     type Output = i64;
/// #     async fn run(_: TaskContext, (x, y): (i64, i64)) -> Result<i64, TaskError> { Ok(x + y) }
/// # }
/// # async fn demo(app: App) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let r = Add::s((2, 3)).countdown(Duration::from_secs(1)).queue("math").send(&app).await?;
/// assert_eq!(r.get(Duration::from_secs(5)).await?, 5);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Signature<T: Task> {
    args: T::Args,
    options: CallOptions,
    _task: PhantomData<fn() -> T>,
}

impl<T: Task> Signature<T> {
    /// Returns a signature of `T` with `args` and no options.
    pub fn new(args: T::Args) -> Self {
        Signature {
            args,
            options: CallOptions::default(),
            _task: PhantomData,
        }
    }

    option_setters!();

    /// Builds the message without sending it.
    pub fn into_message(self, app: &App) -> Result<Message, Error> {
        let (args, kwargs) = self.args.into_args().map_err(|e| {
            Error::with_source(ErrorKind::InvalidInput, "cannot encode task arguments", e)
        })?;
        Ok(self.options.build_message(app, T::NAME, args, kwargs))
    }

    /// Sends the task and returns a handle to its result.
    pub async fn send(self, app: &App) -> Result<AsyncResult<T::Output>, Error> {
        let message = self.into_message(app)?;
        let id = message.id().clone();
        let ignored = message.headers.ignore_result;
        app.publish(vec![message]).await?;
        Ok(AsyncResult::new(app.clone(), id).ignoring(ignored))
    }
}

/// An untyped task call by name, for tasks this process does not register
/// (for example ones a Python worker runs).
///
/// ```no_run
/// # async fn demo(app: celeriac::App) -> Result<(), Box<dyn std::error::Error>> {
/// use serde_json::json;
/// let r = app.send_task("tasks.add").args(vec![json!(2), json!(3)]).send().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SendTask<'a> {
    app: &'a App,
    name: String,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    options: CallOptions,
}

impl<'a> SendTask<'a> {
    pub(crate) fn new(app: &'a App, name: String) -> Self {
        SendTask {
            app,
            name,
            args: Vec::new(),
            kwargs: Map::new(),
            options: CallOptions::default(),
        }
    }

    /// Sets the positional arguments.
    pub fn args(mut self, args: Vec<Value>) -> Self {
        self.args = args;
        self
    }

    /// Sets the keyword arguments.
    pub fn kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }

    option_setters!();

    /// Builds the message without sending it.
    pub fn into_message(self) -> Message {
        self.options
            .build_message(self.app, &self.name, self.args, self.kwargs)
    }

    /// Sends the task and returns a handle to its (untyped) result.
    pub async fn send(self) -> Result<AsyncResult<Value>, Error> {
        let app = self.app.clone();
        let message = self.into_message();
        let id = message.id().clone();
        let ignored = message.headers.ignore_result;
        app.publish(vec![message]).await?;
        Ok(AsyncResult::new(app, id).ignoring(ignored))
    }
}
