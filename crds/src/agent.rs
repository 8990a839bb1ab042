//! What the operator and the node agents agree on outside the CRDs: how an agent announces
//! itself (its `coordination.k8s.io/v1` Lease and the capacity written on it), how it fetches
//! artifact bytes from the operator, and who reports its Events.
//!
//! An agent holds one Lease in the product's namespace, named [`lease_name`] of its node,
//! labelled [`AGENT_LEASE_LABEL`]`=true`, with `spec.holderIdentity` = its node name. It renews
//! it every [`LEASE_RENEW_SECONDS`] with a duration of [`LEASE_DURATION_SECONDS`], as the
//! kubelet renews its node lease. Its capacity rides on the same object as annotations
//! ([`AgentCapacity`]), so an agent needs no write access to `Node` objects.

use std::collections::BTreeMap;

/// The namespace the product runs in when none is configured.
pub const DEFAULT_NAMESPACE: &str = "airssys-system";

/// Label on every agent Lease (value `"true"`): the operator watches Leases by it.
pub const AGENT_LEASE_LABEL: &str = "wasm.airssys.dev/agent";

/// Seconds an agent Lease stays live after its last renewal.
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// Seconds between an agent's Lease renewals.
pub const LEASE_RENEW_SECONDS: u64 = 10;

/// Annotation on the agent Lease: instance slots of the agent's pool (decimal).
pub const CAPACITY_INSTANCES_ANNOTATION: &str = "wasm.airssys.dev/capacity-instances";

/// Annotation on the agent Lease: bytes of linear memory the agent offers (decimal).
pub const CAPACITY_MEMORY_ANNOTATION: &str = "wasm.airssys.dev/capacity-memory";

/// Annotation on the agent Lease: the IP address the agent serves HTTP components on (its
/// `--advertise-address`, by default the pod IP). The operator points the components'
/// EndpointSlices at it.
pub const ADDRESS_ANNOTATION: &str = "wasm.airssys.dev/address";

/// `reportingController` of the agents' Events.
pub const AGENT_REPORTING_CONTROLLER: &str = "wasm.airssys.dev/agent";

/// Field manager of the agents' status writes on Placements.
pub const AGENT_FIELD_MANAGER: &str = "airssys-agent";

/// The artifact server's path for the bytes of `digest` (`sha256:<hex>`):
/// `GET /v1/blobs/sha256:<hex>` with `Authorization: Bearer <service-account token>`. The body
/// is exactly the bytes that hash to the digest; the client re-hashes them. For an OCI
/// artifact the Placement's digest names the manifest; the client reads the component
/// layer's digest from it and fetches that blob the same way.
pub const BLOB_PATH_PREFIX: &str = "/v1/blobs/";

/// ConfigMap (in the product's namespace) holding the artifact server's CA certificate under
/// [`ARTIFACT_CA_KEY`], which agents trust for it.
pub const ARTIFACT_CA_CONFIGMAP: &str = "airssys-artifact-ca";

/// Key of the PEM CA certificate in [`ARTIFACT_CA_CONFIGMAP`].
pub const ARTIFACT_CA_KEY: &str = "ca.crt";

/// The name of a node's agent Lease: `airssys-agent-<node>`, cut to the 253-character limit
/// (node names are at most 253, so long names lose their end; `holderIdentity` keeps the whole
/// name and is what the operator reads).
pub fn lease_name(node: &str) -> String {
    let mut name = format!("airssys-agent-{node}");
    let mut end = name.len().min(253);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

/// What an agent can run, as it announces it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentCapacity {
    /// Instance slots of the agent's pool.
    pub instances: u32,
    /// Bytes of linear memory.
    pub memory_bytes: u64,
}

impl AgentCapacity {
    /// The Lease annotations that carry it.
    pub fn to_annotations(self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                CAPACITY_INSTANCES_ANNOTATION.to_owned(),
                self.instances.to_string(),
            ),
            (
                CAPACITY_MEMORY_ANNOTATION.to_owned(),
                self.memory_bytes.to_string(),
            ),
        ])
    }

    /// Reads it back. A missing or malformed value counts as zero (fail closed: the node takes
    /// no replicas until its agent says what it has).
    pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> Self {
        let get = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim());
        Self {
            instances: get(CAPACITY_INSTANCES_ANNOTATION)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            memory_bytes: get(CAPACITY_MEMORY_ANNOTATION)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_round_trips_and_fails_closed() {
        let c = AgentCapacity {
            instances: 1000,
            memory_bytes: 4 << 30,
        };
        assert_eq!(
            AgentCapacity::from_annotations(Some(&c.to_annotations())),
            c
        );
        assert_eq!(
            AgentCapacity::from_annotations(None),
            AgentCapacity::default()
        );
        let bad = BTreeMap::from([
            (CAPACITY_INSTANCES_ANNOTATION.to_owned(), "-1".to_owned()),
            (CAPACITY_MEMORY_ANNOTATION.to_owned(), "lots".to_owned()),
        ]);
        assert_eq!(
            AgentCapacity::from_annotations(Some(&bad)),
            AgentCapacity::default()
        );
    }

    #[test]
    fn lease_names_are_bounded() {
        assert_eq!(lease_name("node-a"), "airssys-agent-node-a");
        assert_eq!(lease_name(&"n".repeat(253)).len(), 253);
    }
}
