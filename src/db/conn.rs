//! Opening connections and the SQL authorizer that guards every statement.
//!
//! The authorizer runs when SQLite compiles a statement. It always denies
//! `ATTACH`/`DETACH`, `load_extension`, `writable_schema`, setting connection
//! pragmas (the writer connection is shared by every client, so one client
//! must not change `synchronous` or `foreign_keys` for all), and any access to
//! outpost's internal `_outpost_*` tables — except from outpost's own
//! triggers (named `_outpost_*`) and internal code ([`Guard::internal`]).
//!
//! Prepared statements are cached per connection, and the authorizer does
//! not run again for a cached statement. That is safe because every rule
//! above is independent of who asks. The per-client rules (read-only tokens,
//! per-table rights) are checked on each execution (`db::exec`): with
//! `sqlite3_stmt_readonly`, and against what the statement touches
//! ([`Touches`]). The authorizer *records* that when a client statement is
//! compiled (its triggers, views and foreign-key actions included: SQLite
//! codes them into the statement), and the guard keeps it per SQL text, as
//! long as the statement cache (same bound). A statement SQLite recompiles
//! while it runs (after a schema change) is recorded again, and the caller's
//! table rights are enforced by the authorizer during that recompilation. A
//! refusal based on what was remembered is confirmed against a fresh
//! compilation first (the schema may have changed since: a trigger dropped).

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use libsql_sys::rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use libsql_sys::rusqlite::{Connection, OpenFlags};
use parking_lot::Mutex;

use crate::auth::Access;
use crate::config::DbConfig;

/// Prefix of every internal table, index and trigger.
pub const INTERNAL_PREFIX: &str = "_outpost_";

/// Pragmas a client may *set* (with a value or an argument). Everything else
/// with a value is a connection setting and is denied.
const SETTABLE_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "user_version",
    "defer_foreign_keys",
    // Per connection; the writer resets it after every job that runs outside
    // a transaction (inside one SQLite ignores it), so it never leaks.
    "foreign_keys",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Writer,
    Reader,
}

/// SQLite's own tables that every token may read: the schema (visible to
/// every client anyway, e.g. through `PRAGMA table_info`), AUTOINCREMENT
/// counters and row-count estimates. Other `sqlite_*` tables (`sqlite_stat4`
/// holds sampled key values) count as tables of their name.
const FREE_READS: &[&str] = &[
    "sqlite_schema",
    "sqlite_master",
    "sqlite_temp_schema",
    "sqlite_temp_master",
    "sqlite_sequence",
    "sqlite_stat1",
];

/// One thing a statement does that table rights govern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch<'a> {
    Read(&'a str),
    Write(&'a str),
    /// CREATE, DROP, ALTER, ANALYZE, REINDEX (or an action SQLite's
    /// authorizer codes this crate does not know).
    Schema,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE: every token may.
    Transaction,
}

impl Touch<'_> {
    /// What `ctx` touches, None if no right governs it: SQLite's schema
    /// tables, and whatever outpost's own `_outpost_*` triggers do. Writes
    /// to `sqlite_*` tables name no table: the caller checks such a
    /// statement as one that writes outside any table.
    fn of<'c>(ctx: &AuthContext<'c>) -> Option<Touch<'c>> {
        if ctx.accessor.is_some_and(is_internal) {
            return None;
        }
        let sqlite_table = |name: &str| {
            name.as_bytes()
                .get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"sqlite_"))
        };
        match ctx.action {
            AuthAction::Read { table_name, .. } => FREE_READS
                .iter()
                .all(|free| !free.eq_ignore_ascii_case(table_name))
                .then_some(Touch::Read(table_name)),
            AuthAction::Insert { table_name }
            | AuthAction::Update { table_name, .. }
            | AuthAction::Delete { table_name } => {
                (!sqlite_table(table_name)).then_some(Touch::Write(table_name))
            }
            AuthAction::CreateIndex { .. }
            | AuthAction::CreateTable { .. }
            | AuthAction::CreateTempIndex { .. }
            | AuthAction::CreateTempTable { .. }
            | AuthAction::CreateTempTrigger { .. }
            | AuthAction::CreateTempView { .. }
            | AuthAction::CreateTrigger { .. }
            | AuthAction::CreateView { .. }
            | AuthAction::DropIndex { .. }
            | AuthAction::DropTable { .. }
            | AuthAction::DropTempIndex { .. }
            | AuthAction::DropTempTable { .. }
            | AuthAction::DropTempTrigger { .. }
            | AuthAction::DropTempView { .. }
            | AuthAction::DropTrigger { .. }
            | AuthAction::DropView { .. }
            | AuthAction::AlterTable { .. }
            | AuthAction::Reindex { .. }
            | AuthAction::Analyze { .. }
            | AuthAction::CreateVtable { .. }
            | AuthAction::DropVtable { .. }
            | AuthAction::Unknown { .. } => Some(Touch::Schema),
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
                Some(Touch::Transaction)
            }
            _ => None,
        }
    }

    /// Why `access` may not do this, if it may not (the text that follows
    /// "not authorized: ").
    pub fn refusal(self, access: &Access) -> Option<String> {
        match self {
            Touch::Read(table) if !access.may_read(table) => {
                Some(format!("this token may not read table {table:?}"))
            }
            Touch::Write(table) if !access.may_write(table) => Some(if access.is_read_only() {
                format!("this token is read-only and the statement writes table {table:?}")
            } else {
                format!("this token may not write table {table:?}")
            }),
            Touch::Schema if access.tables().is_some() => Some(
                "the statement changes the schema (CREATE, ALTER, DROP, ANALYZE, REINDEX), \
                 which needs a token without per-table rights (no \"t\" claim)"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// What a statement touches, as the authorizer reported it while SQLite
/// compiled it: with what the triggers it fires, the views it reads and its
/// foreign-key checks and actions do. Names as SQLite reported them, each
/// once (ignoring ASCII case).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touches {
    /// Tables (and views) it reads.
    pub reads: Vec<String>,
    /// Tables (and views, through INSTEAD OF triggers) whose rows it
    /// inserts, updates or deletes.
    pub writes: Vec<String>,
    /// It changes the schema.
    pub schema: bool,
    /// It is transaction control (`BEGIN IMMEDIATE` writes, for SQLite).
    pub transaction: bool,
}

impl Touches {
    fn add(&mut self, touch: Touch<'_>) {
        let add = |list: &mut Vec<String>, name: &str| {
            if !list.iter().any(|t| t.eq_ignore_ascii_case(name)) {
                list.push(name.to_string());
            }
        };
        match touch {
            Touch::Read(name) => add(&mut self.reads, name),
            Touch::Write(name) => add(&mut self.writes, name),
            Touch::Schema => self.schema = true,
            Touch::Transaction => self.transaction = true,
        }
    }

    /// The first right `access` lacks here (the schema first, then writes,
    /// then reads), as the reason to refuse the statement.
    pub fn refusal(&self, access: &Access) -> Option<String> {
        if matches!(access, Access::ReadWrite) {
            return None;
        }
        let schema = self.schema.then_some(Touch::Schema);
        let writes = self.writes.iter().map(|t| Touch::Write(t));
        let reads = self.reads.iter().map(|t| Touch::Read(t));
        schema
            .into_iter()
            .chain(writes)
            .chain(reads)
            .find_map(|touch| touch.refusal(access))
    }
}

/// A client statement running: a recompilation is recorded, and checked
/// against `access` when the caller has per-table rights.
struct Running {
    access: Option<Access>,
    seen: Touches,
}

/// Shared between a connection's authorizer and its owner thread.
pub struct Guard {
    internal: std::sync::atomic::AtomicBool,
    /// A migration file runs: transaction control is refused.
    migrating: std::sync::atomic::AtomicBool,
    denial: Mutex<Option<String>>,
    /// When the running request must stop (checked by the progress handler).
    deadline: Mutex<Option<std::time::Instant>>,
    timed_out: std::sync::atomic::AtomicBool,
    /// Authorizer calls outside internal code: if a `prepare_cached` made
    /// none, it hit the cache (or compiled a statement that touches nothing).
    calls: AtomicU64,
    /// A client statement is being compiled: what it touches.
    recording: Mutex<Option<Touches>>,
    /// A client statement is running (see [`Running`]).
    running: Mutex<Option<Running>>,
    /// What the statements compiled for clients touch, by SQL text (bounded
    /// like the statement cache, `db.statement_cache`).
    touches: Mutex<lru::LruCache<String, Arc<Touches>>>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new(DbConfig::default().statement_cache)
    }
}

impl Guard {
    /// A guard remembering what up to `statements` statements touch.
    pub fn new(statements: usize) -> Guard {
        Guard {
            internal: Default::default(),
            migrating: Default::default(),
            denial: Default::default(),
            deadline: Default::default(),
            timed_out: Default::default(),
            calls: AtomicU64::new(0),
            recording: Mutex::new(None),
            running: Mutex::new(None),
            touches: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(statements).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Runs `f`, which compiles a client statement, recording what the
    /// statement touches. The touches are None if the authorizer did not
    /// run (the statement came from the cache, or touches nothing at all).
    pub fn recording<T>(&self, f: impl FnOnce() -> T) -> (T, Option<Touches>) {
        let before = self.calls.load(Ordering::Relaxed);
        *self.recording.lock() = Some(Touches::default());
        let out = f();
        let recorded = self.recording.lock().take();
        let compiled = self.calls.load(Ordering::Relaxed) != before;
        (out, recorded.filter(|_| compiled))
    }

    /// Runs `f`, which steps a client statement for a caller with `access`.
    /// If SQLite recompiles the statement meanwhile (the schema changed since
    /// it was compiled), the authorizer refuses what `access` may not touch,
    /// and what the new compilation touches is returned.
    pub fn running<T>(&self, access: &Access, f: impl FnOnce() -> T) -> (T, Option<Touches>) {
        let before = self.calls.load(Ordering::Relaxed);
        *self.running.lock() = Some(Running {
            access: access.tables().is_some().then(|| access.clone()),
            seen: Touches::default(),
        });
        let out = f();
        let running = self.running.lock().take();
        let recompiled = self.calls.load(Ordering::Relaxed) != before;
        (out, running.map(|r| r.seen).filter(|_| recompiled))
    }

    /// What the client statement with this SQL text touches, if known.
    pub fn touches_of(&self, sql: &str) -> Option<Arc<Touches>> {
        self.touches.lock().get(sql).cloned()
    }

    pub fn remember_touches(&self, sql: &str, touches: Arc<Touches>) {
        self.touches.lock().put(sql.to_string(), touches);
    }

    pub fn forget_touches(&self, sql: &str) {
        self.touches.lock().pop(sql);
    }

    /// Runs `f` with the internal tables accessible (outpost's own SQL).
    /// Nests: an inner call leaves the outer one's access on.
    pub fn internal<T>(&self, f: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering::Relaxed;
        let outer = self.internal.swap(true, Relaxed);
        let out = f();
        self.internal.store(outer, Relaxed);
        out
    }

    /// Runs `f` (a migration file's SQL) with transaction control refused:
    /// a migration is one transaction, opened and ended by outpost.
    pub fn migration<T>(&self, f: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering::Relaxed;
        self.migrating.store(true, Relaxed);
        let out = f();
        self.migrating.store(false, Relaxed);
        out
    }

    /// Sets the deadline of the request about to run (None: no request).
    /// Returns whether the previous request hit its deadline.
    pub fn set_deadline(&self, deadline: Option<std::time::Instant>) -> bool {
        *self.deadline.lock() = deadline;
        self.timed_out
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// The progress handler: true interrupts the running statement.
    fn past_deadline(&self) -> bool {
        let past = self
            .deadline
            .lock()
            .is_some_and(|d| std::time::Instant::now() >= d);
        if past {
            self.timed_out
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        past
    }

    /// Why the authorizer denied the last statement, if it did.
    pub fn take_denial(&self) -> Option<String> {
        self.denial.lock().take()
    }

    fn authorize(&self, ctx: &AuthContext<'_>) -> Authorization {
        if self.internal.load(std::sync::atomic::Ordering::Relaxed) {
            return Authorization::Allow;
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let migrating = self.migrating.load(std::sync::atomic::Ordering::Relaxed);
        let mut reason = match ctx.action {
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } if migrating => Some(
                "a migration runs in one transaction of its own: BEGIN, COMMIT, ROLLBACK and SAVEPOINT are not allowed in it".into(),
            ),
            _ => deny_reason(ctx),
        };
        if let (None, Some(touch)) = (&reason, Touch::of(ctx)) {
            if let Some(touches) = self.recording.lock().as_mut() {
                touches.add(touch);
            }
            if let Some(running) = self.running.lock().as_mut() {
                running.seen.add(touch);
                reason = running
                    .access
                    .as_ref()
                    .and_then(|access| touch.refusal(access));
            }
        }
        match reason {
            None => Authorization::Allow,
            Some(reason) => {
                *self.denial.lock() = Some(reason);
                Authorization::Deny
            }
        }
    }
}

fn is_internal(name: &str) -> bool {
    name.len() >= INTERNAL_PREFIX.len()
        && name.as_bytes()[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX.as_bytes())
}

fn deny_reason(ctx: &AuthContext<'_>) -> Option<String> {
    // Statements run by outpost's own triggers may touch internal tables.
    let from_internal_trigger = ctx.accessor.is_some_and(is_internal);
    let internal_table = |name: &str| {
        (is_internal(name) && !from_internal_trigger)
            .then(|| format!("Access to the internal table {name:?} is not allowed"))
    };
    match ctx.action {
        AuthAction::Attach { .. } => Some("ATTACH is not allowed".into()),
        AuthAction::Detach { .. } => Some("DETACH is not allowed".into()),
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            Some("load_extension() is not allowed".into())
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => pragma_denial(pragma_name, pragma_value),
        AuthAction::Read { table_name, .. }
        | AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::CreateTable { table_name }
        | AuthAction::CreateTempTable { table_name }
        | AuthAction::DropTable { table_name }
        | AuthAction::DropTempTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::Analyze { table_name }
        | AuthAction::CreateVtable { table_name, .. }
        | AuthAction::DropVtable { table_name, .. } => internal_table(table_name),
        AuthAction::CreateIndex {
            index_name,
            table_name,
        }
        | AuthAction::CreateTempIndex {
            index_name,
            table_name,
        }
        | AuthAction::DropIndex {
            index_name,
            table_name,
        }
        | AuthAction::DropTempIndex {
            index_name,
            table_name,
        } => internal_table(index_name).or_else(|| internal_table(table_name)),
        // `DROP TABLE t` drops t's capture triggers too (a bare `DROP
        // TRIGGER _outpost_*` is refused before it gets here, see exec.rs).
        AuthAction::DropTrigger {
            trigger_name,
            table_name,
        } if is_internal(trigger_name) && !is_internal(table_name) => None,
        AuthAction::CreateTrigger {
            trigger_name,
            table_name,
        }
        | AuthAction::CreateTempTrigger {
            trigger_name,
            table_name,
        }
        | AuthAction::DropTrigger {
            trigger_name,
            table_name,
        }
        | AuthAction::DropTempTrigger {
            trigger_name,
            table_name,
        } => internal_table(trigger_name).or_else(|| internal_table(table_name)),
        AuthAction::CreateView { view_name }
        | AuthAction::CreateTempView { view_name }
        | AuthAction::DropView { view_name }
        | AuthAction::DropTempView { view_name } => internal_table(view_name),
        AuthAction::Reindex { index_name } => internal_table(index_name),
        _ => None,
    }
}

fn pragma_denial(name: &str, value: Option<&str>) -> Option<String> {
    if name.eq_ignore_ascii_case("writable_schema") {
        return Some("PRAGMA writable_schema is not allowed".into());
    }
    let value = value?;
    if is_internal(value.trim_matches(|c| c == '"' || c == '\'' || c == '`')) {
        return Some(format!(
            "Access to the internal table {value:?} is not allowed"
        ));
    }
    if SETTABLE_PRAGMAS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(name))
    {
        None
    } else {
        Some(format!(
            "PRAGMA {name} cannot be changed by clients: connection settings are managed by outpost"
        ))
    }
}

/// Creates outpost's metadata table on first open: the node's stable random
/// id and the on-disk format version. Runs on the writer connection.
pub fn init_meta(conn: &Connection, guard: &Guard) -> Result<(), libsql_sys::rusqlite::Error> {
    let node_id = new_node_id();
    guard.internal(|| {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS _outpost_meta (key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
             INSERT OR IGNORE INTO _outpost_meta VALUES ('format_version', 1);",
        )?;
        super::migrate::create_tables(conn)?;
        conn.execute(
            "INSERT OR IGNORE INTO _outpost_meta VALUES ('node_id', ?1)",
            [node_id],
        )?;
        Ok(())
    })
}

/// A fresh node id: 16 random bytes, in hex.
pub fn new_node_id() -> String {
    super::migrate::hex(&rand::random::<[u8; 16]>())
}

/// Creates the database (if needed) and its node id; returns the id.
/// `outpost init` calls it so that the identity exists before first start.
pub fn create_node_identity(
    path: &Path,
    cfg: &DbConfig,
) -> Result<String, libsql_sys::rusqlite::Error> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let (conn, guard) = open(path, Role::Writer, cfg)?;
    init_meta(&conn, &guard)?;
    guard.internal(|| {
        conn.query_row(
            "SELECT value FROM _outpost_meta WHERE key = 'node_id'",
            [],
            |r| r.get(0),
        )
    })
}

/// Opens a connection to the database file with outpost's settings.
pub fn open(
    path: &Path,
    role: Role,
    cfg: &DbConfig,
) -> Result<(Connection, Arc<Guard>), libsql_sys::rusqlite::Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(cfg.busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", cfg.synchronous.as_str())?;
    conn.pragma_update(None, "cache_size", -(cfg.cache_size_kib as i64))?;
    if role == Role::Reader {
        // Defence in depth: readers only ever run statements that
        // `sqlite3_stmt_readonly` approved, and SQLite refuses writes here too.
        conn.pragma_update(None, "query_only", true)?;
    }
    conn.set_prepared_statement_cache_capacity(cfg.statement_cache);
    let guard = Arc::new(Guard::new(cfg.statement_cache));
    // The hook never panics; AssertUnwindSafe only satisfies rusqlite's bound.
    let hook_guard = std::panic::AssertUnwindSafe(Arc::clone(&guard));
    conn.authorizer(Some(move |ctx: AuthContext<'_>| hook_guard.authorize(&ctx)));
    // Every ~10k virtual machine steps (tens of microseconds), check the
    // request's deadline.
    let progress_guard = std::panic::AssertUnwindSafe(Arc::clone(&guard));
    conn.progress_handler(10_000, Some(move || progress_guard.past_deadline()));
    Ok((conn, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_tmp() -> (tempfile::TempDir, Connection, Arc<Guard>) {
        let dir = tempfile::tempdir().unwrap();
        let (conn, guard) =
            open(&dir.path().join("t.db"), Role::Writer, &DbConfig::default()).unwrap();
        (dir, conn, guard)
    }

    #[test]
    fn denies_dangerous_statements_with_reasons() {
        let (_dir, conn, guard) = open_tmp();
        guard
            .internal(|| conn.execute_batch("CREATE TABLE _outpost_meta(k, v)"))
            .unwrap();
        let cases = [
            ("ATTACH 'x.db' AS x", "ATTACH"),
            ("SELECT load_extension('x')", "load_extension"),
            ("PRAGMA writable_schema = 1", "writable_schema"),
            ("SELECT * FROM _outpost_meta", "_outpost_meta"),
            ("PRAGMA table_info(_outpost_meta)", "_outpost_meta"),
            ("DROP TABLE _OUTPOST_META", "internal"),
            ("PRAGMA synchronous = OFF", "synchronous"),
            (
                "CREATE TRIGGER _outpost_x AFTER INSERT ON t BEGIN SELECT 1; END",
                "internal",
            ),
        ];
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        for (sql, word) in cases {
            let err = conn
                .prepare(sql)
                .err()
                .unwrap_or_else(|| panic!("{sql} was allowed"));
            let reason = guard
                .take_denial()
                .unwrap_or_else(|| panic!("{sql}: {err}"));
            assert!(reason.contains(word), "{sql}: {reason}");
        }
    }

    #[test]
    fn non_ascii_names_near_the_prefixes() {
        let (_dir, conn, guard) = open_tmp();
        // Multi-byte characters where the `_outpost_` / `sqlite_` prefixes
        // end: no byte slicing inside a character.
        conn.execute_batch(r#"CREATE TABLE "_outpost✓" (x); CREATE TABLE "sqlite✓" (x);"#)
            .unwrap();
        let access = crate::auth::parse_tables(false, &["_outpost✓:rw".into()]).unwrap();
        let (stmt, touches) = guard.recording(|| {
            conn.prepare(r#"SELECT * FROM "_outpost✓", "sqlite✓""#)
                .map(drop)
        });
        stmt.unwrap();
        let touches = touches.unwrap();
        assert_eq!(touches.reads, ["_outpost✓", "sqlite✓"]);
        assert_eq!(
            touches.refusal(&access).unwrap(),
            "this token may not read table \"sqlite✓\""
        );
    }

    #[test]
    fn allows_ordinary_statements() {
        let (_dir, conn, guard) = open_tmp();
        conn.execute_batch(
            "CREATE TABLE t(x PRIMARY KEY); INSERT INTO t VALUES (1); PRAGMA table_info(t); PRAGMA user_version = 3;",
        )
        .unwrap();
        assert!(guard.take_denial().is_none());
    }
}

#[cfg(test)]
mod dialect_tests {
    use super::*;

    /// `@libsql/client` starts read transactions with this libSQL syntax.
    #[test]
    fn libsql_readonly_begin_parses() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = open(&dir.path().join("t.db"), Role::Reader, &DbConfig::default()).unwrap();
        conn.execute_batch("BEGIN TRANSACTION READONLY; SELECT 1; COMMIT;")
            .unwrap();
    }
}
