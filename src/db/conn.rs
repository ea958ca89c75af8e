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
//! above is independent of who asks; the one per-client rule (read-only
//! tokens) is checked on each execution with `sqlite3_stmt_readonly`.

use std::path::Path;
use std::sync::Arc;

use libsql_sys::rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use libsql_sys::rusqlite::{Connection, OpenFlags};
use parking_lot::Mutex;

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

/// Shared between a connection's authorizer and its owner thread.
#[derive(Default)]
pub struct Guard {
    internal: std::sync::atomic::AtomicBool,
    /// A migration file runs: transaction control is refused.
    migrating: std::sync::atomic::AtomicBool,
    denial: Mutex<Option<String>>,
    /// When the running request must stop (checked by the progress handler).
    deadline: Mutex<Option<std::time::Instant>>,
    timed_out: std::sync::atomic::AtomicBool,
}

impl Guard {
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
        let migrating = self.migrating.load(std::sync::atomic::Ordering::Relaxed);
        let reason = match ctx.action {
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } if migrating => Some(
                "a migration runs in one transaction of its own: BEGIN, COMMIT, ROLLBACK and SAVEPOINT are not allowed in it".into(),
            ),
            _ => deny_reason(ctx),
        };
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
        && name[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX)
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
    let node_id: [u8; 16] = rand::random();
    let node_id: String = node_id.iter().map(|b| format!("{b:02x}")).collect();
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
    let guard = Arc::new(Guard::default());
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
