//! Which local connections an event goes to: plain data, no I/O.
//!
//! The view of "who is in which conversation" covers connected users only.
//! It is loaded when a user connects and then kept current by the event
//! stream itself (`member.added`, `member.removed`, deleted conversations),
//! processed in log order, so it never disagrees with the events it routes.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

/// A connection on this replica.
pub type ConnId = u64;

/// What routing needs to know about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Event name.
    pub kind: Kind,
    /// Members of this conversation receive it.
    pub conversation_id: Option<Uuid>,
    /// This user receives it.
    pub user_id: Option<Uuid>,
}

/// Events that change membership, and all the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `member.added`: the user joins the conversation before routing.
    MemberAdded,
    /// `member.removed`: the user leaves the conversation after routing.
    MemberRemoved,
    /// A conversation this (user-addressed) event names was deleted.
    ConversationDeleted(Uuid),
    /// Anything else.
    Other,
}

/// Local connections and the memberships of their users.
#[derive(Debug, Default)]
pub struct Fanout {
    user_of: HashMap<ConnId, Uuid>,
    conns_of: HashMap<Uuid, HashSet<ConnId>>,
    members_of: HashMap<Uuid, HashSet<Uuid>>,
    conversations_of: HashMap<Uuid, HashSet<Uuid>>,
}

impl Fanout {
    /// Adds a connection of `user`, whose conversations are `conversations`
    /// (read from the store at this point of the event stream).
    pub fn connect(
        &mut self,
        conn: ConnId,
        user: Uuid,
        conversations: impl IntoIterator<Item = Uuid>,
    ) {
        self.user_of.insert(conn, user);
        self.conns_of.entry(user).or_default().insert(conn);
        let fresh: HashSet<Uuid> = conversations.into_iter().collect();
        let old = self
            .conversations_of
            .insert(user, fresh.clone())
            .unwrap_or_default();
        for gone in old.difference(&fresh) {
            self.leave(*gone, user);
        }
        for conversation in fresh {
            self.members_of
                .entry(conversation)
                .or_default()
                .insert(user);
        }
    }

    /// Removes a connection; a user with no connection left is forgotten.
    pub fn disconnect(&mut self, conn: ConnId) {
        let Some(user) = self.user_of.remove(&conn) else {
            return;
        };
        let conns = self.conns_of.entry(user).or_default();
        conns.remove(&conn);
        if conns.is_empty() {
            self.conns_of.remove(&user);
            for conversation in self.conversations_of.remove(&user).unwrap_or_default() {
                if let Some(members) = self.members_of.get_mut(&conversation) {
                    members.remove(&user);
                    if members.is_empty() {
                        self.members_of.remove(&conversation);
                    }
                }
            }
        }
    }

    /// Number of local connections.
    pub fn len(&self) -> usize {
        self.user_of.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.user_of.is_empty()
    }

    /// The user of a connection.
    pub fn user(&self, conn: ConnId) -> Option<Uuid> {
        self.user_of.get(&conn).copied()
    }

    /// The connections an event goes to, applying its membership change.
    pub fn route(&mut self, event: Route) -> Vec<ConnId> {
        if let (Kind::MemberAdded, Some(conversation), Some(user)) =
            (event.kind, event.conversation_id, event.user_id)
            && self.conns_of.contains_key(&user)
        {
            self.conversations_of
                .entry(user)
                .or_default()
                .insert(conversation);
            self.members_of
                .entry(conversation)
                .or_default()
                .insert(user);
        }
        // A deletion notice is one row per former member: to them only.
        let mut users: HashSet<Uuid> = match event.kind {
            Kind::ConversationDeleted(_) => HashSet::new(),
            _ => event
                .conversation_id
                .and_then(|c| self.members_of.get(&c))
                .cloned()
                .unwrap_or_default(),
        };
        users.extend(event.user_id);
        let conns = self.conns_for(users.iter().copied());
        match (event.kind, event.conversation_id, event.user_id) {
            (Kind::MemberRemoved, Some(conversation), Some(user)) => self.leave(conversation, user),
            (Kind::ConversationDeleted(conversation), _, Some(user)) => {
                self.leave(conversation, user)
            }
            _ => {}
        }
        conns
    }

    /// Connections of the members of `conversation` other than `except`
    /// (typing indicators).
    pub fn members_except(&self, conversation: Uuid, except: Uuid) -> Vec<ConnId> {
        let users = self
            .members_of
            .get(&conversation)
            .into_iter()
            .flatten()
            .copied()
            .filter(|u| *u != except);
        self.conns_for(users)
    }

    /// Connections of any of `users`.
    pub fn conns_for(&self, users: impl IntoIterator<Item = Uuid>) -> Vec<ConnId> {
        let mut conns: Vec<ConnId> = users
            .into_iter()
            .filter_map(|u| self.conns_of.get(&u))
            .flatten()
            .copied()
            .collect();
        conns.sort_unstable();
        conns.dedup();
        conns
    }

    fn leave(&mut self, conversation: Uuid, user: Uuid) {
        if let Some(conversations) = self.conversations_of.get_mut(&user) {
            conversations.remove(&conversation);
        }
        if let Some(members) = self.members_of.get_mut(&conversation) {
            members.remove(&user);
            if members.is_empty() {
                self.members_of.remove(&conversation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Uuid, Uuid, Uuid, Uuid) {
        (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        )
    }

    fn message(conversation: Uuid) -> Route {
        Route {
            kind: Kind::Other,
            conversation_id: Some(conversation),
            user_id: None,
        }
    }

    #[test]
    fn conversation_events_reach_every_connection_of_every_member() {
        let (alice, bob, carol, chat) = ids();
        let mut fanout = Fanout::default();
        fanout.connect(1, alice, [chat]);
        fanout.connect(2, alice, [chat]); // a second device
        fanout.connect(3, bob, [chat]);
        fanout.connect(4, carol, []);
        assert_eq!(fanout.route(message(chat)), vec![1, 2, 3]);
        fanout.disconnect(2);
        assert_eq!(fanout.route(message(chat)), vec![1, 3]);
        fanout.disconnect(1);
        assert_eq!(
            fanout.route(message(chat)),
            vec![3],
            "alice has no device left"
        );
    }

    #[test]
    fn membership_follows_the_event_stream() {
        let (alice, bob, _, group) = ids();
        let mut fanout = Fanout::default();
        fanout.connect(1, alice, [group]);
        fanout.connect(2, bob, []);
        assert_eq!(fanout.route(message(group)), vec![1]);

        let added = Route {
            kind: Kind::MemberAdded,
            conversation_id: Some(group),
            user_id: Some(bob),
        };
        assert_eq!(
            fanout.route(added),
            vec![1, 2],
            "the new member hears of it too"
        );
        assert_eq!(fanout.route(message(group)), vec![1, 2]);

        let removed = Route {
            kind: Kind::MemberRemoved,
            ..added
        };
        assert_eq!(
            fanout.route(removed),
            vec![1, 2],
            "the removed member is told"
        );
        assert_eq!(
            fanout.route(message(group)),
            vec![1],
            "and hears nothing after"
        );

        let deleted = Route {
            kind: Kind::ConversationDeleted(group),
            conversation_id: Some(group),
            user_id: Some(alice),
        };
        assert_eq!(fanout.route(deleted), vec![1]);
        assert!(fanout.route(message(group)).is_empty());
    }

    #[test]
    fn user_events_reach_only_that_user_and_typing_skips_the_typist() {
        let (alice, bob, _, chat) = ids();
        let mut fanout = Fanout::default();
        fanout.connect(1, alice, [chat]);
        fanout.connect(2, bob, [chat]);
        let contact = Route {
            kind: Kind::Other,
            conversation_id: None,
            user_id: Some(bob),
        };
        assert_eq!(fanout.route(contact), vec![2]);
        assert_eq!(fanout.members_except(chat, alice), vec![2]);
        assert_eq!(fanout.len(), 2);
    }
}
