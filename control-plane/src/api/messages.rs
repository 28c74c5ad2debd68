//! Messages, reactions and read pointers. Members only: everything answers
//! 404 to a non-member.

use std::collections::HashMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use uuid::Uuid;

use super::conversations::page_limit;
use super::wire::{
    EditMessage, MarkRead, MessageKind, MessageList, MessageView, MessagesQuery, ReactionView,
    ReadState, SendMessage,
};
use super::{ApiJson, ApiPath, ApiQuery, AppState, Caller, ClientAddr, now};
use crate::error::{ApiError, ErrorBody};
use crate::store::{Conversation, ConversationKind, Message, MessagePage, NewMessage, Role};

/// Longest client message id.
const MAX_CLIENT_ID_CHARS: usize = 64;
/// Longest emoji sequence accepted as a reaction (ZWJ sequences are long).
const MAX_EMOJI_CHARS: usize = 16;
/// Different reactions one person may leave on one message.
const MAX_REACTIONS_PER_USER: i64 = 20;

/// A caption of an image, file or voice message: may be empty.
fn check_caption(state: &AppState, body: &str) -> Result<(), ApiError> {
    if body.is_empty() {
        return Ok(());
    }
    check_body(state, body)
}

fn check_body(state: &AppState, body: &str) -> Result<(), ApiError> {
    let max = state.config.limits.max_message_chars as usize;
    if body.trim().is_empty() {
        return Err(ApiError::invalid(
            "empty_message",
            "a message needs some text",
        ));
    }
    // Newlines and tabs are text; NUL is not (and Postgres refuses it).
    if body.contains('\0') {
        return Err(ApiError::invalid(
            "invalid_message",
            "a message cannot contain NUL characters",
        ));
    }
    if body.chars().count() > max {
        return Err(ApiError::invalid(
            "message_too_long",
            format!("a message has at most {max} characters"),
        ));
    }
    Ok(())
}

/// How many emoji (user-perceived characters) `text` is, or `None` when it
/// holds something else. A base emoji may carry a variation selector, a
/// skin tone, a keycap mark or tag characters; a zero-width joiner joins
/// the next base into the same emoji (👩‍💻); two regional indicators are one
/// flag. So "👍" and "👩🏽‍💻" are one, "👍👍" is two.
fn emoji_graphemes(text: &str) -> Option<usize> {
    let is_modifier = |c: char| {
        matches!(c, '\u{FE0E}' | '\u{FE0F}' | '\u{20E3}')
            || ('\u{1F3FB}'..='\u{1F3FF}').contains(&c)
            || ('\u{E0020}'..='\u{E007F}').contains(&c)
    };
    let is_regional = |c: char| ('\u{1F1E6}'..='\u{1F1FF}').contains(&c);
    let is_base = |c: char| {
        c.is_ascii_digit()
            || c == '#'
            || c == '*'
            || matches!(
                c,
                '\u{A9}'
                    | '\u{AE}'
                    | '\u{203C}'
                    | '\u{2049}'
                    | '\u{2122}'
                    | '\u{2139}'
                    | '\u{24C2}'
                    | '\u{3030}'
                    | '\u{303D}'
                    | '\u{3297}'
                    | '\u{3299}'
            )
            || ('\u{2194}'..='\u{21AA}').contains(&c)
            || ('\u{2300}'..='\u{23FF}').contains(&c)
            || ('\u{25AA}'..='\u{27BF}').contains(&c)
            || ('\u{2900}'..='\u{2BFF}').contains(&c)
            || ('\u{1F000}'..='\u{1FAFF}').contains(&c)
    };
    let mut graphemes = 0;
    let mut joined = false;
    let mut open_flag = false;
    let mut prev_base: Option<char> = None;
    for c in text.chars() {
        if c == '\u{200D}' {
            prev_base?;
            joined = true;
        } else if is_modifier(c) {
            prev_base?;
        } else if is_base(c) {
            if is_regional(c) && open_flag {
                open_flag = false;
            } else if !joined {
                graphemes += 1;
                open_flag = is_regional(c);
            }
            joined = false;
            prev_base = Some(c);
        } else {
            return None;
        }
    }
    // A keycap base (digit, # or *) alone is not an emoji.
    if text.chars().count() == 1
        && prev_base.is_some_and(|c| c.is_ascii_digit() || c == '#' || c == '*')
    {
        return None;
    }
    (!joined).then_some(graphemes)
}

/// An emoji (or emoji sequence): short, with no letters, spaces or control
/// characters. Digits are allowed inside keycaps (`1️⃣`), but a plain
/// number is refused.
fn check_emoji(emoji: &str) -> Result<(), ApiError> {
    let chars = emoji.chars().count();
    let plausible = (1..=MAX_EMOJI_CHARS).contains(&chars)
        && !emoji
            .chars()
            .all(|c| c.is_ascii_digit() || c == '#' || c == '*')
        && !emoji
            .chars()
            .any(|c| c.is_alphabetic() || c.is_whitespace() || c.is_control())
        && emoji_graphemes(emoji) == Some(1);
    if !plausible {
        return Err(ApiError::invalid(
            "invalid_emoji",
            "a reaction is one emoji",
        ));
    }
    Ok(())
}

impl AppState {
    /// In a direct conversation, refuses to post if either person blocked
    /// the other.
    async fn check_not_blocked(
        &self,
        conversation: &Conversation,
        me: Uuid,
    ) -> Result<(), ApiError> {
        if conversation.kind != ConversationKind::Direct {
            return Ok(());
        }
        let members = self.store.members(conversation.id).await?;
        for other in members.iter().filter(|m| m.member.user_id != me) {
            if self.blocked_between(me, other.member.user_id).await? {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "blocked",
                    "you cannot message this user",
                ));
            }
        }
        Ok(())
    }

    /// The upload a message of `kind` takes: the caller's own, not yet
    /// sent, of the matching kind; with the metadata the message shows.
    async fn pending_attachment(
        &self,
        kind: MessageKind,
        id: Option<Uuid>,
        me: Uuid,
    ) -> Result<Option<(Uuid, String)>, ApiError> {
        let invalid = |message: &str| ApiError::invalid("invalid_attachment", message.to_owned());
        let (wanted, id) = match (kind.attachment_kind(), id) {
            (None, None) => return Ok(None),
            (None, Some(_)) => return Err(invalid("a text message has no attachment_id")),
            (Some(_), None) => {
                return Err(invalid(
                    "an image, file or voice message needs attachment_id",
                ));
            }
            (Some(wanted), Some(id)) => (wanted, id),
        };
        let row = self
            .store
            .attachment(id)
            .await?
            .filter(|a| a.owner_id == Some(me) && a.deleted_at.is_none())
            .ok_or_else(|| invalid("no such upload of yours"))?;
        if row.message_id.is_some() {
            return Err(invalid("that upload was already sent"));
        }
        if row.kind != wanted.as_str() {
            return Err(invalid(&format!(
                "that upload is a {}, not a {}",
                row.kind,
                wanted.as_str()
            )));
        }
        let view = super::wire::AttachmentView::new(&row);
        // Our own type always serializes.
        let json = serde_json::to_string(&view).unwrap_or_default();
        Ok(Some((id, json)))
    }

    async fn message_in(&self, conversation: Uuid, message: Uuid) -> Result<Message, ApiError> {
        self.store
            .message(conversation, message)
            .await?
            .ok_or_else(|| ApiError::not_found("no such message"))
    }

    /// Views of `messages` with their reaction counts as `viewer` sees them.
    async fn message_views(
        &self,
        conversation: Uuid,
        messages: &[Message],
        viewer: Uuid,
    ) -> Result<Vec<MessageView>, ApiError> {
        let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
            return Ok(Vec::new());
        };
        let counts = self
            .store
            .reactions(
                conversation,
                (first.seq.min(last.seq), first.seq.max(last.seq)),
                viewer,
            )
            .await?;
        let mut by_message: HashMap<Uuid, Vec<ReactionView>> = HashMap::new();
        for count in &counts {
            by_message
                .entry(count.message_id)
                .or_default()
                .push(count.into());
        }
        Ok(messages
            .iter()
            .map(|m| MessageView::new(m, by_message.remove(&m.id).unwrap_or_default()))
            .collect())
    }

    async fn message_view(&self, message: &Message, viewer: Uuid) -> Result<MessageView, ApiError> {
        let mut views = self
            .message_views(
                message.conversation_id,
                std::slice::from_ref(message),
                viewer,
            )
            .await?;
        Ok(views.remove(0))
    }
}

/// A page of messages, oldest first. Without `before`/`after`: the newest.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/messages", tag = "messages",
    params(MessagesQuery),
    responses((status = 200, body = MessageList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    state: AppState,
    caller: Caller,
    ApiPath(conversation_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<MessagesQuery>,
) -> Result<Json<MessageList>, ApiError> {
    state.member_of(conversation_id, caller.user_id).await?;
    if query.q.is_some() {
        return Err(ApiError::bad_request(
            "use_search",
            "to search messages use GET /v1/messages/search?q=...&conversation_id=...",
        ));
    }
    let limit = page_limit(query.limit)?;
    // One extra row tells whether there is more.
    let (page, newer) = match (query.before, query.after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "use before or after, not both",
            ));
        }
        (Some(seq), None) => (
            MessagePage::Before {
                seq,
                limit: limit + 1,
            },
            false,
        ),
        (None, Some(seq)) => (
            MessagePage::After {
                seq,
                limit: limit + 1,
            },
            true,
        ),
        (None, None) => (MessagePage::Latest { limit: limit + 1 }, false),
    };
    let mut messages = state.store.messages(conversation_id, page).await?;
    let has_more = messages.len() as i64 > limit;
    if has_more {
        if newer {
            messages.pop();
        } else {
            messages.remove(0);
        }
    }
    let messages = state
        .message_views(conversation_id, &messages, caller.user_id)
        .await?;
    Ok(Json(MessageList { messages, has_more }))
}

/// Longest search text.
const MAX_SEARCH_CHARS: usize = 200;

/// Full-text search over the messages of your conversations (or of one):
/// newest first, with the matching passage. Nobody else's conversations
/// are searched; deleted messages never match.
#[utoipa::path(get, path = "/v1/messages/search", tag = "messages",
    params(super::wire::MessageSearchQuery),
    responses((status = 200, body = super::wire::SearchResults), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn search(
    state: AppState,
    caller: Caller,
    ApiQuery(query): ApiQuery<super::wire::MessageSearchQuery>,
) -> Result<Json<super::wire::SearchResults>, ApiError> {
    let text = query.q.trim();
    if text.is_empty() || text.chars().count() > MAX_SEARCH_CHARS || text.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("q must be 1-{MAX_SEARCH_CHARS} characters"),
        ));
    }
    if let Some(conversation) = query.conversation_id {
        state.member_of(conversation, caller.user_id).await?;
    }
    let limit = page_limit(query.limit)?;
    let mut found = state
        .store
        .search_messages(
            caller.user_id,
            text,
            query.conversation_id,
            query.before,
            limit + 1,
        )
        .await?;
    let more = found.len() as i64 > limit;
    found.truncate(limit as usize);
    let next_before = more.then(|| found.last().map(|h| h.message.id)).flatten();
    let mut hits = Vec::with_capacity(found.len());
    for hit in found {
        let message = state.message_view(&hit.message, caller.user_id).await?;
        let snippet = super::wire::snippet_parts(hit.snippet.as_deref().unwrap_or_default());
        hits.push(super::wire::SearchHitView { message, snippet });
    }
    Ok(Json(super::wire::SearchResults { hits, next_before }))
}

/// Send a message. With `client_message_id`, a retry returns the message
/// already stored (200) instead of storing it twice.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/messages", tag = "messages",
    request_body = SendMessage,
    responses(
        (status = 201, body = MessageView, description = "Stored"),
        (status = 200, body = MessageView, description = "Already stored under this client_message_id"),
        (status = 403, body = ErrorBody, description = "`blocked`"),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "`rate_limited`"),
    ),
    security(("bearer" = [])))]
pub async fn send(
    state: AppState,
    caller: Caller,
    ApiPath(conversation_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<SendMessage>,
) -> Result<impl IntoResponse, ApiError> {
    let (conversation, _) = state.member_of(conversation_id, caller.user_id).await?;
    state
        .throttle(
            "messages",
            caller.user_id,
            state.config.rate_limits.messages_per_user,
        )
        .await?;
    if body.kind == MessageKind::Text {
        check_body(&state, &body.body)?;
    } else {
        check_caption(&state, &body.body)?;
    }
    let attachment = state
        .pending_attachment(body.kind, body.attachment_id, caller.user_id)
        .await?;
    if let Some(id) = &body.client_message_id
        && (id.is_empty()
            || id.chars().count() > MAX_CLIENT_ID_CHARS
            || id.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "invalid_client_message_id",
            format!("client_message_id must be 1-{MAX_CLIENT_ID_CHARS} printable characters"),
        ));
    }
    state
        .check_not_blocked(&conversation, caller.user_id)
        .await?;
    let replied_author = match body.reply_to {
        Some(reply_to) => match state.store.message(conversation_id, reply_to).await? {
            Some(replied) => replied.author_id,
            None => {
                return Err(ApiError::invalid(
                    "invalid_reply_to",
                    "reply_to is not a message of this conversation",
                ));
            }
        },
        None => None,
    };
    let (message, created) = state
        .store
        .send_message(
            &NewMessage {
                id: Uuid::now_v7(),
                conversation_id,
                author_id: caller.user_id,
                client_message_id: body.client_message_id,
                body: body.body,
                reply_to: body.reply_to,
                kind: body.kind.as_str().to_owned(),
                attachment,
                now: now(),
            },
            super::events::message_created,
        )
        .await
        .map_err(|e| match e {
            // Another message took the upload meanwhile.
            crate::store::StoreError::Conflict("attachment") => {
                ApiError::invalid("invalid_attachment", "that upload was already sent")
            }
            other => other.into(),
        })?;
    // Also for a send repeated by client id: the dedupe key makes it one
    // notification, and a first attempt that failed after storing the
    // message still notifies.
    state
        .notify_message(&message, caller.user_id, replied_author)
        .await?;
    // A message just stored has no reactions yet: skip that query.
    let view = if created {
        MessageView::new(&message, Vec::new())
    } else {
        state.message_view(&message, caller.user_id).await?
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

/// Edit your own message.
#[utoipa::path(patch, path = "/v1/conversations/{conversation_id}/messages/{message_id}", tag = "messages",
    request_body = EditMessage,
    responses(
        (status = 200, body = MessageView),
        (status = 403, body = ErrorBody, description = "Not the author"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`message_deleted`"),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn edit(
    state: AppState,
    caller: Caller,
    ApiPath((conversation_id, message_id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(body): ApiJson<EditMessage>,
) -> Result<Json<MessageView>, ApiError> {
    let (conversation, _) = state.member_of(conversation_id, caller.user_id).await?;
    state
        .throttle(
            "messages",
            caller.user_id,
            state.config.rate_limits.messages_per_user,
        )
        .await?;
    let message = state.message_in(conversation_id, message_id).await?;
    if message.author_id != Some(caller.user_id) {
        return Err(ApiError::forbidden("only the author can edit a message"));
    }
    state
        .check_not_blocked(&conversation, caller.user_id)
        .await?;
    if message.deleted_at.is_some() {
        return Err(ApiError::conflict(
            "message_deleted",
            "a deleted message cannot be edited",
        ));
    }
    check_body(&state, &body.body)?;
    let edited = state
        .store
        .edit_message(
            message_id,
            &body.body,
            super::events::message_updated,
            now(),
        )
        .await?;
    Ok(Json(state.message_view(&edited, caller.user_id).await?))
}

/// Delete a message: its text is removed and a tombstone keeps its place.
/// The author may delete it; in groups, admins and the owner too.
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/messages/{message_id}", tag = "messages",
    responses((status = 200, body = MessageView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    state: AppState,
    caller: Caller,
    ClientAddr(ip): ClientAddr,
    ApiPath((conversation_id, message_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<Json<MessageView>, ApiError> {
    let (conversation, member) = state.member_of(conversation_id, caller.user_id).await?;
    let message = state.message_in(conversation_id, message_id).await?;
    let moderator = conversation.kind == ConversationKind::Group
        && matches!(member.role, Role::Owner | Role::Admin);
    if message.author_id != Some(caller.user_id) && !moderator {
        return Err(ApiError::forbidden(
            "only the author or a group admin can delete a message",
        ));
    }
    let (deleted, attachments) = state
        .store
        .delete_message(message_id, super::events::message_deleted, now())
        .await?;
    state
        .audit(
            Some(caller.user_id),
            "message.deleted",
            Some(("message", message_id.to_string())),
            ip,
            serde_json::json!({
                "conversation_id": conversation_id,
                "author_id": message.author_id,
                "attachments": attachments.len(),
            }),
        )
        .await;
    // Its blobs go now; what fails here the sweep retries.
    for id in attachments {
        crate::attachments::remove(
            &*state.store,
            &state.blobs,
            id,
            Some(caller.user_id),
            "message_deleted",
        )
        .await;
    }
    Ok(Json(MessageView::new(&deleted, Vec::new())))
}

/// React with an emoji (idempotent).
#[utoipa::path(put, path = "/v1/conversations/{conversation_id}/messages/{message_id}/reactions/{emoji}", tag = "messages",
    responses((status = 200, body = MessageView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_reaction(
    state: AppState,
    caller: Caller,
    ApiPath((conversation_id, message_id, emoji)): ApiPath<(Uuid, Uuid, String)>,
) -> Result<Json<MessageView>, ApiError> {
    let (conversation, _) = state.member_of(conversation_id, caller.user_id).await?;
    state
        .throttle(
            "reactions",
            caller.user_id,
            state.config.rate_limits.reactions_per_user,
        )
        .await?;
    check_emoji(&emoji)?;
    let message = state.message_in(conversation_id, message_id).await?;
    if message.deleted_at.is_some() {
        return Err(ApiError::conflict(
            "message_deleted",
            "a deleted message cannot get reactions",
        ));
    }
    state
        .check_not_blocked(&conversation, caller.user_id)
        .await?;
    if !state
        .store
        .add_reaction(
            message_id,
            caller.user_id,
            &emoji,
            MAX_REACTIONS_PER_USER,
            &super::events::reaction_changed(
                conversation_id,
                message_id,
                caller.user_id,
                &emoji,
                true,
            ),
            now(),
        )
        .await?
    {
        return Err(ApiError::conflict(
            "too_many_reactions",
            format!("at most {MAX_REACTIONS_PER_USER} different reactions per person on a message"),
        ));
    }
    Ok(Json(state.message_view(&message, caller.user_id).await?))
}

/// Withdraw a reaction (idempotent).
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/messages/{message_id}/reactions/{emoji}", tag = "messages",
    responses((status = 200, body = MessageView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_reaction(
    state: AppState,
    caller: Caller,
    ApiPath((conversation_id, message_id, emoji)): ApiPath<(Uuid, Uuid, String)>,
) -> Result<Json<MessageView>, ApiError> {
    state.member_of(conversation_id, caller.user_id).await?;
    state
        .throttle(
            "reactions",
            caller.user_id,
            state.config.rate_limits.reactions_per_user,
        )
        .await?;
    check_emoji(&emoji)?;
    let message = state.message_in(conversation_id, message_id).await?;
    state
        .store
        .remove_reaction(
            message_id,
            caller.user_id,
            &emoji,
            &super::events::reaction_changed(
                conversation_id,
                message_id,
                caller.user_id,
                &emoji,
                false,
            ),
            now(),
        )
        .await?;
    Ok(Json(state.message_view(&message, caller.user_id).await?))
}

/// Mark everything up to a message as read. The pointer never moves back.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/read", tag = "messages",
    request_body = MarkRead,
    responses((status = 200, body = ReadState), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn mark_read(
    state: AppState,
    caller: Caller,
    ApiPath(conversation_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<MarkRead>,
) -> Result<Json<ReadState>, ApiError> {
    state.member_of(conversation_id, caller.user_id).await?;
    let message = state.message_in(conversation_id, body.message_id).await?;
    let last_read_seq = state
        .store
        .mark_read(
            conversation_id,
            caller.user_id,
            message.seq,
            &super::events::read_updated(conversation_id, caller.user_id, message.seq),
            now(),
        )
        .await?;
    Ok(Json(ReadState { last_read_seq }))
}

impl AppState {
    /// Notifies the people a message mentions or replies to.
    async fn notify_message(
        &self,
        message: &crate::store::Message,
        author: Uuid,
        replied_author: Option<Uuid>,
    ) -> Result<(), ApiError> {
        let mentions = message.body.as_deref().is_some_and(|b| b.contains('@'));
        let replies_to_other = replied_author.is_some_and(|a| a != author);
        if !mentions && !replies_to_other {
            return Ok(());
        }
        let Some(author) = self.store.user(author).await? else {
            return Ok(());
        };
        let members = self.store.members(message.conversation_id).await?;
        let notes =
            crate::notifications::for_message(message, &author, &members, replied_author, now());
        self.notifier.send(notes).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_emoji_is_one_grapheme_whatever_its_sequence() {
        for one in [
            "👍",
            "❤️",
            "👩🏽‍💻",
            "🏳️‍🌈",
            "🇫🇷",
            "1️⃣",
            "#️⃣",
            "👨‍👩‍👧‍👦",
            "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
            "©️",
        ] {
            assert_eq!(super::emoji_graphemes(one), Some(1), "{one:?}");
        }
        assert_eq!(super::emoji_graphemes("👍👍"), Some(2));
        assert_eq!(super::emoji_graphemes("🇫🇷🇩🇪"), Some(2));
        for not in [
            "a",
            "👍a",
            "\u{200D}👍",
            "👍\u{200D}",
            "\u{FE0F}",
            "1",
            "x👍",
            " 👍",
        ] {
            assert_ne!(super::emoji_graphemes(not), Some(1), "{not:?}");
        }
    }

    use super::*;

    #[test]
    fn emoji_are_short_and_not_words() {
        for ok in ["👍", "❤️", "👨‍👩‍👧‍👦", "🎉", "1️⃣"] {
            assert!(check_emoji(ok).is_ok(), "{ok}");
        }
        for bad in ["", "like", "ЖЖ", "42", "👍 ", "a👍", "\0", &"👍".repeat(17)] {
            assert!(check_emoji(bad).is_err(), "{bad:?}");
        }
    }
}
