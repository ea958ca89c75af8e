//! `outpost serve`: opens the database, binds the listeners, prints the
//! READY line, and shuts down gracefully on SIGTERM/SIGINT (stop accepting,
//! finish in-flight requests, roll back open transactions, checkpoint and
//! close the database).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::api::{self, stream::HttpStreams, AppState};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::db::Database;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;

pub const TLS_DIR: &str = "tls";
/// Most client tokens whose rate is tracked at once (least recent forgotten).
const TOKEN_BUCKETS: usize = 100_000;
pub const TLS_CERT_FILE: &str = "cert.pem";
pub const TLS_KEY_FILE: &str = "key.pem";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Refused(String),
    #[error("cannot create data dir {path}: {source} (check node.data_dir / --data-dir and that this user may write there)")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::auth::KeyError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source} (another process may hold the port: stop it, or pick another address with --listen / --admin-listen or api.listen / admin.listen)")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("sync: {0}")]
    Sync(#[from] crate::sync::transport::SyncError),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// The addresses the listeners actually bound (port 0 picks a free one).
#[derive(Debug, Clone)]
pub struct Bound {
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub tls: bool,
    /// The sync listener, when the node has a certificate.
    pub sync: Option<SocketAddr>,
}

impl Bound {
    /// The line tests and scripts wait for on stdout.
    pub fn ready_line(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let sync = self
            .sync
            .map(|addr| format!(" sync=https://{addr}"))
            .unwrap_or_default();
        format!(
            "READY api={scheme}://{} admin=http://{}{sync}",
            self.api, self.admin
        )
    }
}

fn authenticator(config: &Config) -> Result<Authenticator, ServeError> {
    match config.effective_jwt_public_key() {
        Some(path) => Ok(Authenticator::from_public_key_file(&path)?),
        None => Ok(Authenticator::disabled()),
    }
}

/// Refuses to expose an unauthenticated database beyond loopback.
fn check_exposure(config: &Config, auth: &Authenticator) -> Result<(), ServeError> {
    let addr: SocketAddr = config
        .api
        .listen
        .parse()
        .map_err(|e| ServeError::Refused(format!("api.listen {:?}: {e}", config.api.listen)))?;
    if auth.is_enabled() {
        return Ok(());
    }
    if !addr.ip().is_loopback() && !config.auth.allow_unauthenticated_public {
        return Err(ServeError::Refused(format!(
            "refusing to serve {addr} without authentication: anyone who can reach it could read \
             and change the database. Run `outpost init` to create a JWT key (then mint tokens with \
             `outpost token`), or listen on 127.0.0.1."
        )));
    }
    tracing::warn!(
        "serving without authentication (loopback only): run `outpost init` to enable JWT auth"
    );
    Ok(())
}

/// The certificate pair in force: configured, else `outpost init --self-signed`'s.
fn tls_files(config: &Config) -> Option<(PathBuf, PathBuf)> {
    if let (Some(cert), Some(key)) = (&config.api.tls_cert, &config.api.tls_key) {
        return Some((cert.clone(), key.clone()));
    }
    let dir = config.node.data_dir.join(TLS_DIR);
    let (cert, key) = (dir.join(TLS_CERT_FILE), dir.join(TLS_KEY_FILE));
    (cert.exists() && key.exists()).then_some((cert, key))
}

fn load_tls(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServeError> {
    use crate::sync::tls;
    let tls_err = |e: tls::TlsError| ServeError::Tls(e.to_string());
    let certs = tls::load_certs(cert).map_err(tls_err)?;
    let key_der = tls::load_key(key).map_err(tls_err)?;
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// Applies pending migrations before anything is served (`schema.migrate_on_start`).
async fn migrate_on_start(config: &Config, db: &Database) -> Result<(), ServeError> {
    let Some(dir) = config.schema.dir() else {
        return Ok(());
    };
    if !config.schema.migrate_on_start {
        return Ok(());
    }
    let run = db.migrate(dir).await;
    if let Some(e) = run.error {
        db.shutdown();
        return Err(ServeError::Refused(format!(
            "migrations in {}: {e}",
            dir.display()
        )));
    }
    let version = db.events().schema().version;
    tracing::info!(
        applied = run.applied.len(),
        version,
        dir = %dir.display(),
        "schema is at version {version}"
    );
    Ok(())
}

/// Runs the node until SIGTERM/SIGINT. Calls `on_ready` once listening.
pub async fn serve(config: Config, on_ready: impl FnOnce(&Bound)) -> Result<(), ServeError> {
    let auth = authenticator(&config)?;
    check_exposure(&config, &auth)?;
    let data_dir = &config.node.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| ServeError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let _lock = crate::db::lock_data_dir(data_dir).map_err(ServeError::Refused)?;
    let metrics = Arc::new(Metrics::new());
    let db = Arc::new(Database::open(&config, Arc::clone(&metrics))?);
    if let Ok(meta) = db.meta() {
        metrics.set_node(&meta.node_id);
    }
    migrate_on_start(&config, &db).await?;
    let tls = tls_files(&config)
        .map(|(c, k)| {
            metrics.observe_certificate("api", &c);
            load_tls(&c, &k)
        })
        .transpose()?;
    // Before sync: log compaction must know what the backup holds.
    let backup = start_backup(&config, &db, &metrics)?;
    let sync = start_sync(&config, &db, &metrics)?;
    let state = web::Data::new(AppState {
        streams: HttpStreams::new(
            config.limits.max_streams,
            config.limits.stream_idle_timeout,
            Arc::clone(&metrics),
        ),
        config: config.clone(),
        db: Arc::clone(&db),
        auth,
        metrics,
        sync: sync.clone(),
        backup,
        token_limits: RateLimiter::new(
            config.limits.token_requests_per_second,
            config.limits.token_burst,
            TOKEN_BUCKETS,
        ),
    });

    let api_state = state.clone();
    let mut api = HttpServer::new(move || {
        App::new()
            .app_data(api_state.clone())
            .wrap(from_fn(api::observe))
            .wrap(Cors::permissive())
            .configure(api::configure_api)
    })
    .disable_signals()
    // Small request/response exchanges: never let Nagle hold a reply back.
    .tcp_nodelay(true)
    // A client that closed its side is gone: end its response (a live-feed
    // subscriber frees its place at once).
    .h1_allow_half_closed(false)
    .shutdown_timeout(10);
    if config.api.workers > 0 {
        api = api.workers(config.api.workers);
    }
    let bind_err = |addr: &str| {
        let addr = addr.to_string();
        move |source| ServeError::Bind { addr, source }
    };
    let api = match tls.clone() {
        Some(tls) => api
            .bind_rustls_0_23(&config.api.listen, tls)
            .map_err(bind_err(&config.api.listen))?,
        None => api
            .bind(&config.api.listen)
            .map_err(bind_err(&config.api.listen))?,
    };
    let admin_state = state.clone();
    let admin = HttpServer::new(move || {
        App::new()
            .app_data(admin_state.clone())
            .configure(api::admin::configure)
    })
    .disable_signals()
    .workers(1)
    .shutdown_timeout(5)
    .bind(&config.admin.listen)
    .map_err(bind_err(&config.admin.listen))?;

    let bound = Bound {
        api: api.addrs()[0],
        admin: admin.addrs()[0],
        tls: tls.is_some(),
        sync: sync.as_ref().map(|s| s.addr),
    };
    let api = api.run();
    let admin = admin.run();
    let (api_handle, admin_handle) = (api.handle(), admin.handle());
    let api_task = actix_web::rt::spawn(api);
    let admin_task = actix_web::rt::spawn(admin);
    let reaper = actix_web::rt::spawn(expire_streams(state.clone()));
    let sweeper = actix_web::rt::spawn(sweep_foreign_changes(
        Arc::clone(&db),
        config.crdt.sweep_interval,
    ));
    tracing::info!(api = %bound.api, admin = %bound.admin, tls = bound.tls, db = %config.db_path().display(), "outpost is serving");
    on_ready(&bound);

    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    db.events().close();
    api_handle.stop(true).await;
    admin_handle.stop(true).await;
    if let Some(sync) = &sync {
        sync.stop().await;
    }
    reaper.abort();
    sweeper.abort();
    let _ = api_task.await;
    let _ = admin_task.await;
    // Dropping the HTTP streams drops their leases: open transactions roll back.
    state.streams.clear();
    if let Some(backup) = &state.backup {
        backup.finish().await;
    }
    db.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// Starts the backup tasks (`backup`), unless `backup.enabled = false`.
fn start_backup(
    config: &Config,
    db: &Arc<Database>,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<crate::backup::Backup>>, ServeError> {
    if !config.backup.enabled {
        tracing::warn!("backup.enabled = false: this node keeps no backup");
        return Ok(None);
    }
    metrics.backup_enabled.set(1);
    metrics
        .backup_max_backlog_bytes
        .set(config.backup.max_backlog_bytes as i64);
    let backup = crate::backup::Backup::start(config, Arc::clone(db), Arc::clone(metrics))?;
    Ok(Some(backup))
}

/// Starts replication if the node has its certificate; else says how to.
fn start_sync(
    config: &Config,
    db: &Arc<Database>,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<crate::sync::transport::Sync>>, ServeError> {
    use crate::sync::transport;
    if !config.crdt.enabled() {
        if !config.sync.peers.is_empty() {
            return Err(ServeError::Refused(
                "sync.peers is set but change capture is off (crdt.replicate = []): replication ships captured changes, so turn capture on or remove the peers".into(),
            ));
        }
        tracing::info!("sync is off: change capture is off (crdt.replicate = [])");
        return Ok(None);
    }
    if !transport::configured(config) {
        if !config.sync.peers.is_empty() {
            return Err(ServeError::Refused(
                "sync.peers is set but this node has no certificate: run `outpost init --ca-dir <cluster CA dir>` (or set sync.ca_cert/cert/key)".into(),
            ));
        }
        tracing::info!(
            "sync is off: this node has no certificate (`outpost init --ca-dir DIR` makes one)"
        );
        return Ok(None);
    }
    let sync = transport::start(config, Arc::clone(db), Arc::clone(metrics))?;
    tracing::info!(listen = %sync.addr, peers = ?config.sync.peers, "sync listener up");
    Ok(Some(Arc::new(sync)))
}

async fn expire_streams(state: web::Data<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        state.streams.expire_idle();
    }
}

/// Encodes rows that other programs (the sqlite3 CLI, a batch job)
/// changed in the file: their writes fire the capture triggers too, but
/// only outpost's writer turns them into log entries.
async fn sweep_foreign_changes(db: Arc<Database>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match db.sweep().await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "encoded rows changed by another program"),
            Err(e) if e.code == "SHUTTING_DOWN" => return,
            Err(e) => {
                tracing::warn!(error = %e.message, "sweeping changes made by other programs failed")
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Writes a self-signed certificate for `localhost`/`127.0.0.1` into
/// `<data_dir>/tls/`, for trying HTTPS out. Returns false if one exists.
pub fn write_self_signed(data_dir: &Path) -> Result<bool, ServeError> {
    let dir = data_dir.join(TLS_DIR);
    let (cert_path, key_path) = (dir.join(TLS_CERT_FILE), dir.join(TLS_KEY_FILE));
    if cert_path.exists() && key_path.exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(&dir)?;
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| ServeError::Tls(e.to_string()))?;
    std::fs::write(&cert_path, certified.cert.pem())?;
    std::fs::write(&key_path, certified.signing_key.serialize_pem())?;
    Ok(true)
}
