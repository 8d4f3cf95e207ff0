//! Mass enrollment: `POST /v1/services/{service}/tokens` enrolls many users of one service in
//! one call and one group commit ([`zoftoken_admin::Tokens::enroll_batch`]), each answered
//! on its own in the order given: enrolled (deeplink, manual code, expiry, token id), skipped
//! (`if_absent`), or its own error (an invalid name, a user the key's user mask does not
//! cover), without failing the others. QR images only when asked for (`?qr=png|svg`): the
//! deeplink is the QR code's content. `GET …/tokens/{username}/enrollment` shows a pending
//! enrollment's deeplink and QR code again.

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use zoftoken_admin::{BatchEnrolled, Tokens, MAX_BATCH_ENROLLMENT};

use crate::body::read_bytes_within;
use crate::context::{blocking, Ctx};
use crate::error::Failure;
use crate::qr::QrFormats;
use crate::response::{bytes_response, json_response, Outcome};
use crate::routes::Params;

/// The largest body of a batch (10 000 usernames of 400 bytes on average, with the JSON
/// around them).
pub const BATCH_BODY_MAX: usize = 4 << 20;

/// The media type of JSON lines, in requests and answers.
pub const JSON_LINES: &str = "application/x-ndjson";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    usernames: Vec<String>,
    #[serde(default)]
    if_absent: bool,
}

/// One line of a JSON lines body: a username, or an object with one.
#[derive(Deserialize)]
#[serde(untagged)]
enum BatchLine {
    Name(String),
    Object(LineObject),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineObject {
    username: String,
}

/// Whether the request's body is JSON lines (`application/x-ndjson` or `application/jsonl`).
fn is_json_lines(ctx: &Ctx<'_>) -> bool {
    ctx.parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case(JSON_LINES) || t.eq_ignore_ascii_case("application/jsonl")
        })
}

/// Parses a JSON lines body: one username per line (blank lines skipped), each line a JSON
/// string or `{"username": …}`; a line that is neither is refused with its number.
fn parse_lines(body: &[u8]) -> Result<Vec<String>, Failure> {
    let mut names = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let name = match serde_json::from_slice(line) {
            Ok(BatchLine::Name(n)) => n,
            Ok(BatchLine::Object(o)) => o.username,
            Err(_) => {
                return Err(Failure::bad(
                    "invalid_json",
                    format!(
                        "line {}: expected a username as a JSON string or {{\"username\": …}}",
                        i + 1
                    ),
                ))
            }
        };
        names.push(name);
    }
    Ok(names)
}

/// `POST /v1/services/{service}/tokens[?qr=png|svg|png,svg][&if_absent=true]`: enrolls each
/// of the usernames (an app token each). A JSON body `{"usernames": […], "if_absent": …}` is
/// answered with one JSON document; a JSON lines body (one username per line) with JSON
/// lines, one result per username in the same order.
pub(crate) async fn token_enroll_batch(ctx: &Ctx<'_>, p: Params<'_>, body: Incoming) -> Outcome {
    let service = p.service()?.to_owned();
    let query = ctx.query(&["qr", "if_absent"])?;
    let qr = query.qr;
    let max = BATCH_BODY_MAX.max(ctx.state.config.max_body_bytes);
    let lines = is_json_lines(ctx);
    let b = if lines {
        let bytes = read_bytes_within(ctx.parts, &ctx.state.config, body, max).await?;
        BatchBody {
            usernames: parse_lines(&bytes)?,
            if_absent: false,
        }
    } else {
        ctx.json_within(body, max).await?
    };
    if b.usernames.len() > MAX_BATCH_ENROLLMENT {
        return Err(Failure::bad(
            "batch_too_large",
            format!("a batch enrolls at most {MAX_BATCH_ENROLLMENT} users"),
        ));
    }
    let if_absent = b.if_absent || query.if_absent;
    let allowed = ctx.admin_allows_each(&service, &b.usernames);
    let permitted: Vec<String> = b
        .usernames
        .iter()
        .zip(&allowed)
        .filter(|(_, ok)| **ok)
        .map(|(u, _)| u.clone())
        .collect();
    let (engine, store, now) = ctx.handles();
    let usernames = b.usernames;
    // The enrollments and the answers (QR images above all) are made off the API's threads.
    let answer = blocking(move || {
        let answers = Tokens::new(&store, &engine)
            .enroll_batch(now, &service, &permitted, if_absent)
            .map_err(Failure::from)?;
        let (counts, results) = batch_answer(&usernames, &allowed, answers, qr);
        let mut out = Vec::with_capacity(results.len() * 256);
        let written = if lines {
            results.iter().try_for_each(|r| {
                serde_json::to_writer(&mut out, r)?;
                out.push(b'\n');
                Ok::<_, serde_json::Error>(())
            })
        } else {
            let [enrolled, skipped, failed] = counts;
            serde_json::to_writer(
                &mut out,
                &json!({
                    "enrolled": enrolled,
                    "skipped": skipped,
                    "failed": failed,
                    "results": results,
                }),
            )
        };
        written.map_err(|_| Failure::internal())?;
        Ok(out)
    })
    .await?;
    Ok(bytes_response(
        StatusCode::OK,
        answer,
        if lines {
            JSON_LINES
        } else {
            "application/json"
        },
    ))
}

/// `GET …/tokens/{username}/enrollment[?qr=png|svg|png,svg]`: the deeplink of the user's
/// enrollment still waiting for its app, with its QR code in the formats asked for, for the
/// page that shows it (the manual code is handed out once, when enrolling).
pub(crate) async fn token_enrollment(ctx: &Ctx<'_>, p: Params<'_>, _: Incoming) -> Outcome {
    let tok = p.token()?;
    let qr = ctx.query(&["qr"])?.qr;
    let (engine, store, now) = ctx.handles();
    let (service, username) = (tok.service.to_owned(), tok.username.to_owned());
    let answer = blocking(move || {
        let link = Tokens::new(&store, &engine).enrollment_link(now, &service, &username)?;
        let mut answer = json!({
            "token_id": hex::encode(link.token_id.0),
            "deeplink": link.deeplink.as_str(),
            "expires_ms": link.expires_ms,
        });
        if qr.any() {
            crate::qr::render(&link.deeplink, qr)
                .ok_or_else(Failure::internal)?
                .insert_into(&mut answer);
        }
        Ok(answer)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &answer))
}

/// The answer of a batch: per user in the order given, what `answers` (one per allowed
/// user) says, or `forbidden` where the key's user mask does not cover the user; and the
/// numbers enrolled, skipped and failed.
fn batch_answer(
    usernames: &[String],
    allowed: &[bool],
    answers: Vec<BatchEnrolled>,
    qr: QrFormats,
) -> ([u64; 3], Vec<Value>) {
    let mut answers = answers.into_iter();
    let (mut enrolled, mut skipped, mut failed) = (0u64, 0u64, 0u64);
    let results: Vec<Value> = usernames
        .iter()
        .zip(allowed)
        .map(|(username, &ok)| {
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
    ([enrolled, skipped, failed], results)
}
