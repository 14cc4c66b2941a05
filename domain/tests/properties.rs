//! Invariants of the user aggregate, checked with proptest:
//!
//! a. a TOTP time step at or below one already accepted for an enrollment is
//!    never accepted again, whatever commands come in whatever order;
//! b. snapshot equals replay: serialising the aggregate after any prefix of a
//!    history and applying the tail gives the aggregate folded from scratch
//!    (and any event stream, however odd, folds without panicking);
//! c. the password failure count only grows, one at a time, until a success
//!    (SessionStarted other than "Login as", ChallengeIssued or PasswordChanged) resets it, and a
//!    locked account answers a right password as it answers a wrong one;
//! d. no session goes beyond the user's rights: the password step never
//!    starts one while the password is locked; a user with an authenticator
//!    gets one only through an open challenge (or a remembered device), never
//!    with a factor that is suspended or backing off; a user who must have
//!    2FA (enforced, or past the platform date) and has none gets only an
//!    enrollment-only session; "Login as" sessions come only from an
//!    administrator's impersonation and carry the administrator.
//!
//! Every run checks all four; each property below names the generator that
//! leans towards its states.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use uuid::Uuid;

use twofold_domain::command::{NewDevice, NewSession, PasswordCheck, TwoFactorOffProof};
use twofold_domain::passkey::{CeremonyState, PasskeyCeremony, PasskeyCredential, PasskeyRefusal};
use twofold_domain::policy;
use twofold_domain::sealed::CodeKey;
use twofold_domain::totp::{
    normalize_code, TotpAlgorithm, TotpParameters, TotpSecret, UnsealedTotp,
};
use twofold_domain::{
    AuthenticatedBy, Email, PasswordHash, Role, SecondFactorMethod, TokenHash, TwoFactorPolicy,
    User, UserCommand, UserError, UserEvent, Username,
};

const T0: i64 = 1_744_243_200; // 2025-04-10T00:00:00Z
const ALICE: Uuid = Uuid::from_u128(0xa11ce);
const ADMIN: Uuid = Uuid::from_u128(0xad);
const UNKNOWN: Uuid = Uuid::from_u128(u128::MAX);
const RECOVERY_CODES: [&str; 3] = ["rc0aaaabbbb", "rc1ccccdddd", "rc2eeeeffff"];

fn t(offset: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(T0 + offset, 0).unwrap()
}

fn unix(offset: i64) -> u64 {
    u64::try_from(T0 + offset).unwrap()
}

fn code_key() -> CodeKey {
    CodeKey::from_bytes([0x3c; 32])
}

fn secret(seed: u8) -> TotpSecret {
    TotpSecret::from_bytes(vec![seed; 20]).unwrap()
}

/// The parameter sets an enrollment may use (all valid).
fn parameters(kind: u8) -> TotpParameters {
    match kind % 3 {
        0 => TotpParameters::default(),
        1 => TotpParameters {
            algorithm: TotpAlgorithm::Sha256,
            digits: 8,
            period: 60,
            skew: 2,
        },
        _ => TotpParameters {
            algorithm: TotpAlgorithm::Sha1,
            digits: 6,
            period: 30,
            skew: 0,
        },
    }
}

fn fold(events: &[UserEvent]) -> User {
    let mut user = User::default();
    for event in events {
        user.apply(event.clone());
    }
    user
}

// ---------------------------------------------------------------- command generator

/// Which code to type.
#[derive(Clone, Debug)]
enum Code {
    /// What the authenticator shows `k` periods from now.
    Step(i8),
    /// A code typed earlier (accepted or not), counting back from the latest.
    Reused(usize),
    /// The code most recently accepted (at sign-in or confirmation).
    LastAccepted,
    Garbage(&'static str),
}

#[derive(Clone, Debug)]
enum Op {
    SignIn {
        right: bool,
        device: Option<u8>,
        email: bool,
    },
    VerifyTotp {
        challenge: usize,
        code: Code,
        remember: Option<u8>,
    },
    VerifyRecovery {
        challenge: usize,
        code: usize,
    },
    StartEnrollment {
        parameters: u8,
    },
    ConfirmEnrollment {
        code: Code,
    },
    Disable,
    Reset,
    Enforce,
    Lift,
    RevokeDevices,
    ChangePassword,
    Impersonate {
        minutes: i64,
    },
    EndImpersonation {
        pick: usize,
    },
    SignOut,
}

fn code() -> impl Strategy<Value = Code> {
    prop_oneof![
        4 => Just(Code::Step(0)),
        3 => (-3_i8..=3).prop_map(Code::Step),
        3 => (0_usize..4).prop_map(Code::Reused),
        2 => Just(Code::LastAccepted),
        1 => prop::sample::select(vec!["", "12345", "abcdef", "1234567890", "000000", "12 34-56"])
            .prop_map(Code::Garbage),
    ]
}

/// Seconds between two commands: mostly within a few TOTP steps (so codes
/// get reused), sometimes long enough for locks and challenges to expire,
/// occasionally a little backwards (a server clock is not monotone).
fn delay() -> impl Strategy<Value = i64> {
    prop_oneof![
        10 => 0_i64..=20,
        3 => 20_i64..=90,
        1 => 90_i64..=4_000,
        1 => -40_i64..=0,
    ]
}

/// Mostly the latest challenge, sometimes an older one, rarely an unknown one.
fn challenge_pick() -> impl Strategy<Value = usize> {
    prop_oneof![6 => Just(0_usize), 3 => 1_usize..4, 1 => 4_usize..64]
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (prop::bool::weighted(0.8), prop::option::of(0_u8..3), any::<bool>())
            .prop_map(|(right, device, email)| Op::SignIn { right, device, email }),
        12 => (challenge_pick(), code(), prop::option::weighted(0.3, 0_u8..3))
            .prop_map(|(challenge, code, remember)| Op::VerifyTotp { challenge, code, remember }),
        2 => (challenge_pick(), 0_usize..=RECOVERY_CODES.len())
            .prop_map(|(challenge, code)| Op::VerifyRecovery { challenge, code }),
        2 => any::<u8>().prop_map(|parameters| Op::StartEnrollment { parameters }),
        3 => code().prop_map(|code| Op::ConfirmEnrollment { code }),
        1 => Just(Op::Disable),
        1 => Just(Op::Reset),
        1 => Just(Op::Enforce),
        1 => Just(Op::Lift),
        1 => Just(Op::RevokeDevices),
        1 => Just(Op::ChangePassword),
        1 => (1_i64..120).prop_map(|minutes| Op::Impersonate { minutes }),
        1 => any::<usize>().prop_map(|pick| Op::EndImpersonation { pick }),
        1 => Just(Op::SignOut),
    ]
}

/// Mostly password attempts, to reach (and outlast) password locks.
fn password_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (prop::bool::weighted(0.2), prop::option::of(0_u8..3), any::<bool>())
            .prop_map(|(right, device, email)| Op::SignIn { right, device, email }),
        3 => (challenge_pick(), code(), Just(None))
            .prop_map(|(challenge, code, remember)| Op::VerifyTotp { challenge, code, remember }),
        1 => any::<u8>().prop_map(|parameters| Op::StartEnrollment { parameters }),
        2 => code().prop_map(|code| Op::ConfirmEnrollment { code }),
        1 => Just(Op::ChangePassword),
        1 => Just(Op::Disable),
        1 => (1_i64..120).prop_map(|minutes| Op::Impersonate { minutes }),
    ]
}

/// A run of commands; most runs begin with an authenticator already
/// enrolled (through the same commands), so that sign-ins meet TOTP.
#[derive(Clone, Debug)]
struct Script {
    enrolled_with: Option<u8>,
    /// TOTP failures already on record (the stream's earlier history), so
    /// that runs reach the 100-failure suspension.
    prior_failures: Option<u32>,
    /// The platform-wide date from which every user must have 2FA, in
    /// seconds from the start of the run.
    mandatory_from: Option<i64>,
    steps: Vec<(i64, Op)>,
}

/// Someone with the password guessing codes: mostly wrong, now and then right.
fn guessing_op() -> impl Strategy<Value = Op> {
    let guess = prop_oneof![
        6 => prop_oneof![Just(Code::Step(-3)), Just(Code::Step(3))],
        3 => prop::sample::select(vec!["000000", "123456", "99999999", "abcdef"]).prop_map(Code::Garbage),
        2 => Just(Code::LastAccepted),
        1 => Just(Code::Step(0)),
    ];
    prop_oneof![
        4 => any::<bool>().prop_map(|email| Op::SignIn { right: true, device: None, email }),
        14 => (challenge_pick(), guess)
            .prop_map(|(challenge, code)| Op::VerifyTotp { challenge, code, remember: None }),
        1 => (challenge_pick(), Just(RECOVERY_CODES.len()))
            .prop_map(|(challenge, code)| Op::VerifyRecovery { challenge, code }),
        1 => (challenge_pick(), 0_usize..RECOVERY_CODES.len())
            .prop_map(|(challenge, code)| Op::VerifyRecovery { challenge, code }),
    ]
}

fn script(op: impl Strategy<Value = Op>, max_len: usize) -> impl Strategy<Value = Script> {
    (
        prop::option::weighted(0.7, any::<u8>()),
        prop::option::weighted(0.2, -600_i64..3_000),
        prop::collection::vec((delay(), op), 1..max_len),
    )
        .prop_map(|(enrolled_with, mandatory_from, steps)| Script {
            enrolled_with,
            prior_failures: None,
            mandatory_from,
            steps,
        })
}

/// An administrator enforcing and lifting 2FA while the user signs in,
/// enrolls, gives up and is helped ("Login as"); mostly without an
/// authenticator to begin with, often under a platform date.
fn enforcement_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::bool::weighted(0.9), prop::option::weighted(0.6, 0_u8..2), any::<bool>())
            .prop_map(|(right, device, email)| Op::SignIn { right, device, email }),
        3 => Just(Op::Enforce),
        2 => Just(Op::Lift),
        2 => any::<u8>().prop_map(|parameters| Op::StartEnrollment { parameters }),
        2 => code().prop_map(|code| Op::ConfirmEnrollment { code }),
        4 => (challenge_pick(), code(), prop::option::weighted(0.7, 0_u8..2))
            .prop_map(|(challenge, code, remember)| Op::VerifyTotp { challenge, code, remember }),
        1 => Just(Op::Disable),
        1 => Just(Op::Reset),
        1 => Just(Op::RevokeDevices),
        1 => (1_i64..120).prop_map(|minutes| Op::Impersonate { minutes }),
        1 => any::<usize>().prop_map(|pick| Op::EndImpersonation { pick }),
    ]
}

fn enforcement_script() -> impl Strategy<Value = Script> {
    (
        script(enforcement_op(), 60),
        prop::bool::weighted(0.2),
        prop::option::weighted(0.5, -600_i64..1_200),
    )
        .prop_map(|(script, enrolled, mandatory_from)| Script {
            enrolled_with: script.enrolled_with.filter(|_| enrolled),
            mandatory_from,
            ..script
        })
}

fn guessing_script() -> impl Strategy<Value = Script> {
    (script(guessing_op(), 300), prop::option::of(85_u32..100)).prop_map(
        |(script, prior_failures)| Script {
            enrolled_with: Some(script.enrolled_with.unwrap_or(0)),
            prior_failures,
            ..script
        },
    )
}

// ---------------------------------------------------------------- observers

/// Property a: per enrollment, the highest step accepted so far.
#[derive(Default)]
struct ReplayGuard {
    active: Option<Uuid>,
    highest: HashMap<Uuid, u64>,
}

/// Property c: the failure count since the last success.
#[derive(Default)]
struct PasswordWatch {
    failures: u32,
}

/// Property d: what the user may do, as the events so far say.
#[derive(Default)]
struct RightsWatch {
    enforced: bool,
    challenges: HashMap<Uuid, ChallengeWatch>,
    factors: BTreeMap<SecondFactorMethod, FactorWatch>,
    devices: Vec<DeviceWatch>,
    /// The factor the current command's events accepted, for its session.
    accepted: Option<SecondFactorMethod>,
    /// The session the current command's "Login as" started.
    impersonation: Option<Uuid>,
}

struct ChallengeWatch {
    methods: Vec<SecondFactorMethod>,
    expires_at: DateTime<Utc>,
    attempts_remaining: u32,
}

#[derive(Default)]
struct FactorWatch {
    locked_until: Option<DateTime<Utc>>,
    suspended: bool,
}

struct DeviceWatch {
    id: Uuid,
    token_hash: TokenHash,
    expires_at: DateTime<Utc>,
}

impl RightsWatch {
    fn forget_second_factors(&mut self) {
        self.challenges.clear();
        self.factors.clear();
        self.devices.clear();
    }
}

/// What a step counted, to show the generator reaches the interesting states.
#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    totp_accepted: usize,
    replays: usize,
    password_locks: usize,
    refused_while_locked: usize,
    factor_locks: usize,
    factor_backoffs: usize,
    suspensions: usize,
    enrollments_confirmed: usize,
    challenges_issued: usize,
    refusals: usize,
    enrollment_only_sessions: usize,
    second_factor_sessions: usize,
    remembered_device_sessions: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.totp_accepted += other.totp_accepted;
        self.replays += other.replays;
        self.password_locks += other.password_locks;
        self.refused_while_locked += other.refused_while_locked;
        self.factor_locks += other.factor_locks;
        self.factor_backoffs += other.factor_backoffs;
        self.suspensions += other.suspensions;
        self.enrollments_confirmed += other.enrollments_confirmed;
        self.challenges_issued += other.challenges_issued;
        self.refusals += other.refusals;
        self.enrollment_only_sessions += other.enrollment_only_sessions;
        self.second_factor_sessions += other.second_factor_sessions;
        self.remembered_device_sessions += other.remembered_device_sessions;
    }
}

/// The code typed with the current command, and what it was checked against.
struct Typed {
    code: String,
    parameters: TotpParameters,
    seed: u8,
}

struct World {
    user: User,
    now: i64,
    events: Vec<UserEvent>,
    challenges: Vec<Uuid>,
    open_challenges: Vec<Uuid>,
    impersonation_sessions: Vec<Uuid>,
    typed_codes: Vec<String>,
    last_accepted: Option<String>,
    seeds: HashMap<Uuid, u8>,
    next_id: u128,
    policy: TwoFactorPolicy,
    guard: ReplayGuard,
    password: PasswordWatch,
    rights: RightsWatch,
    tally: Tally,
}

/// The command whose events are being observed.
struct Decision<'a> {
    op: &'a Op,
    typed: Option<&'a Typed>,
    password_locked: bool,
}

impl World {
    fn new(policy: TwoFactorPolicy) -> Self {
        let mut world = Self {
            user: User::default(),
            now: 0,
            events: Vec::new(),
            challenges: Vec::new(),
            open_challenges: Vec::new(),
            impersonation_sessions: Vec::new(),
            typed_codes: Vec::new(),
            last_accepted: None,
            seeds: HashMap::new(),
            next_id: 0x1000,
            policy,
            guard: ReplayGuard::default(),
            password: PasswordWatch::default(),
            rights: RightsWatch::default(),
            tally: Tally::default(),
        };
        let registered = world
            .user
            .decide(UserCommand::RegisterUser {
                user_id: ALICE,
                username: Username::parse("alice").unwrap(),
                email: Some(Email::parse("alice@example.com").unwrap()),
                role: Role::User,
                password_hash: PasswordHash::new("$argon2id$v=19$alice".into()),
                at: t(-86_400),
            })
            .unwrap();
        for event in registered {
            world.user.apply(event.clone());
            world.events.push(event);
        }
        world
    }

    fn at(&self) -> DateTime<Utc> {
        t(self.now)
    }

    fn fresh_id(&mut self) -> Uuid {
        self.next_id += 1;
        Uuid::from_u128(self.next_id)
    }

    /// The caller's check of a typed password, against the stored hash.
    fn password_check(&self, matches: bool) -> PasswordCheck {
        PasswordCheck {
            matches,
            against: self
                .user
                .profile()
                .map(|p| p.password_hash.clone())
                .unwrap_or_else(|| PasswordHash::new(String::new())),
        }
    }

    fn session(&mut self) -> NewSession {
        let session_id = self.fresh_id();
        NewSession {
            session_id,
            token_hash: TokenHash::of(&format!("session {session_id}")),
            expires_at: self.at() + Duration::hours(12),
        }
    }

    /// `pick` counts back from the latest challenge still open, then through
    /// spent ones; past those, an unknown one.
    fn challenge(&self, pick: usize) -> Uuid {
        let spent = self
            .challenges
            .iter()
            .rev()
            .filter(|id| !self.open_challenges.contains(id));
        self.open_challenges
            .iter()
            .rev()
            .chain(spent)
            .nth(pick)
            .copied()
            .unwrap_or(UNKNOWN)
    }

    /// The secret the caller would decrypt: the active (or pending) enrollment's.
    fn enrollment(&self, pending: bool) -> Option<(Uuid, TotpParameters, u8)> {
        let (id, parameters) = if pending {
            self.user
                .pending_totp()
                .map(|p| (p.enrollment_id, p.parameters))?
        } else {
            self.user
                .active_totp()
                .map(|a| (a.enrollment_id, a.parameters))?
        };
        Some((id, parameters, self.seeds[&id]))
    }

    fn type_code(&mut self, code: &Code, parameters: &TotpParameters, seed: u8) -> String {
        let typed = match code {
            Code::Step(k) => {
                let offset = self.now + i64::from(*k) * i64::try_from(parameters.period).unwrap();
                parameters.code_at(&secret(seed), unix(offset))
            }
            Code::Reused(back) if !self.typed_codes.is_empty() => {
                let latest = self.typed_codes.len() - 1;
                self.typed_codes[latest - back.min(&latest)].clone()
            }
            Code::Reused(_) => parameters.code_at(&secret(seed), unix(self.now)),
            Code::LastAccepted => self
                .last_accepted
                .clone()
                .unwrap_or_else(|| parameters.code_at(&secret(seed), unix(self.now))),
            Code::Garbage(text) => (*text).to_string(),
        };
        self.typed_codes.push(typed.clone());
        typed
    }

    fn command(&mut self, op: &Op) -> (UserCommand, Option<Typed>) {
        let at = self.at();
        let none = |command: UserCommand| -> (UserCommand, Option<Typed>) { (command, None) };
        match op {
            Op::SignIn {
                right,
                device,
                email,
            } => {
                let challenge_id = self.fresh_id();
                let session = self.session();
                none(UserCommand::SignIn {
                    password: self.password_check(*right),
                    device_token: device.map(|n| TokenHash::of(&format!("device {n}"))),
                    email_offered: *email,
                    session,
                    challenge_id,
                    policy: self.policy,
                    at,
                })
            }
            Op::VerifyTotp {
                challenge,
                code,
                remember,
            } => {
                let challenge_id = self.challenge(*challenge);
                // Without an active enrollment the aggregate refuses before the
                // secret matters; hand it some secret anyway.
                let (enrollment_id, parameters, seed) =
                    self.enrollment(false)
                        .unwrap_or((UNKNOWN, TotpParameters::default(), 1));
                let typed = self.type_code(code, &parameters, seed);
                let remember_device = remember.map(|n| NewDevice {
                    device_id: Uuid::from_u128(0xde00 + u128::from(n)),
                    token_hash: TokenHash::of(&format!("device {n}")),
                    expires_at: at + Duration::hours(23),
                    user_agent: None,
                });
                let session = self.session();
                (
                    UserCommand::VerifySecondFactor {
                        challenge_id,
                        method: SecondFactorMethod::Totp,
                        code: typed.clone(),
                        totp_secret: Some(UnsealedTotp {
                            enrollment_id,
                            secret: secret(seed),
                        }),
                        code_key: code_key(),
                        session,
                        remember_device,
                        at,
                    },
                    Some(Typed {
                        code: typed,
                        parameters,
                        seed,
                    }),
                )
            }
            Op::VerifyRecovery { challenge, code } => {
                let challenge_id = self.challenge(*challenge);
                let session = self.session();
                none(UserCommand::VerifySecondFactor {
                    challenge_id,
                    method: SecondFactorMethod::RecoveryCode,
                    code: RECOVERY_CODES
                        .get(*code)
                        .unwrap_or(&"not-a-code")
                        .to_string(),
                    totp_secret: None,
                    code_key: code_key(),
                    session,
                    remember_device: None,
                    at,
                })
            }
            Op::StartEnrollment { parameters: kind } => {
                let enrollment_id = self.fresh_id();
                // Three secrets in turn: a user may re-enroll the same key.
                self.seeds.insert(enrollment_id, 1 + kind % 3);
                none(UserCommand::StartTotpEnrollment {
                    enrollment_id,
                    parameters: parameters(*kind),
                })
            }
            Op::ConfirmEnrollment { code } => {
                let (_, parameters, seed) =
                    self.enrollment(true)
                        .unwrap_or((UNKNOWN, TotpParameters::default(), 1));
                let typed = self.type_code(code, &parameters, seed);
                (
                    UserCommand::ConfirmTotpEnrollment {
                        code: typed.clone(),
                        secret: secret(seed),
                        recovery_code_hashes: RECOVERY_CODES
                            .iter()
                            .map(|code| TokenHash::of(code))
                            .collect(),
                        at,
                    },
                    Some(Typed {
                        code: typed,
                        parameters,
                        seed,
                    }),
                )
            }
            // The user's own session: the right password and the code the
            // app shows now (refused when that step was already accepted).
            Op::Disable => {
                let active = self.enrollment(false);
                let code = active
                    .map(|(_, parameters, seed)| parameters.code_at(&secret(seed), unix(self.now)));
                none(UserCommand::DisableTwoFactor {
                    proof: TwoFactorOffProof::Reauthenticated {
                        password: self.password_check(true),
                        code,
                        totp_secret: active.map(|(enrollment_id, _, seed)| UnsealedTotp {
                            enrollment_id,
                            secret: secret(seed),
                        }),
                        passkey_signed_in_at: None,
                    },
                    at,
                })
            }
            Op::Reset => none(UserCommand::ResetTwoFactor {
                reason: "lost phone".into(),
            }),
            Op::Enforce => none(UserCommand::EnforceTwoFactor { reason: None }),
            Op::Lift => none(UserCommand::LiftTwoFactorEnforcement { reason: None }),
            Op::RevokeDevices => none(UserCommand::RevokeRememberedDevices),
            Op::ChangePassword => {
                let kept_session_id = self.fresh_id();
                none(UserCommand::ChangePassword {
                    current: self.password_check(true),
                    password_hash: PasswordHash::new(format!("$argon2id$v=19${}", self.now)),
                    kept_session_id,
                    at,
                })
            }
            Op::Impersonate { minutes } => {
                let impersonation_id = self.fresh_id();
                let mut session = self.session();
                session.expires_at = at + Duration::minutes(*minutes);
                self.impersonation_sessions.push(session.session_id);
                none(UserCommand::StartImpersonation {
                    impersonation_id,
                    impersonator_id: ADMIN,
                    impersonator_role: Role::Admin,
                    reason: "support".into(),
                    ticket: None,
                    session,
                    at,
                })
            }
            Op::EndImpersonation { pick } => {
                let session_id = if self.impersonation_sessions.is_empty() {
                    UNKNOWN
                } else {
                    self.impersonation_sessions[pick % self.impersonation_sessions.len()]
                };
                none(UserCommand::EndImpersonation {
                    session_id,
                    revoked: None,
                })
            }
            Op::SignOut => {
                let session_id = self.fresh_id();
                none(UserCommand::SignOut { session_id })
            }
        }
    }

    /// Runs one command through `decide`, checks every invariant on what it
    /// decided, and applies the events.
    fn step(&mut self, delay: i64, op: &Op) -> Result<(), TestCaseError> {
        self.now += delay;
        let at = self.at();
        let locked = self.user.password_locked_until(at);
        let (command, typed) = self.command(op);
        let result = self.user.decide(command);

        if let Op::SignIn { right, .. } = op {
            if let Some(until) = locked {
                // c: while locked, the right password gets the wrong one's answer.
                let expected = Err(UserError::AccountLocked { until: Some(until) });
                prop_assert_eq!(&result, &expected);
                let session = self.session();
                let flipped = self.user.decide(UserCommand::SignIn {
                    password: self.password_check(!right),
                    device_token: None,
                    email_offered: false,
                    session,
                    challenge_id: UNKNOWN,
                    policy: self.policy,
                    at,
                });
                prop_assert_eq!(&flipped, &expected);
                self.tally.refused_while_locked += 1;
            }
        }
        if result.is_err() {
            self.tally.refusals += 1;
        }
        if let Err(UserError::AccountLocked { .. }) = &result {
            if !matches!(op, Op::SignIn { .. }) || locked.is_none() {
                self.tally.factor_locks += 1;
            }
        }

        let decision = Decision {
            op,
            typed: typed.as_ref(),
            password_locked: locked.is_some(),
        };
        for event in result.unwrap_or_default() {
            self.observe(&event, &decision)?;
            self.user.apply(event.clone());
            self.events.push(event);
        }
        prop_assert!(
            self.rights.accepted.is_none(),
            "a factor accepted without a session"
        );
        prop_assert!(
            self.rights.impersonation.is_none(),
            "\"Login as\" without its session"
        );
        prop_assert_eq!(
            self.user.active_totp().map(|a| a.enrollment_id),
            self.guard.active
        );
        if let Some(active) = self.user.active_totp() {
            prop_assert_eq!(
                Some(&active.last_accepted_step),
                self.guard.highest.get(&active.enrollment_id)
            );
        }
        Ok(())
    }

    fn observe(&mut self, event: &UserEvent, decision: &Decision) -> Result<(), TestCaseError> {
        let typed = decision.typed;
        self.watch_rights(event, decision)?;
        match event {
            // a: confirming an enrollment accepts its first step.
            UserEvent::TotpEnrollmentConfirmed {
                enrollment_id,
                accepted_step,
                ..
            } => {
                let typed = typed.expect("a confirmation comes from a typed code");
                self.check_step(*accepted_step, typed)?;
                if let Some(previous) = self.guard.highest.get(enrollment_id) {
                    prop_assert!(
                        accepted_step > previous,
                        "enrollment {} confirmed again at step {} <= {}",
                        enrollment_id,
                        accepted_step,
                        previous
                    );
                }
                self.guard.highest.insert(*enrollment_id, *accepted_step);
                self.last_accepted = Some(typed.code.clone());
                self.guard.active = Some(*enrollment_id);
                self.tally.enrollments_confirmed += 1;
            }
            // a: a sign-in step must be above every step accepted before.
            UserEvent::SecondFactorAccepted {
                challenge_id,
                method,
                totp_step,
                recovery_code_index,
                ..
            } => {
                self.open_challenges.retain(|id| id != challenge_id);
                match (method, totp_step, recovery_code_index) {
                    (SecondFactorMethod::Totp, Some(step), None) => {
                        let typed = typed.expect("a TOTP acceptance comes from a typed code");
                        self.check_step(*step, typed)?;
                        let enrollment = self
                            .guard
                            .active
                            .expect("a TOTP code is accepted only with an active enrollment");
                        let highest = self.guard.highest[&enrollment];
                        prop_assert!(
                            *step > highest,
                            "step {} accepted for enrollment {} after step {}",
                            step,
                            enrollment,
                            highest
                        );
                        self.guard.highest.insert(enrollment, *step);
                        self.last_accepted = Some(typed.code.clone());
                        self.tally.totp_accepted += 1;
                    }
                    (SecondFactorMethod::RecoveryCode, None, Some(index)) => {
                        prop_assert!(*index < RECOVERY_CODES.len());
                    }
                    other => prop_assert!(false, "inconsistent acceptance {:?}", other),
                }
            }
            UserEvent::SecondFactorRejected {
                locked_until: Some(_),
                ..
            } => self.tally.factor_backoffs += 1,
            UserEvent::SecondFactorSuspended { .. } => self.tally.suspensions += 1,
            UserEvent::TotpCodeReplayed { step, .. } => {
                let enrollment = self.guard.active.expect("replay needs an enrollment");
                prop_assert!(*step <= self.guard.highest[&enrollment]);
                self.tally.replays += 1;
            }
            UserEvent::TwoFactorDisabled | UserEvent::TwoFactorReset { .. } => {
                self.guard.active = None;
                self.open_challenges.clear();
            }
            UserEvent::ChallengeIssued { challenge_id, .. } => {
                self.challenges.push(*challenge_id);
                self.open_challenges.push(*challenge_id);
                self.tally.challenges_issued += 1;
                self.password.failures = 0;
            }
            // c: the count grows by one at a time; the lock is 1, 2, 4 ... 60
            // minutes from the fifth failure on.
            UserEvent::PasswordRejected {
                consecutive_failures,
                locked_until,
            } => {
                prop_assert_eq!(*consecutive_failures, self.password.failures + 1);
                self.password.failures = *consecutive_failures;
                let expected = consecutive_failures.checked_sub(5).map(|over| {
                    let minutes = if over >= 6 {
                        60
                    } else {
                        (1_i64 << over).min(60)
                    };
                    self.at() + Duration::minutes(minutes)
                });
                prop_assert_eq!(*locked_until, expected);
                if locked_until.is_some() {
                    self.tally.password_locks += 1;
                }
            }
            // "Login as" proves nothing about who guesses the password.
            UserEvent::SessionStarted {
                authenticated_by, ..
            } if *authenticated_by != AuthenticatedBy::Impersonation => {
                self.password.failures = 0;
            }
            UserEvent::PasswordChanged { .. } => self.password.failures = 0,
            _ => {}
        }
        Ok(())
    }

    /// d: keeps what the user may do up to date, and checks each acceptance
    /// and each session against it.
    fn watch_rights(
        &mut self,
        event: &UserEvent,
        decision: &Decision,
    ) -> Result<(), TestCaseError> {
        let at = self.at();
        let rights = &mut self.rights;
        match event {
            UserEvent::ChallengeIssued {
                challenge_id,
                methods,
                expires_at,
            } => {
                rights.challenges.insert(
                    *challenge_id,
                    ChallengeWatch {
                        methods: methods.clone(),
                        expires_at: *expires_at,
                        attempts_remaining: policy::CHALLENGE_ATTEMPTS,
                    },
                );
            }
            UserEvent::SecondFactorRejected {
                challenge_id,
                method,
                attempts_remaining,
                locked_until,
                ..
            } => {
                if let Some(challenge) = rights.challenges.get_mut(challenge_id) {
                    challenge.attempts_remaining = *attempts_remaining;
                }
                rights.factors.entry(*method).or_default().locked_until = *locked_until;
            }
            UserEvent::ReauthenticationCodeRejected {
                method,
                locked_until,
                ..
            } => {
                rights.factors.entry(*method).or_default().locked_until = *locked_until;
            }
            UserEvent::SecondFactorSuspended { method, .. } => {
                rights.factors.entry(*method).or_default().suspended = true;
            }
            UserEvent::SecondFactorAccepted {
                challenge_id,
                method,
                ..
            } => {
                let challenge = rights.challenges.remove(challenge_id);
                let challenge = challenge.ok_or_else(|| {
                    TestCaseError::fail(format!("accepted on a challenge never issued: {event:?}"))
                })?;
                prop_assert!(
                    at < challenge.expires_at,
                    "accepted on an expired challenge"
                );
                prop_assert!(
                    challenge.attempts_remaining > 0,
                    "accepted on a locked challenge"
                );
                prop_assert!(
                    challenge.methods.contains(method),
                    "{:?} was not offered",
                    method
                );
                let factor = rights.factors.remove(method).unwrap_or_default();
                prop_assert!(!factor.suspended, "a suspended {:?} was accepted", method);
                prop_assert!(
                    factor.locked_until.is_none_or(|until| until <= at),
                    "{:?} accepted while backing off until {:?}",
                    method,
                    factor.locked_until
                );
                rights.accepted = Some(*method);
            }
            UserEvent::TotpEnrollmentConfirmed { .. } => rights.factors.clear(),
            UserEvent::TwoFactorDisabled | UserEvent::TwoFactorReset { .. } => {
                rights.forget_second_factors();
            }
            UserEvent::DeviceRemembered {
                device_id,
                token_hash,
                remembered_at,
                expires_at,
                ..
            } => {
                rights
                    .devices
                    .retain(|device| device.expires_at > *remembered_at);
                rights.devices.push(DeviceWatch {
                    id: *device_id,
                    token_hash: token_hash.clone(),
                    expires_at: *expires_at,
                });
            }
            UserEvent::RememberedDevicesRevoked | UserEvent::PasswordChanged { .. } => {
                rights.devices.clear();
            }
            UserEvent::TwoFactorEnforced { .. } => rights.enforced = true,
            UserEvent::TwoFactorEnforcementLifted { .. } => rights.enforced = false,
            UserEvent::ImpersonationStarted {
                impersonator_id,
                session_id,
                ..
            } => {
                let from_login_as = matches!(decision.op, Op::Impersonate { .. });
                prop_assert!(from_login_as, "\"Login as\" from {:?}", decision.op);
                prop_assert_eq!(*impersonator_id, ADMIN);
                rights.impersonation = Some(*session_id);
            }
            UserEvent::SessionStarted {
                session_id,
                authenticated_by,
                enrollment_required,
                impersonator_id,
                device_id,
                ..
            } => self.check_session(
                decision,
                *session_id,
                *authenticated_by,
                *enrollment_required,
                *impersonator_id,
                *device_id,
            )?,
            _ => {}
        }
        Ok(())
    }

    /// d: a session is one the user (or the administrator acting for them)
    /// may have, as the rights stood when the command was decided.
    fn check_session(
        &mut self,
        decision: &Decision,
        session_id: Uuid,
        authenticated_by: AuthenticatedBy,
        enrollment_required: bool,
        impersonator_id: Option<Uuid>,
        device_id: Option<Uuid>,
    ) -> Result<(), TestCaseError> {
        let at = self.at();
        if authenticated_by == AuthenticatedBy::Impersonation {
            prop_assert_eq!(self.rights.impersonation.take(), Some(session_id));
            prop_assert_eq!(impersonator_id, Some(ADMIN));
            prop_assert!(
                !enrollment_required,
                "\"Login as\" is never held on enrollment"
            );
            return Ok(());
        }
        prop_assert_eq!(impersonator_id, None);
        let has_authenticator = self.guard.active.is_some();
        match (authenticated_by, decision.op) {
            (AuthenticatedBy::Password, Op::SignIn { right: true, .. }) => {
                prop_assert!(!decision.password_locked, "signed in while locked");
                prop_assert!(
                    !has_authenticator,
                    "the password alone passed an authenticator"
                );
                let must_have_two_factor = self.rights.enforced || self.policy.mandatory_at(at);
                prop_assert_eq!(
                    enrollment_required,
                    must_have_two_factor,
                    "enforced {}, platform date {:?}",
                    self.rights.enforced,
                    self.policy.mandatory_from
                );
                if enrollment_required {
                    self.tally.enrollment_only_sessions += 1;
                }
            }
            (
                AuthenticatedBy::RememberedDevice,
                Op::SignIn {
                    right: true,
                    device: Some(device),
                    ..
                },
            ) => {
                prop_assert!(!decision.password_locked, "signed in while locked");
                prop_assert!(has_authenticator);
                prop_assert!(!enrollment_required);
                let token_hash = TokenHash::of(&format!("device {device}"));
                prop_assert!(
                    self.rights
                        .devices
                        .iter()
                        .any(|remembered| Some(remembered.id) == device_id
                            && remembered.token_hash == token_hash
                            && remembered.expires_at > at),
                    "device {:?} is not remembered for this user now",
                    device_id
                );
                self.tally.remembered_device_sessions += 1;
            }
            (
                AuthenticatedBy::Totp | AuthenticatedBy::RecoveryCode | AuthenticatedBy::Email,
                Op::VerifyTotp { .. } | Op::VerifyRecovery { .. },
            ) => {
                let accepted = self.rights.accepted.take().map(AuthenticatedBy::from);
                prop_assert_eq!(accepted, Some(authenticated_by));
                prop_assert!(!enrollment_required);
                self.tally.second_factor_sessions += 1;
            }
            (by, op) => prop_assert!(false, "a {:?} session from {:?}", by, op),
        }
        Ok(())
    }

    /// The accepted step is one the typed code really belongs to, inside the window.
    fn check_step(&self, step: u64, typed: &Typed) -> Result<(), TestCaseError> {
        let parameters = typed.parameters;
        let code = normalize_code(&typed.code, parameters.digits)
            .map_err(|e| TestCaseError::fail(format!("accepted a malformed code: {e}")))?;
        prop_assert_eq!(
            parameters.code_at(&secret(typed.seed), step * parameters.period),
            code
        );
        let now = parameters.step_at(unix(self.now));
        prop_assert!(now.abs_diff(step) <= u64::from(parameters.skew));
        Ok(())
    }
}

fn play(script: &Script) -> Result<World, TestCaseError> {
    let mut world = World::new(TwoFactorPolicy {
        mandatory_from: script.mandatory_from.map(t),
    });
    if let Some(parameters) = script.enrolled_with {
        world.step(0, &Op::StartEnrollment { parameters })?;
        world.step(
            0,
            &Op::ConfirmEnrollment {
                code: Code::Step(0),
            },
        )?;
        prop_assert!(world.user.active_totp().is_some());
    }
    if let Some(consecutive_failures) = script.prior_failures {
        let earlier = UserEvent::SecondFactorRejected {
            challenge_id: UNKNOWN,
            method: SecondFactorMethod::Totp,
            attempts_remaining: 0,
            consecutive_failures,
            locked_until: Some(t(-60)),
        };
        world.user.apply(earlier.clone());
        world.events.push(earlier);
    }
    for (delay, op) in &script.steps {
        world.step(*delay, op)?;
    }
    Ok(world)
}

// ---------------------------------------------------------------- b: snapshot equals replay

fn snapshot_equals_replay(events: &[UserEvent]) -> Result<(), TestCaseError> {
    let replayed = fold(events);
    let mut prefix = User::default();
    for split in 0..=events.len() {
        if split > 0 {
            prefix.apply(events[split - 1].clone());
        }
        let text = serde_json::to_string(&prefix)
            .map_err(|e| TestCaseError::fail(format!("serialize at {split}: {e}")))?;
        let mut restored: User = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("deserialize at {split}: {e}\n{text}")))?;
        prop_assert_eq!(&restored, &prefix, "round trip at {}", split);
        // The stores keep the snapshot as a JSON value; that way round-trips too.
        let value = serde_json::to_value(&prefix)
            .map_err(|e| TestCaseError::fail(format!("to_value at {split}: {e}")))?;
        let from_value: User = serde_json::from_value(value)
            .map_err(|e| TestCaseError::fail(format!("from_value at {split}: {e}")))?;
        prop_assert_eq!(&from_value, &prefix, "value round trip at {}", split);

        for event in &events[split..] {
            restored.apply(event.clone());
        }
        prop_assert_eq!(&restored, &replayed, "snapshot after {} events", split);
    }
    Ok(())
}

fn small_id() -> impl Strategy<Value = Uuid> {
    (0_u128..4).prop_map(Uuid::from_u128)
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    (-600_i64..20_000).prop_map(t)
}

fn token() -> impl Strategy<Value = TokenHash> {
    (0_u8..4).prop_map(|n| TokenHash::of(&format!("token {n}")))
}

fn method() -> impl Strategy<Value = SecondFactorMethod> {
    prop::sample::select(vec![
        SecondFactorMethod::Totp,
        SecondFactorMethod::Email,
        SecondFactorMethod::RecoveryCode,
        SecondFactorMethod::Passkey,
    ])
}

fn authenticated_by() -> impl Strategy<Value = AuthenticatedBy> {
    prop::sample::select(vec![
        AuthenticatedBy::Password,
        AuthenticatedBy::Totp,
        AuthenticatedBy::Email,
        AuthenticatedBy::RecoveryCode,
        AuthenticatedBy::RememberedDevice,
        AuthenticatedBy::Impersonation,
        AuthenticatedBy::Passkey,
    ])
}

fn ceremony() -> impl Strategy<Value = PasskeyCeremony> {
    prop::sample::select(vec![
        PasskeyCeremony::Registration,
        PasskeyCeremony::SecondFactor,
        PasskeyCeremony::SignIn,
    ])
}

fn credential_id() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["AAEC", "AwQF", "BgcI"]).prop_map(str::to_string)
}

/// The passkey events, with any payload.
fn passkey_event() -> impl Strategy<Value = UserEvent> {
    use UserEvent as E;
    prop_oneof![
        2 => (small_id(), text(), instant()).prop_map(|(registration_id, state, expires_at)| {
            E::PasskeyRegistrationStarted {
                registration_id,
                ceremony_secret: CeremonyState::new(state),
                expires_at,
            }
        }),
        2 => (small_id(), small_id(), text(), credential_id(), any::<u32>(), any::<bool>(), instant())
            .prop_map(|(passkey_id, registration_id, name, credential_id, counter, user_verified,
                        registered_at)| E::PasskeyRegistered {
                passkey_id,
                registration_id,
                name,
                credential: PasskeyCredential::new(serde_json::json!({ "id": credential_id })),
                credential_id,
                counter,
                user_verified,
                attestation_format: "none".into(),
                registered_at,
            }),
        1 => (ceremony(), prop::option::of(small_id()), prop::option::of(0_u32..20),
            prop::option::of(instant()))
            .prop_map(|(ceremony, registration_id, consecutive_failures, locked_until)| {
                E::PasskeyRejected {
                    ceremony,
                    reason: PasskeyRefusal::BadSignature,
                    registration_id,
                    passkey_id: None,
                    consecutive_failures,
                    locked_until,
                }
            }),
        1 => (small_id(), text()).prop_map(|(challenge_id, state)| E::PasskeyAssertionStarted {
            challenge_id,
            ceremony_secret: CeremonyState::new(state),
        }),
        2 => (small_id(), ceremony(), any::<u32>(), any::<bool>(), instant())
            .prop_map(|(passkey_id, ceremony, counter, user_verified, used_at)| E::PasskeyUsed {
                passkey_id,
                ceremony,
                counter,
                user_verified,
                used_at,
            }),
        1 => (small_id(), ceremony(), any::<u32>(), any::<u32>())
            .prop_map(|(passkey_id, ceremony, stored_counter, asserted_counter)| {
                E::PasskeyCounterRegressed { passkey_id, ceremony, stored_counter, asserted_counter }
            }),
        1 => (small_id(), text()).prop_map(|(passkey_id, name)| E::PasskeyRenamed { passkey_id, name }),
        1 => (small_id(), credential_id())
            .prop_map(|(passkey_id, credential_id)| E::PasskeyRemoved { passkey_id, credential_id }),
    ]
}

fn email() -> impl Strategy<Value = Option<Email>> {
    prop::option::of(
        prop::sample::select(vec!["a@example.com", "B@Example.com", "shared@example.com"])
            .prop_map(|e| Email::parse(e).unwrap()),
    )
}

fn text() -> impl Strategy<Value = String> {
    "[a-z ]{0,8}"
}

/// Any event with any payload, in any order: what a store may hold after
/// years of versions, bugs and hand repairs.
fn any_event() -> impl Strategy<Value = UserEvent> {
    use UserEvent as E;
    prop_oneof![
        1 => (small_id(), prop::sample::select(vec!["alice", "bob"]), email(),
            prop::sample::select(Role::ALL.to_vec()), instant())
            .prop_map(|(user_id, name, email, role, registered_at)| E::UserRegistered {
                user_id,
                username: Username::parse(name).unwrap(),
                email,
                role,
                password_hash: PasswordHash::new(format!("hash {name}")),
                registered_at,
            }),
        1 => email().prop_map(|email| E::EmailChanged { email }),
        1 => prop::sample::select(Role::ALL.to_vec()).prop_map(|role| E::RoleChanged { role }),
        1 => text().prop_map(|h| E::PasswordChanged {
            password_hash: PasswordHash::new(h),
            kept_session_id: None,
            changed_at: None,
        }),
        3 => (0_u32..20, prop::option::of(instant())).prop_map(|(consecutive_failures, locked_until)| {
            E::PasswordRejected { consecutive_failures, locked_until }
        }),
        3 => (small_id(), prop::collection::vec(method(), 0..4), instant())
            .prop_map(|(challenge_id, methods, expires_at)| E::ChallengeIssued {
                challenge_id,
                methods,
                expires_at,
            }),
        3 => (small_id(), method(), prop::option::of(0_u64..100_000_000),
            prop::option::of(0_usize..12))
            .prop_map(|(challenge_id, method, totp_step, recovery_code_index)| {
                E::SecondFactorAccepted { challenge_id, method, totp_step, recovery_code_index }
            }),
        3 => (small_id(), method(), 0_u32..6, 0_u32..120, prop::option::of(instant()))
            .prop_map(|(challenge_id, method, attempts_remaining, consecutive_failures, locked_until)| {
                E::SecondFactorRejected {
                    challenge_id,
                    method,
                    attempts_remaining,
                    consecutive_failures,
                    locked_until,
                }
            }),
        1 => (small_id(), 0_u64..100_000_000).prop_map(|(challenge_id, step)| E::TotpCodeReplayed {
            challenge_id,
            step,
        }),
        1 => (method(), 0_u32..120).prop_map(|(method, consecutive_failures)| E::SecondFactorSuspended {
            method,
            consecutive_failures,
        }),
        3 => (small_id(), token(), authenticated_by(), instant(), instant(), any::<bool>(),
            prop::option::of(small_id()), prop::option::of(small_id()))
            .prop_map(|(session_id, token_hash, authenticated_by, started_at, expires_at,
                        enrollment_required, impersonator_id, device_id)| E::SessionStarted {
                session_id,
                token_hash,
                authenticated_by,
                started_at,
                expires_at,
                enrollment_required,
                impersonator_id,
                device_id,
            }),
        1 => small_id().prop_map(|session_id| E::SessionEnded { session_id }),
        2 => (small_id(), any::<u8>()).prop_map(|(enrollment_id, kind)| E::TotpEnrollmentStarted {
            enrollment_id,
            parameters: parameters(kind),
        }),
        1 => (small_id(), 0_u32..6).prop_map(|(enrollment_id, attempts_remaining)| {
            E::TotpEnrollmentCodeRejected { enrollment_id, attempts_remaining }
        }),
        2 => (small_id(), 0_u64..100_000_000, prop::collection::vec(token(), 0..4), instant())
            .prop_map(|(enrollment_id, accepted_step, recovery_code_hashes, enabled_at)| {
                E::TotpEnrollmentConfirmed {
                    enrollment_id,
                    accepted_step,
                    recovery_code_hashes,
                    enabled_at,
                }
            }),
        1 => Just(E::TwoFactorDisabled),
        1 => text().prop_map(|reason| E::TwoFactorReset { reason }),
        2 => (small_id(), token(), instant(), instant(), prop::option::of(text()))
            .prop_map(|(device_id, token_hash, remembered_at, expires_at, user_agent)| {
                E::DeviceRemembered { device_id, token_hash, remembered_at, expires_at, user_agent }
            }),
        1 => Just(E::RememberedDevicesRevoked),
        1 => prop::option::of(text()).prop_map(|reason| E::TwoFactorEnforced { reason }),
        1 => prop::option::of(text()).prop_map(|reason| E::TwoFactorEnforcementLifted { reason }),
        2 => (small_id(), small_id(), small_id(), text(), prop::option::of(text()), instant())
            .prop_map(|(impersonation_id, impersonator_id, session_id, reason, ticket, expires_at)| {
                E::ImpersonationStarted {
                    impersonation_id,
                    impersonator_id,
                    session_id,
                    reason,
                    ticket,
                    expires_at,
                }
            }),
        1 => (small_id(), small_id()).prop_map(|(impersonation_id, session_id)| E::ImpersonationEnded {
            revoked: None,
            impersonation_id,
            session_id,
        }),
        6 => passkey_event(),
    ]
}

// ---------------------------------------------------------------- the properties

proptest! {
    #![proptest_config(Config { cases: 256, ..Config::default() })]

    /// a. No TOTP step at or below one already accepted for the same
    /// enrollment is ever accepted, at sign-in or at confirmation.
    #[test]
    fn a_used_totp_step_is_never_accepted_again(script in script(any_op(), 80)) {
        play(&script)?;
    }

    /// a and d. The same under long runs of guessing: and a factor that
    /// backs off or is suspended, or a locked challenge, starts no session.
    #[test]
    fn guessed_codes_never_replay_a_step_nor_pass_a_locked_or_suspended_factor(
        script in guessing_script()
    ) {
        play(&script)?;
    }

    /// c. The password failure count grows by one until a success resets it,
    /// and a locked account answers both passwords alike.
    #[test]
    fn password_lock_counter_is_monotone_until_a_success(script in script(password_op(), 60)) {
        play(&script)?;
    }

    /// d. A user held on enrollment (enforced, or past the platform date,
    /// without an authenticator) gets only an enrollment-only session, and
    /// no session goes beyond the user's rights, while an administrator
    /// enforces, lifts and logs in as them.
    #[test]
    fn enforced_user_without_two_factor_only_gets_an_enrollment_session(
        script in enforcement_script()
    ) {
        play(&script)?;
    }
}

proptest! {
    #![proptest_config(Config { cases: 128, ..Config::default() })]

    /// b. Snapshot equals replay, on the histories real commands produce.
    #[test]
    fn snapshot_equals_replay_for_command_histories(script in script(any_op(), 60)) {
        let world = play(&script)?;
        snapshot_equals_replay(&world.events)?;
    }

    /// b. Snapshot equals replay, and folding does not panic, for any event stream.
    #[test]
    fn snapshot_equals_replay_for_any_event_stream(
        events in prop::collection::vec(any_event(), 0..50)
    ) {
        snapshot_equals_replay(&events)?;
    }
}

/// The properties above are only as good as the states the generator
/// reaches: over a fixed sample it must accept TOTP codes, refuse replays,
/// lock passwords and refuse sign-ins while locked, back off and suspend
/// factors, and start enrollment-only, second-factor and remembered-device
/// sessions.
#[test]
fn the_generators_reach_the_states_the_properties_are_about() {
    let mut total = Tally::default();
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    for strategy in [
        script(any_op(), 80).boxed(),
        script(password_op(), 60).boxed(),
        guessing_script().boxed(),
        enforcement_script().boxed(),
    ] {
        for _ in 0..64 {
            let script = strategy.new_tree(&mut runner).unwrap().current();
            let w = play(&script).unwrap();
            let rem = w
                .events
                .iter()
                .filter(|e| matches!(e, UserEvent::DeviceRemembered { .. }))
                .count();
            println!(
                "totp {} remembered {} rds {}",
                w.tally.totp_accepted, rem, w.tally.remembered_device_sessions
            );
            total.add(w.tally);
        }
    }
    println!("{total:?}");
    assert!(total.totp_accepted >= 20, "{total:?}");
    assert!(total.replays >= 10, "{total:?}");
    assert!(total.password_locks >= 10, "{total:?}");
    assert!(total.refused_while_locked >= 10, "{total:?}");
    assert!(total.factor_backoffs >= 10, "{total:?}");
    assert!(total.factor_locks >= 10, "{total:?}");
    assert!(total.suspensions >= 5, "{total:?}");
    assert!(total.enrollment_only_sessions >= 20, "{total:?}");
    assert!(total.second_factor_sessions >= 20, "{total:?}");
    assert!(total.remembered_device_sessions >= 5, "{total:?}");
}
