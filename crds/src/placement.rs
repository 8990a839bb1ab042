//! `Placement`: one approved component on one node. Written by the operator, read by the
//! agent of that node (field selector on `spec.nodeName`), status written by that agent.
//!
//! A component has at most one Placement per node; `spec.instances` says how many of its
//! replicas that node runs. The operator's pure `place` function decides them.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::artifact::{Artifact, DIGEST_MESSAGE, DIGEST_RULE, Digest};
use crate::capability::{
    Capabilities, CapabilitySet, EnvCapability, FilesystemCapability, FsAccess, MessagingAccess,
    MessagingCapability, NetworkCapability, StorageCapability,
};
use crate::component::ConfigEntry;
use crate::condition::Condition;
use crate::limits::Limits;

/// Most instances of one component on one node (the same bound as `spec.replicas`).
pub const MAX_INSTANCES: i32 = 10000;

/// Set by the operator on every Placement of a component that lost its approval, just before
/// it deletes them; the value says why. The agent stops such a Placement at once and records
/// `Revoked` (a Placement that goes without it was scaled in or moved: `Stopped`).
pub const REVOKED_ANNOTATION: &str = "wasm.airssys.dev/revoked";

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
    selectable = ".spec.component.name",
    printcolumn(
        name = "Component",
        type_ = "string",
        json_path = ".spec.component.name"
    ),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Instances", type_ = "integer", json_path = ".spec.instances"),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyInstances"
    ),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".spec.digest",
        priority = 1
    ),
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
    /// The owning `WasmComponent` and the generation this Placement was derived from.
    pub component: ComponentRef,
    /// The approved digest; the agent re-hashes the fetched bytes against it and runs nothing
    /// else.
    #[serde(with = "digest_string")]
    #[schemars(with = "String", length(min = 71, max = 71))]
    #[x_kube(validation = kube::core::Rule::new(DIGEST_RULE).message(DIGEST_MESSAGE))]
    pub digest: Digest,
    /// Where to fetch the bytes (OCI references are pinned to `digest`).
    pub artifact: Artifact,
    /// The grant: request ∩ approval. The agent enforces exactly this.
    #[serde(default)]
    pub grant: Capabilities,
    /// Per-instance limits, as in the component's spec.
    #[serde(default)]
    pub limits: Limits,
    /// Replicas of the component this node runs.
    #[schemars(range(min = 1, max = MAX_INSTANCES))]
    pub instances: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub config: Vec<ConfigEntry>,
    /// Runs under dev mode: the agent emits a Warning on every start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dev_mode: bool,
    /// Serve the component over HTTP on this node: the agent listens on its advertised
    /// address at `targetPort` (the component's `spec.http`, plus the port the operator
    /// allocated). The Ready condition then means "listening and able to serve".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::http::PlacementHttp>,
}

/// The `WasmComponent` a Placement belongs to (same namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentRef {
    /// The component's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The component's uid: Events name it, and a Placement left from an earlier component of
    /// the same name is told apart.
    #[schemars(length(min = 1, max = 128))]
    pub uid: String,
    /// The component's `metadata.generation` this Placement was derived from.
    #[schemars(range(min = 0))]
    pub generation: i64,
}

/// What the node's agent reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStatus {
    /// The Placement's `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The digest the ready instances run (during a rolling replacement, the old one until a
    /// new instance is ready).
    #[serde(
        default,
        with = "optional_digest_string",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>", length(min = 71, max = 71))]
    #[x_kube(validation = kube::core::Rule::new(DIGEST_RULE).message(DIGEST_MESSAGE))]
    pub digest: Option<Digest>,
    /// Instances running and ready.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub ready_instances: i32,
    /// Restarts since the placement was created.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub restarts: i64,
    /// `Ready`, `Degraded` (crash loops).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The last failure (fetch, compile, instantiate or crash), for `kubectl describe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub last_error: Option<String>,
}

/// A [`Digest`] on the wire: its `sha256:<hex>` string, checked when read.
mod digest_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use crate::artifact::Digest;

    pub fn serialize<S: Serializer>(digest: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(digest.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let raw = String::deserialize(d)?;
        Digest::parse(&raw).map_err(D::Error::custom)
    }
}

/// An optional [`Digest`] on the wire.
mod optional_digest_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use crate::artifact::Digest;

    pub fn serialize<S: Serializer>(digest: &Option<Digest>, s: S) -> Result<S::Ok, S::Error> {
        match digest {
            Some(d) => s.serialize_str(d.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Digest>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|raw| Digest::parse(&raw).map_err(D::Error::custom))
            .transpose()
    }
}

/// The API shape of a parsed set, so the operator can write a grant (request ∩ approval) into
/// a Placement and the agent parses back exactly that set.
impl From<&CapabilitySet> for Capabilities {
    fn from(set: &CapabilitySet) -> Self {
        let modes = |read: bool, write: bool| {
            [(read, FsAccess::Read), (write, FsAccess::Write)]
                .into_iter()
                .filter_map(|(on, mode)| on.then_some(mode))
                .collect::<Vec<_>>()
        };
        let topics = set.topics.iter().map(|t| MessagingCapability {
            topic: Some(t.pattern.to_string()),
            component: None,
            access: [
                (t.publish, MessagingAccess::Publish),
                (t.subscribe, MessagingAccess::Subscribe),
            ]
            .into_iter()
            .filter_map(|(on, mode)| on.then_some(mode))
            .collect(),
        });
        let send = set.send.iter().map(|c| MessagingCapability {
            topic: None,
            component: Some(c.clone()),
            access: vec![MessagingAccess::Send],
        });
        Capabilities {
            filesystem: set
                .filesystem
                .iter()
                .map(|p| FilesystemCapability {
                    path: p.prefix.to_string(),
                    access: modes(p.read, p.write),
                })
                .collect(),
            network: set
                .network
                .iter()
                .map(|n| NetworkCapability {
                    host: n.target.to_string(),
                    port: i32::from(n.ports.first),
                    end_port: (n.ports.last != n.ports.first).then_some(i32::from(n.ports.last)),
                })
                .collect(),
            storage: set
                .storage
                .iter()
                .map(|b| StorageCapability {
                    bucket: b.bucket.clone(),
                    access: modes(b.read, b.write),
                })
                .collect(),
            messaging: topics.chain(send).collect(),
            env: set
                .env
                .iter()
                .map(|name| EnvCapability { name: name.clone() })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn spec_json(digest: &str) -> serde_json::Value {
        serde_json::json!({
            "nodeName": "node-a",
            "component": {"name": "echo", "uid": "0b1c", "generation": 3},
            "digest": digest,
            "artifact": {"oci": {"reference": "registry.example.com/team/echo:1.0"}},
            "instances": 2,
        })
    }

    #[test]
    fn spec_round_trips_with_a_checked_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let spec: PlacementSpec = serde_json::from_value(spec_json(&digest)).expect("valid spec");
        assert_eq!(spec.digest.as_str(), digest);
        assert_eq!(spec.component.generation, 3);
        let back = serde_json::to_value(&spec).expect("serializes");
        assert_eq!(back["digest"], digest.as_str());
        assert_eq!(serde_json::from_value::<PlacementSpec>(back).unwrap(), spec);
    }

    #[test]
    fn spec_with_a_malformed_digest_does_not_deserialize() {
        let err = serde_json::from_value::<PlacementSpec>(spec_json("sha256:abc")).unwrap_err();
        assert!(err.to_string().contains("is not a digest"), "{err}");
    }

    #[test]
    fn status_digest_is_optional_and_checked() {
        let empty: PlacementStatus = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(empty, PlacementStatus::default());
        assert_eq!(
            serde_json::to_value(&empty).unwrap()["digest"],
            serde_json::Value::Null
        );
        let digest = format!("sha256:{}", "b".repeat(64));
        let status: PlacementStatus = serde_json::from_value(serde_json::json!({
            "digest": digest, "readyInstances": 2, "restarts": 1, "lastError": "trap",
        }))
        .unwrap();
        assert_eq!(
            status.digest.as_ref().map(Digest::as_str),
            Some(digest.as_str())
        );
        assert_eq!(status.ready_instances, 2);
        assert!(
            serde_json::from_value::<PlacementStatus>(serde_json::json!({"digest": "x"})).is_err()
        );
    }

    #[test]
    fn a_parsed_grant_written_to_the_api_shape_parses_back_to_itself() {
        let yaml = r#"
filesystem:
  - {path: /data/, access: [write, read]}
  - {path: /etc/app, access: [read]}
network:
  - {host: "*.example.com", port: 443}
  - {host: 10.0.0.1, port: 8000, endPort: 8100}
  - {host: 2001:db8::/32, port: 53}
storage:
  - {bucket: cache, access: [write]}
messaging:
  - {topic: "orders.*.created", access: [subscribe]}
  - {topic: "audit.>", access: [publish, subscribe]}
  - {component: billing, access: [send]}
env:
  - {name: API_URL}
"#;
        let caps: Capabilities = serde_yaml::from_str(yaml).unwrap();
        let set = CapabilitySet::parse(&caps).unwrap();
        let written = Capabilities::from(&set);
        assert_eq!(CapabilitySet::parse(&written).unwrap(), set);
        // Written twice, the same bytes: the operator's comparison of specs is stable.
        assert_eq!(
            Capabilities::from(&CapabilitySet::parse(&written).unwrap()),
            written
        );
        assert_eq!(
            Capabilities::from(&CapabilitySet::default()),
            Capabilities::default()
        );
    }
}
