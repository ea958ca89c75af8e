//! What the shipper has put in the backup, kept in `<data_dir>/backup-state.json`
//! (outside the database: a snapshot must not carry it, and a restored node
//! starts a backup of its own).
//!
//! The file is replaced atomically (write, fsync, rename) *after* each
//! upload succeeded: a crash in between uploads the same segment again
//! under the same name — a harmless overwrite — and never skips one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sync::vv::VersionVector;

pub const FILE: &str = "backup-state.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipState {
    /// The backup location this state is about; another URL starts afresh.
    pub url: String,
    /// The node the segments belong to.
    pub node_id: String,
    /// The index the next segment gets.
    pub next_index: u64,
    /// Every entry up to this is in the backup (a snapshot or a segment).
    pub shipped: VersionVector,
    /// The newest snapshot this node took, and the schema it had (a
    /// schema change, by migration or DDL, calls for a new snapshot: the
    /// entries after it need the new tables to be restored).
    pub last_snapshot_ms: u64,
    #[serde(default)]
    pub last_snapshot_schema: String,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The state for `url` and `node_id`; a fresh one if the file is absent,
/// unreadable (logged) or about another location or node.
pub fn load(data_dir: &Path, url: &str, node_id: &str) -> ShipState {
    let fresh = ShipState {
        url: url.to_string(),
        node_id: node_id.to_string(),
        ..ShipState::default()
    };
    let file = path(data_dir);
    let bytes = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return fresh,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read the backup state: the backup starts afresh");
            return fresh;
        }
    };
    match serde_json::from_slice::<ShipState>(&bytes) {
        Ok(state) if state.url == url && state.node_id == node_id => state,
        Ok(state) => {
            tracing::info!(old = %state.url, new = %url, "backup location or node changed: the backup starts afresh");
            fresh
        }
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "backup state unreadable: the backup starts afresh");
            fresh
        }
    }
}

/// Replaces the state file atomically and durably.
pub fn save(data_dir: &Path, state: &ShipState) -> std::io::Result<()> {
    use std::io::Write;
    let file = path(data_dir);
    let tmp = file.with_extension("json.tmp");
    let mut out = std::fs::File::create(&tmp)?;
    out.write_all(&serde_json::to_vec_pretty(state).expect("state serializes"))?;
    out.sync_all()?;
    std::fs::rename(&tmp, &file)?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_loads_back_only_for_the_same_location_and_node() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = load(dir.path(), "file:///b", "n1");
        assert_eq!(state.next_index, 0);
        state.next_index = 5;
        state.shipped.observe(1, 9);
        save(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path(), "file:///b", "n1"), state);
        assert_eq!(load(dir.path(), "file:///other", "n1").next_index, 0);
        assert_eq!(load(dir.path(), "file:///b", "n2").next_index, 0);
        std::fs::write(path(dir.path()), b"{garbage").unwrap();
        assert_eq!(load(dir.path(), "file:///b", "n1").next_index, 0);
    }
}
