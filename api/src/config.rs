//! The `twofold` command line: every flag also read from its environment variable.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "twofold",
    version,
    about = "Sign-in and two-factor authentication service"
)]
pub struct Cli {
    /// Log lines for people (`text`) or for machines (`json`).
    #[arg(long, env = "TWOFOLD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TotpHash {
    Sha1,
    Sha256,
    Sha512,
}

/// Settings read from the environment only.
const SERVE_ENVIRONMENT: &str = "Environment only:
  TWOFOLD_BOOTSTRAP_ADMIN=username:password
          Creates that super admin when the store has none yet
          (or TWOFOLD_BOOTSTRAP_ADMIN_FILE, --bootstrap-admin-file: a file holding it).
  RUST_LOG=FILTER
          Which log lines are written (default: info,sqlx=warn,tower_http=info);
          e.g. RUST_LOG=debug, or RUST_LOG=warn,twofold_api=info.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    #[command(after_help = SERVE_ENVIRONMENT)]
    Serve(Box<ServeArgs>),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Manage the read models.
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// Write a consistent copy of a SQLite store, while the service runs.
    ///
    /// The copy holds no master key: keep the key file apart from the data
    /// (docs/operations.md, Backup and restore).
    Backup(BackupArgs),
    /// Check the settings `serve` would run with.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Manage the master key that seals the TOTP secrets.
    MasterKey {
        #[command(subcommand)]
        action: MasterKeyAction,
    },
    /// Check, export or sign the audit trail.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsAction {
    /// Empty every read model and apply the whole event history again.
    Rebuild(DatabaseArgs),
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Recompute the tamper-evidence chains from the events and compare them
    /// with the trail (and, with --public-key, with every signed
    /// checkpoint); prints a JSON report, exits non-zero on a mismatch.
    /// Reads only.
    Verify(VerifyArgs),
    /// Write every audit row to standard output, oldest first. Reads only.
    Export(ExportArgs),
    /// Sign where the audit trail stands now (after catching the read
    /// models up) and keep the checkpoint; prints it as JSON.
    Checkpoint(CheckpointArgs),
}

#[derive(Clone, Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// A head kept outside the database, `POSITION:HEX` from an earlier
    /// report (`head_position`:`head`): the history must still give it.
    #[arg(long)]
    pub expect_head: Option<twofold_projections::ExpectedHead>,
    /// A file holding the audit public key as GET /api/v1/audit/public-key
    /// serves it (`public_key`): every stored checkpoint must be signed by
    /// one of the keys given (repeat the flag after a change of key) and
    /// name the head the history gives at its position.
    #[arg(long = "public-key", value_name = "FILE")]
    pub public_keys: Vec<PathBuf>,
    /// Checkpoints kept outside the database, as GET
    /// /api/v1/audit/checkpoints lists them: checked beside the stored
    /// ones, so deleting checkpoints from the database hides no cut.
    #[arg(long, value_name = "FILE", requires = "public_keys")]
    pub checkpoints: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The service's audit signing key (created, mode 0600, when missing).
    #[arg(long, env = "TWOFOLD_AUDIT_SIGNING_KEY_FILE")]
    pub audit_signing_key_file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print every setting in effect (from the flags, the environment, the
    /// --config file or the default, as each line says), secrets masked;
    /// exits non-zero where `serve` would refuse to start on them.
    Check(Box<ServeArgs>),
}

#[derive(Debug, Subcommand)]
pub enum MasterKeyAction {
    /// Seal every stored secret again under a new key, with the service
    /// stopped; afterwards start it with --master-key-file set to the new
    /// file (the old key is refused). Safe to interrupt and run again.
    Rotate(RotateArgs),
}

#[derive(Clone, Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The key file the secrets are sealed with now.
    #[arg(long, env = "TWOFOLD_MASTER_KEY_FILE")]
    pub master_key_file: PathBuf,
    /// Where to write the new key (must not exist; created with mode 0600).
    #[arg(long)]
    pub new_key_file: PathBuf,
}

#[derive(Clone, Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The file to write (must not exist yet).
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Clone, Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// `csv` (a header line, then one row per line) or `jsonl` (one JSON
    /// object per line).
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// With `jsonl`: add each row's `chain_hash` and `head_hash`, so that an
    /// auditor can check the export against the signed checkpoints offline
    /// (docs/operations.md).
    #[arg(long)]
    pub with_chain: bool,
}

#[derive(Clone, Debug, Args)]
pub struct DatabaseArgs {
    /// `sqlite://path` (created on first start) or `postgres://...`.
    #[arg(
        long,
        env = "TWOFOLD_DATABASE_URL",
        default_value = "sqlite://twofold.db",
        value_parser = parse_database_url
    )]
    pub database_url: String,
    /// Connections the process keeps to the store at most.
    #[arg(long, env = "TWOFOLD_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
}

impl DatabaseArgs {
    pub async fn connect(&self) -> anyhow::Result<twofold_projections::Db> {
        twofold_store::connect(&self.database_url, self.database_max_connections).await
    }

    /// For commands that only use a store that exists.
    pub async fn connect_existing(&self) -> anyhow::Result<twofold_projections::Db> {
        twofold_store::connect_existing(&self.database_url, self.database_max_connections).await
    }
}

/// The store's URL, refused at once (a usage error) unless it names a
/// store twofold runs on.
fn parse_database_url(url: &str) -> Result<String, String> {
    let known = ["sqlite:", "postgres://", "postgresql://"];
    if known.iter().any(|scheme| url.starts_with(scheme)) {
        Ok(url.to_string())
    } else {
        Err("expected sqlite://PATH or postgres://USER@HOST/DATABASE".to_string())
    }
}

/// `HOST:PORT`, the host an address or a name (`localhost:8080`); a name
/// is resolved once, at start, to its first address.
fn parse_listen(address: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .map_err(|error| format!("expected HOST:PORT ({error})"))?
        .next()
        .ok_or_else(|| format!("{address} names no address"))
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Settings from this TOML file, each key named as a long flag without
    /// `--` (listen = "0.0.0.0:8080"); a flag or environment variable
    /// overrides the file.
    #[arg(long, env = "TWOFOLD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address to serve HTTP on: `HOST:PORT` (`0.0.0.0:8080` for every
    /// interface, `localhost:8080`).
    #[arg(long, env = "TWOFOLD_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Write each outgoing email as an .eml file here (the default when no SMTP server is set).
    #[arg(long, env = "TWOFOLD_MAIL_DIR")]
    pub mail_dir: Option<PathBuf>,
    /// Send email through this SMTP server instead (smtp://host:port).
    #[arg(long, env = "TWOFOLD_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// Sender of outgoing email.
    #[arg(
        long,
        env = "TWOFOLD_MAIL_FROM",
        default_value = "twofold <no-reply@localhost>"
    )]
    pub mail_from: String,
    /// RFC 3339 instant from which every user must have 2FA.
    #[arg(long, env = "TWOFOLD_MANDATORY_FROM")]
    pub mandatory_from: Option<DateTime<Utc>>,
    /// Hours a device the user asked to remember skips the second factor.
    #[arg(long, env = "TWOFOLD_REMEMBER_DEVICE_HOURS", default_value_t = 23)]
    pub remember_device_hours: u32,
    /// Sign-in attempts a minute from one address.
    #[arg(long, env = "TWOFOLD_LOGIN_RATE_PER_IP", default_value_t = 300)]
    pub login_rate_per_ip: u32,
    /// Threads that hash passwords, each keeping a 19 MiB buffer (default: one per core).
    #[arg(long, env = "TWOFOLD_PASSWORD_HASH_WORKERS")]
    pub password_hash_workers: Option<NonZeroUsize>,
    /// Password checks (sign-in, password change, new user) admitted beyond
    /// what the workers run at once; more are answered 503 at once
    /// (default: 32 per worker).
    #[arg(long, env = "TWOFOLD_PASSWORD_HASH_QUEUE")]
    pub password_hash_queue: Option<usize>,
    /// Key that encrypts TOTP secrets at rest; created (mode 0600) when missing.
    /// Default: next to the SQLite file; required with PostgreSQL.
    #[arg(long, env = "TWOFOLD_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Ed25519 key that signs audit checkpoints (64 hex digits); created
    /// (mode 0600) when missing. Its public half is served at
    /// /api/v1/audit/public-key. Default: next to the SQLite file
    /// (NAME.audit-signing-key); with PostgreSQL unset, and then no
    /// checkpoint is signed.
    #[arg(long, env = "TWOFOLD_AUDIT_SIGNING_KEY_FILE")]
    pub audit_signing_key_file: Option<PathBuf>,
    /// Minutes between signed audit checkpoints (a decimal number, e.g.
    /// 0.5); 0 turns them off.
    ///
    /// Each interval the service signs where the audit trail stands
    /// (position, head digest, time) with --audit-signing-key-file, if the
    /// trail moved since the last checkpoint. `twofold audit verify
    /// --public-key` then detects a history cut, rewritten or reordered
    /// before any checkpoint.
    #[arg(
        long,
        env = "TWOFOLD_AUDIT_CHECKPOINT_MINUTES",
        default_value = "60",
        value_parser = parse_checkpoint_interval
    )]
    pub audit_checkpoint_minutes: CheckpointInterval,
    /// Absolute lifetime of a session.
    #[arg(long, env = "TWOFOLD_SESSION_HOURS", default_value_t = 12)]
    pub session_hours: u32,
    /// A session unused this long ends.
    #[arg(long, env = "TWOFOLD_SESSION_IDLE_MINUTES", default_value_t = 60)]
    pub session_idle_minutes: u32,
    /// TOTP hash for new enrollments (existing ones keep theirs).
    #[arg(long, env = "TWOFOLD_TOTP_ALGORITHM", value_enum, default_value_t = TotpHash::Sha1)]
    pub totp_algorithm: TotpHash,
    /// Digits of a TOTP code for new enrollments (6 to 8).
    #[arg(long, env = "TWOFOLD_TOTP_DIGITS", default_value_t = 6)]
    pub totp_digits: u32,
    /// Seconds per TOTP step.
    #[arg(long, env = "TWOFOLD_TOTP_PERIOD", default_value_t = 30)]
    pub totp_period: u64,
    /// Steps before and after the current one that are accepted.
    #[arg(long, env = "TWOFOLD_TOTP_SKEW", default_value_t = 1)]
    pub totp_skew: u8,
    /// Issuer shown by authenticator apps (no colon: the key URI's label is
    /// `issuer:account`).
    #[arg(long, env = "TWOFOLD_TOTP_ISSUER", default_value = "twofold", value_parser = parse_totp_issuer)]
    pub totp_issuer: String,
    /// The address people reach the service at (`https://login.example.com`):
    /// passkeys are bound to its host (the WebAuthn RP ID) and accepted
    /// only from its origin. Default: `http://localhost:<port of --listen>`.
    #[arg(long, env = "TWOFOLD_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<url::Url>,
    /// Seconds a client has to send a request's headers, and then again its
    /// body.
    ///
    /// A connection whose headers (or, between requests, whose next request)
    /// do not arrive in time is closed; a body that does not arrive in time
    /// is answered 408 and its connection closed. This keeps slow or stalled
    /// clients (slowloris) from holding connections, and a stop, open.
    #[arg(
        long,
        env = "TWOFOLD_REQUEST_READ_TIMEOUT_SECONDS",
        default_value_t = crate::serve::DEFAULT_REQUEST_READ_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..),
    )]
    pub request_read_timeout_seconds: u64,
    /// Seconds a stop (SIGTERM, Ctrl-C) waits for requests in progress.
    ///
    /// On a stop the service accepts no new connection and lets requests in
    /// progress finish; connections still open when this period ends are
    /// closed and the process exits, whatever its clients do.
    #[arg(
        long,
        env = "TWOFOLD_SHUTDOWN_GRACE_SECONDS",
        default_value_t = crate::serve::DEFAULT_SHUTDOWN_GRACE.as_secs(),
    )]
    pub shutdown_grace_seconds: u64,
    /// Reverse proxies whose X-Forwarded-For header names the client:
    /// comma-separated addresses or CIDR blocks (10.0.0.0/8,2001:db8::/32).
    ///
    /// When the TCP peer is one of them, the client is the right-most
    /// X-Forwarded-For address that is not itself a trusted proxy; from any
    /// other peer the header is ignored. That address is what the per-address
    /// sign-in limit counts and what events record as `ip`. Default: none
    /// (the header is always ignored).
    #[arg(
        long,
        env = "TWOFOLD_TRUSTED_PROXIES",
        default_value = "",
        hide_default_value = true
    )]
    pub trusted_proxies: crate::client_address::TrustedProxies,
    /// Serve /metrics on this address (e.g. 127.0.0.1:9090) instead of on
    /// --listen, which then answers 404 for it.
    ///
    /// Lets operators keep metrics off the public listener (reachable only
    /// from the monitoring network). Default: unset, /metrics on --listen.
    #[arg(long, env = "TWOFOLD_METRICS_LISTEN", value_parser = parse_listen)]
    pub metrics_listen: Option<SocketAddr>,
    /// `username:password` of a super admin to create when the store has none.
    #[arg(
        long,
        env = "TWOFOLD_BOOTSTRAP_ADMIN",
        hide_env_values = true,
        hide = true
    )]
    pub bootstrap_admin: Option<String>,
    /// A file holding `username:password` for the first super admin (a
    /// secret kept in a file, as systemd credentials or Docker secrets are).
    #[arg(long, env = "TWOFOLD_BOOTSTRAP_ADMIN_FILE")]
    pub bootstrap_admin_file: Option<PathBuf>,
    /// A file holding --smtp-url, with its password.
    #[arg(long, env = "TWOFOLD_SMTP_URL_FILE")]
    pub smtp_url_file: Option<PathBuf>,
}

/// `--audit-checkpoint-minutes`: how often to sign, or never.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CheckpointInterval {
    Off,
    Every(std::time::Duration),
}

/// Minutes as a decimal number; 0 is off. Refused: a negative number, one
/// that is not finite, or one too large for a duration.
fn parse_checkpoint_interval(text: &str) -> Result<CheckpointInterval, String> {
    let minutes: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of minutes, not {text:?}"))?;
    if minutes == 0.0 {
        return Ok(CheckpointInterval::Off);
    }
    if minutes.is_nan() || minutes < 0.0 {
        return Err("the minutes between checkpoints must be 0 (off) or more".into());
    }
    std::time::Duration::try_from_secs_f64(minutes * 60.0)
        .map(CheckpointInterval::Every)
        .map_err(|_| format!("{text} minutes is too long an interval"))
}

/// The Key URI format forbids a colon in the issuer (apps split the label on
/// it), and an empty issuer leaves the account unlabelled in the app.
fn parse_public_url(value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value.trim()).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("expected an http:// or https:// URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL names no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL may not hold a user name or password".into());
    }
    Ok(url)
}

/// `--public-url`, or `http://localhost:<port of --listen>`.
pub fn public_url_or_default(public_url: Option<url::Url>, listen: SocketAddr) -> url::Url {
    public_url.unwrap_or_else(|| {
        let default = format!("http://localhost:{}", listen.port());
        url::Url::parse(&default).unwrap_or_else(|_| unreachable!("a valid URL: {default}"))
    })
}

fn parse_totp_issuer(value: &str) -> Result<String, String> {
    let issuer = value.trim();
    if issuer.is_empty() {
        return Err("the TOTP issuer must not be empty".into());
    }
    if issuer.contains(':') {
        return Err(
            "the TOTP issuer must not contain ':' (the otpauth label is issuer:account)".into(),
        );
    }
    if issuer.chars().any(char::is_control) {
        return Err("the TOTP issuer must not contain control characters".into());
    }
    Ok(issuer.to_string())
}

#[cfg(test)]
mod tests {
    use super::{
        parse_checkpoint_interval, parse_public_url, parse_totp_issuer, public_url_or_default,
        CheckpointInterval,
    };
    use std::time::Duration;

    #[test]
    fn checkpoint_minutes_are_a_decimal_number_and_zero_is_off() {
        assert_eq!(parse_checkpoint_interval("0"), Ok(CheckpointInterval::Off));
        assert_eq!(
            parse_checkpoint_interval("60"),
            Ok(CheckpointInterval::Every(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse_checkpoint_interval("0.05"),
            Ok(CheckpointInterval::Every(Duration::from_secs(3)))
        );
        for refused in ["-1", "NaN", "inf", "1e300", "soon", ""] {
            assert!(parse_checkpoint_interval(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn a_public_url_is_http_or_https_with_a_host() {
        assert!(parse_public_url("https://login.example.com").is_ok());
        assert!(parse_public_url("ftp://login.example.com").is_err());
        assert!(parse_public_url("https://user:pw@login.example.com").is_err());
        assert!(parse_public_url("login.example.com").is_err());
    }

    #[test]
    fn the_public_url_defaults_to_localhost_on_the_listen_port() {
        let listen = "0.0.0.0:9191".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(
            public_url_or_default(None, listen).as_str(),
            "http://localhost:9191/"
        );
    }

    #[test]
    fn a_totp_issuer_with_a_colon_or_nothing_in_it_is_refused() {
        assert_eq!(parse_totp_issuer(" Acme & Co ").as_deref(), Ok("Acme & Co"));
        assert!(parse_totp_issuer("Acme:Back office").is_err());
        assert!(parse_totp_issuer("   ").is_err());
        assert!(parse_totp_issuer("Acme\nCo").is_err());
    }
}
