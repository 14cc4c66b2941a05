//! The one fold of the read models: how each event changes the per-user
//! rows (directory, live sessions and challenges, the report's counters)
//! and the audit trail. The live projector and the rebuild both run it:
//! the projector on the rows a batch touches, loaded from the tables and
//! written back changed; the rebuild on every row, in memory, from nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use twofold_domain::{AuthenticatedBy, Role, TwoFactorStatus, UserEvent};
use twofold_store::sql::Arg;

use crate::audit::{hash_text, head_hash, AuditColumns, Chains, Hash, Link, GENESIS};
use crate::db::ProjectionError;
use crate::feed::EventPosition;
use crate::pages::{chain_page, corrupt};
use twofold_store::{Row, UpsertRow};

/// A row of `two_factor_counts`: users per (role, 2FA status, enforced).
pub(crate) type Bucket = (Role, TwoFactorStatus, bool);

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DirectoryRow {
    pub username: String,
    pub email: Option<String>,
    pub email_key: Option<String>,
    pub role: Role,
    pub two_factor_status: TwoFactorStatus,
    pub enforced: bool,
    pub enabled_at: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub registered_at: DateTime<Utc>,
    /// The authenticator app's own status (`two_factor_status` also counts
    /// passkeys).
    pub totp_status: TwoFactorStatus,
    /// How many passkeys the user holds.
    pub passkeys: i64,
}

impl DirectoryRow {
    fn bucket(&self) -> Bucket {
        (self.role, self.two_factor_status, self.enforced)
    }

    /// What `as_of` answers of a user: everything but the last sign-in
    /// (which would make a version of every sign-in).
    fn versioned(&self) -> impl PartialEq + '_ {
        (
            &self.username,
            &self.email,
            self.role,
            self.two_factor_status,
            self.totp_status,
            self.passkeys,
            self.enforced,
            self.enabled_at,
        )
    }

    /// The row as the version valid from the event at `position`, in the
    /// columns of `USER_VERSIONS`.
    fn version_args(&self, user_id: &str, position: i64, valid_from: DateTime<Utc>) -> Vec<Arg> {
        vec![
            user_id.into(),
            position.into(),
            valid_from.into(),
            self.username.as_str().into(),
            self.email.clone().into(),
            self.email_key.clone().into(),
            self.role.as_str().into(),
            self.two_factor_status.as_str().into(),
            self.enforced.into(),
            self.enabled_at.into(),
            self.registered_at.into(),
            self.totp_status.as_str().into(),
            self.passkeys.into(),
        ]
    }

    /// 2FA is on with an authenticator app or any passkey.
    fn settle_status(&mut self) {
        self.two_factor_status = if self.passkeys > 0 {
            TwoFactorStatus::Enabled
        } else {
            self.totp_status
        };
    }

    /// Per column of `USER_DIRECTORY`, whether this row differs from
    /// `stored` there (the key never does).
    fn changed_from(&self, stored: &DirectoryRow) -> Vec<bool> {
        vec![
            false,
            self.username != stored.username,
            self.email != stored.email,
            self.email_key != stored.email_key,
            self.role != stored.role,
            self.two_factor_status != stored.two_factor_status,
            self.enforced != stored.enforced,
            self.enabled_at != stored.enabled_at,
            self.last_login_at != stored.last_login_at,
            self.registered_at != stored.registered_at,
            self.totp_status != stored.totp_status,
            self.passkeys != stored.passkeys,
        ]
    }

    /// The row in the columns of `USER_DIRECTORY`.
    pub fn into_args(self, user_id: String) -> Vec<Arg> {
        vec![
            user_id.into(),
            self.username.into(),
            self.email.into(),
            self.email_key.into(),
            self.role.as_str().into(),
            self.two_factor_status.as_str().into(),
            self.enforced.into(),
            self.enabled_at.into(),
            self.last_login_at.into(),
            self.registered_at.into(),
            self.totp_status.as_str().into(),
            self.passkeys.into(),
        ]
    }
}

pub(crate) struct SessionRow {
    token_hash: String,
    user_id: String,
    authenticated_by: AuthenticatedBy,
    impersonator_id: Option<String>,
    started_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl SessionRow {
    /// The row in the columns of `SESSIONS`; a new session was last seen
    /// when it started.
    fn into_args(self, session_id: String) -> Vec<Arg> {
        vec![
            session_id.into(),
            self.token_hash.into(),
            self.user_id.into(),
            session_method(self.authenticated_by).into(),
            self.impersonator_id.into(),
            self.started_at.into(),
            self.expires_at.into(),
            self.started_at.into(),
        ]
    }
}

/// How a session was started, as the `sessions` table stores it.
fn session_method(authenticated_by: AuthenticatedBy) -> Option<String> {
    serde_json::to_value(authenticated_by)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ChallengeRow {
    pub user_id: String,
    pub expires_at: DateTime<Utc>,
}

impl ChallengeRow {
    /// The row in the columns of `CHALLENGES`.
    fn into_args(self, challenge_id: String) -> Vec<Arg> {
        vec![
            challenge_id.into(),
            self.user_id.into(),
            self.expires_at.into(),
        ]
    }
}

/// The rows of one read model the fold holds, by key, and (on the live
/// path) which keys it wrote: those go back to the table, as an upsert when
/// the row is there and a delete when it is gone.
pub(crate) struct Rows<R> {
    rows: HashMap<String, R>,
    written: Option<HashSet<String>>,
}

impl<R> Rows<R> {
    fn new(track_writes: bool) -> Self {
        Rows {
            rows: HashMap::new(),
            written: track_writes.then(HashSet::new),
        }
    }

    /// A row as the table holds it, before the fold.
    fn load(&mut self, key: String, row: R) {
        self.rows.insert(key, row);
    }

    fn get(&self, key: &str) -> Option<&R> {
        self.rows.get(key)
    }

    fn contains(&self, key: &str) -> bool {
        self.rows.contains_key(key)
    }

    fn mark(&mut self, key: &str) {
        if let Some(written) = &mut self.written {
            if !written.contains(key) {
                written.insert(key.to_string());
            }
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut R> {
        if self.rows.contains_key(key) {
            self.mark(key);
        }
        self.rows.get_mut(key)
    }

    fn insert(&mut self, key: String, row: R) {
        self.mark(&key);
        self.rows.insert(key, row);
    }

    /// Also a row the fold never loaded: on the live path it may be in the
    /// table.
    fn remove(&mut self, key: &str) {
        self.mark(key);
        self.rows.remove(key);
    }

    /// Every row (the rebuild's).
    fn into_rows(self) -> impl Iterator<Item = (String, R)> {
        self.rows.into_iter()
    }

    /// What was written: the rows to upsert, the keys to delete.
    fn into_changes(mut self) -> (Vec<(String, R)>, Vec<String>) {
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for key in self.written.take().unwrap_or_default() {
            match self.rows.remove(&key) {
                Some(row) => upserts.push((key, row)),
                None => deletes.push(key),
            }
        }
        (upserts, deletes)
    }
}

/// Where the audit trail ends: its last row's id and head hash, and each
/// user's last link.
pub(crate) struct TrailEnd {
    pub last_id: i64,
    pub head: Hash,
    pub links: Vec<(String, Link)>,
}

/// The live path's changes of one batch, in the columns of each table.
pub(crate) struct Changes {
    /// The directory rows that changed, with the columns that did.
    pub directory: Vec<UpsertRow>,
    /// Sessions started before the batch and ended by it: every one of
    /// the user's, but the one kept (if any).
    pub earlier_sessions_ended: Vec<(String, Option<String>)>,
    pub sessions_ended: Vec<String>,
    pub sessions_started: Vec<Vec<Arg>>,
    pub challenges: Vec<Vec<Arg>>,
    pub challenges_ended: Vec<String>,
    /// Per bucket, how many users it gained (or lost).
    pub counts: Vec<Vec<Arg>>,
    pub versions: Vec<Vec<Arg>>,
}

/// Every row of the read models (the rebuild's), in the columns of each table.
pub(crate) struct AllRows {
    pub directory: Vec<Vec<Arg>>,
    pub versions: Vec<Vec<Arg>>,
    pub sessions: Vec<Vec<Arg>>,
    pub challenges: Vec<Vec<Arg>>,
    pub counts: Vec<Vec<Arg>>,
}

/// Whether `Fold::apply` reads the user's live challenges for an event of
/// this type (to prune them, end them all or extend one): the projector
/// loads a user's challenges only for such a batch. Ending one challenge
/// by its id needs no read.
pub(crate) fn reads_live_challenges(event_type: &str) -> bool {
    matches!(
        event_type,
        "ChallengeIssued" | "EmailCodeSent" | "TwoFactorDisabled" | "TwoFactorReset"
    )
}

/// The read models of the events folded so far.
pub(crate) struct Fold {
    directory: Rows<DirectoryRow>,
    /// On the live path, the directory rows as the table holds them.
    stored_directory: HashMap<String, DirectoryRow>,
    sessions: Rows<SessionRow>,
    /// Per user, the ids of sessions of this fold it may still hold.
    sessions_of: HashMap<String, Vec<String>>,
    /// Per user whose sessions from before this fold were ended, the one
    /// kept (if any). Empty on the rebuild, which starts from nothing.
    earlier_sessions_ended: HashMap<String, Option<String>>,
    challenges: Rows<ChallengeRow>,
    /// Per user, the ids of challenges it may still hold.
    challenges_of: HashMap<String, Vec<String>>,
    /// Per bucket, the users it gained: from nothing on the rebuild (so the
    /// totals), since the batch on the live path. Every bucket a user
    /// entered has its entry, zero or not, so both paths leave the same rows.
    counts: BTreeMap<Bucket, i64>,
    /// The `user_versions` rows of the events folded: one for each event
    /// that changed what `as_of` answers of its user.
    versions: Vec<Vec<Arg>>,
    chains: Chains,
    head: Hash,
    audit_id: i64,
    pub events: u64,
    pub applied: Option<EventPosition>,
}

impl Fold {
    /// From nothing, for the rebuild.
    pub fn empty() -> Self {
        Fold {
            directory: Rows::new(false),
            stored_directory: HashMap::new(),
            sessions: Rows::new(false),
            sessions_of: HashMap::new(),
            earlier_sessions_ended: HashMap::new(),
            challenges: Rows::new(false),
            challenges_of: HashMap::new(),
            counts: BTreeMap::new(),
            versions: Vec::new(),
            chains: Chains::default(),
            head: GENESIS,
            audit_id: 0,
            events: 0,
            applied: None,
        }
    }

    /// For a live batch: on from where the trail ends, with the directory
    /// rows and the live challenges of the batch's users as the tables hold
    /// them. Their sessions are not loaded: a session is only ever added or
    /// ended, and ending all of a user's is one delete.
    pub fn continuing(
        trail: TrailEnd,
        directory: Vec<(String, DirectoryRow)>,
        challenges: Vec<(String, ChallengeRow)>,
    ) -> Self {
        let mut fold = Fold {
            directory: Rows::new(true),
            sessions: Rows::new(true),
            challenges: Rows::new(true),
            head: trail.head,
            audit_id: trail.last_id,
            ..Fold::empty()
        };
        for (stream, link) in trail.links {
            fold.chains.continue_from(stream, link);
        }
        for (user_id, row) in directory {
            fold.stored_directory.insert(user_id.clone(), row.clone());
            fold.directory.load(user_id, row);
        }
        for (challenge_id, row) in challenges {
            fold.challenges_of
                .entry(row.user_id.clone())
                .or_default()
                .push(challenge_id.clone());
            fold.challenges.load(challenge_id, row);
        }
        fold
    }

    /// Where the trail ends after the events folded so far, with the last
    /// link and the directory row of each of `users`: what the next batch
    /// would load for them.
    pub fn end_of(&self, users: &[&str]) -> (TrailEnd, Vec<(String, Option<DirectoryRow>)>) {
        let trail = TrailEnd {
            last_id: self.audit_id,
            head: self.head,
            links: users
                .iter()
                .map(|user| (user.to_string(), self.chains.link(user)))
                .collect(),
        };
        let rows = users
            .iter()
            .map(|user| (user.to_string(), self.directory.get(user).cloned()))
            .collect();
        (trail, rows)
    }

    /// Folds a page of feed rows (decoded and chained on every core);
    /// returns their audit rows.
    pub fn page(&mut self, rows: &[Row]) -> Result<Vec<Vec<Arg>>, ProjectionError> {
        let chained = chain_page(rows, &mut self.chains, |_, event, payload, metadata| {
            let change: UserEvent =
                serde_json::from_str(event.payload).map_err(|source| corrupt(event, source))?;
            let columns = AuditColumns::of(payload, metadata, event.recorded_at);
            let occurred_at = columns.occurred_at;
            Ok((
                event.event_type.to_string(),
                change,
                <[Arg; 6]>::from(columns),
                occurred_at,
            ))
        })?;
        let mut audit_rows = Vec::with_capacity(chained.len());
        for event in chained {
            let (event_type, change, columns, occurred_at) = event.derived;
            let before = self.directory.get(&event.aggregate_id).cloned();
            self.apply(&event.aggregate_id, change);
            if let Some(after) = self.directory.get(&event.aggregate_id) {
                if before.as_ref().map(DirectoryRow::versioned) != Some(after.versioned()) {
                    self.versions.push(after.version_args(
                        &event.aggregate_id,
                        event.at.position,
                        occurred_at,
                    ));
                }
            }
            self.head = head_hash(&self.head, event.at.position, &event.chain);
            self.audit_id += 1;
            self.events += 1;
            self.applied = Some(event.at);
            let mut row: Vec<Arg> = vec![
                self.audit_id.into(),
                event.at.position.into(),
                event.aggregate_id.into(),
                event.sequence.into(),
                event_type.into(),
            ];
            row.extend(columns);
            row.push(hash_text(&event.chain).into());
            row.push(hash_text(&self.head).into());
            audit_rows.push(row);
        }
        Ok(audit_rows)
    }

    /// How `change` of `user_id` changes the rows: the read models' rules.
    fn apply(&mut self, user_id: &str, change: UserEvent) {
        let bucket_before = self.directory.get(user_id).map(DirectoryRow::bucket);
        match change {
            UserEvent::UserRegistered {
                username,
                email,
                role,
                registered_at,
                ..
            } => {
                if !self.directory.contains(user_id) {
                    self.directory.insert(
                        user_id.to_string(),
                        DirectoryRow {
                            username: username.as_str().to_string(),
                            email: email.as_ref().map(|e| e.as_str().to_string()),
                            email_key: email.as_ref().map(|e| e.key()),
                            role,
                            two_factor_status: TwoFactorStatus::Disabled,
                            enforced: false,
                            enabled_at: None,
                            last_login_at: None,
                            registered_at,
                            totp_status: TwoFactorStatus::Disabled,
                            passkeys: 0,
                        },
                    );
                }
            }
            UserEvent::EmailChanged { email } => {
                if let Some(row) = self.directory.get_mut(user_id) {
                    row.email = email.as_ref().map(|e| e.as_str().to_string());
                    row.email_key = email.as_ref().map(|e| e.key());
                }
            }
            // A change of role ends every session of the user.
            UserEvent::RoleChanged { role } => {
                if let Some(row) = self.directory.get_mut(user_id) {
                    row.role = role;
                }
                self.end_sessions_of(user_id, None);
            }
            UserEvent::TotpEnrollmentStarted { .. } => {
                self.set_totp_status(user_id, TwoFactorStatus::Pending);
            }
            UserEvent::TotpEnrollmentCodeRejected {
                attempts_remaining: 0,
                ..
            } => self.set_totp_status(user_id, TwoFactorStatus::Disabled),
            UserEvent::TotpEnrollmentConfirmed { enabled_at, .. } => {
                if let Some(row) = self.directory.get_mut(user_id) {
                    row.totp_status = TwoFactorStatus::Enabled;
                    row.enabled_at = Some(enabled_at);
                    row.settle_status();
                }
            }
            UserEvent::PasskeyRegistered { registered_at, .. } => {
                if let Some(row) = self.directory.get_mut(user_id) {
                    row.passkeys += 1;
                    row.enabled_at = row.enabled_at.or(Some(registered_at));
                    row.settle_status();
                }
            }
            UserEvent::PasskeyRemoved { .. } => {
                if let Some(row) = self.directory.get_mut(user_id) {
                    row.passkeys = (row.passkeys - 1).max(0);
                    if row.passkeys == 0 && row.totp_status != TwoFactorStatus::Enabled {
                        row.enabled_at = None;
                    }
                    row.settle_status();
                }
            }
            UserEvent::TwoFactorDisabled => self.two_factor_off(user_id),
            // An administrator's reset also ends every session of the user.
            UserEvent::TwoFactorReset { .. } => {
                self.two_factor_off(user_id);
                self.end_sessions_of(user_id, None);
            }
            // A new password ends the user's other sessions.
            UserEvent::PasswordChanged {
                kept_session_id, ..
            } => self.end_sessions_of(user_id, kept_session_id.map(|id| id.to_string())),
            // A new challenge does not end the user's older ones: the
            // aggregate keeps every unexpired challenge open (two tabs, a
            // retried sign-in) and decides whether it is spent, locked or
            // expired. Challenges that had expired by now are pruned.
            UserEvent::ChallengeIssued {
                challenge_id,
                expires_at,
                ..
            } => {
                let expired_by = expires_at - twofold_domain::policy::challenge_lifetime();
                self.end_challenges_of(user_id, |challenge| challenge.expires_at <= expired_by);
                let challenge_id = challenge_id.to_string();
                if !self.challenges.contains(&challenge_id) {
                    self.challenges_of
                        .entry(user_id.to_string())
                        .or_default()
                        .push(challenge_id.clone());
                    self.challenges.insert(
                        challenge_id,
                        ChallengeRow {
                            user_id: user_id.to_string(),
                            expires_at,
                        },
                    );
                }
            }
            // The challenge lives as long as its emailed code.
            UserEvent::EmailCodeSent {
                challenge_id,
                expires_at,
                ..
            } => {
                let challenge_id = challenge_id.to_string();
                if self
                    .challenges
                    .get(&challenge_id)
                    .is_some_and(|challenge| challenge.expires_at < expires_at)
                {
                    if let Some(challenge) = self.challenges.get_mut(&challenge_id) {
                        challenge.expires_at = expires_at;
                    }
                }
            }
            UserEvent::SecondFactorAccepted { challenge_id, .. } => {
                self.challenges.remove(&challenge_id.to_string());
            }
            UserEvent::TwoFactorEnforced { .. } => self.set_enforced(user_id, true),
            UserEvent::TwoFactorEnforcementLifted { .. } => self.set_enforced(user_id, false),
            UserEvent::SessionStarted {
                session_id,
                token_hash,
                authenticated_by,
                started_at,
                expires_at,
                impersonator_id,
                ..
            } => {
                // "Login as" is not the user signing in.
                if authenticated_by != AuthenticatedBy::Impersonation {
                    if let Some(row) = self.directory.get_mut(user_id) {
                        row.last_login_at = Some(started_at);
                    }
                }
                let session_id = session_id.to_string();
                if !self.sessions.contains(&session_id) {
                    self.sessions_of
                        .entry(user_id.to_string())
                        .or_default()
                        .push(session_id.clone());
                    self.sessions.insert(
                        session_id,
                        SessionRow {
                            token_hash: token_hash.as_str().to_string(),
                            user_id: user_id.to_string(),
                            authenticated_by,
                            impersonator_id: impersonator_id.map(|id| id.to_string()),
                            started_at,
                            expires_at,
                        },
                    );
                }
            }
            UserEvent::SessionEnded { session_id }
            | UserEvent::ImpersonationEnded { session_id, .. } => {
                self.sessions.remove(&session_id.to_string());
            }
            UserEvent::PasswordRejected { .. }
            | UserEvent::SecondFactorRejected { .. }
            | UserEvent::ReauthenticationCodeRejected { .. }
            | UserEvent::TotpCodeReplayed { .. }
            | UserEvent::EmailCodeRefused { .. }
            | UserEvent::EmailCodeUndelivered { .. }
            | UserEvent::SecondFactorSuspended { .. }
            | UserEvent::TotpEnrollmentCodeRejected { .. }
            | UserEvent::DeviceRemembered { .. }
            | UserEvent::RememberedDevicesRevoked
            | UserEvent::ImpersonationStarted { .. }
            | UserEvent::PasskeyRegistrationStarted { .. }
            | UserEvent::PasskeyRejected { .. }
            | UserEvent::PasskeyAssertionStarted { .. }
            | UserEvent::PasskeyUsed { .. }
            | UserEvent::PasskeyCounterRegressed { .. }
            | UserEvent::PasskeyRenamed { .. } => {}
        }
        // The report: out of the bucket the user was in, into the one it is
        // in now.
        let bucket_after = self.directory.get(user_id).map(DirectoryRow::bucket);
        if bucket_after != bucket_before {
            if let Some(before) = bucket_before {
                *self.counts.entry(before).or_default() -= 1;
            }
            if let Some(after) = bucket_after {
                *self.counts.entry(after).or_default() += 1;
            }
        }
    }

    fn set_totp_status(&mut self, user_id: &str, status: TwoFactorStatus) {
        if let Some(row) = self.directory.get_mut(user_id) {
            row.totp_status = status;
            row.settle_status();
        }
    }

    fn set_enforced(&mut self, user_id: &str, enforced: bool) {
        if let Some(row) = self.directory.get_mut(user_id) {
            row.enforced = enforced;
        }
    }

    fn two_factor_off(&mut self, user_id: &str) {
        if let Some(row) = self.directory.get_mut(user_id) {
            row.two_factor_status = TwoFactorStatus::Disabled;
            row.totp_status = TwoFactorStatus::Disabled;
            row.passkeys = 0;
            row.enabled_at = None;
        }
        self.end_challenges_of(user_id, |_| true);
    }

    /// Ends the user's sessions but `kept`: those of this fold here, those
    /// from before it (live path) by one delete when the batch is written.
    fn end_sessions_of(&mut self, user_id: &str, kept: Option<String>) {
        if let Some(ids) = self.sessions_of.get_mut(user_id) {
            let sessions = &mut self.sessions;
            ids.retain(|id| {
                let ends = Some(id) != kept.as_ref() && sessions.contains(id);
                if ends {
                    sessions.remove(id);
                }
                !ends && sessions.contains(id)
            });
        }
        if self.sessions.written.is_some() {
            // Ended twice, the earlier sessions keep only one both kept.
            let ended = self
                .earlier_sessions_ended
                .entry(user_id.to_string())
                .or_insert_with(|| kept.clone());
            if *ended != kept {
                *ended = None;
            }
        }
    }

    /// Deletes the user's challenges that `ends` picks.
    fn end_challenges_of(&mut self, user_id: &str, ends: impl Fn(&ChallengeRow) -> bool) {
        let Some(ids) = self.challenges_of.get_mut(user_id) else {
            return;
        };
        let challenges = &mut self.challenges;
        ids.retain(|id| match challenges.get(id) {
            Some(challenge) if ends(challenge) => {
                challenges.remove(id);
                false
            }
            Some(_) => true,
            None => false,
        });
    }

    fn count_rows(counts: BTreeMap<Bucket, i64>) -> Vec<Vec<Arg>> {
        counts
            .into_iter()
            .map(|((role, status, enforced), users)| {
                vec![
                    role.as_str().into(),
                    status.as_str().into(),
                    enforced.into(),
                    users.into(),
                ]
            })
            .collect()
    }

    /// The live path's changes.
    pub fn into_changes(self) -> Changes {
        let (directory, _) = self.directory.into_changes();
        let (sessions_started, sessions_ended) = self.sessions.into_changes();
        let (challenges, challenges_ended) = self.challenges.into_changes();
        let stored = self.stored_directory;
        Changes {
            directory: directory
                .into_iter()
                .filter_map(|(user_id, row)| {
                    let changed = match stored.get(&user_id) {
                        Some(before) => {
                            let changed = row.changed_from(before);
                            // Written by an event, but to what it held.
                            if !changed.contains(&true) {
                                return None;
                            }
                            Some(changed)
                        }
                        None => None,
                    };
                    Some(UpsertRow {
                        values: row.into_args(user_id),
                        changed,
                    })
                })
                .collect(),
            earlier_sessions_ended: self.earlier_sessions_ended.into_iter().collect(),
            sessions_ended,
            sessions_started: sessions_started
                .into_iter()
                .map(|(session_id, row)| row.into_args(session_id))
                .collect(),
            challenges: challenges
                .into_iter()
                .map(|(challenge_id, row)| row.into_args(challenge_id))
                .collect(),
            challenges_ended,
            counts: Fold::count_rows(self.counts),
            versions: self.versions,
        }
    }

    /// Every row (the rebuild's).
    pub fn into_rows(self) -> AllRows {
        AllRows {
            directory: self
                .directory
                .into_rows()
                .map(|(user_id, row)| row.into_args(user_id))
                .collect(),
            versions: self.versions,
            sessions: self
                .sessions
                .into_rows()
                .map(|(session_id, row)| row.into_args(session_id))
                .collect(),
            challenges: self
                .challenges
                .into_rows()
                .map(|(challenge_id, row)| row.into_args(challenge_id))
                .collect(),
            counts: Fold::count_rows(self.counts),
        }
    }
}
