//! The envelope delivery tag of each attempt of this process that is a
//! redelivery, by its token.
//!
//! A message that came back has a delivery counter in Redis keyed by its
//! envelope's delivery tag (`scripts/common.lua`); the attempt that ends
//! it deletes the counter, and an attempt deferred to its eta takes its
//! count back. The tag is remembered here, in the process that claimed the
//! message, for those settlements. First deliveries (nearly all) have no
//! counter and no entry. An entry that is missing (a lease settled by
//! another process) only leaves the counter to expire.
//!
//! Tokens are unique per Redis server and key prefix, so entries are keyed
//! by the broker's scope as well; the registry is shared by every handle
//! of the process, so a lease may be settled through any handle on the
//! same server and prefix.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

type Registry = Mutex<HashMap<(u64, u64), Arc<str>>>;

static HELD: LazyLock<Registry> = LazyLock::new(Registry::default);

/// One broker's view of the registry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    scope: u64,
}

impl Held {
    /// Returns the view for a server URL and key prefix.
    pub fn new(url: &str, prefix: &str) -> Held {
        let mut h = DefaultHasher::new();
        url.hash(&mut h);
        prefix.hash(&mut h);
        Held { scope: h.finish() }
    }

    fn lock() -> std::sync::MutexGuard<'static, HashMap<(u64, u64), Arc<str>>> {
        HELD.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers the envelope tags of new attempts that are redeliveries.
    pub fn insert_all(&self, held: impl IntoIterator<Item = (u64, Arc<str>)>) {
        let mut map = Self::lock();
        for (token, tag) in held {
            map.insert((self.scope, token), tag);
        }
    }

    /// Returns the envelope tag of each attempt, if it is a redelivery this
    /// process claimed.
    pub fn get_all(&self, tokens: impl IntoIterator<Item = u64>) -> Vec<Option<Arc<str>>> {
        let map = Self::lock();
        tokens
            .into_iter()
            .map(|token| map.get(&(self.scope, token)).cloned())
            .collect()
    }

    /// Forgets attempts that ended (settled, or found not held).
    pub fn remove_all(&self, tokens: impl IntoIterator<Item = u64>) {
        let mut map = Self::lock();
        for token in tokens {
            map.remove(&(self.scope, token));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_keep_equal_tokens_apart() {
        let a = Held::new("redis://127.0.0.1/1", "");
        let b = Held::new("redis://127.0.0.1/2", "");
        a.insert_all([(u64::MAX - 7, Arc::from("tag-a"))]);
        b.insert_all([(u64::MAX - 7, Arc::from("tag-b"))]);
        assert_eq!(a.get_all([u64::MAX - 7]), vec![Some(Arc::from("tag-a"))]);
        assert_eq!(b.get_all([u64::MAX - 7]), vec![Some(Arc::from("tag-b"))]);
        a.remove_all([u64::MAX - 7]);
        assert_eq!(a.get_all([u64::MAX - 7]), vec![None]);
        assert_eq!(b.get_all([u64::MAX - 7]), vec![Some(Arc::from("tag-b"))]);
        b.remove_all([u64::MAX - 7]);
    }
}
