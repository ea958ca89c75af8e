//! Snapshots: a consistent copy of the whole database (`VACUUM INTO` on a
//! read-only connection: one read transaction, writers go on), compressed
//! with zstd and uploaded in parts, then its manifest. A snapshot without a
//! manifest is an upload that did not finish and is never restored.
//!
//! The manifest says what the snapshot holds (`have`, its version vector)
//! and from which segment on the log may hold more (`first_segment`), so a
//! restore downloads only the segments it needs.

use std::io::Write;
use std::path::Path;

use libsql_sys::rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::Store;
use super::BackupError;
use crate::sync::vv::VersionVector;

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub node_id: String,
    pub created_ms: u64,
    /// Every log entry the snapshot holds (log, held quarantine, compacted).
    pub have: VersionVector,
    /// The highest hybrid-clock stamp in its log (0: empty log).
    pub max_hlc: u64,
    pub schema_version: i64,
    /// `db::migrate::schema_hash` of the snapshot.
    pub schema_hash: String,
    /// Segments below this index hold nothing the snapshot lacks.
    pub first_segment: u64,
    /// The database file's size, and the object's.
    pub db_bytes: u64,
    pub object_bytes: u64,
    /// SHA-256 of the object (hex).
    pub sha256: String,
}

impl Manifest {
    pub fn data_name(node_id: &str, created_ms: u64) -> String {
        format!("{node_id}/snapshots/{created_ms:016}.db.zst")
    }

    pub fn manifest_name(node_id: &str, created_ms: u64) -> String {
        format!("{node_id}/snapshots/{created_ms:016}.json")
    }
}

/// What a snapshot needs besides the database.
pub struct SnapshotJob<'a> {
    pub db_path: &'a Path,
    /// Where temporary files go (the data dir): the copy and its compressed
    /// form, both deleted afterwards.
    pub work_dir: &'a Path,
    pub node_id: &'a str,
    pub first_segment: u64,
    pub level: i32,
}

/// Takes a snapshot and uploads it with its manifest.
pub async fn take(store: &Store, job: SnapshotJob<'_>) -> Result<Manifest, BackupError> {
    let created_ms = super::now_ms();
    let tmp = job
        .work_dir
        .join(format!("backup-snapshot-{created_ms}.db"));
    let zst = tmp.with_extension("db.zst");
    let result = take_into(store, &job, created_ms, &tmp, &zst).await;
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(&zst);
    result
}

async fn take_into(
    store: &Store,
    job: &SnapshotJob<'_>,
    created_ms: u64,
    tmp: &Path,
    zst: &Path,
) -> Result<Manifest, BackupError> {
    let (db_path, tmp_owned, zst_owned) = (job.db_path.to_owned(), tmp.to_owned(), zst.to_owned());
    let level = job.level;
    let (facts, db_bytes, object_bytes, sha256) = tokio::task::spawn_blocking(move || {
        copy_database(&db_path, &tmp_owned)?;
        let facts = read_facts(&tmp_owned)?;
        let db_bytes = std::fs::metadata(&tmp_owned)?.len();
        let (object_bytes, sha256) = compress_file(&tmp_owned, &zst_owned, level)?;
        Ok::<_, BackupError>((facts, db_bytes, object_bytes, sha256))
    })
    .await
    .map_err(|e| BackupError::Other(format!("snapshot task: {e}")))??;
    store
        .put_file(&Manifest::data_name(job.node_id, created_ms), zst)
        .await?;
    let manifest = Manifest {
        format: FORMAT,
        node_id: job.node_id.to_string(),
        created_ms,
        have: facts.have,
        max_hlc: facts.max_hlc,
        schema_version: facts.schema_version,
        schema_hash: facts.schema_hash,
        first_segment: job.first_segment,
        db_bytes,
        object_bytes,
        sha256,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    store
        .put(
            &Manifest::manifest_name(job.node_id, created_ms),
            json.into(),
        )
        .await?;
    Ok(manifest)
}

/// `VACUUM INTO` from a read-only connection: a consistent copy, without
/// the WAL, while the writer goes on.
fn copy_database(db: &Path, into: &Path) -> Result<(), BackupError> {
    let _ = std::fs::remove_file(into);
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.execute("VACUUM INTO ?1", [into.to_string_lossy().as_ref()])?;
    Ok(())
}

struct Facts {
    have: VersionVector,
    max_hlc: u64,
    schema_version: i64,
    schema_hash: String,
}

fn read_facts(copy: &Path) -> Result<Facts, BackupError> {
    let conn = Connection::open_with_flags(copy, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let max_hlc: i64 =
        conn.query_row("SELECT coalesce(max(hlc), 0) FROM _outpost_log", [], |r| {
            r.get(0)
        })?;
    Ok(Facts {
        have: crate::db::capture::log_vector(&conn)?,
        max_hlc: max_hlc as u64,
        schema_version: crate::db::migrate::schema_version(&conn)?,
        schema_hash: crate::db::migrate::schema_hash(&conn)?,
    })
}

/// Compresses `from` into `to`; returns the compressed size and its SHA-256.
fn compress_file(from: &Path, to: &Path, level: i32) -> Result<(u64, String), BackupError> {
    let mut input = std::io::BufReader::new(std::fs::File::open(from)?);
    let output = HashingWriter::new(std::fs::File::create(to)?);
    let mut encoder = zstd::stream::Encoder::new(output, level)?;
    std::io::copy(&mut input, &mut encoder)?;
    let output = encoder.finish()?;
    output.inner.sync_all()?;
    Ok((
        output.written,
        crate::db::migrate::hex(&output.hasher.finalize()),
    ))
}

/// A writer that hashes and counts what passes through.
pub struct HashingWriter<W> {
    pub inner: W,
    pub hasher: Sha256,
    pub written: u64,
}

impl<W> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Every complete snapshot of `node_id` (those with a manifest), oldest
/// first. A manifest that does not parse is an error naming it.
pub async fn list(store: &Store, node_id: &str) -> Result<Vec<Manifest>, BackupError> {
    let mut manifests = Vec::new();
    for listed in store.list(&format!("{node_id}/snapshots")).await? {
        if !listed.name.ends_with(".json") {
            continue;
        }
        let rel = format!("{node_id}/snapshots/{}", listed.name);
        let bytes = store.get(&rel).await?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| BackupError::Corrupt {
                object: store.describe(&rel),
                reason: format!("not a snapshot manifest: {e}"),
            })?;
        manifests.push(manifest);
    }
    manifests.sort_by_key(|m| m.created_ms);
    Ok(manifests)
}

/// Which snapshots retention keeps: the newest always; the others while
/// within `keep` of the newest and younger than `max_age_ms`.
pub fn retained(manifests: &[Manifest], keep: usize, max_age_ms: u64, now_ms: u64) -> Vec<bool> {
    let n = manifests.len();
    manifests
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let rank = n - 1 - i;
            rank == 0 || (rank < keep && now_ms.saturating_sub(m.created_ms) <= max_age_ms)
        })
        .collect()
}

/// Deletes the snapshots retention drops (manifest first, so a half-deleted
/// one is never restored), the segments older than the oldest kept, and
/// snapshot files of uploads that never finished. Returns objects deleted.
pub async fn prune(
    store: &Store,
    node_id: &str,
    keep: usize,
    max_age_ms: u64,
) -> Result<usize, BackupError> {
    let manifests = list(store, node_id).await?;
    let kept = retained(&manifests, keep, max_age_ms, super::now_ms());
    let mut deleted = 0;
    for (m, kept) in manifests.iter().zip(&kept) {
        if !kept {
            store
                .delete(&Manifest::manifest_name(node_id, m.created_ms))
                .await?;
            store
                .delete(&Manifest::data_name(node_id, m.created_ms))
                .await?;
            deleted += 2;
        }
    }
    let oldest_kept = manifests
        .iter()
        .zip(&kept)
        .find(|(_, k)| **k)
        .map(|(m, _)| m);
    let Some(oldest) = oldest_kept else {
        return Ok(deleted);
    };
    for listed in store.list(&format!("{node_id}/segments")).await? {
        if super::segment_index(&listed.name).is_some_and(|i| i < oldest.first_segment) {
            store
                .delete(&format!("{node_id}/segments/{}", listed.name))
                .await?;
            deleted += 1;
        }
    }
    let complete: Vec<String> = manifests
        .iter()
        .map(|m| format!("{:016}.db.zst", m.created_ms))
        .collect();
    for listed in store.list(&format!("{node_id}/snapshots")).await? {
        let unfinished = listed.name.ends_with(".db.zst") && !complete.contains(&listed.name);
        if unfinished && listed.name < format!("{:016}", oldest.created_ms) {
            store
                .delete(&format!("{node_id}/snapshots/{}", listed.name))
                .await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(created_ms: u64) -> Manifest {
        Manifest {
            format: FORMAT,
            node_id: "n".into(),
            created_ms,
            have: VersionVector::new(),
            max_hlc: 0,
            schema_version: 0,
            schema_hash: String::new(),
            first_segment: 0,
            db_bytes: 0,
            object_bytes: 0,
            sha256: String::new(),
        }
    }

    #[test]
    fn retention_keeps_the_newest_and_drops_by_count_and_age() {
        let all: Vec<Manifest> = [100, 200, 300, 400].map(manifest).to_vec();
        assert_eq!(retained(&all, 2, 1_000, 400), [false, false, true, true]);
        assert_eq!(retained(&all, 10, 150, 400), [false, false, true, true]);
        assert_eq!(retained(&all, 1, 0, 10_000), [false, false, false, true]);
        assert_eq!(retained(&all, 10, 10_000, 400), [true, true, true, true]);
    }
}
