//! Every Prometheus metric outpost exports, defined in one place.
//!
//! Names carry the `outpost_` prefix and their unit (`_seconds`, `_bytes`,
//! `_total`). The registry is per [`Metrics`] value (not global), so tests can
//! run several servers in one process.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
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
}

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
            registry,
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.http_requests_total.clone()),
            Box::new(self.http_request_duration_seconds.clone()),
            Box::new(self.streams_open.clone()),
            Box::new(self.ws_connections_open.clone()),
            Box::new(self.feed_subscribers.clone()),
            Box::new(self.feed_events_total.clone()),
            Box::new(self.feed_lagged_total.clone()),
            Box::new(self.writer_queue_depth.clone()),
            Box::new(self.reader_queue_depth.clone()),
            Box::new(self.group_commit_size.clone()),
            Box::new(self.statements_total.clone()),
            Box::new(self.db_size_bytes.clone()),
            Box::new(self.stream_expired_total.clone()),
            Box::new(self.rejected_total.clone()),
            Box::new(self.log_entries_total.clone()),
            Box::new(self.log_bytes.clone()),
            Box::new(self.capture_duration_seconds.clone()),
            Box::new(self.doc_cache_hits_total.clone()),
            Box::new(self.doc_cache_misses_total.clone()),
            Box::new(self.tables_replicated.clone()),
            Box::new(self.sync_rejected_total.clone()),
            Box::new(self.sync_entries_sent_total.clone()),
            Box::new(self.sync_entries_received_total.clone()),
            Box::new(self.sync_bytes_sent_total.clone()),
            Box::new(self.sync_bytes_received_total.clone()),
            Box::new(self.sync_lag_seconds.clone()),
            Box::new(self.sync_peer_state.clone()),
            Box::new(self.sync_paused.clone()),
            Box::new(self.log_compacted_entries_total.clone()),
            Box::new(self.schema_version.clone()),
            Box::new(self.migrations_applied_total.clone()),
            Box::new(self.sync_ignored_values_total.clone()),
            Box::new(self.sync_throttled_seconds_total.clone()),
            Box::new(self.backup_last_success_timestamp_seconds.clone()),
            Box::new(self.backup_unshipped_entries.clone()),
            Box::new(self.backup_unshipped_bytes.clone()),
            Box::new(self.backup_backlog_over_limit.clone()),
            Box::new(self.backup_upload_bytes_total.clone()),
            Box::new(self.backup_upload_failures_total.clone()),
            Box::new(self.backup_segments_total.clone()),
            Box::new(self.backup_snapshot_duration_seconds.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            self.registry.register(c).expect("metric names are unique");
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
}
