//! Well-behaved (or hostile, by its target): `URL` does an outgoing HTTP GET with wasi:http and replies `STATUS|BODY` or `error:CODE`.
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

fn fetch(url: &str) -> Result<(u16, Vec<u8>), ErrorCode> {
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
    let pending = outgoing_handler::handle(request, None)?;
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
