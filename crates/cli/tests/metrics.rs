//! End-to-end: `GET /metrics` is Prometheus text that a Prometheus parser reads, and its series
//! move with the operations that should move them.

mod common;

use common::{dirs, http, start_cluster, wait_for_ring};
use prometheus_parse::{Scrape, Value};

async fn scrape(url: &str) -> Scrape {
    let r = http().get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let text = r.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text")
}

/// The value of series `name` whose labels include `labels` (0 when absent).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is {other:?}"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_the_operations() {
    let d = dirs(3);
    let mut nodes = start_cluster(&d, &["--resp", "127.0.0.1:0"]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let url = nodes[0].url.clone();
    let c = http();
    let before = scrape(&url).await;
    assert!(before.docs.contains_key("dynamokv_coordinated_total"));

    for i in 0..5 {
        let r = c
            .put(format!("{url}/kv/m{i}"))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    assert_eq!(
        c.get(format!("{url}/kv/m1")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(format!("{url}/kv/none"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.delete(format!("{url}/kv/m2"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    {
        use std::io::{BufRead, Write};
        let s = std::net::TcpStream::connect(&nodes[0].resp).unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        (&s).write_all(b"SET r1 x\r\nGET r1\r\n").unwrap();
        let mut line = String::new();
        for _ in 0..3 {
            r.read_line(&mut line).unwrap();
        }
        assert_eq!(line, "+OK\r\n$1\r\nx\r\n");
    }
    // A write that this node coordinates itself is timed on the coordinator side too.
    let mut own = None;
    for i in 0..200 {
        let key = format!("c{i}");
        if common::primaries(&nodes[0], &key).await[0] == nodes[0].id {
            own = Some(key);
            break;
        }
    }
    let own = own.expect("some key has n1 as its first primary");
    let r = c
        .put(format!("{url}/kv/{own}"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // A write that needs a replica that is gone fails at once: a write-quorum failure.
    nodes[2].kill9();
    let mut failed = false;
    for _ in 0..50 {
        let r = c
            .put(format!("{url}/kv/m9?w=3"))
            .body("v")
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            failed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(failed, "w=3 with a node dead fails");

    let after = scrape(&url).await;
    assert!(
        after
            .docs
            .get("dynamokv_request_duration_seconds")
            .is_some_and(|h| h.contains("protocol")),
        "HELP text: {:?}",
        after.docs
    );
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let count = "dynamokv_request_duration_seconds_count";
    let http_put = [("protocol", "http"), ("op", "put"), ("outcome", "ok")];
    assert_eq!(
        delta(count, &http_put),
        6.0,
        "m0..m4 and the coordinated one"
    );
    let found = [("protocol", "http"), ("op", "get"), ("outcome", "ok")];
    assert_eq!(delta(count, &found), 1.0);
    let missing = [
        ("protocol", "http"),
        ("op", "get"),
        ("outcome", "not_found"),
    ];
    assert_eq!(delta(count, &missing), 1.0);
    let deleted = [("protocol", "http"), ("op", "delete"), ("outcome", "ok")];
    assert_eq!(delta(count, &deleted), 1.0);
    let unavailable = [
        ("protocol", "http"),
        ("op", "put"),
        ("outcome", "unavailable"),
    ];
    assert!(delta(count, &unavailable) >= 1.0);
    assert_eq!(delta(count, &[("protocol", "resp"), ("op", "put")]), 1.0);
    assert_eq!(delta(count, &[("protocol", "resp"), ("op", "get")]), 1.0);
    assert!(delta("dynamokv_quorum_failures_total", &[("kind", "write")]) >= 1.0);
    // Each of the 10 requests that succeeded here was coordinated here or forwarded.
    let handled = delta("dynamokv_coordinated_total", &[("op", "write")])
        + delta("dynamokv_coordinated_total", &[("op", "read")])
        + delta("dynamokv_forwarded_total", &[]);
    assert!(handled >= 10.0, "{handled}");
    // The divergent-versions table has its four rows.
    for v in ["1", "2", "3", "4+"] {
        assert!(
            after
                .samples
                .iter()
                .any(|x| x.metric == "dynamokv_reads_by_versions_total"
                    && x.labels.get("versions") == Some(v)),
            "versions={v}"
        );
    }
    assert_eq!(value(&after, "dynamokv_peer_up", &[("peer", "n2")]), 1.0);
    // The writes were replicated (kv messages now); gossip has run since the start.
    assert!(delta("dynamokv_peer_sent_messages_total", &[("family", "kv")]) > 0.0);
    assert!(delta("dynamokv_peer_sent_bytes_total", &[("family", "kv")]) > 0.0);
    assert!(
        value(
            &after,
            "dynamokv_peer_sent_messages_total",
            &[("family", "gossip")]
        ) > 0.0
    );
    assert!(
        value(
            &after,
            "dynamokv_peer_sent_bytes_total",
            &[("family", "gossip")]
        ) > 0.0
    );
    assert_eq!(value(&after, "dynamokv_members", &[("status", "up")]), 3.0);
    let coordinator = "dynamokv_coordinator_duration_seconds_count";
    assert!(delta(coordinator, &[("op", "put"), ("outcome", "ok")]) >= 1.0);
    assert!(
        after
            .samples
            .iter()
            .any(|x| x.metric == "dynamokv_coordinator_duration_seconds"
                && matches!(&x.value, Value::Histogram(b) if b.len() == 13)),
        "the coordinator histogram has its 13 buckets"
    );
    assert_eq!(value(&after, "dynamokv_background_share", &[]), 1.0);
    assert!(after.docs.contains_key("dynamokv_foreground_p99_seconds"));
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&after, "process_open_fds", &[]) > 3.0);
    assert!(value(&after, "dynamokv_data_dir_bytes", &[]) > 0.0);
    // Buckets are there for latency quantiles.
    assert!(
        after
            .samples
            .iter()
            .any(|x| x.metric == "dynamokv_request_duration_seconds"
                && matches!(&x.value, Value::Histogram(b) if b.len() > 10)),
        "a histogram with buckets"
    );
}
