//! Leasing one of the Redis databases reserved for the interop tests.

use std::ops::RangeInclusive;
use std::time::Duration;

/// The Redis databases the interop tests use, and only they. Each is
/// flushed when a case leases it.
pub const DBS: RangeInclusive<u8> = 10..=15;

/// The key, inside a database, that marks it as leased.
const LEASE_KEY: &str = "celeriac-interop:lease";

/// How long a lease lasts if its holder dies without releasing it.
const LEASE_TTL_SECS: u64 = 300;

/// A Redis database held by one case; released when dropped.
#[derive(Debug)]
pub struct DbLease {
    base: String,
    db: u8,
    token: String,
}

impl DbLease {
    /// Leases a free database from [`DBS`] on the server at `base`, waiting
    /// for one to be free, and flushes it.
    ///
    /// # Panics
    ///
    /// When Redis fails, or no database is free within 5 minutes.
    pub async fn acquire(base: &str) -> DbLease {
        let token = uuid::Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(LEASE_TTL_SECS);
        loop {
            for db in DBS {
                let client = redis::Client::open(format!("{base}/{db}"))
                    .unwrap_or_else(|e| panic!("redis url {base}/{db}: {e}"));
                let mut con = client
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap_or_else(|e| panic!("redis {base}/{db}: {e}"));
                let got: Option<String> = redis::cmd("SET")
                    .arg(LEASE_KEY)
                    .arg(&token)
                    .arg("NX")
                    .arg("EX")
                    .arg(LEASE_TTL_SECS)
                    .query_async(&mut con)
                    .await
                    .unwrap_or_else(|e| panic!("redis SET on db {db}: {e}"));
                if got.is_some() {
                    let () = redis::pipe()
                        .atomic()
                        .cmd("FLUSHDB")
                        .ignore()
                        .cmd("SET")
                        .arg(LEASE_KEY)
                        .arg(&token)
                        .arg("EX")
                        .arg(LEASE_TTL_SECS)
                        .ignore()
                        .query_async(&mut con)
                        .await
                        .unwrap_or_else(|e| panic!("redis FLUSHDB on db {db}: {e}"));
                    return DbLease {
                        base: base.to_owned(),
                        db,
                        token,
                    };
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no free Redis database in {DBS:?} for {LEASE_TTL_SECS} s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Returns the database number.
    pub fn db(&self) -> u8 {
        self.db
    }
}

impl Drop for DbLease {
    fn drop(&mut self) {
        // Compare-and-delete, so a lease that expired and was taken over is
        // left alone. A failure here only delays the next lease.
        let release = || -> redis::RedisResult<()> {
            let client = redis::Client::open(format!("{}/{}", self.base, self.db))?;
            let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
            redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            )
            .key(LEASE_KEY)
            .arg(&self.token)
            .invoke::<i64>(&mut con)?;
            Ok(())
        };
        let _ = release();
    }
}
