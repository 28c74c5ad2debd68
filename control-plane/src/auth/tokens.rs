//! Access tokens (short-lived EdDSA JWTs) and refresh tokens (random,
//! opaque, stored only as SHA-256 hashes).
//!
//! One Ed25519 key signs everything the control plane issues; its public
//! half is published at `/.well-known/jwks.json` so edges (and anyone) can
//! verify tokens without a shared secret.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::keyring::KeyRing;
use crate::store::SigningKeyRecord;

/// Issuer of every token we sign.
pub const ISSUER: &str = "cascade";
/// Audience of API access tokens (join tokens for edges use another).
pub const ACCESS_AUDIENCE: &str = "cascade-api";
/// Bytes of randomness in a refresh token.
const REFRESH_TOKEN_BYTES: usize = 32;

/// Why a key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PEM file could not be read.
    #[error("cannot read the signing key file")]
    Read(#[source] std::io::Error),
    /// The bytes are not an Ed25519 PKCS#8 private key.
    #[error("the signing key is not an Ed25519 private key in PKCS#8 form")]
    Invalid,
}

/// The Ed25519 key that signs tokens.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_key: Vec<u8>,
}

impl SigningKey {
    /// A fresh random key, as a record to store.
    pub fn generate(now: OffsetDateTime) -> Result<SigningKeyRecord, KeyError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| KeyError::Invalid)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Invalid)?;
        let public_key = pair.public_key().as_ref().to_vec();
        Ok(SigningKeyRecord {
            kid: key_id(&public_key),
            private_pkcs8: pkcs8.as_ref().to_vec(),
            public_key,
            created_at: now,
        })
    }

    /// Loads a stored key.
    pub fn from_record(record: &SigningKeyRecord) -> Result<Self, KeyError> {
        Self::from_pkcs8(&record.private_pkcs8)
    }

    /// Loads a PKCS#8 PEM file (`openssl genpkey -algorithm ed25519`).
    pub fn from_pem_file(path: &std::path::Path) -> Result<Self, KeyError> {
        let pem = std::fs::read_to_string(path).map_err(KeyError::Read)?;
        let body: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|_| KeyError::Invalid)?;
        Self::from_pkcs8(&der)
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(der))
            .map_err(|_| KeyError::Invalid)?;
        let public_key = pair.public_key().as_ref().to_vec();
        Ok(SigningKey {
            kid: key_id(&public_key),
            encoding: EncodingKey::from_ed_der(der),
            decoding: DecodingKey::from_ed_der(&public_key),
            public_key,
        })
    }

    /// The key id published in JWKS and token headers.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// A stable key id: the first 8 bytes of the public key's SHA-256.
fn key_id(public_key: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key);
    URL_SAFE_NO_PAD.encode(&digest.as_ref()[..8])
}

/// What an access token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user.
    pub sub: Uuid,
    /// The login (refresh-token family) it was issued under.
    pub sid: Uuid,
    /// Issuer ([`ISSUER`]).
    pub iss: String,
    /// Audience ([`ACCESS_AUDIENCE`]).
    pub aud: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
}

/// Why a presented access token was refused (all mean 401).
#[derive(Debug, thiserror::Error)]
#[error("invalid access token: {0}")]
pub struct TokenError(#[from] jsonwebtoken::errors::Error);

/// Issues and checks tokens.
#[derive(Clone)]
pub struct Tokens {
    ring: std::sync::Arc<std::sync::RwLock<KeyRing>>,
    access_ttl: time::Duration,
    validation: Validation,
    revoked: std::sync::Arc<RevokedLogins>,
}

/// Logins revoked while access tokens issued under them may still be
/// unexpired: a token of one of them is refused at once instead of at its
/// expiry. Each family is kept one access-token lifetime (no token of it
/// can outlive that), so the set stays as small as the revocations of the
/// last `access_ttl`. Fed by this replica's own revocations and, through
/// the gateway bus, by the other replicas' (a replica that misses a bus
/// message honours the token until it expires, as before).
#[derive(Debug, Default)]
pub struct RevokedLogins {
    families: std::sync::Mutex<std::collections::HashMap<Uuid, std::time::Instant>>,
}

impl RevokedLogins {
    /// Refuses `families`' access tokens from now until `keep` from now.
    pub fn insert(&self, families: impl IntoIterator<Item = Uuid>, keep: std::time::Duration) {
        let now = std::time::Instant::now();
        let until = now + keep;
        let mut map = self.families.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, expires| *expires > now);
        for family in families {
            map.insert(family, until);
        }
    }

    /// Whether `family` was revoked (and its tokens may still be alive).
    pub fn contains(&self, family: Uuid) -> bool {
        let map = self.families.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&family)
            .is_some_and(|expires| *expires > std::time::Instant::now())
    }
}

impl Tokens {
    /// Tokens signed by the ring's current key, access tokens living
    /// `access_ttl`.
    pub fn new(ring: KeyRing, access_ttl: std::time::Duration) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[ACCESS_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Replicas' clocks differ a little; more leeway would stretch the
        // lifetime of a stolen token.
        validation.leeway = 5;
        Tokens {
            ring: std::sync::Arc::new(std::sync::RwLock::new(ring)),
            access_ttl: time::Duration::try_from(access_ttl).unwrap_or(time::Duration::minutes(15)),
            validation,
            revoked: std::sync::Arc::default(),
        }
    }

    /// Refuses the access tokens of `families` from now on (they were
    /// revoked in the store).
    pub fn revoke(&self, families: impl IntoIterator<Item = Uuid>) {
        // Leeway: a token is accepted a few seconds past its `exp`.
        let keep = std::time::Duration::from_secs(
            u64::try_from(self.access_ttl.whole_seconds()).unwrap_or(0) + 60,
        );
        self.revoked.insert(families, keep);
    }

    /// Seconds an access token lives.
    pub fn access_ttl_secs(&self) -> i64 {
        self.access_ttl.whole_seconds()
    }

    /// A signed access token for `user` under login `family`.
    pub fn issue_access(&self, user: Uuid, family: Uuid, now: OffsetDateTime) -> String {
        let claims = AccessClaims {
            sub: user,
            sid: family,
            iss: ISSUER.to_owned(),
            aud: ACCESS_AUDIENCE.to_owned(),
            iat: now.unix_timestamp(),
            exp: (now + self.access_ttl).unix_timestamp(),
        };
        self.sign(&claims, now)
    }

    /// Signs `claims` with the key that signs at `now`.
    fn sign(&self, claims: &impl Serialize, now: OffsetDateTime) -> String {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        let key = ring.signer(now);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .expect("signing with a loaded Ed25519 key cannot fail")
    }

    /// The claims of a valid, unexpired access token of ours, signed by any
    /// key of the ring (named by its `kid`).
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| ring.verifier(kid))
            .ok_or_else(|| {
                jsonwebtoken::errors::Error::from(jsonwebtoken::errors::ErrorKind::InvalidSignature)
            })?;
        let claims =
            jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &self.validation)?.claims;
        if self.revoked.contains(claims.sid) {
            return Err(TokenError(
                jsonwebtoken::errors::ErrorKind::InvalidToken.into(),
            ));
        }
        Ok(claims)
    }

    /// A copy of the key ring (for the rotation task).
    pub fn ring(&self) -> KeyRing {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the key ring (after the rotation task re-read the store).
    pub fn set_ring(&self, ring: KeyRing) {
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = ring;
    }

    /// A signed join token (for an edge; see `edge_node::join_token`).
    pub fn issue_join(&self, claims: &protocol::calls::JoinClaims) -> String {
        let now = OffsetDateTime::from_unix_timestamp(claims.iat)
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        self.sign(claims, now)
    }

    /// The public keys (every key not retired), as a JWK Set.
    pub fn jwks(&self) -> serde_json::Value {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<serde_json::Value> = ring
            .published(OffsetDateTime::now_utc())
            .into_iter()
            .map(|key| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": key.kid,
                    "x": URL_SAFE_NO_PAD.encode(&key.public_key),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// A new refresh token and the hash to store.
pub fn new_refresh_token() -> (String, Vec<u8>) {
    let mut bytes = [0u8; REFRESH_TOKEN_BYTES];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source is available");
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

/// The stored form of a refresh token.
pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tokens() -> Tokens {
        let record = SigningKey::generate(OffsetDateTime::now_utc()).unwrap();
        Tokens::new(
            KeyRing::fixed(SigningKey::from_record(&record).unwrap(), record.created_at),
            Duration::from_secs(900),
        )
    }

    #[test]
    fn access_tokens_round_trip_and_carry_the_key_id() {
        let tokens = tokens();
        let (user, family) = (Uuid::now_v7(), Uuid::now_v7());
        let token = tokens.issue_access(user, family, OffsetDateTime::now_utc());
        let claims = tokens.verify_access(&token).unwrap();
        assert_eq!((claims.sub, claims.sid), (user, family));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        let kid = tokens
            .ring()
            .signer(OffsetDateTime::now_utc())
            .kid()
            .to_owned();
        assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
        assert_eq!(tokens.jwks()["keys"][0]["kid"], kid.as_str());
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_refused() {
        let tokens = tokens();
        let (user, family) = (Uuid::now_v7(), Uuid::now_v7());
        let old = OffsetDateTime::now_utc() - time::Duration::hours(1);
        assert!(
            tokens
                .verify_access(&tokens.issue_access(user, family, old))
                .is_err()
        );

        let good = tokens.issue_access(user, family, OffsetDateTime::now_utc());
        let mut tampered = good.clone();
        tampered.insert(good.len() / 2, 'x');
        assert!(tokens.verify_access(&tampered).is_err());
        assert!(tokens.verify_access("not.a.jwt").is_err());
        assert!(tokens.verify_access("").is_err());

        let other = super::tests::tokens();
        assert!(other.verify_access(&good).is_err(), "another key's token");
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, hash_a) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(hash_refresh_token(&a), hash_a);
        assert_eq!(hash_a.len(), 32);
    }
}
