//! Where node mode gets a component's bytes: an [`ArtifactSource`] turns a Placement's spec
//! into the exact `.wasm` its digest pins, re-hashed on this node.
//!
//! The operator's artifact server is the production source (see `fetch`); tests may use
//! another. Whatever the source, the bytes returned are checked against the Placement's
//! digest (directly, or through the OCI manifest it names) before they reach the engine.

use std::future::Future;
use std::sync::Arc;

use airssys_crds::artifact::Digest;
use airssys_crds::placement::PlacementSpec;

/// The `.wasm` of a Placement, verified.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The component bytes.
    pub wasm: Arc<[u8]>,
    /// Their SHA-256 (the wasm digest: for an OCI artifact, the layer's digest, not the
    /// Placement's manifest digest).
    pub wasm_digest: Digest,
}

/// Fetches the bytes a Placement pins. Implementations verify before returning: bytes that do
/// not hash to what the Placement's digest fixes are an error ([`crate::Error::DigestMismatch`]),
/// never returned.
pub trait ArtifactSource: Send + Sync + 'static {
    fn fetch(
        &self,
        placement: &PlacementSpec,
    ) -> impl Future<Output = Result<Fetched, crate::Error>> + Send;
}
