//! [`KeyDir`]: a directory of users' secret keys, one file per user name, on the client's disk.
//!
//! Layout: `<dir>/<name>.key`, where `name` passes [`validate_name`]. Each file is JSON:
//! `{"version": 1, "name": "<name>", "sign": "<base64url>", "seal": "<base64url>",
//! "public": "<UserPublic text form>"}`: the two 32-byte secrets, and the public keys for a
//! person reading the file and for a consistency check on load.
//!
//! Invariants:
//! - the directory is mode 0700 and every key file 0600; [`KeyDir::open`] refuses a directory,
//!   and [`KeyDir::load`] a file, that other users can access, as ssh does;
//! - a key file is either absent or complete: it is written to a temporary file in the same
//!   directory, synced, then linked to its name (which fails if the name exists, so two
//!   concurrent `create`s of one name cannot both win) and the directory synced;
//! - loading never panics: a file that does not parse, has an unknown version, another name, or
//!   public keys that do not match its secrets is [`ChatError::CorruptKeyFile`].
//!
//! Unix only (modes and directory sync).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize as _, Zeroizing};

use crate::{ChatError, UserKeys, UserPublic, bytes, validate_name};

/// The key file format this code writes and reads.
const FORMAT_VERSION: u32 = 1;

/// Key files are a few hundred bytes; anything much larger is not one.
const MAX_KEY_FILE_BYTES: u64 = 4096;

const SUFFIX: &str = ".key";

/// The file's content. Not `Debug`: it holds secrets.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    name: String,
    #[serde(with = "bytes::fixed")]
    sign: [u8; 32],
    #[serde(with = "bytes::fixed")]
    seal: [u8; 32],
    public: String,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        self.sign.zeroize();
        self.seal.zeroize();
    }
}

/// A directory of users' secret keys; see the module docs.
#[derive(Debug, Clone)]
pub struct KeyDir {
    path: PathBuf,
}

impl KeyDir {
    /// Opens the key directory at `path`, creating it (and its parents) with mode 0700 if absent.
    pub fn open(path: impl AsRef<Path>) -> Result<KeyDir, ChatError> {
        let path = path.as_ref().to_path_buf();
        DirBuilder::new().recursive(true).mode(0o700).create(&path).map_err(ChatError::io(&path))?;
        let metadata = fs::metadata(&path).map_err(ChatError::io(&path))?;
        if !metadata.is_dir() {
            return Err(ChatError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        check_private(&path, metadata.permissions().mode())?;
        Ok(KeyDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}{SUFFIX}"))
    }

    /// Generates and stores new keys for `name`; [`ChatError::KeyExists`] if it has some.
    pub fn create(&self, name: &str) -> Result<UserKeys, ChatError> {
        validate_name(name)?;
        let keys = UserKeys::generate();
        self.store(name, &keys)?;
        Ok(keys)
    }

    /// Loads the keys of `name`; [`ChatError::KeyNotFound`] if it has none.
    pub fn load(&self, name: &str) -> Result<UserKeys, ChatError> {
        validate_name(name)?;
        let path = self.file(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ChatError::KeyNotFound(name.to_owned()));
            }
            Err(e) => return Err(ChatError::Io { path, source: e }),
        };
        let metadata = file.metadata().map_err(ChatError::io(&path))?;
        check_private(&path, metadata.permissions().mode())?;
        let corrupt = |reason: String| ChatError::CorruptKeyFile { path: path.clone(), reason };
        if metadata.len() > MAX_KEY_FILE_BYTES {
            return Err(corrupt(format!("{} bytes, more than a key file holds", metadata.len())));
        }
        // Sized up front (the read is capped) so that no reallocation leaves secrets behind.
        let mut text = Zeroizing::new(String::with_capacity(MAX_KEY_FILE_BYTES as usize + 1));
        file.take(MAX_KEY_FILE_BYTES).read_to_string(&mut text).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => corrupt("not UTF-8".into()),
            _ => ChatError::Io { path: path.clone(), source: e },
        })?;
        let stored: KeyFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if stored.version != FORMAT_VERSION {
            return Err(corrupt(format!("unknown format version {}", stored.version)));
        }
        if stored.name != name {
            return Err(corrupt(format!("holds the keys of {:?}", stored.name)));
        }
        let keys = UserKeys::from_secrets(stored.sign, stored.seal);
        let public: UserPublic = stored.public.parse().map_err(|e: ChatError| corrupt(e.to_string()))?;
        if keys.public() != public {
            return Err(corrupt("the public keys do not match the secrets".into()));
        }
        Ok(keys)
    }

    /// Loads the keys of `name`, generating and storing them first if it has none.
    pub fn load_or_create(&self, name: &str) -> Result<UserKeys, ChatError> {
        match self.load(name) {
            Err(ChatError::KeyNotFound(_)) => match self.create(name) {
                // Another process created them between our load and create: theirs stand.
                Err(ChatError::KeyExists(_)) => self.load(name),
                created => created,
            },
            loaded => loaded,
        }
    }

    /// The names that have key files, sorted. Files that are not key files are skipped.
    pub fn list(&self) -> Result<Vec<String>, ChatError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(ChatError::io(&self.path))? {
            let entry = entry.map_err(ChatError::io(&self.path))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|f| f.strip_suffix(SUFFIX)) else { continue };
            if validate_name(name).is_ok() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn store(&self, name: &str, keys: &UserKeys) -> Result<(), ChatError> {
        let (sign, seal) = keys.secrets();
        let stored = KeyFile {
            version: FORMAT_VERSION,
            name: name.to_owned(),
            sign,
            seal,
            public: keys.public().to_string(),
        };
        // Sized up front so that no reallocation leaves a copy of the secrets behind.
        let mut text = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_BYTES as usize));
        serde_json::to_writer_pretty(&mut *text, &stored).expect("a KeyFile always encodes as JSON");
        text.push(b'\n');

        let path = self.file(name);
        let tmp = self.path.join(format!(".{name}{SUFFIX}.tmp-{:016x}", rand::random::<u64>()));
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            file.write_all(&text)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(ChatError::Io { path: tmp, source: e });
        }
        // A hard link, not a rename: it fails when the name exists, so an existing key is never
        // replaced, even by a concurrent create.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ChatError::KeyExists(name.to_owned()));
            }
            Err(e) => return Err(ChatError::Io { path, source: e }),
        }
        File::open(&self.path).and_then(|dir| dir.sync_all()).map_err(ChatError::io(&self.path))
    }
}

fn check_private(path: &Path, mode: u32) -> Result<(), ChatError> {
    if mode & 0o077 != 0 {
        return Err(ChatError::InsecurePermissions { path: path.to_path_buf(), mode: mode & 0o7777 });
    }
    Ok(())
}
