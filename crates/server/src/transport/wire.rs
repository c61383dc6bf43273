//! The peer protocol's wire format: 4-byte big-endian length-prefixed frames (tokio-util
//! `LengthDelimitedCodec`), the first one a hello (magic, protocol version, postcard [`Hello`]),
//! the others postcard [`Frame`]s.

use crate::tls::BoxedIo;
use axum::body::Bytes;
use dynamokv_core::membership::{Ended, Member};
use dynamokv_core::message::Message;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// A peer connection, framed: over TCP, or over TLS when the node has TLS configured.
pub type PeerConn = Framed<BoxedIo, LengthDelimitedCodec>;

/// The version of the peer protocol. Peers with another version are refused at handshake, with
/// a reason naming both versions. Version 2 groups messages by family (kv, handoff, gossip) and
/// carries typed errors; version 4 adds the overwrite flag of a forwarded put; version 5 the
/// challenge-response handshake; version 6 endings (the `Ended` frame, epochs in member records,
/// endings in gossip); version 7 the `Collect` and `Handover` families (out of `Sync`); version 8
/// cluster ids in the hello and the challenge; version 9 the `List` family; version 10 each
/// sibling's deadline and kind, and the `Increment` request.
pub const PROTOCOL_VERSION: u16 = 10;
/// Largest frame accepted before the handshake completed (a member record with the most tokens
/// fits).
pub const HANDSHAKE_MAX_FRAME: usize = 64 << 10;
const MAGIC: &[u8; 8] = b"dynamokv";
/// Length of a handshake nonce and of a proof.
pub const PROOF_LEN: usize = 32;

/// Why bytes from a peer are not a frame of this protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The hello does not start with the magic.
    #[error("not a dynamokv peer (bad magic)")]
    BadMagic,
    /// The hello ends before its version.
    #[error("truncated hello")]
    Truncated,
    /// The peer speaks another version.
    #[error("peer speaks protocol version {theirs}, this node speaks {PROTOCOL_VERSION}")]
    Version {
        /// Its version.
        theirs: u16,
    },
    /// The body does not decode.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// A hello or a frame.
        what: &'static str,
        /// What the decoder said.
        why: String,
    },
}

/// What a dialer announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// A fresh nonce: the acceptor's proof must cover it.
    pub nonce: [u8; PROOF_LEN],
    /// The sender's member record.
    pub member: Member,
    /// The sender's cluster id (0: it belongs to no cluster yet).
    pub cluster: u64,
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
        /// The acceptor's cluster id (0: none yet).
        cluster: u64,
        /// The acceptor's proof ([`crate::handshake::PeerKey::proof`]).
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
pub fn decode_hello(bytes: &[u8]) -> Result<Hello, WireError> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(WireError::BadMagic)?;
    let (version, body) = rest.split_first_chunk::<2>().ok_or(WireError::Truncated)?;
    let version = u16::from_be_bytes(*version);
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version { theirs: version });
    }
    postcard::from_bytes(body).map_err(|e| WireError::Malformed {
        what: "hello",
        why: e.to_string(),
    })
}

/// Encodes a frame after the hello.
pub fn encode_frame(frame: &Frame) -> Bytes {
    Bytes::from(postcard::to_allocvec(frame).unwrap_or_default())
}

/// Decodes a frame after the hello.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, WireError> {
    postcard::from_bytes(bytes).map_err(|e| WireError::Malformed {
        what: "frame",
        why: e.to_string(),
    })
}

/// The peer port's framing: a 4-byte big-endian length, then that many bytes, at most
/// `max_frame` (a longer length is refused before anything is read or reserved for it).
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

/// The message families, as metric labels.
pub const FAMILIES: [&str; 7] = [
    "kv", "handoff", "gossip", "sync", "collect", "handover", "list",
];

/// The family of `m`, as an index into [`FAMILIES`].
pub fn family_index(m: &Message) -> usize {
    match m {
        Message::Kv(_) => 0,
        Message::Handoff(_) => 1,
        Message::Gossip(_) => 2,
        Message::Sync(_) => 3,
        Message::Collect(_) => 4,
        Message::Handover(_) => 5,
        Message::List(_) => 6,
    }
}
