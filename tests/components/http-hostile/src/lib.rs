//! Hostile HTTP component (world `wasi:http/proxy`), by path:
//! - `/spin`: loops forever (the CPU deadline must stop it);
//! - `/endless`: answers 200 and writes its body forever (the response limit must cut it);
//! - `/slurp`: reads the request body to its end, however slowly it comes, then answers
//!   `read N` (the request timeout must stop a trickling client);
//! - `/sleep/MS`: waits MS milliseconds, then answers `slept` (holds a request in flight);
//! - `/fetch/HOST:PORT`: an outgoing `GET http://HOST:PORT/` (refused unless granted);
//!   answers `STATUS` or `error:CODE`;
//! - anything else: `hostile`.
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Hostile);

struct Hostile;

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = body.write() {
        let _ = stream.blocking_write_and_flush(text.as_bytes());
    }
    let _ = OutgoingBody::finish(body, None);
}

fn fetch(authority: &str) -> Result<u16, ErrorCode> {
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&Method::Get);
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some("/"));
    let pending = outgoing_handler::handle(request, None)?;
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(result)) => Ok(result?.status()),
        _ => Err(ErrorCode::InternalError(Some("no response".into()))),
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Hostile {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if path == "/spin" {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if path == "/endless" {
            let response = OutgoingResponse::new(Fields::new());
            let Ok(body) = response.body() else { return };
            ResponseOutparam::set(out, Ok(response));
            let Ok(stream) = body.write() else { return };
            let chunk = vec![b'x'; 4096]; // the most one blocking write takes
            // Until the host closes the stream: it must, or this never ends.
            while stream.blocking_write_and_flush(&chunk).is_ok() {}
            return;
        }
        if path == "/slurp" {
            let mut n = 0;
            if let Ok(body) = request.consume()
                && let Ok(stream) = body.stream()
            {
                while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                    n += chunk.len();
                }
            }
            return respond(out, 200, &format!("read {n}"));
        }
        if let Some(ms) = path.strip_prefix("/sleep/") {
            let ms: u64 = ms.parse().unwrap_or(0);
            wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
            return respond(out, 200, "slept");
        }
        if let Some(authority) = path.strip_prefix("/fetch/") {
            return match fetch(authority) {
                Ok(status) => respond(out, 200, &status.to_string()),
                Err(code) => respond(out, 200, &format!("error:{code:?}")),
            };
        }
        respond(out, 200, "hostile")
    }
}
