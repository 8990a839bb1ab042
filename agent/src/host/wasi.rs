//! The per-instance WASI 0.2 context, built from the grant: one preopen per granted
//! directory ([`super::filesystem`]), sockets checked per address ([`super::sockets`]),
//! outgoing HTTP through [`super::http`]. Clocks and random are standard. No env besides
//! the granted keys, no args, no stdio.

use std::net::SocketAddr;

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use super::filesystem::host_dir;
use super::sockets::socket_allowed;
use crate::context::InstanceScope;
use crate::error::Error;

/// Builds the WASI context of the instance `ctx`.
pub fn build_ctx(ctx: &InstanceScope) -> Result<WasiCtx, Error> {
    let mut builder = WasiCtxBuilder::new();
    builder.envs(&ctx.env);
    // The compiled table merges duplicate grants of one path (read + write entries).
    let grants = ctx.grants.filesystem_grants();
    for grant in grants {
        let guest = &*grant.path;
        // A write-only directory is read-write for wasmtime-wasi; its descriptors are marked
        // at `get-directories` and the wrappers refuse every read (see the module doc).
        let perms = match ctx.grants.dir_access(guest) {
            (true, false) => FsPerms::ReadOnly,
            _ => FsPerms::ReadWrite,
        };
        let host = host_dir(&ctx.fs_root, guest);
        std::fs::create_dir_all(&host).map_err(|e| Error::Io {
            what: format!("create {}", host.display()),
            source: e,
        })?;
        builder
            .preopened_dir(&host, guest, perms)
            .map_err(Error::wasm("preopen a granted directory"))?;
    }
    let network = ctx.grants.has_network();
    builder
        .allow_tcp(network)
        .allow_udp(network)
        .allow_ip_name_lookup(network);
    let check_ctx = ctx.clone();
    builder.socket_addr_check(move |addr: SocketAddr, use_: SocketAddrUse| {
        let ctx = check_ctx.clone();
        Box::pin(async move { socket_allowed(&ctx, addr, use_) })
    });
    Ok(builder.build())
}
