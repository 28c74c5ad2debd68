//! Calls over real sockets: the lifecycle with its events on every device,
//! busy, ring timeout → missed exactly once (two replicas, and across a
//! restart), group calls, history and stats, the node registry and its
//! credential, placement and migration when an edge dies, and join tokens
//! checked by the edge's own verifier.

use std::time::Duration;

use edge_node::join_token::{JoinTokenError, JoinTokenVerifier};
use reqwest::Method;
use serde_json::{Value, json};
use testkit::app::TestApp;
use testkit::client::{ApiClient, TestUser};
use testkit::control_plane::TestControlPlane;
use testkit::ws::WsClient;
use testkit::{both_backends, both_backends_with};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(400);
const SECRET: &str = control_plane::config::TEST_CLUSTER_SECRET;

fn addr(app: &TestApp) -> std::net::SocketAddr {
    app.server.as_ref().expect("running").http_addr()
}

async fn ws(addr: std::net::SocketAddr, user: &TestUser) -> WsClient {
    let mut client = WsClient::connect(addr, Some(&user.access), None)
        .await
        .expect("upgrade");
    client.expect("ready", WAIT).await;
    client
}

/// Registers (or renews) an edge node.
async fn heartbeat(api: &ApiClient, id: &str, region: &str, capacity: u32, load: u32) -> Value {
    api.call(
        Method::PUT,
        &format!("/internal/v1/nodes/{id}"),
        Some(SECRET),
        Some(json!({
            "kind": "edge", "region": region, "capacity": capacity, "load": load,
            "endpoints": {
                "signaling_url": format!("wss://{id}.example/v1/rtc"),
                "whip_url": format!("https://{id}.example/v1/whip"),
                "whep_url": format!("https://{id}.example/v1/whep"),
            }
        })),
    )
    .await
    .expect(200)
    .body
}

/// An edge reports a session gone (always 204: unknown sessions are no-ops).
async fn report_gone(api: &ApiClient, node: &str, credential: &str, body: Value) {
    api.call(
        Method::POST,
        &format!("/internal/v1/nodes/{node}/participants/gone"),
        Some(credential),
        Some(body),
    )
    .await
    .expect(204);
}

async fn start(api: &ApiClient, user: &TestUser, conversation: &str, kind: &str) -> Value {
    api.post(
        "/v1/calls",
        user,
        json!({"conversation_id": conversation, "kind": kind}),
    )
    .await
    .expect(201)
    .body
}

fn id(call: &Value) -> String {
    call["id"].as_str().unwrap().to_owned()
}

async fn join(api: &ApiClient, user: &TestUser, call: &str, device: &str) -> Value {
    api.post(
        &format!("/v1/calls/{call}/join"),
        user,
        json!({"device_id": device}),
    )
    .await
    .expect(200)
    .body
}

async fn verifier(api: &ApiClient, node: &str) -> JoinTokenVerifier {
    let jwks = api
        .http
        .get(api.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    JoinTokenVerifier::from_jwks(node, &jwks.bytes().await.unwrap()).unwrap()
}

both_backends!(
    a_direct_call_rings_is_answered_and_ends_everywhere,
    direct_call
);
async fn direct_call(app: TestApp) {
    heartbeat(&app, "edge-a", "local", 100, 0).await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    let (mut alice_phone, mut alice_laptop, mut bobs) = (
        ws(addr(&app), &alice).await,
        ws(addr(&app), &alice).await,
        ws(addr(&app), &bob).await,
    );

    let call = start(&app, &alice, &chat, "video").await;
    assert_eq!(
        (call["state"].as_str(), call["direct"].as_bool()),
        (Some("ringing"), Some(true))
    );
    let call_id = id(&call);
    for device in [&mut alice_phone, &mut alice_laptop, &mut bobs] {
        let ringing = device.expect("call.ringing", WAIT).await;
        assert_eq!(ringing["data"]["call"]["id"], call_id.as_str());
        assert_eq!(ringing["data"]["call"]["kind"], "video");
    }
    // Only the callee answers.
    let wrong = app
        .post(&format!("/v1/calls/{call_id}/accept"), &alice, json!({}))
        .await;
    assert_eq!(wrong.status, 403);
    let accepted = app
        .post(&format!("/v1/calls/{call_id}/accept"), &bob, json!({}))
        .await
        .expect(200)
        .body;
    assert_eq!(accepted["state"], "active");
    for device in [&mut alice_phone, &mut alice_laptop, &mut bobs] {
        let event = device.expect("call.accepted", WAIT).await;
        assert_eq!(event["data"]["user_id"], bob.id.as_str());
    }

    // Both join: the edge is the registered one, the token verifies on it.
    let alice_join = join(&app, &alice, &call_id, "laptop").await;
    let bob_join = join(&app, &bob, &call_id, "phone").await;
    assert_eq!(alice_join["edge"]["id"], "edge-a");
    assert_eq!(bob_join["edge"]["id"], "edge-a");
    assert_eq!(
        alice_join["edge"]["signaling_url"],
        "wss://edge-a.example/v1/rtc"
    );
    assert_eq!(alice_join["region"], "local");
    let claims = verifier(&app, "edge-a")
        .await
        .verify(alice_join["token"].as_str().unwrap())
        .expect("the edge accepts the join token");
    assert_eq!(claims.sub.to_string(), alice.id);
    assert_eq!(claims.call.to_string(), call_id);
    assert_eq!(
        (claims.device.as_str(), claims.node.as_str()),
        ("laptop", "edge-a")
    );
    assert!(claims.grants.publish_video && claims.grants.subscribe);
    assert!(
        claims.exp - claims.iat <= 120,
        "join tokens are short-lived"
    );
    // Another edge refuses it; an API access token is not a join token.
    assert!(matches!(
        verifier(&app, "edge-b")
            .await
            .verify(alice_join["token"].as_str().unwrap()),
        Err(JoinTokenError::WrongNode(_))
    ));
    assert!(matches!(
        verifier(&app, "edge-a").await.verify(&alice.access),
        Err(JoinTokenError::Invalid(_))
    ));

    let joined = bobs.collect("call.participant_joined", QUIET).await;
    assert_eq!(joined.len(), 2, "{joined:?}");
    let state = app
        .get(&format!("/v1/calls/{call_id}"), &bob)
        .await
        .expect(200)
        .body;
    assert_eq!(state["participants"].as_array().unwrap().len(), 2);

    // Media state is broadcast.
    app.post(
        &format!("/v1/calls/{call_id}/media"),
        &alice,
        json!({"device_id": "laptop", "audio": false, "video": true, "screen": true}),
    )
    .await
    .expect(204);
    let media = alice_phone.expect("call.media_state", WAIT).await;
    assert_eq!(media["data"]["participant"]["audio"], false);
    assert_eq!(media["data"]["participant"]["screen"], true);

    // Strangers see nothing.
    let mallory = app.register("mallory").await;
    for path in ["", "/join", "/accept", "/end"] {
        let reply = if path.is_empty() {
            app.get(&format!("/v1/calls/{call_id}"), &mallory).await
        } else {
            app.post(&format!("/v1/calls/{call_id}{path}"), &mallory, json!({}))
                .await
        };
        assert_eq!(reply.status, 404, "{path}");
    }

    // Bob hangs up: a direct call ends for everyone.
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.post(
        &format!("/v1/calls/{call_id}/leave"),
        &bob,
        json!({"device_id": "phone"}),
    )
    .await
    .expect(204);
    for device in [&mut alice_phone, &mut bobs] {
        let ended = device.expect("call.ended", WAIT).await;
        assert_eq!(ended["data"]["call"]["outcome"], "completed");
        assert!(ended["data"]["call"]["duration_ms"].as_i64().unwrap() >= 50);
    }
    let state = app
        .get(&format!("/v1/calls/{call_id}"), &alice)
        .await
        .expect(200)
        .body;
    assert_eq!(state["state"], "ended");
    assert_eq!(state["participants"], json!([]));

    // History and stats, from each side.
    for user in [&alice, &bob] {
        let history = app.get("/v1/calls", user).await.expect(200).body;
        assert_eq!(history["items"][0]["call"]["id"], call_id.as_str());
        assert_eq!(history["items"][0]["outcome"], "completed");
        let stats = app.get("/v1/calls/stats", user).await.expect(200).body;
        assert_eq!(stats["total"]["calls"], 1);
        assert_eq!(stats["by_kind"]["video"]["calls"], 1);
        assert_eq!(stats["by_outcome"]["completed"]["calls"], 1);
        let total = stats["total"]["total_duration_ms"].as_i64().unwrap();
        assert!(total >= 50 && stats["total"]["average_duration_ms"] == total);
    }
    // Anyone can call again now: the locks were released.
    start(&app, &bob, &chat, "audio").await;

    // Operators see it in the metrics.
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "cascade_calls_started_total{kind=\"video\"} 1",
        "cascade_calls_started_total{kind=\"audio\"} 1",
        "cascade_calls_ended_total{outcome=\"completed\"} 1",
        "cascade_call_joins_total 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?}");
    }
    if let Some((ok, complaints)) = testkit::promtool_check(&metrics) {
        assert!(ok && complaints.is_empty(), "promtool: {complaints}");
    }
}

both_backends!(busy_people_cannot_be_double_booked, busy);
async fn busy(app: TestApp) {
    let [alice, bob, carol, dave, erin] = [
        app.register("alice").await,
        app.register("bob").await,
        app.register("carol").await,
        app.register("dave").await,
        app.register("erin").await,
    ];
    let ab = app.direct(&alice, &bob).await;
    let ca = app.direct(&carol, &alice).await;
    let cb = app.direct(&carol, &bob).await;
    let da = app.direct(&dave, &alice).await;
    let eb = app.direct(&erin, &bob).await;
    let mut carols = ws(addr(&app), &carol).await;

    // Alice rings Bob: Alice is busy (caller), Bob is not yet.
    let first = id(&start(&app, &alice, &ab, "audio").await);
    let reply = app
        .post(
            "/v1/calls",
            &carol,
            json!({"conversation_id": ca, "kind": "audio"}),
        )
        .await;
    assert_eq!((reply.status.as_u16(), reply.code()), (409, "busy"));
    let busy = carols.expect("call.busy", WAIT).await;
    assert_eq!(busy["data"]["user_id"], alice.id.as_str());
    assert_eq!(busy["data"]["call"]["outcome"], "busy");
    // Alice cannot start a second call either.
    let reply = app
        .post(
            "/v1/calls",
            &alice,
            json!({"conversation_id": da, "kind": "audio"}),
        )
        .await;
    assert_eq!((reply.status.as_u16(), reply.code()), (409, "busy"));

    // Carol also rings Bob (he is only being rung, so that works)...
    let second = id(&start(&app, &carol, &cb, "audio").await);
    // ...Bob answers Alice, and then cannot answer Carol: 409, and Carol
    // hears busy.
    app.post(&format!("/v1/calls/{first}/accept"), &bob, json!({}))
        .await
        .expect(200);
    let reply = app
        .post(&format!("/v1/calls/{second}/accept"), &bob, json!({}))
        .await;
    assert_eq!((reply.status.as_u16(), reply.code()), (409, "busy"));
    let busy = carols.expect("call.busy", WAIT).await;
    assert_eq!(busy["data"]["user_id"], bob.id.as_str());
    // A new call to Bob is busy at once.
    let reply = app
        .post(
            "/v1/calls",
            &erin,
            json!({"conversation_id": eb, "kind": "video"}),
        )
        .await;
    assert_eq!((reply.status.as_u16(), reply.code()), (409, "busy"));
    // Once Alice ends the call, Bob is free again.
    app.post(&format!("/v1/calls/{first}/end"), &alice, json!({}))
        .await
        .expect(200);
    start(&app, &erin, &eb, "video").await;
    // Erin's earlier busy attempt is in her history as busy.
    let history = app.get("/v1/calls", &erin).await.expect(200).body;
    assert_eq!(history["items"][1]["outcome"], "busy");
}

both_backends_with!(
    declined_cancelled_and_missed_calls_end_with_their_outcome,
    declined_cancelled_missed,
    |config| config.calls.ring_timeout_secs = 1
);
async fn declined_cancelled_missed(app: TestApp) {
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    let mut alices = ws(addr(&app), &alice).await;

    let declined = id(&start(&app, &alice, &chat, "audio").await);
    app.post(&format!("/v1/calls/{declined}/decline"), &bob, json!({}))
        .await
        .expect(200);
    let event = alices.expect("call.declined", WAIT).await;
    assert_eq!(event["data"]["call"]["outcome"], "declined");

    let cancelled = id(&start(&app, &alice, &chat, "audio").await);
    let reply = app
        .post(&format!("/v1/calls/{cancelled}/cancel"), &bob, json!({}))
        .await;
    assert_eq!(reply.status, 403, "only the caller cancels");
    app.post(&format!("/v1/calls/{cancelled}/cancel"), &alice, json!({}))
        .await
        .expect(200);
    assert_eq!(
        alices.expect("call.cancelled", WAIT).await["data"]["call"]["outcome"],
        "cancelled"
    );
    // An ended call cannot be answered.
    let reply = app
        .post(&format!("/v1/calls/{cancelled}/accept"), &bob, json!({}))
        .await;
    assert_eq!(
        (reply.status.as_u16(), reply.code()),
        (409, "invalid_call_state")
    );

    let missed = id(&start(&app, &alice, &chat, "video").await);
    let event = alices.expect("call.missed", Duration::from_secs(4)).await;
    assert_eq!(event["data"]["call"]["id"], missed.as_str());
    assert_eq!(event["data"]["call"]["outcome"], "missed");
    assert!(
        alices
            .collect("call.missed", Duration::from_millis(600))
            .await
            .is_empty()
    );

    // Bob missed two (the cancelled one rang him too); declined is not missed.
    let count = app
        .get("/v1/calls/missed/count", &bob)
        .await
        .expect(200)
        .body;
    assert_eq!(count["count"], 2);
    let after = app
        .get(&format!("/v1/calls/missed/count?after={cancelled}"), &bob)
        .await
        .expect(200)
        .body;
    assert_eq!(after["count"], 1);
    assert_eq!(
        app.get("/v1/calls/missed/count", &alice).await.body["count"],
        0
    );
    let history = app.get("/v1/calls?limit=2", &bob).await.expect(200).body;
    let outcomes: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["missed", "missed"]);
    let next = history["next_cursor"].as_str().unwrap();
    let rest = app
        .get(&format!("/v1/calls?before={next}"), &bob)
        .await
        .expect(200)
        .body;
    assert_eq!(rest["items"][0]["outcome"], "declined");
    assert!(rest["next_cursor"].is_null());
    let stats = app.get("/v1/calls/stats", &alice).await.expect(200).body;
    assert_eq!(stats["total"]["calls"], 3);
    assert_eq!(stats["by_outcome"]["missed"]["calls"], 1);
    assert_eq!(stats["by_outcome"]["cancelled"]["calls"], 1);
    assert_eq!(stats["by_outcome"]["declined"]["calls"], 1);
    assert_eq!(stats["total"]["total_duration_ms"], 0);
}

both_backends!(
    a_group_call_ends_when_the_last_participant_leaves,
    group_call
);
async fn group_call(app: TestApp) {
    heartbeat(&app, "edge-a", "local", 100, 0).await;
    let [alice, bob, carol] = [
        app.register("alice").await,
        app.register("bob").await,
        app.register("carol").await,
    ];
    let group = app.group(&alice, "standup", &[&bob, &carol]).await;
    let mut carols = ws(addr(&app), &carol).await;
    let call = id(&start(&app, &alice, &group, "video").await);
    carols.expect("call.ringing", WAIT).await;
    // One live call per conversation.
    let reply = app
        .post(
            "/v1/calls",
            &bob,
            json!({"conversation_id": group, "kind": "audio"}),
        )
        .await;
    assert_eq!(
        (reply.status.as_u16(), reply.code()),
        (409, "call_in_progress")
    );

    join(&app, &alice, &call, "laptop").await;
    join(&app, &bob, &call, "phone").await;
    let state = app
        .get(&format!("/v1/calls/{call}"), &carol)
        .await
        .expect(200)
        .body;
    assert_eq!(state["state"], "active");
    // Everyone in one region meets on one edge.
    let carol_join = join(&app, &carol, &call, "tablet").await;
    assert_eq!(carol_join["edge"]["id"], "edge-a");
    // A member who is not an admin cannot end it for everyone.
    let reply = app
        .post(&format!("/v1/calls/{call}/end"), &bob, json!({}))
        .await;
    assert_eq!(reply.status, 403);

    for user in [&alice, &bob] {
        app.post(
            &format!("/v1/calls/{call}/leave"),
            user,
            json!({"device_id": if user.id == alice.id { "laptop" } else { "phone" }}),
        )
        .await
        .expect(204);
    }
    let left = carols.collect("call.participant_left", QUIET).await;
    assert_eq!(left.len(), 2);
    assert_eq!(
        app.get(&format!("/v1/calls/{call}"), &carol).await.body["state"],
        "active"
    );
    app.call(
        Method::POST,
        &format!("/v1/calls/{call}/leave"),
        Some(&carol.access),
        None,
    )
    .await
    .expect(404); // the default device never joined
    app.post(
        &format!("/v1/calls/{call}/leave"),
        &carol,
        json!({"device_id": "tablet"}),
    )
    .await
    .expect(204);
    let ended = carols.expect("call.ended", WAIT).await;
    assert_eq!(ended["data"]["call"]["outcome"], "completed");

    // The owner ends a group call for everyone.
    let second = id(&start(&app, &bob, &group, "audio").await);
    join(&app, &carol, &second, "tablet").await;
    app.post(&format!("/v1/calls/{second}/end"), &alice, json!({}))
        .await
        .expect(200);
    let state = app
        .get(&format!("/v1/calls/{second}"), &carol)
        .await
        .expect(200)
        .body;
    assert_eq!(
        (state["state"].as_str(), state["outcome"].as_str()),
        (Some("ended"), Some("completed"))
    );
    // Carol can start a new call: her lock went with the call.
    start(&app, &carol, &group, "audio").await;
}

both_backends!(
    the_node_api_needs_the_cluster_credential_and_valid_input,
    node_api
);
async fn node_api(app: TestApp) {
    let alice = app.register("alice").await;
    let body = json!({"kind": "edge", "region": "local", "capacity": 10});
    for token in [
        None,
        Some("wrong-secret-of-some-length"),
        Some(alice.access.as_str()),
    ] {
        let reply = app
            .call(
                Method::PUT,
                "/internal/v1/nodes/e1",
                token,
                Some(body.clone()),
            )
            .await;
        assert_eq!(reply.status, 401, "{token:?}");
    }
    for (bad, code) in [
        (
            json!({"kind": "edge", "region": "mars", "capacity": 10}),
            "unknown_region",
        ),
        (
            json!({"kind": "edge", "region": "local", "capacity": 0}),
            "invalid_capacity",
        ),
        (
            json!({"kind": "router", "region": "local", "capacity": 1}),
            "invalid_body",
        ),
    ] {
        let reply = app
            .call(
                Method::PUT,
                "/internal/v1/nodes/e1",
                Some(SECRET),
                Some(bad),
            )
            .await;
        assert_eq!((reply.status.as_u16(), reply.code()), (422, code));
    }
    let reply = app
        .call(
            Method::PUT,
            "/internal/v1/nodes/bad%20id",
            Some(SECRET),
            Some(body.clone()),
        )
        .await;
    assert_eq!(reply.code(), "invalid_node_id");
    let ack = heartbeat(&app, "e1", "local", 10, 3).await;
    assert_eq!(ack["ttl_secs"], 3);
    let nodes = app
        .call(Method::GET, "/internal/v1/nodes", Some(SECRET), None)
        .await
        .expect(200)
        .body;
    assert_eq!(nodes[0]["id"], "e1");
    assert_eq!(nodes[0]["load"], 3);
    app.call(Method::DELETE, "/internal/v1/nodes/e1", Some(SECRET), None)
        .await
        .expect(204);

    // No edge: joining says so instead of handing out nothing.
    let bob = app.register("bob").await;
    let chat = app.direct(&alice, &bob).await;
    let call = id(&start(&app, &alice, &chat, "audio").await);
    let reply = app
        .post(&format!("/v1/calls/{call}/join"), &alice, json!({}))
        .await;
    assert_eq!((reply.status.as_u16(), reply.code()), (503, "no_edge"));
    // Malformed join bodies are refused clearly.
    heartbeat(&app, "e1", "local", 10, 0).await;
    let reply = app
        .post(
            &format!("/v1/calls/{call}/join"),
            &alice,
            json!({"device_id": "../../etc"}),
        )
        .await;
    assert_eq!(reply.code(), "invalid_device_id");
    let reply = app
        .post(
            &format!("/v1/calls/{call}/join"),
            &alice,
            json!({"probes": [{"region": 1}]}),
        )
        .await;
    assert_eq!(reply.status, 422);

    // Each node has its own credential and speaks only for itself.
    let e1 = control_plane::api::node_credential(SECRET, "e1");
    let e2 = control_plane::api::node_credential(SECRET, "e2");
    let reply = app
        .call(
            Method::PUT,
            "/internal/v1/nodes/e2",
            Some(&e1),
            Some(body.clone()),
        )
        .await;
    assert_eq!(reply.status, 401, "e1's credential cannot register e2");
    app.call(
        Method::PUT,
        "/internal/v1/nodes/e2",
        Some(&e2),
        Some(body.clone()),
    )
    .await
    .expect(200);
    let reply = app
        .call(Method::GET, "/internal/v1/nodes", Some(&e1), None)
        .await;
    assert_eq!(reply.status, 401, "listing needs the root credential");
    let reply = app
        .call(
            Method::PUT,
            "/internal/v1/nodes/e1",
            Some(&e1),
            Some(json!({"kind": "edge", "region": "local", "capacity": 10,
                        "endpoints": {"signaling_url": "javascript:alert(1)"}})),
        )
        .await;
    assert_eq!(reply.code(), "invalid_endpoint");

    // An edge reports a session gone: only its own sessions count, and only
    // the session it names.
    app.call(Method::DELETE, "/internal/v1/nodes/e2", Some(&e2), None)
        .await
        .expect(204);
    let mut alices = ws(addr(&app), &alice).await;
    let first = join(&app, &alice, &call, "laptop").await;
    assert_eq!(first["edge"]["id"], "e1");
    let rejoined = join(&app, &alice, &call, "laptop").await;
    let replaced = alices.expect("call.participant_left", WAIT).await;
    assert_eq!(replaced["data"]["reason"], "replaced");
    heartbeat(&app, "e2", "local", 10, 0).await;
    let gone = json!({"call_id": call, "session_id": rejoined["session_id"]});
    report_gone(&app, "e2", &e2, gone.clone()).await;
    let stale = json!({"call_id": call, "session_id": first["session_id"]});
    report_gone(&app, "e1", &e1, stale).await;
    let state = app.get(&format!("/v1/calls/{call}"), &alice).await.body;
    assert_eq!(
        state["participants"].as_array().unwrap().len(),
        1,
        "neither e2 nor a report about the replaced session removes the live one"
    );
    report_gone(&app, "e1", &e1, gone).await;
    let left = alices.expect("call.participant_left", WAIT).await;
    assert_eq!(left["data"]["reason"], "gone");
    // The caller's only device went while it rang: the call is cancelled.
    let state = app.get(&format!("/v1/calls/{call}"), &alice).await.body;
    assert_eq!(state["outcome"], "cancelled");
}

both_backends_with!(
    clients_land_in_their_region_or_the_nearest_with_an_edge,
    regions,
    |config| {
        use control_plane::calls::config::{CidrRegionConfig, RegionConfig};
        let region = |name: &str, lat: f64, lon: f64| RegionConfig {
            name: name.into(),
            latitude: lat,
            longitude: lon,
            probe_url: Some(format!("https://{name}.probe.example/")),
        };
        config.calls.regions = vec![
            region("eu-west", 53.3, -6.2),
            region("eu-central", 50.1, 8.7),
            region("us-east", 39.0, -77.5),
        ];
        config.calls.default_region = "us-east".into();
        config.calls.region_header = Some("x-client-region".into());
        config.calls.region_cidrs = vec![CidrRegionConfig {
            cidr: "127.0.0.0/8".into(),
            region: "eu-central".into(),
        }];
        config.calls.stun_urls = vec!["stun:stun.example:3478".into()];
        config.calls.turn_urls = vec!["turn:turn.example:3478".into()];
        config.calls.turn_secret = Some("turn-shared-secret".into());
    }
);
async fn regions(app: TestApp) {
    let listed = app.http.get(app.url("/v1/regions")).send().await.unwrap();
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(listed["regions"].as_array().unwrap().len(), 3);
    assert_eq!(
        listed["regions"][0]["probe_url"],
        "https://eu-west.probe.example/"
    );
    heartbeat(&app, "dub-1", "eu-west", 10, 0).await;
    heartbeat(&app, "iad-1", "us-east", 10, 0).await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    let call = id(&start(&app, &alice, &chat, "audio").await);
    let path = format!("/v1/calls/{call}/join");
    let region_of = |reply: &Value| {
        (
            reply["region"].as_str().unwrap().to_owned(),
            reply["region_source"].as_str().unwrap().to_owned(),
            reply["edge"]["id"].as_str().unwrap().to_owned(),
        )
    };
    // A hint naming a region wins.
    let r = app
        .post(&path, &alice, json!({"region": "us-east"}))
        .await
        .expect(200)
        .body;
    assert_eq!(
        region_of(&r),
        ("us-east".into(), "hint".into(), "iad-1".into())
    );
    // Probes: the lowest RTT among real regions.
    let r = app
        .post(
            &path,
            &alice,
            json!({"region": "atlantis", "probes": [
            {"region": "us-east", "rtt_ms": 90.0}, {"region": "eu-west", "rtt_ms": 12.5}]}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(
        region_of(&r),
        ("eu-west".into(), "probe".into(), "dub-1".into())
    );
    // The load balancer's header.
    let reply = app
        .http
        .post(app.url(&path))
        .bearer_auth(&alice.access)
        .header("x-client-region", "us-east")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let r: Value = reply.json().await.unwrap();
    assert_eq!(
        region_of(&r),
        ("us-east".into(), "header".into(), "iad-1".into())
    );
    // The address table (we connect from 127.0.0.1): eu-central has no
    // edge, so the nearest region with one (eu-west, not us-east) serves.
    let r = app.post(&path, &alice, json!({})).await.expect(200).body;
    assert_eq!(
        region_of(&r),
        ("eu-central".into(), "cidr".into(), "dub-1".into())
    );
    assert_eq!(r["edge"]["region"], "eu-west");
    // ICE: STUN as configured, TURN with coturn REST credentials.
    assert_eq!(
        r["ice_servers"][0]["urls"],
        json!(["stun:stun.example:3478"])
    );
    let username = r["ice_servers"][1]["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, alice.id);
    let expiry: i64 = expiry.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now + 3500..=now + 3700).contains(&expiry));
    assert_eq!(
        r["ice_servers"][1]["credential"].as_str().unwrap().len(),
        28
    );
}

/// Three edges; calls spread over them; one edge stops heartbeating. Only
/// the participants on it get `call.migrate`, each to a live edge.
#[tokio::test]
async fn a_dead_edge_moves_only_its_own_participants() {
    let app = TestApp::spawn(testkit::app::Backend::Sqlite).await.unwrap();
    let edges = ["edge-1", "edge-2", "edge-3"];
    for edge in edges {
        heartbeat(&app, edge, "local", 1000, 0).await;
    }
    let mut pairs = Vec::new();
    for i in 0..12 {
        let a = app.register(&format!("caller{i}")).await;
        let b = app.register(&format!("callee{i}")).await;
        let chat = app.direct(&a, &b).await;
        let call = id(&start(&app, &a, &chat, "audio").await);
        let placed = join(&app, &a, &call, "d").await;
        let edge = placed["edge"]["id"].as_str().unwrap().to_owned();
        pairs.push((a, call, edge));
    }
    let victim = pairs[0].2.clone();
    let on_victim = pairs.iter().filter(|(_, _, e)| *e == victim).count();
    assert!(on_victim < pairs.len(), "calls spread over several edges");
    let mut sockets = Vec::new();
    for (user, _, _) in &pairs {
        sockets.push(ws(addr(&app), user).await);
    }
    // The survivors keep heartbeating; the victim goes silent (TTL 3 s).
    let api = ApiClient::new(addr(&app));
    let survivors: Vec<&str> = edges.iter().copied().filter(|e| *e != victim).collect();
    let keep_alive = {
        let survivors: Vec<String> = survivors.iter().map(|s| s.to_string()).collect();
        tokio::spawn(async move {
            loop {
                for edge in &survivors {
                    heartbeat(&api, edge, "local", 1000, 0).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    for ((user, call, edge), socket) in pairs.iter().zip(sockets.iter_mut()) {
        if *edge == victim {
            let event = socket.expect("call.migrate", Duration::from_secs(8)).await;
            assert_eq!(event["data"]["call_id"], call.as_str());
            assert_eq!(event["data"]["from_node_id"], victim.as_str());
            let to = event["data"]["join"]["edge"]["id"].as_str().unwrap();
            assert!(survivors.contains(&to), "{to}");
            let token = event["data"]["join"]["token"].as_str().unwrap();
            assert!(verifier(&app, to).await.verify(token).is_ok());
            let state = app.get(&format!("/v1/calls/{call}"), user).await.body;
            assert_eq!(state["participants"][0]["node_id"], to);
        }
    }
    for ((_, _, edge), socket) in pairs.iter().zip(sockets.iter_mut()) {
        if *edge != victim {
            assert!(
                socket
                    .collect("call.migrate", Duration::from_millis(200))
                    .await
                    .is_empty()
            );
        }
    }
    keep_alive.abort();
}

/// Two replicas on one Postgres and Redis; a short ring timeout. The
/// callee's socket on replica B and a replay of the log from the start see
/// exactly one `call.missed`; and a call whose replica was stopped before
/// its deadline is missed by the replica started after it.
#[tokio::test]
async fn ring_timeout_is_missed_exactly_once_across_replicas_and_restarts() {
    let (Some(pg), Some(redis)) = (
        testkit::servers::postgres_url(),
        testkit::servers::redis_url(),
    ) else {
        return;
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let db = testkit::app::PgTestDatabase::create(&pg).await;
    let mut config = control_plane::ControlPlaneConfig::for_tests();
    config.database.url = Some(db.url().to_owned());
    config.redis.url = Some(redis);
    config.calls.ring_timeout_secs = 1;
    config.calls.sweep_interval_ms = 50;
    let a = TestControlPlane::start(config.clone()).await.unwrap();
    let b = TestControlPlane::start(config.clone()).await.unwrap();
    let (api_a, api_b) = (ApiClient::new(a.http_addr()), ApiClient::new(b.http_addr()));
    let alice = api_a.register("alice").await;
    let bob = api_a.register("bob").await;
    let chat = api_a.direct(&alice, &bob).await;
    let mut replay = WsClient::connect(b.http_addr(), Some(&bob.access), None)
        .await
        .unwrap();
    let start_cursor = replay.expect("ready", WAIT).await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut live_b = ws(b.http_addr(), &bob).await;

    let calls: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..5 {
            let call = id(&start(&api_a, &alice, &chat, "audio").await);
            let missed = live_b.expect("call.missed", Duration::from_secs(4)).await;
            assert_eq!(missed["data"]["call"]["id"], call.as_str());
            ids.push(call);
        }
        ids
    };
    assert!(
        live_b
            .collect("call.missed", Duration::from_millis(500))
            .await
            .is_empty()
    );
    drop(replay);
    let mut replay = WsClient::connect(b.http_addr(), Some(&bob.access), Some(&start_cursor))
        .await
        .unwrap();
    replay.expect("ready", WAIT).await;
    let replayed = replay.collect("call.missed", QUIET).await;
    let ids: Vec<&str> = replayed
        .iter()
        .map(|e| e["data"]["call"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        calls.iter().map(String::as_str).collect::<Vec<_>>(),
        "each once, in order"
    );
    assert_eq!(
        api_b.get("/v1/calls/missed/count", &bob).await.body["count"],
        5
    );

    // Both replicas stop while a call rings; one starts after its deadline.
    let call = id(&start(&api_a, &alice, &chat, "audio").await);
    a.stop(WAIT).await.unwrap();
    b.stop(WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = TestControlPlane::start(config).await.unwrap();
    let api_c = ApiClient::new(c.http_addr());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = api_c
            .get(&format!("/v1/calls/{call}"), &alice)
            .await
            .expect(200)
            .body;
        if state["state"] == "ended" {
            assert_eq!(state["outcome"], "missed");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never missed: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        api_c.get("/v1/calls/missed/count", &bob).await.body["count"],
        6
    );
    c.stop(WAIT).await.unwrap();
}

/// Keys rotate: a new key is published before it signs, tokens signed by
/// the old one keep working (API and edge), and a restarted replica loads
/// the whole ring.
#[tokio::test]
async fn signing_keys_rotate_without_breaking_issued_tokens() {
    let mut app = TestApp::spawn_with(testkit::app::Backend::Sqlite, |config| {
        config.database.url = None; // a file, so a restart keeps the ring
        config.data_dir = std::env::temp_dir().join(format!("cascade-rotation-{}", uuid_like()));
        // Rotate every 8 s: publish 2 s ahead, refresh every second.
        config.auth.signing_key_rotation_secs = 8;
    })
    .await
    .unwrap();
    heartbeat(&app, "edge-a", "local", 10, 0).await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    let call = id(&start(&app, &alice, &chat, "audio").await);
    let old_join = join(&app, &alice, &call, "laptop").await;
    let old_token = old_join["token"].as_str().unwrap().to_owned();
    let kid = |token: &str| {
        let header = token.split('.').next().unwrap();
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let old_kid = kid(&old_token);
    let jwks_kids = |jwks: &Value| -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    let jwks: Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks_kids(&jwks), std::slice::from_ref(&old_kid));

    // Within ~9 s a second key is published, then signs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let new_token = loop {
        heartbeat(&app, "edge-a", "local", 10, 0).await; // it lapses after 3 s
        let fresh = join(&app, &alice, &call, "laptop").await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        if kid(&fresh) != old_kid {
            break fresh;
        }
        assert!(tokio::time::Instant::now() < deadline, "no rotation");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let jwks: Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids = jwks_kids(&jwks);
    assert!(
        kids.contains(&old_kid) && kids.contains(&kid(&new_token)),
        "{kids:?}"
    );
    // The edge verifies both; the old access token still works on the API.
    let edge = verifier(&app, "edge-a").await;
    assert!(edge.verify(&new_token).is_ok());
    assert!(
        edge.verify(&old_token).is_ok(),
        "issued before the rotation"
    );
    app.get("/v1/me", &alice).await.expect(200);

    // After a restart the ring (both keys) is loaded from the database.
    app.restart().await;
    app.get("/v1/me", &alice).await.expect(200);
    let edge = verifier(&app, "edge-a").await;
    assert!(edge.verify(&old_token).is_ok() && edge.verify(&new_token).is_ok());
    let _ = std::fs::remove_dir_all(&app.config.data_dir);
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

both_backends_with!(
    sessions_that_never_connect_and_empty_calls_are_cleaned_up,
    cleanup,
    |config| config.calls.join_token_ttl_secs = 5
);
async fn cleanup(app: TestApp) {
    let edge = control_plane::api::node_credential(SECRET, "edge-a");
    let beat = |sessions: Value| {
        let edge = edge.clone();
        let api = ApiClient::new(addr(&app));
        async move {
            api.call(
                Method::PUT,
                "/internal/v1/nodes/edge-a",
                Some(&edge),
                Some(json!({"kind": "edge", "region": "local", "capacity": 10, "sessions": sessions})),
            )
            .await
            .expect(200);
        }
    };
    beat(json!([])).await;
    let [alice, bob, carol] = [
        app.register("alice").await,
        app.register("bob").await,
        app.register("carol").await,
    ];
    let group = app.group(&alice, "g", &[&bob, &carol]).await;
    let call = id(&start(&app, &alice, &group, "audio").await);
    let connected = join(&app, &alice, &call, "laptop").await;
    let never = join(&app, &bob, &call, "phone").await;
    // An accepted direct call nobody joins.
    let dave = app.register("dave").await;
    let dc = app.direct(&carol, &dave).await;
    let empty = id(&start(&app, &carol, &dc, "video").await);
    app.post(&format!("/v1/calls/{empty}/accept"), &dave, json!({}))
        .await
        .expect(200);

    // Within the grace the edge's list does not matter.
    beat(json!([connected["session_id"]])).await;
    let state = app.get(&format!("/v1/calls/{call}"), &alice).await.body;
    assert_eq!(state["participants"].as_array().unwrap().len(), 2);
    // After it, a session the edge does not list is removed; listed ones stay.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    beat(json!([connected["session_id"]])).await;
    let state = app.get(&format!("/v1/calls/{call}"), &alice).await.body;
    let left: Vec<&str> = state["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [alice.id.as_str()], "{never}");
    // The answered call with nobody in it ended (the sweeper, within ~1 s).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = app.get(&format!("/v1/calls/{empty}"), &dave).await.body;
        if state["state"] == "ended" {
            assert_eq!(state["outcome"], "completed");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Dave and Carol are free again.
    start(&app, &dave, &dc, "audio").await;
}

both_backends!(
    a_call_keeps_the_video_codec_it_was_started_with,
    video_codec
);
async fn video_codec(app: TestApp) {
    heartbeat(&app, "edge-a", "local", 100, 0).await;
    let [alice, bob] = [app.register("alice").await, app.register("bob").await];
    let group = app.group(&alice, "codecs", &[&bob]).await;
    let reply = app
        .post(
            "/v1/calls",
            &alice,
            json!({"conversation_id": group, "kind": "video", "video_codec": "av1"}),
        )
        .await;
    assert_eq!(
        (reply.status.as_u16(), reply.code()),
        (422, "invalid_video_codec")
    );
    let started = app
        .post(
            "/v1/calls",
            &alice,
            json!({"conversation_id": group, "kind": "video", "video_codec": "h264"}),
        )
        .await
        .expect(201)
        .body;
    assert_eq!(started["video_codec"], "h264");
    let call = id(&started);
    // Stored: every later view and every join token says so.
    let state = app
        .get(&format!("/v1/calls/{call}"), &bob)
        .await
        .expect(200)
        .body;
    assert_eq!(state["video_codec"], "h264");
    let joined = join(&app, &bob, &call, "phone").await;
    let claims = verifier(&app, "edge-a")
        .await
        .verify(joined["token"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims.video_codec, protocol::calls::VideoCodec::H264);
    // Without one, VP8.
    let [carol, dave] = [app.register("carol").await, app.register("dave").await];
    let other = app.group(&carol, "plain", &[&dave]).await;
    let plain = start(&app, &carol, &other, "video").await;
    assert_eq!(plain["video_codec"], "vp8");
}

both_backends!(
    a_block_ends_calling_and_leaving_a_group_ends_its_call_for_you,
    blocks_and_removals
);
async fn blocks_and_removals(app: TestApp) {
    heartbeat(&app, "edge-a", "local", 100, 0).await;
    let [alice, bob, carol, dave] = [
        app.register("alice").await,
        app.register("bob").await,
        app.register("carol").await,
        app.register("dave").await,
    ];
    // A direct call rung before the block cannot be answered or joined
    // after it, and no new one can be started, by either side.
    let direct = app.direct(&alice, &bob).await;
    let rung = id(&start(&app, &alice, &direct, "audio").await);
    app.patch(
        &format!("/v1/contacts/{}", alice.id),
        &bob,
        json!({"action": "block"}),
    )
    .await
    .expect(200);
    for (who, path) in [
        (&bob, format!("/v1/calls/{rung}/accept")),
        (&bob, format!("/v1/calls/{rung}/join")),
        (&alice, format!("/v1/calls/{rung}/join")),
    ] {
        let refused = app.post(&path, who, json!({})).await.expect(403);
        assert_eq!(refused.code(), "blocked", "{path}");
    }
    app.post(&format!("/v1/calls/{rung}/cancel"), &alice, json!({}))
        .await
        .expect(200);
    for who in [&alice, &bob] {
        let refused = app
            .post(
                "/v1/calls",
                who,
                json!({"conversation_id": direct, "kind": "audio"}),
            )
            .await
            .expect(403);
        assert_eq!(refused.code(), "blocked");
    }

    // Removed from a group: out of its live call at once (everyone hears
    // `call.participant_left`, reason `removed`), and not back in.
    let group = app.group(&alice, "team", &[&carol, &dave]).await;
    let mut alices = ws(addr(&app), &alice).await;
    let call = id(&start(&app, &alice, &group, "video").await);
    join(&app, &alice, &call, "laptop").await;
    join(&app, &carol, &call, "phone").await;
    join(&app, &carol, &call, "tablet").await;
    app.delete(
        &format!("/v1/conversations/{group}/members/{}", carol.id),
        &alice,
    )
    .await
    .expect(204);
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        let event = alices.expect("call.participant_left", WAIT).await;
        assert_eq!(
            event["data"]["participant"]["user_id"],
            carol.id.to_string()
        );
        reasons.push(event["data"]["reason"].as_str().unwrap().to_owned());
    }
    assert_eq!(reasons, ["removed", "removed"], "both of carol's devices");
    let state = app
        .get(&format!("/v1/calls/{call}"), &alice)
        .await
        .expect(200)
        .body;
    let users: Vec<&Value> = state["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["user_id"])
        .collect();
    assert_eq!(users, [&json!(alice.id.to_string())], "{state}");
    let back = app
        .post(
            &format!("/v1/calls/{call}/join"),
            &carol,
            json!({"device_id": "phone"}),
        )
        .await;
    assert!(
        [403, 404].contains(&back.status.as_u16()),
        "a removed member cannot rejoin: {}",
        back.status
    );
    // Leaving the group oneself does the same.
    join(&app, &dave, &call, "desk").await;
    app.delete(
        &format!("/v1/conversations/{group}/members/{}", dave.id),
        &dave,
    )
    .await
    .expect(204);
    let event = alices.expect("call.participant_left", WAIT).await;
    assert_eq!(event["data"]["participant"]["user_id"], dave.id.to_string());
    assert_eq!(event["data"]["reason"], "removed");
}

both_backends_with!(
    a_call_leaves_only_your_history_and_current_names_the_call_you_are_in,
    history_removal_and_current,
    |config| config.calls.ring_timeout_secs = 1
);
async fn history_removal_and_current(app: TestApp) {
    let (alice, bob, mallory) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("mallory").await,
    );
    let chat = app.direct(&alice, &bob).await;
    let current = |user: &TestUser| {
        let (app, user) = (&app, user.clone());
        async move {
            app.get("/v1/calls/current", &user).await.expect(200).body["call"]["id"]
                .as_str()
                .map(str::to_owned)
        }
    };
    assert_eq!(current(&alice).await, None);

    let call = id(&start(&app, &alice, &chat, "audio").await);
    // The caller is in it while it rings; the callee is not yet.
    assert_eq!(current(&alice).await.as_deref(), Some(call.as_str()));
    assert_eq!(current(&bob).await, None);
    let reply = app.delete(&format!("/v1/calls/{call}"), &alice).await;
    assert_eq!(
        (reply.status.as_u16(), reply.code()),
        (409, "call_not_ended")
    );
    app.post(&format!("/v1/calls/{call}/accept"), &bob, json!({}))
        .await
        .expect(200);
    assert_eq!(current(&bob).await.as_deref(), Some(call.as_str()));
    app.post(&format!("/v1/calls/{call}/end"), &alice, json!({}))
        .await
        .expect(200);
    assert_eq!(current(&alice).await, None);
    assert_eq!(current(&bob).await, None);

    // A missed one too, then Bob clears both from his history.
    let missed = id(&start(&app, &alice, &chat, "video").await);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.get(&format!("/v1/calls/{missed}"), &bob).await.body["state"] != "ended" {
        assert!(
            std::time::Instant::now() < deadline,
            "the call never timed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids = |page: &serde_json::Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["call"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Both count as missed for Bob: he accepted the first but never joined.
    assert_eq!(
        app.get("/v1/calls/missed/count", &bob).await.body["count"],
        2
    );
    let before = app.get("/v1/calls/stats", &bob).await.expect(200).body;
    assert_eq!(before["total"]["calls"], 2);
    // A stranger cannot touch it.
    let reply = app.delete(&format!("/v1/calls/{call}"), &mallory).await;
    assert_eq!(reply.status, 404);
    for gone in [&call, &missed] {
        app.delete(&format!("/v1/calls/{gone}"), &bob)
            .await
            .expect(204);
    }
    // Again: still gone, still 204.
    app.delete(&format!("/v1/calls/{call}"), &bob)
        .await
        .expect(204);
    let bobs = app.get("/v1/calls", &bob).await.expect(200).body;
    assert!(ids(&bobs).is_empty(), "{bobs}");
    assert_eq!(
        app.get("/v1/calls/missed/count", &bob).await.body["count"],
        0
    );
    let after = app.get("/v1/calls/stats", &bob).await.expect(200).body;
    assert_eq!(after["total"]["calls"], 0, "{after}");
    // Alice keeps hers.
    let alices = app.get("/v1/calls", &alice).await.expect(200).body;
    assert_eq!(ids(&alices), vec![missed.clone(), call.clone()]);
    assert_eq!(
        app.get("/v1/calls/stats", &alice).await.body["total"]["calls"],
        2
    );
}
