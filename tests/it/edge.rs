//! The edge over real sockets: a control plane and an edge through their
//! production `build`/`run`; str0m bots get join tokens from the real API,
//! connect to `/v1/rtc` and send media over UDP.

use std::time::{Duration, Instant};

use edge_node::{Edge, EdgeConfig};
use reqwest::Method;
use serde_json::{Value, json};
use service::Service;
use testkit::app::{Backend, TestApp};
use testkit::bot::{Bot, BotOptions};
use testkit::client::TestUser;

const SECRET: &str = control_plane::config::TEST_CLUSTER_SECRET;

pub struct RunningEdge {
    /// Where it listens.
    pub addrs: edge_node::EdgeAddrs,
    /// Stops it (dropping it does too).
    pub stop: service::ShutdownTrigger,
    /// Its `run`.
    pub task: tokio::task::JoinHandle<Result<(), edge_node::StartError>>,
}

pub async fn start_edge(app: &TestApp, id: &str) -> RunningEdge {
    start_edge_configured(app, id, |_| {}).await
}

/// [`start_edge`] with settings changed by `tweak`.
pub async fn start_edge_configured(
    app: &TestApp,
    id: &str,
    tweak: impl FnOnce(&mut EdgeConfig),
) -> RunningEdge {
    str0m::crypto::from_feature_flags().install_process_default();
    let mut config = EdgeConfig::for_tests(id);
    tweak(&mut config);
    config.control_plane_url = Some(app.url(""));
    config.credential = Some(control_plane::api::node_credential(SECRET, id));
    let edge = Edge::build(config).await.expect("edge starts");
    let addrs = edge.addrs();
    let (stop, shutdown) = service::lifecycle::shutdown_channel();
    let task = tokio::spawn(edge.run(shutdown));
    wait_registered(app, id, Duration::from_secs(5)).await;
    RunningEdge { addrs, stop, task }
}

/// Waits until the control plane lists node `id`.
async fn wait_registered(app: &TestApp, id: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let nodes = app
            .call(Method::GET, "/internal/v1/nodes", Some(SECRET), None)
            .await
            .body;
        if nodes
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["id"] == id))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "edge {id} never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a call; returns its id.
pub async fn start_call(app: &TestApp, user: &TestUser, conversation: &str, kind: &str) -> String {
    app.post(
        "/v1/calls",
        user,
        json!({"conversation_id": conversation, "kind": kind}),
    )
    .await
    .expect(201)
    .body["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn join(app: &TestApp, user: &TestUser, call: &str) -> Value {
    app.post(
        &format!("/v1/calls/{call}/join"),
        user,
        json!({"device_id": "bot"}),
    )
    .await
    .expect(200)
    .body
}

#[tokio::test]
async fn a_publisher_reaches_five_subscribers_through_a_real_edge() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let edge = start_edge(&app, "edge-it-1").await;
    let owner = app.register("owner").await;
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(app.register(&format!("member{i}")).await);
    }
    let refs: Vec<&TestUser> = others.iter().collect();
    let group = app.group(&owner, "room", &refs).await;
    let call = start_call(&app, &owner, &group, "video").await;

    let publisher_join = join(&app, &owner, &call).await;
    assert_eq!(publisher_join["edge"]["id"], "edge-it-1");
    let publisher = Bot::join(&publisher_join, true)
        .await
        .expect("publisher connects");
    let mut subscribers = Vec::new();
    for user in &others {
        let joined = join(&app, user, &call).await;
        subscribers.push(
            Bot::join(&joined, false)
                .await
                .expect("subscriber connects"),
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let sent = publisher.report().frames_sent;
    assert!(sent > 50, "the publisher sent ({sent})");
    for bot in &subscribers {
        let report = bot.report();
        assert!(report.connected);
        assert_eq!(report.corrupt, 0, "payloads arrive byte for byte");
        assert_eq!(
            report.received.len(),
            1,
            "one video track: {:?}",
            report.tracks
        );
        let (mid, counters) = report.received.iter().next().unwrap();
        assert_eq!(
            report.first_was_keyframe.get(mid),
            Some(&true),
            "starts on a keyframe"
        );
        let first = counters[0];
        let expected: Vec<u32> = (first..first + counters.len() as u32).collect();
        assert_eq!(counters, &expected, "every frame after the first, in order");
        assert!(counters.len() > 40, "{} frames", counters.len());
        assert!(
            report.audio_packets > 40,
            "audio too ({})",
            report.audio_packets
        );
        assert_eq!(report.tracks.len(), 2);
        assert!(
            report
                .tracks
                .iter()
                .all(|t| t.user_id.to_string() == owner.id)
        );
    }
    // Operators see it on the edge's /metrics (promtool-clean).
    let metrics = metrics_of(&edge).await;
    let value = |name: &str| sample(&metrics, name);
    assert_eq!(value("cascade_edge_participants"), 6.0);
    assert_eq!(value("cascade_edge_published_tracks"), 2.0);
    assert_eq!(value("cascade_edge_subscribed_tracks"), 10.0);
    assert!(value("cascade_edge_forwarded_media_total") > 500.0);
    assert!(value("cascade_edge_keyframe_requests_total") >= 1.0);
    assert!(value("cascade_edge_worker_cpu_seconds_total{worker=\"0\"}") > 0.0);
    // Five subscribers receive the one (single-layer) video: shown as f.
    assert_eq!(value("cascade_edge_video_subscriptions{layer=\"f\"}"), 5.0);
    assert_eq!(
        value("cascade_edge_video_subscriptions{layer=\"none\"}"),
        0.0
    );
    assert!(
        value("cascade_edge_subscriber_estimate_bytes_per_second_count") >= 6.0,
        "every session's estimate is sampled"
    );
    if let Some((ok, complaints)) = testkit::promtool_check(&metrics) {
        assert!(ok && complaints.is_empty(), "promtool: {complaints}");
    }
    // The registry sees the edge's usage from its heartbeats.
    let nodes = app
        .call(Method::GET, "/internal/v1/nodes", Some(SECRET), None)
        .await
        .body;
    let usage = &nodes[0]["usage"];
    assert_eq!(usage["tracks"], 2, "{nodes}");
    assert_eq!(usage["subscriptions"], 10, "{nodes}");
    assert!(
        usage["packets_out_per_sec"].as_u64().unwrap() > 100,
        "{nodes}"
    );
    assert!(
        usage["bits_in_per_sec"].as_u64().unwrap() > 10_000,
        "{nodes}"
    );

    // A bad token never gets a session; garbage UDP hurts nobody.
    let bad = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/rtc?token=not-a-token",
        edge.addrs.http
    ))
    .await;
    assert!(bad.is_err(), "refused before the upgrade");
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for payload in [&b"\x00\x01garbage"[..], &[0x16; 13], &[0x80; 1200], &[]] {
        junk.send_to(payload, edge.addrs.media[0]).unwrap();
    }

    // A subscriber leaves: the edge reports the session gone and the
    // control plane removes it.
    let leaving = subscribers.pop().unwrap();
    leaving.leave().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let state = app.get(&format!("/v1/calls/{call}"), &owner).await.body;
        if state["participants"].as_array().map(Vec::len) == Some(5) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = subscribers[0].report().video_frames();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = subscribers[0].report().video_frames();
    assert!(after > before, "the others still receive");

    for bot in subscribers {
        bot.leave().await;
    }
    publisher.leave().await;
    edge.stop.trigger();
    tokio::time::timeout(Duration::from_secs(10), edge.task)
        .await
        .expect("the edge stops")
        .unwrap()
        .unwrap();
}

/// SIGTERM on an edge: it tells the control plane it is draining, whose
/// sweeper sends its participants `call.migrate` to another edge; the node
/// refuses new sessions, waits (bounded) and exits, leaving the registry.
#[tokio::test]
async fn a_draining_edge_hands_its_participants_to_another() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let first = start_edge(&app, "edge-drain-a").await;
    let second = start_edge(&app, "edge-drain-b").await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    let call = start_call(&app, &alice, &chat, "audio").await;
    let joined = join(&app, &alice, &call).await;
    let placed = joined["edge"]["id"].as_str().unwrap().to_owned();
    let bot = Bot::join(&joined, true).await.expect("connects");
    let (victim, survivor) = if placed == "edge-drain-a" {
        (first, second)
    } else {
        (second, first)
    };
    let survivor_id = if placed == "edge-drain-a" {
        "edge-drain-b"
    } else {
        "edge-drain-a"
    };
    let mut socket = testkit::ws::WsClient::connect(
        app.server.as_ref().unwrap().http_addr(),
        Some(&alice.access),
        None,
    )
    .await
    .unwrap();
    socket.expect("ready", Duration::from_secs(5)).await;
    // The control plane treats nodes as dead only a node TTL after it
    // starts; draining is immediate, but give the sweeper its start-up grace.
    tokio::time::sleep(Duration::from_secs(3)).await;

    victim.stop.trigger();
    let migrate = socket.expect("call.migrate", Duration::from_secs(5)).await;
    assert_eq!(migrate["data"]["from_node_id"], placed.as_str());
    assert_eq!(migrate["data"]["join"]["edge"]["id"], survivor_id);
    // A new session on the draining edge is refused.
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/rtc?token={}",
        victim.addrs.http,
        joined["token"].as_str().unwrap()
    ))
    .await;
    assert!(refused.is_err());
    // It exits within its drain timeout (3 s in tests) even though the bot
    // never moved, and leaves the registry.
    tokio::time::timeout(Duration::from_secs(8), victim.task)
        .await
        .expect("the edge exits")
        .unwrap()
        .unwrap();
    let nodes = app
        .call(Method::GET, "/internal/v1/nodes", Some(SECRET), None)
        .await
        .body;
    let ids: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, [survivor_id]);
    bot.leave().await;
    survivor.stop.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(8), survivor.task).await;
}

/// Bad signaling (no offer first, bad SDP) gets clear errors; a client
/// flooding the signaling socket is cut off with `rate_limited`; the
/// call's other participants carry on.
#[tokio::test]
async fn a_signaling_flood_is_cut_off_without_harming_others() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let edge = start_edge(&app, "edge-flood").await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    let call = start_call(&app, &alice, &chat, "video").await;
    app.post(&format!("/v1/calls/{call}/accept"), &bob, json!({}))
        .await
        .expect(200);
    let publisher = Bot::join(&join(&app, &alice, &call).await, true)
        .await
        .unwrap();
    let listener = Bot::join(&join(&app, &bob, &call).await, false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Bob's second device floods.
    let flooder = app
        .post(
            &format!("/v1/calls/{call}/join"),
            &bob,
            json!({"device_id": "flood"}),
        )
        .await
        .expect(200)
        .body;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/rtc?token={}",
        edge.addrs.http,
        flooder["token"].as_str().unwrap()
    ))
    .await
    .unwrap();
    // Not even an offer first: refused clearly.
    ws.send(Message::Text("{\"type\":\"answer\",\"sdp\":\"x\"}".into()))
        .await
        .unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(
        first.to_text().unwrap().contains("bad_message"),
        "{first:?}"
    );
    assert_eq!(
        close_of(&mut ws).await,
        Some((4400, "bad_message".into())),
        "then a close frame that says why"
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/rtc?token={}",
        edge.addrs.http,
        flooder["token"].as_str().unwrap()
    ))
    .await
    .unwrap();
    ws.send(Message::Text(
        "{\"type\":\"offer\",\"sdp\":\"not sdp\"}".into(),
    ))
    .await
    .unwrap();
    let refused = ws.next().await.unwrap().unwrap();
    let text = refused.to_text().unwrap();
    assert!(text.contains("bad_sdp"), "{refused:?}");
    // A fixed sentence, not the parser's internals (which quoted heap
    // addresses).
    assert!(text.contains("the SDP could not be parsed"), "{text}");
    assert!(!text.contains("0x"), "{text}");
    assert_eq!(close_of(&mut ws).await, Some((4400, "bad_sdp".into())));

    // A real session that then floods: cut off with `rate_limited`.
    let mut rtc = str0m::Rtc::builder().build(std::time::Instant::now());
    let mut api = rtc.sdp_api();
    api.add_channel("flood".into());
    let (offer, _pending) = api.apply().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/rtc?token={}",
        edge.addrs.http,
        flooder["token"].as_str().unwrap()
    ))
    .await
    .unwrap();
    let offer = json!({"type": "offer", "sdp": offer.to_sdp_string()}).to_string();
    ws.send(Message::Text(offer.into())).await.unwrap();
    let answer = ws.next().await.unwrap().unwrap();
    assert!(
        answer.to_text().unwrap().contains("\"answer\""),
        "{answer:?}"
    );
    // One burst (queued, then flushed once): sent frame by frame, a
    // loaded machine spread 200 frames over seconds, under the per-second
    // limit.
    for _ in 0..300 {
        if ws
            .feed(Message::Text("{\"type\":\"answer\",\"sdp\":\"x\"}".into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = ws.flush().await;
    let mut cut_off = false;
    let mut closed = None;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
        if frame.to_text().is_ok_and(|t| t.contains("rate_limited")) {
            cut_off = true;
        }
        if let Message::Close(Some(c)) = frame {
            closed = Some((u16::from(c.code), c.reason.to_string()));
        }
    }
    assert!(cut_off, "the flooder was told why it was cut off");
    assert_eq!(closed, Some((4429, "rate_limited".into())));

    let before = listener.report().video_frames();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = listener.report().video_frames();
    assert!(
        after > before + 10,
        "the call carried on ({before} → {after})"
    );
    assert_eq!(listener.report().corrupt, 0);
    let _ = (publisher.leave().await, listener.leave().await);
}

/// The code and reason of the next close frame on `ws` (frames before it
/// skipped), or `None` when the connection ends without one.
async fn close_of<S>(ws: &mut S) -> Option<(u16, String)>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
        if let Message::Close(close) = frame {
            return close.map(|c| (u16::from(c.code), c.reason.to_string()));
        }
    }
    None
}

/// Simulcast through a real edge over real UDP (str0m bots): a subscriber
/// behind a 300 kbit/s bottleneck (`testkit::udp_proxy`) gets the `q`
/// layer with its audio while an unlimited one gets `f`; when the limit
/// goes, it climbs back to `f`.
#[tokio::test]
async fn a_subscriber_behind_a_thin_link_gets_q_and_climbs_back_to_f_when_it_widens() {
    use testkit::bot::BotOptions;
    use testkit::udp_proxy::{Downlink, UdpProxy};

    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let edge = start_edge(&app, "edge-thin").await;
    let owner = app.register("presenter").await;
    let (free_user, thin_user) = (app.register("wide").await, app.register("thin").await);
    let group = app.group(&owner, "layers", &[&free_user, &thin_user]).await;
    let call = start_call(&app, &owner, &group, "video").await;
    let join = async |user: &TestUser| {
        app.post(
            &format!("/v1/calls/{call}/join"),
            user,
            json!({"device_id": "bot"}),
        )
        .await
        .expect(200)
        .body
    };
    // Layers of 6,000 / 2,000 / 600 bytes a frame: ~1.4 Mbit/s, ~480 and
    // ~150 kbit/s.
    let publisher = Bot::join_with(
        &join(&owner).await,
        BotOptions {
            simulcast: true,
            delta_body: 6_000,
            keyframe_body: 12_000,
            ..BotOptions::new(true)
        },
    )
    .await
    .expect("publisher");
    let free = Bot::join(&join(&free_user).await, false)
        .await
        .expect("wide");
    let downlink = Downlink::new(300_000);
    let proxy = UdpProxy::start_shaped(
        edge.addrs.media[0],
        Duration::ZERO,
        0.0,
        Some(downlink.clone()),
    )
    .await
    .unwrap();
    let thin = Bot::join_with(
        &join(&thin_user).await,
        BotOptions {
            via: Some(proxy.addr),
            ..BotOptions::new(false)
        },
    )
    .await
    .expect("thin");
    let layer = |bot: &Bot| {
        let r = bot.report();
        (
            r.layers.first().and_then(|l| l.layer.clone()),
            r.last_frame_bytes,
        )
    };
    let wait = async |what: &str, limit: Duration, done: &dyn Fn() -> bool| {
        let deadline = tokio::time::Instant::now() + limit;
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: thin {:?} (estimate {:?} kbit/s), wide {:?}",
                layer(&thin),
                thin.report().estimate_kbps,
                layer(&free)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Let the estimate find the bottleneck (the thin link starts wherever
    // the first layer to arrive puts it and climbs until it congests).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let started = tokio::time::Instant::now();
    wait(
        "the thin link never settled on q",
        Duration::from_secs(30),
        &|| {
            let (t, bytes) = layer(&thin);
            t.as_deref() == Some("q") && bytes < 1_500
        },
    )
    .await;
    eprintln!(
        "thin link on q after {:?} (estimate {:?} kbit/s)",
        started.elapsed(),
        thin.report().estimate_kbps
    );
    let (wide, wide_bytes) = layer(&free);
    assert_eq!(wide.as_deref(), Some("f"), "the wide link keeps f");
    assert!(wide_bytes > 5_000, "{wide_bytes} bytes a frame");
    // On q, the thin link carries video and audio: 3 s is 90 audio packets.
    let (frames, audio) = (thin.report().video_frames(), thin.report().audio_packets);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = thin.report();
    eprintln!(
        "in 3 s on q: {} video frames, {} audio packets, layer {:?}",
        report.video_frames() - frames,
        report.audio_packets - audio,
        layer(&thin)
    );
    assert!(report.video_frames() > frames + 45, "q flows");
    assert!(
        report.audio_packets >= audio + 81,
        "audio (≥ 90 %) carries on"
    );
    assert_eq!(layer(&thin).0.as_deref(), Some("q"), "and stays on q");
    assert_eq!(report.corrupt, 0);
    // The limit goes: probing finds room, and it climbs back to f.
    downlink.set_rate(0);
    let lifted = tokio::time::Instant::now();
    wait("never climbed back to f", Duration::from_secs(40), &|| {
        let (t, bytes) = layer(&thin);
        t.as_deref() == Some("f") && bytes > 5_000
    })
    .await;
    eprintln!("back on f {:?} after the limit went", lifted.elapsed());
    publisher.leave().await;
    free.leave().await;
    thin.leave().await;
}

/// The first control-plane URL an edge has is dead (a replica that went
/// away): it registers through the next one, takes join-token keys from
/// it, and a bot's join through that replica connects.
#[tokio::test]
async fn an_edge_fails_over_to_its_next_control_plane_url() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    str0m::crypto::from_feature_flags().install_process_default();
    let dead = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", socket.local_addr().unwrap())
    };
    let mut config = EdgeConfig::for_tests("edge-fo");
    config.control_plane_url = Some(dead);
    config.control_plane_fallback_urls = vec![app.url("")];
    config.credential = Some(control_plane::api::node_credential(SECRET, "edge-fo"));
    let edge = Edge::build(config).await.expect("edge starts");
    let (stop, shutdown) = service::lifecycle::shutdown_channel();
    let task = tokio::spawn(edge.run(shutdown));
    // Registered through its second URL.
    wait_registered(&app, "edge-fo", Duration::from_secs(10)).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.direct(&alice, &bob).await;
    let call = start_call(&app, &alice, &chat, "audio").await;
    let joined = app
        .post(
            &format!("/v1/calls/{call}/join"),
            &alice,
            json!({"device_id": "d"}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(joined["edge"]["id"], "edge-fo");
    // The edge verifies the token with keys fetched through the fallback.
    let bot = Bot::join_with(&joined, BotOptions::new(true))
        .await
        .expect("the join token is accepted");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bot.report().connected {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bot.leave().await;
    stop.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

/// The close frame on `ws` within `limit` (frames before it skipped).
async fn close_within<S>(ws: &mut S, limit: Duration) -> Option<(u16, String)>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Close(close) = frame {
            return close.map(|c| (u16::from(c.code), c.reason.to_string()));
        }
    }
    None
}

/// Waits until the edge's `/metrics` has `line` (a sample, value included).
/// The edge's `/metrics` page.
async fn metrics_of(edge: &RunningEdge) -> String {
    reqwest::get(format!("http://{}/metrics", edge.addrs.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// One sample of a metrics page (`name{labels}` as exposed); it must be
/// there.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name}"))
}

async fn wait_metric(edge: &RunningEdge, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_of(edge).await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "never {line:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One join token holds one place on the edge, however often it is used
/// (each use replaces the session it opened before, which is told
/// `replaced`), and a session that sends its offer but never does ICE is
/// dropped after `connect_timeout_secs` (`connect_timeout`). Before, 100
/// sockets with one token held 100 places, forever.
#[tokio::test]
async fn one_join_token_holds_one_place_and_sessions_that_never_connect_are_dropped() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let edge = start_edge_configured(&app, "edge-replay", |c| c.connect_timeout_secs = 2).await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    let call = start_call(&app, &alice, &chat, "video").await;
    app.post(&format!("/v1/calls/{call}/accept"), &bob, json!({}))
        .await
        .expect(200);
    let publisher = Bot::join(&join(&app, &alice, &call).await, true)
        .await
        .unwrap();
    let token = join(&app, &bob, &call).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sockets = Vec::new();
    for _ in 0..5 {
        // An offer, and then nothing: no ICE from this "client".
        let mut rtc = str0m::Rtc::builder().build(std::time::Instant::now());
        let mut api = rtc.sdp_api();
        api.add_channel("replay".into());
        let (offer, _pending) = api.apply().unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async(format!(
            "ws://{}/v1/rtc?token={token}",
            edge.addrs.http
        ))
        .await
        .unwrap();
        let offer = json!({"type": "offer", "sdp": offer.to_sdp_string()}).to_string();
        ws.send(Message::Text(offer.into())).await.unwrap();
        let answer = ws.next().await.unwrap().unwrap();
        assert!(
            answer.to_text().unwrap().contains("\"answer\""),
            "{answer:?}"
        );
        sockets.push(ws);
    }
    let last = sockets.pop().unwrap();
    for mut ws in sockets {
        assert_eq!(
            close_within(&mut ws, Duration::from_secs(5)).await,
            Some((4409, "replaced".into())),
            "an earlier use of the token is closed, saying why"
        );
    }
    let mut last = last;
    let started = Instant::now();
    assert_eq!(
        close_within(&mut last, Duration::from_secs(10)).await,
        Some((4408, "connect_timeout".into())),
        "the session that never connected is dropped"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    wait_metric(
        &edge,
        "cascade_edge_sessions_closed_total{reason=\"replaced\"} 4",
    )
    .await;
    wait_metric(
        &edge,
        "cascade_edge_sessions_closed_total{reason=\"connect_timeout\"} 1",
    )
    .await;
    wait_metric(&edge, "cascade_edge_participants 1").await;
    // The real participant was never disturbed.
    assert!(publisher.report().connected);
    assert!(publisher.report().closed.is_none());
    let _ = publisher.leave().await;
}

/// The control plane's call state reaches the edge: a participant who
/// leaves over REST, and everyone when the call is ended, lose their edge
/// sessions within a heartbeat or two (`revoked`, 4403), while those still
/// in the call keep their media. Before, leaving over REST or ending a
/// call left every stream flowing for minutes.
#[tokio::test]
async fn leaving_over_rest_or_ending_the_call_closes_the_edge_sessions() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let edge = start_edge(&app, "edge-revoke").await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let group = app.group(&alice, "team", &[&bob, &carol]).await;
    let call = start_call(&app, &alice, &group, "video").await;
    let publisher = Bot::join(&join(&app, &alice, &call).await, true)
        .await
        .unwrap();
    let bob_bot = Bot::join(&join(&app, &bob, &call).await, false)
        .await
        .unwrap();
    let carol_bot = Bot::join(&join(&app, &carol, &call).await, false)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bob_bot.report().video_frames() < 10 || carol_bot.report().video_frames() < 10 {
        assert!(Instant::now() < deadline, "media never flowed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    app.post(
        &format!("/v1/calls/{call}/leave"),
        &bob,
        json!({"device_id": "bot"}),
    )
    .await
    .expect(204);
    let left = Instant::now();
    while bob_bot.report().closed.is_none() {
        assert!(
            left.elapsed() < Duration::from_secs(8),
            "bob's edge session outlived his leaving"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_leave = left.elapsed();
    assert_eq!(bob_bot.report().closed, Some((4403, "revoked".into())));
    assert!(
        bob_bot
            .report()
            .errors
            .iter()
            .any(|e| e.starts_with("revoked")),
        "{:?}",
        bob_bot.report().errors
    );
    let before = carol_bot.report().video_frames();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        carol_bot.report().video_frames() > before + 10,
        "carol's media carried on"
    );
    assert!(carol_bot.report().closed.is_none());

    app.post(&format!("/v1/calls/{call}/end"), &alice, json!({}))
        .await
        .expect(200);
    let ended = Instant::now();
    while publisher.report().closed.is_none() || carol_bot.report().closed.is_none() {
        assert!(
            ended.elapsed() < Duration::from_secs(8),
            "sessions outlived their call"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_end = ended.elapsed();
    assert_eq!(publisher.report().closed, Some((4403, "revoked".into())));
    assert_eq!(carol_bot.report().closed, Some((4403, "revoked".into())));
    wait_metric(
        &edge,
        "cascade_edge_sessions_closed_total{reason=\"revoked\"} 3",
    )
    .await;
    wait_metric(&edge, "cascade_edge_participants 0").await;
    eprintln!("edge sessions closed {after_leave:?} after leave, {after_end:?} after end");
}

/// Frames of the first video track a bot receives from `user`, checked:
/// intact, starting on a keyframe, none missing after the first (a layer
/// switch may repeat the frame it happens at).
fn assert_video_from(bot: &Bot, user: &TestUser, what: &str) {
    let report = bot.report();
    assert_eq!(report.corrupt, 0, "{what}: payloads arrive byte for byte");
    let mid = report
        .tracks
        .iter()
        .find(|t| t.kind == "video" && t.user_id.to_string() == user.id)
        .map(|t| t.mid.clone())
        .unwrap_or_else(|| panic!("{what}: no video track of {}: {:?}", user.id, report.tracks));
    let mut counters = report
        .received
        .get(&mid)
        .unwrap_or_else(|| panic!("{what}: nothing received on {mid}"))
        .clone();
    assert_eq!(
        report.first_was_keyframe.get(&mid),
        Some(&true),
        "{what}: starts on a keyframe"
    );
    counters.dedup();
    assert!(counters.len() > 30, "{what}: {} frames", counters.len());
    let first = counters[0];
    let expected: Vec<u32> = (first..first + counters.len() as u32).collect();
    assert_eq!(
        counters, expected,
        "{what}: every frame after the first, in order"
    );
}

/// One call over two workers (past `spread_calls_above` its sessions go
/// to the other worker): video and audio cross between the workers' cores
/// both ways, each subscriber gets the simulcast layer it asked for
/// whichever worker it is on, data messages reach everyone once, and a
/// publisher who leaves is gone from both workers.
#[tokio::test]
async fn one_call_spreads_over_two_workers_and_media_crosses_between_them() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let edge = start_edge_configured(&app, "edge-spread", |config| {
        config.workers = 2;
        config.spread_calls_above = 1;
    })
    .await;
    let owner = app.register("spreader").await;
    let members = [
        app.register("second").await,
        app.register("third").await,
        app.register("fourth").await,
    ];
    let refs: Vec<&TestUser> = members.iter().collect();
    let group = app.group(&owner, "spread", &refs).await;
    let call = start_call(&app, &owner, &group, "video").await;

    // A simulcast publisher with a data channel, then a second publisher
    // and two viewers; the edge places them on alternating workers.
    let mut options = BotOptions::new(true);
    options.simulcast = true;
    options.data_channel = true;
    let first = Bot::join_with(&join(&app, &owner, &call).await, options)
        .await
        .expect("first publisher");
    let mut options = BotOptions::new(true);
    options.data_channel = true;
    let second = Bot::join_with(&join(&app, &members[0], &call).await, options)
        .await
        .expect("second publisher");
    let mut viewers = Vec::new();
    for user in &members[1..] {
        let mut options = BotOptions::new(false);
        options.data_channel = true;
        viewers.push(
            Bot::join_with(&join(&app, user, &call).await, options)
                .await
                .expect("viewer"),
        );
    }
    let worker_of = |bot: &Bot| {
        bot.report()
            .edge_media
            .expect("the answer names a candidate")
    };
    assert_eq!(edge.addrs.media.len(), 2);
    assert_ne!(worker_of(&first), worker_of(&second), "the call spread");
    assert_ne!(worker_of(&viewers[0]), worker_of(&viewers[1]));
    assert!(
        [&first, &second, &viewers[0], &viewers[1]]
            .iter()
            .all(|b| edge.addrs.media.contains(&worker_of(b)))
    );

    // The viewer on the other worker wants the small layer; the one on the
    // publisher's worker gets the full one.
    super::relay::until(
        "the viewer never saw the video",
        Duration::from_secs(10),
        || viewers[1].request_layer_of(&owner.id, "q"),
    )
    .await;
    let layer_of = |bot: &Bot, user: &TestUser| {
        let report = bot.report();
        let mid = report
            .tracks
            .iter()
            .find(|t| t.kind == "video" && t.user_id.to_string() == user.id)
            .map(|t| t.mid.clone());
        report
            .layers
            .iter()
            .find(|l| Some(&l.mid) == mid.as_ref())
            .and_then(|l| l.layer.clone())
            .unwrap_or_default()
    };
    super::relay::until("q and f never arrived", Duration::from_secs(15), || {
        layer_of(&viewers[1], &owner) == "q" && layer_of(&viewers[0], &owner) == "f"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (bot, what) in [
        (&second, "second publisher"),
        (&viewers[0], "viewer of f, the publisher's worker"),
        (&viewers[1], "viewer of q, the other worker"),
    ] {
        assert_video_from(bot, &owner, what);
        assert!(bot.report().audio_packets > 40, "{what}: audio too");
    }
    for (bot, what) in [
        (&first, "first publisher"),
        (&viewers[0], "viewer on the first worker"),
        (&viewers[1], "viewer on the second worker"),
    ] {
        assert_video_from(bot, &members[0], what);
    }

    // Data messages: from each worker, to everyone else once.
    super::relay::until(
        "data channels never opened",
        Duration::from_secs(10),
        || {
            [&first, &second, &viewers[0], &viewers[1]]
                .iter()
                .all(|b| b.report().channel_open)
        },
    )
    .await;
    first.send_data("from the first worker");
    second.send_data("from the second worker");
    let count = |bot: &Bot, text: &str| {
        bot.report()
            .data
            .iter()
            .filter(|m| m.text.as_deref() == Some(text))
            .count()
    };
    super::relay::until(
        "data messages never arrived",
        Duration::from_secs(10),
        || {
            count(&second, "from the first worker") == 1
                && count(&first, "from the second worker") == 1
                && viewers.iter().all(|v| {
                    count(v, "from the first worker") == 1
                        && count(v, "from the second worker") == 1
                })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&first, "from the first worker"), 0, "not echoed");
    assert!(
        viewers
            .iter()
            .all(|v| count(v, "from the first worker") == 1),
        "once"
    );

    // The first publisher leaves: its tracks leave both workers' sessions,
    // and the second publisher's video still reaches everyone.
    first.leave().await;
    super::relay::until(
        "the first publisher's tracks stayed",
        Duration::from_secs(10),
        || {
            [&second, &viewers[0], &viewers[1]].iter().all(|b| {
                b.report()
                    .tracks
                    .iter()
                    .all(|t| t.user_id.to_string() != owner.id)
            })
        },
    )
    .await;
    let frames = |bot: &Bot| bot.report().received.values().map(Vec::len).sum::<usize>();
    let before = frames(&viewers[0]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = frames(&viewers[0]);
    assert!(after > before, "the second publisher's video still arrives");

    let metrics = metrics_of(&edge).await;
    let value = |name: &str| sample(&metrics, name);
    assert_eq!(value("cascade_edge_participants"), 3.0);
    assert_eq!(value("cascade_edge_mesh_frames_dropped_total"), 0.0);
    // Once per frame and worker: two publishers' audio and video (three
    // layers of one) for about 6 s cross, hundreds of frames, not one per
    // subscriber.
    let crossed = value("cascade_edge_mesh_frames_total");
    assert!(crossed > 300.0, "{crossed} frames crossed between workers");
    for bot in viewers {
        bot.leave().await;
    }
    second.leave().await;
    edge.stop.trigger();
    tokio::time::timeout(Duration::from_secs(10), edge.task)
        .await
        .expect("the edge stops")
        .unwrap()
        .unwrap();
}
