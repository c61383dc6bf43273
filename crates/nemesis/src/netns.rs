//! A private network of Linux network namespaces: one per node and one for the clients, each
//! with its own address on a bridge in a hub namespace, all made (and removed) by this process.
//! Nothing outside these namespaces is addressed or changed.
//!
//! Links are cut with blackhole routes inside the sender's namespace: packets from one node to
//! another vanish as on a real partition (established connections retransmit into the void and
//! hang half-open; new connections fail). A cut is one direction; a partition is both.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The subnet every namespace of one [`Net`] shares (each `Net` has its own bridge, so two
/// `Net`s never see each other's addresses).
const SUBNET: [u8; 3] = [10, 77, 0];

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why namespaces cannot be made here, or `None` when they can (root, `ip` present, the
/// kernel allows it). Tests skip with this message.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root (run the suite as root)".into());
    }
    let probe = format!("dkvprobe{}", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    // Running a program inside one (as the nodes are) and making a veth pair must work too.
    let checks = ip(&["netns", "exec", &probe, "true"])
        .map_err(|e| format!("cannot run a program in a network namespace: {e}"))
        .and_then(|()| {
            ip(&[
                "-n", &probe, "link", "add", "a0", "type", "veth", "peer", "name", "b0",
            ])
            .map_err(|e| format!("cannot make a veth pair: {e}"))
        });
    let _ = ip(&["netns", "del", &probe]);
    checks.err()
}

/// The namespaces of one test or soak; removed on drop.
pub struct Net {
    prefix: String,
    nodes: usize,
}

impl Net {
    /// Makes a hub with a bridge, `nodes` node namespaces and a client namespace.
    pub fn create(nodes: usize) -> Result<Net, String> {
        let prefix = format!(
            "dkv{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net { prefix, nodes };
        net.build().inspect_err(|_| net.remove())?;
        Ok(net)
    }

    fn build(&self) -> Result<(), String> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..=self.nodes {
            let (ns, addr) = if i == self.nodes {
                (self.client_ns(), self.client_addr())
            } else {
                (self.node_ns(i), self.addr(i))
            };
            ip(&["netns", "add", &ns])?;
            let port = format!("p{i}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &hub,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn remove(&self) {
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.node_ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.client_ns()]);
        let _ = ip(&["netns", "del", &self.hub()]);
    }

    fn hub(&self) -> String {
        format!("{}hub", self.prefix)
    }

    /// The namespace of node `i` (0-based).
    pub fn node_ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// The clients' namespace.
    pub fn client_ns(&self) -> String {
        format!("{}cl", self.prefix)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1 + i as u8)
    }

    /// The clients' address.
    pub fn client_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 200)
    }

    /// Number of node namespaces.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// A command that runs `program` inside node `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.node_ns(i)]).arg(program);
        c
    }

    /// Drops every packet node `from` sends to node `to` (one direction).
    pub fn cut(&self, from: usize, to: usize) -> Result<(), String> {
        let dst = format!("{}/32", self.addr(to));
        ip(&[
            "-n",
            &self.node_ns(from),
            "route",
            "replace",
            "blackhole",
            &dst,
        ])
    }

    /// Undoes [`Net::cut`].
    pub fn uncut(&self, from: usize, to: usize) -> Result<(), String> {
        let dst = format!("{}/32", self.addr(to));
        ip(&["-n", &self.node_ns(from), "route", "del", "blackhole", &dst])
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<(), String> {
        for &x in a {
            for &y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), String> {
        for i in 0..self.nodes {
            ip(&[
                "-n",
                &self.node_ns(i),
                "route",
                "flush",
                "type",
                "blackhole",
            ])?;
        }
        Ok(())
    }

    /// The path that opens the clients' namespace (for [`enter`]).
    pub fn client_ns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(self.client_ns())
    }

    /// A multi-threaded runtime whose threads all live in the clients' namespace: every socket
    /// a task spawned on it opens is a client's socket. (`block_on`'s own thread is not moved:
    /// spawn the work and await its handle.)
    pub fn client_runtime(&self, threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
        let path = self.client_ns_path();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .on_thread_start(move || {
                if let Err(e) = enter(&path) {
                    panic!("cannot enter {}: {e}", path.display());
                }
            })
            .build()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns on a valid namespace file descriptor; affects only this thread's network
    // namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
