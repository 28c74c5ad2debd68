//! Counting attempts per key in fixed windows, to slow down password
//! guessing. Two implementations behind [`RateLimiter`]: Redis (shared by
//! every replica, so an attacker cannot spread guesses across them) and an
//! in-process map (embedded mode, one replica).
//!
//! An attempt is counted *before* the slow password check, atomically with
//! the limit check, so many guesses sent at once cannot all slip in before
//! the first failure is recorded. A successful attempt is then forgiven.
//! A window opens at the first attempt and lasts `window`; attempts past
//! `limit` within it are refused, and callers answer 429 with `Retry-After`
//! set to what is left of the window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::{KeysInterface, LuaInterface};
use tokio::time::Instant;

/// Why the limiter could not answer. Callers fail open (and log), so an
/// unreachable Redis slows nobody down but also protects nobody: the
/// `cascade_rate_limiter_errors_total` metric makes that visible.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// Redis answered with an error.
    #[error("rate limiter backend failed")]
    Backend(#[source] fred::error::Error),
    /// Redis did not answer in time (down, or reconnecting: fred queues
    /// commands until it is back, which would hold the request).
    #[error("rate limiter backend did not answer within {0:?}")]
    Timeout(Duration),
}

/// How long a request waits for a Redis counter before going on unlimited.
const REDIS_DEADLINE: Duration = Duration::from_millis(300);

async fn bounded<T>(
    op: impl std::future::Future<Output = Result<T, fred::error::Error>>,
) -> Result<T, LimiterError> {
    match tokio::time::timeout(REDIS_DEADLINE, op).await {
        Ok(result) => result.map_err(LimiterError::Backend),
        Err(_) => Err(LimiterError::Timeout(REDIS_DEADLINE)),
    }
}

/// Attempt counting per key.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one attempt for `key` (opening a window of `window` if none is
    /// open). `Some(wait)`: the key is over `limit`; refuse the attempt.
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Option<Duration>, LimiterError>;
    /// Takes one attempt back (it succeeded).
    async fn forgive(&self, key: &str) -> Result<(), LimiterError>;
    /// Forgets `key` entirely.
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
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Option<Duration>, LimiterError> {
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
        Ok((entry.0 > limit).then(|| entry.1 - now))
    }

    async fn forgive(&self, key: &str) -> Result<(), LimiterError> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = windows.get_mut(key) {
            entry.0 = entry.0.saturating_sub(1);
        }
        Ok(())
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

/// Counts and checks in one step, and gives a counter without an expiry
/// (created by any race) its window, so no key can block forever.
/// Returns the milliseconds left when over the limit, else -1.
const HIT_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
if n > tonumber(ARGV[2]) then return ttl end
return -1
";

/// Decrements, deleting the key at zero (DECR on a missing key would leave
/// a negative counter with no expiry).
const FORGIVE_SCRIPT: &str = r"
local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
";

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Option<Duration>, LimiterError> {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
        let left: i64 = bounded(self.client.eval(
            HIT_SCRIPT,
            vec![redis_key(key)],
            vec![window_ms, i64::from(limit)],
        ))
        .await?;
        Ok(u64::try_from(left)
            .ok()
            .map(|ms| Duration::from_millis(ms.max(1))))
    }

    async fn forgive(&self, key: &str) -> Result<(), LimiterError> {
        let _: i64 = bounded(self.client.eval(
            FORGIVE_SCRIPT,
            vec![redis_key(key)],
            Vec::<i64>::new(),
        ))
        .await?;
        Ok(())
    }

    async fn reset(&self, key: &str) -> Result<(), LimiterError> {
        let _: i64 = bounded(self.client.del(redis_key(key))).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory_limiter_refuses_past_the_limit_and_releases_after_the_window() {
        let limiter = MemoryLimiter::default();
        let window = Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.hit("k", 3, window).await.unwrap(), None);
        }
        let blocked = limiter
            .hit("k", 3, window)
            .await
            .unwrap()
            .expect("over the limit");
        assert!(blocked <= window && blocked > Duration::from_secs(59));
        assert_eq!(limiter.hit("other", 3, window).await.unwrap(), None);

        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            limiter.hit("k", 3, window).await.unwrap(),
            None,
            "a new window"
        );
    }

    #[tokio::test]
    async fn forgiven_attempts_do_not_count_and_reset_forgets() {
        let limiter = MemoryLimiter::default();
        let window = Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(limiter.hit("k", 1, window).await.unwrap(), None);
            limiter.forgive("k").await.unwrap();
        }
        limiter.hit("k", 1, window).await.unwrap();
        assert!(limiter.hit("k", 1, window).await.unwrap().is_some());
        limiter.reset("k").await.unwrap();
        assert_eq!(limiter.hit("k", 1, window).await.unwrap(), None);
    }
}
