//! The persisted membership history: every member record the node applied, appended to the
//! metadata keyspace under `membership/` + a big-endian sequence number, postcard-encoded.
//!
//! On start the node replays it (merging by the membership CRDT rule), so a node restarted
//! without seeds still knows the cluster it was part of. When the history grows past four
//! records per member it is compacted to the current view.

use dynamokv_core::membership::{Member, View};
use dynamokv_storage::{Engine, Space, StorageError, WriteBatch};
use std::ops::Bound;

const PREFIX: &[u8] = b"membership/";

/// Appends member records to a node's history.
pub struct History {
    next_seq: u64,
}

fn key(seq: u64) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Every stored record, in order; undecodable records are skipped with a warning.
fn scan(engine: &dyn Engine) -> Result<Vec<(u64, Member)>, StorageError> {
    let mut out = Vec::new();
    let mut start = PREFIX.to_vec();
    let mut inclusive = true;
    loop {
        let from = if inclusive {
            Bound::Included(start.as_slice())
        } else {
            Bound::Excluded(start.as_slice())
        };
        let page = engine.scan(Space::Meta, from, Bound::Unbounded, 1024)?;
        let mut done = page.is_empty();
        for (k, v) in &page {
            let Some(seq) = k
                .strip_prefix(PREFIX)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
            else {
                done = true;
                break;
            };
            match postcard::from_bytes::<Member>(v) {
                Ok(m) => out.push((u64::from_be_bytes(seq), m)),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable membership record"),
            }
        }
        if done {
            return Ok(out);
        }
        if let Some((k, _)) = page.last() {
            start = k.clone();
            inclusive = false;
        }
    }
}

impl History {
    /// Loads the history: the view it adds up to, and an appender positioned after it.
    pub fn load(engine: &dyn Engine) -> Result<(History, Vec<Member>), StorageError> {
        let records = scan(engine)?;
        let next_seq = records.last().map_or(0, |(s, _)| s + 1);
        let view = View::from_members(records.iter().map(|(_, m)| m.clone()));
        let members: Vec<Member> = view.members.into_values().collect();
        let mut history = History { next_seq };
        if records.len() > 4 * members.len().max(1) + 16 {
            let mut b = WriteBatch::new();
            for (seq, _) in &records {
                b.delete(Space::Meta, key(*seq));
            }
            history.next_seq = 0;
            for m in &members {
                b.put(Space::Meta, key(history.next_seq), encode(m));
                history.next_seq += 1;
            }
            engine.write(b)?;
            tracing::info!(
                from = records.len(),
                to = members.len(),
                "compacted the membership history"
            );
        }
        Ok((history, members))
    }

    /// Appends one applied record.
    pub fn append(&mut self, engine: &dyn Engine, member: &Member) -> Result<(), StorageError> {
        engine.put(Space::Meta, &key(self.next_seq), &encode(member))?;
        self.next_seq += 1;
        Ok(())
    }
}

fn encode(m: &Member) -> Vec<u8> {
    postcard::to_allocvec(m).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamokv_core::membership::Status;
    use dynamokv_storage::MemoryEngine;

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
        }
    }

    #[test]
    fn replays_to_the_latest_records_and_compacts() {
        let e = MemoryEngine::new();
        let (mut h, known) = History::load(&e).unwrap();
        assert!(known.is_empty());
        for g in 1..=30 {
            h.append(&e, &m("a", g)).unwrap();
            h.append(&e, &m("b", g)).unwrap();
        }
        e.put(Space::Meta, b"other-key", b"x").unwrap();
        let (_, known) = History::load(&e).unwrap();
        assert_eq!(known, vec![m("a", 30), m("b", 30)]);
        assert_eq!(scan(&e).unwrap().len(), 2, "compacted");
        let (mut h, known) = History::load(&e).unwrap();
        assert_eq!(known.len(), 2);
        h.append(&e, &m("c", 1)).unwrap();
        assert_eq!(History::load(&e).unwrap().1.len(), 3);
    }
}
