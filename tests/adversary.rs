//! The adversarial peer (issue 6, "Security at the sync layer").
//!
//! A harness peer, "mallory", holds a genuine node certificate from the
//! cluster CA (so mutual TLS lets it in) and speaks the sync protocol
//! itself: `Hello`, `Keys`, then hand-made `Entries`. Its entries are real
//! yrs updates of row documents, built with outpost's own CRDT code and
//! signed with mallory's Ed25519 node key, except where an attack needs
//! them not to be. It attacks a real `outpost` node, B; a third real node,
//! C, replicates from B and shows what B relays.
//!
//! - `every_attack_in_one_batch_is_quarantined_with_its_reason`: one batch
//!   with legitimate entries around corrupt, truncated, oversized, forged,
//!   misattributed, revoked, forbidden (table, row, row moved out of the
//!   filter) and constraint-violating entries. Each is quarantined with its
//!   reason code and counted; only the legitimate rows land on B; C gets
//!   mallory's entries up to the first refused one, and nothing else.
//! - `oversized_messages_and_batches_are_refused_whole`: a message over
//!   `sync.max_message_bytes` ends the link, a batch over
//!   `sync.batch_entries` is refused; nothing of either is applied, and B
//!   then takes a batch of exactly `sync.batch_entries` on a new link.
//! - `a_revoked_node_cannot_open_a_link`: the revoked node's certificate
//!   passes TLS but its Hello is answered with Bye; what it pipelined after
//!   the Hello is never looked at. Its certificate claiming another node id
//!   is refused too.
//! - `a_placeholder_is_not_applied_on_a_full_replica`: a placeholder (an
//!   entry with an empty update) is deferred, not applied, nor are the
//!   entries after it; B's vector stops before it.
//! - `a_forged_entry_does_not_hide_the_origin_s_real_one`: an entry
//!   mallory forges for C's origin is quarantined but not held, so C's real
//!   entry of that seq still applies on B.
//! - `a_peer_withholding_an_entry_cannot_make_a_hole`: C's genuine seq 2
//!   relayed without seq 1 is skipped (`gap`), not applied.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer as _, SigningKey};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio_tungstenite::tungstenite::Message;

use common::{eventually, plain, sync_env, Options, Server};
use outpost::crdt::{client_id_of, Hlc, RowDoc, Stamp, Unwritten, Value};
use outpost::db::capture::LogEntry;
use outpost::sync::keys::{key_id, signed_bytes};
use outpost::sync::proto::{Hello, Msg, PROTOCOL_VERSION};
use outpost::sync::vv::VersionVector;

const WAIT: Duration = Duration::from_secs(20);
/// How long to wait for B's answer on a link.
const ANSWER: Duration = Duration::from_secs(15);

const SCHEMA: [&str; 2] = [
    "CREATE TABLE t (id INTEGER PRIMARY KEY, tenant TEXT, v TEXT, n INTEGER CHECK (n >= 0))",
    "CREATE TABLE secret (id INTEGER PRIMARY KEY, v TEXT)",
];

// ---------------------------------------------------------------------------
// Identities: node certificates from the cluster CA, never started.

/// A node's certificate and key (`outpost init --ca-dir`), as a harness
/// peer uses them.
struct Identity {
    _dir: tempfile::TempDir,
    node_id: String,
    origin: u64,
    cert_der: Vec<u8>,
    signing: SigningKey,
    tls: Arc<rustls::ClientConfig>,
}

impl Identity {
    fn new(ca: &Path) -> Identity {
        let dir = tempfile::tempdir().unwrap();
        common::init_in_cluster(dir.path(), ca);
        let tls = dir.path().join("tls");
        let (ca_pem, cert, key) = (
            tls.join("ca.pem"),
            tls.join("node.pem"),
            tls.join("node.key"),
        );
        let pem = std::fs::read(&cert).unwrap();
        let cert_der = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .expect("a certificate in node.pem")
            .unwrap()
            .to_vec();
        let node_id = outpost::sync::tls::peer_node_id(&cert_der).expect("a node id");
        let signing = SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&key).unwrap())
            .expect("an Ed25519 node key");
        let config = outpost::sync::tls::client_config(&ca_pem, &cert, &key).unwrap();
        Identity {
            _dir: dir,
            origin: client_id_of(&node_id),
            node_id,
            cert_der,
            signing,
            tls: Arc::new(config),
        }
    }

    /// Signs `entry` with this node's key (key id first: it is signed too).
    fn sign(&self, mut entry: LogEntry) -> LogEntry {
        entry.key_id = key_id(&self.signing.verifying_key());
        entry.signature = self.signing.sign(&signed_bytes(&entry)).to_bytes().to_vec();
        entry
    }

    /// This node's Hello to `node` (its schema, nothing held).
    fn hello(&self, node: &Server, partial: bool) -> Msg {
        let status = node.status();
        Msg::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            node_id: self.node_id.clone(),
            origin: self.origin,
            schema_version: status["schema_version"].as_i64().unwrap(),
            schema_hash: status["schema_hash"].as_str().unwrap().to_string(),
            have: VersionVector::new(),
            partial,
        })
    }
}

// ---------------------------------------------------------------------------
// Entries: what an origin writes, built with outpost's own row documents.

/// Writes rows as one origin does: its row documents and its clock.
struct Author {
    origin: u64,
    clock: Hlc,
    docs: HashMap<(String, String), RowDoc>,
}

impl Author {
    fn new(origin: u64) -> Author {
        Author {
            origin,
            clock: Hlc::default(),
            docs: HashMap::new(),
        }
    }

    /// The unsigned entry `seq` recording `row` (column, value) as this
    /// origin's write to the row `key` of `table`.
    fn entry(&mut self, seq: u64, table: &str, key: &str, row: &[(&str, Value)]) -> LogEntry {
        let hlc = self.clock.tick(Hlc::now_ms());
        let stamp = Stamp {
            hlc,
            origin: self.origin,
        };
        let row: Vec<(String, Value)> = row
            .iter()
            .map(|(c, v)| (c.to_string(), v.clone()))
            .collect();
        let doc = self
            .docs
            .entry((table.to_string(), key.to_string()))
            .or_insert_with(|| RowDoc::new(self.origin));
        let (update, _) = doc
            .record_local(stamp, Some(&row), 16 * 1024, &|_, _| Unwritten::Write)
            .unwrap()
            .expect("a change");
        LogEntry {
            origin: self.origin,
            seq,
            hlc,
            table: table.to_string(),
            key: key.to_string(),
            schema_version: 0,
            update,
            key_id: 0,
            signature: Vec::new(),
        }
    }

    /// A row of `t`.
    fn t(&mut self, seq: u64, id: i64, tenant: &str, v: &str, n: i64) -> LogEntry {
        self.entry(
            seq,
            "t",
            &id.to_string(),
            &[
                ("id", Value::Integer(id)),
                ("tenant", Value::Text(tenant.into())),
                ("v", Value::Text(v.into())),
                ("n", Value::Integer(n)),
            ],
        )
    }
}

// ---------------------------------------------------------------------------
// The harness peer's link: WebSocket over mutual TLS, as `transport::connect`.

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// What came from B.
#[derive(Debug)]
enum Heard {
    Msg(Msg),
    /// The link ended (close frame, end of stream or an error).
    Closed(String),
}

struct Link {
    ws: Ws,
}

impl Link {
    /// Opens `wss://<node's sync listener>/sync/v1/link` as `who`.
    async fn open(node: &Server, who: &Identity) -> Link {
        let url = node.sync.as_deref().expect("a sync listener");
        let authority = url.strip_prefix("https://").unwrap();
        let host = authority.rsplit_once(':').unwrap().0.to_string();
        let tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(host).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&who.tls))
            .connect(name, tcp)
            .await
            .expect("mutual TLS with a CA certificate");
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            format!("wss://{authority}/sync/v1/link"),
            tls,
            None,
        )
        .await
        .expect("WebSocket upgrade");
        Link { ws }
    }

    /// Sends one message as one binary frame. Err: the link is gone.
    async fn send(&mut self, msg: &Msg) -> Result<(), String> {
        self.ws
            .send(Message::Binary(msg.encode()))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next message from B, or the end of the link; None after `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Heard> {
        loop {
            let frame = tokio::time::timeout(wait, self.ws.next()).await.ok()?;
            return Some(match frame {
                Some(Ok(Message::Binary(bytes))) => {
                    Heard::Msg(Msg::decode(&bytes).expect("B sends well-formed messages"))
                }
                Some(Ok(Message::Close(frame))) => Heard::Closed(format!("close frame {frame:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Heard::Closed(e.to_string()),
                None => Heard::Closed("end of stream".into()),
            });
        }
    }

    /// Sends `hello` and returns B's.
    async fn handshake(&mut self, hello: &Msg) -> Hello {
        self.send(hello).await.expect("send Hello");
        match self.next(ANSWER).await {
            Some(Heard::Msg(Msg::Hello(h))) => h,
            other => panic!("expected B's Hello, got {other:?}"),
        }
    }

    /// Waits for B to acknowledge a batch: Ok(B's vector), or Err with
    /// what ended the link instead (B's Bye reason, if it sent one).
    async fn acked(&mut self) -> Result<VersionVector, String> {
        let mut bye = None;
        loop {
            match self.next(ANSWER).await {
                Some(Heard::Msg(Msg::Ack { have, batches })) if batches > 0 => return Ok(have),
                Some(Heard::Msg(Msg::Bye { reason })) => bye = Some(reason),
                Some(Heard::Msg(_)) => {} // heartbeats
                Some(Heard::Closed(why)) => return Err(bye.unwrap_or(why)),
                None => panic!("B neither acknowledged the batch nor closed the link"),
            }
        }
    }

    /// Reads until B ends the link; returns what it sent meanwhile.
    async fn until_closed(&mut self) -> Vec<Msg> {
        let mut heard = Vec::new();
        loop {
            match self.next(ANSWER).await {
                Some(Heard::Msg(msg)) => heard.push(msg),
                Some(Heard::Closed(_)) => return heard,
                None => panic!("B did not close the link; it sent {heard:?}"),
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Observing the real nodes.

fn start_node(ca: &Path, peers: Vec<String>, extra: Vec<(&'static str, String)>) -> Server {
    let mut env = sync_env();
    // The harness peer sends no heartbeats: with a long timeout, a link B
    // ends within the test's waits ends for what the peer sent.
    env.push(("OUTPOST_SYNC_PEER_TIMEOUT", "30s".into()));
    env.extend(extra);
    let node = Server::start_with(Options {
        ca_dir: Some(ca),
        sync_listen: Some("127.0.0.1:0".into()),
        peers,
        env,
        ..Options::default()
    });
    assert!(node.sync.is_some(), "no sync listener");
    for sql in SCHEMA {
        node.sql(sql, vec![]);
    }
    node
}

/// `SELECT * FROM t` as plain JSON rows `[id, tenant, v, n]`, by id.
fn t_rows(node: &Server) -> Vec<Json> {
    node.rows("SELECT id, tenant, v, n FROM t ORDER BY id", vec![])
        .iter()
        .map(|r| Json::Array(r.iter().map(plain).collect()))
        .collect()
}

fn count(node: &Server, table: &str) -> i64 {
    let rows = node.rows(&format!("SELECT count(*) FROM {table}"), vec![]);
    plain(&rows[0][0]).as_i64().unwrap()
}

/// `GET /quarantine`: (origin, seq) → reason code.
fn quarantine(node: &Server) -> BTreeMap<(u64, u64), String> {
    let (code, body) = common::get(&format!("{}/quarantine?limit=1000", node.admin));
    assert_eq!(code, 200, "{body}");
    let listed: Json = serde_json::from_str(&body).unwrap();
    listed
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {body}"))
        .iter()
        .map(|e| {
            let origin = e["origin"].as_str().unwrap().parse().unwrap();
            let seq = e["seq"].as_u64().unwrap();
            ((origin, seq), e["code"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The node's log vector (`/status`'s `log`).
fn log_vector(node: &Server) -> VersionVector {
    let status = node.status();
    let mut vv = VersionVector::new();
    for (origin, seq) in status["log"].as_object().unwrap() {
        vv.observe(origin.parse().unwrap(), seq.as_u64().unwrap());
    }
    vv
}

/// `outpost_sync_rejected_total{peer, reason}` on the node's /metrics.
fn rejected(node: &Server, peer: &str, reason: &str) -> u64 {
    let (code, body) = common::get(&format!("{}/metrics", node.admin));
    assert_eq!(code, 200);
    let (peer, reason) = (format!("peer=\"{peer}\""), format!("reason=\"{reason}\""));
    body.lines()
        .filter(|l| l.starts_with("outpost_sync_rejected_total{"))
        .find(|l| l.contains(&peer) && l.contains(&reason))
        .map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

fn assert_checks(nodes: &[&Server]) {
    for node in nodes {
        let (ok, out) = node.check(&[]);
        assert!(ok, "outpost check on {}:\n{out}", node.api);
    }
}

fn healthy(node: &Server) {
    let (code, body) = common::get(&format!("{}/health", node.admin));
    assert_eq!(code, 200, "{body}");
}

/// Waits until `from` has a connected link to `to`.
fn wait_linked(from: &Server, to: &Server) {
    let to_id = to.node_id();
    eventually(WAIT, || {
        from.status()["peers"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["node_id"] == to_id && p["state"] == "connected")
        })
    });
}

fn toml_list(ids: &[&str]) -> String {
    let quoted: Vec<String> = ids.iter().map(|id| format!("{id:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

// ---------------------------------------------------------------------------

#[test]
fn every_attack_in_one_batch_is_quarantined_with_its_reason() {
    let ca = tempfile::tempdir().unwrap();
    let mallory = Identity::new(ca.path());
    let revoked = Identity::new(ca.path());
    // A node whose writes mallory alters (its key is used only to make a
    // genuine entry to tamper with).
    let victim = Identity::new(ca.path());
    let max_update = 4096;
    let b = start_node(
        ca.path(),
        vec![],
        vec![
            (
                "OUTPOST_SYNC_REVOKED_NODES",
                toml_list(&[&revoked.node_id]),
            ),
            (
                "OUTPOST_SYNC_RULES",
                format!(
                    "{{ {:?} = {{ accept_tables = [\"t\"], filters = {{ t = \"tenant = 'a'\" }} }} }}",
                    mallory.node_id
                ),
            ),
            ("OUTPOST_CRDT_MAX_UPDATE_BYTES", max_update.to_string()),
        ],
    );
    let c = start_node(ca.path(), vec![b.sync.clone().unwrap()], vec![]);
    wait_linked(&c, &b);
    let c_origin: u64 = c.status()["origin"].as_str().unwrap().parse().unwrap();
    let b_id = b.node_id();
    // A row of another tenant, written on B (and replicated to C).
    let theirs = json!([100, "b", "theirs", 0]);
    b.sql("INSERT INTO t VALUES (100, 'b', 'theirs', 0)", vec![]);
    eventually(WAIT, || t_rows(&c) == vec![theirs.clone()]);

    let m = mallory.origin;
    let mut mine = Author::new(m);
    let mut batch: Vec<(LogEntry, Option<&str>)> = Vec::new();
    let mut push = |entry: LogEntry, refused: Option<&'static str>| batch.push((entry, refused));

    // Each attack writes a row of its own (rows 3 to 10 of `t`, `secret`'s
    // row 1), so that no refused entry builds on another; seq 9 and 11
    // change rows B holds (mallory's row 1, B's row 100).
    // Two legitimate rows of tenant 'a'.
    push(mallory.sign(mine.t(1, 1, "a", "one", 1)), None);
    push(mallory.sign(mine.t(2, 2, "a", "two", 2)), None);
    // Garbage for an update, properly signed.
    let mut corrupt = mine.t(3, 3, "a", "three", 3);
    corrupt.update = b"\xff\xfe this is not a yrs update \x00\x01\x02".to_vec();
    push(mallory.sign(corrupt), Some("decode"));
    // A valid update cut in half, signed.
    let mut truncated = mine.t(4, 4, "a", "four", 4);
    truncated.update.truncate(truncated.update.len() / 2);
    push(mallory.sign(truncated), Some("decode"));
    // A valid update over crdt.max_update_bytes.
    let big = mine.t(5, 5, "a", &"x".repeat(max_update + 100), 5);
    assert!(big.size() > max_update);
    push(mallory.sign(big), Some("too_large"));
    // Another node's genuine entry, altered in transit: its signature
    // lost a bit. Not held: the victim's real seq 1 still applies when an
    // honest peer sends it (see `a_forged_entry_does_not_hide_the_origin_s_real_one`).
    let mut forged = victim.sign(Author::new(victim.origin).t(1, 6, "a", "six", 6));
    forged.signature[10] ^= 0x01;
    push(forged, Some("signature"));
    // C's origin, signed with mallory's own (valid) key: not held either.
    let claims_c = Author::new(c_origin).t(1, 7, "a", "from c?", 7);
    push(mallory.sign(claims_c), Some("signature"));
    // The revoked node's entry, signed with its own key, relayed by mallory.
    let from_revoked = Author::new(revoked.origin).t(1, 8, "a", "revoked", 8);
    push(revoked.sign(from_revoked), Some("revoked"));
    // A table mallory may not send.
    let secret = mine.entry(
        6,
        "secret",
        "1",
        &[("id", Value::Integer(1)), ("v", Value::Text("s".into()))],
    );
    push(mallory.sign(secret), Some("forbidden_table"));
    // A row outside mallory's filter, and a legitimate row moved out of it.
    push(
        mallory.sign(mine.t(7, 9, "b", "nine", 9)),
        Some("forbidden_row"),
    );
    push(
        mallory.sign(mine.t(8, 1, "b", "one", 1)),
        Some("forbidden_row"),
    );
    // A value the CHECK constraint refuses.
    push(
        mallory.sign(mine.t(9, 10, "a", "ten", -1)),
        Some("constraint"),
    );
    // B's tenant-'b' row pulled into mallory's partition: the row fails
    // the filter before the change.
    push(
        mallory.sign(mine.t(10, 100, "a", "stolen", 0)),
        Some("forbidden_row"),
    );
    // One more legitimate row, after all the attacks.
    push(mallory.sign(mine.t(11, 12, "a", "twelve", 12)), None);

    let expected: BTreeMap<(u64, u64), String> = batch
        .iter()
        .filter_map(|(e, refused)| refused.map(|r| ((e.origin, e.seq), r.to_string())))
        .collect();
    assert_eq!(expected.len(), 11);
    let entries: Vec<LogEntry> = batch.into_iter().map(|(e, _)| e).collect();

    let rt = runtime();
    let have = rt.block_on(async {
        let mut link = Link::open(&b, &mallory).await;
        // Partial: B's rules filter what it sends mallory, so B admits
        // mallory only as a partial replica.
        let hello = link.handshake(&mallory.hello(&b, true)).await;
        assert_eq!(hello.node_id, b_id);
        let certs = vec![
            mallory.cert_der.clone(),
            revoked.cert_der.clone(),
            victim.cert_der.clone(),
        ];
        link.send(&Msg::Keys(certs)).await.unwrap();
        link.send(&Msg::Entries(entries)).await.unwrap();
        link.acked().await.expect("B acknowledges the batch")
    });
    // Every entry its origin provably wrote is held (applied or
    // quarantined) once B acknowledged the batch; the forged and
    // misattributed ones are not, so they hide nothing of their origins.
    assert_eq!(have.get(m), 11, "{have:?}");
    assert_eq!(have.get(revoked.origin), 1, "{have:?}");
    assert_eq!(have.get(victim.origin), 0, "{have:?}");
    assert_eq!(have.get(c_origin), 0, "{have:?}");

    // Each attack quarantined with its reason, and nothing else.
    assert_eq!(quarantine(&b), expected);
    let mut per_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for code in expected.values() {
        *per_reason.entry(code).or_default() += 1;
    }
    for (reason, n) in &per_reason {
        assert_eq!(
            rejected(&b, &mallory.node_id, reason),
            *n,
            "outpost_sync_rejected_total{{peer={:?}, reason={reason:?}}}",
            mallory.node_id
        );
    }
    assert_eq!(b.status()["quarantined"], json!(11));

    // B holds exactly the legitimate rows, the last one included, and its
    // own row unchanged.
    let legit = [
        json!([1, "a", "one", 1]),
        json!([2, "a", "two", 2]),
        json!([12, "a", "twelve", 12]),
    ];
    let mut on_b = legit.to_vec();
    on_b.push(theirs.clone());
    assert_eq!(t_rows(&b), on_b);
    assert_eq!(count(&b, "secret"), 0);

    // C: B relays an origin only up to its first quarantined entry (a
    // receiver's log must stay dense per origin below its vector; were B to
    // relay seq 11, C would hold it while lacking 3..10 for good, and never
    // fetch them once replayed). So C gets mallory's seq 1 and 2, not 11.
    let on_c = vec![legit[0].clone(), legit[1].clone(), theirs];
    eventually(WAIT, || t_rows(&c).len() >= 3);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(t_rows(&c), on_c, "C got more than mallory's seq 1..2");
    assert_eq!(count(&c, "secret"), 0);
    assert!(quarantine(&c).is_empty(), "B relayed a refused entry to C");
    let c_log = log_vector(&c);
    assert_eq!(c_log.get(m), 2, "{c_log:?}");
    assert_eq!(c_log.get(revoked.origin), 0, "{c_log:?}");
    assert_eq!(c_log.get(c_origin), 0, "{c_log:?}");
    assert_checks(&[&b, &c]);
}

#[test]
fn oversized_messages_and_batches_are_refused_whole() {
    let ca = tempfile::tempdir().unwrap();
    let mallory = Identity::new(ca.path());
    let max_message = 128 * 1024;
    let batch_entries = 4;
    let b = start_node(
        ca.path(),
        vec![],
        vec![
            ("OUTPOST_SYNC_MAX_MESSAGE_BYTES", max_message.to_string()),
            ("OUTPOST_SYNC_BATCH_ENTRIES", batch_entries.to_string()),
            // max_message_bytes must exceed the largest batch B would send.
            ("OUTPOST_SYNC_BATCH_BYTES", "16384".into()),
            ("OUTPOST_CRDT_MAX_UPDATE_BYTES", "16384".into()),
        ],
    );
    let m = mallory.origin;
    let mut mine = Author::new(m);
    let legit: Vec<LogEntry> = (1..=5)
        .map(|i| mallory.sign(mine.t(i as u64, i, "a", &format!("row {i}"), i)))
        .collect();
    let rt = runtime();
    let keys = Msg::Keys(vec![mallory.cert_der.clone()]);

    // Two legitimate entries and one with a 200 KB update: one message
    // over sync.max_message_bytes.
    let mut padded = mine.t(3, 3, "a", &"x".repeat(200 * 1024), 3);
    padded = mallory.sign(padded);
    let huge = Msg::Entries(vec![legit[0].clone(), legit[1].clone(), padded]);
    assert!(huge.encode().len() > max_message);
    let heard = rt.block_on(async {
        let mut link = Link::open(&b, &mallory).await;
        link.handshake(&mallory.hello(&b, false)).await;
        link.send(&keys).await.unwrap();
        // B may cut the connection while the frame is still being written.
        let _ = link.send(&huge).await;
        link.until_closed().await
    });
    assert!(
        !heard
            .iter()
            .any(|m| matches!(m, Msg::Ack { batches, .. } if *batches > 0)),
        "B acknowledged an oversized message: {heard:?}"
    );
    healthy(&b);
    assert!(t_rows(&b).is_empty());
    assert_eq!(log_vector(&b).get(m), 0);
    assert!(quarantine(&b).is_empty());

    // A batch of batch_entries + 1 legitimate entries: a protocol error.
    let reason = rt.block_on(async {
        let mut link = Link::open(&b, &mallory).await;
        link.handshake(&mallory.hello(&b, false)).await;
        link.send(&keys).await.unwrap();
        link.send(&Msg::Entries(legit.clone())).await.unwrap();
        link.acked()
            .await
            .expect_err("B took a batch over sync.batch_entries")
    });
    assert!(
        reason.contains("larger than sync.batch_entries"),
        "{reason}"
    );
    healthy(&b);
    assert!(t_rows(&b).is_empty());
    assert_eq!(log_vector(&b).get(m), 0);
    assert!(quarantine(&b).is_empty());

    // B still takes a new link, and a batch of exactly batch_entries.
    let have = rt.block_on(async {
        let mut link = Link::open(&b, &mallory).await;
        link.handshake(&mallory.hello(&b, false)).await;
        link.send(&keys).await.unwrap();
        link.send(&Msg::Entries(legit[..batch_entries].to_vec()))
            .await
            .unwrap();
        link.acked().await.expect("B acknowledges a full batch")
    });
    assert_eq!(have.get(m), batch_entries as u64);
    assert_eq!(t_rows(&b).len(), batch_entries);
    assert!(quarantine(&b).is_empty());
    assert_checks(&[&b]);
}

#[test]
fn a_revoked_node_cannot_open_a_link() {
    let ca = tempfile::tempdir().unwrap();
    let revoked = Identity::new(ca.path());
    let mallory = Identity::new(ca.path());
    let b = start_node(
        ca.path(),
        vec![],
        vec![("OUTPOST_SYNC_REVOKED_NODES", toml_list(&[&revoked.node_id]))],
    );
    let entry = revoked.sign(Author::new(revoked.origin).t(1, 1, "a", "revoked", 1));
    let rt = runtime();
    // Its certificate passes TLS (the CA signed it); its Hello is answered
    // with Bye. It pipelines a batch right behind the Hello.
    let heard = rt.block_on(async {
        let mut link = Link::open(&b, &revoked).await;
        link.send(&revoked.hello(&b, false)).await.unwrap();
        let _ = link.send(&Msg::Keys(vec![revoked.cert_der.clone()])).await;
        let _ = link.send(&Msg::Entries(vec![entry.clone()])).await;
        link.until_closed().await
    });
    let bye = heard.iter().find_map(|m| match m {
        Msg::Bye { reason } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        bye.as_deref()
            .is_some_and(|r| r.contains("sync.revoked_nodes") && r.contains(&revoked.node_id)),
        "no Bye naming the revocation: {heard:?}"
    );
    assert!(
        !heard
            .iter()
            .any(|m| matches!(m, Msg::Ack { batches, .. } if *batches > 0)),
        "{heard:?}"
    );

    // The same certificate saying it is another node: the link ends at the Hello.
    let heard = rt.block_on(async {
        let mut link = Link::open(&b, &revoked).await;
        link.send(&mallory.hello(&b, false)).await.unwrap();
        let _ = link.send(&Msg::Keys(vec![revoked.cert_der.clone()])).await;
        let _ = link.send(&Msg::Entries(vec![entry.clone()])).await;
        link.until_closed().await
    });
    assert!(
        !heard
            .iter()
            .any(|m| matches!(m, Msg::Ack { batches, .. } if *batches > 0)),
        "{heard:?}"
    );

    healthy(&b);
    assert!(t_rows(&b).is_empty());
    assert_eq!(log_vector(&b).get(revoked.origin), 0);
    // Never looked at: not even quarantined.
    assert!(quarantine(&b).is_empty());
    assert_eq!(rejected(&b, &revoked.node_id, "revoked"), 0);
    assert_checks(&[&b]);
}

#[test]
fn a_placeholder_is_not_applied_on_a_full_replica() {
    let ca = tempfile::tempdir().unwrap();
    let mallory = Identity::new(ca.path());
    let b = start_node(ca.path(), vec![], vec![]);
    let m = mallory.origin;
    let mut mine = Author::new(m);
    let first = mallory.sign(mine.t(1, 1, "a", "one", 1));
    let withheld = mallory.sign(mine.t(2, 2, "a", "two", 2));
    let after = mallory.sign(mine.t(3, 3, "a", "three", 3));
    let placeholder = withheld.placeholder();
    assert!(placeholder.is_placeholder());

    let rt = runtime();
    let keys = Msg::Keys(vec![mallory.cert_der.clone()]);
    let outcome = rt.block_on(async {
        let mut link = Link::open(&b, &mallory).await;
        link.handshake(&mallory.hello(&b, false)).await;
        link.send(&keys).await.unwrap();
        let batch = vec![first.clone(), placeholder, after.clone()];
        link.send(&Msg::Entries(batch)).await.unwrap();
        link.acked().await
    });
    // Deferred: B closes the link (without acknowledging) and waits for
    // the entry itself.
    let reason = outcome.expect_err("B acknowledged a batch with a placeholder");
    assert!(reason.contains("placeholder"), "{reason}");
    assert_eq!(t_rows(&b), vec![json!([1, "a", "one", 1])]);
    assert_eq!(
        log_vector(&b).get(m),
        1,
        "the placeholder advanced B's vector"
    );
    assert!(quarantine(&b).is_empty());
    assert_checks(&[&b]);

    // A new link: B says it holds seq 1 only, and takes the real entries.
    let have = rt.block_on(async {
        let mut link = Link::open(&b, &mallory).await;
        let theirs = link.handshake(&mallory.hello(&b, false)).await;
        assert_eq!(theirs.have.get(m), 1, "{:?}", theirs.have);
        link.send(&keys).await.unwrap();
        link.send(&Msg::Entries(vec![withheld, after]))
            .await
            .unwrap();
        link.acked().await.expect("B takes the real entries")
    });
    assert_eq!(have.get(m), 3);
    assert_eq!(t_rows(&b).len(), 3);
    assert_checks(&[&b]);
}

/// Mallory forges an entry for C's origin at a seq C has not reached yet.
/// B refuses it (its update does not even decode, and mallory's key cannot
/// sign for C). Were the refused entry held in B's vector, B would take
/// C's real entry of that seq for one it holds, and C's write would never
/// reach B: a peer could silently censor another node's writes. Only what
/// its origin provably wrote is held (`Capture::quarantine`).
#[test]
fn a_forged_entry_does_not_hide_the_origin_s_real_one() {
    let ca = tempfile::tempdir().unwrap();
    let mallory = Identity::new(ca.path());
    let b = start_node(ca.path(), vec![], vec![]);
    let c = start_node(ca.path(), vec![b.sync.clone().unwrap()], vec![]);
    wait_linked(&c, &b);
    let c_origin: u64 = c.status()["origin"].as_str().unwrap().parse().unwrap();

    let mut forged = Author::new(c_origin).t(1, 1, "a", "forged", 1);
    forged.update = b"not a yrs update".to_vec();
    let forged = mallory.sign(forged);
    let rt = runtime();
    rt.block_on(async {
        let mut link = Link::open(&b, &mallory).await;
        link.handshake(&mallory.hello(&b, false)).await;
        link.send(&Msg::Keys(vec![mallory.cert_der.clone()]))
            .await
            .unwrap();
        link.send(&Msg::Entries(vec![forged])).await.unwrap();
        link.acked().await.expect("B acknowledges the batch");
    });
    assert_eq!(
        quarantine(&b).into_iter().collect::<Vec<_>>(),
        vec![((c_origin, 1), "decode".to_string())]
    );

    // C's real seq 1 and 2.
    c.sql("INSERT INTO t VALUES (1, 'c', 'real', 1)", vec![]);
    c.sql("INSERT INTO t VALUES (2, 'c', 'real', 2)", vec![]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while t_rows(&b).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each node is consistent on its own: `check` does not see it.
    assert_checks(&[&b, &c]);
    assert_eq!(
        t_rows(&b),
        vec![json!([1, "c", "real", 1]), json!([2, "c", "real", 2])],
        "C's writes did not all reach B"
    );
}

/// A peer relays C's genuine seq 2 but withholds seq 1. Applying it would
/// put C at 2 in B's vector with seq 1 missing for good: no peer would
/// ever send it. B skips it (counted as `gap`), holds nothing of C, and
/// takes C's entries when they come in order.
#[test]
fn a_peer_withholding_an_entry_cannot_make_a_hole() {
    let ca = tempfile::tempdir().unwrap();
    let mallory = Identity::new(ca.path());
    let b = start_node(ca.path(), vec![], vec![]);
    let c = start_node(ca.path(), vec![], vec![]);
    let c_origin: u64 = c.status()["origin"].as_str().unwrap().parse().unwrap();
    // C's seq 2, signed with C's own key (as a relay would hold it).
    let c_key = std::fs::read_to_string(c.data_dir().join("tls/node.key")).unwrap();
    let c_signing = SigningKey::from_pkcs8_pem(&c_key).unwrap();
    let c_cert = std::fs::read(c.data_dir().join("tls/node.pem")).unwrap();
    let c_cert = rustls_pemfile::certs(&mut &c_cert[..])
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    let mut second = Author::new(c_origin).t(2, 2, "a", "second", 2);
    second.key_id = key_id(&c_signing.verifying_key());
    second.signature = c_signing.sign(&signed_bytes(&second)).to_bytes().to_vec();
    let rt = runtime();
    let have = rt.block_on(async {
        let mut link = Link::open(&b, &mallory).await;
        link.handshake(&mallory.hello(&b, false)).await;
        link.send(&Msg::Keys(vec![c_cert])).await.unwrap();
        link.send(&Msg::Entries(vec![second])).await.unwrap();
        link.acked().await.expect("B acknowledges the batch")
    });
    assert_eq!(have.get(c_origin), 0, "{have:?}");
    assert!(t_rows(&b).is_empty());
    assert!(quarantine(&b).is_empty());
    assert_eq!(rejected(&b, &mallory.node_id, "gap"), 1);

    // C's real seq 1 and 2 reach B once C links to it.
    c.sql("INSERT INTO t VALUES (1, 'c', 'real', 1)", vec![]);
    c.sql("INSERT INTO t VALUES (2, 'c', 'real', 2)", vec![]);
    let c = c.restart(Options {
        ca_dir: None,
        sync_listen: Some("127.0.0.1:0".into()),
        peers: vec![b.sync.clone().unwrap()],
        env: sync_env(),
        ..Options::default()
    });
    eventually(WAIT, || t_rows(&b).len() == 2);
    assert_eq!(
        t_rows(&b),
        vec![json!([1, "c", "real", 1]), json!([2, "c", "real", 2])]
    );
    assert_checks(&[&b, &c]);
}

/// The peak resident memory of a process (`VmHWM`), bytes.
fn peak_rss(node: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

/// Updates a few bytes long whose counts ask yrs for gigabytes (found by
/// the `apply_entry` fuzz target): each is refused as `decode` without the
/// node reserving and touching that memory (`outpost::alloc`).
#[test]
fn allocation_bombs_are_refused_cheaply() {
    let ca = tempfile::tempdir().unwrap();
    let mallory = Identity::new(ca.path());
    let b = start_node(ca.path(), vec![], vec![]);
    let before = peak_rss(&b);
    let m = mallory.origin;
    let mut mine = Author::new(m);
    let bombs: [&[u8]; 2] = [&[0x80, 0x80, 0x80, 0x80, 0x01], &[0x80, 0x80, 0x80, 0x40]];
    let batch: Vec<LogEntry> = (1..=40u64)
        .map(|seq| {
            let mut entry = mine.t(seq, seq as i64, "a", "bomb", 1);
            entry.update = bombs[seq as usize % 2].to_vec();
            mallory.sign(entry)
        })
        .collect();
    let rt = runtime();
    let have = rt.block_on(async {
        let mut link = Link::open(&b, &mallory).await;
        link.handshake(&mallory.hello(&b, false)).await;
        link.send(&Msg::Keys(vec![mallory.cert_der.clone()]))
            .await
            .unwrap();
        link.send(&Msg::Entries(batch)).await.unwrap();
        link.acked().await.expect("B acknowledges the batch")
    });
    assert_eq!(have.get(m), 40);
    let codes: Vec<String> = quarantine(&b).into_values().collect();
    assert_eq!(codes, vec!["decode".to_string(); 40]);
    // Uncapped, each of these reserved 256 or 512 MB and touched most of it.
    let grown = peak_rss(&b).saturating_sub(before);
    assert!(grown < 100 << 20, "peak RSS grew by {} MiB", grown >> 20);
    assert_checks(&[&b]);
}
