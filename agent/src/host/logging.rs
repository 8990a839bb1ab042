//! `airssys:component/logging`: guest log lines go to the agent's `tracing` output with the
//! component's identity. What one instance can make the agent log is bounded twice: a line
//! is cut at [`MAX_LINE`] characters, and an instance gets [`LogBudget::LINES`] lines and
//! [`LogBudget::BYTES`] bytes per [`LogBudget::WINDOW`]; past that its lines are counted, not
//! written, and the count is logged once the next window opens. A guest looping on `log`
//! would otherwise turn the agent's own log (and the node's disk) into its output channel.

use std::time::{Duration, Instant};

use super::HostState;
use crate::bindings::airssys::component::logging::{Host, Level};

/// Longest line kept from a guest.
const MAX_LINE: usize = 4096;

/// Per-instance allowance of guest log output.
#[derive(Debug)]
pub(crate) struct LogBudget {
    window_start: Option<Instant>,
    lines: u32,
    bytes: usize,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
enum LogAdmit {
    /// Write it; first say how many lines the previous window suppressed, if any.
    Write {
        suppressed_before: u64,
    },
    Suppress,
}

impl LogBudget {
    pub(crate) const WINDOW: Duration = Duration::from_secs(10);
    pub(crate) const LINES: u32 = 200;
    pub(crate) const BYTES: usize = 256 << 10;

    pub(crate) fn new() -> Self {
        Self {
            window_start: None,
            lines: 0,
            bytes: 0,
            suppressed: 0,
        }
    }

    fn admit(&mut self, len: usize, now: Instant) -> LogAdmit {
        let fresh = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= Self::WINDOW);
        let mut suppressed_before = 0;
        if fresh {
            self.window_start = Some(now);
            self.lines = 0;
            self.bytes = 0;
            suppressed_before = std::mem::take(&mut self.suppressed);
        }
        if self.lines >= Self::LINES || self.bytes.saturating_add(len) > Self::BYTES {
            self.suppressed += 1;
            return LogAdmit::Suppress;
        }
        self.lines += 1;
        self.bytes += len;
        LogAdmit::Write { suppressed_before }
    }
}

impl Host for HostState {
    async fn log(&mut self, level: Level, message: String) {
        let line = match message.char_indices().nth(MAX_LINE) {
            Some((cut, _)) => &message[..cut],
            None => &message,
        };
        let component = &self.scope.id;
        let suppressed = match self.log_budget.admit(line.len(), Instant::now()) {
            LogAdmit::Suppress => return,
            LogAdmit::Write { suppressed_before } => suppressed_before,
        };
        if suppressed > 0 {
            tracing::warn!(target: "guest", %component, suppressed, "guest log lines suppressed: over the instance's log budget");
        }
        match level {
            Level::Trace => tracing::trace!(target: "guest", %component, "{line}"),
            Level::Debug => tracing::debug!(target: "guest", %component, "{line}"),
            Level::Info => tracing::info!(target: "guest", %component, "{line}"),
            Level::Warn => tracing::warn!(target: "guest", %component, "{line}"),
            Level::Error => tracing::error!(target: "guest", %component, "{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_over_the_budget_are_counted_then_reported_in_the_next_window() {
        let mut b = LogBudget::new();
        let t0 = Instant::now();
        for _ in 0..LogBudget::LINES {
            assert!(matches!(b.admit(10, t0), LogAdmit::Write { .. }));
        }
        assert_eq!(b.admit(10, t0), LogAdmit::Suppress);
        assert_eq!(b.admit(10, t0), LogAdmit::Suppress);
        assert_eq!(
            b.admit(10, t0 + LogBudget::WINDOW),
            LogAdmit::Write {
                suppressed_before: 2
            }
        );
    }

    #[test]
    fn bytes_are_bounded_too() {
        let mut b = LogBudget::new();
        let t0 = Instant::now();
        let big = MAX_LINE;
        let fits = LogBudget::BYTES / big;
        for _ in 0..fits {
            assert!(matches!(b.admit(big, t0), LogAdmit::Write { .. }));
        }
        assert_eq!(b.admit(big, t0), LogAdmit::Suppress);
    }
}
