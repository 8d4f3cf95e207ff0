//! The webhook pipeline's dead letters (listed, replayed, deleted) and the endpoints it
//! disabled after a 410 Gone; unrestricted admin keys only. A replay is queued in the store;
//! the running pipeline delivers it at its next poll.

use hyper::body::Incoming;
use serde_json::{json, Value};
use zoftoken_storage::Store;
use zoftoken_webhooks::WebhookError;

use crate::context::{blocking, Ctx};
use crate::error::Failure;
use crate::response::{ok, Outcome};
use crate::routes::Params;

/// Dead letters listed when `?limit=` is not given.
const DEAD_LETTERS_DEFAULT: usize = 100;
/// Most dead letters listed at once (a larger `?limit=` is capped to it).
const DEAD_LETTERS_MAX: usize = 1000;

fn unknown_dead_letter() -> Failure {
    Failure::not_found("unknown_dead_letter", "no dead letter of this id")
}

/// `GET /v1/webhooks/dead-letters[?limit=N]`: oldest first.
pub(crate) async fn dead_letter_list(ctx: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    let q = ctx.query(&["limit"])?;
    let limit = q
        .limit
        .unwrap_or(DEAD_LETTERS_DEFAULT)
        .min(DEAD_LETTERS_MAX);
    let store = ctx.state.store.clone();
    let list = blocking(move || Ok(zoftoken_webhooks::dead_letters(&store, limit)?)).await?;
    ok(&json!({ "dead_letters": list }))
}

/// `POST /v1/webhooks/dead-letters/{id}/replay`: delivered again, same `webhook-id`.
pub(crate) async fn dead_letter_replay(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    dead_letter_by_id(ctx, &p, zoftoken_webhooks::replay_dead_letter, "replayed").await
}

/// `POST /v1/webhooks/dead-letters/replay`: every dead letter delivered again.
pub(crate) async fn dead_letter_replay_all(ctx: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    ctx.query(&[])?;
    let store = ctx.state.store.clone();
    let n = blocking(move || Ok(zoftoken_webhooks::replay_all_dead_letters(&store)?)).await?;
    ok(&json!({ "replayed": n }))
}

/// `DELETE /v1/webhooks/dead-letters/{id}`: dropped for good.
pub(crate) async fn dead_letter_delete(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    dead_letter_by_id(ctx, &p, zoftoken_webhooks::delete_dead_letter, "deleted").await
}

/// Runs `op` on the dead letter of the path; answers `{ done: true }`, or 404 if there is
/// none.
async fn dead_letter_by_id(
    ctx: &Ctx<'_>,
    p: &Params<'_>,
    op: fn(&Store, &str) -> Result<bool, WebhookError>,
    done: &'static str,
) -> Outcome {
    let id = p.dead_letter_id()?.to_owned();
    ctx.query(&[])?;
    let store = ctx.state.store.clone();
    let found = blocking(move || Ok(op(&store, &id)?)).await?;
    if !found {
        return Err(unknown_dead_letter());
    }
    ok(&json!({ done: true }))
}

/// `GET /v1/webhooks/disabled`: endpoints disabled after a 410 Gone.
pub(crate) async fn webhook_disabled_list(ctx: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    ctx.query(&[])?;
    let store = ctx.state.store.clone();
    let list = blocking(move || Ok(zoftoken_webhooks::disabled_endpoints(&store)?)).await?;
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
