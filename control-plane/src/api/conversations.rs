//! Conversations and their members. Everything here answers 404 to a
//! non-member, whether or not the conversation exists.

use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use uuid::Uuid;

use super::wire::{
    AddMembers, AddedMembers, ConversationList, ConversationView, ConversationsQuery,
    CreateConversation, RenameConversation, SetRole,
};
use super::{ApiJson, ApiPath, ApiQuery, AppState, Caller, ClientAddr, now};
use crate::error::{ApiError, ErrorBody};
use crate::store::{ActivityCursor, Conversation, ConversationKind, Member, Role, StoreError};

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page size (`shared/api.md`).
pub const MAX_LIMIT: i64 = 100;

/// Checks a `limit` query parameter.
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n),
        _ => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1-{MAX_LIMIT}"),
        )),
    }
}

fn encode_cursor(c: &Conversation) -> String {
    format!("{}_{}", c.last_activity_us, c.id.simple())
}

fn decode_cursor(raw: &str) -> Result<ActivityCursor, ApiError> {
    let bad = || ApiError::bad_request("invalid_cursor", "before must be a next_cursor value");
    let (us, id) = raw.split_once('_').ok_or_else(bad)?;
    Ok(ActivityCursor {
        activity_us: us.parse().map_err(|_| bad())?,
        id: Uuid::try_parse(id).map_err(|_| bad())?,
    })
}

fn check_group_name(state: &AppState, name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    let max = state.config.limits.max_name_chars as usize;
    if name.is_empty() || name.chars().count() > max || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "invalid_name",
            format!("name must be 1-{max} characters without control characters"),
        ));
    }
    Ok(name.to_owned())
}

impl AppState {
    /// The conversation and the caller's membership, or 404 for anyone who
    /// is not a member (existence is not revealed).
    pub async fn member_of(
        &self,
        conversation: Uuid,
        user: Uuid,
    ) -> Result<(Conversation, Member), ApiError> {
        self.store
            .membership(conversation, user)
            .await?
            .ok_or_else(|| ApiError::not_found("no such conversation"))
    }

    async fn conversation_view(
        &self,
        conversation: Uuid,
        user: Uuid,
    ) -> Result<ConversationView, ApiError> {
        let summary = self
            .store
            .conversation_summary(conversation, user)
            .await?
            .ok_or_else(|| ApiError::not_found("no such conversation"))?;
        let members = self.store.members(conversation).await?;
        Ok(ConversationView::new(&summary, Some(&members)))
    }

    /// Checks that `ids` exist and that none of them blocked `adder` (or
    /// was blocked by them): a group must not become a way around a block.
    async fn addable_users(&self, adder: Uuid, ids: &[Uuid]) -> Result<(), ApiError> {
        for id in ids {
            if !self.account_exists(*id).await? {
                return Err(ApiError::invalid("unknown_user", format!("no user {id}")));
            }
            if self.blocked_between(adder, *id).await? {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "blocked",
                    format!("you cannot add user {id}"),
                ));
            }
        }
        Ok(())
    }
}

fn group_only(conversation: &Conversation) -> Result<(), ApiError> {
    if conversation.kind != ConversationKind::Group {
        return Err(ApiError::invalid(
            "not_a_group",
            "direct conversations cannot be changed this way",
        ));
    }
    Ok(())
}

fn require(member: &Member, allowed: bool, what: &str) -> Result<(), ApiError> {
    if !allowed {
        return Err(ApiError::forbidden(format!(
            "a {} cannot {what}",
            member.role
        )));
    }
    Ok(())
}

/// The caller's conversations, most recently active first.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations",
    params(ConversationsQuery),
    responses((status = 200, body = ConversationList), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    state: AppState,
    caller: Caller,
    ApiQuery(query): ApiQuery<ConversationsQuery>,
) -> Result<Json<ConversationList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let cursor = query.before.as_deref().map(decode_cursor).transpose()?;
    let mut summaries = state
        .store
        .conversations(caller.user_id, cursor, limit + 1)
        .await?;
    let more = summaries.len() as i64 > limit;
    summaries.truncate(limit as usize);
    let next_cursor = more
        .then(|| summaries.last().map(|s| encode_cursor(&s.conversation)))
        .flatten();
    Ok(Json(ConversationList {
        conversations: summaries
            .iter()
            .map(|s| ConversationView::new(s, None))
            .collect(),
        next_cursor,
    }))
}

/// Start a direct conversation (idempotent per pair) or create a group.
#[utoipa::path(post, path = "/v1/conversations", tag = "conversations",
    request_body = CreateConversation,
    responses(
        (status = 201, body = ConversationView, description = "Created"),
        (status = 200, body = ConversationView, description = "The pair's existing direct conversation"),
        (status = 403, body = ErrorBody, description = "`blocked`"),
        (status = 404, body = ErrorBody, description = "No such user (direct)"),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create(
    state: AppState,
    caller: Caller,
    ApiJson(body): ApiJson<CreateConversation>,
) -> Result<impl IntoResponse, ApiError> {
    let me = caller.user_id;
    let now = now();
    match body {
        CreateConversation::Direct { user_id } => {
            if user_id == me {
                return Err(ApiError::invalid(
                    "self_conversation",
                    "a direct conversation needs another person",
                ));
            }
            if !state.account_exists(user_id).await? {
                return Err(ApiError::not_found("no such user"));
            }
            if state.blocked_between(me, user_id).await? {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "blocked",
                    "you cannot message this user",
                ));
            }
            let id = Uuid::now_v7();
            // Members first: a connected member's hub must know they are in
            // the conversation before its first event reaches them.
            let events = [
                super::events::member_added(id, me),
                super::events::member_added(id, user_id),
                super::events::conversation_updated(id, "direct", None),
            ];
            let (conversation, created) = state
                .store
                .direct_conversation(id, me, user_id, &events, now)
                .await?;
            let view = state.conversation_view(conversation.id, me).await?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(view)))
        }
        CreateConversation::Group { name, member_ids } => {
            let name = check_group_name(&state, &name)?;
            let mut members: Vec<Uuid> = member_ids.into_iter().filter(|id| *id != me).collect();
            members.sort();
            members.dedup();
            if members.len() as i64 + 1 > i64::from(state.config.limits.max_group_members) {
                return Err(ApiError::conflict(
                    "member_limit",
                    format!(
                        "a group has at most {} members",
                        state.config.limits.max_group_members
                    ),
                ));
            }
            state.addable_users(me, &members).await?;
            let conversation = Conversation {
                id: Uuid::now_v7(),
                kind: ConversationKind::Group,
                name: Some(name),
                created_by: Some(me),
                created_at: now,
                last_seq: 0,
                last_activity_us: crate::store::unix_micros(now),
            };
            // Members first (the owner included), then the conversation.
            let mut events: Vec<_> = std::iter::once(me)
                .chain(members.iter().copied())
                .map(|user| super::events::member_added(conversation.id, user))
                .collect();
            events.push(super::events::conversation_updated(
                conversation.id,
                "group",
                conversation.name.as_deref(),
            ));
            state
                .store
                .create_group(&conversation, me, &members, &events)
                .await?;
            state.notify_added(me, &conversation, &members).await?;
            let view = state.conversation_view(conversation.id, me).await?;
            Ok((StatusCode::CREATED, Json(view)))
        }
    }
}

/// One conversation with its members.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}", tag = "conversations",
    responses((status = 200, body = ConversationView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    state: AppState,
    caller: Caller,
    ApiPath(conversation_id): ApiPath<Uuid>,
) -> Result<Json<ConversationView>, ApiError> {
    Ok(Json(
        state
            .conversation_view(conversation_id, caller.user_id)
            .await?,
    ))
}

/// Rename a group (admins and the owner).
#[utoipa::path(patch, path = "/v1/conversations/{conversation_id}", tag = "conversations",
    request_body = RenameConversation,
    responses(
        (status = 200, body = ConversationView),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn rename(
    state: AppState,
    caller: Caller,
    ApiPath(conversation_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<RenameConversation>,
) -> Result<Json<ConversationView>, ApiError> {
    let (conversation, member) = state.member_of(conversation_id, caller.user_id).await?;
    group_only(&conversation)?;
    require(&member, member.role.can_manage(), "rename the group")?;
    let name = check_group_name(&state, &body.name)?;
    let events = [super::events::conversation_updated(
        conversation_id,
        "group",
        Some(&name),
    )];
    state
        .store
        .rename_conversation(conversation_id, &name, &events, now())
        .await?;
    Ok(Json(
        state
            .conversation_view(conversation_id, caller.user_id)
            .await?,
    ))
}

/// Delete a group with all its messages (the owner only).
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}", tag = "conversations",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    state: AppState,
    caller: Caller,
    ClientAddr(ip): ClientAddr,
    ApiPath(conversation_id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let (conversation, member) = state.member_of(conversation_id, caller.user_id).await?;
    group_only(&conversation)?;
    require(&member, member.role == Role::Owner, "delete the group")?;
    state
        .store
        .delete_conversation(conversation_id, super::events::conversation_deleted, now())
        .await?;
    state
        .audit(
            Some(caller.user_id),
            "conversation.deleted",
            Some(("conversation", conversation_id.to_string())),
            ip,
            serde_json::json!({ "name": conversation.name }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Add members to a group (admins and the owner).
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/members", tag = "conversations",
    request_body = AddMembers,
    responses(
        (status = 200, body = AddedMembers),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`member_limit`"),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn add_members(
    state: AppState,
    caller: Caller,
    ClientAddr(ip): ClientAddr,
    ApiPath(conversation_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<AddMembers>,
) -> Result<Json<AddedMembers>, ApiError> {
    let (conversation, member) = state.member_of(conversation_id, caller.user_id).await?;
    group_only(&conversation)?;
    require(&member, member.role.can_manage(), "add members")?;
    if body.user_ids.is_empty() || body.user_ids.len() > MAX_LIMIT as usize {
        return Err(ApiError::invalid(
            "invalid_members",
            format!("add 1-{MAX_LIMIT} users at a time"),
        ));
    }
    state.addable_users(caller.user_id, &body.user_ids).await?;
    let max = i64::from(state.config.limits.max_group_members);
    let added = match state
        .store
        .add_members(
            conversation_id,
            &body.user_ids,
            max,
            super::events::member_added,
            now(),
        )
        .await
    {
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::conflict(
                "member_limit",
                format!("a group has at most {max} members"),
            ));
        }
        other => other?,
    };
    state
        .notify_added(caller.user_id, &conversation, &added)
        .await?;
    for user in &added {
        state
            .audit(
                Some(caller.user_id),
                "member.added",
                Some(("conversation", conversation_id.to_string())),
                ip,
                serde_json::json!({ "user_id": user }),
            )
            .await;
    }
    Ok(Json(AddedMembers { added }))
}

/// Remove a member, or leave (remove yourself). Admins remove members; only
/// the owner removes admins; nobody removes the owner (the owner may leave,
/// and the longest-standing admin or member inherits the group).
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/members/{user_id}", tag = "conversations",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_member(
    state: AppState,
    caller: Caller,
    ClientAddr(ip): ClientAddr,
    ApiPath((conversation_id, user_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let (conversation, me) = state.member_of(conversation_id, caller.user_id).await?;
    group_only(&conversation)?;
    if user_id != caller.user_id {
        let (_, target) = state
            .store
            .membership(conversation_id, user_id)
            .await?
            .ok_or_else(|| ApiError::not_found("not a member"))?;
        let allowed = match target.role {
            Role::Owner => false,
            Role::Admin => me.role == Role::Owner,
            Role::Member => me.role.can_manage(),
        };
        require(&me, allowed, &format!("remove a {}", target.role))?;
    }
    let events = [super::events::member_removed(conversation_id, user_id)];
    match state
        .store
        .remove_member(conversation_id, user_id, &events, now())
        .await
    {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::not_found("not a member")),
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::conflict(
                "concurrent_update",
                "membership changed meanwhile; try again",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    // Out of the group is out of its call: their devices leave it now, and
    // their edges close those sessions at the next heartbeat.
    state.leave_group_call(conversation_id, user_id).await?;
    let action = if user_id == caller.user_id {
        "member.left"
    } else {
        "member.removed"
    };
    state
        .audit(
            Some(caller.user_id),
            action,
            Some(("conversation", conversation_id.to_string())),
            ip,
            serde_json::json!({ "user_id": user_id }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Make a member an admin or back (the owner only).
#[utoipa::path(patch, path = "/v1/conversations/{conversation_id}/members/{user_id}", tag = "conversations",
    request_body = SetRole,
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_role(
    state: AppState,
    caller: Caller,
    ClientAddr(ip): ClientAddr,
    ApiPath((conversation_id, user_id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(body): ApiJson<SetRole>,
) -> Result<StatusCode, ApiError> {
    let (conversation, me) = state.member_of(conversation_id, caller.user_id).await?;
    group_only(&conversation)?;
    require(&me, me.role == Role::Owner, "change roles")?;
    let role = match Role::parse(&body.role) {
        Some(role @ (Role::Admin | Role::Member)) => role,
        _ => {
            return Err(ApiError::invalid(
                "invalid_role",
                "role must be admin or member",
            ));
        }
    };
    if user_id == caller.user_id {
        return Err(ApiError::invalid(
            "invalid_role",
            "the owner's role cannot be changed",
        ));
    }
    if state
        .store
        .membership(conversation_id, user_id)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("not a member"));
    }
    state.store.set_role(conversation_id, user_id, role).await?;
    state
        .audit(
            Some(caller.user_id),
            "member.role_changed",
            Some(("conversation", conversation_id.to_string())),
            ip,
            serde_json::json!({ "user_id": user_id, "role": role.as_str() }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

impl AppState {
    /// Notifies the people `by` just added to `group` (after the change
    /// committed: see `notifications`).
    async fn notify_added(
        &self,
        by: Uuid,
        group: &Conversation,
        added: &[Uuid],
    ) -> Result<(), ApiError> {
        if added.is_empty() {
            return Ok(());
        }
        if let Some(by) = self.store.user(by).await? {
            let notes = crate::notifications::added_to_group(added, &by, group, now());
            self.notifier.send(notes).await;
        }
        Ok(())
    }
}
