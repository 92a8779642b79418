//! Timestamps as OneView writes them: ISO-8601 UTC with milliseconds and `Z`
//! (`2026-11-25T10:00:00.123Z`). eTags are timestamps too, so they must never repeat: the
//! [`Clock`] hands out strictly increasing instants even when called twice in one millisecond.
//! It can run off ours by a fixed offset (`--clock-offset`), like an appliance whose clock is
//! not synchronised: every time the simulated appliance writes or answers (`created`,
//! `modified`, eTags, the `Date` header) is then off by it.

use std::sync::atomic::{AtomicI64, Ordering};
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
    /// How far the appliance's clock is off ours, in milliseconds (negative: behind).
    offset_ms: AtomicI64,
}

impl Clock {
    /// Sets how far this clock is off ours (negative: behind).
    pub fn set_offset_ms(&self, ms: i64) {
        self.offset_ms.store(ms, Ordering::Relaxed);
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// The appliance's now.
    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::milliseconds(self.offset_ms())
    }

    /// The appliance's now, the OneView way.
    pub fn now_ms(&self) -> String {
        format_ms(self.now())
    }

    pub fn next(&self) -> String {
        let now = self.now().unix_timestamp_nanos() / 1_000_000;
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

    #[test]
    fn an_offset_clock_runs_behind_ours() {
        let c = Clock::default();
        c.set_offset_ms(-15 * 60 * 1000);
        let behind = c.now();
        let ours = OffsetDateTime::now_utc();
        assert!(ours - behind > time::Duration::minutes(14));
        assert!(c.next() < now_ms());
    }
}
