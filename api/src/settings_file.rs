//! `twofold serve --config FILE`: settings from a TOML file, each key named
//! as the long flag without `--` (`listen = "0.0.0.0:8080"`,
//! `remember-device-hours = 12`, `trusted-proxies = ["10.0.0.0/8"]`). A
//! flag or an environment variable overrides the file: the file's settings
//! become flags only for what neither gave. `log-format` may be set here
//! too; lines logged before the file is read (a refused command line) use
//! the command line's or the environment's.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};
use toml::Value;

use crate::config::Cli;

/// The flags `path` adds to `serve`'s command line, `given` being what
/// the command line and the environment said. A key that is not one of
/// `serve`'s flags is refused, naming it.
pub fn flags(path: &Path, given: &ArgMatches) -> Result<Vec<OsString>, String> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("cannot read {shown}: {error}"))?;
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        format!("{shown} is not TOML: {}", error.message().trim())
    })?;
    let command = Cli::command();
    let serve = command
        .find_subcommand("serve")
        .ok_or("twofold has no serve command")?;
    // `serve`'s own flags and the global ones (`log-format`).
    let arguments: Vec<&clap::Arg> = serve
        .get_arguments()
        .chain(command.get_arguments().filter(|arg| arg.is_global_set()))
        .collect();
    let mut flags = Vec::new();
    for (key, value) in table {
        let known = arguments
            .iter()
            .find(|arg| arg.get_long() == Some(key.as_str()) && key != "config");
        let Some(arg) = known else {
            return Err(format!(
                "{shown}: unknown setting `{key}` (keys are the long flags of twofold serve, \
                 e.g. listen)"
            ));
        };
        if matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let value = match value {
            Value::Array(items) => items
                .into_iter()
                .map(|item| scalar(&key, item, &shown.to_string()))
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            value => scalar(&key, value, &shown.to_string())?,
        };
        flags.push(OsString::from(format!("--{key}={value}")));
    }
    Ok(flags)
}

fn scalar(key: &str, value: Value, file: &str) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text),
        Value::Integer(number) => Ok(number.to_string()),
        Value::Float(number) => Ok(number.to_string()),
        Value::Boolean(flag) => Ok(flag.to_string()),
        Value::Datetime(instant) => Ok(instant.to_string()),
        Value::Array(_) | Value::Table(_) => Err(format!(
            "{file}: `{key}` takes a value or a list of values, not a table or nested lists"
        )),
    }
}

/// The long flags among `flags` (`--key=value` each).
pub fn names(flags: &[OsString]) -> Vec<String> {
    flags
        .iter()
        .filter_map(|flag| {
            let flag = flag.to_str()?.strip_prefix("--")?;
            Some(
                flag.split_once('=')
                    .map_or(flag, |(name, _)| name)
                    .to_string(),
            )
        })
        .collect()
}

/// One setting in effect, as `twofold config check` prints it.
pub struct Setting {
    name: String,
    value: String,
    source: &'static str,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = Value::String(self.value.clone());
        write!(f, "{} = {value}  # {}", self.name, self.source)
    }
}

/// Every flag of `serve` that has a value, with where it came from
/// (`from_file`: the flags the settings file gave); secrets masked.
pub fn effective(matches: &ArgMatches, from_file: &[String]) -> Vec<Setting> {
    let command = Cli::command();
    let Some(serve) = command.find_subcommand("serve") else {
        return Vec::new();
    };
    let mut settings = Vec::new();
    for arg in serve.get_arguments() {
        let (Some(name), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        let Some(values) = matches.get_raw(id) else {
            continue;
        };
        let value: Vec<String> = values
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) if from_file.iter().any(|file| file == name) => "file",
            Some(ValueSource::CommandLine) => "command line",
            Some(ValueSource::EnvVariable) => "environment",
            _ => "default",
        };
        settings.push(Setting {
            name: name.to_string(),
            value: masked(name, &value.join(",")),
            source,
        });
    }
    settings
}

/// A secret's value with its secret part hidden: the password of
/// `username:password` and of a URL's user info.
fn masked(name: &str, value: &str) -> String {
    match name {
        "bootstrap-admin" => match value.split_once(':') {
            Some((username, _)) => format!("{username}:********"),
            None => "********".to_string(),
        },
        "smtp-url" => match value.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((user_info, host)) => {
                    let user = user_info.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:********@{host}")
                }
                None => value.to_string(),
            },
            None => "********".to_string(),
        },
        _ => value.to_string(),
    }
}
