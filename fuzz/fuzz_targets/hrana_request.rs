//! What the client API does with a request body before the database: the
//! Hrana JSON decoders (HTTP pipeline, cursor, v1 execute and batch, and
//! the WebSocket client message), then the pure checks a stream request
//! goes through (`api::stream`): the baton, stored SQL (`store_sql`,
//! `close_sql`, `sql_id` resolution), batch validation (conditions on
//! later steps, the step limit), and routing by first keyword
//! (`db::classify`). None of it may panic on any input.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use libsql_hrana::proto::{Batch, CursorReqBody, PipelineReqBody, Stmt, StreamRequest};
use outpost::api::http::{parse_json, BatchBody, ExecuteBody};
use outpost::api::stream::{HttpStreams, SqlStore};
use outpost::db::classify::{self, CapturePoint, StmtKind};
use outpost::db::exec::validate_batch;
use outpost::metrics::Metrics;

/// `limits.max_batch_steps` and `limits.max_stored_sql`, far below their
/// defaults (10000, 256) so that the fuzzer reaches them.
const MAX_STEPS: usize = 16;
const MAX_STORED: usize = 4;

fn streams() -> &'static HttpStreams {
    static STREAMS: OnceLock<HttpStreams> = OnceLock::new();
    STREAMS.get_or_init(|| HttpStreams::new(4, Duration::from_secs(60), Arc::new(Metrics::new())))
}

fn classify(sql: &str) -> StmtKind {
    let _ = CapturePoint::of(sql);
    let _ = classify::first_keyword(sql);
    StmtKind::of(sql)
}

/// What `Caller::run_stmt` does before the database.
fn stmt(sqls: &SqlStore, stmt: Stmt) {
    if let Ok(sql) = sqls.resolve(stmt.sql, stmt.sql_id) {
        let _ = classify::route([classify(&sql)]);
    }
}

/// What `Caller::run_batch` does before the database.
fn batch(sqls: &SqlStore, batch: Batch) {
    if validate_batch(&batch, MAX_STEPS).is_err() {
        return;
    }
    let mut kinds = Vec::new();
    for step in batch.steps {
        match sqls.resolve(step.stmt.sql, step.stmt.sql_id) {
            Ok(sql) => kinds.push(classify(&sql)),
            Err(_) => return,
        }
    }
    let _ = classify::route(kinds);
}

fn baton(baton: Option<&str>) {
    if let Some(baton) = baton {
        // Never issued by this process: refused (and nothing is opened).
        assert!(streams().check_out(Some(baton)).is_err(), "a forged baton");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = parse_json::<PipelineReqBody>(data) {
        baton(body.baton.as_deref());
        let mut sqls = SqlStore::default();
        for request in body.requests {
            match request {
                StreamRequest::Execute(req) => stmt(&sqls, req.stmt),
                StreamRequest::Batch(req) => batch(&sqls, req.batch),
                StreamRequest::Sequence(req) => {
                    if let Ok(sql) = sqls.resolve(req.sql, req.sql_id) {
                        let _ = classify(&sql);
                    }
                }
                StreamRequest::Describe(req) => {
                    let _ = sqls.resolve(req.sql, req.sql_id);
                }
                StreamRequest::StoreSql(req) => {
                    let _ = sqls.store(req.sql_id, req.sql, MAX_STORED);
                }
                StreamRequest::CloseSql(req) => sqls.close(req.sql_id),
                StreamRequest::GetAutocommit(_) | StreamRequest::Close(_) => {}
                StreamRequest::None => {}
            }
        }
    }
    if let Ok(body) = parse_json::<CursorReqBody>(data) {
        baton(body.baton.as_deref());
        batch(&SqlStore::default(), body.batch);
    }
    let _ = parse_json::<ExecuteBody>(data);
    let _ = parse_json::<BatchBody>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((stmts, batches)) = outpost::api::ws::decode_for_fuzzing(text) {
            let sqls = SqlStore::default();
            stmts.into_iter().for_each(|s| stmt(&sqls, s));
            batches.into_iter().for_each(|b| batch(&sqls, b));
        }
    }
});
