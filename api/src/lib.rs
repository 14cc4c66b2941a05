//! twofold's HTTP API and command line: axum handlers over the domain, the
//! event store and the read models.

mod api_docs;
mod app;
mod auth;
mod client_address;
pub mod config;
mod error;
mod export;
mod extract;
mod new_files;
mod openapi;
mod qr;
mod read_query;
mod respond;
mod routes;
mod serve;
mod settings_file;
mod state;
mod telemetry;
mod web;

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use app::{openapi, start, MailConfig, Running, ServeConfig};
pub use client_address::TrustedProxies;
pub use serve::ConnectionLimits;
pub use twofold_app::{Clock, RelyingParty, Settings};

use config::{
    AuditAction, Cli, Command, ConfigAction, ExportFormat, MasterKeyAction, ProjectionsAction,
};

/// How long the exit waits for tasks that outlived the serve loop.
const LEFTOVER_TASKS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The `twofold` binary.
pub fn main() -> ExitCode {
    let CommandLine { cli, settings } = match parse_command_line() {
        Ok(command_line) => command_line,
        Err(refused) => {
            telemetry::init(telemetry::format_asked_for());
            tracing::error!("{refused}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("twofold: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli.command, settings));
    // The serve loop has already waited its grace period: tasks still
    // running (a client's abandoned request) do not hold the exit up.
    runtime.shutdown_timeout(LEFTOVER_TASKS_WAIT);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped reading (`twofold audit export | head`)
        // had what it wanted.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, in the log's format (JSON under --log-format json).
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line, with what `serve --config FILE` sets for the settings
/// that neither the command line nor the environment gave; a usage error
/// as one line. `--help` and `--version` print and exit here.
fn parse_command_line() -> Result<CommandLine, String> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let parse = |args: Vec<std::ffi::OsString>| {
        Cli::command().try_get_matches_from(args).map_err(|error| {
            if !error.use_stderr() {
                error.exit()
            }
            usage_error_line(&error)
        })
    };
    let mut matches = parse(args.clone())?;
    let mut from_file = Vec::new();
    if let Some(serve) = serve_matches(&matches) {
        if let Some(file) = serve.get_one::<std::path::PathBuf>("config") {
            let flags = settings_file::flags(file, serve)?;
            if !flags.is_empty() {
                from_file = settings_file::names(&flags);
                matches = parse(args.into_iter().chain(flags).collect())?;
            }
        }
    }
    let settings = serve_matches(&matches)
        .map(|serve| settings_file::effective(serve, &from_file))
        .unwrap_or_default();
    let cli = Cli::from_arg_matches(&matches).map_err(|error| usage_error_line(&error))?;
    Ok(CommandLine { cli, settings })
}

/// What the command line asked for, and (for `serve` and `config check`)
/// every setting in effect with where it came from.
struct CommandLine {
    cli: Cli,
    settings: Vec<settings_file::Setting>,
}

/// The matches of `serve`'s flags: `serve`'s own or `config check`'s.
fn serve_matches(matches: &clap::ArgMatches) -> Option<&clap::ArgMatches> {
    match matches.subcommand()? {
        ("serve", serve) => Some(serve),
        ("config", config) => match config.subcommand()? {
            ("check", check) => Some(check),
            _ => None,
        },
        _ => None,
    }
}

/// clap's message on one line: what was wrong, without its advice to try
/// `--help` (said once here).
fn usage_error_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let first = rendered
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("invalid command line");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first} (see twofold --help)")
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn run(command: Command, settings: Vec<settings_file::Setting>) -> anyhow::Result<()> {
    match command {
        Command::Config {
            action: ConfigAction::Check(args),
        } => {
            // Refused as `serve` would refuse it (a secret file that cannot
            // be read, a bad key URI issuer, a signing key file that holds
            // no key...); a missing key file is not created here.
            let config = ServeConfig::from_args(*args)?;
            if let Some(path) = config.audit_signing_key_file.filter(|path| path.exists()) {
                twofold_app::checkpoints::read_signing_key(&path)?;
            }
            for setting in settings {
                println!("{setting}");
            }
            Ok(())
        }
        Command::Serve(args) => {
            let config = ServeConfig::from_args(*args)?;
            let running = start(config).await?;
            if running.has_super_admin {
                tracing::info!("twofold listens on http://{}", running.addr);
            } else {
                tracing::info!(
                    "twofold listens on http://{} — create the first super admin with TWOFOLD_BOOTSTRAP_ADMIN=username:password",
                    running.addr
                );
            }
            running.wait(app::shutdown_signal()).await?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Migrate(args) => {
            let db = args.connect().await?;
            app::migrate(&db).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Projections {
            action: ProjectionsAction::Rebuild(args),
        } => {
            let db = args.connect().await?;
            app::migrate(&db).await?;
            // No `Projector` here: its constructor would first apply the
            // whole backlog one event at a time, only for it to be rebuilt.
            let progress = progress_bar("rebuilding read models");
            let applied = twofold_projections::ReadModels::new(db)
                .rebuild_read_models(|count| progress.set_position(count))
                .await?;
            progress.finish_and_clear();
            println!("rebuilt read models from {applied} events");
            Ok(())
        }
        Command::Backup(args) => {
            let db = args.database.connect_existing().await?;
            let bytes = twofold_store::backup_sqlite(&db, &args.to).await?;
            println!(
                "wrote {} ({bytes} bytes); the master key is not in it",
                args.to.display()
            );
            Ok(())
        }
        Command::MasterKey {
            action: MasterKeyAction::Rotate(args),
        } => {
            let db = args.database.connect_existing().await?;
            let resealed =
                twofold_app::master_key::rotate(&db, &args.master_key_file, &args.new_key_file)
                    .await?;
            println!(
                "sealed {resealed} secrets again under {}; start with --master-key-file {}",
                args.new_key_file.display(),
                args.new_key_file.display()
            );
            Ok(())
        }
        Command::Audit { action } => audit(action).await,
    }
}

/// `twofold audit ...`: none migrates; `verify` and `export` only read, so
/// a cron job can run them with a role that may only SELECT.
async fn audit(action: AuditAction) -> anyhow::Result<()> {
    match action {
        AuditAction::Verify(args) => {
            let checkpoints = twofold_projections::CheckpointCheck {
                keys: args
                    .public_keys
                    .iter()
                    .map(|file| read_public_key(file))
                    .collect::<anyhow::Result<_>>()?,
                kept_elsewhere: match &args.checkpoints {
                    Some(file) => read_checkpoints(file)?,
                    None => Vec::new(),
                },
            };
            let db = args.database.connect_existing().await?;
            let progress = progress_bar("verifying the audit trail");
            let report = twofold_projections::ReadModels::new(db)
                .verify_audit_trail(args.expect_head.as_ref(), &checkpoints, |count| {
                    progress.set_position(count)
                })
                .await?;
            progress.finish_and_clear();
            println!("{}", serde_json::to_string(&report)?);
            if let Some(mismatch) = &report.first_mismatch {
                anyhow::bail!("the audit trail does not match the events: {mismatch}");
            }
            Ok(())
        }
        AuditAction::Checkpoint(args) => {
            // As `serve` does: a missing key file gets a new key (whose
            // checkpoints verify only once its public key is published).
            let (key, _) =
                twofold_app::checkpoints::signing_key_file(&args.audit_signing_key_file)?;
            let db = args.database.connect_existing().await?;
            let projector = twofold_projections::Projector::new(db).await?;
            let checkpoint = twofold_app::checkpoints::sign_checkpoint(
                &projector,
                &key,
                twofold_app::clock::system_now(),
            )
            .await
            .context("cannot sign a checkpoint (has `twofold migrate` run?)")?;
            match checkpoint {
                Some(checkpoint) => println!(
                    "{}",
                    serde_json::to_string(&routes::checkpoints::CheckpointView::from(checkpoint))?
                ),
                None => println!(
                    "nothing to sign: the audit trail is empty or its head is signed already"
                ),
            }
            Ok(())
        }
        AuditAction::Export(args) => {
            use futures::TryStreamExt;
            use tokio::io::AsyncWriteExt;

            let db = args.database.connect_existing().await?;
            let format = match (args.format, args.with_chain) {
                (ExportFormat::Csv, false) => export::AuditFormat::Csv,
                (ExportFormat::Jsonl, false) => export::AuditFormat::JsonLines,
                (ExportFormat::Jsonl, true) => export::AuditFormat::JsonLinesWithChain,
                (ExportFormat::Csv, true) => {
                    anyhow::bail!("--with-chain goes with --format jsonl (the CSV columns stay)")
                }
            };
            let mut rows = std::pin::pin!(export::audit_rows(
                twofold_projections::ReadModels::new(db),
                twofold_projections::AuditFilter::default(),
                format
            ));
            let mut stdout = tokio::io::stdout();
            while let Some(chunk) = rows.try_next().await? {
                stdout.write_all(&chunk).await?;
            }
            stdout.flush().await?;
            Ok(())
        }
    }
}

/// An audit public key from `file`: the `public_key` text as the service
/// serves it, or the whole answer of GET /api/v1/audit/public-key (saved
/// with `curl > FILE`).
fn read_public_key(
    file: &std::path::Path,
) -> anyhow::Result<twofold_domain::checkpoint::AuditPublicKey> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the public key file {}", file.display()))?;
    let served: Option<routes::checkpoints::PublicKeyView> = serde_json::from_str(&text).ok();
    let key = served.map_or(text, |served| served.public_key);
    twofold_domain::checkpoint::AuditPublicKey::parse(&key)
        .with_context(|| format!("the public key file {} holds no key", file.display()))
}

/// Checkpoints from `file`, as GET /api/v1/audit/checkpoints lists them.
fn read_checkpoints(
    file: &std::path::Path,
) -> anyhow::Result<Vec<twofold_domain::checkpoint::SignedCheckpoint>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the checkpoints file {}", file.display()))?;
    let list: routes::checkpoints::CheckpointList =
        serde_json::from_str(&text).with_context(|| {
            format!(
                "the checkpoints file {} is not the answer of GET /api/v1/audit/checkpoints",
                file.display()
            )
        })?;
    Ok(list.checkpoints.into_iter().map(Into::into).collect())
}

/// A spinner with a count on a terminal; nothing when piped.
fn progress_bar(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {pos} events ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message);
    bar
}
