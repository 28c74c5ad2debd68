//! The control plane: the system of record for people, conversations and
//! calls, and the service that places calls on edge nodes.
//!
//! Modules:
//! - [`app`]: [`ControlPlane`], the service (`build` → `addrs` → `run`), and
//!   the router that assembles the API and operator endpoints.
//! - [`config`]: [`ControlPlaneConfig`], typed and validated.
//! - [`api`]: the REST handlers, their wire types and the OpenAPI document.
//! - [`auth`]: Argon2id passwords and their policy; EdDSA access tokens and
//!   rotating refresh tokens.
//! - [`store`]: the [`store::Store`] trait over Postgres or embedded SQLite.
//! - [`ratelimit`]: failed-login counting in Redis or in process.
//! - [`dependencies`]: opening the store and Redis, with readiness checks.
//! - [`gateway`]: the WebSocket gateway (`GET /v1/ws`): the hub that reads
//!   the event log, presence, and the bus between replicas.
//! - [`calls`]: the call rules (pure), node registry, region resolution,
//!   join tokens, ICE servers, and the sweeps for ring timeouts and dead
//!   nodes.
//! - [`placement`]: which edge serves a call in a region (consistent hashing
//!   with bounded load; pure).
//! - [`error`]: [`ApiError`], the JSON error body every handler returns.
//!
//! Architecture invariant: handlers never see a raw database or Redis
//! client, only [`store::Store`] and [`ratelimit::RateLimiter`], each of
//! which has an embedded implementation so one process runs with no servers.

pub mod api;
pub mod app;
pub mod attachments;
pub mod auth;
pub mod calls;
pub mod config;
pub mod dependencies;
pub mod error;
pub mod gateway;
pub mod notifications;
pub mod placement;
pub mod ratelimit;
pub mod store;
pub mod web;

pub use app::{Addrs, ControlPlane, StartError};
pub use config::ControlPlaneConfig;
pub use error::ApiError;
