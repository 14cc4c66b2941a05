//! Two-factor sign-in as the help article describes it: enrolling from the QR
//! code, signing in with password and code, remembered devices (23 h),
//! recovery codes, disabling, lockouts, and the secret staying sealed.

use chrono::{DateTime, Duration, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use twofold_api::Clock;

use crate::helpers::{oathtool_code, spawn_app, Answer, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    user_enrolls_from_the_qr_code_and_signs_in_with_password_and_code,
    code_accepted_once_is_refused_on_another_challenge,
    code_used_to_confirm_enrollment_cannot_sign_in,
    five_wrong_codes_lock_the_challenge,
    challenge_expires_after_five_minutes,
    unknown_challenge_is_not_found,
    remembered_device_skips_the_code_for_that_user_only,
    unticked_remember_device_gives_no_device_token,
    remember_device_defaults_to_true,
    recovery_code_signs_in_once,
    disabling_two_factor_forgets_devices_and_asks_only_for_password,
    second_factor_failures_back_off_across_challenges,
    totp_secret_never_appears_in_plain_text_in_the_store,
);

const PASSWORD: &str = "correct-horse-battery";
const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) twofold-e2e";

// ---------------------------------------------------------------------------
// Helpers for this file.

/// Creates a user and enables TOTP for them; returns (id, secret, recovery codes).
async fn user_with_totp(app: &TestApp, username: &str) -> (String, String, Vec<String>) {
    let id = app.create_user(username, PASSWORD, None, "user").await;
    let token = app.token(username, PASSWORD).await;
    let (secret, recovery) = app.enroll_totp(&token).await;
    (id, secret, recovery)
}

/// Sends a request built by hand (extra headers) and reads the answer.
async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        body,
        headers,
    }
}

/// `POST /login` with a remembered device token.
async fn login_with_device(app: &TestApp, username: &str, device_token: &str) -> Answer {
    app.post(
        "/api/v1/login",
        None,
        json!({ "username": username, "password": PASSWORD, "device_token": device_token }),
    )
    .await
}

/// Signs in with the password and expects a challenge; returns its id.
async fn challenge(app: &TestApp, username: &str) -> String {
    let login = app.login(username, PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    assert_eq!(login.body["status"], "two_factor_required", "{login:?}");
    login.body["challenge_id"]
        .as_str()
        .expect("a challenge id")
        .to_string()
}

fn verify_path(challenge_id: &str) -> String {
    format!("/api/v1/login/challenges/{challenge_id}/verify")
}

/// `POST .../verify` with any body.
async fn verify(app: &TestApp, challenge_id: &str, body: Value) -> Answer {
    app.post(&verify_path(challenge_id), None, body).await
}

/// `POST .../verify` with a method and a code (remember_device left to its default).
async fn verify_code(app: &TestApp, challenge_id: &str, method: &str, code: &str) -> Answer {
    verify(app, challenge_id, json!({ "method": method, "code": code })).await
}

/// A well-formed six-digit code that matches none of the steps the service
/// accepts now (the current one and its neighbours).
fn wrong_code(app: &TestApp, secret: &str) -> String {
    let now = app.clock.now();
    let accepted: Vec<String> = [-30, 0, 30]
        .iter()
        .map(|offset| oathtool_code(secret, now + Duration::seconds(*offset)))
        .collect();
    (0..10)
        .map(|digit| digit.to_string().repeat(6))
        .find(|candidate| !accepted.contains(candidate))
        .expect("some repeated digit is not a valid code")
}

fn time(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().unwrap_or_else(|| panic!("a time: {value}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|error| panic!("RFC 3339 time {text:?}: {error}"))
        .with_timezone(&Utc)
}

fn assert_close(actual: DateTime<Utc>, expected: DateTime<Utc>, what: &str) {
    let off = (actual - expected).num_milliseconds().abs();
    assert!(
        off <= 1_000,
        "{what}: {actual} is not {expected} (off by {off} ms)"
    );
}

fn assert_invalid_code(answer: &Answer, attempts_remaining: u64) {
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    assert_eq!(answer.error(), "invalid_code", "{answer:?}");
    assert_eq!(
        answer.body["attempts_remaining"], attempts_remaining,
        "{answer:?}"
    );
    assert!(answer.body["message"].is_string(), "{answer:?}");
}

fn assert_error(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.error(), code, "{answer:?}");
    assert!(answer.body["message"].is_string(), "{answer:?}");
}

fn assert_authenticated(answer: &Answer) -> String {
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body["status"], "authenticated", "{answer:?}");
    assert!(answer.body["expires_at"].is_string(), "{answer:?}");
    answer.body["session_token"]
        .as_str()
        .unwrap_or_else(|| panic!("a session token: {answer:?}"))
        .to_string()
}

fn event_types(history: &[(String, Value)]) -> Vec<&str> {
    history.iter().map(|(kind, _)| kind.as_str()).collect()
}

fn devices(answer: &Answer) -> Vec<Value> {
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.body["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("a device list: {answer:?}"))
        .clone()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Base64 with the given alphabet's last two characters, without padding.
fn base64(bytes: &[u8], extra: [u8; 2]) -> String {
    let mut alphabet: Vec<u8> = (b'A'..=b'Z')
        .chain(b'a'..=b'z')
        .chain(b'0'..=b'9')
        .collect();
    alphabet.extend(extra);
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            let index = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap();
            out.push(char::from(alphabet[index]));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every way the secret could have been written down as text.
fn text_forms(secret: &str, raw: &[u8]) -> Vec<String> {
    vec![
        secret.to_string(),
        secret.to_ascii_lowercase(),
        hex(raw),
        hex(raw).to_ascii_uppercase(),
        base64(raw, [b'+', b'/']),
        base64(raw, [b'-', b'_']),
    ]
}

// ---------------------------------------------------------------------------
// Tests.

async fn user_enrolls_from_the_qr_code_and_signs_in_with_password_and_code(backend: Backend) {
    let app = spawn_app(backend).await;
    // No email address: the app and recovery codes are the only factors
    // (email codes, offered only to a unique address, are tested in email.rs).
    app.create_user("alice", PASSWORD, None, "user").await;
    let token = app.token("alice", PASSWORD).await;

    // "Select Enable Two-Factor Authentication": a secret and its QR code.
    let started = app
        .post("/api/v1/me/two-factor/totp", Some(&token), json!({}))
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    let secret = started.body["secret"].as_str().unwrap().to_string();
    assert!(
        secret.len() >= 26
            && secret
                .chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)),
        "base32 secret: {secret}"
    );
    let raw = totp_rs::Secret::try_from_base32(&secret).unwrap();
    assert!(raw.as_bytes().len() >= 16, "at least 128 bits");
    let uri = started.body["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with(&format!(
            "otpauth://totp/twofold:alice?secret={secret}&issuer=twofold"
        )),
        "{uri}"
    );
    // An authenticator app's parser reads the same account and secret.
    let parsed = totp_rs::Totp::from_url(uri).unwrap();
    assert_eq!(parsed.issuer(), Some("twofold"));
    assert_eq!(parsed.account_name(), "alice");
    assert_eq!(parsed.secret().as_bytes(), raw.as_bytes());
    let qr = started.body["qr_svg"].as_str().unwrap();
    assert!(qr.starts_with("<?xml") || qr.starts_with("<svg"), "{qr}");
    assert!(qr.contains("<svg"), "{qr}");

    let me = app.get("/api/v1/me", &token).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["two_factor"]["status"], "pending", "{me:?}");

    // "Enter the one-time passcode shown on your application; Confirm and Enable".
    let confirmed = app
        .post(
            "/api/v1/me/two-factor/totp/confirm",
            Some(&token),
            json!({ "code": app.code(&secret) }),
        )
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{confirmed:?}");
    assert_eq!(confirmed.body["status"], "enabled");
    let codes: Vec<&str> = confirmed.body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(codes.len(), 10, "{codes:?}");
    let distinct: std::collections::BTreeSet<&str> = codes.iter().copied().collect();
    assert_eq!(distinct.len(), 10, "{codes:?}");
    assert!(codes.iter().all(|c| !c.is_empty()));

    let me = app.get("/api/v1/me", &token).await;
    let two_factor = &me.body["two_factor"];
    assert_eq!(two_factor["status"], "enabled", "{me:?}");
    let methods = two_factor["methods"].as_array().unwrap();
    assert!(methods.contains(&json!("totp")), "{me:?}");
    assert!(methods.contains(&json!("recovery_code")), "{me:?}");
    assert_close(
        time(&two_factor["enabled_at"]),
        app.clock.now(),
        "enabled_at",
    );

    // "At your next login, you will be prompted to enter a OTP."
    let login = app.login("alice", PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    assert_eq!(login.body["status"], "two_factor_required");
    assert!(login.body.get("session_token").is_none(), "{login:?}");
    let challenge_id = login.body["challenge_id"].as_str().unwrap();
    uuid::Uuid::parse_str(challenge_id).unwrap();
    // Without an address of her own, email is not offered.
    assert_eq!(login.body["methods"], json!(["totp", "recovery_code"]));
    assert_close(
        time(&login.body["expires_at"]),
        app.clock.now() + Duration::minutes(5),
        "challenge expires_at",
    );

    app.next_step();
    let verified = verify(
        &app,
        challenge_id,
        json!({ "method": "totp", "code": app.code(&secret), "remember_device": true }),
    )
    .await;
    let session = assert_authenticated(&verified);
    assert!(time(&verified.body["expires_at"]) > app.clock.now());
    let device_token = verified.body["device_token"].as_str().unwrap();
    assert!(device_token.len() >= 22, "at least 128 bits");
    assert_ne!(device_token, session);
    assert_close(
        time(&verified.body["device_expires_at"]),
        app.clock.now() + Duration::hours(23),
        "device_expires_at",
    );

    let me = app.get("/api/v1/me", &session).await;
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
    assert_eq!(me.body["username"], "alice");
    assert_eq!(me.body["two_factor"]["status"], "enabled");
    app.stop().await;
}

async fn code_accepted_once_is_refused_on_another_challenge(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, secret, _) = user_with_totp(&app, "bob").await;
    app.next_step();
    let code = app.code(&secret);

    let first = challenge(&app, "bob").await;
    assert_authenticated(&verify_code(&app, &first, "totp", &code).await);

    // The same code, still within its 30 seconds, on a second sign-in.
    let second = challenge(&app, "bob").await;
    let replayed = verify_code(&app, &second, "totp", &code).await;
    assert_invalid_code(&replayed, 4);
    assert!(replayed.body.get("session_token").is_none());
    let history = app.history(&id).await;
    assert!(
        event_types(&history).contains(&"TotpCodeReplayed"),
        "{history:?}"
    );

    // The next code from the app still works on that challenge.
    app.next_step();
    assert_authenticated(&verify_code(&app, &second, "totp", &app.code(&secret)).await);
    app.stop().await;
}

async fn code_used_to_confirm_enrollment_cannot_sign_in(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, secret, _) = user_with_totp(&app, "carol").await;
    // Same clock step: the code shown is the one that confirmed the enrollment.
    let confirm_code = app.code(&secret);
    let challenge_id = challenge(&app, "carol").await;
    assert_invalid_code(
        &verify_code(&app, &challenge_id, "totp", &confirm_code).await,
        4,
    );
    let history = app.history(&id).await;
    let kinds = event_types(&history);
    assert!(kinds.contains(&"TotpCodeReplayed"), "{kinds:?}");
    assert!(!kinds.contains(&"SecondFactorAccepted"), "{kinds:?}");
    app.stop().await;
}

async fn five_wrong_codes_lock_the_challenge(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, secret, _) = user_with_totp(&app, "dave").await;
    app.next_step();
    let challenge_id = challenge(&app, "dave").await;
    let wrong = wrong_code(&app, &secret);
    for remaining in [4, 3, 2, 1, 0] {
        assert_invalid_code(
            &verify_code(&app, &challenge_id, "totp", &wrong).await,
            remaining,
        );
    }
    // Locked: even the right code is refused, and so is another guess.
    let right = verify_code(&app, &challenge_id, "totp", &app.code(&secret)).await;
    assert_error(&right, StatusCode::LOCKED, "challenge_locked");
    assert!(right.body.get("session_token").is_none());
    let again = verify_code(&app, &challenge_id, "totp", &wrong).await;
    assert_error(&again, StatusCode::LOCKED, "challenge_locked");

    // Signing in again gives a fresh challenge with five attempts.
    let fresh = challenge(&app, "dave").await;
    assert_authenticated(&verify_code(&app, &fresh, "totp", &app.code(&secret)).await);
    app.stop().await;
}

async fn challenge_expires_after_five_minutes(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, secret, _) = user_with_totp(&app, "erin").await;

    let late = challenge(&app, "erin").await;
    app.clock
        .advance(Duration::minutes(5) + Duration::seconds(1));
    let expired = verify_code(&app, &late, "totp", &app.code(&secret)).await;
    assert_error(&expired, StatusCode::GONE, "challenge_expired");
    assert!(expired.body.get("session_token").is_none());

    // Just inside the five minutes, the code is still taken.
    let in_time = challenge(&app, "erin").await;
    app.clock
        .advance(Duration::minutes(5) - Duration::seconds(1));
    assert_authenticated(&verify_code(&app, &in_time, "totp", &app.code(&secret)).await);
    app.stop().await;
}

async fn unknown_challenge_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, secret, _) = user_with_totp(&app, "frank").await;
    app.next_step();
    let code = app.code(&secret);

    let unknown = verify_code(&app, &uuid::Uuid::new_v4().to_string(), "totp", &code).await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");
    let not_an_id = verify_code(&app, "not-a-challenge", "totp", &code).await;
    assert_eq!(not_an_id.error(), "invalid_request", "{not_an_id:?}");
    assert!(not_an_id.status.is_client_error(), "{not_an_id:?}");

    // Malformed bodies on a real challenge: a clear error and nothing stored.
    let challenge_id = challenge(&app, "frank").await;
    let before = app.event_count().await;
    for body in [
        json!({ "method": "sms", "code": code }),
        json!({ "method": "TOTP", "code": code }),
        json!({ "method": "totp" }),
        json!({ "code": code }),
        json!({ "method": "totp", "code": 123_456 }),
        json!([]),
    ] {
        let answer = verify(&app, &challenge_id, body.clone()).await;
        assert!(
            answer.status == StatusCode::BAD_REQUEST
                || answer.status == StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {answer:?}"
        );
        assert_eq!(answer.error(), "invalid_request", "{body}: {answer:?}");
        assert!(answer.body["message"].is_string(), "{body}: {answer:?}");
    }
    let not_json = send(
        app.client
            .post(format!("{}{}", app.base, verify_path(&challenge_id)))
            .header("content-type", "application/json")
            .body("{\"method\": \"totp\", \"code\": "),
    )
    .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST, "{not_json:?}");
    assert_eq!(not_json.error(), "invalid_request");
    assert_eq!(app.event_count().await, before, "bad input stores nothing");

    // None of that used up an attempt.
    assert_invalid_code(
        &verify_code(&app, &challenge_id, "totp", &wrong_code(&app, &secret)).await,
        4,
    );
    assert_authenticated(&verify_code(&app, &challenge_id, "totp", &code).await);
    // A challenge is settled once: it is gone after the sign-in.
    let settled = verify_code(&app, &challenge_id, "totp", &code).await;
    assert_error(&settled, StatusCode::NOT_FOUND, "not_found");
    app.stop().await;
}

async fn remembered_device_skips_the_code_for_that_user_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, alice_secret, _) = user_with_totp(&app, "alice").await;
    let (_, bob_secret, _) = user_with_totp(&app, "bob").await;
    app.next_step();

    // Alice ticks "Remember this device for 23h" in her browser.
    let challenge_id = challenge(&app, "alice").await;
    let remembered_at = app.clock.now();
    let verified = send(
        app.client
            .post(format!("{}{}", app.base, verify_path(&challenge_id)))
            .header("user-agent", BROWSER)
            .json(&json!({
                "method": "totp",
                "code": app.code(&alice_secret),
                "remember_device": true,
            })),
    )
    .await;
    assert_authenticated(&verified);
    let device = verified.body["device_token"].as_str().unwrap().to_string();

    // A minute later she signs in again on that device: no code asked.
    app.clock.advance(Duration::minutes(1));
    let again = login_with_device(&app, "alice", &device).await;
    let alice_session = assert_authenticated(&again);
    assert!(again.body.get("challenge_id").is_none(), "{again:?}");
    assert!(again.body.get("device_token").is_none(), "{again:?}");

    // The same browser does not spare Bob his code.
    let bob = login_with_device(&app, "bob", &device).await;
    assert_eq!(bob.status, StatusCode::OK, "{bob:?}");
    assert_eq!(bob.body["status"], "two_factor_required", "{bob:?}");
    assert!(bob.body.get("session_token").is_none(), "{bob:?}");
    let bob_session = assert_authenticated(
        &verify(
            &app,
            bob.body["challenge_id"].as_str().unwrap(),
            json!({ "method": "totp", "code": app.code(&bob_secret), "remember_device": false }),
        )
        .await,
    );
    assert!(devices(&app.get("/api/v1/me/remembered-devices", &bob_session).await).is_empty());

    // Alice sees her device.
    let listed = devices(
        &app.get("/api/v1/me/remembered-devices", &alice_session)
            .await,
    );
    assert_eq!(listed.len(), 1, "{listed:?}");
    let entry = &listed[0];
    uuid::Uuid::parse_str(entry["id"].as_str().unwrap()).unwrap();
    assert_close(time(&entry["created_at"]), remembered_at, "created_at");
    assert_close(
        time(&entry["expires_at"]),
        remembered_at + Duration::hours(23),
        "expires_at",
    );
    assert_close(
        time(&entry["last_used_at"]),
        remembered_at + Duration::minutes(1),
        "last_used_at",
    );
    assert_eq!(entry["user_agent"], BROWSER);

    // Up to 23 hours the device helps; one second past, it no longer does.
    app.clock
        .advance(Duration::hours(23) - Duration::minutes(1) - Duration::seconds(1));
    assert_authenticated(&login_with_device(&app, "alice", &device).await);
    app.clock.advance(Duration::seconds(2));
    let expired = login_with_device(&app, "alice", &device).await;
    assert_eq!(expired.status, StatusCode::OK, "{expired:?}");
    assert_eq!(expired.body["status"], "two_factor_required", "{expired:?}");

    // A new remembered device, then "forget my devices".
    let verified = app
        .login_with_code("alice", PASSWORD, &alice_secret, true)
        .await;
    let session = assert_authenticated(&verified);
    let device = verified.body["device_token"].as_str().unwrap().to_string();
    let listed = devices(&app.get("/api/v1/me/remembered-devices", &session).await);
    assert_eq!(
        listed.len(),
        1,
        "the expired device is no longer listed: {listed:?}"
    );
    assert!(listed[0]["last_used_at"].is_null(), "{listed:?}");
    assert!(listed[0]["user_agent"].is_null(), "{listed:?}");
    assert_authenticated(&login_with_device(&app, "alice", &device).await);

    let forgotten = app
        .delete("/api/v1/me/remembered-devices", &session, None)
        .await;
    assert_eq!(forgotten.status, StatusCode::NO_CONTENT, "{forgotten:?}");
    let refused = login_with_device(&app, "alice", &device).await;
    assert_eq!(refused.status, StatusCode::OK, "{refused:?}");
    assert_eq!(refused.body["status"], "two_factor_required", "{refused:?}");
    assert!(devices(&app.get("/api/v1/me/remembered-devices", &session).await).is_empty());
    app.stop().await;
}

async fn unticked_remember_device_gives_no_device_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, secret, _) = user_with_totp(&app, "gina").await;
    app.next_step();
    let verified = app.login_with_code("gina", PASSWORD, &secret, false).await;
    let session = assert_authenticated(&verified);
    assert!(verified.body.get("device_token").is_none(), "{verified:?}");
    assert!(
        verified.body.get("device_expires_at").is_none(),
        "{verified:?}"
    );
    assert!(devices(&app.get("/api/v1/me/remembered-devices", &session).await).is_empty());
    let history = app.history(&id).await;
    assert!(
        !event_types(&history).contains(&"DeviceRemembered"),
        "{history:?}"
    );
    // The next sign-in asks for the code again.
    assert_eq!(
        app.login("gina", PASSWORD).await.body["status"],
        "two_factor_required"
    );
    app.stop().await;
}

async fn remember_device_defaults_to_true(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, secret, _) = user_with_totp(&app, "hank").await;
    app.next_step();
    let challenge_id = challenge(&app, "hank").await;
    // The box is ticked unless the user unticks it: no field means remember.
    let verified = verify_code(&app, &challenge_id, "totp", &app.code(&secret)).await;
    let session = assert_authenticated(&verified);
    let device = verified.body["device_token"].as_str().unwrap();
    assert_close(
        time(&verified.body["device_expires_at"]),
        app.clock.now() + Duration::hours(23),
        "device_expires_at",
    );
    assert_eq!(
        devices(&app.get("/api/v1/me/remembered-devices", &session).await).len(),
        1
    );
    assert_authenticated(&login_with_device(&app, "hank", device).await);
    app.stop().await;
}

async fn recovery_code_signs_in_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, _, recovery) = user_with_totp(&app, "ivy").await;
    assert_eq!(recovery.len(), 10);

    let first = challenge(&app, "ivy").await;
    let session =
        assert_authenticated(&verify_code(&app, &first, "recovery_code", &recovery[0]).await);

    // Spent: refused on the next sign-in like any wrong code.
    let second = challenge(&app, "ivy").await;
    assert_invalid_code(
        &verify_code(&app, &second, "recovery_code", &recovery[0]).await,
        4,
    );
    // Typed in upper case, a fresh code works.
    assert_authenticated(
        &verify_code(
            &app,
            &second,
            "recovery_code",
            &recovery[1].to_ascii_uppercase(),
        )
        .await,
    );
    // Typed without its dashes, another fresh code works.
    let third = challenge(&app, "ivy").await;
    let undashed: String = recovery[2].chars().filter(|c| *c != '-').collect();
    assert_authenticated(&verify_code(&app, &third, "recovery_code", &undashed).await);

    // Seven remain, so recovery codes are still offered.
    let me = app.get("/api/v1/me", &session).await;
    assert!(me.body["two_factor"]["methods"]
        .as_array()
        .unwrap()
        .contains(&json!("recovery_code")));
    let login = app.login("ivy", PASSWORD).await;
    assert_eq!(login.body["methods"], json!(["totp", "recovery_code"]));
    app.stop().await;
}

async fn disabling_two_factor_forgets_devices_and_asks_only_for_password(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, secret, recovery) = user_with_totp(&app, "jane").await;
    app.next_step();
    let verified = app.login_with_code("jane", PASSWORD, &secret, true).await;
    let session = assert_authenticated(&verified);
    let device = verified.body["device_token"].as_str().unwrap().to_string();
    assert_eq!(
        devices(&app.get("/api/v1/me/remembered-devices", &session).await).len(),
        1
    );

    // "Select Disable Two-Factor Authentication." (confirmed with the
    // password and a fresh code).
    let disabled = app
        .turn_two_factor_off(&session, PASSWORD, Some(&secret))
        .await;
    assert_eq!(disabled.status, StatusCode::NO_CONTENT, "{disabled:?}");
    let me = app.get("/api/v1/me", &session).await;
    assert_eq!(me.body["two_factor"]["status"], "disabled", "{me:?}");
    assert_eq!(me.body["two_factor"]["methods"], json!([]), "{me:?}");
    assert!(me.body["two_factor"].get("enabled_at").is_none(), "{me:?}");
    assert!(app
        .history(&id)
        .await
        .iter()
        .any(|(kind, _)| kind == "TwoFactorDisabled"));

    // Password only from now on.
    let login = app.login("jane", PASSWORD).await;
    let fresh = assert_authenticated(&login);
    assert!(login.body.get("challenge_id").is_none(), "{login:?}");
    assert!(devices(&app.get("/api/v1/me/remembered-devices", &fresh).await).is_empty());
    let with_device = login_with_device(&app, "jane", &device).await;
    assert_authenticated(&with_device);
    assert!(devices(&app.get("/api/v1/me/remembered-devices", &fresh).await).is_empty());

    // Enabling again starts from scratch: the old device and recovery codes are gone.
    app.next_step();
    let (new_secret, _) = app.enroll_totp(&fresh).await;
    assert_ne!(new_secret, secret);
    let after = login_with_device(&app, "jane", &device).await;
    assert_eq!(after.body["status"], "two_factor_required", "{after:?}");
    let challenge_id = after.body["challenge_id"].as_str().unwrap();
    assert_invalid_code(
        &verify_code(&app, challenge_id, "recovery_code", &recovery[0]).await,
        4,
    );
    app.stop().await;
}

async fn second_factor_failures_back_off_across_challenges(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, secret, _) = user_with_totp(&app, "kate").await;
    app.next_step();
    let wrong = wrong_code(&app, &secret);

    // Five wrong codes lock the first challenge...
    let first = challenge(&app, "kate").await;
    for remaining in [4, 3, 2, 1, 0] {
        assert_invalid_code(&verify_code(&app, &first, "totp", &wrong).await, remaining);
    }
    assert_error(
        &verify_code(&app, &first, "totp", &app.code(&secret)).await,
        StatusCode::LOCKED,
        "challenge_locked",
    );
    // ...signing in again gives five more tries; four more wrong codes
    // (nine in a row) change nothing yet...
    let second = challenge(&app, "kate").await;
    for remaining in [4, 3, 2, 1] {
        assert_invalid_code(&verify_code(&app, &second, "totp", &wrong).await, remaining);
    }
    // ...and the tenth wrong code in a row, on a fresh challenge, backs the
    // factor off: the count runs across challenges, not per challenge.
    let third = challenge(&app, "kate").await;
    assert_invalid_code(&verify_code(&app, &third, "totp", &wrong).await, 4);

    // The next verify, even with the right code, waits and says for how long.
    let locked = verify_code(&app, &third, "totp", &app.code(&secret)).await;
    assert_error(&locked, StatusCode::LOCKED, "account_locked");
    assert!(locked.body.get("session_token").is_none(), "{locked:?}");
    let retry_after: i64 = locked
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("Retry-After: {locked:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=60).contains(&retry_after),
        "the first back-off lasts a minute: Retry-After {retry_after}"
    );

    // A sign-in meanwhile offers only what is not backing off.
    let login = app.login("kate", PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    assert_eq!(login.body["status"], "two_factor_required", "{login:?}");
    assert_eq!(login.body["methods"], json!(["recovery_code"]), "{login:?}");

    // Once the minute is over, the app's code works again.
    app.clock.advance(Duration::seconds(61));
    let after = app.login("kate", PASSWORD).await;
    assert_eq!(
        after.body["methods"],
        json!(["totp", "recovery_code"]),
        "{after:?}"
    );
    let challenge_id = after.body["challenge_id"].as_str().unwrap();
    assert_authenticated(&verify_code(&app, challenge_id, "totp", &app.code(&secret)).await);
    app.stop().await;
}

async fn totp_secret_never_appears_in_plain_text_in_the_store(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, secret, _) = user_with_totp(&app, "liam").await;
    // Some sign-ins, so sessions, challenges and devices are stored too.
    app.next_step();
    assert_authenticated(&app.login_with_code("liam", PASSWORD, &secret, true).await);
    app.next_step();
    let challenge_id = challenge(&app, "liam").await;
    assert_invalid_code(
        &verify_code(&app, &challenge_id, "totp", &wrong_code(&app, &secret)).await,
        4,
    );

    let raw = totp_rs::Secret::try_from_base32(&secret)
        .unwrap()
        .as_bytes()
        .to_vec();
    assert!(raw.len() >= 16);
    let forms = text_forms(&secret, &raw);

    // The scan does find what is stored in the clear (the username)...
    let control = store_hits(&app, &["liam".to_string()], b"liam").await;
    assert!(
        control.iter().any(|hit| hit.starts_with("events.payload")),
        "{control:?}"
    );
    // ...and finds the secret nowhere, in no encoding.
    let hits = store_hits(&app, &forms, &raw).await;
    assert!(
        hits.is_empty(),
        "the TOTP secret is stored readable: {hits:?}"
    );
    app.stop().await;
}

/// Where the store holds any of `forms` (as text) or `raw` (as bytes).
async fn store_hits(app: &TestApp, forms: &[String], raw: &[u8]) -> Vec<String> {
    match app.backend {
        Backend::Sqlite => sqlite_hits(app, forms, raw).await,
        Backend::Postgres => postgres_hits(app, forms, raw).await,
    }
}

/// Every column of every SQLite table, and the bytes of every file the
/// service wrote next to the database (except the master key).
async fn sqlite_hits(app: &TestApp, forms: &[String], raw: &[u8]) -> Vec<String> {
    use sqlx::{Connection, Row};
    let mut hits = Vec::new();
    let mut conn = sqlx::SqliteConnection::connect(&app.database_url)
        .await
        .unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(tables.contains(&"events".to_string()), "{tables:?}");
    assert!(tables.contains(&"totp_secrets".to_string()), "{tables:?}");
    let mut checked_events = false;
    for table in &tables {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
            .bind(table)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        for column in &columns {
            let sql = format!("SELECT CAST(\"{column}\" AS BLOB) FROM \"{table}\"");
            let rows = sqlx::query(&sql).fetch_all(&mut conn).await.unwrap();
            for row in rows {
                let value: Option<Vec<u8>> = row.get(0);
                let Some(value) = value else { continue };
                checked_events |= table == "events" && column == "payload";
                if contains(&value, raw)
                    || forms.iter().any(|form| contains(&value, form.as_bytes()))
                {
                    hits.push(format!("{table}.{column}"));
                }
            }
        }
    }
    assert!(checked_events, "the events were read");
    let sealed: Vec<Vec<u8>> = sqlx::query_scalar("SELECT ciphertext FROM totp_secrets")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(sealed.len(), 1);
    assert_ne!(sealed[0], raw, "ciphertext differs from the secret");
    conn.close().await.unwrap();

    let mut read = Vec::new();
    for entry in std::fs::read_dir(app.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() || path.file_name() == Some(std::ffi::OsStr::new("master.key")) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        read.push(entry_name(&path));
        if contains(&bytes, raw) || forms.iter().any(|form| contains(&bytes, form.as_bytes())) {
            hits.push(path.display().to_string());
        }
    }
    assert!(
        read.iter().any(|name| name == "twofold.db"),
        "the database file was read: {read:?}"
    );
    hits
}

fn entry_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every column of every PostgreSQL table in the test database, as text and
/// (for binary columns) as bytes.
async fn postgres_hits(app: &TestApp, forms: &[String], raw: &[u8]) -> Vec<String> {
    use sqlx::Connection;
    let mut hits = Vec::new();
    let mut conn = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text
           FROM information_schema.columns
          WHERE table_schema = 'public'
          ORDER BY table_name, ordinal_position",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for table in ["events", "totp_secrets", "aggregate_snapshots"] {
        assert!(
            columns.iter().any(|(t, _, _)| t == table),
            "{table} exists: {columns:?}"
        );
    }
    for (table, column, data_type) in &columns {
        for form in forms {
            let sql = format!(
                "SELECT count(*) FROM \"{table}\" WHERE strpos(CAST(\"{column}\" AS text), $1) > 0"
            );
            let count: i64 = sqlx::query_scalar(&sql)
                .bind(form)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            if count > 0 {
                hits.push(format!("{table}.{column} ({count} rows hold {form})"));
            }
        }
        if data_type == "bytea" {
            let sql =
                format!("SELECT count(*) FROM \"{table}\" WHERE position($1 in \"{column}\") > 0");
            let count: i64 = sqlx::query_scalar(&sql)
                .bind(raw)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            if count > 0 {
                hits.push(format!(
                    "{table}.{column} ({count} rows hold the raw bytes)"
                ));
            }
        }
    }
    let sealed: Vec<Vec<u8>> = sqlx::query_scalar("SELECT ciphertext FROM totp_secrets")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(sealed.len(), 1);
    assert_ne!(sealed[0], raw, "ciphertext differs from the secret");
    conn.close().await.unwrap();
    hits
}
