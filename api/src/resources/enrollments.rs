//! Mass enrollment: `POST /v1/services/{service}/tokens` enrolls many users of one service in
//! one call and one group commit ([`zoftoken_admin::Tokens::enroll_batch`]), each answered
//! on its own in the order given: enrolled (deeplink, manual code, expiry, token id), skipped
//! (`if_absent`), or its own error (an invalid name, a user the key's user mask does not
//! cover), without failing the others. QR images only when asked for (`?qr=png|svg`): the
//! deeplink is the QR code's content.

use hyper::body::Incoming;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use zoftoken_admin::{BatchEnrolled, Tokens};

use crate::context::{blocking, Ctx};
use crate::error::Failure;
use crate::response::{ok, Outcome};
use crate::routes::Params;

/// The largest body of a batch (10 000 usernames of 400 bytes on average, with the JSON
/// around them).
pub const BATCH_BODY_MAX: usize = 4 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    usernames: Vec<String>,
    #[serde(default)]
    if_absent: bool,
}

/// `POST /v1/services/{service}/tokens[?qr=png|svg|png,svg]`: enrolls each of `usernames`
/// (an app token each).
pub(crate) async fn token_enroll_batch(ctx: &Ctx<'_>, p: Params<'_>, body: Incoming) -> Outcome {
    let service = p.service()?.to_owned();
    let qr = ctx.query(&["qr"])?.qr;
    let b: BatchBody = ctx
        .json_within(body, BATCH_BODY_MAX.max(ctx.state.config.max_body_bytes))
        .await?;
    let allowed = ctx.admin_allows_each(&service, &b.usernames);
    let permitted: Vec<String> = b
        .usernames
        .iter()
        .zip(&allowed)
        .filter(|(_, ok)| **ok)
        .map(|(u, _)| u.clone())
        .collect();
    let (engine, store, now) = ctx.handles();
    let if_absent = b.if_absent;
    let answers = blocking(move || {
        Tokens::new(&store, &engine)
            .enroll_batch(now, &service, &permitted, if_absent)
            .map_err(Failure::from)
    })
    .await?;
    let mut answers = answers.into_iter();
    let (mut enrolled, mut skipped, mut failed) = (0u64, 0u64, 0u64);
    let results: Vec<Value> = b
        .usernames
        .iter()
        .zip(allowed)
        .map(|(username, ok)| {
            let answer = if ok { answers.next() } else { None };
            match answer {
                Some(BatchEnrolled::Enrolled(t)) => {
                    enrolled += 1;
                    let images = qr
                        .any()
                        .then(|| crate::qr::render(&t.deeplink, qr))
                        .flatten();
                    let mut one = json!({
                        "username": username,
                        "status": "enrolled",
                        "token_id": hex::encode(t.token_id.0),
                        "deeplink": t.deeplink,
                        "manual_code": t.manual_code,
                        "expires_ms": t.expires_ms,
                    });
                    if let Some(images) = images {
                        images.insert_into(&mut one);
                    }
                    one
                }
                Some(BatchEnrolled::Skipped(e)) => {
                    skipped += 1;
                    json!({ "username": username, "status": "skipped", "existing": e.name() })
                }
                other => {
                    failed += 1;
                    let f = match other {
                        Some(BatchEnrolled::Failed(e)) => Failure::from(e),
                        None if !ok => Failure::new(
                            StatusCode::FORBIDDEN,
                            "forbidden",
                            "this authkey's user mask does not cover this user",
                        ),
                        _ => Failure::internal(),
                    };
                    json!({
                        "username": username,
                        "status": "failed",
                        "error": { "code": f.code, "message": f.message },
                    })
                }
            }
        })
        .collect();
    ok(&json!({
        "enrolled": enrolled,
        "skipped": skipped,
        "failed": failed,
        "results": results,
    }))
}
