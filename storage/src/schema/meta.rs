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

/// The key just past every event-sequence floor (the end of their scan).
pub(crate) fn event_floor_end() -> Vec<u8> {
    let mut e = EVENT_FLOOR.to_vec();
    e.push(0xff);
    e
}
