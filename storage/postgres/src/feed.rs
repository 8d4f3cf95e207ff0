//! The change feed ([`zoftoken_storage::kv::feed`]) on PostgreSQL: every write statement
//! also inserts a row into `zoftoken_changes` (its transaction id, its writer, the keys it
//! wrote). A reader asks, in one statement and so one snapshot, for the rows of transactions
//! numbered at or above its cursor and for the snapshot's `xmin`, the oldest transaction
//! still running: every transaction below it has finished, so the rows below it that the
//! reader has seen are all there will ever be, and the cursor moves to it. Rows at or above
//! it (a later transaction may commit before an earlier one) are read again until they fall
//! below, but reported once (the cursor lists them). This is the way PgQ reads its queues.
//!
//! Rows older than the feed's retention are deleted by any server ([`prune`]); the highest
//! transaction id deleted is kept, so that a reader whose cursor is below it knows it missed
//! rows ([`FeedError::Behind`]).

use std::time::Duration;

use zoftoken_storage::kv::feed::decode_keys;
use zoftoken_storage::{FeedChanges, FeedCursor, FeedError, KvError};

use crate::pool::Conn;

/// The transaction id of the oldest transaction still running, as the statement sees it.
const XMIN: &str = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

/// The statement clause that records a write in the feed: parameters `$writer` (bigint) and
/// `$keys` (bytea).
pub(crate) fn insert_clause(writer: usize, keys: usize) -> String {
    format!(
        "INSERT INTO zoftoken_changes (writer, keys) VALUES (${writer}::bigint, ${keys}::bytea)"
    )
}

/// The cursor of a reader that has read everything committed so far.
pub(crate) fn start(c: &mut Conn) -> Result<FeedCursor, postgres::Error> {
    let s = c.prepared(&format!("SELECT {XMIN}"))?;
    let xmin: i64 = c.client().query_one(&s, &[])?.try_get(0)?;
    Ok(FeedCursor {
        complete_below: u64::try_from(xmin).unwrap_or(0),
        reported: Vec::new(),
    })
}

/// The commits after `cursor`, their keys unless `own` wrote them.
pub(crate) fn read(
    c: &mut Conn,
    cursor: &FeedCursor,
    own: u64,
    kept: Duration,
) -> Result<FeedChanges, FeedError> {
    let run = |c: &mut Conn| -> Result<Vec<postgres::Row>, postgres::Error> {
        let s = c.prepared(&format!(
            "WITH s AS (SELECT {XMIN} AS xmin, \
             (SELECT below FROM zoftoken_changes_pruned) AS pruned) \
             SELECT s.xmin, s.pruned, c.xid, \
             CASE WHEN c.writer = $3 THEN NULL ELSE c.keys END \
             FROM s LEFT JOIN zoftoken_changes c \
             ON c.xid >= $1 AND NOT (c.xid = ANY($2::bigint[])) ORDER BY c.xid"
        ))?;
        let below = i64::try_from(cursor.complete_below).unwrap_or(i64::MAX);
        let reported: Vec<i64> = cursor
            .reported
            .iter()
            .map(|x| i64::try_from(*x).unwrap_or(i64::MAX))
            .collect();
        let own = i64::try_from(own).unwrap_or(i64::MAX);
        c.client().query(&s, &[&below, &reported, &own])
    };
    let rows = run(c).map_err(crate::error::kv_error)?;
    let mut changes = FeedChanges::default();
    let mut xmin = cursor.complete_below;
    let mut new = Vec::new();
    for row in &rows {
        let get = |e| FeedError::Kv(crate::error::kv_error(e));
        let x: i64 = row.try_get(0).map_err(get)?;
        xmin = u64::try_from(x).unwrap_or(0).max(cursor.complete_below);
        let pruned: Option<i64> = row.try_get(1).map_err(get)?;
        if pruned.is_some_and(|p| u64::try_from(p).unwrap_or(0) > cursor.complete_below) {
            return Err(FeedError::Behind { kept });
        }
        let Some(xid) = row.try_get::<_, Option<i64>>(2).map_err(get)? else {
            continue;
        };
        new.push(u64::try_from(xid).unwrap_or(0));
        changes.commits += 1;
        if let Some(keys) = row.try_get::<_, Option<&[u8]>>(3).map_err(get)? {
            decode_keys(keys, &mut changes.keys).ok_or_else(|| {
                FeedError::Kv(KvError::Corruption(
                    format!("change feed row of transaction {xid} is not a key list").into(),
                ))
            })?;
        }
    }
    let mut reported: Vec<u64> = cursor
        .reported
        .iter()
        .copied()
        .chain(new)
        .filter(|x| *x >= xmin)
        .collect();
    reported.sort_unstable();
    reported.dedup();
    changes.cursor = FeedCursor {
        complete_below: xmin,
        reported,
    };
    Ok(changes)
}

/// Deletes the feed's rows older than `keep` and records the highest transaction id deleted.
pub(crate) fn prune(c: &mut Conn, keep: Duration) -> Result<u64, postgres::Error> {
    let s = c.prepared(
        "WITH d AS (DELETE FROM zoftoken_changes \
         WHERE at < now() - make_interval(secs => $1::float8) RETURNING xid), \
         p AS (INSERT INTO zoftoken_changes_pruned (below) \
         SELECT max(xid) + 1 FROM d HAVING count(*) > 0 \
         ON CONFLICT (one) DO UPDATE \
         SET below = greatest(zoftoken_changes_pruned.below, excluded.below)) \
         SELECT count(*) FROM d",
    )?;
    let n: i64 = c
        .client()
        .query_one(&s, &[&keep.as_secs_f64()])?
        .try_get(0)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
