//! The process: config precedence, refusing unsafe exposure, HTTPS, the
//! admin listener, `outpost status`, and graceful shutdown.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use common::{exec, Options, Server};

#[test]
fn refuses_public_address_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (status, _, err) = common::run(&[
        "serve",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert!(!status.success());
    assert!(err.contains("without authentication"), "{err}");
}

#[test]
fn admin_listener_serves_health_and_metrics() {
    let server = Server::start();
    exec(&server, None, "SELECT 1");
    assert_eq!(common::get(&format!("{}/health", server.admin)).0, 200);
    assert_eq!(common::get(&format!("{}/ready", server.admin)).0, 200);
    let (_, version) = common::get(&format!("{}/version", server.admin));
    assert!(version.contains(env!("CARGO_PKG_VERSION")));
    let (status, metrics) = common::get(&format!("{}/metrics", server.admin));
    assert_eq!(status, 200);
    for name in [
        "outpost_http_requests_total{route=\"/v2/pipeline\",status=\"200\"}",
        "outpost_http_request_duration_seconds_bucket",
        "outpost_streams_open",
        "outpost_writer_queue_depth",
        "outpost_db_size_bytes",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
    let (status, out, err) = common::run(&["status", "--admin", &server.admin]);
    assert!(status.success(), "{err}");
    assert!(out.contains("ready") && out.contains("yes"), "{out}");
}

#[test]
fn sigterm_shuts_down_cleanly_and_keeps_data() {
    let mut server = Server::start();
    exec(&server, None, "CREATE TABLE t(x)");
    exec(&server, None, "INSERT INTO t VALUES (42)");
    // A transaction left open must not hold up shutdown (it rolls back).
    let body = serde_json::json!({"baton": null, "requests": [
        {"type": "execute", "stmt": {"sql": "BEGIN IMMEDIATE"}},
        {"type": "execute", "stmt": {"sql": "INSERT INTO t VALUES (-1)"}}
    ]});
    let (status, _) = common::post(
        &format!("{}/v2/pipeline", server.api),
        None,
        &body.to_string(),
    );
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "shutdown waited for the idle transaction"
    );
    // Every connection was closed: SQLite checkpointed and removed the WAL.
    let wal = server.data_dir().join("outpost.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(
        wal_len, 0,
        "the WAL was left behind: the database was not closed"
    );
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let restarted = Server::start_in(dir, Options::default());
    let r = exec(&restarted, None, "SELECT x FROM t");
    assert_eq!(
        r["response"]["result"]["rows"],
        serde_json::json!([[{"type": "integer", "value": "42"}]])
    );
}

#[test]
fn config_file_env_and_flags_layer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("outpost.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_batch_steps = 1\n[api]\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    // The file sets max_batch_steps=1; env overrides it to 2; the flag overrides api.listen.
    let server = Server::start_with(Options {
        args: vec!["--config", cfg.to_str().unwrap()],
        env: vec![("OUTPOST_LIMITS_MAX_BATCH_STEPS", "2".into())],
        ..Options::default()
    });
    let body = serde_json::json!({"baton": null, "requests": [{"type": "get_autocommit"}, {"type": "close"}]});
    let (status, _) = common::post(
        &format!("{}/v2/pipeline", server.api),
        None,
        &body.to_string(),
    );
    assert_eq!(status, 200);
    let body = serde_json::json!({"baton": null, "requests": [{"type": "get_autocommit"}, {"type": "get_autocommit"}, {"type": "close"}]});
    let (status, _) = common::post(
        &format!("{}/v2/pipeline", server.api),
        None,
        &body.to_string(),
    );
    assert_eq!(status, 413);

    std::fs::write(&cfg, "[limits]\nno_such_key = 1\n").unwrap();
    let (status, _, err) = common::run(&["serve", "--config", cfg.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("no_such_key"), "{err}");
}

#[test]
fn https_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (status, _, err) = common::run(&[
        "init",
        "--self-signed",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(status.success(), "{err}");
    let token = common::token(dir.path(), &[]);
    let server = Server::start_in(dir, Options::default());
    assert!(server.api.starts_with("https://"), "{}", server.api);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(server.data_dir().join("tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = server.api.trim_start_matches("https://").to_string();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    let body = common::execute_body("SELECT 'over tls'");
    write!(
        stream,
        "POST /v2/pipeline HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("over tls"), "{response}");
}
