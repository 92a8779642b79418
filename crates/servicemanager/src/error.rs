//! The errors of the Service Manager client and the one place that decides which of them are
//! worth retrying ([`SmError::class`]).
//!
//! Every variant says what went wrong in words a user can act on; none of them ever carries
//! the password (messages echoed by the server are scrubbed before they are stored).

use std::error::Error as StdError;

pub(crate) use scmb_oneview::diagnostics::{chain, find_rustls};

/// What a caller should do about an [`SmError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Try again later, after a backoff: SM is down, slow, overloaded or behind a proxy
    /// that failed; the same request may well succeed.
    Retryable,
    /// Service Manager and this client do not accept each other: wrong user or password (401),
    /// or the server's certificate is not trusted. Nothing changes until an operator fixes the
    /// settings, so pause (keep the work, stop hammering) instead of retrying or dropping it.
    Unauthorized,
    /// This request will never succeed as sent (validation, unknown incident, a malformed
    /// answer): give up on it, do not retry.
    Permanent,
}

/// Anything that goes wrong talking to Service Manager.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmError {
    /// Connection refused, DNS failure, connection reset, or no (complete) answer within the
    /// timeout ([`SmError::is_timeout`]).
    #[error("cannot reach Service Manager at {url}: {}", chain(source.as_ref()))]
    Unreachable {
        url: String,
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The TLS handshake failed; `detail` says why and what to change.
    #[error("TLS with Service Manager at {url} failed: {detail}")]
    Tls { url: String, detail: String },
    /// HTTP 401: Service Manager refused the user name or password.
    #[error(
        "Service Manager refused user {user:?} (HTTP 401){}: check the SM user name and password",
        messages_suffix(messages)
    )]
    Unauthorized { user: String, messages: Vec<String> },
    /// A 4xx answer other than 401 (validation, unknown incident, ...), with SM's error body.
    #[error("{}", answer_display("Service Manager rejected", request, *status, *return_code, messages))]
    Rejected {
        /// The request, e.g. `POST /SM/9/rest/incidents`.
        request: String,
        status: u16,
        return_code: Option<i64>,
        messages: Vec<String>,
    },
    /// A 5xx answer with SM's error body.
    #[error("{}", answer_display("Service Manager failed", request, *status, *return_code, messages))]
    Server {
        request: String,
        status: u16,
        return_code: Option<i64>,
        messages: Vec<String>,
    },
    /// Not what the API promises: an HTML page from a proxy, an empty body, not JSON, a
    /// nonzero `ReturnCode` on a 2xx answer, an incident without an `IncidentID`.
    #[error("{}", bad_display(request, problem, *status, content_type.as_deref(), snippet))]
    BadResponse {
        request: String,
        /// What is wrong with the answer ("not JSON", "no IncidentID", ...).
        problem: String,
        status: u16,
        content_type: Option<String>,
        /// At most 200 characters of the body (HTML reduced to its text).
        snippet: String,
    },
    /// The request itself is unusable (an empty incident id, ...).
    #[error("invalid Service Manager request: {0}")]
    Invalid(String),
    /// The settings cannot work (bad URL, HTTPS without a CA, ...).
    #[error("invalid Service Manager settings: {0}")]
    Config(String),
}

/// The class of an HTTP status, the single retry rule: 408, 429 and 5xx except 501 are
/// retryable, 401 needs an operator, everything else is permanent.
pub fn status_class(status: u16) -> ErrorClass {
    match status {
        401 => ErrorClass::Unauthorized,
        408 | 429 => ErrorClass::Retryable,
        501 => ErrorClass::Permanent,
        500..=599 => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    }
}

impl SmError {
    /// What to do about this error (see [`ErrorClass`]): unreachable and timeouts, 408, 429
    /// and 5xx except 501 (also as an HTML page from a proxy) are retryable; 401 and TLS
    /// trust failures need an operator; other 4xx, 501, malformed answers, bad requests and
    /// bad settings are permanent.
    pub fn class(&self) -> ErrorClass {
        match self {
            SmError::Unreachable { .. } => ErrorClass::Retryable,
            SmError::Tls { .. } | SmError::Unauthorized { .. } => ErrorClass::Unauthorized,
            SmError::Rejected { status, .. }
            | SmError::Server { status, .. }
            | SmError::BadResponse { status, .. } => status_class(*status),
            SmError::Invalid(_) | SmError::Config(_) => ErrorClass::Permanent,
        }
    }

    /// `self.class() == ErrorClass::Retryable`.
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// The HTTP status of an answer that carried one.
    pub fn status(&self) -> Option<u16> {
        match self {
            SmError::Unauthorized { .. } => Some(401),
            SmError::Rejected { status, .. }
            | SmError::Server { status, .. }
            | SmError::BadResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// SM's `ReturnCode`, when the answer carried one.
    pub fn return_code(&self) -> Option<i64> {
        match self {
            SmError::Rejected { return_code, .. } | SmError::Server { return_code, .. } => {
                *return_code
            }
            _ => None,
        }
    }

    /// SM's `Messages` (empty when there were none).
    pub fn messages(&self) -> &[String] {
        match self {
            SmError::Unauthorized { messages, .. }
            | SmError::Rejected { messages, .. }
            | SmError::Server { messages, .. } => messages,
            _ => &[],
        }
    }

    /// Whether a request that changes something (a create) may have been carried out although
    /// this error came back, so that its outcome is unknown: the request was sent and no
    /// usable answer came (a timeout, a connection lost after sending, a 2xx answer we cannot
    /// read, 500, 502 or 504). Sending it again may do it twice: look the result up first.
    /// False when the request surely changed nothing (it was never sent, or was refused).
    pub fn may_have_acted(&self) -> bool {
        match self {
            SmError::Unreachable { source, .. } => !source
                .downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_connect),
            SmError::Server { status, .. } => matches!(status, 500 | 502 | 504),
            SmError::BadResponse { status, .. } => {
                (200..300).contains(status) || matches!(status, 500 | 502 | 504)
            }
            SmError::Tls { .. }
            | SmError::Unauthorized { .. }
            | SmError::Rejected { .. }
            | SmError::Invalid(_)
            | SmError::Config(_) => false,
        }
    }

    /// No complete answer arrived within the configured timeout.
    pub fn is_timeout(&self) -> bool {
        match self {
            SmError::Unreachable { source, .. } => source
                .downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_timeout),
            _ => false,
        }
    }
}

fn messages_suffix(messages: &[String]) -> String {
    let m: Vec<&str> = messages
        .iter()
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
        .collect();
    if m.is_empty() {
        String::new()
    } else {
        format!(": {}", m.join("; "))
    }
}

fn answer_display(
    what: &str,
    request: &str,
    status: u16,
    code: Option<i64>,
    messages: &[String],
) -> String {
    let code = code
        .map(|c| format!(", ReturnCode {c}"))
        .unwrap_or_default();
    format!(
        "{what} {request} (HTTP {status}{code}){}",
        messages_suffix(messages)
    )
}

fn bad_display(
    request: &str,
    problem: &str,
    status: u16,
    content_type: Option<&str>,
    snippet: &str,
) -> String {
    let ct = content_type.unwrap_or("no content type");
    if snippet.is_empty() {
        format!("unexpected answer from Service Manager to {request}: {problem} (HTTP {status}, {ct}, empty body)")
    } else {
        format!("unexpected answer from Service Manager to {request}: {problem} (HTTP {status}, {ct}): {snippet}")
    }
}

/// A failed handshake in words that say what to change.
pub(crate) fn tls_detail(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
            "the server certificate is not signed by the configured CA ({e}); configure the CA \
             that signed Service Manager's certificate"
        ),
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            format!(
                "the server certificate does not carry the host name of the configured URL ({e}); \
                 use the name the certificate carries, or skip the name check"
            )
        }
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => {
            format!("the server certificate is outside its validity period ({e}); check the clocks")
        }
        rustls::Error::InvalidMessage(_) => format!(
            "the server does not speak TLS here ({e}); is the URL http:// rather than https://?"
        ),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> [SmError; 3] {
        [
            SmError::Rejected {
                request: "GET /x".into(),
                status,
                return_code: Some(71),
                messages: vec![],
            },
            SmError::Server {
                request: "GET /x".into(),
                status,
                return_code: None,
                messages: vec![],
            },
            SmError::BadResponse {
                request: "GET /x".into(),
                problem: "not JSON".into(),
                status,
                content_type: Some("text/html".into()),
                snippet: String::new(),
            },
        ]
    }

    #[test]
    fn retry_classes_follow_the_status_table() {
        for (status, class) in [
            (400, ErrorClass::Permanent),
            (403, ErrorClass::Permanent),
            (404, ErrorClass::Permanent),
            (408, ErrorClass::Retryable),
            (409, ErrorClass::Permanent),
            (429, ErrorClass::Retryable),
            (500, ErrorClass::Retryable),
            (501, ErrorClass::Permanent),
            (502, ErrorClass::Retryable),
            (503, ErrorClass::Retryable),
            (504, ErrorClass::Retryable),
            (200, ErrorClass::Permanent),
        ] {
            for e in answer(status) {
                assert_eq!(e.class(), class, "{e}");
            }
        }
        let e = SmError::Unauthorized {
            user: "falcon".into(),
            messages: vec!["Not Authorized".into()],
        };
        assert_eq!(e.class(), ErrorClass::Unauthorized);
        assert_eq!(e.status(), Some(401));
        let e = SmError::Tls {
            url: "https://sm".into(),
            detail: "x".into(),
        };
        assert_eq!(e.class(), ErrorClass::Unauthorized);
        let e = SmError::Unreachable {
            url: "http://sm".into(),
            source: "connection refused".into(),
        };
        assert_eq!(e.class(), ErrorClass::Retryable);
        assert!(!e.is_timeout());
        assert_eq!(SmError::Config("x".into()).class(), ErrorClass::Permanent);
        assert_eq!(SmError::Invalid("x".into()).class(), ErrorClass::Permanent);
    }

    #[test]
    fn a_create_may_have_happened_after_a_2xx_we_cannot_read_or_a_gateway_failure_only() {
        for (status, acted) in [
            (400, false),
            (404, false),
            (408, false),
            (429, false),
            (500, true),
            (501, false),
            (502, true),
            (503, false),
            (504, true),
        ] {
            let [rejected, server, bad] = answer(status);
            assert!(!rejected.may_have_acted(), "{rejected}");
            assert_eq!(server.may_have_acted(), acted, "{server}");
            assert_eq!(bad.may_have_acted(), acted, "{bad}");
        }
        let [_, _, unreadable] = answer(201);
        assert!(unreadable.may_have_acted(), "a 201 we cannot read");
        // Not a reqwest connect error: no proof it was never sent.
        let e = SmError::Unreachable {
            url: "http://sm".into(),
            source: "connection reset".into(),
        };
        assert!(e.may_have_acted());
        assert!(!SmError::Invalid("x".into()).may_have_acted());
    }

    #[test]
    fn errors_show_request_status_return_code_and_messages() {
        let e = SmError::Rejected {
            request: "POST /SM/9/rest/incidents".into(),
            status: 400,
            return_code: Some(71),
            messages: vec!["Validation failed: Title is a required field".into()],
        };
        assert_eq!(
            e.to_string(),
            "Service Manager rejected POST /SM/9/rest/incidents (HTTP 400, ReturnCode 71): \
             Validation failed: Title is a required field"
        );
        assert_eq!(e.return_code(), Some(71));
        assert_eq!(e.messages().len(), 1);
        let e = SmError::Unauthorized {
            user: "falcon".into(),
            messages: vec![],
        };
        assert_eq!(
            e.to_string(),
            "Service Manager refused user \"falcon\" (HTTP 401): check the SM user name and password"
        );
    }
}
