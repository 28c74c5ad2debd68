//! `spawn_app`: a control plane with its own fresh database, and typed
//! helpers to drive its API like a client would.
//!
//! SQLite runs in memory. Postgres gets a database created for the test on
//! the server named by `TEST_DATABASE_URL` and dropped when the test ends.

use std::time::Duration;

use control_plane::ControlPlaneConfig;
use sqlx::Connection;

use crate::client::ApiClient;
pub use crate::client::{Reply, TestUser};
use crate::control_plane::TestControlPlane;

/// Which store the control plane runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In-memory SQLite (always available).
    Sqlite,
    /// A fresh database on the test Postgres server.
    Postgres,
}

/// A running control plane on a fresh database, and an HTTP client.
pub struct TestApp {
    /// The service.
    pub server: Option<TestControlPlane>,
    /// The API client, pointed at the server (also reachable through
    /// `Deref`: `app.register(..)`, `app.http`).
    pub client: ApiClient,
    /// Which backend.
    pub backend: Backend,
    /// The configuration it runs with (database URL included).
    pub config: ControlPlaneConfig,
    /// Held for its `Drop`, which removes the test database.
    _database: Option<PgTestDatabase>,
}

impl TestApp {
    /// Starts a control plane on `backend` with `tweak` applied to the test
    /// configuration. Postgres: `None` when no test server is configured
    /// (outside CI; under CI that panics instead).
    pub async fn spawn_with(
        backend: Backend,
        tweak: impl FnOnce(&mut ControlPlaneConfig),
    ) -> Option<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut config = ControlPlaneConfig::for_tests();
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let admin_url = crate::servers::postgres_url()?;
                let db = PgTestDatabase::create(&admin_url).await;
                config.database.url = Some(db.url.clone());
                config.database.max_connections = 8;
                Some(db)
            }
        };
        Some(Self::start(backend, config, database, tweak).await)
    }

    /// A control plane on a fresh database created on the Postgres server
    /// at `admin_url` (for benchmarks, which name their server explicitly).
    pub async fn spawn_on_postgres(
        admin_url: &str,
        tweak: impl FnOnce(&mut ControlPlaneConfig),
    ) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut config = ControlPlaneConfig::for_tests();
        let db = PgTestDatabase::create(admin_url).await;
        config.database.url = Some(db.url.clone());
        Self::start(Backend::Postgres, config, Some(db), tweak).await
    }

    async fn start(
        backend: Backend,
        mut config: ControlPlaneConfig,
        database: Option<PgTestDatabase>,
        tweak: impl FnOnce(&mut ControlPlaneConfig),
    ) -> Self {
        tweak(&mut config);
        let server = TestControlPlane::start(config.clone())
            .await
            .expect("control plane starts");
        let client = ApiClient::new(server.http_addr());
        TestApp {
            server: Some(server),
            client,
            backend,
            config,
            _database: database,
        }
    }

    /// [`TestApp::spawn_with`] with the plain test configuration.
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Stops the control plane (keeping the database for a restart).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server
                .stop(Duration::from_secs(10))
                .await
                .expect("clean stop");
        }
    }

    /// Starts the control plane again on the same database.
    pub async fn restart(&mut self) {
        self.stop().await;
        let server = TestControlPlane::start(self.config.clone())
            .await
            .expect("control plane restarts");
        self.client = ApiClient::new(server.http_addr());
        self.server = Some(server);
    }
}

impl std::ops::Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.client
    }
}

/// A database created on the test Postgres server for one test, dropped
/// (with any connections still open) when this value is dropped.
pub struct PgTestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgTestDatabase {
    /// Creates a uniquely named database on the server at `admin_url`.
    pub async fn create(admin_url: &str) -> Self {
        let name = format!("cascade_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .expect("connect to the test Postgres server");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let _ = admin.close().await;
        let mut url = url::Url::parse(admin_url).expect("TEST_DATABASE_URL is a URL");
        url.set_path(&name);
        PgTestDatabase {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PgTestDatabase {
    fn drop(&mut self) {
        // Drop runs outside async; use a short-lived runtime on a thread.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
                .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Runs an async scenario against both backends as two tests:
/// `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($(#[$meta:meta])* $name:ident, $scenario:ident) => {
        $(#[$meta])*
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let app = $crate::app::TestApp::spawn($crate::app::Backend::Sqlite)
                    .await
                    .expect("sqlite is always available");
                super::$scenario(app).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(app) = $crate::app::TestApp::spawn($crate::app::Backend::Postgres).await {
                    super::$scenario(app).await;
                }
            }
        }
    };
}

/// [`both_backends!`] with a configuration tweak:
/// `both_backends_with!(name, scenario, |config| ...)`.
#[macro_export]
macro_rules! both_backends_with {
    ($(#[$meta:meta])* $name:ident, $scenario:ident, $tweak:expr) => {
        $(#[$meta])*
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let app = $crate::app::TestApp::spawn_with($crate::app::Backend::Sqlite, $tweak)
                    .await
                    .expect("sqlite is always available");
                super::$scenario(app).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(app) =
                    $crate::app::TestApp::spawn_with($crate::app::Backend::Postgres, $tweak).await
                {
                    super::$scenario(app).await;
                }
            }
        }
    };
}
