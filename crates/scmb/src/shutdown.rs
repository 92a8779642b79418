//! The process's stop signal: SIGTERM or Ctrl-C. Whoever waits on it stops taking new work;
//! what is in hand finishes within its drain time or stays unacked for a redelivery.

/// Resolves at the first SIGTERM or SIGINT.
pub async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("stopping: finishing the message in hand");
}
