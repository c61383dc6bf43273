//! Internal RPC between nodes: TCP, length-prefixed frames (4-byte big-endian length, tokio-util
//! `LengthDelimitedCodec`) carrying postcard-encoded [`Frame`]s. In three parts: [`wire`] (the
//! frames), [`crate::handshake`] (the peers' proofs and the exchange that checks them) and
//! [`links`] (one outbound connection per peer, its bounded queue, and its pump); this module
//! connects, accepts, and carries what arrives to the node thread as [`PeerEvent`]s.
//!
//! Every node keeps one long-lived outbound connection per peer and sends all its messages to
//! that peer over it (several ready messages are written before one flush); the peer's answers
//! come back over the peer's own outbound connection. Requests and answers are matched by the
//! request ids inside the messages.
//!
//! Handshake (see [`crate::handshake`]): the dialer sends a hello frame - magic `dynamokv`,
//! protocol version (u16 BE), then the postcard-encoded [`wire::Hello`] (a fresh nonce and its member
//! record); the acceptor checks magic and version and answers [`Frame::Challenge`] (its nonce,
//! record and proof of the cluster secret) or [`Frame::Refused`] with the reason; the dialer
//! checks the proof and sends [`Frame::Proof`]; the acceptor checks it and answers
//! [`Frame::Welcome`] or [`Frame::Refused`]. Until then frames are limited to
//! [`wire::HANDSHAKE_MAX_FRAME`] bytes, the whole exchange to 5 s, and at most
//! [`MAX_HANDSHAKING`] inbound connections handshake at once (more are closed at once). A
//! connection that sends a malformed or oversized frame, anything out of turn, or a wrong proof
//! is closed with a logged reason; the node keeps running.
//!
//! With TLS configured ([`crate::tls`]), all of this runs inside a mutual TLS session: both
//! sides first present certificates of the cluster CA.
//!
//! Endings: an instance that left, was removed or was found stale (see
//! `dynamokv_core::membership`) is told so with [`Frame::Ended`], once both proofs were checked,
//! instead of a welcome; a connection it already had is answered the same way at its next
//! message, and closed. A dialer does not connect to an instance it knows ended. The node thread
//! publishes the endings it knows ([`Transport::sync_peers`]); it also checks every message's
//! sender itself, so nothing of an ended instance is taken even before the transport heard.
//!
//! Queues: messages for a peer wait in a queue of at most [`links::QUEUE`] messages; when it is
//! full (the peer is slow, paused, or its connection stalls), a new message for it is dropped
//! and counted (`dynamokv_peer_messages_dropped_total{reason="queue_full"}`), like a message
//! for a peer that is not connected: the coordinator's timeouts cover both. Memory never grows
//! without bound on a slow peer.
//!
//! The dialer also reads from its connection (the acceptor never writes after the handshake),
//! so a peer that dies is noticed at once from the closed socket, and a peer that falls silent
//! (a cut link: no reset ever arrives) within `PEER_USER_TIMEOUT` (TCP_USER_TIMEOUT, keepalive). Lost connections are retried
//! with exponential backoff (100 ms doubling to 500 ms); messages for a peer that is not connected
//! are dropped - the coordinator's timeouts and the node's view of who is up handle that.

pub mod links;
pub mod wire;

use crate::handshake::{self, HandshakeError, PeerKey};
use crate::identity::ClusterId;
use crate::log_window::LogWindow;
use crate::tls::{BoxedIo, Tls};
use dynamokv_core::membership::{Ended, Endings, Member};
use dynamokv_core::message::Message;
use futures_util::{SinkExt as _, StreamExt as _};
use links::{PeerLink, RECONNECT_MIN};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
pub use wire::{
    FAMILIES, Frame, HANDSHAKE_MAX_FRAME, Hello, PROTOCOL_VERSION, PeerConn, WireError, codec,
    decode_frame, decode_hello, encode_frame, encode_hello,
};

/// Most inbound connections handshaking at once.
pub const MAX_HANDSHAKING: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest wait between attempts to reach a seed at first start.
const SEED_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Fault rules for testing: messages to or from the named peers are dropped, and every
/// outgoing message may be delayed. Only in force on a node started with
/// `--enable-fault-injection`; set through `POST /admin/faults`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRules {
    /// Drop every message this node sends to these node ids.
    #[serde(default)]
    pub drop_to: std::collections::BTreeSet<String>,
    /// Drop every message this node receives from these node ids.
    #[serde(default)]
    pub drop_from: std::collections::BTreeSet<String>,
    /// Delay every outgoing message by this many milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// Make every object read and write of this node wait this many milliseconds (a slow
    /// disk: the node thread waits, as it would on the disk).
    #[serde(default)]
    pub storage_delay_ms: u64,
}

/// What the transport tells the node.
#[derive(Debug)]
pub enum PeerEvent {
    /// A member record learned from a handshake.
    Learn(Member),
    /// A seed answered: its record, and it is a seed.
    Seed(Member),
    /// The transport connected to this peer.
    Up(String),
    /// The transport lost this peer.
    Down(String),
    /// A message from a peer.
    Message {
        /// Sender's node id.
        from: String,
        /// The sender's data directory instance, as its handshake presented it.
        instance: u64,
        /// The message.
        message: Message,
    },
    /// A peer said an instance ended (this node's own: it left, was removed or is stale).
    Ended(Ended),
}

/// Where the transport delivers its events; returns false once nobody listens any more.
pub type EventSink = Box<dyn Fn(PeerEvent) -> bool + Send + Sync>;

struct Inner {
    me: Member,
    key: PeerKey,
    cluster: Arc<ClusterId>,
    /// Why a seed last refused this node for being of another cluster, if one did.
    seed_refused: Mutex<Option<String>>,
    handshaking: Arc<tokio::sync::Semaphore>,
    events: EventSink,
    peers: Mutex<BTreeMap<String, PeerLink>>,
    max_frame: usize,
    runtime: tokio::runtime::Handle,
    faults: Mutex<FaultRules>,
    tls: Option<Tls>,
    /// The endings the node knows, as it last published them.
    endings: RwLock<Endings>,
    /// Raised at every change of `endings`, so a connection re-checks its peer only then.
    endings_version: AtomicU64,
}

/// The node's connections to its peers.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

/// How long data sent to a peer may stay unacknowledged before the connection is given up
/// (`TCP_USER_TIMEOUT`). Without it a cut link leaves the connection half-open for the kernel's
/// ~15 minutes of retransmissions: messages queue up behind it, and after the heal the backed-off
/// retransmissions stall it for seconds more. With it the dialer sees the loss, drops what it
/// cannot send (as for any down peer) and reconnects once the peer is reachable.
const PEER_USER_TIMEOUT: Duration = Duration::from_secs(3);

/// Peer sockets: no Nagle delay; a cut link noticed within [`PEER_USER_TIMEOUT`] while data is
/// in flight, and by keepalive probes (after 2 s idle, every 1 s, 3 of them) when none is.
fn tune(stream: &TcpStream) {
    let s = socket2::SockRef::from(stream);
    let _ = s.set_tcp_nodelay(true);
    let _ = s.set_tcp_user_timeout(Some(PEER_USER_TIMEOUT));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(2))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    let _ = s.set_tcp_keepalive(&keepalive);
}

/// Why a dial did not give a welcomed connection.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The TCP connection could not be made.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The TLS session could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The handshake did not finish within 5 s.
    #[error("handshake timed out")]
    Timeout,
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

impl DialError {
    /// Whether the peer is of another cluster (this node found it, or the peer said so).
    pub fn other_cluster(&self) -> bool {
        match self {
            DialError::Handshake(HandshakeError::OtherCluster { .. }) => true,
            DialError::Handshake(HandshakeError::Refused(why)) => {
                why.contains(handshake::OTHER_CLUSTER)
            }
            _ => false,
        }
    }
}

impl Transport {
    /// A transport announcing `me` of cluster `cluster`, proving membership with `key`,
    /// delivering what peers send to `events`; over mutual TLS when `tls` is given.
    pub fn new(
        me: Member,
        key: PeerKey,
        cluster: Arc<ClusterId>,
        events: EventSink,
        max_frame: usize,
        runtime: tokio::runtime::Handle,
        tls: Option<Tls>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                me,
                key,
                cluster,
                seed_refused: Mutex::new(None),
                handshaking: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKING)),
                events,
                peers: Mutex::new(BTreeMap::new()),
                max_frame,
                runtime,
                faults: Mutex::new(FaultRules::default()),
                tls,
                endings: RwLock::new(Endings::new()),
                endings_version: AtomicU64::new(0),
            }),
        }
    }

    /// The id of the cluster this node belongs to (0: none yet).
    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster.get()
    }

    /// Why a seed refused this node for being of another cluster (the last time one did).
    pub fn seed_refused(&self) -> Option<String> {
        self.inner
            .seed_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The ending of `member`'s instance, if the node knows it ended.
    fn ending_of(&self, member: &Member) -> Option<Ended> {
        self.inner
            .endings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(member.id.clone(), member.instance))
            .cloned()
    }

    /// Whether `e` is about this node's own instance.
    fn is_mine(&self, e: &Ended) -> bool {
        e.id == self.inner.me.id && e.instance == self.inner.me.instance
    }

    /// Tells the node thread.
    fn tell(&self, event: PeerEvent) -> bool {
        (self.inner.events)(event)
    }

    /// Replaces the fault rules (the caller checks that fault injection is enabled).
    pub fn set_faults(&self, rules: FaultRules) {
        *self.inner.faults.lock().unwrap_or_else(|p| p.into_inner()) = rules;
    }

    /// The fault rules in force.
    pub fn faults(&self) -> FaultRules {
        self.inner
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn drops_from(&self, from: &str) -> bool {
        self.inner
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drop_from
            .contains(from)
    }

    /// Dials `addr` once (a seed), learning the members it knows; retries until it answers.
    pub fn join_seed(&self, addr: String) {
        let t = self.clone();
        self.inner.runtime.spawn(async move {
            let mut backoff = RECONNECT_MIN;
            loop {
                match t.connect(&addr).await {
                    Ok((member, _)) => {
                        tracing::info!(seed = %addr, node = %member.id, "joined through seed");
                        t.tell(PeerEvent::Seed(member));
                        return;
                    }
                    Err(e) if e.other_cluster() => {
                        tracing::error!(seed = %addr, error = %e, "the seed belongs to another cluster; this node will not join it");
                        *t.inner.seed_refused.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(format!("seed {addr}: {e}"));
                        tokio::time::sleep(SEED_BACKOFF_MAX).await;
                    }
                    Err(e) => {
                        tracing::warn!(seed = %addr, error = %e, "seed not reachable yet; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(SEED_BACKOFF_MAX);
                    }
                }
            }
        });
    }

    /// Connects and handshakes with `addr`, returning the peer's record and the connection.
    async fn connect(&self, addr: &str) -> Result<(Member, PeerConn), DialError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| DialError::Connect("timed out".into()))?
            .map_err(|e| DialError::Connect(e.to_string()))?;
        tune(&stream);
        let stream: BoxedIo = match &self.inner.tls {
            Some(tls) => tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect_peer(addr, stream))
                .await
                .map_err(|_| DialError::Tls("timed out".into()))?
                .map_err(|e| DialError::Tls(e.to_string()))?,
            None => Box::new(stream),
        };
        let mut framed = Framed::new(stream, codec(HANDSHAKE_MAX_FRAME));
        let inner = &self.inner;
        let dial = handshake::dial(&mut framed, &inner.key, &inner.me, &inner.cluster, |m| {
            self.ending_of(m)
        });
        let theirs = tokio::time::timeout(HANDSHAKE_TIMEOUT, dial)
            .await
            .map_err(|_| DialError::Timeout)??;
        framed
            .codec_mut()
            .set_max_frame_length(self.inner.max_frame);
        Ok((theirs, framed))
    }

    /// Accepts peer connections on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    tune(&stream);
                    tokio::spawn(self.clone().inbound(stream, remote.to_string()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// An inbound connection: its handshake, then the messages it carries to the node thread.
    async fn inbound(self, stream: TcpStream, remote: String) {
        if let Some((theirs, framed)) = self.welcome(stream, &remote).await {
            self.receive(theirs, framed, &remote).await;
        }
    }

    /// The acceptor's side of an inbound connection, bounded in time and in number: the
    /// dialer's record and the connection once welcomed; a refusal is counted, logged (at
    /// most 10 lines per 10 s) and told to the dialer.
    async fn welcome(&self, stream: TcpStream, remote: &str) -> Option<(Member, PeerConn)> {
        // Unauthenticated connections are few and small: over the cap, close at once.
        let Ok(permit) = self.inner.handshaking.clone().try_acquire_owned() else {
            if refused("busy") {
                tracing::warn!(%remote, limit = MAX_HANDSHAKING, "closing peer connection: too many handshakes in progress");
            }
            return None;
        };
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let io: BoxedIo = match &self.inner.tls {
                Some(tls) => match tls.accept_peer(stream).await {
                    Ok(io) => io,
                    Err(why) => return Err(Refusal::Tls(why.to_string())),
                },
                None => Box::new(stream),
            };
            let mut framed = Framed::new(io, codec(HANDSHAKE_MAX_FRAME));
            let inner = &self.inner;
            let accepted =
                handshake::accept(&mut framed, &inner.key, &inner.me, &inner.cluster, |m| {
                    self.ending_of(m)
                });
            match accepted.await {
                Ok(member) => Ok((member, framed)),
                Err(e) => Err(Refusal::Handshake(e, Box::new(framed))),
            }
        })
        .await;
        drop(permit);
        let refusal = match accepted {
            Ok(Ok(mut welcomed)) => {
                welcomed
                    .1
                    .codec_mut()
                    .set_max_frame_length(self.inner.max_frame);
                return Some(welcomed);
            }
            Ok(Err(refusal)) => refusal,
            Err(_) => Refusal::Timeout,
        };
        refusal.tell(remote).await;
        None
    }

    /// The messages of a welcomed inbound connection, until it closes; a peer whose instance
    /// ended meanwhile is told so and closed.
    async fn receive(&self, theirs: Member, mut framed: PeerConn, remote: &str) {
        let (from, instance) = (theirs.id.clone(), theirs.instance);
        let probe = theirs.clone();
        self.tell(PeerEvent::Learn(theirs));
        let mut endings_seen = self.inner.endings_version.load(Ordering::Acquire);
        while let Some(next) = framed.next().await {
            // The node learned of an ending since the last message: is it this peer's?
            let endings = self.inner.endings_version.load(Ordering::Acquire);
            if endings != endings_seen {
                endings_seen = endings;
                if let Some(ended) = self.ending_of(&probe) {
                    if refused("ended") {
                        tracing::info!(
                            %remote, peer = %from, how = ended.how.as_str(),
                            "closing the connection of a peer whose instance ended; it was told so"
                        );
                    }
                    let _ = framed.send(encode_frame(&Frame::Ended(ended))).await;
                    return;
                }
            }
            let frame = match next {
                Ok(bytes) => decode_frame(&bytes),
                Err(e) => {
                    tracing::warn!(%remote, peer = %from, reason = %e, "closing peer connection: unreadable frame");
                    return;
                }
            };
            match frame {
                Ok(Frame::Ended(e)) => {
                    if self.is_mine(&e) {
                        self.tell(PeerEvent::Ended(e));
                    }
                    return;
                }
                Ok(Frame::Message(_)) if self.drops_from(&from) => {}
                Ok(Frame::Message(message)) => {
                    let from = from.clone();
                    if !self.tell(PeerEvent::Message {
                        from,
                        instance,
                        message,
                    }) {
                        return;
                    }
                }
                Ok(_) => {
                    tracing::warn!(%remote, peer = %from, "closing peer connection: unexpected frame after handshake");
                    return;
                }
                Err(why) => {
                    tracing::warn!(%remote, peer = %from, reason = %why, "closing peer connection");
                    return;
                }
            }
        }
    }
}

/// Why an inbound handshake was refused.
enum Refusal {
    /// The TLS session failed (plaintext on a TLS port, a certificate not of the cluster CA).
    Tls(String),
    /// The handshake failed, on this connection.
    Handshake(HandshakeError, Box<PeerConn>),
    /// It did not finish within 5 s.
    Timeout,
}

impl Refusal {
    /// Counts and logs the refusal, and tells the dialer (an instance that ended, that it
    /// ended; one refused, why).
    async fn tell(self, remote: &str) {
        match self {
            Refusal::Tls(why) => {
                if refused("tls") {
                    tracing::warn!(%remote, reason = %why, "refusing peer connection");
                }
            }
            Refusal::Timeout => {
                if refused("timeout") {
                    tracing::warn!(%remote, "closing peer connection: handshake not done within 5 s");
                }
            }
            Refusal::Handshake(HandshakeError::PeerEnded(ended), mut framed) => {
                // A node that left is expected to knock until it is stopped; a removed or
                // stale one is news.
                if refused("ended") {
                    let instance = format!("{:016x}", ended.instance);
                    let how = ended.how.as_str();
                    if ended.how == dynamokv_core::membership::Ending::Left {
                        tracing::info!(%remote, peer = %ended.id, %instance, "refusing a peer that left the cluster; it was told so");
                    } else {
                        tracing::warn!(%remote, peer = %ended.id, %instance, how, "refusing a peer whose instance ended ({how}); it was told so");
                    }
                }
                let _ = framed.send(encode_frame(&Frame::Ended(ended))).await;
            }
            Refusal::Handshake(e, mut framed) => {
                if refused(e.reason()) {
                    if let HandshakeError::OtherCluster { .. } = e {
                        tracing::error!(%remote, reason = %e, "refusing a node of another cluster");
                    } else {
                        tracing::warn!(%remote, reason = %e, "refusing peer connection");
                    }
                }
                let _ = framed
                    .send(encode_frame(&Frame::Refused(e.to_string())))
                    .await;
            }
        }
    }
}

/// Counts an inbound handshake refused, by reason: `busy` (too many at once), `proof` (wrong
/// secret or replay), `protocol` (malformed, oversized, out of turn, another version),
/// `timeout`, `tls`, `ended` (an instance that left, was removed or is stale), `cluster` (a
/// node of another cluster). Returns whether
/// to log it: at most 10 warnings per 10 s, then one line saying how many more there were, so
/// that a flood of connections cannot flood the log.
fn refused(reason: &'static str) -> bool {
    metrics::counter!("dynamokv_peer_handshakes_refused_total", "reason" => reason).increment(1);
    let (log, earlier) = REFUSALS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admit(std::time::Instant::now());
    if earlier > 0 {
        tracing::warn!(
            suppressed = earlier,
            "{earlier} more peer connections were refused in the last 10 s (not logged one by one; see dynamokv_peer_handshakes_refused_total)"
        );
    }
    log
}

/// The window of refused-handshake warnings.
static REFUSALS: Mutex<LogWindow> = Mutex::new(LogWindow::new());
