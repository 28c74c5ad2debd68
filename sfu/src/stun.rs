//! Just enough STUN to route a binding request to its peer: the local
//! ufrag in its USERNAME attribute (`"<ours>:<theirs>"`, RFC 8445 §7.2.2).
//! Everything is bounds-checked; anything else is `None`.

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const USERNAME: u16 = 0x0006;

/// Our ufrag, if `data` is a STUN message with a USERNAME attribute.
pub fn username_ufrag(data: &[u8]) -> Option<&str> {
    if data.len() < 20 || data[0] & 0xC0 != 0 || data[4..8] != MAGIC_COOKIE {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(20..20 + length)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == USERNAME {
            let text = std::str::from_utf8(value).ok()?;
            return text.split(':').next();
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn finds_our_ufrag_and_survives_garbage() {
        let m = stun(&[(0x8022, b"x"), (USERNAME, b"abcd:efgh")]);
        assert_eq!(username_ufrag(&m), Some("abcd"));
        assert_eq!(username_ufrag(&stun(&[(0x8022, b"x")])), None);
        for cut in 0..m.len() {
            let _ = username_ufrag(&m[..cut]);
        }
        let mut lying = m.clone();
        lying[3] = 0xFF; // claims a longer body than there is
        assert_eq!(username_ufrag(&lying), None);
        assert_eq!(username_ufrag(&[0x80; 40]), None, "RTP is not STUN");
        assert_eq!(username_ufrag(b""), None);
    }
}
