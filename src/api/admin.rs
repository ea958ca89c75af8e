//! The admin listener: `/health` (the process is up), `/ready` (the
//! database answers), `/version`, `/metrics` in Prometheus text format,
//! `/status` (the node at a glance), `POST /migrate` (apply the pending
//! migrations of the node's migrations directory now), `GET /quarantine`
//! (refused remote entries) and `POST /quarantine/replay` (apply them
//! again once the cause is fixed).
//!
//! The admin listener has no authentication: bind it to loopback or a
//! private network (`admin.listen`). Monitoring may reach it from anywhere
//! on that network, but the endpoints that change the node or show row
//! data answer loopback clients only, unless `admin.remote_operations`.

use actix_web::{web, HttpRequest, HttpResponse};

use super::AppState;
use crate::auth::Access;
use crate::db::{ExecCtx, WorkItem};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/version", web::get().to(version))
        .route("/metrics", web::get().to(metrics))
        .route("/status", web::get().to(status))
        .route("/migrate", web::post().to(migrate))
        .route("/quarantine", web::get().to(quarantine_list))
        .route("/quarantine/replay", web::post().to(quarantine_replay));
}

/// A 403 for a client off this host, unless `admin.remote_operations`:
/// the admin listener has no authentication, and whoever can scrape
/// metrics must not also be able to migrate the node or read quarantined
/// rows.
fn local_only(req: &HttpRequest, remote_operations: bool) -> Option<HttpResponse> {
    let local = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
    if local || remote_operations {
        return None;
    }
    Some(HttpResponse::Forbidden().json(serde_json::json!({
        "code": "ADMIN_LOCAL_ONLY",
        "error": format!(
            "{} answers clients on this node's host only: run the outpost command there \
             (e.g. `outpost migrate --admin http://127.0.0.1:PORT`), or set \
             admin.remote_operations = true if the admin network is trusted",
            req.path()
        ),
    })))
}

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

pub async fn version() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "name": "outpost",
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Ready when a reader answers a trivial query.
async fn ready(app: web::Data<AppState>) -> HttpResponse {
    let ctx = ExecCtx {
        access: Access::ReadOnly,
        max_rows: 1,
        max_bytes: 1024,
        timeout: std::time::Duration::from_secs(5),
    };
    let stmt = libsql_hrana::proto::Stmt::new("SELECT 1", true);
    match app.db.run(WorkItem::Execute(stmt), ctx, None).await {
        Ok(reply) if reply.output.is_ok() => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        _ => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("database not ready\n"),
    }
}

/// The node at a glance: identity, schema, change log, peers.
async fn status(app: web::Data<AppState>) -> HttpResponse {
    let log = app.db.events().log_vector();
    let sync = match &app.sync {
        Some(sync) => sync.status().await.unwrap_or(serde_json::Value::Null),
        None => serde_json::Value::Null,
    };
    // Queries of the node's tables: off the async worker.
    let db = app.db.clone();
    let (meta, quarantined) =
        match web::block(move || (db.meta(), db.log().quarantine_count().ok())).await {
            Ok(read) => read,
            Err(e) => {
                return HttpResponse::InternalServerError()
                    .json(serde_json::json!({ "error": e.to_string() }))
            }
        };
    let schema = schema_status(&app, sync.get("schema"));
    HttpResponse::Ok().json(serde_json::json!({
        "schema": schema,
        "node_id": meta.as_ref().map(|m| m.node_id.clone()).ok(),
        "origin": meta.as_ref().map(|m| m.origin.to_string()).ok(),
        "schema_version": meta.as_ref().map(|m| m.schema_version).ok(),
        "schema_hash": meta.as_ref().map(|m| m.schema_hash.clone()).ok(),
        "log": log.0.iter().map(|(o, s)| (o.to_string(), serde_json::json!(s))).collect::<serde_json::Map<_, _>>(),
        "log_entries": log.total(),
        "quarantined": quarantined,
        "signing_key": app.db.keys().map(|k| format!("{:016x}", k.own_key_id())),
        "keys_known": app.db.keys().map(|k| k.known().len()),
        "sync": sync,
        "backup": app.backup.as_ref().map(|b| b.status()),
        "peers": sync.get("peers").cloned().unwrap_or(serde_json::json!([])),
    }))
}

/// The schema: version, hash, the migrations directory and what of it is
/// pending, and (from sync) whether a newer peer waits for a migration.
fn schema_status(app: &AppState, sync: Option<&serde_json::Value>) -> serde_json::Value {
    use crate::db::migrate;
    let state = app.db.events().schema();
    let dir = app.config.schema.dir();
    let pending = dir.map(|dir| {
        let applied = app.db.log().migrations().map_err(|e| e.to_string())?;
        let files = migrate::load_dir(dir).map_err(|e| e.to_string())?;
        migrate::pending(dir, files, &applied)
            .map(|left| left.iter().map(|m| m.version).collect::<Vec<_>>())
            .map_err(|e| e.to_string())
    });
    let sync = sync.cloned().unwrap_or_default();
    let last_error = match &pending {
        Some(Err(e)) => serde_json::json!(e),
        _ => sync["last_error"].clone(),
    };
    serde_json::json!({
        "version": state.version,
        "hash": state.hash,
        "migrations": dir.map(|d| d.display().to_string()),
        "auto_migrate": app.config.schema.auto_migrate,
        "pending": match pending {
            Some(Ok(versions)) => serde_json::json!(versions),
            _ => serde_json::json!([]),
        },
        "waiting_for": sync["waiting_for"],
        "last_error": last_error,
    })
}

/// Applies the pending migrations of the node's migrations directory.
async fn migrate(req: HttpRequest, app: web::Data<AppState>) -> HttpResponse {
    if let Some(refused) = local_only(&req, app.config.admin.remote_operations) {
        return refused;
    }
    let Some(dir) = app.config.schema.dir() else {
        return HttpResponse::Conflict().json(serde_json::json!({
            "error": "this node has no migrations directory (schema.migrations or --migrations)",
        }));
    };
    let run = app.db.migrate(dir).await;
    let state = app.db.events().schema();
    let mut reply = serde_json::json!({
        "applied": run.applied,
        "schema_version": state.version,
        "schema_hash": state.hash,
    });
    match run.error {
        None => HttpResponse::Ok().json(reply),
        Some(e) => {
            reply["error"] = serde_json::json!(e.to_string());
            HttpResponse::UnprocessableEntity().json(reply)
        }
    }
}

async fn metrics(app: web::Data<AppState>) -> HttpResponse {
    app.metrics.db_size_bytes.set(app.db.size_bytes() as i64);
    app.metrics.observe_data_dir(&app.config.node.data_dir);
    // Queries of the node's tables: off the async worker.
    let db = app.db.clone();
    let read = web::block(move || {
        let log = db.log();
        Ok::<_, libsql_sys::rusqlite::Error>((log.quarantine_count()?, log.peers_seen()?))
    });
    match read
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        Ok((quarantined, peers)) => {
            app.metrics.quarantined_entries.set(quarantined as i64);
            let seen = &app.metrics.sync_peer_last_seen_timestamp_seconds;
            seen.reset();
            for (node_id, seen_ms) in peers {
                seen.with_label_values(&[&node_id])
                    .set((seen_ms / 1000) as i64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the quarantine and peers for metrics"),
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(app.metrics.render())
}

/// An origin as a JSON number or a decimal string (as `/status` shows it).
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum OriginArg {
    Number(u64),
    Text(String),
}

impl OriginArg {
    fn parse(&self) -> Result<u64, String> {
        match self {
            OriginArg::Number(n) => Ok(*n),
            OriginArg::Text(text) => text
                .parse()
                .map_err(|_| format!("origin {text:?} is not a decimal origin")),
        }
    }
}

/// Which quarantined entries: `code`, `origin`, `limit`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineQuery {
    code: Option<String>,
    origin: Option<OriginArg>,
    limit: Option<usize>,
    /// Replay only: go on after this entry (the `last` of a previous reply).
    after: Option<QuarantineCursor>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineCursor {
    origin: OriginArg,
    seq: u64,
}

fn bad_request(message: String) -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({ "error": message }))
}

impl QuarantineQuery {
    fn filter(&self) -> Result<crate::db::quarantine::Filter, String> {
        Ok(crate::db::quarantine::Filter {
            code: self.code.clone(),
            origin: self.origin.as_ref().map(OriginArg::parse).transpose()?,
            after: match &self.after {
                Some(c) => Some((c.origin.parse()?, c.seq)),
                None => None,
            },
        })
    }
}

/// `GET /quarantine?limit=N&code=C&origin=O`: quarantined entries in
/// (origin, seq) order (limit default 100, at most 10,000), without their
/// update bytes.
async fn quarantine_list(
    req: HttpRequest,
    app: web::Data<AppState>,
    query: web::Query<QuarantineQuery>,
) -> HttpResponse {
    if let Some(refused) = local_only(&req, app.config.admin.remote_operations) {
        return refused;
    }
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(e) => return bad_request(e),
    };
    let limit = crate::db::quarantine::per_call(query.limit);
    let db = app.db.clone();
    let listed = web::block(move || db.log().quarantined(&filter, limit)).await;
    match listed {
        Ok(Ok(entries)) => HttpResponse::Ok().json(entries),
        Ok(Err(e)) => HttpResponse::InternalServerError()
            .json(serde_json::json!({ "error": format!("reading the quarantine: {e}") })),
        Err(e) => {
            HttpResponse::InternalServerError().json(serde_json::json!({ "error": e.to_string() }))
        }
    }
}

/// `POST /quarantine/replay` with an optional JSON body `{"code": .., "origin":
/// .., "limit": .., "after": {"origin": .., "seq": ..}}`: runs matching
/// quarantined entries through the apply path again, in (origin, seq)
/// order, at most `limit` (default 100, at most 10,000) in one writer
/// transaction. Replies `{"replayed", "still_refused", "remaining",
/// "reasons", "last", "processed"}`; `last` is the cursor for the next call.
async fn quarantine_replay(
    req: HttpRequest,
    app: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    if let Some(refused) = local_only(&req, app.config.admin.remote_operations) {
        return refused;
    }
    let query: QuarantineQuery = if body.iter().all(u8::is_ascii_whitespace) {
        QuarantineQuery::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(query) => query,
            Err(e) => return bad_request(format!("bad JSON body: {e}")),
        }
    };
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(e) => return bad_request(e),
    };
    let limit = crate::db::quarantine::per_call(query.limit);
    match app.db.replay_quarantine(filter, limit).await {
        Ok(report) => HttpResponse::Ok().json(report),
        Err(e) => HttpResponse::InternalServerError()
            .json(serde_json::json!({ "error": e.message, "code": e.code })),
    }
}

#[cfg(test)]
mod tests {
    use super::local_only;
    use actix_web::test::TestRequest;

    #[test]
    fn operations_answer_loopback_clients_only_unless_allowed() {
        let from = |addr: &str| {
            TestRequest::post()
                .uri("/migrate")
                .peer_addr(addr.parse().unwrap())
                .to_http_request()
        };
        for local in ["127.0.0.1:4000", "[::1]:4000"] {
            assert!(local_only(&from(local), false).is_none(), "{local}");
        }
        let refused = local_only(&from("10.1.2.3:4000"), false).expect("refused");
        assert_eq!(refused.status(), 403);
        assert!(local_only(&from("10.1.2.3:4000"), true).is_none());
        // No peer address (not a TCP client): refused too.
        let unknown = TestRequest::post().uri("/migrate").to_http_request();
        assert!(local_only(&unknown, false).is_some());
    }
}
