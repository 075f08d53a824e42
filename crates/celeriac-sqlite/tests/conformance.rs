//! Runs the shared conformance suite against [`SqliteBroker`]: every case
//! gets a fresh temporary directory, and each `open` is a new broker on the
//! same file, as a restarted or second process would open.

#![allow(clippy::unwrap_used)]

use celeriac_conformance::{Fixture, FixtureOptions};
use celeriac_sqlite::SqliteBroker;

struct Sqlite(tempfile::TempDir);

impl Fixture for Sqlite {
    type Broker = SqliteBroker;

    async fn open_with(&self, opts: FixtureOptions) -> SqliteBroker {
        let mut b = SqliteBroker::builder(self.0.path().join("conformance.db"));
        if let Some(n) = opts.max_queue_length {
            b = b.max_queue_length(n);
        }
        if let Some(d) = opts.result_expiry {
            b = b.result_expiry(d);
        }
        b.build().await.unwrap()
    }
}

celeriac_conformance::suite!(async { Some(Sqlite(tempfile::tempdir().unwrap())) });
