//! A local OCI registry (go-containerregistry's `cmd/registry`, in memory) on loopback.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::Error;
use crate::process::{DirWatchdog, Supervised};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running registry; stopped (and its contents gone) on drop. Plain HTTP, so clients need
/// their insecure/plain-http switch (`oras --plain-http`, `cosign --allow-insecure-registry`).
#[derive(Debug)]
pub struct Registry {
    process: Supervised,
    address: String,
    watchdog: DirWatchdog,
    _dir: TempDir,
}

impl Registry {
    /// Starts a registry on a free port (the registry picks it and logs it, so no race).
    pub async fn start() -> Result<Registry, Error> {
        let bin = crate::tool_path("registry")?;
        let dir = tempfile::Builder::new()
            .prefix("airssys-registry-")
            .tempdir()
            .map_err(Error::io("creating the registry's temp dir"))?;
        let watchdog = DirWatchdog::spawn(dir.path())?;
        let log = dir.path().join("registry.log");
        let mut cmd = Command::new(bin);
        cmd.args(["-port", "0"]);
        let mut process = Supervised::spawn("registry", cmd, &log)?;

        let deadline = Instant::now() + START_TIMEOUT;
        let port = loop {
            process.check_running()?;
            if let Some(port) = served_port(&process.log_tail(20)) {
                break port;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "the OCI registry to report its port".into(),
                    timeout: START_TIMEOUT,
                    last: process.log_tail(20),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // It listens on "localhost", which Go resolves to IPv4 first; fall back to IPv6.
        let address = ["127.0.0.1", "[::1]"]
            .iter()
            .map(|host| format!("{host}:{port}"))
            .find(|addr| TcpStream::connect(addr.as_str()).is_ok())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "registry reported port {port} but accepts no connection"
                ))
            })?;
        tracing::info!(%address, "OCI registry started");
        Ok(Registry {
            process,
            address,
            watchdog,
            _dir: dir,
        })
    }

    /// `host:port` to use in references, e.g. `{address}/components/hello:v1`.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.process.stop();
        self.watchdog.disarm();
    }
}

/// Parses go-containerregistry's start-up line: `serving on port 12345`.
fn served_port(log: &str) -> Option<u16> {
    log.lines()
        .find_map(|line| line.split("serving on port ").nth(1))
        .and_then(|rest| rest.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::served_port;

    #[test]
    fn reads_the_port_from_the_start_line() {
        assert_eq!(
            served_port("2026/11/26 12:00:00 serving on port 40123\n"),
            Some(40123)
        );
    }

    #[test]
    fn no_port_before_the_start_line() {
        assert_eq!(served_port(""), None);
        assert_eq!(served_port("2026/11/26 starting\n"), None);
    }
}
