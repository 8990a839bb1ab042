//! `kubectl wasm`: list components waiting for approval, approve or deny them (directly or as
//! a TrustSource manifest for a GitOps pull request), and explain a component's decision.
//! kubectl finds this binary as a plugin when `kubectl-wasm` is on PATH.
#![allow(
    clippy::print_stdout,
    reason = "a CLI: its output is the product; logic lives in airssys_operator::plugin"
)]

use std::process::ExitCode;

use airssys_crds::trust_source::Decision;
use airssys_operator::plugin::{self, PluginError};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-wasm",
    bin_name = "kubectl wasm",
    version,
    about = "Approve, deny and explain airssys-wasm components"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Yaml,
}

#[derive(Debug, clap::Args)]
struct WriteArgs {
    /// The component, as NAMESPACE/NAME.
    target: String,
    /// The TrustSource to write to.
    #[arg(long)]
    source: Option<String>,
    /// Why, recorded in the entry for the audit trail.
    #[arg(long)]
    reason: Option<String>,
    /// Print the TrustSource that would be written and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format of --dry-run.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    output: Output,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Components waiting for a person (PendingApproval or RequestExceedsCeiling).
    Pending {
        /// Every namespace.
        #[arg(short = 'A', long = "all-namespaces", conflicts_with = "namespace")]
        all_namespaces: bool,
        /// This namespace (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Approves a component's resolved digest with exactly the capabilities it requests.
    Approve {
        #[command(flatten)]
        args: WriteArgs,
        /// Who approves (default: your user name as the API server knows it).
        #[arg(long)]
        approved_by: Option<String>,
    },
    /// Denies a component's resolved digest.
    Deny {
        #[command(flatten)]
        args: WriteArgs,
    },
    /// Says why a component is or is not approved, and how to approve it.
    Explain {
        /// The component, as NAMESPACE/NAME.
        target: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), PluginError> {
    let client = kube::Client::try_default().await?;
    match cli.command {
        Command::Pending {
            all_namespaces,
            namespace,
        } => {
            let ns = if all_namespaces {
                None
            } else {
                Some(namespace.unwrap_or_else(|| client.default_namespace().to_owned()))
            };
            let components = plugin::list_components(&client, ns.as_deref()).await?;
            let rows = plugin::pending_rows(&components, jiff::Timestamp::now());
            if rows.is_empty() {
                eprintln!("No components wait for approval.");
            } else {
                print!("{}", plugin::render_table(&rows));
            }
        }
        Command::Approve { args, approved_by } => {
            let (ns, name) = plugin::parse_target(&args.target)?;
            let component = plugin::get_component(&client, &ns, &name).await?;
            let approved_by = match approved_by {
                Some(who) => who,
                None => plugin::whoami(&client).await?,
            };
            let entry = plugin::approval_entry(&component, &approved_by, args.reason.as_deref())?;
            let source = args
                .source
                .clone()
                .unwrap_or_else(|| plugin::approvals_source_name(&ns));
            write(&client, &args, &source, Decision::Trust, entry, "approved").await?;
        }
        Command::Deny { args } => {
            let (ns, name) = plugin::parse_target(&args.target)?;
            let component = plugin::get_component(&client, &ns, &name).await?;
            let denied_by = plugin::whoami(&client).await.ok();
            let entry =
                plugin::denial_entry(&component, denied_by.as_deref(), args.reason.as_deref())?;
            let source = args
                .source
                .clone()
                .unwrap_or_else(|| plugin::denials_source_name(&ns));
            write(&client, &args, &source, Decision::Deny, entry, "denied").await?;
        }
        Command::Explain { target } => {
            let (ns, name) = plugin::parse_target(&target)?;
            let component = plugin::get_component(&client, &ns, &name).await?;
            print!("{}", plugin::explain(&component));
        }
    }
    Ok(())
}

async fn write(
    client: &kube::Client,
    args: &WriteArgs,
    source: &str,
    decision: Decision,
    entry: airssys_crds::trust_source::DigestEntry,
    verb: &str,
) -> Result<(), PluginError> {
    if args.dry_run {
        let Output::Yaml = args.output;
        let planned = plugin::planned_source(client, source, decision, entry).await?;
        print!("{}", plugin::to_yaml(&planned)?);
    } else {
        let digest = entry.digest.clone();
        plugin::write_entry(client, source, decision, entry).await?;
        println!("{} {verb} {digest} in TrustSource {source}", args.target);
    }
    Ok(())
}
