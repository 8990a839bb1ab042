//! Sockets: every connect and datagram destination goes through the grant's
//! `check_connect`; binding is limited to the wildcard address with an ephemeral port, and
//! listening is refused (no grant lets a component accept connections). Name lookups go
//! through the grant's `check_lookup`.
//!
//! wasmtime-wasi validates addresses before it asks [`socket_allowed`]: a connect to
//! `0.0.0.0`, `::`, `::ffff:127.0.0.1`, a multicast or broadcast address is refused as
//! `invalid-argument` without reaching the check, and name lookups have no hook at all. So
//! the functions that take a remote address or a name are shadowed ([`shadow_sockets`]) to
//! run the grant check first: every refusal is audited through `InstanceScope::denied`, and
//! what passes goes on to wasmtime-wasi (whose address check then counts the grant).

use std::net::SocketAddr;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    Host as LookupHost, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpSocketAddress, Network};
use wasmtime_wasi::p2::bindings::sockets::tcp::{HostTcpSocket, TcpSocket};
use wasmtime_wasi::p2::bindings::sockets::udp::{
    HostOutgoingDatagramStream, HostUdpSocket, IncomingDatagramStream, OutgoingDatagram,
    OutgoingDatagramStream, UdpSocket,
};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsView};

use super::HostState;
use crate::context::InstanceScope;
use crate::error::Error;
use crate::grant::CapabilityKind;

/// The WIT names of the socket interfaces wasmtime-wasi 48 implements.
const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";
const TCP: &str = "wasi:sockets/tcp@0.2.12";
const UDP: &str = "wasi:sockets/udp@0.2.12";

pub(super) fn socket_allowed(ctx: &InstanceScope, addr: SocketAddr, use_: SocketAddrUse) -> bool {
    match use_ {
        // Implicit binds (before connect) use the wildcard address and port 0; anything else
        // would be listening, which no grant covers.
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
            let wildcard = addr.ip().is_unspecified() && addr.port() == 0;
            if !wildcard {
                ctx.denied(CapabilityKind::Network, &format!("bind {addr}"));
            }
            wildcard
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

/// The grant check for a remote address the guest names, before wasmtime-wasi validates
/// it; audits a refusal. `None` when allowed to go on.
fn refuse_remote(store: &StoreContextMut<'_, HostState>, addr: SocketAddr) -> Option<ErrorCode> {
    let ctx = &store.data().scope;
    if ctx.grants.check_connect(None, addr.ip(), addr.port()) {
        None
    } else {
        ctx.denied(CapabilityKind::Network, &format!("connect {addr}"));
        Some(ErrorCode::AccessDenied)
    }
}

/// Replaces the `wasi:sockets` functions that take a name or a remote address with checked
/// versions (see the module doc).
pub fn shadow_sockets(linker: &mut Linker<HostState>) -> Result<(), Error> {
    linker.allow_shadowing(true);
    let result = shadow(linker);
    linker.allow_shadowing(false);
    result.map_err(Error::wasm("wrap wasi:sockets"))
}

fn shadow(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance(IP_NAME_LOOKUP)?.func_wrap(
        "resolve-addresses",
        |mut store: StoreContextMut<'_, HostState>,
         (network, name): (Resource<Network>, String)| {
            let ctx = store.data().scope.clone();
            if !ctx.grants.check_lookup(&name) {
                ctx.denied(CapabilityKind::Network, &format!("lookup {name}"));
                return Ok((Err(ErrorCode::AccessDenied),));
            }
            ctx.granted(CapabilityKind::Network);
            let mut view = store.data_mut().sockets();
            match LookupHost::resolve_addresses(&mut view, network, name) {
                Ok(stream) => Ok((Ok::<Resource<ResolveAddressStream>, _>(stream),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;

    linker.instance(TCP)?.func_wrap(
        "[method]tcp-socket.start-connect",
        |mut store: StoreContextMut<'_, HostState>,
         (sock, network, remote): (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            if let Some(code) = refuse_remote(&store, SocketAddr::from(remote)) {
                return Ok((Err(code),));
            }
            let mut view = store.data_mut().sockets();
            match HostTcpSocket::start_connect(&mut view, sock, network, remote) {
                Ok(()) => Ok((Ok(()),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;

    let mut udp = linker.instance(UDP)?;
    udp.func_wrap_async(
        "[method]udp-socket.stream",
        |mut store: StoreContextMut<'_, HostState>,
         (sock, remote): (Resource<UdpSocket>, Option<IpSocketAddress>)| {
            Box::new(async move {
                if let Some(remote) = remote
                    && let Some(code) = refuse_remote(&store, SocketAddr::from(remote))
                {
                    return Ok((Err(code),));
                }
                let mut view = store.data_mut().sockets();
                match HostUdpSocket::stream(&mut view, sock, remote).await {
                    Ok(streams) => Ok((Ok::<
                        (
                            Resource<IncomingDatagramStream>,
                            Resource<OutgoingDatagramStream>,
                        ),
                        ErrorCode,
                    >(streams),)),
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            })
        },
    )?;
    udp.func_wrap(
        "[method]outgoing-datagram-stream.send",
        |mut store: StoreContextMut<'_, HostState>,
         (stream, datagrams): (Resource<OutgoingDatagramStream>, Vec<OutgoingDatagram>)| {
            for remote in datagrams.iter().filter_map(|d| d.remote_address) {
                if let Some(code) = refuse_remote(&store, SocketAddr::from(remote)) {
                    return Ok((Err(code),));
                }
            }
            let mut view = store.data_mut().sockets();
            match HostOutgoingDatagramStream::send(&mut view, stream, datagrams) {
                Ok(sent) => Ok((Ok::<u64, ErrorCode>(sent),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    Ok(())
}
