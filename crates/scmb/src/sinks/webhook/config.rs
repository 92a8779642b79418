//! `[[appliance.webhook]]`: where an appliance's events are POSTed, and the sink's settings
//! they amount to. Checked when the file loads ([`WebhookConfig::check`]: the template is
//! compiled then, so a template error is a one-line error naming it); the URL and the HMAC
//! secret are read with the appliance's other secrets ([`WebhookConfig::secrets`]) and never
//! kept anywhere but in a [`Secret`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use super::body::{Body, Template};
use super::{
    WebhookSecrets, WebhookSettings, DEFAULT_IDEMPOTENCY_HEADER, DEFAULT_SIGNATURE_HEADER,
};
use crate::duration::DurationValue;
use crate::password::SecretRef;
use crate::sinks::http::{self, HttpSettings};
use scmb_oneview::Secret;

/// `[[appliance.webhook]]` (several allowed): POST every admitted event to a URL, as JSON, as
/// a CloudEvents 1.0 structured event, or rendered by a template (Microsoft Teams, Slack, ...).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The webhook's name: in log lines, and the `sink` label of its metrics
    /// (`webhook:NAME`). Letters, digits, '.', '-' and '_', unique within the appliance.
    /// Default: the URL's host (`-2`, `-3`, ... added when several share it).
    pub name: Option<String>,
    /// The URL events are POSTed to, written in this file. Many webhook URLs are secrets in
    /// themselves (Slack's path, the `sig=` of a Teams workflow): prefer `url_env`,
    /// `url_file` or `url_credential`. Exactly one of the four. Only its scheme and host are
    /// ever logged.
    #[serde(default, deserialize_with = "secret")]
    pub url: Option<Secret>,
    /// The URL: the name of an environment variable holding it.
    pub url_env: Option<String>,
    /// The URL: a file whose first line is it (keep it `chmod 600`).
    pub url_file: Option<PathBuf>,
    /// The URL: a systemd credential name (`LoadCredential=NAME:PATH`), read from
    /// `$CREDENTIALS_DIRECTORY/NAME`.
    pub url_credential: Option<String>,
    /// What is sent: `"json"` (default: `{"id", "appliance", "routingKey", "message"}`, the
    /// SCMB message as received), `"cloudevents"` (a CloudEvents 1.0 structured event,
    /// `application/cloudevents+json`) or `"template"` (`template` or `template_file`
    /// rendered with minijinja).
    #[serde(default)]
    pub format: Format,
    /// The template (minijinja, Jinja2's syntax), written here; `format = "template"` only.
    /// It sees `appliance`, `address`, `alert` (the resource), `event` (the whole SCMB
    /// message), `uri`, `change_type`, `kind` (`created`, `updated`, `cleared`, `deleted`),
    /// `type` and `id` (as in CloudEvents), `time` and `link` (the alert in the appliance's
    /// Activity view). Use `| tojson` to put a value into JSON.
    pub template: Option<String>,
    /// The template, from this file (read when the file loads; a relative path is relative
    /// to the config file's directory); see `template`.
    pub template_file: Option<PathBuf>,
    /// The `Content-Type` of what is sent. Default `application/json`
    /// (`application/cloudevents+json` for CloudEvents). With a JSON type, a template's
    /// output must be JSON: an event whose rendering is not is failed, logged and counted.
    pub content_type: Option<String>,
    /// More headers on every POST, e.g. `{ Authorization = "Bearer ..." }` (values are never
    /// logged). `Content-Type`, `Content-Length`, `Host` and the signature and idempotency
    /// headers are set by scmb and refused here.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The HMAC-SHA256 secret: the name of an environment variable holding it. With one of
    /// `secret_env`, `secret_file`, `secret_credential`, each POST carries
    /// `signature_header: sha256=<hex of HMAC-SHA256(secret, body)>`.
    pub secret_env: Option<String>,
    /// The HMAC secret: a file whose first line is it (keep it `chmod 600`).
    pub secret_file: Option<PathBuf>,
    /// The HMAC secret: a systemd credential name, read from `$CREDENTIALS_DIRECTORY/NAME`.
    pub secret_credential: Option<String>,
    /// The header carrying the signature. Default `X-Signature-256`.
    pub signature_header: Option<String>,
    /// The header carrying the event's id (stable per alert version, the CloudEvents `id`), so
    /// that a receiver can drop a repeat; `""` sends none. Default `Idempotency-Key`.
    pub idempotency_header: Option<String>,
    /// Also send the lifecycle of the alerts the filter admits (severity and alert type): their
    /// clears and deletions, also those that happened while scmb was stopped (the alerts
    /// announced are kept in the store until then). Default false: admitted events only.
    #[serde(default)]
    pub lifecycle: bool,
    /// Verify the receiver's certificate against this CA file instead of the system's.
    pub ca: Option<PathBuf>,
    /// DANGEROUS: do not verify the receiver's certificate (warned about at every start).
    #[serde(default)]
    pub insecure: bool,
    /// The proxy for every request, e.g. `"http://proxy.example.com:3128"`, or `"none"` to go
    /// direct. Default: `$HTTPS_PROXY` / `$HTTP_PROXY` / `$ALL_PROXY` with `$NO_PROXY`.
    #[serde(default, deserialize_with = "secret")]
    pub proxy: Option<Secret>,
    /// How long one POST may take, answer included. Default `"30s"`.
    pub timeout: Option<DurationValue>,
    /// Longest pause between retries (5xx, 429, timeouts) and the pause while the receiver
    /// refuses us (401, 403), e.g. `"30s"`. A `Retry-After` is honoured up to 10 minutes.
    /// Default `"30s"`.
    pub retry_cap: Option<DurationValue>,
}

/// What a webhook sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    #[serde(rename = "cloudevents")]
    CloudEvents,
    Template,
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Secret::new))
}

/// Headers scmb sets itself.
const RESERVED: [&str; 4] = [
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
];

/// Whether `name` is a usable webhook name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
}

impl WebhookConfig {
    /// Makes a relative `template_file` relative to `dir` (the config file's directory).
    pub fn relative_to(&mut self, dir: &std::path::Path) {
        if let Some(p) = &self.template_file {
            if p.is_relative() {
                self.template_file = Some(dir.join(p));
            }
        }
    }

    fn url_ref(&self, setting: &str) -> Result<Option<SecretRef>, String> {
        let given = [
            self.url.is_some(),
            self.url_env.is_some(),
            self.url_file.is_some(),
            self.url_credential.is_some(),
        ]
        .into_iter()
        .filter(|g| *g)
        .count();
        match given {
            0 => Err(format!(
                "{setting}: no URL: set url_env, url_file, url_credential or url"
            )),
            1 if self.url.is_some() => Ok(None),
            1 => Ok(Some(SecretRef {
                password_env: self.url_env.clone(),
                password_file: self.url_file.clone(),
                password_credential: self.url_credential.clone(),
            })),
            _ => Err(format!(
                "{setting}: give only one of url, url_env, url_file and url_credential"
            )),
        }
    }

    fn secret_ref(&self, setting: &str) -> Result<Option<SecretRef>, String> {
        let r = SecretRef {
            password_env: self.secret_env.clone(),
            password_file: self.secret_file.clone(),
            password_credential: self.secret_credential.clone(),
        };
        if r == SecretRef::default() {
            return Ok(None);
        }
        r.check().map_err(|e| {
            format!(
                "{setting}: {}",
                e.replace("password_", "secret_")
                    .replace("password", "secret")
            )
        })?;
        Ok(Some(r))
    }

    /// The template's name in errors: its file, else `webhook NAME.template`.
    fn template_name(&self, setting: &str) -> String {
        match &self.template_file {
            Some(p) => p.display().to_string(),
            None => format!("{setting}.template"),
        }
    }

    /// The template, compiled (reading `template_file`): `None` unless `format = "template"`.
    fn template(&self, setting: &str) -> Result<Option<Template>, String> {
        let source = match (&self.template, &self.template_file) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{setting}: give template or template_file, not both"
                ))
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(p)) => Some(std::fs::read_to_string(p).map_err(|e| {
                format!("{setting}.template_file: cannot read {}: {e}", p.display())
            })?),
            (None, None) => None,
        };
        match (self.format, source) {
            (Format::Template, None) => Err(format!(
                "{setting}: format = \"template\" needs template or template_file"
            )),
            (Format::Template, Some(src)) => {
                Template::compile(&self.template_name(setting), &src).map(Some)
            }
            (_, Some(_)) => Err(format!(
                "{setting}: template and template_file need format = \"template\""
            )),
            (_, None) => Ok(None),
        }
    }

    fn header_names(&self) -> (Option<String>, Option<String>) {
        let sig = self
            .signature_header
            .clone()
            .unwrap_or_else(|| DEFAULT_SIGNATURE_HEADER.into());
        let idem = match &self.idempotency_header {
            Some(h) if h.trim().is_empty() => None,
            Some(h) => Some(h.trim().to_string()),
            None => Some(DEFAULT_IDEMPOTENCY_HEADER.into()),
        };
        (Some(sig.trim().to_string()), idem)
    }

    /// Checks the table (`setting` names it in errors, e.g. `webhook "teams"`): one URL
    /// source, at most one secret source, the template compiled, the headers, the durations.
    pub fn check(&self, setting: &str) -> Result<(), String> {
        if let Some(n) = &self.name {
            if !valid_name(n) {
                return Err(format!(
                    "{setting}: name {n:?}: use letters, digits, '.', '-' and '_' (at most 64)"
                ));
            }
        }
        self.url_ref(setting)?;
        if let Some(u) = &self.url {
            check_url(setting, u.expose())?;
        }
        self.secret_ref(setting)?;
        self.template(setting)?;
        let (sig, idem) = self.header_names();
        for (what, h) in [("signature_header", &sig), ("idempotency_header", &idem)] {
            if let Some(h) = h {
                reqwest::header::HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("{setting}.{what} {h:?} is not a header name"))?;
            }
        }
        for (k, v) in &self.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("{setting}.headers: {k:?} is not a header name"))?;
            reqwest::header::HeaderValue::from_str(v).map_err(|_| {
                format!("{setting}.headers.{k}: the value is not a valid header value")
            })?;
            let lower = name.as_str();
            if RESERVED.contains(&lower)
                || [&sig, &idem]
                    .into_iter()
                    .flatten()
                    .any(|h| h.eq_ignore_ascii_case(lower))
            {
                return Err(format!(
                    "{setting}.headers.{k}: scmb sets this header itself (see content_type, signature_header, idempotency_header)"
                ));
            }
        }
        if let Some(ct) = &self.content_type {
            reqwest::header::HeaderValue::from_str(ct)
                .map_err(|_| format!("{setting}.content_type {ct:?} is not a header value"))?;
        }
        if self.ca.is_some() && self.insecure {
            return Err(format!("{setting}: give ca or insecure = true, not both"));
        }
        http::parse_proxy(setting, self.proxy.as_ref().map(Secret::expose))?;
        http::check_timeout(setting, self.timeout.as_ref())?;
        self.retry_cap(setting)?;
        Ok(())
    }

    /// Longest pause between retries.
    pub fn retry_cap(&self, setting: &str) -> Result<std::time::Duration, String> {
        let d = match &self.retry_cap {
            Some(v) => v.resolve(&format!("{setting}.retry_cap"))?,
            None => std::time::Duration::from_secs(30),
        };
        if d.is_zero() {
            return Err(format!(
                "{setting}.retry_cap must be above zero, e.g. \"30s\""
            ));
        }
        Ok(d)
    }

    /// Reads the URL and the HMAC secret now. Errors name the setting and the source, never
    /// the secret.
    pub fn secrets(&self, setting: &str) -> Result<WebhookSecrets, String> {
        let url = match self.url_ref(setting)? {
            None => self.url.clone().unwrap_or_default(),
            Some(r) => r.read().map_err(|e| {
                format!(
                    "{setting}: {}",
                    e.replace("password_", "url_").replace("password", "URL")
                )
            })?,
        };
        let url = Secret::new(url.expose().trim());
        check_url(setting, url.expose())?;
        let hmac = match self.secret_ref(setting)? {
            None => None,
            Some(r) => {
                let s = r.read().map_err(|e| {
                    format!(
                        "{setting}: {}",
                        e.replace("password_", "secret_")
                            .replace("password", "secret")
                    )
                })?;
                if s.is_empty() {
                    return Err(format!("{setting}: the HMAC secret read is empty"));
                }
                Some(s)
            }
        };
        Ok(WebhookSecrets { url, hmac })
    }

    /// The sink's settings, with its secrets read, for the appliance `appliance` at
    /// `address`; `name` is the webhook's (given or derived, see [`names`]).
    pub fn settings(
        &self,
        setting: &str,
        name: &str,
        secrets: WebhookSecrets,
        appliance: &str,
        address: &str,
    ) -> Result<WebhookSettings, String> {
        let body = match self.format {
            Format::Json => Body::Json,
            Format::CloudEvents => Body::CloudEvents,
            Format::Template => {
                Body::Template(Arc::new(self.template(setting)?.ok_or_else(|| {
                    format!("{setting}: format = \"template\" needs template or template_file")
                })?))
            }
        };
        let content_type = self.content_type.clone().unwrap_or_else(|| {
            match self.format {
                Format::CloudEvents => "application/cloudevents+json",
                _ => "application/json",
            }
            .to_string()
        });
        let (sig, idem) = self.header_names();
        Ok(WebhookSettings {
            name: name.to_string(),
            url: secrets.url,
            body,
            content_type,
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            signature: secrets.hmac.zip(sig),
            idempotency_header: idem,
            lifecycle: self.lifecycle,
            http: HttpSettings::from_keys(
                setting,
                self.ca.as_deref(),
                self.insecure,
                self.proxy.as_ref().map(Secret::expose),
                self.timeout.as_ref(),
            )?,
            retry_cap: self.retry_cap(setting)?,
            appliance: appliance.to_string(),
            address: address.to_string(),
        })
    }
}

/// An http(s) URL with a host. The message never shows it (it may be a secret).
fn check_url(setting: &str, url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| format!("{setting}: the URL is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none() {
        return Err(format!(
            "{setting}: the URL must be https:// (http:// for a test receiver) with a host"
        ));
    }
    Ok(())
}

/// The names of an appliance's webhooks, in order: each given one (checked unique), else its
/// URL's host when that is in the file (else `webhook`), with `-2`, `-3`, ... added to repeats.
pub fn names(hooks: &[WebhookConfig]) -> Result<Vec<String>, String> {
    let mut given = std::collections::HashSet::new();
    for n in hooks.iter().filter_map(|h| h.name.as_deref()) {
        if !given.insert(n.to_string()) {
            return Err(format!("webhook name {n:?} is used twice"));
        }
    }
    let mut taken = given.clone();
    let mut out = Vec::with_capacity(hooks.len());
    for h in hooks {
        if let Some(n) = &h.name {
            out.push(n.clone());
            continue;
        }
        let base = h
            .url
            .as_ref()
            .and_then(|u| reqwest::Url::parse(u.expose().trim()).ok())
            .and_then(|u| u.host_str().map(str::to_string))
            .filter(|h| valid_name(h))
            .unwrap_or_else(|| "webhook".to_string());
        let mut name = base.clone();
        let mut n = 2;
        while taken.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        taken.insert(name.clone());
        out.push(name);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> WebhookConfig {
        toml::from_str(text).expect("parse")
    }

    #[test]
    fn one_url_source_and_a_compiled_template_are_required() {
        let c = parse("url = \"https://hooks.example.com/x\"");
        assert_eq!(c.check("webhook"), Ok(()));
        assert_eq!(c.format, Format::Json);
        let e = parse("url_env = \"A\"\nurl_file = \"/x\"")
            .check("webhook")
            .expect_err("two");
        assert!(e.contains("only one of url"), "{e}");
        assert!(parse("format = \"json\"").check("webhook").is_err());
        let e = parse(
            "url = \"https://h/x\"\nformat = \"template\"\ntemplate = \"{{ alert.severity \"",
        )
        .check("webhook \"teams\"")
        .expect_err("syntax");
        assert!(e.starts_with("webhook \"teams\".template"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = parse("url = \"https://h/x\"\ntemplate = \"x\"")
            .check("webhook")
            .expect_err("needs format");
        assert!(e.contains("format = \"template\""), "{e}");
        let e =
            parse("url = \"https://h/x\"\nformat = \"template\"\ntemplate_file = \"/no/such.j2\"")
                .check("webhook")
                .expect_err("missing file");
        assert!(e.contains("/no/such.j2"), "{e}");
        assert!(toml::from_str::<WebhookConfig>("url = \"https://h\"\nnope = 1").is_err());
    }

    #[test]
    fn headers_that_scmb_sets_are_refused_and_secrets_never_show() {
        let e = parse("url = \"https://h/x\"\nheaders = { content-type = \"text/plain\" }")
            .check("webhook")
            .expect_err("reserved");
        assert!(e.contains("content-type"), "{e}");
        let e = parse("url = \"https://h/x\"\nheaders = { Idempotency-Key = \"x\" }")
            .check("webhook")
            .expect_err("reserved");
        assert!(e.contains("sets this header itself"), "{e}");
        let e = parse("url = \"ftp://h/s3cr3t\"")
            .check("webhook")
            .expect_err("scheme");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = parse("url = \"https://h/x\"\nsecret_env = \"A\"\nsecret_file = \"/b\"")
            .check("webhook")
            .expect_err("two secrets");
        assert!(e.contains("secret_env") && !e.contains("password"), "{e}");
    }

    #[test]
    fn the_webhook_example_file_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/webhook.toml");
        let c = crate::config::Config::load(&path).expect("examples/webhook.toml must stay valid");
        assert!(c.appliances.iter().all(|a| a.webhook.len() == 3));
    }

    #[test]
    fn names_are_given_or_derived_from_the_host_and_unique() {
        let hooks = vec![
            parse("url = \"https://hooks.slack.com/a\""),
            parse("url = \"https://hooks.slack.com/b\""),
            parse("name = \"hooks.slack.com\"\nurl = \"https://x/c\""),
            parse("url_env = \"U\""),
        ];
        assert_eq!(
            names(&hooks).expect("names"),
            vec![
                "hooks.slack.com-2",
                "hooks.slack.com-3",
                "hooks.slack.com",
                "webhook"
            ]
        );
        let twice = vec![
            parse("name = \"a\"\nurl = \"https://x\""),
            parse("name = \"a\"\nurl = \"https://y\""),
        ];
        assert!(names(&twice).expect_err("twice").contains("\"a\""));
    }
}
