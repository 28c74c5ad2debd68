//! `spawn_app`: a control plane with its own fresh database, and typed
//! helpers to drive its API like a client would.
//!
//! SQLite runs in memory. Postgres gets a database created for the test on
//! the server named by `TEST_DATABASE_URL` and dropped when the test ends.

use std::time::Duration;

use control_plane::ControlPlaneConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;

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
    /// Plain HTTP client (no cookies, no redirects followed).
    pub http: reqwest::Client,
    /// Which backend.
    pub backend: Backend,
    /// The configuration it runs with (database URL included).
    pub config: ControlPlaneConfig,
    /// Held for its `Drop`, which removes the test database.
    _database: Option<PgTestDatabase>,
}

/// A registered user and their current tokens.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// User id.
    pub id: String,
    /// Username.
    pub username: String,
    /// Password (as registered).
    pub password: String,
    /// Current access token.
    pub access: String,
    /// Current refresh token.
    pub refresh: String,
}

/// A response: status, headers and JSON body (`Value::Null` when empty).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Parsed JSON body.
    pub body: Value,
}

impl Reply {
    /// Asserts the status (printing the body if it differs) and returns self.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        self
    }

    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
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
        TestApp {
            server: Some(server),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("HTTP client"),
            backend,
            config,
            _database: database,
        }
    }

    /// [`TestApp::spawn_with`] with the plain test configuration.
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, |_| {}).await
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        self.server.as_ref().expect("server running").url(path)
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        Self::reply(response).await
    }

    /// Reads a response into a [`Reply`].
    pub async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("response body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// GET as `user`.
    pub async fn get(&self, path: &str, user: &TestUser) -> Reply {
        self.call(Method::GET, path, Some(&user.access), None).await
    }

    /// POST JSON as `user`.
    pub async fn post(&self, path: &str, user: &TestUser, body: Value) -> Reply {
        self.call(Method::POST, path, Some(&user.access), Some(body))
            .await
    }

    /// PATCH JSON as `user`.
    pub async fn patch(&self, path: &str, user: &TestUser, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(&user.access), Some(body))
            .await
    }

    /// DELETE as `user`.
    pub async fn delete(&self, path: &str, user: &TestUser) -> Reply {
        self.call(Method::DELETE, path, Some(&user.access), None)
            .await
    }

    /// Registers `username` with a strong password.
    pub async fn register(&self, username: &str) -> TestUser {
        let password = format!("{username}-Plum-Ferry-Quartz-91");
        let reply = self
            .call(
                Method::POST,
                "/v1/auth/register",
                None,
                Some(json!({
                    "username": username,
                    "email": format!("{username}@example.com"),
                    "password": password,
                })),
            )
            .await
            .expect(201);
        TestUser {
            id: reply.body["user"]["id"]
                .as_str()
                .expect("user id")
                .to_owned(),
            username: username.to_owned(),
            password,
            access: reply.body["tokens"]["access_token"]
                .as_str()
                .expect("access")
                .to_owned(),
            refresh: reply.body["tokens"]["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_owned(),
        }
    }

    /// Logs in as `user` again (a new session); returns the raw reply.
    pub async fn login(&self, login: &str, password: &str) -> Reply {
        self.call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({ "login": login, "password": password })),
        )
        .await
    }

    /// A direct conversation between `a` and `b`; returns its id.
    pub async fn direct(&self, a: &TestUser, b: &TestUser) -> String {
        let reply = self
            .post(
                "/v1/conversations",
                a,
                json!({ "kind": "direct", "user_id": b.id }),
            )
            .await;
        assert!(reply.status.is_success(), "{}", reply.body);
        reply.body["id"]
            .as_str()
            .expect("conversation id")
            .to_owned()
    }

    /// A group owned by `owner` with `members`; returns its id.
    pub async fn group(&self, owner: &TestUser, name: &str, members: &[&TestUser]) -> String {
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        let reply = self
            .post(
                "/v1/conversations",
                owner,
                json!({ "kind": "group", "name": name, "member_ids": ids }),
            )
            .await
            .expect(201);
        reply.body["id"]
            .as_str()
            .expect("conversation id")
            .to_owned()
    }

    /// Sends `text` to `conversation` as `user`; returns the message JSON.
    pub async fn send(&self, conversation: &str, user: &TestUser, text: &str) -> Value {
        self.post(
            &format!("/v1/conversations/{conversation}/messages"),
            user,
            json!({ "body": text }),
        )
        .await
        .expect(201)
        .body
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
        self.server = Some(
            TestControlPlane::start(self.config.clone())
                .await
                .expect("control plane restarts"),
        );
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
