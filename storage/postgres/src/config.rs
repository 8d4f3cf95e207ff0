//! [`PgConfig`]: where the database is, whether and how its connections are encrypted
//! ([`PgTls`]), and how the pool uses it; the connection URL's password never appears in a
//! `Debug` form or an error.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use postgres::config::{Host, SslMode};

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
    /// How long the change feed keeps a commit before any server may prune it: a server that
    /// could not read the feed for longer must read everything again. Default 10 minutes.
    pub feed_retention: Duration,
    /// `Some`: every connection is TLS, the server's certificate verified (see [`PgTls`]).
    pub(crate) tls: Option<PgTls>,
    /// The string said `sslmode=disable`.
    plaintext_asked: bool,
}

/// TLS to the database: what the server's certificate is verified against, and the client's
/// own certificate, if the database asks for one. Verification is always full (libpq's
/// `verify-full`): the chain must end at a trust anchor and the certificate must name the
/// host of the connection string (`host`, also when `hostaddr` gives the address).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgTls {
    /// Trust anchors (PEM) instead of the system's: the authority that signed the database's
    /// certificate (libpq's `sslrootcert`).
    pub ca_file: Option<PathBuf>,
    /// The client's certificate chain (PEM), for databases that authenticate clients by
    /// certificate; with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// Why TLS settings were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgTlsSettingsError {
    /// TLS settings with `sslmode=disable`.
    #[error("TLS settings given, but the connection string says sslmode=disable")]
    Disabled,
    /// A client certificate without its key, or the reverse.
    #[error("a client certificate needs both cert_file and key_file")]
    HalfClientCertificate,
}

/// A connection string that does not parse. The string itself is not repeated (it may hold a
/// password).
#[derive(Debug, thiserror::Error)]
#[error("invalid PostgreSQL connection string (the string is not shown: it may hold a password)")]
pub struct PgConfigError(#[source] pub postgres::Error);

impl PgConfig {
    /// The configuration of a connection string, with the default limits and a connect
    /// timeout of 5 s unless the string sets one.
    ///
    /// Encryption follows the string's `sslmode`: `require` is TLS with the certificate
    /// verified against the system's trust anchors (or [`PgConfig::set_tls`]'s), `disable` is
    /// plaintext. Without `sslmode` (or with `prefer`, which would fall back to plaintext
    /// silently and is never used), TLS is required unless every host is a loopback address,
    /// `localhost` or a Unix socket directory, which are plaintext.
    pub fn parse(url: &str) -> Result<PgConfig, PgConfigError> {
        let mut inner: postgres::Config = url.parse().map_err(PgConfigError)?;
        let plaintext_asked = inner.get_ssl_mode() == SslMode::Disable;
        let tls = match inner.get_ssl_mode() {
            SslMode::Disable => None,
            SslMode::Prefer if is_local(&inner) => None,
            _ => Some(PgTls::default()),
        };
        inner.ssl_mode(if tls.is_some() {
            SslMode::Require
        } else {
            SslMode::Disable
        });
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
            feed_retention: Duration::from_secs(600),
            tls,
            plaintext_asked,
        })
    }

    /// Whether connections are encrypted.
    pub fn encrypted(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether every host of the connection string is this machine (loopback, `localhost`, a
    /// Unix socket directory).
    pub fn is_local(&self) -> bool {
        is_local(&self.inner)
    }

    /// Sets what TLS trusts and presents, and turns TLS on for a loopback connection string
    /// without `sslmode`. Refused with `sslmode=disable`, and for a client certificate without
    /// its key. The files are read when the database is opened.
    pub fn set_tls(&mut self, tls: PgTls) -> Result<(), PgTlsSettingsError> {
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(PgTlsSettingsError::HalfClientCertificate);
        }
        if self.plaintext_asked {
            return Err(PgTlsSettingsError::Disabled);
        }
        self.inner.ssl_mode(SslMode::Require);
        self.tls = Some(tls);
        Ok(())
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

/// Whether every host (and `hostaddr`) of `c` is this machine.
fn is_local(c: &postgres::Config) -> bool {
    let loopback = |h: &str| h == "localhost" || h.parse::<IpAddr>().is_ok_and(|a| a.is_loopback());
    let hosts_local = c.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => loopback(name),
        Host::Unix(_) => true,
    });
    // No host at all: libpq's default, the local Unix socket.
    hosts_local && c.get_hostaddrs().iter().all(IpAddr::is_loopback)
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("database", &self.describe())
            .field("pool_size", &self.pool_size)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("tls", &self.tls)
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

    fn encrypted(url: &str) -> bool {
        PgConfig::parse(url).unwrap().encrypted()
    }

    #[test]
    fn tls_is_required_off_this_machine_and_never_merely_preferred() {
        // Another machine: TLS unless the string disables it; `prefer` means `require`.
        assert!(encrypted("host=db.example dbname=zt"));
        assert!(encrypted("host=10.0.0.5 dbname=zt sslmode=prefer"));
        assert!(encrypted("host=localhost,db.example dbname=zt"));
        assert!(encrypted("host=localhost hostaddr=10.0.0.5 dbname=zt"));
        assert!(encrypted("postgresql://u@db.example/zt?sslmode=require"));
        assert!(!encrypted("host=db.example dbname=zt sslmode=disable"));
        // This machine: plaintext unless asked.
        assert!(!encrypted("host=127.0.0.1 dbname=zt"));
        assert!(!encrypted("host=::1 dbname=zt"));
        assert!(!encrypted("host=localhost dbname=zt"));
        assert!(!encrypted("host=/run/postgresql dbname=zt"));
        assert!(!encrypted("dbname=zt"));
        assert!(encrypted("host=127.0.0.1 dbname=zt sslmode=require"));
        let c = PgConfig::parse("host=127.0.0.1 dbname=zt").unwrap();
        assert!(c.is_local());
        assert_eq!(c.inner.get_ssl_mode(), SslMode::Disable);
        let c = PgConfig::parse("host=db.example dbname=zt").unwrap();
        assert!(!c.is_local());
        assert_eq!(c.inner.get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn tls_settings_turn_tls_on_unless_disabled() {
        let ca = PgTls {
            ca_file: Some("/etc/zoftoken/db-ca.pem".into()),
            ..PgTls::default()
        };
        let mut c = PgConfig::parse("host=127.0.0.1 dbname=zt").unwrap();
        c.set_tls(ca.clone()).unwrap();
        assert!(c.encrypted());
        assert_eq!(c.inner.get_ssl_mode(), SslMode::Require);
        let mut c = PgConfig::parse("host=db.example dbname=zt sslmode=disable").unwrap();
        assert!(matches!(c.set_tls(ca), Err(PgTlsSettingsError::Disabled)));
        assert!(!c.encrypted());
        let mut c = PgConfig::parse("host=db.example dbname=zt").unwrap();
        let half = PgTls {
            cert_file: Some("/etc/zoftoken/db-client.pem".into()),
            ..PgTls::default()
        };
        assert!(matches!(
            c.set_tls(half),
            Err(PgTlsSettingsError::HalfClientCertificate)
        ));
    }
}
