//! Expiry, counters and racing conditional writes, end to end with curl, redis-cli and the
//! HTTP API: a value is gone at its deadline on every node and never comes back through a
//! replica that was down (handoff, anti-entropy), and is collected from disk; counters
//! incremented through every node at once while one is killed count every acknowledged
//! increment once; conditional creates racing through different nodes keep exactly the writes
//! that were acknowledged.

mod common;

use common::{curl, dirs, get_json, http, start_cluster, wait_for_ring, write_all};
use reqwest::StatusCode;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `redis-cli -h HOST -p PORT ARGS`: its output, trimmed.
fn redis_cli(resp: &str, args: &[&str]) -> String {
    let (host, port) = resp.rsplit_once(':').unwrap();
    let out = Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(args)
        .output()
        .expect("redis-cli (Debian's redis-tools; scripts/test installs it)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Keys of `keys` that `node` holds a copy of (expired or not), from `/admin/local`.
async fn held_on(node: &common::Node, keys: &[String]) -> usize {
    let c = http();
    let mut held = 0;
    for k in keys {
        let r = c
            .get(format!("{}/admin/local/{k}", node.url))
            .send()
            .await
            .unwrap();
        held += usize::from(r.status() == StatusCode::OK);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_values_are_gone_everywhere_never_come_back_and_are_collected() {
    let d = dirs(3);
    let flags = [
        "--resp",
        "127.0.0.1:0",
        "--anti-entropy-interval-ms",
        "500",
        "--tombstone-min-age-ms",
        "1000",
    ];
    let mut nodes = start_cluster(&d, &flags);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;

    // curl: a value with ?ttl= carries X-Expires, is listed, and is gone at its deadline.
    let url = format!("{}/kv/brief?ttl=1", nodes[0].url);
    let (s, _, _) = curl(&["-X", "PUT", "--data", "soon gone"], &url);
    assert_eq!(s, 204);
    let (s, head, body) = curl(&[], &format!("{}/kv/brief", nodes[1].url));
    assert_eq!((s, body.as_str()), (200, "soon gone"));
    assert!(head.contains("x-expires: "), "{head}");
    let (_, _, list) = curl(&[], &format!("{}/kv?prefix=brief", nodes[2].url));
    assert!(list.contains("\"brief\""), "{list}");
    let (s, _, body) = curl(
        &["-X", "PUT", "-H", "X-TTL: 0", "--data", "x"],
        &format!("{}/kv/brief", nodes[0].url),
    );
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("bad_ttl"), "{body}");
    // redis-cli: SET EX and TTL on another key.
    assert_eq!(
        redis_cli(&nodes[1].resp, &["SET", "rbrief", "v", "EX", "1"]),
        "OK"
    );
    assert_eq!(redis_cli(&nodes[2].resp, &["TTL", "rbrief"]), "1");
    // EXPIRE, PEXPIRE, PTTL, PERSIST, SET XX PX and NX on a third key.
    let r = |i: usize, args: &[&str]| redis_cli(&nodes[i].resp, args);
    assert_eq!(r(0, &["SET", "kept", "v"]), "OK");
    assert_eq!(r(1, &["EXPIRE", "kept", "100"]), "1");
    assert_eq!(r(2, &["TTL", "kept"]), "100");
    assert_eq!(r(0, &["PEXPIRE", "kept", "50000"]), "1");
    let pttl: u64 = r(1, &["PTTL", "kept"]).parse().unwrap();
    assert!((45_000..=50_000).contains(&pttl), "{pttl}");
    assert_eq!(r(2, &["PERSIST", "kept"]), "1");
    assert_eq!(r(0, &["TTL", "kept"]), "-1");
    assert_eq!(r(1, &["SET", "kept", "w", "XX", "PX", "100000"]), "OK");
    assert_eq!(r(2, &["SET", "kept", "x", "NX"]), "");
    assert_eq!(r(0, &["GET", "kept"]), "w");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for n in &nodes {
        let (s, _, body) = curl(&[], &format!("{}/kv/brief?r=1", n.url));
        assert_eq!(s, 404, "{}: {body}", n.id);
        assert!(body.contains("expired"), "{body}");
        assert_eq!(redis_cli(&n.resp, &["GET", "rbrief"]), "");
        assert_eq!(redis_cli(&n.resp, &["TTL", "rbrief"]), "-2");
    }
    let (_, _, list) = curl(&[], &format!("{}/kv?prefix=brief", nodes[2].url));
    assert!(
        list.contains("\"count\":0"),
        "an expired key is not listed: {list}"
    );

    // Keys every node holds without a deadline; then, with n3 down, they are written again
    // with a short time to live. n3 keeps the old values, with no deadline.
    let keys: Vec<String> = (0..30).map(|i| format!("exp{i}")).collect();
    write_all(&nodes[0], &keys, "?w=3").await;
    nodes[2].kill9();
    let c = http();
    for k in &keys {
        let r = c
            .get(format!("{}/kv/{k}?r=2", nodes[0].url))
            .send()
            .await
            .unwrap();
        let ctx = common::ctx(&r).expect("a context");
        let r = c
            .put(format!("{}/kv/{k}?w=2&ttl=2", nodes[0].url))
            .header("X-Context", ctx)
            .body("brief")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{k}");
    }
    let written = Instant::now();
    // Until the deadline the new values read everywhere that is up.
    for k in keys.iter().take(5) {
        let r = c
            .get(format!("{}/kv/{k}?r=2", nodes[1].url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{k}");
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(written.elapsed())).await;
    // Past it, while n3 is still down, nothing is collected (n3 may hold an older value).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(held_on(&nodes[0], &keys).await, keys.len());

    // n3 comes back with its old values. At no moment does a quorum read through any node
    // return one of them: anti-entropy brings n3 the expired versions, and every copy is
    // collected.
    nodes[2].restart();
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for n in &nodes {
            for k in keys.iter().step_by(3) {
                let r = c.get(format!("{}/kv/{k}?r=2", n.url)).send().await.unwrap();
                assert_eq!(
                    r.status(),
                    StatusCode::NOT_FOUND,
                    "{k} came back through {}",
                    n.id
                );
            }
        }
        let mut left = 0;
        for n in &nodes {
            left += held_on(n, &keys).await;
        }
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} copies still held");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Collected everywhere, and not back through any node, even at R=1.
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
    assert!(
        collected >= 3 * keys.len() as u64,
        "{collected} collections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_through_every_node_count_each_acknowledged_increment_while_one_is_killed() {
    let d = dirs(3);
    let mut nodes = start_cluster(&d, &["--resp", "127.0.0.1:0"]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    // curl and redis-cli on one counter: both kinds of door count together.
    let (s, _, body) = curl(
        &["-X", "POST"],
        &format!("{}/counters/visits?by=5", nodes[0].url),
    );
    assert_eq!(
        (s, body.as_str()),
        (200, "{\"key\":\"visits\",\"value\":5}")
    );
    assert_eq!(redis_cli(&nodes[1].resp, &["INCR", "visits"]), "6");
    assert_eq!(redis_cli(&nodes[2].resp, &["DECRBY", "visits", "2"]), "4");
    assert_eq!(redis_cli(&nodes[0].resp, &["GET", "visits"]), "4");
    let (s, _, body) = curl(&[], &format!("{}/counters/visits", nodes[2].url));
    assert_eq!(
        (s, body.as_str()),
        (200, "{\"key\":\"visits\",\"value\":4}")
    );
    let (s, _, body) = curl(
        &["-X", "PUT", "--data", "x"],
        &format!("{}/kv/visits", nodes[1].url),
    );
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("wrong_type"), "{body}");

    // Three writers, one per node, increment one counter; n3 is killed halfway.
    let acked = Arc::new(AtomicU64::new(0));
    let attempted = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for n in &nodes {
        let (url, acked, attempted) = (n.url.clone(), acked.clone(), attempted.clone());
        writers.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            for _ in 0..150 {
                attempted.fetch_add(1, Ordering::SeqCst);
                let r = c.post(format!("{url}/counters/hits")).send().await;
                if r.is_ok_and(|r| r.status() == StatusCode::OK) {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    nodes[2].kill9();
    for w in writers {
        w.await.unwrap();
    }
    let (acked, attempted) = (
        acked.load(Ordering::SeqCst),
        attempted.load(Ordering::SeqCst),
    );
    assert!(
        acked >= 300,
        "the two live writers kept going: {acked} of {attempted}"
    );
    let value = |body: &serde_json::Value| body["value"].as_i64().unwrap() as u64;
    // Through both live nodes, at R=2: between what was acknowledged and what was attempted.
    for n in &nodes[..2] {
        let v = get_json(format!("{}/counters/hits?r=2", n.url)).await;
        assert!(
            (acked..=attempted).contains(&value(&v)),
            "{}: {v} not in {acked}..={attempted}",
            n.id
        );
    }
    // n3 back: the same value everywhere once it caught up, never fewer than acknowledged.
    nodes[2].restart();
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let before = value(&get_json(format!("{}/counters/hits?r=3", nodes[0].url)).await);
    assert!((acked..=attempted).contains(&before), "{before}");
    let after = common::eventually(30, "every node answers the same count", || async {
        let mut seen = Vec::new();
        for n in &nodes {
            seen.push(value(
                &get_json(format!("{}/counters/hits?r=1", n.url)).await,
            ));
        }
        if seen.iter().all(|v| *v == seen[0]) {
            Ok(seen[0])
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
    assert!((acked..=attempted).contains(&after), "{after}");
    assert_eq!(
        redis_cli(&nodes[2].resp, &["INCR", "hits"]),
        (after + 1).to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_conditional_creates_keep_exactly_the_acknowledged_writes() {
    let d = dirs(3);
    let nodes = start_cluster(&d, &[]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    // For each key, three creates with If-None-Match: * at once, one through each node.
    let keys: Vec<String> = (0..40).map(|i| format!("race{i}")).collect();
    let mut tasks = Vec::new();
    for k in &keys {
        for (i, n) in nodes.iter().enumerate() {
            let url = format!("{}/kv/{k}", n.url);
            tasks.push(tokio::spawn(async move {
                let r = http()
                    .put(url)
                    .header("If-None-Match", "*")
                    .body(format!("writer{i}"))
                    .send()
                    .await
                    .unwrap();
                (i, r.status())
            }));
        }
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let mut raced = 0;
    for (k, answers) in keys.iter().zip(outcomes.chunks(3)) {
        let won: Vec<String> = answers
            .iter()
            .filter(|(_, s)| *s == StatusCode::NO_CONTENT)
            .map(|(i, _)| format!("writer{i}"))
            .collect();
        assert!(
            answers
                .iter()
                .all(|(_, s)| *s == StatusCode::NO_CONTENT || *s == StatusCode::PRECONDITION_FAILED),
            "{k}: {answers:?}"
        );
        assert!(!won.is_empty(), "{k}: someone creates it");
        raced += usize::from(won.len() > 1);
        // What the key holds is exactly the acknowledged creates: a refused one wrote nothing,
        // and no acknowledged one was lost (concurrent ones are siblings).
        let r = http()
            .get(format!("{}/kv/{k}?r=3", nodes[0].url))
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = r.json().await.unwrap();
        let mut held: Vec<String> = body["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                use base64::Engine as _;
                let v = base64::engine::general_purpose::STANDARD
                    .decode(s["value"].as_str().unwrap())
                    .unwrap();
                String::from_utf8(v).unwrap()
            })
            .collect();
        held.sort();
        assert_eq!(held, won, "{k}");
    }
    eprintln!("{raced} of {} keys had more than one winner", keys.len());
}
