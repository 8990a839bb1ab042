//! Sockets: every address a guest names goes through the grant before anything else looks
//! at it. Connects and datagram destinations are checked with the grant's `check_connect`;
//! binding is limited to the wildcard address with an ephemeral port ([`bind_allowed`]),
//! and listening is refused (no grant lets a component accept connections). Name lookups go
//! through the grant's `check_lookup`. Each socket holds a host descriptor, so creating one
//! is bounded like opening a file (`resources::may_open`).
//!
//! wasmtime-wasi validates addresses before it asks [`socket_allowed`]: a connect to
//! `0.0.0.0`, `::`, `::ffff:127.0.0.1`, a multicast or broadcast address, a bind to a
//! multicast or broadcast address, or an address of the other family is refused as
//! `invalid-argument` without reaching the check, and name lookups have no hook at all. So
//! every function that takes an address or a name (tcp `start-bind` / `start-connect`, udp
//! `start-bind` / `stream` / `send`, `resolve-addresses`) is shadowed ([`shadow_sockets`])
//! to run the grant check first: every refusal is audited through `InstanceScope::denied`,
//! and what passes goes on to wasmtime-wasi (whose address check then counts the grant).

use std::net::SocketAddr;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    Host as LookupHost, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{
    ErrorCode, IpAddressFamily, IpSocketAddress, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp::{HostTcpSocket, TcpSocket};
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::Host as TcpCreateHost;
use wasmtime_wasi::p2::bindings::sockets::udp::{
    HostOutgoingDatagramStream, HostUdpSocket, IncomingDatagramStream, OutgoingDatagram,
    OutgoingDatagramStream, UdpSocket,
};
use wasmtime_wasi::p2::bindings::sockets::udp_create_socket::Host as UdpCreateHost;
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsView};

use super::{HostState, resources};
use crate::context::InstanceScope;
use crate::error::Error;
use crate::grant::CapabilityKind;

/// The WIT names of the socket interfaces wasmtime-wasi 48 implements.
const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";
const TCP: &str = "wasi:sockets/tcp@0.2.12";
const UDP: &str = "wasi:sockets/udp@0.2.12";
const TCP_CREATE: &str = "wasi:sockets/tcp-create-socket@0.2.12";
const UDP_CREATE: &str = "wasi:sockets/udp-create-socket@0.2.12";

/// Whether a guest may bind `addr`: only the wildcard address (`0.0.0.0` or `::`) with an
/// ephemeral port, as the implicit bind before a connect does. Any other local address or
/// port (a fixed port, loopback, a multicast group, broadcast) would be listening or
/// receiving on the node's behalf, which no grant covers.
pub fn bind_allowed(addr: SocketAddr) -> bool {
    addr.ip().is_unspecified() && addr.port() == 0
}

pub(super) fn socket_allowed(ctx: &InstanceScope, addr: SocketAddr, use_: SocketAddrUse) -> bool {
    match use_ {
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
            let allowed = bind_allowed(addr);
            if !allowed {
                ctx.denied(CapabilityKind::Network, &format!("bind {addr}"));
            }
            allowed
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

/// [`bind_allowed`] for an address the guest names, before wasmtime-wasi validates it;
/// audits a refusal. `None` when allowed to go on.
fn refuse_bind(store: &StoreContextMut<'_, HostState>, addr: SocketAddr) -> Option<ErrorCode> {
    if bind_allowed(addr) {
        None
    } else {
        let ctx = &store.data().scope;
        ctx.denied(CapabilityKind::Network, &format!("bind {addr}"));
        Some(ErrorCode::AccessDenied)
    }
}

/// A new socket holds a host descriptor: counted with the instance's open files against
/// its cap and the node's budget (`resources::may_open`); a refusal is audited as a
/// `handles` quota breach. `None` when allowed.
fn refuse_new_socket(store: &mut StoreContextMut<'_, HostState>) -> Option<ErrorCode> {
    let held = resources::open_files(&mut store.data_mut().table);
    if resources::may_open(held) {
        None
    } else {
        store.data().scope.quota_exceeded(resources::QUOTA);
        Some(ErrorCode::NewSocketLimit)
    }
}

/// Replaces the `wasi:sockets` functions that take a name or an address, and the ones that
/// create a socket, with checked versions (see the module doc).
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

    linker.instance(TCP_CREATE)?.func_wrap(
        "create-tcp-socket",
        |mut store: StoreContextMut<'_, HostState>, (family,): (IpAddressFamily,)| {
            if let Some(code) = refuse_new_socket(&mut store) {
                return Ok((Err(code),));
            }
            let mut view = store.data_mut().sockets();
            match TcpCreateHost::create_tcp_socket(&mut view, family) {
                Ok(sock) => Ok((Ok::<Resource<TcpSocket>, ErrorCode>(sock),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    linker.instance(UDP_CREATE)?.func_wrap_async(
        "create-udp-socket",
        |mut store: StoreContextMut<'_, HostState>, (family,): (IpAddressFamily,)| {
            Box::new(async move {
                if let Some(code) = refuse_new_socket(&mut store) {
                    return Ok((Err(code),));
                }
                let mut view = store.data_mut().sockets();
                match UdpCreateHost::create_udp_socket(&mut view, family).await {
                    Ok(sock) => Ok((Ok::<Resource<UdpSocket>, ErrorCode>(sock),)),
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            })
        },
    )?;

    let mut tcp = linker.instance(TCP)?;
    tcp.func_wrap_async(
        "[method]tcp-socket.start-bind",
        |mut store: StoreContextMut<'_, HostState>,
         (sock, network, local): (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            Box::new(async move {
                if let Some(code) = refuse_bind(&store, SocketAddr::from(local)) {
                    return Ok((Err(code),));
                }
                let mut view = store.data_mut().sockets();
                match HostTcpSocket::start_bind(&mut view, sock, network, local).await {
                    Ok(()) => Ok((Ok::<(), ErrorCode>(()),)),
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            })
        },
    )?;
    tcp.func_wrap(
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
        "[method]udp-socket.start-bind",
        |mut store: StoreContextMut<'_, HostState>,
         (sock, network, local): (Resource<UdpSocket>, Resource<Network>, IpSocketAddress)| {
            Box::new(async move {
                if let Some(code) = refuse_bind(&store, SocketAddr::from(local)) {
                    return Ok((Err(code),));
                }
                let mut view = store.data_mut().sockets();
                match HostUdpSocket::start_bind(&mut view, sock, network, local).await {
                    Ok(()) => Ok((Ok::<(), ErrorCode>(()),)),
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            })
        },
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_spec() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, bool)] = &[
            ("wildcard v4, ephemeral port (the implicit bind)", "0.0.0.0:0", true),
            ("wildcard v6, ephemeral port", "[::]:0", true),
            ("wildcard with a fixed port is listening", "0.0.0.0:8080", false),
            ("loopback", "127.0.0.1:0", false),
            ("a public address", "93.184.216.34:0", false),
            ("a v4 multicast group", "224.0.0.1:0", false),
            ("a v4 multicast group with a port", "239.1.2.3:5353", false),
            ("a v6 multicast group", "[ff02::1]:0", false),
            ("limited broadcast", "255.255.255.255:0", false),
            ("mapped wildcard is not the v6 wildcard", "[::ffff:0.0.0.0]:0", false),
            ("mapped multicast", "[::ffff:224.0.0.1]:0", false),
        ];
        for (rule, addr, want) in cases {
            let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
            assert_eq!(bind_allowed(addr), *want, "{rule}");
        }
    }
}
