//! Internal RPC between nodes: TCP, length-prefixed frames (4-byte big-endian length, tokio-util
//! `LengthDelimitedCodec`) carrying postcard-encoded [`Frame`]s.
//!
//! Every node keeps one long-lived outbound connection per peer and sends all its messages to
//! that peer over it (several ready messages are written before one flush); the peer's answers
//! come back over the peer's own outbound connection. Requests and answers are matched by the
//! request ids inside the messages.
//!
//! Handshake: the dialer sends a hello frame - magic `dynamokv`, protocol version (u16 BE), then
//! the postcard-encoded [`Hello`] (cluster fingerprint and member record); the acceptor checks
//! magic, version and fingerprint and answers [`Frame::HelloAck`] or [`Frame::Refused`] with the
//! reason. A connection that sends a malformed or oversized frame, or anything but a hello
//! first, is closed with a logged reason; the node keeps running.
//!
//! The dialer also reads from its connection (the acceptor never writes after the handshake),
//! so a peer that dies is noticed at once from the closed socket. Lost connections are retried
//! with exponential backoff (100 ms doubling to 2 s); messages for a peer that is not connected
//! are dropped - the coordinator's timeouts and the node's view of who is up handle that.

use axum::body::Bytes;
use dynamokv_core::membership::Member;
use dynamokv_core::message::Message;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// The version of the peer protocol. Peers with another version are refused at handshake, with
/// a reason naming both versions. Version 2 groups messages by family (kv, handoff, gossip) and
/// carries typed errors; version 4 adds the overwrite flag of a forwarded put.
pub const PROTOCOL_VERSION: u16 = 4;
const MAGIC: &[u8; 8] = b"dynamokv";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What a dialer announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Fingerprint of the cluster secret: nodes with different secrets refuse each other.
    pub cluster: [u8; 16],
    /// The sender's member record.
    pub member: Member,
}

/// A frame after the hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The acceptor took the connection; its own record.
    HelloAck(Hello),
    /// The acceptor refused the connection, and why.
    Refused(String),
    /// A protocol message.
    Message(Message),
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
const FAMILIES: [&str; 4] = ["kv", "handoff", "gossip", "sync"];

fn family_index(m: &Message) -> usize {
    match m {
        Message::Kv(_) => 0,
        Message::Handoff(_) => 1,
        Message::Gossip(_) => 2,
        Message::Sync(_) => 3,
    }
}

fn encode_frame(frame: &Frame) -> Bytes {
    Bytes::from(postcard::to_allocvec(frame).unwrap_or_default())
}

fn decode_frame(bytes: &[u8]) -> Result<Frame, String> {
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
        /// The message.
        message: Message,
    },
}

/// Where the transport delivers its events; returns false once nobody listens any more.
pub type EventSink = Box<dyn Fn(PeerEvent) -> bool + Send + Sync>;

struct Inner {
    hello: Mutex<Hello>,
    events: EventSink,
    peers: Mutex<BTreeMap<String, PeerLink>>,
    max_frame: usize,
    runtime: tokio::runtime::Handle,
    faults: Mutex<FaultRules>,
}

/// The node's connections to its peers.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

impl Transport {
    /// A transport announcing `hello`, delivering what peers send to `events`.
    pub fn new(
        hello: Hello,
        events: EventSink,
        max_frame: usize,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                hello: Mutex::new(hello),
                events,
                peers: Mutex::new(BTreeMap::new()),
                max_frame,
                runtime,
                faults: Mutex::new(FaultRules::default()),
            }),
        }
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

    fn hello(&self) -> Hello {
        self.inner
            .hello
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    /// Makes sure there is one dialer per member (other than this node) at its current
    /// address.
    pub fn sync_peers(&self, members: &BTreeMap<String, Member>) {
        let me = self.hello().member.id;
        let mut peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
        for (id, m) in members {
            if *id == me {
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
                        backoff = (backoff * 2).min(BACKOFF_MAX * 5);
                    }
                }
            }
        });
    }

    /// Connects and handshakes with `addr`, returning the peer's record and the connection.
    async fn handshake(
        &self,
        addr: &str,
    ) -> Result<(Member, Framed<TcpStream, LengthDelimitedCodec>), String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect failed: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, codec(self.inner.max_frame));
        let hello = self.hello();
        let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            framed
                .send(encode_hello(&hello))
                .await
                .map_err(|e| format!("handshake send failed: {e}"))?;
            match framed.next().await {
                Some(Ok(bytes)) => decode_frame(&bytes),
                Some(Err(e)) => Err(format!("handshake read failed: {e}")),
                None => Err("peer closed the connection during the handshake".to_owned()),
            }
        })
        .await
        .map_err(|_| "handshake timed out".to_owned())??;
        match answer {
            Frame::HelloAck(theirs) => {
                if theirs.cluster != hello.cluster {
                    return Err("peer has a different cluster secret".into());
                }
                theirs.member.validate()?;
                Ok((theirs.member, framed))
            }
            Frame::Refused(why) => Err(format!("refused: {why}")),
            Frame::Message(_) => Err("peer sent a message before accepting".into()),
        }
    }

    /// Accepts peer connections on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
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
        let mut framed = Framed::new(stream, codec(self.inner.max_frame));
        let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next()).await {
            Ok(Some(Ok(bytes))) => bytes,
            Ok(Some(Err(e))) => {
                tracing::warn!(%remote, error = %e, "closing peer connection: bad frame in handshake");
                return;
            }
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(%remote, "closing peer connection: no hello within 5 s");
                return;
            }
        };
        let mine = self.hello();
        let theirs = match decode_hello(&first).and_then(|h| {
            if h.cluster != mine.cluster {
                Err(
                    "different cluster secret: give every node the same --cluster-secret"
                        .to_owned(),
                )
            } else {
                h.member.validate().map(|()| h)
            }
        }) {
            Ok(h) => h,
            Err(why) => {
                tracing::warn!(%remote, reason = %why, "refusing peer connection");
                let _ = framed.send(encode_frame(&Frame::Refused(why))).await;
                return;
            }
        };
        let from = theirs.member.id.clone();
        if framed
            .send(encode_frame(&Frame::HelloAck(mine)))
            .await
            .is_err()
        {
            return;
        }
        let _ = (self.inner.events)(PeerEvent::Learn(theirs.member));
        while let Some(next) = framed.next().await {
            let frame = match next {
                Ok(bytes) => decode_frame(&bytes),
                Err(e) => Err(format!("unreadable frame: {e}")),
            };
            match frame {
                Ok(Frame::Message(_)) if self.drops_from(&from) => {}
                Ok(Frame::Message(message)) => {
                    if !(self.inner.events)(PeerEvent::Message {
                        from: from.clone(),
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
                let reason = pump(&mut framed, &mut rx).await;
                tracing::info!(%peer, %addr, %reason, "peer connection lost");
                let _ = (t.inner.events)(PeerEvent::Down(peer.clone()));
                if rx.is_closed() {
                    return;
                }
            }
            Ok((member, _)) => {
                tracing::warn!(%peer, %addr, found = %member.id, "a different node answers at this address");
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

/// Writes queued messages (batching what is ready) until the connection fails; returns why.
/// A message too large for a frame is dropped alone, with a warning: the connection and the
/// other messages on it go on (the sender's request times out like any lost message).
async fn pump(
    framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
    rx: &mut mpsc::UnboundedReceiver<Message>,
) -> String {
    let max_frame = framed.codec().max_frame_length();
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(first) = m else { return "link retired".into() };
                let mut batch = vec![first];
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                // Bytes and messages per family (kv, handoff, gossip, sync), counted once per batch.
                let mut sent = [(0u64, 0u64); 4];
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
                        return format!("write failed: {e}");
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
                    return format!("write failed: {e}");
                }
            }
            r = framed.next() => {
                return match r {
                    None => "closed by peer".into(),
                    Some(Err(e)) => format!("read failed: {e}"),
                    Some(Ok(_)) => "peer wrote on a send-only connection".into(),
                };
            }
        }
    }
}
