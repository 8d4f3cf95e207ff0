//! The delivery's body and its Standard Webhooks signature.
//!
//! Secrets: a secret written `whsec_<base64>` (the form the Standard Webhooks specification
//! and its libraries use) signs with the base64-decoded bytes; any other string signs with
//! its UTF-8 bytes, so receivers that were given a plain shared secret verify with that
//! string as the HMAC key. Validation (`zoftoken_engine::config::validate_services`) refuses
//! a `whsec_` secret that is not base64.

use base64::Engine as _;
use ring::hmac;
use serde::Serialize;
use zeroize::Zeroizing;
use zoftoken_engine::{Actor, EventKind};
use zoftoken_storage::OutboxEvent;

/// The HMAC key bytes of a configured secret (see the module documentation).
pub fn secret_key_bytes(secret: &str) -> Option<Zeroizing<Vec<u8>>> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .map(Zeroizing::new),
        None if secret.is_empty() => None,
        None => Some(Zeroizing::new(secret.as_bytes().to_vec())),
    }
}

/// HMAC-SHA256 keys for the valid secrets of a webhook (current first).
pub fn keys(secrets: &[&str]) -> Vec<hmac::Key> {
    secrets
        .iter()
        .filter_map(|s| secret_key_bytes(s))
        .map(|k| hmac::Key::new(hmac::HMAC_SHA256, &k))
        .collect()
}

/// The `webhook-signature` value: `v1,<base64>` per key, space-separated, each an
/// HMAC-SHA256 of `id.timestamp.body`.
pub fn signature_header(keys: &[hmac::Key], id: &str, timestamp: u64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mut out = String::with_capacity(keys.len() * 48);
    for k in keys {
        let mut ctx = hmac::Context::with_key(k);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(ts.as_bytes());
        ctx.update(b".");
        ctx.update(body);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("v1,");
        base64::engine::general_purpose::STANDARD.encode_string(ctx.sign().as_ref(), &mut out);
    }
    out
}

/// The token's state right after the event, derived from the event: `pending` after an
/// enrollment, `deleted`, `blocked`, `closed` after a close or an expiry, otherwise `open`
/// while the event carries an open window and `closed` when it does not.
pub fn state_after(kind: EventKind, open_until_ms: Option<u64>) -> &'static str {
    match kind {
        EventKind::Enrolled => "pending",
        EventKind::Deleted => "deleted",
        EventKind::Blocked => "blocked",
        EventKind::Closed | EventKind::Expired => "closed",
        _ if open_until_ms.is_some() => "open",
        _ => "closed",
    }
}

fn actor_name(a: Actor) -> &'static str {
    match a {
        Actor::Device => "device",
        Actor::Admin => "admin",
        Actor::Operator => "operator",
        Actor::Timer => "timer",
    }
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-24T05:54:47.123Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (H. Hinnant's algorithm), days since 1970-01-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    sequence: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    time_ms: u64,
    service: &'a str,
    username: Option<&'a str>,
    state: &'static str,
    open_until_ms: Option<u64>,
    duress: bool,
    /// For `duress` events: the operation the duress PIN was used for.
    operation: Option<&'static str>,
    transaction_id: Option<String>,
    actor: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_token: Option<&'a str>,
}

/// The JSON body of a delivery. `sequence` is the event's sequence number (higher for every
/// later change of the token, across restarts: receivers keep the highest seen per token and
/// ignore lower ones, which tells a late retry or a replayed dead letter from a newer event);
/// `timestamp` and `time_ms` are the time of the change. It never holds a signing secret:
/// `shared_token` is a separately configured plain value, present only when the service has
/// one, for receivers that can only compare a shared value (anyone who reads one delivery
/// learns it; the signature is the real check).
pub fn body(
    id: &str,
    e: &OutboxEvent,
    username: Option<&str>,
    shared_token: Option<&str>,
) -> Vec<u8> {
    let b = Body {
        id,
        sequence: e.sequence,
        kind: e.kind.name(),
        timestamp: rfc3339_ms(e.time_ms),
        time_ms: e.time_ms,
        service: &e.service,
        username,
        state: state_after(e.kind, e.open_until_ms),
        open_until_ms: e.open_until_ms,
        duress: e.duress,
        operation: e.operation.map(|o| o.name()),
        transaction_id: e.tx_id.map(hex::encode),
        actor: actor_name(e.actor),
        shared_token,
    };
    serde_json::to_vec(&b).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339_ms(1_795_499_687_123), "2026-11-24T05:54:47.123Z");
    }

    #[test]
    fn secrets_decode_per_the_spec() {
        // The Standard Webhooks test vector: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw signs
        // msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314} as below.
        let k = keys(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
        let sig = signature_header(
            &k,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(secret_key_bytes("whsec_!!").is_none());
        assert_eq!(&**secret_key_bytes("plain").unwrap(), b"plain");
        let two = keys(&["a", "b"]);
        assert_eq!(signature_header(&two, "i", 1, b"x").split(' ').count(), 2);
    }
}
