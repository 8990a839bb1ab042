//! Hostile: calls `wasi:filesystem` directly on its preopened descriptors, the way a guest
//! that bypasses wasi-libc would, to escape or widen its filesystem grants. Commands (fields
//! split on `|`; `P`/`Q` name a preopen by its guest path, paths after it are relative):
//!
//! - `read|/abs`, `write|/abs|DATA`, `list|/abs`: through std (wasi-libc picks the preopen)
//! - `open|P|path|MODE`: MODE is `r` (read), `w` (write), `c` (create + write), `d` (directory)
//! - `stat|P|path`, `hash|P|path`, `readlink|P|path`, `settimes|P|path`, `mkdir|P|path`,
//!   `rmdir|P|path`, `unlink|P|path`
//! - `symlink|P|TARGET|path`, `rename|P|old|Q|new`, `link|P|old|Q|new`
//! - `crash`: traps, so the next message runs in a fresh instance with fresh preopens
//!
//! Answers `ok` (or the data read) or `error:CODE` (the WASI error name, e.g.
//! `error:not-permitted`).
wit_bindgen::generate!({ path: "../../../wit", world: "component" });

#[allow(unused_imports)]
use airssys::component::{
    logging, messaging, storage,
    types::{Error, Message, Origin},
};
use exports::airssys::component::lifecycle::Guest;
use wasip2::filesystem::preopens::get_directories;
use wasip2::filesystem::types::{
    Descriptor, DescriptorFlags, ErrorCode, NewTimestamp, OpenFlags, PathFlags,
};

struct Component;
export!(Component);

fn preopen(name: &str) -> Result<Descriptor, String> {
    get_directories()
        .into_iter()
        .find(|(_, n)| n == name)
        .map(|(d, _)| d)
        .ok_or_else(|| format!("error:no preopen {name}"))
}

fn code(e: ErrorCode) -> String {
    format!("error:{}", e.name())
}

fn done(r: Result<(), ErrorCode>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => code(e),
    }
}

fn raw(op: &str, args: &[&str]) -> Result<String, String> {
    let arg = |i: usize| args.get(i).copied().ok_or_else(|| format!("error:missing arg {i}"));
    let dir = preopen(arg(0)?)?;
    let nofollow = PathFlags::empty();
    Ok(match op {
        "open" => {
            let (open, flags) = match arg(2)? {
                "r" => (OpenFlags::empty(), DescriptorFlags::READ),
                "w" => (OpenFlags::empty(), DescriptorFlags::WRITE),
                "c" => (OpenFlags::CREATE, DescriptorFlags::WRITE),
                _ => (OpenFlags::DIRECTORY, DescriptorFlags::READ),
            };
            match dir.open_at(nofollow, arg(1)?, open, flags) {
                Ok(_) => "ok".into(),
                Err(e) => code(e),
            }
        }
        "stat" => match dir.stat_at(nofollow, arg(1)?) {
            Ok(stat) => format!("ok:{:?}", stat.type_),
            Err(e) => code(e),
        },
        "hash" => match dir.metadata_hash_at(nofollow, arg(1)?) {
            Ok(_) => "ok".into(),
            Err(e) => code(e),
        },
        "readlink" => match dir.readlink_at(arg(1)?) {
            Ok(target) => format!("ok:{target}"),
            Err(e) => code(e),
        },
        "settimes" => done(dir.set_times_at(
            nofollow,
            arg(1)?,
            NewTimestamp::Now,
            NewTimestamp::Now,
        )),
        "mkdir" => done(dir.create_directory_at(arg(1)?)),
        "rmdir" => done(dir.remove_directory_at(arg(1)?)),
        "unlink" => done(dir.unlink_file_at(arg(1)?)),
        "symlink" => done(dir.symlink_at(arg(1)?, arg(2)?)),
        "rename" => {
            let to = preopen(arg(2)?)?;
            done(dir.rename_at(arg(1)?, &to, arg(3)?))
        }
        "link" => {
            let to = preopen(arg(2)?)?;
            done(dir.link_at(nofollow, arg(1)?, &to, arg(3)?))
        }
        _ => return Err(format!("error:unknown command {op}")),
    })
}

impl Guest for Component {
    fn init() -> Result<(), Error> {
        Ok(())
    }

    fn handle_message(message: Message) -> Result<Option<Vec<u8>>, Error> {
        let cmd = String::from_utf8_lossy(&message.payload).into_owned();
        let parts: Vec<&str> = cmd.split('|').collect();
        let reply = match parts.as_slice() {
            ["ping"] => "pong".into(),
            ["crash"] => panic!("crash on request"),
            ["read", path] => match std::fs::read(path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => format!("error:{e}"),
            },
            ["write", path, data] => match std::fs::write(path, data) {
                Ok(()) => "ok".into(),
                Err(e) => format!("error:{e}"),
            },
            ["list", path] => match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut names: Vec<String> = entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    names.join(",")
                }
                Err(e) => format!("error:{e}"),
            },
            [op, args @ ..] => raw(op, args).unwrap_or_else(|e| e),
            [] => "error:empty".into(),
        };
        Ok(Some(reply.into_bytes()))
    }

    fn shutdown() {}
}
