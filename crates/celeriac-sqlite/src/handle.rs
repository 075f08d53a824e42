//! [`SqliteBroker`], the handle: opening the file, starting the writer and
//! watcher threads, and sending commands to the writer.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{mpsc, Arc};

use celeriac_core::{Error, ErrorKind};
use tokio::sync::oneshot;

use crate::config::{Config, SqliteBrokerBuilder, Synchronous};
use crate::reader::Readers;
use crate::schema;
use crate::util::{closed, db_error, duration_ms};
use crate::wake::{Shared, Sidecar, Watcher};
use crate::writer::durable::{self, Announcer, Completion};
use crate::writer::{self, Answer, Command, Finishing, NewRow, Op, WriterConfig};

/// The embedded durable broker and result backend: one SQLite file.
///
/// Cloning is cheap and every clone shares the same writer. The writer and
/// watcher threads stop when the last clone is dropped, after finishing
/// the commands already sent. See the [crate docs](crate) for the design.
#[derive(Clone)]
pub struct SqliteBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    commands: mpsc::Sender<Command>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) readers: Arc<Readers>,
    /// Where the next fetch starts among its queues (fairness).
    pub(crate) rotation: AtomicUsize,
    _watcher: Watcher,
}

impl fmt::Debug for SqliteBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBroker")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteBroker {
    /// Opens (creating if needed) the database at `path` with the default
    /// options: `fsync` on every commit, no queue limit, results kept a day.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), celeriac_core::Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let broker = celeriac_sqlite::SqliteBroker::open(dir.path().join("jobs.db")).await?;
    /// assert!(broker.path().ends_with("jobs.db"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        SqliteBrokerBuilder::new(path).build().await
    }

    /// Returns a builder for the database at `path`, to set options.
    pub fn builder(path: impl AsRef<Path>) -> SqliteBrokerBuilder {
        SqliteBrokerBuilder::new(path)
    }

    /// Opens the database named by a `sqlite://` URL; see the
    /// [crate docs](crate#urls) for the format and options.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), celeriac_core::Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let url = format!("sqlite://{}?sync=normal", dir.path().join("jobs.db").display());
    /// let broker = celeriac_sqlite::SqliteBroker::from_url(&url).await?;
    /// # drop(broker);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn from_url(url: &str) -> Result<Self, Error> {
        SqliteBrokerBuilder::from_url(url)?.build().await
    }

    /// Returns the path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(crate) async fn open_config(config: Config) -> Result<Self, Error> {
        tokio::task::spawn_blocking(move || Self::open_blocking(config))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Other, "opening the database failed", e))?
    }

    fn open_blocking(config: Config) -> Result<Self, Error> {
        let conn = schema::connect(&config)?;
        schema::migrate(&conn)?;
        // The writer never flushes inside COMMIT nor checkpoints there: the
        // syncer and the checkpointer threads do (see `writer::durable`).
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;")
            .map_err(|e| db_error("cannot configure the writer", e))?;
        let shared = Arc::new(Shared::default());
        let announcer = Arc::new(Announcer::new(
            Arc::clone(&shared),
            Sidecar::open(&config.path)?,
        ));
        let wal_path = durable::wal_path(&config.path);
        let completion = match config.synchronous {
            Synchronous::Normal => Completion::Direct(announcer),
            Synchronous::Full => durable::synced(&wal_path, announcer)?,
        };
        let commits = Arc::new(AtomicU64::new(0));
        let checkpoints =
            durable::spawn_checkpointer(schema::connect(&config)?, Arc::clone(&commits))?;
        let (commands, received) = mpsc::channel();
        writer::spawn(
            conn,
            received,
            Finishing {
                completion,
                checkpoints,
                commits,
                wal_path,
            },
            WriterConfig {
                max_queue_length: config.max_queue_length,
                result_expiry_ms: duration_ms(config.result_expiry),
            },
        )?;
        let watcher = Watcher::start(
            &config.path,
            || schema::connect_reader(&config),
            Arc::clone(&shared),
        )?;
        Ok(SqliteBroker {
            inner: Arc::new(Inner {
                path: config.path.clone(),
                commands,
                shared,
                readers: Arc::new(Readers::new(config)),
                rotation: AtomicUsize::new(0),
                _watcher: watcher,
            }),
        })
    }

    /// Sends an operation to the writer and waits for its commit.
    pub(crate) async fn call(&self, op: Op) -> Result<Answer, Error> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command { op, reply })
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Stores `bytes` as a message of `queue` with task id `id`, as they
    /// are: lets tests plant a row that does not decode.
    #[doc(hidden)]
    pub async fn insert_raw_for_test(
        &self,
        queue: &str,
        id: &str,
        bytes: Vec<u8>,
    ) -> Result<(), Error> {
        let row = NewRow {
            id: id.to_owned(),
            task: String::new(),
            queue: queue.to_owned(),
            priority: 0,
            eta_ms: None,
            payload: bytes,
        };
        expect_done(self.call(Op::Publish(vec![row])).await?)
    }
}

/// Returns the answer of an operation that answers nothing but success or
/// a refusal.
pub(crate) fn expect_done(answer: Answer) -> Result<(), Error> {
    match answer {
        Answer::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// Returns the error for an answer of the wrong kind (a bug or a refusal).
pub(crate) fn unexpected(answer: Answer) -> Error {
    match answer {
        Answer::Refused(e) => e,
        Answer::LeaseLost => Error::new(ErrorKind::LeaseLost, "the lease is no longer held"),
        other => Error::new(
            ErrorKind::Other,
            format!("unexpected answer from the sqlite writer: {other:?}"),
        ),
    }
}
