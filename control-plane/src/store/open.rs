//! Opening the configured store and bringing its schema up to date.
//!
//! - `database.url = "postgres://..."`: Postgres. Migrations run at start-up
//!   under sqlx's advisory lock, so replicas starting together are safe.
//! - `database.url = "sqlite::memory:"` or `"sqlite://path"`: SQLite.
//! - unset: SQLite in `<data_dir>/cascade.sqlite3` (the embedded default).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{PgStore, SqliteStore, Store};
use crate::config::DatabaseConfig;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory for the embedded database could not be created.
    #[error("cannot create the data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No connection within the start-up deadline (the URL is not shown: it
    /// may hold a password).
    #[error("cannot connect to the {backend} database within {waited:?}")]
    Connect {
        /// `postgres` or `sqlite`.
        backend: &'static str,
        /// How long we tried.
        waited: Duration,
        /// The last error.
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("cannot apply database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Where the embedded database lives inside the data directory.
pub const EMBEDDED_DB_FILE: &str = "cascade.sqlite3";

/// Opens (and migrates) the store `config` names.
pub async fn open(config: &DatabaseConfig, data_dir: &Path) -> Result<Arc<dyn Store>, OpenError> {
    match config.url.as_deref() {
        Some(url) if url.starts_with("postgres") => open_postgres(config, url).await,
        Some(url) => {
            let options =
                SqliteConnectOptions::from_str(url).map_err(|source| OpenError::Connect {
                    backend: "sqlite",
                    waited: Duration::ZERO,
                    source,
                })?;
            open_sqlite(options, url.contains(":memory:")).await
        }
        None => {
            std::fs::create_dir_all(data_dir).map_err(|source| OpenError::DataDir {
                path: data_dir.to_owned(),
                source,
            })?;
            let options = SqliteConnectOptions::new().filename(data_dir.join(EMBEDDED_DB_FILE));
            open_sqlite(options, false).await
        }
    }
}

async fn open_postgres(config: &DatabaseConfig, url: &str) -> Result<Arc<dyn Store>, OpenError> {
    let deadline = Duration::from_secs(config.connect_timeout_secs);
    let options = PgConnectOptions::from_str(url).map_err(|source| OpenError::Connect {
        backend: "postgres",
        waited: Duration::ZERO,
        source,
    })?;
    let started = Instant::now();
    // Databases often come up after the services that need them (compose,
    // Kubernetes): probe with single connections, with backoff, until the
    // deadline. (The pool's own connect would retry internally for its whole
    // acquire timeout, overrunning a short deadline.)
    let mut delay = Duration::from_millis(100);
    loop {
        let remaining = deadline.saturating_sub(started.elapsed());
        let attempt = tokio::time::timeout(remaining, PgConnection::connect_with(&options)).await;
        match attempt {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                break;
            }
            Ok(Err(source)) if started.elapsed() + delay >= deadline => {
                return Err(OpenError::Connect {
                    backend: "postgres",
                    waited: started.elapsed(),
                    source,
                });
            }
            Err(_elapsed) => {
                return Err(OpenError::Connect {
                    backend: "postgres",
                    waited: started.elapsed(),
                    source: sqlx::Error::PoolTimedOut,
                });
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "database not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    sqlx::migrate!("./migrations/postgres")
        .run(&pool)
        .await
        .map_err(OpenError::Migrate)?;
    Ok(Arc::new(PgStore { pool }))
}

async fn open_sqlite(
    options: SqliteConnectOptions,
    in_memory: bool,
) -> Result<Arc<dyn Store>, OpenError> {
    let options = options
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = if in_memory {
        // Each connection to ":memory:" is its own database: keep exactly
        // one, forever.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
    } else {
        SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(
                options
                    .journal_mode(SqliteJournalMode::Wal)
                    // With WAL, NORMAL survives process crashes (SIGKILL);
                    // only an OS crash can lose the last transactions.
                    .synchronous(SqliteSynchronous::Normal),
            )
            .await
    }
    .map_err(|source| OpenError::Connect {
        backend: "sqlite",
        waited: Duration::ZERO,
        source,
    })?;
    sqlx::migrate!("./migrations/sqlite")
        .run(&pool)
        .await
        .map_err(OpenError::Migrate)?;
    Ok(Arc::new(SqliteStore { pool }))
}
