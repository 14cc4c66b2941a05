//! The pages' cookies. All are `HttpOnly` (no script reads them),
//! `SameSite=Lax` (not sent with cross-site posts), `Path=/`, and `Secure`
//! when the page came over HTTPS. Over HTTPS their names also carry the
//! `__Host-` prefix, and are read only under it: a browser keeps such a
//! cookie only when this host set it with `Secure`, `Path=/` and no
//! `Domain`, so neither a sibling subdomain nor a plain-HTTP answer (a
//! network attacker's) can plant or overwrite one.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, HeaderValue};

/// The API session token of the signed-in visitor.
pub const SESSION: &str = "twofold_session";
/// During "Login as": the administrator's own session token, restored by "End".
pub const ADMIN_SESSION: &str = "twofold_admin_session";
/// Between the password and the code: `challenge_id:method+method`.
pub const CHALLENGE: &str = "twofold_challenge";
/// A remembered device's token, sent as `device_token` at sign-in.
pub const DEVICE: &str = "twofold_device";
/// Random value that CSRF tokens derive from before there is a session.
pub const ANCHOR: &str = "twofold_csrf";

/// The prefix of every cookie name over HTTPS (see above).
const HOST_PREFIX: &str = "__Host-";

/// The name `name` goes by on the wire for a page that came over HTTPS
/// (`secure`) or not.
fn wire_name(name: &str, secure: bool) -> String {
    if secure {
        format!("{HOST_PREFIX}{name}")
    } else {
        name.to_string()
    }
}

/// The cookies of one request, read under the names its scheme uses.
#[derive(Clone, Debug, Default)]
pub struct Cookies {
    values: HashMap<String, String>,
    secure: bool,
}

impl Cookies {
    /// `secure`: the request came over HTTPS, so only `__Host-` names count.
    pub fn from_headers(headers: &HeaderMap, secure: bool) -> Self {
        let mut cookies = HashMap::new();
        for value in headers.get_all(header::COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            for pair in text.split(';') {
                if let Some((name, value)) = pair.split_once('=') {
                    let (name, value) = (name.trim(), value.trim().trim_matches('"'));
                    if !name.is_empty() && !value.is_empty() {
                        cookies
                            .entry(name.to_string())
                            .or_insert_with(|| value.to_string());
                    }
                }
            }
        }
        Cookies {
            values: cookies,
            secure,
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(&wire_name(name, self.secure))
            .map(String::as_str)
    }
}

/// A cookie value may hold only these characters (RFC 6265 cookie-octet
/// without the ones we never need); anything else is dropped.
fn clean(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '+' | '~'))
        .collect()
}

/// `Set-Cookie` for `name=value`; a browser-session cookie unless `max_age`
/// (seconds) is given.
pub fn set(name: &str, value: &str, max_age: Option<i64>, secure: bool) -> HeaderValue {
    let name = wire_name(name, secure);
    let mut text = format!("{name}={}; Path=/; HttpOnly; SameSite=Lax", clean(value));
    if let Some(seconds) = max_age {
        text.push_str(&format!("; Max-Age={}", seconds.max(0)));
    }
    if secure {
        text.push_str("; Secure");
    }
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that removes `name`.
pub fn clear(name: &str, secure: bool) -> HeaderValue {
    set(name, "", Some(0), secure)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_and_written_with_their_flags() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; twofold_session=abc_-DEF; empty="),
        );
        let cookies = Cookies::from_headers(&headers, false);
        assert_eq!(cookies.get(SESSION), Some("abc_-DEF"));
        assert_eq!(cookies.get("empty"), None);
        let value = set(SESSION, "t;o k\r\nen", Some(60), true);
        assert_eq!(
            value.to_str().unwrap(),
            "__Host-twofold_session=token; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure"
        );
        let value = set(SESSION, "token", None, false);
        assert_eq!(
            value.to_str().unwrap(),
            "twofold_session=token; Path=/; HttpOnly; SameSite=Lax"
        );
        assert!(clear(DEVICE, false).to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn over_https_only_host_prefixed_cookies_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("twofold_csrf=planted; __Host-twofold_session=real"),
        );
        let secure = Cookies::from_headers(&headers, true);
        assert_eq!(secure.get(SESSION), Some("real"));
        assert_eq!(
            secure.get(ANCHOR),
            None,
            "a name without the prefix counts for nothing"
        );
        let plain = Cookies::from_headers(&headers, false);
        assert_eq!(plain.get(ANCHOR), Some("planted"));
        assert_eq!(plain.get(SESSION), None);
    }
}
