//! Priority: within a queue, priority 9 runs before 0, and messages of one
//! priority run oldest first.

use std::time::Duration;

use celeriac_core::Broker;

use crate::support::{arg, fetch, message, publish, queue_name, skip, with_priority};
use crate::Fixture;

const WAIT: Duration = Duration::from_secs(5);

/// The priorities of the messages published in [`higher_priority_first`],
/// by argument; `None` is unset (counts as 0).
const MIX: [Option<u8>; 12] = [
    Some(0),
    Some(5),
    Some(9),
    None,
    Some(5),
    Some(9),
    Some(1),
    Some(0),
    Some(3),
    None,
    Some(9),
    Some(5),
];

fn expected_order() -> Vec<u64> {
    let mut order: Vec<(u8, u64)> = MIX
        .iter()
        .zip(0u64..)
        .map(|(p, n)| (p.unwrap_or(0), n))
        .collect();
    // Stable: equal priorities keep publish order.
    order.sort_by_key(|p| std::cmp::Reverse(p.0));
    order.into_iter().map(|(_, n)| n).collect()
}

async fn publish_mix<B: Broker>(b: &B, q: &str) {
    // Half in separate calls, half in one batch: order within a priority
    // is publish order either way.
    for (p, n) in MIX.iter().zip(0u64..).take(6) {
        let m = message(q, n);
        publish(b, vec![p.map_or(m.clone(), |p| with_priority(m, p))]).await;
    }
    let batch = MIX
        .iter()
        .zip(0u64..)
        .skip(6)
        .map(|(p, n)| {
            let m = message(q, n);
            p.map_or(m.clone(), |p| with_priority(m, p))
        })
        .collect();
    publish(b, batch).await;
}

/// Fetching one at a time yields the highest priority first, then the
/// oldest within a priority; an unset priority counts as 0.
pub async fn higher_priority_first<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().priorities {
        return skip("priority::higher_priority_first", "priorities");
    }
    let q = queue_name("prio");
    publish_mix(&b, &q).await;
    let mut order = Vec::new();
    for _ in 0..MIX.len() {
        let got = fetch(&b, &[&q], 1, WAIT).await;
        assert_eq!(got.len(), 1);
        order.push(arg(&got[0]));
    }
    assert_eq!(order, expected_order(), "delivery order by argument");
}

/// One large fetch returns the batch in priority order too.
pub async fn batch_is_in_priority_order<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().priorities {
        return skip("priority::batch_is_in_priority_order", "priorities");
    }
    let q = queue_name("prio_batch");
    publish_mix(&b, &q).await;
    let got = fetch(&b, &[&q], 5, WAIT).await;
    let want: Vec<u64> = expected_order().into_iter().take(5).collect();
    assert_eq!(got.iter().map(arg).collect::<Vec<_>>(), want);
}

/// A priority above 9 counts as 9 (`Message::priority` clamps): it is
/// neither rejected nor put ahead of earlier 9s.
pub async fn priority_above_nine_counts_as_nine<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().priorities {
        return skip("priority::priority_above_nine_counts_as_nine", "priorities");
    }
    let q = queue_name("prio_clamp");
    publish(
        &b,
        vec![
            with_priority(message(&q, 0), 0),
            with_priority(message(&q, 1), 9),
            with_priority(message(&q, 2), 200),
            with_priority(message(&q, 3), 9),
        ],
    )
    .await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let got = fetch(&b, &[&q], 1, WAIT).await;
        assert_eq!(got.len(), 1);
        order.push(arg(&got[0]));
    }
    assert_eq!(order, vec![1, 2, 3, 0]);
}
