//! Hostile, no grants needed: `ping` answers `pong`; `bomb:SIZE` creates 10,000 `wasi:http`
//! `fields` of SIZE bytes each and keeps them all alive (across calls), so the host holds
//! their contents. Replies `held:N` if it is never stopped.
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

#[allow(unused_imports)]
use airssys::component::{
    logging, messaging, storage,
    types::{Error, Message, Origin},
};
use exports::airssys::component::lifecycle::Guest;
use std::sync::Mutex;
use wasip2::http::types::Fields;

struct Component;
export!(Component);

/// Kept across calls: the host side lives as long as the instance.
static HOARD: Mutex<Vec<Fields>> = Mutex::new(Vec::new());

impl Guest for Component {
    fn init() -> Result<(), Error> {
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        if message.payload == b"ping" {
            return Ok(Some(b"pong".to_vec()));
        }
        let cmd = String::from_utf8_lossy(&message.payload).into_owned();
        let size: usize = cmd
            .strip_prefix("bomb:")
            .and_then(|s| s.parse().ok())
            .unwrap_or(100_000);
        let mut hoard = HOARD.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..10_000 {
            let name = format!("x-bomb-{i}");
            if let Ok(f) = Fields::from_list(&[(name, vec![b'a'; size])]) {
                hoard.push(f);
            }
        }
        Ok(Some(format!("held:{}", hoard.len()).into_bytes()))
    }

    fn shutdown() {}
}
