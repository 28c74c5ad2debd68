//! Frames ↔ relay datagrams, sans-IO. Edges run str0m in frame mode, so
//! what crosses a relay link is a whole media frame cut into RTP packets
//! (a frame-fragment payload: the frame's bytes in order, the marker bit on
//! the last packet, the frame's RTP time in every packet) behind a
//! [`MediaHeader`]. The receiving edge puts the frame back together and
//! hands it to its subscribers' str0m sessions, which packetize it for the
//! codec as they do for a local publisher.
//!
//! Loss on a relay link loses the frame the packet belonged to. Video then
//! waits for the next keyframe (a delta frame after a gap would not
//! decode) and the caller asks for one upstream.

use protocol::relay::{MEDIA_HEADER_LEN, MediaHeader, RTP_HEADER_LEN, RtpHeader};

/// A media frame with its RTP time (extended to 64 bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    /// RTP time in the codec's clock.
    pub rtp_time: u64,
    /// A video keyframe.
    pub keyframe: bool,
    /// The frame's bytes.
    pub data: Vec<u8>,
}

/// The largest RTP payload per datagram we write, even on links that allow
/// more: browser-sized packets, and a margin below QUIC's 1200-byte floor
/// so a datagram fits on any path QUIC accepts.
pub const MAX_FRAGMENT: usize = 1100;

/// Cuts a track's frames into datagrams.
#[derive(Debug)]
pub struct Packetizer {
    alias: u32,
    payload_type: u8,
    sequence: u16,
}

impl Packetizer {
    /// A packetizer for the track announced under `alias`.
    pub fn new(alias: u32, payload_type: u8) -> Self {
        Packetizer {
            alias,
            payload_type,
            sequence: 0,
        }
    }

    /// Appends the datagrams of one frame to `out`, each at most
    /// `max_datagram` bytes (the link's current limit).
    pub fn packetize(
        &mut self,
        layer: u8,
        rtp_time: u64,
        keyframe: bool,
        data: &[u8],
        max_datagram: usize,
        out: &mut Vec<Vec<u8>>,
    ) {
        let room = max_datagram
            .saturating_sub(MEDIA_HEADER_LEN + RTP_HEADER_LEN)
            .clamp(1, MAX_FRAGMENT);
        let mut chunks = data.chunks(room);
        let mut first = true;
        // An empty frame still makes one (empty) packet.
        let empty: &[u8] = &[];
        let mut next = chunks.next().or(Some(empty));
        while let Some(chunk) = next {
            next = chunks.next();
            let mut flags = 0;
            if keyframe {
                flags |= MediaHeader::KEYFRAME;
            }
            if first {
                flags |= MediaHeader::FRAME_START;
            }
            first = false;
            let mut datagram = Vec::with_capacity(MEDIA_HEADER_LEN + RTP_HEADER_LEN + chunk.len());
            MediaHeader {
                alias: self.alias,
                layer,
                flags,
            }
            .encode(&mut datagram);
            RtpHeader {
                payload_type: self.payload_type,
                marker: next.is_none(),
                sequence: self.sequence,
                timestamp: rtp_time as u32,
                ssrc: self.alias,
            }
            .encode(&mut datagram);
            datagram.extend_from_slice(chunk);
            self.sequence = self.sequence.wrapping_add(1);
            out.push(datagram);
        }
    }
}

/// What one packet did to a [`Reassembler`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// A frame completed (and may be forwarded).
    pub frame: Option<MediaFrame>,
    /// Packets were lost before this one: a video track needs a keyframe.
    pub loss: bool,
}

/// Counters of one reassembler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Frames completed and handed on.
    pub frames: u64,
    /// Times a gap was seen (one or more packets lost).
    pub gaps: u64,
    /// Complete video frames not handed on while waiting for a keyframe.
    pub frames_skipped: u64,
    /// Packets that arrived after a later one (duplicates, reordering).
    pub late_packets: u64,
}

struct Partial {
    timestamp: u32,
    keyframe: bool,
    data: Vec<u8>,
}

/// Puts one track's frames back together.
pub struct Reassembler {
    video: bool,
    expect: Option<u16>,
    current: Option<Partial>,
    waiting_keyframe: bool,
    last_time: Option<u64>,
    stats: ReassemblyStats,
}

impl Reassembler {
    /// A reassembler; video starts by waiting for a keyframe.
    pub fn new(video: bool) -> Self {
        Reassembler {
            video,
            expect: None,
            current: None,
            waiting_keyframe: video,
            last_time: None,
            stats: ReassemblyStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Whether video is held back until a keyframe.
    pub fn waiting_keyframe(&self) -> bool {
        self.waiting_keyframe
    }

    /// One packet of the track.
    pub fn push(&mut self, header: &MediaHeader, rtp: &RtpHeader, payload: &[u8]) -> Pushed {
        let mut loss = false;
        if let Some(expect) = self.expect {
            let ahead = rtp.sequence.wrapping_sub(expect) as i16;
            if ahead < 0 {
                self.stats.late_packets += 1;
                return Pushed::default();
            }
            loss = ahead > 0;
        }
        self.expect = Some(rtp.sequence.wrapping_add(1));
        if header.flags & MediaHeader::FRAME_START != 0 {
            if self.current.is_some() {
                // The previous frame never got its last packet.
                loss = true;
            }
            self.current = Some(Partial {
                timestamp: rtp.timestamp,
                keyframe: header.flags & MediaHeader::KEYFRAME != 0,
                data: payload.to_vec(),
            });
        } else {
            match &mut self.current {
                Some(p) if !loss && p.timestamp == rtp.timestamp => {
                    p.data.extend_from_slice(payload);
                }
                _ => {
                    self.current = None;
                    loss = true;
                }
            }
        }
        if loss {
            self.stats.gaps += 1;
            if self.video {
                self.waiting_keyframe = true;
            }
        }
        let mut frame = None;
        if rtp.marker
            && let Some(p) = self.current.take()
        {
            if self.waiting_keyframe && !p.keyframe {
                self.stats.frames_skipped += 1;
            } else {
                self.waiting_keyframe = false;
                self.stats.frames += 1;
                frame = Some(MediaFrame {
                    rtp_time: self.extend(p.timestamp),
                    keyframe: p.keyframe,
                    data: p.data,
                });
            }
        }
        Pushed { frame, loss }
    }

    /// Extends a 32-bit RTP time to 64 bits across wraps.
    fn extend(&mut self, timestamp: u32) -> u64 {
        let time = match self.last_time {
            None => u64::from(timestamp),
            Some(last) => {
                let delta = timestamp.wrapping_sub(last as u32) as i32;
                last.saturating_add_signed(i64::from(delta))
            }
        };
        self.last_time = Some(time);
        time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut Reassembler, datagrams: &[Vec<u8>]) -> Vec<Pushed> {
        datagrams
            .iter()
            .map(|d| {
                let (header, packet) = MediaHeader::decode(d).unwrap();
                let (rtp, payload) = RtpHeader::decode(packet).unwrap();
                r.push(&header, &rtp, payload)
            })
            .collect()
    }

    fn frame(p: &mut Packetizer, time: u64, keyframe: bool, len: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let data: Vec<u8> = (0..len).map(|i| (i as u64 ^ time) as u8).collect();
        let mut out = Vec::new();
        p.packetize(0, time, keyframe, &data, 1452, &mut out);
        (data, out)
    }

    #[test]
    fn frames_survive_the_trip_byte_for_byte() {
        let mut p = Packetizer::new(9, 96);
        let mut r = Reassembler::new(true);
        for (i, len) in [6_250usize, 1, 0, 1100, 1101, 30_000]
            .into_iter()
            .enumerate()
        {
            let time = i as u64 * 3000;
            let (data, datagrams) = frame(&mut p, time, i == 0, len);
            assert!(datagrams.iter().all(|d| d.len() <= 1452));
            assert_eq!(datagrams.len(), len.div_ceil(MAX_FRAGMENT).max(1));
            let pushed = feed(&mut r, &datagrams);
            let last = pushed.last().unwrap();
            assert_eq!(
                last.frame,
                Some(MediaFrame {
                    rtp_time: time,
                    keyframe: i == 0,
                    data
                })
            );
            assert!(pushed.iter().all(|p| !p.loss));
        }
        assert_eq!(r.stats().frames, 6);
    }

    #[test]
    fn a_small_link_limit_makes_smaller_packets() {
        let mut p = Packetizer::new(1, 111);
        let mut out = Vec::new();
        p.packetize(0, 0, false, &[7; 1000], 600, &mut out);
        assert!(out.iter().all(|d| d.len() <= 600));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_lost_packet_holds_video_until_the_next_keyframe() {
        let mut p = Packetizer::new(1, 96);
        let mut r = Reassembler::new(true);
        // Video starts on a keyframe: a delta frame first is skipped.
        let (_, delta) = frame(&mut p, 0, false, 3000);
        assert!(feed(&mut r, &delta).iter().all(|x| x.frame.is_none()));
        assert!(r.waiting_keyframe());
        let (_, key) = frame(&mut p, 3000, true, 3000);
        assert!(feed(&mut r, &key).last().unwrap().frame.is_some());
        // A frame loses its middle packet: it is not delivered, the loss is
        // reported, and the following delta frames wait for a keyframe.
        let (_, mut broken) = frame(&mut p, 6000, false, 3000);
        broken.remove(1);
        let pushed = feed(&mut r, &broken);
        assert!(pushed.iter().any(|x| x.loss));
        assert!(pushed.iter().all(|x| x.frame.is_none()));
        let (_, next) = frame(&mut p, 9000, false, 3000);
        assert!(feed(&mut r, &next).iter().all(|x| x.frame.is_none()));
        let (data, key) = frame(&mut p, 12000, true, 3000);
        assert_eq!(
            feed(&mut r, &key)
                .last()
                .unwrap()
                .frame
                .as_ref()
                .unwrap()
                .data,
            data
        );
        assert_eq!(r.stats().frames_skipped, 2);
        // Late duplicates are ignored.
        assert_eq!(feed(&mut r, &key[..1]), vec![Pushed::default()]);
        assert_eq!(r.stats().late_packets, 1);
    }

    #[test]
    fn audio_loses_only_the_lost_frame() {
        let mut p = Packetizer::new(2, 111);
        let mut r = Reassembler::new(false);
        let frames: Vec<_> = (0..3).map(|i| frame(&mut p, i * 960, false, 120)).collect();
        assert!(feed(&mut r, &frames[0].1)[0].frame.is_some());
        // Frame 1 lost entirely; frame 2 still plays.
        let pushed = feed(&mut r, &frames[2].1);
        assert!(pushed[0].loss);
        assert_eq!(pushed[0].frame.as_ref().unwrap().data, frames[2].0);
    }

    #[test]
    fn rtp_time_is_extended_across_the_32_bit_wrap() {
        let mut p = Packetizer::new(3, 111);
        let mut r = Reassembler::new(false);
        let start = u64::from(u32::MAX) - 500;
        for i in 0..3u64 {
            let time = start + i * 960;
            let (_, d) = frame(&mut p, time, false, 10);
            assert_eq!(feed(&mut r, &d)[0].frame.as_ref().unwrap().rtp_time, time);
        }
    }
}
