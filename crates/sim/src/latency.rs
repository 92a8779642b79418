//! Injected latency that lasts what it says.
//!
//! Tokio's timer counts whole milliseconds: it rounds a deadline up to the next millisecond and
//! its poll timeout up again, so `tokio::time::sleep(50 ms)` ends 51 to 52.5 ms later. A
//! simulator configured to answer in 50 ms then answered in about 52.3 ms (measured over 60
//! sequential Service Manager creates), and every benchmark floor, which counts the configured
//! latencies, was short by about 2 ms per call. [`sleep`] arms a `timerfd` instead (nanosecond
//! deadline, woken by the reactor when it fires), so the answer comes within a fraction of a
//! millisecond of the configured latency.

use std::time::Duration;

/// Waits `d`, to a fraction of a millisecond.
pub async fn sleep(d: Duration) {
    if d.is_zero() {
        return;
    }
    let deadline = tokio::time::Instant::now() + d;
    #[cfg(target_os = "linux")]
    if timerfd::wait(d).await.is_ok() {
        return;
    }
    // Without a timerfd: tokio's timer, to the millisecond.
    tokio::time::sleep_until(deadline).await;
}

#[cfg(target_os = "linux")]
mod timerfd {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    /// Arms a one-shot monotonic timerfd for `d` and waits until it fires.
    pub async fn wait(d: Duration) -> io::Result<()> {
        // SAFETY: timerfd_create has no memory preconditions; the result is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero itimerspec is valid (no interval, and padding fields where the
        // target has them).
        let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
        spec.it_value.tv_sec = libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX);
        spec.it_value.tv_nsec = d.subsec_nanos() as _;
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns `fd`, which stays open and the same until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        loop {
            let mut ready = fd.readable().await?;
            let read = ready.try_io(|fd| {
                let mut expirations = [0u8; 8];
                // SAFETY: reads at most 8 bytes into an 8-byte buffer.
                let n = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        expirations.as_mut_ptr().cast(),
                        expirations.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match read {
                Ok(result) => return result,
                // Not fired yet (a spurious wake-up).
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sleep_lasts_at_least_what_it_was_asked() {
        for ms in [1u64, 7, 20] {
            let t = std::time::Instant::now();
            sleep(Duration::from_millis(ms)).await;
            assert!(t.elapsed() >= Duration::from_millis(ms), "{ms} ms");
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_timerfd_is_used_not_the_millisecond_fallback() {
        let t = std::time::Instant::now();
        timerfd::wait(Duration::from_millis(3))
            .await
            .expect("a timerfd armed and read");
        assert!(t.elapsed() >= Duration::from_millis(3));
    }
}
