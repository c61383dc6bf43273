//! End-to-end tests of gossip membership and failure detection on 5 real processes.

mod common;

use common::{Node, cli, except, http, start_cluster, wait_for_ring};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn members(node: &Node) -> Value {
    http()
        .get(format!("{}/admin/members", node.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn member<'a>(view: &'a Value, id: &str) -> &'a Value {
    view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} missing from {view}"))
}

/// Waits until every node in `observers` sees `id` as `up`; returns how long it took.
async fn wait_until_seen(observers: &[&Node], id: &str, up: bool, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for o in observers {
            let v = members(o).await;
            all &= member(&v, id)["up"].as_bool() == Some(up);
        }
        if all {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{id} not seen up={up} by every node within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_joins_detects_failures_and_remembers_the_cluster() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    // One node, then four more that know only the first.
    let start = Instant::now();
    let mut nodes = start_cluster(&dirs, &[]);
    let version = wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 5).await;
    let joined = start.elapsed();
    assert!(
        joined < Duration::from_secs(15),
        "all five agreed after {joined:?}"
    );
    eprintln!("five nodes agreed on ring {version} after {joined:?}");
    let v = members(&nodes[4]).await;
    assert_eq!(v["members"].as_array().unwrap().len(), 5);
    assert_eq!(v["ring_version"], version);

    // The CLI shows every view and confirms they agree.
    let out = cli(&["admin", "status", "--node", &nodes[3].url, "--all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all 5 views agree"), "{text}");
    assert!(text.contains("n5") && text.contains("phi"), "{text}");

    // Pause one node (SIGSTOP: its connections stay open): the others' detectors mark it
    // down (once it leaves a request unanswered for 500 ms, or by phi); after SIGCONT they mark
    // it up again.
    let paused = nodes[2].pid().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &paused])
            .status()
            .unwrap()
            .success()
    );
    let others: Vec<&Node> = except(&nodes, 2);
    let took = wait_until_seen(&others, "n3", false, Duration::from_secs(20)).await;
    let v = members(others[0]).await;
    let n3 = member(&v, "n3");
    eprintln!("paused node marked down after {took:?}: {n3}");
    assert!(
        n3["unanswered"] == true || n3["phi"].as_f64().unwrap() >= 8.0,
        "suspected for a reason: {n3}"
    );
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &paused])
            .status()
            .unwrap()
            .success()
    );
    wait_until_seen(&others, "n3", true, Duration::from_secs(20)).await;

    // Kill one: every other node marks it down.
    let old_generation = member(&members(&nodes[0]).await, "n4")["generation"]
        .as_u64()
        .unwrap();
    nodes[3].kill9();
    let others: Vec<&Node> = except(&nodes, 3);
    let took = wait_until_seen(&others, "n4", false, Duration::from_secs(20)).await;
    eprintln!("killed node marked down after {took:?}");

    // Restart it: up again everywhere, with a higher generation.
    nodes[3].restart();
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 5).await;
    let v = members(&nodes[0]).await;
    assert!(member(&v, "n4")["generation"].as_u64().unwrap() > old_generation);

    // Restart a node with no seeds at all: it still knows the cluster from its history.
    nodes[1].terminate();
    let flags: Vec<String> = nodes[1].flags();
    let without_seeds: Vec<&str> = {
        let mut out = Vec::new();
        let mut skip = false;
        for f in &flags {
            if skip {
                skip = false;
                continue;
            }
            if f == "--seeds" {
                skip = true;
                continue;
            }
            out.push(f.as_str());
        }
        out
    };
    nodes[1].restart_with(&without_seeds);
    let v = members(&nodes[1]).await;
    assert_eq!(
        v["members"].as_array().unwrap().len(),
        5,
        "knows the cluster at once: {v}"
    );
    let final_version = wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 5).await;
    assert_eq!(final_version, version, "same tokens, same ring");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_live_node_id_is_refused() {
    let dirs = common::dirs(4);
    let nodes = common::start_cluster(&dirs[..3], &[]);
    common::wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let addr_of = |v: &serde_json::Value, id: &str| {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| (m["peer_addr"].clone(), m["up"].clone()))
    };
    let c = common::http();
    let before = common::get_json(format!("{}/admin/members", nodes[0].url)).await;
    // The same id, another data directory, other ports: an operator's mistake.
    let impostor = common::Node::start(
        dirs[3].path(),
        &[
            "--cluster-secret",
            common::SECRET,
            "--node-id",
            "n2",
            "--seeds",
            &nodes[0].peer,
        ],
    );
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    for n in &nodes {
        let v = common::get_json(format!("{}/admin/members", n.url)).await;
        assert_eq!(
            addr_of(&v, "n2"),
            addr_of(&before, "n2"),
            "{} kept the real n2",
            n.id
        );
    }
    // The real n2 keeps serving: writes through every node succeed.
    for (i, n) in nodes.iter().enumerate() {
        let r = c
            .put(format!("{}/kv/after-impostor-{i}", n.url))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    drop(impostor);
    common::wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
}
