//! The enrollment deeplink (SPEC.md §12.1):
//! `zoftoken://enroll?v=1&s=<secret>&service=<name>&ep=<host:port>[&ep=…][&details=<url>]`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::Error;
use crate::keys::EnrollmentSecret;

/// The scheme and path every deeplink starts with.
pub const DEEPLINK_PREFIX: &str = "zoftoken://enroll?";
/// Longest deeplink accepted, in bytes.
pub const DEEPLINK_MAX_LEN: usize = 2048;
/// Most endpoints a deeplink may list.
pub const MAX_ENDPOINTS: usize = 16;
/// Longest service name, in bytes of UTF-8.
pub const SERVICE_NAME_MAX: usize = 255;

const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a deeplink carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deeplink {
    /// The 32-byte enrollment secret.
    pub secret: EnrollmentSecret,
    /// The service name (display and token id).
    pub service: String,
    /// `host:port` endpoints of the instance, at least one.
    pub endpoints: Vec<String>,
    /// URL of the service's details JSON (logo, display text), if any.
    pub details_url: Option<String>,
}

/// Checks one `host:port` endpoint: a host name, IPv4 address or bracketed IPv6 address, and
/// a port from 1 to 65535.
pub fn check_endpoint(endpoint: &str) -> Result<(), Error> {
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or(Error::Deeplink("endpoint must be host:port"))?;
    // Decimal digits without a leading zero (a leading zero reads as octal to some parsers:
    // `0443` would be 443 to one app and 291 to another), value 1–65535.
    let port_ok = !port.is_empty()
        && !port.starts_with('0')
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0);
    if !port_ok {
        return Err(Error::Deeplink(
            "endpoint port must be 1 to 65535 in decimal without leading zeros",
        ));
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if host_ok {
        Ok(())
    } else {
        Err(Error::Deeplink("endpoint host is not a name or address"))
    }
}

/// Whether every `%` in `raw` starts an escape of two hexadecimal digits (either case).
fn well_formed_escapes(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.iter().enumerate().all(|(i, c)| {
        *c != b'%'
            || matches!(
                (b.get(i + 1), b.get(i + 2)),
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit()
            )
    })
}

impl Deeplink {
    /// Encodes the deeplink. Fails if a field is out of range, so that a server never hands
    /// out a link its own parser would refuse.
    pub fn to_uri(&self) -> Result<String, Error> {
        self.check()?;
        let mut uri = format!(
            "{DEEPLINK_PREFIX}v=1&s={}&service={}",
            URL_SAFE_NO_PAD.encode(self.secret.expose()),
            utf8_percent_encode(&self.service, COMPONENT)
        );
        for ep in &self.endpoints {
            uri.push_str("&ep=");
            uri.extend(utf8_percent_encode(ep, COMPONENT));
        }
        if let Some(details) = &self.details_url {
            uri.push_str("&details=");
            uri.extend(utf8_percent_encode(details, COMPONENT));
        }
        if uri.len() > DEEPLINK_MAX_LEN {
            return Err(Error::Deeplink("longer than 2048 bytes"));
        }
        Ok(uri)
    }

    fn check(&self) -> Result<(), Error> {
        if self.secret.expose().len() != 32 {
            return Err(Error::Deeplink("secret must be 32 bytes"));
        }
        if self.service.is_empty() || self.service.len() > SERVICE_NAME_MAX {
            return Err(Error::Deeplink("service name must be 1 to 255 bytes"));
        }
        if self.endpoints.is_empty() || self.endpoints.len() > MAX_ENDPOINTS {
            return Err(Error::Deeplink("1 to 16 endpoints"));
        }
        self.endpoints.iter().try_for_each(|e| check_endpoint(e))?;
        if let Some(d) = &self.details_url {
            if !(d.starts_with("https://") || d.starts_with("http://")) {
                return Err(Error::Deeplink("details must be an http(s) URL"));
            }
        }
        Ok(())
    }

    /// Parses a deeplink strictly: known parameters at most once (`ep` repeatable), unknown
    /// parameters ignored, every field checked.
    pub fn parse(uri: &str) -> Result<Deeplink, Error> {
        if uri.len() > DEEPLINK_MAX_LEN {
            return Err(Error::Deeplink("longer than 2048 bytes"));
        }
        let query = uri
            .strip_prefix(DEEPLINK_PREFIX)
            .ok_or(Error::Deeplink("not a zoftoken://enroll link"))?;
        let (mut version, mut secret, mut service, mut details) = (None, None, None, None);
        let mut endpoints = Vec::new();
        for pair in query.split('&') {
            let (key, raw) = pair
                .split_once('=')
                .ok_or(Error::Deeplink("parameter without '='"))?;
            // Names are matched literally; a percent-encoded name could only be a known name
            // in disguise (`%76` for `v`), read differently by parsers that decode names.
            if key.contains('%') {
                return Err(Error::Deeplink("percent-encoded parameter name"));
            }
            if !well_formed_escapes(raw) {
                return Err(Error::Deeplink(
                    "'%' not followed by two hexadecimal digits",
                ));
            }
            let value = percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| Error::Deeplink("parameter is not UTF-8"))?
                .into_owned();
            let slot = match key {
                "v" => &mut version,
                "s" => &mut secret,
                "service" => &mut service,
                "details" => &mut details,
                "ep" => {
                    endpoints.push(value);
                    continue;
                }
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(Error::Deeplink("parameter repeated"));
            }
        }
        if version.as_deref() != Some("1") {
            return Err(Error::Deeplink("missing or unsupported version"));
        }
        let secret = URL_SAFE_NO_PAD
            .decode(secret.ok_or(Error::Deeplink("missing secret"))?)
            .map_err(|_| Error::Deeplink("secret is not base64url"))?;
        let link = Deeplink {
            secret: EnrollmentSecret::new(secret),
            service: service.ok_or(Error::Deeplink("missing service"))?,
            endpoints,
            details_url: details,
        };
        // Whatever parses must also encode (raw UTF-8 grows when percent-encoded, so a link
        // under the limit here could exceed it in canonical form).
        link.to_uri()?;
        Ok(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Deeplink {
        Deeplink {
            secret: EnrollmentSecret::new(vec![7; 32]),
            service: "Banco Ñandú & Co".into(),
            endpoints: vec!["a.example.com:4500".into(), "[2001:db8::1]:4500".into()],
            details_url: Some("https://example.com/details.json?x=1&y=2".into()),
        }
    }

    #[test]
    fn round_trip() {
        let uri = sample().to_uri().unwrap();
        assert!(uri.starts_with(DEEPLINK_PREFIX));
        assert_eq!(Deeplink::parse(&uri).unwrap(), sample());
        assert_eq!(
            Deeplink::parse(&format!("{uri}&future=1")).unwrap(),
            sample()
        );
    }

    #[test]
    fn bad_links_are_clear_errors() {
        let uri = sample().to_uri().unwrap();
        assert!(Deeplink::parse(&uri.replace("v=1", "v=2")).is_err());
        assert!(Deeplink::parse(&format!("{uri}&s=AAAA")).is_err());
        assert!(Deeplink::parse("https://enroll?v=1").is_err());
        assert!(Deeplink::parse(&uri.replace("%3A4500", "%3A0")).is_err());
        assert!(Deeplink::parse(&uri.replace("%3A4500", "%3A04500")).is_err());
        // Malformed escapes, anywhere in a value, and percent-encoded names.
        for bad in [
            uri.replace("Banco%20", "Banco%2"),
            uri.replace("Banco%20", "Banco%zz"),
            uri.replace("Banco%20", "Banco%"),
            format!("{uri}&future=%4"),
            format!("{uri}&%76=1"),
            format!("{uri}&%73ervice=Other"),
            uri.replace("?v=1", "?%76=1"),
        ] {
            assert!(Deeplink::parse(&bad).is_err(), "{bad}");
        }
        // Lower-case escapes and a literal `+` are fine.
        let lower = uri.replace("%C3%91", "%c3%91");
        assert_eq!(Deeplink::parse(&lower).unwrap(), sample());
        let plus = uri.replace("Banco%20", "Banco+");
        assert_eq!(Deeplink::parse(&plus).unwrap().service, "Banco+Ñandú & Co");
        let mut no_ep = sample();
        no_ep.endpoints.clear();
        assert!(no_ep.to_uri().is_err());
        for bad in [
            "host",
            "host:",
            ":80",
            "ho st:80",
            "[::1:80",
            "[zz]:80",
            "h:99999",
            "h:0",
            "h:00",
            "h:0443",
            "[::1]:080",
            "h:+443",
            "h:65536",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
