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
            private_dir(data_dir).map_err(|source| OpenError::DataDir {
                path: data_dir.to_owned(),
                source,
            })?;
            let options = SqliteConnectOptions::new().filename(data_dir.join(EMBEDDED_DB_FILE));
            open_sqlite(options, false).await
        }
    }
}

/// The embedded data directory, owner-only (0700): it holds the database,
/// whose signing keys can mint tokens for any account, and `cascade dev`'s
/// secrets. An existing directory is tightened too.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "data directory was readable by others; now 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A SQLite database file and its WAL and shared-memory files, owner-only
/// (0600), created so before SQLite opens it (SQLite gives the `-wal` and
/// `-shm` files the database file's mode).
fn private_db_files(db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(db)?;
    let mut files = vec![db.to_owned()];
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        files.push(name.into());
    }
    for file in files.iter().filter(|f| f.exists()) {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
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
    if !in_memory {
        let db = options.get_filename().to_owned();
        private_db_files(&db).map_err(|source| OpenError::DataDir { path: db, source })?;
    }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// The embedded database holds the signing keys: nobody but its owner
    /// may read it (a local user read a 0644 file and forged a token).
    #[tokio::test]
    async fn the_embedded_database_is_private_to_its_owner() {
        let dir = std::env::temp_dir().join(format!("cascade-mode-{}", uuid::Uuid::new_v4()));
        let data = dir.join("data");
        let store = open(&DatabaseConfig::default(), &data).await.unwrap();
        store.ring_keys().await.unwrap();
        assert_eq!(mode(&data), 0o700);
        let db = data.join(EMBEDDED_DB_FILE);
        assert_eq!(mode(&db), 0o600);
        let wal = data.join(format!("{EMBEDDED_DB_FILE}-wal"));
        assert!(wal.exists(), "WAL mode writes a -wal file");
        assert_eq!(mode(&wal), 0o600);
        drop(store);
        // An existing directory and file made readable by someone else are
        // tightened at the next start.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = open(&DatabaseConfig::default(), &data).await.unwrap();
        store.ring_keys().await.unwrap();
        assert_eq!((mode(&data), mode(&db)), (0o700, 0o600));
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
