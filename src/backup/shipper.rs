//! The backup tasks of `outpost serve`.
//!
//! **Shipping.** A commit moves the log's version vector (`Events`). When
//! the log holds entries the backup lacks, and `backup.interval` passed
//! since the last upload (or the backlog fills a segment), the shipper
//! reads them from its own read-only connection — origin by origin, in seq
//! order, as a peer would get them — encodes a segment and uploads it. Only
//! then does it record the new `shipped` vector (`state`), and hand it to
//! log compaction. Storage down or slow costs nothing but a growing
//! backlog: writes never wait for the backup; failed uploads are retried
//! with backoff.
//!
//! **Snapshots.** Every `backup.snapshot_interval`, after a migration, at
//! start when the backup has none, and when compaction got ahead of the
//! backup (the backlog outgrew `backup.max_backlog_bytes`), then retention.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::segment::{Segment, SegmentHeader};
use super::snapshot::{Manifest, SnapshotJob};
use super::state::{self, ShipState};
use super::store::Store;
use super::BackupError;
use crate::config::Config;
use crate::db::log::{LogReader, Outbound};
use crate::db::Database;
use crate::metrics::Metrics;
use crate::sync::vv::VersionVector;

/// Most entries in one segment (besides `backup.segment_bytes`).
const MAX_SEGMENT_ENTRIES: usize = 100_000;
/// The longest wait between attempts while storage fails.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The guess of an entry's size before the first segment measured one.
const DEFAULT_ENTRY_BYTES: u64 = 256;

/// What `/status` shows of the backup.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub url: String,
    /// When every committed entry was last in the backup (Unix ms; 0: never).
    pub caught_up_ms: u64,
    pub unshipped_entries: u64,
    /// Estimated from the entries' average size in recent segments.
    pub unshipped_bytes: u64,
    pub over_limit: bool,
    pub next_segment: u64,
    pub last_snapshot_ms: u64,
    pub last_error: Option<String>,
}

pub struct Backup {
    store: Store,
    db: Arc<Database>,
    reader: Arc<LogReader>,
    data_dir: PathBuf,
    config: crate::config::BackupConfig,
    node_id: String,
    metrics: Arc<Metrics>,
    state: Mutex<ShipState>,
    status: Mutex<Status>,
    /// Average bytes per entry in the last segment.
    entry_bytes: std::sync::atomic::AtomicU64,
    snapshot_lock: tokio::sync::Mutex<()>,
    /// One shipping round at a time (the loop and `finish` at shutdown):
    /// two rounds would upload under one segment name.
    ship_lock: tokio::sync::Mutex<()>,
}

impl Backup {
    /// Opens the store and the state, sets what log compaction must keep,
    /// and starts the shipping and snapshot tasks. Call before sync starts.
    pub fn start(
        config: &Config,
        db: Arc<Database>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Backup>, BackupError> {
        let url = config.backup_url();
        let store = Store::open(&url, &config.backup)?;
        let node_id = db
            .meta()
            .map_err(|e| BackupError::Other(format!("reading the node id: {e}")))?
            .node_id;
        let state = state::load(&config.node.data_dir, &url, &node_id);
        db.set_backup_hold(Some(state.shipped.clone()));
        metrics
            .backup_last_snapshot_timestamp_seconds
            .set((state.last_snapshot_ms / 1000) as i64);
        let backup = Arc::new(Backup {
            reader: Arc::new(LogReader::open(db.path())?),
            status: Mutex::new(Status {
                url: url.clone(),
                next_segment: state.next_index,
                last_snapshot_ms: state.last_snapshot_ms,
                ..Status::default()
            }),
            state: Mutex::new(state),
            store,
            db,
            data_dir: config.node.data_dir.clone(),
            config: config.backup.clone(),
            node_id,
            metrics,
            entry_bytes: DEFAULT_ENTRY_BYTES.into(),
            snapshot_lock: tokio::sync::Mutex::new(()),
            ship_lock: tokio::sync::Mutex::new(()),
        });
        tracing::info!(url = %url, interval = ?config.backup.interval, "backup on");
        actix_web::rt::spawn(Arc::clone(&backup).ship_loop());
        actix_web::rt::spawn(Arc::clone(&backup).snapshot_loop());
        Ok(backup)
    }

    /// At shutdown: ships what is left, waiting at most `backup.timeout`
    /// and never more than 10 s (a stop must not hang on slow storage; what
    /// is left goes at the next start).
    pub async fn finish(&self) {
        let as_of = super::now_ms();
        let upto = self.db.events().log_vector();
        if self.shipped().covers(&upto) {
            return;
        }
        let wait = self.config.timeout.min(Duration::from_secs(10));
        match tokio::time::timeout(wait, self.ship(&upto, as_of)).await {
            Ok(Ok(())) => tracing::info!("shipped the rest of the log to the backup"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not ship the rest of the log: it goes at the next start")
            }
            Err(_) => {
                tracing::warn!("shipping the rest of the log timed out: it goes at the next start")
            }
        }
    }

    pub fn status(&self) -> Status {
        self.status.lock().clone()
    }

    fn shipped(&self) -> VersionVector {
        self.state.lock().shipped.clone()
    }

    fn fail(&self, kind: &str, error: &BackupError) {
        self.metrics
            .backup_upload_failures_total
            .with_label_values(&[kind])
            .inc();
        self.status.lock().last_error = Some(error.to_string());
    }

    /// Ships on a deadline: an entry committed just after a round began
    /// waits for the next round, so rounds start `interval` minus the poll
    /// period and the last upload's duration apart — an entry is in the
    /// backup within `backup.interval` of its commit while uploads keep up.
    async fn ship_loop(self: Arc<Self>) {
        let interval = self.config.interval;
        let poll = (interval / 10).clamp(Duration::from_millis(5), Duration::from_millis(50));
        let mut closing = self.db.events().closing();
        let mut last_round = Instant::now();
        let mut last_took = Duration::ZERO;
        let mut retry_at = Instant::now();
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = closing.changed() => return,
            }
            // Taken before the log vector: caught up "as of" a moment
            // every write acknowledged earlier is part of.
            let measured_at = super::now_ms();
            let upto = self.db.events().log_vector();
            let backlog = self.measure_backlog(&upto);
            if backlog == 0 {
                self.caught_up(measured_at);
                continue;
            }
            let period = interval.saturating_sub(poll + last_took).max(interval / 2);
            let full = backlog * self.entry_bytes.load(std::sync::atomic::Ordering::Relaxed)
                >= self.config.segment_bytes as u64;
            if Instant::now() < retry_at || (last_round.elapsed() < period && !full) {
                continue;
            }
            last_round = Instant::now();
            let result = self.ship(&upto, measured_at).await;
            last_took = last_round.elapsed();
            match result {
                Ok(()) => {
                    failures = 0;
                    self.status.lock().last_error = None;
                }
                Err(e) => {
                    failures += 1;
                    self.fail("segment", &e);
                    let backoff =
                        (interval * 2u32.saturating_pow(failures.min(16))).min(MAX_BACKOFF);
                    retry_at = Instant::now() + backoff;
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(error = %e, failures, retry_in = ?backoff, "backup upload failed; writes go on, the backlog stays in the log: check backup.url, the storage credentials and that the storage is reachable (`outpost status` shows the last error)");
                    }
                }
            }
        }
    }

    /// Unshipped entries (an estimate of their bytes goes to the metrics);
    /// past `backup.max_backlog_bytes` the backup stops holding compaction.
    fn measure_backlog(&self, upto: &VersionVector) -> u64 {
        let shipped = self.shipped();
        let entries: u64 = upto.ahead_of(&shipped).map(|(_, from, to)| to - from).sum();
        let bytes = entries * self.entry_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let limit = self.config.max_backlog_bytes;
        let over = bytes > limit;
        let was_over = {
            let mut status = self.status.lock();
            status.unshipped_entries = entries;
            status.unshipped_bytes = bytes;
            std::mem::replace(&mut status.over_limit, over)
        };
        self.metrics.backup_unshipped_entries.set(entries as i64);
        self.metrics.backup_unshipped_bytes.set(bytes as i64);
        self.metrics.backup_backlog_over_limit.set(i64::from(over));
        if over && !was_over {
            tracing::error!(bytes, limit, "the unshipped backup backlog passed backup.max_backlog_bytes: the backup no longer holds log compaction back; it will start again from a snapshot when storage is back");
            self.db.set_backup_hold(None);
        } else if !over && was_over {
            tracing::info!(bytes, "the backup backlog is back under its limit");
            self.db.set_backup_hold(Some(shipped));
        }
        entries
    }

    /// The backup held every entry committed before `as_of` (Unix ms).
    fn caught_up(&self, as_of: u64) {
        let mut status = self.status.lock();
        status.caught_up_ms = status.caught_up_ms.max(as_of);
        self.metrics
            .backup_last_success_timestamp_seconds
            .set((status.caught_up_ms / 1000) as i64);
    }

    /// Ships segments until the backup holds `upto` (or nothing more can
    /// be read: the rest waits in quarantine, as it does for peers).
    async fn ship(&self, upto: &VersionVector, as_of: u64) -> Result<(), BackupError> {
        let _one_round = self.ship_lock.lock().await;
        self.snapshot_if_compacted().await?;
        self.snapshot_if_schema_changed().await?;
        loop {
            let shipped = self.shipped();
            if shipped.covers(upto) {
                break;
            }
            let entries = self.read_entries(&shipped, upto).await?;
            if entries.is_empty() {
                break;
            }
            self.upload_segment(shipped, entries).await?;
        }
        self.measure_backlog(upto);
        self.caught_up(as_of);
        Ok(())
    }

    /// Entries written after a schema change (a migration, or DDL) need
    /// the new tables and columns to be restored: a snapshot with them goes
    /// first, else a crash before the scheduled one would leave a backup
    /// whose newest segments no snapshot can take.
    async fn snapshot_if_schema_changed(&self) -> Result<(), BackupError> {
        let schema = self.db.events().schema().hash;
        if schema == self.state.lock().last_snapshot_schema {
            return Ok(());
        }
        tracing::info!("the schema changed: a snapshot before the entries written under it");
        self.snapshot().await.map(drop)
    }

    /// When compaction deleted entries the backup lacks (it let go past
    /// its backlog limit), a snapshot takes their place.
    async fn snapshot_if_compacted(&self) -> Result<(), BackupError> {
        let compacted = self.reader.compacted()?;
        if self.shipped().covers(&compacted) {
            return Ok(());
        }
        tracing::warn!("the log was compacted past what the backup holds: taking a snapshot first");
        let manifest = self.snapshot().await?;
        let mut state = self.state.lock();
        state.shipped.merge(&manifest.have);
        state::save(&self.data_dir, &state)?;
        self.db.set_backup_hold(Some(state.shipped.clone()));
        Ok(())
    }

    async fn read_entries(
        &self,
        shipped: &VersionVector,
        upto: &VersionVector,
    ) -> Result<Vec<crate::db::capture::LogEntry>, BackupError> {
        // Placeholders are shipped as they are: the backup mirrors the log.
        let everything = Outbound {
            partial: true,
            rules: None,
        };
        let (reader, shipped, upto) = (Arc::clone(&self.reader), shipped.clone(), upto.clone());
        let max_bytes = self.config.segment_bytes;
        tokio::task::spawn_blocking(move || {
            reader.read(
                &shipped,
                &upto,
                MAX_SEGMENT_ENTRIES,
                max_bytes,
                i64::MAX,
                &everything,
            )
        })
        .await
        .map_err(|e| BackupError::Other(format!("reading the log: {e}")))?
        .map_err(BackupError::from)
    }

    async fn upload_segment(
        &self,
        from: VersionVector,
        entries: Vec<crate::db::capture::LogEntry>,
    ) -> Result<(), BackupError> {
        let index = self.state.lock().next_index;
        let mut to = from.clone();
        let mut certs = Vec::new();
        let mut key_ids = std::collections::BTreeSet::new();
        for e in &entries {
            to.observe(e.origin, e.seq);
            if e.key_id != 0 && key_ids.insert(e.key_id) {
                if let Some(cert) = self.db.keys().and_then(|k| k.certificate(e.key_id)) {
                    certs.push(cert.to_vec());
                }
            }
        }
        let raw: u64 = entries.iter().map(|e| e.size() as u64).sum();
        let count = entries.len() as u64;
        let header = SegmentHeader {
            index,
            node_id: self.node_id.clone(),
            from,
            to: to.clone(),
            entries: count,
            min_hlc: entries.iter().map(|e| e.hlc).min().unwrap_or(0),
            max_hlc: entries.iter().map(|e| e.hlc).max().unwrap_or(0),
            raw_bytes: 0,
            created_ms: super::now_ms(),
        };
        let level = self.config.compression_level;
        let segment = Segment {
            header,
            certs,
            entries,
        };
        let bytes = tokio::task::spawn_blocking(move || super::segment::encode(&segment, level))
            .await
            .map_err(|e| BackupError::Other(format!("encoding a segment: {e}")))?;
        let size = bytes.len() as u64;
        self.store
            .put(&super::segment_name(&self.node_id, index), bytes.into())
            .await?;
        self.entry_bytes.store(
            (raw / count.max(1)).max(1),
            std::sync::atomic::Ordering::Relaxed,
        );
        {
            let mut state = self.state.lock();
            state.next_index = index + 1;
            state.shipped = to.clone();
            state::save(&self.data_dir, &state)?;
        }
        if !self.status.lock().over_limit {
            self.db.set_backup_hold(Some(to));
        }
        self.status.lock().next_segment = index + 1;
        self.metrics
            .backup_upload_bytes_total
            .with_label_values(&["segment"])
            .inc_by(size);
        self.metrics.backup_segments_total.inc();
        tracing::debug!(
            index,
            entries = count,
            bytes = size,
            "shipped a log segment"
        );
        Ok(())
    }

    async fn snapshot_loop(self: Arc<Self>) {
        let mut closing = self.db.events().closing();
        let mut retry = Duration::from_secs(1);
        let mut due = match super::snapshot::list(&self.store, &self.node_id).await {
            Ok(list) => list.is_empty(),
            Err(_) => true,
        };
        loop {
            if due || self.snapshot_due() {
                match self.snapshot().await {
                    Ok(_) => {
                        retry = Duration::from_secs(1);
                        due = false;
                        self.prune().await;
                    }
                    Err(e) => {
                        self.fail("snapshot", &e);
                        tracing::warn!(error = %e, retry_in = ?retry, "backup snapshot failed: check backup.url, the storage credentials and free space on the storage (`outpost status` shows the last error)");
                        due = true;
                        tokio::select! {
                            _ = tokio::time::sleep(retry) => {}
                            _ = closing.changed() => return,
                        }
                        retry = (retry * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = closing.changed() => return,
            }
        }
    }

    fn snapshot_due(&self) -> bool {
        let state = self.state.lock();
        let age = super::now_ms().saturating_sub(state.last_snapshot_ms);
        let schema = self.db.events().schema().hash;
        age >= self.config.snapshot_interval.as_millis() as u64
            || schema != state.last_snapshot_schema
    }

    /// Takes a snapshot now and records it.
    pub async fn snapshot(&self) -> Result<Manifest, BackupError> {
        let _one_at_a_time = self.snapshot_lock.lock().await;
        let started = Instant::now();
        let first_segment = self.state.lock().next_index;
        let manifest = super::snapshot::take(
            &self.store,
            SnapshotJob {
                db_path: self.db.path(),
                work_dir: &self.data_dir,
                node_id: &self.node_id,
                first_segment,
                level: self.config.compression_level,
            },
        )
        .await?;
        let took = started.elapsed();
        self.metrics
            .backup_snapshot_duration_seconds
            .observe(took.as_secs_f64());
        self.metrics
            .backup_upload_bytes_total
            .with_label_values(&["snapshot"])
            .inc_by(manifest.object_bytes);
        {
            let mut state = self.state.lock();
            state.last_snapshot_ms = manifest.created_ms;
            state.last_snapshot_schema = manifest.schema_hash.clone();
            state::save(&self.data_dir, &state)?;
        }
        self.status.lock().last_snapshot_ms = manifest.created_ms;
        self.metrics
            .backup_last_snapshot_timestamp_seconds
            .set((manifest.created_ms / 1000) as i64);
        tracing::info!(
            bytes = manifest.object_bytes,
            db_bytes = manifest.db_bytes,
            took = ?took,
            "uploaded a backup snapshot"
        );
        Ok(manifest)
    }

    async fn prune(&self) {
        let max_age = self.config.snapshot_max_age.as_millis() as u64;
        match super::snapshot::prune(
            &self.store,
            &self.node_id,
            self.config.snapshot_keep,
            max_age,
        )
        .await
        {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(objects = deleted, "backup retention deleted old objects")
            }
            Err(e) => {
                tracing::warn!(error = %e, "backup retention failed (retried after the next snapshot)")
            }
        }
    }
}
