//! Schema versions across a cluster: migrations (`outpost migrate`, `[schema]`)
//! and what replication does while nodes are at different versions.
//!
//! What this file defends is DESIGN.md's promise 4, *no silent loss across
//! schema versions*:
//!
//! - a node never applies an entry written under a newer schema version than
//!   its own (it would drop the columns it does not know); the newer peer
//!   withholds those entries, keeps them in its log, and the older node shows
//!   the link as `paused` (`/status`, `outpost_sync_paused{reason="schema"}`)
//!   while it keeps serving reads and writes;
//! - once the older node gets the migration (by itself with `auto_migrate`,
//!   or by `outpost migrate --admin`), it receives everything it was missing,
//!   and both nodes end with every value written on either side;
//! - entries from an older version keep flowing to the newer node and apply
//!   through its schema: surviving columns keep their values, new columns
//!   their defaults, dropped columns are ignored and counted
//!   (`outpost_sync_ignored_values_total`), never silently;
//! - two nodes at the same version with different schemas (different hashes)
//!   apply nothing from each other;
//! - migrations are applied in order, atomically, and an applied file that
//!   changed afterwards is an error, never skipped; capture covers what a
//!   migration adds at once.
//!
//! Every test starts real `outpost` processes (tests/common); nodes of one
//! test share a cluster CA. `OUTPOST_SCHEMA_LOG` sets the nodes' log filter
//! (default `warn`; e.g. `info,outpost::sync=debug`).

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{int_arg, plain, sync_env, text_arg, Options, Server};

/// The example schema the repository ships (projects, tasks, comments).
const INIT_SQL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/migrations/0001_init.sql"
));
const INIT: &str = "0001_init.sql";

const PRIORITY: &str = "0002_task_priority.sql";
const PRIORITY_SQL: &str = "ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;\n\
     CREATE TABLE labels (id TEXT PRIMARY KEY, task_id TEXT NOT NULL, name TEXT NOT NULL);\n";

/// Generous: every wait polls, and returns as soon as its condition holds.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Plumbing

fn log_filter() -> String {
    std::env::var("OUTPOST_SCHEMA_LOG").unwrap_or_else(|_| "warn".into())
}

/// A migrations directory holding the repository's `0001_init.sql` and
/// `extra` (file name, SQL).
fn migrations(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add_migration(dir.path(), INIT, INIT_SQL);
    for (name, sql) in extra {
        add_migration(dir.path(), name, sql);
    }
    dir
}

/// Puts a migration file into `dir` atomically (written under a name that
/// is not `*.sql`, then renamed), so a node watching the directory never
/// reads a half-written file.
fn add_migration(dir: &Path, name: &str, sql: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, sql).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Starts a node certified by the CA in `ca`, with a sync listener, the
/// migrations in `mig`, a quick schema recheck, `peers` and `env` (which
/// can override the defaults).
fn start_node(ca: &Path, mig: &Path, peers: Vec<String>, env: &[(&'static str, &str)]) -> Server {
    let mut all = sync_env();
    all.push(("OUTPOST_LOG", log_filter()));
    all.push(("OUTPOST_SCHEMA_MIGRATIONS", mig.to_str().unwrap().into()));
    all.push(("OUTPOST_SCHEMA_RECHECK_INTERVAL", "200ms".into()));
    all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    let node = Server::start_with(Options {
        ca_dir: Some(ca),
        sync_listen: Some("127.0.0.1:0".into()),
        peers,
        env: all,
        ..Options::default()
    });
    assert!(
        node.sync.is_some(),
        "a node inited with --ca-dir printed no sync= on its READY line (api {})",
        node.api
    );
    node
}

/// `outpost migrate --admin <node's admin URL>`: (exit 0, stdout, stderr).
fn migrate_admin(node: &Server) -> (bool, String, String) {
    let (status, out, err) = common::run(&["migrate", "--admin", &node.admin]);
    (status.success(), out, err)
}

/// `outpost migrate --data-dir D [--migrations M]`: (exit 0, stdout, stderr).
fn migrate_offline(dir: &Path, mig: Option<&Path>) -> (bool, String, String) {
    let mut args = vec!["migrate", "--data-dir", dir.to_str().unwrap()];
    if let Some(m) = mig {
        args.extend(["--migrations", m.to_str().unwrap()]);
    }
    let (status, out, err) = common::run(&args);
    (status.success(), out, err)
}

/// Status, metrics of interest and recent stderr of each node, for failure
/// messages.
fn report(nodes: &[(&str, &Server)]) -> String {
    let mut out = String::new();
    for (name, n) in nodes {
        let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| n.status()))
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "(no status)".into());
        out += &format!("--- {name} ({}) status: {status}\n", n.api);
        let url = format!("{}/metrics", n.admin);
        if let Ok((_, metrics)) = std::panic::catch_unwind(|| common::get(&url)) {
            for l in metrics.lines().filter(|l| {
                !l.starts_with('#')
                    && (l.contains("outpost_sync_paused")
                        || l.contains("outpost_schema")
                        || l.contains("ignored_values")
                        || l.contains("outpost_sync_rejected"))
            }) {
                out += &format!("    {name} metric | {l}\n");
            }
        }
        let lines = n.stderr_lines();
        let skip = lines.len().saturating_sub(40);
        for l in &lines[skip..] {
            out += &format!("    {name} | {l}\n");
        }
    }
    out
}

/// Polls `f` every 100 ms until it holds; after `timeout` panics with `what`
/// and a report on `nodes`. Returns how long it took.
fn wait_for(
    what: &str,
    timeout: Duration,
    nodes: &[(&str, &Server)],
    mut f: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            panic!("{what}: not within {timeout:?}\n{}", report(nodes));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// `check --digest` of both nodes, or None if a check failed.
fn digests(a: &Server, b: &Server) -> (Option<String>, Option<String>) {
    let d = |n: &Server| {
        let (ok, out) = n.check(&["--digest"]);
        if ok {
            common::digest_of(&out)
        } else {
            None
        }
    };
    (d(a), d(b))
}

/// Waits until both nodes pass `outpost check` with the same digest.
fn wait_converged(what: &str, a: &Server, b: &Server) -> Duration {
    wait_for(what, WAIT, &[("A", a), ("B", b)], || {
        let (da, db) = digests(a, b);
        da.is_some() && da == db
    })
}

/// `peers` entries of `node`'s `/status` for the peer `node_id`.
fn peer_entries(node: &Server, node_id: &str) -> Vec<Value> {
    node.status()["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["node_id"] == node_id)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `node` shows the peer `node_id` paused with a reason starting
/// with `prefix`.
fn shows_paused(node: &Server, node_id: &str, prefix: &str) -> bool {
    peer_entries(node, node_id).iter().any(|p| {
        p["state"] == "paused" && p["paused"].as_str().is_some_and(|r| r.starts_with(prefix))
    })
}

/// Whether `node` shows the peer `node_id` connected and not paused.
fn shows_connected(node: &Server, node_id: &str) -> bool {
    let entries = peer_entries(node, node_id);
    entries.iter().any(|p| p["state"] == "connected")
        && entries.iter().all(|p| p["paused"].is_null())
}

/// The value of the first sample of metric `name` whose labels include
/// `labels`, from `node`'s admin `/metrics`.
fn metric(node: &Server, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (code, body) = common::get(&format!("{}/metrics", node.admin));
    assert_eq!(code, 200, "GET /metrics: {body}");
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.trim().rsplit_once(' ') else {
            continue;
        };
        let (n, lbls) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have: Vec<(&str, &str)> = lbls
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if labels.iter().all(|l| have.contains(l)) {
            return value.parse().ok();
        }
    }
    None
}

fn schema_version(node: &Server) -> i64 {
    let s = node.status();
    s["schema_version"]
        .as_i64()
        .unwrap_or_else(|| panic!("no schema_version in /status: {s}"))
}

/// The column names of `table` on `node` (empty if there is no such table).
fn columns(node: &Server, table: &str) -> Vec<String> {
    if !table_exists(node, table) {
        return Vec::new();
    }
    let r = node.sql(&format!("SELECT * FROM {table} LIMIT 0"), vec![]);
    r["cols"]
        .as_array()
        .unwrap_or_else(|| panic!("no cols in {r}"))
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn table_exists(node: &Server, table: &str) -> bool {
    let rows = node.rows(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
        vec![text_arg(table)],
    );
    plain(&rows[0][0]) == json!(1)
}

/// Every row of `table` on `node` as id → {column: value} (plain JSON).
fn table(node: &Server, table: &str) -> BTreeMap<String, Value> {
    let r = node.sql(&format!("SELECT * FROM {table} ORDER BY id"), vec![]);
    let cols: Vec<String> = r["cols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let mut out = BTreeMap::new();
    for row in r["rows"].as_array().unwrap() {
        let obj: serde_json::Map<String, Value> = cols
            .iter()
            .zip(row.as_array().unwrap())
            .map(|(c, v)| (c.clone(), plain(v)))
            .collect();
        out.insert(obj["id"].as_str().unwrap().to_string(), Value::Object(obj));
    }
    out
}

/// One row of `table` by id, as {column: value}, or None.
fn row(node: &Server, tbl: &str, id: &str) -> Option<Value> {
    table(node, tbl).remove(id)
}

fn insert_project(node: &Server, id: &str) {
    node.sql(
        "INSERT INTO projects (id, name) VALUES (?, ?)",
        vec![text_arg(id), text_arg(&format!("project {id}"))],
    );
}

fn insert_task(node: &Server, id: &str, project: &str) {
    node.sql(
        "INSERT INTO tasks (id, project_id, title) VALUES (?, ?, ?)",
        vec![
            text_arg(id),
            text_arg(project),
            text_arg(&format!("task {id}")),
        ],
    );
}

fn insert_task_with_priority(node: &Server, id: &str, project: &str, priority: i64) {
    node.sql(
        "INSERT INTO tasks (id, project_id, title, priority) VALUES (?, ?, ?, ?)",
        vec![
            text_arg(id),
            text_arg(project),
            text_arg(&format!("task {id}")),
            int_arg(priority),
        ],
    );
}

fn set_priority(node: &Server, id: &str, priority: i64) {
    node.sql(
        "UPDATE tasks SET priority = ? WHERE id = ?",
        vec![int_arg(priority), text_arg(id)],
    );
}

fn set_title(node: &Server, id: &str, title: &str) {
    node.sql(
        "UPDATE tasks SET title = ? WHERE id = ?",
        vec![text_arg(title), text_arg(id)],
    );
}

fn insert_label(node: &Server, id: &str, task: &str, name: &str) {
    node.sql(
        "INSERT INTO labels (id, task_id, name) VALUES (?, ?, ?)",
        vec![text_arg(id), text_arg(task), text_arg(name)],
    );
}

/// The field `col` of task `id` on `node` (Null if the row or column is missing).
fn task_field(node: &Server, id: &str, col: &str) -> Value {
    row(node, "tasks", id).map_or(Value::Null, |r| r[col].clone())
}

/// Asserts `node` is still at version 1 without any trace of 0002.
fn assert_v1_without_0002(node: &Server, what: &str) {
    assert_eq!(schema_version(node), 1, "{what}: schema version");
    let cols = columns(node, "tasks");
    assert!(
        !cols.iter().any(|c| c == "priority"),
        "{what}: tasks got a priority column without the migration: {cols:?}"
    );
    assert!(
        !table_exists(node, "labels"),
        "{what}: a labels table exists without the migration"
    );
}

/// Asserts that queries through `node`'s API see 0002_task_priority at once
/// (statements prepared before the migration included): `SELECT *` returns
/// the new column, with its value, on every reader.
fn assert_api_sees_v2(node: &Server, what: &str) {
    for i in 0..8 {
        let cols = columns(node, "tasks");
        assert!(
            cols.iter().any(|c| c == "priority"),
            "{what}: query {i} through the API got the pre-migration columns of tasks \
             {cols:?} (schema version {})",
            schema_version(node)
        );
    }
}

/// Starts A and B at version 1 (A lists B), writes on both and waits until
/// they converge. Returns (ca, A's migrations, B's migrations, A, B).
fn two_nodes_at_v1(
    b_env: &[(&'static str, &str)],
) -> (
    tempfile::TempDir,
    tempfile::TempDir,
    tempfile::TempDir,
    Server,
    Server,
) {
    let ca = tempfile::tempdir().unwrap();
    let a_mig = migrations(&[]);
    let b_mig = migrations(&[]);
    let b = start_node(ca.path(), b_mig.path(), vec![], b_env);
    let a = start_node(ca.path(), a_mig.path(), vec![b.sync.clone().unwrap()], &[]);
    assert_eq!(schema_version(&a), 1);
    assert_eq!(schema_version(&b), 1);

    insert_project(&a, "pa");
    insert_task(&a, "a1", "pa");
    insert_task(&a, "a2", "pa");
    insert_project(&b, "pb");
    insert_task(&b, "b1", "pb");
    insert_task(&b, "b2", "pb");
    wait_converged("A and B converge at version 1", &a, &b);
    (ca, a_mig, b_mig, a, b)
}

/// Adds 0002_task_priority to A's directory and has the running A apply it.
fn migrate_a_to_v2(a: &Server, a_mig: &Path) {
    add_migration(a_mig, PRIORITY, PRIORITY_SQL);
    let (ok, out, err) = migrate_admin(a);
    assert!(ok, "outpost migrate --admin A failed:\n{out}\n{err}");
    assert!(
        out.contains("applied 0002_task_priority (schema version 2)"),
        "outpost migrate --admin A printed:\n{out}\n{err}"
    );
    assert_eq!(schema_version(a), 2);
    let cols = columns(a, "tasks");
    assert!(cols.iter().any(|c| c == "priority"), "A's tasks: {cols:?}");
    assert!(table_exists(a, "labels"));
}

// ---------------------------------------------------------------------------
// Replication across versions

/// A migrates to v2 and keeps writing (new column, new table, updates of
/// B's rows); B, still at v1, pauses the link from A instead of applying
/// v2 entries, keeps serving, and its own writes keep reaching A. When the
/// file lands in B's directory, B migrates by itself (auto_migrate), resumes
/// and ends with every value written on either side.
#[test]
fn silent_loss_replayed_b_pauses_then_migrates_and_converges() {
    let (_ca, a_mig, b_mig, a, b) = two_nodes_at_v1(&[]);
    let nodes = [("A", &a), ("B", &b)];
    let a_id = a.node_id();
    let b_id = b.node_id();

    migrate_a_to_v2(&a, a_mig.path());
    // A writes under v2: new rows with a priority, priorities of existing
    // rows (its own and B's), rows of the new table.
    insert_task_with_priority(&a, "a3", "pa", 3);
    insert_task_with_priority(&a, "a4", "pa", 7);
    set_priority(&a, "a1", 4);
    set_priority(&a, "b1", 9);
    insert_label(&a, "l1", "a1", "urgent");
    insert_label(&a, "l2", "b1", "bug");
    let a_check = a.check(&[]);
    assert!(a_check.0, "check on A after its migration:\n{}", a_check.1);

    // B, at v1 (auto_migrate on, but no file yet), keeps writing.
    insert_task(&b, "b3", "pb");
    set_title(&b, "a1", "a1 by B");
    b.sql("UPDATE tasks SET done = 1 WHERE id = 'b1'", vec![]);

    wait_for("B shows A paused (schema:)", WAIT, &nodes, || {
        shows_paused(&b, &a_id, "schema:")
    });
    wait_for(
        "B's outpost_sync_paused{reason=\"schema\"} is 1",
        WAIT,
        &nodes,
        || {
            metric(
                &b,
                "outpost_sync_paused",
                &[("peer", &a_id), ("reason", "schema")],
            ) == Some(1.0)
        },
    );
    let s = b.status();
    assert_eq!(s["schema"]["waiting_for"], json!(2), "B's /status: {s}");
    assert_eq!(s["schema"]["version"], json!(1), "B's /status: {s}");
    assert_eq!(s["schema"]["auto_migrate"], json!(true), "B's /status: {s}");
    let peer_a = peer_entries(&b, &a_id);
    assert!(
        peer_a.iter().any(|p| p["schema_version"] == json!(2)),
        "B's entries for A: {peer_a:?}"
    );
    assert_v1_without_0002(&b, "B while paused");

    // Paused is not down: B keeps serving reads and writes.
    insert_task(&b, "b4", "pb");
    set_title(&b, "b2", "b2 renamed");
    assert_eq!(task_field(&b, "b4", "title"), json!("task b4"));

    // B's writes (v1) reach A and apply through A's v2 schema: new rows get
    // the default priority, updates keep A's priorities.
    wait_for("A receives B's v1 writes", WAIT, &nodes, || {
        task_field(&a, "b3", "priority") == json!(0)
            && task_field(&a, "b4", "priority") == json!(0)
            && task_field(&a, "b2", "title") == json!("b2 renamed")
            && task_field(&a, "a1", "title") == json!("a1 by B")
            && task_field(&a, "b1", "done") == json!(1)
    });
    assert_eq!(task_field(&a, "a1", "priority"), json!(4), "A's a1");
    assert_eq!(task_field(&a, "b1", "priority"), json!(9), "A's b1");
    let (ok, out) = a.check(&[]);
    assert!(ok, "check on A after applying B's v1 entries:\n{out}");
    assert!(
        shows_connected(&a, &b_id),
        "A shows B connected\n{}",
        report(&nodes)
    );

    // Still paused; A's v2 rows are withheld from B, nothing leaked.
    assert!(shows_paused(&b, &a_id, "schema:"), "{}", report(&nodes));
    assert_v1_without_0002(&b, "B after A received its writes");
    assert_eq!(row(&b, "tasks", "a3"), None, "a v2 insert reached B at v1");
    assert_eq!(row(&b, "tasks", "a4"), None, "a v2 insert reached B at v1");

    // The file reaches B: it migrates by itself and catches up.
    add_migration(b_mig.path(), PRIORITY, PRIORITY_SQL);
    let took = wait_for("B migrates to v2 by itself", WAIT, &nodes, || {
        schema_version(&b) == 2
    });
    eprintln!("B migrated {took:.1?} after the file appeared (recheck_interval 200ms)");
    assert_api_sees_v2(&b, "B after migrating by itself");
    let took = wait_converged("A and B converge at version 2", &a, &b);
    eprintln!("converged {took:.1?} after B's migration");

    let expect_tasks = [
        ("a1", "a1 by B", 0, 4),
        ("a2", "task a2", 0, 0),
        ("a3", "task a3", 0, 3),
        ("a4", "task a4", 0, 7),
        ("b1", "task b1", 1, 9),
        ("b2", "b2 renamed", 0, 0),
        ("b3", "task b3", 0, 0),
        ("b4", "task b4", 0, 0),
    ];
    for node in [&a, &b] {
        let tasks = table(node, "tasks");
        assert_eq!(
            tasks.len(),
            expect_tasks.len(),
            "{}: tasks {tasks:?}",
            node.api
        );
        for (id, title, done, priority) in expect_tasks {
            let r = &tasks[id];
            assert_eq!(
                (&r["title"], &r["done"], &r["priority"]),
                (&json!(title), &json!(done), &json!(priority)),
                "{}: task {id}: {r}",
                node.api
            );
        }
        let labels = table(node, "labels");
        assert_eq!(
            labels.values().cloned().collect::<Vec<_>>(),
            vec![
                json!({"id": "l1", "task_id": "a1", "name": "urgent"}),
                json!({"id": "l2", "task_id": "b1", "name": "bug"}),
            ],
            "{}: labels",
            node.api
        );
        assert_eq!(table(node, "projects").len(), 2);
    }
    assert_eq!(table(&a, "tasks"), table(&b, "tasks"));

    wait_for("B shows A connected again", WAIT, &nodes, || {
        shows_connected(&b, &a_id)
    });
    wait_for("B's paused metric back to 0", WAIT, &nodes, || {
        matches!(
            metric(
                &b,
                "outpost_sync_paused",
                &[("peer", &a_id), ("reason", "schema")]
            ),
            None | Some(0.0)
        )
    });
    let s = b.status();
    assert!(s["schema"]["waiting_for"].is_null(), "B's /status: {s}");
    assert_eq!(s["schema"]["pending"], json!([]), "B's /status: {s}");
    assert_eq!(
        s["schema_hash"],
        a.status()["schema_hash"],
        "same migrations, same hash"
    );
    assert_eq!(metric(&b, "outpost_schema_version", &[]), Some(2.0));
    for (name, node) in nodes {
        let (ok, out) = node.check(&[]);
        assert!(ok, "check on {name}:\n{out}");
    }
}

/// With `auto_migrate = false` the file alone changes nothing: B lists the
/// migration as pending and stays paused until the operator runs
/// `outpost migrate --admin`.
#[test]
fn without_auto_migrate_stays_paused_until_operator_migrates() {
    let (_ca, a_mig, b_mig, a, b) = two_nodes_at_v1(&[("OUTPOST_SCHEMA_AUTO_MIGRATE", "false")]);
    let nodes = [("A", &a), ("B", &b)];
    let a_id = a.node_id();

    migrate_a_to_v2(&a, a_mig.path());
    set_priority(&a, "b1", 6);
    insert_task_with_priority(&a, "a3", "pa", 2);
    insert_label(&a, "l1", "b1", "later");
    insert_task(&b, "b3", "pb");

    wait_for("B shows A paused (schema:)", WAIT, &nodes, || {
        shows_paused(&b, &a_id, "schema:")
    });
    wait_for("A receives B's v1 write", WAIT, &nodes, || {
        task_field(&a, "b3", "priority") == json!(0)
    });
    let s = b.status();
    assert_eq!(
        s["schema"]["auto_migrate"],
        json!(false),
        "B's /status: {s}"
    );
    assert_eq!(s["schema"]["waiting_for"], json!(2), "B's /status: {s}");

    add_migration(b_mig.path(), PRIORITY, PRIORITY_SQL);
    wait_for("B lists 2 as pending", WAIT, &nodes, || {
        let s = b.status();
        s["schema"]["pending"]
            .as_array()
            .is_some_and(|p| p.contains(&json!(2)))
    });
    // A couple of seconds, i.e. many recheck intervals: B does not migrate.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let s = b.status();
        assert_eq!(s["schema_version"], json!(1), "B migrated by itself: {s}");
        assert_eq!(s["schema"]["pending"], json!([2]), "B's /status: {s}");
        assert_eq!(s["schema"]["waiting_for"], json!(2), "B's /status: {s}");
        assert!(
            shows_paused(&b, &a_id, "schema:"),
            "B stopped showing A paused\n{}",
            report(&nodes)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_v1_without_0002(&b, "B with the file but auto_migrate off");
    assert_eq!(
        metric(
            &b,
            "outpost_sync_paused",
            &[("peer", &a_id), ("reason", "schema")]
        ),
        Some(1.0)
    );

    let (ok, out, err) = migrate_admin(&b);
    assert!(
        ok,
        "outpost migrate --admin B failed:\n{out}\n{err}\n{}",
        report(&nodes)
    );
    assert!(
        out.contains("applied 0002_task_priority (schema version 2)"),
        "outpost migrate --admin B printed:\n{out}\n{err}"
    );
    assert_eq!(schema_version(&b), 2);
    assert_api_sees_v2(&b, "B after outpost migrate --admin");
    let (ok, out, err) = migrate_admin(&b);
    assert!(ok, "second outpost migrate --admin B failed:\n{out}\n{err}");
    assert!(
        out.contains("schema version 2 is up to date"),
        "second outpost migrate --admin B printed:\n{out}\n{err}"
    );

    wait_converged("A and B converge after the operator migrated B", &a, &b);
    assert_eq!(task_field(&b, "b1", "priority"), json!(6));
    assert_eq!(task_field(&b, "a3", "priority"), json!(2));
    assert_eq!(task_field(&b, "b3", "priority"), json!(0));
    assert_eq!(
        row(&b, "labels", "l1"),
        Some(json!({"id": "l1", "task_id": "b1", "name": "later"}))
    );
    wait_for("B shows A connected again", WAIT, &nodes, || {
        shows_connected(&b, &a_id)
    });
    let s = b.status();
    assert_eq!(s["schema"]["pending"], json!([]), "B's /status: {s}");
    assert!(s["schema"]["waiting_for"].is_null(), "B's /status: {s}");
}

/// Same version, different schemas: neither node applies anything from the
/// other, not even rows of tables both have.
#[test]
fn equal_versions_with_different_hashes_never_apply() {
    let ca = tempfile::tempdir().unwrap();
    let a_mig = migrations(&[(PRIORITY, PRIORITY_SQL)]);
    let b_mig = migrations(&[(
        "0002_task_estimate.sql",
        "ALTER TABLE tasks ADD COLUMN estimate INTEGER NOT NULL DEFAULT 0;\n",
    )]);
    let b = start_node(ca.path(), b_mig.path(), vec![], &[]);
    // Written before the link exists.
    insert_project(&b, "pb");
    b.sql(
        "INSERT INTO tasks (id, project_id, title, estimate) VALUES ('tb', 'pb', 'by B', 5)",
        vec![],
    );
    let a = start_node(ca.path(), a_mig.path(), vec![b.sync.clone().unwrap()], &[]);
    let nodes = [("A", &a), ("B", &b)];
    insert_project(&a, "pa");
    insert_task_with_priority(&a, "ta", "pa", 3);
    insert_label(&a, "la", "ta", "mine");

    let (a_id, b_id) = (a.node_id(), b.node_id());
    let (sa, sb) = (a.status(), b.status());
    assert_eq!(sa["schema_version"], json!(2), "{sa}");
    assert_eq!(sb["schema_version"], json!(2), "{sb}");
    assert_ne!(
        sa["schema_hash"], sb["schema_hash"],
        "different 0002 files, same hash"
    );

    wait_for(
        "both show the other paused (schema diverged:)",
        WAIT,
        &nodes,
        || {
            shows_paused(&a, &b_id, "schema diverged:")
                && shows_paused(&b, &a_id, "schema diverged:")
        },
    );
    wait_for(
        "outpost_sync_paused{reason=\"schema_hash\"} is 1 on both",
        WAIT,
        &nodes,
        || {
            metric(
                &a,
                "outpost_sync_paused",
                &[("peer", &b_id), ("reason", "schema_hash")],
            ) == Some(1.0)
                && metric(
                    &b,
                    "outpost_sync_paused",
                    &[("peer", &a_id), ("reason", "schema_hash")],
                ) == Some(1.0)
        },
    );
    for (name, node, peer) in [("A", &a, &b_id), ("B", &b, &a_id)] {
        let entries = peer_entries(node, peer);
        assert!(
            entries.iter().any(|p| p["schema_version"] == json!(2)),
            "{name}'s entries for its peer: {entries:?}"
        );
    }

    // Written after the link came up.
    insert_project(&a, "pa2");
    a.sql(
        "UPDATE projects SET name = 'renamed by A' WHERE id = 'pa'",
        vec![],
    );
    insert_project(&b, "pb2");
    b.sql(
        "INSERT INTO tasks (id, project_id, title, estimate) VALUES ('tb2', 'pb', 'by B', 8)",
        vec![],
    );

    // A negative check: give replication ample time to do what it must not.
    std::thread::sleep(Duration::from_secs(3));
    let (pa, pb) = (table(&a, "projects"), table(&b, "projects"));
    assert_eq!(
        pa.keys().collect::<Vec<_>>(),
        ["pa", "pa2"],
        "A's projects: {pa:?}\n{}",
        report(&nodes)
    );
    assert_eq!(
        pb.keys().collect::<Vec<_>>(),
        ["pb", "pb2"],
        "B's projects: {pb:?}\n{}",
        report(&nodes)
    );
    let (ta, tb) = (table(&a, "tasks"), table(&b, "tasks"));
    assert_eq!(ta.keys().collect::<Vec<_>>(), ["ta"], "A's tasks: {ta:?}");
    assert_eq!(
        tb.keys().collect::<Vec<_>>(),
        ["tb", "tb2"],
        "B's tasks: {tb:?}"
    );
    assert!(!table_exists(&b, "labels"));
    assert!(!columns(&a, "tasks").iter().any(|c| c == "estimate"));
    assert!(!columns(&b, "tasks").iter().any(|c| c == "priority"));
    assert!(
        shows_paused(&a, &b_id, "schema diverged:"),
        "{}",
        report(&nodes)
    );
    assert!(
        shows_paused(&b, &a_id, "schema diverged:"),
        "{}",
        report(&nodes)
    );
    for (name, node) in nodes {
        let (ok, out) = node.check(&[]);
        assert!(ok, "check on {name}:\n{out}");
    }
}

/// A, at v1, keeps writing to a node at v2 whose migration added a column
/// and dropped one: A's entries apply through B's schema (title updated,
/// B's priority kept, defaults for new rows, the dropped column ignored and
/// counted); B's v2 writes stay away from A.
#[test]
fn older_entries_apply_through_the_newer_schema() {
    let ca = tempfile::tempdir().unwrap();
    let b_mig = migrations(&[(
        "0002_priority_no_author.sql",
        "ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;\n\
         ALTER TABLE comments DROP COLUMN author;\n",
    )]);
    let a_mig = migrations(&[]);
    let b = start_node(ca.path(), b_mig.path(), vec![], &[]);
    let a = start_node(
        ca.path(),
        a_mig.path(),
        vec![b.sync.clone().unwrap()],
        &[("OUTPOST_SCHEMA_AUTO_MIGRATE", "false")],
    );
    let nodes = [("A", &a), ("B", &b)];
    let (a_id, b_id) = (a.node_id(), b.node_id());
    assert_eq!(schema_version(&a), 1);
    assert_eq!(schema_version(&b), 2);
    assert_eq!(columns(&b, "comments"), ["id", "task_id", "body"]);

    insert_project(&a, "p1");
    insert_task(&a, "t1", "p1");
    a.sql(
        "INSERT INTO comments (id, task_id, author, body) VALUES ('c1', 't1', 'ann', 'hello')",
        vec![],
    );
    wait_for("B receives A's first rows", WAIT, &nodes, || {
        task_field(&b, "t1", "priority") == json!(0) && row(&b, "comments", "c1").is_some()
    });
    set_priority(&b, "t1", 5);
    // B's own v2 row: must not reach A.
    b.sql(
        "INSERT INTO tasks (id, project_id, title, priority) VALUES ('tb', 'p1', 'by B', 1)",
        vec![],
    );

    set_title(&a, "t1", "first, renamed");
    insert_task(&a, "t2", "p1");
    insert_task(&a, "t3", "p1");
    a.sql(
        "INSERT INTO comments (id, task_id, author, body) VALUES \
         ('c2', 't2', 'bob', 'second'), ('c3', 't1', 'cy', 'third')",
        vec![],
    );

    wait_for("B applies A's later writes", WAIT, &nodes, || {
        task_field(&b, "t1", "title") == json!("first, renamed")
            && row(&b, "tasks", "t3").is_some()
            && row(&b, "comments", "c3").is_some()
    });
    assert_eq!(
        task_field(&b, "t1", "priority"),
        json!(5),
        "A's title update reset B's priority"
    );
    assert_eq!(task_field(&b, "t2", "priority"), json!(0));
    assert_eq!(task_field(&b, "t3", "priority"), json!(0));
    let comments = table(&b, "comments");
    assert_eq!(
        comments.values().cloned().collect::<Vec<_>>(),
        vec![
            json!({"id": "c1", "task_id": "t1", "body": "hello"}),
            json!({"id": "c2", "task_id": "t2", "body": "second"}),
            json!({"id": "c3", "task_id": "t1", "body": "third"}),
        ],
        "B's comments"
    );
    let ignored = metric(
        &b,
        "outpost_sync_ignored_values_total",
        &[("table", "comments")],
    );
    assert!(
        ignored.is_some_and(|n| n >= 3.0),
        "outpost_sync_ignored_values_total{{table=\"comments\"}} on B: {ignored:?} \
         (3 comments carried an author)\n{}",
        report(&nodes)
    );
    let (ok, out) = b.check(&[]);
    assert!(ok, "check on B:\n{out}");

    wait_for("A shows B paused (schema:)", WAIT, &nodes, || {
        shows_paused(&a, &b_id, "schema:")
    });
    assert!(
        shows_connected(&b, &a_id),
        "B shows A connected\n{}",
        report(&nodes)
    );
    let s = a.status();
    assert_eq!(s["schema"]["waiting_for"], json!(2), "A's /status: {s}");
    assert_eq!(s["schema"]["pending"], json!([]), "A's /status: {s}");
    assert_eq!(s["schema_version"], json!(1), "A's /status: {s}");
    // A keeps everything it had and gets nothing written under v2.
    assert_eq!(
        row(&a, "tasks", "tb"),
        None,
        "B's v2 insert reached A at v1"
    );
    assert_eq!(task_field(&a, "t1", "title"), json!("first, renamed"));
    assert_eq!(
        row(&a, "comments", "c1"),
        Some(json!({"id": "c1", "task_id": "t1", "author": "ann", "body": "hello"}))
    );
    assert_eq!(columns(&a, "tasks"), ["id", "project_id", "title", "done"]);
    let (ok, out) = a.check(&[]);
    assert!(ok, "check on A:\n{out}");
}

// ---------------------------------------------------------------------------
// The migrate command and serve

/// The schema version recorded in a (stopped) node's database, and whether
/// `table` exists there.
fn db_version_and_table(dir: &Path, table: &str) -> (i64, bool) {
    let conn = libsql_sys::rusqlite::Connection::open(dir.join("outpost.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let version: i64 = conn
        .query_row(
            "SELECT value FROM _outpost_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let exists: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .unwrap();
    (version, exists == 1)
}

/// Runs `outpost serve` on `dir` with `args`, expecting it to exit before it
/// gets ready; returns (exit status, stderr). Panics (and kills it) if it is
/// still running after 30 s.
fn serve_exits(dir: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(common::bin())
        .args(["serve", "--data-dir", dir.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--sync-listen", "127.0.0.1:0"])
        .args(args)
        .env("OUTPOST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn outpost serve");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("outpost serve {args:?} was expected to fail, but still runs after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().unwrap())
}

/// `outpost migrate` offline: applies in order, one transaction each,
/// reports what it did, refuses a changed file (as does serve), and defers
/// to a running node (`--admin`).
#[test]
fn migrate_command() {
    let data = tempfile::tempdir().unwrap();
    common::init(data.path());
    let d = data.path();
    let mig = migrations(&[]);
    let m = mig.path();

    let (ok, out, err) = migrate_offline(d, Some(m));
    assert!(ok, "first migrate failed:\n{out}\n{err}");
    assert!(
        out.contains("applied 0001_init (schema version 1)"),
        "first migrate printed:\n{out}\n{err}"
    );
    assert_eq!(db_version_and_table(d, "tasks"), (1, true));
    let (ok, out, err) = migrate_offline(d, Some(m));
    assert!(ok, "second migrate failed:\n{out}\n{err}");
    assert!(
        out.contains("schema version 1 is up to date"),
        "second migrate printed:\n{out}\n{err}"
    );
    assert!(!out.contains("applied"), "second migrate printed:\n{out}");

    // A failing migration: its first statements run, then a syntax error.
    // Nothing of it may stay.
    add_migration(
        m,
        "0002_labels.sql",
        "CREATE TABLE x (id TEXT PRIMARY KEY);\n\
         INSERT INTO projects (id, name) VALUES ('p', 'half-applied');\n\
         CREATE TABLE y (\n",
    );
    let (ok, out, err) = migrate_offline(d, Some(m));
    assert!(!ok, "a bad migration succeeded:\n{out}\n{err}");
    assert!(
        err.contains("0002_"),
        "stderr does not name the file:\n{err}"
    );
    assert_eq!(
        db_version_and_table(d, "x"),
        (1, false),
        "a failed migration left something behind"
    );
    {
        let conn = libsql_sys::rusqlite::Connection::open(d.join("outpost.db")).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM projects", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "a failed migration's INSERT stayed");
    }

    // Fixed (it was never applied, so it may change): applies.
    add_migration(
        m,
        "0002_labels.sql",
        "CREATE TABLE labels (id TEXT PRIMARY KEY, task_id TEXT NOT NULL, name TEXT NOT NULL);\n",
    );
    let (ok, out, err) = migrate_offline(d, Some(m));
    assert!(ok, "the fixed migration failed:\n{out}\n{err}");
    assert!(
        out.contains("applied 0002_labels (schema version 2)"),
        "migrate printed:\n{out}\n{err}"
    );
    assert!(!out.contains("0001_init"), "0001 applied twice?\n{out}");
    assert_eq!(db_version_and_table(d, "labels"), (2, true));

    // An applied file edited afterwards: migrate and serve refuse, naming it.
    add_migration(
        m,
        INIT,
        &format!("{INIT_SQL}\n-- edited after it was applied\n"),
    );
    let (ok, out, err) = migrate_offline(d, Some(m));
    assert!(!ok, "migrate accepted a changed 0001:\n{out}\n{err}");
    assert!(
        err.contains("0001_init.sql") && err.contains("changed"),
        "migrate's error does not name the changed file:\n{err}"
    );
    let (status, err) = serve_exits(d, &["--migrations", m.to_str().unwrap()]);
    assert!(
        !status.success(),
        "serve exited 0 with a changed 0001:\n{err}"
    );
    assert!(
        err.contains("0001_init.sql") && err.contains("changed"),
        "serve's error does not name the changed file:\n{err}"
    );
    assert_eq!(db_version_and_table(d, "labels"), (2, true));

    // Restored: a node serves the data dir with these migrations, and the
    // offline migrate defers to it.
    add_migration(m, INIT, INIT_SQL);
    let node = Server::start_in(
        data,
        Options {
            sync_listen: Some("127.0.0.1:0".into()),
            env: vec![
                ("OUTPOST_SCHEMA_MIGRATIONS", m.to_str().unwrap().to_string()),
                ("OUTPOST_LOG", log_filter()),
            ],
            ..Options::default()
        },
    );
    let d = node.data_dir();
    assert_eq!(schema_version(&node), 2);
    add_migration(
        m,
        "0003_comment_edited.sql",
        "ALTER TABLE comments ADD COLUMN edited INTEGER NOT NULL DEFAULT 0;\n",
    );
    let (ok, out, err) = migrate_offline(d, Some(m));
    assert!(
        !ok,
        "offline migrate ran next to a serving node:\n{out}\n{err}"
    );
    assert!(
        err.contains("--admin"),
        "offline migrate next to a serving node does not point to --admin:\n{err}"
    );
    assert_eq!(schema_version(&node), 2);
    let (ok, out, err) = migrate_offline(d, None);
    assert!(
        !ok,
        "offline migrate (no --migrations) ran next to a serving node:\n{out}\n{err}"
    );

    let (ok, out, err) = migrate_admin(&node);
    assert!(ok, "migrate --admin failed:\n{out}\n{err}");
    assert!(
        out.contains("applied 0003_comment_edited (schema version 3)"),
        "migrate --admin printed:\n{out}\n{err}"
    );
    let status = node.status();
    assert_eq!(status["schema_version"], json!(3), "{status}");
    let (code, body) = common::post(&format!("{}/migrate", node.admin), None, "{}");
    assert_eq!(code, 200, "POST /migrate: {body}");
    assert_eq!(body["applied"], json!([]), "POST /migrate: {body}");
    assert_eq!(body["schema_version"], json!(3), "POST /migrate: {body}");
    assert_eq!(
        body["schema_hash"], status["schema_hash"],
        "POST /migrate: {body}"
    );
    assert!(columns(&node, "comments").iter().any(|c| c == "edited"));
}

/// serve applies pending migrations before READY, and a table a migration
/// created is captured from the first write; with migrate_on_start off the
/// node waits at version 0 with its migrations pending.
#[test]
fn serve_applies_migrations_at_start_and_capture_covers_new_tables() {
    let mig = migrations(&[(PRIORITY, PRIORITY_SQL)]);
    let m = mig.path().to_str().unwrap().to_string();
    let node = Server::start_with(Options {
        init: true,
        sync_listen: Some("127.0.0.1:0".into()),
        env: vec![
            ("OUTPOST_SCHEMA_MIGRATIONS", m.clone()),
            ("OUTPOST_LOG", log_filter()),
        ],
        ..Options::default()
    });
    let nodes = [("node", &node)];
    // Right after READY.
    let s = node.status();
    assert_eq!(s["schema_version"], json!(2), "{s}");
    assert!(
        s["schema_hash"].as_str().is_some_and(|h| !h.is_empty()),
        "{s}"
    );
    assert_eq!(s["schema"]["version"], json!(2), "{s}");
    assert_eq!(s["schema"]["hash"], s["schema_hash"], "{s}");
    assert_eq!(s["schema"]["pending"], json!([]), "{s}");
    let dir = s["schema"]["migrations"]
        .as_str()
        .map(std::path::PathBuf::from);
    assert!(
        dir.is_some_and(|d| d.canonicalize().ok() == mig.path().canonicalize().ok()),
        "schema.migrations is not the configured directory {m}: {s}"
    );
    assert!(s["schema"]["waiting_for"].is_null(), "{s}");
    assert!(s["schema"]["last_error"].is_null(), "{s}");
    let entries0 = s["log_entries"].as_i64().unwrap_or_else(|| panic!("{s}"));
    let log_entries = || node.status()["log_entries"].as_i64().unwrap();
    insert_project(&node, "p1");
    insert_task_with_priority(&node, "t1", "p1", 2);
    let entries1 = entries0 + 2;
    wait_for(
        "a project and a task: two log entries",
        WAIT,
        &nodes,
        || log_entries() >= entries1,
    );
    assert_eq!(
        log_entries(),
        entries1,
        "a project and a task: two log entries"
    );
    let before = node.digest();
    insert_label(&node, "l1", "t1", "new table");
    wait_for(
        "the labels row is in the change log (log_entries + 1)",
        WAIT,
        &nodes,
        || log_entries() > entries1,
    );
    assert_eq!(log_entries(), entries1 + 1, "one insert, one log entry");
    let after = node.digest();
    assert_ne!(before, after, "the digest ignores the labels table");
    let (ok, out) = node.check(&[]);
    assert!(ok, "check:\n{out}");
    assert_eq!(metric(&node, "outpost_schema_version", &[]), Some(2.0));

    // migrate_on_start = false: a fresh node stays at 0, both files pending.
    let idle = Server::start_with(Options {
        init: true,
        sync_listen: Some("127.0.0.1:0".into()),
        env: vec![
            ("OUTPOST_SCHEMA_MIGRATIONS", m.clone()),
            ("OUTPOST_SCHEMA_MIGRATE_ON_START", "false".into()),
            ("OUTPOST_LOG", log_filter()),
        ],
        ..Options::default()
    });
    let s = idle.status();
    assert_eq!(s["schema_version"], json!(0), "{s}");
    assert_eq!(s["schema"]["pending"], json!([1, 2]), "{s}");
    assert!(!table_exists(&idle, "tasks"));
    let (ok, out, err) = migrate_admin(&idle);
    assert!(ok, "migrate --admin failed:\n{out}\n{err}");
    assert!(
        out.contains("applied 0001_init (schema version 1)")
            && out.contains("applied 0002_task_priority (schema version 2)"),
        "migrate --admin printed:\n{out}\n{err}"
    );
    let s = idle.status();
    assert_eq!(s["schema_version"], json!(2), "{s}");
    assert_eq!(
        s["schema_hash"],
        node.status()["schema_hash"],
        "same files, same hash"
    );
    assert_eq!(s["schema"]["pending"], json!([]), "{s}");
}
