//! `airssys:component/logging`: guest log lines go to the agent's `tracing` output with the
//! component's identity. Lines are truncated so a guest cannot flood the log with one call.

use super::HostState;
use crate::bindings::airssys::component::logging::{Host, Level};

/// Longest line kept from a guest.
const MAX_LINE: usize = 4096;

impl Host for HostState {
    async fn log(&mut self, level: Level, message: String) {
        let line = match message.char_indices().nth(MAX_LINE) {
            Some((cut, _)) => &message[..cut],
            None => &message,
        };
        let component = &self.scope.id;
        match level {
            Level::Trace => tracing::trace!(target: "guest", %component, "{line}"),
            Level::Debug => tracing::debug!(target: "guest", %component, "{line}"),
            Level::Info => tracing::info!(target: "guest", %component, "{line}"),
            Level::Warn => tracing::warn!(target: "guest", %component, "{line}"),
            Level::Error => tracing::error!(target: "guest", %component, "{line}"),
        }
    }
}
