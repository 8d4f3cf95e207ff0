//! Human-readable codes: the app's one-time codes (SPEC.md §10), offline validation codes and
//! responses (§11), and manual enrollment codes (§12.2). All share one unambiguous alphabet and
//! one way of turning a BLAKE3 output stream into symbols.

use crate::error::Error;
use crate::keys::{context, EnrollmentSecret, SecretBytes};
use crate::pin::{classify, PinMatch, PinVerifier};
use crate::wire::Alphabet;
/// The 32 symbols of the unambiguous alphabet (defined with [`Alphabet`], in the wire layouts).
pub use crate::wire::BASE32_SYMBOLS;

/// Shortest one-time code, validation code and offline response.
pub const CODE_MIN_LEN: usize = 4;
/// Longest one-time code, validation code and offline response.
pub const CODE_MAX_LEN: usize = 32;
/// Default one-time-code period in seconds.
pub const DEFAULT_PERIOD_S: u16 = 30;
/// Longest accepted one-time-code period in seconds.
pub const MAX_PERIOD_S: u16 = 3600;
/// Steps either side of the expected step that a one-time code is searched in (SPEC.md §10.3).
pub const OTP_SEARCH_RADIUS: u64 = 1;
/// Symbols in a manual enrollment code (19 random + 1 check).
pub const MANUAL_CODE_LEN: usize = 20;

/// Draws `len` symbols of `alphabet` from a BLAKE3 output stream by rejection sampling
/// (SPEC.md §10.2): each byte `b` with `b < 256 - (256 mod n)` yields `alphabet[b mod n]`,
/// other bytes are skipped.
fn draw(mut xof: blake3::OutputReader, alphabet: &[u8], len: usize) -> String {
    let n = alphabet.len();
    let limit = 256 - (256 % n);
    let mut out = String::with_capacity(len);
    let mut block = [0u8; 64];
    while out.len() < len {
        xof.fill(&mut block);
        for b in block {
            if out.len() == len {
                break;
            }
            let b = usize::from(b);
            if b < limit {
                if let Some(symbol) = alphabet.get(b % n) {
                    out.push(char::from(*symbol));
                }
            }
        }
    }
    out
}

/// Canonical form of a code typed by a person (SPEC.md §11.1): spaces and `-` removed,
/// lower case raised, `O` read as `0` and `I`/`L` as `1`; every remaining symbol must be in
/// the alphabet.
pub fn normalize(input: &str, alphabet: Alphabet) -> Result<String, Error> {
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        let c = match c.to_ascii_uppercase() {
            ' ' | '-' => continue,
            'O' if alphabet == Alphabet::Base32 => '0',
            'I' | 'L' if alphabet == Alphabet::Base32 => '1',
            c => c,
        };
        if !c.is_ascii() || !alphabet.symbols().contains(&(c as u8)) {
            return Err(Error::CodeFormat("symbol outside the alphabet"));
        }
        out.push(c);
        if out.len() > 64 {
            return Err(Error::CodeFormat("too long"));
        }
    }
    Ok(out)
}

/// Groups a canonical code in fours with `-` for display: `ABCD-EFGH`.
pub fn group4(code: &str) -> String {
    let mut out = String::with_capacity(code.len() + code.len() / 4);
    for (i, c) in code.chars().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(c);
    }
    out
}

/// A service's one-time-code parameters (SPEC.md §10.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OtpParams {
    /// Symbols per code, 4–32.
    pub length: u8,
    /// Seconds per step, 1–3600 (30 by default).
    pub period_s: u16,
    /// The symbols used.
    pub alphabet: Alphabet,
}

impl Default for OtpParams {
    fn default() -> Self {
        OtpParams {
            length: 6,
            period_s: DEFAULT_PERIOD_S,
            alphabet: Alphabet::Digits,
        }
    }
}

impl OtpParams {
    /// Checks the ranges.
    pub fn validate(self) -> Result<OtpParams, Error> {
        if !(CODE_MIN_LEN..=CODE_MAX_LEN).contains(&usize::from(self.length)) {
            return Err(Error::OtpParams("length must be 4 to 32"));
        }
        if self.period_s == 0 || self.period_s > MAX_PERIOD_S {
            return Err(Error::OtpParams("period must be 1 to 3600 seconds"));
        }
        Ok(self)
    }

    /// The step of a Unix time in milliseconds: `floor(ms / 1000 / period)`.
    pub fn step(self, unix_ms: u64) -> u64 {
        unix_ms / 1000 / u64::from(self.period_s.max(1))
    }
}

/// The one-time code for `step` (SPEC.md §10.2): symbols drawn from
/// `BLAKE3-keyed(otp_key, verifier ‖ step)` as an output stream.
pub fn otp_code(
    otp_key: &SecretBytes,
    verifier: &PinVerifier,
    step: u64,
    params: OtpParams,
) -> String {
    let mut hasher = blake3::Hasher::new_keyed(otp_key.expose());
    hasher.update(verifier.expose());
    hasher.update(&step.to_be_bytes());
    draw(
        hasher.finalize_xof(),
        params.alphabet.symbols(),
        usize::from(params.length),
    )
}

/// Server side (SPEC.md §10.3): searches `expected_step ± OTP_SEARCH_RADIUS` for a step
/// whose code (normal or duress) equals `code`, skipping steps `<= last_used_step` so that a
/// code is never accepted twice. Every candidate step is computed and compared in constant
/// time. Returns the matched step and which PIN made it.
pub fn otp_verify(
    otp_key: &SecretBytes,
    normal: &PinVerifier,
    duress: Option<&PinVerifier>,
    params: OtpParams,
    code: &str,
    expected_step: u64,
    last_used_step: Option<u64>,
) -> Option<(u64, PinMatch)> {
    let code = normalize(code, params.alphabet).ok()?;
    if code.len() != usize::from(params.length) {
        return None;
    }
    let first = expected_step.saturating_sub(OTP_SEARCH_RADIUS);
    let last = expected_step.saturating_add(OTP_SEARCH_RADIUS);
    let mut found = None;
    for step in first..=last {
        let m = classify::<CODE_MAX_LEN>(&pad32(&code), normal, duress, |v| {
            pad32(&otp_code(otp_key, v, step, params))
        });
        let fresh = last_used_step.is_none_or(|used| step > used);
        if m != PinMatch::Wrong && fresh && found.is_none() {
            found = Some((step, m));
        }
    }
    found
}

/// A code accepted by [`otp_verify_drifted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OtpAccepted {
    /// The step `m` the code was made for: the token's new last accepted step.
    pub step: u64,
    /// Which verifier made it.
    pub pin: PinMatch,
    /// The token's new drift `d = m − b`, in steps (0 if it does not fit an `i8`).
    pub drift: i8,
}

/// Server side: validates an app one-time code with the token's clock offset and remembered
/// drift (SPEC.md §10.3). The base step is `b = step(server_time_ms + offset_ms)`, the expected
/// step `s = b + drift`; [`otp_verify`] tries `s − 1 ..= s + 1` above `last_used_step`. On
/// acceptance the caller stores the returned step and drift.
#[allow(clippy::too_many_arguments)]
pub fn otp_verify_drifted(
    otp_key: &SecretBytes,
    normal: &PinVerifier,
    duress: Option<&PinVerifier>,
    params: OtpParams,
    code: &str,
    server_time_ms: u64,
    offset_ms: i64,
    drift: i8,
    last_used_step: Option<u64>,
) -> Option<OtpAccepted> {
    let base = params.step(server_time_ms.saturating_add_signed(offset_ms));
    let expected = base.saturating_add_signed(i64::from(drift));
    let (step, pin) = otp_verify(
        otp_key,
        normal,
        duress,
        params,
        code,
        expected,
        last_used_step,
    )?;
    let drift = i64::try_from(step)
        .ok()
        .zip(i64::try_from(base).ok())
        .and_then(|(m, b)| i8::try_from(m - b).ok())
        .unwrap_or(0);
    Some(OtpAccepted { step, pin, drift })
}

fn pad32(code: &str) -> [u8; CODE_MAX_LEN] {
    let mut out = [0u8; CODE_MAX_LEN];
    for (o, b) in out.iter_mut().zip(code.bytes()) {
        *o = b;
    }
    out
}

/// Server side: a validation code of `len` symbols (4–32, a multiple of 4) from random bytes
/// (SPEC.md §11.1). `random` must hold at least `len` bytes from a CSPRNG; each symbol is
/// `BASE32_SYMBOLS[byte mod 32]`.
pub fn validation_code(len: usize, random: &[u8]) -> Result<String, Error> {
    check_offline_len(len)?;
    let bytes = random
        .get(..len)
        .ok_or(Error::CodeFormat("not enough random bytes"))?;
    Ok(bytes
        .iter()
        .filter_map(|b| BASE32_SYMBOLS.get(usize::from(b % 32)))
        .map(|b| char::from(*b))
        .collect())
}

fn check_offline_len(len: usize) -> Result<(), Error> {
    if (CODE_MIN_LEN..=CODE_MAX_LEN).contains(&len) && len % 4 == 0 {
        Ok(())
    } else {
        Err(Error::CodeFormat("length must be 4 to 32 in groups of 4"))
    }
}

/// The offline response to a validation code (SPEC.md §11.2): as many symbols as the
/// validation code, drawn from `BLAKE3-keyed(offline_key, verifier ‖ len ‖ code)`.
pub fn offline_response(
    offline_key: &SecretBytes,
    verifier: &PinVerifier,
    validation_code: &str,
) -> Result<String, Error> {
    let code = normalize(validation_code, Alphabet::Base32)?;
    check_offline_len(code.len())?;
    let mut hasher = blake3::Hasher::new_keyed(offline_key.expose());
    hasher.update(verifier.expose());
    hasher.update(&[code.len() as u8]);
    hasher.update(code.as_bytes());
    Ok(draw(hasher.finalize_xof(), BASE32_SYMBOLS, code.len()))
}

/// Server side: classifies an offline response (normal, duress or wrong) in constant time.
pub fn offline_verify(
    offline_key: &SecretBytes,
    normal: &PinVerifier,
    duress: Option<&PinVerifier>,
    validation_code: &str,
    response: &str,
) -> Result<PinMatch, Error> {
    let code = normalize(validation_code, Alphabet::Base32)?;
    check_offline_len(code.len())?;
    let response = normalize(response, Alphabet::Base32)?;
    if response.len() != code.len() {
        return Ok(PinMatch::Wrong);
    }
    // `code` is valid, so computing a response cannot fail; a zero string never matches.
    Ok(classify::<CODE_MAX_LEN>(
        &pad32(&response),
        normal,
        duress,
        |v| {
            offline_response(offline_key, v, &code)
                .map(|r| pad32(&r))
                .unwrap_or([0u8; CODE_MAX_LEN])
        },
    ))
}

/// Server side: a manual enrollment code from 19 random bytes (SPEC.md §12.2): 19 symbols
/// `BASE32_SYMBOLS[byte mod 32]` and a check symbol, shown as five groups of four.
pub fn manual_code(random: &[u8; 19]) -> String {
    let body: String = random
        .iter()
        .filter_map(|b| BASE32_SYMBOLS.get(usize::from(b % 32)))
        .map(|b| char::from(*b))
        .collect();
    let check = check_symbol(&body);
    group4(&format!("{body}{check}"))
}

fn check_symbol(body: &str) -> char {
    let h = blake3::derive_key(context::MANUAL_CHECK, body.as_bytes());
    let index = usize::from(h.first().copied().unwrap_or(0) >> 3);
    BASE32_SYMBOLS
        .get(index)
        .map(|b| char::from(*b))
        .unwrap_or('0')
}

/// Device side: reads a manual enrollment code as typed and returns the enrollment secret
/// (the 20 canonical symbols as ASCII), or a clear error for a typo.
pub fn parse_manual_code(input: &str) -> Result<EnrollmentSecret, Error> {
    let code = normalize(input, Alphabet::Base32)?;
    if code.len() != MANUAL_CODE_LEN {
        return Err(Error::CodeFormat("a manual enrollment code has 20 symbols"));
    }
    let (body, check) = code.split_at(MANUAL_CODE_LEN - 1);
    if !check.starts_with(check_symbol(body)) {
        return Err(Error::CodeFormat(
            "check symbol does not match: mistyped code",
        ));
    }
    Ok(EnrollmentSecret::new(code.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretBytes {
        SecretBytes::new([b; 32])
    }

    #[test]
    fn normalisation_is_forgiving_but_strict_on_symbols() {
        assert_eq!(normalize("ab1o-il2 ", Alphabet::Base32).unwrap(), "AB10112");
        assert!(normalize("ABU", Alphabet::Base32).is_err());
        assert!(normalize("12a", Alphabet::Digits).is_err());
        assert!(normalize("1é", Alphabet::Digits).is_err());
        assert_eq!(group4("ABCDEFGHJ"), "ABCD-EFGH-J");
    }

    #[test]
    fn otp_codes_have_the_requested_shape() {
        let v = PinVerifier::from_bytes([3; 32]);
        for (len, alphabet) in [
            (4, Alphabet::Digits),
            (32, Alphabet::Digits),
            (16, Alphabet::Base32),
        ] {
            let p = OtpParams {
                length: len,
                period_s: 30,
                alphabet,
            };
            let c = otp_code(&key(1), &v, 7, p);
            assert_eq!(c.len(), usize::from(len));
            assert!(c.bytes().all(|b| alphabet.symbols().contains(&b)));
            assert_ne!(c, otp_code(&key(1), &v, 8, p));
        }
        assert!(OtpParams {
            length: 3,
            ..OtpParams::default()
        }
        .validate()
        .is_err());
        assert!(OtpParams {
            length: 33,
            ..OtpParams::default()
        }
        .validate()
        .is_err());
        assert!(OtpParams {
            period_s: 0,
            ..OtpParams::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn otp_verify_tracks_drift_and_never_accepts_twice() {
        let normal = PinVerifier::from_bytes([3; 32]);
        let duress = PinVerifier::from_bytes([4; 32]);
        let p = OtpParams {
            length: 8,
            period_s: 30,
            alphabet: Alphabet::Digits,
        };
        let code = otp_code(&key(1), &normal, 101, p);
        assert_eq!(
            otp_verify(&key(1), &normal, Some(&duress), p, &code, 100, None),
            Some((101, PinMatch::Normal))
        );
        assert_eq!(
            otp_verify(&key(1), &normal, Some(&duress), p, &code, 100, Some(101)),
            None
        );
        assert_eq!(
            otp_verify(&key(1), &normal, Some(&duress), p, &code, 103, None),
            None
        );
        let dcode = otp_code(&key(1), &duress, 99, p);
        assert_eq!(
            otp_verify(&key(1), &normal, Some(&duress), p, &dcode, 100, None),
            Some((99, PinMatch::Duress))
        );
        assert_eq!(
            otp_verify(&key(1), &normal, None, p, &dcode, 100, None),
            None
        );
        assert_eq!(otp_verify(&key(1), &normal, None, p, "12", 100, None), None);
    }

    #[test]
    fn offline_round_trip_and_duress() {
        let normal = PinVerifier::from_bytes([3; 32]);
        let duress = PinVerifier::from_bytes([4; 32]);
        let vc = validation_code(8, &[200; 8]).unwrap();
        assert_eq!(vc.len(), 8);
        let r = offline_response(&key(2), &normal, &group4(&vc)).unwrap();
        assert_eq!(r.len(), 8);
        assert_eq!(
            offline_verify(&key(2), &normal, Some(&duress), &vc, &r).unwrap(),
            PinMatch::Normal
        );
        let d = offline_response(&key(2), &duress, &vc).unwrap();
        assert_eq!(
            offline_verify(&key(2), &normal, Some(&duress), &vc, &group4(&d)).unwrap(),
            PinMatch::Duress
        );
        assert_eq!(
            offline_verify(&key(2), &normal, None, &vc, &d).unwrap(),
            PinMatch::Wrong
        );
        assert!(validation_code(6, &[0; 8]).is_err());
        assert!(validation_code(36, &[0; 40]).is_err());
        assert!(validation_code(8, &[0; 4]).is_err());
    }

    #[test]
    fn manual_codes_catch_typos() {
        let code = manual_code(&[17; 19]);
        assert_eq!(code.len(), 24);
        let secret = parse_manual_code(&code.to_lowercase()).unwrap();
        assert_eq!(secret.expose().len(), 20);
        // Change one symbol: the check symbol catches it (for this input).
        let mut typo: Vec<char> = code.chars().collect();
        typo[0] = if typo[0] == 'H' { 'J' } else { 'H' };
        let typo: String = typo.into_iter().collect();
        assert!(parse_manual_code(&typo).is_err());
        assert!(parse_manual_code("ABCD").is_err());
    }
}
