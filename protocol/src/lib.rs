//! The contracts between Cascade's parts: serde types and pure codecs only.
//!
//! - [`gateway`]: frames a client sends on the control plane's WebSocket
//!   (`GET /v1/ws`) and the fixed frames the server sends back.
//!
//! Still to come, each with its issue: ids and join-token claims (calls),
//! edge ↔ control-plane registry messages, client ↔ edge signaling, relay
//! frames with a fuzzable codec.
//!
//! Architecture invariant: no I/O, no async runtime, no clock. Every other
//! crate may depend on this one; it depends on nothing of ours.

pub mod gateway;
