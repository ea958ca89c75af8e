//! Partial replication (issue 6): a hub holds two tenants' rows; two edge
//! nodes, each allowed one tenant by the hub's `sync.rules`, end with
//! exactly their tenant's rows, and a write from an edge into the other
//! tenant is refused by the hub. Real processes sharing a cluster CA.

mod common;

use std::path::Path;
use std::time::Duration;

use libsql_sys::rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use common::{eventually, init_in_cluster, int_arg, plain, sync_env, text_arg, Options, Server};

const SCHEMA: [&str; 2] = [
    "CREATE TABLE t(id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, v TEXT)",
    "CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT)",
];
const WAIT: Duration = Duration::from_secs(30);

/// A data dir inited in the cluster, and the node id its certificate names.
fn inited(ca: &Path) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    init_in_cluster(dir.path(), ca);
    let pem = std::fs::read(dir.path().join("tls/node.pem")).unwrap();
    let der = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .unwrap()
        .unwrap();
    let id = outpost::sync::tls::peer_node_id(&der).expect("node id in the certificate");
    (dir, id)
}

fn start(dir: tempfile::TempDir, peers: Vec<String>, env: Vec<(&str, String)>) -> Server {
    let mut all = sync_env();
    all.extend(env);
    let node = Server::start_in(
        dir,
        Options {
            sync_listen: Some("127.0.0.1:0".into()),
            peers,
            env: all,
            ..Options::default()
        },
    );
    for sql in SCHEMA {
        node.sql(sql, vec![]);
    }
    node
}

/// (id, tenant, v) of every row of t, in id order.
fn rows(node: &Server) -> Vec<(i64, String, String)> {
    node.rows("SELECT id, tenant, v FROM t ORDER BY id", vec![])
        .into_iter()
        .map(|r| {
            let r: Vec<Value> = r.iter().map(plain).collect();
            (
                r[0].as_i64().unwrap(),
                r[1].as_str().unwrap().to_string(),
                r[2].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn count(node: &Server, table: &str) -> i64 {
    plain(&node.rows(&format!("SELECT count(*) FROM {table}"), vec![])[0][0])
        .as_i64()
        .unwrap()
}

fn insert(node: &Server, id: i64, tenant: &str, v: &str) {
    node.sql(
        "INSERT INTO t VALUES (?, ?, ?)",
        vec![int_arg(id), text_arg(tenant), text_arg(v)],
    );
}

/// Log entries of the node that are placeholders (withheld from it).
fn placeholders(node: &Server) -> i64 {
    let conn = Connection::open_with_flags(
        node.data_dir().join("outpost.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(
        "SELECT count(*) FROM _outpost_log WHERE length(\"update\") = 0",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn quarantine_codes(node: &Server) -> Vec<String> {
    let (code, body) = common::get(&format!("{}/quarantine", node.admin));
    assert_eq!(code, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    json.as_array()
        .unwrap_or_else(|| panic!("not a list: {json}"))
        .iter()
        .map(|e| e["code"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn each_edge_gets_exactly_its_tenant_and_cannot_write_the_other() {
    let ca = tempfile::tempdir().unwrap();
    let (edge_a_dir, edge_a) = inited(ca.path());
    let (edge_b_dir, edge_b) = inited(ca.path());
    let (hub_dir, _) = inited(ca.path());
    // Edge A gets table t only (not audit), tenant a; edge B tenant b.
    let rules = format!(
        "{{ \"{edge_a}\" = {{ send_tables = [\"t\"], accept_tables = [\"t\"], \
         filters = {{ t = \"tenant = 'a'\" }} }}, \
         \"{edge_b}\" = {{ filters = {{ t = \"tenant = 'b'\" }} }} }}"
    );
    let hub = start(hub_dir, vec![], vec![("OUTPOST_SYNC_RULES", rules)]);
    let url = hub.sync.clone().unwrap();
    let partial = || vec![("OUTPOST_SYNC_PARTIAL", "true".to_string())];
    let a = start(edge_a_dir, vec![url.clone()], partial());
    let b = start(edge_b_dir, vec![url], partial());

    for id in 1..=3 {
        insert(&hub, id, "a", &format!("a{id}"));
        insert(&hub, 10 + id, "b", &format!("b{id}"));
    }
    hub.sql(
        "INSERT INTO audit VALUES (1, 'hub only for edge a')",
        vec![],
    );
    // An edge's write inside its tenant reaches the hub, not the other edge.
    insert(&a, 4, "a", "from edge a");
    let expect_a: Vec<(i64, String, String)> = (1..=3)
        .map(|id| (id, "a".to_string(), format!("a{id}")))
        .chain([(4, "a".to_string(), "from edge a".to_string())])
        .collect();
    let expect_b: Vec<(i64, String, String)> = (1..=3)
        .map(|id| (10 + id, "b".to_string(), format!("b{id}")))
        .collect();
    eventually(WAIT, || rows(&a) == expect_a && rows(&b) == expect_b);
    eventually(WAIT, || count(&hub, "t") == 7 && count(&b, "audit") == 1);
    assert_eq!(
        count(&a, "audit"),
        0,
        "audit is not in edge a's send_tables"
    );

    // A write from edge a into tenant b, and a move of one of its rows
    // into tenant b: the hub refuses both (forbidden_row).
    insert(&a, 20, "b", "smuggled");
    eventually(WAIT, || quarantine_codes(&hub).len() == 1);
    a.sql("UPDATE t SET tenant = 'b' WHERE id = 4", vec![]);
    eventually(WAIT, || quarantine_codes(&hub).len() == 2);
    assert_eq!(quarantine_codes(&hub), ["forbidden_row", "forbidden_row"]);
    let hub_rows = rows(&hub);
    assert!(!hub_rows.iter().any(|r| r.0 == 20), "{hub_rows:?}");
    assert!(hub_rows.contains(&(4, "a".into(), "from edge a".into())));
    // Later hub writes still flow to both edges.
    insert(&hub, 5, "a", "late a");
    insert(&hub, 15, "b", "late b");
    eventually(WAIT, || {
        rows(&a).iter().any(|r| r.0 == 5) && rows(&b).iter().any(|r| r.0 == 15)
    });
    assert!(
        rows(&b).iter().all(|r| r.1 == "b"),
        "edge b holds a row of tenant a: {:?}",
        rows(&b)
    );
    // The edges hold placeholders for what was withheld, and check clean.
    assert!(placeholders(&a) > 0 && placeholders(&b) > 0);
    for node in [&hub, &a, &b] {
        let (ok, out) = node.check(&[]);
        assert!(ok, "check: {out}");
    }
}

#[test]
fn a_full_replica_is_never_given_a_filtered_view() {
    let ca = tempfile::tempdir().unwrap();
    let (edge_dir, edge) = inited(ca.path());
    let (hub_dir, _) = inited(ca.path());
    let rules = format!("{{ \"{edge}\" = {{ filters = {{ t = \"tenant = 'a'\" }} }} }}");
    let hub = start(hub_dir, vec![], vec![("OUTPOST_SYNC_RULES", rules)]);
    // The edge forgot sync.partial: the hub refuses the link and says why.
    let full = start(edge_dir, vec![hub.sync.clone().unwrap()], vec![]);
    insert(&hub, 1, "a", "a1");
    eventually(WAIT, || {
        full.status()["sync"]["peers"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("sync.partial"))
    });
    assert_eq!(count(&full, "t"), 0);
}
