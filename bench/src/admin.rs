//! The monitoring workload `admin` (issue 9): what the admin listener's answers cost a node, and
//! what scraping does to the API, measured side by side in one run with the same binary.
//!
//! Two meshed nodes (one CA, `outpost init --ca-dir`, n2 dials n1), rows written on both and
//! replicated, so that every per-peer series of `/metrics` exists. Then, on node 1:
//! 1. **Endpoints.** On one keep-alive connection to the admin listener, `requests` sequential
//!    requests each of `GET /metrics`, `GET /status` and `GET /health` (the floor: a fixed
//!    answer), in alternating blocks of [`BLOCK`] (so that a burst of noise lands on all
//!    three). Latency per request as the client sees it; node 1's CPU per request (the sum of
//!    its threads' `schedstat` around each block, background ticks included, hence /health is
//!    the floor here too); the body sizes.
//! 2. **Inserts while scraped.** Durable single-row inserts on node 1, closed loop, [`CLIENTS`]
//!    clients, once plain and once while another thread (its own runtime and connection)
//!    scrapes `/metrics` and `/status` back to back: the worst case, where a real Prometheus
//!    scrapes every 10-15 s. The two sides alternate in `plan.rounds` rounds (A B, B A, ...),
//!    each `plan.seconds / rounds` measured after `plan.warmup / rounds`; histograms merged
//!    per side. Absolute times on a shared 2-vCPU machine move; the ratio is the figure.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::client::{check_op, execute_body, op_body, Arg, Conn, PIPELINE_PATH};
use crate::cluster::{self, NodeSpec};
use crate::report::{Goal, Report};
use crate::stats::{self, fmt_rate, fmt_us, OpKind, Summary, WorkerStats};
use crate::workload::{random_value, PhaseClock, Workload, CREATE_SQL};
use crate::Plan;

/// Requests per endpoint in a full run.
pub const REQUESTS_FULL: u64 = 2_000;
/// Requests per endpoint with `--quick`.
pub const REQUESTS_QUICK: u64 = 300;
/// Consecutive requests to one endpoint before the next endpoint's turn.
const BLOCK: u64 = 50;
/// Closed-loop insert clients on node 1.
pub const CLIENTS: usize = 4;
/// Rows written on each node before the measurements (replicated to the other one).
const ROWS_EACH: u64 = 1_000;
/// Ids of the rows written on n2 start above this (n1's rows take 1..).
const N2_ID_BASE: i64 = 1_000_000_000;

pub const METRICS: &str = "/metrics";
pub const STATUS: &str = "/status";
pub const HEALTH: &str = "/health";
const ENDPOINTS: [&str; 3] = [METRICS, STATUS, HEALTH];

/// Goal: a scrape's answer stays cheap (release build).
const METRICS_P99_GOAL_MS: f64 = 5.0;
/// Goal: scraping in a tight loop slows a durable insert's p50 by at most this factor. The
/// tight loop takes about a third of a core from node 1 on a 2-vCPU machine, so some slowdown
/// is CPU contention (1.14x-1.51x in three runs with a fuzzer on the other cores); a scrape
/// that blocked the request path (a lock, the writer) would show well beyond.
const SCRAPED_INSERT_P50_GOAL: f64 = 2.0;
/// Goal: node 1's CPU for one `/metrics` + `/status` scrape every 10 s, % of one core.
const SCRAPE_CPU_GOAL_PCT: f64 = 0.1;
/// Prometheus' scrape interval the CPU goal assumes.
const SCRAPE_INTERVAL_S: f64 = 10.0;

/// One admin endpoint, timed on one keep-alive connection.
#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    pub path: &'static str,
    pub latency: Summary,
    pub first_error: Option<String>,
    /// Size of the last answer's body.
    pub body_bytes: usize,
    /// Node 1's CPU (all threads) per request while this endpoint's blocks ran.
    pub node_cpu_us: Option<f64>,
}

/// Inserts on node 1, one side of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct InsertSide {
    pub scraping: bool,
    pub summary: Summary,
    pub first_error: Option<String>,
}

/// What the scraping thread did during the scraped sides.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScrapeLoad {
    /// `/metrics` + `/status` pairs.
    pub scrapes: u64,
    pub errors: u64,
    pub seconds: f64,
    pub first_error: Option<String>,
}

impl ScrapeLoad {
    pub fn per_sec(&self) -> f64 {
        self.scrapes as f64 / self.seconds.max(1e-9)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AdminReport {
    pub quick: bool,
    /// Requests per endpoint.
    pub requests: u64,
    pub clients: usize,
    /// Series (sample lines) in node 1's `/metrics`, and how many carry a `peer` label.
    pub metrics_series: usize,
    pub peer_series: usize,
    pub endpoints: Vec<Endpoint>,
    pub plain: Option<InsertSide>,
    pub scraped: Option<InsertSide>,
    pub scraper: Option<ScrapeLoad>,
    pub problems: Vec<String>,
}

impl AdminReport {
    pub fn endpoint(&self, path: &str) -> Option<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.path == path && e.latency.ops > 0)
    }

    /// (p50, p99) of `a` ÷ those of `b`.
    pub fn endpoint_ratio(&self, a: &str, b: &str) -> Option<(f64, f64)> {
        let (a, b) = (self.endpoint(a)?, self.endpoint(b)?);
        Some((
            a.latency.p50_us / b.latency.p50_us,
            a.latency.p99_us / b.latency.p99_us,
        ))
    }

    /// Scraped ÷ plain: (p50, p99, ops/s).
    pub fn insert_ratio(&self) -> Option<(f64, f64, f64)> {
        let (p, s) = (
            &self.plain.as_ref()?.summary,
            &self.scraped.as_ref()?.summary,
        );
        (p.ops > 0 && s.ops > 0).then(|| {
            (
                s.p50_us / p.p50_us,
                s.p99_us / p.p99_us,
                s.ops_per_sec / p.ops_per_sec,
            )
        })
    }

    /// Node 1's CPU per `/metrics` + `/status` scrape, µs.
    pub fn scrape_cpu_us(&self) -> Option<f64> {
        Some(self.endpoint(METRICS)?.node_cpu_us? + self.endpoint(STATUS)?.node_cpu_us?)
    }

    pub fn passed(&self) -> usize {
        usize::from(self.problems.is_empty() && !self.endpoints.is_empty())
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| format!("admin: {p}"))
            .collect()
    }

    pub fn goals(&self) -> Vec<Goal> {
        // Quick mode runs a debug build for 1.5 s a side: its figures are reported, not judged.
        let judge = |met: bool| (!self.quick).then_some(met);
        let note = if self.quick {
            " (quick: not judged)"
        } else {
            ""
        };
        let metrics = self.endpoint(METRICS);
        let ratio = self.insert_ratio();
        let cpu = self.scrape_cpu_us();
        let cpu_pct = |us: f64| us / 1e6 / SCRAPE_INTERVAL_S * 100.0;
        vec![
            Goal {
                measure: "admin GET /metrics p99 (2 meshed nodes, keep-alive)".into(),
                goal: format!("≤ {METRICS_P99_GOAL_MS:.0} ms"),
                measured: metrics.map(|m| format!("{}{note}", fmt_us(m.latency.p99_us))),
                met: metrics.and_then(|m| judge(m.latency.p99_us <= METRICS_P99_GOAL_MS * 1e3)),
            },
            Goal {
                measure: format!(
                    "insert p50 while scraped in a tight loop ÷ not ({CLIENTS} clients)"
                ),
                goal: format!("≤ {SCRAPED_INSERT_P50_GOAL:.1}x"),
                measured: ratio.map(|r| format!("{:.2}x{note}", r.0)),
                met: ratio.and_then(|r| judge(r.0 <= SCRAPED_INSERT_P50_GOAL)),
            },
            Goal {
                measure: format!(
                    "node CPU of a /metrics + /status scrape every {SCRAPE_INTERVAL_S:.0} s"
                ),
                goal: format!("≤ {SCRAPE_CPU_GOAL_PCT} % of a core"),
                measured: cpu.map(|c| format!("{:.4} %{note}", cpu_pct(c))),
                met: cpu.and_then(|c| judge(cpu_pct(c) <= SCRAPE_CPU_GOAL_PCT)),
            },
        ]
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "\nadmin listener (issue 9): 2 meshed nodes, node 1; {} requests per endpoint on one keep-alive connection (blocks of {BLOCK}, alternating)",
            self.requests
        );
        let _ = writeln!(
            out,
            "  {:<13} {:>9} {:>9} {:>9} {:>9} {:>13} {:>10}",
            "endpoint", "p50", "p90", "p99", "max", "node CPU/req", "body"
        );
        for e in &self.endpoints {
            let s = &e.latency;
            let _ = writeln!(
                out,
                "  GET {:<9} {:>9} {:>9} {:>9} {:>9} {:>13} {:>8} B{}",
                e.path,
                fmt_us(s.p50_us),
                fmt_us(s.p90_us),
                fmt_us(s.p99_us),
                fmt_us(s.max_us),
                e.node_cpu_us.map_or("-".into(), fmt_us),
                e.body_bytes,
                if s.errors > 0 {
                    format!(
                        "  ({} errors: {})",
                        s.errors,
                        e.first_error.as_deref().unwrap_or("-")
                    )
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(
            out,
            "  /metrics: {} series, {} with a peer label",
            self.metrics_series, self.peer_series
        );
        for (a, b) in [(METRICS, HEALTH), (STATUS, HEALTH)] {
            if let Some((p50, p99)) = self.endpoint_ratio(a, b) {
                let _ = writeln!(out, "  {a} ÷ {b}: p50 x{p50:.2}, p99 x{p99:.2}");
            }
        }
        if let Some(c) = self.scrape_cpu_us() {
            let _ = writeln!(
                out,
                "  one /metrics + /status scrape: {} of node CPU; every {SCRAPE_INTERVAL_S:.0} s: {:.4} % of a core",
                fmt_us(c),
                c / 1e6 / SCRAPE_INTERVAL_S * 100.0
            );
        }
        let _ = writeln!(
            out,
            "  durable insert on node 1, {} clients, closed loop, sides alternating:",
            self.clients
        );
        for side in [&self.plain, &self.scraped].into_iter().flatten() {
            let s = &side.summary;
            let _ = writeln!(
                out,
                "    {:<22} {:>8} ops/s  p50 {:>9}  p99 {:>9}  errors {}",
                if side.scraping {
                    "scraped (tight loop)"
                } else {
                    "not scraped"
                },
                fmt_rate(s.ops_per_sec),
                fmt_us(s.p50_us),
                fmt_us(s.p99_us),
                s.errors
            );
        }
        if let Some(sc) = &self.scraper {
            let _ = writeln!(
                out,
                "    scraper: {} /metrics + /status pairs/s ({} in {:.1}s, errors {})",
                fmt_rate(sc.per_sec()),
                sc.scrapes,
                sc.seconds,
                sc.errors
            );
        }
        if let Some((p50, p99, ops)) = self.insert_ratio() {
            let _ = writeln!(
                out,
                "    scraped ÷ not: p50 x{p50:.2}, p99 x{p99:.2}, ops/s x{ops:.2}"
            );
        }
        for p in &self.problems {
            let _ = writeln!(out, "  PROBLEM: {p}");
        }
    }
}

/// Run the workload; everything it finds (problems included) goes into `report.admin`.
pub fn run(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    spec: &NodeSpec<'_>,
    tmp: &Path,
    report: &mut Report,
) {
    let quick = plan.mode == "quick";
    let mut a = AdminReport {
        quick,
        requests: if quick { REQUESTS_QUICK } else { REQUESTS_FULL },
        clients: CLIENTS,
        ..Default::default()
    };
    eprintln!("== admin listener: 2-node mesh");
    let t0 = Instant::now();
    match start_pair(spec, &tmp.join("admin")) {
        Ok(nodes) => {
            if let Err(e) = rt.block_on(measure(&nodes, plan, &mut a)) {
                a.problems.push(format!(
                    "{e:#} ({}, n1 log tail:\n{})",
                    describe(&nodes),
                    crate::server::tail(&nodes[0].proc.log_path, 1500)
                ));
            }
            stop_nodes(nodes, &mut a);
        }
        Err(e) => a.problems.push(format!("start the nodes: {e:#}")),
    }
    eprintln!(
        "  admin workload done in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    report.admin = Some(a);
}

async fn measure(nodes: &[cluster::Node], plan: &Plan, a: &mut AdminReport) -> Result<()> {
    setup(nodes).await?;
    let n1 = &nodes[0];
    let text = cluster::metrics_text(n1).await?;
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    a.metrics_series = series.clone().count();
    a.peer_series = series.filter(|l| l.contains("peer=\"")).count();
    if a.peer_series == 0 {
        a.problems
            .push("node 1's /metrics has no series with a peer label after replication".into());
    }

    eprintln!(
        "  endpoints: {} requests each of {} on node 1's admin listener",
        a.requests,
        ENDPOINTS.join(", ")
    );
    a.endpoints = time_endpoints(n1.proc.admin, n1.proc.pid(), a.requests).await?;
    for e in &a.endpoints {
        eprintln!(
            "    GET {:<9} p50 {:>9} p99 {:>9}  node CPU/req {:>9}  body {} B  errors {}",
            e.path,
            fmt_us(e.latency.p50_us),
            fmt_us(e.latency.p99_us),
            e.node_cpu_us.map_or("-".into(), fmt_us),
            e.body_bytes,
            e.latency.errors
        );
        if e.latency.errors > 0 || e.latency.ops == 0 {
            a.problems.push(format!(
                "GET {}: {} of {} requests failed (first error: {})",
                e.path,
                e.latency.errors,
                e.latency.errors + e.latency.ops,
                e.first_error.as_deref().unwrap_or("-")
            ));
        }
    }

    eprintln!(
        "  inserts on node 1, {CLIENTS} clients, {:.1}s a side in {} round(s), not scraped / scraped",
        plan.seconds, plan.rounds
    );
    let mut sides = [
        (false, WorkerStats::new(), 0.0),
        (true, WorkerStats::new(), 0.0),
    ];
    let mut scrape = ScrapeLoad::default();
    for round in 0..plan.rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let scraper = sides[i].0.then(|| Scraper::start(n1.proc.admin));
            let clock = plan.clock();
            let stats = insert_phase(n1.proc.api, &n1.token, CLIENTS, clock.clone()).await?;
            if let Some(s) = scraper {
                let l = s.stop()?;
                scrape.scrapes += l.scrapes;
                scrape.errors += l.errors;
                scrape.seconds += l.seconds;
                if scrape.first_error.is_none() {
                    scrape.first_error = l.first_error;
                }
            }
            sides[i].2 += clock.measured_secs(stats.last_done);
            sides[i].1.merge(stats);
        }
    }
    for (scraping, stats, secs) in sides {
        let side = InsertSide {
            scraping,
            summary: Summary::from_hist(&stats.all, stats.errors, secs),
            first_error: stats.first_error,
        };
        let s = &side.summary;
        let what = if scraping { "scraped" } else { "not scraped" };
        eprintln!(
            "    {what:<12} {:>8} ops/s  p50 {:>9}  p99 {:>9}  errors {}",
            fmt_rate(s.ops_per_sec),
            fmt_us(s.p50_us),
            fmt_us(s.p99_us),
            s.errors
        );
        if stats::mostly_failed(s.ops, s.errors) {
            a.problems.push(format!(
                "inserts ({what}): {} ok, {} failed (first error: {})",
                s.ops,
                s.errors,
                side.first_error.as_deref().unwrap_or("-")
            ));
        }
        if scraping {
            a.scraped = Some(side);
        } else {
            a.plain = Some(side);
        }
    }
    eprintln!(
        "    scraper: {} pairs/s, errors {}",
        fmt_rate(scrape.per_sec()),
        scrape.errors
    );
    if scrape.scrapes == 0 || scrape.errors > 0 {
        a.problems.push(format!(
            "the scraper: {} scrapes, {} failed (first error: {})",
            scrape.scrapes,
            scrape.errors,
            scrape.first_error.as_deref().unwrap_or("-")
        ));
    }
    a.scraper = Some(scrape);
    Ok(())
}

// --- the two nodes ------------------------------------------------------------------------------

/// Runs `bin args...`, returns stdout; fails with stderr on a non-zero exit.
fn outpost_cmd(bin: &Path, args: &[&OsStr]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("run {} {:?}", bin.display(), args))?;
    if !out.status.success() {
        bail!(
            "`outpost {:?}` failed ({}): {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// n1 and n2 under `dir` (`dir/ca`, `dir/n1`, `dir/n2`), each with a node certificate and a
/// full-access token; n2 dials n1.
fn start_pair(spec: &NodeSpec<'_>, dir: &Path) -> Result<Vec<cluster::Node>> {
    let ca = dir.join("ca");
    let mut nodes: Vec<cluster::Node> = Vec::new();
    for i in 1..=2 {
        let name = format!("n{i}");
        let ndir = dir.join(&name);
        std::fs::create_dir_all(&ndir)?;
        let data_dir = ndir.join("outpost-data");
        outpost_cmd(
            spec.bin,
            &[
                "init".as_ref(),
                "--data-dir".as_ref(),
                data_dir.as_os_str(),
                "--ca-dir".as_ref(),
                ca.as_os_str(),
            ],
        )?;
        let token = outpost_cmd(
            spec.bin,
            &[
                "token".as_ref(),
                "--data-dir".as_ref(),
                data_dir.as_os_str(),
            ],
        )?
        .trim()
        .to_string();
        anyhow::ensure!(!token.is_empty(), "`outpost token` printed nothing");
        let mut args: Vec<String> = spec.args.to_vec();
        args.extend(["--sync-listen".to_string(), "127.0.0.1:0".to_string()]);
        for n in &nodes {
            let sync = n.proc.sync.context("no sync= on a READY line")?;
            args.extend(["--peer".to_string(), format!("https://{sync}")]);
        }
        let proc =
            crate::server::Outpost::start(spec.bin, &ndir, &args, spec.env, spec.start_timeout)
                .with_context(|| format!("start {name}"))?;
        anyhow::ensure!(
            proc.sync.is_some(),
            "{name} started without a sync listener (READY has no sync=)"
        );
        nodes.push(cluster::Node {
            name,
            proc,
            token,
            origin: String::new(),
        });
    }
    Ok(nodes)
}

/// Create `t` on both nodes, wait for the link, write [`ROWS_EACH`] rows on each node and wait
/// until each has the other's.
async fn setup(nodes: &[cluster::Node]) -> Result<()> {
    for n in nodes {
        n.api_conn()
            .pipeline(execute_body(CREATE_SQL, &[]))
            .await
            .with_context(|| format!("create table on {}", n.name))?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut links = Vec::new();
        for n in nodes {
            links.push(cluster::connected_links(&cluster::status(n).await?));
        }
        if links.iter().all(|&l| l >= 1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the two nodes did not connect within 30 s (connected links: {links:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    crate::load_rows_http(&mut nodes[0].api_conn(), ROWS_EACH)
        .await
        .context("write rows on n1")?;
    let mut conn = nodes[1].api_conn();
    let mut rng = StdRng::from_entropy();
    for first in (0..ROWS_EACH as i64).step_by(200) {
        let ids: Vec<i64> = (first..(first + 200).min(ROWS_EACH as i64)).collect();
        let values: Vec<String> = ids.iter().map(|_| random_value(&mut rng)).collect();
        let mut sql = String::from("INSERT INTO t(id, v) VALUES ");
        let mut args = Vec::new();
        for (k, (id, v)) in ids.iter().zip(&values).enumerate() {
            sql.push_str(if k == 0 { "(?, ?)" } else { ", (?, ?)" });
            args.push(Arg::Int(N2_ID_BASE + id));
            args.push(Arg::Text(v));
        }
        conn.pipeline(execute_body(&sql, &args))
            .await
            .context("write rows on n2")?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v1 = cluster::log_vector(&cluster::status(&nodes[0]).await?);
        let v2 = cluster::log_vector(&cluster::status(&nodes[1]).await?);
        if cluster::covers(&v1, &v2) && cluster::covers(&v2, &v1) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the rows did not replicate within 30 s: n1 {v1:?}, n2 {v2:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn describe(nodes: &[cluster::Node]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "{} api {} admin {} pid {}",
                n.name,
                n.proc.api,
                n.proc.admin,
                n.proc.pid()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// SIGTERM both nodes; one that died or did not stop cleanly is a problem.
fn stop_nodes(nodes: Vec<cluster::Node>, a: &mut AdminReport) {
    for n in nodes {
        let mut proc = n.proc;
        let log = proc.log_path.clone();
        if let Some(exit) = proc.exited() {
            a.problems.push(format!(
                "node {} exited during the run: {exit}; log tail:\n{}",
                n.name,
                crate::server::tail(&log, 1500)
            ));
            continue;
        }
        let s = proc.stop(Duration::from_secs(15));
        if !s.graceful {
            a.problems.push(format!(
                "node {} did not stop cleanly on SIGTERM: {}; log tail:\n{}",
                n.name,
                s.exit,
                crate::server::tail(&log, 1500)
            ));
        }
    }
}

// --- measurements -------------------------------------------------------------------------------

/// CPU seconds of `pid`'s live threads so far (`/proc/PID/task/*/schedstat`, ns resolution).
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns = 0u64;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(ns as f64 / 1e9)
}

/// `n` requests to each of [`ENDPOINTS`] on one keep-alive connection, in alternating blocks.
async fn time_endpoints(admin: SocketAddr, pid: u32, n: u64) -> Result<Vec<Endpoint>> {
    let mut conn = Conn::new(admin);
    conn.connect()
        .await
        .context("connect to the admin listener")?;
    struct Acc {
        stats: WorkerStats,
        secs: f64,
        cpu: Option<f64>,
        body: usize,
    }
    let mut acc: Vec<Acc> = ENDPOINTS
        .iter()
        .map(|_| Acc {
            stats: WorkerStats::new(),
            secs: 0.0,
            cpu: Some(0.0),
            body: 0,
        })
        .collect();
    // One unrecorded request each: nothing is measured cold.
    for path in ENDPOINTS {
        conn.get(path)
            .await
            .with_context(|| format!("GET {path}"))?;
    }
    let mut done = 0;
    while done < n {
        let b = BLOCK.min(n - done);
        for (path, acc) in ENDPOINTS.iter().zip(&mut acc) {
            let cpu0 = process_cpu_secs(pid);
            let block0 = Instant::now();
            for _ in 0..b {
                let t0 = Instant::now();
                let res = conn.get(path).await;
                let end = Instant::now();
                match res {
                    Ok((status, body)) if status.is_success() => {
                        acc.body = body.len();
                        acc.stats.record_ok(OpKind::Read, end - t0, end);
                    }
                    Ok((status, _)) => acc.stats.record_err(|| format!("HTTP {status}"), end),
                    Err(e) => acc.stats.record_err(|| format!("{e:#}"), end),
                }
            }
            acc.secs += block0.elapsed().as_secs_f64();
            acc.cpu = match (acc.cpu, cpu0, process_cpu_secs(pid)) {
                (Some(c), Some(a), Some(b)) => Some(c + (b - a).max(0.0)),
                _ => None,
            };
        }
        done += b;
    }
    Ok(ENDPOINTS
        .iter()
        .zip(acc)
        .map(|(path, acc)| {
            let requests = acc.stats.ok + acc.stats.errors;
            Endpoint {
                path,
                latency: Summary::from_hist(&acc.stats.all, acc.stats.errors, acc.secs),
                first_error: acc.stats.first_error,
                body_bytes: acc.body,
                node_cpu_us: acc
                    .cpu
                    .filter(|_| requests > 0)
                    .map(|c| c * 1e6 / requests as f64),
            }
        })
        .collect())
}

/// Durable single-row inserts on `api`: `clients` keep-alive connections, closed loop.
async fn insert_phase(
    api: SocketAddr,
    token: &str,
    clients: usize,
    clock: Arc<PhaseClock>,
) -> Result<WorkerStats> {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients));
    let mut handles = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (clock, barrier, token) = (clock.clone(), barrier.clone(), token.to_string());
        handles.push(tokio::spawn(async move {
            let mut conn = Conn::with_token(api, Some(&token));
            let connected = conn.connect().await;
            barrier.wait().await;
            let mut stats = WorkerStats::new();
            if let Err(e) = connected {
                stats.record_err(|| format!("{e:#}"), Instant::now());
            }
            let mut rng = StdRng::from_entropy();
            while let Some(measured) = clock.next() {
                let (body, check) = op_body(Workload::Insert, OpKind::Write, 1, &mut rng);
                let t0 = Instant::now();
                let res = conn
                    .request(hyper::Method::POST, PIPELINE_PATH, body.into())
                    .await;
                let done = Instant::now();
                let res = res.and_then(|(status, body)| check_op(check, status, &body));
                let failed = res.is_err();
                if measured {
                    match res {
                        Ok(()) => stats.record_ok(OpKind::Write, done - t0, done),
                        Err(e) => stats.record_err(|| format!("{e:#}"), done),
                    }
                }
                if failed {
                    // Do not spin on a dead server.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            stats
        }));
    }
    let mut total = WorkerStats::new();
    for h in handles {
        total.merge(h.await.context("insert client panicked")?);
    }
    Ok(total)
}

/// A thread with its own runtime and connection that scrapes `/metrics` and `/status` back to
/// back until stopped.
struct Scraper {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<ScrapeLoad>>,
}

impl Scraper {
    fn start(admin: SocketAddr) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut load = ScrapeLoad::default();
                let mut conn = Conn::new(admin);
                let t0 = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    let mut ok = true;
                    for path in [METRICS, STATUS] {
                        let res = conn.get(path).await;
                        let err = match res {
                            Ok((status, _)) if status.is_success() => None,
                            Ok((status, _)) => Some(format!("GET {path}: HTTP {status}")),
                            Err(e) => Some(format!("GET {path}: {e:#}")),
                        };
                        if let Some(e) = err {
                            ok = false;
                            load.first_error.get_or_insert(e);
                        }
                    }
                    if ok {
                        load.scrapes += 1;
                    } else {
                        load.errors += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                load.seconds = t0.elapsed().as_secs_f64();
                Ok(load)
            })
        });
        Scraper { stop, handle }
    }

    fn stop(self) -> Result<ScrapeLoad> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the scraper thread panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p50: f64, p99: f64, ops_per_sec: f64) -> Summary {
        let mut s = Summary::from_hist(&crate::stats::new_hist(), 0, 1.0);
        s.ops = 100;
        s.p50_us = p50;
        s.p99_us = p99;
        s.ops_per_sec = ops_per_sec;
        s
    }

    fn report(quick: bool) -> AdminReport {
        let endpoint = |path, p50, cpu| Endpoint {
            path,
            latency: summary(p50, p50 * 2.0, 1000.0),
            first_error: None,
            body_bytes: 10,
            node_cpu_us: Some(cpu),
        };
        AdminReport {
            quick,
            endpoints: vec![
                endpoint(METRICS, 600.0, 400.0),
                endpoint(STATUS, 300.0, 200.0),
                endpoint(HEALTH, 100.0, 50.0),
            ],
            plain: Some(InsertSide {
                scraping: false,
                summary: summary(1000.0, 4000.0, 2000.0),
                first_error: None,
            }),
            scraped: Some(InsertSide {
                scraping: true,
                summary: summary(1100.0, 6000.0, 1800.0),
                first_error: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ratios_and_goals() {
        let r = report(false);
        assert_eq!(r.endpoint_ratio(METRICS, HEALTH), Some((6.0, 6.0)));
        let (p50, p99, ops) = r.insert_ratio().unwrap();
        assert!((p50 - 1.1).abs() < 1e-9 && (p99 - 1.5).abs() < 1e-9 && (ops - 0.9).abs() < 1e-9);
        assert_eq!(r.scrape_cpu_us(), Some(600.0));
        let goals = r.goals();
        assert!(goals.iter().all(|g| g.met == Some(true)), "{goals:#?}");
        assert_eq!(goals[2].measured.as_deref(), Some("0.0060 %"));

        // Quick mode reports without judging.
        let goals = report(true).goals();
        assert!(goals.iter().all(|g| g.met.is_none()), "{goals:#?}");
        assert!(goals[1].measured.as_deref().unwrap().contains("not judged"));
    }
}
