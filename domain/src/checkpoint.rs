//! Signed audit checkpoints: an Ed25519 signature over where the audit
//! trail stood (`position`, `head`) and when (`signed_at`). Anyone holding
//! the public key can check, long after, that the history still leads to
//! that head: a cut, an edit or a reordering of the events before the
//! checkpoint changes the head recomputed at its position.
//!
//! The signed message is the UTF-8 text
//! `twofold-audit-checkpoint:v1:<position>:<head>:<signed_at>`, with `head`
//! the 64 lower-case hex digits of the digest and `signed_at` RFC 3339 in
//! UTC with exactly six fractional digits and `Z`
//! (`2026-12-03T19:35:00.123456Z`). The text is stored as signed, so the
//! message is rebuilt byte for byte from a stored or exported checkpoint.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use data_encoding::BASE64URL_NOPAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// What precedes the fields in every signed message; a new layout gets a
/// new version.
const MESSAGE_PREFIX: &str = "twofold-audit-checkpoint:v1";

/// `signed_at` as it is signed, stored and shown.
pub fn signed_at_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The text an audit checkpoint's signature covers.
pub fn checkpoint_message(position: i64, head: &str, signed_at: &str) -> String {
    format!("{MESSAGE_PREFIX}:{position}:{head}:{signed_at}")
}

/// A checkpoint as stored, listed and exported: every field text, as signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub position: i64,
    /// Lower-case hex of the trail's head digest at `position`.
    pub head: String,
    pub signed_at: String,
    /// Which key signed it: [`AuditPublicKey::key_id`].
    pub key_id: String,
    /// Base64url (no padding) of the 64-byte Ed25519 signature.
    pub signature: String,
}

impl SignedCheckpoint {
    /// Whether `key` signed exactly these fields. A signature that is not
    /// 64 bytes of base64url does not verify.
    pub fn is_signed_by(&self, key: &AuditPublicKey) -> bool {
        let Ok(bytes) = BASE64URL_NOPAD.decode(self.signature.as_bytes()) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        let message = checkpoint_message(self.position, &self.head, &self.signed_at);
        key.0.verify_strict(message.as_bytes(), &signature).is_ok()
    }
}

/// Why a key's text was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("an audit signing key is 64 hex digits (a 32-byte Ed25519 seed)")]
    BadSigningKey,
    #[error("an audit public key is the base64url text of 32 bytes, as GET /api/v1/audit/public-key serves it")]
    BadPublicKey,
}

/// The service's Ed25519 key that signs checkpoints. Its `Debug` shows
/// only the key id.
pub struct AuditSigningKey(SigningKey);

impl AuditSigningKey {
    /// The key of a 32-byte seed (the key file holds it as 64 hex digits).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        AuditSigningKey(SigningKey::from_bytes(seed))
    }

    /// The key written as 64 hex digits (surrounding blanks ignored).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| KeyError::BadSigningKey)?;
        let key = Self::from_seed(&seed);
        zeroize::Zeroize::zeroize(&mut seed);
        Ok(key)
    }

    pub fn public_key(&self) -> AuditPublicKey {
        AuditPublicKey(self.0.verifying_key())
    }

    /// Signs that the trail's head at `position` was `head` at `at`.
    pub fn sign(&self, position: i64, head: &str, at: DateTime<Utc>) -> SignedCheckpoint {
        let signed_at = signed_at_text(at);
        let message = checkpoint_message(position, head, &signed_at);
        let signature = self.0.sign(message.as_bytes());
        SignedCheckpoint {
            position,
            head: head.to_string(),
            signed_at,
            key_id: self.public_key().key_id(),
            signature: BASE64URL_NOPAD.encode(&signature.to_bytes()),
        }
    }
}

impl fmt::Debug for AuditSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditSigningKey({})", self.public_key().key_id())
    }
}

/// The public half, published for auditors.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditPublicKey(VerifyingKey);

impl AuditPublicKey {
    /// The key as served: base64url (no padding) of its 32 bytes; blanks
    /// around it (a file's line break) ignored.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = BASE64URL_NOPAD
            .decode(text.trim().as_bytes())
            .map_err(|_| KeyError::BadPublicKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::BadPublicKey)?;
        VerifyingKey::from_bytes(&bytes)
            .map(AuditPublicKey)
            .map_err(|_| KeyError::BadPublicKey)
    }

    /// Base64url (no padding) of the raw 32 bytes.
    pub fn encoded(&self) -> String {
        BASE64URL_NOPAD.encode(self.0.as_bytes())
    }

    /// Hex of the first 8 bytes of SHA-256 of the raw 32 bytes: names the
    /// key in each checkpoint, so a verifier given several keys (before and
    /// after a change of key) knows which one to use.
    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }
}

impl fmt::Debug for AuditPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditPublicKey({})", self.encoded())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// RFC 8032, section 7.1, TEST 1.
    const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn rfc8032_key() -> AuditSigningKey {
        AuditSigningKey::parse(RFC8032_SEED).unwrap()
    }

    #[test]
    fn the_rfc_8032_seed_gives_its_public_key_and_signature() {
        let key = rfc8032_key();
        assert_eq!(hex::encode(key.public_key().0.as_bytes()), RFC8032_PUBLIC);
        assert_eq!(
            hex::encode(key.0.sign(b"").to_bytes()),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    /// The message layout and the time's text are the contract auditors'
    /// own tools rebuild; Ed25519 is deterministic, so the signature of a
    /// fixed checkpoint under the RFC key is pinned too.
    #[test]
    fn a_checkpoint_signs_the_pinned_message_text() {
        let at: DateTime<Utc> = "2026-12-03T19:35:00.1234567Z".parse().unwrap();
        let head = "ab".repeat(32);
        let checkpoint = rfc8032_key().sign(42, &head, at);
        assert_eq!(checkpoint.signed_at, "2026-12-03T19:35:00.123456Z");
        assert_eq!(
            checkpoint_message(42, &head, &checkpoint.signed_at),
            format!("twofold-audit-checkpoint:v1:42:{head}:2026-12-03T19:35:00.123456Z")
        );
        let public = AuditPublicKey::parse("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        assert_eq!(public, rfc8032_key().public_key());
        assert_eq!(
            public.key_id(),
            hex::encode(&Sha256::digest(public.0.as_bytes())[..8])
        );
        assert_eq!(checkpoint.key_id.len(), 16);
        assert!(checkpoint.is_signed_by(&public));
        assert_eq!(checkpoint.signature, PINNED_SIGNATURE);
    }

    /// Computed apart from this code, with Python's `cryptography`
    /// (`Ed25519PrivateKey.from_private_bytes(seed).sign(message)`).
    const PINNED_SIGNATURE: &str =
        "39UAJVHOhro-s3xPsGZSH8Rpsxy596h580NtPUOrPrlvpMAcY4wCXx4nIlpxq0kVMHIoLT1M7NZM6V9baQeRAg";

    #[test]
    fn a_changed_field_or_another_key_does_not_verify() {
        let key = rfc8032_key();
        let at: DateTime<Utc> = "2026-12-03T19:35:00Z".parse().unwrap();
        let checkpoint = key.sign(7, &"0f".repeat(32), at);
        assert!(checkpoint.is_signed_by(&key.public_key()));
        let changed = [
            SignedCheckpoint {
                position: 6,
                ..checkpoint.clone()
            },
            SignedCheckpoint {
                head: "0e".repeat(32),
                ..checkpoint.clone()
            },
            SignedCheckpoint {
                signed_at: "2026-12-03T19:35:01.000000Z".into(),
                ..checkpoint.clone()
            },
            SignedCheckpoint {
                signature: "not base64!".into(),
                ..checkpoint.clone()
            },
            SignedCheckpoint {
                signature: BASE64URL_NOPAD.encode(&[0u8; 64]),
                ..checkpoint.clone()
            },
        ];
        for changed in changed {
            assert!(!changed.is_signed_by(&key.public_key()), "{changed:?}");
        }
        let other = AuditSigningKey::from_seed(&[7; 32]);
        assert!(!checkpoint.is_signed_by(&other.public_key()));
    }

    #[test]
    fn keys_that_are_not_keys_are_refused_and_never_shown() {
        assert_eq!(
            AuditSigningKey::parse("00").unwrap_err(),
            KeyError::BadSigningKey
        );
        assert!(AuditSigningKey::parse(&"zz".repeat(32)).is_err());
        for text in [
            "",
            "AAAA",
            "not base64!",
            &BASE64URL_NOPAD.encode(&[1u8; 33]),
        ] {
            assert_eq!(
                AuditPublicKey::parse(text).unwrap_err(),
                KeyError::BadPublicKey,
                "{text}"
            );
        }
        let shown = format!("{:?}", rfc8032_key());
        assert!(!shown.contains(RFC8032_SEED), "{shown}");
        assert!(
            shown.contains(&rfc8032_key().public_key().key_id()),
            "{shown}"
        );
        let public = rfc8032_key().public_key();
        assert_eq!(
            AuditPublicKey::parse(&format!("{}\n", public.encoded())).unwrap(),
            public
        );
    }
}
