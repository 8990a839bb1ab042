//! The per-instance WASI 0.2 context, built from the grant: one preopen per granted
//! directory ([`super::filesystem`]), sockets checked per address ([`super::sockets`]),
//! outgoing HTTP through [`super::http`]. Clocks and random are standard. No env besides
//! the granted keys, no args, no stdin; stdout and stderr go to the agent's log, line by line,
//! within the instance's log budget ([`super::logging`]).

use std::net::SocketAddr;

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use super::filesystem::preopen_grants;
use super::logging::{GuestOutput, Origin, SharedLogBudget};
use super::sockets::socket_allowed;
use crate::context::InstanceScope;
use crate::error::Error;

/// Builds the WASI context of the instance `ctx`.
pub(crate) fn build_ctx(
    ctx: &InstanceScope,
    log_budget: &SharedLogBudget,
) -> Result<WasiCtx, Error> {
    let mut builder = WasiCtxBuilder::new();
    builder.envs(&ctx.env);
    builder
        .stdout(GuestOutput::new(
            log_budget.clone(),
            ctx.id.clone(),
            Origin::Stdout,
        ))
        .stderr(GuestOutput::new(
            log_budget.clone(),
            ctx.id.clone(),
            Origin::Stderr,
        ));
    // One preopen per granted directory, opened without following symlinks.
    preopen_grants(&mut builder, ctx)?;
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
