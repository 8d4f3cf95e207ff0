//! The API's resources, one module each; every handler is named after its operation id and
//! declared once in [`crate::routes`]. Also what token operations share: changes made by
//! the admin layer's [`Tokens`] on the blocking pool (committed before the answer), and
//! reads that wait out another request's change still being written.

pub(crate) mod authkeys;
pub(crate) mod codes;
pub(crate) mod enrollments;
pub(crate) mod health;
pub(crate) mod services;
mod status_json;
pub(crate) mod tokens;
pub(crate) mod transactions;
pub(crate) mod webhooks;

use std::time::Duration;

use zoftoken_admin::{AdminError, Tokens};
use zoftoken_engine::{Batch, Engine, EngineError};
use zoftoken_proto::TokenId;

use crate::context::{blocking, Ctx};
use crate::error::Failure;
use crate::routes::matcher::Tok;

/// How long a read waits for a token whose change is being written by another request
/// before it answers `503 token_busy` (a commit takes microseconds to milliseconds).
const UNSETTLED_WAIT: Duration = Duration::from_secs(1);
const UNSETTLED_POLL: Duration = Duration::from_millis(2);

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
    match read() {
        // Boxed: the wait's timer stays out of the future of a read that needs none.
        Err(EngineError::Unsettled) => Box::pin(settled_after_waits(read)).await,
        r => r,
    }
}

/// The rest of [`settled`], after a first read found the token unsettled.
async fn settled_after_waits<R>(
    read: impl Fn() -> Result<R, EngineError>,
) -> Result<R, EngineError> {
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(UNSETTLED_POLL).await;
        match read() {
            Err(EngineError::Unsettled) if started.elapsed() < UNSETTLED_WAIT => {}
            r => return r,
        }
    }
}

/// Runs a change of the token of the path through the admin layer ([`Tokens`]), on the
/// blocking pool.
pub(crate) async fn token_change<R: Send + 'static>(
    ctx: &Ctx<'_>,
    tok: Tok<'_>,
    change: impl FnOnce(Tokens<'_>, u64, &str, &str) -> Result<R, AdminError> + Send + 'static,
) -> Result<R, Failure> {
    let (engine, store, now) = ctx.handles();
    let (service, username) = (tok.service.to_owned(), tok.username.to_owned());
    blocking(move || {
        Ok(change(
            Tokens::new(&store, &engine),
            now,
            &service,
            &username,
        )?)
    })
    .await
}

/// Runs an engine operation on the token of the path ([`Tokens::change`]).
pub(crate) async fn token_op<R: Send + 'static>(
    ctx: &Ctx<'_>,
    tok: Tok<'_>,
    op: impl FnMut(&Engine, u64, &TokenId, &mut Batch) -> Result<R, EngineError> + Send + 'static,
) -> Result<R, Failure> {
    token_change(ctx, tok, move |tokens, now, service, username| {
        tokens.change(now, service, username, op)
    })
    .await
}
