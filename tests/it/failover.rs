//! Calls that survive what production does to edges, on the control
//! plane's side, with nodes simulated over the real internal API (their
//! heartbeats are the only thing the control plane knows of them):
//!
//! - reconciliation never removes a session migrated within a join
//!   token's life, whatever its age in the call (an edge drained under a
//!   call older than that used to end it);
//! - an edge that restarts before its registration expires (a new
//!   incarnation) has its sessions moved at once instead of reconciled
//!   away;
//! - a client that cannot reach its edge rejoins naming it: when the
//!   control plane's own probe cannot reach it either, everyone on it moves
//!   now; when the edge answers, only that client moves.
//!
//! The same faults with real edge processes and browsers are in `chaos`.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use testkit::app::TestApp;
use testkit::both_backends_with;
use testkit::client::{ApiClient, TestUser};
use testkit::cluster::metric;
use testkit::ws::WsClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);
const SECRET: &str = control_plane::config::TEST_CLUSTER_SECRET;

/// Node ids unique to one test run: the Redis registry is shared.
fn node_id(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// A region of this test's own: with a shared Redis registry, other
/// tests' edges must not be placement candidates here.
fn own_region(config: &mut control_plane::ControlPlaneConfig) {
    let name = node_id("region");
    config.calls.regions.truncate(1);
    config.calls.regions[0].name = name.clone();
    config.calls.default_region = name;
}

/// One simulated edge's heartbeat.
struct Beat<'a> {
    id: &'a str,
    region: String,
    signaling_url: String,
    sessions: Vec<String>,
    draining: bool,
    incarnation: uuid::Uuid,
}

impl<'a> Beat<'a> {
    fn new(app: &TestApp, id: &'a str) -> Self {
        Beat {
            id,
            region: app.config.calls.default_region.clone(),
            signaling_url: format!("wss://{id}.example/v1/rtc"),
            sessions: Vec::new(),
            draining: false,
            incarnation: uuid::Uuid::new_v4(),
        }
    }

    async fn send(&self, api: &ApiClient) {
        api.call(
            Method::PUT,
            &format!("/internal/v1/nodes/{}", self.id),
            Some(SECRET),
            Some(json!({
                "kind": "edge", "region": self.region, "capacity": 100, "load": self.sessions.len(),
                "draining": self.draining,
                "endpoints": { "signaling_url": self.signaling_url },
                "sessions": self.sessions,
                "incarnation": self.incarnation,
            })),
        )
        .await
        .expect(200);
    }
}

async fn ws(app: &TestApp, user: &TestUser) -> WsClient {
    let addr = app.server.as_ref().expect("running").http_addr();
    let mut client = WsClient::connect(addr, Some(&user.access), None)
        .await
        .expect("upgrade");
    client.expect("ready", WAIT).await;
    client
}

async fn join(app: &TestApp, user: &TestUser, call: &str, body: Value) -> Value {
    app.post(&format!("/v1/calls/{call}/join"), user, body)
        .await
        .expect(200)
        .body
}

/// A direct call both sides joined; returns (call id, alice's and bob's
/// placements).
async fn direct_call(app: &TestApp, alice: &TestUser, bob: &TestUser) -> (String, Value, Value) {
    let chat = app.direct(alice, bob).await;
    let call = app
        .post(
            "/v1/calls",
            alice,
            json!({"conversation_id": chat, "kind": "audio"}),
        )
        .await
        .expect(201)
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = join(app, alice, &call, json!({"device_id": "d"})).await;
    let b = join(app, bob, &call, json!({"device_id": "d"})).await;
    (call, a, b)
}

/// The ids of the nodes the registry lists.
async fn registered(app: &TestApp) -> Vec<String> {
    app.call(Method::GET, "/internal/v1/nodes", Some(SECRET), None)
        .await
        .expect(200)
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect()
}

fn session(placed: &Value) -> String {
    placed["session_id"].as_str().unwrap().to_owned()
}

fn edge_of(placed: &Value) -> String {
    placed["edge"]["id"].as_str().unwrap().to_owned()
}

async fn call_state(app: &TestApp, user: &TestUser, call: &str) -> Value {
    app.get(&format!("/v1/calls/{call}"), user)
        .await
        .expect(200)
        .body
}

both_backends_with!(
    reconciliation_spares_a_session_migrated_within_a_join_token_life,
    reconciliation_vs_migration,
    |config| {
        super::own_region(config);
        config.calls.join_token_ttl_secs = 5;
    }
);
async fn reconciliation_vs_migration(app: TestApp) {
    let (x, y) = (node_id("edge-x"), node_id("edge-y"));
    let mut beats = [Beat::new(&app, &x), Beat::new(&app, &y)];
    for beat in &beats {
        beat.send(&app).await;
    }
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let (call, a, b) = direct_call(&app, &alice, &bob).await;
    let placed_on = edge_of(&a);
    assert_eq!(edge_of(&b), placed_on, "a call meets on one edge");
    let (from, to) = if placed_on == x { (0, 1) } else { (1, 0) };
    let mut alices = ws(&app, &alice).await;

    // The call outlives a join token while its edge lists both sessions.
    beats[from].sessions = vec![session(&a), session(&b)];
    let old = Instant::now();
    while old.elapsed() < Duration::from_millis(5500) {
        for beat in &beats {
            beat.send(&app).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Its edge drains: both move to the other one.
    beats[from].draining = true;
    beats[from].send(&app).await;
    let migrate = alices.expect("call.migrate", WAIT).await;
    assert_eq!(migrate["data"]["join"]["edge"]["id"], beats[to].id);
    // The target's heartbeats do not list them yet: the clients are still
    // doing ICE and DTLS. That must not remove them (it used to: their
    // `joined_at` was older than a join token, and the call ended).
    let gap = Instant::now();
    while gap.elapsed() < Duration::from_secs(3) {
        beats[to].send(&app).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let state = call_state(&app, &alice, &call).await;
    assert_eq!(state["state"], "active", "{state}");
    let live: Vec<&Value> = state["participants"].as_array().unwrap().iter().collect();
    assert_eq!(live.len(), 2, "{state}");
    assert!(live.iter().all(|p| p["node_id"] == beats[to].id), "{state}");

    // Reconciliation still works: sessions that never arrive on the new
    // edge go once a join token's life has passed since the migration.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        beats[to].send(&app).await;
        let state = call_state(&app, &alice, &call).await;
        if state["state"] == "ended" {
            break;
        }
        assert!(Instant::now() < deadline, "never reconciled: {state}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

both_backends_with!(
    a_restarted_edge_has_its_sessions_moved_at_once,
    restart_with_a_new_incarnation,
    |config| {
        super::own_region(config);
        config.calls.join_token_ttl_secs = 5;
        // The Redis registry's SET … GET, where a server is configured.
        config.redis.url = testkit::servers::redis_url();
    }
);
async fn restart_with_a_new_incarnation(app: TestApp) {
    let x = node_id("edge-x");
    let mut beat = Beat::new(&app, &x);
    beat.send(&app).await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let (call, a, b) = direct_call(&app, &alice, &bob).await;
    assert_eq!(edge_of(&a), x);
    let mut alices = ws(&app, &alice).await;
    let mut bobs = ws(&app, &bob).await;
    beat.sessions = vec![session(&a), session(&b)];
    for _ in 0..3 {
        beat.send(&app).await;
    }
    assert!(
        alices
            .collect("call.migrate", Duration::from_millis(300))
            .await
            .is_empty(),
        "the same incarnation again is not a restart"
    );

    // Killed and restarted by its supervisor within a second: registered
    // all along, but with a new boot id and none of its sessions.
    beat.incarnation = uuid::Uuid::new_v4();
    beat.sessions.clear();
    let restarted = Instant::now();
    beat.send(&app).await;
    for socket in [&mut alices, &mut bobs] {
        let migrate = socket.expect("call.migrate", WAIT).await;
        assert_eq!(migrate["data"]["from_node_id"], x.as_str());
        // The only edge: back on it, with a fresh join token.
        assert_eq!(migrate["data"]["join"]["edge"]["id"], x.as_str());
    }
    let moved_in = restarted.elapsed();
    assert!(moved_in < Duration::from_secs(2), "{moved_in:?}");
    // Its next heartbeats (still without them: the clients reconnect) do
    // not end the call.
    for _ in 0..5 {
        beat.send(&app).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state = call_state(&app, &alice, &call).await;
    assert_eq!(state["state"], "active", "{state}");
    assert_eq!(state["participants"].as_array().unwrap().len(), 2);
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metric(&metrics, "cascade_node_restarts_total") >= 1.0);
}

/// A port that answers `GET /healthz` with 200 while `serving` runs.
async fn healthy_listener() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 512];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    });
    (format!("ws://127.0.0.1:{port}/v1/rtc"), serving)
}

both_backends_with!(
    a_rejoin_naming_a_dead_edge_moves_everyone_on_it_at_once,
    rejoin_naming_an_unreachable_edge,
    |config| {
        super::own_region(config);
        config.redis.url = testkit::servers::redis_url();
    }
);
async fn rejoin_naming_an_unreachable_edge(app: TestApp) {
    let (x, y) = (node_id("edge-x"), node_id("edge-y"));
    let (healthy_url, _serving) = healthy_listener().await;
    let mut beats = [Beat::new(&app, &x), Beat::new(&app, &y)];
    for beat in &mut beats {
        beat.signaling_url = healthy_url.clone();
        beat.send(&app).await;
    }
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);

    // 1. The edge answers the control plane: only the reporting client's
    //    path is broken, so only it moves.
    let (call, a, b) = direct_call(&app, &alice, &bob).await;
    let on = edge_of(&a);
    let other = if on == x { &y } else { &x };
    let mut alices = ws(&app, &alice).await;
    let again = join(
        &app,
        &bob,
        &call,
        json!({"device_id": "d", "unreachable_edge": on}),
    )
    .await;
    assert_eq!(
        &edge_of(&again),
        other,
        "placed away from the edge it cannot reach"
    );
    assert_ne!(
        session(&again),
        session(&b),
        "a new session replaced the old one"
    );
    assert!(
        alices
            .collect("call.migrate", Duration::from_millis(500))
            .await
            .is_empty(),
        "an edge that answers keeps its other participants"
    );
    assert!(
        registered(&app).await.contains(&on),
        "an edge that answers stays registered"
    );
    app.post(
        &format!("/v1/calls/{call}/leave"),
        &alice,
        json!({"device_id": "d"}),
    )
    .await;
    app.post(
        &format!("/v1/calls/{call}/leave"),
        &bob,
        json!({"device_id": "d"}),
    )
    .await;

    // 2. The edge is dead (nothing listens at its address any more) but
    //    still registered: the rejoin moves everyone on it at once, long
    //    before its registration would expire.
    let (call, a, _) = direct_call(&app, &alice, &bob).await;
    let on = edge_of(&a);
    let other = if on == x { y.clone() } else { x.clone() };
    let dead = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}/v1/rtc", socket.local_addr().unwrap())
    };
    for beat in &mut beats {
        if beat.id == on {
            beat.signaling_url = dead.clone();
        }
        beat.send(&app).await;
    }
    let reported = Instant::now();
    let again = join(
        &app,
        &bob,
        &call,
        json!({"device_id": "d", "unreachable_edge": on}),
    )
    .await;
    assert_eq!(edge_of(&again), other);
    let migrate = alices.expect("call.migrate", WAIT).await;
    assert_eq!(migrate["data"]["call_id"], call.as_str());
    assert_eq!(migrate["data"]["join"]["edge"]["id"], other.as_str());
    let moved_in = reported.elapsed();
    assert!(moved_in < Duration::from_secs(2), "{moved_in:?}");
    assert!(
        !registered(&app).await.contains(&on),
        "the dead edge left the registry"
    );
    let state = call_state(&app, &alice, &call).await;
    assert_eq!(state["state"], "active");
    assert!(
        state["participants"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["node_id"] == other.as_str()),
        "{state}"
    );

    // A stale report (this device is not on that edge any more) probes
    // nothing and just places it.
    let stale = join(
        &app,
        &bob,
        &call,
        json!({"device_id": "d", "unreachable_edge": on}),
    )
    .await;
    assert_eq!(edge_of(&stale), other);
}
