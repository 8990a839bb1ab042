//! `kubectl wasm`: kubectl runs this binary as a plugin when `kubectl-wasm` is on PATH.
#![allow(
    clippy::print_stdout,
    reason = "a CLI: its output is the product; the logic lives in the library"
)]

use std::process::ExitCode;

use airssys_crds::trust_source::{Decision, DigestEntry};
use clap::{Parser, Subcommand, ValueEnum};
use kubectl_wasm::{Cluster, Error, entry, report};

const ABOUT: &str = "Approve, deny and explain airssys-wasm components.

A WasmComponent runs only once a TrustSource vouches for its artifact. When none does, the \
operator marks it Approved=False with reason PendingApproval and it waits for a person. This \
plugin lists those components, explains any component's decision, and writes approvals and \
denials as TrustSource digest entries, either directly or as YAML to commit through a pull \
request. It uses the current context of your kubeconfig (KUBECONFIG or ~/.kube/config).";

const EXAMPLES: &str = "Examples:
  kubectl wasm pending -A
  kubectl wasm explain wasm-demo/kv-counter
  kubectl wasm approve wasm-demo/kv-counter --reason 'SEC-1412' --dry-run -o yaml > approval.yaml
  kubectl wasm approve wasm-demo/kv-counter --reason 'SEC-1412'
  kubectl wasm deny wasm-demo/miner --reason 'crypto miner'";

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-wasm",
    bin_name = "kubectl wasm",
    version,
    about = "Approve, deny and explain airssys-wasm components",
    long_about = ABOUT,
    after_help = EXAMPLES
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
    #[arg(value_name = "NAMESPACE/NAME")]
    target: String,
    /// The TrustSource to write the entry into [default: approvals-NAMESPACE for approve,
    /// denied-NAMESPACE for deny]; created when missing.
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Why, recorded in the entry for the audit trail (a ticket, a review link).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Change nothing; print the TrustSource as it would be written (the live one with the
    /// entry merged in), to commit through a pull request.
    #[arg(long)]
    dry_run: bool,
    /// Output format of --dry-run.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    output: Output,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists the components waiting for a person.
    ///
    /// Those with Approved=False and reason PendingApproval or RequestExceedsCeiling, with
    /// their digest and requested capabilities.
    Pending {
        /// Every namespace.
        #[arg(short = 'A', long = "all-namespaces", conflicts_with = "namespace")]
        all_namespaces: bool,
        /// This namespace [default: the current context's].
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Approves a component's digest with exactly the capabilities it requests now.
    ///
    /// Pins its resolved digest in a Trust source, for this component only. A new digest or a
    /// wider request later sends it back to PendingApproval.
    #[command(
        after_help = "Example:\n  kubectl wasm approve wasm-demo/kv-counter --reason 'SEC-1412' --dry-run -o yaml"
    )]
    Approve {
        #[command(flatten)]
        args: WriteArgs,
        /// Who approves, for the audit trail [default: your user name as the API server
        /// authenticates it].
        #[arg(long, value_name = "NAME")]
        approved_by: Option<String>,
    },
    /// Denies a component's digest, for every component running those bytes.
    ///
    /// Pins its resolved digest in a Deny source, which wins over every Trust source.
    #[command(after_help = "Example:\n  kubectl wasm deny wasm-demo/miner --reason 'crypto miner'")]
    Deny {
        #[command(flatten)]
        args: WriteArgs,
    },
    /// Says why a component is or is not approved, and what to do next.
    ///
    /// Shows its trust level, digests, matching sources and conditions as the operator wrote
    /// them.
    Explain {
        /// The component, as NAMESPACE/NAME.
        #[arg(value_name = "NAMESPACE/NAME")]
        target: String,
    },
}

impl Command {
    /// The NAMESPACE/NAME the command acts on, if any.
    fn target(&self) -> Option<&str> {
        match self {
            Self::Approve { args, .. } | Self::Deny { args } => Some(args.target.as_str()),
            Self::Explain { target } => Some(target.as_str()),
            Self::Pending { .. } => None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
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

async fn run(cli: Cli) -> Result<(), Error> {
    // A malformed target fails before the kubeconfig is read.
    if let Some(raw) = cli.command.target() {
        entry::parse_target(raw)?;
    }
    let cluster = Cluster::from_kubeconfig().await?;
    match cli.command {
        Command::Pending {
            all_namespaces,
            namespace,
        } => {
            let ns = if all_namespaces {
                None
            } else {
                Some(namespace.unwrap_or_else(|| cluster.default_namespace().to_owned()))
            };
            let components = cluster.components(ns.as_deref()).await?;
            let rows = report::pending_rows(&components, jiff::Timestamp::now());
            if rows.is_empty() {
                match &ns {
                    Some(ns) => eprintln!("No components wait for approval in namespace {ns}."),
                    None => eprintln!("No components wait for approval."),
                }
            } else {
                print!("{}", report::render_table(&rows));
            }
        }
        Command::Approve { args, approved_by } => {
            let (ns, name) = entry::parse_target(&args.target)?;
            let component = cluster.component(&ns, &name).await?;
            let approved_by = match approved_by {
                Some(who) => who,
                None => cluster.whoami().await?,
            };
            let pin = entry::approval_entry(&component, &approved_by, args.reason.as_deref())?;
            let source = args
                .source
                .clone()
                .unwrap_or_else(|| entry::approvals_source_name(&ns));
            write(&cluster, &args, &source, Decision::Trust, pin, "approved").await?;
        }
        Command::Deny { args } => {
            let (ns, name) = entry::parse_target(&args.target)?;
            let component = cluster.component(&ns, &name).await?;
            let pin = entry::denial_entry(&component, args.reason.as_deref())?;
            let source = args
                .source
                .clone()
                .unwrap_or_else(|| entry::denials_source_name(&ns));
            write(&cluster, &args, &source, Decision::Deny, pin, "denied").await?;
        }
        Command::Explain { target } => {
            let (ns, name) = entry::parse_target(&target)?;
            let component = cluster.component(&ns, &name).await?;
            print!("{}", report::explain(&component));
        }
    }
    Ok(())
}

async fn write(
    cluster: &Cluster,
    args: &WriteArgs,
    source: &str,
    decision: Decision,
    pin: DigestEntry,
    verb: &str,
) -> Result<(), Error> {
    if args.dry_run {
        let Output::Yaml = args.output;
        let planned = cluster.planned_source(source, decision, pin).await?;
        print!("{}", entry::to_yaml(&planned)?);
    } else {
        let digest = pin.digest.clone();
        cluster.write_entry(source, decision, pin).await?;
        println!("{} {verb} {digest} in TrustSource {source}", args.target);
    }
    Ok(())
}
