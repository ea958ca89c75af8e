//! The sync transport: runs the sans-IO [`Core`] over real connections.
//!
//! - **Listener**: HTTPS on `sync.listen` with mutual TLS (a client must
//!   present a certificate signed by the cluster CA); `GET /sync/v1/link`
//!   upgrades to a WebSocket that carries one link.
//! - **Dialer**: for each configured peer, a WebSocket over rustls with
//!   this node's certificate, reconnected with the core's backoff.
//! - **Driver**: one task owns the core. Everything that happens — a frame
//!   arrived, a link closed, the log advanced (local commit or apply), a
//!   read or an apply finished, a tick — becomes an [`Input`]; the driver
//!   carries out the [`Output`]s: frames go to the link's writer task, log
//!   reads run on a blocking thread with [`LogReader`], applies go to the
//!   database's writer.
//!
//! Each link has a bounded outgoing queue; the core never has more than
//! `sync.window_batches` batches in flight per link, so the queue only
//! holds acks and heartbeats beyond that. A peer whose certificate names a
//! node id must say the same node id in its Hello.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::mpsc;

use super::core::{
    ApplyOutcome, Core, CoreConfig, Identity, Input, LinkId, LinkStatus, Output, PauseKind,
};
use super::proto::Msg;
use super::tls;
use super::vv::VersionVector;
use crate::config::Config;
use crate::db::capture::{Applied, LogEntry};
use crate::db::compact::{CompactPlan, PeerAck};
use crate::db::log::{LogReader, NodeMeta};
use crate::db::Database;
use crate::metrics::Metrics;
use crate::ratelimit::{self, RateLimiter};
use crate::sync::rules::Outbound as ReadFor;

/// Frames queued to one link's writer before the driver drops the link.
const LINK_QUEUE: usize = 64;
/// Events queued to the driver (backpressure for links' readers).
const DRIVER_QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot open the change log for reading: {0}")]
    Log(#[from] libsql_sys::rusqlite::Error),
    #[error("cannot listen on {addr} (sync.listen): {source} (another process may hold the port: stop it, or pick another address with --sync-listen or sync.listen)")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("peer URL {0:?}: expected https://host:port")]
    PeerUrl(String),
}

enum Event {
    Input(Input),
    /// A new link: where its outgoing frames go and whose it is.
    Open {
        link: LinkId,
        tx: mpsc::Sender<Msg>,
        label: String,
    },
    Status(tokio::sync::oneshot::Sender<serde_json::Value>),
    /// Time to compact the log: the driver starts a compaction with what
    /// the connected peers acknowledged.
    Compact,
    /// A compaction finished; the log may now lack entries below this.
    Compacted(VersionVector),
    /// Reading the log for this link failed: close it.
    ReadFailed(LinkId),
}

/// A running sync layer.
pub struct Sync {
    pub addr: SocketAddr,
    events: mpsc::Sender<Event>,
    server: actix_web::dev::ServerHandle,
}

impl Sync {
    /// The `/status` view of the peers (None if the driver stopped).
    pub async fn status(&self) -> Option<serde_json::Value> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.events.send(Event::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn stop(&self) {
        self.server.stop(true).await;
    }
}

/// Whether this node has what sync needs (a CA and a node certificate).
pub fn configured(config: &Config) -> bool {
    let (ca, cert, key) = config.sync.tls_paths(&config.node.data_dir);
    ca.exists() && cert.exists() && key.exists()
}

struct Shared {
    config: Config,
    db: Arc<Database>,
    metrics: Arc<Metrics>,
    events: mpsc::Sender<Event>,
    next_link: AtomicU64,
    client_tls: Arc<rustls::ClientConfig>,
    inbound: AtomicU64,
    /// The sync listener's bound address.
    addr: Mutex<Option<SocketAddr>>,
    /// Per peer node id: the last lag observed (seconds), entries quarantined.
    peer_stats: Mutex<HashMap<String, PeerStats>>,
    /// Per configured peer: why its last link ended or failed.
    peer_errors: Mutex<HashMap<usize, String>>,
    /// Automatic migrations when a peer is at a newer schema version.
    migrations: Mutex<AutoMigrate>,
    /// `sync.peer_entries_per_second` and `sync.peer_bytes_per_second`.
    peer_limits: PeerLimits,
}

/// Inbound rate limits, one bucket per peer node id.
struct PeerLimits {
    entries: Option<RateLimiter>,
    bytes: Option<RateLimiter>,
}

impl PeerLimits {
    /// Most peers tracked: configured peers plus inbound links.
    const MAX_PEERS: usize = 4096;

    fn new(config: &crate::config::SyncConfig) -> PeerLimits {
        let window = config.window_batches as u64;
        PeerLimits {
            entries: RateLimiter::new(
                config.peer_entries_per_second,
                window * config.batch_entries as u64,
                Self::MAX_PEERS,
            ),
            bytes: RateLimiter::new(
                config.peer_bytes_per_second,
                window * config.batch_bytes as u64,
                Self::MAX_PEERS,
            ),
        }
    }

    /// Waits until `peer` may have `entries` applied (backpressure: the
    /// batch is acknowledged later, so the peer's window stops it).
    /// Returns how long it waited.
    async fn admit(&self, peer: &str, entries: &[LogEntry]) -> Duration {
        let started = Instant::now();
        let key = ratelimit::key_of(peer);
        if let Some(limit) = &self.entries {
            limit.take_waiting(key, entries.len() as f64).await;
        }
        if let Some(limit) = &self.bytes {
            let bytes: usize = entries.iter().map(LogEntry::size).sum();
            limit.take_waiting(key, bytes as f64).await;
        }
        started.elapsed()
    }
}

/// Where the automatic migration for a newer peer stands.
#[derive(Default)]
struct AutoMigrate {
    running: bool,
    next_attempt: Option<Instant>,
    /// Why the last attempt did not reach the peer's version.
    last_error: Option<String>,
}

#[derive(Default, Clone, Copy)]
struct PeerStats {
    lag_seconds: f64,
    rejected: u64,
}

/// Binds the sync listener and starts the driver. Call inside the actix
/// system (the listener and tasks run on it).
pub fn start(config: &Config, db: Arc<Database>, metrics: Arc<Metrics>) -> Result<Sync, SyncError> {
    let (ca, cert, key) = config.sync.tls_paths(&config.node.data_dir);
    let server_tls = tls::server_config(&ca, &cert, &key)?;
    let client_tls = Arc::new(tls::client_config(&ca, &cert, &key)?);
    metrics.observe_certificate("sync", &cert);
    for url in &config.sync.peers {
        host_port(url)?;
    }
    let log = Arc::clone(db.log());
    let meta = log.meta()?;
    let (events_tx, events_rx) = mpsc::channel(DRIVER_QUEUE);
    let shared = Arc::new(Shared {
        config: config.clone(),
        db: Arc::clone(&db),
        metrics,
        events: events_tx.clone(),
        next_link: AtomicU64::new(1),
        client_tls,
        inbound: AtomicU64::new(0),
        addr: Mutex::new(None),
        peer_stats: Mutex::new(HashMap::new()),
        peer_errors: Mutex::new(HashMap::new()),
        migrations: Mutex::new(AutoMigrate::default()),
        peer_limits: PeerLimits::new(&config.sync),
    });
    let server_shared = Arc::clone(&shared);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(Arc::clone(&server_shared)))
            .route("/sync/v1/link", web::get().to(accept_link))
            .route(
                "/",
                web::get().to(|| async { HttpResponse::Ok().body("outpost sync\n") }),
            )
    })
    .on_connect(remember_peer_certificate)
    .disable_signals()
    .workers(1)
    .shutdown_timeout(2)
    .bind_rustls_0_23(&config.sync.listen, server_tls)
    .map_err(|source| SyncError::Bind {
        addr: config.sync.listen.clone(),
        source,
    })?;
    let addr = server.addrs()[0];
    *shared.addr.lock() = Some(addr);
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    actix_web::rt::spawn(watch_log(Arc::clone(&shared)));
    actix_web::rt::spawn(watch_schema(Arc::clone(&shared)));
    actix_web::rt::spawn(tick(Arc::clone(&shared)));
    if !config.sync.compact_interval.is_zero() {
        actix_web::rt::spawn(compact_periodically(Arc::clone(&shared)));
    }
    let driver = Driver::new(shared, log, meta);
    actix_web::rt::spawn(driver.run(events_rx));
    Ok(Sync {
        addr,
        events: events_tx,
        server: handle,
    })
}

/// Splits `https://host:port[/...]` into the host (for TLS) and `host:port`.
fn host_port(url: &str) -> Result<(String, String), SyncError> {
    let bad = || SyncError::PeerUrl(url.to_string());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), authority.to_string()))
}

/// The node id in the client certificate of an inbound connection.
#[derive(Clone)]
struct PeerCertificate(Option<String>);

fn remember_peer_certificate(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    if let Some(stream) = conn.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>() {
        let (_, session) = stream.get_ref();
        let node = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| tls::peer_node_id(cert.as_ref()));
        ext.insert(PeerCertificate(node));
    }
}

async fn accept_link(
    shared: web::Data<Arc<Shared>>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let cert_node = req.conn_data::<PeerCertificate>().and_then(|c| c.0.clone());
    let open = shared.inbound.load(Ordering::Relaxed);
    if open >= shared.config.sync.max_inbound as u64 {
        return Ok(HttpResponse::ServiceUnavailable().json(json!({
            "code": "SYNC_LINKS_EXHAUSTED",
            "message": format!("sync.max_inbound ({}) peer links are open", shared.config.sync.max_inbound),
        })));
    }
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let max = shared.config.sync.max_message_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let shared = Arc::clone(&shared);
    actix_web::rt::spawn(async move {
        shared.inbound.fetch_add(1, Ordering::Relaxed);
        let socket = Inbound { session, stream };
        // Labelled "inbound" until its Hello names it (bounded metric labels).
        run_link(&shared, socket, None, cert_node, "inbound".into()).await;
        shared.inbound.fetch_sub(1, Ordering::Relaxed);
    });
    Ok(response)
}

/// Registers a link with the driver; returns its id and outgoing queue.
async fn open_link(
    shared: &Shared,
    peer: Option<usize>,
    label: String,
) -> Option<(LinkId, mpsc::Receiver<Msg>)> {
    let link = shared.next_link.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let events = &shared.events;
    events.send(Event::Open { link, tx, label }).await.ok()?;
    events
        .send(Event::Input(Input::Connected { link, peer }))
        .await
        .ok()?;
    Some((link, rx))
}

/// Decodes a received frame; checks the Hello's node id against the
/// certificate. Err closes the link.
fn decode_frame(bytes: &[u8], cert_node: &Option<String>) -> Result<Msg, String> {
    let msg = Msg::decode(bytes).map_err(|e| e.to_string())?;
    if let (Msg::Hello(hello), Some(cert)) = (&msg, cert_node) {
        if &hello.node_id != cert {
            return Err(format!(
                "the peer's certificate is for node {cert} but it says it is {}",
                hello.node_id
            ));
        }
    }
    Ok(msg)
}

/// One received WebSocket frame, as a link cares about it.
enum Frame {
    Binary(Vec<u8>),
    /// Ping, pong: nothing for the core.
    Control,
    Closed,
}

/// The two WebSocket implementations (actix-ws for links peers opened,
/// tungstenite for links this node opened) behind one face.
trait LinkSocket {
    async fn recv(&mut self) -> Result<Frame, String>;
    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), String>;
    async fn close(self);
}

struct Inbound {
    session: actix_ws::Session,
    stream: actix_ws::AggregatedMessageStream,
}

impl LinkSocket for Inbound {
    async fn recv(&mut self) -> Result<Frame, String> {
        use actix_ws::AggregatedMessage as M;
        match self.stream.recv().await {
            Some(Ok(M::Binary(bytes))) => Ok(Frame::Binary(bytes.to_vec())),
            Some(Ok(M::Ping(p))) => {
                let _ = self.session.pong(&p).await;
                Ok(Frame::Control)
            }
            Some(Ok(M::Pong(_))) => Ok(Frame::Control),
            Some(Ok(M::Text(_))) => Err("a text frame on a sync link".into()),
            Some(Ok(M::Close(_))) | None => Ok(Frame::Closed),
            Some(Err(e)) => Err(format!(
                "reading from the link failed (a message over sync.max_message_bytes?): {e}"
            )),
        }
    }

    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        self.session.binary(bytes).await.map_err(|e| e.to_string())
    }

    async fn close(self) {
        let _ = self.session.close(None).await;
    }
}

struct Outbound(ClientWs);

impl LinkSocket for Outbound {
    async fn recv(&mut self) -> Result<Frame, String> {
        use tokio_tungstenite::tungstenite::Message as M;
        match self.0.next().await {
            Some(Ok(M::Binary(bytes))) => Ok(Frame::Binary(bytes)),
            Some(Ok(M::Ping(_) | M::Pong(_) | M::Frame(_))) => Ok(Frame::Control),
            Some(Ok(M::Text(_))) => Err("a text frame on a sync link".into()),
            Some(Ok(M::Close(_))) | None => Ok(Frame::Closed),
            Some(Err(e)) => Err(format!(
                "reading from the link failed (a message over sync.max_message_bytes?): {e}"
            )),
        }
    }

    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        use tokio_tungstenite::tungstenite::Message as M;
        self.0
            .send(M::Binary(bytes))
            .await
            .map_err(|e| e.to_string())
    }

    async fn close(mut self) {
        let _ = self.0.close(None).await;
    }
}

/// Runs one link until either side ends it: frames in become core
/// inputs, the driver's messages go out. Returns why it ended.
async fn run_link(
    shared: &Shared,
    mut socket: impl LinkSocket,
    peer: Option<usize>,
    cert_node: Option<String>,
    mut label: String,
) -> String {
    let Some((link, mut outgoing)) = open_link(shared, peer, label.clone()).await else {
        return "shutting down".into();
    };
    let metrics = &shared.metrics;
    let ended = loop {
        tokio::select! {
            frame = socket.recv() => {
                let bytes = match frame {
                    Ok(Frame::Binary(bytes)) => bytes,
                    Ok(Frame::Control) => continue,
                    Ok(Frame::Closed) => break "the peer closed the connection".to_string(),
                    Err(e) => break e,
                };
                metrics.sync_bytes_received_total.with_label_values(&[&label]).inc_by(bytes.len() as u64);
                let msg = match decode_frame(&bytes, &cert_node) {
                    Ok(msg) => msg,
                    Err(e) => break e,
                };
                if let Msg::Hello(hello) = &msg {
                    label = hello.node_id.clone();
                }
                if shared.events.send(Event::Input(Input::Received { link, msg })).await.is_err() {
                    break "shutting down".into();
                }
            }
            msg = outgoing.recv() => {
                let Some(msg) = msg else { break "closed by this node".into() };
                let bytes = msg.encode();
                metrics.sync_bytes_sent_total.with_label_values(&[&label]).inc_by(bytes.len() as u64);
                if let Err(e) = socket.send(bytes).await {
                    break format!("writing to the link failed: {e}");
                }
            }
        }
    };
    let _ = shared
        .events
        .send(Event::Input(Input::Closed { link }))
        .await;
    socket.close().await;
    tracing::info!(peer = %label, reason = %ended, "sync link ended");
    ended
}

/// Connects to configured peer `peer` and runs the link until it ends.
async fn dial(shared: Arc<Shared>, peer: usize) {
    let url = shared.config.sync.peers[peer].clone();
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect(&shared, &url)).await;
    let (ws, cert_node) = match connected {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => return connect_failed(&shared, peer, &url, error).await,
        Err(_) => return connect_failed(&shared, peer, &url, "timed out".into()).await,
    };
    let ended = run_link(&shared, Outbound(ws), Some(peer), cert_node, url).await;
    shared.peer_errors.lock().insert(peer, ended);
}

async fn connect_failed(shared: &Shared, peer: usize, url: &str, error: String) {
    tracing::debug!(peer = %url, %error, "cannot connect to peer");
    shared.peer_errors.lock().insert(peer, error.clone());
    let _ = shared
        .events
        .send(Event::Input(Input::ConnectFailed { peer, error }))
        .await;
}

type ClientWs =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn connect(shared: &Shared, url: &str) -> Result<(ClientWs, Option<String>), String> {
    let (host, authority) = host_port(url).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("server name {host:?}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&shared.client_tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {authority}: {e}"))?;
    let cert_node = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| tls::peer_node_id(cert.as_ref()));
    let max = shared.config.sync.max_message_bytes;
    let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        max_message_size: Some(max),
        max_frame_size: Some(max),
        ..Default::default()
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("wss://{authority}/sync/v1/link"),
        tls,
        Some(ws_config),
    )
    .await
    .map_err(|e| format!("WebSocket with {authority}: {e}"))?;
    Ok((ws, cert_node))
}

/// Tells the driver whenever the log advanced (local commits, applies).
async fn watch_log(shared: Arc<Shared>) {
    let mut watch = shared.db.events().log_watch();
    loop {
        let vv = watch.borrow_and_update().clone();
        if shared
            .events
            .send(Event::Input(Input::LogAdvanced(vv)))
            .await
            .is_err()
        {
            return;
        }
        if watch.changed().await.is_err() {
            return;
        }
    }
}

/// Tells the driver whenever this node's schema changed (a migration ran).
async fn watch_schema(shared: Arc<Shared>) {
    let mut watch = shared.db.events().schema_watch();
    loop {
        let state = watch.borrow_and_update().clone();
        let input = Input::SchemaChanged {
            version: state.version,
            hash: state.hash,
        };
        if shared.events.send(Event::Input(input)).await.is_err() {
            return;
        }
        if watch.changed().await.is_err() {
            return;
        }
    }
}

/// A peer is at schema `version`, newer than this node's: applies the
/// migrations this node has (if `schema.auto_migrate`), at most once per
/// `schema.recheck_interval`, so a file added later is picked up.
fn migrate_for_peer(shared: &Arc<Shared>, version: i64) {
    let schema = &shared.config.schema;
    let now = Instant::now();
    let mut state = shared.migrations.lock();
    if state.running || state.next_attempt.is_some_and(|at| now < at) {
        return;
    }
    state.next_attempt = Some(now + schema.recheck_interval);
    let why_not = match schema.dir() {
        None => Some(
            "no migrations directory is configured: set schema.migrations to a directory holding the newer migrations and restart (the node then migrates by itself)"
                .to_string(),
        ),
        Some(_) if !schema.auto_migrate => Some(
            "schema.auto_migrate is off: run `outpost migrate --admin <this node's admin URL>`"
                .to_string(),
        ),
        Some(_) => None,
    };
    if let Some(why) = why_not {
        if state.last_error.as_ref() != Some(&why) {
            tracing::warn!(
                peer_version = version,
                "a peer is at a newer schema version, sync from it is paused: {why}"
            );
        }
        state.last_error = Some(why);
        return;
    }
    state.running = true;
    drop(state);
    let shared = Arc::clone(shared);
    actix_web::rt::spawn(async move {
        let dir = shared.config.schema.dir().expect("checked").to_owned();
        let run = shared.db.migrate(&dir).await;
        let reached = shared.db.events().schema().version;
        let error = match run.error {
            Some(e) => Some(e.to_string()),
            None if reached < version => Some(format!(
                "a peer is at schema version {version}, this node at {reached}, and {} has no migration beyond {reached}: add the peer's migration files there",
                dir.display()
            )),
            None => None,
        };
        let mut state = shared.migrations.lock();
        match &error {
            Some(why) if state.last_error.as_ref() != Some(why) => {
                tracing::warn!(
                    peer_version = version,
                    "sync from a newer peer stays paused: {why}"
                );
            }
            Some(_) => {}
            None => tracing::info!(
                version = reached,
                "migrated to the newer peer's schema version; sync resumes"
            ),
        }
        state.last_error = error;
        state.running = false;
    });
}

async fn compact_periodically(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(shared.config.sync.compact_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if shared.events.send(Event::Compact).await.is_err() {
            return;
        }
    }
}

async fn tick(shared: Arc<Shared>) {
    let every = (shared.config.sync.heartbeat / 4)
        .clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if shared.events.send(Event::Input(Input::Tick)).await.is_err() {
            return;
        }
    }
}

/// What the driver keeps per link besides the core's state.
struct LinkInfo {
    tx: mpsc::Sender<Msg>,
    /// The peer's node id once its Hello came, else its URL or "inbound".
    label: String,
    /// The peer's Hello arrived (and was admitted).
    greeted: bool,
    /// The peer said it is a partial replica.
    partial: bool,
    /// Keys whose certificates this link has sent.
    keys_sent: HashSet<u64>,
}

struct Driver {
    shared: Arc<Shared>,
    core: Core,
    log: Arc<LogReader>,
    meta: NodeMeta,
    links: HashMap<LinkId, LinkInfo>,
    started: Instant,
    /// Peers paused at the last publish (to log changes).
    paused: HashMap<String, PauseKind>,
    /// Per connected peer that lacks something: what this node held at a
    /// moment, and when. Replaced once the peer holds all of it, so the
    /// gauge measures the wait of the oldest change the peer may lack,
    /// even while new writes keep it from ever being fully caught up.
    behind_since: HashMap<String, (VersionVector, Instant)>,
}

impl Driver {
    fn new(shared: Arc<Shared>, log: Arc<LogReader>, meta: NodeMeta) -> Driver {
        let me = Identity {
            node_id: meta.node_id.clone(),
            origin: meta.origin,
            schema_version: meta.schema_version,
            schema_hash: meta.schema_hash.clone(),
            partial: shared.config.sync.partial,
        };
        let local = shared.db.events().log_vector();
        let peers = shared.config.sync.peers.len();
        let core = Core::new(
            CoreConfig::from_config(&shared.config.sync),
            me,
            local,
            peers,
            0,
        );
        Driver {
            shared,
            core,
            log,
            meta,
            links: HashMap::new(),
            started: Instant::now(),
            paused: HashMap::new(),
            behind_since: HashMap::new(),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        match self.log.compacted() {
            Ok(compacted) => {
                let outputs = self.core.handle(self.now(), Input::Compacted(compacted));
                for output in outputs {
                    self.carry_out(output);
                }
            }
            Err(e) => tracing::error!(error = %e, "reading the compaction floor failed"),
        }
        tracing::info!(node = %self.meta.node_id, peers = self.shared.config.sync.peers.len(), "sync started");
        while let Some(event) = events.recv().await {
            match event {
                Event::Open {
                    link, tx, label, ..
                } => {
                    self.links.insert(
                        link,
                        LinkInfo {
                            tx,
                            label,
                            greeted: false,
                            partial: false,
                            keys_sent: HashSet::new(),
                        },
                    );
                }
                Event::Input(input) => {
                    match &input {
                        Input::Closed { link } => {
                            self.links.remove(link);
                        }
                        Input::Received {
                            link,
                            msg: Msg::Hello(hello),
                        } => {
                            if let Err(why) = self.admit_peer(hello) {
                                tracing::warn!(peer = %hello.node_id, "refusing a sync link: {why}");
                                self.send_raw(*link, Msg::Bye { reason: why });
                                self.drop_link(*link);
                                continue;
                            }
                            if let Some(info) = self.links.get_mut(link) {
                                info.label = hello.node_id.clone();
                                info.partial = hello.partial;
                                info.greeted = true;
                            }
                        }
                        Input::Received {
                            link,
                            msg: Msg::Keys(certs),
                        } => self.learn_keys(*link, certs),
                        _ => {}
                    }
                    let outputs = self.core.handle(self.now(), input);
                    for output in outputs {
                        self.carry_out(output);
                    }
                    self.publish_state();
                }
                Event::Status(reply) => {
                    let _ = reply.send(self.status_json());
                }
                Event::Compact => self.start_compaction(),
                Event::ReadFailed(link) => self.drop_link(link),
                Event::Compacted(vv) => {
                    let outputs = self.core.handle(self.now(), Input::Compacted(vv));
                    for output in outputs {
                        self.carry_out(output);
                    }
                }
            }
        }
    }

    fn label(&self, link: LinkId) -> String {
        self.links
            .get(&link)
            .map_or_else(|| format!("link-{link}"), |l| l.label.clone())
    }

    fn carry_out(&mut self, output: Output) {
        match output {
            Output::Send { link, msg } => {
                if let Msg::Entries(entries) = &msg {
                    self.shared
                        .metrics
                        .sync_entries_sent_total
                        .with_label_values(&[&self.label(link)])
                        .inc_by(entries.len() as u64);
                }
                if let Msg::Entries(entries) = &msg {
                    self.send_keys_for(link, entries);
                }
                self.send_raw(link, msg);
            }
            Output::ReadLog {
                link,
                after,
                upto,
                max_entries,
                max_bytes,
                max_schema,
            } => {
                let peer = self.outbound(link);
                self.read_then(
                    link,
                    move |log| log.read(&after, &upto, max_entries, max_bytes, max_schema, &peer),
                    move |entries| Input::LogRead { link, entries },
                );
            }
            Output::Apply {
                link,
                peer,
                entries,
            } => {
                let label = self.label(link);
                let shared = Arc::clone(&self.shared);
                actix_web::rt::spawn(async move {
                    let outcome = apply(&shared, &label, &peer, entries).await;
                    report_applied(&shared, link, outcome).await;
                });
            }
            Output::ReadDocs {
                link,
                after,
                max_docs,
                max_bytes,
            } => {
                let peer = self.outbound(link);
                if self.shared.config.sync.partial && !peer.partial {
                    tracing::error!(
                        peer = %self.label(link),
                        "a full replica is behind this node's log compaction, but this node is \
                         partial and cannot give it a snapshot: it must catch up from a full replica"
                    );
                    self.drop_link(link);
                    return;
                }
                self.read_then(
                    link,
                    move |log| {
                        log.read_docs(after.as_ref(), max_docs, max_bytes, peer.rules.as_ref())
                    },
                    move |docs| Input::DocsRead { link, docs },
                );
            }
            Output::ApplySnapshot {
                link,
                peer,
                docs,
                done,
            } => {
                let shared = Arc::clone(&self.shared);
                let log = Arc::clone(&self.log);
                actix_web::rt::spawn(async move {
                    let last = done.is_some();
                    let outcome = match shared.db.apply_snapshot(docs, done, &peer).await {
                        Ok(_) => ApplyOutcome::Done,
                        Err(e) => ApplyOutcome::Failed(format!("{}: {}", e.code, e.message)),
                    };
                    if last {
                        tracing::info!(peer = %peer, "caught up from a snapshot of the peer's documents");
                        // The snapshot's vector now counts as held here.
                        if let Ok(compacted) = log.compacted() {
                            shared.db.events().observe(&compacted);
                        }
                    }
                    report_applied(&shared, link, outcome).await;
                });
            }
            Output::Connect { peer } => {
                actix_web::rt::spawn(dial(Arc::clone(&self.shared), peer));
            }
            Output::Close { link, reason } => {
                tracing::info!(peer = %self.label(link), %reason, "closing sync link");
                self.drop_link(link);
            }
            Output::SchemaBehind { version } => migrate_for_peer(&self.shared, version),
        }
    }

    /// Queues a message on a link's socket task; a full queue drops the link.
    fn send_raw(&mut self, link: LinkId, msg: Msg) {
        let Some(info) = self.links.get(&link) else {
            return;
        };
        if info.tx.try_send(msg).is_err() {
            tracing::warn!(peer = %info.label, "sync link queue full or closed: dropping the link");
            self.drop_link(link);
        }
    }

    /// Whether a peer that said Hello may have a link: not revoked, and
    /// partial if this node's rules withhold anything from it.
    fn admit_peer(&self, hello: &crate::sync::proto::Hello) -> Result<(), String> {
        let sync = &self.shared.config.sync;
        if sync.revoked_nodes.contains(&hello.node_id) {
            return Err(format!("node {} is in sync.revoked_nodes", hello.node_id));
        }
        let restricted = sync
            .rules_for(&hello.node_id)
            .is_some_and(|r| r.restricts_sending());
        if restricted && !hello.partial {
            return Err(format!(
                "sync.rules here withhold rows from node {}, but it is a full replica: set \
                 sync.partial = true on it (or drop its rules here)",
                hello.node_id
            ));
        }
        Ok(())
    }

    /// What a log read for a link's peer must respect.
    fn outbound(&self, link: LinkId) -> ReadFor {
        let Some(info) = self.links.get(&link) else {
            return ReadFor::default();
        };
        ReadFor {
            partial: info.partial,
            rules: self
                .shared
                .config
                .sync
                .rules_for(&info.label)
                .filter(|r| r.restricts_sending())
                .cloned(),
        }
    }

    /// Sends, ahead of `entries`, the certificates of the keys that signed
    /// them that this link has not sent yet.
    fn send_keys_for(&mut self, link: LinkId, entries: &[LogEntry]) {
        let Some(keys) = self.shared.db.keys() else {
            return;
        };
        let Some(info) = self.links.get_mut(&link) else {
            return;
        };
        let mut certs = Vec::new();
        for entry in entries.iter().filter(|e| !e.is_placeholder()) {
            if info.keys_sent.insert(entry.key_id) {
                match keys.certificate(entry.key_id) {
                    Some(cert) => certs.push(cert.to_vec()),
                    None => tracing::warn!(
                        key = %format!("{:016x}", entry.key_id),
                        origin = entry.origin,
                        "no certificate for a key that signed an entry: the peer will refuse it"
                    ),
                }
            }
        }
        if !certs.is_empty() {
            self.send_raw(link, Msg::Keys(certs));
        }
    }

    /// Checks and keeps the certificates a peer sent (`sync::keys`). One
    /// that does not check is logged and counted, and the entries it was
    /// meant to prove are then refused (`signature`).
    fn learn_keys(&self, link: LinkId, certs: &[Vec<u8>]) {
        let Some(keys) = self.shared.db.keys() else {
            return;
        };
        // Only from a peer admitted by its Hello (the core closes a link
        // that sends anything before it).
        if !self.links.get(&link).is_some_and(|l| l.greeted) {
            return;
        }
        let peer = self.label(link);
        for cert in certs {
            if let Err(e) = keys.learn(cert) {
                tracing::warn!(%peer, "refused a certificate from a peer: {e}; re-issue the signing node's certificate from this cluster's CA (`outpost init --ca-dir CA --force-cert`)");
                self.shared
                    .metrics
                    .sync_rejected_total
                    .with_label_values(&[&peer, "certificate"])
                    .inc();
            }
        }
    }

    /// Runs a log read on a blocking thread and feeds its result back. A
    /// failed read closes the link (the next one starts from the vectors).
    fn read_then<T: Send + 'static>(
        &self,
        link: LinkId,
        read: impl FnOnce(&LogReader) -> libsql_sys::rusqlite::Result<T> + Send + 'static,
        input: impl FnOnce(T) -> Input + Send + 'static,
    ) {
        let log = Arc::clone(&self.log);
        let events = self.shared.events.clone();
        tokio::task::spawn_blocking(move || {
            let event = match read(&log) {
                Ok(result) => Event::Input(input(result)),
                Err(e) => {
                    tracing::error!(error = %e, "reading the change log for a peer failed");
                    Event::ReadFailed(link)
                }
            };
            let _ = events.blocking_send(event);
        });
    }

    /// Records what each connected peer acknowledged and deletes the log
    /// entries all peers hold (see `db::compact`), on the writer.
    fn start_compaction(&self) {
        let acks: Vec<PeerAck> = self
            .core
            .status()
            .into_iter()
            .filter_map(|s| {
                Some(PeerAck {
                    node_id: s.node_id?,
                    url: s.peer.map(|p| self.shared.config.sync.peers[p].clone()),
                    have: s.peer_has?,
                })
            })
            .collect();
        let plan = CompactPlan {
            acks,
            configured: self.shared.config.sync.peers.clone(),
            now_ms: crate::crdt::Hlc::now_ms(),
            retention_ms: self.shared.config.sync.peer_retention.as_millis() as u64,
            backup: self.shared.db.backup_hold(),
        };
        let shared = Arc::clone(&self.shared);
        actix_web::rt::spawn(async move {
            match shared.db.compact(plan).await {
                Ok(outcome) => {
                    if outcome.deleted > 0 {
                        tracing::info!(entries = outcome.deleted, "compacted the change log");
                    } else if let Some(why) = &outcome.waiting_for {
                        tracing::debug!(reason = %why, "log compaction waits");
                    }
                    let _ = shared
                        .events
                        .send(Event::Compacted(outcome.compacted))
                        .await;
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "log compaction failed; the change log grows until it succeeds: check free disk space and run `outpost check`")
                }
            }
        });
    }

    /// Dropping the sender ends the link's task, which closes the socket.
    fn drop_link(&mut self, link: LinkId) {
        if self.links.remove(&link).is_some() {
            let outputs = self.core.handle(self.now(), Input::Closed { link });
            for output in outputs {
                self.carry_out(output);
            }
        }
    }

    /// Sets the per-peer state and pause gauges, and logs pauses as they
    /// begin and end.
    fn publish_state(&mut self) {
        let metrics = &self.shared.metrics;
        metrics.sync_peer_state.reset();
        metrics.sync_paused.reset();
        metrics.sync_peer_behind_entries.reset();
        metrics.sync_peer_behind_seconds.reset();
        let mut paused = HashMap::new();
        let mut behind_since = HashMap::new();
        for status in self.core.status() {
            let label = self.status_label(&status);
            metrics
                .sync_peer_state
                .with_label_values(&[&label, status.state.as_str()])
                .inc();
            let mark = match &status.peer_has {
                Some(has) => self.publish_behind(&label, has),
                // Between links: keep the mark, so a flapping link does
                // not reset how long the peer has waited.
                None => self.behind_since.get(&label).cloned(),
            };
            behind_since.extend(mark.map(|mark| (label.clone(), mark)));
            if let Some((kind, reason)) = &status.paused {
                metrics
                    .sync_paused
                    .with_label_values(&[&label, kind.as_str()])
                    .set(1);
                if !self.paused.contains_key(&label) {
                    tracing::warn!(peer = %label, reason = kind.as_str(), "sync with peer paused: {reason}");
                }
                paused.insert(label, *kind);
            }
        }
        for (label, kind) in &self.paused {
            if !paused.contains_key(label) {
                tracing::info!(peer = %label, reason = kind.as_str(), "sync with peer resumed");
            }
        }
        self.paused = paused;
        self.behind_since = behind_since;
    }

    /// Sets a connected peer's behind gauges; returns the mark it is
    /// measured against (None: it holds everything this node holds).
    fn publish_behind(&self, label: &str, has: &VersionVector) -> Option<(VersionVector, Instant)> {
        let metrics = &self.shared.metrics;
        let local = self.core.local();
        let entries = behind(local, has);
        metrics
            .sync_peer_behind_entries
            .with_label_values(&[label])
            .set(entries as i64);
        let mark = (entries > 0).then(|| match self.behind_since.get(label) {
            Some((held, at)) if !has.covers(held) => (held.clone(), *at),
            _ => (local.clone(), Instant::now()),
        });
        metrics
            .sync_peer_behind_seconds
            .with_label_values(&[label])
            .set(behind_seconds(mark.as_ref()));
        mark
    }

    /// A peer's metric label: its node id once known, else its URL.
    fn status_label(&self, status: &LinkStatus) -> String {
        match (&status.node_id, status.peer) {
            (Some(node), _) => node.clone(),
            (None, Some(p)) => self.shared.config.sync.peers[p].clone(),
            (None, None) => "inbound".into(),
        }
    }

    fn status_json(&self) -> serde_json::Value {
        let peers: Vec<serde_json::Value> = self
            .core
            .status()
            .iter()
            .map(|s| {
                let stats = s
                    .node_id
                    .as_ref()
                    .and_then(|n| self.shared.peer_stats.lock().get(n).copied())
                    .unwrap_or_default();
                let last_error = s.last_error.clone().or_else(|| {
                    s.peer
                        .and_then(|p| self.shared.peer_errors.lock().get(&p).cloned())
                });
                json!({
                    "url": s.peer.map(|p| self.shared.config.sync.peers[p].clone()),
                    "link": self.status_label(s),
                    "node_id": s.node_id,
                    "origin": s.origin.map(|o| o.to_string()),
                    "state": s.state.as_str(),
                    "paused": s.paused.as_ref().map(|(_, reason)| reason),
                    "paused_reason": s.paused.as_ref().map(|(kind, _)| kind.as_str()),
                    "schema_version": s.remote_schema_version,
                    "last_error": last_error,
                    "lag_seconds": stats.lag_seconds,
                    "entries_rejected": stats.rejected,
                    "behind": s.peer_has.as_ref().map(|has| behind(self.core.local(), has)),
                    "behind_seconds": s.peer_has.as_ref().map(|_| {
                        behind_seconds(self.behind_since.get(&self.status_label(s)))
                    }),
                    "entries_sent": s.stats.entries_sent,
                    "entries_received": s.stats.entries_received,
                })
            })
            .collect();
        let listen = self.shared.addr.lock().map(|a| a.to_string());
        let mine = self.shared.db.events().schema().version;
        let waiting_for = self
            .core
            .status()
            .iter()
            .filter_map(|s| s.remote_schema_version)
            .filter(|&v| v > mine)
            .max();
        let migrations = self.shared.migrations.lock();
        json!({
            "listen": listen,
            "peers": peers,
            "schema": {
                "waiting_for": waiting_for,
                "migrating": migrations.running,
                "last_error": waiting_for.and(migrations.last_error.clone()),
            },
        })
    }
}

/// Tells the core an apply finished: the log's new vector first, so that
/// the acknowledgement carries it.
async fn report_applied(shared: &Shared, link: LinkId, outcome: ApplyOutcome) {
    let vv = shared.db.events().log_vector();
    let events = &shared.events;
    let _ = events.send(Event::Input(Input::LogAdvanced(vv))).await;
    let _ = events
        .send(Event::Input(Input::Applied { link, outcome }))
        .await;
}

/// How long the oldest change a peer may lack has waited (0: none).
fn behind_seconds(mark: Option<&(VersionVector, Instant)>) -> f64 {
    mark.map_or(0.0, |(_, at)| at.elapsed().as_secs_f64())
}

/// Entries the local log holds that a peer lacks.
fn behind(local: &VersionVector, peer: &VersionVector) -> u64 {
    local.ahead_of(peer).map(|(_, from, to)| to - from).sum()
}

/// Applies one batch through the writer; records metrics and lag.
async fn apply(shared: &Shared, label: &str, peer: &str, entries: Vec<LogEntry>) -> ApplyOutcome {
    let metrics = &shared.metrics;
    let peer = if peer.is_empty() { label } else { peer };
    metrics
        .sync_entries_received_total
        .with_label_values(&[peer])
        .inc_by(entries.len() as u64);
    let waited = shared.peer_limits.admit(peer, &entries).await;
    if !waited.is_zero() {
        metrics
            .sync_throttled_seconds_total
            .with_label_values(&[peer])
            .inc_by(waited.as_secs_f64());
    }
    let hlcs: Vec<u64> = entries.iter().map(|e| e.hlc).collect();
    match shared.db.apply(entries, peer).await {
        Ok(outcomes) => {
            let now_ms = crate::crdt::Hlc::now_ms();
            let lag = metrics.sync_lag_seconds.with_label_values(&[peer]);
            let mut stats = PeerStats::default();
            for (outcome, hlc) in outcomes.iter().zip(hlcs) {
                match outcome {
                    Applied::Applied => {
                        let wall_ms = crate::crdt::Hlc::wall_ms(hlc);
                        stats.lag_seconds = now_ms.saturating_sub(wall_ms) as f64 / 1000.0;
                        lag.observe(stats.lag_seconds);
                    }
                    Applied::Rejected(_) | Applied::Skipped(_) => stats.rejected += 1,
                    _ => {}
                }
            }
            let mut all = shared.peer_stats.lock();
            let entry = all.entry(peer.to_string()).or_default();
            entry.rejected += stats.rejected;
            if stats.lag_seconds > 0.0 {
                entry.lag_seconds = stats.lag_seconds;
            }
            drop(all);
            match outcomes.iter().find_map(|o| match o {
                Applied::Deferred(why) => Some(why.clone()),
                _ => None,
            }) {
                Some(why) => ApplyOutcome::Deferred(why),
                None => ApplyOutcome::Done,
            }
        }
        Err(e) => ApplyOutcome::Failed(format!("{}: {}", e.code, e.message)),
    }
}
