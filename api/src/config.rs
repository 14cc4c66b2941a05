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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve(Box<ServeArgs>),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Manage the read models.
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// Check or export the audit trail (reads only).
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
    /// with the trail; prints a JSON report, exits non-zero on a mismatch.
    Verify(VerifyArgs),
    /// Write every audit row to standard output, oldest first.
    Export(ExportArgs),
}

#[derive(Clone, Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// A head kept outside the database, `POSITION:HEX` from an earlier
    /// report (`head_position`:`head`): the history must still give it.
    #[arg(long)]
    pub expect_head: Option<twofold_projections::ExpectedHead>,
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
    #[arg(long, value_enum)]
    pub format: ExportFormat,
}

#[derive(Clone, Debug, Args)]
pub struct DatabaseArgs {
    /// `sqlite://path` (created on first start) or `postgres://...`.
    #[arg(
        long,
        env = "TWOFOLD_DATABASE_URL",
        default_value = "sqlite://twofold.db"
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
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[arg(long, env = "TWOFOLD_LISTEN", default_value = "127.0.0.1:8080")]
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
    /// Absolute lifetime of a session.
    #[arg(long, env = "TWOFOLD_SESSION_HOURS", default_value_t = 12)]
    pub session_hours: u32,
    /// A session unused this long ends.
    #[arg(long, env = "TWOFOLD_SESSION_IDLE_MINUTES", default_value_t = 60)]
    pub session_idle_minutes: u32,
    /// TOTP hash for new enrollments (existing ones keep theirs).
    #[arg(long, env = "TWOFOLD_TOTP_ALGORITHM", value_enum, default_value_t = TotpHash::Sha1)]
    pub totp_algorithm: TotpHash,
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
    #[arg(long, env = "TWOFOLD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// `username:password` of a super admin to create when the store has none.
    #[arg(
        long,
        env = "TWOFOLD_BOOTSTRAP_ADMIN",
        hide_env_values = true,
        hide = true
    )]
    pub bootstrap_admin: Option<String>,
}

/// The Key URI format forbids a colon in the issuer (apps split the label on
/// it), and an empty issuer leaves the account unlabelled in the app.
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
    use super::parse_totp_issuer;

    #[test]
    fn a_totp_issuer_with_a_colon_or_nothing_in_it_is_refused() {
        assert_eq!(parse_totp_issuer(" Acme & Co ").as_deref(), Ok("Acme & Co"));
        assert!(parse_totp_issuer("Acme:Back office").is_err());
        assert!(parse_totp_issuer("   ").is_err());
        assert!(parse_totp_issuer("Acme\nCo").is_err());
    }
}
