//! 10,000 malformed requests, generated from a fixed seed, across every
//! operation of the OpenAPI document (so a new endpoint is covered without
//! editing this file), with an administrator's token, a plain user's token,
//! junk tokens and none: bad JSON, wrong types, unknown fields and enum
//! values, huge, empty and deeply nested bodies, bad UUIDs, cursors, limits
//! and times, control characters, SQL and CSV/formula injection strings,
//! unknown paths and methods.
//!
//! Every request is built to be refused (or to only read), so the events
//! table must be exactly as it was; no answer may be a 5xx, and every error
//! must be the contract's `{"error", "message"}`. Reproduce a failure with
//! `TWOFOLD_MALFORMED_SEED=<seed>` (the seed is printed).

use std::collections::BTreeSet;
use std::time::Instant;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::helpers::{spawn_app, Backend, TestApp};
use crate::on_both_backends;

const REQUESTS: usize = 10_000;
const IN_FLIGHT: usize = 32;
const DEFAULT_SEED: u64 = 20_240_501;

const ERROR_CODES: [&str; 16] = [
    "invalid_request",
    "unauthenticated",
    "invalid_credentials",
    "invalid_code",
    "forbidden",
    "two_factor_enrollment_required",
    "not_found",
    "conflict",
    "email_unavailable",
    "two_factor_enforced",
    "challenge_expired",
    "challenge_locked",
    "account_locked",
    "rate_limited",
    "unavailable",
    "internal",
];

/// Strings that have broken other services: injections, control and
/// direction characters, formulas, huge and empty values.
const NASTY: [&str; 24] = [
    "' OR '1'='1",
    "'; DROP TABLE events; --",
    "\" OR 1=1 --",
    "1; SELECT pg_sleep(10)",
    "admin'--",
    "=HYPERLINK(\"http://evil.example\",\"x\")",
    "=cmd|' /C calc'!A0",
    "+1+1",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1",
    "\r=1",
    "\u{0}",
    "a\u{0}b",
    "\u{1b}[31mred",
    "\u{202e}evil",
    "line\nbreak",
    "%00",
    "../../etc/passwd",
    "{{7*7}}",
    "${jndi:ldap://x}",
    "<script>alert(1)</script>",
    "\u{feff}",
    "🙂🙂🙂",
];

/// Not UUIDs, whatever the parser is lenient about.
const BAD_UUIDS: [&str; 12] = [
    "not-a-uuid",
    "00000000-0000-0000-0000-00000000000",
    "00000000-0000-0000-0000-0000000000000",
    "g0000000-0000-0000-0000-000000000000",
    "' OR 1=1 --",
    "1",
    "-1",
    "null",
    "{id}",
    "%00",
    "..",
    "00000000_0000_0000_0000_000000000000",
];

/// The parts of one operation the generator needs.
#[derive(Clone, Debug)]
struct Operation {
    method: String,
    path: String,
    secured: bool,
    /// `(name, JSON type)` of the request body's properties; `None` when
    /// the operation takes no body.
    body: Option<Vec<(String, String)>>,
    query: Vec<String>,
}

/// Who calls.
#[derive(Clone, Copy, Debug)]
enum Caller {
    Admin,
    User,
    Nobody,
    Junk(usize),
}

#[derive(Clone, Debug)]
struct Probe {
    label: String,
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    /// Must the answer be an error (4xx)? Reads of public endpoints and
    /// searches with odd but valid text may succeed.
    must_fail: bool,
}

struct Context {
    base: String,
    admin: String,
    user: String,
    target: String,
    challenge: String,
}

fn operations() -> Vec<Operation> {
    let doc = serde_json::to_value(twofold_api::openapi()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .map(|reference| {
                    let name = reference.rsplit('/').next().unwrap();
                    schemas[name]["properties"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(field, schema)| {
                            let kind = match &schema["type"] {
                                Value::String(kind) => kind.clone(),
                                Value::Array(kinds) => kinds[0].as_str().unwrap().to_string(),
                                _ => "string".to_string(), // enums by $ref: strings
                            };
                            (field.clone(), kind)
                        })
                        .collect()
                });
            let query = operation["parameters"]
                .as_array()
                .map(|parameters| {
                    parameters
                        .iter()
                        .filter(|p| p["in"] == "query")
                        .map(|p| p["name"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            found.push(Operation {
                method: method.to_uppercase(),
                path: path.clone(),
                secured: operation["security"].is_array(),
                body,
                query,
            });
        }
    }
    found
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn nasty(rng: &mut StdRng) -> String {
    match rng.gen_range(0..10) {
        0 => String::new(),
        1 => "x".repeat(rng.gen_range(1_000..20_000)),
        2 => (0..rng.gen_range(1..40))
            .map(|_| char::from_u32(rng.gen_range(0..0x80)).unwrap_or('?'))
            .collect(),
        3 => (0..rng.gen_range(1..20))
            .map(|_| rng.gen::<char>())
            .collect(),
        _ => NASTY.choose(rng).unwrap().to_string(),
    }
}

/// A value of the wrong JSON type for a field of `kind`.
fn wrong_type(kind: &str, rng: &mut StdRng) -> Value {
    let options = match kind {
        "boolean" => vec![json!("true"), json!(1), json!([]), json!({})],
        "integer" | "number" => vec![json!("1"), json!(true), json!([1]), json!({})],
        _ => vec![
            json!(123),
            json!(-1.5e300),
            json!(true),
            json!([nasty(rng)]),
            json!({ "$ne": null }),
        ],
    };
    options.choose(rng).unwrap().clone()
}

/// A value of the right type, possibly nasty.
fn some_value(kind: &str, rng: &mut StdRng) -> Value {
    match kind {
        "boolean" => json!(rng.gen::<bool>()),
        "integer" | "number" => json!(rng.gen::<i32>()),
        _ => json!(nasty(rng)),
    }
}

/// A username no parser accepts (a character outside `a-z 0-9 . _ - @`).
fn bad_username(rng: &mut StdRng) -> String {
    let base = nasty(rng);
    let breaker = ["'", " ", "\u{0}", ";", "é", "/", "\"", "="]
        .choose(rng)
        .unwrap();
    format!("{base}{breaker}{base}")
}

fn object(fields: &[(String, String)], rng: &mut StdRng) -> serde_json::Map<String, Value> {
    let mut body = serde_json::Map::new();
    for (name, kind) in fields {
        if rng.gen_bool(0.8) {
            body.insert(name.clone(), some_value(kind, rng));
        }
    }
    body
}

/// A body the operation must refuse, whatever else the request holds.
fn bad_body(op: &Operation, fields: &[(String, String)], rng: &mut StdRng) -> (String, Vec<u8>) {
    let broken: [&[u8]; 12] = [
        b"",
        b"{",
        b"{\"username\":}",
        b"[1,2",
        b"{'single': 'quotes'}",
        b"{\"a\":1,}",
        b"\xff\xfe\x00garbage",
        b"null",
        b"[]",
        b"\"text\"",
        b"42",
        b"{\"a\":1} trailing",
    ];
    match rng.gen_range(0..10) {
        0 => ("broken JSON".into(), broken.choose(rng).unwrap().to_vec()),
        1 => {
            let mut body = object(fields, rng);
            body.insert(format!("x{}", nasty(rng)), json!(nasty(rng)));
            (
                "unknown field".into(),
                Value::Object(body).to_string().into_bytes(),
            )
        }
        2 => {
            // 70 KiB: over the body limit.
            let body = json!({ "username": "a".repeat(70 * 1024), "password": "x" });
            ("huge body".into(), body.to_string().into_bytes())
        }
        3 => {
            let depth = rng.gen_range(200..5_000);
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            ("deep nesting".into(), body.into_bytes())
        }
        4 if fields
            .iter()
            .any(|(_, kind)| kind == "string" || kind == "boolean") =>
        {
            let mut body = object(fields, rng);
            let (name, kind) = fields.choose(rng).unwrap();
            body.insert(name.clone(), wrong_type(kind, rng));
            (
                "wrong type".into(),
                Value::Object(body).to_string().into_bytes(),
            )
        }
        5 => {
            let (name, _) = fields.choose(rng).unwrap();
            let body = format!("{{\"{name}\":\"a\",\"{name}\":\"b\"}}");
            ("duplicate field".into(), body.into_bytes())
        }
        _ => rule_breaking(op, fields, rng),
    }
}

/// Well-formed JSON that breaks one of the operation's own rules.
fn rule_breaking(
    op: &Operation,
    fields: &[(String, String)],
    rng: &mut StdRng,
) -> (String, Vec<u8>) {
    let mut body = object(fields, rng);
    let label = match (op.method.as_str(), op.path.as_str()) {
        ("POST", "/api/v1/login") => {
            body.insert("username".into(), json!(bad_username(rng)));
            body.entry("password").or_insert(json!(nasty(rng)));
            "unknown username"
        }
        ("POST", "/api/v1/users") => {
            body.insert("username".into(), json!("valid.name"));
            body.insert("password".into(), json!("longenough"));
            match rng.gen_range(0..3) {
                0 => body.insert("username".into(), json!(bad_username(rng))),
                1 => body.insert("password".into(), json!("x".repeat(rng.gen_range(0..8)))),
                _ => body.insert(
                    "role".into(),
                    json!(["root", "Admin", "SUPER_ADMIN", "' OR 1=1", ""]
                        .choose(rng)
                        .unwrap()),
                ),
            };
            "user rule broken"
        }
        ("PATCH", _) => {
            if rng.gen_bool(0.5) {
                body.insert(
                    "role".into(),
                    json!(["root", "Admin", "superadmin", "user ", "\u{0}"]
                        .choose(rng)
                        .unwrap()),
                );
            } else {
                body.remove("role");
                body.insert(
                    "email".into(),
                    json!(["no-at-sign", "a b@c.d", "x@y@z", "a\u{0}@b", "@", "a@"]
                        .choose(rng)
                        .unwrap()),
                );
            }
            "bad role or email"
        }
        (_, path) if path.ends_with("/impersonation") => {
            if rng.gen_bool(0.5) {
                body.remove("reason");
            } else {
                body.insert(
                    "reason".into(),
                    json!(["", " ", "\t\n"].choose(rng).unwrap()),
                );
            }
            "no reason"
        }
        (_, "/api/v1/me/password") => {
            body.insert("current_password".into(), json!(nasty(rng)));
            body.insert(
                "new_password".into(),
                json!("x".repeat(rng.gen_range(0..8))),
            );
            "short password"
        }
        (_, path) if path.ends_with("/verify") => {
            body.insert(
                "method".into(),
                json!(["sms", "TOTP", "", "push", "recovery-code"]
                    .choose(rng)
                    .unwrap()),
            );
            "unknown method"
        }
        _ => {
            // Anything else: a missing required field or an unknown one.
            body.insert("unexpected".into(), json!(nasty(rng)));
            "unknown field"
        }
    };
    (label.into(), Value::Object(body).to_string().into_bytes())
}

/// A query the endpoint must refuse.
fn bad_query(op: &Operation, rng: &mut StdRng) -> (String, bool) {
    let mut pairs: Vec<String> = Vec::new();
    // Sometimes a nasty but valid search first.
    if op.query.contains(&"q".to_string()) && rng.gen_bool(0.3) {
        pairs.push(format!(
            "q={}",
            encode(&nasty(rng)[..].chars().take(500).collect::<String>())
        ));
    }
    let bad = match rng.gen_range(0..8) {
        0 => format!(
            "limit={}",
            [
                "0",
                "501",
                "-1",
                "abc",
                "99999999999999999999",
                "1.5",
                "%2B"
            ]
            .choose(rng)
            .unwrap()
        ),
        1 => {
            // Not base64, or not UTF-8; the audit trail's cursors are also
            // `a<id>` with a non-negative id that fits in 64 bits.
            let mut cursors = vec!["%%%", "!!", "_w", "a b", "===="];
            if op.path.ends_with("/audit") {
                cursors.extend(["YQ", "eDQy", "YS0x", "YTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk"]);
            }
            format!("cursor={}", encode(cursors.choose(rng).unwrap()))
        }
        2 => format!(
            "min_position={}",
            ["0", "-5", "x", "1e3", ""].choose(rng).unwrap()
        ),
        3 => {
            let short = |rng: &mut StdRng| nasty(rng).chars().take(300).collect::<String>();
            format!("zz{}={}", encode(&short(rng)), encode(&short(rng)))
        }
        4 => ["limit=%FF", "cursor=%ZZ", "two_factor=%00", "format=%E2%28"]
            .choose(rng)
            .unwrap()
            .to_string(),
        _ => {
            let name = op
                .query
                .choose(rng)
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            let value = match name.as_str() {
                "two_factor" => "maybe".to_string(),
                "enforced" => "yes".to_string(),
                "role" => "root".to_string(),
                "format" => ["xml", "pdf", "CSV", "json;drop"]
                    .choose(rng)
                    .unwrap()
                    .to_string(),
                "user_id" | "actor_id" => BAD_UUIDS.choose(rng).unwrap().to_string(),
                "from" | "to" => [
                    "yesterday",
                    "2024-13-01T00:00:00Z",
                    "2024-05-01 00:00:00",
                    "0",
                ]
                .choose(rng)
                .unwrap()
                .to_string(),
                "type" => format!("{} x", nasty(rng)),
                "q" => {
                    // q takes any text: break something else instead.
                    return (format!("{}&limit=0", pairs.join("&")), true);
                }
                _ => "'; DROP TABLE users; --".to_string(),
            };
            format!("{name}={}", encode(&value))
        }
    };
    pairs.push(bad);
    pairs.shuffle(rng);
    // The unknown-parameter case is refused on every endpoint with a query.
    let must_fail = !op.query.is_empty();
    (pairs.join("&"), must_fail)
}

fn authorization(caller: Caller, ctx: &Context, rng: &mut StdRng) -> Option<HeaderValue> {
    match caller {
        Caller::Admin => Some(HeaderValue::from_str(&format!("Bearer {}", ctx.admin)).unwrap()),
        Caller::User => Some(HeaderValue::from_str(&format!("Bearer {}", ctx.user)).unwrap()),
        Caller::Nobody => None,
        Caller::Junk(kind) => {
            let bytes: Vec<u8> = match kind % 7 {
                0 => b"Bearer".to_vec(),
                1 => b"Bearer ".to_vec(),
                2 => format!("Basic {}", ctx.admin).into_bytes(),
                3 => format!("Bearer {}x", ctx.admin).into_bytes(),
                4 => b"Bearer ' OR 1=1 --".to_vec(),
                5 => {
                    let mut token = b"Bearer ".to_vec();
                    token.extend((0..rng.gen_range(1..600)).map(|_| rng.gen_range(0x20..0xff_u8)));
                    token
                }
                _ => format!("Bearer\t{}\t", "A".repeat(rng.gen_range(1..2_000))).into_bytes(),
            };
            HeaderValue::from_bytes(&bytes).ok()
        }
    }
}

fn probe(ops: &[Operation], ctx: &Context, rng: &mut StdRng) -> Probe {
    // One in ten: a path or method the router does not serve.
    if rng.gen_bool(0.1) {
        let op = ops.choose(rng).unwrap();
        let (method, url) = if rng.gen_bool(0.5) {
            let method = ["PUT", "OPTIONS", "TRACE", "PATCH", "DELETE", "POST"]
                .into_iter()
                .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                .filter(|m| {
                    !ops.iter()
                        .any(|o| o.path == op.path && o.method == m.as_str())
                })
                .collect::<Vec<_>>()
                .choose(rng)
                .cloned()
                .unwrap_or(Method::PUT);
            (
                method,
                format!("{}{}", ctx.base, fill(&op.path, ctx, rng, false)),
            )
        } else {
            let tail = encode(&nasty(rng).chars().take(200).collect::<String>());
            (Method::GET, format!("{}/api/v1/{tail}x/nowhere", ctx.base))
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", ctx.admin)).unwrap(),
        );
        return Probe {
            label: format!("{method} unrouted {url}"),
            method,
            url,
            headers,
            body: Some(b"{}".to_vec()),
            must_fail: true,
        };
    }

    let op = ops.choose(rng).unwrap();
    let method = Method::from_bytes(op.method.as_bytes()).unwrap();
    let reads = method == Method::GET;
    let has_id = op.path.contains('{');
    let admin_only = op.path.starts_with("/api/v1/users")
        || op.path.starts_with("/api/v1/audit")
        || op.path.starts_with("/api/v1/reports");

    // What to break. Writes with a valid caller must break the body or the
    // path; writes without a body can only break the caller or the path.
    let mut kinds: Vec<&str> = Vec::new();
    if op.secured {
        kinds.push("caller");
    }
    if has_id {
        kinds.push("path");
    }
    if op.body.is_some() {
        kinds.extend(["body", "body", "body"]);
    }
    if reads && !op.query.is_empty() {
        kinds.extend(["query", "query"]);
    }
    if kinds.is_empty() {
        // A public read without parameters (health, metrics, the document):
        // junk headers and queries, which it may ignore.
        kinds.push("public");
    }
    let kind = *kinds.choose(rng).unwrap();

    let caller = match kind {
        "caller" => {
            if admin_only && rng.gen_bool(0.3) {
                Caller::User
            } else if rng.gen_bool(0.3) {
                Caller::Nobody
            } else {
                Caller::Junk(rng.gen_range(0..7))
            }
        }
        _ if !op.secured => Caller::Nobody,
        _ if admin_only && rng.gen_bool(0.1) => Caller::User,
        _ => Caller::Admin,
    };
    let path = fill(&op.path, ctx, rng, kind == "path");
    let (query, query_must_fail) = if kind == "query" {
        bad_query(op, rng)
    } else {
        (String::new(), false)
    };
    let mut url = format!("{}{}", ctx.base, path);
    if !query.is_empty() {
        url = format!("{url}?{query}");
    }
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization(caller, ctx, rng) {
        headers.insert(AUTHORIZATION, value);
    }
    let (body_label, body) = match (&op.body, kind) {
        (Some(fields), "body") => {
            let (label, bytes) = bad_body(op, fields, rng);
            (label, Some(bytes))
        }
        (Some(fields), _) => {
            // The request fails elsewhere; the body may even be fine.
            let body = Value::Object(object(fields, rng)).to_string().into_bytes();
            ("any body".to_string(), Some(body))
        }
        (None, _) => ("no body".to_string(), None),
    };
    if body.is_some() {
        let content_type = match rng.gen_range(0..12) {
            0 => Some("text/plain"),
            1 => None,
            2 => Some("application/x-www-form-urlencoded"),
            _ => Some("application/json"),
        };
        if let Some(content_type) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
    }
    // A bad id of ".." can make the URL another operation's, since the
    // client resolves dot segments (`/login/challenges/../passkey` is
    // `POST /login/passkey`): that operation may answer as it does.
    let resolved = |url: &str| {
        url::Url::parse(url)
            .map(|url| url.path().to_string())
            .unwrap_or_default()
    };
    let another_operation = kind == "path"
        && ops.iter().any(|other| {
            other.method == op.method
                && other.path != op.path
                && !other.path.contains('{')
                && resolved(&format!("{}{}", ctx.base, other.path)) == resolved(&url)
        });
    let must_fail = match kind {
        "public" => false,
        "query" => query_must_fail,
        _ if another_operation => false,
        _ => true,
    };
    Probe {
        label: format!(
            "{} {} [{kind}, {caller:?}, {body_label}]",
            op.method, op.path
        ),
        method,
        url,
        headers,
        body,
        must_fail,
    }
}

/// The path with its parameters: real ids, or (when breaking the path) bad
/// UUIDs and ids that exist nowhere.
fn fill(path: &str, ctx: &Context, rng: &mut StdRng, break_it: bool) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').unwrap() + open;
        let name = &rest[open + 1..close];
        let value = if break_it {
            match rng.gen_range(0..4) {
                0 => uuid::Uuid::new_v4().to_string(),
                1 => encode(&nasty(rng).chars().take(300).collect::<String>()),
                _ => encode(BAD_UUIDS.choose(rng).unwrap()),
            }
        } else if name == "challenge_id" {
            ctx.challenge.clone()
        } else {
            ctx.target.clone()
        };
        out.push_str(if value.is_empty() { "%20" } else { &value });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Every event, as text, in a stable order.
async fn events(app: &TestApp) -> Vec<(String, i64, String, String, String, String)> {
    let sql = "SELECT aggregate_id, sequence, event_type, event_version, \
               CAST(payload AS TEXT), CAST(metadata AS TEXT) \
               FROM events ORDER BY aggregate_id, sequence";
    match app.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
        }
    }
}

/// What is wrong with an answer, if anything.
fn judge(probe: &Probe, status: u16, content_type: &str, text: &str) -> Option<String> {
    if status >= 500 {
        return Some(format!("server error {status}: {text}"));
    }
    if status < 400 {
        return probe
            .must_fail
            .then(|| format!("accepted ({status}) a request it must refuse: {text}"));
    }
    if !content_type.starts_with("application/json") {
        return Some(format!(
            "{status} with content type {content_type:?}: {text}"
        ));
    }
    let Ok(body) = serde_json::from_str::<Value>(text) else {
        return Some(format!("{status} without a JSON body: {text:?}"));
    };
    let code = body["error"].as_str().unwrap_or_default();
    let known: BTreeSet<&str> = ERROR_CODES.into_iter().collect();
    if !known.contains(code) || !body["message"].is_string() {
        return Some(format!("{status} is not a contract error body: {body}"));
    }
    if code == "invalid_code" && !body["attempts_remaining"].is_u64() {
        return Some(format!("invalid_code without attempts_remaining: {body}"));
    }
    let extra: Vec<&String> = body
        .as_object()
        .unwrap()
        .keys()
        .filter(|key| !["error", "message", "attempts_remaining"].contains(&key.as_str()))
        .collect();
    (!extra.is_empty()).then(|| format!("{status} error body has other fields: {body}"))
}

async fn ten_thousand_malformed_requests_change_nothing(backend: Backend) {
    let seed = std::env::var("TWOFOLD_MALFORMED_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let app = spawn_app(backend).await;

    // The world the requests aim at, made with valid requests first.
    let admin = app.admin_token().await;
    let target = app
        .create_user("target", "target-password", Some("t@example.com"), "user")
        .await;
    app.create_user("holder", "holder-password", None, "user")
        .await;
    let user = app.token("holder", "holder-password").await;
    app.enroll_totp(&user).await;
    let login = app.login("holder", "holder-password").await;
    let challenge = login.body["challenge_id"].as_str().unwrap().to_string();
    let ctx = Context {
        base: app.base.clone(),
        admin,
        user,
        target,
        challenge,
    };
    let before = events(&app).await;

    let ops = operations();
    let mut rng = StdRng::seed_from_u64(seed);
    let probes: Vec<Probe> = (0..REQUESTS).map(|_| probe(&ops, &ctx, &mut rng)).collect();

    let started = Instant::now();
    // A fresh connection per request: the server closes a connection whose
    // request body it refused unread, and a pooled client could race it.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let results: Vec<(usize, Result<Option<String>, String>, u16)> =
        futures::stream::iter(probes.iter().enumerate())
            .map(|(index, probe)| {
                let client = client.clone();
                async move {
                    let mut request = client
                        .request(probe.method.clone(), &probe.url)
                        .headers(probe.headers.clone());
                    if let Some(body) = &probe.body {
                        request = request.body(body.clone());
                    }
                    match request.send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let content_type = response
                                .headers()
                                .get(CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let text = response.text().await.unwrap_or_default();
                            let verdict = judge(probe, status, &content_type, &text)
                                .map(|problem| problem.chars().take(400).collect());
                            (index, Ok(verdict), status)
                        }
                        Err(error) => (index, Err(format!("{error:?}")), 0),
                    }
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
    let elapsed = started.elapsed();

    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let mut failures = Vec::new();
    for (index, outcome, status) in &results {
        *by_status.entry(*status).or_default() += 1;
        let problem = match outcome {
            Ok(None) => continue,
            Ok(Some(problem)) => problem.clone(),
            Err(error) => format!("no answer: {error}"),
        };
        let probe = &probes[*index];
        failures.push(format!(
            "#{index} {}\n    {}\n    {problem}",
            probe.label, probe.url
        ));
    }
    println!(
        "{backend:?}: {} malformed requests in {elapsed:?} (seed {seed}), statuses {by_status:?}",
        results.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} answers broke the contract (seed {seed}):\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(by_status.keys().all(|status| *status < 500));

    let after = events(&app).await;
    assert_eq!(
        before.len(),
        after.len(),
        "malformed requests stored events"
    );
    assert_eq!(before, after, "malformed requests changed the events table");
    app.stop().await;
}

on_both_backends!(ten_thousand_malformed_requests_change_nothing);
