//! Connecting to the message bus, one policy for every command: the first connection's
//! failure goes to the caller (an exit code, or the service's supervised restart); later a
//! lost connection is re-established with jittered backoff while the failure is transient;
//! certificates the broker refuses are downloaded again with auto-bootstrap; anything else
//! goes to the caller too.

use scmb_bus::BusError;

use super::Pipeline;
use crate::bootstrap;

impl Pipeline {
    /// Subscribes; with `--auto-bootstrap`, downloads the certificates again when the broker
    /// refuses the ones on disk.
    pub(super) async fn subscribe(&self) -> Result<scmb_bus::Subscription, scmb_bus::BusError> {
        match scmb_bus::subscribe(&self.bus).await {
            Err(e) if self.refresh_certificates(&e).await => scmb_bus::subscribe(&self.bus).await,
            other => other,
        }
    }

    async fn refresh_certificates(&self, e: &BusError) -> bool {
        match (&self.session, self.auto_bootstrap) {
            (Some(session), true) => {
                bootstrap::refresh_certificates(session, &self.cert_dir, e).await
            }
            _ => false,
        }
    }
}

/// Whether waiting and trying again could help.
pub(crate) fn transient(e: &BusError) -> bool {
    matches!(
        e,
        BusError::Unreachable { .. } | BusError::Amqp(_) | BusError::Handshake { .. }
    )
}
