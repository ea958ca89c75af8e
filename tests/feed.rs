//! The live change feed (`GET /v1/feed`) end to end against a real outpost
//! process: server-sent events over raw HTTP/1.1 (chunked decoding by hand),
//! WebSocket with tungstenite, row filters, slow subscribers, limits, auth.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{exec, Options, Server};
use serde_json::{json, Value as Json};

const WAIT: Duration = Duration::from_secs(20);

/// A server-sent-events subscription read straight off the socket.
struct Sse {
    reader: BufReader<TcpStream>,
    /// Decoded body text not yet split into events.
    pending: String,
    ended: bool,
}

/// An HTTP error answer: status and JSON body.
#[derive(Debug)]
struct Refused {
    status: u16,
    body: Json,
}

fn host(server: &Server) -> String {
    server.api.trim_start_matches("http://").to_string()
}

/// `GET /v1/feed?<query>`; Ok once the response head says 200.
fn sse(server: &Server, query: &str, token: Option<&str>) -> Result<Sse, Refused> {
    let host = host(server);
    let mut stream = TcpStream::connect(&host).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET /v1/feed?{query} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{auth}\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    if status != 200 {
        let len: usize = header("content-length").unwrap().parse().unwrap();
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let body = serde_json::from_slice(&body).unwrap_or(Json::Null);
        return Err(Refused { status, body });
    }
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(header("transfer-encoding").as_deref(), Some("chunked"));
    Ok(Sse {
        reader,
        pending: String::new(),
        ended: false,
    })
}

fn sse_ok(server: &Server, query: &str, token: Option<&str>) -> Sse {
    let mut sub = sse(server, query, token).expect("subscription refused");
    let (name, data) = sub.next_event().expect("subscribed event");
    assert_eq!(name, "subscribed");
    assert_eq!(data["type"], "subscribed");
    sub
}

impl Sse {
    /// Reads one chunk of the chunked body; false at its end.
    fn read_chunk(&mut self) -> bool {
        let mut size = String::new();
        self.reader.read_line(&mut size).expect("read chunk size");
        if size.is_empty() {
            return false; // connection closed without the last chunk
        }
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).expect("read chunk");
        if size == 0 {
            return false;
        }
        self.pending
            .push_str(std::str::from_utf8(&data[..size]).expect("UTF-8"));
        true
    }

    /// The next event (name, JSON data), skipping heartbeat comments; None
    /// when the stream ended. Panics if nothing arrives within `WAIT`.
    fn next_event(&mut self) -> Option<(String, Json)> {
        loop {
            while let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut name = "message".to_string();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() {
                    continue; // a comment (heartbeat)
                }
                return Some((name, serde_json::from_str(&data).expect("JSON data")));
            }
            if self.ended || !self.read_chunk() {
                self.ended = true;
                assert!(self.pending.is_empty(), "partial event: {:?}", self.pending);
                return None;
            }
        }
    }

    fn next_change(&mut self) -> Json {
        let (name, data) = self.next_event().expect("an event, not the end");
        assert_eq!(name, "change", "{data}");
        assert_eq!(data["type"], "change");
        data
    }
}

fn assert_change(change: &Json, table: &str, op: &str, key: Json, values: Json) {
    assert_eq!(change["table"], table, "{change}");
    assert_eq!(change["op"], op, "{change}");
    assert_eq!(change["key"], key, "{change}");
    assert_eq!(change["values"], values, "{change}");
    for field in ["origin", "hlc", "seq"] {
        let s = change[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} string: {change}"));
        s.parse::<u64>().unwrap();
    }
}

fn setup(server: &Server, token: Option<&str>) {
    exec(
        server,
        token,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
    );
    exec(
        server,
        token,
        "CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT)",
    );
    exec(
        server,
        token,
        "CREATE TABLE s (name TEXT PRIMARY KEY, n INTEGER)",
    );
}

fn metric(server: &Server, name: &str) -> f64 {
    let (_, text) = common::get(&format!("{}/metrics", server.admin));
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

#[test]
fn sse_insert_update_delete_in_order_other_tables_filtered() {
    let server = Server::start();
    setup(&server, None);
    let mut sub = sse_ok(&server, "tables=t", None);

    exec(&server, None, "INSERT INTO u VALUES (1, 'other table')");
    exec(&server, None, "INSERT INTO t VALUES (1, 'x')");
    exec(&server, None, "UPDATE t SET v = 'y' WHERE id = 1");
    exec(&server, None, "DELETE FROM t WHERE id = 1");

    let insert = sub.next_change();
    assert_change(
        &insert,
        "t",
        "insert",
        json!([1]),
        json!({"id": 1, "v": "x"}),
    );
    let update = sub.next_change();
    assert_change(
        &update,
        "t",
        "update",
        json!([1]),
        json!({"id": 1, "v": "y"}),
    );
    let delete = sub.next_change();
    assert_change(&delete, "t", "delete", json!([1]), Json::Null);
    // One node, one origin: seq grows with every committed change.
    let seq = |c: &Json| c["seq"].as_str().unwrap().parse::<u64>().unwrap();
    assert!(seq(&insert) < seq(&update) && seq(&update) < seq(&delete));
    assert_eq!(insert["origin"], delete["origin"]);

    // Several tables in one subscription; a transaction's changes together.
    let mut both = sse_ok(&server, "tables=t,u", None);
    exec(&server, None, "INSERT INTO t VALUES (2, 'a'), (3, 'b')");
    exec(&server, None, "INSERT INTO u VALUES (2, NULL)");
    assert_change(
        &both.next_change(),
        "t",
        "insert",
        json!([2]),
        json!({"id": 2, "v": "a"}),
    );
    assert_change(
        &both.next_change(),
        "t",
        "insert",
        json!([3]),
        json!({"id": 3, "v": "b"}),
    );
    assert_change(
        &both.next_change(),
        "u",
        "insert",
        json!([2]),
        json!({"id": 2, "v": null}),
    );
    // The first subscriber saw the same t changes and nothing of u.
    assert_eq!(sub.next_change()["key"], json!([2]));
    assert_eq!(sub.next_change()["key"], json!([3]));

    assert!(metric(&server, "outpost_feed_events_total") >= 8.0);
    assert_eq!(metric(&server, "outpost_feed_subscribers"), 2.0);
}

#[test]
fn sse_values_of_every_type() {
    let server = Server::start();
    exec(
        &server,
        None,
        "CREATE TABLE k (a TEXT, b INTEGER, i INTEGER, r REAL, x BLOB, n, PRIMARY KEY (a, b))",
    );
    let mut sub = sse_ok(&server, "tables=k", None);
    exec(
        &server,
        None,
        "INSERT INTO k VALUES ('it''s', 7, 9007199254740993, 1.5, X'00FF', NULL)",
    );
    exec(
        &server,
        None,
        "INSERT INTO k VALUES ('big', 9007199254740991, -9007199254740991, -1e999, X'', 2.0)",
    );
    let c = sub.next_change();
    assert_change(
        &c,
        "k",
        "insert",
        json!(["it's", 7]),
        json!({"a": "it's", "b": 7, "i": "9007199254740993", "r": 1.5,
               "x": {"base64": "AP8="}, "n": null}),
    );
    let c = sub.next_change();
    assert_change(
        &c,
        "k",
        "insert",
        json!(["big", 9007199254740991i64]),
        json!({"a": "big", "b": 9007199254740991i64, "i": -9007199254740991i64,
               "r": "-Infinity", "x": {"base64": ""}, "n": 2.0}),
    );
}

#[test]
fn sse_row_filter_by_key_and_id() {
    let server = Server::start();
    setup(&server, None);
    let mut by_key = sse_ok(&server, "tables=t&key=2", None);
    let mut by_id = sse_ok(&server, "tables=t&id=2", None);
    // key= takes SQL literals: 'a b' URL-encoded.
    let mut text_key = sse_ok(&server, "tables=s&key=%27a%20b%27", None);
    let mut text_id = sse_ok(&server, "tables=s&id=a%20b", None);

    for id in 1..=3 {
        exec(
            &server,
            None,
            &format!("INSERT INTO t VALUES ({id}, 'v{id}')"),
        );
    }
    exec(&server, None, "UPDATE t SET v = 'w' WHERE id IN (1, 3)");
    exec(&server, None, "UPDATE t SET v = 'w2' WHERE id = 2");
    exec(&server, None, "INSERT INTO s VALUES ('a', 1), ('a b', 2)");
    exec(&server, None, "DELETE FROM s WHERE name = 'a b'");

    for sub in [&mut by_key, &mut by_id] {
        assert_change(
            &sub.next_change(),
            "t",
            "insert",
            json!([2]),
            json!({"id": 2, "v": "v2"}),
        );
        assert_change(
            &sub.next_change(),
            "t",
            "update",
            json!([2]),
            json!({"id": 2, "v": "w2"}),
        );
    }
    for sub in [&mut text_key, &mut text_id] {
        assert_change(
            &sub.next_change(),
            "s",
            "insert",
            json!(["a b"]),
            json!({"name": "a b", "n": 2}),
        );
        assert_change(
            &sub.next_change(),
            "s",
            "delete",
            json!(["a b"]),
            Json::Null,
        );
    }
    // Nothing else was delivered: the next change of row 2 is the next event.
    exec(&server, None, "INSERT INTO t VALUES (4, 'x')");
    exec(&server, None, "DELETE FROM t WHERE id = 2");
    assert_change(&by_key.next_change(), "t", "delete", json!([2]), Json::Null);
    assert_change(&by_id.next_change(), "t", "delete", json!([2]), Json::Null);
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn ws_connect(server: &Server, query: &str) -> Ws {
    let url = format!("{}/v1/feed?{query}", server.ws_url());
    let (mut ws, resp) = tungstenite::connect(url).expect("websocket connect");
    assert_eq!(resp.status(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(WAIT)).unwrap();
    }
    let hello = ws_next(&mut ws).expect("subscribed");
    assert_eq!(hello["type"], "subscribed");
    ws
}

/// The next JSON text message; None once the server closed.
fn ws_next(ws: &mut Ws) -> Option<Json> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(tungstenite::Message::Close(_)) => return None,
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return None
            }
            Err(e) => panic!("websocket read: {e}"),
        }
    }
}

#[test]
fn websocket_feed() {
    let server = Server::start();
    setup(&server, None);
    let mut ws = ws_connect(&server, "tables=t");
    let mut row = ws_connect(&server, "tables=t&id=5");

    exec(&server, None, "INSERT INTO u VALUES (1, 'other table')");
    exec(&server, None, "INSERT INTO t VALUES (1, 'x')");
    exec(&server, None, "INSERT INTO t VALUES (5, 'five')");
    exec(&server, None, "UPDATE t SET v = 'y' WHERE id = 1");
    exec(&server, None, "DELETE FROM t WHERE id = 1");

    let next = |ws: &mut Ws| {
        let m = ws_next(ws).expect("a change");
        assert_eq!(m["type"], "change", "{m}");
        m
    };
    assert_change(
        &next(&mut ws),
        "t",
        "insert",
        json!([1]),
        json!({"id": 1, "v": "x"}),
    );
    assert_change(
        &next(&mut ws),
        "t",
        "insert",
        json!([5]),
        json!({"id": 5, "v": "five"}),
    );
    assert_change(
        &next(&mut ws),
        "t",
        "update",
        json!([1]),
        json!({"id": 1, "v": "y"}),
    );
    assert_change(&next(&mut ws), "t", "delete", json!([1]), Json::Null);
    assert_change(
        &next(&mut row),
        "t",
        "insert",
        json!([5]),
        json!({"id": 5, "v": "five"}),
    );

    // Pings are answered; the client closing frees the subscriber.
    ws.send(tungstenite::Message::Ping(b"hi".to_vec())).unwrap();
    match ws.read().unwrap() {
        tungstenite::Message::Pong(p) => assert_eq!(&p[..], b"hi"),
        other => panic!("unexpected {other:?}"),
    }
    ws.close(None).unwrap();
    while ws_next(&mut ws).is_some() {}
    common::eventually(WAIT, || metric(&server, "outpost_feed_subscribers") == 1.0);
}

/// Transactions big enough, and many enough, that a client which stops
/// reading fills every buffer between the ring and itself: the socket
/// buffers (the server's send buffer autotunes up to 4 MiB on Linux; the
/// client's receive buffer does not grow while it does not read) and, over
/// WebSocket, actix-ws's queue of 32 frames. 250 rows of 50 KB (12.5 MB)
/// leave a wide margin over the ~120 transactions those hold.
fn write_big_transactions(server: &Server) -> usize {
    const N: usize = 250;
    exec(
        server,
        None,
        "CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT)",
    );
    for i in 0..N {
        exec(
            server,
            None,
            &format!("INSERT INTO big VALUES ({i}, hex(zeroblob(25000)))"),
        );
    }
    N
}

#[test]
fn sse_slow_subscriber_gets_lagged_then_the_stream_ends() {
    let server = Server::start_with(Options {
        env: vec![("OUTPOST_FEED_BUFFER", "4".into())],
        ..Default::default()
    });
    let mut sub = sse_ok(&server, "tables=big", None);
    let written = write_big_transactions(&server);

    let mut changes = 0;
    let lagged = loop {
        let (name, data) = sub.next_event().expect("lagged before the end");
        match name.as_str() {
            "change" => changes += 1,
            "lagged" => break data,
            other => panic!("unexpected event {other}: {data}"),
        }
    };
    assert_eq!(lagged["type"], "lagged");
    assert_eq!(lagged["message"], "lagged, resync");
    let missed = lagged["missed"].as_u64().unwrap();
    assert!(
        missed > 0 && changes + missed as usize <= written,
        "{changes} {missed}"
    );
    assert!(sub.next_event().is_none(), "the stream ends after lagged");
    assert_eq!(metric(&server, "outpost_feed_lagged_total"), 1.0);
    common::eventually(WAIT, || metric(&server, "outpost_feed_subscribers") == 0.0);
}

#[test]
fn websocket_slow_subscriber_gets_lagged_then_close() {
    let server = Server::start_with(Options {
        env: vec![("OUTPOST_FEED_BUFFER", "4".into())],
        ..Default::default()
    });
    let mut ws = ws_connect(&server, "tables=big");
    write_big_transactions(&server);
    let lagged = loop {
        let m = ws_next(&mut ws).expect("lagged before the close");
        if m["type"] != "change" {
            break m;
        }
    };
    assert_eq!(lagged["type"], "lagged", "{lagged}");
    assert!(lagged["missed"].as_u64().unwrap() > 0);
    // Then the server closes (1013, try again later).
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1013),
        Ok(other) => panic!("expected a close frame with a code, got {other:?}"),
        Err(e) => panic!("expected a close frame: {e}"),
    }
}

#[test]
fn subscriber_limit() {
    let server = Server::start_with(Options {
        env: vec![("OUTPOST_FEED_MAX_SUBSCRIBERS", "1".into())],
        ..Default::default()
    });
    setup(&server, None);
    let first = sse_ok(&server, "tables=t", None);
    let refused = sse(&server, "tables=t", None)
        .err()
        .expect("second refused");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["code"], "FEED_SUBSCRIBERS_EXHAUSTED");
    // WebSocket subscriptions count against the same limit.
    let url = format!("{}/v1/feed?tables=t", server.ws_url());
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("expected 429, got {:?}", other.map(|(_, r)| r.status())),
    }
    // A closed subscription frees its place once the server notices, which
    // is when a write to it fails: at the second change (or heartbeat)
    // after the close, since the first one only draws the peer's reset.
    drop(first);
    let started = Instant::now();
    let mut again = (1..)
        .find_map(|i| {
            exec(&server, None, &format!("INSERT INTO t VALUES ({i}, 'x')"));
            match sse(&server, "tables=t", None) {
                Ok(sub) => Some(sub),
                Err(r) => {
                    assert_eq!(r.status, 429);
                    assert!(started.elapsed() < WAIT, "place not freed");
                    None
                }
            }
        })
        .unwrap();
    assert_eq!(again.next_event().unwrap().0, "subscribed");
}

#[test]
fn query_validation_and_max_tables_at_the_bound() {
    let server = Server::start_with(Options {
        env: vec![("OUTPOST_FEED_MAX_TABLES", "3".into())],
        ..Default::default()
    });
    // Exactly max_tables is fine (tables that do not exist are accepted);
    // duplicates count once.
    let mut sub = sse(&server, "tables=a,b,c,A", None).expect("max_tables is allowed");
    let (name, data) = sub.next_event().unwrap();
    assert_eq!(name, "subscribed");
    assert_eq!(
        data,
        json!({"type": "subscribed", "tables": ["a", "b", "c"]})
    );
    let refused = |query: &str| sse(&server, query, None).err().expect("refused");
    let r = refused("tables=a,b,c,d");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("FEED_TOO_MANY_TABLES"))
    );
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .contains("feed.max_tables"));
    let r = refused("tables=t,_outpost_log");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("FEED_TABLE_INVALID"))
    );
    let r = refused("tables=t,,u");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("FEED_TABLE_INVALID"))
    );
    let r = refused("key=1");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("FEED_TABLES_MISSING"))
    );
    let r = refused("table=t");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("FEED_QUERY_INVALID"))
    );
    let r = refused("tables=t&key=abc");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("FEED_KEY_INVALID"))
    );
    let r = refused("tables=t&key=1&id=1");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("FEED_KEY_INVALID"))
    );
}

#[test]
fn auth_required_and_read_only_tokens_may_subscribe() {
    let server = Server::start_with(Options {
        init: true,
        ..Default::default()
    });
    let rw = common::token(server.data_dir(), &[]);
    let ro = common::token(server.data_dir(), &["--read-only"]);
    setup(&server, Some(&rw));

    let r = sse(&server, "tables=t", None)
        .err()
        .expect("no token refused");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (401, Some("AUTH_FAILED"))
    );
    let r = sse(&server, "tables=t", Some("not.a.token"))
        .err()
        .expect("bad token");
    assert_eq!(r.status, 401);
    let r = sse(&server, "tables=t&access_token=not.a.token", None)
        .err()
        .expect("bad token in the query");
    assert_eq!(r.status, 401);
    let url = format!("{}/v1/feed?tables=t", server.ws_url());
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }

    let mut by_header = sse_ok(&server, "tables=t", Some(&ro));
    let mut by_query = sse_ok(&server, &format!("tables=t&access_token={ro}"), None);
    let mut ws = ws_connect(&server, &format!("tables=t&access_token={ro}"));
    exec(&server, Some(&rw), "INSERT INTO t VALUES (1, 'x')");
    let values = json!({"id": 1, "v": "x"});
    assert_change(
        &by_header.next_change(),
        "t",
        "insert",
        json!([1]),
        values.clone(),
    );
    assert_change(
        &by_query.next_change(),
        "t",
        "insert",
        json!([1]),
        values.clone(),
    );
    assert_change(
        &ws_next(&mut ws).unwrap(),
        "t",
        "insert",
        json!([1]),
        values,
    );
}

#[test]
fn replicated_changes_reach_the_feed() {
    // Two nodes over mutual TLS: n2 lists n1 as its peer.
    let ca = tempfile::tempdir().unwrap();
    let node = |peers| common::cluster_node(ca.path(), peers);
    let n1 = node(vec![]);
    let n2 = node(vec![n1.sync.clone().expect("n1 sync listener")]);
    for n in [&n1, &n2] {
        exec(
            n,
            n.token.as_deref(),
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
        );
    }
    let mut local = sse_ok(&n1, "tables=t", n1.token.as_deref());
    let mut remote = sse_ok(&n2, "tables=t", n2.token.as_deref());

    exec(
        &n1,
        n1.token.as_deref(),
        "INSERT INTO t VALUES (1, 'from n1')",
    );
    exec(
        &n2,
        n2.token.as_deref(),
        "INSERT INTO t VALUES (2, 'from n2')",
    );
    let values = |id: i64, v: &str| json!({"id": id, "v": v});
    // Each node's feed has its own change and, once replicated, the other's,
    // with the writer's origin, seq and hlc.
    let mut on_n1: Vec<Json> = vec![local.next_change(), local.next_change()];
    let mut on_n2: Vec<Json> = vec![remote.next_change(), remote.next_change()];
    on_n1.sort_by_key(|c| c["key"][0].as_i64());
    on_n2.sort_by_key(|c| c["key"][0].as_i64());
    for changes in [&on_n1, &on_n2] {
        assert_change(&changes[0], "t", "insert", json!([1]), values(1, "from n1"));
        assert_change(&changes[1], "t", "insert", json!([2]), values(2, "from n2"));
    }
    for i in 0..2 {
        for field in ["origin", "seq", "hlc"] {
            assert_eq!(on_n1[i][field], on_n2[i][field], "{field}");
        }
    }
    assert_ne!(on_n1[0]["origin"], on_n1[1]["origin"]);
}

/// SIGTERM ends live subscriptions at once instead of waiting out the
/// shutdown timeout (10 s) for them.
#[test]
fn open_subscriptions_do_not_hold_up_shutdown() {
    let mut server = Server::start();
    setup(&server, None);
    let _sse = sse_ok(&server, "tables=t", None);
    let _ws = ws_connect(&server, "tables=t");
    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?} with open subscriptions",
        started.elapsed()
    );
}
