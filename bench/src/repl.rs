//! Replication benchmarks (issue 5), on clusters of three real `outpost serve` processes
//! (see `cluster.rs`):
//!
//! - **repl-lag**: open-loop writes at `--repl-rate` (1,000/s), paced, each a single-row
//!   insert with an explicit id (node k writes ids (k+1)·10⁹ + n, so nodes never collide), once
//!   all on n1 ("n1 → n2, n3") and once spread round-robin over the three nodes. Pollers on
//!   every other node run `SELECT id FROM t WHERE id >= <oldest unseen>` every
//!   `--repl-poll-us` (1 ms) and record when each id first shows; the lag of a write on an
//!   observer is that time minus the write's acknowledgement on its origin. Next to it, the
//!   server-side histogram `outpost_sync_lag_seconds` (origin commit → local apply), and the
//!   sync bytes sent per write.
//! - **repl-throughput**: closed-loop inserts on n1 at `--repl-concurrency` clients; n1's and
//!   n3's `/status` log vectors sampled every 200 ms give n3's apply rate and its backlog; after
//!   the writes stop, the time n3 takes to catch up.
//! - **repl-partition**: n3's links go through fault proxies; writes at `--partition-rate` on
//!   each side (n1/n2 alternately, and n3); the proxies cut n3 off for `--partition-seconds`,
//!   then heal; convergence = time from the heal until every node has every entry any node had
//!   at the heal (writes continue); then writes stop, the log vectors must become equal and
//!   `outpost check --digest` must print the same digest on every node.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::Method;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::client::{check_op, execute_body, Arg, Check, Conn, PIPELINE_PATH};
use crate::cluster::{self, Cluster, NodeSpec, SyncMetrics, Vector};
use crate::proxy::Fault;
use crate::report::{Goal, Report};
use crate::stats::{self, fmt_rate, fmt_us, new_hist, Summary};
use crate::workload::random_value;
use crate::Plan;

/// Node k (0-based) writes ids `(k + 1) * ID_BASE + n`, n = 1, 2, ...
pub const ID_BASE: i64 = 1_000_000_000;
const INSERT_ID_SQL: &str = "INSERT INTO t(id, v) VALUES (?, ?)";
const NODES: usize = 3;

/// DESIGN.md: replication lag p99 ≤ 25 ms at 1,000 writes/s; the issue: ≤ 50 ms.
const LAG_P99_DESIGN_MS: f64 = 25.0;
const LAG_P99_ISSUE_MS: f64 = 50.0;
/// DESIGN.md: ≥ 3,000 replicated writes/s sustained.
const REPLICATED_OPS_GOAL: f64 = 3_000.0;
/// Issue 5: convergence ≤ 5 s after a partition heals.
const CONVERGE_GOAL_S: f64 = 5.0;
/// How long acknowledged writes may take to show on every node once writes stop, and n3 to
/// catch up after the throughput run, before the run counts as "did not converge"
/// (shorter in quick mode, so that a broken replication fails CI quickly).
fn drain_timeout(plan: &Plan) -> Duration {
    Duration::from_secs(if plan.mode == "quick" { 20 } else { 60 })
}

/// After a heal: how long to wait for convergence.
fn converge_timeout(plan: &Plan) -> Duration {
    Duration::from_secs(if plan.mode == "quick" { 30 } else { 120 })
}

/// Once the partition run's writes stop: how long to wait for equal log vectors.
fn equal_timeout(plan: &Plan) -> Duration {
    Duration::from_secs(if plan.mode == "quick" { 20 } else { 60 })
}

fn origin_base(node: usize) -> i64 {
    (node as i64 + 1) * ID_BASE
}

/// The next id each node writes.
pub struct Ids([AtomicI64; NODES]);

impl Ids {
    fn new() -> Self {
        Ids(std::array::from_fn(|k| AtomicI64::new(origin_base(k) + 1)))
    }

    fn peek(&self, node: usize) -> i64 {
        self.0[node].load(Ordering::Relaxed)
    }

    fn next(&self, node: usize) -> i64 {
        self.0[node].fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Target {
    api: SocketAddr,
    token: String,
}

impl Target {
    fn conn(&self) -> Conn {
        Conn::with_token(self.api, Some(&self.token))
    }
}

fn targets(c: &Cluster) -> Vec<Target> {
    c.nodes
        .iter()
        .map(|n| Target {
            api: n.proc.api,
            token: n.token.clone(),
        })
        .collect()
}

// --- who saw which write when ------------------------------------------------------------------

struct Rec {
    acked: Option<Instant>,
    measured: bool,
    seen: [Option<Instant>; NODES],
}

struct OriginTrack {
    first: i64,
    recs: Vec<Rec>,
    /// Per observer: ids issued and neither seen there nor failed.
    outstanding: [BTreeSet<i64>; NODES],
}

/// Writes issued in a lag run and when each became visible on each observing node.
pub struct Tracker {
    /// `observe[origin][observer]`.
    observe: [[bool; NODES]; NODES],
    origins: [Mutex<OriginTrack>; NODES],
}

impl Tracker {
    fn new(ids: &Ids, observe: [[bool; NODES]; NODES]) -> Self {
        Tracker {
            observe,
            origins: std::array::from_fn(|k| {
                Mutex::new(OriginTrack {
                    first: ids.peek(k),
                    recs: Vec::new(),
                    outstanding: Default::default(),
                })
            }),
        }
    }

    fn issue(&self, origin: usize, id: i64, measured: bool) {
        let mut o = self.origins[origin].lock().unwrap();
        debug_assert_eq!(id, o.first + o.recs.len() as i64);
        o.recs.push(Rec {
            acked: None,
            measured,
            seen: [None; NODES],
        });
        for j in 0..NODES {
            if self.observe[origin][j] {
                o.outstanding[j].insert(id);
            }
        }
    }

    fn rec(o: &mut OriginTrack, id: i64) -> Option<&mut Rec> {
        let i = usize::try_from(id - o.first).ok()?;
        o.recs.get_mut(i)
    }

    fn ack(&self, origin: usize, id: i64, at: Instant) {
        let mut o = self.origins[origin].lock().unwrap();
        if let Some(r) = Self::rec(&mut o, id) {
            r.acked = Some(at);
        }
    }

    /// A failed write may or may not have committed: stop waiting for it.
    fn fail(&self, origin: usize, id: i64) {
        let mut o = self.origins[origin].lock().unwrap();
        for j in 0..NODES {
            o.outstanding[j].remove(&id);
        }
    }

    fn seen(&self, observer: usize, ids: &[i64], at: Instant) {
        for &id in ids {
            let origin = (id / ID_BASE - 1) as usize;
            if origin >= NODES || !self.observe[origin][observer] {
                continue;
            }
            let mut o = self.origins[origin].lock().unwrap();
            if let Some(r) = Self::rec(&mut o, id) {
                r.seen[observer].get_or_insert(at);
                o.outstanding[observer].remove(&id);
            }
        }
    }

    /// Id ranges to poll on `observer`: from the oldest unseen id of each origin it watches to
    /// the end of that origin's range.
    fn ranges(&self, observer: usize) -> Vec<(i64, i64)> {
        (0..NODES)
            .filter(|&k| self.observe[k][observer])
            .filter_map(|k| {
                let o = self.origins[k].lock().unwrap();
                o.outstanding[observer]
                    .first()
                    .map(|&from| (from, origin_base(k) + ID_BASE))
            })
            .collect()
    }

    fn outstanding(&self, observer: usize) -> usize {
        self.origins
            .iter()
            .map(|o| o.lock().unwrap().outstanding[observer].len())
            .sum()
    }

    /// Lag of the measured, acknowledged writes of `origin` on `observer`.
    fn pair(&self, origin: usize, observer: usize, names: &[String]) -> PairLag {
        let o = self.origins[origin].lock().unwrap();
        let mut hist = new_hist();
        let (mut before_ack, mut unseen) = (0, 0);
        for r in o.recs.iter().filter(|r| r.measured) {
            let Some(acked) = r.acked else { continue };
            match r.seen[observer] {
                Some(seen) if seen >= acked => {
                    let ns = u64::try_from((seen - acked).as_nanos()).unwrap_or(u64::MAX);
                    hist.saturating_record(ns.max(1));
                }
                Some(_) => {
                    before_ack += 1;
                    hist.saturating_record(1);
                }
                None => unseen += 1,
            }
        }
        PairLag {
            origin: names[origin].clone(),
            observer: names[observer].clone(),
            lag: Summary::from_hist(&hist, 0, 0.0),
            visible_before_ack: before_ack,
            unseen,
            hist: Some(hist),
        }
    }
}

/// End-to-end lag of one (origin, observer) pair, or of several merged.
#[derive(Clone, Debug, Serialize)]
pub struct PairLag {
    pub origin: String,
    pub observer: String,
    /// Acknowledgement on the origin → first poll of the observer that returned the row
    /// (`ops` = measured writes seen there).
    pub lag: Summary,
    /// Seen on the observer before the origin's reply reached the client (counted as 0).
    pub visible_before_ack: u64,
    /// Acknowledged but never seen within the drain timeout.
    pub unseen: u64,
    #[serde(skip)]
    hist: Option<hdrhistogram::Histogram<u64>>,
}

impl PairLag {
    fn merge(name: &str, pairs: &[PairLag]) -> PairLag {
        let mut hist = new_hist();
        for p in pairs {
            if let Some(h) = &p.hist {
                let _ = hist.add(h);
            }
        }
        PairLag {
            origin: name.into(),
            observer: "others".into(),
            lag: Summary::from_hist(&hist, 0, 0.0),
            visible_before_ack: pairs.iter().map(|p| p.visible_before_ack).sum(),
            unseen: pairs.iter().map(|p| p.unseen).sum(),
            hist: Some(hist),
        }
    }

    fn describe(&self) -> String {
        let l = &self.lag;
        format!(
            "{:>3} → {:<6} {:>6} writes  p50 {:>8}  p90 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}  seen before ack {}, never seen {}",
            self.origin,
            self.observer,
            l.ops,
            fmt_us(l.p50_us),
            fmt_us(l.p90_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us),
            self.visible_before_ack,
            self.unseen
        )
    }
}

// --- load ------------------------------------------------------------------------------------

/// What an open-loop or closed-loop writer did.
#[derive(Debug, Default)]
struct WriteStats {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// Measured writes: scheduled (open loop) or sent (closed loop) → reply, ok ones.
    latency: Option<hdrhistogram::Histogram<u64>>,
    measured_ok: u64,
    /// Open loop: the most a write was dispatched after its scheduled time.
    max_behind: Duration,
}

impl WriteStats {
    fn new() -> Self {
        WriteStats {
            latency: Some(new_hist()),
            ..Default::default()
        }
    }

    fn record(&mut self, measured: bool, latency: Duration, err: Option<String>) {
        match err {
            None => {
                self.ok += 1;
                if measured {
                    self.measured_ok += 1;
                    if let Some(h) = &mut self.latency {
                        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
                        h.saturating_record(ns.max(1));
                    }
                }
            }
            Some(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn summary(&self, secs: f64) -> Summary {
        Summary::from_hist(self.latency.as_ref().expect("histogram"), self.errors, secs)
    }
}

/// Paced writes: write i is due at `start + i / rate` on node `pick[i % pick.len()]`,
/// whatever happened to the earlier ones (connections from a per-node pool; a new one when
/// all are busy). Writes due during `warmup` are not measured. Stops at the end of
/// `duration` or when `stop` is set.
struct OpenLoop {
    rate: f64,
    warmup: Duration,
    duration: Duration,
    targets: Vec<Target>,
    pick: Vec<usize>,
}

async fn open_loop(
    cfg: OpenLoop,
    ids: Arc<Ids>,
    tracker: Option<Arc<Tracker>>,
    stop: Arc<AtomicBool>,
) -> Result<WriteStats> {
    // Idle connections with when they were last used; one idle longer than the server's
    // keep-alive (actix: 5 s) may be closed under a request, so older ones are dropped.
    type Pool = Arc<Mutex<Vec<(Conn, Instant)>>>;
    const MAX_IDLE: Duration = Duration::from_secs(2);
    let pools: Vec<Pool> = (0..NODES).map(|_| Pool::default()).collect();
    let used: BTreeSet<usize> = cfg.pick.iter().copied().collect();
    for &n in &used {
        for _ in 0..4 {
            let mut c = cfg.targets[n].conn();
            c.connect().await?;
            pools[n].lock().unwrap().push((c, Instant::now()));
        }
    }
    let mut rng = StdRng::from_entropy();
    let start = Instant::now() + Duration::from_millis(5);
    let measure_start = start + cfg.warmup;
    let end = measure_start + cfg.duration;
    let period = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
    let mut stats = WriteStats::new();
    let mut tasks = tokio::task::JoinSet::new();
    type Done = (bool, Duration, Option<String>);
    let record = |stats: &mut WriteStats, r: Result<Done, tokio::task::JoinError>| match r {
        Ok((measured, latency, err)) => stats.record(measured, latency, err),
        Err(e) => stats.record(false, Duration::ZERO, Some(format!("writer task: {e}"))),
    };
    for i in 0u64.. {
        let due = start + period.mul_f64(i as f64);
        if due >= end || stop.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        stats.max_behind = stats
            .max_behind
            .max(Instant::now().saturating_duration_since(due));
        let node = cfg.pick[(i as usize) % cfg.pick.len()];
        let id = ids.next(node);
        let measured = due >= measure_start;
        if let Some(t) = &tracker {
            t.issue(node, id, measured);
        }
        let body = execute_body(
            INSERT_ID_SQL,
            &[Arg::Int(id), Arg::Text(&random_value(&mut rng))],
        );
        let pool = pools[node].clone();
        let target = cfg.targets[node].clone();
        let tracker = tracker.clone();
        tasks.spawn(async move {
            let popped = {
                let mut idle = pool.lock().unwrap();
                idle.retain(|(_, at)| at.elapsed() < MAX_IDLE);
                idle.pop().map(|(c, _)| c)
            };
            let mut conn = popped.unwrap_or_else(|| target.conn());
            let res = conn
                .request(Method::POST, PIPELINE_PATH, Bytes::from(body))
                .await;
            let done = Instant::now();
            let res = res.and_then(|(status, body)| check_op(Check::OneAffected, status, &body));
            if let Some(t) = &tracker {
                match &res {
                    Ok(()) => t.ack(node, id, done),
                    Err(_) => t.fail(node, id),
                }
            }
            pool.lock().unwrap().push((conn, Instant::now()));
            (measured, done - due, res.err().map(|e| format!("{e:#}")))
        });
        while let Some(r) = tasks.try_join_next() {
            record(&mut stats, r);
        }
    }
    while let Some(r) = tasks.join_next().await {
        record(&mut stats, r);
    }
    Ok(stats)
}

/// `SELECT id FROM t WHERE id >= ? AND id < ?` over each range, UNION ALL: the ids.
async fn poll_ids(conn: &mut Conn, ranges: &[(i64, i64)]) -> Result<Vec<i64>> {
    let sql = vec!["SELECT id FROM t WHERE id >= ? AND id < ?"; ranges.len()].join(" UNION ALL ");
    let args: Vec<Arg<'_>> = ranges
        .iter()
        .flat_map(|&(a, b)| [Arg::Int(a), Arg::Int(b)])
        .collect();
    let (status, body) = conn
        .request(
            Method::POST,
            PIPELINE_PATH,
            Bytes::from(execute_body(&sql, &args)),
        )
        .await?;
    anyhow::ensure!(status.is_success(), "HTTP {status}");
    let v: serde_json::Value = serde_json::from_slice(&body).context("poll: not JSON")?;
    let res = &v["results"][0];
    anyhow::ensure!(res["type"] == "ok", "poll failed: {res}");
    let rows = res["response"]["result"]["rows"]
        .as_array()
        .context("poll: no rows")?;
    rows.iter()
        .map(|r| {
            let cell = &r[0]["value"];
            cell.as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| cell.as_i64())
                .with_context(|| format!("poll: bad id {cell}"))
        })
        .collect()
}

#[derive(Debug, Default)]
struct PollStats {
    polls: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Poll `observer` every `interval` for the rows the tracker waits for, until `done` is set
/// and nothing is outstanding (or `drain` has passed since `done`).
async fn poller(
    observer: usize,
    target: Target,
    tracker: Arc<Tracker>,
    interval: Duration,
    done: Arc<AtomicBool>,
    drain: Duration,
) -> PollStats {
    let mut stats = PollStats::default();
    let mut conn = target.conn();
    if let Err(e) = conn.connect().await {
        stats.errors += 1;
        stats.first_error = Some(format!("{e:#}"));
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deadline: Option<Instant> = None;
    loop {
        tick.tick().await;
        if done.load(Ordering::Relaxed) {
            if tracker.outstanding(observer) == 0 {
                break;
            }
            if Instant::now() > *deadline.get_or_insert(Instant::now() + drain) {
                break;
            }
        }
        let ranges = tracker.ranges(observer);
        if ranges.is_empty() {
            continue;
        }
        stats.polls += 1;
        match poll_ids(&mut conn, &ranges).await {
            Ok(ids) => tracker.seen(observer, &ids, Instant::now()),
            Err(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert_with(|| format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    stats
}

// --- disk -----------------------------------------------------------------------------------

/// fdatasync latency of the disk the nodes live on: `n` overwrites of one 4 KiB block of a file
/// in `dir`, each followed by `fdatasync` (the cost under every commit and apply here).
#[derive(Clone, Debug, Serialize)]
pub struct FsyncProbe {
    pub when: String,
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
}

fn fsync_probe(dir: &Path, when: &str, n: usize) -> Option<FsyncProbe> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).ok()?;
    let block = [0x5au8; 4096];
    let mut hist = new_hist();
    for _ in 0..n {
        let t = Instant::now();
        f.seek(SeekFrom::Start(0)).ok()?;
        f.write_all(&block).ok()?;
        f.sync_data().ok()?;
        hist.saturating_record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let _ = std::fs::remove_file(&path);
    let s = Summary::from_hist(&hist, 0, 0.0);
    Some(FsyncProbe {
        when: when.into(),
        samples: n,
        p50_us: s.p50_us,
        p99_us: s.p99_us,
    })
}

// --- CPU ------------------------------------------------------------------------------------

/// CPU time and run-queue wait (seconds, from `/proc/PID/task/TID/schedstat`) of each thread
/// group of a process: threads named alike (`outpost-reader-3` → `outpost-reader`,
/// `actix-rt|system:0|arbiter:1` → `actix-rt|system`) are summed. The wait is time a thread
/// was runnable but not running: CPU contention.
fn cpu_by_group(pid: u32) -> Vec<(String, f64, f64)> {
    let mut groups: Vec<(String, f64, f64)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return groups;
    };
    for t in tasks.flatten() {
        let (Ok(comm), Ok(sched)) = (
            std::fs::read_to_string(t.path().join("comm")),
            std::fs::read_to_string(t.path().join("schedstat")),
        ) else {
            continue;
        };
        let mut f = sched
            .split_whitespace()
            .map(|x| x.parse::<f64>().unwrap_or(0.0) / 1e9);
        let (Some(cpu), Some(wait)) = (f.next(), f.next()) else {
            continue;
        };
        let group = thread_group(comm.trim());
        match groups.iter_mut().find(|g| g.0 == group) {
            Some(g) => {
                g.1 += cpu;
                g.2 += wait;
            }
            None => groups.push((group, cpu, wait)),
        }
    }
    groups
}

fn thread_group(comm: &str) -> String {
    let base = comm.split(':').next().unwrap_or(comm);
    base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '#')
        .to_string()
}

/// CPU used by each node (and the harness itself) between two snapshots.
struct CpuSnap {
    at: Instant,
    nodes: Vec<Vec<(String, f64, f64)>>,
    bench: f64,
}

impl CpuSnap {
    fn take(c: &Cluster) -> CpuSnap {
        CpuSnap {
            at: Instant::now(),
            nodes: c.nodes.iter().map(|n| cpu_by_group(n.proc.pid())).collect(),
            bench: cpu_by_group(std::process::id()).iter().map(|g| g.1).sum(),
        }
    }

    fn since(&self, before: &CpuSnap, names: &[String]) -> CpuUse {
        let secs = (self.at - before.at).as_secs_f64().max(1e-9);
        let nodes = self
            .nodes
            .iter()
            .zip(&before.nodes)
            .zip(names)
            .map(|((a, b), name)| {
                let mut threads: Vec<ThreadCpu> = a
                    .iter()
                    .map(|(g, cpu, wait)| {
                        let was = b.iter().find(|x| &x.0 == g);
                        ThreadCpu {
                            group: g.clone(),
                            cores: (cpu - was.map_or(0.0, |x| x.1)).max(0.0) / secs,
                            runq_wait: (wait - was.map_or(0.0, |x| x.2)).max(0.0) / secs,
                        }
                    })
                    .filter(|t| t.cores >= 0.005 || t.runq_wait >= 0.005)
                    .collect();
                threads.sort_by(|x, y| y.cores.total_cmp(&x.cores));
                NodeCpu {
                    node: name.clone(),
                    cores: threads.iter().map(|t| t.cores).sum(),
                    runq_wait: threads.iter().map(|t| t.runq_wait).sum(),
                    threads,
                }
            })
            .collect();
        CpuUse {
            seconds: secs,
            nodes,
            bench_cores: (self.bench - before.bench).max(0.0) / secs,
            cores_available: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ThreadCpu {
    pub group: String,
    /// Cores used on average over the run.
    pub cores: f64,
    /// Seconds per second spent runnable but waiting for a CPU (summed over the group).
    pub runq_wait: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeCpu {
    pub node: String,
    pub cores: f64,
    pub runq_wait: f64,
    /// By thread group, busiest first.
    pub threads: Vec<ThreadCpu>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuUse {
    pub seconds: f64,
    pub nodes: Vec<NodeCpu>,
    pub bench_cores: f64,
    pub cores_available: usize,
}

impl CpuUse {
    fn describe(&self) -> String {
        use std::fmt::Write as _;
        let total: f64 = self.nodes.iter().map(|n| n.cores).sum::<f64>() + self.bench_cores;
        let mut s = format!(
            "CPU over {:.1}s: {:.2} of {} cores (harness {:.2}); per node cores used / run-queue wait (s/s)",
            self.seconds, total, self.cores_available, self.bench_cores
        );
        for n in &self.nodes {
            let top: Vec<String> = n
                .threads
                .iter()
                .take(4)
                .map(|t| format!("{} {:.2}/{:.2}", t.group, t.cores, t.runq_wait))
                .collect();
            let _ = write!(
                s,
                "; {} {:.2}/{:.2} ({})",
                n.node,
                n.cores,
                n.runq_wait,
                top.join(", ")
            );
        }
        s
    }
}

// --- results ---------------------------------------------------------------------------------

/// The server-side lag histogram of one node (or all), over one run.
#[derive(Clone, Debug, Serialize)]
pub struct ServerLag {
    pub node: String,
    pub applied: u64,
    /// Interpolated within the histogram's buckets (1, 2.5, 5, 10, 25, 50, 100 ms, ...);
    /// `None` if beyond the last finite bucket or nothing was applied.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The quantile's bucket bounds, e.g. "≤ 2.5 ms".
    pub p50_bucket: String,
    pub p99_bucket: String,
}

impl ServerLag {
    fn of(node: &str, m: &SyncMetrics) -> ServerLag {
        let q = |p: f64| m.lag_quantile(p);
        let ms = |x: Option<Result<f64, f64>>| x.and_then(|r| r.ok()).map(|s| s * 1000.0);
        let bucket = |x: Option<Result<f64, f64>>| match x {
            None => "-".to_string(),
            Some(Err(b)) => format!("> {} ms", b * 1000.0),
            Some(Ok(v)) => {
                let le = m
                    .lag_buckets
                    .iter()
                    .find(|b| b.0 >= v)
                    .map_or(f64::INFINITY, |b| b.0);
                format!("≤ {} ms", le * 1000.0)
            }
        };
        ServerLag {
            node: node.into(),
            applied: m.lag_count.max(0.0) as u64,
            p50_ms: ms(q(0.5)),
            p99_ms: ms(q(0.99)),
            p50_bucket: bucket(q(0.5)),
            p99_bucket: bucket(q(0.99)),
        }
    }

    fn describe(&self) -> String {
        let f = |x: Option<f64>, b: &str| match x {
            Some(v) => format!("{v:.1} ms ({b})"),
            None => b.to_string(),
        };
        format!(
            "{:<4} {:>6} applied  p50 {:<22} p99 {}",
            self.node,
            self.applied,
            f(self.p50_ms, &self.p50_bucket),
            f(self.p99_ms, &self.p99_bucket)
        )
    }
}

/// Sync traffic of a run, from the nodes' counters.
#[derive(Clone, Debug, Serialize)]
pub struct Traffic {
    /// Writes acknowledged in the run (warm-up included, as the counters are).
    pub writes: u64,
    pub bytes_sent: f64,
    pub entries_sent: f64,
    pub bytes_per_write: Option<f64>,
    /// bytes_per_write / 2: each write must reach the two other nodes.
    pub bytes_per_copy: Option<f64>,
    /// Entries sent per write (2 = each write shipped once to each other node).
    pub entries_per_write: Option<f64>,
}

impl Traffic {
    fn new(writes: u64, m: &SyncMetrics) -> Traffic {
        let per = |x: f64| (writes > 0).then(|| x / writes as f64);
        Traffic {
            writes,
            bytes_sent: m.bytes_sent,
            entries_sent: m.entries_sent,
            bytes_per_write: per(m.bytes_sent),
            bytes_per_copy: per(m.bytes_sent).map(|b| b / (NODES - 1) as f64),
            entries_per_write: per(m.entries_sent),
        }
    }

    fn describe(&self) -> String {
        let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.0}"));
        format!(
            "{} writes, {:.2} MB sent: {} B per write, {} B per replicated copy, {:.2} entries sent per write",
            self.writes,
            self.bytes_sent / 1e6,
            f(self.bytes_per_write),
            f(self.bytes_per_copy),
            self.entries_per_write.unwrap_or(0.0)
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LagRun {
    pub name: String,
    pub writes_on: String,
    pub rate: f64,
    pub seconds: f64,
    /// Measured writes: scheduled time → reply (open loop: no coordinated omission).
    pub writes: Summary,
    pub write_errors: u64,
    pub first_error: Option<String>,
    pub max_dispatch_behind_ms: f64,
    pub poll_interval_us: u64,
    pub polls: u64,
    pub poll_errors: u64,
    pub pairs: Vec<PairLag>,
    /// Every pair merged.
    pub all: PairLag,
    /// `outpost_sync_lag_seconds` per node, and all nodes merged.
    pub server: Vec<ServerLag>,
    pub traffic: Traffic,
    pub cpu: CpuUse,
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t: f64,
    pub origin_seq: u64,
    pub n3_has: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ThroughputRun {
    pub concurrency: usize,
    pub seconds: f64,
    /// Inserts on n1, closed loop (measured window).
    pub writes: Summary,
    pub first_error: Option<String>,
    /// n1's own log seq growth over the measured window.
    pub n1_commits_per_sec: f64,
    /// n3's copy of n1's log over the same window: the replicated rate.
    pub n3_applied_per_sec: f64,
    pub backlog_max: u64,
    pub backlog_at_end: u64,
    /// From the last write's reply until n3 had every write.
    pub drain_seconds: Option<f64>,
    pub server_n3: ServerLag,
    pub traffic: Traffic,
    pub cpu: CpuUse,
    pub samples: Vec<Sample>,
    pub problem: Option<String>,
}

impl ThroughputRun {
    /// The sustained replicated rate: what n3 applied while n1 wrote flat out.
    pub fn replicated_per_sec(&self) -> f64 {
        self.n3_applied_per_sec.min(self.n1_commits_per_sec)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PartitionRun {
    pub fault: Fault,
    pub partition_seconds: f64,
    pub rate_per_side: f64,
    pub writes_ok: u64,
    pub write_errors: u64,
    pub first_error: Option<String>,
    /// At the heal: entries n3 lacked (written on n1/n2), and entries n1 lacked (from n3).
    pub n3_missing_at_heal: u64,
    pub n1_missing_at_heal: u64,
    /// Heal → n3's links both connected again (first /status that shows it).
    pub reconnect_seconds: Option<f64>,
    /// Heal → every node has every entry any node had at the heal (writes continue).
    pub converge_seconds: Option<f64>,
    /// Writes stop → the three log vectors are equal.
    pub equal_seconds_after_stop: Option<f64>,
    pub digests: Vec<String>,
    pub digests_equal: Option<bool>,
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplReport {
    pub lag: Vec<LagRun>,
    pub throughput: Vec<ThroughputRun>,
    pub partition: Option<PartitionRun>,
    /// Environment of the cluster nodes (sync settings change convergence).
    pub node_env: Vec<String>,
    /// fdatasync latency of the nodes' disk before and after the runs.
    pub fsync: Vec<FsyncProbe>,
}

impl ReplReport {
    fn runs(&self) -> impl Iterator<Item = &Option<String>> {
        self.lag
            .iter()
            .map(|r| &r.problem)
            .chain(self.throughput.iter().map(|r| &r.problem))
            .chain(self.partition.iter().map(|r| &r.problem))
    }

    pub fn passed(&self) -> usize {
        self.runs().filter(|p| p.is_none()).count()
    }

    pub fn problems(&self) -> Vec<String> {
        self.runs().filter_map(|p| p.clone()).collect()
    }

    pub fn goals(&self) -> Vec<Goal> {
        let mut goals = Vec::new();
        let n1 = self.lag.iter().find(|r| r.name == "n1");
        let e2e = n1.and_then(|r| r.pairs.iter().find(|p| p.observer == "n3"));
        let lag_goal = |goal: f64, who: &str| Goal {
            measure: format!("replication lag p99, write on n1 → visible on n3 ({who})"),
            goal: format!("≤ {goal:.0} ms"),
            measured: e2e.map(|p| {
                format!(
                    "{} at {}/s",
                    fmt_us(p.lag.p99_us),
                    fmt_rate(n1.map_or(0.0, |r| r.rate))
                )
            }),
            met: e2e
                .filter(|p| p.lag.ops > 0)
                .map(|p| p.lag.p99_us <= goal * 1000.0),
        };
        goals.push(lag_goal(LAG_P99_DESIGN_MS, "DESIGN"));
        goals.push(lag_goal(LAG_P99_ISSUE_MS, "issue 5"));
        if let Some(r) = self.lag.iter().find(|r| r.name == "spread") {
            goals.push(Goal {
                measure: "replication lag p99, writes on all 3 nodes, all pairs (DESIGN)".into(),
                goal: format!("≤ {LAG_P99_DESIGN_MS:.0} ms"),
                measured: Some(format!(
                    "{} at {}/s",
                    fmt_us(r.all.lag.p99_us),
                    fmt_rate(r.rate)
                )),
                met: (r.all.lag.ops > 0).then_some(r.all.lag.p99_us <= LAG_P99_DESIGN_MS * 1000.0),
            });
        }
        let best = self
            .throughput
            .iter()
            .max_by(|a, b| a.replicated_per_sec().total_cmp(&b.replicated_per_sec()));
        goals.push(Goal {
            measure: "replicated writes/s sustained (n1 closed loop, n3 applied)".into(),
            goal: format!("≥ {}/s", fmt_rate(REPLICATED_OPS_GOAL)),
            measured: best.map(|t| {
                format!(
                    "{}/s (c={})",
                    fmt_rate(t.replicated_per_sec()),
                    t.concurrency
                )
            }),
            met: best.map(|t| t.replicated_per_sec() >= REPLICATED_OPS_GOAL),
        });
        let p = self.partition.as_ref();
        goals.push(Goal {
            measure: "convergence after a partition heals (issue 5)".into(),
            goal: format!("≤ {CONVERGE_GOAL_S:.0} s"),
            measured: p.map(|p| {
                p.converge_seconds.map_or("did not converge".into(), |s| {
                    format!("{s:.2} s ({}s {})", p.partition_seconds, p.fault.name())
                })
            }),
            met: p.map(|p| p.converge_seconds.is_some_and(|s| s <= CONVERGE_GOAL_S)),
        });
        goals
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        if self.lag.is_empty() && self.throughput.is_empty() && self.partition.is_none() {
            return;
        }
        let _ = writeln!(
            out,
            "\nreplication: 3 nodes (n2 → n1, n3 → n1, n2), node env: {}",
            if self.node_env.is_empty() {
                "defaults".to_string()
            } else {
                self.node_env.join(" ")
            }
        );
        for f in &self.fsync {
            let _ = writeln!(
                out,
                "  disk {}: 4 KiB overwrite + fdatasync p50 {} p99 {} ({} samples)",
                f.when,
                fmt_us(f.p50_us),
                fmt_us(f.p99_us),
                f.samples
            );
        }
        for r in &self.lag {
            let _ = writeln!(
                out,
                "  lag, writes on {} at {}/s open loop for {:.1}s: {} ok ({}/s), {} errors, write p50 {} p99 {}, dispatch at most {:.1} ms late",
                r.writes_on,
                fmt_rate(r.rate),
                r.seconds,
                r.writes.ops,
                fmt_rate(r.writes.ops_per_sec),
                r.write_errors,
                fmt_us(r.writes.p50_us),
                fmt_us(r.writes.p99_us),
                r.max_dispatch_behind_ms
            );
            let _ = writeln!(
                out,
                "    end to end (ack on origin → seen by a poller every {} µs; {} polls, {} errors):",
                r.poll_interval_us, r.polls, r.poll_errors
            );
            for p in &r.pairs {
                let _ = writeln!(out, "      {}", p.describe());
            }
            if r.pairs.len() > 1 {
                let _ = writeln!(out, "      {}", r.all.describe());
            }
            let _ = writeln!(out, "    server outpost_sync_lag_seconds (commit → apply):");
            for s in &r.server {
                let _ = writeln!(out, "      {}", s.describe());
            }
            let _ = writeln!(out, "    sync traffic: {}", r.traffic.describe());
            let _ = writeln!(out, "    {}", r.cpu.describe());
            if let Some(p) = &r.problem {
                let _ = writeln!(out, "    FAILED: {p}");
            }
        }
        for t in &self.throughput {
            let _ = writeln!(
                out,
                "  throughput, closed loop on n1, {} clients, {:.1}s: n1 {}/s (p50 {} p99 {}, {} errors), n1 log +{}/s, n3 applied {}/s; backlog max {} at end {}; n3 caught up {} after the last write",
                t.concurrency,
                t.seconds,
                fmt_rate(t.writes.ops_per_sec),
                fmt_us(t.writes.p50_us),
                fmt_us(t.writes.p99_us),
                t.writes.errors,
                fmt_rate(t.n1_commits_per_sec),
                fmt_rate(t.n3_applied_per_sec),
                t.backlog_max,
                t.backlog_at_end,
                t.drain_seconds
                    .map_or("NEVER".to_string(), |s| format!("{s:.2}s"))
            );
            let _ = writeln!(out, "    server lag on {}", t.server_n3.describe());
            let _ = writeln!(out, "    sync traffic: {}", t.traffic.describe());
            let _ = writeln!(out, "    {}", t.cpu.describe());
            if let Some(p) = &t.problem {
                let _ = writeln!(out, "    FAILED: {p}");
            }
        }
        if let Some(p) = &self.partition {
            let s = |x: Option<f64>| x.map_or("NEVER".to_string(), |x| format!("{x:.2}s"));
            let _ = writeln!(
                out,
                "  partition: n3 cut off ({}) for {:.0}s, {}/s written on each side ({} ok, {} errors); at the heal n3 lacked {} entries, n1 lacked {}",
                p.fault.name(),
                p.partition_seconds,
                fmt_rate(p.rate_per_side),
                p.writes_ok,
                p.write_errors,
                p.n3_missing_at_heal,
                p.n1_missing_at_heal
            );
            let _ = writeln!(
                out,
                "    after the heal: n3 reconnected in {}, all nodes had everything from before the heal in {}; once writes stopped, vectors equal in {}; digests {}",
                s(p.reconnect_seconds),
                s(p.converge_seconds),
                s(p.equal_seconds_after_stop),
                match p.digests_equal {
                    Some(true) => "equal".to_string(),
                    Some(false) => format!("DIFFER: {}", p.digests.join(" ")),
                    None => "not compared".to_string(),
                }
            );
            if let Some(e) = &p.problem {
                let _ = writeln!(out, "    FAILED: {e}");
            }
        }
    }
}

// --- runs ------------------------------------------------------------------------------------

async fn all_metrics(c: &Cluster) -> Result<Vec<SyncMetrics>> {
    let mut v = Vec::new();
    for n in &c.nodes {
        v.push(SyncMetrics::parse(&cluster::metrics_text(n).await?));
    }
    Ok(v)
}

fn deltas(after: &[SyncMetrics], before: &[SyncMetrics]) -> Vec<SyncMetrics> {
    after.iter().zip(before).map(|(a, b)| a.since(b)).collect()
}

/// One lag run: writes on the nodes `writers` (round-robin), every other node observed.
async fn lag_run(
    c: &Cluster,
    plan: &Plan,
    ids: &Arc<Ids>,
    name: &str,
    writers: &[usize],
) -> Result<LagRun> {
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let mut observe = [[false; NODES]; NODES];
    for &o in writers {
        for (j, row) in observe[o].iter_mut().enumerate() {
            *row = j != o;
        }
    }
    let tracker = Arc::new(Tracker::new(ids, observe));
    let before = all_metrics(c).await?;
    let cpu_before = CpuSnap::take(c);
    let done = Arc::new(AtomicBool::new(false));
    let interval = Duration::from_micros(plan.repl_poll_us.max(100));
    let mut pollers = Vec::new();
    let tg = targets(c);
    for j in 0..NODES {
        if (0..NODES).any(|o| observe[o][j]) {
            pollers.push(tokio::spawn(poller(
                j,
                tg[j].clone(),
                tracker.clone(),
                interval,
                done.clone(),
                drain_timeout(plan),
            )));
        }
    }
    let cfg = OpenLoop {
        rate: plan.repl_rate,
        warmup: Duration::from_secs_f64(plan.warmup),
        duration: Duration::from_secs_f64(plan.seconds),
        targets: tg.clone(),
        pick: writers.to_vec(),
    };
    let writes = open_loop(
        cfg,
        ids.clone(),
        Some(tracker.clone()),
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    done.store(true, Ordering::Relaxed);
    let mut polls = PollStats::default();
    for p in pollers {
        let s = p.await.context("poller panicked")?;
        polls.polls += s.polls;
        polls.errors += s.errors;
        if polls.first_error.is_none() {
            polls.first_error = s.first_error;
        }
    }
    let cpu = CpuSnap::take(c).since(&cpu_before, &names);
    let writes = writes?;
    let after = all_metrics(c).await?;
    let d = deltas(&after, &before);
    let mut pairs = Vec::new();
    for &o in writers {
        for (j, &watched) in observe[o].iter().enumerate() {
            if watched {
                pairs.push(tracker.pair(o, j, &names));
            }
        }
    }
    let all = PairLag::merge("all", &pairs);
    let mut server: Vec<ServerLag> = d
        .iter()
        .zip(&names)
        .filter(|(m, _)| m.lag_count > 0.0)
        .map(|(m, n)| ServerLag::of(n, m))
        .collect();
    server.push(ServerLag::of("all", &SyncMetrics::sum(&d)));
    let summary = writes.summary(plan.seconds);
    let mut problem = None;
    if all.unseen > 0 {
        problem = Some(format!(
            "replication lag ({name}): {} acknowledged writes never showed on another node within {:?} ({})",
            all.unseen,
            drain_timeout(plan),
            pairs
                .iter()
                .filter(|p| p.unseen > 0)
                .map(|p| format!("{} → {}: {}", p.origin, p.observer, p.unseen))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    } else if stats::mostly_failed(writes.ok, writes.errors) {
        problem = Some(format!(
            "replication lag ({name}): {} of {} writes failed (first error: {})",
            writes.errors,
            writes.ok + writes.errors,
            writes.first_error.as_deref().unwrap_or("-")
        ));
    } else if all.lag.ops == 0 {
        problem = Some(format!("replication lag ({name}): no measured write"));
    }
    Ok(LagRun {
        name: name.into(),
        writes_on: writers
            .iter()
            .map(|&k| names[k].clone())
            .collect::<Vec<_>>()
            .join(","),
        rate: plan.repl_rate,
        seconds: plan.seconds,
        writes: summary,
        write_errors: writes.errors,
        first_error: writes.first_error.clone(),
        max_dispatch_behind_ms: writes.max_behind.as_secs_f64() * 1000.0,
        poll_interval_us: interval.as_micros() as u64,
        polls: polls.polls,
        poll_errors: polls.errors,
        pairs,
        all,
        server,
        traffic: Traffic::new(writes.ok, &SyncMetrics::sum(&d)),
        cpu,
        problem,
    })
}

/// (origin's own seq on n1, n3's copy of it).
async fn seqs(c: &Cluster) -> Result<(u64, u64)> {
    let o = &c.nodes[0].origin;
    let a = cluster::log_vector(&cluster::status(&c.nodes[0]).await?);
    let b = cluster::log_vector(&cluster::status(&c.nodes[2]).await?);
    Ok((
        a.get(o).copied().unwrap_or(0),
        b.get(o).copied().unwrap_or(0),
    ))
}

async fn throughput_run(
    c: &Cluster,
    plan: &Plan,
    ids: &Arc<Ids>,
    concurrency: usize,
) -> Result<ThroughputRun> {
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let before = all_metrics(c).await?;
    let cpu_before = CpuSnap::take(c);
    let t0 = Instant::now();
    let measure_start = t0 + Duration::from_secs_f64(plan.warmup);
    let end = measure_start + Duration::from_secs_f64(plan.seconds);
    let target = targets(c)[0].clone();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (ids, target) = (ids.clone(), target.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = StdRng::from_entropy();
            let mut conn = target.conn();
            let mut stats = WriteStats::new();
            if let Err(e) = conn.connect().await {
                stats.record(false, Duration::ZERO, Some(format!("{e:#}")));
            }
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let id = ids.next(0);
                let body = execute_body(
                    INSERT_ID_SQL,
                    &[Arg::Int(id), Arg::Text(&random_value(&mut rng))],
                );
                let res = conn
                    .request(Method::POST, PIPELINE_PATH, Bytes::from(body))
                    .await
                    .and_then(|(status, body)| check_op(Check::OneAffected, status, &body));
                let failed_transport = res.is_err();
                stats.record(
                    start >= measure_start,
                    start.elapsed(),
                    res.err().map(|e| format!("{e:#}")),
                );
                if failed_transport {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            stats
        }));
    }
    // Sample n1's and n3's view of n1's log while the writers run.
    let mut samples = Vec::new();
    loop {
        let now = Instant::now();
        let (a, b) = seqs(c).await?;
        samples.push((now, a, b));
        if now >= end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200).min(end - now)).await;
    }
    let mut stats = WriteStats::new();
    for w in workers {
        let s = w.await.context("writer panicked")?;
        stats.ok += s.ok;
        stats.errors += s.errors;
        stats.measured_ok += s.measured_ok;
        if stats.first_error.is_none() {
            stats.first_error = s.first_error;
        }
        if let (Some(h), Some(o)) = (&mut stats.latency, &s.latency) {
            let _ = h.add(o);
        }
    }
    let cpu = CpuSnap::take(c).since(&cpu_before, &names);
    let writes_done = Instant::now();
    let (final_seq, _) = seqs(c).await?;
    let mut drain_seconds = None;
    while writes_done.elapsed() < drain_timeout(plan) {
        let (_, has) = seqs(c).await?;
        if has >= final_seq {
            drain_seconds = Some(writes_done.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = all_metrics(c).await?;
    let d = deltas(&after, &before);

    let measured: Vec<&(Instant, u64, u64)> =
        samples.iter().filter(|s| s.0 >= measure_start).collect();
    let rate = |f: fn(&(Instant, u64, u64)) -> u64| match (measured.first(), measured.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => {
            (f(b).saturating_sub(f(a))) as f64 / (b.0 - a.0).as_secs_f64()
        }
        _ => 0.0,
    };
    let n1_commits_per_sec = rate(|s| s.1);
    let n3_applied_per_sec = rate(|s| s.2);
    let backlog = |s: &(Instant, u64, u64)| s.1.saturating_sub(s.2);
    let problem = if drain_seconds.is_none() {
        Some(format!(
            "replication throughput c={concurrency}: n3 did not catch up with n1 within {:?} after the writes stopped",
            drain_timeout(plan)
        ))
    } else if crate::stats::mostly_failed(stats.ok, stats.errors) {
        Some(format!(
            "replication throughput c={concurrency}: {} of {} writes failed (first error: {})",
            stats.errors,
            stats.ok + stats.errors,
            stats.first_error.as_deref().unwrap_or("-")
        ))
    } else {
        None
    };
    Ok(ThroughputRun {
        concurrency,
        seconds: plan.seconds,
        writes: stats.summary(plan.seconds),
        first_error: stats.first_error.clone(),
        n1_commits_per_sec,
        n3_applied_per_sec,
        backlog_max: measured.iter().map(|s| backlog(s)).max().unwrap_or(0),
        backlog_at_end: samples.last().map_or(0, backlog),
        drain_seconds,
        server_n3: ServerLag::of("n3", &d[2]),
        traffic: Traffic::new(stats.ok, &SyncMetrics::sum(&d)),
        cpu,
        samples: samples
            .iter()
            .map(|s| Sample {
                t: (s.0 - t0).as_secs_f64(),
                origin_seq: s.1,
                n3_has: s.2,
            })
            .collect(),
        problem,
    })
}

async fn partition_run(c: &Cluster, plan: &Plan) -> Result<PartitionRun> {
    let ids = Arc::new(Ids::new());
    let stop = Arc::new(AtomicBool::new(false));
    // Side A: n1 and n2 alternately; side B: n3; each at partition_rate.
    let cfg = OpenLoop {
        rate: plan.partition_rate * 2.0,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(3600),
        targets: targets(c),
        pick: vec![0, 2, 1, 2],
    };
    let writer = tokio::spawn(open_loop(cfg, ids, None, stop.clone()));
    let mut run = PartitionRun {
        fault: plan.partition_fault,
        partition_seconds: plan.partition_seconds,
        rate_per_side: plan.partition_rate,
        writes_ok: 0,
        write_errors: 0,
        first_error: None,
        n3_missing_at_heal: 0,
        n1_missing_at_heal: 0,
        reconnect_seconds: None,
        converge_seconds: None,
        equal_seconds_after_stop: None,
        digests: Vec::new(),
        digests_equal: None,
        problem: None,
    };
    let result = async {
        tokio::time::sleep(Duration::from_secs_f64(plan.warmup.max(0.5))).await;
        eprintln!(
            "  cutting n3 off ({}) for {:.0}s",
            plan.partition_fault.name(),
            plan.partition_seconds
        );
        c.set_fault(plan.partition_fault);
        tokio::time::sleep(Duration::from_secs_f64(plan.partition_seconds)).await;
        let v = c.vectors().await?;
        run.n3_missing_at_heal = cluster::missing(&v[2], &cluster::union(&v[..2]));
        run.n1_missing_at_heal = cluster::missing(&v[0], &v[2]);
        c.set_fault(Fault::Pass);
        let heal = Instant::now();
        let target = cluster::union(&c.vectors().await?);
        eprintln!(
            "  healed: n3 lacks {} entries, n1 lacks {}",
            run.n3_missing_at_heal, run.n1_missing_at_heal
        );
        while heal.elapsed() < converge_timeout(plan) {
            let mut vs: Vec<Vector> = Vec::new();
            for n in &c.nodes {
                let s = cluster::status(n).await?;
                if n.name == "n3"
                    && run.reconnect_seconds.is_none()
                    && cluster::connected_links(&s) >= 2
                {
                    run.reconnect_seconds = Some(heal.elapsed().as_secs_f64());
                }
                vs.push(cluster::log_vector(&s));
            }
            if vs.iter().all(|v| cluster::covers(v, &target)) {
                run.converge_seconds = Some(heal.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Keep writing a moment after convergence, then stop and wait for equal vectors.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.context("writer panicked")??;
    run.writes_ok = writes.ok;
    run.write_errors = writes.errors;
    run.first_error = writes.first_error.clone();
    result?;
    let stopped = Instant::now();
    while stopped.elapsed() < equal_timeout(plan) {
        let v = c.vectors().await?;
        if v.windows(2).all(|w| w[0] == w[1]) {
            run.equal_seconds_after_stop = Some(stopped.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if run.equal_seconds_after_stop.is_some() {
        let digests = c.digests();
        run.digests_equal =
            Some(digests.iter().all(|d| d.is_ok()) && digests.windows(2).all(|w| w[0] == w[1]));
        run.digests = digests
            .into_iter()
            .map(|d| d.unwrap_or_else(|e| format!("check failed: {e}")))
            .collect();
    }
    run.problem = if run.converge_seconds.is_none() {
        Some(format!(
            "partition: the nodes did not converge within {:?} of the heal (reconnected: {})",
            converge_timeout(plan),
            run.reconnect_seconds
                .map_or("no".to_string(), |s| format!("after {s:.2}s"))
        ))
    } else if run.equal_seconds_after_stop.is_none() {
        Some(format!(
            "partition: log vectors still differ {:?} after the writes stopped",
            equal_timeout(plan)
        ))
    } else if run.digests_equal != Some(true) {
        Some(format!(
            "partition: `outpost check --digest` differs or fails: {}",
            run.digests.join(" | ")
        ))
    } else if stats::mostly_failed(writes.ok, writes.errors) {
        Some(format!(
            "partition: {} of {} writes failed (first error: {})",
            writes.errors,
            writes.ok + writes.errors,
            writes.first_error.as_deref().unwrap_or("-")
        ))
    } else {
        None
    };
    Ok(run)
}

/// Stop every node; a node that died or did not stop cleanly is a problem.
fn stop_cluster(c: Cluster, report: &mut Report) {
    let Cluster { nodes, proxies, .. } = c;
    drop(proxies);
    for n in nodes {
        let mut proc = n.proc;
        if let Some(exit) = proc.exited() {
            report.problems.push(format!(
                "replication node {} exited during the run: {exit}; log tail:\n{}",
                n.name,
                crate::server::tail(&proc.log_path, 1500)
            ));
            continue;
        }
        let log = proc.log_path.clone();
        let s = proc.stop(Duration::from_secs(15));
        if !s.graceful {
            report.problems.push(format!(
                "replication node {} did not stop cleanly on SIGTERM: {}; log tail:\n{}",
                n.name,
                s.exit,
                crate::server::tail(&log, 1500)
            ));
        }
    }
}

/// The replication workloads that `plan` asks for.
pub fn run(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    spec: &NodeSpec<'_>,
    tmp: &Path,
    report: &mut Report,
) -> Result<()> {
    let mut repl = ReplReport {
        node_env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        ..Default::default()
    };
    let lag = plan.want("repl-lag");
    let thr = plan.want("repl-throughput");
    let mut err = None;
    let probes = if plan.mode == "quick" { 50 } else { 300 };
    repl.fsync.extend(fsync_probe(tmp, "before", probes));
    if lag || thr {
        eprintln!("== replication: 3-node mesh");
        match rt.block_on(Cluster::start(spec, &tmp.join("repl"), false)) {
            Ok(c) => {
                eprintln!("  {}", c.describe());
                let ids = Arc::new(Ids::new());
                let res = rt.block_on(async {
                    if lag {
                        for (name, writers) in [("n1", vec![0]), ("spread", vec![0, 1, 2])] {
                            eprintln!(
                                "  lag: writes on {name} at {}/s for {:.1}s",
                                fmt_rate(plan.repl_rate),
                                plan.warmup + plan.seconds
                            );
                            let r = lag_run(&c, plan, &ids, name, &writers).await?;
                            let n3 = r
                                .pairs
                                .iter()
                                .find(|p| p.observer == "n3")
                                .unwrap_or(&r.all);
                            eprintln!(
                                "    {} writes ok, lag to n3 p50 {} p99 {}; all pairs p99 {}; {}",
                                r.writes.ops,
                                fmt_us(n3.lag.p50_us),
                                fmt_us(n3.lag.p99_us),
                                fmt_us(r.all.lag.p99_us),
                                r.traffic.describe()
                            );
                            repl.lag.push(r);
                        }
                    }
                    if thr {
                        for &cc in &plan.repl_concurrency {
                            eprintln!("  throughput: closed loop on n1, {cc} clients");
                            let t = throughput_run(&c, plan, &ids, cc.max(1)).await?;
                            eprintln!(
                                "    n1 {}/s, n3 applied {}/s, backlog at end {}, drained in {}",
                                fmt_rate(t.writes.ops_per_sec),
                                fmt_rate(t.n3_applied_per_sec),
                                t.backlog_at_end,
                                t.drain_seconds
                                    .map_or("NEVER".into(), |s| format!("{s:.2}s"))
                            );
                            repl.throughput.push(t);
                        }
                    }
                    Ok::<_, anyhow::Error>(())
                });
                if let Err(e) = res {
                    err = Some(e.context(format!("replication run ({})", c.describe())));
                }
                stop_cluster(c, report);
            }
            Err(e) => err = Some(e.context("start the replication cluster")),
        }
    }
    if plan.want("repl-partition") && err.is_none() {
        eprintln!("== replication: partition (n3's links through proxies)");
        match rt.block_on(Cluster::start(spec, &tmp.join("partition"), true)) {
            Ok(c) => {
                eprintln!("  {}", c.describe());
                match rt.block_on(partition_run(&c, plan)) {
                    Ok(p) => {
                        eprintln!(
                            "    converged {} after the heal",
                            p.converge_seconds
                                .map_or("NEVER".into(), |s| format!("{s:.2}s"))
                        );
                        repl.partition = Some(p);
                    }
                    Err(e) => err = Some(e.context(format!("partition run ({})", c.describe()))),
                }
                stop_cluster(c, report);
            }
            Err(e) => err = Some(e.context("start the partition cluster")),
        }
    }
    repl.fsync.extend(fsync_probe(tmp, "after", probes));
    report.repl = Some(repl);
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_groups() {
        assert_eq!(thread_group("outpost-reader-3"), "outpost-reader");
        assert_eq!(thread_group("outpost-writer"), "outpost-writer");
        assert_eq!(
            thread_group("actix-rt|system:0|arbiter:1"),
            "actix-rt|system"
        );
        assert_eq!(thread_group("tokio-runtime-w"), "tokio-runtime-w");
        let me = cpu_by_group(std::process::id());
        assert!(!me.is_empty());
    }
}
