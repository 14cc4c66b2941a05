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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::cores::{cores, on_every_shard};
use crate::db::{ProjectionError, ReadModels};
use crate::json::{write_string, Json};
use twofold_store::sql::Arg;

pub type Hash = [u8; 32];

/// What a stream's first event and the feed's first event chain from.
pub const GENESIS: Hash = [0; 32];

/// What a stream's chain covers of one stored event.
pub(crate) struct Content<'a> {
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a Json<'a>,
    pub metadata: &'a Json<'a>,
}

impl Content<'_> {
    /// Canonical JSON of {aggregate_id, event_type, event_version, metadata,
    /// payload, sequence}, written in that (sorted) order: keys sorted at
    /// every level and no whitespace, so jsonb's key order and SQLite's
    /// text give the same bytes.
    pub fn canonical(&self) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str("{\"aggregate_id\":");
        write_string(self.aggregate_id, &mut out);
        out.push_str(",\"event_type\":");
        write_string(self.event_type, &mut out);
        out.push_str(",\"event_version\":");
        write_string(self.event_version, &mut out);
        out.push_str(",\"metadata\":");
        self.metadata.write_canonical(&mut out, &|_| true);
        out.push_str(",\"payload\":");
        self.payload.write_canonical(&mut out, &|_| true);
        let _ = write!(out, ",\"sequence\":{}}}", self.sequence);
        out
    }
}

/// The per-stream link: binds the event (its canonical content) to its
/// stream's history.
pub(crate) fn link(previous: &Hash, content: &str) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(content.as_bytes());
    hasher.finalize().into()
}

/// A stored event decoded, as the tests write one.
#[cfg(test)]
#[derive(Clone, Debug)]
pub(crate) struct StoredEvent {
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
}

/// The chain hash of a decoded event: the tests' way to pin the bytes.
#[cfg(test)]
pub(crate) fn chain_hash(previous: &Hash, event: &StoredEvent) -> Hash {
    let content = Content {
        aggregate_id: &event.aggregate_id,
        sequence: event.sequence,
        event_type: &event.event_type,
        event_version: &event.event_version,
        payload: &Json::from(&event.payload),
        metadata: &Json::from(&event.metadata),
    };
    link(previous, &content.canonical())
}

/// The global link: binds the event's place in the feed to everything before.
pub fn head_hash(previous: &Hash, position: i64, chain: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(position.to_be_bytes());
    hasher.update(chain);
    hasher.finalize().into()
}

/// A hash as the trail stores it: lower-case hex.
pub(crate) fn hash_text(hash: &Hash) -> String {
    let mut text = [0; 64];
    // The buffer is exactly twice the hash: this cannot fail.
    let _ = hex::encode_to_slice(hash, &mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// A stored hex hash. A damaged one reads as the genesis value: the chain
/// then breaks visibly for `verify` instead of stalling every read model.
pub(crate) fn parse_hash(text: Option<&str>) -> Hash {
    text.and_then(|text| hex::decode(text).ok())
        .and_then(|bytes| Hash::try_from(bytes).ok())
        .unwrap_or(GENESIS)
}

/// A stream's last link: its sequence number and chain hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub sequence: i64,
    pub hash: Hash,
}

impl Link {
    /// Before a stream's first event.
    pub const START: Link = Link {
        sequence: 0,
        hash: GENESIS,
    };
}

/// Every stream's last link, in one shard per core so that a page of events
/// is chained in parallel: a user's events all fall in one shard, where
/// they are chained in feed order. Memory grows with the number of users.
pub(crate) struct Chains {
    shards: Vec<HashMap<String, Link>>,
    shard_of: RandomState,
}

impl Default for Chains {
    fn default() -> Self {
        Chains {
            shards: (0..cores()).map(|_| HashMap::new()).collect(),
            shard_of: RandomState::new(),
        }
    }
}

impl Chains {
    /// Continues `stream` from `link` (its last event's, as the trail holds it).
    pub fn continue_from(&mut self, stream: String, link: Link) {
        let shard = (self.shard_of.hash_one(stream.as_str()) as usize) % self.shards.len();
        self.shards[shard].insert(stream, link);
    }

    /// Where `stream` ends: its last event's link, or the start.
    pub fn link(&self, stream: &str) -> Link {
        let shard = (self.shard_of.hash_one(stream) as usize) % self.shards.len();
        self.shards[shard]
            .get(stream)
            .copied()
            .unwrap_or(Link::START)
    }

    /// Chains every item (an event in feed order, as `event` gives its
    /// stream, sequence number and canonical content) onto its stream;
    /// gives, for each, the stream's link before it and its chain hash.
    pub fn extend<T: Sync>(
        &mut self,
        items: &[T],
        event: impl Fn(&T) -> (&str, i64, &str) + Sync,
    ) -> Vec<(Link, Hash)> {
        let count = self.shards.len();
        let shards: Vec<usize> = items
            .iter()
            .map(|item| (self.shard_of.hash_one(event(item).0) as usize) % count)
            .collect();
        let shards = &shards;
        let linked = on_every_shard(&mut self.shards, items.len(), |shard, links| {
            let mut linked = Vec::new();
            for (index, item) in items.iter().enumerate() {
                if shards[index] != shard {
                    continue;
                }
                let (stream, sequence, content) = event(item);
                let previous = links.get(stream).copied().unwrap_or(Link::START);
                let hash = link(&previous.hash, content);
                let next = Link { sequence, hash };
                match links.get_mut(stream) {
                    Some(last) => *last = next,
                    None => {
                        links.insert(stream.to_string(), next);
                    }
                }
                linked.push((index, previous, hash));
            }
            linked
        });
        let mut ordered = vec![(Link::START, GENESIS); items.len()];
        for (index, previous, hash) in linked.into_iter().flatten() {
            ordered[index] = (previous, hash);
        }
        ordered
    }
}

/// Field names that hold secrets or their hashes (or may in a future event):
/// passwords, tokens, codes, anything hashed; and challenge ids, with which
/// whoever holds one may attempt a sign-in's second step (and lock it).
fn is_secret(key: &str) -> bool {
    let key = key.as_bytes();
    let word_at = |start: usize, word: &[u8]| {
        key.get(start..start + word.len())
            .is_some_and(|part| part.eq_ignore_ascii_case(word))
    };
    // Every key of every event passes here (projector, rebuild, verify):
    // one pass, looking further only where a word could start.
    let holds = key
        .iter()
        .enumerate()
        .any(|(start, byte)| match byte.to_ascii_lowercase() {
            b'h' => word_at(start, b"hash"),
            b's' => word_at(start, b"secret"),
            b'p' => word_at(start, b"password"),
            b't' => word_at(start, b"token"),
            b'c' => word_at(start, b"challenge_id"),
            _ => false,
        });
    let ends = |word: &[u8]| {
        key.len() >= word.len() && key[key.len() - word.len()..].eq_ignore_ascii_case(word)
    };
    holds || key.eq_ignore_ascii_case(b"code") || ends(b"_code") || ends(b"_codes")
}

/// The audit row's `data`, canonical JSON: the payload's inner object
/// (`{"Name": {...}}`) without secrets. A unit event (`"Name"`) or any
/// other shape gives `{}`, so nothing unexpected can slip through.
pub(crate) fn audit_data(payload: &Json) -> String {
    match payload {
        Json::Object(outer) => match outer.as_slice() {
            [(_, inner @ Json::Object(_))] => {
                let mut out = String::with_capacity(512);
                inner.write_canonical(&mut out, &|key| !is_secret(key));
                out
            }
            _ => "{}".to_string(),
        },
        _ => "{}".to_string(),
    }
}

/// A `data` stored by an earlier rule, written again under today's: what
/// `audit_data` gives for the same event when the stored text is what an
/// earlier `audit_data` gave, and otherwise (an edited row) the edit kept,
/// less the secrets, so that verify still sees it.
pub(crate) fn stored_data_without_secrets(stored: &str) -> Result<String, serde_json::Error> {
    let mut out = String::with_capacity(stored.len());
    Json::parse(stored)?.write_canonical(&mut out, &|key| !is_secret(key));
    Ok(out)
}

/// When it happened: the service's clock at the command (metadata), else
/// when it was stored.
fn occurred_at(occurred_at: Option<&str>, recorded_at: DateTime<Utc>) -> DateTime<Utc> {
    occurred_at
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map_or(recorded_at, |at| at.with_timezone(&Utc))
}

/// The columns of an event's audit row that depend on the event alone, in
/// table order from `occurred_at` to `data`: with the event's place and
/// type, all that `/audit` and the exports show of it. The projector and the
/// rebuild write them, and verify recomputes them, from this one derivation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AuditColumns<'a> {
    pub occurred_at: DateTime<Utc>,
    pub actor_id: Option<&'a str>,
    pub impersonator_id: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub data: String,
}

impl<'a> AuditColumns<'a> {
    /// The texts are borrowed from `metadata`, so that verify compares
    /// them without copying.
    pub fn of(payload: &Json, metadata: &'a Json, recorded_at: DateTime<Utc>) -> Self {
        // One pass over the metadata's keys rather than a search for each.
        let (mut occurred, mut actor_id, mut impersonator_id, mut ip, mut user_agent) =
            (None, None, None, None, None);
        if let Json::Object(entries) = metadata {
            for (key, value) in entries {
                let slot = match key.as_ref() {
                    "occurred_at" => &mut occurred,
                    "actor_id" => &mut actor_id,
                    "impersonator_id" => &mut impersonator_id,
                    "ip" => &mut ip,
                    "user_agent" => &mut user_agent,
                    _ => continue,
                };
                *slot = value.as_str();
            }
        }
        AuditColumns {
            occurred_at: occurred_at(occurred, recorded_at),
            actor_id,
            impersonator_id,
            ip,
            user_agent,
            data: audit_data(payload),
        }
    }
}

impl From<AuditColumns<'_>> for [Arg; 6] {
    fn from(columns: AuditColumns) -> Self {
        let text = |value: Option<&str>| Arg::Text(value.map(str::to_string));
        [
            columns.occurred_at.into(),
            text(columns.actor_id),
            text(columns.impersonator_id),
            text(columns.ip),
            text(columns.user_agent),
            columns.data.into(),
        ]
    }
}

/// The columns of an audit row, in the order the fold fills them.
pub(crate) const AUDIT_COLUMNS: &[&str] = &[
    "id",
    "position",
    "user_id",
    "sequence",
    "type",
    "occurred_at",
    "actor_id",
    "impersonator_id",
    "ip",
    "user_agent",
    "data",
    "chain_hash",
    "head_hash",
];

/// Which audit rows to read; every filter is optional.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub user_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    /// Whose events, by username (as stored: lower case).
    pub username: Option<String>,
    /// Who acted, by username.
    pub actor_username: Option<String>,
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
    /// The row's links (lower-case hex), for exports an auditor checks
    /// against the signed checkpoints.
    pub chain_hash: String,
    pub head_hash: String,
}

impl AuditFilter {
    /// Only the filters given become conditions, so a user's page is a range
    /// scan of `audit_log_user` rather than a scan with `$n IS NULL OR ...`,
    /// which a planner cannot match to an index.
    fn sql(&self) -> (String, Vec<Arg>) {
        let mut conditions = vec!["id > $1".to_string()];
        let mut args: Vec<Arg> = vec![self.after_id.into()];
        // `$?` in a condition is its argument's place.
        let mut add = |condition: &str, arg: Arg| {
            args.push(arg);
            conditions.push(condition.replace("$?", &format!("${}", args.len())));
        };
        if let Some(user_id) = self.user_id {
            add("user_id = $?", user_id.to_string().into());
        }
        if let Some(actor_id) = self.actor_id {
            add("actor_id = $?", actor_id.to_string().into());
        }
        // A name nobody has selects nothing: the subquery gives NULL.
        if let Some(username) = &self.username {
            add(
                "user_id = (SELECT user_id FROM user_directory WHERE username = $?)",
                username.as_str().into(),
            );
        }
        if let Some(username) = &self.actor_username {
            add(
                "actor_id = (SELECT user_id FROM user_directory WHERE username = $?)",
                username.as_str().into(),
            );
        }
        if let Some(event_type) = &self.event_type {
            add("type = $?", event_type.as_str().into());
        }
        if let Some(from) = self.from {
            add("occurred_at >= $?", from.into());
        }
        if let Some(to) = self.to {
            add("occurred_at < $?", to.into());
        }
        args.push((i64::from(self.limit) + 1).into());
        let sql = format!(
            "SELECT id, position, user_id, sequence, type, occurred_at, actor_id, impersonator_id,
                    ip, user_agent, data, chain_hash, head_hash
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

impl ReadModels {
    /// One page of the audit trail in apply (= feed) order; returns the page
    /// and whether more rows follow.
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
    ) -> Result<(Vec<AuditEntry>, bool), ProjectionError> {
        let (sql, args) = filter.sql();
        let rows = self.0.fetch(&sql, args).await?;
        let more = rows.len() > filter.limit as usize;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows.into_iter().take(filter.limit as usize) {
            let position: i64 = row.get("position")?;
            entries.push(AuditEntry {
                id: row.get("id")?,
                position,
                user_id: row.get("user_id")?,
                sequence: row.get("sequence")?,
                event_type: row.get("type")?,
                occurred_at: row.get("occurred_at")?,
                actor_id: row.get("actor_id")?,
                impersonator_id: row.get("impersonator_id")?,
                ip: row.get("ip")?,
                user_agent: row.get("user_agent")?,
                data: serde_json::from_str(row.text("data")?)
                    .map_err(|source| ProjectionError::Corrupt { position, source })?,
                chain_hash: row.get("chain_hash")?,
                head_hash: row.get("head_hash")?,
            });
        }
        Ok((entries, more))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use sqlx::Row as _;

    fn event(payload: Value, metadata: Value) -> StoredEvent {
        StoredEvent {
            aggregate_id: "0b0c7d0e-0000-4000-8000-000000000001".into(),
            sequence: 3,
            event_type: "EmailChanged".into(),
            event_version: "1".into(),
            payload,
            metadata,
        }
    }

    /// Pinned bytes: the stored chains of every deployed trail were hashed
    /// over this form (the hex comes from an independent implementation,
    /// Python's `json.dumps(sort_keys=True, separators=(",", ":"),
    /// ensure_ascii=False)` + SHA-256), so any change to it breaks them all.
    #[test]
    fn chain_and_head_hashes_keep_their_documented_bytes() {
        let stored = event(
            json!({"EmailChanged": {"email": "a@example.com"}}),
            serde_json::from_str(
                r#"{"occurred_at": "2024-05-06T07:08:09Z", "actor_id": "x",
                    "note": "tab\t\"é\"\u0001\\/", "n": [1.5, null, true, -2, {"b": 1, "a": {}}]}"#,
            )
            .unwrap(),
        );
        let chain = chain_hash(&GENESIS, &stored);
        assert_eq!(
            hex::encode(chain),
            "65b83de802ed7d567127459f385c7b67224eb7aceda526d48640499ca5c20380"
        );
        assert_eq!(
            hex::encode(head_hash(&GENESIS, 7, &chain)),
            "bbdbaf6b019d3f09838fcc1b1021aae898c0d0b5a5547a2b7f4479a6175ff656"
        );
    }

    /// Chaining a page on every core gives, event for event, the links a
    /// single pass in feed order gives.
    #[test]
    fn chains_split_by_user_equal_one_pass_in_feed_order() {
        let page: Vec<(String, i64, String)> = (0..2_000)
            .map(|index: i64| {
                (
                    format!("user-{}", index % 37),
                    index / 37 + 1,
                    format!("{{\"n\":{index}}}"),
                )
            })
            .collect();
        let mut chains = Chains::default();
        let (first, second) = page.split_at(700);
        fn read((user, sequence, content): &(String, i64, String)) -> (&str, i64, &str) {
            (user, *sequence, content)
        }
        let mut linked = chains.extend(first, read);
        linked.extend(chains.extend(second, read));
        let mut last: HashMap<&str, Link> = HashMap::new();
        for ((user, sequence, content), (previous, hash)) in page.iter().zip(linked) {
            let expected = last.get(user.as_str()).copied().unwrap_or(Link::START);
            assert_eq!(previous, expected);
            assert_eq!(hash, link(&expected.hash, content));
            last.insert(
                user,
                Link {
                    sequence: *sequence,
                    hash,
                },
            );
        }
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
            audit_data(&Json::from(&payload)),
            r#"{"registered_at":"2024-01-01T00:00:00Z","role":"user","user_id":"u","username":"ann"}"#
        );
        let payload = json!({"TotpEnrollmentConfirmed": {
            "enrollment_id": "e", "accepted_step": 5,
            "recovery_code_hashes": ["a", "b"], "enabled_at": "t"
        }});
        assert_eq!(
            audit_data(&Json::from(&payload)),
            r#"{"accepted_step":5,"enabled_at":"t","enrollment_id":"e"}"#
        );
        let payload = json!({"Future": {"code": "123456", "email_code": "1", "nested": {
            "token_hash": "x", "Secret": "s", "codes": 1, "recovery_code_index": 2
        }}});
        assert_eq!(
            audit_data(&Json::from(&payload)),
            r#"{"nested":{"codes":1,"recovery_code_index":2}}"#
        );
        assert_eq!(audit_data(&Json::from(&json!("TwoFactorDisabled"))), "{}");
        assert_eq!(
            audit_data(&Json::from(&json!({"Odd": "secret-value"}))),
            "{}"
        );
    }

    #[test]
    fn audit_data_holds_no_challenge_id() {
        let challenge = "5f0c3e52-8d4b-4c1e-9a55-0e1f7d3c2b11";
        let payload = json!({"SecondFactorRejected": {
            "challenge_id": challenge, "method": "totp", "attempts_remaining": 4,
            "consecutive_failures": 1, "locked_until": null
        }});
        let data = audit_data(&Json::from(&payload));
        assert_eq!(
            data,
            r#"{"attempts_remaining":4,"consecutive_failures":1,"locked_until":null,"method":"totp"}"#
        );
        let payload =
            json!({"Future": {"passkey_challenge_id": challenge, "Challenge_IDs": [challenge]}});
        assert_eq!(audit_data(&Json::from(&payload)), "{}");
    }

    /// The upgrade of a trail written before challenge ids were left out:
    /// an untouched row becomes what `audit_data` gives today, and an edited
    /// one keeps its edit (so that verify still reports it).
    #[test]
    fn stored_data_of_the_earlier_rule_becomes_todays() {
        let payload = json!({"ChallengeIssued": {
            "challenge_id": "c", "methods": ["totp", "recovery_code"], "expires_at": "t"
        }});
        let earlier = r#"{"challenge_id":"c","expires_at":"t","methods":["totp","recovery_code"]}"#;
        assert_eq!(
            stored_data_without_secrets(earlier).unwrap(),
            audit_data(&Json::from(&payload))
        );
        let edited = r#"{"challenge_id":"c","expires_at":"t","methods":["email"]}"#;
        assert_eq!(
            stored_data_without_secrets(edited).unwrap(),
            r#"{"expires_at":"t","methods":["email"]}"#
        );
        assert!(stored_data_without_secrets("{not json").is_err());
    }

    #[test]
    fn occurred_at_prefers_the_metadata_time() {
        let metadata = json!({ "occurred_at": "2024-05-06T07:08:09.5Z", "actor_id": "a" });
        let metadata = Json::from(&metadata);
        let columns = AuditColumns::of(&Json::Null, &metadata, DateTime::UNIX_EPOCH);
        assert_eq!(
            columns.occurred_at.to_rfc3339(),
            "2024-05-06T07:08:09.500+00:00"
        );
        assert_eq!(columns.actor_id, Some("a"));
        let stored_at = DateTime::UNIX_EPOCH + chrono::Duration::days(3);
        let metadata = json!({ "occurred_at": 5, "ip": "192.0.2.1" });
        let metadata = Json::from(&metadata);
        let columns = AuditColumns::of(&Json::Null, &metadata, stored_at);
        assert_eq!(columns.occurred_at, stored_at);
        assert_eq!((columns.actor_id, columns.ip), (None, Some("192.0.2.1")));
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
        let pool = crate::memory_store().await;
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
