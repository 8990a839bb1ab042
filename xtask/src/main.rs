//! Developer tasks. `cargo run -p xtask -- dev` runs the whole system locally: the harness's
//! control plane (etcd, kube-apiserver, kube-controller-manager), the CRDs, the operator and
//! agents as real processes, and `examples/` applied; Ctrl-C stops everything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airssys_test_support::{ControlPlane, ControlPlaneOptions, Supervised, repo_root, tool_path};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Support(#[from] airssys_test_support::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tool lookup task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

#[derive(Debug, Parser)]
#[command(about = "airssys-wasm developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Start a local control plane with the CRDs, the operator, agents and the examples.
    Dev(DevArgs),
}

#[derive(Debug, clap::Args)]
struct DevArgs {
    /// Use target/debug binaries as they are instead of `cargo build`ing them first.
    #[arg(long)]
    no_build: bool,
    /// Number of agents, each standing in for one node (`dev-node-1`, ...).
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// Stop right after everything is up (a smoke test of this command).
    #[arg(long)]
    once: bool,
    /// Keep the control plane's directory (logs, etcd data) after stopping.
    #[arg(long)]
    keep: bool,
    /// An argument for the operator binary (repeat for several). Default: `run --dev-mode`
    /// (a local cluster is a development cluster: DevMode sources may apply).
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// An argument for each agent binary (repeat for several).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

/// How long a just-started binary is watched for an immediate exit.
const STARTUP_WATCH: Duration = Duration::from_millis(1500);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,kube_client::client::builder=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Dev(args) => dev(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dev(args: DevArgs) -> Result<(), Error> {
    tracing::info!("locating the control plane binaries (first run builds them: tens of minutes)");
    let bin_dir = tokio::task::spawn_blocking(airssys_test_support::tools::bin_dir).await??;
    tracing::info!(bin = %bin_dir.display(), "tools ready");

    let cp = ControlPlane::start(ControlPlaneOptions {
        keep_dir: args.keep,
        ..ControlPlaneOptions::default()
    })
    .await?;

    if !args.no_build {
        build_binaries();
    }
    let mut running = Vec::new();
    let operator = target_binary("airssys-operator");
    let operator_args = if args.operator_args.is_empty() {
        vec!["run".to_owned(), "--dev-mode".to_owned()]
    } else {
        args.operator_args.clone()
    };
    if let Some(p) = start_binary(&cp, &operator, "operator", &operator_args, &[]).await? {
        running.push(p);
    }
    let agent = target_binary("airssys-agent");
    for n in 1..=args.nodes {
        let node = format!("dev-node-{n}");
        // No kubelets here: the Node object stands in for the machine the agent runs on.
        if let Err(e) = cp
            .create_node(&node, &[("kubernetes.io/hostname", node.as_str())])
            .await
        {
            tracing::warn!(%node, "creating the Node object failed: {e}");
        }
        let env = [("NODE_NAME", node.as_str())];
        if let Some(p) = start_binary(
            &cp,
            &agent,
            &format!("agent-{node}"),
            &args.agent_args,
            &env,
        )
        .await?
        {
            running.push(p);
        }
    }

    apply_examples(&cp).await?;
    let kubectl = tool_path("kubectl")?;
    print_summary(&cp, &kubectl);

    if !args.once {
        wait_for_shutdown().await;
        tracing::info!("stopping");
    }
    // Operator and agents first, then the control plane they talk to.
    drop(running);
    drop(cp);
    tracing::info!("stopped");
    Ok(())
}

/// Builds the operator and agent; a failure is reported and whatever binaries exist are used.
fn build_binaries() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    tracing::info!("cargo build -p airssys-operator -p airssys-agent");
    let status = Command::new(cargo)
        .args(["build", "-p", "airssys-operator", "-p", "airssys-agent"])
        .current_dir(repo_root())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::warn!("building the operator and agent failed ({s}); using what exists"),
        Err(e) => tracing::warn!("could not run cargo: {e}; using what exists"),
    }
}

/// `<target dir>/debug/<name>`, honouring `CARGO_TARGET_DIR` like cargo does.
fn target_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join(name)
}

/// Starts `binary` with the admin kubeconfig if it exists. A binary that exits right away
/// (today's placeholders do) is logged and tolerated.
async fn start_binary(
    cp: &ControlPlane,
    binary: &Path,
    name: &str,
    args: &[String],
    env: &[(&str, &str)],
) -> Result<Option<Supervised>, Error> {
    if !binary.is_file() {
        tracing::warn!(binary = %binary.display(), "not built; not starting {name}");
        return Ok(None);
    }
    let mut cmd = Command::new(binary);
    cmd.args(args).env("KUBECONFIG", cp.kubeconfig_path()).env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = cp.dir().join("logs").join(format!("{name}.log"));
    let mut process = Supervised::spawn(name, cmd, &log)?;
    tokio::time::sleep(STARTUP_WATCH).await;
    match process.exited() {
        Some(status) => {
            tracing::warn!(
                %status,
                log = %log.display(),
                "{name} exited immediately; continuing without it. Last lines:\n{}",
                process.log_tail(10)
            );
            Ok(None)
        }
        None => {
            tracing::info!(pid = process.pid(), log = %log.display(), "{name} running");
            Ok(Some(process))
        }
    }
}

async fn apply_examples(cp: &ControlPlane) -> Result<(), Error> {
    let examples = repo_root().join("examples");
    let has_yaml = std::fs::read_dir(&examples)
        .map_err(|source| Error::Io {
            what: format!("reading {}", examples.display()),
            source,
        })?
        .filter_map(Result::ok)
        .any(|e| e.path().extension().is_some_and(|x| x == "yaml"));
    if !has_yaml {
        tracing::warn!(dir = %examples.display(), "no example manifests to apply");
        return Ok(());
    }
    let out = cp
        .kubectl([OsStrArg::from("apply"), "-f".into(), examples.into()])
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        tracing::info!("kubectl apply -f examples/:\n{}", stdout.trim_end());
    } else {
        tracing::warn!("kubectl apply -f examples/ failed:\n{stdout}{stderr}");
    }
    Ok(())
}

type OsStrArg = std::ffi::OsString;

#[allow(
    clippy::print_stdout,
    reason = "the command's output for the developer"
)]
fn print_summary(cp: &ControlPlane, kubectl: &Path) {
    let kubeconfig = cp.kubeconfig_path().display();
    println!();
    println!("airssys-wasm dev cluster is up at {}", cp.server());
    println!("  kubeconfig: {kubeconfig}");
    println!("  logs:       {}", cp.dir().join("logs").display());
    println!(
        "  try:        KUBECONFIG={kubeconfig} {} get wasmcomponents -A",
        kubectl.display()
    );
    println!("Ctrl-C stops everything.");
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
