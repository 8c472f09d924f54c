//! Direct messages sealed end to end: [`Envelope`] (what nodes route and store) and [`Plain`]
//! (what the recipient reads).
//!
//! Nodes route and queue envelopes without being able to read them: they can check who sent one
//! ([`Envelope::verify_sender`]), never what it says. Only the holder of the recipient's sealing
//! secret can [`Envelope::open`] it.
//!
//! # Sealing
//! 1. Draw a random 16-byte `id`, a fresh X25519 ephemeral secret `e` and a random 24-byte
//!    `nonce` (XChaCha20's nonces are long enough to draw at random without fear of reuse, and
//!    the key is fresh for every message anyway).
//! 2. `shared = X25519(e, to_key.seal)`; refused if the recipient's key is a low-order point
//!    (the shared secret would not depend on `e`).
//! 3. `key = HKDF-SHA256(salt = none, ikm = shared, info = "overlay/chat/dm-key/v1" ‖
//!    ephemeral ‖ to_key.seal)`, 32 bytes: both public keys in `info` tie the key to this
//!    exchange.
//! 4. `ciphertext = XChaCha20-Poly1305(key, nonce, body, aad)`, where `aad` is the CBOR encoding
//!    of the map `{domain: "overlay/chat/dm-ad/v1", id, from, from_key, to, to_key, seq, ts_ms,
//!    ephemeral}`: the routing fields cannot be swapped onto another ciphertext.
//! 5. `signature` = the sender's ed25519 signature over the CBOR encoding of the map
//!    `{domain: "overlay/chat/dm/v1", id, from, from_key, to, to_key, seq, ts_ms, ephemeral,
//!    nonce, ciphertext}`. Signing the ciphertext (not only the plaintext) lets nodes check the
//!    sender without the recipient's key, and ties the signature to this recipient: Bob cannot
//!    re-seal what Alice signed for him and pass it to Carol as Alice's message to her.
//!
//! Opening checks the signature first, then that the envelope is addressed to the opener's keys
//! ([`ChatError::WrongRecipient`] otherwise), then decrypts. A signature proves which *keys* sent
//! a message; that `from` is the name those keys own is for the caller to check against the
//! name's [`crate::NameRecord`], and that the message is not a replay against a
//! [`crate::ReplayGuard`].
//!
//! # Format
//! CBOR ([`Envelope::to_cbor`], at most [`MAX_ENVELOPE_BYTES`]): a map with the fields below,
//! binary fields as byte strings. JSON ([`Envelope::to_json`], at most
//! [`MAX_ENVELOPE_JSON_BYTES`]; also plain serde_json, for the HTTP API): an object with the same
//! fields, binary fields as base64url strings without padding, about 4/3 the size. Unknown fields
//! are ignored in both.
//!
//! | field        | type                      | meaning |
//! |--------------|---------------------------|---------|
//! | `id`         | 16 bytes                  | random message id; with `from_key.sign`, the replay key |
//! | `from`       | string ([`crate::validate_name`]) | the sender's user name |
//! | `from_key`   | `{sign: 32 bytes, seal: 32 bytes}` | the sender's public keys ([`crate::UserPublic`]) |
//! | `to`         | string                    | the recipient's user name |
//! | `to_key`     | `{sign, seal}`            | the recipient's public keys the message is sealed to |
//! | `seq`        | unsigned integer          | the sender's counter for this recipient: orders messages |
//! | `ts_ms`      | unsigned integer          | when the sender sealed it, ms since the Unix epoch |
//! | `ephemeral`  | 32 bytes                  | the X25519 ephemeral public key |
//! | `nonce`      | 24 bytes                  | the XChaCha20-Poly1305 nonce |
//! | `ciphertext` | bytes (16 to [`MAX_BODY_BYTES`] + 16) | the sealed body and its 16-byte tag |
//! | `signature`  | 64 bytes                  | ed25519 by `from_key.sign`, see Sealing step 5 |
//!
//! The body's length shows through the ciphertext's (no padding), and so do the names, keys and
//! times: nodes need them to route, order and expire messages. There is no forward secrecy
//! against the recipient's sealing key: whoever learns it can open every message sealed to it,
//! past ones included; rotating it (a new name record) limits what one leak opens.

use chacha20poly1305::aead::{Aead as _, Payload};
use chacha20poly1305::{Key, KeyInit as _, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{ChatError, UserKeys, UserPublic, bytes, signing, validate_name};

/// The largest message body, in bytes: 64 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The largest CBOR-encoded envelope: the body, its tag and generous room for the other fields
/// (two names of at most 64 bytes, five keys, the signature and the map's field names).
pub const MAX_ENVELOPE_BYTES: usize = MAX_BODY_BYTES + 4096;

/// The largest JSON-encoded envelope: base64 makes the binary fields 4/3 as long, and JSON adds
/// field names and quotes.
pub const MAX_ENVELOPE_JSON_BYTES: usize = MAX_ENVELOPE_BYTES * 4 / 3 + 4096;

/// The Poly1305 tag appended to every ciphertext.
const TAG_BYTES: usize = 16;

/// A direct message sealed to its recipient and signed by its sender; see the module docs for
/// the construction and the format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Random message id.
    #[serde(with = "bytes::fixed")]
    pub id: [u8; 16],
    /// The sender's user name.
    pub from: String,
    /// The sender's public keys.
    pub from_key: UserPublic,
    /// The recipient's user name.
    pub to: String,
    /// The recipient's public keys, the ones the message is sealed to.
    pub to_key: UserPublic,
    /// The sender's counter for this recipient.
    pub seq: u64,
    /// When it was sealed, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The X25519 ephemeral public key.
    #[serde(with = "bytes::fixed")]
    pub ephemeral: [u8; 32],
    /// The XChaCha20-Poly1305 nonce.
    #[serde(with = "bytes::fixed")]
    pub nonce: [u8; 24],
    /// The sealed body with its tag.
    #[serde(with = "bytes::var")]
    pub ciphertext: Vec<u8>,
    /// The sender's ed25519 signature.
    #[serde(with = "bytes::fixed")]
    pub signature: [u8; 64],
}

/// An opened envelope: who sent what, verified and decrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plain {
    /// The message id.
    pub id: [u8; 16],
    /// The sender's user name (as the sender claims: check it against the name record).
    pub from: String,
    /// The sender's public keys, whose signature was verified.
    pub from_key: UserPublic,
    /// The recipient's user name.
    pub to: String,
    /// The sender's counter for this recipient.
    pub seq: u64,
    /// When it was sealed, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The message.
    pub body: Vec<u8>,
}

/// The associated data: every routing field, bound to the ciphertext by the AEAD tag.
#[derive(Serialize)]
struct Header<'a> {
    domain: &'static str,
    #[serde(with = "bytes::fixed")]
    id: [u8; 16],
    from: &'a str,
    from_key: &'a UserPublic,
    to: &'a str,
    to_key: &'a UserPublic,
    seq: u64,
    ts_ms: u64,
    #[serde(with = "bytes::fixed")]
    ephemeral: [u8; 32],
}

/// What the sender signs: the associated data (every routing field) and the sealed body.
#[derive(Serialize)]
struct EnvelopeSigned<'a> {
    domain: &'static str,
    header: Header<'a>,
    #[serde(with = "bytes::fixed")]
    nonce: [u8; 24],
    #[serde(with = "bytes::var")]
    ciphertext: &'a [u8],
}

impl Envelope {
    /// The domain tag of envelope signatures.
    pub const DOMAIN: &'static str = "overlay/chat/dm/v1";
    /// The domain tag of the associated data.
    const AD_DOMAIN: &'static str = "overlay/chat/dm-ad/v1";
    /// The HKDF `info` prefix.
    const KEY_DOMAIN: &'static [u8] = b"overlay/chat/dm-key/v1";

    /// Seals `body` from `sender` (as `from_name`) to `recipient` (as `to_name`) and signs it.
    ///
    /// Refuses invalid names, a body over [`MAX_BODY_BYTES`], and a recipient sealing key that is
    /// a low-order point ([`ChatError::Malformed`]).
    pub fn seal(
        sender: &UserKeys,
        from_name: &str,
        to_name: &str,
        recipient: &UserPublic,
        seq: u64,
        ts_ms: u64,
        body: &[u8],
    ) -> Result<Envelope, ChatError> {
        validate_name(from_name)?;
        validate_name(to_name)?;
        if body.len() > MAX_BODY_BYTES {
            return Err(ChatError::TooLarge { what: "message body", len: body.len(), max: MAX_BODY_BYTES });
        }
        let ephemeral_secret = StaticSecret::from(rand::random::<[u8; 32]>());
        let ephemeral = PublicKey::from(&ephemeral_secret).to_bytes();
        let shared = ephemeral_secret.diffie_hellman(&PublicKey::from(recipient.seal));
        if !shared.was_contributory() {
            return Err(ChatError::Malformed("the recipient's sealing key is a low-order point".into()));
        }
        let mut envelope = Envelope {
            id: rand::random(),
            from: from_name.to_owned(),
            from_key: sender.public(),
            to: to_name.to_owned(),
            to_key: *recipient,
            seq,
            ts_ms,
            ephemeral,
            nonce: rand::random(),
            ciphertext: Vec::new(),
            signature: [0; 64],
        };
        let cipher = Self::cipher(shared.as_bytes(), &ephemeral, &recipient.seal);
        let aad = signing::signed_bytes(&envelope.header());
        envelope.ciphertext =
            cipher.encrypt(XNonce::from_slice(&envelope.nonce), Payload { msg: body, aad: &aad }).map_err(
                |_| ChatError::TooLarge { what: "message body", len: body.len(), max: MAX_BODY_BYTES },
            )?;
        envelope.signature = signing::sign(sender.signing_key(), &envelope.signed());
        Ok(envelope)
    }

    fn cipher(shared: &[u8; 32], ephemeral: &[u8; 32], recipient_seal: &[u8; 32]) -> XChaCha20Poly1305 {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, shared)
            .expand_multi_info(&[Self::KEY_DOMAIN, ephemeral, recipient_seal], key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        XChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
    }

    fn header(&self) -> Header<'_> {
        Header {
            domain: Self::AD_DOMAIN,
            id: self.id,
            from: &self.from,
            from_key: &self.from_key,
            to: &self.to,
            to_key: &self.to_key,
            seq: self.seq,
            ts_ms: self.ts_ms,
            ephemeral: self.ephemeral,
        }
    }

    fn signed(&self) -> EnvelopeSigned<'_> {
        EnvelopeSigned {
            domain: Self::DOMAIN,
            header: self.header(),
            nonce: self.nonce,
            ciphertext: &self.ciphertext,
        }
    }

    /// Checks the envelope's shape: valid names and a ciphertext of a possible length.
    pub fn check_fields(&self) -> Result<(), ChatError> {
        validate_name(&self.from)?;
        validate_name(&self.to)?;
        let len = self.ciphertext.len();
        if len < TAG_BYTES {
            return Err(ChatError::Malformed("ciphertext shorter than its tag".into()));
        }
        if len > MAX_BODY_BYTES + TAG_BYTES {
            return Err(ChatError::TooLarge { what: "ciphertext", len, max: MAX_BODY_BYTES + TAG_BYTES });
        }
        Ok(())
    }

    /// Checks the envelope's shape and that `from_key.sign` signed it. What nodes call: it needs
    /// no secret.
    pub fn verify_sender(&self) -> Result<(), ChatError> {
        self.check_fields()?;
        signing::verify(&self.from_key.sign, &self.signed(), &self.signature)
    }

    /// Verifies the sender's signature, then decrypts with the recipient's keys.
    ///
    /// Errors: [`ChatError::BadSignature`] (forged or altered), [`ChatError::WrongRecipient`]
    /// (sealed to other keys), [`ChatError::Undecryptable`] (signed, but not sealed correctly).
    pub fn open(&self, recipient: &UserKeys) -> Result<Plain, ChatError> {
        self.verify_sender()?;
        if recipient.public() != self.to_key {
            return Err(ChatError::WrongRecipient);
        }
        let shared = recipient.seal_secret().diffie_hellman(&PublicKey::from(self.ephemeral));
        if !shared.was_contributory() {
            return Err(ChatError::Undecryptable);
        }
        let cipher = Self::cipher(shared.as_bytes(), &self.ephemeral, &self.to_key.seal);
        let aad = signing::signed_bytes(&self.header());
        let body = cipher
            .decrypt(XNonce::from_slice(&self.nonce), Payload { msg: &self.ciphertext, aad: &aad })
            .map_err(|_| ChatError::Undecryptable)?;
        Ok(Plain {
            id: self.id,
            from: self.from.clone(),
            from_key: self.from_key,
            to: self.to.clone(),
            seq: self.seq,
            ts_ms: self.ts_ms,
            body,
        })
    }

    /// Encodes the envelope as JSON (binary fields as base64url).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Envelope always encodes as JSON")
    }

    /// Decodes an envelope from JSON, refusing more than [`MAX_ENVELOPE_JSON_BYTES`] before
    /// parsing, and checks its shape ([`Envelope::check_fields`]). Does not verify the signature.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, ChatError> {
        if bytes.len() > MAX_ENVELOPE_JSON_BYTES {
            return Err(ChatError::TooLarge {
                what: "envelope (JSON)",
                len: bytes.len(),
                max: MAX_ENVELOPE_JSON_BYTES,
            });
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| ChatError::Malformed(format!("envelope: {e}")))?;
        envelope.check_fields()?;
        Ok(envelope)
    }

    /// Encodes the envelope as CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        signing::to_cbor(self)
    }

    /// Decodes an envelope from CBOR, refusing more than [`MAX_ENVELOPE_BYTES`] before parsing,
    /// and checks its shape ([`Envelope::check_fields`]). Does not verify the signature.
    pub fn from_cbor(bytes: &[u8]) -> Result<Envelope, ChatError> {
        let envelope: Envelope = signing::from_cbor(bytes, MAX_ENVELOPE_BYTES, "envelope")?;
        envelope.check_fields()?;
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender who signs a ciphertext that was not sealed correctly: the signature holds, so
    /// only the AEAD tag can tell, and opening says so rather than returning garbage.
    #[test]
    fn a_signed_but_broken_ciphertext_is_undecryptable() {
        let alice = UserKeys::generate();
        let bob = UserKeys::generate();
        let mut envelope = Envelope::seal(&alice, "alice", "bob", &bob.public(), 1, 0, b"hi").expect("seals");
        envelope.ciphertext[0] ^= 1;
        envelope.signature = signing::sign(alice.signing_key(), &envelope.signed());
        envelope.verify_sender().expect("the signature is good");
        assert!(matches!(envelope.open(&bob), Err(ChatError::Undecryptable)));
    }

    /// The associated data binds the routing fields even for a sender who re-signs: moving a
    /// ciphertext under another `seq` does not decrypt.
    #[test]
    fn the_routing_fields_are_bound_to_the_ciphertext() {
        let alice = UserKeys::generate();
        let bob = UserKeys::generate();
        let mut envelope = Envelope::seal(&alice, "alice", "bob", &bob.public(), 1, 0, b"hi").expect("seals");
        envelope.seq = 2;
        envelope.signature = signing::sign(alice.signing_key(), &envelope.signed());
        assert!(matches!(envelope.open(&bob), Err(ChatError::Undecryptable)));
    }
}
