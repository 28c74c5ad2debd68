//! The routing core on a virtual clock: two relays (`eu`, `us`) joined by
//! one link, edges as inboxes that record what reaches them.

use std::collections::HashMap;

use bytes::Bytes;
use protocol::relay::Source;

use super::*;

const EU: usize = 0;
const US: usize = 1;
/// On each router, link 100 is the other relay.
const RELAY_LINK: LinkId = 100;

/// Two routers and their edges' inboxes.
struct Mesh {
    routers: [Router; 2],
    /// (router, link) → messages that edge received.
    inbox: HashMap<(usize, LinkId), Vec<Control>>,
    now: Instant,
}

fn hello(node: &str, region: &str, role: Role) -> Hello {
    Hello {
        node: node.into(),
        region: region.into(),
        role,
    }
}

fn announce(call: Uuid, track: &str, alias: u32, kind: Kind) -> Control {
    Control::Announce(Announce {
        call,
        track: track.into(),
        alias,
        kind,
        codec: if kind == Kind::Audio { "opus" } else { "VP8" }.into(),
        origin: "eu-edge-1".into(),
        user: Uuid::from_u128(7),
        device: "bot".into(),
        muted: false,
        layers: 1,
        source: if kind == Kind::Audio {
            Source::Microphone
        } else {
            Source::Camera
        },
    })
}

fn datagram(alias: u32, layer: u8) -> Vec<u8> {
    let mut d = Vec::new();
    MediaHeader {
        alias,
        layer,
        flags: 0,
    }
    .encode(&mut d);
    d.extend_from_slice(&[0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 42]);
    d
}

impl Mesh {
    fn new() -> Self {
        let mut routers = [
            Router::new(RouterConfig::default()),
            Router::new(RouterConfig::default()),
        ];
        routers[EU].link_up(RELAY_LINK, hello("us-relay", "us", Role::Relay));
        routers[US].link_up(RELAY_LINK, hello("eu-relay", "eu", Role::Relay));
        Mesh {
            routers,
            inbox: HashMap::new(),
            now: Instant::now(),
        }
    }

    fn edge_up(&mut self, region: usize, link: LinkId) {
        self.routers[region].link_up(link, hello(&format!("edge-{link}"), "x", Role::Edge));
        self.pump();
    }

    /// An edge sends a control message to its relay.
    fn send(&mut self, region: usize, link: LinkId, message: Control) {
        self.routers[region].handle_control(self.now, link, message);
        self.pump();
    }

    /// Delivers queued control messages until none is left.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for region in [EU, US] {
                while let Some((link, message)) = self.routers[region].poll_control() {
                    moved = true;
                    if link == RELAY_LINK {
                        self.routers[1 - region].handle_control(self.now, RELAY_LINK, message);
                    } else {
                        self.inbox.entry((region, link)).or_default().push(message);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn take(&mut self, region: usize, link: LinkId) -> Vec<Control> {
        self.inbox.remove(&(region, link)).unwrap_or_default()
    }

    /// A datagram from an edge, followed across the relay link: the edges
    /// of each region it reaches, and how many times it crossed the link.
    fn deliver(
        &self,
        region: usize,
        link: LinkId,
        datagram: &[u8],
    ) -> (Vec<(usize, LinkId)>, usize) {
        let mut reached = Vec::new();
        let mut crossings = 0;
        let mut to = Vec::new();
        let Ok((alias, _)) = self.routers[region].route(link, datagram, &mut to) else {
            return (reached, 0);
        };
        let mut forwarded = datagram.to_vec();
        MediaHeader::rewrite_alias(&mut forwarded, alias).unwrap();
        for next in to.clone() {
            if next == RELAY_LINK {
                crossings += 1;
                let mut far = Vec::new();
                if let Ok((far_alias, _)) =
                    self.routers[1 - region].route(RELAY_LINK, &forwarded, &mut far)
                {
                    assert_ne!(far_alias, 0);
                    reached.extend(far.iter().map(|l| (1 - region, *l)));
                }
            } else {
                reached.push((region, next));
            }
        }
        reached.sort();
        (reached, crossings)
    }
}

fn announced_alias(messages: &[Control], track: &str) -> u32 {
    messages
        .iter()
        .find_map(|m| match m {
            Control::Announce(a) if a.track == track => Some(a.alias),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{track} was not announced in {messages:?}"))
}

#[test]
fn a_track_crosses_the_relay_link_once_for_many_subscribers() {
    let call = Uuid::from_u128(1);
    let mut mesh = Mesh::new();
    mesh.edge_up(EU, 1);
    for edge in [2, 3, 4] {
        mesh.edge_up(US, edge);
    }
    // The publisher's edge announces before anyone is interested.
    mesh.send(
        EU,
        1,
        Control::Interest {
            call,
            interested: true,
        },
    );
    mesh.send(EU, 1, announce(call, "eu-edge-1:1", 11, Kind::Video));
    // Three US edges declare interest: each gets the announcement under the
    // US relay's alias.
    for edge in [2, 3, 4] {
        mesh.send(
            US,
            edge,
            Control::Interest {
                call,
                interested: true,
            },
        );
        let got = mesh.take(US, edge);
        let alias = announced_alias(&got, "eu-edge-1:1");
        assert_ne!(alias, 11, "relay announces under its own alias");
    }
    for edge in [2, 3, 4] {
        mesh.send(
            US,
            edge,
            Control::Subscribe {
                track: "eu-edge-1:1".into(),
                layers: 1,
            },
        );
    }
    // The publisher's edge was asked once.
    let to_publisher = mesh.take(EU, 1);
    assert_eq!(
        to_publisher,
        vec![Control::Subscribe {
            track: "eu-edge-1:1".into(),
            layers: 1
        }]
    );
    let (reached, crossings) = mesh.deliver(EU, 1, &datagram(11, 0));
    assert_eq!(crossings, 1, "one copy on the eu→us link");
    assert_eq!(reached, vec![(US, 2), (US, 3), (US, 4)]);
    assert_eq!(mesh.routers[US].subscriptions(), 3);
    assert_eq!(mesh.routers[EU].subscriptions(), 1);
    assert_eq!(mesh.routers[EU].tracks_relayed(), 1);

    // Two unsubscribe: nothing goes upstream. The last one: unsubscribed
    // all the way to the publisher's edge.
    for edge in [2, 3] {
        mesh.send(
            US,
            edge,
            Control::Unsubscribe {
                track: "eu-edge-1:1".into(),
            },
        );
    }
    assert!(mesh.take(EU, 1).is_empty());
    assert_eq!(mesh.deliver(EU, 1, &datagram(11, 0)).0, vec![(US, 4)]);
    mesh.send(
        US,
        4,
        Control::Unsubscribe {
            track: "eu-edge-1:1".into(),
        },
    );
    assert_eq!(
        mesh.take(EU, 1),
        vec![Control::Unsubscribe {
            track: "eu-edge-1:1".into()
        }]
    );
    assert_eq!(mesh.deliver(EU, 1, &datagram(11, 0)), (vec![], 0));
    assert_eq!(mesh.routers[EU].tracks_relayed(), 0);
}

#[test]
fn relays_declare_interest_only_for_their_edges_and_replay_it() {
    let call = Uuid::from_u128(2);
    let mut mesh = Mesh::new();
    mesh.edge_up(US, 2);
    mesh.send(
        US,
        2,
        Control::Interest {
            call,
            interested: true,
        },
    );
    // EU relay now announces its edges' tracks of that call to US.
    mesh.edge_up(EU, 1);
    mesh.send(EU, 1, announce(call, "eu-edge-1:1", 5, Kind::Audio));
    assert!(announced_alias(&mesh.take(US, 2), "eu-edge-1:1") > 0);
    // A relay link that comes up later learns the interest at once.
    let mut us = std::mem::take(&mut mesh.routers[US]);
    us.link_up(200, hello("ap-relay", "ap", Role::Relay));
    let mut sent = Vec::new();
    while let Some(m) = us.poll_control() {
        sent.push(m);
    }
    assert_eq!(
        sent,
        vec![(
            200,
            Control::Interest {
                call,
                interested: true
            }
        )]
    );
    // Split horizon: the EU track is not announced to the AP relay even
    // though it is interested.
    us.handle_control(
        mesh.now,
        200,
        Control::Interest {
            call,
            interested: true,
        },
    );
    assert!(
        us.poll_control().is_none(),
        "relay-learned tracks stay off relay links"
    );
    // The last edge's interest ends: withdrawn from both relays.
    us.handle_control(
        mesh.now,
        2,
        Control::Interest {
            call,
            interested: false,
        },
    );
    let mut sent = Vec::new();
    while let Some(m) = us.poll_control() {
        sent.push(m);
    }
    sent.sort_by_key(|(l, _)| *l);
    assert_eq!(
        sent,
        vec![
            (
                RELAY_LINK,
                Control::Interest {
                    call,
                    interested: false
                }
            ),
            (
                200,
                Control::Interest {
                    call,
                    interested: false
                }
            ),
        ]
    );
}

#[test]
fn keyframe_requests_go_upstream_throttled() {
    let call = Uuid::from_u128(3);
    let mut mesh = Mesh::new();
    mesh.edge_up(EU, 1);
    mesh.edge_up(US, 2);
    mesh.edge_up(US, 3);
    mesh.send(EU, 1, announce(call, "eu-edge-1:9", 9, Kind::Video));
    for edge in [2, 3] {
        mesh.send(
            US,
            edge,
            Control::Interest {
                call,
                interested: true,
            },
        );
        mesh.send(
            US,
            edge,
            Control::Subscribe {
                track: "eu-edge-1:9".into(),
                layers: 1,
            },
        );
    }
    mesh.take(EU, 1);
    let request = || Control::KeyframeRequest {
        track: "eu-edge-1:9".into(),
    };
    // Two subscribers ask at once: one request reaches the publisher.
    mesh.send(US, 2, request());
    mesh.send(US, 3, request());
    assert_eq!(mesh.take(EU, 1), vec![request()]);
    assert_eq!(mesh.routers[US].stats().keyframe_requests_throttled, 1);
    // After the throttle, again.
    mesh.now += Duration::from_millis(301);
    mesh.send(US, 3, request());
    assert_eq!(mesh.take(EU, 1), vec![request()]);
}

#[test]
fn a_lost_link_unannounces_its_tracks_and_ends_its_subscriptions() {
    let call = Uuid::from_u128(4);
    let mut mesh = Mesh::new();
    mesh.edge_up(EU, 1);
    mesh.edge_up(US, 2);
    mesh.send(
        US,
        2,
        Control::Interest {
            call,
            interested: true,
        },
    );
    mesh.send(EU, 1, announce(call, "eu-edge-1:1", 1, Kind::Video));
    mesh.send(
        US,
        2,
        Control::Subscribe {
            track: "eu-edge-1:1".into(),
            layers: 1,
        },
    );
    mesh.take(US, 2);
    mesh.take(EU, 1);
    // The only subscriber's edge goes: the publisher is unsubscribed.
    mesh.routers[US].link_down(2);
    mesh.pump();
    assert_eq!(
        mesh.take(EU, 1),
        vec![Control::Unsubscribe {
            track: "eu-edge-1:1".into()
        }]
    );
    // It comes back and subscribes again; then the publisher's edge goes.
    mesh.edge_up(US, 2);
    mesh.send(
        US,
        2,
        Control::Interest {
            call,
            interested: true,
        },
    );
    mesh.send(
        US,
        2,
        Control::Subscribe {
            track: "eu-edge-1:1".into(),
            layers: 1,
        },
    );
    mesh.routers[EU].link_down(1);
    mesh.pump();
    let got = mesh.take(US, 2);
    assert_eq!(
        got.last(),
        Some(&Control::Unannounce {
            track: "eu-edge-1:1".into()
        })
    );
    assert_eq!(mesh.routers[US].tracks(), 0);
    assert_eq!(mesh.routers[EU].tracks(), 0);
}

#[test]
fn layers_are_aggregated_and_filtered() {
    let call = Uuid::from_u128(5);
    let mut mesh = Mesh::new();
    mesh.edge_up(US, 1);
    mesh.edge_up(US, 2);
    mesh.edge_up(US, 3);
    for edge in [2, 3] {
        mesh.send(
            US,
            edge,
            Control::Interest {
                call,
                interested: true,
            },
        );
    }
    mesh.send(US, 1, announce(call, "us-edge-1:1", 4, Kind::Video));
    mesh.send(
        US,
        2,
        Control::Subscribe {
            track: "us-edge-1:1".into(),
            layers: 0b001,
        },
    );
    mesh.send(
        US,
        3,
        Control::Subscribe {
            track: "us-edge-1:1".into(),
            layers: 0b100,
        },
    );
    let upstream = mesh.take(US, 1);
    assert_eq!(
        upstream.last(),
        Some(&Control::Subscribe {
            track: "us-edge-1:1".into(),
            layers: 0b101
        })
    );
    assert_eq!(mesh.deliver(US, 1, &datagram(4, 0)).0, vec![(US, 2)]);
    assert_eq!(mesh.deliver(US, 1, &datagram(4, 2)).0, vec![(US, 3)]);
    assert_eq!(mesh.deliver(US, 1, &datagram(4, 1)).0, vec![]);
    // Unknown aliases and garbage are refused with a reason.
    let mut to = Vec::new();
    assert_eq!(
        mesh.routers[US].route(1, &datagram(99, 0), &mut to),
        Err(DropReason::UnknownTrack)
    );
    assert_eq!(
        mesh.routers[US].route(1, b"junk", &mut to),
        Err(DropReason::Malformed)
    );
    // Subscribing to a track never announced to the link is refused.
    mesh.send(
        US,
        1,
        Control::Subscribe {
            track: "us-edge-1:1".into(),
            layers: 1,
        },
    );
    assert_eq!(mesh.routers[US].stats().control_refused, 1);
}

#[test]
fn audio_keeps_room_that_video_cannot_take() {
    let capacity = 1_000_000;
    // Plenty of room: both go.
    assert!(admit(Kind::Video, 1200, capacity, capacity));
    assert!(admit(Kind::Audio, 200, capacity, capacity));
    // Under a quarter free: video is dropped, audio still goes.
    let free = capacity / 4;
    assert!(!admit(Kind::Video, 1200, free, capacity));
    assert!(admit(Kind::Audio, 200, free, capacity));
    // Full: nothing goes.
    assert!(!admit(Kind::Audio, 200, 100, capacity));
}

#[test]
fn nacks_are_answered_from_the_history_or_asked_upstream() {
    let call = Uuid::from_u128(6);
    let mut mesh = Mesh::new();
    mesh.edge_up(EU, 1);
    mesh.edge_up(US, 2);
    mesh.send(
        US,
        2,
        Control::Interest {
            call,
            interested: true,
        },
    );
    mesh.send(EU, 1, announce(call, "eu-edge-1:1", 1, Kind::Video));
    mesh.send(
        US,
        2,
        Control::Subscribe {
            track: "eu-edge-1:1".into(),
            layers: 1,
        },
    );
    mesh.take(EU, 1);
    mesh.take(US, 2);
    // The us relay forwarded sequence 1 (its copy is remembered).
    let mut to = Vec::new();
    let forwarded = datagram(7, 0);
    let (alias, _) = mesh.routers[US]
        .route(RELAY_LINK, &datagram_with_alias(&mesh, 1), &mut to)
        .unwrap();
    assert_eq!(to, vec![2]);
    mesh.routers[US].remember(alias, Bytes::from(forwarded.clone()));
    // The edge lost 1 and 9: 1 is resent from the us relay, 9 is asked of
    // the eu relay, which never had it and asks the publisher's edge.
    mesh.send(
        US,
        2,
        Control::Nack {
            track: "eu-edge-1:1".into(),
            sequences: vec![1, 9],
        },
    );
    let resent: Vec<_> = std::iter::from_fn(|| mesh.routers[US].poll_resend()).collect();
    assert_eq!(resent, vec![(2, Bytes::from(forwarded), Kind::Video)]);
    assert_eq!(
        mesh.take(EU, 1),
        vec![Control::Nack {
            track: "eu-edge-1:1".into(),
            sequences: vec![9]
        }]
    );
    assert_eq!(mesh.routers[US].stats().retransmissions, 1);
    assert_eq!(mesh.routers[US].stats().nacks_forwarded, 1);
    assert_eq!(mesh.routers[EU].stats().nacks_forwarded, 1);
}

/// A datagram as the eu relay would send it to us (its alias for the track
/// on that link).
fn datagram_with_alias(mesh: &Mesh, eu_edge_alias: u32) -> Vec<u8> {
    let mut to = Vec::new();
    let (alias, _) = mesh.routers[EU]
        .route(1, &datagram(eu_edge_alias, 0), &mut to)
        .unwrap();
    let mut d = datagram(eu_edge_alias, 0);
    MediaHeader::rewrite_alias(&mut d, alias).unwrap();
    d
}

#[test]
fn several_edges_missing_one_packet_ask_upstream_once() {
    let call = Uuid::from_u128(8);
    let mut mesh = Mesh::new();
    mesh.edge_up(EU, 1);
    for edge in [2, 3, 4] {
        mesh.edge_up(US, edge);
        mesh.send(
            US,
            edge,
            Control::Interest {
                call,
                interested: true,
            },
        );
    }
    mesh.send(EU, 1, announce(call, "eu-edge-1:1", 1, Kind::Video));
    for edge in [2, 3, 4] {
        mesh.send(
            US,
            edge,
            Control::Subscribe {
                track: "eu-edge-1:1".into(),
                layers: 1,
            },
        );
    }
    mesh.take(EU, 1);
    for edge in [2, 3, 4] {
        mesh.send(
            US,
            edge,
            Control::Nack {
                track: "eu-edge-1:1".into(),
                sequences: vec![5],
            },
        );
    }
    assert_eq!(
        mesh.take(EU, 1),
        vec![Control::Nack {
            track: "eu-edge-1:1".into(),
            sequences: vec![5]
        }],
        "one NACK crossed, not three"
    );
    // Later (the answer was lost too), it is asked again.
    mesh.now += Duration::from_millis(150);
    mesh.send(
        US,
        2,
        Control::Nack {
            track: "eu-edge-1:1".into(),
            sequences: vec![5],
        },
    );
    assert_eq!(mesh.take(EU, 1).len(), 1);
}

#[test]
fn tracks_learned_from_a_relay_are_forgotten_when_interest_ends() {
    let call = Uuid::from_u128(9);
    let mut mesh = Mesh::new();
    mesh.edge_up(EU, 1);
    mesh.edge_up(US, 2);
    mesh.send(
        US,
        2,
        Control::Interest {
            call,
            interested: true,
        },
    );
    mesh.send(EU, 1, announce(call, "eu-edge-1:1", 1, Kind::Video));
    assert_eq!(mesh.routers[US].tracks(), 1);
    // The last us edge leaves the call: the us relay forgets the eu track,
    // so a later edge is not offered a track that may be long gone.
    mesh.send(
        US,
        2,
        Control::Interest {
            call,
            interested: false,
        },
    );
    assert_eq!(mesh.routers[US].tracks(), 0);
    mesh.send(
        EU,
        1,
        Control::Unannounce {
            track: "eu-edge-1:1".into(),
        },
    );
    mesh.edge_up(US, 3);
    mesh.take(US, 3);
    mesh.send(
        US,
        3,
        Control::Interest {
            call,
            interested: true,
        },
    );
    assert!(mesh.take(US, 3).is_empty(), "nothing stale is announced");
    // And a track announced again is learned again.
    mesh.send(EU, 1, announce(call, "eu-edge-1:2", 2, Kind::Audio));
    assert!(announced_alias(&mesh.take(US, 3), "eu-edge-1:2") > 0);
}

#[test]
fn mute_state_travels_where_the_announcement_went_and_reaches_late_comers() {
    let call = Uuid::from_u128(5);
    let mut mesh = Mesh::new();
    mesh.edge_up(EU, 1);
    mesh.edge_up(US, 2);
    mesh.edge_up(US, 3);
    let interest = Control::Interest {
        call,
        interested: true,
    };
    mesh.send(EU, 1, interest.clone());
    mesh.send(EU, 1, announce(call, "eu-edge-1:1", 11, Kind::Video));
    mesh.send(US, 2, interest.clone());
    mesh.take(US, 2);
    let muted = Control::TrackState {
        track: "eu-edge-1:1".into(),
        muted: true,
    };
    mesh.send(EU, 1, muted.clone());
    assert_eq!(mesh.take(US, 2), vec![muted], "told across the relays");
    assert!(
        mesh.take(US, 3).is_empty(),
        "not to an edge without interest"
    );
    // An edge that becomes interested later learns it from the announcement.
    mesh.send(US, 3, interest);
    let late = mesh.take(US, 3);
    assert!(
        late.iter()
            .any(|m| matches!(m, Control::Announce(a) if a.track == "eu-edge-1:1" && a.muted)),
        "{late:?}"
    );
    // Only the track's own link may change it.
    let before = mesh.routers[US].stats().control_refused;
    mesh.send(
        US,
        2,
        Control::TrackState {
            track: "eu-edge-1:1".into(),
            muted: false,
        },
    );
    assert_eq!(mesh.routers[US].stats().control_refused, before + 1);
    assert!(mesh.take(US, 3).is_empty());
}

#[test]
fn data_messages_reach_every_other_interested_edge_once_and_never_loop() {
    let mut mesh = Mesh::new();
    let call = Uuid::from_u128(99);
    let other_call = Uuid::from_u128(100);
    // Two edges in the EU, one in the US, in the call; one EU edge not.
    for (region, link) in [(EU, 1), (EU, 2), (US, 3), (EU, 4)] {
        mesh.edge_up(region, link);
    }
    for (region, link) in [(EU, 1), (EU, 2), (US, 3)] {
        mesh.send(
            region,
            link,
            Control::Interest {
                call,
                interested: true,
            },
        );
    }
    mesh.send(
        EU,
        4,
        Control::Interest {
            call: other_call,
            interested: true,
        },
    );
    for link in [1, 2, 3, 4] {
        mesh.take(if link == 3 { US } else { EU }, link);
    }
    let message = Control::Data {
        call,
        user: Uuid::from_u128(7),
        device: "laptop".into(),
        binary: false,
        payload: b"raise hand".to_vec(),
    };
    mesh.send(EU, 1, message.clone());
    assert!(mesh.take(EU, 1).is_empty(), "not echoed to the sender");
    assert_eq!(mesh.take(EU, 2), vec![message.clone()]);
    assert_eq!(
        mesh.take(US, 3),
        vec![message.clone()],
        "once, across the WAN"
    );
    assert!(
        mesh.take(EU, 4).is_empty(),
        "not to an edge outside the call"
    );
    assert_eq!(
        mesh.routers[EU].stats().data_forwarded,
        2,
        "edge 2 and the US relay"
    );
    assert_eq!(mesh.routers[US].stats().data_forwarded, 1, "edge 3 only");
    // An edge may not send into a call it did not declare.
    let refused = mesh.routers[EU].stats().control_refused;
    mesh.send(
        EU,
        4,
        Control::Data {
            call,
            user: Uuid::from_u128(8),
            device: "x".into(),
            binary: true,
            payload: vec![1, 2, 3],
        },
    );
    assert!(mesh.take(EU, 1).is_empty() && mesh.take(US, 3).is_empty());
    assert_eq!(mesh.routers[EU].stats().control_refused, refused + 1);
}
