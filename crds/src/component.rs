//! `WasmComponent`: what a component author applies.

use std::collections::BTreeMap;
use std::fmt;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::artifact::Artifact;
use crate::capability::Capabilities;
use crate::condition::Condition;
use crate::limits::Limits;

/// A WebAssembly component to run on the cluster's agents.
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) group repeats the same keys by design"
)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "wasm.airssys.dev",
    version = "v1alpha1",
    kind = "WasmComponent",
    plural = "wasmcomponents",
    shortname = "wc",
    category = "airssys",
    namespaced,
    status = "WasmComponentStatus",
    doc = "A WebAssembly component: its artifact, the capabilities it requests, its limits and replicas.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(
        name = "Trust",
        type_ = "string",
        json_path = ".status.trustLevel",
        description = "Trust level of the resolved artifact"
    ),
    printcolumn(
        name = "Approved",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Approved\")].status",
        description = "Whether the component may run"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Replicas running"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Replicas requested",
        priority = 1
    ),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".status.resolvedDigest",
        description = "Resolved artifact digest",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmComponentSpec {
    /// Where the component's bytes come from.
    pub artifact: Artifact,
    /// What the component asks to use. Nothing else is granted.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Per-instance resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Instances to run across the cluster (default 1).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,
    /// Which nodes may run the component.
    #[serde(default)]
    pub placement: PlacementPolicy,
    /// Config values and Secret references, exposed to the guest per `capabilities.env`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub config: Vec<ConfigEntry>,
    /// Serve the component over HTTP: it must export `wasi:http/incoming-handler` (the
    /// `wasi:http/proxy` world). Absent: the component speaks the airssys world only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::http::HttpSpec>,
}

fn default_replicas() -> i32 {
    1
}

/// Node selection, as for Pods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlacementPolicy {
    /// Labels a node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the component tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
}

/// A toleration, with the meaning it has for Pods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("!has(self.operator) || self.operator != 'Exists' || !has(self.value)").message("a toleration with operator Exists takes no value"))]
pub struct Toleration {
    /// Taint key; empty with operator Exists matches every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 317))]
    pub key: Option<String>,
    /// `Equal` (default) or `Exists`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<TolerationOperator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; empty matches all effects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum TolerationOperator {
    Equal,
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// A config value, literal or from a Secret in the component's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("has(self.value) != has(self.secretKeyRef)").message("a config entry needs exactly one of value or secretKeyRef"))]
pub struct ConfigEntry {
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("config name must be a letter or '_' followed by letters, digits or '_'"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in the same namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// How far the artifact is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum TrustLevel {
    /// A `Trust` source matched and the request fits its ceiling, or a person approved it.
    Trusted,
    /// No source vouches for it; it waits for an approval.
    Unknown,
    /// A `Deny` source matched. Deny always wins.
    Denied,
    /// Runs only because dev mode is enabled for its namespace.
    DevMode,
}

impl fmt::Display for TrustLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trusted => "Trusted",
            Self::Unknown => "Unknown",
            Self::Denied => "Denied",
            Self::DevMode => "DevMode",
        })
    }
}

/// What the operator and the agents observed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WasmComponentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The digest the artifact reference resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_digest: Option<String>,
    /// The digest that is approved to run (equal to `resolvedDigest` when approved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_level: Option<TrustLevel>,
    /// Names of the `TrustSource`s that matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_sources: Vec<String>,
    /// `Verified`, `Approved`, `Scheduled`, `Ready`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Instances placed (for the scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Instances running and ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Per-node summary, summed from the component's Placements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<NodeSummary>,
}

/// One node's share of a component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    pub node: String,
    pub replicas: i32,
    pub ready_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the schema cannot say: the checks that need the capability grammar and the limit
/// parsers. The operator runs these before trusting a spec; the same messages reach conditions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("capabilities: {0}")]
    Capability(#[from] crate::capability::CapabilityError),
    #[error(transparent)]
    Limits(#[from] crate::limits::LimitsError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpSpecError),
    #[error("replicas must be at least 0, got {0}")]
    Replicas(i32),
    #[error("artifact: {0}")]
    Digest(#[from] crate::artifact::DigestError),
}

/// A spec's capabilities and limits, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSpec {
    pub capabilities: crate::capability::CapabilitySet,
    pub limits: crate::limits::ResolvedLimits,
    /// `spec.http`'s limits, when the component is served over HTTP.
    pub http: Option<crate::http::HttpLimits>,
}

impl WasmComponentSpec {
    /// Parses the capability request and the limits, and checks the digests and replicas.
    pub fn validate(&self) -> Result<ValidSpec, SpecError> {
        if self.replicas < 0 {
            return Err(SpecError::Replicas(self.replicas));
        }
        let pinned = [
            self.artifact
                .https
                .as_ref()
                .and_then(|h| h.digest.as_deref()),
            self.artifact
                .config_map
                .as_ref()
                .and_then(|c| c.digest.as_deref()),
        ];
        for digest in pinned.into_iter().flatten() {
            crate::artifact::Digest::parse(digest)?;
        }
        Ok(ValidSpec {
            capabilities: crate::capability::CapabilitySet::parse(&self.capabilities)?,
            limits: self.limits.resolve()?,
            http: self.http.as_ref().map(|h| h.limits()).transpose()?,
        })
    }
}
