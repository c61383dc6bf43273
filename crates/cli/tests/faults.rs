//! Real-process fault scenarios: a concurrent workload against 5 real nodes while a node is
//! killed, paused, or the cluster is partitioned; then heal, settle, and run the checker.

mod common;

use common::harness::{settle_and_check, start_workload};
use common::{Node, dirs, http, start_cluster, wait_for_ring};
use std::time::Duration;

const FLAGS: &[&str] = &["--enable-fault-injection", "--request-timeout-ms", "1000"];

fn signal(node: &Node, sig: &str) {
    let pid = node.pid().expect("running");
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

async fn set_faults(node: &Node, body: serde_json::Value) {
    let r = http()
        .post(format!("{}/admin/faults", node.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

fn report(violations: &[dynamokv_sim::checker::Violation]) -> String {
    violations.iter().map(|v| format!("\n  {v}")).collect()
}

/// Starts 5 nodes and the workload, lets `fault` do its damage (and heal it), then stops the
/// workload, settles, and checks the history. Returns the history for extra assertions.
async fn scenario(fault: impl AsyncFnOnce(&mut Vec<Node>)) -> common::harness::History {
    let d = dirs(5);
    let mut nodes = start_cluster(&d, FLAGS);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 5).await;
    let urls = nodes.iter().map(|n| n.url.clone()).collect();
    let load = start_workload(urls, 4, 8);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fault(&mut nodes).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = load.stop().await;
    assert!(history.writes.len() > 50, "the workload ran");
    let violations = settle_and_check(&nodes.iter().collect::<Vec<_>>(), &history).await;
    assert!(violations.is_empty(), "{}", report(&violations));
    history
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_under_writes() {
    scenario(async |nodes: &mut Vec<Node>| {
        nodes[2].kill9();
        tokio::time::sleep(Duration::from_secs(2)).await;
        nodes[2].restart();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_paused_longer_than_the_request_timeout() {
    scenario(async |nodes: &mut Vec<Node>| {
        signal(&nodes[1], "-STOP");
        tokio::time::sleep(Duration::from_secs(3)).await;
        signal(&nodes[1], "-CONT");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_three_two_for_several_seconds() {
    let history = scenario(async |nodes: &mut Vec<Node>| {
        let (a, b): (Vec<&Node>, Vec<&Node>) = nodes
            .iter()
            .partition(|n| ["n1", "n2", "n3"].contains(&n.id.as_str()));
        let ids = |side: &[&Node]| side.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        for (side, other) in [(&a, &b), (&b, &a)] {
            for n in side.iter() {
                let rules = serde_json::json!({ "drop_to": ids(other), "drop_from": ids(other) });
                set_faults(n, rules).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        for n in nodes.iter() {
            let r = http()
                .delete(format!("{}/admin/faults", n.url))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
        }
    })
    .await;
    let failed = history
        .writes
        .iter()
        .filter(|w| w.outcome != dynamokv_sim::checker::Outcome::Ok)
        .count();
    assert!(failed > 0, "the partition made some writes fail");
}

#[tokio::test]
async fn fault_injection_is_refused_unless_enabled() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), &[]);
    let r = http()
        .post(format!("{}/admin/faults", node.url))
        .json(&serde_json::json!({ "drop_to": ["x"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "fault_injection_disabled");
}
