//! One exchange session, message by message: the responder's answers (it keeps no state) and
//! the initiator's steps, down the trees to the keys that differ, then the objects.

use super::*;
use crate::merkle::{Digest, EMPTY, FANOUT, Hash, LEAVES, digest};
use crate::message::{RootAnswer, SyncRefusal};
use crate::node::replica::merge_from_peer;
use crate::ring::position;
use crate::version::Object;

impl Exchange {
    /// A message of the `Sync` family from `from`; objects it leads to sending draw on the
    /// shared background budget too. Sessions are scheduled again afterwards, so one that ends
    /// makes room at once.
    pub fn on_message<S: LocalStore>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: &str,
        message: SyncMessage,
    ) {
        match message {
            SyncMessage::Root {
                session,
                range,
                root,
                hints,
            } => {
                ctx.proofs.peer_hints(from, hints);
                self.on_root(ctx, from, session, range, root)
            }
            SyncMessage::Leaves {
                session,
                range,
                branches,
            } => self.on_leaves(ctx, from, session, range, branches),
            SyncMessage::Push {
                session,
                range,
                objects,
                want,
            } => self.on_push(ctx, from, session, range, objects, want),
            SyncMessage::RootReply {
                session,
                answer,
                hints,
            } => {
                ctx.proofs.peer_hints(from, hints);
                self.on_root_reply(ctx, from, session, answer)
            }
            SyncMessage::Keys {
                session,
                leaves,
                entries,
                complete,
            } => self.on_keys(ctx, from, session, leaves, entries, complete),
            SyncMessage::Pull {
                session,
                objects,
                last,
            } => self.on_pull(ctx, from, session, objects, last),
            SyncMessage::Refused { session, reason } => {
                if self.sessions.get(&session).is_some_and(|s| s.peer == from) {
                    let how = if reason.not_yet() {
                        End::Postponed
                    } else {
                        End::Failed(Failure::Refused)
                    };
                    self.end(ctx, session, how);
                }
            }
        }
        ctx.follow_writes();
        self.schedule(ctx);
    }

    /// Why this node cannot answer `from` about `range`, if it cannot.
    fn refusal<S: LocalStore>(
        ctx: &Ctx<'_, S>,
        from: &str,
        range: &Range,
        need_ready: bool,
    ) -> Option<SyncRefusal> {
        match ctx.trees.get(range) {
            None => Some(SyncRefusal::NotReplicated),
            Some(_) if !ctx.trees.is_peer(range, from) => Some(SyncRefusal::NotAPeer),
            Some(t) if need_ready && !t.ready() => Some(SyncRefusal::TreeBuilding),
            Some(_) => None,
        }
    }

    fn on_root<S: LocalStore>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: &str,
        session: u64,
        range: Range,
        root: Hash,
    ) {
        if let Some(reason) = Self::refusal(ctx, from, &range, true) {
            return ctx.out.send(from, SyncMessage::Refused { session, reason });
        }
        let Some(t) = ctx.trees.get_mut(&range) else {
            return;
        };
        let answer = if t.tree.root() == root {
            ctx.proofs.proven_equal(ctx.now.mono, range, from, root);
            ctx.proofs.synchronised(range, ctx.trees.peers());
            RootAnswer::Equal
        } else {
            self.stats.bytes_sent += (FANOUT * 32) as u64;
            RootAnswer::Differ(t.tree.branches())
        };
        let hints = ctx.proofs.keeps_hints_or_moved();
        ctx.out.send(
            from,
            SyncMessage::RootReply {
                session,
                answer,
                hints,
            },
        );
    }

    fn on_root_reply<S: LocalStore>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: &str,
        session: u64,
        answer: RootAnswer,
    ) {
        let now = ctx.now.mono;
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        if s.peer != from || s.stage != Stage::Root {
            return;
        }
        let range = s.range;
        let Some(t) = ctx.trees.get_mut(&range) else {
            // The range left this node's replicas meanwhile.
            return self.end(ctx, session, End::Postponed);
        };
        match answer {
            RootAnswer::Equal => {
                let root = t.tree.root();
                ctx.proofs.proven_equal(now, range, from, root);
                self.end(ctx, session, End::InSync);
            }
            RootAnswer::Differ(theirs) if theirs.len() == FANOUT => {
                let branches: Vec<(u16, Vec<Hash>)> = t
                    .tree
                    .differing_branches(&theirs)
                    .into_iter()
                    .map(|b| {
                        let leaves = t.tree.leaves_of(b);
                        // A branch with no key travels as an empty list.
                        let sent = if leaves.iter().all(|h| *h == EMPTY) {
                            Vec::new()
                        } else {
                            leaves.to_vec()
                        };
                        (b as u16, sent)
                    })
                    .collect();
                if branches.is_empty() {
                    // Equal by now: a write arrived meanwhile. Not a proof; next round.
                    return self.end(ctx, session, End::Repaired);
                }
                self.stats.bytes_sent += branches
                    .iter()
                    .map(|(_, l)| l.len() * 32 + 3)
                    .sum::<usize>() as u64;
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.stage = Stage::Leaves;
                    s.deadline = now + self.config.timeout_ms;
                }
                ctx.out.send(
                    from,
                    SyncMessage::Leaves {
                        session,
                        range,
                        branches,
                    },
                );
            }
            RootAnswer::Differ(_) => self.end(ctx, session, End::Failed(Failure::BadAnswer)),
        }
    }

    fn on_leaves<S: LocalStore>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: &str,
        session: u64,
        range: Range,
        branches: Vec<(u16, Vec<Hash>)>,
    ) {
        if let Some(reason) = Self::refusal(ctx, from, &range, true) {
            return ctx.out.send(from, SyncMessage::Refused { session, reason });
        }
        let Some(t) = ctx.trees.get(&range) else {
            return;
        };
        let mut leaves: Vec<usize> = Vec::new();
        let empty = [EMPTY; FANOUT];
        for (b, theirs) in branches.iter().take(FANOUT) {
            let b = usize::from(*b);
            let theirs: &[Hash] = if theirs.is_empty() { &empty } else { theirs };
            if b < FANOUT && theirs.len() == FANOUT {
                leaves.extend(t.tree.differing_leaves(b, theirs));
            }
        }
        leaves.sort_unstable();
        leaves.dedup();
        let (entries, complete) = match keys_in(ctx.store, range, &leaves) {
            Ok(found) => found,
            Err(e) => {
                ctx.errors
                    .record("anti-entropy", "listing the keys of leaves", &e);
                let reason = SyncRefusal::Storage(e.to_string());
                return ctx.out.send(from, SyncMessage::Refused { session, reason });
            }
        };
        self.stats.bytes_sent += entries.iter().map(|(k, _)| k.len() + 18).sum::<usize>() as u64;
        ctx.out.send(
            from,
            SyncMessage::Keys {
                session,
                leaves: leaves.into_iter().map(|l| l as u16).collect(),
                entries,
                complete,
            },
        );
    }

    fn on_keys<S: LocalStore>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: &str,
        session: u64,
        leaves: Vec<u16>,
        entries: Vec<(Vec<u8>, Digest)>,
        _complete: bool, // a cut list costs only extra pushes; a later session finishes
    ) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        if s.peer != from || s.stage != Stage::Leaves {
            return;
        }
        let range = s.range;
        let leaves: Vec<usize> = leaves
            .into_iter()
            .map(usize::from)
            .filter(|l| *l < LEAVES)
            .collect();
        let (mine, mine_complete) = match keys_in(ctx.store, range, &leaves) {
            Ok(found) => found,
            Err(e) => {
                ctx.errors
                    .record("anti-entropy", "listing the keys of leaves", &e);
                return self.end(ctx, session, End::Failed(Failure::Storage));
            }
        };
        let theirs: BTreeMap<Vec<u8>, Digest> = entries
            .into_iter()
            .filter(|(k, _)| crate::limits::check_key(k).is_ok() && range.contains(position(k)))
            .collect();
        let mine: BTreeMap<Vec<u8>, Digest> = mine.into_iter().collect();
        let push: VecDeque<Vec<u8>> = mine
            .iter()
            .filter(|(k, d)| theirs.get(*k) != Some(*d))
            .map(|(k, _)| k.clone())
            .collect();
        let want: VecDeque<Vec<u8>> = theirs
            .keys()
            .filter(|k| !mine.contains_key(*k))
            .cloned()
            .collect();
        if mine_complete && tree_disagrees(ctx.trees, range, &leaves, &mine) {
            // This node's tree does not match its own keys: rebuild it from storage.
            ctx.trees.rebuild(range);
        }
        if push.is_empty() && want.is_empty() {
            return self.end(ctx, session, End::Repaired);
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.push = push;
            s.want = want;
            s.stage = Stage::Pushing { awaiting: false };
        }
        self.pump(ctx, session);
    }

    /// Sends the next batch of a session, if the throttle lets it; ends a session with nothing
    /// left to send.
    pub(super) fn pump<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>, session: u64) {
        let now = ctx.now.mono;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.push.is_empty() && s.want.is_empty() {
            return self.end(ctx, session, End::Repaired);
        }
        let shared = &mut *ctx.budget;
        let mut budget = self.throttle.budget(0).min(shared.budget(0));
        if budget == 0 {
            return;
        }
        let (mut objects, mut bytes) = (Vec::new(), 0);
        while budget > 0 && bytes < BATCH_BYTES {
            let Some(key) = s.push.pop_front() else { break };
            budget -= 1;
            self.throttle.spend();
            shared.spend();
            if let Ok(Some(o)) = ctx.store.get(&key) {
                let size = o.size_bytes() + key.len();
                bytes += size;
                self.throttle.spend_bytes(size);
                shared.spend_bytes(size);
                objects.push((key, o));
            }
        }
        let mut want = Vec::new();
        while budget > 0 && want.len() < WANT_PER_BATCH {
            let Some(key) = s.want.pop_front() else { break };
            budget -= 1;
            self.throttle.spend();
            shared.spend();
            bytes += key.len() + 2;
            want.push(key);
        }
        if objects.is_empty() && want.is_empty() {
            if s.push.is_empty() && s.want.is_empty() {
                self.end(ctx, session, End::Repaired);
            }
            return;
        }
        s.stage = Stage::Pushing { awaiting: true };
        s.deadline = now + self.config.timeout_ms;
        let (peer, range) = (s.peer.clone(), s.range);
        self.stats.objects_sent += objects.len() as u64;
        self.stats.bytes_sent += bytes as u64;
        ctx.out.send(
            &peer,
            SyncMessage::Push {
                session,
                range,
                objects,
                want,
            },
        );
    }

    fn on_push<S: LocalStore>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: &str,
        session: u64,
        range: Range,
        objects: Vec<(Vec<u8>, Object)>,
        want: Vec<Vec<u8>>,
    ) {
        if let Some(reason) = Self::refusal(ctx, from, &range, false) {
            return ctx.out.send(from, SyncMessage::Refused { session, reason });
        }
        let mut back = Vec::new();
        for (key, object) in objects {
            if let Some(merged) = self.merge_in(ctx, range, &key, &object)
                && merged != object
            {
                back.push((key, merged));
            }
        }
        for key in want.into_iter().take(WANT_PER_BATCH) {
            if crate::limits::check_key(&key).is_ok()
                && range.contains(position(&key))
                && let Ok(Some(o)) = ctx.store.get(&key)
            {
                back.push((key, o));
            }
        }
        // Answer in parts of at most BATCH_BYTES (one larger object alone), the last flagged.
        let mut parts: Vec<Vec<(Vec<u8>, Object)>> = vec![Vec::new()];
        let mut bytes = 0;
        for (key, o) in back {
            let size = o.size_bytes() + key.len();
            if bytes + size > BATCH_BYTES && parts.last().is_some_and(|p| !p.is_empty()) {
                parts.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            self.stats.bytes_sent += size as u64;
            self.stats.objects_sent += 1;
            if let Some(p) = parts.last_mut() {
                p.push((key, o));
            }
        }
        let count = parts.len();
        for (i, objects) in parts.into_iter().enumerate() {
            let last = i + 1 == count;
            ctx.out.send(
                from,
                SyncMessage::Pull {
                    session,
                    objects,
                    last,
                },
            );
        }
    }

    fn on_pull<S: LocalStore>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: &str,
        session: u64,
        objects: Vec<(Vec<u8>, Object)>,
        last: bool,
    ) {
        let now = ctx.now.mono;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.peer != from || s.stage != (Stage::Pushing { awaiting: true }) {
            return;
        }
        let range = s.range;
        s.deadline = now + self.config.timeout_ms;
        for (key, object) in objects {
            self.merge_in(ctx, range, &key, &object);
        }
        if last {
            if let Some(s) = self.sessions.get_mut(&session) {
                s.stage = Stage::Pushing { awaiting: false };
            }
            self.pump(ctx, session);
        }
    }

    /// Merges an object another replica sent for `key` of `range`, counting a repair; the
    /// merged copy, or `None` when the object was refused or could not be stored.
    fn merge_in<S: LocalStore>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        range: Range,
        key: &[u8],
        object: &Object,
    ) -> Option<Object> {
        let max = self.config.max_value_bytes;
        match merge_from_peer(ctx.store, range, key, object, max) {
            Ok(Some((merged, changed))) => {
                self.stats.keys_repaired += u64::from(changed);
                Some(merged)
            }
            Ok(None) => None,
            Err(e) => {
                ctx.errors.record("anti-entropy", "merging an object", &e);
                None
            }
        }
    }
}

/// Whether the tree of `range` disagrees with this node's own keys in `leaves`.
fn tree_disagrees(
    trees: &crate::node::trees::Trees,
    range: Range,
    leaves: &[usize],
    mine: &BTreeMap<Vec<u8>, Digest>,
) -> bool {
    let Some(t) = trees.get(&range) else {
        return false;
    };
    let mut computed: BTreeMap<usize, Hash> = leaves.iter().map(|l| (*l, [0; 32])).collect();
    for (key, d) in mine {
        if let Some(h) = computed.get_mut(&range.leaf_of(position(key))) {
            let e = crate::merkle::entry_hash(key, d);
            for (a, b) in h.iter_mut().zip(e) {
                *a ^= b;
            }
        }
    }
    computed
        .iter()
        .any(|(l, h)| t.tree.leaves_of(l / FANOUT)[l % FANOUT] != *h)
}

/// Keys with the digests of their versions, and whether the list is complete.
type KeyList = (Vec<(Vec<u8>, Digest)>, bool);

/// This node's keys in `leaves` of `range`, with their digests, up to [`KEYS_BYTES`]; and
/// whether the list is complete.
fn keys_in<S: LocalStore>(
    store: &S,
    range: Range,
    leaves: &[usize],
) -> Result<KeyList, crate::store::StoreError> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for leaf in leaves {
        for (lo, hi) in range.leaf_spans(*leaf) {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = store.scan(lo, hi, after.as_deref(), 512)?;
                let full = page.len() == 512;
                after = page.last().map(|(k, _)| k.clone());
                for (key, object) in page {
                    bytes += key.len() + 18;
                    if bytes > KEYS_BYTES {
                        return Ok((out, false));
                    }
                    out.push((key, digest(&object)));
                }
                if !full {
                    break;
                }
            }
        }
    }
    Ok((out, true))
}
