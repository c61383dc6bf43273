//! `dynamokv dev`: a local cluster of real node processes on loopback, for trying dynamokv out.
//!
//! Starts K `dynamokv server` processes (node ids n1..nK, data in DIR/nI, logs in DIR/nI.log,
//! HTTP on P..P+K-1, peers on Q..Q+K-1, every node seeded with every other), waits until they
//! agree on one ring, prints each node's endpoints, and stops them all (SIGTERM, clean shutdown)
//! on Ctrl-C or SIGTERM. The cluster secret is kept in DIR/cluster-secret so that contexts stay
//! valid across restarts of the dev cluster.
//!
//! A node that dies does not stop the cluster: `dev` reports it (with its log and the command
//! that restarts it) and keeps the others running. Every node's pid is in DIR/nI.pid, so other
//! invocations manage the running cluster: `dynamokv dev --dir DIR stop n3` (SIGTERM), `kill n3`
//! (SIGKILL), `start n3` (again, same ports and data), `add` (a new node that joins).

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
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
    /// Directory for the nodes' data and logs (created if missing; kept afterwards). Given
    /// before or after a subcommand (`dev kill n3 --dir X` or `dev --dir X kill n3`).
    #[arg(
        long,
        default_value = "dynamokv-dev",
        value_name = "DIR",
        global = true
    )]
    dir: PathBuf,
    /// HTTP port of the first node; node i listens on base+i-1.
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    http_port_base: u16,
    /// Peer port of the first node [default: http-port-base + 1000].
    #[arg(long, value_name = "PORT")]
    peer_port_base: Option<u16>,
    /// RESP (Redis protocol) port of the first node, for redis-cli and redis-benchmark
    /// [default: http-port-base - 1701, so 6379 for the default HTTP port 8080].
    #[arg(long, value_name = "PORT")]
    resp_port_base: Option<u16>,
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
    /// Run every port over TLS, with a CA and node certificates made in DIR/certs (clients:
    /// `--cacert DIR/certs/ca.pem`, `curl --cacert`, `redis-cli --tls --cacert`).
    #[arg(long)]
    tls: bool,
    /// Manage the running dev cluster in --dir instead of starting one.
    #[command(subcommand)]
    command: Option<DevCommand>,
}

/// Commands for a running dev cluster.
#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Stops a node cleanly (SIGTERM); the others keep serving.
    Stop {
        /// The node id, e.g. n3.
        id: String,
    },
    /// Kills a node (SIGKILL), as a crash would.
    Kill {
        /// The node id, e.g. n3.
        id: String,
    },
    /// Starts a stopped node again, with its ports and data.
    Start {
        /// The node id, e.g. n3.
        id: String,
    },
    /// Adds a new node, which joins the cluster (and takes its share of the data).
    Add,
}

/// What `dev` started with, kept in DIR/dev.json for `start` and `add`.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
struct Settings {
    http_port_base: u16,
    peer_port_base: u16,
    /// Absent in the settings of clusters made before the RESP endpoint: no RESP port.
    #[serde(default)]
    resp_port_base: Option<u16>,
    vnodes: Option<u16>,
    replicas: u8,
    read_quorum: u8,
    write_quorum: u8,
    sync: String,
    log: String,
    nodes: u16,
    /// Absent in the settings of clusters made before TLS: plaintext.
    #[serde(default)]
    tls: bool,
}

impl Settings {
    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// Where `dev --tls` keeps its CA and node certificates.
fn certs_dir(dir: &Path) -> PathBuf {
    dir.join("certs")
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

fn pid_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.pid"))
}

fn read_pid(dir: &Path, id: &str) -> Option<i32> {
    std::fs::read_to_string(pid_path(dir, id))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks that the process exists. A node that exited but is not yet reaped by the
    // dev process that started it (a zombie, state Z in /proc) is not alive.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// Waits until `pid` is gone, up to `limit`; true if it is.
fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn signal(pid: i32, sig: libc::c_int) {
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The node index (1-based) of an id like `n3`.
fn index_of(id: &str) -> anyhow::Result<u16> {
    id.strip_prefix('n')
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 1)
        .with_context(|| format!("{id} is not a dev node id (n1, n2, ...)"))
}

fn command_line(exe: &Path, dir: &Path, set: &Settings, index: u16, secret: &str) -> Command {
    let id = format!("n{index}");
    let peer = |i: u16| format!("127.0.0.1:{}", set.peer_port_base + i - 1);
    // n1 on a new directory founds the cluster (it mints the cluster id); every other start
    // joins through the other nodes.
    let founds = index == 1 && !dir.join(&id).exists();
    let seeds: Vec<String> = (1..=set.nodes.max(index))
        .filter(|i| *i != index && !founds)
        .map(peer)
        .collect();
    let mut cmd = Command::new(exe);
    cmd.arg("server")
        .args(["--node-id", &id])
        .arg("--data-dir")
        .arg(dir.join(&id))
        .args([
            "--http",
            &format!("127.0.0.1:{}", set.http_port_base + index - 1),
        ])
        .args(["--listen", &peer(index)])
        .args(
            set.resp_port_base
                .map(|b| ["--resp".to_owned(), format!("127.0.0.1:{}", b + index - 1)])
                .unwrap_or_default(),
        )
        .args(["-n", &set.replicas.to_string()])
        .args(["-r", &set.read_quorum.to_string()])
        .args(["-w", &set.write_quorum.to_string()])
        .args(["--sync", &set.sync])
        // The nodes share this machine's cores: one I/O thread each (plus the node thread).
        .args(["--io-threads", "1"])
        .args(["--log", &set.log])
        .env("DYNAMOKV_CLUSTER_SECRET", secret);
    if set.tls {
        let certs = certs_dir(dir);
        cmd.arg("--tls-cert")
            .arg(certs.join(format!("{id}.pem")))
            .arg("--tls-key")
            .arg(certs.join(format!("{id}.key")))
            .arg("--tls-ca")
            .arg(certs.join("ca.pem"));
    }
    if !seeds.is_empty() {
        cmd.args(["--seeds", &seeds.join(",")]);
    }
    if let Some(v) = set.vnodes {
        cmd.args(["--vnodes", &v.to_string()]);
    }
    // Own process group: Ctrl-C reaches only `dev`, which then stops the nodes in order.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// Starts node `index`; waits for its `listening` line; records its pid.
fn spawn(
    exe: &Path,
    dir: &Path,
    set: &Settings,
    index: u16,
    secret: &str,
) -> anyhow::Result<(Child, String, String, String)> {
    let id = format!("n{index}");
    if set.tls {
        crate::certs::ensure_nodes(&certs_dir(dir), std::slice::from_ref(&id))?;
    }
    let log_path = dir.join(format!("{id}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = command_line(exe, dir, set, index, secret);
    cmd.stdout(Stdio::piped()).stderr(log);
    let mut child = cmd.spawn().context("starting a node")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = match lines.next() {
        Some(Ok(l)) if l.starts_with("listening ") => l,
        _ => {
            let _ = child.wait();
            let resp = set
                .resp_port_base
                .map(|b| format!(" or {}", b + index - 1))
                .unwrap_or_default();
            bail!(
                "node {id} did not start; see {} (is port {}, {}{resp} in use?)",
                log_path.display(),
                set.http_port_base + index - 1,
                set.peer_port_base + index - 1
            );
        }
    };
    std::thread::spawn(move || for _ in lines {});
    std::fs::write(pid_path(dir, &id), child.id().to_string())
        .with_context(|| format!("writing {}", pid_path(dir, &id).display()))?;
    let field = |name: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_default()
            .to_owned()
    };
    Ok((child, field("http="), field("peer="), field("resp=")))
}

fn load_settings(dir: &Path) -> anyhow::Result<Settings> {
    let path = dir.join("dev.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no dev cluster in {} ({} is missing); start one with dynamokv dev --dir {}",
            dir.display(),
            path.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

/// `dev stop|kill|start|add` against the cluster running in `dir`.
fn manage(dir: &Path, command: DevCommand) -> anyhow::Result<ExitCode> {
    let mut set = load_settings(dir)?;
    let exe = std::env::current_exe().context("finding the dynamokv binary")?;
    match command {
        DevCommand::Stop { id } => {
            index_of(&id)?;
            let pid = read_pid(dir, &id).filter(|p| alive(*p));
            let Some(pid) = pid else {
                bail!("{id} is not running");
            };
            signal(pid, libc::SIGTERM);
            if !wait_gone(pid, Duration::from_secs(30)) {
                bail!(
                    "{id} (pid {pid}) is still stopping after 30 s; `dynamokv dev --dir {} kill {id}` ends it at once",
                    dir.display()
                );
            }
            println!(
                "{id} (pid {pid}) stopped; start it again with: dynamokv dev --dir {} start {id}",
                dir.display()
            );
        }
        DevCommand::Kill { id } => {
            index_of(&id)?;
            let Some(pid) = read_pid(dir, &id).filter(|p| alive(*p)) else {
                bail!("{id} is not running");
            };
            signal(pid, libc::SIGKILL);
            if !wait_gone(pid, Duration::from_secs(10)) {
                bail!("{id} (pid {pid}) is still there 10 s after SIGKILL");
            }
            println!(
                "{id} (pid {pid}) killed; start it again with: dynamokv dev --dir {} start {id}",
                dir.display()
            );
        }
        DevCommand::Start { id } => {
            let index = index_of(&id)?;
            if index > set.nodes {
                bail!(
                    "{id} is not a node of this cluster; dynamokv dev --dir {} add adds one",
                    dir.display()
                );
            }
            if read_pid(dir, &id).is_some_and(alive) {
                bail!("{id} is already running");
            }
            let (child, http, _, resp) = spawn(&exe, dir, &set, index, &secret(dir)?)?;
            println!(
                "{id} started: {}://{http} resp={resp} (pid {})",
                set.scheme(),
                child.id()
            );
        }
        DevCommand::Add => {
            // The next id that no node has used: its data directory would belong to another
            // instance (one that left, or a leftover of an earlier cluster in this directory).
            let mut index = set.nodes + 1;
            while dir.join(format!("n{index}")).exists()
                || read_pid(dir, &format!("n{index}")).is_some_and(alive)
            {
                index += 1;
            }
            set.nodes = index;
            let (child, http, _, _) = spawn(&exe, dir, &set, index, &secret(dir)?)?;
            std::fs::write(dir.join("dev.json"), serde_json::to_string_pretty(&set)?)?;
            let scheme = set.scheme();
            println!(
                "n{index} started: {scheme}://{http} (pid {}); it joins (fetching its ranges) and then serves; follow with: dynamokv admin join --node {scheme}://{http}",
                child.id()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn terminate(pids: &[i32]) {
    for pid in pids {
        // SIGTERM: the node stops cleanly (syncs and marks a clean shutdown).
        signal(*pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids {
        while alive(*pid) && Instant::now() < deadline {
            // Reap it if it is our child.
            unsafe {
                libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(*pid) {
            signal(*pid, libc::SIGKILL);
        }
        // An exited child is a zombie until reaped: reap it now, so no process of the cluster
        // is left once `dev` returns.
        unsafe {
            libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG);
        }
    }
}

/// Refuses to start a cluster in `dir` while nodes of the one already there run: a second `dev`
/// would overwrite its settings and write into its nodes' logs.
fn refuse_if_running(dir: &Path) -> anyhow::Result<()> {
    let Ok(set) = load_settings(dir) else {
        return Ok(());
    };
    let running: Vec<String> = (1..=set.nodes)
        .filter_map(|i| {
            let id = format!("n{i}");
            let pid = read_pid(dir, &id).filter(|p| alive(*p))?;
            Some(format!(
                "  {id}  pid {pid}  {}://127.0.0.1:{}",
                set.scheme(),
                u32::from(set.http_port_base) + u32::from(i) - 1
            ))
        })
        .collect();
    if running.is_empty() {
        return Ok(());
    }
    bail!(
        "a dev cluster already runs in {d}:\n{}\nmanage it with `dynamokv dev --dir {d} stop|kill|start|add`, or stop it (Ctrl-C in its terminal) before starting another here",
        running.join("\n"),
        d = dir.display()
    )
}

/// Runs `dynamokv dev`.
pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    if let Some(command) = args.command {
        return manage(&args.dir, command);
    }
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    refuse_if_running(&args.dir)?;
    let peer_base = args
        .peer_port_base
        .unwrap_or_else(|| args.http_port_base.saturating_add(1000));
    let resp_base = args.resp_port_base.unwrap_or_else(|| {
        args.http_port_base
            .checked_sub(1701)
            .filter(|b| *b >= 1024)
            .unwrap_or_else(|| args.http_port_base.saturating_add(2000))
    });
    if u32::from(args.http_port_base) + u32::from(args.nodes) > 65536
        || u32::from(peer_base) + u32::from(args.nodes) > 65536
        || u32::from(resp_base) + u32::from(args.nodes) > 65536
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
    let set = Settings {
        http_port_base: args.http_port_base,
        peer_port_base: peer_base,
        resp_port_base: Some(resp_base),
        vnodes: args.vnodes,
        replicas: args.replicas,
        read_quorum: args.read_quorum,
        write_quorum: args.write_quorum,
        sync: args.sync.clone(),
        log: args.log.clone(),
        nodes: args.nodes,
        tls: args.tls,
    };
    if set.tls {
        // This process checks the nodes over HTTPS: trust the cluster's CA.
        let ids: Vec<String> = (1..=args.nodes).map(|i| format!("n{i}")).collect();
        crate::certs::ensure_nodes(&certs_dir(&args.dir), &ids)?;
        dynamokv_client::tls::configure(&dynamokv_client::tls::ClientTls {
            ca: Some(certs_dir(&args.dir).join("ca.pem")),
            ..Default::default()
        })?;
    }
    std::fs::write(
        args.dir.join("dev.json"),
        serde_json::to_string_pretty(&set)?,
    )?;
    let secret = secret(&args.dir)?;
    let exe = std::env::current_exe().context("finding the dynamokv binary")?;

    // Stop the nodes if we are interrupted while starting them.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let signalled = {
        let _inside = rt.enter();
        crate::server::shutdown_signal()
    };
    rt.spawn(async move {
        signalled.await;
        let _ = stop_tx.send(());
    });

    let mut children: Vec<Child> = Vec::new();
    let mut shown: Vec<(String, String, String, String, u32)> = Vec::new();
    for i in 1..=args.nodes {
        match spawn(&exe, &args.dir, &set, i, &secret) {
            Ok((child, http, peer, resp)) => {
                shown.push((format!("n{i}"), http, peer, resp, child.id()));
                children.push(child);
            }
            Err(e) => {
                let pids: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
                terminate(&pids);
                return Err(e);
            }
        }
        if stop_rx.try_recv().is_ok() {
            let pids: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
            terminate(&pids);
            return Ok(ExitCode::SUCCESS);
        }
    }

    // Wait until every node sees the whole ring, every member joined.
    let scheme = set.scheme();
    let urls: Vec<String> = shown
        .iter()
        .map(|p| format!("{scheme}://{}", p.1))
        .collect();
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
                            && info.members.iter().all(|m| {
                                m.up && m.member.status == dynamokv_core::membership::Status::Up
                            }) =>
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
        shown.len(),
        args.replicas,
        args.read_quorum,
        args.write_quorum,
        args.dir.display()
    );
    println!(
        "{:<6} {:<28} {:<22} {:<22} {:<8}",
        "node", "http", "resp", "peer", "pid"
    );
    for (id, http, peer, resp, pid) in &shown {
        println!(
            "{:<6} {:<28} {:<22} {:<22} {:<8}",
            id,
            format!("{scheme}://{http}"),
            resp,
            peer,
            pid
        );
    }
    if agreed {
        println!("all nodes agree on the ring. Try:");
    } else {
        println!(
            "warning: the nodes did not agree on one ring within 30 s; see the logs. Try anyway:"
        );
    }
    let d = args.dir.display();
    let (curl, cli, redis) = if set.tls {
        let ca = certs_dir(&args.dir).join("ca.pem");
        let ca = ca.display();
        (
            format!("curl --cacert {ca}"),
            format!("dynamokv --cacert {ca}"),
            format!("redis-cli --tls --cacert {ca}"),
        )
    } else {
        ("curl".into(), "dynamokv".into(), "redis-cli".into())
    };
    println!(
        "  {curl} -X PUT --data hello {scheme}://{}/kv/greeting",
        shown[0].1
    );
    println!(
        "  {curl} {scheme}://{}/kv/greeting",
        shown[shown.len() - 1].1
    );
    println!("  {cli} get greeting --node {scheme}://{}", shown[0].1);
    if let Some((host, port)) = shown[0].3.rsplit_once(':') {
        println!("  {redis} -h {host} -p {port} GET greeting");
    }
    println!("  dynamokv dev --dir {d} kill n3     # the others keep serving");
    println!("  dynamokv dev --dir {d} start n3    # back, with its data; hints go home");
    println!("  dynamokv dev --dir {d} add         # a new node joins");
    println!("Ctrl-C stops the cluster.");

    // Run until interrupted; report nodes that die or come back (started by `dev start`/`add`).
    let mut known: std::collections::BTreeMap<String, Option<i32>> = shown
        .iter()
        .map(|(id, _, _, _, pid)| (id.clone(), Some(*pid as i32)))
        .collect();
    loop {
        if stop_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        for c in children.iter_mut() {
            let _ = c.try_wait();
        }
        let count = load_settings(&args.dir).map_or(args.nodes, |s| s.nodes);
        for i in 1..=count {
            let id = format!("n{i}");
            let pid = read_pid(&args.dir, &id).filter(|p| alive(*p));
            let before = known.get(&id).copied().flatten();
            match (before, pid) {
                (Some(old), None) => {
                    println!(
                        "node {id} (pid {old}) exited; its log: {}; the other nodes keep serving. Restart it with: dynamokv dev --dir {d} start {id}",
                        args.dir.join(format!("{id}.log")).display()
                    );
                    known.insert(id, None);
                }
                (old, Some(new)) if old != Some(new) => {
                    println!(
                        "node {id} is running (pid {new}), {scheme}://127.0.0.1:{}",
                        set.http_port_base + i - 1
                    );
                    known.insert(id, Some(new));
                }
                _ => {}
            }
        }
    }
    // The pid files as they are now: a node `dev start` began since the last look counts too.
    let count = load_settings(&args.dir).map_or(args.nodes, |s| s.nodes);
    let mut pids: Vec<i32> = known.values().flatten().copied().collect();
    for i in 1..=count {
        if let Some(pid) = read_pid(&args.dir, &format!("n{i}")).filter(|p| alive(*p))
            && !pids.contains(&pid)
        {
            pids.push(pid);
        }
    }
    println!("stopping {} nodes...", pids.len());
    terminate(&pids);
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}
