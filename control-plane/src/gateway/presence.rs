//! Presence: online / away / offline per user, across devices and replicas.
//!
//! Each device (connection) reports a status that lapses after a TTL unless
//! refreshed by heartbeats, so a replica that dies takes its users' devices
//! with it within the TTL. A user's status is the best of their live
//! devices (online > away > offline). When it changes, the replica that saw
//! the change publishes it to the user's contacts and fellow conversation
//! members (no one else may see it).
//!
//! Each replica also remembers its own connected devices, so that when
//! Redis comes back empty (restarted, failed over, flushed) it writes them
//! all again the moment its client reconnects: connected users do not
//! show as offline until their next heartbeat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::interfaces::{EventInterface, HashesInterface, KeysInterface};
use protocol::gateway::PresenceStatus;
use uuid::Uuid;

use super::bus::{Bus, BusMessage};
use crate::store::Store;

/// A device's status and when it lapses (Unix ms), by device id.
type DeviceStatuses = HashMap<String, (PresenceStatus, u128)>;

/// Where device statuses live.
enum Devices {
    /// One process: device statuses, and last-seen times (Unix ms).
    Memory(
        Mutex<HashMap<Uuid, DeviceStatuses>>,
        Mutex<HashMap<Uuid, u128>>,
    ),
    /// Shared by replicas: hash `cascade:presence:<user>`, field = device,
    /// value = `<status>:<expires unix ms>`.
    Redis(fred::clients::Client),
}

/// Presence across devices and replicas.
pub struct Presence {
    devices: Devices,
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    ttl: Duration,
    /// Distinguishes this replica's connection ids from other replicas'.
    replica: Uuid,
    /// This replica's connected devices and their last reported status:
    /// what it writes again after Redis lost everything.
    local: Mutex<HashMap<(Uuid, u64), PresenceStatus>>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn key(user: Uuid) -> String {
    format!("cascade:presence:{user}")
}

fn parse_status(text: &str) -> Option<PresenceStatus> {
    match text {
        "online" => Some(PresenceStatus::Online),
        "away" => Some(PresenceStatus::Away),
        _ => None,
    }
}

fn status_text(status: PresenceStatus) -> &'static str {
    match status {
        PresenceStatus::Online => "online",
        PresenceStatus::Away => "away",
        PresenceStatus::Offline => "offline",
    }
}

/// The best status among live devices.
fn aggregate<'a>(
    statuses: impl Iterator<Item = &'a (PresenceStatus, u128)>,
    now: u128,
) -> PresenceStatus {
    let mut best = PresenceStatus::Offline;
    for (status, expires) in statuses {
        if *expires > now {
            match status {
                PresenceStatus::Online => return PresenceStatus::Online,
                PresenceStatus::Away => best = PresenceStatus::Away,
                PresenceStatus::Offline => {}
            }
        }
    }
    best
}

impl Presence {
    /// Presence in process memory (embedded mode) or in Redis.
    pub fn new(
        redis: Option<fred::clients::Client>,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        ttl: Duration,
    ) -> Self {
        let devices = match redis {
            Some(client) => Devices::Redis(client),
            None => Devices::Memory(Mutex::default(), Mutex::default()),
        };
        Presence {
            devices,
            bus,
            store,
            ttl,
            replica: Uuid::new_v4(),
            local: Mutex::default(),
        }
    }

    /// Writes every device of this replica again whenever the Redis client
    /// reconnects (a no-op in memory), right away and once more a second
    /// later, when the bus has surely subscribed again and announcements
    /// of the change reach the other replicas. Runs until the client or
    /// this `Presence` goes away.
    pub fn restore_after_reconnects(self: &Arc<Self>) {
        let Devices::Redis(client) = &self.devices else {
            return;
        };
        let mut reconnects = client.reconnect_rx();
        let presence = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                match reconnects.recv().await {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
                for delay in [Duration::ZERO, Duration::from_secs(1)] {
                    tokio::time::sleep(delay).await;
                    let Some(presence) = presence.upgrade() else {
                        return;
                    };
                    let restored = presence.restore().await;
                    if delay.is_zero() {
                        tracing::info!(
                            devices = restored,
                            "Redis reconnected: presence written again"
                        );
                    }
                }
            }
        });
    }

    /// Writes each of this replica's devices again; how many.
    async fn restore(&self) -> usize {
        let devices: Vec<((Uuid, u64), PresenceStatus)> = self
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        for ((user, conn), status) in &devices {
            self.update(*user, *conn, Some(*status)).await;
        }
        devices.len()
    }

    fn device(&self, conn: u64) -> String {
        format!("{}:{conn}", self.replica)
    }

    /// A device reports `status` (or, with `None`, just that it is alive).
    pub async fn report(&self, user: Uuid, conn: u64, status: PresenceStatus) {
        self.update(user, conn, Some(status)).await;
    }

    /// A heartbeat from a device: keeps its status alive.
    pub async fn touch(&self, user: Uuid, conn: u64) {
        self.update(user, conn, None).await;
    }

    /// A device disconnected.
    pub async fn gone(&self, user: Uuid, conn: u64) {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(user, conn));
        let before = self.status(user).await;
        let device = self.device(conn);
        match &self.devices {
            Devices::Memory(map, _) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(devices) = map.get_mut(&user) {
                    devices.remove(&device);
                    if devices.is_empty() {
                        map.remove(&user);
                    }
                }
            }
            Devices::Redis(client) => {
                let _: Result<i64, _> = client.hdel(key(user), device).await;
            }
        }
        self.mark_seen(user).await;
        self.announce_if_changed(user, before).await;
    }

    /// Records that `user` was seen now (kept for 90 days).
    async fn mark_seen(&self, user: Uuid) {
        let now = now_ms();
        match &self.devices {
            Devices::Memory(_, seen) => {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(user, now);
            }
            Devices::Redis(client) => {
                let ninety_days = fred::types::Expiration::EX(90 * 24 * 3600);
                let _: Result<Option<String>, _> = client
                    .set(
                        format!("cascade:last_seen:{user}"),
                        now.to_string(),
                        Some(ninety_days),
                        None,
                        false,
                    )
                    .await;
            }
        }
    }

    /// When `user` was last seen connected (Unix ms), if ever.
    pub async fn last_seen(&self, user: Uuid) -> Option<u128> {
        match &self.devices {
            Devices::Memory(_, seen) => seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&user)
                .copied(),
            Devices::Redis(client) => {
                let stored: Option<String> =
                    client.get(format!("cascade:last_seen:{user}")).await.ok()?;
                stored?.parse().ok()
            }
        }
    }

    /// The user's status now.
    pub async fn status(&self, user: Uuid) -> PresenceStatus {
        let now = now_ms();
        match &self.devices {
            Devices::Memory(map, _) => {
                let map = map.lock().unwrap_or_else(|p| p.into_inner());
                map.get(&user)
                    .map_or(PresenceStatus::Offline, |d| aggregate(d.values(), now))
            }
            Devices::Redis(client) => {
                let fields: HashMap<String, String> =
                    client.hgetall(key(user)).await.unwrap_or_default();
                let parsed: Vec<(PresenceStatus, u128)> = fields
                    .values()
                    .filter_map(|v| {
                        let (status, expires) = v.split_once(':')?;
                        Some((parse_status(status)?, expires.parse().ok()?))
                    })
                    .collect();
                aggregate(parsed.iter(), now)
            }
        }
    }

    async fn update(&self, user: Uuid, conn: u64, status: Option<PresenceStatus>) {
        {
            let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            let entry = local.entry((user, conn)).or_insert(PresenceStatus::Online);
            if let Some(status) = status {
                *entry = status;
            }
        }
        let before = self.status(user).await;
        let device = self.device(conn);
        let expires = now_ms() + self.ttl.as_millis();
        match &self.devices {
            Devices::Memory(map, _) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                let entry = map
                    .entry(user)
                    .or_default()
                    .entry(device)
                    .or_insert((PresenceStatus::Online, expires));
                entry.0 = status.unwrap_or(entry.0);
                entry.1 = expires;
            }
            Devices::Redis(client) => {
                let current = match status {
                    Some(s) => s,
                    None => {
                        let stored: Option<String> =
                            client.hget(key(user), &device).await.unwrap_or_default();
                        stored
                            .and_then(|v| v.split_once(':').and_then(|(s, _)| parse_status(s)))
                            .unwrap_or(PresenceStatus::Online)
                    }
                };
                let value = format!("{}:{expires}", status_text(current));
                let _: Result<i64, _> = client.hset(key(user), (device, value)).await;
                // The whole hash goes once no device refreshes it.
                let ttl_ms = i64::try_from(self.ttl.as_millis() * 2).unwrap_or(i64::MAX);
                let _: Result<bool, _> = client.pexpire(key(user), ttl_ms, None).await;
            }
        }
        self.mark_seen(user).await;
        self.announce_if_changed(user, before).await;
    }

    async fn announce_if_changed(&self, user: Uuid, before: PresenceStatus) {
        let after = self.status(user).await;
        if after == before {
            return;
        }
        let audience = match self.store.presence_audience(user).await {
            Ok(audience) => audience,
            Err(error) => {
                tracing::warn!(%error, "cannot load the presence audience");
                return;
            }
        };
        self.bus
            .publish(BusMessage::Presence {
                user,
                status: after,
                audience,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_live_device_wins() {
        let now = 1_000;
        let live = now + 10;
        let dead = now - 10;
        let agg = |v: &[(PresenceStatus, u128)]| aggregate(v.iter(), now);
        assert_eq!(agg(&[]), PresenceStatus::Offline);
        assert_eq!(agg(&[(PresenceStatus::Away, live)]), PresenceStatus::Away);
        assert_eq!(
            agg(&[(PresenceStatus::Away, live), (PresenceStatus::Online, live)]),
            PresenceStatus::Online
        );
        assert_eq!(
            agg(&[(PresenceStatus::Online, dead), (PresenceStatus::Away, live)]),
            PresenceStatus::Away,
            "a lapsed device no longer counts"
        );
        assert_eq!(
            agg(&[(PresenceStatus::Online, dead)]),
            PresenceStatus::Offline
        );
    }
}
