//! End-to-end tests of one real node over HTTP.

mod common;

use common::{Node, ctx, http};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// Everything a read shows, to compare states before and after a refused request.
async fn snapshot(
    c: &reqwest::Client,
    url: &str,
    key_path: &str,
) -> (StatusCode, Option<String>, String) {
    let r = c
        .get(format!("{url}/kv/{key_path}"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let context = ctx(&r);
    (status, context, r.text().await.unwrap())
}

async fn put(
    c: &reqwest::Client,
    url: &str,
    key: &str,
    value: &str,
    context: Option<&str>,
) -> String {
    let mut req = c.put(format!("{url}/kv/{key}")).body(value.to_owned());
    if let Some(x) = context {
        req = req.header("x-context", x);
    }
    let r = req.send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "{}",
        r.text().await.unwrap()
    );
    ctx(&r).expect("a put returns a context")
}

async fn live_values(
    c: &reqwest::Client,
    url: &str,
    key: &str,
) -> (StatusCode, Vec<String>, Option<String>) {
    let r = c
        .get(format!("{url}/kv/{key}"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let context = ctx(&r);
    if status == StatusCode::NOT_FOUND {
        return (status, vec![], context);
    }
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["context"].as_str(),
        context.as_deref(),
        "JSON and header contexts agree"
    );
    let mut vals: Vec<String> = body["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(s["value"].as_str().unwrap())
                .unwrap();
            String::from_utf8(raw).unwrap()
        })
        .collect();
    vals.sort();
    (status, vals, context)
}

#[tokio::test]
async fn round_trip_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let c = http();
    let h = c.get(format!("{}/health", node.url)).send().await.unwrap();
    assert_eq!(h.status(), StatusCode::OK);

    let r = c
        .get(format!("{}/kv/greeting", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(ctx(&r), None, "nothing written, no context");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found");

    let c1 = put(&c, &node.url, "greeting", "hello", None).await;
    let r = c
        .get(format!("{}/kv/greeting", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(ctx(&r).as_deref(), Some(c1.as_str()));
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello");

    // A sequential write with the read's context replaces the value: no sibling.
    put(&c, &node.url, "greeting", "hi", Some(&c1)).await;
    let r = c
        .get(format!("{}/kv/greeting", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hi");

    // Binary keys: percent-encoded bytes, including '/', NUL and non-UTF-8.
    let key = "a%2Fb%00%FF%20c";
    put(&c, &node.url, key, "binary", None).await;
    let r = c
        .get(format!("{}/kv/{key}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"binary");
    let r = c
        .get(format!("{}/kv/a%2Fb", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a different key");

    // Empty values are values.
    put(&c, &node.url, "empty", "", None).await;
    let r = c
        .get(format!("{}/kv/empty", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn siblings_from_stale_context_and_reconciliation() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let c = http();
    let c1 = put(&c, &node.url, "cart", "v1", None).await;
    // Two clients both read v1, then both write: the second write did not see the first.
    put(&c, &node.url, "cart", "alice", Some(&c1)).await;
    put(&c, &node.url, "cart", "bob", Some(&c1)).await;

    let (status, vals, merged) = live_values(&c, &node.url, "cart").await;
    assert_eq!(status, StatusCode::MULTIPLE_CHOICES);
    assert_eq!(
        vals,
        vec!["alice", "bob"],
        "v1 superseded, both concurrent writes kept"
    );
    let merged = merged.expect("one context for all siblings");

    // The default format is multipart/mixed with every sibling and the same context.
    let r = c.get(format!("{}/kv/cart", node.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::MULTIPLE_CHOICES);
    assert_eq!(ctx(&r).as_deref(), Some(merged.as_str()));
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    let boundary = ct
        .strip_prefix("multipart/mixed; boundary=")
        .expect("multipart")
        .to_owned();
    let body = r.text().await.unwrap();
    assert_eq!(body.matches(&format!("--{boundary}\r\n")).count(), 2);
    assert!(body.contains("\r\n\r\nalice\r\n") && body.contains("\r\n\r\nbob\r\n"));
    assert!(body.ends_with(&format!("--{boundary}--\r\n")));

    // A blind write (no context) is kept beside the others.
    put(&c, &node.url, "cart", "carol", None).await;
    let (_, vals, _) = live_values(&c, &node.url, "cart").await;
    assert_eq!(vals, vec!["alice", "bob", "carol"]);

    // Writing with the merged context replaces exactly what it covered: carol stays.
    put(&c, &node.url, "cart", "alice+bob", Some(&merged)).await;
    let (_, vals, merged2) = live_values(&c, &node.url, "cart").await;
    assert_eq!(vals, vec!["alice+bob", "carol"]);

    // And the latest context reconciles everything into one value.
    put(&c, &node.url, "cart", "all", merged2.as_deref()).await;
    let (status, vals, _) = live_values(&c, &node.url, "cart").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(vals, vec!["all"]);
}

#[tokio::test]
async fn delete_writes_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let c = http();

    // Delete with a context.
    let c1 = put(&c, &node.url, "k", "v", None).await;
    let r = c
        .delete(format!("{}/kv/k", node.url))
        .header("x-context", &c1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let del_ctx = ctx(&r).expect("delete returns a context");
    let r = c.get(format!("{}/kv/k", node.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        ctx(&r).as_deref(),
        Some(del_ctx.as_str()),
        "404 still carries the context"
    );

    // A put with the delete's context brings the key back as a single value.
    put(&c, &node.url, "k", "again", Some(&del_ctx)).await;
    let (status, vals, _) = live_values(&c, &node.url, "k").await;
    assert_eq!((status, vals), (StatusCode::OK, vec!["again".to_owned()]));

    // A delete with a stale context leaves the write it did not see.
    let stale = put(&c, &node.url, "s", "old", None).await;
    put(&c, &node.url, "s", "new", Some(&stale)).await;
    let r = c
        .delete(format!("{}/kv/s", node.url))
        .header("x-context", &stale)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c.get(format!("{}/kv/s", node.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-tombstones"], "1");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"new");

    // A delete without context removes every version the node holds, siblings included.
    put(&c, &node.url, "b", "x", None).await;
    put(&c, &node.url, "b", "y", None).await;
    let r = c.delete(format!("{}/kv/b", node.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, vals, context) = live_values(&c, &node.url, "b").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(vals.is_empty());
    assert!(context.is_some());
}

#[tokio::test]
async fn synced_data_survives_kill_9() {
    let c = http();
    // sync = always: acknowledged means on disk.
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &["--sync", "always"]);
    let health: Value = c
        .get(format!("{}/health", node.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actor1 = health["actor"].as_str().unwrap().to_owned();
    for i in 0..50 {
        put(&c, &node.url, &format!("k{i}"), &format!("v{i}"), None).await;
    }
    node.kill9();
    node.restart();
    for i in 0..50 {
        let r = c.get(format!("{}/kv/k{i}", node.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "k{i} lost");
        assert_eq!(r.text().await.unwrap(), format!("v{i}"));
    }
    // After a crash the node takes a new actor id, so it never reuses a counter.
    let health: Value = c
        .get(format!("{}/health", node.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actor2 = health["actor"].as_str().unwrap().to_owned();
    assert_ne!(actor1, actor2);
    // A write after the crash with an old context still supersedes correctly.
    let (_, _, before) = live_values(&c, &node.url, "k0").await;
    put(&c, &node.url, "k0", "w0", before.as_deref()).await;
    let (status, vals, _) = live_values(&c, &node.url, "k0").await;
    assert_eq!((status, vals), (StatusCode::OK, vec!["w0".to_owned()]));

    // A clean shutdown keeps the actor.
    node.terminate();
    node.restart();
    let health: Value = c
        .get(format!("{}/health", node.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["actor"].as_str().unwrap(), actor2);

    // sync = periodic (the default): writes older than the interval survive kill -9.
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &["--sync-interval-ms", "50"]);
    for i in 0..50 {
        put(&c, &node.url, &format!("p{i}"), "x", None).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.kill9();
    node.restart();
    for i in 0..50 {
        let r = c.get(format!("{}/kv/p{i}", node.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "p{i} lost");
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--max-value-bytes", "1000"]);
    let c = http();
    let good = put(&c, &node.url, "k", "v1", None).await;
    put(&c, &node.url, "k", "v2", None).await;
    let other = put(&c, &node.url, "other", "o", None).await;
    let before = snapshot(&c, &node.url, "k").await;
    assert_eq!(before.0, StatusCode::MULTIPLE_CHOICES);

    async fn expect_error(r: reqwest::Response, status: StatusCode, code: &str) {
        assert_eq!(r.status(), status);
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], code, "{body}");
        assert!(
            body["message"].as_str().unwrap().len() > 10,
            "a helpful message"
        );
    }

    // Oversized value, with and without a declared length.
    let r = c
        .put(format!("{}/kv/k", node.url))
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "value_too_large").await;
    // Chunked, no declared length: the limit applies while reading.
    let raw = raw_http(
        &node.url,
        &format!(
            "PUT /kv/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{}\r\n258\r\n{}\r\n0\r\n\r\n",
            "x".repeat(600),
            "y".repeat(600)
        ),
    );
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("value_too_large"), "{raw}");
    // Exactly the maximum is fine (on another key).
    let r = c
        .put(format!("{}/kv/max", node.url))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Bad keys: too long, empty, more than one segment.
    let long = "x".repeat(1025);
    let r = c
        .put(format!("{}/kv/{long}", node.url))
        .body("v")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "bad_key").await;
    let r = c
        .get(format!("{}/kv/{long}", node.url))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "bad_key").await;
    let r = c
        .put(format!("{}/kv/", node.url))
        .body("v")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "bad_key").await;
    let r = c
        .put(format!("{}/kv/k/extra", node.url))
        .body("v")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "bad_key").await;
    let ok_len = "y".repeat(1024);
    let r = c
        .put(format!("{}/kv/{ok_len}", node.url))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "1024-byte keys are fine"
    );

    // Contexts: garbage, tampered, from another key, non-ASCII - on put and delete.
    let mut tampered = good.clone().into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (bad, code) in [
        ("not a context!", "bad_context"),
        ("AAAA", "bad_context"),
        (tampered.as_str(), "bad_context"),
        (other.as_str(), "bad_context"),
    ] {
        let r = c
            .put(format!("{}/kv/k", node.url))
            .header("x-context", bad)
            .body("evil")
            .send()
            .await
            .unwrap();
        expect_error(r, StatusCode::BAD_REQUEST, code).await;
        let r = c
            .delete(format!("{}/kv/k", node.url))
            .header("x-context", bad)
            .send()
            .await
            .unwrap();
        expect_error(r, StatusCode::BAD_REQUEST, code).await;
    }
    let r = c
        .put(format!("{}/kv/k", node.url))
        .header(
            "x-context",
            reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        )
        .body("evil")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "bad_context").await;

    // Unknown routes and methods.
    let r = c.get(format!("{}/nope", node.url)).send().await.unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "unknown_route").await;
    let r = c
        .post(format!("{}/kv/k", node.url))
        .body("v")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;

    // Nothing changed.
    assert_eq!(snapshot(&c, &node.url, "k").await, before);
    let r = c
        .get(format!("{}/kv/{long}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = c.get(format!("{}/kv/nope", node.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Unambiguous parsing: a malformed escape is refused (it is not the key "%G1%", which is
    // spelled %25G1%25), query values are percent-decoded, a repeated parameter is refused.
    let r = c
        .put(format!("{}/kv/%G1%", node.url))
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "bad_key").await;
    let r = c
        .put(format!("{}/kv/%25G1%25", node.url))
        .body("literal")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c
        .get(format!("{}/kv/%25G1%25?r=%31", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "literal");
    let r = c
        .get(format!("{}/kv/k?r=1&r=1", node.url))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "bad_query").await;

    // The default maximum is 1 MiB.
    let dir2 = tempfile::tempdir().unwrap();
    let node2 = Node::start(dir2.path(), &[]);
    let r = c
        .put(format!("{}/kv/big", node2.url))
        .body(vec![0u8; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c
        .put(format!("{}/kv/big", node2.url))
        .body(vec![0u8; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "value_too_large").await;
    let r = c.get(format!("{}/kv/big", node2.url)).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 1024 * 1024);
}

/// Sends raw bytes to the node and returns everything it answers.
fn raw_http(url: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn data_dir_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _node = Node::start(dir.path(), &[]);
    let out = common::cli(&[
        "server",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");
}
