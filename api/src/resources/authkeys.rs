//! Authkeys: listed without secrets, created (the secret shown once, only its hash stored)
//! and revoked in database mode; unrestricted admin keys only.

use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;
use zoftoken_storage::AuthkeyDoc;

use super::services::require_database;
use crate::context::{blocking, Ctx};
use crate::error::Failure;
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

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum SecretFormat {
    #[default]
    Hex,
    Base64,
}

/// `GET /v1/authkeys`: names, rights and masks; never a secret.
pub(crate) async fn authkey_list(ctx: &Ctx<'_>, _: Params<'_>, _: Incoming) -> Outcome {
    let keys: Vec<Value> = ctx
        .state
        .engine
        .authkey_list()
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
    require_database(ctx)?;
    let b: AuthkeyBody = ctx.json(body).await?;
    if b.name.is_empty() || b.name.len() > crate::routes::AUTHKEY_NAME_MAX {
        return Err(Failure::bad(
            "invalid_name",
            "the authkey name must be 1 to 255 bytes",
        ));
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, bytes.as_mut());
    let secret = Zeroizing::new(match b.format {
        SecretFormat::Hex => hex::encode(bytes.as_ref()),
        SecretFormat::Base64 => {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
        }
    });
    let doc = AuthkeyDoc::new(&b.name, &secret, b.admin, &b.service_mask, &b.user_mask);
    let state = ctx.state.clone();
    blocking(move || {
        let mut all = state.store.authkeys()?;
        if all.iter().any(|d| d.name == doc.name) {
            return Err(Failure::conflict(
                "authkey_exists",
                "an authkey of this name exists",
            ));
        }
        all.push(doc.clone());
        let configs = zoftoken_storage::authkeys_to_config(&all).map_err(|errors| {
            Failure::bad(
                "invalid_authkey",
                errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        state.store.put_authkey(&doc)?;
        state.engine.reload_authkeys(&configs)?;
        Ok(())
    })
    .await?;
    created(&json!({
        "name": b.name,
        "secret": secret.as_str(),
        "admin": b.admin,
        "service_mask": b.service_mask,
        "user_mask": b.user_mask,
    }))
}

/// `DELETE /v1/authkeys/{name}` (database mode).
pub(crate) async fn authkey_revoke(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let name = p.authkey_name()?.to_owned();
    require_database(ctx)?;
    let state = ctx.state.clone();
    blocking(move || {
        if !state.store.delete_authkey(&name)? {
            return Err(Failure::not_found(
                "unknown_authkey_name",
                "no authkey of this name",
            ));
        }
        let configs = zoftoken_storage::authkeys_to_config(&state.store.authkeys()?)
            .map_err(|_| Failure::internal())?;
        state.engine.reload_authkeys(&configs)?;
        Ok(())
    })
    .await?;
    ok(&json!({ "revoked": true }))
}
