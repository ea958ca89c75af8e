//! The run's report: results, ratios against the baselines, goals, RSS; as text and JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::crdt::{CaptureStats, HotRow};
use crate::server::Shutdown;
use crate::stats::{fmt_rate, fmt_us, Summary};
use crate::Plan;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Target {
    /// libSQL in-process, the floor.
    #[serde(rename = "inproc")]
    InProc,
    /// A trivial actix-web handler over the same HTTP client.
    #[serde(rename = "bare-http")]
    Bare,
    /// outpost serve, Hrana over HTTP.
    #[serde(rename = "outpost")]
    Outpost,
    /// A second outpost for an A/B comparison (`--compare-bin`, `--compare-arg`).
    #[serde(rename = "outpost-b")]
    OutpostB,
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::InProc => "inproc",
            Target::Bare => "bare-http",
            Target::Outpost => "outpost",
            Target::OutpostB => "outpost-b",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PhaseResult {
    pub target: Target,
    pub workload: String,
    pub concurrency: usize,
    #[serde(flatten)]
    pub summary: Summary,
    /// For the mix: the reads alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<Summary>,
    /// For the mix: the writes alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl PhaseResult {
    /// The phase shows the harness is broken: nothing succeeded, or more than 1 % failed.
    pub fn failed(&self) -> bool {
        crate::stats::mostly_failed(self.summary.ops, self.summary.errors)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RssSample {
    pub label: String,
    pub rows: Option<u64>,
    /// Random row updates done (at this table size) before the sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updates: Option<u64>,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DataDir {
    pub instance: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub workload: String,
    pub concurrency: usize,
    pub outpost_p50_us: f64,
    pub inproc_p50_us: Option<f64>,
    pub bare_p50_us: Option<f64>,
    /// outpost p50 / (in-process p50 + bare HTTP p50); goal ≤ 1.5.
    pub p50_vs_inproc_plus_bare: Option<f64>,
    pub p50_vs_inproc: Option<f64>,
    pub p99_vs_inproc: Option<f64>,
    /// outpost ops/s ÷ in-process ops/s.
    pub ops_vs_inproc: Option<f64>,
    /// outpost ops/s ÷ bare HTTP ops/s.
    pub ops_vs_bare: Option<f64>,
}

/// outpost-b against outpost in the same phase (an A/B comparison).
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub workload: String,
    pub concurrency: usize,
    pub a_p50_us: Option<f64>,
    pub a_p99_us: Option<f64>,
    pub a_ops_per_sec: Option<f64>,
    pub b_p50_us: f64,
    pub b_p99_us: f64,
    pub b_ops_per_sec: f64,
    /// outpost p50 ÷ outpost-b p50 (with --capture-ab: capture on ÷ off).
    pub p50_a_vs_b: Option<f64>,
    pub p99_a_vs_b: Option<f64>,
    /// outpost ops/s ÷ outpost-b ops/s.
    pub ops_a_vs_b: Option<f64>,
    /// outpost-b p50 ÷ outpost p50.
    pub p50_b_vs_a: Option<f64>,
    pub p99_b_vs_a: Option<f64>,
    /// outpost-b ops/s ÷ outpost ops/s.
    pub ops_b_vs_a: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub measure: String,
    pub goal: String,
    pub measured: Option<String>,
    pub met: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_kib: Option<u64>,
    pub cpu_model: Option<String>,
    pub kernel: Option<String>,
    /// /proc/loadavg when the run started and when it ended: a busy machine skews the numbers.
    pub loadavg_start: Option<String>,
    pub loadavg_end: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub date_utc: String,
    pub command: String,
    /// `git describe --always --dirty` of the working directory, if it is a checkout.
    pub git: Option<String>,
    pub machine: Machine,
    pub plan: Plan,
    pub outpost_bin: Option<String>,
    pub outpost_startup_seconds: Option<f64>,
    pub results: Vec<PhaseResult>,
    pub ratios: Vec<Ratio>,
    /// The second outpost of an A/B comparison: binary and extra arguments.
    pub outpost_b: Option<String>,
    pub comparisons: Vec<Comparison>,
    pub goals: Vec<Goal>,
    /// What CRDT capture stored in each instance's database (read after it stopped).
    pub capture: Vec<CaptureStats>,
    /// The hot-row run, per instance.
    pub hot_row: Vec<HotRow>,
    pub rss: Vec<RssSample>,
    pub bulk_load_rows_per_sec: Option<f64>,
    /// Size of each outpost instance's data directory when it stopped.
    pub outpost_data_bytes: Vec<DataDir>,
    pub soak: Option<Summary>,
    /// The replication workloads (issue 5).
    pub repl: Option<crate::repl::ReplReport>,
    /// The schema-migration workload (issue 10).
    pub migration: Option<crate::migration::MigrationReport>,
    /// The origin-signature workload (issue 6).
    pub signing: Option<crate::signing::SigningReport>,
    /// The admin-listener workload (issue 9).
    pub admin: Option<crate::admin::AdminReport>,
    pub outpost_shutdown: Option<Shutdown>,
    /// Reasons the harness itself is broken (non-empty → non-zero exit).
    pub problems: Vec<String>,
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mem_total_kib = read("/proc/meminfo").and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    });
    let cpu_model = read("/proc/cpuinfo").and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        mem_total_kib,
        cpu_model,
        kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()),
        loadavg_start: loadavg(),
        loadavg_end: None,
    }
}

fn loadavg() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, no time-zone crate).
fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Goals from DESIGN.md "Performance targets" (stricter than issue 8 where they differ).
enum Metric {
    P50AtMost(f64),
    OpsAtLeast(f64),
    RatioAtMost(f64),
}

/// "Capture costs at most 2x" (issue 4), for these workloads of a capture A/B.
const CAPTURE_COST_MAX: f64 = 2.0;
const CAPTURE_WORKLOADS: &[&str] = &["insert", "batch100", "wide-update"];
/// RSS with capture at 1M rows after 100k updates (issue 4).
const RSS_MAX_MIB: f64 = 200.0;
/// "Flat vs 100k rows": the growth from 100k to 1M rows may fill the page caches of the
/// default config (4 readers + 1 writer, 16 MiB `cache_size` each), nothing more.
const RSS_FLAT_MAX_MIB: f64 = 80.0;

const GOALS: &[(&str, usize, Metric)] = &[
    ("read", 1, Metric::P50AtMost(100.0)),
    ("read", 16, Metric::OpsAtLeast(20_000.0)),
    ("insert", 1, Metric::P50AtMost(400.0)),
    ("insert", 16, Metric::OpsAtLeast(5_000.0)),
    ("insert", 64, Metric::OpsAtLeast(5_000.0)),
    ("read", 1, Metric::RatioAtMost(1.5)),
    ("insert", 1, Metric::RatioAtMost(1.5)),
];

impl Report {
    pub fn new(plan: &Plan) -> Self {
        Report {
            tool: "outpost-bench",
            date_utc: now_utc(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            git: std::process::Command::new("git")
                .args(["describe", "--always", "--dirty"])
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
            machine: machine(),
            plan: plan.clone(),
            outpost_bin: None,
            outpost_startup_seconds: None,
            results: Vec::new(),
            ratios: Vec::new(),
            outpost_b: None,
            comparisons: Vec::new(),
            goals: Vec::new(),
            capture: Vec::new(),
            hot_row: Vec::new(),
            rss: Vec::new(),
            bulk_load_rows_per_sec: None,
            outpost_data_bytes: Vec::new(),
            soak: None,
            repl: None,
            migration: None,
            signing: None,
            admin: None,
            outpost_shutdown: None,
            problems: Vec::new(),
        }
    }

    fn find(&self, target: Target, workload: &str, c: usize) -> Option<&PhaseResult> {
        self.results
            .iter()
            .find(|r| r.target == target && r.workload == workload && r.concurrency == c)
    }

    /// Compute ratios and goals, and check that the harness itself worked.
    pub fn finish(&mut self) {
        self.machine.loadavg_end = loadavg();
        let div = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        let mut ratios = Vec::new();
        for o in self.results.iter().filter(|r| r.target == Target::Outpost) {
            let i = self.find(Target::InProc, &o.workload, o.concurrency);
            let b = self.find(Target::Bare, &o.workload, o.concurrency);
            let (os, is, bs) = (&o.summary, i.map(|r| &r.summary), b.map(|r| &r.summary));
            ratios.push(Ratio {
                workload: o.workload.clone(),
                concurrency: o.concurrency,
                outpost_p50_us: os.p50_us,
                inproc_p50_us: is.map(|s| s.p50_us),
                bare_p50_us: bs.map(|s| s.p50_us),
                p50_vs_inproc_plus_bare: is
                    .zip(bs)
                    .and_then(|(i, b)| div(os.p50_us, i.p50_us + b.p50_us)),
                p50_vs_inproc: is.and_then(|i| div(os.p50_us, i.p50_us)),
                p99_vs_inproc: is.and_then(|i| div(os.p99_us, i.p99_us)),
                ops_vs_inproc: is.and_then(|i| div(os.ops_per_sec, i.ops_per_sec)),
                ops_vs_bare: bs.and_then(|b| div(os.ops_per_sec, b.ops_per_sec)),
            });
        }
        self.ratios = ratios;
        let mut comparisons = Vec::new();
        for b in self.results.iter().filter(|r| r.target == Target::OutpostB) {
            let a = self.find(Target::Outpost, &b.workload, b.concurrency);
            let (bs, as_) = (&b.summary, a.map(|r| &r.summary));
            comparisons.push(Comparison {
                workload: b.workload.clone(),
                concurrency: b.concurrency,
                a_p50_us: as_.map(|a| a.p50_us),
                a_p99_us: as_.map(|a| a.p99_us),
                a_ops_per_sec: as_.map(|a| a.ops_per_sec),
                b_p50_us: bs.p50_us,
                b_p99_us: bs.p99_us,
                b_ops_per_sec: bs.ops_per_sec,
                p50_a_vs_b: as_.and_then(|a| div(a.p50_us, bs.p50_us)),
                p99_a_vs_b: as_.and_then(|a| div(a.p99_us, bs.p99_us)),
                ops_a_vs_b: as_.and_then(|a| div(a.ops_per_sec, bs.ops_per_sec)),
                p50_b_vs_a: as_.and_then(|a| div(bs.p50_us, a.p50_us)),
                p99_b_vs_a: as_.and_then(|a| div(bs.p99_us, a.p99_us)),
                ops_b_vs_a: as_.and_then(|a| div(bs.ops_per_sec, a.ops_per_sec)),
            });
        }
        self.comparisons = comparisons;

        let mut goals = Vec::new();
        for (w, c, metric) in GOALS {
            let o = self.find(Target::Outpost, w, *c).map(|r| &r.summary);
            let clients = if *c == 1 { "client" } else { "clients" };
            let name = if *w == "read" {
                "point read"
            } else {
                "durable insert"
            };
            let (measure, goal, measured) = match metric {
                Metric::P50AtMost(g) => (
                    format!("{name}, {c} {clients}: p50"),
                    format!("≤ {g:.0} µs"),
                    o.map(|s| (s.p50_us, s.p50_us <= *g, format!("{:.0} µs", s.p50_us))),
                ),
                Metric::OpsAtLeast(g) => (
                    format!("{name}, {c} {clients}: throughput"),
                    format!("≥ {} ops/s", fmt_rate(*g)),
                    o.map(|s| {
                        (
                            s.ops_per_sec,
                            s.ops_per_sec >= *g,
                            format!("{} ops/s", fmt_rate(s.ops_per_sec)),
                        )
                    }),
                ),
                Metric::RatioAtMost(g) => (
                    format!("{name}, {c} {clients}: p50 / (in-process + bare HTTP p50)"),
                    format!("≤ {g:.1}x"),
                    self.ratios
                        .iter()
                        .find(|r| r.workload == *w && r.concurrency == *c)
                        .and_then(|r| r.p50_vs_inproc_plus_bare)
                        .map(|x| (x, x <= *g, format!("{x:.2}x"))),
                ),
            };
            goals.push(Goal {
                measure,
                goal,
                measured: measured.as_ref().map(|m| m.2.clone()),
                met: measured.map(|m| m.1),
            });
        }
        goals.extend(self.capture_goals());
        goals.extend(self.memory_goals());
        if let Some(r) = &self.repl {
            goals.extend(r.goals());
            self.problems.extend(r.problems());
        }
        if let Some(m) = &self.migration {
            self.problems.extend(m.problems());
        }
        if let Some(s) = &self.signing {
            self.problems.extend(s.problems());
        }
        if let Some(a) = &self.admin {
            goals.extend(a.goals());
            self.problems.extend(a.problems());
        }
        self.goals = goals;

        for h in &self.hot_row {
            let what = format!("hot-row on {}", h.instance);
            if h.failed() {
                self.problems.push(format!(
                    "{what}: {} of {} updates failed (first error: {})",
                    h.errors,
                    h.attempted,
                    h.first_error.as_deref().unwrap_or("-")
                ));
            }
            match h.final_n {
                // Failed requests may or may not have been applied.
                Some(n) if n >= 0 && (n as u64) >= h.updates && (n as u64) <= h.attempted => {}
                Some(n) => self.problems.push(format!(
                    "{what}: the row's counter is {n} after {} successful of {} updates",
                    h.updates, h.attempted
                )),
                None => self
                    .problems
                    .push(format!("{what}: could not read the row back")),
            }
        }

        for r in &self.results {
            let s = &r.summary;
            let what = format!("{} {} c={}", r.target.name(), r.workload, r.concurrency);
            let err = r.first_error.as_deref().unwrap_or("-");
            if !r.failed() {
                continue;
            }
            if s.ops == 0 {
                self.problems.push(format!(
                    "{what}: no successful operation (first error: {err})"
                ));
            } else {
                self.problems.push(format!(
                    "{what}: {} of {} operations failed (first error: {err})",
                    s.errors,
                    s.ops + s.errors
                ));
            }
        }
    }

    fn capture_stats(&self, instance: &str) -> Option<&CaptureStats> {
        self.capture.iter().find(|c| c.instance == instance)
    }

    /// The A/B of this run compared capture on (A) with capture off (B), as read from the
    /// databases afterwards.
    fn is_capture_ab(&self) -> bool {
        matches!(
            (self.capture_stats("phases"), self.capture_stats("phases-b")),
            (Some(a), Some(b)) if a.active() && !b.active()
        )
    }

    /// "CRDT capture costs at most 2x": per write workload of a capture A/B, p50 on ÷ off and
    /// ops/s off ÷ on, both ≤ 2. Not measured unless A captured and B did not.
    fn capture_goals(&self) -> Vec<Goal> {
        let goal = format!("≤ {CAPTURE_COST_MAX:.1}x");
        let cmp: Vec<&Comparison> = self
            .comparisons
            .iter()
            .filter(|c| CAPTURE_WORKLOADS.contains(&c.workload.as_str()))
            .collect();
        let asked = self.plan.capture_ab || self.is_capture_ab();
        if !asked || cmp.is_empty() {
            return vec![Goal {
                measure: "CRDT capture cost (write workloads, same run)".into(),
                goal,
                measured: Some(if asked {
                    "no write workload ran".into()
                } else {
                    "no A/B: --capture-ab".into()
                }),
                met: None,
            }];
        }
        let invalid = match (self.capture_stats("phases"), self.capture_stats("phases-b")) {
            (Some(a), Some(b)) if a.active() && !b.active() => None,
            (Some(a), Some(_)) if !a.active() => Some("n/a: A captured nothing".into()),
            (Some(_), Some(_)) => Some("n/a: B captured too".to_string()),
            _ => Some("n/a: capture state unknown".into()),
        };
        cmp.into_iter()
            .map(|c| {
                let measure = format!(
                    "capture cost, {} c={}: p50 on÷off, ops/s off÷on",
                    c.workload, c.concurrency
                );
                let (measured, met) = match (&invalid, c.p50_a_vs_b, c.ops_a_vs_b) {
                    (Some(why), _, _) => (Some(why.clone()), None),
                    (None, Some(p50), Some(ops)) if ops > 0.0 => {
                        let slow = 1.0 / ops;
                        (
                            Some(format!("p50 {p50:.2}x, ops {slow:.2}x")),
                            Some(p50 <= CAPTURE_COST_MAX && slow <= CAPTURE_COST_MAX),
                        )
                    }
                    _ => (None, None),
                };
                Goal {
                    measure,
                    goal: goal.clone(),
                    measured,
                    met,
                }
            })
            .collect()
    }

    /// Memory with capture: RSS at 1M rows after the updates ≤ 200 MiB, and flat against
    /// 100k rows (growth within the page caches of the default config).
    fn memory_goals(&self) -> Vec<Goal> {
        let after_updates = |rows: u64| {
            self.rss.iter().find(|s| {
                s.rows == Some(rows) && s.updates.is_some() && s.label.starts_with("memory")
            })
        };
        let at_1m = after_updates(1_000_000);
        let at_100k = after_updates(100_000);
        let capture_off = match self.capture_stats("memory") {
            Some(c) if c.active() => None,
            Some(c) => Some(format!("capture {}", c.describe())),
            None => None,
        };
        let n_updates = |s: &RssSample| s.updates.unwrap_or(0);
        let mut goals = Vec::new();
        goals.push(Goal {
            measure: format!(
                "RSS, 1M rows + {} random updates (capture on)",
                at_1m.map_or(self.plan.rss_updates, n_updates)
            ),
            goal: format!("≤ {RSS_MAX_MIB:.0} MiB"),
            measured: at_1m.map(|s| {
                let v = format!("{:.1} MiB", s.rss_kib as f64 / 1024.0);
                match &capture_off {
                    Some(why) => format!("n/a: {v} but {why}"),
                    None => v,
                }
            }),
            met: at_1m
                .filter(|_| capture_off.is_none())
                .map(|s| s.rss_kib as f64 / 1024.0 <= RSS_MAX_MIB),
        });
        let both = at_1m.zip(at_100k);
        goals.push(Goal {
            measure: "RSS flat from 100k to 1M rows (after the updates): growth".into(),
            goal: format!("≤ {RSS_FLAT_MAX_MIB:.0} MiB (caches)"),
            measured: both.map(|(m, k)| {
                let v = format!("{:+.1} MiB", (m.rss_kib as f64 - k.rss_kib as f64) / 1024.0);
                match &capture_off {
                    Some(why) => format!("n/a: {v} but {why}"),
                    None => v,
                }
            }),
            met: both
                .filter(|_| capture_off.is_none())
                .map(|(m, k)| (m.rss_kib as f64 - k.rss_kib as f64) / 1024.0 <= RSS_FLAT_MAX_MIB),
        });
        goals
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "\noutpost-bench {} mode, {} · {} cores · {} · {:.1} GiB RAM · {}s/phase in {} round(s)",
            self.plan.mode,
            self.date_utc,
            m.nproc,
            m.cpu_model.as_deref().unwrap_or("?"),
            m.mem_total_kib.unwrap_or(0) as f64 / 1024.0 / 1024.0,
            self.plan.seconds,
            self.plan.rounds
        );
        let _ = writeln!(
            out,
            "load average at start {} / end {}",
            m.loadavg_start.as_deref().unwrap_or("?"),
            m.loadavg_end.as_deref().unwrap_or("?")
        );
        if let Some(b) = &self.outpost_bin {
            let _ = writeln!(
                out,
                "outpost binary: {b} (checkout when run: {})",
                self.git.as_deref().unwrap_or("?")
            );
        }
        let _ = writeln!(
            out,
            "\n{:<12} {:>4}  {:<9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "workload", "conc", "target", "ops/s", "p50", "p90", "p99", "p99.9", "errors"
        );
        let mut keys: Vec<(String, usize)> = Vec::new();
        for r in &self.results {
            let k = (r.workload.clone(), r.concurrency);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        for (w, c) in &keys {
            for t in [
                Target::InProc,
                Target::Bare,
                Target::Outpost,
                Target::OutpostB,
            ] {
                if let Some(r) = self.find(t, w, *c) {
                    let s = &r.summary;
                    let _ = writeln!(
                        out,
                        "{:<12} {:>4}  {:<9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}",
                        w,
                        c,
                        t.name(),
                        fmt_rate(s.ops_per_sec),
                        fmt_us(s.p50_us),
                        fmt_us(s.p90_us),
                        fmt_us(s.p99_us),
                        fmt_us(s.p999_us),
                        s.errors
                    );
                }
            }
        }
        let mixes: Vec<_> = self.results.iter().filter(|r| r.read.is_some()).collect();
        if !mixes.is_empty() {
            let _ = writeln!(out, "\nmix split (p50 / p99):");
            for r in mixes {
                if let (Some(rd), Some(wr)) = (&r.read, &r.write) {
                    let _ = writeln!(
                        out,
                        "  {:<9} c={:<3} reads {} / {}   writes {} / {}",
                        r.target.name(),
                        r.concurrency,
                        fmt_us(rd.p50_us),
                        fmt_us(rd.p99_us),
                        fmt_us(wr.p50_us),
                        fmt_us(wr.p99_us)
                    );
                }
            }
        }
        if self
            .ratios
            .iter()
            .any(|r| r.inproc_p50_us.is_some() || r.bare_p50_us.is_some())
        {
            let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}x"));
            let _ = writeln!(
                out,
                "\nratios (outpost vs same-run baselines)\n{:<10} {:>4}  {:>18} {:>11} {:>11} {:>13} {:>11}",
                "workload", "conc", "p50/(inproc+bare)", "p50/inproc", "p99/inproc", "ops/s÷inproc", "ops/s÷bare"
            );
            for r in self
                .ratios
                .iter()
                .filter(|r| r.inproc_p50_us.is_some() || r.bare_p50_us.is_some())
            {
                let _ = writeln!(
                    out,
                    "{:<10} {:>4}  {:>18} {:>11} {:>11} {:>13} {:>11}",
                    r.workload,
                    r.concurrency,
                    f(r.p50_vs_inproc_plus_bare),
                    f(r.p50_vs_inproc),
                    f(r.p99_vs_inproc),
                    f(r.ops_vs_inproc),
                    f(r.ops_vs_bare)
                );
            }
        }
        if !self.comparisons.is_empty() {
            let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}x"));
            let us = |x: Option<f64>| x.map_or("-".to_string(), fmt_us);
            let rate = |x: Option<f64>| x.map_or("-".to_string(), fmt_rate);
            let what = if self.plan.capture_ab || self.is_capture_ab() {
                " (A = capture on, B = capture off)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "\nA/B{what}: A = outpost, B = outpost-b = {}\n{:<12} {:>4}  {:>9} {:>9} {:>8}  {:>9} {:>9} {:>8}  {:>10} {:>10} {:>8}",
                self.outpost_b.as_deref().unwrap_or("?"),
                "workload",
                "conc",
                "A p50",
                "B p50",
                "p50 a÷b",
                "A p99",
                "B p99",
                "p99 a÷b",
                "A ops/s",
                "B ops/s",
                "ops a÷b"
            );
            if self.plan.capture_ab || self.is_capture_ab() {
                let state = |i: &str| {
                    self.capture_stats(i)
                        .map_or("unknown".to_string(), |c| c.describe())
                };
                let (a, b) = (state("phases"), state("phases-b"));
                let _ = writeln!(out, "capture in A: {a}\ncapture in B: {b}");
                match (self.capture_stats("phases"), self.capture_stats("phases-b")) {
                    (Some(a), _) if !a.active() => {
                        let _ = writeln!(
                            out,
                            "note: A captured nothing (a binary without capture?): A and B ran the same code"
                        );
                    }
                    (_, Some(b)) if b.active() => {
                        let _ = writeln!(
                            out,
                            "note: B captured too: OUTPOST_CRDT_REPLICATE=[] did not turn capture off"
                        );
                    }
                    _ => {}
                }
            }
            for c in &self.comparisons {
                let _ = writeln!(
                    out,
                    "{:<12} {:>4}  {:>9} {:>9} {:>8}  {:>9} {:>9} {:>8}  {:>10} {:>10} {:>8}",
                    c.workload,
                    c.concurrency,
                    us(c.a_p50_us),
                    us(Some(c.b_p50_us)),
                    f(c.p50_a_vs_b),
                    us(c.a_p99_us),
                    us(Some(c.b_p99_us)),
                    f(c.p99_a_vs_b),
                    rate(c.a_ops_per_sec),
                    rate(Some(c.b_ops_per_sec)),
                    f(c.ops_a_vs_b)
                );
            }
        }
        if !self.hot_row.is_empty() {
            let w = self
                .hot_row
                .iter()
                .filter_map(|h| h.first.as_ref().map(|w| w.updates))
                .max()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "\nhot row: one row of `hot` updated {} times per instance, 1 client; latency of the first / last {w} updates",
                self.plan.hot_row_updates
            );
            let win = |x: &Option<crate::crdt::Window>| {
                x.as_ref().map_or("-".to_string(), |w| w.describe())
            };
            for h in &self.hot_row {
                let _ = writeln!(
                    out,
                    "  {:<6} {} updates, {} ops/s, errors {}\n         first: {}\n         last:  {}   (p50 last÷first {})\n         doc of the row: {}; _outpost_log: {}",
                    h.instance,
                    h.updates,
                    fmt_rate(h.ops_per_sec),
                    h.errors,
                    win(&h.first),
                    win(&h.last),
                    h.last_vs_first_p50
                        .map_or("-".to_string(), |x| format!("{x:.2}x")),
                    h.doc_size(),
                    h.log_size()
                );
            }
        }
        if let Some(r) = &self.repl {
            r.render(&mut out);
        }
        if let Some(m) = &self.migration {
            m.render(&mut out);
        }
        if let Some(s) = &self.signing {
            s.render(&mut out);
        }
        if let Some(a) = &self.admin {
            a.render(&mut out);
        }
        if !self.capture.is_empty() {
            let _ = writeln!(
                out,
                "\nCRDT capture, read from each instance's outpost.db after it stopped"
            );
            for c in &self.capture {
                let _ = writeln!(out, "  {:<9} {}", c.instance, c.describe());
            }
        }
        let _ = writeln!(
            out,
            "\ngoals (DESIGN.md performance targets; issue 4 for capture and memory, issue 5 for replication)"
        );
        for g in &self.goals {
            let verdict = match g.met {
                Some(true) => "met",
                Some(false) => "not met",
                None => "not measured",
            };
            let _ = writeln!(
                out,
                "  {:<66} goal {:<18} measured {:<22} {}",
                g.measure,
                g.goal,
                g.measured.as_deref().unwrap_or("-"),
                verdict
            );
        }
        if !self.rss.is_empty() {
            let _ = writeln!(out, "\noutpost RSS");
            for s in &self.rss {
                let _ = writeln!(
                    out,
                    "  {:<36} rows {:>9}  VmRSS {:>8.1} MiB  VmHWM {:>8.1} MiB",
                    s.label,
                    s.rows.map_or("?".into(), |r| r.to_string()),
                    s.rss_kib as f64 / 1024.0,
                    s.hwm_kib as f64 / 1024.0
                );
            }
        }
        if let Some(r) = self.bulk_load_rows_per_sec {
            let _ = writeln!(out, "  bulk load (200-row inserts): {} rows/s", fmt_rate(r));
        }
        for d in &self.outpost_data_bytes {
            let _ = writeln!(
                out,
                "  data dir of the {:?} instance at the end: {:.1} MiB",
                d.instance,
                d.bytes as f64 / 1024.0 / 1024.0
            );
        }
        if let Some(s) = &self.outpost_shutdown {
            let _ = writeln!(
                out,
                "outpost shutdown on SIGTERM: {} in {:.2}s ({})",
                if s.graceful { "clean" } else { "NOT clean" },
                s.seconds,
                s.exit
            );
        }
        if self.plan.mode == "quick" {
            let _ = writeln!(
                out,
                "\nquick mode: a check that the harness works; its figures are not measurements"
            );
        }
        if !self.problems.is_empty() {
            let _ = writeln!(out, "\nPROBLEMS (the harness run is broken):");
            for p in &self.problems {
                let _ = writeln!(out, "  - {p}");
            }
        }
        // One check per phase that ran, plus one failed check per other problem (outpost did
        // not start, did not stop cleanly, ...), in the plain form CI logs understand.
        let failed_phases = self.results.iter().filter(|r| r.failed()).count();
        let passed = self.results.len() - failed_phases
            + self.hot_row.iter().filter(|h| !h.failed()).count()
            + self.repl.as_ref().map_or(0, |r| r.passed())
            + self.migration.as_ref().map_or(0, |m| m.passed())
            + self.signing.as_ref().map_or(0, |s| s.passed())
            + self.admin.as_ref().map_or(0, |a| a.passed());
        let failed = self.problems.len();
        let _ = writeln!(out, "\nbench: {passed} passed, {failed} failed");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(args: &[&str]) -> Report {
        use clap::Parser;
        let args =
            crate::Args::parse_from(std::iter::once("outpost-bench").chain(args.iter().copied()));
        Report::new(&crate::Plan::from_args(&args))
    }

    fn capture(instance: &str, on: bool) -> CaptureStats {
        CaptureStats {
            instance: instance.into(),
            rows_table: true,
            log_table: true,
            docs: if on { 10 } else { 0 },
            log_rows: if on { 10 } else { 0 },
            ..Default::default()
        }
    }

    fn result(target: Target, workload: &str, p50: f64, ops: f64) -> PhaseResult {
        let mut summary = Summary::from_hist(&crate::stats::new_hist(), 0, 1.0);
        summary.ops = 100;
        summary.p50_us = p50;
        summary.p99_us = p50 * 2.0;
        summary.ops_per_sec = ops;
        PhaseResult {
            target,
            workload: workload.into(),
            concurrency: 1,
            summary,
            read: None,
            write: None,
            first_error: None,
        }
    }

    fn goal<'a>(r: &'a Report, prefix: &str) -> &'a Goal {
        r.goals
            .iter()
            .find(|g| g.measure.starts_with(prefix))
            .unwrap_or_else(|| panic!("no goal {prefix:?} in {:#?}", r.goals))
    }

    #[test]
    fn capture_goal_needs_capture_on_in_a_and_off_in_b() {
        let mut r = report(&["--capture-ab"]);
        r.results = vec![
            result(Target::Outpost, "insert", 300.0, 1000.0),
            result(Target::OutpostB, "insert", 200.0, 1500.0),
            result(Target::Outpost, "batch100", 900.0, 100.0),
            result(Target::OutpostB, "batch100", 300.0, 300.0),
        ];
        r.capture = vec![capture("phases", true), capture("phases-b", false)];
        r.finish();
        let g = goal(&r, "capture cost, insert");
        assert_eq!(g.met, Some(true), "{g:?}");
        assert_eq!(g.measured.as_deref(), Some("p50 1.50x, ops 1.50x"));
        assert_eq!(goal(&r, "capture cost, batch100").met, Some(false));
        assert!(r.problems.is_empty(), "{:?}", r.problems);

        // A captured nothing (a binary without capture): no verdict.
        r.capture = vec![capture("phases", false), capture("phases-b", false)];
        r.finish();
        let g = goal(&r, "capture cost, insert");
        assert_eq!(g.met, None);
        assert!(g.measured.as_deref().unwrap().starts_with("n/a"), "{g:?}");

        // B still captured.
        r.capture = vec![capture("phases", true), capture("phases-b", true)];
        r.finish();
        assert_eq!(goal(&r, "capture cost, insert").met, None);
    }

    #[test]
    fn memory_goals() {
        let mut r = report(&["--rss-1m"]);
        let sample = |rows: u64, mib: u64, updates: Option<u64>| RssSample {
            label: format!("memory: {rows}"),
            rows: Some(rows),
            updates,
            rss_kib: mib * 1024,
            hwm_kib: mib * 1024,
        };
        r.finish();
        assert_eq!(goal(&r, "RSS, 1M rows").met, None);
        r.rss = vec![
            sample(100_000, 40, None),
            sample(100_000, 45, Some(100_000)),
            sample(1_000_000, 150, Some(100_000)),
        ];
        r.capture = vec![capture("memory", true)];
        r.finish();
        assert_eq!(goal(&r, "RSS, 1M rows").met, Some(true));
        let flat = goal(&r, "RSS flat");
        assert_eq!(flat.met, Some(false), "{flat:?}");
        assert_eq!(flat.measured.as_deref(), Some("+105.0 MiB"));

        r.rss[2].rss_kib = 250 * 1024;
        r.finish();
        assert_eq!(goal(&r, "RSS, 1M rows").met, Some(false));

        // Without capture the figure is not the one the goal is about.
        r.capture = vec![capture("memory", false)];
        r.finish();
        assert_eq!(goal(&r, "RSS, 1M rows").met, None);
    }

    #[test]
    fn date_format() {
        let d = now_utc();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
