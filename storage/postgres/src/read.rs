//! Point reads (one key, or many in few queries), the last key, and ordered scans in pages
//! (keyset pagination: each page starts just after the previous one's last key), so that no
//! connection is held while the visitor runs and a scan of millions of rows holds no long
//! transaction.

use std::collections::HashMap;

use zoftoken_storage::kv::{KeyValue, Visitor};
use zoftoken_storage::{Cf, KvError};

use crate::migrate::table;
use crate::pool::{Conn, Pool};

/// Rows per page of a scan.
const PAGE: i64 = 4096;

pub(crate) fn get(c: &mut Conn, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, postgres::Error> {
    let s = c.prepared(&format!("SELECT v FROM {} WHERE k = $1", table(cf)))?;
    c.client()
        .query_opt(&s, &[&key])?
        .map(|r| r.try_get(0))
        .transpose()
}

/// Keys per query of [`get_many`].
const MANY: usize = 1000;

/// The values of `keys` in their order: one query per [`MANY`] keys (`k = ANY($1)`, a
/// primary-key lookup each), instead of a round trip per key.
pub(crate) fn get_many(
    c: &mut Conn,
    cf: Cf,
    keys: &[&[u8]],
) -> Result<Vec<Option<Vec<u8>>>, postgres::Error> {
    let s = c.prepared(&format!(
        "SELECT k, v FROM {} WHERE k = ANY($1::bytea[])",
        table(cf)
    ))?;
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(MANY) {
        let mut found: HashMap<Vec<u8>, Vec<u8>> = HashMap::with_capacity(chunk.len());
        for row in c.client().query(&s, &[&chunk])? {
            found.insert(row.try_get(0)?, row.try_get(1)?);
        }
        out.extend(chunk.iter().map(|k| found.get(*k).cloned()));
    }
    Ok(out)
}

pub(crate) fn last(c: &mut Conn, cf: Cf) -> Result<Option<KeyValue>, postgres::Error> {
    let s = c.prepared(&format!(
        "SELECT k, v FROM {} ORDER BY k DESC LIMIT 1",
        table(cf)
    ))?;
    c.client()
        .query_opt(&s, &[])?
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .transpose()
}

pub(crate) fn scan(
    pool: &Pool,
    cf: Cf,
    start: &[u8],
    end: Option<&[u8]>,
    visit: Visitor<'_>,
) -> Result<(), KvError> {
    let sql = match end {
        Some(_) => format!(
            "SELECT k, v FROM {} WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3",
            table(cf)
        ),
        None => format!(
            "SELECT k, v FROM {} WHERE k >= $1 ORDER BY k LIMIT $2",
            table(cf)
        ),
    };
    let mut from = start.to_vec();
    loop {
        let rows: Vec<KeyValue> = {
            let mut conn = pool.get()?;
            conn.run(|c| {
                let s = c.prepared(&sql)?;
                let rows = match end {
                    Some(end) => c.client().query(&s, &[&from, &end, &PAGE])?,
                    None => c.client().query(&s, &[&from, &PAGE])?,
                };
                rows.into_iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            })?
        };
        let full = rows.len() as i64 == PAGE;
        let Some((last_key, _)) = rows.last() else {
            return Ok(());
        };
        // The smallest key after the last one, in bytewise order.
        let mut next = last_key.clone();
        next.push(0);
        for (k, v) in &rows {
            if !visit(k, v) {
                return Ok(());
            }
        }
        if !full {
            return Ok(());
        }
        from = next;
    }
}
