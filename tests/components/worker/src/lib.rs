//! Well-behaved unless told otherwise; used to test `maxConcurrentMessages`:
//! - `TARGET|PAYLOAD`: requests TARGET and replies with its answer (so a test that plays
//!   TARGET can hold the message inside the guest for as long as it likes);
//! - `trap`: panics (the instance traps);
//! - anything else: replies `v1:<payload>` (the version tag tells revisions apart).
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

#[allow(unused_imports)]
use airssys::component::{
    logging, messaging, storage,
    types::{Error, Message, Origin},
};
use exports::airssys::component::lifecycle::Guest;

struct Component;
export!(Component);

impl Guest for Component {
    fn init() -> Result<(), Error> {
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        if message.payload == b"trap" {
            panic!("worker told to trap");
        }
        if let Some(split) = message.payload.iter().position(|b| *b == b'|') {
            let target = String::from_utf8_lossy(&message.payload[..split]).into_owned();
            let reply = messaging::request(&target, &message.payload[split + 1..], 60_000)?;
            return Ok(Some(reply));
        }
        let mut reply = b"v1:".to_vec();
        reply.extend_from_slice(&message.payload);
        Ok(Some(reply))
    }

    fn shutdown() {}
}
