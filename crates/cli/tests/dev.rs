//! End-to-end: `dynamokv dev` keeps serving when a node dies, and `dev kill|start` manage the
//! running cluster.

mod common;

use common::{BIN, http};
use reqwest::StatusCode;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A port base with `count` free ports at base.., base+1000.. and base+2000.. (dev maps node i
/// to fixed HTTP, peer and RESP ports). Bases are drawn below the kernel's ephemeral range
/// (32768 and up), where the suite's many client connections would otherwise hold ports.
fn free_base(count: u16) -> u16 {
    let mut x = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 10_000 + (x % 19_000) as u16;
        let all_free = (0..count).all(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", base + 1000 + i)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", base + 2000 + i)).is_ok()
        });
        if all_free {
            return base;
        }
    }
    panic!("no free port range below 32768");
}

fn dev(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["dev", "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `dynamokv dev` in `dir` at port base `base` with `flags`; its standard output, line by
/// line.
fn start_dev(
    dir: &std::path::Path,
    base: u16,
    flags: &[&str],
) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut sup = Command::new(BIN)
        .arg("dev")
        .args(flags)
        .arg("--dir")
        .arg(dir)
        .args(["--http-port-base", &base.to_string(), "--log", "warn"])
        .args(["--resp-port-base", &(base + 2000).to_string()])
        .env_remove("DYNAMOKV_CLUSTER_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = sup.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (sup, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_cluster_keeps_serving_when_a_node_dies() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base(5);
    let (mut sup, rx) = start_dev(dir.path(), base, &["--nodes", "3"]);
    let wait_for = |what: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(40))
            .unwrap_or_else(|_| panic!("no line containing {what:?}"));
        if line.contains(what) {
            return line;
        }
    };
    wait_for("all nodes agree on the ring");
    wait_for("Ctrl-C stops the cluster");
    // A second `dev` on the running directory is refused, showing what runs, and changes nothing.
    let settings = std::fs::read_to_string(dir.path().join("dev.json")).unwrap();
    let second = Command::new(BIN)
        .args(["dev", "--nodes", "2", "--dir"])
        .arg(dir.path())
        .args(["--http-port-base", &(base + 10).to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains("already runs") && err.contains("n1  pid") && err.contains("n3  pid"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("dev.json")).unwrap(),
        settings
    );
    let url = |i: u16| format!("http://127.0.0.1:{}", base + i - 1);
    let c = http();
    let put = |node: u16, key: &str| c.put(format!("{}/kv/{key}", url(node))).body("v").send();
    assert_eq!(
        put(1, "before").await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    // Every node serves the Redis protocol on its RESP port: redis-cli reads the HTTP write.
    for i in 0..3 {
        let out = Command::new("redis-cli")
            .args(["-p", &(base + 2000 + i).to_string(), "GET", "before"])
            .output()
            .expect("redis-cli (Debian's redis-tools; scripts/test installs it)");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "v",
            "n{}",
            i + 1
        );
    }

    let out = dev(dir.path(), &["kill", "n2"]);
    assert!(out.contains("start n2"), "{out}");
    let line = wait_for("node n2");
    assert!(line.contains("exited") && line.contains("n2.log"), "{line}");
    assert!(
        line.contains("start n2"),
        "the restart command is shown: {line}"
    );
    // The others keep serving writes and reads.
    for i in 0..20 {
        let node = if i % 2 == 0 { 1 } else { 3 };
        let r = put(node, &format!("during{i}")).await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "write {i} via n{node}");
    }
    let r = c.get(format!("{}/kv/before", url(3))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    dev(dir.path(), &["start", "n2"]);
    wait_for("node n2 is running");
    let r = c.get(format!("{}/health", url(2))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // `kill` returns once the process is gone, so a `start` right after it starts the node
    // (it used to answer "n2 is already running").
    dev(dir.path(), &["kill", "n2"]);
    let out = dev(dir.path(), &["start", "n2"]);
    assert!(out.contains("n2 started"), "{out}");
    let healthy = async {
        for _ in 0..100 {
            if let Ok(r) = c.get(format!("{}/health", url(2))).send().await
                && r.status() == StatusCode::OK
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    assert!(healthy.await, "n2 serves again after kill and start");
    // `--dir` after the subcommand works too; `stop` returns once the node has stopped.
    let out = Command::new(BIN)
        .args(["dev", "stop", "n2", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("n2 (pid"),
        "{text} {out:?}"
    );
    assert!(
        c.get(format!("{}/health", url(2))).send().await.is_err(),
        "n2 is down"
    );

    // `add` takes the next id no node has used: n4's directory is a leftover, so n5.
    std::fs::create_dir(dir.path().join("n4")).unwrap();
    let out = dev(dir.path(), &["add"]);
    assert!(out.contains("n5 started"), "{out}");
    dev(dir.path(), &["kill", "n5"]);

    // Ctrl-C (SIGTERM here) stops every node, the restarted one included.
    unsafe {
        libc::kill(sup.id() as i32, libc::SIGTERM);
    }
    let status = sup.wait().unwrap();
    assert!(status.success());
    for id in ["n1", "n2", "n3"] {
        let pid: i32 = std::fs::read_to_string(dir.path().join(format!("{id}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Gone, or exited and waiting to be reaped by init (a node `dev start` started is not
        // the supervisor's child).
        let gone = || {
            (unsafe { libc::kill(pid, 0) }) != 0
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
        };
        assert!(gone(), "{id} still running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_cluster_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base(2);
    let (mut sup, rx) = start_dev(dir.path(), base, &["--tls", "--nodes", "2"]);
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(40))
            .unwrap_or_else(|_| panic!("the TLS dev cluster did not agree: {seen:?}"));
        let done = line.contains("all nodes agree on the ring");
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("https://127.0.0.1:{base}"))),
        "{seen:?}"
    );
    let ca = std::fs::read(dir.path().join("certs/ca.pem")).expect("dev made a CA");
    let c = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let r = c
        .put(format!("https://127.0.0.1:{base}/kv/k"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c
        .get(format!("https://127.0.0.1:{}/kv/k", base + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "v");
    unsafe {
        libc::kill(sup.id() as i32, libc::SIGTERM);
    }
    assert!(sup.wait().unwrap().success());
}
