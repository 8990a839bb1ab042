//! The airssys-wasm node agent: runs WebAssembly components as supervised,
//! capability-checked actors on one node.
//!
//! Module map, bottom up: each layer uses only the layers above it in this list, so the
//! dependencies read one way (no import circles).
//!
//! 1. Vocabulary, no decisions of their own beyond pure tables:
//!    - [`bindings`]: the generated WIT bindings (`WitError`, messages).
//!    - [`id`]: [`id::ComponentId`], a component's one identity type.
//!    - [`grant`]: [`grant::GrantTable`], the compiled per-instance capability table. Every
//!      capability decision is one of its `check_*` methods (or `may_resolve`, `dir_access`).
//!    - [`limits`]: [`limits::Quotas`], the one quota vocabulary [`limits::Quota`], the
//!      memory limiter, CPU budget and rate limiter.
//!    - [`restart`]: backoff and crash-loop bookkeeping.
//! 2. Pieces over the vocabulary:
//!    - [`error`]: the crate's error enum (wraps storage's).
//!    - [`audit`]: the bounded audit pipeline (event model, hot-path sink, Event
//!      aggregation, writer and log rotation, its own counters, the Kubernetes Event
//!      publisher).
//!    - [`broker`]: topics, direct send and request/response between mailboxes.
//!    - [`storage`]: the embedded key-value database and its byte quota.
//!    - [`metrics`]: the Prometheus registry (registers the audit counters).
//! 3. [`context`]: what one revision of a component runs with, and
//!    [`context::InstanceScope`], the one path that records denials and quota breaches.
//! 4. [`host`]: the host side of the WIT interfaces and the WASI context (filesystem,
//!    sockets, outgoing HTTP); every check calls the grant table and records through the scope.
//! 5. [`engine`]: the one wasmtime `Engine`, epoch ticker, on-disk compile cache.
//! 6. [`instance`]: one live instance and one call into it under its budgets.
//! 7. [`actor`]: a component's instances draining its mailbox; kills and restarts.
//!    [`http_server`]: an HTTP component's listener, one pooled instance per request,
//!    its per-request limits and drain.
//! 8. [`supervisor`]: the components on this node (add, update, remove).
//! 9. [`manifest`]: local manifests for `airssys-agent run --manifest`.
//! 10. [`artifact`]: how node mode gets a Placement's verified bytes; [`fetch`]: from the
//!     operator's artifact server, cached on disk by digest.
//! 11. [`serve`]: the `/metrics`, `/healthz` and `/readyz` endpoint.
//! 12. [`node`]: node mode: the agent Lease, this node's Placements converged onto the
//!     supervisor, their status.
pub mod bindings;
pub mod grant;
pub mod id;
pub mod limits;
pub mod restart;

pub mod audit;
pub mod broker;
pub mod error;
pub mod metrics;
pub mod storage;

pub mod actor;
pub mod artifact;
pub mod context;
pub mod engine;
pub mod fetch;
pub mod host;
pub mod http_server;
pub mod instance;
pub mod manifest;
pub mod serve;
pub mod supervisor;

pub mod node;

pub use error::Error;
