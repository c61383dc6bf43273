//! `dynamokv server`: configuration from an optional TOML file, overridden by flags.

use anyhow::Context as _;
use clap::Args;
use dynamokv_server::{Config, SyncMode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `dynamokv server`. Each overrides the same field of the config file.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// TOML config file; its fields are those of the flags below, in snake_case
    /// (e.g. `data_dir = "/var/lib/dynamokv"`, `sync = "always"`).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's id, unique in the cluster (letters, digits, '-', '_', '.'). Default: the id
    /// stored in the data directory, or a generated `node-XXXXXXXX`.
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// Directory for this node's data; created if missing. [default: dynamokv-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Peer (internal RPC) listen address; port 0 picks a free port (printed as `peer=ADDR`).
    /// [default: 127.0.0.1:7070]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Peer addresses of nodes to join through, comma-separated. None: start a new cluster.
    #[arg(long, value_name = "ADDR,ADDR,...", value_delimiter = ',')]
    seeds: Option<Vec<String>>,
    /// Peer address other nodes should dial (default: the bound --listen address).
    #[arg(long, value_name = "HOST:PORT")]
    advertise_peer: Option<String>,
    /// HTTP address partition-aware clients should use (default: the bound --http address).
    #[arg(long, value_name = "HOST:PORT")]
    advertise_http: Option<String>,
    /// Tokens (virtual nodes) this node places on the ring. [default: 256]
    #[arg(long, value_name = "COUNT")]
    vnodes: Option<u16>,
    /// Replicas per key (N); the same on every node. [default: 3]
    #[arg(long, short = 'n', value_name = "N")]
    replicas: Option<u8>,
    /// Default read quorum (R); requests may override it with ?r=. [default: 2]
    #[arg(long, short = 'r', value_name = "R")]
    read_quorum: Option<u8>,
    /// Default write quorum (W); requests may override it with ?w=. [default: 2]
    #[arg(long, short = 'w', value_name = "W")]
    write_quorum: Option<u8>,
    /// How long a coordinator waits for replicas before answering 503, in ms. [default: 2000]
    #[arg(long, value_name = "MS")]
    request_timeout_ms: Option<u64>,
    /// Largest peer frame accepted, in bytes. [default: 33554432]
    #[arg(long, value_name = "BYTES")]
    max_frame_bytes: Option<usize>,
    /// Most hints handed back to returning nodes per second. [default: 2000]
    #[arg(long, value_name = "N")]
    hint_rate: Option<u64>,
    /// How often hints are scanned for owners that are back, in ms. [default: 1000]
    #[arg(long, value_name = "MS")]
    hint_scan_interval_ms: Option<u64>,
    /// Pause between anti-entropy rounds (every range compared with its other replicas), in
    /// ms; 0 runs anti-entropy only on demand (`dynamokv admin repair`). [default: 10000]
    #[arg(long, value_name = "MS")]
    anti_entropy_interval_ms: Option<u64>,
    /// Most objects anti-entropy sends or asks for per second. [default: 5000]
    #[arg(long, value_name = "N")]
    anti_entropy_keys_per_sec: Option<u64>,
    /// Most object bytes anti-entropy sends per second. [default: 33554432]
    #[arg(long, value_name = "BYTES")]
    anti_entropy_bytes_per_sec: Option<u64>,
    /// Most background items per second, every worker together (hints delivered, objects
    /// repaired or transferred, collection steps); scaled down while foreground latency is
    /// high. [default: 10000]
    #[arg(long, value_name = "N")]
    background_items_per_sec: Option<u64>,
    /// Foreground p99 (per second, as coordinators see it) above which background work backs
    /// off, in ms; 0 turns the feedback off. [default: 20]
    #[arg(long, value_name = "MS")]
    background_p99_target_ms: Option<u64>,
    /// Smallest share of the background budget left while backing off (0 to 1; background
    /// jobs still finish). [default: 0.01]
    #[arg(long, value_name = "SHARE")]
    background_min_share: Option<f64>,
    /// Largest object per key (every sibling together), in bytes; a write that would pass it
    /// is refused with 413. [default: 8388608]
    #[arg(long, value_name = "BYTES")]
    max_object_bytes: Option<usize>,
    /// Most siblings per key; a write that would add one more is refused with 409 until a
    /// client reads the key and writes back with its context. [default: 100]
    #[arg(long, value_name = "N")]
    max_siblings: Option<usize>,
    /// Youngest tombstone (deleted key) that may be collected once every replica is proven to
    /// hold it, in ms. [default: 300000]
    #[arg(long, value_name = "MS")]
    tombstone_min_age_ms: Option<u64>,
    /// Let POST /admin/faults drop or delay peer messages (fault tests only, never production).
    #[arg(long)]
    enable_fault_injection: bool,
    /// HTTP API listen address; port 0 picks a free port (printed as `listening http=ADDR`).
    /// [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Threads serving network I/O (HTTP, RESP, peer connections); the state machine and its
    /// storage calls run on one more thread of their own. Several nodes on one machine (as
    /// `dynamokv dev` runs them) do best with 1 each. [default: the number of CPU cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    io_threads: Option<u16>,
    /// RESP2 (Redis protocol) listen address, for redis-cli, redis-benchmark and Redis client
    /// libraries; off unless given. Port 0 picks a free port (printed as `resp=ADDR`).
    #[arg(long, value_name = "ADDR")]
    resp: Option<SocketAddr>,
    /// Largest value accepted, in bytes. [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    max_value_bytes: Option<usize>,
    /// Most HTTP connections open at once; the next one gets 503. [default: 4096]
    #[arg(long, value_name = "N")]
    http_max_connections: Option<usize>,
    /// Time an HTTP client has to send a request's headers, in ms; slower or silent clients
    /// are disconnected. [default: 10000]
    #[arg(long, value_name = "MS")]
    http_header_timeout_ms: Option<u64>,
    /// Seconds a RESP connection may sit idle before it is closed; 0: never. [default: 300]
    #[arg(long, value_name = "SECS")]
    resp_idle_timeout_secs: Option<u64>,
    /// Milliseconds a RESP client has to finish a command it began sending. [default: 30000]
    #[arg(long, value_name = "MS")]
    resp_command_timeout_ms: Option<u64>,
    /// This node's TLS certificate (PEM, issued by the cluster CA; `dynamokv admin certs` makes
    /// one). With --tls-key and --tls-ca, every port speaks TLS: mutual TLS between nodes,
    /// HTTPS and RESP over TLS for clients. [default: off, plaintext]
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// The cluster CA's certificate (PEM): peers must present a certificate it issued.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// Require HTTP and RESP clients to present a certificate of the cluster CA too.
    #[arg(long)]
    tls_require_client_cert: bool,
    /// When to fsync: `always` (before acknowledging each write), `periodic` (every
    /// --sync-interval-ms) or `never` (leave it to the OS). A process crash loses nothing under
    /// any of them; they differ on power loss. [default: periodic]
    #[arg(long, value_name = "MODE", value_parser = parse_sync)]
    sync: Option<SyncMode>,
    /// Interval of the periodic fsync, in milliseconds. [default: 100]
    #[arg(long, value_name = "MS")]
    sync_interval_ms: Option<u64>,
    /// Secret authenticating context tokens; all nodes of a cluster must share it. Default: a
    /// random secret generated in the data directory on first start.
    #[arg(
        long,
        env = "DYNAMOKV_CLUSTER_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    cluster_secret: Option<String>,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info`, `dynamokv_server=debug`); the
    /// RUST_LOG environment variable wins when set.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
    /// Log format on standard error: `text` (colours only when standard error is a terminal)
    /// or `json` (one object per line, for log collectors).
    #[arg(long, default_value = "text", value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: String,
}

fn parse_sync(s: &str) -> Result<SyncMode, String> {
    match s {
        "always" => Ok(SyncMode::Always),
        "periodic" => Ok(SyncMode::Periodic),
        "never" => Ok(SyncMode::Never),
        _ => Err(format!(
            "unknown sync mode {s:?}: use always, periodic or never"
        )),
    }
}

impl ServerArgs {
    /// The config file (or defaults) with the flags applied.
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.node_id {
            c.node_id = Some(v.clone());
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = &self.seeds {
            c.seeds = v.iter().filter(|s| !s.is_empty()).cloned().collect();
        }
        if let Some(v) = &self.advertise_peer {
            c.advertise_peer = Some(v.clone());
        }
        if let Some(v) = &self.advertise_http {
            c.advertise_http = Some(v.clone());
        }
        if let Some(v) = self.vnodes {
            c.vnodes = v;
        }
        if let Some(v) = self.replicas {
            c.node.n = v;
        }
        if let Some(v) = self.read_quorum {
            c.node.r = v;
        }
        if let Some(v) = self.write_quorum {
            c.node.w = v;
        }
        if let Some(v) = self.request_timeout_ms {
            c.node.request_timeout_ms = v;
        }
        if let Some(v) = self.max_frame_bytes {
            c.max_frame_bytes = v;
        }
        if let Some(v) = self.hint_rate {
            c.node.hint_rate_per_sec = v;
        }
        if let Some(v) = self.hint_scan_interval_ms {
            c.node.hint_scan_interval_ms = v;
        }
        if let Some(v) = self.max_object_bytes {
            c.node.max_object_bytes = v;
        }
        if let Some(v) = self.tombstone_min_age_ms {
            c.node.tombstone_min_age_ms = v;
        }
        if let Some(v) = self.max_siblings {
            c.node.max_siblings = v;
        }
        if let Some(v) = self.anti_entropy_interval_ms {
            c.node.anti_entropy_interval_ms = v;
        }
        if let Some(v) = self.anti_entropy_keys_per_sec {
            c.node.anti_entropy_keys_per_sec = v;
        }
        if let Some(v) = self.anti_entropy_bytes_per_sec {
            c.node.anti_entropy_bytes_per_sec = v;
        }
        if let Some(v) = self.background_items_per_sec {
            c.node.background_items_per_sec = v;
        }
        if let Some(v) = self.background_p99_target_ms {
            c.node.background_p99_target_ms = v;
        }
        if let Some(v) = self.background_min_share {
            c.node.background_min_share = v;
        }
        if self.enable_fault_injection {
            c.enable_fault_injection = true;
        }
        if let Some(v) = self.http {
            c.http = v;
        }
        if let Some(v) = self.resp {
            c.resp = Some(v);
        }
        if let Some(v) = self.max_value_bytes {
            c.max_value_bytes = v;
        }
        if let Some(v) = self.http_max_connections {
            c.http_max_connections = v;
        }
        if let Some(v) = self.http_header_timeout_ms {
            c.http_header_timeout_ms = v;
        }
        if let Some(v) = self.resp_idle_timeout_secs {
            c.resp_idle_timeout_secs = v;
        }
        if let Some(v) = self.resp_command_timeout_ms {
            c.resp_command_timeout_ms = v;
        }
        if let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            c.tls = Some(dynamokv_server::tls::TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
                require_client_cert: self.tls_require_client_cert,
            });
        } else if self.tls_require_client_cert
            && let Some(t) = &mut c.tls
        {
            t.require_client_cert = true;
        }
        if let Some(v) = self.sync {
            c.sync = v;
        }
        if let Some(v) = self.sync_interval_ms {
            c.sync_interval_ms = v;
        }
        if let Some(v) = &self.cluster_secret {
            c.cluster_secret = Some(v.clone());
        }
        c.validate()?;
        Ok(c)
    }
}

fn init_logging(filter: &str, format: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // fjall and lsm_tree log routine maintenance at info; keep them to warnings.
        tracing_subscriber::EnvFilter::new(format!("fjall=warn,lsm_tree=warn,{filter}"))
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        logs.json().init();
    } else {
        // Colour codes only for a person at a terminal, never in a log file.
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// A future that resolves when the process gets Ctrl-C (SIGINT) or SIGTERM. The handlers are
/// installed when this is called (it must run inside the runtime), not when the future is first
/// polled, so a signal that arrives while the node is still starting stops it cleanly too.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    async move {
        let wait = async |s: &mut Option<tokio::signal::unix::Signal>| match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        };
        tokio::select! {
            _ = wait(&mut int) => {},
            _ = wait(&mut term) => {},
        }
        tracing::info!("shutdown requested");
    }
}

/// Runs `dynamokv server`.
pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    init_logging(&args.log, &args.log_format);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.io_threads {
        rt.worker_threads(usize::from(n));
    }
    let rt = rt
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let shutdown = {
        let _inside = rt.enter();
        shutdown_signal()
    };
    rt.block_on(dynamokv_server::run(config, shutdown))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServerArgs,
    }

    /// The help text of `--flag`: from its line to the next flag's.
    fn block<'a>(help: &'a str, flag: &str) -> &'a str {
        let start = help
            .find(&format!("--{flag} <"))
            .unwrap_or_else(|| panic!("no --{flag} in the help"));
        let rest = &help[start..];
        let end = rest[1..].find("\n  -").map_or(rest.len(), |e| e + 1);
        &rest[..end]
    }

    /// The defaults written in the help are the ones `Config::default()` puts in force (the one
    /// place defaults live): a changed default cannot leave a stale help text behind.
    #[test]
    fn help_states_the_defaults_in_force() {
        let help = Cli::command().render_long_help().to_string();
        let d = Config::default();
        let sync = match d.sync {
            SyncMode::Always => "always",
            SyncMode::Periodic => "periodic",
            SyncMode::Never => "never",
        };
        let expected: Vec<(&str, String)> = vec![
            ("data-dir", d.data_dir.display().to_string()),
            ("listen", d.listen.to_string()),
            ("vnodes", d.vnodes.to_string()),
            ("replicas", d.node.n.to_string()),
            ("read-quorum", d.node.r.to_string()),
            ("write-quorum", d.node.w.to_string()),
            ("request-timeout-ms", d.node.request_timeout_ms.to_string()),
            ("max-frame-bytes", d.max_frame_bytes.to_string()),
            ("hint-rate", d.node.hint_rate_per_sec.to_string()),
            (
                "hint-scan-interval-ms",
                d.node.hint_scan_interval_ms.to_string(),
            ),
            (
                "anti-entropy-interval-ms",
                d.node.anti_entropy_interval_ms.to_string(),
            ),
            (
                "anti-entropy-keys-per-sec",
                d.node.anti_entropy_keys_per_sec.to_string(),
            ),
            (
                "anti-entropy-bytes-per-sec",
                d.node.anti_entropy_bytes_per_sec.to_string(),
            ),
            (
                "background-items-per-sec",
                d.node.background_items_per_sec.to_string(),
            ),
            (
                "background-p99-target-ms",
                d.node.background_p99_target_ms.to_string(),
            ),
            (
                "background-min-share",
                d.node.background_min_share.to_string(),
            ),
            ("max-object-bytes", d.node.max_object_bytes.to_string()),
            ("max-siblings", d.node.max_siblings.to_string()),
            (
                "tombstone-min-age-ms",
                d.node.tombstone_min_age_ms.to_string(),
            ),
            ("http", d.http.to_string()),
            ("max-value-bytes", d.max_value_bytes.to_string()),
            ("http-max-connections", d.http_max_connections.to_string()),
            (
                "http-header-timeout-ms",
                d.http_header_timeout_ms.to_string(),
            ),
            (
                "resp-idle-timeout-secs",
                d.resp_idle_timeout_secs.to_string(),
            ),
            (
                "resp-command-timeout-ms",
                d.resp_command_timeout_ms.to_string(),
            ),
            ("sync", sync.to_string()),
            ("sync-interval-ms", d.sync_interval_ms.to_string()),
        ];
        for (flag, value) in expected {
            let text = block(&help, flag);
            assert!(
                text.contains(&format!("[default: {value}]")),
                "--{flag} should say [default: {value}]:\n{text}"
            );
        }
    }
}
