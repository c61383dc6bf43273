//! Helpers for end-to-end tests: real `dynamokv` processes on ephemeral ports in temporary
//! directories, killed when dropped.
#![allow(dead_code)]

pub mod harness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_dynamokv");

/// A running `dynamokv server`.
pub struct Node {
    child: Option<Child>,
    /// Base URL of its HTTP API.
    pub url: String,
    /// Its peer (internal RPC) address.
    pub peer: String,
    /// Its node id.
    pub id: String,
    /// Its RESP address (`host:port`), when started with `--resp`; else empty.
    pub resp: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    extra: Vec<String>,
}

impl Node {
    /// Starts a node on `data_dir` with extra flags, waiting until it reports its address.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Node {
        let mut args = vec![
            "server".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--http".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--log".to_owned(),
            "warn".to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(BIN)
            .args(&args)
            .env_remove("RUST_LOG")
            .env_remove("DYNAMOKV_CLUSTER_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dynamokv server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("listening ") {
                    let field = |name: &str| {
                        rest.split(' ')
                            .find_map(|f| f.strip_prefix(name))
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let scheme = if field("tls=") == "on" {
                        "https"
                    } else {
                        "http"
                    };
                    let _ = tx.send((
                        format!("{scheme}://{}", field("http=")),
                        field("peer="),
                        field("node="),
                        field("resp="),
                    ));
                }
            }
        });
        let (http, peer, id, resp) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("node did not report its address within 30 s");
            }
        };
        Node {
            child: Some(child),
            url: http,
            peer,
            id,
            resp,
            data_dir: data_dir.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, no chance to sync or mark a clean shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("kill -TERM");
            assert!(status.success());
            let start = std::time::Instant::now();
            loop {
                if let Some(s) = c.try_wait().expect("wait") {
                    assert!(s.success(), "node exited with {s}");
                    return;
                }
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                    panic!("node did not stop within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the node again with other flags (and a new port).
    pub fn restart_with(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "stop the node first");
        *self = Node::start(&self.data_dir.clone(), extra);
    }

    /// The flags the node was started with (after the common ones).
    pub fn flags(&self) -> Vec<String> {
        self.extra.clone()
    }

    /// Starts the node again with the same flags (and a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        let extra = self.extra.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        *self = Node::start(&self.data_dir.clone(), &extra);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the CLI with `args`, returning its output.
pub fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DYNAMOKV_NODE")
        .output()
        .expect("run dynamokv")
}

/// An HTTP client for tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The X-Context header of a response.
pub fn ctx(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("x-context")
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// Every node but the `skip`-th.
pub fn except(nodes: &[Node], skip: usize) -> Vec<&Node> {
    nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, n)| n)
        .collect()
}

/// The secret every test cluster shares.
pub const SECRET: &str = "test-cluster-secret";

/// Starts `count` nodes: the first alone, the others seeded with it. Waits until all agree.
pub fn start_cluster(dirs: &[tempfile::TempDir], extra: &[&str]) -> Vec<Node> {
    let mut args: Vec<String> = vec!["--cluster-secret".into(), SECRET.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut a = args.clone();
        a.extend(["--node-id".to_owned(), format!("n{}", i + 1)]);
        if let Some(first) = nodes.first() {
            let first: &Node = first;
            a.extend(["--seeds".to_owned(), first.peer.clone()]);
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        nodes.push(Node::start(dir.path(), &a));
    }
    nodes
}

/// Polls every node's `/admin/ring` until all list `expect` members, all up and joined, with
/// one version (within 30 s).
pub async fn wait_for_ring(nodes: &[&Node], expect: usize) -> String {
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    dynamokv_nemesis::verdict::agreed_ring(&http(), &urls, expect, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("nodes did not agree on a ring of {expect} within 30 s"))
}

/// `n` fresh temporary data directories.
pub fn dirs(n: usize) -> Vec<tempfile::TempDir> {
    (0..n).map(|_| tempfile::tempdir().unwrap()).collect()
}

/// The primaries of `key` as `node` sees them (`/admin/preference-list`), in ring order.
pub async fn primaries(node: &Node, key: &str) -> Vec<String> {
    let v: serde_json::Value = http()
        .get(format!("{}/admin/preference-list/{key}", node.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

/// GETs `url` and parses the JSON answer.
pub async fn get_json(url: String) -> serde_json::Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

/// The sum of the samples of `metric` whose line contains `label` in `node`'s /metrics (0 when
/// there are none).
#[allow(dead_code)] // not every test binary uses every helper
pub async fn metric(node: &Node, metric: &str, label: &str) -> f64 {
    let text = http()
        .get(format!("{}/metrics", node.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Calls `check` every 100 ms until it answers `Ok` (returned), for at most `secs` seconds;
/// then fails the test with `what` and the last `Err` it answered (what it saw).
#[allow(dead_code)] // not every test binary uses every helper
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match check().await {
            Ok(done) => return done,
            Err(seen) if std::time::Instant::now() >= deadline => {
                panic!("{what} within {secs} s; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The JSON record of member `id` in `node`'s /admin/members.
#[allow(dead_code)] // not every test binary uses every helper
pub async fn member_seen_by(node: &Node, id: &str) -> serde_json::Value {
    let v = get_json(format!("{}/admin/members", node.url)).await;
    v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["id"] == id)
        .cloned()
        .unwrap_or_default()
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Writes `keys` (value `v-KEY`) through `node` with `query` (`?w=3`, say), 8 at a time; every
/// write must succeed.
pub async fn write_all(node: &Node, keys: &[String], query: &str) {
    write_all_values(node, keys, query, |k| format!("v-{k}")).await;
}

/// Writes `value(key)` under every key of `keys` through `node` (8 at a time), `query` added to
/// each URL; every write must succeed.
#[allow(dead_code)] // not every test binary uses every helper
pub async fn write_all_values(
    node: &Node,
    keys: &[String],
    query: &str,
    value: fn(&str) -> String,
) {
    let mut tasks = Vec::new();
    for chunk in keys.chunks(keys.len().div_ceil(8)) {
        let (url, chunk, query) = (node.url.clone(), chunk.to_vec(), query.to_owned());
        tasks.push(tokio::spawn(async move {
            let c = http();
            for k in chunk {
                let r = c
                    .put(format!("{url}/kv/{k}{query}"))
                    .body(value(&k))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), reqwest::StatusCode::NO_CONTENT, "{k}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Starts `dynamokv server` on `dir` (loopback ports 0, no secret from the environment) with
/// `extra`, expecting it to refuse and exit within 20 s: its standard error. A node that keeps
/// running, or exits successfully, fails the test.
#[allow(dead_code)] // not every test binary uses every helper
pub fn refused_start(dir: &Path, extra: &[&str]) -> String {
    let mut child = Command::new(BIN)
        .args(["server", "--data-dir"])
        .arg(dir)
        .args(["--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("DYNAMOKV_CLUSTER_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the node started and kept running; it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "exit status {status}: {err}");
    err
}

/// `curl -s -i ARGS URL`: the status code, the headers (names lower-cased) and the body.
#[allow(dead_code)] // not every test binary uses every helper
pub fn curl(args: &[&str], url: &str) -> (u16, String, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-i"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let head = head
        .lines()
        .map(|l| match l.split_once(':') {
            Some((name, value)) => format!("{}:{value}", name.to_ascii_lowercase()),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    (status, head, body.to_owned())
}
