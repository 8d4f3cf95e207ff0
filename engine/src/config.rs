//! Services as the engine sees them, loaded from a configuration structure (the storage issue
//! adds files and the database). Every value is validated with the path of what is wrong.

use zoftoken_proto::codes::OtpParams;
use zoftoken_proto::deeplink::{check_endpoint, MAX_ENDPOINTS, SERVICE_NAME_MAX};
use zoftoken_proto::wire::Alphabet;

/// Which events a service's webhook receives.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Target URL (http or https).
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
            .finish()
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

/// One service (PRODUCT.md "Services").
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
            if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
                err(at("webhook.url"), "must be an http(s) URL");
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
