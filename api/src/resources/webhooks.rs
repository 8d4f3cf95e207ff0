//! The webhook pipeline's dead letters (listed, replayed, deleted) and the endpoints it
//! disabled after a 410 Gone, through the admin layer; unrestricted admin keys only. A
//! replay is queued in the store; the running pipeline delivers it at its next poll.

use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::context::{blocking, Ctx};
use crate::response::{ok, Outcome};
use crate::routes::Params;

/// `GET /v1/webhooks/dead-letters[?limit=N]`: oldest first, at most
/// [`zoftoken_admin::DEAD_LETTERS_MAX`].
pub(crate) async fn dead_letter_list(ctx: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    let q = ctx.query(&["limit"])?;
    let store = ctx.state.store.clone();
    let list = blocking(move || Ok(zoftoken_admin::dead_letters(&store, q.limit)?)).await?;
    ok(&json!({ "dead_letters": list }))
}

/// `POST /v1/webhooks/dead-letters/{id}/replay`: delivered again, same `webhook-id`.
pub(crate) async fn dead_letter_replay(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let id = p.dead_letter_id()?.to_owned();
    ctx.query(&[])?;
    let store = ctx.state.store.clone();
    blocking(move || Ok(zoftoken_admin::replay_dead_letter(&store, &id)?)).await?;
    ok(&json!({ "replayed": true }))
}

/// `POST /v1/webhooks/dead-letters/replay`: every dead letter delivered again.
pub(crate) async fn dead_letter_replay_all(ctx: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    ctx.query(&[])?;
    let store = ctx.state.store.clone();
    let n = blocking(move || Ok(zoftoken_admin::replay_all_dead_letters(&store)?)).await?;
    ok(&json!({ "replayed": n }))
}

/// `DELETE /v1/webhooks/dead-letters/{id}`: dropped for good.
pub(crate) async fn dead_letter_delete(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let id = p.dead_letter_id()?.to_owned();
    ctx.query(&[])?;
    let store = ctx.state.store.clone();
    blocking(move || Ok(zoftoken_admin::delete_dead_letter(&store, &id)?)).await?;
    ok(&json!({ "deleted": true }))
}

/// `GET /v1/webhooks/disabled`: endpoints disabled after a 410 Gone.
pub(crate) async fn webhook_disabled_list(ctx: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    ctx.query(&[])?;
    let store = ctx.state.store.clone();
    let list = blocking(move || Ok(zoftoken_admin::disabled_endpoints(&store)?)).await?;
    let disabled: Vec<Value> = list
        .into_iter()
        .map(|d| {
            json!({
                "service": d.service,
                "url": d.url,
                "status": d.status,
                "at_ms": d.at_ms,
            })
        })
        .collect();
    ok(&json!({ "disabled": disabled }))
}
