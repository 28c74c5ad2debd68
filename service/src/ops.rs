//! Operator endpoints (`/healthz`, `/readyz`, `/metrics`) and the middleware
//! that measures every HTTP request.
//!
//! `/healthz` says the process is alive and serving. `/readyz` says it should
//! receive traffic: every dependency answered within a deadline and the
//! service is not draining. Load balancers and Kubernetes probes use them
//! differently, so they must not be conflated.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::telemetry::Metrics;

/// A boxed future, so readiness checks can be stored as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One dependency the service needs in order to serve (a database, Redis).
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Short name shown in `/readyz` (`postgres`, `redis`).
    fn name(&self) -> &'static str;
    /// Resolves to `Ok` when the dependency answered. The error text is shown
    /// to operators, so it must not contain credentials.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// The dependencies a service checks before it reports ready, and whether it
/// is draining.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Vec<Arc<dyn ReadinessCheck>>>,
    draining: Arc<AtomicBool>,
}

/// How long one readiness check may take before it counts as failed. Probes
/// typically time out after 1–5 s; answering sooner keeps them meaningful.
const CHECK_DEADLINE: Duration = Duration::from_secs(2);

/// Body of `/readyz`.
#[derive(Debug, Serialize)]
struct ReadyReport {
    /// `ready`, `not_ready` or `draining`.
    status: &'static str,
    /// Each dependency: `ok` or what went wrong.
    checks: Vec<CheckReport>,
}

#[derive(Debug, Serialize)]
struct CheckReport {
    name: &'static str,
    ok: bool,
    detail: String,
}

impl Readiness {
    /// Readiness over the given checks (none: always ready unless draining).
    pub fn new(checks: Vec<Arc<dyn ReadinessCheck>>) -> Self {
        Readiness {
            checks: Arc::new(checks),
            draining: Arc::default(),
        }
    }

    /// Marks the service as draining: `/readyz` fails from now on so load
    /// balancers stop sending new work while in-flight work finishes.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`Readiness::start_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    async fn report(&self) -> ReadyReport {
        let results = self.checks.iter().map(|check| async move {
            let outcome = tokio::time::timeout(CHECK_DEADLINE, check.check()).await;
            let (ok, detail) = match outcome {
                Ok(Ok(())) => (true, "ok".to_owned()),
                Ok(Err(error)) => (false, error),
                Err(_) => (false, format!("no answer within {CHECK_DEADLINE:?}")),
            };
            CheckReport {
                name: check.name(),
                ok,
                detail,
            }
        });
        // Concurrently, so one slow dependency does not add to another's time.
        let checks = futures_util::future::join_all(results).await;
        let status = if self.is_draining() {
            "draining"
        } else if checks.iter().all(|c| c.ok) {
            "ready"
        } else {
            "not_ready"
        };
        ReadyReport { status, checks }
    }
}

/// State behind the operator endpoints.
#[derive(Clone)]
struct OpsState {
    metrics: Metrics,
    readiness: Readiness,
    /// `cascade_dependency_up{dependency}`: each readiness check as of the
    /// last scrape (1 answered, 0 not), so alerts see a dependency fail.
    dependency_up: prometheus::IntGaugeVec,
    /// `cascade_ready`: 1 when `/readyz` would say ready.
    ready: prometheus::IntGauge,
}

/// `/healthz`, `/readyz` and `/metrics`, to be merged into a service's router.
pub fn routes<S: Clone + Send + Sync + 'static>(
    metrics: Metrics,
    readiness: Readiness,
) -> Router<S> {
    let dependency_up = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "cascade_dependency_up",
            "Whether each dependency answered its readiness check at the last scrape (1) or not (0).",
        ),
        &["dependency"],
    )
    .expect("metric definition is static and valid");
    metrics.register(Box::new(dependency_up.clone()));
    let ready = metrics.gauge(
        "cascade_ready",
        "1 when the service reports ready (dependencies up, not draining), else 0.",
    );
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState {
            metrics,
            readiness,
            dependency_up,
            ready,
        })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let report = state.readiness.report().await;
    let code = if report.status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

async fn metrics_text(State(state): State<OpsState>) -> Response {
    // The checks run per scrape (concurrently, each bounded), so the
    // readiness a load balancer sees is also what Prometheus records.
    let report = state.readiness.report().await;
    for check in &report.checks {
        state
            .dependency_up
            .with_label_values(&[check.name])
            .set(i64::from(check.ok));
    }
    state.ready.set(i64::from(report.status == "ready"));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Wraps `router` so every request is counted and timed by method, matched
/// route template and status. Unmatched paths share the route label
/// `unmatched`, so scanners cannot inflate label cardinality.
pub fn measure<S: Clone + Send + Sync + 'static>(router: Router<S>, metrics: Metrics) -> Router<S> {
    router.layer(middleware::from_fn_with_state(metrics, track))
}

async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    metrics.observe_http(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// A bounded set of method labels; anything exotic is `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    struct Fixed(&'static str, Result<(), &'static str>);

    impl ReadinessCheck for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn check(&self) -> BoxFuture<'_, Result<(), String>> {
            let result = self.1.map_err(str::to_owned);
            Box::pin(async move { result })
        }
    }

    struct Hangs;

    impl ReadinessCheck for Hangs {
        fn name(&self) -> &'static str {
            "hangs"
        }
        fn check(&self) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(std::future::pending())
        }
    }

    async fn get_status(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn app(checks: Vec<Arc<dyn ReadinessCheck>>) -> (Router, Metrics, Readiness) {
        let metrics = Metrics::new("test");
        let readiness = Readiness::new(checks);
        let router = measure(
            Router::new().merge(routes(metrics.clone(), readiness.clone())),
            metrics.clone(),
        );
        (router, metrics, readiness)
    }

    #[tokio::test]
    async fn ready_when_every_check_passes_and_not_when_one_fails() {
        let (router, _, _) = app(vec![Arc::new(Fixed("db", Ok(())))]);
        let (status, body) = get_status(router, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\"status\":\"ready\""), "{body}");

        let (router, _, _) = app(vec![
            Arc::new(Fixed("db", Ok(()))),
            Arc::new(Fixed("cache", Err("connection refused"))),
        ]);
        let (status, body) = get_status(router, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("connection refused"), "{body}");
    }

    #[tokio::test]
    async fn the_metrics_say_which_dependency_is_down() {
        let (router, _, _) = app(vec![
            Arc::new(Fixed("db", Ok(()))),
            Arc::new(Fixed("cache", Err("connection refused"))),
        ]);
        let (_, text) = get_status(router, "/metrics").await;
        assert!(
            text.contains("cascade_dependency_up{dependency=\"db\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cascade_dependency_up{dependency=\"cache\"} 0"),
            "{text}"
        );
        assert!(text.contains("cascade_ready 0"), "{text}");
        let (router, _, _) = app(vec![Arc::new(Fixed("db", Ok(())))]);
        let (_, text) = get_status(router, "/metrics").await;
        assert!(text.contains("cascade_ready 1"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_dependency_fails_readiness_within_the_deadline() {
        let (router, _, _) = app(vec![Arc::new(Hangs), Arc::new(Fixed("db", Ok(())))]);
        let (status, body) = get_status(router, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no answer within"), "{body}");
    }

    #[tokio::test]
    async fn draining_is_not_ready_but_still_healthy() {
        let (router, _, readiness) = app(vec![]);
        readiness.start_draining();
        let (status, body) = get_status(router.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("draining"), "{body}");
        let (status, _) = get_status(router, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_template_and_unmatched_paths_collapse() {
        let (router, metrics, _) = app(vec![]);
        get_status(router.clone(), "/healthz").await;
        get_status(router.clone(), "/no/such/path/1").await;
        get_status(router, "/no/such/path/2").await;
        let text = metrics.render();
        assert!(
            text.contains(
                "cascade_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "cascade_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 2"
            ),
            "{text}"
        );
        assert!(!text.contains("/no/such/path"), "{text}");
    }
}
