//! Runs the shared conformance suite against [`MemoryBroker`]: every case
//! gets a fresh broker, and each `open` with default options is a clone of
//! it, as a second worker in the same process would hold.

#![allow(clippy::unwrap_used)]

use celeriac_conformance::{Fixture, FixtureOptions};
use celeriac_memory::MemoryBroker;

struct Memory(MemoryBroker);

impl Fixture for Memory {
    type Broker = MemoryBroker;

    async fn open_with(&self, opts: FixtureOptions) -> MemoryBroker {
        if opts.is_default() {
            return self.0.clone();
        }
        // Options apply when a store is made: a fresh one, which the case
        // then clones for any further handle.
        let mut b = MemoryBroker::builder();
        if let Some(n) = opts.max_queue_length {
            b = b.max_queue_length(n);
        }
        if let Some(d) = opts.result_expiry {
            b = b.result_expiry(d);
        }
        b.build()
    }
}

celeriac_conformance::suite!(async { Some(Memory(MemoryBroker::new())) });
