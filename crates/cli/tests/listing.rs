//! Listing keys: `GET /kv?prefix&after&limit` pages through every live key in key order, over
//! a coverage plan - with a node down and while a node joins - and `dynamokv list`, `redis-cli
//! --scan`, `SCAN` and `KEYS` see the same keys.

mod common;

use common::{Node, SECRET, cli, dirs, eventually, http, start_cluster, wait_for_ring};
use std::collections::BTreeSet;

/// Every key the cluster lists through `node` (pages of `limit`, starting with `prefix`), in
/// the order given; a page that fails (a node just went down) is an error.
async fn list_all(node: &Node, prefix: &str, limit: u32) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("prefix", prefix.to_owned()), ("limit", limit.to_string())];
        if let Some(a) = &after {
            query.push(("after", a.clone()));
        }
        let r = http()
            .get(format!("{}/kv", node.url))
            .query(&query)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status} {body}"));
        }
        let page: Vec<String> = body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        assert!(page.len() <= limit as usize, "{body}");
        assert_eq!(body["count"], page.len(), "{body}");
        keys.extend(page);
        match body["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return Ok(keys),
        }
    }
}

/// Asserts `listed` is exactly `expected`, in key order, each once.
fn assert_exact(listed: &[String], expected: &BTreeSet<String>, what: &str) {
    let set: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(set.len(), listed.len(), "{what}: a key listed twice");
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "{what}: not in key order"
    );
    let missing: Vec<&String> = expected.iter().filter(|k| !set.contains(k)).collect();
    let extra: Vec<&&String> = set.iter().filter(|k| !expected.contains(**k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} missing {:?}, {} extra {:?}",
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_list_every_live_key_once_in_order_with_a_node_down_and_one_joining() {
    let d = dirs(4);
    let mut nodes = start_cluster(&d[..3], &["--resp", "127.0.0.1:0"]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    // Keys written through every node; some deleted again.
    let c = http();
    let mut expected = BTreeSet::new();
    for i in 0..900 {
        let key = if i % 3 == 0 {
            format!("user:{i:04}")
        } else {
            format!("item/{i:04}")
        };
        let node = &nodes[i % 3];
        let r = c
            .put(format!("{}/kv/{}", node.url, key.replace('/', "%2F")))
            .body("v")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{key}: {}", r.status());
        expected.insert(key);
    }
    for i in (0..900).step_by(30) {
        let key = format!("user:{i:04}");
        let r = c
            .delete(format!("{}/kv/{key}", nodes[1].url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{key}: {}", r.status());
        expected.remove(&key);
    }
    let users: BTreeSet<String> = expected
        .iter()
        .filter(|k| k.starts_with("user:"))
        .cloned()
        .collect();

    for (i, node) in nodes.iter().enumerate() {
        let all = list_all(node, "", 97).await.unwrap();
        assert_exact(&all, &expected, &format!("through n{}", i + 1));
    }
    assert_exact(
        &list_all(&nodes[2], "user:", 50).await.unwrap(),
        &users,
        "prefix",
    );
    assert!(
        list_all(&nodes[0], "none-such", 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Read through quorum: each listed key checked at R=2.
    let page = common::get_json(format!("{}/kv?prefix=user:&limit=1000&r=2", nodes[0].url)).await;
    let through: Vec<String> = page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_exact(&through, &users, "prefix with r=2");

    // Bad input is refused, naming what is allowed.
    for (query, what) in [
        ("limit=0", "limit=0"),
        ("limit=10001", "1 to 10000"),
        ("encoding=hex", "base64"),
        ("colour=red", "unknown query parameter"),
        ("r=x", "number of replicas"),
    ] {
        let r = c
            .get(format!("{}/kv?{query}", nodes[0].url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body = r.text().await.unwrap();
        assert!(body.contains(what), "{query}: {body}");
    }

    // The CLI lists the same keys, one per line; redis-cli --scan and KEYS too.
    let out = cli(&[
        "list",
        "--node",
        &nodes[1].url,
        "--prefix",
        "user:",
        "--page",
        "33",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_exact(&lines, &users, "dynamokv list");
    let (host, port) = nodes[0].resp.rsplit_once(':').unwrap();
    let redis_cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", host, "-p", port])
            .args(args)
            .output()
            .expect("redis-cli (Debian's redis-tools; scripts/test installs it)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let mut scanned: Vec<String> = redis_cli(&["--scan", "--pattern", "user:*"])
        .lines()
        .map(str::to_owned)
        .collect();
    scanned.sort();
    assert_exact(&scanned, &users, "redis-cli --scan");
    let mut keys: Vec<String> = redis_cli(&["KEYS", "user:01?1"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    keys.sort();
    let matching: BTreeSet<String> = ["user:0111", "user:0141", "user:0171"]
        .map(str::to_owned)
        .into();
    assert_exact(&keys, &matching, "KEYS user:01?1");

    // KEYS stops at 10 000 keys and names SCAN; SCAN pages through them all.
    let mut pipe = String::new();
    for i in 0..10_001 {
        let k = format!("cap:{i:05}");
        pipe.push_str(&format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n$1\r\nv\r\n",
            k.len()
        ));
    }
    let mut load = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port, "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    load.stdin
        .take()
        .unwrap()
        .write_all(pipe.as_bytes())
        .unwrap();
    let loaded = load.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&loaded.stdout);
    assert!(report.contains("errors: 0, replies: 10001"), "{report}");
    let refused = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port, "KEYS", "cap:*"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(
        said.contains("10000 keys") && said.contains("SCAN"),
        "{said}"
    );
    let scanned = redis_cli(&["--scan", "--pattern", "cap:*"]);
    assert_eq!(scanned.lines().count(), 10_001);
    let page = common::get_json(format!("{}/kv?prefix=cap:&limit=10000", nodes[1].url)).await;
    assert!(
        page["count"].as_u64().unwrap() > 0 && page["next"].is_string(),
        "{page:.200}"
    );
    for i in 0..10_001 {
        expected.insert(format!("cap:{i:05}"));
    }

    // A node down: the others cover its ranges (once they see it down).
    nodes[2].kill9();
    let listed = eventually(30, "a full listing with n3 down", || async {
        list_all(&nodes[0], "", 200).await
    })
    .await;
    assert_exact(&listed, &expected, "with n3 down");
    let seed = nodes[0].peer.clone();
    nodes[2].restart_with(&[
        "--cluster-secret",
        SECRET,
        "--node-id",
        "n3",
        "--seeds",
        &seed,
        "--resp",
        "127.0.0.1:0",
    ]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;

    // A node joining: every complete listing meanwhile has every key.
    let joiner = Node::start(
        d[3].path(),
        &[
            "--cluster-secret",
            SECRET,
            "--node-id",
            "n4",
            "--seeds",
            &nodes[0].peer,
        ],
    );
    let mut complete = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(listed) = list_all(&nodes[1], "", 250).await {
            assert_exact(&listed, &expected, "while n4 joins");
            complete += 1;
        }
        let ring = common::get_json(format!("{}/admin/ring", nodes[1].url)).await;
        let joined = ring["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "n4" && m["status"] == "Up");
        if joined || std::time::Instant::now() > deadline {
            assert!(joined, "n4 joined within 60 s");
            break;
        }
    }
    assert!(complete > 0, "a listing completed while n4 joined");
    nodes.push(joiner);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 4).await;
    assert_exact(
        &list_all(&nodes[3], "", 500).await.unwrap(),
        &expected,
        "through n4",
    );
}
