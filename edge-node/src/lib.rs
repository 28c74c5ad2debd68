//! The edge SFU node (`cascade edge`, issue 6): str0m peers, one UDP socket
//! per worker, WebSocket/WHIP/WHEP signaling, and a sans-IO forwarding core
//! in `sfu/`. So far: [`join_token`], the verification edges run on every
//! join token, and [`sfu`], the sans-IO forwarding core (tested with str0m
//! clients on a virtual clock); the process shell (sockets, signaling
//! socket, registration) lands next.
//!
//! Architecture invariant (to keep when it lands): forwarding decisions are
//! plain data and functions of `now`, with no sockets or tokio inside.

pub mod app;
pub mod config;
pub mod join_token;
pub mod metrics;
pub mod registration;
pub mod sfu;
pub mod signaling;
pub mod synthetic;
pub mod worker;

pub use app::{Edge, EdgeAddrs, StartError};
pub use config::EdgeConfig;
