//! The chart as a user meets it: images of the workspace's binaries built and pushed to a
//! local registry, the chart packaged and pushed there, and `helm install` from it.
//!
//! A test that runs the product on a real node chains these:
//! [`crate::dev::build_workspace_bins_for_tests`] → [`ImageBinaries::in_dir`] →
//! [`push_images`] → [`push_chart`] → [`ControlPlane::helm`] `install` with
//! [`PushedImages::values`].
//!
//! [`ControlPlane::helm`]: crate::ControlPlane::helm

use std::path::{Path, PathBuf};

use crate::image::{self, ImageSpec, PushOptions};
use crate::{Error, Registry};

/// The chart's directory in the workspace.
pub fn chart_dir() -> PathBuf {
    crate::repo_root().join("charts/airssys-wasm")
}

/// One pushed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// `registry/repository`, without tag.
    pub repository: String,
    pub tag: String,
    /// The manifest digest.
    pub digest: String,
}

/// The operator's and the agent's images in a registry.
#[derive(Debug, Clone)]
pub struct PushedImages {
    pub operator: PushedImage,
    pub agent: PushedImage,
}

impl PushedImages {
    /// `--set` values that make the chart run these images, pinned by digest.
    pub fn values(&self) -> Vec<String> {
        let mut values = Vec::new();
        for (key, image) in [("operator", &self.operator), ("agent", &self.agent)] {
            values.push(format!("{key}.image.repository={}", image.repository));
            values.push(format!("{key}.image.tag={}", image.tag));
            values.push(format!("{key}.image.digest={}", image.digest));
        }
        values
    }
}

/// The binaries to pack.
#[derive(Debug, Clone)]
pub struct ImageBinaries {
    pub operator: PathBuf,
    pub agent: PathBuf,
}

impl ImageBinaries {
    /// `airssys-operator` and `airssys-agent` in `bin_dir`, which must exist (a test gets them
    /// from [`crate::dev::build_workspace_bins_for_tests`]).
    pub fn in_dir(bin_dir: &Path) -> Result<ImageBinaries, Error> {
        let find = |name: &str| {
            let path = bin_dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::Invalid(format!(
                    "{} is not built; run `cargo build --bins -p airssys-operator -p airssys-agent` first",
                    path.display()
                )))
            }
        };
        Ok(ImageBinaries {
            operator: find("airssys-operator")?,
            agent: find("airssys-agent")?,
        })
    }
}

/// Builds the images of the operator and agent binaries and pushes them to `registry` as
/// `<registry>/airssys-operator:<tag>` and `<registry>/airssys-agent:<tag>`.
pub async fn push_images(
    registry: &Registry,
    binaries: &ImageBinaries,
    tag: &str,
) -> Result<PushedImages, Error> {
    let mut pushed = Vec::new();
    for (binary, path) in [
        ("airssys-operator", &binaries.operator),
        ("airssys-agent", &binaries.agent),
    ] {
        let spec = ImageSpec {
            binary: path.clone(),
            name: binary.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: "test".to_owned(),
            source: env!("CARGO_PKG_REPOSITORY").to_owned(),
            licenses: env!("CARGO_PKG_LICENSE").to_owned(),
            created: 0,
        };
        let built = tokio::task::spawn_blocking(move || image::build(&spec))
            .await
            .map_err(|e| Error::Invalid(format!("image build task failed: {e}")))??;
        let repository = format!("{}/{binary}", registry.address());
        let options = PushOptions {
            plain_http: true,
            credentials: registry
                .auth()
                .map(|a| a.credentials())
                .map(|(u, p)| (u.to_owned(), p.to_owned())),
        };
        let digest = image::push(&built, &format!("{repository}:{tag}"), &options).await?;
        pushed.push(PushedImage {
            repository,
            tag: tag.to_owned(),
            digest,
        });
    }
    let agent = pushed.pop();
    let operator = pushed.pop();
    match (operator, agent) {
        (Some(operator), Some(agent)) => Ok(PushedImages { operator, agent }),
        _ => Err(Error::Invalid("two images were not pushed".into())),
    }
}

/// Packages `chart` (a chart directory) with the real helm into `work_dir` and pushes it to
/// `oci://<registry>/charts`. Returns the reference to install from
/// (`oci://<registry>/charts/airssys-wasm`).
pub fn push_chart(registry: &Registry, chart: &Path, work_dir: &Path) -> Result<String, Error> {
    let chart_arg = chart.display().to_string();
    let dest = work_dir.display().to_string();
    let packaged = crate::run_tool(
        work_dir,
        "helm",
        &[
            "package",
            chart_arg.as_str(),
            "--destination",
            dest.as_str(),
        ],
    )?;
    // "Successfully packaged chart and saved it to: /dir/airssys-wasm-0.1.0.tgz"
    let archive = packaged
        .rsplit(": ")
        .next()
        .map(str::trim)
        .filter(|p| p.ends_with(".tgz"))
        .ok_or_else(|| Error::Invalid(format!("helm package said {packaged:?}")))?
        .to_owned();
    let target = format!("oci://{}/charts", registry.address());
    crate::run_tool(
        work_dir,
        "helm",
        &["push", archive.as_str(), target.as_str(), "--plain-http"],
    )?;
    Ok(format!("{target}/airssys-wasm"))
}
