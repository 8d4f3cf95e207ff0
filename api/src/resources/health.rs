//! The public probes and documents: `/healthz`, `/readyz` (nothing about tokens), the
//! OpenAPI document, and `/metrics` (Prometheus text; unrestricted admin keys).

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::StatusCode;
use serde_json::json;

use crate::context::Ctx;
use crate::error::{storage_unavailable, Failure};
use crate::response::{bytes_response, ok, Outcome};
use crate::routes::Params;
use crate::OPENAPI_JSON;

/// `GET /healthz`: the process answers.
pub(crate) async fn healthz(_: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    ok(&json!({ "status": "ok" }))
}

/// `GET /readyz`: the server takes traffic (not shutting down, the database can write).
pub(crate) async fn readyz(ctx: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    let state = ctx.state;
    if *state.shutdown.borrow() {
        Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ))
    } else if !state.store.health().writable() {
        // Reads still work, but nothing can change: send traffic elsewhere until it can.
        Err(storage_unavailable())
    } else {
        // Public: nothing about tokens (not even how many there are).
        ok(&json!({ "status": "ready" }))
    }
}

/// `GET /metrics`: the process's metrics as Prometheus text.
pub(crate) async fn metrics(ctx: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    let state = ctx.state;
    let Some(render) = &state.metrics else {
        return Err(Failure::not_found(
            "metrics_disabled",
            "no metrics recorder is installed in this process",
        ));
    };
    state.engine.export_metrics();
    let mut text = render();
    state.meters.render_latency(&mut text);
    Ok(bytes_response(
        StatusCode::OK,
        text,
        "text/plain; version=0.0.4; charset=utf-8",
    ))
}

/// `GET /openapi.json`: the API's OpenAPI 3.1 description.
pub(crate) async fn openapi(_: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    Ok(bytes_response(
        StatusCode::OK,
        Bytes::from_static(OPENAPI_JSON.as_bytes()),
        "application/json",
    ))
}
