//! Hostile, and busy on its own: in `init` it prints a line, then tries what it was not
//! granted — a TCP connect to an undeclared address (`TARGET`, default 10.255.0.1:80), a file
//! outside its `/data` grant, and a publish on a topic it may not use (`FORBIDDEN_TOPIC`,
//! default `payments.charge`). With `FLOOD=N` it repeats the publish N times (a denial flood).
//! It then starts normally, so it runs (and stays Ready) while its denials are audited.
//! Messages are echoed.
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

use airssys::component::{
    messaging,
    types::{Error, Message},
};
use exports::airssys::component::lifecycle::Guest;

struct Component;
export!(Component);

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

impl Guest for Component {
    fn init() -> Result<(), Error> {
        println!("trespasser: starting");
        let target = env("TARGET", "10.255.0.1:80");
        let connect = std::net::TcpStream::connect(target.as_str());
        println!("trespasser: connect {target}: {:?}", connect.err());
        let read = std::fs::read_to_string("/data/../etc/passwd");
        println!("trespasser: read outside /data: {:?}", read.err());
        let topic = env("FORBIDDEN_TOPIC", "payments.charge");
        let flood: u32 = env("FLOOD", "1").parse().unwrap_or(1);
        let mut refused = 0u32;
        for _ in 0..flood.max(1) {
            if messaging::publish(&topic, b"x").is_err() {
                refused += 1;
            }
        }
        println!("trespasser: {refused} publishes on {topic} refused");
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(message.payload))
    }

    fn shutdown() {}
}
