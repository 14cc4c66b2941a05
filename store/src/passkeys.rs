//! What passkeys need beside the events: which user holds a credential id
//! (`passkey_credentials`, unique across users), and the state of sign-ins
//! without a password under way (`passkey_sign_ins`), which belong to no
//! user's stream until the answer names one.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::events::StoreError;
use crate::Db;

/// A sign-in without a password, as its options left it.
pub struct PasskeySignIn {
    /// The WebAuthn library's state, with the single-use challenge.
    pub ceremony_secret: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct PasskeyIndex {
    db: Db,
}

impl PasskeyIndex {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The user holding `credential_id`, if any.
    pub async fn owner(&self, credential_id: &str) -> Result<Option<Uuid>, StoreError> {
        let row = self
            .db
            .fetch_optional(
                "SELECT user_id FROM passkey_credentials WHERE credential_id = $1",
                vec![credential_id.into()],
            )
            .await?;
        Ok(match row {
            Some(row) => Some(row.uuid("user_id")?),
            None => None,
        })
    }

    /// Claims `credential_id` for `user_id` unless another user holds it;
    /// gives the holder (this user once claimed).
    pub async fn claim(&self, credential_id: &str, user_id: Uuid) -> Result<Uuid, StoreError> {
        let mut tx = self.db.begin_write().await?;
        tx.execute(
            "INSERT INTO passkey_credentials (credential_id, user_id) VALUES ($1, $2)
             ON CONFLICT (credential_id) DO NOTHING",
            vec![credential_id.into(), user_id.to_string().into()],
        )
        .await?;
        let rows = tx
            .fetch(
                "SELECT user_id FROM passkey_credentials WHERE credential_id = $1",
                vec![credential_id.into()],
            )
            .await?;
        tx.commit().await?;
        match rows.first() {
            Some(row) => Ok(row.uuid("user_id")?),
            None => Err(StoreError::Failed("a claimed credential id is gone".into())),
        }
    }

    /// Hands a credential id over to `user_id` from a holder that no longer
    /// has it (a claim left behind by a registration that was not stored).
    pub async fn take_over(
        &self,
        credential_id: &str,
        from: Uuid,
        user_id: Uuid,
    ) -> Result<bool, StoreError> {
        let changed = self
            .db
            .execute(
                "UPDATE passkey_credentials SET user_id = $1
                  WHERE credential_id = $2 AND user_id = $3",
                vec![
                    user_id.to_string().into(),
                    credential_id.into(),
                    from.to_string().into(),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    /// Releases a credential id of `user_id`.
    pub async fn release(&self, credential_id: &str, user_id: Uuid) -> Result<(), StoreError> {
        self.db
            .execute(
                "DELETE FROM passkey_credentials WHERE credential_id = $1 AND user_id = $2",
                vec![credential_id.into(), user_id.to_string().into()],
            )
            .await?;
        Ok(())
    }

    /// Releases every credential id of `user_id` but `kept` (a reset, 2FA
    /// turned off).
    pub async fn release_all_but(&self, user_id: Uuid, kept: &[String]) -> Result<(), StoreError> {
        let held = self
            .db
            .fetch(
                "SELECT credential_id FROM passkey_credentials WHERE user_id = $1",
                vec![user_id.to_string().into()],
            )
            .await?;
        for row in held {
            let credential_id: String = row.get("credential_id")?;
            if !kept.contains(&credential_id) {
                self.release(&credential_id, user_id).await?;
            }
        }
        Ok(())
    }

    /// Keeps a sign-in's state until its answer; drops those expired by `now`.
    pub async fn start_sign_in(
        &self,
        challenge_id: Uuid,
        ceremony_secret: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await?;
        tx.execute(
            "DELETE FROM passkey_sign_ins WHERE expires_at <= $1",
            vec![now.into()],
        )
        .await?;
        tx.execute(
            "INSERT INTO passkey_sign_ins (challenge_id, ceremony_secret, expires_at)
             VALUES ($1, $2, $3)",
            vec![
                challenge_id.to_string().into(),
                ceremony_secret.into(),
                expires_at.into(),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes a sign-in's state: it is gone afterwards, whatever the answer
    /// (single use, also across processes).
    pub async fn take_sign_in(
        &self,
        challenge_id: Uuid,
    ) -> Result<Option<PasskeySignIn>, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let rows = tx
            .fetch(
                "DELETE FROM passkey_sign_ins WHERE challenge_id = $1
                 RETURNING ceremony_secret, expires_at",
                vec![challenge_id.to_string().into()],
            )
            .await?;
        tx.commit().await?;
        match rows.first() {
            Some(row) => Ok(Some(PasskeySignIn {
                ceremony_secret: row.get("ceremony_secret")?,
                expires_at: row.get("expires_at")?,
            })),
            None => Ok(None),
        }
    }
}
