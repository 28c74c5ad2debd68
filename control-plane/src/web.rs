//! The browser client (`web/` at the repository root), embedded in the
//! binary so `cascade dev` and every control plane serve it with no build
//! step and no Node.js: `/` is the page, `/app/*` its modules and styles.
//!
//! With `api_origins` configured the page names them (a `cascade-api`
//! meta tag `cascade.js` reads), and [`cors`] lets a page from one of them
//! call the others: the web client fails over between replicas.
//!
//! The page runs under a strict Content-Security-Policy ([`PagePolicy`]):
//! scripts and styles from this origin only, no inline code, no `eval`,
//! Trusted Types required for every DOM sink, no framing, and network
//! access only to this origin, the `api_origins`, the regions' probe URLs
//! and the edges' signaling. [`security_headers`] adds what every answer
//! carries (no sniffing, no referrer, no framing).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("../../web/index.html");
const APP: &str = include_str!("../../web/app.js");
const CLIENT: &str = include_str!("../../web/cascade.js");
const STYLE: &str = include_str!("../../web/style.css");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small files that change with the binary: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
            // Only pages of this origin load them (`no-cors` embedding from
            // elsewhere is refused).
            (CROSS_ORIGIN_RESOURCE_POLICY, "same-origin"),
        ],
        body,
    )
}

const CROSS_ORIGIN_RESOURCE_POLICY: header::HeaderName =
    header::HeaderName::from_static("cross-origin-resource-policy");
const CROSS_ORIGIN_OPENER_POLICY: header::HeaderName =
    header::HeaderName::from_static("cross-origin-opener-policy");
const PERMISSIONS_POLICY: header::HeaderName =
    header::HeaderName::from_static("permissions-policy");

/// The page's powerful features: camera, microphone and screen sharing for
/// itself (never for a frame), nothing else a chat needs.
const PAGE_PERMISSIONS: &str = "camera=(self), microphone=(self), display-capture=(self), \
     fullscreen=(self), autoplay=(self), geolocation=(), payment=(), usb=(), serial=(), hid=(), \
     midi=(), accelerometer=(), gyroscope=(), magnetometer=()";

/// What the page may load and reach. Everything but `connect-src` is
/// fixed; `connect-src` is the configured sources plus the signaling
/// origins of the edges registered at the time the page is served.
#[derive(Clone)]
pub struct PagePolicy {
    /// `connect-src` sources known from configuration.
    configured: std::sync::Arc<Vec<String>>,
    calls: std::sync::Arc<crate::calls::Calls>,
}

/// How long serving the page waits for the edge registry; past it the page
/// gets the configured sources only.
const REGISTRY_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

impl PagePolicy {
    /// The policy for a replica with `config` (its `api_origins`, regions'
    /// probe URLs and `calls.edge_origins`).
    pub fn new(
        config: &crate::config::ControlPlaneConfig,
        calls: std::sync::Arc<crate::calls::Calls>,
    ) -> Self {
        let mut configured = Vec::new();
        for origin in config.api_origins.iter().filter_map(|o| parse_origin(o)) {
            // The gateway of another replica: its WebSocket too.
            configured.push(websocket_twin(&origin));
            configured.push(origin);
        }
        for region in &config.calls.regions {
            if let Some(origin) = region.probe_url.as_deref().and_then(origin_of) {
                configured.push(origin);
            }
        }
        configured.extend(config.calls.edge_origins.iter().cloned());
        configured.dedup();
        PagePolicy {
            configured: std::sync::Arc::new(configured),
            calls,
        }
    }

    /// The `Content-Security-Policy` value for a page served now.
    async fn header(&self) -> String {
        let mut connect: Vec<String> = vec!["'self'".into()];
        connect.extend(self.configured.iter().cloned());
        if let Ok(Ok(edges)) = tokio::time::timeout(REGISTRY_WAIT, self.calls.live_edges()).await {
            for edge in edges {
                if let Some(origin) = edge
                    .heartbeat
                    .endpoints
                    .signaling_url
                    .as_deref()
                    .and_then(origin_of)
                    && !connect.contains(&origin)
                {
                    connect.push(origin);
                }
            }
        }
        content_security_policy(&connect)
    }
}

/// The page's policy with `connect` as its `connect-src`. `'self'` covers
/// the page's own gateway WebSocket (CSP level 3 matches `ws:`/`wss:` of
/// the same host).
pub fn content_security_policy(connect: &[String]) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
         media-src 'self' blob:; font-src 'self'; manifest-src 'self'; connect-src {}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'; \
         require-trusted-types-for 'script'; trusted-types 'none'",
        connect.join(" ")
    )
}

/// The WebSocket origin beside an http(s) one (`https://a` → `wss://a`).
fn websocket_twin(origin: &str) -> String {
    match origin.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", origin.trim_start_matches("http://")),
    }
}

/// The origin (`wss://host:port`) of a ws, wss, http or https URL.
pub fn origin_of(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    let known = matches!(url.scheme(), "http" | "https" | "ws" | "wss") && url.host().is_some();
    known.then(|| url.origin().ascii_serialization())
}

/// Whether `source` is a CSP host source we accept in configuration:
/// `scheme://host[:port]`, the scheme one of ws, wss, http, https, the host
/// optionally `*.` and a domain, the port digits or `*`. Nothing that could
/// end the directive (spaces, `;`, `,`, quotes).
pub fn valid_source(source: &str) -> bool {
    let Some((scheme, rest)) = source.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "ws" | "wss" | "http" | "https") {
        return false;
    }
    let (host, port) = if rest.starts_with('[') {
        let Some(end) = rest.find(']') else {
            return false;
        };
        let (host, after) = rest.split_at(end + 1);
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return false,
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let port_ok = port.is_none_or(|p| {
        p == "*" || (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ip) => ip.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            let name = host.strip_prefix("*.").unwrap_or(host);
            !name.is_empty() && name.split('.').all(label_ok)
        }
    };
    port_ok && host_ok
}

/// Headers every answer carries: no MIME sniffing, no referrer sent on
/// (a page's URL never leaks to a link's site), never framed.
pub async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::HeaderValue;
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    response
}

/// `origin` normalised (`scheme://host[:port]`, no trailing slash) if it
/// is an http(s) origin and nothing more.
pub fn parse_origin(origin: &str) -> Option<String> {
    let url = url::Url::parse(origin).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    plain.then(|| url.origin().ascii_serialization())
}

/// The page, naming `api_origins` when there are any.
fn index(api_origins: &[String]) -> String {
    if api_origins.is_empty() {
        return INDEX.to_owned();
    }
    // Validated origins: no quotes or angle brackets can occur.
    let meta = format!(
        "<meta name=\"cascade-api\" content=\"{}\">\n  <title>",
        api_origins.join(",")
    );
    INDEX.replacen("<title>", &meta, 1)
}

/// The client's routes.
pub fn routes<S: Clone + Send + Sync + 'static>(
    api_origins: &[String],
    policy: PagePolicy,
) -> Router<S> {
    let page: std::sync::Arc<str> = index(api_origins).into();
    Router::new()
        .route(
            "/",
            get(move || {
                let (page, policy) = (page.clone(), policy.clone());
                async move {
                    let csp = policy.header().await;
                    (
                        [
                            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
                            (header::CACHE_CONTROL, "no-cache".to_owned()),
                            (header::CONTENT_SECURITY_POLICY, csp),
                            // A window it opens gets no handle on it.
                            (CROSS_ORIGIN_OPENER_POLICY, "same-origin".to_owned()),
                            (CROSS_ORIGIN_RESOURCE_POLICY, "same-origin".to_owned()),
                            (PERMISSIONS_POLICY, PAGE_PERMISSIONS.to_owned()),
                        ],
                        page.to_string(),
                    )
                }
            }),
        )
        .route(
            "/app/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/app/cascade.js",
            get(|| async { asset("text/javascript; charset=utf-8", CLIENT) }),
        )
        .route(
            "/app/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

/// CORS for the configured `api_origins`: a request whose `Origin` is one
/// of them gets it back in `Access-Control-Allow-Origin` (credentials are
/// bearer tokens, never cookies, so none are allowed), and a preflight is
/// answered here. Any other origin gets no CORS headers, as before.
pub async fn cors(
    axum::extract::State(allowed): axum::extract::State<std::sync::Arc<Vec<String>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{HeaderValue, Method, StatusCode};
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| allowed.iter().any(|a| a == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let Some(origin) = origin else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_origins_only() {
        assert_eq!(
            parse_origin("https://a.example").as_deref(),
            Some("https://a.example")
        );
        assert_eq!(
            parse_origin("https://a.example/").as_deref(),
            Some("https://a.example")
        );
        assert_eq!(
            parse_origin("http://127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        for bad in [
            "ftp://a",
            "https://a.example/app",
            "https://u:p@a.example",
            "a.example",
            "https://a?x=\"><script>",
        ] {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn configured_sources_cannot_break_out_of_the_policy() {
        for good in [
            "wss://*.example.com",
            "ws://127.0.0.1:*",
            "wss://edge-1.eu.example.com:8443",
            "https://a.example",
            "wss://[::1]:9000",
            "ws://[::1]",
        ] {
            assert!(valid_source(good), "{good}");
        }
        for bad in [
            "wss:",
            "*",
            "wss://*",
            "wss://a.example; script-src *",
            "wss://a.example 'unsafe-eval'",
            "wss://a.example,b",
            "javascript://a",
            "wss://a.example/path",
            "wss://a.example:99999x",
            "wss://",
            "wss://[::1",
            "wss://[::1]x",
        ] {
            assert!(!valid_source(bad), "{bad}");
        }
        assert_eq!(
            origin_of("wss://edge-1.example:8443/v1/rtc").as_deref(),
            Some("wss://edge-1.example:8443")
        );
        assert_eq!(origin_of("stun:a.example"), None);
        assert_eq!(websocket_twin("https://a.example"), "wss://a.example");
        assert_eq!(
            websocket_twin("http://127.0.0.1:8080"),
            "ws://127.0.0.1:8080"
        );
        let csp = content_security_policy(&["'self'".into(), "wss://*.example.com".into()]);
        assert!(
            csp.contains("connect-src 'self' wss://*.example.com;"),
            "{csp}"
        );
        assert!(
            csp.contains("script-src 'self';") && !csp.contains("unsafe"),
            "{csp}"
        );
    }

    #[test]
    fn the_page_names_the_configured_origins() {
        assert!(!index(&[]).contains("cascade-api"));
        let page = index(&["https://a.example".into(), "https://b.example".into()]);
        assert!(page.contains(
            r#"<meta name="cascade-api" content="https://a.example,https://b.example">"#
        ));
    }
}
