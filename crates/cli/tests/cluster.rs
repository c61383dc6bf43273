//! End-to-end tests of a 5-node cluster of real processes: replication, routing, quorums,
//! failures, and a peer port that receives garbage.

mod common;

use common::{Node, dirs, except, http, primaries, start_cluster, wait_for_ring};
use dynamokv_client::{ClusterClient, Routing};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// Which nodes hold a copy of `key` whose single live value is `value`.
async fn holders(c: &reqwest::Client, nodes: &[Node], key: &str, value: &str) -> BTreeSet<String> {
    use base64::Engine as _;
    let mut out = BTreeSet::new();
    for n in nodes {
        let r = c
            .get(format!("{}/admin/local/{key}", n.url))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            continue;
        }
        let v: Value = r.json().await.unwrap();
        let live: Vec<String> = v["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["value"].as_str())
            .map(|b| {
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap())
                    .unwrap()
            })
            .collect();
        if live == [value] {
            out.insert(v["node"].as_str().unwrap().to_owned());
        }
    }
    out
}

async fn read(c: &reqwest::Client, url: &str, key: &str, query: &str) -> (StatusCode, String) {
    let r = c
        .get(format!("{url}/kv/{key}{query}"))
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_replicate_route_and_survive_a_kill() {
    let d = dirs(5);
    let mut nodes = start_cluster(&d, &[]);
    let refs: Vec<&Node> = nodes.iter().collect();
    let version = wait_for_ring(&refs, 5).await;
    let c = http();

    // Writes through one node read back through every other.
    for i in 0..20 {
        let r = c
            .put(format!("{}/kv/key{i}", nodes[0].url))
            .body(format!("value{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["x-ring-version"].to_str().unwrap(), version);
        for n in &nodes[1..] {
            assert_eq!(
                read(&c, &n.url, &format!("key{i}"), "").await,
                (StatusCode::OK, format!("value{i}"))
            );
        }
    }

    // Each key is stored on exactly its N preference-list nodes (the third copy may trail W=2).
    for i in 0..20 {
        let key = format!("key{i}");
        let pref: BTreeSet<String> = primaries(&nodes[2], &key).await.into_iter().collect();
        assert_eq!(pref.len(), 3);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let have = holders(&c, &nodes, &key, &format!("value{i}")).await;
            if have == pref {
                break;
            }
            assert!(
                have.is_subset(&pref),
                "{key} stored off its preference list: {have:?} vs {pref:?}"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{key}: {have:?} never reached {pref:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Forwarding and client routing give the same results.
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let any = ClusterClient::connect(&urls, Routing::AnyNode)
        .await
        .unwrap();
    let direct = ClusterClient::connect(&urls[3..4], Routing::Client)
        .await
        .unwrap();
    assert_eq!(direct.ring_version().as_deref(), Some(version.as_str()));
    for i in 0..20 {
        let key = format!("r{i}");
        let ctx = any
            .put(key.as_bytes(), b"one".to_vec(), None)
            .await
            .unwrap()
            .context;
        let a = any.get(key.as_bytes(), None).await.unwrap();
        let b = direct.get(key.as_bytes(), None).await.unwrap();
        assert_eq!(a.siblings, b.siblings);
        assert_eq!(a.context, b.context);
        assert_eq!(a.context, ctx);
        let ctx2 = direct
            .put(key.as_bytes(), b"two".to_vec(), ctx.as_deref())
            .await
            .unwrap()
            .context;
        let a = any.get(key.as_bytes(), None).await.unwrap();
        assert_eq!(a.siblings.len(), 1);
        assert_eq!(a.siblings[0].value, b"two");
        assert_eq!(a.context, ctx2);
    }

    // Kill one node: reads and writes at R=W=2 keep succeeding for every key.
    let victim = 1;
    let victim_id = nodes[victim].id.clone();
    nodes[victim].kill9();
    let alive: Vec<&Node> = except(&nodes, victim);
    // Give the others a moment to notice the closed connections.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut with_victim = Vec::new();
    for i in 0..40 {
        let key = format!("after{i}");
        let entry = alive[i % alive.len()];
        let r = c
            .put(format!("{}/kv/{key}", entry.url))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NO_CONTENT,
            "put {key}: {}",
            r.text().await.unwrap()
        );
        let reader = alive[(i + 1) % alive.len()];
        assert_eq!(
            read(&c, &reader.url, &key, "").await,
            (StatusCode::OK, "v".to_owned())
        );
        if primaries(entry, &key).await.contains(&victim_id) {
            with_victim.push(key);
        }
    }
    // Old keys too, through the partition-aware client (which skips the dead node).
    for i in 0..20 {
        let r = direct
            .get(format!("key{i}").as_bytes(), None)
            .await
            .unwrap();
        assert_eq!(r.siblings[0].value, format!("value{i}").into_bytes());
    }
    assert!(
        !with_victim.is_empty(),
        "some keys have the dead node as a primary"
    );

    // W=3 while a primary is down: a fallback stands in (sloppy quorum, issue 6), so it
    // succeeds; insisting on three primaries (pw=3) fails with the quorum error, and so does
    // pr=3 for a read.
    let key = &with_victim[0];
    let r = c
        .put(format!("{}/kv/{key}?w=3", alive[0].url))
        .body("w3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c
        .put(format!("{}/kv/{key}?w=3&pw=3", alive[0].url))
        .body("strict")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    assert_eq!(body["needed"], 3);
    assert_eq!(body["primary_needed"], 3);
    assert_eq!(body["failed"], serde_json::json!([victim_id]));
    assert!(body["message"].as_str().unwrap().contains("W=3"));
    let (status, _) = read(&c, &alive[0].url, key, "?r=3&pr=3").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The blind w3 write sits beside "v"; the refused strict write changed nothing.
    let (status, body) = read(&c, &alive[1].url, key, "?r=3").await;
    assert_eq!(status, StatusCode::MULTIPLE_CHOICES);
    assert!(
        body.contains("\r\nw3\r\n") && body.contains("\r\nv\r\n"),
        "{body}"
    );
    assert!(!body.contains("strict"));
    // Quorums above N are refused outright.
    let r = c
        .put(format!("{}/kv/{key}?w=4", alive[0].url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_do_not_crash_a_node() {
    use std::io::{Read, Write};
    let d = dirs(2);
    let nodes = start_cluster(&d, &[]);
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_for_ring(&refs, 2).await;
    let c = http();

    let send = |bytes: &[u8]| -> Vec<u8> {
        let mut s = std::net::TcpStream::connect(&nodes[0].peer).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    };
    let frame = |body: &[u8]| -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    // Garbage, an oversized length prefix, a truncated frame, a bad magic.
    send(b"GET / HTTP/1.1\r\n\r\n");
    send(&u32::MAX.to_be_bytes());
    send(&[0, 0, 0, 200, 1, 2, 3]);
    send(&frame(b"notdynamo-at-all"));
    // A hello with another protocol version is refused with a reason.
    let mut wrong_version = b"dynamokv".to_vec();
    wrong_version.extend_from_slice(&999u16.to_be_bytes());
    let answer = send(&frame(&wrong_version));
    assert!(
        String::from_utf8_lossy(&answer).contains("protocol version 999"),
        "{answer:?}"
    );
    // The handshake is a challenge-response over fresh nonces. A client that knows the secret
    // completes it (impersonating n2 with n2's own record: harmless, and the baseline).
    use dynamokv_server::handshake::{PeerKey, Role};
    use dynamokv_server::transport::{Frame, Hello, decode_frame, encode_frame, encode_hello};
    let ring: Value = c
        .get(format!("{}/admin/ring", nodes[0].url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n2 = ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "n2")
        .unwrap()
        .clone();
    let n2: dynamokv_core::membership::Member = serde_json::from_value(n2).unwrap();
    let right = PeerKey::new(&dynamokv_core::ContextCodec::from_passphrase(
        common::SECRET,
    ));
    let wrong = PeerKey::new(&dynamokv_core::ContextCodec::from_passphrase("other"));
    let connect = || {
        let s = std::net::TcpStream::connect(&nodes[0].peer).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let read_frame = |s: &mut std::net::TcpStream| -> Option<Frame> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).ok()?;
        decode_frame(&body).ok()
    };
    // A dialer of another cluster is refused at its hello, whatever it proves, both ids named.
    let mut s = connect();
    s.write_all(&frame(&encode_hello(&Hello {
        nonce: [7; 32],
        member: n2.clone(),
        cluster: 0xabcdef,
    })))
    .unwrap();
    match read_frame(&mut s) {
        Some(Frame::Refused(why)) => assert!(
            why.contains("n2 belongs to cluster 0000000000abcdef and n1 to cluster "),
            "{why}"
        ),
        other => panic!("a node of another cluster was not refused: {other:?}"),
    }
    drop(s);

    // A dialer that belongs to no cluster yet (a node joining) is challenged.
    let hello = Hello {
        nonce: [7; 32],
        member: n2.clone(),
        cluster: 0,
    };
    let hello_bytes = frame(&encode_hello(&hello));
    let mut s = connect();
    s.write_all(&hello_bytes).unwrap();
    let Some(Frame::Challenge {
        nonce: first_nonce,
        member: acceptor,
        cluster,
        proof,
    }) = read_frame(&mut s)
    else {
        panic!("no challenge");
    };
    assert_eq!(acceptor.id, "n1");
    assert_ne!(cluster, 0, "the first node founded a cluster");
    let (dialer, acceptor) = ((&n2, 0), (&acceptor, cluster));
    assert!(
        right.verify(
            &proof,
            Role::Acceptor,
            &[7; 32],
            &first_nonce,
            dialer,
            acceptor
        ),
        "the node proves it knows the secret"
    );
    assert!(
        !wrong.verify(
            &proof,
            Role::Acceptor,
            &[7; 32],
            &first_nonce,
            dialer,
            acceptor
        ),
        "a dialer with another secret sees that it is not its cluster"
    );
    let good_proof = right.proof(Role::Dialer, &[7; 32], &first_nonce, dialer, acceptor);
    let proof_bytes = frame(&encode_frame(&Frame::Proof(good_proof)));
    s.write_all(&proof_bytes).unwrap();
    assert_eq!(read_frame(&mut s), Some(Frame::Welcome));
    // A garbage frame after the handshake closes that connection only.
    s.write_all(&frame(&[0xFF; 64])).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    drop(s);

    // Replaying that whole exchange fails: the node's nonce is new, the old proof is not for it.
    let mut s = connect();
    s.write_all(&hello_bytes).unwrap();
    let Some(Frame::Challenge { nonce, .. }) = read_frame(&mut s) else {
        panic!("no challenge");
    };
    assert_ne!(nonce, first_nonce, "a fresh nonce per connection");
    s.write_all(&proof_bytes).unwrap();
    match read_frame(&mut s) {
        Some(Frame::Refused(why)) => assert!(why.contains("proof does not match"), "{why}"),
        other => panic!("a replayed proof was not refused: {other:?}"),
    }

    // Another secret: its proof is refused, with the reason.
    let intruder = dynamokv_core::membership::Member {
        id: "intruder".into(),
        generation: 1,
        version: 1,
        status: dynamokv_core::membership::Status::Up,
        peer_addr: "127.0.0.1:1".into(),
        http_addr: "127.0.0.1:1".into(),
        tokens: vec![42],
        instance: 0,
        epoch: 0,
    };
    let mut s = connect();
    s.write_all(&frame(&encode_hello(&Hello {
        nonce: [9; 32],
        member: intruder.clone(),
        cluster: 0,
    })))
    .unwrap();
    let Some(Frame::Challenge {
        nonce,
        member,
        cluster,
        ..
    }) = read_frame(&mut s)
    else {
        panic!("no challenge");
    };
    let forged = wrong.proof(
        Role::Dialer,
        &[9; 32],
        &nonce,
        (&intruder, 0),
        (&member, cluster),
    );
    s.write_all(&frame(&encode_frame(&Frame::Proof(forged))))
        .unwrap();
    match read_frame(&mut s) {
        Some(Frame::Refused(why)) => assert!(why.contains("--cluster-secret"), "{why}"),
        other => panic!("a wrong secret was not refused: {other:?}"),
    }

    // Before the handshake, a frame over 64 KiB is refused from its length alone, unread.
    let mut big = (1u32 << 20).to_be_bytes().to_vec();
    big.extend_from_slice(&[0u8; 1 << 16]);
    let answer = send(&big);
    assert!(
        String::from_utf8_lossy(&answer).contains("frame size too big"),
        "{answer:?}"
    );

    // Connections that never finish a handshake are capped: past 64 at once, more are closed
    // unread (counted as busy); the established peer connections are not affected.
    let idle: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(&nodes[0].peer).unwrap())
        .collect();
    let mut busy = 0.0;
    for _ in 0..100 {
        busy = common::metric(
            &nodes[0],
            "dynamokv_peer_handshakes_refused_total",
            "reason=\"busy\"",
        )
        .await;
        if busy >= 16.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(busy >= 16.0, "{busy} connections refused as busy");
    drop(idle);

    // The node still serves, the intruder never joined, and the cluster still replicates.
    let r = c
        .put(format!("{}/kv/still", nodes[0].url))
        .body("alive")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        read(&c, &nodes[1].url, "still", "?r=2").await,
        (StatusCode::OK, "alive".to_owned())
    );
    let ring: Value = c
        .get(format!("{}/admin/ring", nodes[0].url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec!["n1", "n2"],
        "the node with the wrong secret never joined"
    );
}
