//! Well-behaved: counters in the `counters` bucket. `incr:KEY`, `get:KEY`, `del:KEY`, `list`, `fill:KEY:BYTES`, `other:BUCKET`.
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

#[allow(unused_imports)]
use airssys::component::{
    logging, messaging, storage,
    types::{Error, Message, Origin},
};
use exports::airssys::component::lifecycle::Guest;

struct Component;
export!(Component);

const BUCKET: &str = "counters";

fn text(s: impl Into<String>) -> Option<Vec<u8>> {
    Some(s.into().into_bytes())
}

fn read(key: &str) -> Result<u64, Error> {
    Ok(match storage::get(BUCKET, key)? {
        Some(bytes) => String::from_utf8_lossy(&bytes).parse().unwrap_or(0),
        None => 0,
    })
}

impl Guest for Component {
    fn init() -> Result<(), Error> {
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        let cmd = String::from_utf8_lossy(&message.payload).into_owned();
        let (verb, rest) = cmd.split_once(':').unwrap_or((cmd.as_str(), ""));
        match verb {
            "incr" => {
                let next = read(rest)? + 1;
                storage::set(BUCKET, rest, next.to_string().as_bytes())?;
                Ok(text(next.to_string()))
            }
            "get" => Ok(text(read(rest)?.to_string())),
            "del" => {
                storage::delete(BUCKET, rest)?;
                Ok(text("deleted"))
            }
            "list" => Ok(text(storage::list_keys(BUCKET)?.join(","))),
            "fill" => {
                let (key, size) = rest.split_once(':').unwrap_or((rest, "0"));
                let size: usize = size.parse().unwrap_or(0);
                storage::set(BUCKET, key, &vec![b'x'; size])?;
                Ok(text("filled"))
            }
            // Touch a bucket the grant may not cover.
            "other" => {
                storage::set(rest, "k", b"v")?;
                Ok(text("written"))
            }
            _ => Err(Error::InvalidInput(format!("unknown command {cmd}"))),
        }
    }

    fn shutdown() {}
}
