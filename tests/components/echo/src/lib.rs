//! Well-behaved: replies with the payload it got. `host3` makes three host calls first (bench).
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
        Ok(Some(message.payload))
    }

    fn shutdown() {}
}
