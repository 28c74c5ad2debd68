//! Relay metrics, and the per-link counters both relays and edges keep.

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::router::DropReason;

fn counter_vec(
    metrics: &service::Metrics,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric definition is static and valid");
    metrics.register(Box::new(vec.clone()));
    vec
}

/// Datagram counters of one link direction pair, by peer.
#[derive(Clone)]
pub struct LinkCounters {
    datagrams_in: IntCounter,
    bytes_in: IntCounter,
    datagrams_out: IntCounter,
    bytes_out: IntCounter,
}

impl LinkCounters {
    /// A datagram arrived.
    pub fn received(&self, bytes: usize) {
        self.datagrams_in.inc();
        self.bytes_in.inc_by(bytes as u64);
    }

    /// A datagram was queued to send.
    pub fn sent(&self, bytes: usize) {
        self.datagrams_out.inc();
        self.bytes_out.inc_by(bytes as u64);
    }
}

/// Link metrics of a node (`prefix`: `cascade_relay` or `cascade_edge_relay`).
#[derive(Clone)]
pub struct LinkMetrics {
    /// Links up now, by the peer's role.
    pub links: IntGaugeVec,
    /// Links established since start, by the peer's role.
    pub links_established: IntCounterVec,
    /// Smoothed RTT of each link, by peer.
    pub rtt: GaugeVec,
    datagrams_in: IntCounterVec,
    bytes_in: IntCounterVec,
    datagrams_out: IntCounterVec,
    bytes_out: IntCounterVec,
    dropped: IntCounterVec,
}

impl LinkMetrics {
    /// Creates and registers the metrics.
    pub fn new(metrics: &service::Metrics, prefix: &str) -> Self {
        let rtt = GaugeVec::new(
            Opts::new(
                format!("{prefix}_link_rtt_seconds"),
                "Smoothed round-trip time of each relay link.",
            ),
            &["peer"],
        )
        .expect("metric definition is static and valid");
        metrics.register(Box::new(rtt.clone()));
        let links = IntGaugeVec::new(
            Opts::new(
                format!("{prefix}_links"),
                "Relay links up now, by the peer's role.",
            ),
            &["role"],
        )
        .expect("metric definition is static and valid");
        metrics.register(Box::new(links.clone()));
        LinkMetrics {
            links,
            links_established: counter_vec(
                metrics,
                &format!("{prefix}_links_established_total"),
                "Relay links established, by the peer's role.",
                &["role"],
            ),
            rtt,
            datagrams_in: counter_vec(
                metrics,
                &format!("{prefix}_datagrams_received_total"),
                "Media datagrams received on relay links, by peer.",
                &["peer"],
            ),
            bytes_in: counter_vec(
                metrics,
                &format!("{prefix}_received_bytes_total"),
                "Bytes of media datagrams received on relay links, by peer.",
                &["peer"],
            ),
            datagrams_out: counter_vec(
                metrics,
                &format!("{prefix}_datagrams_sent_total"),
                "Media datagrams sent on relay links, by peer.",
                &["peer"],
            ),
            bytes_out: counter_vec(
                metrics,
                &format!("{prefix}_sent_bytes_total"),
                "Bytes of media datagrams sent on relay links, by peer.",
                &["peer"],
            ),
            dropped: counter_vec(
                metrics,
                &format!("{prefix}_dropped_datagrams_total"),
                "Media datagrams not forwarded, by reason.",
                &["reason"],
            ),
        }
    }

    /// The counters of the link to `peer`.
    pub fn link(&self, peer: &str) -> LinkCounters {
        LinkCounters {
            datagrams_in: self.datagrams_in.with_label_values(&[peer]),
            bytes_in: self.bytes_in.with_label_values(&[peer]),
            datagrams_out: self.datagrams_out.with_label_values(&[peer]),
            bytes_out: self.bytes_out.with_label_values(&[peer]),
        }
    }

    /// A datagram was dropped.
    pub fn dropped(&self, reason: DropReason) {
        self.dropped.with_label_values(&[reason.label()]).inc();
    }
}

/// Everything `cascade relay` exports.
#[derive(Clone)]
pub struct RelayMetrics {
    /// Per-link counters and gauges.
    pub link: LinkMetrics,
    /// Tracks announced to this relay now.
    pub tracks: IntGauge,
    /// Tracks flowing through it now (subscribed upstream).
    pub tracks_relayed: IntGauge,
    /// Downstream subscriptions (track × link) now.
    pub subscriptions: IntGauge,
    /// Keyframe requests sent upstream.
    pub keyframe_requests_forwarded: IntCounter,
    /// Keyframe requests absorbed by the throttle.
    pub keyframe_requests_throttled: IntCounter,
    /// Control messages refused (unknown track, rules broken).
    pub control_refused: IntCounter,
    /// Datagrams resent from the history (NACKs answered).
    pub retransmissions: IntCounter,
    /// Sequence numbers NACKed upstream.
    pub nacks_forwarded: IntCounter,
    /// Call data messages sent on.
    pub data_messages_forwarded: IntCounter,
    /// Incoming links refused before they came up, by reason (`identity`:
    /// the hello claimed a node or role its certificate does not name;
    /// `handshake`: TLS, a missing or malformed hello, a timeout).
    pub links_refused: IntCounterVec,
}

impl RelayMetrics {
    /// Creates and registers the metrics.
    pub fn new(metrics: &service::Metrics) -> Self {
        RelayMetrics {
            link: LinkMetrics::new(metrics, "cascade_relay"),
            tracks: metrics.gauge("cascade_relay_tracks", "Tracks announced to this relay."),
            tracks_relayed: metrics.gauge(
                "cascade_relay_tracks_relayed",
                "Tracks flowing through this relay (subscribed upstream once each).",
            ),
            subscriptions: metrics.gauge(
                "cascade_relay_subscriptions",
                "Downstream subscriptions (track x link).",
            ),
            keyframe_requests_forwarded: metrics.counter(
                "cascade_relay_keyframe_requests_forwarded_total",
                "Keyframe requests sent upstream.",
            ),
            keyframe_requests_throttled: metrics.counter(
                "cascade_relay_keyframe_requests_throttled_total",
                "Keyframe requests absorbed by the per-track throttle.",
            ),
            control_refused: metrics.counter(
                "cascade_relay_control_refused_total",
                "Control messages refused (unknown track, a second hello, ...).",
            ),
            retransmissions: metrics.counter(
                "cascade_relay_retransmitted_datagrams_total",
                "Datagrams resent from the relay's history to answer NACKs.",
            ),
            nacks_forwarded: metrics.counter(
                "cascade_relay_nacks_forwarded_total",
                "Lost sequence numbers the relay could not resend and asked upstream for.",
            ),
            data_messages_forwarded: metrics.counter(
                "cascade_relay_data_messages_forwarded_total",
                "Participants' data channel messages sent on to links (one per link).",
            ),
            links_refused: {
                let vec = counter_vec(
                    metrics,
                    "cascade_relay_links_refused_total",
                    "Incoming links refused before they came up, by reason (identity: the hello does not match the certificate; handshake: TLS, hello or timeout).",
                    &["reason"],
                );
                for reason in ["identity", "handshake"] {
                    vec.with_label_values(&[reason]);
                }
                vec
            },
        }
    }
}

/// Exports when this node's relay-link certificates lapse
/// (`cascade_tls_certificate_expiry_timestamp_seconds{certificate="node"|"ca"}`),
/// so an alert fires weeks before links start failing their handshakes.
pub fn record_certificate_expiry(
    metrics: &service::Metrics,
    expiry: crate::tls::CertificateExpiry,
) {
    let gauge = IntGaugeVec::new(
        Opts::new(
            "cascade_tls_certificate_expiry_timestamp_seconds",
            "When the relay-link TLS certificate stops being valid (Unix time), by certificate (node, ca)",
        ),
        &["certificate"],
    )
    .expect("metric definition is static and valid");
    metrics.register(Box::new(gauge.clone()));
    gauge.with_label_values(&["node"]).set(expiry.node);
    gauge.with_label_values(&["ca"]).set(expiry.ca);
}
