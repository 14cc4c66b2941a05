//! My Settings' passkeys: the list with rename and remove (plain forms),
//! and adding one, which needs the browser's WebAuthn API: our own script
//! (`/static/passkeys.js`, under the pages' Content-Security-Policy) posts
//! the CSRF-checked forms below, which answer the API's JSON as it is.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::client::Answer;
use super::pages::when;
use super::reply::{PageError, Reply};
use super::visitor::Visitor;
use super::Web;
use crate::routes::passkeys::PasskeyList;

/// A passkey as a row of My Settings.
pub struct PasskeyRow {
    pub id: Uuid,
    pub name: String,
    pub created: String,
    pub last_used: String,
}

/// The visitor's passkeys.
pub async fn passkey_rows(web: &Web, visitor: &Visitor) -> Result<Vec<PasskeyRow>, PageError> {
    let list: PasskeyList = web.api.get(visitor, "/me/passkeys").await?.into_result()?;
    Ok(list
        .passkeys
        .into_iter()
        .map(|passkey| PasskeyRow {
            id: passkey.id,
            name: passkey.name,
            created: when(Some(passkey.created_at)),
            last_used: when(passkey.last_used_at),
        })
        .collect())
}

/// The API's answer as JSON, for the script.
fn json_answer(answer: Answer) -> Response {
    (
        answer.status,
        [(header::CONTENT_TYPE, "application/json")],
        answer.body.to_string(),
    )
        .into_response()
}

/// `POST /settings/passkeys/options`: `POST /api/v1/me/passkeys`.
pub async fn options(State(web): State<Web>, visitor: Visitor) -> Result<Response, PageError> {
    let answer = web
        .api
        .as_visitor(&visitor, Method::POST, "/me/passkeys", None)
        .await?;
    Ok(json_answer(answer))
}

#[derive(Deserialize)]
pub struct AddForm {
    registration_id: Uuid,
    name: String,
    /// The browser's `RegistrationResponseJSON`, as text.
    credential: String,
}

/// `POST /settings/passkeys/add`: `POST /api/v1/me/passkeys/{id}`.
pub async fn add(
    State(web): State<Web>,
    visitor: Visitor,
    form: Result<Form<AddForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(|rejection| PageError::BadForm(rejection.body_text()))?;
    let Ok(credential) = serde_json::from_str::<serde_json::Value>(&form.credential) else {
        return Err(PageError::BadForm("the credential is not JSON".into()));
    };
    let answer = web
        .api
        .as_visitor(
            &visitor,
            Method::POST,
            &format!("/me/passkeys/{}", form.registration_id),
            Some(&json!({ "name": form.name, "credential": credential })),
        )
        .await?;
    Ok(json_answer(answer))
}

#[derive(Deserialize)]
pub struct RenameForm {
    name: String,
}

/// `POST /settings/passkeys/{id}/rename`: `PATCH /api/v1/me/passkeys/{id}`.
pub async fn rename(
    State(web): State<Web>,
    visitor: Visitor,
    Path(id): Path<Uuid>,
    form: Result<Form<RenameForm>, FormRejection>,
) -> Result<Reply, PageError> {
    let Form(form) = form.map_err(|rejection| PageError::BadForm(rejection.body_text()))?;
    web.api
        .as_visitor(
            &visitor,
            Method::PATCH,
            &format!("/me/passkeys/{id}"),
            Some(&json!({ "name": form.name })),
        )
        .await?
        .into_done()?;
    Ok(Reply::redirect("/settings?notice=passkey-renamed"))
}

/// `POST /settings/passkeys/{id}/remove`: `DELETE /api/v1/me/passkeys/{id}`
/// (refused while it is the last factor and 2FA is required).
pub async fn remove(
    State(web): State<Web>,
    visitor: Visitor,
    Path(id): Path<Uuid>,
) -> Result<Reply, PageError> {
    web.api
        .as_visitor(
            &visitor,
            Method::DELETE,
            &format!("/me/passkeys/{id}"),
            None,
        )
        .await?
        .into_done()?;
    Ok(Reply::redirect("/settings?notice=passkey-removed"))
}

const SCRIPT: &str = include_str!("../../static/passkeys.js");

/// `GET /static/passkeys.js`.
pub async fn script() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SCRIPT,
    )
        .into_response()
}
