//! End-to-end tests of anti-entropy on real processes: a node that lost its disk gets its keys
//! back with no client reads, and replicas that missed writes converge with no hint to help.

mod common;

use common::{Node, cli, dirs, get_json, http, primaries, start_cluster, wait_for_ring, write_all};
use reqwest::StatusCode;
use std::time::{Duration, Instant};

/// The keys of `keys` that `node` holds no copy of (`/admin/local`).
async fn missing_on(node: &Node, keys: &[String]) -> Vec<String> {
    let c = http();
    let mut missing = Vec::new();
    for k in keys {
        let r = c
            .get(format!("{}/admin/local/{k}", node.url))
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::OK {
            missing.push(k.clone());
        }
    }
    missing
}

/// Waits until `node` holds every key of `keys` (at most `secs`); returns how long it took.
async fn wait_holds(node: &Node, keys: &[String], secs: u64) -> Duration {
    let start = Instant::now();
    loop {
        let missing = missing_on(node, keys).await;
        if missing.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{} still lacks {} of {} keys after {secs} s, e.g. {:?}",
            node.id,
            missing.len(),
            keys.len(),
            missing.first()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_disk_gets_its_keys_back_without_reads() {
    let dirs = dirs(5);
    let mut nodes = start_cluster(&dirs, &["--anti-entropy-interval-ms", "2000"]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 5).await;
    let keys: Vec<String> = (0..10_000).map(|i| format!("k{i:05}")).collect();
    write_all(&nodes[0], &keys, "?w=3").await;
    let mut owned = Vec::new();
    for k in &keys {
        if primaries(&nodes[0], k).await.contains(&"n3".to_owned()) {
            owned.push(k.clone());
        }
    }
    assert!(
        owned.len() > 3_000,
        "n3 is a primary of {} keys",
        owned.len()
    );

    // n3 loses its disk and comes back under the same id.
    nodes[2].kill9();
    std::fs::remove_dir_all(&nodes[2].data_dir).unwrap();
    std::fs::create_dir_all(&nodes[2].data_dir).unwrap();
    nodes[2].restart();
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 5).await;

    // While it rebuilds, reads through it at R=1 still find every key: its own (empty) copy
    // does not count.
    let c = http();
    let mut not_found = 0;
    for k in owned.iter().take(200) {
        let r = c
            .get(format!("{}/kv/{k}?r=1", nodes[2].url))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            not_found += 1;
        }
    }
    assert_eq!(not_found, 0, "R=1 reads through the rebuilding node");

    let took = wait_holds(&nodes[2], &owned, 60).await;
    eprintln!("n3 got {} keys back in {took:?}", owned.len());
    let stats = get_json(format!("{}/admin/stats", nodes[2].url)).await;
    let ae = &stats["anti_entropy"];
    assert!(
        ae["keys_repaired"].as_u64().unwrap() >= owned.len() as u64 / 2,
        "{ae}"
    );
    // Once every range synchronised, the node says its data is complete.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ae = get_json(format!("{}/admin/stats", nodes[2].url)).await["anti_entropy"].clone();
        if ae["rebuilding"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "still rebuilding: {ae}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = cli(&["admin", "status", "--node", &nodes[2].url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("anti-entropy: data complete"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_missed_writes_converge_by_anti_entropy_alone() {
    let dirs = dirs(3);
    // Anti-entropy only on demand, and no hint would go home within the test.
    let flags = [
        "--anti-entropy-interval-ms",
        "0",
        "--hint-scan-interval-ms",
        "3600000",
        "--enable-fault-injection",
    ];
    let nodes = start_cluster(&dirs, &flags);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let c = http();
    // Keys n1 coordinates (it would forward the others to a node it cannot reach).
    let mut keys = Vec::new();
    for i in 0..900 {
        let k = format!("w1-{i:03}");
        if primaries(&nodes[0], &k).await[0] == "n1" {
            keys.push(k);
        }
    }
    assert!(keys.len() > 200, "{} keys", keys.len());
    // n2 and n3 are partitioned away from n1, which takes writes at W=1 alone.
    let cut = serde_json::json!({"drop_to": ["n2", "n3"], "drop_from": ["n2", "n3"]});
    let r = c
        .post(format!("{}/admin/faults", nodes[0].url))
        .json(&cut)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    write_all(&nodes[0], &keys, "?w=1").await;
    let r = c
        .delete(format!("{}/admin/faults", nodes[0].url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    assert_eq!(missing_on(&nodes[1], &keys).await.len(), keys.len());
    let pending: u64 = get_json(format!("{}/admin/stats", nodes[0].url)).await["hints_pending"]
        .as_u64()
        .unwrap();
    assert_eq!(pending, 0, "no hint can help");

    // On demand, with progress, until the round ends. A round that had to skip a peer (seen
    // down for a moment on a loaded machine) says so and exits 3: run it again.
    let mut text = String::new();
    for _ in 0..3 {
        let out = cli(&[
            "admin",
            "repair",
            "--node",
            &nodes[0].url,
            "--timeout",
            "60",
        ]);
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("finished"), "{text}");
        if out.status.success() {
            break;
        }
        assert_eq!(out.status.code(), Some(3), "{text}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("run the repair again"));
        wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    }
    for n in &nodes[1..] {
        let missing = missing_on(n, &keys).await.len();
        assert_eq!(missing, 0, "{} converged after:\n{text}", n.id);
    }
    // Figures are the round's own, not totals since the node started: nothing is left to repair.
    let out = cli(&[
        "admin",
        "repair",
        "--node",
        &nodes[0].url,
        "--timeout",
        "60",
    ]);
    let again = String::from_utf8_lossy(&out.stdout);
    assert!(
        again.contains("0 keys repaired") && again.contains("during this round"),
        "{again}"
    );
    // Every copy is the same version.
    for k in keys.iter().take(20) {
        let mut clocks = Vec::new();
        for n in &nodes {
            let v = get_json(format!("{}/admin/local/{k}", n.url)).await;
            clocks.push(v["clock"].clone());
        }
        assert!(clocks.windows(2).all(|w| w[0] == w[1]), "{k}: {clocks:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_missed_by_a_down_replica_stays_and_its_tombstone_goes_once_all_agree() {
    let dirs = dirs(3);
    let flags = [
        "--anti-entropy-interval-ms",
        "500",
        "--tombstone-min-age-ms",
        "1000",
    ];
    let mut nodes = start_cluster(&dirs, &flags);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let c = http();
    let keys: Vec<String> = (0..20).map(|i| format!("gone{i}")).collect();
    write_all(&nodes[0], &keys, "?w=3").await;
    nodes[2].kill9();
    for k in &keys {
        let r = c
            .delete(format!("{}/kv/{k}?w=2", nodes[0].url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    // Well past the minimum age, the tombstones stay while n3 (which missed them) is down.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        missing_on(&nodes[0], &keys).await.is_empty(),
        "n1 keeps its tombstones"
    );
    let stats = get_json(format!("{}/admin/stats", nodes[0].url)).await;
    assert_eq!(stats["anti_entropy"]["tombstones_collected"], 0);

    nodes[2].restart();
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    // The delete wins on n3, and then every copy is collected.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut left = 0;
        for n in &nodes {
            left += keys.len() - missing_on(n, &keys).await.len();
        }
        for k in &keys {
            let r = c
                .get(format!("{}/kv/{k}?r=2", nodes[2].url))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{k} came back");
        }
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} copies still held");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Collected everywhere, and not back at any R through any node.
    for n in &nodes {
        for k in &keys {
            let r = c.get(format!("{}/kv/{k}?r=1", n.url)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{k} via {}", n.id);
        }
    }
    let mut collected = 0;
    for n in &nodes {
        let s = get_json(format!("{}/admin/stats", n.url)).await;
        collected += s["anti_entropy"]["tombstones_collected"].as_u64().unwrap();
    }
    // Every copy was collected at least once. A copy can be collected twice: a read through n3
    // while one replica has collected and another still holds the tombstone repairs the
    // tombstone back onto the first (harmless: it is collected again once all agree).
    assert!(
        collected >= 3 * keys.len() as u64,
        "{collected} collections"
    );
}
