//! dynamokv-client: a Rust client for the dynamokv HTTP API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dynamokv_client::ClientError> {
//! let client = dynamokv_client::Client::new("http://127.0.0.1:8080")?;
//! let ctx = client.put(b"greeting", b"hello".to_vec(), None).await?;
//! let read = client.get(b"greeting").await?;
//! assert_eq!(read.siblings[0].value, b"hello");
//! client.put(b"greeting", b"hi".to_vec(), read.context.as_deref()).await?;
//! # let _ = ctx; Ok(()) }
//! ```
//!
//! Contexts are opaque strings: pass the one from a read back with the next write of that key.
//!
//! [`Client`] talks to one node, which coordinates or forwards ("Solution 1" of the Dynamo
//! paper). [`ClusterClient`] is partition-aware ("Solution 2"): it fetches the ring from a node,
//! computes each key's preference list itself and sends the request straight to the
//! coordinator, refreshing the ring when a node reports another version and falling back to the
//! next node when one is unreachable.

pub mod cluster;
pub mod suspects;
pub mod tls;
pub use cluster::{ClusterClient, Routing};
pub use suspects::Suspects;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use std::time::Duration;

/// Bytes left unencoded in a key's path segment. `.` is encoded so `.` and `..` keys are not
/// taken for path navigation.
const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// The header carrying context tokens.
pub const CONTEXT_HEADER: &str = "x-context";

/// A hint when the answer was not HTTP at all: the URL most likely names a node's RESP or peer
/// port instead of its HTTP port.
fn not_http_hint(e: &reqwest::Error) -> &'static str {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if text.contains("invalid HTTP version") || text.contains("invalid HTTP status") {
            return " (the port answered, but not in HTTP: is it the node's RESP or peer port? \
                     --node takes a node's HTTP address, e.g. http://127.0.0.1:8080)";
        }
        source = s.source();
    }
    ""
}

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached or the connection failed; retry, perhaps on another node.
    #[error("cannot reach {url}: {source}{}", not_http_hint(source))]
    Unreachable {
        /// The node's URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The node refused the request; `code` is the stable error code.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code from the JSON body (e.g. `bad_context`, `value_too_large`).
        code: String,
        /// The node's explanation.
        message: String,
    },
    /// The node did not answer within the client's attempt timeout; retry, perhaps on another
    /// node (a write may still have been applied).
    #[error("{url} did not answer within {after_ms} ms (a paused, overloaded or cut-off node?)")]
    TimedOut {
        /// The node's URL.
        url: String,
        /// The attempt timeout.
        after_ms: u64,
    },
    /// The node answered something this client does not understand.
    #[error("unexpected answer from the node: {0}")]
    Protocol(String),
    /// The TLS files could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The base URL is not usable.
    #[error("invalid node URL {0:?}: use http://HOST:PORT")]
    BadUrl(String),
}

/// One version of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    /// The value bytes.
    pub value: Vec<u8>,
    /// Write time at the coordinator, ms since the Unix epoch.
    pub timestamp: u64,
    /// When the value expires, ms since the Unix epoch (`None`: never).
    pub expires: Option<u64>,
}

/// The result of a read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadResult {
    /// Every live version; empty when the key has no value (never written, or deleted).
    pub siblings: Vec<Sibling>,
    /// The context covering every version read; send it with the next write of the key.
    pub context: Option<String>,
    /// How many concurrent deletes are hidden among the versions.
    pub tombstones: usize,
    /// The answering node's ring version.
    pub ring_version: Option<String>,
}

/// The result of a put or delete.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteResult {
    /// The context of the new version.
    pub context: Option<String>,
    /// The answering node's ring version.
    pub ring_version: Option<String>,
}

/// The header carrying the ring version.
pub const RING_VERSION_HEADER: &str = "x-ring-version";

#[derive(Deserialize)]
struct SiblingsJson {
    siblings: Vec<SiblingJson>,
    context: Option<String>,
    #[serde(default)]
    tombstones: usize,
}

#[derive(Deserialize)]
struct SiblingJson {
    value: String,
    timestamp: u64,
    #[serde(default)]
    expires: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorJson {
    error: String,
    message: String,
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// The keys, in key order.
    pub keys: Vec<Vec<u8>>,
    /// Pass as `after` for the next page (`None`: the listing is complete).
    pub next: Option<Vec<u8>>,
}

/// A client for one node's HTTP API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

/// A connection pool with the client's timeouts.
pub fn http_client() -> Result<reqwest::Client, ClientError> {
    tls::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

/// The URL path of `key`: `/kv/` and the percent-encoded key bytes.
pub fn key_path(key: &[u8]) -> String {
    path_under("/kv/", key)
}

/// The URL path of the counter at `key`: `/counters/` and the key, escaped as [`key_path`].
pub fn counter_path(key: &[u8]) -> String {
    path_under("/counters/", key)
}

fn path_under(prefix: &str, key: &[u8]) -> String {
    let mut path = String::from(prefix);
    for chunk in key.utf8_chunks() {
        path.extend(utf8_percent_encode(chunk.valid(), KEY_SET));
        for b in chunk.invalid() {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}

impl Client {
    /// A client for the node at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Self::with_http(http_client()?, base_url)
    }

    /// A client for `base_url` sharing an existing connection pool.
    pub fn with_http(http: reqwest::Client, base_url: &str) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BadUrl(base_url.to_owned()));
        }
        Ok(Self { http, base })
    }

    /// The node's ring: members, tokens, N/R/W and version (`GET /admin/ring`).
    pub async fn ring(&self) -> Result<dynamokv_core::node::RingInfo, ClientError> {
        let resp = self
            .http
            .get(format!("{}/admin/ring", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(Self::api_error(resp).await);
        }
        resp.json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// A page of the cluster's keys holding a live value, in key order: up to `limit` keys
    /// starting with `prefix`, after `after`; and where the next page starts (`None`: done).
    pub async fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<KeyPage, ClientError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut query = vec![
            ("encoding", "base64".to_owned()),
            ("limit", limit.to_string()),
            ("prefix", b64.encode(prefix)),
        ];
        if let Some(a) = after {
            query.push(("after", b64.encode(a)));
        }
        let resp = self
            .http
            .get(format!("{}/kv", self.base))
            .query(&query)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(Self::api_error(resp).await);
        }
        #[derive(serde::Deserialize)]
        struct Page {
            keys: Vec<String>,
            next: Option<String>,
        }
        let page: Page = resp
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let decode = |k: &str| {
            b64.decode(k)
                .map_err(|e| ClientError::Protocol(format!("a listed key is not base64: {e}")))
        };
        Ok(KeyPage {
            keys: page
                .keys
                .iter()
                .map(|k| decode(k))
                .collect::<Result<_, _>>()?,
            next: page.next.as_deref().map(decode).transpose()?,
        })
    }

    /// The node's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            source,
        }
    }

    async fn api_error(resp: reqwest::Response) -> ClientError {
        let status = resp.status().as_u16();
        match resp.json::<ErrorJson>().await {
            Ok(e) => ClientError::Api {
                status,
                code: e.error,
                message: e.message,
            },
            Err(e) => ClientError::Protocol(format!("status {status} without an error body: {e}")),
        }
    }

    fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    fn context_of(resp: &reqwest::Response) -> Option<String> {
        Self::header(resp, CONTEXT_HEADER)
    }

    fn url(&self, key: &[u8], param: Option<(&str, u8)>) -> String {
        match param {
            Some((name, v)) => format!("{}{}?{name}={v}", self.base, key_path(key)),
            None => format!("{}{}", self.base, key_path(key)),
        }
    }

    /// Reads `key`: every live version and one context covering them.
    pub async fn get(&self, key: &[u8]) -> Result<ReadResult, ClientError> {
        self.get_with(key, None).await
    }

    /// Reads `key` answering after `r` replicas (default: the cluster's R).
    pub async fn get_with(&self, key: &[u8], r: Option<u8>) -> Result<ReadResult, ClientError> {
        let resp = self
            .http
            .get(self.url(key, r.map(|r| ("r", r))))
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        match resp.status().as_u16() {
            200 | 300 => {
                let ring_version = Self::header(&resp, RING_VERSION_HEADER);
                let body: SiblingsJson = resp
                    .json()
                    .await
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                let siblings = body
                    .siblings
                    .into_iter()
                    .map(|s| {
                        Ok(Sibling {
                            value: STANDARD
                                .decode(s.value)
                                .map_err(|e| ClientError::Protocol(e.to_string()))?,
                            timestamp: s.timestamp,
                            expires: s.expires,
                        })
                    })
                    .collect::<Result<_, ClientError>>()?;
                Ok(ReadResult {
                    siblings,
                    context: body.context,
                    tombstones: body.tombstones,
                    ring_version,
                })
            }
            404 => {
                let context = Self::context_of(&resp);
                let ring_version = Self::header(&resp, RING_VERSION_HEADER);
                match Self::api_error(resp).await {
                    ClientError::Api { code, .. } if code == "not_found" => Ok(ReadResult {
                        siblings: Vec::new(),
                        context,
                        tombstones: 0,
                        ring_version,
                    }),
                    other => Err(other),
                }
            }
            _ => Err(Self::api_error(resp).await),
        }
    }

    async fn write(
        &self,
        req: reqwest::RequestBuilder,
        context: Option<&str>,
    ) -> Result<WriteResult, ClientError> {
        let req = match context {
            Some(c) => req.header(CONTEXT_HEADER, c),
            None => req,
        };
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() {
            Ok(WriteResult {
                context: Self::context_of(&resp),
                ring_version: Self::header(&resp, RING_VERSION_HEADER),
            })
        } else {
            Err(Self::api_error(resp).await)
        }
    }

    /// Writes `value` (or deletes, for `None`) with quorum `w`; see [`Client::put`].
    pub async fn write_with(
        &self,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: Option<&str>,
        w: Option<u8>,
    ) -> Result<WriteResult, ClientError> {
        let url = self.url(key, w.map(|w| ("w", w)));
        let req = match value {
            Some(v) => self.http.put(url).body(v),
            None => self.http.delete(url),
        };
        self.write(req, context).await
    }

    /// Writes `value` under `key`. With the context of a read, the write replaces the versions
    /// that read returned; without one it is kept beside any existing version (a sibling).
    /// Returns the context of the new version.
    pub async fn put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        context: Option<&str>,
    ) -> Result<Option<String>, ClientError> {
        Ok(self
            .write_with(key, Some(value), context, None)
            .await?
            .context)
    }

    /// [`Client::put`], the value expiring after `ttl` (whole seconds, at least 1): from its
    /// deadline on, reads and listings no longer return it.
    pub async fn put_expiring(
        &self,
        key: &[u8],
        value: Vec<u8>,
        context: Option<&str>,
        ttl: std::time::Duration,
    ) -> Result<Option<String>, ClientError> {
        let req = self
            .http
            .put(self.url(key, None))
            .header("x-ttl", ttl.as_secs().max(1))
            .body(value);
        Ok(self.write(req, context).await?.context)
    }

    /// Adds `by` (negative: subtracts) to the counter at `key`; its new value.
    pub async fn increment(&self, key: &[u8], by: i64) -> Result<i64, ClientError> {
        let url = format!("{}{}?by={by}", self.base, counter_path(key));
        let resp = self
            .http
            .post(url)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Self::counter_value(resp).await
    }

    /// The value of the counter at `key` (`None`: nothing stored there).
    pub async fn counter(&self, key: &[u8]) -> Result<Option<i64>, ClientError> {
        let url = format!("{}{}", self.base, counter_path(key));
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::counter_value(resp).await.map(Some)
    }

    async fn counter_value(resp: reqwest::Response) -> Result<i64, ClientError> {
        if !resp.status().is_success() {
            return Err(Self::api_error(resp).await);
        }
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        body["value"]
            .as_i64()
            .ok_or_else(|| ClientError::Protocol("a counter answer without a value".into()))
    }

    /// Deletes `key`: with a context, the versions it covers; without, every version the
    /// coordinating node holds. Returns the context of the delete.
    pub async fn delete(
        &self,
        key: &[u8],
        context: Option<&str>,
    ) -> Result<Option<String>, ClientError> {
        Ok(self.write_with(key, None, context, None).await?.context)
    }

    /// True when the node answers its health check.
    pub async fn health(&self) -> Result<(), ClientError> {
        let resp = self
            .http
            .get(format!("{}/health", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::api_error(resp).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_escape_everything_unsafe() {
        assert_eq!(key_path(b"abc-_~"), "/kv/abc-_~");
        assert_eq!(key_path(b"a/b"), "/kv/a%2Fb");
        assert_eq!(key_path(b".."), "/kv/%2E%2E");
        assert_eq!(key_path(b"\x00\xff"), "/kv/%00%FF");
        assert_eq!(key_path("é".as_bytes()), "/kv/%C3%A9");
    }

    #[test]
    fn rejects_non_http_urls() {
        assert!(matches!(
            Client::new("127.0.0.1:8080"),
            Err(ClientError::BadUrl(_))
        ));
        assert_eq!(Client::new("http://h:1/").unwrap().base_url(), "http://h:1");
    }
}
