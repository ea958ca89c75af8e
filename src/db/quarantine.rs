//! The quarantine: remote entries this node refused (`_outpost_quarantine`),
//! listed for the operator and replayed once the cause is fixed.
//!
//! An entry is quarantined by `Capture::apply` with a reason code (see
//! `Capture::admit` for the checks and their order). It counts as held (the
//! version vector includes it), so peers do not send it again. After the
//! operator fixed the cause (created the table, relaxed a CHECK, migrated),
//! `outpost quarantine replay` runs every quarantined entry through the
//! apply path again (`Capture::replay`): one that applies moves to the
//! change log, where links push it to peers; one still refused stays with
//! its new reason.
//!
//! Until then, a node does not relay an origin's entries past one it holds
//! in quarantine (`LogReader::read` stops there), so a peer that gets the
//! origin's entries through this node never has a hole it cannot see.

use std::collections::BTreeMap;

use libsql_sys::rusqlite::{self, Connection, OptionalExtension};
use serde::Serialize;

/// Most entries one list or replay call handles.
pub const MAX_PER_CALL: usize = 10_000;
/// Entries a list or replay call handles when none is asked for.
pub const DEFAULT_PER_CALL: usize = 100;

/// The number of entries a call handles: `asked`, within 1..=MAX_PER_CALL.
pub fn per_call(asked: Option<usize>) -> usize {
    asked.unwrap_or(DEFAULT_PER_CALL).clamp(1, MAX_PER_CALL)
}

/// Which quarantined entries a list or replay is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only entries with this reason code.
    pub code: Option<String>,
    /// Only entries of this origin.
    pub origin: Option<u64>,
    /// Only entries after this (origin, seq): a cursor for the next call.
    pub after: Option<(u64, u64)>,
}

/// One quarantined entry as `outpost quarantine list` shows it (without
/// its update bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    /// The writing node's origin, in decimal (as `/status` shows origins).
    pub origin: String,
    pub seq: u64,
    pub hlc: u64,
    pub table: String,
    pub key: String,
    pub schema_version: i64,
    pub update_bytes: u64,
    /// The node id of the peer that sent it.
    pub peer: String,
    pub code: String,
    pub reason: String,
    /// When it was (last) refused: milliseconds since the Unix epoch...
    pub at_ms: i64,
    /// ...and the same in RFC 3339, UTC.
    pub at: String,
}

/// What a replay call did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Entries that now applied (moved to the change log).
    pub replayed: u64,
    /// Entries refused again (still quarantined, reason and time updated).
    pub still_refused: u64,
    /// Matching entries left in the quarantine after this call.
    pub remaining: u64,
    /// Reason codes of the entries refused again, with their counts.
    pub reasons: BTreeMap<String, u64>,
    /// The last entry this call looked at: pass it as `after` to go on.
    #[serde(serialize_with = "last_as_json")]
    pub last: Option<(u64, u64)>,
    /// Entries this call looked at (at most its limit).
    pub processed: u64,
}

fn last_as_json<S: serde::Serializer>(last: &Option<(u64, u64)>, s: S) -> Result<S::Ok, S::Error> {
    match last {
        Some((origin, seq)) => {
            serde_json::json!({"origin": origin.to_string(), "seq": seq}).serialize(s)
        }
        None => s.serialize_none(),
    }
}

/// `WHERE` clause of the filter; its parameters are ?1 (code), ?2
/// (origin), ?3 and ?4 (after).
const WHERE: &str = "(?1 IS NULL OR code = ?1) AND (?2 IS NULL OR origin = ?2)
     AND (?3 IS NULL OR (origin, seq) > (?3, ?4))";

fn params(filter: &Filter) -> [Option<rusqlite::types::Value>; 4] {
    use rusqlite::types::Value as V;
    [
        filter.code.clone().map(V::Text),
        filter.origin.map(|o| V::Integer(o as i64)),
        filter.after.map(|(o, _)| V::Integer(o as i64)),
        filter.after.map(|(_, s)| V::Integer(s as i64)),
    ]
}

/// Whether the quarantine table exists (it does once capture ran).
fn exists(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_outpost_quarantine'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Quarantined entries matching `filter`, in (origin, seq) order, at most `limit`.
pub fn list(
    conn: &Connection,
    filter: &Filter,
    limit: usize,
) -> rusqlite::Result<Vec<Quarantined>> {
    if !exists(conn)? {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT origin, seq, hlc, tbl, pk, schema_version, length(\"update\"), peer, code, reason, at_ms
         FROM _outpost_quarantine WHERE {WHERE} ORDER BY origin, seq LIMIT ?5"
    );
    let [code, origin, after_o, after_s] = params(filter);
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(
        rusqlite::params![code, origin, after_o, after_s, limit as i64],
        |r| {
            let at_ms: i64 = r.get(10)?;
            Ok(Quarantined {
                origin: (r.get::<_, i64>(0)? as u64).to_string(),
                seq: r.get::<_, i64>(1)? as u64,
                hlc: r.get::<_, i64>(2)? as u64,
                table: text(r.get_ref(3)?),
                key: text(r.get_ref(4)?),
                schema_version: r.get(5)?,
                update_bytes: r.get::<_, i64>(6)? as u64,
                peer: text(r.get_ref(7)?),
                code: text(r.get_ref(8)?),
                reason: text(r.get_ref(9)?),
                at_ms,
                at: utc(at_ms),
            })
        },
    )?;
    rows.collect()
}

/// Entries matching `filter` (its `after` included).
pub fn count(conn: &Connection, filter: &Filter) -> rusqlite::Result<u64> {
    if !exists(conn)? {
        return Ok(0);
    }
    let [code, origin, after_o, after_s] = params(filter);
    conn.query_row(
        &format!("SELECT count(*) FROM _outpost_quarantine WHERE {WHERE}"),
        rusqlite::params![code, origin, after_o, after_s],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

/// The entries a replay call re-applies: matching `filter`, in (origin,
/// seq) order, at most `limit`, each with the peer that sent it.
pub(crate) fn to_replay(
    conn: &Connection,
    filter: &Filter,
    limit: usize,
) -> rusqlite::Result<Vec<(super::capture::LogEntry, String, String)>> {
    let sql = format!(
        "SELECT origin, seq, hlc, tbl, pk, schema_version, \"update\", peer, code, key_id, sig
         FROM _outpost_quarantine WHERE {WHERE} ORDER BY origin, seq LIMIT ?5"
    );
    let [code, origin, after_o, after_s] = params(filter);
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(
        rusqlite::params![code, origin, after_o, after_s, limit as i64],
        |r| {
            let entry = super::capture::LogEntry {
                origin: r.get::<_, i64>(0)? as u64,
                seq: r.get::<_, i64>(1)? as u64,
                hlc: r.get::<_, i64>(2)? as u64,
                table: text(r.get_ref(3)?),
                key: text(r.get_ref(4)?),
                schema_version: r.get(5)?,
                update: r.get(6)?,
                key_id: r.get::<_, i64>(9)? as u64,
                signature: r.get(10)?,
            };
            Ok((entry, text(r.get_ref(7)?), text(r.get_ref(8)?)))
        },
    )?;
    rows.collect()
}

/// A TEXT column as a string (invalid UTF-8 replaced: a peer sent it).
fn text(value: rusqlite::types::ValueRef<'_>) -> String {
    match value {
        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
            String::from_utf8_lossy(t).into_owned()
        }
        rusqlite::types::ValueRef::Null => String::new(),
        rusqlite::types::ValueRef::Integer(i) => i.to_string(),
        rusqlite::types::ValueRef::Real(f) => f.to_string(),
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, to the second.
pub fn utc(at_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_call_is_bounded() {
        assert_eq!(per_call(None), DEFAULT_PER_CALL);
        assert_eq!(per_call(Some(0)), 1);
        assert_eq!(per_call(Some(50)), 50);
        assert_eq!(per_call(Some(1 << 40)), MAX_PER_CALL);
    }

    #[test]
    fn utc_is_rfc3339() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn list_and_count_filter_and_page() {
        let conn = Connection::open_in_memory().unwrap();
        assert!(list(&conn, &Filter::default(), 10).unwrap().is_empty());
        assert_eq!(count(&conn, &Filter::default()).unwrap(), 0);
        conn.execute_batch(
            "CREATE TABLE _outpost_quarantine (
                 origin INTEGER NOT NULL, seq INTEGER NOT NULL, hlc INTEGER NOT NULL,
                 tbl TEXT NOT NULL, pk TEXT NOT NULL, schema_version INTEGER NOT NULL,
                 \"update\" BLOB NOT NULL, peer TEXT NOT NULL, code TEXT NOT NULL,
                 reason TEXT NOT NULL, at_ms INTEGER NOT NULL,
                 key_id INTEGER NOT NULL, sig BLOB NOT NULL,
                 PRIMARY KEY (origin, seq)) WITHOUT ROWID;
             INSERT INTO _outpost_quarantine VALUES
                 (7, 2, 1, 't', '2', 0, x'0102', 'p', 'table', 'no t', 0, 0, x''),
                 (7, 1, 1, 't', '1', 0, x'01', 'p', 'table', 'no t', 0, 0, x''),
                 (9, 1, 1, 'u', '1', 0, x'', 'p', 'constraint', 'CHECK', 1000, 0, x'');",
        )
        .unwrap();
        let all = list(&conn, &Filter::default(), 10).unwrap();
        let at: Vec<(String, u64)> = all.iter().map(|q| (q.origin.clone(), q.seq)).collect();
        assert_eq!(at, [("7".into(), 1), ("7".into(), 2), ("9".into(), 1)]);
        assert_eq!(all[1].update_bytes, 2);
        assert_eq!(all[2].at, "1970-01-01T00:00:01Z");
        let table = Filter {
            code: Some("table".into()),
            ..Filter::default()
        };
        assert_eq!(count(&conn, &table).unwrap(), 2);
        let nine = Filter {
            origin: Some(9),
            ..Filter::default()
        };
        assert_eq!(list(&conn, &nine, 10).unwrap()[0].code, "constraint");
        let after = Filter {
            after: Some((7, 1)),
            ..Filter::default()
        };
        assert_eq!(count(&conn, &after).unwrap(), 2);
        assert_eq!(list(&conn, &after, 1).unwrap()[0].seq, 2);
        let replay = to_replay(&conn, &after, 10).unwrap();
        assert_eq!(replay.len(), 2);
        assert_eq!(replay[0].0.update, vec![1, 2]);
        assert_eq!(replay[1].2, "constraint");
    }
}
