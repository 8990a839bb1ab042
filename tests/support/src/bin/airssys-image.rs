//! `airssys-image`: builds the OCI image of one binary without a container engine, reproducibly,
//! and pushes it or writes it as an OCI layout (`cargo run -p xtask -- image` builds the
//! workspace, then runs this). What goes in the image is documented in
//! `airssys_test_support::image`.
//!
//! It lives in airssys-test-support, like airssys-dev, so it is built in the same build graph
//! as the binaries it packs (oci-client is already compiled for the operator).
#![allow(
    clippy::print_stdout,
    reason = "a CLI: the digest it prints is its output"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use airssys_test_support::image::{self, ImageSpec, PushOptions};
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "airssys-image",
    about = "Build the OCI image of a binary (the binary plus the shared libraries ldd lists and the CA bundle), reproducibly"
)]
struct Cli {
    /// The binary to pack.
    #[arg(long)]
    binary: PathBuf,
    /// Its name in the image (/usr/local/bin/NAME) and the title label [default: the file name].
    #[arg(long)]
    name: Option<String>,
    /// The version label.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    version: String,
    /// The revision label [default: `git rev-parse HEAD` of the working directory].
    #[arg(long)]
    revision: Option<String>,
    /// The source label.
    #[arg(long, default_value = env!("CARGO_PKG_REPOSITORY"))]
    source: String,
    /// The licenses label (SPDX).
    #[arg(long, default_value = env!("CARGO_PKG_LICENSE"))]
    licenses: String,
    /// Creation time, seconds since the epoch, also every mtime in the layer [default:
    /// $SOURCE_DATE_EPOCH, else the time of the HEAD commit, else 0].
    #[arg(long)]
    created: Option<i64>,
    /// Write the image as an OCI image layout into this directory.
    #[arg(long)]
    oci_layout: Option<PathBuf>,
    /// Push to this reference (REGISTRY/REPOSITORY:TAG). Credentials, if the registry wants
    /// them: $AIRSSYS_REGISTRY_USERNAME and $AIRSSYS_REGISTRY_PASSWORD.
    #[arg(long)]
    push: Option<String>,
    /// Talk plain HTTP to the registry (a loopback test registry only).
    #[arg(long)]
    plain_http: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airssys-image: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), airssys_test_support::Error> {
    let name = match cli.name {
        Some(name) => name,
        None => cli
            .binary
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                airssys_test_support::Error::Invalid(format!(
                    "{} has no file name; give --name",
                    cli.binary.display()
                ))
            })?,
    };
    let spec = ImageSpec {
        binary: cli.binary,
        name,
        version: cli.version,
        revision: cli
            .revision
            .or_else(|| git(&["rev-parse", "HEAD"]))
            .unwrap_or_else(|| "unknown".to_owned()),
        source: cli.source,
        licenses: cli.licenses,
        created: cli.created.or_else(created_default).unwrap_or(0),
    };
    let built = tokio::task::spawn_blocking(move || image::build(&spec))
        .await
        .map_err(|e| {
            airssys_test_support::Error::Invalid(format!("the build task failed: {e}"))
        })??;
    for file in &built.files {
        eprintln!("airssys-image: {file}");
    }
    if let Some(dir) = &cli.oci_layout {
        let tag = cli
            .push
            .as_deref()
            .and_then(tag_of)
            .unwrap_or("latest")
            .to_owned();
        image::write_layout(&built, Path::new(dir), &tag)?;
        eprintln!("airssys-image: wrote an OCI layout to {}", dir.display());
    }
    if let Some(reference) = &cli.push {
        let credentials = match (
            std::env::var("AIRSSYS_REGISTRY_USERNAME"),
            std::env::var("AIRSSYS_REGISTRY_PASSWORD"),
        ) {
            (Ok(user), Ok(password)) => Some((user, password)),
            _ => None,
        };
        let options = PushOptions {
            plain_http: cli.plain_http,
            credentials,
        };
        image::push(&built, reference, &options).await?;
        eprintln!("airssys-image: pushed {reference}");
    }
    println!("{}", built.digest);
    Ok(())
}

/// The tag of `registry/repository:tag` (not a port of the registry).
fn tag_of(reference: &str) -> Option<&str> {
    let (_, last) = reference.rsplit_once('/')?;
    last.split_once(':').map(|(_, tag)| tag)
}

/// `$SOURCE_DATE_EPOCH`, else the committer time of HEAD.
fn created_default() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| git(&["log", "-1", "--format=%ct"]).and_then(|t| t.parse().ok()))
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}
