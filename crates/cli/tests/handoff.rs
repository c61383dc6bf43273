//! End-to-end tests of sloppy quorum and hinted handoff on 5 real processes.

mod common;

use common::{Node, except, get_json, http, primaries, start_cluster, wait_for_ring};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

const FLAGS: &[&str] = &["--hint-scan-interval-ms", "200"];

async fn stats(node: &Node) -> Value {
    get_json(format!("{}/admin/stats", node.url)).await
}

/// Writes `keys` concurrently through the `entry` nodes; returns how many got 204.
async fn write_all(
    entry: &[&Node],
    keys: &[String],
    query: &str,
) -> Vec<(String, StatusCode, Value)> {
    let mut tasks = Vec::new();
    for (i, chunk) in keys.chunks(keys.len().div_ceil(8)).enumerate() {
        let url = entry[i % entry.len()].url.clone();
        let chunk = chunk.to_vec();
        let query = query.to_owned();
        tasks.push(tokio::spawn(async move {
            let c = http();
            let mut out = Vec::new();
            for k in chunk {
                let r = c
                    .put(format!("{url}/kv/{k}{query}"))
                    .body(format!("v-{k}"))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let body = if status == StatusCode::NO_CONTENT {
                    Value::Null
                } else {
                    r.json().await.unwrap()
                };
                out.push((k, status, body));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn wait_down(observers: &[&Node], id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut down = true;
        for o in observers {
            let v = get_json(format!("{}/admin/members", o.url)).await;
            down &= v["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == id && m["up"] == false);
        }
        if down {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never seen down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn total_pending(nodes: &[&Node]) -> u64 {
    let mut total = 0;
    for n in nodes {
        total += stats(n).await["hints_pending"].as_u64().unwrap();
    }
    total
}

/// Waits (30 s at most) until no node keeps a hint; returns how long it took.
async fn wait_drained(nodes: &[&Node]) -> Duration {
    let start = Instant::now();
    while total_pending(nodes).await > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "hints still pending after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_down_nodes_and_hints_go_home() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs, FLAGS);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 5).await;

    // 1. One node down: 1000 writes at W=2 all succeed.
    nodes[1].kill9();
    let alive: Vec<&Node> = except(&nodes, 1);
    wait_down(&alive, "n2").await;
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i:04}")).collect();
    let results = write_all(&alive, &keys, "?w=2").await;
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, s, _)| *s != StatusCode::NO_CONTENT)
        .collect();
    assert!(
        failed.is_empty(),
        "{} writes failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let pending = total_pending(&alive).await;
    assert!(pending > 0, "fallbacks keep hints for n2");
    let mut owned = Vec::new();
    for k in &keys {
        if primaries(alive[0], k).await.contains(&"n2".to_owned()) {
            owned.push(k.clone());
        }
    }
    assert!(owned.len() > 300, "n2 is a primary of {} keys", owned.len());

    // 2. The owner returns: within 30 s it holds every key it is a primary for, and every
    //    hint count returns to 0.
    nodes[1].restart();
    let all: Vec<&Node> = nodes.iter().collect();
    let took = wait_drained(&all).await;
    eprintln!("{pending} hints ({} keys) drained in {took:?}", owned.len());
    let c = http();
    for k in &owned {
        let r = c
            .get(format!("{}/admin/local/{k}", nodes[1].url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{k} missing on n2");
    }
    let delivered: u64 = {
        let mut d = 0;
        for n in &all {
            d += stats(n).await["hints_delivered"].as_u64().unwrap();
        }
        d
    };
    assert!(delivered >= owned.len() as u64);

    // 3. A fallback holding hints crashes and restarts before the owner returns: no hint lost.
    nodes[1].kill9();
    let alive: Vec<&Node> = except(&nodes, 1);
    wait_down(&alive, "n2").await;
    let keys2: Vec<String> = (0..300).map(|i| format!("second{i:03}")).collect();
    let results = write_all(&alive, &keys2, "").await;
    assert!(results.iter().all(|(_, s, _)| *s == StatusCode::NO_CONTENT));
    let mut holder = None;
    for (i, n) in nodes.iter().enumerate() {
        if i != 1 && stats(n).await["hints_pending"].as_u64().unwrap() > 0 {
            holder = Some(i);
            break;
        }
    }
    let holder = holder.expect("some fallback holds hints");
    let before = stats(&nodes[holder]).await["hints_pending"]
        .as_u64()
        .unwrap();
    nodes[holder].kill9();
    nodes[holder].restart();
    let after = stats(&nodes[holder]).await["hints_pending"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before, "hints survive the fallback's crash");
    nodes[1].restart();
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 5).await;
    wait_drained(&nodes.iter().collect::<Vec<_>>()).await;
    for k in &keys2 {
        if primaries(&nodes[0], k).await.contains(&"n2".to_owned()) {
            let r = c
                .get(format!("{}/admin/local/{k}", nodes[1].url))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                StatusCode::OK,
                "{k} missing on n2 after the second drain"
            );
        }
    }

    // 4. Two nodes down: W=2 still succeeds for every key; PW=2 fails, clearly, exactly for
    //    keys that lost two primaries.
    nodes[2].kill9();
    nodes[3].kill9();
    let alive: Vec<&Node> = vec![&nodes[0], &nodes[1], &nodes[4]];
    wait_down(&alive, "n3").await;
    wait_down(&alive, "n4").await;
    let keys3: Vec<String> = (0..200).map(|i| format!("third{i:03}")).collect();
    let results = write_all(&alive, &keys3, "?w=2").await;
    assert!(
        results.iter().all(|(_, s, _)| *s == StatusCode::NO_CONTENT),
        "W=2 with two nodes down"
    );
    let results = write_all(&alive, &keys3, "?w=2&pw=2").await;
    let mut refused = 0;
    for (k, status, body) in &results {
        let p = primaries(&nodes[0], k).await;
        let lost = p.iter().filter(|id| *id == "n3" || *id == "n4").count();
        if lost >= 2 {
            refused += 1;
            assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{k}");
            assert_eq!(body["error"], "unavailable");
            assert_eq!(body["primary_needed"], 2);
            assert_eq!(body["primary_answered"], 1);
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains("PW=2 needed, 1 primaries"),
                "{body}"
            );
        } else {
            assert_eq!(*status, StatusCode::NO_CONTENT, "{k}: {body}");
        }
    }
    assert!(refused > 0, "some keys lost two primaries");
}
