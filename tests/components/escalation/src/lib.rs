//! Hostile: uses capabilities it was not granted. `publish`, `subscribe`, `send`, `storage` each report the host's answer.
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

#[allow(unused_imports)]
use airssys::component::{
    logging, messaging, storage,
    types::{Error, Message, Origin},
};
use exports::airssys::component::lifecycle::Guest;

struct Component;
export!(Component);

fn report(result: Result<(), Error>) -> Option<Vec<u8>> {
    Some(match result {
        Ok(()) => b"allowed".to_vec(),
        Err(Error::AccessDenied(m)) => format!("access-denied:{m}").into_bytes(),
        Err(e) => format!("other:{e:?}").into_bytes(),
    })
}

impl Guest for Component {
    fn init() -> Result<(), Error> {
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        Ok(match message.payload.as_slice() {
            b"ping" => Some(b"pong".to_vec()),
            b"publish" => report(messaging::publish("admin.secrets", b"leak")),
            b"subscribe" => report(messaging::subscribe("admin.>")),
            b"send" => report(messaging::send("billing", b"pay me")),
            b"storage" => report(storage::set("secrets", "k", b"v")),
            _ => return Err(Error::InvalidInput("unknown command".into())),
        })
    }

    fn shutdown() {}
}
