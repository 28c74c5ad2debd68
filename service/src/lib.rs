//! The shell every Cascade service shares, so that each process starts,
//! reports and stops the same way.
//!
//! - [`config`]: defaults → optional TOML file → `CASCADE_` environment
//!   variables (figment), validated into typed values, with errors that name
//!   the exact key (`CASCADE_CONTROL_PLANE__LISTEN: ...`) and a redacted
//!   printout of the effective configuration.
//! - [`telemetry`]: tracing subscriber (human or JSON), and a Prometheus
//!   registry per service with process and HTTP metrics.
//! - [`ops`]: the operator endpoints `/healthz`, `/readyz` and `/metrics`,
//!   readiness checks, and the middleware that measures every request.
//! - [`lifecycle`]: the one startup shape (`Service::build` binds, `addrs()`,
//!   `run(shutdown)`), shutdown signals and an HTTP server with bounded drain.
//!
//! Architecture invariant: nothing here knows about users, calls or media.
//! A service crate depends on this one, never the other way round.

pub mod config;
pub mod lifecycle;
pub mod ops;
pub mod telemetry;

pub use config::{ConfigError, Validate, Validator};
pub use lifecycle::{HttpServer, Service, Shutdown, ShutdownTrigger};
pub use ops::{Readiness, ReadinessCheck};
pub use telemetry::{Metrics, TelemetryConfig};
