//! The security review's HTTP items: CSRF tokens bound to the session and
//! `__Host-` cookies.

use reqwest::StatusCode;

use crate::helpers::{spawn_app, Backend, TestApp, ADMIN};
use crate::on_both_backends;

on_both_backends!(
    a_planted_anchor_cookie_cannot_carry_a_form_once_a_session_cookie_is_present,
    over_https_the_pages_use_and_read_only_host_prefixed_cookies,
);

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The hidden `csrf` field of the first form on a page.
fn form_token(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form with a CSRF token")
        .to_string()
}

fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap().to_string())
        .collect()
}

/// `name=value` of the cookie `name` that `response` sets.
fn cookie_pair(response: &reqwest::Response, name: &str) -> String {
    set_cookies(response)
        .into_iter()
        .find(|cookie| cookie.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("a {name} cookie in {:?}", set_cookies(response)))
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// What an attacker gets by visiting the sign-in page: an anchor cookie
/// and the form token that goes with it.
async fn anchor_and_token(app: &TestApp, https: bool) -> (String, String) {
    let mut request = no_redirects().get(format!("{}/", app.base));
    if https {
        request = request.header("x-forwarded-proto", "https");
    }
    let page = request.send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let name = if https {
        "__Host-twofold_csrf"
    } else {
        "twofold_csrf"
    };
    let anchor = cookie_pair(&page, name);
    (anchor, form_token(&page.text().await.unwrap()))
}

/// The form token a signed-in visitor's settings page carries.
async fn session_token_of_page(app: &TestApp, cookie: &str, https: bool) -> String {
    let mut request = no_redirects()
        .get(format!("{}/settings", app.base))
        .header("cookie", cookie);
    if https {
        request = request.header("x-forwarded-proto", "https");
    }
    let page = request.send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    form_token(&page.text().await.unwrap())
}

/// `POST /settings/devices/forget` (a harmless form) with these cookies
/// and this token.
async fn forget_devices(app: &TestApp, cookie: &str, token: &str, https: bool) -> StatusCode {
    let mut request = no_redirects()
        .post(format!("{}/settings/devices/forget", app.base))
        .header("cookie", cookie)
        .form(&[("csrf", token)]);
    if https {
        request = request.header("x-forwarded-proto", "https");
    }
    let answer = request.send().await.unwrap();
    let status = answer.status();
    if status == StatusCode::FORBIDDEN {
        let body = answer.text().await.unwrap();
        assert!(body.contains("This form has expired"), "{body}");
    } else {
        assert_eq!(
            answer.headers()["location"],
            "/settings?notice=devices-forgotten",
            "the form was carried out"
        );
    }
    status
}

async fn a_planted_anchor_cookie_cannot_carry_a_form_once_a_session_cookie_is_present(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let (planted_anchor, planted_token) = anchor_and_token(&app, false).await;
    let session = app.admin_token().await;
    let victim = format!("twofold_session={session}; {planted_anchor}");
    let own_token = session_token_of_page(&app, &victim, false).await;
    assert_ne!(own_token, planted_token);

    let events = app.event_count().await;
    assert_eq!(
        forget_devices(&app, &victim, &planted_token, false).await,
        StatusCode::FORBIDDEN,
        "the anchor's token is refused beside a session cookie"
    );
    assert_eq!(app.event_count().await, events, "nothing was done");
    assert_eq!(
        forget_devices(&app, &victim, &own_token, false).await,
        StatusCode::SEE_OTHER,
        "the session's own token is accepted"
    );
    // Without a session, the anchor still protects the sign-in form.
    let (anchor, token) = anchor_and_token(&app, false).await;
    let signed_in = no_redirects()
        .post(format!("{}/login", app.base))
        .header("cookie", anchor)
        .form(&[
            ("csrf", token.as_str()),
            ("username", ADMIN.0),
            ("password", ADMIN.1),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    app.stop().await;
}

async fn over_https_the_pages_use_and_read_only_host_prefixed_cookies(backend: Backend) {
    let app = spawn_app(backend).await;
    let page = no_redirects()
        .get(format!("{}/", app.base))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let anchor = set_cookies(&page)
        .into_iter()
        .find(|cookie| cookie.contains("twofold_csrf="))
        .unwrap();
    assert!(anchor.starts_with("__Host-twofold_csrf="), "{anchor}");
    for flag in ["Secure", "Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(anchor.contains(flag), "{anchor} lacks {flag}");
    }
    assert!(!anchor.to_ascii_lowercase().contains("domain="), "{anchor}");

    // Signing in over HTTPS sets the prefixed session cookie.
    let anchor = anchor.split(';').next().unwrap().to_string();
    let token = form_token(&page.text().await.unwrap());
    let signed_in = no_redirects()
        .post(format!("{}/login", app.base))
        .header("cookie", &anchor)
        .header("x-forwarded-proto", "https")
        .form(&[
            ("csrf", token.as_str()),
            ("username", ADMIN.0),
            ("password", ADMIN.1),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let session_cookie = cookie_pair(&signed_in, "__Host-twofold_session");

    // Unprefixed cookies (which anyone able to plant cookies could set)
    // count for nothing over HTTPS: neither as session nor as anchor.
    let session = session_cookie.split_once('=').unwrap().1.to_string();
    let (planted_anchor, planted_token) = anchor_and_token(&app, false).await;
    let unprefixed = format!("twofold_session={session}; {planted_anchor}");
    assert_eq!(
        forget_devices(&app, &unprefixed, &planted_token, true).await,
        StatusCode::FORBIDDEN
    );
    let with_planted = format!("{session_cookie}; {planted_anchor}");
    assert_eq!(
        forget_devices(&app, &with_planted, &planted_token, true).await,
        StatusCode::FORBIDDEN
    );
    let own_token = session_token_of_page(&app, &session_cookie, true).await;
    assert_eq!(
        forget_devices(&app, &with_planted, &own_token, true).await,
        StatusCode::SEE_OTHER
    );
    app.stop().await;
}
