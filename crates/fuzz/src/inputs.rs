//! Structure-aware inputs: real peer messages, hellos, context vectors and RESP pieces built
//! from random bytes with `arbitrary`, so that most inputs get past the first checks of a
//! decoder and reach the ones behind them. Also the seed messages (one of every kind).

use arbitrary::{Arbitrary, Result, Unstructured};
use dynamokv_core::membership::{Delta, DigestEntry, Ended, Ending, Member, Status};
use dynamokv_core::merkle::Range;
use dynamokv_core::message::{
    ClientRequest, CollectMessage, Condition, GossipMessage, HandoffMessage, HandoverMessage,
    KvMessage, Message, OpError, QuorumKind, Reply, RootAnswer, SyncMessage, WireError,
};
use dynamokv_core::{ActorId, ClockEntry, Dot, Object, VersionVector};
use dynamokv_server::transport::Frame;

/// A short byte string, mostly small.
pub fn bytes(u: &mut Unstructured<'_>, max: usize) -> Result<Vec<u8>> {
    let len = u.int_in_range(0..=max)?;
    Ok(u.bytes(len.min(u.len()))?.to_vec())
}

fn text(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(String::from_utf8_lossy(&bytes(u, 24)?).into_owned())
}

fn small_vec<T>(
    u: &mut Unstructured<'_>,
    max: usize,
    mut f: impl FnMut(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| f(u)).collect()
}

/// A version vector of up to 6 actors.
pub fn vv(u: &mut Unstructured<'_>) -> Result<VersionVector> {
    let entries = small_vec(u, 6, |u| {
        Ok((
            ActorId(u.int_in_range(0..=7)?),
            ClockEntry {
                counter: u.arbitrary()?,
                timestamp: u.arbitrary()?,
            },
        ))
    })?;
    Ok(VersionVector::from_entries(entries))
}

/// An object made the way coordinators make them: a few writes, some concurrent, some deletes.
pub fn object(u: &mut Unstructured<'_>) -> Result<Object> {
    let mut o = Object::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let actor = ActorId(u.int_in_range(0..=3)?);
        let context = if u.arbitrary()? {
            o.clock().clone()
        } else {
            VersionVector::new()
        };
        let value = if u.ratio(1, 5)? {
            None
        } else {
            Some(bytes(u, 64)?)
        };
        let now = u.arbitrary()?;
        // Some values expire; some are a counter's state (arbitrary bytes, as a hostile peer
        // may send).
        let stamp = dynamokv_core::version::Stamp {
            expires: u.arbitrary()?,
            kind: if u.ratio(1, 4)? {
                dynamokv_core::version::ValueKind::Counter
            } else {
                dynamokv_core::version::ValueKind::Bytes
            },
        };
        o = o.merge(&o.update_stamped(actor, &context, value, now, 0, stamp));
    }
    Ok(o)
}

/// A member record.
pub fn member(u: &mut Unstructured<'_>) -> Result<Member> {
    Ok(Member {
        id: text(u)?,
        generation: u.arbitrary()?,
        version: u.arbitrary()?,
        status: *u.choose(&[Status::Joining, Status::Up, Status::Leaving, Status::Left])?,
        peer_addr: text(u)?,
        http_addr: text(u)?,
        tokens: small_vec(u, 16, |u| u.arbitrary())?,
        instance: u.arbitrary()?,
        epoch: u.arbitrary()?,
    })
}

/// An ending.
pub fn ended(u: &mut Unstructured<'_>) -> Result<Ended> {
    Ok(Ended {
        id: text(u)?,
        instance: u.arbitrary()?,
        how: *u.choose(&[Ending::Left, Ending::Removed, Ending::Stale])?,
        by: text(u)?,
    })
}

fn range(u: &mut Unstructured<'_>) -> Result<Range> {
    Ok(Range {
        start: u.arbitrary()?,
        end: u.arbitrary()?,
    })
}

fn wire_error(u: &mut Unstructured<'_>) -> Result<WireError> {
    Ok(match u.int_in_range(0..=2)? {
        0 => WireError::Invalid(text(u)?),
        1 => WireError::Storage(text(u)?),
        _ => WireError::Rebuilding,
    })
}

fn ack(u: &mut Unstructured<'_>) -> Result<std::result::Result<(), WireError>> {
    Ok(if u.arbitrary()? {
        Ok(())
    } else {
        Err(wire_error(u)?)
    })
}

fn request(u: &mut Unstructured<'_>) -> Result<ClientRequest> {
    Ok(match u.int_in_range(0..=2)? {
        0 => ClientRequest::Get {
            key: bytes(u, 32)?,
            r: u.arbitrary()?,
            pr: u.arbitrary()?,
        },
        1 => ClientRequest::Put {
            key: bytes(u, 32)?,
            value: u.arbitrary::<bool>()?.then(|| bytes(u, 64)).transpose()?,
            context: u.arbitrary::<bool>()?.then(|| vv(u)).transpose()?,
            w: u.arbitrary()?,
            pw: u.arbitrary()?,
            overwrite: u.arbitrary()?,
            expires_in_ms: u.arbitrary()?,
            condition: match u.int_in_range(0..=3)? {
                0 => None,
                1 => Some(Condition::Absent),
                2 => Some(Condition::Present),
                _ => Some(Condition::Version(vv(u)?)),
            },
        },
        _ => ClientRequest::Increment {
            key: bytes(u, 32)?,
            by: u.arbitrary()?,
            w: u.arbitrary()?,
            pw: u.arbitrary()?,
        },
    })
}

fn op_error(u: &mut Unstructured<'_>) -> Result<OpError> {
    Ok(match u.int_in_range(0..=3)? {
        0 => OpError::Unavailable {
            kind: *u.choose(&[QuorumKind::Read, QuorumKind::Write])?,
            needed: u.arbitrary()?,
            answered: u.arbitrary()?,
            asked: small_vec(u, 4, text)?,
            failed: small_vec(u, 4, text)?,
            written: u.arbitrary()?,
            sent: u.arbitrary()?,
            primary_needed: u.arbitrary()?,
            primary_answered: u.arbitrary()?,
        },
        1 => OpError::NoRing,
        2 => OpError::BadRequest(text(u)?),
        _ => OpError::TooManySiblings {
            key: text(u)?,
            siblings: u.arbitrary()?,
        },
    })
}

fn entries(u: &mut Unstructured<'_>) -> Result<Vec<(Vec<u8>, [u8; 16])>> {
    small_vec(u, 8, |u| Ok((bytes(u, 32)?, u.arbitrary()?)))
}

fn objects(u: &mut Unstructured<'_>) -> Result<Vec<(Vec<u8>, Object)>> {
    small_vec(u, 4, |u| Ok((bytes(u, 32)?, object(u)?)))
}

/// A peer message of any kind.
pub fn message(u: &mut Unstructured<'_>) -> Result<Message> {
    let id = u.arbitrary()?;
    Ok(match u.int_in_range(0..=22)? {
        0 => KvMessage::Forward {
            id,
            request: request(u)?,
            hops: u.arbitrary()?,
        }
        .into(),
        1 => KvMessage::ForwardReply {
            id,
            response: if u.arbitrary()? {
                Ok(Reply::Written {
                    object: object(u)?,
                    dot: Dot {
                        actor: ActorId(u.arbitrary()?),
                        counter: u.arbitrary()?,
                    },
                })
            } else if u.arbitrary()? {
                Ok(Reply::Read(object(u)?))
            } else {
                Err(op_error(u)?)
            },
        }
        .into(),
        2 => KvMessage::Replicate {
            id,
            key: bytes(u, 32)?,
            object: object(u)?,
            hint: u.arbitrary::<bool>()?.then(|| text(u)).transpose()?,
        }
        .into(),
        3 => KvMessage::ReplicateAck {
            id,
            result: ack(u)?,
        }
        .into(),
        4 => KvMessage::Read {
            id,
            key: bytes(u, 32)?,
        }
        .into(),
        5 => KvMessage::ReadReply {
            id,
            result: if u.arbitrary()? {
                Ok(u.arbitrary::<bool>()?.then(|| object(u)).transpose()?)
            } else {
                Err(wire_error(u)?)
            },
        }
        .into(),
        6 => KvMessage::Repair {
            key: bytes(u, 32)?,
            object: object(u)?,
        }
        .into(),
        7 => HandoffMessage::Deliver {
            id,
            key: bytes(u, 32)?,
            object: object(u)?,
        }
        .into(),
        8 => HandoffMessage::Ack {
            id,
            result: ack(u)?,
        }
        .into(),
        9..=11 => {
            let digest = small_vec(u, 6, |u| {
                Ok(DigestEntry {
                    id: text(u)?,
                    instance: u.arbitrary()?,
                    generation: u.arbitrary()?,
                    version: u.arbitrary()?,
                    heartbeat: u.arbitrary()?,
                })
            })?;
            let delta = Delta {
                members: small_vec(u, 4, member)?,
                heartbeats: small_vec(u, 6, |u| Ok((text(u)?, u.arbitrary()?, u.arbitrary()?)))?,
                ended: small_vec(u, 3, ended)?,
            };
            let endings = u.arbitrary()?;
            match u.int_in_range(0..=2)? {
                0 => GossipMessage::Syn { digest, endings },
                1 => GossipMessage::SynAck {
                    digest,
                    endings,
                    delta,
                },
                _ => GossipMessage::Ack { delta },
            }
            .into()
        }
        12 => GossipMessage::Restarted {
            previous_generation: u.arbitrary()?,
            tokens: small_vec(u, 16, |u| u.arbitrary())?,
        }
        .into(),
        13 => SyncMessage::Root {
            session: id,
            range: range(u)?,
            root: u.arbitrary()?,
            hints: u.arbitrary()?,
        }
        .into(),
        14 => SyncMessage::RootReply {
            session: id,
            answer: if u.arbitrary()? {
                RootAnswer::Equal
            } else {
                RootAnswer::Differ(small_vec(u, 8, |u| u.arbitrary())?)
            },
            hints: u.arbitrary()?,
        }
        .into(),
        15 => SyncMessage::Leaves {
            session: id,
            range: range(u)?,
            branches: small_vec(u, 4, |u| {
                Ok((u.arbitrary()?, small_vec(u, 4, |u| u.arbitrary())?))
            })?,
        }
        .into(),
        16 => SyncMessage::Keys {
            session: id,
            leaves: small_vec(u, 8, |u| u.arbitrary())?,
            entries: entries(u)?,
            complete: u.arbitrary()?,
        }
        .into(),
        17 => SyncMessage::Push {
            session: id,
            range: range(u)?,
            objects: objects(u)?,
            want: small_vec(u, 4, |u| bytes(u, 32))?,
        }
        .into(),
        18 => SyncMessage::Pull {
            session: id,
            objects: objects(u)?,
            last: u.arbitrary()?,
        }
        .into(),
        19 => CollectMessage::Reap {
            range: range(u)?,
            keys: entries(u)?,
        }
        .into(),
        20 => HandoverMessage::Offer {
            id,
            key: bytes(u, 32)?,
            object: object(u)?,
        }
        .into(),
        21 => HandoverMessage::Ack {
            id,
            ok: u.arbitrary()?,
        }
        .into(),
        _ => SyncMessage::Refused {
            session: id,
            reason: match u.int_in_range(0..=3)? {
                0 => dynamokv_core::message::SyncRefusal::NotReplicated,
                1 => dynamokv_core::message::SyncRefusal::NotAPeer,
                2 => dynamokv_core::message::SyncRefusal::TreeBuilding,
                _ => dynamokv_core::message::SyncRefusal::Storage(text(u)?),
            },
        }
        .into(),
    })
}

/// A frame after the hello, of any kind.
pub fn frame(u: &mut Unstructured<'_>) -> Result<Frame> {
    Ok(match u.int_in_range(0..=9)? {
        0 => Frame::Challenge {
            nonce: u.arbitrary()?,
            member: member(u)?,
            cluster: u.arbitrary()?,
            proof: u.arbitrary()?,
        },
        1 => Frame::Proof(u.arbitrary()?),
        2 => Frame::Welcome,
        3 => Frame::Refused(text(u)?),
        4 => Frame::Ended(ended(u)?),
        _ => Frame::Message(message(u)?),
    })
}

/// One piece of a RESP stream: well-formed pieces, and the lengths and bytes a hostile client
/// would put in them.
#[derive(Debug, Arbitrary)]
pub enum RespPiece {
    /// A well-formed command: `*n` then n bulk strings, the first a real command name.
    Command(u8, Vec<Vec<u8>>),
    /// A multibulk header with any count.
    Multibulk(i64),
    /// A bulk header with any length, then bytes that may or may not match it.
    Bulk(i64, Vec<u8>),
    /// An inline command line.
    Inline(Vec<u8>),
    /// A line end alone.
    Crlf,
    /// Anything.
    Raw(Vec<u8>),
}

/// Command names the server knows, so that generated commands look like real ones.
pub const COMMANDS: [&str; 14] = [
    "GET", "SET", "DEL", "EXISTS", "PING", "ECHO", "HELLO", "AUTH", "QUIT", "MGET", "DKV.GET",
    "DKV.PUT", "DKV.DEL", "COMMAND",
];

/// Writes `pieces` as one RESP stream.
pub fn resp_stream(pieces: &[RespPiece]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            RespPiece::Command(name, args) => {
                out.extend_from_slice(format!("*{}\r\n", args.len() + 1).as_bytes());
                let name = COMMANDS[*name as usize % COMMANDS.len()].as_bytes();
                for arg in std::iter::once(name).chain(args.iter().map(Vec::as_slice)) {
                    out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                    out.extend_from_slice(arg);
                    out.extend_from_slice(b"\r\n");
                }
            }
            RespPiece::Multibulk(n) => out.extend_from_slice(format!("*{n}\r\n").as_bytes()),
            RespPiece::Bulk(n, bytes) => {
                out.extend_from_slice(format!("${n}\r\n").as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            RespPiece::Inline(line) => {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            RespPiece::Crlf => out.extend_from_slice(b"\r\n"),
            RespPiece::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

/// The seed messages: one of every kind, from fixed bytes (each choice's first option and
/// then others as the bytes run out differently).
pub fn seed_messages() -> Vec<Message> {
    let mut out = Vec::new();
    for kind in 0u8..22 {
        for salt in 0u8..3 {
            let mut raw: Vec<u8> = (0..600u32)
                .map(|i| {
                    (i as u8)
                        .wrapping_mul(31)
                        .wrapping_add(salt.wrapping_mul(17))
                })
                .collect();
            // The message kind is drawn first after the 8-byte id.
            raw[8] = kind;
            if let Ok(m) = message(&mut Unstructured::new(&raw)) {
                out.push(m);
            }
        }
    }
    out
}
