//! The audit trail's rows and hash chains, computed here so that a bulk
//! seed can write `audit_log` directly instead of applying millions of
//! events one statement at a time. This mirrors projections/src/audit.rs
//! (private there); `twofold audit verify` recomputes every chain from the
//! events table, and the seed tests compare these rows with the ones the
//! real projector writes, so a drift between the two cannot go unnoticed.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];
pub const GENESIS: Hash = [0; 32];

pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(item) = map.get(key) {
                    write_canonical(item, out);
                }
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// What the chain hashes of one stored event cover.
pub struct Stored<'a> {
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a Value,
    pub metadata: &'a Value,
}

pub fn chain_hash(previous: &Hash, event: &Stored<'_>) -> Hash {
    let content = json!({
        "aggregate_id": event.aggregate_id,
        "sequence": event.sequence,
        "event_type": event.event_type,
        "event_version": event.event_version,
        "payload": event.payload,
        "metadata": event.metadata,
    });
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(canonical_json(&content).as_bytes());
    hasher.finalize().into()
}

pub fn head_hash(previous: &Hash, position: i64, chain: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(position.to_be_bytes());
    hasher.update(chain);
    hasher.finalize().into()
}

fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["hash", "secret", "password", "token"]
        .iter()
        .any(|word| key.contains(word))
        || key == "code"
        || key.ends_with("_code")
        || key.ends_with("_codes")
}

fn without_secrets(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, _)| !is_secret(key))
                .map(|(key, item)| (key.clone(), without_secrets(item)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_secrets).collect()),
        scalar => scalar.clone(),
    }
}

pub fn audit_data(payload: &Value) -> Value {
    match payload {
        Value::Object(outer) if outer.len() == 1 => match outer.values().next() {
            Some(inner @ Value::Object(_)) => without_secrets(inner),
            _ => Value::Object(Map::new()),
        },
        _ => Value::Object(Map::new()),
    }
}

/// One `audit_log` row.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub position: i64,
    pub user_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub actor_id: Option<String>,
    pub impersonator_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub data: String,
    pub chain_hash: String,
    pub head_hash: String,
}

fn text(metadata: &Value, key: &str) -> Option<String> {
    metadata
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The row for `event` at `position` (apply order `id`), chained on the
/// user's previous link and the feed's head; returns the row, the user's
/// new link and the new head.
pub fn record(
    id: i64,
    position: i64,
    event: &Stored<'_>,
    occurred_at: DateTime<Utc>,
    previous_chain: &Hash,
    head: &Hash,
) -> (AuditRow, Hash, Hash) {
    let chain = chain_hash(previous_chain, event);
    let new_head = head_hash(head, position, &chain);
    let row = AuditRow {
        id,
        position,
        user_id: event.aggregate_id.to_string(),
        sequence: event.sequence,
        event_type: event.event_type.to_string(),
        occurred_at,
        actor_id: text(event.metadata, "actor_id"),
        impersonator_id: text(event.metadata, "impersonator_id"),
        ip: text(event.metadata, "ip"),
        user_agent: text(event.metadata, "user_agent"),
        data: canonical_json(&audit_data(event.payload)),
        chain_hash: hex::encode(chain),
        head_hash: hex::encode(new_head),
    };
    (row, chain, new_head)
}

pub fn parse_hash(text: Option<&str>) -> Hash {
    text.and_then(|text| hex::decode(text).ok())
        .and_then(|bytes| Hash::try_from(bytes).ok())
        .unwrap_or(GENESIS)
}
