//! [`ServiceChanges`]: a service edited field by field (the command line's form), applied to
//! a document under the same rules as a whole one.

use zoftoken_storage::{ServiceDoc, WebhookDoc};

use crate::error::AdminError;

/// Changes to a service; `None` keeps the current value.
#[derive(Debug, Default, Clone)]
pub struct ServiceChanges {
    /// Window in seconds.
    pub window: Option<u32>,
    /// Endpoints (replaces the list).
    pub endpoints: Option<Vec<String>>,
    /// Duress allowed.
    pub duress_allowed: Option<bool>,
    /// Details URL (empty string removes it).
    pub details_url: Option<String>,
    /// Code length.
    pub otp_length: Option<u8>,
    /// Code period.
    pub otp_period: Option<u16>,
    /// Code alphabet.
    pub otp_alphabet: Option<String>,
    /// Webhook URL (empty string removes the webhook).
    pub webhook_url: Option<String>,
    /// Webhook secret (`<redacted>` keeps the stored one).
    pub webhook_secret: Option<String>,
    /// Webhook events (replaces the list).
    pub webhook_events: Option<Vec<String>>,
    /// Accept an `http://` webhook URL to a non-loopback address.
    pub webhook_allow_insecure_http: Option<bool>,
    /// A PEM file of extra CA certificates for the webhook's endpoint (empty string removes
    /// it). Refused from remote callers, as in a whole document.
    pub webhook_ca_file: Option<String>,
}

impl ServiceChanges {
    /// A new service's document before any change: every default, no endpoint yet.
    pub(crate) fn defaults(name: &str) -> Result<ServiceDoc, AdminError> {
        serde_json::from_value(serde_json::json!({ "name": name, "endpoints": [] })).map_err(|e| {
            AdminError::InvalidService(crate::ConfigProblems(vec![
                zoftoken_engine::config::ConfigError {
                    path: "service".into(),
                    message: e.to_string(),
                },
            ]))
        })
    }

    /// Applies the changes to `d`. A new webhook needs its URL and secret; webhook settings
    /// need a webhook.
    pub(crate) fn apply(self, d: &mut ServiceDoc) -> Result<(), AdminError> {
        if let Some(v) = self.window {
            d.window = v;
        }
        if let Some(v) = self.endpoints {
            d.endpoints = v;
        }
        if let Some(v) = self.duress_allowed {
            d.duress_allowed = v;
        }
        if let Some(v) = self.details_url {
            d.details_url = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = self.otp_length {
            d.otp.length = v;
        }
        if let Some(v) = self.otp_period {
            d.otp.period = v;
        }
        if let Some(v) = self.otp_alphabet {
            d.otp.alphabet = v;
        }
        match (self.webhook_url, &mut d.webhook) {
            (Some(url), _) if url.is_empty() => d.webhook = None,
            (Some(url), Some(w)) => w.url = url,
            (Some(url), None) => {
                d.webhook = Some(WebhookDoc {
                    url,
                    secret: self
                        .webhook_secret
                        .clone()
                        .ok_or(AdminError::WebhookNeedsSecret)?,
                    events: Vec::new(),
                    previous_secret: None,
                    ca_file: None,
                    shared_token: None,
                    allow_insecure_http: false,
                })
            }
            (None, _) => {}
        }
        if let Some(w) = &mut d.webhook {
            if let Some(s) = self.webhook_secret {
                w.secret = s;
            }
            if let Some(e) = self.webhook_events {
                w.events = e;
            }
            if let Some(a) = self.webhook_allow_insecure_http {
                w.allow_insecure_http = a;
            }
            if let Some(c) = self.webhook_ca_file {
                w.ca_file = (!c.is_empty()).then_some(c);
            }
        } else if self.webhook_secret.is_some()
            || self.webhook_events.is_some()
            || self.webhook_allow_insecure_http.is_some()
            || self.webhook_ca_file.is_some()
        {
            return Err(AdminError::NoWebhook);
        }
        Ok(())
    }
}
