//! Tokens: enrollment (app or standard authenticator), the status and its long poll (the
//! API's hot path: one shard lock, no storage read, no allocation beyond the answer), a
//! forced state, and deletion.

use std::time::Duration;

use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use zoftoken_engine::Force;
use zoftoken_proto::TokenId;

use super::status_json::status_json;
use super::{settled_status, token_change, token_op};
use crate::body::Query;
use crate::context::{blocking, Ctx};
use crate::error::{fresh, Failure};
use crate::response::{created, ok, ok_json, Outcome};
use crate::routes::matcher::Tok;
use crate::routes::Params;

/// `GET …/tokens/{username}[?wait=N[&state=S]][&consistent=true]`: the status, at once or at
/// the token's next change (or at once when `state` is given and differs from the current
/// state); with `consistent`, on a shared database, the token is read from the database
/// first (one primary-key read of each of its records), so that the answer holds every
/// change committed before the request, whichever server made it.
pub(crate) async fn token_status(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let tok = p.token()?;
    let q = ctx.query(&["wait", "state", "consistent"])?;
    if q.consistent {
        Box::pin(read_from_database(ctx, tok)).await?;
    }
    if q.wait_s == 0 {
        let state = ctx.state;
        let st = settled_status(&state.engine, || state.now(), tok.service, tok.username).await?;
        fresh(&state.store)?;
        return ok_json(status_json(&st));
    }
    // Boxed: the long poll's timers and watch stay out of the plain status poll's future.
    Box::pin(long_poll(ctx, tok, q)).await
}

/// `consistent=true` of [`token_status`]: the token read again from the database (on the
/// blocking pool) before memory answers. A token a change of this server is writing is left
/// as it is: memory then waits for that change's outcome anyway.
async fn read_from_database(ctx: &Ctx<'_>, tok: Tok<'_>) -> Result<(), Failure> {
    let (engine, store, now) = ctx.handles();
    let id = TokenId::derive(tok.service, tok.username);
    crate::context::blocking(move || {
        store
            .refresh_token(&engine, now, &id)
            .map(|_| ())
            .map_err(Failure::from)
    })
    .await
}

/// The long poll of [`token_status`] (`wait` > 0).
async fn long_poll(ctx: &Ctx<'_>, tok: Tok<'_>, q: Query) -> Outcome {
    let state = ctx.state;
    let engine = &state.engine;
    let clock = || state.now();
    let id = TokenId::derive(tok.service, tok.username);
    // Watch first, then read: a change between the two is not missed.
    let changed = engine.watch(&id);
    let st = settled_status(engine, clock, tok.service, tok.username).await?;
    let now = state.now();
    fresh(&state.store)?;
    if q.state.is_some_and(|s| s != st.state) {
        return ok_json(status_json(&st));
    }
    let mut limit = Duration::from_secs(q.wait_s).min(state.config.max_wait);
    if let Some(until) = st.open_until_ms {
        // The window's end is a change too (the timer's expiry wakes us as well).
        limit = limit.min(Duration::from_millis(until.saturating_sub(now)));
    }
    tokio::select! {
        _ = changed => {}
        _ = tokio::time::sleep(limit) => {}
        _ = state.stopping() => {}
    }
    let st = settled_status(engine, clock, tok.service, tok.username).await?;
    fresh(&state.store)?;
    ok_json(status_json(&st))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    #[serde(default)]
    kind: Kind,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    App,
    Totp,
}

/// `POST …/tokens/{username}[?qr=png|svg|png,svg]`: enrolls an app token (deeplink and
/// manual code) or a standard authenticator token (`otpauth://` URI), with a QR code of
/// either in the formats asked for (none by default: the link is the QR code's content).
pub(crate) async fn token_enroll(ctx: &Ctx<'_>, p: Params<'_>, body: Incoming) -> Outcome {
    let tok = p.token()?;
    let qr = ctx.query(&["qr"])?.qr;
    let b: EnrollBody = ctx.json(body).await?;
    let (mut answer, link) = if b.kind == Kind::Totp {
        let t = token_change(ctx, tok, |tokens, now, service, username| {
            tokens.enroll_totp(now, service, username)
        })
        .await?;
        let answer = json!({
            "kind": "totp",
            "token_id": hex::encode(t.token_id.0),
            "otpauth_uri": t.otpauth_uri.as_str(),
            "secret_base32": t.secret_base32.as_str(),
        });
        (answer, t.otpauth_uri)
    } else {
        let t = token_change(ctx, tok, |tokens, now, service, username| {
            tokens.enroll(now, service, username)
        })
        .await?;
        let link = zeroize::Zeroizing::new(t.deeplink.clone());
        let answer = json!({
            "kind": "app",
            "token_id": hex::encode(t.token_id.0),
            "deeplink": t.deeplink,
            "manual_code": t.manual_code,
            "expires_ms": t.expires_ms,
        });
        (answer, link)
    };
    if qr.any() {
        // Drawn off the API's threads: an image costs more than the enrollment.
        blocking(move || crate::qr::render(&link, qr).ok_or_else(Failure::internal))
            .await?
            .insert_into(&mut answer);
    }
    created(&answer)
}

/// `DELETE …/tokens/{username}`: the token and everything of it (its app stops working).
pub(crate) async fn token_delete(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let tok = p.token()?;
    ctx.query(&[])?;
    token_change(ctx, tok, |tokens, now, service, username| {
        tokens.delete(now, service, username)
    })
    .await?;
    ok(&json!({ "deleted": true }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceBody {
    state: ForceState,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ForceState {
    Open,
    Closed,
    Blocked,
}

/// `PUT …/tokens/{username}/state`: opens, closes or blocks the token.
pub(crate) async fn token_force(ctx: &Ctx<'_>, p: Params<'_>, body: Incoming) -> Outcome {
    let tok = p.token()?;
    let b: ForceBody = ctx.json(body).await?;
    let to = match b.state {
        ForceState::Open => Force::Open,
        ForceState::Closed => Force::Closed,
        ForceState::Blocked => Force::Blocked,
    };
    let st = token_op(ctx, tok, move |e, now, id, batch| {
        e.force(now, id, to, batch)
    })
    .await?;
    ok_json(status_json(&st))
}
