//! The `outpost` command line. See DESIGN.md "Command line" for the contract.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use outpost::auth::{self, Access};
use outpost::config::Config;

/// Caps allocations while decoding peers' updates (`outpost::alloc`).
#[global_allocator]
static ALLOCATOR: outpost::alloc::Capped = outpost::alloc::Capped;

mod dev;

#[derive(Parser)]
#[command(name = "outpost", version, about = "Edge-node sync gateway for libSQL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Config file (TOML); see config/outpost.toml for every key.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides node.data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Directory of numbered migration files (overrides schema.migrations).
    #[arg(long, global = true)]
    migrations: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the local database over Hrana (HTTP + WebSocket).
    Serve {
        #[command(flatten)]
        common: Common,
        /// API listen address (overrides api.listen); port 0 picks a free port.
        #[arg(long)]
        listen: Option<String>,
        /// Admin listen address (overrides admin.listen).
        #[arg(long)]
        admin_listen: Option<String>,
        /// Sync listen address (overrides sync.listen); port 0 picks a free port.
        #[arg(long)]
        sync_listen: Option<String>,
        /// Peer to replicate with, e.g. https://10.0.0.2:8443 (repeatable;
        /// added to sync.peers).
        #[arg(long)]
        peer: Vec<String>,
        /// Backup location, file:///abs/dir or s3://bucket/prefix
        /// (overrides backup.url).
        #[arg(long)]
        backup: Option<String>,
        /// Log format: text or json (overrides log.format).
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Create the node's identity and keys: node id, JWT signing key, the
    /// node's sync certificate signed by the cluster CA (with --self-signed
    /// also a TLS certificate for the API).
    Init {
        #[command(flatten)]
        common: Common,
        /// Also write a self-signed TLS certificate for localhost to <data_dir>/tls/.
        #[arg(long)]
        self_signed: bool,
        /// Cluster CA directory (ca.pem, ca.key) that signs this node's sync
        /// certificate; created there if absent. Default: <data_dir>/tls/ca.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Extra name or IP address for the node certificate (repeatable);
        /// localhost, 127.0.0.1 and ::1 are always included.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// Reissue the node certificate even if one exists.
        #[arg(long)]
        force_cert: bool,
    },
    /// Mint a client JWT signed with the node's key; prints it on stdout.
    Token {
        #[command(flatten)]
        common: Common,
        /// Read-only access.
        #[arg(long)]
        read_only: bool,
        /// Lifetime, e.g. 1h, 30d (default: no expiry).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        /// Only these tables, each NAME:rw or NAME:r (NAME alone is rw),
        /// e.g. tasks:rw,projects:r; with --read-only every one is r.
        /// Such a token cannot change the schema.
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
    },
    /// Show a node's state from its admin listener.
    Status {
        /// Admin URL (default: http://<admin.listen>).
        #[arg(long)]
        admin: Option<String>,
        /// Print the report as JSON (for scripts) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Run a local N-node cluster on loopback, fully meshed, to try
    /// replication out (node i gets ports base+10(i-1) .. +2: api, admin, sync).
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        #[arg(long, default_value_t = 8080)]
        base_port: u16,
        /// Where the nodes' data dirs and the cluster CA go.
        #[arg(long, default_value = "./outpost-dev")]
        dir: PathBuf,
    },
    /// Apply the pending migrations of the migrations directory, in order,
    /// one transaction each. With --admin, the running node at that admin
    /// URL applies those of its own directory; without, the data dir is
    /// migrated offline (refused while `outpost serve` runs on it).
    Migrate {
        #[command(flatten)]
        common: Common,
        /// Admin URL of a running node, e.g. http://127.0.0.1:9090.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Verify that every replicated row matches its CRDT document, that the
    /// change log covers every document and that seq is dense per origin.
    /// Exits 1 with a report when something is wrong.
    Check {
        #[command(flatten)]
        common: Common,
        /// Also print a digest of the replicated data (equal on converged nodes).
        #[arg(long)]
        digest: bool,
    },
    /// Remote changes this node refused (`_outpost_quarantine`): list them,
    /// or apply them again once the cause is fixed.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Take a backup snapshot now and upload it (to backup.url, or --to).
    /// Reads the database directly: works while `outpost serve` runs.
    Backup {
        #[command(flatten)]
        common: Common,
        /// Backup location (overrides backup.url).
        #[arg(long)]
        to: Option<String>,
    },
    /// Rebuild a node from the backup into a new data dir, with a new node
    /// id: the newest snapshot (or the newest before --at), then the log
    /// segments after it, then `outpost check`.
    Restore {
        /// Backup location: file:///abs/dir or s3://bucket/prefix.
        #[arg(long)]
        from: String,
        /// Restore the state at this time: RFC 3339 (2026-11-26T10:00:00Z)
        /// or Unix milliseconds.
        #[arg(long)]
        at: Option<String>,
        /// Whose backup, when several nodes share the location.
        #[arg(long)]
        node: Option<String>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Skip `outpost check` on the result (checksums and SQLite's
        /// quick_check still run): faster for large databases.
        #[arg(long)]
        no_check: bool,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// List quarantined entries in (origin, seq) order: origin, seq, table,
    /// key, the peer that sent it, reason code and reason, when (UTC).
    /// Reads the database directly (works while `outpost serve` runs).
    List {
        #[command(flatten)]
        common: Common,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Most entries to print (at most 10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only entries with this reason code (table, key, column, constraint, ...).
        #[arg(long)]
        code: Option<String>,
        /// Only entries of this origin.
        #[arg(long)]
        origin: Option<u64>,
    },
    /// Apply quarantined entries again, in (origin, seq) order, after the
    /// cause was fixed (the table created, a CHECK relaxed, a migration
    /// run): each one that applies now moves to the change log and reaches
    /// peers; one still refused stays, with its new reason. With --admin,
    /// the running node at that admin URL does it; without, the data dir
    /// is replayed offline (refused while `outpost serve` runs on it).
    Replay {
        #[command(flatten)]
        common: Common,
        /// Admin URL of a running node, e.g. http://127.0.0.1:9090.
        #[arg(long)]
        admin: Option<String>,
        /// Only entries with this reason code.
        #[arg(long)]
        code: Option<String>,
        /// Only entries of this origin.
        #[arg(long)]
        origin: Option<u64>,
    },
}

fn load_config(common: &Common) -> Result<Config> {
    let mut config = Config::load(common.config.as_deref(), std::env::vars())?;
    if let Some(dir) = &common.data_dir {
        config.node.data_dir = dir.clone();
    }
    if let Some(dir) = &common.migrations {
        config.schema.migrations = Some(dir.clone());
    }
    Ok(config)
}

/// Logs on stderr: `OUTPOST_LOG` or `level` as the filter, JSON or text.
fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            common,
            listen,
            admin_listen,
            sync_listen,
            peer,
            backup,
            log_format,
        } => {
            let mut config = load_config(&common)?;
            if let Some(l) = listen {
                config.api.listen = l;
            }
            if let Some(l) = admin_listen {
                config.admin.listen = l;
            }
            if let Some(f) = log_format {
                config.log.format = f;
            }
            if let Some(l) = sync_listen {
                config.sync.listen = l;
            }
            config.sync.peers.extend(peer);
            if let Some(url) = backup {
                config.backup.url = url;
            }
            config.validate()?;
            init_logging(&config.log.level, config.log.format == "json");
            let system = actix_web::rt::System::new();
            system.block_on(outpost::server::serve(config, |bound| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", bound.ready_line());
                let _ = out.flush();
            }))?;
            Ok(())
        }
        Command::Init {
            common,
            self_signed,
            ca_dir,
            hosts,
            force_cert,
        } => {
            let config = load_config(&common)?;
            run_init(&config, self_signed, ca_dir, &hosts, force_cert)
        }
        Command::Token {
            common,
            read_only,
            expires,
            tables,
        } => {
            let access = if !tables.is_empty() {
                match auth::parse_tables(read_only, &tables) {
                    Ok(access) => access,
                    Err(e) => bail!("--tables: {e}"),
                }
            } else if read_only {
                Access::ReadOnly
            } else {
                Access::ReadWrite
            };
            let config = load_config(&common)?;
            let token = auth::mint_token(&config.keys_dir(), &access, expires)
                .with_context(|| "run `outpost init` first to create the node's key")?;
            println!("{token}");
            Ok(())
        }
        Command::Status {
            admin,
            json,
            common,
        } => {
            let config = load_config(&common)?;
            let base = admin.unwrap_or_else(|| format!("http://{}", config.admin.listen));
            let report = status_report(&base)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_status(&report);
            }
            Ok(())
        }
        Command::Dev {
            nodes,
            base_port,
            dir,
        } => dev::run(nodes, base_port, &dir),
        Command::Migrate { common, admin } => {
            let config = load_config(&common)?;
            match admin {
                Some(base) => migrate_through_admin(&base),
                None => migrate_offline(&config),
            }
        }
        Command::Check { common, digest } => {
            let config = load_config(&common)?;
            run_check(&config, digest)
        }
        Command::Quarantine { action } => run_quarantine(action),
        Command::Backup { common, to } => {
            let mut config = load_config(&common)?;
            if let Some(url) = to {
                config.backup.url = url;
            }
            config.validate()?;
            run_async(run_backup(config))
        }
        Command::Restore {
            from,
            at,
            node,
            json,
            no_check,
            common,
        } => {
            let Some(data_dir) = common.data_dir.clone() else {
                bail!("restore needs --data-dir: the new node's (empty) data directory");
            };
            let config = load_config(&common)?;
            let at_ms = at.as_deref().map(parse_time).transpose()?;
            let request = outpost::backup::restore::Request {
                from,
                node,
                at_ms,
                check: !no_check,
                config,
            };
            // Warnings and errors only: progress and the report are ours.
            init_logging("warn", false);
            run_async(run_restore(request, &data_dir, json))
        }
    }
}

fn run_async<F: std::future::Future<Output = Result<()>>>(work: F) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

/// RFC 3339 or Unix milliseconds.
fn parse_time(text: &str) -> Result<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let at = humantime::parse_rfc3339_weak(text).map_err(|e| {
        anyhow::anyhow!("--at {text:?}: {e} (use RFC 3339, e.g. 2026-11-26T10:00:00Z, or Unix ms)")
    })?;
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64))
}

/// `outpost backup`: a snapshot now, then retention.
async fn run_backup(config: Config) -> Result<()> {
    use outpost::backup::{snapshot, state, store::Store};
    let url = config.backup_url();
    let store = Store::open(&url, &config.backup)?;
    let db_path = config.db_path();
    if !db_path.exists() {
        bail!("no database at {} (wrong --data-dir?)", db_path.display());
    }
    let node_id = outpost::db::log::LogReader::open(&db_path)?.meta()?.node_id;
    let first_segment = state::load(&config.node.data_dir, &url, &node_id).next_index;
    let started = std::time::Instant::now();
    let manifest = snapshot::take(
        &store,
        snapshot::SnapshotJob {
            db_path: &db_path,
            work_dir: &config.node.data_dir,
            node_id: &node_id,
            first_segment,
            level: config.backup.compression_level,
        },
    )
    .await?;
    let pruned = snapshot::prune(
        &store,
        &node_id,
        config.backup.snapshot_keep,
        config.backup.snapshot_max_age.as_millis() as u64,
    )
    .await?;
    println!(
        "snapshot {} of node {node_id}: {} bytes ({} compressed) in {:.2?}; {} log entries; {pruned} old objects deleted",
        store.describe(&snapshot::Manifest::data_name(&node_id, manifest.created_ms)),
        manifest.db_bytes,
        manifest.object_bytes,
        started.elapsed(),
        manifest.have.total(),
    );
    Ok(())
}

/// `outpost restore`.
async fn run_restore(
    request: outpost::backup::restore::Request,
    data_dir: &std::path::Path,
    json: bool,
) -> Result<()> {
    use outpost::backup::restore::{fmt_ms, restore, Progress, Quiet};
    use std::io::IsTerminal;
    let mut terminal = TerminalProgress::default();
    let progress: &mut dyn Progress = if std::io::stderr().is_terminal() {
        &mut terminal
    } else {
        &mut Quiet
    };
    let report = restore(request, progress).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    eprintln!();
    println!(
        "restored node {} from the backup of {} into {}",
        report.new_node_id,
        report.source_node,
        data_dir.display()
    );
    println!(
        "snapshot of {} ({} bytes), {} segments ({} bytes): {} entries applied, {} already held, {} after --at",
        fmt_ms(report.snapshot_ms),
        report.snapshot_bytes,
        report.segments,
        report.segment_bytes,
        report.entries_applied,
        report.entries_already_held,
        report.entries_after_at
    );
    if report.last_entry_ms > 0 {
        println!("newest entry replayed: {}", fmt_ms(report.last_entry_ms));
    }
    match report.check_seconds {
        Some(secs) => println!(
            "outpost check: clean, {} rows ({secs:.2} s); restore took {:.2} s",
            report.rows, report.seconds
        ),
        None => println!(
            "outpost check: skipped (--no-check); restore took {:.2} s",
            report.seconds
        ),
    }
    println!(
        "next: `outpost init --data-dir {} [--ca-dir CA]` issues this node's certificate, then `outpost serve`",
        data_dir.display()
    );
    Ok(())
}

/// One line on the terminal, rewritten as the restore goes.
#[derive(Default)]
struct TerminalProgress {
    last: Option<std::time::Instant>,
}

impl TerminalProgress {
    fn show(&mut self, line: String, last: bool) {
        let now = std::time::Instant::now();
        if !last
            && self
                .last
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        eprint!("\r{line:<70}");
    }
}

impl outpost::backup::restore::Progress for TerminalProgress {
    fn snapshot(&mut self, done: u64, total: u64) {
        let line = format!(
            "snapshot: {:.1} / {:.1} MB",
            done as f64 / 1e6,
            total as f64 / 1e6
        );
        self.show(line, done == total);
    }

    fn segment(&mut self, done: u64, total: u64, bytes: u64) {
        let line = format!("segments: {done} / {total} ({:.1} MB)", bytes as f64 / 1e6);
        self.show(line, done == total);
    }
}

/// One line of `outpost status` about the backup: where, how far behind,
/// the last error.
fn backup_line(backup: &serde_json::Value) -> String {
    let Some(url) = backup["url"].as_str() else {
        return "off (backup.enabled = false)".into();
    };
    let ago = |ms: &serde_json::Value| match ms.as_u64() {
        Some(0) | None => "never".to_string(),
        Some(ms) => {
            let secs = outpost::backup::now_ms().saturating_sub(ms) as f64 / 1000.0;
            format!("{secs:.1} s ago")
        }
    };
    let mut line = format!(
        "{url}: caught up {}, {} entries unshipped, snapshot {}",
        ago(&backup["caught_up_ms"]),
        backup["unshipped_entries"],
        ago(&backup["last_snapshot_ms"])
    );
    if backup["over_limit"] == true {
        line.push_str(", BACKLOG OVER backup.max_backlog_bytes");
    }
    if let Some(error) = backup["last_error"].as_str() {
        line.push_str(&format!(", last error: {error}"));
    }
    line
}

/// `outpost init`: node id, JWT key pair, (optionally) the API's self-signed
/// certificate, the cluster CA if needed and the node's sync certificate.
fn run_init(
    config: &Config,
    self_signed: bool,
    ca_dir: Option<PathBuf>,
    hosts: &[String],
    force_cert: bool,
) -> Result<()> {
    use outpost::sync::tls;

    let keys = config.keys_dir();
    if auth::generate_keys(&keys)? {
        println!("created JWT key pair in {}", keys.display());
    } else {
        println!("JWT key pair already exists in {}", keys.display());
    }
    let tls_dir = config.node.data_dir.join(outpost::server::TLS_DIR);
    if self_signed {
        if outpost::server::write_self_signed(&config.node.data_dir)? {
            println!(
                "created a self-signed TLS certificate in {}",
                tls_dir.display()
            );
        } else {
            println!("TLS certificate already exists in {}", tls_dir.display());
        }
    }
    // The node certificate names the node: the identity comes first.
    let node_id = outpost::db::conn::create_node_identity(&config.db_path(), &config.db)?;
    println!(
        "node id {node_id} (database {})",
        config.db_path().display()
    );

    let explicit_ca = ca_dir.is_some();
    let ca_dir = ca_dir.unwrap_or_else(|| tls_dir.join("ca"));
    let node_cert = tls_dir.join(tls::NODE_CERT_FILE);
    let node_key = tls_dir.join(tls::NODE_KEY_FILE);
    let ca_copy = tls_dir.join(tls::CA_CERT_FILE);
    if node_cert.exists() && node_key.exists() && !force_cert {
        println!(
            "node certificate already exists: {} (reissue with --force-cert)",
            node_cert.display()
        );
        let ca_cert = ca_dir.join(tls::CA_CERT_FILE);
        if explicit_ca
            && ca_cert.exists()
            && std::fs::read(&ca_cert).ok() != std::fs::read(&ca_copy).ok()
        {
            eprintln!(
                "warning: the node certificate in {} was not issued by the CA in {}; \
                 reissue it with --force-cert",
                tls_dir.display(),
                ca_dir.display()
            );
        }
    } else {
        if tls::ensure_ca(&ca_dir)? {
            println!(
                "created cluster CA certificate {}",
                ca_dir.join(tls::CA_CERT_FILE).display()
            );
            println!(
                "created cluster CA key {}",
                ca_dir.join(tls::CA_KEY_FILE).display()
            );
        }
        tls::issue_node_cert(&ca_dir, &tls_dir, &node_id, hosts, force_cert)
            .context("cannot issue the node certificate")?;
        println!("created node certificate {}", node_cert.display());
        println!("created node key {}", node_key.display());
        println!("copied cluster CA certificate to {}", ca_copy.display());
    }
    println!(
        "mint a client token with: outpost token --data-dir {}",
        config.node.data_dir.display()
    );
    Ok(())
}

/// Prints what a migration run applied, or that nothing was pending.
fn report_migrations(applied: &[(i64, String)], version: i64) {
    for (version, name) in applied {
        println!("applied {name} (schema version {version})");
    }
    if applied.is_empty() {
        println!("schema version {version} is up to date");
    }
}

/// `outpost migrate` on a data dir no `serve` runs on.
fn migrate_offline(config: &Config) -> Result<()> {
    let data_dir = &config.node.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let _lock = outpost::db::lock_data_dir(data_dir).map_err(|e| {
        anyhow::anyhow!("{e}; to migrate a running node use `outpost migrate --admin http://<its admin.listen>`")
    })?;
    let dir = config
        .schema
        .dir()
        .context("no migrations directory: pass --migrations DIR or set schema.migrations")?
        .to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = std::sync::Arc::new(outpost::metrics::Metrics::new());
    let db = outpost::db::Database::open(config, metrics)?;
    let run = runtime.block_on(db.migrate(&dir));
    let version = db.events().schema().version;
    db.shutdown();
    let applied: Vec<(i64, String)> = run
        .applied
        .into_iter()
        .map(|r| (r.version, r.name))
        .collect();
    match run.error {
        None => {
            report_migrations(&applied, version);
            Ok(())
        }
        Some(e) => {
            for (version, name) in &applied {
                println!("applied {name} (schema version {version})");
            }
            Err(e.into())
        }
    }
}

/// `outpost migrate --admin URL`: the running node migrates itself.
fn migrate_through_admin(base: &str) -> Result<()> {
    let (code, body) = http_request(base, "POST", "/migrate")?;
    let reply: serde_json::Value = serde_json::from_str(body.trim())
        .with_context(|| format!("{base}/migrate answered {code}: {body}"))?;
    let applied: Vec<(i64, String)> = reply["applied"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let name = m["name"].as_str().unwrap_or("?").to_string();
            (m["version"].as_i64().unwrap_or(0), name)
        })
        .collect();
    if code != 200 {
        for (version, name) in &applied {
            println!("applied {name} (schema version {version})");
        }
        bail!("{}", reply["error"].as_str().unwrap_or(body.as_str()));
    }
    report_migrations(&applied, reply["schema_version"].as_i64().unwrap_or(0));
    Ok(())
}

fn http_get(base: &str, path: &str) -> Result<(u16, String)> {
    http_request(base, "GET", path)
}

/// A minimal HTTP/1.1 request against the admin listener (plain HTTP, loopback).
fn http_request(base: &str, method: &str, path: &str) -> Result<(u16, String)> {
    http_request_with(base, method, path, "")
}

/// [`http_request`] with a JSON body (none when empty).
fn http_request_with(base: &str, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let hostport = base
        .strip_prefix("http://")
        .context("the admin URL must start with http://")?
        .trim_end_matches('/');
    let mut stream =
        TcpStream::connect(hostport).with_context(|| format!("cannot reach {base}"))?;
    // A migration may take a while (it may rewrite tables).
    let timeout = if method == "GET" { 5 } else { 600 };
    stream.set_read_timeout(Some(Duration::from_secs(timeout)))?;
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// A sample's value from the Prometheus text output (the first series of
/// that name without labels), if present.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A gauge as JSON: whole numbers as integers (the gauges here count
/// things or bytes).
fn metric_json(value: Option<f64>) -> serde_json::Value {
    match value {
        Some(v) if v.fract() == 0.0 && v.abs() < 9e15 => serde_json::json!(v as i64),
        other => serde_json::json!(other),
    }
}

/// Bytes for people: 512 B, 1.5 MB, 17.9 GB.
fn human_bytes(bytes: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Everything `outpost status` shows, gathered from the admin listener:
/// `/version`, `/ready`, `/status` and a few gauges from `/metrics`.
fn status_report(base: &str) -> Result<serde_json::Value> {
    let (_, version) = http_get(base, "/version")?;
    let (ready, _) = http_get(base, "/ready")?;
    let (_, metrics) = http_get(base, "/metrics")?;
    let (code, node) = http_get(base, "/status")?;
    let node: serde_json::Value = serde_json::from_str(node.trim())
        .with_context(|| format!("{base}/status answered {code}: {node}"))?;
    let version: serde_json::Value = serde_json::from_str(version.trim()).unwrap_or_default();
    let gauges: serde_json::Map<String, serde_json::Value> = [
        ("streams_open", "outpost_streams_open"),
        ("writer_queue_depth", "outpost_writer_queue_depth"),
        ("db_size_bytes", "outpost_db_size_bytes"),
        ("rss_bytes", "process_resident_memory_bytes"),
        ("data_dir_free_bytes", "outpost_data_dir_free_bytes"),
    ]
    .into_iter()
    .map(|(key, name)| (key.to_string(), metric_json(metric(&metrics, name))))
    .collect();
    Ok(serde_json::json!({
        "admin": base,
        "version": version["version"],
        "ready": ready == 200,
        "node": node,
        "metrics": gauges,
    }))
}

/// `outpost status` as a table: the node, then one row per peer.
fn print_status(report: &serde_json::Value) {
    let node = &report["node"];
    let bytes = |v: &serde_json::Value| v.as_f64().map_or("-".into(), human_bytes);
    let rows = [
        ("admin", text(&report["admin"])),
        ("version", text(&report["version"])),
        (
            "ready",
            if report["ready"] == true { "yes" } else { "no" }.into(),
        ),
        ("node id", text(&node["node_id"])),
        ("schema version", text(&node["schema_version"])),
        ("migrations", migrations_line(&node["schema"])),
        ("schema waits", schema_wait_line(&node["schema"])),
        ("log entries", text(&node["log_entries"])),
        ("quarantined", text(&node["quarantined"])),
        (
            "signing key",
            match &node["signing_key"] {
                serde_json::Value::Null => "none (no node certificate)".into(),
                key => format!("{} ({} keys known)", text(key), text(&node["keys_known"])),
            },
        ),
        ("backup", backup_line(&node["backup"])),
        (
            "sync listener",
            match &node["sync"]["listen"] {
                serde_json::Value::Null => "off (no certificate)".into(),
                v => text(v),
            },
        ),
        ("open streams", text(&report["metrics"]["streams_open"])),
        (
            "writer queue",
            text(&report["metrics"]["writer_queue_depth"]),
        ),
        ("db size", bytes(&report["metrics"]["db_size_bytes"])),
        ("rss", bytes(&report["metrics"]["rss_bytes"])),
        (
            "disk free",
            bytes(&report["metrics"]["data_dir_free_bytes"]),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<16} {v}");
    }
    print_peers(node["peers"].as_array().map(Vec::as_slice).unwrap_or(&[]));
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn migrations_line(schema: &serde_json::Value) -> String {
    match &schema["migrations"] {
        serde_json::Value::Null => "not managed".into(),
        dir => format!("{} (pending: {})", text(dir), schema["pending"]),
    }
}

fn schema_wait_line(schema: &serde_json::Value) -> String {
    match &schema["waiting_for"] {
        serde_json::Value::Null => "-".into(),
        v => format!(
            "a peer is at version {}: {}",
            text(v),
            schema["last_error"].as_str().unwrap_or("migrating")
        ),
    }
}

/// One row per peer link: state, how far behind it is, traffic, and why it
/// is paused or failing.
fn print_peers(peers: &[serde_json::Value]) {
    if peers.is_empty() {
        println!("\nno peers");
        return;
    }
    let seconds = |v: &serde_json::Value| match v.as_f64() {
        Some(s) => format!("{s:.1}s"),
        None => "-".into(),
    };
    println!();
    println!(
        "{:<34} {:<12} {:>8} {:>9} {:>9} {:>10} {:>10}  note",
        "peer", "state", "behind", "behind_s", "lag", "sent", "received"
    );
    for p in peers {
        let note = match (&p["paused"], &p["last_error"]) {
            (serde_json::Value::String(s), _) | (_, serde_json::Value::String(s)) => s.clone(),
            _ => p["url"].as_str().unwrap_or_default().to_string(),
        };
        println!(
            "{:<34} {:<12} {:>8} {:>9} {:>9} {:>10} {:>10}  {note}",
            text(&p["link"]),
            text(&p["state"]),
            text(&p["behind"]),
            seconds(&p["behind_seconds"]),
            seconds(&p["lag_seconds"]),
            text(&p["entries_sent"]),
            text(&p["entries_received"]),
        );
    }
}

/// `outpost check`: prints the report; exit status 1 when it found problems.
fn run_check(config: &Config, digest: bool) -> Result<()> {
    let report = outpost::db::check::check(&config.db_path(), digest)?;
    println!(
        "checked {} replicated tables ({}): {} rows, {} documents, {} log entries",
        report.tables.len(),
        report.tables.join(", "),
        report.rows,
        report.documents,
        report.log_entries
    );
    for (origin, seq) in &report.origins {
        println!("origin {origin}: seq 1..={seq}");
    }
    if let Some(digest) = &report.digest {
        println!("digest {digest}");
    }
    if report.is_clean() {
        println!("ok");
        return Ok(());
    }
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    if report.more_problems > 0 {
        println!("... and {} more problems", report.more_problems);
    }
    println!(
        "FAILED: {} problems",
        report.problems.len() + report.more_problems
    );
    std::process::exit(1);
}

/// `outpost quarantine list|replay`.
fn run_quarantine(action: QuarantineAction) -> Result<()> {
    use outpost::db::quarantine::{self, Filter};
    match action {
        QuarantineAction::List {
            common,
            json,
            limit,
            code,
            origin,
        } => {
            let config = load_config(&common)?;
            let filter = Filter {
                code,
                origin,
                after: None,
            };
            quarantine_list(&config, &filter, quarantine::per_call(Some(limit)), json)
        }
        QuarantineAction::Replay {
            common,
            admin,
            code,
            origin,
        } => {
            let config = load_config(&common)?;
            let filter = Filter {
                code,
                origin,
                after: None,
            };
            let report = match admin {
                Some(base) => replay_through_admin(&base, &filter)?,
                None => replay_offline(&config, &filter)?,
            };
            let reasons = report
                .reasons
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "replayed {} entries, {} still refused{}",
                report.replayed,
                report.still_refused,
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" (reasons: {reasons})")
                }
            );
            Ok(())
        }
    }
}

/// `outpost quarantine list`: reads `_outpost_quarantine` through a
/// read-only connection (next to a running server too).
fn quarantine_list(
    config: &Config,
    filter: &outpost::db::quarantine::Filter,
    limit: usize,
    json: bool,
) -> Result<()> {
    let path = config.db_path();
    if !path.exists() {
        bail!(
            "no database at {} (run `outpost init` first?)",
            path.display()
        );
    }
    let log = outpost::db::log::LogReader::open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let entries = log
        .quarantined(filter, limit)
        .with_context(|| format!("cannot read the quarantine of {}", path.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no quarantined entries");
        return Ok(());
    }
    let cut = |text: &str, width: usize| -> String {
        if text.chars().count() <= width {
            text.to_string()
        } else {
            let mut short: String = text.chars().take(width - 1).collect();
            short.push('…');
            short
        }
    };
    println!(
        "{:<17} {:>6} {:<16} {:<20} {:<36} {:<11} {:<48} when (UTC)",
        "origin", "seq", "table", "key", "peer", "code", "reason"
    );
    for e in &entries {
        println!(
            "{:<17} {:>6} {:<16} {:<20} {:<36} {:<11} {:<48} {}",
            e.origin,
            e.seq,
            cut(&e.table, 16),
            cut(&e.key, 20),
            cut(&e.peer, 36),
            e.code,
            cut(&e.reason, 48),
            e.at
        );
    }
    let total = log.quarantine_count().unwrap_or(0);
    if total as usize > entries.len() {
        println!("({} shown of {total} quarantined entries)", entries.len());
    }
    Ok(())
}

/// Entries one replay call handles; the command goes on until none is left.
const REPLAY_PER_CALL: usize = 1000;

/// Adds one replay call's report to the total so far.
fn add_report(
    total: &mut outpost::db::quarantine::ReplayReport,
    call: outpost::db::quarantine::ReplayReport,
) {
    total.replayed += call.replayed;
    total.still_refused += call.still_refused;
    total.processed += call.processed;
    for (code, n) in call.reasons {
        *total.reasons.entry(code).or_default() += n;
    }
    total.remaining = call.remaining;
    total.last = call.last.or(total.last);
}

/// `outpost quarantine replay --admin URL`: the running node replays, in
/// calls of REPLAY_PER_CALL entries (one writer transaction each).
fn replay_through_admin(
    base: &str,
    filter: &outpost::db::quarantine::Filter,
) -> Result<outpost::db::quarantine::ReplayReport> {
    let mut total = outpost::db::quarantine::ReplayReport::default();
    let mut after: Option<(String, u64)> = None;
    loop {
        let mut body = serde_json::json!({ "limit": REPLAY_PER_CALL });
        if let Some(code) = &filter.code {
            body["code"] = serde_json::json!(code);
        }
        if let Some(origin) = filter.origin {
            body["origin"] = serde_json::json!(origin.to_string());
        }
        if let Some((origin, seq)) = &after {
            body["after"] = serde_json::json!({ "origin": origin, "seq": seq });
        }
        let (code, text) =
            http_request_with(base, "POST", "/quarantine/replay", &body.to_string())?;
        let reply: serde_json::Value = serde_json::from_str(text.trim())
            .with_context(|| format!("{base}/quarantine/replay answered {code}: {text}"))?;
        if code != 200 {
            bail!(
                "{base}/quarantine/replay answered {code}: {}",
                reply["error"].as_str().unwrap_or(text.as_str())
            );
        }
        let count = |key: &str| reply[key].as_u64().unwrap_or(0);
        let processed = count("processed");
        let call = outpost::db::quarantine::ReplayReport {
            replayed: count("replayed"),
            still_refused: count("still_refused"),
            remaining: count("remaining"),
            processed,
            reasons: reply["reasons"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(code, n)| (code.clone(), n.as_u64().unwrap_or(0)))
                .collect(),
            last: None,
        };
        add_report(&mut total, call);
        after = match (&reply["last"]["origin"], reply["last"]["seq"].as_u64()) {
            (serde_json::Value::String(origin), Some(seq)) => Some((origin.clone(), seq)),
            _ => None,
        };
        if (processed as usize) < REPLAY_PER_CALL || after.is_none() {
            return Ok(total);
        }
    }
}

/// `outpost quarantine replay` on a data dir no `serve` runs on.
fn replay_offline(
    config: &Config,
    filter: &outpost::db::quarantine::Filter,
) -> Result<outpost::db::quarantine::ReplayReport> {
    let data_dir = &config.node.data_dir;
    if !config.db_path().exists() {
        bail!("no database at {}", config.db_path().display());
    }
    let _lock = outpost::db::lock_data_dir(data_dir).map_err(|e| {
        anyhow::anyhow!(
            "{e}; to replay on a running node use `outpost quarantine replay --admin http://<its admin.listen>`"
        )
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = std::sync::Arc::new(outpost::metrics::Metrics::new());
    let db = outpost::db::Database::open(config, metrics)?;
    let mut total = outpost::db::quarantine::ReplayReport::default();
    let mut filter = filter.clone();
    let outcome = loop {
        match runtime.block_on(db.replay_quarantine(filter.clone(), REPLAY_PER_CALL)) {
            Ok(call) => {
                let done = (call.processed as usize) < REPLAY_PER_CALL || call.last.is_none();
                filter.after = call.last;
                add_report(&mut total, call);
                if done {
                    break Ok(total);
                }
            }
            Err(e) => break Err(anyhow::anyhow!("{}: {}", e.code, e.message)),
        }
    };
    db.shutdown();
    outcome
}
