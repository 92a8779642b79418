//! The listener: subscribe, decode, filter, print, and only then ack. A malformed message is
//! logged with its reason, counted and rejected without requeue; it never stops the consumer.
//! A lost connection is re-established with jittered, capped exponential backoff (the first
//! connection must succeed: its failure is reported to the user at once).

use std::io::IsTerminal;
use std::time::Duration;

use scmb_bus::{BusConfig, BusError, Delivery, Subscription};
use scmb_model::message::decode;
use scmb_model::Filter;

use crate::cli::Output;
use crate::failure::Failure;
use crate::output::Printer;

/// Counters of one run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub received: u64,
    pub printed: u64,
    pub malformed: u64,
    pub reconnects: u64,
}

pub struct Listener {
    pub bus: BusConfig,
    pub filter: Filter,
    pub output: Output,
    pub max_bytes: usize,
    /// Stop after printing this many messages.
    pub count: Option<u64>,
}

enum End {
    Shutdown,
    CountReached,
    Lost,
}

fn now() -> String {
    scmb_model::message::format_rfc3339_ms(time::OffsetDateTime::now_utc())
}

/// Delay before reconnect attempt `attempt` (jittered, capped at 30 s).
pub fn backoff(attempt: u32) -> Duration {
    scmb_servicemanager::backoff(attempt, Duration::from_millis(500), Duration::from_secs(30))
}

/// Whether retrying could help.
fn transient(e: &BusError) -> bool {
    matches!(
        e,
        BusError::Unreachable { .. } | BusError::Amqp(_) | BusError::Handshake { .. }
    )
}

impl Listener {
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Stats, Failure> {
        let mut stats = Stats::default();
        let stdout = std::io::stdout();
        let colour = self.output == Output::Human && stdout.is_terminal();
        let mut printer = Printer::new(stdout.lock(), self.output, colour);
        tokio::pin!(shutdown);
        let mut sub = scmb_bus::subscribe(&self.bus).await?;
        loop {
            match self
                .consume(&mut sub, &mut printer, &mut stats, &mut shutdown)
                .await?
            {
                End::Shutdown | End::CountReached => {
                    sub.close().await;
                    return Ok(stats);
                }
                End::Lost => {
                    tracing::warn!(host = %self.bus.host, "connection to the message bus lost; reconnecting");
                }
            }
            let mut attempt = 0;
            sub = loop {
                let wait = backoff(attempt);
                tokio::select! {
                    _ = &mut shutdown => return Ok(stats),
                    _ = tokio::time::sleep(wait) => {}
                }
                match scmb_bus::subscribe(&self.bus).await {
                    Ok(s) => {
                        stats.reconnects += 1;
                        tracing::info!(
                            reconnects = stats.reconnects,
                            "reconnected to the message bus"
                        );
                        break s;
                    }
                    Err(e) if transient(&e) => {
                        attempt += 1;
                        tracing::warn!(error = %e, retry_in_ms = backoff(attempt).as_millis() as u64, "reconnect failed");
                    }
                    Err(e) => return Err(e.into()),
                }
            };
        }
    }

    async fn consume<W: std::io::Write>(
        &self,
        sub: &mut Subscription,
        printer: &mut Printer<W>,
        stats: &mut Stats,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<End, Failure> {
        loop {
            let d = tokio::select! {
                _ = shutdown.as_mut() => return Ok(End::Shutdown),
                d = sub.next() => d,
            };
            let Some(d) = d else { return Ok(End::Lost) };
            stats.received += 1;
            self.handle(&d, printer, stats).await?;
            if self.count.is_some_and(|c| stats.printed >= c) {
                return Ok(End::CountReached);
            }
        }
    }

    async fn handle<W: std::io::Write>(
        &self,
        d: &Delivery,
        printer: &mut Printer<W>,
        stats: &mut Stats,
    ) -> Result<(), Failure> {
        match decode(&d.routing_key, &d.body, self.max_bytes) {
            Err(reason) => {
                stats.malformed += 1;
                tracing::warn!(routing_key = %d.routing_key, bytes = d.body.len(), error = %reason, malformed = stats.malformed, "malformed message rejected");
                if let Err(e) = d.reject().await {
                    tracing::error!(error = %e, "reject failed");
                }
            }
            Ok(ev) => {
                if self.filter.admits(&ev) {
                    if let Err(e) = printer.print(&ev, &now()) {
                        // Not acked: the broker redelivers it to whoever listens next.
                        return Err(Failure::new(
                            crate::failure::UNEXPECTED,
                            format!("cannot write the output: {e}"),
                        ));
                    }
                    stats.printed += 1;
                }
                if let Err(e) = d.ack().await {
                    tracing::error!(error = %e, routing_key = %d.routing_key, "ack failed; the message will be redelivered");
                }
            }
        }
        Ok(())
    }
}
