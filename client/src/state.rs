//! The token state in a file, and a lock so that two client processes never use one token at
//! once.
//!
//! The file holds the token secret and its unused per-request PIN keys (the SDK's serialized
//! state, versioned JSON: a file from before PIN keys is refused, the token must be paired
//! again). It is written before every request leaves, with the new counter and, for a PIN
//! request, without the PIN key the request uses. It is created with mode 0600
//! and replaced atomically on every save: a temporary file in the same directory, written,
//! fsynced, renamed over the state file, then the directory fsynced. A state file that is
//! group- or world-accessible is refused, as ssh refuses such private keys. (The owner is not
//! checked: that needs the process's uid, which std does not give without `unsafe`.)

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;
use zoftoken_device::{DeviceError, StateStore};

use crate::ClientError;

/// Largest state file read (a state is at most about 34 KB: the token's details and its
/// unused PIN keys, 24.5 KB at most, in base64).
const MAX_STATE_BYTES: u64 = 64 * 1024;

/// A [`StateStore`] backed by one file (mode 0600, atomic replacement).
#[derive(Clone, Debug)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `path`; nothing is read or created yet.
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the state file exists.
    pub fn exists(&self) -> bool {
        self.path.symlink_metadata().is_ok()
    }

    fn err(&self, message: impl std::fmt::Display) -> ClientError {
        ClientError::StateFile {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    /// Reads the state: `None` if the file does not exist; an error if it is not a regular
    /// file, is group/world-accessible, or cannot be read.
    pub fn read(&self) -> Result<Option<Zeroizing<Vec<u8>>>, ClientError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let meta = file.metadata().map_err(|e| self.err(e))?;
        if !meta.is_file() {
            return Err(self.err("not a regular file"));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(ClientError::Permissions {
                path: self.path.clone(),
                mode,
            });
        }
        if meta.len() > MAX_STATE_BYTES {
            return Err(self.err("too large to be a token state"));
        }
        let mut bytes = Zeroizing::new(Vec::new());
        file.read_to_end(&mut bytes).map_err(|e| self.err(e))?;
        Ok(Some(bytes))
    }

    /// Creates the state file's directory (mode 0700) if it does not exist.
    fn create_dir(&self) -> Result<(), ClientError> {
        let dir = self.dir();
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| self.err(format!("cannot create directory: {e}")))?;
        }
        Ok(())
    }

    /// Replaces the state atomically and durably (temp file, fsync, rename, directory fsync).
    pub fn write(&self, state: &[u8]) -> Result<(), ClientError> {
        self.create_dir()?;
        let tmp = self.sibling(&format!("tmp-{:016x}", OsRng.next_u64()));
        let result = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(state)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &self.path)?;
            // The rename is durable once the directory is synced.
            File::open(self.dir_or_dot())?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| self.err(format!("cannot save: {e}")))
    }

    /// Takes the state file's lock (`<state>.lock`, created exclusively and holding this
    /// process's id). A lock left by a process that no longer runs is taken over.
    pub fn lock(&self) -> Result<StateLock, ClientError> {
        let lock = self.sibling("lock");
        self.create_dir()?;
        for _ in 0..2 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&lock)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(StateLock { path: lock });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if lock_is_stale(&lock) {
                        let _ = fs::remove_file(&lock);
                        continue;
                    }
                    return Err(ClientError::Locked {
                        path: self.path.clone(),
                        lock,
                    });
                }
                Err(e) => return Err(self.err(format!("cannot create lock file: {e}"))),
            }
        }
        Err(ClientError::Locked {
            path: self.path.clone(),
            lock,
        })
    }

    fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn dir_or_dot(&self) -> PathBuf {
        let dir = self.dir();
        if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        }
    }

    /// `<dir>/.<file name>.<suffix>`.
    fn sibling(&self, suffix: &str) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".to_owned());
        self.dir_or_dot().join(format!(".{name}.{suffix}"))
    }
}

/// Whether a lock file names a process that is no longer running (Linux: `/proc/<pid>`).
fn lock_is_stale(lock: &Path) -> bool {
    let Ok(text) = fs::read_to_string(lock) else {
        return false;
    };
    match text.trim().parse::<u32>() {
        Ok(pid) => Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => false,
    }
}

/// The held lock of a state file; released (the lock file removed) when dropped.
#[derive(Debug)]
pub struct StateLock {
    path: PathBuf,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl StateStore for FileStore {
    fn save(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        self.write(state)
            .map_err(|e| DeviceError::Store(e.to_string()))
    }

    fn load(&self) -> Result<Option<Vec<u8>>, DeviceError> {
        match self.read() {
            Ok(state) => Ok(state.map(|s| s.to_vec())),
            Err(e) => Err(DeviceError::Store(e.to_string())),
        }
    }
}
