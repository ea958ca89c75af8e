//! The live change feed: every committed change of the tables a client names,
//! local or replicated, pushed as JSON over server-sent events or WebSocket.
//!
//! A thin client (a browser, a dashboard, a cache) that wants to know when
//! rows change does not poll: it subscribes once and the node pushes each
//! change as soon as the transaction holding it committed. The feed carries
//! no history: it starts at the moment of subscription. A client that needs
//! a consistent view therefore subscribes first, then reads the rows (over
//! Hrana), and applies the events that follow.
//!
//! # Subscribing
//!
//! ```text
//! GET /v1/feed?tables=todos,users            server-sent events (any Accept)
//! GET /v1/feed?tables=todos&id=42            one row: single-column key 42 / '42'
//! GET /v1/feed?tables=todos&key='a''b',7     one row: the key as SQL literals
//! GET /v1/feed?tables=todos   + `Upgrade: websocket`    the same over WebSocket
//! ```
//!
//! Query parameters (anything else is refused with 400 `FEED_QUERY_INVALID`):
//!
//! - `tables` (required): table names separated by commas, at most
//!   `feed.max_tables` distinct ones (`FEED_TOO_MANY_TABLES`). Names are
//!   matched like SQLite does, ignoring ASCII case. They are checked only
//!   lexically: outpost's own `_outpost_*` tables and SQLite's `sqlite_*`
//!   tables are refused (`FEED_TABLE_INVALID`), but a table that does not
//!   exist is accepted and simply never produces an event (it may be
//!   created later). Only tables whose changes are captured (`crdt.replicate`)
//!   have changes to report.
//! - `key` (optional): one row, given as its key is logged: the SQLite
//!   `quote()` literal of each primary-key column, joined by commas (`1`,
//!   `'abc'`, `'a''b',7`, `X'00FF'`, `1.5`). Compared as values, so the
//!   literal must have the key column's type (`1` does not match a REAL key
//!   `1.0`). The filter applies to every named table.
//! - `id` (optional, instead of `key`): a friendlier row filter for tables
//!   with a single-column key: `id=42` matches the integer key 42 and the
//!   text key `'42'`; `id=abc` matches the text key `'abc'` (no quoting, the
//!   value is taken verbatim after URL decoding).
//! - `access_token` (optional): the JWT, for clients that cannot set the
//!   `Authorization: Bearer` header (browsers' `EventSource` and
//!   `WebSocket`). The header wins when both are given. A URL is easier to
//!   leak (proxy logs, browser history) than a header: prefer the header.
//!
//! When authentication is enabled, a valid token with read access is needed
//! (read-only tokens suffice); otherwise 401 `AUTH_FAILED`. A token with
//! per-table rights (a `t` claim) may follow only the tables it may read;
//! naming another is refused with 403 `FORBIDDEN`. At most
//! `feed.max_subscribers` subscriptions are open at once; beyond, 429
//! `FEED_SUBSCRIBERS_EXHAUSTED`. Errors before the stream starts are HTTP
//! responses with the usual JSON body `{"code": .., "message": ..}`.
//!
//! # Messages
//!
//! Every message is one JSON object with a `type`:
//!
//! ```text
//! {"type":"subscribed","tables":["todos"]}                     first, once
//! {"type":"change","table":"todos","key":[42],"op":"update",
//!  "values":{"id":42,"title":"milk","done":1,"photo":{"base64":"iVBO.."}},
//!  "origin":"8123941", "hlc":"7311562093512704001", "seq":"17"}
//! {"type":"lagged","missed":3,"message":"lagged, resync"}      last, then the stream ends
//! ```
//!
//! - `op` is `insert`, `update` or `delete`; `values` is the whole row after
//!   the change (every column), `null` for a delete.
//! - `key` is the primary key as an array of values (one per key column).
//! - Values: INTEGER as a JSON number when it is a safe JavaScript integer
//!   (|n| < 2^53), else as a decimal string; REAL as a number (±infinity as
//!   the strings `"Infinity"`/`"-Infinity"`); TEXT as a string; BLOB as
//!   `{"base64": "<standard base64>"}`; NULL as `null`.
//! - `origin` (the node that wrote the change), `hlc` (its hybrid logical
//!   clock stamp) and `seq` (its position in that node's log) are u64s sent
//!   as strings, since JSON numbers lose precision above 2^53.
//! - Changes arrive in commit order, a transaction's changes together.
//!
//! Over server-sent events each message is an event named after its type:
//!
//! ```text
//! event: subscribed
//! data: {"type":"subscribed","tables":["todos"]}
//!
//! event: change
//! data: {"type":"change","table":"todos",...}
//!
//! : ping
//! ```
//!
//! The `: ping` comment is a heartbeat sent after 15 s without traffic, so
//! proxies keep the connection open. Over WebSocket each message is one text
//! frame and the heartbeat is a ping frame; messages the client sends are
//! ignored (except ping and close).
//!
//! # Slow subscribers
//!
//! The feed never queues without bound. All subscribers share one ring of
//! the last `feed.buffer` committed transactions; a subscriber is only a
//! cursor into it, and it advances only as fast as the client reads (the
//! response is written as the socket accepts it). A client that falls more
//! than `feed.buffer` transactions behind gets `lagged` (with `missed`, the
//! number of transactions it skipped) and the stream ends (WebSocket: close
//! code 1013, "try again later"). The client then re-reads what it shows and
//! subscribes again. A browser `EventSource` reconnects by itself: handle the
//! `lagged` event by re-reading.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, Session};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, Sleep};

use super::AppState;
use crate::auth::Access;
use crate::crdt::value::{parse_key, Value};
use crate::db::events::ChangeEvent;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Quiet time after which a heartbeat is sent.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// Largest integer magnitude sent as a JSON number (JavaScript's
/// `Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Whether `access` may see the changes of `table`: with a per-table
/// claim (`t`), only the tables it lists (read or read-write); without,
/// every table. A subscription naming any other table is refused (403).
pub fn may_read(access: &Access, table: &str) -> bool {
    access.may_read(table)
}

/// `GET /v1/feed`: authenticates, validates the subscription, reserves a
/// subscriber slot, then streams server-sent events, or upgrades to a
/// WebSocket when the request asks for one.
pub async fn subscribe(
    app: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let query = web::Query::<FeedQuery>::from_query(req.query_string())
        .map_err(|e| {
            ApiError::bad_request(
                "FEED_QUERY_INVALID",
                format!(
                    "Invalid feed query: {e} (expected tables=a,b and optionally key=.. or id=..)"
                ),
            )
        })?
        .into_inner();
    let access = authenticate(&app, &req, query.access_token.as_deref())?;
    let filter = Filter::from_query(&query, app.config.feed.max_tables)?;
    if let Some(table) = filter.tables.iter().find(|t| !may_read(&access, t)) {
        return Err(ApiError::forbidden(format!("This token may not read table {table:?}")).into());
    }
    let slot = Slot::acquire(&app)?;
    // Subscribe before answering: every change committed after the client
    // sees `subscribed` is delivered.
    let feed = Feed {
        filter,
        rx: app.db.events().subscribe(),
        closing: app.db.events().closing(),
        metrics: Arc::clone(&app.metrics),
        _slot: slot,
    };
    if wants_websocket(&req) {
        let (response, session, stream) = actix_ws::handle(&req, body)?;
        // Clients send nothing but control frames; keep their frames small.
        let stream = stream.max_frame_size(4096);
        actix_web::rt::spawn(serve_ws(feed, session, stream));
        return Ok(response);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx would otherwise buffer the stream.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(sse_stream(feed)))
}

/// The query string of `GET /v1/feed`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    pub tables: Option<String>,
    pub key: Option<String>,
    pub id: Option<String>,
    pub access_token: Option<String>,
}

fn authenticate(
    app: &AppState,
    req: &HttpRequest,
    token: Option<&str>,
) -> Result<Access, ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let result = match (header, token) {
        (None, Some(token)) => app.auth.authenticate_token(Some(token)),
        (header, _) => app.auth.authenticate_header(header),
    };
    result.inspect_err(|_| {
        app.metrics
            .rejected_total
            .with_label_values(&["auth"])
            .inc();
    })
}

fn wants_websocket(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Which changes a subscription receives.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Distinct table names, in the order given.
    pub tables: Vec<String>,
    pub row: Option<RowFilter>,
}

/// One row of each named table.
#[derive(Debug, Clone, PartialEq)]
pub enum RowFilter {
    /// `key=`: the key's values, compared exactly.
    Key(Vec<Value>),
    /// `id=`: a single-column key equal to this text, or to this integer.
    Id { text: String, integer: Option<i64> },
}

impl Filter {
    /// Validates a query: table names (lexically), their count, the row filter.
    pub fn from_query(query: &FeedQuery, max_tables: usize) -> Result<Filter, ApiError> {
        let raw = query.tables.as_deref().ok_or_else(|| {
            ApiError::bad_request(
                "FEED_TABLES_MISSING",
                "Name the tables to follow: /v1/feed?tables=a,b",
            )
        })?;
        let mut tables: Vec<String> = Vec::new();
        for name in raw.split(',') {
            check_table_name(name)?;
            if !tables.iter().any(|t| t.eq_ignore_ascii_case(name)) {
                tables.push(name.to_string());
            }
        }
        if tables.len() > max_tables {
            return Err(ApiError::bad_request(
                "FEED_TOO_MANY_TABLES",
                format!(
                    "A subscription names at most {max_tables} tables (feed.max_tables); this one names {}",
                    tables.len()
                ),
            ));
        }
        let row = match (&query.key, &query.id) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "FEED_KEY_INVALID",
                    "Give either key= (SQL literals) or id= (one plain value), not both",
                ))
            }
            (Some(key), None) => Some(RowFilter::Key(parse_key(key).map_err(|e| {
                ApiError::bad_request(
                    "FEED_KEY_INVALID",
                    format!(
                        "key= must be the row's primary key as SQL literals joined by commas \
                         (1, 'abc', X'00FF', 1.5): {e}"
                    ),
                )
            })?)),
            (None, Some(id)) => Some(RowFilter::Id {
                text: id.clone(),
                integer: id.parse().ok(),
            }),
            (None, None) => None,
        };
        Ok(Filter { tables, row })
    }

    /// Whether `event` belongs to this subscription.
    pub fn matches(&self, event: &ChangeEvent) -> bool {
        if !self
            .tables
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&event.table))
        {
            return false;
        }
        let Some(row) = &self.row else {
            return true;
        };
        let Ok(key) = parse_key(&event.key) else {
            return false;
        };
        match row {
            RowFilter::Key(wanted) => key == *wanted,
            RowFilter::Id { text, integer } => match key.as_slice() {
                [Value::Integer(i)] => Some(*i) == *integer,
                [Value::Text(t)] => t == text,
                _ => false,
            },
        }
    }

    fn subscribed_json(&self) -> Json {
        let mut msg = json!({"type": "subscribed", "tables": self.tables});
        match &self.row {
            Some(RowFilter::Key(values)) => {
                msg["key"] = values.iter().map(value_json).collect();
            }
            Some(RowFilter::Id { text, .. }) => msg["id"] = json!(text),
            None => {}
        }
        msg
    }
}

fn check_table_name(name: &str) -> Result<(), ApiError> {
    let invalid = |why: String| ApiError::bad_request("FEED_TABLE_INVALID", why);
    if name.is_empty() {
        return Err(invalid(
            "Empty table name in tables= (names are separated by single commas)".into(),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(format!(
            "Table name {name:?} contains control characters"
        )));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("_outpost_") || lower.starts_with("sqlite_") {
        return Err(invalid(format!(
            "Table {name:?} is internal (_outpost_* and sqlite_* tables have no feed)"
        )));
    }
    Ok(())
}

/// A value as JSON, exactly where JSON allows (see the module doc).
pub fn value_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Integer(i) if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(i) => json!(i),
        Value::Integer(i) => json!(i.to_string()),
        Value::Real(r) => match serde_json::Number::from_f64(*r) {
            Some(n) => Json::Number(n),
            // SQLite has no NaN (it stores NULL), only the infinities.
            None if *r > 0.0 => json!("Infinity"),
            None => json!("-Infinity"),
        },
        Value::Text(t) => json!(t),
        Value::Blob(b) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(b)}),
    }
}

/// One change as the feed sends it (see the module doc).
pub fn change_json(event: &ChangeEvent) -> Json {
    let key = match parse_key(&event.key) {
        Ok(values) => values.iter().map(value_json).collect(),
        // Not expected: the log's keys come from quote(). Send it verbatim.
        Err(_) => json!(event.key),
    };
    let values = match &event.values {
        Some(columns) => Json::Object(
            columns
                .iter()
                .map(|(name, value)| (name.clone(), value_json(value)))
                .collect::<Map<_, _>>(),
        ),
        None => Json::Null,
    };
    json!({
        "type": "change",
        "table": event.table,
        "key": key,
        "op": event.op.as_str(),
        "values": values,
        "origin": event.origin.to_string(),
        "hlc": event.hlc.to_string(),
        "seq": event.seq.to_string(),
    })
}

fn lagged_json(missed: u64) -> Json {
    json!({"type": "lagged", "missed": missed, "message": "lagged, resync"})
}

/// One of the `feed.max_subscribers` places, held for the subscription's
/// life. The count is the `outpost_feed_subscribers` gauge itself.
struct Slot(prometheus::IntGauge);

impl Slot {
    fn acquire(app: &AppState) -> Result<Slot, ApiError> {
        let gauge = app.metrics.feed_subscribers.clone();
        let max = app.config.feed.max_subscribers;
        // Increment first, then check: two racing subscribers at the bound
        // may both be refused, but the bound is never exceeded.
        gauge.inc();
        if gauge.get() > max as i64 {
            gauge.dec();
            app.metrics
                .rejected_total
                .with_label_values(&["feed_subscribers"])
                .inc();
            return Err(ApiError::overloaded(
                "FEED_SUBSCRIBERS_EXHAUSTED",
                format!("Too many feed subscribers (feed.max_subscribers = {max}); retry later"),
            ));
        }
        Ok(Slot(gauge))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A subscription: a cursor into the shared ring of committed transactions.
struct Feed {
    filter: Filter,
    rx: broadcast::Receiver<Arc<[ChangeEvent]>>,
    /// Turns true when the server shuts down: every feed ends then.
    closing: tokio::sync::watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    _slot: Slot,
}

enum Next {
    /// The matching changes of one transaction (never empty).
    Changes(Vec<Json>),
    /// The subscriber fell behind by this many transactions.
    Lagged(u64),
    /// The server is shutting down.
    Closed,
}

impl Feed {
    /// The next transaction with a matching change. Cancel-safe: a
    /// transaction is taken from the ring and returned in the same poll.
    async fn next(&mut self) -> Next {
        loop {
            let received = tokio::select! {
                received = self.rx.recv() => received,
                _ = self.closing.wait_for(|closing| *closing) => return Next::Closed,
            };
            match received {
                Ok(committed) => {
                    let changes: Vec<Json> = committed
                        .iter()
                        .filter(|e| self.filter.matches(e))
                        .map(change_json)
                        .collect();
                    if !changes.is_empty() {
                        self.metrics.feed_events_total.inc_by(changes.len() as u64);
                        return Next::Changes(changes);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    self.metrics.feed_lagged_total.inc();
                    return Next::Lagged(missed);
                }
                Err(RecvError::Closed) => return Next::Closed,
            }
        }
    }
}

enum Step {
    Feed(Next),
    Heartbeat,
}

/// Waits for the next transaction or, after [`HEARTBEAT`] of quiet, a
/// heartbeat.
async fn step(feed: &mut Feed, heartbeat: &mut Pin<Box<Sleep>>) -> Step {
    let step = tokio::select! {
        next = feed.next() => Step::Feed(next),
        _ = heartbeat.as_mut() => Step::Heartbeat,
    };
    heartbeat.as_mut().reset(Instant::now() + HEARTBEAT);
    step
}

fn sse_event(name: &str, data: &Json, out: &mut Vec<u8>) {
    // serde_json escapes newlines inside strings: one `data:` line suffices.
    out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
}

/// The SSE body. It pulls from the ring only when actix asks for the next
/// chunk, i.e. when the previous one was written to the socket: a client
/// that does not read stops the pulling, the ring moves on, and its next
/// read yields `lagged`. Nothing is queued per subscriber.
fn sse_stream(
    feed: Feed,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    struct State {
        feed: Feed,
        heartbeat: Pin<Box<Sleep>>,
        started: bool,
        done: bool,
    }
    let state = State {
        feed,
        heartbeat: Box::pin(tokio::time::sleep(HEARTBEAT)),
        started: false,
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let mut out = Vec::new();
        if !s.started {
            s.started = true;
            sse_event("subscribed", &s.feed.filter.subscribed_json(), &mut out);
            return Some((Ok(Bytes::from(out)), s));
        }
        match step(&mut s.feed, &mut s.heartbeat).await {
            Step::Feed(Next::Changes(changes)) => {
                for change in &changes {
                    sse_event("change", change, &mut out);
                }
            }
            Step::Feed(Next::Lagged(missed)) => {
                s.done = true;
                sse_event("lagged", &lagged_json(missed), &mut out);
            }
            Step::Feed(Next::Closed) => return None,
            Step::Heartbeat => out.extend_from_slice(b": ping\n\n"),
        }
        Some((Ok(Bytes::from(out)), s))
    })
}

/// The WebSocket side: one text message per change. Sending waits while the
/// connection's small outgoing queue (32 frames) is full, so a client that
/// does not read stops the pulling here too and ends up `lagged`.
async fn serve_ws(mut feed: Feed, mut session: Session, mut stream: actix_ws::MessageStream) {
    let mut heartbeat = Box::pin(tokio::time::sleep(HEARTBEAT));
    let subscribed = feed.filter.subscribed_json().to_string();
    let close = if session.text(subscribed).await.is_err() {
        None
    } else {
        loop {
            let step = tokio::select! {
                step = step(&mut feed, &mut heartbeat) => step,
                msg = stream.recv() => match msg {
                    Some(Ok(Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            break None;
                        }
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(e)) => {
                        break Some(CloseReason {
                            code: CloseCode::Protocol,
                            description: Some(e.to_string().chars().take(120).collect()),
                        })
                    }
                    // The feed has no client messages: ignore them.
                    Some(Ok(_)) => continue,
                },
            };
            match step {
                Step::Feed(Next::Changes(changes)) => {
                    let mut sent = true;
                    for change in changes {
                        if session.text(change.to_string()).await.is_err() {
                            sent = false;
                            break;
                        }
                    }
                    if !sent {
                        break None;
                    }
                }
                Step::Feed(Next::Lagged(missed)) => {
                    let _ = session.text(lagged_json(missed).to_string()).await;
                    break Some(CloseReason {
                        code: CloseCode::Again,
                        description: Some("lagged, resync".into()),
                    });
                }
                Step::Feed(Next::Closed) => {
                    break Some(CloseReason {
                        code: CloseCode::Away,
                        description: Some("server shutting down".into()),
                    })
                }
                Step::Heartbeat => {
                    if session.ping(b"").await.is_err() {
                        break None;
                    }
                }
            }
        }
    };
    let _ = session.close(close).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::events::Op;

    fn event(table: &str, key: &str) -> ChangeEvent {
        ChangeEvent {
            origin: u64::MAX,
            seq: 1,
            hlc: 2,
            table: table.into(),
            key: key.into(),
            op: Op::Insert,
            values: Some(vec![
                ("id".into(), Value::Integer(1)),
                ("big".into(), Value::Integer(1 << 53)),
                ("r".into(), Value::Real(1.5)),
                ("inf".into(), Value::Real(f64::NEG_INFINITY)),
                ("b".into(), Value::Blob(vec![0, 255])),
                ("n".into(), Value::Null),
                ("t".into(), Value::Text("x".into())),
            ]),
        }
    }

    fn query(tables: &str, key: Option<&str>, id: Option<&str>) -> FeedQuery {
        FeedQuery {
            tables: Some(tables.into()),
            key: key.map(Into::into),
            id: id.map(Into::into),
            access_token: None,
        }
    }

    #[test]
    fn change_json_shape() {
        let j = change_json(&event("t", "1"));
        assert_eq!(j["type"], "change");
        assert_eq!(j["key"], json!([1]));
        assert_eq!(j["op"], "insert");
        assert_eq!(j["origin"], u64::MAX.to_string());
        assert_eq!(j["values"]["id"], 1);
        assert_eq!(j["values"]["big"], "9007199254740992");
        assert_eq!(j["values"]["r"], 1.5);
        assert_eq!(j["values"]["inf"], "-Infinity");
        assert_eq!(j["values"]["b"], json!({"base64": "AP8="}));
        assert_eq!(j["values"]["n"], Json::Null);
        assert_eq!(j["values"]["t"], "x");
    }

    #[test]
    fn filters() {
        let f = Filter::from_query(&query("T,u,t", None, None), 2).unwrap();
        assert_eq!(f.tables, ["T", "u"]);
        assert!(f.matches(&event("t", "1")));
        assert!(!f.matches(&event("v", "1")));

        let f = Filter::from_query(&query("t", Some("'a''b',7"), None), 2).unwrap();
        assert!(f.matches(&event("t", "'a''b',7")));
        assert!(!f.matches(&event("t", "'a''b',8")));

        let f = Filter::from_query(&query("t", None, Some("42")), 2).unwrap();
        assert!(f.matches(&event("t", "42")));
        assert!(f.matches(&event("t", "'42'")));
        assert!(!f.matches(&event("t", "42,1")));
        let f = Filter::from_query(&query("t", None, Some("ab c")), 2).unwrap();
        assert!(f.matches(&event("t", "'ab c'")));
    }

    #[test]
    fn refused_queries() {
        let code = |q: FeedQuery| Filter::from_query(&q, 2).unwrap_err().code;
        assert_eq!(code(query("a,b,c", None, None)), "FEED_TOO_MANY_TABLES");
        assert_eq!(code(query("a,,b", None, None)), "FEED_TABLE_INVALID");
        assert_eq!(
            code(query("_Outpost_log", None, None)),
            "FEED_TABLE_INVALID"
        );
        assert_eq!(
            code(query("sqlite_schema", None, None)),
            "FEED_TABLE_INVALID"
        );
        assert_eq!(code(query("a", Some("1"), Some("1"))), "FEED_KEY_INVALID");
        assert_eq!(code(query("a", Some("abc"), None)), "FEED_KEY_INVALID");
        let none = FeedQuery {
            tables: None,
            key: None,
            id: None,
            access_token: None,
        };
        assert_eq!(code(none), "FEED_TABLES_MISSING");
    }
}
