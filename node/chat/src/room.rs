//! Room messages: [`RoomMessage`], signed by their sender and sent in the clear.
//!
//! A room is a multicast group: everyone who joins reads every message, so sealing would hide
//! nothing from members and the overlay's nodes carry the group anyway. What matters is who wrote
//! a message, so each one is signed by its sender's ed25519 key over every field, the room
//! included (a message cannot be replayed into another room). As with direct messages, that
//! `from` is the name `from_key` owns is for the reader to check against the name record, and
//! `(from_key.sign, id)` is the key for a [`crate::ReplayGuard`].

use serde::{Deserialize, Serialize};

use crate::{
    ChatError, MAX_BODY_BYTES, MAX_ENVELOPE_BYTES, UserKeys, UserPublic, bytes, signing, validate_name,
};

/// A message to a room, signed by its sender. JSON form: an object with these fields, `id`,
/// `body` and `signature` as base64url strings; CBOR: a map, those three as byte strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMessage {
    /// The room's name ([`validate_name`]).
    pub room: String,
    /// The sender's user name.
    pub from: String,
    /// The sender's public keys.
    pub from_key: UserPublic,
    /// Random message id.
    #[serde(with = "bytes::fixed")]
    pub id: [u8; 16],
    /// When it was signed, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The message, at most [`MAX_BODY_BYTES`].
    #[serde(with = "bytes::var")]
    pub body: Vec<u8>,
    /// ed25519 signature by `from_key.sign` over the fields above, domain
    /// [`RoomMessage::DOMAIN`].
    #[serde(with = "bytes::fixed")]
    pub signature: [u8; 64],
}

#[derive(Serialize)]
struct RoomSigned<'a> {
    domain: &'static str,
    room: &'a str,
    from: &'a str,
    from_key: &'a UserPublic,
    #[serde(with = "bytes::fixed")]
    id: [u8; 16],
    ts_ms: u64,
    #[serde(with = "bytes::var")]
    body: &'a [u8],
}

impl RoomMessage {
    /// The domain tag of room message signatures.
    pub const DOMAIN: &'static str = "overlay/chat/room/v1";

    /// `sender`'s message (as `from_name`) to `room`, with a fresh random id.
    pub fn sign(
        sender: &UserKeys,
        from_name: &str,
        room: &str,
        ts_ms: u64,
        body: &[u8],
    ) -> Result<RoomMessage, ChatError> {
        let mut message = RoomMessage {
            room: room.to_owned(),
            from: from_name.to_owned(),
            from_key: sender.public(),
            id: rand::random(),
            ts_ms,
            body: body.to_vec(),
            signature: [0; 64],
        };
        message.check_fields()?;
        message.signature = signing::sign(sender.signing_key(), &message.signed());
        Ok(message)
    }

    fn signed(&self) -> RoomSigned<'_> {
        RoomSigned {
            domain: Self::DOMAIN,
            room: &self.room,
            from: &self.from,
            from_key: &self.from_key,
            id: self.id,
            ts_ms: self.ts_ms,
            body: &self.body,
        }
    }

    fn check_fields(&self) -> Result<(), ChatError> {
        validate_name(&self.room)?;
        validate_name(&self.from)?;
        if self.body.len() > MAX_BODY_BYTES {
            return Err(ChatError::TooLarge {
                what: "message body",
                len: self.body.len(),
                max: MAX_BODY_BYTES,
            });
        }
        Ok(())
    }

    /// Checks the message's shape and that `from_key.sign` signed it.
    pub fn verify(&self) -> Result<(), ChatError> {
        self.check_fields()?;
        signing::verify(&self.from_key.sign, &self.signed(), &self.signature)
    }

    /// Encodes the message as CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        signing::to_cbor(self)
    }

    /// Decodes a message from CBOR, refusing more than [`MAX_ENVELOPE_BYTES`] before parsing,
    /// and checks its shape (names, body size). Does not verify the signature.
    pub fn from_cbor(bytes: &[u8]) -> Result<RoomMessage, ChatError> {
        let message: RoomMessage = signing::from_cbor(bytes, MAX_ENVELOPE_BYTES, "room message")?;
        message.check_fields()?;
        Ok(message)
    }
}
