//! Rotation of the token signing key (pure: keys and `now` in, decisions
//! out). Every replica keeps the same ring, read from the store:
//!
//! - a new key is created `publish_ahead` before the current one has
//!   signed for `rotate_every`, and published in JWKS at once;
//! - it starts signing only `publish_ahead` after its creation, by which
//!   time every replica (refreshing more often than that) publishes it and
//!   an edge that fetched JWKS meanwhile knows it;
//! - an old key stays published, so its tokens keep verifying, until
//!   `verify_for` (the longest token lifetime plus leeway) after the key
//!   that replaced it started signing; then it is retired.

use std::time::Duration;

use time::OffsetDateTime;

use super::SigningKey;

/// When keys rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long a key signs before the next one takes over.
    pub rotate_every: Duration,
    /// How long a new key is published before it signs.
    pub publish_ahead: Duration,
    /// How long a replaced key keeps verifying.
    pub verify_for: Duration,
}

impl RotationPolicy {
    /// The policy for keys rotating every `rotate_every`, whose tokens live
    /// at most `longest_token`. Replicas refresh their ring every
    /// [`RotationPolicy::refresh_every`], and a key is published for at
    /// least two refreshes before it signs.
    pub fn new(rotate_every: Duration, longest_token: Duration) -> Self {
        let refresh = Self::refresh_for(rotate_every);
        RotationPolicy {
            rotate_every,
            publish_ahead: (rotate_every / 4).clamp(refresh * 2, Duration::from_secs(3600)),
            verify_for: longest_token + Duration::from_secs(60),
        }
    }

    fn refresh_for(rotate_every: Duration) -> Duration {
        (rotate_every / 20).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// How often a replica re-reads the ring (and rotates when due).
    pub fn refresh_every(&self) -> Duration {
        Self::refresh_for(self.rotate_every)
    }
}

/// One key of the ring.
#[derive(Clone)]
pub struct RingKey {
    /// The key.
    pub key: SigningKey,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

/// The keys in use, oldest first.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<RingKey>,
    policy: Option<RotationPolicy>,
}

fn after(at: OffsetDateTime, d: Duration) -> OffsetDateTime {
    at + time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

impl KeyRing {
    /// A ring of one fixed key that never rotates (a configured key file).
    pub fn fixed(key: SigningKey, created_at: OffsetDateTime) -> Self {
        KeyRing {
            keys: vec![RingKey { key, created_at }],
            policy: None,
        }
    }

    /// A rotating ring. `keys` must not be empty (the store seeds it).
    pub fn rotating(mut keys: Vec<RingKey>, policy: RotationPolicy) -> Self {
        keys.sort_by_key(|k| k.created_at);
        KeyRing {
            keys,
            policy: Some(policy),
        }
    }

    /// The policy, unless the key is fixed.
    pub fn policy(&self) -> Option<RotationPolicy> {
        self.policy
    }

    /// The key that signs at `now`: the newest one published long enough,
    /// or the oldest if none is (a brand-new ring).
    pub fn signer(&self, now: OffsetDateTime) -> &SigningKey {
        let ahead = self.policy.map_or(Duration::ZERO, |p| p.publish_ahead);
        let ready = self
            .keys
            .iter()
            .rev()
            .find(|k| after(k.created_at, ahead) <= now);
        &ready
            .or(self.keys.first())
            .expect("a ring is never empty")
            .key
    }

    /// A key that verifies, by id.
    pub fn verifier(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().map(|k| &k.key).find(|k| k.kid() == kid)
    }

    /// Every key not retired at `now` (what JWKS publishes).
    pub fn published(&self, now: OffsetDateTime) -> Vec<&SigningKey> {
        let retired = self.retired(now);
        self.keys
            .iter()
            .map(|k| &k.key)
            .filter(|k| !retired.contains(&k.kid()))
            .collect()
    }

    /// Whether a new key must be created now.
    pub fn needs_new_key(&self, now: OffsetDateTime) -> bool {
        let Some(policy) = self.policy else {
            return false;
        };
        let Some(newest) = self.keys.last() else {
            return true;
        };
        // The newest starts signing at created + ahead and must be replaced
        // rotate_every later; its successor is created ahead of that.
        after(newest.created_at, policy.rotate_every) <= now
    }

    /// Keys whose successor has signed for longer than `verify_for`.
    pub fn retired(&self, now: OffsetDateTime) -> Vec<&str> {
        let Some(policy) = self.policy else {
            return Vec::new();
        };
        self.keys
            .windows(2)
            .filter(|pair| {
                let successor_signs = after(pair[1].created_at, policy.publish_ahead);
                after(successor_signs, policy.verify_for) <= now
            })
            .map(|pair| pair[0].key.kid())
            .collect()
    }

    /// The created time of the newest key.
    pub fn newest_created_at(&self) -> Option<OffsetDateTime> {
        self.keys.last().map(|k| k.created_at)
    }

    /// When the newest key must have a successor (rotating rings only): a
    /// ring still without one well after this has stopped rotating.
    pub fn rotation_due(&self) -> Option<OffsetDateTime> {
        let policy = self.policy?;
        Some(after(self.keys.last()?.created_at, policy.rotate_every))
    }

    /// The created time of the key that signs at `now`.
    pub fn signer_created_at(&self, now: OffsetDateTime) -> OffsetDateTime {
        let kid = self.signer(now).kid();
        self.keys
            .iter()
            .find(|k| k.key.kid() == kid)
            .map_or(now, |k| k.created_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(created: OffsetDateTime) -> RingKey {
        let record = SigningKey::generate(created).unwrap();
        RingKey {
            key: SigningKey::from_record(&record).unwrap(),
            created_at: created,
        }
    }

    #[test]
    fn a_key_is_published_before_it_signs_and_verifies_until_its_tokens_expire() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let day = Duration::from_secs(86_400);
        let policy = RotationPolicy::new(30 * day, Duration::from_secs(900));
        assert_eq!(policy.publish_ahead, Duration::from_secs(3600));
        assert_eq!(policy.refresh_every(), Duration::from_secs(60));
        let first = key(t0);
        let ring = KeyRing::rotating(vec![first.clone()], policy);
        assert_eq!(
            ring.signer(t0).kid(),
            first.key.kid(),
            "a lone new key signs"
        );
        assert!(!ring.needs_new_key(after(t0, 29 * day)));
        assert!(ring.needs_new_key(after(t0, 30 * day)));

        let created = after(t0, 30 * day);
        let second = key(created);
        let ring = KeyRing::rotating(vec![second.clone(), first.clone()], policy);
        // Published at once, signing an hour later.
        assert_eq!(ring.published(created).len(), 2);
        assert_eq!(ring.signer(created).kid(), first.key.kid());
        let switch = after(created, Duration::from_secs(3600));
        assert_eq!(ring.signer(switch).kid(), second.key.kid());
        // The old key verifies its last tokens (15 min + leeway), then retires.
        assert!(ring.verifier(first.key.kid()).is_some());
        assert!(
            ring.retired(after(switch, Duration::from_secs(900)))
                .is_empty()
        );
        assert_eq!(
            ring.retired(after(switch, Duration::from_secs(960))),
            vec![first.key.kid()]
        );
        assert_eq!(
            ring.published(after(switch, Duration::from_secs(960)))
                .len(),
            1
        );
        assert!(!ring.needs_new_key(switch));
    }

    #[test]
    fn a_fixed_key_never_rotates() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let k = key(t0);
        let ring = KeyRing::fixed(k.key.clone(), t0);
        let later = after(t0, Duration::from_secs(10 * 365 * 86_400));
        assert!(!ring.needs_new_key(later));
        assert_eq!(ring.signer(later).kid(), k.key.kid());
        assert_eq!(ring.published(later).len(), 1);
    }
}
