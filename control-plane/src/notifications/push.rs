//! The Web Push outbox worker (RFC 8030): every replica runs one. It
//! claims pending notifications, and for each whose user has no live
//! connection anywhere (presence), encrypts it for each of their browsers'
//! subscriptions and POSTs it to the push service with a VAPID header.
//!
//! Push endpoints come from users, so the worker only talks to the push
//! services in `endpoint_hosts` over HTTPS (no requests to internal
//! addresses on a user's say-so), never follows redirects, and bounds every
//! request's time.

use std::sync::Arc;
use std::time::Duration;

use protocol::gateway::PresenceStatus;
use serde::{Deserialize, Serialize};
use service::{Validate, Validator};
use tokio::sync::Notify;
use url::Url;

use super::webpush::{self, Vapid};
use crate::config::check_range;
use crate::gateway::presence::Presence;
use crate::store::{
    Notification, PushOutcome, PushSubscription, SigningKeyRecord, Store, StoreError,
};

/// `[control_plane.push]`: Web Push to offline browsers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Whether notifications are pushed at all.
    pub enabled: bool,
    /// The operator contact push services see (`mailto:` or `https:`
    /// URL, RFC 8292 §2.1).
    pub subject: String,
    /// Hosts that subscriptions may point at: each matches itself and its
    /// subdomains. The default is the browsers' push services.
    pub endpoint_hosts: Vec<String>,
    /// Allow `http:` endpoints (a local push service in tests only).
    pub allow_http: bool,
    /// How long a push service keeps a message for an offline browser, seconds.
    pub ttl_secs: u64,
    /// Tries per notification before it is given up.
    pub max_attempts: i32,
    /// How often the worker looks for pending notifications besides being
    /// woken, milliseconds.
    pub poll_interval_ms: u64,
    /// A push request still unanswered after this long fails, milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            enabled: true,
            subject: "mailto:admin@localhost".into(),
            endpoint_hosts: vec![
                "fcm.googleapis.com".into(),
                "push.services.mozilla.com".into(),
                "push.apple.com".into(),
                "notify.windows.com".into(),
            ],
            allow_http: false,
            ttl_secs: 86_400,
            max_attempts: 3,
            poll_interval_ms: 2_000,
            request_timeout_ms: 10_000,
        }
    }
}

impl Validate for PushConfig {
    fn validate(&self, v: &mut Validator) {
        if !(self.subject.starts_with("mailto:") || self.subject.starts_with("https:")) {
            v.invalid("subject", "must be a mailto: or https: URL");
        }
        check_range(v, "ttl_secs", self.ttl_secs, 0, 28 * 86_400);
        check_range(v, "max_attempts", self.max_attempts as u64, 1, 20);
        check_range(v, "poll_interval_ms", self.poll_interval_ms, 50, 600_000);
        check_range(
            v,
            "request_timeout_ms",
            self.request_timeout_ms,
            100,
            120_000,
        );
        for host in &self.endpoint_hosts {
            if host.is_empty() || host.contains(['/', ':', ' ']) {
                v.invalid("endpoint_hosts", format!("{host:?} is not a host name"));
            }
        }
    }
}

impl PushConfig {
    /// Whether a subscription may point at `endpoint`; the reason if not.
    pub fn check_endpoint(&self, endpoint: &str) -> Result<Url, &'static str> {
        let url = Url::parse(endpoint).map_err(|_| "endpoint is not a URL")?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err("endpoint must be an https URL"),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("endpoint must not carry credentials");
        }
        let host = url
            .host_str()
            .ok_or("endpoint has no host")?
            .to_ascii_lowercase();
        let allowed = self.endpoint_hosts.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            host == allowed || host.ends_with(&format!(".{allowed}"))
        });
        if !allowed {
            return Err("endpoint is not on a known push service");
        }
        Ok(url)
    }
}

/// Loads (or, on first start, creates and stores) the VAPID key all
/// replicas share: browsers bind subscriptions to its public key.
pub async fn load_vapid(store: &dyn Store, subject: &str) -> Result<Vapid, VapidError> {
    let (pkcs8, public) = Vapid::generate().map_err(VapidError::Crypto)?;
    let candidate = SigningKeyRecord {
        kid: "vapid".into(),
        private_pkcs8: pkcs8,
        public_key: public,
        created_at: crate::store::now_utc(),
    };
    let stored = store
        .vapid_key(&candidate)
        .await
        .map_err(VapidError::Store)?;
    Vapid::from_pkcs8(&stored.private_pkcs8, subject.to_owned()).map_err(VapidError::Crypto)
}

/// Why the VAPID key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum VapidError {
    /// The database failed.
    #[error("cannot read or store the VAPID key")]
    Store(#[source] StoreError),
    /// The stored key is unusable.
    #[error("the stored VAPID key is unusable")]
    Crypto(#[source] webpush::PushCryptoError),
}

/// The push worker's counters.
#[derive(Clone)]
pub struct PushMetrics {
    outcomes: prometheus::IntCounterVec,
    requests: prometheus::IntCounterVec,
}

impl PushMetrics {
    /// Registers the counters in `registry`.
    pub fn new(registry: &prometheus::Registry) -> Self {
        let outcomes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "cascade_push_notifications_total",
                "Notifications the push worker finished, by outcome (sent, online, none, failed, retry)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "cascade_push_requests_total",
                "Requests to push services, by result (created, gone, refused, error)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(outcomes.clone()));
        let _ = registry.register(Box::new(requests.clone()));
        PushMetrics { outcomes, requests }
    }
}

/// One replica's push worker.
pub struct PushWorker {
    store: Arc<dyn Store>,
    presence: Arc<Presence>,
    vapid: Arc<Vapid>,
    config: PushConfig,
    http: reqwest::Client,
    wake: Arc<Notify>,
    metrics: PushMetrics,
}

/// What one push request came to.
enum Delivery {
    Created,
    /// 404/410: the subscription is gone for good.
    Gone,
    /// Another 4xx: this message will never be taken (too big, bad auth).
    Refused,
    /// 5xx, 429 or no answer: try again later.
    Transient,
}

impl PushWorker {
    /// A worker; `wake` is the [`super::Notifier`]'s handle.
    pub fn new(
        store: Arc<dyn Store>,
        presence: Arc<Presence>,
        vapid: Arc<Vapid>,
        config: PushConfig,
        wake: Arc<Notify>,
        metrics: PushMetrics,
    ) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .build()
            .unwrap_or_default();
        PushWorker {
            store,
            presence,
            vapid,
            config,
            http,
            wake,
            metrics,
        }
    }

    /// Runs until shutdown: a pass when woken or every poll interval.
    pub async fn run(self, shutdown: service::Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.poll_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.wake.notified() => {}
                () = &mut stop => return,
            }
            // Drain what is pending, a batch at a time.
            while self.pass().await >= BATCH as usize {}
        }
    }

    /// One batch; how many notifications it claimed.
    pub async fn pass(&self) -> usize {
        let now = crate::store::now_utc();
        // A claim older than a few request timeouts belongs to a replica
        // that died mid-push.
        let stale = now - time::Duration::milliseconds(4 * self.config.request_timeout_ms as i64);
        let claimed = match self.store.claim_pushes(stale, now, BATCH).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "push: cannot claim notifications");
                return 0;
            }
        };
        let count = claimed.len();
        for note in claimed {
            let outcome = self.deliver(&note).await;
            let label = match outcome {
                PushOutcome::Sent => "sent",
                PushOutcome::Online => "online",
                PushOutcome::NoSubscription => "none",
                PushOutcome::Failed => "failed",
                PushOutcome::Retry => "retry",
            };
            self.metrics.outcomes.with_label_values(&[label]).inc();
            if let Err(error) = self
                .store
                .finish_push(note.id, outcome, self.config.max_attempts)
                .await
            {
                tracing::warn!(%error, notification_id = %note.id, "push: cannot record outcome");
            }
        }
        count
    }

    async fn deliver(&self, note: &Notification) -> PushOutcome {
        if !self.config.enabled {
            return PushOutcome::NoSubscription;
        }
        if note.read_at.is_some() {
            // Read on another device before a worker got to it.
            return PushOutcome::Online;
        }
        if self.presence.status(note.user_id).await != PresenceStatus::Offline {
            return PushOutcome::Online;
        }
        let subscriptions = match self.store.push_subscriptions(note.user_id).await {
            Ok(subscriptions) => subscriptions,
            Err(error) => {
                tracing::warn!(%error, "push: cannot read subscriptions");
                return PushOutcome::Retry;
            }
        };
        if subscriptions.is_empty() {
            return PushOutcome::NoSubscription;
        }
        let payload =
            serde_json::json!({ "type": "notification", "notification": note }).to_string();
        let (mut sent, mut transient) = (false, false);
        for subscription in &subscriptions {
            match self.post(subscription, payload.as_bytes()).await {
                Delivery::Created => sent = true,
                Delivery::Gone => {
                    if let Err(error) = self.store.drop_push_subscription(subscription.id).await {
                        tracing::warn!(%error, "push: cannot drop a gone subscription");
                    }
                }
                Delivery::Refused => {}
                Delivery::Transient => transient = true,
            }
        }
        match (sent, transient) {
            (true, _) => PushOutcome::Sent,
            (false, true) => PushOutcome::Retry,
            (false, false) => PushOutcome::Failed,
        }
    }

    async fn post(&self, subscription: &PushSubscription, payload: &[u8]) -> Delivery {
        let result = self.request(subscription, payload).await;
        let (label, delivery) = match result {
            Ok(status) if status.is_success() => ("created", Delivery::Created),
            Ok(status) if status == 404 || status == 410 => ("gone", Delivery::Gone),
            Ok(status) if status == 429 || status.is_server_error() => {
                ("error", Delivery::Transient)
            }
            Ok(status) => {
                tracing::warn!(
                    status = status.as_u16(),
                    "push: the push service refused a message"
                );
                ("refused", Delivery::Refused)
            }
            Err(reason) => {
                tracing::warn!(%reason, "push: request failed");
                ("error", Delivery::Transient)
            }
        };
        self.metrics.requests.with_label_values(&[label]).inc();
        delivery
    }

    async fn request(
        &self,
        subscription: &PushSubscription,
        payload: &[u8],
    ) -> Result<reqwest::StatusCode, String> {
        // Checked again at send time: the allow-list may have shrunk since
        // the browser subscribed.
        let url = self
            .config
            .check_endpoint(&subscription.endpoint)
            .map_err(str::to_owned)?;
        let body = webpush::encrypt(&subscription.p256dh, &subscription.auth, payload)
            .map_err(|e| e.to_string())?;
        let audience = url.origin().ascii_serialization();
        // 12 h: inside RFC 8292's 24 h bound with room for clock skew.
        let expires = time::OffsetDateTime::now_utc().unix_timestamp() + 12 * 3600;
        let authorization = self
            .vapid
            .authorization(&audience, expires)
            .map_err(|e| e.to_string())?;
        let response = self
            .http
            .post(url)
            .header("TTL", self.config.ttl_secs.to_string())
            .header("Content-Encoding", "aes128gcm")
            .header("Content-Type", "application/octet-stream")
            .header("Urgency", "high")
            .header("Authorization", authorization)
            .body(body)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        Ok(response.status())
    }
}

/// Notifications claimed per pass.
const BATCH: i64 = 50;
