//! The pages' cookies. All are `HttpOnly` (no script reads them),
//! `SameSite=Lax` (not sent with cross-site posts), `Path=/`, and `Secure`
//! when the page came over HTTPS.

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

#[derive(Clone, Debug, Default)]
pub struct Cookies(HashMap<String, String>);

impl Cookies {
    pub fn from_headers(headers: &HeaderMap) -> Self {
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
        Cookies(cookies)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
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
        let cookies = Cookies::from_headers(&headers);
        assert_eq!(cookies.get(SESSION), Some("abc_-DEF"));
        assert_eq!(cookies.get("empty"), None);
        let value = set(SESSION, "t;o k\r\nen", Some(60), true);
        assert_eq!(
            value.to_str().unwrap(),
            "twofold_session=token; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure"
        );
        assert!(clear(DEVICE, false).to_str().unwrap().contains("Max-Age=0"));
    }
}
