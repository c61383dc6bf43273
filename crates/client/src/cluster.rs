//! A client for a whole cluster, routing each request itself.

use crate::suspects::Suspects;
use crate::{Client, ClientError, KeyPage, ReadResult, WriteResult, http_client};
use dynamokv_core::membership::ring_of;
use dynamokv_core::node::RingInfo;
use dynamokv_core::preference::preference_list;
use dynamokv_core::ring::{Ring, RingError};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How requests find their coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Send to any node (round-robin over the given ones); the node forwards to the
    /// coordinator when it is not one (Dynamo's "Solution 1", what a load balancer does).
    AnyNode,
    /// Compute the preference list from the ring and send straight to the first reachable
    /// primary (Dynamo's "Solution 2", partition-aware client).
    Client,
}

/// The ring a node's `/admin/ring` answer describes: built by the same function the nodes use
/// ([`ring_of`]), so the client routes by exactly the nodes' ring and its version matches theirs.
pub fn ring_of_info(info: &RingInfo) -> Result<Ring, RingError> {
    ring_of(info.members.iter().map(|m| &m.member))
}

/// How long one node gets to answer before the next candidate is tried, unless set with
/// [`ClusterClient::with_attempt_timeout`].
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Route {
    version: Option<String>,
    ring: Option<Ring>,
    n: usize,
    nodes: BTreeMap<String, Client>,
    stale: bool,
}

/// Hedged reads: recent reads' latencies, and the budget that bounds hedging.
#[derive(Debug, Default)]
struct Hedging {
    /// The latest read latencies, in microseconds (a ring of [`HEDGE_WINDOW`]).
    recent: std::collections::VecDeque<u32>,
    /// The wait before a read is also sent to the next candidate, microseconds (0: not yet
    /// known, no hedging).
    after_us: u64,
    /// Hedges that may still be sent: each read adds [`HEDGE_SHARE`], a hedge takes 1.
    budget: f64,
    /// Reads sent to a second node so far.
    sent: u64,
    /// Reads recorded so far.
    count: u64,
}

/// Reads whose latencies set the hedging threshold.
const HEDGE_WINDOW: usize = 512;
/// The share of reads that may be hedged: at most one read in ten is sent twice.
const HEDGE_SHARE: f64 = 0.1;

impl Hedging {
    /// Records a read that took `us`; every 64 reads, the threshold becomes the 95th
    /// percentile of the window.
    fn record(&mut self, us: u64) {
        self.recent.push_back(us.min(u64::from(u32::MAX)) as u32);
        if self.recent.len() > HEDGE_WINDOW {
            self.recent.pop_front();
        }
        self.budget = (self.budget + HEDGE_SHARE).min(10.0);
        self.count += 1;
        if self.recent.len() >= 64 && self.count.is_multiple_of(64) {
            let mut sorted: Vec<u32> = self.recent.iter().copied().collect();
            sorted.sort_unstable();
            self.after_us = u64::from(sorted[sorted.len() * 95 / 100]).max(500);
        }
    }

    /// Whether a read that has waited its threshold may be hedged now (taking the budget).
    fn take(&mut self) -> bool {
        if self.after_us == 0 || self.budget < 1.0 {
            return false;
        }
        self.budget -= 1.0;
        self.sent += 1;
        true
    }
}

/// A cluster client: [`Routing::AnyNode`] or partition-aware [`Routing::Client`].
///
/// Reads are hedged: a read whose node has not answered within the 95th percentile of recent
/// reads is also sent to the next candidate, and the first answer is taken - a slow node (a
/// slow disk, a pause) costs a read that percentile, not its whole slowness. At most one read
/// in ten is hedged, so hedging cannot double the load.
///
/// Each request goes to the best candidate first and, when a node does not answer within the
/// attempt timeout ([`ATTEMPT_TIMEOUT`] by default) or cannot be reached, on to the next one;
/// such a node is skipped for a while ([`Suspects`]), so a paused or dead node costs one
/// attempt per while, not one per request. A write retried on another node after a timeout may
/// have been applied by the first one as well: both descend from the same context, so at worst
/// they are siblings of one value, which the next write with a read's context replaces.
pub struct ClusterClient {
    seeds: Vec<Client>,
    routing: Routing,
    http: reqwest::Client,
    route: Mutex<Route>,
    suspects: Suspects,
    attempt_timeout: Duration,
    hedging: Mutex<Hedging>,
    next: AtomicUsize,
}

impl ClusterClient {
    /// A client for the cluster reachable at `urls` (one is enough). With [`Routing::Client`]
    /// it fetches the ring first.
    pub async fn connect(urls: &[String], routing: Routing) -> Result<Self, ClientError> {
        let http = http_client()?;
        let seeds = urls
            .iter()
            .map(|u| Client::with_http(http.clone(), u))
            .collect::<Result<Vec<_>, _>>()?;
        if seeds.is_empty() {
            return Err(ClientError::BadUrl(String::new()));
        }
        let c = Self {
            seeds,
            routing,
            http,
            route: Mutex::new(Route::default()),
            suspects: Suspects::new(),
            attempt_timeout: ATTEMPT_TIMEOUT,
            hedging: Mutex::new(Hedging::default()),
            next: AtomicUsize::new(0),
        };
        if routing == Routing::Client {
            c.refresh().await?;
        }
        Ok(c)
    }

    /// The routing in use.
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// Gives each node `timeout` to answer before the next candidate is tried.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Reads sent to a second node because the first was slow to answer, so far.
    pub fn hedged_reads(&self) -> u64 {
        self.lock_hedging().sent
    }

    fn lock_hedging(&self) -> std::sync::MutexGuard<'_, Hedging> {
        self.hedging.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The nodes (URLs) skipped at this moment because they timed out or could not be reached.
    pub fn skipped(&self) -> Vec<String> {
        self.suspects.skipped()
    }

    /// The ring version the client routes by, if it has fetched one.
    pub fn ring_version(&self) -> Option<String> {
        self.lock_route().version.clone()
    }

    fn lock_route(&self) -> std::sync::MutexGuard<'_, Route> {
        self.route.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches the ring from the first node that answers.
    pub async fn refresh(&self) -> Result<(), ClientError> {
        let known: Vec<Client> = {
            let route = self.lock_route();
            route.nodes.values().cloned().collect()
        };
        let mut last = None;
        for node in self.seeds.iter().chain(known.iter()) {
            match node.ring().await {
                Ok(info) => {
                    let ring = ring_of_info(&info)
                        .map_err(|e| ClientError::Protocol(format!("bad ring: {e}")))?;
                    let mut nodes = BTreeMap::new();
                    let scheme = crate::tls::scheme_of(node.base_url());
                    for m in &info.members {
                        let url = format!("{scheme}://{}", m.member.http_addr);
                        nodes.insert(
                            m.member.id.clone(),
                            Client::with_http(self.http.clone(), &url)?,
                        );
                    }
                    let mut route = self.lock_route();
                    *route = Route {
                        version: Some(info.version),
                        ring: Some(ring),
                        n: usize::from(info.n),
                        nodes,
                        stale: false,
                    };
                    return Ok(());
                }
                Err(e) => {
                    if matches!(e, ClientError::Unreachable { .. }) {
                        self.suspects.failed(node.base_url());
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Protocol("no node to ask for the ring".into())))
    }

    /// The nodes to try for `key`, best first.
    fn candidates(&self, key: &[u8]) -> Vec<Client> {
        let mut out: Vec<Client> = Vec::new();
        if self.routing == Routing::Client {
            let route = self.lock_route();
            if let Some(ring) = &route.ring {
                for id in preference_list(ring, key, route.n, |_| true).primaries {
                    if let Some(c) = route.nodes.get(&id) {
                        out.push(c.clone());
                    }
                }
            }
        }
        // Whether to skip each node, asked once per node (the answer may let a probe through).
        let mut skip: BTreeMap<String, bool> = BTreeMap::new();
        for c in out.iter().chain(&self.seeds) {
            skip.entry(c.base_url().to_owned())
                .or_insert_with(|| self.suspects.skip(c.base_url()));
        }
        let skipped = |c: &Client| skip.get(c.base_url()).copied().unwrap_or(false);
        // The given nodes in turn, from the next one in rotation among those not skipped: a
        // skipped node's share spreads over all the others, not onto the one after it.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let usable: Vec<&Client> = self.seeds.iter().filter(|c| !skipped(c)).collect();
        for i in 0..usable.len() {
            out.push(usable[(start + i) % usable.len()].clone());
        }
        out.extend(self.seeds.iter().filter(|c| skipped(c)).cloned());
        // Nodes not skipped first, in order; skipped ones last, as a last resort.
        let (up, down): (Vec<Client>, Vec<Client>) = out.into_iter().partition(|c| !skipped(c));
        let mut seen = std::collections::BTreeSet::new();
        up.into_iter()
            .chain(down)
            .filter(|c| seen.insert(c.base_url().to_owned()))
            .collect()
    }

    fn note_version(&self, version: Option<&String>) {
        if self.routing != Routing::Client {
            return;
        }
        let mut route = self.lock_route();
        if version.is_some() && version != route.version.as_ref() {
            route.stale = true;
        }
    }

    async fn refresh_if_stale(&self) {
        let stale = self.lock_route().stale;
        if stale && self.refresh().await.is_err() {
            // Keep routing with the old ring; nodes forward when it is wrong.
            self.lock_route().stale = false;
        }
    }

    /// Runs `op` against the candidates for `key` until one answers within the attempt
    /// timeout; a node that times out or cannot be reached is skipped for a while.
    async fn with_fallback<T, F, Fut>(&self, key: &[u8], op: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        self.refresh_if_stale().await;
        self.in_order(self.candidates(key), None, op).await
    }

    /// Runs `op` against `nodes` in order until one answers within the attempt timeout (`last`:
    /// the error of an earlier attempt, if any).
    async fn in_order<T, F, Fut>(
        &self,
        nodes: Vec<Client>,
        mut last: Option<ClientError>,
        op: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        for node in nodes {
            let url = node.base_url().to_owned();
            let answer = tokio::time::timeout(self.attempt_timeout, op(node)).await;
            match self.settle(&url, answer) {
                Ok(answer) => return answer,
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Protocol("no node to send to".into())))
    }

    /// What an attempt on `url` came to: `Ok` with the answer to give (the node answered), or
    /// `Err` with why the next node should be tried; a node that timed out or could not be
    /// reached is skipped for a while.
    fn settle<T>(
        &self,
        url: &str,
        answer: Result<Result<T, ClientError>, tokio::time::error::Elapsed>,
    ) -> Result<Result<T, ClientError>, ClientError> {
        match answer {
            Err(_) => {
                self.suspects.failed(url);
                Err(ClientError::TimedOut {
                    url: url.to_owned(),
                    after_ms: self.attempt_timeout.as_millis() as u64,
                })
            }
            Ok(Err(e @ ClientError::Unreachable { .. })) => {
                self.suspects.failed(url);
                Err(e)
            }
            // Its disk is full: it refused the write without applying it; it still serves
            // reads, so it is not skipped.
            Ok(Err(e @ ClientError::Api { status: 507, .. })) => Err(e),
            Ok(answer) => {
                self.suspects.answered(url);
                Ok(answer)
            }
        }
    }

    /// A read: as [`Self::with_fallback`], and hedged - when the first node has not answered
    /// within the hedging threshold (and the budget allows), the second is asked too and the
    /// first good answer is taken.
    async fn hedged<T, F, Fut>(&self, key: &[u8], op: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        self.refresh_if_stale().await;
        let mut nodes = self.candidates(key);
        let after = Duration::from_micros(self.lock_hedging().after_us);
        if nodes.len() < 2 || after.is_zero() {
            let started = std::time::Instant::now();
            let answer = self.in_order(nodes, None, op).await;
            if answer.is_ok() {
                self.lock_hedging()
                    .record(started.elapsed().as_micros() as u64);
            }
            return answer;
        }
        let rest = nodes.split_off(2);
        let (second, first) = (nodes.pop(), nodes.pop());
        let (Some(first), Some(second)) = (first, second) else {
            return self.in_order(rest, None, op).await;
        };
        let (url1, url2) = (first.base_url().to_owned(), second.base_url().to_owned());
        let started = std::time::Instant::now();
        let mut one = Box::pin(tokio::time::timeout(self.attempt_timeout, op(first)));
        let waited = tokio::select! {
            answer = &mut one => Some(answer),
            () = tokio::time::sleep(after) => None,
        };
        let last = match waited {
            Some(answer) => match self.settle(&url1, answer) {
                Ok(answer) => {
                    self.lock_hedging()
                        .record(started.elapsed().as_micros() as u64);
                    return answer;
                }
                Err(e) => Some(e),
            },
            None if !self.lock_hedging().take() => match self.settle(&url1, one.await) {
                Ok(answer) => {
                    self.lock_hedging()
                        .record(started.elapsed().as_micros() as u64);
                    return answer;
                }
                Err(e) => Some(e),
            },
            None => {
                // Both asked; the first good answer wins.
                let mut two = Box::pin(tokio::time::timeout(
                    self.attempt_timeout,
                    op(second.clone()),
                ));
                let (winner, loser) = tokio::select! {
                    a = &mut one => ((url1.clone(), a), 2),
                    b = &mut two => ((url2.clone(), b), 1),
                };
                let (url, answer) = winner;
                match self.settle(&url, answer) {
                    Ok(answer) => {
                        self.lock_hedging()
                            .record(started.elapsed().as_micros() as u64);
                        return answer;
                    }
                    Err(_) => {
                        let (url, answer) = if loser == 2 {
                            (url2.clone(), two.await)
                        } else {
                            (url1.clone(), one.await)
                        };
                        match self.settle(&url, answer) {
                            Ok(answer) => return answer,
                            Err(e) => {
                                return self.in_order(rest, Some(e), op).await;
                            }
                        }
                    }
                }
            }
        };
        // The first node failed without a hedge: the second, then the rest.
        let mut nodes = vec![second];
        nodes.extend(rest);
        self.in_order(nodes, last, op).await
    }

    /// A page of the cluster's keys holding a live value (see [`Client::list`]), from the
    /// first node that answers.
    pub async fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<KeyPage, ClientError> {
        self.in_order(self.candidates(prefix), None, |c| async move {
            c.list(prefix, after, limit).await
        })
        .await
    }

    /// Reads `key` (quorum `r`, default the cluster's R).
    pub async fn get(&self, key: &[u8], r: Option<u8>) -> Result<ReadResult, ClientError> {
        let res = self
            .hedged(key, |c| async move { c.get_with(key, r).await })
            .await?;
        self.note_version(res.ring_version.as_ref());
        Ok(res)
    }

    /// Writes `value` under `key` (`None`: delete) with `context` and quorum `w`.
    pub async fn write(
        &self,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: Option<&str>,
        w: Option<u8>,
    ) -> Result<WriteResult, ClientError> {
        let res = self
            .with_fallback(key, |c| {
                let value = value.clone();
                async move { c.write_with(key, value, context, w).await }
            })
            .await?;
        self.note_version(res.ring_version.as_ref());
        Ok(res)
    }

    /// Writes `value` under `key`; returns the new context.
    pub async fn put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        context: Option<&str>,
    ) -> Result<WriteResult, ClientError> {
        self.write(key, Some(value), context, None).await
    }

    /// Writes `value` under `key`, expiring after `ttl` (see [`Client::put_expiring`]);
    /// returns the new context.
    pub async fn put_expiring(
        &self,
        key: &[u8],
        value: Vec<u8>,
        context: Option<&str>,
        ttl: std::time::Duration,
    ) -> Result<Option<String>, ClientError> {
        self.with_fallback(key, |c| {
            let value = value.clone();
            async move { c.put_expiring(key, value, context, ttl).await }
        })
        .await
    }

    /// Adds `by` to the counter at `key` (see [`Client::increment`]); its new value. Only a
    /// node that could not be reached is passed over for the next: an increment that timed
    /// out may have counted, so it is not sent again.
    pub async fn increment(&self, key: &[u8], by: i64) -> Result<i64, ClientError> {
        self.refresh_if_stale().await;
        let mut last = None;
        for c in self.candidates(key) {
            match c.increment(key, by).await {
                Err(e @ ClientError::Unreachable { .. }) => last = Some(e),
                answer => return answer,
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Protocol("no node to send to".into())))
    }

    /// The value of the counter at `key` (`None`: nothing stored there).
    pub async fn counter(&self, key: &[u8]) -> Result<Option<i64>, ClientError> {
        self.with_fallback(key, |c| async move { c.counter(key).await })
            .await
    }

    /// Deletes `key`; returns the context of the delete.
    pub async fn delete(
        &self,
        key: &[u8],
        context: Option<&str>,
    ) -> Result<WriteResult, ClientError> {
        self.write(key, None, context, None).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hedging_waits_for_a_threshold_and_stays_under_a_tenth_of_reads() {
        let mut h = Hedging::default();
        assert!(!h.take(), "no threshold before enough reads");
        for us in 1..=64u64 {
            h.record(us * 100);
        }
        assert_eq!(
            h.after_us, 6100,
            "the 95th percentile of 100 us .. 6 400 us"
        );
        // 64 reads earned 6.4 hedges: 6 may go, not 7.
        let taken = (0..10).filter(|_| h.take()).count();
        assert_eq!(taken, 6);
        assert_eq!(h.sent, 6);
        for _ in 0..1000 {
            h.record(1000);
        }
        assert!(h.budget <= 10.0, "the budget is capped");
        assert_eq!(h.after_us, 1000);
    }

    use super::*;
    use dynamokv_core::ActorId;
    use dynamokv_core::membership::{Member, Status};
    use dynamokv_core::node::{Node, NodeConfig};
    use dynamokv_core::ring::hashed_tokens;
    use dynamokv_core::testing::MemoryStore;

    fn member(id: &str, status: Status) -> Member {
        Member {
            id: id.into(),
            generation: 1,
            version: 1,
            status,
            peer_addr: format!("{id}:1"),
            http_addr: format!("{id}:2"),
            tokens: hashed_tokens(id, 8),
            instance: 0,
            epoch: 0,
        }
    }

    #[test]
    fn client_and_node_build_the_same_ring_from_every_status() {
        let me = member("n0", Status::Up);
        let mut node = Node::new(
            me,
            ActorId(1),
            NodeConfig::default(),
            MemoryStore::default(),
            1,
            &[],
            &[],
        );
        node.learn(&[
            member("n1", Status::Up),
            member("n2", Status::Joining),
            member("n3", Status::Leaving),
            member("n4", Status::Left),
        ]);
        let info = node.ring_info();
        assert_eq!(info.members.len(), 5, "the answer lists every member");
        let ring = ring_of_info(&info).unwrap();
        assert_eq!(ring.version(), node.ring().version());
        assert_eq!(format!("{:016x}", ring.version()), info.version);
        // Only members that own data are in it: up and leaving.
        assert_eq!(ring.nodes(), ["n0", "n1", "n3"]);
    }
}
