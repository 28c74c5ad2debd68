//! Talking to the control plane: join-token keys (JWKS, refetched when a
//! token names a key we lack, at most every few seconds), heartbeats with
//! load and connected sessions, deregistration, and reports of sessions
//! that ended.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use protocol::calls::{
    HeartbeatAck, JoinClaims, NodeEndpoints, NodeHeartbeat, NodeKind, NodeUsage, ParticipantGone,
};
use tokio::sync::{Mutex, mpsc};

use crate::config::EdgeConfig;
use crate::join_token::{JoinTokenError, JoinTokenVerifier};
use crate::worker::{Command, Gone, WorkerHandle, WorkerShared};

/// Least time between two JWKS fetches caused by unknown key ids.
const JWKS_REFETCH: Duration = Duration::from_secs(5);

/// The control plane as this node sees it.
pub struct ControlPlaneLink {
    http: reqwest::Client,
    /// The control plane's replicas (or load balancers), in the order the
    /// operator gave; empty when standalone.
    bases: Vec<String>,
    /// The one that answered last, tried first.
    preferred: AtomicUsize,
    /// This process's boot id, sent with every heartbeat: a restart is a
    /// new one, and the control plane moves the sessions we lost.
    incarnation: uuid::Uuid,
    credential: Option<String>,
    node_id: String,
    verifier: RwLock<Option<JoinTokenVerifier>>,
    last_fetch: Mutex<Option<Instant>>,
    /// Totals at the previous heartbeat, for rates.
    last_totals: std::sync::Mutex<Option<Totals>>,
}

/// Cumulative counters summed over workers, and when they were read.
#[derive(Clone, Copy)]
struct Totals {
    at: Instant,
    datagrams_in: u64,
    datagrams_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    cpu_secs: f64,
}

/// One of the workers' shared numbers, summed over workers.
fn sum_over(workers: &[WorkerHandle], field: fn(&WorkerShared) -> &AtomicU64) -> u64 {
    workers
        .iter()
        .map(|w| field(&w.shared).load(Ordering::Relaxed))
        .sum()
}

impl Totals {
    fn read(workers: &[WorkerHandle]) -> Totals {
        let sum = |f| sum_over(workers, f);
        Totals {
            at: Instant::now(),
            datagrams_in: sum(|s| &s.datagrams_in),
            datagrams_out: sum(|s| &s.datagrams_out),
            bytes_in: sum(|s| &s.bytes_in),
            bytes_out: sum(|s| &s.bytes_out),
            cpu_secs: crate::worker::proc_cpu_secs("/proc/self/stat").unwrap_or(0.0),
        }
    }
}

/// Why a join token was refused here.
#[derive(Debug, thiserror::Error)]
pub enum TokenRefused {
    /// No keys to check it with (standalone, or the control plane is away).
    #[error("no join-token keys available")]
    NoKeys,
    /// The token is not valid for this node.
    #[error(transparent)]
    Invalid(#[from] JoinTokenError),
}

impl ControlPlaneLink {
    /// A link for `config` (nothing is fetched yet).
    pub fn new(config: &EdgeConfig) -> Self {
        ControlPlaneLink {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            bases: config
                .control_plane_url
                .iter()
                .chain(&config.control_plane_fallback_urls)
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            preferred: AtomicUsize::new(0),
            incarnation: uuid::Uuid::new_v4(),
            credential: config.credential.clone(),
            node_id: config.node_id.clone(),
            verifier: RwLock::new(None),
            last_fetch: Mutex::new(None),
            last_totals: std::sync::Mutex::new(None),
        }
    }

    /// Sends the request `build` makes for a base URL to the preferred
    /// replica, then to each other one while they fail to answer (no
    /// connection, a timeout, or a 502/503/504 from a proxy in front of a
    /// dead one). `None` when standalone.
    async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Option<Result<reqwest::Response, reqwest::Error>> {
        let count = self.bases.len();
        let first = self.preferred.load(Ordering::Relaxed) % count.max(1);
        let mut last = None;
        for i in 0..count {
            let index = (first + i) % count;
            let result = build(&self.bases[index]).send().await;
            let unanswered = match &result {
                Err(_) => true,
                Ok(r) => matches!(r.status().as_u16(), 502..=504),
            };
            if !unanswered {
                if index != first {
                    tracing::info!(control_plane = %self.bases[index], "control plane failover");
                }
                self.preferred.store(index, Ordering::Relaxed);
                return Some(result);
            }
            last = Some(result);
        }
        last
    }

    /// This process's incarnation (boot id).
    pub fn incarnation(&self) -> uuid::Uuid {
        self.incarnation
    }

    /// Fetches the JWK Set (again), unless one was fetched very recently.
    pub async fn refresh_keys(&self) -> bool {
        if self.bases.is_empty() {
            return false;
        }
        {
            let mut last = self.last_fetch.lock().await;
            if last.is_some_and(|at| at.elapsed() < JWKS_REFETCH)
                && self.verifier.read().map(|v| v.is_some()).unwrap_or(false)
            {
                return false;
            }
            *last = Some(Instant::now());
        }
        let fetched = async {
            let body = self
                .send(|base| self.http.get(format!("{base}/.well-known/jwks.json")))
                .await?
                .ok()?
                .error_for_status()
                .ok()?
                .bytes()
                .await
                .ok()?;
            JoinTokenVerifier::from_jwks(self.node_id.clone(), &body).ok()
        }
        .await;
        match fetched {
            Some(verifier) => {
                if let Ok(mut slot) = self.verifier.write() {
                    *slot = Some(verifier);
                }
                true
            }
            None => {
                tracing::warn!("cannot fetch join-token keys from the control plane");
                false
            }
        }
    }

    /// The claims of a join token valid for this node; refetches the keys
    /// once if the token names one we do not know.
    pub async fn verify(&self, token: &str) -> Result<JoinClaims, TokenRefused> {
        let first = self.verify_now(token);
        match first {
            Err(TokenRefused::NoKeys | TokenRefused::Invalid(JoinTokenError::UnknownKey(_))) => {
                self.refresh_keys().await;
                self.verify_now(token)
            }
            other => other,
        }
    }

    fn verify_now(&self, token: &str) -> Result<JoinClaims, TokenRefused> {
        let guard = self.verifier.read().map_err(|_| TokenRefused::NoKeys)?;
        let verifier = guard.as_ref().ok_or(TokenRefused::NoKeys)?;
        Ok(verifier.verify(token)?)
    }

    /// The node's usage since the previous call.
    fn usage(&self, workers: &[WorkerHandle]) -> NodeUsage {
        let now = Totals::read(workers);
        let mut last = self.last_totals.lock().unwrap_or_else(|e| e.into_inner());
        let before = last.replace(now).unwrap_or(now);
        let secs = now.at.saturating_duration_since(before.at).as_secs_f64();
        let rate = |a: u64, b: u64| {
            if secs > 0.0 {
                (a.saturating_sub(b) as f64 / secs) as u64
            } else {
                0
            }
        };
        let gauge = |f| sum_over(workers, f);
        NodeUsage {
            tracks: gauge(|s| &s.tracks),
            subscriptions: gauge(|s| &s.subscriptions),
            packets_in_per_sec: rate(now.datagrams_in, before.datagrams_in),
            packets_out_per_sec: rate(now.datagrams_out, before.datagrams_out),
            bits_in_per_sec: rate(now.bytes_in, before.bytes_in) * 8,
            bits_out_per_sec: rate(now.bytes_out, before.bytes_out) * 8,
            cpu_millicores: if secs > 0.0 {
                ((now.cpu_secs - before.cpu_secs).max(0.0) / secs * 1000.0) as u64
            } else {
                0
            },
        }
    }

    /// Sends one heartbeat. Returns whether the control plane took it.
    pub async fn heartbeat(
        &self,
        config: &EdgeConfig,
        workers: &[WorkerHandle],
        draining: bool,
    ) -> bool {
        let Some(credential) = &self.credential else {
            return false;
        };
        let load: u64 = workers
            .iter()
            .map(|w| w.shared.participants.load(Ordering::Relaxed))
            .sum();
        let sessions = workers
            .iter()
            .flat_map(|w| {
                w.shared
                    .sessions
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_default()
            })
            .collect();
        let signaling = signaling_base(config);
        let usage = self.usage(workers);
        let body = NodeHeartbeat {
            kind: NodeKind::Edge,
            region: config.region.clone(),
            endpoints: NodeEndpoints {
                signaling_url: Some(format!("{signaling}/v1/rtc")),
                whip_url: None,
                whep_url: None,
                relay_addr: None,
            },
            capacity: config.capacity,
            load: u32::try_from(load).unwrap_or(u32::MAX),
            draining,
            sessions: Some(sessions),
            usage: Some(usage),
            incarnation: Some(self.incarnation),
        };
        let sent = self
            .send(|base| {
                self.http
                    .put(format!("{base}/internal/v1/nodes/{}", self.node_id))
                    .bearer_auth(credential)
                    .json(&body)
            })
            .await;
        match sent {
            None => false,
            Some(Ok(response)) if response.status().is_success() => {
                // Sessions the control plane no longer has here (left,
                // removed, call ended, moved away) are closed at once.
                match response.json::<HeartbeatAck>().await {
                    Ok(ack) => {
                        for session in ack.close_sessions {
                            for worker in workers {
                                let _ = worker.commands.send(Command::Revoke { session }).await;
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "unreadable heartbeat answer"),
                }
                true
            }
            Some(Ok(response)) => {
                tracing::warn!(status = %response.status(), "the control plane refused a heartbeat");
                false
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "heartbeat failed");
                false
            }
        }
    }

    /// Leaves the registry (shutdown).
    pub async fn deregister(&self) {
        let Some(credential) = &self.credential else {
            return;
        };
        let _ = self
            .send(|base| {
                self.http
                    .delete(format!("{base}/internal/v1/nodes/{}", self.node_id))
                    .bearer_auth(credential)
            })
            .await;
    }

    /// Reports sessions that ended until the channel closes.
    pub async fn report_gone(self: Arc<Self>, mut gone: mpsc::UnboundedReceiver<Gone>) {
        while let Some(info) = gone.recv().await {
            let Some(credential) = &self.credential else {
                continue;
            };
            let body = ParticipantGone {
                call_id: info.call,
                session_id: info.session,
            };
            let sent = self
                .send(|base| {
                    self.http
                        .post(format!(
                            "{base}/internal/v1/nodes/{}/participants/gone",
                            self.node_id
                        ))
                        .bearer_auth(credential)
                        .json(&body)
                })
                .await;
            if let Some(Err(error)) = sent {
                // The heartbeat's session list repairs what a lost report misses.
                tracing::warn!(%error, session = %info.session, "could not report a session gone");
            }
        }
    }
}

/// The base URL clients reach the signaling socket at.
pub fn signaling_base(config: &EdgeConfig) -> String {
    config
        .public_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("ws://{}", config.listen))
}
