//! Signed audit checkpoints: signed by the command line and every
//! interval by the service, listed and published, and checked by `twofold
//! audit verify --public-key` against the history recomputed from the
//! events, so a history cut, rewritten or reordered after a checkpoint
//! (even one made to agree with itself) is reported; and checked offline,
//! from an export, by an implementation of their own
//! (`scripts/verify-audit-export`, Python's `cryptography`).

use std::path::{Path, PathBuf};
use std::process::Output;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{binary, default_settings, spawn_app, spawn_app_configured, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    a_checkpoint_signed_by_the_command_line_verifies_with_the_published_key,
    cutting_the_newest_events_and_moving_the_checkpoint_back_fails_verify_with_the_public_key,
    a_cut_that_also_deletes_the_checkpoints_is_caught_by_a_copy_kept_elsewhere,
    an_edited_history_rebuilt_to_agree_with_itself_fails_its_checkpoint,
    a_reordered_history_rebuilt_to_agree_with_itself_fails_its_checkpoint,
    a_cut_history_grown_back_past_a_checkpoint_fails_it,
    a_forged_or_foreign_checkpoint_is_reported,
    the_export_and_the_checkpoints_verify_offline_with_an_independent_implementation,
    the_service_signs_a_checkpoint_each_interval_once_the_trail_moved,
    a_rebuild_keeps_the_checkpoints_and_they_still_verify,
    without_a_signing_key_the_public_key_is_not_found,
);

fn twofold(args: &[&str]) -> Output {
    std::process::Command::new(binary())
        .args(args)
        .env_remove("TWOFOLD_AUDIT_SIGNING_KEY_FILE")
        .output()
        .unwrap()
}

fn signing_key(app: &TestApp) -> PathBuf {
    app.dir.path().join("audit-signing.key")
}

/// `twofold audit checkpoint`: the checkpoint it printed.
fn sign(app: &TestApp) -> Value {
    let key = signing_key(app);
    let output = twofold(&[
        "audit",
        "checkpoint",
        "--database-url",
        &app.database_url,
        "--audit-signing-key-file",
        key.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("a checkpoint: {output:?}"))
}

/// The published key, saved as an auditor saves it.
async fn public_key_file(app: &TestApp) -> PathBuf {
    let answer = app
        .request(reqwest::Method::GET, "/api/v1/audit/public-key", None, None)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let file = app.dir.path().join("audit-public-key.txt");
    std::fs::write(
        &file,
        format!("{}\n", answer.body["public_key"].as_str().unwrap()),
    )
    .unwrap();
    file
}

/// `twofold audit verify` with these keys: (exit success, report, error line).
fn verify(app: &TestApp, keys: &[&Path]) -> (bool, Value, String) {
    let mut args = vec![
        "audit".to_string(),
        "verify".into(),
        "--database-url".into(),
        app.database_url.clone(),
    ];
    for key in keys {
        args.push("--public-key".into());
        args.push(key.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = twofold(&args);
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("a JSON report: {output:?}"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), report, stderr)
}

/// Verify passes without the key (the trail agrees with the events) and
/// fails with it, naming the checkpoint.
async fn assert_only_the_checkpoint_sees_it(app: &TestApp, checkpoint: &Value, problem: &str) {
    let (plain, report, _) = verify(app, &[]);
    assert!(plain, "the trail agrees with itself: {report}");
    let key = public_key_file(app).await;
    let (success, report, stderr) = verify(app, &[&key]);
    assert!(!success, "{report}");
    assert_eq!(report["ok"], false, "{report}");
    let mismatch = &report["first_mismatch"];
    assert_eq!(mismatch["problem"], problem, "{report}");
    assert_eq!(mismatch["position"], checkpoint["position"], "{report}");
    assert_eq!(mismatch["signed_at"], checkpoint["signed_at"], "{report}");
    let signed_at = checkpoint["signed_at"].as_str().unwrap();
    assert!(
        stderr.contains(problem) && stderr.contains(signed_at),
        "one line names the checkpoint: {stderr}"
    );
}

/// Users and their events; returns the newest position.
async fn some_history(app: &TestApp, names: &[&str]) -> i64 {
    for name in names {
        let role = if *name == "aud" { "auditor" } else { "user" };
        app.create_user(name, &format!("{name}-password"), None, role)
            .await;
    }
    app.scalar("SELECT max(position) FROM audit_log").await
}

async fn checkpoints(app: &TestApp, token: &str) -> Vec<Value> {
    let answer = app.get("/api/v1/audit/checkpoints", token).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.body["checkpoints"].as_array().unwrap().clone()
}

async fn a_checkpoint_signed_by_the_command_line_verifies_with_the_published_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    let newest = some_history(&app, &["ann", "aud"]).await;

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(signing_key(&app))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the key the start created is the owner's alone"
    );
    let checkpoint = sign(&app);
    assert_eq!(checkpoint["position"], newest, "{checkpoint}");
    let head: Vec<String> = app
        .texts(&format!(
            "SELECT head_hash FROM audit_log WHERE position = {newest}"
        ))
        .await;
    assert_eq!(checkpoint["head"], head[0].as_str());
    let signed_at = checkpoint["signed_at"].as_str().unwrap();
    assert_eq!(
        signed_at.len(),
        "2026-12-03T19:35:00.123456Z".len(),
        "{signed_at}"
    );
    assert!(signed_at.ends_with('Z'), "{signed_at}");
    assert_eq!(
        twofold(&[
            "audit",
            "checkpoint",
            "--database-url",
            &app.database_url,
            "--audit-signing-key-file",
            signing_key(&app).to_str().unwrap(),
        ])
        .stdout,
        b"nothing to sign: the audit trail is empty or its head is signed already\n",
        "the head did not move"
    );

    // Readers of the trail list them; anyone may fetch the key.
    let auditor = app.token("aud", "aud-password").await;
    let user = app.token("ann", "ann-password").await;
    for token in [&root, &auditor] {
        assert_eq!(checkpoints(&app, token).await, vec![checkpoint.clone()]);
    }
    let refused = app.get("/api/v1/audit/checkpoints", &user).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let anonymous = app
        .request(
            reqwest::Method::GET,
            "/api/v1/audit/checkpoints",
            None,
            None,
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{anonymous:?}");
    let published = app
        .request(reqwest::Method::GET, "/api/v1/audit/public-key", None, None)
        .await;
    assert_eq!(
        published.body["key_id"], checkpoint["key_id"],
        "{published:?}"
    );
    assert_eq!(published.body["public_key"].as_str().unwrap().len(), 43);

    let key = public_key_file(&app).await;
    let (success, report, stderr) = verify(&app, &[&key]);
    assert!(success, "{report} {stderr}");
    // The whole answer saved as it came (`curl > FILE`) serves as well.
    let answer_file = app.dir.path().join("public-key.json");
    std::fs::write(&answer_file, published.body.to_string()).unwrap();
    let (success, report, stderr) = verify(&app, &[&answer_file]);
    assert!(success, "{report} {stderr}");
    app.stop().await;
}

/// The attack issue 18 names: with database access, delete the newest
/// events and their audit rows and move the projection's checkpoint back.
/// The database agrees with itself; the signed checkpoint does not.
async fn cutting_the_newest_events_and_moving_the_checkpoint_back_fails_verify_with_the_public_key(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let kept = some_history(&app, &["ann"]).await;
    some_history(&app, &["bob", "eve"]).await;
    let checkpoint = sign(&app);
    let move_back = match backend {
        Backend::Sqlite => {
            "UPDATE projection_checkpoints
                               SET transaction_id = (SELECT max(position) FROM events),
                                   position = (SELECT max(position) FROM events)"
        }
        Backend::Postgres => {
            "UPDATE projection_checkpoints
                                 SET (transaction_id, position) =
                                     (SELECT transaction_id, position FROM events
                                       ORDER BY transaction_id DESC, position DESC LIMIT 1)"
        }
    };
    app.tamper(&format!(
        "DELETE FROM events WHERE position > {kept};
             DELETE FROM audit_log WHERE position > {kept};
             {move_back};"
    ))
    .await;
    assert_only_the_checkpoint_sees_it(&app, &checkpoint, "checkpoint_not_reached").await;
    app.stop().await;
}

/// The same cut, with the newest checkpoints deleted too: the database's
/// own copy then shows only checkpoints the cut history still reaches; the
/// list an auditor kept does not.
async fn a_cut_that_also_deletes_the_checkpoints_is_caught_by_a_copy_kept_elsewhere(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    let kept = some_history(&app, &["ann"]).await;
    sign(&app);
    some_history(&app, &["bob"]).await;
    let cut_away = sign(&app);
    let copy = app.get("/api/v1/audit/checkpoints", &root).await;
    let copy_file = app.dir.path().join("kept-checkpoints.json");
    std::fs::write(&copy_file, copy.body.to_string()).unwrap();
    let move_back = match backend {
        Backend::Sqlite => {
            format!("UPDATE projection_checkpoints SET transaction_id = {kept}, position = {kept}")
        }
        Backend::Postgres => format!(
            "UPDATE projection_checkpoints SET (transaction_id, position) =
                 (SELECT transaction_id, position FROM events WHERE position = {kept})"
        ),
    };
    app.tamper(&format!(
        "DELETE FROM events WHERE position > {kept};
             DELETE FROM audit_log WHERE position > {kept};
             DELETE FROM audit_checkpoints WHERE position > {kept};
             {move_back};"
    ))
    .await;
    let key = public_key_file(&app).await;
    let (success, report, _) = verify(&app, &[&key]);
    assert!(
        success,
        "what the database holds agrees with itself: {report}"
    );

    let output = twofold(&[
        "audit",
        "verify",
        "--database-url",
        &app.database_url,
        "--public-key",
        key.to_str().unwrap(),
        "--checkpoints",
        copy_file.to_str().unwrap(),
    ]);
    assert!(!output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["first_mismatch"]["problem"], "checkpoint_not_reached",
        "{report}"
    );
    assert_eq!(
        report["first_mismatch"]["position"], cut_away["position"],
        "{report}"
    );
    app.stop().await;
}

/// `twofold projections rebuild`: recomputes the trail from the events as
/// they are, so the database agrees with itself again.
fn rebuild(app: &TestApp) {
    let output = twofold(&[
        "projections",
        "rebuild",
        "--database-url",
        &app.database_url,
    ]);
    assert!(output.status.success(), "{output:?}");
}

async fn an_edited_history_rebuilt_to_agree_with_itself_fails_its_checkpoint(backend: Backend) {
    let app = spawn_app(backend).await;
    some_history(&app, &["ann", "bob"]).await;
    let checkpoint = sign(&app);
    let edit = match backend {
        Backend::Sqlite => {
            "UPDATE events SET payload = replace(payload, '\"user\"', '\"super_admin\"')
              WHERE event_type = 'UserRegistered'"
        }
        Backend::Postgres => {
            "UPDATE events SET payload = replace(payload::text, '\"user\"', '\"super_admin\"')::jsonb
              WHERE event_type = 'UserRegistered'"
        }
    };
    app.tamper(edit).await;
    rebuild(&app);
    assert_only_the_checkpoint_sees_it(&app, &checkpoint, "checkpoint_head_differs").await;
    app.stop().await;
}

async fn a_reordered_history_rebuilt_to_agree_with_itself_fails_its_checkpoint(backend: Backend) {
    let app = spawn_app(backend).await;
    let ann_registered = some_history(&app, &["ann"]).await;
    let bob_registered = some_history(&app, &["bob"]).await;
    let checkpoint = sign(&app);
    // Two users' registrations swap places in the feed (each user's own
    // order stays): SQLite orders by position, PostgreSQL by transaction
    // and then position (and numbers positions itself).
    let swap = match backend {
        Backend::Sqlite => format!(
            "UPDATE events SET position = -1 WHERE position = {ann_registered};
             UPDATE events SET position = {ann_registered} WHERE position = {bob_registered};
             UPDATE events SET position = {bob_registered} WHERE position = -1;"
        ),
        Backend::Postgres => format!(
            "UPDATE events AS e SET transaction_id = other.transaction_id
               FROM events AS other
              WHERE (e.position, other.position) IN
                    (({ann_registered}, {bob_registered}), ({bob_registered}, {ann_registered}))"
        ),
    };
    app.tamper(&swap).await;
    rebuild(&app);
    assert_only_the_checkpoint_sees_it(&app, &checkpoint, "checkpoint_head_differs").await;
    app.stop().await;
}

/// Cut after the checkpoint, then new events: the history reaches the
/// checkpoint's position again, through other events.
async fn a_cut_history_grown_back_past_a_checkpoint_fails_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let kept = some_history(&app, &["ann"]).await;
    let newest = some_history(&app, &["bob"]).await;
    let checkpoint = sign(&app);
    let move_back = match backend {
        Backend::Sqlite => {
            format!("UPDATE projection_checkpoints SET transaction_id = {kept}, position = {kept}")
        }
        Backend::Postgres => format!(
            "UPDATE projection_checkpoints SET (transaction_id, position) =
                 (SELECT transaction_id, position FROM events WHERE position = {kept});
             SELECT setval(pg_get_serial_sequence('events', 'position'), {kept})"
        ),
    };
    app.tamper(&format!(
        "DELETE FROM events WHERE position > {kept};
             DELETE FROM audit_log WHERE position > {kept};
             {move_back};"
    ))
    .await;
    // The service started again on the cut store writes past the position.
    let database_url = app.database_url.clone();
    let old = app.stop_keeping_files().await;
    let app = spawn_app_configured(backend, default_settings(), |config| {
        config.database_url = database_url;
        config.master_key_file = old.path().join("master.key");
        config.audit_signing_key_file = Some(old.path().join("audit-signing.key"));
    })
    .await;
    let grown = some_history(&app, &["carol", "dave"]).await;
    assert!(grown >= newest, "{grown} {newest}");
    assert_only_the_checkpoint_sees_it(&app, &checkpoint, "checkpoint_head_differs").await;
    app.stop().await;
}

async fn a_forged_or_foreign_checkpoint_is_reported(backend: Backend) {
    let app = spawn_app(backend).await;
    some_history(&app, &["ann"]).await;
    let honest = sign(&app);
    let newest = some_history(&app, &["bob"]).await;
    let key = public_key_file(&app).await;

    // Someone with database access claims another head at a new position,
    // reusing a real signature.
    app.tamper(&format!(
        "INSERT INTO audit_checkpoints (position, head, signed_at, key_id, signature)
             VALUES ({newest}, '{}', '{}', '{}', '{}')",
        "00".repeat(32),
        honest["signed_at"].as_str().unwrap(),
        honest["key_id"].as_str().unwrap(),
        honest["signature"].as_str().unwrap(),
    ))
    .await;
    let forged = serde_json::json!({ "position": newest, "signed_at": honest["signed_at"] });
    let (_, report, _) = verify(&app, &[&key]);
    assert_eq!(
        report["first_mismatch"]["problem"], "checkpoint_not_signed",
        "{report}"
    );
    assert_eq!(report["first_mismatch"]["position"], forged["position"]);

    // Signed, but by a key the auditor does not hold.
    app.tamper("DELETE FROM audit_checkpoints WHERE head LIKE '0000%'")
        .await;
    let other = app.dir.path().join("other.key");
    let foreign = twofold(&[
        "audit",
        "checkpoint",
        "--database-url",
        &app.database_url,
        "--audit-signing-key-file",
        other.to_str().unwrap(),
    ]);
    assert!(foreign.status.success(), "{foreign:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&other).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "a new key file is the owner's alone");
    let (success, report, stderr) = verify(&app, &[&key]);
    assert!(!success);
    assert_eq!(
        report["first_mismatch"]["problem"], "checkpoint_key_unknown",
        "{report}"
    );
    assert_eq!(report["first_mismatch"]["position"], newest, "{report}");
    assert!(stderr.contains("checkpoint_key_unknown"), "{stderr}");

    // A key that is no key is refused with a line naming its file.
    let junk = app.dir.path().join("junk-public-key.txt");
    std::fs::write(&junk, "not a key").unwrap();
    let output = twofold(&[
        "audit",
        "verify",
        "--database-url",
        &app.database_url,
        "--public-key",
        junk.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(junk.to_str().unwrap()), "{stderr}");
    app.stop().await;
}

/// What an auditor holds: the export with its links, the checkpoints as
/// listed, the public key as published. The script is theirs.
async fn the_export_and_the_checkpoints_verify_offline_with_an_independent_implementation(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    some_history(&app, &["ann"]).await;
    sign(&app);
    some_history(&app, &["bob"]).await;
    sign(&app);
    let dir = app.dir.path();
    let export = twofold(&[
        "audit",
        "export",
        "--format",
        "jsonl",
        "--with-chain",
        "--database-url",
        &app.database_url,
    ]);
    assert!(export.status.success(), "{export:?}");
    let export_file = dir.join("audit.jsonl");
    std::fs::write(&export_file, &export.stdout).unwrap();
    let listed = app.get("/api/v1/audit/checkpoints", &root).await;
    let checkpoints_file = dir.join("checkpoints.json");
    std::fs::write(&checkpoints_file, listed.body.to_string()).unwrap();
    let key = public_key_file(&app).await;

    let offline = |export: &Path, checkpoints: &Path| {
        let output = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/verify-audit-export"
            ))
            .arg("--export")
            .arg(export)
            .arg("--checkpoints")
            .arg(checkpoints)
            .arg("--public-key")
            .arg(&key)
            .output()
            .expect("python3 with `cryptography` (scripts/test installs it)");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (success, said) = offline(&export_file, &checkpoints_file);
    assert!(success, "{said}");
    assert!(said.starts_with("ok: "), "{said}");
    assert!(said.contains("2 signed checkpoints"), "{said}");

    // The export cut after the last checkpoint's row.
    let text = String::from_utf8(export.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = dir.join("cut.jsonl");
    std::fs::write(&cut, lines[..lines.len() - 1].join("\n")).unwrap();
    let (success, said) = offline(&cut, &checkpoints_file);
    assert!(!success && said.contains("does not reach"), "{said}");

    // A row taken out of the middle, the later links recomputed by hand
    // cannot be: its neighbour's head_hash no longer follows.
    let removed = dir.join("removed.jsonl");
    let mut without = lines.clone();
    without.remove(1);
    std::fs::write(&removed, without.join("\n")).unwrap();
    let (success, said) = offline(&removed, &checkpoints_file);
    assert!(
        !success && said.contains("head_hash is not the chain"),
        "{said}"
    );

    // A checkpoint whose signature was altered.
    let mut altered = listed.body.clone();
    let signature = altered["checkpoints"][0]["signature"].as_str().unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    altered["checkpoints"][0]["signature"] = format!("{flipped}{}", &signature[1..]).into();
    let altered_file = dir.join("altered.json");
    std::fs::write(&altered_file, altered.to_string()).unwrap();
    let (success, said) = offline(&export_file, &altered_file);
    assert!(
        !success && said.contains("signature does not verify"),
        "{said}"
    );
    app.stop().await;
}

/// Time is driven through a short interval; the test waits for what the
/// service writes, not for a duration.
async fn the_service_signs_a_checkpoint_each_interval_once_the_trail_moved(backend: Backend) {
    let app = spawn_app_configured(backend, default_settings(), |config| {
        config.audit_checkpoint_every = Some(std::time::Duration::from_millis(50));
    })
    .await;
    let root = app.admin_token().await;
    let signed_at_position = |position: i64| {
        let app = &app;
        let root = &root;
        async move {
            for _ in 0..400 {
                let listed = checkpoints(app, root).await;
                if listed
                    .iter()
                    .any(|checkpoint| checkpoint["position"] == position)
                {
                    return listed;
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            panic!("no checkpoint at position {position}");
        }
    };
    let first = some_history(&app, &["ann"]).await;
    signed_at_position(first).await;
    let second = some_history(&app, &["bob"]).await;
    let listed = signed_at_position(second).await;
    let mut positions: Vec<i64> = listed
        .iter()
        .map(|checkpoint| checkpoint["position"].as_i64().unwrap())
        .collect();
    let signed = positions.len();
    positions.dedup();
    assert_eq!(
        positions.len(),
        signed,
        "one checkpoint per head: {listed:?}"
    );
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "{listed:?}"
    );
    let key = public_key_file(&app).await;
    let (success, report, stderr) = verify(&app, &[&key]);
    assert!(success, "{report} {stderr}");
    app.stop().await;
}

async fn a_rebuild_keeps_the_checkpoints_and_they_still_verify(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    some_history(&app, &["ann", "bob"]).await;
    let checkpoint = sign(&app);
    rebuild(&app);
    assert_eq!(checkpoints(&app, &root).await, vec![checkpoint]);
    let key = public_key_file(&app).await;
    let (success, report, stderr) = verify(&app, &[&key]);
    assert!(success, "{report} {stderr}");
    app.stop().await;
}

async fn without_a_signing_key_the_public_key_is_not_found(backend: Backend) {
    let app = spawn_app_configured(backend, default_settings(), |config| {
        config.audit_signing_key_file = None;
        config.audit_checkpoint_every = Some(std::time::Duration::from_millis(50));
    })
    .await;
    let root = app.admin_token().await;
    let answer = app
        .request(reqwest::Method::GET, "/api/v1/audit/public-key", None, None)
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{answer:?}");
    assert_eq!(answer.error(), "not_found");
    assert!(checkpoints(&app, &root).await.is_empty());
    assert!(!app.dir.path().join("audit-signing.key").exists());
    app.stop().await;
}
