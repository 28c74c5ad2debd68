//! The edge SFU node (`cascade edge`, issue 6): str0m peers, one UDP socket
//! per worker, WebSocket/WHIP/WHEP signaling, and a sans-IO forwarding core
//! in `sfu/`. So far it holds [`join_token`], the verification edges run on
//! every join token (issue 5); the rest lands with issue 6.
//!
//! Architecture invariant (to keep when it lands): forwarding decisions are
//! plain data and functions of `now`, with no sockets or tokio inside.

pub mod join_token;
