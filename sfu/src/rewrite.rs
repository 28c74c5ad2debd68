//! One subscriber's view of a track: the RTP sequence numbers, timestamps
//! and VP8 picture ids it receives, continuous whatever happens upstream.
//!
//! A subscription forwards its source in *runs*. A run starts on a packet
//! the decoder can start from (a keyframe's first packet for video, any
//! packet for audio) and lasts until the subscription stops forwarding:
//! paused, muted, or (with simulcast) switched to another layer, whose
//! numbering has nothing in common with the last one. Within a run every
//! field is the source's plus a fixed offset, so reordering and
//! retransmissions upstream map to the same output number. A new run
//! continues where the last one ended: the next sequence number, the
//! timestamp advanced by the wall-clock time in between, the next picture
//! id and TL0PICIDX. The decoder never sees a jump it would treat as loss
//! or as a new stream.
//!
//! Pure arithmetic on plain data: the caller passes `now`.

use std::time::Instant;

/// VP8 picture ids are 15 bits (RFC 7741 §4.2, the long form).
const PICTURE_ID_MASK: u16 = 0x7fff;

/// Where a packet sits in its stream: the fields a rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Extended RTP sequence number (no wrap).
    pub seq: u64,
    /// RTP timestamp (wraps).
    pub time: u32,
    /// VP8 picture id, when the payload descriptor has one.
    pub picture_id: Option<u16>,
    /// VP8 TL0PICIDX, when the payload descriptor has one.
    pub tl0: Option<u8>,
}

/// The offsets of the current run.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Packets before this one belong to an earlier run (or layer).
    first_in: u64,
    seq: u64,
    time: u32,
    picture_id: u16,
    tl0: u8,
}

/// Rewrites one source's packets into one subscriber's stream.
#[derive(Debug, Clone)]
pub struct Rewriter {
    /// Ticks per second of the codec's RTP clock.
    clock_rate: u64,
    /// The first sequence number this subscriber sees.
    first_seq: u64,
    /// The newest packet written, and when (to advance time across a gap
    /// between runs).
    last: Option<(Position, Instant)>,
    run: Option<Run>,
}

impl Rewriter {
    /// A rewriter for a codec clocked at `clock_rate` Hz whose output
    /// starts at sequence number `first_seq` (below 2^16: str0m's SRTP
    /// context starts with a rollover count of zero).
    pub fn new(clock_rate: u32, first_seq: u16) -> Self {
        Rewriter {
            clock_rate: u64::from(clock_rate.max(1)),
            first_seq: u64::from(first_seq),
            last: None,
            run: None,
        }
    }

    /// Whether a run is going (else the next packet forwarded must
    /// [`Rewriter::begin`] one).
    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    /// Ends the current run: nothing is rewritten until the next
    /// [`Rewriter::begin`].
    pub fn stop(&mut self) {
        self.run = None;
    }

    /// Starts a run at `input`, the first packet of the new run.
    pub fn begin(&mut self, now: Instant, input: &Position) {
        let (seq, time, picture_id, tl0) = match &self.last {
            None => (self.first_seq, input.time, input.picture_id, input.tl0),
            Some((last, at)) => {
                let elapsed = now.saturating_duration_since(*at);
                // At least one tick: the decoder must see a new frame.
                let ticks = (elapsed.as_micros() as u64 * self.clock_rate / 1_000_000).max(1);
                (
                    last.seq + 1,
                    last.time.wrapping_add(ticks as u32),
                    last.picture_id
                        .map(|p| p.wrapping_add(1) & PICTURE_ID_MASK)
                        .or(input.picture_id),
                    last.tl0.map(|t| t.wrapping_add(1)).or(input.tl0),
                )
            }
        };
        self.run = Some(Run {
            first_in: input.seq,
            seq: seq.wrapping_sub(input.seq),
            time: time.wrapping_sub(input.time),
            picture_id: match (picture_id, input.picture_id) {
                (Some(out), Some(source)) => out.wrapping_sub(source) & PICTURE_ID_MASK,
                _ => 0,
            },
            tl0: match (tl0, input.tl0) {
                (Some(out), Some(source)) => out.wrapping_sub(source),
                _ => 0,
            },
        });
    }

    /// The subscriber's position for a source packet, or `None` when no run
    /// is going or the packet precedes the run (it belongs to the last one).
    pub fn rewrite(&mut self, now: Instant, input: &Position) -> Option<Position> {
        let run = self.run?;
        if input.seq < run.first_in {
            return None;
        }
        let out = Position {
            seq: input.seq.wrapping_add(run.seq),
            time: input.time.wrapping_add(run.time),
            picture_id: input
                .picture_id
                .map(|p| p.wrapping_add(run.picture_id) & PICTURE_ID_MASK),
            tl0: input.tl0.map(|t| t.wrapping_add(run.tl0)),
        };
        if self
            .last
            .as_ref()
            .is_none_or(|(last, _)| out.seq > last.seq)
        {
            self.last = Some((out, now));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(seq: u64, time: u32, picture_id: u16, tl0: u8) -> Position {
        Position {
            seq,
            time,
            picture_id: Some(picture_id),
            tl0: Some(tl0),
        }
    }

    #[test]
    fn within_a_run_fields_follow_the_source_by_a_fixed_offset() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000, 100);
        assert!(r.rewrite(t0, &at(5000, 1, 7, 3)).is_none(), "no run yet");
        r.begin(t0, &at(5000, 90_000, 7, 3));
        let first = r.rewrite(t0, &at(5000, 90_000, 7, 3)).unwrap();
        assert_eq!(first, at(100, 90_000, 7, 3));
        // Reordered and retransmitted packets map to the same numbers.
        let later = r.rewrite(t0, &at(5003, 93_000, 8, 3)).unwrap();
        let late = r.rewrite(t0, &at(5001, 90_000, 7, 3)).unwrap();
        assert_eq!(later.seq, 103);
        assert_eq!(late.seq, 101);
        assert_eq!(later.picture_id, Some(8));
        // Older than the run: refused.
        assert!(r.rewrite(t0, &at(4999, 87_000, 6, 3)).is_none());
    }

    #[test]
    fn a_new_run_continues_where_the_last_ended_whatever_the_source_numbers() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000, 10);
        r.begin(t0, &at(200, 1000, 30, 9));
        for i in 0..5 {
            r.rewrite(t0, &at(200 + i, 1000 + 3000 * i as u32, 30 + i as u16, 9))
                .unwrap();
        }
        // Paused (or switched layer) for 2 s; the new source is numbered
        // anything at all, near the wrap points.
        r.stop();
        assert!(r.rewrite(t0, &at(205, 16_000, 35, 9)).is_none());
        let t1 = t0 + Duration::from_secs(2);
        let source = at(70_000, u32::MAX - 10, 0x7ffe, 255);
        r.begin(t1, &source);
        let out = r.rewrite(t1, &source).unwrap();
        assert_eq!(out.seq, 15, "the next sequence number");
        assert_eq!(
            out.time,
            1000 + 3000 * 4 + 2 * 90_000,
            "time advanced by the wall-clock gap"
        );
        assert_eq!(out.picture_id, Some(35), "the next picture id");
        assert_eq!(out.tl0, Some(10), "the next TL0PICIDX");
        // The source wraps its timestamp and picture id; the output runs on.
        let next = r
            .rewrite(t1, &at(70_001, (u32::MAX - 10).wrapping_add(3000), 0, 0))
            .unwrap();
        assert_eq!(next.seq, 16);
        assert_eq!(next.time, out.time + 3000);
        assert_eq!(next.picture_id, Some(37), "0x7ffe → 0 is two pictures");
        assert_eq!(next.tl0, Some(11));
    }

    #[test]
    fn back_to_back_runs_still_advance_time_and_audio_has_no_picture_ids() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000, 0);
        let audio = |seq, time| Position {
            seq,
            time,
            picture_id: None,
            tl0: None,
        };
        r.begin(t0, &audio(9, 480));
        let a = r.rewrite(t0, &audio(9, 480)).unwrap();
        r.begin(t0, &audio(1, 0));
        let b = r.rewrite(t0, &audio(1, 0)).unwrap();
        assert_eq!((a.seq, b.seq), (0, 1));
        assert!(b.time > a.time, "a new run is a new instant");
        assert_eq!(b.picture_id, None);
    }
}
