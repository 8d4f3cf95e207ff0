//! Standard authenticator tokens (SPEC.md §10.5): RFC 6238 TOTP over RFC 4226 HOTP, unchanged,
//! and the `otpauth://` URI that authenticator apps scan.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use subtle::ConstantTimeEq;

use crate::error::Error;

/// The HMAC of a TOTP token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TotpAlgorithm {
    /// HMAC-SHA-1, what every authenticator app supports.
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

impl TotpAlgorithm {
    /// The name in `otpauth://` URIs.
    pub fn name(self) -> &'static str {
        match self {
            TotpAlgorithm::Sha1 => "SHA1",
            TotpAlgorithm::Sha256 => "SHA256",
            TotpAlgorithm::Sha512 => "SHA512",
        }
    }

    fn ring(self) -> ring::hmac::Algorithm {
        match self {
            TotpAlgorithm::Sha1 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            TotpAlgorithm::Sha256 => ring::hmac::HMAC_SHA256,
            TotpAlgorithm::Sha512 => ring::hmac::HMAC_SHA512,
        }
    }
}

/// TOTP parameters. The defaults (SHA-1, 6 digits, 30 s) are what authenticator apps expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TotpParams {
    /// 6 to 8 digits.
    pub digits: u8,
    /// Seconds per step.
    pub period_s: u32,
    /// The HMAC.
    pub algorithm: TotpAlgorithm,
}

impl Default for TotpParams {
    fn default() -> Self {
        TotpParams {
            digits: 6,
            period_s: 30,
            algorithm: TotpAlgorithm::Sha1,
        }
    }
}

impl TotpParams {
    /// Checks the ranges (6–8 digits, 1–300 s).
    pub fn validate(self) -> Result<TotpParams, Error> {
        if !(6..=8).contains(&self.digits) {
            return Err(Error::Totp("digits must be 6 to 8"));
        }
        if !(1..=300).contains(&self.period_s) {
            return Err(Error::Totp("period must be 1 to 300 seconds"));
        }
        Ok(self)
    }

    /// The step of a Unix time in seconds (T0 = 0).
    pub fn step(self, unix_s: u64) -> u64 {
        unix_s / u64::from(self.period_s.max(1))
    }
}

/// RFC 4226 HOTP: dynamic truncation of `HMAC(secret, counter)` to `digits` decimal digits.
pub fn hotp(secret: &[u8], counter: u64, digits: u8, algorithm: TotpAlgorithm) -> String {
    let key = ring::hmac::Key::new(algorithm.ring(), secret);
    let tag = ring::hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let mut word = [0u8; 4];
    if let Some(bytes) = mac.get(offset..offset + 4) {
        word.copy_from_slice(bytes);
    }
    let binary = u32::from_be_bytes(word) & 0x7fff_ffff;
    let modulus = 10u64.pow(u32::from(digits.min(9)));
    format!(
        "{:0width$}",
        u64::from(binary) % modulus,
        width = usize::from(digits)
    )
}

/// RFC 6238 TOTP at a Unix time in seconds.
pub fn totp(secret: &[u8], unix_s: u64, params: TotpParams) -> String {
    hotp(secret, params.step(unix_s), params.digits, params.algorithm)
}

/// RFC 6238 TOTP with HMAC-SHA-1 (what every authenticator app supports) at a Unix time in
/// seconds, T0 = 0: the `digits`-digit code of step `unix_s / period_s` (a zero period is
/// taken as 1 s; `digits` above 9 as 9).
pub fn totp_code(secret: &[u8], unix_s: u64, period_s: u32, digits: u8) -> String {
    let step = unix_s / u64::from(period_s.max(1));
    hotp(secret, step, digits.min(9), TotpAlgorithm::Sha1)
}

/// Server side: accepts `code` if it matches a step within `radius` of the current one and
/// above `last_used_step` (never twice). Returns the matched step.
pub fn totp_verify(
    secret: &[u8],
    code: &str,
    unix_s: u64,
    params: TotpParams,
    radius: u64,
    last_used_step: Option<u64>,
) -> Option<u64> {
    totp_verify_around(
        secret,
        code,
        params.step(unix_s),
        params,
        radius,
        last_used_step,
    )
}

/// [`totp_verify`] around a given step (the current one plus a tracked drift): accepts `code`
/// if it matches a step in `center ± radius` above `last_used_step`, and returns that step
/// (the lowest such one). Whitespace in `code` is ignored; every candidate is compared in
/// constant time.
pub fn totp_verify_around(
    secret: &[u8],
    code: &str,
    center: u64,
    params: TotpParams,
    radius: u64,
    last_used_step: Option<u64>,
) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != usize::from(params.digits) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut found = None;
    for step in center.saturating_sub(radius)..=center.saturating_add(radius) {
        let candidate = hotp(secret, step, params.digits, params.algorithm);
        let matches: bool = candidate.as_bytes().ct_eq(code.as_bytes()).into();
        if matches && found.is_none() && last_used_step.is_none_or(|used| step > used) {
            found = Some(step);
        }
    }
    found
}

/// RFC 4648 base32 without padding, as `otpauth://` URIs carry secrets.
pub fn base32_encode(bytes: &[u8]) -> String {
    const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for b in bytes {
        buffer = (buffer << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            if let Some(c) = A.get(((buffer >> bits) & 31) as usize) {
                out.push(char::from(*c));
            }
        }
    }
    if bits > 0 {
        if let Some(c) = A.get(((buffer << (5 - bits)) & 31) as usize) {
            out.push(char::from(*c));
        }
    }
    out
}

const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The `otpauth://totp/` URI of Google Authenticator's key-URI format.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8], params: TotpParams) -> String {
    let issuer_enc = utf8_percent_encode(issuer, URI_COMPONENT).to_string();
    let account_enc = utf8_percent_encode(account, URI_COMPONENT).to_string();
    format!(
        "otpauth://totp/{issuer_enc}:{account_enc}?secret={}&issuer={issuer_enc}&algorithm={}&digits={}&period={}",
        base32_encode(secret),
        params.algorithm.name(),
        params.digits,
        params.period_s
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648() {
        // RFC 4648 §10 test vectors, padding removed.
        for (i, o) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(i.as_bytes()), o);
        }
    }

    #[test]
    fn totp_code_matches_rfc6238_appendix_b_sha1() {
        // RFC 6238 Appendix B, SHA-1 rows, typed in from the RFC.
        let key = b"12345678901234567890";
        for (t, code) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(totp_code(key, t, 30, 8), code, "T = {t}");
        }
        // 6 digits are the last 6 of the 8 (same truncated value, smaller modulus).
        assert_eq!(totp_code(key, 59, 30, 6), "287082");
        // The period divides the time: step 1 at 59 s with 30 s is step 1 at 119 s with 60 s.
        assert_eq!(totp_code(key, 119, 60, 8), "94287082");
    }

    #[test]
    fn verify_is_single_use_and_windowed() {
        let s = b"12345678901234567890";
        let p = TotpParams::default();
        let code = totp(s, 59, p);
        assert_eq!(totp_verify(s, &code, 59, p, 1, None), Some(1));
        assert_eq!(totp_verify(s, &code, 89, p, 1, None), Some(1));
        assert_eq!(totp_verify(s, &code, 59, p, 1, Some(1)), None);
        assert_eq!(totp_verify(s, &code, 200, p, 1, None), None);
        assert_eq!(totp_verify(s, "12a456", 59, p, 1, None), None);
    }

    #[test]
    fn uri_escapes_labels() {
        let u = otpauth_uri(
            "Bank & Co",
            "alice@example.com",
            b"12345678901234567890",
            TotpParams::default(),
        );
        assert_eq!(u, "otpauth://totp/Bank%20%26%20Co:alice%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Bank%20%26%20Co&algorithm=SHA1&digits=6&period=30");
    }
}
