//! Secrets that must never leak: a password (or session id) wrapper whose `Debug` and `Display`
//! print `***`, and the login credentials built on it.

use std::fmt;

/// A secret string (a password, a session id). `Debug` and `Display` print `***`; the value is
/// only reachable through [`Secret::expose`], so it cannot end up in a log line by accident.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Who logs in: `POST /rest/login-sessions`. `Debug` shows the user and domain, never the
/// password.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub user: String,
    pub password: Secret,
    /// `authLoginDomain` (e.g. `LOCAL` or a directory); not sent when `None`.
    pub domain: Option<String>,
}

impl Credentials {
    pub fn new(user: impl Into<String>, password: impl Into<Secret>) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
            domain: None,
        }
    }
}

/// Replaces every occurrence of `secret` in `text` by `***` (for messages an appliance might
/// echo a password into).
pub(crate) fn scrub(text: &str, secret: &Secret) -> String {
    if secret.0.is_empty() {
        text.to_string()
    } else {
        text.replace(secret.0.as_str(), "***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_print_as_stars_in_debug_and_display() {
        let c = Credentials::new("Administrator", "hunter2");
        let dbg = format!("{c:?} {} {:?}", c.password, c.password);
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("Administrator"));
        assert_eq!(c.password.expose(), "hunter2");
    }

    #[test]
    fn scrub_removes_the_secret_and_ignores_empty_ones() {
        assert_eq!(scrub("bad pw hunter2!", &"hunter2".into()), "bad pw ***!");
        assert_eq!(scrub("text", &Secret::default()), "text");
    }
}
