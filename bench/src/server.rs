//! Starting and stopping a real `outpost serve` process on loopback.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

pub struct Outpost {
    child: Child,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    /// The sync listener (`sync=https://...` on the READY line), for nodes with a certificate.
    pub sync: Option<SocketAddr>,
    pub log_path: PathBuf,
    pub data_dir: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct Shutdown {
    pub graceful: bool,
    pub exit: String,
    pub seconds: f64,
}

fn parse_addr(url: &str) -> Result<SocketAddr> {
    let hostport = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http URL: {url}"))?
        .trim_end_matches('/');
    let addr: SocketAddr = hostport
        .parse()
        .with_context(|| format!("bad address in {url}"))?;
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "outpost listens on non-loopback {addr}"
    );
    Ok(addr)
}

/// Parse `READY api=http://127.0.0.1:PORT admin=http://127.0.0.1:PORT2`.
pub fn parse_ready(line: &str) -> Result<(SocketAddr, SocketAddr)> {
    let mut words = line.split_whitespace();
    anyhow::ensure!(words.next() == Some("READY"), "not a READY line: {line}");
    let (mut api, mut admin) = (None, None);
    for w in words {
        if let Some(u) = w.strip_prefix("api=") {
            api = Some(parse_addr(u)?);
        } else if let Some(u) = w.strip_prefix("admin=") {
            admin = Some(parse_addr(u)?);
        }
    }
    Ok((
        api.context("READY line without api=")?,
        admin.context("READY line without admin=")?,
    ))
}

/// The `sync=https://127.0.0.1:PORT` address of a READY line, if there is one.
pub fn parse_ready_sync(line: &str) -> Result<Option<SocketAddr>> {
    let Some(url) = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sync="))
    else {
        return Ok(None);
    };
    let hostport = url
        .strip_prefix("https://")
        .with_context(|| format!("not an https URL: {url}"))?
        .trim_end_matches('/');
    let addr: SocketAddr = hostport
        .parse()
        .with_context(|| format!("bad address in {url}"))?;
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "outpost syncs on non-loopback {addr}"
    );
    Ok(Some(addr))
}

/// The last `max` bytes of a file, for error messages.
pub fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

impl Outpost {
    /// Start `bin serve` with a fresh data directory inside `dir` and `env` added to its
    /// environment, and wait for READY.
    pub fn start(
        bin: &Path,
        dir: &Path,
        extra_args: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<Self> {
        let data_dir = dir.join("outpost-data");
        let log_path = dir.join("outpost.log");
        let log = File::create(&log_path)?;
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(extra_args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("outpost-stdout".into())
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let mut tx = Some(tx);
                // Keep draining after READY so the child never blocks on a full pipe.
                while let Some(Ok(line)) = lines.next() {
                    if line.starts_with("READY") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(line);
                        }
                    }
                }
            })?;
        let mut outpost = Outpost {
            child,
            api: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            sync: None,
            log_path,
            data_dir,
        };
        let line = match rx.recv_timeout(timeout) {
            Ok(line) => line,
            Err(e) => {
                // If stdout closed, the process is exiting: give it a moment to be reaped.
                std::thread::sleep(Duration::from_millis(100));
                let status = outpost.child.try_wait().ok().flatten();
                let _ = outpost.child.kill();
                bail!(
                    "outpost did not print READY ({e}; exit {status:?}); log tail:\n{}",
                    tail(&outpost.log_path, 2000)
                );
            }
        };
        let (api, admin) = parse_ready(&line)?;
        outpost.api = api;
        outpost.admin = admin;
        outpost.sync = parse_ready_sync(&line)?;
        Ok(outpost)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` if the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| format!("{s}"))
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL.
    pub fn stop(mut self, grace: Duration) -> Shutdown {
        let t0 = Instant::now();
        if let Some(exit) = self.exited() {
            return Shutdown {
                graceful: false,
                exit: format!("already exited: {exit}"),
                seconds: 0.0,
            };
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        while t0.elapsed() < grace {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Shutdown {
                    graceful: true,
                    exit: format!("{status}"),
                    seconds: t0.elapsed().as_secs_f64(),
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map(|s| format!("{s}"))
            .unwrap_or_default();
        Shutdown {
            graceful: false,
            exit: format!("killed after {grace:?}: {status}"),
            seconds: t0.elapsed().as_secs_f64(),
        }
    }
}

impl Drop for Outpost {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Total size of the files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The database file of an outpost data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("outpost.db")
}

/// Parse `KEY=VALUE` (for `--compare-env`, `--outpost-env`).
pub fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Resident set size of a process: (VmRSS, VmHWM) in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Ok((
        field("VmRSS:").context("no VmRSS")?,
        field("VmHWM:").unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line() {
        let (api, admin) =
            parse_ready("READY api=http://127.0.0.1:4321 admin=http://127.0.0.1:4322/").unwrap();
        assert_eq!(api.port(), 4321);
        assert_eq!(admin.port(), 4322);
        assert!(parse_ready("READY api=http://10.0.0.1:1 admin=http://127.0.0.1:2").is_err());
        assert!(parse_ready("hello").is_err());
        let line = "READY api=http://127.0.0.1:1 admin=http://127.0.0.1:2 sync=https://127.0.0.1:3";
        assert_eq!(parse_ready_sync(line).unwrap().unwrap().port(), 3);
        assert!(parse_ready_sync("READY api=http://127.0.0.1:1")
            .unwrap()
            .is_none());
        assert!(parse_ready_sync("READY sync=http://127.0.0.1:3").is_err());
    }

    #[test]
    fn env_pair() {
        assert_eq!(
            parse_env_pair("OUTPOST_CRDT_REPLICATE=[]").unwrap(),
            ("OUTPOST_CRDT_REPLICATE".into(), "[]".into())
        );
        assert_eq!(parse_env_pair("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env_pair("nope").is_err());
        assert!(parse_env_pair("=x").is_err());
    }
}
