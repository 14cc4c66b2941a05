//! What every page shares: the signed-in user as the API describes them,
//! the page frame (`Chrome`), answers with cookies, and the error pages.

use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::client::{Answer, Visitor};
use super::cookies;
use super::csrf;
use super::Web;

/// `GET /api/v1/me`.
#[derive(Clone, Debug, Deserialize)]
pub struct Me {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub role: String,
    pub two_factor: TwoFactor,
    pub impersonator: Option<Person>,
}

impl Me {
    pub fn offers_email(&self) -> bool {
        self.two_factor
            .methods
            .iter()
            .any(|method| method == "email")
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct TwoFactor {
    pub status: String,
    pub methods: Vec<String>,
    pub enforced: bool,
    pub required: bool,
    pub enabled_at: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Person {
    pub username: String,
}

/// The frame around a page: navigation, the "Login as" banner, messages,
/// and the CSRF token its forms carry.
#[derive(Clone, Debug, Default)]
pub struct Chrome {
    pub csrf: String,
    pub user: Option<Me>,
    /// Held on the enrollment step: no navigation but "Sign out".
    pub held: bool,
    pub notice: Option<String>,
    pub error: Option<String>,
}

impl Chrome {
    /// For a visitor who is not signed in; sets the anchor cookie that
    /// the forms' CSRF token derives from when there is none yet.
    pub fn anonymous(visitor: &Visitor) -> (Chrome, Option<HeaderValue>) {
        let (anchor, set) = match visitor.cookies.get(cookies::ANCHOR) {
            Some(anchor) => (anchor.to_string(), None),
            None => {
                let anchor = csrf::new_anchor();
                let set = cookies::set(cookies::ANCHOR, &anchor, None, visitor.secure);
                (anchor, Some(set))
            }
        };
        let chrome = Chrome {
            csrf: csrf::token(&anchor),
            ..Chrome::default()
        };
        (chrome, set)
    }

    pub fn notice(mut self, notice: Option<String>) -> Self {
        self.notice = notice;
        self
    }

    pub fn error(mut self, error: Option<String>) -> Self {
        self.error = error;
        self
    }

    fn role(&self) -> &str {
        self.user.as_ref().map_or("", |user| user.role.as_str())
    }

    /// Shows the administration links (the API still decides).
    pub fn is_admin(&self) -> bool {
        matches!(self.role(), "admin" | "super_admin")
    }

    pub fn is_super_admin(&self) -> bool {
        self.role() == "super_admin"
    }

    /// Shows the Users, Reports and Audit links.
    pub fn reads_reports(&self) -> bool {
        matches!(self.role(), "auditor" | "admin" | "super_admin")
    }

    /// The yellow alert next to "My Settings".
    pub fn two_factor_off(&self) -> bool {
        self.user
            .as_ref()
            .is_some_and(|user| user.two_factor.status != "enabled")
    }

    pub fn impersonator(&self) -> Option<&Person> {
        self.user
            .as_ref()
            .and_then(|user| user.impersonator.as_ref())
    }
}

/// The frame for a signed-in visitor, from `GET /me` (401: sign in again).
pub async fn signed_in(web: &Web, visitor: &Visitor) -> Result<Chrome, PageError> {
    let me: Me = web.api.get(visitor, "/me").await?.into_result()?;
    Ok(Chrome {
        csrf: visitor.session().map(csrf::token).unwrap_or_default(),
        user: Some(me),
        ..Chrome::default()
    })
}

/// A page, a redirect, plus the cookies to set.
pub struct Reply {
    response: Response,
}

impl Reply {
    pub fn page(status: StatusCode, html: String) -> Self {
        Reply {
            response: (status, Html(html)).into_response(),
        }
    }

    pub fn render<T: Template>(status: StatusCode, template: &T) -> Result<Self, PageError> {
        Ok(Self::page(status, render(template)?))
    }

    /// 303: after a form, the browser loads `to` with GET.
    pub fn redirect(to: &str) -> Self {
        let mut response = StatusCode::SEE_OTHER.into_response();
        if let Ok(location) = HeaderValue::from_str(to) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Reply { response }
    }

    pub fn cookie(mut self, set_cookie: HeaderValue) -> Self {
        self.response
            .headers_mut()
            .append(header::SET_COOKIE, set_cookie);
        self
    }

    pub fn maybe_cookie(self, set_cookie: Option<HeaderValue>) -> Self {
        match set_cookie {
            Some(value) => self.cookie(value),
            None => self,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        self.response
    }
}

pub fn render<T: Template>(template: &T) -> Result<String, PageError> {
    template
        .render()
        .map_err(|error| PageError::Internal(format!("template failed: {error}")))
}

/// Why a page could not be shown.
#[derive(Debug)]
pub enum PageError {
    /// No session, or the API no longer knows it: back to sign-in.
    SignIn,
    /// The API answered 403 `two_factor_enrollment_required`.
    Enroll,
    /// Any other API error: shown with the API's own message.
    Api {
        status: StatusCode,
        message: String,
    },
    /// A form without a valid CSRF token.
    Csrf,
    /// A form or link we could not read.
    BadForm(String),
    NotFound,
    /// A fault of ours: logged, never shown.
    Internal(String),
}

impl PageError {
    pub fn from_answer(answer: &Answer) -> Self {
        match (answer.status, answer.error()) {
            (StatusCode::UNAUTHORIZED, "unauthenticated") => PageError::SignIn,
            (StatusCode::FORBIDDEN, "two_factor_enrollment_required") => PageError::Enroll,
            (status, _) => PageError::Api {
                status,
                message: answer.message(),
            },
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Chrome,
    heading: String,
    message: String,
}

fn error_page(status: StatusCode, heading: &str, message: String) -> Response {
    let page = ErrorPage {
        chrome: Chrome::default(),
        heading: heading.to_string(),
        message,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "error page template failed");
            (status, "Something went wrong.").into_response()
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn => Reply::redirect("/?notice=signed-out").into_response(),
            PageError::Enroll => Reply::redirect("/enroll").into_response(),
            PageError::Api { status, message } => {
                let heading = match status {
                    StatusCode::FORBIDDEN => "Not allowed",
                    StatusCode::NOT_FOUND => "Not found",
                    StatusCode::CONFLICT => "Not possible now",
                    StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
                    status if status.is_server_error() => "Temporarily unavailable",
                    _ => "That did not work",
                };
                error_page(status, heading, capitalized(&message))
            }
            PageError::Csrf => error_page(
                StatusCode::FORBIDDEN,
                "This form has expired",
                "The form was not sent from this site's current page. Go back, reload the \
                 page and try again."
                    .into(),
            ),
            PageError::BadForm(message) => error_page(
                StatusCode::BAD_REQUEST,
                "That did not work",
                capitalized(&message),
            ),
            PageError::NotFound => error_page(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such page.".into(),
            ),
            PageError::Internal(cause) => {
                tracing::error!(%cause, "page failed");
                error_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "Please try again in a moment.".into(),
                )
            }
        }
    }
}

pub async fn method_not_allowed() -> Response {
    error_page(
        StatusCode::METHOD_NOT_ALLOWED,
        "Not here",
        "This page cannot be used that way.".into(),
    )
}

/// The API's messages are lower case; a sentence on a page is not.
pub fn capitalized(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => {
            let mut text: String = first.to_uppercase().collect();
            text.push_str(chars.as_str());
            if !text.ends_with(['.', '!', '?']) {
                text.push('.');
            }
            text
        }
        None => String::new(),
    }
}

/// An RFC 3339 time from the API as people read it; `-` when missing.
pub fn when(time: Option<&str>) -> String {
    match time {
        Some(time) => chrono::DateTime::parse_from_rfc3339(time)
            .map(|at| {
                at.with_timezone(&chrono::Utc)
                    .format("%Y-%m-%d %H:%M UTC")
                    .to_string()
            })
            .unwrap_or_else(|_| time.to_string()),
        None => "-".to_string(),
    }
}

/// Fixed messages a redirect may ask a page to show (`?notice=...`), so no
/// text of ours or anyone's travels in a URL.
pub fn notice_text(code: Option<&str>) -> Option<String> {
    let text = match code? {
        "signed-out" => "You are signed out. Sign in to continue.",
        "two-factor-disabled" => "Two-factor authentication is now off.",
        "devices-forgotten" => "Every remembered device will be asked for a code again.",
        "enforcement-saved" => "Saved.",
        "two-factor-reset" => "The user's two-factor authentication was reset.",
        "impersonation-ended" => "You are back in your own account.",
        _ => return None,
    };
    Some(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_times_read_well() {
        assert_eq!(
            capitalized("the code is not valid"),
            "The code is not valid."
        );
        assert_eq!(capitalized(""), "");
        assert_eq!(
            when(Some("2025-04-10T08:30:00.123Z")),
            "2025-04-10 08:30 UTC"
        );
        assert_eq!(when(None), "-");
        assert_eq!(notice_text(Some("nonsense")), None);
    }
}
