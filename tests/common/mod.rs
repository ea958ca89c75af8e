//! Test harness: starts real `outpost` processes on loopback ports chosen at
//! run time (port 0, read back from the READY line) and stops them.
#![allow(dead_code)]

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
}

#[derive(Default)]
pub struct Options<'a> {
    pub init: bool,
    pub env: Vec<(&'a str, String)>,
    pub args: Vec<&'a str>,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options<'_>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        if opts.init {
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
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
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
        Server {
            api: field("api="),
            admin: field("admin="),
            child,
            dir,
            stderr: err_rx,
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
