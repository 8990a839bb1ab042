//! What one instance may make the host hold on its behalf, outside its linear memory.
//!
//! Every WASI resource a guest creates (HTTP fields and bodies, streams, pollables, files,
//! sockets) is an entry in the instance's `ResourceTable`, held by the host until the guest
//! drops it or the instance ends (the table lives in the instance's `Store` and goes with
//! it). Three bounds keep that inside the instance's budget:
//!
//! - the table holds at most [`table_entries`] entries, scaled to the memory quota so the
//!   largest things an entry can hold (HTTP fields, each capped at [`FIELD_SIZE_LIMIT`])
//!   cannot add up to more than the quota; a push past it traps and the call is reported as
//!   [`Quota::Handles`];
//! - one `fields` resource holds at most [`FIELD_SIZE_LIMIT`] bytes (refused as
//!   `size-exceeded`);
//! - at most [`MAX_OPEN_FILES`] of the entries hold a host descriptor (open files and
//!   directories, sockets): `open-at` and socket creation refuse more.
//!
//! Per-instance caps alone do not bound the node: instances × [`MAX_OPEN_FILES`] can still
//! reach the process's descriptor limit, and then the agent's own opens (a new instance's
//! preopens, its database, the API connection) fail. So a node-wide budget sits on top
//! ([`admits`]): guests may hold descriptors only below the limit minus a reserve kept for
//! the agent ([`agent_reserve`]). Each instance keeps a small floor
//! ([`GUARANTEED_PER_INSTANCE`]) that reaches into half of the reserve, so a neighbour
//! that holds a few files still opens one while a bomb has spent the budget.
//!
//! The budget is measured by the lowest free descriptor number, which is what the next
//! open gets: descriptors are handed out lowest first, so refusing a guest whenever the
//! next number is past the budget means every descriptor numbered past it was opened by
//! the agent itself, and the reserve stays the agent's.

use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi_http::FieldMapError;

use crate::limits::Quota;

/// Bytes one `wasi:http` `fields` resource may hold (in-memory size, as wasmtime-wasi-http
/// counts it). Proxies usually allow 8 KiB of headers on the wire.
pub const FIELD_SIZE_LIMIT: usize = 16 * 1024;

/// Fewest and most resource-table entries of one instance, whatever its memory quota.
const MIN_TABLE_ENTRIES: u64 = 256;
const MAX_TABLE_ENTRIES: u64 = 4096;

/// Host descriptors (open files and directories, sockets) one instance may hold at once,
/// preopens included. Far below any usual process limit (it is raised at startup, see
/// [`raise_fd_limit`]); the node-wide budget ([`admits`]) bounds their sum.
pub const MAX_OPEN_FILES: usize = 256;

/// Descriptors an instance may always hold, node budget spent or not (up to half of the
/// agent's reserve): enough for its preopens and a file or two.
pub const GUARANTEED_PER_INSTANCE: usize = 16;

/// Descriptors kept for the agent itself below a process limit of `limit`: a tenth of it,
/// but at least 1024 (or half the limit, when that is smaller).
pub fn agent_reserve(limit: u64) -> u64 {
    (limit / 10).max(1024.min(limit / 2))
}

/// The resource-table capacity of an instance with `memory_bytes` of memory quota: as many
/// full-size `fields` as fit in the quota, within the fixed bounds.
pub fn table_entries(memory_bytes: u64) -> usize {
    let by_memory = memory_bytes / FIELD_SIZE_LIMIT as u64;
    let entries = by_memory.clamp(MIN_TABLE_ENTRIES, MAX_TABLE_ENTRIES);
    usize::try_from(entries).unwrap_or(MIN_TABLE_ENTRIES as usize)
}

/// A fresh resource table for an instance with `memory_bytes` of memory quota.
pub fn table(memory_bytes: u64) -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(table_entries(memory_bytes));
    table
}

/// Whether `error` (a failed call) is a breach of these bounds: a push into a full
/// resource table, or a `fields` resource past its size (wasmtime-wasi-http traps on it).
pub fn is_breach(error: &wasmtime::Error) -> bool {
    error.chain().any(|e| {
        matches!(
            e.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        ) || matches!(
            e.downcast_ref::<FieldMapError>(),
            Some(FieldMapError::TotalSizeTooBig | FieldMapError::TooManyFields)
        )
    })
}

/// The quota a full resource table or too many open files is reported as.
pub const QUOTA: Quota = Quota::Handles;

/// How many host descriptors `table` holds: open files and directories, TCP and UDP
/// sockets (their streams share the socket's descriptor and are not counted again).
pub fn open_files(table: &mut ResourceTable) -> usize {
    table
        .iter_mut()
        .filter(|entry| {
            entry.downcast_ref::<Descriptor>().is_some()
                || entry
                    .downcast_ref::<wasmtime_wasi::p2::TcpSocket>()
                    .is_some()
                || entry
                    .downcast_ref::<wasmtime_wasi::p2::UdpSocket>()
                    .is_some()
        })
        .count()
}

/// The rule: whether an instance holding `held` descriptors may open one more, when the
/// next descriptor the process hands out is `next` (`None`: none is free) and the process
/// limit is `limit`. Below its cap, and: below the node budget (`limit` minus
/// [`agent_reserve`]), or, for an instance under its [`GUARANTEED_PER_INSTANCE`] floor,
/// below the limit minus half the reserve.
pub fn admits(held: usize, next: Option<u64>, limit: u64) -> bool {
    if held >= MAX_OPEN_FILES {
        return false;
    }
    let Some(next) = next else {
        return false;
    };
    let reserve = agent_reserve(limit);
    let ceiling = if held < GUARANTEED_PER_INSTANCE {
        limit - reserve / 2
    } else {
        limit - reserve
    };
    next < ceiling
}

/// Whether an instance holding `held` descriptors may open (or create) one more: [`admits`]
/// with the process's next descriptor and current limit.
pub fn may_open(held: usize) -> bool {
    held < MAX_OPEN_FILES && admits(held, next_descriptor(), descriptor_limit())
}

/// The process's soft descriptor limit (`u64::MAX` when unlimited).
fn descriptor_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// The descriptor number the next open gets (the lowest free one above stdio), found by
/// duplicating a descriptor kept for the purpose and closing the copy; `None` when no
/// descriptor is free (or the probe cannot be opened: the guest is refused).
fn next_descriptor() -> Option<u64> {
    static PROBE: OnceLock<std::fs::File> = OnceLock::new();
    let probe = match PROBE.get() {
        Some(probe) => probe,
        None => {
            let file = std::fs::File::open("/").ok()?;
            PROBE.get_or_init(|| file)
        }
    };
    // `try_clone` is `F_DUPFD_CLOEXEC` from 3: the lowest free number.
    let copy = probe.try_clone().ok()?;
    u64::try_from(copy.as_raw_fd()).ok()
}

/// Raises this process's soft descriptor limit to its hard limit and logs both, with the
/// node budget guests share, so the per-instance and node bounds, not the process limit,
/// are what a component meets first.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            let max = limit.maximum.unwrap_or(u64::MAX);
            tracing::info!(
                soft = ?limit.current,
                raised_to = ?limit.maximum,
                per_instance = MAX_OPEN_FILES,
                agent_reserve = agent_reserve(max),
                "descriptor limit"
            );
        }
        Err(e) => tracing::warn!(
            soft = ?limit.current,
            hard = ?limit.maximum,
            error = %e,
            "cannot raise the descriptor limit"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_capacity_rules() {
        let rows: &[(&str, u64, usize)] = &[
            ("a tiny quota still gets the floor", 1 << 20, 256),
            ("full-size fields fit the quota", 32 << 20, 2048),
            ("default quota", 64 << 20, 4096),
            ("a huge quota stops at the ceiling", 8 << 30, 4096),
        ];
        for (rule, memory, want) in rows {
            assert_eq!(table_entries(*memory), *want, "{rule}");
        }
    }

    #[test]
    fn open_file_rules() {
        const L: u64 = 20_000; // reserve 2,000: budget 18,000, floor 19,000
        const S: u64 = 1_536; // reserve 768: budget 768, floor 1,152
        #[rustfmt::skip]
        let rows: &[(&str, usize, Option<u64>, u64, bool)] = &[
            ("none held, plenty free", 0, Some(40), L, true),
            ("one below the cap", MAX_OPEN_FILES - 1, Some(400), L, true),
            ("at the cap", MAX_OPEN_FILES, Some(40), L, false),
            ("nothing free in the process", 0, None, L, false),
            ("just under the node budget", 100, Some(17_999), L, true),
            ("at the node budget", 100, Some(18_000), L, false),
            ("a small instance past the budget, in its floor", 3, Some(18_500), L, true),
            ("a small instance at the floor's end", 3, Some(19_000), L, false),
            ("just at the floor count the budget holds", GUARANTEED_PER_INSTANCE, Some(18_500), L, false),
            ("a small limit keeps half for the agent", 100, Some(767), S, true),
            ("a small limit's budget", 100, Some(768), S, false),
            ("a small limit's floor", 1, Some(1_151), S, true),
            ("a small limit's floor end", 1, Some(1_152), S, false),
        ];
        for (rule, held, next, limit, want) in rows {
            assert_eq!(admits(*held, *next, *limit), *want, "{rule}");
        }
        #[rustfmt::skip]
        let reserves: &[(&str, u64, u64)] = &[
            ("a tenth of a large limit", 1_048_576, 104_857),
            ("at least 1024", 4_096, 1_024),
            ("at most half a small limit", 1_024, 512),
        ];
        for (rule, limit, want) in reserves {
            assert_eq!(agent_reserve(*limit), *want, "{rule}");
        }
        // The live probe answers for this process (a test process is far from its limit).
        assert!(next_descriptor().is_some_and(|n| n >= 3));
        assert!(may_open(0));
        assert!(!may_open(MAX_OPEN_FILES));
    }

    #[test]
    fn breach_rules() {
        let mut t = ResourceTable::new();
        t.set_max_capacity(1);
        let _first = t.push(1u8).unwrap();
        let rows: Vec<(&str, wasmtime::Error, bool)> = vec![
            ("a full table", t.push(2u8).unwrap_err().into(), true),
            (
                "fields too big",
                FieldMapError::TotalSizeTooBig.into(),
                true,
            ),
            ("too many fields", FieldMapError::TooManyFields.into(), true),
            (
                "a bad header is not",
                FieldMapError::InvalidHeaderName.into(),
                false,
            ),
            ("another trap is not", wasmtime::Error::msg("other"), false),
        ];
        for (rule, error, want) in rows {
            assert_eq!(is_breach(&error), want, "{rule}");
        }
    }
}
