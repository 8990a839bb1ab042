//! The few API calls the plugin makes. Each failure says what was being done and against
//! which API server.

use airssys_crds::trust_source::{Decision, DigestEntry};
use airssys_crds::{TrustSource, WasmComponent};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, ListParams, PostParams};
use kube::config::KubeConfigOptions;
use kube::{Client, Config};

use crate::Error;
use crate::entry::{manifest, merge_entry};

/// The field manager the plugin's writes are recorded under.
pub const FIELD_MANAGER: &str = "kubectl-wasm";

/// How many times a write is retried when the source changed under it.
const WRITE_ATTEMPTS: usize = 5;

/// A client for the cluster of a kubeconfig, and that cluster's address for messages.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    server: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kube::Client has no Debug.
        f.debug_struct("Cluster")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The current context of the kubeconfig kubectl uses (`KUBECONFIG`, else
    /// `~/.kube/config`), as kubectl passes no flags to its plugins.
    pub async fn from_kubeconfig() -> Result<Self, Error> {
        let config = Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(Error::Kubeconfig)?;
        Self::from_config(config)
    }

    fn from_config(config: Config) -> Result<Self, Error> {
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .map_err(|e| Error::api("setting up the client", &server, e))?;
        Ok(Self { client, server })
    }

    /// The namespace of the kubeconfig's current context.
    pub fn default_namespace(&self) -> &str {
        self.client.default_namespace()
    }

    fn fail(&self, action: String) -> impl FnOnce(kube::Error) -> Error + '_ {
        move |e| Error::api(action, &self.server, e)
    }

    /// Reads a component, saying which one was missing.
    pub async fn component(&self, namespace: &str, name: &str) -> Result<WasmComponent, Error> {
        Api::<WasmComponent>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(self.fail(format!("reading WasmComponent {namespace}/{name}")))?
            .ok_or_else(|| Error::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
    }

    /// Components in `namespace`, or everywhere when `None`.
    pub async fn components(&self, namespace: Option<&str>) -> Result<Vec<WasmComponent>, Error> {
        let (api, action): (Api<WasmComponent>, String) = match namespace {
            Some(ns) => (
                Api::namespaced(self.client.clone(), ns),
                format!("listing WasmComponents in {ns}"),
            ),
            None => (
                Api::all(self.client.clone()),
                "listing WasmComponents in every namespace".to_owned(),
            ),
        };
        Ok(api
            .list(&ListParams::default())
            .await
            .map_err(self.fail(action))?
            .items)
    }

    /// The caller's user name as the API server authenticated it (SelfSubjectReview).
    pub async fn whoami(&self) -> Result<String, Error> {
        let api: Api<SelfSubjectReview> = Api::all(self.client.clone());
        let review = api
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .map_err(self.fail(
                "asking the API server who you are (pass --approved-by to skip this)".to_owned(),
            ))?;
        review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .filter(|u| !u.is_empty())
            .ok_or(Error::UnknownApprover)
    }

    async fn source(&self, name: &str) -> Result<Option<TrustSource>, Error> {
        Api::<TrustSource>::all(self.client.clone())
            .get_opt(name)
            .await
            .map_err(self.fail(format!("reading TrustSource {name}")))
    }

    /// The source `name` with `entry` merged in, as it stands on the server now.
    pub async fn planned_source(
        &self,
        name: &str,
        decision: Decision,
        entry: DigestEntry,
    ) -> Result<TrustSource, Error> {
        merge_entry(self.source(name).await?, name, decision, entry)
    }

    /// Writes `entry` into source `name`: creates it, or replaces it guarded by its
    /// resourceVersion (retrying when someone else wrote in between).
    pub async fn write_entry(
        &self,
        name: &str,
        decision: Decision,
        entry: DigestEntry,
    ) -> Result<TrustSource, Error> {
        let api: Api<TrustSource> = Api::all(self.client.clone());
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        for _ in 0..WRITE_ATTEMPTS {
            let existing = self.source(name).await?;
            let create = existing.is_none();
            let source = merge_entry(existing, name, decision, entry.clone())?;
            let written = if create {
                api.create(&params, &manifest(&source)).await
            } else {
                api.replace(name, &params, &source).await
            };
            match written {
                Ok(s) => return Ok(s),
                // Created or changed by someone else since we read it: read it again.
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(self.fail(format!("writing TrustSource {name}"))(e)),
            }
        }
        Err(Error::Conflict {
            name: name.to_owned(),
        })
    }
}
