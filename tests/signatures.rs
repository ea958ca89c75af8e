//! Origin signatures on real nodes (issue 6): a node that ran alone signs
//! its old entries when it gets a certificate; a rotated key keeps the old
//! entries valid; a revoked key's entries are quarantined on the nodes that
//! revoke it. (The attacks themselves: tests/adversary.rs.)

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use common::{eventually, init_in_cluster, int_arg, plain, run, sync_env, Options, Server};

const WAIT: Duration = Duration::from_secs(30);
const TABLE: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";

fn options<'a>(peers: Vec<String>, env: Vec<(&'a str, String)>) -> Options<'a> {
    let mut all = sync_env();
    all.extend(env);
    Options {
        sync_listen: Some("127.0.0.1:0".into()),
        peers,
        env: all,
        ..Options::default()
    }
}

/// A node of the cluster with table t, linked to `peers` only once it has
/// the table (an entry for a table a node lacks is quarantined).
fn with_table(ca: &Path, peers: Vec<String>, env: Vec<(&str, String)>) -> Server {
    let node = Server::start_with(Options {
        ca_dir: Some(ca),
        ..options(vec![], vec![])
    });
    node.sql(TABLE, vec![]);
    node.restart(options(peers, env))
}

fn ids(node: &Server) -> Vec<i64> {
    node.rows("SELECT id FROM t ORDER BY id", vec![])
        .iter()
        .map(|r| plain(&r[0]).as_i64().unwrap())
        .collect()
}

fn insert(node: &Server, id: i64) {
    node.sql("INSERT INTO t VALUES (?, 'x')", vec![int_arg(id)]);
}

fn quarantine(node: &Server) -> Vec<(String, u64, String)> {
    let (code, body) = common::get(&format!("{}/quarantine", node.admin));
    assert_eq!(code, 200, "{body}");
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    list.iter()
        .map(|q| {
            (
                q["origin"].as_str().unwrap().to_string(),
                q["seq"].as_u64().unwrap(),
                q["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn signing_key(node: &Server) -> String {
    node.status()["signing_key"]
        .as_str()
        .expect("a signing key in /status")
        .to_string()
}

fn reissue(dir: &Path, ca: &Path) {
    let (status, out, err) = run(&[
        "init",
        "--data-dir",
        dir.to_str().unwrap(),
        "--ca-dir",
        ca.to_str().unwrap(),
        "--force-cert",
    ]);
    assert!(status.success(), "init --force-cert: {out}{err}");
}

#[test]
fn a_node_that_ran_alone_signs_its_old_entries_when_it_joins() {
    let ca = tempfile::tempdir().unwrap();
    // No `outpost init`: no certificate, no key, nothing signed.
    let mut alone = Server::start();
    assert!(alone.status()["signing_key"].is_null());
    alone.sql(TABLE, vec![]);
    for id in 1..=3 {
        insert(&alone, id);
    }
    alone.terminate();
    // The same data dir gets a certificate from the cluster CA, and joins B.
    init_in_cluster(alone.data_dir(), ca.path());
    let b = with_table(ca.path(), vec![], vec![]);
    let a = alone.restart(options(vec![b.sync.clone().unwrap()], vec![]));
    assert_eq!(signing_key(&a).len(), 16);
    eventually(WAIT, || ids(&b) == [1, 2, 3]);
    assert!(quarantine(&b).is_empty());
    assert_eq!(b.status()["keys_known"], 2);
}

#[test]
fn a_rotated_key_keeps_old_entries_valid_and_can_be_revoked() {
    let ca = tempfile::tempdir().unwrap();
    // A keeps its whole log: a node that joins later gets the entries
    // themselves, not a snapshot of the documents (which carries no
    // per-entry signatures; README "Security model", known gaps).
    let keep_log = || vec![("OUTPOST_SYNC_COMPACT_INTERVAL", "0s".to_string())];
    let a = with_table(ca.path(), vec![], keep_log());
    insert(&a, 1);
    let old_key = signing_key(&a);
    let origin = a.status()["origin"].as_str().unwrap().to_string();

    // Rotation: a new key for the same node; entry 1 keeps the old one.
    let mut a = a;
    a.terminate();
    reissue(a.data_dir(), ca.path());
    let a = a.restart(options(vec![], keep_log()));
    assert_ne!(signing_key(&a), old_key);
    insert(&a, 2);

    // A node that trusts both keys takes both entries.
    let b = with_table(ca.path(), vec![a.sync.clone().unwrap()], vec![]);
    eventually(WAIT, || ids(&b) == [1, 2]);
    assert!(quarantine(&b).is_empty());

    // A node that revoked the old key (it leaked) refuses entry 1 and takes 2.
    let revoked = format!("[\"{old_key}\"]");
    let c = with_table(
        ca.path(),
        vec![a.sync.clone().unwrap()],
        vec![("OUTPOST_SYNC_REVOKED_KEYS", revoked)],
    );
    eventually(WAIT, || ids(&c) == [2]);
    assert_eq!(quarantine(&c), [(origin, 1, "revoked".to_string())]);
    let (ok, out) = c.check(&[]);
    assert!(ok, "{out}");
}
