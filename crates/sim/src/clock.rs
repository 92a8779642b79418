//! Timestamps as OneView writes them: ISO-8601 UTC with milliseconds and `Z`
//! (`2026-11-25T10:00:00.123Z`). eTags are timestamps too, so they must never repeat: the
//! [`Clock`] hands out strictly increasing instants even when called twice in one millisecond.

use std::sync::Mutex;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

const MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Formats an instant the OneView way.
pub fn format_ms(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(MILLIS)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// Now, the OneView way.
pub fn now_ms() -> String {
    format_ms(OffsetDateTime::now_utc())
}

/// Hands out strictly increasing millisecond timestamps.
#[derive(Debug, Default)]
pub struct Clock {
    last_ms: Mutex<i128>,
}

impl Clock {
    pub fn next(&self) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let ms = {
            let mut last = self.last_ms.lock().unwrap_or_else(|p| p.into_inner());
            *last = (*last + 1).max(now);
            *last
        };
        let t = OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        format_ms(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_never_repeats_and_has_milliseconds() {
        let c = Clock::default();
        let a = c.next();
        let b = c.next();
        assert!(b > a, "{b} should sort after {a}");
        assert_eq!(a.len(), "2026-11-25T10:00:00.123Z".len());
        assert!(a.ends_with('Z'));
    }
}
