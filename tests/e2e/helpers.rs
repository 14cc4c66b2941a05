//! One way to start twofold for a test: `spawn_app(Backend)`, on a random
//! port, against a fresh SQLite file or a fresh PostgreSQL database.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::Connection;
use twofold_api::{
    Clock, ConnectionLimits, MailConfig, Running, ServeConfig, Settings, TrustedProxies,
};
use twofold_domain::totp::TotpParameters;
use twofold_domain::TwoFactorPolicy;

pub const ADMIN: (&str, &str) = ("root", "root-password");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server the tests use; CI starts it (`.ci/run`).
pub fn postgres_server_url() -> String {
    std::env::var("TWOFOLD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A new, empty PostgreSQL database; fails the test loudly when the server
/// is down, so PostgreSQL tests never skip silently.
pub async fn fresh_postgres_database() -> String {
    let server = postgres_server_url();
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("PostgreSQL must listen on 127.0.0.1:5432 (see README: .ci/run starts it)");
    let name = format!("twofold_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    format!("{server}/{name}")
}

/// A clock the test moves by hand.
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap();
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// The service's address as passkeys see it (`--public-url`): the tests'
/// software authenticator signs for this origin and RP ID.
pub const PUBLIC_URL: &str = "https://twofold.test";

pub fn default_settings() -> Settings {
    Settings {
        policy: TwoFactorPolicy::default(),
        session_lifetime: Duration::hours(12),
        session_idle: Duration::hours(1),
        remember_device: Duration::hours(23),
        totp: TotpParameters::default(),
        totp_issuer: "twofold".into(),
        relying_party: twofold_api::RelyingParty {
            public_url: PUBLIC_URL.parse().unwrap(),
            name: "twofold".into(),
        },
        login_rate_per_ip: 10_000,
        password_hash_workers: std::num::NonZeroUsize::new(2).unwrap(),
        password_hash_queue: 64,
    }
}

pub struct TestApp {
    pub backend: Backend,
    pub base: String,
    /// Where `/metrics` is served when it has a listener of its own.
    pub metrics_base: Option<String>,
    pub database_url: String,
    pub clock: Arc<ManualClock>,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    running: Option<Running>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, default_settings()).await
}

pub async fn spawn_app_with(backend: Backend, settings: Settings) -> TestApp {
    spawn_app_mailing(backend, settings, None).await
}

/// Starts the app sending email through this SMTP server (else into
/// `dir/mail` as .eml files).
pub async fn spawn_app_mailing(
    backend: Backend,
    settings: Settings,
    smtp_url: Option<String>,
) -> TestApp {
    spawn_app_configured(backend, settings, |config| config.mail.smtp_url = smtp_url).await
}

/// Starts the app with the test defaults, changed by `configure`.
pub async fn spawn_app_configured(
    backend: Backend,
    settings: Settings,
    configure: impl FnOnce(&mut ServeConfig),
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("twofold.db").display()),
        Backend::Postgres => fresh_postgres_database().await,
    };
    let clock = Arc::new(ManualClock(Mutex::new(chrono::Utc::now())));
    let mut config = ServeConfig {
        database_url: database_url.clone(),
        // Tests run side by side on one PostgreSQL (max_connections 100).
        database_max_connections: 4,
        mail: MailConfig {
            smtp_url: None,
            directory: dir.path().join("mail"),
            from: "twofold <no-reply@localhost>".into(),
        },
        listen: "127.0.0.1:0".parse().unwrap(),
        master_key_file: dir.path().join("master.key"),
        settings,
        bootstrap_admin: Some(format!("{}:{}", ADMIN.0, ADMIN.1)),
        clock: clock.clone(),
        connections: ConnectionLimits::default(),
        trusted_proxies: TrustedProxies::default(),
        metrics_listen: None,
        audit_signing_key_file: Some(dir.path().join("audit-signing.key")),
        audit_checkpoint_every: None,
    };
    configure(&mut config);
    let database_url = config.database_url.clone();
    let running = twofold_api::start(config).await.expect("twofold starts");
    TestApp {
        backend,
        base: format!("http://{}", running.addr),
        metrics_base: running.metrics_addr.map(|addr| format!("http://{addr}")),
        database_url,
        clock,
        client: reqwest::Client::new(),
        dir,
        running: Some(running),
    }
}

/// An answer: status, JSON body (Null when empty or not JSON) and headers.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    pub fn position(&self) -> Option<i64> {
        self.headers
            .get("twofold-position")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }
}

impl TestApp {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
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

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.request(Method::POST, path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Answer {
        self.request(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str, body: Option<Value>) -> Answer {
        self.request(Method::DELETE, path, Some(token), body).await
    }

    pub async fn login(&self, username: &str, password: &str) -> Answer {
        self.post(
            "/api/v1/login",
            None,
            json!({ "username": username, "password": password }),
        )
        .await
    }

    /// Signs in a user without 2FA and returns the session token.
    pub async fn token(&self, username: &str, password: &str) -> String {
        let answer = self.login(username, password).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        answer.body["session_token"]
            .as_str()
            .expect("a session token")
            .to_string()
    }

    pub async fn admin_token(&self) -> String {
        self.token(ADMIN.0, ADMIN.1).await
    }

    /// Creates a user as the bootstrap super admin; returns its id.
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        email: Option<&str>,
        role: &str,
    ) -> String {
        let admin = self.admin_token().await;
        let answer = self
            .post(
                "/api/v1/users",
                Some(&admin),
                json!({ "username": username, "password": password, "email": email, "role": role }),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        answer.body["id"].as_str().unwrap().to_string()
    }

    /// Enrolls TOTP for a signed-in user with codes from oathtool; returns
    /// the base32 secret and the recovery codes.
    pub async fn enroll_totp(&self, token: &str) -> (String, Vec<String>) {
        let started = self
            .post("/api/v1/me/two-factor/totp", Some(token), json!({}))
            .await;
        assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
        let secret = started.body["secret"].as_str().unwrap().to_string();
        let code = self.code(&secret);
        let confirmed = self
            .post(
                "/api/v1/me/two-factor/totp/confirm",
                Some(token),
                json!({ "code": code }),
            )
            .await;
        assert_eq!(confirmed.status, StatusCode::OK, "{confirmed:?}");
        let recovery = confirmed.body["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        (secret, recovery)
    }

    /// The code an authenticator app shows now (by the app's clock).
    pub fn code(&self, secret: &str) -> String {
        oathtool_code(secret, self.clock.now())
    }

    /// Turns 2FA off from the user's own session, as the contract asks:
    /// the password and a fresh code (the next step's, so never one
    /// already accepted).
    pub async fn turn_two_factor_off(
        &self,
        token: &str,
        password: &str,
        secret: Option<&str>,
    ) -> Answer {
        let code = secret.map(|secret| {
            self.next_step();
            self.code(secret)
        });
        self.delete(
            "/api/v1/me/two-factor",
            token,
            Some(json!({ "password": password, "code": code })),
        )
        .await
    }

    /// Moves the app's clock to the next 30-second step, so a new code exists.
    pub fn next_step(&self) {
        self.clock.advance(Duration::seconds(30));
    }

    /// Signs in with password and TOTP; returns the verify answer.
    pub async fn login_with_code(
        &self,
        username: &str,
        password: &str,
        secret: &str,
        remember: bool,
    ) -> Answer {
        let login = self.login(username, password).await;
        assert_eq!(login.body["status"], "two_factor_required", "{login:?}");
        let challenge = login.body["challenge_id"].as_str().unwrap();
        self.post(
            &format!("/api/v1/login/challenges/{challenge}/verify"),
            None,
            json!({ "method": "totp", "code": self.code(secret), "remember_device": remember }),
        )
        .await
    }

    /// Rows in the events table: what a test checks was or wasn't stored.
    /// Runs SQL straight on the test database (several statements allowed),
    /// as someone with database access and no business there would.
    pub async fn tamper(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.database_url)
                    .await
                    .unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.database_url)
                    .await
                    .unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
        }
    }

    pub async fn event_count(&self) -> i64 {
        self.scalar("SELECT count(*) FROM events").await
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.database_url)
                    .await
                    .unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.database_url)
                    .await
                    .unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
            }
        }
    }

    /// The first column of every row `sql` gives, as text.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.database_url)
                    .await
                    .unwrap();
                sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.database_url)
                    .await
                    .unwrap();
                sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
            }
        }
    }

    /// Each stored event's type and metadata for one user, in order.
    pub async fn history(&self, user_id: &str) -> Vec<(String, Value)> {
        let sql = "SELECT event_type, CAST(metadata AS TEXT) FROM events WHERE aggregate_id = $1 ORDER BY sequence";
        let rows: Vec<(String, String)> = match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.database_url)
                    .await
                    .unwrap();
                sqlx::query_as(sql)
                    .bind(user_id)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.database_url)
                    .await
                    .unwrap();
                sqlx::query_as(sql)
                    .bind(user_id)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
            }
        };
        rows.into_iter()
            .map(|(kind, metadata)| (kind, serde_json::from_str(&metadata).unwrap()))
            .collect()
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }

    /// Stops the app and hands over its directory (the SQLite file, the
    /// master key, the mail), for a test that starts something else on it.
    pub async fn stop_keeping_files(mut self) -> tempfile::TempDir {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
        self.dir
    }
}

/// An independent TOTP client: Debian's oathtool (installed by .ci/run).
pub fn oathtool_code(secret: &str, at: DateTime<Utc>) -> String {
    let output = Command::new("oathtool")
        .args([
            "--totp",
            "--base32",
            "--now",
            &at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            secret,
        ])
        .output()
        .expect("oathtool is installed (apt-get install oathtool)");
    assert!(output.status.success(), "oathtool failed: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The built `twofold` binary, for tests that run real processes.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_twofold"))
}

/// Runs every listed `async fn name(backend: Backend)` on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}
