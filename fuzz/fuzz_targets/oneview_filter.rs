//! The simulator's OneView filter parser never panics, and a parsed filter evaluates on any JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(expr) = scmb_sim::filter::parse(s) {
            let v = serde_json::json!({"alertState": "Active", "severity": "Critical", "count": 7,
                "created": "2026-11-25T10:00:00.000Z", "associatedResource": {"resourceName": null}});
            let _ = expr.matches(&v);
        }
    }
});
