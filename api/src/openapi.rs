//! The OpenAPI 3.1 description of the API, generated from the handlers'
//! `#[utoipa::path]` annotations. The router is assembled from the same
//! annotations (`routes!` in `app.rs` takes each path and method from them),
//! so a route cannot exist without its description; `GET
//! /api/v1/openapi.json` serves it.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::State;
use serde::Serialize;
use twofold_domain::{Role, SecondFactorMethod, TwoFactorStatus};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{IntoResponses, Modify, OpenApi, PartialSchema, ToSchema};

use crate::error::ErrorBody;
use crate::extract::Json;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "twofold",
        description = "Sign-in and two-factor authentication for a back office, event-sourced. \
                       Every error is `{\"error\", \"message\"}` (`invalid_code` adds \
                       `attempts_remaining`). Answers to requests that stored events carry \
                       `Twofold-Position`; the read endpoints take `min_position`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerToken),
    tags(
        (name = "sign-in", description = "Password, second factor, sign-out"),
        (name = "me", description = "The signed-in user: profile, 2FA, devices, password"),
        (name = "users", description = "Administration of users, enforcement, Login as"),
        (name = "reports", description = "The 2FA report and the audit trail"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme: `Authorization: Bearer <session_token>`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A session token from /login, /login/challenges/{id}/verify or \
                         /users/{id}/impersonation",
                    ))
                    .build(),
            ),
        );
    }
}

fn string_enum(values: impl IntoIterator<Item = &'static str>, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .description(Some(description))
        .into()
}

/// The schema of a domain enum, listed from the domain's own names so the
/// description cannot drift from what the API writes and reads.
macro_rules! domain_enum_schema {
    ($schema:ident, $name:literal, $values:expr, $description:literal) => {
        pub struct $schema;

        impl PartialSchema for $schema {
            fn schema() -> RefOr<Schema> {
                string_enum($values, $description)
            }
        }

        impl ToSchema for $schema {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

domain_enum_schema!(
    RoleSchema,
    "Role",
    Role::ALL.map(Role::as_str),
    "A user's role"
);
domain_enum_schema!(
    TwoFactorStatusSchema,
    "TwoFactorStatus",
    TwoFactorStatus::ALL.map(TwoFactorStatus::as_str),
    "Whether the user has two-factor authentication"
);
domain_enum_schema!(
    MethodSchema,
    "SecondFactorMethod",
    SecondFactorMethod::ALL.map(SecondFactorMethod::as_str),
    "A second factor"
);

/// 400 `invalid_request`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum BadRequest {
    /// Malformed JSON, a missing `Content-Type: application/json`, a bad UUID
    /// in the path, a bad query value or cursor, or a value that breaks a
    /// rule.
    #[response(status = 400)]
    BadRequest(ErrorBody),
}

/// What a JSON body can be refused for, besides 400.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum BodyErrors {
    /// `invalid_request`: the body is larger than 64 KiB.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `invalid_request`: well-formed JSON of the wrong shape (wrong types,
    /// unknown or missing fields).
    #[response(status = 422)]
    Unprocessable(ErrorBody),
}

/// What any call with a bearer token can be refused for.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum SessionErrors {
    /// `unauthenticated`: no token, or an unknown, expired, idle or revoked one.
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// `forbidden` (the role or a "Login as" session may not do this), or
    /// `two_factor_enrollment_required` (the session is held on enrollment).
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `unavailable`: the store does not answer or cannot be written, or the
    /// password checks are at capacity (`Retry-After`).
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// `unavailable`: the store does not answer (`Retry-After`).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Unavailable {
    /// `unavailable`: the store does not answer or cannot be written, the
    /// password checks are at capacity, or (with `min_position`) the read
    /// models have not reached it within 5 s; see `Retry-After`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// `{"status": "ok"}` and the like.
/// Declares the response headers the service sets on whole classes of
/// answers, where the routes' annotations would repeat them: `Retry-After`
/// on 423, 429 and 503, `Twofold-Position` on the successful answers of
/// requests that may store events (every method but GET).
pub fn declare_headers(openapi: &mut utoipa::openapi::OpenApi) {
    let header = |description: &str| {
        HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::Integer))
            .description(Some(description))
            .build()
    };
    let retry_after = header("Seconds to wait before trying again.");
    let position = header(
        "The position of the last event this request stored; pass it as \
         `min_position` to a read that must see it.",
    );
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            (false, &mut item.get),
            (true, &mut item.post),
            (true, &mut item.put),
            (true, &mut item.patch),
            (true, &mut item.delete),
        ];
        for (writes, operation) in operations {
            let Some(operation) = operation else { continue };
            for (status, response) in &mut operation.responses.responses {
                let RefOr::T(response) = response else {
                    continue;
                };
                if matches!(status.as_str(), "423" | "429" | "503") {
                    response
                        .headers
                        .insert("Retry-After".into(), retry_after.clone());
                }
                if writes && status.starts_with('2') {
                    response
                        .headers
                        .insert("Twofold-Position".into(), position.clone());
                }
            }
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Status {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// This OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", body = Object)),
)]
pub async fn openapi_json(State(state): State<AppState>) -> Json<Arc<utoipa::openapi::OpenApi>> {
    Json(Arc::clone(&state.openapi))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn domain_enums_are_described_with_their_serde_names() {
        let spec = serde_json::to_value(crate::app::openapi()).unwrap();
        let schemas = &spec["components"]["schemas"];
        let names = |schema: &str| -> Vec<String> {
            serde_json::from_value(schemas[schema]["enum"].clone()).unwrap()
        };
        for role in names("Role") {
            let _: Role = serde_json::from_value(serde_json::json!(role)).unwrap();
        }
        for status in names("TwoFactorStatus") {
            let _: TwoFactorStatus = serde_json::from_value(serde_json::json!(status)).unwrap();
        }
        for method in names("SecondFactorMethod") {
            let _: SecondFactorMethod = serde_json::from_value(serde_json::json!(method)).unwrap();
        }
        assert_eq!(names("Role").len(), 4);
        assert_eq!(spec["openapi"], "3.1.0");
    }

    #[test]
    fn the_login_answer_names_its_three_shapes_by_status() {
        let spec = serde_json::to_value(crate::app::openapi()).unwrap();
        let answer = &spec["components"]["schemas"]["LoginAnswer"];
        assert_eq!(answer["discriminator"]["propertyName"], "status");
        let mapping = answer["discriminator"]["mapping"].as_object().unwrap();
        for (status, schema) in [
            ("authenticated", "Authenticated"),
            ("two_factor_required", "TwoFactorRequired"),
            ("enrollment_required", "EnrollmentRequired"),
        ] {
            let reference = format!("#/components/schemas/{schema}");
            assert_eq!(mapping[status], reference.as_str());
            assert!(answer["oneOf"]
                .as_array()
                .unwrap()
                .iter()
                .any(|variant| variant["$ref"] == reference.as_str()));
            let pattern = &spec["components"]["schemas"][schema]["properties"]["status"]["pattern"];
            assert_eq!(pattern.as_str().unwrap(), format!("^{status}$"));
        }
    }

    #[test]
    fn waits_and_positions_are_declared_as_response_headers() {
        let spec = serde_json::to_value(crate::app::openapi()).unwrap();
        let login = &spec["paths"]["/api/v1/login"]["post"]["responses"];
        assert!(login["423"]["headers"]["Retry-After"].is_object());
        assert!(login["429"]["headers"]["Retry-After"].is_object());
        assert!(login["200"]["headers"]["Twofold-Position"].is_object());
        let me = &spec["paths"]["/api/v1/me"]["get"]["responses"]["200"];
        assert!(me["headers"]["Twofold-Position"].is_null());
    }
}
