//! Fairness across queues: each fetch call starts from a different queue
//! and a batch takes from the queues round-robin, so a flooded queue never
//! starves a quiet one.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::{fetch, message, publish, queue_name};
use crate::Fixture;

const WAIT: Duration = Duration::from_secs(5);

fn count_by_queue(got: &[celeriac_core::Delivery]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for d in got {
        *n.entry(d.lease.queue.to_string()).or_default() += 1;
    }
    n
}

/// With 1000 messages in queue A and 10 in B (published after), fetching
/// small batches from `[A, B]` delivers all of B within the first few
/// fetches.
pub async fn busy_queue_does_not_starve_another<F: Fixture>(f: &F) {
    let b = f.open().await;
    let qa = queue_name("flood");
    let qb = queue_name("quiet");
    for chunk in 0..5u64 {
        publish(
            &b,
            (chunk * 200..(chunk + 1) * 200)
                .map(|n| message(&qa, n))
                .collect(),
        )
        .await;
    }
    publish(&b, (0..10).map(|n| message(&qb, n)).collect()).await;

    // Round-robin batches of 4 take two from each queue, so B is drained
    // in five fetches; ten leaves room for a different rotation.
    let mut from_b = 0;
    for call in 1..=10 {
        let got = fetch(&b, &[&qa, &qb], 4, WAIT).await;
        assert_eq!(
            got.len(),
            4,
            "fetch {call} of a well-stocked pair of queues"
        );
        from_b += count_by_queue(&got).get(&qb).copied().unwrap_or(0);
        if from_b == 10 {
            return;
        }
    }
    panic!(
        "after 10 fetches of 4 from [A, B], only {from_b} of B's 10 messages arrived: A starves B"
    );
}

/// One-message fetches from two stocked queues alternate between them:
/// each call starts from a different queue.
pub async fn each_fetch_starts_from_a_different_queue<F: Fixture>(f: &F) {
    let b = f.open().await;
    let qa = queue_name("turn_a");
    let qb = queue_name("turn_b");
    publish(&b, (0..20).map(|n| message(&qa, n)).collect()).await;
    publish(&b, (0..20).map(|n| message(&qb, n)).collect()).await;
    let mut seq = Vec::new();
    for _ in 0..10 {
        let got = fetch(&b, &[&qa, &qb], 1, WAIT).await;
        assert_eq!(got.len(), 1);
        seq.push(if *got[0].lease.queue == *qa { 'A' } else { 'B' });
    }
    let a = seq.iter().filter(|c| **c == 'A').count();
    let s: String = seq.iter().collect();
    assert!(
        (4..=6).contains(&a),
        "ten single fetches from [A, B] took {s}: not starting from a different queue each call"
    );
}

/// A batch from three stocked queues takes from each in turn.
pub async fn batches_round_robin_across_queues<F: Fixture>(f: &F) {
    let b = f.open().await;
    let qs: Vec<String> = (0..3).map(|i| queue_name(&format!("rr{i}"))).collect();
    for q in &qs {
        publish(&b, (0..10).map(|n| message(q, n)).collect()).await;
    }
    let names: Vec<&str> = qs.iter().map(String::as_str).collect();
    let got = fetch(&b, &names, 6, WAIT).await;
    assert_eq!(got.len(), 6);
    let n = count_by_queue(&got);
    for q in &qs {
        assert_eq!(
            n.get(q).copied().unwrap_or(0),
            2,
            "a batch of 6 from 3 stocked queues takes 2 from each: {n:?}"
        );
    }
    let got = fetch(&b, &names, 3, WAIT).await;
    let n = count_by_queue(&got);
    assert_eq!(
        n.len(),
        3,
        "a batch of 3 from 3 stocked queues takes one from each: {n:?}"
    );
}

/// Empty queues in the list are passed over.
pub async fn empty_queues_are_skipped<F: Fixture>(f: &F) {
    let b = f.open().await;
    let empty1 = queue_name("skip1");
    let full = queue_name("full");
    let empty2 = queue_name("skip2");
    publish(&b, (0..3).map(|n| message(&full, n)).collect()).await;
    let got = fetch(&b, &[&empty1, &full, &empty2], 5, WAIT).await;
    assert_eq!(got.len(), 3, "all three messages of the one stocked queue");
}
