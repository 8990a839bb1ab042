//! Well-behaved: `read:PATH` returns the file, `write:PATH:DATA` writes it, `append:PATH:DATA`
//! appends, `list:PATH` names the entries of a directory, `stat:PATH` gives a file's size,
//! `mkdir:PATH` creates a directory, `move:FROM:TO` renames, `peek:PATH` opens a file for
//! writing only and then tries to read it. Errors come back as `error:...`.
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
        } else if let Some(rest) = cmd.strip_prefix("append:") {
            use std::io::Write;
            let (path, data) = rest.split_once(':').unwrap_or((rest, ""));
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .and_then(|mut f| f.write_all(data.as_bytes()))
                .map(|()| b"appended".to_vec())
        } else if let Some(path) = cmd.strip_prefix("list:") {
            std::fs::read_dir(path).and_then(|entries| {
                let mut names = Vec::new();
                for entry in entries {
                    names.push(entry?.file_name().to_string_lossy().into_owned());
                }
                names.sort();
                Ok(names.join(",").into_bytes())
            })
        } else if let Some(path) = cmd.strip_prefix("stat:") {
            std::fs::metadata(path).map(|m| m.len().to_string().into_bytes())
        } else if let Some(rest) = cmd.strip_prefix("move:") {
            let (from, to) = rest.split_once(':').unwrap_or((rest, ""));
            std::fs::rename(from, to).map(|()| b"moved".to_vec())
        } else if let Some(path) = cmd.strip_prefix("peek:") {
            use std::io::Read;
            let mut buf = Vec::new();
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map(|_| buf)
        } else if let Some(path) = cmd.strip_prefix("mkdir:") {
            std::fs::create_dir(path).map(|()| b"created".to_vec())
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
