//! The browser client (`web/` at the repository root), embedded in the
//! binary so `cascade dev` and every control plane serve it with no build
//! step and no Node.js: `/` is the page, `/app/*` its modules and styles.
//!
//! With `api_origins` configured the page names them (a `cascade-api`
//! meta tag `cascade.js` reads), and [`cors`] lets a page from one of them
//! call the others: the web client fails over between replicas.

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
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
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
pub fn routes<S: Clone + Send + Sync + 'static>(api_origins: &[String]) -> Router<S> {
    let page: std::sync::Arc<str> = index(api_origins).into();
    Router::new()
        .route(
            "/",
            get(move || {
                let page = page.clone();
                async move {
                    (
                        [
                            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                            (header::CACHE_CONTROL, "no-cache"),
                            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
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
    fn the_page_names_the_configured_origins() {
        assert!(!index(&[]).contains("cascade-api"));
        let page = index(&["https://a.example".into(), "https://b.example".into()]);
        assert!(page.contains(
            r#"<meta name="cascade-api" content="https://a.example,https://b.example">"#
        ));
    }
}
