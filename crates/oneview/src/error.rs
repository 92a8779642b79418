//! The errors of the OneView client, each with a message a user can act on: appliance errors
//! (SPEC §1.1 error bodies) with their recommended actions, TLS failures with a hint on which
//! option to change, answers that are not what the API promises (HTML pages, empty bodies).

use std::error::Error as StdError;

use scmb_tls::{NameCheck, ServerTrust};

/// Anything that goes wrong talking to an appliance.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OneViewError {
    /// Connection refused, DNS failure, timeout, connection reset.
    #[error("cannot reach {host}: {}", chain(source.as_ref()))]
    Unreachable {
        host: String,
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The TLS handshake failed; `detail` says why and what to change.
    #[error("TLS with {host} failed: {detail}")]
    Tls { host: String, detail: String },
    /// An error answer of the appliance (SPEC §1.1 error body).
    #[error("{}", api_display(message, error_code, *status, recommended_actions))]
    Api {
        status: u16,
        error_code: String,
        message: String,
        recommended_actions: Vec<String>,
    },
    /// The appliance refused the user name, password or login domain.
    #[error(
        "login as {user:?} refused: {message} (check the user name, password and login domain)"
    )]
    AuthFailed { user: String, message: String },
    /// The session was refused (401) again right after a fresh login.
    #[error("the appliance keeps refusing the session (HTTP 401) even right after a new login")]
    SessionExpired,
    /// The appliance no longer speaks any API version this client knows.
    #[error(
        "the appliance requires API version {minimum} or later (it offers up to {current}), \
         but this client knows versions up to {max_known} only: use a newer scmb"
    )]
    UnsupportedVersion {
        current: u32,
        minimum: u32,
        max_known: u32,
    },
    /// Not what the API promises: not JSON (an HTML page), empty, or JSON of the wrong shape.
    #[error("{}", bad_display(request, problem, *status, content_type.as_deref(), snippet))]
    BadResponse {
        /// The request, e.g. `GET /rest/version`.
        request: String,
        /// What is wrong with the answer ("not JSON", "no currentVersion", ...).
        problem: String,
        status: u16,
        content_type: Option<String>,
        /// At most 200 characters of the body (HTML reduced to its text, private keys withheld).
        snippet: String,
    },
    /// A task ended in Error, Terminated, Killed, Interrupted or Unknown.
    #[error("task {uri} ended in state {state}{}", task_errors(errors))]
    TaskFailed {
        uri: String,
        state: String,
        errors: Vec<String>,
    },
    /// A task was still running when the caller's timeout ran out.
    #[error("task {uri} did not finish in time")]
    TaskTimeout { uri: String },
    /// The settings cannot work (bad host, bad TLS settings).
    #[error("invalid OneView settings: {0}")]
    Config(String),
}

impl OneViewError {
    /// The HTTP status of an answer that carried one.
    pub fn status(&self) -> Option<u16> {
        match self {
            OneViewError::Api { status, .. } | OneViewError::BadResponse { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The appliance's `errorCode`, for [`OneViewError::Api`].
    pub fn error_code(&self) -> Option<&str> {
        match self {
            OneViewError::Api { error_code, .. } => Some(error_code),
            _ => None,
        }
    }

    /// Worth retrying later: the appliance is unreachable, starting (503) or overloaded.
    pub fn is_transient(&self) -> bool {
        match self {
            OneViewError::Unreachable { .. } => true,
            OneViewError::Api { status, .. } | OneViewError::BadResponse { status, .. } => {
                matches!(status, 502..=504)
            }
            _ => false,
        }
    }

    /// The appliance refused the `X-API-Version` (412, or 400 on some appliances).
    pub fn is_version_rejected(&self) -> bool {
        match self {
            OneViewError::Api {
                status, error_code, ..
            } => {
                (*status == 412 || *status == 400)
                    && error_code.to_ascii_uppercase().contains("API_VERSION")
            }
            _ => false,
        }
    }
}

fn api_display(message: &str, code: &str, status: u16, actions: &[String]) -> String {
    let mut s = if message.is_empty() {
        format!("the appliance answered HTTP {status}")
    } else {
        message.to_string()
    };
    if code.is_empty() {
        s.push_str(&format!(" (HTTP {status})"));
    } else {
        s.push_str(&format!(" ({code}, HTTP {status})"));
    }
    let actions: Vec<&str> = actions
        .iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .collect();
    if !actions.is_empty() {
        s.push_str(" — ");
        s.push_str(&actions.join(" "));
    }
    s
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
        format!("unexpected answer to {request}: {problem} (HTTP {status}, {ct}, empty body)")
    } else {
        format!("unexpected answer to {request}: {problem} (HTTP {status}, {ct}): {snippet}")
    }
}

fn task_errors(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(": {}", errors.join("; "))
    }
}

/// The causes of an error, joined by `: ` (reqwest's own top line, "error sending request
/// for url", is skipped when there is something more telling below it).
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    // reqwest's and hyper's own wrappers say nothing the cause below them does not.
    if parts.len() > 1 {
        parts.retain(|p| {
            !(p.starts_with("error sending request") || p.starts_with("client error ("))
        });
    }
    let mut out = if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    };
    if let Some(re) = e.downcast_ref::<reqwest::Error>() {
        if re.is_timeout() {
            out.push_str(" (no answer within the request timeout)");
        }
    }
    out
}

/// The rustls error somewhere in the causes of `e` (tokio-rustls wraps it in an `io::Error`,
/// whose `source()` skips it, hence the look inside).
pub fn find_rustls<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    None
}

/// Whether the server answered the TLS hello in plain text (an HTTP port, say).
pub(crate) fn plain_text(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
    )
}

pub(crate) fn plain_text_detail(host: &str) -> String {
    format!(
        "{host} answered in plain text, not TLS (is this an HTTP port?): give the appliance's \
         HTTPS port, -a HOST or HOST:PORT (443 by default)"
    )
}

/// Turns a failed handshake into a message that says what to change.
pub(crate) fn tls_detail(
    e: &rustls::Error,
    trust: &ServerTrust,
    names: &NameCheck,
    host: &str,
) -> String {
    use rustls::CertificateError as C;
    let checked = match names {
        NameCheck::Name(n) => n.as_str(),
        _ => host,
    };
    match (e, trust) {
        (rustls::Error::General(msg), ServerTrust::Pinned(_)) => format!(
            "!!! THE APPLIANCE'S CERTIFICATE HAS CHANGED: {msg}. Either its certificates were \
             regenerated or someone is intercepting the connection. Verify the new fingerprint \
             out of band (on the appliance's console) before pinning it again."
        ),
        (rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }), _) => {
            format!(
                "the server certificate is signed by the trusted CA but does not carry the name \
                 {checked:?} ({e}); use --tls-server-name NAME with a name the certificate \
                 carries, or --no-verify-hostname to check the CA chain only"
            )
        }
        (rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature), _) => format!(
            "the server certificate is not signed by the configured appliance CA ({e}); the \
             appliance's certificates may have been regenerated (fetch its CA again), or this is \
             not the appliance you meant"
        ),
        (
            rustls::Error::InvalidCertificate(
                C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
            ),
            _,
        ) => format!("the server certificate is outside its validity period ({e}); check the clocks of both machines"),
        (rustls::Error::AlertReceived(_), _) => {
            format!("the appliance refused the TLS handshake ({e})")
        }
        _ if plain_text(e) => plain_text_detail(host),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_show_message_code_status_and_actions() {
        let e = OneViewError::Api {
            status: 404,
            error_code: "RESOURCE_NOT_FOUND".into(),
            message: "The resource could not be found.".into(),
            recommended_actions: vec!["Verify the URI.".into(), "Try again.".into()],
        };
        assert_eq!(
            e.to_string(),
            "The resource could not be found. (RESOURCE_NOT_FOUND, HTTP 404) — Verify the URI. Try again."
        );
        let e = OneViewError::Api {
            status: 500,
            error_code: String::new(),
            message: String::new(),
            recommended_actions: vec![],
        };
        assert_eq!(e.to_string(), "the appliance answered HTTP 500 (HTTP 500)");
        assert!(e.is_transient() || e.status() == Some(500));
    }

    #[test]
    fn version_rejections_are_recognised_as_412_or_400() {
        for status in [412, 400] {
            let e = OneViewError::Api {
                status,
                error_code: "INVALID_API_VERSION".into(),
                message: String::new(),
                recommended_actions: vec![],
            };
            assert!(e.is_version_rejected());
        }
    }

    #[test]
    fn transient_errors_are_503_and_unreachable() {
        let e = OneViewError::BadResponse {
            request: "GET /rest/alerts".into(),
            problem: "not JSON".into(),
            status: 503,
            content_type: Some("text/html".into()),
            snippet: "Service Unavailable".into(),
        };
        assert!(e.is_transient());
        assert_eq!(
            e.to_string(),
            "unexpected answer to GET /rest/alerts: not JSON (HTTP 503, text/html): Service Unavailable"
        );
        assert!(!OneViewError::SessionExpired.is_transient());
    }
}
