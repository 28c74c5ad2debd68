//! The contracts between Cascade's parts: serde types and pure codecs only.
//!
//! - [`gateway`]: frames a client sends on the control plane's WebSocket
//!   (`GET /v1/ws`) and the fixed frames the server sends back.
//! - [`calls`]: join-token claims and grants, and what edge and relay nodes
//!   report to the control plane's registry.
//!
//! - [`signaling`]: client ↔ edge messages on the edge's `/v1/rtc` socket.
//! - [`relay`]: edge ↔ relay and relay ↔ relay control frames and media
//!   datagrams, a binary codec that never panics on malformed input.
//!
//! Architecture invariant: no I/O, no async runtime, no clock. Every other
//! crate may depend on this one; it depends on nothing of ours.

pub mod calls;
pub mod gateway;
pub mod relay;
pub mod signaling;
