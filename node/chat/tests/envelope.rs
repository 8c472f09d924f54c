//! Sealed direct messages: who can open them, what tampering is caught, and the encodings.

use overlay_chat::{
    ChatError, Envelope, MAX_BODY_BYTES, MAX_ENVELOPE_BYTES, MAX_ENVELOPE_JSON_BYTES, UserKeys, UserPublic,
};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000_000;

fn sealed(body: &[u8]) -> (UserKeys, UserKeys, Envelope) {
    let alice = UserKeys::generate();
    let bob = UserKeys::generate();
    let envelope = Envelope::seal(&alice, "alice", "bob", &bob.public(), 7, NOW, body).expect("seals");
    (alice, bob, envelope)
}

#[test]
fn the_recipient_opens_what_the_sender_sealed() {
    let (alice, bob, envelope) = sealed(b"hello, bob");
    envelope.verify_sender().expect("signed by alice");
    let plain = envelope.open(&bob).expect("opens");
    assert_eq!(plain.body, b"hello, bob");
    assert_eq!((plain.from.as_str(), plain.to.as_str()), ("alice", "bob"));
    assert_eq!(plain.from_key, alice.public());
    assert_eq!((plain.id, plain.seq, plain.ts_ms), (envelope.id, 7, NOW));

    let empty = Envelope::seal(&alice, "alice", "bob", &bob.public(), 8, NOW, b"").expect("seals");
    assert_eq!(empty.open(&bob).expect("opens").body, b"");
}

#[test]
fn nobody_else_opens_it_not_even_the_sender() {
    let (alice, _bob, envelope) = sealed(b"for bob only");
    let carol = UserKeys::generate();
    assert!(matches!(envelope.open(&carol), Err(ChatError::WrongRecipient)));
    assert!(matches!(envelope.open(&alice), Err(ChatError::WrongRecipient)));
}

#[test]
fn an_envelope_relabelled_for_another_recipient_does_not_open() {
    // Mallory points an envelope sealed to Bob at Carol: the signature breaks; and even a
    // recipient holding Bob's signing key with a different sealing key cannot decrypt it.
    let (_alice, bob, envelope) = sealed(b"secret");
    let carol = UserKeys::generate();
    let mut relabelled = envelope.clone();
    relabelled.to_key = carol.public();
    assert!(matches!(relabelled.open(&carol), Err(ChatError::BadSignature)));
    let bob_new_seal = UserKeys::from_secrets(bob.signing_key().to_bytes(), [5; 32]);
    assert!(matches!(envelope.open(&bob_new_seal), Err(ChatError::WrongRecipient)));
}

#[test]
fn the_ciphertext_does_not_contain_the_body() {
    let body = b"a recognisable plaintext, long enough to notice".repeat(4);
    let (_alice, _bob, envelope) = sealed(&body);
    assert_eq!(envelope.ciphertext.len(), body.len() + 16);
    let wire = envelope.to_cbor();
    for window in [&body[..16], &body[40..56]] {
        assert!(!wire.windows(window.len()).any(|w| w == window), "plaintext visible on the wire");
    }
}

#[test]
fn every_field_is_covered_by_the_signature() {
    let (_alice, bob, envelope) = sealed(b"tamper with me");
    let other = UserKeys::generate().public();
    type Tampering = (&'static str, Box<dyn Fn(&mut Envelope)>);
    let tamperings: Vec<Tampering> = vec![
        ("id", Box::new(|e| e.id[0] ^= 1)),
        ("from", Box::new(|e| e.from = "alicf".into())),
        ("from_key.sign", Box::new(move |e| e.from_key.sign = other.sign)),
        ("from_key.seal", Box::new(move |e| e.from_key.seal = other.seal)),
        ("to", Box::new(|e| e.to = "bobby".into())),
        ("to_key.sign", Box::new(move |e| e.to_key.sign = other.sign)),
        ("to_key.seal", Box::new(move |e| e.to_key.seal = other.seal)),
        ("seq", Box::new(|e| e.seq += 1)),
        ("ts_ms", Box::new(|e| e.ts_ms -= 1)),
        ("ephemeral", Box::new(|e| e.ephemeral[31] ^= 1)),
        ("nonce", Box::new(|e| e.nonce[0] ^= 1)),
        ("ciphertext", Box::new(|e| e.ciphertext[0] ^= 1)),
        ("ciphertext length", Box::new(|e| e.ciphertext.push(0))),
        ("signature", Box::new(|e| e.signature[10] ^= 1)),
    ];
    for (field, tamper) in tamperings {
        let mut bad = envelope.clone();
        tamper(&mut bad);
        assert!(matches!(bad.verify_sender(), Err(ChatError::BadSignature)), "{field}");
        assert!(bad.open(&bob).is_err(), "{field}");
    }
}

#[test]
fn a_forged_sender_is_refused() {
    // Mallory seals to Bob as "alice" and puts Alice's keys in from_key; only Mallory's key
    // signed it.
    let alice = UserKeys::generate();
    let bob = UserKeys::generate();
    let mallory = UserKeys::generate();
    let mut forged =
        Envelope::seal(&mallory, "alice", "bob", &bob.public(), 1, NOW, b"pay mallory").expect("seals");
    forged.from_key = alice.public();
    assert!(matches!(forged.verify_sender(), Err(ChatError::BadSignature)));
    assert!(matches!(forged.open(&bob), Err(ChatError::BadSignature)));
}

#[test]
fn sealing_refuses_bad_input() {
    let alice = UserKeys::generate();
    let bob = UserKeys::generate().public();
    let too_big = vec![0u8; MAX_BODY_BYTES + 1];
    assert!(matches!(
        Envelope::seal(&alice, "alice", "bob", &bob, 1, NOW, &too_big),
        Err(ChatError::TooLarge { .. })
    ));
    Envelope::seal(&alice, "alice", "bob", &bob, 1, NOW, &too_big[1..]).expect("exactly the cap");
    assert!(matches!(
        Envelope::seal(&alice, "Alice", "bob", &bob, 1, NOW, b"x"),
        Err(ChatError::NameInvalid(_))
    ));
    assert!(matches!(
        Envelope::seal(&alice, "alice", "", &bob, 1, NOW, b"x"),
        Err(ChatError::NameInvalid(_))
    ));
    // The identity point: every shared secret with it is zero.
    let low_order = UserPublic { sign: bob.sign, seal: [0; 32] };
    assert!(matches!(
        Envelope::seal(&alice, "alice", "bob", &low_order, 1, NOW, b"x"),
        Err(ChatError::Malformed(_))
    ));
}

#[test]
fn from_cbor_refuses_oversized_and_malformed_input() {
    let oversized = vec![0u8; MAX_ENVELOPE_BYTES + 1];
    assert!(matches!(Envelope::from_cbor(&oversized), Err(ChatError::TooLarge { .. })));
    assert!(matches!(Envelope::from_cbor(b"\xff\x00garbage"), Err(ChatError::Malformed(_))));
    assert!(matches!(Envelope::from_cbor(&[]), Err(ChatError::Malformed(_))));

    let (_alice, _bob, envelope) = sealed(b"x");
    let wire = envelope.to_cbor();
    assert!(matches!(Envelope::from_cbor(&wire[..wire.len() - 1]), Err(ChatError::Malformed(_))));
    let mut no_tag = envelope.clone();
    no_tag.ciphertext.truncate(3);
    assert!(matches!(Envelope::from_cbor(&no_tag.to_cbor()), Err(ChatError::Malformed(_))));
    let mut huge = envelope;
    huge.ciphertext = vec![0; MAX_BODY_BYTES + 17];
    assert!(matches!(Envelope::from_cbor(&huge.to_cbor()), Err(ChatError::TooLarge { .. })));

    // The largest body fits the cap with its worst-case fields.
    let alice = UserKeys::generate();
    let long = "n".repeat(64);
    let biggest =
        Envelope::seal(&alice, &long, &long, &alice.public(), u64::MAX, u64::MAX, &[0xff; MAX_BODY_BYTES])
            .expect("seals");
    Envelope::from_cbor(&biggest.to_cbor()).expect("the largest envelope decodes");
    Envelope::from_json(biggest.to_json().as_bytes()).expect("and decodes from JSON");
}

#[test]
fn json_carries_binary_fields_as_base64url() {
    let (_alice, bob, envelope) = sealed(b"over http");
    let json = serde_json::to_value(&envelope).expect("encodes");
    let id = json["id"].as_str().expect("id is a string");
    assert_eq!(id.len(), 22, "16 bytes in unpadded base64url");
    assert!(json["from_key"]["sign"].is_string() && json["ciphertext"].is_string());
    let ciphertext = json["ciphertext"].as_str().expect("a string");
    assert!(ciphertext.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{ciphertext}");
    let back: Envelope = serde_json::from_value(json).expect("decodes");
    assert_eq!(back.open(&bob).expect("opens").body, b"over http");

    let text = envelope.to_json();
    assert_eq!(Envelope::from_json(text.as_bytes()).expect("decodes"), envelope);
    let oversized = vec![b' '; MAX_ENVELOPE_JSON_BYTES + 1];
    assert!(matches!(Envelope::from_json(&oversized), Err(ChatError::TooLarge { .. })));
    assert!(matches!(Envelope::from_json(b"{\"id\": 1}"), Err(ChatError::Malformed(_))));
    let mut bad_name = serde_json::to_value(&envelope).expect("encodes");
    bad_name["to"] = serde_json::Value::String("Bob".into());
    let bad_name = serde_json::to_vec(&bad_name).expect("encodes");
    assert!(matches!(Envelope::from_json(&bad_name), Err(ChatError::NameInvalid(_))));

    let mut wrong_length = serde_json::to_value(&envelope).expect("encodes");
    wrong_length["nonce"] = serde_json::Value::String("AAAA".into());
    assert!(serde_json::from_value::<Envelope>(wrong_length).is_err());
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_.-]{0,63}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn envelopes_survive_cbor_and_json(
        from in name(),
        to in name(),
        seq in any::<u64>(),
        ts_ms in any::<u64>(),
        body in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let alice = UserKeys::generate();
        let bob = UserKeys::generate();
        let envelope = Envelope::seal(&alice, &from, &to, &bob.public(), seq, ts_ms, &body).expect("seals");
        let from_cbor = Envelope::from_cbor(&envelope.to_cbor()).expect("decodes");
        prop_assert_eq!(&from_cbor, &envelope);
        let json = serde_json::to_string(&envelope).expect("encodes");
        let from_json: Envelope = serde_json::from_str(&json).expect("decodes");
        prop_assert_eq!(&from_json, &envelope);
        let plain = from_json.open(&bob).expect("opens");
        prop_assert_eq!(plain.body, body);
        prop_assert_eq!((plain.from, plain.to, plain.seq, plain.ts_ms), (from, to, seq, ts_ms));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::from_cbor(&bytes);
        let _ = overlay_chat::NameRecord::from_cbor(&bytes);
        let _ = overlay_chat::PresenceRecord::from_cbor(&bytes);
    }
}
