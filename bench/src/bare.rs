//! Baseline (b): a bare HTTP round trip on the same server stack as outpost (actix-web 4),
//! a trivial handler that reads the POST body and returns a fixed small Hrana-shaped JSON.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{Context, Result};

/// Shaped like outpost's answer to a one-row read (one 32-byte text value), and it passes the
/// client's checks for both a read (one row) and an insert (one affected row).
const FIXED: &str = r#"{"baton":null,"base_url":null,"results":[{"type":"ok","response":{"type":"execute","result":{"cols":[{"name":"v","decltype":"TEXT"}],"rows":[[{"type":"text","value":"0123456789abcdef0123456789abcdef"}]],"affected_row_count":1,"last_insert_rowid":null,"replication_index":null,"rows_read":1,"rows_written":0,"query_duration_ms":0.0}}},{"type":"ok","response":{"type":"close"}}]}"#;

async fn pipeline(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(FIXED)
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

pub struct BareServer {
    pub addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl BareServer {
    /// Start on 127.0.0.1 with an OS-chosen port; `workers == 0` keeps actix's default.
    pub fn start(workers: usize) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bare-actix".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let mut server = HttpServer::new(|| {
                        App::new()
                            .route("/v2/pipeline", web::post().to(pipeline))
                            .route("/health", web::get().to(health))
                    })
                    .disable_signals();
                    if workers > 0 {
                        server = server.workers(workers);
                    }
                    let server = match server.bind(("127.0.0.1", 0)) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return Err(e);
                        }
                    };
                    let addr = server.addrs()[0];
                    let server = server.run();
                    let _ = tx.send(Ok((addr, server.handle())));
                    server.await
                })
            })?;
        let (addr, handle) = rx
            .recv()
            .context("bare server thread exited")?
            .map_err(|e| anyhow::anyhow!("bare server bind: {e}"))?;
        Ok(BareServer {
            addr,
            handle,
            thread: Some(thread),
        })
    }

    pub async fn stop(mut self) {
        self.handle.stop(true).await;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
