//! The cloud backup against a real S3 server (SeaweedFS, `common::s3`) and
//! real `outpost` processes: kill -9 and restore, point-in-time restore,
//! storage stopped under writes, corrupt and missing objects, and a third
//! node bootstrapped from the backup joining a cluster.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::s3::S3Server;
use common::{bin, eventually, int_arg, plain, sync_env, text_arg, Options, Server};

/// `backup.interval` in these tests: every write acknowledged longer ago
/// than this before a crash must be in the backup.
const INTERVAL: Duration = Duration::from_millis(400);

fn s3_url(prefix: &str) -> String {
    format!("s3://backups/{prefix}")
}

/// The node's environment: S3 credentials and endpoint, a short interval.
fn backup_env(s3: &S3Server) -> Vec<(&'static str, String)> {
    let mut env = s3.env();
    env.push((
        "OUTPOST_BACKUP_INTERVAL",
        format!("{}ms", INTERVAL.as_millis()),
    ));
    env
}

fn start_node(s3: &S3Server, url: &str, extra: &[(&'static str, String)]) -> Server {
    let mut env = backup_env(s3);
    env.extend_from_slice(extra);
    Server::start_with(Options {
        args: vec!["--backup", url],
        env,
        ..Options::default()
    })
}

/// `outpost restore --from URL --data-dir DIR --json [extra]`: (success,
/// the JSON report or null, stderr).
fn restore(
    s3: Option<&S3Server>,
    url: &str,
    dir: &Path,
    extra: &[&str],
) -> (bool, serde_json::Value, String) {
    let mut cmd = Command::new(bin());
    cmd.args([
        "restore",
        "--from",
        url,
        "--data-dir",
        dir.to_str().unwrap(),
        "--json",
    ])
    .args(extra)
    .env("RUST_BACKTRACE", "0");
    for (k, v) in s3.map(S3Server::env).unwrap_or_default() {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run outpost restore");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The ids in table `t` of the database in `dir`.
fn ids_in(dir: &Path) -> BTreeSet<i64> {
    use libsql_sys::rusqlite::{Connection, OpenFlags};
    let conn =
        Connection::open_with_flags(dir.join("outpost.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the restored database");
    let mut stmt = conn.prepare("SELECT id FROM t").unwrap();
    let ids = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    ids
}

fn create_table(node: &Server) {
    node.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", vec![]);
}

/// Creates `t` and waits for the snapshot the schema change calls for
/// (entries after it need the table to be restored).
fn create_table_and_snapshot(node: &Server) {
    // The snapshot taken at start comes first, so that it cannot be the one
    // that already holds the table.
    wait_snapshot_after(node, 0);
    create_table(node);
    wait_snapshot_after(node, now_ms());
}

fn insert(node: &Server, id: i64) {
    let written = node.write(
        "INSERT INTO t (id, v) VALUES (?, ?)",
        vec![int_arg(id), text_arg(&format!("value {id}"))],
    );
    assert!(written.acked().is_some(), "insert {id}: {written:?}");
}

fn backup_status(node: &Server) -> serde_json::Value {
    node.status()["backup"].clone()
}

/// Until the backup holds every entry committed before the call.
fn wait_shipped(node: &Server) {
    let since = now_ms();
    eventually(Duration::from_secs(30), || {
        let b = backup_status(node);
        b["caught_up_ms"].as_u64().unwrap_or(0) > since && b["last_error"].is_null()
    });
}

/// Until a snapshot newer than `after_ms` is in the backup.
fn wait_snapshot_after(node: &Server, after_ms: u64) {
    eventually(Duration::from_secs(30), || {
        backup_status(node)["last_snapshot_ms"]
            .as_u64()
            .unwrap_or(0)
            > after_ms
    });
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn metric(node: &Server, name: &str) -> f64 {
    let (_, text) = common::get(&format!("{}/metrics", node.admin));
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn kill_9_under_writes_then_restore_holds_every_write_older_than_the_interval() {
    let s3 = S3Server::start();
    let url = s3_url("crash");
    let mut node = start_node(&s3, &url, &[]);
    let source_id = node.node_id();
    create_table_and_snapshot(&node);

    let client = node.client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for id in 1.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let written = client.write(
                    "INSERT INTO t (id, v) VALUES (?, ?)",
                    vec![int_arg(id), text_arg("under load")],
                );
                match written.acked() {
                    Some(_) => acked.push((id, Instant::now())),
                    None => break,
                }
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let killed_at = Instant::now();
    node.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.join().unwrap();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );

    let target = tempfile::tempdir().unwrap();
    let (ok, report, err) = restore(Some(&s3), &url, target.path(), &[]);
    assert!(ok, "restore failed: {err}");
    assert_ne!(
        report["new_node_id"],
        source_id.as_str(),
        "a restored node gets a new id"
    );
    let present = ids_in(target.path());
    let must_have: Vec<i64> = acked
        .iter()
        .filter(|(_, at)| killed_at.duration_since(*at) > INTERVAL)
        .map(|(id, _)| *id)
        .collect();
    let missing: Vec<&i64> = must_have
        .iter()
        .filter(|id| !present.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} writes acknowledged more than {INTERVAL:?} before the kill are missing \
         (first {:?}); restored {} rows, report {report}",
        missing.len(),
        must_have.len(),
        missing.first(),
        present.len()
    );
    eprintln!(
        "acknowledged {}, restored {}, within {INTERVAL:?} of the kill and not restored: {}",
        acked.len(),
        present.len(),
        acked.len().saturating_sub(present.len())
    );
    // The restored node serves its rows, under its new id.
    let restored = Server::start_in(target, Options::default());
    assert_eq!(restored.node_id(), report["new_node_id"].as_str().unwrap());
    let count = plain(&restored.rows("SELECT count(*) FROM t", vec![])[0][0]);
    assert_eq!(count, present.len() as i64);
}

#[test]
fn point_in_time_restore_returns_the_state_at_that_time() {
    let s3 = S3Server::start();
    let url = s3_url("pitr");
    let node = start_node(&s3, &url, &[]);
    create_table_and_snapshot(&node);
    for id in 1..=50 {
        insert(&node, id);
    }
    node.sql("UPDATE t SET v = 'before' WHERE id = 7", vec![]);
    wait_shipped(&node);
    std::thread::sleep(Duration::from_millis(20));
    let at = now_ms();
    std::thread::sleep(Duration::from_millis(20));
    for id in 51..=80 {
        insert(&node, id);
    }
    node.sql("UPDATE t SET v = 'after' WHERE id = 7", vec![]);
    node.sql("DELETE FROM t WHERE id = 3", vec![]);
    wait_shipped(&node);
    // A snapshot taken after `at` (by the CLI, while the node runs) must not
    // be the one a restore to `at` starts from.
    let mut cmd = Command::new(bin());
    cmd.args([
        "backup",
        "--data-dir",
        node.data_dir().to_str().unwrap(),
        "--to",
        &url,
    ]);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "outpost backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("snapshot"));

    let target = tempfile::tempdir().unwrap();
    let then = target.path().join("then");
    let (ok, report, err) = restore(Some(&s3), &url, &then, &["--at", &at.to_string()]);
    assert!(ok, "restore --at failed: {err}");
    assert_eq!(ids_in(&then), (1..=50).collect(), "report {report}");
    let v7 = value_of(&then, 7);
    assert_eq!(v7, "before");
    assert!(report["entries_after_at"].as_u64().unwrap() > 0, "{report}");

    let now = target.path().join("now");
    let (ok, _, err) = restore(Some(&s3), &url, &now, &[]);
    assert!(ok, "restore failed: {err}");
    let expected: BTreeSet<i64> = (1..=80).filter(|id| *id != 3).collect();
    assert_eq!(ids_in(&now), expected);
    assert_eq!(value_of(&now, 7), "after");

    // Before the first snapshot: a precise refusal.
    let (ok, _, err) = restore(
        Some(&s3),
        &url,
        &target.path().join("never"),
        &["--at", "1000"],
    );
    assert!(!ok);
    assert!(
        err.contains("no snapshot") && err.contains("does not reach back"),
        "{err}"
    );
}

fn value_of(dir: &Path, id: i64) -> String {
    use libsql_sys::rusqlite::{Connection, OpenFlags};
    let conn =
        Connection::open_with_flags(dir.join("outpost.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row("SELECT v FROM t WHERE id = ?1", [id], |r| r.get(0))
        .unwrap()
}

#[test]
fn storage_down_never_blocks_writes_and_the_backlog_ships_when_it_returns() {
    let mut s3 = S3Server::start();
    let url = s3_url("outage");
    // A tiny backlog bound, to see it reached (segment_bytes may not exceed it).
    let limits = [
        ("OUTPOST_BACKUP_SEGMENT_BYTES", "2048".to_string()),
        ("OUTPOST_BACKUP_MAX_BACKLOG_BYTES", "8192".to_string()),
    ];
    let mut node = start_node(&s3, &url, &limits);
    create_table_and_snapshot(&node);
    for id in 1..=20 {
        insert(&node, id);
    }
    wait_shipped(&node);

    s3.stop();
    let started = Instant::now();
    for id in 21..=400 {
        insert(&node, id);
    }
    let took = started.elapsed();
    eventually(Duration::from_secs(20), || {
        metric(&node, "outpost_backup_upload_failures_total") >= 1.0
    });
    let status = backup_status(&node);
    assert!(
        status["unshipped_entries"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(!status["last_error"].is_null(), "{status}");
    eventually(Duration::from_secs(10), || {
        metric(&node, "outpost_backup_backlog_over_limit") == 1.0
    });
    assert!(backup_status(&node)["over_limit"] == true);
    assert!(
        node.stderr_lines()
            .iter()
            .any(|l| l.contains("max_backlog_bytes")),
        "the backlog limit is logged"
    );
    eprintln!("380 writes with storage down took {took:?}");

    s3.restart();
    wait_shipped(&node);
    assert_eq!(backup_status(&node)["over_limit"], false);
    assert_eq!(metric(&node, "outpost_backup_backlog_over_limit"), 0.0);
    assert!(metric(&node, "outpost_backup_last_success_timestamp_seconds") > 0.0);
    node.kill();

    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("restored");
    let (ok, report, err) = restore(Some(&s3), &url, &dir, &[]);
    assert!(ok, "restore failed: {err}");
    assert_eq!(ids_in(&dir), (1..=400).collect(), "report {report}");
}

#[test]
fn a_corrupt_or_missing_segment_fails_the_restore_naming_the_object() {
    let s3 = S3Server::start();
    let url = s3_url("corrupt");
    let node = start_node(&s3, &url, &[]);
    let node_id = node.node_id();
    create_table_and_snapshot(&node);
    for round in 0..3 {
        for id in 1..=10 {
            insert(&node, round * 10 + id);
        }
        wait_shipped(&node);
    }
    drop(node);
    let segments = s3.list_keys(&format!("corrupt/{node_id}/segments/"));
    assert!(segments.len() >= 3, "{segments:?}");
    let victim = segments.last().unwrap().clone();
    let bytes = s3.get_object(&victim).unwrap();
    s3.put_object(&victim, &flip(&bytes, bytes.len() / 2));

    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("restored");
    let (ok, _, err) = restore(Some(&s3), &url, &dir, &[]);
    assert!(!ok, "a corrupt segment must fail the restore");
    assert!(err.contains(&victim) && err.contains("checksum"), "{err}");
    assert!(
        !dir.join("outpost.db").exists(),
        "nothing half-restored is left"
    );

    s3.put_object(&victim, &bytes);
    let earlier = &segments[segments.len() - 2];
    let earlier_bytes = s3.get_object(earlier).unwrap();
    s3.delete_object(earlier);
    let (ok, _, err) = restore(Some(&s3), &url, &dir, &[]);
    assert!(!ok, "a missing segment must fail the restore");
    assert!(
        err.contains(earlier.as_str()) && err.contains("missing"),
        "{err}"
    );
    s3.put_object(earlier, &earlier_bytes);

    let snapshots = s3.list_keys(&format!("corrupt/{node_id}/snapshots/"));
    let newest = snapshots.iter().rfind(|k| k.ends_with(".db.zst")).unwrap();
    let snapshot = s3.get_object(newest).unwrap();
    s3.put_object(newest, &flip(&snapshot, snapshot.len() / 3));
    let (ok, _, err) = restore(Some(&s3), &url, &dir, &[]);
    assert!(!ok, "a corrupt snapshot must fail the restore");
    assert!(err.contains(newest.as_str()), "{err}");
    assert!(!dir.join("outpost.db").exists());

    // Put back as shipped, the backup restores: the damage was the only cause.
    s3.put_object(newest, &snapshot);
    let (ok, _, err) = restore(Some(&s3), &url, &dir, &[]);
    assert!(ok, "{err}");
    assert_eq!(ids_in(&dir), (1..=30).collect());
}

/// `bytes` with one bit flipped at `at`.
fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut flipped = bytes.to_vec();
    flipped[at] ^= 0x01;
    flipped
}

#[test]
fn the_embedded_default_backs_up_into_the_data_dir() {
    let node = Server::start_with(Options {
        env: vec![("OUTPOST_BACKUP_INTERVAL", "200ms".into())],
        ..Options::default()
    });
    create_table_and_snapshot(&node);
    for id in 1..=30 {
        insert(&node, id);
    }
    wait_shipped(&node);
    let url = format!("file://{}", node.data_dir().join("backup").display());
    assert_eq!(backup_status(&node)["url"], url.as_str());
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("restored");
    let (ok, report, err) = restore(None, &url, &dir, &[]);
    assert!(ok, "restore failed: {err}");
    assert_eq!(ids_in(&dir), (1..=30).collect(), "{report}");
    assert!(report["check_seconds"].as_f64().is_some(), "{report}");
    let fast = target.path().join("fast");
    let (ok, report, err) = restore(None, &url, &fast, &["--no-check"]);
    assert!(ok, "restore --no-check failed: {err}");
    assert!(report["check_seconds"].is_null(), "{report}");
    assert_eq!(ids_in(&fast), (1..=30).collect());
    // Restoring over an existing database is refused.
    let (ok, _, err) = restore(None, &url, &dir, &[]);
    assert!(!ok && err.contains("already holds a database"), "{err}");
}

#[test]
fn a_third_node_bootstrapped_from_the_backup_joins_and_converges() {
    let s3 = S3Server::start();
    let url = s3_url("bootstrap");
    let ca = tempfile::tempdir().unwrap();
    let cluster_env = |extra: Vec<(&'static str, String)>| {
        let mut env = sync_env();
        env.extend(backup_env(&s3));
        env.extend(extra);
        env
    };
    let a = Server::start_with(Options {
        ca_dir: Some(ca.path()),
        sync_listen: Some("127.0.0.1:0".into()),
        args: vec!["--backup", &url],
        env: cluster_env(vec![]),
        ..Options::default()
    });
    let b = Server::start_with(Options {
        ca_dir: Some(ca.path()),
        sync_listen: Some("127.0.0.1:0".into()),
        peers: vec![a.sync.clone().unwrap()],
        env: cluster_env(vec![("OUTPOST_BACKUP_ENABLED", "false".into())]),
        ..Options::default()
    });
    // Schemas do not replicate (each node applies its migrations).
    create_table_and_snapshot(&a);
    create_table(&b);
    for id in 1..=40 {
        insert(&a, id);
        insert(&b, 1000 + id);
    }
    eventually(Duration::from_secs(30), || a.digest() == b.digest());
    wait_shipped(&a);

    let c_dir = tempfile::tempdir().unwrap();
    let (ok, report, err) = restore(Some(&s3), &url, c_dir.path(), &[]);
    assert!(ok, "restore failed: {err}");
    assert_eq!(ids_in(c_dir.path()).len(), 80, "{report}");
    // The new node id needs its own certificate from the cluster CA.
    common::init_in_cluster(c_dir.path(), ca.path());
    let c = Server::start_in(
        c_dir,
        Options {
            sync_listen: Some("127.0.0.1:0".into()),
            peers: vec![a.sync.clone().unwrap(), b.sync.clone().unwrap()],
            env: cluster_env(vec![("OUTPOST_BACKUP_ENABLED", "false".into())]),
            ..Options::default()
        },
    );
    assert_eq!(c.node_id(), report["new_node_id"].as_str().unwrap());
    for id in 41..=60 {
        insert(&a, id);
        insert(&c, 2000 + id);
    }
    eventually(Duration::from_secs(30), || {
        let d = a.digest();
        d == b.digest() && d == c.digest()
    });
    assert_eq!(plain(&c.rows("SELECT count(*) FROM t", vec![])[0][0]), 120);
}

#[test]
fn past_the_backlog_bound_compaction_goes_on_and_the_backup_restarts_from_a_snapshot() {
    let mut s3 = S3Server::start();
    let url = s3_url("gap");
    let ca = tempfile::tempdir().unwrap();
    let mut env = sync_env();
    env.extend(backup_env(&s3));
    env.extend([
        ("OUTPOST_BACKUP_SEGMENT_BYTES", "2048".to_string()),
        ("OUTPOST_BACKUP_MAX_BACKLOG_BYTES", "4096".to_string()),
    ]);
    let mut a = Server::start_with(Options {
        ca_dir: Some(ca.path()),
        sync_listen: Some("127.0.0.1:0".into()),
        args: vec!["--backup", &url],
        env: env.clone(),
        ..Options::default()
    });
    let mut b_env = sync_env();
    b_env.push(("OUTPOST_BACKUP_ENABLED", "false".into()));
    let b = Server::start_with(Options {
        ca_dir: Some(ca.path()),
        sync_listen: Some("127.0.0.1:0".into()),
        peers: vec![a.sync.clone().unwrap()],
        env: b_env,
        ..Options::default()
    });
    create_table_and_snapshot(&a);
    create_table(&b);
    for id in 1..=10 {
        insert(&a, id);
    }
    wait_shipped(&a);

    s3.stop();
    for id in 11..=300 {
        insert(&a, id);
    }
    eventually(Duration::from_secs(20), || {
        metric(&a, "outpost_backup_backlog_over_limit") == 1.0
    });
    // B holds everything, the backup lets go: A's log is compacted past
    // what the backup holds.
    eventually(Duration::from_secs(30), || {
        metric(&a, "outpost_log_compacted_entries_total") >= 290.0
    });
    let before = backup_status(&a)["last_snapshot_ms"].as_u64().unwrap();

    s3.restart();
    wait_shipped(&a);
    assert!(
        backup_status(&a)["last_snapshot_ms"].as_u64().unwrap() > before,
        "a snapshot stands in for the compacted entries"
    );
    for id in 301..=320 {
        insert(&a, id);
    }
    wait_shipped(&a);
    a.kill();
    drop(b);

    let target = tempfile::tempdir().unwrap();
    let (ok, report, err) = restore(Some(&s3), &url, target.path(), &[]);
    assert!(ok, "restore failed: {err}");
    assert_eq!(ids_in(target.path()), (1..=320).collect(), "{report}");
}

#[test]
fn entries_written_right_after_a_schema_change_are_restorable() {
    let s3 = S3Server::start();
    let url = s3_url("ddl");
    let mut node = start_node(&s3, &url, &[]);
    wait_snapshot_after(&node, 0);
    // No waiting for the scheduled snapshot: the shipper must take one
    // before it ships entries that need the new table or column.
    create_table(&node);
    insert(&node, 1);
    insert(&node, 2);
    wait_shipped(&node);
    node.sql("ALTER TABLE t ADD COLUMN w TEXT", vec![]);
    node.sql(
        "INSERT INTO t (id, v, w) VALUES (3, 'c', 'new column')",
        vec![],
    );
    wait_shipped(&node);
    node.kill();

    let target = tempfile::tempdir().unwrap();
    let (ok, report, err) = restore(Some(&s3), &url, target.path(), &[]);
    assert!(ok, "restore failed: {err}");
    assert_eq!(ids_in(target.path()), (1..=3).collect(), "{report}");
    use libsql_sys::rusqlite::Connection;
    let conn = Connection::open(target.path().join("outpost.db")).unwrap();
    let w: String = conn
        .query_row("SELECT w FROM t WHERE id = 3", [], |r| r.get(0))
        .unwrap();
    assert_eq!(w, "new column");
}
