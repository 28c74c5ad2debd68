//! The edge SFU node (`cascade edge`, issue 6): str0m peers, one UDP socket
//! per worker, WebSocket/WHIP/WHEP signaling, and a sans-IO forwarding core
//! in `sfu/`. Empty until that issue lands; the crate exists so the
//! workspace shape (and CI's single build of it) is settled from the start.
//!
//! Architecture invariant (to keep when it lands): forwarding decisions are
//! plain data and functions of `now`, with no sockets or tokio inside.
