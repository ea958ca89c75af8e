//! What operators see: the live `/metrics` output against the documented
//! reference and `promtool check metrics`, `outpost status` as a table and
//! as JSON, and JSON logs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{cluster_node, eventually, get, run, sync_env, text_arg, tool, Options, Server};

/// Two meshed nodes with a replicated row, so the per-peer series exist.
fn pair(ca: &std::path::Path) -> (Server, Server) {
    let a = cluster_node(ca, vec![]);
    let b = cluster_node(ca, vec![a.sync.clone().unwrap()]);
    // Replication carries rows, not DDL: both nodes get the table.
    for node in [&a, &b] {
        node.sql(
            "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)",
            vec![],
        );
    }
    a.write("INSERT INTO notes VALUES (1, ?)", vec![text_arg("hello")]);
    eventually(Duration::from_secs(20), || {
        b.rows("SELECT body FROM notes WHERE id = 1", vec![]).len() == 1
    });
    (a, b)
}

/// The value of one series (`name{labels}` exactly as served).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// `# TYPE name kind` lines of a Prometheus text exposition.
fn families(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

#[test]
fn live_metrics_match_the_reference_and_pass_promtool() {
    let ca = tempfile::tempdir().unwrap();
    let (a, b) = pair(ca.path());
    let reference: HashMap<String, &'static str> = outpost::metrics::Metrics::new()
        .reference()
        .into_iter()
        .map(|doc| (doc.name, doc.kind.as_str()))
        .collect();
    for node in [&a, &b] {
        let (code, text) = get(&format!("{}/metrics", node.admin));
        assert_eq!(code, 200);
        let live = families(&text);
        for (name, kind) in &live {
            if name.starts_with("process_") {
                continue;
            }
            assert_eq!(
                reference.get(name).copied(),
                Some(kind.as_str()),
                "{name} ({kind}) is served but not in the reference (src/metrics.rs)"
            );
        }
        // The series operators alert on are there on a live cluster.
        for name in [
            "outpost_node_info",
            "outpost_sync_peer_state",
            "outpost_sync_peer_behind_entries",
            "outpost_sync_peer_behind_seconds",
            "outpost_quarantined_entries",
            "outpost_data_dir_free_bytes",
            "outpost_data_dir_capacity_bytes",
            "outpost_backup_enabled",
            "outpost_backup_max_backlog_bytes",
            "outpost_backup_last_success_timestamp_seconds",
            "process_resident_memory_bytes",
        ] {
            assert!(live.contains_key(name), "{name} missing:\n{text}");
        }
        // Timestamps operators alert on: a certificate's expiry ahead, the
        // peer's last acknowledgment and the newest snapshot (both recorded
        // a moment after start).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as f64;
        let expiry = sample(
            &text,
            "outpost_tls_cert_not_after_timestamp_seconds{cert=\"sync\"}",
        );
        assert!(expiry.is_some_and(|t| t > now + 86_400.0), "{expiry:?}");
        eventually(Duration::from_secs(10), || {
            let (_, text) = get(&format!("{}/metrics", node.admin));
            let seen = text
                .lines()
                .find(|l| l.starts_with("outpost_sync_peer_last_seen_timestamp_seconds{"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
            let snapshot = sample(&text, "outpost_backup_last_snapshot_timestamp_seconds");
            seen.is_some_and(|t| (t - now).abs() < 60.0)
                && snapshot.is_some_and(|t| (t - now).abs() < 60.0)
        });
        let node_id = node.node_id();
        assert!(
            text.contains(&format!("outpost_node_info{{node_id=\"{node_id}\"")),
            "{text}"
        );
        let Some(promtool) = tool("promtool check metrics", "OUTPOST_PROMTOOL", "promtool") else {
            continue;
        };
        let mut check = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn status_shows_the_node_and_its_peers_as_a_table_and_as_json() {
    let ca = tempfile::tempdir().unwrap();
    let (a, b) = pair(ca.path());
    let b_id = b.node_id();
    // The link is up and b holds everything a holds.
    let mut report = serde_json::Value::Null;
    eventually(Duration::from_secs(10), || {
        let (status, out, err) = run(&["status", "--admin", &a.admin, "--json"]);
        assert!(status.success(), "{err}");
        report = serde_json::from_str(&out).expect("status --json prints JSON");
        let peers = report["node"]["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        peers
            .iter()
            .any(|p| p["behind"] == 0 && p["state"] == "connected")
    });
    assert_eq!(report["ready"], true, "{report}");
    assert_eq!(report["node"]["node_id"], a.node_id().as_str(), "{report}");
    assert_eq!(report["node"]["quarantined"], 0, "{report}");
    let peer = &report["node"]["peers"][0];
    assert_eq!(peer["node_id"], b_id.as_str(), "{report}");
    assert_eq!(peer["behind_seconds"], 0.0, "{report}");
    assert!(report["node"]["backup"]["url"].is_string(), "{report}");
    assert!(
        report["metrics"]["rss_bytes"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(
        report["metrics"]["data_dir_free_bytes"].as_u64().is_some(),
        "{report}"
    );

    let (status, out, err) = run(&["status", "--admin", &a.admin]);
    assert!(status.success(), "{err}");
    for label in [
        "node id",
        "schema version",
        "quarantined",
        "backup",
        "disk free",
    ] {
        assert!(out.lines().any(|l| l.starts_with(label)), "{label}:\n{out}");
    }
    let row = out
        .lines()
        .find(|l| l.starts_with(&b_id))
        .unwrap_or_else(|| panic!("no row for peer {b_id}:\n{out}"));
    assert!(row.contains("connected"), "{row}");
}

#[test]
fn status_of_an_unreachable_node_fails_and_says_where_it_looked() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let admin = format!("http://{addr}");
    let (status, _, err) = run(&["status", "--admin", &admin]);
    assert!(!status.success());
    assert!(err.contains(&admin), "{err}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut node = Server::start_with(Options {
        args: vec!["--log-format", "json"],
        env: vec![("OUTPOST_LOG", "info".into())],
        ..Default::default()
    });
    node.sql("CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![]);
    node.terminate();
    // The process has exited; give the reader thread a moment to drain.
    std::thread::sleep(Duration::from_millis(300));
    let lines = node.stderr_lines();
    assert!(!lines.is_empty(), "no log lines");
    for line in &lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(event["level"].is_string(), "{line}");
        assert!(event["timestamp"].is_string(), "{line}");
        assert!(event["fields"]["message"].is_string(), "{line}");
    }
}

/// A peer that falls behind shows it in `/status` and the gauges: the
/// entries it lacks and how long the oldest of them has waited; both go
/// back to 0 once it has caught up.
#[test]
fn a_slow_peer_shows_entries_and_seconds_behind_until_it_catches_up() {
    let ca = tempfile::tempdir().unwrap();
    let (a, b) = pair(ca.path());
    let mut slow = sync_env();
    // b applies at most 200 entries a second from any peer, with a burst
    // of one window of batches: 1 × 500 entries.
    slow.push(("OUTPOST_SYNC_PEER_ENTRIES_PER_SECOND", "200".into()));
    slow.push(("OUTPOST_SYNC_WINDOW_BATCHES", "1".into()));
    let b = b.restart(Options {
        ca_dir: Some(ca.path()),
        env: slow,
        peers: vec![a.sync.clone().unwrap()],
        ..Default::default()
    });
    let b_id = b.node_id();
    let peer_of_a = |a: &Server| -> serde_json::Value {
        let status = a.status();
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node_id"] == b_id.as_str())
            .cloned()
            .unwrap_or_default()
    };
    eventually(Duration::from_secs(10), || peer_of_a(&a)["behind"] == 0);
    a.write(
        "WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < 1501) \
         INSERT INTO notes SELECT i, 'bulk' FROM n",
        vec![],
    );
    eventually(Duration::from_secs(10), || {
        let peer = peer_of_a(&a);
        peer["behind"].as_u64().unwrap_or(0) > 0
            && peer["behind_seconds"].as_f64().unwrap_or(0.0) >= 1.0
    });
    let (_, text) = get(&format!("{}/metrics", a.admin));
    let series = format!("outpost_sync_peer_behind_seconds{{peer=\"{b_id}\"}}");
    let seconds = sample(&text, &series).unwrap_or_else(|| panic!("no {series}:\n{text}"));
    assert!(seconds > 0.5, "{seconds}");
    eventually(Duration::from_secs(30), || {
        let peer = peer_of_a(&a);
        peer["behind"] == 0 && peer["behind_seconds"] == 0.0
    });
    let count = b.rows("SELECT count(*) FROM notes", vec![]);
    assert_eq!(common::plain(&count[0][0]), 1501);
}
