//! Hostile: `TARGET` sends TARGET an 8 MiB message and publishes one; reports the host's answers.
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
        let target = String::from_utf8_lossy(&message.payload).into_owned();
        let huge = vec![7u8; 8 << 20];
        let sent = messaging::send(&target, &huge);
        let published = messaging::publish("events.huge", &huge);
        Ok(Some(
            format!("send={sent:?}|publish={published:?}").into_bytes(),
        ))
    }

    fn shutdown() {}
}
