use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything the harness can fail at; each variant says what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the test tools with {script} failed: {reason}")]
    ToolsBuild { script: PathBuf, reason: String },

    #[error("tool {name} not found in {dir}; rerun tests/cluster/build.sh")]
    ToolMissing { name: String, dir: PathBuf },

    #[error("{name} {args:?} failed ({status}):\nstdout: {stdout}\nstderr: {stderr}")]
    ToolFailed {
        name: String,
        args: Vec<String>,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("generating certificates: {0}")]
    Pki(#[from] rcgen::Error),

    #[error("{name} exited early ({status}); last log lines:\n{log_tail}")]
    ProcessExited {
        name: String,
        status: ExitStatus,
        log_tail: String,
    },

    #[error("timed out after {timeout:?} waiting for {what}; last seen:\n{last}")]
    Timeout {
        what: String,
        timeout: Duration,
        last: String,
    },

    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),

    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("parsing YAML from {path}: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },

    #[error("encoding {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
