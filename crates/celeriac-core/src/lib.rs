//! The vocabulary of celeriac, shared by the facade, the worker and every
//! backend. This crate performs no I/O and starts no runtime.
//!
//! **Semver-exempt before 1.0**: the seam traits may change between minor
//! releases. Depend on the `celeriac` facade for a stable surface.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`id`] | [`TaskId`], a task's identity (a UUID string, as Celery uses) |
//! | [`message`] | [`Message`]: Celery protocol v2 headers, properties and body |
//! | [`codec`] | encoding a [`Message`] to bytes and back, with clear errors |
//! | [`args`] | [`FromArgs`] / [`IntoArgs`]: typed arguments from positional args and kwargs |
//! | [`task`] | [`TaskOptions`] and [`TaskError`] (the `Task` trait is in the facade) |
//! | [`retry`] | [`RetryPolicy`]: capped exponential backoff with full jitter |
//! | [`state`] | [`TaskState`], Celery's uppercase states |
//! | [`result`] | [`TaskResult`], the stored outcome in Celery's result layout |
//! | [`broker`] | the [`Broker`] seam: publish, fetch with a lease, settle, extend |
//! | [`backend`] | the [`ResultBackend`] seam: store, get, wait, forget |
//! | [`error`] | [`Error`] and [`ErrorKind`], shared by every backend |

pub mod args;
pub mod backend;
pub mod broker;
pub mod codec;
pub mod error;
pub mod id;
pub mod message;
pub mod result;
pub mod retry;
pub mod state;
pub mod task;
pub mod wire;

pub use args::{ArgsError, FromArgs, IntoArgs};
pub use backend::DynResultBackend;
pub use backend::ResultBackend;
pub use broker::{
    Broker, Capabilities, DeadLetter, Delivery, DynBroker, FetchRequest, Lease, LeaseStatus,
    PriorityOrder, QueueStats, Revoked, Settlement,
};
pub use error::{Error, ErrorKind};
pub use id::TaskId;
pub use message::{Body, Embed, Headers, Message, Properties};
pub use result::{ExceptionInfo, TaskResult};
pub use retry::RetryPolicy;
pub use state::TaskState;
pub use task::{TaskError, TaskErrorKind, TaskOptions};

/// The queue a task goes to when neither the task nor the call names one,
/// as in Celery.
pub const DEFAULT_QUEUE: &str = "celery";
