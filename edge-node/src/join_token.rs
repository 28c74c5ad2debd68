//! Verifying join tokens without calling the control plane.
//!
//! The control plane signs join tokens with Ed25519 (JWT `alg: EdDSA`, the
//! key id in `kid`) and publishes its public keys at
//! `/.well-known/jwks.json`. An edge loads that set (and reloads it when a
//! token names a key it does not know yet: keys rotate) and checks each
//! token here: signature by a known key, `alg` exactly EdDSA (so `none` or
//! an HMAC "signed" with the public key is refused), issuer, audience
//! (`cascade-edge`: an API access token is not a join token), expiry, and
//! that the token names *this* node.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use protocol::calls::{ISSUER, JOIN_AUDIENCE, JoinClaims};
use serde::Deserialize;

/// Seconds of clock difference tolerated between control plane and edge.
const LEEWAY_SECS: u64 = 5;

/// Why a JWK Set could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not JSON of the JWK Set shape.
    #[error("the JWK Set is malformed: {0}")]
    Malformed(String),
    /// It holds no Ed25519 key.
    #[error("the JWK Set has no Ed25519 signing key")]
    NoKeys,
}

/// Why a join token was refused. Edges answer every one of these with 401;
/// the variants exist for logs and metrics.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinTokenError {
    /// Not a JWT, or its header is not ours (`alg` other than EdDSA,
    /// including `none`).
    #[error("malformed token or unsupported algorithm")]
    Malformed,
    /// The header names no key, or one this edge does not know (yet).
    #[error("unknown signing key {0:?}")]
    UnknownKey(Option<String>),
    /// Bad signature, wrong issuer or audience, expired, or missing claims.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Valid, but issued for another edge node.
    #[error("token is for node {0:?}, not this one")]
    WrongNode(String),
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    x: Option<String>,
}

/// Checks join tokens for one edge node.
#[derive(Clone)]
pub struct JoinTokenVerifier {
    node_id: String,
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for JoinTokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokenVerifier")
            .field("node_id", &self.node_id)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl JoinTokenVerifier {
    /// A verifier for `node_id` trusting the Ed25519 keys of a JWK Set (the
    /// body of `/.well-known/jwks.json`). Keys of other types are skipped.
    pub fn from_jwks(node_id: impl Into<String>, jwks: &[u8]) -> Result<Self, JwksError> {
        let set: Jwks =
            serde_json::from_slice(jwks).map_err(|e| JwksError::Malformed(e.to_string()))?;
        let mut keys = HashMap::new();
        for jwk in set.keys {
            let (Some(kid), Some(x)) = (jwk.kid, jwk.x) else {
                continue;
            };
            if jwk.kty != "OKP" || jwk.crv.as_deref() != Some("Ed25519") {
                continue;
            }
            let public = URL_SAFE_NO_PAD
                .decode(x.trim_end_matches('='))
                .map_err(|_| JwksError::Malformed(format!("key {kid}: x is not base64url")))?;
            if public.len() != 32 {
                return Err(JwksError::Malformed(format!(
                    "key {kid}: an Ed25519 public key has 32 bytes, not {}",
                    public.len()
                )));
            }
            keys.insert(kid, DecodingKey::from_ed_der(&public));
        }
        if keys.is_empty() {
            return Err(JwksError::NoKeys);
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[JOIN_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Ok(JoinTokenVerifier {
            node_id: node_id.into(),
            keys,
            validation,
        })
    }

    /// The claims of a token that is valid for this node now.
    pub fn verify(&self, token: &str) -> Result<JoinClaims, JoinTokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JoinTokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(JoinTokenError::Malformed);
        }
        let key = header
            .kid
            .as_ref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or_else(|| JoinTokenError::UnknownKey(header.kid.clone()))?;
        let claims = jsonwebtoken::decode::<JoinClaims>(token, key, &self.validation)
            .map_err(|e| JoinTokenError::Invalid(e.to_string()))?
            .claims;
        if claims.node != self.node_id {
            return Err(JoinTokenError::WrongNode(claims.node));
        }
        Ok(claims)
    }

    /// Whether the set has a key with this id (an edge refetches the JWK
    /// Set when a token names one it lacks).
    pub fn knows_key(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use jsonwebtoken::{EncodingKey, Header};
    use protocol::calls::Grants;
    use std::time::{SystemTime, UNIX_EPOCH};

    struct Key {
        kid: String,
        encoding: EncodingKey,
        public: Vec<u8>,
    }

    fn key(kid: &str) -> Key {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Key {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            public: pair.public_key().as_ref().to_vec(),
        }
    }

    fn jwks(keys: &[&Key]) -> Vec<u8> {
        let keys: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                                   "kid": k.kid, "x": URL_SAFE_NO_PAD.encode(&k.public)})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn claims() -> JoinClaims {
        JoinClaims {
            iss: ISSUER.into(),
            aud: JOIN_AUDIENCE.into(),
            sub: uuid::Uuid::now_v7(),
            call: uuid::Uuid::now_v7(),
            device: "phone".into(),
            session: uuid::Uuid::now_v7(),
            node: "edge-1".into(),
            region: "eu".into(),
            grants: Grants {
                publish_audio: true,
                publish_video: true,
                publish_screen: true,
                subscribe: true,
                data: true,
            },
            video_codec: Default::default(),
            iat: now(),
            exp: now() + 60,
            jti: uuid::Uuid::now_v7(),
        }
    }

    fn sign(key: &Key, claims: &JoinClaims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
    }

    #[test]
    fn a_valid_token_for_this_node_verifies_with_any_published_key() {
        let (old, new) = (key("old"), key("new"));
        let verifier = JoinTokenVerifier::from_jwks("edge-1", &jwks(&[&old, &new])).unwrap();
        let claims = claims();
        assert_eq!(verifier.verify(&sign(&new, &claims)).unwrap(), claims);
        assert_eq!(verifier.verify(&sign(&old, &claims)).unwrap(), claims);
    }

    #[test]
    fn tampered_expired_foreign_and_misaddressed_tokens_are_refused() {
        let k = key("k1");
        let verifier = JoinTokenVerifier::from_jwks("edge-1", &jwks(&[&k])).unwrap();

        // Tampered: the payload changed after signing (another call id).
        let good = sign(&k, &claims());
        let parts: Vec<&str> = good.split('.').collect();
        let mut forged = claims();
        forged.call = uuid::Uuid::now_v7();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(matches!(
            verifier.verify(&tampered),
            Err(JoinTokenError::Invalid(_))
        ));

        // Expired (beyond the leeway).
        let mut expired = claims();
        expired.iat = now() - 600;
        expired.exp = now() - 60;
        assert!(matches!(
            verifier.verify(&sign(&k, &expired)),
            Err(JoinTokenError::Invalid(_))
        ));

        // Wrong audience: an API access token's audience.
        let mut api = claims();
        api.aud = "cascade-api".into();
        assert!(matches!(
            verifier.verify(&sign(&k, &api)),
            Err(JoinTokenError::Invalid(_))
        ));

        // Wrong issuer.
        let mut foreign = claims();
        foreign.iss = "someone-else".into();
        assert!(verifier.verify(&sign(&k, &foreign)).is_err());

        // Another node's token.
        let mut elsewhere = claims();
        elsewhere.node = "edge-2".into();
        assert_eq!(
            verifier.verify(&sign(&k, &elsewhere)),
            Err(JoinTokenError::WrongNode("edge-2".into()))
        );

        // Signed by a key that is not published.
        let stranger = key("k1");
        assert!(matches!(
            verifier.verify(&sign(&stranger, &claims())),
            Err(JoinTokenError::Invalid(_))
        ));
        let unknown = key("k9");
        assert_eq!(
            verifier.verify(&sign(&unknown, &claims())),
            Err(JoinTokenError::UnknownKey(Some("k9".into())))
        );
    }

    #[test]
    fn alg_none_and_hmac_confusion_are_refused() {
        let k = key("k1");
        let verifier = JoinTokenVerifier::from_jwks("edge-1", &jwks(&[&k])).unwrap();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        assert_eq!(
            verifier.verify(&format!("{none_header}.{payload}.")),
            Err(JoinTokenError::Malformed)
        );
        // HS256 keyed with the public key bytes: the classic confusion.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let hmac =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&k.public)).unwrap();
        assert_eq!(verifier.verify(&hmac), Err(JoinTokenError::Malformed));
        for junk in ["", "a.b.c", "not a token", "...."] {
            assert!(verifier.verify(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn bad_key_sets_are_refused() {
        assert!(matches!(
            JoinTokenVerifier::from_jwks("e", b"nope"),
            Err(JwksError::Malformed(_))
        ));
        assert!(matches!(
            JoinTokenVerifier::from_jwks("e", br#"{"keys":[]}"#),
            Err(JwksError::NoKeys)
        ));
        assert!(matches!(
            JoinTokenVerifier::from_jwks(
                "e",
                br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"AAAA"}]}"#
            ),
            Err(JwksError::Malformed(_))
        ));
    }
}
