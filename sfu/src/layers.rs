//! Simulcast layers: what a publisher's layers are doing (arriving or not,
//! at what bitrate) and which one a subscriber should receive.
//!
//! A track has one to three layers, numbered from the lowest: a simulcast
//! publisher's rids `q`, `h`, `f` are layers 0, 1, 2 (other rids follow
//! their SDP order); a single-layer track has only layer 0, shown as `f`.
//! [`choose`] is the whole policy, a pure function: the highest layer that
//! the subscriber asked for at most, that is arriving, and that fits its
//! share of the bandwidth estimate; lower when it does not fit, none (video
//! paused, audio untouched) when even the lowest does not.

use std::time::{Duration, Instant};

use str0m::media::Rid;

/// Most layers a track has.
pub const MAX_LAYERS: usize = 3;
/// A layer with no packet for this long is not arriving (the publisher
/// paused it, or its bandwidth dropped it).
pub const LAYER_TIMEOUT: Duration = Duration::from_millis(1000);
/// A higher layer is taken only when its bitrate leaves this much of the
/// budget unused, so a subscriber near a boundary does not flap.
const UPGRADE_HEADROOM: f64 = 0.85;
/// How often bitrates are measured.
const RATE_WINDOW: Duration = Duration::from_millis(500);
/// The lowest layer keeps going while the budget is at least this share of
/// its bitrate: a brief dip costs some loss, a pause costs the picture.
const PAUSE_BELOW: f64 = 0.5;

/// The name of layer `index` in signaling, for a track of `count` layers.
pub fn name(index: usize, count: usize) -> &'static str {
    if count <= 1 {
        return "f";
    }
    match index {
        0 => "q",
        1 => "h",
        _ => "f",
    }
}

/// The layer a name asks for at most (`q`, `h`, `f`), if it is one.
pub fn parse(name: &str) -> Option<usize> {
    match name {
        "q" => Some(0),
        "h" => Some(1),
        "f" => Some(2),
        _ => None,
    }
}

/// The smallest layer at least `height` pixels tall, taking the usual
/// ladder (180, 360, 720).
pub fn for_height(height: u32) -> usize {
    match height {
        0..=180 => 0,
        181..=360 => 1,
        _ => 2,
    }
}

/// Orders a publisher's rids into layers: `q`, `h`, `f` by name, others
/// after them in the order given.
pub fn order(rids: &[Rid]) -> Vec<Rid> {
    let rank = |rid: &Rid| match &**rid {
        "q" => 0,
        "h" => 1,
        "f" => 2,
        _ => 3,
    };
    let mut sorted: Vec<Rid> = rids.iter().copied().take(MAX_LAYERS).collect();
    sorted.sort_by_key(rank);
    sorted
}

/// A bitrate measured over fixed windows.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    bps: u64,
}

impl RateMeter {
    /// Counts a packet's payload.
    pub fn add(&mut self, now: Instant, bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        self.bytes += bytes as u64;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let measured = (self.bytes * 8) as f64 / elapsed.as_secs_f64();
            // Smoothed: a keyframe in one window does not double the rate.
            self.bps = if self.bps == 0 {
                measured as u64
            } else {
                (0.7 * self.bps as f64 + 0.3 * measured) as u64
            };
            self.window_start = Some(now);
            self.bytes = 0;
        }
    }

    /// Bits per second (0 before the first window ends).
    pub fn bps(&self) -> u64 {
        self.bps
    }
}

/// One layer of a published track.
#[derive(Debug, Clone)]
pub struct LayerSource {
    /// Its rid (none for a single-layer track).
    pub rid: Option<Rid>,
    /// When its last packet arrived.
    pub last_packet: Option<Instant>,
    /// Its bitrate.
    pub rate: RateMeter,
    /// When a keyframe was last asked of it.
    pub last_keyframe_request: Option<Instant>,
    /// A request came within the throttle: it is sent when the throttle
    /// ends.
    pub keyframe_deferred: bool,
    /// The RTP timestamp of the last frame that started (H.264 frames
    /// start where it changes).
    pub last_time: Option<u32>,
}

impl LayerSource {
    /// A layer not heard from yet.
    pub fn new(rid: Option<Rid>) -> Self {
        LayerSource {
            rid,
            last_packet: None,
            rate: RateMeter::default(),
            last_keyframe_request: None,
            keyframe_deferred: false,
            last_time: None,
        }
    }

    /// Whether packets are arriving.
    pub fn arriving(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|at| now.saturating_duration_since(at) < LAYER_TIMEOUT)
    }
}

/// What [`choose`] knows of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerView {
    /// Packets are arriving.
    pub arriving: bool,
    /// Its bitrate (0: not measured yet).
    pub bps: u64,
}

/// The layer a subscriber should receive, or `None` for none: the highest
/// arriving layer up to `max` that fits `budget` (bits per second, `None`:
/// no limit). When nothing up to `max` arrives, the lowest layer that does
/// (a smaller picture than asked beats none). When no layer fits, the
/// lowest unless the budget is under half its bitrate (then video pauses).
/// `current` is what it receives now: staying on it needs no headroom.
pub fn choose(
    max: usize,
    layers: &[LayerView],
    budget: Option<u64>,
    current: Option<usize>,
) -> Option<usize> {
    let arriving: Vec<usize> = (0..layers.len()).filter(|i| layers[*i].arriving).collect();
    let wanted: Vec<usize> = arriving.iter().copied().filter(|i| *i <= max).collect();
    let candidates = if wanted.is_empty() {
        arriving.first().copied().into_iter().collect()
    } else {
        wanted
    };
    let fits = |i: usize| match budget {
        None => true,
        Some(budget) => {
            let bps = layers[i].bps as f64;
            if Some(i) == current || Some(i) < current {
                bps <= budget as f64
            } else {
                bps <= budget as f64 * UPGRADE_HEADROOM
            }
        }
    };
    let lowest = candidates.first().copied();
    candidates.into_iter().rev().find(|i| fits(*i)).or_else(|| {
        // Nothing fits: the lowest layer, unless the budget is far below it.
        lowest.filter(|i| match budget {
            None => true,
            Some(budget) => budget as f64 >= layers[*i].bps as f64 * PAUSE_BELOW,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(rates: &[(bool, u64)]) -> Vec<LayerView> {
        rates
            .iter()
            .map(|&(arriving, bps)| LayerView { arriving, bps })
            .collect()
    }

    #[test]
    fn the_highest_arriving_layer_up_to_the_request_and_the_budget() {
        let all = views(&[(true, 150_000), (true, 500_000), (true, 1_500_000)]);
        assert_eq!(choose(2, &all, None, None), Some(2));
        assert_eq!(choose(0, &all, None, None), Some(0), "a small tile");
        assert_eq!(choose(2, &all, Some(700_000), None), Some(1));
        assert_eq!(choose(2, &all, Some(200_000), None), Some(0));
        assert_eq!(
            choose(2, &all, Some(100_000), None),
            Some(0),
            "a small shortfall keeps the lowest layer"
        );
        assert_eq!(choose(2, &all, Some(60_000), None), None, "audio only");
        // Layers that stopped arriving are not chosen; with none up to the
        // request, the lowest that arrives.
        let top_only = views(&[(false, 0), (false, 0), (true, 1_500_000)]);
        assert_eq!(choose(0, &top_only, None, None), Some(2));
        assert_eq!(choose(2, &views(&[(false, 0)]), None, None), None);
    }

    #[test]
    fn staying_needs_no_headroom_but_stepping_up_does() {
        let all = views(&[(true, 150_000), (true, 500_000), (true, 1_500_000)]);
        // 550 kbit/s holds h, but would not be enough to step up to it.
        assert_eq!(choose(2, &all, Some(550_000), Some(1)), Some(1));
        assert_eq!(choose(2, &all, Some(550_000), Some(0)), Some(0));
        assert_eq!(choose(2, &all, Some(600_000), Some(0)), Some(1));
    }

    #[test]
    fn names_heights_and_rid_order() {
        assert_eq!(name(0, 1), "f");
        assert_eq!((name(0, 3), name(1, 3), name(2, 3)), ("q", "h", "f"));
        assert_eq!(parse("h"), Some(1));
        assert_eq!(parse("x"), None);
        assert_eq!(
            (for_height(90), for_height(360), for_height(1080)),
            (0, 1, 2)
        );
        let rids: Vec<Rid> = ["f", "q", "h"].iter().map(|r| Rid::from(*r)).collect();
        let ordered: Vec<String> = order(&rids).iter().map(|r| r.to_string()).collect();
        assert_eq!(ordered, ["q", "h", "f"]);
    }

    #[test]
    fn the_meter_measures_and_smooths() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        for i in 0..=50 {
            m.add(t0 + Duration::from_millis(i * 10), 1250);
        }
        // 1,250 bytes every 10 ms: 1 Mbit/s.
        assert!((950_000..1_050_000).contains(&m.bps()), "{}", m.bps());
    }
}
