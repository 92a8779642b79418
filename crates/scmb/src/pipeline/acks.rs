//! Acks over the contiguous prefix of finished deliveries. Work finishes out of order (alerts
//! are worked on in parallel), but an AMQP `multiple` ack covers every delivery up to a tag:
//! so a delivery is acked only once it and every delivery before it are finished, and a
//! delivery whose work did not finish (a stop, a crash) holds back everything after it, which
//! the broker then redelivers. Never is a message acked before its work.
//!
//! Tags belong to one channel: after a reconnect a new [`Acks`] starts, and completions of
//! the old channel's deliveries are recognised by their epoch and ignored.

use std::collections::VecDeque;

/// The deliveries of one channel not acked yet, in arrival order.
#[derive(Debug, Default)]
pub struct Acks {
    /// Tags in arrival order (increasing), with whether their work is finished.
    pending: VecDeque<(u64, bool)>,
    /// The highest tag of the finished prefix, not yet acked to the broker.
    ready: Option<u64>,
    /// How many deliveries that ack will cover.
    ready_count: u64,
}

impl Acks {
    /// A delivery arrived; its work starts.
    pub fn received(&mut self, tag: u64) {
        debug_assert!(self.pending.back().is_none_or(|(t, _)| *t < tag));
        self.pending.push_back((tag, false));
    }

    /// The work of `tag` is finished (done, recorded, or rejected). Unknown tags are ignored.
    pub fn finished(&mut self, tag: u64) {
        let at = self.pending.partition_point(|(t, _)| *t < tag);
        if let Some(entry) = self.pending.get_mut(at).filter(|(t, _)| *t == tag) {
            entry.1 = true;
        }
        while let Some(&(t, true)) = self.pending.front() {
            self.pending.pop_front();
            self.ready = Some(t);
            self.ready_count += 1;
        }
    }

    /// How many finished deliveries wait for their ack.
    pub fn ready(&self) -> u64 {
        self.ready_count
    }

    /// The tag to ack with `multiple` now, and how many deliveries it covers.
    pub fn take(&mut self) -> Option<(u64, u64)> {
        let tag = self.ready.take()?;
        let n = std::mem::take(&mut self.ready_count);
        Some((tag, n))
    }

    /// Deliveries received whose ack is not yet possible.
    pub fn unfinished(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_finished_out_of_order_waits_for_the_ones_before_it() {
        let mut a = Acks::default();
        for t in 1..=4 {
            a.received(t);
        }
        a.finished(3);
        a.finished(2);
        assert_eq!(a.take(), None, "1 is not finished: nothing may be acked");
        a.finished(1);
        assert_eq!(a.take(), Some((3, 3)), "1..=3 in one multiple ack");
        assert_eq!(a.take(), None);
        a.finished(4);
        assert_eq!((a.ready(), a.take()), (1, Some((4, 1))));
        assert_eq!(a.unfinished(), 0);
    }

    #[test]
    fn an_unfinished_delivery_holds_back_every_later_ack() {
        let mut a = Acks::default();
        for t in [10, 11, 12] {
            a.received(t);
        }
        a.finished(11);
        a.finished(12);
        a.finished(99); // another channel's tag: ignored
        assert_eq!(a.take(), None);
        assert_eq!(a.unfinished(), 3);
    }
}
