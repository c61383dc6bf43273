//! Listing keys: a coverage query (Riak's coverage plans) over the node's key index, with its
//! own message family ([`ListMessage`]).
//!
//! The node that receives a listing coordinates it (it is never forwarded):
//! - **Coverage plan** ([`coverage`]): every range of the current ring goes to its first
//!   replica that is up, so each key is asked of exactly one node; a range with no replica up
//!   fails the page ([`OpError::ListingIncomplete`]).
//! - **Parts** ([`part`]): each node of the plan walks its key index (keys holding a live value,
//!   in key order) from `after`, keeps the keys of its assigned ranges, and stops at `limit` keys,
//!   at [`PART_BYTES`] of keys, or after [`SCAN_PER_KEY`] index entries per key asked for (at
//!   most [`SCAN_PER_PART`]; with objects, at [`OBJECTS_PER_PART`]); it says how far it looked
//!   (`upto`). Parts are read on the node thread: these bounds keep one from holding up the
//!   node's other requests for long.
//! - **Merge** ([`merge`]): the keys up to the nearest `upto` are complete; the first `limit` of
//!   them, in key order, are the page, and `next` is where the next page starts.
//!
//! A page costs in proportion to its size (times N at most, the index entries of ranges assigned
//! to other nodes), not to the store. Consistency: a key is listed when the replica covering its
//! range holds a live value for it; a key written at W below N may be missed until anti-entropy
//! or read repair reaches that replica, and a deleted key may show until its tombstone does.

use super::outbox::{Origin, Outbox};
use crate::merkle::Range;
use crate::message::{ListMessage, ListPart, OpError, Reply};
use crate::ring::{Ring, position};
use crate::store::{LocalStore, StoreError};
use crate::version::Object;
use std::collections::{BTreeMap, BTreeSet};

/// Most keys a page may ask for.
pub const MAX_LIMIT: u32 = 10_000;
/// Most bytes of keys in one node's part (a part stops early beyond it).
pub const PART_BYTES: usize = 4 << 20;
/// Index entries a node reads per key asked for, at most (with N replicas, about N per key
/// are read on average: the others belong to ranges assigned elsewhere).
pub const SCAN_PER_KEY: usize = 16;
/// Index entries one part reads at most, whatever the page size: a part is read on the node
/// thread, so this bounds how long one holds up the node's requests.
pub const SCAN_PER_PART: usize = 8192;
/// Objects one part reads at most (a point read each, on the node thread): a backup's page of
/// 1 000 held requests up for milliseconds, and their p99 rose sevenfold (bench/backup.sh).
pub const OBJECTS_PER_PART: usize = 128;

/// The ranges of a coverage plan assigned to one node, for fast membership tests.
#[derive(Debug, Clone, Default)]
pub struct Assigned {
    /// Non-wrapping ranges by end: `end -> start` (start exclusive, end inclusive).
    by_end: BTreeMap<u64, u64>,
    /// The range that wraps past the top of the ring, if assigned.
    wrap: Option<Range>,
    /// Every position (a ring of one token).
    all: bool,
}

impl Assigned {
    /// The ranges `(start exclusive, end inclusive)`.
    pub fn new(ranges: &[(u64, u64)]) -> Assigned {
        let mut a = Assigned::default();
        for &(start, end) in ranges {
            if start == end {
                a.all = true;
            } else if start > end {
                a.wrap = Some(Range { start, end });
            } else {
                a.by_end.insert(end, start);
            }
        }
        a
    }

    /// Whether ring position `pos` lies in one of the ranges.
    pub fn contains(&self, pos: u64) -> bool {
        if self.all {
            return true;
        }
        if let Some((&end, &start)) = self.by_end.range(pos..).next()
            && start < pos
            && pos <= end
        {
            return true;
        }
        self.wrap.is_some_and(|r| pos > r.start || pos <= r.end)
    }
}

/// Every range of `ring` assigned to its first replica (of `n`) that `is_up`: node -> ranges.
/// `Err` with a range no replica of which is up.
pub fn coverage(
    ring: &Ring,
    n: usize,
    is_up: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, Vec<(u64, u64)>>, Range> {
    let mut plan: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for range in ring.ranges() {
        let Some(node) = ring.walk(range.end, n).into_iter().find(|id| is_up(id)) else {
            return Err(range);
        };
        plan.entry(node.to_owned())
            .or_default()
            .push((range.start, range.end));
    }
    Ok(plan)
}

/// What a page asks of each node.
#[derive(Debug, Clone)]
pub struct Ask {
    /// Only keys starting with these bytes.
    pub prefix: Vec<u8>,
    /// Only keys after this one.
    pub after: Option<Vec<u8>>,
    /// Most keys.
    pub limit: usize,
    /// Also each key's object.
    pub objects: bool,
    /// This node's wall clock, ms since the Unix epoch: keys whose values all expired by then
    /// are left out.
    pub now: u64,
}

/// This node's part: up to `limit` of its keys in `ranges` starting with `prefix`, after
/// `after` (with their objects when asked), and how far it looked.
pub fn part<S: LocalStore>(
    store: &S,
    ask: &Ask,
    ranges: &Assigned,
) -> Result<ListPart, StoreError> {
    let prefix = &ask.prefix[..];
    let limit = if ask.objects {
        ask.limit.min(OBJECTS_PER_PART)
    } else {
        ask.limit
    };
    let budget = limit.saturating_mul(SCAN_PER_KEY).clamp(256, SCAN_PER_PART);
    let (mut keys, mut objects, mut bytes, mut scanned) = (Vec::new(), Vec::new(), 0usize, 0usize);
    let mut cursor: Option<Vec<u8>> = ask.after.clone();
    loop {
        let want = (budget - scanned).min(1024);
        let page = store.list_keys(cursor.as_deref(), prefix, want)?;
        let full = page.len() == want;
        for (key, expires) in page {
            scanned += 1;
            let expired = expires.is_some_and(|d| ask.now >= d);
            if !expired && ranges.contains(position(&key)) {
                bytes += key.len();
                if ask.objects {
                    // The index may hold a key a moment longer than its value.
                    let Some(object) = store.get(&key)?.filter(|o| !o.dead_at(ask.now)) else {
                        cursor = Some(key);
                        continue;
                    };
                    bytes += object.size_bytes();
                    objects.push(object);
                }
                keys.push(key.clone());
                if keys.len() >= limit || bytes >= PART_BYTES {
                    return Ok(ListPart {
                        keys,
                        objects,
                        upto: Some(key),
                    });
                }
            }
            cursor = Some(key);
        }
        if !full {
            return Ok(ListPart {
                keys,
                objects,
                upto: None,
            });
        }
        if scanned >= budget {
            return Ok(ListPart {
                keys,
                objects,
                upto: cursor,
            });
        }
    }
}

/// The page made of every node's part: the keys up to the nearest `upto` (complete there), the
/// first `limit` of them in key order (with their objects, when the parts have them), and where
/// the next page starts (`None`: done).
pub fn merge(parts: Vec<ListPart>, limit: usize) -> (Vec<Vec<u8>>, Vec<Object>, Option<Vec<u8>>) {
    let bound = parts.iter().filter_map(|p| p.upto.clone()).min();
    let mut entries: Vec<(Vec<u8>, Option<Object>)> = Vec::new();
    for p in parts {
        let mut objects = p.objects.into_iter();
        for key in p.keys {
            let object = objects.next();
            if bound.as_ref().is_none_or(|b| &key <= b) {
                entries.push((key, object));
            }
        }
    }
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|a, b| a.0 == b.0);
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next = if more {
        entries.last().map(|(k, _)| k.clone())
    } else {
        bound
    };
    let (keys, objects): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
    (keys, objects.into_iter().flatten().collect(), next)
}

/// A page being gathered.
#[derive(Debug)]
struct Pending {
    origin: Origin,
    limit: usize,
    /// Nodes not heard from yet.
    waiting: BTreeSet<String>,
    parts: Vec<ListPart>,
    deadline: u64,
}

/// The listings coordinated here.
#[derive(Debug, Default)]
pub struct Listing {
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
}

/// What a listing coordinator needs of its node.
pub struct Plan<'a> {
    /// This node's id.
    pub me: &'a str,
    /// The current ring.
    pub ring: &'a Ring,
    /// Replicas per key.
    pub n: usize,
    /// When the page gives up on silent nodes (monotonic ms).
    pub deadline: u64,
}

impl Listing {
    /// Starts a page for `origin`: asks every node of the coverage plan for its part (this node
    /// answers its own at once).
    pub fn start<S: LocalStore>(
        &mut self,
        store: &S,
        plan: &Plan<'_>,
        is_up: impl Fn(&str) -> bool,
        origin: Origin,
        ask: Ask,
        out: &mut Outbox,
    ) {
        let limit = ask.limit;
        if limit == 0 || limit > MAX_LIMIT as usize {
            let why = format!("limit={limit} is not allowed: use 1 to {MAX_LIMIT}");
            return out.respond(origin, Err(OpError::BadRequest(why)));
        }
        if plan.ring.is_empty() {
            return out.respond(origin, Err(OpError::NoRing));
        }
        let assigned = match coverage(plan.ring, plan.n, |id| id == plan.me || is_up(id)) {
            Ok(a) => a,
            Err(range) => {
                let reason = format!(
                    "no replica of the range ({}, {}] is up",
                    range.start, range.end
                );
                return out.respond(origin, Err(OpError::ListingIncomplete { reason }));
            }
        };
        self.next_id += 1;
        let id = self.next_id;
        let mut pending = Pending {
            origin,
            limit,
            waiting: BTreeSet::new(),
            parts: Vec::new(),
            deadline: plan.deadline,
        };
        for (node, ranges) in assigned {
            if node == plan.me {
                let mine = part(store, &ask, &Assigned::new(&ranges));
                match mine {
                    Ok(p) => pending.parts.push(p),
                    Err(e) => {
                        let reason = format!("{}: {e}", plan.me);
                        let err = OpError::ListingIncomplete { reason };
                        return out.respond(pending.origin, Err(err));
                    }
                }
            } else {
                out.send(
                    &node,
                    ListMessage::Ask {
                        id,
                        prefix: ask.prefix.clone(),
                        after: ask.after.clone(),
                        limit: limit as u32,
                        ranges,
                        objects: ask.objects,
                    },
                );
                pending.waiting.insert(node);
            }
        }
        self.pending.insert(id, pending);
        self.finish_if_done(id, out);
    }

    /// A message of the `List` family from `from`.
    pub fn on_message<S: LocalStore>(
        &mut self,
        store: &S,
        now: u64,
        from: &str,
        message: ListMessage,
        out: &mut Outbox,
    ) {
        match message {
            ListMessage::Ask {
                id,
                prefix,
                after,
                limit,
                ranges,
                objects,
            } => {
                let ask = Ask {
                    prefix,
                    after,
                    limit: limit.clamp(1, MAX_LIMIT) as usize,
                    objects,
                    now,
                };
                // At most one range per token of the ring: a peer cannot make this node build
                // more than the ring has.
                let ranges = &ranges[..ranges.len().min(1 << 16)];
                let result = part(store, &ask, &Assigned::new(ranges)).map_err(|e| e.to_string());
                out.send(from, ListMessage::Answer { id, result });
            }
            ListMessage::Answer { id, result } => {
                let Some(p) = self.pending.get_mut(&id) else {
                    return;
                };
                if !p.waiting.remove(from) {
                    return;
                }
                match result {
                    Ok(part) => p.parts.push(part),
                    Err(e) => {
                        if let Some(p) = self.pending.remove(&id) {
                            let reason = format!("{from}: {e}");
                            out.respond(p.origin, Err(OpError::ListingIncomplete { reason }));
                        }
                        return;
                    }
                }
                self.finish_if_done(id, out);
            }
        }
    }

    /// Gives up on the pages whose nodes stayed silent past their deadline.
    pub fn expire(&mut self, now: u64, out: &mut Outbox) {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(p) = self.pending.remove(&id) {
                let silent: Vec<String> = p.waiting.into_iter().collect();
                let reason = format!("{} did not answer in time", silent.join(", "));
                out.respond(p.origin, Err(OpError::ListingIncomplete { reason }));
            }
        }
    }

    fn finish_if_done(&mut self, id: u64, out: &mut Outbox) {
        if self.pending.get(&id).is_some_and(|p| p.waiting.is_empty())
            && let Some(p) = self.pending.remove(&id)
        {
            let (keys, objects, next) = merge(p.parts, p.limit);
            out.respond(
                p.origin,
                Ok(Reply::Keys {
                    keys,
                    objects,
                    next,
                }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::hashed_tokens;

    fn part_of(keys: &[&str], upto: Option<&str>) -> ListPart {
        ListPart {
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            objects: Vec::new(),
            upto: upto.map(|u| u.as_bytes().to_vec()),
        }
    }

    fn strings(keys: Vec<Vec<u8>>) -> Vec<String> {
        keys.into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .collect()
    }

    #[test]
    fn merge_keeps_only_what_every_part_covers() {
        // One part stopped at "c": keys past it may be missing from it, so they wait.
        let (keys, _, next) = merge(
            vec![part_of(&["a", "c"], Some("c")), part_of(&["b", "d"], None)],
            10,
        );
        assert_eq!(strings(keys), ["a", "b", "c"]);
        assert_eq!(next.as_deref(), Some(&b"c"[..]));
        // Everything complete: no next page.
        let (keys, _, next) = merge(vec![part_of(&["b"], None), part_of(&["a"], None)], 10);
        assert_eq!(strings(keys), ["a", "b"]);
        assert_eq!(next, None);
        // More than the limit: the page ends at its last key.
        let (keys, _, next) = merge(vec![part_of(&["a", "b", "c"], None)], 2);
        assert_eq!(strings(keys), ["a", "b"]);
        assert_eq!(next.as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn a_coverage_plan_covers_every_position_once_and_skips_down_nodes() {
        let members: BTreeMap<String, Vec<u64>> = (0..4)
            .map(|i| (format!("n{i}"), hashed_tokens(&format!("n{i}"), 8)))
            .collect();
        let ring = Ring::new(&members).unwrap();
        for down in [None, Some("n2")] {
            let plan = coverage(&ring, 3, |id| Some(id) != down).unwrap();
            assert!(down.is_none_or(|d| !plan.contains_key(d)));
            let assigned: Vec<Assigned> = plan.values().map(|r| Assigned::new(r)).collect();
            for i in 0..2_000u64 {
                let pos = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let covering = assigned.iter().filter(|a| a.contains(pos)).count();
                assert_eq!(covering, 1, "position {pos} with {down:?} down");
            }
        }
        assert!(
            coverage(&ring, 2, |id| id == "n0").is_err(),
            "a range with no replica up"
        );
    }
}
