//! Secret hygiene: the real binary, logging at `debug`, goes through every
//! flow that handles a secret (bootstrap, passwords, TOTP enrollment and
//! sign-in, remembered devices, recovery codes, a password change, an
//! emailed code, "Login as", the audit exports); then the database (on
//! SQLite the files, `-wal` and `-shm` included; on PostgreSQL the text of
//! every table), the log and every export are searched for each secret the
//! flows handed out or took in. None may appear.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use tokio::process::{Child, Command};

use crate::helpers::{binary, fresh_postgres_database, oathtool_code, Backend};
use crate::on_both_backends;

/// One secret in every spelling it could leak in.
struct Secret {
    what: String,
    spellings: Vec<Vec<u8>>,
}

impl Secret {
    fn text(what: &str, value: &str) -> Self {
        Secret {
            what: what.to_string(),
            spellings: vec![value.as_bytes().to_vec()],
        }
    }
}

struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port()
}

/// `twofold serve` with `RUST_LOG=debug`, its output appended to `log`.
async fn serve(dir: &Path, database_url: &str, admin_password: &str) -> Server {
    let log = dir.join("twofold.log");
    for _ in 0..5 {
        let port = free_port();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(binary());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TWOFOLD_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .arg("serve")
            .arg("--database-url")
            .arg(database_url)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--master-key-file")
            .arg(dir.join("master.key"))
            .arg("--mail-dir")
            .arg(dir.join("mail"))
            .arg("--database-max-connections")
            .arg("4")
            .env("RUST_LOG", "debug")
            .env("TWOFOLD_BOOTSTRAP_ADMIN", format!("root:{admin_password}"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("the twofold binary starts");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if let Ok(response) = client.get(format!("{base}/readyz")).send().await {
                if response.status() == StatusCode::OK {
                    return Server { child, base, log };
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(child.kill().await);
    }
    panic!(
        "twofold serve did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

async fn call(base: &str, method: &str, path: &str, token: Option<&str>, body: Value) -> Value {
    let client = reqwest::Client::new();
    let mut request = client
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .header("user-agent", "hygiene-test");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn string(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {value}"))
        .to_string()
}

/// The emailed code, from the newest .eml in the mail directory.
fn emailed_code(mail: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(mail)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort_by_key(|path| std::fs::metadata(path).unwrap().modified().unwrap());
    for file in files.iter().rev() {
        let text = std::fs::read_to_string(file).unwrap();
        if let Some((_, rest)) = text.split_once("Your sign-in code is ") {
            return rest.chars().take(6).collect();
        }
    }
    panic!("no sign-in code in {}", mail.display());
}

/// Text of every table of a PostgreSQL database, one row a line.
async fn postgres_text(database_url: &str) -> Vec<u8> {
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(tables.iter().any(|t| t == "events"), "{tables:?}");
    let mut text = Vec::new();
    for table in tables {
        let rows = sqlx::query(&format!("SELECT CAST(t AS TEXT) FROM \"{table}\" t"))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        for row in rows {
            let line: String = row.get(0);
            text.extend_from_slice(format!("{table}: {line}\n").as_bytes());
        }
    }
    text
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

async fn no_secret_is_stored_logged_or_exported(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("twofold.db").display()),
        Backend::Postgres => fresh_postgres_database().await,
    };
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let admin_password = format!("Admin-Pw-{unique}");
    let first_password = format!("First-Pw-{unique}");
    let second_password = format!("Second-Pw-{unique}");
    let mut secrets = vec![
        Secret::text("bootstrap admin password", &admin_password),
        Secret::text("first password", &first_password),
        Secret::text("changed password", &second_password),
    ];
    let server = serve(dir.path(), &database_url, &admin_password).await;
    let base = server.base.clone();
    let mut session_tokens = Vec::new();

    // Bootstrap admin signs in and creates a user with a password.
    let admin = call(
        &base,
        "POST",
        "/api/v1/login",
        None,
        json!({ "username": "root", "password": admin_password }),
    )
    .await;
    let admin = string(&admin, "session_token");
    session_tokens.push(admin.clone());
    let email = format!("alice-{unique}@example.com");
    let alice = call(
        &base,
        "POST",
        "/api/v1/users",
        Some(&admin),
        json!({ "username": "alice", "password": first_password, "email": email }),
    )
    .await;
    let alice_id = string(&alice, "id");

    // Alice enrolls TOTP with the secret the API shows, confirmed by oathtool.
    let signed_in = call(
        &base,
        "POST",
        "/api/v1/login",
        None,
        json!({ "username": "alice", "password": first_password }),
    )
    .await;
    let token = string(&signed_in, "session_token");
    session_tokens.push(token.clone());
    let started = call(
        &base,
        "POST",
        "/api/v1/me/two-factor/totp",
        Some(&token),
        Value::Null,
    )
    .await;
    let totp_secret = string(&started, "secret");
    let raw = data_encoding_decode(&totp_secret);
    secrets.push(Secret {
        what: "TOTP secret".into(),
        spellings: vec![
            totp_secret.clone().into_bytes(),
            totp_secret.to_lowercase().into_bytes(),
            raw.clone(),
            hex_lower(&raw).into_bytes(),
            base64_standard(&raw).into_bytes(),
        ],
    });
    let confirmed = call(
        &base,
        "POST",
        "/api/v1/me/two-factor/totp/confirm",
        Some(&token),
        json!({ "code": oathtool_code(&totp_secret, Utc::now()) }),
    )
    .await;
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|code| code.as_str().unwrap().to_string())
        .collect();
    assert_eq!(recovery.len(), 10);
    for code in &recovery {
        secrets.push(Secret {
            what: "recovery code".into(),
            spellings: vec![
                code.clone().into_bytes(),
                code.replace('-', "").into_bytes(),
            ],
        });
    }

    // Sign in with a TOTP code (the next step: the confirmed one is spent)
    // and remember the device.
    let challenge = call(
        &base,
        "POST",
        "/api/v1/login",
        None,
        json!({ "username": "alice", "password": first_password }),
    )
    .await;
    assert_eq!(challenge["status"], "two_factor_required");
    let challenge_id = string(&challenge, "challenge_id");
    let next_code = oathtool_code(&totp_secret, Utc::now() + chrono::Duration::seconds(30));
    let verified = call(
        &base,
        "POST",
        &format!("/api/v1/login/challenges/{challenge_id}/verify"),
        None,
        json!({ "method": "totp", "code": next_code, "remember_device": true }),
    )
    .await;
    session_tokens.push(string(&verified, "session_token"));
    let device_token = string(&verified, "device_token");
    secrets.push(Secret::text("device token", &device_token));

    // The remembered device skips the second factor.
    let remembered = call(
        &base,
        "POST",
        "/api/v1/login",
        None,
        json!({ "username": "alice", "password": first_password, "device_token": device_token }),
    )
    .await;
    assert_eq!(remembered["status"], "authenticated");
    session_tokens.push(string(&remembered, "session_token"));

    // A recovery code.
    let challenge = call(
        &base,
        "POST",
        "/api/v1/login",
        None,
        json!({ "username": "alice", "password": first_password }),
    )
    .await;
    let challenge_id = string(&challenge, "challenge_id");
    let recovered = call(
        &base,
        "POST",
        &format!("/api/v1/login/challenges/{challenge_id}/verify"),
        None,
        json!({ "method": "recovery_code", "code": recovery[0], "remember_device": false }),
    )
    .await;
    let token = string(&recovered, "session_token");
    session_tokens.push(token.clone());

    // The password changes.
    call(
        &base,
        "POST",
        "/api/v1/me/password",
        Some(&token),
        json!({ "current_password": first_password, "new_password": second_password }),
    )
    .await;

    // An emailed code.
    let challenge = call(
        &base,
        "POST",
        "/api/v1/login",
        None,
        json!({ "username": "alice", "password": second_password }),
    )
    .await;
    assert!(
        challenge["methods"]
            .as_array()
            .unwrap()
            .contains(&json!("email")),
        "{challenge}"
    );
    let challenge_id = string(&challenge, "challenge_id");
    call(
        &base,
        "POST",
        &format!("/api/v1/login/challenges/{challenge_id}/email"),
        None,
        Value::Null,
    )
    .await;
    let code = emailed_code(&dir.path().join("mail"));
    let by_email = call(
        &base,
        "POST",
        &format!("/api/v1/login/challenges/{challenge_id}/verify"),
        None,
        json!({ "method": "email", "code": code, "remember_device": false }),
    )
    .await;
    session_tokens.push(string(&by_email, "session_token"));
    // Six digits turn up by chance in timestamps and hashes; a leak would
    // carry the code as a value.
    secrets.push(Secret {
        what: "emailed code".into(),
        spellings: vec![
            format!("\"{code}\"").into_bytes(),
            format!("'{code}'").into_bytes(),
            format!("code={code}").into_bytes(),
            format!("code: {code}").into_bytes(),
            format!("code is {code}").into_bytes(),
        ],
    });

    // "Login as" hands out a session token too.
    let impersonation = call(
        &base,
        "POST",
        &format!("/api/v1/users/{alice_id}/impersonation"),
        Some(&admin),
        json!({ "reason": "hygiene check" }),
    )
    .await;
    session_tokens.push(string(&impersonation, "session_token"));
    for token in &session_tokens {
        secrets.push(Secret::text("session token", token));
    }

    // The audit trail, through the API and the command line.
    let mut exports: Vec<(String, Vec<u8>)> = Vec::new();
    for format in ["csv", "jsonl"] {
        let response = reqwest::Client::new()
            .get(format!("{base}/api/v1/audit?format={format}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        exports.push((
            format!("GET /audit?format={format}"),
            response.bytes().await.unwrap().to_vec(),
        ));
        let output = Command::new(binary())
            .args([
                "audit",
                "export",
                "--format",
                format,
                "--database-url",
                &database_url,
            ])
            .env("RUST_LOG", "debug")
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert!(output.stdout.len() > 100, "{output:?}");
        exports.push((
            format!("twofold audit export --format {format}"),
            output.stdout,
        ));
        exports.push((
            format!("twofold audit export --format {format} (stderr)"),
            output.stderr,
        ));
    }
    let page = call(
        &base,
        "GET",
        "/api/v1/audit?limit=500",
        Some(&admin),
        Value::Null,
    )
    .await;
    exports.push(("GET /audit".into(), page.to_string().into_bytes()));

    // Everything that was written, read while the server still runs (the
    // SQLite -wal and -shm files exist then).
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    match backend {
        Backend::Sqlite => {
            for suffix in ["", "-wal", "-shm"] {
                let path = dir.path().join(format!("twofold.db{suffix}"));
                if let Ok(bytes) = std::fs::read(&path) {
                    places.push((path.display().to_string(), bytes));
                }
            }
            assert!(places.len() >= 2, "the database and its WAL");
        }
        Backend::Postgres => {
            places.push((
                "every PostgreSQL table".into(),
                postgres_text(&database_url).await,
            ));
        }
    }
    places.extend(exports);
    let mut child = server.child;
    drop(child.kill().await);
    drop(child.wait().await);
    if backend == Backend::Sqlite {
        // And after the server is gone (checkpointed into the main file).
        for suffix in ["", "-wal", "-shm"] {
            let path = dir.path().join(format!("twofold.db{suffix}"));
            if let Ok(bytes) = std::fs::read(&path) {
                places.push((format!("{} after stop", path.display()), bytes));
            }
        }
    }
    let log = std::fs::read(&server.log).unwrap();
    assert!(
        String::from_utf8_lossy(&log).contains("DEBUG"),
        "the log ran at debug level"
    );
    places.push(("the debug log".into(), log));

    // The search works: what is not secret is found where it was written.
    let eml: Vec<u8> = std::fs::read_dir(dir.path().join("mail"))
        .unwrap()
        .flat_map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(find(&eml, format!("code is {code}").as_bytes()).is_some());
    let database: Vec<u8> = places
        .iter()
        .filter(|(place, _)| place.contains("twofold.db"))
        .flat_map(|(_, bytes)| bytes.clone())
        .collect();
    assert!(backend == Backend::Postgres || find(&database, alice_id.as_bytes()).is_some());
    for (place, bytes) in &places {
        if !place.contains("stderr") && !place.contains("twofold.db") {
            assert!(
                find(bytes, alice_id.as_bytes()).is_some(),
                "alice's id is not in {place}: the search would miss secrets there too"
            );
        }
    }

    let mut hits = Vec::new();
    let mut checked = 0;
    for secret in &secrets {
        for spelling in &secret.spellings {
            for (place, bytes) in &places {
                checked += 1;
                if let Some(at) = find(bytes, spelling) {
                    let context = String::from_utf8_lossy(
                        &bytes[at.saturating_sub(80)..(at + spelling.len() + 80).min(bytes.len())],
                    )
                    .into_owned();
                    hits.push(format!("{} in {place}: …{context}…", secret.what));
                }
            }
        }
    }
    println!(
        "{backend:?}: {} secrets, {checked} searches over {} places ({} bytes), {} hits",
        secrets.len(),
        places.len(),
        places.iter().map(|(_, bytes)| bytes.len()).sum::<usize>(),
        hits.len()
    );
    assert!(hits.is_empty(), "secrets found:\n{}", hits.join("\n"));
}

fn data_encoding_decode(base32: &str) -> Vec<u8> {
    twofold_domain::totp::TotpSecret::from_base32(base32)
        .unwrap()
        .expose_bytes()
        .to_vec()
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn base64_standard(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0_u32, |n, (i, byte)| n | (u32::from(*byte) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

on_both_backends!(no_secret_is_stored_logged_or_exported);
