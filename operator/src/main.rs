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
use airssys_operator::leader::{self, Timing};
use airssys_operator::metrics::{Metrics, Readiness};
use airssys_operator::{Applied, Config, Resolver, TrustIndex, controller};
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
    /// Validates the TrustSources in YAML files as the operator would, keys and certificates
    /// included; other kinds in the same files are skipped. Exits 1 if any source would be
    /// rejected.
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
    /// Serve Prometheus metrics at /metrics, a liveness probe at /healthz and a readiness
    /// probe at /readyz (ready while the controllers run), e.g. 0.0.0.0:8080.
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
    /// The product's namespace: agents' Leases are read there, the leader Lease is held
    /// there, and the artifact server keeps its CA there.
    #[arg(long, env = "AIRSSYS_NAMESPACE", default_value = airssys_crds::agent::DEFAULT_NAMESPACE)]
    namespace: String,
    /// The ports (`FIRST-LAST`) the agents serve HTTP components on, one per component in
    /// the cluster; the components' Services forward to them.
    #[arg(long, env = "AIRSSYS_HTTP_PORT_RANGE", default_value = "20000-29999", value_parser = airssys_operator::http::parse_port_range)]
    http_port_range: std::ops::RangeInclusive<u16>,
    /// Elect a leader among the operator replicas (Lease `airssys-operator-leader`): only the
    /// leader runs the controllers; the others stand by (and serve artifacts). A leader that
    /// loses its Lease exits.
    #[arg(long, env = "AIRSSYS_LEADER_ELECT")]
    leader_elect: bool,
    #[command(flatten)]
    artifact: airssys_operator::artifact::serve::ArtifactServerArgs,
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
        namespace: args.namespace,
        http_ports: args.http_port_range,
    };
    tracing::info!(?config, "starting the operator");
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let server = match args.metrics_addr {
        Some(addr) => {
            let (bound, serving) =
                airssys_operator::metrics::serve(addr, metrics.clone(), readiness.clone()).await?;
            tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    // Blobs for the agents, on every replica (leader or not).
    let artifact_server = match args.artifact.options(&config.namespace)? {
        Some(options) => {
            let started = airssys_operator::artifact::serve::start(
                client.clone(),
                resolver.clone(),
                config.clone(),
                options,
            )
            .await?;
            Some(tokio::spawn(started.serving))
        }
        None => None,
    };
    let elector = args.leader_elect.then(|| {
        leader::Elector::new(
            client.clone(),
            &config.namespace,
            leader::identity(),
            Timing::default(),
        )
    });
    // A standby serves artifacts and stands ready to take over, so it is ready too: the
    // artifact Service must reach it, and a rolling update must not wait forever on new
    // replicas that stand by behind the old leader. Without election: ready while the
    // controllers run. (Not yet "their first list is done": that is known inside
    // controller::run only.)
    if elector.is_some() {
        readiness.set(true);
    }
    let standby_readiness = readiness.clone();
    let work = move || async move {
        readiness.set(true);
        let result = controller::run(client, resolver, config, metrics).await;
        readiness.set(false);
        result
    };
    let result = match elector {
        Some(elector) => leader::run_elected(elector, controller::shutdown_signal(), work).await,
        None => work().await,
    };
    standby_readiness.set(false);
    for task in [server, artifact_server].into_iter().flatten() {
        task.abort();
    }
    Ok(result?)
}

/// What one YAML document of a `check-sources` file holds.
#[derive(Debug)]
enum Document {
    Source(Box<TrustSource>),
    /// Another kind (a Namespace, a WasmComponent next to its approval): not ours to check.
    Other,
    /// Not a TrustSource we can read, with why.
    Invalid(String),
}

/// The documents of a multi-document YAML file, `kind: List` items included.
fn documents(text: &str) -> Vec<Document> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_yaml::Value::deserialize(doc) {
            Ok(value) => classify(value, i + 1, &mut out),
            Err(e) => out.push(Document::Invalid(format!(
                "document {}: not YAML: {e}",
                i + 1
            ))),
        }
    }
    out
}

fn classify(value: serde_yaml::Value, number: usize, out: &mut Vec<Document>) {
    if value.is_null() {
        // An empty document (a trailing `---`).
        return;
    }
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(serde_yaml::Value::as_str)
        .map_or_else(|| format!("document {number}"), str::to_owned);
    let kind = value
        .get("kind")
        .and_then(serde_yaml::Value::as_str)
        .map(str::to_owned);
    match kind.as_deref() {
        Some("TrustSource") => match TrustSource::deserialize(value) {
            Ok(source) => out.push(Document::Source(Box::new(source))),
            Err(e) => out.push(Document::Invalid(format!(
                "{name}: not a valid TrustSource: {e}"
            ))),
        },
        Some("List") => {
            let items = value
                .get("items")
                .and_then(serde_yaml::Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            for item in items {
                classify(item, number, out);
            }
        }
        Some(_) => out.push(Document::Other),
        None => out.push(Document::Invalid(format!(
            "{name}: has no `kind`, so it is not a Kubernetes manifest; add `kind: TrustSource` \
             if it is meant to be one"
        ))),
    }
}

/// Checks every TrustSource in `files` as the operator would accept or reject it; documents of
/// other kinds are skipped. Fails if any source would be rejected or cannot be read.
fn check_sources(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    let mut index = TrustIndex::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", file.display());
                ok = false;
                continue;
            }
        };
        let mut sources = 0;
        for document in documents(&text) {
            match document {
                Document::Source(source) => {
                    sources += 1;
                    let name = source.metadata.name.clone().unwrap_or_default();
                    let applied = index.apply(&source);
                    ok &= applied == Applied::Accepted;
                    #[allow(clippy::print_stdout, reason = "the command's output")]
                    {
                        println!("{}: {name}: {}", file.display(), applied.message());
                    }
                }
                Document::Other => {}
                Document::Invalid(why) => {
                    sources += 1;
                    ok = false;
                    eprintln!("{}: {why}", file.display());
                }
            }
        }
        if sources == 0 {
            eprintln!("{}: holds no TrustSource; nothing checked", file.display());
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::{Document, documents};

    fn kinds(text: &str) -> Vec<String> {
        documents(text)
            .into_iter()
            .map(|d| match d {
                Document::Source(s) => format!("source {}", s.metadata.name.unwrap_or_default()),
                Document::Other => "other".to_owned(),
                Document::Invalid(why) => format!("invalid {why}"),
            })
            .collect()
    }

    const SOURCE: &str = "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata: { name: s }\nspec: { decision: Deny, digests: [{ digest: 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' }] }\n";

    #[test]
    fn documents_of_other_kinds_are_skipped_and_every_source_is_read() {
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: n }}\n---\n{SOURCE}---\n\
             apiVersion: v1\nkind: List\nitems:\n  - {{ apiVersion: v1, kind: ConfigMap, metadata: {{ name: c }} }}\n  - apiVersion: wasm.airssys.dev/v1alpha1\n    kind: TrustSource\n    metadata: {{ name: in-list }}\n    spec: {{ decision: Frobnicate }}\n---\n"
        );
        let got = kinds(&text);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], "other");
        assert_eq!(got[1], "source s");
        assert_eq!(got[2], "other");
        assert!(
            got[3].starts_with("invalid in-list: not a valid TrustSource"),
            "{got:?}"
        );
    }

    #[test]
    fn a_document_without_a_kind_is_not_skipped_silently() {
        let got = kinds("metadata: { name: typo }\nknd: TrustSource\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("invalid typo: has no `kind`"), "{got:?}");
    }
}
