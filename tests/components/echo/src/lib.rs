//! Well-behaved: replies with the payload it got. `host3` and `host3-light` make three host
//! calls first (benches: with and without a database read).
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
        if message.payload == b"host3" {
            // Three cheap host calls: the "warm message with three host calls" bench.
            logging::log(logging::Level::Trace, "echo: host3");
            let _ = storage::list_keys("bench");
            logging::log(logging::Level::Trace, "echo: host3 done");
        }
        if message.payload == b"host3-light" {
            // Three host calls that touch no database: what the runtime itself adds per call.
            logging::log(logging::Level::Trace, "echo: host3-light");
            let _ = messaging::publish("bench.light", b"x");
            logging::log(logging::Level::Trace, "echo: host3-light done");
        }
        Ok(Some(message.payload))
    }

    fn shutdown() {}
}
