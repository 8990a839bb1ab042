//! airssys-operator entry point: `run` starts the controllers (and the metrics endpoint);
//! `check-sources` checks `TrustSource` manifests offline, the way the operator will accept or
//! reject them (useful in a GitOps pipeline before merging an approval).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use airssys_crds::TrustSource;
use airssys_operator::artifact::ResolverOptions;
use airssys_operator::metrics::Metrics;
use airssys_operator::{Applied, Config, Resolver, TrustIndex};
use clap::{Parser, Subcommand};
use serde::Deserialize as _;

#[derive(Debug, Parser)]
#[command(
    name = "airssys-operator",
    version,
    about = "The airssys-wasm operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validates TrustSource manifests (multi-document YAML) as the operator would, keys and
    /// certificates included. Exits 1 if any source would be rejected.
    CheckSources { files: Vec<PathBuf> },
    /// Runs the controllers against the cluster of the current kubeconfig (or the in-cluster
    /// service account) until SIGTERM or Ctrl-C.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Let `DevMode` TrustSources approve components (never in production).
    #[arg(long, env = "AIRSSYS_DEV_MODE")]
    dev_mode: bool,
    /// Serve Prometheus metrics at /metrics and a liveness probe at /healthz.
    #[arg(long, env = "AIRSSYS_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// A registry (`host` or `host:port`) that components may reach over plain HTTP with
    /// `insecure: true`; repeat or separate with commas. For loopback registries only.
    #[arg(
        long = "insecure-registry",
        env = "AIRSSYS_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Seconds between re-resolving a component's reference (a tag can move).
    #[arg(long, env = "AIRSSYS_RECHECK_SECONDS", default_value_t = 300)]
    recheck_seconds: u64,
    /// Deny OCI artifacts from registries that no Trust or DevMode TrustSource names
    /// (allow-list mode; a name-based Deny alone cannot stop another DNS name of a registry).
    #[arg(long, env = "AIRSSYS_REQUIRE_LISTED_REGISTRY")]
    require_listed_registry: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match cli.command {
        Command::CheckSources { files } => {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            check_sources(&files)
        }
        Command::Run(args) => {
            // Structured logs for the cluster's log pipeline.
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the async runtime");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(run(args));
            // Abandoned reconciles are cancelled, not awaited.
            runtime.shutdown_timeout(Duration::from_secs(2));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "operator failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let resolver = Resolver::new(ResolverOptions::default())?;
    let config = Config {
        dev_mode: args.dev_mode,
        insecure_registries: args.insecure_registries,
        recheck: Duration::from_secs(args.recheck_seconds.max(1)),
        require_listed_registry: args.require_listed_registry,
    };
    tracing::info!(?config, "starting the operator");
    let metrics = Arc::new(Metrics::default());
    let server = match args.metrics_addr {
        Some(addr) => {
            let (bound, serving) = airssys_operator::metrics::serve(addr, metrics.clone()).await?;
            tracing::info!(%bound, "serving /metrics and /healthz");
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    let result = airssys_operator::controller::run(client, resolver, config, metrics).await;
    if let Some(server) = server {
        server.abort();
    }
    Ok(result?)
}

fn check_sources(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    let mut index = TrustIndex::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ok = false;
                continue;
            }
        };
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let source = match TrustSource::deserialize(doc) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{}: not a TrustSource: {e}", file.display());
                    ok = false;
                    continue;
                }
            };
            let name = source.metadata.name.clone().unwrap_or_default();
            let applied = index.apply(&source);
            ok &= applied == Applied::Accepted;
            #[allow(clippy::print_stdout, reason = "the command's output")]
            {
                println!("{}: {name}: {}", file.display(), applied.message());
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
