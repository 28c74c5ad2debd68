//! Call metrics (registered in the service's registry).

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};

use crate::store::{CallChange, CallState};

/// Counters and gauges of calls and placement.
#[derive(Clone)]
pub struct CallMetrics {
    /// Calls started, by kind.
    pub started: IntCounterVec,
    /// Calls ended, by outcome.
    pub ended: IntCounterVec,
    /// Device sessions placed on an edge.
    pub joins: IntCounter,
    /// Joins refused because no edge had room.
    pub placement_failures: IntCounter,
    /// Sessions moved off dead or draining edges.
    pub migrated: IntCounter,
    /// Nodes that came back with a new incarnation (restarted).
    pub node_restarts: IntCounter,
    /// Edges a client reported unreachable, by what the control plane's
    /// own probe found (`down`: deregistered and its sessions moved;
    /// `up`: only that client's path was broken).
    pub unreachable_reports: IntCounterVec,
    /// Live registered nodes, by kind (as this replica last saw them).
    pub nodes: IntGaugeVec,
}

impl CallMetrics {
    /// Creates and registers the metrics.
    pub fn new(metrics: &service::Metrics) -> Self {
        let counter = |name: &str, help: &str| metrics.counter(name, help);
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .expect("metric definition is static and valid");
            metrics.register(Box::new(c.clone()));
            c
        };
        let nodes = IntGaugeVec::new(
            Opts::new(
                "cascade_registered_nodes",
                "Live registered nodes, by kind.",
            ),
            &["kind"],
        )
        .expect("metric definition is static and valid");
        metrics.register(Box::new(nodes.clone()));
        CallMetrics {
            started: counter_vec(
                "cascade_calls_started_total",
                "Calls started, by kind.",
                "kind",
            ),
            ended: counter_vec(
                "cascade_calls_ended_total",
                "Calls ended, by outcome (completed, missed, declined, cancelled, busy).",
                "outcome",
            ),
            joins: counter(
                "cascade_call_joins_total",
                "Device sessions placed on an edge node.",
            ),
            placement_failures: counter(
                "cascade_call_placement_failures_total",
                "Joins refused because no healthy edge had room.",
            ),
            migrated: counter(
                "cascade_call_migrations_total",
                "Device sessions moved off an edge that died or drains.",
            ),
            node_restarts: counter(
                "cascade_node_restarts_total",
                "Nodes whose heartbeat carried a new incarnation (they restarted).",
            ),
            unreachable_reports: counter_vec(
                "cascade_edge_unreachable_reports_total",
                "Rejoins naming an unreachable edge, by the control plane's probe of it (down, up).",
                "probe",
            ),
            nodes,
        }
    }

    /// Counts what an applied change did.
    pub fn record(&self, change: &CallChange) {
        if let Some(call) = &change.call
            && call.state == CallState::Ended
            && let Some(outcome) = call.outcome.0
        {
            self.ended.with_label_values(&[outcome.as_str()]).inc();
        }
    }
}
