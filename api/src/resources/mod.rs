//! The API's resources, one module each; every handler is named after its operation id and
//! declared once in [`crate::routes`]. Also what token operations share: changes committed
//! on the blocking pool before the answer, and reads that wait out another request's
//! change still being written.

pub(crate) mod authkeys;
pub(crate) mod codes;
pub(crate) mod health;
pub(crate) mod services;
pub(crate) mod tokens;
pub(crate) mod transactions;
pub(crate) mod webhooks;

use std::time::Duration;

use zoftoken_engine::{Batch, Engine, EngineError};
use zoftoken_proto::TokenId;
use zoftoken_storage::Store;

use crate::context::{blocking, Ctx};
use crate::error::{storage_unavailable, Failure, TOKEN_BUSY};
use crate::routes::matcher::Tok;

/// Refuses a change up front while the database cannot write (after trying whether it can
/// again: a small write).
pub(crate) fn writable(engine: &Engine, store: &Store, now: u64) -> Result<(), Failure> {
    if !store.health().writable() {
        store.probe(engine, now);
    }
    if store.health().writable() {
        Ok(())
    } else {
        Err(storage_unavailable())
    }
}

/// How long an API call waits for a token whose change is being written by another request
/// before it answers `503 token_busy` (a commit takes microseconds to milliseconds).
const UNSETTLED_WAIT: Duration = Duration::from_secs(1);
const UNSETTLED_POLL: Duration = Duration::from_millis(2);

/// Runs `op` (on the blocking pool), again while the token has a change of another request
/// not yet written ([`EngineError::Unsettled`]), up to [`UNSETTLED_WAIT`].
pub(crate) fn settled_retry<R>(mut op: impl FnMut() -> Result<R, Failure>) -> Result<R, Failure> {
    let started = std::time::Instant::now();
    loop {
        match op() {
            Err(f) if f.code == TOKEN_BUSY && started.elapsed() < UNSETTLED_WAIT => {
                std::thread::sleep(UNSETTLED_POLL)
            }
            r => return r,
        }
    }
}

/// A token's status, waiting (asynchronously) while another request's change to it is
/// being written, up to [`UNSETTLED_WAIT`].
pub(crate) async fn settled_status(
    engine: &Engine,
    now: impl Fn() -> u64,
    service: &str,
    username: &str,
) -> Result<zoftoken_engine::TokenStatus, Failure> {
    Ok(settled(|| engine.status(now(), service, username)).await?)
}

/// Runs a read of the engine again (asynchronously) while it answers
/// [`EngineError::Unsettled`], up to [`UNSETTLED_WAIT`].
pub(crate) async fn settled<R>(
    read: impl Fn() -> Result<R, EngineError>,
) -> Result<R, EngineError> {
    let started = std::time::Instant::now();
    loop {
        match read() {
            Err(EngineError::Unsettled) if started.elapsed() < UNSETTLED_WAIT => {
                tokio::time::sleep(UNSETTLED_POLL).await
            }
            r => return r,
        }
    }
}

/// Persists a batch exactly as the command line does, then publishes its events. Nothing is
/// answered as done before this returns.
/// A failed write restores the batch's tokens from the database, so nothing it changed stays
/// visible (`zoftoken_storage::Store::commit_batch`).
pub(crate) fn commit(
    engine: &Engine,
    store: &Store,
    now: u64,
    batch: &mut Batch,
) -> Result<(), Failure> {
    if !batch.is_empty() {
        store.commit_batch(engine, now, batch)?;
    }
    Ok(())
}

/// Loads a token that is stored but not in memory (its service was missing at start), as the
/// command line does. A loaded token costs no storage read.
pub(crate) fn ensure_loaded(
    engine: &Engine,
    store: &Store,
    now: u64,
    id: &TokenId,
) -> Result<(), Failure> {
    if matches!(engine.status_by_id(now, id), Err(EngineError::UnknownToken))
        && store.token_info(id)?.is_some()
    {
        store.load_one(engine, now, id)?;
    }
    Ok(())
}

/// Runs an engine operation on a token (loaded if needed) and commits its batch.
pub(crate) async fn token_op<R: Send + 'static>(
    ctx: &Ctx<'_>,
    tok: Tok<'_>,
    op: impl Fn(&Engine, u64, &TokenId, &mut Batch) -> Result<R, EngineError> + Send + 'static,
) -> Result<R, Failure> {
    let (engine, store, now) = ctx.handles();
    let (service, username) = (tok.service.to_owned(), tok.username.to_owned());
    blocking(move || {
        if engine.service_index_of(&service).is_none() {
            return Err(EngineError::UnknownService.into());
        }
        writable(&engine, &store, now)?;
        let id = TokenId::derive(&service, &username);
        ensure_loaded(&engine, &store, now, &id)?;
        settled_retry(|| {
            let mut batch = Batch::new();
            let r = op(&engine, now, &id, &mut batch);
            // A failed operation may still have counted a failure: commit what it changed.
            commit(&engine, &store, now, &mut batch)?;
            Ok(r?)
        })
    })
    .await
}
