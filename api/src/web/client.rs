//! The pages' way to the API: an in-process call of the API router, as the
//! visitor (their session token as bearer token, their address and user
//! agent), so the API's rules, errors and event metadata apply unchanged.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt;

use super::reply::PageError;
use super::visitor::Visitor;

/// JSON answers are small; a page never needs more than this of one.
const ANSWER_LIMIT: usize = 4 * 1024 * 1024;

/// An API answer: its status and JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The API's error code (`invalid_code`, `forbidden`, ...).
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    /// The API's message for people.
    pub fn message(&self) -> String {
        self.body["message"]
            .as_str()
            .unwrap_or("the request failed")
            .to_string()
    }

    /// The answer as the API's own response type (`routes::*`); a shape it
    /// does not read is a fault of ours, shown as an internal error.
    pub fn parse<T: DeserializeOwned>(self) -> Result<T, PageError> {
        serde_json::from_value(self.body)
            .map_err(|error| PageError::Internal(format!("unexpected API answer: {error}")))
    }

    /// Success as `T`; an error becomes the page error the API's code calls
    /// for (sign in again, go to enrollment, or an error page).
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, PageError> {
        if self.is_success() {
            self.parse()
        } else {
            Err(self.page_error())
        }
    }

    /// Success with no body of interest.
    pub fn into_done(self) -> Result<(), PageError> {
        if self.is_success() {
            Ok(())
        } else {
            Err(self.page_error())
        }
    }
}

impl Answer {
    /// The page error this API error calls for: sign in again, go to the
    /// enrollment step, or an error page with the API's message.
    pub fn page_error(&self) -> PageError {
        let answer = self;
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

/// The API router, called in-process.
#[derive(Clone)]
pub struct ApiClient {
    router: Router,
}

impl ApiClient {
    pub fn new(router: Router) -> Self {
        Self { router }
    }

    /// Sends one request to `/api/v1{path}` and returns the raw response
    /// (streamed bodies such as CSV exports pass through as they are).
    pub async fn send(
        &self,
        visitor: &Visitor,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Response, PageError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"));
        if let Some(agent) = &visitor.user_agent {
            request = request.header(header::USER_AGENT, agent.clone());
        }
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(value.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request
            .body(body)
            .map_err(|error| PageError::Internal(format!("bad API request: {error}")))?;
        if let Some(connect) = visitor.connect {
            request.extensions_mut().insert(connect);
        }
        if let Some(client) = visitor.client {
            request.extensions_mut().insert(client);
        }
        match self.router.clone().oneshot(request).await {
            Ok(response) => Ok(response),
            Err(never) => match never {},
        }
    }

    /// Passes a request the pages do not handle to the API as it is.
    pub async fn forward(&self, request: axum::extract::Request) -> Response {
        match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// Sends one request and reads its JSON answer.
    pub async fn call(
        &self,
        visitor: &Visitor,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer, PageError> {
        let response = self.send(visitor, method, path, token, body).await?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), ANSWER_LIMIT)
            .await
            .map_err(|error| PageError::Internal(format!("API answer unreadable: {error}")))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok(Answer { status, body })
    }

    /// A call made with the visitor's session; no session means "sign in".
    pub async fn as_visitor(
        &self,
        visitor: &Visitor,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, PageError> {
        let token = visitor.session().ok_or(PageError::SignIn)?;
        self.call(visitor, method, path, Some(token), body).await
    }

    pub async fn get(&self, visitor: &Visitor, path: &str) -> Result<Answer, PageError> {
        self.as_visitor(visitor, Method::GET, path, None).await
    }
}

/// A query string for the API or a page link from (name, value) pairs,
/// leaving out empty values (the API reads `name=` as a bad value for most
/// filters).
pub fn query(pairs: &[(&str, &str)]) -> String {
    let given: Vec<(&str, &str)> = pairs
        .iter()
        .copied()
        .filter(|(_, value)| !value.is_empty())
        .collect();
    serde_urlencoded::to_string(given).unwrap_or_default()
}
