//! Schema migrations: numbered SQL files, applied in order, one transaction
//! each, on the writer.
//!
//! A migrations directory holds `0001_init.sql`, `0002_task_priority.sql`,
//! ...: versions 1..n, contiguous. The database records every migration it
//! applied in `_outpost_migrations` (version, name, SHA-256 of the file, the
//! schema hash it produced) and its current version and hash in
//! `_outpost_meta`. A file that changed after it was applied is an error,
//! never skipped: a node whose history differs from its peers' would apply
//! their updates to the wrong schema.
//!
//! Why the version matters to replication: every log entry carries the
//! version it was written under, and a node never applies an entry from a
//! newer version (see `sync::core`). The migration itself runs capture in
//! *migration mode*: a new column's default is not recorded at all (a
//! document without the column means its default), and other values a
//! migration puts into columns a row's document does not have yet (a
//! backfill) are recorded with the lowest stamp, so every node that runs the
//! same migration agrees and any real write, made anywhere, wins over them
//! (see `crdt::Unwritten`).

use std::path::{Path, PathBuf};

use libsql_sys::rusqlite::{self, params, Connection};
use serde::Serialize;

/// Largest migration file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most migration files in a directory.
pub const MAX_MIGRATIONS: usize = 10_000;

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    /// The file name without `.sql`, e.g. `0002_task_priority`.
    pub name: String,
    pub path: PathBuf,
    pub sql: String,
    /// Hex SHA-256 of the file.
    pub sha256: String,
}

/// A migration as the database recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recorded {
    pub version: i64,
    pub name: String,
    #[serde(skip)]
    pub sha256: String,
    pub schema_hash: String,
}

/// What a migration run did: the migrations applied, in order, and the
/// error that stopped it, if one did (later migrations were not tried).
#[derive(Debug, Default)]
pub struct MigrateRun {
    pub applied: Vec<Recorded>,
    pub error: Option<MigrateError>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot read the migrations directory {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read migration {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "migration file {0}: expected NNNN_name.sql (a version number, an underscore, a name)"
    )]
    BadName(PathBuf),
    #[error("migration {path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("migration {0} is not UTF-8")]
    NotUtf8(PathBuf),
    #[error("the migrations directory {dir} holds more than {MAX_MIGRATIONS} files")]
    TooMany { dir: PathBuf },
    #[error("migrations must be numbered 1, 2, 3, ... without gaps or repeats: expected version {expected}, found {found}")]
    Numbering { expected: i64, found: PathBuf },
    #[error("migration {path} changed after it was applied (applied sha256 {applied}, the file is now {now}); applied migrations must not change: restore the file and put the change in a new migration")]
    Changed {
        path: PathBuf,
        applied: String,
        now: String,
    },
    #[error("the database applied migration {version} ({name}), which is missing from {dir}: this directory is not the database's history")]
    Missing {
        version: i64,
        name: String,
        dir: PathBuf,
    },
    #[error("migration {path} failed, nothing of it was applied: {error}")]
    Failed { path: PathBuf, error: String },
    #[error("the database cannot take the migration now: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// Creates the bookkeeping table (idempotent). Runs on the writer.
pub fn create_tables(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _outpost_migrations (
             version INTEGER PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT NOT NULL,
             schema_hash TEXT NOT NULL, applied_at_ms INTEGER NOT NULL);
         INSERT OR IGNORE INTO _outpost_meta VALUES ('schema_version', 0);",
    )
}

/// Reads and checks the migration files of `dir`, in version order.
pub fn load_dir(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let read_dir = |source| MigrateError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        if path.extension().is_some_and(|e| e == "sql") {
            files.push((version_of(&path)?, path));
        }
        if files.len() > MAX_MIGRATIONS {
            return Err(MigrateError::TooMany {
                dir: dir.to_owned(),
            });
        }
    }
    files.sort();
    files
        .into_iter()
        .enumerate()
        .map(|(i, (version, path))| {
            let expected = i as i64 + 1;
            if version != expected {
                return Err(MigrateError::Numbering {
                    expected,
                    found: path,
                });
            }
            read_migration(version, path)
        })
        .collect()
}

fn version_of(path: &Path) -> Result<i64, MigrateError> {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let (digits, name) = stem.split_once('_').unwrap_or((stem, ""));
    match digits.parse::<i64>() {
        Ok(v) if v > 0 && !name.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(v),
        _ => Err(MigrateError::BadName(path.to_owned())),
    }
}

fn read_migration(version: i64, path: PathBuf) -> Result<Migration, MigrateError> {
    use sha2::Digest;
    let read_file = |source| MigrateError::ReadFile {
        path: path.clone(),
        source,
    };
    let len = std::fs::metadata(&path).map_err(read_file)?.len();
    if len > MAX_FILE_BYTES {
        return Err(MigrateError::TooLarge { path });
    }
    let bytes = std::fs::read(&path).map_err(read_file)?;
    let sha256 = hex(&sha2::Sha256::digest(&bytes));
    let sql = String::from_utf8(bytes).map_err(|_| MigrateError::NotUtf8(path.clone()))?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    Ok(Migration {
        version,
        name,
        path,
        sql,
        sha256,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The migrations the database recorded, in version order.
pub fn recorded(conn: &Connection) -> rusqlite::Result<Vec<Recorded>> {
    conn.prepare(
        "SELECT version, name, sha256, schema_hash FROM _outpost_migrations ORDER BY version",
    )?
    .query_map([], |r| {
        Ok(Recorded {
            version: r.get(0)?,
            name: r.get(1)?,
            sha256: r.get(2)?,
            schema_hash: r.get(3)?,
        })
    })?
    .collect()
}

/// The files not applied yet, after checking that the applied ones are
/// still there, unchanged.
pub fn pending(
    dir: &Path,
    files: Vec<Migration>,
    applied: &[Recorded],
) -> Result<Vec<Migration>, MigrateError> {
    for done in applied {
        let Some(file) = files.iter().find(|f| f.version == done.version) else {
            return Err(MigrateError::Missing {
                version: done.version,
                name: done.name.clone(),
                dir: dir.to_owned(),
            });
        };
        if file.sha256 != done.sha256 {
            return Err(MigrateError::Changed {
                path: file.path.clone(),
                applied: done.sha256.clone(),
                now: file.sha256.clone(),
            });
        }
    }
    let applied_up_to = applied.last().map_or(0, |r| r.version);
    Ok(files
        .into_iter()
        .filter(|f| f.version > applied_up_to)
        .collect())
}

/// The version the database is at (0: no migration applied).
pub fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce((SELECT CAST(value AS INTEGER) FROM _outpost_meta WHERE key = 'schema_version'), 0)",
        [],
        |r| r.get(0),
    )
}

/// A short hash of the user tables' definitions (what peers compare at
/// equal versions): the same migrations give the same hash everywhere.
pub fn schema_hash(conn: &Connection) -> rusqlite::Result<String> {
    use sha2::Digest;
    let schema: Vec<String> = conn
        .prepare_cached(
            "SELECT name || ':' || coalesce(sql, '') FROM sqlite_master
             WHERE type = 'table' AND name NOT LIKE '\\_outpost\\_%' ESCAPE '\\'
               AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let hash = sha2::Sha256::digest(schema.join("\n").as_bytes());
    Ok(hex(&hash[..8]))
}

/// Records `migration` as applied, with the schema hash it produced,
/// inside the migration's transaction.
pub fn record(conn: &Connection, migration: &Migration, now_ms: u64) -> rusqlite::Result<String> {
    let hash = schema_hash(conn)?;
    conn.execute(
        "INSERT INTO _outpost_migrations (version, name, sha256, schema_hash, applied_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            migration.version,
            migration.name,
            migration.sha256,
            hash,
            now_ms as i64
        ],
    )?;
    conn.execute(
        "INSERT INTO _outpost_meta (key, value) VALUES ('schema_version', ?1), ('schema_hash', ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![migration.version, hash],
    )?;
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, sql) in files {
            std::fs::write(dir.path().join(name), sql).unwrap();
        }
        dir
    }

    #[test]
    fn loads_in_version_order() {
        let dir = dir_with(&[
            ("0002_b.sql", "B"),
            ("0001_a.sql", "A"),
            ("README.md", "not a migration"),
        ]);
        let files = load_dir(dir.path()).unwrap();
        let names: Vec<_> = files.iter().map(|f| (f.version, f.name.as_str())).collect();
        assert_eq!(names, [(1, "0001_a"), (2, "0002_b")]);
    }

    #[test]
    fn refuses_gaps_repeats_and_bad_names() {
        let gap = dir_with(&[("0001_a.sql", ""), ("0003_c.sql", "")]);
        assert!(matches!(
            load_dir(gap.path()),
            Err(MigrateError::Numbering { expected: 2, .. })
        ));
        let repeat = dir_with(&[("0001_a.sql", ""), ("1_b.sql", "")]);
        assert!(matches!(
            load_dir(repeat.path()),
            Err(MigrateError::Numbering { expected: 2, .. })
        ));
        for bad in [
            "init.sql",
            "0001.sql",
            "x1_a.sql",
            "0000_zero.sql",
            "-1_a.sql",
        ] {
            let dir = dir_with(&[(bad, "")]);
            assert!(
                matches!(load_dir(dir.path()), Err(MigrateError::BadName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_a_file_larger_than_the_bound() {
        let at_bound = "-".repeat(MAX_FILE_BYTES as usize);
        let dir = dir_with(&[("0001_a.sql", &at_bound)]);
        assert!(load_dir(dir.path()).is_ok());
        let over = dir_with(&[("0001_a.sql", &format!("{at_bound}-"))]);
        assert!(matches!(
            load_dir(over.path()),
            Err(MigrateError::TooLarge { .. })
        ));
    }

    #[test]
    fn pending_checks_what_was_applied() {
        let dir = dir_with(&[("0001_a.sql", "A"), ("0002_b.sql", "B")]);
        let files = load_dir(dir.path()).unwrap();
        let applied = |sha: &str| Recorded {
            version: 1,
            name: "0001_a".into(),
            sha256: sha.into(),
            schema_hash: String::new(),
        };
        let ok = applied(&files[0].sha256);
        let left = pending(dir.path(), files.clone(), &[ok]).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].version, 2);
        assert!(matches!(
            pending(dir.path(), files.clone(), &[applied("0000")]),
            Err(MigrateError::Changed { .. })
        ));
        let gone = Recorded {
            version: 3,
            ..applied("x")
        };
        assert!(matches!(
            pending(dir.path(), files, &[gone]),
            Err(MigrateError::Missing { version: 3, .. })
        ));
    }
}
