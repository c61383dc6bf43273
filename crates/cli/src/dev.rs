//! `dynamokv dev`: a local cluster of real node processes on loopback, for trying dynamokv out.
//!
//! Starts K `dynamokv server` processes (node ids n1..nK, data in DIR/nI, logs in DIR/nI.log,
//! HTTP on P..P+K-1, peers on Q..Q+K-1, every node seeded with every other), waits until they
//! agree on one ring, prints each node's endpoints, and stops them all (SIGTERM, clean shutdown)
//! on Ctrl-C or SIGTERM. The cluster secret is kept in DIR/cluster-secret so that contexts stay
//! valid across restarts of the dev cluster.

use anyhow::{Context as _, bail};
use clap::Args;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Flags of `dynamokv dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    nodes: u16,
    /// Directory for the nodes' data and logs (created if missing; kept afterwards).
    #[arg(long, default_value = "dynamokv-dev", value_name = "DIR")]
    dir: PathBuf,
    /// HTTP port of the first node; node i listens on base+i-1.
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    http_port_base: u16,
    /// Peer port of the first node [default: http-port-base + 1000].
    #[arg(long, value_name = "PORT")]
    peer_port_base: Option<u16>,
    /// Tokens per node [default: the server's default].
    #[arg(long)]
    vnodes: Option<u16>,
    /// Replicas per key (N).
    #[arg(long, short = 'n', default_value_t = 3)]
    replicas: u8,
    /// Default read quorum (R).
    #[arg(long, short = 'r', default_value_t = 2)]
    read_quorum: u8,
    /// Default write quorum (W).
    #[arg(long, short = 'w', default_value_t = 2)]
    write_quorum: u8,
    /// fsync policy of every node: always, periodic or never.
    #[arg(long, default_value = "periodic")]
    sync: String,
    /// Remove DIR's node data first.
    #[arg(long)]
    fresh: bool,
    /// Log filter for the nodes' log files.
    #[arg(long, default_value = "info")]
    log: String,
}

struct Proc {
    id: String,
    child: Child,
    http: String,
    peer: String,
}

fn secret(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("cluster-secret");
    if let Ok(s) = std::fs::read_to_string(&path)
        && !s.trim().is_empty()
    {
        return Ok(s.trim().to_owned());
    }
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let s: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, &s).with_context(|| format!("writing {}", path.display()))?;
    Ok(s)
}

fn terminate(procs: &mut [Proc]) {
    for p in procs.iter() {
        // SIGTERM: the node stops cleanly (syncs and marks a clean shutdown).
        unsafe {
            libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in procs.iter_mut() {
        loop {
            match p.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Runs `dynamokv dev`.
pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let peer_base = args
        .peer_port_base
        .unwrap_or_else(|| args.http_port_base.saturating_add(1000));
    if u32::from(args.http_port_base) + u32::from(args.nodes) > 65536
        || u32::from(peer_base) + u32::from(args.nodes) > 65536
    {
        bail!("the port ranges do not fit below 65536");
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    if args.fresh {
        for i in 1..=args.nodes {
            let _ = std::fs::remove_dir_all(args.dir.join(format!("n{i}")));
        }
    }
    let secret = secret(&args.dir)?;
    let exe = std::env::current_exe().context("finding the dynamokv binary")?;
    let peers: Vec<String> = (0..args.nodes)
        .map(|i| format!("127.0.0.1:{}", peer_base + i))
        .collect();

    // Stop the nodes if we are interrupted while starting them.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.spawn(async move {
        crate::server::shutdown_signal().await;
        let _ = stop_tx.send(());
    });

    let mut procs: Vec<Proc> = Vec::new();
    for i in 0..args.nodes {
        let id = format!("n{}", i + 1);
        let log_path = args.dir.join(format!("{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let seeds: Vec<&str> = peers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != usize::from(i))
            .map(|(_, p)| p.as_str())
            .collect();
        let mut cmd = Command::new(&exe);
        cmd.arg("server")
            .args(["--node-id", &id])
            .arg("--data-dir")
            .arg(args.dir.join(&id))
            .args(["--http", &format!("127.0.0.1:{}", args.http_port_base + i)])
            .args(["--listen", &peers[usize::from(i)]])
            .args(["--seeds", &seeds.join(",")])
            .args(["-n", &args.replicas.to_string()])
            .args(["-r", &args.read_quorum.to_string()])
            .args(["-w", &args.write_quorum.to_string()])
            .args(["--sync", &args.sync])
            .args(["--log", &args.log])
            .env("DYNAMOKV_CLUSTER_SECRET", &secret)
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?);
        // Own process group: Ctrl-C reaches only `dev`, which then stops the nodes in order.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if let Some(v) = args.vnodes {
            cmd.args(["--vnodes", &v.to_string()]);
        }
        let mut child = cmd.spawn().context("starting a node")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match lines.next() {
            Some(Ok(l)) if l.starts_with("listening ") => l,
            _ => {
                let _ = child.wait();
                terminate(&mut procs);
                bail!(
                    "node {id} did not start; see {} (is port {} or {} in use?)",
                    log_path.display(),
                    args.http_port_base + i,
                    peer_base + i
                );
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let field = |name: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_default()
                .to_owned()
        };
        procs.push(Proc {
            id,
            http: field("http="),
            peer: field("peer="),
            child,
        });
        if stop_rx.try_recv().is_ok() {
            terminate(&mut procs);
            return Ok(ExitCode::SUCCESS);
        }
    }

    // Wait until every node sees the whole ring.
    let urls: Vec<String> = procs.iter().map(|p| format!("http://{}", p.http)).collect();
    let agreed = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut versions = std::collections::BTreeSet::new();
            let mut complete = true;
            for u in &urls {
                let Ok(c) = dynamokv_client::Client::new(u) else {
                    return false;
                };
                match c.ring().await {
                    Ok(info)
                        if info.members.len() == urls.len()
                            && info.members.iter().all(|m| m.up) =>
                    {
                        versions.insert(info.version);
                    }
                    _ => complete = false,
                }
            }
            if complete && versions.len() == 1 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    println!(
        "dynamokv dev cluster: {} nodes, N={} R={} W={}, data and logs in {}",
        procs.len(),
        args.replicas,
        args.read_quorum,
        args.write_quorum,
        args.dir.display()
    );
    println!("{:<6} {:<28} {:<22} {:<8}", "node", "http", "peer", "pid");
    for p in &procs {
        println!(
            "{:<6} {:<28} {:<22} {:<8}",
            p.id,
            format!("http://{}", p.http),
            p.peer,
            p.child.id()
        );
    }
    if agreed {
        println!("all nodes agree on the ring. Try:");
    } else {
        println!(
            "warning: the nodes did not agree on one ring within 30 s; see the logs. Try anyway:"
        );
    }
    println!(
        "  curl -X PUT --data hello http://{}/kv/greeting",
        procs[0].http
    );
    println!("  curl http://{}/kv/greeting", procs[procs.len() - 1].http);
    println!("  dynamokv get greeting --node http://{}", procs[0].http);
    println!("Ctrl-C stops the cluster.");

    // Run until interrupted or a node dies.
    let mut code = ExitCode::SUCCESS;
    'wait: loop {
        if stop_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                eprintln!(
                    "node {} exited ({status}); see {}; stopping the cluster",
                    p.id,
                    args.dir.join(format!("{}.log", p.id)).display()
                );
                code = ExitCode::FAILURE;
                break 'wait;
            }
        }
    }
    println!("stopping {} nodes...", procs.len());
    terminate(&mut procs);
    println!("stopped");
    Ok(code)
}
