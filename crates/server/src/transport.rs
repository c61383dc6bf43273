//! Internal RPC between nodes: TCP, length-prefixed frames (4-byte big-endian length, tokio-util
//! `LengthDelimitedCodec`) carrying postcard-encoded [`Frame`]s.
//!
//! Every node keeps one long-lived outbound connection per peer and sends all its messages to
//! that peer over it (several ready messages are written before one flush); the peer's answers
//! come back over the peer's own outbound connection. Requests and answers are matched by the
//! request ids inside the messages.
//!
//! Handshake (see [`crate::handshake`]): the dialer sends a hello frame - magic `dynamokv`,
//! protocol version (u16 BE), then the postcard-encoded [`Hello`] (a fresh nonce and its member
//! record); the acceptor checks magic and version and answers [`Frame::Challenge`] (its nonce,
//! record and proof of the cluster secret) or [`Frame::Refused`] with the reason; the dialer
//! checks the proof and sends [`Frame::Proof`]; the acceptor checks it and answers
//! [`Frame::Welcome`] or [`Frame::Refused`]. Until then frames are limited to
//! [`HANDSHAKE_MAX_FRAME`] bytes, the whole exchange to 5 s, and at most
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
//! The dialer also reads from its connection (the acceptor never writes after the handshake),
//! so a peer that dies is noticed at once from the closed socket, and a peer that falls silent
//! (a cut link: no reset ever arrives) within `PEER_USER_TIMEOUT` (TCP_USER_TIMEOUT, keepalive). Lost connections are retried
//! with exponential backoff (100 ms doubling to 500 ms); messages for a peer that is not connected
//! are dropped - the coordinator's timeouts and the node's view of who is up handle that.

use crate::handshake::{PROOF_LEN, PeerKey, Role, nonce};
use crate::log_window::LogWindow;
use crate::tls::{BoxedIo, Tls};
use axum::body::Bytes;
use dynamokv_core::membership::{Ended, Endings, Member, Status, View};
use dynamokv_core::message::Message;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// A peer connection, framed: over TCP, or over TLS when the node has [`Tls`] configured.
type PeerConn = Framed<BoxedIo, LengthDelimitedCodec>;

/// The version of the peer protocol. Peers with another version are refused at handshake, with
/// a reason naming both versions. Version 2 groups messages by family (kv, handoff, gossip) and
/// carries typed errors; version 4 adds the overwrite flag of a forwarded put; version 5 the
/// challenge-response handshake; version 6 endings (the `Ended` frame, epochs in member records,
/// endings in gossip); version 7 the `Collect` and `Handover` families (out of `Sync`).
pub const PROTOCOL_VERSION: u16 = 7;
/// Largest frame accepted before the handshake completed (a member record with the most tokens
/// fits).
pub const HANDSHAKE_MAX_FRAME: usize = 64 << 10;
/// Most inbound connections handshaking at once.
pub const MAX_HANDSHAKING: usize = 64;
const MAGIC: &[u8; 8] = b"dynamokv";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between reconnection attempts: a healed link is used again within it, and
/// an attempt costs one connect (refused, or timed out after 3 s, on a dead host).
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// The longest wait between attempts to reach a seed at first start.
const SEED_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What a dialer announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// A fresh nonce: the acceptor's proof must cover it.
    pub nonce: [u8; PROOF_LEN],
    /// The sender's member record.
    pub member: Member,
}

/// A frame after the hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The acceptor's answer to a hello: its nonce, its record and its proof.
    Challenge {
        /// A fresh nonce: the dialer's proof must cover it.
        nonce: [u8; PROOF_LEN],
        /// The acceptor's record.
        member: Member,
        /// The acceptor's proof ([`PeerKey::proof`]).
        proof: [u8; PROOF_LEN],
    },
    /// The dialer's proof.
    Proof([u8; PROOF_LEN]),
    /// The acceptor checked the dialer's proof: messages may follow.
    Welcome,
    /// The connection is refused, and why.
    Refused(String),
    /// A protocol message.
    Message(Message),
    /// "Your instance ended": sent, after both proofs were checked, to an instance that left,
    /// was removed or was found stale, instead of a welcome or in answer to a message; the
    /// connection then closes.
    Ended(Ended),
}

/// Encodes a hello frame: magic, version, postcard body.
pub fn encode_hello(hello: &Hello) -> Bytes {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out.extend(postcard::to_allocvec(hello).unwrap_or_default());
    Bytes::from(out)
}

/// Decodes a hello frame, checking magic and version first.
pub fn decode_hello(bytes: &[u8]) -> Result<Hello, String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| "not a dynamokv peer (bad magic)".to_owned())?;
    let (version, body) = rest
        .split_first_chunk::<2>()
        .ok_or_else(|| "truncated hello".to_owned())?;
    let version = u16::from_be_bytes(*version);
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "peer speaks protocol version {version}, this node speaks {PROTOCOL_VERSION}"
        ));
    }
    postcard::from_bytes(body).map_err(|e| format!("malformed hello: {e}"))
}

/// The message families, as metric labels.
const FAMILIES: [&str; 6] = ["kv", "handoff", "gossip", "sync", "collect", "handover"];

fn family_index(m: &Message) -> usize {
    match m {
        Message::Kv(_) => 0,
        Message::Handoff(_) => 1,
        Message::Gossip(_) => 2,
        Message::Sync(_) => 3,
        Message::Collect(_) => 4,
        Message::Handover(_) => 5,
    }
}

/// Encodes a frame after the hello.
pub fn encode_frame(frame: &Frame) -> Bytes {
    Bytes::from(postcard::to_allocvec(frame).unwrap_or_default())
}

/// Decodes a frame after the hello.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("malformed frame: {e}"))
}

struct PeerLink {
    addr: String,
    tx: mpsc::UnboundedSender<Message>,
    task: tokio::task::JoinHandle<()>,
}

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

/// The peer port's framing: a 4-byte big-endian length, then that many bytes, at most
/// `max_frame` (a longer length is refused before anything is read or reserved for it).
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

impl Transport {
    /// A transport announcing `me`, proving membership with `key`, delivering what peers send
    /// to `events`; over mutual TLS when `tls` is given.
    pub fn new(
        me: Member,
        key: PeerKey,
        events: EventSink,
        max_frame: usize,
        runtime: tokio::runtime::Handle,
        tls: Option<Tls>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                me,
                key,
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

    /// The ending of `member`'s instance, if the node knows it ended.
    fn ending_of(&self, id: &str, instance: u64) -> Option<Ended> {
        self.inner
            .endings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(id.to_owned(), instance))
            .cloned()
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

    /// Queues `message` for `to`; dropped when `to` is not connected.
    pub fn send(&self, to: &str, message: Message) {
        let delay = {
            let f = self.inner.faults.lock().unwrap_or_else(|p| p.into_inner());
            if f.drop_to.contains(to) {
                return;
            }
            f.delay_ms
        };
        let peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(link) = peers.get(to) {
            if delay == 0 {
                let _ = link.tx.send(message);
            } else {
                let tx = link.tx.clone();
                self.inner.runtime.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let _ = tx.send(message);
                });
            }
        }
    }

    /// Takes the endings of `view`, and makes sure there is one dialer per member (other than
    /// this node, and other than members that left) at its current address.
    pub fn sync_peers(&self, view: &View) {
        {
            let mut endings = self
                .inner
                .endings
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if *endings != view.ended {
                *endings = view.ended.clone();
                self.inner.endings_version.fetch_add(1, Ordering::Release);
            }
        }
        let me = self.inner.me.id.clone();
        let mut peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
        for (id, m) in &view.members {
            if *id == me {
                continue;
            }
            if m.status == Status::Left {
                // It serves nothing: no connection is kept to it.
                if let Some(old) = peers.remove(id) {
                    old.task.abort();
                }
                continue;
            }
            if peers.get(id).is_some_and(|l| l.addr == m.peer_addr) {
                continue;
            }
            if let Some(old) = peers.remove(id) {
                old.task.abort();
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let task = self.inner.runtime.spawn(dial_loop(
                self.clone(),
                id.clone(),
                m.peer_addr.clone(),
                rx,
            ));
            peers.insert(
                id.clone(),
                PeerLink {
                    addr: m.peer_addr.clone(),
                    tx,
                    task,
                },
            );
        }
    }

    /// Dials `addr` once (a seed), learning the members it knows; retries until it answers.
    pub fn join_seed(&self, addr: String) {
        let t = self.clone();
        self.inner.runtime.spawn(async move {
            let mut backoff = BACKOFF_MIN;
            loop {
                match t.handshake(&addr).await {
                    Ok((member, _)) => {
                        tracing::info!(seed = %addr, node = %member.id, "joined through seed");
                        let _ = (t.inner.events)(PeerEvent::Seed(member));
                        return;
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
    async fn handshake(&self, addr: &str) -> Result<(Member, PeerConn), DialError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect failed: {e}"))?;
        tune(&stream);
        let stream: BoxedIo = match &self.inner.tls {
            Some(tls) => tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect_peer(addr, stream))
                .await
                .map_err(|_| "TLS handshake timed out".to_owned())??,
            None => Box::new(stream),
        };
        let mut framed = Framed::new(stream, codec(HANDSHAKE_MAX_FRAME));
        let mine = self.inner.me.clone();
        let key = &self.inner.key;
        let theirs = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let my_nonce = nonce();
            let hello = Hello {
                nonce: my_nonce,
                member: mine.clone(),
            };
            send(&mut framed, encode_hello(&hello)).await?;
            let (their_nonce, theirs, proof) = match receive(&mut framed).await? {
                Frame::Challenge {
                    nonce,
                    member,
                    proof,
                } => (nonce, member, proof),
                Frame::Refused(why) => return Err(format!("refused: {why}").into()),
                _ => return Err("the peer answered out of turn".into()),
            };
            if !key.verify(&proof, Role::Acceptor, &my_nonce, &their_nonce, &mine, &theirs) {
                let why = "your proof does not match this node's cluster secret";
                let _ = send(&mut framed, encode_frame(&Frame::Refused(why.into()))).await;
                return Err(
                    "the peer could not prove it knows the cluster secret (a different --cluster-secret?)"
                        .into(),
                );
            }
            theirs.validate()?;
            let their_end = self.ending_of(&theirs.id, theirs.instance);
            let proof = key.proof(Role::Dialer, &my_nonce, &their_nonce, &mine, &theirs);
            send(&mut framed, encode_frame(&Frame::Proof(proof))).await?;
            match receive(&mut framed).await? {
                // An instance that ended is told so, once it has checked this node's proof.
                Frame::Welcome if their_end.is_some() => {
                    if let Some(e) = their_end {
                        let _ = send(&mut framed, encode_frame(&Frame::Ended(e))).await;
                    }
                    Err(format!(
                        "{} answers with an instance that ended ({:016x}); it was told so",
                        theirs.id, theirs.instance
                    )
                    .into())
                }
                Frame::Welcome => Ok(theirs),
                Frame::Ended(e) if e.id == mine.id && e.instance == mine.instance => {
                    Err(DialError::Ended(e))
                }
                Frame::Refused(why) => Err(format!("refused: {why}").into()),
                _ => Err("the peer answered out of turn".into()),
            }
        })
        .await
        .map_err(|_| DialError::from("handshake timed out".to_owned()))??;
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

    async fn inbound(self, stream: TcpStream, remote: String) {
        // Unauthenticated connections are few and small: over the cap, close at once.
        let Ok(permit) = self.inner.handshaking.clone().try_acquire_owned() else {
            if refused("busy") {
                tracing::warn!(%remote, limit = MAX_HANDSHAKING, "closing peer connection: too many handshakes in progress");
            }
            return;
        };
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let io: BoxedIo = match &self.inner.tls {
                Some(tls) => match tls.accept_peer(stream).await {
                    Ok(io) => io,
                    Err(why) => return Err((why, None)),
                },
                None => Box::new(stream),
            };
            let mut framed = Framed::new(io, codec(HANDSHAKE_MAX_FRAME));
            match self.accept(&mut framed).await {
                Ok(Ok(member)) => Ok((member, framed)),
                Ok(Err(ended)) => Err((String::new(), Some((framed, Some(ended))))),
                Err(why) => Err((why, Some((framed, None)))),
            }
        })
        .await;
        drop(permit);
        let (theirs, mut framed) = match accepted {
            Ok(Ok(accepted)) => accepted,
            Ok(Err((why, None))) => {
                if refused("tls") {
                    tracing::warn!(%remote, reason = %why, "refusing peer connection");
                }
                return;
            }
            Ok(Err((_, Some((mut framed, Some(ended)))))) => {
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
                return;
            }
            Ok(Err((why, Some((mut framed, None))))) => {
                let reason = if why.contains("proof") {
                    "proof"
                } else {
                    "protocol"
                };
                if refused(reason) {
                    tracing::warn!(%remote, reason = %why, "refusing peer connection");
                }
                let _ = framed.send(encode_frame(&Frame::Refused(why))).await;
                return;
            }
            Err(_) => {
                if refused("timeout") {
                    tracing::warn!(%remote, "closing peer connection: handshake not done within 5 s");
                }
                return;
            }
        };
        framed
            .codec_mut()
            .set_max_frame_length(self.inner.max_frame);
        let (from, instance) = (theirs.id.clone(), theirs.instance);
        let _ = (self.inner.events)(PeerEvent::Learn(theirs));
        let mut endings_seen = self.inner.endings_version.load(Ordering::Acquire);
        while let Some(next) = framed.next().await {
            let frame = match next {
                Ok(bytes) => decode_frame(&bytes),
                Err(e) => Err(format!("unreadable frame: {e}")),
            };
            // The node learned of an ending since the last message: is it this peer's?
            let endings = self.inner.endings_version.load(Ordering::Acquire);
            if endings != endings_seen {
                endings_seen = endings;
                if let Some(ended) = self.ending_of(&from, instance) {
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
            match frame {
                Ok(Frame::Ended(e)) => {
                    let me = &self.inner.me;
                    if e.id == me.id && e.instance == me.instance {
                        let _ = (self.inner.events)(PeerEvent::Ended(e));
                    }
                    return;
                }
                Ok(Frame::Message(_)) if self.drops_from(&from) => {}
                Ok(Frame::Message(message)) => {
                    if !(self.inner.events)(PeerEvent::Message {
                        from: from.clone(),
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

impl Transport {
    /// The acceptor's side of the handshake, up to the welcome: the dialer's record, or its
    /// instance's ending (once both proofs were checked), or why it is refused.
    async fn accept(&self, framed: &mut PeerConn) -> Result<Result<Member, Ended>, String> {
        let first = match framed.next().await {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => return Err(format!("bad frame in handshake: {e}")),
            None => return Err("closed during the handshake".to_owned()),
        };
        let hello = decode_hello(&first)?;
        hello.member.validate()?;
        let mine = &self.inner.me;
        let key = &self.inner.key;
        let my_nonce = nonce();
        let proof = key.proof(Role::Acceptor, &hello.nonce, &my_nonce, &hello.member, mine);
        let challenge = Frame::Challenge {
            nonce: my_nonce,
            member: mine.clone(),
            proof,
        };
        send(framed, encode_frame(&challenge)).await?;
        match receive(framed).await? {
            Frame::Proof(p)
                if key.verify(&p, Role::Dialer, &hello.nonce, &my_nonce, &hello.member, mine) =>
            {
                if let Some(ended) = self.ending_of(&hello.member.id, hello.member.instance) {
                    return Ok(Err(ended));
                }
                send(framed, encode_frame(&Frame::Welcome)).await?;
                Ok(Ok(hello.member))
            }
            Frame::Proof(_) => Err(
                "its proof does not match this node's cluster secret: give every node the same --cluster-secret"
                    .to_owned(),
            ),
            Frame::Refused(why) => Err(format!("the dialer gave up: {why}")),
            _ => Err("a frame out of turn in the handshake".to_owned()),
        }
    }
}

/// Counts an inbound handshake refused, by reason: `busy` (too many at once), `proof` (wrong
/// secret or replay), `protocol` (malformed, oversized, out of turn, another version),
/// `timeout`, `ended` (an instance that left, was removed or is stale). Returns whether to log it: at most 10 warnings per 10 s, then one line saying how
/// many more there were, so that a flood of connections cannot flood the log.
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

async fn send(framed: &mut PeerConn, frame: Bytes) -> Result<(), String> {
    framed
        .send(frame)
        .await
        .map_err(|e| format!("handshake send failed: {e}"))
}

async fn receive(framed: &mut PeerConn) -> Result<Frame, String> {
    match framed.next().await {
        Some(Ok(bytes)) => decode_frame(&bytes),
        Some(Err(e)) => Err(format!("handshake read failed: {e}")),
        None => Err("the peer closed the connection during the handshake".to_owned()),
    }
}

/// Why a dial did not give a connection.
#[derive(Debug)]
enum DialError {
    /// The peer said this node's instance ended.
    Ended(Ended),
    /// Anything else, and why.
    Failed(String),
}

impl From<String> for DialError {
    fn from(why: String) -> Self {
        DialError::Failed(why)
    }
}

impl From<&str> for DialError {
    fn from(why: &str) -> Self {
        DialError::Failed(why.to_owned())
    }
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Ended(e) => write!(f, "this node's instance ended: {}", e.how.as_str()),
            DialError::Failed(why) => f.write_str(why),
        }
    }
}

/// Keeps one outbound connection to `peer` at `addr` alive, writing what `rx` yields.
async fn dial_loop(
    t: Transport,
    peer: String,
    addr: String,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match t.handshake(&addr).await {
            Ok((member, mut framed)) if member.id == peer => {
                backoff = BACKOFF_MIN;
                // Whatever was queued while disconnected is stale.
                while rx.try_recv().is_ok() {}
                let _ = (t.inner.events)(PeerEvent::Learn(member));
                let _ = (t.inner.events)(PeerEvent::Up(peer.clone()));
                tracing::debug!(%peer, %addr, "connected");
                let (reason, ended) = pump(&mut framed, &mut rx).await;
                let me = &t.inner.me;
                let ended = ended.filter(|e| e.id == me.id && e.instance == me.instance);
                tracing::info!(%peer, %addr, %reason, "peer connection lost");
                let _ = (t.inner.events)(PeerEvent::Down(peer.clone()));
                if let Some(e) = ended {
                    // This node's instance ended, and this peer knows: nothing more to say to it.
                    let _ = (t.inner.events)(PeerEvent::Ended(e));
                    return;
                }
                if rx.is_closed() {
                    return;
                }
            }
            Ok((member, _)) => {
                tracing::warn!(%peer, %addr, found = %member.id, "a different node answers at this address");
            }
            Err(DialError::Ended(e)) => {
                tracing::debug!(%peer, %addr, "the peer says this node's instance ended");
                let _ = (t.inner.events)(PeerEvent::Ended(e));
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, %addr, error = %e, "cannot connect");
            }
        }
        let until = tokio::time::Instant::now() + backoff;
        // Drop what is queued while waiting; stop when the link is retired.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                m = rx.recv() => if m.is_none() { return },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Writes queued messages (batching what is ready) until the connection fails; returns why, and
/// the ending the peer told of, if it closed the connection with one. A message too large for a
/// frame is dropped alone, with a warning: the connection and the other messages on it go on
/// (the sender's request times out like any lost message).
async fn pump(
    framed: &mut PeerConn,
    rx: &mut mpsc::UnboundedReceiver<Message>,
) -> (String, Option<Ended>) {
    let max_frame = framed.codec().max_frame_length();
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(first) = m else { return ("link retired".into(), None) };
                let mut batch = vec![first];
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                // Bytes and messages per family, counted once per batch.
                let mut sent = [(0u64, 0u64); FAMILIES.len()];
                for m in batch {
                    let family = family_index(&m);
                    let frame = encode_frame(&Frame::Message(m));
                    if frame.len() > max_frame {
                        tracing::warn!(
                            bytes = frame.len(), max_frame,
                            "dropping a peer message larger than the frame limit"
                        );
                        continue;
                    }
                    sent[family].0 += 1;
                    sent[family].1 += frame.len() as u64;
                    if let Err(e) = framed.feed(frame).await {
                        return (format!("write failed: {e}"), None);
                    }
                }
                for (i, (messages, bytes)) in sent.into_iter().enumerate() {
                    if messages > 0 {
                        let family = FAMILIES[i];
                        metrics::counter!("dynamokv_peer_sent_messages_total", "family" => family)
                            .increment(messages);
                        metrics::counter!("dynamokv_peer_sent_bytes_total", "family" => family)
                            .increment(bytes);
                    }
                }
                if let Err(e) = futures_util::SinkExt::<Bytes>::flush(framed).await {
                    return (format!("write failed: {e}"), None);
                }
            }
            r = framed.next() => {
                return match r {
                    None => ("closed by peer".into(), None),
                    Some(Err(e)) => (format!("read failed: {e}"), None),
                    Some(Ok(bytes)) => match decode_frame(&bytes) {
                        Ok(Frame::Ended(e)) => ("the peer says this node's instance ended".into(), Some(e)),
                        _ => ("peer wrote on a send-only connection".into(), None),
                    },
                };
            }
        }
    }
}
