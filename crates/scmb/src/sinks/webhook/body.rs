//! What a webhook sends for one event: its id (stable per alert version), the body (JSON,
//! CloudEvents or a template's rendering) and the body's HMAC-SHA256 signature. Pure: no I/O,
//! so that the same event always makes the same bytes, whichever attempt sends them.

use hmac::{Hmac, Mac};
use scmb_model::{ChangeType, Event};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What a webhook's body is.
#[derive(Debug, Clone)]
pub enum Body {
    /// `{"id", "appliance", "routingKey", "message"}`: the SCMB message as received.
    Json,
    /// A CloudEvents 1.0 structured event.
    CloudEvents,
    /// A template's rendering.
    Template(std::sync::Arc<Template>),
}

/// A compiled template and its name (for errors).
pub struct Template {
    name: String,
    source: String,
    env: minijinja::Environment<'static>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("name", &self.name)
            .finish()
    }
}

impl Template {
    /// Compiles `source`; a syntax error is one line naming `name`.
    pub fn compile(name: &str, source: &str) -> Result<Template, String> {
        let mut env = minijinja::Environment::new();
        // A missing field (a null `associatedResource`, say) renders empty instead of failing.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        // Nothing is escaped behind the author's back, whatever the template's name ends
        // with: JSON comes from `tojson`.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.template_from_named_str(name, source)
            .map_err(|e| one_line(name, &e))?;
        Ok(Template {
            name: name.to_string(),
            source: source.to_string(),
            env,
        })
    }

    /// Renders it with `ctx`; an error is one line naming the template.
    pub fn render(&self, ctx: &Value) -> Result<String, String> {
        self.env
            .template_from_named_str(&self.name, &self.source)
            .and_then(|t| t.render(ctx))
            .map_err(|e| one_line(&self.name, &e))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn one_line(name: &str, e: &minijinja::Error) -> String {
    let mut text = format!("{name}: template error: {}", e.kind());
    if let Some(d) = e.detail() {
        text.push_str(&format!(": {d}"));
    }
    if let Some(line) = e.line() {
        text.push_str(&format!(" (line {line})"));
    }
    text.replace(['\n', '\r'], " ")
}

/// What an event is, for a CloudEvents `type` and a template's `kind`: `created`, `updated`,
/// `deleted`, or `cleared` for an alert updated to `Cleared`.
pub fn kind(ev: &Event) -> &'static str {
    match ev.change_type {
        ChangeType::Created => "created",
        ChangeType::Deleted => "deleted",
        ChangeType::Updated
            if ev.is_alert() && ev.str("newState").is_some_and(|s| s == "Cleared") =>
        {
            "cleared"
        }
        ChangeType::Updated => "updated",
    }
}

/// `com.hpe.oneview.<category, singular>.<kind>`, e.g. `com.hpe.oneview.alert.created`.
pub fn event_type(ev: &Event) -> String {
    let cat = ev.category.as_str();
    let singular = cat
        .strip_suffix('s')
        .filter(|s| !s.is_empty())
        .unwrap_or(cat);
    format!("com.hpe.oneview.{singular}.{}", kind(ev))
}

/// The event's id: the same for the same alert version (appliance, uri, eTag, kind), so that
/// a receiver drops a repeat. 32 hex characters of SHA-256.
pub fn event_id(appliance: &str, ev: &Event) -> String {
    id_of(
        appliance,
        &ev.resource_uri,
        ev.etag().unwrap_or(""),
        kind(ev),
    )
}

/// [`event_id`] from its parts.
pub fn id_of(appliance: &str, uri: &str, etag: &str, kind: &str) -> String {
    let mut h = Sha256::new();
    for part in [appliance, uri, etag, kind] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex(&h.finalize()[..16])
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// The event's time: the message's `timestamp`, else now (RFC 3339).
fn time(ev: &Event) -> String {
    ev.str("timestamp")
        .map(str::to_string)
        .unwrap_or_else(|| scmb_model::message::format_rfc3339_ms(time::OffsetDateTime::now_utc()))
}

/// The appliance and where its alerts are seen.
pub struct Origin<'a> {
    pub appliance: &'a str,
    pub address: &'a str,
}

/// The body for `ev`: its bytes. A template whose output is not JSON while `json` (the
/// content type is JSON) is an error (one line naming the template).
pub fn render(body: &Body, o: &Origin<'_>, ev: &Event, json: bool) -> Result<Vec<u8>, String> {
    let id = event_id(o.appliance, ev);
    let v = match body {
        Body::Json => json!({
            "id": id,
            "appliance": o.appliance,
            "routingKey": ev.routing_key,
            "message": ev.body(),
        }),
        Body::CloudEvents => json!({
            "specversion": "1.0",
            "id": id,
            "source": format!("https://{}", o.address),
            "type": event_type(ev),
            "subject": ev.resource_uri,
            "time": time(ev),
            "datacontenttype": "application/json",
            "appliance": o.appliance,
            "data": ev.resource(),
        }),
        Body::Template(t) => {
            let text = t.render(&context(o, ev, &id))?;
            if json {
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
                    return Err(format!(
                        "{}: the rendering is not JSON ({e}) although content_type is JSON",
                        t.name()
                    ));
                }
            }
            return Ok(text.into_bytes());
        }
    };
    serde_json::to_vec(&v).map_err(|e| format!("cannot encode the event: {e}"))
}

/// What a template sees.
pub fn context(o: &Origin<'_>, ev: &Event, id: &str) -> Value {
    json!({
        "appliance": o.appliance,
        "address": o.address,
        "alert": ev.resource(),
        "event": ev.body(),
        "uri": ev.resource_uri,
        "change_type": ev.change_type.as_str(),
        "kind": kind(ev),
        "type": event_type(ev),
        "id": id,
        "time": time(ev),
        "link": format!("https://{}/#/activity/r{}", o.address, ev.resource_uri),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn alert_event(change: &str, state: &str) -> Event {
        let body = json!({"resourceUri": "/rest/alerts/49", "changeType": change, "newState": state,
            "eTag": "2018-02-12T20:12:03.207Z", "timestamp": "2018-02-12T20:12:03.231Z",
            "resource": {"type": "AlertResourceV3", "category": "alerts", "uri": "/rest/alerts/49",
                "eTag": "2018-02-12T20:12:03.207Z", "alertState": state, "severity": "Critical",
                "alertTypeID": "Trap.cpqHe4FltTolPowerSupplyFailed",
                "description": "The power supply in bay 4 \"failed\".",
                "correctiveAction": null, "healthCategory": "Power",
                "associatedResource": {"resourceCategory": "enclosures", "resourceName": "Encl1",
                    "resourceUri": "/rest/enclosures/09SGH100X6J1"}},
            "changedAttributes": [], "data": null});
        scmb_model::message::decode(
            &format!("scmb.alerts.{change}./rest/alerts/49"),
            body.to_string().as_bytes(),
            1 << 20,
        )
        .expect("decode")
    }

    const O: Origin<'static> = Origin {
        appliance: "east",
        address: "ov.example.com",
    };

    #[test]
    fn ids_are_stable_per_alert_version_and_differ_otherwise() {
        let a = event_id("east", &alert_event("Created", "Active"));
        assert_eq!(a, event_id("east", &alert_event("Created", "Active")));
        assert_eq!(a.len(), 32);
        assert_ne!(a, event_id("west", &alert_event("Created", "Active")));
        assert_ne!(a, event_id("east", &alert_event("Updated", "Cleared")));
        assert_eq!(
            a,
            id_of(
                "east",
                "/rest/alerts/49",
                "2018-02-12T20:12:03.207Z",
                "created"
            )
        );
    }

    #[test]
    fn cloudevents_carry_the_required_attributes() {
        let ev = alert_event("Created", "Active");
        let v: Value =
            serde_json::from_slice(&render(&Body::CloudEvents, &O, &ev, true).expect("render"))
                .expect("json");
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "com.hpe.oneview.alert.created");
        assert_eq!(v["source"], "https://ov.example.com");
        assert_eq!(v["subject"], "/rest/alerts/49");
        assert_eq!(v["time"], "2018-02-12T20:12:03.231Z");
        assert_eq!(v["id"], event_id("east", &ev).as_str());
        assert_eq!(v["data"]["severity"], "Critical");
        let cleared = alert_event("Updated", "Cleared");
        assert_eq!(event_type(&cleared), "com.hpe.oneview.alert.cleared");
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_template_that_is_not_json_fails_on_one_line_naming_it() {
        let t = Template::compile("t.j2", "{\"text\": {{ alert.description }}}").expect("compiles");
        let e = render(
            &Body::Template(std::sync::Arc::new(t)),
            &O,
            &alert_event("Created", "Active"),
            true,
        )
        .expect_err("not json");
        assert!(e.starts_with("t.j2: the rendering is not JSON"), "{e}");
        let e = Template::compile("bad.j2", "{% if %}\n").expect_err("syntax");
        assert!(
            e.starts_with("bad.j2: template error") && !e.contains('\n'),
            "{e}"
        );
    }

    fn example(file: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(file);
        let src = std::fs::read_to_string(&path).expect("example template");
        let t = Template::compile(file, &src).expect("compiles");
        let text = render(
            &Body::Template(std::sync::Arc::new(t)),
            &O,
            &alert_event("Created", "Active"),
            true,
        )
        .expect("renders as JSON");
        serde_json::from_slice(&text).expect("json")
    }

    #[test]
    fn the_teams_example_is_an_adaptive_card_message() {
        let v = example("webhook-teams.json.j2");
        assert_eq!(v["type"], "message");
        let att = &v["attachments"][0];
        assert_eq!(
            att["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &att["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        assert_eq!(
            card["$schema"],
            "http://adaptivecards.io/schemas/adaptive-card.json"
        );
        let body = card["body"].as_array().expect("body");
        assert!(!body.is_empty());
        let text = v.to_string();
        assert!(
            text.contains("The power supply in bay 4 \\\"failed\\\"."),
            "{text}"
        );
        assert!(
            text.contains("Encl1") && text.contains("Critical"),
            "{text}"
        );
        assert_eq!(card["actions"][0]["type"], "Action.OpenUrl");
        assert_eq!(
            card["actions"][0]["url"],
            "https://ov.example.com/#/activity/r/rest/alerts/49"
        );
    }

    #[test]
    fn the_slack_example_has_text_and_blocks() {
        let v = example("webhook-slack.json.j2");
        let text = v["text"].as_str().expect("text");
        assert!(
            text.contains("Critical") && text.contains("Encl1"),
            "{text}"
        );
        let blocks = v["blocks"].as_array().expect("blocks");
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        for b in blocks {
            assert!(
                ["header", "section", "context", "actions", "divider"]
                    .contains(&b["type"].as_str().unwrap_or("")),
                "{b}"
            );
        }
        let section = blocks
            .iter()
            .find(|b| b["type"] == "section")
            .expect("a section");
        assert_eq!(section["text"]["type"], "mrkdwn");
    }
}
