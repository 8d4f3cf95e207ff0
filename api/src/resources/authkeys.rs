//! Authkeys: listed without secrets, created (the secret shown once, only its hash stored)
//! and revoked in database mode, through the admin layer's [`Registry`]; unrestricted admin
//! keys only.
//!
//! [`Registry`]: zoftoken_admin::Registry

use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use zoftoken_admin::{NewAuthkey, SecretFormat};

use crate::context::{blocking, Ctx};
use crate::response::{created, ok, Outcome};
use crate::routes::Params;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthkeyBody {
    name: String,
    #[serde(default)]
    admin: bool,
    #[serde(default = "any_mask")]
    service_mask: String,
    #[serde(default = "any_mask")]
    user_mask: String,
    #[serde(default)]
    format: SecretFormat,
}

fn any_mask() -> String {
    ".*".into()
}

/// `GET /v1/authkeys`: names, rights and masks; never a secret.
pub(crate) async fn authkey_list(ctx: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    let state = ctx.state.clone();
    let keys = blocking(move || Ok(state.registry.authkeys()?)).await?;
    let keys: Vec<Value> = keys
        .into_iter()
        .map(|k| {
            json!({
                "name": k.name,
                "admin": k.admin,
                "service_mask": k.service_mask,
                "user_mask": k.user_mask,
            })
        })
        .collect();
    ok(&json!({ "authkeys": keys }))
}

/// `POST /v1/authkeys`: 256 random bits, answered once (database mode).
pub(crate) async fn authkey_create(ctx: &Ctx<'_>, _: Params<'_>, body: Incoming) -> Outcome {
    ctx.state.registry.ensure_editable()?;
    let b: AuthkeyBody = ctx.json(body).await?;
    let new = NewAuthkey {
        name: b.name,
        admin: b.admin,
        service_mask: b.service_mask,
        user_mask: b.user_mask,
        format: b.format,
    };
    let state = ctx.state.clone();
    let key = blocking(move || Ok(state.registry.authkey_create(new)?)).await?;
    created(&json!({
        "name": key.name,
        "secret": key.secret.as_str(),
        "admin": key.admin,
        "service_mask": key.service_mask,
        "user_mask": key.user_mask,
    }))
}

/// `DELETE /v1/authkeys/{name}` (database mode).
pub(crate) async fn authkey_revoke(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let name = p.authkey_name()?.to_owned();
    ctx.state.registry.ensure_editable()?;
    let state = ctx.state.clone();
    blocking(move || Ok(state.registry.authkey_revoke(&name)?)).await?;
    ok(&json!({ "revoked": true }))
}
