//! Faults as production deals them, against real processes, seen from two
//! headless Chromium pages running the web client in a video call while a
//! script sends a chat message every 200 ms:
//!
//! - SIGKILL the edge hosting the call;
//! - SIGKILL it and restart it 1 s later (a supervisor's restart, before
//!   its registration expires);
//! - SIGTERM it (drain).
//!
//! Each time: media is back on both pages without a reload (the time is
//! printed; the bound asserted is generous, the real numbers are in
//! docs/benchmarks.md), the call does not end, and at the end every
//! acknowledged message is shown exactly once on each page.
//!
//! The control plane runs in this process (its own faults are in
//! `gateway`); each edge is a `cascade edge` child process.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use testkit::app::{Backend, TestApp};
use testkit::browser::{Browser, Page};
use testkit::client::TestUser;

use crate::web::{click, count_text, send, type_into, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_cascade");
const SECRET: &str = control_plane::config::TEST_CLUSTER_SECRET;
/// What a fault may cost at most before the test calls it broken. The
/// target is < 3 s and this test alone measures 0.7-1.5 s; run beside the
/// whole suite on 2 cores (CI) it has taken over 5 s once, so the bound
/// is loose. That the fast paths act at once is asserted without the
/// browsers' load in `failover` (< 2 s); the old code fails here anyway on
/// the restart, whose calls it never moved.
const MEDIA_BACK_BOUND: Duration = Duration::from_secs(10);

/// The fault tests with browsers run one at a time: two of them at once
/// on a 2-core machine (several Chromium renderers decoding video each)
/// took 6-9 s to get media back after an edge kill that takes ~1.2 s
/// alone, i.e. they measured the machine, not the recovery.
static ONE_BROWSER_FAULT_TEST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One `cascade edge` process, restartable on the same ports.
struct EdgeProcess {
    id: String,
    listen: u16,
    media: u16,
    control_plane: String,
    child: Option<Child>,
    /// Its stderr (every start appends): what a failure shows.
    log: std::path::PathBuf,
}

impl EdgeProcess {
    fn new(id: &str, control_plane: &str) -> Self {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        EdgeProcess {
            id: id.to_owned(),
            listen,
            media: testkit::cluster::free_udp_port(),
            control_plane: control_plane.to_owned(),
            child: None,
            log: std::env::temp_dir().join(format!(
                "cascade-chaos-{}-{id}-{listen}.log",
                std::process::id()
            )),
        }
    }

    fn start(&mut self) {
        let credential = control_plane::api::node_credential(SECRET, &self.id);
        let mut command = Command::new(BIN);
        command.arg("edge").env_clear();
        for (key, value) in std::env::vars() {
            if key == "PATH" || key == "HOME" || key == "RUST_LOG" {
                command.env(key, value);
            }
        }
        command
            .env("CASCADE_EDGE__NODE_ID", &self.id)
            .env("CASCADE_EDGE__REGION", "local")
            .env("CASCADE_EDGE__LISTEN", format!("127.0.0.1:{}", self.listen))
            .env("CASCADE_EDGE__MEDIA_PORT", self.media.to_string())
            .env("CASCADE_EDGE__WORKERS", "1")
            .env("CASCADE_EDGE__CONTROL_PLANE_URL", &self.control_plane)
            .env("CASCADE_EDGE__CREDENTIAL", credential)
            .env("CASCADE_EDGE__HEARTBEAT_INTERVAL_SECS", "1")
            .env("CASCADE_EDGE__DRAIN_TIMEOUT_SECS", "5")
            // As in EdgeConfig::for_tests: a loaded test machine's late
            // timers must not shed the video the tests look for.
            .env("CASCADE_EDGE__SHED_VIDEO_WHEN_OVERLOADED", "false")
            .env("CASCADE_TELEMETRY__LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .expect("edge log file"),
            );
        self.child = Some(command.spawn().expect("spawn cascade edge"));
    }

    fn signal(&mut self, signal: &str) {
        if let Some(child) = &self.child {
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap();
        }
    }

    /// SIGKILL, and reap it.
    fn kill(&mut self) {
        self.signal("-KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for it to finish draining and exit.
    async fn terminate(&mut self) {
        self.signal("-TERM");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the edge never exited after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The last lines each edge logged, for a failure's message.
fn edge_log_tails(edges: &[EdgeProcess]) -> String {
    let mut out = String::new();
    for edge in edges {
        let text = std::fs::read_to_string(&edge.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("--- {} (last lines)\n", edge.id));
        for line in &lines[lines.len().saturating_sub(25)..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Waits until the control plane lists every edge in `ids` as live.
async fn registered(app: &TestApp, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = app
            .call(Method::GET, "/internal/v1/nodes", Some(SECRET), None)
            .await
            .body;
        let live: Vec<&str> = nodes
            .as_array()
            .map(|n| n.iter().filter_map(|n| n["id"].as_str()).collect())
            .unwrap_or_default();
        if ids.iter().all(|id| live.contains(id)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "edges {ids:?} never registered: {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log_in(browser: &mut Browser, page: &Page, user: &TestUser) {
    wait_for(
        browser,
        page,
        "!!document.querySelector('.auth form')",
        Duration::from_secs(10),
    )
    .await;
    browser
        .eval(page, &type_into("input[name=login]", &user.username))
        .await;
    browser
        .eval(page, &type_into("input[name=password]", &user.password))
        .await;
    browser.eval(page, &click(".auth [type=submit]")).await;
    crate::web::open_first_conversation(browser, page).await;
}

/// Installs `__mark()` (remember the current peer connection), `__back()`
/// (a different connection, connected, decoding video), `__sawNotice`
/// (the call showed "Reconnecting…" since the mark) and `__log` (how the
/// session's edge, rejoin, peer connection and socket changed since the
/// mark, sampled every 20 ms: what a failure prints) on a page in a call.
const PROBES: &str = "(() => { \
    window.__log = []; let last = ''; \
    window.__mark = () => { window.__marked = window.cascadeState.call.session.pc; window.__sawNotice = false; \
      window.__markedAt = performance.now(); window.__log = []; last = ''; return true; }; \
    new MutationObserver(() => { if (document.querySelector('.call .call-notice')) window.__sawNotice = true; }) \
      .observe(document.body, { subtree: true, childList: true }); \
    setInterval(() => { const c = window.cascadeState.call; if (!c) return; const s = c.session; \
      const now = [s.join ? s.join.edge.id : 'no-join', s.join ? String(s.join.session_id).slice(0, 8) : '', \
        s.rejoining ? 'rejoining' : '-', s.pc ? (s.pc === window.__marked ? 'old-pc:' : 'new-pc:') + s.pc.connectionState : 'no-pc', \
        s.ws ? 'ws:' + s.ws.readyState : 'no-ws'].join(' '); \
      if (now !== last) { last = now; window.__log.push(Math.round(performance.now() - (window.__markedAt || 0)) + ' ms ' + now); } }, 20); \
    window.__back = async () => { const c = window.cascadeState.call; if (!c) return 'ended'; \
      const s = c.session; if (!s.pc || s.pc === window.__marked) return false; \
      const st = await s.stats(); return st.state === 'connected' && st.framesDecoded > 5; }; \
    return true; })()";

/// Media is back on `page` (`who`'s, after `fault`): how long after
/// `since`. A timeout says what the page went through.
async fn media_back(
    browser: &mut Browser,
    page: &Page,
    since: Instant,
    who: &str,
    fault: &str,
    edges: &[EdgeProcess],
) -> Duration {
    let deadline = since + MEDIA_BACK_BOUND;
    loop {
        let back = browser
            .eval(page, "window.__back ? window.__back() : false")
            .await;
        assert_ne!(
            back, "ended",
            "the call ended on {who}'s page after {fault}"
        );
        if back == true {
            return since.elapsed();
        }
        if Instant::now() >= deadline {
            let seen = browser
                .eval(
                    page,
                    "(async () => { const c = window.cascadeState.call; \
                     const st = c && c.session.pc ? await c.session.stats() : null; \
                     return { log: window.__log, stats: st }; })()",
                )
                .await;
            panic!(
                "{fault}: media not back on {who}'s page within {MEDIA_BACK_BOUND:?}: {seen:#}\n{}",
                edge_log_tails(edges)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn hosting_edge(browser: &mut Browser, page: &Page) -> String {
    browser
        .eval(page, "window.cascadeState.call.session.edge.id")
        .await
        .as_str()
        .expect("in a call")
        .to_owned()
}

#[tokio::test]
async fn calls_survive_edge_kill_restart_and_drain_in_the_browser() {
    let _alone = ONE_BROWSER_FAULT_TEST.lock().await;
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let base = app.url("");
    let mut edges = [
        EdgeProcess::new("edge-a", &base),
        EdgeProcess::new("edge-b", &base),
    ];
    for edge in &mut edges {
        edge.start();
    }
    registered(&app, &["edge-a", "edge-b"]).await;

    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.direct(&alice, &bob).await;
    let url = format!("{base}/");
    let alice_page = browser.open_isolated(&url).await;
    let bob_page = browser.open_isolated(&url).await;
    log_in(&mut browser, &alice_page, &alice).await;
    log_in(&mut browser, &bob_page, &bob).await;

    browser
        .eval(
            &alice_page,
            &click("button[aria-label=\"Start video call\"]"),
        )
        .await;
    wait_for(
        &mut browser,
        &bob_page,
        "!!document.querySelector('.ringing')",
        Duration::from_secs(10),
    )
    .await;
    browser
        .eval(&bob_page, &click("button[aria-label=\"Accept call\"]"))
        .await;
    for page in [&alice_page, &bob_page] {
        browser.eval(page, PROBES).await;
        wait_for(
            &mut browser,
            page,
            "(async () => { const c = window.cascadeState.call; const s = c && await c.session.stats(); \
             return s && s.state === 'connected' && s.framesDecoded > 5; })()",
            Duration::from_secs(20),
        )
        .await;
    }
    let call_id = browser
        .eval(&alice_page, "window.cascadeState.call.id")
        .await
        .as_str()
        .unwrap()
        .to_owned();

    // The script: a message every 200 ms for the whole test, each
    // acknowledged one remembered.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let sender = {
        let acked = acked.clone();
        let api = testkit::client::ApiClient::new(app.server.as_ref().unwrap().http_addr());
        let alice = alice.clone();
        let chat = chat.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let body = format!("tick {i}");
                let reply = api
                    .post(
                        &format!("/v1/conversations/{chat}/messages"),
                        &alice,
                        json!({"body": body, "client_message_id": format!("tick-{i}")}),
                    )
                    .await;
                if reply.status.is_success() {
                    acked.lock().unwrap().push(body);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let mut timings = Vec::new();
    for fault in ["SIGKILL", "SIGKILL + restart after 1 s", "SIGTERM (drain)"] {
        let host = hosting_edge(&mut browser, &alice_page).await;
        assert_eq!(
            hosting_edge(&mut browser, &bob_page).await,
            host,
            "the call meets on one edge"
        );
        for page in [&alice_page, &bob_page] {
            browser.eval(page, "window.__mark()").await;
        }
        let edge = edges.iter_mut().find(|e| e.id == host).unwrap();
        let at = Instant::now();
        match fault {
            "SIGKILL" => edge.kill(),
            "SIGKILL + restart after 1 s" => {
                edge.kill();
                tokio::time::sleep(Duration::from_secs(1)).await;
                edge.start();
            }
            _ => edge.signal("-TERM"),
        }
        let alice_back = media_back(&mut browser, &alice_page, at, "alice", fault, &edges).await;
        let bob_back = media_back(&mut browser, &bob_page, at, "bob", fault, &edges).await;
        eprintln!(
            "{fault} of {host}: media back on alice's page after {alice_back:?}, bob's after {bob_back:?}"
        );
        if fault.starts_with("SIGKILL") {
            // The lost edge was said, not hidden behind a frozen picture.
            for page in [&alice_page, &bob_page] {
                let said = browser.eval(page, "window.__sawNotice").await;
                assert_eq!(said, true, "the page showed \"Reconnecting…\" on the call");
            }
        }
        timings.push((fault, alice_back, bob_back));
        let state = app
            .get(&format!("/v1/calls/{call_id}"), &alice)
            .await
            .expect(200)
            .body;
        assert_eq!(state["state"], "active", "the call did not end: {state}");
        // Back to two edges for the next fault.
        let edge = edges.iter_mut().find(|e| e.id == host).unwrap();
        match fault {
            "SIGKILL" => edge.start(),
            "SIGTERM (drain)" => {
                edge.terminate().await;
                edge.start();
            }
            _ => {}
        }
        registered(&app, &["edge-a", "edge-b"]).await;
        // Media keeps flowing on the new edge (not just a first frame):
        // 15 more frames decoded within a few seconds.
        for page in [&alice_page, &bob_page] {
            browser.eval(page, "window.__mark()").await;
            let before = browser
                .eval(
                    page,
                    "window.cascadeState.call.session.stats().then(s => s.framesDecoded)",
                )
                .await
                .as_f64()
                .unwrap_or(0.0);
            wait_for(
                &mut browser,
                page,
                &format!(
                    "window.cascadeState.call.session.stats().then(s => s.framesDecoded > {before} + 15)"
                ),
                Duration::from_secs(5),
            )
            .await;
        }
    }
    sender.abort();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the script sent messages: {}",
        acked.len()
    );
    // Every acknowledged message, once, on both pages, with no reload.
    for page in [&alice_page, &bob_page] {
        shown_once(&mut browser, page, &acked, Duration::from_secs(10)).await;
    }
    eprintln!("chaos timings: {timings:?}");
    // Edges that came back on new ports were reachable under the page's
    // Content-Security-Policy (connect-src): no violation on either page.
    for page in [&alice_page, &bob_page] {
        let complaints = browser.security_complaints(page);
        assert!(complaints.is_empty(), "console: {complaints:?}");
    }
}

/// Every string in `expected` shown exactly once on `page` (waiting up to
/// `limit` for the last one to arrive).
async fn shown_once(browser: &mut Browser, page: &Page, expected: &[String], limit: Duration) {
    let Some(last) = expected.last() else {
        return;
    };
    wait_for(browser, page, &format!("{} === 1", count_text(last)), limit).await;
    let counts = browser
        .eval(
            page,
            &format!(
                "(() => {{ const shown = [...document.querySelectorAll('.msg .body')].map(b => b.textContent); \
                 return {}.map(t => shown.filter(s => s === t).length); }})()",
                serde_json::to_string(expected).unwrap()
            ),
        )
        .await;
    let wrong: Vec<(&String, &serde_json::Value)> = expected
        .iter()
        .zip(counts.as_array().unwrap())
        .filter(|(_, c)| c.as_u64() != Some(1))
        .collect();
    assert!(wrong.is_empty(), "shown other than once: {wrong:?}");
}

/// A control-plane replica process on a fixed port (so it can come back
/// where the pages look for it).
struct Replica {
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Replica {
    fn start(&mut self) {
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let listen = format!("127.0.0.1:{}", self.port);
        env.push(("CASCADE_CONTROL_PLANE__LISTEN", &listen));
        let (child, _) = crate::cli::start_control_plane(&env);
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two replicas on one Postgres and Redis, both configured with both
/// origins (`api_origins`); two pages loaded from replica A, their gateway
/// sockets on it. A script sends a message every 200 ms
/// through whichever replica answers. A is SIGKILLed: the pages move to B
/// and show what is sent meanwhile while A is still down; then both are
/// SIGKILLed for 5 s: the pages say they are reconnecting, and once the
/// replicas are back every acknowledged message is shown exactly once.
#[tokio::test]
async fn chat_survives_replica_kills_in_the_browser() {
    let _alone = ONE_BROWSER_FAULT_TEST.lock().await;
    let (Some(pg), Some(redis)) = (
        testkit::servers::postgres_url(),
        testkit::servers::redis_url(),
    ) else {
        return;
    };
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let db = testkit::app::PgTestDatabase::create(&pg).await;
    let env = vec![
        (
            "CASCADE_CONTROL_PLANE__DATABASE__URL".to_owned(),
            db.url().to_owned(),
        ),
        ("CASCADE_CONTROL_PLANE__REDIS__URL".to_owned(), redis),
        (
            "CASCADE_CONTROL_PLANE__CLUSTER__SECRET".to_owned(),
            SECRET.to_owned(),
        ),
        // Sign-ups from 127.0.0.1 are counted in the shared test Redis by
        // every test: this one must not be refused for the others'.
        (
            "CASCADE_CONTROL_PLANE__RATE_LIMITS__SIGNUPS_PER_ADDRESS__LIMIT".to_owned(),
            "1000000".to_owned(),
        ),
        (
            "CASCADE_CONTROL_PLANE__AUTH__ARGON2_MEMORY_KIB".to_owned(),
            "1024".to_owned(),
        ),
        (
            "CASCADE_CONTROL_PLANE__AUTH__ARGON2_ITERATIONS".to_owned(),
            "1".to_owned(),
        ),
    ];
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port_a, port_b) = (port(), port());
    // The deployment's list of API origins: written into the page, and
    // allowed cross-origin by each replica.
    let mut env = env;
    env.push((
        "CASCADE_CONTROL_PLANE__API_ORIGINS".to_owned(),
        format!("[\"http://127.0.0.1:{port_a}\", \"http://127.0.0.1:{port_b}\"]"),
    ));
    let mut a = Replica {
        port: port_a,
        env: env.clone(),
        child: None,
    };
    let mut b = Replica {
        port: port_b,
        env,
        child: None,
    };
    a.start();
    b.start();
    let api_a = testkit::client::ApiClient::new(format!("127.0.0.1:{}", a.port));
    let alice = api_a.register("alice").await;
    let bob = api_a.register("bob").await;
    let chat = api_a.direct(&alice, &bob).await;

    let url = format!("http://127.0.0.1:{port_a}/");
    let alice_page = browser.open_isolated(&url).await;
    let bob_page = browser.open_isolated(&url).await;
    log_in(&mut browser, &alice_page, &alice).await;
    log_in(&mut browser, &bob_page, &bob).await;
    // What each page's gateway went through, printed at the end.
    for page in [&alice_page, &bob_page] {
        browser
            .eval(
                page,
                "(() => { window.__log = []; window.cascadeClient.on('*', (d, f, t) => \
                 window.__log.push([t, (f && f.cursor) || (d && d.cursor) || null, (d && d.body) || (d && d.code) || null, window.cascadeClient.base, Math.round(performance.now())])); \
                 return true; })()",
            )
            .await;
    }
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let sender = {
        let acked = acked.clone();
        let apis: Vec<testkit::client::ApiClient> = [a.port, b.port]
            .iter()
            .map(|p| testkit::client::ApiClient::new(format!("127.0.0.1:{p}")))
            .collect();
        let alice = alice.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let body = format!("tick {i}");
                // Through whichever replica answers; the same
                // client_message_id makes a retry apply once.
                for api in &apis {
                    let sent = api
                        .http
                        .post(api.url(&format!("/v1/conversations/{chat}/messages")))
                        .bearer_auth(&alice.access)
                        .json(&json!({"body": body, "client_message_id": format!("tick-{i}")}))
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status().is_success()) {
                        acked.lock().unwrap().push(body.clone());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. The replica both pages' sockets are on dies; it stays down.
    let before = acked.lock().unwrap().len();
    a.kill();
    let killed = Instant::now();
    // The first message acknowledged after the kill, live on a page.
    let first_after = loop {
        if let Some(m) = acked.lock().unwrap().get(before + 1) {
            break m.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_for(
        &mut browser,
        &bob_page,
        &format!("{} === 1", count_text(&first_after)),
        Duration::from_secs(10),
    )
    .await;
    eprintln!(
        "replica A killed: the first message sent after it shown live on a page after {:?}",
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during: Vec<String> = acked.lock().unwrap().clone();
    for page in [&alice_page, &bob_page] {
        shown_once(&mut browser, page, &during, Duration::from_secs(5)).await;
    }
    eprintln!(
        "replica A killed: pages show messages through B, the last of {} within {:?}",
        during.len(),
        killed.elapsed()
    );
    // A message typed on a page while its own origin is dead goes to the
    // other replica (CORS allows it) and reaches the other page.
    send(&mut browser, &bob_page, "typed while A is down").await;
    wait_for(
        &mut browser,
        &alice_page,
        &format!("{} === 1", count_text("typed while A is down")),
        Duration::from_secs(10),
    )
    .await;
    a.start();

    // 2. Both replicas die for 5 s.
    a.kill();
    b.kill();
    for page in [&alice_page, &bob_page] {
        wait_for(
            &mut browser,
            page,
            "!!document.querySelector('p.offline')",
            Duration::from_secs(5),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.start();
    b.start();
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sender.abort();
    let mut acked = acked.lock().unwrap().clone();
    // First: `shown_once` waits for the last one, the newest.
    acked.insert(0, "typed while A is down".to_owned());
    for page in [&alice_page, &bob_page] {
        let log = browser
            .eval(page, "JSON.stringify((window.__log || []).slice(-60))")
            .await;
        eprintln!("gateway log: {log}");
    }
    for page in [&alice_page, &bob_page] {
        shown_once(&mut browser, page, &acked, Duration::from_secs(10)).await;
        wait_for(
            &mut browser,
            page,
            "!document.querySelector('p.offline')",
            Duration::from_secs(5),
        )
        .await;
    }
    eprintln!(
        "both replicas back: all {} acknowledged messages shown once on both pages {:?} after the restart",
        acked.len(),
        back.elapsed()
    );
}

/// Picks `region` in the page's development region picker.
async fn pick_region(browser: &mut Browser, page: &Page, region: &str) {
    wait_for(
        browser,
        page,
        "!!document.querySelector('select[aria-label=\"Call region\"]')",
        Duration::from_secs(10),
    )
    .await;
    browser
        .eval(
            page,
            &format!(
                "(() => {{ const s = document.querySelector('select[aria-label=\"Call region\"]'); s.value = '{region}'; \
                 s.dispatchEvent(new Event('change')); return true; }})()"
            ),
        )
        .await;
}

/// Video frames a page has decoded from `user`'s camera (the inbound
/// streams whose m-line the edge named as theirs).
async fn frames_from(browser: &mut Browser, page: &Page, user: &str) -> f64 {
    browser
        .eval(
            page,
            &format!(
                "(async () => {{ const c = window.cascadeState.call; if (!c || !c.session.pc) return -1; \
                 const mids = new Set(c.session.tracks.filter(t => t.user_id === '{user}' && t.kind === 'video').map(t => t.mid)); \
                 let n = 0; (await c.session.pc.getStats()).forEach(r => {{ \
                   if (r.type === 'inbound-rtp' && r.kind === 'video' && mids.has(r.mid)) n += r.framesDecoded || 0; }}); \
                 return n; }})()"
            ),
        )
        .await
        .as_f64()
        .unwrap_or(-1.0)
}

/// Two regions, a relay each; the `us` relay is a process. Alice (eu) and
/// Bob and Carol (both on the us edge) in a video call in three Chromium
/// pages. The us relay is SIGKILLed and restarted 10 s later (past the
/// edges' 5 s stale-track timeout, so the remote tracks leave and come
/// back): video from eu is back on both us pages, within a few seconds of
/// each other, and Alice gets theirs again.
#[tokio::test]
async fn cross_region_video_returns_to_every_page_after_a_relay_outage() {
    let _alone = ONE_BROWSER_FAULT_TEST.lock().await;
    use testkit::cluster::{CertDir, RunningEdge, RunningRelay, edge_config, relay_config};
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let app = TestApp::spawn_with(Backend::Sqlite, |config| {
        let region = |name: &str, lat: f64, lon: f64| control_plane::calls::config::RegionConfig {
            name: name.into(),
            latitude: lat,
            longitude: lon,
            probe_url: None,
        };
        config.calls.regions = vec![region("eu", 50.1, 8.7), region("us", 39.0, -77.5)];
        config.calls.default_region = "eu".into();
    })
    .await
    .unwrap();
    let certs = CertDir::new(&["eu-relay", "us-relay"], &["eu-edge", "us-edge"]);
    let eu_relay = RunningRelay::start(relay_config(&certs, "eu-relay", "eu", 0, &[])).await;
    let us_port = testkit::cluster::free_udp_port();
    let config_path = crate::relay::write_us_relay_config(&certs, us_port, eu_relay.addrs.quic);
    let us_relay = crate::relay::start_relay_process(&config_path).await;
    let base = app.url("");
    let eu_edge = RunningEdge::start(edge_config(
        "eu-edge",
        "eu",
        &base,
        SECRET,
        Some((&certs, eu_relay.addrs.quic)),
    ))
    .await;
    let us_edge = RunningEdge::start(edge_config(
        "us-edge",
        "us",
        &base,
        SECRET,
        Some((
            &certs,
            std::net::SocketAddr::from(([127, 0, 0, 1], us_port)),
        )),
    ))
    .await;
    registered(&app, &["eu-edge", "us-edge"]).await;

    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    app.group(&alice, "across", &[&bob, &carol]).await;
    let url = format!("{base}/");
    let pages = [
        browser.open_isolated(&url).await,
        browser.open_isolated(&url).await,
        browser.open_isolated(&url).await,
    ];
    for ((page, user), region) in pages
        .iter()
        .zip([&alice, &bob, &carol])
        .zip(["eu", "us", "us"])
    {
        log_in(&mut browser, page, user).await;
        pick_region(&mut browser, page, region).await;
    }
    browser
        .eval(&pages[0], &click("button[aria-label=\"Start video call\"]"))
        .await;
    for page in &pages[1..] {
        wait_for(
            &mut browser,
            page,
            "!!document.querySelector('.ringing')",
            Duration::from_secs(10),
        )
        .await;
        browser
            .eval(page, &click("button[aria-label=\"Accept call\"]"))
            .await;
    }
    // Everyone decodes both others' video (two remote tiles each).
    for page in &pages {
        wait_for(
            &mut browser,
            page,
            "(async () => { const c = window.cascadeState.call; if (!c) return false; \
             const st = await c.session.stats(); const tiles = document.querySelectorAll('.call figure:not([data-key=\"local\"]) video'); \
             return st.framesDecoded > 30 && tiles.length === 2 && [...tiles].every(v => v.videoWidth > 0); })()",
            Duration::from_secs(30),
        )
        .await;
    }
    assert_eq!(hosting_edge(&mut browser, &pages[1]).await, "us-edge");
    assert_eq!(hosting_edge(&mut browser, &pages[2]).await, "us-edge");

    // Whose video each page waits for: someone in the other region.
    let watched = [bob.id.as_str(), alice.id.as_str(), alice.id.as_str()];
    for (i, page) in pages.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let n = frames_from(&mut browser, page, watched[i]).await;
            if n > 30.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "page {i} decodes video from the other region first: {n}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    us_relay.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut early = [0.0; 3];
    for (i, page) in pages.iter().enumerate() {
        early[i] = frames_from(&mut browser, page, watched[i]).await;
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut floor = [0.0; 3];
    for (i, page) in pages.iter().enumerate() {
        floor[i] = frames_from(&mut browser, page, watched[i]).await;
    }
    for i in 0..3 {
        assert!(
            floor[i] < early[i] + 15.0,
            "video across regions stopped while the relay was down (page {i}: {} → {})",
            early[i],
            floor[i]
        );
    }
    let _us_relay = crate::relay::start_relay_process(&config_path).await;
    let restarted = Instant::now();
    // Back = decoding again, with a picture from the other region on
    // every remote tile of the us pages (the eu tile included).
    let mut back = [None; 3];
    while back.iter().any(Option::is_none) {
        for (i, page) in pages.iter().enumerate() {
            if back[i].is_some() {
                continue;
            }
            // A renegotiated stream starts counting from zero again.
            let now = frames_from(&mut browser, page, watched[i]).await;
            if now < floor[i] {
                floor[i] = now.max(0.0);
            }
            if now > floor[i] + 15.0 {
                back[i] = Some(restarted.elapsed());
            }
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "video not back on every page: {back:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "us relay down {:?}: video back after its restart on alice's (eu) page {:?}, bob's {:?}, carol's {:?}",
        restarted - killed,
        back[0].unwrap(),
        back[1].unwrap(),
        back[2].unwrap()
    );
    let times: Vec<Duration> = back.iter().flatten().copied().collect();
    let spread = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(
        spread < Duration::from_secs(5),
        "every page alike, not one at a time: {back:?}"
    );
    // The tiles are pictures again, not frozen frames: each remote video
    // keeps advancing.
    for page in &pages {
        wait_for(
            &mut browser,
            page,
            "(() => { const tiles = [...document.querySelectorAll('.call figure:not([data-key=\"local\"]) video')]; \
             return tiles.length === 2 && tiles.every(v => v.videoWidth > 0); })()",
            Duration::from_secs(10),
        )
        .await;
    }
    drop(pages);
    eu_edge.stop().await;
    us_edge.stop().await;
    eu_relay.stop().await;
}
