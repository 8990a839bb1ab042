//! Guest output: `airssys:component/logging` lines and the guest's stdout and stderr go to the
//! agent's `tracing` output (target `guest`) with the component's identity. What one instance
//! can make the agent log is bounded twice, for all three together: a line is cut at
//! [`MAX_LINE`] characters, and an instance gets [`LogBudget::LINES`] lines and
//! [`LogBudget::BYTES`] bytes per [`LogBudget::WINDOW`]; past that its lines are counted, not
//! written, and the count is logged once the next window opens. A guest looping on `log` or
//! `println!` would otherwise turn the agent's own log (and the node's disk) into its output
//! channel.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::HostState;
use crate::bindings::airssys::component::logging::{Host, Level};
use crate::id::ComponentId;

/// One instance's log budget, shared by the logging interface and its stdout and stderr.
pub(crate) type SharedLogBudget = Arc<Mutex<LogBudget>>;

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

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
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

/// Where a guest line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Log(Level),
    Stdout,
    Stderr,
}

/// Writes one guest line to the agent's log, within the instance's budget.
fn emit(budget: &SharedLogBudget, component: &ComponentId, origin: Origin, message: &str) {
    let line = match message.char_indices().nth(MAX_LINE) {
        Some((cut, _)) => &message[..cut],
        None => message,
    };
    let admit = budget
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit(line.len(), Instant::now());
    let suppressed = match admit {
        LogAdmit::Suppress => return,
        LogAdmit::Write { suppressed_before } => suppressed_before,
    };
    if suppressed > 0 {
        tracing::warn!(target: "guest", %component, suppressed, "guest log lines suppressed: over the instance's log budget");
    }
    match origin {
        Origin::Log(Level::Trace) => tracing::trace!(target: "guest", %component, "{line}"),
        Origin::Log(Level::Debug) => tracing::debug!(target: "guest", %component, "{line}"),
        Origin::Log(Level::Info) => tracing::info!(target: "guest", %component, "{line}"),
        Origin::Log(Level::Warn) => tracing::warn!(target: "guest", %component, "{line}"),
        Origin::Log(Level::Error) => tracing::error!(target: "guest", %component, "{line}"),
        Origin::Stdout => tracing::info!(target: "guest", %component, stream = "stdout", "{line}"),
        Origin::Stderr => tracing::warn!(target: "guest", %component, stream = "stderr", "{line}"),
    }
}

impl Host for HostState {
    async fn log(&mut self, level: Level, message: String) {
        emit(
            &self.log_budget,
            &self.scope.id,
            Origin::Log(level),
            &message,
        );
    }
}

/// A guest's stdout or stderr: bytes are split into lines and each line goes through
/// [`emit`] (so the shared budget bounds it). A line longer than [`MAX_LINE`] is written in
/// pieces; a partial last line is written when the instance ends.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    inner: Arc<Mutex<LineBuffer>>,
}

struct LineBuffer {
    budget: SharedLogBudget,
    component: ComponentId,
    origin: Origin,
    pending: Vec<u8>,
}

impl LineBuffer {
    fn push(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.append(&rest[..nl]);
            self.flush_line();
            rest = &rest[nl + 1..];
        }
        self.append(rest);
    }

    /// Adds bytes to the current line; a line reaching [`MAX_LINE`] bytes is written as is.
    fn append(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = bytes
                .len()
                .min(MAX_LINE.saturating_sub(self.pending.len()).max(1));
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() >= MAX_LINE {
                self.flush_line();
            }
        }
    }

    fn flush_line(&mut self) {
        let raw = std::mem::take(&mut self.pending);
        let text = String::from_utf8_lossy(&raw);
        let line = text.trim_end_matches('\r');
        emit(&self.budget, &self.component, self.origin, line);
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.flush_line();
        }
    }
}

impl std::fmt::Debug for GuestOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestOutput").finish_non_exhaustive()
    }
}

impl GuestOutput {
    pub(crate) fn new(budget: SharedLogBudget, component: ComponentId, origin: Origin) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LineBuffer {
                budget,
                component,
                origin,
                pending: Vec::new(),
            })),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(bytes);
    }
}

/// Most bytes one `write` may carry (what `check-write` grants).
const WRITE_PERMIT: usize = 64 << 10;

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
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
    fn stdout_is_split_into_lines_that_share_the_instance_budget() {
        let budget = SharedLogBudget::default();
        let out = GuestOutput::new(budget.clone(), ComponentId::new("ns", "c"), Origin::Stdout);
        let lines = || budget.lock().unwrap().lines;
        out.write_bytes(b"one\ntwo\nthr");
        assert_eq!(
            lines(),
            2,
            "complete lines are written, the partial one waits"
        );
        out.write_bytes(b"ee\n");
        assert_eq!(lines(), 3);
        // A line with no newline is cut at MAX_LINE bytes.
        out.write_bytes(&vec![b'x'; MAX_LINE * 2 + 10]);
        assert_eq!(lines(), 5);
        // The rest is written when the instance (its last stream handle) goes.
        drop(out);
        assert_eq!(lines(), 6);
        // Once the window's lines are spent, stdout is suppressed like `log`.
        let noisy = GuestOutput::new(budget.clone(), ComponentId::new("ns", "c"), Origin::Stderr);
        noisy.write_bytes(&b"spam\n".repeat(LogBudget::LINES as usize));
        assert_eq!(lines(), LogBudget::LINES);
        assert!(budget.lock().unwrap().suppressed >= 6);
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
