//! Well-behaved HTTP component (world `wasi:http/proxy`): `GET` answers `hello from PATH`;
//! `POST` reads the request body and answers `received N bytes`.
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

fn body_len(request: &IncomingRequest) -> Option<usize> {
    let body = request.consume().ok()?;
    let stream = body.stream().ok()?;
    let mut n = 0;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => n += chunk.len(),
            Err(wasip2::io::streams::StreamError::Closed) => return Some(n),
            Err(_) => return None,
        }
    }
}

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = body.write() {
        let _ = stream.blocking_write_and_flush(text.as_bytes());
    }
    let _ = OutgoingBody::finish(body, None);
}

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        match request.method() {
            Method::Post => match body_len(&request) {
                Some(n) => respond(out, 200, &format!("received {n} bytes\n")),
                None => respond(out, 400, "cannot read the body\n"),
            },
            _ => respond(out, 200, &format!("hello from {path}\n")),
        }
    }
}
