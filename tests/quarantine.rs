//! The quarantine (issue 6): what a node refuses from a peer, in which
//! order the checks run, and `outpost quarantine list|replay`.
//!
//! In-process (a `Database` per node, entries handed to `Database::apply`):
//! the order of the checks and their reason codes, the columns rule (same
//! schema version: refused; older: ignored and counted), replay, and a
//! node not relaying an origin past an entry it holds in quarantine.
//!
//! Real processes (a cluster sharing a CA): a table one node lacks, listed,
//! replayed through the admin listener after the table was created, then
//! relayed to a third node; a CHECK one node has, relaxed by recreating the
//! table, replayed offline.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use libsql_sys::rusqlite::{self, Connection, OpenFlags};
use serde_json::{json, Value as Json};

use common::{plain, run, sync_env, Options, Server};
use outpost::auth::Access;
use outpost::config::Config;
use outpost::db::capture::{Applied, LogEntry};
use outpost::db::quarantine::Filter;
use outpost::db::{Database, ExecCtx, WorkItem};
use outpost::metrics::Metrics;
use outpost::sync::vv::VersionVector;

// ---------------------------------------------------------------------------
// In-process nodes

/// A database in a temporary directory, with its metrics.
struct Node {
    db: Database,
    metrics: Arc<Metrics>,
    config: Config,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new(tweak: impl FnOnce(&mut Config)) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.node.data_dir = dir.path().to_path_buf();
        config.db.synchronous = "normal".into();
        config.db.readers = 1;
        tweak(&mut config);
        let metrics = Arc::new(Metrics::new());
        let db = Database::open(&config, Arc::clone(&metrics)).expect("open database");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Node {
            db,
            metrics,
            config,
            rt,
            _dir: dir,
        }
    }

    /// Runs `sql` (statements separated by `;`) on the writer.
    fn sql(&self, sql: &str) {
        let ctx = ExecCtx {
            access: Access::ReadWrite,
            max_rows: 1000,
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(10),
        };
        let reply = self
            .rt
            .block_on(self.db.run(WorkItem::Sequence(sql.to_string()), ctx, None))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        if let Err(e) = reply.output {
            panic!("{sql}: {e:?}");
        }
    }

    fn apply(&self, entries: &[LogEntry]) -> Vec<Applied> {
        self.rt
            .block_on(self.db.apply(entries.to_vec(), "peer-a"))
            .unwrap_or_else(|e| panic!("apply: {}: {}", e.code, e.message))
    }

    fn read_only(&self) -> Connection {
        let conn = Connection::open_with_flags(
            self.config.db_path(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .expect("open read-only");
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }

    /// Every entry of the node's change log.
    fn log(&self) -> Vec<LogEntry> {
        let conn = self.read_only();
        let mut stmt = conn
            .prepare(
                "SELECT origin, seq, hlc, tbl, pk, schema_version, \"update\"
                 FROM _outpost_log ORDER BY origin, seq",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok(LogEntry {
                origin: r.get::<_, i64>(0)? as u64,
                seq: r.get::<_, i64>(1)? as u64,
                hlc: r.get::<_, i64>(2)? as u64,
                table: r.get(3)?,
                key: r.get(4)?,
                schema_version: r.get(5)?,
                update: r.get(6)?,
                ..LogEntry::default()
            })
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }

    /// One column of the rows of `table`, in key order.
    fn column(&self, table: &str, column: &str) -> Vec<String> {
        let conn = self.read_only();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT coalesce(CAST({column} AS TEXT), 'NULL') FROM {table} ORDER BY 1"
            ))
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// (origin, seq, code) of every quarantined entry.
    fn quarantined(&self) -> Vec<(u64, u64, String)> {
        self.db
            .log()
            .quarantined(&Filter::default(), 10_000)
            .unwrap()
            .into_iter()
            .map(|q| (q.origin.parse().unwrap(), q.seq, q.code))
            .collect()
    }

    fn rejected(&self, reason: &str) -> u64 {
        self.metrics
            .sync_rejected_total
            .with_label_values(&["peer-a", reason])
            .get()
    }

    fn check(&self) {
        let report = outpost::db::check::check(&self.config.db_path(), false).expect("check");
        assert!(report.is_clean(), "check: {:?}", report.problems);
    }
}

/// Outcomes reduced to what the tests compare: "applied", "duplicate",
/// "deferred", "gap" (skipped), or the reason code of a rejection.
fn codes(outcomes: &[Applied]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Applied::Applied => "applied".to_string(),
            Applied::Duplicate => "duplicate".to_string(),
            Applied::Deferred(_) => "deferred".to_string(),
            Applied::Skipped(_) => "gap".to_string(),
            Applied::Rejected(reason) => reason.split(':').next().unwrap().to_string(),
        })
        .collect()
}

/// A node that is not the receiver: entries are re-addressed to it.
const STRANGER: u64 = 4242;

fn from_stranger(entry: &LogEntry, seq: u64, change: impl FnOnce(&mut LogEntry)) -> LogEntry {
    let mut entry = entry.clone();
    entry.origin = STRANGER;
    entry.seq = seq;
    change(&mut entry);
    entry
}

#[test]
fn the_checks_run_in_order_and_each_has_its_code() {
    let a = Node::new(|_| {});
    a.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)");
    a.sql("INSERT INTO t VALUES (1, 'one'); INSERT INTO t VALUES (2, 'two')");
    let log = a.log();
    assert_eq!(log.len(), 2, "{log:?}");
    let b = Node::new(|c| c.crdt.max_update_bytes = 512);
    b.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT CHECK (v != 'two'))");
    let good = &log[0];
    let cases: Vec<(LogEntry, &str)> = vec![
        // Size comes before decoding (and everything else).
        (
            from_stranger(good, 1, |e| {
                e.update = vec![0xff; 600];
                e.table = "nope".into();
            }),
            "too_large",
        ),
        // Decoding comes before the table.
        (
            from_stranger(good, 2, |e| {
                e.update = vec![0xff; 40];
                e.table = "nope".into();
                e.key = "'open".into();
            }),
            "decode",
        ),
        // The table comes before the key.
        (
            from_stranger(good, 3, |e| {
                e.table = "nope".into();
                e.key = "'open".into();
            }),
            "table",
        ),
        (from_stranger(good, 4, |e| e.key = "1,2".into()), "key"),
        (from_stranger(good, 5, |e| e.origin = 0), "range"),
        (
            from_stranger(good, 6, |e| e.origin = b_origin(&b)),
            "own_origin",
        ),
        (log[0].clone(), "applied"),
        // A's second row violates B's CHECK.
        (log[1].clone(), "constraint"),
    ];
    let batch: Vec<LogEntry> = cases.iter().map(|(e, _)| e.clone()).collect();
    let expected: Vec<&str> = cases.iter().map(|(_, c)| *c).collect();
    assert_eq!(codes(&b.apply(&batch)), expected);
    // Every refused entry is in the quarantine with its code (an entry
    // claiming origin 0 or B's own origin too), and counted.
    let mut quarantined: Vec<String> = b.quarantined().into_iter().map(|q| q.2).collect();
    quarantined.sort();
    let mut refused: Vec<String> = expected
        .iter()
        .filter(|c| **c != "applied")
        .map(|c| c.to_string())
        .collect();
    refused.sort();
    assert_eq!(quarantined, refused);
    for code in &refused {
        assert_eq!(
            b.rejected(code),
            1,
            "outpost_sync_rejected_total{{reason={code}}}"
        );
    }
    assert_eq!(b.column("t", "v"), ["one"]);
    b.check();
    // The quarantine counts as held: sent again, an entry is a duplicate
    // only if it applied; a refused one is refused again.
    assert_eq!(
        codes(&b.apply(&[log[0].clone(), log[1].clone()])),
        ["duplicate", "constraint"]
    );
}

fn b_origin(node: &Node) -> u64 {
    node.db.meta().expect("meta").origin
}

#[test]
fn an_unknown_column_is_refused_at_the_same_schema_version_and_ignored_from_an_older_one() {
    let a = Node::new(|_| {});
    a.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, extra TEXT)");
    a.sql("INSERT INTO t VALUES (1, 'one', 'x')");
    let log = a.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].schema_version, 0);

    // Same schema version (0): A's entry writes a column B does not have.
    let same = Node::new(|_| {});
    same.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)");
    assert_eq!(codes(&same.apply(&log)), ["column"]);
    let reason = same.db.log().quarantined(&Filter::default(), 10).unwrap()[0]
        .reason
        .clone();
    assert!(reason.contains("extra"), "{reason}");
    assert!(same.column("t", "v").is_empty());
    same.check();

    // B is at schema version 1; A wrote under 0 (a column dropped since).
    let migrations = tempfile::tempdir().unwrap();
    std::fs::write(
        migrations.path().join("0001_t.sql"),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    let newer = Node::new(|_| {});
    let run = newer.rt.block_on(newer.db.migrate(migrations.path()));
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(codes(&newer.apply(&log)), ["applied"]);
    assert_eq!(newer.column("t", "v"), ["one"]);
    assert_eq!(
        newer
            .metrics
            .sync_ignored_values_total
            .with_label_values(&["t"])
            .get(),
        1
    );
    assert!(newer.quarantined().is_empty());
    newer.check();
}

#[test]
fn a_column_the_origin_wrote_before_is_not_the_entry_s_write() {
    // A's slot of a row carries the values A wrote earlier; a later entry
    // that only carries a column B dropped meanwhile writes nothing there.
    let a = Node::new(|_| {});
    let b = Node::new(|_| {});
    for node in [&a, &b] {
        node.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, extra TEXT)");
    }
    a.sql("INSERT INTO t VALUES (1, 'one', 'x')");
    assert_eq!(codes(&b.apply(&a.log())), ["applied"]);
    for node in [&a, &b] {
        node.sql("ALTER TABLE t DROP COLUMN extra");
    }
    a.sql("UPDATE t SET v = 'uno'");
    let log = a.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(codes(&b.apply(&log[1..])), ["applied"]);
    assert_eq!(b.column("t", "v"), ["uno"]);
    // But entries that write the dropped column again are refused: A adds
    // it back (row 1's value becomes NULL, a write) and inserts a row.
    a.sql("ALTER TABLE t ADD COLUMN extra TEXT; INSERT INTO t VALUES (2, 'two', 'y')");
    let log = a.log();
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(codes(&b.apply(&log[2..])), ["column", "column"]);
    b.check();
}

#[test]
fn replay_applies_what_now_passes_and_a_node_relays_no_origin_past_its_quarantine() {
    let a = Node::new(|_| {});
    a.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE u (id INTEGER PRIMARY KEY, n INTEGER)",
    );
    a.sql("INSERT INTO t VALUES (1, 'one')");
    a.sql("INSERT INTO u VALUES (1, 10)");
    a.sql("INSERT INTO u VALUES (2, 20)");
    a.sql("INSERT INTO t VALUES (2, 'two')");
    let log = a.log();
    assert_eq!(log.len(), 4, "{log:?}");
    let origin = log[0].origin;
    let b = Node::new(|_| {});
    b.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)");
    assert_eq!(
        codes(&b.apply(&log)),
        ["applied", "table", "table", "applied"]
    );
    assert_eq!(
        b.quarantined(),
        [(origin, 2, "table".into()), (origin, 3, "table".into())]
    );
    // Held: the vector counts the quarantine.
    assert_eq!(b.db.events().log_vector().get(origin), 4);
    assert_eq!(b.db.log().quarantine_count().unwrap(), 2);
    b.check();

    // A peer fetching A's entries from B gets them up to the gap only.
    let fetch = |from: u64| -> Vec<u64> {
        let after = VersionVector(std::iter::once((origin, from)).collect());
        let upto = b.db.events().log_vector();
        b.db.log()
            .read(&after, &upto, 100, 1 << 20, i64::MAX, &Default::default())
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(fetch(0), [1]);
    assert!(fetch(1).is_empty());

    // Nothing to replay yet: still refused, reason and time updated.
    let report =
        b.rt.block_on(b.db.replay_quarantine(Filter::default(), 100))
            .unwrap();
    assert_eq!(
        (report.replayed, report.still_refused, report.remaining),
        (0, 2, 2)
    );
    assert_eq!(report.reasons.get("table"), Some(&2));

    // The operator creates the table; a replay of one origin's entries,
    // one per call, moves them to the log.
    b.sql("CREATE TABLE u (id INTEGER PRIMARY KEY, n INTEGER)");
    let mut changes = b.db.events().subscribe();
    let mut watch = b.db.events().log_watch();
    watch.mark_unchanged();
    let filter = Filter {
        origin: Some(origin),
        code: Some("table".into()),
        after: None,
    };
    let first =
        b.rt.block_on(b.db.replay_quarantine(filter.clone(), 1))
            .unwrap();
    assert_eq!(
        (
            first.replayed,
            first.still_refused,
            first.remaining,
            first.last
        ),
        (1, 0, 1, Some((origin, 2)))
    );
    let second =
        b.rt.block_on(b.db.replay_quarantine(
            Filter {
                after: first.last,
                ..filter
            },
            1,
        ))
        .unwrap();
    assert_eq!((second.replayed, second.remaining), (1, 0));
    assert!(b.quarantined().is_empty());
    assert_eq!(b.column("u", "n"), ["10", "20"]);
    // Announced like any applied entry: links wake (the vector is the
    // same) and the feed sees the rows.
    assert!(watch.has_changed().unwrap());
    assert_eq!(b.db.events().log_vector().get(origin), 4);
    let announced = changes.try_recv().expect("a change event");
    assert_eq!((announced[0].origin, announced[0].seq), (origin, 2));
    // Now a peer gets all of them.
    assert_eq!(fetch(0), [1, 2, 3, 4]);
    b.check();
    // Sent again, they are duplicates.
    assert_eq!(codes(&b.apply(&log)), ["duplicate"; 4]);
}

// ---------------------------------------------------------------------------
// Real processes

const WAIT: Duration = Duration::from_secs(30);

fn start_node(ca: &Path, peers: Vec<String>) -> Server {
    let node = Server::start_with(Options {
        ca_dir: Some(ca),
        sync_listen: Some("127.0.0.1:0".into()),
        peers,
        env: sync_env(),
        ..Options::default()
    });
    assert!(node.sync.is_some(), "no sync listener");
    node
}

/// `outpost quarantine <args> --data-dir DIR`: (success, stdout, stderr).
fn quarantine(node: &Server, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["quarantine"];
    all.extend_from_slice(args);
    all.extend(["--data-dir", node.data_dir().to_str().unwrap()]);
    let (status, out, err) = run(&all);
    (status.success(), out, err)
}

fn list_json(node: &Server, extra: &[&str]) -> Vec<Json> {
    let mut args = vec!["list", "--json"];
    args.extend_from_slice(extra);
    let (ok, out, err) = quarantine(node, &args);
    assert!(ok, "quarantine list --json failed: {out}{err}");
    serde_json::from_str::<Json>(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("not an array: {out}"))
}

/// `SELECT id, <col> FROM table ORDER BY id` as plain JSON pairs.
fn table(node: &Server, table: &str, col: &str) -> Vec<(Json, Json)> {
    node.rows(
        &format!("SELECT id, {col} FROM {table} ORDER BY id"),
        vec![],
    )
    .iter()
    .map(|r| (plain(&r[0]), plain(&r[1])))
    .collect()
}

fn quarantined(node: &Server) -> Json {
    node.status()["quarantined"].clone()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs statements in one transaction (a Hrana `sequence`).
fn sequence(node: &Server, sql: &str) {
    let body = json!({"baton": null, "requests": [
        {"type": "sequence", "sql": sql},
        {"type": "close"},
    ]})
    .to_string();
    let (code, reply) = common::post(
        &format!("{}/v2/pipeline", node.api),
        node.token.as_deref(),
        &body,
    );
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["results"][0]["type"], "ok", "{sql}: {reply}");
}

#[test]
fn a_table_a_node_lacks_is_quarantined_listed_replayed_and_relayed() {
    let ca = tempfile::tempdir().unwrap();
    let a = start_node(ca.path(), vec![]);
    let b = start_node(ca.path(), vec![a.sync.clone().unwrap()]);
    // C links to B only: it gets A's entries through B.
    let c = start_node(ca.path(), vec![b.sync.clone().unwrap()]);
    let shared = "CREATE TABLE shared (id INTEGER PRIMARY KEY, v TEXT)";
    let only_a = "CREATE TABLE only_a (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)";
    for node in [&a, &c] {
        node.sql(shared, vec![]);
        node.sql(only_a, vec![]);
    }
    b.sql(shared, vec![]);
    let (a_id, b_id) = (a.node_id(), b.node_id());
    let a_origin = a.status()["origin"].as_str().unwrap().to_string();
    wait_for("links up", || {
        let peers = |n: &Server| n.status()["peers"].as_array().cloned().unwrap_or_default();
        let up = |n: &Server, id: &str| {
            peers(n)
                .iter()
                .any(|p| p["node_id"] == id && p["state"] == "connected")
        };
        up(&b, &a_id) && up(&c, &b_id)
    });

    // A's seq 1..2: shared rows; 3..5: only_a rows; 6: a shared row.
    a.sql("INSERT INTO shared VALUES (1, 'one')", vec![]);
    a.sql("INSERT INTO shared VALUES (2, 'two')", vec![]);
    for i in 1..=3 {
        a.sql(
            &format!("INSERT INTO only_a VALUES ({i}, {})", i * 10),
            vec![],
        );
    }
    a.sql("INSERT INTO shared VALUES (3, 'three')", vec![]);

    wait_for("B holds A's six entries", || {
        quarantined(&b) == json!(3) && table(&b, "shared", "v").len() == 3
    });
    wait_for("C gets A's entries up to the first quarantined one", || {
        table(&c, "shared", "v").len() == 2
    });
    // B does not relay A's entries past the gap: C would lack seq 3..5 for good.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        table(&c, "shared", "v").len(),
        2,
        "C got A's seq 6 past the gap"
    );
    assert!(table(&c, "only_a", "n").is_empty());
    for node in [&a, &b, &c] {
        let (ok, out) = node.check(&[]);
        assert!(ok, "check:\n{out}");
    }

    // Listed: text and JSON.
    let (ok, out, err) = quarantine(&b, &["list"]);
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("origin") && lines[0].contains("when (UTC)"),
        "{out}"
    );
    assert_eq!(lines.len(), 4, "{out}");
    for (i, line) in lines[1..].iter().enumerate() {
        assert!(line.starts_with(&a_origin), "{line}");
        assert!(line.contains(&format!(" {} ", i + 3)), "seq in {line}");
        for word in ["only_a", "table", &a_id, "not replicated here", "Z"] {
            assert!(line.contains(word), "{word:?} in {line}");
        }
    }
    let listed = list_json(&b, &[]);
    assert_eq!(listed.len(), 3, "{listed:?}");
    for (i, e) in listed.iter().enumerate() {
        assert_eq!(e["origin"], json!(a_origin));
        assert_eq!(e["seq"], json!(i + 3));
        assert_eq!(e["table"], "only_a");
        assert_eq!(e["key"], json!((i + 1).to_string()));
        assert_eq!(e["peer"], json!(a_id));
        assert_eq!(e["code"], "table");
        assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    assert_eq!(list_json(&b, &["--limit", "2"]).len(), 2);
    assert!(list_json(&b, &["--code", "constraint"]).is_empty());
    let (code, body) = common::get(&format!("{}/quarantine?limit=1", b.admin));
    assert_eq!(code, 200, "{body}");
    let listed: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["seq"], 3);
    let (status, status_out, _) = run(&["status", "--admin", &b.admin]);
    assert!(status.success(), "{status_out}");
    assert!(
        status_out
            .lines()
            .any(|l| l.starts_with("quarantined") && l.trim_end().ends_with(" 3")),
        "{status_out}"
    );

    // Offline replay is refused while B serves.
    let (ok, out, err) = quarantine(&b, &["replay"]);
    assert!(!ok, "offline replay next to serve succeeded: {out}");
    assert!(err.contains("--admin"), "{err}");

    // Replayed before the cause is fixed: still refused.
    let (status, out, err) = run(&["quarantine", "replay", "--admin", &b.admin]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("replayed 0 entries, 3 still refused (reasons: table 3)"),
        "{out}"
    );

    // The operator creates the table, then replays.
    b.sql(only_a, vec![]);
    let (status, out, err) = run(&[
        "quarantine",
        "replay",
        "--admin",
        &b.admin,
        "--code",
        "table",
    ]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("replayed 3 entries, 0 still refused"), "{out}");
    assert_eq!(quarantined(&b), json!(0));
    assert!(list_json(&b, &[]).is_empty());
    let rows = vec![
        (json!(1), json!(10)),
        (json!(2), json!(20)),
        (json!(3), json!(30)),
    ];
    assert_eq!(table(&b, "only_a", "n"), rows);

    // C, linked to B only, gets the replayed entries and A's seq 6.
    wait_for("C gets the replayed rows through B", || {
        table(&c, "only_a", "n") == rows && table(&c, "shared", "v").len() == 3
    });
    let digests: Vec<String> = [&a, &b, &c].iter().map(|n| n.digest()).collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "digests differ: {digests:?}"
    );
    for node in [&a, &b, &c] {
        let (ok, out) = node.check(&[]);
        assert!(ok, "check:\n{out}");
    }
}

#[test]
fn a_check_a_node_relaxes_is_replayed_offline() {
    let ca = tempfile::tempdir().unwrap();
    let a = start_node(ca.path(), vec![]);
    let b = start_node(ca.path(), vec![a.sync.clone().unwrap()]);
    a.sql("CREATE TABLE c (id INTEGER PRIMARY KEY, n INTEGER)", vec![]);
    b.sql(
        "CREATE TABLE c (id INTEGER PRIMARY KEY, n INTEGER CHECK (n < 10))",
        vec![],
    );
    a.sql("INSERT INTO c VALUES (1, 5)", vec![]);
    a.sql("INSERT INTO c VALUES (2, 50)", vec![]);
    a.sql("INSERT INTO c VALUES (3, 7)", vec![]);
    wait_for("B applies two rows and quarantines one", || {
        quarantined(&b) == json!(1) && table(&b, "c", "n").len() == 2
    });
    let listed = list_json(&b, &["--code", "constraint"]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["key"], "2");
    assert!(
        listed[0]["reason"].as_str().unwrap().contains("CHECK"),
        "{listed:?}"
    );
    let (ok, out) = b.check(&[]);
    assert!(ok, "{out}");

    // SQLite cannot alter a CHECK: B recreates the table, in one transaction.
    sequence(
        &b,
        "BEGIN;
         CREATE TABLE c_new (id INTEGER PRIMARY KEY, n INTEGER CHECK (n < 100));
         INSERT INTO c_new SELECT * FROM c;
         DROP TABLE c;
         ALTER TABLE c_new RENAME TO c;
         COMMIT",
    );
    // Offline: B stops, replays, starts again.
    let mut b = b;
    b.terminate();
    let (ok, out, err) = quarantine(&b, &["replay", "--code", "constraint"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("replayed 1 entries, 0 still refused"), "{out}");
    let b = b.restart(Options {
        sync_listen: Some("127.0.0.1:0".into()),
        peers: vec![a.sync.clone().unwrap()],
        env: sync_env(),
        ..Options::default()
    });
    assert_eq!(quarantined(&b), json!(0));
    let (ok, out) = b.check(&[]);
    assert!(ok, "{out}");
    // The row A wrote is there, and the nodes agree.
    wait_for("A and B converge", || {
        table(&b, "c", "n") == table(&a, "c", "n")
    });
    assert_eq!(
        table(&b, "c", "n"),
        [
            (json!(1), json!(5)),
            (json!(2), json!(50)),
            (json!(3), json!(7))
        ]
    );
    assert_eq!(a.digest(), b.digest());
}

/// An entry stamped far in the future (a wild clock or a crafted stamp) is
/// refused (`clock`), and this node's own clock does not follow it: its
/// next local write is stamped near its wall clock, not at the end of the
/// range, where it would lose every conflict (found by the `apply_entry`
/// fuzz target: the clock overflowed).
#[test]
fn a_stamp_from_the_far_future_is_refused_and_not_followed() {
    let a = Node::new(|_| {});
    a.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)");
    a.sql("INSERT INTO t VALUES (1, 'one')");
    let good = &a.log()[0];
    let b = Node::new(|_| {});
    b.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)");
    let future = from_stranger(good, 1, |e| e.hlc = u64::MAX);
    assert_eq!(codes(&b.apply(&[future])), ["clock"]);
    b.sql("INSERT INTO t VALUES (2, 'two')");
    let mine = b
        .log()
        .into_iter()
        .find(|e| e.key == "2")
        .expect("b's write");
    let wall_ms = mine.hlc >> 16;
    let now = outpost::crdt::Hlc::now_ms();
    assert!(
        wall_ms <= now && wall_ms + 60_000 > now,
        "stamped at {wall_ms}, now {now}"
    );
    b.check();
}
