//! A service's webhook as the dispatcher uses it: the parsed URL, the signing keys, the
//! subscribed event kinds, the HTTP client, and the fingerprint of its configuration (a
//! changed configuration re-enables an endpoint disabled by a 410).

use hyper::Uri;
use ring::hmac;
use zeroize::Zeroizing;
use zoftoken_engine::config::check_webhook_url;
use zoftoken_engine::{EventKind, WebhookConfig};

use crate::http::HttpClient;
use crate::sign;

/// A service's webhook as the dispatcher uses it.
pub(super) struct Hook {
    /// The URL, as configured.
    pub url: String,
    /// The parsed URL, or why no request is made to it.
    pub uri: Result<Uri, String>,
    /// The shared token sent in the body, if configured.
    pub shared_token: Option<Zeroizing<String>>,
    /// The signing keys (the current secret, then the previous one).
    pub keys: Vec<hmac::Key>,
    /// Bitmap of the subscribed event kinds.
    events: u32,
    /// Fingerprint of the configuration ([`fingerprint`]).
    pub fingerprint: [u8; 32],
    /// The HTTP client, or why none could be built (an unusable CA file).
    pub client: Result<HttpClient, String>,
}

impl Hook {
    /// The hook of webhook `w` with its fingerprint `fp` and its client.
    pub fn new(
        w: &WebhookConfig,
        fingerprint: [u8; 32],
        client: Result<HttpClient, String>,
    ) -> Hook {
        let mut secrets = vec![w.secret.as_str()];
        if let Some(p) = &w.previous_secret {
            secrets.push(p);
        }
        let events = if w.events.is_empty() {
            u32::MAX
        } else {
            w.events
                .iter()
                .filter_map(|n| EventKind::from_name(n))
                .fold(0, |m, k| m | 1 << (k as u32))
        };
        // Validation refuses these URLs already; checked again before any request.
        let uri = match check_webhook_url(&w.url, w.allow_insecure_http) {
            Err(e) => Err(format!("the webhook URL is refused: {e}")),
            Ok(()) => w
                .url
                .parse::<Uri>()
                .map_err(|_| "the webhook URL does not parse".to_owned()),
        };
        Hook {
            uri,
            url: w.url.clone(),
            keys: sign::keys(&secrets),
            shared_token: w.shared_token.clone().map(Zeroizing::new),
            events,
            fingerprint,
            client,
        }
    }

    /// Whether the webhook receives events of `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events & (1 << (kind as u32)) != 0
    }
}

/// A digest of everything in the webhook configuration that changes deliveries.
pub(super) fn fingerprint(w: &WebhookConfig) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        w.url.as_str(),
        w.secret.as_str(),
        w.previous_secret.as_deref().unwrap_or("\u{0}none"),
        w.ca_file.as_deref().unwrap_or("\u{0}none"),
        w.shared_token.as_deref().unwrap_or("\u{0}none"),
        if w.allow_insecure_http {
            "insecure"
        } else {
            "secure"
        },
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    for e in &w.events {
        ctx.update(&(e.len() as u64).to_be_bytes());
        ctx.update(e.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}
