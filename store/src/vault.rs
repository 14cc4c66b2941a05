//! The sealed TOTP secrets: AES-256-GCM under the master key, bound to
//! their user and enrollment, in `totp_secrets` (events only name the
//! enrollment, so a secret can be erased while the history stays).

use rand::rngs::OsRng;
use rand::RngCore;
use twofold_domain::sealed::{CodeKey, MasterKey, SealedSecret};
use twofold_domain::totp::TotpSecret;
use uuid::Uuid;

use crate::events::StoreError;
use crate::{on_pool, Db};

pub struct SecretVault {
    key: MasterKey,
    db: Db,
}

fn associated_data(user_id: Uuid, enrollment_id: Uuid) -> Vec<u8> {
    format!("twofold/totp/{user_id}/{enrollment_id}").into_bytes()
}

fn stored_id(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text)
        .map_err(|_| StoreError::Failed("a sealed secret's ids are no UUIDs".into()))
}

/// One sealed secret of a store, to try a key on.
pub struct SealedSample {
    user_id: Uuid,
    enrollment_id: Uuid,
    secret: SealedSecret,
}

impl SealedSample {
    /// Whether `key` opens it (a wrong key, or a secret altered, does not).
    pub fn opens_with(&self, key: &MasterKey) -> bool {
        key.open(
            &self.secret,
            &associated_data(self.user_id, self.enrollment_id),
        )
        .is_ok()
    }
}

impl SecretVault {
    pub fn new(key: MasterKey, db: Db) -> Self {
        Self { key, db }
    }

    /// The key of the keyed hashes of emailed codes.
    pub fn code_key(&self) -> CodeKey {
        self.key.code_key()
    }

    /// One sealed secret of the store, if it holds any: a master key that
    /// does not open it is not the store's.
    pub async fn sample(db: &Db) -> Result<Option<SealedSample>, StoreError> {
        let row: Option<(String, String, Vec<u8>, Vec<u8>)> = on_pool!(db, pool => {
            sqlx::query_as(
                "SELECT user_id, enrollment_id, nonce, ciphertext FROM totp_secrets LIMIT 1",
            )
            .fetch_optional(pool)
            .await?
        });
        let Some((user_id, enrollment_id, nonce, ciphertext)) = row else {
            return Ok(None);
        };
        Ok(Some(SealedSample {
            user_id: stored_id(&user_id)?,
            enrollment_id: stored_id(&enrollment_id)?,
            secret: SealedSecret { nonce, ciphertext },
        }))
    }

    /// Seals every secret of the store again, under `new`, in one
    /// transaction (an interrupted run changes nothing). A secret that
    /// `new` already opens is left as it is, so a run after one that
    /// committed finds nothing to do; one that neither key opens stops it.
    /// Returns how many were sealed again.
    pub async fn reseal_all(db: &Db, old: &MasterKey, new: &MasterKey) -> Result<u64, StoreError> {
        let _turn = db.write_turn().await;
        on_pool!(db, pool => {
            let mut tx = pool.begin().await?;
            let rows: Vec<(String, String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
                "SELECT user_id, enrollment_id, nonce, ciphertext FROM totp_secrets",
            )
            .fetch_all(&mut *tx)
            .await?;
            let mut resealed = 0;
            for (user_id, enrollment_id, nonce, ciphertext) in rows {
                let aad = associated_data(stored_id(&user_id)?, stored_id(&enrollment_id)?);
                let sealed = SealedSecret { nonce, ciphertext };
                if new.open(&sealed, &aad).is_ok() {
                    continue;
                }
                let plain = old.open(&sealed, &aad).map_err(|_| {
                    StoreError::Failed(format!(
                        "the secret of enrollment {enrollment_id} opens with neither key"
                    ))
                })?;
                let mut nonce = [0u8; 12];
                OsRng.fill_bytes(&mut nonce);
                let again = new
                    .seal(&plain, nonce, &aad)
                    .map_err(|_| StoreError::Failed("sealing a TOTP secret failed".into()))?;
                sqlx::query(
                    "UPDATE totp_secrets SET nonce = $1, ciphertext = $2
                      WHERE enrollment_id = $3 AND user_id = $4",
                )
                .bind(again.nonce)
                .bind(again.ciphertext)
                .bind(&enrollment_id)
                .bind(&user_id)
                .execute(&mut *tx)
                .await?;
                resealed += 1;
            }
            tx.commit().await?;
            Ok(resealed)
        })
    }

    /// Erases every sealed TOTP secret of the user: once 2FA is off or
    /// reset, or before an enrollment restarts, none of them should open
    /// anything again.
    pub async fn erase(&self, user_id: Uuid) -> Result<(), StoreError> {
        let _turn = self.db.write_turn().await;
        on_pool!(&self.db, pool => {
            sqlx::query("DELETE FROM totp_secrets WHERE user_id = $1")
                .bind(user_id.to_string())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn store(
        &self,
        user_id: Uuid,
        enrollment_id: Uuid,
        secret: &TotpSecret,
    ) -> Result<(), StoreError> {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .key
            .seal(
                secret.expose_bytes(),
                nonce,
                &associated_data(user_id, enrollment_id),
            )
            .map_err(|_| StoreError::Failed("sealing a TOTP secret failed".into()))?;
        let _turn = self.db.write_turn().await;
        on_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO totp_secrets (enrollment_id, user_id, nonce, ciphertext) VALUES ($1, $2, $3, $4)",
            )
            .bind(enrollment_id.to_string())
            .bind(user_id.to_string())
            .bind(sealed.nonce)
            .bind(sealed.ciphertext)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn fetch(
        &self,
        user_id: Uuid,
        enrollment_id: Uuid,
    ) -> Result<TotpSecret, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = on_pool!(&self.db, pool => {
            sqlx::query_as(
                "SELECT nonce, ciphertext FROM totp_secrets WHERE enrollment_id = $1 AND user_id = $2",
            )
            .bind(enrollment_id.to_string())
            .bind(user_id.to_string())
            .fetch_optional(pool)
            .await?
        });
        let (nonce, ciphertext) =
            row.ok_or_else(|| StoreError::Failed("a TOTP secret is missing".into()))?;
        let plain = self
            .key
            .open(
                &SealedSecret { nonce, ciphertext },
                &associated_data(user_id, enrollment_id),
            )
            .map_err(|_| {
                StoreError::Failed("a TOTP secret does not open with this master key".into())
            })?;
        TotpSecret::from_bytes(plain.to_vec())
            .map_err(|error| StoreError::Failed(error.to_string()))
    }
}
