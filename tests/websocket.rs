//! Hrana over WebSocket at the wire level (subprotocols, hello, streams,
//! stored SQL, cursors, limits).

mod common;

use common::{Options, Server};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

fn connect(server: &Server, protocol: &str) -> Ws {
    let mut req = server.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    let (ws, resp) = tungstenite::connect(req).expect("websocket connect");
    let chosen = resp.headers().get("sec-websocket-protocol").unwrap();
    assert_eq!(
        chosen.to_str().unwrap(),
        protocol.split(',').next().unwrap().trim()
    );
    ws
}

fn send(ws: &mut Ws, msg: Value) -> Value {
    ws.send(Message::text(msg.to_string())).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

fn request(ws: &mut Ws, id: i64, request: Value) -> Value {
    let reply = send(
        ws,
        json!({"type": "request", "request_id": id, "request": request}),
    );
    assert_eq!(reply["request_id"], id, "{reply}");
    reply
}

#[test]
fn streams_transactions_and_cursors() {
    let server = Server::start();
    let mut ws = connect(&server, "hrana3, hrana2");
    assert_eq!(
        send(&mut ws, json!({"type": "hello", "jwt": null}))["type"],
        "hello_ok"
    );
    assert_eq!(
        request(&mut ws, 1, json!({"type": "open_stream", "stream_id": 1}))["type"],
        "response_ok"
    );
    let r = request(
        &mut ws,
        2,
        json!({"type": "execute", "stream_id": 1, "stmt": {"sql": "CREATE TABLE t(x)", "want_rows": false}}),
    );
    assert_eq!(r["response"]["type"], "execute", "{r}");
    request(
        &mut ws,
        3,
        json!({"type": "execute", "stream_id": 1, "stmt": {"sql": "BEGIN"}}),
    );
    request(
        &mut ws,
        4,
        json!({"type": "execute", "stream_id": 1, "stmt": {"sql": "INSERT INTO t VALUES (1), (2)"}}),
    );
    let r = request(
        &mut ws,
        5,
        json!({"type": "get_autocommit", "stream_id": 1}),
    );
    assert_eq!(r["response"]["is_autocommit"], false);
    request(
        &mut ws,
        6,
        json!({"type": "execute", "stream_id": 1, "stmt": {"sql": "COMMIT"}}),
    );
    request(
        &mut ws,
        7,
        json!({"type": "store_sql", "sql_id": 9, "sql": "SELECT x FROM t ORDER BY x"}),
    );
    let r = request(
        &mut ws,
        8,
        json!({"type": "open_cursor", "stream_id": 1, "cursor_id": 1, "batch": {"steps": [{"stmt": {"sql_id": 9}}]}}),
    );
    assert_eq!(r["type"], "response_ok", "{r}");
    let r = request(
        &mut ws,
        9,
        json!({"type": "fetch_cursor", "cursor_id": 1, "max_count": 2}),
    );
    let entries = r["response"]["entries"].as_array().unwrap();
    assert_eq!(entries[0]["type"], "step_begin");
    assert_eq!(entries[1]["row"][0]["value"], "1");
    assert_eq!(r["response"]["done"], false);
    let r = request(
        &mut ws,
        10,
        json!({"type": "fetch_cursor", "cursor_id": 1, "max_count": 100}),
    );
    assert_eq!(r["response"]["done"], true);
    request(&mut ws, 11, json!({"type": "close_cursor", "cursor_id": 1}));
    let r = request(
        &mut ws,
        12,
        json!({"type": "execute", "stream_id": 7, "stmt": {"sql": "SELECT 1"}}),
    );
    assert_eq!(r["type"], "response_error");
    assert_eq!(r["error"]["code"], "STREAM_NOT_FOUND");
    let r = request(
        &mut ws,
        13,
        json!({"type": "execute", "stream_id": 1, "stmt": {"sql": "SELECT * FROM _outpost_log"}}),
    );
    assert_eq!(r["error"]["code"], "SQLITE_AUTH");
    request(&mut ws, 14, json!({"type": "close_stream", "stream_id": 1}));
}

#[test]
fn hello_checks_the_token() {
    let server = Server::start_with(Options {
        init: true,
        ..Options::default()
    });
    let mut ws = connect(&server, "hrana2");
    let r = send(&mut ws, json!({"type": "hello", "jwt": "not-a-token"}));
    assert_eq!(r["type"], "hello_error");
    let ro = common::token(server.data_dir(), &["--read-only"]);
    assert_eq!(
        send(&mut ws, json!({"type": "hello", "jwt": ro}))["type"],
        "hello_ok"
    );
    request(&mut ws, 1, json!({"type": "open_stream", "stream_id": 1}));
    let r = request(
        &mut ws,
        2,
        json!({"type": "execute", "stream_id": 1, "stmt": {"sql": "CREATE TABLE t(x)"}}),
    );
    assert_eq!(r["error"]["code"], "SQLITE_AUTH", "{r}");
}

#[test]
fn requests_before_hello_and_oversized_messages_close_the_connection() {
    let server = Server::start_with(Options {
        env: vec![("OUTPOST_LIMITS_MAX_WS_MESSAGE_BYTES", "1000".into())],
        ..Options::default()
    });
    let mut ws = connect(&server, "hrana3");
    ws.send(Message::text(json!({"type": "request", "request_id": 1, "request": {"type": "open_stream", "stream_id": 1}}).to_string()))
        .unwrap();
    assert!(matches!(ws.read(), Ok(Message::Close(_)) | Err(_)));

    let mut ws = connect(&server, "hrana3");
    assert_eq!(
        send(&mut ws, json!({"type": "hello", "jwt": null}))["type"],
        "hello_ok"
    );
    request(&mut ws, 1, json!({"type": "open_stream", "stream_id": 1}));
    let fits = format!("SELECT '{}'", "a".repeat(800));
    let r = request(
        &mut ws,
        2,
        json!({"type": "execute", "stream_id": 1, "stmt": {"sql": fits}}),
    );
    assert_eq!(r["type"], "response_ok");
    let too_big = format!("SELECT '{}'", "a".repeat(1200));
    ws.send(Message::text(json!({"type": "request", "request_id": 3, "request": {"type": "execute", "stream_id": 1, "stmt": {"sql": too_big}}}).to_string()))
        .unwrap();
    assert!(matches!(ws.read(), Ok(Message::Close(_)) | Err(_)));
    // The server is still up for others.
    let mut again = connect(&server, "hrana3");
    assert_eq!(
        send(&mut again, json!({"type": "hello", "jwt": null}))["type"],
        "hello_ok"
    );
}
