//! The whole configuration of the `cascade` binary: one section per service
//! plus shared telemetry. One file can configure every process of a
//! deployment; each subcommand reads the sections it needs.

use control_plane::ControlPlaneConfig;
use serde::{Deserialize, Serialize};
use service::{TelemetryConfig, Validate, Validator};

/// Everything `cascade` can be configured with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CascadeConfig {
    /// Logging (`[telemetry]`).
    pub telemetry: TelemetryConfig,
    /// `cascade control-plane` (`[control_plane]`).
    pub control_plane: ControlPlaneConfig,
    /// `cascade edge` (`[edge]`).
    pub edge: edge_node::EdgeConfig,
    /// `cascade relay` (`[relay]`).
    pub relay: relay::RelayConfig,
}

impl Validate for CascadeConfig {
    fn validate(&self, v: &mut Validator) {
        v.section("telemetry", &self.telemetry);
        v.section("control_plane", &self.control_plane);
        v.section("edge", &self.edge);
        v.section("relay", &self.relay);
    }
}
