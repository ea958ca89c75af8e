//! What the writer announces after each COMMIT: the change-log entries it
//! committed (for the live change feed) and the log's new high-water marks
//! (for replication). Both are published only after the transaction
//! committed, so a subscriber never sees a change that was rolled back.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::crdt::value::Value;
use crate::sync::vv::VersionVector;

/// What a committed change did to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// One committed change of one row, local or replicated.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// The yrs client id of the node that wrote it.
    pub origin: u64,
    pub seq: u64,
    pub hlc: u64,
    pub table: String,
    /// The row key as stored in the log: SQLite `quote()` literals of the
    /// primary-key columns joined by commas (see `crdt::value::parse_key`).
    pub key: String,
    pub op: Op,
    /// The row after the change (every column), None for a delete.
    pub values: Option<Vec<(String, Value)>>,
}

/// The schema a node is at: what its sync handshake announces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaState {
    /// The last migration applied (0: none).
    pub version: i64,
    /// A hash of the user tables' definitions (`migrate::schema_hash`).
    pub hash: String,
}

/// The writer's announcements. Cheap to clone handles from.
pub struct Events {
    changes: broadcast::Sender<Arc<[ChangeEvent]>>,
    log: watch::Sender<VersionVector>,
    closing: watch::Sender<bool>,
    schema: watch::Sender<SchemaState>,
}

impl Events {
    /// `feed_capacity`: most commits a slow subscriber may fall behind
    /// before it is told it lagged (tokio's broadcast drops the oldest).
    pub fn new(feed_capacity: usize, initial: VersionVector) -> Events {
        let (changes, _) = broadcast::channel(feed_capacity.max(1));
        let (log, _) = watch::channel(initial);
        let (closing, _) = watch::channel(false);
        let (schema, _) = watch::channel(SchemaState::default());
        Events {
            changes,
            log,
            closing,
            schema,
        }
    }

    /// Called by the writer after a COMMIT that wrote log entries.
    pub fn publish(&self, committed: Vec<ChangeEvent>) {
        if committed.is_empty() {
            return;
        }
        self.log.send_modify(|vv| {
            for event in &committed {
                vv.observe(event.origin, event.seq);
            }
        });
        // No receiver is not an error: nobody subscribed.
        let _ = self.changes.send(committed.into());
    }

    /// The server is shutting down: long-lived subscribers (the live
    /// feed) end now instead of holding the shutdown up.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Turns true when [`Events::close`] is called.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Replaces the log vector (at start, read from the database).
    pub fn reset(&self, vv: VersionVector) {
        self.log.send_replace(vv);
    }

    /// Merges `vv` into the log vector (after a snapshot raised the floor).
    pub fn observe(&self, vv: &VersionVector) {
        self.log.send_modify(|log| log.merge(vv));
    }

    /// Whether any feed subscriber listens (values are only read then).
    pub fn has_subscribers(&self) -> bool {
        self.changes.receiver_count() > 0
    }

    /// Every commit from now on; `Err(Lagged)` when the receiver fell more
    /// than the feed capacity behind.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[ChangeEvent]>> {
        self.changes.subscribe()
    }

    /// The highest seq in the log per origin, updated at every commit.
    pub fn log_watch(&self) -> watch::Receiver<VersionVector> {
        self.log.subscribe()
    }

    pub fn log_vector(&self) -> VersionVector {
        self.log.borrow().clone()
    }

    /// Called by the writer after a commit that may have changed the
    /// schema (a migration, DDL); wakes watchers only if it did.
    pub fn set_schema(&self, state: SchemaState) {
        self.schema.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    pub fn schema(&self) -> SchemaState {
        self.schema.borrow().clone()
    }

    /// Changes of the schema (version or hash).
    pub fn schema_watch(&self) -> watch::Receiver<SchemaState> {
        self.schema.subscribe()
    }
}
