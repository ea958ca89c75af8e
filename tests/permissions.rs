//! Per-table client permissions (the JWT `t` claim) end to end against real
//! outpost processes: Hrana over HTTP (`/v2` and `/v3` pipelines, batches,
//! sequences, describe, stored SQL, cursors, v1), over WebSocket, and the
//! live change feed; triggers, views, DDL, the statement cache, read-only
//! caps, old tokens, malformed and oversized claims, `outpost token --tables`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine as _;
use common::{Options, Server};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

fn start() -> (Server, String) {
    let server = Server::start_with(Options {
        init: true,
        ..Options::default()
    });
    let admin = common::token(server.data_dir(), &[]);
    for sql in [
        "CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT)",
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, project INTEGER REFERENCES projects(id), title TEXT)",
        "CREATE TABLE secrets (id INTEGER PRIMARY KEY, s TEXT)",
        "INSERT INTO projects VALUES (1, 'p')",
        "INSERT INTO secrets VALUES (1, 'hidden')",
    ] {
        ok(&server, &admin, sql);
    }
    (server, admin)
}

/// `tasks` read-write, `projects` read (tasks' foreign key reads it).
fn tasks_token(server: &Server) -> String {
    common::token(server.data_dir(), &["--tables", "tasks:rw,projects:r"])
}

/// A pipeline over `/{version}/pipeline`; the results (HTTP 200 expected).
fn pipeline(server: &Server, version: &str, token: &str, requests: Vec<Value>) -> Vec<Value> {
    let (status, body) = common::post(
        &format!("{}/{version}/pipeline", server.api),
        Some(token),
        &json!({"baton": null, "requests": requests}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    body["results"].as_array().unwrap().clone()
}

fn execute(sql: &str) -> Value {
    json!({"type": "execute", "stmt": {"sql": sql}})
}

/// One statement over `/v2/pipeline`: its result, or (code, message).
fn sql(server: &Server, token: &str, sql: &str) -> Result<Value, (String, String)> {
    sql_over(server, "v2", token, sql)
}

fn sql_over(
    server: &Server,
    version: &str,
    token: &str,
    sql: &str,
) -> Result<Value, (String, String)> {
    let results = pipeline(
        server,
        version,
        token,
        vec![execute(sql), json!({"type": "close"})],
    );
    outcome(&results[0])
}

fn outcome(result: &Value) -> Result<Value, (String, String)> {
    match result["type"].as_str() {
        Some("ok") => Ok(result["response"]["result"].clone()),
        _ => Err((
            result["error"]["code"].as_str().unwrap_or_default().into(),
            result["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .into(),
        )),
    }
}

fn ok(server: &Server, token: &str, statement: &str) -> Value {
    sql(server, token, statement).unwrap_or_else(|e| panic!("{statement}: {e:?}"))
}

/// Asserts `statement` is refused with SQLITE_AUTH and a message holding
/// `why`.
fn refused(server: &Server, token: &str, statement: &str, why: &str) {
    let (code, message) = sql(server, token, statement)
        .err()
        .unwrap_or_else(|| panic!("{statement} was allowed"));
    assert_eq!(code, "SQLITE_AUTH", "{statement}: {message}");
    assert!(message.contains(why), "{statement}: {message}");
}

fn count(server: &Server, admin: &str, table: &str) -> i64 {
    let result = ok(server, admin, &format!("SELECT count(*) FROM {table}"));
    result["rows"][0][0]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn denied_write(table: &str) -> String {
    format!("SQLite error: not authorized: this token may not write table \"{table}\"")
}

/// Signs arbitrary claims with the node's key.
fn sign(server: &Server, claims: &Value) -> String {
    let pem = std::fs::read(server.data_dir().join("keys/jwt.key.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&pem).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        claims,
        &key,
    )
    .unwrap()
}

/// The claims of a token (not verified).
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn http_pipelines_check_each_table() {
    let (server, admin) = start();
    let t = tasks_token(&server);
    for version in ["v2", "v3"] {
        let insert = format!("INSERT INTO tasks (project, title) VALUES (1, '{version}')");
        let result = sql_over(&server, version, &t, &insert).unwrap();
        assert_eq!(result["affected_row_count"], 1);
        let rows = sql_over(
            &server,
            version,
            &t,
            "SELECT title, name FROM tasks JOIN projects ON projects.id = tasks.project",
        )
        .unwrap();
        assert!(!rows["rows"].as_array().unwrap().is_empty());
        // Names compare ignoring ASCII case, as in SQLite.
        sql_over(&server, version, &t, "SELECT * FROM TASKS").unwrap();
        let (code, message) = sql_over(
            &server,
            version,
            &t,
            "INSERT INTO projects (name) VALUES ('x')",
        )
        .unwrap_err();
        assert_eq!(
            (code.as_str(), message),
            ("SQLITE_AUTH", denied_write("projects"))
        );
        // SQLite reports the name as the schema spells it.
        let (_, message) =
            sql_over(&server, version, &t, "UPDATE PROJECTS SET name = 'y'").unwrap_err();
        assert_eq!(message, denied_write("projects"));
        let (code, message) = sql_over(&server, version, &t, "SELECT s FROM secrets").unwrap_err();
        assert_eq!(code, "SQLITE_AUTH");
        assert_eq!(
            message,
            "SQLite error: not authorized: this token may not read table \"secrets\""
        );
        // A subquery, a join, a CTE: every table counts.
        for statement in [
            "SELECT * FROM tasks WHERE title IN (SELECT s FROM secrets)",
            "SELECT * FROM tasks, secrets",
            "WITH x AS (SELECT s FROM secrets) SELECT * FROM x",
            "INSERT INTO tasks (project, title) SELECT 1, s FROM secrets",
        ] {
            refused(&server, &t, statement, "may not read table \"secrets\"");
        }
    }
    assert_eq!(count(&server, &admin, "projects"), 1);
    assert_eq!(count(&server, &admin, "tasks"), 2);

    // A batch with conditions: the refused step is an error step; what
    // depends on it follows the conditions.
    let batch = json!({"type": "batch", "batch": {"steps": [
        {"stmt": {"sql": "INSERT INTO tasks (project, title) VALUES (1, 'batch')"}},
        {"stmt": {"sql": "INSERT INTO secrets (s) VALUES ('batch')"},
         "condition": {"type": "ok", "step": 0}},
        {"stmt": {"sql": "SELECT count(*) FROM tasks"},
         "condition": {"type": "error", "step": 1}},
        {"stmt": {"sql": "SELECT 1"}, "condition": {"type": "ok", "step": 1}},
    ]}});
    for version in ["v2", "v3"] {
        let results = pipeline(&server, version, &t, vec![batch.clone()]);
        let result = &results[0]["response"]["result"];
        assert!(result["step_results"][0].is_object(), "{result}");
        assert_eq!(result["step_errors"][1]["code"], "SQLITE_AUTH", "{result}");
        assert_eq!(result["step_errors"][1]["message"], denied_write("secrets"));
        assert!(result["step_results"][2].is_object(), "{result}");
        assert!(result["step_results"][3].is_null() && result["step_errors"][3].is_null());
    }
    assert_eq!(count(&server, &admin, "secrets"), 1);

    // A sequence: each statement is checked; the refused one stops it.
    let results = pipeline(
        &server,
        "v3",
        &t,
        vec![
            json!({"type": "sequence", "sql": "INSERT INTO tasks (project, title) VALUES (1, 'seq'); DELETE FROM secrets; INSERT INTO tasks (project, title) VALUES (1, 'after')"}),
            json!({"type": "sequence", "sql": "INSERT INTO tasks (project, title) VALUES (1, 'seq2'); SELECT * FROM projects"}),
        ],
    );
    let (code, message) = outcome(&results[0]).unwrap_err();
    assert_eq!(
        (code.as_str(), message),
        ("SQLITE_AUTH", denied_write("secrets"))
    );
    assert_eq!(results[1]["type"], "ok", "{}", results[1]);
    assert_eq!(count(&server, &admin, "secrets"), 1);
    let after = ok(
        &server,
        &admin,
        "SELECT count(*) FROM tasks WHERE title = 'after'",
    );
    assert_eq!(after["rows"][0][0]["value"], "0");

    // Describe, and stored SQL.
    let results = pipeline(
        &server,
        "v3",
        &t,
        vec![
            json!({"type": "describe", "sql": "SELECT * FROM tasks"}),
            json!({"type": "describe", "sql": "SELECT * FROM secrets"}),
            json!({"type": "store_sql", "sql_id": 7, "sql": "SELECT * FROM secrets"}),
            json!({"type": "execute", "stmt": {"sql_id": 7}}),
            json!({"type": "batch", "batch": {"steps": [{"stmt": {"sql_id": 7}}]}}),
            json!({"type": "sequence", "sql_id": 7}),
            json!({"type": "close"}),
        ],
    );
    assert_eq!(results[0]["type"], "ok", "{}", results[0]);
    for i in [1, 3, 5] {
        let (code, message) = outcome(&results[i]).unwrap_err();
        assert_eq!(code, "SQLITE_AUTH", "request {i}");
        assert!(
            message.contains("may not read table \"secrets\""),
            "{message}"
        );
    }
    assert_eq!(
        results[4]["response"]["result"]["step_errors"][0]["code"],
        "SQLITE_AUTH"
    );

    // /v3/cursor and the v1 endpoints.
    let resp = ureq::post(&format!("{}/v3/cursor", server.api))
        .set("authorization", &format!("Bearer {t}"))
        .send_string(
            &json!({"baton": null, "batch": {"steps": [
                {"stmt": {"sql": "SELECT title FROM tasks LIMIT 1"}},
                {"stmt": {"sql": "SELECT s FROM secrets"}}
            ]}})
            .to_string(),
        )
        .unwrap();
    let lines: Vec<Value> = resp
        .into_string()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[1]["type"], "step_begin");
    let error = lines.iter().find(|l| l["type"] == "step_error").unwrap();
    assert_eq!(error["step"], 1);
    assert_eq!(error["error"]["code"], "SQLITE_AUTH");
    assert!(!lines.iter().any(|l| l.to_string().contains("hidden")));
    let (status, body) = common::post(
        &format!("{}/v1/execute", server.api),
        Some(&t),
        &json!({"stmt": {"sql": "SELECT * FROM secrets"}}).to_string(),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "SQLITE_AUTH");
}

#[test]
fn cached_statements_do_not_carry_rights() {
    let (server, admin) = start();
    let t = tasks_token(&server);
    let read = "SELECT s FROM secrets WHERE id = 1";
    let write = "UPDATE secrets SET s = 'changed' WHERE id = 1";
    // More rounds than reader threads: every connection caches the texts.
    for _ in 0..6 {
        // Full token first, restricted second...
        ok(&server, &admin, read);
        refused(&server, &t, read, "may not read table \"secrets\"");
        ok(&server, &admin, write);
        refused(&server, &t, write, &denied_write("secrets"));
    }
    let other_read = "SELECT name FROM secrets, projects";
    let other_write = "DELETE FROM secrets WHERE id = 99";
    for _ in 0..6 {
        // ... and the other way round.
        refused(&server, &t, other_read, "may not read table \"secrets\"");
        ok(&server, &admin, other_read);
        refused(&server, &t, other_write, &denied_write("secrets"));
        ok(&server, &admin, other_write);
    }
    // Allowed text stays allowed for the restricted token after a full one.
    let allowed = "SELECT count(*) FROM tasks";
    for _ in 0..6 {
        ok(&server, &admin, allowed);
        ok(&server, &t, allowed);
    }
}

#[test]
fn triggers_views_and_ddl() {
    let (server, admin) = start();
    let t = tasks_token(&server);
    let insert = "INSERT INTO tasks (project, title) VALUES (1, 'via trigger')";
    ok(&server, &t, insert);
    // A trigger on an allowed table writes a forbidden one; created after
    // the statement was cached.
    ok(
        &server,
        &admin,
        "CREATE TRIGGER copy AFTER INSERT ON tasks BEGIN INSERT INTO secrets (s) VALUES (new.title); END",
    );
    refused(&server, &t, insert, &denied_write("secrets"));
    refused(
        &server,
        &t,
        "INSERT INTO tasks (project, title) VALUES (1, 'fresh text')",
        &denied_write("secrets"),
    );
    assert_eq!(count(&server, &admin, "tasks"), 1);
    assert_eq!(count(&server, &admin, "secrets"), 1);
    // The full token may; the trigger then ran.
    ok(&server, &admin, insert);
    assert_eq!(count(&server, &admin, "secrets"), 2);
    refused(&server, &t, insert, &denied_write("secrets"));
    ok(&server, &admin, "DROP TRIGGER copy");
    ok(&server, &t, insert);
    assert_eq!(count(&server, &admin, "tasks"), 3);

    // A view over a forbidden table, even when the view is granted.
    ok(
        &server,
        &admin,
        "CREATE VIEW secret_titles AS SELECT s FROM secrets",
    );
    let v = common::token(
        server.data_dir(),
        &["--tables", "tasks:rw,projects:r,secret_titles:r"],
    );
    refused(
        &server,
        &v,
        "SELECT * FROM secret_titles",
        "may not read table \"secrets\"",
    );
    ok(
        &server,
        &admin,
        "CREATE VIEW task_titles AS SELECT title FROM tasks",
    );
    let tv = common::token(server.data_dir(), &["--tables", "tasks:r,task_titles:r"]);
    ok(&server, &tv, "SELECT * FROM task_titles");
    // The view itself must be granted too.
    refused(
        &server,
        &t,
        "SELECT * FROM task_titles",
        "may not read table \"task_titles\"",
    );

    // DDL and writes outside any table need a token without `t`.
    for statement in [
        "CREATE TABLE mine (x)",
        "CREATE INDEX tasks_title ON tasks (title)",
        "ALTER TABLE tasks ADD COLUMN done INTEGER",
        "DROP TABLE tasks",
        "CREATE TRIGGER t2 AFTER INSERT ON tasks BEGIN SELECT 1; END",
        "CREATE VIEW v2 AS SELECT * FROM tasks",
        "CREATE TEMP TABLE scratch (x)",
        "ANALYZE tasks",
    ] {
        refused(
            &server,
            &t,
            statement,
            "needs a token without per-table rights",
        );
    }
    refused(
        &server,
        &t,
        "PRAGMA user_version = 5",
        "writes outside any table",
    );
    // Schema information and transactions stay available.
    ok(&server, &t, "SELECT name FROM sqlite_schema");
    ok(&server, &t, "PRAGMA table_info(tasks)");
    let results = pipeline(
        &server,
        "v3",
        &t,
        vec![
            execute("BEGIN IMMEDIATE"),
            execute("INSERT INTO tasks (project, title) VALUES (1, 'in txn')"),
            execute("COMMIT"),
            json!({"type": "close"}),
        ],
    );
    for r in &results {
        assert_eq!(r["type"], "ok", "{r}");
    }
    // The full token may change the schema.
    ok(&server, &admin, "CREATE INDEX tasks_title ON tasks (title)");
    refused(
        &server,
        &t,
        "REINDEX tasks_title",
        "needs a token without per-table rights",
    );
    ok(&server, &admin, "REINDEX tasks_title");
}

#[test]
fn read_only_caps_and_old_tokens() {
    let (server, admin) = start();
    let ro_tables = common::token(
        server.data_dir(),
        &["--read-only", "--tables", "tasks:rw,projects"],
    );
    assert_eq!(
        claims_of(&ro_tables),
        json!({"a": "ro", "iat": claims_of(&ro_tables)["iat"], "t": {"projects": "r", "tasks": "r"}})
    );
    ok(&server, &ro_tables, "SELECT * FROM tasks");
    ok(&server, &ro_tables, "SELECT * FROM projects");
    refused(
        &server,
        &ro_tables,
        "INSERT INTO tasks (project, title) VALUES (1, 'x')",
        "this token is read-only and the statement writes table \"tasks\"",
    );
    refused(&server, &ro_tables, "SELECT * FROM secrets", "may not read");
    refused(&server, &ro_tables, "BEGIN IMMEDIATE", "read-only");

    // Tokens without `t` behave as before.
    ok(&server, &admin, "CREATE TABLE more (x)");
    ok(&server, &admin, "SELECT * FROM secrets");
    let ro = common::token(server.data_dir(), &["--read-only"]);
    assert_eq!(claims_of(&ro).get("t"), None);
    ok(&server, &ro, "SELECT * FROM secrets");
    refused(
        &server,
        &ro,
        "INSERT INTO secrets (s) VALUES ('x')",
        "SQLite error: not authorized: this token is read-only and the statement writes",
    );
    // Hand-made tokens: no `a` means read-write, also with `t`.
    let no_a = sign(&server, &json!({}));
    ok(&server, &no_a, "INSERT INTO secrets (s) VALUES ('no a')");
    let no_a_tables = sign(&server, &json!({"t": {"secrets": "rw"}}));
    ok(
        &server,
        &no_a_tables,
        "INSERT INTO secrets (s) VALUES ('t')",
    );
    refused(&server, &no_a_tables, "SELECT * FROM tasks", "may not read");
    // `a = "ro"` caps an "rw" in `t`.
    let capped = sign(&server, &json!({"a": "ro", "t": {"secrets": "rw"}}));
    ok(&server, &capped, "SELECT * FROM secrets");
    refused(
        &server,
        &capped,
        "DELETE FROM secrets",
        "read-only and the statement writes table \"secrets\"",
    );
}

fn hrana_ws(
    server: &Server,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>> {
    let mut req = server.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "hrana3".parse().unwrap());
    let (ws, _) = tungstenite::connect(req).expect("websocket connect");
    ws
}

fn ws_send(
    ws: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    msg: Value,
) -> Value {
    ws.send(Message::text(msg.to_string())).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[test]
fn malformed_and_oversized_claims_are_refused() {
    let (server, admin) = start();
    let many = |n: usize| -> Value {
        let t: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("t{i}"), json!("r"))).collect();
        json!({"a": "rw", "t": t})
    };
    let cases = [
        (json!({"t": null}), "not null"),
        (json!({"t": ["tasks"]}), "not an array"),
        (json!({"t": "tasks"}), "not a string"),
        (json!({"t": {"tasks": "w"}}), "use \"r\" or \"rw\""),
        (json!({"t": {"tasks": true}}), "the level true"),
        (json!({"t": {"": "r"}}), "empty table name"),
        (json!({"t": {"tasks": "r", "TASKS": "rw"}}), "twice"),
        (many(257), "more than 256 tables"),
    ];
    for (claims, why) in cases {
        let token = sign(&server, &claims);
        let (status, body) = common::post(
            &format!("{}/v2/pipeline", server.api),
            Some(&token),
            &common::execute_body("SELECT 1"),
        );
        assert_eq!(status, 401, "{claims}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("Invalid token: the \"t\" claim (per-table rights)"),
            "{message}"
        );
        assert!(message.contains(why), "{claims}: {message}");
        // The same refusal over WebSocket and on the feed.
        let mut ws = hrana_ws(&server);
        let hello = ws_send(&mut ws, json!({"type": "hello", "jwt": token}));
        assert_eq!(hello["type"], "hello_error", "{hello}");
        assert!(hello["error"]["message"].as_str().unwrap().contains(why));
        let refusal =
            sse(&server, &format!("tables=tasks&access_token={token}")).expect_err("feed refused");
        assert_eq!(refusal.0, 401);
    }
    // At the bound: 256 tables are fine.
    let token = sign(&server, &many(256));
    assert_eq!(
        sql(&server, &token, "SELECT * FROM tasks").unwrap_err().0,
        "SQLITE_AUTH"
    );
    ok(&server, &admin, "CREATE TABLE t255 (x)");
    ok(&server, &token, "SELECT * FROM t255");

    // The CLI refuses what the server would.
    let dir = server.data_dir().to_str().unwrap();
    let names: Vec<String> = (0..257).map(|i| format!("t{i}")).collect();
    let too_many = names.join(",");
    for (tables, why) in [
        ("", "empty table name"),
        ("tasks,,projects", "empty table name"),
        ("tasks,Tasks:r", "twice"),
        ("tasks:w", "must be r or rw"),
        (too_many.as_str(), "256"),
    ] {
        let (status, _, err) = common::run(&["token", "--data-dir", dir, "--tables", tables]);
        assert!(!status.success(), "--tables {tables:?} was accepted");
        assert!(
            err.contains("--tables") && err.contains(why),
            "{tables:?}: {err}"
        );
    }
    let ok_token = common::token(
        server.data_dir(),
        &["--tables", "Tasks:rw,projects:r,notes"],
    );
    let claims = claims_of(&ok_token);
    assert_eq!(claims["a"], "rw");
    assert_eq!(
        claims["t"],
        json!({"Tasks": "rw", "projects": "r", "notes": "rw"})
    );
}

#[test]
fn websocket_streams_check_each_table() {
    let (server, admin) = start();
    let t = tasks_token(&server);
    let mut ws = hrana_ws(&server);
    assert_eq!(
        ws_send(&mut ws, json!({"type": "hello", "jwt": t}))["type"],
        "hello_ok"
    );
    let mut id = 0;
    let mut request = |ws: &mut _, request: Value| {
        id += 1;
        let reply = ws_send(
            ws,
            json!({"type": "request", "request_id": id, "request": request}),
        );
        assert_eq!(reply["request_id"], id, "{reply}");
        reply
    };
    request(&mut ws, json!({"type": "open_stream", "stream_id": 1}));
    let exec = |sql: &str| json!({"type": "execute", "stream_id": 1, "stmt": {"sql": sql}});
    let r = request(
        &mut ws,
        exec("INSERT INTO tasks (project, title) VALUES (1, 'ws')"),
    );
    assert_eq!(r["type"], "response_ok", "{r}");
    let r = request(&mut ws, exec("SELECT title FROM tasks"));
    assert_eq!(r["response"]["result"]["rows"][0][0]["value"], "ws");
    let r = request(&mut ws, exec("INSERT INTO secrets (s) VALUES ('ws')"));
    assert_eq!(r["type"], "response_error");
    assert_eq!(r["error"]["code"], "SQLITE_AUTH");
    assert_eq!(r["error"]["message"], denied_write("secrets"));
    let r = request(&mut ws, exec("SELECT * FROM secrets"));
    assert_eq!(r["error"]["code"], "SQLITE_AUTH", "{r}");
    let r = request(&mut ws, exec("DROP TABLE secrets"));
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("changes the schema"));

    let r = request(
        &mut ws,
        json!({"type": "batch", "stream_id": 1, "batch": {"steps": [
            {"stmt": {"sql": "SELECT count(*) FROM tasks"}},
            {"stmt": {"sql": "DELETE FROM secrets"}},
            {"stmt": {"sql": "SELECT 2"}, "condition": {"type": "error", "step": 1}},
        ]}}),
    );
    let result = &r["response"]["result"];
    assert!(result["step_results"][0].is_object(), "{r}");
    assert_eq!(result["step_errors"][1]["code"], "SQLITE_AUTH");
    assert!(result["step_results"][2].is_object(), "{r}");

    let r = request(
        &mut ws,
        json!({"type": "sequence", "stream_id": 1, "sql": "SELECT 1; UPDATE secrets SET s = 'x'"}),
    );
    assert_eq!(r["error"]["code"], "SQLITE_AUTH", "{r}");
    let r = request(
        &mut ws,
        json!({"type": "describe", "stream_id": 1, "sql": "SELECT * FROM secrets"}),
    );
    assert_eq!(r["error"]["code"], "SQLITE_AUTH", "{r}");
    request(
        &mut ws,
        json!({"type": "store_sql", "sql_id": 3, "sql": "SELECT s FROM secrets"}),
    );
    let r = request(
        &mut ws,
        json!({"type": "execute", "stream_id": 1, "stmt": {"sql_id": 3}}),
    );
    assert_eq!(r["error"]["code"], "SQLITE_AUTH", "{r}");
    let r = request(
        &mut ws,
        json!({"type": "open_cursor", "stream_id": 1, "cursor_id": 1, "batch": {"steps": [
            {"stmt": {"sql": "SELECT title FROM tasks"}},
            {"stmt": {"sql_id": 3}},
        ]}}),
    );
    assert_eq!(r["type"], "response_ok", "{r}");
    let r = request(
        &mut ws,
        json!({"type": "fetch_cursor", "cursor_id": 1, "max_count": 100}),
    );
    let entries = r["response"]["entries"].as_array().unwrap();
    let error = entries.iter().find(|e| e["type"] == "step_error").unwrap();
    assert_eq!(error["error"]["code"], "SQLITE_AUTH");
    assert!(!r.to_string().contains("hidden"));

    // A transaction across requests, checked statement by statement.
    for (sql, allowed) in [
        ("BEGIN", true),
        ("INSERT INTO tasks (project, title) VALUES (1, 'txn')", true),
        ("DELETE FROM secrets", false),
        ("COMMIT", true),
    ] {
        let r = request(&mut ws, exec(sql));
        assert_eq!(r["type"] == "response_ok", allowed, "{sql}: {r}");
    }
    assert_eq!(count(&server, &admin, "secrets"), 1);
    assert_eq!(count(&server, &admin, "tasks"), 2);
}

/// `GET /v1/feed?<query>` as server-sent events: Ok(reader) on 200, else
/// Err((status, body)).
fn sse(server: &Server, query: &str) -> Result<BufReader<TcpStream>, (u16, Value)> {
    let host = server.api.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&host).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET /v1/feed?{query} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header.trim().is_empty() {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    if status == 200 {
        return Ok(reader);
    }
    let mut body = vec![0; length];
    std::io::Read::read_exact(&mut reader, &mut body).unwrap();
    Err((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// The next `change` event's data on an SSE stream (chunk framing lines
/// are skipped: each event arrives whole in one chunk).
fn next_change(reader: &mut BufReader<TcpStream>) -> Value {
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "feed ended");
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            let data: Value = serde_json::from_str(data).unwrap();
            if data["type"] == "change" {
                return data;
            }
        }
    }
}

#[test]
fn feed_subscribers_follow_only_tables_they_may_read() {
    let (server, admin) = start();
    let t = tasks_token(&server);
    let ro_tables = common::token(server.data_dir(), &["--read-only", "--tables", "tasks"]);

    for query in [
        format!("tables=secrets&access_token={t}"),
        format!("tables=tasks,SECRETS&access_token={t}"),
        format!("tables=tasks,projects,secrets&access_token={ro_tables}"),
    ] {
        let (status, body) = sse(&server, &query).expect_err("refused");
        assert_eq!(status, 403, "{query}: {body}");
        assert_eq!(body["code"], "FORBIDDEN");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("may not read table"),
            "{body}"
        );
    }
    let url = format!(
        "{}/v1/feed?tables=secrets&access_token={t}",
        server.ws_url()
    );
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }

    // Allowed subscriptions, over SSE (token in the header or the query) and
    // WebSocket.
    let mut sse_header = {
        let host = server.api.trim_start_matches("http://").to_string();
        let mut stream = TcpStream::connect(&host).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            stream,
            "GET /v1/feed?tables=tasks,projects HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {t}\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "{status}");
        reader
    };
    let mut sse_ro = sse(&server, &format!("tables=TASKS&access_token={ro_tables}")).unwrap();
    let url = format!("{}/v1/feed?tables=tasks&access_token={t}", server.ws_url());
    let (mut ws, _) = tungstenite::connect(url).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(WAIT)).unwrap();
    }
    let mut ws_next = || loop {
        match ws.read().unwrap() {
            Message::Text(text) => {
                let msg: Value = serde_json::from_str(text.as_str()).unwrap();
                if msg["type"] == "change" {
                    return msg;
                }
            }
            _ => continue,
        }
    };

    // The full token writes a secret first: restricted subscribers never
    // see it, and get the task change that follows.
    ok(
        &server,
        &admin,
        "INSERT INTO secrets (s) VALUES ('classified')",
    );
    ok(
        &server,
        &admin,
        "INSERT INTO tasks (project, title) VALUES (1, 'visible')",
    );
    for change in [
        next_change(&mut sse_header),
        next_change(&mut sse_ro),
        ws_next(),
    ] {
        assert_eq!(change["table"], "tasks", "{change}");
        assert_eq!(change["values"]["title"], "visible");
    }
    // The restricted token's own writes reach it too.
    ok(&server, &t, "UPDATE tasks SET title = 'mine'");
    assert_eq!(next_change(&mut sse_header)["values"]["title"], "mine");
    // A full token may follow any table; an old read-only token too.
    let ro = common::token(server.data_dir(), &["--read-only"]);
    let mut all = sse(&server, &format!("tables=secrets&access_token={ro}")).unwrap();
    ok(&server, &admin, "DELETE FROM secrets");
    assert_eq!(next_change(&mut all)["table"], "secrets");
}
