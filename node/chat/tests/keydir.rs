//! The key directory: round trips, private modes, refusal of corrupt files, names.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use overlay_chat::{ChatError, KeyDir};

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).expect("exists").permissions().mode() & 0o777
}

fn key_dir() -> (tempfile::TempDir, KeyDir) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = KeyDir::open(tmp.path().join("nested").join("keys")).expect("opens");
    (tmp, dir)
}

#[test]
fn keys_round_trip_through_the_directory() {
    let (_tmp, dir) = key_dir();
    let created = dir.create("alice").expect("creates");
    let loaded = dir.load("alice").expect("loads");
    assert_eq!(loaded.public(), created.public());
    assert_eq!(loaded.signing_key().to_bytes(), created.signing_key().to_bytes());

    // Reopening finds the same keys.
    let again = KeyDir::open(dir.path()).expect("reopens");
    assert_eq!(again.load("alice").expect("loads").public(), created.public());
    assert_eq!(again.load_or_create("alice").expect("loads").public(), created.public());
    let bob = again.load_or_create("bob").expect("creates");
    assert_eq!(again.load("bob").expect("loads").public(), bob.public());
    assert_ne!(bob.public(), created.public());
}

#[test]
fn create_never_replaces_and_load_says_what_is_missing() {
    let (_tmp, dir) = key_dir();
    let first = dir.create("alice").expect("creates");
    assert!(matches!(dir.create("alice"), Err(ChatError::KeyExists(name)) if name == "alice"));
    assert_eq!(dir.load("alice").expect("loads").public(), first.public());
    assert!(matches!(dir.load("bob"), Err(ChatError::KeyNotFound(name)) if name == "bob"));
    for bad in ["", "Alice", "../alice", "a/b", ".", &"x".repeat(65)] {
        assert!(matches!(dir.create(bad), Err(ChatError::NameInvalid(_))), "{bad:?}");
        assert!(matches!(dir.load(bad), Err(ChatError::NameInvalid(_))), "{bad:?}");
    }
}

#[test]
fn the_directory_is_0700_and_key_files_0600() {
    let (_tmp, dir) = key_dir();
    dir.create("alice").expect("creates");
    assert_eq!(mode(dir.path()), 0o700);
    assert_eq!(mode(&dir.path().join("alice.key")), 0o600);
    // No temporary file is left behind.
    let entries: Vec<_> =
        fs::read_dir(dir.path()).expect("lists").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(entries, vec!["alice.key"]);
}

#[test]
fn keys_others_can_read_are_refused() {
    let (_tmp, dir) = key_dir();
    dir.create("alice").expect("creates");
    let file = dir.path().join("alice.key");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(matches!(dir.load("alice"), Err(ChatError::InsecurePermissions { mode: 0o644, .. })));

    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    assert!(matches!(KeyDir::open(dir.path()), Err(ChatError::InsecurePermissions { .. })));
}

#[test]
fn corrupt_files_are_reported_not_panicked_on() {
    let (_tmp, dir) = key_dir();
    let keys = dir.create("alice").expect("creates");
    let file = dir.path().join("alice.key");
    let good = fs::read_to_string(&file).expect("reads");
    assert!(good.contains("\"version\": 1"), "{good}");
    assert!(good.contains(&keys.public().to_string()), "the public keys are readable in the file");

    let other_secret = overlay_chat::UserKeys::generate();
    let corruptions: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", good.as_bytes()[..good.len() / 2].to_vec()),
        ("not JSON", b"\x00\x01\x02 garbage".to_vec()),
        ("not UTF-8", vec![0xff, 0xfe, 0xfd]),
        ("unknown version", good.replace("\"version\": 1", "\"version\": 99").into_bytes()),
        ("another name", good.replace("\"name\": \"alice\"", "\"name\": \"bob\"").into_bytes()),
        (
            "public keys of someone else",
            good.replace(&keys.public().to_string(), &other_secret.public().to_string()).into_bytes(),
        ),
        ("a short secret", good.replacen("\"sign\": \"", "\"sign\": \"AA", 1).into_bytes()),
        ("huge", vec![b' '; 100_000]),
    ];
    for (what, bytes) in corruptions {
        fs::write(&file, &bytes).expect("writes");
        match dir.load("alice") {
            Err(ChatError::CorruptKeyFile { path, reason }) => {
                assert_eq!(path, file, "{what}");
                assert!(!reason.is_empty(), "{what}");
                let shown = ChatError::CorruptKeyFile { path, reason }.to_string();
                assert!(shown.contains("alice.key"), "{what}: {shown}");
            }
            other => panic!("{what}: expected CorruptKeyFile, got {other:?}"),
        }
    }
    // load_or_create does not paper over a corrupt file with new keys.
    assert!(matches!(dir.load_or_create("alice"), Err(ChatError::CorruptKeyFile { .. })));
}

#[test]
fn list_names_the_users_and_skips_everything_else() {
    let (_tmp, dir) = key_dir();
    assert_eq!(dir.list().expect("lists"), Vec::<String>::new());
    for name in ["carol", "alice", "bob"] {
        dir.create(name).expect("creates");
    }
    fs::write(dir.path().join("notes.txt"), b"x").expect("writes");
    fs::write(dir.path().join("Bad.key"), b"x").expect("writes");
    fs::write(dir.path().join(".alice.key.tmp-00"), b"x").expect("writes");
    assert_eq!(dir.list().expect("lists"), ["alice", "bob", "carol"]);
}
