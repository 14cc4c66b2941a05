//! Sign-in: username and password, then (when the API asks for it) the
//! code step; and sign-out.

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Query, State};
use axum::http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use twofold_domain::SecondFactorMethod;
use uuid::Uuid;

use super::chrome::Chrome;
use super::client::Answer;
use super::cookies;
use super::pages::notice_text;
use super::reply::{capitalized, PageError, Reply};
use super::visitor::Visitor;
use super::Web;
use crate::routes::login::{Authenticated, EmailCodeSent, LoginAnswer};

#[derive(Deserialize)]
pub struct NoticeQuery {
    pub notice: Option<String>,
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SignInPage {
    chrome: Chrome,
    username: String,
}

fn sign_in_form(
    visitor: &Visitor,
    status: StatusCode,
    username: &str,
    notice: Option<String>,
    error: Option<String>,
) -> Result<Reply, PageError> {
    let (chrome, anchor) = Chrome::anonymous(visitor);
    let page = SignInPage {
        chrome: chrome.notice(notice).error(error),
        username: username.to_string(),
    };
    Ok(Reply::render(status, &page)?.maybe_cookie(anchor))
}

/// `GET /`: the sign-in form, or home for a visitor already signed in.
pub async fn sign_in_page(
    State(web): State<Web>,
    visitor: Visitor,
    Query(query): Query<NoticeQuery>,
) -> Result<Reply, PageError> {
    let notice = notice_text(query.notice.as_deref());
    if visitor.session().is_some() {
        match web.api.get(&visitor, "/me").await?.into_done() {
            Ok(()) => return Ok(Reply::redirect("/home")),
            Err(PageError::SignIn) => {
                // The API no longer knows the session: forget it here too.
                return Ok(sign_in_form(&visitor, StatusCode::OK, "", notice, None)?
                    .cookie(cookies::clear(cookies::SESSION, visitor.secure))
                    .cookie(cookies::clear(cookies::ADMIN_SESSION, visitor.secure)));
            }
            Err(other) => return Err(other),
        }
    }
    sign_in_form(&visitor, StatusCode::OK, "", notice, None)
}

#[derive(Deserialize)]
pub struct SignInForm {
    username: String,
    password: String,
}

/// Signed in: keep the API's session token; no challenge, no older
/// "Login as" state.
fn start_session(visitor: &Visitor, token: &str, to: &str) -> Reply {
    Reply::redirect(to)
        .cookie(cookies::set(cookies::SESSION, token, None, visitor.secure))
        .cookie(cookies::clear(cookies::ADMIN_SESSION, visitor.secure))
        .cookie(cookies::clear(cookies::CHALLENGE, visitor.secure))
}

fn form<T>(form: Result<Form<T>, FormRejection>) -> Result<T, PageError> {
    form.map(|Form(form)| form)
        .map_err(|rejection| PageError::BadForm(rejection.body_text()))
}

/// `POST /login`: `POST /api/v1/login` with the remembered-device cookie.
pub async fn sign_in(
    State(web): State<Web>,
    visitor: Visitor,
    request: Result<Form<SignInForm>, FormRejection>,
) -> Result<Reply, PageError> {
    let request = form(request)?;
    let mut body = json!({ "username": request.username, "password": request.password });
    if let Some(device) = visitor.cookies.get(cookies::DEVICE) {
        body["device_token"] = json!(device);
    }
    let answer = web
        .api
        .call(&visitor, Method::POST, "/login", None, Some(&body))
        .await?;
    if !answer.is_success() {
        let message = capitalized(&answer.message());
        return sign_in_form(
            &visitor,
            answer.status,
            &request.username,
            None,
            Some(message),
        );
    }
    match answer.parse()? {
        LoginAnswer::Authenticated(signed_in) => {
            Ok(start_session(&visitor, &signed_in.session_token, "/home"))
        }
        LoginAnswer::EnrollmentRequired(held) => {
            Ok(start_session(&visitor, &held.session_token, "/enroll"))
        }
        LoginAnswer::TwoFactorRequired(due) => {
            let challenge = Challenge {
                id: due.challenge_id,
                methods: due.methods,
            };
            Ok(Reply::redirect("/login/code").cookie(cookies::set(
                cookies::CHALLENGE,
                &challenge.to_cookie(),
                None,
                visitor.secure,
            )))
        }
    }
}

/// The sign-in challenge between the password and the code, as the API
/// issued it.
struct Challenge {
    id: Uuid,
    methods: Vec<SecondFactorMethod>,
}

impl Challenge {
    fn to_cookie(&self) -> String {
        let methods: Vec<&str> = self.methods.iter().map(|m| m.as_str()).collect();
        format!("{}:{}", self.id, methods.join("+"))
    }

    /// The challenge the cookie names; none when it names a method that
    /// does not exist (the cookie was not ours).
    fn from_visitor(visitor: &Visitor) -> Option<Self> {
        let (id, methods) = visitor.cookies.get(cookies::CHALLENGE)?.split_once(':')?;
        Some(Challenge {
            id: Uuid::parse_str(id).ok()?,
            methods: methods
                .split('+')
                .filter(|m| !m.is_empty())
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?,
        })
    }

    fn offers(&self, method: SecondFactorMethod) -> bool {
        self.methods.contains(&method)
    }
}

#[derive(Template)]
#[template(path = "code.html")]
struct CodePage {
    chrome: Chrome,
    offers_totp: bool,
    offers_email: bool,
    offers_recovery: bool,
    offers_passkey: bool,
    /// The method picked (radio button checked).
    method: SecondFactorMethod,
    remember: bool,
    remember_hours: i64,
}

struct CodeState {
    method: SecondFactorMethod,
    remember: bool,
    notice: Option<String>,
    error: Option<String>,
}

fn code_form(
    web: &Web,
    visitor: &Visitor,
    challenge: &Challenge,
    status: StatusCode,
    state: CodeState,
) -> Result<Reply, PageError> {
    let (chrome, anchor) = Chrome::anonymous(visitor);
    let method = if challenge.offers(state.method) {
        state.method
    } else {
        challenge
            .methods
            .iter()
            .copied()
            .find(|m| {
                !matches!(
                    m,
                    SecondFactorMethod::RecoveryCode | SecondFactorMethod::Passkey
                )
            })
            .unwrap_or(SecondFactorMethod::Totp)
    };
    let page = CodePage {
        chrome: chrome.notice(state.notice).error(state.error),
        offers_totp: challenge.offers(SecondFactorMethod::Totp),
        offers_email: challenge.offers(SecondFactorMethod::Email),
        offers_recovery: challenge.offers(SecondFactorMethod::RecoveryCode),
        offers_passkey: challenge.offers(SecondFactorMethod::Passkey),
        method,
        remember: state.remember,
        remember_hours: web.remember_hours,
    };
    Ok(Reply::render(status, &page)?.maybe_cookie(anchor))
}

/// `GET /login/code`: the code step.
pub async fn code_page(State(web): State<Web>, visitor: Visitor) -> Result<Reply, PageError> {
    let Some(challenge) = Challenge::from_visitor(&visitor) else {
        return Ok(Reply::redirect("/"));
    };
    code_form(
        &web,
        &visitor,
        &challenge,
        StatusCode::OK,
        CodeState {
            method: SecondFactorMethod::Totp,
            remember: true,
            notice: None,
            error: None,
        },
    )
}

/// The challenge is over (expired, locked, unknown): sign in again.
fn challenge_over(answer: &Answer) -> bool {
    matches!(
        answer.error(),
        "challenge_expired" | "challenge_locked" | "not_found"
    )
}

fn restart_sign_in(visitor: &Visitor, answer: &Answer) -> Result<Reply, PageError> {
    Ok(sign_in_form(
        visitor,
        answer.status,
        "",
        None,
        Some(capitalized(&answer.message())),
    )?
    .cookie(cookies::clear(cookies::CHALLENGE, visitor.secure)))
}

#[derive(Deserialize)]
pub struct CodeForm {
    method: Option<SecondFactorMethod>,
    #[serde(default)]
    code: String,
    /// A checkbox: present when ticked.
    remember_device: Option<String>,
}

/// `POST /login/code`: `POST /api/v1/login/challenges/{id}/verify`.
pub async fn verify_code(
    State(web): State<Web>,
    visitor: Visitor,
    request: Result<Form<CodeForm>, FormRejection>,
) -> Result<Reply, PageError> {
    let request = form(request)?;
    let Some(challenge) = Challenge::from_visitor(&visitor) else {
        return Ok(Reply::redirect("/"));
    };
    let method = request.method.unwrap_or(SecondFactorMethod::Totp);
    let remember = request.remember_device.is_some();
    let body = json!({
        "method": method,
        "code": request.code.trim(),
        "remember_device": remember,
    });
    let path = format!("/login/challenges/{}/verify", challenge.id);
    let answer = web
        .api
        .call(&visitor, Method::POST, &path, None, Some(&body))
        .await?;
    if answer.is_success() {
        let done: Authenticated = answer.parse()?;
        let mut reply = start_session(&visitor, &done.session_token, "/home");
        if let (Some(token), Some(until)) = (done.device_token, done.device_expires_at) {
            let max_age = (until - web.clock.now()).num_seconds();
            reply = reply.cookie(cookies::set(
                cookies::DEVICE,
                &token,
                Some(max_age),
                visitor.secure,
            ));
        }
        return Ok(reply);
    }
    if challenge_over(&answer) {
        return restart_sign_in(&visitor, &answer);
    }
    let mut message = capitalized(&answer.message());
    if let Some(left) = answer.body["attempts_remaining"].as_u64() {
        message.push_str(&format!(
            " {left} attempt{} left.",
            if left == 1 { "" } else { "s" }
        ));
    }
    code_form(
        &web,
        &visitor,
        &challenge,
        answer.status,
        CodeState {
            method,
            remember,
            notice: None,
            error: Some(message),
        },
    )
}

/// `POST /login/code/email` ("Send code by email"):
/// `POST /api/v1/login/challenges/{id}/email`.
pub async fn send_email_code(
    State(web): State<Web>,
    visitor: Visitor,
    request: Result<Form<CodeForm>, FormRejection>,
) -> Result<Reply, PageError> {
    let request = form(request)?;
    let Some(challenge) = Challenge::from_visitor(&visitor) else {
        return Ok(Reply::redirect("/"));
    };
    let path = format!("/login/challenges/{}/email", challenge.id);
    let answer = web
        .api
        .call(&visitor, Method::POST, &path, None, None)
        .await?;
    let remember = request.remember_device.is_some();
    if answer.is_success() {
        let sent: EmailCodeSent = answer.parse()?;
        return code_form(
            &web,
            &visitor,
            &challenge,
            StatusCode::OK,
            CodeState {
                method: SecondFactorMethod::Email,
                remember,
                notice: Some(format!(
                    "We sent a code to {}. It works once, for the next 10 minutes.",
                    sent.sent_to
                )),
                error: None,
            },
        );
    }
    if challenge_over(&answer) {
        return restart_sign_in(&visitor, &answer);
    }
    code_form(
        &web,
        &visitor,
        &challenge,
        answer.status,
        CodeState {
            method: SecondFactorMethod::Email,
            remember,
            notice: None,
            error: Some(capitalized(&answer.message())),
        },
    )
}

/// `POST /logout`: ends the session (and an administrator's own session
/// kept during "Login as"); the remembered device stays remembered.
pub async fn sign_out(State(web): State<Web>, visitor: Visitor) -> Result<Reply, PageError> {
    for name in [cookies::SESSION, cookies::ADMIN_SESSION] {
        if let Some(token) = visitor.cookies.get(name) {
            // An unknown or expired session is signed out already.
            let answer = web
                .api
                .call(&visitor, Method::POST, "/logout", Some(token), None)
                .await?;
            if answer.status.is_server_error() {
                return Err(answer.page_error());
            }
        }
    }
    Ok(Reply::redirect("/?notice=signed-out")
        .cookie(cookies::clear(cookies::SESSION, visitor.secure))
        .cookie(cookies::clear(cookies::ADMIN_SESSION, visitor.secure))
        .cookie(cookies::clear(cookies::CHALLENGE, visitor.secure)))
}

/// The API's answer as JSON, for the pages' script.
fn json_answer(answer: Answer) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        answer.status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        answer.body.to_string(),
    )
        .into_response()
}

fn credential_json(text: &str) -> Result<serde_json::Value, PageError> {
    serde_json::from_str(text).map_err(|_| PageError::BadForm("the credential is not JSON".into()))
}

/// `POST /login/code/passkey/options` ("Use a passkey"):
/// `POST /api/v1/login/challenges/{id}/passkey`, as JSON for the script.
pub async fn passkey_step_options(
    State(web): State<Web>,
    visitor: Visitor,
) -> Result<axum::response::Response, PageError> {
    let Some(challenge) = Challenge::from_visitor(&visitor) else {
        return Err(PageError::BadForm("no sign-in is under way".into()));
    };
    let path = format!("/login/challenges/{}/passkey", challenge.id);
    let answer = web
        .api
        .call(&visitor, Method::POST, &path, None, None)
        .await?;
    Ok(json_answer(answer))
}

#[derive(Deserialize)]
pub struct PasskeyStepForm {
    /// The browser's `AuthenticationResponseJSON`, as text.
    credential: String,
    /// A checkbox: present when ticked.
    remember_device: Option<String>,
}

/// `POST /login/code/passkey`: `POST /api/v1/login/challenges/{id}/verify`
/// with `method: passkey`. Signed in: the session (and device) cookies and
/// a redirect home, which the script follows; refused: the API's JSON.
pub async fn passkey_step(
    State(web): State<Web>,
    visitor: Visitor,
    request: Result<Form<PasskeyStepForm>, FormRejection>,
) -> Result<axum::response::Response, PageError> {
    use axum::response::IntoResponse;
    let request = form(request)?;
    let Some(challenge) = Challenge::from_visitor(&visitor) else {
        return Err(PageError::BadForm("no sign-in is under way".into()));
    };
    let body = json!({
        "method": "passkey",
        "credential": credential_json(&request.credential)?,
        "remember_device": request.remember_device.is_some(),
    });
    let path = format!("/login/challenges/{}/verify", challenge.id);
    let answer = web
        .api
        .call(&visitor, Method::POST, &path, None, Some(&body))
        .await?;
    if !answer.is_success() {
        return Ok(json_answer(answer));
    }
    let done: Authenticated = answer.parse()?;
    let mut reply = start_session(&visitor, &done.session_token, "/home");
    if let (Some(token), Some(until)) = (done.device_token, done.device_expires_at) {
        let max_age = (until - web.clock.now()).num_seconds();
        reply = reply.cookie(cookies::set(
            cookies::DEVICE,
            &token,
            Some(max_age),
            visitor.secure,
        ));
    }
    Ok(reply.into_response())
}

/// `POST /login/passkey/options` ("Sign in with a passkey"):
/// `POST /api/v1/login/passkey`, as JSON for the script.
pub async fn passkey_sign_in_options(
    State(web): State<Web>,
    visitor: Visitor,
) -> Result<axum::response::Response, PageError> {
    let answer = web
        .api
        .call(&visitor, Method::POST, "/login/passkey", None, None)
        .await?;
    Ok(json_answer(answer))
}

#[derive(Deserialize)]
pub struct PasskeySignInForm {
    challenge_id: Uuid,
    /// The browser's `AuthenticationResponseJSON`, as text.
    credential: String,
}

/// `POST /login/passkey`: `POST /api/v1/login/passkey/{challenge_id}`.
pub async fn passkey_sign_in(
    State(web): State<Web>,
    visitor: Visitor,
    request: Result<Form<PasskeySignInForm>, FormRejection>,
) -> Result<axum::response::Response, PageError> {
    use axum::response::IntoResponse;
    let request = form(request)?;
    let body = json!({ "credential": credential_json(&request.credential)? });
    let path = format!("/login/passkey/{}", request.challenge_id);
    let answer = web
        .api
        .call(&visitor, Method::POST, &path, None, Some(&body))
        .await?;
    if !answer.is_success() {
        return Ok(json_answer(answer));
    }
    let done: Authenticated = answer.parse()?;
    Ok(start_session(&visitor, &done.session_token, "/home").into_response())
}
