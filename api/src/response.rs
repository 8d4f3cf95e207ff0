//! Building answers: JSON or bytes, never cached (enrollments, backup codes and new authkeys
//! carry secrets).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::error::Failure;

/// An answer.
pub(crate) type Resp = Response<Full<Bytes>>;

/// What a handler returns: an answer, or a failure answered as JSON.
pub(crate) type Outcome = Result<Resp, Failure>;

/// `body` as JSON with `status`.
pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes_response(status, bytes, "application/json")
}

/// `body` as `content_type` with `status`.
pub(crate) fn bytes_response(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Enrollments, backup codes and new authkeys carry secrets: nothing is cached anywhere.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `200 OK` with `body` as JSON.
pub(crate) fn ok(body: &impl Serialize) -> Outcome {
    Ok(json_response(StatusCode::OK, body))
}

/// `200 OK` with `body`, JSON already written.
pub(crate) fn ok_json(body: Vec<u8>) -> Outcome {
    Ok(bytes_response(StatusCode::OK, body, "application/json"))
}

/// `201 Created` with `body` as JSON.
pub(crate) fn created(body: &impl Serialize) -> Outcome {
    Ok(json_response(StatusCode::CREATED, body))
}
