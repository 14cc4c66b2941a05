//! The signed-in user's pages: home, the enrollment step they are held on
//! when 2FA is required, and My Settings (2FA on and off, remembered
//! devices).

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Query, State};
use axum::http::{Method, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use super::chrome::Chrome;
use super::cookies;
use super::pages::{notice_text, signed_in, when};
use super::reply::{capitalized, PageError, Reply};
use super::signin::NoticeQuery;
use super::visitor::Visitor;
use super::Web;
use crate::routes::me::{DeviceList, DeviceView, Enabled, EnrollmentStarted};

/// A remembered device as a table row.
pub struct DeviceRow {
    pub created: String,
    pub expires: String,
    pub last_used: String,
    pub user_agent: String,
}

fn device_rows(devices: Vec<DeviceView>) -> Vec<DeviceRow> {
    devices
        .into_iter()
        .map(|device| DeviceRow {
            created: when(Some(device.created_at)),
            expires: when(Some(device.expires_at)),
            last_used: when(device.last_used_at),
            user_agent: device.user_agent.unwrap_or_else(|| "-".into()),
        })
        .collect()
}

/// A path's remembered devices. These endpoints need a full session, so a
/// session held on enrollment gets 403 `two_factor_enrollment_required`
/// here and the page goes to the enrollment step.
pub async fn remembered_devices(
    web: &Web,
    visitor: &Visitor,
    path: &str,
) -> Result<Vec<DeviceRow>, PageError> {
    let devices: DeviceList = web.api.get(visitor, path).await?.into_result()?;
    Ok(device_rows(devices.devices))
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    chrome: Chrome,
    enabled_at: String,
    devices: usize,
}

/// `GET /home`.
pub async fn home(
    State(web): State<Web>,
    visitor: Visitor,
    Query(query): Query<NoticeQuery>,
) -> Result<Reply, PageError> {
    let chrome = signed_in(&web, &visitor).await?;
    let devices = remembered_devices(&web, &visitor, "/me/remembered-devices").await?;
    let enabled_at = when(
        chrome
            .user
            .as_ref()
            .and_then(|user| user.two_factor.enabled_at),
    );
    let page = HomePage {
        chrome: chrome.notice(notice_text(query.notice.as_deref())),
        enabled_at,
        devices: devices.len(),
    };
    Reply::render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "enroll.html")]
struct EnrollPage {
    chrome: Chrome,
}

/// `GET /enroll`: where a user whose 2FA is required but not active is
/// held; every other page sends them back here (the API answers them 403
/// `two_factor_enrollment_required`).
pub async fn enroll_page(State(web): State<Web>, visitor: Visitor) -> Result<Reply, PageError> {
    let chrome = signed_in(&web, &visitor).await?;
    if chrome
        .user
        .as_ref()
        .is_some_and(|user| user.two_factor_enabled())
    {
        return Ok(Reply::redirect("/home"));
    }
    let page = EnrollPage {
        chrome: Chrome {
            held: true,
            ..chrome
        },
    };
    Reply::render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    chrome: Chrome,
    enabled_at: String,
    devices: Vec<DeviceRow>,
    passkeys: Vec<super::passkeys::PasskeyRow>,
}

async fn settings_page(
    web: &Web,
    visitor: &Visitor,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Result<Reply, PageError> {
    let chrome = signed_in(web, visitor).await?;
    let devices = remembered_devices(web, visitor, "/me/remembered-devices").await?;
    let passkeys = super::passkeys::passkey_rows(web, visitor).await?;
    let enabled_at = when(
        chrome
            .user
            .as_ref()
            .and_then(|user| user.two_factor.enabled_at),
    );
    let page = SettingsPage {
        chrome: chrome.notice(notice).error(error),
        enabled_at,
        devices,
        passkeys,
    };
    Reply::render(status, &page)
}

/// `GET /settings`: My Settings.
pub async fn settings(
    State(web): State<Web>,
    visitor: Visitor,
    Query(query): Query<NoticeQuery>,
) -> Result<Reply, PageError> {
    settings_page(
        &web,
        &visitor,
        StatusCode::OK,
        notice_text(query.notice.as_deref()),
        None,
    )
    .await
}

#[derive(Template)]
#[template(path = "totp.html")]
struct TotpPage {
    chrome: Chrome,
    /// The base32 key for typing into an app, in groups of four (the page
    /// wraps it between groups only).
    secret_groups: Vec<String>,
    secret: String,
    otpauth_uri: String,
    qr_image: String,
    /// `enroll` when started from the enrollment step (no navigation).
    flow: String,
}

#[derive(Deserialize)]
pub struct FlowForm {
    #[serde(default)]
    flow: String,
}

fn grouped(secret: &str) -> Vec<String> {
    secret
        .as_bytes()
        .chunks(4)
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect()
}

fn svg_image(svg: &str) -> String {
    format!("data:image/svg+xml;base64,{}", STANDARD.encode(svg))
}

fn flow_chrome(chrome: Chrome, flow: &str) -> Chrome {
    Chrome {
        held: flow == "enroll",
        ..chrome
    }
}

fn read<T>(form: Result<Form<T>, FormRejection>) -> Result<T, PageError> {
    form.map(|Form(form)| form)
        .map_err(|rejection| PageError::BadForm(rejection.body_text()))
}

/// `POST /settings/two-factor/totp` ("Enable Two-Factor Authentication"):
/// `POST /api/v1/me/two-factor/totp`, then the QR code and the key.
pub async fn start_totp(
    State(web): State<Web>,
    visitor: Visitor,
    request: Result<Form<FlowForm>, FormRejection>,
) -> Result<Reply, PageError> {
    let request = read(request)?;
    let chrome = signed_in(&web, &visitor).await?;
    let enrollment: EnrollmentStarted = web
        .api
        .as_visitor(
            &visitor,
            Method::POST,
            "/me/two-factor/totp",
            Some(&json!({})),
        )
        .await?
        .into_result()?;
    let page = TotpPage {
        chrome: flow_chrome(chrome, &request.flow),
        secret_groups: grouped(&enrollment.secret),
        secret: enrollment.secret,
        otpauth_uri: enrollment.otpauth_uri,
        qr_image: svg_image(&enrollment.qr_svg),
        flow: request.flow,
    };
    Reply::render(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct ConfirmForm {
    #[serde(default)]
    code: String,
    /// The key and URI shown on the page, posted back only to show the same
    /// QR code again after a wrong code (the API holds the real secret).
    #[serde(default)]
    secret: String,
    #[serde(default)]
    otpauth_uri: String,
    #[serde(default)]
    flow: String,
}

#[derive(Template)]
#[template(path = "recovery.html")]
struct RecoveryPage {
    chrome: Chrome,
    codes: Vec<String>,
}

/// `POST /settings/two-factor/totp/confirm` ("Confirm and Enable"):
/// `POST /api/v1/me/two-factor/totp/confirm`, then the recovery codes,
/// shown this once.
pub async fn confirm_totp(
    State(web): State<Web>,
    visitor: Visitor,
    request: Result<Form<ConfirmForm>, FormRejection>,
) -> Result<Reply, PageError> {
    let request = read(request)?;
    let answer = web
        .api
        .as_visitor(
            &visitor,
            Method::POST,
            "/me/two-factor/totp/confirm",
            Some(&json!({ "code": request.code.trim() })),
        )
        .await?;
    if answer.is_success() {
        let enabled: Enabled = answer.parse()?;
        let page = RecoveryPage {
            chrome: signed_in(&web, &visitor).await?,
            codes: enabled.recovery_codes,
        };
        return Reply::render(StatusCode::OK, &page);
    }
    if answer.error() != "invalid_code" || !request.otpauth_uri.starts_with("otpauth://") {
        return Err(answer.page_error());
    }
    let mut message = capitalized(&answer.message());
    if let Some(left) = answer.body["attempts_remaining"].as_u64() {
        message.push_str(&format!(" {left} attempts left."));
    }
    let qr = crate::qr::svg(&request.otpauth_uri)
        .map_err(|error| PageError::Internal(error.to_string()))?;
    let chrome = signed_in(&web, &visitor).await?.error(Some(message));
    let page = TotpPage {
        chrome: flow_chrome(chrome, &request.flow),
        secret_groups: grouped(&request.secret),
        secret: request.secret,
        otpauth_uri: request.otpauth_uri,
        qr_image: svg_image(&qr),
        flow: request.flow,
    };
    Reply::render(answer.status, &page)
}

#[derive(Deserialize)]
pub struct DisableForm {
    password: Option<String>,
    code: Option<String>,
}

/// `POST /settings/two-factor/disable` ("Disable Two-Factor
/// Authentication"): `DELETE /api/v1/me/two-factor`, confirmed with the
/// password and a fresh code from the user's own session; during "Login
/// as" the form has no fields and the API asks for none.
pub async fn disable_two_factor(
    State(web): State<Web>,
    visitor: Visitor,
    request: Result<Form<DisableForm>, FormRejection>,
) -> Result<Reply, PageError> {
    let request = read(request)?;
    let body = request.password.map(|password| {
        json!({
            "password": password,
            "code": request.code.map(|code| code.trim().to_string()),
        })
    });
    let answer = web
        .api
        .as_visitor(&visitor, Method::DELETE, "/me/two-factor", body.as_ref())
        .await?;
    match answer.into_done() {
        Ok(()) => Ok(Reply::redirect("/settings?notice=two-factor-disabled")),
        Err(PageError::Api { status, message }) => {
            settings_page(&web, &visitor, status, None, Some(capitalized(&message))).await
        }
        Err(other) => Err(other),
    }
}

/// `POST /settings/devices/forget`: `DELETE /api/v1/me/remembered-devices`.
pub async fn forget_devices(State(web): State<Web>, visitor: Visitor) -> Result<Reply, PageError> {
    web.api
        .as_visitor(&visitor, Method::DELETE, "/me/remembered-devices", None)
        .await?
        .into_done()?;
    let reply = Reply::redirect("/settings?notice=devices-forgotten");
    // This browser's device token is now useless; during "Login as" the
    // browser's token is the administrator's own, so it stays.
    if visitor.cookies.get(cookies::ADMIN_SESSION).is_some() {
        return Ok(reply);
    }
    Ok(reply.cookie(cookies::clear(cookies::DEVICE, visitor.secure)))
}
