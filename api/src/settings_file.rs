//! `twofold serve --config FILE`: settings from a TOML file, each key named
//! as the long flag without `--` (`listen = "0.0.0.0:8080"`,
//! `remember-device-hours = 12`, `trusted-proxies = ["10.0.0.0/8"]`). A
//! flag or an environment variable overrides the file: the file's settings
//! become flags only for what neither gave.

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
    let mut flags = Vec::new();
    for (key, value) in table {
        let known = serve
            .get_arguments()
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
