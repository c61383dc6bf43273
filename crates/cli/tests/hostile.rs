//! End-to-end: hostile clients on the HTTP port cost a node little and do not stop it serving.
//! Idle and slowloris connections are cut off after the header deadline, connections past the
//! cap get 503 at once, and a body declared larger than the limit is refused without waiting for
//! it.

mod common;

use common::{Node, http};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Whether the server closed `s` (EOF or reset) before `within` passed.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer (e.g. 408) before the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_and_too_many_http_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--http-max-connections",
            "20",
            "--http-header-timeout-ms",
            "1000",
        ],
    );
    let addr = node.url.trim_start_matches("http://").to_owned();
    let c = http();

    // 20 idle connections fill the node; the next client is told so at once.
    let mut idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(&addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");

    // The idle ones never sent a request: each is closed after the header deadline.
    for s in &mut idle {
        assert!(
            closed_by_server(s, Duration::from_secs(10)),
            "an idle connection was kept open"
        );
    }
    drop(idle);

    // A slowloris client sending a header byte every 100 ms is cut off too.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let mut cut = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        if slow.write_all(b"a").is_err() {
            cut = true;
            break;
        }
    }
    assert!(
        cut || closed_by_server(&mut slow, Duration::from_secs(5)),
        "a slowloris client was served for 10 s"
    );

    // A body declared far over the limit is refused from its length, before it arrives.
    let mut liar = TcpStream::connect(&addr).unwrap();
    liar.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    liar.write_all(b"PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 17825792\r\n\r\nabc")
        .unwrap();
    let mut head = [0u8; 64];
    let n = liar.read(&mut head).unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 413"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );

    // Through all of it the node serves.
    let r = c.get(format!("{}/health", node.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .put(format!("{}/kv/after", node.url))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}
