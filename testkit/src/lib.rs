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
//! - [`cluster`]: development certificates, in-process relays and edges
//!   for multi-region tests; [`udp_proxy`]: a WAN-like UDP proxy (delay,
//!   loss).
//! - [`bench`]: the load generators behind `cascade bench`.
//! - [`promtool`]: finds Prometheus' `promtool` to check `/metrics` output.
//!
//! Architecture invariant: testkit drives services only through their
//! public startup shape and network APIs, never through test-only hooks in
//! production code.

pub mod app;
pub mod bench;
pub mod bot;
pub mod browser;
pub mod client;
pub mod cluster;
pub mod control_plane;
pub mod servers;
pub mod udp_proxy;
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

/// Runs `promtool check metrics` on an exposition; `Some(complaints)` (empty
/// when it is clean, including lint), or `None` when promtool is absent
/// outside CI.
pub fn promtool_check(text: &str) -> Option<(bool, String)> {
    use std::io::Write;
    let promtool = promtool()?;
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool finishes");
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((output.status.success(), complaints.trim().to_owned()))
}
