//! The node's key pair, created once and kept in the data directory, so a restarted node keeps
//! its `PeerId` and therefore its ring position.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use libp2p::identity::Keypair;

const FILE: &str = "identity.key";

/// Loads the key pair from `data_dir`, or creates and saves a new Ed25519 one.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Keypair> {
    let path = data_dir.join(FILE);
    if path.exists() {
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        return Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} does not hold a valid key pair", path.display()));
    }
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair.to_protobuf_encoding().context("encoding the new key pair")?;
    // Write to a temporary file and rename, so a crash never leaves a half-written identity.
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, &path).with_context(|| format!("saving {}", path.display()))?;
    // The rename is durable only once the directory is: without this a crash could bring back a
    // directory without the identity, and the node would come back as another peer.
    fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing {}", data_dir.display()))?;
    Ok(keypair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_survives_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = load_or_create(dir.path()).expect("created");
        let again = load_or_create(dir.path()).expect("loaded");
        assert_eq!(first.public().to_peer_id(), again.public().to_peer_id());
    }

    #[test]
    fn a_corrupt_identity_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join(FILE), b"garbage").expect("write");
        assert!(load_or_create(dir.path()).is_err());
    }
}
