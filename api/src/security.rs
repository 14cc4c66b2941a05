//! Passwords, random tokens and the sealed TOTP secrets.

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use twofold_domain::sealed::{MasterKey, SealedSecret};
use twofold_domain::totp::TotpSecret;
use twofold_domain::PasswordHash;
use twofold_projections::{on_pool, Db};
use uuid::Uuid;

use crate::store::StoreError;

/// OWASP's argon2id minimum: m=19 MiB, t=2, p=1.
fn argon2() -> Argon2<'static> {
    match Params::new(19 * 1024, 2, 1, None) {
        Ok(params) => Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        Err(_) => Argon2::default(),
    }
}

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_BYTES: usize = 1024;

/// Argon2 runs at most once per core at a time: a burst of sign-ins waits
/// here, cheaply, instead of starting a CPU-bound 19 MiB hash per request
/// (hundreds at once starved the database into 503s and can exhaust memory).
async fn hashing_turn() -> Option<tokio::sync::SemaphorePermit<'static>> {
    static TURNS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    TURNS
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
            tokio::sync::Semaphore::new(cores)
        })
        .acquire()
        .await
        .ok()
}

pub async fn hash_password(password: String) -> Result<PasswordHash, StoreError> {
    let _turn = hashing_turn().await;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| PasswordHash::new(hash.to_string()))
            .map_err(|error| StoreError::Failed(format!("password hashing failed: {error}")))
    })
    .await
    .map_err(|error| StoreError::Failed(error.to_string()))?
}

/// A hash no password matches, checked for unknown users so that "no such
/// user" costs the same time as "wrong password".
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        let mut random = [0u8; 32];
        OsRng.fill_bytes(&mut random);
        argon2()
            .hash_password(&random, &salt)
            .map(|hash| hash.to_string())
            .unwrap_or_default()
    })
}

/// Checks `password` against `stored`, or against the dummy hash when there
/// is no such user (the answer is then always false).
pub async fn verify_password(stored: Option<PasswordHash>, password: String) -> bool {
    let _turn = hashing_turn().await;
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let phc = stored.map_or_else(|| dummy_hash().to_string(), |h| h.as_str().to_string());
        let Ok(parsed) = argon2::password_hash::PasswordHash::new(&phc) else {
            return false;
        };
        argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
            && known
    })
    .await
    .unwrap_or(false)
}

/// Warms the dummy hash so the first unknown-user sign-in isn't slower.
pub async fn prepare() {
    drop(tokio::task::spawn_blocking(dummy_hash).await);
}

/// 256 random bits, URL-safe: session and device tokens.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Ten single-use recovery codes shown once, as `xxxx-xxxx-xxxx` (60 bits each).
pub fn new_recovery_codes(count: usize) -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    (0..count)
        .map(|_| {
            let mut bytes = [0u8; 12];
            OsRng.fill_bytes(&mut bytes);
            let chars: Vec<char> = bytes
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
                .collect();
            chars
                .chunks(4)
                .map(|chunk| chunk.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

pub fn new_totp_secret() -> Result<TotpSecret, StoreError> {
    let mut bytes = vec![0u8; 20];
    OsRng.fill_bytes(&mut bytes);
    TotpSecret::from_bytes(bytes).map_err(|error| StoreError::Failed(error.to_string()))
}

/// Reads the master key, or creates one (mode 0600) when the file is missing.
pub fn load_or_create_master_key(path: &Path) -> anyhow::Result<MasterKey> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read master key {}", path.display()))?;
        let bytes = hex::decode(text.trim()).context("master key file must hold 64 hex digits")?;
        return MasterKey::from_bytes(&bytes)
            .map_err(|_| anyhow::anyhow!("master key must be 32 bytes"));
    }
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create master key {}", path.display()))?;
    writeln!(file, "{}", hex::encode(bytes))?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "created a new master key");
    MasterKey::from_bytes(&bytes).map_err(|_| anyhow::anyhow!("master key must be 32 bytes"))
}

/// TOTP secrets sealed with AES-256-GCM, bound to user and enrollment.
pub struct SecretVault {
    key: MasterKey,
    db: Db,
}

fn associated_data(user_id: Uuid, enrollment_id: Uuid) -> Vec<u8> {
    format!("twofold/totp/{user_id}/{enrollment_id}").into_bytes()
}

impl SecretVault {
    pub fn new(key: MasterKey, db: Db) -> Self {
        Self { key, db }
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
