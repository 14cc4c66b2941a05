//! The user aggregate's rules, given/when/then, named after the help article.
//!
//! Time is fixed: `t(0)` is 2025-04-10T00:00:00Z (the article's platform date),
//! a multiple of 30 s, so `t(0)..t(29)` share one TOTP step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use uuid::Uuid;

use twofold_domain::command::{NewDevice, NewSession, PasswordCheck, TwoFactorOffProof};
use twofold_domain::policy;
use twofold_domain::sealed::CodeKey;
use twofold_domain::totp::{TotpParameters, TotpSecret, UnsealedTotp};
use twofold_domain::user::email_code_hash;
use twofold_domain::ImpersonationRevocation;
use twofold_domain::{
    AuthenticatedBy, Email, PasswordHash, Role, SecondFactorMethod, TokenHash, TwoFactorPolicy,
    TwoFactorStatus, User, UserCommand, UserError, UserEvent, Username,
};

use SecondFactorMethod::{Email as ByEmail, RecoveryCode, Totp};

// ---------------------------------------------------------------- fixtures

const T0: i64 = 1_744_243_200; // 2025-04-10T00:00:00Z

const ALICE: Uuid = Uuid::from_u128(0xa11ce);
const BOB: Uuid = Uuid::from_u128(0xb0b);
const ADMIN: Uuid = Uuid::from_u128(0xad);
const SUPER_ADMIN: Uuid = Uuid::from_u128(0x5a);
const ENROLLMENT: Uuid = Uuid::from_u128(0xe1);
const ENROLLMENT_2: Uuid = Uuid::from_u128(0xe2);
const CHALLENGE: Uuid = Uuid::from_u128(0xc1);
const CHALLENGE_2: Uuid = Uuid::from_u128(0xc2);
const CHALLENGE_3: Uuid = Uuid::from_u128(0xc3);
const CHALLENGE_4: Uuid = Uuid::from_u128(0xc4);
const SESSION: Uuid = Uuid::from_u128(0x5e55);
const DEVICE: Uuid = Uuid::from_u128(0xde);
const IMPERSONATION: Uuid = Uuid::from_u128(0x1a);
const IMPERSONATION_SESSION: Uuid = Uuid::from_u128(0x1a5e);

/// `offset` seconds after the platform date.
fn t(offset: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(T0 + offset, 0).unwrap()
}

fn unix(offset: i64) -> u64 {
    u64::try_from(T0 + offset).unwrap()
}

fn step(offset: i64) -> u64 {
    unix(offset) / 30
}

fn secret() -> TotpSecret {
    TotpSecret::from_bytes(vec![0x42; 20]).unwrap()
}

/// Alice's secret as the caller unseals it for her first enrollment.
fn unsealed() -> UnsealedTotp {
    UnsealedTotp {
        enrollment_id: ENROLLMENT,
        secret: secret(),
    }
}

fn other_secret() -> TotpSecret {
    TotpSecret::from_bytes(vec![0x17; 20]).unwrap()
}

/// What the authenticator app shows at `t(offset)`.
fn code_at(offset: i64) -> String {
    TotpParameters::default().code_at(&secret(), unix(offset))
}

/// A well-formed code that matches no step of the window around `t(offset)`.
fn wrong_code(offset: i64) -> String {
    let parameters = TotpParameters::default();
    (0_u32..)
        .map(|n| format!("{:06}", (123_456 + n * 7_919) % 1_000_000))
        .find(|code| {
            parameters
                .matching_step(&secret(), code, unix(offset))
                .is_none()
        })
        .unwrap()
}

fn registered(id: Uuid, name: &str, role: Role, email: Option<&str>) -> UserEvent {
    UserEvent::UserRegistered {
        user_id: id,
        username: Username::parse(name).unwrap(),
        email: email.map(|e| Email::parse(e).unwrap()),
        role,
        password_hash: stored_hash(name),
        registered_at: t(-86_400),
    }
}

/// The password hash `registered` stores for `name`.
fn stored_hash(name: &str) -> PasswordHash {
    PasswordHash::new(format!("$argon2id$v=19$m=19456,t=2,p=1${name}"))
}

/// A password checked against Alice's stored hash.
fn alices_password(matches: bool) -> PasswordCheck {
    PasswordCheck {
        matches,
        against: stored_hash("alice"),
    }
}

fn code_key() -> CodeKey {
    CodeKey::from_bytes([0x5c; 32])
}

/// Alice turns 2FA off from her own session.
fn turn_off(password_matches: bool, code: Option<&str>, offset: i64) -> UserCommand {
    UserCommand::DisableTwoFactor {
        proof: TwoFactorOffProof::Reauthenticated {
            password: alices_password(password_matches),
            code: code.map(str::to_string),
            totp_secret: Some(unsealed()),
            passkey_signed_in_at: None,
        },
        at: t(offset),
    }
}

fn alice() -> Vec<UserEvent> {
    vec![registered(
        ALICE,
        "alice",
        Role::User,
        Some("alice@example.com"),
    )]
}

fn recovery_hashes(codes: &[&str]) -> Vec<TokenHash> {
    codes.iter().map(|code| TokenHash::of(code)).collect()
}

/// Two recovery codes, stored as the aggregate expects: hashes of the
/// normalised (lower-case, no separators) code.
const RECOVERY_CODES: [&str; 2] = ["aaaabbbbcccc", "ddddeeeeffff"];

/// TOTP enabled an hour before `t(0)`, confirmed with the code of that step.
fn enrolled(recovery_codes: &[&str]) -> Vec<UserEvent> {
    vec![
        UserEvent::TotpEnrollmentStarted {
            enrollment_id: ENROLLMENT,
            parameters: TotpParameters::default(),
        },
        UserEvent::TotpEnrollmentConfirmed {
            enrollment_id: ENROLLMENT,
            accepted_step: step(-3_600),
            recovery_code_hashes: recovery_hashes(recovery_codes),
            enabled_at: t(-3_600),
        },
    ]
}

fn alice_with_two_factor() -> Vec<UserEvent> {
    let mut history = alice();
    history.extend(enrolled(&RECOVERY_CODES));
    history
}

fn device_remembered(id: Uuid, token: &str, offset: i64) -> UserEvent {
    UserEvent::DeviceRemembered {
        device_id: id,
        token_hash: TokenHash::of(token),
        remembered_at: t(offset),
        expires_at: t(offset) + Duration::hours(23),
        user_agent: Some("Firefox".into()),
    }
}

fn challenge_issued(id: Uuid, offset: i64, methods: Vec<SecondFactorMethod>) -> UserEvent {
    UserEvent::ChallengeIssued {
        challenge_id: id,
        methods,
        expires_at: t(offset) + Duration::minutes(5),
    }
}

fn password_rejections(count: u32) -> Vec<UserEvent> {
    (1..=count)
        .map(|n| UserEvent::PasswordRejected {
            consecutive_failures: n,
            locked_until: None,
        })
        .collect()
}

fn session(id: Uuid, offset: i64) -> NewSession {
    NewSession {
        session_id: id,
        token_hash: TokenHash::of(&format!("session token {id}")),
        expires_at: t(offset) + Duration::hours(12),
    }
}

fn session_started(
    by: AuthenticatedBy,
    offset: i64,
    enrollment_required: bool,
    device_id: Option<Uuid>,
) -> UserEvent {
    let session = session(SESSION, offset);
    UserEvent::SessionStarted {
        session_id: session.session_id,
        token_hash: session.token_hash,
        authenticated_by: by,
        started_at: t(offset),
        expires_at: session.expires_at,
        enrollment_required,
        impersonator_id: None,
        device_id,
    }
}

struct SignIn {
    password_matches: bool,
    against: PasswordHash,
    device_token: Option<&'static str>,
    email_offered: bool,
    challenge_id: Uuid,
    policy: TwoFactorPolicy,
}

impl SignIn {
    fn with_password(password_matches: bool) -> Self {
        Self {
            password_matches,
            against: stored_hash("alice"),
            device_token: None,
            email_offered: false,
            challenge_id: CHALLENGE,
            policy: TwoFactorPolicy::default(),
        }
    }

    fn right() -> Self {
        Self::with_password(true)
    }

    fn wrong() -> Self {
        Self::with_password(false)
    }

    /// Checked against this stored hash (Alice's by default).
    fn against(mut self, hash: PasswordHash) -> Self {
        self.against = hash;
        self
    }

    fn device(mut self, token: &'static str) -> Self {
        self.device_token = Some(token);
        self
    }

    fn email_offered(mut self, offered: bool) -> Self {
        self.email_offered = offered;
        self
    }

    fn challenge(mut self, id: Uuid) -> Self {
        self.challenge_id = id;
        self
    }

    fn policy(mut self, policy: TwoFactorPolicy) -> Self {
        self.policy = policy;
        self
    }

    fn at(self, offset: i64) -> UserCommand {
        UserCommand::SignIn {
            password: PasswordCheck {
                matches: self.password_matches,
                against: self.against,
            },
            device_token: self.device_token.map(TokenHash::of),
            email_offered: self.email_offered,
            session: session(SESSION, offset),
            challenge_id: self.challenge_id,
            policy: self.policy,
            at: t(offset),
        }
    }
}

fn verify(
    challenge_id: Uuid,
    method: SecondFactorMethod,
    code: &str,
    offset: i64,
    remember_device: Option<NewDevice>,
) -> UserCommand {
    UserCommand::VerifySecondFactor {
        challenge_id,
        method,
        code: code.to_string(),
        totp_secret: (method == Totp).then(unsealed),
        code_key: code_key(),
        session: session(SESSION, offset),
        remember_device,
        at: t(offset),
    }
}

fn verify_totp(challenge_id: Uuid, code: &str, offset: i64) -> UserCommand {
    verify(challenge_id, Totp, code, offset, None)
}

fn confirm_enrollment(code: &str, recovery_codes: &[&str], offset: i64) -> UserCommand {
    UserCommand::ConfirmTotpEnrollment {
        code: code.to_string(),
        secret: secret(),
        recovery_code_hashes: recovery_hashes(recovery_codes),
        at: t(offset),
    }
}

fn impersonate(
    impersonator_id: Uuid,
    impersonator_role: Role,
    reason: &str,
    session_lifetime: Duration,
) -> UserCommand {
    UserCommand::StartImpersonation {
        impersonation_id: IMPERSONATION,
        impersonator_id,
        impersonator_role,
        reason: reason.to_string(),
        ticket: Some("SUP-1234".into()),
        session: NewSession {
            session_id: IMPERSONATION_SESSION,
            token_hash: TokenHash::of("impersonation token"),
            expires_at: t(0) + session_lifetime,
        },
        at: t(0),
    }
}

// ---------------------------------------------------------------- harness

fn given(history: &[UserEvent]) -> cqrs_es::test::AggregateTestExecutor<User> {
    TestFramework::<User>::with(()).given(history.to_vec())
}

/// Runs `command` against `history` and returns what the aggregate decided.
fn run(history: &[UserEvent], command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
    given(history).when(command).inspect_result()
}

/// Runs `command`, expects success, appends its events to `history` and returns them.
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

fn issued_methods(events: &[UserEvent]) -> Vec<SecondFactorMethod> {
    match events {
        [UserEvent::ChallengeIssued { methods, .. }] => methods.clone(),
        other => panic!("expected one ChallengeIssued, got {other:?}"),
    }
}

// ---------------------------------------------------------------- registration and profile

#[test]
fn nothing_happens_to_a_user_who_is_not_registered() {
    given(&[])
        .when(SignIn::right().at(0))
        .then_expect_error(UserError::NotRegistered);
    given(&[])
        .when(UserCommand::EnforceTwoFactor { reason: None })
        .then_expect_error(UserError::NotRegistered);
}

#[test]
fn a_user_registers_once() {
    let command = || UserCommand::RegisterUser {
        user_id: ALICE,
        username: Username::parse("Alice").unwrap(),
        email: Some(Email::parse("alice@example.com").unwrap()),
        role: Role::User,
        password_hash: PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$alice".into()),
        at: t(-86_400),
    };
    given(&[]).when(command()).then_expect_events(alice());
    given(&alice())
        .when(command())
        .then_expect_error(UserError::AlreadyRegistered);
}

#[test]
fn unchanged_email_or_role_records_nothing() {
    let same_email = Some(Email::parse("alice@example.com").unwrap());
    given(&alice())
        .when(UserCommand::ChangeEmail { email: same_email })
        .then_expect_events(vec![]);
    given(&alice())
        .when(UserCommand::ChangeEmail { email: None })
        .then_expect_events(vec![UserEvent::EmailChanged { email: None }]);
    given(&alice())
        .when(UserCommand::ChangeRole { role: Role::User })
        .then_expect_events(vec![]);
    given(&alice())
        .when(UserCommand::ChangeRole {
            role: Role::Auditor,
        })
        .then_expect_events(vec![UserEvent::RoleChanged {
            role: Role::Auditor,
        }]);
}

// ---------------------------------------------------------------- signing in with a password

#[test]
fn registered_user_signs_in_with_password_when_two_factor_is_off() {
    given(&alice())
        .when(SignIn::right().at(0))
        .then_expect_events(vec![session_started(
            AuthenticatedBy::Password,
            0,
            false,
            None,
        )]);
}

#[test]
fn signing_out_ends_the_session() {
    given(&alice())
        .when(UserCommand::SignOut {
            session_id: SESSION,
        })
        .then_expect_events(vec![UserEvent::SessionEnded {
            session_id: SESSION,
        }]);
}

#[test]
fn enforced_user_is_held_on_enrollment() {
    let mut history = alice();
    history.push(UserEvent::TwoFactorEnforced {
        reason: Some("head office".into()),
    });
    given(&history)
        .when(SignIn::right().at(0))
        .then_expect_events(vec![session_started(
            AuthenticatedBy::Password,
            0,
            true,
            None,
        )]);

    // A started but unconfirmed enrollment does not release the hold...
    history.push(UserEvent::TotpEnrollmentStarted {
        enrollment_id: ENROLLMENT,
        parameters: TotpParameters::default(),
    });
    given(&history)
        .when(SignIn::right().at(0))
        .then_expect_events(vec![session_started(
            AuthenticatedBy::Password,
            0,
            true,
            None,
        )]);

    // ...confirming it does: from then on the user gets a challenge.
    record(&mut history, confirm_enrollment(&code_at(5), &[], 5));
    given(&history)
        .when(SignIn::right().at(60))
        .then_expect_events(vec![challenge_issued(CHALLENGE, 60, vec![Totp])]);
}

#[test]
fn platform_date_holds_every_user_without_two_factor() {
    let policy = TwoFactorPolicy {
        mandatory_from: Some(t(0)),
    };
    given(&alice())
        .when(SignIn::right().policy(policy).at(-1))
        .then_expect_events(vec![session_started(
            AuthenticatedBy::Password,
            -1,
            false,
            None,
        )]);
    given(&alice())
        .when(SignIn::right().policy(policy).at(0))
        .then_expect_events(vec![session_started(
            AuthenticatedBy::Password,
            0,
            true,
            None,
        )]);
    assert!(!fold(&alice()).must_have_two_factor(&policy, t(-1)));
    assert!(fold(&alice()).must_have_two_factor(&policy, t(0)));

    // A user who has 2FA is challenged as usual.
    given(&alice_with_two_factor())
        .when(SignIn::right().policy(policy).at(10))
        .then_expect_events(vec![challenge_issued(
            CHALLENGE,
            10,
            vec![Totp, RecoveryCode],
        )]);
}

#[test]
fn user_with_two_factor_gets_a_challenge_with_totp_and_recovery_code() {
    given(&alice_with_two_factor())
        .when(SignIn::right().at(0))
        .then_expect_events(vec![UserEvent::ChallengeIssued {
            challenge_id: CHALLENGE,
            methods: vec![Totp, RecoveryCode],
            expires_at: t(300),
        }]);

    // Without recovery codes left, only the authenticator is offered.
    let mut history = alice();
    history.extend(enrolled(&[]));
    given(&history)
        .when(SignIn::right().at(0))
        .then_expect_events(vec![challenge_issued(CHALLENGE, 0, vec![Totp])]);
}

#[test]
fn email_is_offered_only_when_the_caller_says_the_address_is_unique() {
    given(&alice_with_two_factor())
        .when(SignIn::right().email_offered(true).at(0))
        .then_expect_events(vec![challenge_issued(
            CHALLENGE,
            0,
            vec![Totp, ByEmail, RecoveryCode],
        )]);
    given(&alice_with_two_factor())
        .when(SignIn::right().email_offered(false).at(0))
        .then_expect_events(vec![challenge_issued(
            CHALLENGE,
            0,
            vec![Totp, RecoveryCode],
        )]);
    // Email is a second factor: never offered to a user without 2FA.
    given(&alice())
        .when(SignIn::right().email_offered(true).at(0))
        .then_expect_events(vec![session_started(
            AuthenticatedBy::Password,
            0,
            false,
            None,
        )]);
}

/// The help article: "if there is no email attached to a user, the email
/// option will not be available". The aggregate knows the profile has no
/// address but trusts the caller's `email_offered` flag anyway.
#[test]
fn email_is_not_offered_to_a_user_without_an_address() {
    let mut history = alice();
    history.push(UserEvent::EmailChanged { email: None });
    history.extend(enrolled(&RECOVERY_CODES));
    given(&history)
        .when(SignIn::right().email_offered(true).at(0))
        .then_expect_events(vec![challenge_issued(
            CHALLENGE,
            0,
            vec![Totp, RecoveryCode],
        )]);
}

// ---------------------------------------------------------------- remembered devices

#[test]
fn remembered_device_skips_the_second_factor_for_its_own_user_only() {
    let mut alice_history = alice_with_two_factor();
    alice_history.push(device_remembered(DEVICE, "alice's phone", -600));
    given(&alice_history)
        .when(SignIn::right().device("alice's phone").at(0))
        .then_expect_events(vec![session_started(
            AuthenticatedBy::RememberedDevice,
            0,
            false,
            Some(DEVICE),
        )]);
    let user = fold(&alice_history);
    let device = user.remembered_devices(t(0)).next().unwrap();
    assert_eq!(device.id, DEVICE);
    assert_eq!(device.last_used_at, None);

    // The session records the device's use.
    let mut used = alice_history.clone();
    record(&mut used, SignIn::right().device("alice's phone").at(0));
    let user = fold(&used);
    assert_eq!(
        user.remembered_devices(t(0)).next().unwrap().last_used_at,
        Some(t(0))
    );

    // Bob has 2FA and a device of his own; Alice's token does nothing for him.
    let mut bob_history = vec![registered(BOB, "bob", Role::User, None)];
    bob_history.extend(enrolled(&RECOVERY_CODES));
    bob_history.push(device_remembered(
        Uuid::from_u128(0xde2),
        "bob's laptop",
        -600,
    ));
    given(&bob_history)
        .when(
            SignIn::right()
                .device("alice's phone")
                .against(stored_hash("bob"))
                .at(0),
        )
        .then_expect_events(vec![challenge_issued(
            CHALLENGE,
            0,
            vec![Totp, RecoveryCode],
        )]);

    // A remembered device never skips the password.
    given(&alice_history)
        .when(SignIn::wrong().device("alice's phone").at(0))
        .then_expect_events(vec![UserEvent::PasswordRejected {
            consecutive_failures: 1,
            locked_until: None,
        }]);
}

#[test]
fn expired_remembered_device_does_not_help() {
    let mut history = alice_with_two_factor();
    // Remembered 23 hours before t(0): it expires exactly at t(0).
    history.push(device_remembered(DEVICE, "alice's phone", -23 * 3_600));
    given(&history)
        .when(SignIn::right().device("alice's phone").at(-1))
        .then_expect_events(vec![session_started(
            AuthenticatedBy::RememberedDevice,
            -1,
            false,
            Some(DEVICE),
        )]);
    given(&history)
        .when(SignIn::right().device("alice's phone").at(0))
        .then_expect_events(vec![challenge_issued(
            CHALLENGE,
            0,
            vec![Totp, RecoveryCode],
        )]);
    assert_eq!(fold(&history).remembered_devices(t(0)).count(), 0);
}

#[test]
fn revoking_devices_forgets_them_and_is_silent_when_there_are_none() {
    let mut history = alice_with_two_factor();
    given(&history)
        .when(UserCommand::RevokeRememberedDevices)
        .then_expect_events(vec![]);
    history.push(device_remembered(DEVICE, "alice's phone", -600));
    record(&mut history, UserCommand::RevokeRememberedDevices);
    assert_eq!(history.last(), Some(&UserEvent::RememberedDevicesRevoked));
    given(&history)
        .when(SignIn::right().device("alice's phone").at(0))
        .then_expect_events(vec![challenge_issued(
            CHALLENGE,
            0,
            vec![Totp, RecoveryCode],
        )]);
}

// ---------------------------------------------------------------- password lock

#[test]
fn fifth_wrong_password_locks_the_account_for_a_minute() {
    let mut history = alice();
    history.extend(password_rejections(3));
    given(&history)
        .when(SignIn::wrong().at(0))
        .then_expect_events(vec![UserEvent::PasswordRejected {
            consecutive_failures: 4,
            locked_until: None,
        }]);

    history.push(UserEvent::PasswordRejected {
        consecutive_failures: 4,
        locked_until: None,
    });
    given(&history)
        .when(SignIn::wrong().at(0))
        .then_expect_events(vec![UserEvent::PasswordRejected {
            consecutive_failures: 5,
            locked_until: Some(t(60)),
        }]);
}

#[test]
fn locked_account_refuses_a_right_password_the_same_way() {
    let mut history = alice();
    history.extend(password_rejections(4));
    record(&mut history, SignIn::wrong().at(0));
    assert_eq!(fold(&history).password_locked_until(t(30)), Some(t(60)));

    let right = run(&history, SignIn::right().at(30));
    let wrong = run(&history, SignIn::wrong().at(30));
    assert_eq!(right, Err(UserError::AccountLocked { until: Some(t(60)) }));
    assert_eq!(right, wrong);
    given(&history)
        .when(SignIn::right().at(59))
        .then_expect_error(UserError::AccountLocked { until: Some(t(60)) });

    // Nothing is recorded while locked, so the lock does not grow from it.
    given(&history)
        .when(SignIn::right().at(60))
        .then_expect_events(vec![session_started(
            AuthenticatedBy::Password,
            60,
            false,
            None,
        )]);
}

#[test]
fn lock_grows_after_it_expires() {
    let mut history = alice();
    history.extend(password_rejections(4));
    record(&mut history, SignIn::wrong().at(0));

    let sixth = record(&mut history, SignIn::wrong().at(60));
    assert_eq!(
        sixth,
        vec![UserEvent::PasswordRejected {
            consecutive_failures: 6,
            locked_until: Some(t(60 + 120)),
        }]
    );
    let seventh = record(&mut history, SignIn::wrong().at(180));
    assert_eq!(
        seventh,
        vec![UserEvent::PasswordRejected {
            consecutive_failures: 7,
            locked_until: Some(t(180 + 240)),
        }]
    );
}

#[test]
fn right_password_clears_the_count() {
    let mut history = alice();
    history.extend(password_rejections(4));
    record(&mut history, SignIn::right().at(0));
    assert_eq!(fold(&history).password_locked_until(t(0)), None);
    given(&history)
        .when(SignIn::wrong().at(1))
        .then_expect_events(vec![UserEvent::PasswordRejected {
            consecutive_failures: 1,
            locked_until: None,
        }]);

    // For a user with 2FA, the right password (a challenge) clears it too.
    let mut history = alice_with_two_factor();
    history.extend(password_rejections(4));
    record(&mut history, SignIn::right().at(0));
    given(&history)
        .when(SignIn::wrong().at(1))
        .then_expect_events(vec![UserEvent::PasswordRejected {
            consecutive_failures: 1,
            locked_until: None,
        }]);
}

// ---------------------------------------------------------------- the second factor

#[test]
fn right_totp_code_starts_a_session_and_remembers_the_device() {
    let mut history = alice_with_two_factor();
    history.push(challenge_issued(CHALLENGE, 0, vec![Totp, RecoveryCode]));
    let device = NewDevice {
        device_id: DEVICE,
        token_hash: TokenHash::of("alice's new phone"),
        expires_at: t(10) + Duration::hours(23),
        user_agent: Some("Firefox".into()),
    };
    let events = record(
        &mut history,
        verify(CHALLENGE, Totp, &code_at(10), 10, Some(device)),
    );
    assert_eq!(
        events,
        vec![
            UserEvent::SecondFactorAccepted {
                challenge_id: CHALLENGE,
                method: Totp,
                totp_step: Some(step(10)),
                recovery_code_index: None,
            },
            session_started(AuthenticatedBy::Totp, 10, false, None),
            UserEvent::DeviceRemembered {
                device_id: DEVICE,
                token_hash: TokenHash::of("alice's new phone"),
                remembered_at: t(10),
                expires_at: t(10) + Duration::hours(23),
                user_agent: Some("Firefox".into()),
            },
        ]
    );
    assert_eq!(
        fold(&history).active_totp().unwrap().last_accepted_step,
        step(10)
    );

    // Eight hours later the device is enough...
    given(&history)
        .when(SignIn::right().device("alice's new phone").at(8 * 3_600))
        .then_expect_events(vec![session_started(
            AuthenticatedBy::RememberedDevice,
            8 * 3_600,
            false,
            Some(DEVICE),
        )]);
    // ...and the spent challenge is gone.
    given(&history)
        .when(verify_totp(CHALLENGE, &code_at(40), 40))
        .then_expect_error(UserError::ChallengeNotFound);
}

#[test]
fn totp_code_may_be_typed_with_spaces_or_a_dash_and_without_remembering() {
    let mut history = alice_with_two_factor();
    history.push(challenge_issued(CHALLENGE, 0, vec![Totp, RecoveryCode]));
    let code = code_at(10);
    given(&history)
        .when(verify_totp(
            CHALLENGE,
            &format!(" {}-{} ", &code[..3], &code[3..]),
            10,
        ))
        .then_expect_events(vec![
            UserEvent::SecondFactorAccepted {
                challenge_id: CHALLENGE,
                method: Totp,
                totp_step: Some(step(10)),
                recovery_code_index: None,
            },
            session_started(AuthenticatedBy::Totp, 10, false, None),
        ]);
}

#[test]
fn code_from_a_neighbouring_step_is_accepted_but_not_two_steps_away() {
    let mut history = alice_with_two_factor();
    history.push(challenge_issued(CHALLENGE, 0, vec![Totp, RecoveryCode]));
    // The phone is 30 s behind.
    let events = run(&history, verify_totp(CHALLENGE, &code_at(-20), 10)).unwrap();
    assert_eq!(
        events[0],
        UserEvent::SecondFactorAccepted {
            challenge_id: CHALLENGE,
            method: Totp,
            totp_step: Some(step(-20)),
            recovery_code_index: None,
        }
    );
    // 60 s behind is outside the window (unless the codes happen to collide).
    let stale = code_at(-50);
    assert!(TotpParameters::default()
        .matching_step(&secret(), &stale, unix(10))
        .is_none());
    let events = run(&history, verify_totp(CHALLENGE, &stale, 10)).unwrap();
    assert_eq!(
        events,
        vec![UserEvent::SecondFactorRejected {
            challenge_id: CHALLENGE,
            method: Totp,
            attempts_remaining: 4,
            consecutive_failures: 1,
            locked_until: None,
        }]
    );
}

#[test]
fn code_of_another_secret_is_rejected() {
    let mut history = alice_with_two_factor();
    history.push(challenge_issued(CHALLENGE, 0, vec![Totp, RecoveryCode]));
    let foreign = TotpParameters::default().code_at(&other_secret(), unix(10));
    assert_ne!(foreign, code_at(10));
    given(&history)
        .when(verify_totp(CHALLENGE, &foreign, 10))
        .then_expect_events(vec![UserEvent::SecondFactorRejected {
            challenge_id: CHALLENGE,
            method: Totp,
            attempts_remaining: 4,
            consecutive_failures: 1,
            locked_until: None,
        }]);
}

#[test]
fn totp_code_accepted_once_is_refused_on_another_challenge() {
    let mut history = alice_with_two_factor();
    record(&mut history, SignIn::right().challenge(CHALLENGE).at(0));
    record(&mut history, verify_totp(CHALLENGE, &code_at(10), 10));
    record(&mut history, SignIn::right().challenge(CHALLENGE_2).at(20));

    // The same code again, in the same step.
    given(&history)
        .when(verify_totp(CHALLENGE_2, &code_at(10), 25))
        .then_expect_events(vec![
            UserEvent::TotpCodeReplayed {
                challenge_id: CHALLENGE_2,
                step: step(10),
            },
            UserEvent::SecondFactorRejected {
                challenge_id: CHALLENGE_2,
                method: Totp,
                attempts_remaining: 4,
                consecutive_failures: 1,
                locked_until: None,
            },
        ]);
    // An older code, still inside the window, is refused as well ("at or below").
    given(&history)
        .when(verify_totp(CHALLENGE_2, &code_at(-20), 25))
        .then_expect_events(vec![
            UserEvent::TotpCodeReplayed {
                challenge_id: CHALLENGE_2,
                step: step(-20),
            },
            UserEvent::SecondFactorRejected {
                challenge_id: CHALLENGE_2,
                method: Totp,
                attempts_remaining: 4,
                consecutive_failures: 1,
                locked_until: None,
            },
        ]);
    // The next step's code is fine.
    given(&history)
        .when(verify_totp(CHALLENGE_2, &code_at(40), 40))
        .then_expect_events(vec![
            UserEvent::SecondFactorAccepted {
                challenge_id: CHALLENGE_2,
                method: Totp,
                totp_step: Some(step(40)),
                recovery_code_index: None,
            },
            session_started(AuthenticatedBy::Totp, 40, false, None),
        ]);
}

#[test]
fn code_used_to_confirm_enrollment_cannot_sign_in() {
    let mut history = alice();
    record(
        &mut history,
        UserCommand::StartTotpEnrollment {
            enrollment_id: ENROLLMENT,
            parameters: TotpParameters::default(),
        },
    );
    assert_eq!(fold(&history).two_factor_status(), TwoFactorStatus::Pending);
    let confirmed = record(
        &mut history,
        confirm_enrollment(&code_at(0), &RECOVERY_CODES, 0),
    );
    assert_eq!(
        confirmed,
        vec![UserEvent::TotpEnrollmentConfirmed {
            enrollment_id: ENROLLMENT,
            accepted_step: step(0),
            recovery_code_hashes: recovery_hashes(&RECOVERY_CODES),
            enabled_at: t(0),
        }]
    );
    let user = fold(&history);
    assert_eq!(user.two_factor_status(), TwoFactorStatus::Enabled);
    assert_eq!(user.recovery_codes_remaining(), 2);

    record(&mut history, SignIn::right().at(5));
    given(&history)
        .when(verify_totp(CHALLENGE, &code_at(0), 5))
        .then_expect_events(vec![
            UserEvent::TotpCodeReplayed {
                challenge_id: CHALLENGE,
                step: step(0),
            },
            UserEvent::SecondFactorRejected {
                challenge_id: CHALLENGE,
                method: Totp,
                attempts_remaining: 4,
                consecutive_failures: 1,
                locked_until: None,
            },
        ]);
}

#[test]
fn five_wrong_codes_lock_the_challenge() {
    let mut history = alice_with_two_factor();
    record(&mut history, SignIn::right().at(0));
    for (n, offset) in (1..=4).zip(1..) {
        let events = record(
            &mut history,
            verify_totp(CHALLENGE, &wrong_code(offset), offset),
        );
        assert_eq!(
            events,
            vec![UserEvent::SecondFactorRejected {
                challenge_id: CHALLENGE,
                method: Totp,
                attempts_remaining: 5 - n,
                consecutive_failures: n,
                locked_until: None,
            }]
        );
    }
    given(&history)
        .when(verify_totp(CHALLENGE, &wrong_code(5), 5))
        .then_expect_events(vec![UserEvent::SecondFactorRejected {
            challenge_id: CHALLENGE,
            method: Totp,
            attempts_remaining: 0,
            consecutive_failures: 5,
            locked_until: None,
        }]);
    record(&mut history, verify_totp(CHALLENGE, &wrong_code(5), 5));

    // Even the right code, or a recovery code, is refused now.
    given(&history)
        .when(verify_totp(CHALLENGE, &code_at(6), 6))
        .then_expect_error(UserError::ChallengeLocked);
    given(&history)
        .when(verify(CHALLENGE, RecoveryCode, RECOVERY_CODES[0], 6, None))
        .then_expect_error(UserError::ChallengeLocked);
    // A new sign-in gets a fresh challenge.
    record(&mut history, SignIn::right().challenge(CHALLENGE_2).at(7));
    assert!(matches!(
        run(&history, verify_totp(CHALLENGE_2, &code_at(8), 8)).unwrap()[0],
        UserEvent::SecondFactorAccepted { .. }
    ));
}

#[test]
fn expired_challenge_is_refused() {
    let mut history = alice_with_two_factor();
    history.push(challenge_issued(CHALLENGE, 0, vec![Totp, RecoveryCode]));
    given(&history)
        .when(verify_totp(CHALLENGE, &code_at(300), 300))
        .then_expect_error(UserError::ChallengeExpired);
    assert!(matches!(
        run(&history, verify_totp(CHALLENGE, &code_at(299), 299)).unwrap()[0],
        UserEvent::SecondFactorAccepted { .. }
    ));
    given(&history)
        .when(verify_totp(CHALLENGE_2, &code_at(10), 10))
        .then_expect_error(UserError::ChallengeNotFound);
}

#[test]
fn method_not_offered_by_the_challenge_is_refused() {
    let mut history = alice();
    history.extend(enrolled(&[]));
    history.push(challenge_issued(CHALLENGE, 0, vec![Totp]));
    given(&history)
        .when(verify(CHALLENGE, RecoveryCode, RECOVERY_CODES[0], 10, None))
        .then_expect_error(UserError::MethodUnavailable);
    given(&history)
        .when(verify(CHALLENGE, ByEmail, "123456", 10, None))
        .then_expect_error(UserError::MethodUnavailable);
    // TOTP without the decrypted secret can't be checked.
    given(&history)
        .when(UserCommand::VerifySecondFactor {
            challenge_id: CHALLENGE,
            method: Totp,
            code: code_at(10),
            totp_secret: None,
            code_key: code_key(),
            session: session(SESSION, 10),
            remember_device: None,
            at: t(10),
        })
        .then_expect_error(UserError::MethodUnavailable);
}

#[test]
fn second_factor_backs_off_after_ten_consecutive_failures() {
    let mut history = alice_with_two_factor();
    // Five wrong codes on a first challenge, four on a second: failures 1..=9.
    record(&mut history, SignIn::right().challenge(CHALLENGE).at(0));
    for offset in 1..=5 {
        record(
            &mut history,
            verify_totp(CHALLENGE, &wrong_code(offset), offset),
        );
    }
    record(&mut history, SignIn::right().challenge(CHALLENGE_2).at(10));
    for offset in 11..=14 {
        record(
            &mut history,
            verify_totp(CHALLENGE_2, &wrong_code(offset), offset),
        );
    }
    record(&mut history, SignIn::right().challenge(CHALLENGE_3).at(20));

    // The tenth failure backs the factor off for a minute.
    let tenth = record(&mut history, verify_totp(CHALLENGE_3, &wrong_code(21), 21));
    assert_eq!(
        tenth,
        vec![UserEvent::SecondFactorRejected {
            challenge_id: CHALLENGE_3,
            method: Totp,
            attempts_remaining: 4,
            consecutive_failures: 10,
            locked_until: Some(t(81)),
        }]
    );
    // Even the right code waits...
    given(&history)
        .when(verify_totp(CHALLENGE_3, &code_at(30), 30))
        .then_expect_error(UserError::AccountLocked { until: Some(t(81)) });
    // ...a new sign-in offers only what is not backing off...
    assert_eq!(
        issued_methods(&run(&history, SignIn::right().challenge(CHALLENGE_4).at(40)).unwrap()),
        vec![RecoveryCode]
    );
    // ...and once the minute is over, the right code works and clears the count.
    record(&mut history, verify_totp(CHALLENGE_3, &code_at(81), 81));
    assert_eq!(
        issued_methods(&run(&history, SignIn::right().challenge(CHALLENGE_4).at(90)).unwrap()),
        vec![Totp, RecoveryCode]
    );
}

#[test]
fn sign_in_during_back_off_without_another_factor_says_until_when() {
    let mut history = alice();
    history.extend(enrolled(&[]));
    history.push(UserEvent::SecondFactorRejected {
        challenge_id: CHALLENGE,
        method: Totp,
        attempts_remaining: 4,
        consecutive_failures: 10,
        locked_until: Some(t(60)),
    });
    given(&history)
        .when(SignIn::right().challenge(CHALLENGE_2).at(30))
        .then_expect_error(UserError::AccountLocked { until: Some(t(60)) });
    given(&history)
        .when(SignIn::right().challenge(CHALLENGE_2).at(60))
        .then_expect_events(vec![challenge_issued(CHALLENGE_2, 60, vec![Totp])]);
}

#[test]
fn hundredth_failure_suspends_the_factor_until_reset() {
    let history_with = |recovery_codes: &[&str]| {
        let mut history = alice();
        history.extend(enrolled(recovery_codes));
        // 99 failures so far; the last back-off ended a minute ago.
        history.push(UserEvent::SecondFactorRejected {
            challenge_id: Uuid::from_u128(0xc0),
            method: Totp,
            attempts_remaining: 4,
            consecutive_failures: 99,
            locked_until: Some(t(-60)),
        });
        history
    };
    let mut history = history_with(&RECOVERY_CODES);
    record(&mut history, SignIn::right().at(0));
    let hundredth = record(&mut history, verify_totp(CHALLENGE, &wrong_code(1), 1));
    assert_eq!(
        hundredth,
        vec![
            UserEvent::SecondFactorRejected {
                challenge_id: CHALLENGE,
                method: Totp,
                attempts_remaining: 4,
                consecutive_failures: 100,
                locked_until: Some(t(1) + Duration::minutes(60)),
            },
            UserEvent::SecondFactorSuspended {
                method: Totp,
                consecutive_failures: 100,
            },
        ]
    );
    // Suspended: no end time, even for the right code.
    given(&history)
        .when(verify_totp(CHALLENGE, &code_at(2), 2))
        .then_expect_error(UserError::AccountLocked { until: None });
    // Long after the back-off, TOTP is still not offered; recovery codes are.
    let later = 24 * 3_600;
    assert_eq!(
        issued_methods(&run(&history, SignIn::right().challenge(CHALLENGE_2).at(later)).unwrap()),
        vec![RecoveryCode]
    );
    // Without recovery codes the account is locked with no end.
    let mut without_codes = history_with(&[]);
    record(&mut without_codes, SignIn::right().at(0));
    record(
        &mut without_codes,
        verify_totp(CHALLENGE, &wrong_code(1), 1),
    );
    given(&without_codes)
        .when(SignIn::right().challenge(CHALLENGE_2).at(later))
        .then_expect_error(UserError::AccountLocked { until: None });

    // An administrator resets 2FA (a reason is required); the user re-enrolls.
    given(&without_codes)
        .when(UserCommand::ResetTwoFactor {
            reason: "  ".into(),
        })
        .then_expect_error(UserError::ReasonRequired);
    let reset = record(
        &mut without_codes,
        UserCommand::ResetTwoFactor {
            reason: " lost her phone ".into(),
        },
    );
    assert_eq!(
        reset,
        vec![UserEvent::TwoFactorReset {
            reason: "lost her phone".into(),
        }]
    );
    assert_eq!(
        fold(&without_codes).two_factor_status(),
        TwoFactorStatus::Disabled
    );
    given(&without_codes)
        .when(SignIn::right().at(later))
        .then_expect_events(vec![session_started(
            AuthenticatedBy::Password,
            later,
            false,
            None,
        )]);
    record(
        &mut without_codes,
        UserCommand::StartTotpEnrollment {
            enrollment_id: ENROLLMENT_2,
            parameters: TotpParameters::default(),
        },
    );
    record(
        &mut without_codes,
        confirm_enrollment(&code_at(later), &[], later),
    );
    given(&without_codes)
        .when(SignIn::right().challenge(CHALLENGE_3).at(later + 60))
        .then_expect_events(vec![challenge_issued(CHALLENGE_3, later + 60, vec![Totp])]);
}

#[test]
fn a_secret_unsealed_before_a_re_enrollment_is_not_checked() {
    // Alice re-enrolled (another process) after the caller unsealed the
    // secret of her first enrollment for this sign-in.
    let mut history = alice_with_two_factor();
    record(
        &mut history,
        UserCommand::DisableTwoFactor {
            proof: TwoFactorOffProof::Reauthenticated {
                password: alices_password(true),
                code: Some(code_at(5)),
                totp_secret: Some(unsealed()),
                passkey_signed_in_at: None,
            },
            at: t(5),
        },
    );
    record(
        &mut history,
        UserCommand::StartTotpEnrollment {
            enrollment_id: ENROLLMENT_2,
            parameters: TotpParameters::default(),
        },
    );
    record(&mut history, confirm_enrollment(&code_at(40), &[], 40));
    record(&mut history, SignIn::right().challenge(CHALLENGE_3).at(100));
    given(&history)
        .when(verify(CHALLENGE_3, Totp, &code_at(100), 100, None))
        .then_expect_error(UserError::MethodUnavailable);
}

#[test]
fn recovery_code_works_once() {
    let mut history = alice_with_two_factor();
    record(&mut history, SignIn::right().at(0));
    // Typed in upper case with the separators it is shown with.
    let used = record(
        &mut history,
        verify(CHALLENGE, RecoveryCode, "DDDD-EEEE-FFFF", 10, None),
    );
    assert_eq!(
        used,
        vec![
            UserEvent::SecondFactorAccepted {
                challenge_id: CHALLENGE,
                method: RecoveryCode,
                totp_step: None,
                recovery_code_index: Some(1),
            },
            session_started(AuthenticatedBy::RecoveryCode, 10, false, None),
        ]
    );
    assert_eq!(fold(&history).recovery_codes_remaining(), 1);

    record(&mut history, SignIn::right().challenge(CHALLENGE_2).at(20));
    given(&history)
        .when(verify(CHALLENGE_2, RecoveryCode, "ddddeeeeffff", 25, None))
        .then_expect_events(vec![UserEvent::SecondFactorRejected {
            challenge_id: CHALLENGE_2,
            method: RecoveryCode,
            attempts_remaining: 4,
            consecutive_failures: 1,
            locked_until: None,
        }]);

    // The other code still works; with none left, only TOTP is offered.
    let other = record(
        &mut history,
        verify(CHALLENGE_2, RecoveryCode, "aaaa bbbb cccc", 26, None),
    );
    assert!(matches!(
        other[0],
        UserEvent::SecondFactorAccepted {
            recovery_code_index: Some(0),
            ..
        }
    ));
    assert_eq!(fold(&history).recovery_codes_remaining(), 0);
    assert_eq!(
        issued_methods(&run(&history, SignIn::right().challenge(CHALLENGE_3).at(30)).unwrap()),
        vec![Totp]
    );
}

// ---------------------------------------------------------------- enrolling and disabling

#[test]
fn wrong_enrollment_code_five_times_discards_the_enrollment() {
    let mut history = alice();
    given(&history)
        .when(confirm_enrollment(&code_at(0), &[], 0))
        .then_expect_error(UserError::NoPendingEnrollment);
    record(
        &mut history,
        UserCommand::StartTotpEnrollment {
            enrollment_id: ENROLLMENT,
            parameters: TotpParameters::default(),
        },
    );
    for (attempts_remaining, offset) in (1..=4).rev().zip(1..) {
        let events = record(
            &mut history,
            confirm_enrollment(&wrong_code(offset), &[], offset),
        );
        assert_eq!(
            events,
            vec![UserEvent::TotpEnrollmentCodeRejected {
                enrollment_id: ENROLLMENT,
                attempts_remaining,
            }]
        );
        assert_eq!(
            fold(&history).pending_totp().unwrap().attempts_remaining,
            attempts_remaining
        );
    }
    given(&history)
        .when(confirm_enrollment(&wrong_code(5), &[], 5))
        .then_expect_events(vec![UserEvent::TotpEnrollmentCodeRejected {
            enrollment_id: ENROLLMENT,
            attempts_remaining: 0,
        }]);
    record(&mut history, confirm_enrollment(&wrong_code(5), &[], 5));
    assert_eq!(
        fold(&history).two_factor_status(),
        TwoFactorStatus::Disabled
    );
    given(&history)
        .when(confirm_enrollment(&code_at(6), &[], 6))
        .then_expect_error(UserError::NoPendingEnrollment);
}

#[test]
fn two_factor_cannot_be_enrolled_twice() {
    given(&alice_with_two_factor())
        .when(UserCommand::StartTotpEnrollment {
            enrollment_id: ENROLLMENT_2,
            parameters: TotpParameters::default(),
        })
        .then_expect_error(UserError::TwoFactorAlreadyEnabled);
}

#[test]
fn enforced_user_cannot_disable_two_factor() {
    let mut history = alice_with_two_factor();
    history.push(UserEvent::TwoFactorEnforced { reason: None });
    given(&history)
        .when(turn_off(true, Some(&code_at(0)), 0))
        .then_expect_error(UserError::TwoFactorEnforced);

    // The help article's tip: lift the enforcement, then disable.
    record(
        &mut history,
        UserCommand::LiftTwoFactorEnforcement {
            reason: Some("locked out of enrollment".into()),
        },
    );
    given(&history)
        .when(turn_off(true, Some(&code_at(0)), 0))
        .then_expect_events(vec![UserEvent::TwoFactorDisabled]);
}

#[test]
fn disabling_two_factor_forgets_devices_and_recovery_codes() {
    let mut history = alice_with_two_factor();
    history.push(device_remembered(DEVICE, "alice's phone", -600));
    history.push(challenge_issued(CHALLENGE, 0, vec![Totp, RecoveryCode]));
    assert_eq!(
        record(&mut history, turn_off(true, Some(&code_at(0)), 0)),
        vec![UserEvent::TwoFactorDisabled]
    );
    let user = fold(&history);
    assert_eq!(user.two_factor_status(), TwoFactorStatus::Disabled);
    assert_eq!(user.recovery_codes_remaining(), 0);
    assert_eq!(user.remembered_devices(t(0)).count(), 0);
    // Open challenges go too.
    given(&history)
        .when(verify_totp(CHALLENGE, &code_at(10), 10))
        .then_expect_error(UserError::ChallengeNotFound);
    // Disabling again records nothing.
    given(&history)
        .when(turn_off(true, None, 30))
        .then_expect_events(vec![]);

    // After enrolling again, the old device and recovery codes do nothing.
    record(
        &mut history,
        UserCommand::StartTotpEnrollment {
            enrollment_id: ENROLLMENT_2,
            parameters: TotpParameters::default(),
        },
    );
    record(&mut history, confirm_enrollment(&code_at(60), &[], 60));
    let challenge = run(
        &history,
        SignIn::right()
            .device("alice's phone")
            .challenge(CHALLENGE_2)
            .at(120),
    )
    .unwrap();
    assert_eq!(
        challenge,
        vec![challenge_issued(CHALLENGE_2, 120, vec![Totp])]
    );
    history.extend(challenge);
    given(&history)
        .when(verify(
            CHALLENGE_2,
            RecoveryCode,
            RECOVERY_CODES[0],
            121,
            None,
        ))
        .then_expect_error(UserError::MethodUnavailable);
}

#[test]
fn password_change_forgets_remembered_devices() {
    let mut history = alice_with_two_factor();
    history.extend(password_rejections(2));
    history.push(device_remembered(DEVICE, "alice's phone", -600));
    let new_hash = PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$new".into());
    let changed = record(
        &mut history,
        UserCommand::ChangePassword {
            current: alices_password(true),
            password_hash: new_hash.clone(),
            kept_session_id: SESSION,
            at: t(0),
        },
    );
    assert_eq!(
        changed,
        vec![UserEvent::PasswordChanged {
            password_hash: new_hash.clone(),
            kept_session_id: Some(SESSION),
            changed_at: Some(t(0)),
        }]
    );
    let user = fold(&history);
    assert_eq!(user.remembered_devices(t(0)).count(), 0);
    assert_eq!(user.profile().unwrap().password_hash, new_hash);
    given(&history)
        .when(
            SignIn::right()
                .device("alice's phone")
                .against(new_hash.clone())
                .at(0),
        )
        .then_expect_events(vec![challenge_issued(
            CHALLENGE,
            0,
            vec![Totp, RecoveryCode],
        )]);
    // The new password starts with a clean failure count.
    given(&history)
        .when(SignIn::wrong().against(new_hash).at(0))
        .then_expect_events(vec![UserEvent::PasswordRejected {
            consecutive_failures: 1,
            locked_until: None,
        }]);
}

// ---------------------------------------------------------------- enforcement

#[test]
fn enforcing_twice_records_one_event() {
    let mut history = alice();
    let reason = Some("head office".to_string());
    assert_eq!(
        record(
            &mut history,
            UserCommand::EnforceTwoFactor {
                reason: reason.clone()
            }
        ),
        vec![UserEvent::TwoFactorEnforced {
            reason: reason.clone()
        }]
    );
    assert!(fold(&history).is_enforced());
    given(&history)
        .when(UserCommand::EnforceTwoFactor { reason })
        .then_expect_events(vec![]);

    // Lifting, likewise, only when there is something to lift.
    given(&alice())
        .when(UserCommand::LiftTwoFactorEnforcement { reason: None })
        .then_expect_events(vec![]);
    given(&history)
        .when(UserCommand::LiftTwoFactorEnforcement { reason: None })
        .then_expect_events(vec![UserEvent::TwoFactorEnforcementLifted { reason: None }]);
}

// ---------------------------------------------------------------- "Login as"

fn impersonation_started(impersonator_id: Uuid, expires_at: DateTime<Utc>) -> Vec<UserEvent> {
    vec![
        UserEvent::ImpersonationStarted {
            impersonation_id: IMPERSONATION,
            impersonator_id,
            session_id: IMPERSONATION_SESSION,
            reason: "help with 2FA".into(),
            ticket: Some("SUP-1234".into()),
            expires_at,
        },
        UserEvent::SessionStarted {
            session_id: IMPERSONATION_SESSION,
            token_hash: TokenHash::of("impersonation token"),
            authenticated_by: AuthenticatedBy::Impersonation,
            started_at: t(0),
            expires_at,
            enrollment_required: false,
            impersonator_id: Some(impersonator_id),
            device_id: None,
        },
    ]
}

#[test]
fn admin_may_log_in_as_a_user_but_not_as_an_admin() {
    given(&alice())
        .when(impersonate(
            ADMIN,
            Role::Admin,
            "help with 2FA",
            Duration::minutes(30),
        ))
        .then_expect_events(impersonation_started(ADMIN, t(1_800)));
    // Login as skips the user's second factor.
    given(&alice_with_two_factor())
        .when(impersonate(
            ADMIN,
            Role::Admin,
            "help with 2FA",
            Duration::minutes(30),
        ))
        .then_expect_events(impersonation_started(ADMIN, t(1_800)));

    let admin_bob = vec![registered(BOB, "bob", Role::Admin, None)];
    given(&admin_bob)
        .when(impersonate(
            ADMIN,
            Role::Admin,
            "help with 2FA",
            Duration::minutes(30),
        ))
        .then_expect_error(UserError::ImpersonationForbidden);
    let auditor_bob = vec![registered(BOB, "bob", Role::Auditor, None)];
    given(&auditor_bob)
        .when(impersonate(
            ADMIN,
            Role::Admin,
            "help with 2FA",
            Duration::minutes(30),
        ))
        .then_expect_error(UserError::ImpersonationForbidden);
    // Plain users and auditors log in as nobody.
    for role in [Role::User, Role::Auditor] {
        given(&alice())
            .when(impersonate(
                BOB,
                role,
                "help with 2FA",
                Duration::minutes(30),
            ))
            .then_expect_error(UserError::ImpersonationForbidden);
    }
    // A super admin may log in as an admin.
    given(&admin_bob)
        .when(impersonate(
            SUPER_ADMIN,
            Role::SuperAdmin,
            "help with 2FA",
            Duration::minutes(30),
        ))
        .then_expect_events(impersonation_started(SUPER_ADMIN, t(1_800)));
}

#[test]
fn nobody_logs_in_as_a_super_admin_or_themselves() {
    let super_bob = vec![registered(BOB, "bob", Role::SuperAdmin, None)];
    for (id, role) in [(SUPER_ADMIN, Role::SuperAdmin), (ADMIN, Role::Admin)] {
        given(&super_bob)
            .when(impersonate(
                id,
                role,
                "help with 2FA",
                Duration::minutes(30),
            ))
            .then_expect_error(UserError::ImpersonationForbidden);
    }
    // Alice, just promoted to admin, may not log in as (her plain-user) self.
    given(&alice())
        .when(impersonate(
            ALICE,
            Role::Admin,
            "help with 2FA",
            Duration::minutes(30),
        ))
        .then_expect_error(UserError::ImpersonationForbidden);
}

#[test]
fn impersonation_needs_a_reason() {
    for reason in ["", "   ", "\t\n"] {
        given(&alice())
            .when(impersonate(
                ADMIN,
                Role::Admin,
                reason,
                Duration::minutes(30),
            ))
            .then_expect_error(UserError::ReasonRequired);
    }
    // The reason is trimmed, a blank ticket dropped.
    let events = run(
        &alice(),
        UserCommand::StartImpersonation {
            impersonation_id: IMPERSONATION,
            impersonator_id: ADMIN,
            impersonator_role: Role::Admin,
            reason: "  stuck on enrollment ".into(),
            ticket: Some("  ".into()),
            session: session(IMPERSONATION_SESSION, 0),
            at: t(0),
        },
    )
    .unwrap();
    assert_eq!(
        events[0],
        UserEvent::ImpersonationStarted {
            impersonation_id: IMPERSONATION,
            impersonator_id: ADMIN,
            session_id: IMPERSONATION_SESSION,
            reason: "stuck on enrollment".into(),
            ticket: None,
            expires_at: t(1_800),
        }
    );
}

#[test]
fn impersonation_lasts_at_most_thirty_minutes() {
    given(&alice())
        .when(impersonate(
            ADMIN,
            Role::Admin,
            "help with 2FA",
            Duration::hours(8),
        ))
        .then_expect_events(impersonation_started(ADMIN, t(1_800)));
    given(&alice())
        .when(impersonate(
            ADMIN,
            Role::Admin,
            "help with 2FA",
            Duration::minutes(10),
        ))
        .then_expect_events(impersonation_started(ADMIN, t(600)));
}

#[test]
fn ending_an_impersonation_ends_its_session() {
    let mut history = alice();
    record(
        &mut history,
        impersonate(ADMIN, Role::Admin, "help with 2FA", Duration::hours(8)),
    );
    // The event names the session; read models end it on this event.
    let ended = record(
        &mut history,
        UserCommand::EndImpersonation {
            session_id: IMPERSONATION_SESSION,
            revoked: None,
        },
    );
    assert_eq!(
        ended,
        vec![UserEvent::ImpersonationEnded {
            impersonation_id: IMPERSONATION,
            session_id: IMPERSONATION_SESSION,
            revoked: None,
        }]
    );
    given(&history)
        .when(UserCommand::EndImpersonation {
            session_id: IMPERSONATION_SESSION,
            revoked: None,
        })
        .then_expect_error(UserError::SessionNotFound);
    // The user's own sessions are not impersonations.
    given(&history)
        .when(UserCommand::EndImpersonation {
            session_id: SESSION,
            revoked: None,
        })
        .then_expect_error(UserError::SessionNotFound);
}

#[test]
fn expired_impersonation_is_forgotten_once_another_session_starts() {
    let mut history = alice();
    record(
        &mut history,
        impersonate(ADMIN, Role::Admin, "help with 2FA", Duration::hours(8)),
    );
    record(&mut history, SignIn::right().at(1_800));
    given(&history)
        .when(UserCommand::EndImpersonation {
            session_id: IMPERSONATION_SESSION,
            revoked: None,
        })
        .then_expect_error(UserError::SessionNotFound);
}

#[test]
fn login_as_does_not_lift_a_password_lock() {
    let mut history = alice();
    history.extend(password_rejections(4));
    record(&mut history, SignIn::wrong().at(0));
    record(
        &mut history,
        impersonate(ADMIN, Role::Admin, "user locked out", Duration::minutes(30)),
    );
    assert_eq!(fold(&history).password_locked_until(t(10)), Some(t(60)));
    given(&history)
        .when(SignIn::right().at(10))
        .then_expect_error(UserError::AccountLocked { until: Some(t(60)) });
}

// ---------------------------------------------------------------- re-authentication and sessions

#[test]
fn a_password_checked_against_a_hash_replaced_meanwhile_is_not_honoured() {
    let history = alice();
    let stale = PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$before".into());
    for right in [true, false] {
        given(&history)
            .when(SignIn::with_password(right).against(stale.clone()).at(0))
            .then_expect_error(UserError::StalePasswordCheck);
    }
}

#[test]
fn a_wrong_current_password_counts_toward_the_same_lock_as_sign_in() {
    let mut history = alice();
    let change = |matches: bool, offset: i64| UserCommand::ChangePassword {
        current: alices_password(matches),
        password_hash: PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$new".into()),
        kept_session_id: SESSION,
        at: t(offset),
    };
    record(&mut history, SignIn::wrong().at(0));
    for failure in 2..=5 {
        let rejected = record(&mut history, change(false, failure));
        assert_eq!(
            rejected,
            vec![UserEvent::PasswordRejected {
                consecutive_failures: u32::try_from(failure).unwrap(),
                locked_until: (failure == 5).then(|| t(5) + Duration::minutes(1)),
            }]
        );
    }
    // Locked: even the right password is refused, and nothing is recorded.
    let locked = UserError::AccountLocked {
        until: Some(t(5) + Duration::minutes(1)),
    };
    given(&history)
        .when(change(true, 30))
        .then_expect_error(locked.clone());
    given(&history)
        .when(SignIn::right().at(30))
        .then_expect_error(locked);
    given(&history)
        .when(change(true, 66))
        .then_expect_events(vec![UserEvent::PasswordChanged {
            password_hash: PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$new".into()),
            kept_session_id: Some(SESSION),
            changed_at: Some(t(66)),
        }]);
}

#[test]
fn turning_two_factor_off_asks_for_the_password_and_a_fresh_code() {
    let mut history = alice_with_two_factor();
    // A wrong password is a failed password attempt.
    given(&history)
        .when(turn_off(false, Some(&code_at(0)), 0))
        .then_expect_events(vec![UserEvent::PasswordRejected {
            consecutive_failures: 1,
            locked_until: None,
        }]);
    // Without a code nothing is decided.
    given(&history)
        .when(turn_off(true, None, 0))
        .then_expect_error(UserError::ReauthenticationRequired);
    // A wrong code, or the step already accepted, counts toward the factor's back-off.
    let step_accepted_at_enrollment = code_at(-3_600);
    for (wrong, offset) in [(wrong_code(0), 0), (step_accepted_at_enrollment, -3_600)] {
        let rejected = record(&mut history, turn_off(true, Some(&wrong), offset));
        assert!(
            matches!(
                rejected.as_slice(),
                [UserEvent::ReauthenticationCodeRejected {
                    method: Totp,
                    locked_until: None,
                    ..
                }]
            ),
            "{rejected:?}"
        );
    }
    assert_eq!(fold(&history).two_factor_status(), TwoFactorStatus::Enabled);
    // A recovery code, or the code the app shows now, turns it off.
    given(&history)
        .when(turn_off(true, Some("AAAA-bbbb-CCCC"), 0))
        .then_expect_events(vec![UserEvent::TwoFactorDisabled]);
    given(&history)
        .when(turn_off(true, Some(&code_at(0)), 0))
        .then_expect_events(vec![UserEvent::TwoFactorDisabled]);
}

#[test]
fn wrong_codes_when_turning_two_factor_off_back_off_like_sign_in_codes() {
    let mut history = alice_with_two_factor();
    for _ in 0..policy::SECOND_FACTOR_FAILURES_BEFORE_BACKOFF {
        record(&mut history, turn_off(true, Some(&wrong_code(0)), 0));
    }
    given(&history)
        .when(turn_off(true, Some(&code_at(10)), 10))
        .then_expect_error(UserError::AccountLocked {
            until: Some(t(0) + Duration::minutes(1)),
        });
    // The sign-in's TOTP is backing off too.
    let challenge = run(&history, SignIn::right().at(10)).unwrap();
    assert_eq!(issued_methods(&challenge), vec![RecoveryCode]);
}

#[test]
fn login_as_turns_two_factor_off_without_a_code_only_while_it_lasts() {
    let mut history = alice_with_two_factor();
    record(
        &mut history,
        impersonate(ADMIN, Role::Admin, "locked out", Duration::hours(8)),
    );
    let by_login_as = |offset: i64| UserCommand::DisableTwoFactor {
        proof: TwoFactorOffProof::Impersonation {
            session_id: IMPERSONATION_SESSION,
        },
        at: t(offset),
    };
    given(&history)
        .when(by_login_as(60))
        .then_expect_events(vec![UserEvent::TwoFactorDisabled]);
    // Past its 30 minutes, or once ended, it proves nothing.
    given(&history)
        .when(by_login_as(1_800))
        .then_expect_error(UserError::ReauthenticationRequired);
    record(
        &mut history,
        UserCommand::EndImpersonation {
            session_id: IMPERSONATION_SESSION,
            revoked: None,
        },
    );
    given(&history)
        .when(by_login_as(60))
        .then_expect_error(UserError::ReauthenticationRequired);
}

#[test]
fn with_every_factor_locked_the_answer_does_not_tell_whether_the_password_was_right() {
    let mut history = alice();
    history.extend(enrolled(&[]));
    history.push(UserEvent::SecondFactorRejected {
        challenge_id: CHALLENGE,
        method: Totp,
        attempts_remaining: 0,
        consecutive_failures: 10,
        locked_until: Some(t(60)),
    });
    let locked = UserError::AccountLocked { until: Some(t(60)) };
    for right in [true, false] {
        given(&history)
            .when(SignIn::with_password(right).at(0))
            .then_expect_error(locked.clone());
    }
    // Once the factor may be used again, the password step answers as usual.
    given(&history)
        .when(SignIn::wrong().at(60))
        .then_expect_events(password_rejections(1));
}

#[test]
fn an_email_code_refusal_is_recorded_once_per_challenge() {
    let mut history = vec![registered(ALICE, "alice", Role::User, None)];
    history.extend(enrolled(&[]));
    history.push(challenge_issued(CHALLENGE, 0, vec![Totp]));
    let send = |offset: i64| UserCommand::SendEmailCode {
        challenge_id: CHALLENGE,
        code_hash: email_code_hash(&code_key(), CHALLENGE, "123456"),
        address_shared: false,
        at: t(offset),
    };
    record(&mut history, send(1));
    assert!(matches!(
        history.last(),
        Some(UserEvent::EmailCodeRefused { .. })
    ));
    for offset in 2..20 {
        given(&history)
            .when(send(offset))
            .then_expect_error(UserError::EmailUnavailable);
    }
}

#[test]
fn an_emailed_code_is_checked_by_its_keyed_hash() {
    let mut history = alice();
    history.extend(enrolled(&[]));
    history.push(challenge_issued(CHALLENGE, 0, vec![Totp, ByEmail]));
    record(
        &mut history,
        UserCommand::SendEmailCode {
            challenge_id: CHALLENGE,
            code_hash: email_code_hash(&code_key(), CHALLENGE, "123456"),
            address_shared: false,
            at: t(1),
        },
    );
    // The plain SHA-256 of challenge and code is not what is stored.
    assert_ne!(
        email_code_hash(&code_key(), CHALLENGE, "123456"),
        TokenHash::of(&format!("{CHALLENGE}:123456"))
    );
    let accepted = run(&history, verify(CHALLENGE, ByEmail, "123456", 2, None)).unwrap();
    assert!(matches!(
        accepted.first(),
        Some(UserEvent::SecondFactorAccepted { .. })
    ));
    // Under another key the same code is wrong.
    let other_key = UserCommand::VerifySecondFactor {
        challenge_id: CHALLENGE,
        method: ByEmail,
        code: "123456".into(),
        totp_secret: None,
        code_key: CodeKey::from_bytes([0x01; 32]),
        session: session(SESSION, 2),
        remember_device: None,
        at: t(2),
    };
    let rejected = run(&history, other_key).unwrap();
    assert!(matches!(
        rejected.first(),
        Some(UserEvent::SecondFactorRejected { .. })
    ));
}

#[test]
fn an_administrator_goes_on_impersonating_only_while_login_as_is_allowed() {
    let admin = vec![registered(ADMIN, "ann", Role::Admin, None)];
    let started = t(0);
    let user = fold(&admin);
    assert_eq!(
        user.may_go_on_impersonating(Role::User, started, t(60)),
        Ok(())
    );
    // The user became staff.
    assert_eq!(
        user.may_go_on_impersonating(Role::Admin, started, t(60)),
        Err(ImpersonationRevocation::RoleChanged)
    );
    // The administrator was demoted.
    let mut demoted = admin.clone();
    demoted.push(UserEvent::RoleChanged { role: Role::User });
    assert_eq!(
        fold(&demoted).may_go_on_impersonating(Role::User, started, t(60)),
        Err(ImpersonationRevocation::RoleChanged)
    );
    // The administrator's account is locked.
    let mut locked = admin.clone();
    locked.push(UserEvent::PasswordRejected {
        consecutive_failures: 5,
        locked_until: Some(t(120)),
    });
    assert_eq!(
        fold(&locked).may_go_on_impersonating(Role::User, started, t(60)),
        Err(ImpersonationRevocation::ImpersonatorLocked)
    );
    // The administrator's password changed after "Login as" started.
    let mut changed = admin;
    changed.push(UserEvent::PasswordChanged {
        password_hash: PasswordHash::new("$argon2id$new".into()),
        kept_session_id: None,
        changed_at: Some(t(30)),
    });
    assert_eq!(
        fold(&changed).may_go_on_impersonating(Role::User, started, t(60)),
        Err(ImpersonationRevocation::ImpersonatorPasswordChanged)
    );
    assert_eq!(
        fold(&changed).may_go_on_impersonating(Role::User, t(31), t(60)),
        Ok(())
    );
}
