//! The audit trail: one row per event, without secrets, carrying the hash
//! chains that make changes to the events table evident.
//!
//! - `chain_hash` of a user's event n = SHA-256(chain_hash of the user's
//!   event n-1, or 32 zero bytes || canonical content of event n), where the
//!   content is aggregate id, sequence, type, version, payload and metadata.
//! - `head_hash` after an event = SHA-256(head_hash before it || position as
//!   8 big-endian bytes || its chain_hash), over every event in feed order.
//!
//! Both are written when the projection applies the event (`record`) and
//! recomputed from the events table by `Db::verify_audit_trail`.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::db::{Db, ProjectionError};
use crate::feed::StoredEvent;
use crate::on_pool;
use crate::statement::{Arg, Statement};

pub type Hash = [u8; 32];

/// What a stream's first event and the feed's first event chain from.
pub const GENESIS: Hash = [0; 32];

/// JSON with every object's keys sorted by their bytes and no whitespace.
/// Written by hand rather than trusting `serde_json::Value`'s map order,
/// which a dependency enabling `preserve_order` would silently change.
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
        // `Display` on a scalar `Value` is its compact JSON text.
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The per-stream link: binds the event to its stream's history.
pub fn chain_hash(previous: &Hash, event: &StoredEvent) -> Hash {
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

/// The global link: binds the event's place in the feed to everything before.
pub fn head_hash(previous: &Hash, position: i64, chain: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(position.to_be_bytes());
    hasher.update(chain);
    hasher.finalize().into()
}

/// A stored hex hash. A damaged one reads as the genesis value: the chain
/// then breaks visibly for `verify` instead of stalling every read model.
pub(crate) fn parse_hash(text: Option<&str>) -> Hash {
    text.and_then(|text| hex::decode(text).ok())
        .and_then(|bytes| Hash::try_from(bytes).ok())
        .unwrap_or(GENESIS)
}

/// Field names that hold secrets or their hashes (or may in a future event):
/// passwords, tokens, codes, anything hashed.
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

/// The audit row's `data`: the payload's inner object (`{"Name": {...}}`)
/// without secrets. A unit event (`"Name"`) or any other shape gives `{}`,
/// so nothing unexpected can slip through.
pub fn audit_data(payload: &Value) -> Value {
    match payload {
        Value::Object(outer) if outer.len() == 1 => match outer.values().next() {
            Some(inner @ Value::Object(_)) => without_secrets(inner),
            _ => Value::Object(Map::new()),
        },
        _ => Value::Object(Map::new()),
    }
}

fn metadata_text(metadata: &Value, key: &str) -> Option<String> {
    metadata
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// When it happened: the service's clock at the command (metadata), else
/// when it was stored.
fn occurred_at(event: &StoredEvent) -> DateTime<Utc> {
    event
        .metadata
        .get("occurred_at")
        .and_then(Value::as_str)
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map_or(event.recorded_at, |at| at.with_timezone(&Utc))
}

/// The audit row for `event`, chained onto the user's previous row and the
/// feed's head; returns the statement and the new head. The row's id is the
/// next in apply order, computed in SQL so that a rebuild numbers the same.
pub(crate) fn record(event: &StoredEvent, previous_chain: &Hash, head: &Hash) -> (Statement, Hash) {
    let chain = chain_hash(previous_chain, event);
    let new_head = head_hash(head, event.at.position, &chain);
    let metadata = &event.metadata;
    let statement = Statement {
        sql: "INSERT INTO audit_log
                  (id, position, user_id, sequence, type, occurred_at, actor_id, impersonator_id,
                   ip, user_agent, data, chain_hash, head_hash)
              VALUES ((SELECT coalesce(max(id), 0) + 1 FROM audit_log),
                      $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
              ON CONFLICT (position) DO NOTHING",
        args: vec![
            event.at.position.into(),
            event.aggregate_id.as_str().into(),
            event.sequence.into(),
            event.event_type.as_str().into(),
            occurred_at(event).into(),
            metadata_text(metadata, "actor_id").into(),
            metadata_text(metadata, "impersonator_id").into(),
            metadata_text(metadata, "ip").into(),
            metadata_text(metadata, "user_agent").into(),
            canonical_json(&audit_data(&event.payload)).into(),
            hex::encode(chain).into(),
            hex::encode(new_head).into(),
        ],
    };
    (statement, new_head)
}

/// Which audit rows to read; every filter is optional.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub user_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    pub event_type: Option<String>,
    /// `occurred_at >= from`
    pub from: Option<DateTime<Utc>>,
    /// `occurred_at < to`
    pub to: Option<DateTime<Utc>>,
    /// Keyset cursor: the last row id of the previous page (0: from the start).
    pub after_id: i64,
    pub limit: u32,
}

/// One audit row as the API shows it; `id` is the apply order (the cursor).
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
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
    pub data: Value,
}

impl AuditFilter {
    /// Only the filters given become conditions, so a user's page is a range
    /// scan of `audit_log_user` rather than a scan with `$n IS NULL OR ...`,
    /// which a planner cannot match to an index.
    fn sql(&self) -> (String, Vec<Arg>) {
        let mut conditions = vec!["id > $1".to_string()];
        let mut args: Vec<Arg> = vec![self.after_id.into()];
        let mut add = |condition: &str, arg: Arg| {
            args.push(arg);
            conditions.push(format!("{condition} ${}", args.len()));
        };
        if let Some(user_id) = self.user_id {
            add("user_id =", user_id.to_string().into());
        }
        if let Some(actor_id) = self.actor_id {
            add("actor_id =", actor_id.to_string().into());
        }
        if let Some(event_type) = &self.event_type {
            add("type =", event_type.as_str().into());
        }
        if let Some(from) = self.from {
            add("occurred_at >=", from.into());
        }
        if let Some(to) = self.to {
            add("occurred_at <", to.into());
        }
        args.push((i64::from(self.limit) + 1).into());
        let sql = format!(
            "SELECT id, position, user_id, sequence, type, occurred_at, actor_id, impersonator_id,
                    ip, user_agent, data
               FROM audit_log
              WHERE {}
              ORDER BY id
              LIMIT ${}",
            conditions.join(" AND "),
            args.len()
        );
        (sql, args)
    }
}

impl Db {
    /// One page of the audit trail in apply (= feed) order; returns the page
    /// and whether more rows follow.
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
    ) -> Result<(Vec<AuditEntry>, bool), ProjectionError> {
        let (sql, args) = filter.sql();
        on_pool!(self, pool => {
            let mut query = sqlx::query(&sql);
            for arg in args {
                query = match arg {
                    Arg::Text(value) => query.bind(value),
                    Arg::Bool(value) => query.bind(value),
                    Arg::Int(value) => query.bind(value),
                    Arg::Time(value) => query.bind(value),
                };
            }
            let rows = query.fetch_all(pool).await?;
            let more = rows.len() > filter.limit as usize;
            let mut entries = Vec::with_capacity(rows.len());
            for row in rows.into_iter().take(filter.limit as usize) {
                let position: i64 = row.try_get("position")?;
                let data: String = row.try_get("data")?;
                entries.push(AuditEntry {
                    id: row.try_get("id")?,
                    position,
                    user_id: row.try_get("user_id")?,
                    sequence: row.try_get("sequence")?,
                    event_type: row.try_get("type")?,
                    occurred_at: row.try_get("occurred_at")?,
                    actor_id: row.try_get("actor_id")?,
                    impersonator_id: row.try_get("impersonator_id")?,
                    ip: row.try_get("ip")?,
                    user_agent: row.try_get("user_agent")?,
                    data: serde_json::from_str(&data)
                        .map_err(|source| ProjectionError::Corrupt { position, source })?,
                });
            }
            Ok((entries, more))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::feed::EventPosition;

    fn event(payload: Value, metadata: Value) -> StoredEvent {
        StoredEvent {
            at: EventPosition {
                transaction_id: 7,
                position: 7,
            },
            aggregate_id: "0b0c7d0e-0000-4000-8000-000000000001".into(),
            sequence: 3,
            event_type: "EmailChanged".into(),
            event_version: "1".into(),
            payload,
            metadata,
            recorded_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level_without_spaces() {
        let value: Value =
            serde_json::from_str(r#"{ "b": [ {"z": 1, "a": "x\"y"} ], "a": null, "é": true }"#)
                .unwrap();
        assert_eq!(
            canonical_json(&value),
            r#"{"a":null,"b":[{"a":"x\"y","z":1}],"é":true}"#
        );
    }

    #[test]
    fn chain_depends_on_every_part_of_the_event_and_on_the_previous_link() {
        let base = event(
            json!({"EmailChanged": {"email": "a@example.com"}}),
            json!({"actor_id": "x"}),
        );
        let hash = chain_hash(&GENESIS, &base);
        let mut changed = vec![];
        let mut e = base.clone();
        e.payload = json!({"EmailChanged": {"email": "b@example.com"}});
        changed.push(e);
        let mut e = base.clone();
        e.metadata = json!({"actor_id": "y"});
        changed.push(e);
        let mut e = base.clone();
        e.sequence = 4;
        changed.push(e);
        let mut e = base.clone();
        e.aggregate_id = "other".into();
        changed.push(e);
        let mut e = base.clone();
        e.event_version = "2".into();
        changed.push(e);
        let mut e = base.clone();
        e.event_type = "RoleChanged".into();
        changed.push(e);
        for e in &changed {
            assert_ne!(chain_hash(&GENESIS, e), hash, "{e:?}");
        }
        assert_ne!(chain_hash(&hash, &base), hash);
        // Key order in the stored JSON (jsonb reorders keys) does not matter.
        let mut reordered = base.clone();
        reordered.metadata = serde_json::from_str(r#"{"actor_id":"x"}"#).unwrap();
        assert_eq!(chain_hash(&GENESIS, &reordered), hash);
        assert_ne!(head_hash(&GENESIS, 7, &hash), head_hash(&GENESIS, 8, &hash));
    }

    #[test]
    fn audit_data_is_the_inner_object_without_secrets() {
        let payload = json!({"UserRegistered": {
            "user_id": "u", "username": "ann", "role": "user",
            "password_hash": "$argon2id$v=19$...", "registered_at": "2024-01-01T00:00:00Z"
        }});
        assert_eq!(
            audit_data(&payload),
            json!({"user_id": "u", "username": "ann", "role": "user",
                   "registered_at": "2024-01-01T00:00:00Z"})
        );
        let payload = json!({"TotpEnrollmentConfirmed": {
            "enrollment_id": "e", "accepted_step": 5,
            "recovery_code_hashes": ["a", "b"], "enabled_at": "t"
        }});
        assert_eq!(
            audit_data(&payload),
            json!({"enrollment_id": "e", "accepted_step": 5, "enabled_at": "t"})
        );
        let payload = json!({"Future": {"code": "123456", "email_code": "1", "nested": {
            "token_hash": "x", "Secret": "s", "codes": 1, "recovery_code_index": 2
        }}});
        assert_eq!(
            audit_data(&payload),
            json!({"nested": {"codes": 1, "recovery_code_index": 2}})
        );
        assert_eq!(audit_data(&json!("TwoFactorDisabled")), json!({}));
        assert_eq!(audit_data(&json!({"Odd": "secret-value"})), json!({}));
    }

    #[test]
    fn occurred_at_prefers_the_metadata_time() {
        let at = "2024-05-06T07:08:09.5Z";
        let e = event(json!("TwoFactorDisabled"), json!({ "occurred_at": at }));
        assert_eq!(
            occurred_at(&e).to_rfc3339(),
            "2024-05-06T07:08:09.500+00:00"
        );
        let e = event(json!("TwoFactorDisabled"), json!({}));
        assert_eq!(occurred_at(&e), DateTime::UNIX_EPOCH);
    }

    #[test]
    fn filters_become_conditions_only_when_given() {
        let filter = AuditFilter {
            user_id: Some(Uuid::nil()),
            limit: 3,
            ..AuditFilter::default()
        };
        let (sql, args) = filter.sql();
        assert!(sql.contains("WHERE id > $1 AND user_id = $2"), "{sql}");
        assert!(sql.contains("LIMIT $3"), "{sql}");
        assert!(!sql.contains("IS NULL"));
        assert_eq!(args.len(), 3);
        assert_eq!(args[2], Arg::Int(4));
    }

    #[tokio::test]
    async fn one_users_page_is_a_range_scan_of_its_index() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::migrate!("../migrations/sqlite")
            .run(&pool)
            .await
            .unwrap();
        let filter = AuditFilter {
            user_id: Some(Uuid::nil()),
            after_id: 5,
            limit: 3,
            ..AuditFilter::default()
        };
        let (sql, _) = filter.sql();
        let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
            .bind(5_i64)
            .bind(Uuid::nil().to_string())
            .bind(4_i64)
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect();
        let plan = plan.join("; ");
        assert!(
            plan.contains("USING INDEX audit_log_user (user_id=? AND id>?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
    }
}
