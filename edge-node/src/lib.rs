//! The edge SFU node (`cascade edge`): str0m peers, one UDP socket per
//! media worker, signaling over WebSocket, and a sans-IO forwarding core.
//!
//! - [`worker`]: a worker thread's async shell around one [`sfu::Sfu`],
//!   the sans-IO forwarding core (its own crate).
//! - [`signaling`]: the `/v1/rtc` socket; [`join_token`]: token checks.
//! - [`registration`]: registration and heartbeats with the control plane.
//! - [`relay_link`]: the QUIC link to the region's relay (interest,
//!   announcements, subscriptions, frames both ways, reconnects).
//!
//! Architecture invariant: forwarding decisions are plain data and
//! functions of `now`, with no sockets or tokio inside.

pub mod app;
pub mod config;
pub mod join_token;
pub mod mesh;
pub mod metrics;
pub mod registration;
pub mod relay_client;
pub mod relay_link;
pub mod send_batch;
pub mod signaling;
pub mod worker;

pub use app::{Edge, EdgeAddrs, StartError};
pub use config::EdgeConfig;
