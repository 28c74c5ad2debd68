//! Browser interop: two headless Chromium pages (fake camera and
//! microphone) join one call through the real control-plane API and a real
//! edge, and each decodes the other's video and receives its audio.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::app::{Backend, TestApp};
use testkit::browser::{Browser, serve_page};

use crate::edge::start_call;

/// What every test page shares: the signaling socket (opened with the
/// URL and token from the page's `#fragment`), answers to the edge's
/// offers in order, errors into `window.result.error`, other messages to
/// `onOther`; then the page's own offer once the socket is open.
const SIGNALING_JS: &str = r#"
window.result = { error: null };
let chain = Promise.resolve();
const params = new URLSearchParams(location.hash.slice(1));
function signaling(pc, onOther) {
  const ws = new WebSocket(params.get('url') + '?token=' + encodeURIComponent(params.get('token')));
  async function handle(msg) {
    if (msg.type === 'answer') {
      await pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
    } else if (msg.type === 'offer') {
      // Crossed offers: ours stands, the edge gives way and offers again.
      if (pc.signalingState === 'have-local-offer') return;
      await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      ws.send(JSON.stringify({ type: 'answer', sdp: answer.sdp }));
    } else if (msg.type === 'error') {
      window.result.error = msg.code + ': ' + msg.message;
    } else if (onOther) {
      onOther(msg, ws);
    }
  }
  ws.onmessage = (m) => { chain = chain.then(() => handle(JSON.parse(m.data))).catch(e => { window.result.error = String(e); }); };
  return ws;
}
async function offer(ws, pc, sources) {
  if (ws.readyState !== WebSocket.OPEN) {
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error('signaling socket failed')); });
  }
  // In the chain: never while an edge offer is being answered.
  const turn = chain.then(async () => {
    const sdp = await pc.createOffer();
    await pc.setLocalDescription(sdp);
    ws.send(JSON.stringify({ type: 'offer', sdp: sdp.sdp, sources: sources || {} }));
  });
  chain = turn.catch(() => {});
  await turn;
}
"#;

/// A page: the shared signaling script, then `script`.
fn page(script: &str) -> String {
    format!("<!doctype html>\n<html><body><script>{SIGNALING_JS}{script}</script></body></html>\n")
}

/// The page: joins with the signaling URL and token from its `#fragment`,
/// publishes camera + microphone, answers the edge's offers in order, and
/// exposes `stats()` (from `getStats`).
const PAGE: &str = r#"
window.result.tracks = 0;
async function run() {
  const pc = new RTCPeerConnection();
  window.pc = pc;
  pc.ontrack = () => { window.result.tracks += 1; };
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240 } });
  stream.getTracks().forEach(t => pc.addTrack(t, stream));
  await offer(signaling(pc), pc);
}
async function stats() {
  if (!window.pc) return { ...window.result, framesDecoded: 0, audioBytes: 0 };
  const report = await window.pc.getStats();
  let framesDecoded = 0, audioBytes = 0, codec = null;
  report.forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') {
      framesDecoded += r.framesDecoded || 0;
      if (r.codecId && report.get(r.codecId)) codec = report.get(r.codecId).mimeType;
    }
    if (r.type === 'inbound-rtp' && r.kind === 'audio') audioBytes += r.bytesReceived || 0;
  });
  return { ...window.result, framesDecoded, audioBytes, codec, connection: window.pc.connectionState };
}
run().catch(e => { window.result.error = String(e); });
"#;

#[tokio::test]
async fn two_chromium_pages_see_and_hear_each_other_through_the_edge() {
    see_and_hear(None).await;
}

#[tokio::test]
async fn two_chromium_pages_in_an_h264_call_decode_h264() {
    see_and_hear(Some("h264")).await;
}

/// Two pages in a direct call (of `video_codec`, if given) decode each
/// other's video and receive each other's audio.
async fn see_and_hear(video_codec: Option<&str>) {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let _edge = crate::edge::start_edge(&app, "edge-browser").await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    let call = match video_codec {
        None => start_call(&app, &alice, &chat, "video").await,
        Some(codec) => {
            let started = app
                .post(
                    "/v1/calls",
                    &alice,
                    json!({"conversation_id": chat, "kind": "video", "video_codec": codec}),
                )
                .await
                .expect(201)
                .body;
            assert_eq!(started["video_codec"], codec);
            started["id"].as_str().unwrap().to_owned()
        }
    };
    app.post(&format!("/v1/calls/{call}/accept"), &bob, json!({}))
        .await
        .expect(200);
    let page_url = serve_page(page(PAGE)).await;
    let mut pages = Vec::new();
    for user in [&alice, &bob] {
        let joined = app
            .post(
                &format!("/v1/calls/{call}/join"),
                user,
                json!({"device_id": "chromium"}),
            )
            .await
            .expect(200)
            .body;
        let url = format!(
            "{page_url}#url={}&token={}",
            joined["edge"]["signaling_url"].as_str().unwrap(),
            joined["token"].as_str().unwrap()
        );
        pages.push(browser.open(&url).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last: Vec<Value> = Vec::new();
    loop {
        last.clear();
        for page in &pages {
            last.push(browser.eval(page, "stats()").await);
        }
        for stats in &last {
            assert!(stats["error"].is_null(), "page error: {stats}");
        }
        let done = last.iter().all(|s| {
            s["framesDecoded"].as_u64().unwrap_or(0) >= 30
                && s["audioBytes"].as_u64().unwrap_or(0) >= 2000
        });
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not both decoding: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let expected = if video_codec == Some("h264") {
        "video/H264"
    } else {
        "video/VP8"
    };
    for stats in &last {
        assert_eq!(stats["codec"], expected, "{stats}");
    }
    // Still rising: live media, not a burst.
    let before: Vec<u64> = last
        .iter()
        .map(|s| s["framesDecoded"].as_u64().unwrap_or(0))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (page, before) in pages.iter().zip(before) {
        let now = browser.eval(page, "stats()").await;
        assert!(now["framesDecoded"].as_u64().unwrap_or(0) > before, "{now}");
    }
}

/// The publishing page of the simulcast test: a 1280×720 fake camera sent
/// as three VP8 encodings (rids q, h, f at ¼, ½ and full size).
const SIMULCAST_PUBLISHER: &str = r#"
async function run() {
  const pc = new RTCPeerConnection();
  window.pc = pc;
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 1280, height: 720 } });
  pc.addTransceiver(stream.getVideoTracks()[0], { direction: 'sendonly', streams: [stream], sendEncodings: [
    { rid: 'q', scaleResolutionDownBy: 4 }, { rid: 'h', scaleResolutionDownBy: 2 }, { rid: 'f' } ] });
  pc.addTransceiver(stream.getAudioTracks()[0], { direction: 'sendonly', streams: [stream] });
  // Dynacast: the edge says which encodings anybody needs.
  const ws = signaling(pc, async (msg) => {
    if (msg.type !== 'encodings') return;
    const sender = pc.getTransceivers().find(t => t.mid === msg.mid).sender;
    const params = sender.getParameters();
    params.encodings.forEach(e => { e.active = msg.active.includes(e.rid); });
    await sender.setParameters(params);
    window.result.active = msg.active;
  });
  await offer(ws, pc);
}
async function stats() {
  const sent = {}, encoded = {};
  if (window.pc) (await window.pc.getStats()).forEach(r => {
    if (r.type === 'outbound-rtp' && r.kind === 'video') { sent[r.rid] = r.frameHeight || 0; encoded[r.rid] = r.framesEncoded || 0; }
  });
  return { ...window.result, sent, encoded };
}
run().catch(e => { window.result.error = String(e); });
"#;

/// A receiving page: offers only a data channel, and once it knows the
/// `mid` of the video it receives, asks for the layer that suits a tile
/// `height` pixels tall.
const SIMULCAST_VIEWER: &str = r#"
window.result.layers = null;
async function run() {
  const height = Number(params.get('height'));
  const pc = new RTCPeerConnection();
  window.pc = pc;
  pc.createDataChannel('cascade');
  let asked = null;
  const ws = signaling(pc, (msg, ws) => {
    window.ws = ws;
    if (msg.type === 'tracks') {
      const video = msg.tracks.find(t => t.kind === 'video');
      if (video && asked !== video.mid) {
        asked = video.mid;
        window.videoMid = video.mid;
        ws.send(JSON.stringify({ type: 'layers', mid: video.mid, height }));
      }
    } else if (msg.type === 'layers') {
      window.result.layers = msg;
    }
  });
  await offer(ws, pc);
}
async function stats() {
  let frameHeight = 0, framesDecoded = 0;
  if (window.pc) (await window.pc.getStats()).forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') { frameHeight = r.frameHeight || 0; framesDecoded = r.framesDecoded || 0; }
  });
  return { ...window.result, frameHeight, framesDecoded };
}
run().catch(e => { window.result.error = String(e); });
"#;

#[tokio::test]
async fn a_small_tile_gets_180p_and_a_large_one_720p_of_a_simulcast_publisher() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let _edge = crate::edge::start_edge(&app, "edge-simulcast").await;
    let users = [
        app.register("presenter").await,
        app.register("small").await,
        app.register("large").await,
    ];
    let refs: Vec<&testkit::client::TestUser> = users[1..].iter().collect();
    let group = app.group(&users[0], "simulcast", &refs).await;
    let call = start_call(&app, &users[0], &group, "video").await;
    let publisher_url = serve_page(page(SIMULCAST_PUBLISHER)).await;
    let viewer_url = serve_page(page(SIMULCAST_VIEWER)).await;
    let mut pages = Vec::new();
    for (user, page, height) in [
        (&users[0], &publisher_url, 0),
        (&users[1], &viewer_url, 180),
        (&users[2], &viewer_url, 720),
    ] {
        let joined = app
            .post(
                &format!("/v1/calls/{call}/join"),
                user,
                json!({"device_id": "chromium"}),
            )
            .await
            .expect(200)
            .body;
        let url = format!(
            "{page}#url={}&token={}&height={height}",
            joined["edge"]["signaling_url"].as_str().unwrap(),
            joined["token"].as_str().unwrap()
        );
        pages.push(browser.open(&url).await);
    }
    // Chromium's own bandwidth estimate starts low and turns on its higher
    // encodings as it grows: allow it time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let mut seen = Vec::new();
        for page in &pages {
            let stats = browser.eval(page, "stats()").await;
            assert!(stats["error"].is_null(), "page error: {stats}");
            seen.push(stats);
        }
        let (small, large) = (&seen[1], &seen[2]);
        // The `layers` message can trail the picture by a moment on a
        // loaded machine: wait for it too (the asserts below still check
        // every field once it has come).
        if small["frameHeight"] == 180
            && large["frameHeight"] == 720
            && small["framesDecoded"].as_u64().unwrap_or(0) > 30
            && small["layers"]["layers"][0]["max"] == "q"
        {
            assert_eq!(small["layers"]["layers"][0]["layer"], "q", "{small}");
            assert_eq!(small["layers"]["layers"][0]["max"], "q", "{small}");
            assert_eq!(large["layers"]["layers"][0]["layer"], "f", "{large}");
            eprintln!(
                "publisher sends {}; layers: {small} / {large}",
                seen[0]["sent"]
            );
            assert_eq!(seen[0]["active"], json!(["q", "h", "f"]), "{}", seen[0]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "180p / 720p never seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The large tile shrinks to 180 px: nobody needs h or f any more, and
    // after the 5 s hold the publisher stops encoding them.
    browser
        .eval(
            &pages[2],
            "(() => { window.ws.send(JSON.stringify({ type: 'layers', mid: window.videoMid, height: 180 })); return true; })()",
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let stats = browser.eval(&pages[0], "stats()").await;
        if stats["active"] == json!(["q"]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "h and f never paused: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = browser.eval(&pages[0], "stats()").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = browser.eval(&pages[0], "stats()").await;
    let grew = |rid: &str| after["encoded"][rid].as_u64() > before["encoded"][rid].as_u64();
    assert!(grew("q"), "q goes on: {before} → {after}");
    assert!(
        !grew("f") && !grew("h"),
        "h and f are not encoded: {before} → {after}"
    );
    // Both viewers still decode (q).
    for page in &pages[1..] {
        let stats = browser.eval(page, "stats()").await;
        assert_eq!(stats["frameHeight"], 180, "{stats}");
    }
}

/// The presenter: camera and microphone (fake: a beep twice a second), a
/// data channel that says hello, and once connected a screen share (a
/// canvas's stream) offered mid-call and declared as `screen`.
const PRESENTER: &str = r#"
window.result.received = [];
window.result.shared = false;
async function run() {
  const pc = new RTCPeerConnection();
  window.pc = pc;
  const channel = pc.createDataChannel('cascade');
  channel.onopen = () => channel.send('hello from the presenter');
  channel.onmessage = (m) => window.result.received.push(JSON.parse(m.data));
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240 } });
  stream.getTracks().forEach(t => pc.addTransceiver(t, { direction: 'sendonly', streams: [stream] }));
  const ws = signaling(pc);
  await offer(ws, pc);
  await new Promise(resolve => { const t = setInterval(() => { if (pc.connectionState === 'connected') { clearInterval(t); resolve(); } }, 100); });
  // The "screen": a canvas that changes every frame.
  const canvas = document.createElement('canvas');
  canvas.width = 640; canvas.height = 360;
  const g = canvas.getContext('2d');
  let n = 0;
  setInterval(() => { g.fillStyle = `hsl(${(n++ * 7) % 360} 80% 50%)`; g.fillRect(0, 0, 640, 360); g.fillStyle = '#000'; g.fillText(String(n), 20, 40); }, 50);
  const screen = canvas.captureStream(15).getVideoTracks()[0];
  const transceiver = pc.addTransceiver(screen, { direction: 'sendonly' });
  // The mid exists once the offer is set locally: declare it then.
  const sdp = await chain.then(async () => {
    const o = await pc.createOffer();
    await pc.setLocalDescription(o);
    return o.sdp;
  });
  ws.send(JSON.stringify({ type: 'offer', sdp, sources: { [transceiver.mid]: 'screen' } }));
  window.result.shared = transceiver.mid;
}
async function stats() { return { ...window.result, connection: window.pc ? window.pc.connectionState : null }; }
run().catch(e => { window.result.error = String(e); });
"#;

/// A viewer: a data channel (it publishes nothing), the track lists, the
/// speakers, and what it decodes on each m-line.
const VIEWER: &str = r#"
window.result.received = [];
window.result.tracks = [];
window.result.speakers = null;
async function run() {
  const pc = new RTCPeerConnection();
  window.pc = pc;
  const channel = pc.createDataChannel('cascade');
  // Messages are not kept for those not there yet: answer the
  // presenter's hello, which says its channel is open.
  channel.onmessage = (m) => {
    window.result.received.push(JSON.parse(m.data));
    channel.send(JSON.stringify({ reaction: '👍' }));
  };
  const ws = signaling(pc, (msg) => {
    if (msg.type === 'tracks') window.result.tracks = msg.tracks;
    if (msg.type === 'speakers') window.result.speakers = msg;
  });
  await offer(ws, pc);
}
async function stats() {
  const decoded = {};
  if (window.pc) (await window.pc.getStats()).forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') decoded[r.mid] = r.framesDecoded || 0;
  });
  return { ...window.result, decoded };
}
run().catch(e => { window.result.error = String(e); });
"#;

#[tokio::test]
async fn a_screen_share_the_active_speaker_and_data_messages_reach_chromium() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let _edge = crate::edge::start_edge(&app, "edge-share").await;
    let presenter = app.register("presenter").await;
    let viewer = app.register("viewer").await;
    let chat = app.direct(&presenter, &viewer).await;
    let call = start_call(&app, &presenter, &chat, "video").await;
    app.post(&format!("/v1/calls/{call}/accept"), &viewer, json!({}))
        .await
        .expect(200);
    let mut pages = Vec::new();
    for (user, script) in [(&presenter, PRESENTER), (&viewer, VIEWER)] {
        let joined = app
            .post(
                &format!("/v1/calls/{call}/join"),
                user,
                json!({"device_id": "chromium"}),
            )
            .await
            .expect(200)
            .body;
        let url = format!(
            "{}#url={}&token={}",
            serve_page(page(script)).await,
            joined["edge"]["signaling_url"].as_str().unwrap(),
            joined["token"].as_str().unwrap()
        );
        pages.push(browser.open(&url).await);
    }
    let presenter_id = presenter.id.clone();
    let viewer_id = viewer.id.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let (shown, seen) = loop {
        let shown = browser.eval(&pages[0], "stats()").await;
        let seen = browser.eval(&pages[1], "stats()").await;
        assert!(shown["error"].is_null(), "presenter: {shown}");
        assert!(seen["error"].is_null(), "viewer: {seen}");
        let screen_mid = seen["tracks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["source"] == "screen"))
            .and_then(|t| t["mid"].as_str())
            .map(str::to_owned);
        let screen_frames = screen_mid
            .as_deref()
            .and_then(|mid| seen["decoded"][mid].as_u64())
            .unwrap_or(0);
        let speaker = seen["speakers"]["dominant"]["user_id"].as_str() == Some(&presenter_id);
        let hello = seen["received"].as_array().is_some_and(|r| {
            r.iter().any(|m| {
                m["text"] == "hello from the presenter" && m["user_id"] == presenter_id.as_str()
            })
        });
        let reaction = shown["received"].as_array().is_some_and(|r| {
            r.iter().any(|m| {
                m["user_id"] == viewer_id.as_str()
                    && m["device_id"] == "chromium"
                    && m["text"].as_str() == Some(r#"{"reaction":"👍"}"#)
            })
        });
        if screen_frames >= 20 && speaker && hello && reaction {
            break (shown, seen);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "screen {screen_mid:?} ({screen_frames} frames), speaker {speaker}, data {hello}/{reaction}: {shown} / {seen}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The screen is a track of its own beside the camera and microphone.
    let sources: Vec<&str> = seen["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["source"].as_str())
        .collect();
    assert_eq!(sources.len(), 3, "{seen}");
    for source in ["camera", "microphone", "screen"] {
        assert!(sources.contains(&source), "{sources:?}");
    }
    assert!(shown["shared"].is_string(), "{shown}");
}
