//! The node registry: edges and relays heartbeat their whole state; a node
//! whose heartbeat is older than its TTL (three intervals) is gone. Redis
//! holds it for a cluster of replicas (one key per node with a TTL that
//! Redis's own clock expires, plus a set of ids to list them); the embedded
//! default keeps it in process. Either way it is rebuilt from heartbeats
//! alone, so losing it costs one heartbeat interval, not data.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::interfaces::{KeysInterface, LuaInterface, SetsInterface};
use fred::types::Expiration;
use protocol::calls::{NodeHeartbeat, NodeStatus};
use uuid::Uuid;

const IDS_KEY: &str = "cascade:nodes";

/// Removes an id from the set only if its node key is (still) gone.
const PRUNE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.call('SREM', KEYS[2], ARGV[1])
end
return 0
";

fn node_key(id: &str) -> String {
    format!("cascade:node:{id}")
}

/// A node's last incarnation, kept far longer than its registration so a
/// node that restarts after its entry expired is still known as restarted.
fn incarnation_key(id: &str) -> String {
    format!("cascade:node-incarnation:{id}")
}

/// How long a node's last incarnation is remembered.
const INCARNATION_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The registry backend failed (Redis unreachable).
#[derive(Debug, thiserror::Error)]
#[error("node registry unavailable")]
pub struct RegistryError(#[source] pub fred::error::Error);

/// Where node heartbeats live.
#[async_trait]
pub trait NodeRegistry: Send + Sync + 'static {
    /// Records `node`'s heartbeat; it lives `ttl` unless renewed. Returns
    /// the incarnation the node had before when this heartbeat carries a
    /// different one (it restarted), atomically: of two replicas taking
    /// heartbeats of one restart, exactly one hears of it.
    async fn heartbeat(
        &self,
        id: &str,
        node: &NodeHeartbeat,
        ttl: Duration,
    ) -> Result<Option<Uuid>, RegistryError>;
    /// Forgets a node at once (it deregistered).
    async fn remove(&self, id: &str) -> Result<bool, RegistryError>;
    /// Every live node, by id.
    async fn nodes(&self) -> Result<Vec<NodeStatus>, RegistryError>;
}

/// In process (embedded mode: one replica).
#[derive(Default)]
pub struct MemoryRegistry {
    nodes: Mutex<HashMap<String, (NodeHeartbeat, Instant)>>,
    incarnations: Mutex<HashMap<String, Uuid>>,
}

/// The previous incarnation if `new` replaces a different one.
fn restarted(previous: Option<Uuid>, new: Option<Uuid>) -> Option<Uuid> {
    match (previous, new) {
        (Some(old), Some(new)) if old != new => Some(old),
        _ => None,
    }
}

#[async_trait]
impl NodeRegistry for MemoryRegistry {
    async fn heartbeat(
        &self,
        id: &str,
        node: &NodeHeartbeat,
        ttl: Duration,
    ) -> Result<Option<Uuid>, RegistryError> {
        let previous = match node.incarnation {
            Some(new) => {
                let mut known = self.incarnations.lock().unwrap_or_else(|e| e.into_inner());
                known.insert(id.to_owned(), new)
            }
            None => None,
        };
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.insert(id.to_owned(), (node.clone(), Instant::now() + ttl));
        Ok(restarted(previous, node.incarnation))
    }

    async fn remove(&self, id: &str) -> Result<bool, RegistryError> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        Ok(nodes.remove(id).is_some())
    }

    async fn nodes(&self) -> Result<Vec<NodeStatus>, RegistryError> {
        let now = Instant::now();
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|_, (_, expires)| *expires > now);
        let mut list: Vec<NodeStatus> = nodes
            .iter()
            .map(|(id, (heartbeat, _))| NodeStatus {
                id: id.clone(),
                heartbeat: heartbeat.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }
}

/// In Redis (any number of replicas).
pub struct RedisRegistry {
    client: fred::clients::Client,
}

impl RedisRegistry {
    /// Over a connected client.
    pub fn new(client: fred::clients::Client) -> Self {
        RedisRegistry { client }
    }
}

#[async_trait]
impl NodeRegistry for RedisRegistry {
    async fn heartbeat(
        &self,
        id: &str,
        node: &NodeHeartbeat,
        ttl: Duration,
    ) -> Result<Option<Uuid>, RegistryError> {
        let previous = match node.incarnation {
            // SET … GET: the old value and the new one in one step.
            Some(new) => {
                let memory_ms = i64::try_from(INCARNATION_MEMORY.as_millis()).unwrap_or(i64::MAX);
                let old: Option<String> = self
                    .client
                    .set(
                        incarnation_key(id),
                        new.to_string(),
                        Some(Expiration::PX(memory_ms)),
                        None,
                        true,
                    )
                    .await
                    .map_err(RegistryError)?;
                old.and_then(|o| o.parse::<Uuid>().ok())
            }
            None => None,
        };
        let body = serde_json::to_string(node).unwrap_or_default();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let _: () = self
            .client
            .set(
                node_key(id),
                body,
                Some(Expiration::PX(ttl_ms)),
                None,
                false,
            )
            .await
            .map_err(RegistryError)?;
        let _: i64 = self.client.sadd(IDS_KEY, id).await.map_err(RegistryError)?;
        Ok(restarted(previous, node.incarnation))
    }

    async fn remove(&self, id: &str) -> Result<bool, RegistryError> {
        let removed: i64 = self.client.del(node_key(id)).await.map_err(RegistryError)?;
        let _: i64 = self.client.srem(IDS_KEY, id).await.map_err(RegistryError)?;
        Ok(removed > 0)
    }

    async fn nodes(&self) -> Result<Vec<NodeStatus>, RegistryError> {
        let mut ids: Vec<String> = self.client.smembers(IDS_KEY).await.map_err(RegistryError)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let keys: Vec<String> = ids.iter().map(|id| node_key(id)).collect();
        let bodies: Vec<Option<String>> = self.client.mget(keys).await.map_err(RegistryError)?;
        let mut live = Vec::new();
        for (id, body) in ids.into_iter().zip(bodies) {
            match body.and_then(|b| serde_json::from_str::<NodeHeartbeat>(&b).ok()) {
                Some(heartbeat) => live.push(NodeStatus { id, heartbeat }),
                None => {
                    // Expired: drop it from the id set, unless a heartbeat
                    // brought it back since the MGET (checked atomically).
                    let _: Result<i64, _> = self
                        .client
                        .eval(
                            PRUNE_SCRIPT,
                            vec![node_key(&id), IDS_KEY.to_owned()],
                            vec![id],
                        )
                        .await;
                }
            }
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::calls::{NodeEndpoints, NodeKind};

    fn beat(incarnation: Option<Uuid>) -> NodeHeartbeat {
        NodeHeartbeat {
            kind: NodeKind::Edge,
            region: "eu".into(),
            endpoints: NodeEndpoints::default(),
            capacity: 10,
            load: 0,
            draining: false,
            sessions: None,
            usage: None,
            incarnation,
        }
    }

    #[tokio::test]
    async fn a_new_incarnation_is_a_restart_and_is_reported_once() {
        let registry = MemoryRegistry::default();
        let ttl = Duration::from_secs(3);
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(
            registry
                .heartbeat("e", &beat(Some(first)), ttl)
                .await
                .unwrap(),
            None,
            "first sight"
        );
        assert_eq!(
            registry
                .heartbeat("e", &beat(Some(first)), ttl)
                .await
                .unwrap(),
            None,
            "the same boot"
        );
        assert_eq!(
            registry
                .heartbeat("e", &beat(Some(second)), ttl)
                .await
                .unwrap(),
            Some(first),
            "a new boot id: it restarted"
        );
        assert_eq!(
            registry
                .heartbeat("e", &beat(Some(second)), ttl)
                .await
                .unwrap(),
            None,
            "reported once"
        );
        // Remembered after the registration is gone (expired or removed).
        registry.remove("e").await.unwrap();
        let third = Uuid::new_v4();
        assert_eq!(
            registry
                .heartbeat("e", &beat(Some(third)), ttl)
                .await
                .unwrap(),
            Some(second)
        );
        // A node that sends none is never taken for restarted.
        assert_eq!(
            registry.heartbeat("old", &beat(None), ttl).await.unwrap(),
            None
        );
        assert_eq!(
            registry
                .heartbeat("other", &beat(Some(first)), ttl)
                .await
                .unwrap(),
            None
        );
    }
}
