//! End-to-end tests of bounded objects and of deletes without a context, on real processes.

mod common;

use common::{dirs, http, primaries, start_cluster, wait_for_ring};
use reqwest::StatusCode;
use serde_json::Value;

async fn json(r: reqwest::Response) -> Value {
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_at_its_limit_refuses_the_write_and_nothing_else_breaks() {
    let dirs = dirs(3);
    let flags = [
        "--max-value-bytes",
        "100000",
        "--max-object-bytes",
        "450000",
    ];
    let nodes = start_cluster(&dirs, &flags);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let c = http();
    let url = |i: usize, path: &str| format!("{}{path}", nodes[i].url);
    // Blind writes of 100 kB to one key pile up siblings until the limit refuses one.
    let mut accepted = 0;
    let mut refusal = None;
    for i in 0..10 {
        let r = c
            .put(url(i % 3, "/kv/poison"))
            .body(vec![b'x' + (i as u8); 100_000])
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::NO_CONTENT => accepted += 1,
            status => {
                refusal = Some((status, json(r).await));
                break;
            }
        }
    }
    assert_eq!(
        accepted, 4,
        "four 100 kB siblings fit in 450 kB, a fifth does not"
    );
    let (status, body) = refusal.expect("a write was refused");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"], "object_too_large");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("\"poison\"") && message.contains("context"),
        "{message}"
    );
    // The key still reads, at every R, with its four siblings.
    for r in 1..=3 {
        let resp = c
            .get(url(1, &format!("/kv/poison?r={r}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::MULTIPLE_CHOICES, "R={r}");
    }
    // Other keys keep working and no peer connection dropped.
    for i in 0..20 {
        let r = c
            .put(url(i % 3, &format!("/kv/other{i}")))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    for n in &nodes {
        let m = json(
            c.get(format!("{}/admin/members", n.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        for member in m["members"].as_array().unwrap() {
            assert_eq!(member["up"], true, "{member}");
        }
        let stats = json(
            c.get(format!("{}/admin/stats", n.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(stats["rejected_messages"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sibling_cap_refuses_one_more_concurrent_write() {
    let dirs = dirs(1);
    let nodes = start_cluster(&dirs, &["--max-siblings", "100"]);
    let c = http();
    let url = format!("{}/kv/hot", nodes[0].url);
    for i in 0..100 {
        let r = c.put(&url).body(format!("v{i}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "write {i}");
    }
    let r = c.put(&url).body("v100").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body = json(r).await;
    assert_eq!(body["error"], "too_many_siblings");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("\"hot\" has 100"),
        "{body}"
    );
    // Nothing changed: still 100 siblings, and writing back with the context reconciles them.
    let r = c
        .get(&url)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MULTIPLE_CHOICES);
    let ctx = common::ctx(&r).unwrap();
    let body = json(r).await;
    assert_eq!(body["siblings"].as_array().unwrap().len(), 100, "{body}");
    let r = c
        .put(&url)
        .header("X-Context", ctx)
        .body("merged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let stats = json(
        c.get(format!("{}/admin/stats", nodes[0].url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stats["refused_writes"], 1);
    assert!(stats["sibling_warnings"].as_u64().unwrap() >= 75);
    assert!(stats["reads_by_versions"]["4+"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_without_context_deletes_what_the_replicas_hold() {
    let dirs = dirs(3);
    // No anti-entropy and no hints: the coordinator's copy stays missing.
    let flags = [
        "--anti-entropy-interval-ms",
        "0",
        "--hint-scan-interval-ms",
        "3600000",
    ];
    let mut nodes = start_cluster(&dirs, &flags);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    // A key whose coordinator is n2.
    let mut key = String::new();
    for i in 0.. {
        key = format!("del{i}");
        if primaries(&nodes[0], &key).await[0] == "n2" {
            break;
        }
    }
    nodes[1].kill9();
    let c = http();
    let r = c
        .put(format!("{}/kv/{key}", nodes[0].url))
        .body("value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    nodes[1].restart();
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let local = c
        .get(format!("{}/admin/local/{key}", nodes[1].url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        local.status(),
        StatusCode::NOT_FOUND,
        "the coordinator lacks the value"
    );

    let r = c
        .delete(format!("{}/kv/{key}", nodes[1].url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // R=2 and R=3 overlap the delete's W=2: gone at once, through any node.
    for r in 2..=3 {
        for n in &nodes {
            let resp = c
                .get(format!("{}/kv/{key}?r={r}", n.url))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "R={r} via {}", n.id);
        }
    }
    // R=1 need not overlap it (a primary answers from its own copy, which the third
    // replication may not have reached yet): gone once that replication lands.
    for n in &nodes {
        let mut status = StatusCode::OK;
        for _ in 0..50 {
            status = c
                .get(format!("{}/kv/{key}?r=1", n.url))
                .send()
                .await
                .unwrap()
                .status();
            if status == StatusCode::NOT_FOUND {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(status, StatusCode::NOT_FOUND, "R=1 via {}", n.id);
    }
}
