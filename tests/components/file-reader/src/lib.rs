//! Well-behaved: `read:PATH` returns the file, `write:PATH:DATA` writes it. Errors come back as `error:...`.
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
        let result = if let Some(path) = cmd.strip_prefix("read:") {
            std::fs::read(path)
        } else if let Some(rest) = cmd.strip_prefix("write:") {
            let (path, data) = rest.split_once(':').unwrap_or((rest, ""));
            std::fs::write(path, data).map(|()| b"written".to_vec())
        } else {
            return Err(Error::InvalidInput(cmd));
        };
        Ok(Some(match result {
            Ok(bytes) => bytes,
            Err(e) => format!("error:{e}").into_bytes(),
        }))
    }

    fn shutdown() {}
}
