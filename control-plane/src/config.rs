//! The control plane's typed configuration (`[control_plane]`).

use std::net::SocketAddr;
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
    /// The system of record.
    pub database: DatabaseConfig,
    /// Presence, live call state and cross-replica fan-out.
    pub redis: RedisConfig,
}

/// `[control_plane.database]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db`. Unset: the embedded store.
    pub url: Option<String>,
    /// Upper bound on pooled connections per replica.
    pub max_connections: u32,
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
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: 16,
        }
    }
}

impl ControlPlaneConfig {
    /// [`ControlPlaneConfig::drain_timeout_secs`] as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// [`ControlPlaneConfig::request_timeout_secs`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// A configuration for tests: loopback, port 0, embedded state.
    pub fn for_tests() -> Self {
        ControlPlaneConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_timeout_secs: 5,
            ..ControlPlaneConfig::default()
        }
    }
}

impl Validate for ControlPlaneConfig {
    fn validate(&self, v: &mut Validator) {
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
        v.section("database", &self.database);
        v.section("redis", &self.redis);
    }
}

impl Validate for DatabaseConfig {
    fn validate(&self, v: &mut Validator) {
        if let Some(url) = &self.url {
            v.check("url", check_url(url, &["postgres", "postgresql"]));
        }
        check_range(
            v,
            "max_connections",
            u64::from(self.max_connections),
            1,
            1000,
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

fn check_range(v: &mut Validator, key: &str, value: u64, min: u64, max: u64) {
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
        assert!(problems(&ControlPlaneConfig::default()).is_empty());
        assert!(problems(&ControlPlaneConfig::for_tests()).is_empty());
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
