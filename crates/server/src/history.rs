//! The persisted membership history, in the metadata keyspace: the latest record applied for
//! each member under `members/<id>`, and every ending (an instance that left, was removed or
//! found stale) under `ended/<id>/<instance>`, postcard-encoded.
//!
//! On start the node loads it (merging by the membership CRDT rule), so a node restarted without
//! seeds still knows the cluster it was part of, and so an instance that ended knows it and
//! refuses to start. A member's record is overwritten in place (the node only persists records
//! that superseded the one it had), so the history stays one record per member however often
//! records change. Endings are never deleted.
//!
//! Histories written before endings and epochs existed (`membership/<seq>`, an append-only log
//! of records without an epoch) are read once and rewritten in this form.

use dynamokv_core::membership::{Ended, Member, Status, View};
use dynamokv_storage::{Engine, Entry, Space, StorageError, WriteBatch};
use serde::Deserialize;
use std::ops::Bound;

const MEMBERS: &[u8] = b"members/";
const ENDED: &[u8] = b"ended/";
/// The append-only log of the first format.
const LEGACY: &[u8] = b"membership/";

/// What a node persisted about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// The latest record of every member (this node's own included).
    pub members: Vec<Member>,
    /// Every ending.
    pub ended: Vec<Ended>,
}

impl Known {
    /// This node's own latest record, if it ran before.
    pub fn own(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The ending of `id`'s instance `instance`, if it ended.
    pub fn ending(&self, id: &str, instance: u64) -> Option<&Ended> {
        self.ended
            .iter()
            .find(|e| e.id == id && e.instance == instance)
    }
}

/// Writes membership changes to a node's metadata keyspace.
pub struct History;

fn member_key(id: &str) -> Vec<u8> {
    let mut k = MEMBERS.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

fn ended_key(e: &Ended) -> Vec<u8> {
    let mut k = ENDED.to_vec();
    k.extend_from_slice(e.id.as_bytes());
    k.push(b'/');
    k.extend_from_slice(&e.instance.to_be_bytes());
    k
}

/// Every entry under `prefix`, in key order.
fn scan(engine: &dyn Engine, prefix: &[u8]) -> Result<Vec<Entry>, StorageError> {
    let mut out = Vec::new();
    let mut start = prefix.to_vec();
    let mut inclusive = true;
    loop {
        let from = if inclusive {
            Bound::Included(start.as_slice())
        } else {
            Bound::Excluded(start.as_slice())
        };
        let page = engine.scan(Space::Meta, from, Bound::Unbounded, 1024)?;
        let Some((last, _)) = page.last() else {
            return Ok(out);
        };
        let last = last.clone();
        let mut done = false;
        for (k, v) in page {
            if !k.starts_with(prefix) {
                done = true;
                break;
            }
            out.push((k, v));
        }
        if done {
            return Ok(out);
        }
        start = last;
        inclusive = false;
    }
}

/// A member record as the first format stored it (no epoch).
#[derive(Deserialize)]
struct LegacyMember {
    id: String,
    generation: u64,
    version: u64,
    status: Status,
    peer_addr: String,
    http_addr: String,
    tokens: Vec<u64>,
    instance: u64,
}

fn decode_member(bytes: &[u8]) -> Option<Member> {
    if let Ok(m) = postcard::from_bytes::<Member>(bytes) {
        return Some(m);
    }
    let l = postcard::from_bytes::<LegacyMember>(bytes).ok()?;
    Some(Member {
        id: l.id,
        generation: l.generation,
        version: l.version,
        status: l.status,
        peer_addr: l.peer_addr,
        http_addr: l.http_addr,
        tokens: l.tokens,
        instance: l.instance,
        epoch: 0,
    })
}

impl History {
    /// Loads what the node persisted: every member's latest record and every ending. A history
    /// in the first format is rewritten in this one.
    pub fn load(engine: &dyn Engine) -> Result<(History, Known), StorageError> {
        let mut records = Vec::new();
        for (_, v) in scan(engine, MEMBERS)? {
            match decode_member(&v) {
                Some(m) => records.push(m),
                None => tracing::warn!("skipping an unreadable membership record"),
            }
        }
        let mut ended = Vec::new();
        for (_, v) in scan(engine, ENDED)? {
            match postcard::from_bytes::<Ended>(&v) {
                Ok(e) => ended.push(e),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable ending"),
            }
        }
        let legacy = scan(engine, LEGACY)?;
        if !legacy.is_empty() {
            let mut b = WriteBatch::new();
            for (k, v) in &legacy {
                match decode_member(v) {
                    Some(m) => records.push(m),
                    None => tracing::warn!("skipping an unreadable membership record"),
                }
                b.delete(Space::Meta, k.clone());
            }
            let view = View::from_members(records.iter().cloned());
            for m in view.members.values() {
                b.put(Space::Meta, member_key(&m.id), encode(m));
            }
            engine.write(b)?;
            engine.flush()?;
            tracing::info!(
                records = legacy.len(),
                members = view.members.len(),
                "rewrote the membership history in the current format"
            );
        }
        // The records as persisted (not as the endings make them count): the core applies the
        // endings itself.
        let latest = View::from_members(records);
        let known = Known {
            members: latest.members.into_values().collect(),
            ended,
        };
        Ok((History, known))
    }

    /// Keeps one applied record (the member's latest).
    pub fn append(&mut self, engine: &dyn Engine, member: &Member) -> Result<(), StorageError> {
        engine.put(Space::Meta, &member_key(&member.id), &encode(member))
    }

    /// Keeps one ending, for good.
    pub fn append_ended(&mut self, engine: &dyn Engine, ended: &Ended) -> Result<(), StorageError> {
        let bytes = postcard::to_allocvec(ended).unwrap_or_default();
        engine.put(Space::Meta, &ended_key(ended), &bytes)
    }
}

fn encode(m: &Member) -> Vec<u8> {
    postcard::to_allocvec(m).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamokv_core::membership::Ending;
    use dynamokv_storage::MemoryEngine;
    use serde::Serialize;

    fn m(id: &str, generation: u64) -> Member {
        Member {
            id: id.into(),
            generation,
            version: 1,
            status: Status::Up,
            peer_addr: format!("{id}:{generation}"),
            http_addr: String::new(),
            tokens: vec![1],
            instance: 0,
            epoch: generation,
        }
    }

    #[test]
    fn keeps_the_latest_record_of_each_member_and_every_ending() {
        let e = MemoryEngine::new();
        let (mut h, known) = History::load(&e).unwrap();
        assert_eq!(known, Known::default());
        for g in 1..=30 {
            h.append(&e, &m("a", g)).unwrap();
            h.append(&e, &m("b", g)).unwrap();
        }
        let gone = Ended {
            id: "c".into(),
            instance: 9,
            how: Ending::Removed,
            by: "a".into(),
        };
        h.append_ended(&e, &gone).unwrap();
        h.append_ended(&e, &gone).unwrap();
        e.put(Space::Meta, b"other-key", b"x").unwrap();
        let (_, known) = History::load(&e).unwrap();
        assert_eq!(known.members, vec![m("a", 30), m("b", 30)]);
        assert_eq!(known.ended, vec![gone.clone()]);
        assert_eq!(scan(&e, MEMBERS).unwrap().len(), 2, "one record per member");
        assert_eq!(known.ending("c", 9), Some(&gone));
        assert_eq!(known.own("a").map(|m| m.generation), Some(30));
    }

    #[derive(Serialize)]
    struct Legacy<'a> {
        id: &'a str,
        generation: u64,
        version: u64,
        status: Status,
        peer_addr: &'a str,
        http_addr: &'a str,
        tokens: Vec<u64>,
        instance: u64,
    }

    #[test]
    fn a_history_of_the_first_format_is_read_and_rewritten() {
        let e = MemoryEngine::new();
        for (seq, (id, generation)) in [("a", 1), ("a", 2), ("b", 1)].into_iter().enumerate() {
            let mut k = LEGACY.to_vec();
            k.extend_from_slice(&(seq as u64).to_be_bytes());
            let old = Legacy {
                id,
                generation,
                version: 1,
                status: Status::Up,
                peer_addr: "p",
                http_addr: "h",
                tokens: vec![7],
                instance: 3,
            };
            e.put(Space::Meta, &k, &postcard::to_allocvec(&old).unwrap())
                .unwrap();
        }
        let (_, known) = History::load(&e).unwrap();
        let summary: Vec<(String, u64, u64)> = known
            .members
            .iter()
            .map(|m| (m.id.clone(), m.generation, m.epoch))
            .collect();
        assert_eq!(summary, vec![("a".into(), 2, 0), ("b".into(), 1, 0)]);
        assert!(scan(&e, LEGACY).unwrap().is_empty(), "the old log is gone");
        assert_eq!(
            History::load(&e).unwrap().1,
            known,
            "and the new form holds it"
        );
    }
}
