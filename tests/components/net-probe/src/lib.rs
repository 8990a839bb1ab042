//! Hostile network probe over raw `wasi:sockets`: `lookup NAME` resolves a name,
//! `tcp ADDR:PORT` connects, `udp ADDR:PORT` connects a datagram socket, `udpsend ADDR:PORT`
//! sends one datagram, `tcpbind ADDR:PORT` / `udpbind ADDR:PORT` bind a socket of the
//! address's family to it (a multicast group, broadcast, a fixed port...). Replies
//! `ok[:detail]` or `error:CODE`.
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

#[allow(unused_imports)]
use airssys::component::{
    logging, messaging, storage,
    types::{Error, Message, Origin},
};
use exports::airssys::component::lifecycle::Guest;

struct Component;
export!(Component);

use std::net::{IpAddr, SocketAddr};
use wasip2::sockets::{
    instance_network::instance_network,
    ip_name_lookup::resolve_addresses,
    network::{
        ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress,
        Ipv6SocketAddress,
    },
    tcp_create_socket::create_tcp_socket,
    udp::OutgoingDatagram,
    udp_create_socket::create_udp_socket,
};

fn wasi_addr(addr: SocketAddr) -> (IpAddressFamily, IpSocketAddress) {
    match addr {
        SocketAddr::V4(a) => {
            let [x0, x1, x2, x3] = a.ip().octets();
            (
                IpAddressFamily::Ipv4,
                IpSocketAddress::Ipv4(Ipv4SocketAddress {
                    port: a.port(),
                    address: (x0, x1, x2, x3),
                }),
            )
        }
        SocketAddr::V6(a) => {
            let [x0, x1, x2, x3, x4, x5, x6, x7] = a.ip().segments();
            (
                IpAddressFamily::Ipv6,
                IpSocketAddress::Ipv6(Ipv6SocketAddress {
                    port: a.port(),
                    flow_info: 0,
                    address: (x0, x1, x2, x3, x4, x5, x6, x7),
                    scope_id: 0,
                }),
            )
        }
    }
}

fn lookup(name: &str) -> Result<String, ErrorCode> {
    let net = instance_network();
    let stream = resolve_addresses(&net, name)?;
    let mut out = Vec::new();
    loop {
        match stream.resolve_next_address() {
            Ok(Some(IpAddress::Ipv4((a, b, c, d)))) => out.push(IpAddr::from([a, b, c, d])),
            Ok(Some(IpAddress::Ipv6((a, b, c, d, e, f, g, h)))) => {
                out.push(IpAddr::from([a, b, c, d, e, f, g, h]))
            }
            Ok(None) => break,
            Err(ErrorCode::WouldBlock) => stream.subscribe().block(),
            Err(e) => return Err(e),
        }
    }
    Ok(out
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(","))
}

fn tcp(addr: SocketAddr) -> Result<String, ErrorCode> {
    let net = instance_network();
    let (family, remote) = wasi_addr(addr);
    let sock = create_tcp_socket(family)?;
    sock.start_connect(&net, remote)?;
    loop {
        match sock.finish_connect() {
            Ok(_) => return Ok(String::new()),
            Err(ErrorCode::WouldBlock) => sock.subscribe().block(),
            Err(e) => return Err(e),
        }
    }
}

fn udp(addr: SocketAddr, send: bool) -> Result<String, ErrorCode> {
    let net = instance_network();
    let (family, remote) = wasi_addr(addr);
    let local = match family {
        IpAddressFamily::Ipv4 => wasi_addr("0.0.0.0:0".parse().unwrap_or(addr)).1,
        IpAddressFamily::Ipv6 => wasi_addr("[::]:0".parse().unwrap_or(addr)).1,
    };
    let sock = create_udp_socket(family)?;
    sock.start_bind(&net, local)?;
    loop {
        match sock.finish_bind() {
            Ok(()) => break,
            Err(ErrorCode::WouldBlock) => sock.subscribe().block(),
            Err(e) => return Err(e),
        }
    }
    if !send {
        sock.stream(Some(remote))?;
        return Ok(String::new());
    }
    let (_incoming, outgoing) = sock.stream(None)?;
    outgoing.check_send()?;
    let sent = outgoing.send(&[OutgoingDatagram {
        data: b"probe".to_vec(),
        remote_address: Some(remote),
    }])?;
    Ok(sent.to_string())
}

fn bind(addr: SocketAddr, tcp: bool) -> Result<String, ErrorCode> {
    let net = instance_network();
    let (family, local) = wasi_addr(addr);
    if tcp {
        let sock = create_tcp_socket(family)?;
        sock.start_bind(&net, local)?;
        loop {
            match sock.finish_bind() {
                Ok(()) => return Ok(String::new()),
                Err(ErrorCode::WouldBlock) => sock.subscribe().block(),
                Err(e) => return Err(e),
            }
        }
    }
    let sock = create_udp_socket(family)?;
    sock.start_bind(&net, local)?;
    loop {
        match sock.finish_bind() {
            Ok(()) => return Ok(String::new()),
            Err(ErrorCode::WouldBlock) => sock.subscribe().block(),
            Err(e) => return Err(e),
        }
    }
}

impl Guest for Component {
    fn init() -> Result<(), Error> {
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        let text = String::from_utf8_lossy(&message.payload).into_owned();
        let (cmd, arg) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let addr = || {
            arg.parse::<SocketAddr>()
                .map_err(|_| ErrorCode::InvalidArgument)
        };
        let result = match cmd {
            "ping" => Ok("pong".to_owned()),
            "lookup" => lookup(arg),
            "tcp" => addr().and_then(tcp),
            "udp" => addr().and_then(|a| udp(a, false)),
            "udpsend" => addr().and_then(|a| udp(a, true)),
            "tcpbind" => addr().and_then(|a| bind(a, true)),
            "udpbind" => addr().and_then(|a| bind(a, false)),
            _ => Err(ErrorCode::NotSupported),
        };
        Ok(Some(
            match result {
                Ok(detail) if detail.is_empty() => "ok".to_owned(),
                Ok(detail) => format!("ok:{detail}"),
                Err(code) => format!("error:{}", code.name()),
            }
            .into_bytes(),
        ))
    }

    fn shutdown() {}
}
