//! outpost: an edge-node sync gateway.
//!
//! One `outpost` process per edge node keeps a local libSQL database and serves
//! it to thin clients over libSQL's Hrana protocol (HTTP and WebSocket), so the
//! official libSQL clients work against it unchanged.
//!
//! The crate is organised one module per concern (see ARCHITECTURE.md):
//! - [`config`]: typed configuration, defaults, validation, env overrides;
//! - [`db`]: the local replica — one writer thread with group commit, a pool
//!   of reader threads, statement execution and the SQL authorizer;
//! - [`api`]: the actix-web listeners — Hrana over HTTP/WebSocket and admin;
//! - [`auth`]: Ed25519 JWTs (keys, minting, verification);
//! - [`metrics`]: the Prometheus registry and every metric name;
//! - [`sync`]: replication between nodes (sans-IO core, mutual-TLS transport);
//! - [`backup`]: log segments and snapshots in object storage, restore.

pub mod alloc;
pub mod api;
pub mod auth;
pub mod backup;
pub mod config;
pub mod crdt;
pub mod db;
pub mod error;
pub mod metrics;
pub mod ratelimit;
pub mod server;
pub mod sync;
