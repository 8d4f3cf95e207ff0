//! What a standard authenticator app does with an enrollment, written here from RFC 4648 and
//! RFC 6238's URI conventions (not the server's code): the secret decoded from base32 and the
//! parameters read from an `otpauth://` URI.

/// RFC 4648 base32 (padding optional, either case), as authenticator apps read a secret.
/// Panics on a character outside the alphabet (a bug of the test).
pub fn base32_decode(s: &str) -> Vec<u8> {
    let (mut bits, mut n, mut out) = (0u64, 0, Vec::new());
    for c in s.trim_end_matches('=').chars() {
        let v = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
            .find(c.to_ascii_uppercase())
            .unwrap_or_else(|| panic!("{c:?} is not base32")) as u64;
        bits = bits << 5 | v;
        n += 5;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// The value of the query parameter `name` of an `otpauth://` URI. Panics if it has none.
pub fn otpauth_param(uri: &str, name: &str) -> String {
    uri.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{uri} has no {name}"))
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4648_vectors_and_uri_parameters() {
        assert_eq!(base32_decode("MZXW6YTBOI======"), b"foobar");
        assert_eq!(base32_decode("mzxw6"), b"foo");
        let uri = "otpauth://totp/bank:alice?secret=MZXW6&digits=8&period=30";
        assert_eq!(otpauth_param(uri, "digits"), "8");
        assert_eq!(otpauth_param(uri, "secret"), "MZXW6");
    }
}
