//! The real servers tests talk to. `scripts/test` starts (or installs) them
//! and exports their URLs; a developer may point these variables elsewhere.

/// Environment variable with a Postgres URL whose user may create databases.
pub const DATABASE_URL_VAR: &str = "TEST_DATABASE_URL";
/// Environment variable with a Redis URL tests may write to.
pub const REDIS_URL_VAR: &str = "TEST_REDIS_URL";
/// Environment variable with the URL of an S3-protocol server (any
/// credentials; tests create their own buckets).
pub const S3_URL_VAR: &str = "TEST_S3_URL";

/// The S3 server URL for tests, if configured (see [`required_or_skip`]).
pub fn s3_url() -> Option<String> {
    url_from(S3_URL_VAR)
}

/// The Postgres URL for tests, if configured (see [`required_or_skip`]).
pub fn postgres_url() -> Option<String> {
    url_from(DATABASE_URL_VAR)
}

/// The Redis URL for tests, if configured (see [`required_or_skip`]).
pub fn redis_url() -> Option<String> {
    url_from(REDIS_URL_VAR)
}

fn url_from(var: &str) -> Option<String> {
    let value = std::env::var(var).ok().filter(|v| !v.is_empty());
    required_or_skip(value, var)
}

/// Returns `found`, or — when it is missing — panics under CI (a server test
/// must never be skipped there) and otherwise prints that the test is being
/// skipped and why, so a local `cargo test` without servers stays usable.
pub fn required_or_skip<T>(found: Option<T>, what: &str) -> Option<T> {
    if found.is_none() {
        assert!(
            !crate::in_ci(),
            "{what} is required under CI=true; scripts/test provides it"
        );
        eprintln!("SKIPPED: {what} is not available; run scripts/test to provide it");
    }
    found
}
