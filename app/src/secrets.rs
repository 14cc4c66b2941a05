//! Fresh random values: session and device tokens, recovery codes, TOTP
//! secrets. Randomness enters here and goes to the domain with commands.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use twofold_domain::totp::TotpSecret;

use crate::error::AppError;

/// 256 random bits, URL-safe: session and device tokens.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Ten single-use recovery codes shown once, as `xxxx-xxxx-xxxx` (60 bits each).
pub fn new_recovery_codes(count: usize) -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    (0..count)
        .map(|_| {
            let mut bytes = [0u8; 12];
            OsRng.fill_bytes(&mut bytes);
            let chars: Vec<char> = bytes
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
                .collect();
            chars
                .chunks(4)
                .map(|chunk| chunk.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

pub fn new_totp_secret() -> Result<TotpSecret, AppError> {
    let mut bytes = vec![0u8; 20];
    OsRng.fill_bytes(&mut bytes);
    TotpSecret::from_bytes(bytes).map_err(|error| AppError::Internal(error.to_string()))
}

/// Six random digits: an emailed sign-in code.
pub fn new_email_code() -> String {
    use rand::Rng;
    format!("{:06}", OsRng.gen_range(0..1_000_000))
}
