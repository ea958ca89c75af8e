//! Hrana over HTTP: `/v2/pipeline`, `/v3/pipeline`, `/v3/cursor`,
//! `/v1/execute`, `/v1/batch` and the version probes.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use libsql_hrana::proto::{
    Batch, BatchResult, CursorReqBody, CursorRespBody, PipelineReqBody, PipelineRespBody, Stmt,
    StreamRequest, StreamResult,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::stream::{Caller, SqlStore, StreamState};
use super::AppState;
use crate::auth::Access;
use crate::error::{ApiError, SqlError};

fn authenticate(app: &AppState, req: &HttpRequest) -> Result<Access, ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    app.auth.authenticate_header(header).inspect_err(|_| {
        app.metrics
            .rejected_total
            .with_label_values(&["auth"])
            .inc();
    })
}

/// Reads the request body, refusing more than `limits.max_body_bytes`.
async fn read_body(app: &AppState, mut payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    use futures_util::StreamExt;
    let max = app.config.limits.max_body_bytes;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("BODY_INVALID", e.to_string()))?;
        if body.len() + chunk.len() > max {
            app.metrics
                .rejected_total
                .with_label_values(&["body_too_large"])
                .inc();
            return Err(ApiError::too_large(
                "BODY_TOO_LARGE",
                format!("The request body is larger than {max} bytes (limits.max_body_bytes)"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses a JSON body with an error message that says what is wrong.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "REQUEST_INVALID",
            format!("The request body is not valid Hrana JSON: {e}"),
        )
    })
}

fn json_response<T: serde::Serialize>(value: &T) -> Result<HttpResponse, ApiError> {
    let body = serde_json::to_vec(value)
        .map_err(|e| ApiError::internal(format!("encoding the response failed: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

/// Refuses work up front when the database queues are full, so a client
/// gets a 429 before anything of its pipeline ran.
fn admit(app: &AppState) -> Result<(), ApiError> {
    if app.db.saturated() {
        app.metrics
            .rejected_total
            .with_label_values(&["queue_full"])
            .inc();
        return Err(ApiError::overloaded(
            "OVERLOADED",
            "The database queues are full (limits.writer_queue / limits.reader_queue); retry later",
        ));
    }
    Ok(())
}

fn check_pipeline_len(app: &AppState, len: usize) -> Result<(), ApiError> {
    let max = app.config.limits.max_batch_steps;
    if len > max {
        app.metrics
            .rejected_total
            .with_label_values(&["pipeline_too_long"])
            .inc();
        return Err(ApiError::too_large(
            "PIPELINE_TOO_LARGE",
            format!("The pipeline has {len} requests; the limit is {max} (limits.max_batch_steps)"),
        ));
    }
    Ok(())
}

/// What every Hrana HTTP request goes through first: authentication, the
/// body limit, JSON parsing, and admission.
async fn accept<T: DeserializeOwned>(
    app: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<(Access, T), ApiError> {
    let access = authenticate(app, req)?;
    let body = read_body(app, payload).await?;
    let body: T = parse_json(&body)?;
    admit(app)?;
    Ok((access, body))
}

pub async fn pipeline(
    app: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (access, body): (_, PipelineReqBody) = accept(&app, &req, payload).await?;
    check_pipeline_len(&app, body.requests.len())?;
    let caller = Caller { app: &app, access };
    let mut stream = app.streams.check_out(body.baton.as_deref())?;
    let mut results = Vec::with_capacity(body.requests.len());
    let mut closed = false;
    for request in body.requests {
        if closed {
            results.push(error_result(SqlError::new(
                "STREAM_CLOSED",
                "The stream was closed earlier in this pipeline",
            )));
            continue;
        }
        closed = matches!(request, StreamRequest::Close(_));
        let out = &mut *stream;
        let result = caller.handle(&mut out.state, &mut out.sqls, request).await;
        results.push(match result {
            Ok(response) => StreamResult::Ok { response },
            Err(e) => error_result(e),
        });
    }
    let baton = app.streams.check_in(stream, closed);
    json_response(&PipelineRespBody {
        baton,
        base_url: None,
        results,
    })
}

fn error_result(e: SqlError) -> StreamResult {
    StreamResult::Error {
        error: e.to_hrana(),
    }
}

/// `/v3/cursor`: runs a batch and streams its rows as newline-delimited
/// JSON entries, after a first line with the baton.
pub async fn cursor(
    app: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (access, body): (_, CursorReqBody) = accept(&app, &req, payload).await?;
    let caller = Caller { app: &app, access };
    let mut stream = app.streams.check_out(body.baton.as_deref())?;
    let out = &mut *stream;
    let result = caller
        .run_batch(&mut out.state, &out.sqls, body.batch)
        .await;
    let baton = app.streams.check_in(stream, false);
    let mut lines = Vec::new();
    write_line(
        &mut lines,
        &CursorRespBody {
            baton,
            base_url: None,
        },
    )?;
    match result {
        Ok(batch) => {
            for entry in cursor_entries(&batch) {
                write_line(&mut lines, &entry)?;
            }
        }
        Err(e) => write_line(
            &mut lines,
            &serde_json::json!({"type": "error", "error": e.to_hrana()}),
        )?,
    }
    Ok(HttpResponse::Ok().content_type("text/plain").body(lines))
}

fn write_line<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), ApiError> {
    serde_json::to_writer(&mut *out, value).map_err(|e| ApiError::internal(e.to_string()))?;
    out.push(b'\n');
    Ok(())
}

/// The cursor entries of a finished batch: for each step that ran, its
/// columns, rows and end (or its error). Shared with WebSocket cursors.
pub fn cursor_entries(batch: &BatchResult) -> Vec<serde_json::Value> {
    use serde_json::json;
    let mut entries = Vec::new();
    for (step, (result, error)) in batch
        .step_results
        .iter()
        .zip(&batch.step_errors)
        .enumerate()
    {
        if let Some(result) = result {
            entries.push(json!({"type": "step_begin", "step": step, "cols": result.cols}));
            for row in &result.rows {
                entries.push(json!({"type": "row", "row": row}));
            }
            entries.push(json!({
                "type": "step_end",
                "affected_row_count": result.affected_row_count,
                "last_insert_rowid": result.last_insert_rowid.map(|r| r.to_string()),
            }));
        } else if let Some(error) = error {
            entries.push(json!({"type": "step_error", "step": step, "error": error}));
        }
    }
    entries
}

#[derive(Deserialize)]
pub struct ExecuteBody {
    stmt: Stmt,
}

#[derive(Deserialize)]
pub struct BatchBody {
    batch: Batch,
}

/// `/v1/execute`: one statement on a fresh stream.
pub async fn v1_execute(
    app: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (access, body): (_, ExecuteBody) = accept(&app, &req, payload).await?;
    let caller = Caller { app: &app, access };
    let result = caller
        .run_stmt(&mut StreamState::default(), &SqlStore::default(), body.stmt)
        .await;
    v1_reply(result)
}

/// `/v1/batch`: one batch on a fresh stream.
pub async fn v1_batch(
    app: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (access, body): (_, BatchBody) = accept(&app, &req, payload).await?;
    let caller = Caller { app: &app, access };
    let result = caller
        .run_batch(
            &mut StreamState::default(),
            &SqlStore::default(),
            body.batch,
        )
        .await;
    v1_reply(result)
}

fn v1_reply<T: serde::Serialize>(result: Result<T, SqlError>) -> Result<HttpResponse, ApiError> {
    match result {
        Ok(result) => json_response(&serde_json::json!({ "result": result })),
        Err(e) => Ok(v1_error(&e)),
    }
}

/// v1 reports a failed statement as the HTTP status: 403 when it was
/// refused (read-only token, forbidden statement), else 400.
fn v1_error(e: &SqlError) -> HttpResponse {
    let mut resp = if e.code == "SQLITE_AUTH" {
        HttpResponse::Forbidden()
    } else {
        HttpResponse::BadRequest()
    };
    resp.json(e.to_hrana())
}

/// `GET /v1`, `/v2`, `/v3`: version probes the clients use.
pub async fn probe() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("")
}
