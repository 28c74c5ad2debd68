//! Messages between replicas: "new events were written" wake-ups and
//! ephemeral events (typing, presence) that are never stored.
//!
//! Durable events never travel here: every replica reads them from the log,
//! so a lost bus message costs latency (the next poll picks the events up),
//! never data. With Redis, messages cross replicas by pub/sub (the
//! subscriber re-subscribes after Redis restarts); without it, a broadcast
//! channel inside the process.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::{Builder, Config as RedisClientConfig, ReconnectPolicy};
use protocol::gateway::PresenceStatus;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

/// The Redis channel all replicas share.
const CHANNEL: &str = "cascade:gateway";
/// Messages a slow hub may fall behind by before it skips some (it then
/// polls the log, so only ephemeral events are lost).
const LOCAL_CAPACITY: usize = 4096;

/// A message between replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum BusMessage {
    /// Durable events were committed: read the log now.
    EventsWritten,
    /// Someone is typing in a conversation.
    Typing {
        /// Where.
        conversation: Uuid,
        /// Who.
        user: Uuid,
    },
    /// Logins were revoked (logout, password change): close their sockets.
    Revoked {
        /// Whose.
        user: Uuid,
        /// Only this login (refresh-token family); `None`: every login ...
        family: Option<Uuid>,
        /// ... except this one.
        except: Option<Uuid>,
    },
    /// A user's aggregate presence changed.
    Presence {
        /// Whose.
        user: Uuid,
        /// Now.
        status: PresenceStatus,
        /// Who may see it (contacts and fellow members).
        audience: Vec<Uuid>,
    },
}

/// Publishes to and receives from every replica (itself included).
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Sends to every replica. Best effort: failures are logged.
    async fn publish(&self, message: BusMessage);
    /// Messages from now on.
    fn subscribe(&self) -> broadcast::Receiver<BusMessage>;
}

/// The embedded bus: one process, one broadcast channel.
pub struct LocalBus {
    sender: broadcast::Sender<BusMessage>,
}

impl Default for LocalBus {
    fn default() -> Self {
        LocalBus {
            sender: broadcast::channel(LOCAL_CAPACITY).0,
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, message: BusMessage) {
        // No receivers is fine (no hub running yet).
        let _ = self.sender.send(message);
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.sender.subscribe()
    }
}

/// The bus over Redis pub/sub.
pub struct RedisBus {
    publisher: fred::clients::Client,
    local: broadcast::Sender<BusMessage>,
}

impl RedisBus {
    /// Subscribes (in the background, re-subscribing after reconnects) and
    /// publishes with `publisher`.
    pub fn start(
        url: &str,
        publisher: fred::clients::Client,
    ) -> Result<Arc<Self>, fred::error::Error> {
        let subscriber: SubscriberClient = Builder::from_config(RedisClientConfig::from_url(url)?)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
            .build_subscriber_client()?;
        let (local, _) = broadcast::channel(LOCAL_CAPACITY);
        let forward = local.clone();
        let mut messages = subscriber.message_rx();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        let Some(text) = message.value.as_string() else {
                            continue;
                        };
                        match serde_json::from_str::<BusMessage>(&text) {
                            Ok(parsed) => {
                                let _ = forward.send(parsed);
                            }
                            Err(error) => {
                                tracing::warn!(%error, "ignoring a malformed bus message")
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::warn!(skipped, "bus subscriber lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        tokio::spawn(async move {
            // connect() drives the connection and its reconnections;
            // manage_subscriptions() re-subscribes after each reconnect.
            let _connection = subscriber.connect();
            let _resubscriber = subscriber.manage_subscriptions();
            loop {
                match subscriber.subscribe(CHANNEL).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, "cannot subscribe to the gateway bus yet; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            // Keep the client alive for the life of the process.
            std::future::pending::<()>().await;
        });
        Ok(Arc::new(RedisBus { publisher, local }))
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, message: BusMessage) {
        let Ok(text) = serde_json::to_string(&message) else {
            return;
        };
        if let Err(error) = self.publisher.publish::<i64, _, _>(CHANNEL, text).await {
            tracing::debug!(%error, "bus publish failed; replicas fall back to polling");
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.local.subscribe()
    }
}
