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
//! - at most [`MAX_OPEN_FILES`] of the entries are open host files: `open-at` refuses more,
//!   so no instance can take the process's descriptors from its neighbours.

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

/// Open host files (and directories) one instance may hold at once, preopens included.
/// Far below any usual process limit (it is raised at startup, see [`raise_fd_limit`]),
/// so the agent and its other instances keep room.
pub const MAX_OPEN_FILES: usize = 256;

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

/// How many open files and directories `table` holds.
pub fn open_files(table: &mut ResourceTable) -> usize {
    table
        .iter_mut()
        .filter(|entry| entry.downcast_ref::<Descriptor>().is_some())
        .count()
}

/// Whether one more file may be opened with `open` already open.
pub fn may_open(open: usize) -> bool {
    open < MAX_OPEN_FILES
}

/// Raises this process's soft descriptor limit to its hard limit and logs both, so the
/// per-instance bounds, not the process limit, are what a component meets first.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            soft = ?limit.current,
            raised_to = ?limit.maximum,
            per_instance = MAX_OPEN_FILES,
            "descriptor limit"
        ),
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
        let rows: &[(&str, usize, bool)] = &[
            ("none open", 0, true),
            ("one below the cap", MAX_OPEN_FILES - 1, true),
            ("at the cap", MAX_OPEN_FILES, false),
        ];
        for (rule, open, want) in rows {
            assert_eq!(may_open(*open), *want, "{rule}");
        }
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
