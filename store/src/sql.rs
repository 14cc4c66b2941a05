//! Values bound to the statements of either backend, the multi-row
//! statements built from them, and COPY's text format: every value reaches
//! the database as a bound parameter or a COPY field, never as SQL text.

use std::io::Write as _;

use chrono::{DateTime, Datelike, Timelike, Utc};

/// A value to bind, of the few types the read models store.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Text(Option<String>),
    Bool(bool),
    Int(i64),
    Time(Option<DateTime<Utc>>),
}

impl From<String> for Arg {
    fn from(value: String) -> Self {
        Arg::Text(Some(value))
    }
}

impl From<Option<String>> for Arg {
    fn from(value: Option<String>) -> Self {
        Arg::Text(value)
    }
}

impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Arg::Text(Some(value.to_string()))
    }
}

impl From<Option<&str>> for Arg {
    fn from(value: Option<&str>) -> Self {
        Arg::Text(value.map(str::to_string))
    }
}

impl From<bool> for Arg {
    fn from(value: bool) -> Self {
        Arg::Bool(value)
    }
}

impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Arg::Int(value)
    }
}

impl From<DateTime<Utc>> for Arg {
    fn from(value: DateTime<Utc>) -> Self {
        Arg::Time(Some(value))
    }
}

impl From<Option<DateTime<Utc>>> for Arg {
    fn from(value: Option<DateTime<Utc>>) -> Self {
        Arg::Time(value)
    }
}

/// Binds arguments in order to a query of either backend.
#[macro_export]
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                $crate::sql::Arg::Text(value) => query.bind(value),
                $crate::sql::Arg::Bool(value) => query.bind(value),
                $crate::sql::Arg::Int(value) => query.bind(value),
                $crate::sql::Arg::Time(value) => query.bind(value),
            };
        }
        query
    }};
}

/// Pushes one argument as a bound parameter of a `QueryBuilder`.
#[macro_export]
macro_rules! push_bind {
    ($builder:expr, $arg:expr) => {
        match $arg {
            $crate::sql::Arg::Text(value) => $builder.push_bind(value),
            $crate::sql::Arg::Bool(value) => $builder.push_bind(value),
            $crate::sql::Arg::Int(value) => $builder.push_bind(value),
            $crate::sql::Arg::Time(value) => $builder.push_bind(value),
        }
    };
}

/// One row of COPY's text format: tab-separated, `\N` for NULL, and
/// backslash, tab and line breaks escaped.
pub fn copy_row(out: &mut Vec<u8>, row: &[Arg]) {
    for (index, cell) in row.iter().enumerate() {
        if index > 0 {
            out.push(b'\t');
        }
        match cell {
            Arg::Text(None) | Arg::Time(None) => out.extend_from_slice(b"\\N"),
            Arg::Text(Some(text)) => copy_text(out, text.as_bytes()),
            Arg::Bool(value) => out.push(if *value { b't' } else { b'f' }),
            Arg::Int(value) => {
                let _ = write!(out, "{value}");
            }
            // Microseconds, cut as sqlx cuts a bound timestamp (PostgreSQL
            // would round more digits), so both paths store the same value.
            Arg::Time(Some(at)) => {
                let _ = write!(
                    out,
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
                    at.year(),
                    at.month(),
                    at.day(),
                    at.hour(),
                    at.minute(),
                    at.second(),
                    at.nanosecond() % 1_000_000_000 / 1_000
                );
            }
        }
    }
    out.push(b'\n');
}

/// Backslash, tab and line breaks escaped, as COPY's text format reads them.
fn copy_text(out: &mut Vec<u8>, text: &[u8]) {
    let special = |byte: u8| matches!(byte, b'\\' | b'\t' | b'\n' | b'\r');
    // Most fields hold none: one pass the compiler vectorises, one copy.
    if !text
        .iter()
        .fold(false, |found, &byte| found | special(byte))
    {
        out.extend_from_slice(text);
        return;
    }
    for &byte in text {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(byte),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn copy_rows_escape_what_copy_reads_specially_and_cut_times_to_microseconds() {
        let at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::nanoseconds(678_901_999);
        let mut out = Vec::new();
        copy_row(
            &mut out,
            &[
                "plain".into(),
                "a\\b\tc\nd\re".into(),
                Arg::Text(None),
                true.into(),
                (-42_i64).into(),
                at.into(),
                Arg::Time(None),
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain\ta\\\\b\\tc\\nd\\re\t\\N\tt\t-42\t2030-01-02 03:04:05.678901+00\t\\N\n"
        );
    }
}
