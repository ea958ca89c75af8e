//! A TCP fault proxy for the partition benchmark: listens on 127.0.0.1:0 and forwards every
//! connection to a target address byte for byte (TLS passes through untouched), under a fault
//! that can be changed at run time:
//!
//! - [`Fault::Pass`]: forward as soon as bytes arrive;
//! - [`Fault::Blackhole`]: a silent partition. Connections stay open and new ones are accepted
//!   but not connected upstream; nothing is read or forwarded in either direction, so both ends
//!   see only silence. On heal, what was sent meanwhile is delivered (as TCP would after a real
//!   partition) and held connections are connected upstream;
//! - [`Fault::Refuse`]: every existing connection is reset (RST on both sides) and new ones are
//!   reset as soon as they are accepted.
//!
//! Proxies run on a runtime of their own (one thread), so that they forward while the load
//! generator's runtime is busy or idle. Same design as `tests/common/proxy.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    Pass,
    Blackhole,
    Refuse,
}

impl Fault {
    pub fn parse(s: &str) -> Result<Fault, String> {
        match s {
            "blackhole" => Ok(Fault::Blackhole),
            "refuse" => Ok(Fault::Refuse),
            _ => Err(format!("expected blackhole or refuse, got {s:?}")),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Fault::Pass => "pass",
            Fault::Blackhole => "blackhole",
            Fault::Refuse => "refuse",
        }
    }
}

const CHUNK: usize = 16 * 1024;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime")
    })
}

struct Shared {
    target: SocketAddr,
    fault: watch::Sender<Fault>,
    bytes: AtomicU64,
}

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` (loopback only) in `Pass` mode.
    pub fn start(target: SocketAddr) -> Result<Proxy> {
        anyhow::ensure!(
            target.ip().is_loopback(),
            "refusing to proxy to non-loopback {target}"
        );
        let rt = runtime();
        // Bound here, registered with the proxy runtime (callable from inside another runtime).
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").context("proxy bind")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _guard = rt.enter();
            TcpListener::from_std(std_listener)?
        };
        let (fault, _) = watch::channel(Fault::Pass);
        let shared = Arc::new(Shared {
            target,
            fault,
            bytes: AtomicU64::new(0),
        });
        let accept = rt.spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy {
            addr,
            shared,
            accept,
        })
    }

    /// `https://127.0.0.1:<proxy port>`, for `--peer`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set(Fault::Refuse);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = client.set_nodelay(true);
        tokio::spawn(connection(client, shared.clone()));
    }
}

/// Closes with RST instead of FIN. SO_LINGER 0 does not block on drop.
#[allow(deprecated)]
fn reset(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

async fn connection(client: TcpStream, shared: Arc<Shared>) {
    let mut fault = shared.fault.subscribe();
    // Connect upstream only once the link is not blackholed: a partitioned peer sees no
    // connection at all.
    loop {
        let f = *fault.borrow_and_update();
        match f {
            Fault::Refuse => return reset(&client),
            Fault::Blackhole => {
                if fault.changed().await.is_err() {
                    return reset(&client);
                }
            }
            Fault::Pass => break,
        }
    }
    let upstream =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(shared.target)).await
        {
            Ok(Ok(s)) => s,
            _ => return reset(&client),
        };
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = pump(cr, uw, shared.fault.subscribe(), &shared.bytes);
    let down = pump(ur, cw, shared.fault.subscribe(), &shared.bytes);
    tokio::pin!(up, down);
    // A reset in either direction resets both sockets; a clean EOF of one direction
    // (passed on as FIN) leaves the other running.
    tokio::select! {
        r = &mut up => if r.is_ok() { let _ = down.await; },
        r = &mut down => if r.is_ok() { let _ = up.await; },
    }
}

struct Reset;

/// Forwards `from` → `to` under the current fault until EOF (Ok) or a reset (Err, after
/// setting SO_LINGER 0 on both sockets).
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
    let mut buf = vec![0u8; CHUNK];
    loop {
        let f = *fault.borrow_and_update();
        match f {
            Fault::Refuse => return fail(&from, &to),
            Fault::Blackhole => {
                if fault.changed().await.is_err() {
                    return fail(&from, &to);
                }
                continue;
            }
            Fault::Pass => {}
        }
        let n = tokio::select! {
            changed = fault.changed() => {
                if changed.is_err() {
                    return fail(&from, &to);
                }
                continue;
            }
            r = from.readable() => {
                if r.is_err() {
                    return fail(&from, &to);
                }
                match from.try_read(&mut buf) {
                    Ok(0) => {
                        // Dropping the write half sends FIN.
                        drop(to);
                        return Ok(());
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return fail(&from, &to),
                }
            }
        };
        let mut off = 0;
        while off < n {
            // A write blocked by a full receiver still notices a fault change: a blackhole
            // holds the rest of the chunk, a reset drops it.
            tokio::select! {
                changed = fault.changed() => {
                    if changed.is_err() {
                        return fail(&from, &to);
                    }
                    loop {
                        let f = *fault.borrow_and_update();
                        match f {
                            Fault::Refuse => return fail(&from, &to),
                            Fault::Pass => break,
                            Fault::Blackhole => {
                                if fault.changed().await.is_err() {
                                    return fail(&from, &to);
                                }
                            }
                        }
                    }
                }
                r = to.writable() => {
                    if r.is_err() {
                        return fail(&from, &to);
                    }
                    match to.try_write(&buf[off..n]) {
                        Ok(k) => {
                            off += k;
                            bytes.fetch_add(k as u64, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return fail(&from, &to),
                    }
                }
            }
        }
    }
}
