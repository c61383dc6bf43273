//! One anti-entropy session, message by message: the responder's answers (it keeps no state)
//! and the initiator's steps, down the trees to the keys that differ, then the objects.

use super::*;

impl AntiEntropy {
    /// A message of the anti-entropy family from `from`; objects it leads to sending draw on
    /// the `shared` background budget too.
    pub fn on_message<S: LocalStore>(
        &mut self,
        now: u64,
        from: &str,
        message: SyncMessage,
        shared: &mut Throttle,
        store: &S,
        out: &mut Outbox,
    ) {
        match message {
            SyncMessage::Root {
                session,
                range,
                root,
                hints,
            } => {
                self.peer_hints(from, hints);
                self.on_root(now, from, session, range, root, out)
            }
            SyncMessage::Reap { range, keys } => self.on_reap(from, range, keys, store),
            SyncMessage::Handover { id, key, object } => {
                self.on_handover(from, id, key, object, store, out)
            }
            SyncMessage::HandoverAck { id, ok } => self.on_handover_ack(from, id, ok, store),
            SyncMessage::Leaves {
                session,
                range,
                branches,
            } => self.on_leaves(from, session, range, branches, store, out),
            SyncMessage::Push {
                session,
                range,
                objects,
                want,
            } => self.on_push(from, session, range, objects, want, store, out),
            SyncMessage::RootReply {
                session,
                answer,
                hints,
            } => {
                self.peer_hints(from, hints);
                self.on_root_reply(now, from, session, answer, out)
            }
            SyncMessage::Keys {
                session,
                leaves,
                entries,
                complete,
            } => self.on_keys(
                now, from, session, leaves, entries, complete, shared, store, out,
            ),
            SyncMessage::Pull {
                session,
                objects,
                last,
            } => self.on_pull(now, from, session, objects, last, shared, store, out),
            SyncMessage::Refused { session, .. } => {
                if self.sessions.get(&session).is_some_and(|s| s.peer == from) {
                    self.end(session, End::Failed);
                }
            }
        }
    }

    /// Why this node cannot answer `from` about `range`, if it cannot.
    fn refusal(&self, from: &str, range: &Range, need_ready: bool) -> Option<String> {
        match self.trees.get(range) {
            None => Some("this node does not replicate that range".into()),
            Some(_) if !self.trees.is_peer(range, from) => {
                Some("the sender is not a replica of that range".into())
            }
            Some(t) if need_ready && !t.ready() => Some("the tree is being built".into()),
            Some(_) => None,
        }
    }

    fn on_root(
        &mut self,
        now: u64,
        from: &str,
        session: u64,
        range: Range,
        root: Hash,
        out: &mut Outbox,
    ) {
        if let Some(reason) = self.refusal(from, &range, true) {
            return out.send(from, SyncMessage::Refused { session, reason });
        }
        let Some(t) = self.trees.get_mut(&range) else {
            return;
        };
        let answer = if t.tree.root() == root {
            self.proven_equal(now, range, from, root);
            self.synchronised(range);
            RootAnswer::Equal
        } else {
            self.stats.bytes_sent += (FANOUT * 32) as u64;
            RootAnswer::Differ(t.tree.branches())
        };
        let hints = self.hints_here();
        out.send(
            from,
            SyncMessage::RootReply {
                session,
                answer,
                hints,
            },
        );
    }

    fn on_root_reply(
        &mut self,
        now: u64,
        from: &str,
        session: u64,
        answer: RootAnswer,
        out: &mut Outbox,
    ) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        if s.peer != from || s.stage != Stage::Root {
            return;
        }
        let range = s.range;
        let Some(t) = self.trees.get_mut(&range) else {
            return self.end(session, End::Failed);
        };
        match answer {
            RootAnswer::Equal => {
                let root = t.tree.root();
                self.proven_equal(now, range, from, root);
                self.end(session, End::InSync);
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
                    return self.end(session, End::Repaired);
                }
                self.stats.bytes_sent += branches
                    .iter()
                    .map(|(_, l)| l.len() * 32 + 3)
                    .sum::<usize>() as u64;
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.stage = Stage::Leaves;
                    s.deadline = now + self.config.timeout_ms;
                }
                out.send(
                    from,
                    SyncMessage::Leaves {
                        session,
                        range,
                        branches,
                    },
                );
            }
            RootAnswer::Differ(_) => self.end(session, End::Failed),
        }
    }

    fn on_leaves<S: LocalStore>(
        &mut self,
        from: &str,
        session: u64,
        range: Range,
        branches: Vec<(u16, Vec<Hash>)>,
        store: &S,
        out: &mut Outbox,
    ) {
        if let Some(reason) = self.refusal(from, &range, true) {
            return out.send(from, SyncMessage::Refused { session, reason });
        }
        let Some(t) = self.trees.get(&range) else {
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
        let (entries, complete) = match keys_in(store, range, &leaves) {
            Ok(found) => found,
            Err(e) => {
                let reason = format!("storage failure: {e}");
                return out.send(from, SyncMessage::Refused { session, reason });
            }
        };
        self.stats.bytes_sent += entries.iter().map(|(k, _)| k.len() + 18).sum::<usize>() as u64;
        out.send(
            from,
            SyncMessage::Keys {
                session,
                leaves: leaves.into_iter().map(|l| l as u16).collect(),
                entries,
                complete,
            },
        );
    }

    #[allow(clippy::too_many_arguments)] // the fields of the message, plus context
    fn on_keys<S: LocalStore>(
        &mut self,
        now: u64,
        from: &str,
        session: u64,
        leaves: Vec<u16>,
        entries: Vec<(Vec<u8>, Digest)>,
        _complete: bool, // a cut list costs only extra pushes; a later session finishes
        shared: &mut Throttle,
        store: &S,
        out: &mut Outbox,
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
        let Ok((mine, mine_complete)) = keys_in(store, range, &leaves) else {
            return self.end(session, End::Failed);
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
        if mine_complete && self.tree_disagrees(range, &leaves, &mine) {
            // This node's tree does not match its own keys: rebuild it from storage.
            self.trees.rebuild(range);
        }
        if push.is_empty() && want.is_empty() {
            return self.end(session, End::Repaired);
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.push = push;
            s.want = want;
            s.stage = Stage::Pushing { awaiting: false };
        }
        self.pump(now, session, shared, store, out);
    }

    /// Whether the tree of `range` disagrees with this node's own keys in `leaves`.
    fn tree_disagrees(
        &self,
        range: Range,
        leaves: &[usize],
        mine: &BTreeMap<Vec<u8>, Digest>,
    ) -> bool {
        let Some(t) = self.trees.get(&range) else {
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

    /// Sends the next batch of a session, if the throttle lets it; ends a session with nothing
    /// left to send.
    pub(super) fn pump<S: LocalStore>(
        &mut self,
        now: u64,
        session: u64,
        shared: &mut Throttle,
        store: &S,
        out: &mut Outbox,
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.push.is_empty() && s.want.is_empty() {
            return self.end(session, End::Repaired);
        }
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
            if let Ok(Some(o)) = store.get(&key) {
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
                self.end(session, End::Repaired);
            }
            return;
        }
        s.stage = Stage::Pushing { awaiting: true };
        s.deadline = now + self.config.timeout_ms;
        let (peer, range) = (s.peer.clone(), s.range);
        self.stats.objects_sent += objects.len() as u64;
        self.stats.bytes_sent += bytes as u64;
        out.send(
            &peer,
            SyncMessage::Push {
                session,
                range,
                objects,
                want,
            },
        );
    }

    #[allow(clippy::too_many_arguments)] // the fields of the message, plus context
    fn on_push<S: LocalStore>(
        &mut self,
        from: &str,
        session: u64,
        range: Range,
        objects: Vec<(Vec<u8>, Object)>,
        want: Vec<Vec<u8>>,
        store: &S,
        out: &mut Outbox,
    ) {
        if let Some(reason) = self.refusal(from, &range, false) {
            return out.send(from, SyncMessage::Refused { session, reason });
        }
        let mut back = Vec::new();
        for (key, object) in objects {
            if let Some(merged) = self.merge_in(store, range, &key, &object)
                && merged != object
            {
                back.push((key, merged));
            }
        }
        for key in want.into_iter().take(WANT_PER_BATCH) {
            if crate::limits::check_key(&key).is_ok()
                && range.contains(position(&key))
                && let Ok(Some(o)) = store.get(&key)
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
            out.send(
                from,
                SyncMessage::Pull {
                    session,
                    objects,
                    last,
                },
            );
        }
    }

    #[allow(clippy::too_many_arguments)] // the fields of the message, plus context
    fn on_pull<S: LocalStore>(
        &mut self,
        now: u64,
        from: &str,
        session: u64,
        objects: Vec<(Vec<u8>, Object)>,
        last: bool,
        shared: &mut Throttle,
        store: &S,
        out: &mut Outbox,
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.peer != from || s.stage != (Stage::Pushing { awaiting: true }) {
            return;
        }
        let range = s.range;
        s.deadline = now + self.config.timeout_ms;
        for (key, object) in objects {
            self.merge_in(store, range, &key, &object);
        }
        if last {
            if let Some(s) = self.sessions.get_mut(&session) {
                s.stage = Stage::Pushing { awaiting: false };
            }
            self.pump(now, session, shared, store, out);
        }
    }

    /// Merges an object another replica sent for `key` of `range`; the merged copy, or `None`
    /// when the object was refused or could not be stored.
    pub(super) fn merge_in<S: LocalStore>(
        &mut self,
        store: &S,
        range: Range,
        key: &[u8],
        object: &Object,
    ) -> Option<Object> {
        if validate(key, object, self.config.max_value_bytes).is_err()
            || !range.contains(position(key))
        {
            return None;
        }
        let mut changed = false;
        let merged = store
            .modify(key, &mut |current| {
                let merged = current.merge(object);
                changed = merged != current;
                merged
            })
            .ok()?;
        if changed {
            self.stats.keys_repaired += 1;
        }
        Some(merged)
    }
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
