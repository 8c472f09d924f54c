//! A chat user's identity: [`UserKeys`] (secret, held only by the user's client) and
//! [`UserPublic`] (what everyone else sees).
//!
//! A user holds two unrelated key pairs: an ed25519 key that signs (names, grants, messages) and a
//! static X25519 key that others seal direct messages to. Keeping them separate avoids using one
//! secret in two algorithms; the binding between them is the user's signature over both, which
//! every signed record that carries a [`UserPublic`] provides (the name record above all).
//!
//! Secrets never appear in `Debug` output, and are zeroed when dropped (the dalek crates' zeroize).

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use x25519_dalek::StaticSecret;

use crate::{ChatError, bytes};

/// A user's secret keys. Only the user's client holds these (see [`crate::KeyDir`]).
#[derive(Clone)]
pub struct UserKeys {
    sign: SigningKey,
    seal: StaticSecret,
}

impl UserKeys {
    /// New keys from the operating system's randomness (through the thread-local CSPRNG).
    pub fn generate() -> UserKeys {
        UserKeys::from_secrets(rand::random(), rand::random())
    }

    /// Keys from their 32-byte secrets: the ed25519 secret key and the X25519 static secret.
    pub fn from_secrets(sign: [u8; 32], seal: [u8; 32]) -> UserKeys {
        UserKeys { sign: SigningKey::from_bytes(&sign), seal: StaticSecret::from(seal) }
    }

    /// The public half, to publish.
    pub fn public(&self) -> UserPublic {
        UserPublic {
            sign: self.sign.verifying_key().to_bytes(),
            seal: x25519_dalek::PublicKey::from(&self.seal).to_bytes(),
        }
    }

    /// The ed25519 signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.sign
    }

    pub(crate) fn seal_secret(&self) -> &StaticSecret {
        &self.seal
    }

    /// The two secrets, for storage only.
    pub(crate) fn secrets(&self) -> ([u8; 32], [u8; 32]) {
        (self.sign.to_bytes(), self.seal.to_bytes())
    }
}

impl fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKeys").field("public", &self.public()).finish_non_exhaustive()
    }
}

/// A user's public keys: `sign` verifies the user's signatures (ed25519), `seal` is the X25519
/// key direct messages to the user are sealed to.
///
/// Text form ([`fmt::Display`], [`FromStr`]): base64url without padding of `sign ‖ seal`, 86
/// characters. JSON form: `{"sign": "<base64url>", "seal": "<base64url>"}`. CBOR form: a map of
/// two 32-byte byte strings.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserPublic {
    /// ed25519 public key.
    #[serde(with = "bytes::fixed")]
    pub sign: [u8; 32],
    /// X25519 public key.
    #[serde(with = "bytes::fixed")]
    pub seal: [u8; 32],
}

impl UserPublic {
    /// A short, stable name for these keys, for people to compare out of band: the first 10
    /// bytes of SHA-256 over a domain tag and both keys, as five groups of four hex digits
    /// (`"1a2b-3c4d-5e6f-7081-92a3"`). 80 bits: enough that nobody finds a second key pair with
    /// the same fingerprint by trying.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"overlay/chat/fingerprint/v1")
            .chain_update(self.sign)
            .chain_update(self.seal)
            .finalize();
        let groups: Vec<String> =
            digest[..10].chunks(2).map(|g| format!("{:02x}{:02x}", g[0], g[1])).collect();
        groups.join("-")
    }
}

impl fmt::Display for UserPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut both = [0u8; 64];
        both[..32].copy_from_slice(&self.sign);
        both[32..].copy_from_slice(&self.seal);
        f.write_str(&bytes::encode(&both))
    }
}

impl fmt::Debug for UserPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserPublic({})", self.fingerprint())
    }
}

impl FromStr for UserPublic {
    type Err = ChatError;

    fn from_str(text: &str) -> Result<UserPublic, ChatError> {
        let both = bytes::decode(text.trim()).map_err(ChatError::Malformed)?;
        if both.len() != 64 {
            return Err(ChatError::Malformed(format!("public keys are 64 bytes, found {}", both.len())));
        }
        let mut public = UserPublic { sign: [0; 32], seal: [0; 32] };
        public.sign.copy_from_slice(&both[..32]);
        public.seal.copy_from_slice(&both[32..]);
        Ok(public)
    }
}
