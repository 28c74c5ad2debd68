//! Gateway metrics (registered in the service's registry).

use prometheus::{IntCounter, IntGauge};

/// Counters and gauges of the WebSocket gateway.
#[derive(Clone)]
pub struct GatewayMetrics {
    /// Open WebSocket connections on this replica.
    pub connections: IntGauge,
    /// Frames queued to clients (events, replays, ephemeral).
    pub delivered: IntCounter,
    /// Events sent by resumes.
    pub replayed: IntCounter,
    /// Connections cut off because their outbound queue was full.
    pub slow_consumers: IntCounter,
    /// Client frames refused (malformed, unknown, rate-limited).
    pub rejected_frames: IntCounter,
}

impl GatewayMetrics {
    /// Creates and registers the metrics.
    pub fn new(metrics: &service::Metrics) -> Self {
        let gauge = |name: &str, help: &str| metrics.gauge(name, help);
        let counter = |name: &str, help: &str| metrics.counter(name, help);
        GatewayMetrics {
            connections: gauge("cascade_ws_connections", "Open WebSocket connections."),
            delivered: counter(
                "cascade_ws_frames_sent_total",
                "Frames queued to WebSocket clients.",
            ),
            replayed: counter(
                "cascade_ws_replayed_events_total",
                "Events sent to resuming clients.",
            ),
            slow_consumers: counter(
                "cascade_ws_slow_consumer_disconnects_total",
                "Connections closed because the client did not read fast enough.",
            ),
            rejected_frames: counter(
                "cascade_ws_rejected_frames_total",
                "Client frames refused: malformed, unknown or over the rate limit.",
            ),
        }
    }
}
