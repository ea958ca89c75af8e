//! The reader pool: threads that each own a read-only connection and take
//! read jobs from one shared bounded queue. WAL mode lets them read the last
//! committed state while the writer writes, so reads never wait for writes.
//!
//! A job that leaves a (read) transaction open pins its reader: the thread
//! serves only that stream's [`Lease`] until the transaction ends, idles
//! out, or tries to write — then it rolls back and answers `NeedsWriter`,
//! and the caller continues the transaction on the writer.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::config::Config;
use crate::metrics::Metrics;

pub struct ReaderPool {
    queue: Arc<Dispatch<Job>>,
    threads: Vec<JoinHandle<()>>,
}

struct Reader {
    conn: Connection,
    guard: Arc<Guard>,
    metrics: Arc<Metrics>,
    commits: Arc<AtomicU64>,
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
        for i in 0..config.db.readers {
            let (conn, guard) =
                conn::open(path, Role::Reader, &config.db).map_err(|source| DbError::Open {
                    path: path.to_owned(),
                    source,
                })?;
            let reader = Reader {
                conn,
                guard,
                metrics: Arc::clone(&metrics),
                commits: Arc::clone(&commits),
                idle_timeout: config.limits.stream_idle_timeout,
            };
            let queue = Arc::clone(&queue);
            let thread = std::thread::Builder::new()
                .name(format!("outpost-reader-{i}"))
                .spawn(move || reader.run(&queue, i))
                .map_err(DbError::Thread)?;
            threads.push(thread);
        }
        Ok(Self { queue, threads })
    }

    pub async fn submit(&self, item: WorkItem, ctx: ExecCtx) -> Result<JobReply, SubmitError> {
        let (reply, rx) = oneshot::channel();
        super::enqueue(&self.queue, Job { item, ctx, reply }, "reader")?;
        rx.await.map_err(|_| SubmitError::Closed)
    }

    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    pub fn shutdown(self) {
        self.queue.close();
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a reader thread panicked");
            }
        }
    }
}

impl Reader {
    fn run(self, queue: &Dispatch<Job>, thread: usize) {
        while let Some(job) = queue.pop(thread) {
            let snapshot = self.commits.load(Ordering::Acquire);
            let output = self.execute(&job);
            if self.conn.is_autocommit() || matches!(output, Err(ExecError::NeedsWriter)) {
                self.rollback();
                let _ = job.reply.send(JobReply {
                    output,
                    txn: TxnState::Closed,
                });
                continue;
            }
            let (tx, lease_rx) = crossbeam_channel::bounded(1);
            let lease = Lease {
                tx,
                kind: LeaseKind::Reader { snapshot },
            };
            let _ = job.reply.send(JobReply {
                output,
                txn: TxnState::Opened(lease),
            });
            self.serve_lease(lease_rx);
        }
    }

    fn execute(&self, job: &Job) -> Result<WorkOutput, ExecError> {
        let session = Session {
            conn: &self.conn,
            guard: &self.guard,
            role: Role::Reader,
            grouped: false,
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
            let moves_to_writer = matches!(output, Err(ExecError::NeedsWriter));
            let open = !self.conn.is_autocommit() && !moves_to_writer;
            let txn = if open {
                TxnState::StillOpen
            } else {
                TxnState::Closed
            };
            if moves_to_writer {
                self.rollback();
            }
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
