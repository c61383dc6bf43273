//! Node configuration: one struct, each setting declared once - its field, documentation,
//! flag and default together. The same declaration gives the TOML file's keys (the field names,
//! snake_case), the command-line flags and their `--help` text (clap derive, with
//! [`NodeConfig`]'s table flattened in), and the defaults ([`Config::default`] is what the flags
//! say when none is given). A file is read first, then the flags given on the command line
//! override it ([`Config::overridden_by`]).

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

impl SyncMode {
    /// Parses the name a flag or file gives.
    pub fn parse(s: &str) -> Result<SyncMode, UnknownSyncMode> {
        match s {
            "always" => Ok(SyncMode::Always),
            "periodic" => Ok(SyncMode::Periodic),
            "never" => Ok(SyncMode::Never),
            _ => Err(UnknownSyncMode(s.to_owned())),
        }
    }
}

/// A sync mode name that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sync mode {0:?}: use always, periodic or never")]
pub struct UnknownSyncMode(pub String);

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMode::Always => "always",
            SyncMode::Periodic => "periodic",
            SyncMode::Never => "never",
        })
    }
}

/// Everything a node needs to start, each setting with its flag and default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct Config {
    /// Coordination settings (N, R, W, timeouts, gossip, failure detection, handoff,
    /// anti-entropy, limits): the core's own table, with its fields at the top level of the
    /// file.
    #[serde(flatten)]
    #[command(flatten)]
    pub node: NodeConfig,
    /// This node's id, unique in the cluster (letters, digits, '-', '_', '.'). Default: the id
    /// stored in the data directory, or a generated `node-XXXXXXXX` stored on first start. A
    /// data directory belongs to one id.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Directory for this node's data (objects, hints, identity); created if missing.
    #[arg(long, value_name = "DIR", default_value = "dynamokv-data")]
    pub data_dir: PathBuf,
    /// Peer (internal RPC) listen address; port 0 picks a free port (printed at start as
    /// `peer=ADDR`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Peer address other nodes should dial. Default: the bound --listen address; set it when
    /// listening on 0.0.0.0 or behind NAT.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_peer: Option<String>,
    /// HTTP address partition-aware clients should use. Default: the bound --http address.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_http: Option<String>,
    /// Peer addresses of nodes to join through, comma-separated (needs the cluster's secret: a
    /// node given seeds without one refuses to start). None: start a new cluster.
    #[arg(long, value_name = "ADDR,ADDR,...", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Tokens (virtual nodes) this node places on the ring.
    #[arg(long, value_name = "COUNT", default_value_t = dynamokv_core::ring::DEFAULT_VNODES)]
    pub vnodes: u16,
    /// Largest peer-protocol frame accepted, in bytes; a larger frame closes the connection.
    #[arg(long, value_name = "BYTES", default_value_t = 32 << 20)]
    pub max_frame_bytes: usize,
    /// Let POST /admin/faults drop or delay peer messages (fault tests only, never
    /// production); the endpoint refuses to act without it.
    #[arg(long)]
    pub enable_fault_injection: bool,
    /// HTTP API listen address; port 0 picks a free port (printed at start as
    /// `listening http=ADDR`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// RESP2 (Redis protocol) listen address, for redis-cli, redis-benchmark and Redis client
    /// libraries; off unless given. Port 0 picks a free port (printed as `resp=ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub resp: Option<SocketAddr>,
    /// Client tokens (`[[tokens]]` with `name`, `token`, `scopes`), in the config file only;
    /// none: every client may do everything. See docs/security.md.
    #[arg(skip)]
    pub tokens: Vec<crate::auth::TokenConfig>,
    /// Most HTTP connections open at once; the next one gets 503 `too_many_connections`.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub http_max_connections: usize,
    /// Time an HTTP client has to send a request's headers (and a first request after
    /// connecting), in milliseconds; a slower or silent client is disconnected.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,
    /// Seconds a RESP connection may sit idle (no command pending) before it is closed; 0:
    /// never (Redis's `timeout`).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub resp_idle_timeout_secs: u64,
    /// Milliseconds a RESP client has to finish sending a command it began; slower clients are
    /// told so and disconnected.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub resp_command_timeout_ms: u64,
    /// TLS on every port (`[tls]` in the file, with `cert`, `key`, `ca`,
    /// `require_client_cert`); none: plaintext. See docs/security.md.
    #[command(flatten)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Require HTTP and RESP clients to present a certificate of the cluster CA too
    /// (`require_client_cert` in the file's `[tls]`).
    #[arg(long = "tls-require-client-cert")]
    #[serde(skip)]
    pub tls_require_client_cert: bool,
    /// When to fsync: `always` (before acknowledging each write), `periodic` (every
    /// --sync-interval-ms) or `never` (leave it to the OS). Every write reaches the operating
    /// system before it is acknowledged, so a process crash loses nothing under any of them;
    /// they differ on power loss.
    #[arg(long, value_name = "MODE", value_parser = SyncMode::parse, default_value_t = SyncMode::Periodic)]
    pub sync: SyncMode,
    /// Interval of the periodic fsync, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub sync_interval_ms: u64,
    /// Memory for the storage engine's block cache, in MiB: data, index and filter blocks kept
    /// in memory. More makes reads (and the read each write does) faster once the data is
    /// many times larger than the cache; it adds to the node's resident memory one for one
    /// (figures at 32, 64 and 256 MiB: docs/bench.md).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub cache_mb: u64,
    /// Free space to keep on the data directory's filesystem, in MiB: under it the node refuses
    /// writes (HTTP 507 `insufficient_storage`, RESP `-FULL`; replica writes are refused and go
    /// to other nodes as hints) and keeps serving reads, until space returns. It leaves room
    /// for the storage engine's flushes and compactions, which would otherwise fail on a full
    /// disk. 0 turns the check off.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub min_free_disk_mb: u64,
    /// Secret authenticating context tokens and peers; every node of a cluster must share it.
    /// Default: a random secret generated in the data directory on first start (a node that
    /// does so cannot join a cluster).
    #[arg(
        long,
        env = "DYNAMOKV_CLUSTER_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub cluster_secret: Option<String>,
}

/// The flags alone, to read the defaults and the help from.
#[derive(clap::Parser)]
#[command(name = "dynamokv-server-settings")]
struct Flags {
    #[command(flatten)]
    config: Config,
}

impl Default for Config {
    /// What the flags say when none is given (the declaration above is the one place the
    /// defaults are written).
    fn default() -> Self {
        use clap::Parser as _;
        // Not the environment: the defaults are the declaration's own.
        let flags = Flags::try_parse_from(["dynamokv-server-settings"]);
        let mut c = flags
            .map(|f| f.config)
            .unwrap_or_else(|e| unreachable!("the default flags parse: {e}"));
        c.cluster_secret = None;
        c
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
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with its text.
        source: TomlError,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A configured token cannot be used.
    #[error("invalid configuration: {0}")]
    Token(#[from] crate::auth::TokenError),
    /// The TLS files cannot be used.
    #[error("invalid configuration: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Why a config file's text is not a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum TomlError {
    /// Not TOML, or a value of the wrong type.
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    /// A name that is no setting.
    #[error("unknown field `{0}`")]
    UnknownField(String),
}

impl Config {
    /// Reads a TOML file; fields it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses TOML text; fields it leaves out keep their defaults, and an unknown field is an
    /// error (serde cannot refuse unknown fields next to a flattened struct, so the names are
    /// checked against those of the defaults).
    pub fn from_toml(text: &str) -> Result<Self, TomlError> {
        let table: toml::Table = toml::from_str(text)?;
        let known = serde_json::to_value(Config::default()).expect("settings serialize");
        if let Some(unknown) = table
            .keys()
            .find(|k| known.as_object().is_some_and(|o| !o.contains_key(*k)))
        {
            return Err(TomlError::UnknownField(unknown.clone()));
        }
        Ok(toml::from_str(text)?)
    }

    /// This configuration with the settings in `flags` that `given` says were given on the
    /// command line (or in their environment variable) put over it: the file's values, then
    /// the flags'. `given` is asked by setting id (the field name); a TLS flag replaces the
    /// file's `[tls]` (all three files given), or sets its `require_client_cert`.
    pub fn overridden_by(
        self,
        flags: &Config,
        given: impl Fn(&str) -> bool,
    ) -> Result<Config, ConfigError> {
        let invalid = |e: serde_json::Error| ConfigError::Invalid(e.to_string());
        let mut merged = serde_json::to_value(self).map_err(invalid)?;
        let from = serde_json::to_value(flags).map_err(invalid)?;
        let (Some(to), Some(from)) = (merged.as_object_mut(), from.as_object()) else {
            return Err(ConfigError::Invalid("settings are not a table".into()));
        };
        for (key, value) in from {
            if key != "tls" && given(key) {
                to.insert(key.clone(), value.clone());
            }
        }
        if ["cert", "key", "ca"].iter().any(|id| given(id)) {
            to.insert("tls".into(), from["tls"].clone());
        }
        let mut c: Config = serde_json::from_value(merged).map_err(invalid)?;
        if flags.tls_require_client_cert {
            let Some(tls) = &mut c.tls else {
                return Err(ConfigError::Invalid(
                    "--tls-require-client-cert needs TLS: give --tls-cert, --tls-key and --tls-ca (or [tls] in the config file)".into(),
                ));
            };
            tls.require_client_cert = true;
        }
        c.seeds.retain(|s| !s.is_empty());
        Ok(c)
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::auth::validate(&self.tokens)?;
        self.node.validate().map_err(ConfigError::Invalid)?;
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
        let max_value_bytes = self.node.max_value_bytes;
        if self.max_frame_bytes < max_value_bytes.saturating_mul(2).saturating_add(64 * 1024) {
            return Err(ConfigError::Invalid(format!(
                "max_frame_bytes ({}) must be at least twice max_value_bytes plus 64 KiB ({})",
                self.max_frame_bytes,
                max_value_bytes * 2 + 64 * 1024
            )));
        }
        if self.node.max_object_bytes.saturating_add(2 << 20) > self.max_frame_bytes {
            return Err(ConfigError::Invalid(format!(
                "max_object_bytes ({}) must leave 2 MiB under max_frame_bytes ({})",
                self.node.max_object_bytes, self.max_frame_bytes
            )));
        }
        if !(1..=1024 * 1024).contains(&self.cache_mb) {
            return Err(ConfigError::Invalid(format!(
                "cache_mb must be between 1 and 1048576 (MiB), not {}",
                self.cache_mb
            )));
        }
        if !self.seeds.is_empty() && self.cluster_secret.is_none() {
            return Err(ConfigError::Invalid(
                "--seeds given without a cluster secret: a node joins a cluster only with the \
                 cluster's secret, and without one it would make a cluster of its own. Give the \
                 secret the other nodes run with: --cluster-secret, the DYNAMOKV_CLUSTER_SECRET \
                 environment variable, or cluster_secret in the config file"
                    .into(),
            ));
        }
        if self.cluster_secret.as_deref() == Some("") {
            return Err(ConfigError::Invalid(
                "cluster_secret must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// How this configuration opens the storage engine.
    pub fn disk_options(&self) -> dynamokv_storage::DiskOptions {
        dynamokv_storage::DiskOptions {
            sync: self.sync_policy(),
            cache_bytes: self.cache_mb * 1024 * 1024,
            min_free_bytes: self.min_free_disk_mb.saturating_mul(1024 * 1024),
        }
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
        assert_eq!(c.node.max_value_bytes, 10);
        assert_eq!(c.node.w, 3);
        assert_eq!(c.node.r, NodeConfig::default().r);
        assert_eq!(c.http, Config::default().http);
        assert!(matches!(
            Config::from_toml("bogus = 1"),
            Err(TomlError::UnknownField(f)) if f == "bogus"
        ));
        assert!(Config::from_toml("sync = \"sometimes\"").is_err());
        assert!(Config::from_toml("node_id = \"a\"\ncluster_secret = \"s\"").is_ok());
    }

    #[test]
    fn validate_ranges() {
        assert!(Config::default().validate().is_ok());
        let mut c = Config::default();
        c.node.max_value_bytes = 0;
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
        let mut c = Config::default();
        c.node.max_value_bytes = 20 * 1024 * 1024;
        c.node.max_object_bytes = 24 * 1024 * 1024;
        assert!(c.validate().is_err(), "frames must fit values");
        let c = Config {
            cache_mb: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err(), "a cache of nothing");
        let c = Config {
            seeds: vec!["127.0.0.1:7070".into()],
            ..Config::default()
        };
        assert!(c.validate().is_err(), "seeds without a secret");
        let c = Config {
            seeds: vec!["127.0.0.1:7070".into()],
            cluster_secret: Some("s".into()),
            ..Config::default()
        };
        assert!(c.validate().is_ok());
        let c = Config::from_toml("cache_mb = 256").unwrap();
        assert_eq!(c.disk_options().cache_bytes, 256 * 1024 * 1024);
        assert_eq!(
            Config::default().sync_policy(),
            SyncPolicy::Periodic(Duration::from_millis(100))
        );
    }
}
