//! Well-behaved: `TARGET|PAYLOAD` makes a request to TARGET and replies with its answer (round-trip bench).
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
        let Some(split) = message.payload.iter().position(|b| *b == b'|') else {
            return Err(Error::InvalidInput("expected TARGET|PAYLOAD".into()));
        };
        let target = String::from_utf8_lossy(&message.payload[..split]).into_owned();
        let reply = messaging::request(&target, &message.payload[split + 1..], 5_000)?;
        Ok(Some(reply))
    }

    fn shutdown() {}
}
