//! Hostile: probes the broker and storage edges. Commands (`:`-separated):
//! `err:N` / `ok:N` answer with an N-byte error / payload; `ask:TARGET:PAYLOAD` requests
//! TARGET and describes the reply (`ok:LEN` or `KIND:LEN`); `publish:TOPIC`,
//! `subscribe:PATTERN`, `send:COMPONENT`, `bucket:NAME` report the host's answer;
//! `subscribe-many:PREFIX:N` subscribes to `PREFIX.0` .. `PREFIX.N-1`; `fill:BUCKET` writes
//! empty values under new keys until the host refuses. Each reports `KIND` of the answer.
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

#[allow(unused_imports)]
use airssys::component::{
    logging, messaging, storage,
    types::{Error, Message, Origin},
};
use exports::airssys::component::lifecycle::Guest;

struct Component;
export!(Component);

fn kind(e: &Error) -> (&'static str, &str) {
    match e {
        Error::AccessDenied(m) => ("access-denied", m),
        Error::NotFound(m) => ("not-found", m),
        Error::InvalidInput(m) => ("invalid-input", m),
        Error::QuotaExceeded(m) => ("quota-exceeded", m),
        Error::Timeout(m) => ("timeout", m),
        Error::Internal(m) => ("internal", m),
    }
}

/// `allowed`, or `KIND:MESSAGE` with the message cut to 200 bytes.
fn report(result: Result<(), Error>) -> String {
    match result {
        Ok(()) => "allowed".into(),
        Err(e) => {
            let (k, m) = kind(&e);
            format!("{k}:{}", m.chars().take(200).collect::<String>())
        }
    }
}

impl Guest for Component {
    fn init() -> Result<(), Error> {
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        let text = String::from_utf8_lossy(&message.payload).into_owned();
        let mut parts = text.splitn(3, ':');
        let (cmd, a, b) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let n = |s: &str| s.parse::<usize>().unwrap_or(0);
        let answer = match cmd {
            "ping" => "pong".to_string(),
            "err" => return Err(Error::InvalidInput("e".repeat(n(a)))),
            "ok" => return Ok(Some(vec![b'o'; n(a)])),
            "ask" => match messaging::request(a, b.as_bytes(), 5_000) {
                Ok(reply) => format!("ok:{}", reply.len()),
                Err(e) => {
                    let (k, m) = kind(&e);
                    format!("{k}:{}", m.len())
                }
            },
            "publish" => report(messaging::publish(a, b"x")),
            "subscribe" => report(messaging::subscribe(a)),
            "send" => report(messaging::send(a, b"x")),
            "bucket" => report(storage::set(a, "k", b"v")),
            "subscribe-many" => {
                let mut made = 0;
                let mut last = "allowed".to_string();
                for i in 0..n(b) {
                    last = report(messaging::subscribe(&format!("{a}.{i}")));
                    if last != "allowed" {
                        break;
                    }
                    made += 1;
                }
                format!("made={made} last={last}")
            }
            "fill" => {
                let mut stored = 0u64;
                let last = loop {
                    match storage::set(a, &format!("{stored:x}"), b"") {
                        Ok(()) => stored += 1,
                        Err(e) => break report(Err(e)),
                    }
                };
                format!("stored={stored} last={last}")
            }
            _ => return Err(Error::InvalidInput("unknown command".into())),
        };
        Ok(Some(answer.into_bytes()))
    }

    fn shutdown() {}
}
