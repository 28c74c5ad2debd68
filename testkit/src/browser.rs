//! Headless Chromium driven over the Chrome DevTools Protocol, for tests
//! that need a real browser's WebRTC stack. `$CHROMIUM`, else `chromium` on
//! `PATH` (scripts/test installs Debian's package); fake camera and
//! microphone; a fresh profile per launch; killed on drop.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The browser binary: `$CHROMIUM`, else `chromium` on `PATH`. Under CI a
/// missing browser panics; elsewhere the test is skipped and says so.
pub fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("chromium"))
                    .find(|p| p.is_file())
            })
        });
    crate::servers::required_or_skip(found, "chromium (set CHROMIUM, or run scripts/test)")
}

/// A running headless browser.
pub struct Browser {
    child: tokio::process::Child,
    socket: Socket,
    next_id: u64,
    profile: PathBuf,
    /// Security complaints of each page (by DevTools session): CSP and
    /// Trusted Types violations and Permissions-Policy errors, as the
    /// console shows them.
    complaints: Vec<(String, String)>,
}

/// Installed in every document before its own scripts: a violation of the
/// page's policy reaches the console (and so [`Browser::security_complaints`])
/// even where Chromium would only fire the event.
const REPORT_VIOLATIONS: &str = "document.addEventListener('securitypolicyviolation', (e) => \
    console.error(`Content Security Policy violation: ${e.effectiveDirective} blocked ${e.blockedURI || 'inline'} (${e.sourceFile}:${e.lineNumber})`));";

/// Whether a console line is a complaint about the page's security policy.
fn is_security_complaint(text: &str) -> bool {
    [
        "Content Security Policy",
        "Content-Security-Policy",
        "Trusted Type",
        "TrustedScript",
        "TrustedHTML",
        "Permissions-Policy",
        "Permissions policy",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// A tab.
#[derive(Debug, Clone)]
pub struct Page {
    session: String,
}

impl Browser {
    /// Launches the browser (`None` when there is none, outside CI).
    pub async fn launch() -> Option<Browser> {
        let binary = chromium()?;
        let profile = std::env::temp_dir().join(format!(
            "cascade-chromium-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let mut child = tokio::process::Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                "--allow-loopback-in-peer-connection",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    return Some(url.trim().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("chromium prints its DevTools address");
        // Keep draining stderr so the browser never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("DevTools connection");
        Some(Browser {
            child,
            socket,
            next_id: 1,
            profile,
            complaints: Vec::new(),
        })
    }

    /// Sends a DevTools command (on a page's session if given) and returns
    /// its result; events in between are skipped.
    async fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        match self.try_command(session, method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method}: {error}"),
        }
    }

    /// [`Browser::command`], with DevTools' error as an `Err` (a page in
    /// the middle of navigating answers "Inspected target navigated or
    /// closed").
    async fn try_command(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("DevTools send");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools open")
                .expect("DevTools frame");
            if let Message::Text(text) = frame {
                let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if value["id"] == id {
                    if !value["error"].is_null() {
                        return Err(value["error"].clone());
                    }
                    return Ok(value["result"].clone());
                }
                self.note_event(&value);
            }
        }
    }

    /// Keeps a page's console complaints about its security policy.
    fn note_event(&mut self, event: &Value) {
        let text = match event["method"].as_str() {
            // Chromium files policy violations under `security`.
            Some("Log.entryAdded") => {
                let entry = &event["params"]["entry"];
                let text = entry["text"].as_str().unwrap_or_default();
                Some(
                    if matches!(entry["source"].as_str(), Some("security" | "violation")) {
                        format!("Content Security Policy ({}): {text}", entry["source"])
                    } else {
                        text.to_owned()
                    },
                )
            }
            Some("Runtime.consoleAPICalled") => Some(
                event["params"]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["value"].as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Some("Runtime.exceptionThrown") => {
                event["params"]["exceptionDetails"]["exception"]["description"]
                    .as_str()
                    .map(str::to_owned)
            }
            _ => None,
        };
        if let (Some(text), Some(session)) = (text, event["sessionId"].as_str())
            && is_security_complaint(&text)
        {
            self.complaints.push((session.to_owned(), text));
        }
    }

    /// What `page`'s console said against its security policy so far
    /// (events up to the last command sent on any page).
    pub fn security_complaints(&self, page: &Page) -> Vec<String> {
        self.complaints
            .iter()
            .filter(|(session, _)| *session == page.session)
            .map(|(_, text)| text.clone())
            .collect()
    }

    /// Opens `url` in a new tab.
    pub async fn open(&mut self, url: &str) -> Page {
        self.open_target(url, json!({})).await
    }

    /// A blank tab, watched from its first document on, then sent to `url`.
    async fn open_target(&mut self, url: &str, mut params: Value) -> Page {
        params["url"] = "about:blank".into();
        let target = self.command(None, "Target.createTarget", params).await;
        let attached = self
            .command(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        let page = Page {
            session: attached["sessionId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        let session = Some(page.session.as_str());
        self.command(session, "Log.enable", json!({})).await;
        self.command(session, "Runtime.enable", json!({})).await;
        self.command(
            session,
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": REPORT_VIOLATIONS}),
        )
        .await;
        self.command(session, "Page.navigate", json!({"url": url}))
            .await;
        page
    }

    /// Opens `url` in a new tab of a fresh browser context (its own
    /// cookies and storage: another user).
    pub async fn open_isolated(&mut self, url: &str) -> Page {
        let context = self
            .command(None, "Target.createBrowserContext", json!({}))
            .await;
        self.open_target(
            url,
            json!({"browserContextId": context["browserContextId"]}),
        )
        .await
    }

    /// Types `text` into whatever has the focus, as a keyboard does.
    pub async fn type_text(&mut self, page: &Page, text: &str) {
        self.command(
            Some(&page.session),
            "Input.insertText",
            json!({"text": text}),
        )
        .await;
    }

    /// Presses and releases a key (`Enter`, `Tab`, ...) on `page`.
    pub async fn press(&mut self, page: &Page, key: &str) {
        let (code, vk) = match key {
            "Enter" => ("Enter", 13),
            "Tab" => ("Tab", 9),
            " " => ("Space", 32),
            _ => (key, 0),
        };
        for kind in ["keyDown", "keyUp"] {
            let mut params =
                json!({"type": kind, "key": key, "code": code, "windowsVirtualKeyCode": vk});
            if kind == "keyDown" && key == "Enter" {
                params["text"] = "\r".into();
            }
            self.command(Some(&page.session), "Input.dispatchKeyEvent", params)
                .await;
        }
    }

    /// Makes `page` `width` × `height` CSS pixels (a phone, say).
    pub async fn set_viewport(&mut self, page: &Page, width: u32, height: u32) {
        self.command(
            Some(&page.session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await;
    }

    /// Saves a PNG of `page` to `path` (directories created).
    pub async fn screenshot(&mut self, page: &Page, path: &std::path::Path) {
        use base64::Engine;
        let shot = self
            .command(
                Some(&page.session),
                "Page.captureScreenshot",
                json!({"format": "png"}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .expect("a base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("artifact directory");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Evaluates `expression` in `page`, awaiting a promise, and returns
    /// its value (JSON).
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        self.evaluate(page, expression, false).await
    }

    /// Like [`Browser::eval`], as if the user had just clicked (what
    /// `getDisplayMedia` and other gated APIs require).
    pub async fn eval_as_user(&mut self, page: &Page, expression: &str) -> Value {
        self.evaluate(page, expression, true).await
    }

    /// Like [`Browser::eval`], but `None` where the page could not answer
    /// (it is navigating: a reload, a redirect).
    pub async fn try_eval(&mut self, page: &Page, expression: &str) -> Option<Value> {
        self.try_command(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        )
        .await
        .ok()
        .map(|result| result["result"]["value"].clone())
    }

    /// Reloads `page` and waits until its new document has loaded.
    pub async fn reload(&mut self, page: &Page) {
        self.command(Some(&page.session), "Page.reload", json!({}))
            .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let state = self.try_eval(page, "document.readyState").await;
            if state.as_ref().and_then(Value::as_str) == Some("complete") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the page did not load again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn evaluate(&mut self, page: &Page, expression: &str, gesture: bool) -> Value {
        let result = self
            .command(
                Some(&page.session),
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true, "userGesture": gesture}),
            )
            .await;
        result["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Serves one HTML page at `/` on a free loopback port (a secure origin for
/// `getUserMedia`); returns its URL. The server lives as long as the
/// runtime.
pub async fn serve_page(html: impl Into<String>) -> String {
    let html: std::sync::Arc<str> = html.into().into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the page server");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/")
}
