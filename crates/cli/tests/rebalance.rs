//! End-to-end: growing and shrinking a cluster of real processes under a read/write load. Grow
//! 3 -> 5 (staged joins), shrink 5 -> 4 (a graceful leave), then remove a killed node; no
//! acknowledged write is lost, reads keep being answered, and every key ends on exactly its N
//! owners.

mod common;

use common::harness::{key_name, settle_and_check, start_workload};
use common::{Node, SECRET, cli, dirs, http, primaries, start_cluster, wait_for_ring};
use reqwest::StatusCode;
use std::time::{Duration, Instant};

const FLAGS: &[&str] = &["--anti-entropy-interval-ms", "1000"];

fn start_joiner(dir: &std::path::Path, id: &str, seed: &Node) -> Node {
    let mut args = vec![
        "--cluster-secret",
        SECRET,
        "--node-id",
        id,
        "--seeds",
        &seed.peer,
    ];
    args.extend(FLAGS);
    Node::start(dir, &args)
}

fn admin(args: &[&str]) -> String {
    let out = cli(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dynamokv {args:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Waits until every key of the workload is held by exactly its primaries among `nodes`.
async fn wait_exact_owners(nodes: &[&Node], keys: usize, secs: u64) {
    let c = http();
    let start = Instant::now();
    loop {
        let mut wrong = Vec::new();
        for k in 0..keys {
            let key = key_name(k);
            let owners = primaries(nodes[0], &key).await;
            for n in nodes {
                let r = c
                    .get(format!("{}/admin/local/{key}", n.url))
                    .send()
                    .await
                    .unwrap();
                let holds = r.status() == StatusCode::OK;
                if holds != owners.contains(&n.id) {
                    wrong.push(format!("{key} on {} (holds: {holds})", n.id));
                }
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "after {secs} s, {} copies are not on exactly their owners, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_then_shrink_under_load_loses_nothing() {
    let dirs = dirs(5);
    let mut nodes = start_cluster(&dirs[..3], FLAGS);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let workload = start_workload(urls, 4, 40);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Grow 3 -> 5: each new node joins through a seed and waits to be up.
    for (i, id) in [(3, "n4"), (4, "n5")] {
        let joiner = start_joiner(dirs[i].path(), id, &nodes[0]);
        let text = admin(&["admin", "join", "--node", &joiner.url, "--timeout", "60"]);
        assert!(text.contains(&format!("{id} is up")), "{text}");
        nodes.push(joiner);
    }
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 5).await;
    // Old owners hand over the keys of ranges they lost and delete them.
    wait_exact_owners(&nodes.iter().collect::<Vec<_>>(), 40, 60).await;

    // Shrink 5 -> 4: n5 leaves gracefully (plan shown, waits until left).
    let text = admin(&["admin", "leave", "--node", &nodes[4].url, "--timeout", "60"]);
    assert!(
        text.contains("plan:") && text.contains("n5 is left"),
        "{text}"
    );
    assert!(
        text.contains("stop its process"),
        "the operator is told what to do: {text}"
    );
    // And it no longer takes writes.
    let r = http()
        .put(format!("{}/kv/after-left", nodes[4].url))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a node that left refuses writes"
    );
    nodes[4].terminate();
    let four: Vec<&Node> = nodes[..4].iter().collect();
    wait_for_ring(&four, 4).await;

    // A node dies and is removed: its ranges are rebuilt from the survivors.
    nodes[3].kill9();
    let three: Vec<&Node> = nodes[..3].iter().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cli(&["admin", "remove", "n4", "--node", &nodes[0].url]);
        if out.status.success() {
            break;
        }
        // Refused while n4 is still believed up.
        assert!(Instant::now() < deadline, "remove refused for 30 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for_ring(&three, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let history = workload.stop().await;
    let (sent, answered) = (history.reads.sent, history.reads.answered);
    assert!(sent > 100, "the workload ran: {sent} reads");
    assert!(
        answered as f64 >= sent as f64 * 0.99,
        "reads answered throughout: {answered} of {sent}"
    );
    let violations = settle_and_check(&three, &history).await;
    assert!(violations.is_empty(), "{violations:?}");
    wait_exact_owners(&three, 40, 30).await;
}
