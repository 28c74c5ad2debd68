//! Accounts: registration, login, token refresh, logout, password change,
//! profile, user search, and the public keys that verify our tokens.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use time::OffsetDateTime;
use uuid::Uuid;

use super::wire::{
    ChangePasswordRequest, LoginRequest, LogoutQuery, MeView, RefreshRequest, RegisterRequest,
    SearchQuery, Session, TermsView, Tokens, UpdateMeRequest, UserList, UserView,
};
use super::{ApiJson, ApiPath, ApiQuery, AppState, Caller, ClientAddr, now};
use crate::auth::tokens::{hash_refresh_token, new_refresh_token};
use crate::error::{ApiError, ErrorBody};
use crate::store::{self, Profile, Rotation, StoreError, User};

/// Most results a user search returns.
const SEARCH_LIMIT: i64 = 20;
/// Longest e-mail address (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;
/// Longest status text.
const MAX_STATUS_CHARS: usize = 140;
/// Longest avatar URL.
const MAX_URL_LEN: usize = 2048;

/// Lower-cases and checks a username: 3–32 of `[a-z0-9_.]`.
pub fn normalize_username(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim().to_ascii_lowercase();
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
    if !(3..=32).contains(&name.len()) || !ok_chars {
        return Err(ApiError::invalid(
            "invalid_username",
            "username must be 3-32 characters of a-z, 0-9, '_' and '.'",
        ));
    }
    Ok(name)
}

/// Lower-cases and checks an e-mail address (syntax only: one `@`, a
/// non-empty local part, a dotted domain, no spaces or control characters).
pub fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let invalid = || ApiError::invalid("invalid_email", "not a valid e-mail address");
    if email.len() > MAX_EMAIL_LEN || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    let domain_ok = !domain.contains('@')
        && domain.contains('.')
        && domain
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63 && !label.starts_with('-'));
    if local.is_empty() || local.len() > 64 || !domain_ok {
        return Err(invalid());
    }
    Ok(email)
}

/// Checks a display name: 1..=`max` characters, no control characters.
pub fn check_display_name(name: &str, max: u32) -> Result<String, ApiError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > max as usize || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "invalid_display_name",
            format!("display name must be 1-{max} characters without control characters"),
        ));
    }
    Ok(name.to_owned())
}

fn check_avatar_url(raw: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::invalid("invalid_avatar_url", "avatar_url must be an http(s) URL");
    if raw.len() > MAX_URL_LEN {
        return Err(invalid());
    }
    let url = url::Url::parse(raw).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid());
    }
    Ok(url.to_string())
}

impl AppState {
    /// Starts a new login for `user`: a refresh-token family and tokens.
    async fn open_session(
        &self,
        user: &User,
        ip: Option<std::net::IpAddr>,
        user_agent: Option<String>,
    ) -> Result<Tokens, ApiError> {
        let now = now();
        let family_id = Uuid::now_v7();
        let (refresh_token, token_hash) = new_refresh_token();
        self.store
            .create_session(&store::Session {
                id: Uuid::now_v7(),
                user_id: user.id,
                family_id,
                token_hash,
                created_at: now,
                expires_at: now + self.refresh_ttl(),
                rotated_at: None,
                revoked_at: None,
                user_agent,
                ip: ip.map(|ip| ip.to_string()),
            })
            .await?;
        Ok(self.token_pair(user.id, family_id, refresh_token, now))
    }

    fn token_pair(
        &self,
        user: Uuid,
        family: Uuid,
        refresh_token: String,
        now: OffsetDateTime,
    ) -> Tokens {
        Tokens {
            access_token: self.tokens.issue_access(user, family, now),
            expires_in: self.tokens.access_ttl_secs(),
            refresh_token,
            token_type: "Bearer".to_owned(),
        }
    }

    fn refresh_ttl(&self) -> time::Duration {
        time::Duration::seconds(
            i64::try_from(self.config.auth.refresh_token_ttl_secs).unwrap_or(i64::MAX / 2),
        )
    }

    /// The caller's user row; a token for a deleted account is a 401.
    pub async fn caller_user(&self, caller: Caller) -> Result<User, ApiError> {
        self.store
            .user(caller.user_id)
            .await?
            .filter(|user| user.deleted_at.is_none())
            .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))
    }

    /// Whether `id` is a live account (not unknown, not erased): what a
    /// contact request, a direct conversation or a group may name.
    pub async fn account_exists(&self, id: Uuid) -> Result<bool, ApiError> {
        Ok(self
            .store
            .user(id)
            .await?
            .is_some_and(|user| user.deleted_at.is_none()))
    }

    /// Counts a login attempt against every key; `Err(429)` if any is over
    /// its limit. Counted before the password check, so parallel guesses
    /// cannot all get in before the first failure is recorded. Fails open
    /// (counted and logged) when the limiter's backend is down.
    pub(crate) async fn count_attempt(&self, keys: &LoginKeys) -> Result<(), ApiError> {
        let auth = &self.config.auth;
        let window = Duration::from_secs(auth.login_window_secs);
        let mut wait: Option<Duration> = None;
        let limits = [
            Some((&keys.account, auth.max_failed_logins_per_account)),
            keys.address
                .as_ref()
                .map(|a| (a, auth.max_failed_logins_per_address)),
        ];
        for (key, limit) in limits.into_iter().flatten() {
            match self.limiter.hit(key, limit, window).await {
                Ok(Some(w)) => wait = Some(wait.map_or(w, |l| l.max(w))),
                Ok(None) => {}
                Err(error) => self.limiter_failed(&error),
            }
        }
        match wait {
            Some(wait) => Err(ApiError::too_many_requests(wait)),
            None => Ok(()),
        }
    }

    /// A successful attempt: the account's counter starts over; the address
    /// only gets this attempt back (one good password must not reopen
    /// guessing at other accounts from there).
    pub(crate) async fn attempt_succeeded(&self, keys: &LoginKeys) {
        if let Err(error) = self.limiter.reset(&keys.account).await {
            self.limiter_failed(&error);
        }
        if let Some(address) = &keys.address
            && let Err(error) = self.limiter.forgive(address).await
        {
            self.limiter_failed(&error);
        }
    }

    /// Ends revoked logins everywhere at once: their access tokens are
    /// refused from now on (here at once, on the other replicas when the
    /// bus message arrives) and their WebSockets close.
    pub(crate) fn end_logins(
        &self,
        user: Uuid,
        family: Option<Uuid>,
        except: Option<Uuid>,
        families: Vec<Uuid>,
    ) {
        self.tokens.revoke(families.iter().copied());
        let bus = self.gateway.bus.clone();
        tokio::spawn(async move {
            bus.publish(crate::gateway::bus::BusMessage::Revoked {
                user,
                family,
                except,
                families,
            })
            .await;
        });
    }

    /// Counts one use of `what` by `subject` against `quota`: 429
    /// `rate_limited` with `Retry-After` beyond it. Fails open (counted and
    /// logged) when the limiter's backend is down, as logins do.
    pub(crate) async fn throttle(
        &self,
        what: &str,
        subject: impl std::fmt::Display,
        quota: crate::config::Quota,
    ) -> Result<(), ApiError> {
        let key = format!("quota:{what}:{subject}");
        match self.limiter.hit(&key, quota.limit, quota.window()).await {
            Ok(Some(wait)) => {
                tracing::debug!(what, %subject, "rate limited");
                Err(ApiError::rate_limited(what, wait))
            }
            Ok(None) => Ok(()),
            Err(error) => {
                self.limiter_failed(&error);
                Ok(())
            }
        }
    }

    fn limiter_failed(&self, error: &crate::ratelimit::LimiterError) {
        self.limiter_errors.inc();
        tracing::warn!(%error, "rate limiter unavailable; not limiting");
    }
}

/// The rate-limit keys of one login attempt.
pub(crate) struct LoginKeys {
    /// Per account: its id if it exists, else a digest of the login text
    /// (bounded size; and once the account exists, guesses at `alice` and
    /// `alice@example.com` land on one counter).
    account: String,
    /// Per client address; IPv6 by /64, since one host usually owns a /64.
    address: Option<String>,
}

impl LoginKeys {
    pub(crate) fn new(user: Option<&User>, login: &str, ip: Option<std::net::IpAddr>) -> Self {
        let account = match user {
            Some(user) => format!("login:account:{}", user.id),
            None => {
                let digest =
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, login.as_bytes());
                let hex: String = digest.as_ref()[..16]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("login:unknown:{hex}")
            }
        };
        let address = ip.map(|ip| format!("login:address:{}", address_key(ip)));
        LoginKeys { account, address }
    }
}

/// A client address as a rate-limit subject: IPv6 per /64, since one
/// client usually holds a whole /64.
pub(crate) fn address_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

fn user_agent(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect())
}

/// Create an account and log in.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, body = Session, description = "Account created; logged in"),
        (status = 409, body = ErrorBody, description = "`username_taken` or `email_taken`"),
        (status = 422, body = ErrorBody, description = "Invalid username, e-mail or weak password"),
        (status = 429, body = ErrorBody, description = "`rate_limited`: too many sign-ups from this address"),
    ))]
pub async fn register(
    state: AppState,
    ClientAddr(ip): ClientAddr,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(ip) = ip {
        state
            .throttle(
                "sign-ups",
                address_key(ip),
                state.config.rate_limits.signups_per_address,
            )
            .await?;
    }
    let terms = &state.config.terms;
    if body.accepted_terms.as_deref().map(str::trim) != Some(terms.version.as_str()) {
        return Err(ApiError::invalid(
            "terms_not_accepted",
            format!(
                "accept the terms of service (version {}) to sign up: send accepted_terms",
                terms.version
            ),
        ));
    }
    let username = normalize_username(&body.username)?;
    let email = normalize_email(&body.email)?;
    let display_name = check_display_name(
        body.display_name.as_deref().unwrap_or(&username),
        state.config.limits.max_name_chars,
    )?;
    state
        .passwords
        .check_policy(&body.password, &[&username, &email, &display_name])
        .map_err(|why| ApiError::invalid("weak_password", format!("password {why}")))?;
    let password_hash = state
        .passwords
        .hash(&body.password)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let now = now();
    let user = User {
        id: Uuid::now_v7(),
        username,
        email,
        password_hash,
        display_name,
        status_text: String::new(),
        avatar_url: None,
        is_admin: false,
        created_at: now,
        updated_at: now,
        avatar_id: None,
        terms_version: Some(terms.version.clone()),
        terms_accepted_at: Some(now),
        deleted_at: None,
    };
    match state.store.create_user(&user).await {
        Ok(()) => {}
        Err(StoreError::Conflict("email")) => {
            return Err(ApiError::conflict(
                "email_taken",
                "that e-mail is already registered",
            ));
        }
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::conflict(
                "username_taken",
                "that username is taken",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let tokens = state.open_session(&user, ip, user_agent(&headers)).await?;
    state
        .audit(
            Some(user.id),
            "user.registered",
            Some(("user", user.id.to_string())),
            ip,
            serde_json::json!({}),
        )
        .await;
    tracing::info!(user_id = %user.id, "user registered");
    Ok((
        StatusCode::CREATED,
        Json(Session {
            user: (&user).into(),
            tokens,
        }),
    ))
}

/// Log in with username or e-mail and password.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = Session),
        (status = 401, body = ErrorBody, description = "`invalid_credentials`"),
        (status = 429, body = ErrorBody, description = "Too many failures; see `Retry-After`"),
    ))]
pub async fn login(
    state: AppState,
    ClientAddr(ip): ClientAddr,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<Session>, ApiError> {
    let login = body.login.trim().to_lowercase();
    // Postgres refuses NUL in text; such a login names no account.
    let found = if login.is_empty() || login.len() > MAX_EMAIL_LEN || login.contains('\0') {
        None
    } else {
        state.store.user_by_login(&login).await?
    };
    let keys = LoginKeys::new(found.as_ref(), &login, ip);
    let target = || found.as_ref().map(|u| ("user", u.id.to_string()));
    if let Err(limited) = state.count_attempt(&keys).await {
        // The login text is not recorded: people type passwords into it.
        state
            .audit(
                None,
                "login.rate_limited",
                target(),
                ip,
                serde_json::json!({}),
            )
            .await;
        return Err(limited);
    }
    let verified = state
        .passwords
        .verify(
            &body.password,
            found.as_ref().map(|u| u.password_hash.as_str()),
        )
        .await;
    let Some(user) = found.as_ref().filter(|_| verified).cloned() else {
        state
            .audit(None, "login.failed", target(), ip, serde_json::json!({}))
            .await;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong login or password",
        ));
    };
    state.attempt_succeeded(&keys).await;
    let tokens = state.open_session(&user, ip, user_agent(&headers)).await?;
    state
        .audit(
            Some(user.id),
            "login.succeeded",
            Some(("user", user.id.to_string())),
            ip,
            serde_json::json!({}),
        )
        .await;
    Ok(Json(Session {
        user: (&user).into(),
        tokens,
    }))
}

/// Exchange a refresh token for a new pair. Each refresh token works once;
/// presenting a used one again revokes every token of that login.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, body = Tokens),
        (status = 401, body = ErrorBody, description = "`invalid_refresh_token`, or `refresh_token_reused` (the login was revoked)"),
    ))]
pub async fn refresh(
    state: AppState,
    ClientAddr(ip): ClientAddr,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Json<Tokens>, ApiError> {
    let now = now();
    let presented = hash_refresh_token(body.refresh_token.trim());
    let (refresh_token, token_hash) = new_refresh_token();
    let next = store::Session {
        id: Uuid::now_v7(),
        // Filled from the presented token's row by the store.
        user_id: Uuid::nil(),
        family_id: Uuid::nil(),
        token_hash,
        created_at: now,
        expires_at: now + state.refresh_ttl(),
        rotated_at: None,
        revoked_at: None,
        user_agent: user_agent(&headers),
        ip: ip.map(|ip| ip.to_string()),
    };
    match state.store.rotate_session(&presented, &next, now).await? {
        Rotation::Rotated { user_id, family_id } => Ok(Json(state.token_pair(
            user_id,
            family_id,
            refresh_token,
            now,
        ))),
        Rotation::Reused { user_id, family_id } => {
            let revoked = state.store.revoke_family(family_id, now).await?;
            state.end_logins(user_id, Some(family_id), None, vec![family_id]);
            state
                .audit(
                    Some(user_id),
                    "session.reuse_detected",
                    Some(("session_family", family_id.to_string())),
                    ip,
                    serde_json::json!({ "revoked": revoked }),
                )
                .await;
            tracing::warn!(%user_id, %family_id, "refresh token reused; login revoked");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "refresh_token_reused",
                "this refresh token was already used; the login has been revoked",
            ))
        }
        Rotation::Invalid => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
            "unknown, expired or revoked refresh token",
        )),
    }
}

/// End this login (or every login with `?all=true`): its refresh tokens
/// are revoked, its access tokens refused from now on, its WebSockets
/// closed.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth",
    params(LogoutQuery),
    responses((status = 204, description = "Logged out"), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn logout(
    state: AppState,
    caller: Caller,
    ClientAddr(ip): ClientAddr,
    ApiQuery(query): ApiQuery<LogoutQuery>,
) -> Result<StatusCode, ApiError> {
    let now = now();
    let all = query.all.unwrap_or(false);
    let families = if all {
        let mut families = state
            .store
            .revoke_user_sessions(caller.user_id, None, now)
            .await?;
        // Its refresh tokens may be gone while its access token lives.
        families.push(caller.family_id);
        families
    } else {
        state.store.revoke_family(caller.family_id, now).await?;
        vec![caller.family_id]
    };
    let revoked = families.len();
    state
        .audit(
            Some(caller.user_id),
            "session.revoked",
            Some(("user", caller.user_id.to_string())),
            ip,
            serde_json::json!({ "all": all, "revoked": revoked }),
        )
        .await;
    let family = if all { None } else { Some(caller.family_id) };
    state.end_logins(caller.user_id, family, None, families);
    Ok(StatusCode::NO_CONTENT)
}

/// Change the password; every other login is revoked.
#[utoipa::path(post, path = "/v1/auth/password", tag = "auth",
    request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "Changed"),
        (status = 403, body = ErrorBody, description = "`invalid_credentials`: wrong current password"),
        (status = 422, body = ErrorBody, description = "`weak_password`"),
        (status = 429, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn change_password(
    state: AppState,
    caller: Caller,
    ClientAddr(ip): ClientAddr,
    ApiJson(body): ApiJson<ChangePasswordRequest>,
) -> Result<StatusCode, ApiError> {
    // Guessing the current password here counts like failed logins.
    let user = state
        .reauthenticate(caller, ip, &body.current_password)
        .await?;
    state
        .passwords
        .check_policy(
            &body.new_password,
            &[&user.username, &user.email, &user.display_name],
        )
        .map_err(|why| ApiError::invalid("weak_password", format!("password {why}")))?;
    let hash = state
        .passwords
        .hash(&body.new_password)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let now = now();
    state.store.set_password_hash(user.id, &hash, now).await?;
    let families = state
        .store
        .revoke_user_sessions(user.id, Some(caller.family_id), now)
        .await?;
    let revoked = families.len();
    state
        .audit(
            Some(user.id),
            "password.changed",
            Some(("user", user.id.to_string())),
            ip,
            serde_json::json!({ "revoked_sessions": revoked }),
        )
        .await;
    state.end_logins(user.id, None, Some(caller.family_id), families);
    Ok(StatusCode::NO_CONTENT)
}

/// The terms a sign-up accepts (no sign-in needed).
#[utoipa::path(get, path = "/v1/terms", tag = "auth",
    responses((status = 200, body = TermsView)))]
pub async fn terms(state: AppState) -> Json<TermsView> {
    Json(TermsView {
        version: state.config.terms.version.clone(),
        url: state.config.terms.url.clone(),
    })
}

/// The caller's account.
#[utoipa::path(get, path = "/v1/me", tag = "users",
    responses((status = 200, body = MeView), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn me(state: AppState, caller: Caller) -> Result<Json<MeView>, ApiError> {
    Ok(Json((&state.caller_user(caller).await?).into()))
}

/// Edit display name, status text or avatar.
#[utoipa::path(patch, path = "/v1/me", tag = "users",
    request_body = UpdateMeRequest,
    responses((status = 200, body = MeView), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_me(
    state: AppState,
    caller: Caller,
    ApiJson(body): ApiJson<UpdateMeRequest>,
) -> Result<Json<MeView>, ApiError> {
    let user = state.caller_user(caller).await?;
    let mut profile = Profile {
        display_name: user.display_name.clone(),
        status_text: user.status_text.clone(),
        avatar_url: user.avatar_url.clone(),
    };
    if let Some(name) = &body.display_name {
        profile.display_name = check_display_name(name, state.config.limits.max_name_chars)?;
    }
    if let Some(status) = &body.status_text {
        let status = status.trim();
        if status.chars().count() > MAX_STATUS_CHARS || status.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "invalid_status_text",
                format!("status text must be at most {MAX_STATUS_CHARS} characters"),
            ));
        }
        profile.status_text = status.to_owned();
    }
    if body.avatar_url.is_some() && body.avatar_id.is_some() {
        return Err(ApiError::invalid(
            "invalid_avatar",
            "send avatar_id or avatar_url, not both",
        ));
    }
    if let Some(avatar) = &body.avatar_url {
        profile.avatar_url = avatar.as_deref().map(check_avatar_url).transpose()?;
    }
    let now = now();
    // An uploaded avatar goes first: a URL or `null` releases it, an
    // upload takes its place.
    let avatar = match (&body.avatar_id, &body.avatar_url) {
        (Some(id), _) => Some(*id),
        (None, Some(_)) if user.avatar_id.is_some() => Some(None),
        _ => None,
    };
    if let Some(avatar) = avatar {
        let (_, replaced) = match state.store.set_avatar(user.id, avatar, now).await {
            Err(StoreError::NotFound) => {
                return Err(ApiError::invalid(
                    "invalid_avatar",
                    "avatar_id must be an image you uploaded and have not sent",
                ));
            }
            other => other?,
        };
        if let Some(old) = replaced {
            crate::attachments::remove(
                &*state.store,
                &state.blobs,
                old,
                Some(user.id),
                "avatar_replaced",
            )
            .await;
        }
    }
    if body.avatar_id.is_some() {
        profile.avatar_url = None;
    }
    let updated = state.store.update_profile(user.id, &profile, now).await?;
    Ok(Json((&updated).into()))
}

/// Find people by the start of their username or display name.
#[utoipa::path(get, path = "/v1/users", tag = "users",
    params(SearchQuery),
    responses((status = 200, body = UserList), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn search_users(
    state: AppState,
    _caller: Caller,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Json<UserList>, ApiError> {
    let q = query.q.trim().to_lowercase();
    if q.chars().count() < 2 || q.chars().count() > 64 || q.contains('\0') {
        return Err(ApiError::invalid(
            "query_too_short",
            "search needs 2-64 characters",
        ));
    }
    // LIKE wildcards in the query are literal characters.
    let escaped = q
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    let users = state.store.search_users(&escaped, SEARCH_LIMIT).await?;
    Ok(Json(UserList {
        users: users.iter().map(UserView::from).collect(),
    }))
}

/// One user's public profile.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "users",
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn user(
    state: AppState,
    _caller: Caller,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Json<UserView>, ApiError> {
    let user = state
        .store
        .user(user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok(Json((&user).into()))
}

/// Public keys that verify tokens this control plane signs (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "JWK Set", body = Object)))]
pub async fn jwks(state: AppState) -> Json<serde_json::Value> {
    Json(state.tokens.jwks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_folded_and_checked() {
        assert_eq!(normalize_username(" Alice.B_2 ").unwrap(), "alice.b_2");
        for bad in [
            "ab",
            "a b c",
            "ålice",
            "x".repeat(33).as_str(),
            "semi;colon",
            "",
        ] {
            assert!(normalize_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails_are_folded_and_checked() {
        assert_eq!(
            normalize_email(" Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        for bad in [
            "alice",
            "alice@",
            "@example.com",
            "a@b",
            "a b@example.com",
            "a@@example.com",
            "a@example..com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn avatar_urls_must_be_http() {
        assert!(check_avatar_url("https://cdn.example.com/a.png").is_ok());
        assert!(check_avatar_url("javascript:alert(1)").is_err());
        assert!(check_avatar_url("not a url").is_err());
    }
}
