//! Well-behaved (or hostile, by its target): `URL` does an outgoing HTTP GET with wasi:http and replies `STATUS|BODY` or `error:CODE`.
//! Hostile: `flood N URL` starts N GETs at once and leaves them in flight (to a server that
//! never answers, each holds a connection), waits 2 s, and replies
//! `refused:R waiting:W` (R refused with `connection-limit-reached`, W still in flight).
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

#[allow(unused_imports)]
use airssys::component::{
    logging, messaging, storage,
    types::{Error, Message, Origin},
};
use exports::airssys::component::lifecycle::Guest;

struct Component;
export!(Component);

use wasip2::http::{
    outgoing_handler,
    types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme},
};

fn start(url: &str) -> Result<outgoing_handler::FutureIncomingResponse, ErrorCode> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((_, rest)) => (Scheme::Http, rest),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&Method::Get);
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    outgoing_handler::handle(request, None)
}

fn fetch(url: &str) -> Result<(u16, Vec<u8>), ErrorCode> {
    let pending = start(url)?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(result)) => result?,
        _ => return Err(ErrorCode::InternalError(Some("no response".into()))),
    };
    let status = response.status();
    let mut body = Vec::new();
    if let Ok(incoming) = response.consume() {
        if let Ok(stream) = incoming.stream() {
            while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                body.extend_from_slice(&chunk);
            }
        }
    }
    Ok((status, body))
}

impl Guest for Component {
    fn init() -> Result<(), Error> {
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        let url = String::from_utf8_lossy(&message.payload).into_owned();
        if url == "ping" {
            return Ok(Some(b"pong".to_vec()));
        }
        if let Some(rest) = url.strip_prefix("flood ") {
            let (n, target) = rest.split_once(' ').unwrap_or(("0", ""));
            let n: usize = n.parse().unwrap_or(0);
            let mut pending = Vec::new();
            let mut refused = 0;
            for _ in 0..n {
                match start(target) {
                    Ok(p) => pending.push(p),
                    Err(ErrorCode::ConnectionLimitReached) => refused += 1,
                    Err(_) => {}
                }
            }
            wasip2::clocks::monotonic_clock::subscribe_duration(2_000_000_000).block();
            let mut waiting = 0;
            for p in &pending {
                // Wait a moment on each (a blocking poll lets the host settle it), so `get`
                // sees its outcome.
                let tick = wasip2::clocks::monotonic_clock::subscribe_duration(1_000_000);
                let _ = wasip2::io::poll::poll(&[&p.subscribe(), &tick]);
                match p.get() {
                    Some(Ok(Err(ErrorCode::ConnectionLimitReached))) => refused += 1,
                    None => waiting += 1,
                    _ => {}
                }
            }
            return Ok(Some(format!("refused:{refused} waiting:{waiting}").into_bytes()));
        }
        Ok(Some(match fetch(&url) {
            Ok((status, body)) => {
                let mut out = format!("{status}|").into_bytes();
                out.extend_from_slice(&body);
                out
            }
            Err(code) => format!("error:{code:?}").into_bytes(),
        }))
    }

    fn shutdown() {}
}
