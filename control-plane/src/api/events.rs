//! The durable events the API appends to the log, rendered once into the
//! JSON clients receive as an event's `data` (the same wire types as the
//! REST responses).
//!
//! Event names are the contract in `shared/api.md`.

use serde::Serialize;
use uuid::Uuid;

use super::wire::MessageView;
use crate::store::{ContactStatus, Message, NewEvent};

fn render(
    conversation_id: Option<Uuid>,
    user_id: Option<Uuid>,
    kind: &'static str,
    data: &impl Serialize,
) -> NewEvent {
    NewEvent {
        conversation_id,
        user_id,
        kind,
        // Our own wire types always serialize.
        payload: serde_json::to_string(data).unwrap_or_else(|_| "null".to_owned()),
    }
}

/// `message.created`, to the conversation's members.
pub fn message_created(message: &Message) -> NewEvent {
    let view = MessageView::new(message, Vec::new());
    render(
        Some(message.conversation_id),
        None,
        "message.created",
        &view,
    )
}

/// `message.updated` (edited), to the conversation's members.
pub fn message_updated(message: &Message) -> NewEvent {
    let view = MessageView::new(message, Vec::new());
    render(
        Some(message.conversation_id),
        None,
        "message.updated",
        &view,
    )
}

/// `message.deleted` (the tombstone), to the conversation's members.
pub fn message_deleted(message: &Message) -> NewEvent {
    let view = MessageView::new(message, Vec::new());
    render(
        Some(message.conversation_id),
        None,
        "message.deleted",
        &view,
    )
}

#[derive(Serialize)]
struct ReactionChange<'a> {
    conversation_id: Uuid,
    message_id: Uuid,
    user_id: Uuid,
    emoji: &'a str,
    /// How many people have this reaction on the message now.
    count: i64,
}

/// `reaction.added` or `reaction.removed`, to the conversation's members
/// (appended only when the reaction changed), rendered with the count the
/// store computes in its transaction.
pub fn reaction_changed(
    conversation: Uuid,
    message: Uuid,
    user: Uuid,
    emoji: &str,
    added: bool,
) -> impl Fn(i64) -> NewEvent + Send + Sync + 'static {
    // Owned: the store holds the renderer across its transaction.
    let emoji = emoji.to_owned();
    move |count| {
        let data = ReactionChange {
            conversation_id: conversation,
            message_id: message,
            user_id: user,
            emoji: &emoji,
            count,
        };
        let kind = if added {
            "reaction.added"
        } else {
            "reaction.removed"
        };
        render(Some(conversation), None, kind, &data)
    }
}

#[derive(Serialize)]
struct MemberChange {
    conversation_id: Uuid,
    user_id: Uuid,
}

/// `member.added`, to the members (the new one included).
pub fn member_added(conversation: Uuid, user: Uuid) -> NewEvent {
    let data = MemberChange {
        conversation_id: conversation,
        user_id: user,
    };
    render(Some(conversation), Some(user), "member.added", &data)
}

/// `member.removed`, to the remaining members and to the one who left.
pub fn member_removed(conversation: Uuid, user: Uuid) -> NewEvent {
    let data = MemberChange {
        conversation_id: conversation,
        user_id: user,
    };
    render(Some(conversation), Some(user), "member.removed", &data)
}

#[derive(Serialize)]
struct ConversationChange<'a> {
    conversation_id: Uuid,
    kind: &'a str,
    name: Option<&'a str>,
    deleted: bool,
}

/// `conversation.updated` (created or renamed), to the members.
pub fn conversation_updated(conversation: Uuid, kind: &str, name: Option<&str>) -> NewEvent {
    let data = ConversationChange {
        conversation_id: conversation,
        kind,
        name,
        deleted: false,
    };
    render(Some(conversation), None, "conversation.updated", &data)
}

/// `conversation.updated` with `deleted: true`, to one former member (the
/// conversation and its member list are gone by the time it is read, so
/// each member gets a row of their own; routing sends it to that member
/// only).
pub fn conversation_deleted(conversation: Uuid, member: Uuid) -> NewEvent {
    let data = ConversationChange {
        conversation_id: conversation,
        kind: "group",
        name: None,
        deleted: true,
    };
    render(
        Some(conversation),
        Some(member),
        "conversation.updated",
        &data,
    )
}

#[derive(Serialize)]
struct ReadChange {
    conversation_id: Uuid,
    user_id: Uuid,
    last_read_seq: i64,
}

/// `read.updated`, to the members (read receipts, and the reader's other
/// devices).
pub fn read_updated(conversation: Uuid, user: Uuid, last_read_seq: i64) -> NewEvent {
    let data = ReadChange {
        conversation_id: conversation,
        user_id: user,
        last_read_seq,
    };
    render(Some(conversation), None, "read.updated", &data)
}

#[derive(Serialize)]
struct ContactChange {
    user_id: Uuid,
    status: Option<&'static str>,
}

/// `contact.request` to `to` (someone asked them), or `contact.updated`
/// with `to`'s new view of their relationship with `about`.
pub fn contact(to: Uuid, about: Uuid, view: Option<ContactStatus>) -> NewEvent {
    let kind = if view == Some(ContactStatus::Incoming) {
        "contact.request"
    } else {
        "contact.updated"
    };
    let data = ContactChange {
        user_id: about,
        status: view.map(ContactStatus::as_str),
    };
    render(None, Some(to), kind, &data)
}
