//! The HTTP listeners: the client API (Hrana over HTTP and WebSocket) and
//! the admin listener (health, readiness, version, Prometheus metrics).

pub mod admin;
pub mod feed;
pub mod http;
pub mod stream;
pub mod ws;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{guard, web, HttpResponse};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::db::Database;
use crate::metrics::Metrics;
use stream::HttpStreams;

/// Everything a request handler needs, shared by all workers.
pub struct AppState {
    pub config: Config,
    pub db: Arc<Database>,
    pub auth: Authenticator,
    pub streams: HttpStreams,
    pub metrics: Arc<Metrics>,
    /// Replication, when this node has a certificate.
    pub sync: Option<Arc<crate::sync::transport::Sync>>,
}

/// Routes of the client API listener.
pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.route("/v2/pipeline", web::post().to(http::pipeline))
        .route("/v3/pipeline", web::post().to(http::pipeline))
        .route("/v3/cursor", web::post().to(http::cursor))
        .route("/v1/execute", web::post().to(http::v1_execute))
        .route("/v1/batch", web::post().to(http::v1_batch))
        .route("/v1/feed", web::get().to(feed::subscribe))
        .route("/v1", web::get().to(http::probe))
        .route("/v2", web::get().to(http::probe))
        .route("/v3", web::get().to(http::probe))
        .route("/health", web::get().to(admin::health))
        .route("/version", web::get().to(admin::version))
        .route(
            "/",
            web::get()
                .guard(guard::Header("upgrade", "websocket"))
                .to(ws::upgrade),
        )
        .route("/", web::get().to(root));
}

async fn root() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain")
        .body("outpost: a libSQL (Hrana) endpoint. Connect with a libSQL client.\n")
}

/// Counts requests by route and status and times them.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|a| Arc::clone(&a.metrics));
    let res = next.call(req).await;
    if let Some(metrics) = metrics {
        let status = match &res {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        metrics
            .http_requests_total
            .with_label_values(&[&route, &status.to_string()])
            .inc();
        metrics
            .http_request_duration_seconds
            .with_label_values(&[&route])
            .observe(started.elapsed().as_secs_f64());
    }
    res
}
