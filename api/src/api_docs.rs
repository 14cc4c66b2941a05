//! `GET /api/docs`: the API reference as one HTML page, rendered by the
//! binary from its own OpenAPI document. No script at all, and nothing
//! from another host: the page and its stylesheet come from this service,
//! so it reads the same offline, behind a proxy, or under a strict CSP.

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use crate::state::AppState;
use crate::web::CONTENT_SECURITY_POLICY;

#[derive(Template)]
#[template(path = "api_docs.html")]
struct ApiDocsPage {
    title: String,
    version: String,
    description: String,
    groups: Vec<Group>,
    schemas: Vec<SchemaView>,
}

/// The operations of one tag, in the document's order.
struct Group {
    tag: String,
    description: String,
    operations: Vec<OperationView>,
}

struct OperationView {
    anchor: String,
    method: String,
    path: String,
    summary: String,
    description: String,
    secured: bool,
    parameters: Vec<ParameterView>,
    request: Option<SchemaLink>,
    responses: Vec<ResponseView>,
}

struct ParameterView {
    name: String,
    place: String,
    required: bool,
    description: String,
}

struct ResponseView {
    status: String,
    description: String,
    schema: Option<SchemaLink>,
    headers: Vec<String>,
}

/// A schema as a reader follows it: its name, and the anchor of its
/// definition on this page when it has one.
struct SchemaLink {
    label: String,
    anchor: Option<String>,
}

struct SchemaView {
    name: String,
    anchor: String,
    json: String,
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The API reference, as HTML.
#[utoipa::path(
    get,
    path = "/api/docs",
    tag = "operations",
    responses((status = 200, description = "The API reference (from the OpenAPI document) as an HTML page, without scripts", body = String, content_type = "text/html")),
)]
pub async fn api_docs(State(state): State<AppState>) -> Response {
    let document = serde_json::to_value(&*state.openapi).unwrap_or_default();
    let page = page_of(&document);
    match page.render() {
        Ok(html) => {
            let mut response = Html(html).into_response();
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            );
            response
        }
        Err(error) => {
            tracing::error!(%error, "the API reference could not be rendered");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn page_of(document: &Value) -> ApiDocsPage {
    let mut groups: Vec<Group> = document["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|tag| Group {
            tag: text(&tag["name"]),
            description: text(&tag["description"]),
            operations: Vec::new(),
        })
        .collect();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let view = operation_of(method, path, operation);
            let tag = operation["tags"][0].as_str().unwrap_or("other");
            match groups.iter_mut().find(|group| group.tag == tag) {
                Some(group) => group.operations.push(view),
                None => groups.push(Group {
                    tag: tag.to_string(),
                    description: String::new(),
                    operations: vec![view],
                }),
            }
        }
    }
    groups.retain(|group| !group.operations.is_empty());
    let schemas = document["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, schema)| SchemaView {
            name: name.clone(),
            anchor: schema_anchor(name),
            json: serde_json::to_string_pretty(schema).unwrap_or_default(),
        })
        .collect();
    ApiDocsPage {
        title: text(&document["info"]["title"]),
        version: text(&document["info"]["version"]),
        description: text(&document["info"]["description"]),
        groups,
        schemas,
    }
}

fn operation_of(method: &str, path: &str, operation: &Value) -> OperationView {
    let parameters = operation["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|parameter| ParameterView {
            name: text(&parameter["name"]),
            place: text(&parameter["in"]),
            required: parameter["required"].as_bool().unwrap_or(false),
            description: text(&parameter["description"]),
        })
        .collect();
    let request = first_content_schema(&operation["requestBody"]).map(schema_link);
    let responses = operation["responses"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(status, response)| ResponseView {
            status: status.clone(),
            description: text(&response["description"]),
            schema: first_content_schema(response).map(schema_link),
            headers: response["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, _)| name.clone())
                .collect(),
        })
        .collect();
    OperationView {
        anchor: format!(
            "{method}-{}",
            path.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        ),
        method: method.to_ascii_uppercase(),
        path: path.to_string(),
        summary: text(&operation["summary"]),
        description: text(&operation["description"]),
        secured: operation["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        parameters,
        request,
        responses,
    }
}

/// The schema of the first media type of a request body or a response.
fn first_content_schema(body: &Value) -> Option<&Value> {
    body["content"]
        .as_object()?
        .values()
        .next()
        .map(|media| &media["schema"])
}

fn schema_anchor(name: &str) -> String {
    format!("schema-{name}")
}

fn schema_link(schema: &Value) -> SchemaLink {
    if let Some(name) = schema["$ref"]
        .as_str()
        .and_then(|reference| reference.strip_prefix("#/components/schemas/"))
    {
        return SchemaLink {
            label: name.to_string(),
            anchor: Some(schema_anchor(name)),
        };
    }
    if schema["type"] == "array" {
        let items = schema_link(&schema["items"]);
        return SchemaLink {
            label: format!("array of {}", items.label),
            anchor: items.anchor,
        };
    }
    let label = match &schema["type"] {
        Value::String(kind) => kind.clone(),
        Value::Array(kinds) => kinds
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "object".to_string(),
    };
    SchemaLink {
        label,
        anchor: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_operation_and_schema_is_on_the_page() {
        let document = serde_json::to_value(crate::app::openapi()).unwrap();
        let html = page_of(&document).render().unwrap();
        for (path, item) in document["paths"].as_object().unwrap() {
            for method in METHODS.iter().filter(|method| item.get(**method).is_some()) {
                let shown = format!(
                    "{} <span class=\"path\">{path}</span>",
                    method.to_ascii_uppercase()
                );
                assert!(html.contains(&shown), "{shown}");
            }
        }
        for name in document["components"]["schemas"]
            .as_object()
            .unwrap()
            .keys()
        {
            assert!(html.contains(&format!("id=\"schema-{name}\"")), "{name}");
        }
    }
}
