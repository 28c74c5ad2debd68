//! The REST API under `/v1`: handlers, their wire types, and the OpenAPI
//! document generated from them.
//!
//! Every handler takes its input through the extractors here ([`ApiJson`],
//! [`ApiPath`], [`ApiQuery`], [`Caller`]), so malformed input always gets
//! the JSON error body of `shared/api.md` and never axum's plain text.

mod accounts;
mod admin;
pub mod attachments;
pub mod calls;
mod contacts;
mod conversations;
pub mod events;
mod internal;

pub use internal::node_credential;
mod messages;
pub mod notifications;
mod own_data;
mod presence;
pub mod wire;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{AccessClaims, Passwords, Tokens};
use crate::config::ControlPlaneConfig;
use crate::error::ApiError;
use crate::ratelimit::RateLimiter;
use crate::store::{AuditEntry, Store};

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The parts of [`AppState`].
pub struct Shared {
    /// The system of record.
    pub store: Arc<dyn Store>,
    /// Password hashing and policy.
    pub passwords: Passwords,
    /// Token issuing and checking.
    pub tokens: Tokens,
    /// Failed-login counting.
    pub limiter: Arc<dyn RateLimiter>,
    /// The replica's configuration.
    pub config: ControlPlaneConfig,
    /// Counts limiter failures (we fail open, so this must be visible).
    pub limiter_errors: prometheus::IntCounter,
    /// The WebSocket gateway.
    pub gateway: crate::gateway::Gateway,
    /// Calls: registry, placement, join tokens.
    pub calls: Arc<crate::calls::Calls>,
    /// The object store of attachments.
    pub blobs: crate::attachments::Blobs,
    /// Writes notifications and wakes the push worker.
    pub notifier: crate::notifications::Notifier,
    /// The Web Push key (None: push is off).
    pub vapid: Option<Arc<crate::notifications::webpush::Vapid>>,
}

impl AppState {
    /// Wraps the shared parts.
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Handlers take the state as a plain argument.
impl FromRequestParts<AppState> for AppState {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(state.clone())
    }
}

impl AppState {
    /// Appends to the audit log. A failure to audit is logged, not returned:
    /// the action itself already happened.
    pub async fn audit(
        &self,
        actor: Option<Uuid>,
        action: &str,
        target: Option<(&str, String)>,
        ip: Option<IpAddr>,
        details: serde_json::Value,
    ) {
        let entry = AuditEntry::new(actor, action, target, ip.map(|ip| ip.to_string()), &details);
        if let Err(error) = self.store.audit(&entry).await {
            tracing::error!(%error, action, "could not write the audit log");
        }
    }
}

/// `axum::Json` with errors in our JSON shape (400 malformed, 415 wrong
/// content type, 413 too large, 422 wrong fields).
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for ApiJson<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` with errors in our JSON shape (a malformed id is a
/// 404: it names nothing).
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` with errors in our JSON shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// The authenticated caller, from `Authorization: Bearer <access token>`.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The user.
    pub user_id: Uuid,
    /// Their login (refresh-token family).
    pub family_id: Uuid,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let AccessClaims { sub, sid, .. } = state
            .tokens
            .verify_access(token)
            .map_err(|_| ApiError::unauthorized("invalid or expired access token"))?;
        Ok(Caller {
            user_id: sub,
            family_id: sid,
        })
    }
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// The client's address: from the configured load-balancer header when set,
/// else the TCP peer.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(name) = &state.config.auth.client_address_header {
            // The rightmost entry is the one our load balancer appended; the
            // ones before it came from the client and prove nothing.
            let forwarded = parts
                .headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .next_back()
                .and_then(|last| last.trim().parse::<IpAddr>().ok());
            if forwarded.is_some() {
                return Ok(ClientAddr(forwarded));
            }
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Ok(ClientAddr(peer))
    }
}

/// Deserializes an optional body field that distinguishes "absent" (keep)
/// from `null` (clear): `Option<Option<T>>`.
pub fn double_option<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: DeserializeOwned,
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize;
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The time handlers use for "now".
pub fn now() -> OffsetDateTime {
    crate::store::now_utc()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cascade control plane",
        description = "Accounts, contacts, conversations and messages. Errors are \
                       `{\"error\": {\"code\": \"snake_case\", \"message\": \"...\"}}`.",
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Registration, login, tokens"),
        (name = "users", description = "Profiles and search"),
        (name = "contacts", description = "Contact requests and blocks"),
        (name = "conversations", description = "Direct and group conversations"),
        (name = "messages", description = "Messages, reactions, read pointers"),
        (name = "calls", description = "Calls, their participants, history and regions"),
        (name = "notifications", description = "The notification feed and Web Push subscriptions"),
        (name = "admin", description = "Site administration"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API routes and their OpenAPI document. Uploads may be up to
/// `upload_limit` bytes (other bodies: `max_body_bytes`).
pub fn routes(upload_limit: usize) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa_axum::router::UtoipaMethodRouterExt;
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::login))
        .routes(routes!(accounts::refresh))
        .routes(routes!(accounts::logout))
        .routes(routes!(accounts::change_password))
        .routes(routes!(accounts::terms))
        .routes(routes!(accounts::me, accounts::update_me, own_data::erase))
        .routes(routes!(own_data::export))
        .routes(routes!(attachments::avatar))
        .routes(routes!(accounts::search_users))
        .routes(routes!(accounts::user))
        .routes(routes!(presence::list))
        .routes(routes!(accounts::jwks))
        .routes(routes!(contacts::list))
        .routes(routes!(contacts::request, contacts::update))
        .routes(routes!(conversations::list, conversations::create))
        .routes(routes!(
            conversations::get,
            conversations::rename,
            conversations::delete
        ))
        .routes(routes!(conversations::add_members))
        .routes(routes!(
            conversations::remove_member,
            conversations::set_role
        ))
        .routes(routes!(messages::list, messages::send))
        .routes(routes!(messages::edit, messages::delete))
        .routes(routes!(messages::add_reaction, messages::remove_reaction))
        .routes(routes!(messages::mark_read))
        .routes(routes!(messages::search))
        .routes(
            routes!(attachments::upload).layer(axum::extract::DefaultBodyLimit::max(upload_limit)),
        )
        .routes(routes!(attachments::download))
        .routes(routes!(attachments::thumbnail))
        .routes(routes!(admin::audit_log))
        .routes(routes!(notifications::list))
        .routes(routes!(notifications::mark_read))
        .routes(routes!(notifications::key))
        .routes(routes!(notifications::subscribe))
        .routes(routes!(notifications::unsubscribe))
        .routes(routes!(calls::history, calls::start))
        .routes(routes!(calls::missed_count))
        .routes(routes!(calls::stats))
        .routes(routes!(calls::current))
        .routes(routes!(calls::get, calls::remove_from_history))
        .routes(routes!(calls::accept))
        .routes(routes!(calls::decline))
        .routes(routes!(calls::cancel))
        .routes(routes!(calls::end))
        .routes(routes!(calls::join))
        .routes(routes!(calls::leave))
        .routes(routes!(calls::media))
        .routes(routes!(calls::regions))
        .split_for_parts()
        .map_doc(declare_common_answers)
}

/// Pairs of (router, document) whose document a pass completes.
trait MapDoc {
    fn map_doc(self, pass: fn(&mut utoipa::openapi::OpenApi)) -> Self;
}

impl MapDoc for (Router<AppState>, utoipa::openapi::OpenApi) {
    fn map_doc(mut self, pass: fn(&mut utoipa::openapi::OpenApi)) -> Self {
        pass(&mut self.1);
        self
    }
}

/// Declares, on every operation, what the shared extractors make it able
/// to answer, so generated clients and fuzzers know each route's whole
/// surface without every handler repeating it:
///
/// - each `{name}` of the path as a required path parameter (a uuid for
///   `id`/`*_id`); an unparsable one is answered 404 like a missing thing;
/// - 401 where a bearer token is needed ([`Caller`]);
/// - 400 (malformed JSON), 413, 415 and 422 where a JSON body is required
///   ([`ApiJson`]), 400 where there are query parameters ([`ApiQuery`]).
///
/// A handler's own declarations win: only missing entries are added.
fn declare_common_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let names: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let params = op.parameters.get_or_insert_with(Vec::new);
            for name in &names {
                let declared = params.iter().any(|p| {
                    matches!(p, RefOr::T(p) if p.name == *name && p.parameter_in == ParameterIn::Path)
                });
                if declared {
                    continue;
                }
                let schema = if *name == "id" || name.ends_with("_id") {
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                } else {
                    ObjectBuilder::new().schema_type(Type::String)
                };
                let param: Parameter = ParameterBuilder::new()
                    .name(*name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(schema))
                    .build();
                params.push(RefOr::T(param));
            }
            let has_query = params
                .iter()
                .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Query));
            if params.is_empty() {
                op.parameters = None;
            }
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let json_body = op.request_body.as_ref().is_some_and(|b| {
                matches!(b, RefOr::T(b) if b.required == Some(Required::True)
                    && b.content.contains_key("application/json"))
            });
            let mut answers: Vec<(&str, &str)> = Vec::new();
            if !names.is_empty() {
                answers.push(("404", "Not found (or not yours)"));
            }
            if secured {
                answers.push(("401", "Missing, invalid or expired access token"));
            }
            if json_body {
                answers.push(("400", "Malformed JSON"));
                answers.push(("413", "Body larger than max_body_bytes"));
                answers.push(("415", "Content-Type is not application/json"));
                answers.push(("422", "The JSON does not fit the schema"));
            } else if has_query {
                answers.push(("400", "Invalid query parameters"));
            }
            for (status, description) in answers {
                op.responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(description).into());
            }
        }
    }
}

/// The internal API for nodes (not in the OpenAPI document).
pub fn internal_routes() -> Router<AppState> {
    use axum::routing::{get, post, put};
    Router::new()
        .route("/internal/v1/nodes", get(internal::list))
        .route(
            "/internal/v1/nodes/{id}",
            put(internal::heartbeat).delete(internal::deregister),
        )
        .route(
            "/internal/v1/nodes/{id}/participants/gone",
            post(internal::participant_gone),
        )
}
