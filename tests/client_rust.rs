//! The official Rust `libsql` crate, in remote mode, against a real
//! `outpost serve` process over HTTP.

mod common;

use common::{Options, Server};
use libsql::{params, Builder, Value};

async fn connect(url: &str, token: &str) -> libsql::Connection {
    let db = Builder::new_remote(url.to_string(), token.to_string())
        .build()
        .await
        .expect("build remote db");
    db.connect().expect("connect")
}

async fn one_row(
    conn: &libsql::Connection,
    sql: &str,
    params: impl libsql::params::IntoParams,
) -> Vec<Value> {
    let mut rows = conn.query(sql, params).await.expect(sql);
    let row = rows.next().await.unwrap().expect("one row");
    (0..rows.column_count())
        .map(|i| row.get_value(i).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_value_type_round_trips() {
    let server = Server::start();
    let conn = connect(&server.api, "").await;
    conn.execute("CREATE TABLE v(id INTEGER PRIMARY KEY, x ANY)", ())
        .await
        .unwrap();
    let values = vec![
        Value::Null,
        Value::Integer(i64::MIN),
        Value::Integer(i64::MAX),
        Value::Integer(0),
        Value::Real(3.25),
        Value::Real(-1e-300),
        Value::Text("héllo, 世界 🌍".into()),
        Value::Text(String::new()),
        Value::Blob(vec![0, 1, 2, 255, 254]),
        Value::Blob(Vec::new()),
    ];
    for (i, v) in values.iter().enumerate() {
        conn.execute("INSERT INTO v VALUES (?, ?)", params![i as i64, v.clone()])
            .await
            .unwrap();
    }
    for (i, v) in values.iter().enumerate() {
        let got = one_row(&conn, "SELECT x FROM v WHERE id = ?", params![i as i64]).await;
        assert_eq!(&got[0], v, "value {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn positional_and_named_parameters() {
    let server = Server::start();
    let conn = connect(&server.api, "").await;
    let got = one_row(&conn, "SELECT ?, ?3, ?2", params![1, "b", 3.5]).await;
    assert_eq!(
        got,
        vec![Value::Integer(1), Value::Real(3.5), Value::Text("b".into())]
    );
    let got = one_row(
        &conn,
        "SELECT :a, @b, $c",
        libsql::named_params! {":a": 1, "@b": "two", "$c": Value::Null},
    )
    .await;
    assert_eq!(
        got,
        vec![Value::Integer(1), Value::Text("two".into()), Value::Null]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn result_metadata_and_errors() {
    let server = Server::start();
    let conn = connect(&server.api, "").await;
    conn.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
        (),
    )
    .await
    .unwrap();
    let n = conn
        .execute("INSERT INTO t(name) VALUES ('a'), ('b'), ('c')", ())
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(conn.last_insert_rowid(), 3);
    let rows = conn.query("SELECT id, name FROM t", ()).await.unwrap();
    assert_eq!(rows.column_name(1), Some("name"));
    let err = conn.execute("SELEC nonsense", ()).await.unwrap_err();
    assert!(err.to_string().contains("syntax error"), "{err}");
    let err = conn
        .execute("INSERT INTO t(id, name) VALUES (1, 'dup')", ())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("UNIQUE constraint failed"),
        "{err}"
    );
    let err = conn
        .execute("INSERT INTO t(name) VALUES (NULL)", ())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOT NULL"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_commit_and_roll_back() {
    let server = Server::start();
    let conn = connect(&server.api, "").await;
    conn.execute("CREATE TABLE t(x)", ()).await.unwrap();
    let tx = conn.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", ()).await.unwrap();
    tx.execute("INSERT INTO t VALUES (2)", ()).await.unwrap();
    tx.commit().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (3)", ()).await.unwrap();
    let inside = one_row(&tx, "SELECT count(*) FROM t", ()).await;
    assert_eq!(
        inside[0],
        Value::Integer(3),
        "a transaction sees its own writes"
    );
    tx.rollback().await.unwrap();
    let after = one_row(&conn, "SELECT count(*), sum(x) FROM t", ()).await;
    assert_eq!(after, vec![Value::Integer(2), Value::Integer(3)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_run_in_order() {
    let server = Server::start();
    let conn = connect(&server.api, "").await;
    conn.execute_batch(
        "CREATE TABLE b(x); INSERT INTO b VALUES (1); INSERT INTO b VALUES (2); UPDATE b SET x = x * 10;",
    )
    .await
    .unwrap();
    let got = one_row(&conn, "SELECT sum(x) FROM b", ()).await;
    assert_eq!(got[0], Value::Integer(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_enforced() {
    let server = Server::start_with(Options {
        init: true,
        ..Options::default()
    });
    let rw = common::token(server.data_dir(), &[]);
    let ro = common::token(server.data_dir(), &["--read-only"]);
    let conn = connect(&server.api, &rw).await;
    conn.execute("CREATE TABLE t(x)", ()).await.unwrap();
    conn.execute("INSERT INTO t VALUES (1)", ()).await.unwrap();

    let reader = connect(&server.api, &ro).await;
    let got = one_row(&reader, "SELECT x FROM t", ()).await;
    assert_eq!(got[0], Value::Integer(1));
    let err = reader
        .execute("INSERT INTO t VALUES (2)", ())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");

    let anonymous = connect(&server.api, "").await;
    let err = anonymous.query("SELECT 1", ()).await.unwrap_err();
    assert!(
        err.to_string().contains("401") || err.to_string().to_lowercase().contains("auth"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_concurrent_writers_all_land() {
    let server = Server::start();
    let setup = connect(&server.api, "").await;
    setup
        .execute(
            "CREATE TABLE w(client INTEGER, n INTEGER, PRIMARY KEY (client, n))",
            (),
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for client in 0..32i64 {
        let url = server.api.clone();
        tasks.push(tokio::spawn(async move {
            let conn = connect(&url, "").await;
            for n in 0..50i64 {
                conn.execute("INSERT INTO w VALUES (?, ?)", params![client, n])
                    .await
                    .unwrap_or_else(|e| panic!("client {client} write {n}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = one_row(&setup, "SELECT count(*), count(DISTINCT client) FROM w", ()).await;
    assert_eq!(got, vec![Value::Integer(1600), Value::Integer(32)]);
}
