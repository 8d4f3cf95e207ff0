//! Codes checked against a token: one-time codes, the offline challenge and its response,
//! and backup codes (generated once, each usable once).

use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;
use zoftoken_engine::OfflineOutcome;

use super::token_op;
use crate::body::check_code;
use crate::context::Ctx;
use crate::response::{created, ok, Outcome};
use crate::routes::Params;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: Zeroizing<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeBody {
    #[serde(default = "default_challenge_len")]
    length: usize,
}

fn default_challenge_len() -> usize {
    8
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseBody {
    response: Zeroizing<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    #[serde(default = "default_count")]
    count: usize,
    #[serde(default = "default_digits")]
    digits: usize,
}

fn default_count() -> usize {
    zoftoken_engine::BACKUP_CODES
}
fn default_digits() -> usize {
    zoftoken_engine::BACKUP_DIGITS
}

fn outcome_body(o: OfflineOutcome) -> Value {
    match o {
        OfflineOutcome::Accepted { duress } => {
            json!({ "accepted": true, "duress": duress, "blocked": false })
        }
        OfflineOutcome::Rejected { attempts_left } => {
            json!({ "accepted": false, "attempts_left": attempts_left, "blocked": false })
        }
        OfflineOutcome::Blocked => {
            json!({ "accepted": false, "attempts_left": 0, "blocked": true })
        }
    }
}

/// `POST …/code`: validates a one-time code (each accepted once).
pub(crate) async fn code_validate(ctx: &Ctx<'_>, p: Params<'_>, body: Incoming) -> Outcome {
    let tok = p.token()?;
    let b: CodeBody = ctx.json(body).await?;
    check_code(&b.code, "code")?;
    let o = token_op(ctx, tok, move |e, now, id, batch| {
        e.validate_code(now, id, &b.code, batch)
    })
    .await?;
    ok(&outcome_body(o))
}

/// `POST …/offline/challenge`: a validation code for the app to answer offline.
pub(crate) async fn offline_challenge(ctx: &Ctx<'_>, p: Params<'_>, body: Incoming) -> Outcome {
    let tok = p.token()?;
    let b: ChallengeBody = ctx.json(body).await?;
    let code = token_op(ctx, tok, move |e, now, id, batch| {
        e.offline_challenge(now, id, b.length, batch)
    })
    .await?;
    ok(&json!({ "code": code }))
}

/// `POST …/offline/response`: checks the app's answer to the outstanding challenge.
pub(crate) async fn offline_response(ctx: &Ctx<'_>, p: Params<'_>, body: Incoming) -> Outcome {
    let tok = p.token()?;
    let b: ResponseBody = ctx.json(body).await?;
    check_code(&b.response, "response")?;
    let o = token_op(ctx, tok, move |e, now, id, batch| {
        e.offline_response(now, id, &b.response, batch)
    })
    .await?;
    ok(&outcome_body(o))
}

/// `POST …/backup-codes`: new backup codes (replacing the old ones), shown once.
pub(crate) async fn backup_generate(ctx: &Ctx<'_>, p: Params<'_>, body: Incoming) -> Outcome {
    let tok = p.token()?;
    let b: BackupBody = ctx.json(body).await?;
    let codes = token_op(ctx, tok, move |e, _, id, batch| {
        e.generate_backup_codes(id, b.count, b.digits, batch)
            .map(Zeroizing::new)
    })
    .await?;
    created(&json!({ "codes": &*codes }))
}

/// `POST …/backup-codes/verify`: checks a backup code (each usable once).
pub(crate) async fn backup_verify(ctx: &Ctx<'_>, p: Params<'_>, body: Incoming) -> Outcome {
    let tok = p.token()?;
    let b: CodeBody = ctx.json(body).await?;
    check_code(&b.code, "code")?;
    let o = token_op(ctx, tok, move |e, now, id, batch| {
        e.verify_backup_code(now, id, &b.code, batch)
    })
    .await?;
    ok(&outcome_body(o))
}
