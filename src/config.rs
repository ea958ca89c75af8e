//! Typed configuration: defaults embedded here, then the TOML file, then
//! `OUTPOST_<SECTION>_<KEY>` environment variables, then command-line flags.
//!
//! `config/outpost.toml` documents every key with its default; the test
//! `config_file_matches_defaults` keeps the two from drifting apart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub api: ApiConfig,
    pub admin: AdminConfig,
    pub auth: AuthConfig,
    pub db: DbConfig,
    pub limits: Limits,
    pub crdt: CrdtConfig,
    pub sync: SyncConfig,
    pub feed: FeedConfig,
    pub schema: SchemaConfig,
    pub backup: BackupConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the database, keys and certificates live.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the Hrana HTTP/WebSocket listener.
    pub listen: String,
    /// PEM certificate chain; with `tls_key`, serves HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// actix worker threads (0 = one per core).
    pub workers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener (/health, /ready, /version, /metrics).
    pub listen: String,
    /// Let clients other than loopback call the endpoints that change the
    /// node or show row data (`POST /migrate`, `/quarantine`,
    /// `POST /quarantine/replay`). Off: only the node's own host may.
    pub remote_operations: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// PEM Ed25519 public key that verifies client JWTs. Empty: use
    /// `<data_dir>/keys/jwt.pub.pem` if `outpost init` created it, else no auth.
    pub jwt_public_key: Option<PathBuf>,
    /// Serve without auth even on a non-loopback address. Never do this
    /// outside a private network you fully control.
    pub allow_unauthenticated_public: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DbConfig {
    /// SQLite `synchronous` mode for the writer: "full" (fsync each commit,
    /// survives power loss) or "normal" (survives process crashes only).
    pub synchronous: String,
    /// Number of reader threads, each with its own connection.
    pub readers: usize,
    /// Most autocommit writes committed together in one transaction.
    pub group_commit_max: usize,
    /// Prepared statements cached per connection.
    pub statement_cache: usize,
    /// SQLite page cache per connection, KiB.
    pub cache_size_kib: u64,
    /// How long a connection waits on a lock held by another program.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
}

/// Change capture: which tables become CRDT updates, and its bounds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CrdtConfig {
    /// Tables whose changes are captured and replicated. `["*"]`: every
    /// table with a primary key (tables without one stay local, with a
    /// warning). A list names tables that must have a primary key. `[]`
    /// turns capture off.
    pub replicate: Vec<String>,
    /// Row documents kept decoded-ready in memory (encoded bytes), at most.
    pub doc_cache_bytes: usize,
    /// A row document larger than this drops the slots of other nodes that
    /// no longer win any column, at its next local write.
    pub compact_doc_bytes: usize,
    /// How often changes made to the file by other programs are encoded.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Most remote updates applied in one transaction.
    pub max_apply_batch: usize,
    /// Largest accepted remote update, bytes.
    pub max_update_bytes: usize,
}

impl Default for CrdtConfig {
    fn default() -> Self {
        Self {
            replicate: vec!["*".into()],
            doc_cache_bytes: 16 * 1024 * 1024,
            compact_doc_bytes: 16 * 1024,
            sweep_interval: Duration::from_secs(1),
            max_apply_batch: 1000,
            max_update_bytes: 1024 * 1024,
        }
    }
}

impl CrdtConfig {
    pub fn enabled(&self) -> bool {
        !self.replicate.is_empty()
    }

    /// Whether `table` is listed (or covered by `*`).
    pub fn covers(&self, table: &str) -> bool {
        self.replicate.iter().any(|t| t == "*" || t == table)
    }

    /// Whether `table` is named explicitly (so it must have a primary key).
    pub fn names(&self, table: &str) -> bool {
        self.replicate.iter().any(|t| t == table)
    }
}

/// Replication between nodes (see src/sync/): the sync listener, the
/// peers, mutual TLS against the cluster CA, and the protocol's bounds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Address of the node-to-node HTTPS listener (mutual TLS).
    pub listen: String,
    /// Peers to connect to, e.g. "https://10.0.0.2:8443".
    pub peers: Vec<String>,
    /// Cluster CA certificate (PEM). Default: `<data_dir>/tls/ca.pem`.
    pub ca_cert: Option<PathBuf>,
    /// This node's certificate (PEM, signed by the CA). Default: `<data_dir>/tls/node.pem`.
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM). Default: `<data_dir>/tls/node.key`.
    pub key: Option<PathBuf>,
    /// Most entries in one batch sent to a peer.
    pub batch_entries: usize,
    /// Most update bytes in one batch sent to a peer.
    pub batch_bytes: usize,
    /// Batches sent to a peer and not yet acknowledged, at most.
    pub window_batches: usize,
    /// First delay before reconnecting to a peer; doubles up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// How often an idle link says it is alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A link silent this long is closed and reconnected.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// Most peer connections accepted by the sync listener at once.
    pub max_inbound: usize,
    /// Largest sync message accepted, bytes.
    pub max_message_bytes: usize,
    /// Log entries acknowledged by every peer are deleted this often ("0s": never).
    #[serde(with = "humantime_serde")]
    pub compact_interval: Duration,
    /// A peer not heard from for this long no longer holds back log
    /// compaction; if it returns it bootstraps from a snapshot.
    #[serde(with = "humantime_serde")]
    pub peer_retention: Duration,
    /// Most log entries applied per second from one peer (0: no limit).
    /// A peer sending faster is slowed down (its window stops), not cut off.
    pub peer_entries_per_second: u64,
    /// Most update bytes applied per second from one peer (0: no limit).
    pub peer_bytes_per_second: u64,
    /// Node ids no longer trusted: their links are refused and every entry
    /// signed by one of their keys is quarantined (`revoked`), also when
    /// another node relays it.
    pub revoked_nodes: Vec<String>,
    /// Key ids (16 hex digits, `outpost status` shows them) whose
    /// signatures are refused: one key of a node, e.g. after a rotation
    /// because the old key leaked.
    pub revoked_keys: Vec<String>,
    /// This node is a partial replica: its peers may withhold entries its
    /// rules there do not allow it (it logs a placeholder for each). It
    /// then never relays past a placeholder to a full replica.
    pub partial: bool,
    /// What may flow to and from each peer, by node id (`"*"`: every peer
    /// not named). Unlisted peers exchange everything.
    pub rules: BTreeMap<String, PeerRules>,
}

/// What may flow between this node and one peer (`sync.rules.<node id>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PeerRules {
    /// Tables this node sends to the peer (unset: every replicated table).
    pub send_tables: Option<Vec<String>>,
    /// Tables the peer may send to this node (unset: every one).
    pub accept_tables: Option<Vec<String>>,
    /// Per table, an SQL expression over the row's columns
    /// (`tenant_id = 'acme'`): rows are sent to the peer, and accepted
    /// from it, only where it is true (before and after the change).
    pub filters: BTreeMap<String, String>,
}

impl PeerRules {
    /// Whether rows of `table` may be sent to the peer (the filter aside).
    pub fn sends(&self, table: &str) -> bool {
        self.send_tables
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n == table))
    }

    /// Whether rows of `table` are accepted from the peer (the filter aside).
    pub fn accepts(&self, table: &str) -> bool {
        self.accept_tables
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n == table))
    }

    /// Whether the peer gets less than everything (it must be partial).
    pub fn restricts_sending(&self) -> bool {
        self.send_tables.is_some() || !self.filters.is_empty()
    }
}

/// Longest row filter expression accepted.
pub const MAX_FILTER_CHARS: usize = 4096;

impl SyncConfig {
    /// The CA certificate, node certificate and key in force.
    /// The rules for a peer: its own, else `"*"`'s, else none.
    pub fn rules_for(&self, node_id: &str) -> Option<&PeerRules> {
        self.rules.get(node_id).or_else(|| self.rules.get("*"))
    }

    pub fn tls_paths(&self, data_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let dir = data_dir.join("tls");
        (
            self.ca_cert.clone().unwrap_or_else(|| dir.join("ca.pem")),
            self.cert.clone().unwrap_or_else(|| dir.join("node.pem")),
            self.key.clone().unwrap_or_else(|| dir.join("node.key")),
        )
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".into(),
            peers: Vec::new(),
            ca_cert: None,
            cert: None,
            key: None,
            batch_entries: 500,
            batch_bytes: 1024 * 1024,
            window_batches: 4,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            heartbeat: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
            max_inbound: 64,
            max_message_bytes: 8 * 1024 * 1024,
            compact_interval: Duration::from_secs(60),
            peer_retention: Duration::from_secs(7 * 24 * 3600),
            peer_entries_per_second: 0,
            peer_bytes_per_second: 0,
            revoked_nodes: Vec::new(),
            revoked_keys: Vec::new(),
            partial: false,
            rules: BTreeMap::new(),
        }
    }
}

/// The live change feed for thin clients (WebSocket and server-sent events).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FeedConfig {
    /// Commits a subscriber may fall behind before it gets "lagged, resync"
    /// and is disconnected.
    pub buffer: usize,
    /// Most subscribers at once.
    pub max_subscribers: usize,
    /// Most tables one subscription names.
    pub max_tables: usize,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            buffer: 1024,
            max_subscribers: 1024,
            max_tables: 64,
        }
    }
}

/// The cloud backup (`backup`): log segments and snapshots in object storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Ship the log and take snapshots while serving.
    pub enabled: bool,
    /// Where: `file:///abs/dir` or `s3://bucket/prefix`. Empty: the
    /// directory `backup` in the data dir. Each node writes under
    /// `<url>/<node id>/`.
    pub url: String,
    /// A committed entry is in the backup within this time, while storage
    /// keeps up (the recovery point objective).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A segment holds at most this many bytes of entries; a backlog this
    /// large is shipped at once, without waiting for `interval`.
    pub segment_bytes: usize,
    /// Unshipped entries the log keeps for the backup, at most. Past it
    /// (storage down for long), the backup stops holding log compaction
    /// back, says so loudly, and starts again from a snapshot.
    pub max_backlog_bytes: u64,
    /// How often a snapshot is taken (also at start when the backup has
    /// none, and after each migration).
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// Snapshots kept, at most (the newest is always kept).
    pub snapshot_keep: usize,
    /// Snapshots older than this are deleted (the newest is always kept).
    /// Segments older than the oldest snapshot kept go with it: this is
    /// how far back a point-in-time restore can go.
    #[serde(with = "humantime_serde")]
    pub snapshot_max_age: Duration,
    /// One upload or download attempt, at most.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// zstd level for segments and snapshots (1 fast .. 19 small).
    pub compression_level: i32,
    /// S3 endpoint, e.g. `http://127.0.0.1:8333` (unset: AWS_ENDPOINT_URL, else AWS).
    pub s3_endpoint: Option<String>,
    /// S3 region (unset: AWS_REGION, else us-east-1).
    pub s3_region: Option<String>,
    /// S3 credentials (unset: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// Allow a plain-HTTP endpoint (unset: AWS_ALLOW_HTTP, else false).
    pub s3_allow_http: Option<bool>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: String::new(),
            interval: Duration::from_millis(800),
            segment_bytes: 8 * 1024 * 1024,
            max_backlog_bytes: 1024 * 1024 * 1024,
            snapshot_interval: Duration::from_secs(3600),
            snapshot_keep: 24,
            snapshot_max_age: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(60),
            compression_level: 3,
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_allow_http: None,
        }
    }
}

/// Schema migrations: numbered SQL files, applied in order (`db::migrate`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaConfig {
    /// Directory of migration files (`0001_init.sql`, ...). Unset or empty:
    /// the schema is not managed (version 0, any DDL through the API).
    pub migrations: Option<PathBuf>,
    /// Apply pending migrations when `outpost serve` starts.
    pub migrate_on_start: bool,
    /// When a peer is at a newer schema version, apply the migrations this
    /// node has for it at once (else wait for `outpost migrate`).
    pub auto_migrate: bool,
    /// While a peer is at a newer version, how often to look for the
    /// migration files this node lacks.
    #[serde(with = "humantime_serde")]
    pub recheck_interval: Duration,
}

impl Default for SchemaConfig {
    fn default() -> Self {
        Self {
            migrations: None,
            migrate_on_start: true,
            auto_migrate: true,
            recheck_interval: Duration::from_secs(5),
        }
    }
}

impl SchemaConfig {
    /// The migrations directory, if one is configured.
    pub fn dir(&self) -> Option<&Path> {
        self.migrations
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    }
}

/// Every bound the server enforces. Each has a test at the bound.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest HTTP request body.
    pub max_body_bytes: usize,
    /// Most requests in one pipeline, and most steps in one batch.
    pub max_batch_steps: usize,
    /// Most rows in one statement result.
    pub max_response_rows: usize,
    /// Largest encoded result of one statement or cursor.
    pub max_response_bytes: usize,
    /// Most open Hrana streams (HTTP batons and WebSocket streams together).
    pub max_streams: usize,
    /// Most stored SQL texts per stream / WebSocket connection.
    pub max_stored_sql: usize,
    /// Idle time after which a stream (and its transaction) is dropped.
    #[serde(with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// Largest WebSocket message.
    pub max_ws_message_bytes: usize,
    /// Longest one request (statement, batch or sequence) may run before it
    /// is interrupted, so a runaway query cannot hold a connection forever.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Most read transactions holding a connection of their own; beyond it
    /// a read transaction occupies one of the `db.readers` threads.
    pub max_read_transactions: usize,
    /// Most write jobs waiting for the writer; beyond it requests get 429.
    pub writer_queue: usize,
    /// Most read jobs waiting for a reader; beyond it requests get 429.
    pub reader_queue: usize,
    /// Most API requests per second per client token (0: no limit); beyond
    /// it requests get 429 `RATE_LIMITED` with `Retry-After`.
    pub token_requests_per_second: u64,
    /// Requests a token may make at once above its rate.
    pub token_burst: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// "text" or "json".
    pub format: String,
    /// A tracing filter, e.g. "info" or "outpost=debug,actix=warn".
    pub level: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./outpost-data"),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            tls_cert: None,
            tls_key: None,
            workers: 0,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            remote_operations: false,
        }
    }
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            synchronous: "full".into(),
            readers: 4,
            group_commit_max: 256,
            statement_cache: 128,
            cache_size_kib: 16 * 1024,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            max_batch_steps: 10_000,
            max_response_rows: 100_000,
            max_response_bytes: 10 * 1024 * 1024,
            max_streams: 1024,
            max_stored_sql: 256,
            stream_idle_timeout: Duration::from_secs(10),
            max_ws_message_bytes: 8 * 1024 * 1024,
            query_timeout: Duration::from_secs(30),
            max_read_transactions: 64,
            writer_queue: 4096,
            reader_queue: 4096,
            token_requests_per_second: 0,
            token_burst: 100,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info,actix_server=warn".into(),
        }
    }
}

impl Config {
    /// Defaults, overlaid by `file` (if any), overlaid by `OUTPOST_*` vars.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        apply_env_overrides(&mut tree, env)?;
        let config: Config = toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !matches!(self.db.synchronous.as_str(), "full" | "normal") {
            return invalid(format!(
                "db.synchronous must be \"full\" or \"normal\", not {:?}",
                self.db.synchronous
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return invalid(format!(
                "log.format must be \"text\" or \"json\", not {:?}",
                self.log.format
            ));
        }
        if self.api.tls_cert.is_some() != self.api.tls_key.is_some() {
            return invalid("api.tls_cert and api.tls_key must be set together".into());
        }
        let positive = [
            ("db.readers", self.db.readers),
            ("db.group_commit_max", self.db.group_commit_max),
            ("limits.max_body_bytes", self.limits.max_body_bytes),
            ("limits.max_batch_steps", self.limits.max_batch_steps),
            ("limits.max_response_rows", self.limits.max_response_rows),
            ("limits.max_response_bytes", self.limits.max_response_bytes),
            ("limits.max_streams", self.limits.max_streams),
            (
                "limits.max_ws_message_bytes",
                self.limits.max_ws_message_bytes,
            ),
            ("limits.writer_queue", self.limits.writer_queue),
            ("limits.reader_queue", self.limits.reader_queue),
            ("crdt.compact_doc_bytes", self.crdt.compact_doc_bytes),
            ("crdt.max_apply_batch", self.crdt.max_apply_batch),
            ("crdt.max_update_bytes", self.crdt.max_update_bytes),
            ("sync.batch_entries", self.sync.batch_entries),
            ("sync.batch_bytes", self.sync.batch_bytes),
            ("sync.window_batches", self.sync.window_batches),
            ("sync.max_inbound", self.sync.max_inbound),
            ("sync.max_message_bytes", self.sync.max_message_bytes),
            ("feed.buffer", self.feed.buffer),
            ("feed.max_subscribers", self.feed.max_subscribers),
            ("feed.max_tables", self.feed.max_tables),
            ("backup.segment_bytes", self.backup.segment_bytes),
            ("backup.snapshot_keep", self.backup.snapshot_keep),
        ];
        for (name, value) in positive {
            if value == 0 {
                return invalid(format!("{name} must be greater than 0"));
            }
        }
        if self.limits.query_timeout.is_zero() {
            return invalid("limits.query_timeout must be greater than 0".into());
        }
        for (name, d) in [
            ("sync.retry_min", self.sync.retry_min),
            ("sync.heartbeat", self.sync.heartbeat),
            ("sync.peer_timeout", self.sync.peer_timeout),
            ("schema.recheck_interval", self.schema.recheck_interval),
            ("backup.interval", self.backup.interval),
            ("backup.snapshot_interval", self.backup.snapshot_interval),
            ("backup.timeout", self.backup.timeout),
        ] {
            if d.is_zero() {
                return invalid(format!("{name} must be greater than 0"));
            }
        }
        if !(1..=19).contains(&self.backup.compression_level) {
            return invalid("backup.compression_level must be from 1 to 19".into());
        }
        if (self.backup.max_backlog_bytes as usize) < self.backup.segment_bytes {
            return invalid(
                "backup.max_backlog_bytes must be at least backup.segment_bytes".into(),
            );
        }
        if !self.backup.url.is_empty() {
            crate::backup::store::Location::parse(&self.backup.url)
                .map_err(|e| ConfigError::Invalid(format!("backup.url: {e}")))?;
        }
        if self.sync.retry_max < self.sync.retry_min {
            return invalid("sync.retry_max must be at least sync.retry_min".into());
        }
        if self.sync.peer_timeout <= self.sync.heartbeat {
            return invalid("sync.peer_timeout must be longer than sync.heartbeat".into());
        }
        // A batch holds up to batch_bytes, or one entry of up to
        // max_update_bytes; per-entry framing is small (a few varints).
        let largest_batch =
            self.sync.batch_bytes.max(self.crdt.max_update_bytes) + self.sync.batch_entries * 64;
        if largest_batch + 64 * 1024 > self.sync.max_message_bytes {
            return invalid(format!(
                "sync.max_message_bytes ({}) must exceed the largest batch (the larger of \
                 sync.batch_bytes and crdt.max_update_bytes, plus 64 bytes per \
                 sync.batch_entries: {largest_batch}) by at least 64 KiB",
                self.sync.max_message_bytes
            ));
        }
        for peer in &self.sync.peers {
            if !peer.starts_with("https://") {
                return invalid(format!(
                    "sync.peers: {peer:?} must be an https:// URL (peers speak mutual TLS)"
                ));
            }
        }
        if self.crdt.sweep_interval.is_zero() {
            return invalid("crdt.sweep_interval must be greater than 0".into());
        }
        if self
            .crdt
            .replicate
            .iter()
            .any(|t| t.starts_with("_outpost_") || t.is_empty())
        {
            return invalid("crdt.replicate must name user tables (or \"*\")".into());
        }
        if self.limits.stream_idle_timeout.is_zero() {
            return invalid("limits.stream_idle_timeout must be greater than 0".into());
        }
        for (node, rules) in &self.sync.rules {
            for (table, filter) in &rules.filters {
                if filter.trim().is_empty() || filter.chars().count() > MAX_FILTER_CHARS {
                    return invalid(format!(
                        "sync.rules.{node}.filters.{table}: an SQL expression of 1 to {MAX_FILTER_CHARS} characters"
                    ));
                }
                if filter.contains(';') {
                    return invalid(format!(
                        "sync.rules.{node}.filters.{table}: one expression, no ';'"
                    ));
                }
            }
        }
        for (name, addr) in [
            ("api.listen", &self.api.listen),
            ("admin.listen", &self.admin.listen),
            ("sync.listen", &self.sync.listen),
        ] {
            addr.parse::<SocketAddr>()
                .map_err(|e| ConfigError::Invalid(format!("{name} = {addr:?}: {e}")))?;
        }
        Ok(())
    }

    pub fn db_path(&self) -> PathBuf {
        self.node.data_dir.join("outpost.db")
    }

    /// The backup location: `backup.url`, or `<data_dir>/backup`.
    pub fn backup_url(&self) -> String {
        if self.backup.url.is_empty() {
            let dir = std::path::absolute(self.node.data_dir.join("backup"))
                .unwrap_or_else(|_| self.node.data_dir.join("backup"));
            format!("file://{}", dir.display())
        } else {
            self.backup.url.clone()
        }
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.node.data_dir.join("keys")
    }

    /// The JWT public key in force: the configured one, else the one
    /// `outpost init` wrote into the data dir, else none (no auth).
    pub fn effective_jwt_public_key(&self) -> Option<PathBuf> {
        if let Some(path) = &self.auth.jwt_public_key {
            return Some(path.clone());
        }
        let default = self.keys_dir().join(crate::auth::PUBLIC_KEY_FILE);
        default.exists().then_some(default)
    }
}

/// `OUTPOST_DB_READERS=8` sets `[db] readers = 8`. The section is the first
/// `_`-separated word; the rest is the key. Values parse as TOML literals
/// (numbers, booleans) and fall back to strings.
fn apply_env_overrides(
    tree: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    const SECTIONS: [&str; 12] = [
        "node", "api", "admin", "auth", "db", "limits", "crdt", "sync", "feed", "schema", "backup",
        "log",
    ];
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("OUTPOST_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        if !SECTIONS.contains(&section) {
            continue;
        }
        let value = parse_env_value(&raw);
        let table = tree
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(table) = table.as_table_mut() else {
            return Err(ConfigError::Invalid(format!("[{section}] must be a table")));
        };
        table.insert(key.to_string(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn config_file_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/outpost.toml");
        let loaded = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(
            loaded,
            Config::default(),
            "config/outpost.toml drifted from the defaults"
        );
    }

    #[test]
    fn row_filters_are_bounded() {
        let with_filter = |filter: String| {
            let mut config = Config::default();
            let rules = PeerRules {
                filters: [("t".to_string(), filter)].into(),
                ..PeerRules::default()
            };
            config.sync.rules.insert("edge".into(), rules);
            config.validate()
        };
        assert!(with_filter("tenant = 'a'".into()).is_ok());
        assert!(with_filter("x".repeat(MAX_FILTER_CHARS)).is_ok());
        for bad in [
            String::new(),
            "  ".into(),
            "x".repeat(MAX_FILTER_CHARS + 1),
            "1; DROP TABLE t".into(),
        ] {
            let err = with_filter(bad.clone()).expect_err(&bad).to_string();
            assert!(err.contains("sync.rules.edge.filters.t"), "{err}");
        }
    }

    #[test]
    fn env_overrides_file() {
        let env = vec![
            ("OUTPOST_DB_READERS".to_string(), "7".to_string()),
            (
                "OUTPOST_API_LISTEN".to_string(),
                "127.0.0.1:1234".to_string(),
            ),
            (
                "OUTPOST_LIMITS_STREAM_IDLE_TIMEOUT".to_string(),
                "3s".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.db.readers, 7);
        assert_eq!(c.api.listen, "127.0.0.1:1234");
        assert_eq!(c.limits.stream_idle_timeout, Duration::from_secs(3));
    }

    #[test]
    fn rejects_nonsense() {
        let env = vec![("OUTPOST_DB_READERS".to_string(), "0".to_string())];
        let err = Config::load(None, env).unwrap_err();
        assert!(err.to_string().contains("db.readers"), "{err}");
        let env = vec![("OUTPOST_DB_NOPE".to_string(), "1".to_string())];
        assert!(Config::load(None, env).is_err());
    }

    #[test]
    fn backup_settings_are_checked_at_their_bounds() {
        let load = |pairs: &[(&str, &str)]| {
            let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            Config::load(None, env)
        };
        for level in ["1", "19"] {
            load(&[("OUTPOST_BACKUP_COMPRESSION_LEVEL", level)]).unwrap();
        }
        for level in ["0", "20"] {
            let err = load(&[("OUTPOST_BACKUP_COMPRESSION_LEVEL", level)]).unwrap_err();
            assert!(
                err.to_string().contains("backup.compression_level"),
                "{err}"
            );
        }
        let at_bound = [
            ("OUTPOST_BACKUP_SEGMENT_BYTES", "4096"),
            ("OUTPOST_BACKUP_MAX_BACKLOG_BYTES", "4096"),
        ];
        load(&at_bound).unwrap();
        let err = load(&[
            ("OUTPOST_BACKUP_SEGMENT_BYTES", "4096"),
            ("OUTPOST_BACKUP_MAX_BACKLOG_BYTES", "4095"),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("backup.max_backlog_bytes"),
            "{err}"
        );
        for zero in [
            "OUTPOST_BACKUP_SEGMENT_BYTES",
            "OUTPOST_BACKUP_SNAPSHOT_KEEP",
        ] {
            let err = load(&[(zero, "0")]).unwrap_err();
            assert!(err.to_string().contains("greater than 0"), "{zero}: {err}");
        }
        for zero in ["OUTPOST_BACKUP_INTERVAL", "OUTPOST_BACKUP_TIMEOUT"] {
            assert!(load(&[(zero, "\"0s\"")]).is_err(), "{zero}");
        }
        for bad in ["relative/dir", "file://relative", "s3://", "http://bucket"] {
            let err = load(&[("OUTPOST_BACKUP_URL", bad)]).unwrap_err();
            assert!(err.to_string().contains("backup.url"), "{bad}: {err}");
        }
        load(&[("OUTPOST_BACKUP_URL", "s3://bucket/prefix")]).unwrap();
    }
}
