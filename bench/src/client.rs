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
use rand::SeedableRng;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::stats::{OpKind, WorkerStats};
use crate::workload::{random_id, random_value, PhaseClock, Workload, INSERT_SQL, READ_SQL};

pub const PIPELINE_PATH: &str = "/v2/pipeline";

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    addr: SocketAddr,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Conn {
            addr,
            host: addr.to_string(),
            sender: None,
        }
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

/// The body `@libsql/client` sends for one `execute()` outside a transaction.
pub fn execute_body(sql: &str, args: &[Arg<'_>]) -> String {
    let mut out = String::with_capacity(160 + sql.len());
    out.push_str(r#"{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"#);
    push_json_str(&mut out, sql);
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
                push_json_str(&mut out, s);
                out.push('}');
            }
        }
    }
    out.push_str(r#"],"want_rows":true}},{"type":"close"}]}"#);
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

fn parse_pipeline(status: StatusCode, body: &[u8]) -> Result<ExecResult> {
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
        bail!("HTTP {status}: {text}");
    }
    let resp: PipelineResp = serde_json::from_slice(body).context("bad pipeline response")?;
    let mut exec = None;
    for r in resp.results {
        match r {
            StreamResult::Ok {
                response: StreamResponse::Execute { result },
            } => exec = Some(result),
            StreamResult::Ok { .. } => {}
            StreamResult::Error { error } => {
                bail!(
                    "hrana error {}: {}",
                    error.code.as_deref().unwrap_or("-"),
                    error.message
                )
            }
        }
    }
    exec.context("no execute result in pipeline response")
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
        let body = match kind {
            OpKind::Read => execute_body(READ_SQL, &[Arg::Int(random_id(&mut rng, rows) as i64)]),
            OpKind::Write => execute_body(INSERT_SQL, &[Arg::Text(&random_value(&mut rng))]),
        };
        let t0 = Instant::now();
        let res = conn
            .request(Method::POST, PIPELINE_PATH, Bytes::from(body))
            .await;
        let done = Instant::now();
        let res = res.and_then(|(status, body)| {
            let r = parse_pipeline(status, &body)?;
            match kind {
                OpKind::Read if r.rows.len() != 1 => bail!("read returned {} rows", r.rows.len()),
                OpKind::Write if r.affected_row_count != 1 => {
                    bail!("insert affected {} rows", r.affected_row_count)
                }
                _ => Ok(()),
            }
        });
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
