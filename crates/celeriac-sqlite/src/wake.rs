//! Wake-ups without a polling loop, within a process and across processes.
//!
//! Two counters in the `meta` table change in the same transaction as the
//! data they announce: `ready_version` when messages were published or put
//! back (something may be fetchable, or a new eta must be waited for), and
//! `result_version` when results were stored. Waiters sleep on a
//! [`Notify`] for each.
//!
//! * **In this handle**, the `Notify` is signalled as soon as the commit is
//!   flushed, by whichever thread flushed it (see `writer::durable`).
//! * **In other handles and other processes**, the committing writer then
//!   writes one byte to a sidecar file, `<database>-notify`, and every
//!   handle's inotify thread is woken (`IN_MODIFY`), re-reads the two
//!   counters and signals its own `Notify` if either moved.
//!
//! Why a sidecar rather than the `-wal` file itself: SQLite's last `write`
//! to the log comes *before* the commit becomes visible (the `fsync` and
//! the shared-memory index update follow, and neither is seen by inotify),
//! so a reader woken by the log write usually finds nothing new yet and
//! would have to poll. The sidecar is written after the commit and its
//! flush.
//!
//! As a safety net (no inotify, a deleted sidecar, another tool writing the
//! file) a second thread also re-reads the counters every
//! [`FALLBACK_INTERVAL`]; this is one indexed read, not a fetch.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{Error, ErrorKind};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use rusqlite::Connection;
use tokio::sync::Notify;

use crate::util::db_error;

/// How often the watcher re-reads the counters when no event came.
pub(crate) const FALLBACK_INTERVAL: Duration = Duration::from_millis(500);

/// State shared by a handle, its writer and syncer threads and its watcher
/// threads.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Signalled when messages may have become fetchable (or a new eta exists).
    pub(crate) ready: Notify,
    /// Signalled when results were stored.
    pub(crate) results: Notify,
    /// The last `ready_version` this handle's writer committed and signalled.
    pub(crate) local_ready_version: AtomicI64,
    /// The last `result_version` this handle's writer committed and signalled.
    pub(crate) local_result_version: AtomicI64,
    /// The last `ready_version` the watcher threads read.
    seen_ready_version: AtomicI64,
    /// The last `result_version` the watcher threads read.
    seen_result_version: AtomicI64,
}

impl Shared {
    /// Reads the change counters on `conn` and signals whichever moved,
    /// unless this handle's own writer already did.
    fn check(&self, conn: &Connection) {
        let (ready, results) = match read_versions(conn) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the change counters");
                return;
            }
        };
        if self.seen_ready_version.swap(ready, Ordering::SeqCst) != ready
            && self.local_ready_version.load(Ordering::SeqCst) != ready
        {
            self.ready.notify_waiters();
        }
        if self.seen_result_version.swap(results, Ordering::SeqCst) != results
            && self.local_result_version.load(Ordering::SeqCst) != results
        {
            self.results.notify_waiters();
        }
    }
}

/// Returns the path of the sidecar file written after announcing commits.
pub(crate) fn sidecar_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-notify");
    PathBuf::from(s)
}

/// The sidecar file, as the writer holds it.
#[derive(Debug)]
pub(crate) struct Sidecar {
    file: File,
}

impl Sidecar {
    /// Opens (creating) the sidecar next to the database.
    pub(crate) fn open(db: &Path) -> Result<Self, Error> {
        let path = sidecar_path(db);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Other,
                    format!("cannot open the wake-up file {}", path.display()),
                    e,
                )
            })?;
        Ok(Sidecar { file })
    }

    /// Tells the other handles that a commit announced something.
    pub(crate) fn touch(&self) {
        // A failed touch only delays other processes until their fallback
        // re-read, so it is logged, not returned.
        if let Err(e) = self.file.write_at(&[1], 0) {
            tracing::debug!(error = %e, "cannot write the wake-up file");
        }
    }
}

/// Reads the two change counters.
pub(crate) fn read_versions(conn: &Connection) -> Result<(i64, i64), Error> {
    conn.prepare_cached(
        "SELECT (SELECT value FROM meta WHERE name = 'ready_version'),
                (SELECT value FROM meta WHERE name = 'result_version')",
    )
    .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
    .map_err(|e| db_error("cannot read the change counters", e))
}

/// The running watcher threads; dropping this stops them.
#[derive(Debug)]
pub(crate) struct Watcher {
    stop: mpsc::Sender<()>,
    watch: Option<(Watches, WatchDescriptor)>,
}

impl Watcher {
    /// Starts the inotify thread (if inotify works) and the fallback thread
    /// for the database at `db`, opening read connections with `connect`.
    pub(crate) fn start(
        db: &Path,
        connect: impl Fn() -> Result<Connection, Error>,
        shared: Arc<Shared>,
    ) -> Result<Self, Error> {
        let fallback_conn = connect()?;
        let (ready, results) = read_versions(&fallback_conn)?;
        shared.seen_ready_version.store(ready, Ordering::SeqCst);
        shared.seen_result_version.store(results, Ordering::SeqCst);
        let watch = match connect().and_then(|conn| {
            start_inotify(&sidecar_path(db), conn, Arc::clone(&shared)).map_err(|e| {
                Error::with_source(ErrorKind::Other, "cannot watch the wake-up file", e)
            })
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    error = %e.chain_text(),
                    "inotify is unavailable; other processes' commits are seen within 500 ms"
                );
                None
            }
        };
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("celeriac-watch".into())
            .spawn(move || {
                // Either a stop or every sender gone ends the loop.
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(FALLBACK_INTERVAL)
                {
                    shared.check(&fallback_conn);
                }
            })
            .map_err(|e| Error::with_source(ErrorKind::Other, "cannot start the watcher", e))?;
        Ok(Watcher { stop, watch })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some((mut watches, wd)) = self.watch.take() {
            // Removing the watch queues IN_IGNORED, which ends the inotify
            // thread's blocking read.
            let _ = watches.remove(wd);
        }
    }
}

fn start_inotify(
    sidecar: &Path,
    conn: Connection,
    shared: Arc<Shared>,
) -> std::io::Result<(Watches, WatchDescriptor)> {
    let mut inotify = Inotify::init()?;
    let mut watches = inotify.watches();
    let wd = watches.add(sidecar, WatchMask::MODIFY)?;
    std::thread::Builder::new()
        .name("celeriac-notify".into())
        .spawn(move || {
            let mut buf = [0u8; 1024];
            loop {
                let events = match inotify.read_events_blocking(&mut buf) {
                    Ok(events) => events,
                    Err(e) => {
                        tracing::warn!(error = %e, "inotify read failed; falling back to periodic checks");
                        return;
                    }
                };
                let mut ended = false;
                for event in events {
                    ended |= event.mask.contains(EventMask::IGNORED);
                }
                if ended {
                    return;
                }
                // One read covers every event of the batch.
                shared.check(&conn);
            }
        })?;
    Ok((watches, wd))
}
