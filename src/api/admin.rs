//! The admin listener: `/health` (the process is up), `/ready` (the
//! database answers), `/version`, and `/metrics` in Prometheus text format.

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::auth::Access;
use crate::db::{ExecCtx, WorkItem};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/version", web::get().to(version))
        .route("/metrics", web::get().to(metrics))
        .route("/status", web::get().to(status));
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
    let meta = app.db.meta();
    HttpResponse::Ok().json(serde_json::json!({
        "node_id": meta.as_ref().map(|m| m.node_id.clone()).ok(),
        "origin": meta.as_ref().map(|m| m.origin.to_string()).ok(),
        "schema_version": meta.as_ref().map(|m| m.schema_version).ok(),
        "schema_hash": meta.as_ref().map(|m| m.schema_hash.clone()).ok(),
        "log": log.0.iter().map(|(o, s)| (o.to_string(), serde_json::json!(s))).collect::<serde_json::Map<_, _>>(),
        "log_entries": log.total(),
        "sync": sync,
        "peers": sync.get("peers").cloned().unwrap_or(serde_json::json!([])),
    }))
}

async fn metrics(app: web::Data<AppState>) -> HttpResponse {
    app.metrics.db_size_bytes.set(app.db.size_bytes() as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(app.metrics.render())
}
