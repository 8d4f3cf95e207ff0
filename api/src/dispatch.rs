//! One request from end to end: the route ([`crate::routes::resolve`]), the authorisation it
//! declares, its handler ([`crate::routes::call`]), the answer and its metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::Request;

use crate::connection_key::ConnectionKey;
use crate::context::{Ctx, State};
use crate::error::Failure;
use crate::resources::tokens;
use crate::response::{Outcome, Resp};
use crate::routes::{self, Operation};

/// Handles one request of the connection from `peer` (whose last verified authkey is `key`);
/// never fails (every error is a JSON answer).
pub(crate) async fn handle(
    state: &Arc<State>,
    peer: SocketAddr,
    key: &ConnectionKey,
    req: Request<Incoming>,
) -> Resp {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let (op, outcome) = dispatch(state, peer, key, &parts, body).await;
    let resp = outcome.unwrap_or_else(Failure::into_response);
    state.meters.record(op, resp.status(), start.elapsed());
    resp
}

/// The operation of the request (`None`: no route) and its outcome.
async fn dispatch(
    state: &Arc<State>,
    peer: SocketAddr,
    key: &ConnectionKey,
    parts: &Parts,
    body: Incoming,
) -> (Option<Operation>, Outcome) {
    let (route, params) = match routes::resolve(parts.uri.path(), parts.method.as_str()) {
        Ok(matched) => matched,
        Err(e) => return (None, Err(e.into())),
    };
    let ctx = Ctx {
        state,
        peer,
        parts,
        key,
    };
    let outcome = match ctx.authorize_route(route.authorization, &params) {
        // Status polls, the hot path, run inline; every other handler's future is boxed, so
        // that the request's future (moved into place at every request) is only as large as
        // the status poll's, not as the largest handler's.
        Ok(()) if route.operation == Operation::TokenStatus => {
            tokens::token_status(&ctx, params, body).await
        }
        Ok(()) => Box::pin(routes::call(route.operation, &ctx, params, body)).await,
        Err(f) => Err(f),
    };
    (Some(route.operation), outcome)
}
