//! `outpost dev --nodes N` does what README's tour says: N real nodes on
//! loopback, meshed, with the example table, printing URLs and tokens; a
//! row written on node 1 appears on the last node; SIGTERM stops them all.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, execute_body, post, wait_exit};

/// A base port whose 10-port blocks for `nodes` nodes are free right now.
fn free_base(nodes: u16) -> u16 {
    'search: for attempt in 0..200u16 {
        let base = 20_000 + (std::process::id() as u16 % 2_000) * 10 + attempt * 37;
        let mut held = Vec::new();
        for i in 0..nodes {
            for p in 0..3 {
                match TcpListener::bind(("127.0.0.1", base + i * 10 + p)) {
                    Ok(l) => held.push(l),
                    Err(_) => continue 'search,
                }
            }
        }
        return base;
    }
    panic!("no free ports for outpost dev");
}

#[test]
fn dev_runs_a_meshed_cluster_that_replicates() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base(2);
    let mut child = Command::new(bin())
        .args([
            "dev",
            "--nodes",
            "2",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut tokens = Vec::new();
    let mut apis = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(token) = line.trim().strip_prefix("token: ") {
            tokens.push(token.to_string());
        }
        if let Some(rest) = line.strip_prefix(&format!("node{}: api=", apis.len() + 1)) {
            apis.push(rest.split_whitespace().next().unwrap().to_string());
        }
        if line.starts_with("Ctrl-C stops every node") {
            break;
        }
    }
    assert_eq!(apis.len(), 2, "{apis:?}");
    assert_eq!(apis[0], format!("http://127.0.0.1:{base}"));
    assert_eq!(tokens.len(), 2);

    let insert = execute_body("INSERT INTO projects(id, name) VALUES ('p1', 'hello from node1')");
    let (status, body) = post(
        &format!("{}/v2/pipeline", apis[0]),
        Some(&tokens[0]),
        &insert,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["type"], "ok", "{body}");
    let select = execute_body("SELECT name FROM projects");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = post(
            &format!("{}/v2/pipeline", apis[1]),
            Some(&tokens[1]),
            &select,
        );
        let rows = &body["results"][0]["response"]["result"]["rows"];
        if rows[0][0]["value"] == "hello from node1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the row never reached node2: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGTERM: dev stops every node and exits.
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    for port in [base, base + 10] {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is still taken after dev stopped"
        );
    }
}
