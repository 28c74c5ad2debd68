//! Call contracts shared by the control plane and edge nodes: the claims of
//! a join token, and what nodes report to the registry.
//!
//! A join token is an EdDSA JWT the control plane signs and an edge
//! verifies with the public keys of `/.well-known/jwks.json`, without
//! calling back. The verification code lives with the edge
//! (`edge_node::join_token`); these are only the shapes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `aud` of every join token: only edges accept them, and API access
/// tokens (audience `cascade-api`) are never accepted as join tokens.
pub const JOIN_AUDIENCE: &str = "cascade-edge";
/// `iss` of every token the control plane signs.
pub const ISSUER: &str = "cascade";

/// What a participant may do on the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Send a microphone track.
    pub publish_audio: bool,
    /// Send a camera track (false in audio calls).
    pub publish_video: bool,
    /// Send a screen-share track.
    pub publish_screen: bool,
    /// Receive the other participants' tracks.
    pub subscribe: bool,
    /// Use data channels.
    pub data: bool,
}

/// The one video codec of a call: an SFU does not transcode, so every
/// participant sends and receives this one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// VP8 (the default).
    #[default]
    Vp8,
    /// H.264, constrained baseline, packetization mode 1.
    H264,
}

impl VideoCodec {
    /// Its name in the API (`vp8`, `h264`).
    pub fn as_str(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => "vp8",
            VideoCodec::H264 => "h264",
        }
    }

    /// The codec a name stands for.
    pub fn parse(name: &str) -> Option<VideoCodec> {
        match name {
            "vp8" => Some(VideoCodec::Vp8),
            "h264" => Some(VideoCodec::H264),
            _ => None,
        }
    }
}

/// The claims of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// Issuer ([`ISSUER`]).
    pub iss: String,
    /// Audience ([`JOIN_AUDIENCE`]).
    pub aud: String,
    /// The user.
    pub sub: Uuid,
    /// The call.
    pub call: Uuid,
    /// The device (one user may join from several).
    pub device: String,
    /// The participant session the control plane recorded for this join;
    /// the edge reports it when the session ends, and lists it in
    /// heartbeats while it is connected.
    pub session: Uuid,
    /// The edge node the token is for; other edges refuse it.
    pub node: String,
    /// That node's region.
    pub region: String,
    /// What the participant may do.
    pub grants: Grants,
    /// The call's video codec (VP8 when absent).
    #[serde(default)]
    pub video_codec: VideoCodec,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds). Short: the token only opens the session.
    pub exp: i64,
    /// Unique token id.
    pub jti: Uuid,
}

/// What sort of node registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// An SFU edge: takes participants.
    Edge,
    /// A region's QUIC relay.
    Relay,
}

/// Where clients and peers reach a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeEndpoints {
    /// `wss://…/v1/rtc` (edges).
    pub signaling_url: Option<String>,
    /// `https://…/v1/whip` (edges).
    pub whip_url: Option<String>,
    /// `https://…/v1/whep` (edges).
    pub whep_url: Option<String>,
    /// `host:port` of the QUIC listener (relays).
    pub relay_addr: Option<String>,
}

/// The body of a registration or heartbeat
/// (`PUT /internal/v1/nodes/{id}`): the node's whole current state, so the
/// registry can be rebuilt from heartbeats alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeHeartbeat {
    /// Edge or relay.
    pub kind: NodeKind,
    /// Region name, one of the control plane's configured regions.
    pub region: String,
    /// Public endpoints.
    #[serde(default)]
    pub endpoints: NodeEndpoints,
    /// Participants (edges) or streams (relays) it accepts.
    pub capacity: u32,
    /// Participants or streams it serves now.
    #[serde(default)]
    pub load: u32,
    /// Leaving: no new calls; its participants move elsewhere.
    #[serde(default)]
    pub draining: bool,
    /// Edges: the participant sessions connected now (join-token
    /// `session`s). When present, sessions placed on this edge that are
    /// older than a join token and not listed are removed (the client never
    /// arrived, or left without a word).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<Uuid>>,
    /// What the node is doing, beyond `load` (for operators and future
    /// placement; rates are over the last heartbeat interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<NodeUsage>,
    /// A random id the node picks at start-up (its boot id). A heartbeat
    /// with a new one tells the control plane the node restarted and lost
    /// every session it had, even when it came back before its
    /// registration expired: those sessions are migrated at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<Uuid>,
}

/// What the control plane answers a heartbeat with. Nodes ignore fields
/// they do not know (newer control planes may add some).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Send the next heartbeat within this many seconds.
    pub heartbeat_interval_secs: u64,
    /// The registration lapses after this many seconds without one.
    pub ttl_secs: u64,
    /// Edges: sessions of the heartbeat's list that are no longer
    /// participants on this edge (they left, were removed, their call
    /// ended, or they moved to another edge a while ago). Close them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub close_sessions: Vec<Uuid>,
}

/// A node's work since its previous heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUsage {
    /// Published tracks now.
    pub tracks: u64,
    /// Track subscriptions now.
    pub subscriptions: u64,
    /// Datagrams received per second.
    pub packets_in_per_sec: u64,
    /// Datagrams sent per second.
    pub packets_out_per_sec: u64,
    /// Bits received per second.
    pub bits_in_per_sec: u64,
    /// Bits sent per second.
    pub bits_out_per_sec: u64,
    /// CPU time the process used per second, in thousandths of a core.
    pub cpu_millicores: u64,
}

/// A registered node as the registry returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id (from the path it registered under).
    pub id: String,
    /// Its last heartbeat.
    #[serde(flatten)]
    pub heartbeat: NodeHeartbeat,
}

/// An edge reports that a participant's session ended
/// (`POST /internal/v1/nodes/{id}/participants/gone`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantGone {
    /// The call.
    pub call_id: Uuid,
    /// The session (the join token's `session`): a device that rejoined has
    /// a new one, which this report cannot touch.
    pub session_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_default_what_they_may_omit_and_refuse_unknown_fields() {
        let hb: NodeHeartbeat =
            serde_json::from_str(r#"{"kind":"edge","region":"eu","capacity":100}"#).unwrap();
        assert_eq!((hb.load, hb.draining), (0, false));
        assert_eq!(hb.endpoints, NodeEndpoints::default());
        assert!(
            serde_json::from_str::<NodeHeartbeat>(
                r#"{"kind":"edge","region":"eu","capacity":1,"extra":1}"#
            )
            .is_err()
        );
        assert!(
            serde_json::from_str::<NodeHeartbeat>(r#"{"kind":"sfu","region":"eu","capacity":1}"#)
                .is_err()
        );
    }
}
