//! The web client end to end, as a new user meets it: `cascade dev` (the
//! built binary), two people in two isolated contexts of headless Chromium
//! (fake camera and microphone) sign up, become contacts, chat, reload, and
//! call each other across the `eu` and `us` regions through the relays,
//! all of it under the page's Content-Security-Policy with no violation.
//! Screenshots go to `target/artifacts/web/`.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::browser::{Browser, Page};

const PASSWORD: &str = "Plum-Ferry-Quartz-91-web";

fn artifacts() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts/web")
}

/// Evaluates `expression` until it is truthy (or fails after `limit`).
pub(crate) async fn wait_for(
    browser: &mut Browser,
    page: &Page,
    expression: &str,
    limit: Duration,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        // A page in the middle of navigating (a reload) cannot answer yet.
        let value = browser
            .try_eval(page, expression)
            .await
            .unwrap_or(Value::Null);
        let truthy = match &value {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return value;
        }
        if Instant::now() > deadline {
            let error = browser
                .eval(page, "document.querySelector('.error') && document.querySelector('.error').textContent")
                .await;
            panic!("timed out waiting for {expression} (page error: {error})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Types into an input the way a user does (value + input event).
pub(crate) fn type_into(selector: &str, text: &str) -> String {
    format!(
        "(() => {{ const el = document.querySelector({sel}); el.focus(); el.value = {text}; \
         el.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()",
        sel = serde_json::to_string(selector).unwrap(),
        text = serde_json::to_string(text).unwrap(),
    )
}

pub(crate) fn click(selector: &str) -> String {
    format!(
        "(() => {{ const el = document.querySelector({sel}); if (!el) return false; el.click(); return true; }})()",
        sel = serde_json::to_string(selector).unwrap()
    )
}

async fn sign_up(browser: &mut Browser, page: &Page, name: &str) {
    wait_for(
        browser,
        page,
        "!!document.querySelector('.auth form')",
        Duration::from_secs(10),
    )
    .await;
    browser.eval(page, &click(".auth .switch")).await;
    browser
        .eval(page, &type_into("input[name=login]", name))
        .await;
    browser
        .eval(
            page,
            &type_into("input[name=email]", &format!("{name}@example.com")),
        )
        .await;
    browser
        .eval(page, &type_into("input[name=password]", PASSWORD))
        .await;
    // The terms checkbox names the version it accepts.
    wait_for(
        browser,
        page,
        "document.querySelector('.auth .terms-text').textContent.includes('(version ')",
        Duration::from_secs(10),
    )
    .await;
    browser
        .eval(page, &click(".auth input[name=accept_terms]"))
        .await;
    browser.eval(page, &click(".auth [type=submit]")).await;
    wait_for(
        browser,
        page,
        "!!document.querySelector('.sidebar')",
        Duration::from_secs(10),
    )
    .await;
}

/// Waits for the conversation list, opens the first conversation and
/// waits for its composer.
pub(crate) async fn open_first_conversation(browser: &mut Browser, page: &Page) {
    wait_for(
        browser,
        page,
        "!!document.querySelector('.conversations li[data-id]')",
        Duration::from_secs(10),
    )
    .await;
    browser
        .eval(page, &click(".conversations li[data-id]"))
        .await;
    wait_for(
        browser,
        page,
        "!!document.querySelector('.composer input')",
        Duration::from_secs(5),
    )
    .await;
}

pub(crate) async fn send(browser: &mut Browser, page: &Page, text: &str) {
    browser
        .eval(page, &type_into(".composer input", text))
        .await;
    browser
        .eval(
            page,
            "(() => { document.querySelector('.composer').requestSubmit(); return true; })()",
        )
        .await;
}

/// How many messages with exactly `text` the page shows.
pub(crate) fn count_text(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('.msg .body')].filter(b => b.textContent === {}).length",
        serde_json::to_string(text).unwrap()
    )
}

/// Waits until `page` shows `text` once; returns how long it took.
async fn arrives(browser: &mut Browser, page: &Page, text: &str) -> Duration {
    let t0 = Instant::now();
    wait_for(
        browser,
        page,
        &format!("{} === 1", count_text(text)),
        Duration::from_secs(5),
    )
    .await;
    t0.elapsed()
}

async fn call_stats(browser: &mut Browser, page: &Page) -> Value {
    browser
        .eval(
            page,
            "(async () => { const c = window.cascadeState.call; if (!c) return null; \
             const s = await c.session.stats(); return {...s, region: c.session.edge && c.session.edge.region}; })()",
        )
        .await
}

#[tokio::test]
async fn two_people_sign_up_chat_and_call_across_regions_in_a_browser() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let data_dir = std::env::temp_dir().join(format!("cascade-web-it-{}", uuid::Uuid::new_v4()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dev = tokio::task::spawn_blocking({
        let data_dir = data_dir.clone();
        move || crate::dev::start(&data_dir, port)
    })
    .await
    .unwrap();
    let url = format!("{}/", dev.addr);
    let alice = browser.open_isolated(&url).await;
    let bob = browser.open_isolated(&url).await;
    sign_up(&mut browser, &alice, "alice").await;
    sign_up(&mut browser, &bob, "bob").await;

    // Alice finds Bob and asks; Bob accepts.
    browser
        .eval(&alice, &type_into("input[name=q]", "bob"))
        .await;
    browser
        .eval(&alice, "(() => { document.querySelector('form[role=search]').requestSubmit(); return true; })()")
        .await;
    wait_for(
        &mut browser,
        &alice,
        "!!document.querySelector('button[aria-label=\"Add bob as a contact\"]')",
        Duration::from_secs(5),
    )
    .await;
    browser
        .eval(
            &alice,
            &click("button[aria-label=\"Add bob as a contact\"]"),
        )
        .await;
    wait_for(
        &mut browser,
        &bob,
        "!!document.querySelector('button[aria-label=\"Accept alice\"]')",
        Duration::from_secs(5),
    )
    .await;
    browser
        .eval(&bob, &click("button[aria-label=\"Accept alice\"]"))
        .await;
    wait_for(
        &mut browser,
        &alice,
        "!!document.querySelector('li[aria-label=\"Chat with bob\"]')",
        Duration::from_secs(5),
    )
    .await;

    // They chat: each sees the other's message within a second.
    browser
        .eval(&alice, &click("li[aria-label=\"Chat with bob\"]"))
        .await;
    wait_for(
        &mut browser,
        &alice,
        "!!document.querySelector('.composer input')",
        Duration::from_secs(5),
    )
    .await;
    send(&mut browser, &alice, "hi bob").await;
    wait_for(
        &mut browser,
        &bob,
        "!!document.querySelector('.conversations li[data-id]')",
        Duration::from_secs(5),
    )
    .await;
    // Bob's list shows the conversation with one unread message.
    wait_for(
        &mut browser,
        &bob,
        "(() => { const b = document.querySelector('.conversations .unread'); return b && b.textContent === '1'; })()",
        Duration::from_secs(5),
    )
    .await;
    browser
        .eval(&bob, &click(".conversations li[data-id]"))
        .await;
    arrives(&mut browser, &bob, "hi bob").await;
    send(&mut browser, &bob, "hello alice").await;
    let to_alice = arrives(&mut browser, &alice, "hello alice").await;
    // With the keyboard alone: the composer has the focus, typing and
    // Enter send.
    let focused = browser
        .eval(
            &alice,
            "document.activeElement === document.querySelector('.composer input')",
        )
        .await;
    assert_eq!(focused, true, "the composer keeps the focus after sending");
    browser.type_text(&alice, "how are you?").await;
    browser.press(&alice, "Enter").await;
    let to_bob = arrives(&mut browser, &bob, "how are you?").await;
    eprintln!("chat latency: bob → alice {to_alice:?}, alice → bob {to_bob:?}");
    assert!(to_alice < Duration::from_secs(1) && to_bob < Duration::from_secs(1));
    browser
        .screenshot(&alice, &artifacts().join("chat.png"))
        .await;

    // Bob reloads mid-chat while Alice writes: nothing lost, nothing twice.
    browser
        .eval(&bob, "(() => { location.reload(); return true; })()")
        .await;
    send(&mut browser, &alice, "sent while you reloaded").await;
    wait_for(
        &mut browser,
        &bob,
        "!!document.querySelector('.conversations li[data-id]')",
        Duration::from_secs(10),
    )
    .await;
    browser
        .eval(&bob, &click(".conversations li[data-id]"))
        .await;
    arrives(&mut browser, &bob, "sent while you reloaded").await;
    for text in [
        "hi bob",
        "hello alice",
        "how are you?",
        "sent while you reloaded",
    ] {
        let n = browser.eval(&bob, &count_text(text)).await;
        assert_eq!(n, 1, "{text:?} shown once after the reload");
    }

    // A phone-width view still holds.
    browser.set_viewport(&bob, 390, 844).await;
    browser
        .screenshot(&bob, &artifacts().join("chat-phone-390.png"))
        .await;
    let overflow = browser
        .eval(
            &bob,
            "document.documentElement.scrollWidth <= window.innerWidth + 1",
        )
        .await;
    assert_eq!(overflow, true, "no horizontal overflow at 390 px");
    browser.set_viewport(&bob, 1280, 800).await;

    // Every control has a name; interactive list items are focusable.
    for page in [&alice, &bob] {
        let unlabeled = browser
            .eval(
                page,
                "[...document.querySelectorAll('button, input, select, [role=button]')].filter(el => \
                 !(el.getAttribute('aria-label') || (el.labels && el.labels.length) || el.textContent.trim())).length",
            )
            .await;
        assert_eq!(unlabeled, 0, "every control is labelled");
        let unfocusable = browser
            .eval(page, "[...document.querySelectorAll('[role=button]')].filter(el => el.tabIndex < 0).length")
            .await;
        assert_eq!(unfocusable, 0, "every control is reachable by keyboard");
    }

    // The call: Alice in eu, Bob in us (the development region picker).
    for (page, region) in [(&alice, "eu"), (&bob, "us")] {
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
    browser
        .eval(&alice, &click("button[aria-label=\"Start video call\"]"))
        .await;
    wait_for(
        &mut browser,
        &bob,
        "!!document.querySelector('.ringing')",
        Duration::from_secs(5),
    )
    .await;
    browser
        .screenshot(&bob, &artifacts().join("incoming-call.png"))
        .await;
    browser
        .eval(&bob, &click("button[aria-label=\"Accept call\"]"))
        .await;
    for page in [&alice, &bob] {
        wait_for(
            &mut browser,
            page,
            "!!document.querySelector('.call')",
            Duration::from_secs(10),
        )
        .await;
    }
    let first_alice = wait_for(
        &mut browser,
        &alice,
        "(async () => { const c = window.cascadeState.call; const s = c && await c.session.stats(); return s && s.framesDecoded > 0 && s.audioBytes > 0 && s; })()",
        Duration::from_secs(20),
    )
    .await;
    let first_bob = wait_for(
        &mut browser,
        &bob,
        "(async () => { const c = window.cascadeState.call; const s = c && await c.session.stats(); return s && s.framesDecoded > 0 && s.audioBytes > 0 && s; })()",
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later_alice = call_stats(&mut browser, &alice).await;
    let later_bob = call_stats(&mut browser, &bob).await;
    eprintln!("alice {first_alice} → {later_alice}; bob {first_bob} → {later_bob}");
    assert_eq!(later_alice["region"], "eu");
    assert_eq!(later_bob["region"], "us");
    for (first, later) in [(&first_alice, &later_alice), (&first_bob, &later_bob)] {
        assert!(
            later["framesDecoded"].as_f64() > first["framesDecoded"].as_f64(),
            "video keeps decoding"
        );
        assert!(
            later["audioBytes"].as_f64() > first["audioBytes"].as_f64(),
            "audio keeps arriving"
        );
    }
    browser
        .screenshot(&alice, &artifacts().join("call.png"))
        .await;

    // Bob mutes his microphone; Alice's (a fake one: it beeps) makes her
    // the speaker, on her edge and, through the relays' audio levels, on
    // Bob's in the other region.
    browser
        .eval(&bob, &click("button[aria-label=\"Mute microphone\"]"))
        .await;
    wait_for(
        &mut browser,
        &bob,
        "!!document.querySelector('.call figure.speaking:not([data-key=\"local\"])')",
        Duration::from_secs(15),
    )
    .await;
    wait_for(
        &mut browser,
        &alice,
        "!!document.querySelector('.call figure.speaking[data-key=\"local\"]')",
        Duration::from_secs(15),
    )
    .await;
    let speaker = browser
        .eval(
            &bob,
            "window.cascadeState.call.session.speakers.dominant.user_id === \
             window.cascadeState.call.session.tracks[0].user_id",
        )
        .await;
    assert_eq!(speaker, true, "Bob sees Alice as the speaker");

    // Alice shares her screen (the headless browser's fake one): Bob gets a
    // large screen tile beside her camera, decoding.
    browser
        .eval_as_user(&alice, &click("button[aria-label=\"Share screen\"]"))
        .await;
    let screen = wait_for(
        &mut browser,
        &bob,
        "(() => { const v = document.querySelector('.call figure.screen video'); \
         const t = window.cascadeState.call.session.tracks.find(t => t.source === 'screen'); \
         return !!(v && t && v.videoWidth > 0) && { width: v.videoWidth, mid: t.mid }; })()",
        Duration::from_secs(20),
    )
    .await;
    eprintln!("bob sees alice's screen: {screen}");
    browser
        .screenshot(&bob, &artifacts().join("call-screen-share.png"))
        .await;

    // Bob raises his hand and reacts; Alice sees both, across regions.
    browser
        .eval(&bob, &click("button[aria-label=\"Raise hand\"]"))
        .await;
    wait_for(
        &mut browser,
        &alice,
        "[...document.querySelectorAll('.call figcaption')].some(c => c.textContent.startsWith('✋'))",
        Duration::from_secs(10),
    )
    .await;
    browser
        .eval(&bob, &click("button[aria-label=\"Send a thumbs up\"]"))
        .await;
    wait_for(
        &mut browser,
        &alice,
        "!!document.querySelector('.call figure:not([data-key=\"local\"]) .reaction-burst')",
        Duration::from_secs(10),
    )
    .await;

    // Alice stops sharing: the screen tile goes, the camera stays.
    browser
        .eval(
            &alice,
            &click("button[aria-label=\"Stop sharing the screen\"]"),
        )
        .await;
    wait_for(
        &mut browser,
        &bob,
        "!document.querySelector('.call figure.screen') && \
         !window.cascadeState.call.session.tracks.some(t => t.source === 'screen') && \
         document.querySelectorAll('.call figure').length === 2",
        Duration::from_secs(10),
    )
    .await;

    // Alice switches her microphone during the call (the in-call picker):
    // the same sender carries the new device, and Bob keeps hearing her.
    let switched = wait_for(
        &mut browser,
        &alice,
        "(() => { const s = document.querySelector('.call .in-call-devices select[aria-label=Microphone]'); \
         if (!s) return false; const now = window.cascadeState.call.session.deviceOf('audio'); \
         const other = [...s.options].find(o => o.value && o.value !== now); if (!other) return false; \
         s.value = other.value; s.dispatchEvent(new Event('change')); return { from: now, to: other.value }; })()",
        Duration::from_secs(10),
    )
    .await;
    let to = switched["to"].as_str().unwrap().to_owned();
    wait_for(
        &mut browser,
        &alice,
        &format!(
            "(() => {{ const s = window.cascadeState.call.session; return s.deviceOf('audio') === {to:?} && \
             s.pc.getSenders().some(x => x.track && x.track.kind === 'audio' && x.track.getSettings().deviceId === {to:?}); }})()"
        ),
        Duration::from_secs(10),
    )
    .await;
    let before_switch = call_stats(&mut browser, &bob).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_switch = call_stats(&mut browser, &bob).await;
    assert!(
        after_switch["audioBytes"].as_f64() > before_switch["audioBytes"].as_f64(),
        "audio keeps arriving after the switch: {before_switch} → {after_switch}"
    );

    // The relays carried it across regions.
    let relay_metrics = dev.ready["relay_metrics"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut crossed = 0.0;
    for entry in relay_metrics.split_whitespace() {
        let (id, metrics_url) = entry.split_once('=').unwrap();
        let text = reqwest::get(metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let peer = if id == "relay-eu" {
            "relay-us"
        } else {
            "relay-eu"
        };
        crossed += testkit::cluster::metric(
            &text,
            &format!("cascade_relay_datagrams_sent_total{{peer=\"{peer}\"}}"),
        );
    }
    assert!(
        crossed > 100.0,
        "media crossed the relay link ({crossed} datagrams)"
    );

    // Alice hangs up: the call ends for both and is in the history.
    browser
        .eval(&alice, &click("button[aria-label=\"Hang up\"]"))
        .await;
    wait_for(
        &mut browser,
        &bob,
        "!document.querySelector('.call')",
        Duration::from_secs(10),
    )
    .await;
    let history = wait_for(
        &mut browser,
        &alice,
        "(async () => { const h = await window.cascadeClient.api('GET', '/v1/calls'); \
         return h.items.length && h.items[0].call.state === 'ended' && h.items[0]; })()",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(history["call"]["kind"], "video", "{history}");
    // And both see it in the client's recent calls.
    for page in [&alice, &bob] {
        wait_for(
            &mut browser,
            page,
            "(() => { const li = document.querySelector('.history li'); return li && li.textContent.startsWith('video call'); })()",
            Duration::from_secs(5),
        )
        .await;
    }
    // All of it ran under the page's Content-Security-Policy (no inline
    // code, Trusted Types, connect-src limited to the cluster) without a
    // single violation on either side.
    browser.eval(&alice, "true").await;
    for (name, page) in [("alice", &alice), ("bob", &bob)] {
        let complaints = browser.security_complaints(page);
        assert!(complaints.is_empty(), "{name}'s console: {complaints:?}");
    }
    // The policy is really enforced and the watch really sees it: an
    // injected inline script is refused and reported.
    let ran = browser
        .eval(
            &alice,
            "(() => { window.injected = false; const s = document.createElement('script'); \
             try { s.textContent = 'window.injected = true'; document.body.append(s); } catch (_) {} \
             return window.injected; })()",
        )
        .await;
    assert_eq!(ran, false, "inline script ran");
    let deadline = Instant::now() + Duration::from_secs(5);
    while browser.security_complaints(&alice).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        browser.eval(&alice, "true").await;
    }
    assert!(
        !browser.security_complaints(&alice).is_empty(),
        "the injected script was refused without a report"
    );
    drop(browser);
    crate::dev::interrupt(dev);
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// The page's policy, as a browser receives it: strict script and style
/// sources, no framing, and `connect-src` naming exactly this origin, the
/// configured sources and the edges registered now (an edge that joins
/// later is in the next page served).
#[tokio::test]
async fn the_page_allows_only_the_cluster_and_is_never_framed() {
    let app = testkit::app::TestApp::spawn_with(testkit::app::Backend::Sqlite, |c| {
        c.calls.edge_origins = vec!["wss://*.edges.example".into()];
        c.api_origins = vec!["https://chat.example".into()];
    })
    .await
    .unwrap();
    let page = |app: &testkit::app::TestApp| {
        let url = app.url("/");
        async move { reqwest::get(url).await.unwrap() }
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let before = page(&app).await;
    let csp = header(&before, "content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "style-src 'self';",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
        "require-trusted-types-for 'script'",
        "connect-src 'self' wss://chat.example https://chat.example wss://*.edges.example;",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(header(&before, "x-frame-options"), "DENY");
    assert_eq!(header(&before, "referrer-policy"), "no-referrer");
    assert_eq!(header(&before, "cross-origin-opener-policy"), "same-origin");
    assert!(header(&before, "permissions-policy").contains("camera=(self)"));
    assert_eq!(header(&before, "x-content-type-options"), "nosniff");
    // An edge registers at ws://127.0.0.1:<port>: the next page may reach it.
    let edge = crate::edge::start_edge(&app, "edge-csp").await;
    let after = page(&app).await;
    let csp = header(&after, "content-security-policy");
    let origin = format!("ws://{}", edge.addrs.http);
    assert!(
        csp.contains(&format!(" {origin};")) || csp.contains(&format!(" {origin} ")),
        "{origin} in {csp}"
    );
    // Every answer, not just the page, is unframeable and unsniffed.
    let api = reqwest::get(app.url("/v1/me")).await.unwrap();
    assert_eq!(api.status(), 401);
    assert_eq!(header(&api, "x-frame-options"), "DENY");
    assert_eq!(header(&api, "x-content-type-options"), "nosniff");
}

/// The first screen, in both modes, as a person sees it: only the fields
/// of that mode are visible (the sign-in form once showed sign-up's
/// E-mail field because a display rule beat `hidden`). Screenshots of
/// both go to target/artifacts/web.
#[tokio::test]
async fn the_first_screen_shows_the_fields_of_its_mode_only() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let app = testkit::app::TestApp::spawn(testkit::app::Backend::Sqlite)
        .await
        .unwrap();
    let page = browser.open_isolated(&app.url("/")).await;
    browser.set_viewport(&page, 1024, 700).await;
    wait_for(
        &mut browser,
        &page,
        "!!document.querySelector('.auth form')",
        Duration::from_secs(10),
    )
    .await;
    // What is on screen: labels with a box that is not hidden, and the
    // submit button's text.
    let seen = "(() => ({ \
        labels: [...document.querySelectorAll('.auth label')] \
          .filter(l => l.checkVisibility() && l.getBoundingClientRect().height > 0) \
          .map(l => l.firstChild.textContent.trim()), \
        submit: document.querySelector('.auth [type=submit]').textContent, \
        email_required: document.querySelector('input[name=email]').required }))()";
    let login = browser.eval(&page, seen).await;
    assert_eq!(
        login,
        serde_json::json!({"labels": ["Username or e-mail", "Password"], "submit": "Log in", "email_required": false}),
        "sign-in shows no E-mail field"
    );
    std::fs::create_dir_all(artifacts()).unwrap();
    browser
        .screenshot(&page, &artifacts().join("first-screen-sign-in.png"))
        .await;
    browser.eval(&page, &click(".auth .switch")).await;
    wait_for(
        &mut browser,
        &page,
        "document.querySelector('.auth .terms-text').textContent.includes('(version ')",
        Duration::from_secs(10),
    )
    .await;
    let register = browser.eval(&page, seen).await;
    let terms = format!(
        "I accept the terms of service (version {})",
        testkit::client::terms_version()
    );
    assert_eq!(
        register["labels"],
        serde_json::json!(["Username or e-mail", "E-mail", "Password", terms]),
        "{register}"
    );
    assert_eq!(register["submit"], "Sign up");
    assert_eq!(register["email_required"], true);
    // Signing up without ticking it is refused by the form.
    assert_eq!(
        browser
            .eval(
                &page,
                "document.querySelector('.auth input[name=accept_terms]').required"
            )
            .await,
        true
    );
    browser
        .screenshot(&page, &artifacts().join("first-screen-sign-up.png"))
        .await;
    // And back.
    browser.eval(&page, &click(".auth .switch")).await;
    assert_eq!(browser.eval(&page, seen).await, login);
    let complaints = browser.security_complaints(&page);
    assert!(complaints.is_empty(), "{complaints:?}");
}

/// A browser (None where Chromium cannot run), a control plane on SQLite,
/// and two isolated pages signed up as alice and bob.
async fn alice_and_bob() -> Option<(Browser, testkit::app::TestApp, Page, Page)> {
    let mut browser = Browser::launch().await?;
    let app = testkit::app::TestApp::spawn(testkit::app::Backend::Sqlite)
        .await
        .unwrap();
    let alice = browser.open_isolated(&app.url("/")).await;
    let bob = browser.open_isolated(&app.url("/")).await;
    sign_up(&mut browser, &alice, "alice").await;
    sign_up(&mut browser, &bob, "bob").await;
    Some((browser, app, alice, bob))
}

/// `a` opens a direct conversation with `b`; both pages learn of it live
/// (`conversation.updated`) and open it. Returns `b`'s id (JSON).
async fn open_direct(browser: &mut Browser, a: &Page, b: &Page) -> Value {
    let b_id = browser.eval(b, "cascadeClient.me.id").await;
    browser
        .eval(
            a,
            &format!(
                "cascadeClient.api('POST', '/v1/conversations', {{kind: 'direct', user_id: {b_id}}}).then(c => c.id)"
            ),
        )
        .await;
    for page in [a, b] {
        open_first_conversation(browser, page).await;
    }
    b_id
}

/// Picks a picture in the file input at `selector` the way a user does
/// (then `change`): a PNG of one `color`, drawn on a canvas.
async fn choose_picture(
    browser: &mut Browser,
    page: &Page,
    selector: &str,
    color: &str,
    (width, height): (u32, u32),
    name: &str,
) {
    browser
        .eval(
            page,
            &format!(
                "(async () => {{ const c = document.createElement('canvas'); c.width = {width}; c.height = {height}; \
                 const g = c.getContext('2d'); g.fillStyle = {color:?}; g.fillRect(0, 0, {width}, {height}); \
                 const blob = await new Promise(r => c.toBlob(r, 'image/png')); \
                 const dt = new DataTransfer(); dt.items.add(new File([blob], {name:?}, {{type: 'image/png'}})); \
                 const input = document.querySelector({selector:?}); input.files = dt.files; \
                 input.dispatchEvent(new Event('change')); return true; }})()"
            ),
        )
        .await;
}

/// Issue 18: attach an image on one page and see its thumbnail on the
/// other; record a voice message with the fake microphone and play it.
#[tokio::test]
async fn an_image_and_a_voice_message_reach_the_other_page() {
    let Some((mut browser, _app, alice, bob)) = alice_and_bob().await else {
        return;
    };
    open_direct(&mut browser, &alice, &bob).await;

    // Alice attaches a picture through the file input (a red 200x100 PNG
    // drawn on a canvas).
    choose_picture(
        &mut browser,
        &alice,
        ".attach-input",
        "#e00000",
        (200, 100),
        "red.png",
    )
    .await;
    // Bob's page shows the thumbnail, loaded, and red.
    wait_for(
        &mut browser,
        &bob,
        "(() => { const i = document.querySelector('.msg[data-kind=image] img'); return !!i && i.complete && i.naturalWidth > 0; })()",
        Duration::from_secs(10),
    )
    .await;
    let pixel = browser
        .eval(
            &bob,
            "(() => { const i = document.querySelector('.msg[data-kind=image] img'); const c = document.createElement('canvas'); \
             c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d'); g.drawImage(i, 0, 0); \
             return [...g.getImageData(5, 5, 1, 1).data]; })()",
        )
        .await;
    let rgb: Vec<i64> = pixel
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(
        rgb[0] > 200 && rgb[1] < 40 && rgb[2] < 40,
        "the thumbnail is the red picture: {rgb:?}"
    );
    std::fs::create_dir_all(artifacts()).unwrap();
    browser
        .screenshot(&bob, &artifacts().join("image-message.png"))
        .await;

    // Alice records two seconds from the fake microphone and sends it.
    browser.eval(&alice, &click(".composer .record")).await;
    wait_for(
        &mut browser,
        &alice,
        "!!document.querySelector('.composer .record.recording')",
        Duration::from_secs(5),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    browser.eval(&alice, &click(".composer .record")).await;
    // Bob's page has the voice message with its duration, and it plays.
    wait_for(
        &mut browser,
        &bob,
        "(() => { const a = document.querySelector('.msg[data-kind=voice] audio'); return !!a && !!a.src; })()",
        Duration::from_secs(10),
    )
    .await;
    let duration_ms = browser
        .eval(
            &bob,
            "cascadeState.messages.get(cascadeState.active).list.find(m => m.kind === 'voice').attachment.duration_ms",
        )
        .await;
    let duration_ms = duration_ms.as_i64().unwrap();
    eprintln!("voice message: {duration_ms} ms as the server read it");
    assert!(
        (1500..=4000).contains(&duration_ms),
        "recorded ~2 s: {duration_ms} ms"
    );
    // As a click on the player would (a user gesture: autoplay rules).
    let played = browser
        .eval_as_user(
            &bob,
            "(async () => { const a = document.querySelector('.msg[data-kind=voice] audio'); \
             try { await a.play(); } catch (e) { return 'play: ' + e; } \
             return {ready: a.readyState, error: a.error && a.error.code}; })()",
        )
        .await;
    eprintln!("voice message playback: {played}");
    wait_for(
        &mut browser,
        &bob,
        "document.querySelector('.msg[data-kind=voice] audio').currentTime > 0.5",
        Duration::from_secs(10),
    )
    .await;
    let complaints = browser.security_complaints(&bob);
    assert!(complaints.is_empty(), "{complaints:?}");
}

/// Issue 18: a call Bob did not answer shows on his bell as one unread
/// notification, live, and stays there after a reload until he reads it.
#[tokio::test]
async fn the_bell_counts_a_missed_call() {
    let Some((mut browser, _app, alice, bob)) = alice_and_bob().await else {
        return;
    };
    let bob_id = browser.eval(&bob, "cascadeClient.me.id").await;
    let bell = "document.querySelector('.bell').getAttribute('aria-label')";
    assert_eq!(browser.eval(&bob, bell).await, "Notifications");
    // Alice rings Bob and gives up before he answers.
    browser
        .eval(
            &alice,
            &format!(
                "(async () => {{ const c = await cascadeClient.api('POST', '/v1/conversations', {{kind: 'direct', user_id: {bob_id}}}); \
                 const call = await cascadeClient.api('POST', '/v1/calls', {{conversation_id: c.id, kind: 'audio'}}); \
                 await cascadeClient.api('POST', `/v1/calls/${{call.id}}/cancel`); return call.id; }})()"
            ),
        )
        .await;
    wait_for(
        &mut browser,
        &bob,
        "document.querySelector('.bell').getAttribute('aria-label') === 'Notifications, 1 unread'",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        browser
            .eval(&bob, "document.querySelector('.bell-count').textContent")
            .await,
        "1"
    );
    // Stored, not just live: a reload shows the same count.
    browser.reload(&bob).await;
    wait_for(
        &mut browser,
        &bob,
        "!!document.querySelector('.bell') && document.querySelector('.bell').getAttribute('aria-label') === 'Notifications, 1 unread'",
        Duration::from_secs(10),
    )
    .await;
    // Opening the bell lists it; reading it clears the count.
    browser
        .eval(&bob, "document.querySelector('.bell').click(); true")
        .await;
    wait_for(
        &mut browser,
        &bob,
        "(() => { const li = document.querySelector('.notifications li[data-kind=missed_call]'); return !!li && li.textContent === 'Missed call from alice'; })()",
        Duration::from_secs(15),
    )
    .await;
    browser
        .eval(
            &bob,
            "document.querySelector('.notifications li[data-kind=missed_call]').click(); true",
        )
        .await;
    wait_for(
        &mut browser,
        &bob,
        "document.querySelector('.bell').getAttribute('aria-label') === 'Notifications' && !document.querySelector('.bell-count')",
        Duration::from_secs(15),
    )
    .await;
}

/// Issue 18 items 4, 6 and 7 in the browser: Bob edits his profile and
/// picture and Alice sees them; Alice finds his message by searching; Bob
/// downloads his data and deletes his account, and Alice's page shows his
/// message as deleted.
#[tokio::test]
async fn a_profile_search_export_and_account_deletion_in_the_browser() {
    let Some((mut browser, _app, alice, bob)) = alice_and_bob().await else {
        return;
    };
    // Bob: name, status and a blue picture, from the profile panel.
    browser.eval(&bob, &click(".profile-toggle")).await;
    browser
        .eval(
            &bob,
            &type_into(".profile input[name=display_name]", "Bobby B"),
        )
        .await;
    browser
        .eval(
            &bob,
            &type_into(".profile input[name=status_text]", "at lunch"),
        )
        .await;
    choose_picture(
        &mut browser,
        &bob,
        ".profile input[name=avatar]",
        "#0000e0",
        (120, 120),
        "me.png",
    )
    .await;
    browser.eval(&bob, &click(".profile [type=submit]")).await;
    wait_for(
        &mut browser,
        &bob,
        "document.querySelector('.profile-note').textContent === 'Profile saved' && \
         !!document.querySelector('.me .avatar img') && document.querySelector('.me strong').textContent === 'Bobby B'",
        Duration::from_secs(10),
    )
    .await;

    // A conversation; Bob writes; Alice sees his name, status and picture.
    let bob_id = open_direct(&mut browser, &alice, &bob).await;
    browser
        .eval(
            &bob,
            &type_into(".composer input[name=body]", "lunch plans for friday"),
        )
        .await;
    browser.eval(&bob, &click(".composer [type=submit]")).await;
    wait_for(
        &mut browser,
        &alice,
        "(() => { const m = [...document.querySelectorAll('.msg')].find(m => m.textContent.includes('lunch plans')); \
         const i = m && m.querySelector('.meta .avatar img'); \
         return !!i && i.complete && i.naturalWidth > 0 && m.textContent.includes('Bobby B'); })()",
        Duration::from_secs(10),
    )
    .await;
    let pixel = browser
        .eval(
            &alice,
            "(() => { const i = document.querySelector('.msg .meta .avatar img'); const c = document.createElement('canvas'); \
             c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d'); g.drawImage(i, 0, 0); \
             return [...g.getImageData(3, 3, 1, 1).data]; })()",
        )
        .await;
    assert!(
        pixel[2].as_i64().unwrap() > 200 && pixel[0].as_i64().unwrap() < 40,
        "Alice sees Bob's blue picture: {pixel}"
    );
    assert_eq!(
        browser
            .eval(
                &alice,
                &format!("cascadeState.users.get({bob_id}).status_text")
            )
            .await,
        "at lunch"
    );

    // Alice searches her messages and gets the hit, highlighted.
    browser
        .eval(
            &alice,
            &type_into(".message-search input[name=q]", "friday"),
        )
        .await;
    browser
        .eval(&alice, &click(".message-search [type=submit]"))
        .await;
    wait_for(
        &mut browser,
        &alice,
        "(() => { const li = document.querySelector('.search-results li[data-id]'); \
         return !!li && li.querySelector('mark').textContent.toLowerCase() === 'friday' && li.textContent.includes('lunch plans'); })()",
        Duration::from_secs(10),
    )
    .await;
    std::fs::create_dir_all(artifacts()).unwrap();
    browser
        .screenshot(&alice, &artifacts().join("profile-and-search.png"))
        .await;

    // Bob downloads his data: a ZIP.
    browser
        .eval(&bob, &type_into(".own-data input[name=password]", PASSWORD))
        .await;
    browser.eval(&bob, &click(".own-data .export")).await;
    let magic = wait_for(
        &mut browser,
        &bob,
        "(async () => { const e = window.cascadeState.lastExport; if (!e) return false; \
         const head = new Uint8Array(await e.blob.slice(0, 2).arrayBuffer()); return String.fromCharCode(...head); })()",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(magic, "PK", "the export is a ZIP archive");

    // Bob deletes his account (asked twice), and is signed out.
    browser
        .eval(&bob, &type_into(".own-data input[name=password]", PASSWORD))
        .await;
    browser
        .eval(&bob, &click(".own-data .delete-account"))
        .await;
    wait_for(
        &mut browser,
        &bob,
        "!!document.querySelector('.confirm-delete .really-delete')",
        Duration::from_secs(15),
    )
    .await;
    browser
        .eval(&bob, &click(".confirm-delete .really-delete"))
        .await;
    wait_for(
        &mut browser,
        &bob,
        "!!document.querySelector('.auth form') && document.querySelector('.auth .error').textContent === 'Your account was deleted.'",
        Duration::from_secs(10),
    )
    .await;
    // On Alice's page his message turns into a tombstone, live.
    wait_for(
        &mut browser,
        &alice,
        "(() => { const m = document.querySelector('.msg.deleted'); return !!m && !document.querySelector('.messages').textContent.includes('lunch plans'); })()",
        Duration::from_secs(10),
    )
    .await;
}
