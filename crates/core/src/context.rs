//! The context token: the version vector a client read, made opaque and tamper-evident.
//!
//! A client passes the context of its last read back with its next write, and the coordinator
//! supersedes exactly the siblings that context covers (see [`crate::version`]). A forged context
//! that claimed counters no write ever issued would make later real writes look superseded and
//! silently drop them, so the token is authenticated:
//!
//! ```text
//! token   = base64url-nopad( 0x01 | payload | mac )
//! payload = postcard(Vec<(actor u64, counter u64, timestamp u64)>)
//! mac     = first 16 bytes of BLAKE3-keyed(secret, "dynamokv context v1" | len(key) u32 BE | key | payload)
//! ```
//!
//! The key is part of the MAC, so a context read from one key is refused on another. Every node
//! of a cluster shares the secret.

use crate::version::{ActorId, ClockEntry, VersionVector};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const FORMAT_VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const DOMAIN: &[u8] = b"dynamokv context v1";
/// Tokens longer than this are refused before decoding (a vector of ~1000 actors).
pub const MAX_TOKEN_CHARS: usize = 32 * 1024;

/// Why a context token was refused. Every variant means: read the key again and use the
/// context of that read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// Not base64url, too short or too long, or an unknown format version.
    #[error(
        "the context is malformed ({0}); send the X-Context of a recent read of this key unchanged"
    )]
    Malformed(&'static str),
    /// The MAC does not match: the token was altered, forged, or read from another key or
    /// another cluster.
    #[error(
        "the context was not issued for this key by this cluster (altered, forged, or from another key); read the key again and send its X-Context"
    )]
    Forged,
}

/// Encodes and checks context tokens with the cluster's secret.
#[derive(Clone)]
pub struct ContextCodec {
    secret: [u8; 32],
}

impl std::fmt::Debug for ContextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContextCodec { secret: <hidden> }")
    }
}

impl ContextCodec {
    /// A codec keyed by a 32-byte secret.
    pub fn new(secret: [u8; 32]) -> Self {
        Self { secret }
    }

    /// A codec keyed by a passphrase of any length (hashed to 32 bytes with BLAKE3).
    pub fn from_passphrase(passphrase: &str) -> Self {
        Self::new(blake3::derive_key(
            "dynamokv cluster secret v1",
            passphrase.as_bytes(),
        ))
    }

    fn mac(&self, key: &[u8], payload: &[u8]) -> [u8; MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.secret);
        h.update(DOMAIN);
        h.update(&(key.len() as u32).to_be_bytes());
        h.update(key);
        h.update(payload);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&h.finalize().as_bytes()[..MAC_LEN]);
        out
    }

    /// A key for another use of the cluster secret (the peer handshake), derived from it with
    /// BLAKE3's key derivation under `purpose`: it reveals nothing of the secret nor of the
    /// keys derived for other purposes.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        blake3::derive_key(purpose, &self.secret)
    }

    /// The token for `vv`, a context read from `key`.
    pub fn encode(&self, key: &[u8], vv: &VersionVector) -> String {
        let entries: Vec<(u64, u64, u64)> = vv
            .iter()
            .map(|(a, e)| (a.0, e.counter, e.timestamp))
            .collect();
        // Serializing plain integers into a Vec cannot fail.
        let payload = postcard::to_allocvec(&entries).unwrap_or_default();
        let mut raw = Vec::with_capacity(1 + payload.len() + MAC_LEN);
        raw.push(FORMAT_VERSION);
        raw.extend_from_slice(&payload);
        raw.extend_from_slice(&self.mac(key, &payload));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks and decodes a token a client sent with a write to `key`.
    pub fn decode(&self, key: &[u8], token: &str) -> Result<VersionVector, ContextError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(ContextError::Malformed("empty"));
        }
        if token.len() > MAX_TOKEN_CHARS {
            return Err(ContextError::Malformed("too long"));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| ContextError::Malformed("not base64url"))?;
        if raw.len() < 1 + MAC_LEN {
            return Err(ContextError::Malformed("too short"));
        }
        if raw[0] != FORMAT_VERSION {
            return Err(ContextError::Malformed("unknown format version"));
        }
        let (payload, mac) = raw[1..].split_at(raw.len() - 1 - MAC_LEN);
        let expected = self.mac(key, payload);
        if !constant_time_eq(&expected, mac) {
            return Err(ContextError::Forged);
        }
        Self::decode_payload(payload)
    }

    /// The last step of [`ContextCodec::decode`], once the MAC matched: the vector from the
    /// token's payload. Public so that the fuzz targets reach it without forging MACs.
    pub fn decode_payload(payload: &[u8]) -> Result<VersionVector, ContextError> {
        let (entries, rest): (Vec<(u64, u64, u64)>, &[u8]) = postcard::take_from_bytes(payload)
            .map_err(|_| ContextError::Malformed("bad payload"))?;
        if !rest.is_empty() {
            return Err(ContextError::Malformed("trailing bytes"));
        }
        Ok(VersionVector::from_entries(entries.into_iter().map(
            |(a, counter, timestamp)| (ActorId(a), ClockEntry { counter, timestamp }),
        )))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Object;

    fn sample() -> VersionVector {
        let o = Object::new().update(ActorId(42), &VersionVector::new(), Some(b"v".to_vec()), 7);
        let o = o.update(ActorId(43), &VersionVector::new(), Some(b"w".to_vec()), 8);
        o.context()
    }

    #[test]
    fn round_trip() {
        let c = ContextCodec::from_passphrase("s");
        let vv = sample();
        let token = c.encode(b"k", &vv);
        assert_eq!(c.decode(b"k", &token), Ok(vv));
    }

    #[test]
    fn refuses_other_key_other_secret_and_tampering() {
        let c = ContextCodec::from_passphrase("s");
        let token = c.encode(b"k", &sample());
        assert_eq!(c.decode(b"other", &token), Err(ContextError::Forged));
        assert_eq!(
            ContextCodec::from_passphrase("t").decode(b"k", &token),
            Err(ContextError::Forged)
        );
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[2] ^= 1;
        assert_eq!(
            c.decode(b"k", &URL_SAFE_NO_PAD.encode(raw)),
            Err(ContextError::Forged)
        );
    }

    #[test]
    fn refuses_garbage() {
        let c = ContextCodec::from_passphrase("s");
        for bad in ["", "!!!", "AAAA", &"A".repeat(MAX_TOKEN_CHARS + 1)] {
            assert!(
                matches!(c.decode(b"k", bad), Err(ContextError::Malformed(_))),
                "{bad:.10}"
            );
        }
        let mut raw = vec![9u8];
        raw.extend_from_slice(&[0; MAC_LEN]);
        assert_eq!(
            c.decode(b"k", &URL_SAFE_NO_PAD.encode(raw)),
            Err(ContextError::Malformed("unknown format version"))
        );
    }
}
