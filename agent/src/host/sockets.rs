//! Sockets: every connect and datagram destination goes through the grant's
//! `check_connect`; binding is limited to the wildcard address with an ephemeral port, and
//! listening is refused (no grant lets a component accept connections).

use std::net::SocketAddr;

use wasmtime_wasi::sockets::SocketAddrUse;

use crate::context::InstanceScope;
use crate::grant::CapabilityKind;

pub(super) fn socket_allowed(ctx: &InstanceScope, addr: SocketAddr, use_: SocketAddrUse) -> bool {
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
