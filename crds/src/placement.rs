//! `Placement`: one approved component on one node. Written by the operator, read by the
//! agent of that node (field selector on `spec.nodeName`), status written by that agent.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::artifact::{Artifact, DIGEST_MESSAGE, DIGEST_RULE};
use crate::capability::Capabilities;
use crate::component::ConfigEntry;
use crate::condition::Condition;
use crate::limits::Limits;

/// A component's instances on one node (internal; owned by its `WasmComponent`).
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) group repeats the same keys by design"
)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "wasm.airssys.dev",
    version = "v1alpha1",
    kind = "Placement",
    plural = "placements",
    category = "airssys",
    namespaced,
    status = "PlacementStatus",
    doc = "Instances of an approved WasmComponent on one node. Written by the operator; do not edit.",
    selectable = ".spec.nodeName",
    selectable = ".spec.component",
    printcolumn(name = "Component", type_ = "string", json_path = ".spec.component"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlacementSpec {
    /// The node whose agent runs these instances.
    #[schemars(length(min = 1, max = 253))]
    pub node_name: String,
    /// Name of the owning `WasmComponent` (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub component: String,
    /// The approved digest; the agent re-hashes the fetched bytes against it.
    #[x_kube(validation = kube::core::Rule::new(DIGEST_RULE).message(DIGEST_MESSAGE))]
    #[schemars(length(min = 71, max = 71))]
    pub digest: String,
    /// Where to fetch the bytes (OCI references are pinned to `digest`).
    pub artifact: Artifact,
    /// The grant: request ∩ approval. The agent enforces exactly this.
    #[serde(default)]
    pub grant: Capabilities,
    #[serde(default)]
    pub limits: Limits,
    /// Instances on this node.
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub config: Vec<ConfigEntry>,
    /// Runs under dev mode: the agent emits a Warning on every start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dev_mode: bool,
}

/// What the node's agent reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The digest the instances run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Restarts since the placement was created.
    #[serde(default)]
    pub restarts: i64,
    /// `Ready`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
