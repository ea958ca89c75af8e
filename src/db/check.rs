//! `outpost check`: proves the promise of atomic capture on a database file.
//!
//! In one read transaction it verifies that
//! - no change waits in `_outpost_pending` (every change is encoded);
//! - every row of a replicated table equals its document, and every live
//!   document has its row (deleted documents have none);
//! - every document equals the merge of its log entries (the log covers it);
//! - `seq` is dense for every origin above what was compacted, counting
//!   quarantined entries.
//!
//! With `--digest` it also hashes the replicated tables, in primary-key
//! order, so that two converged nodes print the same digest.

use std::collections::BTreeMap;
use std::path::Path;

use libsql_sys::rusqlite::{self, Connection, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};

use super::capture::{column_list, key_expr, quote_ident, table_columns, where_pk};
use crate::crdt::{parse_key, RowDoc, RowView, Value};

/// Problems past this many are counted, not listed.
const MAX_LISTED: usize = 100;

#[derive(Debug, Default)]
pub struct CheckReport {
    pub tables: Vec<String>,
    pub rows: u64,
    pub documents: u64,
    pub log_entries: u64,
    /// origin → highest seq.
    pub origins: BTreeMap<u64, u64>,
    pub problems: Vec<String>,
    pub more_problems: usize,
    pub digest: Option<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < MAX_LISTED {
            self.problems.push(text);
        } else {
            self.more_problems += 1;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: rusqlite::Error,
    },
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
}

struct Table {
    name: String,
    columns: Vec<String>,
    pk: Vec<String>,
    /// Each column's default: a column no node has written into a row's
    /// document yet holds it (added by a migration after the row was).
    defaults: std::collections::HashMap<String, Value>,
}

/// Checks the database at `path` (a running server may keep writing: the
/// check reads one consistent snapshot).
pub fn check(path: &Path, digest: bool) -> Result<CheckReport, CheckError> {
    let open_err = |source| CheckError::Open {
        path: path.to_owned(),
        source,
    };
    if !path.exists() {
        return Err(open_err(rusqlite::Error::InvalidPath(path.to_owned())));
    }
    // Read-write so that SQLite can recover the WAL after a crash; only reads.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch("BEGIN")?;
    let mut report = CheckReport::default();
    let has_log: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE name = '_outpost_log'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if has_log.is_none() {
        report.problem("no change log: capture never ran on this database".into());
        return Ok(report);
    }
    let tables = replicated_tables(&conn)?;
    report.tables = tables.iter().map(|t| t.name.clone()).collect();
    check_pending(&conn, &mut report)?;
    for table in &tables {
        check_rows(&conn, table, &mut report)?;
        check_documents(&conn, table, &mut report)?;
    }
    check_log_covers_documents(&conn, &mut report)?;
    check_seq_dense(&conn, &mut report)?;
    if digest {
        report.digest = Some(digest_of(&conn, &tables)?);
    }
    conn.execute_batch("COMMIT")?;
    Ok(report)
}

fn replicated_tables(conn: &Connection) -> rusqlite::Result<Vec<Table>> {
    let names: Vec<String> = conn
        .prepare("SELECT tbl FROM _outpost_tables ORDER BY tbl")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    names
        .into_iter()
        .map(|name| {
            let (columns, pk) = table_columns(conn, &name)?;
            let defaults = super::capture::column_defaults(conn, &name)?;
            Ok(Table {
                name,
                columns,
                pk,
                defaults,
            })
        })
        .collect()
}

fn check_pending(conn: &Connection, report: &mut CheckReport) -> rusqlite::Result<()> {
    let pending: i64 = conn.query_row("SELECT count(*) FROM _outpost_pending", [], |r| r.get(0))?;
    if pending > 0 {
        report.problem(format!(
            "{pending} changed rows are not encoded yet (changed by another program?); \
             `outpost serve` encodes them at start"
        ));
    }
    Ok(())
}

fn load_view(bytes: &[u8]) -> Result<RowView, String> {
    RowDoc::load(bytes, 1)
        .and_then(|doc| doc.view())
        .map_err(|e| e.to_string())
}

/// Every row equals its document.
fn check_rows(conn: &Connection, table: &Table, report: &mut CheckReport) -> rusqlite::Result<()> {
    let cols = column_list(&table.columns);
    let sql = format!(
        "SELECT {key}, {cols} FROM {t}",
        key = key_expr(&table.pk, ""),
        t = quote_ident(&table.name)
    );
    let mut rows = conn.prepare(&sql)?;
    let mut docs = conn.prepare("SELECT doc FROM _outpost_rows WHERE tbl = ?1 AND pk = ?2")?;
    let mut iter = rows.query([])?;
    while let Some(row) = iter.next()? {
        report.rows += 1;
        let key =
            String::from_utf8_lossy(row.get_ref(0)?.as_bytes().unwrap_or_default()).into_owned();
        let doc: Option<Vec<u8>> = docs
            .query_row((&table.name, &key), |r| r.get(0))
            .optional()?;
        let at = format!("{} {key}", table.name);
        let Some(doc) = doc else {
            report.problem(format!(
                "{at}: row has no document (a change was not captured)"
            ));
            continue;
        };
        let view = match load_view(&doc) {
            Ok(view) => view,
            Err(e) => {
                report.problem(format!("{at}: document does not decode: {e}"));
                continue;
            }
        };
        if !view.is_live() {
            report.problem(format!("{at}: row exists but its document says deleted"));
            continue;
        }
        for (i, column) in table.columns.iter().enumerate() {
            let value = Value::from_sql(row.get_ref(i + 1)?);
            match view.cols.get(column) {
                Some((_, v)) if *v == value => {}
                Some((_, v)) => report.problem(format!(
                    "{at}: column {column} is {value:?} but its document says {v:?}"
                )),
                None if table
                    .defaults
                    .get(column)
                    .is_some_and(|d| super::capture::same_value(d, &value)) => {}
                None => report.problem(format!(
                    "{at}: column {column} is missing from its document"
                )),
            }
        }
    }
    Ok(())
}

/// Every live document has its row.
fn check_documents(
    conn: &Connection,
    table: &Table,
    report: &mut CheckReport,
) -> rusqlite::Result<()> {
    let exists = format!(
        "SELECT 1 FROM {} WHERE {}",
        quote_ident(&table.name),
        where_pk(&table.pk)
    );
    let mut exists = conn.prepare(&exists)?;
    let mut docs = conn.prepare("SELECT pk, doc FROM _outpost_rows WHERE tbl = ?1")?;
    let mut iter = docs.query([&table.name])?;
    while let Some(row) = iter.next()? {
        report.documents += 1;
        let key: String = row.get(0)?;
        let at = format!("{} {key}", table.name);
        let Ok(view) = load_view(row.get_ref(1)?.as_blob()?) else {
            continue; // reported by check_rows if the row exists
        };
        let values = match parse_key(&key) {
            Ok(values) => values,
            Err(e) => {
                report.problem(format!("{at}: {e}"));
                continue;
            }
        };
        let present = exists
            .query_row(rusqlite::params_from_iter(&values), |_| Ok(()))
            .optional()?
            .is_some();
        if view.is_live() && !present {
            report.problem(format!(
                "{at}: document says the row exists but it does not"
            ));
        }
    }
    Ok(())
}

/// Every document equals the merge of its log entries — or, once the log
/// was compacted, contains it (merging the entries changes nothing).
fn check_log_covers_documents(conn: &Connection, report: &mut CheckReport) -> rusqlite::Result<()> {
    let compacted = table_exists(conn, "_outpost_compacted")?
        && conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM _outpost_compacted)",
            [],
            |r| r.get::<_, bool>(0),
        )?;
    let mut log =
        // Placeholders (empty updates, partial replication) stand for no row.
        conn.prepare(
            "SELECT tbl, pk, \"update\" FROM _outpost_log WHERE length(\"update\") > 0
             ORDER BY tbl, pk, origin, seq",
        )?;
    let mut stored = conn.prepare("SELECT doc FROM _outpost_rows WHERE tbl = ?1 AND pk = ?2")?;
    let mut iter = log.query([])?;
    let mut current: Option<((String, String), RowDoc)> = None;
    let mut finish = |row: Option<((String, String), RowDoc)>,
                      report: &mut CheckReport|
     -> rusqlite::Result<()> {
        let Some(((table, key), rebuilt)) = row else {
            return Ok(());
        };
        let at = format!("{table} {key}");
        let doc: Option<Vec<u8>> = stored.query_row((&table, &key), |r| r.get(0)).optional()?;
        let Some(doc) = doc else {
            report.problem(format!(
                "{at}: log entries exist but the document is missing"
            ));
            return Ok(());
        };
        let rebuilt = if compacted {
            // The stored document with the log merged in must not change.
            let with_log =
                RowDoc::load(&doc, 1).and_then(|d| d.apply(&rebuilt.encode()).map(|()| d));
            match with_log {
                Ok(d) => d,
                Err(e) => {
                    report.problem(format!("{at}: log entries do not merge: {e}"));
                    return Ok(());
                }
            }
        } else {
            rebuilt
        };
        match (load_view(&doc), rebuilt.view()) {
            (Ok(stored), Ok(rebuilt)) if stored == rebuilt => {}
            (Ok(_), Ok(_)) => report.problem(format!(
                "{at}: document differs from the merge of its log entries"
            )),
            (_, Err(e)) => report.problem(format!("{at}: log entries do not merge: {e}")),
            (Err(_), _) => {}
        }
        Ok(())
    };
    while let Some(row) = iter.next()? {
        report.log_entries += 1;
        let id = (row.get::<_, String>(0)?, row.get::<_, String>(1)?);
        if current.as_ref().is_none_or(|(k, _)| *k != id) {
            finish(current.take(), report)?;
            current = Some((id.clone(), RowDoc::new(1)));
        }
        let (_, doc) = current.as_ref().expect("set above");
        if let Err(e) = doc.apply(row.get_ref(2)?.as_blob()?) {
            report.problem(format!(
                "{} {}: a log entry does not decode: {e}",
                id.0, id.1
            ));
        }
    }
    finish(current.take(), report)?;
    let uncovered: i64 = conn.query_row(
        // (tbl, pk) IN (subquery) builds a temporary index once; a NOT
        // EXISTS per document would scan the log for each one.
        "SELECT count(*) FROM _outpost_rows WHERE (tbl, pk) NOT IN
           (SELECT tbl, pk FROM _outpost_log)",
        [],
        |r| r.get(0),
    )?;
    if uncovered > 0 && !compacted {
        report.problem(format!("{uncovered} documents have no log entry at all"));
    }
    Ok(())
}

/// Whether the file has `name` (files from older versions may lack
/// tables that `serve` creates).
fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name = ?1",
        [name],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )
}

fn check_seq_dense(conn: &Connection, report: &mut CheckReport) -> rusqlite::Result<()> {
    // Quarantined entries (refused remote changes) fill their place in the
    // sequence; below `_outpost_compacted.upto` entries may be gone.
    let floor_sql = if table_exists(conn, "_outpost_compacted")? {
        "coalesce((SELECT upto FROM _outpost_compacted AS c WHERE c.origin = l.origin), 0)"
    } else {
        "0"
    };
    let quarantined = if table_exists(conn, "_outpost_quarantine")? {
        "UNION SELECT seq FROM _outpost_quarantine WHERE origin = ?1 AND seq > ?2 AND seq <= ?3"
    } else {
        ""
    };
    let mut origins = conn.prepare(&format!(
        "SELECT origin, max(seq), {floor_sql} FROM _outpost_log AS l GROUP BY origin"
    ))?;
    let rows: Vec<(i64, i64, i64)> = origins
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut held = conn.prepare(&format!(
        "SELECT count(*) FROM (SELECT seq FROM _outpost_log WHERE origin = ?1 AND seq > ?2 AND seq <= ?3
         {quarantined})"
    ))?;
    for (origin, max, floor) in rows {
        report.origins.insert(origin as u64, max as u64);
        if max <= floor {
            continue;
        }
        let count: i64 = held.query_row([origin, floor, max], |r| r.get(0))?;
        if count != max - floor {
            report.problem(format!(
                "origin {origin}: seq is not dense: {count} entries between {} and {max}",
                floor + 1
            ));
        }
    }
    Ok(())
}

/// SHA-256 over every replicated table (by name), rows in primary-key order.
fn digest_of(conn: &Connection, tables: &[Table]) -> rusqlite::Result<String> {
    let mut hash = Sha256::new();
    for table in tables {
        hash.update(table.name.as_bytes());
        hash.update([0]);
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            column_list(&table.columns),
            quote_ident(&table.name),
            column_list(&table.pk)
        );
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        let mut buf = Vec::new();
        while let Some(row) = rows.next()? {
            buf.clear();
            for i in 0..table.columns.len() {
                Value::from_sql(row.get_ref(i)?).encode(&mut buf);
            }
            hash.update((buf.len() as u64).to_be_bytes());
            hash.update(&buf);
        }
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
