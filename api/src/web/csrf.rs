//! CSRF protection for every form: each form carries a hidden `csrf` field
//! derived from a secret cookie (the session token once signed in, else a
//! random anchor cookie). Another site can neither read that cookie nor the
//! page, so it cannot forge the field; `SameSite=Lax` already keeps the
//! cookies off its posts, and a cross-site `Sec-Fetch-Site` is refused too.
//! Once a session cookie is present only the session's token counts: an
//! anchor is no secret of the visitor's (whoever can plant a cookie, from a
//! sibling subdomain or over plain HTTP, can plant one whose token they
//! know), so it may only stand in while there is no session to protect.
//! Stateless: any process of the deployment checks any form.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::cookies::{self, Cookies};

/// The token for forms rendered with this secret cookie value.
pub fn token(secret: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"twofold web csrf\0");
    hasher.update(secret.as_bytes());
    URL_SAFE_NO_PAD.encode(hasher.finalize())
}

/// A fresh anchor value for a visitor without a session.
pub fn new_anchor() -> String {
    twofold_app::secrets::new_token()
}

/// The secret a form's token must derive from: the session once there is
/// one, the anchor only before.
fn form_secret(cookies: &Cookies) -> Option<&str> {
    cookies
        .get(cookies::SESSION)
        .or_else(|| cookies.get(cookies::ANCHOR))
}

pub fn matches(given: &str, cookies: &Cookies) -> bool {
    form_secret(cookies)
        .is_some_and(|secret| bool::from(token(secret).as_bytes().ct_eq(given.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, HeaderMap, HeaderValue};

    #[test]
    fn a_token_matches_only_its_own_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("twofold_csrf=anchor-one"),
        );
        let cookies = Cookies::from_headers(&headers, false);
        assert!(matches(&token("anchor-one"), &cookies));
        assert!(!matches(&token("anchor-two"), &cookies));
        assert!(!matches("", &cookies));
        assert!(!matches(&token("anchor-one"), &Cookies::default()));
    }

    #[test]
    fn with_a_session_cookie_the_anchors_token_no_longer_counts() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("twofold_csrf=planted; twofold_session=the-session"),
        );
        let cookies = Cookies::from_headers(&headers, false);
        assert!(!matches(&token("planted"), &cookies));
        assert!(matches(&token("the-session"), &cookies));
    }
}
