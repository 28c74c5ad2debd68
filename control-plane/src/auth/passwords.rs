//! Argon2id hashing and the password policy.
//!
//! Hashing costs tens of milliseconds of CPU by design, so it runs on the
//! blocking pool, never on the async workers that serve other requests.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::config::AuthConfig;

/// Hashes and checks passwords with the configured Argon2id parameters.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    min_score: u8,
    /// A real hash of a random password, verified against when a login names
    /// an unknown account, so response time does not reveal which accounts
    /// exist.
    decoy: String,
    /// Hashes running at once. Each one holds `argon2_memory_kib` of memory,
    /// so an unauthenticated login flood must queue here rather than run
    /// hundreds of hashes on the blocking pool at once.
    permits: Arc<Semaphore>,
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Argon2 rejected its parameters or input.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The blocking task was cancelled (shutdown).
    #[error("password hashing was interrupted")]
    Interrupted,
}

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted (hashing cost grows with length).
pub const MAX_PASSWORD_CHARS: usize = 256;

impl Passwords {
    /// Hashing with the parameters of `config` (validated at start-up).
    pub fn new(config: &AuthConfig) -> Result<Self, PasswordError> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            None,
        )
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut passwords = Passwords {
            params,
            min_score: config.min_password_score,
            decoy: String::new(),
            permits: Arc::new(Semaphore::new(cores.max(2))),
        };
        passwords.decoy = passwords.hash_blocking("decoy password that nobody has")?;
        Ok(passwords)
    }

    fn hasher(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    fn hash_blocking(&self, password: &str) -> Result<String, PasswordError> {
        self.hasher()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    }

    /// The PHC string (`$argon2id$v=19$m=...`) of `password`, with a fresh salt.
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Interrupted)?;
        let this = self.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || this.hash_blocking(&password))
            .await
            .map_err(|_| PasswordError::Interrupted)?
    }

    /// Whether `password` matches `phc` (`None`: check against the decoy and
    /// return false, taking the same time as a real check).
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let hasher = self.hasher();
        let known = phc.is_some();
        let phc = phc.unwrap_or(&self.decoy).to_owned();
        let password = password.to_owned();
        let matched = tokio::task::spawn_blocking(move || {
            // The parameters stored in the hash are used, so hashes made
            // with older parameters keep verifying after a config change.
            hasher
                .verify_password(password.as_bytes(), phc.as_str())
                .is_ok()
        })
        .await
        .unwrap_or(false);
        known && matched
    }

    /// Checks a new password against the policy: length, and a zxcvbn score
    /// of at least the configured minimum, counting the user's own names and
    /// e-mail as guessable.
    pub fn check_policy(&self, password: &str, user_inputs: &[&str]) -> Result<(), String> {
        let chars = password.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(format!("must be at least {MIN_PASSWORD_CHARS} characters"));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(format!("must be at most {MAX_PASSWORD_CHARS} characters"));
        }
        let estimate = zxcvbn::zxcvbn(password, user_inputs);
        let score = estimate.score() as u8;
        if score < self.min_score {
            let hint = estimate
                .feedback()
                .and_then(|f| f.warning().map(|w| w.to_string()))
                .unwrap_or_else(|| "it is too easy to guess".to_owned());
            return Err(format!(
                "is too weak (strength {score} of 4, need {}): {hint}",
                self.min_score
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Passwords {
        let config = AuthConfig {
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            ..AuthConfig::default()
        };
        Passwords::new(&config).unwrap()
    }

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        let passwords = cheap();
        let a = passwords
            .hash("correct horse battery staple")
            .await
            .unwrap();
        let b = passwords
            .hash("correct horse battery staple")
            .await
            .unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(
            passwords
                .verify("correct horse battery staple", Some(&a))
                .await
        );
        assert!(
            !passwords
                .verify("correct horse battery stapl", Some(&a))
                .await
        );
        assert!(!passwords.verify("anything", None).await);
        assert!(!passwords.verify("anything", Some("not a phc string")).await);
    }

    #[tokio::test]
    async fn production_parameters_are_the_owasp_ones() {
        let passwords = Passwords::new(&AuthConfig::default()).unwrap();
        let hash = passwords
            .hash("correct horse battery staple")
            .await
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
    }

    #[test]
    fn policy_rejects_short_common_and_personal_passwords() {
        let passwords = cheap();
        assert!(
            passwords
                .check_policy("short", &[])
                .unwrap_err()
                .contains("at least 10")
        );
        assert!(
            passwords
                .check_policy("password123", &[])
                .unwrap_err()
                .contains("too weak")
        );
        assert!(passwords.check_policy("qwertyuiop", &[]).is_err());
        assert!(
            passwords
                .check_policy("aliceexample2024", &["aliceexample"])
                .is_err()
        );
        assert!(passwords.check_policy("plum-ferry-quartz-91", &[]).is_ok());
        assert!(passwords.check_policy(&"x".repeat(300), &[]).is_err());
    }
}
