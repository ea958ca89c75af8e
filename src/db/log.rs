//! Reading the change log for replication: a read-only connection of its
//! own (not a client reader: it must see `_outpost_*`, and a slow peer must
//! not occupy a reader that clients wait for).

use std::path::Path;

use libsql_sys::rusqlite::{self, Connection, OpenFlags, OptionalExtension};
use parking_lot::Mutex;

use super::capture::{LogEntry, SnapshotDoc};
use crate::config::PeerRules;
pub use crate::sync::rules::Outbound;
use crate::sync::vv::VersionVector;

/// What a node tells peers about itself, read from `_outpost_meta`.
#[derive(Debug, Clone)]
pub struct NodeMeta {
    pub node_id: String,
    pub origin: u64,
    pub schema_version: i64,
    /// SHA-256 of the user tables' SQL, in name order.
    pub schema_hash: String,
}

pub struct LogReader {
    conn: Mutex<Connection>,
}

impl LogReader {
    pub fn open(path: &Path) -> rusqlite::Result<LogReader> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(LogReader {
            conn: Mutex::new(conn),
        })
    }

    pub fn meta(&self) -> rusqlite::Result<NodeMeta> {
        let conn = self.conn.lock();
        let get = |key: &str| -> rusqlite::Result<String> {
            conn.query_row(
                "SELECT CAST(value AS TEXT) FROM _outpost_meta WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
        };
        let node_id = get("node_id")?;
        Ok(NodeMeta {
            origin: crate::crdt::client_id_of(&node_id),
            node_id,
            schema_version: super::migrate::schema_version(&conn)?,
            schema_hash: super::migrate::schema_hash(&conn)?,
        })
    }

    /// The migrations the database applied, in order.
    pub fn migrations(&self) -> rusqlite::Result<Vec<super::migrate::Recorded>> {
        super::migrate::recorded(&self.conn.lock())
    }

    /// Entries with `after[o] < seq <= upto[o]`, origin by origin in seq
    /// order, at most `max_entries`, stopping once `max_bytes` of updates
    /// are collected (always at least one entry if any qualifies), and per
    /// origin stopping at the first entry from a schema newer than
    /// `max_schema` (the peer could not apply it) and before the first one
    /// this node holds in quarantine: the peer would hold the entries after
    /// it without that one, and never fetch it once it is replayed.
    ///
    /// `peer`: the peer's rules (`sync::rules`). For a partial peer, an entry
    /// its rules withhold is read as a placeholder; a full peer gets no
    /// placeholder: its origin stops before the first one.
    pub fn read(
        &self,
        after: &VersionVector,
        upto: &VersionVector,
        max_entries: usize,
        max_bytes: usize,
        max_schema: i64,
        peer: &Outbound,
    ) -> rusqlite::Result<Vec<LogEntry>> {
        let conn = self.conn.lock();
        let mut rows_filter = RowFilter::default();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM _outpost_log
             WHERE origin = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4"
        ))?;
        let mut quarantined = conn.prepare_cached(
            "SELECT min(seq) FROM _outpost_quarantine
             WHERE origin = ?1 AND seq > ?2 AND seq <= ?3 AND held",
        )?;
        let mut entries = Vec::new();
        let mut bytes = 0;
        for (origin, from, to) in upto.ahead_of(after) {
            let held: Option<i64> = quarantined.query_row(
                rusqlite::params![origin as i64, from as i64, to as i64],
                |r| r.get(0),
            )?;
            let to = held.map_or(to, |seq| seq as u64 - 1);
            if to <= from {
                continue;
            }
            let left = max_entries - entries.len();
            let mut rows = stmt.query(rusqlite::params![
                origin as i64,
                from as i64,
                to as i64,
                left as i64
            ])?;
            while let Some(row) = rows.next()? {
                let entry = entry_of(origin, row)?;
                if entry.schema_version > max_schema {
                    break;
                }
                let entry = match peer.rules.as_ref() {
                    _ if entry.is_placeholder() && !peer.partial => break,
                    Some(rules) if !entry.is_placeholder() => {
                        if rows_filter.sends(&conn, rules, &entry)? {
                            entry
                        } else if peer.partial {
                            entry.placeholder()
                        } else {
                            break;
                        }
                    }
                    _ => entry,
                };
                if !entries.is_empty() && bytes + entry.size() > max_bytes {
                    return Ok(entries);
                }
                bytes += entry.size();
                entries.push(entry);
            }
            if entries.len() >= max_entries {
                break;
            }
        }
        Ok(entries)
    }

    /// Quarantined entries matching `filter`, in (origin, seq) order, at
    /// most `limit` (`quarantine::per_call`).
    pub fn quarantined(
        &self,
        filter: &super::quarantine::Filter,
        limit: usize,
    ) -> rusqlite::Result<Vec<super::quarantine::Quarantined>> {
        super::quarantine::list(&self.conn.lock(), filter, limit)
    }

    /// How many entries the quarantine holds.
    /// Peers recorded for log compaction: node id, last acknowledgment (ms).
    pub fn peers_seen(&self) -> rusqlite::Result<Vec<(String, u64)>> {
        super::compact::peers_seen(&self.conn.lock())
    }

    pub fn quarantine_count(&self) -> rusqlite::Result<u64> {
        super::quarantine::count(&self.conn.lock(), &super::quarantine::Filter::default())
    }

    /// What this node's log may lack below (compacted, or covered by a
    /// snapshot), per origin.
    pub fn compacted(&self) -> rusqlite::Result<VersionVector> {
        super::compact::compacted(&self.conn.lock())
    }

    /// Row documents after `after` in (table, key) order, at most
    /// `max_docs` and about `max_bytes` (at least one), for a snapshot.
    /// The next row documents after `after`, for a snapshot. With `rules`
    /// (a partial peer), only the rows they let the peer see.
    pub fn read_docs(
        &self,
        after: Option<&(String, String)>,
        max_docs: usize,
        max_bytes: usize,
        rules: Option<&PeerRules>,
    ) -> rusqlite::Result<Vec<SnapshotDoc>> {
        let conn = self.conn.lock();
        let (table, key) = after.cloned().unwrap_or_default();
        // Filtered, it reads on past rows it skips (to the end at most).
        let limit = if rules.is_some() { -1 } else { max_docs as i64 };
        let mut stmt = conn.prepare_cached(
            "SELECT tbl, pk, doc FROM _outpost_rows WHERE (tbl, pk) > (?1, ?2)
             ORDER BY tbl, pk LIMIT ?3",
        )?;
        let mut rows = stmt.query(rusqlite::params![table, key, limit])?;
        let mut docs = Vec::new();
        let mut bytes = 0;
        let mut filter = RowFilter::default();
        while let Some(row) = rows.next()? {
            let doc = SnapshotDoc {
                table: row.get(0)?,
                key: row.get(1)?,
                doc: row.get(2)?,
            };
            if let Some(rules) = rules {
                if !filter.passes_doc(&conn, rules, &doc.table, &doc.doc)? {
                    continue;
                }
                if docs.len() >= max_docs {
                    break;
                }
            }
            let size = doc.table.len() + doc.key.len() + doc.doc.len();
            if !docs.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            docs.push(doc);
        }
        Ok(docs)
    }
}

/// The columns of `_outpost_log` that [`entry_of`] reads, in its order.
pub(crate) const ENTRY_COLUMNS: &str = "seq, hlc, tbl, pk, schema_version, \"update\", key_id, sig";

/// A log entry of `origin` from a row selecting [`ENTRY_COLUMNS`].
pub(crate) fn entry_of(origin: u64, row: &rusqlite::Row<'_>) -> rusqlite::Result<LogEntry> {
    Ok(LogEntry {
        origin,
        seq: row.get::<_, i64>(0)? as u64,
        hlc: row.get::<_, i64>(1)? as u64,
        table: row.get(2)?,
        key: row.get(3)?,
        schema_version: row.get(4)?,
        update: row.get(5)?,
        key_id: row.get::<_, i64>(6)? as u64,
        signature: row.get(7)?,
    })
}

/// Evaluates a peer's rules on the sender's rows (`sync::rules`), with the
/// column lists of the tables it met.
#[derive(Default)]
struct RowFilter {
    columns: std::collections::HashMap<String, Vec<String>>,
}

impl RowFilter {
    /// Whether `entry`'s row may be sent under `rules`.
    fn sends(
        &mut self,
        conn: &Connection,
        rules: &PeerRules,
        entry: &LogEntry,
    ) -> rusqlite::Result<bool> {
        if !rules.sends(&entry.table) {
            return Ok(false);
        }
        if !rules.filters.contains_key(&entry.table) {
            return Ok(true);
        }
        let doc: Option<Vec<u8>> = conn
            .prepare_cached("SELECT doc FROM _outpost_rows WHERE tbl = ?1 AND pk = ?2")?
            .query_row([&entry.table, &entry.key], |r| r.get(0))
            .optional()?;
        match doc {
            Some(doc) => self.passes_doc(conn, rules, &entry.table, &doc),
            None => Ok(false),
        }
    }

    /// Whether the row a document describes may be sent under `rules`.
    fn passes_doc(
        &mut self,
        conn: &Connection,
        rules: &PeerRules,
        table: &str,
        doc: &[u8],
    ) -> rusqlite::Result<bool> {
        if !rules.sends(table) {
            return Ok(false);
        }
        let Some(filter) = rules.filters.get(table) else {
            return Ok(true);
        };
        let view = match crate::crdt::RowDoc::load(doc, 0).and_then(|d| d.view()) {
            Ok(view) => view,
            Err(e) => {
                tracing::error!(table, error = %e, "a row document does not load; withheld from a filtered peer");
                return Ok(false);
            }
        };
        if !self.columns.contains_key(table) {
            let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
            let names = stmt
                .query_map([table], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            self.columns.insert(table.to_string(), names);
        }
        let columns = &self.columns[table];
        let sql = crate::sync::rules::filter_sql(columns, filter);
        Ok(crate::sync::rules::row_passes(conn, &sql, columns, &view))
    }
}
