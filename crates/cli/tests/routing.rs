//! End-to-end routing: a forward to a primary that went silent (cut off, not yet detected as down) goes on to the next primary
//! before the client is answered.

mod common;

use common::{dirs, get_json, http, primaries, start_cluster, wait_for_ring};
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_coordinator_is_skipped_before_the_client_hears() {
    let d = dirs(3);
    let nodes = start_cluster(&d, &["-n", "2", "--enable-fault-injection"]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let c = http();
    let key = "routed";
    let p = primaries(&nodes[0], key).await;
    let node = |id: &str| nodes.iter().find(|n| n.id == id).unwrap();
    let (first, second) = (node(&p[0]), node(&p[1]));
    let other = nodes.iter().find(|n| !p.contains(&n.id)).unwrap();
    let stat = async |n: &common::Node, name: &str| {
        get_json(format!("{}/admin/stats", n.url)).await[name]
            .as_u64()
            .unwrap()
    };

    let r = c
        .put(format!("{}/kv/{key}", second.url))
        .body("v1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // The first primary drops everything, and nobody has noticed yet.
    let all: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let r = c
        .post(format!("{}/admin/faults", first.url))
        .json(&serde_json::json!({"drop_to": all, "drop_from": all}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let r = c
        .put(format!("{}/kv/{key}?w=1", other.url))
        .body("v2")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    assert!(
        stat(other, "forward_retries").await >= 1,
        "the forward went on to the next primary (answered after {took:?})"
    );
    let r = c
        .get(format!("{}/kv/{key}?r=1", other.url))
        .send()
        .await
        .unwrap();
    // Before, such a request failed with 503 coordinator_unreachable once the forward timed
    // out; now the second primary coordinated it (a blind write: a sibling of v1).
    let body = r.text().await.unwrap();
    assert!(body.contains("v2") && body.contains("v1"), "{body}");
}
