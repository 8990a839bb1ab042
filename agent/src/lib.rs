//! The airssys-wasm node agent: runs WebAssembly components as supervised,
//! capability-checked actors on one node.
//!
//! Module map (one hop to any decision):
//! - [`engine`]: the one wasmtime `Engine`, epoch ticker, on-disk compile cache.
//! - [`actor`] / [`supervisor`]: an instance with its mailbox; restarts and crash loops.
//! - [`broker`]: topics, direct send and request/response between actors.
//! - [`host`]: host side of the WIT interfaces and the WASI context.
//! - [`grant`]: the immutable per-instance capability table (hot path).
//! - [`limits`]: memory, CPU, time and rate quotas.
//! - [`manifest`]: local manifests for `airssys-agent run --manifest`.
//! - [`storage`]: the embedded key-value database.
//! - [`audit`]: the bounded audit pipeline (JSON log, counters, event sink).
//! - [`metrics`]: Prometheus registry.
pub mod actor;
pub mod audit;
pub mod broker;
pub mod engine;
pub mod error;
pub mod grant;
pub mod host;
pub mod limits;
pub mod manifest;
pub mod metrics;
pub mod storage;
pub mod supervisor;

pub use error::Error;
