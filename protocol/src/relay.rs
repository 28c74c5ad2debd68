//! The relay protocol (version 3): how edges and relays exchange tracks over
//! QUIC. Pure codec, no I/O.
//!
//! - **Control** travels on one reliable bidirectional stream, opened by the
//!   dialing side. Each frame is a big-endian `u32` length, then the body:
//!   the protocol version, a message type, and the fields. Strings are a
//!   `u16` length and UTF-8; ids are 16-byte UUIDs.
//! - **Media** travels as QUIC datagrams: a 7-byte [`MediaHeader`] (the
//!   track's alias on that link, the simulcast layer, frame flags) followed
//!   by one RTP packet ([`RtpHeader`] + payload).
//!
//! An alias is chosen by the side that announces a track and is valid on
//! that link only; a relay re-announces a track downstream under its own
//! alias, so a datagram is rewritten once and then shared by every link.
//!
//! Decoding never panics: truncated, oversized and unknown input is a
//! [`CodecError`].

use uuid::Uuid;

/// The ALPN every relay link negotiates.
pub const ALPN: &[u8] = b"cascade-relay/3";
/// The protocol version in every control frame and datagram. Version 2:
/// datagrams carry the publisher's RTP packets (the codec's payload format,
/// its sequence numbers) rather than frame fragments; announcements and
/// [`Control::TrackState`] carry the mute state. Version 3: announcements
/// carry the track's source (a screen), call data messages travel as
/// [`Control::Data`], and audio datagrams carry the audio level.
pub const VERSION: u8 = 3;
/// Largest control frame body accepted (a frame is small; this bounds the
/// memory a peer can make us buffer).
pub const MAX_CONTROL_FRAME: usize = 20 * 1024;
/// Largest payload of a [`Control::Data`] (the edges' limit on a data
/// channel message).
pub const MAX_DATA: usize = 16 * 1024;
/// Longest string field.
pub const MAX_STRING: usize = 1024;
/// Bytes of [`MediaHeader`] on the wire.
pub const MEDIA_HEADER_LEN: usize = 7;
/// Bytes of the fixed RTP header [`RtpHeader::encode`] writes.
pub const RTP_HEADER_LEN: usize = 12;
/// Most sequence numbers one NACK may carry.
pub const MAX_NACK: usize = 512;

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The frame ended before a field did.
    Truncated,
    /// A version this build does not speak.
    Version(u8),
    /// An unknown message type or enum value.
    Unknown(&'static str, u8),
    /// A length beyond the limits.
    TooLong(&'static str, usize),
    /// A string field that is not UTF-8.
    NotUtf8,
    /// Bytes left over after the last field.
    Trailing(usize),
    /// Not an RTP version 2 packet.
    NotRtp,
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Truncated => write!(f, "frame truncated"),
            CodecError::Version(v) => write!(f, "unsupported relay protocol version {v}"),
            CodecError::Unknown(what, v) => write!(f, "unknown {what} {v}"),
            CodecError::TooLong(what, n) => write!(f, "{what} too long ({n} bytes)"),
            CodecError::NotUtf8 => write!(f, "string is not UTF-8"),
            CodecError::Trailing(n) => write!(f, "{n} unexpected bytes after the frame"),
            CodecError::NotRtp => write!(f, "not an RTP version 2 packet"),
        }
    }
}

impl std::error::Error for CodecError {}

/// What a node is on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An SFU edge: publishes its participants' tracks, subscribes for them.
    Edge,
    /// A region's relay.
    Relay,
}

/// Audio or video: audio has priority on a congested link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Audio.
    Audio,
    /// Video.
    Video,
}

/// The first frame each side sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's node id.
    pub node: String,
    /// Its region.
    pub region: String,
    /// Edge or relay.
    pub role: Role,
}

/// What a track carries, as its publisher declared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A camera.
    Camera,
    /// A microphone.
    Microphone,
    /// A shared screen.
    Screen,
    /// A shared screen's sound.
    ScreenAudio,
}

impl Source {
    fn byte(self) -> u8 {
        match self {
            Source::Camera => 1,
            Source::Microphone => 2,
            Source::Screen => 3,
            Source::ScreenAudio => 4,
        }
    }

    fn from_byte(b: u8) -> Result<Source, CodecError> {
        Ok(match b {
            1 => Source::Camera,
            2 => Source::Microphone,
            3 => Source::Screen,
            4 => Source::ScreenAudio,
            other => return Err(CodecError::Unknown("track source", other)),
        })
    }
}

/// A track offered on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The call it belongs to.
    pub call: Uuid,
    /// Globally unique: `<origin node>:<n>`.
    pub track: String,
    /// The id its datagrams carry on this link.
    pub alias: u32,
    /// Audio or video.
    pub kind: Kind,
    /// Codec name as in SDP (`opus`, `VP8`).
    pub codec: String,
    /// The edge whose participant publishes it.
    pub origin: String,
    /// The publishing user.
    pub user: Uuid,
    /// Their device.
    pub device: String,
    /// Its publisher muted it (nothing of it flows until unmuted).
    pub muted: bool,
    /// How many simulcast layers it has (1: none); datagrams carry the
    /// layer, and a subscription asks for layers by bit.
    pub layers: u8,
    /// What it carries.
    pub source: Source,
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Who the sender is. First on the stream, once.
    Hello(Hello),
    /// The sender has (or no longer has) participants in a call and wants
    /// its tracks announced.
    Interest {
        /// The call.
        call: Uuid,
        /// Whether interest starts or ends.
        interested: bool,
    },
    /// A track is available from the sender.
    Announce(Announce),
    /// A track is gone.
    Unannounce {
        /// Its id.
        track: String,
    },
    /// Send me this track's datagrams (again: a new layer set replaces the
    /// old one).
    Subscribe {
        /// Its id.
        track: String,
        /// Wanted simulcast layers, one bit each (bit 0: the only layer of a
        /// non-simulcast track).
        layers: u8,
    },
    /// Stop sending this track.
    Unsubscribe {
        /// Its id.
        track: String,
    },
    /// Ask the track's publisher for a keyframe.
    KeyframeRequest {
        /// Its id.
        track: String,
    },
    /// Liveness probe; answered with the same nonce.
    Ping {
        /// Echoed.
        nonce: u64,
    },
    /// Answer to [`Control::Ping`].
    Pong {
        /// The ping's.
        nonce: u64,
    },
    /// These RTP sequence numbers of a track were lost on the way to the
    /// sender of this message: resend them (or ask upstream).
    Nack {
        /// The track's id.
        track: String,
        /// Lost sequence numbers (at most [`MAX_NACK`]).
        sequences: Vec<u16>,
    },
    /// An announced track's publisher muted or unmuted it; travels the way
    /// its announcement did.
    TrackState {
        /// The track's id.
        track: String,
        /// Muted or not.
        muted: bool,
    },
    /// A participant's data channel message, for every other participant
    /// of the call: an edge sends it to its relay, which sends it to every
    /// other link interested in the call (a relay's to its edges only).
    Data {
        /// The call.
        call: Uuid,
        /// The sending user.
        user: Uuid,
        /// Their device.
        device: String,
        /// Binary (else UTF-8 text).
        binary: bool,
        /// At most [`MAX_DATA`] bytes.
        payload: Vec<u8>,
    },
}

impl Control {
    /// The message type byte.
    fn type_byte(&self) -> u8 {
        match self {
            Control::Hello(_) => 1,
            Control::Interest { .. } => 2,
            Control::Announce(_) => 3,
            Control::Unannounce { .. } => 4,
            Control::Subscribe { .. } => 5,
            Control::Unsubscribe { .. } => 6,
            Control::KeyframeRequest { .. } => 7,
            Control::Ping { .. } => 8,
            Control::Pong { .. } => 9,
            Control::Nack { .. } => 10,
            Control::TrackState { .. } => 11,
            Control::Data { .. } => 12,
        }
    }

    /// Appends this message as one length-prefixed frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(VERSION);
        out.push(self.type_byte());
        match self {
            Control::Hello(h) => {
                put_str(out, &h.node);
                put_str(out, &h.region);
                out.push(match h.role {
                    Role::Edge => 1,
                    Role::Relay => 2,
                });
            }
            Control::Interest { call, interested } => {
                out.extend_from_slice(call.as_bytes());
                out.push(u8::from(*interested));
            }
            Control::Announce(a) => {
                out.extend_from_slice(a.call.as_bytes());
                put_str(out, &a.track);
                out.extend_from_slice(&a.alias.to_be_bytes());
                out.push(match a.kind {
                    Kind::Audio => 1,
                    Kind::Video => 2,
                });
                put_str(out, &a.codec);
                put_str(out, &a.origin);
                out.extend_from_slice(a.user.as_bytes());
                put_str(out, &a.device);
                out.push(u8::from(a.muted));
                out.push(a.layers);
                out.push(a.source.byte());
            }
            Control::TrackState { track, muted } => {
                put_str(out, track);
                out.push(u8::from(*muted));
            }
            Control::Data {
                call,
                user,
                device,
                binary,
                payload,
            } => {
                out.extend_from_slice(call.as_bytes());
                out.extend_from_slice(user.as_bytes());
                put_str(out, device);
                out.push(u8::from(*binary));
                // Encoders are ours: a longer payload is cut, never corrupt.
                let n = payload.len().min(MAX_DATA);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                out.extend_from_slice(&payload[..n]);
            }
            Control::Unannounce { track }
            | Control::Unsubscribe { track }
            | Control::KeyframeRequest { track } => put_str(out, track),
            Control::Subscribe { track, layers } => {
                put_str(out, track);
                out.push(*layers);
            }
            Control::Ping { nonce } | Control::Pong { nonce } => {
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            Control::Nack { track, sequences } => {
                put_str(out, track);
                // Encoders are ours: a longer list is cut, never corrupt.
                let n = sequences.len().min(MAX_NACK);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for seq in &sequences[..n] {
                    out.extend_from_slice(&seq.to_be_bytes());
                }
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Decodes the first frame of `buf`: `Ok(None)` if more bytes are
    /// needed, else the message and how many bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(Control, usize)>, CodecError> {
        let Some(len) = buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_CONTROL_FRAME {
            return Err(CodecError::TooLong("control frame", len));
        }
        let Some(body) = buf.get(4..4 + len) else {
            return Ok(None);
        };
        let message = Self::decode_body(body)?;
        Ok(Some((message, 4 + len)))
    }

    fn decode_body(body: &[u8]) -> Result<Control, CodecError> {
        let mut r = Reader(body);
        let version = r.u8()?;
        if version != VERSION {
            return Err(CodecError::Version(version));
        }
        let message = match r.u8()? {
            1 => Control::Hello(Hello {
                node: r.string()?,
                region: r.string()?,
                role: match r.u8()? {
                    1 => Role::Edge,
                    2 => Role::Relay,
                    other => return Err(CodecError::Unknown("role", other)),
                },
            }),
            2 => Control::Interest {
                call: r.uuid()?,
                interested: match r.u8()? {
                    0 => false,
                    1 => true,
                    other => return Err(CodecError::Unknown("interest flag", other)),
                },
            },
            3 => Control::Announce(Announce {
                call: r.uuid()?,
                track: r.string()?,
                alias: r.u32()?,
                kind: match r.u8()? {
                    1 => Kind::Audio,
                    2 => Kind::Video,
                    other => return Err(CodecError::Unknown("track kind", other)),
                },
                codec: r.string()?,
                origin: r.string()?,
                user: r.uuid()?,
                device: r.string()?,
                muted: r.flag("muted flag")?,
                layers: match r.u8()? {
                    n @ 1..=8 => n,
                    other => return Err(CodecError::Unknown("layer count", other)),
                },
                source: Source::from_byte(r.u8()?)?,
            }),
            4 => Control::Unannounce { track: r.string()? },
            5 => Control::Subscribe {
                track: r.string()?,
                layers: r.u8()?,
            },
            6 => Control::Unsubscribe { track: r.string()? },
            7 => Control::KeyframeRequest { track: r.string()? },
            8 => Control::Ping { nonce: r.u64()? },
            9 => Control::Pong { nonce: r.u64()? },
            10 => {
                let track = r.string()?;
                let n = usize::from(r.u16()?);
                if n > MAX_NACK {
                    return Err(CodecError::TooLong("nack list", n));
                }
                let mut sequences = Vec::with_capacity(n);
                for _ in 0..n {
                    sequences.push(r.u16()?);
                }
                Control::Nack { track, sequences }
            }
            11 => Control::TrackState {
                track: r.string()?,
                muted: r.flag("muted flag")?,
            },
            12 => {
                let call = r.uuid()?;
                let user = r.uuid()?;
                let device = r.string()?;
                let binary = r.flag("binary flag")?;
                let n = usize::from(r.u16()?);
                if n > MAX_DATA {
                    return Err(CodecError::TooLong("data payload", n));
                }
                Control::Data {
                    call,
                    user,
                    device,
                    binary,
                    payload: r.take(n)?.to_vec(),
                }
            }
            other => return Err(CodecError::Unknown("message type", other)),
        };
        if !r.0.is_empty() {
            return Err(CodecError::Trailing(r.0.len()));
        }
        Ok(message)
    }
}

/// The datagram header before the RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaHeader {
    /// The track's alias on this link.
    pub alias: u32,
    /// Simulcast layer (0 for a single-layer track).
    pub layer: u8,
    /// [`MediaHeader::KEYFRAME`], [`MediaHeader::FRAME_START`].
    pub flags: u8,
}

impl MediaHeader {
    /// The packet belongs to a keyframe.
    pub const KEYFRAME: u8 = 1;
    /// The packet is the first of its frame.
    pub const FRAME_START: u8 = 2;

    /// Writes the header (exactly [`MEDIA_HEADER_LEN`] bytes).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        out.extend_from_slice(&self.alias.to_be_bytes());
        out.push(self.layer);
        out.push(self.flags);
    }

    /// Splits a datagram into its header and RTP packet.
    pub fn decode(datagram: &[u8]) -> Result<(MediaHeader, &[u8]), CodecError> {
        let Some(head) = datagram.get(..MEDIA_HEADER_LEN) else {
            return Err(CodecError::Truncated);
        };
        if head[0] != VERSION {
            return Err(CodecError::Version(head[0]));
        }
        let header = MediaHeader {
            alias: u32::from_be_bytes([head[1], head[2], head[3], head[4]]),
            layer: head[5],
            flags: head[6],
        };
        Ok((header, &datagram[MEDIA_HEADER_LEN..]))
    }

    /// Replaces the alias of an encoded datagram in place (what a relay
    /// does before fanning it out).
    pub fn rewrite_alias(datagram: &mut [u8], alias: u32) -> Result<(), CodecError> {
        let Some(field) = datagram.get_mut(1..5) else {
            return Err(CodecError::Truncated);
        };
        field.copy_from_slice(&alias.to_be_bytes());
        Ok(())
    }
}

/// The RTP fields the relay uses (RFC 3550 fixed header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Payload type.
    pub payload_type: u8,
    /// Marker bit: the last packet of a frame.
    pub marker: bool,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronization source.
    pub ssrc: u32,
    /// The publisher's audio level (RFC 6464: 0 is the loudest, 127
    /// silence, in -dBov), for active-speaker detection behind the relay;
    /// sent as a one-byte header extension (RFC 8285, id 1).
    pub audio_level: Option<u8>,
}

/// The RFC 8285 one-byte header extension profile.
const ONE_BYTE_EXTENSIONS: [u8; 2] = [0xbe, 0xde];
/// The extension id the relay gives the audio level.
const AUDIO_LEVEL_ID: u8 = 1;

impl RtpHeader {
    /// Writes the 12-byte fixed header (no CSRCs), and the audio level
    /// extension (8 bytes more) when there is one.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let extension = self.audio_level.is_some();
        out.push(0x80 | (u8::from(extension) << 4));
        out.push((u8::from(self.marker) << 7) | (self.payload_type & 0x7f));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        if let Some(level) = self.audio_level {
            out.extend_from_slice(&ONE_BYTE_EXTENSIONS);
            // One 32-bit word: id and length-1 (0), the level, padding.
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&[AUDIO_LEVEL_ID << 4, level & 0x7f, 0, 0]);
        }
    }

    /// Parses an RTP packet into its header and payload (skipping CSRCs,
    /// the extension and padding).
    pub fn decode(packet: &[u8]) -> Result<(RtpHeader, &[u8]), CodecError> {
        let Some(fixed) = packet.get(..RTP_HEADER_LEN) else {
            return Err(CodecError::Truncated);
        };
        if fixed[0] >> 6 != 2 {
            return Err(CodecError::NotRtp);
        }
        let csrcs = usize::from(fixed[0] & 0x0f);
        let mut start = RTP_HEADER_LEN + 4 * csrcs;
        let mut audio_level = None;
        if fixed[0] & 0x10 != 0 {
            let Some(ext) = packet.get(start..start + 4) else {
                return Err(CodecError::Truncated);
            };
            let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            let body = packet
                .get(start + 4..start + 4 + 4 * words)
                .ok_or(CodecError::Truncated)?;
            if ext[..2] == ONE_BYTE_EXTENSIONS {
                audio_level = one_byte_extension(body, AUDIO_LEVEL_ID)
                    .and_then(|v| v.first())
                    .map(|b| b & 0x7f);
            }
            start += 4 + 4 * words;
        }
        let mut end = packet.len();
        if fixed[0] & 0x20 != 0 {
            let padding = usize::from(*packet.last().ok_or(CodecError::Truncated)?);
            end = end.checked_sub(padding).ok_or(CodecError::Truncated)?;
        }
        let payload = packet.get(start..end).ok_or(CodecError::Truncated)?;
        let header = RtpHeader {
            payload_type: fixed[1] & 0x7f,
            marker: fixed[1] & 0x80 != 0,
            sequence: u16::from_be_bytes([fixed[2], fixed[3]]),
            timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
            ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
            audio_level,
        };
        Ok((header, payload))
    }
}

/// The value of extension `id` in an RFC 8285 one-byte extension block.
fn one_byte_extension(mut body: &[u8], id: u8) -> Option<&[u8]> {
    while let Some((&first, rest)) = body.split_first() {
        let element = first >> 4;
        if first == 0 {
            // Padding.
            body = rest;
            continue;
        }
        if element == 15 {
            // Reserved: stop reading.
            return None;
        }
        let len = usize::from(first & 0x0f) + 1;
        let value = rest.get(..len)?;
        if element == id {
            return Some(value);
        }
        body = &rest[len..];
    }
    None
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Encoders are ours; longer strings are cut at a character boundary so
    // the frame stays decodable rather than corrupting the stream.
    let mut end = s.len().min(MAX_STRING);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    /// A boolean byte: 0 or 1, anything else refused as `what`.
    fn flag(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(CodecError::Unknown(what, other)),
        }
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn uuid(&mut self) -> Result<Uuid, CodecError> {
        let b = self.take(16)?;
        let mut a = [0; 16];
        a.copy_from_slice(b);
        Ok(Uuid::from_bytes(a))
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let b = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
        if len > MAX_STRING {
            return Err(CodecError::TooLong("string", len));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*): the fuzz runs are
    /// reproducible without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn string(&mut self) -> String {
            let len = self.below(40) as usize;
            (0..len)
                .map(|_| match self.below(4) {
                    0 => 'é',
                    1 => '🎧',
                    _ => char::from(b'a' + self.below(26) as u8),
                })
                .collect()
        }
        fn uuid(&mut self) -> Uuid {
            Uuid::from_u64_pair(self.next(), self.next())
        }
        fn message(&mut self) -> Control {
            match self.below(12) {
                0 => Control::Hello(Hello {
                    node: self.string(),
                    region: self.string(),
                    role: if self.below(2) == 0 {
                        Role::Edge
                    } else {
                        Role::Relay
                    },
                }),
                1 => Control::Interest {
                    call: self.uuid(),
                    interested: self.below(2) == 0,
                },
                2 => Control::Announce(Announce {
                    call: self.uuid(),
                    track: self.string(),
                    alias: self.next() as u32,
                    kind: if self.below(2) == 0 {
                        Kind::Audio
                    } else {
                        Kind::Video
                    },
                    codec: self.string(),
                    origin: self.string(),
                    user: self.uuid(),
                    device: self.string(),
                    muted: self.below(2) == 0,
                    layers: 1 + self.below(3) as u8,
                    source: [Source::Camera, Source::Microphone, Source::Screen]
                        [self.below(3) as usize],
                }),
                3 => Control::Unannounce {
                    track: self.string(),
                },
                4 => Control::Subscribe {
                    track: self.string(),
                    layers: self.next() as u8,
                },
                5 => Control::Unsubscribe {
                    track: self.string(),
                },
                6 => Control::KeyframeRequest {
                    track: self.string(),
                },
                7 => Control::Ping { nonce: self.next() },
                8 => Control::Nack {
                    track: self.string(),
                    sequences: (0..self.below(40)).map(|_| self.next() as u16).collect(),
                },
                9 => Control::TrackState {
                    track: self.string(),
                    muted: self.below(2) == 0,
                },
                10 => Control::Data {
                    call: self.uuid(),
                    user: self.uuid(),
                    device: self.string(),
                    binary: self.below(2) == 0,
                    payload: (0..self.below(3000)).map(|_| self.next() as u8).collect(),
                },
                _ => Control::Pong { nonce: self.next() },
            }
        }
    }

    #[test]
    fn every_message_round_trips_and_streams_split_anywhere() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for _ in 0..2_000 {
            let messages: Vec<Control> = (0..3).map(|_| rng.message()).collect();
            let mut stream = Vec::new();
            for m in &messages {
                m.encode(&mut stream);
            }
            // Every prefix of the first frame asks for more bytes.
            let (first, used) = Control::decode(&stream).unwrap().unwrap();
            assert_eq!(first, messages[0]);
            for cut in 0..used {
                assert_eq!(Control::decode(&stream[..cut]), Ok(None), "cut at {cut}");
            }
            let mut decoded = Vec::new();
            let mut at = 0;
            while let Some((m, n)) = Control::decode(&stream[at..]).unwrap() {
                decoded.push(m);
                at += n;
            }
            assert_eq!(at, stream.len());
            assert_eq!(decoded, messages);
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let mut rng = Rng(0x0bad_f00d_0000_0007);
        // Random bytes, random frames with flipped bytes, and random
        // truncated bodies behind a correct length.
        for i in 0..50_000 {
            let mut bytes = Vec::new();
            rng.message().encode(&mut bytes);
            match i % 3 {
                0 => {
                    let len = rng.below(64) as usize;
                    bytes = (0..len).map(|_| rng.next() as u8).collect();
                }
                1 => {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] ^= 1 << rng.below(8);
                }
                _ => {
                    let keep = 4 + rng.below(bytes.len() as u64 - 4) as usize;
                    bytes.truncate(keep);
                    let len = (keep - 4) as u32;
                    bytes[..4].copy_from_slice(&len.to_be_bytes());
                }
            }
            let _ = Control::decode(&bytes);
            let _ = MediaHeader::decode(&bytes);
            let _ = RtpHeader::decode(&bytes);
        }
        // The specific refusals.
        let mut frame = Vec::new();
        Control::Ping { nonce: 7 }.encode(&mut frame);
        let mut bad = frame.clone();
        bad[4] = 1;
        assert_eq!(
            Control::decode(&bad),
            Err(CodecError::Version(1)),
            "version 1 (frame fragments) is not spoken"
        );
        let mut bad = frame.clone();
        bad[5] = 99;
        assert_eq!(
            Control::decode(&bad),
            Err(CodecError::Unknown("message type", 99))
        );
        let mut bad = frame.clone();
        bad.push(0);
        bad[..4].copy_from_slice(&11u32.to_be_bytes());
        assert_eq!(Control::decode(&bad), Err(CodecError::Trailing(1)));
        assert_eq!(
            Control::decode(&u32::MAX.to_be_bytes()),
            Err(CodecError::TooLong("control frame", u32::MAX as usize))
        );
        let mut bad = Vec::new();
        Control::Unannounce { track: "ab".into() }.encode(&mut bad);
        bad[8] = 0xff;
        assert_eq!(Control::decode(&bad), Err(CodecError::NotUtf8));
        let mut bad = Vec::new();
        Control::Nack {
            track: "t".into(),
            sequences: vec![],
        }
        .encode(&mut bad);
        bad[9..11].copy_from_slice(&600u16.to_be_bytes());
        assert_eq!(
            Control::decode(&bad),
            Err(CodecError::TooLong("nack list", 600))
        );
    }

    #[test]
    fn long_strings_are_cut_at_a_character_boundary() {
        let track = "é".repeat(MAX_STRING);
        let mut frame = Vec::new();
        Control::Unannounce { track }.encode(&mut frame);
        let (decoded, _) = Control::decode(&frame).unwrap().unwrap();
        let Control::Unannounce { track } = decoded else {
            panic!("wrong message {decoded:?}");
        };
        assert_eq!(track, "é".repeat(MAX_STRING / 2));
    }

    #[test]
    fn media_datagrams_round_trip_and_aliases_rewrite_in_place() {
        let header = MediaHeader {
            alias: 0xdead_beef,
            layer: 2,
            flags: MediaHeader::KEYFRAME | MediaHeader::FRAME_START,
        };
        let rtp = RtpHeader {
            payload_type: 96,
            marker: true,
            sequence: 65_535,
            timestamp: 90_000,
            ssrc: 42,
            audio_level: None,
        };
        let mut datagram = Vec::new();
        header.encode(&mut datagram);
        assert_eq!(datagram.len(), MEDIA_HEADER_LEN);
        rtp.encode(&mut datagram);
        assert_eq!(datagram.len(), MEDIA_HEADER_LEN + RTP_HEADER_LEN);
        datagram.extend_from_slice(b"frame bytes");
        let (h, packet) = MediaHeader::decode(&datagram).unwrap();
        assert_eq!(h, header);
        assert_eq!(
            RtpHeader::decode(packet).unwrap(),
            (rtp, &b"frame bytes"[..])
        );
        MediaHeader::rewrite_alias(&mut datagram, 7).unwrap();
        assert_eq!(MediaHeader::decode(&datagram).unwrap().0.alias, 7);
        assert_eq!(MediaHeader::decode(&[1, 0]), Err(CodecError::Truncated));
        assert_eq!(
            MediaHeader::decode(&[9, 0, 0, 0, 0, 0, 0]),
            Err(CodecError::Version(9))
        );
        // A browser's RTP with CSRCs, a header extension and padding.
        let mut packet = vec![0x80 | 0x20 | 0x10 | 1, 111, 0, 1, 0, 0, 0, 9, 0, 0, 0, 5];
        packet.extend_from_slice(&[0, 0, 0, 3]); // one CSRC
        packet.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension
        packet.extend_from_slice(b"opus");
        packet.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let (h, payload) = RtpHeader::decode(&packet).unwrap();
        assert_eq!((h.payload_type, h.sequence, h.timestamp), (111, 1, 9));
        assert_eq!(payload, b"opus");
        assert_eq!(h.audio_level, None);
        assert_eq!(RtpHeader::decode(&[0x40; 12]), Err(CodecError::NotRtp));
        // The audio level travels as a one-byte extension.
        let loud = RtpHeader {
            audio_level: Some(17),
            ..rtp
        };
        let mut packet = Vec::new();
        loud.encode(&mut packet);
        assert_eq!(packet.len(), RTP_HEADER_LEN + 8);
        packet.extend_from_slice(b"opus");
        assert_eq!(RtpHeader::decode(&packet).unwrap(), (loud, &b"opus"[..]));
        // An extension block that claims more than there is.
        let mut short = packet[..RTP_HEADER_LEN].to_vec();
        short.extend_from_slice(&[0xbe, 0xde, 0, 9, 0x10, 5]);
        assert_eq!(RtpHeader::decode(&short), Err(CodecError::Truncated));
    }
}
