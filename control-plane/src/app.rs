//! The control-plane service: what `build` binds and what `run` serves.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use service::{HttpServer, Metrics, Readiness, Service, Shutdown};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa_swagger_ui::SwaggerUi;

use crate::api::{self, AppState, Shared};
use crate::auth::passwords::PasswordError;
use crate::auth::tokens::KeyError;
use crate::auth::{KeyRing, Passwords, RingKey, RotationPolicy, SigningKey, Tokens};
use crate::config::ControlPlaneConfig;
use crate::dependencies::{Dependencies, DependencyError};
use crate::error;
use crate::gateway::Gateway;
use crate::gateway::bus::{Bus, BusCheck, LocalBus, RedisBus};
use crate::gateway::hub::HubSettings;
use crate::gateway::metrics::GatewayMetrics;
use crate::gateway::presence::Presence;
use crate::ratelimit::{MemoryLimiter, RateLimiter, RedisLimiter};
use crate::store::StoreError;

/// One control-plane replica, bound and ready to run.
pub struct ControlPlane {
    calls: Arc<crate::calls::Calls>,
    tokens: Tokens,
    key_gauges: Option<SigningKeyGauges>,
    store: Arc<dyn crate::store::Store>,
    http: HttpServer,
    hub: crate::gateway::hub::HubTask,
    gateway: Gateway,
    router: Router,
    readiness: Readiness,
    dependencies: Dependencies,
    drain_timeout: Duration,
    blobs: crate::attachments::Blobs,
    attachments: crate::attachments::AttachmentsConfig,
    push: Option<crate::notifications::push::PushWorker>,
    /// Subscribed before the listener opens, so no revocation is missed.
    revocations: tokio::sync::broadcast::Receiver<crate::gateway::bus::BusMessage>,
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
    /// The token signing key could not be loaded or created.
    #[error("cannot load the token signing key")]
    SigningKey(#[source] KeyError),
    /// The shared signing key could not be read from or written to the store.
    #[error("cannot load the token signing key from the database")]
    SigningKeyStore(#[source] StoreError),
    /// The password hashing parameters were rejected.
    #[error("invalid password hashing settings")]
    Passwords(#[source] PasswordError),
    /// The HTTP server failed while serving.
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
    /// The Web Push key could not be loaded or created.
    #[error("cannot load the Web Push (VAPID) key")]
    Vapid(#[source] crate::notifications::push::VapidError),
    /// The attachment store could not be opened.
    #[error("cannot open the attachment store")]
    Attachments(#[source] crate::attachments::BlobError),
}

impl Service for ControlPlane {
    type Config = ControlPlaneConfig;
    type Addrs = Addrs;
    type Error = StartError;

    async fn build(config: ControlPlaneConfig) -> Result<Self, StartError> {
        let metrics = Metrics::new("control-plane");
        let dependencies = Dependencies::connect(&config).await?;
        let rotation = RotationPolicy::new(
            Duration::from_secs(config.auth.signing_key_rotation_secs),
            Duration::from_secs(
                config
                    .auth
                    .access_token_ttl_secs
                    .max(config.calls.join_token_ttl_secs),
            ),
        );
        let ring = match &config.auth.signing_key_file {
            Some(path) => KeyRing::fixed(
                SigningKey::from_pem_file(path).map_err(StartError::SigningKey)?,
                crate::store::now_utc(),
            ),
            None => load_ring(dependencies.store.as_ref(), rotation)
                .await
                .map_err(|e| match e {
                    RingError::Key(e) => StartError::SigningKey(e),
                    RingError::Store(e) => StartError::SigningKeyStore(e),
                })?,
        };
        let limiter: Arc<dyn RateLimiter> = match &dependencies.redis {
            Some(client) => Arc::new(RedisLimiter::new(client.clone())),
            None => Arc::new(MemoryLimiter::default()),
        };
        let limiter_errors = prometheus::IntCounter::new(
            "cascade_rate_limiter_errors_total",
            "Rate-limiter backend failures; requests were let through (fail open).",
        )
        .expect("metric definition is static and valid");
        metrics.register(Box::new(limiter_errors.clone()));
        let (bus, readiness): (Arc<dyn Bus>, Readiness) =
            match (&config.redis.url, &dependencies.redis) {
                (Some(url), Some(client)) => {
                    let redis_bus = RedisBus::start(url, client.clone())
                        .map_err(|e| StartError::Dependency(DependencyError::Redis(e)))?;
                    let check: Arc<dyn service::ReadinessCheck> =
                        Arc::new(BusCheck(redis_bus.clone()));
                    (redis_bus, dependencies.readiness(vec![check]))
                }
                _ => (
                    Arc::new(LocalBus::default()),
                    dependencies.readiness(Vec::new()),
                ),
            };
        let gateway_metrics = GatewayMetrics::new(&metrics);
        let (hub, hub_task) = crate::gateway::hub::hub(
            dependencies.store.clone(),
            bus.clone(),
            HubSettings {
                outbound_queue: config.gateway.outbound_queue,
                poll_interval: std::time::Duration::from_millis(config.gateway.poll_interval_ms),
                max_replay: config.gateway.max_replay,
            },
            gateway_metrics.clone(),
        );
        let key_gauges = SigningKeyGauges::for_ring(&metrics, &ring);
        let tokens = Tokens::new(
            ring,
            std::time::Duration::from_secs(config.auth.access_token_ttl_secs),
        );
        let presence = Arc::new(Presence::new(
            dependencies.redis.clone(),
            bus.clone(),
            dependencies.store.clone(),
            std::time::Duration::from_secs(config.gateway.presence_ttl_secs),
        ));
        presence.restore_after_reconnects();
        let gateway = Gateway {
            hub,
            bus: bus.clone(),
            presence,
            store: dependencies.store.clone(),
            tokens: tokens.clone(),
            settings: (&config.gateway).into(),
            metrics: gateway_metrics,
            active: Arc::default(),
            limiter: limiter.clone(),
            opens_per_user: config.rate_limits.websockets_per_user,
            max_open_per_user: config.rate_limits.max_open_websockets_per_user,
            open_by_user: Arc::default(),
        };
        let registry: Arc<dyn crate::calls::registry::NodeRegistry> = match &dependencies.redis {
            Some(client) => Arc::new(crate::calls::registry::RedisRegistry::new(client.clone())),
            None => Arc::new(crate::calls::registry::MemoryRegistry::default()),
        };
        let calls = Arc::new(crate::calls::Calls::new(
            dependencies.store.clone(),
            registry,
            tokens.clone(),
            bus.clone(),
            config.calls.clone(),
            crate::calls::metrics::CallMetrics::new(&metrics),
        ));
        let notifier =
            crate::notifications::Notifier::new(dependencies.store.clone(), metrics.registry());
        let vapid = if config.push.enabled {
            Some(Arc::new(
                crate::notifications::push::load_vapid(
                    dependencies.store.as_ref(),
                    &config.push.subject,
                )
                .await
                .map_err(StartError::Vapid)?,
            ))
        } else {
            None
        };
        let push = vapid.clone().map(|vapid| {
            crate::notifications::push::PushWorker::new(
                dependencies.store.clone(),
                gateway.presence.clone(),
                vapid,
                config.push.clone(),
                notifier.wake_handle(),
                crate::notifications::push::PushMetrics::new(metrics.registry()),
            )
        });
        let gateway_handle = gateway.clone();
        let tokens_handle = tokens.clone();
        let blobs = crate::attachments::Blobs::open(&config.attachments, &config.data_dir)
            .map_err(StartError::Attachments)?;
        let state = AppState::new(Shared {
            store: dependencies.store.clone(),
            passwords: Passwords::new(&config.auth).map_err(StartError::Passwords)?,
            tokens,
            limiter,
            config: config.clone(),
            limiter_errors,
            gateway,
            calls: calls.clone(),
            blobs: blobs.clone(),
            notifier,
            vapid,
        });
        let revocations = bus.subscribe();
        let router = router(&config, state, bus, metrics, readiness.clone());
        let http = HttpServer::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        tracing::info!(
            addr = %http.local_addr(),
            redis = dependencies.redis.is_some(),
            "control plane bound"
        );
        Ok(ControlPlane {
            calls,
            tokens: tokens_handle,
            key_gauges,
            store: dependencies.store.clone(),
            http,
            hub: hub_task,
            gateway: gateway_handle,
            router,
            readiness,
            dependencies,
            drain_timeout: config.drain_timeout(),
            blobs,
            attachments: config.attachments.clone(),
            push,
            revocations,
        })
    }

    fn addrs(&self) -> Addrs {
        Addrs {
            http: self.http.local_addr(),
        }
    }

    async fn run(self, shutdown: Shutdown) -> Result<(), StartError> {
        let hub = tokio::spawn(self.hub.run(shutdown.clone()));
        let sweeper = tokio::spawn(self.calls.clone().run_sweeper(shutdown.clone()));
        tokio::spawn(crate::attachments::run_sweeper(
            self.store.clone(),
            self.blobs.clone(),
            self.attachments.clone(),
            shutdown.clone(),
        ));
        if let Some(push) = self.push {
            tokio::spawn(push.run(shutdown.clone()));
        }
        tokio::spawn(refuse_revoked_logins(
            self.tokens.clone(),
            self.revocations,
            shutdown.clone(),
        ));
        if self.tokens.ring().policy().is_some() {
            tokio::spawn(rotate_keys(
                self.tokens.clone(),
                self.store.clone(),
                self.key_gauges.clone(),
                shutdown.clone(),
            ));
        }
        let readiness = self.readiness.clone();
        let served = self
            .http
            .serve(self.router, shutdown, self.drain_timeout, move || {
                readiness.start_draining()
            })
            .await;
        // The hub closes its WebSockets (1001) when shutdown fires; wait for
        // their close frames and presence updates before closing Redis.
        let _ = tokio::time::timeout(self.drain_timeout, hub).await;
        let _ = tokio::time::timeout(self.drain_timeout, sweeper).await;
        self.gateway.closed(self.drain_timeout).await;
        self.dependencies.close().await;
        tracing::info!("control plane stopped");
        served.map_err(StartError::Serve)
    }
}

/// The whole HTTP surface: API routes with their OpenAPI document and
/// Swagger UI, operator endpoints, and the layers that bound every request
/// (time, body size) and measure it.
pub fn router(
    config: &ControlPlaneConfig,
    state: AppState,
    bus: Arc<dyn Bus>,
    metrics: Metrics,
    readiness: Readiness,
) -> Router {
    // The multipart envelope around the largest upload.
    let upload_limit = usize::try_from(config.attachments.largest())
        .unwrap_or(usize::MAX)
        .saturating_add(64 << 10);
    let (api, openapi) = api::routes(upload_limit);
    let api_origins: Vec<String> = config
        .api_origins
        .iter()
        .filter_map(|o| crate::web::parse_origin(o))
        .collect();
    let page_policy = crate::web::PagePolicy::new(config, state.calls.clone());
    let app = api
        .route("/v1/ws", axum::routing::get(crate::gateway::upgrade))
        .merge(api::internal_routes())
        .with_state(state)
        // Every successful write wakes the hubs of all replicas.
        .layer(axum::middleware::from_fn_with_state(
            bus,
            crate::gateway::wake_hubs,
        ))
        // Serves /docs (Swagger UI) and /openapi.json.
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .merge(crate::web::routes(&api_origins, page_policy))
        .merge(service::ops::routes(metrics.clone(), readiness))
        .fallback(error::no_route)
        .layer(axum::middleware::from_fn(no_store_for_auth))
        .layer(axum::middleware::from_fn(crate::web::security_headers))
        .layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(api_origins),
            crate::web::cors,
        ));
    service::ops::measure(app, metrics)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout(),
        ))
        // Enforced by the body extractors, so an oversized body gets our
        // JSON 413 rather than a plain-text one.
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        // A panic is a bug; it must cost one request, not the replica.
        .layer(CatchPanicLayer::new())
}

/// Answers of `/v1/auth/*` carry tokens: no cache (browser, proxy) may
/// keep them (RFC 6749 section 5.1).
async fn no_store_for_auth(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let auth = request.uri().path().starts_with("/v1/auth/");
    let mut response = next.run(request).await;
    if auth {
        let headers = response.headers_mut();
        headers.insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
        headers.insert(
            axum::http::header::PRAGMA,
            axum::http::HeaderValue::from_static("no-cache"),
        );
    }
    response
}

/// The signing keys' age for alerts: `cascade_signing_key_created_timestamp_seconds`
/// (the key signing now) and, for keys kept in the database,
/// `cascade_signing_key_rotation_due_timestamp_seconds` (when the newest one
/// must have a successor). A fixed key file exports neither: its age is the
/// operator's to track, and "now" would be a misleading creation time.
#[derive(Clone)]
struct SigningKeyGauges {
    created: prometheus::IntGauge,
    rotation_due: prometheus::IntGauge,
}

impl SigningKeyGauges {
    /// The gauges of a rotating ring, set from it; none for a fixed key.
    fn for_ring(metrics: &Metrics, ring: &KeyRing) -> Option<Self> {
        ring.policy()?;
        let gauges = SigningKeyGauges {
            created: metrics.gauge(
                "cascade_signing_key_created_timestamp_seconds",
                "When the token signing key that signs now was created (Unix time; keys kept in the database).",
            ),
            rotation_due: metrics.gauge(
                "cascade_signing_key_rotation_due_timestamp_seconds",
                "When the newest token signing key must have a successor (Unix time); long past means rotation stopped.",
            ),
        };
        gauges.record(ring);
        Some(gauges)
    }

    fn record(&self, ring: &KeyRing) {
        let Some(due) = ring.rotation_due() else {
            return;
        };
        let now = crate::store::now_utc();
        self.created
            .set(ring.signer_created_at(now).unix_timestamp());
        self.rotation_due.set(due.unix_timestamp());
    }
}

/// Why the key ring could not be loaded.
enum RingError {
    Key(KeyError),
    Store(StoreError),
}

/// The rotating key ring from the store. The first start seeds it with the
/// key every replica agreed on in `signing_keys` (the key of earlier
/// versions, so their tokens keep verifying).
async fn load_ring(
    store: &dyn crate::store::Store,
    policy: RotationPolicy,
) -> Result<KeyRing, RingError> {
    let mut records = store.ring_keys().await.map_err(RingError::Store)?;
    if records.is_empty() {
        let candidate = SigningKey::generate(crate::store::now_utc()).map_err(RingError::Key)?;
        let seed = store
            .signing_key(&candidate)
            .await
            .map_err(RingError::Store)?;
        store
            .add_ring_key(&seed, None)
            .await
            .map_err(RingError::Store)?;
        records = store.ring_keys().await.map_err(RingError::Store)?;
    }
    let keys = records
        .iter()
        .map(|record| {
            Ok(RingKey {
                key: SigningKey::from_record(record).map_err(RingError::Key)?,
                created_at: record.created_at,
            })
        })
        .collect::<Result<Vec<_>, RingError>>()?;
    if keys.is_empty() {
        return Err(RingError::Store(StoreError::NotFound));
    }
    Ok(KeyRing::rotating(keys, policy))
}

/// Refuses the access tokens of logins other replicas revoked (logout,
/// password change, account deletion) as their bus messages arrive.
async fn refuse_revoked_logins(
    tokens: Tokens,
    mut messages: tokio::sync::broadcast::Receiver<crate::gateway::bus::BusMessage>,
    shutdown: Shutdown,
) {
    use tokio::sync::broadcast::error::RecvError;
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            message = messages.recv() => match message {
                Ok(crate::gateway::bus::BusMessage::Revoked { families, .. }) => tokens.revoke(families),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Every replica: re-reads the key ring, adds the next key when it is due
/// (guarded by "no key newer than the one I saw": usually one replica adds
/// it; two racing at the same instant add two, which is harmless: both are
/// published before either signs), and drops retired keys.
async fn rotate_keys(
    tokens: Tokens,
    store: Arc<dyn crate::store::Store>,
    gauges: Option<SigningKeyGauges>,
    shutdown: Shutdown,
) {
    let Some(policy) = tokens.ring().policy() else {
        return;
    };
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(policy.refresh_every()) => {}
        }
        let now = crate::store::now_utc();
        let ring = tokens.ring();
        if ring.needs_new_key(now) {
            match SigningKey::generate(now) {
                Ok(candidate) => match store
                    .add_ring_key(&candidate, ring.newest_created_at())
                    .await
                {
                    Ok(true) => {
                        tracing::info!(kid = %candidate.kid, "new token signing key published")
                    }
                    Ok(false) => {} // another replica rotated first
                    Err(error) => tracing::warn!(%error, "cannot store a new signing key"),
                },
                Err(error) => tracing::warn!(%error, "cannot generate a signing key"),
            }
        }
        for kid in ring.retired(now) {
            if let Err(error) = store.remove_ring_key(kid).await {
                tracing::warn!(%error, kid, "cannot remove a retired signing key");
            }
        }
        match load_ring(store.as_ref(), policy).await {
            Ok(fresh) => {
                if let Some(gauges) = &gauges {
                    gauges.record(&fresh);
                }
                tokens.set_ring(fresh);
            }
            Err(_) => tracing::warn!("cannot re-read the signing keys; keeping the current ones"),
        }
    }
}
