//! The CRDT-capture benchmarks (issue 4): the wide table of `wide-update`, the `hot-row` run,
//! and what capture stored, read straight from an instance's database file.
//!
//! Capture writes, for every committed write to a replicated table, the row's yrs document into
//! `_outpost_rows(tbl, pk, doc)` and the update into `_outpost_log(origin, seq, hlc, tbl, pk,
//! schema_version, update)`. Those tables are refused over the API, so the harness opens
//! `<data_dir>/outpost.db` read-only (after the instance stopped) to look at them. An instance
//! without them, or with both empty, is reported as "capture off".

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::Method;
use libsql_sys::rusqlite::{Connection, OpenFlags, OptionalExtension};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::client::{self, execute_body, Arg, Conn};
use crate::stats::fmt_us;
use crate::workload::{
    random_value, wide_col_is_text, wide_create_sql, wide_insert_sql, HOT_CREATE_SQL,
    HOT_INSERT_SQL, HOT_READ_SQL, HOT_UPDATE_SQL, WIDE_COLS,
};

/// Rows per multi-row insert when loading `w` (20 arguments each).
const WIDE_LOAD_CHUNK: usize = 50;

/// Create the wide table `w` and load `rows` rows of random values over Hrana.
pub async fn load_wide_http(conn: &mut Conn, rows: u64) -> Result<()> {
    conn.pipeline(execute_body(&wide_create_sql(), &[]))
        .await
        .context("create the wide table")?;
    let mut rng = StdRng::from_entropy();
    let mut left = rows;
    while left > 0 {
        let chunk = left.min(WIDE_LOAD_CHUNK as u64) as usize;
        let mut texts = Vec::with_capacity(chunk * WIDE_COLS / 2);
        let mut ints = Vec::with_capacity(chunk * WIDE_COLS / 2);
        for _ in 0..chunk {
            for col in 1..=WIDE_COLS {
                if wide_col_is_text(col) {
                    texts.push(random_value(&mut rng));
                } else {
                    ints.push(rng.gen_range(0..1_000_000_000i64));
                }
            }
        }
        let (mut ti, mut ii) = (texts.iter(), ints.iter());
        let args: Vec<Arg<'_>> = (0..chunk * WIDE_COLS)
            .map(|i| {
                if wide_col_is_text(i % WIDE_COLS + 1) {
                    Arg::Text(ti.next().expect("one text per text column"))
                } else {
                    Arg::Int(*ii.next().expect("one int per int column"))
                }
            })
            .collect();
        let r = conn
            .pipeline(execute_body(&wide_insert_sql(chunk), &args))
            .await?;
        anyhow::ensure!(
            r.affected_row_count == chunk as u64,
            "wide insert affected {} of {chunk} rows",
            r.affected_row_count
        );
        left -= chunk as u64;
    }
    Ok(())
}

// --- what capture stored ------------------------------------------------------------------------

/// What capture left in one instance's database.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CaptureStats {
    /// The instance (data directory) this was read from.
    pub instance: String,
    pub rows_table: bool,
    pub log_table: bool,
    /// Rows of `_outpost_rows`, the sum and the largest of `length(doc)`.
    pub docs: u64,
    pub doc_bytes: u64,
    pub max_doc_bytes: u64,
    /// Rows of `_outpost_log` and the sum of `length(update)`.
    pub log_rows: u64,
    pub log_update_bytes: u64,
    /// Bytes of the pages of each table and its indexes (SQLite's `dbstat`).
    pub rows_table_pages_bytes: Option<u64>,
    pub log_table_pages_bytes: Option<u64>,
    /// For the hot-row instance: `length(doc)` of the hot row.
    pub hot_doc_bytes: Option<u64>,
    /// Why the database could not be read (then the other fields are empty).
    pub error: Option<String>,
}

impl CaptureStats {
    /// Capture recorded something.
    pub fn active(&self) -> bool {
        self.error.is_none() && (self.docs > 0 || self.log_rows > 0)
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        if let Some(e) = &self.error {
            return format!("unreadable ({e})");
        }
        if !self.rows_table && !self.log_table {
            return "off (no _outpost_rows / _outpost_log table)".into();
        }
        if !self.active() {
            return "off (_outpost_rows and _outpost_log are empty)".into();
        }
        let pages = |p: Option<u64>| p.map_or(String::new(), |b| format!(", {} on disk", mib(b)));
        format!(
            "on: {} docs, {} of docs (largest {} B){}; {} log entries, {} of updates{}",
            self.docs,
            mib(self.doc_bytes),
            self.max_doc_bytes,
            pages(self.rows_table_pages_bytes),
            self.log_rows,
            mib(self.log_update_bytes),
            pages(self.log_table_pages_bytes),
        )
    }
}

fn mib(b: u64) -> String {
    if b < 1024 * 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", b as f64 / 1024.0 / 1024.0)
    }
}

/// Read what capture stored from `db` (opened read-only; best after the instance stopped).
/// `hot_table`: also the doc size of that table's rows.
pub fn inspect(db: &Path, instance: &str, hot_table: Option<&str>) -> CaptureStats {
    let mut s = CaptureStats {
        instance: instance.to_string(),
        ..Default::default()
    };
    if let Err(e) = inspect_into(db, hot_table, &mut s) {
        s.error = Some(format!("{e:#}"));
    }
    s
}

fn inspect_into(db: &Path, hot_table: Option<&str>, s: &mut CaptureStats) -> Result<()> {
    anyhow::ensure!(db.exists(), "{} does not exist", db.display());
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open {} read-only", db.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let has = |name: &str| -> Result<bool> {
        Ok(conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    };
    // Pages of a table and its indexes; None if dbstat is not compiled in.
    let pages = |name: &str| -> Option<u64> {
        conn.query_row(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ?1 OR name IN \
             (SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1)",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .map(|b| b.max(0) as u64)
    };
    s.rows_table = has("_outpost_rows")?;
    s.log_table = has("_outpost_log")?;
    if s.rows_table {
        let (n, sum, max): (i64, i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(length(doc)), 0), coalesce(max(length(doc)), 0) \
             FROM _outpost_rows",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        (s.docs, s.doc_bytes, s.max_doc_bytes) = (n as u64, sum as u64, max as u64);
        s.rows_table_pages_bytes = pages("_outpost_rows");
        if let Some(t) = hot_table {
            s.hot_doc_bytes = conn
                .query_row(
                    "SELECT max(length(doc)) FROM _outpost_rows WHERE tbl = ?1",
                    [t],
                    |r| r.get::<_, Option<i64>>(0),
                )?
                .map(|b| b as u64);
        }
    }
    if s.log_table {
        let (n, sum): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(length(\"update\")), 0) FROM _outpost_log",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        (s.log_rows, s.log_update_bytes) = (n as u64, sum as u64);
        s.log_table_pages_bytes = pages("_outpost_log");
    }
    Ok(())
}

// --- hot row ------------------------------------------------------------------------------------

/// Latency of a window of consecutive updates.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub updates: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

impl Window {
    fn of(lat_ns: &[u64]) -> Option<Window> {
        if lat_ns.is_empty() {
            return None;
        }
        let mut v = lat_ns.to_vec();
        v.sort_unstable();
        let q = |p: f64| {
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i] as f64 / 1000.0
        };
        Some(Window {
            updates: v.len(),
            p50_us: q(0.50),
            p99_us: q(0.99),
            mean_us: v.iter().sum::<u64>() as f64 / v.len() as f64 / 1000.0,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "p50 {} p99 {} mean {}",
            fmt_us(self.p50_us),
            fmt_us(self.p99_us),
            fmt_us(self.mean_us)
        )
    }
}

/// One instance's hot-row run.
#[derive(Clone, Debug, Serialize)]
pub struct HotRow {
    pub instance: String,
    /// Updates attempted, succeeded, failed.
    pub attempted: u64,
    pub updates: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub ops_per_sec: f64,
    /// The first and the last `window` successful updates.
    pub first: Option<Window>,
    pub last: Option<Window>,
    /// last p50 ÷ first p50.
    pub last_vs_first_p50: Option<f64>,
    /// `n` of the row at the end, read over the API (must equal `updates`).
    pub final_n: Option<i64>,
    /// What capture stored, read from the db file after the instance stopped.
    pub capture: Option<CaptureStats>,
}

impl HotRow {
    /// The run shows the harness is broken: nothing succeeded, or more than 1 % failed.
    pub fn failed(&self) -> bool {
        self.updates == 0 || self.errors * 100 > self.attempted
    }

    /// The hot row's doc size as the report shows it.
    pub fn doc_size(&self) -> String {
        match &self.capture {
            None => "not read".into(),
            Some(c) if c.error.is_some() => c.describe(),
            Some(c) if !c.rows_table => "n/a (capture off)".into(),
            Some(c) => match c.hot_doc_bytes {
                Some(b) => format!("{b} B"),
                None => "n/a (capture off: no doc for the row)".into(),
            },
        }
    }

    /// Total of `_outpost_log` as the report shows it.
    pub fn log_size(&self) -> String {
        match &self.capture {
            Some(c) if c.error.is_none() && c.log_table => format!(
                "{} entries, {} of updates{}",
                c.log_rows,
                mib(c.log_update_bytes),
                c.log_table_pages_bytes
                    .map_or(String::new(), |b| format!(", {} on disk", mib(b)))
            ),
            Some(c) if c.error.is_none() => "n/a (capture off)".into(),
            _ => "not read".into(),
        }
    }
}

/// Create `hot` with its one row on each instance.
pub async fn setup_hot(api: SocketAddr) -> Result<()> {
    let mut conn = Conn::new(api);
    conn.pipeline(execute_body(HOT_CREATE_SQL, &[]))
        .await
        .context("create table hot")?;
    conn.pipeline(execute_body(HOT_INSERT_SQL, &[]))
        .await
        .context("insert the hot row")?;
    Ok(())
}

/// Per-instance state of a hot-row run.
struct HotState {
    conn: Conn,
    lat_ns: Vec<u64>,
    attempted: u64,
    errors: u64,
    first_error: Option<String>,
    busy: Duration,
}

/// Update the one row of `hot` `updates` times on each instance, one client, interleaving the
/// instances in chunks of 1,000 updates so that they share the machine's noise alike.
/// `window` is how many updates the first/last comparison takes (at most half the run).
pub async fn run_hot_row(
    instances: &[(String, SocketAddr)],
    updates: u64,
    window: usize,
) -> Result<Vec<HotRow>> {
    const CHUNK: u64 = 1000;
    let mut states: Vec<HotState> = Vec::new();
    for (_, api) in instances {
        let mut conn = Conn::new(*api);
        conn.connect().await?;
        states.push(HotState {
            conn,
            lat_ns: Vec::with_capacity(updates as usize),
            attempted: 0,
            errors: 0,
            first_error: None,
            busy: Duration::ZERO,
        });
    }
    let mut rng = StdRng::from_entropy();
    let mut done = 0;
    while done < updates {
        let n = CHUNK.min(updates - done);
        for st in &mut states {
            let t = Instant::now();
            for _ in 0..n {
                let body = execute_body(HOT_UPDATE_SQL, &[Arg::Text(&random_value(&mut rng))]);
                let t0 = Instant::now();
                let res = st
                    .conn
                    .request(Method::POST, client::PIPELINE_PATH, Bytes::from(body))
                    .await;
                let lat = t0.elapsed();
                st.attempted += 1;
                match res.and_then(|(status, body)| {
                    client::check_op(client::Check::OneAffected, status, &body)
                }) {
                    Ok(()) => st
                        .lat_ns
                        .push(u64::try_from(lat.as_nanos()).unwrap_or(u64::MAX)),
                    Err(e) => {
                        st.errors += 1;
                        st.first_error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            st.busy += t.elapsed();
        }
        done += n;
    }
    let mut out = Vec::new();
    for ((name, _), mut st) in instances.iter().zip(states) {
        let w = window.min(st.lat_ns.len() / 2).max(1);
        let first = Window::of(&st.lat_ns[..w.min(st.lat_ns.len())]);
        let last = Window::of(&st.lat_ns[st.lat_ns.len().saturating_sub(w)..]);
        let final_n = read_hot_n(&mut st.conn).await.ok();
        let secs = st.busy.as_secs_f64();
        out.push(HotRow {
            instance: name.clone(),
            attempted: st.attempted,
            updates: st.lat_ns.len() as u64,
            errors: st.errors,
            first_error: st.first_error,
            seconds: secs,
            ops_per_sec: if secs > 0.0 {
                st.lat_ns.len() as f64 / secs
            } else {
                0.0
            },
            last_vs_first_p50: first
                .as_ref()
                .zip(last.as_ref())
                .and_then(|(f, l)| (f.p50_us > 0.0).then(|| l.p50_us / f.p50_us)),
            first,
            last,
            final_n,
            capture: None,
        });
    }
    Ok(out)
}

async fn read_hot_n(conn: &mut Conn) -> Result<i64> {
    let (status, body) = conn
        .request(
            Method::POST,
            client::PIPELINE_PATH,
            execute_body(HOT_READ_SQL, &[]).into(),
        )
        .await?;
    anyhow::ensure!(status.is_success(), "HTTP {status}");
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let cell = &v["results"][0]["response"]["result"]["rows"][0][0]["value"];
    cell.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| cell.as_i64())
        .with_context(|| format!("unexpected answer to {HOT_READ_SQL}: {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        let w = Window::of(&[1000, 2000, 3000, 4000]).unwrap();
        assert_eq!(w.updates, 4);
        assert_eq!(w.p50_us, 2.0);
        assert_eq!(w.p99_us, 4.0);
        assert_eq!(w.mean_us, 2.5);
        assert!(Window::of(&[]).is_none());
    }

    #[test]
    fn inspect_reads_capture_tables() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("outpost.db");
        let missing = inspect(&db, "x", Some("hot"));
        assert!(missing.error.is_some() && !missing.active());

        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY)")
            .unwrap();
        let off = inspect(&db, "x", Some("hot"));
        assert!(
            off.error.is_none() && !off.rows_table && !off.active(),
            "{off:?}"
        );
        assert!(off.describe().starts_with("off"));

        conn.execute_batch(
            "CREATE TABLE _outpost_rows(tbl TEXT, pk BLOB, doc BLOB, PRIMARY KEY(tbl, pk));
             CREATE TABLE _outpost_log(origin BLOB, seq INTEGER, hlc INTEGER, tbl TEXT, pk BLOB,
                 schema_version INTEGER, \"update\" BLOB, PRIMARY KEY(origin, seq));",
        )
        .unwrap();
        let empty = inspect(&db, "x", Some("hot"));
        assert!(empty.rows_table && !empty.active());
        assert_eq!(empty.hot_doc_bytes, None);

        conn.execute_batch(
            "INSERT INTO _outpost_rows VALUES ('hot', x'01', zeroblob(300)), ('t', x'01', zeroblob(10));
             INSERT INTO _outpost_log VALUES (x'aa', 1, 1, 'hot', x'01', 1, zeroblob(40)),
                                             (x'aa', 2, 2, 'hot', x'01', 1, zeroblob(60));",
        )
        .unwrap();
        drop(conn);
        let on = inspect(&db, "x", Some("hot"));
        assert!(on.active(), "{on:?}");
        assert_eq!((on.docs, on.doc_bytes, on.max_doc_bytes), (2, 310, 300));
        assert_eq!((on.log_rows, on.log_update_bytes), (2, 100));
        assert_eq!(on.hot_doc_bytes, Some(300));
        assert!(on.log_table_pages_bytes.unwrap_or(0) > 0, "{on:?}");
    }
}
