//! The command line's client of a running server's API (`token enroll --api URL`): one POST
//! at a time over a kept-alive HTTP or HTTPS connection (the webhooks' client: system roots
//! plus an optional CA file), with a time limit and a cap on the answer's size. A `503` (the
//! server's database cannot write, or a token was busy: nothing was written) is asked again
//! after its `Retry-After`, for at most [`UNAVAILABLE_PATIENCE`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request};
use zeroize::Zeroizing;
use zoftoken_webhooks::{https_client, HttpClient};

use super::CommandError;

/// Longest wait for one answer (a batch of 10 000 enrollments takes well under a second).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest answer read (10 000 results of a few hundred bytes each, with room to spare).
const ANSWER_MAX: usize = 64 << 20;
/// How long `503` answers are asked again before giving up.
pub const UNAVAILABLE_PATIENCE: Duration = Duration::from_secs(60);

/// A running server's API, with the authkey every request carries.
pub struct ApiClient {
    runtime: tokio::runtime::Runtime,
    client: HttpClient,
    base: String,
    key: Zeroizing<String>,
}

/// An answer: its status and body.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

impl ApiClient {
    /// A client of the API at `base` (`http://host:port` or `https://…`, a path prefix
    /// allowed) sending `key`; `ca_file` adds trusted certificates (PEM) to the system's.
    pub fn new(base: &str, key: &str, ca_file: Option<&str>) -> Result<ApiClient, CommandError> {
        let base = base.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CommandError::Invalid(format!(
                "--api {base}: give the API's URL, http:// or https://"
            )));
        }
        if key.is_empty() {
            return Err(CommandError::Invalid(
                "--api needs an authkey with the admin right in ZOFTOKEN_AUTHKEY".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CommandError::Invalid(format!("cannot start the HTTP client: {e}")))?;
        let client = {
            let _in = runtime.enter();
            https_client(ca_file, 1).map_err(|e| CommandError::Invalid(format!("{e:#}")))?
        };
        Ok(ApiClient {
            runtime,
            client,
            base: base.to_owned(),
            key: Zeroizing::new(key.to_owned()),
        })
    }

    /// POSTs `body` (of `content_type`) to `path` (from `/v1/…`, query included); asks again
    /// while the answer is `503`, for at most [`UNAVAILABLE_PATIENCE`]. Any other answer is
    /// returned as it came; no answer (a connection or a time limit that failed) is an error,
    /// and the request is not sent again: it may have been carried out.
    pub fn post(
        &self,
        path: &str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<Answer, CommandError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |reason: String| CommandError::Unreachable {
            url: url.clone(),
            reason,
        };
        let mut bearer = HeaderValue::try_from(format!("Bearer {}", self.key.as_str()))
            .map_err(|_| CommandError::Invalid("ZOFTOKEN_AUTHKEY is not a valid header".into()))?;
        bearer.set_sensitive(true);
        let started = Instant::now();
        loop {
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(url.as_str())
                .header(CONTENT_TYPE, content_type)
                .header(USER_AGENT, concat!("zoftoken/", env!("CARGO_PKG_VERSION")))
                .body(Full::new(body.clone()))
                .map_err(|e| unreachable(e.to_string()))?;
            req.headers_mut().insert(AUTHORIZATION, bearer.clone());
            let answer = self.runtime.block_on(async {
                tokio::time::timeout(ANSWER_TIMEOUT, async {
                    let resp = self
                        .client
                        .request(req)
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let body = Limited::new(resp.into_body(), ANSWER_MAX)
                        .collect()
                        .await
                        .map_err(|e| format!("reading the answer: {e}"))?
                        .to_bytes();
                    Ok::<_, String>((Answer { status, body }, retry_after))
                })
                .await
                .map_err(|_| format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()))?
            });
            let (answer, retry_after) = answer.map_err(unreachable)?;
            if answer.status != 503 || started.elapsed() >= UNAVAILABLE_PATIENCE {
                return Ok(answer);
            }
            let wait = Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 10));
            std::thread::sleep(wait);
        }
    }
}

/// The `code` and `message` of an API error body, or the body's start.
pub fn error_of(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |p: &str| v.pointer(p).and_then(serde_json::Value::as_str);
    match (text("/error/code"), text("/error/message")) {
        (Some(c), Some(m)) => (c.to_owned(), m.to_owned()),
        _ => (
            String::new(),
            String::from_utf8_lossy(body.get(..200).unwrap_or(body)).into_owned(),
        ),
    }
}
