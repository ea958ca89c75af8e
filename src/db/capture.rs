//! Change capture: every committed change to a replicated table becomes a
//! CRDT update in `_outpost_log`, in the same transaction.
//!
//! How a write is captured:
//! 1. Triggers on each replicated table (`_outpost_ins_*`, `_upd_*`,
//!    `_del_*`) record the key of every changed row in `_outpost_pending`.
//!    They are plain SQL, so writes by other programs (the sqlite3 CLI)
//!    are recorded too, whether outpost runs or not.
//! 2. Before every COMMIT on the writer — group commits, a client's
//!    `COMMIT`, the implicit transaction around an autocommit statement —
//!    [`Capture::flush`] turns each pending key into a yrs update: it loads
//!    the row's document, compares it with the table (so a rolled-back
//!    savepoint or a no-op UPDATE records nothing), writes the new document
//!    to `_outpost_rows` and appends the update to `_outpost_log` with the
//!    next dense `seq` and a hybrid logical clock.
//! 3. The same COMMIT makes the row, its document and its log entry
//!    durable together; a rollback discards all three.
//!
//! [`Capture::apply`] is the other direction (replication): it merges a
//! remote update into the row's document, writes the resulting row back
//! (its triggers' pending keys are cleared, so it is not captured again)
//! and appends the entry under its origin.
//!
//! Schema changes are picked up at the next flush: the schema cookie
//! changed, so the triggers of new or altered tables are (re)installed and
//! their rows re-encoded, inside the transaction that changed the schema.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use libsql_sys::rusqlite::{self, params, Connection, OptionalExtension};

use super::events::{ChangeEvent, Events, Op};
use crate::config::CrdtConfig;
use crate::crdt::{parse_key, DocError, Hlc, RowDoc, RowView, Slot, Stamp, Unwritten, Value};
use crate::error::SqlError;
use crate::metrics::Metrics;
use crate::sync::vv::VersionVector;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
    #[error("row document of {table} {key}: {source}")]
    Doc {
        table: String,
        key: String,
        source: DocError,
    },
    #[error("table {0:?} is listed in crdt.replicate but has no PRIMARY KEY; add one (any type, composite allowed) or stop replicating it")]
    NoPrimaryKey(String),
    #[error("bad row key {0}")]
    Key(String),
    /// COMMIT itself failed (e.g. a deferred foreign key): not capture's fault.
    #[error("{0}")]
    Commit(rusqlite::Error),
    #[error("the change to {table} {key} would be a {size}-byte update, more than crdt.max_update_bytes ({max}); peers would refuse it, so it is refused here (store large values outside the replicated tables, or raise the limit on every node)")]
    TooLarge {
        table: String,
        key: String,
        size: usize,
        max: usize,
    },
    #[error("the node certificate is for node {cert_node}, not for this data dir's node (see `outpost status`); issue this node its own: `outpost init --data-dir DIR --ca-dir CA --force-cert`")]
    ForeignKey { cert_node: String },
    #[error("{given} entries in one apply call; crdt.max_apply_batch is {max}")]
    BatchTooLarge { given: usize, max: usize },
}

impl From<CaptureError> for SqlError {
    fn from(e: CaptureError) -> Self {
        if let CaptureError::Commit(e) = e {
            return SqlError::from(e);
        }
        if let CaptureError::TooLarge { .. } = e {
            return SqlError::new("OUTPOST_CHANGE_TOO_LARGE", e.to_string());
        }
        SqlError::new(
            "OUTPOST_CAPTURE",
            format!("change capture failed, the transaction was not committed: {e}"),
        )
    }
}

/// One entry of the change log, as replication moves it between nodes.
///
/// An entry with an empty update is a *placeholder*: it stands for an entry
/// a peer's rules withheld from this node (partial replication), keeping
/// the log dense; it names nothing and changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogEntry {
    pub origin: u64,
    pub seq: u64,
    pub hlc: u64,
    pub table: String,
    pub key: String,
    pub schema_version: i64,
    pub update: Vec<u8>,
    /// The key that signed the entry (`sync::keys::key_id`; 0: unsigned).
    pub key_id: u64,
    /// The origin's Ed25519 signature over the entry (`sync::keys`).
    pub signature: Vec<u8>,
}

impl LogEntry {
    /// The placeholder standing for `self` (see [`LogEntry`]).
    pub fn placeholder(&self) -> LogEntry {
        LogEntry {
            origin: self.origin,
            seq: self.seq,
            hlc: self.hlc,
            schema_version: self.schema_version,
            ..LogEntry::default()
        }
    }

    pub fn is_placeholder(&self) -> bool {
        self.update.is_empty()
    }

    /// The bytes an entry weighs against `crdt.max_update_bytes` and the
    /// sync batch budget: its update plus its table name and key.
    pub fn size(&self) -> usize {
        self.update.len() + self.table.len() + self.key.len()
    }
}

/// A row's whole document, as a snapshot carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDoc {
    pub table: String,
    pub key: String,
    pub doc: Vec<u8>,
}

/// A row merged from a remote update.
struct Merged {
    doc: Vec<u8>,
    op: Op,
    values: Vec<(String, Value)>,
    /// Origin and clock of the row's existence stamp (for the feed event).
    winner: (u64, u64),
    /// Values the entry wrote into columns the table lacks (written under
    /// an older schema, for columns dropped since): ignored.
    ignored: usize,
}

/// Whether [`Capture::merge_row`] checks the columns an update writes.
#[derive(Debug, Clone, Copy)]
enum Columns<'a> {
    /// A snapshot's whole document: columns not checked; `filter` as below.
    Unchecked { filter: Option<&'a str> },
    /// An entry's update by `origin`. `same_schema`: written under this
    /// node's schema version, so a column the table lacks is refused
    /// (`column`); written under an older one, it is ignored and counted.
    /// `filter`: the sending peer's row filter, which the row must pass
    /// before and after the change.
    Entry {
        origin: u64,
        same_schema: bool,
        filter: Option<&'a str>,
    },
}

/// What the checks of one remote entry decided ([`Capture::admit`]).
enum Verdict {
    Applied,
    Deferred(String),
    Refused(Rejection),
}

/// What became of one remote entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// Already in the log: nothing changed.
    Duplicate,
    /// Not applied and quarantined, with the reason (the rest of the batch
    /// still applies).
    Rejected(String),
    /// Not applied, not quarantined, not held: the entry before it (same
    /// origin) is not held here (see `Capture::follows_held`). Sent again
    /// on a later link.
    Skipped(String),
    /// Not applied and not quarantined: written under a newer schema than
    /// this node's. Every later entry of the batch is deferred too, so that
    /// nothing of that origin is applied past the gap; the sender keeps the
    /// entries and sends them again once this node has migrated.
    Deferred(String),
}

/// Why an entry is refused: a stable code (the metric label, the
/// quarantine's `code` column) and a message for the operator.
#[derive(Debug, Clone)]
struct Rejection {
    code: &'static str,
    message: String,
}

impl Rejection {
    fn new(code: &'static str, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

/// Bumped when the capture triggers change, so that they are reinstalled.
const TRIGGER_FORMAT: &str = "triggers v4";

/// Capture triggers per table: after insert/update/delete (always), and
/// before insert/update (tables with UNIQUE indexes besides the key).
const TRIGGER_KINDS: [&str; 5] = ["ins", "upd", "del", "bins", "bupd"];

/// A replicated table as capture needs it.
#[derive(Debug, Clone)]
struct TableInfo {
    columns: Vec<String>,
    pk: Vec<String>,
    select_row: String,
    /// Each column's constant default (NULL when it declares none).
    defaults: HashMap<String, Value>,
}

/// Creates outpost's capture tables (idempotent). Runs on the writer.
pub fn create_tables(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _outpost_pending (
             tbl TEXT NOT NULL, pk TEXT NOT NULL, PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS _outpost_rows (
             tbl TEXT NOT NULL, pk TEXT NOT NULL, doc BLOB NOT NULL,
             PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS _outpost_log (
             origin INTEGER NOT NULL, seq INTEGER NOT NULL, hlc INTEGER NOT NULL,
             tbl TEXT NOT NULL, pk TEXT NOT NULL, schema_version INTEGER NOT NULL,
             \"update\" BLOB NOT NULL, PRIMARY KEY (origin, seq)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS _outpost_quarantine (
             origin INTEGER NOT NULL, seq INTEGER NOT NULL, hlc INTEGER NOT NULL,
             tbl TEXT NOT NULL, pk TEXT NOT NULL, schema_version INTEGER NOT NULL,
             \"update\" BLOB NOT NULL, peer TEXT NOT NULL, code TEXT NOT NULL,
             reason TEXT NOT NULL, at_ms INTEGER NOT NULL,
             PRIMARY KEY (origin, seq)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS _outpost_compacted (
             origin INTEGER PRIMARY KEY, upto INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS _outpost_peers (
             node_id TEXT PRIMARY KEY, url TEXT, have BLOB NOT NULL,
             seen_ms INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS _outpost_tables (
             tbl TEXT PRIMARY KEY, sql TEXT NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS _outpost_keys (
             key_id INTEGER PRIMARY KEY, node_id TEXT NOT NULL, cert BLOB NOT NULL);
         INSERT OR IGNORE INTO _outpost_meta VALUES ('schema_version', 0);",
    )?;
    // Signatures (issue 6) came after the first data dirs: add their columns.
    for table in ["_outpost_log", "_outpost_quarantine"] {
        add_column(conn, table, "key_id", "INTEGER NOT NULL DEFAULT 0")?;
        add_column(conn, table, "sig", "BLOB NOT NULL DEFAULT x''")?;
    }
    if add_column(
        conn,
        "_outpost_quarantine",
        "held",
        "INTEGER NOT NULL DEFAULT 1",
    )? {
        conn.execute_batch(
            "UPDATE _outpost_quarantine SET held = 0 WHERE code IN ('range', 'own_origin')",
        )?;
    }
    Ok(())
}

/// Adds a column to an internal table that lacks it (a data dir from an
/// older version). Returns whether it was added.
fn add_column(conn: &Connection, table: &str, column: &str, decl: &str) -> rusqlite::Result<bool> {
    let has: bool = conn.query_row(
        &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = '{column}'"),
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    }
    Ok(!has)
}

/// Reads the node id from `_outpost_meta` and derives the yrs client id.
pub fn client_id(conn: &Connection) -> rusqlite::Result<u64> {
    let node_id: String = conn.query_row(
        "SELECT value FROM _outpost_meta WHERE key = 'node_id'",
        [],
        |r| r.get(0),
    )?;
    Ok(crate::crdt::client_id_of(&node_id))
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn quote_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The SQL expression of a row's key: `quote(a)||','||quote(b)`.
pub(crate) fn key_expr(pk: &[String], prefix: &str) -> String {
    pk.iter()
        .map(|c| format!("quote({prefix}{})", quote_ident(c)))
        .collect::<Vec<_>>()
        .join("||','||")
}

/// `"a", "b"`: columns quoted for SQL.
pub(crate) fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The schema cookie: changes with every schema change (cheap to read).
fn schema_cookie(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA schema_version")?
        .query_row([], |r| r.get(0))
}

pub(crate) fn where_pk(pk: &[String]) -> String {
    pk.iter()
        .enumerate()
        .map(|(i, c)| format!("{} IS ?{}", quote_ident(c), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn trigger_name(kind: &str, table: &str) -> String {
    quote_ident(&format!("_outpost_{kind}_{table}"))
}

/// Internal SQL texts, prefixed with a per-process secret comment: the
/// statement cache is keyed by text and cached statements skip the
/// authorizer, so a client must not be able to send a text that hits one.
struct InternalSql {
    prefix: String,
}

impl InternalSql {
    fn new() -> Self {
        let nonce: u64 = rand::random();
        InternalSql {
            prefix: format!("/*outpost-internal {nonce:016x}*/ "),
        }
    }

    fn text(&self, body: &str) -> String {
        format!("{}{body}", self.prefix)
    }
}

/// Encoded row documents, most recently used first, bounded in bytes.
/// Holds committed state only: documents written by the open transaction
/// wait in `staged` until it commits.
struct DocCache {
    entries: lru::LruCache<(String, String), Arc<[u8]>>,
    bytes: usize,
    max_bytes: usize,
    /// Written by the open transaction: None once a ROLLBACK TO may have
    /// undone the write (then it is only evicted at commit).
    staged: HashMap<(String, String), Option<Arc<[u8]>>>,
    staged_entries: u64,
    staged_log_bytes: i64,
}

impl DocCache {
    fn new(max_bytes: usize) -> Self {
        DocCache {
            entries: lru::LruCache::unbounded(),
            bytes: 0,
            max_bytes,
            staged: HashMap::new(),
            staged_entries: 0,
            staged_log_bytes: 0,
        }
    }

    fn get(&mut self, key: &(String, String)) -> Option<Arc<[u8]>> {
        if self.staged.contains_key(key) {
            return None; // the table holds the transaction's version
        }
        self.entries.get(key).cloned()
    }

    fn insert(&mut self, key: (String, String), doc: Arc<[u8]>) {
        if doc.len() > self.max_bytes {
            return;
        }
        self.bytes += doc.len();
        if let Some(old) = self.entries.put(key, doc) {
            self.bytes -= old.len();
        }
        while self.bytes > self.max_bytes {
            match self.entries.pop_lru() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    fn stage(&mut self, key: (String, String), doc: Arc<[u8]>) {
        if let Some(old) = self.entries.pop(&key) {
            self.bytes -= old.len();
        }
        self.staged.insert(key, Some(doc));
    }

    fn forget_staged_values(&mut self) {
        for doc in self.staged.values_mut() {
            *doc = None;
        }
    }

    /// The transaction ended: keep its documents if it committed.
    fn settle(&mut self, committed: bool, metrics: &Metrics, source: &str) {
        let staged = std::mem::take(&mut self.staged);
        if committed {
            for (key, doc) in staged {
                if let Some(doc) = doc {
                    self.insert(key, doc);
                }
            }
            metrics
                .log_entries_total
                .with_label_values(&[source])
                .inc_by(self.staged_entries);
            metrics.log_bytes.add(self.staged_log_bytes);
        }
        self.staged_entries = 0;
        self.staged_log_bytes = 0;
    }
}

const TXN_COMMITTED: u8 = 1;
const TXN_ROLLED_BACK: u8 = 2;

/// The writer's capture state. Single-threaded: it lives on the writer.
pub struct Capture {
    config: CrdtConfig,
    client: u64,
    /// The version local entries are written under (`db::migrate`).
    schema_version: Cell<i64>,
    /// A migration's transaction is open (see [`Capture::begin_migration`]).
    migrating: Cell<bool>,
    /// The open transaction may have changed the schema: announce it at commit.
    schema_touched: Cell<bool>,
    sql: InternalSql,
    tables: RefCell<HashMap<String, TableInfo>>,
    schema_cookie: Cell<Option<i64>>,
    warned: RefCell<HashSet<String>>,
    /// Tables dropped in the open transaction: their documents record deletes.
    dropped: RefCell<HashSet<String>>,
    hlc: RefCell<Hlc>,
    cache: RefCell<DocCache>,
    /// Set by SQLite's commit and rollback hooks.
    txn_outcome: Arc<AtomicU8>,
    /// Source label of the entries staged by the open transaction.
    staged_source: Cell<&'static str>,
    /// Changes of the open transaction, announced once it commits.
    staged_events: RefCell<Vec<ChangeEvent>>,
    /// A ROLLBACK TO may have undone some of `staged_events`.
    events_uncertain: Cell<bool>,
    /// Entries the open transaction quarantined: held (in the version
    /// vector) once it commits.
    staged_held: RefCell<VersionVector>,
    trust: Trust,
    /// Keys whose certificates `_outpost_keys` holds (committed), and those
    /// the open transaction added.
    kept_keys: RefCell<HashSet<u64>>,
    staged_keys: RefCell<HashSet<u64>>,
    events: Arc<Events>,
    metrics: Arc<Metrics>,
}

/// What capture signs with and what it checks remote entries against
/// (issue 6): the key ring, and the sync config (whether this node is a
/// partial replica, the per-peer rules).
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// None: the node has no key (and no sync): it neither signs nor verifies.
    pub keys: Option<Arc<crate::sync::keys::KeyRing>>,
    pub sync: crate::config::SyncConfig,
}

impl Trust {
    pub fn from_config(
        config: &crate::config::Config,
    ) -> Result<Trust, crate::sync::keys::KeyError> {
        Ok(Trust {
            keys: crate::sync::keys::KeyRing::load(config)?,
            sync: config.sync.clone(),
        })
    }
}

/// The highest seq per origin in the log and the quarantine's *held*
/// entries (see [`Capture::quarantine`]: only entries their origin
/// provably wrote count as held).
pub fn log_vector(conn: &Connection) -> rusqlite::Result<VersionVector> {
    let mut vv = VersionVector::new();
    for sql in [
        "SELECT origin, max(seq) FROM _outpost_log GROUP BY origin",
        "SELECT origin, max(seq) FROM _outpost_quarantine WHERE held GROUP BY origin",
        "SELECT origin, upto FROM _outpost_compacted",
    ] {
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            vv.observe(row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64);
        }
    }
    Ok(vv)
}

impl Capture {
    /// Prepares capture on the writer connection: creates the internal
    /// tables, installs triggers, and encodes whatever other programs
    /// changed while outpost was stopped. Runs its own transaction.
    pub fn start(
        conn: &Connection,
        config: &CrdtConfig,
        metrics: Arc<Metrics>,
        events: Arc<Events>,
        trust: Trust,
    ) -> Result<Capture, CaptureError> {
        create_tables(conn)?;
        events.reset(log_vector(conn)?);
        let client = client_id(conn)?;
        let schema_version = super::migrate::schema_version(conn)?;
        let (last_hlc, log_bytes): (i64, i64) = conn.query_row(
            "SELECT coalesce(max(hlc), 0), coalesce(sum(length(\"update\")), 0) FROM _outpost_log",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        metrics.log_bytes.set(log_bytes);
        let txn_outcome = Arc::new(AtomicU8::new(0));
        let on_commit = Arc::clone(&txn_outcome);
        conn.commit_hook(Some(move || {
            on_commit.fetch_or(TXN_COMMITTED, Ordering::Relaxed);
            false
        }));
        let on_rollback = Arc::clone(&txn_outcome);
        conn.rollback_hook(Some(move || {
            on_rollback.fetch_or(TXN_ROLLED_BACK, Ordering::Relaxed);
        }));
        let capture = Capture {
            config: config.clone(),
            client,
            schema_version: Cell::new(schema_version),
            migrating: Cell::new(false),
            schema_touched: Cell::new(true),
            sql: InternalSql::new(),
            tables: RefCell::new(HashMap::new()),
            schema_cookie: Cell::new(None),
            warned: RefCell::new(HashSet::new()),
            dropped: RefCell::new(HashSet::new()),
            hlc: RefCell::new(Hlc::starting_after(last_hlc as u64)),
            cache: RefCell::new(DocCache::new(config.doc_cache_bytes)),
            txn_outcome,
            staged_source: Cell::new("local"),
            staged_events: RefCell::new(Vec::new()),
            events_uncertain: Cell::new(false),
            staged_held: RefCell::new(VersionVector::new()),
            trust,
            kept_keys: RefCell::new(HashSet::new()),
            staged_keys: RefCell::new(HashSet::new()),
            events,
            metrics,
        };
        capture.load_keys(conn)?;
        let swept = capture.sweep(conn)?;
        if swept > 0 {
            tracing::info!(
                rows = swept,
                "encoded rows changed while outpost was not capturing"
            );
        }
        capture.publish_schema(conn)?;
        Ok(capture)
    }

    /// Reads the schema version and hash the database is at, writes local
    /// entries under that version from now on, and announces them.
    fn publish_schema(&self, conn: &Connection) -> rusqlite::Result<()> {
        let version = super::migrate::schema_version(conn)?;
        self.schema_version.set(version);
        self.metrics.schema_version.set(version);
        self.events.set_schema(super::events::SchemaState {
            version,
            hash: super::migrate::schema_hash(conn)?,
        });
        Ok(())
    }

    /// The open transaction is migration `version`: its flush writes entries
    /// under that version, and records values other than the default in
    /// columns a row's document lacks (a backfill) with the lowest stamp, so
    /// that every node running the same migration agrees and a real write
    /// wins over them (`Unwritten::Fill`). Ends at the next commit or rollback.
    pub fn begin_migration(&self, version: i64) {
        self.schema_version.set(version);
        self.migrating.set(true);
        self.schema_touched.set(true);
    }

    pub fn client_id(&self) -> u64 {
        self.client
    }

    /// Encodes pending changes in a transaction of its own (the periodic
    /// sweep for changes made by other programs). Returns the rows encoded.
    pub fn sweep(&self, conn: &Connection) -> Result<usize, CaptureError> {
        // Most sweeps find nothing: do not take the write lock for them.
        if !self.has_pending(conn)? && self.schema_cookie.get() == Some(schema_cookie(conn)?) {
            return Ok(0);
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        self.flush_and_commit(conn)
    }

    /// Encodes the open transaction's pending changes and commits it; on
    /// failure rolls it back. Either way the transaction is over after it.
    pub fn flush_and_commit(&self, conn: &Connection) -> Result<usize, CaptureError> {
        let result = self.flush(conn).and_then(|n| {
            conn.prepare_cached("COMMIT")
                .and_then(|mut commit| commit.raw_execute())
                .map_err(CaptureError::Commit)?;
            Ok(n)
        });
        if result.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        self.settle(conn);
        result
    }

    /// Whether rows wait in `_outpost_pending` (cheap; outside transactions).
    pub fn has_pending(&self, conn: &Connection) -> Result<bool, CaptureError> {
        let sql = self.sql.text("SELECT 1 FROM _outpost_pending LIMIT 1");
        Ok(conn
            .prepare_cached(&sql)?
            .query_row([], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Call after anything that may have ended the writer's transaction,
    /// with internal access (it reads `_outpost_*` tables).
    pub fn settle(&self, conn: &Connection) {
        if !conn.is_autocommit() {
            return;
        }
        let outcome = self.txn_outcome.swap(0, Ordering::Relaxed);
        if outcome == 0 {
            return; // no transaction ended since the last call
        }
        let committed = outcome & TXN_COMMITTED != 0 && outcome & TXN_ROLLED_BACK == 0;
        if !committed {
            // The schema cookie went back with the rollback; later changes
            // may bring it to the remembered value again.
            self.schema_cookie.set(None);
        }
        self.cache
            .borrow_mut()
            .settle(committed, &self.metrics, self.staged_source.get());
        self.staged_source.set("local");
        self.migrating.set(false);
        if self.schema_touched.replace(false) {
            // After a rollback this restores the version a migration set.
            if let Err(e) = self.publish_schema(conn) {
                tracing::error!(error = %e, "reading the schema version failed");
            }
        }
        let keys = std::mem::take(&mut *self.staged_keys.borrow_mut());
        if committed {
            self.kept_keys.borrow_mut().extend(keys);
        }
        self.announce(conn, committed);
    }

    /// Publishes the committed transaction's changes (feed, replication).
    fn announce(&self, conn: &Connection, committed: bool) {
        let mut staged = std::mem::take(&mut *self.staged_events.borrow_mut());
        let uncertain = self.events_uncertain.replace(false);
        let held = std::mem::take(&mut *self.staged_held.borrow_mut());
        if committed && !held.0.is_empty() {
            // Quarantined entries count as held: peers need not send them again.
            self.events.observe(&held);
        }
        if !committed || staged.is_empty() {
            return;
        }
        if uncertain {
            // Rare: a ROLLBACK TO after a flush. Keep what the log holds.
            staged.retain(|e| self.has_entry(conn, e.origin, e.seq).unwrap_or(false));
        }
        self.events.publish(staged);
    }

    /// Stages the change event of a stored log entry.
    fn stage_event(
        &self,
        entry: &LogEntry,
        op: Op,
        values: impl FnOnce() -> Option<Vec<(String, Value)>>,
    ) {
        let values = if self.events.has_subscribers() && op != Op::Delete {
            values()
        } else {
            None
        };
        self.staged_events.borrow_mut().push(ChangeEvent {
            origin: entry.origin,
            seq: entry.seq,
            hlc: entry.hlc,
            table: entry.table.clone(),
            key: entry.key.clone(),
            op,
            values,
        });
    }

    /// A `ROLLBACK TO` may have undone documents written earlier in the
    /// open transaction: do not cache them at commit.
    pub fn savepoint_rolled_back(&self) {
        self.schema_cookie.set(None);
        self.events_uncertain.set(true);
        self.cache.borrow_mut().forget_staged_values();
    }

    /// Encodes every pending row change as a CRDT update. Runs inside the
    /// writer's open transaction, just before its COMMIT, with the
    /// authorizer's internal access on.
    pub fn flush(&self, conn: &Connection) -> Result<usize, CaptureError> {
        self.reconcile_if_schema_changed(conn)?;
        let pending = self.pending(conn)?;
        if pending.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let mut seq = self.next_seq(conn, self.client)?;
        let hlc = self.hlc.borrow_mut().tick(Hlc::now_ms());
        let stamp = Stamp {
            hlc,
            origin: self.client,
        };
        let tables = self.tables.borrow();
        let mut encoded = 0;
        for (table, key) in pending {
            let row = match tables.get(&table) {
                Some(info) => self.read_row(conn, info, &table, &key)?,
                None if self.dropped.borrow().contains(&table) => None,
                None => continue, // no longer replicated
            };
            let doc = self.load_doc(conn, &table, &key)?;
            let migrating = self.migrating.get();
            let defaults = tables.get(&table).map(|info| &info.defaults);
            // A value in a column the document has none for (see `Unwritten`).
            let unwritten = |column: &str, value: &Value| {
                let default = defaults.and_then(|d| d.get(column));
                if default.is_some_and(|default| same_value(default, value)) {
                    Unwritten::Default
                } else if migrating {
                    Unwritten::Fill
                } else {
                    Unwritten::Write
                }
            };
            let recorded = doc.record_local(
                stamp,
                row.as_deref(),
                self.config.compact_doc_bytes,
                &unwritten,
            );
            let (update, live) = match recorded {
                Ok(Some(recorded)) => recorded,
                Ok(None) => continue,
                Err(source) => return Err(CaptureError::Doc { table, key, source }),
            };
            let mut entry = LogEntry {
                origin: self.client,
                seq,
                hlc,
                table,
                key,
                schema_version: self.schema_version.get(),
                update,
                ..LogEntry::default()
            };
            if let Some(keys) = &self.trust.keys {
                keys.sign(&mut entry);
            }
            if entry.size() > self.config.max_update_bytes {
                return Err(CaptureError::TooLarge {
                    size: entry.size(),
                    max: self.config.max_update_bytes,
                    key: entry.key.chars().take(64).collect(),
                    table: entry.table,
                });
            }
            self.store(conn, &entry, doc.encode())?;
            let op = match live {
                Some(true) => Op::Insert,
                Some(false) => Op::Delete,
                None => Op::Update,
            };
            self.stage_event(&entry, op, || row);
            seq += 1;
            encoded += 1;
        }
        conn.prepare_cached(&self.sql.text("DELETE FROM _outpost_pending"))?
            .raw_execute()?;
        self.dropped.borrow_mut().clear();
        self.metrics
            .capture_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(encoded)
    }

    /// Applies remote log entries inside the writer's open transaction
    /// (foreign keys off: rows arrive in any order). Each entry is applied
    /// entirely or not at all.
    /// `peer` names the sender, for the quarantine and the metrics.
    /// `verdicts`: each entry's signature check (`KeyRing::verify`), made
    /// before on another thread; None: checked here.
    pub fn apply(
        &self,
        conn: &Connection,
        entries: &[LogEntry],
        verdicts: Option<&[Result<(), crate::sync::keys::Refusal>]>,
        peer: &str,
    ) -> Result<Vec<Applied>, CaptureError> {
        if entries.len() > self.config.max_apply_batch {
            return Err(CaptureError::BatchTooLarge {
                given: entries.len(),
                max: self.config.max_apply_batch,
            });
        }
        // Local changes first, so that writing the merged rows cannot hide one.
        self.flush(conn)?;
        self.staged_source.set("remote");
        let mut outcomes = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let verdict = verdicts.and_then(|v| v.get(i));
            let outcome = match outcomes.last() {
                Some(Applied::Deferred(why)) => Applied::Deferred(why.clone()),
                _ => self.apply_one(conn, entry, verdict, peer)?,
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    fn apply_one(
        &self,
        conn: &Connection,
        entry: &LogEntry,
        verdict: Option<&Result<(), crate::sync::keys::Refusal>>,
        peer: &str,
    ) -> Result<Applied, CaptureError> {
        if self.has_entry(conn, entry.origin, entry.seq)? {
            return Ok(Applied::Duplicate);
        }
        if self.reject_entry_id(entry).is_none() && !self.follows_held(conn, entry)? {
            self.metrics
                .sync_rejected_total
                .with_label_values(&[peer, "gap"])
                .inc();
            return Ok(Applied::Skipped(format!(
                "seq {} of origin {} does not follow an entry this node holds",
                entry.seq, entry.origin
            )));
        }
        match self.admit(conn, entry, verdict, peer)? {
            Verdict::Applied => Ok(Applied::Applied),
            Verdict::Deferred(why) => Ok(Applied::Deferred(why)),
            Verdict::Refused(rejection) => self.quarantine(conn, entry, verdict, peer, rejection),
        }
    }

    /// Checks a remote entry (not yet held) and applies it if it passes.
    /// The checks run in this order, the first that fails names the reason
    /// (the code in `_outpost_quarantine` and in
    /// `outpost_sync_rejected_total`):
    /// 1. `own_origin`, `range`, `clock`, `too_large`: the origin is not
    ///    this node, origin and seq are in range, its clock is at most
    ///    `crdt::hlc::MAX_AHEAD_MS` ahead, it fits `crdt.max_update_bytes`;
    /// 2. `decode`: the update decodes as a yrs update, on its own;
    /// 3. `signature`: signed by a key the cluster CA certified for the
    ///    entry's origin, and the signature matches (`sync::keys`);
    /// 4. `revoked`: neither that key nor its node is revoked;
    /// 5. written under a schema version newer than this node's: deferred,
    ///    not refused (the peer sends it again once this node migrated).
    ///    It comes before the checks that depend on the schema, which the
    ///    newer version may change (a table it creates is not here yet);
    /// 6. `table`: the table is replicated here; `forbidden_table`: the
    ///    peer may send it (`sync.rules`);
    /// 7. `key`: the key is shaped like the table's primary key;
    /// 8. `column` (in the savepoint, once merged): the entry writes no
    ///    column the table lacks — when written under this node's schema
    ///    version; under an older one such values (columns dropped since)
    ///    are ignored and counted (`outpost_sync_ignored_values_total`);
    /// 9. `forbidden_row` (in the savepoint): the row passes the peer's
    ///    filter before and after the change (`sync::rules`);
    /// 10. `constraint`: the merged row can be written (types, CHECK,
    ///     NOT NULL, UNIQUE); in a savepoint, so a refused entry leaves no trace.
    ///
    /// A placeholder (an entry a peer's rules withheld) passes 1, then is
    /// logged as such on a partial replica, and deferred on a full one
    /// (which must get the entry itself).
    fn admit(
        &self,
        conn: &Connection,
        entry: &LogEntry,
        verdict: Option<&Result<(), crate::sync::keys::Refusal>>,
        peer: &str,
    ) -> Result<Verdict, CaptureError> {
        if let Some(rejection) = self.reject_entry(entry) {
            return Ok(Verdict::Refused(rejection));
        }
        if entry.is_placeholder() {
            return self.admit_placeholder(conn, entry);
        }
        if let Some(keys) = &self.trust.keys {
            let verdict = verdict.cloned().unwrap_or_else(|| keys.verify(entry));
            if let Err(refusal) = verdict {
                return Ok(Verdict::Refused(Rejection::new(
                    refusal.code,
                    refusal.message,
                )));
            }
            self.remember_key(conn, keys, entry.key_id)?;
        }
        if entry.schema_version > self.schema_version.get() {
            return Ok(Verdict::Deferred(format!(
                "written under schema version {}, this node has {}",
                entry.schema_version,
                self.schema_version.get()
            )));
        }
        if let Some(rejection) = self.reject_target(&entry.table, &entry.key) {
            return Ok(Verdict::Refused(rejection));
        }
        let rules = self.trust.sync.rules_for(peer);
        if rules.is_some_and(|r| !r.accepts(&entry.table)) {
            return Ok(Verdict::Refused(Rejection::new(
                "forbidden_table",
                format!(
                    "peer {peer} may not send table {:?} (sync.rules accept_tables)",
                    entry.table
                ),
            )));
        }
        let filter = rules.and_then(|r| r.filters.get(&entry.table).map(String::as_str));
        Ok(
            match self.in_savepoint(conn, || self.apply_in_savepoint(conn, entry, filter))? {
                Ok(()) => Verdict::Applied,
                Err(rejection) => Verdict::Refused(rejection),
            },
        )
    }

    /// Whether the row `view` describes passes a `sync.rules` filter.
    fn row_passes(&self, conn: &Connection, sql: &str, columns: &[String], view: &RowView) -> bool {
        crate::sync::rules::row_passes(conn, &self.sql.text(sql), columns, view)
    }

    /// A placeholder: logged on a partial replica (the log stays dense and
    /// the entry is relayed as a placeholder to other partial replicas);
    /// deferred on a full one, which must not hold a gap.
    fn admit_placeholder(
        &self,
        conn: &Connection,
        entry: &LogEntry,
    ) -> Result<Verdict, CaptureError> {
        if !self.trust.sync.partial {
            return Ok(Verdict::Deferred(
                "the peer sent a placeholder for an entry it withholds, but this node is a \
                 full replica (sync.partial is off): it waits for the entry itself"
                    .into(),
            ));
        }
        self.store_log(conn, entry)?;
        Ok(Verdict::Applied)
    }

    /// Keeps the certificate of a key that signed an applied entry, so that
    /// this node can prove the entry's origin to its own peers.
    fn remember_key(
        &self,
        conn: &Connection,
        keys: &crate::sync::keys::KeyRing,
        key_id: u64,
    ) -> Result<(), CaptureError> {
        if self.kept_keys.borrow().contains(&key_id)
            || !self.staged_keys.borrow_mut().insert(key_id)
        {
            return Ok(());
        }
        if let Some(cert) = keys.certificate(key_id) {
            let node_id = crate::sync::tls::peer_node_id(&cert).unwrap_or_default();
            conn.prepare_cached(&self.sql.text(
                "INSERT OR IGNORE INTO _outpost_keys (key_id, node_id, cert) VALUES (?1, ?2, ?3)",
            ))?
            .execute(params![key_id as i64, node_id, &cert[..]])?;
        }
        Ok(())
    }

    /// At start: certificates kept earlier join the key ring (each checked
    /// again), this node's own is kept, and its entries written before it
    /// had a key (or before signatures existed) are signed.
    fn load_keys(&self, conn: &Connection) -> Result<(), CaptureError> {
        let Some(keys) = &self.trust.keys else {
            return Ok(());
        };
        let own = keys.own_origin();
        if own.origin != self.client {
            return Err(CaptureError::ForeignKey {
                cert_node: own.node_id,
            });
        }
        let mut stmt = conn.prepare("SELECT key_id, cert FROM _outpost_keys")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let cert: Vec<u8> = row.get(1)?;
            if let Err(e) = keys.learn(&cert) {
                let id = row.get::<_, i64>(0)? as u64;
                tracing::warn!(key = %format!("{id:016x}"), "a kept certificate no longer checks: {e}");
            }
        }
        drop(rows);
        drop(stmt);
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match self.sign_unsigned(conn, keys) {
            Ok(n) => {
                conn.execute_batch("COMMIT")?;
                if n > 0 {
                    tracing::info!(
                        entries = n,
                        "signed this node's entries written before it had a key"
                    );
                }
                Ok(())
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn sign_unsigned(
        &self,
        conn: &Connection,
        keys: &crate::sync::keys::KeyRing,
    ) -> Result<usize, CaptureError> {
        self.remember_key(conn, keys, keys.own_key_id())?;
        let mut select = conn.prepare(&format!(
            "SELECT {} FROM _outpost_log
             WHERE origin = ?1 AND key_id = 0 AND length(\"update\") > 0",
            super::log::ENTRY_COLUMNS
        ))?;
        let mut update = conn.prepare(
            "UPDATE _outpost_log SET key_id = ?3, sig = ?4 WHERE origin = ?1 AND seq = ?2",
        )?;
        let mut rows = select.query([self.client as i64])?;
        let mut n = 0;
        while let Some(row) = rows.next()? {
            let mut entry = super::log::entry_of(self.client, row)?;
            keys.sign(&mut entry);
            update.execute(params![
                entry.origin as i64,
                entry.seq as i64,
                entry.key_id as i64,
                entry.signature
            ])?;
            n += 1;
        }
        Ok(n)
    }

    /// Runs `work` inside a savepoint: kept if it succeeds, rolled back if
    /// it refuses (the rejection is returned) or fails.
    fn in_savepoint<T>(
        &self,
        conn: &Connection,
        work: impl FnOnce() -> Result<Result<T, Rejection>, CaptureError>,
    ) -> Result<Result<T, Rejection>, CaptureError> {
        conn.execute_batch("SAVEPOINT outpost_apply")?;
        let outcome = work();
        if matches!(outcome, Ok(Ok(_))) {
            conn.execute_batch("RELEASE outpost_apply")?;
        } else {
            conn.execute_batch("ROLLBACK TO outpost_apply; RELEASE outpost_apply")?;
            self.savepoint_rolled_back();
        }
        outcome
    }

    /// Records a refused entry in `_outpost_quarantine` (kept once; it is
    /// never applied or forwarded) and counts it.
    ///
    /// It counts as *held* (in the version vector: peers do not send it
    /// again, and later entries of its origin apply) only if its origin
    /// provably wrote it: its signature verifies (or this node verifies
    /// none). Otherwise anyone could hide an origin's real entry by sending
    /// a forged one with its seq first: a forged, corrupt or oversized
    /// entry that does not verify is kept for the operator but not held,
    /// and the real one is still applied when an honest peer sends it.
    fn quarantine(
        &self,
        conn: &Connection,
        entry: &LogEntry,
        verdict: Option<&Result<(), crate::sync::keys::Refusal>>,
        peer: &str,
        rejection: Rejection,
    ) -> Result<Applied, CaptureError> {
        let held = self.holds_refused(entry, verdict, rejection.code);
        tracing::warn!(
            peer,
            origin = entry.origin,
            seq = entry.seq,
            table = %entry.table,
            reason = rejection.code,
            "quarantined a remote change: {}",
            rejection.message
        );
        conn.prepare_cached(&self.sql.text(
            "INSERT OR IGNORE INTO _outpost_quarantine (origin, seq, hlc, tbl, pk,
                 schema_version, \"update\", peer, code, reason, at_ms, key_id, sig, held)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        ))?
        .execute(params![
            entry.origin as i64,
            entry.seq as i64,
            entry.hlc as i64,
            entry.table,
            entry.key,
            entry.schema_version,
            entry.update,
            peer,
            rejection.code,
            rejection.message,
            Hlc::now_ms() as i64,
            entry.key_id as i64,
            entry.signature,
            held
        ])?;
        if held {
            self.staged_held
                .borrow_mut()
                .observe(entry.origin, entry.seq);
        }
        self.metrics
            .sync_rejected_total
            .with_label_values(&[peer, rejection.code])
            .inc();
        Ok(Applied::Rejected(format!(
            "{}: {}",
            rejection.code, rejection.message
        )))
    }

    /// Whether a refused entry counts as held (see [`Capture::quarantine`]).
    /// `verdict`: the signature check made before, if any (else made here).
    fn holds_refused(
        &self,
        entry: &LogEntry,
        verdict: Option<&Result<(), crate::sync::keys::Refusal>>,
        code: &str,
    ) -> bool {
        match code {
            // Not an entry of that origin's sequence at all.
            "range" | "own_origin" => false,
            "signature" => false,
            // Refused before the signature was looked at: held if it verifies.
            "clock" | "too_large" | "decode" => self.trust.keys.as_ref().is_none_or(|keys| {
                let verdict = verdict.cloned().unwrap_or_else(|| keys.verify(entry));
                !matches!(verdict, Err(r) if r.code == "signature")
            }),
            _ => true,
        }
    }

    /// Whether `entry` follows what this node holds of its origin: its
    /// predecessor is in the log, compacted, or held in quarantine. An
    /// entry that does not is skipped (not applied, not held): applying it
    /// would leave a hole below the version vector that no peer would fill.
    /// Honest peers send each origin densely; a gap comes from a peer that
    /// withholds or from an entry refused unproven.
    fn follows_held(&self, conn: &Connection, entry: &LogEntry) -> Result<bool, CaptureError> {
        if entry.seq <= 1 || self.has_entry(conn, entry.origin, entry.seq - 1)? {
            return Ok(true);
        }
        Ok(conn
            .prepare_cached(
                &self.sql.text(
                    "SELECT 1 FROM _outpost_quarantine WHERE origin = ?1 AND seq = ?2 AND held",
                ),
            )?
            .query_row([entry.origin as i64, entry.seq as i64 - 1], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Runs quarantined entries matching `filter` through the checks and
    /// the apply path again, in (origin, seq) order, at most `limit`, inside
    /// the writer's open transaction (after the operator fixed the cause:
    /// created the table, relaxed a CHECK, migrated). One that applies
    /// moves from the quarantine to the log (it stays held, so the version
    /// vector does not change; its change event wakes the links, which
    /// push it to peers). One still refused stays, with its new reason and
    /// time. A replayed entry is not counted in `outpost_sync_rejected_total`
    /// again: it was counted when it arrived.
    pub fn replay(
        &self,
        conn: &Connection,
        filter: &super::quarantine::Filter,
        limit: usize,
    ) -> Result<super::quarantine::ReplayReport, CaptureError> {
        use super::quarantine;
        self.flush(conn)?;
        self.staged_source.set("remote");
        let mut report = quarantine::ReplayReport::default();
        let entries = quarantine::to_replay(conn, filter, limit)?;
        for (entry, peer, code) in entries {
            report.processed += 1;
            report.last = Some((entry.origin, entry.seq));
            let in_log = conn
                .prepare_cached(
                    &self
                        .sql
                        .text("SELECT 1 FROM _outpost_log WHERE origin = ?1 AND seq = ?2"),
                )?
                .query_row([entry.origin as i64, entry.seq as i64], |_| Ok(()))
                .optional()?
                .is_some();
            // In the log already (a peer sent it again once it applied):
            // only the quarantine's copy goes. Below the compaction floor it
            // is applied all the same: this node never merged it.
            if !in_log && !self.follows_held(conn, &entry)? {
                // Its predecessor is not held here yet: replay it later.
                report.still_refused += 1;
                *report.reasons.entry("gap".to_string()).or_default() += 1;
                continue;
            }
            let verdict = if in_log {
                Verdict::Applied
            } else {
                self.admit(conn, &entry, None, &peer)?
            };
            let key = params![entry.origin as i64, entry.seq as i64];
            match verdict {
                Verdict::Applied => {
                    conn.prepare_cached(
                        &self
                            .sql
                            .text("DELETE FROM _outpost_quarantine WHERE origin = ?1 AND seq = ?2"),
                    )?
                    .execute(key)?;
                    report.replayed += 1;
                    tracing::info!(
                        peer,
                        origin = entry.origin,
                        seq = entry.seq,
                        table = %entry.table,
                        "replayed a quarantined change"
                    );
                }
                Verdict::Refused(rejection) => {
                    let held = self.holds_refused(&entry, None, rejection.code);
                    conn.prepare_cached(&self.sql.text(
                        "UPDATE _outpost_quarantine SET code = ?3, reason = ?4, at_ms = ?5,
                             held = ?6
                         WHERE origin = ?1 AND seq = ?2",
                    ))?
                    .execute(params![
                        entry.origin as i64,
                        entry.seq as i64,
                        rejection.code,
                        rejection.message,
                        Hlc::now_ms() as i64,
                        held
                    ])?;
                    if held {
                        self.staged_held
                            .borrow_mut()
                            .observe(entry.origin, entry.seq);
                    }
                    report.still_refused += 1;
                    *report
                        .reasons
                        .entry(rejection.code.to_string())
                        .or_default() += 1;
                }
                // Not possible for an entry that was judged once (schema
                // versions only grow): left as it is.
                Verdict::Deferred(_) => {
                    report.still_refused += 1;
                    *report.reasons.entry(code).or_default() += 1;
                }
            }
        }
        report.remaining = quarantine::count(
            conn,
            &quarantine::Filter {
                after: None,
                ..filter.clone()
            },
        )?;
        Ok(report)
    }

    /// The entry names a real entry of another node: origin and seq in range.
    fn reject_entry_id(&self, entry: &LogEntry) -> Option<Rejection> {
        if entry.origin == self.client {
            return Some(Rejection::new(
                "own_origin",
                "the entry claims this node's own origin",
            ));
        }
        if entry.origin == 0 || entry.origin >= 1 << 53 || entry.seq == 0 || entry.seq >= 1 << 62 {
            return Some(Rejection::new("range", "origin or seq out of range"));
        }
        None
    }

    /// Checks that need no table: origin and seq, size, decoding.
    fn reject_entry(&self, entry: &LogEntry) -> Option<Rejection> {
        if let Some(rejection) = self.reject_entry_id(entry) {
            return Some(rejection);
        }
        if entry.hlc > Hlc::ceiling(Hlc::now_ms()) {
            return Some(Rejection::new(
                "clock",
                format!(
                    "its clock is more than {} s ahead of this node's (wall time {} ms); \
                     check the origin's clock, then replay",
                    crate::crdt::hlc::MAX_AHEAD_MS / 1000,
                    Hlc::wall_ms(entry.hlc)
                ),
            ));
        }
        if entry.size() > self.config.max_update_bytes {
            return Some(Rejection::new(
                "too_large",
                format!(
                    "update of {} bytes is larger than crdt.max_update_bytes ({})",
                    entry.size(),
                    self.config.max_update_bytes
                ),
            ));
        }
        if entry.is_placeholder() {
            return None;
        }
        if let Err(e) = crate::crdt::decode_update(&entry.update) {
            return Some(Rejection::new(
                "decode",
                format!("the update does not decode as a yrs update: {e}"),
            ));
        }
        None
    }

    /// The row an entry or a snapshot document is for: the table is
    /// replicated here and the key is shaped like its primary key.
    fn reject_target(&self, table: &str, key: &str) -> Option<Rejection> {
        let tables = self.tables.borrow();
        let Some(info) = tables.get(table) else {
            return Some(Rejection::new(
                "table",
                format!("table {table:?} is not replicated here"),
            ));
        };
        match parse_key(key) {
            Ok(values) if values.len() == info.pk.len() => None,
            Ok(_) => Some(Rejection::new(
                "key",
                "the row key does not match the table's primary key",
            )),
            Err(e) => Some(Rejection::new("key", e.to_string())),
        }
    }

    /// Merges, checks the columns, writes the row back, logs. Err(reason)
    /// refuses the entry (the caller's savepoint undoes what was done).
    fn apply_in_savepoint(
        &self,
        conn: &Connection,
        entry: &LogEntry,
        filter: Option<&str>,
    ) -> Result<Result<(), Rejection>, CaptureError> {
        let columns = Columns::Entry {
            origin: entry.origin,
            same_schema: entry.schema_version == self.schema_version.get(),
            filter,
        };
        let merged = match self.merge_row(conn, &entry.table, &entry.key, &entry.update, columns)? {
            Ok(merged) => merged,
            Err(rejection) => return Ok(Err(rejection)),
        };
        if merged.ignored > 0 {
            // Written under an older schema, for columns dropped since.
            self.metrics
                .sync_ignored_values_total
                .with_label_values(&[&entry.table])
                .inc_by(merged.ignored as u64);
        }
        self.hlc.borrow_mut().observe(entry.hlc);
        self.store(conn, entry, merged.doc)?;
        self.stage_event(entry, merged.op, || Some(merged.values));
        Ok(Ok(()))
    }

    /// Merges `update` (an entry's update, or a whole document from a
    /// snapshot) into the row's document, checks the columns it writes
    /// (`columns`) and writes the row back. The row then equals its
    /// document: nothing is left to capture for it.
    fn merge_row(
        &self,
        conn: &Connection,
        table: &str,
        key: &str,
        update: &[u8],
        columns: Columns,
    ) -> Result<Result<Merged, Rejection>, CaptureError> {
        let tables = self.tables.borrow();
        let info = &tables[table];
        let doc = self.load_doc(conn, table, key)?;
        let slot_of = |origin: u64| -> Result<Slot, DocError> {
            Ok(doc
                .slots()?
                .into_iter()
                .find(|(o, _)| *o == origin)
                .map(|(_, slot)| slot)
                .unwrap_or_default())
        };
        let before = match columns {
            Columns::Entry { origin, .. } => match slot_of(origin) {
                Ok(slot) => Some(slot),
                Err(e) => return Ok(Err(Rejection::new("decode", e.to_string()))),
            },
            Columns::Unchecked { .. } => None,
        };
        let filter = match columns {
            Columns::Entry { filter, .. } | Columns::Unchecked { filter } => {
                filter.map(|f| crate::sync::rules::filter_sql(&info.columns, f))
            }
        };
        if let Some(sql) = &filter {
            let old = match doc.view() {
                Ok(view) => view,
                Err(e) => return Ok(Err(Rejection::new("decode", e.to_string()))),
            };
            let exists = old.live.is_some() || !old.cols.is_empty();
            if exists && !self.row_passes(conn, sql, &info.columns, &old) {
                return Ok(Err(Rejection::new(
                    "forbidden_row",
                    "the row is outside the peer's sync.rules filter",
                )));
            }
        }
        if let Err(e) = doc.apply(update) {
            return Ok(Err(Rejection::new("decode", e.to_string())));
        }
        let view = match doc.view() {
            Ok(view) => view,
            Err(e) => return Ok(Err(Rejection::new("decode", e.to_string()))),
        };
        if let Some(sql) = &filter {
            if !self.row_passes(conn, sql, &info.columns, &view) {
                return Ok(Err(Rejection::new(
                    "forbidden_row",
                    "the change would put the row outside the peer's sync.rules filter",
                )));
            }
        }
        // The columns the entry wrote: those its origin's slot holds now
        // with another stamp or value than before (a slot carries the
        // origin's earlier values along; those were judged before).
        let mut unknown = Vec::new();
        if let (Columns::Entry { origin, .. }, Some(before)) = (columns, &before) {
            let after = match slot_of(origin) {
                Ok(after) => after,
                Err(e) => return Ok(Err(Rejection::new("decode", e.to_string()))),
            };
            unknown = after
                .cols
                .iter()
                .filter(|(name, written)| {
                    before.cols.get(*name) != Some(written) && !info.columns.contains(name)
                })
                .map(|(name, _)| name.clone())
                .collect();
        }
        if let (
            Columns::Entry {
                same_schema: true, ..
            },
            false,
        ) = (columns, unknown.is_empty())
        {
            return Ok(Err(Rejection::new(
                "column",
                format!(
                    "the entry writes column(s) {} that table {table:?} lacks, under this \
                     node's schema version {}",
                    unknown.join(", "),
                    self.schema_version.get()
                ),
            )));
        }
        self.hlc.borrow_mut().observe(view.max_hlc());
        let op = match self.materialize(conn, info, table, key, &view) {
            Ok(op) => op,
            Err(e) => {
                return Ok(Err(Rejection::new(
                    "constraint",
                    format!("writing the merged row failed: {e}"),
                )))
            }
        };
        conn.prepare_cached(
            &self
                .sql
                .text("DELETE FROM _outpost_pending WHERE tbl = ?1 AND pk = ?2"),
        )?
        .execute(params![table, key])?;
        let values = if self.events.has_subscribers() {
            info.columns
                .iter()
                .filter_map(|c| view.cols.get(c).map(|(_, v)| (c.clone(), v.clone())))
                .collect()
        } else {
            Vec::new()
        };
        let ignored = unknown.len();
        Ok(Ok(Merged {
            ignored,
            doc: doc.encode(),
            op,
            values,
            winner: view
                .live
                .map_or((0, 0), |(stamp, _)| (stamp.origin, stamp.hlc)),
        }))
    }

    /// Merges whole row documents from a peer's snapshot (a peer that was
    /// behind this node's log compaction). Each document is checked like an
    /// entry (table, key, decodes, row writable); a refused one is skipped
    /// and counted. `done` (the snapshot's version vector, on its last
    /// batch) is recorded as compacted: those entries are in the documents.
    pub fn apply_snapshot(
        &self,
        conn: &Connection,
        docs: &[SnapshotDoc],
        done: Option<&VersionVector>,
        peer: &str,
    ) -> Result<usize, CaptureError> {
        self.flush(conn)?;
        self.staged_source.set("remote");
        let mut refused = 0;
        for doc in docs {
            let probe = LogEntry {
                origin: 1,
                seq: 1,
                table: doc.table.clone(),
                key: doc.key.clone(),
                ..LogEntry::default()
            };
            let rules = self.trust.sync.rules_for(peer);
            let filter = rules.and_then(|r| r.filters.get(&doc.table).map(String::as_str));
            let rejection = match self.reject_target(&doc.table, &doc.key) {
                Some(rejection) => Some(rejection),
                None if rules.is_some_and(|r| !r.accepts(&doc.table)) => Some(Rejection::new(
                    "forbidden_table",
                    format!(
                        "peer {peer} may not send table {:?} (sync.rules accept_tables)",
                        doc.table
                    ),
                )),
                None => self
                    .in_savepoint(conn, || {
                        let merged = match self.merge_row(
                            conn,
                            &doc.table,
                            &doc.key,
                            &doc.doc,
                            Columns::Unchecked { filter },
                        )? {
                            Ok(merged) => merged,
                            Err(rejection) => return Ok(Err(rejection)),
                        };
                        self.store_doc(conn, &doc.table, &doc.key, merged.doc)?;
                        let (origin, hlc) = merged.winner;
                        let event = LogEntry {
                            origin,
                            seq: 0,
                            hlc,
                            ..probe
                        };
                        self.stage_event(&event, merged.op, || Some(merged.values));
                        Ok(Ok(()))
                    })?
                    .err(),
            };
            if let Some(rejection) = rejection {
                refused += 1;
                tracing::warn!(peer, table = %doc.table, reason = rejection.code, "refused a row of a snapshot: {}", rejection.message);
                self.metrics
                    .sync_rejected_total
                    .with_label_values(&[peer, rejection.code])
                    .inc();
            }
        }
        if let Some(done) = done {
            self.mark_compacted(conn, done)?;
        }
        Ok(refused)
    }

    /// Records that entries up to `upto` per origin may be absent from the
    /// log (compacted here, or covered by a snapshot's documents).
    fn mark_compacted(&self, conn: &Connection, upto: &VersionVector) -> Result<(), CaptureError> {
        let mut stmt = conn.prepare_cached(&self.sql.text(
            "INSERT INTO _outpost_compacted (origin, upto) VALUES (?1, ?2)
             ON CONFLICT (origin) DO UPDATE SET upto = max(upto, excluded.upto)",
        ))?;
        for (&origin, &seq) in &upto.0 {
            stmt.execute([origin as i64, seq as i64])?;
        }
        Ok(())
    }

    /// Deletes log entries at or below `floor` per origin (every peer holds
    /// them), keeping the documents. Returns how many went.
    pub fn compact(&self, conn: &Connection, floor: &VersionVector) -> Result<usize, CaptureError> {
        let mut deleted = 0;
        let mut bytes: i64 = 0;
        for (&origin, &seq) in &floor.0 {
            bytes += conn
                .prepare_cached(&self.sql.text(
                    "SELECT coalesce(sum(length(\"update\")), 0) FROM _outpost_log WHERE origin = ?1 AND seq <= ?2",
                ))?
                .query_row([origin as i64, seq as i64], |r| r.get::<_, i64>(0))?;
            deleted += conn
                .prepare_cached(
                    &self
                        .sql
                        .text("DELETE FROM _outpost_log WHERE origin = ?1 AND seq <= ?2"),
                )?
                .execute([origin as i64, seq as i64])?;
        }
        self.mark_compacted(conn, floor)?;
        self.metrics.log_bytes.sub(bytes);
        self.metrics
            .log_compacted_entries_total
            .inc_by(deleted as u64);
        Ok(deleted)
    }

    /// Makes the table's row say what the document says.
    fn materialize(
        &self,
        conn: &Connection,
        info: &TableInfo,
        table: &str,
        key: &str,
        view: &RowView,
    ) -> Result<Op, CaptureError> {
        let key_values = parse_key(key).map_err(|e| CaptureError::Key(e.to_string()))?;
        let current = self.read_row(conn, info, table, key)?;
        let op = match (view.is_live(), &current) {
            (false, _) => Op::Delete,
            (true, None) => Op::Insert,
            (true, Some(_)) => Op::Update,
        };
        let t = quote_ident(table);
        let where_pk = where_pk(&info.pk);
        match (view.is_live(), current) {
            (false, None) => {}
            (false, Some(_)) => {
                let sql = self.sql.text(&format!("DELETE FROM {t} WHERE {where_pk}"));
                conn.prepare_cached(&sql)?
                    .execute(rusqlite::params_from_iter(&key_values))?;
            }
            (true, None) => {
                let mut names = Vec::new();
                let mut values: Vec<&Value> = Vec::new();
                for col in &info.columns {
                    let pk_index = info.pk.iter().position(|p| p == col);
                    // The document's value first: the key text cannot tell -0.0 from 0.0.
                    match (view.cols.get(col), pk_index) {
                        (Some((_, v)), _) => values.push(v),
                        (None, Some(p)) => values.push(&key_values[p]),
                        (None, None) => continue,
                    }
                    names.push(quote_ident(col));
                }
                let marks = (1..=names.len())
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(",");
                let sql = format!("INSERT INTO {t} ({}) VALUES ({marks})", names.join(","));
                conn.prepare_cached(&self.sql.text(&sql))?
                    .execute(rusqlite::params_from_iter(values))?;
            }
            (true, Some(row)) => {
                let changed: Vec<(&String, &Value)> = row
                    .iter()
                    .filter_map(|(name, value)| match view.cols.get(name) {
                        Some((_, v)) if v != value => Some((name, v)),
                        _ => None,
                    })
                    .collect();
                if changed.is_empty() {
                    return Ok(op);
                }
                let n = key_values.len();
                let sets = changed
                    .iter()
                    .enumerate()
                    .map(|(i, (name, _))| format!("{} = ?{}", quote_ident(name), n + i + 1))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!("UPDATE {t} SET {sets} WHERE {where_pk}");
                let values = key_values.iter().chain(changed.iter().map(|(_, v)| *v));
                conn.prepare(&self.sql.text(&sql))?
                    .execute(rusqlite::params_from_iter(values))?;
            }
        }
        Ok(op)
    }

    fn store_doc(
        &self,
        conn: &Connection,
        table: &str,
        key: &str,
        doc: Vec<u8>,
    ) -> Result<(), CaptureError> {
        conn.prepare_cached(&self.sql.text(
            "INSERT INTO _outpost_rows (tbl, pk, doc) VALUES (?1, ?2, ?3)
             ON CONFLICT (tbl, pk) DO UPDATE SET doc = excluded.doc",
        ))?
        .execute(params![table, key, &doc])?;
        self.cache
            .borrow_mut()
            .stage((table.to_string(), key.to_string()), doc.into());
        Ok(())
    }

    fn store(&self, conn: &Connection, entry: &LogEntry, doc: Vec<u8>) -> Result<(), CaptureError> {
        self.store_doc(conn, &entry.table, &entry.key, doc)?;
        self.store_log(conn, entry)
    }

    fn store_log(&self, conn: &Connection, entry: &LogEntry) -> Result<(), CaptureError> {
        conn.prepare_cached(&self.sql.text(
            "INSERT INTO _outpost_log (origin, seq, hlc, tbl, pk, schema_version, \"update\",
                 key_id, sig)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        ))?
        .execute(params![
            entry.origin as i64,
            entry.seq as i64,
            entry.hlc as i64,
            entry.table,
            entry.key,
            entry.schema_version,
            entry.update,
            entry.key_id as i64,
            entry.signature
        ])?;
        let mut cache = self.cache.borrow_mut();
        cache.staged_entries += 1;
        cache.staged_log_bytes += entry.update.len() as i64;
        Ok(())
    }

    fn load_doc(&self, conn: &Connection, table: &str, key: &str) -> Result<RowDoc, CaptureError> {
        let cache_key = (table.to_string(), key.to_string());
        let cached = self.cache.borrow_mut().get(&cache_key);
        let bytes = match cached {
            Some(bytes) => {
                self.metrics.doc_cache_hits_total.inc();
                Some(bytes)
            }
            None => {
                self.metrics.doc_cache_misses_total.inc();
                let stored: Option<Vec<u8>> = conn
                    .prepare_cached(
                        &self
                            .sql
                            .text("SELECT doc FROM _outpost_rows WHERE tbl = ?1 AND pk = ?2"),
                    )?
                    .query_row(params![table, key], |r| r.get(0))
                    .optional()?;
                let stored: Option<Arc<[u8]>> = stored.map(Into::into);
                let mut cache = self.cache.borrow_mut();
                if let Some(bytes) = &stored {
                    if !cache.staged.contains_key(&cache_key) {
                        cache.insert(cache_key, Arc::clone(bytes));
                    }
                }
                stored
            }
        };
        match bytes {
            None => Ok(RowDoc::new(self.client)),
            Some(bytes) => RowDoc::load(&bytes, self.client).map_err(|source| CaptureError::Doc {
                table: table.to_string(),
                key: key.to_string(),
                source,
            }),
        }
    }

    fn read_row(
        &self,
        conn: &Connection,
        info: &TableInfo,
        table: &str,
        key: &str,
    ) -> Result<Option<Vec<(String, Value)>>, CaptureError> {
        let key_values = parse_key(key).map_err(|e| CaptureError::Key(format!("{table} {e}")))?;
        if key_values.len() != info.pk.len() {
            return Err(CaptureError::Key(format!("{table} {key}: arity")));
        }
        let mut stmt = conn.prepare_cached(&info.select_row)?;
        let row = stmt
            .query_row(rusqlite::params_from_iter(&key_values), |r| {
                (0..info.columns.len())
                    .map(|i| Ok((info.columns[i].clone(), Value::from_sql(r.get_ref(i)?))))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .optional()?;
        Ok(row)
    }

    fn pending(&self, conn: &Connection) -> Result<Vec<(String, String)>, CaptureError> {
        let mut stmt =
            conn.prepare_cached(&self.sql.text("SELECT tbl, pk FROM _outpost_pending"))?;
        let mut rows = stmt.query([])?;
        let mut pending = Vec::new();
        while let Some(row) = rows.next()? {
            let bytes = |i| -> rusqlite::Result<&[u8]> {
                row.get_ref(i)?.as_bytes().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        i,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })
            };
            let (table, key) = (bytes(0)?, bytes(1)?);
            match (std::str::from_utf8(table), std::str::from_utf8(key)) {
                (Ok(table), Ok(key)) => pending.push((table.to_string(), key.to_string())),
                _ => tracing::error!(
                    table = %String::from_utf8_lossy(table),
                    key = %String::from_utf8_lossy(key),
                    "a changed row's key is not valid UTF-8 text (written by another program?): \
                     it cannot be replicated and is skipped"
                ),
            }
        }
        Ok(pending)
    }

    fn next_seq(&self, conn: &Connection, origin: u64) -> Result<u64, CaptureError> {
        let max: i64 = conn
            .prepare_cached(&self.sql.text(
                "SELECT max(coalesce((SELECT max(seq) FROM _outpost_log WHERE origin = ?1), 0),
                            coalesce((SELECT upto FROM _outpost_compacted WHERE origin = ?1), 0))",
            ))?
            .query_row([origin as i64], |r| r.get(0))?;
        Ok(max as u64 + 1)
    }

    /// Whether the entry is in the log, or below what was compacted.
    fn has_entry(&self, conn: &Connection, origin: u64, seq: u64) -> Result<bool, CaptureError> {
        Ok(conn
            .prepare_cached(&self.sql.text(
                "SELECT 1 FROM _outpost_log WHERE origin = ?1 AND seq = ?2
                 UNION ALL SELECT 1 FROM _outpost_compacted WHERE origin = ?1 AND upto >= ?2",
            ))?
            .query_row([origin as i64, seq as i64], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn reconcile_if_schema_changed(&self, conn: &Connection) -> Result<(), CaptureError> {
        if self.schema_cookie.get() == Some(schema_cookie(conn)?) {
            return Ok(());
        }
        self.reconcile(conn)?;
        self.schema_touched.set(true);
        self.schema_cookie.set(Some(schema_cookie(conn)?));
        Ok(())
    }

    /// Brings triggers in line with the schema and the config: installs
    /// them on new or altered tables (whose rows are then re-encoded) and
    /// removes the bookkeeping of dropped ones.
    fn reconcile(&self, conn: &Connection) -> Result<(), CaptureError> {
        let installed: HashMap<String, String> = conn
            .prepare("SELECT tbl, sql FROM _outpost_tables")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut tables = HashMap::new();
        let existing = user_tables(conn)?;
        for (name, sql) in &existing {
            let (name, sql) = (name.clone(), sql.clone());
            if !self.config.covers(&name) {
                continue;
            }
            let (columns, pk) = table_columns(conn, &name)?;
            if pk.is_empty() {
                if self.config.names(&name) {
                    return Err(CaptureError::NoPrimaryKey(name));
                }
                if self.warned.borrow_mut().insert(name.clone()) {
                    tracing::warn!(table = %name, "table has no PRIMARY KEY: it stays local and is not replicated");
                }
                if installed.contains_key(&name) {
                    self.uninstall(conn, &name)?;
                }
                continue;
            }
            let fingerprint = fingerprint(conn, &name, &sql)?;
            if installed.get(&name) != Some(&fingerprint) || !triggers_present(conn, &name)? {
                self.install(conn, &name, &fingerprint, &pk)?;
            }
            let select_row = self.sql.text(&format!(
                "SELECT {} FROM {} WHERE {}",
                column_list(&columns),
                quote_ident(&name),
                where_pk(&pk)
            ));
            let defaults = column_defaults(conn, &name)?;
            tables.insert(
                name,
                TableInfo {
                    columns,
                    pk,
                    select_row,
                    defaults,
                },
            );
        }
        let existing: HashSet<String> = existing.into_iter().map(|(n, _)| n).collect();
        for name in installed.keys() {
            if tables.contains_key(name) {
                continue;
            }
            self.uninstall(conn, name)?;
            if !existing.contains(name) {
                // Dropped: its rows are gone, so their documents record deletes.
                self.mark_documents_pending(conn, name)?;
                self.dropped.borrow_mut().insert(name.clone());
            }
        }
        self.metrics.tables_replicated.set(tables.len() as i64);
        *self.tables.borrow_mut() = tables;
        Ok(())
    }

    fn install(
        &self,
        conn: &Connection,
        table: &str,
        fingerprint: &str,
        pk: &[String],
    ) -> Result<(), CaptureError> {
        let t = quote_ident(table);
        let lit = quote_text(table);
        let (new_key, old_key) = (key_expr(pk, "NEW."), key_expr(pk, "OLD."));
        // `ON CONFLICT DO NOTHING`, not `INSERT OR IGNORE`: the conflict
        // clause of the statement that fires a trigger (`INSERT OR REPLACE`,
        // `OR ROLLBACK`) overrides an `OR` clause inside it, not an upsert.
        // (A `NOT EXISTS` on the target table would make SQLite copy the
        // rows through a temporary table on every firing.)
        let record = |keys: &[&str]| {
            keys.iter()
                .map(|k| {
                    format!(
                        "INSERT INTO _outpost_pending (tbl, pk) VALUES ({lit}, {k}) ON CONFLICT DO NOTHING;"
                    )
                })
                .collect::<String>()
        };
        // `REPLACE` deletes rows that conflict on another UNIQUE index
        // without firing delete triggers (unless recursive_triggers is on,
        // which would change user triggers): record those rows beforehand.
        let conflicting = unique_indexes(conn, table)?
            .iter()
            .map(|cols| {
                let same = cols
                    .iter()
                    .map(|c| format!("o.{c} IS NEW.{c}", c = quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                format!(
                    "INSERT INTO _outpost_pending (tbl, pk) SELECT {lit}, {key} FROM {t} AS o
                     WHERE {same} ON CONFLICT DO NOTHING;",
                    key = key_expr(pk, "o.")
                )
            })
            .collect::<String>();
        for kind in TRIGGER_KINDS {
            conn.execute_batch(&format!(
                "DROP TRIGGER IF EXISTS {}",
                trigger_name(kind, table)
            ))?;
        }
        if !conflicting.is_empty() {
            conn.execute_batch(&format!(
                "CREATE TRIGGER {bins} BEFORE INSERT ON {t} BEGIN {conflicting} END;
                 CREATE TRIGGER {bupd} BEFORE UPDATE ON {t} BEGIN {conflicting} END;",
                bins = trigger_name("bins", table),
                bupd = trigger_name("bupd", table),
            ))?;
        }
        conn.execute_batch(&format!(
            "CREATE TRIGGER {ins} AFTER INSERT ON {t} BEGIN {r_new} END;
             CREATE TRIGGER {upd} AFTER UPDATE ON {t} BEGIN {r_both} END;
             CREATE TRIGGER {del} AFTER DELETE ON {t} BEGIN {r_old} END;
             INSERT OR IGNORE INTO _outpost_pending (tbl, pk) SELECT {lit}, {all_keys} FROM {t};
             INSERT OR IGNORE INTO _outpost_pending (tbl, pk) SELECT tbl, pk FROM _outpost_rows WHERE tbl = {lit};",
            ins = trigger_name("ins", table),
            upd = trigger_name("upd", table),
            del = trigger_name("del", table),
            r_new = record(&[&new_key]),
            r_old = record(&[&old_key]),
            r_both = record(&[&old_key, &new_key]),
            all_keys = key_expr(pk, ""),
        ))?;
        conn.execute(
            "INSERT INTO _outpost_tables (tbl, sql) VALUES (?1, ?2)
             ON CONFLICT (tbl) DO UPDATE SET sql = excluded.sql",
            params![table, fingerprint],
        )?;
        self.warn_about_constraints(conn, table)?;
        tracing::info!(table, "capturing changes of table");
        Ok(())
    }

    fn mark_documents_pending(&self, conn: &Connection, table: &str) -> Result<(), CaptureError> {
        conn.execute(
            "INSERT OR IGNORE INTO _outpost_pending (tbl, pk) SELECT tbl, pk FROM _outpost_rows WHERE tbl = ?1",
            [table],
        )?;
        Ok(())
    }

    fn uninstall(&self, conn: &Connection, table: &str) -> Result<(), CaptureError> {
        for kind in TRIGGER_KINDS {
            conn.execute_batch(&format!(
                "DROP TRIGGER IF EXISTS {}",
                trigger_name(kind, table)
            ))?;
        }
        conn.execute("DELETE FROM _outpost_tables WHERE tbl = ?1", [table])?;
        conn.execute("DELETE FROM _outpost_pending WHERE tbl = ?1", [table])?;
        tracing::info!(table, "stopped capturing changes of table");
        Ok(())
    }

    fn warn_about_constraints(&self, conn: &Connection, table: &str) -> Result<(), CaptureError> {
        let unique: i64 = conn.query_row(
            "SELECT count(*) FROM pragma_index_list(?1) WHERE \"unique\" AND origin != 'pk'",
            [table],
            |r| r.get(0),
        )?;
        if unique > 0 {
            tracing::warn!(table, "UNIQUE constraints other than the primary key cannot hold across nodes that write concurrently; a conflicting remote row will be rejected");
        }
        let fks: i64 = conn.query_row(
            "SELECT count(*) FROM pragma_foreign_key_list(?1)",
            [table],
            |r| r.get(0),
        )?;
        if fks > 0 {
            tracing::warn!(table, "foreign keys cannot be enforced across nodes: remote rows are applied with foreign key checks off");
        }
        // SQLite lets a non-INTEGER key column of a rowid table hold NULL,
        // and all such rows would share one key.
        let nullable_key: i64 = conn.query_row(
            "SELECT count(*) FROM pragma_table_info(?1) AS c, pragma_table_list AS l
             WHERE l.name = ?1 AND l.schema = 'main' AND NOT l.wr AND c.pk > 0 AND NOT c.\"notnull\"
               AND NOT (upper(c.type) = 'INTEGER' AND (SELECT count(*) FROM pragma_table_info(?1) WHERE pk > 0) = 1)",
            [table],
            |r| r.get(0),
        )?;
        if nullable_key > 0 {
            tracing::warn!(table, "primary key columns may hold NULL (declare them NOT NULL): rows with a NULL key cannot be told apart and are not replicated reliably");
        }
        Ok(())
    }
}

/// What a table's capture triggers depend on: its definition and its indexes.
fn fingerprint(conn: &Connection, table: &str, sql: &str) -> rusqlite::Result<String> {
    let indexes: String = conn.query_row(
        "SELECT coalesce(group_concat(coalesce(sql, name), ';'), '') FROM
           (SELECT sql, name FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?1 ORDER BY name)",
        [table],
        |r| r.get(0),
    )?;
    Ok(format!("{TRIGGER_FORMAT}\n{sql}\n{indexes}"))
}

fn triggers_present(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    let names = ["ins", "upd", "del"].map(|k| format!("_outpost_{k}_{table}"));
    let count: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1
           AND name IN (?2, ?3, ?4)",
        params![table, names[0], names[1], names[2]],
        |r| r.get(0),
    )?;
    Ok(count == 3)
}

/// Columns of each UNIQUE index other than the primary key (indexes on
/// expressions are skipped: their conflicts cannot be matched by column).
fn unique_indexes(conn: &Connection, table: &str) -> rusqlite::Result<Vec<Vec<String>>> {
    let names: Vec<String> = conn
        .prepare("SELECT name FROM pragma_index_list(?1) WHERE \"unique\" AND origin != 'pk'")?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut indexes = Vec::new();
    for name in names {
        let cols: Vec<Option<String>> = conn
            .prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?
            .query_map([&name], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if let Some(cols) = cols.into_iter().collect::<Option<Vec<String>>>() {
            indexes.push(cols);
        }
    }
    Ok(indexes)
}

/// Ordinary tables of the main schema (no views, virtual or shadow
/// tables, no `sqlite_*` or `_outpost_*`), with their CREATE statements.
pub(crate) fn user_tables(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    conn.prepare(
        "SELECT l.name, s.sql FROM pragma_table_list AS l
         JOIN sqlite_schema AS s ON s.name = l.name AND s.type = 'table'
         WHERE l.schema = 'main' AND l.type = 'table'
           AND l.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
           AND l.name NOT LIKE '\\_outpost\\_%' ESCAPE '\\'
         ORDER BY l.name",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}

/// Stored columns (generated ones excluded) and primary-key columns in key order.
pub(crate) fn table_columns(
    conn: &Connection,
    table: &str,
) -> rusqlite::Result<(Vec<String>, Vec<String>)> {
    let mut columns = Vec::new();
    let mut pk: Vec<(i64, String)> = Vec::new();
    let mut stmt = conn.prepare("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")?;
    let rows = stmt.query_map([table], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (name, pk_index) = row?;
        if pk_index > 0 {
            pk.push((pk_index, name.clone()));
        }
        columns.push(name);
    }
    pk.sort();
    Ok((columns, pk.into_iter().map(|(_, n)| n).collect()))
}

/// Whether a stored value equals a default (an INTEGER default in a REAL
/// column is stored as REAL).
pub(crate) fn same_value(default: &Value, stored: &Value) -> bool {
    match (default, stored) {
        (Value::Integer(i), Value::Real(r)) | (Value::Real(r), Value::Integer(i)) => {
            *i as f64 == *r
        }
        _ => default == stored,
    }
}

/// Each column's default value, evaluated (NULL when none is declared).
/// `ALTER TABLE ADD COLUMN` only takes constant defaults; a non-constant
/// one (in CREATE TABLE) is evaluated now, which only makes it match less.
pub(crate) fn column_defaults(
    conn: &Connection,
    table: &str,
) -> rusqlite::Result<HashMap<String, Value>> {
    let declared: Vec<(String, Option<String>)> = conn
        .prepare("SELECT name, dflt_value FROM pragma_table_info(?1)")?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut defaults = HashMap::new();
    for (column, expr) in declared {
        let value = match expr {
            None => Value::Null,
            Some(expr) => {
                match conn.query_row(&format!("SELECT {expr}"), [], |r| {
                    Ok(Value::from_sql(r.get_ref(0)?))
                }) {
                    Ok(value) => value,
                    Err(_) => continue, // not evaluable alone: never a fill
                }
            }
        };
        defaults.insert(column, value);
    }
    Ok(defaults)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> (String, String) {
        ("t".to_string(), i.to_string())
    }

    #[test]
    fn doc_cache_stays_within_its_byte_bound() {
        let metrics = Metrics::new();
        let mut cache = DocCache::new(1000);
        for i in 0..100 {
            cache.insert(key(i), vec![0u8; 100].into());
            assert!(cache.bytes <= 1000, "{} bytes cached", cache.bytes);
        }
        assert_eq!(cache.entries.len(), 10, "exactly the bound's worth");
        assert!(cache.get(&key(99)).is_some() && cache.get(&key(0)).is_none());
        // Larger than the whole cache: not cached at all.
        cache.insert(key(1000), vec![0u8; 1001].into());
        assert!(cache.get(&key(1000)).is_none());
        // Staged documents are invisible until their transaction commits...
        cache.stage(key(99), vec![1u8; 10].into());
        assert!(cache.get(&key(99)).is_none());
        cache.settle(true, &metrics, "local");
        assert_eq!(cache.get(&key(99)).unwrap()[0], 1);
        // ...and dropped if it rolls back.
        cache.stage(key(98), vec![2u8; 10].into());
        cache.settle(false, &metrics, "local");
        assert!(cache.get(&key(98)).is_none());
        assert!(cache.bytes <= 1000);
    }
}
