//! Helpers for the end-to-end tests in `tests/`: where the example manifests are and what
//! each invalid one is expected to be rejected with.

use std::path::{Path, PathBuf};

pub use airssys_test_support as support;

/// Marker on the first line of every `examples/invalid/*.yaml`.
const EXPECT_ERROR: &str = "# expect-error:";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: first line must be `{EXPECT_ERROR} <substring of the API server's message>`")]
    MissingExpectation { path: PathBuf },
}

/// `examples/` at the workspace root.
pub fn examples_dir() -> PathBuf {
    support::repo_root().join("examples")
}

/// The `*.yaml` files directly in `dir` (not recursive), sorted.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// An invalid manifest and the message fragment the API server must reject it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidExample {
    pub path: PathBuf,
    pub expected: String,
}

/// Every `examples/invalid/*.yaml` with its expectation.
pub fn invalid_examples() -> Result<Vec<InvalidExample>, Error> {
    yaml_files(&examples_dir().join("invalid"))?
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            match expected_error(&text) {
                Some(expected) => Ok(InvalidExample { path, expected }),
                None => Err(Error::MissingExpectation { path }),
            }
        })
        .collect()
}

/// The substring promised by a first line `# expect-error: <substring>`.
pub fn expected_error(manifest: &str) -> Option<String> {
    let first = manifest.lines().next()?;
    let expected = first.strip_prefix(EXPECT_ERROR)?.trim();
    (!expected.is_empty()).then(|| expected.to_string())
}

#[cfg(test)]
mod tests {
    use super::expected_error;

    #[test]
    fn reads_the_expectation_from_the_first_line() {
        let manifest = "# expect-error: spec.replicas: Invalid value\napiVersion: v1\n";
        assert_eq!(
            expected_error(manifest).as_deref(),
            Some("spec.replicas: Invalid value")
        );
    }

    #[test]
    fn an_expectation_on_a_later_line_does_not_count() {
        assert_eq!(expected_error("apiVersion: v1\n# expect-error: x\n"), None);
    }

    #[test]
    fn an_empty_expectation_does_not_count() {
        assert_eq!(expected_error("# expect-error:   \n"), None);
    }
}
