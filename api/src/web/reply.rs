//! What a page handler answers: a page, a redirect (with the cookies to
//! set), or why it could not be shown, as an error page.

use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::chrome::Chrome;

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
