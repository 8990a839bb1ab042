//! The `wasm.airssys.dev/v1alpha1` API shared by the operator, the agent and the tests.
//!
//! - [`component`]: `WasmComponent`, what authors apply.
//! - [`trust_source`]: `TrustSource`, what platform teams trust, deny or approve.
//! - [`placement`]: `Placement`, one component on one node (internal).
//! - [`capability`]: the capability grammar, matching and set comparison.
//! - [`http`]: `spec.http` of HTTP components and its copy on Placements.
//! - [`agent`]: the agent Lease, its capacity, the artifact server's protocol.
//! - [`artifact`], [`limits`], [`condition`], [`reason`]: shared pieces.
//! - [`generate`]: the CRD YAML the cluster is given.
pub mod agent;
pub mod artifact;
pub mod capability;
pub mod component;
pub mod condition;
pub mod generate;
pub mod http;
pub mod limits;
pub mod placement;
pub mod reason;
pub mod trust_source;

pub use artifact::{Artifact, Digest};
pub use capability::{Capabilities, CapabilitySet};
pub use component::{WasmComponent, WasmComponentSpec, WasmComponentStatus};
pub use condition::{Condition, ConditionStatus, ConditionType};
pub use http::{HttpLimits, HttpSpec, PlacementHttp};
pub use limits::{Limits, ResolvedLimits};
pub use placement::{Placement, PlacementSpec, PlacementStatus};
pub use reason::Reason;
pub use trust_source::{TrustSource, TrustSourceSpec, TrustSourceStatus};

/// The API group.
pub const GROUP: &str = "wasm.airssys.dev";
/// The API version within [`GROUP`].
pub const VERSION: &str = "v1alpha1";
