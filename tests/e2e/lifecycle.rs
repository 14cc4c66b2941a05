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
    binary, default_settings, fresh_postgres_database, spawn_app, spawn_app_configured, Backend,
    ADMIN,
};
use crate::on_both_backends;
use crate::processes::free_port;

on_both_backends!(
    a_store_restored_without_its_master_key_refuses_to_start_and_writes_no_key,
    a_master_key_that_does_not_open_the_stored_secrets_is_refused,
    a_start_that_cannot_listen_leaves_no_new_file_behind,
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
    let output = tokio::time::timeout(
        PATIENCE,
        serve_command(database_url, dir, key, listen, &[]).output(),
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
