//! Passkeys: registering, listing, renaming and removing them, the second
//! step of a sign-in with one, and signing in with one alone.
//!
//! The WebAuthn checks (CBOR, COSE keys, signatures, challenge, origin, RP
//! ID hash, flags) are webauthn-rs-core's; its verdict goes into the
//! aggregate's command, which decides (single use, expiry, the counter
//! rule, locks) and records. The library's ceremony state, with the
//! challenge, is kept in the user's events (`ceremony_secret`, left out of
//! the audit trail) or, for a sign-in without a password, which has no user
//! yet, in `passkey_sign_ins` until its answer takes it: either way every
//! process of the service sees it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use twofold_domain::passkey::{
    passkey_name, CeremonyState, Passkey, PasskeyCredential, PasskeyRefusal, VerifiedAssertion,
    VerifiedRegistration,
};
use twofold_domain::{policy, User, UserCommand, UserEvent};
use uuid::Uuid;
use webauthn_rs_core::error::WebauthnError;
use webauthn_rs_core::proto::{
    AttestationConveyancePreference, AuthenticationState, COSEAlgorithm, Credential, CredentialID,
    PublicKeyCredential, RegisterPublicKeyCredential, RegistrationState, ResidentKeyRequirement,
    UserVerificationPolicy,
};
use webauthn_rs_core::WebauthnCore;

use crate::sign_in::second_factor_answer;
use crate::{App, AppError, RequestOrigin, SecondFactorPassed, Session, Written};

/// Who the passkeys are for: the service as people reach it.
#[derive(Clone, Debug)]
pub struct RelyingParty {
    /// `--public-url`: its host is the RP ID, its origin the only origin.
    pub public_url: url::Url,
    /// The RP name shown by authenticators (the TOTP issuer).
    pub name: String,
}

impl RelyingParty {
    pub fn id(&self) -> Option<&str> {
        self.public_url.host_str()
    }

    pub fn origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }

    /// The library, set to this relying party: one origin, no subdomains,
    /// no other port.
    pub(crate) fn webauthn(&self) -> Result<WebauthnCore, String> {
        let id = self
            .id()
            .ok_or_else(|| format!("the public URL {} has no host", self.public_url))?;
        let origin = url::Url::parse(&self.origin()).map_err(|error| error.to_string())?;
        let lifetime = policy::passkey_registration_lifetime()
            .to_std()
            .map_err(|error| error.to_string())?;
        Ok(WebauthnCore::new_unsafe_experts_only(
            &self.name,
            id,
            vec![origin],
            lifetime,
            Some(false),
            Some(false),
        ))
    }
}

/// A passkey as the user sees it.
#[derive(Clone, Debug)]
pub struct PasskeyView {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<&Passkey> for PasskeyView {
    fn from(passkey: &Passkey) -> Self {
        PasskeyView {
            id: passkey.id,
            name: passkey.name.clone(),
            created_at: passkey.created_at,
            last_used_at: passkey.last_used_at,
        }
    }
}

/// Options for the browser's `navigator.credentials.create()`.
#[derive(Debug)]
pub struct PasskeyRegistrationOptions {
    pub registration_id: Uuid,
    /// `PublicKeyCredentialCreationOptionsJSON`.
    pub public_key: serde_json::Value,
}

/// Options for `navigator.credentials.get()` in a sign-in without a password.
#[derive(Debug)]
pub struct PasskeySignInOptions {
    pub challenge_id: Uuid,
    /// `PublicKeyCredentialRequestOptionsJSON`.
    pub public_key: serde_json::Value,
}

/// The algorithms asked for: ES256 and EdDSA (Ed25519), and RS256 for
/// Windows Hello.
fn algorithms() -> Vec<COSEAlgorithm> {
    vec![
        COSEAlgorithm::ES256,
        COSEAlgorithm::EDDSA,
        COSEAlgorithm::RS256,
    ]
}

/// What the library found wrong, in the domain's words.
fn refusal(error: &WebauthnError) -> PasskeyRefusal {
    use WebauthnError as E;
    match error {
        E::MismatchedChallenge | E::ChallengeNotFound => PasskeyRefusal::WrongChallenge,
        E::InvalidRPOrigin | E::CredentialCrossOrigin => PasskeyRefusal::WrongOrigin,
        E::InvalidRPIDHash => PasskeyRefusal::WrongRelyingParty,
        E::InvalidClientDataType => PasskeyRefusal::WrongType,
        E::UserNotPresent => PasskeyRefusal::UserNotPresent,
        E::UserNotVerified => PasskeyRefusal::UserNotVerified,
        E::CredentialNotFound => PasskeyRefusal::UnknownCredential,
        E::CredentialAlteredAlgFromRequest
        | E::COSEKeyInvalidAlgorithm
        | E::COSEKeyEDUnsupported
        | E::CredentialInsecureCryptography => PasskeyRefusal::UnsupportedAlgorithm,
        E::AuthenticationFailure | E::OpenSSLError(_) => PasskeyRefusal::BadSignature,
        _ => PasskeyRefusal::Malformed,
    }
}

/// The refusal as a sentence for a 400.
fn refusal_message(reason: PasskeyRefusal) -> String {
    let text = match reason {
        PasskeyRefusal::WrongChallenge => {
            "the response does not answer this registration's challenge"
        }
        PasskeyRefusal::WrongOrigin => "the response was made for another origin",
        PasskeyRefusal::WrongRelyingParty => "the response names another relying party",
        PasskeyRefusal::WrongType => "the response is not a WebAuthn registration",
        PasskeyRefusal::UserNotPresent => "the authenticator did not confirm the user's presence",
        PasskeyRefusal::UserNotVerified => "the authenticator did not verify the user",
        PasskeyRefusal::BadSignature => "the attestation's signature does not verify",
        PasskeyRefusal::UnknownCredential => "unknown credential",
        PasskeyRefusal::UnsupportedAlgorithm => "the credential's algorithm is not accepted",
        PasskeyRefusal::Malformed => "the credential is malformed",
        PasskeyRefusal::PossibleClone => "the authenticator's counter went backwards",
    };
    text.to_string()
}

/// The JSON without the `null` members the library writes for absent
/// options (WebAuthn's JSON leaves them out).
fn without_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(members) => serde_json::Value::Object(
            members
                .into_iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(name, value)| (name, without_nulls(value)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(without_nulls).collect())
        }
        other => other,
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, AppError> {
    serde_json::to_value(value).map_err(|error| AppError::Internal(error.to_string()))
}

fn decode_id(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

/// A registration response, read as the library reads it; a malformed one,
/// one of another type or one with an oversized credential id is refused.
fn registration_response(
    credential: serde_json::Value,
) -> Result<RegisterPublicKeyCredential, PasskeyRefusal> {
    let response: RegisterPublicKeyCredential =
        serde_json::from_value(credential).map_err(|_| PasskeyRefusal::Malformed)?;
    if response.type_ != "public-key" {
        return Err(PasskeyRefusal::WrongType);
    }
    if response.raw_id.len() > policy::PASSKEY_CREDENTIAL_ID_MAX_BYTES {
        return Err(PasskeyRefusal::Malformed);
    }
    Ok(response)
}

fn assertion_response(credential: serde_json::Value) -> Option<PublicKeyCredential> {
    let response: PublicKeyCredential = serde_json::from_value(credential).ok()?;
    let fits = response.type_ == "public-key"
        && response.raw_id.len() <= policy::PASSKEY_CREDENTIAL_ID_MAX_BYTES;
    fits.then_some(response)
}

/// The user's passkeys as the library checks assertions against them. The
/// stored counter is left out (0): the counter rule is the aggregate's,
/// which records a counter that goes backwards instead of only refusing it.
fn library_credentials(user: &User) -> Result<Vec<Credential>, AppError> {
    user.passkeys()
        .iter()
        .map(|passkey| {
            let mut credential: Credential =
                serde_json::from_value(passkey.credential.value().clone())
                    .map_err(|error| AppError::Internal(format!("a stored passkey: {error}")))?;
            credential.counter = 0;
            Ok(credential)
        })
        .collect()
}

impl App {
    fn webauthn(&self) -> Result<WebauthnCore, AppError> {
        self.settings
            .relying_party
            .webauthn()
            .map_err(AppError::Internal)
    }

    /// Begins registering a passkey (from a full session or one held on
    /// enrollment; never from "Login as": only the user holds their factors).
    pub async fn start_passkey_registration(
        &self,
        session: &Session,
        origin: &RequestOrigin,
    ) -> Result<Written<PasskeyRegistrationOptions>, AppError> {
        Self::refuse_impersonation(session)?;
        let loaded = self.load(session.user_id()).await?;
        let username = session.record.username.clone();
        let excluded = loaded
            .user
            .passkeys()
            .iter()
            .filter_map(|passkey| decode_id(&passkey.credential_id))
            .map(CredentialID::from)
            .collect::<Vec<_>>();
        let webauthn = self.webauthn()?;
        let builder = webauthn
            .new_challenge_register_builder(loaded.id.as_bytes(), &username, &username)
            .map_err(|error| AppError::Internal(error.to_string()))?
            .attestation(AttestationConveyancePreference::None)
            .user_verification_policy(UserVerificationPolicy::Preferred)
            .credential_algorithms(algorithms())
            .exclude_credentials(Some(excluded));
        let (mut options, state) = webauthn
            .generate_challenge_register(builder)
            .map_err(|error| AppError::Internal(error.to_string()))?;
        if let Some(selection) = &mut options.public_key.authenticator_selection {
            selection.resident_key = Some(ResidentKeyRequirement::Preferred);
        }
        let state =
            serde_json::to_string(&state).map_err(|error| AppError::Internal(error.to_string()))?;
        let registration_id = Uuid::new_v4();
        let now = self.now();
        let committed = self
            .execute(
                loaded,
                &session.metadata(origin, now),
                UserCommand::StartPasskeyRegistration {
                    registration_id,
                    ceremony_secret: CeremonyState::new(state),
                    at: now,
                },
            )
            .await?;
        Ok(Written::new(
            PasskeyRegistrationOptions {
                registration_id,
                public_key: without_nulls(to_json(&options.public_key)?),
            },
            &committed,
        ))
    }

    /// Finishes a registration with the browser's answer.
    pub async fn finish_passkey_registration(
        &self,
        session: &Session,
        origin: &RequestOrigin,
        registration_id: Uuid,
        name: String,
        credential: serde_json::Value,
    ) -> Result<Written<PasskeyView>, AppError> {
        Self::refuse_impersonation(session)?;
        let user_id = session.user_id();
        let name = passkey_name(&name).map_err(|error| AppError::refused(error, self.now()))?;
        let loaded = self.load(user_id).await?;
        let pending = loaded
            .user
            .pending_passkey_registration(registration_id)
            .ok_or(AppError::NotFound("no such passkey registration"))?;
        let now = self.now();
        if now >= pending.expires_at {
            return Err(AppError::ChallengeExpired);
        }
        let state: RegistrationState = serde_json::from_str(pending.ceremony_secret.as_str())
            .map_err(|error| AppError::Internal(format!("a stored registration: {error}")))?;
        let response = registration_response(credential);
        // One of the user's own passkeys again: 409, as for another user's.
        // (Checked here because webauthn-rs-core 0.5.5 reports a credential
        // of the exclude list as `CredentialAlteredAlgFromRequest`.)
        if let Ok(response) = &response {
            let credential_id = URL_SAFE_NO_PAD.encode(response.raw_id.as_slice());
            if loaded.user.passkey_by_credential(&credential_id).is_some() {
                return Err(AppError::Conflict(
                    "this passkey is already registered".into(),
                ));
            }
        }
        let webauthn = self.webauthn()?;
        let verdict = response.and_then(|response| {
            let credential = webauthn
                .register_credential(&response, &state, None)
                .map_err(|error| refusal(&error))?;
            Ok(VerifiedRegistration {
                credential_id: URL_SAFE_NO_PAD.encode(credential.cred_id.as_slice()),
                counter: credential.counter,
                user_verified: credential.user_verified,
                attestation_format: serde_json::to_value(&credential.attestation_format)
                    .ok()
                    .and_then(|format| format.as_str().map(str::to_string))
                    .unwrap_or_else(|| "unknown".into()),
                credential: PasskeyCredential::new(
                    serde_json::to_value(&credential).map_err(|_| PasskeyRefusal::Malformed)?,
                ),
            })
        });
        let claimed = match &verdict {
            Ok(verified) => Some(
                self.claim_credential(&verified.credential_id, user_id)
                    .await?,
            ),
            Err(_) => None,
        };
        let passkey_id = Uuid::new_v4();
        let result = self
            .execute(
                loaded,
                &session.metadata(origin, now),
                UserCommand::FinishPasskeyRegistration {
                    registration_id,
                    passkey_id,
                    name,
                    verdict,
                    at: now,
                },
            )
            .await;
        let committed = match result {
            Ok(committed) => committed,
            Err(error) => {
                // Not stored: the claim goes, unless the user held it before.
                if let Some((credential_id, true)) = claimed {
                    self.passkeys.release(&credential_id, user_id).await?;
                }
                return Err(error);
            }
        };
        for event in &committed.events {
            match event {
                UserEvent::PasskeyRegistered {
                    passkey_id,
                    name,
                    registered_at,
                    ..
                } => {
                    return Ok(Written::new(
                        PasskeyView {
                            id: *passkey_id,
                            name: name.clone(),
                            created_at: *registered_at,
                            last_used_at: None,
                        },
                        &committed,
                    ))
                }
                UserEvent::PasskeyRejected { reason, .. } => {
                    return Err(AppError::InvalidRequest(refusal_message(*reason)))
                }
                _ => {}
            }
        }
        Err(AppError::Internal(
            "a passkey registration stored neither a passkey nor a refusal".into(),
        ))
    }

    /// Claims a credential id for `user_id`: 409 when another user holds the
    /// passkey. A claim left by a registration that was never stored (the
    /// holder has no such passkey) passes to this user. Gives the id and
    /// whether this call made the claim.
    async fn claim_credential(
        &self,
        credential_id: &str,
        user_id: Uuid,
    ) -> Result<(String, bool), AppError> {
        let before = self.passkeys.owner(credential_id).await?;
        let holder = self.passkeys.claim(credential_id, user_id).await?;
        if holder != user_id {
            let other = self.load(holder).await?;
            if other.user.passkey_by_credential(credential_id).is_some()
                || !self
                    .passkeys
                    .take_over(credential_id, holder, user_id)
                    .await?
            {
                return Err(AppError::Conflict(
                    "this passkey is already registered".into(),
                ));
            }
        }
        Ok((credential_id.to_string(), before != Some(user_id)))
    }

    /// The user's passkeys.
    pub async fn passkeys(&self, session: &Session) -> Result<Vec<PasskeyView>, AppError> {
        let loaded = self.load(session.user_id()).await?;
        Ok(loaded
            .user
            .passkeys()
            .iter()
            .map(PasskeyView::from)
            .collect())
    }

    pub async fn rename_passkey(
        &self,
        session: &Session,
        origin: &RequestOrigin,
        passkey_id: Uuid,
        name: String,
    ) -> Result<Written<PasskeyView>, AppError> {
        let loaded = self.load(session.user_id()).await?;
        let committed = self
            .execute(
                loaded,
                &session.metadata(origin, self.now()),
                UserCommand::RenamePasskey { passkey_id, name },
            )
            .await?;
        let loaded = self.load(session.user_id()).await?;
        let passkey = loaded
            .user
            .passkeys()
            .iter()
            .find(|passkey| passkey.id == passkey_id)
            .ok_or(AppError::NotFound("no such passkey"))?;
        Ok(Written::new(PasskeyView::from(passkey), &committed))
    }

    /// Removes a passkey (409 when it is the last factor of a user who must
    /// have 2FA) and releases its credential id.
    pub async fn remove_passkey(
        &self,
        session: &Session,
        origin: &RequestOrigin,
        passkey_id: Uuid,
    ) -> Result<Written<()>, AppError> {
        let user_id = session.user_id();
        let loaded = self.load(user_id).await?;
        let now = self.now();
        let committed = self
            .execute(
                loaded,
                &session.metadata(origin, now),
                UserCommand::RemovePasskey {
                    passkey_id,
                    policy: self.settings.policy,
                    at: now,
                },
            )
            .await?;
        for event in &committed.events {
            if let UserEvent::PasskeyRemoved { credential_id, .. } = event {
                self.passkeys.release(credential_id, user_id).await?;
            }
        }
        Ok(Written::new((), &committed))
    }

    /// After 2FA went off (reset, turned off): the user's credential ids
    /// are free again.
    pub(crate) async fn release_passkeys(&self, user_id: Uuid) -> Result<(), AppError> {
        let loaded = self.load(user_id).await?;
        let kept: Vec<String> = loaded
            .user
            .passkeys()
            .iter()
            .map(|passkey| passkey.credential_id.clone())
            .collect();
        Ok(self.passkeys.release_all_but(user_id, &kept).await?)
    }

    /// Options to sign an open sign-in challenge with one of the user's passkeys.
    pub async fn passkey_challenge_options(
        &self,
        origin: &RequestOrigin,
        challenge_id: Uuid,
    ) -> Result<Written<serde_json::Value>, AppError> {
        let loaded = self.challenge_owner(challenge_id).await?;
        let credentials = library_credentials(&loaded.user)?;
        if credentials.is_empty() {
            return Err(AppError::InvalidRequest(
                "this user has no passkey".to_string(),
            ));
        }
        let webauthn = self.webauthn()?;
        let builder = webauthn
            .new_challenge_authenticate_builder(
                credentials,
                Some(UserVerificationPolicy::Preferred),
            )
            .map_err(|error| AppError::Internal(error.to_string()))?;
        let (options, state) = webauthn
            .generate_challenge_authenticate(builder)
            .map_err(|error| AppError::Internal(error.to_string()))?;
        let state =
            serde_json::to_string(&state).map_err(|error| AppError::Internal(error.to_string()))?;
        let now = self.now();
        let metadata = self.metadata(origin, Some(loaded.id));
        let committed = self
            .execute(
                loaded,
                &metadata,
                UserCommand::StartPasskeyAssertion {
                    challenge_id,
                    ceremony_secret: CeremonyState::new(state),
                    at: now,
                },
            )
            .await?;
        Ok(Written::new(
            without_nulls(to_json(&options.public_key)?),
            &committed,
        ))
    }

    /// The second step with a passkey: answers as the other methods do
    /// (401 `invalid_code` with the attempts left when refused).
    pub async fn verify_passkey_second_factor(
        &self,
        origin: &RequestOrigin,
        challenge_id: Uuid,
        credential: serde_json::Value,
        remember_device: bool,
    ) -> Result<Written<SecondFactorPassed>, AppError> {
        let loaded = self.challenge_owner(challenge_id).await?;
        let now = self.now();
        let state = loaded
            .user
            .passkey_assertion_state(challenge_id, now)
            .map_err(|error| AppError::refused(error, now))?
            .ok_or_else(|| {
                AppError::InvalidRequest(
                    "ask for the passkey options of this challenge first".into(),
                )
            })?;
        let mut state: AuthenticationState = serde_json::from_str(state.as_str())
            .map_err(|error| AppError::Internal(format!("a stored assertion: {error}")))?;
        state.set_allowed_credentials(library_credentials(&loaded.user)?);
        let verdict = self.judge_assertion(assertion_response(credential), &state)?;
        let (token, session) = self.new_session(self.settings.session_lifetime);
        let (device_token, device) = self.device_to_remember(remember_device, origin, now);
        let metadata = self.metadata(origin, Some(loaded.id));
        let committed = self
            .execute(
                loaded,
                &metadata,
                UserCommand::VerifyPasskey {
                    challenge_id,
                    verdict,
                    session: session.clone(),
                    remember_device: device,
                    at: now,
                },
            )
            .await?;
        second_factor_answer(&committed, token, session.expires_at, device_token)
    }

    /// The library's verdict on an assertion against `state`.
    fn judge_assertion(
        &self,
        response: Option<PublicKeyCredential>,
        state: &AuthenticationState,
    ) -> Result<Result<VerifiedAssertion, PasskeyRefusal>, AppError> {
        let Some(response) = response else {
            return Ok(Err(PasskeyRefusal::Malformed));
        };
        let webauthn = self.webauthn()?;
        Ok(webauthn
            .authenticate_credential(&response, state)
            .map(|result| VerifiedAssertion {
                credential_id: URL_SAFE_NO_PAD.encode(result.cred_id().as_slice()),
                counter: result.counter(),
                user_verified: result.user_verified(),
            })
            .map_err(|error| refusal(&error)))
    }

    /// Begins a sign-in without a password: no user is named, any of the
    /// service's passkeys may answer (with user verification).
    pub async fn start_passkey_sign_in(
        &self,
        origin: &RequestOrigin,
    ) -> Result<PasskeySignInOptions, AppError> {
        self.admit_attempt(origin)?;
        let webauthn = self.webauthn()?;
        let builder = webauthn
            .new_challenge_authenticate_builder(vec![], Some(UserVerificationPolicy::Required))
            .map_err(|error| AppError::Internal(error.to_string()))?;
        let (options, state) = webauthn
            .generate_challenge_authenticate(builder)
            .map_err(|error| AppError::Internal(error.to_string()))?;
        let state =
            serde_json::to_string(&state).map_err(|error| AppError::Internal(error.to_string()))?;
        let challenge_id = Uuid::new_v4();
        let now = self.now();
        self.passkeys
            .start_sign_in(
                challenge_id,
                &state,
                now + policy::passkey_sign_in_lifetime(),
                now,
            )
            .await?;
        let mut public_key = without_nulls(to_json(&options.public_key)?);
        if let Some(members) = public_key.as_object_mut() {
            members.insert("allowCredentials".into(), serde_json::json!([]));
        }
        Ok(PasskeySignInOptions {
            challenge_id,
            public_key,
        })
    }

    /// Signs in with a passkey alone. Whatever fails before a user is known
    /// (unknown challenge or credential, unreadable answer) answers as a
    /// wrong password does; a known user's refusal is recorded and counts
    /// toward the account's lock.
    pub async fn finish_passkey_sign_in(
        &self,
        origin: &RequestOrigin,
        challenge_id: Uuid,
        credential: serde_json::Value,
    ) -> Result<Written<SecondFactorPassed>, AppError> {
        let answer = self
            .passkey_sign_in_answer(origin, challenge_id, credential)
            .await;
        crate::metrics::passkey_sign_in(&answer);
        answer
    }

    async fn passkey_sign_in_answer(
        &self,
        origin: &RequestOrigin,
        challenge_id: Uuid,
        credential: serde_json::Value,
    ) -> Result<Written<SecondFactorPassed>, AppError> {
        self.admit_attempt(origin)?;
        let now = self.now();
        let started = self
            .passkeys
            .take_sign_in(challenge_id)
            .await?
            .filter(|started| now < started.expires_at)
            .ok_or(AppError::InvalidCredentials)?;
        let mut state: AuthenticationState = serde_json::from_str(&started.ceremony_secret)
            .map_err(|error| AppError::Internal(format!("a stored sign-in: {error}")))?;
        let response = assertion_response(credential).ok_or(AppError::InvalidCredentials)?;
        let credential_id = URL_SAFE_NO_PAD.encode(response.raw_id.as_slice());
        let holder = self
            .passkeys
            .owner(&credential_id)
            .await?
            .ok_or(AppError::InvalidCredentials)?;
        // The user handle, when given, must name the credential's holder.
        if let Some(handle) = &response.response.user_handle {
            if Uuid::from_slice(handle.as_slice()).ok() != Some(holder) {
                return Err(AppError::InvalidCredentials);
            }
        }
        let loaded = self.load(holder).await?;
        if loaded.user.passkey_by_credential(&credential_id).is_none() {
            return Err(AppError::InvalidCredentials);
        }
        state.set_allowed_credentials(library_credentials(&loaded.user)?);
        let verdict = self.judge_assertion(Some(response), &state)?;
        let (token, session) = self.new_session(self.settings.session_lifetime);
        let metadata = self.metadata(origin, Some(holder));
        let committed = self
            .execute(
                loaded,
                &metadata,
                UserCommand::SignInWithPasskey {
                    verdict,
                    session: session.clone(),
                    at: now,
                },
            )
            .await?;
        let started = committed
            .events
            .iter()
            .any(|event| matches!(event, UserEvent::SessionStarted { .. }));
        if !started {
            return Err(AppError::InvalidCredentials);
        }
        Ok(Written::new(
            SecondFactorPassed {
                session_token: token,
                expires_at: session.expires_at,
                device: None,
            },
            &committed,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(url: &str) -> RelyingParty {
        RelyingParty {
            public_url: url::Url::parse(url).unwrap_or_else(|_| unreachable!()),
            name: "twofold".into(),
        }
    }

    #[test]
    fn the_relying_party_is_the_public_urls_host_and_origin() {
        let rp = party("https://login.example.com:8443/some/path");
        assert_eq!(rp.id(), Some("login.example.com"));
        assert_eq!(rp.origin(), "https://login.example.com:8443");
        let rp = party("http://localhost:8080");
        assert_eq!(rp.id(), Some("localhost"));
        assert_eq!(rp.origin(), "http://localhost:8080");
    }

    #[test]
    fn absent_options_are_left_out_of_the_json() {
        let value = serde_json::json!({"a": null, "b": {"c": null, "d": 1}, "e": [{"f": null}]});
        assert_eq!(
            without_nulls(value),
            serde_json::json!({"b": {"d": 1}, "e": [{}]})
        );
    }
}
