//! A token's status as JSON (the answer of status polls, the API's hot path), written by hand
//! into one buffer allocated at its final size: the bytes serde_json writes for the documented
//! shape (the test keeps that shape as a serde type and compares every combination), without
//! the intermediate strings and the serializer's machinery.
//!
//! `{"token_id":"<32 hex>","kind":…,"state":…[,"open_until_ms":…],"duress":…,"failures":…,
//! "attempts_left":…[,"last_seen_ms":…][,"last_duress":{"time_ms":…,"operation":…}]}`

use zoftoken_engine::TokenStatus;

/// Room for the longest status (about 270 bytes), so the buffer never grows.
const CAPACITY: usize = 320;

/// The status's JSON.
pub(crate) fn status_json(s: &TokenStatus) -> Vec<u8> {
    let mut out = Vec::with_capacity(CAPACITY);
    out.extend_from_slice(b"{\"token_id\":\"");
    push_hex(&mut out, &s.token_id.0);
    out.extend_from_slice(b"\",\"kind\":");
    push_str(&mut out, s.kind.name());
    out.extend_from_slice(b",\"state\":");
    push_str(&mut out, s.state.name());
    if let Some(until) = s.open_until_ms {
        out.extend_from_slice(b",\"open_until_ms\":");
        push_number(&mut out, until);
    }
    out.extend_from_slice(if s.duress {
        b",\"duress\":true"
    } else {
        b",\"duress\":false"
    });
    out.extend_from_slice(b",\"failures\":");
    push_number(&mut out, s.failures);
    out.extend_from_slice(b",\"attempts_left\":");
    push_number(&mut out, s.attempts_left);
    if let Some(seen) = s.last_seen_ms {
        out.extend_from_slice(b",\"last_seen_ms\":");
        push_number(&mut out, seen);
    }
    if let Some(d) = &s.last_duress {
        out.extend_from_slice(b",\"last_duress\":{\"time_ms\":");
        push_number(&mut out, d.time_ms);
        out.extend_from_slice(b",\"operation\":");
        push_str(&mut out, d.operation.name());
        out.push(b'}');
    }
    out.push(b'}');
    out
}

/// `bytes` in lower-case hexadecimal (a token id: 16 bytes), through a stack buffer.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8; 16]) {
    let mut hex = [0u8; 32];
    match hex::encode_to_slice(bytes, &mut hex) {
        Ok(()) => out.extend_from_slice(&hex),
        // The buffer is exactly twice the input: never taken.
        Err(_) => out.extend_from_slice(hex::encode(bytes).as_bytes()),
    }
}

/// An integer, as JSON writes it.
fn push_number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A string in quotes. The engine's names (kinds, states, operations) need no escape; any
/// other string is escaped as serde_json escapes it.
fn push_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        // Writing into a vector cannot fail; `null` would keep the JSON well formed.
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use serde::Serialize;
    use zoftoken_engine::{DuressOp, DuressUse, TokenKind, TokenState};
    use zoftoken_proto::TokenId;

    use super::*;

    /// The documented shape as a serde type: what the hand-written JSON must equal.
    #[derive(Serialize)]
    struct StatusBody {
        token_id: String,
        kind: &'static str,
        state: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        open_until_ms: Option<u64>,
        duress: bool,
        failures: u8,
        attempts_left: u8,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_seen_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_duress: Option<DuressBody>,
    }

    #[derive(Serialize)]
    struct DuressBody {
        time_ms: u64,
        operation: &'static str,
    }

    fn reference(s: &TokenStatus) -> Vec<u8> {
        serde_json::to_vec(&StatusBody {
            token_id: hex::encode(s.token_id.0),
            kind: s.kind.name(),
            state: s.state.name(),
            open_until_ms: s.open_until_ms,
            duress: s.duress,
            failures: s.failures,
            attempts_left: s.attempts_left,
            last_seen_ms: s.last_seen_ms,
            last_duress: s.last_duress.map(|d| DuressBody {
                time_ms: d.time_ms,
                operation: d.operation.name(),
            }),
        })
        .unwrap()
    }

    #[test]
    fn every_status_is_written_as_serde_json_writes_it() {
        let kinds = [TokenKind::App, TokenKind::Totp];
        let states = [
            TokenState::Pending,
            TokenState::Closed,
            TokenState::Open,
            TokenState::Blocked,
        ];
        let times = [
            None,
            Some(0),
            Some(9),
            Some(1_700_000_000_123),
            Some(u64::MAX),
        ];
        let small = [0u8, 7, 10, 255];
        let duress = std::iter::once(None).chain(DuressOp::ALL.into_iter().map(|operation| {
            Some(DuressUse {
                time_ms: 1_700_000_000_456,
                operation,
            })
        }));
        let mut count = 0;
        for (i, last_duress) in duress.enumerate() {
            for kind in kinds {
                for state in states {
                    for (j, open_until_ms) in times.into_iter().enumerate() {
                        let n = small[(i + j) % small.len()];
                        let s = TokenStatus {
                            token_id: TokenId::derive("bänk \"q\"", &format!("user{i}{j}")),
                            kind,
                            state,
                            open_until_ms,
                            duress: (i + j) % 2 == 0,
                            failures: n,
                            attempts_left: n.wrapping_add(3),
                            last_seen_ms: times[(i + 2 * j) % times.len()],
                            last_duress,
                        };
                        let ours = status_json(&s);
                        assert_eq!(
                            String::from_utf8_lossy(&ours),
                            String::from_utf8_lossy(&reference(&s))
                        );
                        assert!(ours.len() <= CAPACITY);
                        count += 1;
                    }
                }
            }
        }
        assert_eq!(count, (1 + DuressOp::ALL.len()) * 2 * 4 * times.len());
    }

    #[test]
    fn strings_that_need_escapes_are_escaped_as_serde_json_does() {
        for s in [
            "plain",
            "a\"b",
            "back\\slash",
            "new\nline",
            "\u{1}",
            "bänk",
            "",
        ] {
            let mut out = Vec::new();
            push_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }
}
