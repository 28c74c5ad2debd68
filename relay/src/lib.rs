//! The QUIC relay (`cascade relay`): cascades media between edges and
//! regions so a track crosses each link once, however many subscribers sit
//! behind it.
//!
//! - [`router`]: the routing core, sans-IO (links, announcements,
//!   subscriptions, keyframe requests; virtual-clock tested).
//! - [`media`]: frames ↔ datagrams (packetizer and reassembler), sans-IO.
//! - [`tls`]: the cluster CA, node certificates, mutual TLS 1.3 configs.
//!
//! Architecture invariant: routing decisions live in the sans-IO parts;
//! quinn lives only in the async shells.

pub mod media;
pub mod router;
pub mod tls;
