//! Batched sends (sans-IO): the datagrams one pass of the core produced,
//! regrouped per destination into runs that one UDP GSO send carries
//! (`quinn-udp`'s `Transmit::segment_size`). A subscriber's share of a
//! video frame is several equal-sized packets, so a run turns up to that
//! many `sendto`s into one `sendmsg`.
//!
//! Order is kept per destination (SRTP and the receiver's jitter buffer
//! care about it); across destinations it is not (nobody can tell).

use std::net::SocketAddr;
use std::ops::Range;

/// Most bytes one GSO send may carry (the UDP length field, with room for
/// headers).
const MAX_RUN_BYTES: usize = 65_000;

/// One send: `bytes` of [`SendBatch::buffer`] to `destination`, cut into
/// datagrams of `segment` bytes (the last may be shorter); `None`: one
/// datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Where to.
    pub destination: SocketAddr,
    /// Its bytes in the buffer.
    pub bytes: Range<usize>,
    /// The datagram size of a multi-datagram run.
    pub segment: Option<usize>,
    /// How many datagrams it carries.
    pub datagrams: usize,
}

/// The datagrams of one pass, then the runs that send them.
#[derive(Debug, Default)]
pub struct SendBatch {
    queued: Vec<(SocketAddr, Vec<u8>)>,
    buffer: Vec<u8>,
    runs: Vec<Run>,
}

impl SendBatch {
    /// Queues a datagram.
    pub fn push(&mut self, destination: SocketAddr, contents: Vec<u8>) {
        self.queued.push((destination, contents));
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Turns what is queued into runs of at most `max_segments` datagrams
    /// (1: no GSO, one run per datagram). Read them with [`Self::runs`] and
    /// [`Self::buffer`]; the next `push` starts a new batch.
    pub fn seal(&mut self, max_segments: usize) {
        let max_segments = max_segments.max(1);
        self.buffer.clear();
        self.runs.clear();
        // Stable: each destination's datagrams stay in their order.
        self.queued.sort_by_key(|(destination, _)| *destination);
        let mut open: Option<Run> = None;
        for (destination, contents) in self.queued.drain(..) {
            let len = contents.len();
            let start = self.buffer.len();
            let joins = open.as_ref().is_some_and(|run| {
                let segment = run.segment.unwrap_or(run.bytes.len());
                run.destination == destination
                    && run.datagrams < max_segments
                    // Every datagram but the last is `segment` long: this
                    // one may join if the run so far is all full segments
                    // and it is no longer than one.
                    && run.bytes.len() == segment * run.datagrams
                    && len <= segment
                    && len > 0
                    && run.bytes.len() + len <= MAX_RUN_BYTES
            });
            self.buffer.extend_from_slice(&contents);
            if joins {
                let run = open.as_mut().expect("checked above");
                run.segment = Some(run.segment.unwrap_or(run.bytes.len()));
                run.bytes.end = self.buffer.len();
                run.datagrams += 1;
            } else {
                if let Some(done) = open.take() {
                    self.runs.push(done);
                }
                open = Some(Run {
                    destination,
                    bytes: start..self.buffer.len(),
                    segment: None,
                    datagrams: 1,
                });
            }
        }
        if let Some(done) = open {
            self.runs.push(done);
        }
    }

    /// The runs of the last [`Self::seal`].
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// The bytes the runs point into.
    pub fn buffer(&self) -> &[u8] {
        &self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn datagram(tag: u8, len: usize) -> Vec<u8> {
        vec![tag; len]
    }

    /// Cuts a run back into its datagrams, the way the kernel does.
    fn cut(batch: &SendBatch, run: &Run) -> Vec<Vec<u8>> {
        let bytes = &batch.buffer()[run.bytes.clone()];
        match run.segment {
            None => vec![bytes.to_vec()],
            Some(segment) => bytes.chunks(segment).map(<[u8]>::to_vec).collect(),
        }
    }

    #[test]
    fn interleaved_datagrams_regroup_per_destination_in_order() {
        let mut batch = SendBatch::default();
        // Packet-major order, as the core writes a frame to two
        // subscribers: a1 b1 a2 b2 a3 b3 (the third is the frame's short
        // last packet).
        for (seq, len) in [(1u8, 1100), (2, 1100), (3, 400)] {
            batch.push(addr(2000), datagram(seq, len));
            batch.push(addr(1000), datagram(seq + 10, len));
        }
        batch.seal(64);
        let runs = batch.runs();
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[0].destination, addr(1000));
        assert_eq!(runs[0].segment, Some(1100));
        assert_eq!(runs[0].datagrams, 3);
        assert_eq!(
            cut(&batch, &runs[0]),
            vec![datagram(11, 1100), datagram(12, 1100), datagram(13, 400)]
        );
        assert_eq!(
            cut(&batch, &runs[1]),
            vec![datagram(1, 1100), datagram(2, 1100), datagram(3, 400)]
        );
    }

    #[test]
    fn a_longer_datagram_or_one_after_a_short_one_starts_a_new_run() {
        let mut batch = SendBatch::default();
        for len in [500, 500, 300, 500, 1200, 1200] {
            batch.push(addr(1000), datagram(len as u8, len));
        }
        batch.seal(64);
        let shapes: Vec<(Option<usize>, usize)> = batch
            .runs()
            .iter()
            .map(|r| (r.segment, r.datagrams))
            .collect();
        // 500 500 300 | 500 | 1200 1200
        assert_eq!(shapes, vec![(Some(500), 3), (None, 1), (Some(1200), 2)]);
        let all: Vec<Vec<u8>> = batch.runs().iter().flat_map(|r| cut(&batch, r)).collect();
        let lens: Vec<usize> = all.iter().map(Vec::len).collect();
        assert_eq!(
            lens,
            [500, 500, 300, 500, 1200, 1200],
            "nothing lost or reordered"
        );
    }

    #[test]
    fn runs_respect_the_segment_limit_and_the_size_limit() {
        let mut batch = SendBatch::default();
        for i in 0..10u8 {
            batch.push(addr(1000), datagram(i, 1000));
        }
        batch.seal(4);
        let counts: Vec<usize> = batch.runs().iter().map(|r| r.datagrams).collect();
        assert_eq!(counts, [4, 4, 2]);
        // Without GSO: one datagram per run.
        for i in 0..3u8 {
            batch.push(addr(1000), datagram(i, 1000));
        }
        batch.seal(1);
        assert!(
            batch
                .runs()
                .iter()
                .all(|r| r.segment.is_none() && r.datagrams == 1)
        );
        assert_eq!(batch.runs().len(), 3);
        // 64 KB caps a run whatever the segment count.
        for i in 0..100u8 {
            batch.push(addr(1000), datagram(i, 1200));
        }
        batch.seal(128);
        assert!(batch.runs().iter().all(|r| r.bytes.len() <= MAX_RUN_BYTES));
        assert_eq!(batch.runs().iter().map(|r| r.datagrams).sum::<usize>(), 100);
    }

    #[test]
    fn an_empty_batch_has_no_runs() {
        let mut batch = SendBatch::default();
        batch.seal(64);
        assert!(batch.runs().is_empty());
        assert!(batch.is_empty());
    }
}
