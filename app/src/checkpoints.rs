//! Signed audit checkpoints: the signing key file, signing where the trail
//! stands (every `--audit-checkpoint-minutes`, and `twofold audit
//! checkpoint`), and what readers of the trail see of them.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use twofold_domain::checkpoint::{AuditPublicKey, AuditSigningKey, SignedCheckpoint};
use twofold_projections::{ProjectionError, Projector};

use crate::master_key::write_new_key_file;
use crate::{App, AppError, Session};

/// The signing key in `path` (64 hex digits), refused with a line naming
/// the file when it cannot be read or holds no key. Never shows the key.
pub fn read_signing_key(path: &Path) -> anyhow::Result<AuditSigningKey> {
    let text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the audit signing key file {}", path.display())
        })?);
    AuditSigningKey::parse(&text)
        .with_context(|| format!("the audit signing key file {} holds no key", path.display()))
}

/// The signing key in `path`, or a new one written there (mode 0600) when
/// the file does not exist; the second value is true when this call
/// created the file (a failed start removes it).
pub fn signing_key_file(path: &Path) -> anyhow::Result<(AuditSigningKey, bool)> {
    let exists = path.try_exists().with_context(|| {
        format!(
            "cannot look for the audit signing key file {}",
            path.display()
        )
    })?;
    if exists {
        return Ok((read_signing_key(path)?, false));
    }
    let seed = write_new_key_file(path, "audit signing key")?;
    Ok((AuditSigningKey::from_seed(&seed), true))
}

/// Signs where the trail stands now, once the read models hold every
/// committed event, and keeps the checkpoint. `None` when there is nothing
/// new to sign: the trail is empty, or its head is already signed (by this
/// or another node: one checkpoint per position).
pub async fn sign_checkpoint(
    projector: &Projector,
    key: &AuditSigningKey,
    now: DateTime<Utc>,
) -> Result<Option<SignedCheckpoint>, ProjectionError> {
    projector.catch_up().await?;
    let models = projector.read_models();
    let Some(head) = models.trail_head().await? else {
        return Ok(None);
    };
    let checkpoint = key.sign(head.position, &head.head, now);
    Ok(models
        .add_checkpoint(&checkpoint)
        .await?
        .then_some(checkpoint))
}

impl App {
    /// Signs the trail's head with this service's key (see
    /// [`sign_checkpoint`]); refused when the service has none.
    pub async fn sign_audit_checkpoint(&self) -> Result<Option<SignedCheckpoint>, AppError> {
        let key = self.audit_signing_key.as_ref().ok_or(AppError::NotFound(
            "this service signs no audit checkpoints: it has no --audit-signing-key-file",
        ))?;
        Ok(sign_checkpoint(&self.projector, key, self.now()).await?)
    }

    /// Every checkpoint kept, in signing order, for readers of the trail.
    pub async fn audit_checkpoints(
        &self,
        session: &Session,
    ) -> Result<Vec<SignedCheckpoint>, AppError> {
        self.may_read_reports(session)?;
        Ok(self.read_models().checkpoints().await?)
    }

    /// The key auditors check the checkpoints with; published to anyone.
    pub fn audit_public_key(&self) -> Result<AuditPublicKey, AppError> {
        self.audit_signing_key
            .as_ref()
            .map(AuditSigningKey::public_key)
            .ok_or(AppError::NotFound(
                "this service signs no audit checkpoints: it has no --audit-signing-key-file",
            ))
    }

    /// Signs a checkpoint every `every` (when the head moved) until `stop`
    /// flips. A failed round is logged and the next one tries again.
    pub async fn sign_checkpoints_every(&self, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick comes at once; the first checkpoint is due one
        // interval after the start.
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => match self.sign_audit_checkpoint().await {
                    Ok(Some(checkpoint)) => tracing::info!(
                        position = checkpoint.position,
                        key_id = %checkpoint.key_id,
                        "signed an audit checkpoint"
                    ),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, "no audit checkpoint was signed"),
                },
                _ = stop.changed() => return,
            }
        }
    }
}
