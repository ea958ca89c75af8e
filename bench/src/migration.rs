//! The schema-migration workload (issue 10): `outpost migrate` (offline) on a data directory
//! whose `tasks` table holds many captured rows, against the same statements on a plain SQLite
//! file with no capture.
//!
//! 1. A data directory at schema version 1 (`migrations/0001_init.sql` of the repository: projects,
//!    tasks, comments), then [`PROJECTS`] projects and `rows` tasks inserted straight into its
//!    `outpost.db` while no outpost runs (capture's triggers queue them), then `outpost migrate`
//!    with nothing pending: opening the database sweeps the rows into the change log ("initial
//!    capture"), then `outpost check`.
//! 2. `0002_priority.sql`, `ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0`:
//!    wall time of `outpost migrate`, then `outpost check` (must pass) and the log entries it
//!    added, which must be 0 (a new column's default is not recorded per row).
//! 3. `0003_backfill.sql`, `UPDATE tasks SET priority = length(title)`: likewise; it must add
//!    one entry per task.
//!
//! The reference ("plain") is a separate SQLite file created from the same `0001_init.sql` with
//! the same rows and no outpost tables or triggers; each statement runs in one transaction
//! (WAL, `synchronous=FULL`) on a connection opened for it, timed from the open to the close
//! (which checkpoints the WAL, as outpost's process does when it exits). The two run
//! alternately (outpost 0002, plain 0002, outpost 0003, plain 0003).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use libsql_sys::rusqlite::{params, Connection};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::report::Report;
use crate::Plan;

/// Tasks loaded in a full run.
pub const ROWS_FULL: u64 = 100_000;
/// Tasks loaded with `--quick`.
pub const ROWS_QUICK: u64 = 10_000;
/// Projects the tasks belong to (also captured, in the initial sweep).
pub const PROJECTS: u64 = 100;

/// The repository's first migration (the example app).
const INIT_SQL: &str = include_str!("../../migrations/0001_init.sql");
const INIT_NAME: &str = "0001_init";
const ADD_COLUMN: (&str, &str) = (
    "0002_priority",
    "ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;\n",
);
const BACKFILL: (&str, &str) = (
    "0003_backfill",
    "UPDATE tasks SET priority = length(title);\n",
);

/// One `outpost check`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckRun {
    /// Exit status 0 and "ok".
    pub ok: bool,
    pub seconds: f64,
    pub rows: Option<u64>,
    pub documents: Option<u64>,
    pub log_entries: Option<u64>,
    /// Its first line (`checked N replicated tables ...`), or what went wrong.
    pub summary: String,
}

/// One timed `outpost migrate` (and the same statement on the plain file).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stage {
    /// "initial capture" or the migration's name.
    pub name: String,
    /// The migration's SQL (empty for the initial capture).
    pub sql: String,
    /// Wall time of the `outpost migrate` process.
    pub outpost_seconds: f64,
    /// The same statement on the plain SQLite file: open, one transaction, close.
    pub plain_seconds: Option<f64>,
    /// outpost ÷ plain.
    pub ratio: Option<f64>,
    /// Change-log entries the stage added, from `outpost check` before and after.
    pub entries_added: Option<u64>,
    pub entries_expected: u64,
    /// `outpost check` after the stage.
    pub check: CheckRun,
    /// Size of the data directory after the stage.
    pub data_dir_bytes: u64,
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MigrationReport {
    /// Tasks in the table (plus [`PROJECTS`] projects).
    pub rows: u64,
    pub projects: u64,
    /// Inserting the rows straight into the stopped node's `outpost.db` (triggers queue them).
    pub insert_seconds: f64,
    /// `outpost migrate` with nothing pending right after the initial capture: the process,
    /// opening and closing the database (the floor of every `outpost migrate` below).
    pub noop_seconds: Option<f64>,
    /// Initial capture, add column, backfill.
    pub stages: Vec<Stage>,
}

impl MigrationReport {
    pub fn passed(&self) -> usize {
        self.stages.iter().filter(|s| s.problem.is_none()).count()
    }

    pub fn problems(&self) -> Vec<String> {
        self.stages
            .iter()
            .filter_map(|s| {
                s.problem
                    .as_ref()
                    .map(|p| format!("migration {}: {p}", s.name))
            })
            .collect()
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let secs = |x: Option<f64>| x.map_or("-".to_string(), |s| format!("{s:.3} s"));
        let _ = writeln!(
            out,
            "\nschema migrations: {} tasks + {} projects captured, `outpost migrate` offline (wall time of the process) vs plain SQLite (WAL, synchronous=FULL, open → 1 transaction → close)",
            self.rows, self.projects
        );
        let _ = writeln!(
            out,
            "  rows inserted into the stopped node's outpost.db in {:.2} s; `outpost migrate` with nothing pending: {}",
            self.insert_seconds,
            secs(self.noop_seconds)
        );
        for s in &self.stages {
            let vs = match (s.plain_seconds, s.ratio) {
                (Some(p), Some(r)) => format!(" / plain {p:.3} s / ratio {r:.1}x"),
                (Some(p), None) => format!(" / plain {p:.3} s"),
                _ => String::new(),
            };
            let check = if s.check.ok {
                format!("check ok in {:.2} s", s.check.seconds)
            } else {
                format!("check FAILED: {}", s.check.summary)
            };
            let _ = writeln!(
                out,
                "  {:<16} outpost {:.3} s{vs}; log entries added {} (expected {}); {check}; data dir {:.1} MiB",
                s.name,
                s.outpost_seconds,
                s.entries_added
                    .map_or("?".to_string(), |n| n.to_string()),
                s.entries_expected,
                s.data_dir_bytes as f64 / 1024.0 / 1024.0
            );
            if let Some(p) = &s.problem {
                let _ = writeln!(out, "    FAILED: {p}");
            }
        }
    }
}

/// Run the workload; what it measured goes into `report.migration` even when a step fails.
pub fn run(
    plan: &Plan,
    bin: &Path,
    env: &[(String, String)],
    tmp: &Path,
    report: &mut Report,
) -> Result<()> {
    let rows = if plan.mode == "quick" {
        ROWS_QUICK
    } else {
        ROWS_FULL
    };
    let mut m = MigrationReport {
        rows,
        projects: PROJECTS,
        ..Default::default()
    };
    let result = run_stages(bin, env, &tmp.join("migration"), &mut m);
    report.migration = Some(m);
    result
}

fn run_stages(
    bin: &Path,
    env: &[(String, String)],
    dir: &Path,
    m: &mut MigrationReport,
) -> Result<()> {
    eprintln!(
        "== schema migrations: {} tasks, outpost migrate vs plain SQLite",
        m.rows
    );
    let node = Node {
        bin,
        env,
        data_dir: dir.join("outpost-data"),
        migrations: dir.join("migrations"),
    };
    std::fs::create_dir_all(&node.migrations)?;
    std::fs::write(node.migrations.join(format!("{INIT_NAME}.sql")), INIT_SQL)?;
    let (_, out) = node.migrate()?;
    anyhow::ensure!(
        out.contains(&format!("applied {INIT_NAME} (schema version 1)")),
        "outpost migrate of {INIT_NAME} printed {out:?}"
    );

    // The same rows into the stopped node's database and into the plain file.
    let plain = dir.join("plain.db");
    let t = Instant::now();
    insert_rows(&crate::server::db_path(&node.data_dir), m.rows)
        .context("insert the rows into outpost.db")?;
    m.insert_seconds = t.elapsed().as_secs_f64();
    eprintln!(
        "  inserted {} tasks + {PROJECTS} projects into outpost.db in {:.2}s",
        m.rows, m.insert_seconds
    );
    create_plain(&plain, m.rows).context("create the plain SQLite file")?;

    // Initial capture: nothing pending, but opening the database sweeps the new rows.
    let (secs, out) = node.migrate()?;
    let mut stage = Stage {
        name: "initial capture".into(),
        outpost_seconds: secs,
        entries_expected: m.rows + PROJECTS,
        ..Default::default()
    };
    if !out.contains("schema version 1 is up to date") {
        stage.problem = Some(format!("outpost migrate printed {out:?}"));
    }
    stage.check = node.check();
    stage.entries_added = stage.check.log_entries;
    finish_stage(&mut stage, &node);
    let mut log = stage.check.log_entries;
    m.stages.push(stage);

    let (secs, out) = node.migrate()?;
    m.noop_seconds = Some(secs);
    eprintln!("  outpost migrate with nothing pending: {secs:.3}s ({out})");

    for (i, (name, sql)) in [ADD_COLUMN, BACKFILL].into_iter().enumerate() {
        let version = i + 2;
        std::fs::write(node.migrations.join(format!("{name}.sql")), sql)?;
        let mut stage = Stage {
            name: name.into(),
            sql: sql.trim().into(),
            entries_expected: if name == BACKFILL.0 { m.rows } else { 0 },
            ..Default::default()
        };
        let (secs, out) = node.migrate()?;
        stage.outpost_seconds = secs;
        let applied = format!("applied {name} (schema version {version})");
        if !out.contains(&applied) {
            stage.problem = Some(format!("outpost migrate printed {out:?}, not {applied:?}"));
        }
        stage.check = node.check();
        stage.entries_added = stage
            .check
            .log_entries
            .zip(log)
            .map(|(after, before)| after.saturating_sub(before));
        log = stage.check.log_entries;
        match plain_statement(&plain, sql) {
            Ok((p, changed)) => {
                stage.plain_seconds = Some(p);
                stage.ratio = (p > 0.0).then(|| secs / p);
                if changed != stage.entries_expected {
                    stage.problem.get_or_insert(format!(
                        "on the plain file the statement changed {changed} rows, not {}",
                        stage.entries_expected
                    ));
                }
            }
            Err(e) => {
                stage
                    .problem
                    .get_or_insert(format!("on the plain file: {e:#}"));
            }
        }
        finish_stage(&mut stage, &node);
        m.stages.push(stage);
    }
    Ok(())
}

/// Check the stage's entries and `outpost check`, record the data dir's size, log a line.
fn finish_stage(stage: &mut Stage, node: &Node<'_>) {
    stage.data_dir_bytes = crate::server::dir_size(&node.data_dir);
    if !stage.check.ok {
        stage
            .problem
            .get_or_insert(format!("outpost check failed: {}", stage.check.summary));
    }
    match stage.entries_added {
        Some(n) if n == stage.entries_expected => {}
        Some(n) => {
            stage.problem.get_or_insert(format!(
                "{n} log entries added, expected {}",
                stage.entries_expected
            ));
        }
        None => {
            stage
                .problem
                .get_or_insert("could not read the log entries from outpost check".into());
        }
    }
    eprintln!(
        "  {:<16} outpost {:.3}s{}; log entries added {}; check {} in {:.2}s{}",
        stage.name,
        stage.outpost_seconds,
        stage
            .plain_seconds
            .map_or(String::new(), |p| format!(", plain {p:.3}s")),
        stage
            .entries_added
            .map_or("?".to_string(), |n| n.to_string()),
        if stage.check.ok { "ok" } else { "FAILED" },
        stage.check.seconds,
        stage
            .problem
            .as_ref()
            .map_or(String::new(), |p| format!("; FAILED: {p}"))
    );
}

/// The offline node: its binary, environment, data and migrations directories.
struct Node<'a> {
    bin: &'a Path,
    env: &'a [(String, String)],
    data_dir: PathBuf,
    migrations: PathBuf,
}

impl Node<'_> {
    fn command(&self, sub: &str) -> Command {
        let mut c = Command::new(self.bin);
        c.arg(sub)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    /// `outpost migrate`: its wall time and stdout; an error unless it exits 0.
    fn migrate(&self) -> Result<(f64, String)> {
        let mut c = self.command("migrate");
        c.arg("--migrations").arg(&self.migrations);
        let t = Instant::now();
        let out = c
            .output()
            .with_context(|| format!("run {} migrate", self.bin.display()))?;
        let secs = t.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        anyhow::ensure!(
            out.status.success(),
            "outpost migrate exited with {}: {stdout}\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 1500)
        );
        Ok((secs, stdout))
    }

    /// `outpost check`: passed when it exits 0 and prints "ok".
    fn check(&self) -> CheckRun {
        let t = Instant::now();
        let out = match self.command("check").output() {
            Ok(out) => out,
            Err(e) => {
                return CheckRun {
                    summary: format!("run {} check: {e}", self.bin.display()),
                    ..Default::default()
                }
            }
        };
        let seconds = t.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut run = parse_check(&stdout);
        run.seconds = seconds;
        run.ok = out.status.success() && stdout.lines().any(|l| l.trim() == "ok");
        if !run.ok {
            run.summary = format!(
                "exit {}: {}{}",
                out.status,
                tail(&stdout, 1500),
                tail(&String::from_utf8_lossy(&out.stderr), 500)
            );
        }
        run
    }
}

/// Reads `checked N replicated tables (...): R rows, D documents, L log entries`.
fn parse_check(stdout: &str) -> CheckRun {
    let mut run = CheckRun::default();
    let Some(line) = stdout.lines().find(|l| l.starts_with("checked ")) else {
        run.summary = "no `checked ...` line".into();
        return run;
    };
    run.summary = line.to_string();
    let counts = line.rsplit_once("): ").map_or(line, |(_, c)| c);
    for part in counts.split(", ") {
        let Some((n, what)) = part.trim().split_once(' ') else {
            continue;
        };
        let n = n.parse().ok();
        match what {
            "rows" => run.rows = n,
            "documents" => run.documents = n,
            "log entries" => run.log_entries = n,
            _ => {}
        }
    }
    run
}

fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

/// The rows of both files: [`PROJECTS`] projects and `rows` tasks, titles of 8–64 characters
/// (the backfill's `length(title)` is never the default 0), from a fixed seed.
fn insert_into(conn: &Connection, rows: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(10);
    conn.execute_batch("BEGIN IMMEDIATE")?;
    {
        let mut project = conn.prepare("INSERT INTO projects (id, name) VALUES (?1, ?2)")?;
        for p in 0..PROJECTS {
            project.execute(params![format!("project-{p:03}"), format!("Project {p}")])?;
        }
        let mut task = conn
            .prepare("INSERT INTO tasks (id, project_id, title, done) VALUES (?1, ?2, ?3, ?4)")?;
        for i in 0..rows {
            let len = rng.gen_range(8..=64);
            let title: String = (0..len)
                .map(|_| {
                    if rng.gen_ratio(1, 6) {
                        ' '
                    } else {
                        rng.gen_range(b'a'..=b'z') as char
                    }
                })
                .collect();
            task.execute(params![
                format!("task-{i:07}"),
                format!("project-{:03}", i % PROJECTS),
                title,
                rng.gen_range(0..2i64)
            ])?;
        }
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// Insert the rows into a stopped node's database file (outpost's triggers queue them).
fn insert_rows(db: &Path, rows: u64) -> Result<()> {
    let conn = Connection::open(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    insert_into(&conn, rows)?;
    conn.close().map_err(|(_, e)| e)?;
    Ok(())
}

fn plain_pragmas(conn: &Connection) -> Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode}");
    conn.execute_batch("PRAGMA synchronous = FULL")?;
    Ok(())
}

/// The reference file: `0001_init.sql` and the same rows, no outpost tables or triggers.
fn create_plain(path: &Path, rows: u64) -> Result<()> {
    let conn = Connection::open(path)?;
    plain_pragmas(&conn)?;
    conn.execute_batch(INIT_SQL)?;
    insert_into(&conn, rows)?;
    conn.close().map_err(|(_, e)| e)?;
    Ok(())
}

/// `sql` in one transaction on the plain file: seconds from the open to the close, and the
/// rows it changed.
fn plain_statement(path: &Path, sql: &str) -> Result<(f64, u64)> {
    let t = Instant::now();
    let conn = Connection::open(path)?;
    plain_pragmas(&conn)?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let changed = conn.execute(sql.trim().trim_end_matches(';'), [])?;
    conn.execute_batch("COMMIT")?;
    conn.close().map_err(|(_, e)| e)?;
    Ok((t.elapsed().as_secs_f64(), changed as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_check_output() {
        let r = parse_check(
            "checked 3 replicated tables (comments, projects, tasks): 10100 rows, 10100 documents, 10100 log entries\nok\n",
        );
        assert_eq!(r.rows, Some(10_100));
        assert_eq!(r.documents, Some(10_100));
        assert_eq!(r.log_entries, Some(10_100));
        assert!(r.summary.starts_with("checked 3"));
        assert_eq!(parse_check("error").log_entries, None);
    }

    #[test]
    fn plain_reference_runs_the_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.db");
        create_plain(&path, 50).unwrap();
        let (_, changed) = plain_statement(&path, ADD_COLUMN.1).unwrap();
        assert_eq!(changed, 0);
        let (_, changed) = plain_statement(&path, BACKFILL.1).unwrap();
        assert_eq!(changed, 50);
        let conn = Connection::open(&path).unwrap();
        let zero: i64 = conn
            .query_row("SELECT count(*) FROM tasks WHERE priority = 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(zero, 0);
    }
}
