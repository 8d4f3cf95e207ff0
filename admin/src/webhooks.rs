//! The webhook pipeline's dead letters (listed, replayed, deleted) and the endpoints it
//! disabled after a 410 Gone, through `zoftoken-webhooks`' store functions. A replay is
//! queued in the store: a running pipeline delivers it at its next poll, a stopped server at
//! its next start.

use zoftoken_storage::{DisabledEndpoint, Store};
use zoftoken_webhooks::DeadLetter;

use crate::error::AdminError;

/// Dead letters listed when no limit is given.
pub const DEAD_LETTERS_DEFAULT: usize = 100;
/// Most dead letters listed at once: a larger limit is lowered to it.
pub const DEAD_LETTERS_MAX: usize = 1000;

/// How many dead letters a listing asked for `requested` returns at most.
pub fn dead_letter_limit(requested: Option<usize>) -> usize {
    requested
        .unwrap_or(DEAD_LETTERS_DEFAULT)
        .min(DEAD_LETTERS_MAX)
}

/// The dead letters, oldest first, at most [`dead_letter_limit`] of `limit`.
pub fn dead_letters(store: &Store, limit: Option<usize>) -> Result<Vec<DeadLetter>, AdminError> {
    Ok(zoftoken_webhooks::dead_letters(
        store,
        dead_letter_limit(limit),
    )?)
}

/// Queues dead letter `id` for delivery again (same `webhook-id`).
pub fn replay_dead_letter(store: &Store, id: &str) -> Result<(), AdminError> {
    if zoftoken_webhooks::replay_dead_letter(store, id)? {
        Ok(())
    } else {
        Err(AdminError::UnknownDeadLetter(id.to_owned()))
    }
}

/// Queues every dead letter for delivery again; returns how many.
pub fn replay_all_dead_letters(store: &Store) -> Result<usize, AdminError> {
    Ok(zoftoken_webhooks::replay_all_dead_letters(store)?)
}

/// Drops dead letter `id` for good.
pub fn delete_dead_letter(store: &Store, id: &str) -> Result<(), AdminError> {
    if zoftoken_webhooks::delete_dead_letter(store, id)? {
        Ok(())
    } else {
        Err(AdminError::UnknownDeadLetter(id.to_owned()))
    }
}

/// The endpoints disabled after answering 410 Gone (a changed webhook configuration or a
/// replay re-enables one).
pub fn disabled_endpoints(store: &Store) -> Result<Vec<DisabledEndpoint>, AdminError> {
    Ok(zoftoken_webhooks::disabled_endpoints(store)?)
}
