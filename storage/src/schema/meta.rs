//! The `meta` column family: the keys of the database's own records (schema version,
//! master-key check, server epoch, outbox cursor, event-sequence floors, write probe).

/// The schema version (u32, big-endian).
pub(crate) const SCHEMA: &[u8] = b"schema_version";
/// The master-key check value: [`KEY_CHECK_PLAINTEXT`] sealed under the master key.
pub(crate) const KEY_CHECK: &[u8] = b"master_key_check";
/// What the master-key check value seals.
pub(crate) const KEY_CHECK_PLAINTEXT: &[u8] = b"zoftoken master key check v1";
/// The highest outbox sequence number whose commit left the outbox (u64, big-endian):
/// sequence numbers (the `webhook-id`s) never go below it.
pub(crate) const OUTBOX_ACKED: &[u8] = b"outbox_acked";
/// On a database several processes write: the first outbox sequence number no process has
/// reserved yet (u64, big-endian). Each reserves a block of numbers at a time by comparing
/// and setting it, so no two commits of the instance share a number.
pub(crate) const OUTBOX_NEXT_BLOCK: &[u8] = b"outbox_next_block";
/// Prefix of the reserved outbox blocks: `outbox_block` ‖ first number (u64 BE) → the first
/// number past the block (u64 BE). Written when a block is reserved, before any number of it
/// is used: one process numbers a block's commits in the order it makes them, so a reader
/// merges the blocks of a backlog to read it in the order its events were made.
pub(crate) const OUTBOX_BLOCK: &[u8] = b"outbox_block";
/// On a database several servers share: the webhook delivery lease (holder epoch and renewal
/// count, u64 big-endian each; see `crate::lease`).
pub(crate) const WEBHOOK_LEASE: &[u8] = b"webhook_lease";
/// The last server epoch handed out (u32, big-endian).
pub(crate) const EPOCH: &[u8] = b"epoch";
/// Prefix of the event-sequence floors: `event_seq_floor` ‖ floor (u64 BE), empty values. Each
/// commit that uses numbers at or above the durable floor adds one in its own write; the
/// highest is the floor (a set of keys, so concurrent commits reach the disk in any order).
pub(crate) const EVENT_FLOOR: &[u8] = b"event_seq_floor";
/// The last write of the health probe (Unix ms, u64 big-endian).
pub(crate) const WRITE_PROBE: &[u8] = b"write_probe";

/// The key of the event-sequence floor `floor`.
pub(crate) fn event_floor_key(floor: u64) -> Vec<u8> {
    let mut k = EVENT_FLOOR.to_vec();
    k.extend_from_slice(&floor.to_be_bytes());
    k
}

/// The floor of an event-sequence floor key; `None` if it is not one.
pub(crate) fn event_floor_of(key: &[u8]) -> Option<u64> {
    key.strip_prefix(EVENT_FLOOR)
        .and_then(|n| <[u8; 8]>::try_from(n).ok())
        .map(u64::from_be_bytes)
}

/// The key just past every event-sequence floor (the end of their scan).
pub(crate) fn event_floor_end() -> Vec<u8> {
    let mut e = EVENT_FLOOR.to_vec();
    e.push(0xff);
    e
}

/// The key of the reserved outbox block starting at `from`.
pub(crate) fn outbox_block_key(from: u64) -> Vec<u8> {
    let mut k = OUTBOX_BLOCK.to_vec();
    k.extend_from_slice(&from.to_be_bytes());
    k
}

/// The key just past every reserved outbox block (the end of their scan).
pub(crate) fn outbox_block_end() -> Vec<u8> {
    let mut e = OUTBOX_BLOCK.to_vec();
    e.push(0xff);
    e
}
