//! Known-answer tests: RFC 6238 Appendix B (TOTP) and RFC 4226 Appendix D (HOTP).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde::Deserialize;
use twofold_domain::totp::{TotpAlgorithm, TotpParameters, TotpSecret};

#[derive(Deserialize)]
struct Vectors {
    totp: Vec<TotpVector>,
    hotp_sha1_6_digits: Vec<HotpVector>,
}

#[derive(Deserialize)]
struct TotpVector {
    unix_time: u64,
    algorithm: TotpAlgorithm,
    digits: u32,
    period: u64,
    secret_ascii: String,
    secret_base32: String,
    code: String,
}

#[derive(Deserialize)]
struct HotpVector {
    counter: u64,
    code: String,
}

fn vectors() -> Vectors {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc6238.json");
    let json = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&json).unwrap()
}

fn parameters(vector: &TotpVector) -> TotpParameters {
    TotpParameters {
        algorithm: vector.algorithm,
        digits: vector.digits,
        period: vector.period,
        skew: 1,
    }
}

#[test]
fn the_vector_file_covers_every_algorithm() {
    let vectors = vectors();
    assert_eq!(vectors.totp.len(), 18);
    assert!(vectors.totp.iter().all(|v| v.digits == 8 && v.period == 30));
    for algorithm in [
        TotpAlgorithm::Sha1,
        TotpAlgorithm::Sha256,
        TotpAlgorithm::Sha512,
    ] {
        assert_eq!(
            vectors
                .totp
                .iter()
                .filter(|v| v.algorithm == algorithm)
                .count(),
            6,
            "{algorithm:?}"
        );
    }
    assert_eq!(vectors.hotp_sha1_6_digits.len(), 10);
}

#[test]
fn base32_secrets_decode_to_the_rfc_seeds() {
    for vector in vectors().totp {
        let secret = TotpSecret::from_base32(&vector.secret_base32).unwrap();
        assert_eq!(secret.expose_bytes(), vector.secret_ascii.as_bytes());
    }
}

#[test]
fn code_at_reproduces_every_totp_vector() {
    for vector in vectors().totp {
        let params = parameters(&vector);
        params.validate().unwrap();
        let secret = TotpSecret::from_bytes(vector.secret_ascii.clone().into_bytes()).unwrap();
        assert_eq!(
            params.code_at(&secret, vector.unix_time),
            vector.code,
            "{:?} at {}",
            vector.algorithm,
            vector.unix_time
        );
    }
}

#[test]
fn matching_step_finds_the_step_of_every_totp_vector() {
    for vector in vectors().totp {
        let params = parameters(&vector);
        let secret = TotpSecret::from_base32(&vector.secret_base32).unwrap();
        assert_eq!(
            params.matching_step(&secret, &vector.code, vector.unix_time),
            Some(vector.unix_time / vector.period),
            "{:?} at {}",
            vector.algorithm,
            vector.unix_time
        );
    }
}

#[test]
fn matching_step_finds_vectors_from_the_neighbouring_steps() {
    for vector in vectors().totp {
        let params = parameters(&vector);
        let secret = TotpSecret::from_base32(&vector.secret_base32).unwrap();
        let step = vector.unix_time / vector.period;
        let code = vector.code.as_str();
        assert_eq!(
            params.matching_step(&secret, code, vector.unix_time + 30),
            Some(step)
        );
        assert_eq!(
            params.matching_step(&secret, code, vector.unix_time - 30),
            Some(step)
        );
        assert_eq!(
            params.matching_step(&secret, code, vector.unix_time + 60),
            None
        );
        // The earliest vector (59 s) has no step two before it.
        if let Some(earlier) = vector.unix_time.checked_sub(60) {
            assert_eq!(params.matching_step(&secret, code, earlier), None);
        }
    }
}

#[test]
fn a_vector_does_not_verify_under_another_algorithm() {
    for vector in vectors().totp {
        let secret = TotpSecret::from_base32(&vector.secret_base32).unwrap();
        for algorithm in [
            TotpAlgorithm::Sha1,
            TotpAlgorithm::Sha256,
            TotpAlgorithm::Sha512,
        ] {
            if algorithm == vector.algorithm {
                continue;
            }
            let params = TotpParameters {
                algorithm,
                ..parameters(&vector)
            };
            assert_ne!(params.code_at(&secret, vector.unix_time), vector.code);
        }
    }
}

#[test]
fn hotp_counters_are_totp_steps_of_30_seconds() {
    let params = TotpParameters {
        algorithm: TotpAlgorithm::Sha1,
        digits: 6,
        period: 30,
        skew: 1,
    };
    let secret = TotpSecret::from_bytes(b"12345678901234567890".to_vec()).unwrap();
    for vector in vectors().hotp_sha1_6_digits {
        let unix_time = vector.counter * 30;
        assert_eq!(
            params.code_at(&secret, unix_time),
            vector.code,
            "counter {}",
            vector.counter
        );
        // Mid-step time, to make sure the step (not the second) is what counts.
        assert_eq!(
            params.matching_step(&secret, &vector.code, unix_time + 15),
            Some(vector.counter),
            "counter {}",
            vector.counter
        );
    }
}
