//! Talking to the control plane: join-token keys (JWKS, refetched when a
//! token names a key we lack, at most every few seconds), heartbeats with
//! load and connected sessions, deregistration, and reports of sessions
//! that ended.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use protocol::calls::{JoinClaims, NodeEndpoints, NodeHeartbeat, NodeKind, ParticipantGone};
use tokio::sync::{Mutex, mpsc};

use crate::config::EdgeConfig;
use crate::join_token::{JoinTokenError, JoinTokenVerifier};
use crate::worker::{Gone, WorkerHandle};

/// Least time between two JWKS fetches caused by unknown key ids.
const JWKS_REFETCH: Duration = Duration::from_secs(5);

/// The control plane as this node sees it.
pub struct ControlPlaneLink {
    http: reqwest::Client,
    base: Option<String>,
    credential: Option<String>,
    node_id: String,
    verifier: RwLock<Option<JoinTokenVerifier>>,
    last_fetch: Mutex<Option<Instant>>,
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
            base: config
                .control_plane_url
                .clone()
                .map(|u| u.trim_end_matches('/').to_owned()),
            credential: config.credential.clone(),
            node_id: config.node_id.clone(),
            verifier: RwLock::new(None),
            last_fetch: Mutex::new(None),
        }
    }

    /// Fetches the JWK Set (again), unless one was fetched very recently.
    pub async fn refresh_keys(&self) -> bool {
        let Some(base) = &self.base else {
            return false;
        };
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
                .http
                .get(format!("{base}/.well-known/jwks.json"))
                .send()
                .await
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

    /// Sends one heartbeat. Returns whether the control plane took it.
    pub async fn heartbeat(
        &self,
        config: &EdgeConfig,
        workers: &[WorkerHandle],
        draining: bool,
    ) -> bool {
        let (Some(base), Some(credential)) = (&self.base, &self.credential) else {
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
        };
        let sent = self
            .http
            .put(format!("{base}/internal/v1/nodes/{}", self.node_id))
            .bearer_auth(credential)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => true,
            Ok(response) => {
                tracing::warn!(status = %response.status(), "the control plane refused a heartbeat");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "heartbeat failed");
                false
            }
        }
    }

    /// Leaves the registry (shutdown).
    pub async fn deregister(&self) {
        let (Some(base), Some(credential)) = (&self.base, &self.credential) else {
            return;
        };
        let _ = self
            .http
            .delete(format!("{base}/internal/v1/nodes/{}", self.node_id))
            .bearer_auth(credential)
            .send()
            .await;
    }

    /// Reports sessions that ended until the channel closes.
    pub async fn report_gone(self: Arc<Self>, mut gone: mpsc::UnboundedReceiver<Gone>) {
        while let Some(info) = gone.recv().await {
            let (Some(base), Some(credential)) = (&self.base, &self.credential) else {
                continue;
            };
            let body = ParticipantGone {
                call_id: info.call,
                session_id: info.session,
            };
            let sent = self
                .http
                .post(format!(
                    "{base}/internal/v1/nodes/{}/participants/gone",
                    self.node_id
                ))
                .bearer_auth(credential)
                .json(&body)
                .send()
                .await;
            if let Err(error) = sent {
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
