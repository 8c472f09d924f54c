//! Known answers that pin the formats: a change here changes what every deployed node and client
//! signs and verifies, so it must come with a new domain tag version, not a quiet edit.

use overlay_chat::{NameRecord, UserKeys};

fn alice() -> UserKeys {
    UserKeys::from_secrets([1; 32], [2; 32])
}

#[test]
fn public_keys_text_form_and_fingerprint_are_stable() {
    let public = alice().public();
    assert_eq!(
        public.to_string(),
        "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1zOjTrRzLYz7HtwwXgUpcduzQKWhQUNNEdFugWHDlh9WQ"
    );
    assert_eq!(public.fingerprint(), "2b40-20aa-094d-ce08-00f2");
}

#[test]
fn name_record_encoding_and_signature_are_stable() {
    let record = NameRecord::sign(&alice(), "alice", 1, false, 1_800_000_000_000).expect("valid");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(&record.signature),
        "f90a0b35b423923774ded748920d755a573fadf6805b560baa880d9f3044a5070bb845a72fe704936ae56c03b0c11fdd0086ea073bc910d23379a4525a334c08"
    );
    assert_eq!(
        hex(&record.to_cbor()),
        "a6646e616d6565616c696365656f776e6572a2647369676e58208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c647365616c5820ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d596776657273696f6e016872656c6561736564f4696973737565645f6d731b000001a3185c5000697369676e61747572655840f90a0b35b423923774ded748920d755a573fadf6805b560baa880d9f3044a5070bb845a72fe704936ae56c03b0c11fdd0086ea073bc910d23379a4525a334c08"
    );
}

/// The signed bytes, rebuilt by hand from the documented rule (CBOR map of the domain tag and the
/// signed fields, in order), verify under plain ed25519: the format is what the docs say.
#[test]
fn name_record_signature_covers_the_documented_bytes() {
    use ciborium::Value;
    let record = NameRecord::sign(&alice(), "alice", 1, false, 1_800_000_000_000).expect("valid");
    let text = |s: &str| Value::Text(s.into());
    let signed = Value::Map(vec![
        (text("domain"), text("overlay/chat/name/v1")),
        (text("name"), text("alice")),
        (
            text("owner"),
            Value::Map(vec![
                (text("sign"), Value::Bytes(record.owner.sign.to_vec())),
                (text("seal"), Value::Bytes(record.owner.seal.to_vec())),
            ]),
        ),
        (text("version"), Value::Integer(1.into())),
        (text("released"), Value::Bool(false)),
        (text("issued_ms"), Value::Integer(1_800_000_000_000u64.into())),
    ]);
    let mut bytes = Vec::new();
    ciborium::into_writer(&signed, &mut bytes).expect("encodes");
    let key = ed25519_dalek::VerifyingKey::from_bytes(&record.owner.sign).expect("a valid key");
    key.verify_strict(&bytes, &ed25519_dalek::Signature::from_bytes(&record.signature))
        .expect("the signature covers exactly these bytes");
}
