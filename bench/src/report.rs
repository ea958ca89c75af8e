//! The run's report: results, ratios against the baselines, goals, RSS; as text and JSON.

use std::fmt::Write as _;

use serde::Serialize;

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
        let s = &self.summary;
        s.ops == 0 || s.errors * 100 > s.ops + s.errors
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RssSample {
    pub label: String,
    pub rows: Option<u64>,
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
    pub rss: Vec<RssSample>,
    pub bulk_load_rows_per_sec: Option<f64>,
    /// Size of each outpost instance's data directory when it stopped.
    pub outpost_data_bytes: Vec<DataDir>,
    pub soak: Option<Summary>,
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
            rss: Vec::new(),
            bulk_load_rows_per_sec: None,
            outpost_data_bytes: Vec::new(),
            soak: None,
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
        self.goals = goals;

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
            "\n{:<10} {:>4}  {:<9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}",
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
                        "{:<10} {:>4}  {:<9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}",
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
            let _ = writeln!(
                out,
                "\nA/B: outpost-b = {}\n{:<10} {:>4}  {:>10} {:>10} {:>12}",
                self.outpost_b.as_deref().unwrap_or("?"),
                "workload",
                "conc",
                "p50 b÷a",
                "p99 b÷a",
                "ops/s b÷a"
            );
            for c in &self.comparisons {
                let _ = writeln!(
                    out,
                    "{:<10} {:>4}  {:>10} {:>10} {:>12}",
                    c.workload,
                    c.concurrency,
                    f(c.p50_b_vs_a),
                    f(c.p99_b_vs_a),
                    f(c.ops_b_vs_a)
                );
            }
        }
        let _ = writeln!(out, "\ngoals (DESIGN.md performance targets)");
        for g in &self.goals {
            let verdict = match g.met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not measured",
            };
            let _ = writeln!(
                out,
                "  {:<66} goal {:<16} measured {:<16} {}",
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
                    "  {:<32} rows {:>9}  VmRSS {:>8.1} MiB  VmHWM {:>8.1} MiB",
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
        let passed = self.results.len() - failed_phases;
        let failed = self.problems.len();
        let _ = writeln!(out, "\nbench: {passed} passed, {failed} failed");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_format() {
        let d = now_utc();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
