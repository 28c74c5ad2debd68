//! The control plane's WebSocket (`GET /v1/ws`): JSON text frames with a
//! `type` field. Documented for integrators in `docs/websocket.md`.
//!
//! Durable events (`message.created`, `member.added`, ...) arrive as
//! `{"type": "<event>", "cursor": "<position>", "data": {...}}`; a client
//! keeps the newest `cursor` it processed and passes it when it reconnects
//! to receive everything it missed, exactly once and in order.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Authenticates a connection opened without an `Authorization` header.
    /// Must be the first frame then, within 5 seconds.
    Auth {
        /// An access token.
        token: String,
        /// Resume after this cursor (as with a `resume` frame).
        #[serde(default)]
        cursor: Option<String>,
    },
    /// Replays every durable event after `cursor`. Must come before any
    /// event has been delivered on this connection (send it first, or pass
    /// `?cursor=` when connecting).
    Resume {
        /// The newest cursor the client processed.
        cursor: String,
    },
    /// The user is typing in a conversation (ephemeral; throttled).
    Typing {
        /// Where.
        conversation_id: Uuid,
    },
    /// The user's chosen presence on this device.
    Presence {
        /// `online` or `away`.
        status: PresenceStatus,
    },
    /// Keep-alive; answered with `pong`. (A struct variant, so unknown
    /// fields are refused as for every other frame.)
    Ping {},
}

/// Presence a device can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// Active.
    Online,
    /// Connected but idle.
    Away,
    /// No device connected (server-side only).
    Offline,
}

/// A frame from the server other than durable events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Authenticated; events after `cursor` follow.
    Ready {
        /// The caller.
        user_id: Uuid,
        /// The log position this connection starts from.
        cursor: String,
    },
    /// Answer to `ping`.
    Pong,
    /// A frame was refused; the connection stays open unless followed by a
    /// close.
    Error {
        /// Stable snake_case code.
        code: String,
        /// Human-readable text.
        message: String,
    },
    /// The gap since the client's cursor is too large to replay: refetch
    /// state over REST, then reconnect without a cursor.
    ResyncRequired {
        /// Where the live stream continues from.
        cursor: String,
    },
    /// Someone is typing (ephemeral: never replayed).
    Typing {
        /// Where.
        conversation_id: Uuid,
        /// Who.
        user_id: Uuid,
    },
    /// A contact's or fellow member's presence changed (ephemeral).
    Presence {
        /// Whose.
        user_id: Uuid,
        /// Aggregate over their devices.
        status: PresenceStatus,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_and_reject_unknown_shapes() {
        let auth: ClientFrame =
            serde_json::from_str(r#"{"type":"auth","token":"t","cursor":"0.5"}"#).unwrap();
        assert_eq!(
            auth,
            ClientFrame::Auth {
                token: "t".into(),
                cursor: Some("0.5".into())
            }
        );
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping {}
        );
        for bad in [
            r#"{"type":"nope"}"#,
            r#"{"type":"ping","extra":1}"#,
            r#"{"type":"presence","status":"offline!"}"#,
            r#"{"token":"t"}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<ClientFrame>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_frames_have_a_type_field() {
        let text = serde_json::to_string(&ServerFrame::Pong).unwrap();
        assert_eq!(text, r#"{"type":"pong"}"#);
        let text = serde_json::to_string(&ServerFrame::ResyncRequired {
            cursor: "1.2".into(),
        })
        .unwrap();
        assert_eq!(text, r#"{"type":"resync_required","cursor":"1.2"}"#);
    }
}
