//! outpost-bench: closed-loop latency/throughput of outpost's Hrana-over-HTTP API against two
//! baselines measured in the same run: libSQL in-process (the floor) and a bare HTTP round trip
//! on the same server stack (actix-web). See BENCHMARKS.md for how to run it and the results.

mod admin;
mod backup;
mod bare;
mod client;
mod cluster;
mod crdt;
mod inproc;
mod migration;
mod proxy;
mod repl;
mod report;
mod server;
mod signing;
mod stats;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

use crate::client::{execute_body, Arg, Conn};
use crate::report::{PhaseResult, Report, RssSample, Target};
use crate::stats::{fmt_rate, Summary, WorkerStats};
use crate::workload::{PhaseClock, Workload, CREATE_SQL};

/// The workloads `--workloads` knows ("none" selects none: memory or soak only).
const WORKLOADS: &[&str] = &[
    "read",
    "insert",
    "mix",
    "batch100",
    "wide-update",
    "hot-row",
    "repl-lag",
    "repl-throughput",
    "repl-partition",
    "migration",
    "signing",
    "backup",
    "admin",
    "none",
];

/// The environment variable (and value) that turns CRDT capture off: `[crdt] replicate = []`.
pub const CAPTURE_OFF_ENV: (&str, &str) = ("OUTPOST_CRDT_REPLICATE", "[]");

#[derive(Parser, Debug, Clone)]
#[command(
    name = "outpost-bench",
    about = "Benchmark outpost (Hrana over HTTP) against libSQL in-process and a bare HTTP round trip"
)]
pub struct Args {
    /// The outpost binary [default: $CARGO_TARGET_DIR/release/outpost, else target/release/outpost,
    /// else the debug build next to it].
    #[arg(long)]
    outpost_bin: Option<PathBuf>,
    /// CI mode: ~1.5 s per phase, concurrency 1 (mix at 16), tiny tables (1,000 wide rows,
    /// 1,000 hot-row updates, a memory run at --rows with 1,000 updates) and, unless another
    /// A/B is asked for, the capture A/B (--capture-ab).
    #[arg(long)]
    quick: bool,
    /// Measured seconds per phase [default: 10, quick: 1.5].
    #[arg(long)]
    seconds: Option<f64>,
    /// Split each phase into this many rounds that alternate the targets (A B C A B C ...)
    /// [default: 3, quick: 1].
    #[arg(long)]
    rounds: Option<u32>,
    /// Warm-up seconds before each phase (run, not recorded) [default: 1, quick: 0.25].
    #[arg(long)]
    warmup: Option<f64>,
    /// Upper bound on measured operations per phase.
    #[arg(long, default_value_t = 5_000_000)]
    max_ops: u64,
    /// Concurrency levels for the read, insert, batch100 and wide-update phases
    /// [default: 1,16,64, quick: 1].
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// Concurrency levels for the 90/10 read/write mix [default: 16].
    #[arg(long, value_delimiter = ',', default_value = "16")]
    mix_concurrency: Vec<usize>,
    /// Rows loaded into `t` before the phases.
    #[arg(long, default_value_t = 10_000)]
    rows: u64,
    /// After the phases, load a fresh outpost up to this many rows (at least --rows) and
    /// report its RSS; 0 skips [default: 100000, quick: 2000].
    #[arg(long)]
    rss_rows: Option<u64>,
    /// Shorthand for --rss-rows 1000000.
    #[arg(long)]
    rss_1m: bool,
    /// In the memory run, after the reads at each table size, update this many random rows
    /// (16 clients) and sample RSS again; 0 skips [default: 100000, quick: 1000].
    #[arg(long)]
    rss_updates: Option<u64>,
    /// Seconds of random reads after each load of the memory run [default: 3, quick: 0.5].
    #[arg(long)]
    rss_read_seconds: Option<f64>,
    /// Rows loaded into the wide table `w` (integer key + 20 columns) for `wide-update`
    /// [default: 10000, quick: 1000].
    #[arg(long)]
    wide_rows: Option<u64>,
    /// Updates of the one row of `hot` in the `hot-row` run, per instance
    /// [default: 100000, quick: 1000].
    #[arg(long)]
    hot_row_updates: Option<u64>,
    /// The hot-row run compares the latency of the first and the last this many updates
    /// (at most half the run).
    #[arg(long, default_value_t = 1000)]
    hot_row_window: usize,
    /// Run the 90/10 mix at 16 clients on outpost for this long after everything else,
    /// sampling RSS every 10 s (the "flat memory" check; the issue asks for 600).
    #[arg(long, default_value_t = 0)]
    soak_seconds: u64,
    /// Which workloads to run (comma-separated): read, insert, mix, batch100 (100 inserts in
    /// one Hrana batch), wide-update (one column of a random row of a 20-column table),
    /// hot-row (one row updated --hot-row-updates times, on fresh instances), repl-lag,
    /// repl-throughput, repl-partition (3-node clusters, see --repl-rate ...), migration
    /// (`outpost migrate` on 100,000 captured rows, quick: 10,000, vs plain SQLite), signing
    /// (origin signatures: signed vs unsigned writes, verified vs unverified applies,
    /// in-process), backup (outpost's S3 backup vs Litestream: RPO under kill -9, CPU,
    /// uploads, restore time; see --backup-runs ...), admin (the admin listener: /metrics,
    /// /status, /health latency on 2 meshed nodes, inserts while scraped vs not), or none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "read,insert,mix,batch100,wide-update,hot-row,repl-lag,repl-throughput,repl-partition,migration,signing,backup,admin"
    )]
    workloads: Vec<String>,
    #[command(flatten)]
    backup: backup::BackupArgs,
    /// repl-lag: open-loop writes per second, once all on n1 and once spread over the three
    /// nodes [default: 1000, quick: 200].
    #[arg(long)]
    repl_rate: Option<f64>,
    /// repl-lag: how often each observing node is polled for the new rows, microseconds.
    #[arg(long, default_value_t = 1000)]
    repl_poll_us: u64,
    /// repl-throughput: closed-loop clients inserting on n1 [default: 16,64, quick: 4].
    #[arg(long, value_delimiter = ',')]
    repl_concurrency: Option<Vec<usize>>,
    /// repl-partition: seconds n3 is cut off [default: 60, quick: 3].
    #[arg(long)]
    partition_seconds: Option<f64>,
    /// repl-partition: writes per second on each side (n1/n2 alternately, and n3)
    /// [default: 200, quick: 50].
    #[arg(long)]
    partition_rate: Option<f64>,
    /// repl-partition: how the proxies cut n3 off: blackhole (silence) or refuse (RST).
    #[arg(long, value_parser = proxy::Fault::parse, default_value = "blackhole")]
    partition_fault: proxy::Fault,
    /// Which targets to run (comma-separated): inproc, bare, outpost.
    #[arg(long, value_delimiter = ',', default_value = "inproc,bare,outpost")]
    targets: Vec<String>,
    /// Write the machine-readable report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Parent directory for the temporary databases (must be a real disk for fsync to count).
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// Extra argument passed to `outpost serve` (repeatable).
    #[arg(long = "outpost-arg", allow_hyphen_values = true)]
    outpost_args: Vec<String>,
    /// Environment variable KEY=VALUE for every outpost this run starts (repeatable).
    #[arg(long = "outpost-env", value_parser = server::parse_env_pair)]
    outpost_env: Vec<(String, String)>,
    /// A/B comparison: also run every phase on a second outpost ("outpost-b") started from this
    /// binary (default: the same one) ...
    #[arg(long)]
    compare_bin: Option<PathBuf>,
    /// ... with these extra `serve` arguments (repeatable) ...
    #[arg(long = "compare-arg", allow_hyphen_values = true)]
    compare_args: Vec<String>,
    /// ... and these extra environment variables KEY=VALUE (repeatable), e.g.
    /// OUTPOST_CRDT_REPLICATE=[] for capture off. Any of the three turns the comparison on;
    /// the hot-row run then also runs on a second instance started the same way.
    #[arg(long = "compare-env", value_parser = server::parse_env_pair)]
    compare_env: Vec<(String, String)>,
    /// Capture A/B: outpost-b is the same binary with OUTPOST_CRDT_REPLICATE=[] (capture off);
    /// reports on ÷ off per write workload against the goal "capture costs at most 2x".
    #[arg(long)]
    capture_ab: bool,
    /// actix-web workers of the bare HTTP baseline (0 = actix's default, as outpost).
    #[arg(long, default_value_t = 0)]
    bare_workers: usize,
    /// Tokio worker threads of the load generator (1 = a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Profile outpost during the load phases: run `perf record -p PID -o FILE` (with
    /// --perf-args) from the first phase to the last one. Needs `perf` on PATH.
    #[arg(long)]
    perf_record: Option<PathBuf>,
    /// Arguments for `perf record` with --perf-record.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value = "-e cpu-clock -F 1999 --call-graph dwarf,16384"
    )]
    perf_args: String,
    /// Seconds to wait for outpost's READY line.
    #[arg(long, default_value_t = 60)]
    start_timeout: u64,
}

/// The resolved plan of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub mode: &'static str,
    pub seconds: f64,
    pub rounds: u32,
    pub warmup: f64,
    pub max_ops: u64,
    pub concurrency: Vec<usize>,
    pub mix_concurrency: Vec<usize>,
    pub rows: u64,
    pub rss_rows: u64,
    pub rss_updates: u64,
    pub rss_read_seconds: f64,
    pub wide_rows: u64,
    pub hot_row_updates: u64,
    pub hot_row_window: usize,
    /// outpost-b runs with capture off (OUTPOST_CRDT_REPLICATE=[]).
    pub capture_ab: bool,
    pub soak_seconds: u64,
    pub client_threads: usize,
    pub bare_workers: usize,
    pub workloads: Vec<String>,
    pub repl_rate: f64,
    pub repl_poll_us: u64,
    pub repl_concurrency: Vec<usize>,
    pub partition_seconds: f64,
    pub partition_rate: f64,
    pub partition_fault: proxy::Fault,
    pub bench_build: &'static str,
}

impl Plan {
    fn from_args(a: &Args) -> Self {
        Plan {
            mode: if a.quick { "quick" } else { "full" },
            seconds: a.seconds.unwrap_or(if a.quick { 1.5 } else { 10.0 }),
            rounds: a.rounds.unwrap_or(if a.quick { 1 } else { 3 }).max(1),
            warmup: a.warmup.unwrap_or(if a.quick { 0.25 } else { 1.0 }),
            max_ops: a.max_ops,
            concurrency: a.concurrency.clone().unwrap_or_else(|| {
                if a.quick {
                    vec![1]
                } else {
                    vec![1, 16, 64]
                }
            }),
            mix_concurrency: a.mix_concurrency.clone(),
            rows: a.rows.max(1),
            rss_rows: if a.rss_1m {
                1_000_000
            } else {
                a.rss_rows.unwrap_or(if a.quick { 2_000 } else { 100_000 })
            },
            rss_updates: a
                .rss_updates
                .unwrap_or(if a.quick { 1_000 } else { 100_000 }),
            rss_read_seconds: a
                .rss_read_seconds
                .unwrap_or(if a.quick { 0.5 } else { 3.0 })
                .max(0.0),
            wide_rows: a
                .wide_rows
                .unwrap_or(if a.quick { 1_000 } else { 10_000 })
                .max(1),
            hot_row_updates: a
                .hot_row_updates
                .unwrap_or(if a.quick { 1_000 } else { 100_000 })
                .max(2),
            hot_row_window: a.hot_row_window.max(1),
            capture_ab: a.capture_ab
                || (a.quick
                    && a.compare_bin.is_none()
                    && a.compare_args.is_empty()
                    && a.compare_env.is_empty()),
            soak_seconds: a.soak_seconds,
            client_threads: a.client_threads.max(1),
            bare_workers: a.bare_workers,
            workloads: a.workloads.iter().map(|w| w.trim().to_string()).collect(),
            repl_rate: a
                .repl_rate
                .unwrap_or(if a.quick { 200.0 } else { 1000.0 })
                .max(1.0),
            repl_poll_us: a.repl_poll_us,
            repl_concurrency: a.repl_concurrency.clone().unwrap_or_else(|| {
                if a.quick {
                    vec![4]
                } else {
                    vec![16, 64]
                }
            }),
            partition_seconds: a
                .partition_seconds
                .unwrap_or(if a.quick { 3.0 } else { 60.0 })
                .max(0.0),
            partition_rate: a
                .partition_rate
                .unwrap_or(if a.quick { 50.0 } else { 200.0 })
                .max(1.0),
            partition_fault: a.partition_fault,
            bench_build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }

    fn phases(&self) -> Vec<(Workload, usize)> {
        let want = |w: &str| self.workloads.iter().any(|x| x == w);
        let mut v = Vec::new();
        if want("read") {
            for &c in &self.concurrency {
                v.push((Workload::Read, c.max(1)));
            }
        }
        if want("insert") {
            for &c in &self.concurrency {
                v.push((Workload::Insert, c.max(1)));
            }
        }
        if want("mix") {
            for &c in &self.mix_concurrency {
                v.push((Workload::Mix { read_pct: 90 }, c.max(1)));
            }
        }
        if want("batch100") {
            for &c in &self.concurrency {
                v.push((Workload::Batch, c.max(1)));
            }
        }
        if want("wide-update") {
            for &c in &self.concurrency {
                v.push((
                    Workload::WideUpdate {
                        rows: self.wide_rows,
                    },
                    c.max(1),
                ));
            }
        }
        v
    }

    fn want(&self, workload: &str) -> bool {
        self.workloads.iter().any(|x| x == workload)
    }

    /// The clock of one round: `seconds / rounds` measured after `warmup / rounds`
    /// (and at most `max_ops / rounds` operations).
    fn clock(&self) -> Arc<PhaseClock> {
        let r = f64::from(self.rounds);
        Arc::new(PhaseClock::new(
            Duration::from_secs_f64((self.warmup / r).max(0.0)),
            Duration::from_secs_f64((self.seconds / r).max(0.01)),
            (self.max_ops / u64::from(self.rounds)).max(1),
        ))
    }
}

fn summarize(
    target: Target,
    workload: Workload,
    concurrency: usize,
    secs: f64,
    stats: WorkerStats,
) -> PhaseResult {
    let mixed = matches!(workload, Workload::Mix { .. });
    let r = PhaseResult {
        target,
        workload: workload.name(),
        concurrency,
        summary: Summary::from_hist(&stats.all, stats.errors, secs),
        read: mixed.then(|| Summary::from_hist(&stats.read, 0, secs)),
        write: mixed.then(|| Summary::from_hist(&stats.write, 0, secs)),
        first_error: stats.first_error,
    };
    eprintln!(
        "  {:<9} {:<9} c={:<3} {:>10} ops/s  p50 {:>9}  p99 {:>9}  errors {}",
        target.name(),
        r.workload,
        concurrency,
        fmt_rate(r.summary.ops_per_sec),
        stats::fmt_us(r.summary.p50_us),
        stats::fmt_us(r.summary.p99_us),
        r.summary.errors
    );
    if let Some(e) = &r.first_error {
        eprintln!("    first error: {e}");
    }
    r
}

fn default_outpost_bin() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let release = target.join("release/outpost");
    if release.exists() {
        return Some(release);
    }
    let fallback = PathBuf::from("target/release/outpost");
    if fallback.exists() {
        return Some(fallback);
    }
    let debug = target.join("debug/outpost");
    if debug.exists() {
        eprintln!(
            "warning: no release build of outpost; using the debug build {} (numbers are not meaningful)",
            debug.display()
        );
        return Some(debug);
    }
    None
}

/// Load `n` more rows into outpost's `t` in multi-row inserts of up to 200 rows.
async fn load_rows_http(conn: &mut Conn, n: u64) -> Result<()> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut left = n;
    while left > 0 {
        let chunk = left.min(200) as usize;
        let mut sql = String::from("INSERT INTO t(v) VALUES ");
        for i in 0..chunk {
            sql.push_str(if i == 0 { "(?)" } else { ",(?)" });
        }
        let values: Vec<String> = (0..chunk)
            .map(|_| workload::random_value(&mut rng))
            .collect();
        let args: Vec<Arg<'_>> = values.iter().map(|v| Arg::Text(v)).collect();
        let r = conn.pipeline(execute_body(&sql, &args)).await?;
        anyhow::ensure!(
            r.affected_row_count == chunk as u64,
            "bulk insert affected {} of {chunk} rows",
            r.affected_row_count
        );
        left -= chunk as u64;
    }
    Ok(())
}

/// `SELECT count(*) FROM t` over HTTP.
async fn count_rows_http(conn: &mut Conn) -> Result<u64> {
    let (status, body) = conn
        .request(
            hyper::Method::POST,
            client::PIPELINE_PATH,
            execute_body("SELECT count(*) FROM t", &[]).into(),
        )
        .await?;
    anyhow::ensure!(status.is_success(), "HTTP {status}");
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let cell = &v["results"][0]["response"]["result"]["rows"][0][0]["value"];
    cell.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| cell.as_u64())
        .with_context(|| format!("unexpected count response: {v}"))
}

fn rss_sample(pid: u32, label: &str, rows: Option<u64>) -> Option<RssSample> {
    match server::rss_kib(pid) {
        Ok((rss, hwm)) => {
            eprintln!(
                "  outpost RSS {label}: {:.1} MiB (peak {:.1} MiB)",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            );
            Some(RssSample {
                label: label.to_string(),
                rows,
                updates: None,
                rss_kib: rss,
                hwm_kib: hwm,
            })
        }
        Err(e) => {
            eprintln!("  outpost RSS {label}: unavailable ({e})");
            None
        }
    }
}

/// Start `perf record` attached to `pid`.
fn start_perf(pid: u32, out: &Path, perf_args: &str) -> Result<std::process::Child> {
    let child = std::process::Command::new("perf")
        .arg("record")
        .args(perf_args.split_whitespace())
        .arg("-p")
        .arg(pid.to_string())
        .arg("-o")
        .arg(out)
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("spawn perf record")?;
    // perf needs a moment to attach before the first phase starts.
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("  perf record attached to {pid} -> {}", out.display());
    Ok(child)
}

/// SIGINT `perf record` so that it writes its file, and wait for it.
fn stop_perf(mut perf: std::process::Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(perf.id() as libc::pid_t, libc::SIGINT);
    }
    let _ = perf.wait();
}

fn resolve_bin(args: &Args) -> Result<PathBuf> {
    let bin = match &args.outpost_bin {
        Some(b) => b.clone(),
        None => default_outpost_bin().context(
            "no outpost binary found: build it (cargo build --release -p outpost) or pass --outpost-bin",
        )?,
    };
    anyhow::ensure!(bin.exists(), "outpost binary {} not found", bin.display());
    Ok(bin)
}

/// How to start one outpost: binary, extra `serve` arguments, extra environment.
#[derive(Clone, Debug)]
struct Spec {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Spec {
    fn describe(&self) -> String {
        let mut s: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push(self.bin.display().to_string());
        s.extend(self.args.iter().cloned());
        s.join(" ")
    }
}

/// The instance "A" (`outpost`) of a run.
fn spec_a(args: &Args, bin: &Path) -> Spec {
    Spec {
        bin: bin.to_path_buf(),
        args: args.outpost_args.clone(),
        env: args.outpost_env.clone(),
    }
}

/// The instance "B" (`outpost-b`) of an A/B comparison, if one is asked for.
fn spec_b(args: &Args, plan: &Plan, bin: &Path) -> Option<Spec> {
    if args.compare_bin.is_none()
        && args.compare_args.is_empty()
        && args.compare_env.is_empty()
        && !plan.capture_ab
    {
        return None;
    }
    let mut env = args.outpost_env.clone();
    env.extend(args.compare_env.iter().cloned());
    if plan.capture_ab && !env.iter().any(|(k, _)| k == CAPTURE_OFF_ENV.0) {
        env.push((CAPTURE_OFF_ENV.0.into(), CAPTURE_OFF_ENV.1.into()));
    }
    Some(Spec {
        bin: args
            .compare_bin
            .clone()
            .unwrap_or_else(|| bin.to_path_buf()),
        args: args
            .outpost_args
            .iter()
            .chain(&args.compare_args)
            .cloned()
            .collect(),
        env,
    })
}

/// Tables loaded into a fresh outpost before it is used.
#[derive(Clone, Copy, Default)]
struct Load {
    /// Rows of `t`.
    rows: u64,
    /// Rows of the wide table `w` (0: no table).
    wide_rows: u64,
}

/// Start a fresh outpost in `dir`, check `/health`, create `t` and load the tables.
fn start_outpost(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    spec: &Spec,
    dir: &Path,
    load: Load,
    report: &mut Report,
) -> Result<server::Outpost> {
    std::fs::create_dir_all(dir)?;
    let t0 = Instant::now();
    let proc = server::Outpost::start(
        &spec.bin,
        dir,
        &spec.args,
        &spec.env,
        Duration::from_secs(args.start_timeout),
    )?;
    let started = t0.elapsed().as_secs_f64();
    report.outpost_startup_seconds.get_or_insert(started);
    let (api, admin, pid) = (proc.api, proc.admin, proc.pid());
    eprintln!("  ready in {started:.2}s: api {api} admin {admin} pid {pid}");
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let setup = rt.block_on(async {
        let mut probe = Conn::new(admin);
        let (status, _) = probe.get("/health").await.context("GET /health")?;
        anyhow::ensure!(status.is_success(), "GET /health returned {status}");
        report
            .rss
            .extend(rss_sample(pid, &format!("{name}: empty"), Some(0)));
        let mut conn = Conn::new(api);
        conn.pipeline(execute_body(CREATE_SQL, &[]))
            .await
            .context("create table over Hrana")?;
        if load.rows > 0 {
            let t = Instant::now();
            load_rows_http(&mut conn, load.rows)
                .await
                .context("load rows over Hrana")?;
            eprintln!(
                "  loaded {} rows in {:.2}s",
                load.rows,
                t.elapsed().as_secs_f64()
            );
        }
        if load.wide_rows > 0 {
            let t = Instant::now();
            crdt::load_wide_http(&mut conn, load.wide_rows)
                .await
                .context("load the wide table over Hrana")?;
            eprintln!(
                "  loaded {} rows into the wide table w in {:.2}s",
                load.wide_rows,
                t.elapsed().as_secs_f64()
            );
        }
        Ok(())
    });
    match setup {
        Ok(()) => Ok(proc),
        Err(e) => {
            let tail = server::tail(&proc.log_path, 1500);
            stop_outpost(proc, report);
            Err(anyhow::anyhow!("{e:#}; outpost log tail:\n{tail}"))
        }
    }
}

/// SIGTERM outpost and record how it went, then read what CRDT capture stored in its
/// database (`hot_table`: also that table's doc size).
fn stop_and_inspect(
    proc: server::Outpost,
    report: &mut Report,
    hot_table: Option<&str>,
) -> crdt::CaptureStats {
    let data_dir = proc.data_dir.clone();
    let instance = instance_name(&proc);
    stop_outpost(proc, report);
    let stats = crdt::inspect(&server::db_path(&data_dir), &instance, hot_table);
    eprintln!("  capture in {instance:?}: {}", stats.describe());
    report.capture.push(stats.clone());
    stats
}

/// The name of an instance: its directory under the run's temp dir ("phases", "memory", ...).
fn instance_name(proc: &server::Outpost) -> String {
    proc.data_dir
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// SIGTERM outpost and record how it went.
fn stop_outpost(mut proc: server::Outpost, report: &mut Report) {
    if let Some(exit) = proc.exited() {
        report.problems.push(format!(
            "outpost exited during the run: {exit}; log tail:\n{}",
            server::tail(&proc.log_path, 1500)
        ));
    }
    report.outpost_data_bytes.push(report::DataDir {
        instance: instance_name(&proc),
        bytes: server::dir_size(&proc.data_dir),
    });
    let shutdown = proc.stop(Duration::from_secs(15));
    if !shutdown.graceful {
        report.problems.push(format!(
            "outpost did not stop cleanly on SIGTERM: {}",
            shutdown.exit
        ));
    }
    report.outpost_shutdown = Some(shutdown);
}

/// Memory against table size, on a fresh outpost: load to each checkpoint (10k, 100k, 1M
/// up to `rss_rows`), sample RSS, read across the table for a few seconds, sample again,
/// update `rss_updates` random rows (at 100k rows and up, and at the last size), sample
/// again. Then the optional soak (90/10 mix at 16 clients, RSS every 10 s).
fn run_rss(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    plan: &Plan,
    spec: &Spec,
    tmp: &Path,
    report: &mut Report,
) -> Result<()> {
    let target = plan.rss_rows.max(plan.rows);
    eprintln!("== outpost memory ({target} rows)");
    let mut checkpoints: Vec<u64> = [10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|&n| n < target)
        .collect();
    checkpoints.push(target);
    let proc = start_outpost(rt, args, spec, &tmp.join("memory"), Load::default(), report)?;
    let (api, pid) = (proc.api, proc.pid());
    let result = rt.block_on(async {
        let mut conn = Conn::new(api);
        let mut have = 0;
        let mut load_secs = 0.0;
        for &n in &checkpoints {
            let t = Instant::now();
            load_rows_http(&mut conn, n - have).await?;
            load_secs += t.elapsed().as_secs_f64();
            have = n;
            report
                .rss
                .extend(rss_sample(pid, &format!("memory: loaded {n}"), Some(n)));
            if plan.rss_read_seconds > 0.0 {
                let clock = Arc::new(PhaseClock::new(
                    Duration::ZERO,
                    Duration::from_secs_f64(plan.rss_read_seconds),
                    plan.max_ops,
                ));
                client::run_phase(api, Workload::Read, 16, n, clock).await?;
                report.rss.extend(rss_sample(
                    pid,
                    &format!("memory: {n} + {} s of reads", plan.rss_read_seconds),
                    Some(n),
                ));
            }
            // Updates at 100k rows and up (the "flat" comparison), and at the last size.
            if plan.rss_updates > 0 && (n >= 100_000 || n == target) {
                let u = plan.rss_updates;
                // Bounded by the count, not the clock (an hour is a generous cap).
                let clock = Arc::new(PhaseClock::new(
                    Duration::ZERO,
                    Duration::from_secs(3600),
                    u,
                ));
                let t = Instant::now();
                let s = client::run_phase(api, Workload::Update, 16, n, clock).await?;
                let secs = t.elapsed().as_secs_f64();
                eprintln!(
                    "  {} random updates of {n} rows in {secs:.2}s ({} ops/s), errors {}",
                    s.ok,
                    fmt_rate(s.ok as f64 / secs.max(1e-9)),
                    s.errors
                );
                if stats::mostly_failed(s.ok, s.errors) {
                    report.problems.push(format!(
                        "memory: updates of {n} rows: {} ok, {} failed (first error: {})",
                        s.ok,
                        s.errors,
                        s.first_error.as_deref().unwrap_or("-")
                    ));
                }
                if let Some(mut sample) =
                    rss_sample(pid, &format!("memory: {n} + {u} updates"), Some(n))
                {
                    sample.updates = Some(s.ok);
                    report.rss.push(sample);
                }
            }
        }
        report.bulk_load_rows_per_sec = Some(have as f64 / load_secs);
        eprintln!(
            "  bulk load: {} rows/s (200-row inserts)",
            fmt_rate(have as f64 / load_secs)
        );

        if plan.soak_seconds > 0 {
            let end = Instant::now() + Duration::from_secs(plan.soak_seconds);
            let start = Instant::now();
            let mut soak = WorkerStats::new();
            while Instant::now() < end {
                let left = end.saturating_duration_since(Instant::now());
                let clock = Arc::new(PhaseClock::new(
                    Duration::ZERO,
                    left.min(Duration::from_secs(10)),
                    plan.max_ops,
                ));
                let s =
                    client::run_phase(api, Workload::Mix { read_pct: 90 }, 16, have, clock.clone())
                        .await?;
                soak.merge(s);
                let label = format!("soak {:.0}s", start.elapsed().as_secs_f64());
                report.rss.extend(rss_sample(pid, &label, None));
            }
            let secs = start.elapsed().as_secs_f64();
            let summary = Summary::from_hist(&soak.all, soak.errors, secs);
            eprintln!(
                "  soak: {} ops/s over {secs:.0}s, p99 {}, errors {}",
                fmt_rate(summary.ops_per_sec),
                stats::fmt_us(summary.p99_us),
                summary.errors
            );
            if stats::mostly_failed(summary.ops, soak.errors) {
                report.problems.push(format!(
                    "soak: {} ok, {} failed (first error: {})",
                    summary.ops,
                    soak.errors,
                    soak.first_error.as_deref().unwrap_or("-")
                ));
            }
            report.soak = Some(summary);
        }
        Ok::<_, anyhow::Error>(())
    });
    stop_and_inspect(proc, report, None);
    result
}

/// The hot-row run: on a fresh instance per spec, one row of `hot` updated
/// `plan.hot_row_updates` times (the instances interleaved), then its doc size from the file.
fn run_hot_row(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    plan: &Plan,
    specs: &[(&str, &Spec)],
    tmp: &Path,
    report: &mut Report,
) -> Result<()> {
    eprintln!(
        "== hot row: one row updated {} times per instance, 1 client",
        plan.hot_row_updates
    );
    let mut procs = Vec::new();
    let mut started = Ok(());
    for (name, spec) in specs {
        eprintln!("  {name}: {}", spec.describe());
        match start_outpost(rt, args, spec, &tmp.join(name), Load::default(), report) {
            Ok(p) => procs.push((name.to_string(), p)),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let instances: Vec<(String, std::net::SocketAddr)> =
        procs.iter().map(|(n, p)| (n.clone(), p.api)).collect();
    let result = started.and_then(|()| {
        rt.block_on(async {
            for (_, api) in &instances {
                crdt::setup_hot(*api).await?;
            }
            crdt::run_hot_row(&instances, plan.hot_row_updates, plan.hot_row_window).await
        })
    });
    let mut runs = match result {
        Ok(runs) => runs,
        Err(e) => {
            for (_, p) in procs {
                stop_outpost(p, report);
            }
            return Err(e);
        }
    };
    for ((_, p), run) in procs.into_iter().zip(&mut runs) {
        run.capture = Some(stop_and_inspect(p, report, Some("hot")));
        eprintln!(
            "  {:<9} {} updates in {:.1}s ({} ops/s), errors {}; first {}: {}; last: {}; doc {}",
            run.instance,
            run.updates,
            run.seconds,
            fmt_rate(run.ops_per_sec),
            run.errors,
            run.first.as_ref().map_or(0, |w| w.updates),
            run.first.as_ref().map_or("-".into(), |w| w.describe()),
            run.last.as_ref().map_or("-".into(), |w| w.describe()),
            run.doc_size()
        );
    }
    report.hot_row.extend(runs);
    Ok(())
}

fn run(args: &Args) -> Result<(Report, Option<backup::BackupReport>)> {
    let plan = Plan::from_args(args);
    if let Some(w) = plan
        .workloads
        .iter()
        .find(|w| !WORKLOADS.contains(&w.as_str()))
    {
        anyhow::bail!("unknown workload {w:?} (known: {})", WORKLOADS.join(", "));
    }
    let mut report = Report::new(&plan);
    if plan.bench_build == "debug" {
        eprintln!("warning: outpost-bench is a debug build; baselines are not meaningful");
    }
    let tmp_parent = args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("outpost-bench-")
        .tempdir_in(&tmp_parent)
        .with_context(|| format!("temp dir in {}", tmp_parent.display()))?;
    let want = |t: &str| args.targets.iter().any(|x| x.trim() == t);
    let rt = if plan.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(plan.client_threads)
            .enable_all()
            .build()?
    };
    let phases = plan.phases();
    let load = Load {
        rows: plan.rows,
        wide_rows: if plan.want("wide-update") {
            plan.wide_rows
        } else {
            0
        },
    };

    // Set every target up first, then run each phase on the targets back to back, so
    // that the numbers a ratio compares were measured close together in time.
    let baselines = phases.iter().any(|(w, _)| w.has_baselines());
    let inproc = if want("inproc") && baselines {
        Some(inproc::InProc::create(tmp.path(), plan.rows)?)
    } else {
        None
    };
    let bare = if want("bare") && baselines {
        Some(bare::BareServer::start(plan.bare_workers)?)
    } else {
        None
    };
    let mut specs: Option<(Spec, Option<Spec>)> = None;
    let mut backup_report = None;
    let mut outpost = None;
    let mut outpost_b = None;
    if want("outpost") {
        match resolve_bin(args) {
            Ok(b) => {
                report.outpost_bin = Some(b.display().to_string());
                specs = Some((spec_a(args, &b), spec_b(args, &plan, &b)));
            }
            Err(e) => report.problems.push(format!("outpost: {e:#}")),
        }
    }
    if let (Some((a, b)), false) = (&specs, phases.is_empty()) {
        eprintln!("== outpost ({})", a.describe());
        match start_outpost(&rt, args, a, &tmp.path().join("phases"), load, &mut report) {
            Ok(p) => outpost = Some(p),
            Err(e) => report.problems.push(format!("outpost: {e:#}")),
        }
        if let (Some(b), Some(_)) = (b, &outpost) {
            eprintln!("== outpost-b ({})", b.describe());
            report.outpost_b = Some(b.describe());
            match start_outpost(
                &rt,
                args,
                b,
                &tmp.path().join("phases-b"),
                load,
                &mut report,
            ) {
                Ok(p) => outpost_b = Some(p),
                Err(e) => report.problems.push(format!("outpost-b: {e:#}")),
            }
        }
    }
    let perf = match (&args.perf_record, &outpost) {
        (Some(out), Some(p)) => Some(start_perf(p.pid(), out, &args.perf_args)?),
        _ => None,
    };

    if !phases.is_empty() {
        eprintln!("== phases: inproc = libSQL in-process (WAL, synchronous=FULL), bare-http = actix-web fixed JSON");
    }
    // Each phase is split into `rounds` rounds, each running the targets back to back
    // (A B C A B C ...), and each target's rounds are merged: a burst of noise from the rest
    // of the machine then lands on all targets alike.
    // outpost and outpost-b swap places every other round (A B, B A, ...), so that neither
    // always runs right after the baselines or always first.
    for (w, c) in phases {
        let mut acc: Vec<(Target, WorkerStats, f64)> = Vec::new();
        for round in 0..plan.rounds {
            let mut add = |t: Target, clock: &PhaseClock, stats: WorkerStats| {
                let secs = clock.measured_secs(stats.last_done);
                match acc.iter_mut().find(|a| a.0 == t) {
                    Some(a) => {
                        a.1.merge(stats);
                        a.2 += secs;
                    }
                    None => acc.push((t, stats, secs)),
                }
            };
            if let (Some(db), true) = (&inproc, w.has_baselines()) {
                let clock = plan.clock();
                add(Target::InProc, &clock, db.run(w, c, clock.clone())?);
            }
            if let (Some(srv), true) = (&bare, w.has_baselines()) {
                let clock = plan.clock();
                let stats =
                    rt.block_on(client::run_phase(srv.addr, w, c, plan.rows, clock.clone()))?;
                add(Target::Bare, &clock, stats);
            }
            let mut pair = [
                (Target::Outpost, outpost.as_ref()),
                (Target::OutpostB, outpost_b.as_ref()),
            ];
            if round % 2 == 1 {
                pair.reverse();
            }
            for (t, p) in pair {
                if let Some(p) = p {
                    let clock = plan.clock();
                    let stats =
                        rt.block_on(client::run_phase(p.api, w, c, plan.rows, clock.clone()))?;
                    add(t, &clock, stats);
                }
            }
        }
        for (t, stats, secs) in acc {
            report.results.push(summarize(t, w, c, secs, stats));
        }
    }

    if let Some(perf) = perf {
        stop_perf(perf);
    }
    if let Some(srv) = bare {
        rt.block_on(srv.stop());
    }
    if let Some(p) = outpost {
        let rows = rt
            .block_on(async { count_rows_http(&mut Conn::new(p.api)).await })
            .ok();
        report
            .rss
            .extend(rss_sample(p.pid(), "phases: after the phases", rows));
        stop_and_inspect(p, &mut report, None);
    }
    if let Some(p) = outpost_b {
        stop_and_inspect(p, &mut report, None);
    }
    if let Some((a, b)) = &specs {
        if plan.want("hot-row") {
            let mut hot = vec![("hot", a)];
            hot.extend(b.as_ref().map(|b| ("hot-b", b)));
            if let Err(e) = run_hot_row(&rt, args, &plan, &hot, tmp.path(), &mut report) {
                report.problems.push(format!("hot-row run: {e:#}"));
            }
        }
        if ["repl-lag", "repl-throughput", "repl-partition"]
            .iter()
            .any(|w| plan.want(w))
        {
            let spec = cluster::NodeSpec {
                bin: &a.bin,
                args: &a.args,
                env: &a.env,
                start_timeout: Duration::from_secs(args.start_timeout),
            };
            if let Err(e) = repl::run(&rt, &plan, &spec, tmp.path(), &mut report) {
                report.problems.push(format!("{e:#}"));
            }
        }
        if plan.want("migration") {
            if let Err(e) = migration::run(&plan, &a.bin, &a.env, tmp.path(), &mut report) {
                report.problems.push(format!("migration: {e:#}"));
            }
        }
        if plan.want("signing") {
            if let Err(e) = signing::run(&plan, tmp.path(), &mut report) {
                report.problems.push(format!("signing: {e:#}"));
            }
        }
        if plan.want("backup") {
            let mut b = backup::BackupReport::default();
            let spec = cluster::NodeSpec {
                bin: &a.bin,
                args: &a.args,
                env: &a.env,
                start_timeout: Duration::from_secs(args.start_timeout),
            };
            let r = backup::run(&rt, &plan, &args.backup, &spec, tmp.path(), &mut b);
            if let Err(e) = r {
                report.problems.push(format!("backup: {e:#}"));
            }
            backup_report = Some(b);
        }
        if plan.want("admin") {
            let spec = cluster::NodeSpec {
                bin: &a.bin,
                args: &a.args,
                env: &a.env,
                start_timeout: Duration::from_secs(args.start_timeout),
            };
            admin::run(&rt, &plan, &spec, tmp.path(), &mut report);
        }
        if plan.rss_rows > 0 || plan.soak_seconds > 0 {
            if let Err(e) = run_rss(&rt, args, &plan, a, tmp.path(), &mut report) {
                report.problems.push(format!("outpost memory run: {e:#}"));
            }
        }
    }

    report.finish();
    // The backup workload's goals and problems join the report's after `finish` (which
    // recomputes the goals from the other workloads).
    if let Some(b) = &backup_report {
        report.goals.extend(b.goals());
        report.problems.extend(b.problems());
    }
    Ok((report, backup_report))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (report, backup) = match run(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut text = report.render_text();
    if let Some(b) = &backup {
        let mut section = String::new();
        b.render(&mut section);
        backup::insert_section(&mut text, &section);
    }
    print!("{text}");
    if let Some(path) = &args.json {
        match serde_json::to_value(&report)
            .and_then(|mut v| {
                if let Some(b) = &backup {
                    v["backup"] = serde_json::to_value(b)?;
                }
                serde_json::to_vec_pretty(&v)
            })
            .map_err(anyhow::Error::from)
            .and_then(|b| std::fs::write(path, b).map_err(Into::into))
        {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("error: writing {}: {e:#}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("harness problems:");
        for p in &report.problems {
            eprintln!("  - {p}");
        }
        ExitCode::FAILURE
    }
}
