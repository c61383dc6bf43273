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
