//! A lean HTTP/1.1 keep-alive client (hyper 1, one connection per simulated client) speaking
//! Hrana over HTTP the way `@libsql/client` does for one `execute()`: one `POST /v2/pipeline`
//! with an `execute` request followed by `close`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::stats::{OpKind, WorkerStats};
use crate::workload::{
    random_id, random_value, wide_col_is_text, wide_update_sql, PhaseClock, Workload, BATCH_SIZE,
    INSERT_SQL, READ_SQL, UPDATE_SQL, WIDE_COLS,
};

pub const PIPELINE_PATH: &str = "/v2/pipeline";

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    addr: SocketAddr,
    host: String,
    /// `Authorization: Bearer <token>` on every request (nodes started with JWT keys).
    auth: Option<String>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Conn {
            addr,
            host: addr.to_string(),
            auth: None,
            sender: None,
        }
    }

    /// A connection that sends `token` as a bearer token (if any).
    pub fn with_token(addr: SocketAddr, token: Option<&str>) -> Self {
        let mut c = Self::new(addr);
        c.auth = token.map(|t| format!("Bearer {t}"));
        c
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            // The load generator only ever targets loopback.
            anyhow::ensure!(
                self.addr.ip().is_loopback(),
                "refusing non-loopback target {}",
                self.addr
            );
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?;
            stream.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("http handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("just set");
        if let Err(e) = sender.ready().await {
            self.sender = None;
            return Err(e).context("connection not ready");
        }
        Ok(self.sender.as_mut().expect("still set"))
    }

    /// Connect now (so that connection setup is not inside a measured operation).
    pub async fn connect(&mut self) -> Result<()> {
        self.sender().await.map(|_| ())
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host);
        if !body.is_empty() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        if let Some(auth) = &self.auth {
            builder = builder.header(hyper::header::AUTHORIZATION, auth);
        }
        let req = builder.body(Full::new(body))?;
        let sender = self.sender().await?;
        let res = async {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
        .await;
        match res {
            Ok(r) => Ok(r),
            Err(e) => {
                self.sender = None;
                Err(e.into())
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes)> {
        self.request(Method::GET, path, Bytes::new()).await
    }

    /// Run one pipeline body and check the Hrana response; returns the execute result.
    pub async fn pipeline(&mut self, body: String) -> Result<ExecResult> {
        let (status, resp) = self
            .request(Method::POST, PIPELINE_PATH, Bytes::from(body))
            .await?;
        parse_pipeline(status, &resp)
    }
}

// --- Hrana wire: request bodies -------------------------------------------------------------

/// A Hrana value argument.
pub enum Arg<'a> {
    Int(i64),
    Text(&'a str),
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A Hrana `stmt` object.
fn push_stmt(out: &mut String, sql: &str, args: &[Arg<'_>], want_rows: bool) {
    out.push_str(r#"{"sql":"#);
    push_json_str(out, sql);
    out.push_str(r#","args":["#);
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match a {
            Arg::Int(n) => {
                let _ = write!(out, r#"{{"type":"integer","value":"{n}"}}"#);
            }
            Arg::Text(s) => {
                out.push_str(r#"{"type":"text","value":"#);
                push_json_str(out, s);
                out.push('}');
            }
        }
    }
    let _ = write!(out, r#"],"want_rows":{want_rows}}}"#);
}

/// The body `@libsql/client` sends for one `execute()` outside a transaction.
pub fn execute_body(sql: &str, args: &[Arg<'_>]) -> String {
    let mut out = String::with_capacity(160 + sql.len());
    out.push_str(r#"{"baton":null,"requests":[{"type":"execute","stmt":"#);
    push_stmt(&mut out, sql, args, true);
    out.push_str(r#"},{"type":"close"}]}"#);
    out
}

/// The body `@libsql/client` sends for `batch(stmts, "write")` over HTTP (Hrana 2 conditions):
/// `BEGIN IMMEDIATE`, each statement if the previous step succeeded, `COMMIT` if the last one
/// did, and `ROLLBACK` if the `COMMIT` did not succeed.
pub fn batch_body(stmts: &[(&str, Vec<Arg<'_>>)]) -> String {
    let mut out = String::with_capacity(200 + stmts.len() * 120);
    out.push_str(r#"{"baton":null,"requests":[{"type":"batch","batch":{"steps":["#);
    out.push_str(r#"{"stmt":"#);
    push_stmt(&mut out, "BEGIN IMMEDIATE", &[], false);
    out.push('}');
    for (i, (sql, args)) in stmts.iter().enumerate() {
        let _ = write!(out, r#",{{"condition":{{"type":"ok","step":{i}}},"stmt":"#);
        push_stmt(&mut out, sql, args, true);
        out.push('}');
    }
    let commit = stmts.len() + 1;
    let _ = write!(
        out,
        r#",{{"condition":{{"type":"ok","step":{}}},"stmt":"#,
        stmts.len()
    );
    push_stmt(&mut out, "COMMIT", &[], false);
    let _ = write!(
        out,
        r#"}},{{"condition":{{"type":"not","cond":{{"type":"ok","step":{commit}}}}},"stmt":"#
    );
    push_stmt(&mut out, "ROLLBACK", &[], false);
    out.push_str(r#"}]}},{"type":"close"}]}"#);
    out
}

// --- Hrana wire: responses ------------------------------------------------------------------

#[derive(Deserialize)]
struct PipelineResp {
    results: Vec<StreamResult>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum StreamResult {
    Ok { response: StreamResponse },
    Error { error: HranaError },
}

#[derive(Deserialize)]
struct HranaError {
    message: String,
    #[serde(default)]
    code: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum StreamResponse {
    Execute {
        result: ExecResult,
    },
    Batch {
        result: BatchResult,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
pub struct ExecResult {
    #[serde(default)]
    pub rows: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    pub affected_row_count: u64,
}

#[derive(Deserialize)]
struct BatchResult {
    step_results: Vec<Option<ExecResult>>,
    step_errors: Vec<Option<HranaError>>,
}

/// The `execute` and `batch` results of a pipeline response, in order; an error if the HTTP
/// status is not 2xx or any request failed.
fn parse_responses(status: StatusCode, body: &[u8]) -> Result<Vec<StreamResponse>> {
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
        bail!("HTTP {status}: {text}");
    }
    let resp: PipelineResp = serde_json::from_slice(body).context("bad pipeline response")?;
    let mut out = Vec::new();
    for r in resp.results {
        match r {
            StreamResult::Ok { response } => out.push(response),
            StreamResult::Error { error } => {
                bail!(
                    "hrana error {}: {}",
                    error.code.as_deref().unwrap_or("-"),
                    error.message
                )
            }
        }
    }
    Ok(out)
}

fn parse_pipeline(status: StatusCode, body: &[u8]) -> Result<ExecResult> {
    parse_responses(status, body)?
        .into_iter()
        .filter_map(|r| match r {
            StreamResponse::Execute { result } => Some(result),
            _ => None,
        })
        .next_back()
        .context("no execute result in pipeline response")
}

/// Check the answer to a [`batch_body`] of `n` single-row writes: BEGIN, every write (one
/// affected row each) and COMMIT succeeded, and the ROLLBACK step was skipped.
fn check_batch(status: StatusCode, body: &[u8], n: usize) -> Result<()> {
    let batch = parse_responses(status, body)?
        .into_iter()
        .find_map(|r| match r {
            StreamResponse::Batch { result } => Some(result),
            _ => None,
        })
        .context("no batch result in pipeline response")?;
    let steps = n + 3;
    anyhow::ensure!(
        batch.step_results.len() == steps && batch.step_errors.len() == steps,
        "batch answered {} results and {} errors for {steps} steps",
        batch.step_results.len(),
        batch.step_errors.len()
    );
    if let Some((i, e)) = batch
        .step_errors
        .iter()
        .enumerate()
        .find_map(|(i, e)| e.as_ref().map(|e| (i, e)))
    {
        bail!(
            "batch step {i} failed: {} {}",
            e.code.as_deref().unwrap_or("-"),
            e.message
        );
    }
    for (i, r) in batch.step_results[..=n + 1].iter().enumerate() {
        match r {
            None => bail!("batch step {i} did not run"),
            Some(r) if (1..=n).contains(&i) && r.affected_row_count != 1 => {
                bail!("batch step {i} affected {} rows", r.affected_row_count)
            }
            Some(_) => {}
        }
    }
    anyhow::ensure!(
        batch.step_results[n + 2].is_none(),
        "the ROLLBACK step ran: COMMIT failed"
    );
    Ok(())
}

// --- load phase ---------------------------------------------------------------------------

/// Run one closed-loop phase: `concurrency` connections, each sending its next request as
/// soon as the previous response is read.
pub async fn run_phase(
    addr: SocketAddr,
    workload: Workload,
    concurrency: usize,
    rows: u64,
    clock: Arc<PhaseClock>,
) -> Result<WorkerStats> {
    let barrier = Arc::new(tokio::sync::Barrier::new(concurrency));
    let mut handles = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let clock = clock.clone();
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let connected = conn.connect().await;
            barrier.wait().await;
            let mut stats = WorkerStats::new();
            if let Err(e) = connected {
                stats.record_err(|| format!("{e:#}"), Instant::now());
            }
            worker(conn, workload, rows, &clock, &mut stats).await;
            stats
        }));
    }
    let mut total = WorkerStats::new();
    for h in handles {
        total.merge(h.await.context("http worker panicked")?);
    }
    Ok(total)
}

/// What a reply must show for the operation to count as a success.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// An `execute` that returned exactly one row.
    OneRow,
    /// An `execute` that affected exactly one row.
    OneAffected,
    /// A [`batch_body`] of this many single-row writes, all applied and committed.
    Batch(usize),
}

/// The request body of one operation (built before the clock starts) and its check.
pub fn op_body(workload: Workload, kind: OpKind, rows: u64, rng: &mut StdRng) -> (String, Check) {
    match (workload, kind) {
        (_, OpKind::Read) => (
            execute_body(READ_SQL, &[Arg::Int(random_id(rng, rows) as i64)]),
            Check::OneRow,
        ),
        (Workload::Batch, _) => {
            let values: Vec<String> = (0..BATCH_SIZE).map(|_| random_value(rng)).collect();
            let stmts: Vec<(&str, Vec<Arg<'_>>)> = values
                .iter()
                .map(|v| (INSERT_SQL, vec![Arg::Text(v)]))
                .collect();
            (batch_body(&stmts), Check::Batch(BATCH_SIZE))
        }
        (Workload::WideUpdate { rows: wide_rows }, _) => {
            let col = rng.gen_range(1..=WIDE_COLS);
            let id = Arg::Int(random_id(rng, wide_rows) as i64);
            let body = if wide_col_is_text(col) {
                execute_body(&wide_update_sql(col), &[Arg::Text(&random_value(rng)), id])
            } else {
                let v = rng.gen_range(0..1_000_000_000i64);
                execute_body(&wide_update_sql(col), &[Arg::Int(v), id])
            };
            (body, Check::OneAffected)
        }
        (Workload::Update, _) => (
            execute_body(
                UPDATE_SQL,
                &[
                    Arg::Text(&random_value(rng)),
                    Arg::Int(random_id(rng, rows) as i64),
                ],
            ),
            Check::OneAffected,
        ),
        (Workload::Read | Workload::Insert | Workload::Mix { .. }, OpKind::Write) => (
            execute_body(INSERT_SQL, &[Arg::Text(&random_value(rng))]),
            Check::OneAffected,
        ),
    }
}

/// Check one reply: HTTP 2xx, no Hrana error, and what `check` asks for.
pub fn check_op(check: Check, status: StatusCode, body: &[u8]) -> Result<()> {
    match check {
        Check::Batch(n) => check_batch(status, body, n),
        Check::OneRow => {
            let r = parse_pipeline(status, body)?;
            anyhow::ensure!(r.rows.len() == 1, "read returned {} rows", r.rows.len());
            Ok(())
        }
        Check::OneAffected => {
            let r = parse_pipeline(status, body)?;
            anyhow::ensure!(
                r.affected_row_count == 1,
                "write affected {} rows",
                r.affected_row_count
            );
            Ok(())
        }
    }
}

async fn worker(
    mut conn: Conn,
    workload: Workload,
    rows: u64,
    clock: &PhaseClock,
    stats: &mut WorkerStats,
) {
    let mut rng = StdRng::from_entropy();
    while let Some(measured) = clock.next() {
        let kind = workload.pick(&mut rng);
        let (body, check) = op_body(workload, kind, rows, &mut rng);
        let t0 = Instant::now();
        let res = conn
            .request(Method::POST, PIPELINE_PATH, Bytes::from(body))
            .await;
        let done = Instant::now();
        let res = res.and_then(|(status, body)| check_op(check, status, &body));
        let failed_transport = res.is_err() && conn.sender.is_none();
        if measured {
            match res {
                Ok(()) => stats.record_ok(kind, done - t0, done),
                Err(e) => stats.record_err(|| format!("{e:#}"), done),
            }
        }
        if failed_transport {
            // Do not spin on a dead server: back off a little before reconnecting.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_what_libsql_client_sends() {
        let b = execute_body(READ_SQL, &[Arg::Int(42)]);
        assert_eq!(
            b,
            r#"{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"SELECT v FROM t WHERE id = ?","args":[{"type":"integer","value":"42"}],"want_rows":true}},{"type":"close"}]}"#
        );
        let b = execute_body("SELECT \"x\"", &[Arg::Text("a\"b")]);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["requests"][0]["stmt"]["sql"], "SELECT \"x\"");
        assert_eq!(v["requests"][0]["stmt"]["args"][0]["value"], "a\"b");
    }

    #[test]
    fn batch_body_is_what_libsql_client_sends() {
        let b = batch_body(&[
            (INSERT_SQL, vec![Arg::Text("a")]),
            (INSERT_SQL, vec![Arg::Text("b")]),
        ]);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        let steps = v["requests"][0]["batch"]["steps"].as_array().unwrap();
        assert_eq!(v["requests"][0]["type"], "batch");
        assert_eq!(v["requests"][1]["type"], "close");
        assert_eq!(steps.len(), 5);
        assert_eq!(steps[0]["stmt"]["sql"], "BEGIN IMMEDIATE");
        assert!(steps[0].get("condition").is_none());
        assert_eq!(
            steps[1]["condition"],
            serde_json::json!({"type": "ok", "step": 0})
        );
        assert_eq!(steps[2]["stmt"]["args"][0]["value"], "b");
        assert_eq!(steps[2]["condition"]["step"], 1);
        assert_eq!(steps[3]["stmt"]["sql"], "COMMIT");
        assert_eq!(steps[3]["condition"]["step"], 2);
        assert_eq!(steps[4]["stmt"]["sql"], "ROLLBACK");
        assert_eq!(
            steps[4]["condition"],
            serde_json::json!({"type": "not", "cond": {"type": "ok", "step": 3}})
        );
    }

    #[test]
    fn checks_batch_results() {
        let res = |affected: &str, rollback: &str, err: &str| {
            format!(
                r#"{{"baton":null,"base_url":null,"results":[{{"type":"ok","response":{{"type":"batch","result":{{"step_results":[{{"cols":[],"rows":[],"affected_row_count":0}},{{"cols":[],"rows":[],"affected_row_count":1}},{{"cols":[],"rows":[],"affected_row_count":{affected}}},{{"cols":[],"rows":[],"affected_row_count":0}},{rollback}],"step_errors":[null,null,{err},null,null]}}}}}},{{"type":"ok","response":{{"type":"close"}}}}]}}"#
            )
        };
        check_batch(StatusCode::OK, res("1", "null", "null").as_bytes(), 2).unwrap();
        let e = check_batch(StatusCode::OK, res("0", "null", "null").as_bytes(), 2);
        assert!(e.unwrap_err().to_string().contains("affected 0"));
        let rolled_back = r#"{"cols":[],"rows":[],"affected_row_count":0}"#;
        assert!(check_batch(StatusCode::OK, res("1", rolled_back, "null").as_bytes(), 2).is_err());
        let failed = r#"{"message":"UNIQUE constraint failed","code":"SQLITE_CONSTRAINT"}"#;
        let e = check_batch(StatusCode::OK, res("1", "null", failed).as_bytes(), 2);
        assert!(e.unwrap_err().to_string().contains("step 2 failed"));
        assert!(check_batch(StatusCode::OK, res("1", "null", "null").as_bytes(), 3).is_err());
    }

    #[test]
    fn parses_ok_and_error() {
        let ok = br#"{"baton":null,"base_url":null,"results":[{"type":"ok","response":{"type":"execute","result":{"cols":[{"name":"v","decltype":"TEXT"}],"rows":[[{"type":"text","value":"abc"}]],"affected_row_count":0,"last_insert_rowid":null}}},{"type":"ok","response":{"type":"close"}}]}"#;
        let r = parse_pipeline(StatusCode::OK, ok).unwrap();
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.affected_row_count, 0);

        let err = br#"{"baton":null,"base_url":null,"results":[{"type":"error","error":{"message":"no such table: t","code":"SQLITE_ERROR"}},{"type":"ok","response":{"type":"close"}}]}"#;
        let e = parse_pipeline(StatusCode::OK, err).unwrap_err().to_string();
        assert!(e.contains("no such table"), "{e}");

        assert!(parse_pipeline(StatusCode::INTERNAL_SERVER_ERROR, b"boom").is_err());
        assert!(parse_pipeline(StatusCode::OK, b"not json").is_err());
    }
}
