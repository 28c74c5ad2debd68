//! The contracts between Cascade's parts: serde types and pure codecs only.
//!
//! What lands here, each with its issue: ids (`CallId`, `NodeId`, `Region`,
//! `TrackId`), join-token claims, edge ↔ control-plane registry messages,
//! client ↔ edge signaling messages, and relay frames with a fuzzable codec.
//! It is empty until the first of those contracts exists.
//!
//! Architecture invariant: no I/O, no async runtime, no clock. Every other
//! crate may depend on this one; it depends on nothing of ours.
