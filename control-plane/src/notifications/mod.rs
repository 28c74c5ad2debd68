//! Notifications: a stored per-user feed of what happened to them while
//! they looked elsewhere (missed calls, contact requests, being added to a
//! group, mentions, replies), live as `notification.created`, and pushed
//! to browsers that are offline with Web Push.
//!
//! - The rows and their events are written in one transaction by the store
//!   (`store::NotificationStore`); missed calls inside the call transaction
//!   that ends the call, the others right after the change that causes
//!   them ([`Notifier::send`]), with a dedupe key so a retried request does
//!   not notify twice.
//! - [`push`] is the outbox worker every replica runs: it claims pending
//!   rows, skips users with a live connection, encrypts ([`webpush`]) and
//!   POSTs to each of the user's push subscriptions.

pub mod push;
pub mod webpush;

use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::store::{
    Conversation, MemberEntry, Message, Notification, NotificationKind, Store, User,
};

/// How much of a message a notification previews, characters.
const EXCERPT_CHARS: usize = 140;

/// Writes notifications after the change that causes them, and wakes this
/// replica's push worker.
#[derive(Clone)]
pub struct Notifier {
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
    failures: prometheus::IntCounter,
}

impl Notifier {
    /// A notifier over `store`, registering its failure counter in `registry`.
    pub fn new(store: Arc<dyn Store>, registry: &prometheus::Registry) -> Self {
        let failures = prometheus::IntCounter::new(
            "cascade_notifications_failed_total",
            "Notifications that could not be stored (the change that caused them stands)",
        )
        .expect("valid metric");
        // A second registration (tests build several replicas on one
        // registry) keeps the first.
        let _ = registry.register(Box::new(failures.clone()));
        Notifier {
            store,
            wake: Arc::new(Notify::new()),
            failures,
        }
    }

    /// What the push worker waits on besides its timer.
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Wakes the push worker (a call transaction wrote notifications).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stores `notes`. The change that caused them has committed already,
    /// so a failure here is logged and counted, never the request's error.
    pub async fn send(&self, notes: Vec<Notification>) {
        if notes.is_empty() {
            return;
        }
        match self.store.notify(&notes, crate::store::now_utc()).await {
            Ok(stored) => {
                if !stored.is_empty() {
                    self.wake.notify_one();
                }
            }
            Err(error) => {
                self.failures.inc();
                tracing::warn!(%error, count = notes.len(), "notifications not stored");
            }
        }
    }
}

/// The name a feed shows for `user`.
pub fn shown_name(user: &User) -> String {
    if user.display_name.trim().is_empty() {
        user.username.clone()
    } else {
        user.display_name.clone()
    }
}

/// `to` has a contact request from `from`.
pub fn contact_request(to: Uuid, from: &User, now: OffsetDateTime) -> Notification {
    let mut note = Notification::new(to, NotificationKind::ContactRequest, now);
    note.actor_id = Some(from.id);
    note.actor_name = Some(shown_name(from));
    note
}

/// `added` were added to group `group` by `by`.
pub fn added_to_group(
    added: &[Uuid],
    by: &User,
    group: &Conversation,
    now: OffsetDateTime,
) -> Vec<Notification> {
    added
        .iter()
        .filter(|user| **user != by.id)
        .map(|user| {
            let mut note = Notification::new(*user, NotificationKind::AddedToGroup, now);
            note.actor_id = Some(by.id);
            note.actor_name = Some(shown_name(by));
            note.conversation_id = Some(group.id);
            note.excerpt = group.name.clone();
            note
        })
        .collect()
}

/// The notifications a new message causes: a reply to the author of
/// `replied_author`'s message, a mention to each member it names with
/// `@username` (one per person and message; reply wins). Never to the
/// author, never to someone outside the conversation.
pub fn for_message(
    message: &Message,
    author: &User,
    members: &[MemberEntry],
    replied_author: Option<Uuid>,
    now: OffsetDateTime,
) -> Vec<Notification> {
    let body = message.body.as_deref().unwrap_or_default();
    let named = mentions(body);
    let preview = if body.trim().is_empty() {
        format!("[{}]", message.kind)
    } else {
        excerpt(body)
    };
    let mut notes = Vec::new();
    for entry in members {
        let user = entry.user.id;
        if user == author.id {
            continue;
        }
        let kind = if replied_author == Some(user) {
            NotificationKind::Reply
        } else if named.contains(&entry.user.username) {
            NotificationKind::Mention
        } else {
            continue;
        };
        let mut note = Notification::new(user, kind, now);
        note.actor_id = Some(author.id);
        note.actor_name = Some(shown_name(author));
        note.conversation_id = Some(message.conversation_id);
        note.message_id = Some(message.id);
        note.excerpt = Some(preview.clone());
        note.dedupe_key = Some(format!("message:{}", message.id));
        notes.push(note);
    }
    notes
}

/// The usernames a text names with `@`: an `@` at the start or after a
/// character that cannot be in a username (so `a@b.example` is no
/// mention), followed by 3-32 username characters; a trailing `.` is
/// punctuation. Lower-cased, each once.
pub fn mentions(text: &str) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    let mut names: Vec<String> = Vec::new();
    let mut previous: Option<char> = None;
    for (at, c) in text.char_indices() {
        if c == '@' && !previous.is_some_and(is_name) {
            let rest = &text[at + 1..];
            let len = rest.find(|c: char| !is_name(c)).unwrap_or(rest.len());
            let name = rest[..len].trim_end_matches('.').to_ascii_lowercase();
            if (3..=32).contains(&name.len()) && !names.contains(&name) {
                names.push(name);
            }
        }
        previous = Some(c);
    }
    names
}

/// The first [`EXCERPT_CHARS`] characters of `text`, whitespace folded.
pub fn excerpt(text: &str) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.chars().count() <= EXCERPT_CHARS {
        return folded;
    }
    let mut cut: String = folded.chars().take(EXCERPT_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_names_after_an_at_sign_not_e_mail_addresses() {
        assert_eq!(mentions("hi @Alice and @bob."), ["alice", "bob"]);
        assert_eq!(mentions("@carol: look"), ["carol"]);
        assert!(mentions("mail a@b.example or @ab or @").is_empty());
        assert_eq!(mentions("@dave @dave (@erin)"), ["dave", "erin"]);
        assert_eq!(mentions("@élise @x_y.z"), ["x_y.z"]);
        let long = format!("@{}", "a".repeat(33));
        assert!(mentions(&long).is_empty());
    }

    #[test]
    fn excerpts_fold_whitespace_and_stop_at_140_characters() {
        assert_eq!(excerpt(" a\n\n b  c "), "a b c");
        let long = "é".repeat(200);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with('…'));
    }
}
