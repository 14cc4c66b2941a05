//! Start and stop of the real `twofold serve` process: a store whose sealed
//! secrets the master key does not open is refused, a failed start leaves
//! no file behind, and slow clients hold neither a connection nor a stop
//! open for longer than their limits.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::helpers::{
    binary, default_settings, fresh_postgres_database, oathtool_code, spawn_app,
    spawn_app_configured, Backend, ADMIN,
};
use crate::on_both_backends;
use crate::processes::free_port;

on_both_backends!(
    a_store_restored_without_its_master_key_refuses_to_start_and_writes_no_key,
    a_master_key_that_does_not_open_the_stored_secrets_is_refused,
    a_start_that_cannot_listen_leaves_no_new_file_behind,
    an_audit_signing_key_file_that_holds_no_key_stops_the_start_before_the_store,
    a_failed_start_removes_the_audit_signing_key_it_created,
    a_rotated_master_key_opens_every_secret_and_the_old_one_is_refused,
    a_connection_that_sends_half_its_headers_is_closed_after_the_header_timeout,
    sigterm_stops_the_process_within_the_grace_period_whatever_slow_clients_do,
    a_request_in_flight_at_sigterm_still_gets_its_answer,
    a_body_that_does_not_arrive_in_time_is_answered_408_and_the_connection_closed,
);

/// How long a process may take to start, or to end once it must.
const PATIENCE: Duration = Duration::from_secs(60);

async fn store_url(backend: Backend, dir: &Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("twofold.db").display()),
        Backend::Postgres => fresh_postgres_database().await,
    }
}

/// `twofold serve` on `database_url` with `key` and `flags`, working in
/// `dir`, with only the environment this test gives it.
fn serve_command(
    database_url: &str,
    dir: &Path,
    key: &Path,
    listen: &str,
    flags: &[&str],
) -> Command {
    let mut command = Command::new(binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TWOFOLD_") {
            command.env_remove(name);
        }
    }
    command
        .current_dir(dir)
        .arg("serve")
        .arg("--database-url")
        .arg(database_url)
        .arg("--master-key-file")
        .arg(key)
        .arg("--listen")
        .arg(listen)
        .arg("--database-max-connections")
        .arg("4")
        .args(flags)
        .env(
            "TWOFOLD_BOOTSTRAP_ADMIN",
            format!("{}:{}", ADMIN.0, ADMIN.1),
        )
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// A start that must fail: its exit status and everything it wrote.
async fn failed_start(
    database_url: &str,
    dir: &Path,
    key: &Path,
    listen: &str,
) -> (ExitStatus, String) {
    failed_start_with(database_url, dir, key, listen, &[]).await
}

/// The same, with `flags`.
async fn failed_start_with(
    database_url: &str,
    dir: &Path,
    key: &Path,
    listen: &str,
    flags: &[&str],
) -> (ExitStatus, String) {
    let output = tokio::time::timeout(
        PATIENCE,
        serve_command(database_url, dir, key, listen, flags).output(),
    )
    .await
    .expect("the process ends by itself")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}

struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    /// `twofold serve` with `flags`, once it answers `/readyz`.
    async fn start(database_url: &str, dir: &Path, key: &Path, flags: &[&str]) -> Server {
        let client = reqwest::Client::new();
        for attempt in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let log = dir.join(format!("serve-{attempt}.log"));
            let file = std::fs::File::create(&log).unwrap();
            let mut child = serve_command(database_url, dir, key, &addr, flags)
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .expect("the twofold binary starts");
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    assert!(text.contains("cannot listen"), "exited ({status}):\n{text}");
                    break;
                }
                let ready = client.get(format!("http://{addr}/readyz")).send().await;
                if ready.is_ok_and(|answer| answer.status() == StatusCode::OK) {
                    return Server { child, addr, log };
                }
                assert!(Instant::now() < deadline, "not ready in time");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("no free port for twofold serve");
    }

    fn terminate(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits for the process to end; its status and how long that took.
    async fn ended(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("still running after {PATIENCE:?}:\n{}", self.log_text()))
            .unwrap();
        (status, started.elapsed())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn stop(mut self) {
        self.terminate();
        let (status, _) = self.ended().await;
        assert!(status.success(), "{status}:\n{}", self.log_text());
    }
}

/// A store holding one sealed TOTP secret, left by a stopped server, with
/// its directory (`master.key` beside the SQLite file).
async fn store_with_a_sealed_secret(backend: Backend) -> (tempfile::TempDir, String) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let started = app
        .post("/api/v1/me/two-factor/totp", Some(&admin), json!({}))
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    assert_eq!(app.scalar("SELECT count(*) FROM totp_secrets").await, 1);
    let database_url = app.database_url.clone();
    (app.stop_keeping_files().await, database_url)
}

async fn a_store_restored_without_its_master_key_refuses_to_start_and_writes_no_key(
    backend: Backend,
) {
    let (dir, database_url) = store_with_a_sealed_secret(backend).await;
    let key = dir.path().join("master.key");
    let kept = dir.path().join("kept-elsewhere.key");
    std::fs::rename(&key, &kept).unwrap();

    let listen = format!("127.0.0.1:{}", free_port());
    let (status, output) = failed_start(&database_url, dir.path(), &key, &listen).await;
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&format!("master key file {} does not exist", key.display())),
        "names the key file: {output}"
    );
    assert!(!key.exists(), "no new key was written");

    // With its key back, the same store starts.
    std::fs::rename(&kept, &key).unwrap();
    Server::start(&database_url, dir.path(), &key, &[])
        .await
        .stop()
        .await;
}

async fn a_master_key_that_does_not_open_the_stored_secrets_is_refused(backend: Backend) {
    let (dir, database_url) = store_with_a_sealed_secret(backend).await;
    let key = dir.path().join("master.key");
    let wrong = format!("{}\n", "5a".repeat(32));
    std::fs::write(&key, &wrong).unwrap();

    let listen = format!("127.0.0.1:{}", free_port());
    let (status, output) = failed_start(&database_url, dir.path(), &key, &listen).await;
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&format!(
            "master key in {} does not open the TOTP secrets",
            key.display()
        )),
        "names the key file: {output}"
    );
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        wrong,
        "left as it was"
    );
}

async fn a_start_that_cannot_listen_leaves_no_new_file_behind(backend: Backend) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let database_url = store_url(backend, dir.path()).await;
    // No --mail-dir: the default mail directory is created too (beside the
    // SQLite file, or in the working directory).
    let key = dir.path().join("master.key");
    let (status, output) = failed_start(&database_url, dir.path(), &key, &listen).await;
    assert!(!status.success(), "{output}");
    assert!(output.contains("cannot listen"), "{output}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the failed start left {left:?}");
    drop(taken);
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn an_audit_signing_key_file_that_holds_no_key_stops_the_start_before_the_store(
    backend: Backend,
) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = store_url(backend, dir.path()).await;
    let junk = dir.path().join("audit.key");
    std::fs::write(&junk, "not a key\n").unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let (status, output) = failed_start_with(
        &database_url,
        dir.path(),
        &dir.path().join("master.key"),
        &listen,
        &["--audit-signing-key-file", junk.to_str().unwrap()],
    )
    .await;
    assert!(!status.success(), "{output}");
    assert!(output.contains(junk.to_str().unwrap()), "{output}");
    assert!(
        !output.contains("not a key"),
        "the file's text is not shown: {output}"
    );
    assert_eq!(files_in(dir.path()), ["audit.key"], "{output}");
    if backend == Backend::Postgres {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&database_url).await.unwrap();
        let migrated: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(migrated, None, "the store was not touched");
    }
}

async fn a_failed_start_removes_the_audit_signing_key_it_created(backend: Backend) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let database_url = store_url(backend, dir.path()).await;
    let key = dir.path().join("audit.key");
    let (status, output) = failed_start_with(
        &database_url,
        dir.path(),
        &dir.path().join("master.key"),
        &listen,
        &[
            "--audit-signing-key-file",
            key.to_str().unwrap(),
            "--mail-dir",
            dir.path().join("mail").to_str().unwrap(),
        ],
    )
    .await;
    assert!(!status.success(), "{output}");
    assert!(output.contains("cannot listen"), "{output}");
    assert!(
        output.contains("created a new audit signing key"),
        "it was created: {output}"
    );
    assert_eq!(files_in(dir.path()), Vec::<String>::new(), "{output}");
    drop(taken);
}

/// Reads until the server closes the connection; what it sent, and when
/// it closed.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> (Vec<u8>, Instant) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .expect("the server closes the connection")
        {
            Ok(0) | Err(_) => return (received, Instant::now()),
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

async fn a_connection_that_sends_half_its_headers_is_closed_after_the_header_timeout(
    backend: Backend,
) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = store_url(backend, dir.path()).await;
    let key = dir.path().join("master.key");
    let server = Server::start(
        &database_url,
        dir.path(),
        &key,
        &["--request-read-timeout-seconds", "2"],
    )
    .await;
    let mut slow = TcpStream::connect(&server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: twofold\r\n")
        .await
        .unwrap();
    let sent = Instant::now();
    let (received, closed) = read_until_closed(&mut slow).await;
    let waited = closed - sent;
    assert!(
        received.is_empty() || received.starts_with(b"HTTP/1.1 408"),
        "no answer but a timeout: {}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
    // A client that sends its request in time is served as before.
    let health = reqwest::get(format!("http://{}/healthz", server.addr))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    server.stop().await;
}

async fn sigterm_stops_the_process_within_the_grace_period_whatever_slow_clients_do(
    backend: Backend,
) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = store_url(backend, dir.path()).await;
    let key = dir.path().join("master.key");
    let mut server = Server::start(
        &database_url,
        dir.path(),
        &key,
        &[
            "--request-read-timeout-seconds",
            "300",
            "--shutdown-grace-seconds",
            "2",
        ],
    )
    .await;
    // One client stalls in its headers, another in its body (a request in
    // progress, which the stop waits for until the grace period ends).
    let mut half_headers = TcpStream::connect(&server.addr).await.unwrap();
    half_headers
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: twofold\r\n")
        .await
        .unwrap();
    let mut half_body = TcpStream::connect(&server.addr).await.unwrap();
    half_body
        .write_all(
            b"POST /api/v1/login HTTP/1.1\r\nHost: twofold\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"username\":",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.terminate();
    let (status, took) = server.ended().await;
    assert!(status.success(), "{status}:\n{}", server.log_text());
    assert!(
        took >= Duration::from_millis(1500),
        "the request in progress had its grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
    assert!(
        server.log_text().contains("shutdown grace period"),
        "{}",
        server.log_text()
    );
}

async fn a_request_in_flight_at_sigterm_still_gets_its_answer(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = store_url(backend, dir.path()).await;
    let key = dir.path().join("master.key");
    let mut server = Server::start(
        &database_url,
        dir.path(),
        &key,
        &["--shutdown-grace-seconds", "20"],
    )
    .await;
    let body = json!({ "username": ADMIN.0, "password": ADMIN.1 }).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut client = TcpStream::connect(&server.addr).await.unwrap();
    client
        .write_all(
            format!(
                "POST /api/v1/login HTTP/1.1\r\nHost: twofold\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{first}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.terminate();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        TcpStream::connect(&server.addr).await.is_err(),
        "a stopping server takes no new connection"
    );
    client.write_all(rest.as_bytes()).await.unwrap();
    let (received, _) = read_until_closed(&mut client).await;
    let answer = String::from_utf8_lossy(&received);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"session_token\""), "{answer}");
    let (status, took) = server.ended().await;
    assert!(status.success(), "{status}:\n{}", server.log_text());
    assert!(
        took < Duration::from_secs(10),
        "stopped {took:?} after the answer"
    );
}

async fn a_body_that_does_not_arrive_in_time_is_answered_408_and_the_connection_closed(
    backend: Backend,
) {
    let app = spawn_app_configured(backend, default_settings(), |config| {
        config.connections.request_read_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let (mut answers, mut sends) = TcpStream::connect(&addr).await.unwrap().into_split();
    sends
        .write_all(
            b"POST /api/v1/login HTTP/1.1\r\nHost: twofold\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n",
        )
        .await
        .unwrap();
    let sent = Instant::now();
    // A byte every 300 ms: a deadline per chunk would never fire.
    let trickle = tokio::spawn(async move {
        for byte in b"{\"username\": \"root\", \"pass".iter() {
            if sends.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let (received, closed) = read_until_closed(&mut answers).await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&received).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"invalid_request\""), "{answer}");
    assert!(answer.contains("cache-control: no-store"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(closed - sent >= Duration::from_millis(1500));
    app.stop().await;
}

/// Returns once `child` answers `/readyz` at `base`; fails with its `log`
/// if it exits first.
async fn until_ready(child: &mut Child, base: &str, log: &Path) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|answer| answer.status() == StatusCode::OK) {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(log).unwrap()
        );
        assert!(Instant::now() < deadline, "not ready in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `twofold ARGS` with no `TWOFOLD_` variable of the caller's: exit status,
/// standard output, standard error.
fn twofold(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String, String) {
    let mut command = std::process::Command::new(binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TWOFOLD_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A store URL of another kind, or a bare path, is a usage error said in
/// one line (one JSON object under `--log-format json`), exit code 2,
/// before anything is written.
#[test]
fn a_database_url_twofold_cannot_use_is_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    for url in ["mysql://root@localhost/twofold", "twofold.db"] {
        let (status, _, stderr) = twofold(
            &[
                "serve",
                "--database-url",
                url,
                "--master-key-file",
                key.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("sqlite://PATH or postgres://"), "{stderr}");
        assert!(!stderr.contains("master-key"), "{stderr}");
        let (status, _, stderr) = twofold(
            &["--log-format", "json", "serve", "--database-url", url],
            &[],
        );
        assert_eq!(status.code(), Some(2));
        let line: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
        assert_eq!(line["level"], "ERROR", "{line}");
        assert!(
            line["message"].as_str().unwrap().contains("--database-url"),
            "{line}"
        );
    }
    assert!(!key.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A runtime failure is one line too, exit code 1; a read-only command on
/// a SQLite path that holds no store says so and creates nothing there.
#[test]
fn audit_verify_on_a_mistyped_sqlite_path_creates_nothing_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("mistyped.db");
    let url = format!("sqlite://{}", missing.display());
    for command in [
        &["audit", "verify", "--database-url", url.as_str()][..],
        &[
            "audit",
            "export",
            "--format",
            "csv",
            "--database-url",
            url.as_str(),
        ][..],
    ] {
        let (status, _, stderr) = twofold(command, &[]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("no SQLite store at"), "{stderr}");
        assert!(!missing.exists());
    }
}

/// Every flag of `serve` has its help, and the settings read from the
/// environment only are listed there too.
#[test]
fn help_explains_every_flag_and_the_environment_only_settings() {
    let (status, help, _) = twofold(&["serve", "--help"], &[]);
    assert!(status.success());
    for said in [
        "TWOFOLD_BOOTSTRAP_ADMIN=username:password",
        "RUST_LOG",
        "Address to serve HTTP on",
        "Hours a device the user asked to remember",
        "Digits of a TOTP code",
    ] {
        assert!(help.contains(said), "{said} is not in:\n{help}");
    }
    let (status, help, _) = twofold(&["audit", "export", "--help"], &[]);
    assert!(status.success());
    assert!(help.contains("one JSON object per line"), "{help}");
}

/// `--listen localhost:PORT` serves; once a super admin exists the start-up
/// line stops telling how to create the first one; an export whose reader
/// went away (`| head`) ends quietly with exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_listens_and_an_export_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let url = store_url(Backend::Sqlite, dir.path()).await;
    let key = dir.path().join("master.key");
    let port = free_port();
    let log = dir.path().join("serve.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = serve_command(&url, dir.path(), &key, &format!("localhost:{port}"), &[])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    until_ready(&mut child, &format!("http://localhost:{port}"), &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("created the bootstrap super admin"), "{text}");
    assert!(!text.contains("create the first super admin"), "{text}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let mut export = std::process::Command::new(binary())
        .args([
            "audit",
            "export",
            "--format",
            "jsonl",
            "--database-url",
            &url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes before the first row is written.
    drop(export.stdout.take());
    let output = export.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

/// The admin's password step on the server at `addr`: its answer.
async fn admin_login(client: &reqwest::Client, addr: &str) -> serde_json::Value {
    client
        .post(format!("http://{addr}/api/v1/login"))
        .json(&json!({ "username": ADMIN.0, "password": ADMIN.1 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The admin's session token on the server at `addr`.
async fn admin_session(client: &reqwest::Client, addr: &str) -> String {
    let answer = admin_login(client, addr).await;
    answer["session_token"].as_str().unwrap().to_string()
}

async fn create_user(client: &reqwest::Client, addr: &str, token: &str, username: &str) {
    let created = client
        .post(format!("http://{addr}/api/v1/users"))
        .bearer_auth(token)
        .json(&json!({ "username": username, "password": format!("{username}-password") }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
}

/// A backup taken while the service writes is a store of its own: served
/// with the same key it holds what was there, and its audit trail
/// verifies. The runbook's restore drill, in docs/operations.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let url = store_url(Backend::Sqlite, dir.path()).await;
    let key = dir.path().join("master.key");
    let server = Server::start(&url, dir.path(), &key, &[]).await;
    let client = reqwest::Client::new();
    let token = admin_session(&client, &server.addr).await;
    create_user(&client, &server.addr, &token, "kept").await;
    let writes = {
        let (client, addr, token) = (client.clone(), server.addr.clone(), token.clone());
        tokio::spawn(async move {
            for i in 0..5 {
                create_user(&client, &addr, &token, &format!("during-{i}")).await;
            }
        })
    };
    std::fs::create_dir(dir.path().join("backups")).unwrap();
    let copy = dir.path().join("backups").join("copy.db");
    let backup = |copy: PathBuf, url: String| {
        tokio::task::spawn_blocking(move || {
            twofold(
                &[
                    "backup",
                    "--database-url",
                    &url,
                    "--to",
                    copy.to_str().unwrap(),
                ],
                &[],
            )
        })
    };
    let (status, stdout, stderr) = backup(copy.clone(), url.clone()).await.unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("the master key is not in it"), "{stdout}");
    writes.await.unwrap();
    server.stop().await;
    let (status, _, stderr) = backup(copy.clone(), url.clone()).await.unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("exists already"), "{stderr}");

    let restored_url = format!("sqlite://{}", copy.display());
    let restored = Server::start(&restored_url, dir.path(), &key, &[]).await;
    let token = admin_session(&client, &restored.addr).await;
    let found: serde_json::Value = client
        .get(format!("http://{}/api/v1/users?q=kept", restored.addr))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["users"][0]["username"], "kept", "{found}");
    restored.stop().await;
    let (status, report, stderr) = tokio::task::spawn_blocking(move || {
        twofold(&["audit", "verify", "--database-url", &restored_url], &[])
    })
    .await
    .unwrap();
    assert!(status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
}

/// The contract's rotation: every secret sealed again under a new key file
/// (created 0600; one that exists is refused), the old key refused at
/// start, and a TOTP sign-in through the new one.
async fn a_rotated_master_key_opens_every_secret_and_the_old_one_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let (secret, _) = app.enroll_totp(&admin).await;
    let database_url = app.database_url.clone();
    let dir = app.stop_keeping_files().await;
    let old_key = dir.path().join("master.key");
    let new_key = dir.path().join("rotated.key");
    let rotate = |new_key: PathBuf| {
        let (database_url, old_key) = (database_url.clone(), old_key.clone());
        tokio::task::spawn_blocking(move || {
            twofold(
                &[
                    "master-key",
                    "rotate",
                    "--database-url",
                    &database_url,
                    "--master-key-file",
                    old_key.to_str().unwrap(),
                    "--new-key-file",
                    new_key.to_str().unwrap(),
                ],
                &[],
            )
        })
    };
    let (status, stdout, stderr) = rotate(new_key.clone()).await.unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("sealed 1 secrets again"), "{stdout}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&new_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let kept = std::fs::read_to_string(&new_key).unwrap();
    let (status, _, stderr) = rotate(new_key.clone()).await.unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("exists already"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&new_key).unwrap(),
        kept,
        "left as it was"
    );

    let listen = format!("127.0.0.1:{}", free_port());
    let (status, output) = failed_start(&database_url, dir.path(), &old_key, &listen).await;
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("does not open the TOTP secrets"),
        "{output}"
    );

    let server = Server::start(&database_url, dir.path(), &new_key, &[]).await;
    let client = reqwest::Client::new();
    let login = admin_login(&client, &server.addr).await;
    assert_eq!(login["status"], "two_factor_required", "{login}");
    // The next step's code: the enrollment spent this one.
    let code = oathtool_code(&secret, chrono::Utc::now() + chrono::Duration::seconds(30));
    let verified = client
        .post(format!(
            "http://{}/api/v1/login/challenges/{}/verify",
            server.addr,
            login["challenge_id"].as_str().unwrap()
        ))
        .json(&json!({ "method": "totp", "code": code, "remember_device": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), StatusCode::OK);
    server.stop().await;
}

/// Sign-ins from this test's address until one is refused for the rate:
/// how many were let through (at most `most` tries).
async fn sign_ins_admitted(client: &reqwest::Client, addr: &str, most: usize) -> usize {
    for tried in 0..most {
        let answer = client
            .post(format!("http://{addr}/api/v1/login"))
            .json(&json!({ "username": "nobody", "password": "wrong password" }))
            .send()
            .await
            .unwrap();
        if answer.status() == StatusCode::TOO_MANY_REQUESTS {
            return tried;
        }
    }
    most
}

/// `--config FILE`: its settings apply where neither a flag nor the
/// environment gave one (a flag's `--listen` wins over the file's, which
/// is then not even read; the environment's rate wins over the file's; the
/// file's wins over the default), a secret comes from a file it names, and
/// an unknown key is a usage error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_file_gives_what_flags_and_the_environment_leave_unset() {
    let dir = tempfile::tempdir().unwrap();
    let url = store_url(Backend::Sqlite, dir.path()).await;
    let key = dir.path().join("master.key");
    let admin_file = dir.path().join("bootstrap-admin");
    std::fs::write(&admin_file, format!("{}:from-the-file-password\n", ADMIN.0)).unwrap();
    let settings = dir.path().join("twofold.toml");
    std::fs::write(
        &settings,
        format!(
            "listen = \"not an address\"\nlogin-rate-per-ip = 2\nlog-format = \"json\"\n\
             bootstrap-admin-file = \"{}\"\n",
            admin_file.display()
        ),
    )
    .unwrap();
    let client = reqwest::Client::new();
    for (env_rate, admitted) in [(Some("3"), 3), (None, 2)] {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("serve.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut command = serve_command(&url, dir.path(), &key, &addr, &["--config"]);
        command
            .arg(&settings)
            .env_remove("TWOFOLD_BOOTSTRAP_ADMIN")
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        if let Some(rate) = env_rate {
            command.env("TWOFOLD_LOGIN_RATE_PER_IP", rate);
        }
        let mut child = command.spawn().unwrap();
        until_ready(&mut child, &format!("http://{addr}"), &log).await;
        assert_eq!(sign_ins_admitted(&client, &addr, 6).await, admitted);
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
    // The log's format came from the file too.
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    for line in log.lines() {
        let _: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("{line}"));
    }
    // The admin came from the file the settings named (the environment's
    // bootstrap admin, with another password, found one there).
    let server = Server::start(&url, dir.path(), &key, &[]).await;
    let signed_in = client
        .post(format!("http://{}/api/v1/login", server.addr))
        .json(&json!({ "username": ADMIN.0, "password": "from-the-file-password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::OK);
    server.stop().await;

    std::fs::write(&settings, "listen-to = \"127.0.0.1:8080\"\n").unwrap();
    let (status, _, stderr) = twofold(
        &[
            "serve",
            "--config",
            settings.to_str().unwrap(),
            "--database-url",
            &url,
        ],
        &[],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown setting `listen-to`"), "{stderr}");
}

/// `twofold config check` prints every setting `serve` would use with
/// where it came from (flag, environment, file, default), the secrets
/// masked, and refuses what `serve` would refuse.
#[test]
fn config_check_prints_the_settings_in_effect_with_their_sources_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("twofold.toml");
    let signing_key = dir.path().join("audit-signing.key");
    std::fs::write(
        &settings,
        format!(
            "login-rate-per-ip = 2\nlisten = \"127.0.0.1:7000\"\n\
             smtp-url = \"smtp://mailer:smtp-secret@mail.example.com:587\"\n\
             audit-checkpoint-minutes = 15\naudit-signing-key-file = \"{}\"\n",
            signing_key.display()
        ),
    )
    .unwrap();
    let (status, stdout, stderr) = twofold(
        &[
            "config",
            "check",
            "--config",
            settings.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9999",
            "--master-key-file",
            "/nonexistent/master.key",
        ],
        &[("TWOFOLD_BOOTSTRAP_ADMIN", "root:root-secret")],
    );
    assert!(status.success(), "{stderr}");
    for line in [
        "listen = \"127.0.0.1:9999\"  # command line",
        "login-rate-per-ip = \"2\"  # file",
        "smtp-url = \"smtp://mailer:********@mail.example.com:587\"  # file",
        "bootstrap-admin = \"root:********\"  # environment",
        "remember-device-hours = \"23\"  # default",
        "audit-checkpoint-minutes = \"15\"  # file",
        &format!(
            "audit-signing-key-file = \"{}\"  # file",
            signing_key.display()
        ),
    ] {
        assert!(
            stdout.lines().any(|printed| printed == line),
            "{line} not in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("secret"), "{stdout}");
    assert!(!signing_key.exists(), "a check creates no key");

    std::fs::write(&signing_key, "not a key\n").unwrap();
    let (status, _, stderr) = twofold(
        &[
            "config",
            "check",
            "--audit-signing-key-file",
            signing_key.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} holds no key", signing_key.display())),
        "{stderr}"
    );

    let (status, _, stderr) = twofold(
        &[
            "config",
            "check",
            "--bootstrap-admin-file",
            "/nonexistent/admin",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot read the secret file"), "{stderr}");
}
