//! Messages between replicas: "new events were written" wake-ups and
//! ephemeral events (typing, presence) that are never stored.
//!
//! Durable events never travel here: every replica reads them from the log,
//! so a lost bus message costs latency (the next poll picks the events up),
//! never data. With Redis, messages cross replicas by pub/sub (the
//! subscriber re-subscribes after Redis restarts); without it, a broadcast
//! channel inside the process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
        /// The revoked logins, whose access tokens every replica refuses
        /// from now on (absent from replicas older than this field).
        #[serde(default)]
        families: Vec<Uuid>,
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
    subscriber: SubscriberClient,
    /// Whether the subscription is active on the current connection (false
    /// from a reconnect until the channel is subscribed again).
    subscribed: Arc<AtomicBool>,
}

impl RedisBus {
    /// Subscribes in the background (again after every reconnect) and
    /// publishes with `publisher`.
    pub fn start(
        url: &str,
        publisher: fred::clients::Client,
    ) -> Result<Arc<Self>, fred::error::Error> {
        let subscriber: SubscriberClient = Builder::from_config(RedisClientConfig::from_url(url)?)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
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
        let subscribed = Arc::new(AtomicBool::new(false));
        let (client, flag) = (subscriber.clone(), subscribed.clone());
        tokio::spawn(async move {
            // Subscribe now and after every reconnect, and say so: the
            // readiness check reports a replica whose fan-out is deaf.
            let mut reconnects = client.reconnect_rx();
            let mut errors = client.error_rx();
            let _connection = client.connect();
            let _ = client.wait_for_connect().await;
            loop {
                flag.store(false, Ordering::SeqCst);
                while let Err(error) = client.subscribe(CHANNEL).await {
                    tracing::warn!(%error, "cannot subscribe to the gateway bus yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // Every failed reconnection attempt of an outage queued an
                // error (and maybe a reconnect) event: they are about the
                // connections before this subscription. Left queued, the
                // first would mark this one deaf, and no reconnect would
                // come to undo it (found with a 1 s Redis outage).
                while errors.try_recv().is_ok() {}
                while reconnects.try_recv().is_ok() {}
                flag.store(true, Ordering::SeqCst);
                tokio::select! {
                    _ = reconnects.recv() => {}
                    _ = errors.recv() => {
                        flag.store(false, Ordering::SeqCst);
                        if !client.is_connected() {
                            let _ = reconnects.recv().await;
                        }
                    }
                }
            }
        });
        Ok(Arc::new(RedisBus {
            publisher,
            local,
            subscriber,
            subscribed,
        }))
    }

    /// Whether wake-ups from other replicas can reach this one now.
    pub fn listening(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst) && self.subscriber.is_connected()
    }
}

/// Readiness of the bus subscription.
pub struct BusCheck(pub Arc<RedisBus>);

impl service::ReadinessCheck for BusCheck {
    fn name(&self) -> &'static str {
        "redis_subscription"
    }

    fn check(&self) -> service::ops::BoxFuture<'_, Result<(), String>> {
        let listening = self.0.listening();
        Box::pin(async move {
            if listening {
                Ok(())
            } else {
                Err("not subscribed to the gateway bus (Redis reconnecting)".to_owned())
            }
        })
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
