//! Well-behaved: `TOPIC|DATA` publishes DATA to TOPIC.
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
        let cmd = String::from_utf8_lossy(&message.payload).into_owned();
        let (topic, data) = cmd.split_once('|').unwrap_or((cmd.as_str(), ""));
        messaging::publish(topic, data.as_bytes())?;
        Ok(Some(b"published".to_vec()))
    }

    fn shutdown() {}
}
