//! Counting failures per key in fixed windows, to slow down password
//! guessing. Two implementations behind [`RateLimiter`]: Redis (shared by
//! every replica, so an attacker cannot spread guesses across them) and an
//! in-process map (embedded mode, one replica).
//!
//! A window starts at the first failure and lasts `window`; once a key has
//! `limit` failures it is refused until the window ends, and callers answer
//! 429 with `Retry-After` set to what is left of it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Expiration, KeysInterface, SetOptions};
use tokio::time::Instant;

/// Why the limiter could not answer. Callers fail open (and log), so an
/// unreachable Redis slows nobody down but also protects nobody: the
/// `cascade_rate_limiter_errors_total` metric makes that visible.
#[derive(Debug, thiserror::Error)]
#[error("rate limiter backend failed")]
pub struct LimiterError(#[source] pub fred::error::Error);

/// Failure counting per key.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// If `key` already has `limit` failures in its window, how long until
    /// the window ends.
    async fn blocked_for(&self, key: &str, limit: u32) -> Result<Option<Duration>, LimiterError>;
    /// Counts one failure for `key`, starting a window of `window` if none is
    /// open. Returns the failures counted in the window so far.
    async fn record_failure(&self, key: &str, window: Duration) -> Result<u32, LimiterError>;
    /// Forgets `key` (after a successful login).
    async fn reset(&self, key: &str) -> Result<(), LimiterError>;
}

/// In-process limiter for a single replica.
#[derive(Default)]
pub struct MemoryLimiter {
    windows: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Above this many keys, expired windows are swept on the next write, so a
/// flood of distinct keys cannot grow memory without bound.
const SWEEP_ABOVE: usize = 10_000;

#[async_trait]
impl RateLimiter for MemoryLimiter {
    async fn blocked_for(&self, key: &str, limit: u32) -> Result<Option<Duration>, LimiterError> {
        let now = Instant::now();
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match windows.get(key) {
            Some(&(count, ends)) if ends > now && count >= limit => Some(ends - now),
            _ => None,
        })
    }

    async fn record_failure(&self, key: &str, window: Duration) -> Result<u32, LimiterError> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > SWEEP_ABOVE {
            windows.retain(|_, (_, ends)| *ends > now);
        }
        let entry = windows.entry(key.to_owned()).or_insert((0, now + window));
        if entry.1 <= now {
            *entry = (0, now + window);
        }
        entry.0 = entry.0.saturating_add(1);
        Ok(entry.0)
    }

    async fn reset(&self, key: &str) -> Result<(), LimiterError> {
        self.windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        Ok(())
    }
}

/// Limiter shared by replicas through Redis.
pub struct RedisLimiter {
    client: fred::clients::Client,
}

impl RedisLimiter {
    /// Uses `client` (already connecting) for all counters.
    pub fn new(client: fred::clients::Client) -> Self {
        RedisLimiter { client }
    }
}

/// Namespaces our keys in a Redis that may be shared.
fn redis_key(key: &str) -> String {
    format!("cascade:ratelimit:{key}")
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn blocked_for(&self, key: &str, limit: u32) -> Result<Option<Duration>, LimiterError> {
        let key = redis_key(key);
        let count: Option<u32> = self.client.get(&key).await.map_err(LimiterError)?;
        if count.unwrap_or(0) < limit {
            return Ok(None);
        }
        let ttl_ms: i64 = self.client.pttl(&key).await.map_err(LimiterError)?;
        // -1 (no expiry) cannot happen with our writes; treat it as a fresh
        // second rather than blocking forever.
        Ok(Some(Duration::from_millis(
            u64::try_from(ttl_ms).unwrap_or(1000).max(1),
        )))
    }

    async fn record_failure(&self, key: &str, window: Duration) -> Result<u32, LimiterError> {
        let key = redis_key(key);
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        // SET NX with an expiry opens the window exactly once; INCR keeps the
        // expiry. A crash between the two leaves a counter that still expires.
        let _: Option<String> = self
            .client
            .set(
                &key,
                0,
                Some(Expiration::PX(window_ms)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(LimiterError)?;
        let count: i64 = self.client.incr(&key).await.map_err(LimiterError)?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    async fn reset(&self, key: &str) -> Result<(), LimiterError> {
        let _: i64 = self
            .client
            .del(redis_key(key))
            .await
            .map_err(LimiterError)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory_limiter_blocks_at_the_limit_and_releases_after_the_window() {
        let limiter = MemoryLimiter::default();
        let window = Duration::from_secs(60);
        for expected in 1..=3 {
            assert_eq!(limiter.blocked_for("k", 3).await.unwrap(), None);
            assert_eq!(limiter.record_failure("k", window).await.unwrap(), expected);
        }
        let blocked = limiter.blocked_for("k", 3).await.unwrap().expect("blocked");
        assert!(blocked <= window && blocked > Duration::from_secs(59));
        assert_eq!(limiter.blocked_for("other", 3).await.unwrap(), None);

        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(limiter.blocked_for("k", 3).await.unwrap(), None);
        assert_eq!(
            limiter.record_failure("k", window).await.unwrap(),
            1,
            "a new window"
        );
    }

    #[tokio::test]
    async fn memory_limiter_reset_forgets_the_key() {
        let limiter = MemoryLimiter::default();
        limiter
            .record_failure("k", Duration::from_secs(60))
            .await
            .unwrap();
        limiter.reset("k").await.unwrap();
        assert_eq!(limiter.blocked_for("k", 1).await.unwrap(), None);
    }
}
