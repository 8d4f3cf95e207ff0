//! [`KvError`]: what a storage implementation reports, by kind. Callers decide on the kind
//! (a database held by a running server, a disk that cannot write, damaged files), never on
//! the text.

use std::error::Error;
use std::fmt;

/// The error of an implementation (RocksDB, the file system, a test store) that a
/// [`KvError`] carries.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Errors of a storage implementation, by kind. Each carries the implementation's own error.
///
/// Like [`std::io::Error`] around a custom error, the message is the kind's prefix followed by
/// that error's message, so the message alone (`{}`, as logs print it) says everything; and
/// [`Error::source`] goes on with that error's own cause, so a printed chain of causes (`{:#}`
/// of `anyhow`) names each once. [`KvError::get_ref`] and [`KvError::into_inner`] give the
/// implementation's error itself, to downcast.
#[derive(Debug)]
#[non_exhaustive]
pub enum KvError {
    /// The database is held by another process (the server is running) or by another open
    /// handle of this one.
    Locked(BoxError),
    /// The store cannot read or write: a full disk, permissions, a failing or read-only
    /// volume, or a store closed after a failed write.
    Io(BoxError),
    /// The database's files are damaged or not a database of ours.
    Corruption(BoxError),
    /// A write of a store shared by several servers found a record changed by another writer
    /// since this server read it (a versioned state put whose predecessor is not the stored
    /// version): nothing of the batch was written. The writer's view of the record is stale;
    /// it reloads the record and does not acknowledge what it tried to write.
    Conflict(BoxError),
    /// Any other failure: an operation or argument the implementation does not support.
    Other(BoxError),
}

impl KvError {
    /// The implementation's error.
    pub fn get_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        match self {
            KvError::Locked(e)
            | KvError::Io(e)
            | KvError::Corruption(e)
            | KvError::Conflict(e)
            | KvError::Other(e) => &**e,
        }
    }

    /// The implementation's error, owned.
    pub fn into_inner(self) -> BoxError {
        match self {
            KvError::Locked(e)
            | KvError::Io(e)
            | KvError::Corruption(e)
            | KvError::Conflict(e)
            | KvError::Other(e) => e,
        }
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self {
            KvError::Locked(_) => "database is locked by another process (is the server running?)",
            KvError::Io(_) | KvError::Other(_) => "storage error",
            KvError::Corruption(_) => "database corrupt",
            KvError::Conflict(_) => "write conflict (changed by another writer)",
        };
        write!(f, "{prefix}: {}", self.get_ref())
    }
}

impl Error for KvError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.get_ref().source()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_message_names_the_kind_and_the_cause_once() {
        let e = KvError::Io("IO error: No space left on device".into());
        assert_eq!(
            e.to_string(),
            "storage error: IO error: No space left on device"
        );
        assert!(e.source().is_none());
        let e = KvError::Corruption(Box::new(Outer(std::io::Error::other("inner"))));
        assert_eq!(e.to_string(), "database corrupt: outer");
        assert_eq!(e.source().unwrap().to_string(), "inner");
        assert!(e.get_ref().downcast_ref::<Outer>().is_some());
        assert!(e.into_inner().downcast::<Outer>().is_ok());
    }
}
