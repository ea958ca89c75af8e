//! Baseline (a): the same statements on libSQL in-process (the floor). One file database in
//! WAL mode with `synchronous=FULL`, prepared statements, one connection per thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libsql_sys::rusqlite::{params, Connection};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::stats::{OpKind, WorkerStats};
use crate::workload::{
    random_id, random_value, PhaseClock, Workload, CREATE_SQL, INSERT_SQL, READ_SQL,
};

pub struct InProc {
    path: PathBuf,
    rows: u64,
}

fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode}");
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

impl InProc {
    /// Create the database in `dir` with `rows` rows of 32-byte text.
    pub fn create(dir: &Path, rows: u64) -> Result<Self> {
        let path = dir.join("inproc.db");
        let mut conn = open(&path)?;
        conn.execute_batch(CREATE_SQL)?;
        let mut rng = StdRng::from_entropy();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(INSERT_SQL)?;
            for _ in 0..rows {
                stmt.execute(params![random_value(&mut rng)])?;
            }
        }
        tx.commit()?;
        Ok(InProc { path, rows })
    }

    /// Run one closed-loop phase with `concurrency` threads, each with its own connection.
    pub fn run(
        &self,
        workload: Workload,
        concurrency: usize,
        clock: Arc<PhaseClock>,
    ) -> Result<WorkerStats> {
        let barrier = Arc::new(Barrier::new(concurrency));
        let mut handles = Vec::with_capacity(concurrency);
        for i in 0..concurrency {
            let path = self.path.clone();
            let clock = clock.clone();
            let barrier = barrier.clone();
            let rows = self.rows;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("inproc-{i}"))
                    .spawn(move || -> Result<WorkerStats> {
                        let conn = open(&path);
                        barrier.wait();
                        worker(conn?, workload, rows, &clock)
                    })?,
            );
        }
        let mut total = WorkerStats::new();
        for h in handles {
            let stats = h
                .join()
                .map_err(|_| anyhow::anyhow!("in-process worker panicked"))??;
            total.merge(stats);
        }
        Ok(total)
    }
}

fn worker(
    conn: Connection,
    workload: Workload,
    rows: u64,
    clock: &PhaseClock,
) -> Result<WorkerStats> {
    let mut read = conn.prepare(READ_SQL)?;
    let mut insert = conn.prepare(INSERT_SQL)?;
    let mut rng = StdRng::from_entropy();
    let mut stats = WorkerStats::new();
    while let Some(measured) = clock.next() {
        let kind = workload.pick(&mut rng);
        let (t0, res) = match kind {
            OpKind::Read => {
                let id = random_id(&mut rng, rows) as i64;
                let t0 = Instant::now();
                let res = read
                    .query_row(params![id], |r| r.get::<_, String>(0))
                    .map(|v| v.len() == crate::workload::VALUE_LEN);
                (t0, res)
            }
            OpKind::Write => {
                let v = random_value(&mut rng);
                let t0 = Instant::now();
                (t0, insert.execute(params![v]).map(|n| n == 1))
            }
        };
        let done = Instant::now();
        if !measured {
            continue;
        }
        match res {
            Ok(true) => stats.record_ok(kind, done - t0, done),
            Ok(false) => stats.record_err(|| "unexpected result".into(), done),
            Err(e) => stats.record_err(|| e.to_string(), done),
        }
    }
    Ok(stats)
}
