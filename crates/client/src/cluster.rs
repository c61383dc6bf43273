//! A client for a whole cluster, routing each request itself.

use crate::suspects::Suspects;
use crate::{Client, ClientError, ReadResult, WriteResult, http_client};
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

/// A cluster client: [`Routing::AnyNode`] or partition-aware [`Routing::Client`].
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
        let mut last = None;
        for node in self.candidates(key) {
            let url = node.base_url().to_owned();
            match tokio::time::timeout(self.attempt_timeout, op(node)).await {
                Err(_) => {
                    self.suspects.failed(&url);
                    last = Some(ClientError::TimedOut {
                        url,
                        after_ms: self.attempt_timeout.as_millis() as u64,
                    });
                }
                Ok(Err(e @ ClientError::Unreachable { .. })) => {
                    self.suspects.failed(&url);
                    last = Some(e);
                }
                // Its disk is full: it refused the write without applying it; it still
                // serves reads, so it is not skipped.
                Ok(Err(e @ ClientError::Api { status: 507, .. })) => last = Some(e),
                Ok(answer) => {
                    self.suspects.answered(&url);
                    return answer;
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Protocol("no node to send to".into())))
    }

    /// Reads `key` (quorum `r`, default the cluster's R).
    pub async fn get(&self, key: &[u8], r: Option<u8>) -> Result<ReadResult, ClientError> {
        let res = self
            .with_fallback(key, |c| async move { c.get_with(key, r).await })
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
