//! The real-process fault harness: the HTTP workload of `dynamokv-nemesis` recording a history,
//! and the collection of every replica's final copy (after read repair) for the checker.

use super::{Node, SECRET, http};
use dynamokv_sim::checker::{Violation, check};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

pub use dynamokv_nemesis::workload::{History, Workload, key_name};

fn key(i: usize) -> String {
    key_name(i)
}

/// Starts `clients` closed-loop clients against `urls` over `keys` keys (the workload of the
/// namespaced runs, on this test's runtime).
pub fn start_workload(urls: Vec<String>, clients: usize, keys: usize) -> Workload {
    dynamokv_nemesis::workload::start(
        &tokio::runtime::Handle::current(),
        urls,
        clients,
        keys,
        SECRET,
        Arc::new(AtomicUsize::new(0)),
        false,
    )
}

/// After the faults healed: waits for the ring, reads every key at R=N (read repair), and runs
/// the checker over the replicas' copies.
pub async fn settle_and_check(nodes: &[&Node], history: &History) -> Vec<Violation> {
    super::wait_for_ring(nodes, nodes.len()).await;
    let c = http();
    for k in 0..history.keys {
        let mut tries = 0;
        loop {
            let r = c
                .get(format!("{}/kv/{}?r=3", nodes[0].url, key(k)))
                .send()
                .await;
            if r.as_ref().is_ok_and(|r| r.status() != 503) || tries > 50 {
                break;
            }
            tries += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let urls: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| (n.id.clone(), n.url.clone()))
        .collect();
    let replicas = dynamokv_nemesis::verdict::replicas(&c, &urls, history.keys)
        .await
        .expect("every replica's copy");
    check(&history.writes, &replicas)
}
