//! Passkeys (WebAuthn credentials) as the aggregate sees them. The
//! cryptography (CBOR, COSE keys, signatures, origins, RP ID hashes) is
//! checked outside the domain by a WebAuthn library (app/src/passkeys.rs);
//! its verdict comes in with the command, as a verified password does.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::UserError;
use crate::policy;

/// A WebAuthn ceremony's server-side state, serialised by the library that
/// made it: it holds the single-use challenge. Opaque to the domain; kept in
/// events under a field named `ceremony_secret`, which the audit trail
/// leaves out, and never shown in `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CeremonyState(String);

impl CeremonyState {
    pub fn new(state: String) -> Self {
        CeremonyState(state)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CeremonyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CeremonyState(<redacted>)")
    }
}

/// A registered credential as the WebAuthn library stores it (its public
/// key, algorithm, flags, attestation): not a secret. Opaque to the domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PasskeyCredential(serde_json::Value);

impl PasskeyCredential {
    pub fn new(value: serde_json::Value) -> Self {
        PasskeyCredential(value)
    }

    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }
}

/// Which WebAuthn ceremony an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasskeyCeremony {
    Registration,
    /// The second step of a sign-in after the password.
    SecondFactor,
    /// A sign-in without a password.
    SignIn,
}

/// Why a WebAuthn response was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasskeyRefusal {
    /// Not the challenge this ceremony issued.
    WrongChallenge,
    /// Signed for another origin than the service's.
    WrongOrigin,
    /// The authenticator data names another relying party.
    WrongRelyingParty,
    /// Not a WebAuthn response of the expected type.
    WrongType,
    UserNotPresent,
    /// User verification was required and not performed.
    UserNotVerified,
    /// The signature does not verify with the credential's public key.
    BadSignature,
    /// The credential is not one of this user's passkeys.
    UnknownCredential,
    /// An algorithm the service does not accept.
    UnsupportedAlgorithm,
    /// The response could not be parsed (attestation object, client data,
    /// authenticator data).
    Malformed,
    /// The signature counter went backwards: the authenticator may have
    /// been cloned (`PasskeyCounterRegressed` says by how much).
    PossibleClone,
}

impl PasskeyRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            PasskeyRefusal::WrongChallenge => "wrong_challenge",
            PasskeyRefusal::WrongOrigin => "wrong_origin",
            PasskeyRefusal::WrongRelyingParty => "wrong_relying_party",
            PasskeyRefusal::WrongType => "wrong_type",
            PasskeyRefusal::UserNotPresent => "user_not_present",
            PasskeyRefusal::UserNotVerified => "user_not_verified",
            PasskeyRefusal::BadSignature => "bad_signature",
            PasskeyRefusal::UnknownCredential => "unknown_credential",
            PasskeyRefusal::UnsupportedAlgorithm => "unsupported_algorithm",
            PasskeyRefusal::Malformed => "malformed",
            PasskeyRefusal::PossibleClone => "possible_clone",
        }
    }
}

/// A registration response the library verified.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedRegistration {
    /// The credential id, base64url without padding.
    pub credential_id: String,
    pub credential: PasskeyCredential,
    /// The signature counter at registration (0 when the authenticator
    /// keeps none).
    pub counter: u32,
    pub user_verified: bool,
    /// The attestation statement's format (`none`, `packed`, ...).
    pub attestation_format: String,
}

/// An assertion whose signature, challenge, origin and RP ID the library
/// verified against `credential_id`'s public key (the counter rule is the
/// domain's).
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedAssertion {
    pub credential_id: String,
    pub counter: u32,
    pub user_verified: bool,
}

/// A passkey of the user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Passkey {
    pub id: Uuid,
    pub name: String,
    pub credential_id: String,
    pub credential: PasskeyCredential,
    /// The highest signature counter seen; 0 while the authenticator keeps none.
    pub counter: u32,
    pub user_verified: bool,
    pub attestation_format: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl Passkey {
    /// The WebAuthn rule: when either counter is non-zero, the new one must
    /// be above the stored one; otherwise the authenticator may be cloned.
    pub fn counter_goes_backwards(&self, asserted: u32) -> bool {
        (asserted > 0 || self.counter > 0) && asserted <= self.counter
    }
}

/// A registration ceremony begun and not yet finished.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingPasskeyRegistration {
    pub id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub ceremony_secret: CeremonyState,
}

/// A passkey's name as the user gave it: trimmed, 1 to
/// `policy::PASSKEY_NAME_MAX_CHARS` characters, no control characters.
pub fn passkey_name(name: &str) -> Result<String, UserError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > policy::PASSKEY_NAME_MAX_CHARS || name.chars().any(char::is_control) {
        return Err(UserError::InvalidPasskeyName);
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passkey(counter: u32) -> Passkey {
        Passkey {
            id: Uuid::nil(),
            name: "key".into(),
            credential_id: "AA".into(),
            credential: PasskeyCredential::new(serde_json::Value::Null),
            counter,
            user_verified: true,
            attestation_format: "none".into(),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            last_used_at: None,
        }
    }

    #[test]
    fn an_authenticator_without_a_counter_is_never_taken_for_a_clone() {
        assert!(!passkey(0).counter_goes_backwards(0));
    }

    #[test]
    fn a_counter_must_rise_once_either_side_keeps_one() {
        assert!(!passkey(0).counter_goes_backwards(1));
        assert!(!passkey(5).counter_goes_backwards(6));
        assert!(passkey(5).counter_goes_backwards(5));
        assert!(passkey(5).counter_goes_backwards(4));
        assert!(passkey(5).counter_goes_backwards(0));
    }

    #[test]
    fn a_name_is_trimmed_and_bounded() {
        assert_eq!(passkey_name("  Laptop ").as_deref(), Ok("Laptop"));
        assert_eq!(passkey_name("   "), Err(UserError::InvalidPasskeyName));
        assert_eq!(passkey_name("a\u{7}b"), Err(UserError::InvalidPasskeyName));
        let long = "x".repeat(policy::PASSKEY_NAME_MAX_CHARS + 1);
        assert_eq!(passkey_name(&long), Err(UserError::InvalidPasskeyName));
    }

    #[test]
    fn the_ceremony_state_is_never_printed() {
        let state = CeremonyState::new("challenge".into());
        assert!(!format!("{state:?}").contains("challenge"));
    }
}
