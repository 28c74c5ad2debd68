//! Synthetic media that checks itself, shared by the SFU's tests, the
//! testkit bot and `cascade bench`: a VP8-shaped frame (the VP8 P bit marks
//! keyframes, which is all str0m's depacketizer reads) carrying a counter,
//! its body length and a pattern derived from the counter, so a receiver can
//! tell which frame it got and that every byte survived.

/// Default bytes after the header in a keyframe / a delta frame.
pub const KEYFRAME_BODY: usize = 3000;
/// See [`KEYFRAME_BODY`].
pub const DELTA_BODY: usize = 700;

/// Header: VP8 payload descriptor (3), counter (4), body length (4).
const HEADER: usize = 11;

/// Frame `counter` with the default sizes, a keyframe if `keyframe` (P bit
/// clear).
pub fn vp8_frame(counter: u32, keyframe: bool) -> Vec<u8> {
    vp8_frame_sized(
        counter,
        keyframe,
        if keyframe { KEYFRAME_BODY } else { DELTA_BODY },
    )
}

/// Frame `counter` with a body of `body` bytes (how a benchmark sets the
/// bitrate).
pub fn vp8_frame_sized(counter: u32, keyframe: bool, body: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(HEADER + body);
    data.extend_from_slice(&[if keyframe { 0x10 } else { 0x11 }, 0, 0]);
    data.extend_from_slice(&counter.to_be_bytes());
    data.extend_from_slice(&u32::try_from(body).unwrap_or(u32::MAX).to_be_bytes());
    data.extend(pattern(counter, body));
    data
}

/// The counter and keyframe flag of an intact frame, else `None`.
pub fn check_frame(data: &[u8]) -> Option<(u32, bool)> {
    let counter = u32::from_be_bytes(data.get(3..7)?.try_into().ok()?);
    let body_len = u32::from_be_bytes(data.get(7..11)?.try_into().ok()?);
    let keyframe = data.first()? & 1 == 0;
    let body = data.get(HEADER..)?;
    (body.len() as u64 == u64::from(body_len)
        && body.iter().copied().eq(pattern(counter, body.len())))
    .then_some((counter, keyframe))
}

/// An H.264 access unit (Annex B) carrying frame `counter`: a keyframe is
/// an SPS, a PPS and an IDR slice, a delta frame one non-IDR slice. The
/// slice carries the counter and body length in ASCII (no zero bytes: a
/// start code must not appear inside a NAL unit) and the pattern.
pub fn h264_frame(counter: u32, keyframe: bool, body: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(body + 48);
    if keyframe {
        data.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0x8c, 0x8d, 0x40]);
        data.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
    }
    data.extend_from_slice(&[0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }]);
    data.extend_from_slice(format!("C{counter:010}L{body:010}").as_bytes());
    data.extend(pattern(counter, body));
    data
}

/// The counter and keyframe flag (an IDR slice, with the SPS before it) of
/// an intact [`h264_frame`], else `None`.
pub fn check_h264_frame(data: &[u8]) -> Option<(u32, bool)> {
    // The slice is the last NAL unit.
    let at = data.windows(3).rposition(|w| w == [0, 0, 1])? + 3;
    let nal = data.get(at..)?;
    let keyframe = match nal.first()? & 0x1f {
        5 => data.windows(4).any(|w| w == [0, 0, 1, 0x67]),
        1 => false,
        _ => return None,
    };
    let header = std::str::from_utf8(nal.get(1..23)?).ok()?;
    let counter: u32 = header.strip_prefix('C')?.get(..10)?.parse().ok()?;
    let body_len: usize = header.get(11..)?.strip_prefix('L')?.parse().ok()?;
    let body = nal.get(23..)?;
    (body.len() == body_len && body.iter().copied().eq(pattern(counter, body.len())))
        .then_some((counter, keyframe))
}

/// The simulcast a synthetic publisher declares: send layers `rids`.
pub fn simulcast_send(rids: &[&str]) -> str0m::media::Simulcast {
    let mut simulcast = str0m::media::Simulcast::new();
    for rid in rids {
        simulcast.add_send_layer(str0m::media::SimulcastLayer::new(rid));
    }
    simulcast
}

fn pattern(counter: u32, len: usize) -> impl Iterator<Item = u8> {
    (0..len).map(move |i| (i as u32).wrapping_mul(31).wrapping_add(counter) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_check_themselves() {
        assert_eq!(check_frame(&vp8_frame(7, true)), Some((7, true)));
        assert_eq!(check_frame(&vp8_frame(8, false)), Some((8, false)));
        assert_eq!(
            check_frame(&vp8_frame_sized(9, false, 6000)),
            Some((9, false))
        );
        let mut damaged = vp8_frame(9, false);
        damaged[100] ^= 1;
        assert_eq!(check_frame(&damaged), None);
        assert_eq!(check_frame(&vp8_frame(9, false)[..50]), None);
        let mut longer = vp8_frame(9, false);
        longer.push(0);
        assert_eq!(check_frame(&longer), None);
        assert_eq!(check_frame(b""), None);
        for (counter, keyframe) in [(1, true), (2, false), (0x0100_0001, false)] {
            let frame = h264_frame(counter, keyframe, 900);
            assert_eq!(check_h264_frame(&frame), Some((counter, keyframe)));
        }
        let mut damaged = h264_frame(3, true, 900);
        damaged[200] ^= 1;
        assert_eq!(check_h264_frame(&damaged), None);
    }
}
