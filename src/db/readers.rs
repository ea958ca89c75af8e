//! The reader pool: threads that each own a read-only connection and take
//! read jobs from one shared bounded queue. WAL mode lets them read the last
//! committed state while the writer writes, so reads never wait for writes.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use super::conn::{self, Role};
use super::exec::{ExecCtx, Session, WorkItem};
use super::{DbError, Job, JobReply, SubmitError, TxnState};
use crate::config::Config;
use crate::metrics::Metrics;

pub struct ReaderPool {
    tx: Sender<Job>,
    threads: Vec<JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl ReaderPool {
    pub fn start(path: &Path, config: &Config, metrics: Arc<Metrics>) -> Result<Self, DbError> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(config.limits.reader_queue);
        let mut threads = Vec::with_capacity(config.db.readers);
        for i in 0..config.db.readers {
            let (conn, guard) = conn::open(path, Role::Reader, &config.db).map_err(|source| DbError::Open {
                path: path.to_owned(),
                source,
            })?;
            let rx = rx.clone();
            let metrics = Arc::clone(&metrics);
            let thread = std::thread::Builder::new()
                .name(format!("outpost-reader-{i}"))
                .spawn(move || {
                    let session = Session {
                        conn: &conn,
                        guard: &guard,
                        role: Role::Reader,
                    };
                    while let Ok(job) = rx.recv() {
                        metrics.reader_queue_depth.dec();
                        let output = session.run(&job.item, &job.ctx);
                        let outcome = if output.is_ok() { "ok" } else { "error" };
                        metrics.statements_total.with_label_values(&["reader", outcome]).inc();
                        let _ = job.reply.send(JobReply {
                            output,
                            txn: TxnState::Closed,
                        });
                    }
                })
                .map_err(DbError::Thread)?;
            threads.push(thread);
        }
        Ok(Self { tx, threads, metrics })
    }

    pub async fn submit(&self, item: WorkItem, ctx: ExecCtx) -> Result<JobReply, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.metrics.reader_queue_depth.inc();
        if let Err(e) = self.tx.try_send(Job { item, ctx, reply }) {
            self.metrics.reader_queue_depth.dec();
            return Err(match e {
                TrySendError::Full(_) => SubmitError::QueueFull("reader"),
                TrySendError::Disconnected(_) => SubmitError::Closed,
            });
        }
        rx.await.map_err(|_| SubmitError::Closed)
    }

    pub fn is_full(&self) -> bool {
        self.tx.is_full()
    }

    pub fn shutdown(self) {
        drop(self.tx);
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a reader thread panicked");
            }
        }
    }
}
