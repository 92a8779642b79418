//! Decoding an SCMB delivery (routing key + body) into an [`Event`].
//!
//! Liberal in what it accepts (SPEC: unknown fields ignored, nulls tolerated, both timestamp
//! forms), strict about what it cannot use: a body that is not UTF-8 JSON, not an object, too
//! large, or without a usable `changeType`/`resourceUri` is a [`DecodeError`] with the reason,
//! so that the caller can reject it and carry on.

use std::sync::OnceLock;

use serde_json::Value;

/// `changeType` of an SCMB message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeType {
    Created,
    Updated,
    Deleted,
}

impl ChangeType {
    pub fn parse(s: &str) -> Option<ChangeType> {
        match s {
            "Created" => Some(ChangeType::Created),
            "Updated" => Some(ChangeType::Updated),
            "Deleted" => Some(ChangeType::Deleted),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Created => "Created",
            ChangeType::Updated => "Updated",
            ChangeType::Deleted => "Deleted",
        }
    }
}

/// Why a delivery could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes is larger than the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("empty message body")]
    Empty,
    #[error("body is not valid UTF-8 (byte {at})")]
    NotUtf8 { at: usize },
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is JSON but not an object")]
    NotObject,
    #[error("field {field} is {problem}")]
    Field {
        field: &'static str,
        problem: &'static str,
    },
}

/// A decoded SCMB message.
#[derive(Debug, Clone)]
pub struct Event {
    pub routing_key: String,
    /// Resource category: from the routing key (`scmb.<category>.…`), else `resource.category`.
    pub category: String,
    pub change_type: ChangeType,
    pub resource_uri: String,
    /// The whole message ([`Event::body`]): decoded from `raw` the first time a sink asks for
    /// it, so that a delivery whose sinks need only its bytes (a JSON printer) is never
    /// decoded in full.
    body: OnceLock<Value>,
    /// The body's bytes as they came off the bus (none for an event built from a REST read):
    /// a printer in JSON mode writes them as they are instead of serialising the body again.
    pub raw: Option<Vec<u8>>,
    /// What the peek read from `raw` (a delivery), so [`Event::peek`] needs no full decode.
    peeked: Option<Peeked>,
    /// A delivery that no earlier run can have seen (its first delivery, from a queue that
    /// lives only as long as this connection): its `resource` is the resource as the appliance
    /// published it a moment ago, and nothing was done for it yet. False for everything else
    /// (a redelivery, a durable queue's backlog, a REST read, a test).
    pub first_sight: bool,
}

/// The default limit on a message body (real SCMB messages are a few KB).
pub const DEFAULT_MAX_BYTES: usize = 4 << 20;

/// Decodes a delivery. `max_bytes` bounds the body size. Accepts exactly what
/// [`crate::peek::peek`] accepts (it does the checking), then keeps the whole body.
pub fn decode(routing_key: &str, body: &[u8], max_bytes: usize) -> Result<Event, DecodeError> {
    let p = crate::peek::peek(routing_key, body, max_bytes)?;
    decode_peeked(routing_key, body, p)
}

/// [`decode`] for a body already checked by [`crate::peek::peek`]: keeps the whole body
/// decoded, without checking it a second time.
pub fn decode_peeked(
    routing_key: &str,
    body: &[u8],
    p: crate::peek::Peek<'_>,
) -> Result<Event, DecodeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    Ok(Event::new(
        routing_key.to_string(),
        p.category.into_owned(),
        p.change_type,
        p.resource_uri.into_owned(),
        value,
    ))
}

/// A [`crate::peek::Peek`] owned: what [`Event::delivered`] keeps besides the bytes (taken
/// before the bytes move, since the peek borrows them), so that the filter and the pipeline
/// never need the body decoded in full.
#[derive(Debug, Clone)]
pub struct EventHead {
    pub category: String,
    pub change_type: ChangeType,
    pub resource_uri: String,
    fields: Peeked,
}

/// The peeked fields besides the key ones.
#[derive(Debug, Clone)]
struct Peeked {
    etag: Option<String>,
    severity: Option<String>,
    alert_state: Option<String>,
    alert_type_id: Option<String>,
    severity_changed: bool,
    new_state: Option<String>,
}

impl crate::peek::Peek<'_> {
    pub fn head(&self) -> EventHead {
        let own = |c: &Option<std::borrow::Cow<'_, str>>| c.as_deref().map(str::to_string);
        EventHead {
            category: self.category.to_string(),
            change_type: self.change_type,
            resource_uri: self.resource_uri.to_string(),
            fields: Peeked {
                etag: own(&self.etag),
                severity: own(&self.severity),
                alert_state: own(&self.alert_state),
                alert_type_id: own(&self.alert_type_id),
                severity_changed: self.severity_changed,
                new_state: own(&self.new_state),
            },
        }
    }
}

impl Event {
    /// An event whose whole message is already decoded (a REST read, a test).
    pub fn new(
        routing_key: String,
        category: String,
        change_type: ChangeType,
        resource_uri: String,
        body: Value,
    ) -> Event {
        Event {
            routing_key,
            category,
            change_type,
            resource_uri,
            body: OnceLock::from(body),
            raw: None,
            peeked: None,
            first_sight: false,
        }
    }

    /// An event for a delivery that [`crate::peek::peek`] accepted: the bytes are kept as they
    /// came and decoded in full only when [`Event::body`] is first asked for.
    pub fn delivered(routing_key: String, head: EventHead, raw: Vec<u8>) -> Event {
        Event {
            routing_key,
            category: head.category,
            change_type: head.change_type,
            resource_uri: head.resource_uri,
            body: OnceLock::new(),
            raw: Some(raw),
            peeked: Some(head.fields),
            first_sight: false,
        }
    }

    /// The whole message as received. For a delivery, decoded from its bytes on first use;
    /// the peek accepted them, so this cannot fail (if it ever did, the body reads as null).
    pub fn body(&self) -> &Value {
        self.body.get_or_init(|| {
            self.raw
                .as_deref()
                .and_then(|raw| serde_json::from_slice(raw).ok())
                .unwrap_or(Value::Null)
        })
    }

    /// Replaces the body (a sink showing an event with fresher data); the bytes as received
    /// no longer match it, so they are dropped.
    pub fn set_body(&mut self, body: Value) {
        self.body = OnceLock::from(body);
        self.raw = None;
        self.peeked = None;
    }

    /// `eTag`, if any.
    pub fn etag(&self) -> Option<&str> {
        match &self.peeked {
            Some(k) => k.etag.as_deref(),
            None => self.str("eTag"),
        }
    }

    /// `resource`, or an empty object.
    pub fn resource(&self) -> &Value {
        static EMPTY: Value = Value::Null;
        self.body().get("resource").unwrap_or(&EMPTY)
    }
    pub fn str(&self, field: &str) -> Option<&str> {
        self.body().get(field).and_then(Value::as_str)
    }
    /// `changedAttributes`, as strings.
    pub fn changed_attributes(&self) -> impl Iterator<Item = &str> {
        self.body()
            .get("changedAttributes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
    }
    pub fn is_alert(&self) -> bool {
        self.category == "alerts"
    }

    /// What the filter and the sinks look at, borrowed from the decoded event: the same
    /// fields [`crate::peek::peek`] reads from the raw body.
    pub fn peek(&self) -> crate::peek::Peek<'_> {
        use std::borrow::Cow;
        if let Some(k) = &self.peeked {
            fn b(s: &Option<String>) -> Option<Cow<'_, str>> {
                s.as_deref().map(Cow::Borrowed)
            }
            return crate::peek::Peek {
                category: Cow::Borrowed(&self.category),
                change_type: self.change_type,
                resource_uri: Cow::Borrowed(&self.resource_uri),
                etag: b(&k.etag),
                severity: b(&k.severity),
                alert_state: b(&k.alert_state),
                alert_type_id: b(&k.alert_type_id),
                severity_changed: k.severity_changed,
                new_state: b(&k.new_state),
            };
        }
        let r = self.resource();
        fn s(v: Option<&Value>) -> Option<Cow<'_, str>> {
            v.and_then(Value::as_str).map(Cow::Borrowed)
        }
        crate::peek::Peek {
            category: Cow::Borrowed(&self.category),
            change_type: self.change_type,
            resource_uri: Cow::Borrowed(&self.resource_uri),
            etag: s(self.body().get("eTag")),
            severity: s(r.get("severity")),
            alert_state: s(r.get("alertState")),
            alert_type_id: s(r.get("alertTypeID")),
            severity_changed: self.changed_attributes().any(|c| c == "severity"),
            new_state: s(self.body().get("newState")),
        }
    }
}

/// Formats an SCMB timestamp (`2026-11-25T10:00:00.123Z`, with or without milliseconds) as
/// `YYYY-MM-DD HH:MM:SS` in UTC, like the HPE sample. Anything else is returned unchanged.
pub fn sample_timestamp(ts: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(ts, &Rfc3339) {
        Ok(t) => {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        Err(_) => ts.to_string(),
    }
}

/// An alert read over REST (a catch-up) as if its `Created` message had just arrived, so that
/// it goes through the same filter and pipeline. `None` when it has no `uri`.
pub fn alert_as_created_event(alert: Value) -> Option<Event> {
    let uri = alert.get("uri")?.as_str()?.to_string();
    let body = serde_json::json!({
        "resourceUri": uri, "changeType": "Created", "newState": alert.get("alertState"),
        "eTag": alert.get("eTag"), "timestamp": alert.get("created"), "resource": alert,
        "changedAttributes": [], "data": null,
    });
    Some(Event::new(
        format!("scmb.alerts.Created.{uri}"),
        "alerts".into(),
        ChangeType::Created,
        uri,
        body,
    ))
}

/// The event a listener would have received for an alert cleared while nobody listened: an
/// `Updated` to `Cleared`, carrying the alert as it is now (its `clearedTime`, or else its
/// `modified`, as the event's time).
pub fn alert_as_cleared_event(alert: Value) -> Option<Event> {
    let uri = alert.get("uri")?.as_str()?.to_string();
    let at = alert
        .get("clearedTime")
        .filter(|v| v.is_string())
        .or_else(|| alert.get("modified"))
        .cloned();
    let body = serde_json::json!({
        "resourceUri": uri, "changeType": "Updated", "newState": "Cleared",
        "eTag": alert.get("eTag"), "timestamp": at, "resource": alert,
        "changedAttributes": ["alertState"], "data": null,
    });
    Some(Event::new(
        format!("scmb.alerts.Updated.{uri}"),
        "alerts".into(),
        ChangeType::Updated,
        uri,
        body,
    ))
}

/// The event a listener would have received for an alert deleted while nobody listened:
/// `Deleted`, with nothing but its uri (the alert is gone) and no time.
pub fn alert_deleted_event(uri: &str) -> Event {
    let body = serde_json::json!({
        "resourceUri": uri, "changeType": "Deleted", "newState": null, "eTag": null,
        "timestamp": null, "resource": {"uri": uri, "category": "alerts"},
        "changedAttributes": [], "data": null,
    });
    Event::new(
        format!("scmb.alerts.Deleted.{uri}"),
        "alerts".into(),
        ChangeType::Deleted,
        uri.to_string(),
        body,
    )
}

/// Formats an instant as SCMB does: `2026-11-25T10:00:00.123Z`.
pub fn format_rfc3339_ms(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "scmb.alerts.Created./rest/alerts/1";

    #[test]
    fn a_delivery_kept_as_bytes_reads_as_the_decoded_message_does() {
        let body = br#"{"resourceUri":"/rest/alerts/1","changeType":"Updated","newState":"Cleared","eTag":"e2","resource":{"category":"alerts","severity":"Critical","alertState":"Cleared","alertTypeID":"x.y"},"changedAttributes":["severity"]}"#;
        let full = decode(KEY, body, DEFAULT_MAX_BYTES).expect("decode");
        let p = crate::peek::peek(KEY, body, DEFAULT_MAX_BYTES).expect("peek");
        let kept = Event::delivered(KEY.into(), p.head(), body.to_vec());
        assert_eq!(kept.peek(), full.peek());
        assert_eq!(kept.etag(), Some("e2"));
        assert_eq!(kept.body(), full.body(), "decoded on demand from the bytes");
        assert_eq!(kept.raw.as_deref(), Some(&body[..]));
        let mut changed = kept.clone();
        changed.set_body(serde_json::json!({"eTag": "e3"}));
        assert_eq!(
            changed.etag(),
            Some("e3"),
            "a new body replaces what was peeked"
        );
        assert!(
            changed.raw.is_none(),
            "and the bytes that no longer match it"
        );
    }

    #[test]
    fn a_real_message_decodes() {
        let body = br#"{"resourceUri":"/rest/alerts/1","changeType":"Created","newState":"Active","eTag":"e","timestamp":"2026-11-25T10:00:00.123Z","resource":{"category":"alerts"},"data":null,"unknown":1}"#;
        let e = decode(KEY, body, DEFAULT_MAX_BYTES).expect("decode");
        assert_eq!(e.category, "alerts");
        assert_eq!(e.change_type, ChangeType::Created);
        assert_eq!(e.resource_uri, "/rest/alerts/1");
    }

    #[test]
    fn malformed_bodies_are_errors_with_reasons() {
        let cases: Vec<(&[u8], DecodeError)> = vec![
            (b"", DecodeError::Empty),
            (b"  ", DecodeError::Empty),
            (&[0xff, 0xfe], DecodeError::NotUtf8 { at: 0 }),
            (b"[1]", DecodeError::NotObject),
            (
                b"{}",
                DecodeError::Field {
                    field: "changeType",
                    problem: "missing",
                },
            ),
            (
                br#"{"changeType":5}"#,
                DecodeError::Field {
                    field: "changeType",
                    problem: "not a string",
                },
            ),
            (
                br#"{"changeType":"Exploded"}"#,
                DecodeError::Field {
                    field: "changeType",
                    problem: "not Created, Updated or Deleted",
                },
            ),
            (
                br#"{"changeType":"Created"}"#,
                DecodeError::Field {
                    field: "resourceUri",
                    problem: "missing",
                },
            ),
            (
                br#"{"changeType":"Created","resourceUri":"/x","resource":"s"}"#,
                DecodeError::Field {
                    field: "resource",
                    problem: "not an object",
                },
            ),
            (
                br#"{"changeType":"Created","resourceUri":"/x","eTag":[]}"#,
                DecodeError::Field {
                    field: "eTag",
                    problem: "not a string",
                },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(decode(KEY, body, 1000).expect_err("must fail"), want);
        }
        assert!(matches!(
            decode(KEY, b"{\"changeType\": ", 1000),
            Err(DecodeError::NotJson(_))
        ));
        assert_eq!(
            decode(KEY, &[b' '; 2000], 1000).expect_err("too large"),
            DecodeError::TooLarge {
                size: 2000,
                limit: 1000
            }
        );
    }

    #[test]
    fn nulls_are_tolerated_and_the_category_falls_back_to_the_resource() {
        let body = br#"{"resourceUri":null,"changeType":"Updated","newState":null,"eTag":null,"resource":{"uri":"/rest/x/1","category":"server-hardware"}}"#;
        let e = decode("weird.key", body, 1000).expect("decode");
        assert_eq!(e.resource_uri, "/rest/x/1");
        assert_eq!(e.category, "server-hardware");
    }

    #[test]
    fn timestamps_print_like_the_sample() {
        assert_eq!(
            sample_timestamp("2026-11-25T10:00:00.123Z"),
            "2026-11-25 10:00:00"
        );
        assert_eq!(
            sample_timestamp("2018-02-12T20:12:03Z"),
            "2018-02-12 20:12:03"
        );
        assert_eq!(sample_timestamp("garbage"), "garbage");
    }
}
