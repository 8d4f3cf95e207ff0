//! A bounded pool of connections, each with its prepared statements: taken for one operation
//! and given back, or dropped when the operation found the connection broken. Connections are
//! made on demand, so a database that comes back is used again without a restart.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;
use zoftoken_storage::KvError;

use crate::config::PgConfig;
use crate::error::{kv_error, PgOpenError};

/// One connection and the statements prepared on it, by their text.
pub(crate) struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    /// The statement of `sql`, prepared on this connection the first time.
    pub(crate) fn prepared(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

struct Slots {
    idle: Vec<Conn>,
    /// Connections open or being opened, idle or taken.
    open: usize,
}

pub(crate) struct Pool {
    config: PgConfig,
    /// `None`: plaintext.
    tls: Option<MakeRustlsConnect>,
    slots: Mutex<Slots>,
    freed: Condvar,
}

impl Pool {
    /// A pool, with one connection made now so that a database that cannot be reached fails
    /// the start.
    pub(crate) fn new(config: &PgConfig) -> Result<Pool, PgOpenError> {
        let tls = crate::tls::connector(config)?;
        let first = connect(config, tls.as_ref()).map_err(PgOpenError::Connect)?;
        Ok(Pool {
            config: config.clone(),
            tls,
            slots: Mutex::new(Slots {
                idle: vec![first],
                open: 1,
            }),
            freed: Condvar::new(),
        })
    }

    pub(crate) fn describe(&self) -> String {
        self.config.describe()
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection: an idle one, a new one while there are fewer than the pool's size, or
    /// the next one given back, waiting at most the checkout timeout.
    pub(crate) fn get(&self) -> Result<Taken<'_>, KvError> {
        let deadline = Instant::now() + self.config.checkout_timeout;
        let mut slots = self.lock();
        loop {
            while let Some(conn) = slots.idle.pop() {
                if !conn.client.is_closed() {
                    return Ok(Taken {
                        pool: self,
                        conn: Some(conn),
                    });
                }
                slots.open -= 1;
            }
            if slots.open < self.config.pool_size.max(1) {
                slots.open += 1;
                drop(slots);
                return match connect(&self.config, self.tls.as_ref()) {
                    Ok(conn) => Ok(Taken {
                        pool: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KvError::Io(
                    format!(
                        "no PostgreSQL connection free within {:?} (pool of {})",
                        self.config.checkout_timeout, self.config.pool_size
                    )
                    .into(),
                ));
            }
            slots = self
                .freed
                .wait_timeout(slots, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

fn connect(config: &PgConfig, tls: Option<&MakeRustlsConnect>) -> Result<Conn, KvError> {
    let mut inner = config.inner.clone();
    let ms = config.statement_timeout.as_millis().max(1);
    inner.options(format!("-c statement_timeout={ms}").as_str());
    let mut client = match tls {
        Some(tls) => inner.connect(tls.clone()),
        None => inner.connect(NoTls),
    }
    .map_err(kv_error)?;
    generic_plans(&mut client).map_err(kv_error)?;
    Ok(Conn {
        client,
        statements: HashMap::new(),
    })
}

/// Asks for generic plans of the prepared statements. A write's statement has the same shape
/// whatever its arrays hold (unnest, one primary-key join per table), but PostgreSQL's default
/// plans it again for every execution while custom plans look cheaper, which cost as much
/// CPU as running it (see BENCHMARKS.md). A database that does not know the setting (before
/// PostgreSQL 12, other engines of its protocol) keeps its default.
fn generic_plans(client: &mut Client) -> Result<(), postgres::Error> {
    match client.batch_execute("SET plan_cache_mode = force_generic_plan") {
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(()),
        other => other,
    }
}

/// A connection taken from the pool; given back when dropped, unless an operation found it
/// broken.
pub(crate) struct Taken<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl Taken<'_> {
    /// Runs one operation on the connection, mapping PostgreSQL's error to its kind; a
    /// connection left closed by the error is not given back.
    pub(crate) fn run<T>(
        &mut self,
        op: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, KvError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(KvError::Io("connection already dropped".into()));
        };
        op(conn).map_err(kv_error)
    }

    /// The connection itself, for an operation that maps its errors on its own.
    pub(crate) fn conn(&mut self) -> Result<&mut Conn, KvError> {
        self.conn
            .as_mut()
            .ok_or_else(|| KvError::Io("connection already dropped".into()))
    }

    pub(crate) fn client(&mut self) -> Result<&mut Client, KvError> {
        self.conn
            .as_mut()
            .map(Conn::client)
            .ok_or_else(|| KvError::Io("connection already dropped".into()))
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let mut slots = self.pool.lock();
        if conn.client.is_closed() {
            slots.open -= 1;
        } else {
            slots.idle.push(conn);
        }
        drop(slots);
        self.pool.freed.notify_one();
    }
}
