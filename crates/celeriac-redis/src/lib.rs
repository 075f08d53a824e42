//! Redis broker and result backend for celeriac, wire-compatible with
//! Celery and kombu.

pub mod envelope;
pub mod results;
pub use results::RedisBackend;
