//! One outbound connection per peer: the dial loop that keeps it up (reconnecting with backoff),
//! the bounded queue of messages waiting for it, and the pump that writes them (several ready
//! messages before one flush). The dialer also reads from its connection, which the acceptor
//! never writes to after the handshake - but for an `Ended` frame - so a peer that dies is
//! noticed at once from the closed socket.

use super::wire::{FAMILIES, Frame, PeerConn, decode_frame, encode_frame, family_index};
use super::{DialError, PeerEvent, Transport};
use crate::handshake::HandshakeError;
use axum::body::Bytes;
use dynamokv_core::membership::{Ended, Status, View};
use dynamokv_core::message::Message;
use futures_util::{SinkExt, StreamExt as _};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Most messages waiting for one peer. When the queue is full (a slow, paused or stalled peer)
/// a new message for it is dropped and counted, as one for a peer that is not connected is:
/// the coordinator's timeouts cover both.
pub const QUEUE: usize = 8192;
/// The first wait before reconnecting.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// The longest wait between reconnection attempts: a healed link is used again within it, and
/// an attempt costs one connect (refused, or timed out after 3 s, on a dead host).
const RECONNECT_MAX: Duration = Duration::from_millis(500);
/// Messages written before one flush, at most.
const BATCH: usize = 256;

/// The link to one peer: where it dials, its queue, and its task.
pub(super) struct PeerLink {
    addr: String,
    tx: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
}

/// Queues `message` on `tx`; a full queue drops it (counted).
fn enqueue(tx: &mpsc::Sender<Message>, message: Message) {
    if let Err(TrySendError::Full(m)) = tx.try_send(message) {
        let family = FAMILIES[family_index(&m)];
        metrics::counter!("dynamokv_peer_messages_dropped_total", "reason" => "queue_full", "family" => family)
            .increment(1);
    }
}

impl Transport {
    /// Queues `message` for `to`; dropped when `to` is not connected, or its queue is full.
    pub fn send(&self, to: &str, message: Message) {
        let delay = {
            let f = self.inner.faults.lock().unwrap_or_else(|p| p.into_inner());
            if f.drop_to.contains(to) {
                return;
            }
            f.delay_ms
        };
        let peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(link) = peers.get(to) else {
            return;
        };
        if delay == 0 {
            enqueue(&link.tx, message);
        } else {
            let tx = link.tx.clone();
            self.inner.runtime.spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                enqueue(&tx, message);
            });
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
            let (tx, rx) = mpsc::channel(QUEUE);
            let task = self.inner.runtime.spawn(self.clone().dial_loop(
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

    /// Keeps one outbound connection to `peer` at `addr` alive, writing what `rx` yields.
    async fn dial_loop(self, peer: String, addr: String, mut rx: mpsc::Receiver<Message>) {
        let mut backoff = RECONNECT_MIN;
        loop {
            match self.connect(&addr).await {
                Ok((member, mut framed)) if member.id == peer => {
                    backoff = RECONNECT_MIN;
                    // Whatever was queued while disconnected is stale.
                    while rx.try_recv().is_ok() {}
                    self.tell(PeerEvent::Learn(member));
                    self.tell(PeerEvent::Up(peer.clone()));
                    tracing::debug!(%peer, %addr, "connected");
                    let (reason, ended) = pump(&mut framed, &mut rx).await;
                    tracing::info!(%peer, %addr, %reason, "peer connection lost");
                    self.tell(PeerEvent::Down(peer.clone()));
                    if let Some(e) = ended.filter(|e| self.is_mine(e)) {
                        // This node's instance ended, and this peer knows: nothing more to say.
                        self.tell(PeerEvent::Ended(e));
                        return;
                    }
                    if rx.is_closed() {
                        return;
                    }
                }
                Ok((member, _)) => {
                    tracing::warn!(%peer, %addr, found = %member.id, "a different node answers at this address");
                }
                Err(DialError::Handshake(HandshakeError::Ended(e))) => {
                    tracing::debug!(%peer, %addr, "the peer says this node's instance ended");
                    self.tell(PeerEvent::Ended(e));
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
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }
}

/// Writes queued messages (batching what is ready) until the connection fails; returns why, and
/// the ending the peer told of, if it closed the connection with one. A message too large for a
/// frame is dropped alone, with a warning: the connection and the other messages on it go on
/// (the sender's request times out like any lost message).
async fn pump(framed: &mut PeerConn, rx: &mut mpsc::Receiver<Message>) -> (String, Option<Ended>) {
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(first) = m else { return ("link retired".into(), None) };
                if let Err(e) = write_batch(framed, rx, first).await {
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

/// Writes `first` and what else is ready (up to [`BATCH`]), then flushes; counts messages and
/// bytes per family once per batch.
async fn write_batch(
    framed: &mut PeerConn,
    rx: &mut mpsc::Receiver<Message>,
    first: Message,
) -> std::io::Result<()> {
    let max_frame = framed.codec().max_frame_length();
    let mut batch = vec![first];
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
    let mut sent = [(0u64, 0u64); FAMILIES.len()];
    for m in batch {
        let family = family_index(&m);
        let frame = encode_frame(&Frame::Message(m));
        if frame.len() > max_frame {
            tracing::warn!(
                bytes = frame.len(),
                max_frame,
                "dropping a peer message larger than the frame limit"
            );
            continue;
        }
        sent[family].0 += 1;
        sent[family].1 += frame.len() as u64;
        framed.feed(frame).await?;
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
    SinkExt::<Bytes>::flush(framed).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamokv_core::message::{GossipMessage, Message};

    fn gossip() -> Message {
        GossipMessage::Syn {
            digest: Vec::new(),
            endings: 0,
        }
        .into()
    }

    #[test]
    fn a_full_queue_drops_what_comes_next_and_keeps_what_it_holds() {
        let (tx, mut rx) = mpsc::channel(2);
        for _ in 0..5 {
            enqueue(&tx, gossip());
        }
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_ok());
        assert!(
            rx.try_recv().is_err(),
            "the three over the bound were dropped"
        );
        enqueue(&tx, gossip());
        assert!(rx.try_recv().is_ok(), "room again once drained");
    }
}
