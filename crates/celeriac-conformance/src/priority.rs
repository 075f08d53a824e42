//! Priority: within a queue, messages run in the broker's
//! [`PriorityOrder`] (9 first on celeriac's own backends, 0 first in steps on
//! kombu's Redis layout), and messages of one rank run oldest first.

use std::time::Duration;

use celeriac_core::{Broker, PriorityOrder};

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

/// Returns the arguments of `priorities` (by publish order) in the order
/// `order` delivers them.
fn expected(order: PriorityOrder, priorities: &[Option<u8>]) -> Vec<u64> {
    let mut ranked: Vec<(u8, u64)> = priorities
        .iter()
        .zip(0u64..)
        .map(|(p, n)| (order.rank(p.unwrap_or(0)), n))
        .collect();
    // Stable: equal ranks keep publish order.
    ranked.sort_by_key(|r| r.0);
    ranked.into_iter().map(|(_, n)| n).collect()
}

fn expected_order<B: Broker>(b: &B) -> Vec<u64> {
    expected(b.capabilities().priority_order, &MIX)
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

/// Fetching one at a time yields the first-ranked priority first, then the
/// oldest within a rank; an unset priority counts as 0.
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
    assert_eq!(order, expected_order(&b), "delivery order by argument");
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
    let want: Vec<u64> = expected_order(&b).into_iter().take(5).collect();
    assert_eq!(got.iter().map(arg).collect::<Vec<_>>(), want);
}

/// A priority above 9 counts as 9 (`Message::priority` clamps): it is
/// neither rejected nor put ahead of (or behind) earlier 9s.
pub async fn priority_above_nine_counts_as_nine<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().priorities {
        return skip("priority::priority_above_nine_counts_as_nine", "priorities");
    }
    let q = queue_name("prio_clamp");
    let priorities = [0, 9, 200, 9];
    let batch = priorities
        .iter()
        .zip(0u64..)
        .map(|(p, n)| with_priority(message(&q, n), *p))
        .collect();
    publish(&b, batch).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let got = fetch(&b, &[&q], 1, WAIT).await;
        assert_eq!(got.len(), 1);
        order.push(arg(&got[0]));
    }
    let clamped = priorities.map(|p| Some(p.min(9)));
    assert_eq!(order, expected(b.capabilities().priority_order, &clamped));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_first_puts_nine_first_and_keeps_publish_order() {
        let got = expected(
            PriorityOrder::HighestFirst,
            &[Some(0), Some(9), None, Some(9)],
        );
        assert_eq!(got, vec![1, 3, 0, 2]);
    }

    #[test]
    fn kombu_steps_put_zero_first_and_group_levels() {
        let kombu = PriorityOrder::lowest_first(&[0, 3, 6, 9]);
        let got = expected(kombu, &[Some(9), Some(5), Some(0), Some(3), None, Some(6)]);
        // 0 and None (step 0), then 5 and 3 (step 3, publish order), 6, 9.
        assert_eq!(got, vec![2, 4, 1, 3, 5, 0]);
    }
}
