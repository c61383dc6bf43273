//! The peer handshake's proofs: mutual challenge-response keyed by the cluster secret.
//!
//! 1. The dialer sends a hello: magic, protocol version, a fresh 32-byte nonce, its member
//!    record and its cluster id.
//! 2. The acceptor answers a challenge: its own fresh nonce, its record, its cluster id, and its
//!    proof.
//! 3. The dialer checks that proof, then sends its own; the acceptor checks it and welcomes the
//!    dialer (or refuses it with the reason). Only then does either side take the other's record
//!    or a message from it.
//!
//! [`dial`] and [`accept`] run the exchange over a framed connection (the transport connects,
//! wraps in TLS, and bounds the time); [`PeerKey`] makes and checks the proofs.
//!
//! Cluster ids ([`ClusterId`]): each side refuses a peer whose cluster id differs from its own
//! (when both have one) as soon as it sees it, before any proof, naming both ids; so a node of
//! one cluster never joins another, even when they share a secret. A side that has no id yet
//! takes the peer's once both proofs were checked.
//!
//! A proof is BLAKE3 in keyed mode (a MAC) under a key derived from the cluster secret, over the
//! role, both nonces, both member records and both cluster ids. Nothing on the wire is reusable: a replayed hello
//! meets a new acceptor nonce, a replayed proof was made for another one, an acceptor that does
//! not know the secret cannot answer a dialer's fresh nonce, and a record altered in transit
//! breaks both proofs. This authenticates the peers at the start of the connection; protecting
//! the bytes that follow from an attacker on the path needs TLS.

use crate::identity::{ClusterId, OtherCluster, show};
use crate::transport::wire::{
    Frame, Hello, PeerConn, WireError, decode_frame, decode_hello, encode_frame, encode_hello,
};
use axum::body::Bytes;
use dynamokv_core::membership::{Ended, Member};
use futures_util::{SinkExt as _, StreamExt as _};

pub use crate::transport::wire::PROOF_LEN;

/// Words every refusal of a node of another cluster contains, so that the dialer can tell it
/// from the text it is sent.
pub const OTHER_CLUSTER: &str = "nodes of different clusters never join";

/// Which side made a proof: each proves something different, so one side's proof is never
/// accepted as the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that connected.
    Dialer,
    /// The side that accepted.
    Acceptor,
}

/// The handshake key of a cluster: derived from its secret, used for nothing else.
#[derive(Clone)]
pub struct PeerKey([u8; 32]);

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKey(<hidden>)")
    }
}

impl PeerKey {
    /// The key of the cluster whose contexts `codec` signs (both come from its secret).
    pub fn new(codec: &dynamokv_core::ContextCodec) -> Self {
        Self(codec.derive_key("dynamokv peer handshake v1"))
    }

    /// The proof of `role` for a handshake with nonces `dialer_nonce` and `acceptor_nonce`
    /// between `dialer` and `acceptor` (each its record and its cluster id).
    pub fn proof(
        &self,
        role: Role,
        dialer_nonce: &[u8; PROOF_LEN],
        acceptor_nonce: &[u8; PROOF_LEN],
        dialer: (&Member, u64),
        acceptor: (&Member, u64),
    ) -> [u8; PROOF_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(match role {
            Role::Dialer => b"dialer  ",
            Role::Acceptor => b"acceptor",
        });
        h.update(dialer_nonce);
        h.update(acceptor_nonce);
        for (m, cluster) in [dialer, acceptor] {
            let bytes = postcard::to_allocvec(m).unwrap_or_default();
            h.update(&(bytes.len() as u64).to_be_bytes());
            h.update(&bytes);
            h.update(&cluster.to_be_bytes());
        }
        *h.finalize().as_bytes()
    }

    /// Whether `proof` is `role`'s proof for this handshake (compared in constant time).
    pub fn verify(
        &self,
        proof: &[u8; PROOF_LEN],
        role: Role,
        dialer_nonce: &[u8; PROOF_LEN],
        acceptor_nonce: &[u8; PROOF_LEN],
        dialer: (&Member, u64),
        acceptor: (&Member, u64),
    ) -> bool {
        let expected = self.proof(role, dialer_nonce, acceptor_nonce, dialer, acceptor);
        blake3::Hash::from(expected) == blake3::Hash::from(*proof)
    }
}

/// A fresh random nonce.
pub fn nonce() -> [u8; PROOF_LEN] {
    let mut n = [0u8; PROOF_LEN];
    // The OS random source does not fail on supported systems; a zero nonce would still be
    // refused by no one, so fail loudly instead.
    getrandom::fill(&mut n).expect("the OS random source is available");
    n
}

/// Why a handshake did not end in a welcome.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The connection failed or closed midway.
    #[error("{0}")]
    Io(String),
    /// The peer sent bytes that are not this protocol.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer sent a frame out of turn.
    #[error("a frame out of turn in the handshake")]
    OutOfTurn,
    /// The peer's member record is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The peer refused, and why.
    #[error("refused: {0}")]
    Refused(String),
    /// The acceptor could not prove it knows the cluster secret (seen by the dialer).
    #[error("the peer could not prove it knows the cluster secret (a different --cluster-secret?)")]
    AcceptorProof,
    /// The dialer's proof does not match (seen by the acceptor).
    #[error(
        "its proof does not match this node's cluster secret: give every node the same --cluster-secret"
    )]
    DialerProof,
    /// This node's own instance ended: the peer said so.
    #[error("this node's instance ended: {}", .0.how.as_str())]
    Ended(Ended),
    /// The peer's instance ended (it was told so).
    #[error("{} answers with an instance that ended ({:016x}); it was told so", .0.id, .0.instance)]
    PeerEnded(Ended),
    /// The peer belongs to another cluster.
    #[error(
        "{peer} belongs to cluster {} and {me} to cluster {}: nodes of different clusters never join (check --seeds; to move a node to another cluster, wipe its data directory)",
        show(.ids.theirs), show(.ids.mine)
    )]
    OtherCluster {
        /// The peer's node id.
        peer: String,
        /// This node's id.
        me: String,
        /// Both cluster ids.
        ids: OtherCluster,
    },
}

impl HandshakeError {
    /// The reason label of a refused inbound handshake (`dynamokv_peer_handshakes_refused_total`).
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::DialerProof | HandshakeError::AcceptorProof => "proof",
            HandshakeError::PeerEnded(_) | HandshakeError::Ended(_) => "ended",
            HandshakeError::OtherCluster { .. } => "cluster",
            _ => "protocol",
        }
    }
}

async fn send(framed: &mut PeerConn, frame: Bytes) -> Result<(), HandshakeError> {
    framed
        .send(frame)
        .await
        .map_err(|e| HandshakeError::Io(format!("handshake send failed: {e}")))
}

async fn receive(framed: &mut PeerConn) -> Result<Frame, HandshakeError> {
    match framed.next().await {
        Some(Ok(bytes)) => Ok(decode_frame(&bytes)?),
        Some(Err(e)) => Err(HandshakeError::Io(format!("handshake read failed: {e}"))),
        None => Err(HandshakeError::Io(
            "the peer closed the connection during the handshake".to_owned(),
        )),
    }
}

/// The dialer's side, over a connection to an acceptor: `mine` is this node's record,
/// `cluster` its cluster id, `ending` says whether an instance ended. Returns the acceptor's
/// record once welcomed.
pub async fn dial(
    framed: &mut PeerConn,
    key: &PeerKey,
    mine: &Member,
    cluster: &ClusterId,
    ending: impl Fn(&Member) -> Option<Ended>,
) -> Result<Member, HandshakeError> {
    let my_nonce = nonce();
    let my_cluster = cluster.get();
    let hello = Hello {
        nonce: my_nonce,
        member: mine.clone(),
        cluster: my_cluster,
    };
    send(framed, encode_hello(&hello)).await?;
    let (their_nonce, theirs, their_cluster, proof) = match receive(framed).await? {
        Frame::Challenge {
            nonce,
            member,
            cluster,
            proof,
        } => (nonce, member, cluster, proof),
        Frame::Refused(why) => return Err(HandshakeError::Refused(why)),
        _ => return Err(HandshakeError::OutOfTurn),
    };
    if let Err(ids) = cluster.check(their_cluster) {
        let e = other_cluster(&theirs, mine, ids);
        let _ = send(framed, encode_frame(&Frame::Refused(e.to_string()))).await;
        return Err(e);
    }
    let (me, them) = ((mine, my_cluster), (&theirs, their_cluster));
    if !key.verify(&proof, Role::Acceptor, &my_nonce, &their_nonce, me, them) {
        let why = "your proof does not match this node's cluster secret";
        let _ = send(framed, encode_frame(&Frame::Refused(why.into()))).await;
        return Err(HandshakeError::AcceptorProof);
    }
    theirs.validate().map_err(HandshakeError::Invalid)?;
    let their_end = ending(&theirs);
    let proof = key.proof(Role::Dialer, &my_nonce, &their_nonce, me, them);
    send(framed, encode_frame(&Frame::Proof(proof))).await?;
    match receive(framed).await? {
        // An instance that ended is told so, once it has checked this node's proof.
        Frame::Welcome => match their_end {
            Some(e) => {
                let _ = send(framed, encode_frame(&Frame::Ended(e.clone()))).await;
                Err(HandshakeError::PeerEnded(e))
            }
            None => match cluster.adopt(their_cluster) {
                Ok(()) => Ok(theirs),
                Err(ids) => Err(other_cluster(&theirs, mine, ids)),
            },
        },
        Frame::Ended(e) if e.id == mine.id && e.instance == mine.instance => {
            Err(HandshakeError::Ended(e))
        }
        Frame::Refused(why) => Err(HandshakeError::Refused(why)),
        _ => Err(HandshakeError::OutOfTurn),
    }
}

/// The acceptor's side, up to the welcome: the dialer's record; or, once both proofs were
/// checked, [`HandshakeError::PeerEnded`] for an instance that ended (the caller tells it);
/// or why it is refused (the caller tells it too): a dialer of another cluster is refused
/// before any proof.
pub async fn accept(
    framed: &mut PeerConn,
    key: &PeerKey,
    mine: &Member,
    cluster: &ClusterId,
    ending: impl Fn(&Member) -> Option<Ended>,
) -> Result<Member, HandshakeError> {
    let first = match framed.next().await {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => return Err(HandshakeError::Io(format!("bad frame in handshake: {e}"))),
        None => {
            return Err(HandshakeError::Io("closed during the handshake".to_owned()));
        }
    };
    let hello = decode_hello(&first)?;
    hello.member.validate().map_err(HandshakeError::Invalid)?;
    cluster
        .check(hello.cluster)
        .map_err(|ids| other_cluster(&hello.member, mine, ids))?;
    let my_nonce = nonce();
    let my_cluster = cluster.get();
    let (them, me) = ((&hello.member, hello.cluster), (mine, my_cluster));
    let proof = key.proof(Role::Acceptor, &hello.nonce, &my_nonce, them, me);
    let challenge = Frame::Challenge {
        nonce: my_nonce,
        member: mine.clone(),
        cluster: my_cluster,
        proof,
    };
    send(framed, encode_frame(&challenge)).await?;
    match receive(framed).await? {
        Frame::Proof(p) if key.verify(&p, Role::Dialer, &hello.nonce, &my_nonce, them, me) => {
            if let Some(ended) = ending(&hello.member) {
                return Err(HandshakeError::PeerEnded(ended));
            }
            cluster
                .adopt(hello.cluster)
                .map_err(|ids| other_cluster(&hello.member, mine, ids))?;
            send(framed, encode_frame(&Frame::Welcome)).await?;
            Ok(hello.member)
        }
        Frame::Proof(_) => Err(HandshakeError::DialerProof),
        Frame::Refused(why) => Err(HandshakeError::Refused(format!(
            "the dialer gave up: {why}"
        ))),
        _ => Err(HandshakeError::OutOfTurn),
    }
}

fn other_cluster(peer: &Member, me: &Member, ids: OtherCluster) -> HandshakeError {
    HandshakeError::OtherCluster {
        peer: peer.id.clone(),
        me: me.id.clone(),
        ids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamokv_core::membership::Status;

    fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            generation: 1,
            version: 1,
            status: Status::Up,
            peer_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
            tokens: vec![1, 2, 3],
            instance: 7,
            epoch: 1,
        }
    }

    #[test]
    fn proofs_bind_the_secret_the_role_the_nonces_and_the_records() {
        let key = PeerKey::new(&dynamokv_core::ContextCodec::new([1; 32]));
        let (md, ma) = (member("d"), member("a"));
        let (d, a) = ((&md, 1), (&ma, 1));
        let (nd, na) = ([3; 32], [4; 32]);
        let p = key.proof(Role::Dialer, &nd, &na, d, a);
        assert!(key.verify(&p, Role::Dialer, &nd, &na, d, a));
        assert!(!key.verify(&p, Role::Acceptor, &nd, &na, d, a), "role");
        assert!(
            !key.verify(&p, Role::Dialer, &nd, &[5; 32], d, a),
            "fresh nonce"
        );
        assert!(
            !key.verify(&p, Role::Dialer, &[5; 32], &na, d, a),
            "dialer nonce"
        );
        let mut other = md.clone();
        other.peer_addr = "10.0.0.1:1".into();
        assert!(
            !key.verify(&p, Role::Dialer, &nd, &na, (&other, 1), a),
            "altered record"
        );
        assert!(
            !key.verify(&p, Role::Dialer, &nd, &na, d, (&ma, 2)),
            "altered cluster id"
        );
        let wrong = PeerKey::new(&dynamokv_core::ContextCodec::new([2; 32]));
        assert!(
            !wrong.verify(&p, Role::Dialer, &nd, &na, d, a),
            "another secret"
        );
        assert_ne!(nonce(), nonce());
    }
}
