//! Passkeys end to end, on both stores, against a software authenticator
//! written here: real keys (ES256 with P-256, EdDSA with Ed25519, by ring),
//! real CBOR (serde_cbor_2), attestation "none", and the WebAuthn Level 3
//! JSON a browser sends. Each bad input the contract names is made by
//! changing one thing the authenticator or the browser would have done.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::Duration;
use reqwest::StatusCode;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_cbor_2::Value as Cbor;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp, PUBLIC_URL};
use crate::on_both_backends;

on_both_backends!(
    a_passkey_is_registered_listed_renamed_and_removed,
    registration_refuses_what_a_browser_or_authenticator_would_not_send,
    a_registration_works_once_and_expires_after_five_minutes,
    a_credential_is_registered_to_one_user_only,
    an_administrator_acting_as_the_user_can_not_register_a_passkey,
    the_last_factor_of_a_user_who_must_have_two_factor_stays,
    a_passkey_passes_the_second_step_and_wrong_ones_count_toward_the_lock,
    a_counter_that_goes_backwards_is_refused_and_recorded,
    a_passkey_signs_in_without_a_password,
    a_sign_in_without_a_password_refuses_like_a_wrong_password,
    an_administrators_reset_removes_the_passkeys,
    passkey_users_count_as_two_factor_enabled_in_the_report_and_the_search,
    the_audit_trail_shows_passkeys_but_never_a_challenge,
    a_passkey_only_user_turns_two_factor_off_with_a_fresh_passkey_session,
);

const PASSWORD: &str = "correct horse battery";

// ------------------------------------------------------ the authenticator

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    Es256,
    Ed25519,
}

enum Key {
    Es256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One credential of a software authenticator.
struct Authenticator {
    key: Key,
    credential_id: Vec<u8>,
    /// The signature counter (0: the authenticator keeps none).
    counter: u32,
    /// The user handle it was created for.
    user_handle: Vec<u8>,
}

/// What a test changes in an answer, one thing at a time.
#[derive(Clone, Default)]
struct Tamper {
    origin: Option<String>,
    rp_id: Option<String>,
    challenge: Option<Vec<u8>>,
    client_type: Option<String>,
    no_user_presence: bool,
    no_user_verification: bool,
    /// Signed by another key than the credential's.
    other_key: bool,
    no_user_handle: bool,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

fn rp_id() -> String {
    url::Url::parse(PUBLIC_URL)
        .unwrap()
        .host_str()
        .unwrap()
        .to_string()
}

fn cbor(value: &Cbor) -> Vec<u8> {
    serde_cbor_2::to_vec(value).unwrap()
}

fn new_key(algorithm: Algorithm) -> Key {
    let rng = SystemRandom::new();
    match algorithm {
        Algorithm::Es256 => {
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            Key::Es256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap(),
            )
        }
        Algorithm::Ed25519 => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            Key::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
        }
    }
}

impl Key {
    /// The public key as a COSE_Key.
    fn cose(&self) -> Cbor {
        let mut map = BTreeMap::new();
        match self {
            Key::Es256(pair) => {
                let point = pair.public_key().as_ref();
                map.insert(Cbor::Integer(1), Cbor::Integer(2)); // kty: EC2
                map.insert(Cbor::Integer(3), Cbor::Integer(-7)); // alg: ES256
                map.insert(Cbor::Integer(-1), Cbor::Integer(1)); // crv: P-256
                map.insert(Cbor::Integer(-2), Cbor::Bytes(point[1..33].to_vec()));
                map.insert(Cbor::Integer(-3), Cbor::Bytes(point[33..65].to_vec()));
            }
            Key::Ed25519(pair) => {
                map.insert(Cbor::Integer(1), Cbor::Integer(1)); // kty: OKP
                map.insert(Cbor::Integer(3), Cbor::Integer(-8)); // alg: EdDSA
                map.insert(Cbor::Integer(-1), Cbor::Integer(6)); // crv: Ed25519
                map.insert(
                    Cbor::Integer(-2),
                    Cbor::Bytes(pair.public_key().as_ref().to_vec()),
                );
            }
        }
        Cbor::Map(map)
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Key::Es256(pair) => pair
                .sign(&SystemRandom::new(), message)
                .unwrap()
                .as_ref()
                .to_vec(),
            Key::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
        }
    }
}

fn client_data(kind: &str, challenge: &[u8], tamper: &Tamper) -> Vec<u8> {
    json!({
        "type": tamper.client_type.clone().unwrap_or_else(|| kind.to_string()),
        "challenge": b64(tamper.challenge.as_deref().unwrap_or(challenge)),
        "origin": tamper.origin.clone().unwrap_or_else(|| PUBLIC_URL.to_string()),
        "crossOrigin": false,
    })
    .to_string()
    .into_bytes()
}

fn flags(tamper: &Tamper, attested: bool) -> u8 {
    let mut flags = 0;
    if !tamper.no_user_presence {
        flags |= 0x01;
    }
    if !tamper.no_user_verification {
        flags |= 0x04;
    }
    if attested {
        flags |= 0x40;
    }
    flags
}

fn authenticator_data(tamper: &Tamper, flags: u8, counter: u32) -> Vec<u8> {
    let rp_id = tamper.rp_id.clone().unwrap_or_else(rp_id);
    let mut data = sha256(rp_id.as_bytes());
    data.push(flags);
    data.extend(counter.to_be_bytes());
    data
}

impl Authenticator {
    fn new(algorithm: Algorithm) -> Self {
        Authenticator {
            key: new_key(algorithm),
            credential_id: rand::random::<[u8; 16]>().to_vec(),
            counter: 0,
            user_handle: vec![],
        }
    }

    /// Counts its signatures from now on (`counter` is the last one given).
    fn counting_from(mut self, counter: u32) -> Self {
        self.counter = counter;
        self
    }

    /// `navigator.credentials.create()`'s answer to `options`
    /// (`RegistrationResponseJSON`), attestation "none".
    fn register(&mut self, options: &Value, tamper: &Tamper) -> Value {
        let challenge = unb64(options["challenge"].as_str().unwrap());
        self.user_handle = unb64(options["user"]["id"].as_str().unwrap());
        let client_data = client_data("webauthn.create", &challenge, tamper);
        let mut auth_data = authenticator_data(tamper, flags(tamper, true), self.counter);
        auth_data.extend([0_u8; 16]); // AAGUID
        auth_data.extend(
            u16::try_from(self.credential_id.len())
                .unwrap()
                .to_be_bytes(),
        );
        auth_data.extend(&self.credential_id);
        auth_data.extend(cbor(&self.key.cose()));
        let mut attestation = BTreeMap::new();
        attestation.insert(Cbor::Text("fmt".into()), Cbor::Text("none".into()));
        attestation.insert(Cbor::Text("attStmt".into()), Cbor::Map(BTreeMap::new()));
        attestation.insert(Cbor::Text("authData".into()), Cbor::Bytes(auth_data));
        json!({
            "id": b64(&self.credential_id),
            "rawId": b64(&self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64(&client_data),
                "attestationObject": b64(&cbor(&Cbor::Map(attestation))),
                "transports": ["internal"],
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        })
    }

    /// `navigator.credentials.get()`'s answer to `options`
    /// (`AuthenticationResponseJSON`); the counter moves on first.
    fn assert(&mut self, options: &Value, tamper: &Tamper) -> Value {
        if self.counter > 0 {
            self.counter += 1;
        }
        self.sign_at(options, tamper, self.counter)
    }

    /// An assertion carrying exactly `counter`.
    fn sign_at(&self, options: &Value, tamper: &Tamper, counter: u32) -> Value {
        let challenge = unb64(options["challenge"].as_str().unwrap());
        let client_data = client_data("webauthn.get", &challenge, tamper);
        let auth_data = authenticator_data(tamper, flags(tamper, false), counter);
        let mut signed = auth_data.clone();
        signed.extend(sha256(&client_data));
        let signature = if tamper.other_key {
            new_key(Algorithm::Es256).sign(&signed)
        } else {
            self.key.sign(&signed)
        };
        let mut response = json!({
            "clientDataJSON": b64(&client_data),
            "authenticatorData": b64(&auth_data),
            "signature": b64(&signature),
        });
        if !tamper.no_user_handle {
            response["userHandle"] = json!(b64(&self.user_handle));
        }
        json!({
            "id": b64(&self.credential_id),
            "rawId": b64(&self.credential_id),
            "type": "public-key",
            "response": response,
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        })
    }
}

// ------------------------------------------------------------ helpers

async fn user(app: &TestApp, name: &str) -> (String, String) {
    let id = app.create_user(name, PASSWORD, None, "user").await;
    let token = app.token(name, PASSWORD).await;
    (id, token)
}

/// `POST /me/passkeys`: the registration id and the creation options.
async fn begin(app: &TestApp, token: &str) -> (String, Value) {
    let answer = app
        .post("/api/v1/me/passkeys", Some(token), json!({}))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    (
        answer.body["registration_id"].as_str().unwrap().to_string(),
        answer.body["public_key"].clone(),
    )
}

async fn finish(
    app: &TestApp,
    token: &str,
    registration_id: &str,
    name: &str,
    credential: Value,
) -> crate::helpers::Answer {
    app.post(
        &format!("/api/v1/me/passkeys/{registration_id}"),
        Some(token),
        json!({ "name": name, "credential": credential }),
    )
    .await
}

/// Registers `authenticator` for the user; returns the passkey's id.
async fn register(app: &TestApp, token: &str, authenticator: &mut Authenticator) -> String {
    let (registration_id, options) = begin(app, token).await;
    let credential = authenticator.register(&options, &Tamper::default());
    let answer = finish(app, token, &registration_id, "Laptop", credential).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    answer.body["id"].as_str().unwrap().to_string()
}

/// The password step; gives the challenge id.
async fn password_step(app: &TestApp, name: &str) -> (String, Value) {
    let answer = app.login(name, PASSWORD).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body["status"], "two_factor_required", "{answer:?}");
    (
        answer.body["challenge_id"].as_str().unwrap().to_string(),
        answer.body["methods"].clone(),
    )
}

async fn challenge_options(app: &TestApp, challenge_id: &str) -> Value {
    let answer = app
        .post(
            &format!("/api/v1/login/challenges/{challenge_id}/passkey"),
            None,
            json!({}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.body["public_key"].clone()
}

async fn verify(app: &TestApp, challenge_id: &str, credential: Value) -> crate::helpers::Answer {
    app.post(
        &format!("/api/v1/login/challenges/{challenge_id}/verify"),
        None,
        json!({ "method": "passkey", "credential": credential, "remember_device": false }),
    )
    .await
}

async fn passwordless_options(app: &TestApp) -> (String, Value) {
    let answer = app.post("/api/v1/login/passkey", None, json!({})).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    (
        answer.body["challenge_id"].as_str().unwrap().to_string(),
        answer.body["public_key"].clone(),
    )
}

async fn passwordless(
    app: &TestApp,
    challenge_id: &str,
    credential: Value,
) -> crate::helpers::Answer {
    app.post(
        &format!("/api/v1/login/passkey/{challenge_id}"),
        None,
        json!({ "credential": credential }),
    )
    .await
}

/// Makes a browser's answer to request options.
type MakeAnswer<'a> = Box<dyn Fn(&Value) -> Value + 'a>;

fn event_types(history: &[(String, Value)]) -> Vec<&str> {
    history.iter().map(|(kind, _)| kind.as_str()).collect()
}

// ------------------------------------------------------------ the tests

async fn a_passkey_is_registered_listed_renamed_and_removed(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, token) = user(&app, "pia").await;

    let (registration_id, options) = begin(&app, &token).await;
    // The creation options as the contract names them.
    assert_eq!(options["rp"]["id"], rp_id());
    assert_eq!(options["rp"]["name"], "twofold");
    assert_eq!(
        unb64(options["user"]["id"].as_str().unwrap()),
        uuid::Uuid::parse_str(&id).unwrap().as_bytes().to_vec()
    );
    assert!(unb64(options["challenge"].as_str().unwrap()).len() >= 16);
    let algorithms: Vec<i64> = options["pubKeyCredParams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["alg"].as_i64().unwrap())
        .collect();
    assert!(
        algorithms.contains(&-7) && algorithms.contains(&-8),
        "{algorithms:?}"
    );
    assert_eq!(
        options["authenticatorSelection"]["residentKey"],
        "preferred"
    );
    assert_eq!(
        options["authenticatorSelection"]["userVerification"],
        "preferred"
    );
    assert_eq!(options["excludeCredentials"], json!([]));

    let mut authenticator = Authenticator::new(Algorithm::Es256);
    let credential = authenticator.register(&options, &Tamper::default());
    let registered = finish(&app, &token, &registration_id, " Laptop ", credential).await;
    assert_eq!(registered.status, StatusCode::CREATED, "{registered:?}");
    assert_eq!(registered.body["name"], "Laptop");
    assert!(registered.body["last_used_at"].is_null());
    let passkey_id = registered.body["id"].as_str().unwrap().to_string();

    let me = app.get("/api/v1/me", &token).await;
    assert_eq!(me.body["two_factor"]["status"], "enabled", "{me:?}");
    assert_eq!(me.body["two_factor"]["methods"], json!(["passkey"]));
    assert!(me.body["two_factor"]["enabled_at"].is_string());

    // The next registration excludes it.
    let (_, options) = begin(&app, &token).await;
    assert_eq!(
        options["excludeCredentials"][0]["id"],
        b64(&authenticator.credential_id)
    );

    let renamed = app
        .patch(
            &format!("/api/v1/me/passkeys/{passkey_id}"),
            &token,
            json!({ "name": "Work laptop" }),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{renamed:?}");
    let list = app.get("/api/v1/me/passkeys", &token).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["passkeys"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["passkeys"][0]["name"], "Work laptop");
    assert_eq!(list.body["passkeys"][0]["id"], passkey_id.as_str());

    let empty_name = app
        .patch(
            &format!("/api/v1/me/passkeys/{passkey_id}"),
            &token,
            json!({ "name": "  " }),
        )
        .await;
    assert_eq!(empty_name.status, StatusCode::BAD_REQUEST);
    assert_eq!(empty_name.error(), "invalid_request");

    let removed = app
        .delete(&format!("/api/v1/me/passkeys/{passkey_id}"), &token, None)
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{removed:?}");
    let gone = app
        .delete(&format!("/api/v1/me/passkeys/{passkey_id}"), &token, None)
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let list = app.get("/api/v1/me/passkeys", &token).await;
    assert_eq!(list.body["passkeys"], json!([]));
    let me = app.get("/api/v1/me", &token).await;
    assert_eq!(me.body["two_factor"]["status"], "disabled");

    let history = app.history(&id).await;
    let types = event_types(&history);
    for kind in [
        "PasskeyRegistrationStarted",
        "PasskeyRegistered",
        "PasskeyRenamed",
        "PasskeyRemoved",
    ] {
        assert!(types.contains(&kind), "{kind} missing from {types:?}");
    }
}

async fn registration_refuses_what_a_browser_or_authenticator_would_not_send(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = user(&app, "rex").await;
    let refused = [
        (
            "wrong challenge",
            Tamper {
                challenge: Some(vec![7; 32]),
                ..Tamper::default()
            },
        ),
        (
            "wrong origin",
            Tamper {
                origin: Some("https://evil.example".into()),
                ..Tamper::default()
            },
        ),
        (
            "wrong RP ID hash",
            Tamper {
                rp_id: Some("evil.example".into()),
                ..Tamper::default()
            },
        ),
        (
            "wrong type",
            Tamper {
                client_type: Some("webauthn.get".into()),
                ..Tamper::default()
            },
        ),
        (
            "no user presence",
            Tamper {
                no_user_presence: true,
                ..Tamper::default()
            },
        ),
    ];
    for (what, tamper) in refused {
        let (registration_id, options) = begin(&app, &token).await;
        let credential = Authenticator::new(Algorithm::Es256).register(&options, &tamper);
        let answer = finish(&app, &token, &registration_id, "Key", credential).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{what}: {answer:?}");
        assert_eq!(answer.error(), "invalid_request", "{what}");
        // The refusal spent the registration.
        let credential =
            Authenticator::new(Algorithm::Es256).register(&options, &Tamper::default());
        let again = finish(&app, &token, &registration_id, "Key", credential).await;
        assert_eq!(again.status, StatusCode::NOT_FOUND, "{what}: {again:?}");
    }

    // A malformed attestation object, a credential of another type, an
    // oversized credential id, and JSON that is no credential at all.
    let (registration_id, options) = begin(&app, &token).await;
    let mut credential =
        Authenticator::new(Algorithm::Es256).register(&options, &Tamper::default());
    credential["response"]["attestationObject"] = json!(b64(b"\xa1\x63fmt"));
    let answer = finish(&app, &token, &registration_id, "Key", credential).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");

    let (registration_id, options) = begin(&app, &token).await;
    let mut credential =
        Authenticator::new(Algorithm::Es256).register(&options, &Tamper::default());
    credential["type"] = json!("password");
    let answer = finish(&app, &token, &registration_id, "Key", credential).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");

    let (registration_id, options) = begin(&app, &token).await;
    let mut oversized = Authenticator::new(Algorithm::Es256);
    oversized.credential_id = vec![1; 1024];
    let credential = oversized.register(&options, &Tamper::default());
    let answer = finish(&app, &token, &registration_id, "Key", credential).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");

    let (registration_id, _) = begin(&app, &token).await;
    let answer = finish(&app, &token, &registration_id, "Key", json!({"id": 5})).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
    let answer = finish(&app, &token, &registration_id, "", json!({})).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");

    let list = app.get("/api/v1/me/passkeys", &token).await;
    assert_eq!(list.body["passkeys"], json!([]));
}

async fn a_registration_works_once_and_expires_after_five_minutes(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = user(&app, "una").await;
    let (registration_id, options) = begin(&app, &token).await;
    let mut authenticator = Authenticator::new(Algorithm::Ed25519);
    let credential = authenticator.register(&options, &Tamper::default());
    let first = finish(&app, &token, &registration_id, "Key", credential.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let second = finish(&app, &token, &registration_id, "Key", credential).await;
    assert_eq!(second.status, StatusCode::NOT_FOUND, "{second:?}");

    let (registration_id, options) = begin(&app, &token).await;
    app.clock.advance(Duration::minutes(5));
    let credential = Authenticator::new(Algorithm::Es256).register(&options, &Tamper::default());
    let late = finish(&app, &token, &registration_id, "Key", credential).await;
    assert_eq!(late.status, StatusCode::GONE, "{late:?}");
    assert_eq!(late.error(), "challenge_expired");
}

async fn a_credential_is_registered_to_one_user_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, ann) = user(&app, "ann").await;
    let (_, bea) = user(&app, "bea").await;
    let mut authenticator = Authenticator::new(Algorithm::Es256);
    register(&app, &ann, &mut authenticator).await;

    // Again for the same user: the authenticator would refuse (excluded),
    // and the service does too.
    let (registration_id, options) = begin(&app, &ann).await;
    let credential = authenticator.register(&options, &Tamper::default());
    let again = finish(&app, &ann, &registration_id, "Key", credential).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");

    let (registration_id, options) = begin(&app, &bea).await;
    let credential = authenticator.register(&options, &Tamper::default());
    let other = finish(&app, &bea, &registration_id, "Key", credential).await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{other:?}");
    assert_eq!(other.error(), "conflict");
}

async fn an_administrator_acting_as_the_user_can_not_register_a_passkey(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, _) = user(&app, "ivy").await;
    let admin = app.admin_token().await;
    let acting = app
        .post(
            &format!("/api/v1/users/{id}/impersonation"),
            Some(&admin),
            json!({ "reason": "support ticket" }),
        )
        .await;
    assert_eq!(acting.status, StatusCode::CREATED, "{acting:?}");
    let acting = acting.body["session_token"].as_str().unwrap();
    let answer = app
        .post("/api/v1/me/passkeys", Some(acting), json!({}))
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{answer:?}");
    assert_eq!(answer.error(), "forbidden");
}

async fn the_last_factor_of_a_user_who_must_have_two_factor_stays(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, token) = user(&app, "eve").await;
    let admin = app.admin_token().await;
    let enforced = app
        .patch(
            &format!("/api/v1/users/{id}"),
            &admin,
            json!({ "enforce_two_factor": true }),
        )
        .await;
    assert_eq!(enforced.status, StatusCode::OK, "{enforced:?}");

    // Held on enrollment, a passkey makes the same session a full one.
    let held = app.login("eve", PASSWORD).await;
    assert_eq!(held.body["status"], "enrollment_required", "{held:?}");
    let held = held.body["session_token"].as_str().unwrap().to_string();
    assert_eq!(
        app.get("/api/v1/me/remembered-devices", &held).await.status,
        StatusCode::FORBIDDEN
    );
    let mut first = Authenticator::new(Algorithm::Es256);
    let first_id = register(&app, &held, &mut first).await;
    assert_eq!(
        app.get("/api/v1/me/remembered-devices", &held).await.status,
        StatusCode::OK
    );

    let refused = app
        .delete(&format!("/api/v1/me/passkeys/{first_id}"), &token, None)
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
    assert_eq!(refused.error(), "two_factor_enforced");

    let mut second = Authenticator::new(Algorithm::Ed25519);
    register(&app, &token, &mut second).await;
    let removed = app
        .delete(&format!("/api/v1/me/passkeys/{first_id}"), &token, None)
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{removed:?}");
}

async fn a_passkey_passes_the_second_step_and_wrong_ones_count_toward_the_lock(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = user(&app, "sam").await;
    let mut authenticator = Authenticator::new(Algorithm::Ed25519);
    register(&app, &token, &mut authenticator).await;

    let (challenge_id, methods) = password_step(&app, "sam").await;
    assert_eq!(methods, json!(["passkey"]));
    let options = challenge_options(&app, &challenge_id).await;
    assert_eq!(
        options["allowCredentials"][0]["id"],
        b64(&authenticator.credential_id)
    );
    assert_eq!(options["rpId"], rp_id());
    let credential = authenticator.assert(&options, &Tamper::default());
    let passed = verify(&app, &challenge_id, credential.clone()).await;
    assert_eq!(passed.status, StatusCode::OK, "{passed:?}");
    assert_eq!(passed.body["status"], "authenticated");
    let session = passed.body["session_token"].as_str().unwrap();
    assert_eq!(app.get("/api/v1/me", session).await.status, StatusCode::OK);
    let list = app.get("/api/v1/me/passkeys", session).await;
    assert!(
        list.body["passkeys"][0]["last_used_at"].is_string(),
        "{list:?}"
    );

    // A replay of that assertion on a new challenge, a wrong origin, a
    // signature by another key, another user's credential and no options
    // asked for: each a wrong code, counted toward the challenge's lock.
    let (challenge_id, _) = password_step(&app, "sam").await;
    challenge_options(&app, &challenge_id).await;
    let replayed = verify(&app, &challenge_id, credential).await;
    assert_eq!(replayed.status, StatusCode::UNAUTHORIZED, "{replayed:?}");
    assert_eq!(replayed.error(), "invalid_code");
    assert_eq!(replayed.body["attempts_remaining"], 4);

    let (_, other_token) = user(&app, "tom").await;
    let mut others = Authenticator::new(Algorithm::Es256);
    register(&app, &other_token, &mut others).await;
    for n in 0..3_u32 {
        let options = challenge_options(&app, &challenge_id).await;
        let credential = match n {
            0 => authenticator.assert(
                &options,
                &Tamper {
                    origin: Some("https://evil.example".into()),
                    ..Tamper::default()
                },
            ),
            1 => authenticator.assert(
                &options,
                &Tamper {
                    other_key: true,
                    ..Tamper::default()
                },
            ),
            _ => others.assert(&options, &Tamper::default()),
        };
        let answer = verify(&app, &challenge_id, credential).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{n}: {answer:?}");
        assert_eq!(answer.body["attempts_remaining"], 3 - n, "{n}");
    }
    let options = challenge_options(&app, &challenge_id).await;
    let wrong_challenge = authenticator.assert(
        &options,
        &Tamper {
            challenge: Some(vec![9; 32]),
            ..Tamper::default()
        },
    );
    let last = verify(&app, &challenge_id, wrong_challenge).await;
    assert_eq!(last.body["attempts_remaining"], 0, "{last:?}");
    let locked = app
        .post(
            &format!("/api/v1/login/challenges/{challenge_id}/passkey"),
            None,
            json!({}),
        )
        .await;
    assert_eq!(locked.status, StatusCode::LOCKED, "{locked:?}");
    assert_eq!(locked.error(), "challenge_locked");

    // A code where a passkey answer belongs (and the reverse) is 400.
    let (challenge_id, _) = password_step(&app, "sam").await;
    let answer = app
        .post(
            &format!("/api/v1/login/challenges/{challenge_id}/verify"),
            None,
            json!({ "method": "passkey", "code": "123456" }),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
}

async fn a_counter_that_goes_backwards_is_refused_and_recorded(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, token) = user(&app, "cal").await;
    let mut authenticator = Authenticator::new(Algorithm::Es256).counting_from(10);
    register(&app, &token, &mut authenticator).await;

    let (challenge_id, _) = password_step(&app, "cal").await;
    let options = challenge_options(&app, &challenge_id).await;
    let passed = verify(
        &app,
        &challenge_id,
        authenticator.assert(&options, &Tamper::default()),
    )
    .await;
    assert_eq!(passed.status, StatusCode::OK, "{passed:?}");

    // A clone still at 11 (the count just accepted).
    let (challenge_id, _) = password_step(&app, "cal").await;
    let options = challenge_options(&app, &challenge_id).await;
    let cloned = authenticator.sign_at(&options, &Tamper::default(), 11);
    let refused = verify(&app, &challenge_id, cloned).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
    assert_eq!(refused.error(), "invalid_code");

    let history = app.history(&id).await;
    assert!(
        event_types(&history).contains(&"PasskeyCounterRegressed"),
        "{:?}",
        event_types(&history)
    );
}

async fn a_passkey_signs_in_without_a_password(backend: Backend) {
    let settings = crate::helpers::default_settings();
    let app = spawn_app_with(backend, settings).await;
    let (id, token) = user(&app, "ada").await;
    let admin = app.admin_token().await;
    let mut authenticator = Authenticator::new(Algorithm::Es256);
    register(&app, &token, &mut authenticator).await;
    app.patch(
        &format!("/api/v1/users/{id}"),
        &admin,
        json!({ "enforce_two_factor": true }),
    )
    .await;

    let (challenge_id, options) = passwordless_options(&app).await;
    assert_eq!(options["allowCredentials"], json!([]));
    assert_eq!(options["userVerification"], "required");
    let answer = passwordless(
        &app,
        &challenge_id,
        authenticator.assert(&options, &Tamper::default()),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body["status"], "authenticated");
    // Enforced 2FA is satisfied: a full session.
    let session = answer.body["session_token"].as_str().unwrap();
    assert_eq!(
        app.get("/api/v1/me/remembered-devices", session)
            .await
            .status,
        StatusCode::OK
    );

    // Without the user handle, the credential id finds the user.
    let (challenge_id, options) = passwordless_options(&app).await;
    let credential = authenticator.assert(
        &options,
        &Tamper {
            no_user_handle: true,
            ..Tamper::default()
        },
    );
    let answer = passwordless(&app, &challenge_id, credential).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

async fn a_sign_in_without_a_password_refuses_like_a_wrong_password(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = user(&app, "leo").await;
    let mut authenticator = Authenticator::new(Algorithm::Ed25519);
    register(&app, &token, &mut authenticator).await;

    let (challenge_id, options) = passwordless_options(&app).await;
    let good = authenticator.assert(&options, &Tamper::default());
    assert_eq!(
        passwordless(&app, &challenge_id, good.clone()).await.status,
        StatusCode::OK
    );
    // Replayed: the challenge was taken.
    let replayed = passwordless(&app, &challenge_id, good).await;
    assert_eq!(replayed.status, StatusCode::UNAUTHORIZED, "{replayed:?}");
    assert_eq!(replayed.error(), "invalid_credentials");

    let unknown = Authenticator::new(Algorithm::Es256);
    let cases: Vec<(&str, MakeAnswer<'_>)> = vec![
        (
            "unknown credential",
            Box::new(|options| unknown.sign_at(options, &Tamper::default(), 0)),
        ),
        (
            "no user verification",
            Box::new(|options| {
                authenticator.sign_at(
                    options,
                    &Tamper {
                        no_user_verification: true,
                        ..Tamper::default()
                    },
                    0,
                )
            }),
        ),
        (
            "wrong origin",
            Box::new(|options| {
                authenticator.sign_at(
                    options,
                    &Tamper {
                        origin: Some("https://evil.example".into()),
                        ..Tamper::default()
                    },
                    0,
                )
            }),
        ),
        (
            "another key",
            Box::new(|options| {
                authenticator.sign_at(
                    options,
                    &Tamper {
                        other_key: true,
                        ..Tamper::default()
                    },
                    0,
                )
            }),
        ),
        ("not a credential", Box::new(|_| json!({ "id": "x" }))),
    ];
    for (what, make) in &cases {
        let (challenge_id, options) = passwordless_options(&app).await;
        let answer = passwordless(&app, &challenge_id, make(&options)).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {answer:?}"
        );
        assert_eq!(answer.error(), "invalid_credentials", "{what}");
    }

    // Refusals for a known user count toward the account's lock (three so
    // far: no user verification, wrong origin, another key).
    for _ in 0..2 {
        let (challenge_id, options) = passwordless_options(&app).await;
        let credential = authenticator.sign_at(
            &options,
            &Tamper {
                other_key: true,
                ..Tamper::default()
            },
            0,
        );
        passwordless(&app, &challenge_id, credential).await;
    }
    let (challenge_id, options) = passwordless_options(&app).await;
    let right = authenticator.sign_at(&options, &Tamper::default(), 0);
    let locked = passwordless(&app, &challenge_id, right).await;
    assert_eq!(locked.status, StatusCode::LOCKED, "{locked:?}");
    assert_eq!(locked.error(), "account_locked");
}

async fn an_administrators_reset_removes_the_passkeys(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, token) = user(&app, "ray").await;
    let mut authenticator = Authenticator::new(Algorithm::Es256);
    register(&app, &token, &mut authenticator).await;
    let admin = app.admin_token().await;
    let reset = app
        .delete(
            &format!("/api/v1/users/{id}/two-factor"),
            &admin,
            Some(json!({ "reason": "lost laptop" })),
        )
        .await;
    assert_eq!(reset.status, StatusCode::NO_CONTENT, "{reset:?}");
    let token = app.token("ray", PASSWORD).await;
    let list = app.get("/api/v1/me/passkeys", &token).await;
    assert_eq!(list.body["passkeys"], json!([]));
    let (challenge_id, options) = passwordless_options(&app).await;
    let answer = passwordless(
        &app,
        &challenge_id,
        authenticator.assert(&options, &Tamper::default()),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    // Its credential id is free again: the same authenticator registers anew.
    register(&app, &token, &mut authenticator).await;
}

async fn passkey_users_count_as_two_factor_enabled_in_the_report_and_the_search(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, token) = user(&app, "kim").await;
    let mut authenticator = Authenticator::new(Algorithm::Es256);
    register(&app, &token, &mut authenticator).await;
    let admin = app.admin_token().await;

    let found = app
        .get("/api/v1/users?two_factor=enabled&q=kim", &admin)
        .await;
    assert_eq!(found.status, StatusCode::OK, "{found:?}");
    assert_eq!(found.body["users"][0]["id"], id.as_str(), "{found:?}");
    assert_eq!(
        found.body["users"][0]["two_factor_methods"],
        json!(["passkey"])
    );
    let one = app.get(&format!("/api/v1/users/{id}"), &admin).await;
    assert_eq!(one.body["two_factor_status"], "enabled", "{one:?}");
    assert_eq!(one.body["two_factor_methods"], json!(["passkey"]));

    // Another user with an authenticator app: one of each in the report.
    let (_, tia) = user(&app, "tia").await;
    app.enroll_totp(&tia).await;
    let report = app.get("/api/v1/reports/two-factor", &admin).await;
    assert_eq!(report.body["enabled"], 2, "{report:?}");
    assert_eq!(report.body["by_method"], json!({ "totp": 1, "passkey": 1 }));

    // Starting an authenticator-app enrollment does not make her pending.
    let started = app
        .post("/api/v1/me/two-factor/totp", Some(&token), json!({}))
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    let one = app.get(&format!("/api/v1/users/{id}"), &admin).await;
    assert_eq!(one.body["two_factor_status"], "enabled", "{one:?}");
    assert_eq!(one.body["two_factor_methods"], json!(["passkey"]));

    // Removing her only passkey leaves the pending app enrollment.
    let list = app.get("/api/v1/me/passkeys", &token).await;
    let passkey_id = list.body["passkeys"][0]["id"].as_str().unwrap().to_string();
    let removed = app
        .delete(&format!("/api/v1/me/passkeys/{passkey_id}"), &token, None)
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{removed:?}");
    let one = app.get(&format!("/api/v1/users/{id}"), &admin).await;
    assert_eq!(one.body["two_factor_status"], "pending", "{one:?}");
    assert_eq!(one.body["two_factor_methods"], json!([]));
    let mut again = Authenticator::new(Algorithm::Ed25519);
    register(&app, &token, &mut again).await;

    // `projections rebuild` gives the live projector's rows.
    let db = crate::processes::open_db(&app.database_url).await;
    crate::faults::assert_read_models_equal_a_rebuild(&db, &app.database_url).await;
}

async fn the_audit_trail_shows_passkeys_but_never_a_challenge(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, token) = user(&app, "ben").await;
    let mut authenticator = Authenticator::new(Algorithm::Es256);
    register(&app, &token, &mut authenticator).await;
    let (challenge_id, _) = password_step(&app, "ben").await;
    let options = challenge_options(&app, &challenge_id).await;
    verify(
        &app,
        &challenge_id,
        authenticator.assert(&options, &Tamper::default()),
    )
    .await;

    let admin = app.admin_token().await;
    let audit = app
        .get(&format!("/api/v1/audit?user_id={id}&limit=100"), &admin)
        .await;
    assert_eq!(audit.status, StatusCode::OK, "{audit:?}");
    let text = audit.body.to_string();
    for kind in [
        "PasskeyRegistered",
        "PasskeyAssertionStarted",
        "PasskeyUsed",
    ] {
        assert!(text.contains(kind), "{kind} missing");
    }
    let challenge = options["challenge"].as_str().unwrap();
    assert!(
        !text.contains(challenge),
        "the challenge is in the audit trail"
    );
    assert!(!text.contains("ceremony_secret"));
    assert!(
        !text.contains(&challenge_id),
        "a challenge id is in the audit trail"
    );
    let registered = audit.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "PasskeyRegistered")
        .unwrap();
    assert_eq!(
        registered["data"]["credential_id"],
        b64(&authenticator.credential_id)
    );
    assert_eq!(registered["data"]["attestation_format"], "none");
}

async fn a_passkey_only_user_turns_two_factor_off_with_a_fresh_passkey_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, password_session) = user(&app, "fay").await;
    let mut authenticator = Authenticator::new(Algorithm::Es256);
    register(&app, &password_session, &mut authenticator).await;
    let off = |token: String| {
        let app = &app;
        async move {
            app.delete(
                "/api/v1/me/two-factor",
                &token,
                Some(json!({ "password": PASSWORD })),
            )
            .await
        }
    };

    // A session that began with the password alone shows no fresh factor.
    let refused = off(password_session.clone()).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
    assert_eq!(refused.error(), "invalid_code");

    // One from the password and a passkey does, for 5 minutes.
    let (challenge_id, _) = password_step(&app, "fay").await;
    let options = challenge_options(&app, &challenge_id).await;
    let passed = verify(
        &app,
        &challenge_id,
        authenticator.assert(&options, &Tamper::default()),
    )
    .await;
    let fresh = passed.body["session_token"].as_str().unwrap().to_string();
    app.clock.advance(Duration::minutes(6));
    let stale = off(fresh).await;
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED, "{stale:?}");

    let (challenge_id, options) = passwordless_options(&app).await;
    let signed_in = passwordless(
        &app,
        &challenge_id,
        authenticator.assert(&options, &Tamper::default()),
    )
    .await;
    let fresh = signed_in.body["session_token"]
        .as_str()
        .unwrap()
        .to_string();
    let done = off(fresh.clone()).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{done:?}");
    let me = app.get("/api/v1/me", &fresh).await;
    assert_eq!(me.body["two_factor"]["status"], "disabled", "{me:?}");
    let list = app.get("/api/v1/me/passkeys", &fresh).await;
    assert_eq!(list.body["passkeys"], json!([]));
}

/// Every ceremony begun on one `twofold serve` process is finished on
/// another (one PostgreSQL): the state lives in the store, not in a
/// process's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ceremony_begun_on_one_process_is_finished_on_another() {
    use crate::processes::{Processes, MULTI_PROCESS};
    use reqwest::Method;

    let _one_at_a_time = MULTI_PROCESS.lock().await;
    let cluster = Processes::start(2).await;
    let admin = cluster.admin_token().await;
    let created = cluster
        .call(
            0,
            Method::POST,
            "/api/v1/users",
            Some(&admin),
            Some(json!({ "username": "nia", "password": PASSWORD, "role": "user" })),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let login = cluster.login(0, "nia", PASSWORD).await;
    let token = login.body["session_token"].as_str().unwrap().to_string();

    let mut authenticator = Authenticator::new(Algorithm::Es256).counting_from(1);
    let begun = cluster
        .call(0, Method::POST, "/api/v1/me/passkeys", Some(&token), None)
        .await;
    assert_eq!(begun.status, StatusCode::CREATED, "{begun:?}");
    let registration_id = begun.body["registration_id"].as_str().unwrap();
    let credential = authenticator.register(&begun.body["public_key"], &Tamper::default());
    let finished = cluster
        .call(
            1,
            Method::POST,
            &format!("/api/v1/me/passkeys/{registration_id}"),
            Some(&token),
            Some(json!({ "name": "Laptop", "credential": credential })),
        )
        .await;
    assert_eq!(finished.status, StatusCode::CREATED, "{finished:?}");

    // The second step: password on 1, options on 0, answer on 1.
    let login = cluster.login(1, "nia", PASSWORD).await;
    let challenge_id = login.body["challenge_id"].as_str().unwrap().to_string();
    let options = cluster
        .call(
            0,
            Method::POST,
            &format!("/api/v1/login/challenges/{challenge_id}/passkey"),
            None,
            None,
        )
        .await;
    assert_eq!(options.status, StatusCode::OK, "{options:?}");
    let credential = authenticator.assert(&options.body["public_key"], &Tamper::default());
    let verified = cluster
        .call(
            1,
            Method::POST,
            &format!("/api/v1/login/challenges/{challenge_id}/verify"),
            None,
            Some(json!({ "method": "passkey", "credential": credential.clone() })),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{verified:?}");
    // The same answer again, on the other process: spent.
    let replayed = cluster
        .call(
            0,
            Method::POST,
            &format!("/api/v1/login/challenges/{challenge_id}/verify"),
            None,
            Some(json!({ "method": "passkey", "credential": credential })),
        )
        .await;
    assert_ne!(replayed.status, StatusCode::OK, "{replayed:?}");

    // Without a password: options on 1, answer on 0, the replay on 1.
    let options = cluster
        .call(1, Method::POST, "/api/v1/login/passkey", None, None)
        .await;
    assert_eq!(options.status, StatusCode::OK, "{options:?}");
    let challenge_id = options.body["challenge_id"].as_str().unwrap();
    let credential = authenticator.assert(&options.body["public_key"], &Tamper::default());
    let path = format!("/api/v1/login/passkey/{challenge_id}");
    let body = json!({ "credential": credential });
    let signed_in = cluster
        .call(0, Method::POST, &path, None, Some(body.clone()))
        .await;
    assert_eq!(signed_in.status, StatusCode::OK, "{signed_in:?}");
    let replayed = cluster.call(1, Method::POST, &path, None, Some(body)).await;
    assert_eq!(replayed.status, StatusCode::UNAUTHORIZED, "{replayed:?}");
}
