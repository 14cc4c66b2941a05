//! The OpenAPI document describes every route the router serves, and only
//! those. The router is assembled from the handlers' `#[utoipa::path]`
//! annotations (`routes!` in `api/src/app.rs`), so a documented route
//! cannot be missing from the router; these tests close the other doors:
//! a route added with a plain `.route(`, a method served on a documented
//! path but not documented, an operation without its error answers.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{spawn_app, Backend};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn document() -> Value {
    serde_json::to_value(twofold_api::openapi()).unwrap()
}

/// Every (method, path) the document lists.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.as_str()) {
                found.insert((method.clone(), path.clone()));
            }
        }
    }
    found
}

/// `/users/{id}` with a fresh UUID for each parameter.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(&uuid::Uuid::new_v4().to_string());
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_openapi_3_1_and_the_generated_one() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app
        .client
        .get(format!("{}/api/v1/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let served: Value = response.json().await.unwrap();
    assert_eq!(served, document());
    assert_eq!(served["openapi"], "3.1.0");
    assert!(served["components"]["securitySchemes"]["bearer"].is_object());
    app.stop().await;
}

/// Each documented operation is routed (neither the router's 404 nor 405),
/// and every other method on a documented path answers 405: the router
/// serves nothing on these paths that the document does not list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed_and_nothing_else_on_its_path() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc = document();
    let documented = operations(&doc);
    let paths: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();
    for path in paths {
        let url = format!("{}{}", app.base, concrete(path));
        for method in METHODS {
            let response = app
                .client
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    &url,
                )
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let routed = status != StatusCode::METHOD_NOT_ALLOWED
                && !(status == StatusCode::NOT_FOUND && body["message"] == "no such endpoint");
            let listed = documented.contains(&(method.to_string(), path.clone()));
            assert_eq!(
                routed, listed,
                "{method} {path}: answered {status} {body}, documented: {listed}"
            );
        }
    }
    app.stop().await;
}

/// A route added to the router without `routes!` (a plain `.route(`)
/// would bypass the document: the API's wiring has none.
#[test]
fn every_api_route_is_registered_through_its_annotation() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("api/src");
    let app_rs = std::fs::read_to_string(root.join("app.rs"))
        .unwrap()
        .replace("OpenApiRouter::new()", "OpenApiRouter");
    for plain in [
        ".route(",
        ".route_service(",
        ".nest_service(",
        "Router::new()",
    ] {
        assert!(
            !app_rs.contains(plain),
            "api/src/app.rs uses `{plain}`: register API routes with `.routes(routes!(handler))` \
             and annotate the handler with #[utoipa::path]"
        );
    }
    // Nowhere else in the crate may a route under /api/ be added by hand
    // (app.rs nests the documented OpenApiRouter, checked above).
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") && !path.ends_with("app.rs") {
                let source = std::fs::read_to_string(&path).unwrap();
                let compact: String = source.split_whitespace().collect();
                for plain in [
                    ".route(\"/api",
                    ".nest(\"/api",
                    ".route(\"/healthz",
                    ".route(\"/readyz",
                    ".route(\"/metrics",
                ] {
                    assert!(
                        !compact.contains(plain),
                        "{} adds an API route by hand ({plain}): use routes! in app.rs",
                        path.display()
                    );
                }
            }
        }
    }
}

/// Each annotated handler is in the document (an annotation without its
/// `routes!` line would describe nothing that is served).
#[test]
fn every_annotated_handler_is_served() {
    let doc = document();
    let mut operation_ids = BTreeSet::new();
    for (method, path) in operations(&doc) {
        let id = doc["paths"][&path][&method]["operationId"]
            .as_str()
            .unwrap();
        assert!(
            operation_ids.insert(id.to_string()),
            "operationId {id} is used twice: name it with operation_id = \"...\""
        );
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("api/src");
    let mut files = vec![root.join("openapi.rs"), root.join("api_docs.rs")];
    for entry in std::fs::read_dir(root.join("routes")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let mut annotated = 0;
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        for (index, _) in source.match_indices("#[utoipa::path(") {
            let after = &source[index..];
            let (annotation, function) = after.split_once("pub async fn ").unwrap();
            let name = match annotation.split_once("operation_id = \"") {
                Some((_, rest)) => rest.split('"').next().unwrap(),
                None => function.split(['(', '<']).next().unwrap(),
            };
            annotated += 1;
            assert!(
                operation_ids.contains(name),
                "{name} in {} is annotated but not routed",
                file.display()
            );
        }
    }
    assert_eq!(annotated, operation_ids.len());
}

/// Documented means documented: a success answer, the error body on every
/// 4xx/5xx, 401 on every call that takes a token, 400/422 on every body.
#[test]
fn every_operation_documents_its_answers() {
    let doc = document();
    let error_ref = "#/components/schemas/ErrorBody";
    for (method, path) in operations(&doc) {
        let operation = &doc["paths"][&path][&method];
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|status| status.starts_with('2')),
            "{method} {path} documents no success"
        );
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"], error_ref,
                    "{method} {path} {status} is not the error body"
                );
            }
        }
        if operation["security"].is_array() {
            assert!(responses.contains_key("401"), "{method} {path}: 401");
            assert!(responses.contains_key("403"), "{method} {path}: 403");
        }
        if operation["requestBody"].is_object() {
            for status in ["400", "413", "422"] {
                assert!(responses.contains_key(status), "{method} {path}: {status}");
            }
        }
        if path.contains('{') {
            assert!(responses.contains_key("400"), "{method} {path}: 400");
        }
        assert!(
            operation["operationId"].is_string() && operation["summary"].is_string(),
            "{method} {path} needs a doc comment"
        );
    }
    let error = &doc["components"]["schemas"]["ErrorBody"];
    let required: Vec<&str> = error["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["error", "message"]);
    assert!(error["properties"]["attempts_remaining"].is_object());
}

/// The API reference is one page of this service: every operation of the
/// document is on it, and it loads no script at all and nothing (style,
/// font, image) from another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reference_is_a_page_with_nothing_from_another_host() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app
        .client
        .get(format!("{}/api/docs", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'self'"));
    let html = response.text().await.unwrap();
    assert!(!html.to_ascii_lowercase().contains("<script"), "{html}");
    for attribute in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attribute) {
            let value = &html[at + attribute.len()..];
            assert!(
                value.starts_with('/') && !value.starts_with("//")
                    || value.starts_with('#')
                    || value.starts_with("data:"),
                "{attribute}{}",
                &value[..value.len().min(60)]
            );
        }
    }
    for (method, path) in operations(&document()) {
        let shown = format!(
            "{} <span class=\"path\">{path}</span>",
            method.to_ascii_uppercase()
        );
        assert!(html.contains(&shown), "{shown} is not on the page");
    }
    let stylesheet = app
        .client
        .get(format!("{}/static/app.css", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stylesheet.status(), StatusCode::OK);
    app.stop().await;
}
