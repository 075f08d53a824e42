//! The task registry: task name to a type-erased handler.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use celeriac_core::args::ArgsError;
use celeriac_core::{FromArgs, TaskError, TaskOptions};
use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::task::{Task, TaskContext};

/// Why a call did not produce a value.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The arguments did not fit the task's signature.
    Args(ArgsError),
    /// The task returned an error.
    Task(TaskError),
    /// The return value could not be encoded.
    Encode(serde_json::Error),
}

/// A registered task with its types erased.
pub(crate) trait Handler: Send + Sync + 'static {
    fn options(&self) -> &TaskOptions;
    /// Returns the name the task is registered under.
    fn name(&self) -> &'static str;
    fn call(
        &self,
        ctx: TaskContext,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> BoxFuture<'static, Result<Value, CallError>>;
}

struct TypedHandler<T> {
    options: TaskOptions,
    _task: PhantomData<fn() -> T>,
}

impl<T: Task> Handler for TypedHandler<T> {
    fn options(&self) -> &TaskOptions {
        &self.options
    }

    fn name(&self) -> &'static str {
        T::NAME
    }

    fn call(
        &self,
        ctx: TaskContext,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> BoxFuture<'static, Result<Value, CallError>> {
        let args = match T::Args::from_args(args, kwargs) {
            Ok(a) => a,
            Err(e) => return Box::pin(std::future::ready(Err(CallError::Args(e)))),
        };
        let fut = T::run(ctx, args);
        Box::pin(async move {
            let out = fut.await.map_err(CallError::Task)?;
            serde_json::to_value(out).map_err(CallError::Encode)
        })
    }
}

/// Task name to handler. Built once by the app builder, then read-only.
#[derive(Default, Clone)]
pub(crate) struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.handlers.keys().collect();
        names.sort();
        f.debug_struct("Registry").field("tasks", &names).finish()
    }
}

impl Registry {
    pub(crate) fn register<T: Task>(&mut self) {
        let options = T::options();
        self.handlers.insert(
            T::NAME.to_owned(),
            Arc::new(TypedHandler::<T> {
                options,
                _task: PhantomData,
            }),
        );
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(name)
    }

    pub(crate) fn options(&self, name: &str) -> Option<&TaskOptions> {
        self.handlers.get(name).map(|h| h.options())
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}
