//! The peer handshake's proofs: mutual challenge-response keyed by the cluster secret.
//!
//! 1. The dialer sends a hello: magic, protocol version, a fresh 32-byte nonce and its member
//!    record.
//! 2. The acceptor answers a challenge: its own fresh nonce, its record, and its proof.
//! 3. The dialer checks that proof, then sends its own; the acceptor checks it and welcomes the
//!    dialer (or refuses it with the reason). Only then does either side take the other's record
//!    or a message from it.
//!
//! A proof is BLAKE3 in keyed mode (a MAC) under a key derived from the cluster secret, over the
//! role, both nonces and both member records. Nothing on the wire is reusable: a replayed hello
//! meets a new acceptor nonce, a replayed proof was made for another one, an acceptor that does
//! not know the secret cannot answer a dialer's fresh nonce, and a record altered in transit
//! breaks both proofs. This authenticates the peers at the start of the connection; protecting
//! the bytes that follow from an attacker on the path needs TLS.

use dynamokv_core::membership::Member;

/// Length of a nonce and of a proof.
pub const PROOF_LEN: usize = 32;

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
    /// between the records `dialer` and `acceptor`.
    pub fn proof(
        &self,
        role: Role,
        dialer_nonce: &[u8; PROOF_LEN],
        acceptor_nonce: &[u8; PROOF_LEN],
        dialer: &Member,
        acceptor: &Member,
    ) -> [u8; PROOF_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(match role {
            Role::Dialer => b"dialer  ",
            Role::Acceptor => b"acceptor",
        });
        h.update(dialer_nonce);
        h.update(acceptor_nonce);
        for m in [dialer, acceptor] {
            let bytes = postcard::to_allocvec(m).unwrap_or_default();
            h.update(&(bytes.len() as u64).to_be_bytes());
            h.update(&bytes);
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
        dialer: &Member,
        acceptor: &Member,
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
        let (d, a) = (member("d"), member("a"));
        let (nd, na) = ([3; 32], [4; 32]);
        let p = key.proof(Role::Dialer, &nd, &na, &d, &a);
        assert!(key.verify(&p, Role::Dialer, &nd, &na, &d, &a));
        assert!(!key.verify(&p, Role::Acceptor, &nd, &na, &d, &a), "role");
        assert!(
            !key.verify(&p, Role::Dialer, &nd, &[5; 32], &d, &a),
            "fresh nonce"
        );
        assert!(
            !key.verify(&p, Role::Dialer, &[5; 32], &na, &d, &a),
            "dialer nonce"
        );
        let mut other = d.clone();
        other.peer_addr = "10.0.0.1:1".into();
        assert!(
            !key.verify(&p, Role::Dialer, &nd, &na, &other, &a),
            "altered record"
        );
        let wrong = PeerKey::new(&dynamokv_core::ContextCodec::new([2; 32]));
        assert!(
            !wrong.verify(&p, Role::Dialer, &nd, &na, &d, &a),
            "another secret"
        );
        assert_ne!(nonce(), nonce());
    }
}
