//! The second way to get a code: by email, only for an address that belongs
//! to one user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{default_settings, spawn_app, spawn_app_mailing, Answer, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    user_with_a_unique_address_signs_in_with_a_code_delivered_over_smtp,
    shared_address_offers_only_the_app,
    missing_address_offers_only_the_app,
    address_shared_between_challenge_and_send_is_refused,
    emailed_code_works_once_and_for_ten_minutes,
    a_new_code_replaces_the_previous_one,
    five_codes_per_quarter_hour_at_most,
    wrong_email_codes_lock_the_challenge,
    failed_delivery_leaves_no_usable_code,
    login_as_and_turning_two_factor_off_are_told_to_the_user,
    thirty_requests_at_once_send_at_most_five_codes,
    refused_code_requests_are_stored_once_per_challenge,
    an_address_has_one_spelling_and_sharing_compares_it,
    an_emailed_code_is_stored_only_as_a_keyed_hash,
    every_message_carries_a_message_id_a_date_and_a_mime_version,
);

/// A real SMTP server (Python's aiosmtpd) writing what it receives to a Maildir.
struct SmtpSink {
    child: Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = tempfile::tempdir().unwrap();
        let child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir.path().join("box"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd is installed (pip install aiosmtpd; scripts/test does it)");
        let sink = SmtpSink {
            child,
            port,
            maildir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return sink;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(sink);
        panic!("aiosmtpd did not start");
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn messages(&self) -> Vec<String> {
        read_messages(&self.maildir.path().join("box").join("new"))
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

fn read_messages(dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|path| !path.file_name().unwrap().to_string_lossy().starts_with('.'));
    files.sort_by_key(|path| std::fs::metadata(path).and_then(|m| m.modified()).unwrap());
    files
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect()
}

/// The messages the app wrote to its mail directory, oldest first.
fn mail_dir_messages(app: &TestApp) -> Vec<String> {
    read_messages(&app.dir.path().join("mail"))
}

fn code_in(message: &str) -> String {
    let at = message
        .find("sign-in code is ")
        .expect("a code in the message")
        + "sign-in code is ".len();
    message[at..at + 6].to_string()
}

async fn user_with_two_factor(app: &TestApp, name: &str, email: Option<&str>) -> String {
    app.create_user(name, "their-password", email, "user").await;
    let token = app.token(name, "their-password").await;
    let (secret, _) = app.enroll_totp(&token).await;
    app.next_step();
    secret
}

async fn challenge(app: &TestApp, name: &str) -> Answer {
    let login = app.login(name, "their-password").await;
    assert_eq!(login.body["status"], "two_factor_required", "{login:?}");
    login
}

async fn send(app: &TestApp, challenge_id: &str) -> Answer {
    app.post(
        &format!("/api/v1/login/challenges/{challenge_id}/email"),
        None,
        json!({}),
    )
    .await
}

async fn verify_email(app: &TestApp, challenge_id: &str, code: &str) -> Answer {
    app.post(
        &format!("/api/v1/login/challenges/{challenge_id}/verify"),
        None,
        json!({ "method": "email", "code": code }),
    )
    .await
}

async fn user_with_a_unique_address_signs_in_with_a_code_delivered_over_smtp(backend: Backend) {
    let smtp = SmtpSink::start();
    let app = spawn_app_mailing(backend, default_settings(), Some(smtp.url())).await;
    user_with_two_factor(&app, "jane", Some("jane@example.com")).await;
    let login = challenge(&app, "jane").await;
    assert_eq!(
        login.body["methods"],
        json!(["totp", "email", "recovery_code"])
    );
    let id = login.body["challenge_id"].as_str().unwrap();
    let sent = send(&app, id).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{sent:?}");
    assert_eq!(sent.body["sent_to"], "j***@example.com");
    assert!(sent.body["expires_at"].is_string());
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].contains("jane@example.com"));
    let verified = verify_email(&app, id, &code_in(&messages[0])).await;
    assert_eq!(verified.status, StatusCode::OK, "{verified:?}");
    assert_eq!(verified.body["status"], "authenticated");
    app.stop().await;
}

async fn shared_address_offers_only_the_app(backend: Backend) {
    let app = spawn_app(backend).await;
    user_with_two_factor(&app, "kim", Some("team@example.com")).await;
    app.create_user("lee", "lee-password", Some("TEAM@example.com "), "user")
        .await;
    let login = challenge(&app, "kim").await;
    assert_eq!(login.body["methods"], json!(["totp", "recovery_code"]));
    let refused = send(&app, login.body["challenge_id"].as_str().unwrap()).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.error(), "email_unavailable");
    assert!(mail_dir_messages(&app).is_empty());
    let kim = app
        .get("/api/v1/users?q=kim", &app.admin_token().await)
        .await;
    let history = app
        .history(kim.body["users"][0]["id"].as_str().unwrap())
        .await;
    assert!(history.iter().any(|(kind, _)| kind == "EmailCodeRefused"));
    app.stop().await;
}

async fn missing_address_offers_only_the_app(backend: Backend) {
    let app = spawn_app(backend).await;
    user_with_two_factor(&app, "max", None).await;
    let login = challenge(&app, "max").await;
    assert_eq!(login.body["methods"], json!(["totp", "recovery_code"]));
    let refused = send(&app, login.body["challenge_id"].as_str().unwrap()).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.error(), "email_unavailable");
    app.stop().await;
}

async fn address_shared_between_challenge_and_send_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    user_with_two_factor(&app, "ned", Some("ned@example.com")).await;
    let login = challenge(&app, "ned").await;
    assert!(login.body["methods"]
        .as_array()
        .unwrap()
        .contains(&json!("email")));
    app.create_user("other", "other-password", Some("Ned@Example.com"), "user")
        .await;
    let refused = send(&app, login.body["challenge_id"].as_str().unwrap()).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.error(), "email_unavailable");
    app.stop().await;
}

async fn emailed_code_works_once_and_for_ten_minutes(backend: Backend) {
    let app = spawn_app(backend).await;
    user_with_two_factor(&app, "ola", Some("ola@example.com")).await;
    // Expires after ten minutes, though the challenge alone would last five.
    let login = challenge(&app, "ola").await;
    let id = login.body["challenge_id"].as_str().unwrap().to_string();
    assert_eq!(send(&app, &id).await.status, StatusCode::ACCEPTED);
    let code = code_in(mail_dir_messages(&app).last().unwrap());
    app.clock.advance(chrono::Duration::minutes(9));
    assert_eq!(verify_email(&app, &id, &code).await.status, StatusCode::OK);
    // Single use: the challenge is spent.
    let again = verify_email(&app, &id, &code).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    // A code ten minutes old is refused.
    let login = challenge(&app, "ola").await;
    let id = login.body["challenge_id"].as_str().unwrap().to_string();
    assert_eq!(send(&app, &id).await.status, StatusCode::ACCEPTED);
    let code = code_in(mail_dir_messages(&app).last().unwrap());
    app.clock.advance(chrono::Duration::minutes(10));
    let late = verify_email(&app, &id, &code).await;
    assert_eq!(late.status, StatusCode::GONE, "{late:?}");
    assert_eq!(late.error(), "challenge_expired");
    app.stop().await;
}

async fn a_new_code_replaces_the_previous_one(backend: Backend) {
    let app = spawn_app(backend).await;
    user_with_two_factor(&app, "pia", Some("pia@example.com")).await;
    let login = challenge(&app, "pia").await;
    let id = login.body["challenge_id"].as_str().unwrap().to_string();
    send(&app, &id).await;
    let first = code_in(mail_dir_messages(&app).last().unwrap());
    send(&app, &id).await;
    let second = code_in(mail_dir_messages(&app).last().unwrap());
    if first != second {
        let old = verify_email(&app, &id, &first).await;
        assert_eq!(old.status, StatusCode::UNAUTHORIZED);
        assert_eq!(old.error(), "invalid_code");
    }
    assert_eq!(
        verify_email(&app, &id, &second).await.status,
        StatusCode::OK
    );
    app.stop().await;
}

async fn five_codes_per_quarter_hour_at_most(backend: Backend) {
    let app = spawn_app(backend).await;
    user_with_two_factor(&app, "quin", Some("quin@example.com")).await;
    let login = challenge(&app, "quin").await;
    let id = login.body["challenge_id"].as_str().unwrap().to_string();
    for _ in 0..5 {
        assert_eq!(send(&app, &id).await.status, StatusCode::ACCEPTED);
    }
    let limited = send(&app, &id).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.error(), "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    assert_eq!(
        mail_dir_messages(&app).len(),
        5,
        "no sixth message went out"
    );
    app.clock.advance(chrono::Duration::minutes(15));
    let login = challenge(&app, "quin").await;
    let id = login.body["challenge_id"].as_str().unwrap().to_string();
    assert_eq!(send(&app, &id).await.status, StatusCode::ACCEPTED);
    app.stop().await;
}

async fn wrong_email_codes_lock_the_challenge(backend: Backend) {
    let app = spawn_app(backend).await;
    user_with_two_factor(&app, "rae", Some("rae@example.com")).await;
    let login = challenge(&app, "rae").await;
    let id = login.body["challenge_id"].as_str().unwrap().to_string();
    send(&app, &id).await;
    let code = code_in(mail_dir_messages(&app).last().unwrap());
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for remaining in (0..5).rev() {
        let answer = verify_email(&app, &id, wrong).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.body["attempts_remaining"], remaining);
    }
    let locked = verify_email(&app, &id, &code).await;
    assert_eq!(locked.status, StatusCode::LOCKED);
    assert_eq!(locked.error(), "challenge_locked");
    app.stop().await;
}

async fn failed_delivery_leaves_no_usable_code(backend: Backend) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let app = spawn_app_mailing(
        backend,
        default_settings(),
        Some(format!("smtp://127.0.0.1:{port}")),
    )
    .await;
    user_with_two_factor(&app, "sam", Some("sam@example.com")).await;
    let login = challenge(&app, "sam").await;
    let failed = send(&app, login.body["challenge_id"].as_str().unwrap()).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE, "{failed:?}");
    // The send was decided and stored first (so parallel requests count
    // against the limit), then withdrawn when the mail could not go.
    assert_eq!(
        app.scalar("SELECT count(*) FROM events WHERE event_type = 'EmailCodeUndelivered'")
            .await,
        1
    );
    let challenge_id = login.body["challenge_id"].as_str().unwrap();
    let attempt = app
        .post(
            &format!("/api/v1/login/challenges/{challenge_id}/verify"),
            None,
            json!({ "method": "email", "code": "000000" }),
        )
        .await;
    assert_eq!(attempt.status, StatusCode::BAD_REQUEST, "{attempt:?}");
    app.stop().await;
}

async fn login_as_and_turning_two_factor_off_are_told_to_the_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app
        .create_user("tess", "tess-password", Some("tess@example.com"), "user")
        .await;
    let admin = app.admin_token().await;
    let acting = app
        .post(
            &format!("/api/v1/users/{id}/impersonation"),
            Some(&admin),
            json!({ "reason": "ticket 7: cannot sign in" }),
        )
        .await;
    assert_eq!(acting.status, StatusCode::CREATED);
    let messages = mail_dir_messages(&app);
    assert_eq!(messages.len(), 1);
    assert!(messages[0].contains("tess@example.com"));
    assert!(messages[0].contains("root"), "names the administrator");
    assert!(
        messages[0].contains("ticket 7: cannot sign in"),
        "gives the reason"
    );
    let reset = app
        .delete(
            &format!("/api/v1/users/{id}/two-factor"),
            &admin,
            Some(json!({ "reason": "lost phone" })),
        )
        .await;
    assert_eq!(reset.status, StatusCode::NO_CONTENT);
    let messages = mail_dir_messages(&app);
    assert_eq!(messages.len(), 2);
    assert!(messages[1].contains("Two-factor authentication"));
    app.stop().await;
}

async fn thirty_requests_at_once_send_at_most_five_codes(backend: Backend) {
    let app = spawn_app(backend).await;
    user_with_two_factor(&app, "nia", Some("nia@example.com")).await;
    let login = challenge(&app, "nia").await;
    let id = login.body["challenge_id"].as_str().unwrap().to_string();
    let answers = futures::future::join_all((0..30).map(|_| send(&app, &id))).await;
    let sent = answers
        .iter()
        .filter(|answer| answer.status == StatusCode::ACCEPTED)
        .count();
    assert_eq!(sent, 5, "{answers:?}");
    assert!(answers
        .iter()
        .filter(|answer| answer.status != StatusCode::ACCEPTED)
        .all(|answer| answer.status == StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(
        app.scalar("SELECT count(*) FROM events WHERE event_type = 'EmailCodeSent'")
            .await,
        5
    );
    assert_eq!(mail_dir_messages(&app).len(), 5);
    app.stop().await;
}

async fn refused_code_requests_are_stored_once_per_challenge(backend: Backend) {
    let app = spawn_app(backend).await;
    user_with_two_factor(&app, "oto", None).await;
    let login = challenge(&app, "oto").await;
    let id = login.body["challenge_id"].as_str().unwrap().to_string();
    for _ in 0..100 {
        let refused = send(&app, &id).await;
        assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
        assert_eq!(refused.error(), "email_unavailable");
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM events WHERE event_type = 'EmailCodeRefused'")
            .await,
        1
    );
    app.stop().await;
}

async fn an_address_has_one_spelling_and_sharing_compares_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    for refused in [
        "Frank <dave@example.com>",
        "dave@example.com.",
        "dave@example.com (Dave)",
        "\"dave\"@example.com",
    ] {
        let answer = app
            .post(
                "/api/v1/users",
                Some(&root),
                json!({ "username": "frank", "password": "frank-password", "email": refused }),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{refused}: {answer:?}"
        );
        assert_eq!(answer.error(), "invalid_request");
    }
    user_with_two_factor(&app, "dave", Some("dave@example.com")).await;
    let frank = app
        .post(
            "/api/v1/users",
            Some(&root),
            json!({ "username": "frank", "password": "frank-password", "email": " DAVE@Example.COM " }),
        )
        .await;
    assert_eq!(frank.status, StatusCode::CREATED, "{frank:?}");
    assert_eq!(frank.body["email"], "DAVE@example.com");
    // The same mailbox in another case: shared, so email is not offered.
    let login = challenge(&app, "dave").await;
    assert_eq!(login.body["methods"], json!(["totp", "recovery_code"]));
    app.stop().await;
}

async fn an_emailed_code_is_stored_only_as_a_keyed_hash(backend: Backend) {
    use sha2::{Digest, Sha256};
    let app = spawn_app(backend).await;
    user_with_two_factor(&app, "pia", Some("pia@example.com")).await;
    let login = challenge(&app, "pia").await;
    let id = login.body["challenge_id"].as_str().unwrap().to_string();
    assert_eq!(send(&app, &id).await.status, StatusCode::ACCEPTED);
    let code = code_in(&mail_dir_messages(&app)[0]);
    let stored = app
        .texts("SELECT CAST(payload AS TEXT) FROM events WHERE event_type = 'EmailCodeSent'")
        .await;
    let payload: serde_json::Value = serde_json::from_str(&stored[0]).unwrap();
    let stored_hash = payload["EmailCodeSent"]["code_hash"].as_str().unwrap();
    // Every one of the 10^6 codes, hashed as a reader of the store could:
    // none gives what is stored.
    let found = (0..1_000_000)
        .find(|n| hex::encode(Sha256::digest(format!("{id}:{n:06}").as_bytes())) == stored_hash);
    assert_eq!(found, None);
    assert_ne!(
        hex::encode(Sha256::digest(format!("{id}:{code}").as_bytes())),
        stored_hash
    );
    assert_eq!(verify_email(&app, &id, &code).await.status, StatusCode::OK);
    app.stop().await;
}

/// The `Message-ID`, `Date` (as Unix seconds) and `MIME-Version` of a
/// message, read by an independent parser (Python's `email` package).
fn identity_headers(message: &str) -> (String, i64, String) {
    const SCRIPT: &str = "import email, email.policy, json, sys\n\
        m = email.message_from_string(sys.stdin.read(), policy=email.policy.default)\n\
        print(json.dumps([str(m['Message-ID']), int(m['Date'].datetime.timestamp()), \
        str(m['MIME-Version'])]))";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), message.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn assert_identified(messages: &[String]) {
    let mut ids = std::collections::BTreeSet::new();
    for message in messages {
        let (id, date, mime) = identity_headers(message);
        assert!(
            id.starts_with('<') && id.ends_with("@localhost>"),
            "a Message-ID in the sender's domain: {id}"
        );
        assert!(ids.insert(id), "each message has its own id");
        let now = chrono::Utc::now().timestamp();
        assert!((now - date).abs() < 300, "dated now: {date} vs {now}");
        assert_eq!(mime, "1.0");
    }
}

async fn every_message_carries_a_message_id_a_date_and_a_mime_version(backend: Backend) {
    async fn two_notices(app: &TestApp) {
        let id = app
            .create_user("uli", "uli-password", Some("uli@example.com"), "user")
            .await;
        let admin = app.admin_token().await;
        let acting = app
            .post(
                &format!("/api/v1/users/{id}/impersonation"),
                Some(&admin),
                json!({ "reason": "ticket 9" }),
            )
            .await;
        assert_eq!(acting.status, StatusCode::CREATED);
        let reset = app
            .delete(
                &format!("/api/v1/users/{id}/two-factor"),
                &admin,
                Some(json!({ "reason": "lost phone" })),
            )
            .await;
        assert_eq!(reset.status, StatusCode::NO_CONTENT);
    }

    let app = spawn_app(backend).await;
    two_notices(&app).await;
    let written = mail_dir_messages(&app);
    assert_eq!(written.len(), 2);
    assert_identified(&written);
    app.stop().await;

    let smtp = SmtpSink::start();
    let app = spawn_app_mailing(backend, default_settings(), Some(smtp.url())).await;
    two_notices(&app).await;
    let delivered = smtp.messages();
    assert_eq!(delivered.len(), 2);
    assert_identified(&delivered);
    app.stop().await;
}
