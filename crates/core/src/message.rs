//! What nodes and clients say to a node: client requests and answers, and the peer messages of
//! the coordination protocol. All of it is serde data; the server encodes peer messages with
//! postcard in length-prefixed frames.
//!
//! Over 700 lines on purpose: every message family is here, so the whole wire vocabulary (what
//! a peer can send, and what a protocol version bump changes) reads in one file.

use crate::membership::{Delta, DigestEntry};
use crate::merkle::{Digest, Hash, Range};
use crate::version::{Dot, Object, VersionVector};
use serde::{Deserialize, Serialize};

/// Identifies an in-flight peer request at the node that sent it.
pub type RequestId = u64;

/// Identifies a client request at the node that received it (chosen by the server shell).
pub type ClientId = u64;

/// A client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Read a key, answering after `r` replicas replied (default: the cluster's R).
    Get {
        /// The key.
        key: Vec<u8>,
        /// Read quorum override.
        r: Option<u8>,
        /// How many of the R replies must come from primaries (Riak's PR; default 0).
        pr: Option<u8>,
    },
    /// Write a value (`None`: delete), answering after `w` replicas acknowledged.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value, or `None` for a tombstone.
        value: Option<Vec<u8>>,
        /// The client's context; `None` for a blind write (or a delete of what the coordinator
        /// holds).
        context: Option<VersionVector>,
        /// Write quorum override.
        w: Option<u8>,
        /// How many of the W acknowledgements must come from primaries (Riak's PW; default 0).
        pw: Option<u8>,
        /// Write over every version the coordinator holds, as if the client had sent the
        /// coordinator's own context joined with `context` (RESP `SET`). Versions the
        /// coordinator has not seen (a concurrent write through another node) still become
        /// siblings, so nothing acknowledged is dropped silently.
        overwrite: bool,
        /// The value's time to live, ms: its deadline is the coordinator's clock plus this.
        expires_in_ms: Option<u64>,
        /// Write only if this holds, as a read at R by the coordinator finds the key (then with
        /// that read's context, in place of `context`); otherwise
        /// [`OpError::PreconditionFailed`]. Not linearizable: two conditional writers whose
        /// reads both pass both write, and become siblings.
        condition: Option<Condition>,
    },
    /// Add `by` (negative: subtract) to the counter at `key`, answering after `w` replicas
    /// acknowledged ([`crate::counter`]). Refused when the key holds a value that is not a
    /// counter, or when the counter would leave the 64-bit range.
    Increment {
        /// The key.
        key: Vec<u8>,
        /// How much to add.
        by: i64,
        /// Write quorum override.
        w: Option<u8>,
        /// How many of the W acknowledgements must come from primaries.
        pw: Option<u8>,
    },
    /// List the keys holding a live value, in key order: up to `limit` keys starting with
    /// `prefix`, after `after`. Coordinated by the node that receives it, over a coverage plan
    /// (one replica per range); never forwarded.
    List {
        /// Only keys starting with these bytes.
        prefix: Vec<u8>,
        /// Only keys after this one (exclusive): the `next` of the previous page.
        after: Option<Vec<u8>>,
        /// Most keys in the page.
        limit: u32,
        /// Also each key's object, as its covering replica holds it (backup).
        objects: bool,
    },
    /// Merge `object` into the key's replicas through the one merge, answering after W
    /// acknowledged (restore): idempotent, and never over a newer write (a newer version
    /// stays, a concurrent one becomes a sibling).
    Restore {
        /// The key.
        key: Vec<u8>,
        /// The object to merge in.
        object: Object,
        /// Write quorum override.
        w: Option<u8>,
    },
}

/// What a conditional write requires of the key, as a read at R finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// No live value (HTTP `If-None-Match: *`, RESP `SET ... NX`).
    Absent,
    /// A live value (`If-Match: *`, `SET ... XX`).
    Present,
    /// The version the context names: the read's context is exactly it (`If-Match: <context>`).
    Version(VersionVector),
}

impl Condition {
    /// Why `found` (the key as a read at R found it) fails the condition at wall-clock time
    /// `now` (expired values count as absent), if it does.
    pub fn fails(&self, found: &Object, now: u64) -> Option<&'static str> {
        let live = found.live_at(now).next().is_some();
        match self {
            Condition::Absent if live => Some("the key has a value (If-None-Match: *, NX)"),
            Condition::Present if !live => Some("the key has no value (If-Match: *, XX)"),
            Condition::Version(v) if *v != found.context() => {
                Some("the key was written since that context was read (If-Match)")
            }
            _ => None,
        }
    }
}

impl ClientRequest {
    /// The key the request is about (a listing's prefix).
    pub fn key(&self) -> &[u8] {
        match self {
            ClientRequest::Get { key, .. }
            | ClientRequest::Put { key, .. }
            | ClientRequest::Increment { key, .. }
            | ClientRequest::Restore { key, .. } => key,
            ClientRequest::List { prefix, .. } => prefix,
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The merge of what R replicas returned (empty when none had the key).
    Read(Object),
    /// The new object as the coordinator stamped it, and the dot of the new version.
    Written {
        /// The coordinator's new object.
        object: Object,
        /// The dot the coordinator gave this write.
        dot: Dot,
    },
    /// A page of a listing: keys in key order, and where the next page starts (`None`: the
    /// listing is complete).
    Keys {
        /// The keys.
        keys: Vec<Vec<u8>>,
        /// Each key's object, when asked for (else empty).
        objects: Vec<Object>,
        /// Pass as `after` for the next page.
        next: Option<Vec<u8>>,
    },
}

/// Which kind of quorum failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuorumKind {
    /// R for a get.
    Read,
    /// W for a put or delete.
    Write,
}

/// The lowest value a quorum parameter takes: 0 for `pr` and `pw` (no primaries required), 1
/// for `r` and `w`.
fn lowest_quorum(name: &str) -> u8 {
    u8::from(!name.starts_with('p'))
}

/// Why a client request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    /// `r` or `w` is 0 or larger than N, or `pr` or `pw` larger than N.
    #[error(
        "{name}={value} is not allowed: use {} to {n} (N={n})",
        lowest_quorum(name)
    )]
    InvalidQuorum {
        /// `r` or `w`.
        name: String,
        /// The value asked for.
        value: u8,
        /// The replication factor.
        n: u8,
    },
    /// Fewer replicas answered than the quorum needs.
    #[error("{}", describe_unavailable(*kind, *needed, *answered, asked, failed, *written, *sent, *primary_needed, *primary_answered))]
    Unavailable {
        /// Read or write.
        kind: QuorumKind,
        /// Replies needed (R or W).
        needed: u8,
        /// Replicas that answered successfully.
        answered: u8,
        /// Replicas asked (or, when nothing was sent, reachable).
        asked: Vec<String>,
        /// Replicas that failed or were unreachable.
        failed: Vec<String>,
        /// True when the write was stored on at least one replica.
        written: bool,
        /// False when the coordinator gave up before asking anyone, because too few replicas
        /// were reachable; `answered` then counts the reachable ones.
        sent: bool,
        /// Answers needed from primaries (PR or PW; 0 when not asked for).
        primary_needed: u8,
        /// Primaries that answered (or, when nothing was sent, are reachable).
        primary_answered: u8,
    },
    /// The node that should coordinate could not be reached.
    #[error("the coordinator {node} for this key did not answer ({reason}); retry")]
    CoordinatorUnreachable {
        /// The coordinator.
        node: String,
        /// What happened.
        reason: String,
    },
    /// The node has no ring to place the key on.
    #[error("this node does not know any ring yet; retry in a moment")]
    NoRing,
    /// A bad request (e.g. key length) that a peer forwarded.
    #[error("{0}")]
    BadRequest(String),
    /// The write would make the key's object (every sibling together) larger than the limit.
    #[error(
        "a write to key {key:?} would make its object {bytes} bytes (every sibling together; the limit is {limit}): read the key and write back with its context to reconcile its siblings, or write a smaller value"
    )]
    ObjectTooLarge {
        /// The key, as text (lossy, shortened).
        key: String,
        /// The object's size with this write.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The write would add a sibling to a key that has as many as allowed.
    #[error(
        "key {key:?} has {siblings} concurrent versions (siblings), the most allowed: read it and write back with its context to reconcile them"
    )]
    TooManySiblings {
        /// The key, as text (lossy, shortened).
        key: String,
        /// Siblings it has.
        siblings: u64,
    },
    /// This node's instance left the cluster, was removed, or runs on a stale copy of its data
    /// directory: it serves nothing (the text says what happened and what to do).
    #[error("{0}")]
    NotAMember(String),
    /// Local storage failed.
    #[error("storage failure on {node}: {message}")]
    Storage {
        /// Where.
        node: String,
        /// What.
        message: String,
    },
    /// A listing could not hear from a replica of every range (down, silent, or its storage
    /// failed); retry.
    #[error("the listing is incomplete: {reason}; retry")]
    ListingIncomplete {
        /// What was missing.
        reason: String,
    },
    /// A conditional write's condition did not hold; nothing was written. `context` covers what
    /// the read found (a client can read or write with it).
    #[error("precondition failed: {reason}")]
    PreconditionFailed {
        /// Why.
        reason: String,
        /// The context of what the read found.
        context: VersionVector,
    },
    /// A counter operation on a key holding another kind of value, or a plain write or read of
    /// a value on a counter key.
    #[error("{0}")]
    WrongType(String),
    /// The counter would leave the range of a signed 64-bit integer; nothing changed.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// The coordinator's disk is short of space: it refuses writes until space returns (reads
    /// go on); another node can take the write.
    #[error("{node} refuses writes: {message}; send the write to another node")]
    InsufficientStorage {
        /// Where.
        node: String,
        /// What.
        message: String,
    },
}

// One argument per field of `OpError::Unavailable`, which the error attribute passes along.
#[allow(clippy::too_many_arguments)]
fn describe_unavailable(
    kind: QuorumKind,
    needed: u8,
    answered: u8,
    asked: &[String],
    failed: &[String],
    written: bool,
    sent: bool,
    primary_needed: u8,
    primary_answered: u8,
) -> String {
    let (what, letter) = match kind {
        QuorumKind::Read => ("read", "R"),
        QuorumKind::Write => ("write", "W"),
    };
    let mut s = if sent {
        format!(
            "{what} quorum not reached: {letter}={needed} needed, {answered} of {} replicas answered",
            asked.len()
        )
    } else {
        format!(
            "{what} quorum not reached: {letter}={needed} needed, only {answered} of {} replicas are reachable",
            asked.len()
        )
    };
    if !failed.is_empty() {
        let label = if sent {
            "no answer from"
        } else {
            "unreachable"
        };
        s.push_str(&format!(" ({label}: {})", failed.join(", ")));
    }
    if primary_needed > 0 {
        let p = if kind == QuorumKind::Read { "PR" } else { "PW" };
        let verb = if sent { "answered" } else { "are reachable" };
        s.push_str(&format!(
            "; {p}={primary_needed} needed, {primary_answered} primaries {verb}"
        ));
    }
    if kind == QuorumKind::Write {
        if written {
            s.push_str("; the write may still exist on the replicas that answered and may appear in later reads");
        } else {
            s.push_str("; nothing was written");
        }
    }
    s.push_str("; retry later or with a smaller quorum");
    s
}

/// The answer to a client request.
pub type ClientResponse = Result<Reply, OpError>;

/// Why a peer could not do what a message asked. Travels on the wire, so the sender can tell
/// whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    /// The message itself is wrong (a bad key, an invalid object): retrying it cannot help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The receiver's storage failed: the same message may succeed later.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The receiver lost its data and is rebuilding it by anti-entropy: its copy does not
    /// count yet.
    #[error("the replica is rebuilding its data")]
    Rebuilding,
    /// The receiver's disk is short of space: it refuses writes (it serves reads) until space
    /// returns; coordinators send its writes to other nodes as hints meanwhile.
    #[error("the replica's disk is full: {0}")]
    Full(String),
}

impl WireError {
    /// Whether sending the same message again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            WireError::Storage(_) | WireError::Rebuilding | WireError::Full(_)
        )
    }
}

/// A message between nodes, grouped by the concept that handles it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Client operations: forwarding, replication, reads, read repair.
    Kv(KvMessage),
    /// Hinted handoff: a fallback hands a replica back to its owner.
    Handoff(HandoffMessage),
    /// Membership gossip.
    Gossip(GossipMessage),
    /// Anti-entropy: replicas of a range compare Merkle trees and exchange what differs.
    Sync(SyncMessage),
    /// Tombstone collection: the first replica of a range reaps what every replica holds.
    Collect(CollectMessage),
    /// Moved data: a key of a range no longer replicated here goes to its current owners.
    Handover(HandoverMessage),
    /// Listing: a coordinator asks the replicas of a coverage plan for their keys.
    List(ListMessage),
}

/// The `List` family: a listing's coordinator asks each node of its coverage plan for its keys
/// in the ranges assigned to it; each answers with a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListMessage {
    /// Coordinator: "your keys starting with `prefix`, after `after`, in these ranges".
    Ask {
        /// The listing's id at the coordinator.
        id: u64,
        /// Only keys starting with these bytes.
        prefix: Vec<u8>,
        /// Only keys after this one.
        after: Option<Vec<u8>>,
        /// Most keys wanted.
        limit: u32,
        /// Ranges `(start exclusive, end inclusive)` of ring positions assigned to this node.
        ranges: Vec<(u64, u64)>,
        /// Also each key's object.
        objects: bool,
    },
    /// Replica: its part, or why it has none.
    Answer {
        /// The listing's id.
        id: u64,
        /// The part, or the storage error.
        result: Result<ListPart, String>,
    },
}

/// One node's part of a listing page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPart {
    /// Its keys, in key order.
    pub keys: Vec<Vec<u8>>,
    /// Each key's object, when asked for (else empty).
    pub objects: Vec<Object>,
    /// It looked at every key up to this one (inclusive) and no further (`None`: to the end).
    pub upto: Option<Vec<u8>>,
}

impl From<ListMessage> for Message {
    fn from(m: ListMessage) -> Self {
        Message::List(m)
    }
}

impl Message {
    /// Whether the receiver answers this message at once, from its own state (a replica's
    /// write or read, a hint, a gossip or anti-entropy step): a peer that leaves one unanswered
    /// and sends nothing else is not processing (see `failure_detector`). A forwarded request is
    /// not one: its answer waits for the coordinator's quorum.
    pub fn expects_prompt_answer(&self) -> bool {
        match self {
            Message::Kv(m) => matches!(m, KvMessage::Replicate { .. } | KvMessage::Read { .. }),
            Message::Handoff(m) => matches!(m, HandoffMessage::Deliver { .. }),
            Message::Gossip(m) => matches!(m, GossipMessage::Syn { .. }),
            Message::Sync(m) => matches!(
                m,
                SyncMessage::Root { .. } | SyncMessage::Leaves { .. } | SyncMessage::Push { .. }
            ),
            Message::Handover(m) => matches!(m, HandoverMessage::Offer { .. }),
            Message::List(m) => matches!(m, ListMessage::Ask { .. }),
            Message::Collect(_) => false,
        }
    }
}

/// The messages of tombstone collection (see `node::collector`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CollectMessage {
    /// The first replica of a range, once every replica was proven to hold the same
    /// tombstones: "remove these keys if your copy is still this version".
    Reap {
        /// The range.
        range: Range,
        /// Keys and the digests of the tombstone-only versions to remove.
        keys: Vec<(Vec<u8>, Digest)>,
    },
}

/// The messages of moved-data handover (see `node::handover`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandoverMessage {
    /// "Here is a key of a range I no longer replicate: merge it" (after a join or a leave);
    /// the sender deletes its copy once every current owner acknowledged.
    Offer {
        /// Id at the sender.
        id: u64,
        /// The key.
        key: Vec<u8>,
        /// The sender's copy.
        object: Object,
    },
    /// The answer to an [`HandoverMessage::Offer`]: merged (`true`), or refused because the
    /// receiver does not replicate the key.
    Ack {
        /// The sender's id.
        id: u64,
        /// Whether the receiver merged it.
        ok: bool,
    },
}

impl From<CollectMessage> for Message {
    fn from(m: CollectMessage) -> Self {
        Message::Collect(m)
    }
}

impl From<HandoverMessage> for Message {
    fn from(m: HandoverMessage) -> Self {
        Message::Handover(m)
    }
}

impl From<SyncMessage> for Message {
    fn from(m: SyncMessage) -> Self {
        Message::Sync(m)
    }
}

impl From<KvMessage> for Message {
    fn from(m: KvMessage) -> Self {
        Message::Kv(m)
    }
}

impl From<HandoffMessage> for Message {
    fn from(m: HandoffMessage) -> Self {
        Message::Handoff(m)
    }
}

impl From<GossipMessage> for Message {
    fn from(m: GossipMessage) -> Self {
        Message::Gossip(m)
    }
}

/// The messages of client operations (Dynamo sections 4.5 and 4.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvMessage {
    /// "Coordinate this client request for me" (request routing, Dynamo's "Solution 1").
    Forward {
        /// Request id at the sender.
        id: RequestId,
        /// The request.
        request: ClientRequest,
        /// How many times it was forwarded already.
        hops: u8,
    },
    /// The answer to a [`KvMessage::Forward`].
    ForwardReply {
        /// The sender's request id.
        id: RequestId,
        /// The coordinator's answer.
        response: ClientResponse,
    },
    /// "Merge this object into your copy of the key" (a coordinator's write); with `hint`,
    /// "keep it for that down node" (sloppy quorum).
    Replicate {
        /// Request id at the sender.
        id: RequestId,
        /// The key.
        key: Vec<u8>,
        /// The new object.
        object: Object,
        /// The primary this replica stands in for, when the receiver is a fallback.
        hint: Option<String>,
    },
    /// The answer to a [`KvMessage::Replicate`]: stored, or why not.
    ReplicateAck {
        /// The coordinator's request id.
        id: RequestId,
        /// `Ok` when stored.
        result: Result<(), WireError>,
    },
    /// "Send me your copy of the key" (a coordinator's read).
    Read {
        /// Request id at the coordinator.
        id: RequestId,
        /// The key.
        key: Vec<u8>,
    },
    /// The answer to a [`KvMessage::Read`].
    ReadReply {
        /// The coordinator's request id.
        id: RequestId,
        /// The replica's copy (`None`: it has none), or why it could not read.
        result: Result<Option<Object>, WireError>,
    },
    /// "Merge this object" without an answer (read repair).
    Repair {
        /// The key.
        key: Vec<u8>,
        /// The merged object.
        object: Object,
    },
}

/// The messages of hinted handoff (Dynamo section 4.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandoffMessage {
    /// "Here is a replica of yours I kept while you were down: merge it."
    Deliver {
        /// Request id at the fallback.
        id: RequestId,
        /// The key.
        key: Vec<u8>,
        /// The replica.
        object: Object,
    },
    /// The answer to a [`HandoffMessage::Deliver`]; on `Ok` the fallback deletes its hint.
    Ack {
        /// The fallback's request id.
        id: RequestId,
        /// `Ok` when merged.
        result: Result<(), WireError>,
    },
}

/// The messages of membership gossip: a three-way digest exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMessage {
    /// Step 1: "here is what I know" (a digest: a few bytes per member).
    Syn {
        /// The sender's digest.
        digest: Vec<DigestEntry>,
        /// The fingerprint of the sender's endings.
        endings: u64,
    },
    /// Step 2: "here is what I know, and what you lack".
    SynAck {
        /// The sender's digest.
        digest: Vec<DigestEntry>,
        /// The fingerprint of the sender's endings.
        endings: u64,
        /// Records and heartbeats the receiver lacks.
        delta: Delta,
    },
    /// Step 3: "and here is what you lack".
    Ack {
        /// Records and heartbeats the receiver lacks.
        delta: Delta,
    },
    /// "I knew you before this start, under an older generation": a node that started with an
    /// empty data directory learns that it lost data the cluster expects it to hold.
    Restarted {
        /// The generation the sender knew.
        previous_generation: u64,
        /// The tokens the node had then (a node that lost its data takes its place back).
        tokens: Vec<u64>,
    },
}

/// The messages of anti-entropy (Dynamo section 4.7): the initiator of a session walks down
/// the Merkle trees of one range with another replica of it, then exchanges the objects of the
/// keys that differ. The responder keeps no state between messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// Initiator, step 1: "my root for this range".
    Root {
        /// Session id at the initiator.
        session: u64,
        /// The range compared.
        range: Range,
        /// The initiator's root hash.
        root: Hash,
        /// Whether the initiator keeps hints (tombstones wait while any node does).
        hints: bool,
    },
    /// Responder, step 2: equal, or its branch hashes, or why it cannot compare.
    RootReply {
        /// The initiator's session id.
        session: u64,
        /// The comparison.
        answer: RootAnswer,
        /// Whether the responder keeps hints.
        hints: bool,
    },
    /// Initiator, step 3: its leaf hashes under the branches that differ.
    Leaves {
        /// Session id at the initiator.
        session: u64,
        /// The range compared.
        range: Range,
        /// (branch index, that branch's leaf hashes).
        branches: Vec<(u16, Vec<Hash>)>,
    },
    /// Responder, step 4: the leaves that differ and its keys in them, with their digests.
    Keys {
        /// The initiator's session id.
        session: u64,
        /// The leaves that differ.
        leaves: Vec<u16>,
        /// The responder's keys in those leaves and the digests of their versions.
        entries: Vec<(Vec<u8>, Digest)>,
        /// False when the list was cut short to bound the message (a later session finishes).
        complete: bool,
    },
    /// Initiator, step 5 (repeated): objects the responder lacks or holds in another version,
    /// and keys the initiator lacks.
    Push {
        /// Session id at the initiator.
        session: u64,
        /// The range compared.
        range: Range,
        /// The initiator's objects, which the responder merges.
        objects: Vec<(Vec<u8>, Object)>,
        /// Keys whose objects the initiator wants.
        want: Vec<Vec<u8>>,
    },
    /// Responder, step 6: merged objects that differ from what was pushed, and the wanted
    /// ones; `last` ends the answer to one push.
    Pull {
        /// The initiator's session id.
        session: u64,
        /// Objects for the initiator to merge.
        objects: Vec<(Vec<u8>, Object)>,
        /// Whether this is the last part of the answer.
        last: bool,
    },
    /// Responder: the session cannot go on.
    Refused {
        /// The initiator's session id.
        session: u64,
        /// Why.
        reason: SyncRefusal,
    },
}

/// Why a responder refused an anti-entropy session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRefusal {
    /// The responder does not replicate that range (the two ring views differ, for a moment
    /// while membership changes).
    NotReplicated,
    /// The sender is not a replica of that range in the responder's view (likewise).
    NotAPeer,
    /// The responder's tree of that range is still being built.
    TreeBuilding,
    /// The responder's storage failed.
    Storage(String),
}

impl SyncRefusal {
    /// Whether the refusal only says "not yet": the two nodes' views of the ring differ for a
    /// moment, or a tree is being built. The pair is compared again next round; it is not a
    /// failure.
    pub fn not_yet(&self) -> bool {
        !matches!(self, SyncRefusal::Storage(_))
    }
}

impl std::fmt::Display for SyncRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncRefusal::NotReplicated => f.write_str("this node does not replicate that range"),
            SyncRefusal::NotAPeer => f.write_str("the sender is not a replica of that range"),
            SyncRefusal::TreeBuilding => f.write_str("the tree is being built"),
            SyncRefusal::Storage(e) => write!(f, "storage failure: {e}"),
        }
    }
}

/// A responder's comparison of roots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootAnswer {
    /// The roots are equal: the replicas hold the same versions of every key in the range.
    Equal,
    /// The roots differ: the responder's branch hashes.
    Differ(Vec<Hash>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_quorum_names_the_range_its_parameter_takes() {
        for (name, value, said) in [
            ("r", 0, "r=0 is not allowed: use 1 to 3 (N=3)"),
            ("w", 4, "w=4 is not allowed: use 1 to 3 (N=3)"),
            ("pr", 4, "pr=4 is not allowed: use 0 to 3 (N=3)"),
            ("pw", 4, "pw=4 is not allowed: use 0 to 3 (N=3)"),
        ] {
            let e = OpError::InvalidQuorum {
                name: name.into(),
                value,
                n: 3,
            };
            assert_eq!(e.to_string(), said);
        }
    }
}
