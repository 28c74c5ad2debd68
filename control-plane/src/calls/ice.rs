//! ICE servers handed to clients: STUN as configured, and TURN with
//! time-limited credentials in the TURN REST API form coturn understands
//! (`use-auth-secret`): username `"<expiry unix>:<user id>"`, password
//! `base64(HMAC-SHA1(secret, username))`. The TURN server checks them with
//! the same secret; nothing is stored and nothing outlives its expiry.

use base64::Engine;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::config::CallsConfig;

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct IceServer {
    /// `stun:`/`turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The ICE servers for `user` at `now`.
pub fn ice_servers(config: &CallsConfig, user: Uuid, now: OffsetDateTime) -> Vec<IceServer> {
    let mut servers = Vec::new();
    if !config.stun_urls.is_empty() {
        servers.push(IceServer {
            urls: config.stun_urls.clone(),
            username: None,
            credential: None,
        });
    }
    if let Some(secret) = config.turn_secret.as_deref().filter(|s| !s.is_empty())
        && !config.turn_urls.is_empty()
    {
        let expiry = now.unix_timestamp() + config.turn_credential_ttl_secs as i64;
        let (username, credential) = turn_credential(secret, expiry, user);
        servers.push(IceServer {
            urls: config.turn_urls.clone(),
            username: Some(username),
            credential: Some(credential),
        });
    }
    servers
}

/// TURN REST credentials valid until `expiry` (Unix seconds).
pub fn turn_credential(secret: &str, expiry: i64, user: Uuid) -> (String, String) {
    let username = format!("{expiry}:{user}");
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        secret.as_bytes(),
    );
    let tag = aws_lc_rs::hmac::sign(&key, username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    (username, credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_credentials_match_the_coturn_rest_formula() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        let key =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"Jefe");
        let tag = aws_lc_rs::hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            tag.as_ref(),
            [
                0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84,
                0xdf, 0x9c, 0x25, 0x9a, 0x7c, 0x79
            ]
        );
        let user = Uuid::nil();
        let (username, credential) = turn_credential("s3cret", 1_900_000_000, user);
        assert_eq!(username, format!("1900000000:{user}"));
        let expected = base64::engine::general_purpose::STANDARD.encode(
            aws_lc_rs::hmac::sign(
                &aws_lc_rs::hmac::Key::new(
                    aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                    b"s3cret",
                ),
                username.as_bytes(),
            )
            .as_ref(),
        );
        assert_eq!(credential, expected);
        assert_eq!(credential.len(), 28, "20 bytes in base64");
    }

    #[test]
    fn turn_is_only_offered_with_a_secret() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut config = CallsConfig {
            stun_urls: vec!["stun:stun.example:3478".into()],
            turn_urls: vec!["turn:turn.example:3478".into()],
            ..CallsConfig::default()
        };
        assert_eq!(ice_servers(&config, Uuid::nil(), now).len(), 1);
        config.turn_secret = Some("shared".into());
        let servers = ice_servers(&config, Uuid::nil(), now);
        assert_eq!(servers.len(), 2);
        let expiry: i64 = servers[1]
            .username
            .as_ref()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(expiry, 1_800_000_000 + 3600);
    }
}
