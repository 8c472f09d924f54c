//! Name records, grants, presence records and room messages: round trips through CBOR and JSON,
//! and every signed field covered by its signature.

use overlay_chat::{
    ChatError, Grant, MAX_CLOCK_SKEW_MS, MAX_GRANT_LIFETIME_MS, NameRecord, PresenceRecord, RoomMessage,
    UserKeys, UserPublic, validate_name,
};

const NOW: u64 = 1_800_000_000_000;
const HOUR: u64 = 60 * 60 * 1000;

fn node_key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

fn other_public() -> UserPublic {
    UserKeys::generate().public()
}

/// A named change to one field of a record.
type Tampering<'a, T> = (&'a str, Box<dyn Fn(&mut T)>);

/// Applies each tampering to a copy of `good` and asserts that `verify` refuses every one.
fn assert_all_refused<T: Clone>(
    good: &T,
    tamperings: Vec<Tampering<'_, T>>,
    verify: impl Fn(&T) -> Result<(), ChatError>,
) {
    verify(good).expect("the untampered record verifies");
    for (field, tamper) in tamperings {
        let mut bad = good.clone();
        tamper(&mut bad);
        assert!(verify(&bad).is_err(), "tampering with {field} went unnoticed");
    }
}

#[test]
fn names_follow_the_rule() {
    for ok in ["a", "7", "alice", "bob_2", "x.y-z", "a.", &"n".repeat(64)] {
        assert!(validate_name(ok).is_ok(), "{ok:?}");
    }
    for bad in
        ["", "Alice", "al ice", "al/ice", "élise", "a\0", ".", "..", ".alice", "-rf", "_x", &"n".repeat(65)]
    {
        assert!(matches!(validate_name(bad), Err(ChatError::NameInvalid(_))), "{bad:?}");
    }
}

#[test]
fn user_public_text_form_round_trips_and_fingerprints_are_short() {
    let public = UserKeys::generate().public();
    let text = public.to_string();
    assert_eq!(text.len(), 86);
    assert_eq!(text.parse::<UserPublic>().expect("parses"), public);
    assert!("not base64!".parse::<UserPublic>().is_err());
    assert!(text[..43].parse::<UserPublic>().is_err(), "one key alone is not a UserPublic");
    let fp = public.fingerprint();
    assert_eq!(fp.len(), 24);
    assert_eq!(fp, public.fingerprint());
    assert_ne!(fp, other_public().fingerprint());
}

#[test]
fn debug_output_shows_no_secret() {
    let keys = UserKeys::from_secrets([7; 32], [9; 32]);
    let shown = format!("{keys:?}");
    assert!(shown.contains(&keys.public().fingerprint()));
    assert!(!shown.contains("7, 7, 7") && !shown.contains("9, 9, 9"), "{shown}");
}

#[test]
fn name_record_round_trips_and_covers_every_field() {
    let owner = UserKeys::generate();
    let record = NameRecord::sign(&owner, "alice", 1, false, NOW).expect("valid");
    assert_eq!(NameRecord::from_cbor(&record.to_cbor()).expect("decodes"), record);
    let json = serde_json::to_string(&record).expect("encodes");
    assert_eq!(serde_json::from_str::<NameRecord>(&json).expect("decodes"), record);

    assert_all_refused(
        &record,
        vec![
            ("name", Box::new(|r: &mut NameRecord| r.name = "alicf".into())),
            ("owner.sign", Box::new(|r: &mut NameRecord| r.owner.sign = other_public().sign)),
            ("owner.seal", Box::new(|r: &mut NameRecord| r.owner.seal = other_public().seal)),
            ("version", Box::new(|r: &mut NameRecord| r.version += 1)),
            ("released", Box::new(|r: &mut NameRecord| r.released = true)),
            ("issued_ms", Box::new(|r: &mut NameRecord| r.issued_ms += 1)),
            ("signature", Box::new(|r: &mut NameRecord| r.signature[0] ^= 1)),
        ],
        NameRecord::verify,
    );
    assert!(NameRecord::sign(&owner, "Alice", 1, false, NOW).is_err());
}

#[test]
fn only_the_owner_updates_a_name_until_it_is_released() {
    let alice = UserKeys::generate();
    let mallory = UserKeys::generate();
    let v1 = NameRecord::sign(&alice, "alice", 1, false, NOW).expect("valid");
    let v2 = NameRecord::sign(&alice, "alice", 2, false, NOW).expect("valid");
    NameRecord::verify_successor(&v1, &v2).expect("the owner updates");

    let stolen = NameRecord::sign(&mallory, "alice", 5, false, NOW).expect("valid");
    assert!(matches!(NameRecord::verify_successor(&v2, &stolen), Err(ChatError::NotOwner)));
    assert!(matches!(
        NameRecord::verify_successor(&v2, &v1),
        Err(ChatError::StaleVersion { current: 2, next: 1 })
    ));
    assert!(matches!(NameRecord::verify_successor(&v2, &v2), Err(ChatError::StaleVersion { .. })));
    let other_name = NameRecord::sign(&alice, "alicia", 3, false, NOW).expect("valid");
    assert!(matches!(NameRecord::verify_successor(&v2, &other_name), Err(ChatError::NameMismatch { .. })));

    // The owner may rotate the sealing key: same signing key, new sealing key.
    let rotated_keys = UserKeys::from_secrets(alice.signing_key().to_bytes(), [42; 32]);
    let rotated = NameRecord::sign(&rotated_keys, "alice", 3, false, NOW).expect("valid");
    NameRecord::verify_successor(&v2, &rotated).expect("a new sealing key under the same owner");

    let mut forged = stolen.clone();
    forged.owner = alice.public();
    assert!(matches!(NameRecord::verify_successor(&v2, &forged), Err(ChatError::BadSignature)));

    let released = NameRecord::sign(&alice, "alice", 4, true, NOW).expect("valid");
    NameRecord::verify_successor(&rotated, &released).expect("the owner releases");
    NameRecord::verify_successor(&released, &stolen).expect("a released name is free to claim");
    let stale_claim = NameRecord::sign(&mallory, "alice", 4, false, NOW).expect("valid");
    assert!(matches!(
        NameRecord::verify_successor(&released, &stale_claim),
        Err(ChatError::StaleVersion { .. })
    ));
}

#[test]
fn grant_round_trips_and_covers_every_field() {
    let user = UserKeys::generate();
    let node = node_key(1).verifying_key().to_bytes();
    let grant = Grant::sign(&user, "alice", node, NOW, NOW + HOUR).expect("valid");
    assert_eq!(Grant::from_cbor(&grant.to_cbor()).expect("decodes"), grant);
    let json = serde_json::to_string(&grant).expect("encodes");
    assert_eq!(serde_json::from_str::<Grant>(&json).expect("decodes"), grant);

    let other_node = node_key(2).verifying_key().to_bytes();
    assert_all_refused(
        &grant,
        vec![
            ("name", Box::new(|g: &mut Grant| g.name = "bob".into())),
            ("user", Box::new(|g: &mut Grant| g.user = other_public().sign)),
            ("node", Box::new(move |g: &mut Grant| g.node = other_node)),
            ("issued_ms", Box::new(|g: &mut Grant| g.issued_ms -= 1)),
            ("expires_ms", Box::new(|g: &mut Grant| g.expires_ms += 1)),
            ("nonce", Box::new(|g: &mut Grant| g.nonce[3] ^= 1)),
            ("signature", Box::new(|g: &mut Grant| g.signature[63] ^= 1)),
        ],
        |g| g.verify(&node, NOW + 1),
    );
    assert_ne!(Grant::sign(&user, "alice", node, NOW, NOW + HOUR).expect("valid").nonce, grant.nonce);
}

#[test]
fn grant_refuses_other_nodes_and_the_wrong_time() {
    let user = UserKeys::generate();
    let node = node_key(1).verifying_key().to_bytes();
    let other_node = node_key(2).verifying_key().to_bytes();
    let grant = Grant::sign(&user, "alice", node, NOW, NOW + HOUR).expect("valid");

    grant.verify(&node, NOW).expect("valid at issue");
    grant.verify(&node, NOW - MAX_CLOCK_SKEW_MS).expect("a clock slightly behind is tolerated");
    assert!(matches!(grant.verify(&other_node, NOW), Err(ChatError::WrongNode)));
    assert!(matches!(grant.verify(&node, NOW + HOUR), Err(ChatError::Expired)));
    assert!(matches!(grant.verify(&node, NOW - MAX_CLOCK_SKEW_MS - 1), Err(ChatError::NotYetValid)));

    assert!(matches!(
        Grant::sign(&user, "alice", node, NOW, NOW + MAX_GRANT_LIFETIME_MS + 1),
        Err(ChatError::GrantTooLong { .. })
    ));
    Grant::sign(&user, "alice", node, NOW, NOW + MAX_GRANT_LIFETIME_MS).expect("exactly the cap");
    assert!(matches!(Grant::sign(&user, "alice", node, NOW, NOW), Err(ChatError::Malformed(_))));
}

struct Login {
    owner: UserKeys,
    name_record: NameRecord,
    node: ed25519_dalek::SigningKey,
    presence: PresenceRecord,
}

fn login() -> Login {
    let owner = UserKeys::generate();
    let name_record = NameRecord::sign(&owner, "alice", 1, false, NOW).expect("valid");
    let node = node_key(1);
    let grant =
        Grant::sign(&owner, "alice", node.verifying_key().to_bytes(), NOW, NOW + HOUR).expect("valid");
    let presence = PresenceRecord::sign(&node, grant, "/ip4/127.0.0.1/tcp/4001", true, NOW + HOUR / 2, 1)
        .expect("valid");
    Login { owner, name_record, node, presence }
}

#[test]
fn presence_round_trips_and_covers_every_field() {
    let Login { name_record, presence, .. } = login();
    presence.verify(&name_record, NOW + 1).expect("valid");
    assert_eq!(PresenceRecord::from_cbor(&presence.to_cbor()).expect("decodes"), presence);
    let json = serde_json::to_string(&presence).expect("encodes");
    assert_eq!(serde_json::from_str::<PresenceRecord>(&json).expect("decodes"), presence);

    assert_all_refused(
        &presence,
        vec![
            ("name", Box::new(|p: &mut PresenceRecord| p.name = "bob".into())),
            ("user", Box::new(|p: &mut PresenceRecord| p.user = other_public().sign)),
            ("node", Box::new(|p: &mut PresenceRecord| p.node = node_key(2).verifying_key().to_bytes())),
            ("node_addr", Box::new(|p: &mut PresenceRecord| p.node_addr.push('1'))),
            ("online", Box::new(|p: &mut PresenceRecord| p.online = false)),
            ("until_ms", Box::new(|p: &mut PresenceRecord| p.until_ms -= 1)),
            ("seq", Box::new(|p: &mut PresenceRecord| p.seq += 1)),
            ("grant.expires_ms", Box::new(|p: &mut PresenceRecord| p.grant.expires_ms -= 1)),
            ("grant.signature", Box::new(|p: &mut PresenceRecord| p.grant.signature[0] ^= 1)),
            ("signature", Box::new(|p: &mut PresenceRecord| p.signature[0] ^= 1)),
        ],
        |p| p.verify(&name_record, NOW + 1),
    );
}

#[test]
fn presence_needs_the_owners_grant_to_the_signing_node() {
    let Login { owner, name_record, node, presence } = login();

    // A grant signed by someone else than the name's owner.
    let mallory = UserKeys::generate();
    let stolen =
        Grant::sign(&mallory, "alice", node.verifying_key().to_bytes(), NOW, NOW + HOUR).expect("valid");
    let forged = PresenceRecord::sign(&node, stolen, "addr", true, NOW + HOUR, 1).expect("signs");
    assert!(matches!(forged.verify(&name_record, NOW), Err(ChatError::NotOwner)));

    // Another node presenting the owner's grant to the first node.
    let thief = node_key(3);
    assert!(matches!(
        PresenceRecord::sign(&thief, presence.grant.clone(), "addr", true, NOW + HOUR, 1),
        Err(ChatError::WrongNode)
    ));
    let mut relabelled = presence.clone();
    relabelled.node = thief.verifying_key().to_bytes();
    assert!(relabelled.verify(&name_record, NOW).is_err());

    // Presence may not outlive its grant; both expire.
    assert!(PresenceRecord::sign(&node, presence.grant.clone(), "addr", true, NOW + HOUR + 1, 2).is_err());
    assert!(matches!(presence.verify(&name_record, NOW + HOUR / 2), Err(ChatError::Expired)));

    // A released name has no presence; nor does another name's record vouch for it.
    let released = NameRecord::sign(&owner, "alice", 2, true, NOW).expect("valid");
    assert!(matches!(presence.verify(&released, NOW), Err(ChatError::Released)));
    let bobs = NameRecord::sign(&owner, "bob", 1, false, NOW).expect("valid");
    assert!(matches!(presence.verify(&bobs, NOW), Err(ChatError::NameMismatch { .. })));

    let renewed =
        PresenceRecord::sign(&node, presence.grant.clone(), "addr", false, NOW + HOUR, 2).expect("valid");
    assert!(renewed.supersedes(&presence) && !presence.supersedes(&renewed));
}

#[test]
fn room_message_round_trips_and_covers_every_field() {
    let alice = UserKeys::generate();
    let message = RoomMessage::sign(&alice, "alice", "lobby", NOW, b"hello, room").expect("valid");
    assert_eq!(RoomMessage::from_cbor(&message.to_cbor()).expect("decodes"), message);
    let json = serde_json::to_string(&message).expect("encodes");
    assert_eq!(serde_json::from_str::<RoomMessage>(&json).expect("decodes"), message);

    assert_all_refused(
        &message,
        vec![
            ("room", Box::new(|m: &mut RoomMessage| m.room = "other".into())),
            ("from", Box::new(|m: &mut RoomMessage| m.from = "bob".into())),
            ("from_key", Box::new(|m: &mut RoomMessage| m.from_key = other_public())),
            ("id", Box::new(|m: &mut RoomMessage| m.id[0] ^= 1)),
            ("ts_ms", Box::new(|m: &mut RoomMessage| m.ts_ms += 1)),
            ("body", Box::new(|m: &mut RoomMessage| m.body.push(b'!'))),
            ("signature", Box::new(|m: &mut RoomMessage| m.signature[5] ^= 1)),
        ],
        RoomMessage::verify,
    );

    // Signed by Mallory under Alice's keys and name.
    let mallory = UserKeys::generate();
    let mut forged = RoomMessage::sign(&mallory, "alice", "lobby", NOW, b"hi").expect("valid");
    forged.from_key = alice.public();
    assert!(matches!(forged.verify(), Err(ChatError::BadSignature)));
}

#[test]
fn a_signature_for_one_kind_of_record_is_worthless_for_another() {
    // The same signer and the same signature bytes, moved from a room message onto a name
    // record: the domain tags differ, so it cannot verify.
    let alice = UserKeys::generate();
    let message = RoomMessage::sign(&alice, "alice", "lobby", NOW, b"x").expect("valid");
    let mut record = NameRecord::sign(&alice, "alice", 1, false, NOW).expect("valid");
    record.signature = message.signature;
    assert!(matches!(record.verify(), Err(ChatError::BadSignature)));
}
