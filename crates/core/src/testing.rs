//! In-memory stand-ins for what the shell provides, shared by the core's tests, the simulator
//! and the gossip measurements: a [`MemoryStore`] and a [`Network`] that delivers messages in
//! time order with optional loss, delay and cut links. Compiled for tests and with the
//! `testing` feature; the server never uses them.

use crate::message::Message;
use crate::rng::Rng;
use crate::store::{Hint, LocalStore, StoreError};
use crate::version::Object;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// Objects and hints in ordered maps, with the semantics of the real object store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: RefCell<BTreeMap<Vec<u8>, Object>>,
    hints: RefCell<BTreeMap<(Vec<u8>, String), Object>>,
}

impl MemoryStore {
    /// The stored copy of `key`, hints aside.
    pub fn object(&self, key: &[u8]) -> Option<Object> {
        self.objects.borrow().get(key).cloned()
    }

    /// Number of hints kept.
    pub fn hint_count(&self) -> usize {
        self.hints.borrow().len()
    }

    /// Forgets the copy of `key` behind the node's back, as a salvage drops an unreadable
    /// record.
    pub fn lose(&self, key: &[u8]) {
        self.objects.borrow_mut().remove(key);
    }
}

impl LocalStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Object>, StoreError> {
        Ok(self.object(key))
    }

    fn modify(
        &self,
        key: &[u8],
        f: &mut dyn FnMut(Object) -> Object,
    ) -> Result<Object, StoreError> {
        let current = self.object(key).unwrap_or_default();
        let new = f(current);
        self.objects.borrow_mut().insert(key.to_vec(), new.clone());
        Ok(new)
    }

    fn scan(
        &self,
        lo: u64,
        hi: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Object)>, StoreError> {
        let order = |k: &[u8]| (crate::ring::position(k), k.to_vec());
        let after = after.map(order);
        let mut found: Vec<((u64, Vec<u8>), Object)> = self
            .objects
            .borrow()
            .iter()
            .map(|(k, o)| (order(k), o.clone()))
            .filter(|((pos, _), _)| lo <= *pos && *pos <= hi)
            .filter(|(id, _)| after.as_ref().is_none_or(|a| id > a))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.truncate(limit);
        Ok(found.into_iter().map(|((_, k), o)| (k, o)).collect())
    }

    fn remove_if(&self, key: &[u8], expected: &Object) -> Result<bool, StoreError> {
        let mut objects = self.objects.borrow_mut();
        if objects.get(key) == Some(expected) {
            objects.remove(key);
            return Ok(true);
        }
        Ok(false)
    }

    fn list_keys(
        &self,
        after: Option<&[u8]>,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<crate::store::Listed>, StoreError> {
        let start = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_vec()),
            _ => std::ops::Bound::Included(prefix.to_vec()),
        };
        Ok(self
            .objects
            .borrow()
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, o)| o.live().next().is_some())
            .take(limit)
            .map(|(k, o)| (k.clone(), o.expires()))
            .collect())
    }

    fn put_hint(&self, owner: &str, key: &[u8], incoming: &Object) -> Result<(), StoreError> {
        let mut hints = self.hints.borrow_mut();
        let e = hints.entry((key.to_vec(), owner.to_owned())).or_default();
        *e = e.merge(incoming);
        Ok(())
    }

    fn hints_for_key(&self, key: &[u8]) -> Result<Vec<Hint>, StoreError> {
        Ok(self
            .hints
            .borrow()
            .iter()
            .filter(|((k, _), _)| k == key)
            .map(|((k, o), obj)| Hint {
                owner: o.clone(),
                key: k.clone(),
                object: obj.clone(),
            })
            .collect())
    }

    fn scan_hints(
        &self,
        after: Option<(&[u8], &str)>,
        limit: usize,
    ) -> Result<Vec<Hint>, StoreError> {
        let after = after.map(|(k, o)| (k.to_vec(), o.to_owned()));
        Ok(self
            .hints
            .borrow()
            .iter()
            .filter(|(id, _)| after.as_ref().is_none_or(|a| *id > a))
            .take(limit)
            .map(|((k, o), obj)| Hint {
                owner: o.clone(),
                key: k.clone(),
                object: obj.clone(),
            })
            .collect())
    }

    fn remove_hint(&self, owner: &str, key: &[u8], delivered: &Object) -> Result<bool, StoreError> {
        let id = (key.to_vec(), owner.to_owned());
        let mut hints = self.hints.borrow_mut();
        if hints.get(&id).is_some_and(|h| delivered.contains(h)) {
            hints.remove(&id);
            return Ok(true);
        }
        Ok(false)
    }
}

/// A message on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Sender's node id.
    pub from: String,
    /// Receiver's node id.
    pub to: String,
    /// The message.
    pub message: Message,
}

/// An in-memory network: messages are delivered in (time, send order), each after a delay
/// drawn from `delay_ms`, unless lost (`loss`) or sent over a cut link. Every random choice
/// comes from its seeded [`Rng`], so a run is repeatable.
#[derive(Debug)]
pub struct Network {
    queue: BTreeMap<(u64, u64), Envelope>,
    seq: u64,
    rng: Rng,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Smallest and largest delay of a message, ms.
    pub delay_ms: (u64, u64),
    cut: BTreeSet<(String, String)>,
    /// Messages sent (delivered or not).
    pub sent: u64,
    /// Messages lost or sent over a cut link.
    pub dropped: u64,
}

impl Network {
    /// A network with no loss and no delay.
    pub fn new(seed: u64) -> Self {
        Self {
            queue: BTreeMap::new(),
            seq: 0,
            rng: Rng::new(seed),
            loss: 0.0,
            delay_ms: (0, 0),
            cut: BTreeSet::new(),
            sent: 0,
            dropped: 0,
        }
    }

    /// Sends `message` at time `now`; returns false when it was dropped.
    pub fn send(&mut self, now: u64, from: &str, to: &str, message: Message) -> bool {
        self.sent += 1;
        if self.is_cut(from, to) || (self.loss > 0.0 && self.rng.chance(self.loss)) {
            self.dropped += 1;
            return false;
        }
        let (lo, hi) = self.delay_ms;
        let delay = if hi > lo {
            lo + self.rng.below(hi - lo + 1)
        } else {
            lo
        };
        self.seq += 1;
        self.queue.insert(
            (now + delay, self.seq),
            Envelope {
                from: from.to_owned(),
                to: to.to_owned(),
                message,
            },
        );
        true
    }

    /// The next message due at or before `until`, with its delivery time. A message whose link
    /// was cut after it was sent is dropped here.
    pub fn next_before(&mut self, until: u64) -> Option<(u64, Envelope)> {
        loop {
            let (&(t, s), _) = self.queue.iter().next()?;
            if t > until {
                return None;
            }
            let env = self.queue.remove(&(t, s))?;
            if self.is_cut(&env.from, &env.to) {
                self.dropped += 1;
                continue;
            }
            return Some((t, env));
        }
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&mut self, from: &str, to: &str) {
        self.cut.insert((from.to_owned(), to.to_owned()));
    }

    /// Cuts every link to and from `node` among `all`.
    pub fn isolate(&mut self, node: &str, all: &[String]) {
        for other in all.iter().filter(|o| *o != node) {
            self.cut(node, other);
            self.cut(other, node);
        }
    }

    /// Heals every cut link.
    pub fn heal_all(&mut self) {
        self.cut.clear();
    }

    /// Heals the links to and from `node`.
    pub fn heal(&mut self, node: &str) {
        self.cut.retain(|(a, b)| a != node && b != node);
    }

    /// Whether the link from `from` to `to` is cut.
    pub fn is_cut(&self, from: &str, to: &str) -> bool {
        self.cut.contains(&(from.to_owned(), to.to_owned()))
    }
}
