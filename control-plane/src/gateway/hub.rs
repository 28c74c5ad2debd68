//! The hub: one task per replica that reads the event log in order and
//! hands each event to the local connections that should see it.
//!
//! Live delivery and resume read the same ordered log, and the hub alone
//! decides what each connection has been sent, so a client receives every
//! event exactly once and in order, whichever replica it is on. The hub
//! never waits on a client: each connection has a bounded queue, and a
//! client that lets it fill up is disconnected (1008) instead of growing
//! memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::gateway::ServerFrame;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::bus::{Bus, BusMessage};
use super::fanout::{ConnId, Fanout, Kind, Route};
use super::metrics::GatewayMetrics;
use crate::store::{EventCursor, Store, StoredEvent};

/// Events read per query.
const PAGE: i64 = 500;

/// Why a connection was closed by the server: a WebSocket close code and
/// reason, read by the connection task when its queue closes.
pub type CloseReason = Arc<Mutex<Option<(u16, &'static str)>>>;

/// Settings of the hub.
#[derive(Debug, Clone, Copy)]
pub struct HubSettings {
    /// Frames a connection may have queued before it is cut off.
    pub outbound_queue: usize,
    /// How often the log is read without a wake-up.
    pub poll_interval: Duration,
    /// Most events one resume replays before asking for a resync.
    pub max_replay: usize,
}

/// A connection accepted by the hub.
pub struct Connected {
    /// Its id on this replica.
    pub conn: ConnId,
    /// Frames to write to the socket, in order.
    pub frames: mpsc::Receiver<Arc<str>>,
    /// Set when the hub closes the connection.
    pub close: CloseReason,
}

/// Why a resume was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// Events were already delivered; replaying older ones now would break
    /// their order.
    #[error("resume must be the first frame; reconnect with ?cursor=")]
    TooLate,
    /// The log could not be read.
    #[error("the event log is unavailable")]
    Store,
}

/// Why a connection could not be accepted.
#[derive(Debug, thiserror::Error)]
#[error("the gateway cannot accept connections right now")]
pub struct ConnectError;

enum Command {
    Connect {
        user: Uuid,
        family: Uuid,
        resume: Option<EventCursor>,
        reply: oneshot::Sender<Result<Connected, ConnectError>>,
    },
    Resume {
        conn: ConnId,
        cursor: EventCursor,
        reply: oneshot::Sender<Result<(), ResumeError>>,
    },
}

/// Talks to the hub task. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    commands: mpsc::Sender<Command>,
    /// Unbounded, so a disconnect is never dropped (which would leak the
    /// connection's state in the hub).
    disconnects: mpsc::UnboundedSender<ConnId>,
}

impl Hub {
    /// Registers a connection of `user` (logged in as `family`), replaying
    /// after `resume` if given.
    pub async fn connect(
        &self,
        user: Uuid,
        family: Uuid,
        resume: Option<EventCursor>,
    ) -> Result<Connected, ConnectError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Connect {
                user,
                family,
                resume,
                reply,
            })
            .await
            .map_err(|_| ConnectError)?;
        answer.await.map_err(|_| ConnectError)?
    }

    /// Replays after `cursor` on a connection that has received nothing yet.
    pub async fn resume(&self, conn: ConnId, cursor: EventCursor) -> Result<(), ResumeError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Resume {
                conn,
                cursor,
                reply,
            })
            .await
            .map_err(|_| ResumeError::Store)?;
        answer.await.map_err(|_| ResumeError::Store)?
    }

    /// Forgets a connection (its socket closed).
    pub fn disconnect(&self, conn: ConnId) {
        // The hub may already be gone at shutdown.
        let _ = self.disconnects.send(conn);
    }
}

struct Local {
    frames: mpsc::Sender<Arc<str>>,
    close: CloseReason,
    /// Durable events sent (a resume frame is refused after the first).
    durable: u64,
    /// Events at or before this were already sent (by a replay reaching
    /// past this hub's position): skip them in the live stream.
    floor: EventCursor,
    user: Uuid,
    /// The login the connection authenticated with.
    family: Uuid,
}

/// The hub task's state; run it with [`HubTask::run`].
pub struct HubTask {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    settings: HubSettings,
    metrics: GatewayMetrics,
    commands: mpsc::Receiver<Command>,
    disconnects: mpsc::UnboundedReceiver<ConnId>,
    conns: HashMap<ConnId, Local>,
    fanout: Fanout,
    head: EventCursor,
    /// While committed events beyond `head` are not final yet (an older
    /// transaction, in any database of the Postgres server, is still
    /// open), when to look again: no wake-up will come for them.
    retry_at: Option<tokio::time::Instant>,
    /// The delay before such a look (doubles up to the poll interval).
    retry_delay: Duration,
    next_conn: ConnId,
}

/// Creates a hub and the handle to it.
pub fn hub(
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    settings: HubSettings,
    metrics: GatewayMetrics,
) -> (Hub, HubTask) {
    let (commands, receiver) = mpsc::channel(1024);
    let (disconnects, disconnected) = mpsc::unbounded_channel();
    let task = HubTask {
        store,
        bus,
        settings,
        metrics,
        commands: receiver,
        disconnects: disconnected,
        conns: HashMap::new(),
        fanout: Fanout::default(),
        head: EventCursor::default(),
        retry_at: None,
        retry_delay: RETRY_FIRST,
        next_conn: 1,
    };
    (
        Hub {
            commands,
            disconnects,
        },
        task,
    )
}

/// The frame of a durable event, built once and shared by all recipients.
fn event_frame(event: &StoredEvent) -> Arc<str> {
    let kind = serde_json::to_string(&event.kind).unwrap_or_else(|_| "\"unknown\"".into());
    format!(
        r#"{{"type":{kind},"cursor":"{}","data":{}}}"#,
        event.cursor(),
        event.payload
    )
    .into()
}

fn frame(frame: &ServerFrame) -> Arc<str> {
    serde_json::to_string(frame).unwrap_or_default().into()
}

/// What routing needs from an event row.
fn route_of(event: &StoredEvent) -> Route {
    let kind = match event.kind.as_str() {
        "member.added" => Kind::MemberAdded,
        "member.removed" => Kind::MemberRemoved,
        "conversation.updated" if event.user_id.is_some() => {
            #[derive(serde::Deserialize)]
            struct Deleted {
                conversation_id: Uuid,
                deleted: bool,
            }
            match serde_json::from_str::<Deleted>(&event.payload) {
                Ok(d) if d.deleted => Kind::ConversationDeleted(d.conversation_id),
                _ => Kind::Other,
            }
        }
        _ => Kind::Other,
    };
    Route {
        kind,
        conversation_id: event.conversation_id,
        user_id: event.user_id,
    }
}

/// First delay before re-reading events that were committed but not final.
const RETRY_FIRST: Duration = Duration::from_millis(20);

impl HubTask {
    /// Reads the log and serves commands until `shutdown`, then closes
    /// every connection with 1001 (going away).
    pub async fn run(mut self, shutdown: service::Shutdown) {
        self.head = loop {
            match self.store.event_head().await {
                Ok(head) => break head,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the event log head; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut bus = self.bus.subscribe();
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => break,
                },
                Some(conn) = self.disconnects.recv() => self.forget(conn),
                message = bus.recv() => match message {
                    Ok(BusMessage::EventsWritten) => self.pull().await,
                    Ok(BusMessage::Typing { conversation, user }) => {
                        let conns = self.fanout.members_except(conversation, user);
                        let typing = frame(&ServerFrame::Typing { conversation_id: conversation, user_id: user });
                        for conn in conns {
                            self.send(conn, &typing);
                        }
                    }
                    Ok(BusMessage::Presence { user, status, audience }) => {
                        let conns = self.fanout.conns_for(audience.into_iter().filter(|u| *u != user));
                        let presence = frame(&ServerFrame::Presence { user_id: user, status });
                        for conn in conns {
                            self.send(conn, &presence);
                        }
                    }
                    Ok(BusMessage::Revoked { user, family, except, .. }) => {
                        let revoked: Vec<ConnId> = self
                            .conns
                            .iter()
                            .filter(|(_, l)| {
                                l.user == user
                                    && family.is_none_or(|f| f == l.family)
                                    && except.is_none_or(|e| e != l.family)
                            })
                            .map(|(conn, _)| *conn)
                            .collect();
                        for conn in revoked {
                            self.close(conn, 4401, "session revoked");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.pull().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => bus = self.bus.subscribe(),
                },
                _ = poll.tick() => self.pull().await,
                () = tokio::time::sleep_until(self.retry_at.unwrap_or_else(tokio::time::Instant::now)),
                    if self.retry_at.is_some() => self.pull().await,
            }
        }
        for (_, local) in self.conns.drain() {
            set_close(&local.close, 1001, "server shutting down");
        }
        self.metrics.connections.set(0);
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Connect {
                user,
                family,
                resume,
                reply,
            } => {
                // The memberships as of the hub's position, which is where
                // this connection's live stream starts.
                let memberships = match self.memberships_at(user, self.head).await {
                    Ok(ids) => ids,
                    Err(error) => {
                        tracing::warn!(%error, "cannot load memberships for a new connection");
                        let _ = reply.send(Err(ConnectError));
                        return;
                    }
                };
                let conn = self.next_conn;
                self.next_conn += 1;
                let (frames, receiver) = mpsc::channel(self.settings.outbound_queue);
                let close = CloseReason::default();
                self.conns.insert(
                    conn,
                    Local {
                        frames,
                        close: close.clone(),
                        durable: 0,
                        floor: self.head,
                        user,
                        family,
                    },
                );
                self.fanout.connect(conn, user, memberships);
                self.metrics.connections.set(self.fanout.len() as i64);
                let start = resume.unwrap_or(self.head);
                self.send(
                    conn,
                    &frame(&ServerFrame::Ready {
                        user_id: user,
                        cursor: start.to_string(),
                    }),
                );
                if let Some(cursor) = resume
                    && self.replay(conn, user, cursor).await.is_err()
                {
                    self.close(conn, 1011, "event log unavailable");
                }
                let connected = Connected {
                    conn,
                    frames: receiver,
                    close,
                };
                if reply.send(Ok(connected)).is_err() {
                    // The connection task is gone already.
                    self.forget(conn);
                }
            }
            Command::Resume {
                conn,
                cursor,
                reply,
            } => {
                let Some(local) = self.conns.get(&conn) else {
                    let _ = reply.send(Err(ResumeError::Store));
                    return;
                };
                // Replaying older events after newer ones would break order.
                if local.durable > 0 {
                    let _ = reply.send(Err(ResumeError::TooLate));
                    return;
                }
                let user = local.user;
                let _ = reply.send(self.replay(conn, user, cursor).await);
            }
        }
    }

    fn forget(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.fanout.disconnect(conn);
        self.metrics.connections.set(self.fanout.len() as i64);
    }

    /// `user`'s conversations as of log position `at`: the current ones,
    /// with their membership changes after `at` undone.
    async fn memberships_at(
        &self,
        user: Uuid,
        at: EventCursor,
    ) -> Result<Vec<Uuid>, crate::store::StoreError> {
        let mut current: std::collections::HashSet<Uuid> = self
            .store
            .conversation_ids(user)
            .await?
            .into_iter()
            .collect();
        let changes = self.store.membership_events_after(user, at).await?;
        let mut decided = std::collections::HashSet::new();
        for change in changes {
            let Some(conversation) = change.conversation_id else {
                continue;
            };
            // The first change after `at` tells what was true at `at`.
            if decided.insert(conversation) {
                match route_of(&change).kind {
                    Kind::MemberAdded => {
                        current.remove(&conversation);
                    }
                    Kind::MemberRemoved | Kind::ConversationDeleted(_) => {
                        current.insert(conversation);
                    }
                    Kind::Other => {}
                }
            }
        }
        Ok(current.into_iter().collect())
    }

    /// Sends `user`'s events after `from` up to the hub's position, walking
    /// their memberships in log order exactly as live routing does (a
    /// one-connection `Fanout`). Later events arrive live. A gap larger than
    /// the connection's queue can hold ends with `resync_required`.
    async fn replay(
        &mut self,
        conn: ConnId,
        user: Uuid,
        from: EventCursor,
    ) -> Result<(), ResumeError> {
        // Past this hub's position is fine (another replica is further
        // ahead), past the log itself is not: such a cursor was never
        // handed out, and honouring it would filter out every event to
        // come. The client starts over from the log's head.
        if from > self.head {
            let log_head = self
                .store
                .event_head()
                .await
                .map_err(|_| ResumeError::Store)?;
            if from > log_head {
                let resync = frame(&ServerFrame::ResyncRequired {
                    cursor: log_head.max(self.head).to_string(),
                });
                self.send(conn, &resync);
                return Ok(());
            }
        }
        let memberships = self
            .memberships_at(user, from)
            .await
            .map_err(|_| ResumeError::Store)?;
        let mut walk = Fanout::default();
        walk.connect(0, user, memberships);
        // Leave room for `ready` and the `resync_required` itself.
        let budget = self
            .settings
            .max_replay
            .min(self.settings.outbound_queue.saturating_sub(2));
        let head = self.head;
        let mut cursor = from;
        let mut sent = 0usize;
        'pages: while cursor < head {
            let events = self
                .store
                .user_events_after(user, cursor, PAGE)
                .await
                .map_err(|_| ResumeError::Store)?;
            let page_full = events.len() as i64 == PAGE;
            for event in &events {
                if event.cursor() > head {
                    break 'pages;
                }
                cursor = event.cursor();
                if walk.route(route_of(event)).is_empty() {
                    continue;
                }
                if sent == budget {
                    let resync = frame(&ServerFrame::ResyncRequired {
                        cursor: head.to_string(),
                    });
                    self.send(conn, &resync);
                    break 'pages;
                }
                self.send_event(conn, &event_frame(event));
                sent += 1;
            }
            if !page_full {
                break;
            }
        }
        // A cursor past this hub's position (from a replica further ahead):
        // skip what the client already has when the live stream gets there.
        if let Some(local) = self.conns.get_mut(&conn) {
            local.floor = local.floor.max(from).max(head);
        }
        self.metrics.replayed.inc_by(sent as u64);
        Ok(())
    }

    /// Reads every final event after the head and dispatches it.
    async fn pull(&mut self) {
        loop {
            let events = match self.store.events_after(self.head, PAGE).await {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the event log; will retry");
                    return;
                }
            };
            for event in &events {
                let conns = self.fanout.route(route_of(event));
                if !conns.is_empty() {
                    let text = event_frame(event);
                    for conn in conns {
                        self.send_live(conn, event, &text);
                    }
                }
                self.head = event.cursor();
            }
            if (events.len() as i64) < PAGE {
                break;
            }
        }
        // Events committed but not final yet get no further wake-up: look
        // again soon, backing off while an old transaction stays open.
        match self.store.events_pending_after(self.head).await {
            Ok(true) => {
                self.retry_at = Some(tokio::time::Instant::now() + self.retry_delay);
                self.retry_delay = (self.retry_delay * 2).min(self.settings.poll_interval);
            }
            Ok(false) | Err(_) => {
                self.retry_at = None;
                self.retry_delay = RETRY_FIRST;
            }
        }
    }

    /// Queues a durable event from the live stream, unless a replay already
    /// sent it (it is at or below the connection's floor).
    fn send_live(&mut self, conn: ConnId, event: &StoredEvent, text: &Arc<str>) {
        if self
            .conns
            .get(&conn)
            .is_some_and(|local| event.cursor() > local.floor)
        {
            self.send_event(conn, text);
        }
    }

    /// Queues a durable event.
    fn send_event(&mut self, conn: ConnId, text: &Arc<str>) {
        if let Some(local) = self.conns.get_mut(&conn) {
            local.durable += 1;
        }
        self.send(conn, text);
    }

    /// Queues a frame; a full queue disconnects the connection.
    fn send(&mut self, conn: ConnId, text: &Arc<str>) {
        let Some(local) = self.conns.get_mut(&conn) else {
            return;
        };
        match local.frames.try_send(text.clone()) {
            Ok(()) => {
                self.metrics.delivered.inc();
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.slow_consumers.inc();
                self.close(conn, 1008, "too slow: outbound queue full");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.forget(conn),
        }
    }

    fn close(&mut self, conn: ConnId, code: u16, reason: &'static str) {
        if let Some(local) = self.conns.remove(&conn) {
            set_close(&local.close, code, reason);
        }
        self.fanout.disconnect(conn);
        self.metrics.connections.set(self.fanout.len() as i64);
    }
}

fn set_close(close: &CloseReason, code: u16, reason: &'static str) {
    let mut slot = close.lock().unwrap_or_else(|p| p.into_inner());
    slot.get_or_insert((code, reason));
}
