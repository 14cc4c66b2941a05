//! `twofold-load`: seeds a store, drives load at running `twofold serve`
//! processes, measures the machine's own limits, and prints the table.
//! See docs/benchmarks.md and bench/run-all.sh.

use twofold_bench::{baseline, report, scenarios, seed};

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "twofold-load",
    about = "Load driver and benchmarks for twofold"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bulk-load users and their histories into a store.
    Seed(seed::SeedArgs),
    /// Run one load scenario against running servers.
    Run(Box<scenarios::RunArgs>),
    /// Measure H (argon2id/s on one core), C (durable commits/s) and R (PostgreSQL round trips/s).
    Baseline(BaselineArgs),
    /// Time `twofold projections rebuild` and `twofold audit verify`.
    Rebuild(RebuildArgs),
    /// Record the resident memory of server processes.
    Mem(MemArgs),
    /// Print the table of a results file.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
struct BaselineArgs {
    /// PostgreSQL database for C (a scratch table is made and dropped).
    #[arg(long)]
    postgres_url: Option<String>,
    /// Directory for the SQLite scratch file.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, default_value_t = 16)]
    postgres_clients: usize,
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RebuildArgs {
    #[arg(long, default_value = "target/release/twofold")]
    twofold_bin: PathBuf,
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct MemArgs {
    #[arg(long = "server-pid", required = true)]
    server_pids: Vec<u32>,
    #[arg(long)]
    label: String,
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ReportArgs {
    results: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("twofold-load: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("twofold-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Seed(args) => {
            let out = args.out.clone();
            let record = seed::seed(args).await?;
            println!(
                "seeded {} users, {} events: load {:.1} s ({:.0} events/s), indexes {:.1} s, read models {:.1} s, analyze {:.1} s{}",
                record["users"],
                record["events"],
                record["load_seconds"].as_f64().unwrap_or(0.0),
                record["load_events_per_second"].as_f64().unwrap_or(0.0),
                record["index_seconds"].as_f64().unwrap_or(0.0),
                record["read_model_seconds"].as_f64().unwrap_or(0.0),
                record["analyze_seconds"].as_f64().unwrap_or(0.0),
                if record["verify"].is_null() {
                    String::new()
                } else {
                    format!(
                        ", audit verify {:.0} events/s",
                        record["verify"]["events_per_second"].as_f64().unwrap_or(0.0)
                    )
                },
            );
            scenarios::append(out.as_ref(), &[record])
        }
        Command::Run(args) => {
            let out = args.out.clone();
            let records = scenarios::run(*args).await?;
            scenarios::append(out.as_ref(), &records)
        }
        Command::Baseline(args) => {
            let mut records = vec![];
            let seconds = args.seconds;
            let h =
                tokio::task::spawn_blocking(move || baseline::argon2_per_core(seconds)).await??;
            println!(
                "H              {:.1} argon2id hashes per CPU-second of one core ({:.1}/s by the wall clock)",
                h["per_second"].as_f64().unwrap_or(0.0),
                h["per_wall_second"].as_f64().unwrap_or(0.0)
            );
            records.push(h);
            std::fs::create_dir_all(&args.dir)?;
            let c = baseline::sqlite_commits(&args.dir, args.seconds).await?;
            println!(
                "C sqlite       {:.0} commits/s (WAL, synchronous=FULL)",
                c["per_second"].as_f64().unwrap_or(0.0)
            );
            records.push(c);
            if let Some(url) = &args.postgres_url {
                let c =
                    baseline::postgres_commits(url, args.postgres_clients, args.seconds).await?;
                println!(
                    "C postgres     {:.0} commits/s ({} clients)",
                    c["per_second"].as_f64().unwrap_or(0.0),
                    args.postgres_clients
                );
                records.push(c);
                let r = baseline::postgres_round_trips(url, args.postgres_clients, args.seconds)
                    .await?;
                println!(
                    "R postgres     {:.0} statement round trips/s, no work ({} clients)",
                    r["per_second"].as_f64().unwrap_or(0.0),
                    args.postgres_clients
                );
                records.push(r);
            }
            scenarios::append(args.out.as_ref(), &records)
        }
        Command::Rebuild(args) => {
            let db = seed::connect(&args.database_url).await?;
            let events: i64 = db
                .fetch("SELECT count(*) AS events FROM events", vec![])
                .await?
                .first()
                .context("no count of the events")?
                .get("events")?;
            let timed = |verb: &[&str]| -> anyhow::Result<f64> {
                let started = Instant::now();
                let output = std::process::Command::new(&args.twofold_bin)
                    .args(verb)
                    .arg("--database-url")
                    .arg(&args.database_url)
                    .output()
                    .with_context(|| format!("cannot run {}", args.twofold_bin.display()))?;
                anyhow::ensure!(
                    output.status.success(),
                    "{verb:?} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                Ok(started.elapsed().as_secs_f64())
            };
            let rebuild = timed(&["projections", "rebuild"])?;
            let verify = timed(&["audit", "verify"])?;
            let record = json!({
                "kind": "rebuild",
                "label": args.label,
                "store": if args.database_url.starts_with("sqlite") { "sqlite" } else { "postgres" },
                "events": events,
                "rebuild_seconds": rebuild,
                "rebuild_events_per_second": events as f64 / rebuild,
                "verify_seconds": verify,
                "verify_events_per_second": events as f64 / verify,
            });
            println!(
                "rebuild        {events} events: rebuild {rebuild:.1} s ({:.0} events/s), verify {verify:.1} s ({:.0} events/s)",
                events as f64 / rebuild,
                events as f64 / verify
            );
            scenarios::append(args.out.as_ref(), &[record])
        }
        Command::Mem(args) => {
            let record = scenarios::memory_record(&args.server_pids, &args.label);
            scenarios::append(args.out.as_ref(), &[record])
        }
        Command::Report(args) => {
            let text = std::fs::read_to_string(&args.results)
                .with_context(|| format!("cannot read {}", args.results.display()))?;
            print!("{}", report::table(&text));
            Ok(())
        }
    }
}
