//! A TCP fault proxy for replication tests: listens on 127.0.0.1:0 and
//! forwards every connection to a target address, byte for byte (TLS passes
//! through untouched), with a fault that can be changed at run time:
//!
//! - [`Fault::Pass`]: forward as soon as bytes arrive;
//! - [`Fault::Delay`]: deliver each chunk that long after it arrived (a delay
//!   line: latency, not a throughput cap);
//! - [`Fault::Blackhole`]: a silent partition. Connections stay open (new
//!   ones are accepted, but not connected upstream), nothing is read or
//!   forwarded in either direction, so senders see only silence and their
//!   own buffers filling up. What was sent meanwhile is delivered after a
//!   heal, as TCP would after a real partition, unless an end gave up first;
//! - [`Fault::Refuse`]: every existing connection is reset (RST on both
//!   sides) and new ones are reset as soon as they are accepted.
//!
//! The proxy runs on a small tokio runtime shared by every proxy of the test
//! process; dropping a [`Proxy`] resets its connections and stops listening.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Delay(Duration),
    Blackhole,
    Refuse,
}

/// Bytes read per chunk; also the granularity of `Delay`.
const CHUNK: usize = 16 * 1024;
/// Chunks held per direction (in a delay line) before reading stops.
const MAX_QUEUED: usize = 256;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime")
    })
}

struct Shared {
    target: Mutex<SocketAddr>,
    fault: watch::Sender<Fault>,
    accepted: AtomicU64,
    /// Connections currently open (client side accepted, not yet closed).
    open: AtomicU64,
    bytes: AtomicU64,
}

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` in `Pass` mode.
    pub fn start(target: SocketAddr) -> Proxy {
        let rt = runtime();
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("proxy bind");
        let addr = listener.local_addr().unwrap();
        let (fault, _) = watch::channel(Fault::Pass);
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            fault,
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        let accept = rt.spawn(accept_loop(listener, shared.clone()));
        Proxy {
            addr,
            shared,
            accept,
        }
    }

    /// Starts a proxy to a `host:port` (or `scheme://host:port[/...]`) string.
    pub fn to(target: &str) -> Proxy {
        Self::start(parse_addr(target))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://127.0.0.1:<proxy port>`, for `--peer`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    pub fn fault(&self) -> Fault {
        *self.shared.fault.borrow()
    }

    /// Back to `Pass`.
    pub fn heal(&self) {
        self.set(Fault::Pass);
    }

    /// Where new connections go from now on (existing ones keep theirs).
    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap() = target;
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set(Fault::Refuse);
    }
}

/// `127.0.0.1:8443`, `https://127.0.0.1:8443` or `https://127.0.0.1:8443/x`.
pub fn parse_addr(s: &str) -> SocketAddr {
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap();
    hostport
        .parse()
        .unwrap_or_else(|e| panic!("not an address: {s:?}: {e}"))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nodelay(true);
        tokio::spawn(connection(client, shared.clone()));
    }
}

/// Closes with RST instead of FIN (unsent data is discarded). SO_LINGER 0
/// does not block on drop (only a positive linger time does).
#[allow(deprecated)]
fn reset(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(client: TcpStream, shared: Arc<Shared>) {
    shared.open.fetch_add(1, Ordering::Relaxed);
    let _guard = OpenGuard(shared.clone());
    let mut fault = shared.fault.subscribe();
    // Connect upstream only once the link is not blackholed: a partitioned
    // peer sees no connection at all.
    loop {
        let f = *fault.borrow_and_update();
        match f {
            Fault::Refuse => return reset(&client),
            Fault::Blackhole => {
                if fault.changed().await.is_err() {
                    return reset(&client);
                }
            }
            Fault::Pass | Fault::Delay(_) => break,
        }
    }
    let target = *shared.target.lock().unwrap();
    let upstream =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            _ => return reset(&client),
        };
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = pump(cr, uw, shared.fault.subscribe(), &shared.bytes);
    let down = pump(ur, cw, shared.fault.subscribe(), &shared.bytes);
    tokio::pin!(up, down);
    // A reset in either direction resets both sockets (the failing pump set
    // SO_LINGER 0 on both); dropping the other pump closes them. A clean end
    // of one direction (EOF, passed on as FIN) leaves the other running.
    tokio::select! {
        r = &mut up => if r.is_ok() { let _ = down.await; },
        r = &mut down => if r.is_ok() { let _ = up.await; },
    }
}

struct Reset;

/// Forwards `from` → `to` under the current fault until EOF (Ok) or a reset
/// (Err, after setting SO_LINGER 0 on both sockets).
async fn pump(
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
    bytes: &AtomicU64,
) -> Result<(), Reset> {
    let fail = |from: &OwnedReadHalf, to: &OwnedWriteHalf| {
        reset(from.as_ref());
        reset(to.as_ref());
        Err(Reset)
    };
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; CHUNK];
    let mut eof = false;
    loop {
        let f = *fault.borrow_and_update();
        if f == Fault::Refuse {
            return fail(&from, &to);
        }
        if eof && queue.is_empty() {
            // Dropping the write half sends FIN.
            drop(to);
            return Ok(());
        }
        let flowing = f != Fault::Blackhole;
        let due = queue.front().map(|(d, _)| *d);
        tokio::select! {
            changed = fault.changed() => {
                if changed.is_err() {
                    return fail(&from, &to);
                }
            }
            r = from.readable(), if flowing && !eof && queue.len() < MAX_QUEUED => {
                if r.is_err() {
                    return fail(&from, &to);
                }
                match from.try_read(&mut buf) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        // The fault now, not at the top of the loop: a
                        // change made before these bytes were sent applies.
                        let delay = match *fault.borrow() {
                            Fault::Delay(d) => d,
                            _ => Duration::ZERO,
                        };
                        queue.push_back((Instant::now() + delay, buf[..n].to_vec()));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return fail(&from, &to),
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if flowing && due.is_some() => {
                let (_, chunk) = queue.pop_front().unwrap();
                let mut off = 0;
                while off < chunk.len() {
                    // A write blocked by a full receiver still notices a reset.
                    tokio::select! {
                        changed = fault.changed() => {
                            if changed.is_err() || *fault.borrow_and_update() == Fault::Refuse {
                                return fail(&from, &to);
                            }
                        }
                        r = to.writable() => {
                            if r.is_err() {
                                return fail(&from, &to);
                            }
                            match to.try_write(&chunk[off..]) {
                                Ok(n) => {
                                    off += n;
                                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                Err(_) => return fail(&from, &to),
                            }
                        }
                    }
                }
            }
        }
    }
}
