//! Local manifests: the components `airssys-agent run --manifest FILE` runs without a
//! cluster. Same capability and limit grammar as `WasmComponent`; the grant is exactly the
//! capabilities listed (a local manifest is its own approval).
//!
//! ```yaml
//! components:
//!   - name: echo                 # namespace defaults to "default"
//!     wasm: echo.wasm            # relative to the manifest
//!     digest: sha256:...         # optional; the bytes must hash to it when given
//!     capabilities:
//!       storage: [{ bucket: counters, access: [read, write] }]
//!     limits: { timeout: 2s, memory: 32Mi }
//!     env: { LOG_LEVEL: debug }  # only keys the capabilities list under `env`
//!   - name: hello                # an HTTP component (exports wasi:http/incoming-handler)
//!     wasm: http_hello.wasm
//!     http: { port: 8080, pathPrefix: /hello, maxConcurrentRequests: 16, requestTimeout: 5s }
//! ```
//!
//! An HTTP component listens on `--advertise-address` (default 127.0.0.1) at `http.port`;
//! `http` takes the fields of `WasmComponent.spec.http`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airssys_crds::artifact::Digest;
use airssys_crds::capability::{Capabilities, CapabilitySet};
use airssys_crds::http::HttpSpec;
use airssys_crds::limits::Limits;
use serde::Deserialize;

use crate::engine::sha256_digest;
use crate::error::Error;
use crate::grant::GrantTable;
use crate::http_server::HttpSettings;
use crate::id::ComponentId;
use crate::limits::Quotas;
use crate::supervisor::ComponentSpec;

/// A manifest file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub components: Vec<ManifestComponent>,
}

/// One component of a manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestComponent {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub name: String,
    pub wasm: PathBuf,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Serve it over HTTP on `--advertise-address` at `http.port`.
    #[serde(default)]
    pub http: Option<HttpSpec>,
}

fn default_namespace() -> String {
    "default".to_string()
}

impl Manifest {
    /// Reads and parses a manifest file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Manifest {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        serde_yaml::from_str(&text).map_err(|e| Error::Manifest {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Resolves every component to a [`ComponentSpec`]: reads the `.wasm` (relative to
    /// `base`), checks the digest, parses capabilities and limits. HTTP components listen on
    /// `address`.
    pub fn specs(
        &self,
        base: &Path,
        manifest_path: &Path,
        address: IpAddr,
    ) -> Result<Vec<ComponentSpec>, Error> {
        self.components
            .iter()
            .map(|c| c.spec(base, manifest_path, address))
            .collect()
    }
}

impl ManifestComponent {
    fn spec(
        &self,
        base: &Path,
        manifest_path: &Path,
        address: IpAddr,
    ) -> Result<ComponentSpec, Error> {
        let id = ComponentId::new(&self.namespace, &self.name);
        let invalid = |reason: String| Error::Manifest {
            path: manifest_path.to_path_buf(),
            reason: format!("component {id}: {reason}"),
        };
        // Names are Kubernetes names, as in a cluster: the storage keys rely on it.
        crate::storage::check_component_id(&self.namespace, &self.name)
            .map_err(|e| invalid(e.to_string()))?;
        let path = base.join(&self.wasm);
        let wasm = std::fs::read(&path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let actual = sha256_digest(&wasm);
        let expected = self
            .digest
            .as_deref()
            .map(Digest::parse)
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        let digest = match expected {
            Some(expected) if expected != actual => {
                return Err(Error::DigestMismatch { expected, actual });
            }
            _ => actual,
        };
        let grant =
            CapabilitySet::parse(&self.capabilities).map_err(|source| Error::Capability {
                component: id.to_string(),
                source,
            })?;
        let limits = self
            .limits
            .resolve()
            .map_err(|e| invalid(format!("limits: {e}")))?;
        let table = GrantTable::compile(&grant);
        let env = self
            .env
            .iter()
            .filter(|(k, _)| {
                let allowed = table.check_env(k);
                if !allowed {
                    tracing::warn!(component = %id, key = %k, "env key not granted; not passed");
                }
                allowed
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let http = match &self.http {
            None => None,
            Some(spec) => Some(HttpSettings {
                listen: SocketAddr::new(address, spec.port),
                limits: spec.limits().map_err(|e| invalid(e.to_string()))?,
                spec: spec.clone(),
            }),
        };
        Ok(ComponentSpec {
            id,
            digest,
            wasm: Arc::from(wasm),
            grant,
            quotas: Quotas::from(&limits),
            env,
            // A local manifest names no Kubernetes objects: no Events.
            k8s: None,
            http,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_manifest_and_checks_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.wasm"), b"not really wasm").unwrap();
        let yaml = r#"
components:
  - name: x
    wasm: x.wasm
    capabilities:
      storage: [{ bucket: counters, access: [read] }]
      env: [{ name: MODE }]
    limits: { timeout: 2s }
    env: { MODE: fast, SECRET: nope }
"#;
        let m: Manifest = serde_yaml::from_str(yaml).unwrap();
        let specs = m.specs(dir.path(), Path::new("m.yaml"), LOCAL).unwrap();
        assert_eq!(specs[0].id, ComponentId::new("default", "x"));
        for (namespace, name) in [("ns", "a/b"), ("ns/a", "b"), ("NS", "x"), ("ns", "")] {
            let yaml = format!(
                "components: [{{ name: '{name}', namespace: '{namespace}', wasm: x.wasm }}]"
            );
            let bad: Manifest = serde_yaml::from_str(&yaml).unwrap();
            let err = bad
                .specs(dir.path(), Path::new("m.yaml"), LOCAL)
                .unwrap_err();
            assert!(
                matches!(err, Error::Manifest { .. }),
                "{namespace}/{name}: {err}"
            );
        }
        assert_eq!(specs[0].digest, sha256_digest(b"not really wasm"));
        assert_eq!(specs[0].quotas.timeout, std::time::Duration::from_secs(2));
        assert_eq!(
            specs[0].env,
            vec![("MODE".to_string(), "fast".to_string())],
            "ungranted env dropped"
        );

        let mut wrong = m.clone();
        wrong.components[0].digest = Some(sha256_digest(b"other").to_string());
        assert!(matches!(
            wrong.specs(dir.path(), Path::new("m.yaml"), LOCAL),
            Err(Error::DigestMismatch { .. })
        ));
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn an_http_component_listens_on_the_address_at_its_port() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("h.wasm"), b"w").unwrap();
        let yaml = "components:\n  - name: h\n    wasm: h.wasm\n    http: { port: 8081, pathPrefix: /h, requestTimeout: 2s }\n";
        let m: Manifest = serde_yaml::from_str(yaml).unwrap();
        let specs = m.specs(dir.path(), Path::new("m.yaml"), LOCAL).unwrap();
        let http = specs[0].http.as_ref().expect("served over HTTP");
        assert_eq!(http.listen, SocketAddr::new(LOCAL, 8081));
        assert_eq!(
            http.limits.request_timeout,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(http.spec.path_prefix.as_deref(), Some("/h"));
        let bad =
            "components:\n  - name: h\n    wasm: h.wasm\n    http: { maxConcurrentRequests: 0 }\n";
        let m: Manifest = serde_yaml::from_str(bad).unwrap();
        let err = m.specs(dir.path(), Path::new("m.yaml"), LOCAL).unwrap_err();
        assert!(err.to_string().contains("maxConcurrentRequests"), "{err}");
    }

    #[test]
    fn rejects_bad_capabilities() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.wasm"), b"w").unwrap();
        let yaml = "components:\n  - name: x\n    wasm: x.wasm\n    capabilities:\n      filesystem: [{ path: /data/../etc, access: [read] }]\n";
        let m: Manifest = serde_yaml::from_str(yaml).unwrap();
        assert!(matches!(
            m.specs(dir.path(), Path::new("m.yaml"), LOCAL),
            Err(Error::Capability { .. })
        ));
    }
}
