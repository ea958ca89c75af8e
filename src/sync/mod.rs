//! Replication between nodes.
//!
//! - [`vv`]: version vectors (what a node holds, per origin);
//! - [`proto`]: the messages nodes exchange, and their wire encoding;
//! - [`core`]: the sans-IO replication state machine (no sockets, no clock,
//!   no randomness): messages and ticks in, messages and effects out;
//! - [`tls`]: the cluster CA, node certificates and mutual-TLS configs;
//! - [`keys`]: origin signatures on log entries, certificates, revocation;
//! - [`rules`]: partial replication, what may flow to and from each peer;
//! - [`transport`]: the HTTPS/WebSocket driver that runs the core.

pub mod core;
pub mod keys;
pub mod proto;
pub mod rules;
pub mod tls;
pub mod transport;
pub mod vv;
