//! The cloud backup: every node ships its change log to object storage as
//! compressed, checksummed segments, and uploads periodic snapshots of its
//! database; `outpost restore` rebuilds a node from the newest snapshot plus
//! the segments after it (DESIGN.md, "Cloud backup", promise 7).
//!
//! - [`store`]: where objects live (a directory or S3) and their names.
//! - [`segment`]: the segment format (pure).
//! - [`snapshot`]: `VACUUM INTO`, compress, upload, manifest; retention.
//! - [`shipper`]: the background tasks of `outpost serve`: ship what the log
//!   gained at least every `backup.interval`, snapshot on schedule, report.
//! - [`restore`]: download, verify, replay, check, new node id.
//!
//! What the backup holds is tracked as a version vector (`shipped`): the
//! segments hold every entry above the first snapshot up to it, so the
//! backup acknowledges entries the way a peer does, and log compaction
//! never deletes an entry the backup lacks (`db::compact`) — unless the
//! unshipped backlog outgrows `backup.max_backlog_bytes`, in which case the
//! backup lets go, says so, and starts again from a snapshot.

pub mod restore;
pub mod segment;
pub mod shipper;
pub mod snapshot;
pub mod state;
pub mod store;

pub use shipper::Backup;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup configuration: {0}")]
    Config(String),
    #[error("{op} of {object} failed: {reason}")]
    Storage {
        op: &'static str,
        object: String,
        reason: String,
    },
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{object}: {reason}")]
    Corrupt { object: String, reason: String },
    #[error("the backup cannot be restored: {0}")]
    Incomplete(String),
    #[error("local file: {0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Sql(#[from] libsql_sys::rusqlite::Error),
    #[error("{0}")]
    Other(String),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    crate::crdt::Hlc::now_ms()
}

/// `rel` for object names: `<node>/segments/<index>.seg`.
pub fn segment_name(node_id: &str, index: u64) -> String {
    format!("{node_id}/segments/{index:020}.seg")
}

/// The index in a segment's file name.
pub fn segment_index(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}
