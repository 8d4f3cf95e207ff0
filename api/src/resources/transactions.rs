//! Transactions for push approval: created with a message, read at once or long-polled until
//! the user approves or denies them in the app, or they expire.

use std::time::Duration;

use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use zoftoken_engine::EngineError;
use zoftoken_proto::{TokenId, TxState};

use super::{settled, token_op};
use crate::context::Ctx;
use crate::error::{fresh, Failure};
use crate::response::{created, ok, Outcome};
use crate::routes::Params;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxBody {
    message: String,
    #[serde(default = "default_tx_timeout")]
    timeout_s: u64,
}

fn default_tx_timeout() -> u64 {
    120
}

fn tx_state_name(s: TxState) -> &'static str {
    match s {
        TxState::Waiting => "waiting",
        TxState::Approved => "approved",
        TxState::Denied => "denied",
        TxState::Expired => "expired",
    }
}

fn tx_body(tx: &zoftoken_engine::Transaction) -> Value {
    json!({
        "tx_id": hex::encode(tx.tx_id),
        "state": tx_state_name(tx.state),
        "message": tx.message,
        "created_ms": tx.created_ms,
        "expires_ms": tx.expires_ms,
        "duress": tx.duress,
    })
}

/// `POST …/transactions`: a transaction waiting for the user's decision.
pub(crate) async fn transaction_create(ctx: &Ctx<'_>, p: Params<'_>, body: Incoming) -> Outcome {
    let tok = p.token()?;
    let b: TxBody = ctx.json(body).await?;
    let timeout_ms = b.timeout_s.saturating_mul(1000);
    let (tx_id, now) = token_op(ctx, tok, move |e, now, id, batch| {
        e.create_transaction(now, id, &b.message, timeout_ms, batch)
            .map(|t| (t, now))
    })
    .await?;
    created(&json!({
        "tx_id": hex::encode(tx_id),
        "state": "waiting",
        "expires_ms": now.saturating_add(timeout_ms),
    }))
}

/// `GET …/transactions/{tx_id}[?wait=N]`: at once, or when it is decided or expires.
pub(crate) async fn transaction_get(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let tok = p.token()?;
    let q = ctx.query(&["wait"])?;
    let mut tx_id = [0u8; 16];
    hex::decode_to_slice(p.tx_id()?, &mut tx_id)
        .map_err(|_| Failure::bad("invalid_tx_id", "tx_id must be 32 hexadecimal digits"))?;
    let state = ctx.state;
    let engine = &state.engine;
    if engine.service_index_of(tok.service).is_none() {
        return Err(EngineError::UnknownService.into());
    }
    let id = TokenId::derive(tok.service, tok.username);
    let read = |now: u64| async move {
        let read = settled(|| engine.transaction(now, &tx_id)).await;
        fresh(&state.store)?;
        match read {
            Ok(t) if t.token_id == id => Ok(t),
            Err(EngineError::Unsettled) => Err(Failure::from(EngineError::Unsettled)),
            _ => Err(Failure::from(EngineError::UnknownTransaction)),
        }
    };
    let now = state.now();
    let t = read(now).await?;
    if q.wait_s == 0 || t.state != TxState::Waiting {
        return ok(&tx_body(&t));
    }
    let changed = engine.watch(&id);
    let t = read(now).await?;
    if t.state != TxState::Waiting {
        return ok(&tx_body(&t));
    }
    let limit = Duration::from_secs(q.wait_s)
        .min(state.config.max_wait)
        .min(Duration::from_millis(t.expires_ms.saturating_sub(now)));
    tokio::select! {
        _ = changed => {}
        _ = tokio::time::sleep(limit) => {}
        _ = state.stopping() => {}
    }
    ok(&tx_body(&read(state.now()).await?))
}
