//! Reading an approved digest from where its component's artifact lives, with that component's
//! own credentials (pull secrets from its own namespace only): the OCI manifest or component
//! layer from its registry, the `.wasm` from its HTTPS URL or ConfigMap. Every byte returned
//! here hashes to the digest it was asked for; the store checks again before writing.

use airssys_crds::Digest;
use airssys_crds::artifact::OciArtifact;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use super::ServeError;
use super::approved::{ApprovedArtifact, Role};
use crate::Config;
use crate::artifact::{
    ArtifactError, PullSecretError, RegistryCredentials, Resolver, config_map_bytes,
    config_map_digest,
};

/// The bytes of `digest`, which plays `role` for approved component `a`.
pub async fn fetch(
    client: &kube::Client,
    resolver: &Resolver,
    config: &Config,
    a: &ApprovedArtifact,
    role: &Role,
    digest: &Digest,
) -> Result<Vec<u8>, ServeError> {
    let artifact = &a.artifact;
    match role {
        Role::Whole => {
            if let Some(https) = &artifact.https {
                return Ok(resolver.fetch_https(&https.url, digest).await?);
            }
            if let Some(cm) = &artifact.config_map {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), &a.namespace);
                let what = format!("ConfigMap {}/{}", a.namespace, cm.name);
                let map = api.get(&cm.name).await.map_err(|source| ServeError::Kube {
                    what: what.clone(),
                    source,
                })?;
                let bytes = config_map_bytes(&map, &cm.key);
                config_map_digest(&bytes, Some(digest))?;
                return Ok(bytes);
            }
            Err(ServeError::Source(format!(
                "{}/{} names no https or configMap artifact",
                a.namespace, a.name
            )))
        }
        Role::Manifest | Role::Layer { .. } => {
            let Some(oci) = &artifact.oci else {
                return Err(ServeError::Source(format!(
                    "{}/{} names no OCI artifact",
                    a.namespace, a.name
                )));
            };
            let manifest = match role {
                Role::Layer { manifest } => manifest,
                _ => digest,
            };
            let (pinned, registry) = pinned_reference(oci, manifest)?;
            if oci.insecure && !config.allows_insecure(&registry) {
                return Err(ServeError::Source(format!(
                    "registry {registry} may not be used over plain HTTP (not an --insecure-registry)"
                )));
            }
            let credentials = pull_credentials(client, &a.namespace, oci, &registry).await?;
            let (resolved, manifest_bytes) = resolver
                .resolve_oci_manifest(&pinned, oci.insecure, credentials.as_ref())
                .await?;
            match role {
                Role::Manifest => Ok(manifest_bytes),
                _ if &resolved.layer_digest != digest => Err(ServeError::Source(format!(
                    "{pinned} names component layer {}, not {digest}",
                    resolved.layer_digest
                ))),
                _ => Ok(resolver.fetch_oci(&resolved, credentials.as_ref()).await?),
            }
        }
    }
}

/// `registry/repository@manifest` for the component's reference (its tag, if any, dropped:
/// the digest is what was approved), and the registry.
fn pinned_reference(oci: &OciArtifact, manifest: &Digest) -> Result<(String, String), ServeError> {
    let parsed: oci_client::Reference =
        oci.reference.parse().map_err(|e: oci_client::ParseError| {
            ArtifactError::InvalidReference {
                reference: oci.reference.clone(),
                reason: e.to_string(),
            }
        })?;
    Ok((
        format!("{}/{}@{manifest}", parsed.registry(), parsed.repository()),
        parsed.registry().to_owned(),
    ))
}

/// The credentials for `registry` from the component's pull secrets, read from its own
/// namespace only (the rule the component controller follows when it resolves).
async fn pull_credentials(
    client: &kube::Client,
    namespace: &str,
    oci: &OciArtifact,
    registry: &str,
) -> Result<Option<RegistryCredentials>, ServeError> {
    crate::artifact::pull_credentials(client, namespace, oci, registry)
        .await
        .map_err(|e| match e {
            PullSecretError::Read { name, source } => ServeError::Kube {
                what: format!("pull secret {namespace}/{name}"),
                source,
            },
            PullSecretError::Invalid(e) => ServeError::from(e),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;

    #[test]
    fn references_are_pinned_to_the_approved_manifest() {
        let digest = crate::artifact::digest_of(b"m");
        let cases = [
            (
                "a tag is dropped",
                "r.io:5000/team/echo:v1",
                "r.io:5000/team/echo",
            ),
            ("no tag", "r.io/team/echo", "r.io/team/echo"),
            (
                "an old digest is replaced",
                "r.io/team/echo:v1@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "r.io/team/echo",
            ),
        ];
        for (rule, reference, repository) in cases {
            let oci = OciArtifact {
                reference: reference.to_owned(),
                pull_secrets: Vec::new(),
                insecure: false,
            };
            let (pinned, _) = pinned_reference(&oci, &digest).unwrap();
            assert_eq!(pinned, format!("{repository}@{digest}"), "{rule}");
        }
    }

    #[test]
    fn config_map_bytes_prefer_binary_data() {
        let map: ConfigMap = serde_json::from_value(serde_json::json!({
            "binaryData": {"a": "AGFzbQ=="},
            "data": {"a": "text", "b": "text"},
        }))
        .unwrap();
        assert_eq!(config_map_bytes(&map, "a"), b"\0asm");
        assert_eq!(config_map_bytes(&map, "b"), b"text");
        assert!(config_map_bytes(&map, "c").is_empty());
    }
}
