//! The agent's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A wasmtime operation failed (engine setup, compile, link, instantiate).
    #[error("cannot {what}: {source:#}")]
    Wasm {
        what: &'static str,
        #[source]
        source: wasmtime::Error,
    },
    /// A file or directory operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The bytes do not hash to the digest they were fetched by.
    #[error("artifact digest mismatch: expected {expected}, got {actual}; refusing to run it")]
    DigestMismatch {
        expected: airssys_crds::artifact::Digest,
        actual: airssys_crds::artifact::Digest,
    },
    /// The artifact could not be fetched (the artifact server refused, failed or is
    /// unreachable, or served something that is not the component).
    #[error("cannot fetch {digest}: {reason}")]
    Fetch { digest: String, reason: String },
    /// The `.wasm` is larger than the agent compiles.
    #[error("component is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    /// A manifest could not be read or is invalid.
    #[error("invalid manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    /// A capability in a manifest does not parse.
    #[error("invalid capabilities for {component}: {source}")]
    Capability {
        component: String,
        #[source]
        source: airssys_crds::capability::CapabilityError,
    },
    /// The named component is not running on this node.
    #[error("component {0} is not running on this node")]
    UnknownComponent(String),
    /// An update's new revision could not start (its `init` failed, trapped or ran out of
    /// a quota); the old revision keeps running.
    #[error(
        "revision {digest} of component {component} did not start ({reason}); the previous revision keeps running"
    )]
    StartFailed {
        component: String,
        digest: String,
        reason: String,
    },
    /// A component with this name already runs.
    #[error("component {0} is already running; update it instead")]
    AlreadyRunning(String),
    /// A Kubernetes API call failed (node mode: the Lease, the Placement watch, status).
    #[error("cannot {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The storage database failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The component's exports do not fit the world it is asked to run as.
    #[error(transparent)]
    World(#[from] crate::engine::WorldError),
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    Shutdown,
    /// A bug or an impossible state; the message says where.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Adapter for `map_err` on wasmtime results.
    pub fn wasm(what: &'static str) -> impl FnOnce(wasmtime::Error) -> Error {
        move |source| Error::Wasm { what, source }
    }
}
