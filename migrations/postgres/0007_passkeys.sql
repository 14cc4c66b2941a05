-- Passkeys (WebAuthn credentials, issue #17).

-- The directory keeps each factor apart, so that 2FA stays on while either
-- is: `two_factor_status` is `enabled` when `totp_status` is or `passkeys`
-- is above zero. Until now the status was the authenticator app's own.
ALTER TABLE user_directory ADD COLUMN totp_status TEXT NOT NULL DEFAULT 'disabled';
ALTER TABLE user_directory ADD COLUMN passkeys bigint NOT NULL DEFAULT 0;
UPDATE user_directory SET totp_status = two_factor_status;

-- Which user holds a credential id: claimed by the application before a
-- registration is stored (a credential id is unique across users) and
-- released when the passkey goes. Read to find the user of a sign-in
-- without a password. Not a read model: a rebuild leaves it as it is.
CREATE TABLE passkey_credentials (
    credential_id TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL
);
CREATE INDEX passkey_credentials_user ON passkey_credentials (user_id);

-- Sign-ins without a password under way: no user is known yet, so the
-- WebAuthn library's state (with its single-use challenge) waits here
-- until the answer takes it (deleted as it is read) or it expires.
CREATE TABLE passkey_sign_ins (
    challenge_id    TEXT PRIMARY KEY,
    ceremony_secret TEXT NOT NULL,
    expires_at      timestamptz NOT NULL
);
