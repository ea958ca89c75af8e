//! The `apply_entry` target: remote log entries (and snapshot documents)
//! built from the fuzz input, merged by a real database through
//! `Database::apply` (`Database::apply_snapshot`), interleaved with local
//! writes through `Database::run`.
//!
//! The world ([`Env`], made once per process): three nodes in a temporary
//! directory with the same small schema ([`SCHEMA`]). Two *sources* make
//! real changes ([`SOURCE_WRITES`]); their change logs and row documents
//! are the *templates*. The *target* receives what the input describes:
//! every field of an entry is the template's, one of a few interesting
//! values, or raw bytes, and the update is the template's, another
//! template's, a merge of two, a row document, a mutated or truncated one,
//! or raw bytes. That way the fuzzer starts from entries that apply and
//! goes deep into the merge, rather than stopping at the yrs decoder.
//!
//! The input is a sequence of [`Op`]s in a small binary format
//! ([`decode`]/[`encode`]): any bytes decode (missing bytes read as zero),
//! so the fuzzer's mutations always make some input.
//!
//! Node ids are fixed, so templates have the same shape in every process;
//! their clock stamps differ (wall clock), and the target's state grows
//! during a run (entries applied by earlier inputs), so a crash found late
//! in a run may need the inputs before it: replay the run's corpus first.
//! `OUTPOST_FUZZ_VERBOSE=1` prints every operation and its outcome.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use libsql_hrana::proto::{Stmt, Value as HranaValue};
use libsql_sys::rusqlite::Connection;
use outpost::auth::Access;
use outpost::config::Config;
use outpost::db::capture::{LogEntry, SnapshotDoc};
use outpost::db::{Database, ExecCtx, WorkItem};
use outpost::metrics::Metrics;
use outpost::sync::rules::Outbound;
use outpost::sync::vv::VersionVector;

/// The tables of every node.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, n INTEGER CHECK (n >= 0))",
    "CREATE TABLE u(a TEXT, b BLOB, v REAL, w, PRIMARY KEY (a, b)) WITHOUT ROWID",
    "CREATE TABLE \"s p\"(\"k é\" TEXT PRIMARY KEY, x UNIQUE, y NUMERIC DEFAULT 7)",
];

/// What each source node writes (its change log holds the templates).
/// The two write the same rows differently, so their updates conflict.
pub const SOURCE_WRITES: [&[&str]; 2] = [
    &[
        "INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', NULL)",
        "UPDATE t SET name = 'uno', n = 10 WHERE id = 1",
        "DELETE FROM t WHERE id = 2",
        "INSERT INTO t VALUES (9223372036854775807, 'max', 0), (-1, 'neg', 5)",
        "INSERT INTO u VALUES ('a', X'00ff', 1.5, NULL), ('', X'', -0.0, 'text')",
        "INSERT INTO u VALUES ('k', X'01', 1e308, X'deadbeef')",
        "UPDATE u SET w = 42 WHERE a = 'a'",
        "INSERT INTO \"s p\" VALUES ('x', 1, 2.5), ('y', 'uniq', NULL)",
        "UPDATE \"s p\" SET x = 2 WHERE \"k é\" = 'x'",
        "INSERT INTO t VALUES (2, 'two again', 3)",
    ],
    &[
        "INSERT INTO t VALUES (1, 'eins', 100), (4, 'vier', 4)",
        "UPDATE t SET n = 0 WHERE id = 1",
        "DELETE FROM t WHERE id = 1",
        "INSERT INTO u VALUES ('a', X'00ff', 2.5, 'b')",
        "INSERT INTO \"s p\" VALUES ('z', 2, 0), ('x', 3, 1)",
        "UPDATE \"s p\" SET y = 'seven' WHERE \"k é\" = 'z'",
        "INSERT INTO t VALUES (5, 'long', 1)",
        "UPDATE t SET name = name || name || name || name WHERE id = 5",
        "DELETE FROM u",
    ],
];

/// Local writes the input can interleave; `?1` is an integer from the input.
pub const LOCAL_WRITES: &[&str] = &[
    "INSERT OR REPLACE INTO t VALUES (?1 % 8, 'local', ?1 % 5)",
    "UPDATE t SET n = ?1 WHERE id = 1",
    "DELETE FROM t WHERE id = ?1 % 8",
    "INSERT OR REPLACE INTO u VALUES ('a', X'00ff', ?1, 'local')",
    "DELETE FROM u WHERE v > ?1",
    "INSERT OR REPLACE INTO \"s p\" VALUES ('x', ?1, 1)",
    "UPDATE \"s p\" SET x = ?1 WHERE \"k é\" = 'z'",
    "UPDATE t SET name = CAST(?1 AS TEXT)",
];

/// Table names an entry may name besides its template's.
pub const TABLES: &[&str] = &[
    "t",
    "u",
    "s p",
    "T",
    "missing",
    "",
    "_outpost_log",
    "_outpost_rows",
    "sqlite_schema",
];

/// Row keys (`quote()` literals) an entry may carry besides its template's.
pub const KEYS: &[&str] = &[
    "1",
    "2",
    "4",
    "-1",
    "9223372036854775807",
    "'a',X'00FF'",
    "'',X''",
    "'k',X'01'",
    "'x'",
    "'z'",
    "NULL",
    "1.5",
    "'a'",
    "X'00'",
    "1,2",
    "",
    "'unterminated",
    "'it''s'",
    "'a',NULL",
    "-9223372036854775808",
    "99999999999999999999",
    "1e999",
];

/// The peer name the target is told the entries come from.
pub const PEER: &str = "fuzz-peer";

/// Most operations taken from one input, and entries or documents per one.
pub const MAX_OPS: usize = 16;
const MAX_ENTRIES: u8 = 8;
const MAX_DOCS: u8 = 4;

/// Builds a log entry. The one place that lists `LogEntry`'s fields, so a
/// change of them is one edit here. Unsigned (`key_id` 0): the nodes here
/// have no certificate, so they check no signatures (`sync::keys`).
pub fn entry(
    origin: u64,
    seq: u64,
    hlc: u64,
    table: String,
    key: String,
    schema_version: i64,
    update: Vec<u8>,
) -> LogEntry {
    LogEntry {
        origin,
        seq,
        hlc,
        table,
        key,
        schema_version,
        update,
        ..LogEntry::default()
    }
}

// ------------------------------------------------------------- the input

/// A field of an entry: its template's, one of the known values, or raw.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<T> {
    Template,
    Known(u8),
    Raw(T),
}

/// Where an update (or a snapshot document) comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Bytes {
    /// The template's own.
    Template,
    /// Another log entry's update.
    Entry(u8),
    /// A source's row document (a whole state).
    Doc(u8),
    /// `yrs::merge_updates_v1` of two log entries' updates.
    Merged(u8, u8),
    /// The template's with bytes overwritten at (position mod length).
    Mutated(Vec<(u16, u8)>),
    /// The template's first (n mod length) bytes.
    Truncated(u16),
    Raw(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EntrySpec {
    /// Index (mod count) of the template log entry.
    pub template: u8,
    pub origin: Field<u64>,
    /// `Known(0)` is the origin's next seq: one above what the target holds
    /// (an entry applies only right after one its origin's node holds).
    pub seq: Field<u64>,
    pub hlc: Field<u64>,
    pub table: Field<String>,
    pub key: Field<String>,
    pub schema_version: Field<i64>,
    pub update: Bytes,
}

impl EntrySpec {
    /// The template entry, unchanged.
    pub fn template(template: u8) -> EntrySpec {
        EntrySpec {
            template,
            origin: Field::Template,
            seq: Field::Template,
            hlc: Field::Template,
            table: Field::Template,
            key: Field::Template,
            schema_version: Field::Template,
            update: Bytes::Template,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DocSpec {
    /// Index (mod count) of the template row document.
    pub template: u8,
    pub table: Field<String>,
    pub key: Field<String>,
    pub doc: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `Database::apply` of these entries, in one call.
    Apply(Vec<EntrySpec>),
    /// `Database::apply_snapshot` of these documents; `done`: the vector
    /// {source origin (index): seq} the snapshot claims to cover.
    Snapshot {
        docs: Vec<DocSpec>,
        done: Option<(u8, u64)>,
    },
    /// A local write: `LOCAL_WRITES[stmt mod count]` with `?1 = arg`.
    Local { stmt: u8, arg: i64 },
}

/// Reads the input; past its end every byte reads as zero.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        for b in &mut bytes {
            *b = self.u8();
        }
        u64::from_le_bytes(bytes)
    }

    fn string(&mut self) -> String {
        let n = self.u8() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }

    fn field<T>(&mut self, raw: impl FnOnce(&mut Self) -> T) -> Field<T> {
        match self.u8() % 3 {
            0 => Field::Template,
            1 => Field::Known(self.u8()),
            _ => Field::Raw(raw(self)),
        }
    }

    fn bytes(&mut self) -> Bytes {
        match self.u8() % 7 {
            0 => Bytes::Template,
            1 => Bytes::Entry(self.u8()),
            2 => Bytes::Doc(self.u8()),
            3 => Bytes::Merged(self.u8(), self.u8()),
            4 => {
                let n = self.u8() % 8 + 1;
                Bytes::Mutated((0..n).map(|_| (self.u16(), self.u8())).collect())
            }
            5 => Bytes::Truncated(self.u16()),
            _ => {
                let n = self.u16() as usize;
                Bytes::Raw(self.take(n).to_vec())
            }
        }
    }

    fn entry(&mut self) -> EntrySpec {
        EntrySpec {
            template: self.u8(),
            origin: self.field(Self::u64),
            seq: self.field(Self::u64),
            hlc: self.field(Self::u64),
            table: self.field(Self::string),
            key: self.field(Self::string),
            schema_version: self.field(|r| r.u64() as i64),
            update: self.bytes(),
        }
    }

    fn doc(&mut self) -> DocSpec {
        DocSpec {
            template: self.u8(),
            table: self.field(Self::string),
            key: self.field(Self::string),
            doc: self.bytes(),
        }
    }
}

/// The operations an input describes (any bytes decode).
pub fn decode(input: &[u8]) -> Vec<Op> {
    let mut r = Reader(input);
    let mut ops = Vec::new();
    while !r.0.is_empty() && ops.len() < MAX_OPS {
        ops.push(match r.u8() % 8 {
            0..=4 => {
                let n = r.u8() % MAX_ENTRIES + 1;
                Op::Apply((0..n).map(|_| r.entry()).collect())
            }
            5 => {
                let n = r.u8() % MAX_DOCS + 1;
                let docs = (0..n).map(|_| r.doc()).collect();
                let done = match r.u8() % 2 {
                    0 => None,
                    _ => Some((r.u8(), r.u64())),
                };
                Op::Snapshot { docs, done }
            }
            _ => Op::Local {
                stmt: r.u8(),
                arg: r.u64() as i64,
            },
        });
    }
    ops
}

/// The bytes that [`decode`] reads as `ops` (for seeds). Counts must be
/// within the bounds `decode` applies.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    fn field<T>(out: &mut Vec<u8>, f: &Field<T>, raw: impl FnOnce(&mut Vec<u8>, &T)) {
        match f {
            Field::Template => out.push(0),
            Field::Known(i) => out.extend([1, *i]),
            Field::Raw(v) => {
                out.push(2);
                raw(out, v);
            }
        }
    }
    fn string(out: &mut Vec<u8>, s: &String) {
        let bytes = &s.as_bytes()[..s.len().min(255)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    fn u64(out: &mut Vec<u8>, v: &u64) {
        out.extend(v.to_le_bytes());
    }
    fn bytes(out: &mut Vec<u8>, b: &Bytes) {
        match b {
            Bytes::Template => out.push(0),
            Bytes::Entry(i) => out.extend([1, *i]),
            Bytes::Doc(i) => out.extend([2, *i]),
            Bytes::Merged(i, j) => out.extend([3, *i, *j]),
            Bytes::Mutated(edits) => {
                assert!((1..=8).contains(&edits.len()));
                out.extend([4, edits.len() as u8 - 1]);
                for (pos, byte) in edits {
                    out.extend(pos.to_le_bytes());
                    out.push(*byte);
                }
            }
            Bytes::Truncated(n) => {
                out.push(5);
                out.extend(n.to_le_bytes());
            }
            Bytes::Raw(raw) => {
                let raw = &raw[..raw.len().min(u16::MAX as usize)];
                out.push(6);
                out.extend((raw.len() as u16).to_le_bytes());
                out.extend_from_slice(raw);
            }
        }
    }
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Apply(entries) => {
                assert!((1..=MAX_ENTRIES as usize).contains(&entries.len()));
                out.extend([0, entries.len() as u8 - 1]);
                for e in entries {
                    out.push(e.template);
                    field(&mut out, &e.origin, u64);
                    field(&mut out, &e.seq, u64);
                    field(&mut out, &e.hlc, u64);
                    field(&mut out, &e.table, string);
                    field(&mut out, &e.key, string);
                    field(&mut out, &e.schema_version, |o, v| u64(o, &(*v as u64)));
                    bytes(&mut out, &e.update);
                }
            }
            Op::Snapshot { docs, done } => {
                assert!((1..=MAX_DOCS as usize).contains(&docs.len()));
                out.extend([5, docs.len() as u8 - 1]);
                for d in docs {
                    out.push(d.template);
                    field(&mut out, &d.table, string);
                    field(&mut out, &d.key, string);
                    bytes(&mut out, &d.doc);
                }
                match done {
                    None => out.push(0),
                    Some((peer, seq)) => {
                        out.extend([1, *peer]);
                        u64(&mut out, seq);
                    }
                }
            }
            Op::Local { stmt, arg } => {
                out.extend([6, *stmt]);
                u64(&mut out, &(*arg as u64));
            }
        }
    }
    out
}

// ------------------------------------------------------------- the world

/// The nodes and templates, made once per process ([`Env::get`]).
pub struct Env {
    rt: tokio::runtime::Runtime,
    db: Database,
    /// The target's own origin (its entries are refused by design, so the
    /// known origins leave it out).
    pub origin: u64,
    /// The sources' origins.
    pub peers: Vec<u64>,
    /// The sources' change logs.
    pub entries: Vec<LogEntry>,
    /// The sources' row documents.
    pub docs: Vec<SnapshotDoc>,
    /// `OUTPOST_FUZZ_VERBOSE` is set: print every operation and outcome (stderr).
    verbose: bool,
    _dir: tempfile::TempDir,
}

fn ctx() -> ExecCtx {
    ExecCtx {
        access: Access::ReadWrite,
        max_rows: 1000,
        max_bytes: 1 << 20,
        timeout: Duration::from_secs(60),
    }
}

fn stmt(sql: &str, args: Vec<HranaValue>) -> Stmt {
    Stmt {
        sql: Some(sql.to_string()),
        sql_id: None,
        args,
        named_args: Vec::new(),
        want_rows: Some(false),
        replication_index: None,
    }
}

/// Opens a node in `dir` with a fixed node id.
fn open_node(dir: &Path, node_id: &str) -> Database {
    let mut config = Config::default();
    config.node.data_dir = dir.to_path_buf();
    config.db.synchronous = "normal".into();
    config.db.readers = 1;
    config.crdt.sweep_interval = Duration::from_secs(3600);
    std::fs::create_dir_all(dir).expect("create node dir");
    // The id outpost would otherwise pick at random (`conn::init_meta`
    // keeps an existing one).
    let conn = Connection::open(config.db_path()).expect("create database file");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _outpost_meta (key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID",
    )
    .expect("create _outpost_meta");
    conn.execute(
        "INSERT OR REPLACE INTO _outpost_meta VALUES ('node_id', ?1)",
        [node_id],
    )
    .expect("set node id");
    drop(conn);
    Database::open(&config, std::sync::Arc::new(Metrics::new())).expect("open database")
}

impl Env {
    pub fn get() -> &'static Env {
        static ENV: OnceLock<Env> = OnceLock::new();
        ENV.get_or_init(Env::new)
    }

    fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("outpost-fuzz-")
            .tempdir()
            .expect("temp dir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let exec = |db: &Database, sql: &str| {
            let reply = rt
                .block_on(db.run(WorkItem::Execute(stmt(sql, Vec::new())), ctx(), None))
                .expect("submit");
            if let Err(e) = reply.output {
                panic!("setup statement {sql:?} failed: {e:?}");
            }
        };
        let mut peers = Vec::new();
        let mut entries = Vec::new();
        let mut docs = Vec::new();
        for (i, writes) in SOURCE_WRITES.iter().enumerate() {
            let db = open_node(
                &dir.path().join(format!("source{i}")),
                &format!("f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f{i}"),
            );
            for sql in SCHEMA.iter().chain(writes.iter()) {
                exec(&db, sql);
            }
            let origin = db.meta().expect("meta").origin;
            let mut upto = VersionVector::new();
            upto.observe(origin, (1 << 62) - 1);
            let log = db.log();
            let full = Outbound::default();
            entries.extend(
                log.read(
                    &VersionVector::new(),
                    &upto,
                    10_000,
                    usize::MAX,
                    i64::MAX,
                    &full,
                )
                .expect("read the source's log"),
            );
            docs.extend(
                log.read_docs(None, 10_000, usize::MAX, None)
                    .expect("read docs"),
            );
            peers.push(origin);
            db.shutdown();
        }
        let db = open_node(
            &dir.path().join("target"),
            "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0ff",
        );
        for sql in SCHEMA {
            exec(&db, sql);
        }
        let origin = db.meta().expect("meta").origin;
        assert!(!entries.is_empty() && !docs.is_empty());
        Env {
            rt,
            db,
            origin,
            peers,
            entries,
            docs,
            verbose: std::env::var_os("OUTPOST_FUZZ_VERBOSE").is_some(),
            _dir: dir,
        }
    }

    fn known_origin(&self, i: u8) -> u64 {
        let others = [1, (1 << 53) - 1, 0, 1 << 53, u64::MAX];
        let i = i as usize % (self.peers.len() + others.len());
        self.peers
            .get(i)
            .copied()
            .unwrap_or_else(|| others[i - self.peers.len()])
    }

    fn bytes(&self, spec: &Bytes, template: &[u8]) -> Vec<u8> {
        let entry = |i: u8| &self.entries[i as usize % self.entries.len()].update;
        match spec {
            Bytes::Template => template.to_vec(),
            Bytes::Entry(i) => entry(*i).clone(),
            Bytes::Doc(i) => self.docs[*i as usize % self.docs.len()].doc.clone(),
            Bytes::Merged(i, j) => {
                yrs::merge_updates_v1([entry(*i), entry(*j)]).unwrap_or_else(|_| entry(*i).clone())
            }
            Bytes::Mutated(edits) => {
                let mut bytes = template.to_vec();
                if !bytes.is_empty() {
                    let len = bytes.len();
                    for &(pos, byte) in edits {
                        bytes[pos as usize % len] = byte;
                    }
                }
                bytes
            }
            Bytes::Truncated(n) => template[..*n as usize % (template.len() + 1)].to_vec(),
            Bytes::Raw(raw) => raw.clone(),
        }
    }

    /// The log entry `spec` describes. `next`: the next seq per origin
    /// (the target's log vector, plus the entries of the call so far).
    pub fn entry(&self, spec: &EntrySpec, next: &mut HashMap<u64, u64>) -> LogEntry {
        let t = &self.entries[spec.template as usize % self.entries.len()];
        let pick = |f: &Field<u64>, template: u64, known: &dyn Fn(u8) -> u64| match f {
            Field::Template => template,
            Field::Known(i) => known(*i),
            Field::Raw(v) => *v,
        };
        let origin = pick(&spec.origin, t.origin, &|i| self.known_origin(i));
        let fresh = match spec.seq {
            Field::Known(i) if i % 7 == 0 => {
                let held = self.db.events().log_vector();
                let seq = next.entry(origin).or_insert_with(|| held.get(origin) + 1);
                *seq += 1;
                Some(*seq - 1)
            }
            _ => None,
        };
        let seq = pick(&spec.seq, t.seq, &|i| match i % 7 {
            0 => fresh.expect("fresh"),
            1 => 1,
            2 => 2,
            3 => 3,
            4 => (1 << 62) - 1,
            5 => 0,
            _ => 1 << 62,
        });
        let hlc = pick(&spec.hlc, t.hlc, &|i| match i % 6 {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => i64::MAX as u64,
            4 => 1 << 63,
            _ => t.hlc.wrapping_add(1),
        });
        let text = |f: &Field<String>, template: &str, known: &[&str]| match f {
            Field::Template => template.to_string(),
            Field::Known(i) => known[*i as usize % known.len()].to_string(),
            Field::Raw(s) => s.clone(),
        };
        let schema_version = match spec.schema_version {
            Field::Template => t.schema_version,
            Field::Known(i) => [0, 1, -1, i64::MAX, i64::MIN][i as usize % 5],
            Field::Raw(v) => v,
        };
        entry(
            origin,
            seq,
            hlc,
            text(&spec.table, &t.table, TABLES),
            text(&spec.key, &t.key, KEYS),
            schema_version,
            self.bytes(&spec.update, &t.update),
        )
    }

    /// The snapshot document `spec` describes.
    pub fn doc(&self, spec: &DocSpec) -> SnapshotDoc {
        let t = &self.docs[spec.template as usize % self.docs.len()];
        let text = |f: &Field<String>, template: &str, known: &[&str]| match f {
            Field::Template => template.to_string(),
            Field::Known(i) => known[*i as usize % known.len()].to_string(),
            Field::Raw(s) => s.clone(),
        };
        SnapshotDoc {
            table: text(&spec.table, &t.table, TABLES),
            key: text(&spec.key, &t.key, KEYS),
            doc: self.bytes(&spec.doc, &t.doc),
        }
    }

    /// Runs the operations an input describes. Panics on what must never
    /// happen: a failed call (as opposed to refused entries), a wrong
    /// number of outcomes, or a stopped database.
    pub fn run(&self, input: &[u8]) {
        for op in decode(input) {
            match op {
                Op::Apply(specs) => {
                    let mut next = HashMap::new();
                    let entries: Vec<LogEntry> =
                        specs.iter().map(|s| self.entry(s, &mut next)).collect();
                    let n = entries.len();
                    if self.verbose {
                        eprintln!("apply {entries:?}");
                    }
                    match self.rt.block_on(self.db.apply(entries.clone(), PEER)) {
                        Ok(outcomes) => {
                            assert_eq!(outcomes.len(), n, "one outcome per entry");
                            if self.verbose {
                                for (e, outcome) in entries.iter().zip(&outcomes) {
                                    eprintln!(
                                        "apply {}:{} {:?} {:?}: {outcome:?}",
                                        e.origin, e.seq, e.table, e.key
                                    );
                                }
                            }
                        }
                        Err(e) => panic!(
                            "Database::apply failed as a whole (not a per-entry rejection): \
                             {e:?}\nentries: {entries:?}"
                        ),
                    }
                }
                Op::Snapshot { docs, done } => {
                    let docs: Vec<SnapshotDoc> = docs.iter().map(|d| self.doc(d)).collect();
                    let done = done.map(|(peer, seq)| {
                        let mut vv = VersionVector::new();
                        vv.observe(self.peers[peer as usize % self.peers.len()], seq);
                        vv
                    });
                    if self.verbose {
                        eprintln!("snapshot {docs:?}, done {done:?}");
                    }
                    let result =
                        self.rt
                            .block_on(self.db.apply_snapshot(docs.clone(), done.clone(), PEER));
                    if self.verbose {
                        eprintln!("snapshot of {} docs: {result:?}", docs.len());
                    }
                    if let Err(e) = result {
                        panic!(
                            "Database::apply_snapshot failed as a whole: {e:?}\n\
                             docs: {docs:?}\ndone: {done:?}"
                        );
                    }
                }
                Op::Local { stmt: i, arg } => {
                    let sql = LOCAL_WRITES[i as usize % LOCAL_WRITES.len()];
                    let item =
                        WorkItem::Execute(stmt(sql, vec![HranaValue::Integer { value: arg }]));
                    // The statement may fail (constraints); it must run.
                    match self.rt.block_on(self.db.run(item, ctx(), None)) {
                        Ok(reply) if self.verbose => {
                            eprintln!("local {sql:?} with {arg}: {:?}", reply.output.err())
                        }
                        Ok(_) => {}
                        Err(e) => panic!("local write {sql:?} with {arg} not run: {e:?}"),
                    }
                }
            }
        }
    }
}
