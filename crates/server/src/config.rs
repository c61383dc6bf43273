//! Node configuration: one serde struct, defaults in one place, loaded from an optional TOML file
//! and then overridden by command-line flags (the binary does the overriding).

use dynamokv_core::node::NodeConfig;
use dynamokv_storage::SyncPolicy;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// When the disk engine forces writes to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fsync before acknowledging every write.
    Always,
    /// fsync in the background every `sync_interval_ms`.
    Periodic,
    /// Leave write-back to the operating system.
    Never,
}

/// Everything a node needs to start. Every field has a default (see [`Config::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Coordination settings (N, R, W, timeouts, gossip, failure detection, handoff): the
    /// core's own struct and defaults, with its fields at the top level of the file.
    #[serde(flatten)]
    pub node: NodeConfig,
    /// This node's id, unique in the cluster. When unset, the id stored in the data directory
    /// is used, or a new `node-XXXXXXXX` id is made and stored on first start.
    pub node_id: Option<String>,
    /// Directory holding this node's data (objects, hints, identity). Created if missing.
    pub data_dir: PathBuf,
    /// Address the internal RPC listener (peer traffic) binds. Port 0 picks a free port; the
    /// bound address is printed on standard output at start (`peer=ADDR`).
    pub listen: SocketAddr,
    /// Peer address other nodes should dial; default: the bound `listen` address. Set it when
    /// listening on 0.0.0.0 or behind NAT.
    pub advertise_peer: Option<String>,
    /// HTTP address clients should use (announced to clients that route by key); default: the
    /// bound `http` address.
    pub advertise_http: Option<String>,
    /// Peer addresses (`host:port`) of nodes to join through. Empty: start a new cluster.
    pub seeds: Vec<String>,
    /// Tokens (virtual nodes) this node places on the ring.
    pub vnodes: u16,
    /// Largest peer-protocol frame accepted, in bytes; a larger frame closes the connection.
    pub max_frame_bytes: usize,
    /// Allow `POST /admin/faults` to drop or delay peer messages (for fault tests only; never
    /// in production). Off by default, and the endpoint refuses to act without it.
    pub enable_fault_injection: bool,
    /// Address the HTTP API listens on. Port 0 picks a free port; the bound address is printed
    /// on standard output at start (`listening http=ADDR`).
    pub http: SocketAddr,
    /// Address of the RESP2 (Redis protocol) endpoint, for `redis-cli`, `redis-benchmark` and
    /// Redis client libraries; off when unset. Port 0 picks a free port; the bound address is
    /// printed on standard output at start (`resp=ADDR`).
    pub resp: Option<SocketAddr>,
    /// Largest value accepted by a put, in bytes. Larger values get 413.
    pub max_value_bytes: usize,
    /// Client tokens (`[[tokens]]` with `name`, `token`, `scopes`); none: every client may do
    /// everything. See docs/security.md.
    pub tokens: Vec<crate::auth::TokenConfig>,
    /// Most HTTP connections open at once; the next one gets 503 `too_many_connections`.
    pub http_max_connections: usize,
    /// Time an HTTP client has to send a request's headers (and a first request after
    /// connecting), in milliseconds; a slow or silent client is disconnected.
    pub http_header_timeout_ms: u64,
    /// Seconds a RESP connection may sit idle (no command pending) before it is closed; 0:
    /// never (Redis's `timeout`).
    pub resp_idle_timeout_secs: u64,
    /// Milliseconds a RESP client has to finish sending a command it began; slower clients are
    /// told so and disconnected.
    pub resp_command_timeout_ms: u64,
    /// TLS on every port (`[tls]` with `cert`, `key`, `ca`, `require_client_cert`); none:
    /// plaintext. See docs/security.md.
    pub tls: Option<crate::tls::TlsConfig>,
    /// fsync policy: `always`, `periodic` (every `sync_interval_ms`) or `never`. Every write
    /// reaches the operating system before it is acknowledged, so a process crash loses nothing
    /// under any policy; the policy decides what a power loss can take.
    pub sync: SyncMode,
    /// Interval of the background fsync for `sync = "periodic"`, in milliseconds.
    pub sync_interval_ms: u64,
    /// Secret that authenticates the context tokens handed to clients; every node of a cluster
    /// must share it. When unset, a random secret is generated on first start and kept in the
    /// data directory.
    pub cluster_secret: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: None,
            data_dir: PathBuf::from("dynamokv-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            advertise_peer: None,
            advertise_http: None,
            seeds: Vec::new(),
            vnodes: dynamokv_core::ring::DEFAULT_VNODES,
            max_frame_bytes: 32 * 1024 * 1024,
            enable_fault_injection: false,
            node: NodeConfig::default(),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            resp: None,
            max_value_bytes: dynamokv_core::limits::DEFAULT_MAX_VALUE_BYTES,
            tokens: Vec::new(),
            http_max_connections: 4096,
            http_header_timeout_ms: 10_000,
            resp_idle_timeout_secs: 300,
            resp_command_timeout_ms: 30_000,
            tls: None,
            sync: SyncMode::Periodic,
            sync_interval_ms: 100,
            cluster_secret: None,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; fields it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text; fields it leaves out keep their defaults, and an unknown field is an
    /// error (serde cannot refuse unknown fields next to a flattened struct, so the names are
    /// checked against those of the defaults).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let known = serde_json::to_value(Config::default()).map_err(|e| e.to_string())?;
        if let Some(unknown) = table
            .keys()
            .find(|k| known.as_object().is_some_and(|o| !o.contains_key(*k)))
        {
            return Err(format!("unknown field `{unknown}`"));
        }
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::auth::validate(&self.tokens).map_err(ConfigError::Invalid)?;
        if self.http_max_connections == 0 || self.http_header_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "http_max_connections and http_header_timeout_ms must be at least 1".into(),
            ));
        }
        if self.resp_command_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "resp_command_timeout_ms must be at least 1".into(),
            ));
        }
        if self.max_value_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max_value_bytes must be at least 1".into(),
            ));
        }
        if self.max_value_bytes > 256 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "max_value_bytes may be at most 268435456 (256 MiB)".into(),
            ));
        }
        if self.sync == SyncMode::Periodic && self.sync_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "sync_interval_ms must be at least 1 with sync = \"periodic\"".into(),
            ));
        }
        if let Some(id) = &self.node_id
            && (id.is_empty()
                || id.len() > dynamokv_core::membership::MAX_NODE_ID_BYTES
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err(ConfigError::Invalid(format!(
                "node_id {id:?}: use 1 to {} letters, digits, '-', '_' or '.'",
                dynamokv_core::membership::MAX_NODE_ID_BYTES
            )));
        }
        if self.vnodes == 0 || usize::from(self.vnodes) > dynamokv_core::membership::MAX_TOKENS {
            return Err(ConfigError::Invalid(format!(
                "vnodes must be 1 to {}",
                dynamokv_core::membership::MAX_TOKENS
            )));
        }
        if self.node.n == 0
            || self.node.r == 0
            || self.node.w == 0
            || self.node.r > self.node.n
            || self.node.w > self.node.n
        {
            return Err(ConfigError::Invalid(format!(
                "need 1 <= r <= n and 1 <= w <= n (n={}, r={}, w={})",
                self.node.n, self.node.r, self.node.w
            )));
        }
        if self.node.hint_scan_interval_ms == 0
            || self.node.hint_rate_per_sec == 0
            || self.node.hint_max_in_flight == 0
        {
            return Err(ConfigError::Invalid(
                "hint_scan_interval_ms, hint_rate_per_sec and hint_max_in_flight must be at least 1".into(),
            ));
        }
        if self.node.anti_entropy_keys_per_sec == 0
            || self.node.anti_entropy_bytes_per_sec == 0
            || self.node.anti_entropy_sessions == 0
        {
            return Err(ConfigError::Invalid(
                "anti_entropy_keys_per_sec, anti_entropy_bytes_per_sec and anti_entropy_sessions must be at least 1".into(),
            ));
        }
        if self.node.background_items_per_sec == 0
            || self.node.background_bytes_per_sec == 0
            || !(self.node.background_min_share > 0.0 && self.node.background_min_share <= 1.0)
        {
            return Err(ConfigError::Invalid(
                "background_items_per_sec and background_bytes_per_sec must be at least 1, and background_min_share above 0 and at most 1".into(),
            ));
        }
        if self.node.gossip_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "gossip_interval_ms must be at least 1".into(),
            ));
        }
        if !(self.node.phi_threshold > 0.0 && self.node.phi_threshold.is_finite()) {
            return Err(ConfigError::Invalid(
                "phi_threshold must be a positive number".into(),
            ));
        }
        if self.node.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "request_timeout_ms must be at least 1".into(),
            ));
        }
        if self.max_frame_bytes
            < self
                .max_value_bytes
                .saturating_mul(2)
                .saturating_add(64 * 1024)
        {
            return Err(ConfigError::Invalid(format!(
                "max_frame_bytes ({}) must be at least twice max_value_bytes plus 64 KiB ({})",
                self.max_frame_bytes,
                self.max_value_bytes * 2 + 64 * 1024
            )));
        }
        if self.node.max_siblings == 0 {
            return Err(ConfigError::Invalid(
                "max_siblings must be at least 1".into(),
            ));
        }
        if self.node.max_object_bytes < self.max_value_bytes.saturating_add(4096)
            || self.node.max_object_bytes.saturating_add(2 << 20) > self.max_frame_bytes
        {
            return Err(ConfigError::Invalid(format!(
                "max_object_bytes ({}) must be at least max_value_bytes plus 4 KiB ({}) and leave 2 MiB under max_frame_bytes ({})",
                self.node.max_object_bytes,
                self.max_value_bytes + 4096,
                self.max_frame_bytes
            )));
        }
        if self.cluster_secret.as_deref() == Some("") {
            return Err(ConfigError::Invalid(
                "cluster_secret must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// The storage sync policy this configuration asks for.
    pub fn sync_policy(&self) -> SyncPolicy {
        match self.sync {
            SyncMode::Always => SyncPolicy::Always,
            SyncMode::Periodic => {
                SyncPolicy::Periodic(Duration::from_millis(self.sync_interval_ms.max(1)))
            }
            SyncMode::Never => SyncPolicy::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_fields() {
        let c = Config::from_toml("sync = \"always\"\nmax_value_bytes = 10\nw = 3").unwrap();
        assert_eq!(c.sync, SyncMode::Always);
        assert_eq!(c.max_value_bytes, 10);
        assert_eq!(c.node.w, 3);
        assert_eq!(c.node.r, NodeConfig::default().r);
        assert_eq!(c.http, Config::default().http);
        assert!(
            Config::from_toml("bogus = 1")
                .unwrap_err()
                .contains("bogus")
        );
        assert!(Config::from_toml("sync = \"sometimes\"").is_err());
        assert!(Config::from_toml("node_id = \"a\"\ncluster_secret = \"s\"").is_ok());
    }

    #[test]
    fn validate_ranges() {
        assert!(Config::default().validate().is_ok());
        let c = Config {
            max_value_bytes: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            sync_interval_ms: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.node.r = 4;
        assert!(c.validate().is_err());
        let c = Config {
            node_id: Some("bad id".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            max_value_bytes: 20 * 1024 * 1024,
            ..Config::default()
        };
        assert!(c.validate().is_err(), "frames must fit values");
        assert_eq!(
            Config::default().sync_policy(),
            SyncPolicy::Periodic(Duration::from_millis(100))
        );
    }
}
