//! Well-behaved: subscribes to `events.>`; counts topic messages; `count` replies with the count and last payload, `sub:PATTERN` subscribes further.
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

#[allow(unused_imports)]
use airssys::component::{
    logging, messaging, storage,
    types::{Error, Message, Origin},
};
use exports::airssys::component::lifecycle::Guest;

struct Component;
export!(Component);

use std::cell::RefCell;

thread_local! {
    static SEEN: RefCell<(u64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
}

impl Guest for Component {
    fn init() -> Result<(), Error> {
        messaging::subscribe("events.>")
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        match message.origin {
            Origin::Topic(_) => {
                SEEN.with(|s| {
                    let mut s = s.borrow_mut();
                    s.0 += 1;
                    s.1 = message.payload;
                });
                Ok(None)
            }
            Origin::Direct(_) => {
                let cmd = String::from_utf8_lossy(&message.payload).into_owned();
                if let Some(pattern) = cmd.strip_prefix("sub:") {
                    messaging::subscribe(pattern)?;
                    return Ok(Some(b"subscribed".to_vec()));
                }
                let reply = SEEN.with(|s| {
                    let s = s.borrow();
                    format!("{}|{}", s.0, String::from_utf8_lossy(&s.1))
                });
                Ok(Some(reply.into_bytes()))
            }
        }
    }

    fn shutdown() {}
}
