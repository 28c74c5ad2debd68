//! Integration tests of the `cascade` binary and its services, over real
//! sockets (and real Postgres/Redis where a test says so).
//!
//! - `cli`: the built binary as an operator runs it: configuration errors,
//!   `--print-config`, start-up and SIGTERM.
//! - `control_plane`: a control plane started in-process through the same
//!   `build` → `run` path, checked over HTTP.
//! - `api`: the REST API scenario by scenario, each on SQLite and Postgres.
//! - `deploy`: the Prometheus rules (promtool check and unit tests) and
//!   that they name only metrics the services export.
//! - `dev`: `cascade dev` (one process, two regions) with a cross-region
//!   call, Ctrl-C, and a second run keeping the data.
//! - `durability`: acknowledged writes survive SIGKILL and restart.
//! - `browser`: two headless Chromium pages in one call through the real
//!   API and edge (WebRTC interop).
//! - `chaos`: edge processes killed, restarted and drained under a call
//!   between two Chromium pages while chat messages flow.
//! - `calls`: call lifecycle, busy, missed exactly once across replicas,
//!   group calls, history/stats, the node API, regions, migration, join
//!   tokens checked by the edge's verifier.
//! - `edge`: an edge node with str0m bots over real UDP and WebSocket,
//!   joined through the control plane's API.
//! - `relay`: two regions with an edge and a relay each: media from `eu`
//!   to `us` crossing the relay link once, a killed relay restarted, a
//!   WAN-like link (delay, loss) through a userspace proxy.
//! - `failover`: the control plane's side of edge faults (reconciliation
//!   vs migration, a restart with a new incarnation, a rejoin naming an
//!   unreachable edge) with simulated nodes on the real internal API.
//! - `gateway`: the WebSocket gateway, live and resumed, on one and two
//!   replicas, through a Redis restart.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod api;
mod browser;
mod calls;
mod chaos;
mod cli;
mod control_plane;
mod deploy;
mod dev;
mod durability;
mod edge;
mod failover;
mod gateway;
mod relay;
mod web;
