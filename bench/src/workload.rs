//! The workload: what each operation is, and how long / how many times a phase runs.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use rand::distributions::Alphanumeric;
use rand::Rng;

use crate::stats::OpKind;

pub const READ_SQL: &str = "SELECT v FROM t WHERE id = ?";
pub const INSERT_SQL: &str = "INSERT INTO t(v) VALUES (?)";
pub const CREATE_SQL: &str = "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)";
pub const UPDATE_SQL: &str = "UPDATE t SET v = ? WHERE id = ?";
/// Rows per op of the `batch100` workload.
pub const BATCH_SIZE: usize = 100;
/// Value columns of the wide table `w` (besides the integer primary key `id`): odd ones
/// TEXT, even ones INTEGER.
pub const WIDE_COLS: usize = 20;
/// The hot-row table: one row (`id = 1`) updated over and over.
pub const HOT_CREATE_SQL: &str =
    "CREATE TABLE IF NOT EXISTS hot(id INTEGER PRIMARY KEY, v TEXT, n INTEGER NOT NULL)";
pub const HOT_INSERT_SQL: &str = "INSERT INTO hot(id, v, n) VALUES (1, '', 0)";
pub const HOT_UPDATE_SQL: &str = "UPDATE hot SET v = ?, n = n + 1 WHERE id = 1";
pub const HOT_READ_SQL: &str = "SELECT n FROM hot WHERE id = 1";
/// Length of the text values, in bytes (ASCII).
pub const VALUE_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Point read by random primary key.
    Read,
    /// Single-row autocommit insert.
    Insert,
    /// `read_pct` % reads, the rest inserts.
    Mix { read_pct: u32 },
    /// `BATCH_SIZE` single-row inserts into `t` in one transaction: one Hrana `batch`
    /// (BEGIN IMMEDIATE, the inserts, COMMIT), as `@libsql/client`'s `batch(.., "write")`.
    Batch,
    /// Update one random column of a random row of the wide table `w` (`rows` rows).
    WideUpdate { rows: u64 },
    /// Update `v` of a random row of `t` (the memory run).
    Update,
}

impl Workload {
    pub fn name(&self) -> String {
        match self {
            Workload::Read => "read".into(),
            Workload::Insert => "insert".into(),
            Workload::Mix { read_pct } => format!("mix{}/{}", read_pct, 100 - read_pct),
            Workload::Batch => format!("batch{BATCH_SIZE}"),
            Workload::WideUpdate { .. } => "wide-update".into(),
            Workload::Update => "update".into(),
        }
    }

    /// Whether the baselines (in-process, bare HTTP) run this workload too.
    pub fn has_baselines(&self) -> bool {
        matches!(
            self,
            Workload::Read | Workload::Insert | Workload::Mix { .. }
        )
    }

    pub fn pick(&self, rng: &mut impl Rng) -> OpKind {
        match self {
            Workload::Read => OpKind::Read,
            Workload::Insert | Workload::Batch | Workload::WideUpdate { .. } | Workload::Update => {
                OpKind::Write
            }
            Workload::Mix { read_pct } => {
                if rng.gen_range(0..100) < *read_pct {
                    OpKind::Read
                } else {
                    OpKind::Write
                }
            }
        }
    }
}

pub fn random_value(rng: &mut impl Rng) -> String {
    rng.sample_iter(&Alphanumeric)
        .take(VALUE_LEN)
        .map(char::from)
        .collect()
}

/// `CREATE TABLE w(id INTEGER PRIMARY KEY, c1 TEXT, c2 INTEGER, ..., c20 INTEGER)`.
pub fn wide_create_sql() -> String {
    let cols: Vec<String> = (1..=WIDE_COLS)
        .map(|i| format!("c{i} {}", if i % 2 == 1 { "TEXT" } else { "INTEGER" }))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS w(id INTEGER PRIMARY KEY, {})",
        cols.join(", ")
    )
}

/// `INSERT INTO w(c1, ..., c20) VALUES (?, ...), ...` for `rows` rows.
pub fn wide_insert_sql(rows: usize) -> String {
    let cols: Vec<String> = (1..=WIDE_COLS).map(|i| format!("c{i}")).collect();
    let one = format!("({})", vec!["?"; WIDE_COLS].join(","));
    format!(
        "INSERT INTO w({}) VALUES {}",
        cols.join(","),
        vec![one; rows].join(",")
    )
}

/// `UPDATE w SET c{col} = ? WHERE id = ?` (`col` in 1..=WIDE_COLS).
pub fn wide_update_sql(col: usize) -> String {
    format!("UPDATE w SET c{col} = ? WHERE id = ?")
}

/// Whether column `col` of `w` holds text (else an integer).
pub fn wide_col_is_text(col: usize) -> bool {
    col % 2 == 1
}

/// A random id among the rows loaded before the phase (ids are 1..=rows).
pub fn random_id(rng: &mut impl Rng, rows: u64) -> u64 {
    rng.gen_range(1..=rows.max(1))
}

/// Timing and count bounds of one load phase, shared by all its workers.
pub struct PhaseClock {
    pub measure_start: Instant,
    pub deadline: Instant,
    remaining: AtomicI64,
}

impl PhaseClock {
    pub fn new(warmup: Duration, duration: Duration, max_ops: u64) -> Self {
        let measure_start = Instant::now() + warmup;
        PhaseClock {
            measure_start,
            deadline: measure_start + duration,
            remaining: AtomicI64::new(i64::try_from(max_ops).unwrap_or(i64::MAX)),
        }
    }

    /// May one more operation start now? Returns `Some(measured)` or `None` to stop.
    /// Operations that start during the warm-up are run but not recorded, and do not
    /// count against the op budget.
    pub fn next(&self) -> Option<bool> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        if now < self.measure_start {
            return Some(false);
        }
        if self.remaining.fetch_sub(1, Ordering::Relaxed) <= 0 {
            return None;
        }
        Some(true)
    }

    /// Length of the measured window, given when the last operation finished.
    pub fn measured_secs(&self, last_done: Option<Instant>) -> f64 {
        match last_done {
            Some(t) if t > self.measure_start => (t - self.measure_start).as_secs_f64(),
            _ => 0.0,
        }
    }
}
