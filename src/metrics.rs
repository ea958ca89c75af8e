//! Every Prometheus metric outpost exports, defined in one place.
//!
//! Names carry the `outpost_` prefix and their unit (`_seconds`, `_bytes`,
//! `_total`). The registry is per [`Metrics`] value (not global), so tests can
//! run several servers in one process.

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub streams_open: IntGauge,
    pub ws_connections_open: IntGauge,
    pub feed_subscribers: IntGauge,
    pub feed_events_total: IntCounter,
    pub feed_lagged_total: IntCounter,
    pub writer_queue_depth: IntGauge,
    pub reader_queue_depth: IntGauge,
    pub group_commit_size: Histogram,
    pub statements_total: IntCounterVec,
    pub db_size_bytes: IntGauge,
    pub stream_expired_total: IntCounter,
    pub rejected_total: IntCounterVec,
    pub log_entries_total: IntCounterVec,
    pub log_bytes: IntGauge,
    pub capture_duration_seconds: Histogram,
    pub doc_cache_hits_total: IntCounter,
    pub doc_cache_misses_total: IntCounter,
    pub tables_replicated: IntGauge,
    pub sync_rejected_total: IntCounterVec,
    pub sync_entries_sent_total: IntCounterVec,
    pub sync_entries_received_total: IntCounterVec,
    pub sync_bytes_sent_total: IntCounterVec,
    pub sync_bytes_received_total: IntCounterVec,
    pub sync_lag_seconds: HistogramVec,
    pub sync_peer_state: IntGaugeVec,
    pub sync_paused: IntGaugeVec,
    pub log_compacted_entries_total: IntCounter,
    pub schema_version: IntGauge,
    pub migrations_applied_total: IntCounter,
    pub sync_ignored_values_total: IntCounterVec,
    pub sync_throttled_seconds_total: CounterVec,
    pub backup_last_success_timestamp_seconds: IntGauge,
    pub backup_unshipped_entries: IntGauge,
    pub backup_unshipped_bytes: IntGauge,
    pub backup_backlog_over_limit: IntGauge,
    pub backup_upload_bytes_total: IntCounterVec,
    pub backup_upload_failures_total: IntCounterVec,
    pub backup_segments_total: IntCounter,
    pub backup_snapshot_duration_seconds: Histogram,
    pub backup_enabled: IntGauge,
    pub backup_max_backlog_bytes: IntGauge,
    pub node_info: IntGaugeVec,
    pub sync_peer_behind_entries: IntGaugeVec,
    pub sync_peer_behind_seconds: GaugeVec,
    pub quarantined_entries: IntGauge,
    pub data_dir_free_bytes: IntGauge,
    pub data_dir_capacity_bytes: IntGauge,
    pub backup_last_snapshot_timestamp_seconds: IntGauge,
    pub sync_peer_last_seen_timestamp_seconds: IntGaugeVec,
    pub tls_cert_not_after_timestamp_seconds: IntGaugeVec,
}

/// A metric's Prometheus type, for the reference table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One row of the metrics reference: what `/metrics` may show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricDoc {
    pub name: String,
    pub kind: Kind,
    pub labels: Vec<String>,
    pub help: String,
}

/// Where README.md keeps the generated table, between these two lines.
pub const REFERENCE_BEGIN: &str = "<!-- metrics reference: generated from src/metrics.rs -->";
pub const REFERENCE_END: &str = "<!-- end of metrics reference -->";

const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            http_requests_total: IntCounterVec::new(
                Opts::new(
                    "outpost_http_requests_total",
                    "HTTP requests by route and status.",
                ),
                &["route", "status"],
            )
            .expect("valid metric"),
            http_request_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "outpost_http_request_duration_seconds",
                    "HTTP request latency by route.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            )
            .expect("valid metric"),
            streams_open: IntGauge::new("outpost_streams_open", "Open Hrana streams.")
                .expect("valid metric"),
            ws_connections_open: IntGauge::new(
                "outpost_ws_connections_open",
                "Open Hrana WebSocket connections.",
            )
            .expect("valid metric"),
            feed_subscribers: IntGauge::new(
                "outpost_feed_subscribers",
                "Open change-feed subscriptions (server-sent events and WebSocket).",
            )
            .expect("valid metric"),
            feed_events_total: IntCounter::new(
                "outpost_feed_events_total",
                "Change events sent to feed subscribers (one per row change per subscriber).",
            )
            .expect("valid metric"),
            feed_lagged_total: IntCounter::new(
                "outpost_feed_lagged_total",
                "Feed subscribers disconnected because they fell more than feed.buffer commits behind.",
            )
            .expect("valid metric"),
            writer_queue_depth: IntGauge::new(
                "outpost_writer_queue_depth",
                "Write jobs waiting for the writer thread.",
            )
            .expect("valid metric"),
            reader_queue_depth: IntGauge::new(
                "outpost_reader_queue_depth",
                "Read jobs waiting for a reader thread.",
            )
            .expect("valid metric"),
            group_commit_size: Histogram::with_opts(
                HistogramOpts::new(
                    "outpost_group_commit_size",
                    "Write jobs committed together in one transaction.",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )
            .expect("valid metric"),
            statements_total: IntCounterVec::new(
                Opts::new(
                    "outpost_statements_total",
                    "SQL statements executed by outcome.",
                ),
                &["target", "outcome"],
            )
            .expect("valid metric"),
            db_size_bytes: IntGauge::new(
                "outpost_db_size_bytes",
                "Size of the database file plus its WAL.",
            )
            .expect("valid metric"),
            stream_expired_total: IntCounter::new(
                "outpost_streams_expired_total",
                "Streams closed because they were idle too long.",
            )
            .expect("valid metric"),
            rejected_total: IntCounterVec::new(
                Opts::new(
                    "outpost_requests_rejected_total",
                    "Requests refused before execution, by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            log_entries_total: IntCounterVec::new(
                Opts::new(
                    "outpost_log_entries_total",
                    "Entries appended to the change log: source=local (captured writes) or remote (applied).",
                ),
                &["source"],
            )
            .expect("valid metric"),
            log_bytes: IntGauge::new(
                "outpost_log_bytes",
                "Bytes of CRDT updates held in the change log.",
            )
            .expect("valid metric"),
            capture_duration_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "outpost_capture_duration_seconds",
                    "Time to encode a transaction's changed rows as CRDT updates, before its COMMIT.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            doc_cache_hits_total: IntCounter::new(
                "outpost_doc_cache_hits_total",
                "Row documents found in the row-document cache.",
            )
            .expect("valid metric"),
            doc_cache_misses_total: IntCounter::new(
                "outpost_doc_cache_misses_total",
                "Row documents read from _outpost_rows because the cache did not hold them.",
            )
            .expect("valid metric"),
            tables_replicated: IntGauge::new(
                "outpost_tables_replicated",
                "Tables whose changes are captured for replication.",
            )
            .expect("valid metric"),
            sync_rejected_total: IntCounterVec::new(
                Opts::new(
                    "outpost_sync_rejected_total",
                    "Remote changes refused and quarantined, by sending peer and reason.",
                ),
                &["peer", "reason"],
            )
            .expect("valid metric"),
            sync_entries_sent_total: IntCounterVec::new(
                Opts::new(
                    "outpost_sync_entries_sent_total",
                    "Change-log entries sent to a peer.",
                ),
                &["peer"],
            )
            .expect("valid metric"),
            sync_entries_received_total: IntCounterVec::new(
                Opts::new(
                    "outpost_sync_entries_received_total",
                    "Change-log entries received from a peer (applied, duplicate or rejected).",
                ),
                &["peer"],
            )
            .expect("valid metric"),
            sync_bytes_sent_total: IntCounterVec::new(
                Opts::new(
                    "outpost_sync_bytes_sent_total",
                    "Sync message bytes sent to a peer.",
                ),
                &["peer"],
            )
            .expect("valid metric"),
            sync_bytes_received_total: IntCounterVec::new(
                Opts::new(
                    "outpost_sync_bytes_received_total",
                    "Sync message bytes received from a peer.",
                ),
                &["peer"],
            )
            .expect("valid metric"),
            sync_lag_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "outpost_sync_lag_seconds",
                    "Time from a change's commit on its origin node to its apply here, by the peer it came from.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0,
                ]),
                &["peer"],
            )
            .expect("valid metric"),
            sync_peer_state: IntGaugeVec::new(
                Opts::new(
                    "outpost_sync_peer_state",
                    "1 for the state each peer link is in (connecting, connected, backing_off, paused).",
                ),
                &["peer", "state"],
            )
            .expect("valid metric"),
            sync_paused: IntGaugeVec::new(
                Opts::new(
                    "outpost_sync_paused",
                    "1 while sync from a peer is paused, with the reason (e.g. schema).",
                ),
                &["peer", "reason"],
            )
            .expect("valid metric"),
            log_compacted_entries_total: IntCounter::new(
                "outpost_log_compacted_entries_total",
                "Change-log entries deleted because every peer had acknowledged them.",
            )
            .expect("valid metric"),
            schema_version: IntGauge::new(
                "outpost_schema_version",
                "The schema version (last migration applied) of this node.",
            )
            .expect("valid metric"),
            migrations_applied_total: IntCounter::new(
                "outpost_migrations_applied_total",
                "Migrations this process applied.",
            )
            .expect("valid metric"),
            sync_ignored_values_total: IntCounterVec::new(
                Opts::new(
                    "outpost_sync_ignored_values_total",
                    "Values in entries from an older schema for columns this node no longer has (dropped since), ignored.",
                ),
                &["table"],
            )
            .expect("valid metric"),
            sync_throttled_seconds_total: CounterVec::new(
                Opts::new(
                    "outpost_sync_throttled_seconds_total",
                    "Time applies from a peer waited for its rate limit (sync.peer_entries_per_second, sync.peer_bytes_per_second).",
                ),
                &["peer"],
            )
            .expect("valid metric"),
            backup_last_success_timestamp_seconds: IntGauge::new(
                "outpost_backup_last_success_timestamp_seconds",
                "When the backup last caught up: every committed log entry shipped (Unix seconds; 0: never).",
            )
            .expect("valid metric"),
            backup_unshipped_entries: IntGauge::new(
                "outpost_backup_unshipped_entries",
                "Committed log entries not yet in the backup.",
            )
            .expect("valid metric"),
            backup_unshipped_bytes: IntGauge::new(
                "outpost_backup_unshipped_bytes",
                "Bytes of committed log entries not yet in the backup (bounded by backup.max_backlog_bytes).",
            )
            .expect("valid metric"),
            backup_backlog_over_limit: IntGauge::new(
                "outpost_backup_backlog_over_limit",
                "1 while the unshipped backlog exceeds backup.max_backlog_bytes: the backup no longer holds log compaction back and will start again from a snapshot.",
            )
            .expect("valid metric"),
            backup_upload_bytes_total: IntCounterVec::new(
                Opts::new(
                    "outpost_backup_upload_bytes_total",
                    "Bytes uploaded to the backup storage, by kind (segment, snapshot).",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            backup_upload_failures_total: IntCounterVec::new(
                Opts::new(
                    "outpost_backup_upload_failures_total",
                    "Failed backup uploads, by kind (segment, snapshot).",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            backup_segments_total: IntCounter::new(
                "outpost_backup_segments_total",
                "Log segments uploaded to the backup.",
            )
            .expect("valid metric"),
            backup_snapshot_duration_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "outpost_backup_snapshot_duration_seconds",
                    "Time to take and upload one snapshot.",
                )
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
            )
            .expect("valid metric"),
            backup_enabled: IntGauge::new(
                "outpost_backup_enabled",
                "1 when this node ships its log and snapshots to a backup (backup.enabled).",
            )
            .expect("valid metric"),
            backup_max_backlog_bytes: IntGauge::new(
                "outpost_backup_max_backlog_bytes",
                "The configured bound on the unshipped backlog (backup.max_backlog_bytes).",
            )
            .expect("valid metric"),
            node_info: IntGaugeVec::new(
                Opts::new(
                    "outpost_node_info",
                    "Always 1; labels name this node and the outpost version it runs.",
                ),
                &["node_id", "version"],
            )
            .expect("valid metric"),
            sync_peer_behind_entries: IntGaugeVec::new(
                Opts::new(
                    "outpost_sync_peer_behind_entries",
                    "Log entries this node holds that a connected peer lacks, per its last acknowledgment.",
                ),
                &["peer"],
            )
            .expect("valid metric"),
            sync_peer_behind_seconds: GaugeVec::new(
                Opts::new(
                    "outpost_sync_peer_behind_seconds",
                    "How long the oldest change this node holds that a connected peer may lack has waited, in seconds (0: the peer holds everything).",
                ),
                &["peer"],
            )
            .expect("valid metric"),
            quarantined_entries: IntGauge::new(
                "outpost_quarantined_entries",
                "Incoming entries held in quarantine now (outpost quarantine list).",
            )
            .expect("valid metric"),
            data_dir_free_bytes: IntGauge::new(
                "outpost_data_dir_free_bytes",
                "Bytes available to outpost on the filesystem that holds the data directory.",
            )
            .expect("valid metric"),
            data_dir_capacity_bytes: IntGauge::new(
                "outpost_data_dir_capacity_bytes",
                "Size of the filesystem that holds the data directory.",
            )
            .expect("valid metric"),
            backup_last_snapshot_timestamp_seconds: IntGauge::new(
                "outpost_backup_last_snapshot_timestamp_seconds",
                "When the newest snapshot in the backup was taken (Unix seconds; 0: none yet). Point-in-time restore reaches back to the oldest one kept.",
            )
            .expect("valid metric"),
            sync_peer_last_seen_timestamp_seconds: IntGaugeVec::new(
                Opts::new(
                    "outpost_sync_peer_last_seen_timestamp_seconds",
                    "When each peer last acknowledged entries, by node id (Unix seconds; recorded every sync.compact_interval, kept for sync.peer_retention), on both the dialing and the accepting side.",
                ),
                &["peer"],
            )
            .expect("valid metric"),
            tls_cert_not_after_timestamp_seconds: IntGaugeVec::new(
                Opts::new(
                    "outpost_tls_cert_not_after_timestamp_seconds",
                    "When a certificate this node presents expires (Unix seconds), by use (api, sync).",
                ),
                &["cert"],
            )
            .expect("valid metric"),
            registry,
        };
        m.register_all();
        m
    }

    /// Every outpost metric with its kind, in the order of the reference table.
    fn collectors(&self) -> Vec<(Box<dyn Collector>, Kind)> {
        vec![
            (Box::new(self.http_requests_total.clone()), Kind::Counter),
            (
                Box::new(self.http_request_duration_seconds.clone()),
                Kind::Histogram,
            ),
            (Box::new(self.streams_open.clone()), Kind::Gauge),
            (Box::new(self.ws_connections_open.clone()), Kind::Gauge),
            (Box::new(self.feed_subscribers.clone()), Kind::Gauge),
            (Box::new(self.feed_events_total.clone()), Kind::Counter),
            (Box::new(self.feed_lagged_total.clone()), Kind::Counter),
            (Box::new(self.writer_queue_depth.clone()), Kind::Gauge),
            (Box::new(self.reader_queue_depth.clone()), Kind::Gauge),
            (Box::new(self.group_commit_size.clone()), Kind::Histogram),
            (Box::new(self.statements_total.clone()), Kind::Counter),
            (Box::new(self.db_size_bytes.clone()), Kind::Gauge),
            (Box::new(self.stream_expired_total.clone()), Kind::Counter),
            (Box::new(self.rejected_total.clone()), Kind::Counter),
            (Box::new(self.log_entries_total.clone()), Kind::Counter),
            (Box::new(self.log_bytes.clone()), Kind::Gauge),
            (
                Box::new(self.capture_duration_seconds.clone()),
                Kind::Histogram,
            ),
            (Box::new(self.doc_cache_hits_total.clone()), Kind::Counter),
            (Box::new(self.doc_cache_misses_total.clone()), Kind::Counter),
            (Box::new(self.tables_replicated.clone()), Kind::Gauge),
            (Box::new(self.sync_rejected_total.clone()), Kind::Counter),
            (
                Box::new(self.sync_entries_sent_total.clone()),
                Kind::Counter,
            ),
            (
                Box::new(self.sync_entries_received_total.clone()),
                Kind::Counter,
            ),
            (Box::new(self.sync_bytes_sent_total.clone()), Kind::Counter),
            (
                Box::new(self.sync_bytes_received_total.clone()),
                Kind::Counter,
            ),
            (Box::new(self.sync_lag_seconds.clone()), Kind::Histogram),
            (Box::new(self.sync_peer_state.clone()), Kind::Gauge),
            (Box::new(self.sync_paused.clone()), Kind::Gauge),
            (
                Box::new(self.log_compacted_entries_total.clone()),
                Kind::Counter,
            ),
            (Box::new(self.schema_version.clone()), Kind::Gauge),
            (
                Box::new(self.migrations_applied_total.clone()),
                Kind::Counter,
            ),
            (
                Box::new(self.sync_ignored_values_total.clone()),
                Kind::Counter,
            ),
            (
                Box::new(self.sync_throttled_seconds_total.clone()),
                Kind::Counter,
            ),
            (
                Box::new(self.backup_last_success_timestamp_seconds.clone()),
                Kind::Gauge,
            ),
            (Box::new(self.backup_unshipped_entries.clone()), Kind::Gauge),
            (Box::new(self.backup_unshipped_bytes.clone()), Kind::Gauge),
            (
                Box::new(self.backup_backlog_over_limit.clone()),
                Kind::Gauge,
            ),
            (
                Box::new(self.backup_upload_bytes_total.clone()),
                Kind::Counter,
            ),
            (
                Box::new(self.backup_upload_failures_total.clone()),
                Kind::Counter,
            ),
            (Box::new(self.backup_segments_total.clone()), Kind::Counter),
            (
                Box::new(self.backup_snapshot_duration_seconds.clone()),
                Kind::Histogram,
            ),
            (Box::new(self.backup_enabled.clone()), Kind::Gauge),
            (Box::new(self.backup_max_backlog_bytes.clone()), Kind::Gauge),
            (Box::new(self.node_info.clone()), Kind::Gauge),
            (Box::new(self.sync_peer_behind_entries.clone()), Kind::Gauge),
            (Box::new(self.sync_peer_behind_seconds.clone()), Kind::Gauge),
            (Box::new(self.quarantined_entries.clone()), Kind::Gauge),
            (Box::new(self.data_dir_free_bytes.clone()), Kind::Gauge),
            (Box::new(self.data_dir_capacity_bytes.clone()), Kind::Gauge),
            (
                Box::new(self.backup_last_snapshot_timestamp_seconds.clone()),
                Kind::Gauge,
            ),
            (
                Box::new(self.sync_peer_last_seen_timestamp_seconds.clone()),
                Kind::Gauge,
            ),
            (
                Box::new(self.tls_cert_not_after_timestamp_seconds.clone()),
                Kind::Gauge,
            ),
        ]
    }

    fn register_all(&self) {
        let process = prometheus::process_collector::ProcessCollector::for_self();
        let own = self.collectors().into_iter().map(|(c, _)| c);
        for c in own.chain(std::iter::once(Box::new(process) as Box<dyn Collector>)) {
            self.registry.register(c).expect("metric names are unique");
        }
    }

    /// Every outpost metric (the standard `process_*` ones aside), from
    /// the definitions themselves, so the documentation cannot drift.
    pub fn reference(&self) -> Vec<MetricDoc> {
        let mut docs = Vec::new();
        for (collector, kind) in self.collectors() {
            for desc in collector.desc() {
                docs.push(MetricDoc {
                    name: desc.fq_name.clone(),
                    kind,
                    labels: desc.variable_labels.clone(),
                    help: desc.help.clone(),
                });
            }
        }
        docs
    }

    /// The reference as the Markdown table README.md holds.
    pub fn reference_table(&self) -> String {
        let mut table = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
        for doc in self.reference() {
            let labels = doc
                .labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ");
            table.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                doc.name,
                doc.kind.as_str(),
                labels,
                doc.help.replace('|', "\\|")
            ));
        }
        table.push_str("| `process_*` | | | the standard process metrics: `process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`, `process_virtual_memory_bytes`, `process_start_time_seconds`, `process_threads` |\n");
        table
    }

    /// Labels this node's series with its id and version (`outpost_node_info`).
    pub fn set_node(&self, node_id: &str) {
        self.node_info.reset();
        self.node_info
            .with_label_values(&[node_id, env!("CARGO_PKG_VERSION")])
            .set(1);
    }

    /// Records when the certificate in `path` (the first of the chain)
    /// expires, under `cert` (api, sync).
    pub fn observe_certificate(&self, cert: &str, path: &std::path::Path) {
        match crate::sync::tls::not_after(path) {
            Ok(secs) => self
                .tls_cert_not_after_timestamp_seconds
                .with_label_values(&[cert])
                .set(secs),
            Err(e) => tracing::warn!(cert, error = %e, "cannot read the certificate's expiry"),
        }
    }

    /// Reads the data directory's filesystem (free and total bytes); on
    /// error the gauges keep their last values.
    pub fn observe_data_dir(&self, data_dir: &std::path::Path) {
        match filesystem_space(data_dir) {
            Ok((free, capacity)) => {
                self.data_dir_free_bytes.set(free as i64);
                self.data_dir_capacity_bytes.set(capacity as i64);
            }
            Err(e) => {
                tracing::warn!(dir = %data_dir.display(), error = %e, "cannot read the data directory's free space")
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// (bytes available to unprivileged users, total bytes) of the filesystem
/// holding `path`.
// The statvfs fields are u64 here but narrower on 32-bit targets.
#[allow(clippy::useless_conversion)]
fn filesystem_space(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to
    // writable memory of the right size; statvfs initializes it on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    let fragment = u64::from(stat.f_frsize);
    Ok((
        u64::from(stat.f_bavail) * fragment,
        u64::from(stat.f_blocks) * fragment,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_every_family_with_prefix() {
        let m = super::Metrics::new();
        m.http_requests_total
            .with_label_values(&["pipeline", "200"])
            .inc();
        m.statements_total
            .with_label_values(&["writer", "ok"])
            .inc();
        m.rejected_total
            .with_label_values(&["body_too_large"])
            .inc();
        m.http_request_duration_seconds
            .with_label_values(&["pipeline"])
            .observe(0.001);
        let text = m.render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                name.starts_with("outpost_") || name.starts_with("process_"),
                "{name}"
            );
        }
        assert!(text.contains("outpost_writer_queue_depth"));
    }

    /// README.md's metrics table is the one the definitions generate.
    /// `OUTPOST_BLESS=1 cargo test --lib metrics` rewrites it.
    #[test]
    fn readme_table_matches_the_definitions() {
        use super::{REFERENCE_BEGIN, REFERENCE_END};
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let begin = readme
            .find(REFERENCE_BEGIN)
            .expect("README has the begin marker");
        let body_at = begin + REFERENCE_BEGIN.len() + 1;
        let end = readme
            .find(REFERENCE_END)
            .expect("README has the end marker");
        let expected = super::Metrics::new().reference_table();
        if readme[body_at..end] == expected {
            return;
        }
        if std::env::var("OUTPOST_BLESS").is_ok_and(|v| v == "1") {
            let updated = format!("{}{expected}{}", &readme[..body_at], &readme[end..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        panic!(
            "README.md's metrics table is stale; run `OUTPOST_BLESS=1 cargo test --lib metrics` \
             or paste:\n{expected}"
        );
    }

    /// Prometheus naming: a prefix, counters end in `_total`, units are
    /// base units spelled out, and no two metrics share a name.
    #[test]
    fn names_follow_prometheus_conventions() {
        let docs = super::Metrics::new().reference();
        let mut seen = std::collections::HashSet::new();
        for doc in &docs {
            assert!(seen.insert(doc.name.clone()), "{} twice", doc.name);
            assert!(doc.name.starts_with("outpost_"), "{}", doc.name);
            let is_total = doc.name.ends_with("_total");
            assert_eq!(doc.kind == super::Kind::Counter, is_total, "{}", doc.name);
            for bad in [
                "_ms",
                "_milliseconds",
                "_kb",
                "_mb",
                "_count",
                "_sum",
                "_bucket",
            ] {
                assert!(!doc.name.ends_with(bad), "{}", doc.name);
            }
            assert!(
                doc.help.ends_with('.') || doc.help.ends_with(')'),
                "{}: {}",
                doc.name,
                doc.help
            );
        }
        assert!(docs.len() >= 45, "{} metrics", docs.len());
    }
}
