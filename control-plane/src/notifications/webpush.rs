//! Web Push message encryption (RFC 8291 over the `aes128gcm` content
//! coding of RFC 8188) and VAPID application-server identification
//! (RFC 8292): pure functions, no I/O.
//!
//! Written on aws-lc-rs, the one crypto library of the stack
//! (`shared/stack.md`): the `web-push` crate needs OpenSSL. Both directions
//! are here, because the tests' push endpoint has to read what we send the
//! way a browser does; the RFC's Appendix A vector pins the derivation so
//! a mistake made the same way in both directions cannot pass.

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, ECDH_P256, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The record size we announce: one record holds the whole message.
const RECORD_SIZE: u32 = 4096;
/// Salt, record size, key id length.
const HEADER_FIXED: usize = 16 + 4 + 1;
/// An uncompressed P-256 point.
const P256_PUBLIC_LEN: usize = 65;
/// AES-GCM tag.
const TAG_LEN: usize = 16;
/// The most plaintext one push message carries: push services take 4096
/// bytes of body, less our header (86) and the delimiter and tag (17).
pub const MAX_PLAINTEXT: usize = 4096 - HEADER_FIXED - P256_PUBLIC_LEN - 1 - TAG_LEN;

/// Why a message could not be encrypted, decrypted or signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushCryptoError {
    /// The subscription's `p256dh` is not an uncompressed P-256 point.
    #[error("the subscription's p256dh key is not a P-256 public key")]
    BadPublicKey,
    /// The subscription's `auth` secret is not 16 bytes.
    #[error("the subscription's auth secret is not 16 bytes")]
    BadAuthSecret,
    /// The message is longer than one push message carries.
    #[error("the push message is longer than {MAX_PLAINTEXT} bytes")]
    TooLong,
    /// The body is not an `aes128gcm` message this key can open.
    #[error("not an aes128gcm message for this key")]
    Undecryptable,
    /// The VAPID key could not be made or used.
    #[error("the VAPID key is unusable")]
    BadVapidKey,
    /// The system's random source failed.
    #[error("no randomness")]
    Random,
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) -> Result<(), PushCryptoError> {
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| PushCryptoError::Undecryptable)
}

/// The content-encryption key and nonce of RFC 8291 §3.4 / RFC 8188 §2.2.
fn derive(
    ecdh_secret: &[u8],
    auth_secret: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    salt: &[u8],
) -> Result<([u8; 16], [u8; 12]), PushCryptoError> {
    let mut ikm = [0u8; 32];
    hkdf(
        auth_secret,
        ecdh_secret,
        &[b"WebPush: info\0", ua_public, as_public],
        &mut ikm,
    )?;
    let mut cek = [0u8; 16];
    hkdf(salt, &ikm, &[b"Content-Encoding: aes128gcm\0"], &mut cek)?;
    let mut nonce = [0u8; 12];
    hkdf(salt, &ikm, &[b"Content-Encoding: nonce\0"], &mut nonce)?;
    Ok((cek, nonce))
}

fn ecdh(private: &PrivateKey, peer_public: &[u8]) -> Result<Vec<u8>, PushCryptoError> {
    agreement::agree(
        private,
        UnparsedPublicKey::new(&ECDH_P256, peer_public),
        PushCryptoError::BadPublicKey,
        |secret| Ok(secret.to_vec()),
    )
}

/// Encrypts `plaintext` for the browser whose subscription keys are
/// `ua_public` (`p256dh`) and `auth_secret` (`auth`): the body of the push
/// request, sent with `Content-Encoding: aes128gcm`.
pub fn encrypt(
    ua_public: &[u8],
    auth_secret: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, PushCryptoError> {
    let sender = PrivateKey::generate(&ECDH_P256).map_err(|_| PushCryptoError::Random)?;
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| PushCryptoError::Random)?;
    encrypt_with(&sender, salt, ua_public, auth_secret, plaintext)
}

/// [`encrypt`] with the sender's key and salt given (tests pin them).
fn encrypt_with(
    sender: &PrivateKey,
    salt: [u8; 16],
    ua_public: &[u8],
    auth_secret: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, PushCryptoError> {
    if ua_public.len() != P256_PUBLIC_LEN || ua_public[0] != 0x04 {
        return Err(PushCryptoError::BadPublicKey);
    }
    if auth_secret.len() != 16 {
        return Err(PushCryptoError::BadAuthSecret);
    }
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(PushCryptoError::TooLong);
    }
    let as_public = sender
        .compute_public_key()
        .map_err(|_| PushCryptoError::BadVapidKey)?;
    let as_public = as_public.as_ref();
    let secret = ecdh(sender, ua_public)?;
    let (cek, nonce) = derive(&secret, auth_secret, ua_public, as_public, &salt)?;
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| PushCryptoError::Undecryptable)?,
    );
    // One record, so it is the last: its padding delimiter is 2.
    let mut record = Vec::with_capacity(plaintext.len() + 1 + TAG_LEN);
    record.extend_from_slice(plaintext);
    record.push(2);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut record,
    )
    .map_err(|_| PushCryptoError::Undecryptable)?;
    let mut body = Vec::with_capacity(HEADER_FIXED + as_public.len() + record.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&record);
    Ok(body)
}

/// A browser's side: opens a one-record `aes128gcm` push message with the
/// subscription's private key and auth secret. For the tests' push
/// endpoint (and anyone checking what we send).
pub fn decrypt(
    ua_private: &PrivateKey,
    auth_secret: &[u8],
    body: &[u8],
) -> Result<Vec<u8>, PushCryptoError> {
    let bad = || PushCryptoError::Undecryptable;
    let header = body.get(..HEADER_FIXED).ok_or_else(bad)?;
    let salt = &header[..16];
    let record_size = u32::from_be_bytes([header[16], header[17], header[18], header[19]]);
    let id_len = usize::from(header[20]);
    let as_public = body
        .get(HEADER_FIXED..HEADER_FIXED + id_len)
        .ok_or_else(bad)?;
    let mut record = body[HEADER_FIXED + id_len..].to_vec();
    if record.len() < TAG_LEN + 1 || record.len() > record_size as usize {
        return Err(bad());
    }
    let ua_public = ua_private.compute_public_key().map_err(|_| bad())?;
    let secret = ecdh(ua_private, as_public).map_err(|_| bad())?;
    let (cek, nonce) = derive(&secret, auth_secret, ua_public.as_ref(), as_public, salt)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| bad())?);
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut record,
        )
        .map_err(|_| bad())?;
    // Padding: zeros after the delimiter, which is 2 in the last record.
    let end = plain.iter().rposition(|&b| b != 0).ok_or_else(bad)?;
    if plain[end] != 2 {
        return Err(bad());
    }
    Ok(plain[..end].to_vec())
}

/// The application server's VAPID key (ECDSA P-256): identifies us to
/// push services, and browsers bind their subscriptions to its public key.
pub struct Vapid {
    key: EcdsaKeyPair,
    subject: String,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid")
            .field("public_key", &self.public_key())
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Vapid {
    /// A new key, as PKCS#8 DER (to store) and its public point.
    pub fn generate() -> Result<(Vec<u8>, Vec<u8>), PushCryptoError> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| PushCryptoError::BadVapidKey)?;
        let key = Self::from_pkcs8(pkcs8.as_ref(), String::new())?;
        Ok((
            pkcs8.as_ref().to_vec(),
            key.key.public_key().as_ref().to_vec(),
        ))
    }

    /// The stored key; `subject` is the operator contact (`mailto:` or
    /// `https:`) push services may use.
    pub fn from_pkcs8(pkcs8: &[u8], subject: String) -> Result<Self, PushCryptoError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
            .map_err(|_| PushCryptoError::BadVapidKey)?;
        Ok(Vapid { key, subject })
    }

    /// The public key as browsers take it (`applicationServerKey`):
    /// base64url of the uncompressed point.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.public_key().as_ref())
    }

    /// The `Authorization` header for a push to `audience` (the endpoint's
    /// origin), valid until `expires_unix` (at most 24 h ahead, RFC 8292 §2).
    pub fn authorization(
        &self,
        audience: &str,
        expires_unix: i64,
    ) -> Result<String, PushCryptoError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({
            "aud": audience,
            "exp": expires_unix,
            "sub": self.subject,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| PushCryptoError::BadVapidKey)?;
        let signature = URL_SAFE_NO_PAD.encode(signature.as_ref());
        Ok(format!(
            "vapid t={signing_input}.{signature}, k={}",
            self.public_key()
        ))
    }
}

/// Checks a VAPID `Authorization` header against the public key `k` it
/// names and `expected_key`, and returns its JWT claims. For the tests'
/// push endpoint (what a push service does).
pub fn verify_authorization(
    header: &str,
    expected_key: &str,
) -> Result<serde_json::Value, PushCryptoError> {
    let bad = || PushCryptoError::BadVapidKey;
    let rest = header.strip_prefix("vapid ").ok_or_else(bad)?;
    let (mut token, mut key) = (None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => token = Some(value),
            Some(("k", value)) => key = Some(value),
            _ => {}
        }
    }
    let (token, key) = (token.ok_or_else(bad)?, key.ok_or_else(bad)?);
    if key != expected_key {
        return Err(bad());
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or_else(bad)?;
    let public = URL_SAFE_NO_PAD.decode(key).map_err(|_| bad())?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| bad())?;
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        &public,
    )
    .verify(signing_input.as_bytes(), &signature)
    .map_err(|_| bad())?;
    let (_, claims) = signing_input.split_once('.').ok_or_else(bad)?;
    let claims = URL_SAFE_NO_PAD.decode(claims).map_err(|_| bad())?;
    serde_json::from_slice(&claims).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).unwrap()
    }

    // RFC 8291, Appendix A.
    const PLAINTEXT: &[u8] = b"When I grow up, I want to be a watermelon";
    const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

    #[test]
    fn encryption_reproduces_the_rfc_8291_example_byte_for_byte() {
        let sender = PrivateKey::from_private_key(&ECDH_P256, &b64(AS_PRIVATE)).unwrap();
        let salt: [u8; 16] = b64(SALT).try_into().unwrap();
        let body = encrypt_with(&sender, salt, &b64(UA_PUBLIC), &b64(AUTH), PLAINTEXT).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.encode(body), BODY);
    }

    #[test]
    fn decryption_opens_the_rfc_8291_example_and_refuses_a_flipped_bit() {
        let ua = PrivateKey::from_private_key(&ECDH_P256, &b64(UA_PRIVATE)).unwrap();
        assert_eq!(decrypt(&ua, &b64(AUTH), &b64(BODY)).unwrap(), PLAINTEXT);
        let mut broken = b64(BODY);
        let last = broken.len() - 20;
        broken[last] ^= 1;
        assert_eq!(
            decrypt(&ua, &b64(AUTH), &broken),
            Err(PushCryptoError::Undecryptable)
        );
        // Truncated or empty bodies are refused, not panicked on.
        for cut in [0, 10, 21, 86, 90] {
            assert!(decrypt(&ua, &b64(AUTH), &b64(BODY)[..cut]).is_err());
        }
    }

    #[test]
    fn a_fresh_message_round_trips_and_bad_subscription_keys_are_refused() {
        let ua = PrivateKey::generate(&ECDH_P256).unwrap();
        let ua_public = ua.compute_public_key().unwrap().as_ref().to_vec();
        let auth = [7u8; 16];
        let body = encrypt(&ua_public, &auth, b"hello").unwrap();
        assert_eq!(decrypt(&ua, &auth, &body).unwrap(), b"hello");
        assert_eq!(
            encrypt(&ua_public[..33], &auth, b"x"),
            Err(PushCryptoError::BadPublicKey)
        );
        assert_eq!(
            encrypt(&ua_public, &auth[..8], b"x"),
            Err(PushCryptoError::BadAuthSecret)
        );
        assert_eq!(
            encrypt(&ua_public, &auth, &vec![0; MAX_PLAINTEXT + 1]),
            Err(PushCryptoError::TooLong)
        );
        let most = encrypt(&ua_public, &auth, &vec![b'a'; MAX_PLAINTEXT]).unwrap();
        assert_eq!(most.len(), 4096);
    }

    #[test]
    fn a_vapid_header_verifies_with_its_key_and_names_the_audience() {
        let (pkcs8, public) = Vapid::generate().unwrap();
        let vapid = Vapid::from_pkcs8(&pkcs8, "mailto:ops@example.com".into()).unwrap();
        assert_eq!(vapid.public_key(), URL_SAFE_NO_PAD.encode(&public));
        let header = vapid
            .authorization("https://push.example.net", 1_900_000_000)
            .unwrap();
        let claims = verify_authorization(&header, &vapid.public_key()).unwrap();
        assert_eq!(claims["aud"], "https://push.example.net");
        assert_eq!(claims["exp"], 1_900_000_000);
        assert_eq!(claims["sub"], "mailto:ops@example.com");
        let (other, _) = Vapid::generate().unwrap();
        let other = Vapid::from_pkcs8(&other, String::new()).unwrap();
        assert!(verify_authorization(&header, &other.public_key()).is_err());
        let forged = header.replace("vapid t=", "vapid t=x");
        assert!(verify_authorization(&forged, &vapid.public_key()).is_err());
    }
}
