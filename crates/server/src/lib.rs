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
pub mod tls;
pub mod transport;

pub use config::{Config, ConfigError, SyncMode};
pub use node::{LocalState, NodeError};

use dynamokv_core::membership::Member;
use dynamokv_core::node::Node;
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

/// Runs a node until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let tls = match &config.tls {
        None => None,
        Some(files) => Some(tls::Tls::load(files).map_err(ConfigError::Invalid)?),
    };
    let cfg = config.clone();
    let local = blocking("opening the data directory", move || LocalState::open(&cfg)).await?;
    if let Some(why) = local.identity.fresh_actor {
        tracing::info!(actor = %local.identity.actor, reason = why, "new actor id");
    }

    let http_listener = listen(config.http)
        .map_err(io_err(format!("cannot listen for HTTP on {}", config.http)))?;
    let http_addr = http_listener
        .local_addr()
        .map_err(io_err("reading the HTTP address"))?;
    let peer_listener = listen(config.listen).map_err(io_err(format!(
        "cannot listen for peers on {}",
        config.listen
    )))?;
    let peer_addr = peer_listener
        .local_addr()
        .map_err(io_err("reading the peer address"))?;
    let resp_listener = match config.resp {
        None => None,
        Some(addr) => {
            Some(listen(addr).map_err(io_err(format!("cannot listen for RESP on {addr}")))?)
        }
    };
    let resp_addr = match &resp_listener {
        None => None,
        Some(l) => Some(l.local_addr().map_err(io_err("reading the RESP address"))?),
    };
    let advertise_peer = config
        .advertise_peer
        .clone()
        .unwrap_or_else(|| peer_addr.to_string());
    let advertise_http = config
        .advertise_http
        .clone()
        .unwrap_or_else(|| http_addr.to_string());
    if peer_addr.ip().is_unspecified() && config.advertise_peer.is_none() {
        tracing::warn!(
            "listening for peers on an unspecified address; set --advertise-peer so other nodes can reach this one"
        );
    }

    let engine = local.engine.clone();
    let (mut history, known) = blocking("reading the membership history", move || {
        history::History::load(engine.as_ref()).map_err(NodeError::from)
    })
    .await?;
    if known.members.len() > 1 {
        tracing::info!(members = known.members.len(), "membership history replayed");
    }
    let engine = local.engine.clone();
    let instance = blocking("reading the instance number", move || {
        identity::Identity::instance(engine.as_ref()).map_err(NodeError::from)
    })
    .await?;
    // This data directory's instance may have ended: it left, was removed, or was found to be
    // an older copy. It never serves again (its data could bring deleted values back).
    let previous = known.own(&local.node_id);
    let ended = known.ending(&local.node_id, instance).cloned().or_else(|| {
        previous
            .filter(|p| p.status == dynamokv_core::membership::Status::Left)
            .map(|p| dynamokv_core::membership::Ended {
                id: p.id.clone(),
                instance,
                how: dynamokv_core::membership::Ending::Left,
                by: p.id.clone(),
            })
    });
    if let Some(e) = ended {
        return Err(ServerError::Ended {
            dir: config.data_dir.display().to_string(),
            why: e.explain(),
        });
    }
    // A node keeps the status it had; a new node joining through seeds starts as `joining`
    // (it owns nothing until it holds the data of its ranges); the first node of a cluster is up.
    use dynamokv_core::membership::Status;
    let status = match previous {
        Some(previous) => previous.status,
        None if config.seeds.is_empty() => Status::Up,
        None => Status::Joining,
    };
    // A node keeps its place: the tokens it had (a joining node placed its own).
    let tokens = previous.map_or_else(
        || dynamokv_core::ring::hashed_tokens(&local.node_id, config.vnodes),
        |p| p.tokens.clone(),
    );
    if status != Status::Up {
        tracing::info!(status = status.as_str(), "starting");
    }
    let me = Member {
        instance,
        id: local.node_id.clone(),
        generation: node::now_ms(),
        version: 1,
        status,
        peer_addr: advertise_peer.clone(),
        http_addr: advertise_http.clone(),
        tokens,
        epoch: 0,
    };
    let node_config = config.node;
    let mut core = Node::new(
        me,
        local.identity.actor,
        node_config,
        local.store.clone(),
        local.identity.actor.0 ^ node::now_ms(),
        &known.members,
        &known.ended,
    );
    if local.identity.fresh_actor.is_none() {
        // The same actor as the last run: continue above the counters it issued.
        let engine = local.engine.clone();
        let floor = blocking("reading the version counter floor", move || {
            identity::Identity::counter_floor(engine.as_ref()).map_err(NodeError::from)
        })
        .await?;
        core.raise_counter_floor(floor);
    }
    if local.identity.fresh_actor == Some(identity::NEW_DATA_DIRECTORY) {
        // If the cluster knew this node, its data is lost: rebuild it before counting reads.
        core.started_empty();
    }
    // The record with this start's epoch is durable before any peer hears of it: a copy of
    // this directory taken before now is then told apart from it.
    let (engine, record) = (local.engine.clone(), core.me().clone());
    history = blocking("persisting this start's epoch", move || {
        history.append(engine.as_ref(), &record)?;
        engine.flush()?;
        Ok::<_, NodeError>(history)
    })
    .await?;
    // The generation the core settled on (above any persisted one) is what peers must see.
    let me = core.me().clone();
    let (events_tx, events_rx) = std::sync::mpsc::channel();
    let handle = runtime::NodeHandle::new(events_tx);
    let transport = transport::Transport::new(
        me.clone(),
        handshake::PeerKey::new(&local.codec),
        handle.transport_sink(),
        config.max_frame_bytes,
        tokio::runtime::Handle::current(),
        tls.clone(),
    );
    let node_thread = {
        let transport = transport.clone();
        std::thread::Builder::new()
            .name("dynamokv-node".into())
            .spawn({
                let engine = local.engine.clone();
                move || runtime::run_node(core, events_rx, transport, engine, history)
            })
            .map_err(io_err("starting the node thread"))?
    };
    let peer_server = tokio::spawn(transport.clone().serve(peer_listener));
    for seed in &config.seeds {
        if *seed != advertise_peer && *seed != peer_addr.to_string() {
            transport.join_seed(seed.clone());
        }
    }

    {
        let mut out = std::io::stdout().lock();
        let resp = resp_addr.map(|a| format!(" resp={a}")).unwrap_or_default();
        let tls_note = if tls.is_some() { " tls=on" } else { "" };
        let _ = writeln!(
            out,
            "listening http={http_addr} peer={peer_addr} node={}{resp}{tls_note}",
            local.node_id
        );
        let _ = out.flush();
    }
    tracing::info!(
        node = %local.node_id, http = %http_addr, peer = %peer_addr,
        data_dir = %config.data_dir.display(), actor = %local.identity.actor,
        seeds = ?config.seeds, "node started"
    );
    let tokens = std::sync::Arc::new(auth::Tokens::new(&config.tokens));
    if tokens.enabled() {
        tracing::info!(
            tokens = config.tokens.len(),
            "client tokens configured: HTTP and RESP requests need one"
        );
    }
    let state = http::AppState {
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
    };
    let resp_server = resp_listener.zip(resp_addr).map(|(listener, addr)| {
        let state = std::sync::Arc::new(resp::commands::RespState {
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
        });
        let limits = resp::codec::Limits::for_values(config.node.max_value_bytes);
        tokio::spawn(resp::serve(listener, state, limits, tls.clone()))
    });
    if config.enable_fault_injection {
        tracing::warn!(
            "fault injection is enabled: /admin/faults can drop and delay peer messages"
        );
    }
    http::serve::serve(
        http_listener,
        http::router(state),
        http::serve::HttpLimits {
            max_connections: config.http_max_connections,
            header_timeout: std::time::Duration::from_millis(config.http_header_timeout_ms),
            ..http::serve::HttpLimits::default()
        },
        tls.clone(),
        shutdown,
    )
    .await;
    handle.stop();
    peer_server.abort();
    if let Some(r) = resp_server {
        r.abort();
    }
    let _ = tokio::task::spawn_blocking(move || node_thread.join()).await;
    blocking("shutting down", move || local.shutdown()).await?;
    tracing::info!("node stopped cleanly");
    Ok(())
}
