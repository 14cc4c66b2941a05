//! The master key file: read, or created (mode 0600) for a new store, and
//! refused when it does not open the store's sealed secrets.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use rand::rngs::OsRng;
use rand::RngCore;
use twofold_domain::sealed::MasterKey;
use twofold_store::{Db, SecretVault};
use zeroize::Zeroizing;

/// The master key for the store `db`: read from `path`, or created there
/// (mode 0600) when the file is missing and the store holds no sealed secret
/// yet. The second value is true when this call created the file.
///
/// Refused, without writing anything, when the store holds sealed secrets
/// and the file is missing or its key does not open them: a new or wrong key
/// would start a service whose every TOTP sign-in fails (a store restored
/// from a backup without its key, or started with another deployment's key).
pub async fn master_key_for_store(path: &Path, db: &Db) -> anyhow::Result<(MasterKey, bool)> {
    let sealed = SecretVault::sample(db)
        .await
        .context("cannot read the sealed TOTP secrets")?;
    let exists = path
        .try_exists()
        .with_context(|| format!("cannot look for the master key file {}", path.display()))?;
    if !exists {
        anyhow::ensure!(
            sealed.is_none(),
            "the master key file {} does not exist, but the store holds TOTP secrets sealed \
             with a master key: restore that key file (no new key was written, it could not \
             open them)",
            path.display()
        );
        return Ok((create_master_key(path)?, true));
    }
    let key = read_master_key(path)?;
    if let Some(sealed) = sealed {
        anyhow::ensure!(
            sealed.opens_with(&key),
            "the master key in {} does not open the TOTP secrets in the store: start with the \
             key file that sealed them",
            path.display()
        );
    }
    Ok((key, false))
}

fn read_master_key(path: &Path) -> anyhow::Result<MasterKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the master key file {}", path.display()))?;
    let bytes = hex::decode(text.trim()).with_context(|| {
        format!(
            "the master key file {} must hold 64 hex digits",
            path.display()
        )
    })?;
    MasterKey::from_bytes(&bytes).map_err(|_| {
        anyhow::anyhow!(
            "the master key in {} must be 32 bytes (64 hex digits)",
            path.display()
        )
    })
}

fn create_master_key(path: &Path) -> anyhow::Result<MasterKey> {
    let bytes = write_new_key_file(path, "master key")?;
    MasterKey::from_bytes(bytes.as_ref())
        .map_err(|_| anyhow::anyhow!("master key must be 32 bytes"))
}

/// 32 random bytes written to `path` as 64 hex digits, in a file that must
/// not exist yet, created with mode 0600 (only the service's user reads
/// it) and synced; `what` names the key in messages.
pub(crate) fn write_new_key_file(path: &Path, what: &str) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(bytes.as_mut());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create the {what} file {}", path.display()))?;
    writeln!(
        file,
        "{}",
        Zeroizing::new(hex::encode(bytes.as_ref())).as_str()
    )?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "created a new {what}");
    Ok(bytes)
}

/// Seals every secret of the store `db` again under a new key, written to
/// `new_path` (which must not exist; created 0600), and returns how many
/// it sealed again. With the service stopped: a running one still holds
/// the old key.
///
/// Safe to interrupt and run again: the new key is first written beside
/// `new_path` (`.NAME.rotating`), the secrets change in one transaction,
/// and only then is the key file renamed to `new_path`. A run that finds
/// that file takes its key: before the commit nothing had changed, after
/// it the secrets already open with it and only the rename is left.
pub async fn rotate(db: &Db, old_path: &Path, new_path: &Path) -> anyhow::Result<u64> {
    anyhow::ensure!(
        !new_path
            .try_exists()
            .with_context(|| format!("cannot look for {}", new_path.display()))?,
        "the new key file {} exists already: name a file that does not",
        new_path.display()
    );
    let old = read_master_key(old_path)?;
    let name = new_path
        .file_name()
        .with_context(|| format!("{} names no file", new_path.display()))?;
    let rotating = new_path.with_file_name(format!(".{}.rotating", name.to_string_lossy()));
    let new = if rotating.exists() {
        read_master_key(&rotating)?
    } else {
        create_master_key(&rotating)?
    };
    let resealed = SecretVault::reseal_all(db, &old, &new)
        .await
        .context("cannot seal the secrets again")?;
    std::fs::rename(&rotating, new_path).with_context(|| {
        format!(
            "the secrets are sealed with the key in {}, which could not be renamed to {}",
            rotating.display(),
            new_path.display()
        )
    })?;
    Ok(resealed)
}
