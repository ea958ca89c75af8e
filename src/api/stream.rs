//! Hrana streams: the state a stream keeps between requests, the execution
//! of one stream request, and the registry of HTTP streams behind batons.
//!
//! A stream is what Hrana calls a connection: statements run in order and a
//! `BEGIN` holds the writer for the stream (a [`Lease`]) until it ends.
//! Over HTTP a stream outlives a request through its *baton*: an opaque
//! token naming the stream and the number of requests it has served, signed
//! with a per-process key (HMAC-SHA256). A baton cannot be forged, and it is
//! good for one request only: replaying an old baton is refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use libsql_hrana::proto::{
    BatchStreamResp, CloseSqlStreamResp, CloseStreamResp, DescribeStreamResp, ExecuteStreamResp,
    GetAutocommitStreamResp, SequenceStreamResp, Stmt, StoreSqlStreamResp, StreamRequest,
    StreamResponse,
};
use parking_lot::Mutex;
use sha2::Sha256;
use tokio::sync::OwnedMutexGuard;

use super::AppState;
use crate::auth::Access;
use crate::db::exec::validate_batch;
use crate::db::{ExecCtx, ExecError, Lease, SubmitError, TxnState, WorkItem, WorkOutput};
use crate::error::{ApiError, SqlError};
use crate::metrics::Metrics;

/// SQL texts stored with `store_sql`, referenced later by `sql_id`.
#[derive(Default)]
pub struct SqlStore {
    sqls: HashMap<i32, String>,
}

impl SqlStore {
    pub fn store(&mut self, id: i32, sql: String, max: usize) -> Result<(), SqlError> {
        if self.sqls.contains_key(&id) {
            return Err(SqlError::new(
                "SQL_STORE_DUPLICATE",
                format!("SQL text {id} is already stored; close it first"),
            ));
        }
        if self.sqls.len() >= max {
            return Err(SqlError::new(
                "SQL_STORE_FULL",
                format!("At most {max} SQL texts can be stored (limits.max_stored_sql)"),
            ));
        }
        self.sqls.insert(id, sql);
        Ok(())
    }

    pub fn close(&mut self, id: i32) {
        self.sqls.remove(&id);
    }

    /// The SQL of a statement given either inline or by id (not both).
    pub fn resolve(&self, sql: Option<String>, sql_id: Option<i32>) -> Result<String, SqlError> {
        match (sql, sql_id) {
            (Some(sql), None) => Ok(sql),
            (None, Some(id)) => self.sqls.get(&id).cloned().ok_or_else(|| {
                SqlError::new(
                    "SQL_NOT_FOUND",
                    format!("No SQL text is stored under id {id}"),
                )
            }),
            (Some(_), Some(_)) => Err(SqlError::new(
                "SQL_ID_AND_TEXT",
                "A statement must give either `sql` or `sql_id`, not both",
            )),
            (None, None) => Err(SqlError::new(
                "SQL_MISSING",
                "A statement must give either `sql` or `sql_id`",
            )),
        }
    }

    fn resolve_stmt(&self, stmt: &mut Stmt) -> Result<(), SqlError> {
        let sql = self.resolve(stmt.sql.take(), stmt.sql_id.take())?;
        stmt.sql = Some(sql);
        Ok(())
    }
}

/// What one stream holds between its requests.
#[derive(Default)]
pub struct StreamState {
    /// Set while a transaction of this stream holds the writer.
    pub lease: Option<Lease>,
}

/// The caller's identity and limits, fixed for one request.
#[derive(Clone)]
pub struct Caller<'a> {
    pub app: &'a AppState,
    pub access: Access,
}

impl Caller<'_> {
    fn ctx(&self) -> ExecCtx {
        ExecCtx {
            access: self.access.clone(),
            max_rows: self.app.config.limits.max_response_rows,
            max_bytes: self.app.config.limits.max_response_bytes,
            timeout: self.app.config.limits.query_timeout,
        }
    }

    /// Runs `item` for `stream`, keeping its lease up to date.
    pub async fn run(
        &self,
        stream: &mut StreamState,
        item: WorkItem,
    ) -> Result<WorkOutput, SqlError> {
        let reply = self
            .app
            .db
            .run(item, self.ctx(), stream.lease.as_ref())
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                if matches!(e, SubmitError::TxnExpired) {
                    stream.lease = None;
                }
                return Err(e.into());
            }
        };
        match reply.txn {
            TxnState::Opened(lease) => stream.lease = Some(lease),
            TxnState::StillOpen => {}
            TxnState::Closed => stream.lease = None,
        }
        reply.output.map_err(|e| match e {
            ExecError::Sql(e) => e,
            ExecError::NeedsWriter => SqlError::new("INTERNAL", "a write reached a reader"),
        })
    }

    /// Runs a batch after resolving stored SQL and checking its conditions.
    pub async fn run_batch(
        &self,
        stream: &mut StreamState,
        sqls: &SqlStore,
        mut batch: libsql_hrana::proto::Batch,
    ) -> Result<libsql_hrana::proto::BatchResult, SqlError> {
        validate_batch(&batch, self.app.config.limits.max_batch_steps)?;
        for step in &mut batch.steps {
            sqls.resolve_stmt(&mut step.stmt)?;
        }
        match self.run(stream, WorkItem::Batch(batch)).await? {
            WorkOutput::Batch(result) => Ok(result),
            _ => Err(SqlError::new("INTERNAL", "unexpected output for a batch")),
        }
    }

    pub async fn run_stmt(
        &self,
        stream: &mut StreamState,
        sqls: &SqlStore,
        mut stmt: Stmt,
    ) -> Result<libsql_hrana::proto::StmtResult, SqlError> {
        sqls.resolve_stmt(&mut stmt)?;
        match self.run(stream, WorkItem::Execute(stmt)).await? {
            WorkOutput::Execute(result) => Ok(result),
            _ => Err(SqlError::new(
                "INTERNAL",
                "unexpected output for a statement",
            )),
        }
    }

    pub async fn run_sequence(
        &self,
        stream: &mut StreamState,
        sql: String,
    ) -> Result<(), SqlError> {
        self.run(stream, WorkItem::Sequence(sql)).await.map(|_| ())
    }

    pub async fn run_describe(
        &self,
        stream: &mut StreamState,
        sql: String,
    ) -> Result<libsql_hrana::proto::DescribeResult, SqlError> {
        match self.run(stream, WorkItem::Describe(sql)).await? {
            WorkOutput::Describe(result) => Ok(result),
            _ => Err(SqlError::new(
                "INTERNAL",
                "unexpected output for a describe",
            )),
        }
    }

    /// Executes one request of an HTTP pipeline. `Close` is the caller's.
    pub async fn handle(
        &self,
        stream: &mut StreamState,
        sqls: &mut SqlStore,
        request: StreamRequest,
    ) -> Result<StreamResponse, SqlError> {
        let max_stored = self.app.config.limits.max_stored_sql;
        Ok(match request {
            StreamRequest::Execute(req) => StreamResponse::Execute(ExecuteStreamResp {
                result: self.run_stmt(stream, sqls, req.stmt).await?,
            }),
            StreamRequest::Batch(req) => StreamResponse::Batch(BatchStreamResp {
                result: self.run_batch(stream, sqls, req.batch).await?,
            }),
            StreamRequest::Sequence(req) => {
                let sql = sqls.resolve(req.sql, req.sql_id)?;
                self.run_sequence(stream, sql).await?;
                StreamResponse::Sequence(SequenceStreamResp {})
            }
            StreamRequest::Describe(req) => {
                let sql = sqls.resolve(req.sql, req.sql_id)?;
                StreamResponse::Describe(DescribeStreamResp {
                    result: self.run_describe(stream, sql).await?,
                })
            }
            StreamRequest::StoreSql(req) => {
                sqls.store(req.sql_id, req.sql, max_stored)?;
                StreamResponse::StoreSql(StoreSqlStreamResp {})
            }
            StreamRequest::CloseSql(req) => {
                sqls.close(req.sql_id);
                StreamResponse::CloseSql(CloseSqlStreamResp {})
            }
            StreamRequest::GetAutocommit(_) => {
                StreamResponse::GetAutocommit(GetAutocommitStreamResp {
                    is_autocommit: stream.lease.is_none(),
                })
            }
            StreamRequest::Close(_) => {
                stream.lease = None;
                StreamResponse::Close(CloseStreamResp {})
            }
            StreamRequest::None => {
                return Err(SqlError::new("REQUEST_INVALID", "Unknown request type"));
            }
        })
    }
}

/// An HTTP stream: its state, its stored SQL and its baton sequence number.
pub struct HttpStream {
    pub state: StreamState,
    pub sqls: SqlStore,
    seq: u64,
    last_used: Instant,
}

/// A stream checked out for one request.
pub struct CheckedOut {
    id: u64,
    guard: OwnedMutexGuard<HttpStream>,
}

impl std::ops::Deref for CheckedOut {
    type Target = HttpStream;
    fn deref(&self) -> &HttpStream {
        &self.guard
    }
}

impl std::ops::DerefMut for CheckedOut {
    fn deref_mut(&mut self) -> &mut HttpStream {
        &mut self.guard
    }
}

type StreamMap = HashMap<u64, Arc<tokio::sync::Mutex<HttpStream>>>;

/// All open HTTP streams, bounded by `limits.max_streams`.
pub struct HttpStreams {
    streams: Mutex<StreamMap>,
    key: [u8; 32],
    next_id: AtomicU64,
    max: usize,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
}

const BATON_LEN: usize = 8 + 8 + 16;

impl HttpStreams {
    pub fn new(max: usize, idle_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            streams: Mutex::new(HashMap::new()),
            key: rand::random(),
            next_id: AtomicU64::new(rand::random::<u32>() as u64),
            max,
            idle_timeout,
            metrics,
        }
    }

    fn mac(&self, id: u64, seq: u64) -> [u8; 16] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&id.to_be_bytes());
        mac.update(&seq.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    fn baton(&self, id: u64, seq: u64) -> String {
        let mut raw = Vec::with_capacity(BATON_LEN);
        raw.extend_from_slice(&id.to_be_bytes());
        raw.extend_from_slice(&seq.to_be_bytes());
        raw.extend_from_slice(&self.mac(id, seq));
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn parse_baton(&self, baton: &str) -> Result<(u64, u64), ApiError> {
        let invalid = || {
            ApiError::bad_request(
                "BATON_INVALID",
                "The baton is invalid: it was not issued by this server",
            )
        };
        let raw = URL_SAFE_NO_PAD.decode(baton).map_err(|_| invalid())?;
        if raw.len() != BATON_LEN {
            return Err(invalid());
        }
        let id = u64::from_be_bytes(raw[0..8].try_into().map_err(|_| invalid())?);
        let seq = u64::from_be_bytes(raw[8..16].try_into().map_err(|_| invalid())?);
        let expected = self.mac(id, seq);
        use subtle::ConstantTimeEq;
        if !bool::from(expected.ct_eq(&raw[16..])) {
            return Err(invalid());
        }
        Ok((id, seq))
    }

    /// Checks out the stream a baton names, or a new stream for no baton.
    pub fn check_out(&self, baton: Option<&str>) -> Result<CheckedOut, ApiError> {
        let Some(baton) = baton else {
            return self.open();
        };
        let (id, seq) = self.parse_baton(baton)?;
        let stream = self.streams.lock().get(&id).cloned().ok_or_else(|| {
            ApiError::bad_request(
                "STREAM_EXPIRED",
                "The stream has expired or was closed; open a new one (limits.stream_idle_timeout)",
            )
        })?;
        let guard = stream.try_lock_owned().map_err(|_| {
            ApiError::bad_request("BATON_REUSED", "The baton is in use by another request")
        })?;
        if guard.seq != seq {
            return Err(ApiError::bad_request(
                "BATON_REUSED",
                "The baton was already used; send the baton from the latest response",
            ));
        }
        Ok(CheckedOut { id, guard })
    }

    fn open(&self) -> Result<CheckedOut, ApiError> {
        let mut streams = self.streams.lock();
        if streams.len() >= self.max {
            self.metrics
                .rejected_total
                .with_label_values(&["max_streams"])
                .inc();
            return Err(ApiError::overloaded(
                "STREAMS_EXHAUSTED",
                format!("Too many open streams (limits.max_streams = {})", self.max),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(tokio::sync::Mutex::new(HttpStream {
            state: StreamState::default(),
            sqls: SqlStore::default(),
            seq: 0,
            last_used: Instant::now(),
        }));
        let guard = Arc::clone(&stream)
            .try_lock_owned()
            .expect("a new stream is unlocked");
        streams.insert(id, stream);
        // inc/dec, not set: WebSocket streams count in the same gauge.
        self.metrics.streams_open.inc();
        Ok(CheckedOut { id, guard })
    }

    /// Returns a stream after a request: its next baton, or none if closed.
    pub fn check_in(&self, mut out: CheckedOut, closed: bool) -> Option<String> {
        if closed {
            if self.streams.lock().remove(&out.id).is_some() {
                self.metrics.streams_open.dec();
            }
            return None;
        }
        out.guard.seq += 1;
        out.guard.last_used = Instant::now();
        Some(self.baton(out.id, out.guard.seq))
    }

    /// Drops streams idle past the timeout (their transactions roll back).
    pub fn expire_idle(&self) {
        let mut streams = self.streams.lock();
        let before = streams.len();
        streams.retain(|_, s| match s.try_lock() {
            Ok(stream) => stream.last_used.elapsed() < self.idle_timeout,
            Err(_) => true,
        });
        let expired = before - streams.len();
        if expired > 0 {
            self.metrics.stream_expired_total.inc_by(expired as u64);
            self.metrics.streams_open.sub(expired as i64);
            tracing::debug!(expired, "closed idle HTTP streams");
        }
    }

    /// Drops every stream (at shutdown); their transactions roll back.
    pub fn clear(&self) {
        let dropped = std::mem::take(&mut *self.streams.lock());
        self.metrics.streams_open.sub(dropped.len() as i64);
    }

    pub fn len(&self) -> usize {
        self.streams.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams() -> HttpStreams {
        HttpStreams::new(2, Duration::from_millis(50), Arc::new(Metrics::new()))
    }

    #[test]
    fn batons_are_single_use_and_unforgeable() {
        let s = streams();
        let out = s.check_out(None).unwrap();
        let baton = s.check_in(out, false).unwrap();
        let out = s.check_out(Some(&baton)).unwrap();
        let next = s.check_in(out, false).unwrap();
        assert_eq!(
            s.check_out(Some(&baton)).err().unwrap().code,
            "BATON_REUSED"
        );
        let mut forged = URL_SAFE_NO_PAD.decode(&next).unwrap();
        forged[15] ^= 1;
        let forged = URL_SAFE_NO_PAD.encode(forged);
        assert_eq!(
            s.check_out(Some(&forged)).err().unwrap().code,
            "BATON_INVALID"
        );
        assert_eq!(
            s.check_out(Some("garbage!")).err().unwrap().code,
            "BATON_INVALID"
        );
        assert!(s.check_out(Some(&next)).is_ok());
    }

    #[test]
    fn streams_are_bounded_and_expire() {
        let s = streams();
        let a = s.check_out(None).unwrap();
        let baton = s.check_in(a, false).unwrap();
        let b = s.check_out(None).unwrap();
        assert_eq!(s.check_out(None).err().unwrap().code, "STREAMS_EXHAUSTED");
        s.check_in(b, true);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(s.metrics.streams_open.get(), 1);
        s.expire_idle();
        assert!(s.is_empty());
        assert_eq!(
            s.metrics.streams_open.get(),
            0,
            "the gauge follows closes and expiries"
        );
        assert_eq!(
            s.check_out(Some(&baton)).err().unwrap().code,
            "STREAM_EXPIRED"
        );
    }
}
