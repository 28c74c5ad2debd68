//! Logs and metrics.
//!
//! Logs go to stderr through `tracing` (stdout stays free for output a
//! command is asked for, such as `--print-config`). Metrics live in a
//! [`Metrics`] registry owned by each service instance rather than a global
//! one, so several services in one process (`cascade dev`, tests) keep their
//! numbers apart.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

use crate::config::{Validate, Validator};

/// Logging settings shared by every service (`[telemetry]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// A `tracing` filter (`info`, `control_plane=debug,info`). `RUST_LOG`,
    /// when set, wins, as developers expect.
    pub log_filter: String,
    /// `human` for terminals, `json` for log collectors.
    pub log_format: LogFormat,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_filter: "info".into(),
            log_format: LogFormat::Human,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Coloured, one event per line, for people.
    Human,
    /// One JSON object per line, for machines.
    Json,
}

impl Validate for TelemetryConfig {
    fn validate(&self, v: &mut Validator) {
        v.check(
            "log_filter",
            EnvFilter::try_new(&self.log_filter)
                .map(drop)
                .map_err(|e| format!("not a valid tracing filter: {e}")),
        );
    }
}

/// Installs the global tracing subscriber. Only the first call in a process
/// takes effect, so tests and `cascade dev` may call it freely.
pub fn init_tracing(config: &TelemetryConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.log_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal; in files they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // An error here means a subscriber is already installed: keep it.
    let _ = match config.log_format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Where this process's heap allocation count comes from, when its binary
/// counts them (bench builds install a counting allocator; see
/// [`count_heap_allocations_with`]).
static HEAP_ALLOCATIONS: std::sync::OnceLock<fn() -> u64> = std::sync::OnceLock::new();

/// Makes every registry created after this export
/// `cascade_heap_allocations_total`, read from `count`. For binaries that
/// install a counting global allocator; the first call wins.
pub fn count_heap_allocations_with(count: fn() -> u64) {
    let _ = HEAP_ALLOCATIONS.set(count);
}

/// `cascade_heap_allocations_total`, read when scraped.
struct HeapAllocations {
    counter: prometheus::IntCounter,
    count: fn() -> u64,
}

impl prometheus::core::Collector for HeapAllocations {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        prometheus::core::Collector::desc(&self.counter)
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        // Monotonic: the counter only ever moves up to the allocator's count.
        let now = (self.count)();
        let shown = self.counter.get();
        if now > shown {
            self.counter.inc_by(now - shown);
        }
        prometheus::core::Collector::collect(&self.counter)
    }
}

/// A service's Prometheus registry with the metrics every service has.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
}

/// Buckets for request latency, in seconds: 1 ms to 10 s.
const HTTP_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// A registry for the service called `service` (`control-plane`, ...),
    /// with process metrics, HTTP metrics and `cascade_build_info`.
    pub fn new(service: &str) -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "cascade_http_requests_total",
                "HTTP requests served, by method, matched route and status code.",
            ),
            &["method", "route", "status"],
        )
        .expect("metric definition is static and valid");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "cascade_http_request_duration_seconds",
                "Time from request received to response headers produced.",
            )
            .buckets(HTTP_LATENCY_BUCKETS.to_vec()),
            &["method", "route", "status"],
        )
        .expect("metric definition is static and valid");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "cascade_build_info",
                "Always 1; labels name the service and its version.",
            ),
            &["service", "version"],
        )
        .expect("metric definition is static and valid");
        build_info
            .with_label_values(&[service, env!("CARGO_PKG_VERSION")])
            .set(1);

        let metrics = Metrics {
            registry,
            http_requests,
            http_duration,
        };
        metrics.register(Box::new(metrics.http_requests.clone()));
        metrics.register(Box::new(metrics.http_duration.clone()));
        metrics.register(Box::new(build_info));
        metrics.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        if let Some(&count) = HEAP_ALLOCATIONS.get() {
            metrics.register(Box::new(HeapAllocations {
                counter: prometheus::IntCounter::new(
                    "cascade_heap_allocations_total",
                    "Heap allocations (alloc and realloc calls) since the process started; bench builds only.",
                )
                .expect("metric definition is static and valid"),
                count,
            }));
        }
        metrics
    }

    /// Registers a collector. Names are chosen in code, so a clash is a
    /// programming error caught by the first test that builds the service.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry
            .register(collector)
            .expect("metric names are unique within a service");
    }

    /// A new counter, registered. Names and help are static in code, so an
    /// invalid one is a programming error.
    pub fn counter(&self, name: &str, help: &str) -> prometheus::IntCounter {
        let counter =
            prometheus::IntCounter::new(name, help).expect("metric definition is static and valid");
        self.register(Box::new(counter.clone()));
        counter
    }

    /// A new gauge, registered.
    pub fn gauge(&self, name: &str, help: &str) -> prometheus::IntGauge {
        let gauge =
            prometheus::IntGauge::new(name, help).expect("metric definition is static and valid");
        self.register(Box::new(gauge.clone()));
        gauge
    }

    /// The registry, for services that define their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one HTTP request. `route` must be a route template (or a fixed
    /// word), never a raw path, to keep label cardinality bounded.
    pub fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [method, route, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// All metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let families = self.registry.gather();
        if let Err(error) = TextEncoder::new().encode(&families, &mut buffer) {
            tracing::error!(%error, "encoding metrics failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_allocator_is_exported_as_a_monotonic_counter() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNT: AtomicU64 = AtomicU64::new(0);
        fn read() -> u64 {
            COUNT.load(Ordering::Relaxed)
        }
        COUNT.store(41, Ordering::Relaxed);
        count_heap_allocations_with(read);
        let metrics = Metrics::new("counted");
        assert!(
            metrics
                .render()
                .contains("\ncascade_heap_allocations_total 41\n")
        );
        COUNT.store(1000, Ordering::Relaxed);
        assert!(
            metrics
                .render()
                .contains("\ncascade_heap_allocations_total 1000\n")
        );
        assert!(
            metrics
                .render()
                .contains("# TYPE cascade_heap_allocations_total counter")
        );
    }

    #[test]
    fn registries_are_independent_and_render_text_format() {
        let a = Metrics::new("a");
        let b = Metrics::new("b");
        a.observe_http("GET", "/healthz", 200, Duration::from_millis(3));
        let text_a = a.render();
        let text_b = b.render();
        assert!(
            text_a.contains(
                "cascade_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
            ),
            "{text_a}"
        );
        assert!(!text_b.contains("route=\"/healthz\""), "{text_b}");
        assert!(text_a.contains("# TYPE cascade_http_request_duration_seconds histogram"));
        assert!(text_a.contains("cascade_build_info{service=\"a\""));
        assert!(text_a.contains("process_cpu_seconds_total"), "{text_a}");
    }

    #[test]
    fn invalid_log_filter_is_a_config_problem() {
        let mut v = Validator::default();
        let config = TelemetryConfig {
            log_filter: "=[".into(),
            log_format: LogFormat::Json,
        };
        v.section("telemetry", &config);
        assert_eq!(v.problem_keys(), vec!["telemetry.log_filter".to_owned()]);
        let mut defaults = Validator::default();
        TelemetryConfig::default().validate(&mut defaults);
        assert!(defaults.problem_keys().is_empty());
    }
}

/// Lets a log line through at most once a second and counts what it held
/// back, for events anyone on the network can cause (refused tokens,
/// refused links): one line per attempt would let them flood the logs.
#[derive(Debug, Default)]
pub struct LogThrottle {
    last_second: std::sync::atomic::AtomicU64,
    unlogged: std::sync::atomic::AtomicU64,
}

impl LogThrottle {
    /// A throttle that lets the first event through.
    pub const fn new() -> Self {
        LogThrottle {
            last_second: std::sync::atomic::AtomicU64::new(0),
            unlogged: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether to log an event now: `Some(n)` with the `n` events held back
    /// since the last line, or `None` to stay quiet (counted).
    pub fn admit(&self) -> Option<u64> {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.admit_at(second)
    }

    /// [`Self::admit`] at a given Unix second.
    pub fn admit_at(&self, second: u64) -> Option<u64> {
        use std::sync::atomic::Ordering;
        if self.last_second.swap(second, Ordering::Relaxed) == second {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.unlogged.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod log_throttle_tests {
    use super::LogThrottle;

    #[test]
    fn a_burst_logs_one_line_a_second_and_counts_the_rest() {
        let throttle = LogThrottle::new();
        let first: Vec<_> = (0..1000).map(|_| throttle.admit_at(100)).collect();
        assert_eq!(first[0], Some(0));
        assert!(first[1..].iter().all(Option::is_none));
        // The next second's first event logs, saying 999 were held back.
        assert_eq!(throttle.admit_at(101), Some(999));
        assert_eq!(throttle.admit_at(101), None);
        assert_eq!(throttle.admit_at(105), Some(1));
    }
}
