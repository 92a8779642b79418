//! Durations as people write them, the one form every setting takes: `30s`, `10m`, `24h`,
//! `7d`, `1h 30m` (the `humantime` grammar). Older spellings (a bare number of seconds, the
//! `*_secs` keys and flags) keep working and say once, as a warning, how to write them now.

use std::time::Duration;

/// Parses a human duration; a bare number of seconds is accepted as the deprecated spelling
/// of `what` and noted (see [`crate::telemetry::deprecated`]).
pub fn parse(what: &str, s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s
            .parse()
            .map_err(|_| format!("{what} {s:?}: the number is too large"))?;
        crate::telemetry::deprecated(format!(
            "{what} {s}: a bare number of seconds is deprecated; write {s}s (durations take 30s, 10m, 24h)"
        ));
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{what} {s:?}: {e}; write a duration like 30s, 10m or 24h"))
}

/// How far back the first start catches up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookBack {
    /// Nothing before the start.
    None,
    /// Every active alert.
    All,
    /// Alerts modified within this window before the start.
    Window(Duration),
}

impl LookBack {
    /// `none`, `all`, or a duration (`24h`, `90m`, `7d`).
    pub fn parse(s: &str) -> Result<LookBack, String> {
        match s.trim() {
            "all" => Ok(LookBack::All),
            "none" | "0" => Ok(LookBack::None),
            d => humantime::parse_duration(d)
                .map(LookBack::Window)
                .map_err(|_| {
                    format!("look-back {s:?}: use all, none, or a duration like 24h, 90m, 7d")
                }),
        }
    }

    /// The default of a command: a ticketing sink must not miss what was already active when
    /// it first starts (`all`); a printer starts from now (`none`).
    pub fn default_for(ticketing: bool) -> LookBack {
        if ticketing {
            LookBack::All
        } else {
            LookBack::None
        }
    }
}

/// A duration in the config file: `"10m"`, or (deprecated) a bare number of seconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Secs(u64),
    Text(String),
}

impl DurationValue {
    /// The duration; `key` names the setting in errors and deprecation warnings.
    pub fn resolve(&self, key: &str) -> Result<Duration, String> {
        match self {
            DurationValue::Text(t) => parse(key, t),
            DurationValue::Secs(n) => parse(key, &n.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_one_human_form_and_bare_seconds_still_work() {
        assert_eq!(parse("heartbeat", "30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("keep_alive", "10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("x", "24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("x", "1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse("x", "600"), Ok(Duration::from_secs(600)));
        let e = parse("retry_cap", "10 minuts").expect_err("typo");
        assert!(e.contains("retry_cap") && e.contains("10m"), "{e}");
        assert_eq!(
            DurationValue::Secs(5).resolve("heartbeat"),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            DurationValue::Text("5s".into()).resolve("heartbeat"),
            Ok(Duration::from_secs(5))
        );
    }

    #[test]
    fn look_back_takes_all_none_or_a_duration() {
        assert_eq!(LookBack::parse("all"), Ok(LookBack::All));
        assert_eq!(LookBack::parse("none"), Ok(LookBack::None));
        assert_eq!(
            LookBack::parse("24h"),
            Ok(LookBack::Window(Duration::from_secs(86_400)))
        );
        assert_eq!(
            LookBack::parse("7d"),
            Ok(LookBack::Window(Duration::from_secs(7 * 86_400)))
        );
        assert!(LookBack::parse("soon").is_err());
        assert!(LookBack::parse("5y5").is_err());
    }

    #[test]
    fn ticketing_looks_back_at_everything_by_default_and_printing_at_nothing() {
        assert_eq!(LookBack::default_for(true), LookBack::All);
        assert_eq!(LookBack::default_for(false), LookBack::None);
    }
}
