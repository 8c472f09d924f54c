//! Signed keys from the command line: `overlay keygen FILE`, and the signing behind `put --sign`
//! and `delete --sign`.
//!
//! A key file holds one ed25519 secret key (its 32-byte seed) as 64 hex digits on one line,
//! created with mode 0600 and never overwritten. The signature rules themselves are the core's
//! (`dht::signed`); this module only picks the version, signs, and signs again above the version
//! a replica names when it already holds a newer one (a clock behind another writer's).

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use dht::bytes::{from_hex, to_hex as hex};
use dht::store::{Record, Version};
use ed25519_dalek::SigningKey;
use overlay_api::{ApiError, Signature};

/// How many times a signed write is signed again above a version a replica named.
const RESIGN_ATTEMPTS: u32 = 3;

/// `overlay keygen FILE`.
pub(crate) fn keygen(file: &Path, out: &mut impl Write) -> Result<()> {
    let seed: [u8; 32] = rand::random();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut handle = options.open(file).with_context(|| {
        format!("creating {} (an existing key file is never overwritten)", file.display())
    })?;
    writeln!(handle, "{}", hex(&seed)).and_then(|()| handle.sync_all())?;
    let public = hex(&SigningKey::from_bytes(&seed).verifying_key().to_bytes());
    writeln!(out, "wrote a new signing key to {}; public key {public}", file.display())?;
    Ok(())
}

/// Reads a key file written by [`keygen`].
pub(crate) fn read_key(file: &Path) -> Result<SigningKey> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading the key file {}", file.display()))?;
    let seed =
        from_hex(text.trim()).and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()).with_context(|| {
            format!("{} is not a key file (64 hex digits, from `overlay keygen`)", file.display())
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Signs `value` (a tombstone for `None`) under `key` and hands it to `send`; when a replica
/// already holds a newer version, signs again above it, up to [`RESIGN_ATTEMPTS`] times.
pub(crate) fn write_signed<T>(
    signing: &SigningKey,
    key: &str,
    value: Option<&[u8]>,
    mut send: impl FnMut(&Signature) -> Result<T, ApiError>,
) -> Result<T> {
    let mut hlc = wall_ms() << 16;
    for _ in 0..RESIGN_ATTEMPTS {
        let record = dht::signed::sign(key.as_bytes().to_vec(), value.map(<[u8]>::to_vec), hlc, signing);
        match send(&signature_of(&record)) {
            Err(ApiError::Superseded { held, .. }) => {
                let Some(held) = Version::from_token(&held) else {
                    bail!("the node named a version that does not parse: {held:?}");
                };
                hlc = hlc.max(held.hlc.saturating_add(1));
            }
            other => return Ok(other?),
        }
    }
    bail!("replicas kept holding newer versions of {key:?} after {RESIGN_ATTEMPTS} signatures")
}

fn signature_of(record: &Record) -> Signature {
    let owner = record.owner.as_ref().expect("dht::signed::sign sets the owner");
    Signature {
        version: record.version.token(),
        signer: hex(&owner.public_key),
        signature: hex(&owner.signature),
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_written_once_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("overlay-keygen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("alice.key");
        let _ = std::fs::remove_file(&file);
        let mut out = Vec::new();
        keygen(&file, &mut out).expect("written");
        let key = read_key(&file).expect("reads back");
        let printed = String::from_utf8(out).expect("utf-8");
        assert!(printed.contains(&hex(&key.verifying_key().to_bytes())), "{printed}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&file).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(keygen(&file, &mut Vec::new()).is_err(), "never overwritten");
        std::fs::write(&file, "not a key\n").expect("overwrite for the test");
        assert!(read_key(&file).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_superseded_write_is_signed_again_above_the_version_held() {
        let signing = SigningKey::from_bytes(&[5; 32]);
        let held_hlc = (wall_ms() + 60_000) << 16;
        let held = Version { hlc: held_hlc, writer: dht::signed::writer_of(&[0; 32]) };
        let mut sent = Vec::new();
        let result = write_signed(&signing, "signed/k", Some(b"v"), |signature| {
            sent.push(Version::from_token(&signature.version).expect("a token"));
            if sent.len() == 1 {
                Err(ApiError::Superseded { key: "signed/k".into(), held: held.token() })
            } else {
                Ok(())
            }
        });
        assert!(result.is_ok());
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1].hlc, held_hlc + 1, "just above the version held");
    }
}
