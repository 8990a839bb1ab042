//! Where a component's bytes come from, and the digest that names them.

use std::fmt;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Digests look like `sha256:` and 64 lower-case hex digits.
pub const DIGEST_RULE: &str = "self.matches('^sha256:[a-f0-9]{64}$')";
/// Message for [`DIGEST_RULE`].
pub const DIGEST_MESSAGE: &str = "digest must look like sha256:<64 lower-case hex digits>";

/// A `sha256:<hex>` content digest, checked on construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// A digest string that is not `sha256:<64 lower-case hex>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a digest: expected sha256:<64 lower-case hex digits>")]
pub struct DigestError {
    pub value: String,
}

impl Digest {
    /// Parses `sha256:<64 lower-case hex>`.
    pub fn parse(raw: &str) -> Result<Self, DigestError> {
        let ok = raw.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(DigestError {
                value: raw.to_owned(),
            })
        }
    }

    /// Builds the digest of a raw SHA-256 output.
    pub fn from_sha256(bytes: &[u8; 32]) -> Self {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in bytes {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        Self(s)
    }

    /// The full `sha256:<hex>` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Only the hex part, for file names.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Exactly one source of bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("[has(self.oci), has(self.https), has(self.configMap)].filter(x, x).size() == 1").message("artifact needs exactly one of oci, https or configMap"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.https) || has(self.https.digest)").message("an https artifact needs a digest (sha256:<64 hex>): the bytes behind a URL can change"))]
pub struct Artifact {
    /// An OCI artifact in a registry, by tag or by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciArtifact>,
    /// A `.wasm` file over HTTPS, pinned by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<HttpsArtifact>,
    /// A small component kept in a ConfigMap's `binaryData` (development).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapArtifact>,
}

/// An OCI reference such as `registry.example.com/team/echo:1.2` or `...@sha256:...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OciArtifact {
    /// `host[:port]/repository[:tag][@sha256:digest]`.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-zA-Z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$')").message("oci reference must look like host[:port]/repository[:tag][@sha256:<64 hex>]"))]
    #[schemars(length(min = 1, max = 512))]
    pub reference: String,
    /// Secrets of type `kubernetes.io/dockerconfigjson` in the component's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub pull_secrets: Vec<LocalObjectReference>,
    /// Use plain HTTP (only for registries on loopback in development and tests).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// A `.wasm` file at an HTTPS URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpsArtifact {
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://')").message("url must start with https://"))]
    #[schemars(length(min = 9, max = 2048))]
    pub url: String,
    /// The expected digest of the bytes; required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(DIGEST_RULE).message(DIGEST_MESSAGE))]
    #[schemars(length(max = 71))]
    pub digest: Option<String>,
}

/// A key of a ConfigMap in the component's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapArtifact {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// Optional expected digest; without it the digest of whatever the key holds is used, and
    /// an approval binds to that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(DIGEST_RULE).message(DIGEST_MESSAGE))]
    #[schemars(length(max = 71))]
    pub digest: Option<String>,
}

/// A reference to an object in the same namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectReference {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let hex = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{hex}")).is_ok());
        for bad in [
            String::new(),
            hex.clone(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha512:{hex}"),
            format!("sha256:{}g", "a".repeat(63)),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad:?}");
        }
        let d = Digest::from_sha256(&[0xab; 32]);
        assert_eq!(d.as_str(), format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(d.hex().len(), 64);
        assert_eq!(Digest::parse(d.as_str()), Ok(d));
    }
}

/// Media types of the component layer in an OCI manifest: what `oras push
/// component.wasm:application/wasm` writes, and the wasm OCI artifact layer type.
pub const WASM_MEDIA_TYPES: [&str; 2] = [
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

/// Why an OCI manifest names no component layer. Each message completes "the manifest …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    #[error("is not an OCI image manifest: {0}")]
    NotAManifest(String),
    #[error("has no WebAssembly layer")]
    NoWasmLayer,
    #[error("has more than one WebAssembly layer; a component artifact has exactly one")]
    SeveralWasmLayers,
    #[error("names a bad layer digest: {0}")]
    BadDigest(String),
}

/// The component layer (digest, declared size) an OCI image manifest names: its one layer of
/// a [`WASM_MEDIA_TYPES`] type. The operator (resolving) and the agent (fetching) both read
/// manifests with this, so they agree on which bytes are the component.
pub fn component_layer(manifest: &[u8]) -> Result<(Digest, u64), LayerError> {
    #[derive(Deserialize)]
    struct Manifest {
        #[serde(default)]
        layers: Vec<Layer>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Layer {
        media_type: String,
        digest: String,
        #[serde(default)]
        size: u64,
    }
    let manifest: Manifest =
        serde_json::from_slice(manifest).map_err(|e| LayerError::NotAManifest(e.to_string()))?;
    let mut wasm = manifest
        .layers
        .iter()
        .filter(|l| WASM_MEDIA_TYPES.contains(&l.media_type.as_str()));
    match (wasm.next(), wasm.next()) {
        (Some(layer), None) => Digest::parse(&layer.digest)
            .map(|d| (d, layer.size))
            .map_err(|e| LayerError::BadDigest(e.to_string())),
        (None, _) => Err(LayerError::NoWasmLayer),
        (Some(_), Some(_)) => Err(LayerError::SeveralWasmLayers),
    }
}

#[cfg(test)]
mod component_layer_tests {
    use super::*;

    fn manifest(layers: &[(&str, &str)]) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(media_type, digest)| {
                serde_json::json!({"mediaType": media_type, "digest": digest, "size": 7})
            })
            .collect();
        serde_json::json!({"schemaVersion": 2, "config": {}, "layers": layers})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn component_layer_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ok = |d: &str| Ok((Digest::parse(d).unwrap(), 7));
        type Want = Result<(Digest, u64), fn(&LayerError) -> bool>;
        let cases: Vec<(&str, Vec<u8>, Want)> = vec![
            (
                "application/wasm",
                manifest(&[("application/wasm", &a)]),
                ok(&a),
            ),
            (
                "the wasm OCI layer type",
                manifest(&[(WASM_MEDIA_TYPES[1], &a)]),
                ok(&a),
            ),
            (
                "other layers are ignored",
                manifest(&[("text/plain", &b), ("application/wasm", &a)]),
                ok(&a),
            ),
            (
                "no wasm layer",
                manifest(&[("text/plain", &a)]),
                Err(|e| *e == LayerError::NoWasmLayer),
            ),
            (
                "two wasm layers",
                manifest(&[("application/wasm", &a), ("application/wasm", &b)]),
                Err(|e| *e == LayerError::SeveralWasmLayers),
            ),
            (
                "a bad digest",
                manifest(&[("application/wasm", "sha256:XYZ")]),
                Err(|e| matches!(e, LayerError::BadDigest(_))),
            ),
            (
                "not JSON",
                b"<html>".to_vec(),
                Err(|e| matches!(e, LayerError::NotAManifest(_))),
            ),
        ];
        for (rule, bytes, want) in cases {
            match (component_layer(&bytes), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{rule}"),
                (Err(got), Err(is)) => assert!(is(&got), "{rule}: {got}"),
                (got, want) => panic!("{rule}: got {got:?}, want {want:?}"),
            }
        }
    }
}
