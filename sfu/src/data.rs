//! Data channels: what a participant sends on its data channel reaches
//! every other participant of the call, here and (through the shell and
//! the relay) on every other edge.
//!
//! The core routes bytes and enforces limits; it does not know the
//! envelope the receivers get (the sender's user and device beside the
//! payload): a local message comes out as [`Output::Data`], the shell
//! wraps it in the signaling contract's envelope and hands it back through
//! [`Sfu::deliver_data`], which writes it on each receiver's channel. A
//! message from another edge comes the same way in.
//!
//! Each peer delivers on the first data channel it opened (reliable and
//! ordered unless the client made it otherwise); a peer with no channel
//! open receives nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::channel::{ChannelData, ChannelId};
use uuid::Uuid;

use crate::{Output, PeerId, Sfu, Signal};

/// Largest data message accepted (what every browser sends in one piece).
pub const MAX_DATA_MESSAGE: usize = 16 * 1024;
/// Messages a peer may send per second, sustained, and in a burst.
const MESSAGES_PER_SEC: f64 = 20.0;
const MESSAGE_BURST: f64 = 50.0;
/// Bytes a peer may send per second, sustained, and in a burst.
const BYTES_PER_SEC: f64 = 64.0 * 1024.0;
const BYTE_BURST: f64 = 256.0 * 1024.0;
/// Least time between two refusals told to one peer (a flood gets one
/// error a second, not one per message).
const REFUSAL_INTERVAL: Duration = Duration::from_secs(1);

/// A data message a local participant sent, for the shell to wrap and
/// deliver (here, and to the relay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMessage {
    /// The sender.
    pub from: PeerId,
    /// Its call.
    pub call: Uuid,
    /// The sending user.
    pub user: Uuid,
    /// Their device.
    pub device: String,
    /// Sent as binary (else text, UTF-8).
    pub binary: bool,
    /// What was sent.
    pub payload: Arc<[u8]>,
}

/// A token bucket per peer: messages and bytes.
#[derive(Debug, Clone)]
pub(crate) struct DataLimiter {
    messages: f64,
    bytes: f64,
    at: Option<Instant>,
    last_refusal: Option<Instant>,
}

impl Default for DataLimiter {
    fn default() -> Self {
        DataLimiter {
            messages: MESSAGE_BURST,
            bytes: BYTE_BURST,
            at: None,
            last_refusal: None,
        }
    }
}

impl DataLimiter {
    /// Takes a message of `len` bytes from the buckets, if both allow it.
    fn admit(&mut self, now: Instant, len: usize) -> bool {
        if let Some(at) = self.at {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            self.messages = (self.messages + secs * MESSAGES_PER_SEC).min(MESSAGE_BURST);
            self.bytes = (self.bytes + secs * BYTES_PER_SEC).min(BYTE_BURST);
        }
        self.at = Some(now);
        if self.messages < 1.0 || self.bytes < len as f64 {
            return false;
        }
        self.messages -= 1.0;
        self.bytes -= len as f64;
        true
    }

    /// Whether a refusal may be told now.
    fn may_tell(&mut self, now: Instant) -> bool {
        let tell = self
            .last_refusal
            .is_none_or(|at| now.saturating_duration_since(at) >= REFUSAL_INTERVAL);
        if tell {
            self.last_refusal = Some(now);
        }
        tell
    }
}

impl Sfu {
    /// A peer's data channel opened: the first one is where it receives.
    pub(crate) fn channel_open(&mut self, peer: PeerId, channel: ChannelId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.channel.get_or_insert(channel);
        }
    }

    /// A peer's data channel closed.
    pub(crate) fn channel_closed(&mut self, peer: PeerId, channel: ChannelId) {
        if let Some(p) = self.peers.get_mut(&peer)
            && p.channel == Some(channel)
        {
            p.channel = None;
        }
    }

    /// A peer sent a data message: refused past the limits (told once a
    /// second at most), else handed to the shell to deliver.
    pub(crate) fn on_data(&mut self, peer: PeerId, data: ChannelData, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let refusal = if data.data.len() > MAX_DATA_MESSAGE {
            Some((
                "data_too_large",
                format!(
                    "a data message may have at most {MAX_DATA_MESSAGE} bytes (this had {})",
                    data.data.len()
                ),
            ))
        } else if !p.data_limiter.admit(now, data.data.len()) {
            Some((
                "data_rate_limited",
                format!(
                    "at most {MESSAGES_PER_SEC} data messages and {} KiB a second (bursts of {MESSAGE_BURST})",
                    BYTES_PER_SEC as u64 / 1024
                ),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            self.stats.data_refused += 1;
            if p.data_limiter.may_tell(now) {
                self.out
                    .push_back(Output::Signal(peer, Signal::Refused { code, message }));
            }
            return;
        }
        self.stats.data_in += 1;
        self.out.push_back(Output::Data(DataMessage {
            from: peer,
            call: p.info.call,
            user: p.info.user,
            device: p.info.device.clone(),
            binary: data.binary,
            payload: data.data.into(),
        }));
    }

    /// Writes a data message (already wrapped by the shell) on the data
    /// channel of every participant of `call` here but `except` (its
    /// sender). A receiver whose channel's buffer is full misses it
    /// (counted): one slow receiver must not hold the call's messages.
    pub fn deliver_data(
        &mut self,
        now: Instant,
        call: Uuid,
        except: Option<PeerId>,
        binary: bool,
        bytes: &[u8],
    ) {
        self.last_now = now;
        for peer in self.members(call) {
            if Some(peer) == except {
                continue;
            }
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            let Some(id) = p.channel else {
                continue;
            };
            let written = p
                .rtc
                .channel(id)
                .map(|mut channel| channel.write(binary, bytes));
            match written {
                Some(Ok(true)) => self.stats.data_out += 1,
                _ => self.stats.data_dropped += 1,
            }
            self.drive(peer);
        }
        self.process(now);
    }
}
