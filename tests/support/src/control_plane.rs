//! A real control plane: etcd, kube-apiserver (TLS, RBAC, service-account issuer, admission
//! plugins incl. ValidatingAdmissionPolicy) and kube-controller-manager (garbage collection,
//! namespace deletion, service accounts), on free loopback ports in a temp directory; and
//! kube-scheduler once a real [`Node`](crate::Node) joins.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde::Deserialize;
use serde_json::json;
use tempfile::TempDir;

use crate::Error;
use crate::pki::{CertFiles, Pki};
use crate::ports::free_ports;
use crate::process::{DirWatchdog, Supervised};
use crate::wait::{condition_status, wait_for};

/// Issuer (and default audience) of service-account tokens, as in a kubeadm cluster.
const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const CRD_TIMEOUT: Duration = Duration::from_secs(60);
const FIELD_MANAGER: &str = "airssys-test-support";
/// Admission plugins switched on explicitly (on top of the API server's defaults).
const ADMISSION_PLUGINS: &str = "NamespaceLifecycle,LimitRanger,ServiceAccount,NodeRestriction,\
DefaultTolerationSeconds,PodSecurity,ResourceQuota,MutatingAdmissionWebhook,\
ValidatingAdmissionWebhook,ValidatingAdmissionPolicy";
/// Every controller except those that need kubelets: hand-made Nodes must not be tainted
/// unreachable and evicted behind a test's back.
const CONTROLLERS: &str =
    "*,-node-lifecycle-controller,-node-ipam-controller,-taint-eviction-controller";

/// The workspace root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// What [`ControlPlane::start`] brings up.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Run kube-controller-manager (garbage collector, namespace deletion, service accounts).
    pub controller_manager: bool,
    /// Install every `*.yaml` CRD under this directory and wait for `Established`. Default:
    /// `crds/yaml/` of the workspace, or `AIRSSYS_CRD_DIR` when set.
    pub crd_dir: Option<PathBuf>,
    /// Keep the temp directory (logs, etcd data, kubeconfigs) after stopping; also set by
    /// `AIRSSYS_KEEP_TMP=1`.
    pub keep_dir: bool,
    /// Let Pods on real Nodes reach the API server in-cluster (`KUBERNETES_SERVICE_HOST`,
    /// through kube-proxy): it listens on every address and advertises the machine's (a Node's
    /// InternalIP), which its serving certificate names, so the `kubernetes` Service gets an
    /// endpoint. Off by default: the API server stays on loopback.
    pub reachable_from_pods: bool,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            controller_manager: true,
            crd_dir: Some(
                std::env::var_os("AIRSSYS_CRD_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| repo_root().join("crds/yaml")),
            ),
            keep_dir: std::env::var_os("AIRSSYS_KEEP_TMP").is_some_and(|v| v != "0"),
            reachable_from_pods: false,
        }
    }
}

/// A running control plane. Dropping it stops every process and removes its directory; the
/// [`shared`](ControlPlane::shared) instance lives in a static and is cleaned up by the
/// watchdogs when the test process exits.
#[derive(Debug)]
pub struct ControlPlane {
    processes: Mutex<Vec<Supervised>>,
    /// Whether kube-scheduler runs (started with the first real Node).
    scheduler: Mutex<bool>,
    dir_watchdog: Option<DirWatchdog>,
    pki: Pki,
    server: String,
    kubeconfig: PathBuf,
    dir: PathBuf,
    tempdir: Option<TempDir>,
}

static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();

impl ControlPlane {
    /// The process-wide control plane, started on first use with the default options. Tests
    /// sharing it must each work in their own namespace ([`create_namespace`]).
    ///
    /// [`create_namespace`]: ControlPlane::create_namespace
    pub async fn shared() -> Result<&'static ControlPlane, Error> {
        SHARED
            .get_or_try_init(|| ControlPlane::start(ControlPlaneOptions::default()))
            .await
    }

    /// Starts a control plane of its own (for tests that need a pristine cluster).
    pub async fn start(options: ControlPlaneOptions) -> Result<ControlPlane, Error> {
        // The first call may build the tools for a long time; keep the runtime free meanwhile.
        tokio::task::spawn_blocking(crate::tools::bin_dir)
            .await
            .map_err(|e| Error::Invalid(format!("tool lookup task failed: {e}")))??;
        let mut attempt = 1;
        loop {
            match ControlPlane::start_once(&options).await {
                Ok(cp) => return Ok(cp),
                // A port chosen as free was taken before our server bound it: pick new ones.
                Err(e) if attempt < 3 && e.to_string().contains("address already in use") => {
                    tracing::warn!(attempt, "port taken during start-up; retrying: {e}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once(options: &ControlPlaneOptions) -> Result<ControlPlane, Error> {
        let started = Instant::now();
        let mut tempdir = tempfile::Builder::new()
            .prefix("airssys-cp-")
            .tempdir()
            .map_err(Error::io("creating the control plane's temp dir"))?;
        let dir = tempdir.path().to_path_buf();
        let dir_watchdog = if options.keep_dir {
            tempdir.disable_cleanup(true);
            None
        } else {
            Some(DirWatchdog::spawn(&dir)?)
        };
        let advertise = if options.reachable_from_pods {
            Some(crate::node::machine_address()?)
        } else {
            None
        };
        let extra_names: Vec<String> = advertise.iter().map(ToString::to_string).collect();
        let pki = Pki::create(&dir.join("pki"), &extra_names)?;
        let admin = pki.client("admin", "airssys-admin", Some("system:masters"))?;
        let ports = free_ports(3)?;
        let (etcd_port, peer_port, api_port) = (ports[0], ports[1], ports[2]);
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &server,
            &pki.ca_cert(),
            "airssys-admin",
            UserAuth::Cert(&admin),
            None,
        )?;

        let cp = ControlPlane {
            processes: Mutex::new(Vec::new()),
            scheduler: Mutex::new(false),
            dir_watchdog,
            pki,
            server,
            kubeconfig,
            dir,
            tempdir: Some(tempdir),
        };
        cp.spawn("etcd", cp.etcd_command(etcd_port, peer_port)?)?;
        cp.spawn(
            "kube-apiserver",
            cp.apiserver_command(etcd_port, api_port, advertise)?,
        )?;
        cp.wait_ready().await?;
        tracing::info!(server = %cp.server, elapsed = ?started.elapsed(), "kube-apiserver ready");

        if options.controller_manager {
            let kcm = cp.controller_manager_command()?;
            cp.spawn("kube-controller-manager", kcm)?;
            cp.wait_controller_manager().await?;
            tracing::info!(elapsed = ?started.elapsed(), "kube-controller-manager working");
        }
        if let Some(crd_dir) = &options.crd_dir {
            cp.install_crds(crd_dir).await?;
        }
        tracing::info!(
            dir = %cp.dir.display(),
            elapsed = ?started.elapsed(),
            "control plane started"
        );
        Ok(cp)
    }

    fn spawn(&self, name: &str, cmd: Command) -> Result<(), Error> {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let process = Supervised::spawn(name, cmd, &log)?;
        self.lock_processes().push(process);
        Ok(())
    }

    fn lock_processes(&self) -> std::sync::MutexGuard<'_, Vec<Supervised>> {
        // A panic while holding the lock leaves the list intact; keep using it.
        self.processes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn etcd_command(&self, client_port: u16, peer_port: u16) -> Result<Command, Error> {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(crate::tool_path("etcd")?);
        cmd.arg("--name=airssys")
            .arg(format!("--data-dir={}", self.dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=airssys={peer}"))
            // Test data is disposable; fsync would dominate start-up and every write.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        Ok(cmd)
    }

    /// `advertise`: the address Pods reach it at ([`ControlPlaneOptions::reachable_from_pods`]).
    fn apiserver_command(
        &self,
        etcd_port: u16,
        port: u16,
        advertise: Option<std::net::Ipv4Addr>,
    ) -> Result<Command, Error> {
        let serving = self.pki.serving();
        let sa_key = self.pki.sa_key();
        // How the API server authenticates to kubelets (`kubectl logs`, `exec`): as admin.
        let kubelet_client = self.pki.client(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
        )?;
        let mut cmd = Command::new(crate::tool_path("kube-apiserver")?);
        cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", self.dir.join("pki").display()))
            .arg(format!("--tls-cert-file={}", serving.cert.display()))
            .arg(format!("--tls-private-key-file={}", serving.key.display()))
            .arg(format!("--client-ca-file={}", self.pki.ca_cert().display()))
            .arg(format!("--service-account-issuer={SA_ISSUER}"))
            .arg(format!(
                "--service-account-key-file={}",
                self.pki.sa_public_key().display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/12")
            .arg("--authorization-mode=Node,RBAC")
            .arg(format!(
                "--kubelet-client-certificate={}",
                kubelet_client.cert.display()
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                kubelet_client.key.display()
            ))
            // A test Node's hostname resolves nowhere; its InternalIP is the machine's.
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg(format!("--enable-admission-plugins={ADMISSION_PLUGINS}"))
            .arg("--allow-privileged=true")
            .arg("--profiling=false");
        match advertise {
            // The lease reconciler makes the machine's address the "kubernetes" Service's
            // endpoint; kube-proxy sends Pods' in-cluster API calls there.
            Some(address) => cmd
                .arg("--bind-address=0.0.0.0")
                .arg(format!("--advertise-address={address}")),
            // The "kubernetes" Service endpoints would point at loopback, which the reconciler
            // rejects; nothing in-cluster dials this API server.
            None => cmd
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg("--endpoint-reconciler-type=none"),
        };
        Ok(cmd)
    }

    fn controller_manager_command(&self) -> Result<Command, Error> {
        let cert = self
            .pki
            .client("controller-manager", "system:kube-controller-manager", None)?;
        let kubeconfig = self.dir.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &self.server,
            &self.pki.ca_cert(),
            "system:kube-controller-manager",
            UserAuth::Cert(&cert),
            None,
        )?;
        let mut cmd = Command::new(crate::tool_path("kube-controller-manager")?);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--leader-elect=false")
            // No HTTPS endpoint: nothing scrapes it, and it would need its own port.
            .arg("--secure-port=0")
            .arg(format!("--controllers={CONTROLLERS}"))
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                self.pki.sa_key().display()
            ))
            .arg(format!("--root-ca-file={}", self.pki.ca_cert().display()))
            .arg(format!(
                "--cluster-signing-cert-file={}",
                self.pki.ca_cert().display()
            ))
            .arg(format!(
                "--cluster-signing-key-file={}",
                self.pki.ca_key().display()
            ));
        Ok(cmd)
    }

    /// Starts kube-scheduler (the binary in `bin`, `tests/cluster/node.sh`'s directory) unless
    /// it runs already. Only a cluster with real nodes needs one: DaemonSet and Deployment Pods
    /// wait for it to bind them. Hand-made Nodes keep the `node.kubernetes.io/not-ready` taint
    /// admission gives every new Node, so it places nothing on them.
    pub(crate) fn ensure_scheduler(&self, bin: &Path) -> Result<(), Error> {
        let mut running = self
            .scheduler
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *running {
            return Ok(());
        }
        let cert = self
            .pki
            .client("scheduler", "system:kube-scheduler", None)?;
        let kubeconfig = self.dir.join("scheduler.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &self.server,
            &self.pki.ca_cert(),
            "system:kube-scheduler",
            UserAuth::Cert(&cert),
            None,
        )?;
        let mut cmd = Command::new(bin.join("kube-scheduler"));
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--leader-elect=false")
            // No HTTPS endpoint, like the controller manager's.
            .arg("--secure-port=0");
        self.spawn("kube-scheduler", cmd)?;
        *running = true;
        tracing::info!("kube-scheduler started");
        Ok(())
    }

    /// Polls `/readyz` until the API server says `ok`, failing fast if a process died.
    async fn wait_ready(&self) -> Result<(), Error> {
        let client = self.client().await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_processes()?;
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| Error::Invalid(format!("building the /readyz request: {e}")))?;
            let last = match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "kube-apiserver /readyz".into(),
                    timeout: READY_TIMEOUT,
                    last: format!(
                        "{last}\n--- kube-apiserver log:\n{}",
                        self.log_tail("kube-apiserver", 40)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The service-account controller creating `default/default` proves the controller
    /// manager is connected, authorized and running its controllers.
    async fn wait_controller_manager(&self) -> Result<(), Error> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, "default");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_processes()?;
            if api.get_opt("default").await?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "kube-controller-manager to create ServiceAccount default/default".into(),
                    timeout: READY_TIMEOUT,
                    last: self.log_tail("kube-controller-manager", 40),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Fails with the log tail of the first process that has exited.
    pub fn check_processes(&self) -> Result<(), Error> {
        self.lock_processes()
            .iter_mut()
            .try_for_each(Supervised::check_running)
    }

    /// The last `lines` lines of a component's log (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        crate::process::log_tail(&self.dir.join("logs").join(format!("{name}.log")), lines)
    }

    /// A new client for the admin user (group `system:masters`). Each call builds a fresh
    /// client on the caller's runtime, so clients never outlive a test's runtime.
    pub async fn client(&self) -> Result<Client, Error> {
        client_from(&self.kubeconfig).await
    }

    /// The admin kubeconfig (client certificate, group `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.pki.ca_cert()
    }

    /// The CA that signs client certificates (a Node's kubelet and kube-proxy identities).
    pub(crate) fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The temp directory holding logs, etcd data, certificates and kubeconfigs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a namespace named `<prefix>-<random>` and returns its name.
    pub async fn create_namespace(&self, prefix: &str) -> Result<String, Error> {
        let api: Api<Namespace> = Api::all(self.client().await?);
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                labels: Some([("airssys.dev/test".to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = api.create(&PostParams::default(), &ns).await?;
        created
            .metadata
            .name
            .ok_or_else(|| Error::Invalid("created namespace has no name".into()))
    }

    /// Creates a Node object by hand (there are no kubelets), with the given labels.
    pub async fn create_node(&self, name: &str, labels: &[(&str, &str)]) -> Result<Node, Error> {
        let api: Api<Node> = Api::all(self.client().await?);
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        Ok(api.create(&PostParams::default(), &node).await?)
    }

    /// Mints a token for ServiceAccount `namespace/name` (TokenRequest API, valid one day) and
    /// writes a kubeconfig with it, so a process runs with exactly that account's RBAC.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf, Error> {
        self.token_kubeconfig(namespace, name, None).await
    }

    /// Like [`Self::service_account_kubeconfig`], with the token bound to the `Node` named
    /// `node` (which must exist), as a DaemonSet pod's token is bound to its pod on that node:
    /// the API server adds the `authentication.kubernetes.io/node-name` claim, which the
    /// chart's admission policy checks. The kubeconfig is per (account, node); the bare token
    /// is written beside it, at the kubeconfig's path with the extension `token` (what an
    /// agent reads as its mounted ServiceAccount token).
    pub async fn node_bound_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
    ) -> Result<PathBuf, Error> {
        let nodes: Api<Node> = Api::all(self.client().await?);
        let uid = nodes.get(node).await?.metadata.uid;
        let bound = BoundObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(node.to_owned()),
            uid,
        };
        self.token_kubeconfig(namespace, name, Some(bound)).await
    }

    async fn token_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        bound: Option<BoundObjectReference>,
    ) -> Result<PathBuf, Error> {
        let node = bound.as_ref().and_then(|b| b.name.clone());
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(24 * 3600),
                bound_object_ref: bound,
            },
            ..TokenRequest::default()
        };
        let response = api
            .create_token_request(name, &PostParams::default(), &request)
            .await?;
        let token = response.status.map(|s| s.token).ok_or_else(|| {
            Error::Invalid(format!(
                "TokenRequest for {namespace}/{name} returned no token"
            ))
        })?;
        let path = self.dir.join("kubeconfigs").join(match &node {
            Some(node) => format!("sa-{namespace}-{name}-on-{node}.kubeconfig"),
            None => format!("sa-{namespace}-{name}.kubeconfig"),
        });
        write_kubeconfig(
            &path,
            &self.server,
            &self.pki.ca_cert(),
            &format!("system:serviceaccount:{namespace}:{name}"),
            UserAuth::Token(&token),
            Some(namespace),
        )?;
        let token_path = path.with_extension("token");
        std::fs::write(&token_path, &token)
            .map_err(Error::io(format!("writing {}", token_path.display())))?;
        Ok(path)
    }

    /// Renders the chart (`charts/airssys-wasm`) with the real helm into `namespace` (created
    /// if missing) as release `airssys-wasm`, with `values` (`key=value` for `--set`), and
    /// applies it server-side as cluster admin: its CRDs, ServiceAccounts, RBAC and admission
    /// policies. The operator Deployment and agent DaemonSet are left out (the tests run the
    /// binaries as processes); a value in `values` can turn them back on.
    pub async fn install_chart(&self, namespace: &str, values: &[&str]) -> Result<(), Error> {
        let _ = self.kubectl(["create", "namespace", namespace]).await?;
        let chart = repo_root().join("charts/airssys-wasm");
        let mut args: Vec<String> = vec![
            "template".into(),
            "airssys-wasm".into(),
            chart.display().to_string(),
            "--namespace".into(),
            namespace.into(),
            "--kube-version".into(),
            "1.34.0".into(),
            "--set".into(),
            "operator.enabled=false,agent.enabled=false".into(),
        ];
        for v in values {
            args.push("--set".into());
            args.push((*v).to_owned());
        }
        let out = self.helm(&args).await?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "helm template: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let rendered = self.dir.join(format!("chart-{namespace}.yaml"));
        std::fs::write(&rendered, &out.stdout)
            .map_err(Error::io(format!("writing {}", rendered.display())))?;
        let out = self
            .kubectl([
                "apply".into(),
                "--server-side".into(),
                "--force-conflicts".into(),
                "-f".into(),
                rendered.into_os_string(),
            ])
            .await?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "applying the chart: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// A kubeconfig for a client-certificate user (`group`, if any, as its one group), for
    /// tests of what a given human role may do.
    pub fn user_kubeconfig(&self, user: &str, group: Option<&str>) -> Result<PathBuf, Error> {
        let stem: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let cert = self.pki.client(&format!("user-{stem}"), user, group)?;
        let path = self
            .dir
            .join("kubeconfigs")
            .join(format!("user-{stem}.kubeconfig"));
        write_kubeconfig(
            &path,
            &self.server,
            &self.pki.ca_cert(),
            user,
            UserAuth::Cert(&cert),
            None,
        )?;
        Ok(path)
    }

    /// Applies every CRD in `dir/*.yaml` (server-side apply) and waits until each is
    /// `Established`. Returns the CRD names. A missing directory installs nothing.
    pub async fn install_crds(&self, dir: &Path) -> Result<Vec<String>, Error> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            tracing::warn!(dir = %dir.display(), "no CRD directory; installing no CRDs");
            return Ok(Vec::new());
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        self.install_crd_files(&files).await
    }

    /// Applies the CRDs in `files` (each may hold several YAML documents) and waits until
    /// each is `Established`.
    pub async fn install_crd_files(&self, files: &[PathBuf]) -> Result<Vec<String>, Error> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        let mut names = Vec::new();
        for path in files {
            for crd in read_crds(path)? {
                let name = crd.metadata.name.clone().ok_or_else(|| {
                    Error::Invalid(format!("a CRD in {} has no name", path.display()))
                })?;
                api.patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&crd),
                )
                .await?;
                names.push(name);
            }
        }
        for name in &names {
            wait_for(
                &api,
                name,
                |crd| condition_status(crd, "Established").as_deref() == Some("True"),
                CRD_TIMEOUT,
            )
            .await?;
        }
        tracing::info!(crds = ?names, "CRDs established");
        Ok(names)
    }

    /// Runs the harness's `kubectl` as the admin user.
    pub async fn kubectl<I, S>(&self, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_as(&self.kubeconfig, args).await
    }

    /// Runs the harness's `kubectl` with another kubeconfig (e.g. a ServiceAccount's).
    pub async fn kubectl_as<I, S>(&self, kubeconfig: &Path, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = tokio::process::Command::new(crate::tool_path("kubectl")?);
        cmd.args(args)
            .env("KUBECONFIG", kubeconfig)
            // A discovery cache per control plane: a fresh port never sees stale API groups.
            .env("KUBECACHEDIR", self.dir.join("kubectl-cache"));
        run(cmd, "kubectl").await
    }

    /// Runs the harness's `helm` against this cluster, with helm's own state in the temp dir.
    pub async fn helm<I, S>(&self, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let helm_home = self.dir.join("helm");
        let mut cmd = tokio::process::Command::new(crate::tool_path("helm")?);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", helm_home.join("cache"))
            .env("HELM_CONFIG_HOME", helm_home.join("config"))
            .env("HELM_DATA_HOME", helm_home.join("data"));
        run(cmd, "helm").await
    }

    /// Path of a harness tool (`cosign`, `oras`, `kubectl`, ...).
    pub fn tool_path(&self, name: &str) -> Result<PathBuf, Error> {
        crate::tool_path(name)
    }

    /// Stops every process (controller manager, API server, etcd — in that order).
    pub fn stop(&self) {
        let mut processes = self.lock_processes();
        while let Some(mut process) = processes.pop() {
            process.stop();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        if let Some(watchdog) = self.dir_watchdog.as_mut() {
            watchdog.disarm();
        }
        if self.dir_watchdog.is_none() {
            tracing::info!(dir = %self.dir.display(), "kept control plane directory");
        }
        // Dropping the TempDir removes the directory unless cleanup was disabled.
        drop(self.tempdir.take());
    }
}

async fn run(mut cmd: tokio::process::Command, what: &str) -> Result<Output, Error> {
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    tracing::debug!(?cmd, "running {what}");
    cmd.output()
        .await
        .map_err(Error::io(format!("running {what}")))
}

/// A client for any kubeconfig written by this crate.
pub async fn client_from(kubeconfig: &Path) -> Result<Client, Error> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn read_crds(path: &Path) -> Result<Vec<CustomResourceDefinition>, Error> {
    let text =
        std::fs::read_to_string(path).map_err(Error::io(format!("reading {}", path.display())))?;
    let yaml_err = |source| Error::Yaml {
        path: path.to_path_buf(),
        source,
    };
    let mut crds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(doc).map_err(yaml_err)?;
        if value.is_null() {
            continue;
        }
        let crd = serde_json::from_value(value).map_err(|source| Error::Json {
            what: format!("a CustomResourceDefinition from {}", path.display()),
            source,
        })?;
        crds.push(crd);
    }
    Ok(crds)
}

pub(crate) enum UserAuth<'a> {
    Cert(&'a CertFiles),
    Token(&'a str),
}

pub(crate) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    auth: UserAuth<'_>,
    namespace: Option<&str>,
) -> Result<(), Error> {
    let user_entry = match auth {
        UserAuth::Cert(files) => json!({
            "client-certificate": files.cert,
            "client-key": files.key,
        }),
        UserAuth::Token(token) => json!({ "token": token }),
    };
    let mut context = json!({ "cluster": "airssys-test", "user": user });
    if let Some(ns) = namespace {
        context["namespace"] = json!(ns);
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "airssys-test", "cluster": { "server": server, "certificate-authority": ca } }],
        "users": [{ "name": user, "user": user_entry }],
        "contexts": [{ "name": "airssys-test", "context": context }],
        "current-context": "airssys-test",
    });
    let text = serde_yaml::to_string(&config).map_err(|source| Error::Yaml {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(Error::io(format!("creating {}", parent.display())))?;
    }
    std::fs::write(path, text).map_err(Error::io(format!("writing {}", path.display())))
}
