//! Test harness shared by the integration tests and (later) `cascade bench`.
//!
//! - [`servers`]: where the real Postgres and Redis for tests are. Under
//!   `CI=true` a missing server is a failure, never a skip.
//! - [`control_plane`]: starts a control plane in-process on a loopback port
//!   through the same `build` → `run` path the binary uses.
//! - [`app`]: `TestApp`, a control plane on a fresh database (in-memory
//!   SQLite, or a Postgres database made for the test) with typed API
//!   helpers, and `both_backends!` to run one scenario on both.
//! - [`client`]: `ApiClient`, typed API calls against any address.
//! - [`ws`]: `WsClient`, a gateway WebSocket client with timeouts.
//! - [`bench`]: the load generators behind `cascade bench`.
//! - [`promtool`]: finds Prometheus' `promtool` to check `/metrics` output.
//!
//! Architecture invariant: testkit drives services only through their
//! public startup shape and network APIs, never through test-only hooks in
//! production code.

pub mod app;
pub mod bench;
pub mod client;
pub mod control_plane;
pub mod servers;
pub mod ws;

use std::path::PathBuf;

/// Whether this run is CI, where every test must run and none may skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Path to `promtool`: `$PROMTOOL`, else `promtool` on `PATH`. Under CI a
/// missing promtool panics; elsewhere it returns `None` and says so.
pub fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PROMTOOL")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("promtool"))
                    .find(|p| p.is_file())
            })
        });
    servers::required_or_skip(found, "promtool (set PROMTOOL, or run scripts/test)")
}
