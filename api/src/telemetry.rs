use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The log format the command line or the environment asks for, read
/// without clap: for a command line clap refused, whose error is the one
/// line to log.
pub fn format_asked_for() -> LogFormat {
    let args: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let json = args.iter().enumerate().any(|(index, arg)| {
        arg == "--log-format=json"
            || (arg == "--log-format" && args.get(index + 1).is_some_and(|next| next == "json"))
    }) || std::env::var("TWOFOLD_LOG_FORMAT").is_ok_and(|value| value == "json");
    if json {
        LogFormat::Json
    } else {
        LogFormat::Text
    }
}

/// Human-readable lines by default, JSON for log shippers; `RUST_LOG` refines.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests start several apps in one process) keeps the first.
    drop(result);
}
