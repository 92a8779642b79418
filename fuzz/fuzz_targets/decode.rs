//! The SCMB message decoder never panics, whatever the routing key and body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First line: the routing key; the rest: the body.
    let (key, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 1..]),
        None => ("scmb.alerts.Created./rest/alerts/1".to_string(), data),
    };
    if let Ok(ev) = scmb_model::message::decode(&key, body, 1 << 20) {
        let _ = ev.resource();
        let _ = ev.changed_attributes().count();
    }
});
