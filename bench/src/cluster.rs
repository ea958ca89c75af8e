//! A cluster of real `outpost serve` processes that replicate to each other: one CA, three
//! nodes (`outpost init --ca-dir`), each with a full-access token, linked in a mesh (n2 dials
//! n1, n3 dials n1 and n2; links carry both directions). Optionally n3's links go through
//! fault proxies (the partition run). Plus what the harness reads from a node: `/status`
//! and `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::{execute_body, Conn};
use crate::proxy::{Fault, Proxy};
use crate::server;
use crate::workload::CREATE_SQL;

/// How a cluster's nodes are started.
pub struct NodeSpec<'a> {
    pub bin: &'a Path,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub start_timeout: Duration,
}

pub struct Node {
    pub name: String,
    pub proc: server::Outpost,
    pub token: String,
    /// The node's origin id in log vectors (`/status` `origin`).
    pub origin: String,
}

impl Node {
    pub fn api_conn(&self) -> Conn {
        Conn::with_token(self.proc.api, Some(&self.token))
    }

    pub fn admin_conn(&self) -> Conn {
        Conn::new(self.proc.admin)
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    /// n3's links to n1 and n2, when they go through proxies.
    pub proxies: Vec<Proxy>,
    pub bin: PathBuf,
}

/// Runs `bin args...`, returns stdout; fails with stderr on a non-zero exit.
fn run_cmd(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("run {} {}", bin.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`outpost {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

impl Cluster {
    /// Start three nodes under `dir` (`dir/ca`, `dir/n1`, ...), create `t` on each and wait
    /// until every node has two connected links. With `proxied`, n3 dials n1 and n2 through
    /// fault proxies (`self.proxies`).
    pub async fn start(spec: &NodeSpec<'_>, dir: &Path, proxied: bool) -> Result<Cluster> {
        let ca = dir.join("ca");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            proxies: Vec::new(),
            bin: spec.bin.to_path_buf(),
        };
        for i in 1..=3 {
            let name = format!("n{i}");
            let ndir = dir.join(&name);
            std::fs::create_dir_all(&ndir)?;
            let data_dir = ndir.join("outpost-data");
            run_cmd(
                spec.bin,
                &[
                    "init",
                    "--data-dir",
                    path_str(&data_dir)?,
                    "--ca-dir",
                    path_str(&ca)?,
                ],
            )?;
            let token = run_cmd(spec.bin, &["token", "--data-dir", path_str(&data_dir)?])?
                .trim()
                .to_string();
            anyhow::ensure!(!token.is_empty(), "`outpost token` printed nothing");
            let mut peers: Vec<String> = Vec::new();
            for n in &cluster.nodes {
                let sync = n.proc.sync.context("no sync= on a READY line")?;
                if proxied && i == 3 {
                    let p = Proxy::start(sync)?;
                    peers.push(p.https_url());
                    cluster.proxies.push(p);
                } else {
                    peers.push(format!("https://{sync}"));
                }
            }
            let mut args: Vec<String> = spec.args.to_vec();
            args.extend(["--sync-listen".to_string(), "127.0.0.1:0".to_string()]);
            for p in peers {
                args.extend(["--peer".to_string(), p]);
            }
            let proc = server::Outpost::start(spec.bin, &ndir, &args, spec.env, spec.start_timeout)
                .with_context(|| format!("start {name}"))?;
            anyhow::ensure!(
                proc.sync.is_some(),
                "{name} started without a sync listener (READY has no sync=)"
            );
            cluster.nodes.push(Node {
                name,
                proc,
                token,
                origin: String::new(),
            });
        }
        for n in &mut cluster.nodes {
            let s = status(n).await?;
            n.origin = s["origin"]
                .as_str()
                .with_context(|| format!("no origin in {}'s /status: {s}", n.name))?
                .to_string();
            n.api_conn()
                .pipeline(execute_body(CREATE_SQL, &[]))
                .await
                .with_context(|| format!("create table on {}", n.name))?;
        }
        cluster.wait_connected(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Wait until every node has at least two links in state `connected`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            let mut all = true;
            let mut states = Vec::new();
            for n in &self.nodes {
                let s = status(n).await?;
                let c = connected_links(&s);
                all &= c >= 2;
                states.push(format!("{}: {c} connected ({})", n.name, s["peers"]));
            }
            if all {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                bail!(
                    "the mesh did not connect within {timeout:?}: {}",
                    states.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn set_fault(&self, fault: Fault) {
        for p in &self.proxies {
            p.set(fault);
        }
    }

    /// `outpost check --digest` of each node's data directory (fine while it runs): the
    /// digest, or the check's output when it failed.
    pub fn digests(&self) -> Vec<Result<String, String>> {
        self.nodes
            .iter()
            .map(|n| {
                let dir = n.proc.data_dir.to_string_lossy().into_owned();
                let out = Command::new(&self.bin)
                    .args(["check", "--digest", "--data-dir", &dir])
                    .output()
                    .map_err(|e| format!("run check: {e}"))?;
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                match text.lines().find_map(|l| l.strip_prefix("digest ")) {
                    Some(d) if out.status.success() => Ok(d.trim().to_string()),
                    _ => Err(format!("{}: {}", out.status, text.trim())),
                }
            })
            .collect()
    }

    /// Every node's log vector (origin → highest seq), in node order.
    pub async fn vectors(&self) -> Result<Vec<Vector>> {
        let mut v = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            v.push(log_vector(&status(n).await?));
        }
        Ok(v)
    }

    /// Node names and addresses, for error messages.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "{} api {} admin {} sync {} pid {}",
                    n.name,
                    n.proc.api,
                    n.proc.admin,
                    n.proc
                        .sync
                        .map_or("-".to_string(), |s: SocketAddr| s.to_string()),
                    n.proc.pid()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// origin → highest seq.
pub type Vector = BTreeMap<String, u64>;

pub fn log_vector(status: &serde_json::Value) -> Vector {
    status["log"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_u64().map(|s| (k.clone(), s)))
                .collect()
        })
        .unwrap_or_default()
}

/// `a` has every entry `b` has.
pub fn covers(a: &Vector, b: &Vector) -> bool {
    b.iter()
        .all(|(o, s)| a.get(o).is_some_and(|have| have >= s))
}

/// The union (per-origin maximum) of vectors.
pub fn union(vs: &[Vector]) -> Vector {
    let mut u = Vector::new();
    for v in vs {
        for (o, s) in v {
            let e = u.entry(o.clone()).or_insert(0);
            *e = (*e).max(*s);
        }
    }
    u
}

/// Entries `want` has that `have` lacks.
pub fn missing(have: &Vector, want: &Vector) -> u64 {
    want.iter()
        .map(|(o, s)| s.saturating_sub(*have.get(o).unwrap_or(&0)))
        .sum()
}

pub fn connected_links(status: &serde_json::Value) -> usize {
    status["peers"]
        .as_array()
        .map(|a| a.iter().filter(|p| p["state"] == "connected").count())
        .unwrap_or(0)
}

pub async fn status(n: &Node) -> Result<serde_json::Value> {
    get_json(&mut n.admin_conn(), "/status")
        .await
        .with_context(|| format!("GET /status of {}", n.name))
}

async fn get_json(conn: &mut Conn, path: &str) -> Result<serde_json::Value> {
    let (code, body) = conn.get(path).await?;
    anyhow::ensure!(code.is_success(), "GET {path}: HTTP {code}");
    serde_json::from_slice(&body).with_context(|| format!("GET {path}: not JSON"))
}

pub async fn metrics_text(n: &Node) -> Result<String> {
    let (code, body) = n.admin_conn().get("/metrics").await?;
    anyhow::ensure!(code.is_success(), "GET /metrics of {}: HTTP {code}", n.name);
    Ok(String::from_utf8_lossy(&body).into_owned())
}

// --- Prometheus text --------------------------------------------------------------------------

/// What the harness reads from one node's `/metrics`: the sync counters summed over peers and
/// the lag histogram's cumulative buckets summed over peers.
#[derive(Clone, Debug, Default)]
pub struct SyncMetrics {
    pub bytes_sent: f64,
    pub entries_sent: f64,
    pub bytes_received: f64,
    pub entries_received: f64,
    /// (upper bound in seconds, cumulative count), ascending; the last is +Inf.
    pub lag_buckets: Vec<(f64, f64)>,
    pub lag_count: f64,
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!("{name}=\"");
    let start = labels.find(&pat)? + pat.len();
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

impl SyncMetrics {
    pub fn parse(text: &str) -> SyncMetrics {
        let mut m = SyncMetrics::default();
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((head, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match head.split_once('{') {
                Some((n, l)) => (n, l),
                None => (head, ""),
            };
            match name {
                "outpost_sync_bytes_sent_total" => m.bytes_sent += value,
                "outpost_sync_entries_sent_total" => m.entries_sent += value,
                "outpost_sync_bytes_received_total" => m.bytes_received += value,
                "outpost_sync_entries_received_total" => m.entries_received += value,
                "outpost_sync_lag_seconds_count" => m.lag_count += value,
                "outpost_sync_lag_seconds_bucket" => {
                    let le = match label(labels, "le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(s) => match s.parse::<f64>() {
                            Ok(x) => x,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += value;
                }
                _ => {}
            }
        }
        let mut b: Vec<(f64, f64)> = buckets.into_values().collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        m.lag_buckets = b;
        m
    }

    /// `self - before` (counters and buckets).
    pub fn since(&self, before: &SyncMetrics) -> SyncMetrics {
        let bucket = |le: f64| {
            before
                .lag_buckets
                .iter()
                .find(|b| b.0 == le)
                .map_or(0.0, |b| b.1)
        };
        SyncMetrics {
            bytes_sent: self.bytes_sent - before.bytes_sent,
            entries_sent: self.entries_sent - before.entries_sent,
            bytes_received: self.bytes_received - before.bytes_received,
            entries_received: self.entries_received - before.entries_received,
            lag_buckets: self
                .lag_buckets
                .iter()
                .map(|&(le, c)| (le, c - bucket(le)))
                .collect(),
            lag_count: self.lag_count - before.lag_count,
        }
    }

    /// Sum of several nodes' metrics.
    pub fn sum<'a>(ms: impl IntoIterator<Item = &'a SyncMetrics>) -> SyncMetrics {
        let mut out = SyncMetrics::default();
        for m in ms {
            out.bytes_sent += m.bytes_sent;
            out.entries_sent += m.entries_sent;
            out.bytes_received += m.bytes_received;
            out.entries_received += m.entries_received;
            out.lag_count += m.lag_count;
            for &(le, c) in &m.lag_buckets {
                match out.lag_buckets.iter_mut().find(|b| b.0 == le) {
                    Some(b) => b.1 += c,
                    None => out.lag_buckets.push((le, c)),
                }
            }
        }
        out.lag_buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
        out
    }

    /// The q-quantile of the lag histogram in seconds, interpolated linearly within its bucket
    /// (as Prometheus' `histogram_quantile`); `Err(bound)` if it lies beyond the last finite
    /// bucket; `None` without observations.
    pub fn lag_quantile(&self, q: f64) -> Option<Result<f64, f64>> {
        let total = self.lag_buckets.last().map_or(0.0, |b| b.1);
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.lag_buckets {
            if c >= rank && c > prev.1 {
                if le.is_infinite() {
                    return Some(Err(prev.0));
                }
                let frac = (rank - prev.1) / (c - prev.1);
                return Some(Ok(prev.0 + (le - prev.0) * frac));
            }
            prev = (le, c);
        }
        Some(Err(prev.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP outpost_sync_lag_seconds x
# TYPE outpost_sync_lag_seconds histogram
outpost_sync_lag_seconds_bucket{peer="https://127.0.0.1:1",le="0.001"} 10
outpost_sync_lag_seconds_bucket{peer="https://127.0.0.1:1",le="0.0025"} 90
outpost_sync_lag_seconds_bucket{peer="https://127.0.0.1:1",le="0.005"} 100
outpost_sync_lag_seconds_bucket{peer="https://127.0.0.1:1",le="+Inf"} 100
outpost_sync_lag_seconds_bucket{peer="b",le="0.001"} 0
outpost_sync_lag_seconds_bucket{peer="b",le="0.0025"} 0
outpost_sync_lag_seconds_bucket{peer="b",le="0.005"} 0
outpost_sync_lag_seconds_bucket{peer="b",le="+Inf"} 100
outpost_sync_lag_seconds_count{peer="b"} 100
outpost_sync_lag_seconds_count{peer="https://127.0.0.1:1"} 100
outpost_sync_bytes_sent_total{peer="a"} 1000
outpost_sync_bytes_sent_total{peer="b"} 24
outpost_sync_entries_sent_total{peer="a"} 7
"#;

    #[test]
    fn parses_and_interpolates() {
        let m = SyncMetrics::parse(TEXT);
        assert_eq!(m.bytes_sent, 1024.0);
        assert_eq!(m.entries_sent, 7.0);
        assert_eq!(m.lag_count, 200.0);
        assert_eq!(m.lag_buckets.len(), 4);
        // 200 observations: 10 ≤ 1 ms, 90 ≤ 2.5 ms, 100 ≤ 5 ms, 200 in +Inf.
        let p05 = m.lag_quantile(0.05).unwrap().unwrap();
        assert!((p05 - 0.001).abs() < 1e-9, "{p05}");
        let p25 = m.lag_quantile(0.25).unwrap().unwrap();
        assert!((p25 - (0.001 + 0.0015 * 40.0 / 80.0)).abs() < 1e-9, "{p25}");
        assert_eq!(m.lag_quantile(0.99), Some(Err(0.005)));
        let zero = m.since(&m);
        assert_eq!(zero.lag_quantile(0.5), None);
        assert_eq!(zero.bytes_sent, 0.0);
        let two = SyncMetrics::sum([&m, &m]);
        assert_eq!(two.lag_buckets[1].1, 180.0);
    }

    #[test]
    fn vectors() {
        let s = serde_json::json!({"log": {"1": 5, "2": 3}});
        let a = log_vector(&s);
        let b: Vector = [("1".to_string(), 6), ("3".to_string(), 1)].into();
        assert!(!covers(&a, &b));
        let u = union(&[a.clone(), b.clone()]);
        assert!(covers(&u, &a) && covers(&u, &b));
        assert_eq!(missing(&a, &u), 2);
        assert_eq!(u["1"], 6);
    }
}
