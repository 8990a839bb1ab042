//! Hostile: `ping` answers `pong`; anything else recurses without bound.
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

#[allow(unused_imports)]
use airssys::component::{
    logging, messaging, storage,
    types::{Error, Message, Origin},
};
use exports::airssys::component::lifecycle::Guest;

struct Component;
export!(Component);

#[inline(never)]
#[allow(unconditional_recursion)] // The point of this guest.
fn dive(depth: u64, pad: [u64; 16]) -> u64 {
    let next = std::hint::black_box(pad);
    dive(depth + 1, next) + next[(depth % 16) as usize]
}

impl Guest for Component {
    fn init() -> Result<(), Error> {
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        if message.payload == b"ping" {
            return Ok(Some(b"pong".to_vec()));
        }
        Ok(Some(dive(0, [1; 16]).to_string().into_bytes()))
    }

    fn shutdown() {}
}
