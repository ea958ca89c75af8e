//! The reader pool: threads that each own a read-only connection and take
//! read jobs from one shared bounded queue. WAL mode lets them read the last
//! committed state while the writer writes, so reads never wait for writes.
//!
//! A job that leaves a (read) transaction open hands the connection to a
//! thread of its own (up to `limits.max_read_transactions`; beyond, the
//! pool thread itself): it serves only that stream's [`Lease`] until the
//! transaction ends, idles out, or tries to write — then it rolls back and
//! answers `NeedsWriter`, and the caller continues the transaction on the
//! writer. The pool thread opens a fresh connection and goes on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use libsql_sys::rusqlite::Connection;
use tokio::sync::oneshot;

use super::conn::{self, Guard, Role};
use super::dispatch::Dispatch;
use super::exec::{ExecCtx, ExecError, Session, WorkItem, WorkOutput};
use super::{DbError, Job, JobReply, Lease, LeaseKind, SubmitError, TxnState};
use crate::config::{Config, DbConfig};
use crate::metrics::Metrics;

pub struct ReaderPool {
    queue: Arc<Dispatch<Job>>,
    threads: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

/// A pool thread: its connection, and what it needs to replace it.
struct Reader {
    conn: ReadConn,
    commits: Arc<AtomicU64>,
    path: PathBuf,
    db_config: DbConfig,
    open_txns: Arc<AtomicUsize>,
    max_txns: usize,
}

/// A read connection and what serving it needs.
struct ReadConn {
    conn: Connection,
    guard: Arc<Guard>,
    metrics: Arc<Metrics>,
    idle_timeout: Duration,
}

impl ReaderPool {
    pub fn start(
        path: &Path,
        config: &Config,
        metrics: Arc<Metrics>,
        commits: Arc<AtomicU64>,
    ) -> Result<Self, DbError> {
        let queue = Arc::new(Dispatch::new(
            config.db.readers,
            config.limits.reader_queue,
            metrics.reader_queue_depth.clone(),
        ));
        let mut threads = Vec::with_capacity(config.db.readers);
        let open_txns = Arc::new(AtomicUsize::new(0));
        for i in 0..config.db.readers {
            let (conn, guard) =
                conn::open(path, Role::Reader, &config.db).map_err(|source| DbError::Open {
                    path: path.to_owned(),
                    source,
                })?;
            let reader = Reader {
                conn: ReadConn {
                    conn,
                    guard,
                    metrics: Arc::clone(&metrics),
                    idle_timeout: config.limits.stream_idle_timeout,
                },
                commits: Arc::clone(&commits),
                path: path.to_owned(),
                db_config: config.db.clone(),
                open_txns: Arc::clone(&open_txns),
                max_txns: config.limits.max_read_transactions,
            };
            let queue = Arc::clone(&queue);
            let thread = std::thread::Builder::new()
                .name(format!("outpost-reader-{i}"))
                .spawn(move || reader.run(&queue, i))
                .map_err(DbError::Thread)?;
            threads.push(thread);
        }
        Ok(Self {
            queue,
            threads: parking_lot::Mutex::new(threads),
        })
    }

    pub async fn submit(&self, item: WorkItem, ctx: ExecCtx) -> Result<JobReply, SubmitError> {
        let (reply, rx) = oneshot::channel();
        super::enqueue(&self.queue, Job { item, ctx, reply }, "reader")?;
        rx.await.map_err(|_| SubmitError::Closed)
    }

    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// Lets the readers finish the queued jobs and waits for them. Idempotent.
    pub fn shutdown(&self) {
        self.queue.close();
        for t in std::mem::take(&mut *self.threads.lock()) {
            if t.join().is_err() {
                tracing::error!("a reader thread panicked");
            }
        }
    }
}

impl Reader {
    fn run(mut self, queue: &Dispatch<Job>, thread: usize) {
        while let Some(job) = queue.pop(thread) {
            let snapshot = self.commits.load(Ordering::Acquire);
            let output = self.conn.execute(&job);
            if self.conn.conn.is_autocommit() || matches!(output, Err(ExecError::NeedsWriter)) {
                self.conn.rollback();
                let _ = job.reply.send(JobReply {
                    output,
                    txn: TxnState::Closed,
                });
                continue;
            }
            let (lease, lease_rx) = Lease::open(LeaseKind::Reader { snapshot });
            let _ = job.reply.send(JobReply {
                output,
                txn: TxnState::Opened(lease),
            });
            self.hand_over_transaction(lease_rx);
        }
    }

    /// Moves the open read transaction, with its connection, to a thread of
    /// its own, and takes a fresh connection, so that open read transactions
    /// do not starve the pool. Beyond `limits.max_read_transactions` (or if
    /// no connection can be opened) the transaction keeps this thread.
    fn hand_over_transaction(&mut self, lease_rx: Receiver<Job>) {
        let open = self.open_txns.fetch_add(1, Ordering::AcqRel);
        let fresh = if open < self.max_txns {
            conn::open(&self.path, Role::Reader, &self.db_config)
                .inspect_err(|e| tracing::error!(error = %e, "cannot open a reader connection"))
                .ok()
        } else {
            None
        };
        let Some((conn, guard)) = fresh else {
            self.open_txns.fetch_sub(1, Ordering::AcqRel);
            return self.conn.serve_lease(lease_rx);
        };
        let fresh = ReadConn {
            conn,
            guard,
            metrics: Arc::clone(&self.conn.metrics),
            idle_timeout: self.conn.idle_timeout,
        };
        let busy = std::mem::replace(&mut self.conn, fresh);
        let open_txns = Arc::clone(&self.open_txns);
        let spawned = std::thread::Builder::new()
            .name("outpost-read-txn".into())
            .spawn(move || {
                busy.serve_lease(lease_rx);
                open_txns.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            // The closure (and the lease) is dropped: the stream sees its
            // transaction end, as after an idle timeout.
            self.open_txns.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(error = %e, "cannot start a read-transaction thread");
        }
    }
}

impl ReadConn {
    fn execute(&self, job: &Job) -> Result<WorkOutput, ExecError> {
        let session = Session {
            conn: &self.conn,
            guard: &self.guard,
            role: Role::Reader,
            grouped: false,
            capture: None,
        };
        let output = session.run(&job.item, &job.ctx);
        let outcome = if output.is_ok() { "ok" } else { "error" };
        self.metrics
            .statements_total
            .with_label_values(&["reader", outcome])
            .inc();
        output
    }

    /// Serves one stream's read transaction (see the module docs).
    fn serve_lease(&self, rx: Receiver<Job>) {
        loop {
            let job = match rx.recv_timeout(self.idle_timeout) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.metrics.stream_expired_total.inc();
                    tracing::warn!(
                        timeout = ?self.idle_timeout,
                        "rolled back a read transaction left idle longer than limits.stream_idle_timeout"
                    );
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let output = self.execute(&job);
            // On `NeedsWriter` the transaction stays open here: the writer
            // may refuse to take it over, and then the client must still be
            // able to read on and roll back, as in SQLite.
            let open = !self.conn.is_autocommit();
            let txn = TxnState::after_leased_job(open);
            let _ = job.reply.send(JobReply { output, txn });
            if !open {
                break;
            }
        }
        self.rollback();
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "ROLLBACK failed on a reader connection");
            }
        }
    }
}
