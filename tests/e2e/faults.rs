//! Fault injection on real `twofold serve` processes: `kill -9` under load
//! (both stores), a PostgreSQL stop of 10 s (a private instance, never the
//! shared server), and a full or read-only disk under SQLite. Each test
//! prints its figures; docs/security.md ("Fault injection") records them.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use twofold_store::Db;

use crate::helpers::{binary, fresh_postgres_database, Answer, Backend, ADMIN};
use crate::on_both_backends;
use crate::processes::{
    assert_sequences_contiguous, free_port, oathtool_at, open_db, stored_events, Processes,
    MULTI_PROCESS,
};

on_both_backends!(every_acknowledged_write_survives_kill_9_and_the_read_models_catch_up);

/// Every read model, rebuilt from the events by `twofold projections rebuild`.
const READ_MODELS: [&str; 5] = [
    "sessions",
    "user_directory",
    "challenges",
    "two_factor_counts",
    "audit_log",
];
/// Stops a test that hangs; never a figure under test.
const HANG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

/// `twofold serve` processes on `database_url`, none started yet.
fn processes_on(database_url: String, dir: tempfile::TempDir) -> Processes {
    Processes {
        database_url,
        client: reqwest::Client::builder().timeout(HANG).build().unwrap(),
        bases: Vec::new(),
        children: Vec::new(),
        logs: Vec::new(),
        dir,
    }
}

/// Starts one more process on the cluster's database (the first one creates
/// the bootstrap admin); returns its index once it answers `/readyz`.
async fn launch_next(cluster: &mut Processes) -> usize {
    let index = cluster.bases.len();
    let launched = cluster.launch(index, index == 0).await;
    cluster.adopt(launched);
    index
}

/// SIGKILL, then reaps it; fails if the process had died on its own.
async fn kill_9(cluster: &mut Processes, index: usize) {
    let child = &mut cluster.children[index];
    child.start_kill().expect("SIGKILL sent");
    let status = child.wait().await.expect("the killed process is reaped");
    assert_eq!(
        status.signal(),
        Some(9),
        "process {index} ended by itself: {status}"
    );
}

/// One request; a transport error (the server is gone) is an answer too.
async fn send(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Answer, reqwest::Error> {
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await?;
    Ok(Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    })
}

async fn sign_in(
    client: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
) -> Result<Answer, reqwest::Error> {
    send(
        client,
        base,
        Method::POST,
        "/api/v1/login",
        None,
        Some(json!({ "username": username, "password": password })),
    )
    .await
}

async fn admin_session(client: &reqwest::Client, base: &str) -> String {
    let answer = sign_in(client, base, ADMIN.0, ADMIN.1).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.body["session_token"].as_str().unwrap().to_string()
}

/// A write the server acknowledged (2xx with `Twofold-Position`): the event
/// at that position must be this user's, of this type, and carry `field`.
#[derive(Clone, Debug)]
struct Acknowledged {
    position: i64,
    user_id: String,
    event_type: &'static str,
    field: Option<(&'static str, String)>,
}

impl Acknowledged {
    fn of(
        answer: &Answer,
        user_id: &str,
        event_type: &'static str,
        field: Option<(&'static str, String)>,
    ) -> Result<Self, String> {
        let position = answer
            .position()
            .ok_or_else(|| format!("a {event_type} answer without Twofold-Position: {answer:?}"))?;
        Ok(Acknowledged {
            position,
            user_id: user_id.to_string(),
            event_type,
            field,
        })
    }

    fn is_in(&self, stored: &BTreeMap<i64, StoredEvent>) -> bool {
        stored.get(&self.position).is_some_and(|event| {
            event.aggregate_id == self.user_id
                && event.event_type == self.event_type
                && self.field.as_ref().is_none_or(|(name, value)| {
                    event.payload[self.event_type][*name].as_str() == Some(value.as_str())
                })
        })
    }
}

#[derive(Debug)]
struct StoredEvent {
    aggregate_id: String,
    event_type: String,
    payload: Value,
}

/// Every stored event by its public position (`Twofold-Position`).
async fn events_by_position(db: &Db) -> BTreeMap<i64, StoredEvent> {
    let rows = db
        .fetch(
            "SELECT position, aggregate_id, event_type, CAST(payload AS TEXT) AS payload FROM events",
            vec![],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            let event = StoredEvent {
                aggregate_id: row.get("aggregate_id").unwrap(),
                event_type: row.get("event_type").unwrap(),
                payload: serde_json::from_str(row.text("payload").unwrap()).unwrap(),
            };
            (row.get("position").unwrap(), event)
        })
        .collect()
}

/// Every acknowledged write is stored, and nothing twice: each aggregate's
/// sequences are 1, 2, 3 ... and each username registered once.
async fn assert_acknowledged_writes_stored_once(db: &Db, acknowledged: &[Acknowledged]) {
    let stored = events_by_position(db).await;
    let lost: Vec<&Acknowledged> = acknowledged.iter().filter(|a| !a.is_in(&stored)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are not stored as acknowledged: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    assert_sequences_contiguous(&stored_events(db).await);
    let mut registrations: BTreeMap<&str, usize> = BTreeMap::new();
    for event in stored.values() {
        if let Some(name) = event.payload["UserRegistered"]["username"].as_str() {
            *registrations.entry(name).or_default() += 1;
        }
    }
    let twice: Vec<_> = registrations.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "registered more than once: {twice:?}");
}

/// (events stored, events the read models applied): the audit trail holds
/// one row per applied event.
async fn applied_of_stored(db: &Db) -> (i64, i64) {
    let row = db
        .fetch_optional(
            "SELECT (SELECT count(*) FROM events) AS stored, (SELECT count(*) FROM audit_log) AS applied",
            vec![],
        )
        .await
        .unwrap()
        .unwrap();
    (row.get("stored").unwrap(), row.get("applied").unwrap())
}

/// Waits until the read models applied every stored event; returns the
/// time since `since`.
async fn wait_until_caught_up(db: &Db, since: Instant) -> Duration {
    loop {
        let (stored, applied) = applied_of_stored(db).await;
        if stored == applied {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < HANG,
            "the read models applied {applied} of {stored} events after {HANG:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every row of every read model as text, sorted; columns found in the
/// schema, so a new column is compared too.
async fn read_model_rows(db: &Db) -> Vec<String> {
    let mut rows = Vec::new();
    for table in READ_MODELS {
        let columns = db.columns(table).await.unwrap();
        assert!(!columns.is_empty(), "no columns found for {table}");
        let cells: Vec<String> = columns
            .iter()
            .map(|column| format!("coalesce(CAST({column} AS TEXT), '-')"))
            .collect();
        let sql = format!(
            "SELECT '{table}: ' || {} FROM {table}",
            cells.join(" || '|' || ")
        );
        let texts = db.fetch(&sql, vec![]).await.unwrap();
        rows.extend(texts.iter().map(|row| row.get_at::<String>(0).unwrap()));
    }
    rows.sort();
    rows
}

async fn run_twofold(args: &[&str]) -> std::process::Output {
    let output = tokio::process::Command::new(binary())
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "twofold {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The read models as the running service left them equal what
/// `twofold projections rebuild` makes of the events.
pub(crate) async fn assert_read_models_equal_a_rebuild(db: &Db, database_url: &str) {
    let incremental = read_model_rows(db).await;
    run_twofold(&["projections", "rebuild", "--database-url", database_url]).await;
    let rebuilt = read_model_rows(db).await;
    if rebuilt != incremental {
        let only_incremental: Vec<_> = incremental
            .iter()
            .filter(|row| !rebuilt.contains(row))
            .collect();
        let only_rebuilt: Vec<_> = rebuilt
            .iter()
            .filter(|row| !incremental.contains(row))
            .collect();
        panic!(
            "the read models differ from a rebuild: only before it {only_incremental:#?}, \
             only after it {only_rebuilt:#?}"
        );
    }
}

/// `twofold audit verify` finds the trail matching the events.
async fn assert_audit_trail_verifies(database_url: &str) {
    let output = run_twofold(&["audit", "verify", "--database-url", database_url]).await;
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
}

fn median(figures: &mut [Duration]) -> Duration {
    figures.sort();
    figures[figures.len() / 2]
}

// ---------------------------------------------------------------------------
// 1. kill -9 under load, 20 times
// ---------------------------------------------------------------------------

const KILL_ROUNDS: usize = 20;
const KILL_WORKERS: usize = 6;

/// What one worker saw until the server went away.
#[derive(Default)]
struct Driven {
    acknowledged: Vec<Acknowledged>,
    /// Answers other than the expected success (a 5xx above all).
    unexpected: Vec<String>,
    requests: usize,
}

impl Driven {
    /// The answer when it is the expected one; `None` when the server is
    /// gone (the worker stops there) or answered something else.
    fn expect(
        &mut self,
        sent: Result<Answer, reqwest::Error>,
        expected: StatusCode,
        what: &str,
    ) -> Option<Answer> {
        self.requests += 1;
        let answer = sent.ok()?;
        if answer.status == expected {
            Some(answer)
        } else {
            self.unexpected.push(format!("{what}: {answer:?}"));
            None
        }
    }

    fn acknowledge(
        &mut self,
        answer: &Answer,
        user_id: &str,
        event_type: &'static str,
        field: Option<(&'static str, String)>,
    ) {
        match Acknowledged::of(answer, user_id, event_type, field) {
            Ok(acknowledged) => self.acknowledged.push(acknowledged),
            Err(problem) => self.unexpected.push(problem),
        }
    }

    /// A new user through sign-in and enrollment: created, given an email,
    /// signed in, TOTP started and confirmed, signed in again with a
    /// recovery code.
    async fn lifecycle(
        &mut self,
        client: &reqwest::Client,
        base: &str,
        admin: &str,
        username: &str,
    ) -> Option<()> {
        let password = format!("{username}-password");
        let created = send(
            client,
            base,
            Method::POST,
            "/api/v1/users",
            Some(admin),
            Some(json!({ "username": username, "password": password })),
        )
        .await;
        let created = self.expect(created, StatusCode::CREATED, "create user")?;
        let id = created.body["id"].as_str().unwrap().to_string();
        self.acknowledge(
            &created,
            &id,
            "UserRegistered",
            Some(("username", username.to_string())),
        );

        let path = format!("/api/v1/users/{id}");
        let email = format!("{username}@example.com");
        let body = json!({ "email": email });
        let changed = send(client, base, Method::PATCH, &path, Some(admin), Some(body));
        let changed = self.expect(changed.await, StatusCode::OK, "change email")?;
        self.acknowledge(&changed, &id, "EmailChanged", Some(("email", email)));

        let signed_in = sign_in(client, base, username, &password).await;
        let signed_in = self.expect(signed_in, StatusCode::OK, "sign in")?;
        self.acknowledge(&signed_in, &id, "SessionStarted", None);
        let token = signed_in.body["session_token"].as_str().unwrap();

        let path = "/api/v1/me/two-factor/totp";
        let started = send(
            client,
            base,
            Method::POST,
            path,
            Some(token),
            Some(json!({})),
        );
        let started = self.expect(started.await, StatusCode::CREATED, "start TOTP")?;
        self.acknowledge(&started, &id, "TotpEnrollmentStarted", None);
        let secret = started.body["secret"].as_str().unwrap();

        let code = oathtool_at(secret, Utc::now()).await;
        let path = "/api/v1/me/two-factor/totp/confirm";
        let body = json!({ "code": code });
        let confirmed = send(client, base, Method::POST, path, Some(token), Some(body));
        let confirmed = self.expect(confirmed.await, StatusCode::OK, "confirm TOTP")?;
        self.acknowledge(&confirmed, &id, "TotpEnrollmentConfirmed", None);
        let recovery_code = confirmed.body["recovery_codes"][0].as_str().unwrap();

        let challenged = sign_in(client, base, username, &password).await;
        let challenged = self.expect(challenged, StatusCode::OK, "sign in with 2FA")?;
        let challenge = challenged.body["challenge_id"].as_str().unwrap();
        self.acknowledge(
            &challenged,
            &id,
            "ChallengeIssued",
            Some(("challenge_id", challenge.to_string())),
        );

        let path = format!("/api/v1/login/challenges/{challenge}/verify");
        let body =
            json!({ "method": "recovery_code", "code": recovery_code, "remember_device": false });
        let verified = send(client, base, Method::POST, &path, None, Some(body));
        let verified = self.expect(verified.await, StatusCode::OK, "verify recovery code")?;
        self.acknowledge(&verified, &id, "SessionStarted", None);
        Some(())
    }
}

/// New users' lifecycles, one after another, until the server is gone.
async fn drive_lifecycles(
    client: reqwest::Client,
    base: String,
    admin: String,
    label: String,
) -> Driven {
    let mut driven = Driven::default();
    let mut n = 0;
    while driven
        .lifecycle(&client, &base, &admin, &format!("{label}-{n}"))
        .await
        .is_some()
    {
        n += 1;
    }
    driven
}

/// Round after round: load on a real server for a random 0.3-2.5 s, SIGKILL,
/// restart. After each restart every acknowledged write so far is stored
/// once, the read models catch up (time measured from the restart) and
/// equal a rebuild.
async fn every_acknowledged_write_survives_kill_9_and_the_read_models_catch_up(backend: Backend) {
    let _one_at_a_time = MULTI_PROCESS.lock().await;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("twofold.db").display()),
        Backend::Postgres => fresh_postgres_database().await,
    };
    let mut cluster = processes_on(database_url.clone(), dir);
    let mut serving = launch_next(&mut cluster).await;
    let db = open_db(&database_url).await;
    let mut acknowledged: Vec<Acknowledged> = Vec::new();
    let (mut requests, mut ready_after, mut caught_up_after) = (0, Vec::new(), Vec::new());
    for round in 0..KILL_ROUNDS {
        let base = cluster.bases[serving].clone();
        // A fresh admin session each round: a session used again after a
        // minute has its last-seen time touched, which no event records.
        let admin = admin_session(&cluster.client, &base).await;
        let workers: Vec<_> = (0..KILL_WORKERS)
            .map(|worker| {
                tokio::spawn(drive_lifecycles(
                    cluster.client.clone(),
                    base.clone(),
                    admin.clone(),
                    format!("kill-{round:02}-{worker}"),
                ))
            })
            .collect();
        let load = Duration::from_millis(rand::thread_rng().gen_range(300..=2500));
        tokio::time::sleep(load).await;
        kill_9(&mut cluster, serving).await;
        let mut round_acknowledged = 0;
        for worker in join_all(workers).await {
            let driven = worker.unwrap();
            assert!(
                driven.unexpected.is_empty(),
                "round {round}: unexpected answers before the kill: {:#?}",
                driven.unexpected
            );
            requests += driven.requests;
            round_acknowledged += driven.acknowledged.len();
            acknowledged.extend(driven.acknowledged);
        }

        let restarted = Instant::now();
        serving = launch_next(&mut cluster).await;
        ready_after.push(restarted.elapsed());
        let caught_up = wait_until_caught_up(&db, restarted).await;
        caught_up_after.push(caught_up);
        assert_acknowledged_writes_stored_once(&db, &acknowledged).await;
        assert_read_models_equal_a_rebuild(&db, &database_url).await;
        eprintln!(
            "{backend:?} round {round}: load {load:?}, {round_acknowledged} writes acknowledged; \
             restarted and ready in {:?}, read models caught up {caught_up:?} after the restart",
            ready_after[round]
        );
    }
    let (stored, applied) = applied_of_stored(&db).await;
    let max_catch_up = caught_up_after.iter().max().copied().unwrap();
    let max_ready = ready_after.iter().max().copied().unwrap();
    eprintln!(
        "faults: {backend:?} kill -9: {KILL_ROUNDS} rounds, {requests} requests, {} writes \
         acknowledged, 0 lost (all stored once), 0 5xx; {stored} events, {applied} applied; \
         read models caught up after restart: max {max_catch_up:?}, median {:?} (ready: max \
         {max_ready:?}, median {:?}); equal a rebuild every round; test {:?}",
        acknowledged.len(),
        median(&mut caught_up_after),
        median(&mut ready_after),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 2. PostgreSQL stops for 10 s
// ---------------------------------------------------------------------------

/// The newest PostgreSQL installed (Debian keeps each under its version).
fn postgres_program(name: &str) -> PathBuf {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL is installed (/etc/postgresql)")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .max()
        .expect("a PostgreSQL version in /etc/postgresql");
    Path::new("/usr/lib/postgresql")
        .join(version)
        .join("bin")
        .join(name)
}

/// A PostgreSQL program run as the postgres user (initdb refuses root).
fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command
        .args(["-u", "postgres", "--"])
        .arg(postgres_program(program));
    command
}

fn check(mut command: Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|error| format!("{command:?}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `pg_ctl` on the private instance in `dir`.
fn pg_ctl(dir: &Path, port: u16, args: &[&str]) -> Command {
    let mut command = as_postgres("pg_ctl");
    command
        .arg("--pgdata")
        .arg(dir.join("data"))
        .arg("--log")
        .arg(dir.join("postgres.log"))
        .args(["--wait", "--timeout", "60"])
        .arg("-o")
        .arg(format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.display()
        ))
        .args(args);
    command
}

/// A PostgreSQL server of the test's own (initdb into a temporary directory,
/// trust auth, its own port and socket directory), so that it can be
/// stopped without touching the shared server on 5432. Stopped and removed
/// on drop, whatever the test did.
struct PrivatePostgres {
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    async fn start() -> PrivatePostgres {
        tokio::task::spawn_blocking(|| {
            let dir = tempfile::tempdir().unwrap();
            let mut chown = Command::new("chown");
            chown.arg("postgres:postgres").arg(dir.path());
            check(chown).unwrap();
            let mut initdb = as_postgres("initdb");
            initdb
                .args(["--auth", "trust", "--username", "postgres", "--no-sync"])
                .arg("--pgdata")
                .arg(dir.path().join("data"));
            check(initdb).expect("initdb of a private PostgreSQL");
            // The port may be taken between choosing and binding it.
            let mut failures = Vec::new();
            for _ in 0..5 {
                let port = free_port();
                match check(pg_ctl(dir.path(), port, &["start"])) {
                    Ok(()) => return PrivatePostgres { port, dir },
                    Err(failure) => failures.push(failure),
                }
            }
            panic!("the private PostgreSQL did not start: {failures:#?}");
        })
        .await
        .unwrap()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl start` or `stop` (`--mode immediate`: a crash), off
    /// the runtime's workers so that the load goes on meanwhile.
    async fn control(&self, args: &'static [&'static str]) {
        let command = pg_ctl(self.dir.path(), self.port, args);
        tokio::task::spawn_blocking(move || check(command))
            .await
            .unwrap()
            .unwrap_or_else(|failure| panic!("pg_ctl {args:?}: {failure}"));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let stop = pg_ctl(self.dir.path(), self.port, &["stop", "--mode", "immediate"]);
        drop(check(stop));
    }
}

const OUTAGE: Duration = Duration::from_secs(10);
const OUTAGE_WORKERS: usize = 8;

/// One request of a steady load: when it started (since the test's zero),
/// how long it took and how it ended.
struct Sample {
    started: Duration,
    took: Duration,
    answer: Result<Answer, String>,
}

impl Sample {
    fn ended(&self) -> Duration {
        self.started + self.took
    }

    fn success(&self) -> Option<&Answer> {
        self.answer
            .as_ref()
            .ok()
            .filter(|answer| answer.status.is_success())
    }

    fn succeeded(&self) -> bool {
        self.success().is_some()
    }
}

async fn timed(
    zero: Instant,
    request: impl std::future::Future<Output = Result<Answer, reqwest::Error>>,
) -> Sample {
    let started = zero.elapsed();
    let answer = request.await.map_err(|error| error.to_string());
    Sample {
        started,
        took: zero.elapsed() - started,
        answer,
    }
}

/// The contract's answer to an outage: 503 `unavailable` with a message and
/// `Retry-After`.
fn is_unavailable_answer(answer: &Answer) -> bool {
    answer.status == StatusCode::SERVICE_UNAVAILABLE
        && answer.error() == "unavailable"
        && answer.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
        && answer.headers.contains_key("retry-after")
}

struct SteadyUser {
    id: String,
    username: String,
    password: String,
}

/// One user's share of a steady load until `stop`: sign in (a write), read
/// `/me`, and have the admin change the user's email (a write), in turn.
async fn steady_load(
    client: reqwest::Client,
    base: String,
    admin: String,
    user: SteadyUser,
    zero: Instant,
    stop: Arc<AtomicBool>,
) -> (Vec<Sample>, Vec<Acknowledged>) {
    let (mut samples, mut acknowledged) = (Vec::new(), Vec::new());
    let mut token: Option<String> = None;
    let mut turn = 0usize;
    while !stop.load(Ordering::SeqCst) {
        turn += 1;
        let sample = match (turn % 3, &token) {
            (1, Some(token)) => {
                let me = send(&client, &base, Method::GET, "/api/v1/me", Some(token), None);
                timed(zero, me).await
            }
            (2, _) => {
                let email = format!("{}-{turn}@example.com", user.username);
                let path = format!("/api/v1/users/{}", user.id);
                let body = json!({ "email": email });
                let patch = send(
                    &client,
                    &base,
                    Method::PATCH,
                    &path,
                    Some(&admin),
                    Some(body),
                );
                let sample = timed(zero, patch).await;
                if let Some(answer) = sample.success() {
                    let field = Some(("email", email));
                    acknowledged
                        .push(Acknowledged::of(answer, &user.id, "EmailChanged", field).unwrap());
                }
                sample
            }
            _ => {
                let login = sign_in(&client, &base, &user.username, &user.password);
                let sample = timed(zero, login).await;
                if let Some(answer) = sample.success() {
                    token = answer.body["session_token"].as_str().map(str::to_string);
                    acknowledged
                        .push(Acknowledged::of(answer, &user.id, "SessionStarted", None).unwrap());
                }
                sample
            }
        };
        samples.push(sample);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (samples, acknowledged)
}

/// Asks `/readyz` every 200 ms until `stop`.
async fn readiness_probe(
    client: reqwest::Client,
    base: String,
    zero: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        samples.push(
            timed(
                zero,
                send(&client, &base, Method::GET, "/readyz", None, None),
            )
            .await,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples
}

/// Under a steady load on a real server, its own PostgreSQL crashes (immediate:
/// connections cut) for 10 s and starts again. Meanwhile every request
/// answers 503 `unavailable` with `Retry-After` and `/readyz` 503, none
/// hangs, none gets a 500; afterwards the same process serves again, every
/// acknowledged write is stored and the read models catch up and equal a
/// rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_answers_503_and_the_service_recovers_without_restart() {
    let _one_at_a_time = MULTI_PROCESS.lock().await;
    let postgres = PrivatePostgres::start().await;
    let mut cluster = processes_on(postgres.url(), tempfile::tempdir().unwrap());
    let serving = launch_next(&mut cluster).await;
    let (client, base) = (cluster.client.clone(), cluster.bases[serving].clone());
    let admin = admin_session(&client, &base).await;
    let mut users = Vec::new();
    for n in 0..OUTAGE_WORKERS {
        let (username, password) = (format!("steady-{n}"), format!("steady-{n}-password"));
        let body = json!({ "username": username, "password": password });
        let created = send(
            &client,
            &base,
            Method::POST,
            "/api/v1/users",
            Some(&admin),
            Some(body),
        );
        let created = created.await.unwrap();
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        let id = created.body["id"].as_str().unwrap().to_string();
        users.push(SteadyUser {
            id,
            username,
            password,
        });
    }

    let zero = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = users
        .into_iter()
        .map(|user| {
            let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
            tokio::spawn(steady_load(
                client,
                base,
                admin,
                user,
                zero,
                Arc::clone(&stop),
            ))
        })
        .collect();
    let probe = tokio::spawn(readiness_probe(
        client.clone(),
        base.clone(),
        zero,
        Arc::clone(&stop),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopping = zero.elapsed();
    // A crash, not a shutdown: no final checkpoint, and the projection's
    // last batches, committed without waiting for the disk, may be lost;
    // the acknowledged events may not.
    postgres.control(&["stop", "--mode", "immediate"]).await;
    let down = zero.elapsed();
    tokio::time::sleep(OUTAGE).await;
    let starting = zero.elapsed();
    postgres.control(&["start"]).await;
    let up = zero.elapsed();
    // The load goes on until a request succeeds again, then 3 s more.
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let me = send(
            &client,
            &base,
            Method::GET,
            "/api/v1/me",
            Some(&admin),
            None,
        )
        .await;
        if me.is_ok_and(|answer| answer.status == StatusCode::OK) {
            break;
        }
        assert!(zero.elapsed() - up < HANG, "no recovery within {HANG:?}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut samples, mut acknowledged) = (Vec::new(), Vec::new());
    for worker in join_all(workers).await {
        let (worker_samples, worker_acknowledged) = worker.unwrap();
        samples.extend(worker_samples);
        acknowledged.extend(worker_acknowledged);
    }
    let readiness = probe.await.unwrap();

    // Never a hang or a 500: success or the contract's 503 (`/readyz` gives
    // the error body without Retry-After).
    let wrong: Vec<String> = samples
        .iter()
        .filter(|s| {
            !s.answer
                .as_ref()
                .is_ok_and(|a| a.status.is_success() || is_unavailable_answer(a))
        })
        .chain(readiness.iter().filter(|s| {
            !s.answer.as_ref().is_ok_and(|a| {
                a.status == StatusCode::OK
                    || (a.status == StatusCode::SERVICE_UNAVAILABLE && a.error() == "unavailable")
            })
        }))
        .map(|s| format!("at {:?} after {:?}: {:?}", s.started, s.took, s.answer))
        .collect();
    assert!(wrong.is_empty(), "wrong answers: {wrong:#?}");
    // While the database was down, every request was refused.
    let during = |sample: &&Sample| sample.started >= down && sample.ended() <= starting;
    let refused: Vec<&Sample> = samples.iter().filter(during).collect();
    assert!(!refused.is_empty(), "no request fell within the outage");
    assert!(
        refused.iter().all(|sample| !sample.succeeded()),
        "a request succeeded while the database was down"
    );
    let probes_down: Vec<&Sample> = readiness.iter().filter(during).collect();
    assert!(!probes_down.is_empty());
    assert!(probes_down.iter().all(|sample| sample
        .answer
        .as_ref()
        .is_ok_and(|answer| answer.status == StatusCode::SERVICE_UNAVAILABLE)));
    // The same process serves again.
    assert!(cluster.children[serving].try_wait().unwrap().is_none());
    let first_success = samples
        .iter()
        .filter(|sample| sample.succeeded() && sample.ended() > up)
        .map(|sample| sample.ended() - up)
        .min()
        .expect("requests succeed after the database is back");
    let last_refusal = samples
        .iter()
        .filter(|sample| !sample.succeeded() && sample.ended() > up)
        .map(|sample| sample.ended() - up)
        .max();

    let db = open_db(&postgres.url()).await;
    wait_until_caught_up(&db, zero).await;
    assert_acknowledged_writes_stored_once(&db, &acknowledged).await;
    assert_read_models_equal_a_rebuild(&db, &postgres.url()).await;
    let mut latencies: Vec<Duration> = refused.iter().map(|sample| sample.took).collect();
    let slowest = latencies.iter().max().copied().unwrap();
    let unavailable = samples.iter().filter(|sample| !sample.succeeded()).count();
    eprintln!(
        "faults: PostgreSQL stopped {:?} (stop took {:?}, start took {:?}): {} requests, \
         {unavailable} answered 503 unavailable with Retry-After, the {} within the outage all \
         of them (latency median {:?}, max {slowest:?}), /readyz 503 {} times, 0 500s, 0 hangs; \
         first success {first_success:?} and last 503 {last_refusal:?} after the database was \
         back, without restart; {} writes acknowledged, 0 lost, read models caught up",
        starting - down,
        down - stopping,
        up - starting,
        samples.len(),
        refused.len(),
        median(&mut latencies),
        probes_down.len(),
        acknowledged.len(),
    );
}

// ---------------------------------------------------------------------------
// 3. SQLite on a full or read-only disk
// ---------------------------------------------------------------------------

fn run_as_root(program: &str, args: &[&str], path: &Path) {
    let mut command = Command::new(program);
    command.args(args).arg(path);
    check(command).unwrap_or_else(|failure| panic!("{failure} (the fault tests need root)"));
}

/// A small filesystem of the test's own under a temporary mount point,
/// unmounted on drop (lazily: a killed server may hold its files a moment
/// longer).
struct ScratchDisk {
    mount_point: tempfile::TempDir,
    /// The ext4 image behind a loop device; none for tmpfs.
    _image: Option<tempfile::TempDir>,
}

impl ScratchDisk {
    fn tmpfs(size: &str) -> ScratchDisk {
        let mount_point = tempfile::tempdir().unwrap();
        let options = format!("size={size}");
        run_as_root(
            "mount",
            &["-t", "tmpfs", "-o", &options, "tmpfs"],
            mount_point.path(),
        );
        ScratchDisk {
            mount_point,
            _image: None,
        }
    }

    /// ext4, because there an immutable file refuses writes through the
    /// descriptors already open (tmpfs checks only at open, and refuses
    /// to remount read-only while a file is open for writing).
    fn ext4(size: &str) -> ScratchDisk {
        let image_dir = tempfile::tempdir().unwrap();
        let image = image_dir.path().join("disk.img");
        run_as_root("truncate", &["--size", size], &image);
        run_as_root("mkfs.ext4", &["-q", "-F"], &image);
        let mount_point = tempfile::tempdir().unwrap();
        let mut mount = Command::new("mount");
        mount
            .args(["-o", "loop"])
            .arg(&image)
            .arg(mount_point.path());
        check(mount).unwrap_or_else(|failure| panic!("{failure} (the fault tests need root)"));
        ScratchDisk {
            mount_point,
            _image: Some(image_dir),
        }
    }

    fn path(&self) -> &Path {
        self.mount_point.path()
    }

    fn database_url(&self) -> String {
        format!("sqlite://{}", self.path().join("twofold.db").display())
    }
}

impl Drop for ScratchDisk {
    fn drop(&mut self) {
        let mut umount = Command::new("umount");
        umount.arg("--lazy").arg(self.path());
        if let Err(failure) = check(umount) {
            eprintln!("{failure}");
        }
    }
}

/// Writes a file until the disk has no room left.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = [0u8; 4096];
    loop {
        match filler.write(&chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::StorageFull => return,
            Err(error) => panic!("filling the disk: {error}"),
        }
    }
}

fn set_immutable(dir: &Path, immutable: bool) {
    let flag = if immutable { "+i" } else { "-i" };
    for file in ["twofold.db", "twofold.db-wal"] {
        run_as_root("chattr", &[flag], &dir.join(file));
    }
}

/// The admin changes one user's email, again and again: a cheap write.
struct EmailChanges {
    client: reqwest::Client,
    base: String,
    admin: String,
    user_id: String,
    made: usize,
}

impl EmailChanges {
    /// The answer, and the write when it was acknowledged.
    async fn next(&mut self) -> (Answer, Option<Acknowledged>) {
        self.made += 1;
        let email = format!("kept-{}@example.com", self.made);
        let path = format!("/api/v1/users/{}", self.user_id);
        let body = json!({ "email": email });
        let answer = send(
            &self.client,
            &self.base,
            Method::PATCH,
            &path,
            Some(&self.admin),
            Some(body),
        )
        .await
        .expect("the server answers");
        let written = answer.status.is_success().then(|| {
            Acknowledged::of(
                &answer,
                &self.user_id,
                "EmailChanged",
                Some(("email", email)),
            )
            .unwrap()
        });
        (answer, written)
    }
}

/// Writes a storage fault may refuse before the test gives up on it.
const WRITES_UNTIL_REFUSED: usize = 3_000;

/// A real server on `disk` through a storage fault: `inject` while it runs,
/// then writes until one is refused (each acknowledged one recorded); every
/// refusal is the contract's 503, reads go on; `lift`, and writes succeed
/// again without restart. Afterwards every acknowledged write is stored once,
/// the read models catch up and equal a rebuild, `twofold audit verify`
/// passes and SQLite finds the file intact.
async fn writes_are_refused_clearly_and_nothing_is_lost(
    fault: &str,
    disk: &ScratchDisk,
    inject: impl FnOnce(&Path),
    lift: impl FnOnce(&Path),
) {
    let database_url = disk.database_url();
    let mut cluster = processes_on(database_url.clone(), tempfile::tempdir().unwrap());
    let serving = launch_next(&mut cluster).await;
    let (client, base) = (cluster.client.clone(), cluster.bases[serving].clone());
    let admin = admin_session(&client, &base).await;
    let (username, password) = ("kept", "kept-password");
    let body = json!({ "username": username, "password": password });
    let created = send(
        &client,
        &base,
        Method::POST,
        "/api/v1/users",
        Some(&admin),
        Some(body),
    );
    let created = created.await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let id = created.body["id"].as_str().unwrap().to_string();
    let user_path = format!("/api/v1/users/{id}");
    let mut acknowledged = vec![Acknowledged::of(
        &created,
        &id,
        "UserRegistered",
        Some(("username", username.to_string())),
    )
    .unwrap()];
    let mut emails = EmailChanges {
        client: client.clone(),
        base: base.clone(),
        admin: admin.clone(),
        user_id: id.clone(),
        made: 0,
    };
    for _ in 0..10 {
        let (answer, written) = emails.next().await;
        acknowledged.push(written.unwrap_or_else(|| panic!("{answer:?}")));
    }

    inject(disk.path());
    let faulted = Instant::now();
    let mut accepted_after_fault = 0;
    let first_refusal = loop {
        let (answer, written) = emails.next().await;
        match written {
            Some(written) => {
                acknowledged.push(written);
                accepted_after_fault += 1;
                assert!(
                    accepted_after_fault < WRITES_UNTIL_REFUSED,
                    "{fault}: {WRITES_UNTIL_REFUSED} writes accepted, none refused"
                );
            }
            None => break answer,
        }
    };
    assert!(
        is_unavailable_answer(&first_refusal),
        "{fault}: {first_refusal:?}"
    );
    // It stays refused, a sign-in too (it records a session); reads go on.
    for _ in 0..5 {
        let (answer, written) = emails.next().await;
        assert!(
            written.is_none() && is_unavailable_answer(&answer),
            "{fault}: {answer:?}"
        );
    }
    let sign_in_refused = sign_in(&client, &base, username, password).await.unwrap();
    assert!(
        is_unavailable_answer(&sign_in_refused),
        "{fault}: {sign_in_refused:?}"
    );
    for path in ["/api/v1/me", user_path.as_str()] {
        let read = send(&client, &base, Method::GET, path, Some(&admin), None);
        let read = read.await.unwrap();
        assert_eq!(read.status, StatusCode::OK, "{fault}: GET {path}: {read:?}");
    }
    let refused_after = faulted.elapsed();

    lift(disk.path());
    let lifted = Instant::now();
    loop {
        let (answer, written) = emails.next().await;
        if let Some(written) = written {
            acknowledged.push(written);
            break;
        }
        assert!(is_unavailable_answer(&answer), "{fault}: {answer:?}");
        assert!(lifted.elapsed() < HANG, "{fault}: writes still refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered_after = lifted.elapsed();
    for _ in 0..20 {
        let (answer, written) = emails.next().await;
        acknowledged.push(written.unwrap_or_else(|| panic!("{fault}, lifted: {answer:?}")));
    }
    let session = sign_in(&client, &base, username, password).await.unwrap();
    assert_eq!(session.status, StatusCode::OK, "{fault}: {session:?}");

    let db = open_db(&database_url).await;
    let caught_up = wait_until_caught_up(&db, lifted).await;
    assert_acknowledged_writes_stored_once(&db, &acknowledged).await;
    assert_read_models_equal_a_rebuild(&db, &database_url).await;
    assert_audit_trail_verifies(&database_url).await;
    let integrity: Vec<String> = db
        .fetch("PRAGMA integrity_check", vec![])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get_at(0).unwrap())
        .collect();
    assert_eq!(integrity, ["ok"], "{fault}: PRAGMA integrity_check");
    eprintln!(
        "faults: SQLite {fault}: {accepted_after_fault} writes still accepted after the fault, \
         then refused with 503 unavailable + Retry-After (6 writes and a sign-in, {refused_after:?}), \
         reads 200; writes accepted again {recovered_after:?} after the fault was lifted, without \
         restart; read models caught up {caught_up:?} after; {} writes acknowledged, 0 lost; \
         audit verify ok, integrity_check ok, read models equal a rebuild",
        acknowledged.len()
    );
}

/// The disk fills up under a running server (tmpfs of 16 MiB, filled by
/// another file) and is freed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_503_and_loses_nothing() {
    let disk = ScratchDisk::tmpfs("16m");
    writes_are_refused_clearly_and_nothing_is_lost("disk full", &disk, fill, |dir| {
        std::fs::remove_file(dir.join("filler")).unwrap()
    })
    .await;
}

/// The database and its write-ahead log become immutable under a running
/// server (`chattr +i` on ext4), and writable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_file_refuses_writes_with_503_and_loses_nothing() {
    let disk = ScratchDisk::ext4("64M");
    writes_are_refused_clearly_and_nothing_is_lost(
        "read-only file",
        &disk,
        |dir| set_immutable(dir, true),
        |dir| set_immutable(dir, false),
    )
    .await;
}
