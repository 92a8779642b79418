//! Printing admitted messages: the HPE sample's fields, aligned (colour only on a terminal), or
//! one JSON object per line for jq and log shippers. Output is buffered and flushed once per
//! message, so a reader sees each alert as it arrives.

use std::io::Write;

use scmb_model::message::sample_timestamp;
use scmb_model::{AlertView, Event};
use serde_json::{json, Value};

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// The sample's fields, aligned; colour on a terminal.
    #[default]
    Human,
    /// One JSON object per line: routing key, receive time, the whole message.
    Json,
}

impl std::str::FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Output, String> {
        match s {
            "human" => Ok(Output::Human),
            "json" => Ok(Output::Json),
            _ => Err(format!("{s:?}: use human or json")),
        }
    }
}

/// Prints `ev` through a shared printer, stamped with the time now; a failure to write is
/// the sink's error (the delivery is not acked: it comes again, or the catch-up finds it).
pub fn print_to<W: Write>(
    p: &std::sync::Mutex<Printer<W>>,
    ev: &Event,
    sink: &'static str,
) -> Result<(), crate::sinks::SinkError> {
    let mut p = p.lock().map_err(|_| {
        crate::sinks::SinkError::new(sink, crate::failure::UNEXPECTED, "an output sink panicked")
    })?;
    print_with(&mut p, ev, sink)
}

/// Prints `ev` stamped with the time now.
pub fn print_with<W: Write>(
    p: &mut Printer<W>,
    ev: &Event,
    sink: &'static str,
) -> Result<(), crate::sinks::SinkError> {
    let now = scmb_model::message::format_rfc3339_ms(time::OffsetDateTime::now_utc());
    let written = match &ev.raw {
        // The body as it came: no second serialisation.
        Some(raw) if p.format == Output::Json => p.print_delivery(&ev.routing_key, raw, &now),
        _ => p.print(ev, &now),
    };
    written.map_err(|e| {
        crate::sinks::SinkError::new(
            sink,
            crate::failure::UNEXPECTED,
            format!("cannot write the output: {e}"),
        )
    })
}

pub struct Printer<W: Write> {
    out: std::io::BufWriter<W>,
    format: Output,
    colour: bool,
    /// The appliance this printer speaks for (`scmb run`): every human line is prefixed with
    /// `[label] `, every JSON line carries `"appliance"`.
    label: Option<String>,
}

const NA: &str = "n/a";

fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => NA.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

impl<W: Write> Printer<W> {
    pub fn new(w: W, format: Output, colour: bool) -> Self {
        Printer {
            out: std::io::BufWriter::with_capacity(16 * 1024, w),
            format,
            colour,
            label: None,
        }
    }

    /// Marks every line with the appliance it comes from.
    pub fn with_label(mut self, label: &str) -> Self {
        self.label = Some(label.to_string());
        self
    }

    /// Prints one message and flushes it.
    pub fn print(&mut self, e: &Event, received_at: &str) -> std::io::Result<()> {
        match (self.format, &self.label) {
            (Output::Human, Some(label)) => {
                // Rendered unlabelled, then each line prefixed.
                let mut inner = Printer::new(Vec::with_capacity(1024), Output::Human, self.colour);
                inner.print(e, received_at)?;
                let text = inner.out.into_inner().map_err(|e| e.into_error())?;
                for line in text.split_inclusive(|b| *b == b'\n') {
                    write!(self.out, "[{label}] ")?;
                    self.out.write_all(line)?;
                }
            }
            (Output::Json, Some(label)) => {
                let line = json!({"appliance": label, "routingKey": e.routing_key, "receivedAt": received_at, "message": e.body()});
                serde_json::to_writer(&mut self.out, &line)?;
                self.out.write_all(b"\n")?;
            }
            (Output::Json, None) => {
                let line = json!({"routingKey": e.routing_key, "receivedAt": received_at, "message": e.body()});
                serde_json::to_writer(&mut self.out, &line)?;
                self.out.write_all(b"\n")?;
            }
            (Output::Human, None) if e.is_alert() => self.alert(e)?,
            (Output::Human, None) => self.generic(e)?,
        }
        self.out.flush()
    }

    /// Prints a delivery whose body is known to be valid JSON: in JSON mode the body is
    /// written as it came (no tree, no copy) unless it spans lines; otherwise it is decoded.
    pub fn print_delivery(
        &mut self,
        routing_key: &str,
        body: &[u8],
        received_at: &str,
    ) -> std::io::Result<()> {
        if self.format == Output::Json && !body.contains(&b'\n') && !body.contains(&b'\r') {
            self.out.write_all(b"{")?;
            if let Some(label) = &self.label {
                self.out.write_all(b"\"appliance\":")?;
                serde_json::to_writer(&mut self.out, label)?;
                self.out.write_all(b",")?;
            }
            self.out.write_all(b"\"routingKey\":")?;
            serde_json::to_writer(&mut self.out, routing_key)?;
            self.out.write_all(b",\"receivedAt\":")?;
            serde_json::to_writer(&mut self.out, received_at)?;
            self.out.write_all(b",\"message\":")?;
            self.out.write_all(body.trim_ascii())?;
            self.out.write_all(b"}\n")?;
            return self.out.flush();
        }
        match scmb_model::message::decode(routing_key, body, usize::MAX) {
            Ok(e) => self.print(&e, received_at),
            Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
    }

    fn row(&mut self, label: &str, value: &str) -> std::io::Result<()> {
        writeln!(self.out, "  {label:<17} {value}")
    }

    fn severity(&self, sev: &str) -> String {
        if !self.colour {
            return sev.to_string();
        }
        let code = match sev {
            "Critical" => "1;31",
            "Warning" => "33",
            "OK" => "32",
            _ => "0",
        };
        format!("\x1b[{code}m{sev}\x1b[0m")
    }

    fn alert(&mut self, e: &Event) -> std::io::Result<()> {
        let body = e.body();
        let a = AlertView(e.resource());
        let ts = body
            .get("timestamp")
            .and_then(Value::as_str)
            .map(sample_timestamp)
            .unwrap_or_else(|| NA.into());
        let sev = self.severity(a.severity().unwrap_or(NA));
        writeln!(
            self.out,
            "{ts}  {sev}  {}  {}",
            e.change_type.as_str(),
            e.resource_uri
        )?;
        self.row("changeType", e.change_type.as_str())?;
        self.row("data", &text(body.get("data")))?;
        self.row("eTag", &text(body.get("eTag")))?;
        self.row("newState", &text(body.get("newState")))?;
        self.row("resourceUri", &e.resource_uri)?;
        self.row("alertState", a.alert_state().unwrap_or(NA))?;
        self.row("alertTypeID", a.alert_type_id().unwrap_or(NA))?;
        self.row("description", a.description().unwrap_or(NA))?;
        self.row("changeLog", &text(a.change_log()))?;
        self.row("severity", &sev)?;
        self.row("resourceName", a.resource_name().unwrap_or(NA))?;
        self.row("resourceCategory", a.resource_category().unwrap_or(NA))?;
        self.row("uri", a.uri().unwrap_or(NA))?;
        self.row("timestamp", &ts)?;
        writeln!(self.out)
    }

    fn generic(&mut self, e: &Event) -> std::io::Result<()> {
        let body = e.body();
        let r = e.resource();
        let ts = body
            .get("timestamp")
            .and_then(Value::as_str)
            .map(sample_timestamp)
            .unwrap_or_else(|| NA.into());
        writeln!(
            self.out,
            "{ts}  {}  {}  {}",
            e.category,
            e.change_type.as_str(),
            e.resource_uri
        )?;
        self.row("routingKey", &e.routing_key)?;
        self.row("newState", &text(body.get("newState")))?;
        self.row("name", &text(r.get("name")))?;
        self.row("status", &text(r.get("status")))?;
        self.row("changedAttributes", &text(body.get("changedAttributes")))?;
        writeln!(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scmb_model::message::decode;

    #[test]
    fn nulls_print_as_na_and_never_panic() {
        let body = br#"{"resourceUri":"/rest/alerts/1","changeType":"Created","newState":null,"eTag":null,"timestamp":null,"data":null,
            "resource":{"severity":null,"alertState":"Active","description":null,"associatedResource":null,"changeLog":null}}"#;
        let e = decode("scmb.alerts.Created./rest/alerts/1", body, 1 << 20).expect("decode");
        let mut p = Printer::new(Vec::new(), Output::Human, false);
        p.print(&e, "2026-11-25T10:00:00.000Z").expect("print");
        let out = String::from_utf8(p.out.into_inner().expect("flush")).expect("utf8");
        assert!(out.contains("description       n/a"), "{out}");
        assert!(out.contains("resourceName      n/a"), "{out}");
    }

    #[test]
    fn a_delivery_printed_as_it_came_is_the_same_json_as_the_decoded_one() {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/alert-critical.json"
        ))
        .expect("testdata");
        let rk = "scmb.alerts.Created./rest/alerts/1";
        for label in [None, Some("ov-east")] {
            let mut raw = Printer::new(Vec::new(), Output::Json, false);
            let mut full = Printer::new(Vec::new(), Output::Json, false);
            if let Some(l) = label {
                raw = raw.with_label(l);
                full = full.with_label(l);
            }
            let compact =
                serde_json::to_vec(&serde_json::from_slice::<Value>(&body).expect("json"))
                    .expect("compact");
            raw.print_delivery(rk, &compact, "t").expect("raw");
            full.print(&decode(rk, &body, 1 << 20).expect("decode"), "t")
                .expect("full");
            let text = |p: Printer<Vec<u8>>| {
                String::from_utf8(p.out.into_inner().expect("flush")).expect("utf8")
            };
            let (a, b) = (text(raw), text(full));
            assert_eq!(a.lines().count(), 1, "{a}");
            let (a, b): (Value, Value) = (
                serde_json::from_str(&a).expect("raw line"),
                serde_json::from_str(&b).expect("full line"),
            );
            assert_eq!(a, b);
        }
        // A body spanning lines is decoded, so that the output stays one line per message.
        let pretty =
            serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&body).expect("json"))
                .expect("pretty");
        assert!(pretty.contains(&b'\n'));
        let mut p = Printer::new(Vec::new(), Output::Json, false);
        p.print_delivery(rk, &pretty, "t").expect("multi-line body");
        let out = String::from_utf8(p.out.into_inner().expect("flush")).expect("utf8");
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn every_labelled_line_carries_its_appliance() {
        let body = br#"{"resourceUri":"/rest/alerts/7","changeType":"Created","resource":{"severity":"Critical","alertState":"Active"}}"#;
        let e = decode("scmb.alerts.Created./rest/alerts/7", body, 1 << 20).expect("decode");
        let mut p = Printer::new(Vec::new(), Output::Human, false).with_label("ov-east");
        p.print(&e, "2026-11-25T10:00:00.000Z").expect("print");
        let out = String::from_utf8(p.out.into_inner().expect("flush")).expect("utf8");
        assert!(out.lines().count() > 5);
        assert!(out.lines().all(|l| l.starts_with("[ov-east] ")), "{out}");
        let mut j = Printer::new(Vec::new(), Output::Json, false).with_label("ov-east");
        j.print(&e, "t").expect("print");
        let line = String::from_utf8(j.out.into_inner().expect("flush")).expect("utf8");
        let v: Value = serde_json::from_str(line.trim()).expect("json");
        assert_eq!(v["appliance"], "ov-east");
        assert_eq!(v["message"]["resourceUri"], "/rest/alerts/7");
    }
}
