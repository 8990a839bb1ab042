//! Hostile: tries to turn the agent's own log into its output channel. With `MODE=fail-init`
//! its `init` fails with a 2 MB error (logged on every restart before the fix); otherwise
//! every message logs 10,000 lines of 4,000 bytes: through `logging::log`, or printed to
//! stdout or stderr when the payload says `stdout` or `stderr`.
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

use airssys::component::{
    logging::{self, Level},
    types::{Error, Message},
};
use exports::airssys::component::lifecycle::Guest;

struct Component;
export!(Component);

impl Guest for Component {
    fn init() -> Result<(), Error> {
        if std::env::var("MODE").as_deref() == Ok("fail-init") {
            return Err(Error::InvalidInput("x".repeat(2 << 20)));
        }
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        let line = "y".repeat(4000);
        match message.payload.as_slice() {
            b"stdout" => {
                for i in 0..10_000 {
                    println!("line {i} {line}");
                }
                Ok(Some(b"printed".to_vec()))
            }
            b"stderr" => {
                for i in 0..10_000 {
                    eprintln!("line {i} {line}");
                }
                Ok(Some(b"printed".to_vec()))
            }
            _ => {
                for _ in 0..10_000 {
                    logging::log(Level::Info, &line);
                }
                Ok(Some(b"logged".to_vec()))
            }
        }
    }

    fn shutdown() {}
}
