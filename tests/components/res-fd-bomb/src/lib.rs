//! Hostile, with a granted directory: `ping` answers `pong`; `bomb:DIR` opens one file in
//! `DIR` over and over and keeps every descriptor open (across calls), until the host
//! refuses. Replies `held:N` or `refused after N: ERROR`. `sockets` does the same with TCP
//! sockets (a network grant enables them), replying `sockets held:N` or
//! `sockets refused after N: CODE`.
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

#[allow(unused_imports)]
use airssys::component::{
    logging, messaging, storage,
    types::{Error, Message, Origin},
};
use exports::airssys::component::lifecycle::Guest;
use std::fs::File;
use std::sync::Mutex;
use wasip2::sockets::{
    network::IpAddressFamily, tcp::TcpSocket, tcp_create_socket::create_tcp_socket,
};

struct Component;
export!(Component);

/// Kept across calls, so the host keeps the descriptors open after the call.
static HOARD: Mutex<Vec<File>> = Mutex::new(Vec::new());
static SOCKETS: Mutex<Vec<TcpSocket>> = Mutex::new(Vec::new());

fn socket_bomb() -> String {
    let mut hoard = SOCKETS.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100_000 {
        match create_tcp_socket(IpAddressFamily::Ipv4) {
            Ok(sock) => hoard.push(sock),
            Err(code) => return format!("sockets refused after {}: {}", hoard.len(), code.name()),
        }
    }
    format!("sockets held:{}", hoard.len())
}

impl Guest for Component {
    fn init() -> Result<(), Error> {
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        let cmd = String::from_utf8_lossy(&message.payload).into_owned();
        if cmd == "ping" {
            return Ok(Some(b"pong".to_vec()));
        }
        if cmd == "sockets" {
            return Ok(Some(socket_bomb().into_bytes()));
        }
        let dir = cmd.strip_prefix("bomb:").unwrap_or("/data");
        let path = format!("{dir}/fd-bomb.txt");
        if let Err(e) = std::fs::write(&path, "x") {
            return Ok(Some(format!("error:{e}").into_bytes()));
        }
        let mut hoard = HOARD.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..100_000 {
            match File::open(&path) {
                Ok(f) => hoard.push(f),
                Err(e) => {
                    return Ok(Some(
                        format!("refused after {}: {e}", hoard.len()).into_bytes(),
                    ));
                }
            }
        }
        Ok(Some(format!("held:{}", hoard.len()).into_bytes()))
    }

    fn shutdown() {}
}
