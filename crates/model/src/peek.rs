//! The hot path's decoder: validates a delivery exactly as [`crate::message::decode`] does,
//! but reads only the fields the filter needs, borrowed from the body (no tree, no copies
//! unless a string carries escapes). Most messages stop here: only the admitted ones are
//! decoded in full for printing.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::message::{ChangeType, DecodeError};

/// A JSON value that should be a string: a string, null/absent, or something else (an error
/// for the fields that must be strings, ignored for the rest).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Loose<'a> {
    #[default]
    Null,
    Str(Cow<'a, str>),
    Other,
}

impl<'a> Loose<'a> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Loose::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The string, `None` for null, an error for anything else.
    fn strict(&self, field: &'static str) -> Result<Option<&str>, DecodeError> {
        match self {
            Loose::Null => Ok(None),
            Loose::Str(s) => Ok(Some(s)),
            Loose::Other => Err(DecodeError::Field {
                field,
                problem: "not a string",
            }),
        }
    }
}

struct LooseVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for LooseVisitor<'a> {
    type Value = Loose<'a>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Owned(v.to_string())))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Loose::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Loose::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Loose::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Loose::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Loose::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Loose::Other)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Loose<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor(std::marker::PhantomData))
    }
}

/// The alert fields the filter reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawResource<'a> {
    #[serde(borrow)]
    uri: Loose<'a>,
    #[serde(borrow)]
    category: Loose<'a>,
    #[serde(borrow)]
    severity: Loose<'a>,
    #[serde(borrow, rename = "alertState")]
    alert_state: Loose<'a>,
    #[serde(borrow, rename = "alertTypeID")]
    alert_type_id: Loose<'a>,
}

/// `resource`: an object, null/absent, or something else (an error).
#[derive(Debug, Default)]
enum ResourceField<'a> {
    #[default]
    Null,
    Object(RawResource<'a>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for ResourceField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ResourceField<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object or null")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawResource::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ResourceField::Object)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(ResourceField::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(ResourceField::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ResourceField::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ResourceField::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ResourceField::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ResourceField::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ResourceField::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ResourceField::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `changedAttributes`, reduced to what the escalation filter asks: does it list `severity`?
#[derive(Debug, Default)]
struct SeverityChanged(bool);

impl<'de> Deserialize<'de> for SeverityChanged {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SeverityChanged;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut found = false;
                while let Some(v) = seq.next_element::<Loose<'_>>()? {
                    found |= v.as_str() == Some("severity");
                }
                Ok(SeverityChanged(found))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(SeverityChanged(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(SeverityChanged(false))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(SeverityChanged(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(SeverityChanged(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(SeverityChanged(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(SeverityChanged(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(SeverityChanged(false))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawEnvelope<'a> {
    #[serde(borrow, rename = "changeType")]
    change_type: Loose<'a>,
    #[serde(borrow, rename = "resourceUri")]
    resource_uri: Loose<'a>,
    #[serde(borrow, rename = "eTag")]
    etag: Loose<'a>,
    #[serde(borrow)]
    timestamp: Loose<'a>,
    #[serde(borrow, rename = "newState")]
    new_state: Loose<'a>,
    #[serde(rename = "changedAttributes")]
    changed: SeverityChanged,
    #[serde(borrow)]
    resource: ResourceField<'a>,
}

/// What the filter needs of a message, borrowed from its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek<'a> {
    pub category: Cow<'a, str>,
    pub change_type: ChangeType,
    pub resource_uri: Cow<'a, str>,
    pub etag: Option<Cow<'a, str>>,
    pub severity: Option<Cow<'a, str>>,
    pub alert_state: Option<Cow<'a, str>>,
    pub alert_type_id: Option<Cow<'a, str>>,
    /// `changedAttributes` lists `severity`.
    pub severity_changed: bool,
    /// `newState` (`Cleared` when an alert was cleared).
    pub new_state: Option<Cow<'a, str>>,
}

impl Peek<'_> {
    pub fn is_alert(&self) -> bool {
        self.category == "alerts"
    }
}

fn opt(l: Loose<'_>) -> Option<Cow<'_, str>> {
    match l {
        Loose::Str(s) => Some(s),
        _ => None,
    }
}

/// Checks a delivery and reads the filter's fields. Accepts and refuses exactly what
/// [`crate::message::decode`] does, with the same reasons.
pub fn peek<'a>(
    routing_key: &'a str,
    body: &'a [u8],
    max_bytes: usize,
) -> Result<Peek<'a>, DecodeError> {
    if body.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            limit: max_bytes,
        });
    }
    let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Err(DecodeError::Empty);
    };
    // Checked once here; parsing the checked text then skips a UTF-8 check per string.
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            return Err(DecodeError::NotUtf8 {
                at: e.valid_up_to(),
            })
        }
    };
    if *first != b'{' {
        // Valid JSON that is not an object, or not JSON at all: let the parser tell which.
        return match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => Err(DecodeError::NotObject),
            Err(e) => Err(DecodeError::NotJson(e.to_string())),
        };
    }
    let raw: RawEnvelope<'a> =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let change_type = match raw.change_type.strict("changeType")? {
        Some(s) => ChangeType::parse(s).ok_or(DecodeError::Field {
            field: "changeType",
            problem: "not Created, Updated or Deleted",
        })?,
        None => {
            return Err(DecodeError::Field {
                field: "changeType",
                problem: "missing",
            })
        }
    };
    let resource = match raw.resource {
        ResourceField::Null => RawResource::default(),
        ResourceField::Object(r) => r,
        ResourceField::Other => {
            return Err(DecodeError::Field {
                field: "resource",
                problem: "not an object",
            })
        }
    };
    raw.resource_uri.strict("resourceUri")?;
    let resource_uri = match (raw.resource_uri, resource.uri) {
        (Loose::Str(u), _) | (_, Loose::Str(u)) => u,
        _ => {
            return Err(DecodeError::Field {
                field: "resourceUri",
                problem: "missing",
            })
        }
    };
    raw.etag.strict("eTag")?;
    raw.timestamp.strict("timestamp")?;
    raw.new_state.strict("newState")?;
    let category = routing_key
        .strip_prefix("scmb.")
        .and_then(|rest| rest.split('.').next())
        .filter(|c| !c.is_empty())
        .map(Cow::Borrowed)
        .or_else(|| opt(resource.category))
        .unwrap_or_default();
    Ok(Peek {
        category,
        change_type,
        resource_uri,
        etag: opt(raw.etag),
        severity: opt(resource.severity),
        alert_state: opt(resource.alert_state),
        alert_type_id: opt(resource.alert_type_id),
        severity_changed: raw.changed.0,
        new_state: opt(raw.new_state),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::decode;
    use crate::Filter;

    /// Bodies of every shape the decoder distinguishes, good and bad.
    fn bodies() -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = Vec::new();
        let alerts = "scmb.alerts.Created./rest/alerts/1";
        let good = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/alert-critical.json"
        ))
        .expect("testdata");
        v.push((alerts.into(), good));
        for body in [
            r#"{"resourceUri":"/rest/alerts/1","changeType":"Created","resource":{"severity":"Critical","alertState":"Active","alertTypeID":"Trap.x"}}"#,
            r#"{"resourceUri":"/rest/alerts/1","changeType":"Updated","changedAttributes":["severity"],"resource":{"severity":"Critical","alertState":"Active"}}"#,
            r#"{"resourceUri":"/rest/alerts/1","changeType":"Updated","changedAttributes":"severity","resource":{"severity":"Warning","alertState":"Locked"}}"#,
            r#"{"changeType":"Created","resource":{"uri":"/rest/alerts/2","severity":"critical","alertState":"active"}}"#,
            r#"{"resourceUri":"/rest/alerts/1","changeType":"Created","resource":null}"#,
            r#"{"resourceUri":"/rest/alerts/1","changeType":"Created","resource":{"severity":null,"alertState":7}}"#,
            r#"{"resourceUri":"/rest/alerts/\u0031","changeType":"Created","resource":{"severity":"Crit\u0069cal","alertState":"Active"}}"#,
            r#"{"resourceUri":"/rest/alerts/1","changeType":"Made"}"#,
            r#"{"resourceUri":"/rest/alerts/1"}"#,
            r#"{"resourceUri":5,"changeType":"Created"}"#,
            r#"{"changeType":"Created","resource":[]}"#,
            r#"{"changeType":"Created","resource":{}}"#,
            r#"{"resourceUri":"/rest/alerts/1","changeType":"Created","eTag":1}"#,
            r#"{"resourceUri":"/rest/alerts/1","changeType":"Created","timestamp":{}}"#,
            r#"{"resourceUri":"/rest/alerts/1","changeType":"Created","newState":[1]}"#,
            r#"[1,2]"#,
            r#""text""#,
            r#"{"resourceUri": "/rest/alerts/1", "changeType": "Created""#,
            "   ",
            "",
            r#"{"resourceUri":"/x","changeType":"Created"} trailing"#,
        ] {
            v.push((alerts.into(), body.as_bytes().to_vec()));
        }
        v.push((
            "scmb.server-hardware.Updated./rest/server-hardware/1".into(),
            br#"{"resourceUri":"/rest/server-hardware/1","changeType":"Updated","resource":{"category":"server-hardware"}}"#.to_vec(),
        ));
        v.push((
            "odd".into(),
            br#"{"resourceUri":"/rest/enclosures/1","changeType":"Created","resource":{"category":"enclosures"}}"#.to_vec(),
        ));
        v.push((alerts.into(), vec![b'{', 0xff, b'}']));
        v
    }

    #[test]
    fn peek_accepts_and_admits_exactly_what_the_full_decoder_does() {
        let filters = [
            Filter::default(),
            Filter {
                escalations: true,
                states: vec!["Active".into(), "Locked".into()],
                severities: vec!["*".into()],
                ..Filter::default()
            },
            Filter {
                categories: vec!["*".into()],
                change_types: vec![ChangeType::Created, ChangeType::Updated],
                alert_types: vec!["Trap.*".into()],
                ..Filter::default()
            },
        ];
        for (rk, body) in bodies() {
            let full = decode(&rk, &body, 1 << 20);
            let quick = peek(&rk, &body, 1 << 20);
            match (&full, &quick) {
                (Ok(e), Ok(p)) => {
                    assert_eq!(e.resource_uri, p.resource_uri, "{rk}");
                    assert_eq!(e.category, p.category, "{rk}");
                    assert_eq!(e.str("eTag"), p.etag.as_deref());
                    for f in &filters {
                        assert_eq!(
                            f.admits(e),
                            f.admits_peek(p),
                            "{f:?} on {}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                }
                (Err(a), Err(b)) => assert_eq!(a, b),
                _ => panic!(
                    "decode {full:?} but peek {quick:?} for {}",
                    String::from_utf8_lossy(&body)
                ),
            }
        }
        assert!(matches!(
            peek("k", b"{}", 1),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn plain_strings_are_borrowed_not_copied() {
        let body = br#"{"resourceUri":"/rest/alerts/9","changeType":"Created","resource":{"severity":"Critical"}}"#;
        let p = peek("scmb.alerts.Created./rest/alerts/9", body, 1 << 20).expect("peek");
        assert!(matches!(p.resource_uri, Cow::Borrowed(_)));
        assert!(matches!(p.severity, Some(Cow::Borrowed(_))));
    }
}
