//! Services and authkeys as written in `config.yaml`, kept in the database, and printed by the
//! command line: one serde form for all three, validated with the path of every error
//! (`services[2].window: …`).

use serde::{Deserialize, Serialize};
use zoftoken_engine::authkeys::hash_secret;
use zoftoken_engine::config::ConfigError;
use zoftoken_engine::{AuthkeyConfig, ServiceConfig, WebhookConfig};
use zoftoken_proto::codes::OtpParams;
use zoftoken_proto::wire::Alphabet;

/// One-time-code parameters of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtpDoc {
    /// Symbols per code (4–32).
    #[serde(default = "default_otp_length")]
    pub length: u8,
    /// Seconds per step (1–3600).
    #[serde(default = "default_otp_period")]
    pub period: u16,
    /// `digits` or `base32`.
    #[serde(default = "default_alphabet")]
    pub alphabet: String,
}

fn default_otp_length() -> u8 {
    6
}
fn default_otp_period() -> u16 {
    30
}
fn default_alphabet() -> String {
    "digits".into()
}
fn default_window() -> u32 {
    600
}
fn default_true() -> bool {
    true
}
fn default_mask() -> String {
    ".*".into()
}

impl Default for OtpDoc {
    fn default() -> Self {
        OtpDoc {
            length: default_otp_length(),
            period: default_otp_period(),
            alphabet: default_alphabet(),
        }
    }
}

/// A service's webhook.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDoc {
    /// Target URL: https, or http to a loopback address (any http with
    /// `allow_insecure_http`).
    pub url: String,
    /// The secret that signs deliveries.
    pub secret: String,
    /// Event names to deliver; empty or absent: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// The secret being rotated out: deliveries are signed with both until it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    /// PEM file of extra CA certificates for the endpoint (besides the system roots).
    /// `config.yaml` and the command line only: the HTTP API refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// A plain value put in every body for receivers that only compare a shared value (not
    /// a signing secret; weaker than the signature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_token: Option<String>,
    /// Accept an `http://` URL to a non-loopback address. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_http: bool,
}

/// What every output shows instead of a secret.
pub const REDACTED: &str = "<redacted>";

impl WebhookDoc {
    /// The same webhook with every secret value (`secret`, `previous_secret`, `shared_token`)
    /// replaced by [`REDACTED`]: the form every listing, API answer and check prints.
    pub fn redacted(&self) -> WebhookDoc {
        WebhookDoc {
            secret: REDACTED.into(),
            previous_secret: self.previous_secret.as_ref().map(|_| REDACTED.into()),
            shared_token: self.shared_token.as_ref().map(|_| REDACTED.into()),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for WebhookDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDoc")
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

/// A service (`docs/product.md`, "Services").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDoc {
    /// Name, 1–255 bytes.
    pub name: String,
    /// Seconds a token stays open (0: an open is an instant event). Default 600.
    #[serde(default = "default_window")]
    pub window: u32,
    /// Whether users may set and use a duress PIN. Default true.
    #[serde(default = "default_true")]
    pub duress_allowed: bool,
    /// URL of the details JSON for the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details_url: Option<String>,
    /// `host:port` endpoints handed to apps (at least one).
    pub endpoints: Vec<String>,
    /// One-time-code parameters.
    #[serde(default)]
    pub otp: OtpDoc,
    /// The webhook, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookDoc>,
    /// The details JSON object the app shows (logo as base64 PNG, display texts), served by
    /// the HTTP API at `/v1/services/{name}/details` for installations that point
    /// `details_url` there. Not part of the engine's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ServiceDoc {
    /// The same service with its webhook's secrets redacted ([`WebhookDoc::redacted`]).
    pub fn redacted(&self) -> ServiceDoc {
        ServiceDoc {
            webhook: self.webhook.as_ref().map(WebhookDoc::redacted),
            ..self.clone()
        }
    }

    /// The engine's form, with the conversion errors (the form is complete either way, so
    /// that later checks report paths at the right index).
    fn convert(&self, at: &str) -> (ServiceConfig, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let alphabet = match self.otp.alphabet.as_str() {
            "digits" => Alphabet::Digits,
            "base32" => Alphabet::Base32,
            _ => {
                errors.push(ConfigError {
                    path: format!("{at}.otp.alphabet"),
                    message: "must be `digits` or `base32`".into(),
                });
                Alphabet::Digits
            }
        };
        let config = ServiceConfig {
            name: self.name.clone(),
            window_s: self.window,
            duress_allowed: self.duress_allowed,
            details_url: self.details_url.clone(),
            endpoints: self.endpoints.clone(),
            otp: OtpParams {
                length: self.otp.length,
                period_s: self.otp.period,
                alphabet,
            },
            webhook: self.webhook.as_ref().map(|w| WebhookConfig {
                url: w.url.clone(),
                secret: w.secret.clone(),
                events: w.events.clone(),
                previous_secret: w.previous_secret.clone(),
                ca_file: w.ca_file.clone(),
                shared_token: w.shared_token.clone(),
                allow_insecure_http: w.allow_insecure_http,
            }),
        };
        (config, errors)
    }

    /// The document form of an engine service.
    pub fn from_config(c: &ServiceConfig) -> ServiceDoc {
        ServiceDoc {
            name: c.name.clone(),
            window: c.window_s,
            duress_allowed: c.duress_allowed,
            details_url: c.details_url.clone(),
            endpoints: c.endpoints.clone(),
            otp: OtpDoc {
                length: c.otp.length,
                period: c.otp.period_s,
                alphabet: match c.otp.alphabet {
                    Alphabet::Digits => "digits".into(),
                    Alphabet::Base32 => "base32".into(),
                },
            },
            webhook: c.webhook.as_ref().map(|w| WebhookDoc {
                url: w.url.clone(),
                secret: w.secret.clone(),
                events: w.events.clone(),
                previous_secret: w.previous_secret.clone(),
                ca_file: w.ca_file.clone(),
                shared_token: w.shared_token.clone(),
                allow_insecure_http: w.allow_insecure_http,
            }),
            details: None,
        }
    }
}

/// Converts and validates services; every error with its path (`services[i].field`).
pub fn services_to_config(docs: &[ServiceDoc]) -> Result<Vec<ServiceConfig>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let (c, e) = d.convert(&format!("services[{i}]"));
        out.push(c);
        errors.extend(e);
    }
    if let Err(e) = zoftoken_engine::config::validate_services(&out) {
        // The engine names fields as it stores them; report them as they are written here.
        errors.extend(e.into_iter().map(|mut e| {
            e.path = e.path.replace(".window_s", ".window");
            e
        }));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        errors.sort_by(|a, b| a.path.cmp(&b.path));
        Err(errors)
    }
}

/// An authkey (`docs/product.md`, "Authkeys"). In `config.yaml` either `secret` (hashed at load) or
/// `secret_hash` is given; the database and every listing keep the hash only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthkeyDoc {
    /// A name for listings and logs.
    pub name: String,
    /// The secret itself (config files only; never stored or printed).
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// BLAKE3 hash of the secret, 64 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    /// Admin keys may do every operation.
    #[serde(default)]
    pub admin: bool,
    /// Regular expression for service names (anchored). Default `.*`.
    #[serde(default = "default_mask")]
    pub service_mask: String,
    /// Regular expression for usernames (anchored). Default `.*`.
    #[serde(default = "default_mask")]
    pub user_mask: String,
}

impl std::fmt::Debug for AuthkeyDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthkeyDoc")
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_hash", &self.secret_hash)
            .field("admin", &self.admin)
            .field("service_mask", &self.service_mask)
            .field("user_mask", &self.user_mask)
            .finish()
    }
}

impl AuthkeyDoc {
    /// The stored form of a new key: the hash of `secret`, never the secret.
    pub fn new(name: &str, secret: &str, admin: bool, service_mask: &str, user_mask: &str) -> Self {
        AuthkeyDoc {
            name: name.to_owned(),
            secret: None,
            secret_hash: Some(hex::encode(hash_secret(secret))),
            admin,
            service_mask: service_mask.to_owned(),
            user_mask: user_mask.to_owned(),
        }
    }
}

/// Converts and validates authkeys; every error with its path (`authkeys[i].field`).
pub fn authkeys_to_config(docs: &[AuthkeyDoc]) -> Result<Vec<AuthkeyConfig>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, d) in docs.iter().enumerate() {
        let err = |field: &str, message: &str| ConfigError {
            path: format!("authkeys[{i}].{field}"),
            message: message.to_owned(),
        };
        if d.name.is_empty() {
            errors.push(err("name", "must not be empty"));
        } else if !names.insert(d.name.as_str()) {
            errors.push(err("name", "duplicate authkey name"));
        }
        // A placeholder hash keeps indexes aligned with the engine's own checks below.
        let hash = match (&d.secret, &d.secret_hash) {
            (Some(_), Some(_)) => {
                errors.push(err("secret", "give `secret` or `secret_hash`, not both"));
                [0u8; 32]
            }
            (None, None) => {
                errors.push(err("secret_hash", "missing (or give `secret`)"));
                [0u8; 32]
            }
            (Some(s), None) if s.is_empty() => {
                errors.push(err("secret", "must not be empty"));
                [0u8; 32]
            }
            (Some(s), None) => hash_secret(s),
            (None, Some(h)) => {
                let mut b = [0u8; 32];
                if hex::decode_to_slice(h, &mut b).is_err() {
                    errors.push(err("secret_hash", "must be 64 hexadecimal digits"));
                }
                b
            }
        };
        out.push(AuthkeyConfig {
            name: d.name.clone(),
            secret_hash: hash,
            admin: d.admin,
            service_mask: d.service_mask.clone(),
            user_mask: d.user_mask.clone(),
        });
    }
    if let Err(e) = zoftoken_engine::Authkeys::new(&out) {
        errors.extend(e);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        errors.sort_by(|a, b| a.path.cmp(&b.path));
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn doc(webhook: &str) -> ServiceDoc {
        serde_json::from_str(&format!(
            r#"{{"name":"bank","endpoints":["127.0.0.1:7878"],"webhook":{webhook}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn webhooks_written_before_rotation_and_ca_files_still_parse() {
        let d = doc(r#"{"url":"https://h.example/z","secret":"s"}"#);
        let w = d.webhook.as_ref().unwrap();
        assert_eq!(
            (w.previous_secret.as_deref(), w.ca_file.as_deref()),
            (None, None)
        );
        let json = serde_json::to_string(&d).unwrap();
        assert!(!json.contains("previous_secret") && !json.contains("ca_file"));
        let c = services_to_config(&[d]).unwrap();
        assert_eq!(c[0].webhook.as_ref().unwrap().secret, "s");
    }

    #[test]
    fn rotation_and_ca_file_round_trip_and_are_validated() {
        let d = doc(
            r#"{"url":"https://h.example/z","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "previous_secret":"old","ca_file":"/etc/ca.pem"}"#,
        );
        let c = services_to_config(std::slice::from_ref(&d)).unwrap();
        let w = c[0].webhook.as_ref().unwrap();
        assert_eq!(w.previous_secret.as_deref(), Some("old"));
        assert_eq!(w.ca_file.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(ServiceDoc::from_config(&c[0]), d);
        assert!(!format!("{d:?}").contains("old") && !format!("{w:?}").contains("old"));
        let bad = doc(
            r#"{"url":"https://h.example/z","secret":"whsec_not base64!","previous_secret":""}"#,
        );
        let paths: Vec<String> = services_to_config(&[bad])
            .unwrap_err()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "services[0].webhook.previous_secret",
                "services[0].webhook.secret"
            ]
        );
    }
}
