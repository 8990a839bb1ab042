//! The local development run (`cargo run -p xtask -- dev`, binary `airssys-dev`) as library
//! functions, so the end-to-end test in `tests/e2e` drives exactly the flow a developer sees.
//!
//! [`DevCluster::start`] brings up the harness's control plane, a local OCI registry with the
//! example components pushed as OCI artifacts (one signed with a cosign key kept in the dev
//! directory), the real operator binary with the flags a local registry needs, and
//! `examples/` applied with their placeholders filled in ([`render_manifest`]). The examples
//! then reach one decision each ([`EXAMPLE_COMPONENTS`]).
//!
//! The driver lives here, not in xtask, so that it is built by the same
//! `cargo build --workspace --bins` as the operator and agent: one build graph, every
//! dependency compiled once. xtask itself stays std-only and compiles in seconds.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::Value;

use crate::{ControlPlane, ControlPlaneOptions, Error, Registry, Supervised, tools};

/// The registry address the example manifests name; replaced by the local registry's.
pub const REGISTRY_PLACEHOLDER: &str = "localhost:5000";
/// The TrustSource key entry whose public key is replaced by the dev signing key's.
pub const DEV_KEY_NAME: &str = "dev-signing-key";
/// The product's namespace in the dev run (the chart's release namespace).
pub const PRODUCT_NAMESPACE: &str = "airssys-system";
/// The agents' ServiceAccount the chart creates (release `airssys-wasm`).
pub const AGENT_SERVICE_ACCOUNT: &str = "airssys-wasm-agent";
/// How long a just-started binary is watched for an immediate exit.
const STARTUP_WATCH: Duration = Duration::from_millis(1500);
const POLL: Duration = Duration::from_millis(250);

/// The decision an example component reaches on the first run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Signed with the dev key under the platform repository: approved by policy.
    Trusted,
    /// Nothing vouches for it: waits for `kubectl wasm approve`.
    PendingApproval,
    /// In a namespace the DevMode source selects, with the operator in dev mode.
    DevMode,
    /// A Deny source matches.
    Denied,
}

impl Expected {
    /// The `Approved` condition (status, reason) this decision shows.
    pub fn approved(self) -> (&'static str, &'static str) {
        match self {
            Self::Trusted => ("True", "TrustSourceMatched"),
            Self::PendingApproval => ("False", "PendingApproval"),
            Self::DevMode => ("True", "DevModeBypass"),
            Self::Denied => ("False", "Denied"),
        }
    }

    /// The `status.trustLevel` this decision shows.
    pub fn trust_level(self) -> &'static str {
        match self {
            Self::Trusted => "Trusted",
            Self::PendingApproval => "Unknown",
            Self::DevMode => "DevMode",
            Self::Denied => "Denied",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trusted => "Trusted",
            Self::PendingApproval => "PendingApproval",
            Self::DevMode => "DevMode",
            Self::Denied => "Denied",
        }
    }
}

/// One example `WasmComponent` and the artifact the dev run pushes for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExampleComponent {
    pub namespace: &'static str,
    pub name: &'static str,
    /// `repository:tag` under the registry (the manifest says `localhost:5000/<this>`).
    pub repository: &'static str,
    /// The guest from `tests/components` pushed as its artifact (file stem).
    pub guest: &'static str,
    /// Signed with the dev key.
    pub signed: bool,
    pub expected: Expected,
}

impl ExampleComponent {
    /// `NAMESPACE/NAME`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The example components that show one decision each. A unit test keeps this table and the
/// manifests in `examples/` in agreement.
pub const EXAMPLE_COMPONENTS: &[ExampleComponent] = &[
    ExampleComponent {
        namespace: "wasm-demo",
        name: "echo",
        repository: "platform/echo:1.2.0",
        guest: "echo",
        signed: true,
        expected: Expected::Trusted,
    },
    ExampleComponent {
        namespace: "wasm-demo",
        name: "hello-http",
        repository: "platform/hello-http:1.0.0",
        guest: "http_hello",
        signed: true,
        expected: Expected::Trusted,
    },
    ExampleComponent {
        namespace: "wasm-demo",
        name: "kv-counter",
        repository: "team-a/kv-counter:1.4.0",
        guest: "kv_counter",
        signed: false,
        expected: Expected::PendingApproval,
    },
    ExampleComponent {
        namespace: "wasm-dev",
        name: "scratch",
        repository: "dev/scratch:latest",
        guest: "trespasser",
        signed: false,
        expected: Expected::DevMode,
    },
    ExampleComponent {
        namespace: "wasm-demo",
        name: "miner",
        repository: "quarantine/miner:0.9.0",
        guest: "message_flood",
        signed: false,
        expected: Expected::Denied,
    },
];

/// The example that waits for a person, and the reason the printed approve command gives.
pub const APPROVE_REASON: &str = "tried in the dev cluster";

/// `kubectl` arguments that approve `component` (`wasm approve NS/NAME --reason ...`).
pub fn approve_args(component: &ExampleComponent) -> Vec<String> {
    vec![
        "wasm".into(),
        "approve".into(),
        component.id(),
        "--reason".into(),
        APPROVE_REASON.into(),
    ]
}

/// Fills the placeholders of one example manifest (any number of YAML documents): every
/// string naming [`REGISTRY_PLACEHOLDER`] names `registry` instead, and the public key of
/// every TrustSource key called [`DEV_KEY_NAME`] becomes `public_key`. Comments are dropped.
pub fn render_manifest(text: &str, registry: &str, public_key: &str) -> Result<String, String> {
    let mut out = String::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let mut value = Value::deserialize(doc).map_err(|e| e.to_string())?;
        if value.is_null() {
            continue;
        }
        replace_strings(&mut value, REGISTRY_PLACEHOLDER, registry);
        if value["kind"] == "TrustSource"
            && let Some(keys) = value
                .pointer_mut("/spec/keys")
                .and_then(Value::as_array_mut)
        {
            for key in keys.iter_mut().filter(|k| k["name"] == DEV_KEY_NAME) {
                key["publicKey"] = Value::String(public_key.to_owned());
            }
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&value).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn replace_strings(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) if s.contains(from) => *s = s.replace(from, to),
        Value::Array(items) => items.iter_mut().for_each(|v| replace_strings(v, from, to)),
        Value::Object(map) => map.values_mut().for_each(|v| replace_strings(v, from, to)),
        _ => {}
    }
}

/// Renders every `*.yaml` directly in `examples` into `out` (emptied first), as
/// [`render_manifest`] says. Returns the files written.
pub fn render_examples(
    examples: &Path,
    out: &Path,
    registry: &str,
    public_key: &str,
) -> Result<Vec<PathBuf>, Error> {
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(Error::io(format!("emptying {}", out.display())))?;
    }
    std::fs::create_dir_all(out).map_err(Error::io(format!("creating {}", out.display())))?;
    let mut written = Vec::new();
    for path in yaml_files(examples)? {
        let text = std::fs::read_to_string(&path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        let rendered = render_manifest(&text, registry, public_key)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let name = path.file_name().unwrap_or_default();
        let target = out.join(name);
        let header = format!(
            "# Rendered from {} by airssys-dev (registry {registry}, the dev signing key).\n",
            path.display()
        );
        std::fs::write(&target, header + &rendered)
            .map_err(Error::io(format!("writing {}", target.display())))?;
        written.push(target);
    }
    Ok(written)
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries =
        std::fs::read_dir(dir).map_err(Error::io(format!("reading {}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// The stable directory of the dev run: `$AIRSSYS_DEV_DIR`, else
/// `$HOME/.cache/airssys-wasm/dev` (signing key, kubeconfig, rendered examples, agent data).
pub fn default_dev_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AIRSSYS_DEV_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/airssys-wasm/dev")
}

/// Where the workspace's binaries are for the running executable: its own directory
/// (`<target>/debug` for a binary), or the one above `deps/` (a test) or `examples/` (a
/// benchmark program).
pub fn workspace_bin_dir() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(Error::io("locating the running executable"))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{} has no parent directory", exe.display())))?;
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir = dir.parent().unwrap_or(dir);
    }
    Ok(dir.to_path_buf())
}

/// The workspace's binaries, built into the target directory and profile of the running
/// executable, as `cargo test --workspace` builds them: `--bins --tests` unifies
/// features exactly as the test run did (dev-dependencies included), so inside that run this
/// is a no-op instead of a second build of the dependencies with other features, which would
/// also overwrite the binaries the other tests run.
/// (xtask builds the dev run's own graph, `--bins` only, itself.) Returns the binaries'
/// directory.
pub fn build_workspace_bins_for_tests() -> Result<PathBuf, Error> {
    cargo_build(&["--workspace", "--bins", "--tests"])
}

/// Only the binaries a benchmark program runs (`-p airssys-operator -p airssys-agent`), in
/// its target directory and profile. A release benchmark would otherwise build every test
/// target of the workspace in release too, which takes longer than the benchmark; outside a
/// `cargo test` run there is no feature set to stay in step with. Returns the binaries'
/// directory.
pub fn build_bins_for_benchmark() -> Result<PathBuf, Error> {
    cargo_build(&["-p", "airssys-operator", "-p", "airssys-agent", "--bins"])
}

fn cargo_build(targets: &[&str]) -> Result<PathBuf, Error> {
    let bin_dir = workspace_bin_dir()?;
    let target_dir = bin_dir
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{} has no parent", bin_dir.display())))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--locked"])
        .args(targets)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(crate::repo_root())
        .stdin(Stdio::null());
    // `cargo test` gave this process its package's CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...;
    // build scripts (ring's) rerun when those change, so passing them on would rebuild ring
    // and everything above it, and again in the next plain `cargo build`.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_package_env) {
            cmd.env_remove(&name);
        }
    }
    if bin_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    tracing::info!(?cmd, "building the workspace's binaries");
    let status = cmd.status().map_err(Error::io("running cargo build"))?;
    if !status.success() {
        return Err(Error::Invalid(format!(
            "cargo build {} failed ({status})",
            targets.join(" ")
        )));
    }
    Ok(bin_dir)
}

/// Variables cargo sets for the package it runs or tests, never cargo configuration.
fn is_package_env(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

/// Builds the guest components (`tests/components/build.sh`; a no-op when nothing changed)
/// and returns the directory holding their `.wasm` files.
pub fn build_guests() -> Result<PathBuf, Error> {
    let out = std::env::var_os("AIRSSYS_GUEST_DIR").map_or_else(
        || {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".cache/airssys-wasm/guests")
        },
        PathBuf::from,
    );
    let script = crate::repo_root().join("tests/components/build.sh");
    tracing::info!(script = %script.display(), "building the guest components");
    // stderr is inherited so a first, long build shows its progress.
    let status = Command::new("bash")
        .arg(&script)
        .env("AIRSSYS_GUEST_DIR", &out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(Error::io(format!("running {}", script.display())))?;
    if !status.success() {
        return Err(Error::Invalid(format!(
            "{} failed ({status})",
            script.display()
        )));
    }
    Ok(out)
}

/// A cosign key pair (empty password) in a directory.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub private_key: PathBuf,
    pub public_key_path: PathBuf,
    /// The public key, PEM.
    pub public_key: String,
}

impl SigningKey {
    /// The key pair in `dir` (`cosign.key`, `cosign.pub`), generated with cosign the first
    /// time and reused afterwards, so the key the examples trust stays the same between runs.
    pub fn ensure(dir: &Path) -> Result<SigningKey, Error> {
        let private_key = dir.join("cosign.key");
        let public_key_path = dir.join("cosign.pub");
        if !(private_key.is_file() && public_key_path.is_file()) {
            std::fs::create_dir_all(dir)
                .map_err(Error::io(format!("creating {}", dir.display())))?;
            for stale in [&private_key, &public_key_path] {
                let _ = std::fs::remove_file(stale);
            }
            tools::run_tool(dir, "cosign", &["generate-key-pair"])?;
            tracing::info!(key = %private_key.display(), "generated the dev signing key");
        }
        let public_key = std::fs::read_to_string(&public_key_path)
            .map_err(Error::io(format!("reading {}", public_key_path.display())))?;
        Ok(SigningKey {
            private_key,
            public_key_path,
            public_key,
        })
    }

    /// Signs `reference` (`registry/repo@sha256:...`, plain HTTP) with cosign, offline (no
    /// transparency log), working in `dir`.
    pub fn sign(&self, dir: &Path, reference: &str) -> Result<(), Error> {
        let key = self.private_key.display().to_string();
        tools::run_tool(
            dir,
            "cosign",
            &[
                "sign",
                "--key",
                &key,
                "--tlog-upload=false",
                "--allow-http-registry",
                "--allow-insecure-registry",
                "--yes",
                reference,
            ],
        )
        .map(drop)
    }
}

/// An example artifact in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub component: ExampleComponent,
    /// `registry/repository:tag`.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
}

/// Pushes each example's guest to the registry at `registry` (`host:port`, plain HTTP) with
/// oras and signs the ones to sign with `key`, working in `work`.
pub fn push_examples(
    registry: &str,
    guests: &Path,
    key: &SigningKey,
    work: &Path,
) -> Result<Vec<Pushed>, Error> {
    std::fs::create_dir_all(work).map_err(Error::io(format!("creating {}", work.display())))?;
    let mut pushed = Vec::new();
    for component in EXAMPLE_COMPONENTS {
        let wasm = guests.join(format!("{}.wasm", component.guest));
        let bytes =
            std::fs::read(&wasm).map_err(Error::io(format!("reading {}", wasm.display())))?;
        let reference = format!("{registry}/{}", component.repository);
        let digest = tools::push_wasm(work, &reference, &bytes)?;
        if component.signed {
            let repository = reference
                .rsplit_once(':')
                .map_or(reference.as_str(), |(repo, _tag)| repo);
            key.sign(work, &format!("{repository}@{digest}"))?;
        }
        tracing::info!(%reference, %digest, signed = component.signed, "pushed");
        pushed.push(Pushed {
            component: *component,
            reference,
            digest,
        });
    }
    Ok(pushed)
}

/// What a component's status says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub component: ExampleComponent,
    pub trust_level: Option<String>,
    /// `status.matchedSources`: the TrustSources that decided.
    pub matched_sources: Vec<String>,
    /// The `Approved` condition: (status, reason, message).
    pub approved: Option<(String, String, String)>,
}

impl Observed {
    /// Whether the `Approved` condition has this status and reason.
    pub fn is(&self, status: &str, reason: &str) -> bool {
        self.approved
            .as_ref()
            .is_some_and(|(s, r, _)| s == status && r == reason)
    }

    /// Whether the component reached its expected decision (condition and trust level).
    pub fn as_expected(&self) -> bool {
        let expected = self.component.expected;
        let (status, reason) = expected.approved();
        self.is(status, reason) && self.trust_level.as_deref() == Some(expected.trust_level())
    }

    /// `Approved=STATUS (REASON), trust LEVEL` or `not decided yet`.
    pub fn describe(&self) -> String {
        match &self.approved {
            Some((status, reason, _)) => format!(
                "Approved={status} ({reason}), trust {}, sources [{}]",
                self.trust_level.as_deref().unwrap_or("-"),
                self.matched_sources.join(", ")
            ),
            None => "not decided yet".into(),
        }
    }
}

/// The API of `WasmComponent`s without the CRD types (this crate sits below them).
fn components_api(client: Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("wasm.airssys.dev", "v1alpha1", "WasmComponent");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "wasmcomponents");
    Api::namespaced_with(client, namespace, &resource)
}

/// Reads the status of `component`.
pub async fn observe(client: &Client, component: &ExampleComponent) -> Result<Observed, Error> {
    let api = components_api(client.clone(), component.namespace);
    let object = api.get_opt(component.name).await?;
    let status = object.as_ref().and_then(|o| o.data.get("status"));
    let trust_level = status
        .and_then(|s| s.get("trustLevel"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let matched_sources = status
        .and_then(|s| s.get("matchedSources"))
        .and_then(Value::as_array)
        .map(|sources| {
            sources
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let approved = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|conds| conds.iter().find(|c| c["type"] == "Approved"))
        .map(|c| {
            let field = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (field("status"), field("reason"), field("message"))
        });
    Ok(Observed {
        component: *component,
        trust_level,
        matched_sources,
        approved,
    })
}

/// What [`DevCluster::start`] brings up.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// State kept between runs: signing key, kubeconfig, rendered examples, agent data.
    pub dir: PathBuf,
    /// Where `airssys-operator`, `airssys-agent` and `kubectl-wasm` are.
    pub bin_dir: PathBuf,
    /// The example manifests (`examples/`).
    pub examples: PathBuf,
    /// Agents to start in node mode, one per stand-in node (`dev-node-1`, ...).
    pub nodes: u32,
    /// Keep the control plane's directory (logs, etcd data) after stopping.
    pub keep: bool,
    /// Arguments added to `airssys-operator run --dev-mode --insecure-registry <registry>`.
    pub operator_args: Vec<String>,
    /// Arguments added to each agent's `run --node-name ... --data-dir ...`.
    pub agent_args: Vec<String>,
}

impl DevOptions {
    /// The stable dev directory, the running executable's binaries and `examples/`.
    pub fn new() -> Result<DevOptions, Error> {
        Ok(DevOptions {
            dir: default_dev_dir(),
            bin_dir: workspace_bin_dir()?,
            examples: crate::repo_root().join("examples"),
            nodes: 0,
            keep: false,
            operator_args: Vec::new(),
            agent_args: Vec::new(),
        })
    }
}

/// The local run: control plane, registry with the examples pushed, operator, agents. Dropping
/// it stops the processes (agents and operator first, then the registry and control plane).
#[derive(Debug)]
pub struct DevCluster {
    /// The agents, by node name.
    agents: Vec<(String, Supervised)>,
    artifact_server: String,
    operator: Supervised,
    pushed: Vec<Pushed>,
    key: SigningKey,
    kubeconfig: PathBuf,
    rendered: PathBuf,
    bin_dir: PathBuf,
    registry: Registry,
    cp: ControlPlane,
}

impl DevCluster {
    /// Starts everything and applies the examples; does not wait for decisions (see
    /// [`DevCluster::wait_for_decisions`]).
    pub async fn start(options: DevOptions) -> Result<DevCluster, Error> {
        let operator_bin = options.bin_dir.join("airssys-operator");
        if !operator_bin.is_file() {
            return Err(Error::Invalid(format!(
                "{} is not built; run `cargo build --workspace --bins`",
                operator_bin.display()
            )));
        }
        std::fs::create_dir_all(&options.dir)
            .map_err(Error::io(format!("creating {}", options.dir.display())))?;
        let guests = tokio::task::spawn_blocking(build_guests)
            .await
            .map_err(|e| Error::Invalid(format!("guest build task failed: {e}")))??;
        let cp = ControlPlane::start(ControlPlaneOptions {
            keep_dir: options.keep,
            ..ControlPlaneOptions::default()
        })
        .await?;
        let kubeconfig = options.dir.join("kubeconfig");
        std::fs::copy(cp.kubeconfig_path(), &kubeconfig)
            .map_err(Error::io(format!("writing {}", kubeconfig.display())))?;

        let registry = Registry::start().await?;
        let key = SigningKey::ensure(&options.dir)?;
        let work = cp.dir().join("push");
        let pushed = {
            let (address, guests, key) =
                (registry.address().to_owned(), guests.clone(), key.clone());
            // oras and cosign are blocking child processes; a few seconds in all.
            tokio::task::spawn_blocking(move || push_examples(&address, &guests, &key, &work))
                .await
                .map_err(|e| Error::Invalid(format!("push task failed: {e}")))??
        };

        // The product's namespace with the chart's ServiceAccounts, RBAC and admission
        // policies: the agents run with exactly the chart's agent role.
        cp.install_chart(PRODUCT_NAMESPACE, &[]).await?;
        let artifact_port = crate::ports::free_ports(1)?[0];
        let artifact_server = format!("https://127.0.0.1:{artifact_port}");

        let mut cmd = Command::new(&operator_bin);
        cmd.args([
            "run",
            "--dev-mode",
            "--insecure-registry",
            registry.address(),
            "--namespace",
            PRODUCT_NAMESPACE,
            "--artifact-addr",
            &format!("127.0.0.1:{artifact_port}"),
            "--agent-service-account",
            &format!("{PRODUCT_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}"),
        ])
        .arg("--blob-dir")
        .arg(options.dir.join("operator-blobs"))
        .args(&options.operator_args)
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("RUST_LOG", rust_log());
        let operator = start_watched(&cp, "operator", cmd).await?;

        let mut agents = Vec::new();
        let agent_bin = options.bin_dir.join("airssys-agent");
        for n in 1..=options.nodes {
            let node = format!("dev-node-{n}");
            agents.push((
                node.clone(),
                start_agent(
                    &cp,
                    &agent_bin,
                    &node,
                    &artifact_server,
                    &options.dir.join("agents").join(&node),
                    &options.agent_args,
                )
                .await?,
            ));
        }

        let rendered = options.dir.join("examples");
        render_examples(
            &options.examples,
            &rendered,
            registry.address(),
            &key.public_key,
        )?;
        let out = cp
            .kubectl([
                OsString::from("apply"),
                "-f".into(),
                rendered.clone().into_os_string(),
            ])
            .await?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "kubectl apply -f {} failed:\n{}{}",
                rendered.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        tracing::info!(
            "kubectl apply -f {}:\n{}",
            rendered.display(),
            String::from_utf8_lossy(&out.stdout).trim_end()
        );
        Ok(DevCluster {
            agents,
            artifact_server,
            operator,
            pushed,
            key,
            kubeconfig,
            rendered,
            bin_dir: options.bin_dir,
            registry,
            cp,
        })
    }

    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The admin kubeconfig, copied to the dev directory (a stable path between runs).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The examples as applied (placeholders filled in).
    pub fn rendered_examples(&self) -> &Path {
        &self.rendered
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    pub fn pushed(&self) -> &[Pushed] {
        &self.pushed
    }

    pub fn operator_log(&self) -> &Path {
        self.operator.log_path()
    }

    /// The last `lines` lines of the operator's log.
    pub fn operator_log_tail(&self, lines: usize) -> String {
        self.operator.log_tail(lines)
    }

    /// The agents' logs (none unless nodes were asked for).
    pub fn agent_logs(&self) -> Vec<&Path> {
        self.agents.iter().map(|(_, a)| a.log_path()).collect()
    }

    /// The nodes that have an agent process.
    pub fn agent_nodes(&self) -> Vec<&str> {
        self.agents.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The operator's process id (benchmarks read its `/proc/<pid>/status`).
    pub fn operator_pid(&self) -> u32 {
        self.operator.pid()
    }

    /// The agents' process ids, by node.
    pub fn agent_pids(&self) -> Vec<(&str, u32)> {
        self.agents
            .iter()
            .map(|(n, a)| (n.as_str(), a.pid()))
            .collect()
    }

    /// The last `lines` lines of `node`'s agent log.
    pub fn agent_log_tail(&self, node: &str, lines: usize) -> String {
        self.agents
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, a)| a.log_tail(lines))
            .unwrap_or_default()
    }

    /// The operator's artifact server (`https://127.0.0.1:<port>`).
    pub fn artifact_server(&self) -> &str {
        &self.artifact_server
    }

    /// Kills `node`'s agent (as a node that dies: no clean shutdown, its Lease just stops
    /// being renewed). Returns whether there was one.
    pub fn kill_agent(&mut self, node: &str) -> bool {
        let Some(i) = self.agents.iter().position(|(n, _)| n == node) else {
            return false;
        };
        let (_, mut agent) = self.agents.remove(i);
        agent.kill();
        true
    }

    /// Fails with the log tail of the operator or an agent if one has exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        self.operator.check_running()?;
        self.agents
            .iter_mut()
            .try_for_each(|(_, a)| a.check_running())
    }

    /// `PATH` with the workspace binaries (`kubectl-wasm`) and the harness tools (`kubectl`)
    /// first: the `export PATH=...` line the dev run prints.
    pub fn path_dirs(&self) -> Result<Vec<PathBuf>, Error> {
        Ok(vec![self.bin_dir.clone(), tools::bin_dir()?.to_path_buf()])
    }

    /// Runs `kubectl ARGS` as a developer following the printed lines would: the dev
    /// kubeconfig, and [`path_dirs`](Self::path_dirs) ahead of `PATH` (so `kubectl wasm`
    /// finds the plugin).
    pub async fn kubectl(&self, args: &[String]) -> Result<Output, Error> {
        let mut path = std::env::join_paths(self.path_dirs()?)
            .map_err(|e| Error::Invalid(format!("building PATH: {e}")))?;
        if let Some(rest) = std::env::var_os("PATH") {
            path.push(":");
            path.push(rest);
        }
        let mut cmd = tokio::process::Command::new(tools::tool_path("kubectl")?);
        cmd.args(args)
            .env("PATH", path)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.cp.dir().join("kubectl-cache"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd.output().await.map_err(Error::io("running kubectl"))
    }

    /// The current status of every example component.
    pub async fn decisions(&self) -> Result<Vec<Observed>, Error> {
        let client = self.cp.client().await?;
        let mut observed = Vec::new();
        for component in EXAMPLE_COMPONENTS {
            observed.push(observe(&client, component).await?);
        }
        Ok(observed)
    }

    /// Waits until every example component shows its expected decision; on timeout the error
    /// lists what each one shows.
    pub async fn wait_for_decisions(&mut self, timeout: Duration) -> Result<Vec<Observed>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let observed = self.decisions().await?;
            if observed.iter().all(Observed::as_expected) {
                return Ok(observed);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "every example component to reach its decision".into(),
                    timeout,
                    last: decision_table(&observed),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `component`'s `Approved` condition has `status` and `reason`.
    pub async fn wait_for_approved(
        &mut self,
        component: &ExampleComponent,
        status: &str,
        reason: &str,
        timeout: Duration,
    ) -> Result<Observed, Error> {
        let client = self.cp.client().await?;
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let observed = observe(&client, component).await?;
            if observed.is(status, reason) {
                return Ok(observed);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} to show Approved={status} ({reason})", component.id()),
                    timeout,
                    last: decision_table(std::slice::from_ref(&observed)),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// One line per component: name, expected decision, what it shows.
pub fn decision_table(observed: &[Observed]) -> String {
    let width = observed
        .iter()
        .map(|o| o.component.id().len())
        .max()
        .unwrap_or(0);
    observed
        .iter()
        .map(|o| {
            let mark = if o.as_expected() { "ok" } else { "--" };
            format!(
                "  {mark} {:<width$}  expected {:<16} shows {}",
                o.component.id(),
                o.component.expected.as_str(),
                o.describe()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_log() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())
}

/// Starts `cmd` with its log in the control plane's log directory and fails with the log
/// tail if it exits right away.
async fn start_watched(cp: &ControlPlane, name: &str, cmd: Command) -> Result<Supervised, Error> {
    let log = cp.dir().join("logs").join(format!("{name}.log"));
    let mut process = Supervised::spawn(name, cmd, &log)?;
    tokio::time::sleep(STARTUP_WATCH).await;
    process.check_running()?;
    tracing::info!(pid = process.pid(), log = %log.display(), "{name} running");
    Ok(process)
}

/// This machine's architecture as Kubernetes names it (`kubernetes.io/arch`).
fn kubernetes_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The address stand-in node `node`'s agent serves HTTP components on, one per node (as each
/// real node has its own pod IP), so agents on one machine can listen on the same port. As
/// root: `10.77.x.y` (from the node's name) added to the loopback interface once and left for
/// later runs; the API server takes it as an EndpointSlice address. Otherwise a
/// loopback address of its own (`127.77.x.y`), which serves but which the API server refuses
/// as an endpoint, so the operator leaves it out of the component's EndpointSlice.
pub fn advertise_address(node: &str) -> std::net::Ipv4Addr {
    // FNV-1a: stable across runs and platforms.
    let hash = node.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let [_, _, x, y] = hash.to_be_bytes();
    let routable = std::net::Ipv4Addr::new(10, 77, x, y.max(1));
    if add_dev_address(routable) {
        routable
    } else {
        std::net::Ipv4Addr::new(127, 77, x, y.max(1))
    }
}

/// Puts `address` on the loopback interface (a /32 outside 127.0.0.0/8: local to the
/// machine, but an address the API server takes); false when that is not allowed (not root)
/// or `ip` is missing.
fn add_dev_address(address: std::net::Ipv4Addr) -> bool {
    let Ok(ip) = tools::find_program("ip") else {
        return false;
    };
    Command::new(&ip)
        .args(["addr", "replace", &format!("{address}/32"), "dev", "lo"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts the agent of stand-in node `node` in node mode: its `Node` object (no kubelet here),
/// a token of the chart's agent ServiceAccount bound to that Node (so the admission policy
/// lets it write only this node's objects), and the operator's artifact server.
pub async fn start_agent(
    cp: &ControlPlane,
    agent_bin: &Path,
    node: &str,
    artifact_server: &str,
    data_dir: &Path,
    extra_args: &[String],
) -> Result<Supervised, Error> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cp.client().await?);
    if nodes.get_opt(node).await?.is_none() {
        // The labels a kubelet puts on its Node (the examples select on kubernetes.io/os).
        cp.create_node(
            node,
            &[
                ("kubernetes.io/hostname", node),
                ("kubernetes.io/os", "linux"),
                ("kubernetes.io/arch", kubernetes_arch()),
            ],
        )
        .await?;
    }
    let kubeconfig = cp
        .node_bound_kubeconfig(PRODUCT_NAMESPACE, AGENT_SERVICE_ACCOUNT, node)
        .await?;
    let mut cmd = Command::new(agent_bin);
    cmd.arg("run")
        .arg("--node-name")
        .arg(node)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--namespace")
        .arg(PRODUCT_NAMESPACE)
        .arg("--artifact-server")
        .arg(artifact_server)
        .arg("--artifact-token-file")
        .arg(kubeconfig.with_extension("token"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra_args)
        .env_remove("KUBECONFIG")
        .env("POD_IP", advertise_address(node).to_string())
        .env("RUST_LOG", rust_log());
    start_watched(cp, &format!("agent-{node}"), cmd).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN PUBLIC KEY-----\nDEV\n-----END PUBLIC KEY-----\n";

    fn docs(text: &str) -> Vec<Value> {
        serde_yaml::Deserializer::from_str(text)
            .map(|d| Value::deserialize(d).unwrap())
            .filter(|v| !v.is_null())
            .collect()
    }

    #[test]
    fn rendering_fills_the_placeholders() {
        let source = "kind: TrustSource\nspec:\n  registries: [{ repository: localhost:5000/platform/** }]\n  keys:\n    - { name: dev-signing-key, publicKey: OLD }\n    - { name: release, publicKey: KEEP }\n";
        let component = "kind: WasmComponent\nspec:\n  artifact: { oci: { reference: localhost:5000/a/b:1, insecure: true } }\n";
        let other_host = "kind: WasmComponent\nspec:\n  artifact: { oci: { reference: registry.example.com/a/b:1 } }\n";
        // (rule, manifest, JSON pointer, value after rendering)
        let rows: &[(&str, &str, &str, Value)] = &[
            (
                "a registry glob names the local registry",
                source,
                "/spec/registries/0/repository",
                "127.0.0.1:40000/platform/**".into(),
            ),
            (
                "the dev key gets the generated public key",
                source,
                "/spec/keys/0/publicKey",
                KEY.into(),
            ),
            (
                "other keys are left alone",
                source,
                "/spec/keys/1/publicKey",
                "KEEP".into(),
            ),
            (
                "an artifact reference names the local registry",
                component,
                "/spec/artifact/oci/reference",
                "127.0.0.1:40000/a/b:1".into(),
            ),
            (
                "other fields are left alone",
                component,
                "/spec/artifact/oci/insecure",
                true.into(),
            ),
            (
                "other registries are left alone",
                other_host,
                "/spec/artifact/oci/reference",
                "registry.example.com/a/b:1".into(),
            ),
        ];
        for (rule, manifest, pointer, want) in rows {
            let rendered = render_manifest(manifest, "127.0.0.1:40000", KEY).unwrap();
            let got = docs(&rendered)[0].pointer(pointer).cloned();
            assert_eq!(got.as_ref(), Some(want), "{rule}:\n{rendered}");
        }
    }

    #[test]
    fn rendering_keeps_every_document_and_drops_empty_ones() {
        let text = "kind: Namespace\nmetadata: { name: a }\n---\n---\nkind: Namespace\nmetadata: { name: b }\n";
        let rendered = render_manifest(text, "r:1", KEY).unwrap();
        let names: Vec<_> = docs(&rendered)
            .iter()
            .map(|d| d["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, [Value::from("a"), Value::from("b")]);
    }

    #[test]
    fn rendering_refuses_broken_yaml() {
        assert!(render_manifest("kind: [unclosed", "r:1", KEY).is_err());
    }

    /// Every example component of the table is in `examples/` with the reference the dev run
    /// pushes to, over plain HTTP; and a TrustSource names the dev key.
    #[test]
    fn the_table_agrees_with_the_example_manifests() {
        let examples = crate::repo_root().join("examples");
        let all: Vec<Value> = yaml_files(&examples)
            .unwrap()
            .iter()
            .flat_map(|p| docs(&std::fs::read_to_string(p).unwrap()))
            .collect();
        for c in EXAMPLE_COMPONENTS {
            let doc = all
                .iter()
                .find(|d| {
                    d["kind"] == "WasmComponent"
                        && d["metadata"]["namespace"] == c.namespace
                        && d["metadata"]["name"] == c.name
                })
                .unwrap_or_else(|| panic!("no WasmComponent {} in examples/", c.id()));
            let oci = &doc["spec"]["artifact"]["oci"];
            assert_eq!(
                oci["reference"],
                format!("{REGISTRY_PLACEHOLDER}/{}", c.repository),
                "{}",
                c.id()
            );
            assert_eq!(
                oci["insecure"],
                true,
                "{}: the dev registry is plain HTTP",
                c.id()
            );
        }
        assert!(
            all.iter().any(|d| d["kind"] == "TrustSource"
                && d["spec"]["keys"]
                    .as_array()
                    .is_some_and(|keys| keys.iter().any(|k| k["name"] == DEV_KEY_NAME))),
            "no TrustSource names the key {DEV_KEY_NAME}"
        );
        let decisions: Vec<Expected> = EXAMPLE_COMPONENTS.iter().map(|c| c.expected).collect();
        for decision in [
            Expected::Trusted,
            Expected::PendingApproval,
            Expected::DevMode,
            Expected::Denied,
        ] {
            assert!(
                decisions.contains(&decision),
                "no example shows {decision:?}"
            );
        }
    }

    #[test]
    fn only_the_variables_cargo_sets_for_a_package_are_dropped() {
        for (name, dropped) in [
            ("CARGO_PKG_NAME", true),
            ("CARGO_PKG_VERSION_MAJOR", true),
            ("CARGO_MANIFEST_DIR", true),
            ("CARGO_PRIMARY_PACKAGE", true),
            ("CARGO", false),
            ("CARGO_HOME", false),
            ("CARGO_TARGET_DIR", false),
            ("CARGO_BUILD_JOBS", false),
            ("RUSTFLAGS", false),
        ] {
            assert_eq!(is_package_env(name), dropped, "{name}");
        }
    }

    #[test]
    fn the_approve_command_names_the_component() {
        let pending = EXAMPLE_COMPONENTS
            .iter()
            .find(|c| c.expected == Expected::PendingApproval)
            .unwrap();
        assert_eq!(
            approve_args(pending)[..3],
            ["wasm", "approve", "wasm-demo/kv-counter"]
        );
    }
}
