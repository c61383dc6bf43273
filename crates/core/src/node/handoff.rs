//! The hinted-handoff worker (Dynamo section 4.6): hints kept here whose owner is up again go
//! home, throttled by rate and concurrency, and each is deleted only once its owner acknowledged
//! it, and only if nothing newer arrived meanwhile.

use super::throttle::Throttle;
use super::worker::{Ctx, Worker};
use crate::message::{HandoffMessage, RequestId, WireError};
use crate::store::{Hint, LocalStore};
use crate::version::Object;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug)]
struct Delivery {
    owner: String,
    key: Vec<u8>,
    object: Object,
    deadline: u64,
}

/// Settings of the worker.
#[derive(Debug, Clone, Copy)]
pub struct HandoffConfig {
    /// How often the hint store is scanned from the start, ms.
    pub scan_interval_ms: u64,
    /// Hints handed off per second at most.
    pub rate_per_sec: u64,
    /// Deliveries in flight at most.
    pub max_in_flight: usize,
    /// How long a delivery waits for its ack, ms.
    pub timeout_ms: u64,
}

/// The worker's state: where its scan is, what is in flight, and its throttle.
#[derive(Debug)]
pub struct Handoff {
    config: HandoffConfig,
    throttle: Throttle,
    next_scan: u64,
    cursor: Option<(Vec<u8>, String)>,
    in_flight: BTreeMap<RequestId, Delivery>,
    /// (owner, key) of every delivery in flight.
    busy: BTreeSet<(String, Vec<u8>)>,
    next_id: RequestId,
    delivered: u64,
}

impl Handoff {
    /// Numbers this run's deliveries from `first` on (see [`super::Node::new`]).
    pub fn start_ids_at(&mut self, first: RequestId) {
        self.next_id = first;
    }

    /// A worker with nothing in flight.
    pub fn new(config: HandoffConfig) -> Self {
        Self {
            throttle: Throttle::new(config.rate_per_sec, config.max_in_flight),
            config,
            next_scan: 0,
            cursor: None,
            in_flight: BTreeMap::new(),
            busy: BTreeSet::new(),
            next_id: 0,
            delivered: 0,
        }
    }

    fn retire(&mut self, id: RequestId) -> Option<Delivery> {
        let d = self.in_flight.remove(&id)?;
        self.busy.remove(&(d.owner.clone(), d.key.clone()));
        Some(d)
    }

    /// The owner `from` answered delivery `id`: on success the hint is deleted, unless a newer
    /// write reached it meanwhile (then the next scan sends it again).
    pub fn on_ack<S: LocalStore>(
        &mut self,
        store: &S,
        from: &str,
        id: RequestId,
        result: Result<(), WireError>,
    ) {
        if self.in_flight.get(&id).is_some_and(|d| d.owner == from)
            && let Some(d) = self.retire(id)
            && result.is_ok()
            && store
                .remove_hint(&d.owner, &d.key, &d.object)
                .unwrap_or(false)
        {
            self.delivered += 1;
        }
    }

    /// The transport lost `node`: its deliveries are dropped (retried at a later scan).
    pub fn peer_down(&mut self, node: &str) {
        let lost: Vec<RequestId> = self
            .in_flight
            .iter()
            .filter(|(_, d)| d.owner == node)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.retire(id);
        }
    }

    /// Drops deliveries whose deadline passed (retried at a later scan); returns their owners.
    pub fn expire(&mut self, now: u64) -> Vec<String> {
        let expired: Vec<RequestId> = self
            .in_flight
            .iter()
            .filter(|(_, d)| now >= d.deadline)
            .map(|(id, _)| *id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.retire(id).map(|d| d.owner))
            .collect()
    }

    /// Time passed: sends what the throttles allow (its own and the shared background budget)
    /// of the hints whose owner is up.
    fn deliver<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>) {
        let now = ctx.now.mono;
        let store = ctx.store;
        self.throttle.refill(now);
        if now < self.next_scan {
            return;
        }
        let budget = self
            .throttle
            .budget(self.in_flight.len())
            .min(ctx.budget.budget(0));
        if budget == 0 {
            return;
        }
        // Read about what can be sent now (a few more, for hints whose owner is down).
        let page_size = (budget * 2).clamp(16, 256);
        let cursor = self.cursor.clone();
        let page = match store.scan_hints(
            cursor.as_ref().map(|(k, o)| (k.as_slice(), o.as_str())),
            page_size,
        ) {
            Ok(p) => p,
            Err(e) => {
                ctx.errors.record("hinted handoff", "scanning hints", &e);
                self.next_scan = now + self.config.scan_interval_ms;
                return;
            }
        };
        let wrapped = page.len() < page_size;
        let mut sent = 0;
        let mut last = None;
        for h in page {
            last = Some((h.key.clone(), h.owner.clone()));
            let busy = self.busy.contains(&(h.owner.clone(), h.key.clone()));
            if busy {
                continue;
            }
            if !ctx.rings.current.nodes().contains(&h.owner) {
                self.take_orphan(ctx, &h);
                continue;
            }
            if !(ctx.is_up)(&h.owner) {
                continue;
            }
            self.send(ctx, h, now);
            sent += 1;
            if sent >= budget {
                break;
            }
        }
        if sent >= budget && !wrapped {
            // More may be waiting: continue from here at the next tick.
            self.cursor = last;
        } else if wrapped && sent < budget {
            // A full pass: start over after the scan interval.
            self.cursor = None;
            self.next_scan = now + self.config.scan_interval_ms;
        } else {
            self.cursor = last;
        }
    }

    /// A hint whose owner left (or was removed) becomes this node's own copy: if this node
    /// does not own the key either, the moved-data worker hands it to every current owner and
    /// deletes it only once all of them have it (no copy is lost on the way).
    fn take_orphan<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>, h: &Hint) {
        let taken = ctx
            .store
            .merge(&h.key, &h.object)
            .and_then(|_| ctx.store.remove_hint(&h.owner, &h.key, &h.object));
        match taken {
            Ok(true) => self.delivered += 1,
            Ok(false) => {}
            Err(e) => ctx
                .errors
                .record("hinted handoff", "taking a hint of a removed owner", &e),
        }
    }

    /// Sends a hint to its owner, charged to both throttles.
    fn send<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>, h: Hint, now: u64) {
        let size = h.key.len() + h.object.size_bytes();
        self.busy.insert((h.owner.clone(), h.key.clone()));
        self.next_id += 1;
        let id = self.next_id;
        ctx.out.send(
            &h.owner,
            HandoffMessage::Deliver {
                id,
                key: h.key.clone(),
                object: h.object.clone(),
            },
        );
        self.in_flight.insert(
            id,
            Delivery {
                owner: h.owner,
                key: h.key,
                object: h.object,
                deadline: now + self.config.timeout_ms,
            },
        );
        self.throttle.spend();
        ctx.budget.spend();
        ctx.budget.spend_bytes(size);
    }

    /// Deliveries in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Hints handed back and deleted here.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }
}

impl<S: LocalStore> Worker<S> for Handoff {
    /// Hands back what the throttles allow of the hints whose owner is up.
    fn tick(&mut self, ctx: &mut Ctx<'_, S>) {
        self.deliver(ctx);
    }
}
