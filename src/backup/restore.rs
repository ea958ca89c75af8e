//! `outpost restore`: rebuild a node from the backup.
//!
//! 1. Pick the node's newest snapshot (or the newest taken at or before
//!    `--at`, none of whose entries is stamped after it).
//! 2. Download and decompress it into the new data dir, checking its
//!    SHA-256 against the manifest.
//! 3. Give the database a new node id (the old node may still be alive;
//!    two nodes must never write under one origin) and forget the old
//!    node's peers.
//! 4. Replay the segments from the manifest's `first_segment` on, each
//!    checked (checksum, dense indexes, no seq gap per origin), through the
//!    same apply path replication uses; with `--at`, each origin stops at
//!    its first entry stamped after it.
//! 5. Run `outpost check` on the result.
//!
//! Every failure names the object at fault.

use std::io::Write;
use std::time::Instant;

use super::segment::Segment;
use super::snapshot::{self, Manifest};
use super::store::Store;
use super::BackupError;
use crate::config::Config;
use crate::db::capture::{Applied, LogEntry};
use crate::sync::vv::VersionVector;

/// A segment body larger than this (or than twice `backup.segment_bytes`)
/// is refused before it is decompressed: a segment holds at most
/// `backup.segment_bytes` of entries (8 MiB by default) plus framing.
const MIN_SEGMENT_RAW_LIMIT: usize = 64 * 1024 * 1024;

pub struct Request {
    pub from: String,
    /// The node whose backup to restore (needed when several share `from`).
    pub node: Option<String>,
    /// Restore the state at this time (Unix ms), not the newest.
    pub at_ms: Option<u64>,
    /// Run `outpost check` on the result (the default). Skipping it saves
    /// the time of a full check (about 18 µs a row) when the restore must
    /// be fast; checksums and SQLite's quick_check still run.
    pub check: bool,
    /// The config of the node being built: its `node.data_dir` is the
    /// target, its `[backup]` the storage settings.
    pub config: Config,
}

/// What the restore did, for the operator.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub source_node: String,
    pub new_node_id: String,
    pub snapshot_ms: u64,
    pub snapshot_bytes: u64,
    pub segments: u64,
    pub segment_bytes: u64,
    pub entries_applied: u64,
    pub entries_already_held: u64,
    /// Entries stamped after `--at`, left out.
    pub entries_after_at: u64,
    /// The newest entry's stamp (Unix ms), 0 if none was replayed.
    pub last_entry_ms: u64,
    /// Rows `outpost check` counted (0 when it was skipped).
    pub rows: u64,
    /// Seconds spent in `outpost check` (None: skipped).
    pub check_seconds: Option<f64>,
    pub seconds: f64,
}

/// How the restore reports progress (a terminal line, or nothing).
pub trait Progress {
    fn snapshot(&mut self, done: u64, total: u64);
    fn segment(&mut self, done: u64, total: u64, bytes: u64);
}

/// Progress for nobody.
pub struct Quiet;

impl Progress for Quiet {
    fn snapshot(&mut self, _: u64, _: u64) {}
    fn segment(&mut self, _: u64, _: u64, _: u64) {}
}

pub async fn restore(req: Request, progress: &mut dyn Progress) -> Result<Report, BackupError> {
    let started = Instant::now();
    let data_dir = req.config.node.data_dir.clone();
    let db_path = req.config.db_path();
    if db_path.exists() {
        return Err(BackupError::Other(format!(
            "{} already holds a database: restore into a new directory",
            data_dir.display()
        )));
    }
    std::fs::create_dir_all(&data_dir)?;
    let store = Store::open(&req.from, &req.config.backup)?;
    let node = choose_node(&store, req.node.as_deref()).await?;
    let manifest = choose_snapshot(&store, &node, req.at_ms).await?;
    let mut report = Report {
        source_node: node.clone(),
        snapshot_ms: manifest.created_ms,
        snapshot_bytes: manifest.object_bytes,
        ..Report::default()
    };
    let result = async {
        download_snapshot(&store, &manifest, &db_path, progress).await?;
        report.new_node_id = make_new_node(&db_path)?;
        replay_segments(&store, &req, &manifest, &mut report, progress).await?;
        if req.check {
            verify(&db_path, &mut report)?;
        }
        Ok::<_, BackupError>(())
    }
    .await;
    if result.is_err() {
        // A half-restored directory must not be taken for a node.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
        }
    }
    result?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The node named, or the only one with a backup at `from`.
async fn choose_node(store: &Store, named: Option<&str>) -> Result<String, BackupError> {
    // Node ids are 32 hex digits: anything else under the prefix is not ours.
    let nodes: Vec<String> = (store.list_dirs("").await?.into_iter())
        .filter(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    if let Some(node) = named {
        return if nodes.iter().any(|n| n == node) {
            Ok(node.to_string())
        } else {
            Err(BackupError::Incomplete(format!(
                "no backup of node {node} at {} (nodes there: {nodes:?})",
                store.url()
            )))
        };
    }
    match nodes.as_slice() {
        [] => Err(BackupError::Incomplete(format!(
            "no backup at {}",
            store.url()
        ))),
        [one] => Ok(one.clone()),
        many => Err(BackupError::Incomplete(format!(
            "{} holds the backups of several nodes ({many:?}): choose one with --node",
            store.url()
        ))),
    }
}

async fn choose_snapshot(
    store: &Store,
    node: &str,
    at_ms: Option<u64>,
) -> Result<Manifest, BackupError> {
    let manifests = snapshot::list(store, node).await?;
    let oldest = manifests.first().map(|m| m.created_ms);
    let usable = |m: &&Manifest| {
        at_ms.is_none_or(|at| m.created_ms <= at && crate::crdt::Hlc::wall_ms(m.max_hlc) <= at)
    };
    match manifests.iter().rev().find(usable) {
        Some(m) => Ok(m.clone()),
        None => Err(BackupError::Incomplete(match (oldest, at_ms) {
            (None, _) => format!("node {node} has no snapshot at {}", store.url()),
            (Some(oldest), Some(at)) => format!(
                "no snapshot of node {node} at or before {} (the oldest is from {}): \
                 the backup does not reach back that far",
                fmt_ms(at),
                fmt_ms(oldest)
            ),
            (Some(_), None) => unreachable!("a snapshot exists and any is usable"),
        })),
    }
}

pub fn fmt_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// Streams the snapshot through zstd into the database file, hashing the
/// compressed bytes on the way; a mismatch deletes the file.
async fn download_snapshot(
    store: &Store,
    manifest: &Manifest,
    db_path: &std::path::Path,
    progress: &mut dyn Progress,
) -> Result<(), BackupError> {
    use sha2::{Digest, Sha256};
    let rel = Manifest::data_name(&manifest.node_id, manifest.created_ms);
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(db_path)?);
    let mut decoder = zstd::stream::write::Decoder::new(file)?;
    let mut hasher = Sha256::new();
    let total = manifest.object_bytes;
    let got = store
        .get_streaming(
            &rel,
            |chunk| {
                hasher.update(chunk);
                decoder.write_all(chunk)
            },
            |done| progress.snapshot(done, total),
        )
        .await;
    let corrupt = |reason: String| BackupError::Corrupt {
        object: store.describe(&rel),
        reason,
    };
    let got = match got {
        Err(BackupError::Io(e)) => return Err(corrupt(format!("does not decompress: {e}"))),
        other => other?,
    };
    let digest = crate::db::migrate::hex(&hasher.finalize());
    if got != manifest.object_bytes || digest != manifest.sha256 {
        return Err(corrupt(format!(
            "checksum mismatch: {got} bytes with SHA-256 {digest}, the manifest says {} bytes with {}",
            manifest.object_bytes, manifest.sha256
        )));
    }
    decoder
        .flush()
        .map_err(|e| corrupt(format!("does not decompress: {e}")))?;
    let mut file = decoder.into_inner();
    file.flush()?;
    file.get_ref().sync_all()?;
    Ok(())
}

/// A new node id, and nothing of the old node's links.
fn make_new_node(db_path: &std::path::Path) -> Result<String, BackupError> {
    let conn = libsql_sys::rusqlite::Connection::open(db_path)?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(BackupError::Other(format!(
            "the snapshot's database fails SQLite's quick_check: {check}"
        )));
    }
    let node_id = crate::db::conn::new_node_id();
    conn.execute_batch("BEGIN IMMEDIATE; DELETE FROM _outpost_peers;")?;
    conn.execute(
        "INSERT OR REPLACE INTO _outpost_meta (key, value) VALUES ('node_id', ?1)",
        [&node_id],
    )?;
    conn.execute_batch("COMMIT")?;
    Ok(node_id)
}

/// Downloads and applies the segments after the snapshot, in order.
async fn replay_segments(
    store: &Store,
    req: &Request,
    manifest: &Manifest,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<(), BackupError> {
    let node = &manifest.node_id;
    let listed: Vec<(u64, String)> = store
        .list(&format!("{node}/segments"))
        .await?
        .into_iter()
        .filter_map(|l| super::segment_index(&l.name).map(|i| (i, l.name)))
        .filter(|(i, _)| *i >= manifest.first_segment)
        .collect();
    check_dense(store, node, manifest.first_segment, &listed)?;
    // Opened for the first entry to apply: starting capture reads the
    // whole log, which a restore right after a snapshot can skip.
    let mut db: Option<crate::db::Database> = None;
    let mut replay = Replay {
        have: manifest.have.clone(),
        at_ms: req.at_ms,
        stopped: Default::default(),
    };
    // Every segment carries the certificates of its keys: the same few.
    let mut certs = std::collections::BTreeSet::new();
    let total = listed.len() as u64;
    let result = async {
        for (done, (_, name)) in listed.iter().enumerate() {
            let rel = format!("{node}/segments/{name}");
            let bytes = store.get(&rel).await?;
            report.segment_bytes += bytes.len() as u64;
            let limit = MIN_SEGMENT_RAW_LIMIT.max(2 * req.config.backup.segment_bytes);
            let segment =
                super::segment::decode(&bytes, limit).map_err(|e| BackupError::Corrupt {
                    object: store.describe(&rel),
                    reason: e.to_string(),
                })?;
            certs.extend(segment.certs.iter().cloned());
            let entries = replay.select(segment, report).map_err(|reason| {
                BackupError::Incomplete(format!("{}: {reason}", store.describe(&rel)))
            })?;
            if !entries.is_empty() {
                if db.is_none() {
                    db = Some(open_database(&req.config)?);
                }
                let db = db.as_ref().expect("opened above");
                apply(db, entries, report, req.config.crdt.max_apply_batch).await?;
            }
            report.segments += 1;
            progress.segment(done as u64 + 1, total, report.segment_bytes);
            if replay.past_at(&bytes) {
                break;
            }
        }
        Ok::<_, BackupError>(())
    }
    .await;
    if let Some(db) = db {
        db.shutdown();
    }
    result?;
    keep_certificates(&req.config.db_path(), &certs)
}

fn open_database(config: &Config) -> Result<crate::db::Database, BackupError> {
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    crate::db::Database::open(config, metrics)
        .map_err(|e| BackupError::Other(format!("opening the restored database: {e}")))
}

fn check_dense(
    store: &Store,
    node: &str,
    first: u64,
    listed: &[(u64, String)],
) -> Result<(), BackupError> {
    for (expect, (index, _)) in (first..).zip(listed) {
        if *index != expect {
            return Err(BackupError::Incomplete(format!(
                "{} does not exist: the backup has a hole (segments {expect} to {} are missing)",
                store.describe(&super::segment_name(node, expect)),
                index - 1
            )));
        }
    }
    Ok(())
}

/// Which entries of each segment to apply.
struct Replay {
    /// What the restored database holds so far, per origin.
    have: VersionVector,
    at_ms: Option<u64>,
    /// Origins that reached `--at`: nothing more of them is applied.
    stopped: std::collections::HashSet<u64>,
}

impl Replay {
    /// The entries to apply: not held yet, not after `--at`, and each
    /// right after the one before of its origin (else the backup has a gap).
    fn select(&mut self, segment: Segment, report: &mut Report) -> Result<Vec<LogEntry>, String> {
        let mut out = Vec::new();
        for entry in segment.entries {
            let held = self.have.get(entry.origin);
            if entry.seq <= held {
                report.entries_already_held += 1;
                continue;
            }
            let after_at = self
                .at_ms
                .is_some_and(|at| crate::crdt::Hlc::wall_ms(entry.hlc) > at);
            if after_at || self.stopped.contains(&entry.origin) {
                self.stopped.insert(entry.origin);
                report.entries_after_at += 1;
                continue;
            }
            if entry.seq != held + 1 {
                return Err(format!(
                    "origin {:016x} continues at seq {} but the snapshot and earlier segments \
                     end at {held}: entries are missing",
                    entry.origin, entry.seq
                ));
            }
            self.have.observe(entry.origin, entry.seq);
            report.last_entry_ms = report
                .last_entry_ms
                .max(crate::crdt::Hlc::wall_ms(entry.hlc));
            out.push(entry);
        }
        Ok(out)
    }

    /// With `--at`, whether a segment was entirely after it (so are all
    /// later ones: segments are shipped in commit order).
    fn past_at(&self, bytes: &[u8]) -> bool {
        let Some(at) = self.at_ms else { return false };
        super::segment::read_header(bytes)
            .map(|(h, _)| {
                h.entries > 0
                    && crate::crdt::Hlc::wall_ms(h.min_hlc) > at + crate::crdt::hlc::MAX_AHEAD_MS
            })
            .unwrap_or(false)
    }
}

/// The certificates the segments carried go into `_outpost_keys`, so the
/// restored node can prove its entries to peers (its key ring checks each
/// against the cluster CA when it starts).
fn keep_certificates(
    db_path: &std::path::Path,
    certs: &std::collections::BTreeSet<Vec<u8>>,
) -> Result<(), BackupError> {
    if certs.is_empty() {
        return Ok(());
    }
    let conn = libsql_sys::rusqlite::Connection::open(db_path)?;
    for der in certs {
        let Ok(known) = crate::sync::keys::parse_certificate(der) else {
            tracing::warn!("a segment carries a certificate that does not parse; skipped");
            continue;
        };
        conn.execute(
            "INSERT OR IGNORE INTO _outpost_keys (key_id, node_id, cert) VALUES (?1, ?2, ?3)",
            libsql_sys::rusqlite::params![
                crate::sync::keys::key_id(&known.key) as i64,
                known.node_id,
                &der[..]
            ],
        )?;
    }
    Ok(())
}

async fn apply(
    db: &crate::db::Database,
    entries: Vec<LogEntry>,
    report: &mut Report,
    batch: usize,
) -> Result<(), BackupError> {
    let mut entries = entries.into_iter().peekable();
    let (mut refused, mut first_refusal) = (0u64, None);
    while entries.peek().is_some() {
        let chunk: Vec<LogEntry> = entries.by_ref().take(batch.max(1)).collect();
        let stamps: Vec<u64> = chunk.iter().map(|e| e.hlc).collect();
        let outcomes = db
            .apply(chunk, "backup")
            .await
            .map_err(|e| BackupError::Other(format!("applying entries: {}", e.message)))?;
        for (outcome, hlc) in outcomes.into_iter().zip(stamps) {
            match outcome {
                Applied::Applied => report.entries_applied += 1,
                Applied::Duplicate => report.entries_already_held += 1,
                Applied::Rejected(why) | Applied::Skipped(why) | Applied::Deferred(why) => {
                    refused += 1;
                    first_refusal.get_or_insert((why, hlc));
                }
            }
        }
    }
    match first_refusal {
        None => Ok(()),
        // The backup holds entries this database cannot take: a restore
        // that went on would quietly lack them.
        Some((why, hlc)) => Err(BackupError::Incomplete(format!(
            "{refused} entries of the backup could not be applied to its snapshot (the first: \
             {why}); `--at {}` restores the state just before that entry",
            crate::crdt::Hlc::wall_ms(hlc).saturating_sub(1)
        ))),
    }
}

/// `outpost check` on the result.
fn verify(db_path: &std::path::Path, report: &mut Report) -> Result<(), BackupError> {
    let started = Instant::now();
    let check = crate::db::check::check(db_path, false)
        .map_err(|e| BackupError::Other(format!("outpost check: {e}")))?;
    if !check.is_clean() {
        return Err(BackupError::Other(format!(
            "the restored database fails outpost check: {check:?}"
        )));
    }
    report.rows = check.rows;
    report.check_seconds = Some(started.elapsed().as_secs_f64());
    Ok(())
}
