//! Signed audit checkpoints as stored (`audit_checkpoints`): the trail's
//! head to sign, and the checkpoints kept. Not a read model: no event
//! gives them, so a rebuild keeps them (it is not in `read_models::TABLES`).

use twofold_domain::checkpoint::SignedCheckpoint;

use crate::db::{ProjectionError, ReadModels};

/// Where the trail stands: the position of its newest applied row and the
/// head digest there (lower-case hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrailHead {
    pub position: i64,
    pub head: String,
}

impl ReadModels {
    /// The head of the trail's newest row (in apply order), or `None` while
    /// the trail is empty.
    pub async fn trail_head(&self) -> Result<Option<TrailHead>, ProjectionError> {
        const SQL: &str = "SELECT position, head_hash FROM audit_log ORDER BY id DESC LIMIT 1";
        match self.0.fetch_optional(SQL, Vec::new()).await? {
            Some(row) => Ok(Some(TrailHead {
                position: row.get("position")?,
                head: row.get("head_hash")?,
            })),
            None => Ok(None),
        }
    }

    /// Keeps `checkpoint`, unless one is kept for its position already
    /// (another node signed the same head): returns whether it was added.
    pub async fn add_checkpoint(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> Result<bool, ProjectionError> {
        const SQL: &str = "
INSERT INTO audit_checkpoints (position, head, signed_at, key_id, signature)
VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (position) DO NOTHING";
        let added = self
            .0
            .execute(
                SQL,
                vec![
                    checkpoint.position.into(),
                    checkpoint.head.as_str().into(),
                    checkpoint.signed_at.as_str().into(),
                    checkpoint.key_id.as_str().into(),
                    checkpoint.signature.as_str().into(),
                ],
            )
            .await?;
        Ok(added == 1)
    }

    /// Every checkpoint kept, in the order they were signed.
    pub async fn checkpoints(&self) -> Result<Vec<SignedCheckpoint>, ProjectionError> {
        const SQL: &str =
            "SELECT position, head, signed_at, key_id, signature FROM audit_checkpoints ORDER BY id";
        let rows = self.0.fetch(SQL, Vec::new()).await?;
        let mut checkpoints = Vec::with_capacity(rows.len());
        for row in rows {
            checkpoints.push(SignedCheckpoint {
                position: row.get("position")?,
                head: row.get("head")?,
                signed_at: row.get("signed_at")?,
                key_id: row.get("key_id")?,
                signature: row.get("signature")?,
            });
        }
        Ok(checkpoints)
    }
}
