//! Every parser of user input in the domain, under proptest: none panics on
//! any input, and what one accepts round-trips (parsing its output gives the
//! same value). Inputs mix arbitrary Unicode with near-misses built from the
//! accepted alphabet, so both sides of each rule are exercised.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use totp_rs::{Algorithm, Totp};
use twofold_domain::totp::{normalize_code, TotpAlgorithm, TotpError, TotpParameters, TotpSecret};
use twofold_domain::user::normalize_recovery_code;
use twofold_domain::{Email, Role, Username};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2_000,
        ..ProptestConfig::default()
    }
}

/// Arbitrary text, or text drawn mostly from `alphabet` (near-misses).
fn text_near(alphabet: &'static str, max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                8 => proptest::sample::select(alphabet.chars().collect::<Vec<_>>()),
                1 => any::<char>(),
            ],
            0..max,
        )
        .prop_map(|chars| chars.into_iter().collect()),
    ]
}

/// Spaces and dashes a person might type between the groups of a code.
fn separated(code: &str, separators: &[u8]) -> String {
    let mut out = String::new();
    for (index, ch) in code.chars().enumerate() {
        match separators.get(index).copied().unwrap_or(0) % 4 {
            1 => out.push(' '),
            2 => out.push('-'),
            _ => {}
        }
        out.push(ch);
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn normalize_code_never_panics_and_accepts_only_exact_digits(
        input in text_near("0123456789 -", 24),
        digits in 0_u32..12,
    ) {
        if let Ok(code) = normalize_code(&input, digits) {
            prop_assert_eq!(code.len(), digits as usize);
            prop_assert!(code.bytes().all(|b| b.is_ascii_digit()));
            prop_assert_eq!(normalize_code(&code, digits), Ok(code.clone()));
            // The digits are the input's, in order: only separators went.
            let kept: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
            prop_assert_eq!(kept, code);
        }
    }

    #[test]
    fn typed_codes_with_separators_normalise_to_the_code(
        code in "[0-9]{6,8}",
        separators in proptest::collection::vec(any::<u8>(), 8),
    ) {
        let digits = code.len() as u32;
        let typed = separated(&code, &separators);
        prop_assert_eq!(normalize_code(&typed, digits), Ok(code.clone()));
        prop_assert_eq!(normalize_code(&format!(" {typed} "), digits), Ok(code));
    }

    #[test]
    fn base32_secrets_never_panic_and_accepted_ones_round_trip(
        input in text_near("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567abcdefxyz= 018", 80),
    ) {
        match TotpSecret::from_base32(&input) {
            Ok(secret) => {
                prop_assert!(secret.expose_bytes().len() >= 16);
                let again = TotpSecret::from_base32(&secret.to_base32()).unwrap();
                prop_assert_eq!(again.expose_bytes(), secret.expose_bytes());
                // The error message never echoes the input.
            }
            Err(error) => {
                let message = error.to_string();
                let trimmed = input.trim();
                prop_assert!(trimmed.len() < 4 || !message.contains(trimmed));
            }
        }
    }

    #[test]
    fn secret_bytes_round_trip_through_base32_however_typed(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        lower in any::<bool>(),
        spaces in any::<bool>(),
        padded in any::<bool>(),
    ) {
        let Ok(secret) = TotpSecret::from_bytes(bytes.clone()) else {
            prop_assert!(bytes.len() < 16);
            return Ok(());
        };
        let mut text = secret.to_base32();
        prop_assert!(!text.contains('='));
        if padded {
            while text.len() % 8 != 0 {
                text.push('=');
            }
        }
        if lower {
            text = text.to_lowercase();
        }
        if spaces {
            text = text
                .as_bytes()
                .chunks(4)
                .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
        }
        let parsed = TotpSecret::from_base32(&text).unwrap();
        prop_assert_eq!(parsed.expose_bytes(), &bytes[..]);
    }

    #[test]
    fn short_secrets_are_refused_as_too_short(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
        let text = data_encoding::BASE32_NOPAD.encode(&bytes);
        prop_assert_eq!(TotpSecret::from_base32(&text).err(), Some(TotpError::SecretTooShort));
    }

    #[test]
    fn usernames_never_panic_and_accepted_ones_are_canonical(
        input in text_near("abcXYZ019._-@ '\t;", 80),
    ) {
        if let Ok(name) = Username::parse(&input) {
            let text = name.as_str();
            prop_assert!((1..=Username::MAX_LEN).contains(&text.len()));
            prop_assert!(text.chars().all(|c| c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, '.' | '_' | '-' | '@')));
            prop_assert_eq!(Username::parse(text).unwrap(), name.clone());
            prop_assert_eq!(Username::parse(&text.to_uppercase()).unwrap(), name.clone());
            prop_assert_eq!(text, input.trim().to_ascii_lowercase());
        }
    }

    #[test]
    fn emails_never_panic_and_accepted_ones_round_trip(
        input in text_near("abcXYZ019._-+@ \t\u{0}\u{7f}é", 300),
    ) {
        if let Ok(email) = Email::parse(&input) {
            let text = email.as_str();
            prop_assert!(text.len() <= Email::MAX_LEN);
            prop_assert!(!text.chars().any(|c| c.is_whitespace() || c.is_control()));
            prop_assert_eq!(text.matches('@').count(), 1);
            prop_assert_eq!(Email::parse(text).unwrap(), email.clone());
            prop_assert_eq!(email.key(), text.to_lowercase());
            let masked = email.masked();
            prop_assert!(masked.contains("***@"));
        }
    }

    #[test]
    fn roles_never_panic_and_parse_only_their_own_names(input in text_near("usertaudimn_S", 20)) {
        if let Ok(role) = input.parse::<Role>() {
            prop_assert_eq!(role.as_str(), input.as_str());
            prop_assert_eq!(serde_json::to_value(role).unwrap(), serde_json::json!(input));
        }
    }

    #[test]
    fn recovery_codes_normalise_however_typed(
        input in any::<String>(),
        code in "[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}",
        upper in any::<bool>(),
        separators in proptest::collection::vec(any::<u8>(), 14),
    ) {
        let normal = normalize_recovery_code(&input);
        prop_assert!(normal.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        prop_assert_eq!(normalize_recovery_code(&normal), normal.clone());

        let expected: String = code.chars().filter(|c| *c != '-').collect();
        let mut typed = separated(&code, &separators);
        if upper {
            typed = typed.to_uppercase();
        }
        prop_assert_eq!(normalize_recovery_code(&typed), expected);
    }

    /// What `otpauth_uri` writes, an independent parser (totp-rs) reads back:
    /// secret, issuer, account, algorithm, digits and period. The Key URI
    /// format has no room for a literal `:` in the issuer or account (the
    /// label's separator); usernames cannot hold one.
    #[test]
    fn otpauth_uris_round_trip_through_totp_rs(
        bytes in proptest::collection::vec(any::<u8>(), 16..64),
        issuer in "[^:]{0,24}",
        account in prop_oneof![
            "[a-z0-9._@-]{1,64}",
            "[^:]{1,32}",
        ],
        algorithm in prop_oneof![
            Just(TotpAlgorithm::Sha1),
            Just(TotpAlgorithm::Sha256),
            Just(TotpAlgorithm::Sha512),
        ],
        digits in 6_u32..=8,
        period in 15_u64..=300,
    ) {
        let secret = TotpSecret::from_bytes(bytes.clone()).unwrap();
        let parameters = TotpParameters { algorithm, digits, period, skew: 1 };
        let uri = parameters.otpauth_uri(&secret, &issuer, &account);
        let parsed = Totp::from_url(&uri).map_err(|error| {
            TestCaseError::fail(format!("{uri}: {error}"))
        })?;
        prop_assert_eq!(parsed.secret().as_bytes(), &bytes[..]);
        prop_assert_eq!(parsed.issuer(), Some(issuer.as_str()));
        prop_assert_eq!(parsed.account_name(), account.as_str());
        let expected = match algorithm {
            TotpAlgorithm::Sha1 => Algorithm::SHA1,
            TotpAlgorithm::Sha256 => Algorithm::SHA256,
            TotpAlgorithm::Sha512 => Algorithm::SHA512,
        };
        prop_assert_eq!(parsed.algorithm(), expected);
        prop_assert_eq!(u32::from(parsed.digits()), digits);
        prop_assert_eq!(parsed.step(), period);
        // And both sides compute the same code.
        let at = 1_700_000_000_u64;
        prop_assert_eq!(parsed.generate(at).to_string(), parameters.code_at(&secret, at));
    }

    #[test]
    fn matching_never_panics_on_any_code_or_time(
        code in text_near("0123456789", 10),
        at in any::<u64>(),
        digits in 0_u32..12,
        period in 0_u64..400,
        skew in any::<u8>(),
    ) {
        let secret = TotpSecret::from_bytes(vec![7; 20]).unwrap();
        let parameters = TotpParameters { algorithm: TotpAlgorithm::Sha1, digits, period, skew };
        let matched = parameters.matching_step(&secret, &code, at);
        if parameters.validate().is_err() {
            prop_assert_eq!(matched, None);
        }
    }
}

#[test]
fn every_role_parses_from_its_name() {
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        assert!(role.as_str().to_uppercase().parse::<Role>().is_err());
    }
}
