//! End-to-end: deleted means deleted. A node that was removed (dead, or alive behind a
//! partition) and comes back on its old data, or a node whose data directory is put back from an
//! older copy, brings back none of the values deleted meanwhile - even after their tombstones
//! were collected. Such an instance is refused by every member, stops serving, refuses to start
//! on that directory with a message saying how to come back, and a wiped directory joins again
//! as a new instance. A data directory belongs to one node id.

mod common;

use common::{
    Node, SECRET, cli, dirs, get_json, http, primaries, refused_start, start_cluster,
    wait_for_ring, write_all,
};
use reqwest::StatusCode;
use std::process::Command;
use std::time::{Duration, Instant};

/// Short tombstone age and frequent anti-entropy, as in the run that found the defect.
const FLAGS: &[&str] = &[
    "--tombstone-min-age-ms",
    "1000",
    "--anti-entropy-interval-ms",
    "1000",
];

/// Deletes `keys`, spread over `nodes`; every delete must be acknowledged.
async fn delete_all(nodes: &[&Node], keys: &[String]) {
    let c = http();
    for (i, k) in keys.iter().enumerate() {
        let url = &nodes[i % nodes.len()].url;
        let r = c.delete(format!("{url}/kv/{k}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "delete {k}");
    }
}

/// How many of `keys` read 200 at R=2 through `nodes` (round robin).
async fn readable(nodes: &[&Node], keys: &[String]) -> Vec<String> {
    let c = http();
    let mut back = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let url = &nodes[i % nodes.len()].url;
        let r = c.get(format!("{url}/kv/{k}?r=2")).send().await.unwrap();
        match r.status() {
            StatusCode::NOT_FOUND => {}
            StatusCode::OK | StatusCode::MULTIPLE_CHOICES => back.push(k.clone()),
            other => panic!("reading {k} through {url}: {other}"),
        }
    }
    back
}

/// Asserts that none of the deleted `keys` reads back through `nodes`.
async fn assert_none_back(nodes: &[&Node], keys: &[String]) {
    let back = readable(nodes, keys).await;
    assert!(
        back.is_empty(),
        "{} deleted keys back: {:?}",
        back.len(),
        &back[..back.len().min(5)]
    );
}

/// Waits until no node of `nodes` holds a tombstone any more and some were collected: the
/// deletes' tombstones are gone, so only the endings stand between old values and the cluster.
async fn wait_collected(nodes: &[&Node], secs: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (mut held, mut collected) = (0, 0);
        for n in nodes {
            let s = get_json(format!("{}/admin/stats", n.url)).await;
            held += s["anti_entropy"]["tombstones"].as_u64().unwrap();
            collected += s["anti_entropy"]["tombstones_collected"].as_u64().unwrap();
        }
        if held == 0 && collected > 0 {
            return collected;
        }
        assert!(
            Instant::now() < deadline,
            "tombstones not collected within {secs} s: {held} held, {collected} collected"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until `node`'s `/health` answers 503 with status `how` (its instance ended); returns
/// the message.
async fn wait_ended(node: &Node, how: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = http()
            .get(format!("{}/health", node.url))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["status"], how, "{v}");
            return v["message"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{} still healthy after {secs} s",
            node.id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The flags of a node of these tests, seeded with `seed`.
fn flags<'a>(id: &'a str, seed: &'a str) -> Vec<&'a str> {
    let mut f = vec!["--cluster-secret", SECRET, "--node-id", id, "--seeds", seed];
    f.extend(FLAGS);
    f
}

/// Keeps asking `by` to remove `id` until it accepts (refused while it is believed up).
async fn remove(by: &Node, id: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = cli(&["admin", "remove", id, "--node", &by.url]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "remove {id} refused for {secs} s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:04}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_that_comes_back_on_its_old_data_brings_no_deleted_value_back() {
    let dirs = dirs(4);
    let mut nodes = start_cluster(&dirs, FLAGS);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 4).await;
    let deleted = keys("zombie", 400);
    write_all(&nodes[0], &deleted, "?w=3").await;

    // n4 dies, is removed, and every key is deleted through the others.
    let (firsts, last) = nodes.split_at_mut(3);
    let n4 = &mut last[0];
    n4.kill9();
    remove(&firsts[0], "n4", 30).await;
    let three: Vec<&Node> = firsts.iter().collect();
    wait_for_ring(&three, 3).await;
    delete_all(&three, &deleted).await;
    wait_collected(&three, 60).await;
    assert!(readable(&three, &deleted).await.is_empty());

    // Its machine starts it again on its old data: it has not heard of its removal, so it
    // starts, and is told at its first handshake.
    n4.restart();
    let message = wait_ended(n4, "removed", 30).await;
    assert!(
        message.contains("removed") && message.contains("wipe the data directory"),
        "{message}"
    );
    let r = http()
        .get(format!("{}/kv/{}", n4.url, deleted[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_a_member");
    // Several anti-entropy rounds later, still nothing deleted is back, and the ring is three.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_none_back(&three, &deleted).await;
    let ring = get_json(format!("{}/admin/ring", firsts[0].url)).await;
    let record = ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "n4")
        .unwrap();
    assert_eq!(record["status"], "Left");
    let status = cli(&["admin", "status", "--node", &n4.url]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("THIS NODE NO LONGER SERVES"), "{text}");

    // It keeps its end: started again on that directory, it refuses, saying how to come back.
    n4.terminate();
    let seed = firsts[0].peer.clone();
    let err = refused_start(&n4.data_dir, &flags("n4", &seed));
    assert!(
        err.contains("was removed from the cluster by n1")
            && err.contains("wipe the data directory"),
        "{err}"
    );
    // A removed member is out of the health picture: the cluster's verdict is healthy.
    let out = cli(&["admin", "status", "--all", "--node", &firsts[0].url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("every member up"),
        "{text}"
    );

    // Wiped, it joins as a new instance and receives its ranges from the current owners.
    let fresh = keys("after", 60);
    write_all(&firsts[0], &fresh, "?w=3").await;
    let dir = n4.data_dir.clone();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    *n4 = Node::start(&dir, &flags("n4", &seed));
    let out = cli(&["admin", "join", "--node", &n4.url, "--timeout", "60"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("n4 is up"), "{text}");
    let all: Vec<&Node> = three.iter().copied().chain([&*n4]).collect();
    wait_for_ring(&all, 4).await;
    let mut owned = Vec::new();
    for k in &fresh {
        if primaries(&firsts[0], k).await.contains(&"n4".to_owned()) {
            owned.push(k.clone());
        }
    }
    assert!(!owned.is_empty());
    for k in &owned {
        let r = http()
            .get(format!("{}/admin/local/{k}", n4.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "n4 lacks {k} after joining");
    }
    assert!(readable(&all, &deleted).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_behind_a_partition_is_refused_when_the_partition_heals() {
    let dirs = dirs(4);
    let mut flags: Vec<&str> = FLAGS.to_vec();
    flags.push("--enable-fault-injection");
    let mut nodes = start_cluster(&dirs, &flags);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 4).await;
    let deleted = keys("cut", 200);
    write_all(&nodes[0], &deleted, "?w=3").await;

    // n4 is cut off from the others, both ways (it keeps running and its connections stay).
    let c = http();
    for (i, n) in nodes.iter().enumerate() {
        let others: &[&str] = if i == 3 { &["n1", "n2", "n3"] } else { &["n4"] };
        let r = c
            .post(format!("{}/admin/faults", n.url))
            .json(&serde_json::json!({ "drop_to": others, "drop_from": others }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Once the others believe it down, n1 removes it; the keys are deleted and collected.
    remove(&nodes[0], "n4", 60).await;
    let three: Vec<&Node> = nodes[..3].iter().collect();
    wait_for_ring(&three, 3).await;
    delete_all(&three, &deleted).await;
    wait_collected(&three, 60).await;

    // The partition heals: n4, still running on the old values, is refused and told.
    for n in &nodes {
        let r = c
            .delete(format!("{}/admin/faults", n.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    wait_ended(&nodes[3], "removed", 30).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_none_back(&three, &deleted).await;
    // Its old copies are still on its disk: they were never merged back.
    let mut held = 0;
    for k in &deleted {
        let r = c
            .get(format!("{}/admin/local/{k}", nodes[3].url))
            .send()
            .await
            .unwrap();
        held += usize::from(r.status() == StatusCode::OK);
    }
    assert!(held > 0, "n4 held none of the keys");
    // And it refuses to start on that directory again.
    let mut n4 = nodes.pop().unwrap();
    n4.terminate();
    let seed = nodes[0].peer.clone();
    let err = refused_start(
        &n4.data_dir,
        &[
            "--cluster-secret",
            SECRET,
            "--node-id",
            "n4",
            "--seeds",
            &seed,
        ],
    );
    assert!(err.contains("was removed from the cluster"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_put_back_from_an_older_copy_brings_no_deleted_value_back() {
    let dirs = dirs(4);
    let copy = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(&dirs, FLAGS);
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for_ring(&all, 4).await;
    let deleted = keys("old", 400);
    write_all(&nodes[0], &deleted, "?w=3").await;

    // n4 stops, its directory is copied, and it starts again.
    nodes[3].terminate();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", nodes[3].data_dir.display()))
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(status.success());
    nodes[3].restart();
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 4).await;

    // Every key is deleted, and the tombstones are collected everywhere (n4 included).
    let all: Vec<&Node> = nodes.iter().collect();
    delete_all(&all[..3], &deleted).await;
    wait_collected(&all, 60).await;

    // n4 dies, its directory is replaced by the older copy, and it starts on it.
    nodes[3].kill9();
    let dir = nodes[3].data_dir.clone();
    std::fs::remove_dir_all(&dir).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(copy.path())
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    nodes[3].restart();
    let message = wait_ended(&nodes[3], "stale", 30).await;
    assert!(message.contains("older copy"), "{message}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let three: Vec<&Node> = nodes[..3].iter().collect();
    assert_none_back(&three, &deleted).await;

    // Started again on that copy, it refuses.
    nodes[3].terminate();
    let seed = nodes[0].peer.clone();
    let err = refused_start(&nodes[3].data_dir, &flags("n4", &seed));
    assert!(err.contains("older copy of its data directory"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_belongs_to_one_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut n4 = Node::start(dir.path(), &["--cluster-secret", SECRET, "--node-id", "n4"]);
    n4.terminate();
    let err = refused_start(dir.path(), &["--cluster-secret", SECRET, "--node-id", "n5"]);
    assert!(
        err.contains("belongs to node n4, not n5") && err.contains("--node-id n4"),
        "{err}"
    );
    // Nothing changed: it starts again as n4.
    n4.restart();
    assert_eq!(n4.id, "n4");
}
