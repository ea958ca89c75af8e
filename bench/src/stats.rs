//! Latency recording (hdrhistogram, nanoseconds) and the per-phase summary.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms track (larger values saturate).
const MAX_NS: u64 = 60_000_000_000;

/// A run shows the harness or the server is broken: nothing succeeded, or
/// more than 1 % of the attempts failed.
pub fn mostly_failed(ok: u64, errors: u64) -> bool {
    ok == 0 || errors * 100 > ok + errors
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

/// Which kind of statement one operation ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
}

/// What one worker (thread or connection) measured.
pub struct WorkerStats {
    pub all: Histogram<u64>,
    pub read: Histogram<u64>,
    pub write: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub last_done: Option<Instant>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerStats {
    pub fn new() -> Self {
        WorkerStats {
            all: new_hist(),
            read: new_hist(),
            write: new_hist(),
            ok: 0,
            errors: 0,
            first_error: None,
            last_done: None,
        }
    }

    pub fn record_ok(&mut self, kind: OpKind, latency: Duration, done: Instant) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.all.saturating_record(ns);
        match kind {
            OpKind::Read => self.read.saturating_record(ns),
            OpKind::Write => self.write.saturating_record(ns),
        }
        self.ok += 1;
        self.last_done = Some(done);
    }

    pub fn record_err(&mut self, msg: impl FnOnce() -> String, done: Instant) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(msg());
        }
        self.last_done = Some(done);
    }

    pub fn merge(&mut self, other: WorkerStats) {
        // Same bounds on every histogram: addition cannot fail.
        let _ = self.all.add(&other.all);
        let _ = self.read.add(&other.read);
        let _ = self.write.add(&other.write);
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Latency and throughput of one set of operations.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Summary {
    pub fn from_hist(h: &Histogram<u64>, errors: u64, seconds: f64) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        let ops = h.len();
        let q = |p: f64| {
            if ops == 0 {
                0.0
            } else {
                us(h.value_at_quantile(p))
            }
        };
        Summary {
            ops,
            errors,
            seconds,
            ops_per_sec: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            mean_us: if ops == 0 { 0.0 } else { h.mean() / 1000.0 },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if ops == 0 { 0.0 } else { us(h.max()) },
        }
    }
}

/// Format microseconds for the table: µs below 1 ms, ms above.
pub fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1}ms", us / 1000.0)
    } else if us >= 1_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else if us >= 100.0 {
        format!("{us:.0}µs")
    } else {
        format!("{us:.1}µs")
    }
}

pub fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        let n = r.round() as u64;
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{r:.1}")
    }
}
