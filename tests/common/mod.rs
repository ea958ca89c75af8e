//! Test harness: starts real `outpost` processes on loopback ports chosen at
//! run time (port 0, read back from the READY line) and stops them.
#![allow(dead_code)]

pub mod proxy;
pub mod s3;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outpost"))
}

/// Runs `outpost <args>` to completion and returns (status, stdout, stderr).
pub fn run(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run outpost");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn init(dir: &Path) {
    let (status, _, err) = run(&["init", "--data-dir", dir.to_str().unwrap()]);
    assert!(status.success(), "init failed: {err}");
}

pub fn token(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["token", "--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (status, out, err) = run(&args);
    assert!(status.success(), "token failed: {err}");
    out.trim().to_string()
}

pub struct Server {
    pub child: Child,
    pub api: String,
    pub admin: String,
    pub dir: tempfile::TempDir,
    stderr: mpsc::Receiver<String>,
    /// The sync listener from the READY line (`https://127.0.0.1:PORT`), when
    /// the node has a certificate.
    pub sync: Option<String>,
    /// A full-access token, minted at start when the node was started with
    /// `ca_dir` or `sync_listen` and has a JWT key (`init` makes one).
    pub token: Option<String>,
}

#[derive(Default)]
pub struct Options<'a> {
    pub init: bool,
    pub env: Vec<(&'a str, String)>,
    pub args: Vec<&'a str>,
    /// Run `outpost init --ca-dir DIR` first (implies `init`): the node gets a
    /// certificate from the cluster CA in DIR (created on first use).
    pub ca_dir: Option<&'a Path>,
    /// `--sync-listen ADDR` (e.g. "127.0.0.1:0").
    pub sync_listen: Option<String>,
    /// `--peer URL` for each.
    pub peers: Vec<String>,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options<'_>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        if let Some(ca) = opts.ca_dir {
            init_in_cluster(dir.path(), ca);
        } else if opts.init {
            init(dir.path());
        }
        Self::start_in(dir, opts)
    }

    pub fn start_in(dir: tempfile::TempDir, opts: Options<'_>) -> Server {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--data-dir", dir.path().to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(&opts.args)
            .env("OUTPOST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Never the default sync port: tests run in parallel, and a node
        // that `init` gave a certificate starts its sync listener.
        let sync_listen = opts.sync_listen.as_deref().unwrap_or("127.0.0.1:0");
        if !opts.args.contains(&"--sync-listen") {
            cmd.args(["--sync-listen", sync_listen]);
        }
        for peer in &opts.peers {
            cmd.args(["--peer", peer]);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let token = (opts.ca_dir.is_some() || opts.sync_listen.is_some())
            && dir.path().join("keys/jwt.key.pem").exists();
        let token = token.then(|| self::token(dir.path(), &[]));
        let mut child = cmd.spawn().expect("spawn outpost");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("READY ") {
                    let _ = ready_tx.send(line);
                }
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let line = match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let logs: Vec<String> = err_rx.try_iter().collect();
                panic!("outpost did not become ready: {}", logs.join("\n"));
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap()
                .to_string()
        };
        let sync = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("sync="))
            .map(str::to_string);
        Server {
            api: field("api="),
            admin: field("admin="),
            child,
            dir,
            stderr: err_rx,
            sync,
            token,
        }
    }

    pub fn ws_url(&self) -> String {
        self.api.replacen("http", "ws", 1)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        wait_exit(&mut self.child, Duration::from_secs(20))
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGKILL (no chance to flush, checkpoint or close anything) and
    /// reaps the process.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        let _ = self.child.kill();
        wait_exit(&mut self.child, Duration::from_secs(20))
    }

    /// Starts a new `outpost serve` on this server's data dir (killing this
    /// process first if it is still running) and waits for its READY line.
    pub fn restart(mut self, opts: Options<'_>) -> Server {
        if self.alive() {
            self.kill();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Server::start_in(dir, opts)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// POSTs JSON and returns (status, parsed body).
pub fn post(url: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut req = ureq::post(url).set("content-type", "application/json");
    if let Some(t) = token {
        req = req.set("authorization", &format!("Bearer {t}"));
    }
    let resp = match req.send_string(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json)
}

pub fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// One pipeline request: execute `sql` then close.
pub fn execute_body(sql: &str) -> String {
    serde_json::json!({
        "baton": null,
        "requests": [
            {"type": "execute", "stmt": {"sql": sql}},
            {"type": "close"}
        ]
    })
    .to_string()
}

/// Executes `sql` over /v2/pipeline and returns the first result.
pub fn exec(server: &Server, token: Option<&str>, sql: &str) -> serde_json::Value {
    let (status, body) = post(
        &format!("{}/v2/pipeline", server.api),
        token,
        &execute_body(sql),
    );
    assert_eq!(status, 200, "{body}");
    body["results"][0].clone()
}

/// Polls `f` until it returns true, or panics after `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Replication: clusters of nodes sharing a CA, status, digests, writes with
// retries.

/// `outpost init --data-dir DIR --ca-dir CA`: node id, JWT keys and a node
/// certificate signed by the cluster CA in CA (created there on first use).
pub fn init_in_cluster(dir: &Path, ca_dir: &Path) {
    let (status, out, err) = run(&[
        "init",
        "--data-dir",
        dir.to_str().unwrap(),
        "--ca-dir",
        ca_dir.to_str().unwrap(),
    ]);
    assert!(
        status.success(),
        "init --ca-dir failed ({status}):\n{out}\n{err}"
    );
}

/// Environment for nodes in replication tests: quick reconnects and a quick
/// verdict on silent links.
pub fn sync_env() -> Vec<(&'static str, String)> {
    vec![
        ("OUTPOST_SYNC_RETRY_MAX", "1s".into()),
        ("OUTPOST_SYNC_PEER_TIMEOUT", "2s".into()),
        ("OUTPOST_SYNC_HEARTBEAT", "200ms".into()),
        // Compaction runs all the time, so every scenario exercises it.
        ("OUTPOST_SYNC_COMPACT_INTERVAL", "300ms".into()),
    ]
}

/// A node of the cluster whose CA is in `ca` (created on first use), with
/// a sync listener on a free port, quick sync settings (`sync_env`) and
/// these peers to dial.
pub fn cluster_node(ca: &Path, peers: Vec<String>) -> Server {
    Server::start_with(Options {
        ca_dir: Some(ca),
        sync_listen: Some("127.0.0.1:0".into()),
        peers,
        env: sync_env(),
        ..Options::default()
    })
}

/// What became of a write sent over HTTP.
#[derive(Debug, Clone)]
pub enum Written {
    /// HTTP 200 and the statement ran: committed.
    Acked(serde_json::Value),
    /// The statement failed in-band, or the request was refused with a
    /// non-retryable HTTP error: not committed.
    Failed(String),
    /// No complete answer: it may or may not have committed.
    Unknown(String),
}

impl Written {
    pub fn acked(&self) -> Option<&serde_json::Value> {
        match self {
            Written::Acked(v) => Some(v),
            _ => None,
        }
    }
}

pub fn int_arg(i: i64) -> serde_json::Value {
    serde_json::json!({"type": "integer", "value": i.to_string()})
}

pub fn text_arg(s: &str) -> serde_json::Value {
    serde_json::json!({"type": "text", "value": s})
}

pub fn null_arg() -> serde_json::Value {
    serde_json::json!({"type": "null"})
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
}

impl Server {
    /// The admin `/status` JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = get(&format!("{}/status", self.admin));
        assert_eq!(code, 200, "GET /status: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
    }

    /// `/status`'s `node_id`.
    pub fn node_id(&self) -> String {
        let s = self.status();
        s["node_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no node_id in /status: {s}"))
            .to_string()
    }

    /// Runs `outpost check [extra] --data-dir DIR` (fine while the node runs);
    /// returns (exit code 0, stdout + stderr).
    pub fn check(&self, extra: &[&str]) -> (bool, String) {
        let mut args = vec!["check"];
        args.extend_from_slice(extra);
        args.extend(["--data-dir", self.data_dir().to_str().unwrap()]);
        let (status, out, err) = run(&args);
        (status.success(), format!("{out}{err}"))
    }

    /// The digest `outpost check --digest` prints; panics unless the check
    /// passed.
    pub fn digest(&self) -> String {
        let (ok, out) = self.check(&["--digest"]);
        assert!(ok, "`outpost check --digest` failed:\n{out}");
        digest_of(&out).unwrap_or_else(|| panic!("no digest line:\n{out}"))
    }

    /// A handle for HTTP requests to this node, which threads can share.
    pub fn client(&self) -> Client {
        Client {
            api: self.api.clone(),
            token: self.token.clone(),
        }
    }

    /// See [`Client::write`].
    pub fn write(&self, sql: &str, args: Vec<serde_json::Value>) -> Written {
        self.client().write(sql, args)
    }

    /// See [`Client::sql`].
    pub fn sql(&self, sql: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.client().sql(sql, args)
    }

    /// See [`Client::rows`].
    pub fn rows(&self, sql: &str, args: Vec<serde_json::Value>) -> Vec<Vec<serde_json::Value>> {
        self.client().rows(sql, args)
    }
}

/// The API address and token of a node.
#[derive(Clone, Debug)]
pub struct Client {
    pub api: String,
    pub token: Option<String>,
}

impl Client {
    /// Executes one statement with arguments; retries what was certainly not
    /// executed (429, SQLITE_BUSY) for up to 10 s. Never retries after a
    /// transport error (the outcome is unknown then).
    pub fn write(&self, sql: &str, args: Vec<serde_json::Value>) -> Written {
        let body = serde_json::json!({"baton": null, "requests": [
            {"type": "execute", "stmt": {"sql": sql, "args": args}},
            {"type": "close"},
        ]})
        .to_string();
        let url = format!("{}/v2/pipeline", self.api);
        let deadline = Instant::now() + Duration::from_secs(10);
        let agent = agent();
        loop {
            let mut req = agent.post(&url).set("content-type", "application/json");
            if let Some(t) = &self.token {
                req = req.set("authorization", &format!("Bearer {t}"));
            }
            let retry = match req.send_string(&body) {
                Ok(resp) => {
                    let Ok(text) = resp.into_string() else {
                        return Written::Unknown(format!("{sql}: body cut short"));
                    };
                    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
                        return Written::Unknown(format!("{sql}: not JSON: {text}"));
                    };
                    let first = &json["results"][0];
                    if first["type"] == "ok" {
                        return Written::Acked(first["response"]["result"].clone());
                    }
                    let busy = first["error"]["code"] == "SQLITE_BUSY";
                    if !busy {
                        return Written::Failed(format!("{sql}: {first}"));
                    }
                    format!("{first}")
                }
                Err(ureq::Error::Status(429, r)) => r.into_string().unwrap_or_default(),
                Err(ureq::Error::Status(code, r)) => {
                    let text = r.into_string().unwrap_or_default();
                    return Written::Failed(format!("{sql}: HTTP {code}: {text}"));
                }
                Err(e) => return Written::Unknown(format!("{sql}: {e}")),
            };
            if Instant::now() > deadline {
                return Written::Failed(format!("{sql}: still refused after 10 s: {retry}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Executes `sql` (with the node's token) and panics unless it is acked.
    pub fn sql(&self, sql: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        match self.write(sql, args) {
            Written::Acked(v) => v,
            other => panic!("{} {sql}: {other:?}", self.api),
        }
    }

    /// The rows of a query, as Hrana values.
    pub fn rows(&self, sql: &str, args: Vec<serde_json::Value>) -> Vec<Vec<serde_json::Value>> {
        let r = self.sql(sql, args);
        r["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("no rows in {r}"))
            .iter()
            .map(|row| row.as_array().cloned().unwrap_or_default())
            .collect()
    }
}

/// The hex of the first `digest <hex>` line.
pub fn digest_of(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("digest "))
        .map(|d| d.trim().to_string())
}

/// A Hrana value as plain JSON: integers as numbers, text as strings, null.
pub fn plain(v: &serde_json::Value) -> serde_json::Value {
    match v["type"].as_str() {
        Some("integer") => v["value"]
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .map_or(serde_json::Value::Null, Into::into),
        Some("null") => serde_json::Value::Null,
        _ => v["value"].clone(),
    }
}

/// A tool from the environment variable or PATH; None (after a loud
/// SKIPPED line) when absent, a failure when OUTPOST_REQUIRE_TOOLS=1.
pub fn tool(test: &str, var: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} is not a file", path.display());
        return Some(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("OUTPOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "{name} is required (OUTPOST_REQUIRE_TOOLS=1): install it (scripts/deploy-tools.sh) or set {var}"
        );
        // Straight to stderr: the test harness captures eprintln! of
        // passing tests, and a skip must be seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED {test}: {name} not found (set {var} or install it: scripts/deploy-tools.sh) ***\n"
        );
    }
    found
}
