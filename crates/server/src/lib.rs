//! dynamokv-server: the node process - storage wiring, identity, configuration, the peer
//! transport, the thread that drives the core state machine, the HTTP API and the RESP endpoint.
//!
//! [`run`] opens the data directory, binds the HTTP, peer and (if asked) RESP listeners, prints
//! one line `listening http=ADDR peer=ADDR node=ID [resp=ADDR]` on standard output once all are
//! bound (so tools that start nodes on port 0 learn the addresses), joins the cluster through the
//! seeds, serves until the shutdown future completes, then stops the node thread, records a clean shutdown and syncs.

pub mod auth;
pub mod config;
pub mod handshake;
pub mod history;
pub mod http;
pub mod identity;
pub mod log_window;
pub mod metrics;
pub mod node;
pub mod resp;
pub mod runtime;
pub mod salvage;
pub mod tls;
pub mod transport;

pub use config::{Config, ConfigError, SyncMode};
pub use node::{LocalState, NodeError};

use std::future::Future;
use std::io::Write as _;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node could not open its data directory.
    #[error("cannot open the data directory: {0}")]
    Node(#[from] NodeError),
    /// This data directory's instance left the cluster, was removed from it, or is an older
    /// copy: it must not serve again (the text says how to bring the machine back).
    #[error("refusing to start on {dir}: {why}")]
    Ended {
        /// The data directory.
        dir: String,
        /// What happened and what to do.
        why: String,
    },
    /// A socket could not be bound or served.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The IO error.
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Io {
            context: what.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(ServerError::from)
}

/// Connections the kernel completes and queues for a listener before it refuses more: as many
/// as Linux allows by default (`net.core.somaxconn`), so that a burst of clients is not met by
/// dropped SYNs (a second's retry each) while the accept loop catches up.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `addr` with [`LISTEN_BACKLOG`].
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The node's listeners, bound, and their addresses.
struct Listeners {
    http: tokio::net::TcpListener,
    http_addr: std::net::SocketAddr,
    peer: tokio::net::TcpListener,
    peer_addr: std::net::SocketAddr,
    resp: Option<(tokio::net::TcpListener, std::net::SocketAddr)>,
}

impl Listeners {
    /// Binds the HTTP, peer and (if asked) RESP listeners.
    fn bind(config: &Config) -> Result<Listeners, ServerError> {
        let bound = |addr, what: &str| -> Result<_, ServerError> {
            let l = listen(addr).map_err(io_err(format!("cannot listen for {what} on {addr}")))?;
            let a = l
                .local_addr()
                .map_err(io_err(format!("reading the {what} address")))?;
            Ok((l, a))
        };
        let (http, http_addr) = bound(config.http, "HTTP")?;
        let (peer, peer_addr) = bound(config.listen, "peers")?;
        let resp = match config.resp {
            None => None,
            Some(addr) => Some(bound(addr, "RESP")?),
        };
        Ok(Listeners {
            http,
            http_addr,
            peer,
            peer_addr,
            resp,
        })
    }

    /// The peer and HTTP addresses announced to other nodes and to clients.
    fn advertised(&self, config: &Config) -> (String, String) {
        if self.peer_addr.ip().is_unspecified() && config.advertise_peer.is_none() {
            tracing::warn!(
                "listening for peers on an unspecified address; set --advertise-peer so other nodes can reach this one"
            );
        }
        let peer = config
            .advertise_peer
            .clone()
            .unwrap_or_else(|| self.peer_addr.to_string());
        let http = config
            .advertise_http
            .clone()
            .unwrap_or_else(|| self.http_addr.to_string());
        (peer, http)
    }
}

/// What the data directory holds for this start (membership history, instance, actor, counter
/// floor), read off the disk.
async fn directory(
    local: &LocalState,
) -> Result<(history::History, dynamokv_core::node::startup::Directory), ServerError> {
    let engine = local.engine.clone();
    let (node_id, identity) = (local.node_id.clone(), local.identity.clone());
    blocking("reading the data directory", move || {
        let (history, known) = history::History::load(engine.as_ref())?;
        if known.members.len() > 1 {
            tracing::info!(members = known.members.len(), "membership history replayed");
        }
        let dir = dynamokv_core::node::startup::Directory {
            node_id,
            instance: identity::Identity::instance(engine.as_ref())?,
            known: known.members,
            ended: known.ended,
            actor: identity.actor,
            new_actor: identity.new_actor,
            counter_floor: identity::Identity::counter_floor(engine.as_ref())?,
        };
        Ok((history, dir))
    })
    .await
}

/// The cluster this directory belongs to. A node founds a cluster (mints its id) when it starts
/// without seeds on a directory that knows no other member: a new one, or one from before
/// cluster ids that was a cluster of one. Any other directory without an id takes its
/// cluster's from the first peer that presents one.
async fn cluster_id(
    config: &Config,
    local: &LocalState,
    dir: &dynamokv_core::node::startup::Directory,
) -> Result<std::sync::Arc<identity::ClusterId>, ServerError> {
    let founds = config.seeds.is_empty() && dir.known.iter().all(|m| m.id == dir.node_id);
    let engine = local.engine.clone();
    let id = blocking("reading the cluster id", move || {
        Ok(identity::ClusterId::open(engine, founds)?)
    })
    .await?;
    Ok(std::sync::Arc::new(id))
}

/// The node of this start (the one startup path, `dynamokv_core::node::startup`), its own
/// record made durable before any peer hears of it, and its cluster id; or why this directory
/// must not start.
async fn start_node(
    config: &Config,
    local: &LocalState,
    advertised: (String, String),
) -> Result<
    (
        runtime::CoreNode,
        history::History,
        std::sync::Arc<identity::ClusterId>,
    ),
    ServerError,
> {
    let (mut history, dir) = directory(local).await?;
    let setup = dynamokv_core::node::startup::Setup {
        config: config.node,
        vnodes: config.vnodes,
        seeds: !config.seeds.is_empty(),
        peer_addr: advertised.0,
        http_addr: advertised.1,
    };
    let now = dynamokv_core::clock::Now {
        mono: 1,
        wall: node::now_ms(),
    };
    let seed = local.identity.actor.0 ^ now.wall;
    let core = dynamokv_core::node::startup::start(&dir, &setup, local.store.clone(), now, seed)
        .map_err(|e| ServerError::Ended {
            dir: config.data_dir.display().to_string(),
            why: e.explain(),
        })?;
    let mut core = core;
    let engine = local.engine.clone();
    if blocking("reading the storage's state", move || {
        Ok(engine.lost_data()?)
    })
    .await?
    {
        tracing::warn!(
            "an earlier salvage of damaged storage dropped data not rebuilt yet: rebuilding it from the other replicas (this node's reads do not count towards quorums until then)"
        );
        core.storage_salvaged(true);
    }
    if core.me().status != dynamokv_core::membership::Status::Up {
        tracing::info!(status = core.me().status.as_str(), "starting");
    }
    let cluster = cluster_id(config, local, &dir).await?;
    let (engine, record) = (local.engine.clone(), core.me().clone());
    let history = blocking("persisting this start's epoch", move || {
        history.append(engine.as_ref(), &record)?;
        engine.flush()?;
        Ok::<_, NodeError>(history)
    })
    .await?;
    Ok((core, history, cluster))
}

/// Prints the one line tools read the addresses from, and logs the start.
fn announce(config: &Config, local: &LocalState, l: &Listeners, tls: bool) {
    let mut out = std::io::stdout().lock();
    let resp = l
        .resp
        .as_ref()
        .map(|(_, a)| format!(" resp={a}"))
        .unwrap_or_default();
    let tls_note = if tls { " tls=on" } else { "" };
    let _ = writeln!(
        out,
        "listening http={} peer={} node={}{resp}{tls_note}",
        l.http_addr, l.peer_addr, local.node_id
    );
    let _ = out.flush();
    tracing::info!(
        node = %local.node_id, http = %l.http_addr, peer = %l.peer_addr,
        data_dir = %config.data_dir.display(), actor = %local.identity.actor,
        seeds = ?config.seeds, "node started"
    );
    if !config.tokens.is_empty() {
        tracing::info!(
            tokens = config.tokens.len(),
            "client tokens configured: HTTP and RESP requests need one"
        );
    }
    if config.enable_fault_injection {
        tracing::warn!(
            "fault injection is enabled: /admin/faults can drop and delay peer messages"
        );
    }
}

/// The RESP endpoint's shared state.
fn resp_state(
    config: &Config,
    local: &LocalState,
    handle: &runtime::NodeHandle,
    tokens: &std::sync::Arc<auth::Tokens>,
    addr: std::net::SocketAddr,
) -> std::sync::Arc<resp::commands::RespState> {
    std::sync::Arc::new(resp::commands::RespState {
        node: handle.clone(),
        codec: local.codec.clone(),
        node_id: local.node_id.clone(),
        max_value_bytes: config.node.max_value_bytes,
        addr: addr.to_string(),
        connected: Default::default(),
        accepted: Default::default(),
        commands: Default::default(),
        tokens: tokens.clone(),
        idle_timeout: (config.resp_idle_timeout_secs > 0)
            .then(|| std::time::Duration::from_secs(config.resp_idle_timeout_secs)),
        command_timeout: std::time::Duration::from_millis(config.resp_command_timeout_ms),
        cursors: Default::default(),
    })
}

/// The HTTP API's shared state.
fn app_state(
    config: &Config,
    local: &LocalState,
    handle: &runtime::NodeHandle,
    transport: &transport::Transport,
    tokens: &std::sync::Arc<auth::Tokens>,
    tls: &Option<tls::Tls>,
) -> http::AppState {
    http::AppState {
        node: handle.clone(),
        store: local.store.clone(),
        codec: local.codec.clone(),
        node_id: local.node_id.clone(),
        actor: local.identity.actor,
        max_value_bytes: config.node.max_value_bytes,
        transport: transport.clone(),
        fault_injection: config.enable_fault_injection,
        metrics: metrics::install(),
        data_dir: config.data_dir.clone(),
        tokens: tokens.clone(),
        tls: tls.clone(),
    }
}

/// Runs a node until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let tls = match &config.tls {
        None => None,
        Some(files) => Some(tls::Tls::load(files).map_err(ConfigError::from)?),
    };
    let cfg = config.clone();
    let local = blocking("opening the data directory", move || LocalState::open(&cfg)).await?;
    if let Some(why) = local.identity.new_actor {
        tracing::info!(actor = %local.identity.actor, reason = why.as_str(), "new actor id");
    }
    let listeners = Listeners::bind(&config)?;
    let advertised = listeners.advertised(&config);
    let advertise_peer = advertised.0.clone();
    let (core, history, cluster) = start_node(&config, &local, advertised).await?;
    // The record of this start (raised generation and epoch) is what peers see.
    let me = core.me().clone();
    let (events_tx, events_rx) = std::sync::mpsc::channel();
    let handle = runtime::NodeHandle::new(events_tx);
    let transport = transport::Transport::new(
        me,
        handshake::PeerKey::new(&local.codec),
        cluster,
        handle.transport_sink(),
        config.max_frame_bytes,
        tokio::runtime::Handle::current(),
        tls.clone(),
    );
    let node_thread = {
        let (transport, engine) = (transport.clone(), local.engine.clone());
        std::thread::Builder::new()
            .name("dynamokv-node".into())
            .spawn(move || runtime::run_node(core, events_rx, transport, engine, history))
            .map_err(io_err("starting the node thread"))?
    };
    announce(&config, &local, &listeners, tls.is_some());
    let peer_addr = listeners.peer_addr.to_string();
    let Listeners {
        http, peer, resp, ..
    } = listeners;
    let salvage = tokio::spawn(salvage::watch(local.store.clone(), handle.clone()));
    let peer_server = tokio::spawn(transport.clone().serve(peer));
    for seed in &config.seeds {
        if *seed != advertise_peer && *seed != peer_addr {
            transport.join_seed(seed.clone());
        }
    }
    let tokens = std::sync::Arc::new(auth::Tokens::new(&config.tokens));
    let resp_server = resp.map(|(listener, addr)| {
        let state = resp_state(&config, &local, &handle, &tokens, addr);
        let limits = resp::codec::Limits::for_values(config.node.max_value_bytes);
        tokio::spawn(resp::serve(listener, state, limits, tls.clone()))
    });
    let state = app_state(&config, &local, &handle, &transport, &tokens, &tls);
    let limits = http::serve::HttpLimits {
        max_connections: config.http_max_connections,
        header_timeout: std::time::Duration::from_millis(config.http_header_timeout_ms),
        ..http::serve::HttpLimits::default()
    };
    http::serve::serve(http, http::router(state), limits, tls.clone(), shutdown).await;
    handle.stop();
    salvage.abort();
    peer_server.abort();
    if let Some(r) = resp_server {
        r.abort();
    }
    let _ = tokio::task::spawn_blocking(move || node_thread.join()).await;
    blocking("shutting down", move || local.shutdown()).await?;
    tracing::info!("node stopped cleanly");
    Ok(())
}
