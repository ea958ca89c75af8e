//! Log compaction: entries every peer holds are deleted from
//! `_outpost_log`; the row documents keep their effect.
//!
//! What each peer holds comes from its acknowledgements (a peer acks only
//! what it committed), recorded in `_outpost_peers` so that a peer that is
//! away still holds compaction back. The floor is the pointwise minimum
//! over every recorded peer, and compaction waits until every configured
//! peer has been seen at least once. A peer silent for longer than
//! `sync.peer_retention` is forgotten; if it comes back below the floor it
//! is sent a snapshot of the documents instead of the entries it missed.
//! With no peer at all nothing is compacted (a node that was never part of
//! a cluster keeps its whole history).

use libsql_sys::rusqlite::{self, params, Connection};

use super::capture::{Capture, CaptureError};
use crate::sync::vv::VersionVector;

/// What one peer acknowledged, as the sync driver saw it.
#[derive(Debug, Clone)]
pub struct PeerAck {
    pub node_id: String,
    /// The URL this node dials it at, if it is a configured peer.
    pub url: Option<String>,
    pub have: VersionVector,
}

#[derive(Debug, Clone)]
pub struct CompactPlan {
    pub acks: Vec<PeerAck>,
    /// `sync.peers`: compaction waits until each has been seen.
    pub configured: Vec<String>,
    pub now_ms: u64,
    pub retention_ms: u64,
    /// What the cloud backup holds, when it holds compaction back.
    pub backup: Option<VersionVector>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactOutcome {
    pub deleted: usize,
    /// Everything at or below this is compacted now, per origin.
    pub compacted: VersionVector,
    /// Why nothing was compacted, if so.
    pub waiting_for: Option<String>,
}

/// Runs inside the writer's transaction.
pub fn run(
    conn: &Connection,
    capture: &Capture,
    plan: &CompactPlan,
) -> Result<CompactOutcome, CaptureError> {
    record_acks(conn, plan)?;
    let peers = recorded_peers(conn)?;
    let mut outcome = CompactOutcome {
        compacted: compacted(conn)?,
        ..CompactOutcome::default()
    };
    if peers.is_empty() {
        outcome.waiting_for = Some("no peer has acknowledged anything yet".into());
        return Ok(outcome);
    }
    let unseen: Vec<&String> = plan
        .configured
        .iter()
        .filter(|url| !peers.iter().any(|(u, _)| u.as_ref() == Some(*url)))
        .collect();
    if !unseen.is_empty() {
        outcome.waiting_for = Some(format!("peers never seen yet: {unseen:?}"));
        return Ok(outcome);
    }
    let local = super::capture::log_vector(conn)?;
    let mut floor = peers
        .iter()
        .fold(local.clone(), |floor, (_, have)| floor.meet(have));
    if let Some(backup) = &plan.backup {
        floor = floor.meet(backup);
    }
    let floor = VersionVector(
        floor
            .0
            .into_iter()
            .filter(|(origin, seq)| *seq > outcome.compacted.get(*origin))
            .collect(),
    );
    if floor.0.is_empty() {
        return Ok(outcome);
    }
    outcome.deleted = capture.compact(conn, &floor)?;
    outcome.compacted.merge(&floor);
    Ok(outcome)
}

fn record_acks(conn: &Connection, plan: &CompactPlan) -> rusqlite::Result<()> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO _outpost_peers (node_id, url, have, seen_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (node_id) DO UPDATE SET url = coalesce(excluded.url, url),
             have = excluded.have, seen_ms = excluded.seen_ms",
    )?;
    for ack in &plan.acks {
        let have = serde_json::to_vec(&ack.have).expect("a vector serializes");
        upsert.execute(params![ack.node_id, ack.url, have, plan.now_ms as i64])?;
    }
    let forgotten = conn.execute(
        "DELETE FROM _outpost_peers WHERE seen_ms < ?1",
        [plan.now_ms.saturating_sub(plan.retention_ms) as i64],
    )?;
    if forgotten > 0 {
        tracing::warn!(
            peers = forgotten,
            "forgot peers silent past sync.peer_retention: they no longer hold back log compaction and will get a snapshot if they return"
        );
    }
    Ok(())
}

/// Each recorded peer's node id and when it last acknowledged (Unix ms).
pub fn peers_seen(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached("SELECT node_id, seen_ms FROM _outpost_peers")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    rows.collect()
}

fn recorded_peers(conn: &Connection) -> rusqlite::Result<Vec<(Option<String>, VersionVector)>> {
    let mut stmt = conn.prepare_cached("SELECT url, have FROM _outpost_peers")?;
    let rows = stmt.query_map([], |r| {
        let url: Option<String> = r.get(0)?;
        let have: Vec<u8> = r.get(1)?;
        Ok((url, serde_json::from_slice(&have).unwrap_or_default()))
    })?;
    rows.collect()
}

/// What this node's log may lack below, per origin.
pub fn compacted(conn: &Connection) -> rusqlite::Result<VersionVector> {
    let mut stmt = conn.prepare_cached("SELECT origin, upto FROM _outpost_compacted")?;
    let mut vv = VersionVector::new();
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        vv.observe(row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64);
    }
    Ok(vv)
}
