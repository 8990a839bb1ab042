//! The per-instance WASI 0.2 context, built from the grant:
//!
//! - filesystem: one preopen per granted directory, backed by
//!   `<fs_root>/<guest path>`; the guest cannot name anything else. `open-at` is wrapped so
//!   a `..` or absolute path is refused outright and every refusal is audited.
//!   A path outside every preopen (`/etc/passwd` with only `/data` granted, or a relative
//!   `../x` from the root working directory) never reaches the host: wasi-libc resolves
//!   paths against the preopen list inside the guest and fails with `ENOENT` without a host
//!   call, so there is nothing to audit (and no audit event is invented for it). That is
//!   the enforcement itself: a guest can only name descriptors it was handed.
//! - write-only directories: mounted read-write for wasmtime-wasi, with every descriptor
//!   under them marked ([`WRITE_ONLY`]) and the wrappers below refusing anything that reads:
//!   opening for reading, opening a directory, `read`, `read-via-stream`, and also listing
//!   (`read-directory`), `stat`/`stat-at`, `metadata-hash(-at)` and `readlink-at`, because
//!   names, sizes and times are contents too. Moving or linking a file between a
//!   write-only tree and any other (`rename-at`, `link-at`) is refused as well, or a file
//!   could be carried into a readable directory. Creating, writing, appending, truncating,
//!   creating directories and deleting stay allowed: that is what a write grant means.
//!   As in a POSIX `-wx` directory, a guest can still learn whether a name exists from a
//!   failing exclusive create; it cannot list, stat or read anything. A write-only grant
//!   nested in a readable one stays readable (the outer grant covers it).
//!   Every refusal is audited and answered with `not-permitted`, never a trap.
//! - sockets: every connect and datagram destination goes through the grant's
//!   `check_connect`; binding is limited to the wildcard address with an ephemeral port.
//! - outgoing HTTP: [`GrantedHttp`] checks host and port before DNS, resolves, checks the
//!   resolved address (private and loopback ranges need an explicit grant), and connects to
//!   exactly the address it checked ([`send_to`]), for HTTPS too: TLS runs over that
//!   connection with the original host name for SNI and certificate verification, so a
//!   second DNS answer (rebinding) never gets a say.
//! - clocks, random: standard. No env besides the granted keys, no args, no stdio.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use airssys_crds::capability::{NetTarget, covers_normalized};
use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::DynInputStream;
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, DescriptorStat, DirectoryEntryStream, ErrorCode, HostDescriptor,
    MetadataHashValue, OpenFlags, PathFlags,
};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, OpenMode, WasiCtx, WasiCtxBuilder};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::HostState;
use crate::actor::{ComponentContext, InstanceScope};
use crate::error::Error;
use crate::grant::{CapabilityKind, FsGrant};

/// The WIT name of the filesystem interfaces wasmtime-wasi 48 implements.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";
const FILESYSTEM_PREOPENS: &str = "wasi:filesystem/preopens@0.2.12";

/// Marks a descriptor under a write-only grant, in the `open_mode` bits wasmtime-wasi keeps
/// on every descriptor. wasmtime-wasi only tests its own `READ`/`WRITE` bits with
/// `contains`, and bitflags keeps unknown bits, so the mark rides along untouched.
pub const WRITE_ONLY: usize = 1 << (usize::BITS - 1);

/// Host directory backing a granted guest directory.
pub fn host_dir(component_root: &Path, guest_path: &str) -> PathBuf {
    // Guest paths come from the parsed grant: absolute, normalized, no `..`.
    component_root.join(guest_path.trim_start_matches('/'))
}

/// Builds the WASI context of the instance `ctx`.
pub fn build_ctx(ctx: &InstanceScope) -> Result<WasiCtx, Error> {
    let mut builder = WasiCtxBuilder::new();
    builder.envs(&ctx.env);
    // The compiled table merges duplicate grants of one path (read + write entries).
    let grants = ctx.grants.filesystem_grants();
    for grant in grants {
        let guest = &*grant.path;
        // A write-only directory is read-write for wasmtime-wasi; its descriptors are marked
        // at `get-directories` and the wrappers refuse every read (see the module doc).
        let perms = match effective_access(grants, guest) {
            (true, false) => FsPerms::ReadOnly,
            _ => FsPerms::ReadWrite,
        };
        let host = host_dir(&ctx.fs_root, guest);
        std::fs::create_dir_all(&host).map_err(|e| Error::Io {
            what: format!("create {}", host.display()),
            source: e,
        })?;
        builder
            .preopened_dir(&host, guest, perms)
            .map_err(Error::wasm("preopen a granted directory"))?;
    }
    let network = !ctx.grant.network.is_empty();
    builder
        .allow_tcp(network)
        .allow_udp(network)
        .allow_ip_name_lookup(network);
    let check_ctx = ctx.clone();
    builder.socket_addr_check(move |addr: SocketAddr, use_: SocketAddrUse| {
        let ctx = check_ctx.clone();
        Box::pin(async move { socket_allowed(&ctx, addr, use_) })
    });
    Ok(builder.build())
}

/// What the guest may do in the preopened directory `path`: every grant covering it counts
/// (wasi-libc opens through the longest matching preopen, so `/data/in` must not lose the
/// read a `/data` grant gives it).
fn effective_access(grants: &[FsGrant], path: &str) -> (bool, bool) {
    grants
        .iter()
        .filter(|g| covers_normalized(&g.path, path))
        .fold((false, false), |(read, write), g| {
            (read || g.read, write || g.write)
        })
}

fn socket_allowed(ctx: &InstanceScope, addr: SocketAddr, use_: SocketAddrUse) -> bool {
    match use_ {
        // Implicit binds (before connect) use the wildcard address and port 0; anything else
        // would be listening, which no grant covers.
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
            addr.ip().is_unspecified() && addr.port() == 0
        }
        // No grant lets a component accept connections.
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => {
            ctx.denied(CapabilityKind::Network, &format!("listen {addr}"));
            false
        }
        // Datagrams are checked in both directions against the same destination grant.
        SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
            if ctx.grants.check_connect(None, addr.ip(), addr.port()) {
                ctx.granted(CapabilityKind::Network);
                true
            } else {
                ctx.denied(CapabilityKind::Network, &addr.to_string());
                false
            }
        }
    }
}

/// `true` if any grant could allow `host:port` by name, or some address grant could once it
/// is resolved. Lets an undeclared host be refused before any DNS query leaves the node.
fn may_resolve(ctx: &ComponentContext, host: &str, port: u16) -> bool {
    ctx.grant.network.iter().any(|g| {
        g.ports.contains(port)
            && match &g.target {
                NetTarget::Host(pattern) => pattern.matches(host),
                NetTarget::Cidr(_) => true,
            }
    })
}

/// `wasi:http` hooks that enforce the network grant on every outgoing request of one
/// instance.
#[derive(Debug)]
pub struct GrantedHttp {
    scope: InstanceScope,
}

impl GrantedHttp {
    pub fn new(scope: InstanceScope) -> Self {
        Self { scope }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for GrantedHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> Box<
        dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>>
            + Send,
    > {
        let _ = fut;
        let ctx = self.scope.clone();
        Box::new(async move {
            let uri = request.uri().clone();
            let host = uri
                .host()
                .ok_or(HttpError::HttpRequestUriInvalid)?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let target = format!("{host}:{port}");
            let literal: Option<IpAddr> = host.parse().ok();
            let addrs: Vec<IpAddr> = match literal {
                Some(ip) => vec![ip],
                None => {
                    if !may_resolve(&ctx, &host, port) {
                        ctx.denied(CapabilityKind::Network, &target);
                        return Err(HttpError::HttpRequestDenied);
                    }
                    tokio::net::lookup_host((host.as_str(), port))
                        .await
                        .map_err(|_| HttpError::DnsError {
                            rcode: None,
                            info_code: None,
                        })?
                        .map(|a| a.ip())
                        .collect()
                }
            };
            let name = literal.is_none().then_some(host.as_str());
            let Some(ip) = addrs
                .iter()
                .copied()
                .find(|ip| ctx.grants.check_connect(name, *ip, port))
            else {
                let resolved: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                ctx.denied(
                    CapabilityKind::Network,
                    &format!("{target} (resolved: {})", resolved.join(",")),
                );
                return Err(HttpError::HttpRequestDenied);
            };
            ctx.granted(CapabilityKind::Network);
            // Connect to the address we checked, never to a second lookup's answer (DNS
            // rebinding); the URI and Host header keep the name, TLS verifies it.
            send_to(request, SocketAddr::new(ip, port), &web_pki_tls()?, options).await
        })
    }
}

/// TLS client settings for outgoing HTTPS with `roots` as the trust store (ring, the
/// provider the rest of the agent uses).
pub fn tls_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, HttpError> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| HttpError::InternalError(Some(e.to_string())))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The trust store guests get: the Mozilla web PKI roots, as wasmtime-wasi-http's own
/// `default_send_request` uses. Built once per process.
pub fn web_pki_tls() -> Result<Arc<rustls::ClientConfig>, HttpError> {
    static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = TLS.get() {
        return Ok(config.clone());
    }
    let config = tls_config(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })?;
    Ok(TLS.get_or_init(|| config).clone())
}

/// A stream hyper can drive: plain TCP or TLS over it.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T> Stream for T where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static
{
}

/// Sends `request` over one HTTP/1.1 connection to exactly `addr`: no name resolution
/// happens here. For `https` the TLS handshake uses the URI's host (name or IP literal) for
/// SNI and certificate verification against `tls`'s roots. Otherwise it behaves as
/// wasmtime-wasi-http 48's `default_send_request` (same timeouts and defaults, same error
/// values), whose connection code this follows.
pub async fn send_to<B>(
    mut request: http::Request<B>,
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    options: Option<RequestOptions>,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError>
where
    B: http_body::Body<Data = Bytes, Error = HttpError> + Send + 'static,
{
    let uri = request.uri().clone();
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let default = Duration::from_secs(600);
    let connect_timeout = options.and_then(|o| o.connect_timeout).unwrap_or(default);
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(default);
    let between_bytes_timeout = options
        .and_then(|o| o.between_bytes_timeout)
        .unwrap_or(default)
        // tokio panics on a zero interval.
        .max(Duration::from_nanos(1));

    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Connect)?;
    let stream: Box<dyn Stream> = if https {
        let host = uri
            .host()
            .ok_or(HttpError::HttpRequestUriInvalid)?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = match host.parse::<IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::from(ip),
            Err(_) => rustls::pki_types::ServerName::try_from(host.to_owned())?,
        };
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let tls_stream = tokio::time::timeout(connect_timeout, connector.connect(server_name, tcp))
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(HttpError::Tls)?;
        Box::new(tls_stream)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;

    // Origin form on the wire: scheme and authority only go to a proxy.
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;

    let send = async move {
        let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)??;
        let mut timeout = tokio::time::interval(between_bytes_timeout);
        timeout.reset();
        Ok::<_, HttpError>(response.map(|incoming| TimedBody { incoming, timeout }))
    };
    let mut send = std::pin::pin!(send);
    let mut conn = Some(conn);
    // Wait for the response while driving the connection.
    let response = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(result),
        Poll::Pending => {
            let Some(c) = conn.as_mut() else {
                return Poll::Pending;
            };
            let done = ready!(Pin::new(c).poll(cx));
            conn = None;
            match done {
                Ok(()) => send.as_mut().poll(cx),
                Err(e) => Poll::Ready(Err(HttpError::from(e))),
            }
        }
    })
    .await?;
    let io = async move {
        match conn {
            None => Ok(()),
            Some(conn) => conn.await.map_err(|e| {
                if e.is_timeout() {
                    HttpError::HttpResponseTimeout
                } else {
                    HttpError::from(e)
                }
            }),
        }
    };
    Ok((
        response.map(BodyExt::boxed_unsync),
        Box::new(io) as IoFuture,
    ))
}

/// A response body that fails when no frame arrives for the between-bytes timeout.
struct TimedBody {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                HttpError::HttpResponseTimeout
            } else {
                HttpError::from(e)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

/// Whether a descriptor lives under a write-only grant.
fn is_write_only(d: &Descriptor) -> bool {
    let mode = match d {
        Descriptor::File(f) => f.open_mode,
        Descriptor::Dir(d) => d.open_mode,
    };
    mode.bits() & WRITE_ONLY != 0
}

/// Marks a descriptor as under a write-only grant; a directory also loses its `READ` mode.
fn mark_write_only(d: &mut Descriptor) {
    match d {
        Descriptor::File(f) => {
            f.open_mode = OpenMode::from_bits_retain(f.open_mode.bits() | WRITE_ONLY)
        }
        Descriptor::Dir(d) => {
            d.open_mode = OpenMode::from_bits_retain(OpenMode::WRITE.bits() | WRITE_ONLY)
        }
    }
}

/// Whether `fd` is a live descriptor under a write-only grant (an unknown handle is left to
/// the real implementation, which reports it).
fn write_only(store: &StoreContextMut<'_, HostState>, fd: &Resource<Descriptor>) -> bool {
    store.data().table.get(fd).is_ok_and(is_write_only)
}

/// Audits a refused filesystem operation and returns the WASI answer to it.
fn refuse(store: &StoreContextMut<'_, HostState>, what: &str) -> ErrorCode {
    store.data().scope.denied(CapabilityKind::Filesystem, what);
    ErrorCode::NotPermitted
}

/// Shadows a descriptor method that reads (contents, names or metadata) so that it is
/// refused and audited on a descriptor under a write-only grant, and otherwise runs the
/// real implementation.
macro_rules! refuse_on_write_only {
    ($types:expr, $method:literal, $what:literal,
     |$view:ident, $fd:ident $(, $arg:ident : $ty:ty)*| -> $ret:ty $call:block) => {
        $types.func_wrap_async(
            concat!("[method]descriptor.", $method),
            |mut store: StoreContextMut<'_, HostState>,
             ($fd, $($arg,)*): (Resource<Descriptor>, $($ty,)*)| {
                Box::new(async move {
                    if write_only(&store, &$fd) {
                        let code = refuse(&store, concat!($what, " under a write-only grant"));
                        return Ok((Err::<$ret, _>(code),));
                    }
                    let mut $view = store.data_mut().filesystem();
                    match $call {
                        Ok(value) => Ok((Ok::<$ret, ErrorCode>(value),)),
                        Err(e) => Ok((Err(e.downcast()?),)),
                    }
                })
            },
        )
    };
}

/// Replaces `wasi:filesystem` functions with checked versions:
///
/// - `open-at` refuses `..` components and absolute paths before touching the disk, and
///   audits every refusal (including escapes through symlinks, which the preopen's
///   capability-based lookup stops); under a write-only grant it only opens files for
///   writing (no `read` flag, not a directory).
/// - `get-directories` marks the preopens of write-only grants, and every read-like
///   method refuses a marked descriptor (see the module doc).
pub fn shadow_open_at(linker: &mut Linker<HostState>) -> Result<(), Error> {
    linker.allow_shadowing(true);
    let result = shadow_filesystem(linker);
    linker.allow_shadowing(false);
    result.map_err(Error::wasm("wrap wasi:filesystem"))
}

fn shadow_filesystem(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance(FILESYSTEM_PREOPENS)?.func_wrap(
        "get-directories",
        |mut store: StoreContextMut<'_, HostState>, (): ()| {
            let ctx = store.data().scope.clone();
            let mut view = store.data_mut().filesystem();
            let dirs = preopens::Host::get_directories(&mut view)?;
            let grants = ctx.grants.filesystem_grants();
            for (fd, name) in &dirs {
                if effective_access(grants, name) == (false, true) {
                    mark_write_only(view.table.get_mut(fd)?);
                }
            }
            Ok((dirs,))
        },
    )?;

    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let ctx = store.data().scope.clone();
                if path.starts_with('/') || path.split('/').any(|c| c == "..") {
                    ctx.denied(CapabilityKind::Filesystem, &path);
                    return Ok((Err(ErrorCode::NotPermitted),));
                }
                let under_write_only = write_only(&store, &fd);
                if under_write_only
                    && (flags.contains(DescriptorFlags::READ)
                        || !flags.contains(DescriptorFlags::WRITE)
                        || open_flags.contains(OpenFlags::DIRECTORY))
                {
                    // Without `write` wasmtime-wasi opens for reading.
                    ctx.denied(
                        CapabilityKind::Filesystem,
                        &format!("open {path} for reading under a write-only grant"),
                    );
                    return Ok((Err(ErrorCode::NotPermitted),));
                }
                let mut view = store.data_mut().filesystem();
                let opened = HostDescriptor::open_at(
                    &mut view,
                    fd,
                    path_flags,
                    path.clone(),
                    open_flags,
                    flags,
                )
                .await;
                match opened {
                    Ok(new) => {
                        if under_write_only {
                            mark_write_only(view.table.get_mut(&new)?);
                        }
                        ctx.granted(CapabilityKind::Filesystem);
                        Ok((Ok(new),))
                    }
                    Err(e) => {
                        let code = e.downcast()?;
                        if matches!(
                            code,
                            ErrorCode::NotPermitted | ErrorCode::Access | ErrorCode::ReadOnly
                        ) {
                            ctx.denied(CapabilityKind::Filesystem, &path);
                        }
                        Ok((Err(code),))
                    }
                }
            })
        },
    )?;

    refuse_on_write_only!(types, "read", "read", |view,
                                                  fd,
                                                  len: u64,
                                                  offset: u64|
     -> (Vec<u8>, bool) {
        HostDescriptor::read(&mut view, fd, len, offset).await
    })?;
    refuse_on_write_only!(types, "read-via-stream", "read", |view,
                                                             fd,
                                                             offset: u64|
     -> Resource<
        DynInputStream,
    > {
        HostDescriptor::read_via_stream(&mut view, fd, offset)
    })?;
    refuse_on_write_only!(types, "read-directory", "list", |view,
                                                            fd|
     -> Resource<
        DirectoryEntryStream,
    > {
        HostDescriptor::read_directory(&mut view, fd).await
    })?;
    refuse_on_write_only!(types, "stat", "stat", |view, fd| -> DescriptorStat {
        HostDescriptor::stat(&mut view, fd).await
    })?;
    refuse_on_write_only!(types, "stat-at", "stat", |view,
                                                     fd,
                                                     flags: PathFlags,
                                                     path: String|
     -> DescriptorStat {
        HostDescriptor::stat_at(&mut view, fd, flags, path).await
    })?;
    refuse_on_write_only!(types, "metadata-hash", "stat", |view,
                                                           fd|
     -> MetadataHashValue {
        HostDescriptor::metadata_hash(&mut view, fd).await
    })?;
    refuse_on_write_only!(
        types,
        "metadata-hash-at",
        "stat",
        |view, fd, flags: PathFlags, path: String| -> MetadataHashValue {
            HostDescriptor::metadata_hash_at(&mut view, fd, flags, path).await
        }
    )?;
    refuse_on_write_only!(types, "readlink-at", "readlink", |view,
                                                             fd,
                                                             path: String|
     -> String {
        HostDescriptor::readlink_at(&mut view, fd, path).await
    })?;

    // Moving or linking across the boundary of a write-only tree would carry a file into a
    // readable directory (or out of sight of the mark).
    types.func_wrap_async(
        "[method]descriptor.rename-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, old, new_fd, new): (Resource<Descriptor>, String, Resource<Descriptor>, String)| {
            Box::new(async move {
                if write_only(&store, &fd) != write_only(&store, &new_fd) {
                    let code = refuse(&store, &format!("rename {old} across a write-only grant"));
                    return Ok((Err(code),));
                }
                let mut view = store.data_mut().filesystem();
                match HostDescriptor::rename_at(&mut view, fd, old, new_fd, new).await {
                    Ok(()) => Ok((Ok(()),)),
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.link-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, flags, old, new_fd, new): (
            Resource<Descriptor>,
            PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )| {
            Box::new(async move {
                if write_only(&store, &fd) != write_only(&store, &new_fd) {
                    let code = refuse(&store, &format!("link {old} across a write-only grant"));
                    return Ok((Err(code),));
                }
                let mut view = store.data_mut().filesystem();
                match HostDescriptor::link_at(&mut view, fd, flags, old, new_fd, new).await {
                    Ok(()) => Ok((Ok(()),)),
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            })
        },
    )?;
    Ok(())
}
