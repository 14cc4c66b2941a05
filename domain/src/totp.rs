//! Time-based one-time passwords (RFC 6238) over caller-supplied time.
//!
//! Code generation is delegated to `totp-rs`; this module owns the secret
//! handling, input normalisation, the verification window and the otpauth URI,
//! so that nothing here reads the clock or leaks a secret through `Debug`.

use std::fmt;

use data_encoding::BASE32_NOPAD;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Builder, Totp};
use zeroize::Zeroizing;

/// RFC 4226 section 4 requires at least 128 bits of shared secret.
const MIN_SECRET_BYTES: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TotpAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl TotpAlgorithm {
    /// The spelling used by the otpauth URI format.
    fn as_str(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
            Self::Sha512 => "SHA512",
        }
    }
}

impl From<TotpAlgorithm> for Algorithm {
    fn from(algorithm: TotpAlgorithm) -> Self {
        match algorithm {
            TotpAlgorithm::Sha1 => Algorithm::SHA1,
            TotpAlgorithm::Sha256 => Algorithm::SHA256,
            TotpAlgorithm::Sha512 => Algorithm::SHA512,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotpParameters {
    pub algorithm: TotpAlgorithm,
    pub digits: u32,
    /// Length of one time step, in seconds.
    pub period: u64,
    /// How many steps before and after the current one are still accepted.
    pub skew: u8,
}

impl Default for TotpParameters {
    /// What every authenticator app understands (Google Authenticator ignores
    /// anything else on some platforms).
    fn default() -> Self {
        Self {
            algorithm: TotpAlgorithm::Sha1,
            digits: 6,
            period: 30,
            skew: 1,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TotpError {
    #[error("TOTP secret must be at least 128 bits")]
    SecretTooShort,
    #[error("TOTP secret is not valid base32")]
    InvalidSecret,
    #[error("TOTP code is malformed")]
    InvalidCode,
    #[error("invalid TOTP parameters: {0}")]
    InvalidParameters(&'static str),
}

/// An enrollment's secret as the caller unsealed it. A code is checked
/// with it only while that enrollment is still the user's active one:
/// another process may have re-enrolled or turned 2FA off since.
#[derive(Clone, Debug)]
pub struct UnsealedTotp {
    pub enrollment_id: uuid::Uuid,
    pub secret: TotpSecret,
}

/// Raw secret bytes; Debug prints `TotpSecret(<redacted>)`; zeroized on drop; no Serialize.
/// Cloned only to retry a command whose append met a concurrent writer.
#[derive(Clone)]
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl TotpSecret {
    /// Fails with [`TotpError::SecretTooShort`] under 16 bytes (128 bits).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, TotpError> {
        // Wrap first so that a rejected secret is wiped as well.
        let bytes = Zeroizing::new(bytes);
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(TotpError::SecretTooShort);
        }
        Ok(Self(bytes))
    }

    /// Accepts base32 the way people copy it: surrounding or embedded spaces,
    /// lowercase, and `=` padding are all tolerated.
    pub fn from_base32(text: &str) -> Result<Self, TotpError> {
        let normalized: Zeroizing<String> = Zeroizing::new(
            text.chars()
                .filter(|c| !c.is_whitespace())
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        );
        let unpadded = normalized.trim_end_matches('=').as_bytes();

        let len = BASE32_NOPAD
            .decode_len(unpadded.len())
            .map_err(|_| TotpError::InvalidSecret)?;
        // Decode into a buffer we own so that partial output on error is wiped too.
        let mut decoded = Zeroizing::new(vec![0_u8; len]);
        let written = BASE32_NOPAD
            .decode_mut(unpadded, &mut decoded)
            .map_err(|_| TotpError::InvalidSecret)?;
        decoded.truncate(written);

        Self::from_bytes(std::mem::take(&mut *decoded))
    }

    /// RFC 4648 base32, uppercase, without padding (the otpauth convention).
    pub fn to_base32(&self) -> String {
        BASE32_NOPAD.encode(&self.0)
    }

    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpParameters {
    /// Digits 6..=8 (RFC 4226), period 15..=300 s, skew 0..=3 steps.
    pub fn validate(&self) -> Result<(), TotpError> {
        if !(6..=8).contains(&self.digits) {
            return Err(TotpError::InvalidParameters(
                "digits must be between 6 and 8",
            ));
        }
        if !(15..=300).contains(&self.period) {
            return Err(TotpError::InvalidParameters(
                "period must be between 15 and 300 seconds",
            ));
        }
        if self.skew > 3 {
            return Err(TotpError::InvalidParameters("skew must be at most 3 steps"));
        }
        Ok(())
    }

    /// The RFC 6238 time step (T0 = 0) containing `unix_time`.
    ///
    /// # Panics
    ///
    /// If `period` is zero, which [`Self::validate`] rejects.
    pub fn step_at(&self, unix_time: u64) -> u64 {
        unix_time / self.period
    }

    /// The code an authenticator shows at `unix_time`, zero-padded to `digits`.
    ///
    /// # Panics
    ///
    /// If the parameters do not pass [`Self::validate`]; they are checked when
    /// an enrollment is created, so this is a programming error.
    pub fn code_at(&self, secret: &TotpSecret, unix_time: u64) -> String {
        #[allow(clippy::expect_used)]
        let generator = self
            .generator(secret)
            .expect("TOTP parameters must be validated before generating codes");
        generator.generate(unix_time).to_string()
    }

    /// The time step whose code equals `code`, looking at step_at(now) - skew ..= + skew; constant-time compare; None when no step matches.
    ///
    /// `code` is compared as is: pass it through [`normalize_code`] first.
    /// Invalid parameters match nothing. When several steps in the window
    /// share the code, the earliest is returned.
    pub fn matching_step(&self, secret: &TotpSecret, code: &str, unix_time: u64) -> Option<u64> {
        let generator = self.generator(secret)?;
        let current = self.step_at(unix_time);
        let skew = u64::from(self.skew);

        // Every step of the window is computed and compared, so the time taken
        // does not depend on whether or where the code matched.
        let mut matched = None;
        for step in current.saturating_sub(skew)..=current.saturating_add(skew) {
            let Some(step_start) = step.checked_mul(self.period) else {
                continue;
            };
            let expected = generator.generate(step_start).to_string();
            let equal = bool::from(expected.as_bytes().ct_eq(code.as_bytes()));
            if equal && matched.is_none() {
                matched = Some(step);
            }
        }
        matched
    }

    /// `otpauth://totp/<issuer>:<account>?secret=...&issuer=...&algorithm=..&digits=..&period=..`
    /// (Key URI format as read by Google Authenticator), with issuer and
    /// account percent-encoded.
    ///
    /// The format forbids a colon in either the issuer or the account name,
    /// even encoded, since some apps split the label on `%3A`; callers are
    /// expected to have rejected such names.
    pub fn otpauth_uri(&self, secret: &TotpSecret, issuer: &str, account: &str) -> String {
        let issuer = percent_encode(issuer);
        format!(
            "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm={algorithm}&digits={digits}&period={period}",
            account = percent_encode(account),
            secret = secret.to_base32(),
            algorithm = self.algorithm.as_str(),
            digits = self.digits,
            period = self.period,
        )
    }

    /// `None` when the parameters are invalid; the secret length is already
    /// guaranteed by [`TotpSecret`]. The skew is not handed to `totp-rs`
    /// because the window is walked here, without its early exit.
    fn generator(&self, secret: &TotpSecret) -> Option<Totp> {
        self.validate().ok()?;
        Builder::new()
            .with_algorithm(self.algorithm.into())
            .with_digits(u8::try_from(self.digits).ok()?)
            .with_step_duration(self.period)
            .with_secret(secret.expose_bytes())
            .build()
            .ok()
    }
}

/// Normalises a user-typed code: strips ASCII spaces and '-', must then be exactly `digits` ASCII digits.
pub fn normalize_code(input: &str, digits: u32) -> Result<String, TotpError> {
    let code: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    let well_formed = usize::try_from(digits).is_ok_and(|digits| code.len() == digits)
        && code.bytes().all(|b| b.is_ascii_digit());
    if well_formed {
        Ok(code)
    } else {
        Err(TotpError::InvalidCode)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so that
/// spaces become `%20` (not `+`) and `@`, `&`, `=`, `#`, `?` cannot break the URI.
fn percent_encode(input: &str) -> String {
    let mut encoded = String::with_capacity(input.len());
    for byte in input.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// "12345678901234567890", the RFC 6238 SHA1 seed.
    const RFC_SECRET_BASE32: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890".to_vec()).unwrap()
    }

    #[test]
    fn default_parameters_are_the_authenticator_defaults() {
        let params = TotpParameters::default();
        assert_eq!(
            params,
            TotpParameters {
                algorithm: TotpAlgorithm::Sha1,
                digits: 6,
                period: 30,
                skew: 1
            }
        );
        assert_eq!(params.validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_out_of_range_parameters() {
        let ok = TotpParameters::default();
        for params in [
            TotpParameters { digits: 5, ..ok },
            TotpParameters { digits: 9, ..ok },
            TotpParameters { period: 14, ..ok },
            TotpParameters { period: 301, ..ok },
            TotpParameters { skew: 4, ..ok },
        ] {
            assert!(
                matches!(params.validate(), Err(TotpError::InvalidParameters(_))),
                "{params:?}"
            );
        }
        for params in [
            TotpParameters {
                digits: 8,
                period: 15,
                skew: 0,
                ..ok
            },
            TotpParameters {
                digits: 6,
                period: 300,
                skew: 3,
                ..ok
            },
        ] {
            assert_eq!(params.validate(), Ok(()), "{params:?}");
        }
    }

    #[test]
    fn algorithm_serializes_uppercase() {
        assert_eq!(
            serde_json::to_string(&TotpAlgorithm::Sha256).unwrap(),
            "\"SHA256\""
        );
        let params: TotpParameters =
            serde_json::from_str(r#"{"algorithm":"SHA512","digits":8,"period":60,"skew":2}"#)
                .unwrap();
        assert_eq!(params.algorithm, TotpAlgorithm::Sha512);
    }

    #[test]
    fn secret_shorter_than_128_bits_is_refused() {
        assert_eq!(
            TotpSecret::from_bytes(vec![7; 15]).unwrap_err(),
            TotpError::SecretTooShort
        );
        assert_eq!(
            TotpSecret::from_bytes(vec![7; 16]).unwrap().expose_bytes(),
            [7; 16]
        );
        // 24 base32 characters are 15 bytes.
        assert_eq!(
            TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBV").unwrap_err(),
            TotpError::SecretTooShort
        );
    }

    #[test]
    fn base32_round_trips_without_padding() {
        let secret = TotpSecret::from_base32(RFC_SECRET_BASE32).unwrap();
        assert_eq!(secret.expose_bytes(), b"12345678901234567890");
        assert_eq!(secret.to_base32(), RFC_SECRET_BASE32);

        // 17 bytes need padding in RFC 4648; we emit none.
        let odd = TotpSecret::from_bytes(vec![0xff; 17]).unwrap();
        let text = odd.to_base32();
        assert!(!text.contains('='));
        assert_eq!(
            TotpSecret::from_base32(&text).unwrap().expose_bytes(),
            [0xff; 17]
        );
    }

    #[test]
    fn base32_input_is_normalized() {
        for input in [
            "  gezd gnbv gy3t qojq gezd gnbv gy3t qojq \n",
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ====",
            "GezdGnbvGy3tQojqGezdGnbvGy3tQojq",
        ] {
            let secret = TotpSecret::from_base32(input).unwrap();
            assert_eq!(secret.expose_bytes(), b"12345678901234567890", "{input:?}");
        }
    }

    #[test]
    fn invalid_base32_is_refused() {
        // '1' is outside the alphabet; '=' only pads the end; one trailing
        // character cannot encode a whole byte.
        for input in [
            "GEZDGNBVGY3TQOJQGEZDGNB1GY3TQOJQ",
            "GEZD=GNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQA",
        ] {
            assert_eq!(
                TotpSecret::from_base32(input).unwrap_err(),
                TotpError::InvalidSecret,
                "{input:?}"
            );
        }
    }

    #[test]
    fn empty_base32_is_too_short() {
        assert_eq!(
            TotpSecret::from_base32(" ").unwrap_err(),
            TotpError::SecretTooShort
        );
    }

    #[test]
    fn debug_redacts_the_secret() {
        let secret = TotpSecret::from_bytes(b"SUPERSECRETSUPERSECRET".to_vec()).unwrap();
        let debug = format!("{secret:?}");
        assert_eq!(debug, "TotpSecret(<redacted>)");
        assert!(!debug.contains("SUPER"));
        assert!(!debug.contains(&secret.to_base32()));
    }

    #[test]
    fn errors_do_not_echo_their_input() {
        let err = TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNB1GY3TQOJQ").unwrap_err();
        assert!(!err.to_string().contains("GEZD"));
        let err = normalize_code("12345x", 6).unwrap_err();
        assert!(!err.to_string().contains("12345"));
    }

    #[test]
    fn otpauth_uri_has_the_key_uri_shape() {
        let uri =
            TotpParameters::default().otpauth_uri(&rfc_secret(), "Twofold", "alice@example.com");
        assert_eq!(
            uri,
            "otpauth://totp/Twofold:alice%40example.com\
             ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Twofold\
             &algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn otpauth_uri_percent_encodes_issuer_and_account() {
        let params = TotpParameters {
            algorithm: TotpAlgorithm::Sha256,
            digits: 8,
            period: 60,
            skew: 1,
        };
        let uri = params.otpauth_uri(&rfc_secret(), "Acme & Co", "bob smith+2fa@example.com");
        assert_eq!(
            uri,
            "otpauth://totp/Acme%20%26%20Co:bob%20smith%2B2fa%40example.com\
             ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Acme%20%26%20Co\
             &algorithm=SHA256&digits=8&period=60"
        );

        // An independent parser reads back what we meant.
        let parsed = Totp::from_url(&uri).unwrap();
        assert_eq!(parsed.issuer(), Some("Acme & Co"));
        assert_eq!(parsed.account_name(), "bob smith+2fa@example.com");
        assert_eq!(parsed.algorithm(), Algorithm::SHA256);
        assert_eq!(parsed.digits(), 8);
        assert_eq!(parsed.step(), 60);
        assert_eq!(parsed.secret().as_bytes(), b"12345678901234567890");
    }

    #[test]
    fn normalize_code_strips_spaces_and_dashes() {
        assert_eq!(normalize_code("123456", 6).unwrap(), "123456");
        assert_eq!(normalize_code(" 123 456 ", 6).unwrap(), "123456");
        assert_eq!(normalize_code("123-456", 6).unwrap(), "123456");
        assert_eq!(normalize_code("1234 5678", 8).unwrap(), "12345678");
        assert_eq!(normalize_code("000000", 6).unwrap(), "000000");
    }

    #[test]
    fn normalize_code_rejects_malformed_codes() {
        for (input, digits) in [
            ("", 6),
            ("12345", 6),
            ("1234567", 6),
            ("123456", 8),
            ("12a456", 6),
            ("+12345", 6),
            ("123\t456", 6),
            ("١٢٣٤٥٦", 6), // non-ASCII digits
            ("123_456", 6),
        ] {
            assert_eq!(
                normalize_code(input, digits),
                Err(TotpError::InvalidCode),
                "{input:?}"
            );
        }
    }

    #[test]
    fn step_at_divides_by_the_period() {
        let params = TotpParameters::default();
        assert_eq!(params.step_at(0), 0);
        assert_eq!(params.step_at(29), 0);
        assert_eq!(params.step_at(30), 1);
        assert_eq!(params.step_at(1_111_111_109), 37_037_036);
    }

    #[test]
    fn code_at_matches_rfc_4226_counters() {
        let params = TotpParameters::default();
        // RFC 4226 Appendix D, counters 0 and 1.
        assert_eq!(params.code_at(&rfc_secret(), 0), "755224");
        assert_eq!(params.code_at(&rfc_secret(), 59), "287082");
    }

    #[test]
    fn matching_step_accepts_the_skew_window_only() {
        let params = TotpParameters::default();
        let secret = rfc_secret();
        let now = 1_000 * 30 + 7;
        let current = params.step_at(now);
        let code_for = |step: u64| params.code_at(&secret, step * 30);

        assert_eq!(
            params.matching_step(&secret, &code_for(current - 1), now),
            Some(current - 1)
        );
        assert_eq!(
            params.matching_step(&secret, &code_for(current), now),
            Some(current)
        );
        assert_eq!(
            params.matching_step(&secret, &code_for(current + 1), now),
            Some(current + 1)
        );
        assert_eq!(
            params.matching_step(&secret, &code_for(current - 2), now),
            None
        );
        assert_eq!(
            params.matching_step(&secret, &code_for(current + 2), now),
            None
        );
    }

    #[test]
    fn matching_step_honours_a_wider_skew() {
        let params = TotpParameters {
            skew: 2,
            ..TotpParameters::default()
        };
        let secret = rfc_secret();
        let now = 1_000 * 30;
        let two_back = params.code_at(&secret, 998 * 30);
        assert_eq!(params.matching_step(&secret, &two_back, now), Some(998));
        let three_back = params.code_at(&secret, 997 * 30);
        assert_eq!(params.matching_step(&secret, &three_back, now), None);
    }

    #[test]
    fn matching_step_without_skew_accepts_only_the_current_step() {
        let params = TotpParameters {
            skew: 0,
            ..TotpParameters::default()
        };
        let secret = rfc_secret();
        let now = 1_000 * 30;
        assert_eq!(
            params.matching_step(&secret, &params.code_at(&secret, now), now),
            Some(1_000)
        );
        assert_eq!(
            params.matching_step(&secret, &params.code_at(&secret, now - 30), now),
            None
        );
    }

    #[test]
    fn matching_step_near_the_epoch_does_not_underflow() {
        let params = TotpParameters::default();
        let secret = rfc_secret();
        assert_eq!(params.matching_step(&secret, "755224", 5), Some(0));
        assert_eq!(params.matching_step(&secret, "287082", 5), Some(1));
    }

    #[test]
    fn matching_step_rejects_malformed_codes() {
        let params = TotpParameters::default();
        let secret = rfc_secret();
        let code = params.code_at(&secret, 0);
        assert_eq!(params.matching_step(&secret, &format!(" {code}"), 0), None);
        assert_eq!(params.matching_step(&secret, &code[..5], 0), None);
        assert_eq!(params.matching_step(&secret, "", 0), None);
    }

    #[test]
    fn invalid_parameters_match_nothing() {
        let secret = rfc_secret();
        let code = TotpParameters::default().code_at(&secret, 0);
        let params = TotpParameters {
            skew: 9,
            ..TotpParameters::default()
        };
        assert_eq!(params.matching_step(&secret, &code, 0), None);
    }
}
