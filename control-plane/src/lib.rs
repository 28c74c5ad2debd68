//! The control plane: the system of record for people, conversations and
//! calls, and the service that places calls on edge nodes.
//!
//! Modules:
//! - [`app`]: [`ControlPlane`], the service (`build` → `addrs` → `run`), and
//!   the router that assembles the API and operator endpoints.
//! - [`config`]: [`ControlPlaneConfig`], typed and validated.
//! - [`dependencies`]: Postgres and Redis connections when configured, with
//!   their readiness checks.
//! - [`error`]: [`ApiError`], the JSON error body every handler returns.
//!
//! Architecture invariant: handlers never see a raw database or Redis
//! client; storage and presence arrive behind traits (with embedded
//! implementations) as their issues land.

pub mod app;
pub mod config;
pub mod dependencies;
pub mod error;

pub use app::{Addrs, ControlPlane, StartError};
pub use config::ControlPlaneConfig;
pub use error::ApiError;
