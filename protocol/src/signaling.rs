//! Client ↔ edge signaling on `GET /v1/rtc` (a WebSocket opened with a join
//! token): JSON text frames tagged by `type`. The client offers first; after
//! that the edge offers whenever the tracks a client should receive change
//! (participants or tracks come and go), and tells the client which
//! stream belongs to which participant. Only one offer is outstanding per
//! direction at a time; the edge waits for the answer to its offer before it
//! sends the next.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientSignal {
    /// The client's SDP offer: the first message (its own tracks), and
    /// again whenever it adds or stops a track (a screen share). When it
    /// crosses an edge offer, the client ignores the edge's (the edge drops
    /// it and offers again after answering).
    Offer {
        /// SDP.
        sdp: String,
        /// What its send m-lines carry, by mid: `camera`, `microphone`,
        /// `screen` or `screen_audio` (undeclared: camera or microphone).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        sources: BTreeMap<String, String>,
    },
    /// The answer to the edge's last offer.
    Answer {
        /// SDP.
        sdp: String,
    },
    /// Mute or unmute one of the client's own published m-lines. A muted
    /// track is forwarded to nobody (the client may also stop sending), and
    /// other participants' track lists show `muted`. Unmuting video makes
    /// the edge ask for a keyframe.
    Mute {
        /// The m-line, in the client's session.
        mid: String,
        /// Muted or not.
        muted: bool,
    },
    /// Pause or resume a track the client receives: a paused track is not
    /// sent to this client (e.g. its video is off screen). Resuming video
    /// brings a keyframe.
    Pause {
        /// The m-line, in the client's session (from `tracks`).
        mid: String,
        /// Paused or not.
        paused: bool,
    },
    /// Which simulcast layer of a received video track the client wants at
    /// most: `max` names a layer (`q`, `h` or `f`, low to high), or
    /// `height` gives the height in pixels the video is shown at (the edge
    /// picks the smallest layer at least that tall: 180 → `q`, 360 → `h`,
    /// more → `f`). Neither: no limit. The edge may send less when the
    /// subscriber's bandwidth or the publisher's layers say so; `layers`
    /// tells what it sends.
    Layers {
        /// The m-line, in the client's session (from `tracks`).
        mid: String,
        /// The highest layer wanted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<String>,
        /// The rendered height, pixels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
    },
    /// The client leaves (the socket closing says the same).
    Leave,
}

/// What the edge sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerSignal {
    /// The edge's answer to the client's offer.
    Answer {
        /// SDP.
        sdp: String,
    },
    /// An edge-initiated offer (tracks to receive were added or removed);
    /// reply with `answer`.
    Offer {
        /// SDP.
        sdp: String,
    },
    /// Which received stream belongs to whom: every track the client
    /// receives now, by the `mid` of its m-line.
    Tracks {
        /// The tracks.
        tracks: Vec<TrackInfo>,
    },
    /// Which layer of each received video track the edge sends now and
    /// why: sent when a choice changes.
    Layers {
        /// One entry per received video track.
        layers: Vec<LayerInfo>,
        /// The edge's estimate of the bandwidth towards this client, kbit/s
        /// (absent before there is one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        estimate_kbps: Option<u64>,
    },
    /// Who speaks in the call (from the audio levels of the participants'
    /// microphones, here and in other regions): the dominant speaker, and
    /// everyone heard in the last half second, loudest first. Sent when
    /// either changes.
    Speakers {
        /// The dominant speaker (`null` before anyone spoke).
        dominant: Option<SpeakerInfo>,
        /// Everyone speaking now.
        active: Vec<SpeakerInfo>,
    },
    /// Dynacast: send only these simulcast encodings (by rid) of the
    /// track on `mid`; nobody needs the others now (a browser sets
    /// `encodings[i].active`). Sent when the set changes; more layers are
    /// asked for at once, fewer after 5 s.
    Encodings {
        /// The client's own send m-line.
        mid: String,
        /// The rids to keep sending (at least the lowest).
        active: Vec<String>,
    },
    /// The request was refused or the session cannot go on.
    Error {
        /// `snake_case` reason (`call_full`, `node_full`, `bad_sdp`, ...).
        code: String,
        /// For people.
        message: String,
    },
}

/// A track the client receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// The m-line in the client's session.
    pub mid: String,
    /// `audio` or `video`.
    pub kind: String,
    /// The participant who publishes it.
    pub user_id: Uuid,
    /// Their device.
    pub device_id: String,
    /// What it carries: `camera`, `microphone`, `screen`, `screen_audio`.
    #[serde(default = "camera")]
    pub source: String,
    /// Its publisher muted it.
    #[serde(default)]
    pub muted: bool,
    /// This client paused it.
    #[serde(default)]
    pub paused: bool,
}

/// What a participant receives on its data channel for each message
/// another participant sent on theirs: one JSON text message. A text
/// message arrives as `text`, a binary one as `base64`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataEnvelope {
    /// Always `data`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The sender.
    pub user_id: Uuid,
    /// Their device.
    pub device_id: String,
    /// A text message, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A binary message, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

fn camera() -> String {
    "camera".into()
}

/// A participant who speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakerInfo {
    /// The user.
    pub user_id: Uuid,
    /// Their device.
    pub device_id: String,
    /// How loud over the last half second, 0–100.
    pub level: u8,
}

/// A received video track's layer, as the edge chose it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The m-line in the client's session.
    pub mid: String,
    /// The layer sent now (`q`, `h`, `f`; a single-layer track says `f`),
    /// or `null` while video is paused (bandwidth, or nothing arriving).
    pub layer: Option<String>,
    /// The layer the edge is switching to (on the next keyframe).
    pub target: Option<String>,
    /// The publisher's layers arriving now.
    pub available: Vec<String>,
    /// The highest layer this client asked for.
    pub max: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_tagged_and_strict() {
        let offer: ClientSignal = serde_json::from_str(r#"{"type":"offer","sdp":"v=0"}"#).unwrap();
        assert_eq!(
            offer,
            ClientSignal::Offer {
                sdp: "v=0".into(),
                sources: BTreeMap::new()
            }
        );
        let offer: ClientSignal =
            serde_json::from_str(r#"{"type":"offer","sdp":"v=0","sources":{"2":"screen"}}"#)
                .unwrap();
        assert!(matches!(offer, ClientSignal::Offer { sources, .. } if sources["2"] == "screen"));
        assert!(serde_json::from_str::<ClientSignal>(r#"{"type":"offer"}"#).is_err());
        assert!(serde_json::from_str::<ClientSignal>(r#"{"type":"nope"}"#).is_err());
        let text = serde_json::to_string(&ServerSignal::Error {
            code: "call_full".into(),
            message: "m".into(),
        })
        .unwrap();
        assert_eq!(text, r#"{"type":"error","code":"call_full","message":"m"}"#);
    }
}
