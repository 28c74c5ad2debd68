//! Frames ↔ relay datagrams, sans-IO. What crosses a relay link is a
//! track's RTP packets behind a [`MediaHeader`]: edges forward at RTP
//! level, so each datagram carries one of the publisher's packets, its
//! payload in the codec's RTP format (for VP8, from the payload descriptor
//! on), its sequence number and timestamp, the marker bit on the last
//! packet of a frame (every audio packet is a frame). The receiving edge
//! puts each frame's packets back in order ([`Reassembler`]) and forwards
//! them to its subscribers as it does a local publisher's.
//!
//! [`Packetizer`] cuts opaque frames into such datagrams (a frame-fragment
//! payload); the benchmarks and tests use it as a source.
//!
//! Loss: the receiver NACKs missing sequence numbers (video) and holds the
//! frames behind a gap for a bounded time while retransmissions come from
//! the sender's [`SendHistory`]. A gap that is given up loses its frame;
//! video then waits for the next keyframe (a delta frame after a gap would
//! not decode) and the caller asks for one upstream.

use std::time::{Duration, Instant};

use protocol::relay::{MEDIA_HEADER_LEN, MediaHeader, RTP_HEADER_LEN, RtpHeader};

/// A media frame with its RTP time (extended to 64 bits): its packets, in
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    /// RTP time in the codec's clock.
    pub rtp_time: u64,
    /// A video keyframe.
    pub keyframe: bool,
    /// The first frame after a gap that was given up: the sequence numbers
    /// jump before it (a forwarder starts its numbering afresh here).
    pub after_gap: bool,
    /// The frame's packets, first to last.
    pub packets: Vec<FramePacket>,
}

impl MediaFrame {
    /// The frame's payload bytes, all packets joined (for a frame-fragment
    /// payload, the frame itself).
    pub fn data(&self) -> Vec<u8> {
        self.packets
            .iter()
            .flat_map(|p| p.payload.iter().copied())
            .collect()
    }
}

/// One RTP packet of a [`MediaFrame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramePacket {
    /// Its extended sequence number (the sender's, no wrap).
    pub seq: u64,
    /// The last packet of the frame.
    pub marker: bool,
    /// The publisher's audio level (RFC 6464, 0–127 -dBov), if it came.
    pub audio_level: Option<u8>,
    /// The RTP payload.
    pub payload: std::sync::Arc<[u8]>,
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
                audio_level: None,
            }
            .encode(&mut datagram);
            datagram.extend_from_slice(chunk);
            self.sequence = self.sequence.wrapping_add(1);
            out.push(datagram);
        }
    }
}

/// The last datagrams sent of one track, by RTP sequence number, to answer
/// NACKs. A fixed ring: old entries are overwritten.
pub struct SendHistory {
    slots: Vec<Option<(u16, bytes::Bytes)>>,
}

impl SendHistory {
    /// Keeps the last `len` datagrams.
    pub fn new(len: usize) -> Self {
        SendHistory {
            slots: vec![None; len.max(1)],
        }
    }

    /// Remembers a datagram (its RTP sequence number read from it); returns
    /// false for bytes that are not a media datagram.
    pub fn insert(&mut self, datagram: bytes::Bytes) -> bool {
        let Some(seq) = datagram_sequence(&datagram) else {
            return false;
        };
        let index = usize::from(seq) % self.slots.len();
        self.slots[index] = Some((seq, datagram));
        true
    }

    /// The datagram with sequence number `seq`, if still kept.
    pub fn get(&self, seq: u16) -> Option<bytes::Bytes> {
        match &self.slots[usize::from(seq) % self.slots.len()] {
            Some((s, d)) if *s == seq => Some(d.clone()),
            _ => None,
        }
    }
}

/// The RTP sequence number of a media datagram.
pub fn datagram_sequence(datagram: &[u8]) -> Option<u16> {
    let b = datagram.get(MEDIA_HEADER_LEN + 2..MEDIA_HEADER_LEN + 4)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// How a [`Reassembler`] waits for lost packets.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryConfig {
    /// How long frames behind a gap wait for the missing packets
    /// (retransmissions) before the gap is given up. Zero: never wait (and
    /// never NACK), as for audio, where late is as bad as lost.
    pub max_wait: Duration,
    /// When a NACKed packet is still missing, NACK it again after this.
    pub renack_after: Duration,
}

impl RecoveryConfig {
    /// Video: wait up to 350 ms (a retransmission across two 80 ms hops
    /// and back), NACK again after 120 ms: a lost retransmission asked for
    /// again then still arrives inside the wait on such a link (120 + 160
    /// ms), and past the relays' 100 ms NACK dedupe.
    pub const VIDEO: RecoveryConfig = RecoveryConfig {
        max_wait: Duration::from_millis(350),
        renack_after: Duration::from_millis(120),
    };
    /// Audio: no waiting, no NACKs.
    pub const AUDIO: RecoveryConfig = RecoveryConfig {
        max_wait: Duration::ZERO,
        renack_after: Duration::ZERO,
    };
}

/// What a packet (or time passing) did to a [`Reassembler`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Frames completed, in order (and allowed through the keyframe gate).
    pub frames: Vec<MediaFrame>,
    /// Sequence numbers to NACK now.
    pub nacks: Vec<u16>,
    /// A gap was given up: a video track needs a keyframe.
    pub loss: bool,
}

/// Counters of one reassembler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Frames completed and handed on.
    pub frames: u64,
    /// Gaps given up (packets that never came).
    pub gaps: u64,
    /// Packets that filled a gap (retransmissions, reordering).
    pub recovered: u64,
    /// Complete video frames not handed on while waiting for a keyframe.
    pub frames_skipped: u64,
    /// Duplicates and packets older than what was already delivered.
    pub late_packets: u64,
    /// Sequence numbers NACKed.
    pub nacks: u64,
}

struct Packet {
    flags: u8,
    marker: bool,
    timestamp: u32,
    audio_level: Option<u8>,
    payload: std::sync::Arc<[u8]>,
}

/// Most packets held while waiting (a bound on memory for a bad link).
const MAX_PENDING: usize = 2048;

/// Puts one track's frames back together, in order, waiting a bounded time
/// for lost packets to be retransmitted.
pub struct Reassembler {
    video: bool,
    recovery: RecoveryConfig,
    /// Extended sequence number of the next packet to deliver.
    next: Option<u64>,
    highest: Option<u64>,
    pending: std::collections::BTreeMap<u64, Packet>,
    /// Missing sequence numbers: when first NACKed, and whether re-NACKed.
    missing: std::collections::BTreeMap<u64, (Instant, bool)>,
    /// Since when the packet at `next` has been missing.
    stalled_since: Option<Instant>,
    waiting_keyframe: bool,
    last_time: Option<u64>,
    /// A gap was given up since the last frame delivered: the next one is
    /// marked [`MediaFrame::after_gap`].
    gap_since_last: bool,
    stats: ReassemblyStats,
}

impl Reassembler {
    /// A reassembler; video starts by waiting for a keyframe.
    pub fn new(video: bool, recovery: RecoveryConfig) -> Self {
        Reassembler {
            video,
            recovery,
            next: None,
            highest: None,
            pending: std::collections::BTreeMap::new(),
            missing: std::collections::BTreeMap::new(),
            stalled_since: None,
            waiting_keyframe: video,
            last_time: None,
            gap_since_last: false,
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

    /// Whether [`Reassembler::poll`] has work (a gap is being waited on).
    pub fn stalled(&self) -> bool {
        self.stalled_since.is_some()
    }

    /// Extends a 16-bit sequence number next to the highest seen.
    fn extend_seq(&self, seq: u16) -> u64 {
        match self.highest {
            None => u64::from(seq) + (1 << 16),
            Some(h) => {
                let delta = seq.wrapping_sub(h as u16) as i16;
                h.saturating_add_signed(i64::from(delta))
            }
        }
    }

    /// One packet of the track.
    pub fn push(
        &mut self,
        now: Instant,
        header: &MediaHeader,
        rtp: &RtpHeader,
        payload: &[u8],
    ) -> Pushed {
        let mut out = Pushed::default();
        let seq = self.extend_seq(rtp.sequence);
        let start = header.flags & MediaHeader::FRAME_START != 0;
        if self.next.is_none() {
            if !start {
                // Joined mid-frame: wait for the next frame's start.
                return out;
            }
            self.next = Some(seq);
        }
        let next = self.next.unwrap_or(seq);
        if seq < next || self.pending.contains_key(&seq) {
            self.stats.late_packets += 1;
            return out;
        }
        if self.missing.remove(&seq).is_some() {
            self.stats.recovered += 1;
        }
        // Packets skipped between the highest seen and this one are missing.
        let highest = self
            .highest
            .unwrap_or(seq.saturating_sub(1))
            .max(next.saturating_sub(1));
        if seq > highest + 1 && !self.recovery.max_wait.is_zero() {
            for lost in highest + 1..seq {
                if self.missing.len() < MAX_PENDING {
                    self.missing.insert(lost, (now, false));
                    out.nacks.push(lost as u16);
                }
            }
            self.stats.nacks += out.nacks.len() as u64;
        }
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        if self.pending.len() >= MAX_PENDING {
            // Far behind: give up what is held and start again at this
            // packet if it starts a frame (else at the next one that does).
            self.give_up(&mut out);
            if !start {
                return out;
            }
            self.next = Some(seq);
        }
        self.pending.insert(
            seq,
            Packet {
                flags: header.flags,
                marker: rtp.marker,
                timestamp: rtp.timestamp,
                audio_level: rtp.audio_level,
                payload: payload.into(),
            },
        );
        self.drain(now, &mut out);
        out
    }

    /// Time passed: gives up gaps waited on too long, re-NACKs.
    pub fn poll(&mut self, now: Instant) -> Pushed {
        let mut out = Pushed::default();
        for (seq, (since, renacked)) in &mut self.missing {
            if !*renacked && now.saturating_duration_since(*since) >= self.recovery.renack_after {
                *renacked = true;
                out.nacks.push(*seq as u16);
            }
        }
        self.stats.nacks += out.nacks.len() as u64;
        self.drain(now, &mut out);
        out
    }

    /// Delivers every complete frame at the head; gives up a gap at the
    /// head that waited too long.
    fn drain(&mut self, now: Instant, out: &mut Pushed) {
        loop {
            let Some(next) = self.next else {
                return;
            };
            match self.complete_frame_at(next) {
                Some(end) => {
                    self.stalled_since = None;
                    self.deliver(next, end, out);
                }
                None if self.pending.is_empty() => {
                    self.stalled_since = None;
                    return;
                }
                None => {
                    // A head that is not a frame start can never complete.
                    let head_unusable = self.pending.get(&next).is_some_and(|p| !p.is_start());
                    let since = *self.stalled_since.get_or_insert(now);
                    let waited = now.saturating_duration_since(since);
                    let newer_frame = self.pending.range(next + 1..).any(|(_, p)| p.is_start());
                    if newer_frame && (waited >= self.recovery.max_wait || head_unusable) {
                        self.skip_to_next_start(out);
                        continue;
                    }
                    return;
                }
            }
        }
    }

    /// The last sequence number of the frame starting at `first`, if all
    /// its packets are here.
    fn complete_frame_at(&self, first: u64) -> Option<u64> {
        let head = self.pending.get(&first)?;
        if !head.is_start() {
            return None;
        }
        let mut seq = first;
        loop {
            let p = self.pending.get(&seq)?;
            if p.timestamp != head.timestamp || (seq != first && p.is_start()) {
                return None;
            }
            if p.marker {
                return Some(seq);
            }
            seq += 1;
        }
    }

    fn deliver(&mut self, first: u64, last: u64, out: &mut Pushed) {
        let mut packets = Vec::with_capacity((last - first + 1) as usize);
        let mut keyframe = false;
        let mut timestamp = 0;
        for seq in first..=last {
            if let Some(p) = self.pending.remove(&seq) {
                if seq == first {
                    keyframe = p.flags & MediaHeader::KEYFRAME != 0;
                    timestamp = p.timestamp;
                }
                packets.push(FramePacket {
                    seq,
                    marker: p.marker,
                    audio_level: p.audio_level,
                    payload: p.payload,
                });
            }
        }
        self.next = Some(last + 1);
        self.missing.retain(|s, _| *s > last);
        if self.waiting_keyframe && !keyframe {
            self.stats.frames_skipped += 1;
            return;
        }
        self.waiting_keyframe = false;
        self.stats.frames += 1;
        let rtp_time = self.extend_time(timestamp);
        out.frames.push(MediaFrame {
            rtp_time,
            keyframe,
            after_gap: std::mem::take(&mut self.gap_since_last),
            packets,
        });
    }

    /// Gives up the gap at the head: drops up to the next frame start.
    fn skip_to_next_start(&mut self, out: &mut Pushed) {
        let Some(next) = self.next else {
            return;
        };
        let start = self
            .pending
            .range(next + 1..)
            .find(|(_, p)| p.is_start())
            .map(|(s, _)| *s);
        let Some(start) = start else {
            return;
        };
        self.pending.retain(|s, _| *s >= start);
        self.missing.retain(|s, _| *s > start);
        self.next = Some(start);
        self.stalled_since = None;
        self.stats.gaps += 1;
        self.gap_since_last = true;
        out.loss = true;
        if self.video {
            self.waiting_keyframe = true;
        }
    }

    /// Drops everything held (the buffer is full).
    fn give_up(&mut self, out: &mut Pushed) {
        self.pending.clear();
        self.missing.clear();
        self.next = None;
        self.stalled_since = None;
        self.stats.gaps += 1;
        self.gap_since_last = true;
        out.loss = true;
        if self.video {
            self.waiting_keyframe = true;
        }
    }

    /// Extends a 32-bit RTP time to 64 bits across wraps.
    fn extend_time(&mut self, timestamp: u32) -> u64 {
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

impl Packet {
    fn is_start(&self) -> bool {
        self.flags & MediaHeader::FRAME_START != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds datagrams at `now`; collects what came out.
    fn feed(r: &mut Reassembler, now: Instant, datagrams: &[Vec<u8>]) -> Pushed {
        let mut all = Pushed::default();
        for d in datagrams {
            let (header, packet) = MediaHeader::decode(d).unwrap();
            let (rtp, payload) = RtpHeader::decode(packet).unwrap();
            let p = r.push(now, &header, &rtp, payload);
            all.frames.extend(p.frames);
            all.nacks.extend(p.nacks);
            all.loss |= p.loss;
        }
        all
    }

    fn frame(p: &mut Packetizer, time: u64, keyframe: bool, len: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let data: Vec<u8> = (0..len).map(|i| (i as u64 ^ time) as u8).collect();
        let mut out = Vec::new();
        p.packetize(0, time, keyframe, &data, 1452, &mut out);
        (data, out)
    }

    #[test]
    fn frames_survive_the_trip_byte_for_byte() {
        let now = Instant::now();
        let mut p = Packetizer::new(9, 96);
        let mut r = Reassembler::new(true, RecoveryConfig::VIDEO);
        for (i, len) in [6_250usize, 1, 0, 1100, 1101, 30_000]
            .into_iter()
            .enumerate()
        {
            let time = i as u64 * 3000;
            let (data, datagrams) = frame(&mut p, time, i == 0, len);
            assert!(datagrams.iter().all(|d| d.len() <= 1452));
            assert_eq!(datagrams.len(), len.div_ceil(MAX_FRAGMENT).max(1));
            let pushed = feed(&mut r, now, &datagrams);
            assert_eq!(pushed.frames.len(), 1);
            let got = &pushed.frames[0];
            assert_eq!((got.rtp_time, got.keyframe), (time, i == 0));
            assert_eq!(got.data(), data);
            assert!(!got.after_gap);
            assert_eq!(got.packets.len(), datagrams.len(), "packet by packet");
            assert!(got.packets.last().unwrap().marker);
            assert!(
                got.packets.windows(2).all(|w| w[1].seq == w[0].seq + 1),
                "in order"
            );
            assert!(pushed.nacks.is_empty() && !pushed.loss);
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
    fn a_lost_packet_is_nacked_and_its_retransmission_completes_the_frame() {
        let t0 = Instant::now();
        let mut p = Packetizer::new(1, 96);
        let mut r = Reassembler::new(true, RecoveryConfig::VIDEO);
        let mut history = SendHistory::new(64);
        let (_, key) = frame(&mut p, 0, true, 3000);
        assert_eq!(feed(&mut r, t0, &key).frames.len(), 1);
        // Frame 2 loses its middle packet; frame 3 arrives complete.
        let (data2, f2) = frame(&mut p, 3000, false, 3000);
        let (data3, f3) = frame(&mut p, 6000, false, 1000);
        for d in f2.iter().chain(&f3) {
            history.insert(bytes::Bytes::from(d.clone()));
        }
        let lost = datagram_sequence(&f2[1]).unwrap();
        let got = feed(&mut r, t0, &[f2[0].clone(), f2[2].clone()]);
        assert_eq!(got.nacks, vec![lost], "the gap is NACKed at once");
        let got = feed(&mut r, t0, &f3);
        assert!(got.frames.is_empty(), "frame 3 waits behind the gap");
        // Not yet given up; the NACK is repeated once.
        let later = t0 + Duration::from_millis(160);
        let polled = r.poll(later);
        assert_eq!(polled.nacks, vec![lost]);
        assert!(polled.frames.is_empty() && !polled.loss);
        assert!(r.poll(later).nacks.is_empty(), "only once");
        // The retransmission (from the sender's history) completes both.
        let resent = history.get(lost).unwrap();
        let got = feed(&mut r, later, &[resent.to_vec()]);
        let frames: Vec<Vec<u8>> = got.frames.iter().map(MediaFrame::data).collect();
        assert_eq!(frames, vec![data2, data3]);
        assert!(!got.loss);
        assert_eq!(r.stats().recovered, 1);
        assert_eq!(r.stats().gaps, 0);
        // A duplicate is ignored.
        assert_eq!(
            feed(&mut r, later, &[history.get(lost).unwrap().to_vec()]),
            Pushed::default()
        );
    }

    #[test]
    fn a_gap_never_filled_is_given_up_and_video_waits_for_a_keyframe() {
        let t0 = Instant::now();
        let mut p = Packetizer::new(1, 96);
        let mut r = Reassembler::new(true, RecoveryConfig::VIDEO);
        // Video starts on a keyframe: a delta frame first is skipped.
        let (_, delta) = frame(&mut p, 0, false, 3000);
        assert!(feed(&mut r, t0, &delta).frames.is_empty());
        assert!(r.waiting_keyframe());
        let (_, key) = frame(&mut p, 3000, true, 3000);
        assert_eq!(feed(&mut r, t0, &key).frames.len(), 1);
        let (_, mut broken) = frame(&mut p, 6000, false, 3000);
        broken.remove(1);
        let (_, next) = frame(&mut p, 9000, false, 3000);
        let got = feed(&mut r, t0, &broken);
        assert_eq!(got.nacks.len(), 1);
        assert!(feed(&mut r, t0, &next).frames.is_empty());
        assert!(r.stalled());
        let got = r.poll(t0 + RecoveryConfig::VIDEO.max_wait);
        assert!(got.loss, "given up after the wait");
        assert!(
            got.frames.is_empty(),
            "the delta after the gap would not decode"
        );
        let (data, key) = frame(&mut p, 12000, true, 3000);
        let got = feed(&mut r, t0 + Duration::from_millis(400), &key);
        assert_eq!(
            got.frames.iter().map(MediaFrame::data).collect::<Vec<_>>(),
            vec![data]
        );
        assert_eq!(r.stats().gaps, 1);
        assert_eq!(r.stats().frames_skipped, 2);
    }

    #[test]
    fn audio_loses_only_the_lost_frame_and_never_waits() {
        let t0 = Instant::now();
        let mut p = Packetizer::new(2, 111);
        let mut r = Reassembler::new(false, RecoveryConfig::AUDIO);
        let frames: Vec<_> = (0..3).map(|i| frame(&mut p, i * 960, false, 120)).collect();
        assert_eq!(feed(&mut r, t0, &frames[0].1).frames.len(), 1);
        // Frame 1 lost entirely; frame 2 plays at once, nothing is NACKed.
        let got = feed(&mut r, t0, &frames[2].1);
        assert!(got.loss);
        assert!(got.nacks.is_empty());
        assert_eq!(got.frames[0].data(), frames[2].0);
        assert!(got.frames[0].after_gap, "marked: the numbering jumps");
    }

    #[test]
    fn rtp_time_and_sequence_numbers_are_extended_across_wraps() {
        let t0 = Instant::now();
        let mut p = Packetizer::new(3, 111);
        p.sequence = u16::MAX - 1;
        let mut r = Reassembler::new(false, RecoveryConfig::AUDIO);
        let start = u64::from(u32::MAX) - 500;
        for i in 0..4u64 {
            let time = start + i * 960;
            let (_, d) = frame(&mut p, time, false, 10);
            let got = feed(&mut r, t0, &d);
            assert_eq!(got.frames[0].rtp_time, time);
            assert!(!got.loss);
        }
    }

    #[test]
    fn history_answers_only_for_what_it_still_holds() {
        let mut h = SendHistory::new(4);
        let mut p = Packetizer::new(1, 96);
        let (_, d) = frame(&mut p, 0, true, 6000);
        for x in &d {
            assert!(h.insert(bytes::Bytes::from(x.clone())));
        }
        assert!(h.get(0).is_none(), "overwritten");
        assert_eq!(h.get(5).unwrap().to_vec(), d[5]);
        assert!(!h.insert(bytes::Bytes::from_static(b"x")));
    }
}
