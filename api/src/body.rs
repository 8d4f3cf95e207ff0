//! Reading requests: JSON bodies (size and time limits, an empty body as `{}`, whole floats
//! as integers, unknown fields refused by each body's type), query parameters, and the
//! length of codes.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::http::request::Parts;
use hyper::StatusCode;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;
use zoftoken_engine::TokenState;

use crate::error::Failure;
use crate::ApiConfig;

/// Reads and parses a JSON body (an empty body reads as `{}`), within
/// [`ApiConfig::max_body_bytes`] and [`ApiConfig::body_timeout`].
pub(crate) async fn read_json<T: DeserializeOwned>(
    parts: &Parts,
    config: &ApiConfig,
    body: Incoming,
) -> Result<T, Failure> {
    read_json_within(parts, config, body, config.max_body_bytes).await
}

/// As [`read_json`], with a size limit of the route's own (`max` bytes).
pub(crate) async fn read_json_within<T: DeserializeOwned>(
    parts: &Parts,
    config: &ApiConfig,
    body: Incoming,
    max: usize,
) -> Result<T, Failure> {
    let bytes = read_bytes_within(parts, config, body, max).await?;
    parse_json(&bytes)
}

/// Reads a whole body of at most `max` bytes within [`ApiConfig::body_timeout`].
pub(crate) async fn read_bytes_within(
    parts: &Parts,
    config: &ApiConfig,
    body: Incoming,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body must be at most {max} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(config.body_timeout, Limited::new(body, max).collect())
        .await
        .map_err(|_| {
            Failure::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body was not received in time",
            )
        })?;
    match collected {
        Ok(c) => Ok(Zeroizing::new(c.to_bytes().to_vec())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(Failure::bad(
            "invalid_body",
            "the request body could not be read",
        )),
    }
}

/// Parses a JSON body (an empty one reads as `{}`; whole floats as integers).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    match serde_json::from_slice(text) {
        Ok(v) => Ok(v),
        // JSON has one number type: `7.0` is the integer 7 to a JSON Schema validator, so
        // it is taken as one (only then is the body read a second time, as a value).
        Err(e) if e.to_string().contains("invalid type: floating point") => {
            let mut value: serde_json::Value = serde_json::from_slice(text)
                .map_err(|e| Failure::bad("invalid_json", e.to_string()))?;
            integral_floats_to_integers(&mut value);
            serde_json::from_value(value).map_err(|e| Failure::bad("invalid_json", e.to_string()))
        }
        Err(e) => Err(Failure::bad("invalid_json", e.to_string())),
    }
}

/// Replaces every number of `value` that is a whole float (`7.0`) by the integer.
pub(crate) fn integral_floats_to_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                    *value = Value::from(f as u64);
                } else if f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                    *value = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

/// Query parameters.
#[derive(Default)]
pub(crate) struct Query {
    /// `wait`: seconds of a long poll (0: answer at once).
    pub wait_s: u64,
    /// `state`: the state the caller knows (a long poll answers at once if it differs).
    pub state: Option<TokenState>,
    /// `force`: delete even so.
    pub force: bool,
    /// `limit`: at most this many (at least 1).
    pub limit: Option<usize>,
    /// `consistent`: read the token from the database first (a server of a shared
    /// database), not only from memory.
    pub consistent: bool,
    /// `qr`: the QR images wanted with an enrollment (none by default).
    pub qr: crate::qr::QrFormats,
    /// `if_absent`: enroll only users without a paired token or a usable enrollment.
    pub if_absent: bool,
}

/// Parses a query; a parameter outside `allowed` is refused.
pub(crate) fn parse_query(q: Option<&str>, allowed: &[&str]) -> Result<Query, Failure> {
    let mut out = Query::default();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&k) {
            return Err(Failure::bad(
                "invalid_query",
                format!(
                    "unknown query parameter (allowed here: {})",
                    allowed.join(", ")
                ),
            ));
        }
        match k {
            "wait" => {
                out.wait_s = v.parse().map_err(|_| {
                    Failure::bad("invalid_query", "wait must be a whole number of seconds")
                })?
            }
            "state" => {
                out.state = Some(match v {
                    "pending" => TokenState::Pending,
                    "closed" => TokenState::Closed,
                    "open" => TokenState::Open,
                    "blocked" => TokenState::Blocked,
                    _ => {
                        return Err(Failure::bad(
                            "invalid_query",
                            "state must be pending, closed, open or blocked",
                        ))
                    }
                })
            }
            "force" => out.force = flag(v, "force must be true or false")?,
            "consistent" => out.consistent = flag(v, "consistent must be true or false")?,
            "if_absent" => out.if_absent = flag(v, "if_absent must be true or false")?,
            "qr" => {
                out.qr = crate::qr::QrFormats::parse(v).ok_or_else(|| {
                    Failure::bad("invalid_query", "qr must be png, svg or png,svg")
                })?
            }
            "limit" => {
                let n: usize = v
                    .parse()
                    .map_err(|_| Failure::bad("invalid_query", "limit must be a whole number"))?;
                if n == 0 {
                    return Err(Failure::bad("invalid_query", "limit must be at least 1"));
                }
                out.limit = Some(n);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A `true`/`false` (or `1`/`0`) query value.
fn flag(v: &str, refused: &'static str) -> Result<bool, Failure> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(Failure::bad("invalid_query", refused)),
    }
}

/// Longest one-time code, offline response or backup code accepted (characters).
const CODE_MAX: usize = 64;

/// Refuses an empty code or one longer than [`CODE_MAX`] characters.
pub(crate) fn check_code(code: &str, what: &'static str) -> Result<(), Failure> {
    if code.is_empty() || code.chars().count() > CODE_MAX {
        return Err(Failure::bad(
            "invalid_input",
            format!("the {what} must be 1 to {CODE_MAX} characters"),
        ));
    }
    Ok(())
}
