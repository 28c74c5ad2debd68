//! Contacts: requests, acceptance, blocks.
//!
//! Each relationship is stored as two rows, one per side. A block is one
//! sided: the blocker sees `blocked`, the blocked user's row disappears, and
//! a contact request from them is accepted silently but never reaches the
//! blocker. (Starting a direct conversation or posting in one answers 403
//! `blocked`, which does tell them: a silent failure there would lose
//! messages the sender believes were delivered.)
//!
//! Every change is a compare-and-set on both rows, retried on a stale read,
//! so concurrent requests cannot undo a block.

use axum::Json;
use uuid::Uuid;

use super::wire::{ContactAction, ContactList, ContactState, ContactView, ContactsQuery};
use super::{ApiJson, ApiPath, ApiQuery, AppState, Caller, ClientAddr, now};
use crate::error::{ApiError, ErrorBody};
use crate::store::ContactStatus::{self, Accepted, Blocked, Incoming, Outgoing};

/// The caller's contacts and pending requests.
#[utoipa::path(get, path = "/v1/contacts", tag = "contacts",
    params(ContactsQuery),
    responses((status = 200, body = ContactList), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    state: AppState,
    caller: Caller,
    ApiQuery(query): ApiQuery<ContactsQuery>,
) -> Result<Json<ContactList>, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(ContactStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                "status must be outgoing, incoming, accepted or blocked",
            )
        })?),
    };
    let entries = state.store.contacts(caller.user_id, status).await?;
    Ok(Json(ContactList {
        contacts: entries.iter().map(ContactView::from).collect(),
    }))
}

/// Ask `user_id` to be a contact (accepts their request if they asked first).
#[utoipa::path(post, path = "/v1/contacts/{user_id}", tag = "contacts",
    responses(
        (status = 200, body = ContactState),
        (status = 404, body = ErrorBody, description = "No such user"),
        (status = 409, body = ErrorBody, description = "`blocked`: the caller blocked them (unblock first)"),
        (status = 422, body = ErrorBody, description = "`self_contact`"),
    ),
    security(("bearer" = [])))]
pub async fn request(
    state: AppState,
    caller: Caller,
    ClientAddr(ip): ClientAddr,
    ApiPath(other): ApiPath<Uuid>,
) -> Result<Json<ContactState>, ApiError> {
    let me = caller.user_id;
    check_other(&state, me, other).await?;
    let (view, requested) = change(&state, me, other, |mine, theirs| {
        Ok(match (mine, theirs) {
            (Some(Blocked), _) => {
                return Err(ApiError::conflict(
                    "blocked",
                    "you blocked this user; unblock them first",
                ));
            }
            (Some(Accepted), _) => (mine, theirs),
            // They blocked me: look like a pending request, reach nobody.
            (_, Some(Blocked)) => (Some(Outgoing), Some(Blocked)),
            (Some(Incoming), _) => (Some(Accepted), Some(Accepted)),
            _ => (Some(Outgoing), Some(Incoming)),
        })
    })
    .await?;
    let action = if view == Some(Accepted) {
        "contact.accepted"
    } else {
        "contact.requested"
    };
    state
        .audit(
            Some(me),
            action,
            Some(("user", other.to_string())),
            ip,
            serde_json::json!({}),
        )
        .await;
    if requested && let Some(from) = state.store.user(me).await? {
        state
            .notifier
            .send(vec![crate::notifications::contact_request(
                other,
                &from,
                now(),
            )])
            .await;
    }
    Ok(Json(ContactState::new(other, view)))
}

/// How often a change is retried when the relationship changed between
/// reading and writing it.
const ATTEMPTS: usize = 5;

/// Reads both sides, lets `decide` choose the new views, and writes them
/// if nothing changed meanwhile. Returns the caller's new view and whether
/// the other side's view became `Incoming` now (a new request for them).
async fn change(
    state: &AppState,
    me: Uuid,
    other: Uuid,
    decide: impl Fn(Option<ContactStatus>, Option<ContactStatus>) -> Result<Views, ApiError>,
) -> Result<(Option<ContactStatus>, bool), ApiError> {
    for _ in 0..ATTEMPTS {
        let mine = state.store.contact(me, other).await?;
        let theirs = state.store.contact(other, me).await?;
        let views = decide(mine, theirs)?;
        if views == (mine, theirs) {
            return Ok((views.0, false));
        }
        // Each side whose view changed hears about it (on all its devices).
        let mut events = Vec::new();
        if views.0 != mine {
            events.push(super::events::contact(me, other, views.0));
        }
        if views.1 != theirs {
            events.push(super::events::contact(other, me, views.1));
        }
        if state
            .store
            .set_contact_pair(me, other, (mine, theirs), views, &events, now())
            .await?
        {
            let requested = views.1 == Some(Incoming) && theirs != Some(Incoming);
            return Ok((views.0, requested));
        }
    }
    Err(ApiError::conflict(
        "concurrent_update",
        "the relationship kept changing; try again",
    ))
}

/// The (caller's, other's) views of a relationship.
type Views = (Option<ContactStatus>, Option<ContactStatus>);

/// Accept, decline, block, unblock or remove.
#[utoipa::path(patch, path = "/v1/contacts/{user_id}", tag = "contacts",
    request_body = ContactAction,
    responses(
        (status = 200, body = ContactState),
        (status = 404, body = ErrorBody, description = "No such user, or nothing to accept/decline"),
        (status = 422, body = ErrorBody, description = "Unknown action"),
    ),
    security(("bearer" = [])))]
pub async fn update(
    state: AppState,
    caller: Caller,
    ClientAddr(ip): ClientAddr,
    ApiPath(other): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ContactAction>,
) -> Result<Json<ContactState>, ApiError> {
    let me = caller.user_id;
    check_other(&state, me, other).await?;
    let action = body.action.as_str();
    if !["accept", "decline", "remove", "block", "unblock"].contains(&action) {
        return Err(ApiError::invalid(
            "invalid_action",
            format!("unknown action {action:?}; use accept, decline, block, unblock or remove"),
        ));
    }
    let (view, _) = change(&state, me, other, |mine, theirs| {
        let no_request = || ApiError::not_found("no contact request from this user");
        Ok(match action {
            "accept" => match mine {
                Some(Incoming) => (Some(Accepted), Some(Accepted)),
                Some(Accepted) => (mine, theirs),
                _ => return Err(no_request()),
            },
            "decline" => match mine {
                Some(Incoming) => (None, keep_block(theirs)),
                _ => return Err(no_request()),
            },
            "remove" => match mine {
                Some(Blocked) | None => (mine, theirs),
                _ => (None, keep_block(theirs)),
            },
            // Blocking drops any relationship; their side vanishes unless
            // they blocked me too.
            "block" => (Some(Blocked), keep_block(theirs)),
            // "unblock"
            _ => match mine {
                Some(Blocked) => (None, keep_block(theirs)),
                _ => (mine, theirs),
            },
        })
    })
    .await?;
    let audited = match action {
        "accept" => "contact.accepted",
        "decline" => "contact.declined",
        "remove" => "contact.removed",
        "block" => "contact.blocked",
        _ => "contact.unblocked",
    };
    state
        .audit(
            Some(me),
            audited,
            Some(("user", other.to_string())),
            ip,
            serde_json::json!({}),
        )
        .await;
    Ok(Json(ContactState::new(other, view)))
}

/// The other side keeps only a block of its own.
fn keep_block(theirs: Option<ContactStatus>) -> Option<ContactStatus> {
    theirs.filter(|s| *s == Blocked)
}

async fn check_other(state: &AppState, me: Uuid, other: Uuid) -> Result<(), ApiError> {
    if me == other {
        return Err(ApiError::invalid("self_contact", "you cannot add yourself"));
    }
    if !state.account_exists(other).await? {
        return Err(ApiError::not_found("no such user"));
    }
    Ok(())
}

impl AppState {
    /// Whether either of two users blocked the other (then they may not
    /// start a direct conversation or call, nor post in one).
    pub async fn blocked_between(&self, a: Uuid, b: Uuid) -> Result<bool, ApiError> {
        Ok(self.store.contact(a, b).await? == Some(Blocked)
            || self.store.contact(b, a).await? == Some(Blocked))
    }
}
