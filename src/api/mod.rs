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
use crate::ratelimit::{self, RateLimiter};
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
    /// The cloud backup, unless `backup.enabled = false`.
    pub backup: Option<Arc<crate::backup::Backup>>,
    /// `limits.token_requests_per_second`, per client token.
    pub token_limits: Option<RateLimiter>,
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

/// The client token of a request: `Authorization: Bearer <token>`, or the
/// feed's `access_token` query parameter.
fn client_token(req: &ServiceRequest) -> Option<&str> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    header.or_else(|| {
        req.query_string()
            .split('&')
            .find_map(|pair| pair.strip_prefix("access_token="))
    })
}

/// 429 `RATE_LIMITED`, with the seconds to wait in `Retry-After`.
fn rate_limited(wait: std::time::Duration) -> actix_web::Error {
    let error = crate::error::ApiError::overloaded(
        "RATE_LIMITED",
        format!(
            "This token made more than limits.token_requests_per_second requests; retry in {:.1} s",
            wait.as_secs_f64()
        ),
    );
    let response = HttpResponse::TooManyRequests()
        .insert_header(("Retry-After", wait.as_secs().max(1).to_string()))
        .json(error.body());
    actix_web::error::InternalError::from_response(error, response).into()
}

async fn root() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain")
        .body("outpost: a libSQL (Hrana) endpoint. Connect with a libSQL client.\n")
}

/// Counts requests by route and status and times them, and applies the
/// per-token rate limit (`limits.token_requests_per_second`).
///
/// The limit is checked before the request runs and charged after it,
/// only if the token was accepted (not 401): refused tokens never get a
/// bucket, so they cannot push real ones out of the bounded table.
/// Concurrent requests of one token may overshoot by the requests in flight.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let app = req.app_data::<web::Data<AppState>>().cloned();
    let metrics = app.as_ref().map(|a| Arc::clone(&a.metrics));
    let limited = app
        .as_ref()
        .filter(|app| app.token_limits.is_some())
        .and_then(|_| client_token(&req))
        .map(ratelimit::key_of);
    let res = match (&app, limited) {
        (Some(app), Some(key)) => {
            let limiter = app.token_limits.as_ref().expect("limited");
            match limiter.check(key, Instant::now()) {
                Err(wait) => Err(rate_limited(wait)),
                Ok(()) => {
                    let res = next.call(req).await;
                    if !matches!(&res, Ok(r) if r.status() == actix_web::http::StatusCode::UNAUTHORIZED)
                    {
                        limiter.charge(key, 1.0, Instant::now());
                    }
                    res
                }
            }
        }
        _ => next.call(req).await,
    };
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
