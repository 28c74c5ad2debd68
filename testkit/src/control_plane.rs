//! A control plane running inside the test process.

use std::net::SocketAddr;
use std::time::Duration;

use control_plane::{Addrs, ControlPlane, ControlPlaneConfig, StartError};
use service::Service;
use service::lifecycle::{ShutdownTrigger, shutdown_channel};
use tokio::task::JoinHandle;

/// A running control plane; stop it with [`TestControlPlane::stop`].
pub struct TestControlPlane {
    /// What it bound.
    pub addrs: Addrs,
    trigger: ShutdownTrigger,
    task: JoinHandle<Result<(), StartError>>,
}

impl TestControlPlane {
    /// Builds and runs a control plane with `config` (use
    /// [`ControlPlaneConfig::for_tests`] for port 0 and embedded state).
    pub async fn start(config: ControlPlaneConfig) -> Result<Self, StartError> {
        let app = ControlPlane::build(config).await?;
        let addrs = app.addrs();
        let (trigger, shutdown) = shutdown_channel();
        let task = tokio::spawn(app.run(shutdown));
        Ok(TestControlPlane {
            addrs,
            trigger,
            task,
        })
    }

    /// The HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.addrs.http
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addrs.http, path)
    }

    /// Requests shutdown and waits (at most `within`) for `run` to return.
    /// Panics if it does not stop in time, since a hang is the bug to report.
    pub async fn stop(self, within: Duration) -> Result<(), StartError> {
        self.trigger.trigger();
        match tokio::time::timeout(within, self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join_error)) => panic!("control plane task failed: {join_error}"),
            Err(_) => panic!("control plane did not stop within {within:?}"),
        }
    }
}
