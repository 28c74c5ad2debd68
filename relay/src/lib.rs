//! The QUIC relay (`cascade relay`): cascades media between edges and
//! regions so a track crosses each link once, however many subscribers sit
//! behind it.
//!
//! - [`router`]: the routing core, sans-IO (links, announcements,
//!   subscriptions, keyframe requests; virtual-clock tested).
//! - [`media`]: frames ↔ datagrams (packetizer and reassembler), sans-IO.
//! - [`addr`]: relay addresses (`ip:port` or `host:port`, resolved per dial).
//! - [`tls`]: the cluster CA, node certificates, mutual TLS 1.3 configs.
//! - [`link`]: dialing/accepting a link, hellos, control framing, backoff
//!   (shared with edges).
//! - [`app`]: the `cascade relay` service shell; [`config`], [`metrics`].
//!
//! Architecture invariant: routing decisions live in the sans-IO parts;
//! quinn lives only in the async shells.

pub mod addr;
pub mod app;
pub mod config;
pub mod link;
pub mod media;
pub mod metrics;
pub mod router;
pub mod tls;

pub use addr::NodeAddr;
pub use app::{Relay, RelayAddrs, StartError};
pub use config::{PeerConfig, RelayConfig};
