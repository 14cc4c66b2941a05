//! The user aggregate's passkey rules. The WebAuthn library's verdict (a
//! verified registration or assertion, or why it was refused) comes in with
//! the command; these tests give it directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use uuid::Uuid;

use twofold_domain::command::{NewSession, PasswordCheck};
use twofold_domain::passkey::{
    CeremonyState, PasskeyCeremony, PasskeyCredential, PasskeyRefusal, VerifiedAssertion,
    VerifiedRegistration,
};
use twofold_domain::policy;
use twofold_domain::{
    AuthenticatedBy, PasswordHash, Role, SecondFactorMethod, TokenHash, TwoFactorPolicy,
    TwoFactorStatus, User, UserCommand, UserError, UserEvent, Username,
};

const T0: i64 = 1_744_243_200;
const ALICE: Uuid = Uuid::from_u128(0xa11ce);
const REGISTRATION: Uuid = Uuid::from_u128(0x7e6);
const REGISTRATION_2: Uuid = Uuid::from_u128(0x7e7);
const PASSKEY: Uuid = Uuid::from_u128(0x9a55);
const PASSKEY_2: Uuid = Uuid::from_u128(0x9a56);
const CHALLENGE: Uuid = Uuid::from_u128(0xc1);
const SESSION: Uuid = Uuid::from_u128(0x5e55);
const CREDENTIAL: &str = "Y3JlZGVudGlhbC1vbmU";
const CREDENTIAL_2: &str = "Y3JlZGVudGlhbC10d28";

fn t(offset: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(T0 + offset, 0).unwrap()
}

fn stored_hash() -> PasswordHash {
    PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$alice".into())
}

fn alice() -> Vec<UserEvent> {
    vec![UserEvent::UserRegistered {
        user_id: ALICE,
        username: Username::parse("alice").unwrap(),
        email: None,
        role: Role::User,
        password_hash: stored_hash(),
        registered_at: t(-86_400),
    }]
}

fn session(offset: i64) -> NewSession {
    NewSession {
        session_id: SESSION,
        token_hash: TokenHash::of("session token"),
        expires_at: t(offset) + Duration::hours(12),
    }
}

fn run(history: &[UserEvent], command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
    TestFramework::<User>::with(())
        .given(history.to_vec())
        .when(command)
        .inspect_result()
}

fn record(history: &mut Vec<UserEvent>, command: UserCommand) -> Vec<UserEvent> {
    let events = run(history, command).unwrap_or_else(|e| panic!("command refused: {e}"));
    history.extend(events.iter().cloned());
    events
}

fn fold(history: &[UserEvent]) -> User {
    let mut user = User::default();
    for event in history {
        user.apply(event.clone());
    }
    user
}

fn start(registration_id: Uuid, offset: i64) -> UserCommand {
    UserCommand::StartPasskeyRegistration {
        registration_id,
        ceremony_secret: CeremonyState::new(format!("state of {registration_id}")),
        at: t(offset),
    }
}

fn verified(credential_id: &str) -> VerifiedRegistration {
    VerifiedRegistration {
        credential_id: credential_id.into(),
        credential: PasskeyCredential::new(serde_json::json!({ "cred_id": credential_id })),
        counter: 0,
        user_verified: true,
        attestation_format: "none".into(),
    }
}

fn finish(
    registration_id: Uuid,
    passkey_id: Uuid,
    verdict: Result<VerifiedRegistration, PasskeyRefusal>,
    offset: i64,
) -> UserCommand {
    UserCommand::FinishPasskeyRegistration {
        registration_id,
        passkey_id,
        name: "Laptop".into(),
        verdict,
        at: t(offset),
    }
}

/// Alice with one passkey (`CREDENTIAL`, counter 0) registered at t(0).
fn alice_with_passkey() -> Vec<UserEvent> {
    let mut history = alice();
    record(&mut history, start(REGISTRATION, 0));
    record(
        &mut history,
        finish(REGISTRATION, PASSKEY, Ok(verified(CREDENTIAL)), 10),
    );
    history
}

fn sign_in_with_password(history: &mut Vec<UserEvent>, offset: i64) -> Vec<UserEvent> {
    record(
        history,
        UserCommand::SignIn {
            password: PasswordCheck {
                matches: true,
                against: stored_hash(),
            },
            device_token: None,
            email_offered: false,
            session: session(offset),
            challenge_id: CHALLENGE,
            policy: TwoFactorPolicy::default(),
            at: t(offset),
        },
    )
}

fn ask_passkey_options(history: &mut Vec<UserEvent>, offset: i64) {
    record(
        history,
        UserCommand::StartPasskeyAssertion {
            challenge_id: CHALLENGE,
            ceremony_secret: CeremonyState::new("assertion state".into()),
            at: t(offset),
        },
    );
}

fn assertion(credential_id: &str, counter: u32, user_verified: bool) -> VerifiedAssertion {
    VerifiedAssertion {
        credential_id: credential_id.into(),
        counter,
        user_verified,
    }
}

fn verify(verdict: Result<VerifiedAssertion, PasskeyRefusal>, offset: i64) -> UserCommand {
    UserCommand::VerifyPasskey {
        challenge_id: CHALLENGE,
        verdict,
        session: session(offset),
        remember_device: None,
        at: t(offset),
    }
}

fn passwordless(verdict: Result<VerifiedAssertion, PasskeyRefusal>, offset: i64) -> UserCommand {
    UserCommand::SignInWithPasskey {
        verdict,
        session: session(offset),
        at: t(offset),
    }
}

fn names(events: &[UserEvent]) -> Vec<&'static str> {
    events.iter().map(UserEvent::name).collect()
}

fn enforced() -> UserEvent {
    UserEvent::TwoFactorEnforced {
        reason: Some("policy".into()),
    }
}

// ------------------------------------------------------------ registration

#[test]
fn a_registered_passkey_turns_two_factor_on() {
    let history = alice_with_passkey();
    let user = fold(&history);
    assert_eq!(user.two_factor_status(), TwoFactorStatus::Enabled);
    assert_eq!(user.two_factor_enabled_at(), Some(t(10)));
    assert_eq!(user.passkeys().len(), 1);
    assert_eq!(user.passkeys()[0].name, "Laptop");
    assert!(user.pending_passkey_registration(REGISTRATION).is_none());
}

#[test]
fn a_registration_id_works_once() {
    let history = alice_with_passkey();
    assert_eq!(
        run(
            &history,
            finish(REGISTRATION, PASSKEY_2, Ok(verified(CREDENTIAL_2)), 20)
        ),
        Err(UserError::PasskeyRegistrationNotFound)
    );
}

#[test]
fn a_registration_expires_after_five_minutes() {
    let mut history = alice();
    record(&mut history, start(REGISTRATION, 0));
    let lifetime = policy::passkey_registration_lifetime().num_seconds();
    assert_eq!(
        run(
            &history,
            finish(REGISTRATION, PASSKEY, Ok(verified(CREDENTIAL)), lifetime)
        ),
        Err(UserError::PasskeyRegistrationExpired)
    );
    assert!(run(
        &history,
        finish(
            REGISTRATION,
            PASSKEY,
            Ok(verified(CREDENTIAL)),
            lifetime - 1
        )
    )
    .is_ok());
}

#[test]
fn a_refused_registration_is_recorded_and_spends_its_id() {
    let mut history = alice();
    record(&mut history, start(REGISTRATION, 0));
    let events = record(
        &mut history,
        finish(REGISTRATION, PASSKEY, Err(PasskeyRefusal::WrongOrigin), 5),
    );
    assert_eq!(
        events,
        vec![UserEvent::PasskeyRejected {
            ceremony: PasskeyCeremony::Registration,
            reason: PasskeyRefusal::WrongOrigin,
            registration_id: Some(REGISTRATION),
            passkey_id: None,
            consecutive_failures: None,
            locked_until: None,
        }]
    );
    assert_eq!(
        run(
            &history,
            finish(REGISTRATION, PASSKEY, Ok(verified(CREDENTIAL)), 6)
        ),
        Err(UserError::PasskeyRegistrationNotFound)
    );
    assert_eq!(
        fold(&history).two_factor_status(),
        TwoFactorStatus::Disabled
    );
}

#[test]
fn the_same_credential_can_not_be_registered_twice() {
    let mut history = alice_with_passkey();
    record(&mut history, start(REGISTRATION_2, 20));
    assert_eq!(
        run(
            &history,
            finish(REGISTRATION_2, PASSKEY_2, Ok(verified(CREDENTIAL)), 25)
        ),
        Err(UserError::PasskeyAlreadyRegistered)
    );
}

#[test]
fn a_passkey_name_must_be_given() {
    let mut history = alice();
    record(&mut history, start(REGISTRATION, 0));
    let command = UserCommand::FinishPasskeyRegistration {
        registration_id: REGISTRATION,
        passkey_id: PASSKEY,
        name: "  ".into(),
        verdict: Ok(verified(CREDENTIAL)),
        at: t(5),
    };
    assert_eq!(run(&history, command), Err(UserError::InvalidPasskeyName));
}

#[test]
fn a_user_holds_a_bounded_number_of_passkeys() {
    let mut history = alice();
    for n in 0..policy::PASSKEYS_PER_USER {
        let n = u128::try_from(n).unwrap();
        let registration = Uuid::from_u128(0x1000 + n);
        record(&mut history, start(registration, 0));
        record(
            &mut history,
            finish(
                registration,
                Uuid::from_u128(0x2000 + n),
                Ok(verified(&format!("cred{n}"))),
                1,
            ),
        );
    }
    assert_eq!(
        run(&history, start(REGISTRATION, 2)),
        Err(UserError::TooManyPasskeys)
    );
}

// ------------------------------------------------------ rename and remove

#[test]
fn renaming_records_only_a_change() {
    let history = alice_with_passkey();
    let rename = |name: &str| UserCommand::RenamePasskey {
        passkey_id: PASSKEY,
        name: name.into(),
    };
    assert_eq!(run(&history, rename("Laptop")), Ok(vec![]));
    assert_eq!(
        run(&history, rename(" Phone ")),
        Ok(vec![UserEvent::PasskeyRenamed {
            passkey_id: PASSKEY,
            name: "Phone".into(),
        }])
    );
    assert_eq!(
        run(&history, rename("")),
        Err(UserError::InvalidPasskeyName)
    );
}

#[test]
fn removing_the_last_factor_of_a_user_who_must_have_two_factor_is_refused() {
    let mut history = alice_with_passkey();
    history.push(enforced());
    let remove = UserCommand::RemovePasskey {
        passkey_id: PASSKEY,
        policy: TwoFactorPolicy::default(),
        at: t(20),
    };
    assert_eq!(
        run(&history, remove.clone()),
        Err(UserError::TwoFactorEnforced)
    );

    // Past the platform date, too.
    let history = alice_with_passkey();
    let mandatory = UserCommand::RemovePasskey {
        passkey_id: PASSKEY,
        policy: TwoFactorPolicy {
            mandatory_from: Some(t(0)),
        },
        at: t(20),
    };
    assert_eq!(run(&history, mandatory), Err(UserError::TwoFactorEnforced));

    // Not the last one: allowed.
    let mut history = alice_with_passkey();
    history.push(enforced());
    record(&mut history, start(REGISTRATION_2, 20));
    record(
        &mut history,
        finish(REGISTRATION_2, PASSKEY_2, Ok(verified(CREDENTIAL_2)), 25),
    );
    let events = record(&mut history, remove);
    assert_eq!(
        events,
        vec![UserEvent::PasskeyRemoved {
            passkey_id: PASSKEY,
            credential_id: CREDENTIAL.into(),
        }]
    );
    assert_eq!(fold(&history).passkeys().len(), 1);
}

#[test]
fn removing_the_only_passkey_turns_two_factor_off_when_not_required() {
    let mut history = alice_with_passkey();
    record(
        &mut history,
        UserCommand::RemovePasskey {
            passkey_id: PASSKEY,
            policy: TwoFactorPolicy::default(),
            at: t(20),
        },
    );
    assert_eq!(
        fold(&history).two_factor_status(),
        TwoFactorStatus::Disabled
    );
}

#[test]
fn an_administrators_reset_removes_the_passkeys() {
    let mut history = alice_with_passkey();
    record(
        &mut history,
        UserCommand::ResetTwoFactor {
            reason: "lost phone".into(),
        },
    );
    let user = fold(&history);
    assert!(user.passkeys().is_empty());
    assert_eq!(user.two_factor_status(), TwoFactorStatus::Disabled);
}

// ------------------------------------------------------ the second step

#[test]
fn a_user_with_a_passkey_is_asked_for_it_after_the_password() {
    let mut history = alice_with_passkey();
    let events = sign_in_with_password(&mut history, 30);
    match events.as_slice() {
        [UserEvent::ChallengeIssued { methods, .. }] => {
            assert_eq!(methods, &vec![SecondFactorMethod::Passkey]);
        }
        other => panic!("expected a challenge, got {other:?}"),
    }
}

#[test]
fn a_passkey_assertion_passes_the_second_step() {
    let mut history = alice_with_passkey();
    sign_in_with_password(&mut history, 30);
    ask_passkey_options(&mut history, 31);
    let events = record(
        &mut history,
        verify(Ok(assertion(CREDENTIAL, 0, false)), 32),
    );
    assert_eq!(
        names(&events),
        ["SecondFactorAccepted", "PasskeyUsed", "SessionStarted"]
    );
    assert!(matches!(
        events[2],
        UserEvent::SessionStarted {
            authenticated_by: AuthenticatedBy::Passkey,
            ..
        }
    ));
    assert_eq!(fold(&history).passkeys()[0].last_used_at, Some(t(32)));
}

#[test]
fn an_assertion_is_refused_until_options_were_asked_for() {
    let mut history = alice_with_passkey();
    sign_in_with_password(&mut history, 30);
    assert_eq!(
        run(&history, verify(Ok(assertion(CREDENTIAL, 0, false)), 32)),
        Err(UserError::MethodUnavailable)
    );
}

#[test]
fn wrong_assertions_count_toward_the_challenges_lock() {
    let mut history = alice_with_passkey();
    sign_in_with_password(&mut history, 30);
    for attempt in 1..=policy::CHALLENGE_ATTEMPTS {
        ask_passkey_options(&mut history, 31);
        let events = record(&mut history, verify(Err(PasskeyRefusal::BadSignature), 32));
        assert_eq!(names(&events), ["PasskeyRejected", "SecondFactorRejected"]);
        match &events[1] {
            UserEvent::SecondFactorRejected {
                method,
                attempts_remaining,
                ..
            } => {
                assert_eq!(*method, SecondFactorMethod::Passkey);
                assert_eq!(*attempts_remaining, policy::CHALLENGE_ATTEMPTS - attempt);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        run(&history, verify(Ok(assertion(CREDENTIAL, 0, false)), 33)),
        Err(UserError::ChallengeLocked)
    );
}

#[test]
fn the_options_are_spent_by_a_refused_answer() {
    let mut history = alice_with_passkey();
    sign_in_with_password(&mut history, 30);
    ask_passkey_options(&mut history, 31);
    record(
        &mut history,
        verify(Err(PasskeyRefusal::WrongChallenge), 32),
    );
    assert_eq!(
        run(&history, verify(Ok(assertion(CREDENTIAL, 0, false)), 33)),
        Err(UserError::MethodUnavailable)
    );
}

#[test]
fn another_credential_than_the_users_is_refused() {
    let mut history = alice_with_passkey();
    sign_in_with_password(&mut history, 30);
    ask_passkey_options(&mut history, 31);
    let events = record(
        &mut history,
        verify(Ok(assertion(CREDENTIAL_2, 1, true)), 32),
    );
    assert!(matches!(
        events[0],
        UserEvent::PasskeyRejected {
            reason: PasskeyRefusal::UnknownCredential,
            ..
        }
    ));
}

#[test]
fn a_counter_that_goes_backwards_is_refused_and_recorded() {
    let mut history = alice_with_passkey();
    sign_in_with_password(&mut history, 30);
    ask_passkey_options(&mut history, 31);
    record(
        &mut history,
        verify(Ok(assertion(CREDENTIAL, 7, false)), 32),
    );
    assert_eq!(fold(&history).passkeys()[0].counter, 7);

    sign_in_with_password(&mut history, 60);
    ask_passkey_options(&mut history, 61);
    let events = record(
        &mut history,
        verify(Ok(assertion(CREDENTIAL, 7, false)), 62),
    );
    assert_eq!(
        names(&events),
        [
            "PasskeyCounterRegressed",
            "PasskeyRejected",
            "SecondFactorRejected"
        ]
    );
    assert_eq!(
        events[0],
        UserEvent::PasskeyCounterRegressed {
            passkey_id: PASSKEY,
            ceremony: PasskeyCeremony::SecondFactor,
            stored_counter: 7,
            asserted_counter: 7,
        }
    );
}

// ------------------------------------------- sign-in without a password

#[test]
fn a_verified_passkey_signs_in_without_a_password_even_when_enforced() {
    let mut history = alice_with_passkey();
    history.push(enforced());
    let events = record(
        &mut history,
        passwordless(Ok(assertion(CREDENTIAL, 3, true)), 40),
    );
    assert_eq!(names(&events), ["PasskeyUsed", "SessionStarted"]);
    assert!(matches!(
        events[1],
        UserEvent::SessionStarted {
            authenticated_by: AuthenticatedBy::Passkey,
            enrollment_required: false,
            ..
        }
    ));
}

#[test]
fn a_passwordless_sign_in_needs_user_verification() {
    let history = alice_with_passkey();
    let events = run(
        &history,
        passwordless(Ok(assertion(CREDENTIAL, 3, false)), 40),
    )
    .unwrap();
    assert!(matches!(
        events.as_slice(),
        [UserEvent::PasskeyRejected {
            ceremony: PasskeyCeremony::SignIn,
            reason: PasskeyRefusal::UserNotVerified,
            consecutive_failures: Some(1),
            ..
        }]
    ));
}

#[test]
fn failed_passwordless_sign_ins_lock_the_account_like_wrong_passwords() {
    let mut history = alice_with_passkey();
    for _ in 0..policy::PASSWORD_FAILURES_BEFORE_LOCK {
        record(
            &mut history,
            passwordless(Err(PasskeyRefusal::BadSignature), 40),
        );
    }
    assert!(matches!(
        run(
            &history,
            passwordless(Ok(assertion(CREDENTIAL, 3, true)), 41)
        ),
        Err(UserError::AccountLocked { .. })
    ));
}

// ------------------------------------------------------ turning 2FA off

fn turn_off(passkey_signed_in_at: Option<i64>, offset: i64) -> UserCommand {
    UserCommand::DisableTwoFactor {
        proof: twofold_domain::TwoFactorOffProof::Reauthenticated {
            password: PasswordCheck {
                matches: true,
                against: stored_hash(),
            },
            code: None,
            totp_secret: None,
            passkey_signed_in_at: passkey_signed_in_at.map(t),
        },
        at: t(offset),
    }
}

#[test]
fn a_passkey_only_user_turns_two_factor_off_from_a_fresh_passkey_session_only() {
    let history = alice_with_passkey();
    let window = policy::passkey_reauthentication_window().num_seconds();

    // A session from the password and a passkey, 5 minutes old at most.
    let events = run(&history, turn_off(Some(100), 100 + window)).unwrap();
    assert_eq!(names(&events), ["TwoFactorDisabled"]);

    // Older, or not started by a passkey: refused and counted.
    for proof in [turn_off(Some(100), 101 + window), turn_off(None, 100)] {
        let events = run(&history, proof).unwrap();
        assert!(
            matches!(
                events.as_slice(),
                [UserEvent::ReauthenticationCodeRejected {
                    method: SecondFactorMethod::Passkey,
                    consecutive_failures: 1,
                    ..
                }]
            ),
            "{events:?}"
        );
    }
}
