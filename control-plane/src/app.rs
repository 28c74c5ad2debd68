//! The control-plane service: what `build` binds and what `run` serves.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use service::{HttpServer, Metrics, Readiness, Service, Shutdown};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::config::ControlPlaneConfig;
use crate::dependencies::{Dependencies, DependencyError};
use crate::error;

/// One control-plane replica, bound and ready to run.
pub struct ControlPlane {
    http: HttpServer,
    router: Router,
    readiness: Readiness,
    dependencies: Dependencies,
    drain_timeout: Duration,
}

/// Where a running control plane can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// REST API, WebSocket gateway and operator endpoints.
    pub http: SocketAddr,
}

/// Why the control plane could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP listener could not be bound (address in use, no permission).
    #[error("cannot listen on {addr}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A configured dependency was rejected at start-up.
    #[error(transparent)]
    Dependency(#[from] DependencyError),
    /// The HTTP server failed while serving.
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
}

impl Service for ControlPlane {
    type Config = ControlPlaneConfig;
    type Addrs = Addrs;
    type Error = StartError;

    async fn build(config: ControlPlaneConfig) -> Result<Self, StartError> {
        let metrics = Metrics::new("control-plane");
        let dependencies = Dependencies::connect(&config)?;
        let readiness = dependencies.readiness();
        let router = router(&config, metrics, readiness.clone());
        let http = HttpServer::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        tracing::info!(
            addr = %http.local_addr(),
            postgres = dependencies.postgres.is_some(),
            redis = dependencies.redis.is_some(),
            "control plane bound"
        );
        Ok(ControlPlane {
            http,
            router,
            readiness,
            dependencies,
            drain_timeout: config.drain_timeout(),
        })
    }

    fn addrs(&self) -> Addrs {
        Addrs {
            http: self.http.local_addr(),
        }
    }

    async fn run(self, shutdown: Shutdown) -> Result<(), StartError> {
        let readiness = self.readiness.clone();
        let served = self
            .http
            .serve(self.router, shutdown, self.drain_timeout, move || {
                readiness.start_draining()
            })
            .await;
        self.dependencies.close().await;
        tracing::info!("control plane stopped");
        served.map_err(StartError::Serve)
    }
}

/// The whole HTTP surface: API routes, operator endpoints, and the layers
/// that bound every request (time, body size) and measure it.
pub fn router(config: &ControlPlaneConfig, metrics: Metrics, readiness: Readiness) -> Router {
    let app = Router::new()
        .merge(service::ops::routes(metrics.clone(), readiness))
        .fallback(error::no_route);
    service::ops::measure(app, metrics)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout(),
        ))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        // A panic is a bug; it must cost one request, not the replica.
        .layer(CatchPanicLayer::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn unknown_paths_get_the_json_error_body() {
        let config = ControlPlaneConfig::for_tests();
        let app = router(&config, Metrics::new("test"), Readiness::default());
        let response = app
            .oneshot(Request::get("/v1/nope").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "not_found");
        assert_eq!(json["error"]["message"], "no route for /v1/nope");
    }
}
