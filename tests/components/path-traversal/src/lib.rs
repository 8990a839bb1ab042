//! Hostile: tries to read outside its preopened `/data` (`..`, absolute paths, a symlink) and reports what happened, one `path=>result` line each.
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

#[allow(unused_imports)]
use airssys::component::{
    logging, messaging, storage,
    types::{Error, Message, Origin},
};
use exports::airssys::component::lifecycle::Guest;

struct Component;
export!(Component);

const ATTEMPTS: &[&str] = &[
    "/data/../../../../etc/passwd",
    "/data/../outside.txt",
    "/etc/passwd",
    "../outside.txt",
    "/data/escape/outside.txt",
    "/data/escape-abs",
];

impl Guest for Component {
    fn init() -> Result<(), Error> {
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        if message.payload == b"ping" {
            return Ok(Some(b"pong".to_vec()));
        }
        let mut report = String::new();
        for path in ATTEMPTS {
            let outcome = match std::fs::read(path) {
                Ok(bytes) => format!("READ {}", String::from_utf8_lossy(&bytes)),
                Err(e) => format!("error:{e}"),
            };
            report.push_str(&format!("{path}=>{outcome}\n"));
        }
        Ok(Some(report.into_bytes()))
    }

    fn shutdown() {}
}
