//! What the SFU reads of DTLS itself (str0m does the protocol): whether a
//! datagram carries an alert no one authenticated.
//!
//! Before the handshake ends (and for any record of epoch 0) an alert is
//! plaintext: anyone who can send from a client's address, an on-path
//! attacker or a good guesser, could end the session with one forged
//! datagram. Alerts a peer really sends after the handshake are in a later
//! epoch, encrypted and authenticated, and pass. A real handshake failure
//! from the client costs nothing to ignore: the session then never
//! connects and the connect timeout closes it.

/// DTLS content type of alerts (RFC 6347 §4.1, as in TLS).
const ALERT: u8 = 21;
/// Bytes of a DTLS 1.0/1.2 record header: type, version (2), epoch (2),
/// sequence number (6), length (2).
const HEADER: usize = 13;

/// Whether `datagram` is DTLS (RFC 7983: first byte 20–63) and any of its
/// records is an alert of epoch 0.
pub fn has_plaintext_alert(datagram: &[u8]) -> bool {
    if !datagram.first().is_some_and(|b| (20..=63).contains(b)) {
        return false;
    }
    let mut rest = datagram;
    while rest.len() >= HEADER {
        let content_type = rest[0];
        let epoch = u16::from_be_bytes([rest[3], rest[4]]);
        if content_type == ALERT && epoch == 0 {
            return true;
        }
        let length = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let Some(next) = rest.get(HEADER + length..) else {
            // A truncated record: str0m refuses it.
            return false;
        };
        rest = next;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(content_type: u8, epoch: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![content_type, 0xfe, 0xfd];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0; 6]);
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn only_unauthenticated_alerts_are_caught() {
        assert!(has_plaintext_alert(&record(ALERT, 0, &[2, 40])));
        // Hidden behind a handshake record in the same datagram.
        let mut two = record(22, 0, &[1; 30]);
        two.extend(record(ALERT, 0, &[2, 40]));
        assert!(has_plaintext_alert(&two));
        // An encrypted alert (epoch 1) is the peer's own: it passes.
        assert!(!has_plaintext_alert(&record(ALERT, 1, &[9; 24])));
        assert!(!has_plaintext_alert(&record(22, 0, &[1; 30])));
        assert!(!has_plaintext_alert(&record(23, 1, &[1; 30])));
        // Not DTLS: STUN, RTP.
        assert!(!has_plaintext_alert(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]));
        assert!(!has_plaintext_alert(&[0x80, 96, 0, 1]));
        // Truncated or empty input is no alert and never panics.
        assert!(!has_plaintext_alert(&[]));
        assert!(!has_plaintext_alert(&[ALERT, 0xfe]));
        let mut cut = record(22, 0, &[1; 30]);
        cut.truncate(20);
        assert!(!has_plaintext_alert(&cut));
    }
}
