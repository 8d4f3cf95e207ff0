//! A [`WriteBatch`] as one SQL statement: the batch's writes reduced to one final effect per
//! key, then one data-modifying `WITH` clause per table and kind (upserts, deletes, the
//! versioned state compare-and-set) over arrays, so that the whole batch is one transaction
//! and one round trip. The statement text depends only on which clauses the batch needs and
//! is prepared once per connection.

use std::collections::HashMap;
use std::fmt::Write as _;

use postgres::types::ToSql;
use zoftoken_storage::schema::{newer_state, state_version};
use zoftoken_storage::{Cf, KvError, Op, WriteBatch};

use zoftoken_storage::kv::feed::encode_keys;

use crate::feed;
use crate::migrate::table;
use crate::pool::Conn;

/// The final effect of a batch on one key.
enum Effect<'a> {
    Put(&'a [u8]),
    Delete,
    /// A versioned state put compared against the stored version `expected` (the version just
    /// before the first versioned put of the key in the batch).
    Versioned {
        value: &'a [u8],
        expected: u32,
    },
}

/// Per table: upserted keys and values, deleted keys; for `state`, the compared writes.
#[derive(Default)]
struct Table<'a> {
    put_keys: Vec<&'a [u8]>,
    put_values: Vec<&'a [u8]>,
    put_versions: Vec<i64>,
    deletes: Vec<&'a [u8]>,
    cas_keys: Vec<&'a [u8]>,
    cas_values: Vec<&'a [u8]>,
    cas_versions: Vec<i64>,
    cas_expected: Vec<i64>,
    /// Whether the key may have no row yet: the batch also writes its `secrets` record (the
    /// token is created by this batch). Otherwise a missing row means another writer deleted
    /// the token, and the write is a conflict.
    cas_may_insert: Vec<bool>,
}

/// A batch ready to run.
pub(crate) struct Plan<'a> {
    tables: Vec<(Cf, Table<'a>)>,
    /// The writer named in the change feed, and the keys written ([`crate::feed`]).
    writer: i64,
    feed_keys: Vec<u8>,
}

fn version_of(value: &[u8]) -> Result<u32, KvError> {
    state_version(value).ok_or_else(|| KvError::Other("a state value without a version".into()))
}

impl<'a> Plan<'a> {
    /// The batch's final effect per key, grouped by table, written by `writer`.
    pub(crate) fn of(batch: &'a WriteBatch, writer: u64) -> Result<Plan<'a>, KvError> {
        let mut effects: HashMap<(Cf, &'a [u8]), Effect<'a>> = HashMap::new();
        for op in batch.ops() {
            match op {
                Op::Put(cf, k, v) => {
                    effects.insert((cf, k), Effect::Put(v));
                }
                Op::Delete(cf, k) => {
                    effects.insert((cf, k), Effect::Delete);
                }
                Op::PutNewer(Cf::State, k, v) => {
                    let version = version_of(v)?;
                    let effect = match effects.remove(&(Cf::State, k)) {
                        None => Effect::Versioned {
                            value: v,
                            expected: version.wrapping_sub(1),
                        },
                        // In order: each write of a key follows the one before it.
                        Some(Effect::Versioned { value, expected }) => {
                            if version_of(value)?.wrapping_add(1) != version {
                                return Err(KvError::Conflict(
                                    "a batch's versioned writes of one key are not in sequence"
                                        .into(),
                                ));
                            }
                            Effect::Versioned { value: v, expected }
                        }
                        // Written or deleted earlier in this batch: that is what it replaces.
                        Some(Effect::Put(value)) => Effect::Put(newer_state(value, v)),
                        Some(Effect::Delete) => Effect::Put(v),
                    };
                    effects.insert((Cf::State, k), effect);
                }
                Op::PutNewer(cf, _, _) => {
                    return Err(KvError::Other(
                        format!("versioned puts are only supported in `state`, not `{cf}`").into(),
                    ))
                }
            }
        }
        let creates: std::collections::HashSet<&'a [u8]> = effects
            .iter()
            .filter(|((cf, _), e)| *cf == Cf::Secrets && matches!(e, Effect::Put(_)))
            .map(|((_, k), _)| *k)
            .collect();
        let mut tables: HashMap<Cf, Table<'a>> = HashMap::new();
        for ((cf, k), effect) in effects {
            let t = tables.entry(cf).or_default();
            match effect {
                Effect::Put(v) => {
                    t.put_keys.push(k);
                    t.put_values.push(v);
                    if cf == Cf::State {
                        t.put_versions
                            .push(i64::from(state_version(v).unwrap_or(0)));
                    }
                }
                Effect::Delete => t.deletes.push(k),
                Effect::Versioned { value, expected } => {
                    t.cas_keys.push(k);
                    t.cas_values.push(value);
                    t.cas_versions.push(i64::from(version_of(value)?));
                    t.cas_expected.push(i64::from(expected));
                    t.cas_may_insert.push(creates.contains(k));
                }
            }
        }
        let mut tables: Vec<(Cf, Table<'a>)> = tables.into_iter().collect();
        tables.sort_by_key(|(cf, _)| *cf);
        let feed_keys = encode_keys(tables.iter().flat_map(|(cf, t)| {
            t.put_keys
                .iter()
                .chain(&t.deletes)
                .chain(&t.cas_keys)
                .map(move |k| (*cf, *k))
        }));
        Ok(Plan {
            tables,
            writer: i64::try_from(writer).unwrap_or(i64::MAX),
            feed_keys,
        })
    }

    /// The statement and its parameters.
    fn statement(&self) -> (String, Vec<&(dyn ToSql + Sync)>) {
        let mut sql = String::from("WITH ");
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        let mut clauses = 0;
        let mut cas = None;
        let mut clause = |sql: &mut String, text: std::fmt::Arguments<'_>| {
            if clauses > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "w{clauses} AS ({text})");
            clauses += 1;
            clauses - 1
        };
        for (cf, t) in &self.tables {
            let name = table(*cf);
            if !t.put_keys.is_empty() {
                let n = params.len();
                params.push(&t.put_keys);
                params.push(&t.put_values);
                if *cf == Cf::State {
                    params.push(&t.put_versions);
                    clause(
                        &mut sql,
                        format_args!(
                            "INSERT INTO {name} (k, v, version) SELECT * FROM \
                             unnest(${}::bytea[], ${}::bytea[], ${}::bigint[]) ON CONFLICT (k) \
                             DO UPDATE SET v = excluded.v, version = excluded.version",
                            n + 1,
                            n + 2,
                            n + 3
                        ),
                    );
                } else {
                    clause(
                        &mut sql,
                        format_args!(
                            "INSERT INTO {name} (k, v) SELECT * FROM \
                             unnest(${}::bytea[], ${}::bytea[]) ON CONFLICT (k) \
                             DO UPDATE SET v = excluded.v",
                            n + 1,
                            n + 2
                        ),
                    );
                }
            }
            if !t.deletes.is_empty() {
                params.push(&t.deletes);
                let n = params.len();
                clause(
                    &mut sql,
                    format_args!("DELETE FROM {name} WHERE k = ANY(${n}::bytea[])"),
                );
            }
            if !t.cas_keys.is_empty() {
                let n = params.len();
                params.push(&t.cas_keys);
                params.push(&t.cas_values);
                params.push(&t.cas_versions);
                params.push(&t.cas_expected);
                params.push(&t.cas_may_insert);
                let input = clause(
                    &mut sql,
                    format_args!(
                        "SELECT * FROM unnest(${}::bytea[], ${}::bytea[], ${}::bigint[], \
                         ${}::bigint[], ${}::boolean[]) AS i(k, v, version, expected, may_insert)",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4,
                        n + 5
                    ),
                );
                // A row whose stored version is the expected one is updated (a concurrent
                // change makes PostgreSQL re-check the condition on the newest row); a key
                // with no row is inserted if the batch creates its token, unless another
                // writer inserts it first.
                let updated = clause(
                    &mut sql,
                    format_args!(
                        "UPDATE {name} t SET v = i.v, version = i.version FROM w{input} i \
                         WHERE t.k = i.k AND t.version = i.expected RETURNING t.k"
                    ),
                );
                let inserted = clause(
                    &mut sql,
                    format_args!(
                        "INSERT INTO {name} (k, v, version) SELECT i.k, i.v, i.version \
                         FROM w{input} i WHERE i.may_insert \
                         AND NOT EXISTS (SELECT 1 FROM {name} t WHERE t.k = i.k) \
                         ON CONFLICT (k) DO NOTHING RETURNING k"
                    ),
                );
                cas = Some((updated, inserted, n + 1));
            }
        }
        params.push(&self.writer);
        params.push(&self.feed_keys);
        let n = params.len();
        clause(&mut sql, format_args!("{}", feed::insert_clause(n - 1, n)));
        // The data-modifying clauses run whatever the main statement reads; the main statement
        // fails the whole statement when a compared write did not apply.
        match cas {
            Some((updated, inserted, keys)) => {
                let _ = write!(
                    sql,
                    " INSERT INTO zoftoken_write_conflict (ok) SELECT false WHERE \
                     (SELECT count(*) FROM w{updated}) + (SELECT count(*) FROM w{inserted}) \
                     <> cardinality(${keys}::bytea[])"
                );
            }
            None => sql.push_str(" SELECT 1"),
        }
        (sql, params)
    }

    /// Runs the batch: one statement, one round trip.
    pub(crate) fn execute(&self, c: &mut Conn) -> Result<(), postgres::Error> {
        let (sql, params) = self.statement();
        let s = c.prepared(&sql)?;
        c.client().execute(&s, &params)?;
        Ok(())
    }
}

/// One compared put (see `KvStore::compare_and_put`), recorded in the change feed as
/// `writer`'s in the same transaction.
pub(crate) fn compare_and_put(
    c: &mut Conn,
    cf: Cf,
    key: &[u8],
    expected: Option<&[u8]>,
    value: &[u8],
    writer: u64,
) -> Result<bool, postgres::Error> {
    let name = table(cf);
    let is_state = cf == Cf::State;
    let version = i64::from(if is_state {
        state_version(value).unwrap_or(0)
    } else {
        0
    });
    let s = match (expected, is_state) {
        (None, true) => c.prepared(&format!(
            "INSERT INTO {name} (k, v, version) VALUES ($1, $2, $3) ON CONFLICT (k) DO NOTHING"
        ))?,
        (None, false) => c.prepared(&format!(
            "INSERT INTO {name} (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING"
        ))?,
        (Some(_), true) => c.prepared(&format!(
            "UPDATE {name} SET v = $2, version = $3 WHERE k = $1 AND v = $4"
        ))?,
        (Some(_), false) => {
            c.prepared(&format!("UPDATE {name} SET v = $2 WHERE k = $1 AND v = $3"))?
        }
    };
    let record = c.prepared(&feed::insert_clause(1, 2))?;
    let keys = encode_keys([(cf, key)]);
    let writer = i64::try_from(writer).unwrap_or(i64::MAX);
    let mut tx = c.client().transaction()?;
    let n = match (expected, is_state) {
        (None, true) => tx.execute(&s, &[&key, &value, &version])?,
        (None, false) => tx.execute(&s, &[&key, &value])?,
        (Some(old), true) => tx.execute(&s, &[&key, &value, &version, &old])?,
        (Some(old), false) => tx.execute(&s, &[&key, &value, &old])?,
    };
    if n == 1 {
        tx.execute(&record, &[&writer, &keys])?;
    }
    tx.commit()?;
    Ok(n == 1)
}
