//! The process's stop signal: SIGTERM or Ctrl-C. Whoever waits on it stops taking new work;
//! what is in hand finishes within its drain time or stays unacked for a redelivery.

use tokio::signal::unix::{signal as unix_signal, Signal, SignalKind};

/// Resolves at the first SIGTERM or SIGINT. The handlers are installed when this is called,
/// not when the future is first polled: a stop that comes early (right after the "subscribed"
/// line, say) is a clean stop, never the default action that kills the process.
pub fn signal() -> impl std::future::Future<Output = ()> {
    let term = unix_signal(SignalKind::terminate()).ok();
    let int = unix_signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wait(term) => {}
            _ = wait(int) => {}
        }
        tracing::info!("stopping: finishing the message in hand");
    }
}
