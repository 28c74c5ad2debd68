//! Synthetic media that checks itself, shared by the SFU's tests, the
//! testkit bot and `cascade bench`: a VP8-shaped frame (the VP8 P bit marks
//! keyframes, which is all str0m's depacketizer reads) carrying a counter
//! and a pattern derived from it, so a receiver can tell which frame it got
//! and that every byte survived.

/// Bytes after the header in a keyframe / a delta frame.
const KEYFRAME_BODY: usize = 3000;
const DELTA_BODY: usize = 700;

/// Frame `counter`, a keyframe if `keyframe` (P bit clear).
pub fn vp8_frame(counter: u32, keyframe: bool) -> Vec<u8> {
    let mut data = vec![if keyframe { 0x10 } else { 0x11 }, 0, 0];
    data.extend_from_slice(&counter.to_be_bytes());
    data.extend(pattern(counter, body_len(keyframe)));
    data
}

/// The counter and keyframe flag of an intact [`vp8_frame`], else `None`.
pub fn check_frame(data: &[u8]) -> Option<(u32, bool)> {
    let counter = u32::from_be_bytes(data.get(3..7)?.try_into().ok()?);
    let keyframe = data.first()? & 1 == 0;
    let body = data.get(7..)?;
    (body.len() == body_len(keyframe) && body.iter().copied().eq(pattern(counter, body.len())))
        .then_some((counter, keyframe))
}

fn body_len(keyframe: bool) -> usize {
    if keyframe { KEYFRAME_BODY } else { DELTA_BODY }
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
        let mut damaged = vp8_frame(9, false);
        damaged[100] ^= 1;
        assert_eq!(check_frame(&damaged), None);
        assert_eq!(check_frame(&vp8_frame(9, false)[..50]), None);
        assert_eq!(check_frame(b""), None);
    }
}
