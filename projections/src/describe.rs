//! What an audit row says in words: one sentence per event, naming people
//! by username, for the audit page and the API's pages of the trail. Built
//! from the row alone (its type, its `data` without secrets, who acted and
//! who was logged in as whom), so a sentence never says more than the trail
//! holds.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use twofold_domain::{AuthenticatedBy, Role, SecondFactorMethod, UserEvent};

use crate::audit::{AuditEntry, AuditFilter};
use crate::db::{ProjectionError, ReadModels};
use twofold_store::listed;

/// A user as the sentences name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    pub username: String,
    pub role: Role,
}

/// The people a page of audit rows names, by user id (as the rows hold it).
#[derive(Clone, Debug, Default)]
pub struct People(HashMap<String, Person>);

impl People {
    pub fn username(&self, id: &str) -> Option<&str> {
        self.0.get(id).map(|person| person.username.as_str())
    }

    /// The username, or for a user the directory does not hold, "user "
    /// and the start of the id.
    fn name(&self, id: &str) -> String {
        match self.username(id) {
            Some(username) => username.to_string(),
            None => format!("user {}", id.get(..8).unwrap_or(id)),
        }
    }

    /// An administrator or auditor with their role in front ("Admin ann");
    /// a user by name alone.
    fn titled(&self, id: &str) -> String {
        match self.0.get(id).map(|person| person.role) {
            Some(Role::User) | None => self.name(id),
            Some(role) => format!("{} {}", role.label(), self.name(id)),
        }
    }
}

impl FromIterator<(String, Person)> for People {
    fn from_iter<I: IntoIterator<Item = (String, Person)>>(people: I) -> Self {
        People(people.into_iter().collect())
    }
}

impl ReadModels {
    /// The username and role of each of `ids` the directory holds.
    pub async fn people(&self, ids: &[&str]) -> Result<People, ProjectionError> {
        if ids.is_empty() {
            return Ok(People::default());
        }
        let sql = format!(
            "SELECT user_id, username, role FROM user_directory
              WHERE user_id IN (SELECT item FROM ({}) AS listed)",
            self.0.dialect().listed(1)
        );
        let mut people = HashMap::with_capacity(ids.len());
        for row in self.0.fetch(&sql, vec![listed(ids)]).await? {
            people.insert(
                row.get("user_id")?,
                Person {
                    username: row.get("username")?,
                    role: row.parsed("role")?,
                },
            );
        }
        Ok(People(people))
    }

    /// The users `entries` name: each row's user, actor and impersonator.
    pub async fn people_in(&self, entries: &[AuditEntry]) -> Result<People, ProjectionError> {
        let mut ids: Vec<&str> = entries
            .iter()
            .flat_map(|entry| {
                [
                    Some(entry.user_id.as_str()),
                    entry.actor_id.as_deref(),
                    entry.impersonator_id.as_deref(),
                ]
            })
            .flatten()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        self.people(&ids).await
    }
}

/// An audit row with the usernames of the people it names (when the
/// directory holds them) and what happened in one sentence.
#[derive(Clone, Debug, PartialEq)]
pub struct DescribedEntry {
    pub entry: AuditEntry,
    /// The request that caused the event (the metadata's `request_id`, the
    /// `X-Request-Id` it came with): the events one command stored share it.
    pub correlation_id: Option<String>,
    pub username: Option<String>,
    pub actor_username: Option<String>,
    pub impersonator_username: Option<String>,
    pub summary: String,
}

impl ReadModels {
    /// The correlation id of each entry's event, from the events' metadata
    /// (not a column of the trail: the event holds it, and the chain covers it).
    async fn correlation_ids(
        &self,
        entries: &[AuditEntry],
    ) -> Result<HashMap<i64, String>, ProjectionError> {
        if entries.is_empty() {
            return Ok(HashMap::new());
        }
        let dialect = self.0.dialect();
        let sql = format!(
            "SELECT position, {} AS correlation_id FROM events
              WHERE position IN (SELECT CAST(item AS BIGINT) FROM ({}) AS listed)",
            dialect.json_field("metadata", &["request_id"]),
            dialect.listed(1)
        );
        let positions: Vec<String> = entries
            .iter()
            .map(|entry| entry.position.to_string())
            .collect();
        let mut ids = HashMap::with_capacity(entries.len());
        for row in self.0.fetch(&sql, vec![listed(&positions)]).await? {
            if let Some(id) = row.get::<Option<String>>("correlation_id")? {
                ids.insert(row.get("position")?, id);
            }
        }
        Ok(ids)
    }

    /// `audit_page`, each row described: two more queries a page, for the
    /// people it names and the requests that caused its events.
    pub async fn described_audit_page(
        &self,
        filter: &AuditFilter,
    ) -> Result<(Vec<DescribedEntry>, bool), ProjectionError> {
        let (entries, more) = self.audit_page(filter).await?;
        let people = self.people_in(&entries).await?;
        let mut correlation = self.correlation_ids(&entries).await?;
        let name = |id: Option<&str>| id.and_then(|id| people.username(id)).map(str::to_string);
        let described = entries
            .into_iter()
            .map(|entry| DescribedEntry {
                correlation_id: correlation.remove(&entry.position),
                username: name(Some(&entry.user_id)),
                actor_username: name(entry.actor_id.as_deref()),
                impersonator_username: name(entry.impersonator_id.as_deref()),
                summary: summary(&entry, &people),
                entry,
            })
            .collect();
        Ok((described, more))
    }
}

/// The event types, each with a label in words, for a filter's choices.
pub fn event_types() -> impl Iterator<Item = (&'static str, String)> {
    <UserEvent as strum::VariantNames>::VARIANTS
        .iter()
        .map(|name| (*name, words(name)))
}

/// `TwoFactorEnforcementLifted` as "Two factor enforcement lifted",
/// `TotpCodeReplayed` as "TOTP code replayed".
fn words(name: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    for letter in name.chars() {
        match words.last_mut() {
            Some(word) if !letter.is_ascii_uppercase() => word.push(letter),
            _ => words.push(letter.to_string()),
        }
    }
    words
        .iter()
        .enumerate()
        .map(|(index, word)| match word.as_str() {
            "Totp" => "TOTP".to_string(),
            _ if index > 0 => word.to_ascii_lowercase(),
            _ => word.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Who the sentence is about and who acted, as the row records them.
struct Parties {
    /// The user whose event it is.
    user: String,
    /// Who acted, when it was someone: the user, an administrator, or an
    /// administrator logged in as the user.
    actor: Option<String>,
    /// The user acted on their own account.
    by_themselves: bool,
}

impl Parties {
    fn of(entry: &AuditEntry, people: &People) -> Parties {
        let user = people.name(&entry.user_id);
        let (actor, by_themselves) = match (&entry.impersonator_id, &entry.actor_id) {
            (Some(impersonator), _) => (
                Some(format!(
                    "{}, logged in as {user},",
                    people.titled(impersonator)
                )),
                false,
            ),
            (None, Some(actor)) if *actor == entry.user_id => (Some(user.clone()), true),
            (None, Some(actor)) => (Some(people.titled(actor)), false),
            (None, None) => (None, false),
        };
        Parties {
            user,
            actor,
            by_themselves,
        }
    }

    /// "their" when the user acted, else "carol's".
    fn whose(&self) -> String {
        if self.by_themselves {
            "their".to_string()
        } else {
            format!("{}'s", self.user)
        }
    }

    /// "carol changed their X" / "Admin ann changed carol's X" /
    /// "carol's X was changed", for a change someone made to the user.
    fn changed(&self, verb: &str, what: &str) -> String {
        match &self.actor {
            Some(actor) => format!("{actor} {verb} {} {what}", self.whose()),
            None => format!("{}'s {what} was {verb}", self.user),
        }
    }
}

fn text<'a>(data: &'a Value, key: &str) -> Option<&'a str> {
    data.get(key)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
}

fn number(data: &Value, key: &str) -> Option<u64> {
    data.get(key).and_then(Value::as_u64)
}

fn time(data: &Value, key: &str) -> Option<String> {
    let at = DateTime::parse_from_rfc3339(text(data, key)?).ok()?;
    Some(
        at.with_timezone(&Utc)
            .format("%Y-%m-%d %H:%M UTC")
            .to_string(),
    )
}

fn role(data: &Value) -> &'static str {
    text(data, "role")
        .and_then(|role| role.parse::<Role>().ok())
        .map_or("an unknown role", Role::label)
}

fn method(data: &Value) -> &'static str {
    match text(data, "method").and_then(|method| method.parse().ok()) {
        Some(SecondFactorMethod::Totp) => "authenticator app",
        Some(SecondFactorMethod::Email) => "emailed",
        Some(SecondFactorMethod::RecoveryCode) => "recovery",
        Some(SecondFactorMethod::Passkey) => "passkey",
        None => "second-factor",
    }
}

fn signed_in_with(data: &Value) -> &'static str {
    match text(data, "authenticated_by").and_then(|by| by.parse().ok()) {
        Some(AuthenticatedBy::Password) => "with a password",
        Some(AuthenticatedBy::Totp) => "with a password and an authenticator app code",
        Some(AuthenticatedBy::Email) => "with a password and an emailed code",
        Some(AuthenticatedBy::RecoveryCode) => "with a password and a recovery code",
        Some(AuthenticatedBy::RememberedDevice) => "with a password on a remembered device",
        Some(AuthenticatedBy::Passkey) => "with a passkey",
        Some(AuthenticatedBy::Impersonation) | None => "",
    }
}

/// In which ceremony a passkey was used or refused.
fn ceremony(data: &Value, user: &str) -> String {
    match text(data, "ceremony") {
        Some("registration") => format!("while {user} added a passkey"),
        Some("second_factor") => format!("at {user}'s second step"),
        Some("sign_in") => format!("to sign in as {user} without a password"),
        _ => format!("for {user}"),
    }
}

/// " (reason: locked out, ticket T-12)", or nothing without either.
fn because(data: &Value) -> String {
    let parts: Vec<String> = [("reason", "reason"), ("ticket", "ticket")]
        .into_iter()
        .filter_map(|(key, label)| text(data, key).map(|value| format!("{label}: {value}")))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// "; the account is locked until ..." when the event locked it.
fn lock(data: &Value, what: &str) -> String {
    time(data, "locked_until")
        .map(|until| format!("; {what} locked until {until}"))
        .unwrap_or_default()
}

/// One sentence saying what the row's event was, who did it and to whom.
pub fn summary(entry: &AuditEntry, people: &People) -> String {
    let parties = Parties::of(entry, people);
    let user = &parties.user;
    let data = &entry.data;
    let sentence = match entry.event_type.as_str() {
        "UserRegistered" => match &parties.actor {
            Some(actor) if !parties.by_themselves => {
                format!("{actor} created the user {user} ({})", role(data))
            }
            _ => format!("The user {user} was created ({})", role(data)),
        },
        "EmailChanged" => match text(data, "email") {
            Some(email) => format!("{} to {email}", parties.changed("changed", "email")),
            None => parties.changed("removed", "email address"),
        },
        "RoleChanged" => format!("{} to {}", parties.changed("changed", "role"), role(data)),
        "PasswordChanged" => parties.changed("changed", "password"),
        "PasswordRejected" => format!(
            "A wrong password was given for {user} ({} in a row){}",
            number(data, "consecutive_failures").unwrap_or(1),
            lock(data, "the account is")
        ),
        "ChallengeIssued" => {
            format!("{user} gave the right password; a second factor was asked for")
        }
        "SecondFactorAccepted" => {
            format!("{user} passed the second step with a {} code", method(data))
        }
        "SecondFactorRejected" => format!(
            "{user} gave a wrong {} code ({} attempts left){}",
            method(data),
            number(data, "attempts_remaining").unwrap_or(0),
            lock(data, "codes are")
        ),
        "ReauthenticationCodeRejected" => format!(
            "{user} gave a wrong {} code when asked to confirm who they are{}",
            method(data),
            lock(data, "codes are")
        ),
        "TotpCodeReplayed" => {
            format!("An authenticator app code of {user} that was already used was offered again")
        }
        "SecondFactorSuspended" => format!(
            "{user}'s {} codes were suspended after {} wrong codes in a row",
            method(data),
            number(data, "consecutive_failures").unwrap_or(0)
        ),
        "EmailCodeSent" => match text(data, "sent_to") {
            Some(to) => format!("A sign-in code for {user} was emailed to {to}"),
            None => format!("A sign-in code for {user} was emailed"),
        },
        "EmailCodeUndelivered" => {
            format!("The sign-in code emailed to {user} could not be delivered")
        }
        "EmailCodeRefused" => match text(data, "reason") {
            Some("shared") => {
                format!("{user} asked for an emailed code, but another user has the same address")
            }
            _ => format!("{user} asked for an emailed code, but has no email address"),
        },
        "SessionStarted" => {
            match text(data, "impersonator_id").or(entry.impersonator_id.as_deref()) {
                Some(impersonator) => format!(
                    "{} started a \"Login as\" session as {user}",
                    people.titled(impersonator)
                ),
                None => {
                    let held = if data.get("enrollment_required") == Some(&Value::Bool(true)) {
                        ", held on the 2FA enrollment step"
                    } else {
                        ""
                    };
                    match signed_in_with(data) {
                        "" => format!("{user} signed in{held}"),
                        how => format!("{user} signed in {how}{held}"),
                    }
                }
            }
        }
        "SessionEnded" => format!("{user} signed out"),
        "TotpEnrollmentStarted" => format!(
            "{} began setting up an authenticator app",
            parties.actor.as_deref().unwrap_or(user)
        ),
        "TotpEnrollmentCodeRejected" => format!(
            "A wrong code was given while setting up {} authenticator app ({} attempts left)",
            parties.whose(),
            number(data, "attempts_remaining").unwrap_or(0)
        ),
        "TotpEnrollmentConfirmed" => format!(
            "{} turned on 2FA with an authenticator app",
            parties.actor.as_deref().unwrap_or(user)
        ),
        "TwoFactorDisabled" => parties.changed("turned off", "2FA"),
        "TwoFactorReset" => format!("{}{}", parties.changed("reset", "2FA"), because(data)),
        "DeviceRemembered" => match time(data, "expires_at") {
            Some(until) => format!("{user}'s device is remembered until {until}"),
            None => format!("{user}'s device is remembered"),
        },
        "RememberedDevicesRevoked" => parties.changed("forgot", "remembered devices"),
        "TwoFactorEnforced" => match &parties.actor {
            Some(actor) => format!("{actor} enforced 2FA for {user}{}", because(data)),
            None => format!("2FA was enforced for {user}{}", because(data)),
        },
        "TwoFactorEnforcementLifted" => match &parties.actor {
            Some(actor) => format!(
                "{actor} lifted the 2FA enforcement for {user}{}",
                because(data)
            ),
            None => format!("The 2FA enforcement for {user} was lifted{}", because(data)),
        },
        "ImpersonationStarted" => {
            let impersonator = text(data, "impersonator_id")
                .or(entry.impersonator_id.as_deref())
                .or(entry.actor_id.as_deref())
                .map_or_else(|| "An administrator".to_string(), |id| people.titled(id));
            format!("{impersonator} logged in as {user}{}", because(data))
        }
        "ImpersonationEnded" => {
            let session = match &entry.impersonator_id {
                Some(impersonator) => format!(
                    "{}'s \"Login as\" session as {user}",
                    people.titled(impersonator)
                ),
                None => format!("The \"Login as\" session as {user}"),
            };
            match text(data, "revoked") {
                Some("role_changed") => format!("{session} ended: a role changed"),
                Some("impersonator_locked") => {
                    format!("{session} ended: the administrator's account is locked")
                }
                Some("impersonator_password_changed") => {
                    format!("{session} ended: the administrator's password changed")
                }
                _ => format!("{session} ended"),
            }
        }
        "PasskeyRegistrationStarted" => format!(
            "{} began adding a passkey",
            parties.actor.as_deref().unwrap_or(user)
        ),
        "PasskeyRegistered" => match text(data, "name") {
            Some(name) => format!(
                "{} added the passkey \"{name}\"",
                parties.actor.as_deref().unwrap_or(user)
            ),
            None => format!(
                "{} added a passkey",
                parties.actor.as_deref().unwrap_or(user)
            ),
        },
        "PasskeyRejected" => format!(
            "A passkey answer {} was refused: {}{}",
            ceremony(data, user),
            text(data, "reason").map_or("no reason recorded".to_string(), |reason| reason
                .replace('_', " ")),
            lock(data, "the account is")
        ),
        "PasskeyAssertionStarted" => {
            format!("{user} was asked to use a passkey for the second step")
        }
        "PasskeyUsed" => format!("{user} used a passkey {}", ceremony(data, user)),
        "PasskeyCounterRegressed" => format!(
            "A passkey of {user} presented a signature counter that went backwards ({} after {}): \
             the authenticator may have been cloned; refused",
            number(data, "asserted_counter").unwrap_or(0),
            number(data, "stored_counter").unwrap_or(0)
        ),
        "PasskeyRenamed" => match text(data, "name") {
            Some(name) => format!(
                "{} renamed a passkey to \"{name}\"",
                parties.actor.as_deref().unwrap_or(user)
            ),
            None => format!(
                "{} renamed a passkey",
                parties.actor.as_deref().unwrap_or(user)
            ),
        },
        "PasskeyRemoved" => parties.changed("removed", "passkey"),
        other => format!("{} for {user}", words(other)),
    };
    format!("{}.", capitalised(&sentence))
}

fn capitalised(sentence: &str) -> String {
    let mut letters = sentence.chars();
    match letters.next() {
        Some(first) => first.to_uppercase().chain(letters).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const ANN: &str = "0b0c7d0e-0000-4000-8000-00000000a000";
    const CAROL: &str = "0b0c7d0e-0000-4000-8000-00000000c000";

    fn people() -> People {
        [(ANN, "ann", Role::Admin), (CAROL, "carol", Role::User)]
            .into_iter()
            .map(|(id, username, role)| {
                (
                    id.to_string(),
                    Person {
                        username: username.to_string(),
                        role,
                    },
                )
            })
            .collect()
    }

    fn row(
        event_type: &str,
        actor: Option<&str>,
        impersonator: Option<&str>,
        data: Value,
    ) -> AuditEntry {
        AuditEntry {
            id: 1,
            position: 1,
            user_id: CAROL.to_string(),
            sequence: 1,
            event_type: event_type.to_string(),
            occurred_at: DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z")
                .unwrap()
                .into(),
            actor_id: actor.map(str::to_string),
            impersonator_id: impersonator.map(str::to_string),
            ip: None,
            user_agent: None,
            data,
            chain_hash: String::new(),
            head_hash: String::new(),
        }
    }

    #[test]
    fn a_login_as_reads_as_the_administrator_logging_in_as_the_user_with_reason_and_ticket() {
        let started = row(
            "ImpersonationStarted",
            Some(ANN),
            None,
            json!({"impersonator_id": ANN, "reason": "locked out", "ticket": "T-12"}),
        );
        assert_eq!(
            summary(&started, &people()),
            "Admin ann logged in as carol (reason: locked out, ticket: T-12)."
        );
    }

    #[test]
    fn what_is_done_under_login_as_names_the_administrator_and_the_user() {
        let disabled = row("TwoFactorDisabled", Some(ANN), Some(ANN), json!({}));
        assert_eq!(
            summary(&disabled, &people()),
            "Admin ann, logged in as carol, turned off carol's 2FA."
        );
    }

    #[test]
    fn a_user_acting_on_their_own_account_reads_as_their_own() {
        let disabled = row("TwoFactorDisabled", Some(CAROL), None, json!({}));
        assert_eq!(summary(&disabled, &people()), "Carol turned off their 2FA.");
        let email = row(
            "EmailChanged",
            Some(ANN),
            None,
            json!({"email": "c@example.com"}),
        );
        assert_eq!(
            summary(&email, &people()),
            "Admin ann changed carol's email to c@example.com."
        );
    }

    #[test]
    fn refusals_say_how_many_attempts_are_left_and_until_when_it_is_locked() {
        let rejected = row(
            "SecondFactorRejected",
            None,
            None,
            json!({"method": "totp", "attempts_remaining": 0, "consecutive_failures": 5,
                   "locked_until": "2026-12-03T10:15:00Z"}),
        );
        assert_eq!(
            summary(&rejected, &people()),
            "Carol gave a wrong authenticator app code (0 attempts left); codes are locked until 2026-12-03 10:15 UTC."
        );
    }

    #[test]
    fn a_user_the_directory_does_not_hold_is_named_by_the_start_of_the_id() {
        let mut gone = row("SessionEnded", None, None, json!({}));
        gone.user_id = "deadbeef-0000-4000-8000-000000000000".to_string();
        assert_eq!(summary(&gone, &people()), "User deadbeef signed out.");
    }

    /// A new event type gets a sentence of its own, not the fallback.
    #[test]
    fn every_event_type_has_a_sentence_of_its_own() {
        for (name, label) in event_types() {
            let sentence = summary(&row(name, Some(ANN), None, json!({})), &people());
            assert_ne!(sentence, format!("{label} for carol."), "{name}");
            assert!(
                sentence.ends_with('.') && !sentence.contains("  "),
                "{sentence}"
            );
        }
    }

    #[test]
    fn event_types_read_as_words() {
        let labels: HashMap<&str, String> = event_types().collect();
        assert_eq!(
            labels["TwoFactorEnforcementLifted"],
            "Two factor enforcement lifted"
        );
        assert_eq!(labels["TotpCodeReplayed"], "TOTP code replayed");
        assert_eq!(
            labels.len(),
            <UserEvent as strum::VariantNames>::VARIANTS.len()
        );
    }
}
