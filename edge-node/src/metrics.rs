//! Edge metrics (registered in the service's registry). Workers add the
//! difference between consecutive [`SfuStats`] snapshots, so the core
//! keeps plain counters and knows nothing of Prometheus.

use prometheus::{
    CounterVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use sfu::{MediaSummary, SfuStats};

/// Counters and gauges of the media workers (summed over workers).
#[derive(Clone)]
pub struct EdgeMetrics {
    /// Participants now.
    pub participants: IntGauge,
    /// Published tracks now.
    pub tracks: IntGauge,
    /// Subscriptions (track × subscriber) now.
    pub subscriptions: IntGauge,
    datagrams_in: IntCounter,
    bytes_in: IntCounter,
    datagrams_out: IntCounter,
    bytes_out: IntCounter,
    dropped: IntCounter,
    forged_alerts: IntCounter,
    forwarded: IntCounter,
    session_timeouts: IntCounter,
    keyframe_requests: IntCounter,
    keyframe_requests_received: IntCounter,
    nacks_received: IntCounter,
    nacks_sent: IntCounter,
    layer_switches: IntCounter,
    data_in: IntCounter,
    data_out: IntCounter,
    data_refused: IntCounter,
    data_dropped: IntCounter,
    /// Sessions the edge closed itself, by reason (`connect_timeout`,
    /// `replaced`, `revoked`).
    sessions_closed: IntCounterVec,
    /// Video subscriptions by the layer sent now (`q`, `h`, `f`, `none`).
    pub video_subscriptions: IntGaugeVec,
    /// Subscribers' bandwidth estimates, sampled each second per session.
    pub estimates: Histogram,
    /// CPU time of each media worker's thread, seconds.
    pub worker_cpu: CounterVec,
    /// How late a worker's timer fired, seconds.
    pub loop_lag: Histogram,
    /// Send calls the media workers made (each carries one datagram, or
    /// several to one destination with UDP GSO): datagrams sent over this
    /// is the batching factor.
    pub send_calls: IntCounter,
    /// Frames of a spread call's tracks handed to another worker.
    pub mesh_frames: IntCounter,
    /// Steps of subscribers' video shed by overloaded workers.
    pub overload_sheds: IntCounter,
    /// Subscribers whose video is shed now.
    pub shed_subscribers: IntGauge,
    /// Frames of a spread call's track that another worker's full queue
    /// refused (its subscribers then wait for a keyframe).
    pub mesh_frames_dropped: IntCounter,
}

impl EdgeMetrics {
    /// Creates and registers the metrics.
    pub fn new(metrics: &service::Metrics) -> Self {
        let gauge = |name: &str, help: &str| metrics.gauge(name, help);
        let counter = |name: &str, help: &str| metrics.counter(name, help);
        let loop_lag = Histogram::with_opts(
            HistogramOpts::new(
                "cascade_edge_worker_loop_lag_seconds",
                "How late media workers' timers fired.",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
            ]),
        )
        .expect("metric definition is static and valid");
        metrics.register(Box::new(loop_lag.clone()));
        let worker_cpu = CounterVec::new(
            Opts::new(
                "cascade_edge_worker_cpu_seconds_total",
                "CPU time used by each media worker's thread.",
            ),
            &["worker"],
        )
        .expect("metric definition is static and valid");
        metrics.register(Box::new(worker_cpu.clone()));
        let video_subscriptions = IntGaugeVec::new(
            Opts::new(
                "cascade_edge_video_subscriptions",
                "Video subscriptions by the simulcast layer sent now (f also for single-layer tracks; none: paused, muted or waiting for a keyframe).",
            ),
            &["layer"],
        )
        .expect("metric definition is static and valid");
        metrics.register(Box::new(video_subscriptions.clone()));
        let estimates = Histogram::with_opts(
            HistogramOpts::new(
                "cascade_edge_subscriber_estimate_bytes_per_second",
                "Bandwidth estimates towards subscribers (TWCC), sampled once a second per connected session.",
            )
            .buckets(vec![
                12_500.0, 25_000.0, 62_500.0, 125_000.0, 250_000.0, 500_000.0, 1_250_000.0,
                2_500_000.0,
            ]),
        )
        .expect("metric definition is static and valid");
        metrics.register(Box::new(estimates.clone()));
        let sessions_closed = IntCounterVec::new(
            Opts::new(
                "cascade_edge_sessions_closed_total",
                "Sessions the edge closed itself: not connected in time (connect_timeout), the same join token used again (replaced), no longer a participant here (revoked).",
            ),
            &["reason"],
        )
        .expect("metric definition is static and valid");
        metrics.register(Box::new(sessions_closed.clone()));
        for reason in ["connect_timeout", "replaced", "revoked"] {
            sessions_closed.with_label_values(&[reason]);
        }
        EdgeMetrics {
            sessions_closed,
            participants: gauge(
                "cascade_edge_participants",
                "Participants connected to this edge.",
            ),
            tracks: gauge(
                "cascade_edge_published_tracks",
                "Tracks published on this edge.",
            ),
            subscriptions: gauge(
                "cascade_edge_subscribed_tracks",
                "Track subscriptions (track × subscriber) on this edge.",
            ),
            datagrams_in: counter(
                "cascade_edge_datagrams_received_total",
                "UDP datagrams a participant's session accepted.",
            ),
            bytes_in: counter(
                "cascade_edge_received_bytes_total",
                "Bytes of those datagrams.",
            ),
            datagrams_out: counter("cascade_edge_datagrams_sent_total", "UDP datagrams sent."),
            bytes_out: counter("cascade_edge_sent_bytes_total", "Bytes of those datagrams."),
            dropped: counter(
                "cascade_edge_dropped_datagrams_total",
                "UDP datagrams no session took (garbage, unknown sources).",
            ),
            forged_alerts: counter(
                "cascade_edge_dtls_plaintext_alerts_dropped_total",
                "Of the dropped datagrams, DTLS ones carrying an unauthenticated (epoch 0) alert: \
                 someone forging clients' addresses to end their sessions.",
            ),
            forwarded: counter(
                "cascade_edge_forwarded_media_total",
                "RTP packets written to subscribers.",
            ),
            session_timeouts: counter(
                "cascade_edge_session_timeouts_total",
                "Timeouts handed to participant sessions; str0m's pacer releases at most one packet per timeout.",
            ),
            keyframe_requests: counter(
                "cascade_edge_keyframe_requests_total",
                "Keyframe requests (PLI) sent to publishers.",
            ),
            keyframe_requests_received: counter(
                "cascade_edge_keyframe_requests_received_total",
                "Keyframe requests (PLI/FIR) subscribers sent.",
            ),
            nacks_received: counter(
                "cascade_edge_nacks_received_total",
                "NACKs subscribers sent (answered with retransmissions).",
            ),
            nacks_sent: counter(
                "cascade_edge_nacks_sent_total",
                "NACKs sent to publishers for lost packets.",
            ),
            layer_switches: counter(
                "cascade_edge_layer_switches_total",
                "Video subscriptions switched from one simulcast layer to another.",
            ),
            data_in: counter(
                "cascade_edge_data_messages_received_total",
                "Data channel messages participants sent, accepted.",
            ),
            data_out: counter(
                "cascade_edge_data_messages_delivered_total",
                "Data channel messages written to receivers (one per receiver).",
            ),
            data_refused: counter(
                "cascade_edge_data_messages_refused_total",
                "Data channel messages refused (too large, over the rate limit).",
            ),
            data_dropped: counter(
                "cascade_edge_data_messages_dropped_total",
                "Data channel messages a receiver missed (its channel's buffer was full).",
            ),
            video_subscriptions,
            estimates,
            worker_cpu,
            loop_lag,
            send_calls: counter(
                "cascade_edge_send_calls_total",
                "UDP send calls made by the media workers (one datagram each, or a GSO run of several to one destination).",
            ),
            overload_sheds: counter(
                "cascade_edge_overload_sheds_total",
                "Steps a subscriber's video was lowered (or paused) because its media worker was busy over 90 % of a second.",
            ),
            shed_subscribers: gauge(
                "cascade_edge_shed_subscribers",
                "Subscribers whose video is lowered or paused now because their media worker is overloaded.",
            ),
            mesh_frames: counter(
                "cascade_edge_mesh_frames_total",
                "Frames of a call spread over workers handed from one worker to another (once per frame and worker, not per subscriber).",
            ),
            mesh_frames_dropped: counter(
                "cascade_edge_mesh_frames_dropped_total",
                "Frames of a call spread over workers that a worker's full queue refused (video resumes on a keyframe).",
            ),
        }
    }

    /// Adds what happened between two snapshots of one worker's counters.
    pub fn add(&self, before: &SfuStats, after: &SfuStats) {
        self.datagrams_in
            .inc_by(after.datagrams_in.saturating_sub(before.datagrams_in));
        self.bytes_in
            .inc_by(after.bytes_in.saturating_sub(before.bytes_in));
        self.datagrams_out
            .inc_by(after.datagrams_out.saturating_sub(before.datagrams_out));
        self.bytes_out
            .inc_by(after.bytes_out.saturating_sub(before.bytes_out));
        self.dropped
            .inc_by(after.dropped.saturating_sub(before.dropped));
        self.forged_alerts
            .inc_by(after.forged_alerts.saturating_sub(before.forged_alerts));
        self.forwarded
            .inc_by(after.forwarded.saturating_sub(before.forwarded));
        self.session_timeouts.inc_by(
            after
                .session_timeouts
                .saturating_sub(before.session_timeouts),
        );
        self.keyframe_requests.inc_by(
            after
                .keyframe_requests
                .saturating_sub(before.keyframe_requests),
        );
        self.keyframe_requests_received.inc_by(
            after
                .keyframe_requests_received
                .saturating_sub(before.keyframe_requests_received),
        );
        self.nacks_received
            .inc_by(after.nacks_received.saturating_sub(before.nacks_received));
        self.nacks_sent
            .inc_by(after.nacks_sent.saturating_sub(before.nacks_sent));
        self.layer_switches
            .inc_by(after.layer_switches.saturating_sub(before.layer_switches));
        self.data_in
            .inc_by(after.data_in.saturating_sub(before.data_in));
        self.data_out
            .inc_by(after.data_out.saturating_sub(before.data_out));
        self.data_refused
            .inc_by(after.data_refused.saturating_sub(before.data_refused));
        self.data_dropped
            .inc_by(after.data_dropped.saturating_sub(before.data_dropped));
        self.overload_sheds
            .inc_by(after.overload_sheds.saturating_sub(before.overload_sheds));
        for (reason, before, after) in [
            (
                "connect_timeout",
                before.connect_timeouts,
                after.connect_timeouts,
            ),
            ("replaced", before.replaced, after.replaced),
            ("revoked", before.revoked, after.revoked),
        ] {
            self.sessions_closed
                .with_label_values(&[reason])
                .inc_by(after.saturating_sub(before));
        }
    }

    /// Moves this worker's share of the layer gauges from `mine` to
    /// `summary` and samples its sessions' estimates.
    pub fn media(&self, summary: &MediaSummary, mine: &mut [i64; 4]) {
        let now = [
            summary.video_by_layer[0] as i64,
            summary.video_by_layer[1] as i64,
            summary.video_by_layer[2] as i64,
            summary.video_idle as i64,
        ];
        for (i, layer) in ["q", "h", "f", "none"].into_iter().enumerate() {
            self.video_subscriptions
                .with_label_values(&[layer])
                .add(now[i] - mine[i]);
        }
        *mine = now;
        for estimate in &summary.estimates {
            self.estimates.observe(*estimate as f64 / 8.0);
        }
    }
}
