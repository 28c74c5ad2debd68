//! Connections to the servers the control plane depends on when they are
//! configured (Postgres, Redis), and the readiness checks over them.
//!
//! Connections are opened lazily and retried: a replica whose database is
//! briefly away starts, reports not-ready on `/readyz`, and becomes ready by
//! itself, rather than crash-looping.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config as RedisClientConfig, ReconnectPolicy};
use service::ops::BoxFuture;
use service::{Readiness, ReadinessCheck};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::ControlPlaneConfig;

/// How long a caller waits for a pooled Postgres connection.
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one attempt to reach Redis may take.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long QUIT may take at shutdown before we stop waiting for Redis.
const REDIS_QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a dependency could not be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DependencyError {
    /// The Postgres URL was rejected by the driver.
    #[error("control_plane.database.url was rejected by the Postgres driver")]
    Postgres(#[source] sqlx::Error),
    /// The Redis URL or client settings were rejected.
    #[error("control_plane.redis.url was rejected by the Redis client")]
    Redis(#[source] fred::error::Error),
}

/// The external servers this replica talks to.
#[derive(Clone, Default)]
pub struct Dependencies {
    /// The system of record, when `database.url` is set.
    pub postgres: Option<PgPool>,
    /// Redis, when `redis.url` is set.
    pub redis: Option<fred::clients::Client>,
}

impl Dependencies {
    /// Creates the pool and client for whatever is configured. Nothing here
    /// waits for a server to answer.
    pub fn connect(config: &ControlPlaneConfig) -> Result<Self, DependencyError> {
        let postgres = match &config.database.url {
            Some(url) => Some(
                PgPoolOptions::new()
                    .max_connections(config.database.max_connections)
                    .acquire_timeout(PG_ACQUIRE_TIMEOUT)
                    .connect_lazy(url)
                    .map_err(DependencyError::Postgres)?,
            ),
            None => None,
        };
        let redis = match &config.redis.url {
            Some(url) => {
                let client_config =
                    RedisClientConfig::from_url(url).map_err(DependencyError::Redis)?;
                let client = Builder::from_config(client_config)
                    // Retry forever with capped backoff: Redis restarts must
                    // heal without restarting the replica.
                    .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
                    .with_connection_config(|c| {
                        c.connection_timeout = REDIS_CONNECT_TIMEOUT;
                    })
                    .build()
                    .map_err(DependencyError::Redis)?;
                // Drives the connection (and reconnections) in the background.
                drop(client.connect());
                Some(client)
            }
            None => None,
        };
        Ok(Dependencies { postgres, redis })
    }

    /// Readiness over every configured dependency.
    pub fn readiness(&self) -> Readiness {
        let mut checks: Vec<Arc<dyn ReadinessCheck>> = Vec::new();
        if let Some(pool) = &self.postgres {
            checks.push(Arc::new(PostgresCheck(pool.clone())));
        }
        if let Some(client) = &self.redis {
            checks.push(Arc::new(RedisCheck(client.clone())));
        }
        Readiness::new(checks)
    }

    /// Closes connections at shutdown, bounded in time.
    pub async fn close(&self) {
        if let Some(pool) = &self.postgres {
            pool.close().await;
        }
        if let Some(client) = &self.redis {
            let _ = tokio::time::timeout(REDIS_QUIT_TIMEOUT, client.quit()).await;
        }
    }
}

struct PostgresCheck(PgPool);

impl ReadinessCheck for PostgresCheck {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.0)
                .await
                .map(drop)
                // sqlx errors name the failure, not the credentials.
                .map_err(|e| e.to_string())
        })
    }
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
