//! The per-instance WASI 0.2 context, built from the grant:
//!
//! - filesystem: one preopen per granted directory, backed by
//!   `<fs_root>/<guest path>`; the guest cannot name anything else. `open-at` is wrapped so
//!   a `..` or absolute path is refused outright and every refusal is audited.
//! - sockets: every connect and datagram destination goes through the grant's
//!   `check_connect`; binding is limited to the wildcard address with an ephemeral port.
//! - outgoing HTTP: [`GrantedHttp`] checks host and port before DNS, resolves, checks the
//!   resolved address (private and loopback ranges need an explicit grant), and for plain
//!   HTTP connects to exactly the address it checked.
//! - clocks, random: standard. No env besides the granted keys, no args, no stdio.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airssys_crds::capability::NetTarget;
use http_body_util::BodyExt;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use super::HostState;
use crate::actor::ComponentContext;
use crate::error::Error;
use crate::grant::CapabilityKind;

/// The WIT name of the filesystem interface wasmtime-wasi 48 implements.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Host directory backing a granted guest directory.
pub fn host_dir(component_root: &Path, guest_path: &str) -> PathBuf {
    // Guest paths come from the parsed grant: absolute, normalized, no `..`.
    component_root.join(guest_path.trim_start_matches('/'))
}

/// Builds the WASI context of one instance.
pub fn build_ctx(ctx: &Arc<ComponentContext>) -> Result<WasiCtx, Error> {
    let mut builder = WasiCtxBuilder::new();
    builder.envs(&ctx.env);
    for grant in &ctx.grant.filesystem {
        let perms = match (grant.read, grant.write) {
            (true, true) => FsPerms::ReadWrite,
            (true, false) => FsPerms::ReadOnly,
            // WASI has no write-only directory; granting reads too would be wider than asked.
            _ => {
                tracing::warn!(component = %ctx.id, path = %grant.prefix, "write-only directory grants are not supported; not mounted");
                continue;
            }
        };
        let guest = grant.prefix.as_str();
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

fn socket_allowed(ctx: &ComponentContext, addr: SocketAddr, use_: SocketAddrUse) -> bool {
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

/// `wasi:http` hooks that enforce the network grant on every outgoing request.
#[derive(Debug)]
pub struct GrantedHttp {
    ctx: Arc<ComponentContext>,
}

impl GrantedHttp {
    pub fn new(ctx: Arc<ComponentContext>) -> Self {
        Self { ctx }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for GrantedHttp {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> Box<
        dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>>
            + Send,
    > {
        let _ = fut;
        let ctx = self.ctx.clone();
        Box::new(async move {
            use wasmtime_wasi_http::Error as HttpError;
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
            if !https && literal.is_none() {
                // Connect to the address we checked, not to whatever a second lookup
                // returns (DNS rebinding). The Host header keeps the name. HTTPS keeps the
                // name for certificate validation.
                let pinned = SocketAddr::new(ip, port);
                let mut parts = uri.into_parts();
                parts.authority = pinned.to_string().parse().ok();
                if let Ok(pinned_uri) = http::Uri::from_parts(parts) {
                    *request.uri_mut() = pinned_uri;
                }
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as IoFuture,
            ))
        })
    }
}

/// Replaces `wasi:filesystem/types#[method]descriptor.open-at` with a version that refuses
/// `..` components and absolute paths before touching the disk, and audits every refusal
/// (including escapes through symlinks, which the preopen's capability-based lookup stops).
pub fn shadow_open_at(linker: &mut Linker<HostState>) -> Result<(), Error> {
    linker.allow_shadowing(true);
    let result = linker.instance(FILESYSTEM_TYPES).and_then(|mut types| {
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
                    let ctx = store.data().ctx.clone();
                    if path.starts_with('/') || path.split('/').any(|c| c == "..") {
                        ctx.denied(CapabilityKind::Filesystem, &path);
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
                        Ok(fd) => {
                            ctx.granted(CapabilityKind::Filesystem);
                            Ok((Ok(fd),))
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
        )
    });
    linker.allow_shadowing(false);
    result.map_err(Error::wasm("wrap filesystem open-at"))
}
