//! Real `dynamokv server` processes, one per node namespace, at fixed ports on their own
//! addresses; killed when dropped.

use crate::netns::Net;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

/// The peer port of every node (each has its own address).
pub const PEER_PORT: u16 = 7000;
/// The HTTP port of every node.
pub const HTTP_PORT: u16 = 8000;

/// The secret of every nemesis cluster.
pub const SECRET: &str = "nemesis-cluster-secret";

/// One node process and how to start it again.
pub struct NodeProc {
    /// Node index (0-based); its id is `n{index+1}`.
    pub index: usize,
    child: Option<Child>,
    /// Whether it was stopped with SIGSTOP.
    pub paused: bool,
}

/// The cluster: nodes in `net`'s namespaces, data under `dir`.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    /// The nodes.
    pub nodes: Vec<NodeProc>,
    extra: Vec<String>,
}

impl Cluster {
    /// Starts `net.nodes()` nodes running `bin`, every one seeded with the first, with `extra`
    /// flags.
    pub fn start(net: &Net, bin: &Path, dir: &Path, extra: &[&str]) -> Result<Cluster, String> {
        let mut c = Cluster {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            nodes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..net.nodes() {
            let child = c.spawn(net, i)?;
            c.nodes.push(NodeProc {
                index: i,
                child: Some(child),
                paused: false,
            });
        }
        Ok(c)
    }

    fn spawn(&self, net: &Net, i: usize) -> Result<Child, String> {
        let addr = net.addr(i);
        let data = self.dir.join(format!("n{}", i + 1));
        let mut cmd = net.command(i, &self.bin);
        cmd.arg("server")
            .args(["--node-id", &format!("n{}", i + 1)])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("{addr}:{PEER_PORT}")])
            .args(["--http", &format!("{addr}:{HTTP_PORT}")])
            .args(["--cluster-secret", SECRET])
            .args(["--log", "warn"])
            .args(&self.extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if i > 0 {
            cmd.args(["--seeds", &format!("{}:{PEER_PORT}", net.addr(0))]);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start n{}: {e}", i + 1))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening ") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("n{} did not start within 30 s", i + 1));
        }
        Ok(child)
    }

    /// Node `i`'s base URL (reachable from the clients' namespace).
    pub fn url(net: &Net, i: usize) -> String {
        format!("http://{}:{HTTP_PORT}", net.addr(i))
    }

    /// Whether node `i` is running (not killed; it may be paused).
    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILL.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused = false;
    }

    fn signal(&mut self, i: usize, sig: libc::c_int) {
        if let Some(c) = &self.nodes[i].child {
            // SAFETY: signalling our own child by pid.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGSTOP: the process stays, silent.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.nodes[i].paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.nodes[i].paused = false;
    }

    /// Starts a killed node again on its data directory.
    pub fn restart(&mut self, net: &Net, i: usize) -> Result<(), String> {
        self.kill9(i);
        let child = self.spawn(net, i)?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Resumes paused nodes and restarts killed ones.
    pub fn revive_all(&mut self, net: &Net) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            if !self.running(i) {
                self.restart(net, i)?;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.resume(i);
            self.kill9(i);
        }
    }
}
