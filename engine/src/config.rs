//! The engine's configuration: how an engine is built ([`EngineConfig`]), its services as the
//! engine sees them ([`ServiceConfig`], [`WebhookConfig`]) and its authkeys
//! ([`AuthkeyConfig`]), handed over as structures (the server reads them from its
//! configuration file and the database). Every value is validated with the path of what is
//! wrong (authkeys when `crate::authkeys` compiles them).

use zoftoken_proto::codes::OtpParams;
use zoftoken_proto::deeplink::{check_endpoint, MAX_ENDPOINTS, SERVICE_NAME_MAX};
use zoftoken_proto::wire::Alphabet;

/// How the engine is built.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The services.
    pub services: Vec<ServiceConfig>,
    /// The authkeys.
    pub authkeys: Vec<AuthkeyConfig>,
    /// Number of shards (rounded up to a power of two).
    pub shards: usize,
    /// This server process's epoch (SPEC.md §4.3): non-zero, unique per start.
    pub epoch: u32,
    /// Seed of the engine's random generators (from the OS in production, fixed in tests).
    pub seed: [u8; 32],
    /// The instance's PIN-tree secret ([`crate::pin_root`]). A server MUST set it from its
    /// master key, the same on every start and every server of the instance; the default
    /// (derived from `seed`) is for tests only.
    pub pin_tree_secret: [u8; 32],
    /// How long an enrollment stays usable.
    pub enrollment_ttl_ms: u64,
    /// How long an offline challenge stays usable.
    pub challenge_ttl_ms: u64,
    /// Most state-changing device requests (OPEN, CLOSE, CHANGE_PIN, transaction decisions)
    /// one token may make per second; further ones are dropped and counted
    /// ([`DropReason::RateLimited`](zoftoken_proto::DropReason::RateLimited)). 0: no limit.
    pub max_changes_per_s: u16,
    /// Other servers write the same database (PostgreSQL shared by an instance's servers):
    /// a CLOSE that finds the token already closed in this server's memory is written
    /// anyway, so that the database's compare-and-set, not memory that another server's OPEN
    /// may not have reached yet, confirms the token is closed before the reply says so.
    /// Default false (one server: memory is the truth).
    pub shared_database: bool,
}

impl EngineConfig {
    /// Defaults: 64 shards, 7-day enrollments, 10-minute challenges, 65 536 queued events.
    pub fn new(services: Vec<ServiceConfig>, epoch: u32, seed: [u8; 32]) -> EngineConfig {
        EngineConfig {
            services,
            authkeys: Vec::new(),
            shards: 64,
            epoch,
            seed,
            pin_tree_secret: blake3::derive_key("zoftoken engine test pin tree secret", &seed),
            enrollment_ttl_ms: 7 * 24 * 3600 * 1000,
            challenge_ttl_ms: 10 * 60 * 1000,
            max_changes_per_s: 0,
            shared_database: false,
        }
    }
}

/// Which events a service's webhook receives.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Target URL: `https://`, or `http://` to a loopback address (`localhost`, `127.0.0.0/8`,
    /// `[::1]`), or any `http://` URL when `allow_insecure_http` is set
    /// ([`check_webhook_url`]).
    pub url: String,
    /// The service's secret (signs deliveries). A secret written `whsec_<base64>` (the
    /// Standard Webhooks form) signs with the decoded bytes; any other string signs with its
    /// UTF-8 bytes.
    pub secret: String,
    /// Event names to deliver; empty means all.
    pub events: Vec<String>,
    /// A second valid secret during a rotation (the one being replaced): deliveries carry a
    /// signature with each secret until it is removed.
    pub previous_secret: Option<String>,
    /// PEM file of extra CA certificates trusted for this webhook's HTTPS endpoint (besides
    /// the system roots).
    pub ca_file: Option<String>,
    /// A plain value put in every body (`shared_token`) for receivers that can only compare a
    /// shared value. Never the signing secret (validation refuses one equal to either
    /// secret): anyone who reads one delivery learns it, so it is weaker than the signature.
    pub shared_token: Option<String>,
    /// Whether a plain `http://` URL to a non-loopback address is accepted (deliveries and
    /// their bodies then cross the network unencrypted). Default false.
    pub allow_insecure_http: bool,
}

impl WebhookConfig {
    /// A webhook to `url` signed with `secret`, every event, nothing else set.
    pub fn new(url: &str, secret: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.to_owned(),
            secret: secret.to_owned(),
            events: Vec::new(),
            previous_secret: None,
            ca_file: None,
            shared_token: None,
            allow_insecure_http: false,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("ca_file", &self.ca_file)
            .field(
                "shared_token",
                &self.shared_token.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish()
    }
}

/// Why a webhook URL is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookUrlError {
    /// Neither `https://` nor `http://`, or no host.
    #[error("must be an https:// URL with a host")]
    NotHttp,
    /// `http://` to an address that is not loopback, without `allow_insecure_http`.
    #[error(
        "http:// is refused except to a loopback address (use https://, or set \
         `allow_insecure_http: true` to send deliveries unencrypted)"
    )]
    InsecureHttp,
}

/// Checks a webhook URL: `https://` with a host; `http://` only to a loopback address
/// (`localhost`, an IPv4 address in `127.0.0.0/8`, `[::1]`) unless `allow_insecure_http`.
/// The host is judged as written (a name other than `localhost` is not resolved).
pub fn check_webhook_url(url: &str, allow_insecure_http: bool) -> Result<(), WebhookUrlError> {
    let (https, rest) = match (url.get(..8), url.get(..7)) {
        (Some(p), _) if p.eq_ignore_ascii_case("https://") => (true, url.get(8..)),
        (_, Some(p)) if p.eq_ignore_ascii_case("http://") => (false, url.get(7..)),
        _ => return Err(WebhookUrlError::NotHttp),
    };
    let rest = rest.unwrap_or("");
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Userinfo (`user:pass@`) is not part of the host.
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, _)) => h,
            None => return Err(WebhookUrlError::NotHttp),
        }
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if host.is_empty() || authority.chars().any(char::is_whitespace) {
        return Err(WebhookUrlError::NotHttp);
    }
    if https || allow_insecure_http || host_is_loopback(host) {
        Ok(())
    } else {
        Err(WebhookUrlError::InsecureHttp)
    }
}

fn host_is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// Whether a webhook secret is usable: not empty, and a `whsec_` secret must be base64.
pub fn webhook_secret_is_valid(secret: &str) -> bool {
    match secret.strip_prefix("whsec_") {
        Some(b64) => !b64.is_empty() && base64_ok(b64),
        None => !secret.is_empty(),
    }
}

/// Standard base64 with padding (the Standard Webhooks secret form), checked without decoding.
fn base64_ok(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() % 4 != 0 {
        return false;
    }
    let body = s.trim_end_matches('=');
    b.len() - body.len() <= 2
        && body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// One authkey as configured (compiled into [`crate::Authkeys`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthkeyConfig {
    /// A name for listings and logs (never the secret).
    pub name: String,
    /// BLAKE3 hash of the secret (see [`crate::authkeys::hash_secret`]); the secret itself is
    /// not kept.
    pub secret_hash: [u8; 32],
    /// Admin keys may do every operation; others only status, code validation and reading
    /// transactions.
    pub admin: bool,
    /// Regular expression the service name must match (anchored).
    pub service_mask: String,
    /// Regular expression the username must match (anchored).
    pub user_mask: String,
}

/// One service (`docs/product.md`, "Services").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Name, 1–255 bytes of UTF-8; part of the token id.
    pub name: String,
    /// Seconds a token stays open; 0 makes an open an instant event.
    pub window_s: u32,
    /// Whether users may set and use a duress PIN.
    pub duress_allowed: bool,
    /// URL of the details JSON for the app.
    pub details_url: Option<String>,
    /// `host:port` endpoints handed to apps, at least one.
    pub endpoints: Vec<String>,
    /// One-time-code parameters.
    pub otp: OtpParams,
    /// Webhook, if any.
    pub webhook: Option<WebhookConfig>,
}

impl ServiceConfig {
    /// A service with defaults: 10-minute window, duress allowed, 6-digit 30-second codes.
    pub fn new(name: &str, endpoints: &[&str]) -> ServiceConfig {
        ServiceConfig {
            name: name.to_owned(),
            window_s: 600,
            duress_allowed: true,
            details_url: None,
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
            otp: OtpParams {
                length: 6,
                period_s: 30,
                alphabet: Alphabet::Digits,
            },
            webhook: None,
        }
    }
}

/// A configuration error, with the path of the offending value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Where, e.g. `services[2].window_s`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Checks a name that people and masks handle (service names, usernames, authkey names): no
/// control characters. A name with a newline could be created but not managed: `.`, and so
/// the usual mask `.*`, does not match a newline.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.chars().any(char::is_control) {
        Err("must not contain control characters")
    } else {
        Ok(())
    }
}

/// Longest window: one day.
pub const MAX_WINDOW_S: u32 = 86_400;

/// Validates services; returns every error, not just the first.
pub fn validate_services(services: &[ServiceConfig]) -> Result<(), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut err = |path: String, message: &str| {
        errors.push(ConfigError {
            path,
            message: message.to_owned(),
        })
    };
    let mut names = std::collections::HashSet::new();
    for (i, s) in services.iter().enumerate() {
        let at = |field: &str| format!("services[{i}].{field}");
        if s.name.is_empty() || s.name.len() > SERVICE_NAME_MAX {
            err(at("name"), "must be 1 to 255 bytes");
        } else if let Err(m) = check_name(&s.name) {
            err(at("name"), m);
        } else if !names.insert(s.name.as_str()) {
            err(at("name"), "duplicate service name");
        }
        if s.window_s > MAX_WINDOW_S {
            err(at("window_s"), "must be at most 86400 seconds");
        }
        if s.endpoints.is_empty() || s.endpoints.len() > MAX_ENDPOINTS {
            err(at("endpoints"), "1 to 16 endpoints");
        }
        for (j, e) in s.endpoints.iter().enumerate() {
            if let Err(e) = check_endpoint(e) {
                err(format!("services[{i}].endpoints[{j}]"), &e.to_string());
            }
        }
        if let Err(e) = s.otp.validate() {
            err(at("otp"), &e.to_string());
        }
        if let Some(d) = &s.details_url {
            if !(d.starts_with("https://") || d.starts_with("http://")) {
                err(at("details_url"), "must be an http(s) URL");
            }
        }
        if let Some(w) = &s.webhook {
            if let Err(e) = check_webhook_url(&w.url, w.allow_insecure_http) {
                err(at("webhook.url"), &e.to_string());
            }
            if !webhook_secret_is_valid(&w.secret) {
                err(
                    at("webhook.secret"),
                    "must not be empty (and `whsec_` secrets must be base64)",
                );
            }
            if let Some(p) = &w.previous_secret {
                if !webhook_secret_is_valid(p) {
                    err(
                        at("webhook.previous_secret"),
                        "must not be empty (and `whsec_` secrets must be base64)",
                    );
                }
            }
            if w.ca_file.as_deref().is_some_and(str::is_empty) {
                err(at("webhook.ca_file"), "must not be empty");
            }
            if let Some(t) = &w.shared_token {
                if t.is_empty() {
                    err(at("webhook.shared_token"), "must not be empty");
                } else if *t == w.secret || w.previous_secret.as_ref() == Some(t) {
                    err(
                        at("webhook.shared_token"),
                        "must differ from the signing secrets (the body is not secret)",
                    );
                }
            }
            for (j, name) in w.events.iter().enumerate() {
                if crate::EventKind::from_name(name).is_none() {
                    err(
                        format!("services[{i}].webhook.events[{j}]"),
                        "unknown event name",
                    );
                }
            }
        }
    }
    if services.len() > usize::from(u16::MAX) {
        err("services".into(), "at most 65535 services");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_except_to_loopback_or_when_allowed() {
        for ok in [
            "https://hooks.example/z",
            "HTTPS://hooks.example",
            "https://10.0.0.1:8443/z?q",
            "http://127.0.0.1:9000/hook",
            "http://127.9.9.9/",
            "http://localhost:8080",
            "http://[::1]:8080/x",
            "http://user@127.0.0.1/x",
        ] {
            assert_eq!(check_webhook_url(ok, false), Ok(()), "{ok}");
        }
        for insecure in [
            "http://hooks.example/z",
            "http://10.0.0.1/",
            "http://[::2]:80/",
            "http://127.0.0.1.evil.example/",
            "http://localhost.evil.example/",
            "http://127.0.0.1@hooks.example/",
            "http://[::ffff:10.0.0.1]/",
        ] {
            assert_eq!(
                check_webhook_url(insecure, false),
                Err(WebhookUrlError::InsecureHttp),
                "{insecure}"
            );
            assert_eq!(check_webhook_url(insecure, true), Ok(()), "{insecure}");
        }
        for bad in [
            "ftp://x",
            "https://",
            "http:///x",
            "http://[::1/",
            "hooks.example",
        ] {
            assert_eq!(
                check_webhook_url(bad, true),
                Err(WebhookUrlError::NotHttp),
                "{bad}"
            );
        }
    }

    #[test]
    fn services_with_insecure_webhooks_or_a_shared_token_equal_to_a_secret_are_refused() {
        let mut s = ServiceConfig::new("bank", &["127.0.0.1:7878"]);
        s.webhook = Some(WebhookConfig::new("http://hooks.example/z", "s3cret"));
        let e = validate_services(std::slice::from_ref(&s)).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, "services[0].webhook.url");
        assert!(
            e[0].message.contains("allow_insecure_http"),
            "{}",
            e[0].message
        );
        if let Some(w) = &mut s.webhook {
            w.allow_insecure_http = true;
            w.previous_secret = Some("old".into());
            w.shared_token = Some("old".into());
        }
        let e = validate_services(std::slice::from_ref(&s)).unwrap_err();
        assert_eq!(e[0].path, "services[0].webhook.shared_token");
        if let Some(w) = &mut s.webhook {
            w.shared_token = Some("s3cret".into());
        }
        assert!(validate_services(std::slice::from_ref(&s)).is_err());
        if let Some(w) = &mut s.webhook {
            w.shared_token = Some("a plain value".into());
        }
        assert_eq!(validate_services(&[s]), Ok(()));
    }

    #[test]
    fn service_names_with_control_characters_are_refused() {
        for bad in ["bank\n", "a\rb", "\u{7f}x", "x\u{85}", "tab\there"] {
            let errors = validate_services(&[ServiceConfig::new(bad, &["a.example:7878"])])
                .err()
                .unwrap_or_default();
            assert_eq!(errors.len(), 1, "{bad:?}");
            assert_eq!(errors[0].path, "services[0].name");
        }
        assert!(
            validate_services(&[ServiceConfig::new("Bänk / ops", &["a.example:7878"])]).is_ok()
        );
    }
}
