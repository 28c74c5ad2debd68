//! The control plane's typed configuration (`[control_plane]`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use service::{Validate, Validator};

/// Settings of one control-plane replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    /// Address of the HTTP API, WebSocket gateway and operator endpoints.
    pub listen: SocketAddr,
    /// After SIGTERM, how long in-flight requests may take to finish before
    /// their connections are closed. Kubernetes waits 30 s by default before
    /// SIGKILL, so the default stays well inside that.
    pub drain_timeout_secs: u64,
    /// A request still running after this long is answered 408.
    pub request_timeout_secs: u64,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Where the embedded database (and other local state) lives when no
    /// `database.url` is set.
    pub data_dir: PathBuf,
    /// The system of record.
    pub database: DatabaseConfig,
    /// Presence, live call state and cross-replica fan-out.
    pub redis: RedisConfig,
    /// Passwords, tokens and login protection.
    pub auth: AuthConfig,
    /// Sizes users may not exceed.
    pub limits: LimitsConfig,
    /// `[control_plane.rate_limits]`: how often a user (or an address)
    /// may repeat what costs the service.
    pub rate_limits: RateLimitsConfig,
    /// The WebSocket gateway.
    pub gateway: crate::gateway::GatewayConfig,
    /// Calls: ring timeout, regions, ICE servers, node liveness.
    pub calls: crate::calls::config::CallsConfig,
    /// The credential nodes use on the internal API.
    pub cluster: crate::calls::config::ClusterConfig,
    /// `[control_plane.attachments]`: where uploads are kept, size limits.
    pub attachments: crate::attachments::AttachmentsConfig,
    /// `[control_plane.push]`: Web Push to browsers that are offline.
    pub push: crate::notifications::push::PushConfig,
    /// `[control_plane.terms]`: the terms people accept at sign-up.
    pub terms: TermsConfig,
    /// Origins (`https://a.example`) of every replica or load balancer the
    /// web client may use, in the order it tries them when one stops
    /// answering. They are written into the page and allowed cross-origin
    /// requests (CORS) from each other. Empty: the page's own origin only.
    pub api_origins: Vec<String>,
}

/// `[control_plane.auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of access tokens (JWT), seconds.
    pub access_token_ttl_secs: u64,
    /// Lifetime of refresh tokens, seconds; each refresh issues a new one.
    pub refresh_token_ttl_secs: u64,
    /// Argon2id memory cost, KiB (OWASP's minimum is 19 MiB with 2 passes).
    pub argon2_memory_kib: u32,
    /// Argon2id passes.
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    pub argon2_parallelism: u32,
    /// Minimum zxcvbn score (0–4) a new password must reach.
    pub min_password_score: u8,
    /// PEM file with the Ed25519 key that signs tokens. Unset: a key kept in
    /// the database, generated on first start and shared by all replicas.
    pub signing_key_file: Option<PathBuf>,
    /// How long a database-kept signing key signs before the next one takes
    /// over, seconds (old keys keep verifying until their tokens expire).
    /// Ignored with `signing_key_file`.
    pub signing_key_rotation_secs: u64,
    /// Failed logins allowed per account within the window.
    pub max_failed_logins_per_account: u32,
    /// Failed logins allowed per client address within the window.
    pub max_failed_logins_per_address: u32,
    /// The rate-limit window, seconds.
    pub login_window_secs: u64,
    /// Header carrying the client address appended by the operator's load
    /// balancer (e.g. `x-forwarded-for`; the rightmost entry is used, since
    /// earlier ones come from the client). Unset: the TCP peer address.
    pub client_address_header: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            min_password_score: 3,
            signing_key_file: None,
            signing_key_rotation_secs: 30 * 24 * 3600,
            max_failed_logins_per_account: 10,
            max_failed_logins_per_address: 50,
            login_window_secs: 15 * 60,
            client_address_header: None,
        }
    }
}

/// `[control_plane.terms]`: sign-up records which version of the terms
/// (and privacy notice) each person accepted, and when. Change `version`
/// when the text changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TermsConfig {
    /// The current version; a sign-up must name it in `accepted_terms`.
    pub version: String,
    /// Where people read them (shown beside the sign-up checkbox).
    pub url: Option<String>,
}

impl Default for TermsConfig {
    fn default() -> Self {
        TermsConfig {
            version: "2026-12-01".to_owned(),
            url: None,
        }
    }
}

impl Validate for TermsConfig {
    fn validate(&self, v: &mut Validator) {
        let version = self.version.trim();
        if version.is_empty() || version.len() > 64 || version.chars().any(char::is_control) {
            v.invalid("version", "must be 1-64 printable characters");
        }
        if let Some(url) = &self.url
            && !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/'))
        {
            v.invalid("url", "must be an http(s) URL or a path on this site");
        }
    }
}

/// `[control_plane.limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Members a group may have, owner included.
    pub max_group_members: u32,
    /// Characters in one message.
    pub max_message_chars: u32,
    /// Characters in a group name or display name.
    pub max_name_chars: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_group_members: 256,
            max_message_chars: 4000,
            max_name_chars: 64,
        }
    }
}

/// How many times in a window (a fixed window opened by the first use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Uses allowed per window.
    pub limit: u32,
    /// The window, seconds.
    pub window_secs: u64,
}

impl Quota {
    const fn new(limit: u32, window_secs: u64) -> Self {
        Quota { limit, window_secs }
    }

    /// The window.
    pub fn window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.window_secs)
    }
}

/// `[control_plane.rate_limits]`: beyond them, 429 with `Retry-After`;
/// counted in Redis when configured (all replicas share them), else in
/// process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Sign-ups per client address (each costs an Argon2id hash).
    pub signups_per_address: Quota,
    /// Messages sent or edited per user.
    pub messages_per_user: Quota,
    /// Reactions added or removed per user.
    pub reactions_per_user: Quota,
    /// Calls started per user.
    pub calls_per_user: Quota,
    /// Call joins (join tokens) per user.
    pub call_joins_per_user: Quota,
    /// WebSocket connections opened per user.
    pub websockets_per_user: Quota,
    /// Data exports (`POST /v1/me/export`) per user: each reads all
    /// their rows and blobs, and checks the password.
    pub exports_per_user: Quota,
    /// Account deletion attempts (`DELETE /v1/me`) per user: each checks
    /// the password (wrong ones also count as failed logins).
    pub erasures_per_user: Quota,
    /// WebSocket connections one user may hold open at once on one
    /// replica.
    pub max_open_websockets_per_user: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            signups_per_address: Quota::new(10, 3600),
            messages_per_user: Quota::new(120, 60),
            reactions_per_user: Quota::new(120, 60),
            calls_per_user: Quota::new(20, 60),
            call_joins_per_user: Quota::new(60, 60),
            websockets_per_user: Quota::new(60, 60),
            exports_per_user: Quota::new(3, 3600),
            erasures_per_user: Quota::new(5, 3600),
            max_open_websockets_per_user: 20,
        }
    }
}

impl Validate for RateLimitsConfig {
    fn validate(&self, v: &mut Validator) {
        for (name, quota) in [
            ("signups_per_address", self.signups_per_address),
            ("messages_per_user", self.messages_per_user),
            ("reactions_per_user", self.reactions_per_user),
            ("calls_per_user", self.calls_per_user),
            ("call_joins_per_user", self.call_joins_per_user),
            ("websockets_per_user", self.websockets_per_user),
            ("exports_per_user", self.exports_per_user),
            ("erasures_per_user", self.erasures_per_user),
        ] {
            check_range(
                v,
                &format!("{name}.limit"),
                u64::from(quota.limit),
                1,
                1_000_000,
            );
            check_range(
                v,
                &format!("{name}.window_secs"),
                quota.window_secs,
                1,
                86_400,
            );
        }
        check_range(
            v,
            "max_open_websockets_per_user",
            u64::from(self.max_open_websockets_per_user),
            1,
            10_000,
        );
    }
}

/// `[control_plane.database]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db`, or `sqlite::memory:` /
    /// `sqlite://path`. Unset: SQLite in the data directory.
    pub url: Option<String>,
    /// Upper bound on pooled connections per replica.
    pub max_connections: u32,
    /// How long start-up keeps trying to reach Postgres, seconds.
    pub connect_timeout_secs: u64,
}

/// `[control_plane.redis]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port` (or `rediss://` for TLS). Unset: in-process state,
    /// which is only correct for a single replica.
    pub url: Option<String>,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        ControlPlaneConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            drain_timeout_secs: 10,
            request_timeout_secs: 30,
            max_body_bytes: 1024 * 1024,
            data_dir: PathBuf::from("data"),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            gateway: crate::gateway::GatewayConfig::default(),
            calls: crate::calls::config::CallsConfig::default(),
            cluster: crate::calls::config::ClusterConfig::default(),
            attachments: crate::attachments::AttachmentsConfig::default(),
            push: crate::notifications::push::PushConfig::default(),
            terms: TermsConfig::default(),
            api_origins: Vec::new(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: 16,
            connect_timeout_secs: 30,
        }
    }
}

/// The cluster credential of [`ControlPlaneConfig::for_tests`].
#[cfg(any(test, feature = "testing"))]
pub const TEST_CLUSTER_SECRET: &str = "test-cluster-secret-not-for-production";

impl ControlPlaneConfig {
    /// [`ControlPlaneConfig::drain_timeout_secs`] as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// [`ControlPlaneConfig::request_timeout_secs`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    #[cfg(any(test, feature = "testing"))]
    /// A configuration for tests: loopback, port 0, an in-memory SQLite
    /// store, and cheap password hashing (tests hash many passwords; the
    /// production parameters are checked by their own test).
    pub fn for_tests() -> Self {
        let mut config = ControlPlaneConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_timeout_secs: 5,
            ..ControlPlaneConfig::default()
        };
        config.database.url = Some("sqlite::memory:".into());
        config.auth.argon2_memory_kib = 1024;
        config.auth.argon2_iterations = 1;
        // Every test's client is 127.0.0.1, and Redis keeps the per-address
        // count across tests and runs (a 15-minute window): the tests of
        // the login limit count per account, with names of their own.
        config.auth.max_failed_logins_per_address = 1_000_000;
        // Nodes in tests register with this; sweeps run often so ring
        // timeouts and dead nodes are noticed within a test's patience.
        config.cluster.secret = Some(TEST_CLUSTER_SECRET.to_owned());
        config.calls.sweep_interval_ms = 100;
        config.calls.heartbeat_interval_secs = 1;
        // Test edges listen on loopback ports chosen at start (and restart).
        config.calls.edge_origins = vec!["ws://127.0.0.1:*".into()];
        // Each test's uploads in a directory of its own.
        config.attachments.dir = Some(
            std::env::temp_dir().join(format!("cascade-attachments-{}", uuid::Uuid::new_v4())),
        );
        // Tests and benchmarks register, send and connect far more than a
        // person; the tests of the limits set their own.
        let plenty = Quota::new(1_000_000, 60);
        config.rate_limits = RateLimitsConfig {
            signups_per_address: plenty,
            messages_per_user: plenty,
            reactions_per_user: plenty,
            calls_per_user: plenty,
            call_joins_per_user: plenty,
            websockets_per_user: plenty,
            exports_per_user: plenty,
            erasures_per_user: plenty,
            max_open_websockets_per_user: 10_000,
        };
        // The tests' push service listens on loopback over plain HTTP.
        config.push.endpoint_hosts = vec!["127.0.0.1".into()];
        config.push.allow_http = true;
        config.push.poll_interval_ms = 100;
        config
    }
}

impl Validate for ControlPlaneConfig {
    fn validate(&self, v: &mut Validator) {
        for (i, origin) in self.api_origins.iter().enumerate() {
            if crate::web::parse_origin(origin).is_none() {
                v.invalid(
                    "api_origins",
                    format!("entry {i} must be an origin: http(s)://host[:port], nothing after it"),
                );
            }
        }
        check_range(v, "drain_timeout_secs", self.drain_timeout_secs, 1, 300);
        check_range(
            v,
            "request_timeout_secs",
            self.request_timeout_secs,
            1,
            3600,
        );
        check_range(
            v,
            "max_body_bytes",
            self.max_body_bytes as u64,
            1024,
            64 * 1024 * 1024,
        );
        if self.data_dir.as_os_str().is_empty() {
            v.invalid("data_dir", "must not be empty");
        }
        v.section("database", &self.database);
        v.section("redis", &self.redis);
        v.section("auth", &self.auth);
        v.section("limits", &self.limits);
        v.section("rate_limits", &self.rate_limits);
        v.section("gateway", &self.gateway);
        v.section("calls", &self.calls);
        v.section("cluster", &self.cluster);
        v.section("attachments", &self.attachments);
        v.section("push", &self.push);
        v.section("terms", &self.terms);
    }
}

impl Validate for AuthConfig {
    fn validate(&self, v: &mut Validator) {
        check_range(
            v,
            "access_token_ttl_secs",
            self.access_token_ttl_secs,
            60,
            24 * 3600,
        );
        check_range(
            v,
            "refresh_token_ttl_secs",
            self.refresh_token_ttl_secs,
            3600,
            365 * 24 * 3600,
        );
        check_range(
            v,
            "argon2_memory_kib",
            u64::from(self.argon2_memory_kib),
            1024,
            4 * 1024 * 1024,
        );
        check_range(
            v,
            "argon2_iterations",
            u64::from(self.argon2_iterations),
            1,
            100,
        );
        check_range(
            v,
            "argon2_parallelism",
            u64::from(self.argon2_parallelism),
            1,
            64,
        );
        check_range(
            v,
            "min_password_score",
            u64::from(self.min_password_score),
            0,
            4,
        );
        check_range(
            v,
            "max_failed_logins_per_account",
            u64::from(self.max_failed_logins_per_account),
            1,
            10_000,
        );
        check_range(
            v,
            "max_failed_logins_per_address",
            u64::from(self.max_failed_logins_per_address),
            1,
            1_000_000,
        );
        check_range(v, "login_window_secs", self.login_window_secs, 1, 24 * 3600);
        check_range(
            v,
            "signing_key_rotation_secs",
            self.signing_key_rotation_secs,
            4,
            365 * 24 * 3600,
        );
        if let Some(path) = &self.signing_key_file
            && !path.is_file()
        {
            v.invalid(
                "signing_key_file",
                format!("{} is not a readable file", path.display()),
            );
        }
        if let Some(header) = &self.client_address_header
            && axum::http::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            v.invalid("client_address_header", "not a valid HTTP header name");
        }
    }
}

impl Validate for LimitsConfig {
    fn validate(&self, v: &mut Validator) {
        check_range(
            v,
            "max_group_members",
            u64::from(self.max_group_members),
            2,
            100_000,
        );
        check_range(
            v,
            "max_message_chars",
            u64::from(self.max_message_chars),
            1,
            100_000,
        );
        check_range(
            v,
            "max_name_chars",
            u64::from(self.max_name_chars),
            1,
            1_000,
        );
    }
}

impl Validate for DatabaseConfig {
    fn validate(&self, v: &mut Validator) {
        // `sqlite::memory:` and `sqlite://path` are sqlx's own syntax.
        if let Some(url) = &self.url
            && !url.starts_with("sqlite:")
        {
            v.check("url", check_url(url, &["postgres", "postgresql"]));
        }
        check_range(
            v,
            "max_connections",
            u64::from(self.max_connections),
            1,
            1000,
        );
        check_range(
            v,
            "connect_timeout_secs",
            self.connect_timeout_secs,
            1,
            3600,
        );
    }
}

impl Validate for RedisConfig {
    fn validate(&self, v: &mut Validator) {
        if let Some(url) = &self.url {
            v.check("url", check_url(url, &["redis", "rediss"]));
        }
    }
}

pub(crate) fn check_range(v: &mut Validator, key: &str, value: u64, min: u64, max: u64) {
    if !(min..=max).contains(&value) {
        v.invalid(key, format!("must be between {min} and {max}"));
    }
}

/// Checks that `raw` is a URL with one of `schemes` and a host. The URL is
/// never echoed: it may carry a password.
fn check_url(raw: &str, schemes: &[&str]) -> Result<(), String> {
    let expected = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e}); expected {expected}"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "unsupported scheme {:?}; expected {expected}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(config: &ControlPlaneConfig) -> Vec<String> {
        let mut v = Validator::default();
        config.validate(&mut v);
        v.problem_keys()
    }

    #[test]
    fn defaults_and_test_config_are_valid() {
        assert_eq!(
            problems(&ControlPlaneConfig::default()),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(&ControlPlaneConfig::for_tests()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn urls_and_ranges_are_checked() {
        let mut config = ControlPlaneConfig::default();
        config.database.url = Some("mysql://db/x".into());
        config.redis.url = Some("redis://".into());
        config.drain_timeout_secs = 0;
        config.max_body_bytes = 10;
        assert_eq!(
            problems(&config),
            vec![
                "drain_timeout_secs",
                "max_body_bytes",
                "database.url",
                "redis.url"
            ]
        );
        config = ControlPlaneConfig::default();
        config.database.url = Some("postgres://u:p@127.0.0.1:5432/db".into());
        config.redis.url = Some("redis://127.0.0.1:6379".into());
        assert!(problems(&config).is_empty());
    }
}
