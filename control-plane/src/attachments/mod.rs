//! Attachments: uploaded images, files and voice messages. The bytes live
//! in an object store behind `object_store`'s one trait: the local
//! filesystem in the embedded default, S3 (or any S3-protocol server) in
//! production. Rows in the database say whose they are, which message
//! holds them and when they must go; a sweep removes blobs whose message
//! was deleted and uploads that were never sent.

pub mod inspect;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::check_range;
pub use inspect::AttachmentKind;
use service::{Validate, Validator};

/// `[control_plane.attachments]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachmentsConfig {
    /// `fs` (a directory; one replica, or a shared volume) or `s3`.
    pub store: StoreKind,
    /// The directory of the `fs` store (default `<data_dir>/attachments`).
    pub dir: Option<PathBuf>,
    /// The `s3` store.
    pub s3: S3Config,
    /// Largest image upload, bytes.
    pub max_image_bytes: u64,
    /// Largest file upload, bytes.
    pub max_file_bytes: u64,
    /// Largest voice message, bytes.
    pub max_voice_bytes: u64,
    /// An upload no message references after this long is deleted.
    pub orphan_after_secs: u64,
    /// How often the sweep runs.
    pub sweep_interval_secs: u64,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        AttachmentsConfig {
            store: StoreKind::Fs,
            dir: None,
            s3: S3Config::default(),
            max_image_bytes: 10 << 20,
            max_file_bytes: 25 << 20,
            max_voice_bytes: 5 << 20,
            orphan_after_secs: 24 * 3600,
            sweep_interval_secs: 300,
        }
    }
}

/// Where attachment bytes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A local directory.
    Fs,
    /// An S3 bucket.
    S3,
}

/// `[control_plane.attachments.s3]`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// The bucket (it must exist).
    pub bucket: String,
    /// The region (`us-east-1` if empty).
    pub region: String,
    /// The endpoint of an S3-protocol server other than AWS
    /// (`http://127.0.0.1:9000`); empty for AWS.
    pub endpoint: String,
    /// Access key id (empty: from the environment, e.g. an instance role).
    pub access_key_id: String,
    /// Secret access key. Never printed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Validate for AttachmentsConfig {
    fn validate(&self, v: &mut Validator) {
        for (name, value) in [
            ("max_image_bytes", self.max_image_bytes),
            ("max_file_bytes", self.max_file_bytes),
            ("max_voice_bytes", self.max_voice_bytes),
        ] {
            check_range(v, name, value, 1024, 1 << 30);
        }
        check_range(
            v,
            "orphan_after_secs",
            self.orphan_after_secs,
            1,
            30 * 86_400,
        );
        check_range(
            v,
            "sweep_interval_secs",
            self.sweep_interval_secs,
            1,
            86_400,
        );
        if self.store == StoreKind::S3 && self.s3.bucket.is_empty() {
            v.invalid("s3.bucket", "is required when store = \"s3\"");
        }
        if !self.s3.endpoint.is_empty() && url::Url::parse(&self.s3.endpoint).is_err() {
            v.invalid("s3.endpoint", "must be a URL (http://host:port)");
        }
    }
}

impl AttachmentsConfig {
    /// The size limit of `kind`.
    pub fn max_bytes(&self, kind: AttachmentKind) -> u64 {
        match kind {
            AttachmentKind::Image => self.max_image_bytes,
            AttachmentKind::File => self.max_file_bytes,
            AttachmentKind::Voice => self.max_voice_bytes,
        }
    }

    /// The largest upload of any kind (the route's body limit).
    pub fn largest(&self) -> u64 {
        self.max_image_bytes
            .max(self.max_file_bytes)
            .max(self.max_voice_bytes)
    }
}

/// Why the object store failed.
#[derive(Debug, thiserror::Error)]
#[error("attachment store: {0}")]
pub struct BlobError(#[from] object_store::Error);

/// The object store of attachment bytes.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    kind: StoreKind,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs").field("kind", &self.kind).finish()
    }
}

/// Where an attachment's bytes are.
fn key(id: Uuid) -> StorePath {
    StorePath::from(format!("attachments/{id}"))
}

/// Where its thumbnail is.
fn thumbnail_key(id: Uuid) -> StorePath {
    StorePath::from(format!("attachments/{id}.thumb"))
}

impl Blobs {
    /// Opens the configured store (`data_dir` is the fs store's default
    /// parent).
    pub fn open(config: &AttachmentsConfig, data_dir: &std::path::Path) -> Result<Self, BlobError> {
        let store: Arc<dyn ObjectStore> = match config.store {
            StoreKind::Fs => {
                let dir = config
                    .dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("attachments"));
                std::fs::create_dir_all(&dir).map_err(|source| object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(std::io::Error::new(
                        source.kind(),
                        format!("{}: {source}", dir.display()),
                    )),
                })?;
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dir)?)
            }
            StoreKind::S3 => {
                let s3 = &config.s3;
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_region(if s3.region.is_empty() {
                        "us-east-1"
                    } else {
                        &s3.region
                    });
                if !s3.endpoint.is_empty() {
                    builder = builder
                        .with_endpoint(&s3.endpoint)
                        .with_allow_http(s3.endpoint.starts_with("http://"))
                        // Path-style: servers other than AWS rarely have
                        // a DNS name per bucket.
                        .with_virtual_hosted_style_request(false);
                }
                if !s3.access_key_id.is_empty() {
                    builder = builder
                        .with_access_key_id(&s3.access_key_id)
                        .with_secret_access_key(&s3.secret_access_key);
                }
                Arc::new(builder.build()?)
            }
        };
        Ok(Blobs {
            store,
            kind: config.store,
        })
    }

    /// Stores an attachment's bytes (and thumbnail).
    pub async fn put(
        &self,
        id: Uuid,
        bytes: Bytes,
        thumbnail: Option<Vec<u8>>,
    ) -> Result<(), BlobError> {
        self.store.put(&key(id), PutPayload::from(bytes)).await?;
        if let Some(thumbnail) = thumbnail {
            self.store
                .put(&thumbnail_key(id), PutPayload::from(thumbnail))
                .await?;
        }
        Ok(())
    }

    /// An attachment's bytes, or its thumbnail's.
    pub async fn get(&self, id: Uuid, thumbnail: bool) -> Result<Bytes, BlobError> {
        let path = if thumbnail {
            thumbnail_key(id)
        } else {
            key(id)
        };
        Ok(self.store.get(&path).await?.bytes().await?)
    }

    /// Removes an attachment's bytes and thumbnail (absent ones are fine).
    pub async fn delete(&self, id: Uuid) -> Result<(), BlobError> {
        for path in [key(id), thumbnail_key(id)] {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether the bytes of `id` are in the store (tests and the sweep's
    /// checks).
    pub async fn exists(&self, id: Uuid) -> Result<bool, BlobError> {
        match self.store.head(&key(id)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Removes what must go, every `interval` until `shutdown`: blobs of
/// deleted messages and uploads no message took within the orphan window.
pub async fn run_sweeper(
    store: Arc<dyn crate::store::Store>,
    blobs: Blobs,
    config: AttachmentsConfig,
    shutdown: service::Shutdown,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(config.sweep_interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => return,
        }
        let removed = sweep_once(&*store, &blobs, &config).await;
        if removed > 0 {
            tracing::info!(removed, "attachments swept");
        }
    }
}

/// One pass of the sweep; how many attachments it removed.
pub async fn sweep_once(
    store: &dyn crate::store::Store,
    blobs: &Blobs,
    config: &AttachmentsConfig,
) -> usize {
    let now = time::OffsetDateTime::now_utc();
    let cutoff =
        now - time::Duration::seconds(i64::try_from(config.orphan_after_secs).unwrap_or(i64::MAX));
    let due = match store.claim_attachments_to_sweep(cutoff, now, 500).await {
        Ok(due) => due,
        Err(error) => {
            tracing::warn!(%error, "attachment sweep: cannot list");
            return 0;
        }
    };
    let mut removed = 0;
    for id in due {
        if remove(store, blobs, id, None, "swept").await {
            removed += 1;
        }
    }
    removed
}

/// Removes an attachment claimed for removal: its blob, then its row
/// (a row without a blob is harmless, the reverse would leak), and audits
/// it (`attachment.deleted`, by `actor` for `reason`). Whether both went;
/// what did not is left for the next sweep.
pub async fn remove(
    store: &dyn crate::store::Store,
    blobs: &Blobs,
    id: Uuid,
    actor: Option<Uuid>,
    reason: &'static str,
) -> bool {
    if let Err(error) = blobs.delete(id).await {
        tracing::warn!(attachment = %id, %error, "attachment blob kept for the sweep");
        return false;
    }
    match store.forget_attachment(id).await {
        Ok(()) => {
            let entry = crate::store::AuditEntry::new(
                actor,
                "attachment.deleted",
                Some(("attachment", id.to_string())),
                None,
                &serde_json::json!({ "reason": reason }),
            );
            if let Err(error) = store.audit(&entry).await {
                tracing::error!(%error, "could not write the audit log");
            }
            true
        }
        Err(error) => {
            tracing::warn!(attachment = %id, %error, "attachment row kept for the sweep");
            false
        }
    }
}
