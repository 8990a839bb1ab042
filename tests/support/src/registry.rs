//! A local OCI registry on loopback: `tests/cluster/registry`, go-containerregistry's registry
//! handler with manifests in memory, blobs on disk (so a test can change them at rest) and,
//! optionally, the Basic or token authentication real registries demand.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::Error;
use crate::process::{DirWatchdog, Supervised};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How a registry demands credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    /// HTTP Basic on every request (distribution's htpasswd mode): 401 with
    /// `WWW-Authenticate: Basic realm=...` without the right user and password.
    Basic { user: String, password: String },
    /// Docker/OCI token auth (Docker Hub, GHCR, Harbor): 401 with a `Bearer realm=...` challenge;
    /// clients trade the user and password for a token at the realm, then send the token.
    Token { user: String, password: String },
}

impl RegistryAuth {
    /// The user name and password the registry accepts.
    pub fn credentials(&self) -> (&str, &str) {
        match self {
            Self::Basic { user, password } | Self::Token { user, password } => (user, password),
        }
    }

    fn mode(&self) -> &'static str {
        match self {
            Self::Basic { .. } => "basic",
            Self::Token { .. } => "token",
        }
    }
}

/// How [`Registry::start_with`] starts a registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryOptions {
    /// `None`: anyone may pull and push.
    pub auth: Option<RegistryAuth>,
}

/// A running registry; stopped (and its contents gone) on drop. Plain HTTP, so clients need
/// their insecure/plain-http switch (`oras --plain-http`, `cosign --allow-insecure-registry`).
#[derive(Debug)]
pub struct Registry {
    process: Supervised,
    address: String,
    auth: Option<RegistryAuth>,
    blobs: PathBuf,
    watchdog: DirWatchdog,
    /// Forwards an address Pods can reach to the loopback registry ([`Registry::expose`]).
    forward: Option<Forward>,
    _dir: TempDir,
}

impl Registry {
    /// Starts a registry without authentication on a free port (the registry picks it and
    /// logs it, so no race).
    pub async fn start() -> Result<Registry, Error> {
        Self::start_with(RegistryOptions::default()).await
    }

    /// Starts a registry as `options` say, on a free port.
    pub async fn start_with(options: RegistryOptions) -> Result<Registry, Error> {
        let bin = crate::tool_path("registry")?;
        let dir = tempfile::Builder::new()
            .prefix("airssys-registry-")
            .tempdir()
            .map_err(Error::io("creating the registry's temp dir"))?;
        let watchdog = DirWatchdog::spawn(dir.path())?;
        let log = dir.path().join("registry.log");
        let blobs = dir.path().join("blobs");
        let mut cmd = Command::new(bin);
        cmd.args(["--port", "0", "--blobs-dir"]).arg(&blobs);
        if let Some(auth) = &options.auth {
            let (user, password) = auth.credentials();
            cmd.args([
                "--auth",
                auth.mode(),
                "--user",
                user,
                "--password",
                password,
            ]);
        }
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
        let address = format!("127.0.0.1:{port}");
        TcpStream::connect(&address).map_err(Error::io(format!(
            "connecting to the registry, which reported port {port}"
        )))?;
        tracing::info!(%address, auth = ?options.auth.as_ref().map(RegistryAuth::mode), "OCI registry started");
        Ok(Registry {
            process,
            address,
            auth: options.auth,
            blobs,
            watchdog,
            forward: None,
            _dir: dir,
        })
    }

    /// Makes the registry answer on `ip` (a free port) too, and names it by that address from
    /// now on ([`address`](Registry::address)): Pods cannot reach the host's loopback, where
    /// the registry listens, but reach the machine's address. Everyone then uses the one
    /// address, so references (and what cosign signs) are the same for the test and the Pods.
    pub fn expose(&mut self, ip: IpAddr) -> Result<(), Error> {
        let target: SocketAddr = self
            .address
            .parse()
            .map_err(|e| Error::Invalid(format!("registry address {}: {e}", self.address)))?;
        let forward = Forward::start(SocketAddr::new(ip, 0), target)?;
        self.address = forward.address.to_string();
        tracing::info!(address = %self.address, %target, "OCI registry exposed");
        self.forward = Some(forward);
        Ok(())
    }

    /// `host:port` to use in references, e.g. `{address}/components/hello:v1`.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// The authentication this registry demands, if any.
    pub fn auth(&self) -> Option<&RegistryAuth> {
        self.auth.as_ref()
    }

    /// Where the blobs live, as `<algorithm>/<hex>` files.
    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    /// The file holding blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, Error> {
        let (algorithm, hex) = digest
            .split_once(':')
            .filter(|(a, h)| {
                !a.is_empty() && !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .ok_or_else(|| Error::Invalid(format!("{digest:?} is not a blob digest")))?;
        Ok(self.blobs.join(algorithm).join(hex))
    }

    /// Replaces the stored bytes of blob `digest` with `bytes`, as corrupted or tampered storage
    /// would: the registry keeps serving the blob under its old digest. Fails if the registry
    /// does not hold the blob.
    pub fn tamper_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), Error> {
        let path = self.blob_path(digest)?;
        if !path.is_file() {
            return Err(Error::Invalid(format!(
                "the registry holds no blob {digest} (no file {})",
                path.display()
            )));
        }
        std::fs::write(&path, bytes).map_err(Error::io(format!("overwriting {}", path.display())))
    }

    /// A docker config (`{"auths": {...}}`) with `user`/`password` under this registry's
    /// address: the content of a `kubernetes.io/dockerconfigjson` Secret and of
    /// `~/.docker/config.json`. Any user and password, so tests can also write wrong ones.
    pub fn docker_config(&self, user: &str, password: &str) -> String {
        docker_config(&self.address, user, password)
    }

    /// Logs tools run in `dir` in (`run_tool` and `push_wasm` set `HOME` to `dir`, and oras and
    /// cosign read `$HOME/.docker/config.json`). Does nothing for a registry without auth.
    pub fn login(&self, dir: &Path) -> Result<(), Error> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let (user, password) = auth.credentials();
        let docker = dir.join(".docker");
        std::fs::create_dir_all(&docker)
            .map_err(Error::io(format!("creating {}", docker.display())))?;
        let file = docker.join("config.json");
        std::fs::write(&file, self.docker_config(user, password))
            .map_err(Error::io(format!("writing {}", file.display())))
    }
}

/// A docker config JSON with one `auths` entry for `registry`, written the way
/// `docker login` and `kubectl create secret docker-registry` write it (`auth` is base64 of
/// `user:password`).
pub fn docker_config(registry: &str, user: &str, password: &str) -> String {
    serde_json::json!({
        "auths": {
            registry: {
                "username": user,
                "password": password,
                "auth": base64(format!("{user}:{password}").as_bytes()),
            }
        }
    })
    .to_string()
}

/// Standard base64 with padding (RFC 4648), enough for docker configs.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(forward) = &self.forward {
            forward.stop();
        }
        self.process.stop();
        self.watchdog.disarm();
    }
}

/// A TCP forwarder: each connection to `address` is piped to the target, on two threads.
#[derive(Debug)]
struct Forward {
    address: SocketAddr,
    stopped: Arc<AtomicBool>,
}

impl Forward {
    fn start(listen: SocketAddr, target: SocketAddr) -> Result<Forward, Error> {
        let listener =
            TcpListener::bind(listen).map_err(Error::io(format!("listening on {listen}")))?;
        let address = listener
            .local_addr()
            .map_err(Error::io("reading the forwarder's address"))?;
        let stopped = Arc::new(AtomicBool::new(false));
        let stop = stopped.clone();
        std::thread::Builder::new()
            .name("registry-forward".into())
            .spawn(move || {
                for incoming in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(client) = incoming else { continue };
                    match TcpStream::connect(target) {
                        Ok(server) => pipe(client, server),
                        Err(e) => tracing::warn!(%target, error = %e, "registry forward"),
                    }
                }
            })
            .map_err(Error::io("starting the registry forwarder"))?;
        Ok(Forward { address, stopped })
    }

    /// Stops accepting (one connection wakes the accept loop); open connections end with
    /// the registry.
    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
    }
}

/// Copies both ways between `a` and `b` until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let halves = a.try_clone().and_then(|a2| Ok((a2, b.try_clone()?)));
    let Ok((a2, b2)) = halves else { return };
    let one_way = |mut from: TcpStream, mut to: TcpStream| {
        move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        }
    };
    let _ = std::thread::Builder::new()
        .name("registry-forward-up".into())
        .spawn(one_way(a, b));
    let _ = std::thread::Builder::new()
        .name("registry-forward-down".into())
        .spawn(one_way(b2, a2));
}

/// Parses the registry's start-up line: `serving on port 12345`.
fn served_port(log: &str) -> Option<u16> {
    log.lines()
        .find_map(|line| line.split("serving on port ").nth(1))
        .and_then(|rest| rest.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::{base64, docker_config, served_port};

    #[test]
    fn base64_matches_rfc_4648() {
        // The test vectors of RFC 4648 section 10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn docker_config_has_one_entry_for_the_registry() {
        let config: serde_json::Value =
            serde_json::from_str(&docker_config("127.0.0.1:5000", "robot", "s3:cret")).unwrap();
        let entry = &config["auths"]["127.0.0.1:5000"];
        assert_eq!(entry["auth"], "cm9ib3Q6czM6Y3JldA==");
        assert_eq!(entry["username"], "robot");
    }

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
