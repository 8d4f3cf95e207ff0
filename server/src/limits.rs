//! Process limits at start: the soft file-descriptor limit (`RLIMIT_NOFILE`) is raised to the
//! hard limit, since every API connection, database file, socket and webhook connection
//! holds a descriptor and the common soft limit (1 024) is far below what the API serves.
//! The API's connection cap is then derived from the result
//! ([`zoftoken_api::connection_cap`]).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The highest value tried when the hard limit is "unlimited" (Linux refuses more than
/// `fs.nr_open`, 1 048 576 by default).
const UNLIMITED_TARGET: u64 = 1 << 20;

/// What [`raise_nofile_limit`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit at start.
    pub before: u64,
    /// The soft limit now (what the process may use).
    pub now: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (or as close as the kernel allows) and
/// reports the limit in force. Never lowers it; on failure the limit stays as it was.
pub fn raise_nofile_limit() -> NofileLimit {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    let target = limit.maximum.unwrap_or(UNLIMITED_TARGET);
    if target <= before {
        return NofileLimit {
            before,
            now: before,
        };
    }
    let raised = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        },
    );
    let now = match raised {
        Ok(()) => getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX),
        Err(_) => before,
    };
    NofileLimit { before, now }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let hard = getrlimit(Resource::Nofile).maximum;
        let l = raise_nofile_limit();
        assert!(l.now >= l.before);
        if let Some(hard) = hard {
            assert_eq!(l.now, hard);
        }
        assert_eq!(getrlimit(Resource::Nofile).current, Some(l.now));
        // Idempotent.
        assert_eq!(raise_nofile_limit().now, l.now);
    }
}
