//! `airssys-agent`: the node agent.
//!
//! `airssys-agent run --manifest FILE` runs the components of a local manifest until
//! interrupted (the cluster mode, watching this node's Placements, comes with the node
//! module). `--request NS/NAME=PAYLOAD` sends requests once the components run, prints each
//! reply and exits: handy for trying a component, and what the CLI test drives.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
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
    /// Run the components of a local manifest.
    Run {
        /// The manifest (YAML; see `airssys_agent::manifest`).
        #[arg(long)]
        manifest: PathBuf,
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
        /// Send `NAMESPACE/NAME=PAYLOAD` once running, print the reply, exit after all.
        #[arg(long)]
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
    },
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
        data_dir,
        cache_dir,
        request,
        request_timeout_ms,
        audit_max_bytes,
        audit_max_files,
        metrics_addr,
    } = cli.command;
    let loaded = Manifest::load(&manifest)?;
    let base = manifest
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let specs = loaded.specs(&base, &manifest)?;

    std::fs::create_dir_all(&data_dir)?;
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

/// This node's name for audit lines: `NODE_NAME` (set by the DaemonSet), else the host name.
fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "local".to_string())
}
