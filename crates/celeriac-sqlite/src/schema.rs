//! The database layout, and how every connection is opened.
//!
//! # Tables
//!
//! | table | holds |
//! |---|---|
//! | `tasks` | every message not yet settled, one row each |
//! | `dead_letters` | messages moved aside with a reason, bytes as they were |
//! | `results` | task results as Celery's JSON, with an expiry |
//! | `revocations` | ids revoked before any message with them was seen |
//! | `meta` | counters: the next row number, the next fencing token and two change versions |
//!
//! A `tasks` row is in one of three states. `not_before` means "the eta"
//! for a delayed row and "the lease deadline" for a leased row, so a row
//! whose `not_before` has passed is ready in either case and is simply
//! moved back to `READY` (promoted) by the next fetch of its queue.
//!
//! Two partial indexes keep fetches cheap however many rows are leased or
//! delayed: `tasks_ready` holds only ready rows in fetch order, and
//! `tasks_pending` holds only the others, by queue and `not_before`, for
//! promotion and for the next wake-up time. A fetch never scans a row it
//! cannot take. Together they also answer queue statistics without
//! reading the table.
//!
//! There is deliberately no index on `tasks.id`: task ids are random, so
//! such an index would dirty a page per published message (and, kept only
//! for leased rows, a few pages of every commit that leases or settles).
//! Revoking a task scans the table on a read connection instead (see
//! `Broker::revoke`), which is rare. (Layout version 2 had an index on the
//! ids of leased rows; opening such a file drops it.)
//!
//! Results are stored in the order they are written (`seq`, SQLite's own
//! row number) with a unique index on the task id, rather than keyed by
//! the id itself: task ids are random, and a table keyed by them puts each
//! result, a few hundred bytes, on a random page, where a busy worker's
//! results now fill pages one after the other and only the small index
//! entries land at random. (Layout version 1 keyed the table by id; opening
//! such a file moves its results over.)
//!
//! Row numbers (`seq`) come from the `next_seq` counter rather than from
//! SQLite's rowid allocation, so they only ever grow: fetch order is publish
//! order, and a revocation can tell which rows appeared after its scan.

use celeriac_core::{Error, ErrorKind};
use rusqlite::{Connection, OpenFlags};

use crate::config::Config;
use crate::util::db_error;

/// The layout version stored in `PRAGMA user_version`.
pub(crate) const SCHEMA_VERSION: i64 = 3;

/// `tasks.state` of a row that may be fetched now.
pub(crate) const READY: i64 = 0;
/// `tasks.state` of a row waiting for its eta (`not_before`).
pub(crate) const DELAYED: i64 = 1;
/// `tasks.state` of a leased row (its lease ends at `not_before`).
pub(crate) const LEASED: i64 = 2;

const DDL: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    seq         INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL,
    task        TEXT    NOT NULL,
    queue       TEXT    NOT NULL,
    priority    INTEGER NOT NULL,
    state       INTEGER NOT NULL,
    not_before  INTEGER NOT NULL,
    token       INTEGER NOT NULL DEFAULT 0,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    revoked     INTEGER NOT NULL DEFAULT 0,
    payload     BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (queue, priority DESC, seq, state) WHERE state = 0;
CREATE INDEX IF NOT EXISTS tasks_pending ON tasks (queue, not_before, state) WHERE state > 0;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq       INTEGER PRIMARY KEY,
    id        TEXT    NOT NULL,
    task      TEXT    NOT NULL,
    queue     TEXT    NOT NULL,
    priority  INTEGER NOT NULL,
    reason    TEXT    NOT NULL,
    at        INTEGER NOT NULL,
    raw       BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_id ON dead_letters (id);
CREATE TABLE IF NOT EXISTS results (
    seq         INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL,
    json        TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS results_id ON results (id);
CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_at);
CREATE TABLE IF NOT EXISTS revocations (
    id  TEXT    PRIMARY KEY,
    at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name   TEXT    PRIMARY KEY,
    value  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES
    ('next_seq', 1), ('next_token', 1), ('ready_version', 0), ('result_version', 0);
";

/// Layout 1 to 2, before the tables are created: the results table keyed
/// by id is renamed (its expiry index dropped, as the new table's takes the
/// name).
const RESULTS_V1_ASIDE: &str = "
DROP INDEX IF EXISTS results_expiry;
ALTER TABLE results RENAME TO results_v1;
";

/// Layout 1 to 2, after: the results are copied into the new table.
const RESULTS_V1_BACK: &str = "
INSERT INTO results (id, json, expires_at) SELECT id, json, expires_at FROM results_v1;
DROP TABLE results_v1;
";

/// Layouts 1 and 2 to 3: the index on leased ids goes.
const LEASED_ID_INDEX_V2: &str = "DROP INDEX IF EXISTS tasks_leased_id;";

/// Opens a connection with the shared settings: WAL, the configured
/// `synchronous`, a busy timeout and a statement cache.
pub(crate) fn connect(config: &Config) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(&config.path, flags).map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidInput,
            format!("cannot open sqlite database {}", config.path.display()),
            e,
        )
    })?;
    conn.busy_timeout(config.busy_timeout)
        .map_err(|e| db_error("cannot set the busy timeout", e))?;
    // Applies to a new file only. Rows (~700 bytes) are written in batches
    // of neighbours, so larger pages mean fewer log frames per commit.
    conn.execute_batch("PRAGMA page_size = 8192")
        .map_err(|e| db_error("cannot set the page size", e))?;
    // WAL lets readers (other processes' fetch wake-ups, result reads) run
    // beside the single writer, and makes a commit one append.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| db_error("cannot switch the database to wal mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::new(
            ErrorKind::Other,
            format!("sqlite refused wal mode (journal mode is {mode})"),
        ));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {};
         PRAGMA cache_size = -32768;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = {};",
        config.synchronous.pragma(),
        crate::writer::durable::WAL_RESTART_BYTES
    ))
    .map_err(|e| db_error("cannot configure the database", e))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Creates the tables if needed and checks the layout version. Idempotent,
/// and safe when several processes open the file at once (it runs in one
/// `BEGIN IMMEDIATE` transaction).
pub(crate) fn migrate(conn: &Connection) -> Result<(), Error> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| db_error("cannot lock the database to create its tables", e))?;
    let result = (|| {
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db_error("cannot read the schema version", e))?;
        if version > SCHEMA_VERSION {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the database has schema version {version}, newer than this celeriac-sqlite ({SCHEMA_VERSION})"
                ),
            ));
        }
        if version == 1 {
            conn.execute_batch(RESULTS_V1_ASIDE)
                .map_err(|e| db_error("cannot move the results of layout 1 aside", e))?;
        }
        conn.execute_batch(DDL)
            .map_err(|e| db_error("cannot create the tables", e))?;
        if version == 1 {
            conn.execute_batch(RESULTS_V1_BACK)
                .map_err(|e| db_error("cannot copy the results of layout 1", e))?;
        }
        if (1..3).contains(&version) {
            conn.execute_batch(LEASED_ID_INDEX_V2)
                .map_err(|e| db_error("cannot drop the index of layout 2 on leased ids", e))?;
        }
        if version < SCHEMA_VERSION {
            conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(|e| db_error("cannot write the schema version", e))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn
            .execute_batch("COMMIT")
            .map_err(|e| db_error("cannot commit the tables", e)),
        Err(e) => {
            // The rollback's own failure adds nothing: the first error says why.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Returns a connection for reads only, opened lazily by the read pool.
pub(crate) fn connect_reader(config: &Config) -> Result<Connection, Error> {
    let conn = connect(config)?;
    conn.execute_batch("PRAGMA query_only = 1")
        .map_err(|e| db_error("cannot configure a reader", e))?;
    Ok(conn)
}
