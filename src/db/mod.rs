//! The local replica: one libSQL database file in WAL mode, one writer
//! thread that owns the only write connection, and a pool of reader threads.
//!
//! Every request becomes a [`Job`]: a self-contained [`WorkItem`] plus the
//! caller's rights and bounds, and a oneshot channel for the reply. Jobs are
//! routed by [`classify::route`]:
//! - reads go to the reader pool and never wait for the writer;
//! - writes queue for the writer, which commits concurrent autocommit writes
//!   together (group commit: one fsync for many, each still atomic), and
//!   replies only after COMMIT returned, so an acknowledged write is durable;
//! - writes mixed with transaction control run alone on the writer.
//!
//! A job that leaves a transaction open turns into a [`Lease`]: the thread
//! that ran it then serves only that stream until it commits, rolls back, or
//! idles past the stream timeout (then it rolls back and moves on). A
//! `BEGIN` (deferred) starts on a reader, so read transactions never block
//! writers; at its first write the transaction moves to the writer — if no
//! write committed since it began, as SQLite's own deferred transactions
//! behave; else the write fails with `SQLITE_BUSY` and the client retries.

pub mod capture;
pub mod check;
pub mod classify;
pub mod compact;
pub mod conn;
mod dispatch;
pub mod events;
pub mod exec;
pub mod log;
pub mod migrate;
pub mod quarantine;
mod readers;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;

pub use exec::{ExecCtx, ExecError, WorkItem, WorkOutput};

use crate::config::Config;
use crate::error::SqlError;
use crate::metrics::Metrics;
use classify::{Route, StmtKind};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: libsql_sys::rusqlite::Error,
    },
    #[error("cannot start a database thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot load the node's signing key: {0}")]
    Keys(#[from] crate::sync::keys::KeyError),
    #[error("cannot start change capture on {path}: {source}")]
    Capture {
        path: PathBuf,
        source: capture::CaptureError,
    },
}

/// The lock file `outpost serve` holds in its data dir.
pub const LOCK_FILE: &str = "outpost.lock";

/// Takes the data dir's lock (an OS file lock, released when the returned
/// file is dropped or the process dies, even by SIGKILL). One `serve` per
/// data dir; offline commands that write (`migrate`) take it too.
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, String> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "another outpost process (a running `outpost serve`?) holds {}",
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Whether the job left a transaction open, and if so, how to reach it.
#[derive(Debug)]
pub enum TxnState {
    /// Autocommit: nothing held.
    Closed,
    /// This job opened a transaction; the stream now holds the writer.
    Opened(Lease),
    /// A job sent through a lease left its transaction open.
    StillOpen,
}

impl TxnState {
    /// The state after a job sent through a lease: still open, or ended.
    fn after_leased_job(open: bool) -> TxnState {
        if open {
            TxnState::StillOpen
        } else {
            TxnState::Closed
        }
    }
}

pub struct JobReply {
    pub output: Result<WorkOutput, ExecError>,
    pub txn: TxnState,
}

pub struct Job {
    pub item: WorkItem,
    pub ctx: ExecCtx,
    pub reply: oneshot::Sender<JobReply>,
}

/// Exclusive use of a connection while a stream's transaction is open.
/// Dropping it makes the connection's thread roll the transaction back.
#[derive(Debug)]
pub struct Lease {
    tx: crossbeam_channel::Sender<Job>,
    kind: LeaseKind,
}

impl Lease {
    /// A lease for the calling thread, and the receiver it serves it from.
    fn open(kind: LeaseKind) -> (Lease, crossbeam_channel::Receiver<Job>) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        (Lease { tx, kind }, rx)
    }
}

#[derive(Debug, Clone, Copy)]
enum LeaseKind {
    Writer,
    /// A read transaction on a reader; `snapshot` is the writer's commit
    /// count when it began, to decide whether it may become a write.
    Reader {
        snapshot: u64,
    },
}

/// Why a job got no reply from the database.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("the {0} queue is full")]
    QueueFull(&'static str),
    #[error("the database is shutting down")]
    Closed,
    #[error("the transaction was rolled back because its stream was idle too long")]
    TxnExpired,
}

pub struct Database {
    /// Commits by the writer so far (see [`LeaseKind::Reader`]).
    commits: Arc<std::sync::atomic::AtomicU64>,
    /// What the writer announces after each commit (feed, replication).
    events: Arc<events::Events>,
    /// A read-only connection for the change log (sync, status).
    log: Arc<log::LogReader>,
    writer: writer::WriterHandle,
    readers: readers::ReaderPool,
    keys: Option<Arc<crate::sync::keys::KeyRing>>,
    path: PathBuf,
    /// What the cloud backup holds: log compaction keeps what it lacks
    /// (None: no backup, or it let go, see `backup`).
    backup_hold: parking_lot::Mutex<Option<crate::sync::vv::VersionVector>>,
}

impl Database {
    /// Opens (creating if needed) the database and starts its threads.
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> Result<Database, DbError> {
        let path = config.db_path();
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let events = Arc::new(events::Events::new(
            config.feed.buffer,
            crate::sync::vv::VersionVector::new(),
        ));
        let trust = capture::Trust::from_config(config)?;
        let keys = trust.keys.clone();
        let writer = writer::WriterHandle::start(
            &path,
            config,
            Arc::clone(&metrics),
            Arc::clone(&commits),
            Arc::clone(&events),
            trust,
        )?;
        let readers = readers::ReaderPool::start(&path, config, metrics, Arc::clone(&commits))?;
        let log = log::LogReader::open(&path).map_err(|source| DbError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Database {
            keys,
            commits,
            events,
            log: Arc::new(log),
            writer,
            readers,
            path,
            backup_hold: parking_lot::Mutex::new(None),
        })
    }

    /// Sets what the backup holds (`backup::shipper`), for log compaction.
    pub fn set_backup_hold(&self, hold: Option<crate::sync::vv::VersionVector>) {
        *self.backup_hold.lock() = hold;
    }

    /// What log compaction must keep for the backup (None: nothing).
    pub fn backup_hold(&self) -> Option<crate::sync::vv::VersionVector> {
        self.backup_hold.lock().clone()
    }

    /// Committed changes (live feed) and the log's version vector (sync).
    pub fn events(&self) -> &Arc<events::Events> {
        &self.events
    }

    /// The node's key ring (None without a node key, i.e. without sync).
    pub fn keys(&self) -> Option<&Arc<crate::sync::keys::KeyRing>> {
        self.keys.as_ref()
    }

    /// The change-log reader (replication reads entries through it).
    pub fn log(&self) -> &Arc<log::LogReader> {
        &self.log
    }

    /// Node id, origin, schema version and hash.
    pub fn meta(&self) -> Result<log::NodeMeta, SqlError> {
        self.log
            .meta()
            .map_err(|e| SqlError::new("INTERNAL", format!("reading node metadata: {e}")))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Size of the database file plus its WAL, in bytes.
    pub fn size_bytes(&self) -> u64 {
        let wal = self.path.with_extension("db-wal");
        [&self.path, &wal]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// True when a new job would find the writer or reader queue full.
    pub fn saturated(&self) -> bool {
        self.writer.is_full() || self.readers.is_full()
    }

    /// Runs `item` where it belongs: through `lease` if the stream holds the
    /// writer, on a reader if it only reads, else on the writer.
    pub async fn run(
        &self,
        item: WorkItem,
        ctx: ExecCtx,
        lease: Option<&Lease>,
    ) -> Result<JobReply, SubmitError> {
        if let Some(lease) = lease {
            return self.run_leased(lease, item, ctx).await;
        }
        let route = route_of(&item);
        if route == Route::Reader {
            let reply = self.readers.submit(item.clone(), ctx.clone()).await?;
            if !matches!(reply.output, Err(ExecError::NeedsWriter)) {
                return Ok(reply);
            }
        }
        self.writer
            .submit(item, ctx, route == Route::WriterGroup, None)
            .await
    }

    async fn run_leased(
        &self,
        lease: &Lease,
        item: WorkItem,
        ctx: ExecCtx,
    ) -> Result<JobReply, SubmitError> {
        let LeaseKind::Reader { snapshot } = lease.kind else {
            return submit_via_lease(lease, item, ctx).await;
        };
        let reply = submit_via_lease(lease, item.clone(), ctx.clone()).await?;
        if !matches!(reply.output, Err(ExecError::NeedsWriter)) {
            return Ok(reply);
        }
        // The read transaction writes: continue it on the writer if nothing
        // was committed meanwhile. On success the stream swaps its leases
        // (dropping the reader's rolls its side back); on refusal it keeps
        // the read transaction, which the client can still use or roll back.
        let mut reply = self.writer.submit(item, ctx, false, Some(snapshot)).await?;
        if matches!(reply.txn, TxnState::Closed) {
            reply.txn = TxnState::StillOpen;
        }
        Ok(reply)
    }

    /// Merges remote change-log entries (replication's apply path): one
    /// transaction; each entry applied, a duplicate, or rejected with a reason.
    /// `peer` names the sender (quarantine, metrics).
    ///
    /// Signatures are verified first, on a blocking thread: the writer
    /// thread, which every write waits for, only reads the verdicts.
    pub async fn apply(
        &self,
        entries: Vec<capture::LogEntry>,
        peer: &str,
    ) -> Result<Vec<capture::Applied>, SqlError> {
        let (entries, verdicts) = match self.keys.clone() {
            Some(keys) => tokio::task::spawn_blocking(move || {
                let verdicts = entries.iter().map(|e| keys.verify(e)).collect();
                (entries, Some(verdicts))
            })
            .await
            .map_err(|e| SqlError::new("INTERNAL", format!("verifying signatures: {e}")))?,
            None => (entries, None),
        };
        let (reply, rx) = oneshot::channel();
        self.writer.submit_internal(writer::InternalJob::Apply {
            entries,
            verdicts,
            peer: peer.to_string(),
            reply,
        })?;
        rx.await.map_err(|_| SqlError::from(SubmitError::Closed))?
    }

    /// Merges a peer's snapshot documents; `done` on the last batch.
    /// Returns how many documents were refused.
    pub async fn apply_snapshot(
        &self,
        docs: Vec<capture::SnapshotDoc>,
        done: Option<crate::sync::vv::VersionVector>,
        peer: &str,
    ) -> Result<usize, SqlError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .submit_internal(writer::InternalJob::ApplySnapshot {
                docs,
                done,
                peer: peer.to_string(),
                reply,
            })?;
        rx.await.map_err(|_| SqlError::from(SubmitError::Closed))?
    }

    /// Runs quarantined entries matching `filter` through the apply path
    /// again, at most `limit` (`quarantine::per_call`), in one transaction:
    /// those that apply move to the log (and reach peers), the others stay.
    pub async fn replay_quarantine(
        &self,
        filter: quarantine::Filter,
        limit: usize,
    ) -> Result<quarantine::ReplayReport, SqlError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .submit_internal(writer::InternalJob::ReplayQuarantine {
                filter,
                limit: limit.clamp(1, quarantine::MAX_PER_CALL),
                reply,
            })?;
        rx.await.map_err(|_| SqlError::from(SubmitError::Closed))?
    }

    /// Records peers' acknowledgements and compacts the log below them.
    pub async fn compact(
        &self,
        plan: compact::CompactPlan,
    ) -> Result<compact::CompactOutcome, SqlError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .submit_internal(writer::InternalJob::Compact { plan, reply })?;
        rx.await.map_err(|_| SqlError::from(SubmitError::Closed))?
    }

    /// Encodes rows changed by other programs now (also runs periodically).
    pub async fn sweep(&self) -> Result<usize, SqlError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .submit_internal(writer::InternalJob::Sweep { reply })?;
        rx.await.map_err(|_| SqlError::from(SubmitError::Closed))?
    }

    /// Applies the migrations of `dir` this database lacks, in order, one
    /// transaction each (see `db::migrate`), up to the first failure.
    pub async fn migrate(&self, dir: &std::path::Path) -> migrate::MigrateRun {
        let unavailable = |why: String| migrate::MigrateRun {
            applied: Vec::new(),
            error: Some(migrate::MigrateError::Unavailable(why)),
        };
        let (reply, rx) = oneshot::channel();
        let job = writer::InternalJob::Migrate {
            dir: dir.to_owned(),
            reply,
        };
        if let Err(e) = self.writer.submit_internal(job) {
            return unavailable(e.to_string());
        }
        rx.await
            .unwrap_or_else(|_| unavailable("the writer stopped".into()))
    }

    /// How many transactions the writer has committed since start.
    pub fn commit_count(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops the threads after the queued jobs ran; the writer checkpoints.
    /// Later jobs are refused (`SubmitError::Closed`). Idempotent.
    pub fn shutdown(&self) {
        self.readers.shutdown();
        self.writer.shutdown();
    }
}

fn route_of(item: &WorkItem) -> Route {
    let sql_kind =
        |stmt: &libsql_hrana::proto::Stmt| StmtKind::of(stmt.sql.as_deref().unwrap_or(""));
    match item {
        WorkItem::Execute(stmt) => classify::route([sql_kind(stmt)]),
        WorkItem::Batch(batch) => classify::route(batch.steps.iter().map(|s| sql_kind(&s.stmt))),
        WorkItem::Sequence(_) => Route::WriterSolo,
        WorkItem::Describe(_) => Route::Reader,
    }
}

/// Queues a job on a pool's dispatch, without waiting.
fn enqueue<T>(
    queue: &dispatch::Dispatch<T>,
    job: T,
    name: &'static str,
) -> Result<(), SubmitError> {
    queue.push(job).map_err(|(e, _)| match e {
        dispatch::PushError::Full => SubmitError::QueueFull(name),
        dispatch::PushError::Closed => SubmitError::Closed,
    })
}

async fn submit_via_lease(
    lease: &Lease,
    item: WorkItem,
    ctx: ExecCtx,
) -> Result<JobReply, SubmitError> {
    let (reply, rx) = oneshot::channel();
    lease
        .tx
        .send(Job { item, ctx, reply })
        .map_err(|_| SubmitError::TxnExpired)?;
    rx.await.map_err(|_| SubmitError::TxnExpired)
}

impl From<SubmitError> for SqlError {
    fn from(e: SubmitError) -> Self {
        let code = match e {
            SubmitError::QueueFull(_) => "OVERLOADED",
            SubmitError::Closed => "SHUTTING_DOWN",
            SubmitError::TxnExpired => "TRANSACTION_TIMEOUT",
        };
        SqlError::new(code, e.to_string())
    }
}
