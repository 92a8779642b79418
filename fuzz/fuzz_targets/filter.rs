//! The filter never panics on any decodable message, and the alert view never panics on any
//! resource shape.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scmb_model::{AlertView, Filter};

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = scmb_model::message::decode("scmb.alerts.Updated./rest/alerts/1", data, 1 << 20) {
        let wide = Filter {
            severities: vec!["*".into()],
            states: vec!["Active".into(), "Locked".into()],
            escalations: true,
            categories: vec!["*".into()],
            alert_types: vec!["Trap.*".into(), "*Fan*".into()],
            ..Filter::default()
        };
        let _ = Filter::default().admits(&ev);
        let _ = wide.admits(&ev);
        let a = AlertView(ev.resource());
        let _ = (a.severity(), a.resource_name(), a.change_log(), a.description());
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = scmb_model::filter::glob(s, "Trap.cpqHe4FltTolPowerSupplyFailed");
    }
});
