//! The errors of the pipeline and its dead-letter functions, each with its typed cause as its
//! source, and [`error_text`], the one-line form (the message and its causes) that logs and
//! dead letters keep.

use zoftoken_storage::StoreError;

/// Errors of the webhook pipeline and its dead-letter functions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pipeline's threads or runtime could not start.
    #[error("cannot start the webhook pipeline")]
    Start(#[source] std::io::Error),
    /// A TLS setting (CA file) is unusable.
    #[error("TLS")]
    Tls(#[from] TlsError),
    /// The configuration is invalid.
    #[error("invalid webhook pipeline configuration")]
    Config(#[source] PipelineConfigError),
}

/// Why a service's TLS trust (the system roots and its CA file) could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The CA file could not be read (missing, not permitted, an IO error).
    #[error("CA file {path}")]
    CaFileUnreadable {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA file is not a regular file (a device, a FIFO, a directory).
    #[error("CA file {path}: not a regular file")]
    CaFileNotRegular {
        /// The file.
        path: String,
    },
    /// The CA file is larger than the limit.
    #[error("CA file {path}: larger than {max} bytes")]
    CaFileTooLarge {
        /// The file.
        path: String,
        /// The limit, in bytes.
        max: u64,
    },
    /// The CA file is not PEM.
    #[error("CA file {path}")]
    CaFilePem {
        /// The file.
        path: String,
        /// What is wrong with it.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The CA file holds no certificate.
    #[error("CA file {path}: no certificate found")]
    CaFileEmpty {
        /// The file.
        path: String,
    },
    /// A certificate of the CA file is refused.
    #[error("CA file {path}")]
    Certificate {
        /// The file.
        path: String,
        /// Why rustls refused it.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the client configuration.
    #[error(transparent)]
    Config(rustls::Error),
}

/// Why a [`crate::PipelineConfig`] is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineConfigError {
    /// `retry_delays` is empty or holds a zero delay.
    #[error("the retry delays need at least one entry, each longer than zero")]
    RetryDelays,
    /// `concurrency_per_endpoint` or `max_in_memory` is zero.
    #[error("concurrency and memory bound must be positive")]
    Bounds,
}

/// An error and its causes on one line (`message: cause: cause…`), as logs and dead letters
/// keep it.
pub(crate) fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_cause_once() {
        let e = WebhookError::from(TlsError::CaFileUnreadable {
            path: "/etc/ca.pem".into(),
            source: std::io::Error::other("denied"),
        });
        assert_eq!(error_text(&e), "TLS: CA file /etc/ca.pem: denied");
        let e = WebhookError::from(TlsError::CaFileEmpty {
            path: "/etc/ca.pem".into(),
        });
        assert_eq!(
            error_text(&e),
            "TLS: CA file /etc/ca.pem: no certificate found"
        );
        let e = WebhookError::Config(PipelineConfigError::Bounds);
        assert_eq!(
            error_text(&e),
            "invalid webhook pipeline configuration: concurrency and memory bound must be positive"
        );
    }
}
