//! [`PgConfig`]: where the database is and how the pool uses it; the connection URL's password
//! never appears in a `Debug` form or an error.

use std::fmt;
use std::time::Duration;

/// How to reach the database: a libpq-style URL or key/value string
/// (`postgresql://user:password@host:port/dbname`, `host=/run/postgresql dbname=zoftoken`) and
/// the pool's limits.
#[derive(Clone)]
pub struct PgConfig {
    pub(crate) inner: postgres::Config,
    /// Connections at most (each a PostgreSQL backend process). Default 8.
    pub pool_size: usize,
    /// How long a caller waits for a free connection before the operation fails as
    /// unavailable. Default 5 s.
    pub checkout_timeout: Duration,
    /// The longest any one statement may run (PostgreSQL's `statement_timeout`), so that a
    /// stuck database fails an operation instead of holding a server thread. Default 5 s.
    pub statement_timeout: Duration,
}

/// A connection string that does not parse. The string itself is not repeated (it may hold a
/// password).
#[derive(Debug, thiserror::Error)]
#[error("invalid PostgreSQL connection string (the string is not shown: it may hold a password)")]
pub struct PgConfigError(#[source] pub postgres::Error);

impl PgConfig {
    /// The configuration of a connection string, with the default limits and a connect
    /// timeout of 5 s unless the string sets one.
    pub fn parse(url: &str) -> Result<PgConfig, PgConfigError> {
        let mut inner: postgres::Config = url.parse().map_err(PgConfigError)?;
        if inner.get_connect_timeout().is_none() {
            inner.connect_timeout(Duration::from_secs(5));
        }
        if inner.get_application_name().is_none() {
            inner.application_name("zoftoken");
        }
        Ok(PgConfig {
            inner,
            pool_size: 8,
            checkout_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        })
    }

    /// Whether the connection string holds a password.
    pub fn has_password(&self) -> bool {
        self.inner.get_password().is_some()
    }

    /// Sets the connect, checkout and statement timeouts at once.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.inner.connect_timeout(timeout);
        self.checkout_timeout = timeout;
        self.statement_timeout = timeout;
    }

    /// Where the database is, without credentials: `user@host:port/dbname`.
    pub fn describe(&self) -> String {
        let c = &self.inner;
        let host = match c.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        format!(
            "{}@{host}:{port}/{}",
            c.get_user().unwrap_or("?"),
            c.get_dbname().unwrap_or("?")
        )
    }
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("database", &self.describe())
            .field("pool_size", &self.pool_size)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        let c = PgConfig::parse("postgresql://bank:s3cret-pw@db.example:6543/zt").unwrap();
        let shown = format!("{c:?} {}", c.describe());
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("bank@db.example:6543/zt"), "{shown}");
        let e = PgConfig::parse("postgresql://bank:s3cret-pw@db.example:notaport/zt").unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
    }
}
