//! The writer thread: the only connection that writes.
//!
//! It loops over a bounded queue of [`Job`]s. Consecutive groupable jobs
//! (autocommit writes) are committed together: `BEGIN IMMEDIATE`, each job,
//! `COMMIT`, then every reply. If a job's statement rolls the whole
//! transaction back (`INSERT OR ROLLBACK`, `RAISE(ROLLBACK)`), the group is
//! re-run one job per transaction, so no job loses effects another caused.
//! Solo jobs (transaction control) run outside any group; one that leaves a
//! transaction open hands the stream a [`Lease`] and the writer serves only
//! that lease until the transaction ends or idles out. An *upgrade* job
//! continues a read transaction that began on a reader and now writes.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use libsql_sys::rusqlite::Connection;
use tokio::sync::oneshot;

use super::capture::{Applied, Capture, CaptureError, LogEntry, SnapshotDoc};
use super::compact::{CompactOutcome, CompactPlan};
use super::conn::{self, Guard, Role};
use super::dispatch::Dispatch;
use super::events::{Events, SchemaState};
use super::exec::{ExecCtx, ExecError, Session, WorkItem, WorkOutput};
use super::migrate::{self, MigrateError, MigrateRun, Migration, Recorded};
use super::{DbError, Job, JobReply, Lease, LeaseKind, SubmitError, TxnState};
use crate::config::Config;
use crate::error::SqlError;
use crate::metrics::Metrics;
use crate::sync::vv::VersionVector;

/// Work for the writer that does not come from a client.
pub enum InternalJob {
    /// Merge remote log entries (replication).
    Apply {
        entries: Vec<LogEntry>,
        /// Each entry's signature check, done before (None: check here).
        verdicts: Option<Vec<Result<(), crate::sync::keys::Refusal>>>,
        /// The sender, for the quarantine and metrics.
        peer: String,
        reply: oneshot::Sender<Result<Vec<Applied>, SqlError>>,
    },
    /// Merge a peer's snapshot documents (a peer behind compaction).
    ApplySnapshot {
        docs: Vec<SnapshotDoc>,
        done: Option<VersionVector>,
        peer: String,
        reply: oneshot::Sender<Result<usize, SqlError>>,
    },
    /// Record what peers acknowledged and drop log entries all of them hold.
    Compact {
        plan: CompactPlan,
        reply: oneshot::Sender<Result<CompactOutcome, SqlError>>,
    },
    /// Encode rows that other programs changed (the periodic sweep).
    Sweep {
        reply: oneshot::Sender<Result<usize, SqlError>>,
    },
    /// Run quarantined entries through the apply path again (one
    /// transaction; at most `limit`).
    ReplayQuarantine {
        filter: super::quarantine::Filter,
        limit: usize,
        reply: oneshot::Sender<Result<super::quarantine::ReplayReport, SqlError>>,
    },
    /// Apply the pending migrations of a directory, one transaction each.
    Migrate {
        dir: std::path::PathBuf,
        reply: oneshot::Sender<MigrateRun>,
    },
}

enum Work {
    Sql(Job),
    Internal(InternalJob),
}

struct WriterJob {
    work: Work,
    /// May share a group commit (no transaction control in it).
    groupable: bool,
    /// Continue a reader's transaction that began at this commit count.
    upgrade_from: Option<u64>,
}

pub struct WriterHandle {
    queue: Arc<Dispatch<WriterJob>>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl WriterHandle {
    pub fn start(
        path: &Path,
        config: &Config,
        metrics: Arc<Metrics>,
        commits: Arc<AtomicU64>,
        events: Arc<Events>,
        trust: super::capture::Trust,
    ) -> Result<Self, DbError> {
        let (conn, guard) =
            conn::open(path, Role::Writer, &config.db).map_err(|source| DbError::Open {
                path: path.to_owned(),
                source,
            })?;
        conn::init_meta(&conn, &guard).map_err(|source| DbError::Open {
            path: path.to_owned(),
            source,
        })?;
        let capture = if config.crdt.enabled() {
            let started = guard.internal(|| {
                Capture::start(
                    &conn,
                    &config.crdt,
                    Arc::clone(&metrics),
                    Arc::clone(&events),
                    trust,
                )
            });
            Some(started.map_err(|source| DbError::Capture {
                path: path.to_owned(),
                source,
            })?)
        } else {
            let state = guard.internal(|| -> libsql_sys::rusqlite::Result<SchemaState> {
                Ok(SchemaState {
                    version: migrate::schema_version(&conn)?,
                    hash: migrate::schema_hash(&conn)?,
                })
            });
            events.set_schema(state.map_err(|source| DbError::Open {
                path: path.to_owned(),
                source,
            })?);
            None
        };
        let queue = Arc::new(Dispatch::new(
            1,
            config.limits.writer_queue,
            metrics.writer_queue_depth.clone(),
        ));
        let writer = Writer {
            conn,
            guard,
            queue: Arc::clone(&queue),
            group_max: config.db.group_commit_max,
            idle_timeout: config.limits.stream_idle_timeout,
            metrics: Arc::clone(&metrics),
            commits,
            capture,
            events,
        };
        let thread = std::thread::Builder::new()
            .name("outpost-writer".into())
            .spawn(move || writer.run())
            .map_err(DbError::Thread)?;
        Ok(Self {
            queue,
            thread: parking_lot::Mutex::new(Some(thread)),
        })
    }

    pub async fn submit(
        &self,
        item: WorkItem,
        ctx: ExecCtx,
        groupable: bool,
        upgrade_from: Option<u64>,
    ) -> Result<JobReply, SubmitError> {
        let (reply, rx) = oneshot::channel();
        let job = WriterJob {
            work: Work::Sql(Job { item, ctx, reply }),
            groupable,
            upgrade_from,
        };
        super::enqueue(&self.queue, job, "writer")?;
        rx.await.map_err(|_| SubmitError::Closed)
    }

    /// Queues internal work (its reply channel is inside `job`).
    pub fn submit_internal(&self, job: InternalJob) -> Result<(), SubmitError> {
        let job = WriterJob {
            work: Work::Internal(job),
            groupable: false,
            upgrade_from: None,
        };
        super::enqueue(&self.queue, job, "writer")
    }

    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// Lets the writer finish the queued jobs, then waits for it to
    /// roll back any open transaction, checkpoint and close. Idempotent.
    pub fn shutdown(&self) {
        self.queue.close();
        if let Some(thread) = self.thread.lock().take() {
            if thread.join().is_err() {
                tracing::error!("the writer thread panicked");
            }
        }
    }
}

struct Writer {
    conn: Connection,
    guard: Arc<Guard>,
    queue: Arc<Dispatch<WriterJob>>,
    group_max: usize,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
    commits: Arc<AtomicU64>,
    capture: Option<Capture>,
    events: Arc<Events>,
}

impl Writer {
    fn run(self) {
        let mut pending: Option<WriterJob> = None;
        loop {
            let next = match pending.take() {
                Some(job) => job,
                None => match self.queue.pop(0) {
                    Some(job) => job,
                    None => break,
                },
            };
            match next.work {
                Work::Sql(job) if next.groupable => pending = self.run_group(job),
                Work::Sql(job) => self.run_solo(job, next.upgrade_from),
                Work::Internal(job) => self.run_internal(job),
            }
        }
        self.close();
    }

    fn session(&self, grouped: bool) -> Session<'_> {
        Session {
            conn: &self.conn,
            guard: &self.guard,
            role: Role::Writer,
            grouped,
            capture: self.capture.as_ref(),
        }
    }

    /// Encodes the open transaction's pending changes (before a COMMIT).
    fn flush_capture(&self) -> Result<(), CaptureError> {
        match &self.capture {
            Some(capture) => self
                .guard
                .internal(|| capture.flush(&self.conn))
                .map(|_| ()),
            None => Ok(()),
        }
    }

    /// Tells capture that the transaction may have ended.
    fn settle_capture(&self) {
        if let Some(capture) = &self.capture {
            self.guard.internal(|| capture.settle(&self.conn));
        }
    }

    fn run_internal(&self, job: InternalJob) {
        match job {
            InternalJob::Apply {
                entries,
                verdicts,
                peer,
                reply,
            } => {
                let _ = reply.send(self.in_apply_transaction(|capture| {
                    capture.apply(&self.conn, &entries, verdicts.as_deref(), &peer)
                }));
            }
            InternalJob::ApplySnapshot {
                docs,
                done,
                peer,
                reply,
            } => {
                let result = self.in_apply_transaction(|capture| {
                    capture.apply_snapshot(&self.conn, &docs, done.as_ref(), &peer)
                });
                let _ = reply.send(result);
            }
            InternalJob::Compact { plan, reply } => {
                let result = self.in_apply_transaction(|capture| {
                    super::compact::run(&self.conn, capture, &plan)
                });
                let _ = reply.send(result);
            }
            InternalJob::Sweep { reply } => {
                let swept = match &self.capture {
                    Some(capture) => self
                        .guard
                        .internal(|| capture.sweep(&self.conn))
                        .map_err(SqlError::from),
                    None => Ok(0),
                };
                if matches!(swept, Ok(n) if n > 0) {
                    self.committed();
                }
                let _ = reply.send(swept);
            }
            InternalJob::ReplayQuarantine {
                filter,
                limit,
                reply,
            } => {
                let result =
                    self.in_apply_transaction(|capture| capture.replay(&self.conn, &filter, limit));
                let _ = reply.send(result);
            }
            InternalJob::Migrate { dir, reply } => {
                let _ = reply.send(self.migrate(&dir));
            }
        }
    }

    /// Applies the migrations of `dir` this database has not applied yet,
    /// in order, each in its own transaction; stops at the first failure.
    fn migrate(&self, dir: &Path) -> MigrateRun {
        let mut run = MigrateRun::default();
        let pending = migrate::load_dir(dir).and_then(|files| {
            let recorded = self.guard.internal(|| migrate::recorded(&self.conn))?;
            migrate::pending(dir, files, &recorded)
        });
        let pending = match pending {
            Ok(pending) => pending,
            Err(e) => {
                run.error = Some(e);
                return run;
            }
        };
        for migration in pending {
            match self.apply_migration(&migration) {
                Ok(recorded) => {
                    self.metrics.migrations_applied_total.inc();
                    tracing::info!(version = migration.version, name = %migration.name, "applied migration");
                    run.applied.push(recorded);
                }
                Err(e) => {
                    tracing::error!(name = %migration.name, "migration failed: {e}; nothing of it was applied: fix the migration (or the data it trips on) and run `outpost migrate`");
                    run.error = Some(e);
                    break;
                }
            }
        }
        run
    }

    /// One migration: its SQL (transaction control refused), capture of
    /// what it changed under the new version, the bookkeeping, COMMIT.
    fn apply_migration(&self, migration: &Migration) -> Result<Recorded, MigrateError> {
        let failed = |error: String| MigrateError::Failed {
            path: migration.path.clone(),
            error,
        };
        self.exec_cached("BEGIN IMMEDIATE")?;
        let outcome = (|| -> Result<String, MigrateError> {
            self.guard.take_denial();
            self.guard
                .migration(|| self.conn.execute_batch(&migration.sql))
                .map_err(|e| {
                    let denied = e.to_string().contains("not authorized");
                    let denial = self.guard.take_denial().filter(|_| denied);
                    failed(denial.unwrap_or(e.to_string()))
                })?;
            if let Some(capture) = &self.capture {
                capture.begin_migration(migration.version);
            }
            self.flush_capture().map_err(|e| failed(e.to_string()))?;
            let now_ms = crate::crdt::Hlc::now_ms();
            let hash = self
                .guard
                .internal(|| migrate::record(&self.conn, migration, now_ms))?;
            self.exec_cached("COMMIT")?;
            Ok(hash)
        })();
        if outcome.is_err() {
            self.rollback();
        } else {
            self.committed();
        }
        self.settle_capture();
        let schema_hash = outcome?;
        if self.capture.is_none() {
            self.events.set_schema(SchemaState {
                version: migration.version,
                hash: schema_hash.clone(),
            });
        }
        Ok(Recorded {
            version: migration.version,
            name: migration.name.clone(),
            sha256: migration.sha256.clone(),
            schema_hash,
        })
    }

    /// Applies remote entries in one transaction, foreign keys off (rows
    /// arrive in any order; each node checks its own writes).
    /// Runs `work` in a transaction of its own with foreign keys off, with
    /// internal access; commits if it succeeds, else rolls back.
    fn in_apply_transaction<T>(
        &self,
        work: impl FnOnce(&Capture) -> Result<T, CaptureError>,
    ) -> Result<T, SqlError> {
        let Some(capture) = &self.capture else {
            return Err(SqlError::new(
                "OUTPOST_CAPTURE",
                "change capture is off (crdt.replicate = []): nothing can be applied",
            ));
        };
        self.guard.internal(|| {
            self.conn
                .execute_batch("PRAGMA foreign_keys = OFF; BEGIN IMMEDIATE")?;
            let outcome = work(capture).map_err(SqlError::from);
            let outcome = outcome.and_then(|applied| {
                self.conn.execute_batch("COMMIT")?;
                Ok(applied)
            });
            if outcome.is_err() {
                self.rollback();
            } else {
                self.committed();
            }
            capture.settle(&self.conn);
            self.reset_connection_settings();
            outcome
        })
    }

    /// Runs a transaction-control statement through the statement cache
    /// (parsing `BEGIN IMMEDIATE`/`COMMIT` anew was ~3 % of the writer's CPU).
    fn exec_cached(&self, sql: &str) -> Result<(), libsql_sys::rusqlite::Error> {
        self.conn.prepare_cached(sql)?.raw_execute().map(|_| ())
    }

    fn committed(&self) {
        self.commits.fetch_add(1, Ordering::AcqRel);
    }

    /// Collects queued groupable jobs behind `first` and commits them
    /// together. Returns a solo job met while collecting, to run next.
    fn run_group(&self, first: Job) -> Option<WriterJob> {
        let mut jobs = vec![first];
        let mut met_solo = None;
        while jobs.len() < self.group_max {
            let Some(next) = self.queue.try_pop() else {
                break;
            };
            match next.work {
                Work::Sql(job) if next.groupable => jobs.push(job),
                _ => {
                    met_solo = Some(next);
                    break;
                }
            }
        }
        self.commit_together(jobs);
        met_solo
    }

    fn commit_together(&self, jobs: Vec<Job>) {
        self.metrics.group_commit_size.observe(jobs.len() as f64);
        if let Err(e) = self.exec_cached("BEGIN IMMEDIATE") {
            return reply_all_failed(jobs, SqlError::from(e));
        }
        let session = self.session(true);
        let mut outputs = Vec::with_capacity(jobs.len());
        for job in &jobs {
            outputs.push(session.run(&job.item, &job.ctx));
            if self.conn.is_autocommit() {
                // This job's statement ended the whole transaction.
                return self.rerun_alone(jobs);
            }
        }
        if let Err(e) = self.flush_capture() {
            tracing::warn!(error = %e, "capture failed in a group commit; re-running its jobs one by one");
            self.rollback();
            return self.rerun_alone(jobs);
        }
        match self.exec_cached("COMMIT") {
            Ok(()) => {
                self.committed();
                self.settle_capture();
                for (job, output) in jobs.into_iter().zip(outputs) {
                    self.count(&output);
                    let _ = job.reply.send(JobReply {
                        output,
                        txn: TxnState::Closed,
                    });
                }
            }
            Err(e) => {
                self.rollback();
                reply_all_failed(jobs, SqlError::from(e));
            }
        }
    }

    /// After a group lost its transaction, gives each job its own.
    fn rerun_alone(&self, jobs: Vec<Job>) {
        tracing::debug!(
            jobs = jobs.len(),
            "a statement rolled back a group commit; re-running jobs one by one"
        );
        for job in jobs {
            if let Err(e) = self.exec_cached("BEGIN IMMEDIATE") {
                reply_all_failed(vec![job], SqlError::from(e));
                continue;
            }
            let output = self.session(true).run(&job.item, &job.ctx);
            if !self.conn.is_autocommit() {
                let committed = self
                    .flush_capture()
                    .map_err(SqlError::from)
                    .and_then(|()| self.exec_cached("COMMIT").map_err(SqlError::from));
                if let Err(e) = committed {
                    self.rollback();
                    reply_all_failed(vec![job], e);
                    continue;
                }
                self.committed();
            }
            self.settle_capture();
            self.count(&output);
            let _ = job.reply.send(JobReply {
                output,
                txn: TxnState::Closed,
            });
        }
    }

    /// Runs a job that manages transactions itself, outside any group.
    fn run_solo(&self, job: Job, upgrade_from: Option<u64>) {
        if let Some(snapshot) = upgrade_from {
            if let Err(e) = self.begin_upgrade(snapshot) {
                return reply_all_failed(vec![job], e);
            }
        }
        let output = self.session(false).run(&job.item, &job.ctx);
        self.count(&output);
        if self.conn.is_autocommit() {
            self.committed();
            self.reset_connection_settings();
            let _ = job.reply.send(JobReply {
                output,
                txn: TxnState::Closed,
            });
            return;
        }
        let (lease, rx) = Lease::open(LeaseKind::Writer);
        let _ = job.reply.send(JobReply {
            output,
            txn: TxnState::Opened(lease),
        });
        self.serve_lease(rx);
        self.reset_connection_settings();
    }

    /// Opens the writer's side of a read transaction that now writes, if
    /// the reader's snapshot is still the newest state of the database.
    fn begin_upgrade(&self, snapshot: u64) -> Result<(), SqlError> {
        if self.commits.load(Ordering::Acquire) != snapshot {
            return Err(SqlError::new(
                "SQLITE_BUSY",
                "SQLite error: database is locked: another write committed since this transaction \
                 began, so it cannot start writing; roll back and retry the transaction",
            ));
        }
        self.conn
            .execute_batch("BEGIN DEFERRED")
            .map_err(SqlError::from)
    }

    /// `PRAGMA foreign_keys` is the one connection setting clients may
    /// change; outside a transaction it would outlive the job, so restore it.
    fn reset_connection_settings(&self) {
        if let Err(e) = self
            .guard
            .internal(|| self.conn.execute_batch("PRAGMA foreign_keys = ON"))
        {
            tracing::error!(error = %e, "restoring foreign_keys on the writer failed");
        }
    }

    /// Serves one stream's transaction until it ends, its lease is dropped,
    /// or it stays idle longer than the stream timeout.
    fn serve_lease(&self, rx: Receiver<Job>) {
        loop {
            match rx.recv_timeout(self.idle_timeout) {
                Ok(job) => {
                    let output = self.session(false).run(&job.item, &job.ctx);
                    self.count(&output);
                    let open = !self.conn.is_autocommit();
                    if !open {
                        // Counted before the reply, so the client's next
                        // read transaction starts after this commit.
                        self.committed();
                    }
                    let txn = TxnState::after_leased_job(open);
                    let _ = job.reply.send(JobReply { output, txn });
                    if !open {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        timeout = ?self.idle_timeout,
                        "rolled back a transaction left idle longer than limits.stream_idle_timeout"
                    );
                    self.metrics.stream_expired_total.inc();
                    self.rollback();
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.rollback();
                    return;
                }
            }
        }
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "ROLLBACK failed on the writer connection");
            }
        }
        self.settle_capture();
    }

    fn count(&self, output: &Result<WorkOutput, ExecError>) {
        let outcome = if output.is_ok() { "ok" } else { "error" };
        self.metrics
            .statements_total
            .with_label_values(&["writer", outcome])
            .inc();
    }

    fn close(self) {
        self.rollback();
        let checkpoint = self.guard.internal(|| {
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        });
        if let Err(e) = checkpoint {
            tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::error!(error = %e, "closing the writer connection failed");
        }
    }
}

fn reply_all_failed(jobs: Vec<Job>, error: SqlError) {
    for job in jobs {
        let _ = job.reply.send(JobReply {
            output: Err(ExecError::Sql(error.clone())),
            txn: TxnState::Closed,
        });
    }
}
