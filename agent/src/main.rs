//! `airssys-agent`: the node agent.
//!
//! `airssys-agent run` runs in one of two modes:
//! - node mode (`--node-name NAME`, or `$NODE_NAME` as a DaemonSet sets it): the agent of one
//!   cluster node. It keeps its Lease, runs the Placements the operator writes for the node
//!   and reports their status (`airssys_agent::node`).
//! - local mode (`--manifest FILE`): runs the components of a local manifest until
//!   interrupted. `--request NS/NAME=PAYLOAD` sends requests once they run, prints each reply
//!   and exits: handy for trying a component, and what the CLI test drives.
#![allow(clippy::print_stdout)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use airssys_agent::audit::{AuditConfig, Auditor, Rotation};
use airssys_agent::engine::{AgentEngine, EngineConfig};
use airssys_agent::id::ComponentId;
use airssys_agent::manifest::Manifest;
use airssys_agent::metrics::Metrics;
use airssys_agent::restart::RestartPolicy;
use airssys_agent::serve::{self, Readiness};
use airssys_agent::storage::KvStore;
use airssys_agent::supervisor::Supervisor;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "airssys-agent",
    version,
    about = "Runs WebAssembly components as secured actors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run components: this node's Placements (node mode: --node-name or $NODE_NAME), or
    /// the components of a local manifest (local mode: --manifest).
    Run {
        /// Local mode: run the components of this manifest (YAML: a list of components, each
        /// with name, wasm file, capabilities, limits; see "Run it locally" in
        /// docs/writing-a-component.md) instead of this node's Placements. $NODE_NAME then
        /// only names the node in audit records.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Node-local state: database, component directories, audit log.
        #[arg(
            long,
            env = "AIRSSYS_DATA_DIR",
            default_value = "/var/lib/airssys-agent"
        )]
        data_dir: PathBuf,
        /// Compiled-component cache (only the agent may write it).
        #[arg(long, env = "AIRSSYS_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// Local mode: send `NAMESPACE/NAME=PAYLOAD` once running, print the reply, exit after all.
        #[arg(long, requires = "manifest")]
        request: Vec<String>,
        /// Timeout for each `--request`.
        #[arg(long, default_value_t = 10_000)]
        request_timeout_ms: u64,
        /// Rotate `audit.jsonl` before it grows past this many bytes.
        #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1..))]
        audit_max_bytes: u64,
        /// Audit files kept, the live one included; 0 turns rotation off (the file grows
        /// without bound).
        #[arg(long, default_value_t = 5)]
        audit_max_files: usize,
        /// Serve `/metrics`, `/healthz` and `/readyz` here (e.g. `0.0.0.0:9090`).
        #[arg(long, env = "AIRSSYS_METRICS_ADDR")]
        metrics_addr: Option<SocketAddr>,
        /// The address HTTP components are served on: node mode listens on it at each
        /// Placement's targetPort and announces it on the Lease; local mode at each
        /// component's http.port. Default: the pod IP ($POD_IP), else 127.0.0.1.
        #[arg(long, env = "POD_IP", default_value = "127.0.0.1")]
        advertise_address: IpAddr,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// The flags of node mode.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Node mode")]
struct NodeArgs {
    /// The node this agent runs on: it runs the Placements whose spec.nodeName is this name,
    /// and holds the Lease `airssys-agent-<NAME>`.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Kubeconfig file. Without it: $KUBECONFIG, ~/.kube/config, then the in-cluster
    /// service account.
    #[arg(long, conflicts_with = "manifest")]
    kubeconfig: Option<PathBuf>,
    /// The product's namespace, where the agent's Lease lives.
    #[arg(long, env = "AIRSSYS_NAMESPACE", default_value = airssys_crds::agent::DEFAULT_NAMESPACE)]
    namespace: String,
    /// The operator's artifact server (https://HOST:PORT), where the agent fetches the
    /// verified bytes of its Placements' digests.
    #[arg(long, env = "AIRSSYS_ARTIFACT_SERVER")]
    artifact_server: Option<String>,
    /// The name the artifact server's certificate must carry. Default: the host of
    /// --artifact-server. For a server reached by address (e.g. the Service's ClusterIP from
    /// kubelet's `<SERVICE>_SERVICE_HOST`, where pods have no cluster DNS).
    #[arg(
        long,
        env = "AIRSSYS_ARTIFACT_SERVER_NAME",
        conflicts_with = "manifest"
    )]
    artifact_server_name: Option<String>,
    /// The artifact server's CA certificate (PEM). Default: read from the ConfigMap
    /// `airssys-artifact-ca` in --namespace, which the operator publishes.
    #[arg(long, env = "AIRSSYS_ARTIFACT_CA", conflicts_with = "manifest")]
    artifact_ca: Option<PathBuf>,
    /// The ServiceAccount token the agent shows the artifact server. Default: the pod's
    /// mounted token (/var/run/secrets/kubernetes.io/serviceaccount/token).
    #[arg(long, env = "AIRSSYS_ARTIFACT_TOKEN_FILE", conflicts_with = "manifest")]
    artifact_token_file: Option<PathBuf>,
    /// Memory the agent offers components, announced on its Lease (e.g. 8Gi). Default: the
    /// node's MemTotal (/proc/meminfo), or 4Gi when that cannot be read.
    #[arg(long, conflicts_with = "manifest", value_parser = parse_bytes)]
    memory_capacity: Option<u64>,
}

fn parse_bytes(raw: &str) -> Result<u64, String> {
    airssys_crds::limits::parse_quantity(raw)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{raw:?} is not a byte quantity such as 512Mi or 8Gi"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    airssys_agent::host::resources::raise_fd_limit();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("airssys-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Command::Run {
        manifest,
        node,
        data_dir,
        cache_dir,
        request,
        request_timeout_ms,
        audit_max_bytes,
        audit_max_files,
        metrics_addr,
        advertise_address,
    } = cli.command;
    let Some(manifest) = manifest else {
        return run_node(
            node,
            data_dir,
            cache_dir,
            audit_max_bytes,
            audit_max_files,
            metrics_addr,
            advertise_address,
        )
        .await;
    };
    let loaded = Manifest::load(&manifest)?;
    let base = manifest
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let specs = loaded.specs(&base, &manifest, advertise_address)?;

    create_data_dir(&data_dir)?;
    let cache_dir = cache_dir.unwrap_or_else(|| data_dir.join("cache"));
    let engine = AgentEngine::new(EngineConfig::new(cache_dir))?;
    let storage = Arc::new(KvStore::open(data_dir.join("kv.redb"))?);
    let metrics = Arc::new(Metrics::new());
    // Ready once the manifest's components run.
    let readiness = Readiness::default();
    if let Some(addr) = metrics_addr {
        serve::spawn(addr, metrics.clone(), readiness.clone()).await?;
    }
    let mut audit_config = AuditConfig::new(node_name(), &metrics.audit);
    audit_config.log_path = Some(data_dir.join("audit.jsonl"));
    audit_config.rotation = (audit_max_files > 0).then_some(Rotation {
        max_bytes: audit_max_bytes,
        max_files: audit_max_files,
    });
    let (audit, auditor) = Auditor::start(audit_config)?;
    let supervisor = Supervisor::new(
        engine,
        storage,
        audit,
        data_dir.join("fs"),
        RestartPolicy::default(),
    );
    for spec in specs {
        let id = spec.id.clone();
        let source = supervisor.add(spec).await?;
        tracing::info!(component = %id, ?source, "running");
    }
    readiness.set(true);

    let mut failed = false;
    if !request.is_empty() {
        for r in &request {
            let Some((target, payload)) = r.split_once('=') else {
                anyhow::bail!("--request {r:?}: expected NAMESPACE/NAME=PAYLOAD");
            };
            let Some((ns, name)) = target.split_once('/') else {
                anyhow::bail!("--request {r:?}: expected NAMESPACE/NAME=PAYLOAD");
            };
            let id = ComponentId::new(ns, name);
            match supervisor
                .request(
                    &id,
                    payload.as_bytes().to_vec(),
                    Duration::from_millis(request_timeout_ms),
                )
                .await
            {
                Ok(reply) => println!("{id}: {}", String::from_utf8_lossy(&reply)),
                Err(e) => {
                    failed = true;
                    println!("{id}: error: {e}");
                }
            }
        }
    } else {
        tokio::signal::ctrl_c().await?;
        tracing::info!("interrupted; stopping components");
    }
    readiness.set(false);
    supervisor.shutdown().await;
    auditor.shutdown();
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Node mode: the agent of node `--node-name`, until SIGTERM or Ctrl-C.
async fn run_node(
    args: NodeArgs,
    data_dir: PathBuf,
    cache_dir: Option<PathBuf>,
    audit_max_bytes: u64,
    audit_max_files: usize,
    metrics_addr: Option<SocketAddr>,
    advertise_address: IpAddr,
) -> anyhow::Result<ExitCode> {
    use airssys_agent::audit::EventPublisher;
    use airssys_agent::fetch::{ArtifactClient, ArtifactClientConfig};
    use airssys_agent::node::{self, NodeConfig};
    use airssys_crds::agent::AgentCapacity;

    let Some(node_name) = args.node_name.filter(|n| !n.trim().is_empty()) else {
        anyhow::bail!(
            "nothing to run: give --node-name NAME (or set NODE_NAME) to run this node's \
             Placements, or --manifest FILE to run a local manifest"
        );
    };
    let Some(artifact_server) = args.artifact_server else {
        anyhow::bail!(
            "node mode needs --artifact-server URL (or AIRSSYS_ARTIFACT_SERVER): the \
             operator's artifact server, where the agent fetches its components' bytes"
        );
    };
    let client = kube_client(args.kubeconfig.as_deref()).await?;

    // Live (not ready) from here on: waiting below for the operator's CA is no reason for a
    // liveness probe to restart the agent.
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    if let Some(addr) = metrics_addr {
        serve::spawn(addr, metrics.clone(), readiness.clone()).await?;
    }
    create_data_dir(&data_dir)?;
    let cache_dir = cache_dir.unwrap_or_else(|| data_dir.join("cache"));
    let mut fetch_config = ArtifactClientConfig::new(&artifact_server, &cache_dir);
    fetch_config.server_name = args.artifact_server_name;
    if let Some(token_file) = args.artifact_token_file {
        fetch_config.token_file = token_file;
    }
    let source = Arc::new(match &args.artifact_ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read --artifact-ca {}: {e}", path.display())
            })?;
            ArtifactClient::from_pem(fetch_config, &pem)?
        }
        // The operator publishes its CA when it starts: wait for it rather than fail.
        None => {
            let mut delay = Duration::from_millis(500);
            loop {
                match ArtifactClient::from_config_map(
                    fetch_config.clone(),
                    client.clone(),
                    &args.namespace,
                )
                .await
                {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "waiting for the artifact server's CA");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
    });

    let engine = AgentEngine::new(EngineConfig::new(cache_dir))?;
    let capacity = AgentCapacity {
        instances: engine.config().total_component_instances,
        memory_bytes: args.memory_capacity.unwrap_or_else(node_memory),
    };
    let storage = Arc::new(KvStore::open(data_dir.join("kv.redb"))?);
    let mut audit_config = AuditConfig::new(node_name.clone(), &metrics.audit);
    audit_config.log_path = Some(data_dir.join("audit.jsonl"));
    audit_config.rotation = (audit_max_files > 0).then_some(Rotation {
        max_bytes: audit_max_bytes,
        max_files: audit_max_files,
    });
    // Audit records become Events on the components (rate-limited, folded into series).
    let (events, publisher) = EventPublisher::start(client.clone(), &node_name, &metrics.audit);
    audit_config.events = Some(Box::new(events));
    let (audit, auditor) = Auditor::start(audit_config)?;
    let supervisor = Arc::new(Supervisor::new(
        engine,
        storage,
        audit,
        data_dir.join("fs"),
        RestartPolicy::default(),
    ));
    let mut config = NodeConfig::new(node_name, args.namespace, capacity);
    config.advertise_address = advertise_address;
    readiness.set(true);
    let result = node::run(client, config, supervisor.clone(), source, terminated()).await;
    readiness.set(false);
    supervisor.shutdown().await;
    auditor.shutdown();
    // The last Events (Stopped) go out before the process ends, within a bound.
    if tokio::time::timeout(Duration::from_secs(5), publisher)
        .await
        .is_err()
    {
        tracing::warn!("publishing the last Events timed out");
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Creates the agent's data directory, saying which flag moves it when that fails (the default
/// is under /var/lib, which a non-root user cannot create).
fn create_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the data directory {}: {e}. Give another with --data-dir DIR (or \
             AIRSSYS_DATA_DIR)",
            dir.display()
        )
    })
}

/// A client from `--kubeconfig`, else the usual places ($KUBECONFIG, ~/.kube/config, the
/// in-cluster service account).
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("cannot read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
}

/// The node's memory (MemTotal of /proc/meminfo), or 4 GiB when it cannot be read.
fn node_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|kb| kb.trim().parse::<u64>().ok())
        })
        .map_or(4 << 30, |kb| kb * 1024)
}

/// This node's name for audit lines: `NODE_NAME` (set by the DaemonSet), else the host name.
fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "local".to_string())
}
