//! Partial replication: which rows may flow to and from a peer
//! (`sync.rules`, [`crate::config::PeerRules`]).
//!
//! A rule names tables (`send_tables`, `accept_tables`) and, per table, a
//! row filter: an SQL expression over the row's columns. Both directions
//! are enforced where the data is:
//!
//! - **Sending** (`db::log::LogReader::read`): an entry of a table the peer
//!   may not receive, or of a row the filter does not pass, goes out as a
//!   *placeholder* (origin and seq only), so the peer's log stays dense.
//!   The filter is evaluated over the row as the sender's document holds it
//!   when the entry is sent (a deleted row keeps its last values). Only a
//!   peer that says it is partial (`sync.partial`) takes placeholders; a
//!   full replica is never sent one, and a node never relays past a
//!   placeholder to a full replica.
//! - **Accepting** (`db::capture`, `admit`): an entry from the peer for a
//!   table it may not send is quarantined (`forbidden_table`); one whose row
//!   fails the filter before or after the change (a row it may not see, or
//!   one it moves out of its partition) is quarantined (`forbidden_row`).
//!
//! A row that moves out of a peer's filter (changed on a node that may
//! change it): from then on its entries reach that peer as placeholders;
//! the peer keeps the last version it was allowed to see. A row that moves
//! in reaches the peer from the entries written after the move. To move a
//! row between partitions and have every partial peer agree, delete it and
//! insert it anew.

use libsql_sys::rusqlite::{self, Connection};

use crate::config::PeerRules;
use crate::crdt::{RowView, Value};
use crate::db::capture::quote_ident;

/// What a log read for one peer must respect: whether the peer is a
/// partial replica (its `Hello`), and this node's rules for it.
#[derive(Debug, Clone, Default)]
pub struct Outbound {
    pub partial: bool,
    pub rules: Option<PeerRules>,
}

/// The statement that evaluates `filter` over one row whose columns are
/// bound in order (`?1` is `columns[0]`). NULL counts as false.
pub fn filter_sql(columns: &[String], filter: &str) -> String {
    let row: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("?{} AS {}", i + 1, quote_ident(c)))
        .collect();
    format!(
        "SELECT coalesce(({filter}), 0) FROM (SELECT {})",
        row.join(", ")
    )
}

/// Whether the row `view` describes passes `filter`. A column the
/// document holds no value for counts as NULL. A filter that does not
/// compile or run fails the row (never sends or accepts what it cannot judge).
pub fn row_passes(conn: &Connection, sql: &str, columns: &[String], view: &RowView) -> bool {
    let values: Vec<&Value> = columns
        .iter()
        .map(|c| view.cols.get(c).map_or(&Value::Null, |(_, v)| v))
        .collect();
    let outcome = conn.prepare_cached(sql).and_then(|mut stmt| {
        stmt.query_row(rusqlite::params_from_iter(values), |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
    });
    match outcome {
        Ok(rusqlite::types::Value::Integer(n)) => n != 0,
        Ok(rusqlite::types::Value::Real(x)) => x != 0.0,
        Ok(_) => false,
        Err(e) => {
            tracing::error!(sql, error = %e, "a sync.rules row filter failed; the row is withheld");
            false
        }
    }
}
