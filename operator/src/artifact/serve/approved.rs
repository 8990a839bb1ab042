//! Which digests the artifact server may serve, and where their bytes come from: pure.
//!
//! A digest is served only for a component that is approved now (`Approved=True` with an
//! `approvedDigest`, not being deleted): the approved digest itself (the `.wasm` of an HTTPS or
//! ConfigMap artifact, the manifest of an OCI one) and, for OCI, the component layer that
//! manifest names. Everything else is "not found", whether or not it exists anywhere.

use std::collections::{HashMap, HashSet};

use airssys_crds::condition::{self, ConditionType};
use airssys_crds::{Artifact, Digest, WasmComponent};
use kube::ResourceExt as _;

/// An approved component, as far as serving its bytes goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedArtifact {
    pub namespace: String,
    pub name: String,
    /// The approved digest (for OCI, the manifest's).
    pub digest: Digest,
    /// Where the bytes come from, read with the component's own namespace's credentials.
    pub artifact: Artifact,
}

impl ApprovedArtifact {
    /// The component when it is approved to run now.
    pub fn of(component: &WasmComponent) -> Option<Self> {
        if component.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let status = component.status.as_ref()?;
        if !condition::is_true(&status.conditions, ConditionType::Approved) {
            return None;
        }
        let digest = Digest::parse(status.approved_digest.as_deref()?).ok()?;
        Some(Self {
            namespace: component.namespace()?,
            name: component.name_any(),
            digest,
            artifact: component.spec.artifact.clone(),
        })
    }

    pub fn is_oci(&self) -> bool {
        self.artifact.oci.is_some()
    }
}

/// What a requested digest is to the component that allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The approved bytes themselves: an HTTPS or ConfigMap `.wasm`.
    Whole,
    /// The approved OCI manifest.
    Manifest,
    /// The component layer the approved OCI `manifest` names.
    Layer { manifest: Digest },
}

/// The components that allow `digest`, each with the role it plays for them (several
/// components may share an artifact; any of them can supply the bytes). `layers` maps manifest
/// digests to the component layer digests they name, as far as they are known. Empty: 404.
pub fn sources_for(
    digest: &Digest,
    approved: &[ApprovedArtifact],
    layers: &HashMap<Digest, Digest>,
) -> Vec<(ApprovedArtifact, Role)> {
    let mut out = Vec::new();
    for a in approved {
        if &a.digest == digest {
            let role = if a.is_oci() {
                Role::Manifest
            } else {
                Role::Whole
            };
            out.push((a.clone(), role));
        } else if a.is_oci() && layers.get(&a.digest) == Some(digest) {
            out.push((
                a.clone(),
                Role::Layer {
                    manifest: a.digest.clone(),
                },
            ));
        }
    }
    out
}

/// Approved OCI manifests whose component layer is not known yet: the server reads them to
/// learn it before answering "not found" for a digest.
pub fn unknown_manifests(
    approved: &[ApprovedArtifact],
    layers: &HashMap<Digest, Digest>,
) -> Vec<ApprovedArtifact> {
    let mut seen = HashSet::new();
    approved
        .iter()
        .filter(|a| a.is_oci() && !layers.contains_key(&a.digest))
        .filter(|a| seen.insert(a.digest.clone()))
        .cloned()
        .collect()
}

/// Every digest some approved component lets the server serve: what the store keeps.
pub fn in_use(approved: &[ApprovedArtifact], layers: &HashMap<Digest, Digest>) -> HashSet<Digest> {
    let mut out = HashSet::new();
    for a in approved {
        out.insert(a.digest.clone());
        if a.is_oci()
            && let Some(layer) = layers.get(&a.digest)
        {
            out.insert(layer.clone());
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;
    use crate::artifact::digest_of;
    use airssys_crds::condition::{Condition, ConditionStatus};
    use airssys_crds::{Reason, WasmComponentSpec, WasmComponentStatus};

    fn oci_artifact() -> Artifact {
        serde_json::from_value(serde_json::json!({"oci": {"reference": "r.io/a/b:v1"}})).unwrap()
    }

    fn https_artifact(digest: &Digest) -> Artifact {
        serde_json::from_value(
            serde_json::json!({"https": {"url": "https://x/a.wasm", "digest": digest.as_str()}}),
        )
        .unwrap()
    }

    fn component(
        artifact: Artifact,
        approved: Option<&Digest>,
        status: ConditionStatus,
    ) -> WasmComponent {
        let spec: WasmComponentSpec =
            serde_json::from_value(serde_json::json!({"artifact": artifact})).unwrap();
        let mut c = WasmComponent::new("echo", spec);
        c.metadata.namespace = Some("team".into());
        c.status = Some(WasmComponentStatus {
            approved_digest: approved.map(|d| d.to_string()),
            conditions: vec![Condition::new(
                ConditionType::Approved,
                status,
                Reason::TrustSourceMatched,
                "",
                None,
            )],
            ..Default::default()
        });
        c
    }

    #[test]
    fn approval_spec() {
        let d = digest_of(b"m");
        let mut deleting = component(oci_artifact(), Some(&d), ConditionStatus::True);
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        let cases = [
            (
                "approved with a digest is served",
                component(oci_artifact(), Some(&d), ConditionStatus::True),
                true,
            ),
            (
                "pending is not",
                component(oci_artifact(), Some(&d), ConditionStatus::False),
                false,
            ),
            (
                "unknown (unreachable) is not",
                component(oci_artifact(), Some(&d), ConditionStatus::Unknown),
                false,
            ),
            (
                "approved without a digest is not",
                component(oci_artifact(), None, ConditionStatus::True),
                false,
            ),
            ("being deleted is not", deleting, false),
        ];
        for (rule, c, want) in cases {
            assert_eq!(ApprovedArtifact::of(&c).is_some(), want, "{rule}");
        }
        assert!(
            ApprovedArtifact::of(&WasmComponent::new(
                "x",
                component(oci_artifact(), None, ConditionStatus::True).spec
            ))
            .is_none(),
            "no status is not"
        );
    }

    #[test]
    fn serving_spec() {
        let manifest = digest_of(b"manifest");
        let layer = digest_of(b"layer");
        let wasm = digest_of(b"wasm");
        let other = digest_of(b"other");
        let oci = ApprovedArtifact::of(&component(
            oci_artifact(),
            Some(&manifest),
            ConditionStatus::True,
        ))
        .unwrap();
        let https = ApprovedArtifact::of(&component(
            https_artifact(&wasm),
            Some(&wasm),
            ConditionStatus::True,
        ))
        .unwrap();
        let approved = vec![oci.clone(), https.clone()];
        let known = HashMap::from([(manifest.clone(), layer.clone())]);
        let none = HashMap::new();
        let roles = |digest: &Digest, layers: &HashMap<Digest, Digest>| -> Vec<Role> {
            sources_for(digest, &approved, layers)
                .into_iter()
                .map(|(_, r)| r)
                .collect()
        };
        assert_eq!(
            roles(&manifest, &known),
            vec![Role::Manifest],
            "an approved OCI digest is its manifest"
        );
        assert_eq!(
            roles(&layer, &known),
            vec![Role::Layer {
                manifest: manifest.clone()
            }],
            "the layer its manifest names"
        );
        assert!(
            roles(&layer, &none).is_empty(),
            "a layer is served only once the manifest names it"
        );
        assert_eq!(
            roles(&wasm, &known),
            vec![Role::Whole],
            "an approved https digest is the wasm"
        );
        assert!(
            roles(&other, &known).is_empty(),
            "anything else is not found"
        );

        assert_eq!(
            unknown_manifests(&approved, &none),
            vec![oci.clone()],
            "only OCI manifests are read to learn layers"
        );
        assert!(unknown_manifests(&approved, &known).is_empty());
        assert_eq!(
            in_use(&approved, &known),
            HashSet::from([manifest, layer, wasm]),
            "the store keeps manifests, their layers and whole blobs"
        );
    }
}
