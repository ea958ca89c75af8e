//! Replication between real `outpost` processes over mutual TLS, through TCP
//! fault proxies (tests/common/proxy.rs) that delay, blackhole (a silent
//! partition) or refuse (reset) individual links at run time.
//!
//! Links are bidirectional: a node connects to the peers it lists, and both
//! directions flow over that connection, so a 3-node mesh is n2→n1, n3→n1 and
//! n3→n2, each through its own proxy.
//!
//! Seeded: `three_nodes_converge_through_partitions` prints its seed;
//! `OUTPOST_REPL_SEED=<seed>` replays the same workload and fault schedule
//! (not the same interleaving). `OUTPOST_REPL_SECS` changes how long the
//! faults run (default 10), `OUTPOST_REPL_LOG` the nodes' log filter (default
//! `warn`; e.g. `info,outpost::sync=debug`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use common::proxy::{Fault, Proxy};
use common::{int_arg, plain, sync_env, text_arg, Options, Server, Written};

const TABLE: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b TEXT, n INTEGER)";
/// Within this long after the faults are healed, every node must hold the same data.
const CONVERGE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Cluster plumbing

fn log_filter() -> String {
    std::env::var("OUTPOST_REPL_LOG").unwrap_or_else(|_| "warn".into())
}

/// Starts a node certified by the CA in `ca`, with a sync listener and `peers`.
fn start_node(ca: &Path, peers: Vec<String>) -> Server {
    let mut env = sync_env();
    env.push(("OUTPOST_LOG", log_filter()));
    let node = Server::start_with(Options {
        ca_dir: Some(ca),
        sync_listen: Some("127.0.0.1:0".into()),
        peers,
        env,
        ..Options::default()
    });
    assert!(
        node.sync.is_some(),
        "a node inited with --ca-dir printed no sync= on its READY line (api {})",
        node.api
    );
    node
}

/// A directed link: `from` lists `to` as a peer (through `proxy`, if any).
struct Link {
    from: usize,
    to: usize,
    proxy: Option<Proxy>,
}

struct Cluster {
    /// The cluster CA (kept until the nodes are gone).
    ca: tempfile::TempDir,
    nodes: Vec<Server>,
    /// Each node's `--peer` URLs.
    peers: Vec<Vec<String>>,
    links: Vec<Link>,
}

impl Cluster {
    /// Starts `n` nodes; node `i` lists every `j` for which `(i, j)` is in
    /// `edges` (j < i, so targets are up first), through a proxy if `proxied`.
    /// Creates the test table on every node.
    fn start(n: usize, edges: &[(usize, usize)], proxied: bool) -> Cluster {
        let ca = tempfile::tempdir().unwrap();
        let mut nodes: Vec<Server> = Vec::new();
        let mut all_peers = Vec::new();
        let mut links = Vec::new();
        for i in 0..n {
            let mut peers = Vec::new();
            for &(from, to) in edges.iter().filter(|(from, _)| *from == i) {
                assert!(to < from, "edges must point to nodes started earlier");
                let sync = nodes[to].sync.clone().unwrap();
                let (url, proxy) = if proxied {
                    let p = Proxy::to(&sync);
                    (p.https_url(), Some(p))
                } else {
                    (sync, None)
                };
                peers.push(url);
                links.push(Link { from, to, proxy });
            }
            nodes.push(start_node(ca.path(), peers.clone()));
            all_peers.push(peers);
        }
        for node in &nodes {
            node.sql(TABLE, vec![]);
        }
        Cluster {
            ca,
            nodes,
            peers: all_peers,
            links,
        }
    }

    fn mesh(n: usize, proxied: bool) -> Cluster {
        let edges: Vec<_> = (0..n).flat_map(|i| (0..i).map(move |j| (i, j))).collect();
        Self::start(n, &edges, proxied)
    }

    /// Restarts node `i` (SIGKILLed or not) on its data dir with its peers;
    /// proxies leading to it follow its new sync port.
    fn restart(&mut self, i: usize) {
        let old = self.nodes.remove(i);
        let mut env = sync_env();
        env.push(("OUTPOST_LOG", log_filter()));
        let node = old.restart(Options {
            ca_dir: Some(self.ca.path()),
            sync_listen: Some("127.0.0.1:0".into()),
            peers: self.peers[i].clone(),
            env,
            ..Options::default()
        });
        let sync = node.sync.clone().expect("sync= after a restart");
        for l in self.links.iter().filter(|l| l.to == i) {
            if let Some(p) = &l.proxy {
                p.set_target(common::proxy::parse_addr(&sync));
            }
        }
        self.nodes.insert(i, node);
    }

    /// Sets `fault` on every link of node `i`.
    fn isolate(&self, i: usize, fault: Fault) {
        for l in self.links.iter().filter(|l| l.from == i || l.to == i) {
            l.proxy.as_ref().expect("link is proxied").set(fault);
        }
    }

    fn set_all(&self, fault: Fault) {
        for l in &self.links {
            l.proxy.as_ref().expect("link is proxied").set(fault);
        }
    }

    fn degree(&self, i: usize) -> usize {
        self.links
            .iter()
            .filter(|l| l.from == i || l.to == i)
            .count()
    }

    /// Waits until every node reports as many connected peers as it has links.
    fn wait_connected(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let counts: Vec<usize> = self
                .nodes
                .iter()
                .map(|n| connected_peers(&n.status()).len())
                .collect();
            if counts.iter().enumerate().all(|(i, c)| *c == self.degree(i)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "peers not all connected within {timeout:?}: connected counts {counts:?}\n{}",
                    self.report()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every node has the same log vector and the same digest,
    /// with `outpost check` clean on every node; returns the digest.
    fn wait_converged(&self, timeout: Duration) -> Result<String, String> {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            let logs: Vec<Value> = self
                .nodes
                .iter()
                .map(|n| n.status()["log"].clone())
                .collect();
            let last = if logs.iter().all(|l| *l == logs[0]) {
                let t = Instant::now();
                let checks: Vec<(bool, String)> = std::thread::scope(|s| {
                    let runs: Vec<_> = self
                        .nodes
                        .iter()
                        .map(|n| {
                            let dir = n.data_dir().to_path_buf();
                            s.spawn(move || check_dir(&dir, &["--digest"]))
                        })
                        .collect();
                    runs.into_iter().map(|r| r.join().unwrap()).collect()
                });
                eprintln!(
                    "logs equal after {:.1?}; `outpost check --digest` on {} nodes took {:.1?}",
                    t - start,
                    self.nodes.len(),
                    t.elapsed()
                );
                let digests: Vec<Option<String>> = checks
                    .iter()
                    .map(|(_, out)| common::digest_of(out))
                    .collect();
                if checks.iter().all(|(ok, _)| *ok)
                    && digests[0].is_some()
                    && digests.iter().all(|d| *d == digests[0])
                {
                    return Ok(digests[0].clone().unwrap());
                }
                format!(
                    "logs equal ({}), but checks/digests: {}",
                    logs[0],
                    checks
                        .iter()
                        .enumerate()
                        .map(|(i, (ok, out))| format!("\n  n{}: ok={ok} {}", i + 1, out.trim()))
                        .collect::<String>()
                )
            } else {
                format!(
                    "logs differ: {}",
                    logs.iter()
                        .enumerate()
                        .map(|(i, l)| format!("\n  n{}: {l}", i + 1))
                        .collect::<String>()
                )
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "not converged within {timeout:?}: {last}\n{}\n{}",
                    self.table_diff(),
                    self.report()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Rows that differ between nodes (first 20).
    fn table_diff(&self) -> String {
        let tables: Vec<BTreeMap<i64, Vec<Value>>> = self.nodes.iter().map(read_table).collect();
        let ids: BTreeSet<i64> = tables.iter().flat_map(|t| t.keys().copied()).collect();
        let mut out = Vec::new();
        for id in ids {
            let rows: Vec<Option<&Vec<Value>>> = tables.iter().map(|t| t.get(&id)).collect();
            if rows.iter().any(|r| *r != rows[0]) {
                out.push(format!("  id {id}: {rows:?}"));
            }
        }
        let n = out.len();
        out.truncate(20);
        format!(
            "rows per node {:?}; {n} row(s) differ:\n{}",
            tables.iter().map(BTreeMap::len).collect::<Vec<_>>(),
            out.join("\n")
        )
    }

    /// Proxy counters and what the nodes logged (warnings and up), briefly.
    fn summary(&self) -> String {
        let mut out = String::new();
        for l in &self.links {
            if let Some(p) = &l.proxy {
                out += &format!(
                    "link n{}→n{}: {} connections, {} bytes\n",
                    l.from + 1,
                    l.to + 1,
                    p.accepted(),
                    p.bytes()
                );
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let lines = n.stderr_lines();
            out += &format!("n{}: {} log line(s)\n", i + 1, lines.len());
            for l in lines.iter().take(8) {
                out += &format!("    n{} | {l}\n", i + 1);
            }
        }
        out
    }

    /// Status, proxy counters and recent stderr of every node, for failure messages.
    fn report(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| n.status()))
                .map(|s| s.to_string())
                .unwrap_or_else(|_| "(no status)".into());
            out += &format!("--- n{} ({}) status: {status}\n", i + 1, n.api);
            let lines = n.stderr_lines();
            let skip = lines.len().saturating_sub(40);
            for l in &lines[skip..] {
                out += &format!("    n{} | {l}\n", i + 1);
            }
        }
        for l in &self.links {
            if let Some(p) = &l.proxy {
                out += &format!(
                    "--- link n{}→n{}: {:?}, {} connections accepted, {} open, {} bytes\n",
                    l.from + 1,
                    l.to + 1,
                    p.fault(),
                    p.accepted(),
                    p.open(),
                    p.bytes()
                );
            }
        }
        out
    }
}

/// `outpost check [extra] --data-dir DIR`: (exit 0, stdout + stderr).
fn check_dir(dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["check"];
    args.extend_from_slice(extra);
    args.extend(["--data-dir", dir.to_str().unwrap()]);
    let (status, out, err) = common::run(&args);
    (status.success(), format!("{out}{err}"))
}

fn connected_peers(status: &Value) -> Vec<Value> {
    status["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["state"] == "connected")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The whole table `t` as id → [a, b, n] (plain JSON), paged.
fn read_table(node: &Server) -> BTreeMap<i64, Vec<Value>> {
    let mut out = BTreeMap::new();
    let mut after = i64::MIN;
    loop {
        let rows = node.rows(
            "SELECT id, a, b, n FROM t WHERE id > ? ORDER BY id LIMIT 2000",
            vec![int_arg(after)],
        );
        for r in &rows {
            let id = plain(&r[0]).as_i64().unwrap();
            out.insert(id, r[1..].iter().map(plain).collect());
            after = id;
        }
        if rows.len() < 2000 {
            return out;
        }
    }
}

/// One row of `t` as [a, b, n] (plain JSON), or None.
fn row(node: &Server, id: i64) -> Option<Vec<Value>> {
    let rows = node.rows("SELECT a, b, n FROM t WHERE id = ?", vec![int_arg(id)]);
    rows.first().map(|r| r.iter().map(plain).collect())
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn seed(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be an unsigned integer")),
        Err(_) => rand::random(),
    }
}

// ---------------------------------------------------------------------------
// The proxy itself

/// An echo server counting its connections.
fn echo_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, count)
}

fn connect(proxy: &Proxy) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn read_exact_str(s: &mut TcpStream, n: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    Ok(String::from_utf8(buf).unwrap())
}

/// Reading gives an error or EOF (the connection was reset or closed), not data
/// and not a timeout.
fn assert_closed(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut => {}
        other => panic!("{what}: expected a closed connection, got {other:?}"),
    }
}

#[test]
fn proxy_passes_delays_blackholes_and_refuses() {
    let (target, upstream_conns) = echo_server();
    let proxy = Proxy::start(target);

    // Pass.
    let mut a = connect(&proxy);
    a.write_all(b"hello").unwrap();
    assert_eq!(read_exact_str(&mut a, 5).unwrap(), "hello");

    // Delay: each direction adds the delay.
    proxy.set(Fault::Delay(Duration::from_millis(300)));
    let t = Instant::now();
    a.write_all(b"slow").unwrap();
    assert_eq!(read_exact_str(&mut a, 4).unwrap(), "slow");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(3),
        "delayed round trip took {took:?}"
    );

    // Blackhole: silence, but the connection stays open; what was sent
    // arrives after the heal.
    proxy.set(Fault::Blackhole);
    std::thread::sleep(Duration::from_millis(50));
    a.write_all(b"held").unwrap();
    a.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 4];
    let e = a
        .read(&mut buf)
        .expect_err("a blackholed link delivered data");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "blackholed read: {e:?}"
    );
    // A new connection is accepted but not connected upstream.
    let before = upstream_conns.load(Ordering::SeqCst);
    let mut b = connect(&proxy);
    b.write_all(b"late").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(upstream_conns.load(Ordering::SeqCst), before);
    proxy.heal();
    a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_exact_str(&mut a, 4).unwrap(), "held");
    assert_eq!(read_exact_str(&mut b, 4).unwrap(), "late");
    assert_eq!(upstream_conns.load(Ordering::SeqCst), before + 1);

    // Refuse: existing connections are reset, new ones too.
    proxy.set(Fault::Refuse);
    assert_closed(&mut a, "existing connection under Refuse");
    assert_closed(&mut b, "second connection under Refuse");
    let mut c = connect(&proxy);
    let _ = c.write_all(b"x");
    assert_closed(&mut c, "new connection under Refuse");
    assert!(
        a.write_all(b"after reset").and_then(|_| a.flush()).is_err() || {
            // The first write after a RST may still succeed locally; the next fails.
            std::thread::sleep(Duration::from_millis(50));
            a.write_all(b"again").is_err()
        }
    );

    // Heal: new connections pass again.
    proxy.heal();
    let mut d = connect(&proxy);
    d.write_all(b"back").unwrap();
    assert_eq!(read_exact_str(&mut d, 4).unwrap(), "back");
    assert!(proxy.bytes() > 0);
    assert_eq!(proxy.accepted(), 4);

    // Dropping the proxy resets its connections.
    drop(proxy);
    assert_closed(&mut d, "connection of a dropped proxy");
}

// ---------------------------------------------------------------------------
// Three nodes, random faults

/// Rows 1..=SHARED exist on every node from the start and are written by all
/// of them; a node's own rows are ids (node+1)*OWN_BASE + k, written only by it.
const SHARED: i64 = 12;
const OWN_BASE: i64 = 1_000_000;

/// What a writer knows about one of its own rows: `acked` is the state the
/// last acknowledged write left (None: absent); `maybe` holds states from
/// writes with unknown outcomes, which may also be what is there.
#[derive(Debug, Clone)]
struct OwnRow {
    acked: Option<(String, i64)>,
    maybe: Vec<Option<(String, i64)>>,
}

#[derive(Default, Debug)]
struct WriterReport {
    node: usize,
    own: BTreeMap<i64, OwnRow>,
    /// Every value written to a shared row's column (acked or unknown), by
    /// (id, column).
    shared_values: BTreeMap<(i64, &'static str), BTreeSet<String>>,
    acked: usize,
    failed: Vec<String>,
    unknown: usize,
    slowest: Duration,
}

/// Writes through `handle`'s client until `stop`; while the handle is None
/// (the node is down) it waits.
fn run_writer(
    handle: &Mutex<Option<common::Client>>,
    idx: usize,
    mut rng: StdRng,
    stop: &AtomicBool,
) -> WriterReport {
    let mut rep = WriterReport {
        node: idx,
        ..Default::default()
    };
    let mut live: Vec<i64> = Vec::new();
    let mut next = 0i64;
    let mut op = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let Some(node) = handle.lock().unwrap().clone() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let node = &node;
        op += 1;
        let tag = format!("n{} op{op}", idx + 1);
        let roll = rng.gen_range(0..100);
        let t = Instant::now();
        if roll < 35 || live.is_empty() {
            next += 1;
            let id = (idx as i64 + 1) * OWN_BASE + next;
            let n = next;
            let w = node.write(
                "INSERT INTO t(id, a, b, n) VALUES (?, ?, NULL, ?)",
                vec![int_arg(id), text_arg(&tag), int_arg(n)],
            );
            let state = Some((tag.clone(), n));
            let mut r = OwnRow {
                acked: None,
                maybe: vec![],
            };
            match record(&mut rep, &w) {
                Some(true) => {
                    r.acked = state;
                    live.push(id);
                }
                Some(false) => {}
                None => r.maybe.push(state),
            }
            rep.own.insert(id, r);
        } else if roll < 58 {
            let i = rng.gen_range(0..live.len());
            let id = live[i];
            let delete = roll >= 50;
            let w = if delete {
                node.write("DELETE FROM t WHERE id = ?", vec![int_arg(id)])
            } else {
                node.write(
                    "UPDATE t SET a = ? WHERE id = ?",
                    vec![text_arg(&tag), int_arg(id)],
                )
            };
            let r = rep.own.get_mut(&id).unwrap();
            let old_n = r.acked.as_ref().map(|(_, n)| *n).unwrap();
            let state = (!delete).then(|| (tag.clone(), old_n));
            match record_affecting(&mut rep.failed, &w, 1) {
                Some(true) => {
                    rep.acked += 1;
                    r.acked = state;
                    r.maybe.clear();
                    if delete {
                        live.swap_remove(i);
                    }
                }
                Some(false) => {}
                None => {
                    rep.unknown += 1;
                    r.maybe.push(state);
                    live.swap_remove(i);
                }
            }
        } else {
            let id = rng.gen_range(1..=SHARED);
            if roll < 93 {
                let col = ["a", "b", "n"][rng.gen_range(0..3)];
                let (value, arg) = if col == "n" {
                    let v = (idx as i64 + 1) * 1_000_000_000 + op as i64;
                    (v.to_string(), int_arg(v))
                } else {
                    (tag.clone(), text_arg(&tag))
                };
                let w = node.write(
                    &format!("UPDATE t SET {col} = ? WHERE id = ?"),
                    vec![arg, int_arg(id)],
                );
                // 0 rows when the row is deleted here: fine.
                if record(&mut rep, &w).is_none_or(|acked| acked) {
                    rep.shared_values
                        .entry((id, col))
                        .or_default()
                        .insert(value);
                }
            } else if roll < 96 {
                let w = node.write("DELETE FROM t WHERE id = ?", vec![int_arg(id)]);
                record(&mut rep, &w);
            } else {
                let v = (idx as i64 + 1) * 1_000_000_000 + op as i64;
                let w = node.write(
                    "INSERT INTO t(id, a, b, n) VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE \
                     SET a = excluded.a, b = excluded.b, n = excluded.n",
                    vec![int_arg(id), text_arg(&tag), text_arg(&tag), int_arg(v)],
                );
                if record(&mut rep, &w).is_none_or(|acked| acked) {
                    for (col, value) in
                        [("a", tag.clone()), ("b", tag.clone()), ("n", v.to_string())]
                    {
                        rep.shared_values
                            .entry((id, col))
                            .or_default()
                            .insert(value);
                    }
                }
            }
        }
        rep.slowest = rep.slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(2));
    }
    rep
}

/// Some(true) acked, Some(false) failed (recorded), None unknown.
fn record(rep: &mut WriterReport, w: &Written) -> Option<bool> {
    match w {
        Written::Acked(_) => {
            rep.acked += 1;
            Some(true)
        }
        Written::Failed(e) => {
            rep.failed.push(e.clone());
            Some(false)
        }
        Written::Unknown(_) => {
            rep.unknown += 1;
            None
        }
    }
}

fn record_affecting(failed: &mut Vec<String>, w: &Written, rows: u64) -> Option<bool> {
    match w {
        Written::Acked(r) if r["affected_row_count"].as_u64() == Some(rows) => Some(true),
        Written::Acked(r) => {
            failed.push(format!("expected {rows} affected row(s): {r}"));
            Some(false)
        }
        Written::Failed(e) => {
            failed.push(e.clone());
            Some(false)
        }
        Written::Unknown(_) => None,
    }
}

/// Checks every writer's own rows on every node, and that every shared
/// column holds a value somebody wrote.
fn verify_rows(cluster: &Cluster, reports: &[WriterReport]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut shared_written: BTreeMap<(i64, &str), BTreeSet<String>> = BTreeMap::new();
    for r in reports {
        for (k, vs) in &r.shared_values {
            shared_written
                .entry(*k)
                .or_default()
                .extend(vs.iter().cloned());
        }
    }
    for (ni, node) in cluster.nodes.iter().enumerate() {
        let table = read_table(node);
        for rep in reports {
            for (id, want) in &rep.own {
                let found = table.get(id).map(|r| {
                    (
                        r[0].as_str().unwrap_or("<not text>").to_string(),
                        r[2].as_i64().unwrap_or(i64::MIN),
                    )
                });
                if found != want.acked && !want.maybe.contains(&found) {
                    errors.push(format!(
                        "n{}: row {id} of writer n{}: found {found:?}, acknowledged {:?} (unknown: {:?})",
                        ni + 1,
                        rep.node + 1,
                        want.acked,
                        want.maybe
                    ));
                }
            }
        }
        for id in 1..=SHARED {
            let Some(r) = table.get(&id) else { continue };
            for (ci, col) in ["a", "b", "n"].into_iter().enumerate() {
                let v = match &r[ci] {
                    Value::Null => continue,
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let initial = match col {
                    "a" => format!("shared {id}"),
                    "b" => String::new(),
                    _ => id.to_string(),
                };
                let written = shared_written.get(&(id, col));
                if v != initial && !written.is_some_and(|w| w.contains(&v)) {
                    errors.push(format!(
                        "n{}: shared row {id} column {col} = {v:?}, which nobody wrote",
                        ni + 1
                    ));
                }
            }
        }
        let stray: Vec<_> = table
            .keys()
            .filter(|id| **id > SHARED && !reports.iter().any(|r| r.own.contains_key(id)))
            .collect();
        if !stray.is_empty() {
            errors.push(format!("n{}: rows nobody inserted: {stray:?}", ni + 1));
        }
    }
    errors
}

#[test]
fn three_nodes_converge_through_partitions() {
    let seed = seed("OUTPOST_REPL_SEED");
    let secs: u64 = std::env::var("OUTPOST_REPL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    eprintln!("replication test: seed {seed} (replay with OUTPOST_REPL_SEED={seed})");
    let ctx = format!("[seed={seed}; replay with OUTPOST_REPL_SEED={seed}]");
    let mut rng = StdRng::seed_from_u64(seed);

    let cluster = Cluster::mesh(3, true);
    cluster
        .wait_connected(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{ctx} {e}"));
    // The shared rows, everywhere before the faults start.
    for id in 1..=SHARED {
        cluster.nodes[0].sql(
            "INSERT INTO t(id, a, b, n) VALUES (?, ?, '', ?)",
            vec![int_arg(id), text_arg(&format!("shared {id}")), int_arg(id)],
        );
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        wait_for(
            &format!("shared rows on n{}", i + 1),
            Duration::from_secs(20),
            || node.rows("SELECT count(*) FROM t", vec![])[0][0] == int_arg(SHARED),
        )
        .unwrap_or_else(|e| panic!("{ctx} {e}\n{}", cluster.report()));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let reports: Vec<WriterReport> = std::thread::scope(|s| {
        let writers: Vec<_> = cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let rng = StdRng::seed_from_u64(rng.gen());
                let stop = stop.clone();
                let node = Mutex::new(Some(node.client()));
                s.spawn(move || run_writer(&node, i, rng, &stop))
            })
            .collect();

        // The fault schedule.
        let mut history = Vec::new();
        while started.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(rng.gen_range(200..=1200)));
            if rng.gen_bool(0.1) {
                cluster.set_all(Fault::Pass);
                history.push(format!("{:>6.2?} heal all", started.elapsed()));
                continue;
            }
            let l = &cluster.links[rng.gen_range(0..cluster.links.len())];
            let fault = match rng.gen_range(0..100) {
                0..30 => Fault::Pass,
                30..50 => Fault::Delay(Duration::from_millis(rng.gen_range(10..=300))),
                50..75 => Fault::Blackhole,
                _ => Fault::Refuse,
            };
            l.proxy.as_ref().unwrap().set(fault);
            history.push(format!(
                "{:>6.2?} n{}→n{} {fault:?}",
                started.elapsed(),
                l.from + 1,
                l.to + 1
            ));
        }
        stop.store(true, Ordering::SeqCst);
        eprintln!("fault schedule:\n  {}", history.join("\n  "));
        writers
            .into_iter()
            .map(|h| h.join().expect("writer panicked"))
            .collect()
    });
    cluster.set_all(Fault::Pass);
    let healed = Instant::now();

    let acked: usize = reports.iter().map(|r| r.acked).sum();
    eprintln!(
        "{ctx} writes: {} acked, {} unknown, {} failed; slowest {:?}",
        acked,
        reports.iter().map(|r| r.unknown).sum::<usize>(),
        reports.iter().map(|r| r.failed.len()).sum::<usize>(),
        reports.iter().map(|r| r.slowest).max().unwrap()
    );
    let failed: Vec<_> = reports
        .iter()
        .flat_map(|r| r.failed.iter())
        .take(10)
        .collect();
    assert!(failed.is_empty(), "{ctx} writes failed: {failed:#?}");
    assert!(acked > 100, "{ctx} only {acked} writes acknowledged");

    let digest = cluster
        .wait_converged(CONVERGE)
        .unwrap_or_else(|e| panic!("{ctx} {e}"));
    eprintln!(
        "{ctx} converged {:?} after the heal: digest {digest}",
        healed.elapsed()
    );
    let errors = verify_rows(&cluster, &reports);
    assert!(
        errors.is_empty(),
        "{ctx} {} problem(s):\n{}",
        errors.len(),
        errors
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    cluster
        .wait_connected(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{ctx} after the heal: {e}"));
    for l in &cluster.links {
        let p = l.proxy.as_ref().unwrap();
        assert!(
            p.bytes() > 0,
            "{ctx} nothing went through the proxy of n{}→n{}",
            l.from + 1,
            l.to + 1
        );
    }
    eprintln!("{}", cluster.summary());
}

// ---------------------------------------------------------------------------
// kill -9 while replicating

/// Nodes are SIGKILLed at seeded moments while all three write and
/// replicate — often right after a partition heals, while the victim applies
/// a backlog — then `outpost check` runs on the dead node's files (an applied
/// entry is in the table, the document and the log, or in none), the node
/// restarts on its data dir, and at the end everything converges with every
/// acknowledged write everywhere. `OUTPOST_REPL_KILLS` sets the number of
/// kills (default 3).
#[test]
fn killed_nodes_catch_up_after_restart() {
    let seed = seed("OUTPOST_REPL_SEED");
    let kills: usize = std::env::var("OUTPOST_REPL_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    eprintln!("kill test: seed {seed} (replay with OUTPOST_REPL_SEED={seed})");
    let ctx = format!("[seed={seed}; replay with OUTPOST_REPL_SEED={seed}]");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut cluster = Cluster::mesh(3, true);
    cluster
        .wait_connected(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{ctx} {e}"));
    for id in 1..=SHARED {
        cluster.nodes[0].sql(
            "INSERT INTO t(id, a, b, n) VALUES (?, ?, '', ?)",
            vec![int_arg(id), text_arg(&format!("shared {id}")), int_arg(id)],
        );
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        wait_for(
            &format!("shared rows on n{}", i + 1),
            Duration::from_secs(20),
            || node.rows("SELECT count(*) FROM t", vec![])[0][0] == int_arg(SHARED),
        )
        .unwrap_or_else(|e| panic!("{ctx} {e}\n{}", cluster.report()));
    }

    let handles: Vec<Mutex<Option<common::Client>>> = cluster
        .nodes
        .iter()
        .map(|n| Mutex::new(Some(n.client())))
        .collect();
    let stop = AtomicBool::new(false);
    let reports: Vec<WriterReport> = std::thread::scope(|s| {
        let writers: Vec<_> = handles
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let rng = StdRng::seed_from_u64(rng.gen());
                let stop = &stop;
                s.spawn(move || run_writer(h, i, rng, stop))
            })
            .collect();
        let mut history = Vec::new();
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for kill in 1..=kills {
                std::thread::sleep(Duration::from_millis(rng.gen_range(300..=1500)));
                let victim = rng.gen_range(0..3);
                if rng.gen_bool(0.7) {
                    // A backlog for the victim to apply when it dies.
                    let cut = Duration::from_millis(rng.gen_range(500..=2500));
                    cluster.isolate(victim, Fault::Blackhole);
                    std::thread::sleep(cut);
                    cluster.isolate(victim, Fault::Pass);
                    history.push(format!(
                        "{:>6.2?} n{} cut off for {cut:?}",
                        started.elapsed(),
                        victim + 1
                    ));
                }
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..=400)));
                *handles[victim].lock().unwrap() = None;
                cluster.nodes[victim].kill();
                history.push(format!(
                    "{:>6.2?} kill -9 n{}",
                    started.elapsed(),
                    victim + 1
                ));
                let (ok, out) = check_dir(cluster.nodes[victim].data_dir(), &[]);
                assert!(
                    ok,
                    "{ctx} kill {kill}: `outpost check` on n{} after kill -9:\n{out}",
                    victim + 1
                );
                cluster.restart(victim);
                *handles[victim].lock().unwrap() = Some(cluster.nodes[victim].client());
                history.push(format!(
                    "{:>6.2?} n{} restarted",
                    started.elapsed(),
                    victim + 1
                ));
            }
            std::thread::sleep(Duration::from_millis(rng.gen_range(300..=1000)));
        }));
        stop.store(true, Ordering::SeqCst);
        eprintln!("kill schedule:\n  {}", history.join("\n  "));
        let reports = writers
            .into_iter()
            .map(|h| h.join().expect("writer panicked"))
            .collect();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
        reports
    });

    let acked: usize = reports.iter().map(|r| r.acked).sum();
    eprintln!(
        "{ctx} writes: {} acked, {} unknown, {} failed",
        acked,
        reports.iter().map(|r| r.unknown).sum::<usize>(),
        reports.iter().map(|r| r.failed.len()).sum::<usize>(),
    );
    let failed: Vec<_> = reports
        .iter()
        .flat_map(|r| r.failed.iter())
        .take(10)
        .collect();
    assert!(failed.is_empty(), "{ctx} writes failed: {failed:#?}");
    let digest = cluster
        .wait_converged(CONVERGE)
        .unwrap_or_else(|e| panic!("{ctx} {e}"));
    eprintln!("{ctx} converged: digest {digest}");
    let errors = verify_rows(&cluster, &reports);
    assert!(
        errors.is_empty(),
        "{ctx} {} problem(s):\n{}",
        errors.len(),
        errors
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    cluster
        .wait_connected(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{ctx} after the restarts: {e}"));
    eprintln!("{}", cluster.summary());
}

// ---------------------------------------------------------------------------
// A node cut off from everyone

#[test]
fn offline_node_catches_up() {
    let cluster = Cluster::mesh(3, true);
    cluster.wait_connected(Duration::from_secs(20)).unwrap();
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    n1.sql("INSERT INTO t VALUES (1, 'before', NULL, 0)", vec![]);
    wait_for("row 1 on n3", Duration::from_secs(20), || {
        row(n3, 1).is_some()
    })
    .unwrap();

    // Cut n3 off: silence first (longer than the peer timeout, so links are
    // given up), then resets.
    cluster.isolate(2, Fault::Blackhole);
    let mut acked: Vec<(usize, i64)> = Vec::new();
    let mut slowest = Duration::ZERO;
    let cut = Instant::now();
    let mut k = 0;
    while cut.elapsed() < Duration::from_secs(5) {
        if cut.elapsed() > Duration::from_secs(3) {
            cluster.isolate(2, Fault::Refuse);
        }
        k += 1;
        for (i, node) in cluster.nodes.iter().enumerate() {
            let id = (i as i64 + 1) * OWN_BASE + k;
            let t = Instant::now();
            let w = node.write(
                "INSERT INTO t VALUES (?, ?, NULL, ?)",
                vec![int_arg(id), text_arg("cut"), int_arg(k)],
            );
            slowest = slowest.max(t.elapsed());
            assert!(
                w.acked().is_some(),
                "n{} refused a write while n3 was cut off: {w:?}",
                i + 1
            );
            acked.push((i, id));
        }
        let t = Instant::now();
        n3.sql(
            "UPDATE t SET b = ? WHERE id = 1",
            vec![text_arg(&format!("n3 {k}"))],
        );
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a local write took {slowest:?} while a node was cut off"
    );
    // The cut held: n3 has nothing of n1's and n2's, they have nothing of n3's,
    // and n1, n2 still replicate to each other.
    let last_n1 = OWN_BASE + k;
    let last_n3 = 3 * OWN_BASE + k;
    wait_for("n1's last write on n2", Duration::from_secs(20), || {
        row(n2, last_n1).is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.report()));
    assert!(
        row(n3, OWN_BASE + 1).is_none(),
        "n3 got n1's writes while cut off"
    );
    assert!(
        row(n1, 3 * OWN_BASE + 1).is_none(),
        "n1 got n3's writes while it was cut off"
    );
    let st = n3.status();
    assert!(
        connected_peers(&st).is_empty(),
        "n3 reports connected peers while cut off: {st}"
    );

    cluster.isolate(2, Fault::Pass);
    let healed = Instant::now();
    let digest = cluster
        .wait_converged(CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "converged {:?} after the heal ({} writes while cut): {digest}",
        healed.elapsed(),
        acked.len()
    );
    for (ni, node) in cluster.nodes.iter().enumerate() {
        let table = read_table(node);
        let missing: Vec<_> = acked
            .iter()
            .filter(|(_, id)| !table.contains_key(id))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "n{}: acknowledged rows missing: {missing:?}",
            ni + 1
        );
        assert_eq!(
            row(node, 1),
            Some(vec![json!("before"), json!(format!("n3 {k}")), json!(0)]),
            "n{}",
            ni + 1
        );
        assert!(table.contains_key(&last_n3));
    }
    cluster.wait_connected(Duration::from_secs(10)).unwrap();
}

// ---------------------------------------------------------------------------
// Conflicts

#[test]
fn conflicts_resolve_identically() {
    let cluster = Cluster::mesh(3, true);
    cluster.wait_connected(Duration::from_secs(20)).unwrap();
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    for id in 1..=7 {
        n1.sql(
            "INSERT INTO t VALUES (?, 'a0', 'b0', ?)",
            vec![int_arg(id), int_arg(id)],
        );
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        wait_for(
            &format!("rows on n{}", i + 1),
            Duration::from_secs(20),
            || row(node, 7).is_some(),
        )
        .unwrap();
    }

    // Partition everyone from everyone (resets, then silence).
    cluster.set_all(Fault::Refuse);
    wait_for("all links down", Duration::from_secs(20), || {
        cluster
            .nodes
            .iter()
            .all(|n| connected_peers(&n.status()).is_empty())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.report()));
    cluster.set_all(Fault::Blackhole);

    // Writes well apart in time: all nodes share this machine's clock, so the
    // later write has the higher HLC stamp.
    let gap = || std::thread::sleep(Duration::from_millis(50));
    // Row 1: different columns on two sides: both survive.
    n1.sql("UPDATE t SET a = 'n1 a' WHERE id = 1", vec![]);
    n2.sql("UPDATE t SET b = 'n2 b' WHERE id = 1", vec![]);
    // Row 2: the same column on three sides: the latest write wins.
    n1.sql("UPDATE t SET a = 'n1 first' WHERE id = 2", vec![]);
    gap();
    n3.sql("UPDATE t SET a = 'n3 second' WHERE id = 2", vec![]);
    gap();
    n2.sql("UPDATE t SET a = 'n2 last' WHERE id = 2", vec![]);
    gap();
    // Row 3: update, then a later concurrent delete: deleted.
    n1.sql("UPDATE t SET n = 333 WHERE id = 3", vec![]);
    gap();
    n2.sql("DELETE FROM t WHERE id = 3", vec![]);
    gap();
    // Row 4: delete, then a later concurrent update that did not see it:
    // README: "a delete beats updates that did not see it".
    n1.sql("DELETE FROM t WHERE id = 4", vec![]);
    gap();
    n3.sql("UPDATE t SET b = 'n3 after delete' WHERE id = 4", vec![]);
    gap();
    // Row 5: delete, then a later concurrent delete and insert elsewhere: the
    // row is revived with exactly the inserted values.
    n2.sql("DELETE FROM t WHERE id = 5", vec![]);
    gap();
    n3.sql("DELETE FROM t WHERE id = 5", vec![]);
    n3.sql("INSERT INTO t(id, a) VALUES (5, 'revived')", vec![]);
    gap();
    // Row 7: delete, then a later REPLACE of the row elsewhere (one statement
    // that deletes and inserts): whichever way the rule reads it, the same
    // outcome everywhere.
    n1.sql("DELETE FROM t WHERE id = 7", vec![]);
    gap();
    n2.sql(
        "INSERT OR REPLACE INTO t(id, a) VALUES (7, 'replaced')",
        vec![],
    );
    gap();
    // Row 6: the same column, two sides, plus a different column on a third.
    n3.sql("UPDATE t SET n = 60 WHERE id = 6", vec![]);
    gap();
    n1.sql("UPDATE t SET b = 'n1 b6' WHERE id = 6", vec![]);
    gap();
    n2.sql("UPDATE t SET n = 61 WHERE id = 6", vec![]);

    // Nothing crossed the partition.
    assert_eq!(
        row(n2, 1).unwrap()[0],
        json!("a0"),
        "n1's write reached n2 through the partition"
    );

    cluster.set_all(Fault::Pass);
    cluster
        .wait_converged(CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
    let expected: [(i64, Option<Vec<Value>>); 6] = [
        (1, Some(vec![json!("n1 a"), json!("n2 b"), json!(1)])),
        (2, Some(vec![json!("n2 last"), json!("b0"), json!(2)])),
        (3, None),
        (4, None),
        (5, Some(vec![json!("revived"), Value::Null, Value::Null])),
        (6, Some(vec![json!("a0"), json!("n1 b6"), json!(61)])),
    ];
    let mut errors = Vec::new();
    let replaced: Vec<_> = cluster.nodes.iter().map(|n| row(n, 7)).collect();
    eprintln!("row 7 (delete vs a later REPLACE): {:?}", replaced[0]);
    if replaced.iter().any(|r| *r != replaced[0]) {
        errors.push(format!("row 7 differs between nodes: {replaced:?}"));
    }
    for (id, want) in &expected {
        let got: Vec<_> = cluster.nodes.iter().map(|n| row(n, *id)).collect();
        if got.iter().any(|g| *g != got[0]) {
            errors.push(format!("row {id} differs between nodes: {got:?}"));
        } else if got[0] != *want {
            errors.push(format!("row {id}: {:?}, expected {want:?}", got[0]));
        }
    }
    assert!(
        errors.is_empty(),
        "{}\n{}",
        errors.join("\n"),
        cluster.report()
    );
}

// ---------------------------------------------------------------------------
// Relaying

#[test]
fn chain_topology_relays() {
    // n2 lists n1, n3 lists n2; n1 and n3 never talk.
    let cluster = Cluster::start(3, &[(1, 0), (2, 1)], false);
    cluster.wait_connected(Duration::from_secs(20)).unwrap();
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    n1.sql("INSERT INTO t VALUES (1, 'from n1', NULL, 1)", vec![]);
    n3.sql("INSERT INTO t VALUES (3, 'from n3', NULL, 3)", vec![]);
    n2.sql("INSERT INTO t VALUES (2, 'from n2', NULL, 2)", vec![]);
    wait_for("n1's row on n3", Duration::from_secs(20), || {
        row(n3, 1).is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.report()));
    wait_for("n3's row on n1", Duration::from_secs(20), || {
        row(n1, 3).is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.report()));
    // Updates travel too.
    n3.sql("UPDATE t SET b = 'n3 was here' WHERE id = 1", vec![]);
    wait_for("n3's update on n1", Duration::from_secs(20), || {
        row(n1, 1).is_some_and(|r| r[1] == json!("n3 was here"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.report()));
    cluster
        .wait_converged(CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));

    // n1 and n3 do not know each other, yet each holds the other's origin.
    let (s1, s3) = (n1.status(), n3.status());
    let id1 = s1["node_id"].as_str().unwrap().to_string();
    let id3 = s3["node_id"].as_str().unwrap().to_string();
    for (s, other) in [(&s1, &id3), (&s3, &id1)] {
        let peers = s["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1, "{s}");
        assert_ne!(peers[0]["node_id"].as_str(), Some(other.as_str()), "{s}");
    }
    let o1 = s1["origin"].as_str().unwrap();
    let o3 = s3["origin"].as_str().unwrap();
    assert!(
        s3["log"][o1].as_u64() >= Some(1),
        "n3 lacks n1's origin: {s3}"
    );
    assert!(
        s1["log"][o3].as_u64() >= Some(1),
        "n1 lacks n3's origin: {s1}"
    );
    let _ = n2;
}

// ---------------------------------------------------------------------------
// Mutual TLS

/// Accepts any server certificate: these probes test the *server's* check of
/// the client.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens a TLS connection to `addr` with `client` (a node's certificate and
/// key, or none), sends an HTTP request and returns what came back: Ok(bytes
/// read) or Err(why the connection failed).
fn tls_probe(addr: &str, client: Option<&Path>) -> Result<usize, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(dir) => {
            let pem = std::fs::read(dir.join("tls/node.pem")).expect("node.pem");
            let certs = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let pem = std::fs::read(dir.join("tls/node.key")).expect("node.key");
            let key = rustls_pemfile::private_key(&mut &pem[..])
                .unwrap()
                .expect("a private key in node.key");
            builder.with_client_auth_cert(certs, key).unwrap()
        }
    };
    let hostport = common::proxy::parse_addr(addr);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(hostport).map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(
        format!("GET / HTTP/1.1\r\nhost: {hostport}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("handshake/write: {e}"))?;
    let mut buf = Vec::new();
    match tls.read_to_end(&mut buf) {
        Ok(_) if buf.is_empty() => Err("closed without a response".into()),
        Ok(n) => Ok(n),
        Err(e) if !buf.is_empty() => Ok(buf.len()).inspect(|_| eprintln!("after response: {e}")),
        Err(e) => Err(format!("read: {e}")),
    }
}

#[test]
fn wrong_certificate_is_refused() {
    // n1 and n2 share a CA; "rogue" has its own and lists n1.
    let cluster = Cluster::start(2, &[(1, 0)], false);
    cluster.wait_connected(Duration::from_secs(20)).unwrap();
    let [n1, n2] = [&cluster.nodes[0], &cluster.nodes[1]];
    let n1_sync = n1.sync.clone().unwrap();
    let other_ca = tempfile::tempdir().unwrap();
    let rogue = start_node(other_ca.path(), vec![n1_sync.clone()]);
    rogue.sql(TABLE, vec![]);
    let rogue_id = rogue.node_id();

    n1.sql("INSERT INTO t VALUES (1, 'secret', NULL, 1)", vec![]);
    rogue.sql("INSERT INTO t VALUES (666, 'forged', NULL, 666)", vec![]);
    // The legitimate peer gets it (so replication works and time passed) ...
    wait_for("n1's row on n2", Duration::from_secs(20), || {
        row(n2, 1).is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.report()));
    // ... and keeps getting nothing from the rogue, while it retries for a while.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert!(
            row(&rogue, 1).is_none(),
            "n1's data reached a node of another CA"
        );
        assert!(row(n1, 666).is_none(), "a node of another CA wrote into n1");
        let s1 = n1.status();
        assert!(
            !connected_peers(&s1)
                .iter()
                .any(|p| p["node_id"].as_str() == Some(rogue_id.as_str())),
            "n1 lists the rogue node as a connected peer: {s1}"
        );
        let sr = rogue.status();
        assert!(
            connected_peers(&sr).is_empty(),
            "the rogue node reports a connected peer: {sr}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(row(n2, 666).is_none());

    // Raw TLS: a node certificate of the cluster gets an answer; no
    // certificate, or one from another CA, gets none.
    let ok = tls_probe(&n1_sync, Some(n2.data_dir()));
    assert!(
        ok.is_ok(),
        "a cluster certificate was refused by the sync port: {ok:?}"
    );
    let none = tls_probe(&n1_sync, None);
    assert!(
        none.is_err(),
        "the sync port answered a client without a certificate: {none:?}"
    );
    let foreign = tls_probe(&n1_sync, Some(rogue.data_dir()));
    assert!(
        foreign.is_err(),
        "the sync port answered a certificate from another CA: {foreign:?}"
    );
    eprintln!("no certificate: {none:?}; another CA: {foreign:?}");
    assert!(n1.alive_check(), "n1 died");
}

trait Alive {
    fn alive_check(&self) -> bool;
}

impl Alive for Server {
    fn alive_check(&self) -> bool {
        common::get(&format!("{}/health", self.admin)).0 == 200
    }
}

// ---------------------------------------------------------------------------
// Large values

/// A value larger than `crdt.max_update_bytes` (1 MiB) and one larger than
/// `sync.max_message_bytes` (8 MiB), written locally with SQL: each is either
/// refused at write time or replicated; and neither may hold back the small
/// writes after it.
#[test]
fn large_values_replicate_or_are_refused() {
    let cluster = Cluster::start(2, &[(1, 0)], false);
    cluster.wait_connected(Duration::from_secs(20)).unwrap();
    let [n1, n2] = [&cluster.nodes[0], &cluster.nodes[1]];
    let mut problems = Vec::new();
    for (id, bytes) in [(1i64, 1_500_000i64), (2, 9_000_000)] {
        let w = n1.write(
            "INSERT INTO t(id, a) VALUES (?, hex(randomblob(?)))",
            vec![int_arg(id), int_arg(bytes / 2)],
        );
        let marker = 100 + id;
        n1.sql(
            "INSERT INTO t(id, a) VALUES (?, 'after the large value')",
            vec![int_arg(marker)],
        );
        let arrived = wait_for("marker on n2", Duration::from_secs(20), || {
            row(n2, marker).is_some()
        });
        let on_n2 = n2.rows("SELECT length(a) FROM t WHERE id = ?", vec![int_arg(id)]);
        eprintln!(
            "{bytes} bytes: write {}; marker on n2: {arrived:?}; row on n2: {on_n2:?}",
            if w.acked().is_some() {
                "acked"
            } else {
                "refused"
            },
        );
        if arrived.is_err() {
            problems.push(format!(
                "a write after a {bytes}-byte value never reached n2 (replication from n1 stalled)"
            ));
        }
        if w.acked().is_some() && on_n2.is_empty() {
            problems.push(format!(
                "a {bytes}-byte value acknowledged on n1 never reached n2 (silent divergence)"
            ));
        }
    }
    let st = (n1.status(), n2.status());
    assert!(
        problems.is_empty(),
        "{}\nn1 status: {}\nn2 status: {}\n{}",
        problems.join("\n"),
        st.0,
        st.1,
        cluster.report()
    );
}

// ---------------------------------------------------------------------------
// Both sides list each other

/// Operators list every other node on every node. Two nodes that list each
/// other end up with one link (the core keeps one of the two), replicate, and
/// do not churn: the dropped direction must not reconnect over and over, and
/// `/status` must not call a peer that is connected "backing_off".
#[test]
fn mutual_peers_keep_one_link() {
    let ca = tempfile::tempdir().unwrap();
    // n1's proxy to n2 exists before n2 does: it points at n2 once n2 is up.
    let to_n2 = Proxy::start("127.0.0.1:9".parse().unwrap());
    to_n2.set(Fault::Refuse);
    let n1 = start_node(ca.path(), vec![to_n2.https_url()]);
    let to_n1 = Proxy::to(n1.sync.as_deref().unwrap());
    let n2 = start_node(ca.path(), vec![to_n1.https_url()]);
    to_n2.set_target(common::proxy::parse_addr(n2.sync.as_deref().unwrap()));
    to_n2.heal();
    for n in [&n1, &n2] {
        n.sql(TABLE, vec![]);
    }
    n1.sql("INSERT INTO t VALUES (1, 'n1', NULL, 1)", vec![]);
    n2.sql("INSERT INTO t VALUES (2, 'n2', NULL, 2)", vec![]);
    wait_for("rows crossed", Duration::from_secs(20), || {
        row(&n1, 2).is_some() && row(&n2, 1).is_some()
    })
    .unwrap();
    // Settle, then count connections over 5 s (with sync.retry_max = 1s a
    // dropped direction that keeps retrying shows up several times).
    std::thread::sleep(Duration::from_secs(2));
    let before = to_n1.accepted() + to_n2.accepted();
    let t = Instant::now();
    let mut states = BTreeSet::new();
    while t.elapsed() < Duration::from_secs(5) {
        for n in [&n1, &n2] {
            for p in n.status()["peers"].as_array().unwrap() {
                states.insert(format!(
                    "{} {}",
                    p["url"].as_str().unwrap_or("inbound"),
                    p["state"].as_str().unwrap_or("?")
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let made = to_n1.accepted() + to_n2.accepted() - before;
    eprintln!(
        "connections in 5 s: {made}; peer states seen: {states:?}\nn1: {}\nn2: {}",
        n1.status()["peers"],
        n2.status()["peers"]
    );
    assert!(
        made <= 2,
        "{made} new connections in 5 s between two nodes that list each other (churn); states seen: {states:?}"
    );
}

// ---------------------------------------------------------------------------
// Log compaction and snapshots

fn log_count(node: &Server) -> i64 {
    let conn = libsql_sys::rusqlite::Connection::open(node.data_dir().join("outpost.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row("SELECT count(*) FROM _outpost_log", [], |r| r.get(0))
        .unwrap()
}

/// Entries every peer acknowledged leave the log (the documents keep
/// them); a node that joins later, below the compacted floor, is sent a
/// snapshot of the documents and then the log above it; `outpost check`
/// stays clean on all of them.
#[test]
fn compacted_log_bootstraps_a_new_node_from_a_snapshot() {
    let mut cluster = Cluster::start(2, &[(1, 0)], false);
    cluster.wait_connected(Duration::from_secs(20)).unwrap();
    for id in 1..=120 {
        let node = &cluster.nodes[(id % 2) as usize];
        node.sql(
            "INSERT INTO t VALUES (?, 'a', 'b', ?)",
            vec![int_arg(id), int_arg(id)],
        );
    }
    cluster.nodes[0].sql("UPDATE t SET b = 'updated' WHERE id <= 10", vec![]);
    cluster.nodes[1].sql("DELETE FROM t WHERE id > 110", vec![]);
    cluster
        .wait_converged(CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for("both logs compacted", Duration::from_secs(20), || {
        cluster.nodes.iter().all(|n| log_count(n) == 0)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.report()));
    for node in &cluster.nodes {
        let (clean, out) = node.check(&[]);
        assert!(clean, "check after compaction:\n{out}");
    }

    // A new node knows only n1; n1's log no longer has what it lacks.
    let n1_sync = cluster.nodes[0].sync.clone().unwrap();
    let n3 = start_node(cluster.ca.path(), vec![n1_sync]);
    n3.sql(TABLE, vec![]);
    cluster.nodes.push(n3);
    cluster.peers.push(Vec::new());
    cluster
        .wait_converged(CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
    let n3 = &cluster.nodes[2];
    assert_eq!(read_table(n3), read_table(&cluster.nodes[0]));
    // (The delete ran on n2 before all of n1's rows may have arrived there.)
    assert!(read_table(n3).len() >= 110);

    // Writes after the snapshot flow as log entries, both ways.
    n3.sql("INSERT INTO t VALUES (500, 'from n3', NULL, 0)", vec![]);
    cluster.nodes[1].sql("UPDATE t SET a = 'after' WHERE id = 1", vec![]);
    cluster
        .wait_converged(CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(row(&cluster.nodes[1], 500).is_some());
    assert_eq!(row(n3, 1).unwrap()[0], json!("after"));
    let (clean, out) = n3.check(&[]);
    assert!(
        clean,
        "check on the node bootstrapped from a snapshot:\n{out}"
    );
    let _ = &mut cluster;
}

/// `sync.peer_entries_per_second` at its bound: a peer sending 1,000 entries
/// at once is applied no faster than the limit allows (the burst is one
/// window of batches), is slowed rather than cut off, and everything arrives.
/// Only upper bounds on progress are asserted, so a slow machine cannot fail
/// it.
#[test]
fn a_fast_peer_is_slowed_to_its_rate_limit() {
    const RATE: f64 = 250.0;
    const BATCH: f64 = 25.0;
    const WINDOW: f64 = 4.0;
    let ca = tempfile::tempdir().unwrap();
    let limited = |peers: Vec<String>| {
        let mut env = sync_env();
        env.push(("OUTPOST_LOG", log_filter()));
        env.push(("OUTPOST_SYNC_BATCH_ENTRIES", "25".into()));
        env.push(("OUTPOST_SYNC_PEER_ENTRIES_PER_SECOND", "250".into()));
        Server::start_with(Options {
            ca_dir: Some(ca.path()),
            sync_listen: Some("127.0.0.1:0".into()),
            peers,
            env,
            ..Options::default()
        })
    };
    // Both with the same batch size (a receiver refuses larger batches).
    let a = limited(Vec::new());
    let b = limited(vec![a.sync.clone().unwrap()]);
    for node in [&a, &b] {
        node.sql(TABLE, vec![]);
    }
    let a_id = a.node_id();
    a.sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO t (id, a) SELECT i, 'x' FROM n",
        vec![],
    );
    let count = |node: &Server| -> f64 {
        node.rows("SELECT count(*) FROM t", vec![])[0][0]["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let burst = WINDOW * BATCH;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = count(&b);
        let now = Instant::now();
        if have > 0.0 && first.is_none() {
            first = Some(now);
        }
        if let Some(t0) = first {
            // What the bucket allows since the first apply, plus the batch
            // in flight when it was measured.
            let allowed = burst + RATE * (now - t0).as_secs_f64() + 2.0 * BATCH;
            assert!(
                have <= allowed,
                "{have} rows applied {:?} after the first, the limit allows {allowed}",
                now - t0
            );
        }
        if have >= 1000.0 {
            break;
        }
        assert!(now < deadline, "only {have} of 1000 rows arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = first.unwrap().elapsed();
    eprintln!("1000 entries at {RATE}/s (burst {burst}) took {took:?}");
    let metrics = common::get(&format!("{}/metrics", b.admin)).1;
    let throttled: f64 = metrics
        .lines()
        .find(|l| l.starts_with("outpost_sync_throttled_seconds_total") && l.contains(&a_id))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(throttled > 1.0, "throttled {throttled} s:\n{metrics}");
    assert_eq!(a.digest(), b.digest());
}
