//! Hrana over HTTP at the wire level: protocol details, bad input and every
//! configured limit at its bound. Each test starts its own server.

mod common;

use common::{exec, post, Options, Server};
use serde_json::{json, Value};

fn pipeline(server: &Server, body: Value) -> (u16, Value) {
    post(
        &format!("{}/v3/pipeline", server.api),
        None,
        &body.to_string(),
    )
}

fn count_rows(server: &Server, table: &str) -> String {
    let r = exec(server, None, &format!("SELECT count(*) FROM {table}"));
    r["response"]["result"]["rows"][0][0]["value"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn value_encoding_matches_the_spec() {
    let server = Server::start();
    let (status, body) = pipeline(
        &server,
        json!({"baton": null, "requests": [
            {"type": "execute", "stmt": {"sql": "SELECT ?, ?, ?, ?, ?, 9223372036854775807 AS big",
                "args": [
                    {"type": "null"},
                    {"type": "integer", "value": "-9223372036854775808"},
                    {"type": "float", "value": 1.5},
                    {"type": "text", "value": "ünï"},
                    {"type": "blob", "base64": "AAEC/w=="}
                ]}},
            {"type": "close"}
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let result = &body["results"][0]["response"]["result"];
    assert_eq!(
        result["rows"][0],
        json!([
            {"type": "null"},
            {"type": "integer", "value": "-9223372036854775808"},
            {"type": "float", "value": 1.5},
            {"type": "text", "value": "ünï"},
            {"type": "blob", "base64": "AAEC/w"},
            {"type": "integer", "value": "9223372036854775807"}
        ])
    );
    assert_eq!(result["cols"][5]["name"], "big");
    assert_eq!(body["baton"], Value::Null, "a closed stream has no baton");
}

#[test]
fn declared_types_affected_rows_and_rowid() {
    let server = Server::start();
    exec(
        &server,
        None,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL)",
    );
    let r = exec(
        &server,
        None,
        "INSERT INTO t(name, score) VALUES ('a', 1), ('b', 2)",
    );
    let result = &r["response"]["result"];
    assert_eq!(result["affected_row_count"], 2);
    assert_eq!(result["last_insert_rowid"], "2");
    let r = exec(&server, None, "SELECT id, name, score FROM t");
    let cols = &r["response"]["result"]["cols"];
    assert_eq!(cols[1], json!({"name": "name", "decltype": "TEXT"}));
    assert_eq!(cols[2]["decltype"], "REAL");
    let r = exec(&server, None, "CREATE TABLE u(x)");
    assert_eq!(
        r["response"]["result"]["affected_row_count"], 0,
        "DDL affects no rows"
    );
}

/// After DDL, a statement prepared before it (cached, or on a reader
/// connection that has not seen the change) reports the new columns and
/// whole rows: SQLite prepares it again at its first step, so the columns
/// are read after running it.
#[test]
fn results_follow_a_schema_change_at_once() {
    let server = Server::start();
    exec(
        &server,
        None,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT)",
    );
    exec(&server, None, "INSERT INTO t VALUES (1, 'x')");
    for _ in 0..8 {
        exec(&server, None, "SELECT * FROM t"); // cached on every reader
    }
    exec(
        &server,
        None,
        "ALTER TABLE t ADD COLUMN b INTEGER DEFAULT 7",
    );
    for _ in 0..8 {
        let r = exec(&server, None, "SELECT * FROM t");
        let result = &r["response"]["result"];
        let names: Vec<&str> = result["cols"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["id", "a", "b"], "{r}");
        assert_eq!(result["rows"][0][2]["value"], "7", "{r}");
    }
}

#[test]
fn batons_carry_a_transaction_across_requests() {
    let server = Server::start();
    exec(&server, None, "CREATE TABLE t(x)");
    let (_, first) = pipeline(
        &server,
        json!({"baton": null, "requests": [
            {"type": "execute", "stmt": {"sql": "BEGIN"}},
            {"type": "execute", "stmt": {"sql": "INSERT INTO t VALUES (1)"}},
            {"type": "get_autocommit"}
        ]}),
    );
    assert_eq!(first["results"][2]["response"]["is_autocommit"], false);
    let baton = first["baton"].as_str().unwrap().to_string();
    // Another client does not see the uncommitted row and is not blocked on reads.
    assert_eq!(count_rows(&server, "t"), "0");
    let (_, second) = pipeline(
        &server,
        json!({"baton": baton, "requests": [
            {"type": "execute", "stmt": {"sql": "COMMIT"}},
            {"type": "get_autocommit"},
            {"type": "close"}
        ]}),
    );
    assert_eq!(
        second["results"][1]["response"]["is_autocommit"], true,
        "{second}"
    );
    assert_eq!(count_rows(&server, "t"), "1");
    // The used baton cannot be replayed.
    let (status, body) = pipeline(&server, json!({"baton": baton, "requests": []}));
    assert_eq!(status, 400);
    assert!(
        body["code"] == "BATON_REUSED" || body["code"] == "STREAM_EXPIRED",
        "{body}"
    );
}

#[test]
fn batch_conditions_and_stored_sql() {
    let server = Server::start();
    let (status, body) = pipeline(
        &server,
        json!({"baton": null, "requests": [
            {"type": "store_sql", "sql_id": 1, "sql": "SELECT 42"},
            {"type": "batch", "batch": {"steps": [
                {"stmt": {"sql": "CREATE TABLE t(x PRIMARY KEY)"}},
                {"condition": {"type": "ok", "step": 0}, "stmt": {"sql": "INSERT INTO t VALUES (1)"}},
                {"condition": {"type": "ok", "step": 1}, "stmt": {"sql": "INSERT INTO t VALUES (1)"}},
                {"condition": {"type": "error", "step": 2}, "stmt": {"sql_id": 1}},
                {"condition": {"type": "and", "conds": [{"type": "ok", "step": 2}]}, "stmt": {"sql": "SELECT 0"}},
                {"condition": {"type": "is_autocommit"}, "stmt": {"sql": "SELECT 'auto'"}}
            ]}},
            {"type": "describe", "sql": "SELECT x FROM t WHERE x = :v"},
            {"type": "sequence", "sql": "INSERT INTO t VALUES (2); INSERT INTO t VALUES (3);"},
            {"type": "close_sql", "sql_id": 1},
            {"type": "execute", "stmt": {"sql_id": 1}},
            {"type": "close"}
        ]}),
    );
    assert_eq!(status, 200);
    let batch = &body["results"][1]["response"]["result"];
    assert!(batch["step_errors"][2]["message"]
        .as_str()
        .unwrap()
        .contains("UNIQUE"));
    assert_eq!(batch["step_errors"][2]["code"], "SQLITE_CONSTRAINT");
    assert_eq!(batch["step_results"][3]["rows"][0][0]["value"], "42");
    assert_eq!(batch["step_results"][4], Value::Null, "skipped step");
    assert_eq!(batch["step_results"][5]["rows"][0][0]["value"], "auto");
    let describe = &body["results"][2]["response"]["result"];
    assert_eq!(describe["params"][0]["name"], ":v");
    assert_eq!(describe["is_readonly"], true);
    assert_eq!(body["results"][3]["type"], "ok");
    assert_eq!(body["results"][5]["error"]["code"], "SQL_NOT_FOUND");
    assert_eq!(count_rows(&server, "t"), "3");
}

#[test]
fn malformed_requests_get_clear_4xx_and_lose_nothing() {
    let server = Server::start();
    exec(&server, None, "CREATE TABLE keep(x)");
    exec(&server, None, "INSERT INTO keep VALUES (1)");
    let url = format!("{}/v2/pipeline", server.api);
    let cases: Vec<(&str, String)> = vec![
        ("malformed JSON", "{not json".into()),
        ("wrong types", json!({"baton": 5, "requests": "no"}).to_string()),
        ("unknown request", json!({"baton": null, "requests": [{"type": "teleport"}]}).to_string()),
        ("bad value", json!({"baton": null, "requests": [{"type": "execute", "stmt": {"sql": "SELECT ?", "args": [{"type": "integer", "value": 5}]}}]}).to_string()),
        ("forged baton", json!({"baton": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "requests": []}).to_string()),
        ("garbage baton", json!({"baton": "%%%", "requests": []}).to_string()),
    ];
    for (what, body) in cases {
        let (status, reply) = post(&url, None, &body);
        assert_eq!(status, 400, "{what}: {reply}");
        assert!(
            reply["code"].is_string() && reply["message"].is_string(),
            "{what}: {reply}"
        );
    }
    let (status, reply) = post(&format!("{}/v1/execute", server.api), None, "[]");
    assert_eq!(status, 400, "{reply}");
    assert_eq!(count_rows(&server, "keep"), "1");
}

#[test]
fn forbidden_statements_are_refused_with_reasons() {
    let server = Server::start();
    let cases = [
        ("ATTACH DATABASE 'other.db' AS o", "ATTACH"),
        ("SELECT load_extension('/tmp/x.so')", "load_extension"),
        ("PRAGMA writable_schema = ON", "writable_schema"),
        ("SELECT * FROM _outpost_meta", "_outpost_meta"),
        ("CREATE TABLE _outpost_evil(x)", "_outpost_evil"),
        ("PRAGMA synchronous = OFF", "synchronous"),
    ];
    for (sql, word) in cases {
        let r = exec(&server, None, sql);
        assert_eq!(r["type"], "error", "{sql} was allowed: {r}");
        assert_eq!(r["error"]["code"], "SQLITE_AUTH", "{sql}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(word), "{sql}: {msg}");
    }
    assert!(
        common::get(&format!("{}/v2", server.api)).0 == 200,
        "server still up"
    );
}

#[test]
fn body_limit_at_the_bound() {
    let server = Server::start_with(Options {
        env: vec![("OUTPOST_LIMITS_MAX_BODY_BYTES", "2000".into())],
        ..Options::default()
    });
    let url = format!("{}/v2/pipeline", server.api);
    let fits = common::execute_body(&format!("SELECT '{}'", "a".repeat(1800)));
    assert!(fits.len() <= 2000);
    assert_eq!(post(&url, None, &fits).0, 200);
    let too_big = common::execute_body(&format!("SELECT '{}'", "a".repeat(2100)));
    let (status, body) = post(&url, None, &too_big);
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "BODY_TOO_LARGE");
    assert_eq!(post(&url, None, &fits).0, 200, "server still serves");
}

#[test]
fn batch_and_pipeline_step_limits() {
    let server = Server::start_with(Options {
        env: vec![("OUTPOST_LIMITS_MAX_BATCH_STEPS", "3".into())],
        ..Options::default()
    });
    let steps = |n: usize| {
        (0..n)
            .map(|_| json!({"stmt": {"sql": "SELECT 1"}}))
            .collect::<Vec<_>>()
    };
    let (_, ok) = pipeline(
        &server,
        json!({"baton": null, "requests": [{"type": "batch", "batch": {"steps": steps(3)}}, {"type": "close"}]}),
    );
    assert_eq!(ok["results"][0]["type"], "ok", "{ok}");
    let (_, over) = pipeline(
        &server,
        json!({"baton": null, "requests": [{"type": "batch", "batch": {"steps": steps(4)}}, {"type": "close"}]}),
    );
    assert_eq!(
        over["results"][0]["error"]["code"], "BATCH_TOO_LARGE",
        "{over}"
    );
    let requests: Vec<Value> = (0..4).map(|_| json!({"type": "get_autocommit"})).collect();
    let (status, body) = pipeline(&server, json!({"baton": null, "requests": requests}));
    assert_eq!(status, 413, "{body}");
}

#[test]
fn response_row_and_byte_limits() {
    let server = Server::start_with(Options {
        env: vec![
            ("OUTPOST_LIMITS_MAX_RESPONSE_ROWS", "10".into()),
            ("OUTPOST_LIMITS_MAX_RESPONSE_BYTES", "5000".into()),
        ],
        ..Options::default()
    });
    let ten = exec(&server, None, "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM c WHERE n < 10) SELECT n FROM c");
    assert_eq!(
        ten["response"]["result"]["rows"].as_array().unwrap().len(),
        10
    );
    let eleven = exec(&server, None, "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM c WHERE n < 11) SELECT n FROM c");
    assert_eq!(eleven["error"]["code"], "RESPONSE_TOO_LARGE", "{eleven}");
    let big = exec(&server, None, "SELECT zeroblob(6000)");
    assert_eq!(big["error"]["code"], "RESPONSE_TOO_LARGE", "{big}");
    let small = exec(&server, None, "SELECT zeroblob(1000)");
    assert_eq!(small["type"], "ok");
}

#[test]
fn stream_count_limit_and_idle_expiry() {
    let server = Server::start_with(Options {
        env: vec![
            ("OUTPOST_LIMITS_MAX_STREAMS", "2".into()),
            ("OUTPOST_LIMITS_STREAM_IDLE_TIMEOUT", "1s".into()),
        ],
        ..Options::default()
    });
    exec(&server, None, "CREATE TABLE t(x)");
    let open = || {
        pipeline(
            &server,
            json!({"baton": null, "requests": [
                {"type": "execute", "stmt": {"sql": "BEGIN"}},
                {"type": "execute", "stmt": {"sql": "INSERT INTO t VALUES (1)"}}
            ]}),
        )
    };
    let (s1, first) = open();
    assert_eq!(s1, 200, "{first}");
    // The second stream waits for the first one's transaction; run it on a thread.
    let api = server.api.clone();
    let second = std::thread::spawn(move || {
        post(
            &format!("{api}/v3/pipeline"),
            None,
            &json!({"baton": null, "requests": [{"type": "get_autocommit"}]}).to_string(),
        )
    });
    let (s2, _) = second.join().unwrap();
    assert_eq!(s2, 200);
    let (s3, third) = open();
    assert_eq!(s3, 429, "{third}");
    assert_eq!(third["code"], "STREAMS_EXHAUSTED");
    // After the idle timeout the streams are gone and the open transaction rolled back.
    common::eventually(std::time::Duration::from_secs(10), || {
        let (status, body) = pipeline(&server, json!({"baton": first["baton"], "requests": []}));
        status == 400 && body["code"] == "STREAM_EXPIRED"
    });
    assert_eq!(count_rows(&server, "t"), "0");
    let (s4, _) = open();
    assert_eq!(s4, 200, "a new stream fits again");
}

#[test]
fn v1_endpoints_and_probes() {
    let server = Server::start();
    for path in ["/v1", "/v2", "/v3", "/health", "/version"] {
        assert_eq!(
            common::get(&format!("{}{path}", server.api)).0,
            200,
            "{path}"
        );
    }
    let (status, body) = post(
        &format!("{}/v1/execute", server.api),
        None,
        &json!({"stmt": {"sql": "SELECT 1 + 1"}}).to_string(),
    );
    assert_eq!(status, 200);
    assert_eq!(body["result"]["rows"][0][0]["value"], "2");
    let (status, body) = post(
        &format!("{}/v1/batch", server.api),
        None,
        &json!({"batch": {"steps": [{"stmt": {"sql": "SELECT 1"}}, {"stmt": {"sql": "SELECT nope"}}]}}).to_string(),
    );
    assert_eq!(status, 200);
    assert!(
        body["result"]["step_errors"][1]["message"].is_string(),
        "{body}"
    );
    let (status, body) = post(
        &format!("{}/v1/execute", server.api),
        None,
        &json!({"stmt": {"sql": "SELEC"}}).to_string(),
    );
    assert_eq!(status, 400);
    assert_eq!(body["code"], "SQLITE_UNKNOWN");
    let (status, body) = post(
        &format!("{}/v1/execute", server.api),
        None,
        &json!({"stmt": {"sql": "ATTACH 'x' AS x"}}).to_string(),
    );
    assert_eq!(status, 403, "{body}");
}

#[test]
fn read_only_token_is_forbidden_to_write_over_v1() {
    let server = Server::start_with(Options {
        init: true,
        ..Options::default()
    });
    let ro = common::token(server.data_dir(), &["--read-only"]);
    let url = format!("{}/v1/execute", server.api);
    let write = json!({"stmt": {"sql": "CREATE TABLE t(x)"}}).to_string();
    let (status, body) = post(&url, Some(&ro), &write);
    assert_eq!(status, 403, "{body}");
    let read = json!({"stmt": {"sql": "SELECT 1"}}).to_string();
    assert_eq!(post(&url, Some(&ro), &read).0, 200);
    let (status, body) = post(&url, None, &read);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "AUTH_FAILED");
}

#[test]
fn cursor_streams_entries() {
    let server = Server::start();
    let resp = ureq::post(&format!("{}/v3/cursor", server.api))
        .send_string(
            &json!({"baton": null, "batch": {"steps": [
                {"stmt": {"sql": "SELECT 1 AS a UNION ALL SELECT 2"}},
                {"stmt": {"sql": "SELECT nope"}}
            ]}})
            .to_string(),
        )
        .unwrap();
    let text = resp.into_string().unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines[0]["baton"].is_string());
    assert_eq!(lines[1]["type"], "step_begin");
    assert_eq!(lines[1]["cols"][0]["name"], "a");
    assert_eq!(
        lines[2],
        json!({"type": "row", "row": [{"type": "integer", "value": "1"}]})
    );
    assert_eq!(lines[4]["type"], "step_end");
    assert_eq!(lines[5]["type"], "step_error");
    assert_eq!(lines[5]["step"], 1);
}

#[test]
fn cors_preflight_is_permissive() {
    let server = Server::start();
    let resp = ureq::request("OPTIONS", &format!("{}/v2/pipeline", server.api))
        .set("origin", "https://app.example")
        .set("access-control-request-method", "POST")
        .set(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.header("access-control-allow-origin").is_some());
}

#[test]
fn runaway_queries_are_interrupted_at_the_timeout() {
    let server = Server::start_with(Options {
        env: vec![("OUTPOST_LIMITS_QUERY_TIMEOUT", "300ms".into())],
        ..Options::default()
    });
    let forever =
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) FROM c";
    let started = std::time::Instant::now();
    let r = exec(&server, None, forever);
    assert_eq!(r["error"]["code"], "SQLITE_INTERRUPT", "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limits.query_timeout"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // A write that runs away on the writer is interrupted too, and the writer moves on.
    exec(&server, None, "CREATE TABLE t(x)");
    let r = exec(
        &server,
        None,
        &format!("INSERT INTO t {}", forever.replace("count(*)", "n")),
    );
    assert_eq!(r["error"]["code"], "SQLITE_INTERRUPT", "{r}");
    let ok = exec(&server, None, "INSERT INTO t VALUES (1)");
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(count_rows(&server, "t"), "1");
}

#[test]
fn open_read_transactions_do_not_starve_the_reader_pool() {
    let server = Server::start_with(Options {
        env: vec![
            ("OUTPOST_DB_READERS", "1".into()),
            ("OUTPOST_LIMITS_MAX_READ_TRANSACTIONS", "3".into()),
        ],
        ..Options::default()
    });
    exec(&server, None, "CREATE TABLE t(x)");
    // Three read transactions get connections of their own; the single
    // pool reader stays free for everyone else.
    let mut batons = Vec::new();
    for _ in 0..3 {
        let (status, body) = pipeline(
            &server,
            json!({"baton": null, "requests": [
                {"type": "execute", "stmt": {"sql": "BEGIN"}},
                {"type": "execute", "stmt": {"sql": "SELECT count(*) FROM t"}}
            ]}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["results"][1]["type"], "ok", "{body}");
        batons.push(body["baton"].as_str().unwrap().to_string());
    }
    let started = std::time::Instant::now();
    assert_eq!(count_rows(&server, "t"), "0");
    exec(&server, None, "INSERT INTO t VALUES (1)");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "reads and writes waited for the open read transactions"
    );
    // Each transaction still works and sees its own snapshot.
    for baton in batons {
        let (_, body) = pipeline(
            &server,
            json!({"baton": baton, "requests": [
                {"type": "execute", "stmt": {"sql": "SELECT count(*) FROM t"}},
                {"type": "execute", "stmt": {"sql": "COMMIT"}},
                {"type": "close"}
            ]}),
        );
        assert_eq!(
            body["results"][0]["response"]["result"]["rows"][0][0]["value"], "0",
            "{body}"
        );
        assert_eq!(body["results"][1]["type"], "ok", "{body}");
    }
}

#[test]
fn a_read_transaction_becomes_a_write_only_on_the_newest_snapshot() {
    let server = Server::start();
    exec(&server, None, "CREATE TABLE t(x)");
    let begin = |sql: &str| {
        let (_, body) = pipeline(
            &server,
            json!({"baton": null, "requests": [
                {"type": "execute", "stmt": {"sql": "BEGIN"}},
                {"type": "execute", "stmt": {"sql": sql}}
            ]}),
        );
        body["baton"].as_str().unwrap().to_string()
    };
    let next = |baton: &str, sqls: &[&str]| {
        let requests: Vec<Value> = sqls
            .iter()
            .map(|s| json!({"type": "execute", "stmt": {"sql": s}}))
            .collect();
        let (_, body) = pipeline(&server, json!({"baton": baton, "requests": requests}));
        body
    };
    // Nothing committed in between: the transaction moves to the writer.
    let a = begin("SELECT count(*) FROM t");
    let body = next(&a, &["INSERT INTO t VALUES (1)", "COMMIT"]);
    assert_eq!(body["results"][0]["type"], "ok", "{body}");
    assert_eq!(body["results"][1]["type"], "ok", "{body}");
    assert_eq!(count_rows(&server, "t"), "1");
    // Another write committed since it began: SQLITE_BUSY, and the read
    // transaction is still there to read and roll back.
    let b = begin("SELECT count(*) FROM t");
    exec(&server, None, "INSERT INTO t VALUES (2)");
    let body = next(&b, &["INSERT INTO t VALUES (3)"]);
    assert_eq!(body["results"][0]["error"]["code"], "SQLITE_BUSY", "{body}");
    let b = body["baton"].as_str().unwrap().to_string();
    let body = next(&b, &["SELECT count(*) FROM t", "ROLLBACK"]);
    assert_eq!(
        body["results"][0]["response"]["result"]["rows"][0][0]["value"], "1",
        "{body}"
    );
    assert_eq!(body["results"][1]["type"], "ok", "{body}");
    assert_eq!(count_rows(&server, "t"), "2");
}

/// `limits.token_requests_per_second` at its bound: a token gets its burst,
/// then 429 `RATE_LIMITED` with `Retry-After`; other tokens are unaffected;
/// refused tokens (401) are not counted; the token recovers at its rate.
/// Only what cannot fail on a slow machine is asserted (10 requests within
/// the 7 s the rate would need to avoid a 429).
#[test]
fn token_rate_limit_at_the_bound() {
    let server = Server::start_with(Options {
        init: true,
        env: vec![
            ("OUTPOST_LIMITS_TOKEN_REQUESTS_PER_SECOND", "1".into()),
            ("OUTPOST_LIMITS_TOKEN_BURST", "3".into()),
        ],
        ..Options::default()
    });
    let a = common::token(server.data_dir(), &[]);
    let b = common::token(server.data_dir(), &["--read-only"]);
    let url = format!("{}/v1/execute", server.api);
    let read = json!({"stmt": {"sql": "SELECT 1"}}).to_string();
    for _ in 0..20 {
        assert_eq!(post(&url, Some("not-a-token"), &read).0, 401);
    }
    let statuses: Vec<u16> = (0..10).map(|_| post(&url, Some(&a), &read).0).collect();
    assert_eq!(statuses[..3], [200, 200, 200], "the burst: {statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    let refused = ureq::post(&url)
        .set("Authorization", &format!("Bearer {a}"))
        .send_string(&read)
        .unwrap_err();
    let ureq::Error::Status(429, response) = refused else {
        panic!("expected 429, got {refused:?}");
    };
    assert!(response.header("Retry-After").is_some());
    let body: Value = response.into_json().unwrap();
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    assert_eq!(post(&url, Some(&b), &read).0, 200, "another token");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(post(&url, Some(&a), &read).0, 200, "recovered at its rate");
}
