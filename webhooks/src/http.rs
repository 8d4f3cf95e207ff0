//! The HTTP(S) client: hyper 1 over hyper-util's pooled client (keep-alive), rustls with the
//! ring provider, the system's roots plus an optional CA file per service.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::{TlsError, WebhookError};

/// A pooled HTTP and HTTPS client for one trust configuration (hyper-util's, with rustls).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn system_roots() -> Arc<Vec<CertificateDer<'static>>> {
    static ROOTS: OnceLock<Arc<Vec<CertificateDer<'static>>>> = OnceLock::new();
    ROOTS
        .get_or_init(|| Arc::new(rustls_native_certs::load_native_certs().certs))
        .clone()
}

/// Largest CA file read (a bundle of a few hundred certificates fits).
pub(crate) const MAX_CA_FILE: u64 = 1 << 20;

/// Reads a CA file: a regular file (not a device, FIFO or directory) of at most
/// [`MAX_CA_FILE`] bytes, checked before it is opened and again on the open handle, and read
/// no further than the cap.
fn read_ca_file(path: &str) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let unreadable = |source: std::io::Error| TlsError::CaFileUnreadable {
        path: path.to_owned(),
        source,
    };
    let too_large = || TlsError::CaFileTooLarge {
        path: path.to_owned(),
        max: MAX_CA_FILE,
    };
    let regular = |m: &std::fs::Metadata| -> Result<(), TlsError> {
        if !m.is_file() {
            return Err(TlsError::CaFileNotRegular {
                path: path.to_owned(),
            });
        }
        if m.len() > MAX_CA_FILE {
            return Err(too_large());
        }
        Ok(())
    };
    // Checked before opening, so that opening a FIFO cannot block.
    regular(&std::fs::metadata(path).map_err(unreadable)?)?;
    let file = std::fs::File::open(path).map_err(unreadable)?;
    regular(&file.metadata().map_err(unreadable)?)?;
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(unreadable)?;
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(too_large());
    }
    Ok(pem)
}

/// A client trusting the system roots and, if given, the certificates of `ca_file` (PEM, read
/// with [`read_ca_file`]'s limits), keeping up to `max_idle_per_host` connections alive.
/// Must be used on a tokio runtime.
pub fn client(ca_file: Option<&str>, max_idle_per_host: usize) -> Result<HttpClient, WebhookError> {
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(path) = ca_file {
        let pem = read_ca_file(path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::CaFilePem {
                path: path.to_owned(),
                source,
            })?;
        if certs.is_empty() {
            return Err(TlsError::CaFileEmpty {
                path: path.to_owned(),
            }
            .into());
        }
        for c in certs {
            roots.add(c).map_err(|source| TlsError::Certificate {
                path: path.to_owned(),
                source,
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // Small requests on kept-alive connections: no Nagle delay.
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle_per_host)
        .build(https))
}

/// What one attempt got.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// The response status, if one came.
    pub status: Option<u16>,
    /// `Retry-After` (delay seconds, or an HTTP date), if present and readable.
    pub retry_after: Option<Duration>,
    /// What went wrong (no response, timeout), if anything.
    pub error: Option<String>,
}

/// Headers of a delivery.
pub(crate) struct Signed<'a> {
    pub id: &'a str,
    pub timestamp: u64,
    pub signature: String,
}

/// Posts `body` to `uri` with the Standard Webhooks headers, within `timeout` (response body
/// included, read and dropped).
pub(crate) async fn post(
    client: &HttpClient,
    uri: &Uri,
    signed: Signed<'_>,
    body: Vec<u8>,
    timeout: Duration,
) -> Attempt {
    let fail = |e: String| Attempt {
        status: None,
        retry_after: None,
        error: Some(e),
    };
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, HeaderValue::from_static("zoftoken-webhooks/1"))
        .header("webhook-id", signed.id)
        .header("webhook-timestamp", signed.timestamp.to_string())
        .header("webhook-signature", signed.signature)
        .body(Full::new(Bytes::from(body)));
    let req = match req {
        Ok(r) => r,
        Err(e) => return fail(format!("bad request: {e}")),
    };
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            // The error chain names the cause (refused, TLS, reset); never a secret.
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // Drain the body so the connection goes back to the pool.
        let _ = resp.into_body().collect().await;
        Ok::<_, String>((status, retry_after))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => fail(format!("no answer within {} ms", timeout.as_millis())),
        Ok(Err(e)) => fail(e),
        Ok(Ok((status, retry_after))) => Attempt {
            status: Some(status),
            retry_after,
            error: (!(200..300).contains(&status)).then(|| format!("HTTP {status}")),
        },
    }
}

/// `Retry-After`: delay seconds, or an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = parse_http_date(v)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

fn parse_http_date(v: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let mut p = v.split_ascii_whitespace();
    let _weekday = p.next()?;
    let day: i64 = p.next()?.parse().ok()?;
    let month = match p.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = p.next()?.parse().ok()?;
    let mut hms = p.next()?.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let s: i64 = hms.next()?.parse().ok()?;
    if p.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from civil (H. Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn ca_files_must_be_small_regular_files() {
        let err = |p: &str| match client(Some(p), 1) {
            Err(WebhookError::Tls(e)) => e,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("{p} accepted"),
        };
        // Without the limits, /dev/zero is read until memory runs out.
        assert!(matches!(
            err("/dev/zero"),
            TlsError::CaFileNotRegular { .. }
        ));
        assert!(matches!(err("/tmp"), TlsError::CaFileNotRegular { .. }));
        assert!(matches!(
            err("/nonexistent/ca.pem"),
            TlsError::CaFileUnreadable { path, source }
                if path == "/nonexistent/ca.pem" && source.kind() == std::io::ErrorKind::NotFound
        ));
        let dir = std::env::temp_dir().join(format!("zoftoken-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'A'; MAX_CA_FILE as usize + 1]).unwrap();
        assert!(matches!(
            err(big.to_str().unwrap()),
            TlsError::CaFileTooLarge {
                max: MAX_CA_FILE,
                ..
            }
        ));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"no certificate here\n").unwrap();
        assert!(matches!(
            err(empty.to_str().unwrap()),
            TlsError::CaFileEmpty { .. }
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-3"), None);
    }
}
