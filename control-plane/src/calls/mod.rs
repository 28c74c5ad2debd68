//! Calls: the rules of a call's life, the node registry, placement of
//! participants on edges, join tokens and ICE servers, and the background
//! sweeps each replica runs (ring timeouts, nodes that left placement).
//!
//! - [`lifecycle`]: the pure rules (facts + action → change + events).
//! - [`registry`]: node heartbeats in Redis or in process.
//! - [`regions`]: which region a client is in (pure).
//! - [`ice`]: STUN/TURN servers with TURN REST credentials.
//! - [`probe`]: the control plane's own look at an edge a client cannot
//!   reach.
//! - [`view`]: wire shapes and the `call.*` events.
//! - [`config`]: `[control_plane.calls]` and `[control_plane.cluster]`.
//!
//! Invariant: every change to a call goes through
//! `CallStore::update_call`, which applies [`lifecycle::decide`] under the
//! call's row lock; nothing else writes call state. That is what makes
//! "missed exactly once", "busy" and "ends when the last one leaves" hold
//! across replicas and restarts.

pub mod config;
pub mod ice;
pub mod lifecycle;
pub mod metrics;
pub mod probe;
pub mod regions;
pub mod registry;
pub mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::calls::{Grants, JOIN_AUDIENCE, JoinClaims, NodeKind, NodeStatus, VideoCodec};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Tokens;
use crate::gateway::bus::{Bus, BusMessage};
use crate::placement::{self, Placement};
use crate::store::{Call, CallKind, CallVideoCodec, Participant, Store};
use config::CallsConfig;
use ice::IceServer;
use lifecycle::Action;
use regions::{RegionSource, Regions};
use registry::{NodeRegistry, RegistryError};

/// Ring deadlines handled per sweep (the rest wait one interval).
const SWEEP_BATCH: i64 = 200;

/// The edge a participant was given.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EdgeView {
    /// Node id.
    pub id: String,
    /// Its region.
    pub region: String,
    /// WebSocket signaling (`GET /v1/rtc`).
    pub signaling_url: Option<String>,
    /// WHIP publish endpoint.
    pub whip_url: Option<String>,
    /// WHEP subscribe endpoint.
    pub whep_url: Option<String>,
}

/// What `POST /v1/calls/{id}/join` returns (and `call.migrate` carries).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JoinResponse {
    /// The call.
    pub call_id: Uuid,
    /// This device's session in the call (the token's `session`).
    pub session_id: Uuid,
    /// The device this assignment is for.
    pub device_id: String,
    /// The client's region.
    pub region: String,
    /// What decided the client's region.
    pub region_source: RegionSource,
    /// The edge to connect to (in another region when the client's has no
    /// healthy edge with room).
    pub edge: EdgeView,
    /// ICE servers for the peer connection.
    pub ice_servers: Vec<IceServer>,
    /// The join token (EdDSA JWT) the edge verifies.
    pub token: String,
    /// When the token expires (it only needs to open the session).
    #[serde(with = "time::serde::rfc3339")]
    pub token_expires_at: OffsetDateTime,
}

/// The placement rings for one set of edges, reused until it changes.
struct PlacementCache {
    fingerprint: u64,
    placement: Arc<Placement>,
}

/// Calls' shared parts (in `AppState`).
pub struct Calls {
    /// The system of record.
    pub store: Arc<dyn Store>,
    /// Node heartbeats.
    pub registry: Arc<dyn NodeRegistry>,
    /// Settings.
    pub config: CallsConfig,
    /// Client → region.
    pub regions: Regions,
    tokens: Tokens,
    bus: Arc<dyn Bus>,
    placement_regions: Vec<placement::Region>,
    cache: Mutex<Option<PlacementCache>>,
    started: Instant,
    /// Nodes with live sessions that this replica has found missing from
    /// the registry, and since when (see `migrate_off_dead_nodes`).
    absent_since: Mutex<HashMap<String, Instant>>,
    /// Counters and gauges.
    pub metrics: metrics::CallMetrics,
}

impl Calls {
    /// Calls over `store` and `registry`.
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<dyn NodeRegistry>,
        tokens: Tokens,
        bus: Arc<dyn Bus>,
        config: CallsConfig,
        metrics: metrics::CallMetrics,
    ) -> Self {
        Calls {
            regions: Regions::new(&config),
            placement_regions: config
                .regions
                .iter()
                .map(|r| placement::Region {
                    name: r.name.clone(),
                    latitude: r.latitude,
                    longitude: r.longitude,
                })
                .collect(),
            store,
            registry,
            tokens,
            bus,
            config,
            cache: Mutex::new(None),
            started: Instant::now(),
            absent_since: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// How long a heartbeat keeps a node registered: three intervals.
    pub fn node_ttl(&self) -> Duration {
        Duration::from_secs(self.config.heartbeat_interval_secs * 3)
    }

    /// The ring deadline of a call started at `now`, Unix microseconds.
    pub fn ring_deadline(&self, now: OffsetDateTime) -> i64 {
        crate::store::unix_micros(now) + self.config.ring_timeout_secs as i64 * 1_000_000
    }

    /// Wakes every replica's gateway hub (after writes made outside a
    /// request, which the request middleware does not see).
    pub async fn wake(&self) {
        self.bus.publish(BusMessage::EventsWritten).await;
    }

    fn placement_for(&self, edges: &[NodeStatus]) -> Arc<Placement> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for edge in edges {
            edge.id.hash(&mut hasher);
            edge.heartbeat.region.hash(&mut hasher);
            edge.heartbeat.capacity.hash(&mut hasher);
            edge.heartbeat.draining.hash(&mut hasher);
        }
        let fingerprint = hasher.finish();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = cache.as_ref().filter(|c| c.fingerprint == fingerprint) {
            return cached.placement.clone();
        }
        let mut placement = Placement::new(self.placement_regions.clone());
        placement.set_edges(edges.iter().map(|e| placement::Edge {
            id: e.id.clone(),
            region: e.heartbeat.region.clone(),
            capacity: e.heartbeat.capacity,
            draining: e.heartbeat.draining,
        }));
        let placement = Arc::new(placement);
        *cache = Some(PlacementCache {
            fingerprint,
            placement: placement.clone(),
        });
        placement
    }

    /// The live edges (relays excluded), by id.
    pub async fn live_edges(&self) -> Result<Vec<NodeStatus>, RegistryError> {
        Ok(self
            .registry
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.heartbeat.kind == NodeKind::Edge)
            .collect())
    }

    /// The edge for a participant of `call` whose client is in `region`.
    /// A live, non-draining edge with room that already serves the call in
    /// that region is kept (everyone there meets on it even if the ring
    /// changed since); otherwise the ring's pick with bounded load, or the
    /// nearest region's when this one has none.
    pub async fn place(
        &self,
        call: Uuid,
        region: &str,
        current: &[Participant],
    ) -> Result<Option<NodeStatus>, RegistryError> {
        let edges = self.live_edges().await?;
        Ok(self.place_among(&edges, call, region, current))
    }

    /// [`Calls::place`] for a client that cannot reach edge `avoid`: its
    /// region's other edges (the call meets on one of them, or spans two
    /// through the relay), and `avoid` only when nothing else has room.
    pub async fn place_avoiding(
        &self,
        call: Uuid,
        region: &str,
        current: &[Participant],
        avoid: &str,
    ) -> Result<Option<NodeStatus>, RegistryError> {
        let edges = self.live_edges().await?;
        let others: Vec<NodeStatus> = edges.iter().filter(|e| e.id != avoid).cloned().collect();
        let elsewhere: Vec<Participant> = current
            .iter()
            .filter(|p| p.node_id != avoid)
            .cloned()
            .collect();
        Ok(self
            .place_among(&others, call, region, &elsewhere)
            .or_else(|| self.place_among(&edges, call, region, current)))
    }

    /// A client says it cannot reach `node` (its signaling socket dropped,
    /// ICE or DTLS consent failed). The control plane looks for itself:
    /// when the edge does not answer either, it leaves the registry at
    /// once (every replica stops placing on it; a live edge re-registers
    /// with its next heartbeat) and every session on it is moved now, not
    /// after three missed heartbeats. Returns what the probe found.
    pub async fn report_unreachable(self: &Arc<Self>, node: &str) -> probe::Probe {
        let Ok(edges) = self.live_edges().await else {
            return probe::Probe::Unknown;
        };
        let found = match edges.iter().find(|e| e.id == node) {
            // Already out of the registry: the sweep moves its sessions.
            None => probe::Probe::Down,
            Some(edge) => probe::probe(edge.heartbeat.endpoints.signaling_url.as_deref()).await,
        };
        let label = match found {
            probe::Probe::Up => "up",
            probe::Probe::Down => "down",
            probe::Probe::Unknown => "unknown",
        };
        self.metrics
            .unreachable_reports
            .with_label_values(&[label])
            .inc();
        if found == probe::Probe::Down {
            tracing::warn!(node_id = %node, "a client cannot reach this edge and neither can we");
            if let Err(error) = self.registry.remove(node).await {
                tracing::warn!(node_id = %node, %error, "cannot deregister an unreachable edge");
            }
            let calls = self.clone();
            let node = node.to_owned();
            tokio::spawn(async move {
                if let Err(error) = calls.migrate_node_now(&node).await {
                    tracing::warn!(node_id = %node, %error, "cannot move an unreachable edge's sessions");
                }
            });
        }
        found
    }

    /// [`Calls::place`] over edges already read from the registry.
    fn place_among(
        &self,
        edges: &[NodeStatus],
        call: Uuid,
        region: &str,
        current: &[Participant],
    ) -> Option<NodeStatus> {
        let by_id: HashMap<&str, &NodeStatus> = edges.iter().map(|e| (e.id.as_str(), e)).collect();
        let has_room =
            |e: &NodeStatus| !e.heartbeat.draining && e.heartbeat.load < e.heartbeat.capacity;
        if let Some(edge) = current
            .iter()
            .filter(|p| p.region == region)
            .filter_map(|p| by_id.get(p.node_id.as_str()))
            .find(|e| has_room(e) && e.heartbeat.region == region)
        {
            return Some((*edge).clone());
        }
        let placement = self.placement_for(edges);
        let choice = placement.place(call, region, |edge| {
            by_id
                .get(edge.id.as_str())
                .map_or(u32::MAX, |n| n.heartbeat.load)
        });
        choice.and_then(|c| by_id.get(c.edge.id.as_str()).map(|n| (*n).clone()))
    }

    /// The join token, ICE servers and edge for `participant`.
    pub fn join_response(
        &self,
        participant: &Participant,
        call: &Call,
        edge: &NodeStatus,
        client_region: (String, RegionSource),
        now: OffsetDateTime,
    ) -> JoinResponse {
        let expires = now + time::Duration::seconds(self.config.join_token_ttl_secs as i64);
        let claims = JoinClaims {
            iss: protocol::calls::ISSUER.to_owned(),
            aud: JOIN_AUDIENCE.to_owned(),
            sub: participant.user_id,
            call: participant.call_id,
            device: participant.device_id.clone(),
            session: participant.id,
            node: edge.id.clone(),
            region: edge.heartbeat.region.clone(),
            grants: Grants {
                publish_audio: true,
                publish_video: call.kind == CallKind::Video,
                publish_screen: true,
                subscribe: true,
                data: true,
            },
            video_codec: match call.video_codec {
                CallVideoCodec::Vp8 => VideoCodec::Vp8,
                CallVideoCodec::H264 => VideoCodec::H264,
            },
            iat: now.unix_timestamp(),
            exp: expires.unix_timestamp(),
            jti: Uuid::new_v4(),
        };
        let endpoints = &edge.heartbeat.endpoints;
        JoinResponse {
            call_id: participant.call_id,
            session_id: participant.id,
            device_id: participant.device_id.clone(),
            region: client_region.0,
            region_source: client_region.1,
            edge: EdgeView {
                id: edge.id.clone(),
                region: edge.heartbeat.region.clone(),
                signaling_url: endpoints.signaling_url.clone(),
                whip_url: endpoints.whip_url.clone(),
                whep_url: endpoints.whep_url.clone(),
            },
            ice_servers: ice::ice_servers(&self.config, participant.user_id, now),
            token: self.tokens.issue_join(&claims),
            token_expires_at: expires,
        }
    }

    /// One sweep: calls whose ring deadline passed become missed; live
    /// participants on nodes that left placement are moved. Every replica
    /// runs it; the row lock in `update_call` makes each change happen once.
    pub async fn sweep(&self) {
        let now = crate::store::now_utc();
        let mut wrote = false;
        match self
            .store
            .due_ringing_calls(crate::store::unix_micros(now), SWEEP_BATCH)
            .await
        {
            Ok(due) => {
                for id in due {
                    let decided = self
                        .store
                        .update_call(id, None, now, &|facts| {
                            lifecycle::decide(facts, &Action::RingTimeout, now)
                        })
                        .await;
                    match decided {
                        Ok(Ok(change)) => {
                            self.metrics.record(&change);
                            tracing::info!(call_id = %id, "call missed (ring timeout)");
                            wrote = true;
                        }
                        Ok(Err(_)) => {} // Another replica (or an answer) got there first.
                        Err(error) => tracing::warn!(call_id = %id, %error, "ring timeout failed"),
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read due ring deadlines"),
        }
        // Answered calls nobody is in (nobody joined, or their sessions
        // never connected and were removed) end after a join token's life.
        let since = now - time::Duration::seconds(self.config.join_token_ttl_secs as i64);
        match self.store.empty_active_calls(SWEEP_BATCH).await {
            Ok(ids) => {
                for id in ids {
                    let action = Action::Idle { since };
                    if let Ok(Ok(change)) = self
                        .store
                        .update_call(id, None, now, &|facts| {
                            lifecycle::decide(facts, &action, now)
                        })
                        .await
                    {
                        self.metrics.record(&change);
                        tracing::info!(call_id = %id, "answered call ended: nobody in it");
                        wrote = true;
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read empty calls"),
        }
        // After a (re)start the registry may not have heard every node yet:
        // wait a full TTL before treating a silent node as dead.
        if self.started.elapsed() >= self.node_ttl() {
            match self.migrate_off_dead_nodes(now).await {
                Ok(moved) => wrote |= moved > 0,
                Err(error) => tracing::warn!(%error, "cannot check participants' nodes"),
            }
        }
        if wrote {
            self.wake().await;
        }
    }

    /// Moves every live participant whose node is gone or draining to a
    /// fresh placement, with a `call.migrate` event. Returns how many moved.
    async fn migrate_off_dead_nodes(&self, now: OffsetDateTime) -> Result<usize, SweepError> {
        let nodes = self.registry.nodes().await?;
        for kind in [NodeKind::Edge, NodeKind::Relay] {
            let count = nodes.iter().filter(|n| n.heartbeat.kind == kind).count();
            let label = if kind == NodeKind::Edge {
                "edge"
            } else {
                "relay"
            };
            self.metrics
                .nodes
                .with_label_values(&[label])
                .set(count as i64);
        }
        let edges: Vec<NodeStatus> = nodes
            .into_iter()
            .filter(|n| n.heartbeat.kind == NodeKind::Edge)
            .collect();
        let present: HashMap<&str, &NodeStatus> =
            edges.iter().map(|e| (e.id.as_str(), e)).collect();
        let with_sessions = self.store.participant_nodes().await?;
        // A node missing from the registry moves its sessions only once it
        // has stayed missing for a heartbeat interval: after a Redis flush
        // or failover every live node is back within one, and must not see
        // its participants migrated.
        let confirmed_dead: Vec<String> = {
            let mut absent = self.absent_since.lock().unwrap_or_else(|e| e.into_inner());
            absent.retain(|node, _| {
                with_sessions.contains(node) && !present.contains_key(node.as_str())
            });
            let grace = Duration::from_secs(self.config.heartbeat_interval_secs);
            with_sessions
                .iter()
                .filter(|node| !present.contains_key(node.as_str()))
                .filter(|node| {
                    absent
                        .entry((*node).clone())
                        .or_insert_with(Instant::now)
                        .elapsed()
                        >= grace
                })
                .cloned()
                .collect()
        };
        let mut moved = 0;
        for node in with_sessions {
            let draining = present
                .get(node.as_str())
                .is_some_and(|e| e.heartbeat.draining);
            if !draining && !confirmed_dead.contains(&node) {
                continue;
            }
            moved += self.migrate_sessions_of(&node, &edges, now).await?;
        }
        Ok(moved)
    }

    /// Moves every live session on `node` now, without waiting for the
    /// sweep: the node restarted (a new incarnation: its sessions are gone
    /// even though it is registered) or was found unreachable. The node may
    /// be placed on again if it is live. Returns how many moved, and wakes
    /// the hubs.
    pub async fn migrate_node_now(&self, node: &str) -> Result<usize, SweepError> {
        let edges = self.live_edges().await?;
        let now = crate::store::now_utc();
        let moved = self.migrate_sessions_of(node, &edges, now).await?;
        if moved > 0 {
            self.wake().await;
        }
        Ok(moved)
    }

    /// Moves each live session on `node` to a fresh placement among
    /// `edges`, with a `call.migrate` event for its user.
    async fn migrate_sessions_of(
        &self,
        node: &str,
        edges: &[NodeStatus],
        now: OffsetDateTime,
    ) -> Result<usize, SweepError> {
        let node = node.to_owned();
        let mut moved = 0;
        for participant in self.store.node_participants(&node).await? {
            let Some(call) = self.store.call(participant.call_id).await? else {
                continue;
            };
            let current = self.store.live_participants(call.id).await?;
            let others: Vec<Participant> =
                current.into_iter().filter(|p| p.node_id != node).collect();
            let Some(edge) = self.place_among(edges, call.id, &participant.region, &others) else {
                tracing::warn!(call_id = %call.id, node_id = %node, "no edge to migrate to");
                continue;
            };
            let moved_participant = Participant {
                node_id: edge.id.clone(),
                ..participant.clone()
            };
            let response = self.join_response(
                &moved_participant,
                &call,
                &edge,
                (participant.region.clone(), RegionSource::Default),
                now,
            );
            let event = view::migrate_event(
                &participant,
                &node,
                serde_json::to_value(&response).unwrap_or_default(),
            );
            let action = Action::Migrate {
                session: participant.id,
                from_node: node.clone(),
                to_node: edge.id.clone(),
                event,
            };
            if let Ok(Ok(_)) = self
                .store
                .update_call(call.id, None, now, &|facts| {
                    lifecycle::decide(facts, &action, now)
                })
                .await
            {
                self.metrics.migrated.inc();
                tracing::info!(
                    call_id = %call.id, user_id = %participant.user_id,
                    from_node = %node, to_node = %edge.id, "participant migrated"
                );
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Runs [`Calls::sweep`] every `sweep_interval_ms` until shutdown.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: service::Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.sweep_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep().await,
                () = &mut stop => break,
            }
        }
    }
}

/// Errors of the background sweep (logged, never returned to anyone).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}
