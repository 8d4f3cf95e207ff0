//! Services: listed and read by unrestricted admin keys (webhook secrets redacted), created,
//! replaced and deleted in database mode, and their details JSON for the app (public).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::StatusCode;
use serde_json::json;
use zoftoken_engine::EngineError;
use zoftoken_storage::{ServiceDoc, REDACTED};

use crate::body::integral_floats_to_integers;
use crate::context::{blocking, Ctx, State};
use crate::error::Failure;
use crate::response::{created, ok, Outcome};
use crate::routes::Params;

/// Refuses a change of services or authkeys unless they live in the database.
pub(crate) fn require_database(ctx: &Ctx<'_>) -> Result<(), Failure> {
    if ctx.state.config.config_source_database {
        Ok(())
    } else {
        Err(Failure::conflict(
            "config_source_file",
            "services and authkeys come from the configuration file (`config_source: file`): \
             edit the file, or switch to `config_source: database`",
        ))
    }
}

async fn service_docs(ctx: &Ctx<'_>) -> Result<Vec<ServiceDoc>, Failure> {
    if ctx.state.config.config_source_database {
        let store = ctx.state.store.clone();
        blocking(move || Ok(store.services()?)).await
    } else {
        Ok(ctx
            .state
            .engine
            .service_configs()
            .iter()
            .map(ServiceDoc::from_config)
            .collect())
    }
}

/// `GET /v1/services`: every service, webhook secrets redacted.
pub(crate) async fn service_list(ctx: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    let docs: Vec<ServiceDoc> = service_docs(ctx)
        .await?
        .into_iter()
        .map(|d| d.redacted())
        .collect();
    ok(&json!({
        "source": if ctx.state.config.config_source_database { "database" } else { "file" },
        "services": docs,
    }))
}

/// `GET /v1/services/{service}`: one service, webhook secrets redacted.
pub(crate) async fn service_get(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let name = p.service()?;
    let doc = service_docs(ctx)
        .await?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or(Failure::from(EngineError::UnknownService))?;
    ok(&doc.redacted())
}

/// Validates the full list, stores `doc`, and swaps the engine's services.
fn save_service(
    state: &State,
    mut all: Vec<ServiceDoc>,
    doc: ServiceDoc,
) -> Result<ServiceDoc, Failure> {
    all.retain(|d| d.name != doc.name);
    all.push(doc.clone());
    let configs = zoftoken_storage::services_to_config(&all).map_err(|errors| {
        let at = format!("services[{}]", all.len() - 1);
        Failure::bad(
            "invalid_service",
            errors
                .iter()
                .map(|e| format!("{}: {}", e.path.replacen(&at, "service", 1), e.message))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    state.store.put_service(&doc)?;
    state.engine.reload_services(configs)?;
    state.set_details(&all);
    Ok(doc.redacted())
}

/// `POST /v1/services`: a new service (database mode).
pub(crate) async fn service_create(ctx: &Ctx<'_>, _: Params<'_>, body: Incoming) -> Outcome {
    require_database(ctx)?;
    let mut doc: ServiceDoc = ctx.json(body).await?;
    refuse_new_ca_file(&doc, None)?;
    restore_redacted(&mut doc, None)?;
    let state = ctx.state.clone();
    let saved = blocking(move || {
        let all = state.store.services()?;
        if all.iter().any(|d| d.name == doc.name) {
            return Err(Failure::conflict(
                "service_exists",
                "a service of this name exists (PUT replaces it)",
            ));
        }
        save_service(&state, all, doc)
    })
    .await?;
    created(&saved)
}

/// `PUT /v1/services/{service}`: replaces a service (database mode); `<redacted>` keeps a
/// stored secret.
pub(crate) async fn service_replace(ctx: &Ctx<'_>, p: Params<'_>, body: Incoming) -> Outcome {
    let name = p.service()?.to_owned();
    require_database(ctx)?;
    // The name is the path's: a body may leave it out.
    let mut value: serde_json::Value = ctx.json(body).await?;
    integral_floats_to_integers(&mut value);
    if let serde_json::Value::Object(map) = &mut value {
        map.entry("name")
            .or_insert_with(|| serde_json::Value::String(name.clone()));
    }
    let mut doc: ServiceDoc =
        serde_json::from_value(value).map_err(|e| Failure::bad("invalid_json", e.to_string()))?;
    if doc.name != name {
        return Err(Failure::bad(
            "invalid_service",
            "the body's name must be the service name of the path",
        ));
    }
    let state = ctx.state.clone();
    let saved = blocking(move || {
        let all = state.store.services()?;
        let old = all
            .iter()
            .find(|d| d.name == doc.name)
            .ok_or(Failure::from(EngineError::UnknownService))?;
        refuse_new_ca_file(&doc, Some(old))?;
        // A document read back from the API carries `<redacted>`: keep the stored secrets.
        restore_redacted(&mut doc, Some(old))?;
        save_service(&state, all, doc)
    })
    .await?;
    ok(&saved)
}

/// `DELETE /v1/services/{service}[?force=true]`: refused while tokens exist unless forced
/// (they stay stored, unusable until the service exists again).
pub(crate) async fn service_delete(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let name = p.service()?.to_owned();
    require_database(ctx)?;
    let q = ctx.query(&["force"])?;
    let state: Arc<State> = ctx.state.clone();
    let tokens = blocking(move || {
        if state.store.services()?.iter().all(|d| d.name != name) {
            return Err(EngineError::UnknownService.into());
        }
        let mut tokens = 0u64;
        state.store.for_each_token(&mut |_, s, _| {
            if s == name {
                tokens += 1;
            }
            true
        })?;
        if tokens > 0 && !q.force {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "service_has_tokens",
                format!(
                    "the service has {tokens} tokens: delete them first or pass ?force=true \
                     (they stay stored, unusable until the service exists again)"
                ),
            ));
        }
        // The running engine forgets it too: its tokens' packets are dropped from now on.
        let remaining: Vec<ServiceDoc> = state
            .store
            .services()?
            .into_iter()
            .filter(|d| d.name != name)
            .collect();
        let configs =
            zoftoken_storage::services_to_config(&remaining).map_err(|_| Failure::internal())?;
        if !state.store.delete_service(&name)? {
            return Err(EngineError::UnknownService.into());
        }
        state.engine.reload_services(configs)?;
        state.set_details(&remaining);
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

/// Refuses a webhook `ca_file` given through the API: a file path on the server is the
/// operator's (config.yaml or the command line). The value already stored (a document read
/// back and written again) is kept.
fn refuse_new_ca_file(new: &ServiceDoc, old: Option<&ServiceDoc>) -> Result<(), Failure> {
    let given = new.webhook.as_ref().and_then(|w| w.ca_file.as_ref());
    let stored = old
        .and_then(|d| d.webhook.as_ref())
        .and_then(|w| w.ca_file.as_ref());
    match given {
        Some(path) if Some(path) != stored => Err(Failure::bad(
            "webhook_ca_file_refused",
            "webhook.ca_file names a file on the server: set it in config.yaml or with the \
             command line, not through the API",
        )),
        _ => Ok(()),
    }
}

/// Puts the stored secrets back where a document read from the API carries `<redacted>`;
/// refuses a `<redacted>` that stands for nothing stored.
fn restore_redacted(new: &mut ServiceDoc, old: Option<&ServiceDoc>) -> Result<(), Failure> {
    let Some(w) = &mut new.webhook else {
        return Ok(());
    };
    let old = old.and_then(|d| d.webhook.as_ref());
    let missing = || {
        Failure::bad(
            "invalid_service",
            "`<redacted>` stands for a stored secret, and there is none to keep",
        )
    };
    if w.secret == REDACTED {
        w.secret = old.map(|o| o.secret.clone()).ok_or_else(missing)?;
    }
    if w.previous_secret.as_deref() == Some(REDACTED) {
        w.previous_secret = Some(
            old.and_then(|o| o.previous_secret.clone())
                .ok_or_else(missing)?,
        );
    }
    if w.shared_token.as_deref() == Some(REDACTED) {
        w.shared_token = Some(
            old.and_then(|o| o.shared_token.clone())
                .ok_or_else(missing)?,
        );
    }
    Ok(())
}
