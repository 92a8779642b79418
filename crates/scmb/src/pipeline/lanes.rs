//! Lanes: events worked on in parallel, except that the events of one alert run one after
//! another, in arrival order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use scmb_model::Event;
use tokio::sync::{mpsc, Semaphore};

use super::Shared;
use crate::failure::Failure;

/// A delivery's place in the ack order: the channel's epoch and the delivery tag.
pub(super) type Ticket = (u64, u64);

/// Where an event came from.
#[derive(Debug, Clone)]
pub(super) enum Origin {
    /// A delivery, with its ticket for the ack (whether an earlier run may have seen it is the
    /// event's [`Event::first_sight`]).
    Bus(Ticket),
    /// The REST catch-up, which counts what it fed until it is finished.
    CatchUp(Arc<Fed>),
}

/// What one catch-up fed and is not finished yet: its checkpoint waits for this, not for every
/// lane to be idle (a barrier over all lanes would hold back every delivery behind it).
#[derive(Debug, Default)]
pub(super) struct Fed {
    pending: std::sync::atomic::AtomicUsize,
    settled: tokio::sync::Notify,
}

impl Fed {
    /// One more event fed.
    pub(super) fn add(&self) {
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// One fed event finished (an interrupted or failed one never is).
    fn done(&self) {
        if self
            .pending
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.settled.notify_waiters();
        }
    }

    /// Resolves once every event fed is finished.
    pub(super) async fn settled(&self) {
        loop {
            let wake = self.settled.notified();
            if self.pending.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            wake.await;
        }
    }
}

type Item = (Origin, Event);

/// Runs events with at most `lanes` in work at once, any free lane taking the next event,
/// except that the events of one alert (uri) run one after another, in arrival order: an
/// event whose alert is in work waits behind it. (Fixed lanes by a hash of the uri keep alerts
/// in order too, but a storm spreads unevenly over them and the busiest lane sets the pace.)
pub(super) struct Dispatcher {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    lanes: u32,
    /// Alerts in work, with the events waiting behind them.
    busy: Arc<Mutex<HashMap<String, VecDeque<Item>>>>,
    fatal: mpsc::Sender<Failure>,
    /// Where finished deliveries are reported, for their ack.
    finished: mpsc::UnboundedSender<Ticket>,
}

impl Dispatcher {
    pub(super) fn new(
        shared: Arc<Shared>,
        lanes: usize,
        fatal: mpsc::Sender<Failure>,
        finished: mpsc::UnboundedSender<Ticket>,
    ) -> Dispatcher {
        let lanes = lanes.clamp(1, 4096) as u32;
        Dispatcher {
            shared,
            permits: Arc::new(Semaphore::new(lanes as usize)),
            lanes,
            busy: Arc::new(Mutex::new(HashMap::new())),
            fatal,
            finished,
        }
    }

    /// Queues `ev` behind its alert's events in work, or starts it once a lane is free.
    pub(super) async fn dispatch(&self, origin: Origin, ev: Event) {
        let mut item = Some((origin, ev));
        let uri = item
            .as_ref()
            .map(|i| i.1.resource_uri.clone())
            .unwrap_or_default();
        if self.wait_behind(&uri, &mut item, false) {
            return;
        }
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        if self.wait_behind(&uri, &mut item, true) {
            return;
        }
        let shared = self.shared.clone();
        let busy = self.busy.clone();
        let fatal = self.fatal.clone();
        let finished = self.finished.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let mut next = item;
            while let Some((origin, ev)) = next.take() {
                match shared.handle(&ev, &origin).await {
                    Ok(true) => match &origin {
                        // The consumer acks it once every delivery before it is finished.
                        Origin::Bus(ticket) => {
                            let _ = finished.send(*ticket);
                        }
                        Origin::CatchUp(fed) => fed.done(),
                    },
                    Ok(false) => {} // interrupted by a stop: left unacked
                    Err(f) => {
                        if let Ok(mut b) = busy.lock() {
                            b.remove(&uri);
                        }
                        let _ = fatal.try_send(f);
                        return;
                    }
                }
                if let Ok(mut b) = busy.lock() {
                    next = b.get_mut(&uri).and_then(VecDeque::pop_front);
                    if next.is_none() {
                        b.remove(&uri);
                    }
                }
            }
            drop(permit);
        }));
    }

    /// Puts the item behind its alert's events in work (true); else, with `claim`, marks the
    /// alert in work (false: the caller runs it).
    fn wait_behind(&self, uri: &str, item: &mut Option<Item>, claim: bool) -> bool {
        let Ok(mut busy) = self.busy.lock() else {
            return false;
        };
        match (busy.get_mut(uri), item.take()) {
            (Some(waiting), Some(i)) => {
                waiting.push_back(i);
                true
            }
            (None, i) => {
                if claim {
                    busy.insert(uri.to_string(), VecDeque::new());
                }
                *item = i;
                false
            }
            (Some(_), None) => true,
        }
    }

    /// Resolves when nothing is in work (every lane free).
    pub(super) async fn idle(&self) {
        let _ = self.permits.acquire_many(self.lanes).await;
    }
}
