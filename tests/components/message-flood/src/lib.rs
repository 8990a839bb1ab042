//! Hostile: `TARGET` sends to TARGET as fast as it can until the host pushes back; replies `SENT|ERROR`.
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
        if target == "ping" {
            return Ok(Some(b"pong".to_vec()));
        }
        let mut sent: u64 = 0;
        let error = loop {
            match messaging::send(&target, b"flood") {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            if sent >= 1_000_000 {
                return Ok(Some(format!("{sent}|none").into_bytes()));
            }
        };
        Ok(Some(format!("{sent}|{error:?}").into_bytes()))
    }

    fn shutdown() {}
}
