//! Operations that cannot hurt: a node's start refuses what would silently make the wrong
//! cluster; the command line ends cleanly when its reader goes away.

mod common;

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_dynamokv");

#[test]
fn a_node_given_seeds_without_a_secret_refuses_to_start_and_says_how() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n2");
    let err = common::refused_start(&dir, &["--seeds", "127.0.0.1:9"]);
    for hint in [
        "--seeds",
        "--cluster-secret",
        "DYNAMOKV_CLUSTER_SECRET",
        "cluster_secret",
    ] {
        assert!(err.contains(hint), "the refusal names {hint}: {err}");
    }
    assert!(!dir.exists(), "nothing was created on a refused start");
}

#[test]
fn a_client_command_whose_reader_goes_away_ends_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::Node::start(dir.path(), &[]);
    // `dynamokv admin status | head -0`: the reader is gone before the first line is written.
    let mut child = Command::new(BIN)
        .args(["admin", "status", "--node", &node.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
}

#[tokio::test]
async fn a_bad_primary_quorum_is_told_its_real_range() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::Node::start(dir.path(), &[]);
    let c = reqwest::Client::new();
    for (query, said) in [
        ("pr=4", "use 0 to 3"),
        ("pw=9", "use 0 to 3"),
        ("r=0", "use 1 to 3"),
    ] {
        let method = if query.starts_with("pw") {
            reqwest::Method::PUT
        } else {
            reqwest::Method::GET
        };
        let r = c
            .request(method, format!("{}/kv/k?{query}", node.url))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body = r.text().await.unwrap();
        assert!(body.contains(said), "{query}: {body}");
    }
}

#[test]
fn the_version_names_the_commit_it_was_built_from() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with("dynamokv 0."), "{version}");
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        // Built in this checkout: the commit is HEAD's (tests run on what was just built).
        Some(head) => assert!(
            version.contains(&format!("commit {head}")),
            "{version} vs {head}"
        ),
        None => assert!(version.contains("unknown commit"), "{version}"),
    }
}

#[test]
fn a_client_pointed_at_a_non_http_port_is_told_which_port_it_probably_hit() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::Node::start(dir.path(), &["--resp", "127.0.0.1:0"]);
    for port in [&node.resp, &node.peer] {
        let out = common::cli(&["get", "k", "--node", &format!("http://{port}")]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("RESP or peer port") && err.contains("HTTP address"),
            "{port}: {err}"
        );
    }
}

#[tokio::test]
async fn removing_a_live_member_is_refused_before_any_plan_and_plans_count_whole_keys() {
    let dirs = common::dirs(2);
    let nodes = common::start_cluster(&dirs, &[]);
    let refs: Vec<&common::Node> = nodes.iter().collect();
    common::wait_for_ring(&refs, 2).await;
    // Plans estimate whole keys, never "-0.0".
    let plan = common::get_json(format!("{}/admin/plan?leave=n2", nodes[0].url)).await;
    assert!(plan["keys_estimate"].is_u64(), "{plan}");
    for m in plan["moves"].as_array().unwrap() {
        assert!(m["keys_estimate"].is_u64(), "{plan}");
    }
    // n2 is up: removing it is refused, and no plan is printed first.
    let out = common::cli(&["admin", "remove", "n2", "--node", &nodes[0].url]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success());
    assert!(stderr.contains("n2 is up"), "{stderr}");
    assert!(
        !stdout.contains("plan:"),
        "a plan printed before the refusal: {stdout}"
    );
}

#[test]
fn bench_honours_dynamokv_node_and_stops_at_once_when_nothing_answers() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::Node::start(dir.path(), &[]);
    let bench = |env: &str| {
        Command::new(BIN)
            .args([
                "bench",
                "--ops",
                "200",
                "--clients",
                "2",
                "--keys",
                "50",
                "--json",
            ])
            .env("DYNAMOKV_NODE", env)
            .output()
            .unwrap()
    };
    let out = bench(&node.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    // Nothing listens on port 1: an error naming the node before any load, not a run of
    // failures.
    let out = bench("http://127.0.0.1:1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no node answered") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "no report of a run that did not happen"
    );
}

#[tokio::test]
async fn a_node_that_reached_no_seed_says_it_is_not_joined_and_serves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: the seed never answers.
    let node = common::Node::start(
        dir.path(),
        &["--cluster-secret", common::SECRET, "--seeds", "127.0.0.1:9"],
    );
    let c = reqwest::Client::new();
    let r = c.get(format!("{}/health", node.url)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "not_joined", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("seeds"),
        "{body}"
    );
    let r = c
        .put(format!("{}/kv/k", node.url))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "a write is refused, not taken by a cluster of one"
    );
    // A node that starts a new cluster (no seeds) is healthy.
    let dir2 = tempfile::tempdir().unwrap();
    let first = common::Node::start(dir2.path(), &["--cluster-secret", common::SECRET]);
    let r = c.get(format!("{}/health", first.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Handshakes `node` refused because the peer was of another cluster.
async fn cluster_refusals(node: &common::Node) -> f64 {
    let name = "dynamokv_peer_handshakes_refused_total";
    common::metric(node, name, "reason=\"cluster\"").await
}

/// Waits until `node` has refused more peers of another cluster than `before`.
async fn refused_another_cluster(node: &common::Node, before: f64, what: &str) {
    common::eventually(20, what, || async {
        let now = cluster_refusals(node).await;
        if now > before {
            Ok(())
        } else {
            Err(format!("{now} refusals"))
        }
    })
    .await;
}

#[tokio::test]
async fn two_clusters_sharing_a_secret_never_merge_and_a_new_node_takes_its_seeds_cluster() {
    let c = common::http();
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let secret = ["--cluster-secret", common::SECRET];
    let a1 = common::Node::start(da.path(), &[&secret[..], &["--node-id", "a1"]].concat());
    let mut b1 = common::Node::start(db.path(), &[&secret[..], &["--node-id", "b1"]].concat());
    for (node, prefix) in [(&a1, "a"), (&b1, "b")] {
        let keys: Vec<String> = (0..20).map(|i| format!("{prefix}{i}")).collect();
        common::write_all(node, &keys, "").await;
    }
    let id_a = common::get_json(format!("{}/admin/members", a1.url)).await["cluster_id"].clone();
    let id_b = common::get_json(format!("{}/admin/members", b1.url)).await["cluster_id"].clone();
    let (id_a, id_b) = (
        id_a.as_str().unwrap().to_owned(),
        id_b.as_str().unwrap().to_owned(),
    );
    assert_eq!(id_a.len(), 16, "{id_a}");
    assert_ne!(id_a, id_b, "each first node founded its own cluster");

    // b1, a cluster of its own, restarted with a seed of the other cluster: refused, not merged.
    b1.terminate();
    b1.restart_with(&[&secret[..], &["--node-id", "b1", "--seeds", &a1.peer]].concat());
    refused_another_cluster(&a1, 0.0, "a1 refuses b1").await;
    // Past a few gossip rounds, each still sees only itself and serves only its own keys.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    for (node, own, other) in [(&a1, "a1", "b3"), (&b1, "b1", "a3")] {
        let v = common::get_json(format!("{}/admin/members", node.url)).await;
        let ids: Vec<&str> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [own], "{v}");
        let r = c
            .get(format!("{}/kv/{other}", node.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{own} serves {other} of the other cluster");
    }
    let out = common::cli(&["admin", "status", "--node", &b1.url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("cluster id: {id_b}")), "{text}");
    assert!(
        text.contains("A SEED REFUSED THIS NODE")
            && text.contains(&format!(
                "b1 belongs to cluster {id_b} and a1 to cluster {id_a}"
            )),
        "both ids named: {text}"
    );

    // A node with an empty directory joins a1 through its seed and takes a1's cluster id.
    let c1 = common::Node::start(
        dc.path(),
        &[&secret[..], &["--node-id", "c1", "--seeds", &a1.peer]].concat(),
    );
    common::wait_for_ring(&[&a1, &c1], 2).await;
    let out = common::cli(&["admin", "status", "--node", &c1.url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("cluster id: {id_a}")), "{text}");
    // It keeps it: restarted with b1 as its seed, b1 refuses it.
    let mut c1 = c1;
    c1.terminate();
    let before = cluster_refusals(&b1).await;
    c1.restart_with(&[&secret[..], &["--node-id", "c1", "--seeds", &b1.peer]].concat());
    refused_another_cluster(&b1, before, "b1 refuses c1").await;
    let v = common::get_json(format!("{}/admin/members", b1.url)).await;
    assert_eq!(v["members"].as_array().unwrap().len(), 1, "{v}");
}

#[tokio::test]
async fn admin_status_says_a_node_that_reached_no_seed_is_not_joined() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::Node::start(
        dir.path(),
        &["--cluster-secret", common::SECRET, "--seeds", "127.0.0.1:9"],
    );
    let out = common::cli(&["admin", "status", "--node", &node.url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("NOT JOINED") && text.contains("cluster id: none"),
        "{text}"
    );
}

#[tokio::test]
async fn a_leave_that_would_hand_ranges_to_a_down_member_is_refused_naming_it() {
    let dirs = common::dirs(4);
    let mut nodes = common::start_cluster(&dirs, &[]);
    let refs: Vec<&common::Node> = nodes.iter().collect();
    common::wait_for_ring(&refs, 4).await;
    nodes[3].kill9();
    // n3 sees n4 down (its connection closed).
    common::eventually(20, "n3 sees n4 down", || async {
        let n4 = common::member_seen_by(&nodes[2], "n4").await;
        if n4["up"] == false {
            Ok(())
        } else {
            Err(n4.to_string())
        }
    })
    .await;
    // With 3 replicas on 4 nodes, n3's leave would give n4 ranges: refused, before any plan.
    let out = common::cli(&["admin", "leave", "--node", &nodes[2].url, "--no-wait"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("n4 (") && stderr.contains("is down") && stderr.contains("admin remove n4"),
        "{stderr}"
    );
    assert!(!stdout.contains("plan:"), "a plan printed: {stdout}");
    let r = common::http()
        .post(format!("{}/admin/leave", nodes[2].url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "the endpoint refuses too");
    let n3 = common::member_seen_by(&nodes[2], "n3").await;
    assert_eq!(n3["status"], "up", "n3 did not start leaving: {n3}");
    // Removing n4 first (its gainers are up), then the leave goes through.
    let out = common::cli(&["admin", "remove", "n4", "--node", &nodes[0].url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::eventually(20, "n3's leave is accepted", || async {
        let url = format!("{}/admin/leave", nodes[2].url);
        let r = common::http().post(url).send().await.unwrap();
        if r.status() == 202 {
            Ok(())
        } else {
            Err(r.text().await.unwrap())
        }
    })
    .await;
}

#[tokio::test]
async fn a_healthy_cluster_fails_no_exchange_and_repair_gives_reasons_for_the_rest() {
    let dirs = common::dirs(4);
    let nodes = common::start_cluster(&dirs, &["--anti-entropy-interval-ms", "500"]);
    let refs: Vec<&common::Node> = nodes.iter().collect();
    common::wait_for_ring(&refs, 4).await;
    // Joins reshape the ring several times: comparisons caught between two views are postponed
    // (compared again), never counted as failed.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    for n in &nodes {
        let ae = common::get_json(format!("{}/admin/stats", n.url)).await["anti_entropy"].clone();
        assert!(ae["exchanges"].as_u64().unwrap() > 0, "{ae}");
        assert_eq!(ae["failed"], 0, "{}: {ae}", n.id);
        assert!(
            ae["postponed"].is_u64() && ae["failed_by"]["timed_out"] == 0,
            "{ae}"
        );
    }
    let out = common::cli(&[
        "admin",
        "repair",
        "--node",
        &nodes[0].url,
        "--timeout",
        "60",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("(0 failed, "), "{text}");
    let out = common::cli(&["admin", "status", "--node", &nodes[1].url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0 failed, ") && text.contains("postponed"),
        "{text}"
    );
}

#[test]
fn tls_flags_stand_apart_and_node_is_a_url_everywhere() {
    let out = common::cli(&["get", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    let heading = help.find("Client TLS").expect("a heading of its own");
    for flag in ["--cacert", "--client-cert <PEM>", "--client-cert-key <PEM>"] {
        let at = help
            .find(flag)
            .unwrap_or_else(|| panic!("{flag} in: {help}"));
        assert!(at > heading, "{flag} under the TLS heading: {help}");
    }
    assert!(
        !help.contains("--key <"),
        "no --key to mistake for a key: {help}"
    );
    let out = common::cli(&["get", "k", "--key", "x.pem"]);
    assert!(!out.status.success());
    // admin certs names nodes by id (--node-id), as `server` does; --node is a URL elsewhere.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let out = common::cli(&["admin", "certs", "--out", &d, "--node", "n1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--node-id"),
        "a hint to --node-id"
    );
    let out = common::cli(&["admin", "certs", "--out", &d, "--node-id", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("n1.pem").exists() && dir.path().join("n1.key").exists());
}

#[tokio::test]
async fn requests_hyper_refuses_itself_get_a_json_body_too() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let node = common::Node::start(dir.path(), &[]);
    let addr = node.url.trim_start_matches("http://").to_owned();
    // A 100 KB key: hyper answers 414 itself (clients such as curl send it; reqwest refuses to).
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let long = "k".repeat(100_000);
        let request = format!("GET /kv/{long} HTTP/1.1\r\nhost: x\r\n\r\n");
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    let short: String = answer.chars().take(600).collect();
    assert!(answer.starts_with("HTTP/1.1 414 "), "{short}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"], "uri_too_long", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("1 KiB"),
        "{body}"
    );
    // The node goes on serving.
    let c = common::http();
    let r = c
        .put(format!("{}/kv/short", node.url))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .get(format!("{}/kv/short", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "v");
}
