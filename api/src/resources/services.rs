//! Services: listed and read by unrestricted admin keys (webhook secrets redacted), created,
//! replaced and deleted in database mode through the admin layer's [`Registry`], and their
//! details JSON for the app (public).
//!
//! [`Registry`]: zoftoken_admin::Registry

use hyper::body::Incoming;
use serde_json::json;
use zoftoken_storage::ServiceDoc;

use crate::body::integral_floats_to_integers;
use crate::context::{blocking, Ctx};
use crate::error::Failure;
use crate::response::{created, ok, Outcome};
use crate::routes::Params;

/// `GET /v1/services`: every service, webhook secrets redacted.
pub(crate) async fn service_list(ctx: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    let state = ctx.state.clone();
    let docs = blocking(move || Ok(state.registry.services()?)).await?;
    ok(&json!({
        "source": if ctx.state.registry.in_database() { "database" } else { "file" },
        "services": docs,
    }))
}

/// `GET /v1/services/{service}`: one service, webhook secrets redacted.
pub(crate) async fn service_get(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let name = p.service()?.to_owned();
    let state = ctx.state.clone();
    ok(&blocking(move || Ok(state.registry.service(&name)?)).await?)
}

/// `POST /v1/services`: a new service (database mode).
pub(crate) async fn service_create(ctx: &Ctx<'_>, _: Params<'_>, body: Incoming) -> Outcome {
    ctx.state.registry.ensure_editable()?;
    let doc: ServiceDoc = ctx.json(body).await?;
    let state = ctx.state.clone();
    let saved = blocking(move || {
        let saved = state.registry.service_create(doc)?;
        state.refresh_details();
        Ok(saved)
    })
    .await?;
    created(&saved)
}

/// `PUT /v1/services/{service}`: replaces a service (database mode); `<redacted>` keeps a
/// stored secret.
pub(crate) async fn service_replace(ctx: &Ctx<'_>, p: Params<'_>, body: Incoming) -> Outcome {
    let name = p.service()?.to_owned();
    ctx.state.registry.ensure_editable()?;
    // The name is the path's: a body may leave it out.
    let mut value: serde_json::Value = ctx.json(body).await?;
    integral_floats_to_integers(&mut value);
    if let serde_json::Value::Object(map) = &mut value {
        map.entry("name")
            .or_insert_with(|| serde_json::Value::String(name.clone()));
    }
    let doc: ServiceDoc =
        serde_json::from_value(value).map_err(|e| Failure::bad("invalid_json", e.to_string()))?;
    let state = ctx.state.clone();
    let saved = blocking(move || {
        let saved = state.registry.service_replace(&name, doc)?;
        state.refresh_details();
        Ok(saved)
    })
    .await?;
    ok(&saved)
}

/// `DELETE /v1/services/{service}[?force=true]`: refused while tokens exist unless forced
/// (they stay stored, unusable until the service exists again).
pub(crate) async fn service_delete(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let name = p.service()?.to_owned();
    ctx.state.registry.ensure_editable()?;
    let q = ctx.query(&["force"])?;
    let state = ctx.state.clone();
    let tokens = blocking(move || {
        let tokens = state.registry.service_delete(&name, q.force)?;
        state.refresh_details();
        Ok(tokens)
    })
    .await?;
    ok(&json!({ "deleted": true, "tokens_kept": tokens }))
}

/// `GET /v1/services/{service}/details`: the details JSON the app shows (public).
pub(crate) async fn service_details(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let name = p.service()?;
    match ctx.state.details().get(name) {
        Some(v) => ok(v),
        None => Err(Failure::not_found(
            "no_details",
            "no details JSON is configured for this service",
        )),
    }
}
