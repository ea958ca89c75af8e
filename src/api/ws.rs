//! Hrana over WebSocket (subprotocols `hrana3`, `hrana2`, `hrana1`).
//!
//! One connection carries many streams (numbered by the client), stored SQL
//! shared by those streams and, in Hrana 3, cursors. The client first sends
//! `hello` with its JWT; every later message is a `request` answered by a
//! `response_ok` or `response_error` with the same `request_id`. Requests
//! run in arrival order, which satisfies Hrana's per-stream ordering.

use std::collections::{HashMap, VecDeque};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use libsql_hrana::proto::{Batch, Stmt};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::http::cursor_entries;
use super::stream::{Caller, SqlStore, StreamState};
use super::AppState;
use crate::auth::Access;
use crate::error::SqlError;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMsg {
    Hello {
        #[serde(default)]
        jwt: Option<String>,
    },
    Request {
        request_id: i64,
        request: WsRequest,
    },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WsRequest {
    OpenStream {
        stream_id: i32,
    },
    CloseStream {
        stream_id: i32,
    },
    Execute {
        stream_id: i32,
        stmt: Stmt,
    },
    Batch {
        stream_id: i32,
        batch: Batch,
    },
    OpenCursor {
        stream_id: i32,
        cursor_id: i32,
        batch: Batch,
    },
    CloseCursor {
        cursor_id: i32,
    },
    FetchCursor {
        cursor_id: i32,
        max_count: u32,
    },
    Sequence {
        stream_id: i32,
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    Describe {
        stream_id: i32,
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    StoreSql {
        sql_id: i32,
        sql: String,
    },
    CloseSql {
        sql_id: i32,
    },
    GetAutocommit {
        stream_id: i32,
    },
}

/// Per-connection state.
struct Conn {
    access: Option<Access>,
    streams: HashMap<i32, StreamState>,
    sqls: SqlStore,
    cursors: HashMap<i32, VecDeque<Json>>,
}

pub async fn upgrade(
    app: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, stream) =
        actix_ws::handle_with_protocols(&req, body, &["hrana3", "hrana2", "hrana1"])?;
    let max = app.config.limits.max_ws_message_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    actix_web::rt::spawn(serve(app, session, stream));
    Ok(response)
}

async fn serve(
    app: web::Data<AppState>,
    mut session: Session,
    mut stream: actix_ws::AggregatedMessageStream,
) {
    app.metrics.ws_connections_open.inc();
    let mut conn = Conn {
        access: None,
        streams: HashMap::new(),
        sqls: SqlStore::default(),
        cursors: HashMap::new(),
    };
    let close = loop {
        let Some(msg) = stream.recv().await else {
            break None;
        };
        let text = match msg {
            Ok(AggregatedMessage::Text(text)) => text,
            Ok(AggregatedMessage::Ping(bytes)) => {
                if session.pong(&bytes).await.is_err() {
                    break None;
                }
                continue;
            }
            Ok(AggregatedMessage::Pong(_)) => continue,
            Ok(AggregatedMessage::Binary(_)) => {
                break Some(protocol_error(
                    "Binary messages are not supported; use JSON text",
                ));
            }
            Ok(AggregatedMessage::Close(_)) => break None,
            Err(e) => {
                break Some(CloseReason {
                    code: CloseCode::Size,
                    description: Some(format!("{e} (limits.max_ws_message_bytes)")),
                });
            }
        };
        match handle_message(&app, &mut conn, &text).await {
            Ok(Some(reply)) => {
                if session.text(reply.to_string()).await.is_err() {
                    break None;
                }
            }
            Ok(None) => {}
            Err(reason) => break Some(reason),
        }
    };
    let open = conn.streams.len() as i64;
    app.metrics.streams_open.sub(open);
    app.metrics.ws_connections_open.dec();
    let _ = session.close(close).await;
}

fn protocol_error(message: &str) -> CloseReason {
    CloseReason {
        code: CloseCode::Protocol,
        description: Some(message.chars().take(120).collect()),
    }
}

/// Parses one client message; `Err` closes the connection.
fn decode(text: &str) -> Result<ClientMsg, CloseReason> {
    serde_json::from_str(text).map_err(|e| protocol_error(&format!("invalid Hrana message: {e}")))
}

/// The statements and batches a client message carries, as the server
/// decodes it (`Err`: the reason it would close the connection). For the
/// fuzz target `hrana_request` (fuzz/), which runs what the server checks
/// before the database on them; the server itself does not call it.
#[doc(hidden)]
pub fn decode_for_fuzzing(text: &str) -> Result<(Vec<Stmt>, Vec<Batch>), String> {
    let msg = decode(text).map_err(|reason| reason.description.unwrap_or_default())?;
    let ClientMsg::Request { request, .. } = msg else {
        return Ok(Default::default());
    };
    Ok(match request {
        WsRequest::Execute { stmt, .. } => (vec![stmt], Vec::new()),
        WsRequest::Batch { batch, .. } | WsRequest::OpenCursor { batch, .. } => {
            (Vec::new(), vec![batch])
        }
        _ => Default::default(),
    })
}

/// Handles one client message; `Err` closes the connection.
async fn handle_message(
    app: &AppState,
    conn: &mut Conn,
    text: &str,
) -> Result<Option<Json>, CloseReason> {
    match decode(text)? {
        ClientMsg::Hello { jwt } => match app.auth.authenticate_token(jwt.as_deref()) {
            Ok(access) => {
                conn.access = Some(access);
                Ok(Some(json!({"type": "hello_ok"})))
            }
            Err(e) => {
                app.metrics
                    .rejected_total
                    .with_label_values(&["auth"])
                    .inc();
                conn.access = None;
                Ok(Some(
                    json!({"type": "hello_error", "error": {"message": e.message, "code": e.code}}),
                ))
            }
        },
        ClientMsg::Request {
            request_id,
            request,
        } => {
            let Some(access) = conn.access.clone() else {
                return Err(protocol_error(
                    "a request arrived before a successful hello",
                ));
            };
            let caller = Caller { app, access };
            Ok(Some(match handle_request(&caller, conn, request).await {
                Ok(response) => {
                    json!({"type": "response_ok", "request_id": request_id, "response": response})
                }
                Err(e) => {
                    json!({"type": "response_error", "request_id": request_id, "error": e.to_hrana()})
                }
            }))
        }
    }
}

fn stream_of(conn: &mut Conn, id: i32) -> Result<&mut StreamState, SqlError> {
    conn.streams.get_mut(&id).ok_or_else(|| {
        SqlError::new(
            "STREAM_NOT_FOUND",
            format!("No stream {id} is open on this connection"),
        )
    })
}

async fn handle_request(
    caller: &Caller<'_>,
    conn: &mut Conn,
    request: WsRequest,
) -> Result<Json, SqlError> {
    let limits = &caller.app.config.limits;
    Ok(match request {
        WsRequest::OpenStream { stream_id } => {
            if conn.streams.contains_key(&stream_id) {
                return Err(SqlError::new(
                    "STREAM_EXISTS",
                    format!("Stream {stream_id} is already open"),
                ));
            }
            if conn.streams.len() >= limits.max_streams {
                return Err(SqlError::new(
                    "STREAMS_EXHAUSTED",
                    format!(
                        "Too many open streams (limits.max_streams = {})",
                        limits.max_streams
                    ),
                ));
            }
            conn.streams.insert(stream_id, StreamState::default());
            caller.app.metrics.streams_open.inc();
            json!({"type": "open_stream"})
        }
        WsRequest::CloseStream { stream_id } => {
            if conn.streams.remove(&stream_id).is_some() {
                caller.app.metrics.streams_open.dec();
            }
            json!({"type": "close_stream"})
        }
        WsRequest::Execute { stream_id, stmt } => {
            let sqls = &conn.sqls;
            let stream = conn
                .streams
                .get_mut(&stream_id)
                .ok_or_else(|| missing(stream_id))?;
            let result = caller.run_stmt(stream, sqls, stmt).await?;
            json!({"type": "execute", "result": result})
        }
        WsRequest::Batch { stream_id, batch } => {
            let sqls = &conn.sqls;
            let stream = conn
                .streams
                .get_mut(&stream_id)
                .ok_or_else(|| missing(stream_id))?;
            let result = caller.run_batch(stream, sqls, batch).await?;
            json!({"type": "batch", "result": result})
        }
        WsRequest::OpenCursor {
            stream_id,
            cursor_id,
            batch,
        } => {
            if conn.cursors.contains_key(&cursor_id) {
                return Err(SqlError::new(
                    "CURSOR_EXISTS",
                    format!("Cursor {cursor_id} is already open"),
                ));
            }
            if conn.cursors.len() >= limits.max_streams {
                return Err(SqlError::new(
                    "CURSORS_EXHAUSTED",
                    "Too many open cursors (limits.max_streams)",
                ));
            }
            let sqls = &conn.sqls;
            let stream = conn
                .streams
                .get_mut(&stream_id)
                .ok_or_else(|| missing(stream_id))?;
            let entries = match caller.run_batch(stream, sqls, batch).await {
                Ok(result) => cursor_entries(&result),
                Err(e) => vec![json!({"type": "error", "error": e.to_hrana()})],
            };
            conn.cursors.insert(cursor_id, entries.into());
            json!({"type": "open_cursor"})
        }
        WsRequest::CloseCursor { cursor_id } => {
            conn.cursors.remove(&cursor_id);
            json!({"type": "close_cursor"})
        }
        WsRequest::FetchCursor {
            cursor_id,
            max_count,
        } => {
            let cursor = conn.cursors.get_mut(&cursor_id).ok_or_else(|| {
                SqlError::new("CURSOR_NOT_FOUND", format!("No cursor {cursor_id} is open"))
            })?;
            let take = (max_count as usize).min(cursor.len());
            let entries: Vec<Json> = cursor.drain(..take).collect();
            let done = cursor.is_empty();
            json!({"type": "fetch_cursor", "entries": entries, "done": done})
        }
        WsRequest::Sequence {
            stream_id,
            sql,
            sql_id,
        } => {
            let sql = conn.sqls.resolve(sql, sql_id)?;
            caller
                .run_sequence(stream_of(conn, stream_id)?, sql)
                .await?;
            json!({"type": "sequence"})
        }
        WsRequest::Describe {
            stream_id,
            sql,
            sql_id,
        } => {
            let sql = conn.sqls.resolve(sql, sql_id)?;
            let result = caller
                .run_describe(stream_of(conn, stream_id)?, sql)
                .await?;
            json!({"type": "describe", "result": result})
        }
        WsRequest::StoreSql { sql_id, sql } => {
            conn.sqls.store(sql_id, sql, limits.max_stored_sql)?;
            json!({"type": "store_sql"})
        }
        WsRequest::CloseSql { sql_id } => {
            conn.sqls.close(sql_id);
            json!({"type": "close_sql"})
        }
        WsRequest::GetAutocommit { stream_id } => {
            let stream = stream_of(conn, stream_id)?;
            json!({"type": "get_autocommit", "is_autocommit": stream.lease.is_none()})
        }
    })
}

fn missing(id: i32) -> SqlError {
    SqlError::new(
        "STREAM_NOT_FOUND",
        format!("No stream {id} is open on this connection"),
    )
}
