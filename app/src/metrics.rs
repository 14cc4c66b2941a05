//! What an on-call person counts and alerts on: every metric family of the
//! service, named and described here once (docs/operations.md lists them
//! with alert rules). Outcomes are counted from what a use case decided:
//! the events its command committed, or the refusal it answered.

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use twofold_domain::passkey::PasskeyCeremony;
use twofold_domain::{SecondFactorMethod, UserEvent};

use crate::error::AppError;
use crate::sign_in::SignInAnswer;
use crate::Written;

pub const SIGN_INS: &str = "twofold_sign_ins_total";
pub const SECOND_FACTOR_CHECKS: &str = "twofold_second_factor_checks_total";
pub const LOCKOUTS: &str = "twofold_lockouts_total";
pub const EMAILS: &str = "twofold_emails_total";
pub const PROJECTION_LAG: &str = "twofold_projection_lag_events";
pub const BUILD_INFO: &str = "twofold_build_info";
pub const DB_CONNECTIONS: &str = "twofold_db_connections";

/// How a password step ended.
const SIGN_IN_OUTCOMES: [&str; 8] = [
    "authenticated",
    "second_factor_required",
    "enrollment_required",
    "invalid_credentials",
    "locked",
    "rate_limited",
    "busy",
    "error",
];
const CHECK_OUTCOMES: [&str; 3] = ["accepted", "rejected", "replayed"];
/// `password`: the account after wrong passwords; `second_factor`: a
/// method backs off after wrong codes; `challenge`: one sign-in after its
/// wrong codes; `second_factor_suspended`: a method until an administrator
/// acts.
const LOCKOUT_KINDS: [&str; 4] = [
    "password",
    "second_factor",
    "challenge",
    "second_factor_suspended",
];
const EMAIL_OUTCOMES: [&str; 2] = ["sent", "failed"];

/// Describes every family and sets each known series to zero, so that a
/// rate or an alert has a series from the first scrape on. Called once the
/// recorder is installed.
pub fn describe() {
    describe_counter!(
        SIGN_INS,
        "Password steps of sign-in, by outcome (authenticated, second_factor_required, enrollment_required, invalid_credentials, locked, rate_limited, busy, error)."
    );
    describe_counter!(
        SECOND_FACTOR_CHECKS,
        "Second-factor codes checked, by method (totp, email, recovery_code) and outcome (accepted, rejected, replayed)."
    );
    describe_counter!(
        LOCKOUTS,
        "Locks that began, by kind (password: the account; second_factor: a method backs off; challenge: one sign-in; second_factor_suspended: a method until an administrator acts)."
    );
    describe_counter!(
        EMAILS,
        "Emails handed to the mail transport, by outcome (sent, failed)."
    );
    describe_gauge!(
        PROJECTION_LAG,
        "Events stored but not yet applied to this process's read models, at the last scrape."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");
    describe_gauge!(
        DB_CONNECTIONS,
        "Connections of this process to the store, by state (in_use, idle), at the last scrape."
    );
    process().describe();
    describe_counter!(
        "twofold_http_requests_total",
        "HTTP requests answered, by route, method and status."
    );
    describe_histogram!(
        "twofold_http_request_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by route."
    );
    describe_histogram!(
        "twofold_command_seconds",
        Unit::Seconds,
        "Time to decide and store a command on the user aggregate, by command."
    );
    describe_counter!(
        "twofold_store_errors_total",
        "Commands that failed in the event store, by command."
    );
    describe_counter!(
        "twofold_password_checks_refused_total",
        "Password checks refused for want of capacity (the argon2 queue), by reason."
    );
    for outcome in SIGN_IN_OUTCOMES {
        counter!(SIGN_INS, "outcome" => outcome).absolute(0);
    }
    for method in SecondFactorMethod::ALL {
        for outcome in CHECK_OUTCOMES {
            counter!(SECOND_FACTOR_CHECKS, "method" => method.as_str(), "outcome" => outcome)
                .absolute(0);
        }
    }
    for kind in LOCKOUT_KINDS {
        counter!(LOCKOUTS, "kind" => kind).absolute(0);
    }
    for outcome in EMAIL_OUTCOMES {
        counter!(EMAILS, "outcome" => outcome).absolute(0);
    }
    gauge!(PROJECTION_LAG).set(0.0);
    for state in ["in_use", "idle"] {
        gauge!(DB_CONNECTIONS, "state" => state).set(0.0);
    }
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// The password step's outcome.
pub(crate) fn sign_in(answer: &Result<Written<SignInAnswer>, AppError>) {
    let outcome = match answer {
        Ok(answer) => match answer.value {
            SignInAnswer::Authenticated { .. } => "authenticated",
            SignInAnswer::TwoFactorRequired { .. } => "second_factor_required",
            SignInAnswer::EnrollmentRequired { .. } => "enrollment_required",
        },
        Err(error) => refused_sign_in(error),
    };
    counter!(SIGN_INS, "outcome" => outcome).increment(1);
}

fn refused_sign_in(error: &AppError) -> &'static str {
    match error {
        AppError::InvalidCredentials => "invalid_credentials",
        AppError::AccountLocked { .. } => "locked",
        AppError::RateLimited { .. } => "rate_limited",
        AppError::Unavailable { .. } => "busy",
        _ => "error",
    }
}

/// A sign-in without a password's outcome (it stands for both steps).
pub(crate) fn passkey_sign_in<T>(answer: &Result<T, AppError>) {
    let outcome = match answer {
        Ok(_) => "authenticated",
        Err(error) => refused_sign_in(error),
    };
    counter!(SIGN_INS, "outcome" => outcome).increment(1);
}

/// Second-factor checks and locks, as a command's events record them.
pub(crate) fn committed(events: &[UserEvent]) {
    let check = |method: &SecondFactorMethod, outcome: &'static str| {
        counter!(SECOND_FACTOR_CHECKS, "method" => method.as_str(), "outcome" => outcome)
            .increment(1);
    };
    let lockout = |kind: &'static str| counter!(LOCKOUTS, "kind" => kind).increment(1);
    // A replayed code is also rejected: counted once, as replayed.
    let replayed = events
        .iter()
        .any(|event| matches!(event, UserEvent::TotpCodeReplayed { .. }));
    let wrong = if replayed { "replayed" } else { "rejected" };
    for event in events {
        match event {
            UserEvent::SecondFactorAccepted { method, .. } => check(method, "accepted"),
            UserEvent::SecondFactorRejected {
                method,
                attempts_remaining,
                locked_until,
                ..
            } => {
                check(method, wrong);
                if *attempts_remaining == 0 {
                    lockout("challenge");
                }
                if locked_until.is_some() {
                    lockout("second_factor");
                }
            }
            UserEvent::ReauthenticationCodeRejected {
                method,
                locked_until,
                ..
            } => {
                check(method, wrong);
                if locked_until.is_some() {
                    lockout("second_factor");
                }
            }
            UserEvent::SecondFactorSuspended { .. } => lockout("second_factor_suspended"),
            // A sign-in without a password: the passkey's check (the second
            // step's is counted by SecondFactorAccepted/Rejected above).
            UserEvent::PasskeyUsed {
                ceremony: PasskeyCeremony::SignIn,
                ..
            } => check(&SecondFactorMethod::Passkey, "accepted"),
            UserEvent::PasskeyRejected {
                ceremony: PasskeyCeremony::SignIn,
                locked_until,
                ..
            } => {
                check(&SecondFactorMethod::Passkey, "rejected");
                if locked_until.is_some() {
                    lockout("password");
                }
            }
            UserEvent::PasswordRejected {
                locked_until: Some(_),
                ..
            } => lockout("password"),
            _ => {}
        }
    }
}

/// An email handed to the transport, delivered or not.
pub(crate) fn email(sent: bool) {
    counter!(EMAILS, "outcome" => if sent { "sent" } else { "failed" }).increment(1);
}

/// How far this process's read models are behind the store.
pub(crate) fn projection_lag(events: i64) {
    gauge!(PROJECTION_LAG).set(events.max(0) as f64);
}

/// The store's connections: `open` of them, `idle` unused.
pub(crate) fn connections(open: u32, idle: usize) {
    let idle = idle.min(open as usize);
    gauge!(DB_CONNECTIONS, "state" => "in_use").set((open as usize - idle) as f64);
    gauge!(DB_CONNECTIONS, "state" => "idle").set(idle as f64);
}

/// The process's own figures (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_open_fds`, ...), read at
/// each scrape.
pub(crate) fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}
