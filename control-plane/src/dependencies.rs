//! The servers the control plane depends on: the store (Postgres, or the
//! embedded SQLite) and, when configured, Redis; with their readiness
//! checks.
//!
//! The store is opened (and migrated) before the replica serves. Redis is
//! connected in the background and retried forever, so a Redis restart heals
//! without restarting the replica; until it answers, `/readyz` says so.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config as RedisClientConfig, ReconnectPolicy};
use service::ops::BoxFuture;
use service::{Readiness, ReadinessCheck};

use crate::config::ControlPlaneConfig;
use crate::store::{self, OpenError, Store};

/// How long one attempt to reach Redis may take.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long QUIT may take at shutdown before we stop waiting for Redis.
const REDIS_QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a dependency could not be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DependencyError {
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// The Redis URL or client settings were rejected.
    #[error("control_plane.redis.url was rejected by the Redis client")]
    Redis(#[source] fred::error::Error),
}

/// The external servers this replica talks to.
#[derive(Clone)]
pub struct Dependencies {
    /// The system of record.
    pub store: Arc<dyn Store>,
    /// Redis, when `redis.url` is set.
    pub redis: Option<fred::clients::Client>,
}

impl Dependencies {
    /// Opens the store and starts connecting to Redis.
    pub async fn connect(config: &ControlPlaneConfig) -> Result<Self, DependencyError> {
        let store = store::open(&config.database, &config.data_dir).await?;
        let redis = match &config.redis.url {
            Some(url) => {
                let client_config =
                    RedisClientConfig::from_url(url).map_err(DependencyError::Redis)?;
                let client = Builder::from_config(client_config)
                    // Retry forever with capped backoff.
                    .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
                    .with_connection_config(|c| {
                        c.connection_timeout = REDIS_CONNECT_TIMEOUT;
                    })
                    .with_performance_config(|p| {
                        // A command waits at most this long, connected or
                        // not, so a Redis outage degrades rather than hangs.
                        p.default_command_timeout = Duration::from_secs(2);
                    })
                    .build()
                    .map_err(DependencyError::Redis)?;
                // Drives the connection (and reconnections) in the background.
                drop(client.connect());
                Some(client)
            }
            None => None,
        };
        Ok(Dependencies { store, redis })
    }

    /// Readiness over the store and Redis, plus `extra` checks.
    pub fn readiness(&self, extra: Vec<Arc<dyn ReadinessCheck>>) -> Readiness {
        let mut checks: Vec<Arc<dyn ReadinessCheck>> =
            vec![Arc::new(StoreCheck(self.store.clone()))];
        if let Some(client) = &self.redis {
            checks.push(Arc::new(RedisCheck(client.clone())));
        }
        checks.extend(extra);
        Readiness::new(checks)
    }

    /// Closes connections at shutdown, bounded in time.
    pub async fn close(&self) {
        if let Some(client) = &self.redis {
            let _ = tokio::time::timeout(REDIS_QUIT_TIMEOUT, client.quit()).await;
        }
    }
}

struct StoreCheck(Arc<dyn Store>);

impl ReadinessCheck for StoreCheck {
    fn name(&self) -> &'static str {
        "database"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.0.ping().await.map_err(|e| describe(&e)) })
    }
}

/// An error with its causes (sqlx names the failure, not the credentials).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

struct RedisCheck(fred::clients::Client);

impl ReadinessCheck for RedisCheck {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if !self.0.is_connected() {
                return Err(format!("not connected ({:?})", self.0.state()));
            }
            self.0
                .ping::<String>(None)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}
