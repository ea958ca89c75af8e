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
        .route("/metrics", web::get().to(metrics));
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

async fn metrics(app: web::Data<AppState>) -> HttpResponse {
    app.metrics.db_size_bytes.set(app.db.size_bytes() as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(app.metrics.render())
}
