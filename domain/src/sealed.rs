//! AES-256-GCM sealing of TOTP secrets before they enter an event.
//!
//! Pure: the caller supplies the nonce, so that randomness stays at the edge
//! and this module stays deterministic under test.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::values::TokenHash;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("master key must be exactly 32 bytes")]
    BadKeyLength,
    #[error("sealing the secret failed")]
    SealFailed,
    /// Deliberately one variant for a wrong key, wrong associated data and a
    /// tampered or malformed ciphertext: AES-GCM cannot tell them apart.
    #[error("sealed secret could not be opened")]
    OpenFailed,
}

/// 32-byte key; Debug redacted; zeroized on drop.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| SealError::BadKeyLength)?;
        Ok(Self(Zeroizing::new(key)))
    }

    /// `nonce` is 12 random bytes from the caller; `associated_data` binds the ciphertext to its owner (user id + enrollment id).
    ///
    /// A nonce must never be reused under the same key: with random 96-bit
    /// nonces that holds for far more seals than this service will perform.
    pub fn seal(
        &self,
        plaintext: &[u8],
        nonce: [u8; NONCE_LEN],
        associated_data: &[u8],
    ) -> Result<SealedSecret, SealError> {
        let payload = Payload {
            msg: plaintext,
            aad: associated_data,
        };
        let ciphertext = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), payload)
            .map_err(|_| SealError::SealFailed)?;
        Ok(SealedSecret {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Fails with [`SealError::OpenFailed`] unless `associated_data` is the
    /// one given to [`Self::seal`] and the key and ciphertext are unchanged.
    pub fn open(
        &self,
        sealed: &SealedSecret,
        associated_data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        // `Nonce::from_slice` panics on a wrong length, and a stored event
        // is untrusted input.
        if sealed.nonce.len() != NONCE_LEN {
            return Err(SealError::OpenFailed);
        }
        let payload = Payload {
            msg: &sealed.ciphertext,
            aad: associated_data,
        };
        self.cipher()
            .decrypt(Nonce::from_slice(&sealed.nonce), payload)
            .map(Zeroizing::new)
            .map_err(|_| SealError::OpenFailed)
    }

    /// The key of the keyed hashes of short codes, derived from this key so
    /// that one key file is all an operator keeps.
    pub fn code_key(&self) -> CodeKey {
        CodeKey(Zeroizing::new(hmac_sha256(
            self.0.as_slice(),
            b"twofold/code-key/v1",
        )))
    }

    /// Built per call rather than stored: only the raw key is wiped on drop,
    /// as the `aes` key schedule is zeroized only with its `zeroize` feature.
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.0.as_slice()))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length: `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 key for what is stored of a short code (an emailed one-time
/// code has 10^6 values: a plain hash of it is read back in a moment by
/// anyone who reads the store; without this key it cannot be). Debug
/// redacted; zeroized on drop.
#[derive(Clone)]
pub struct CodeKey(Zeroizing<[u8; KEY_LEN]>);

impl CodeKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The keyed hash of `code` bound to `context` (its challenge).
    pub fn hash(&self, context: &str, code: &str) -> TokenHash {
        let message = format!("{context}:{code}");
        TokenHash::from_hex(hex::encode(hmac_sha256(
            self.0.as_slice(),
            message.as_bytes(),
        )))
    }
}

impl fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeKey(<redacted>)")
    }
}

impl PartialEq for CodeKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// 12 bytes.
    pub nonce: Vec<u8>,
    /// Ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedSecret {
    // Lengths are enough to debug with and keep ciphertexts out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSecret")
            .field("nonce_len", &self.nonce.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const KEY: [u8; 32] = [0x42; 32];
    const NONCE: [u8; 12] = [7; 12];
    const AAD: &[u8] = b"user:1f0c/enrollment:9a3e";
    const SECRET: &[u8] = b"12345678901234567890";

    fn key() -> MasterKey {
        MasterKey::from_bytes(&KEY).unwrap()
    }

    #[test]
    fn key_must_be_exactly_32_bytes() {
        assert!(matches!(
            MasterKey::from_bytes(&[0; 31]),
            Err(SealError::BadKeyLength)
        ));
        assert!(matches!(
            MasterKey::from_bytes(&[0; 33]),
            Err(SealError::BadKeyLength)
        ));
        assert!(matches!(
            MasterKey::from_bytes(&[]),
            Err(SealError::BadKeyLength)
        ));
        assert!(MasterKey::from_bytes(&[0; 32]).is_ok());
    }

    #[test]
    fn round_trip() {
        let sealed = key().seal(SECRET, NONCE, AAD).unwrap();
        assert_eq!(sealed.nonce, NONCE);
        assert_eq!(sealed.ciphertext.len(), SECRET.len() + 16);
        assert_ne!(&sealed.ciphertext[..SECRET.len()], SECRET);

        let opened = key().open(&sealed, AAD).unwrap();
        assert_eq!(opened.as_slice(), SECRET);
    }

    #[test]
    fn round_trip_through_serde() {
        let sealed = key().seal(SECRET, NONCE, AAD).unwrap();
        let json = serde_json::to_string(&sealed).unwrap();
        let restored: SealedSecret = serde_json::from_str(&json).unwrap();
        assert_eq!(restored, sealed);
        assert_eq!(key().open(&restored, AAD).unwrap().as_slice(), SECRET);
    }

    #[test]
    fn sealing_is_deterministic_in_the_nonce() {
        let a = key().seal(SECRET, NONCE, AAD).unwrap();
        let b = key().seal(SECRET, NONCE, AAD).unwrap();
        let c = key().seal(SECRET, [8; 12], AAD).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.ciphertext, c.ciphertext);
    }

    #[test]
    fn wrong_associated_data_fails() {
        let sealed = key().seal(SECRET, NONCE, AAD).unwrap();
        let other_owner = b"user:1f0c/enrollment:9a3f";
        assert!(matches!(
            key().open(&sealed, other_owner),
            Err(SealError::OpenFailed)
        ));
        assert!(matches!(
            key().open(&sealed, b""),
            Err(SealError::OpenFailed)
        ));
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let sealed = key().seal(SECRET, NONCE, AAD).unwrap();
        for index in [0, SECRET.len() - 1, sealed.ciphertext.len() - 1] {
            let mut tampered = sealed.clone();
            tampered.ciphertext[index] ^= 0x01;
            assert!(
                matches!(key().open(&tampered, AAD), Err(SealError::OpenFailed)),
                "byte {index}"
            );
        }

        let mut truncated = sealed.clone();
        truncated.ciphertext.pop();
        assert!(matches!(
            key().open(&truncated, AAD),
            Err(SealError::OpenFailed)
        ));
    }

    #[test]
    fn tampered_or_malformed_nonce_fails() {
        let sealed = key().seal(SECRET, NONCE, AAD).unwrap();

        let mut flipped = sealed.clone();
        flipped.nonce[0] ^= 0x01;
        assert!(matches!(
            key().open(&flipped, AAD),
            Err(SealError::OpenFailed)
        ));

        for nonce in [vec![], vec![7; 11], vec![7; 13]] {
            let malformed = SealedSecret {
                nonce,
                ..sealed.clone()
            };
            assert!(matches!(
                key().open(&malformed, AAD),
                Err(SealError::OpenFailed)
            ));
        }
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = key().seal(SECRET, NONCE, AAD).unwrap();
        let mut other = KEY;
        other[31] ^= 0x01;
        let other = MasterKey::from_bytes(&other).unwrap();
        assert!(matches!(
            other.open(&sealed, AAD),
            Err(SealError::OpenFailed)
        ));
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let bytes: Vec<u8> = (0..32).collect();
        let key = MasterKey::from_bytes(&bytes).unwrap();
        let debug = format!("{key:?}");
        assert_eq!(debug, "MasterKey(<redacted>)");
        assert!(!debug.contains(&format!("{bytes:?}")));
        assert!(!debug.contains(&hex::encode(&bytes)));
        assert!(!format!("{key:#?}").contains("31"));
    }

    #[test]
    fn sealed_debug_shows_lengths_only() {
        let sealed = key().seal(SECRET, NONCE, AAD).unwrap();
        assert_eq!(
            format!("{sealed:?}"),
            "SealedSecret { nonce_len: 12, ciphertext_len: 36 }"
        );
    }

    #[test]
    fn errors_do_not_carry_secret_material() {
        let sealed = key().seal(SECRET, NONCE, AAD).unwrap();
        let err = MasterKey::from_bytes(&[0; 32])
            .unwrap()
            .open(&sealed, AAD)
            .unwrap_err();
        assert_eq!(err.to_string(), "sealed secret could not be opened");
        assert_eq!(format!("{err:?}"), "OpenFailed");
    }
}
