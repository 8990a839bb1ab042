//! `airssys-dev`: the local run behind `cargo run -p xtask -- dev` (xtask builds the workspace
//! once, then runs this). A real control plane, a local OCI registry with the example
//! components pushed and one signed, the operator, and `examples/` applied; it prints the
//! decision each example reached and the lines to try. Ctrl-C stops everything.
//!
//! It lives in airssys-test-support so it is built in the same build graph as the operator
//! and agent; the logic is `airssys_test_support::dev`, which the end-to-end test drives too.
#![allow(
    clippy::print_stdout,
    reason = "a CLI: what it prints is for the developer"
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use airssys_test_support::dev::{
    self, DevCluster, DevOptions, EXAMPLE_COMPONENTS, Expected, Observed,
};
use airssys_test_support::{Error, tools};
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "airssys-dev",
    about = "Run airssys-wasm locally: control plane, OCI registry, operator, the examples applied"
)]
struct Cli {
    /// Agents to start, one per stand-in node (dev-node-1, ...), each with its Node object;
    /// they run the approved components the operator places on their node.
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// Stop once every example shows its decision (a smoke test; fails if one does not).
    #[arg(long)]
    once: bool,
    /// Keep the control plane's directory (logs, etcd data) after stopping.
    #[arg(long)]
    keep: bool,
    /// State kept between runs: signing key, kubeconfig, rendered examples, agent data.
    /// Default: $AIRSSYS_DEV_DIR, else ~/.cache/airssys-wasm/dev.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// An argument added to `airssys-operator run --dev-mode --insecure-registry <registry>`
    /// (repeat for several).
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// An argument added to each agent's `run --node-name ... --data-dir ...` (repeat).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Seconds to wait for the examples' decisions.
    #[arg(long, default_value_t = 120)]
    decision_timeout: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,kube_client::client::builder=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    tracing::info!(
        "locating the control plane binaries (a first run builds them: tens of minutes)"
    );
    let tools_dir = tokio::task::spawn_blocking(|| tools::bin_dir().map(PathBuf::from))
        .await
        .map_err(|e| Error::Invalid(format!("tool lookup task failed: {e}")))??;
    tracing::info!(bin = %tools_dir.display(), "tools ready");

    let mut options = DevOptions::new()?;
    if let Some(dir) = cli.dir {
        options.dir = dir;
    }
    options.nodes = cli.nodes;
    options.keep = cli.keep;
    options.operator_args = cli.operator_args;
    options.agent_args = cli.agent_args;
    let mut cluster = DevCluster::start(options).await?;

    let timeout = Duration::from_secs(cli.decision_timeout);
    let (observed, all_reached) = match cluster.wait_for_decisions(timeout).await {
        Ok(observed) => (observed, true),
        Err(Error::Timeout { .. }) => (cluster.decisions().await?, false),
        Err(e) => return Err(e),
    };
    print_summary(&cluster, &observed)?;
    if !all_reached {
        tracing::warn!(
            log = %cluster.operator_log().display(),
            "not every example reached its decision within {timeout:?}; see the operator's log"
        );
        if cli.once {
            return Ok(ExitCode::FAILURE);
        }
    }
    if !cli.once {
        wait_for_shutdown().await;
        tracing::info!("stopping");
    }
    drop(cluster);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Quotes a shell word when it needs it.
fn shell_word(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn print_summary(cluster: &DevCluster, observed: &[Observed]) -> Result<(), Error> {
    let cp = cluster.control_plane();
    let path = cluster
        .path_dirs()?
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let kubeconfig = cluster.kubeconfig().display();
    println!();
    println!("airssys-wasm dev cluster is up at {}", cp.server());
    println!("  kubeconfig:  {kubeconfig} (the same path every run)");
    println!(
        "  registry:    {} (plain HTTP; the examples' localhost:5000 stands for it)",
        cluster.registry().address()
    );
    println!(
        "  signing key: {} (its public half is in TrustSource platform-registry)",
        cluster.signing_key().private_key.display()
    );
    println!(
        "  examples:    {} (examples/ as applied)",
        cluster.rendered_examples().display()
    );
    println!("  logs:        {}", cp.dir().join("logs").display());
    let nodes = cluster.agent_nodes();
    if nodes.is_empty() {
        println!("  agents:      none (--nodes 0): approved components are not run");
    } else {
        println!(
            "  agents:      {} (one per stand-in node; logs agent-<node>.log)",
            nodes.join(", ")
        );
    }
    println!();
    println!("Decisions on the examples:");
    println!("{}", dev::decision_table(observed));
    println!();
    println!("Try:");
    println!("  export KUBECONFIG={kubeconfig}");
    println!("  export PATH={path}:$PATH");
    println!("  kubectl get wasmcomponents -A");
    if let Some(node) = nodes.first() {
        println!("  kubectl get placements -A");
        println!("  kubectl get events -n wasm-dev --field-selector reason=CapabilityDenied");
        println!(
            "  grep wasm-dev/scratch {}",
            cp.dir()
                .join("logs")
                .join(format!("agent-{node}.log"))
                .display()
        );
    }
    println!("  kubectl wasm pending -A");
    if let Some(pending) = EXAMPLE_COMPONENTS
        .iter()
        .find(|c| c.expected == Expected::PendingApproval)
    {
        let approve: Vec<String> = dev::approve_args(pending)
            .iter()
            .map(|a| shell_word(a))
            .collect();
        println!("  kubectl wasm explain {}", pending.id());
        println!("  kubectl {}", approve.join(" "));
    }
    println!("Ctrl-C stops everything.");
    Ok(())
}

async fn wait_for_shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); only Ctrl-C stops");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
