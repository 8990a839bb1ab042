//! The plugin's one error type. Every message is one line for a person: what failed, the root
//! cause, and what to do next; never a Rust debug dump.

use std::error::Error as _;
use std::fmt;

use airssys_crds::trust_source::Decision;
use kube::config::{KubeconfigError, LoadDataError};

/// Everything `kubectl wasm` can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "'{0}' is not NAMESPACE/NAME; name the component by its namespace, a slash and its name, \
         e.g. wasm-demo/kv-counter"
    )]
    Target(String),
    #[error(
        "WasmComponent {namespace}/{name} has no resolved digest yet; wait until the operator has \
         resolved its artifact (kubectl wasm explain {namespace}/{name} says why not)"
    )]
    NotResolved { namespace: String, name: String },
    #[error(
        "WasmComponent {namespace}/{name} not found; list the components with \
         `kubectl get wasmcomponents -n {namespace}`"
    )]
    NotFound { namespace: String, name: String },
    #[error("TrustSource {name} decides {found}, not {wanted}; choose another with --source")]
    WrongDecision {
        name: String,
        found: Decision,
        wanted: Decision,
    },
    #[error("the API server did not say who you are; pass --approved-by NAME")]
    UnknownApprover,
    #[error("TrustSource {name} kept changing while it was updated; run the command again")]
    Conflict { name: String },
    #[error("{}", describe_kubeconfig(.0))]
    Kubeconfig(#[source] KubeconfigError),
    #[error("{}", describe_api(.action, .server, .source))]
    Api {
        /// What the plugin was doing, e.g. "reading WasmComponent ns/kv".
        action: String,
        /// The API server's URL, from the kubeconfig.
        server: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot print the TrustSource as YAML ({0}); please report this as a bug")]
    Yaml(#[from] serde_yaml::Error),
}

impl Error {
    /// An API call that failed while doing `action` against `server`.
    pub fn api(action: impl Into<String>, server: impl fmt::Display, source: kube::Error) -> Self {
        Self::Api {
            action: action.into(),
            server: server.to_string(),
            source,
        }
    }
}

/// The innermost cause: for a refused connection, a failed DNS lookup or a TLS failure it is
/// the one that tells them apart, and the outer layers only repeat "client error".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn describe_api(action: &str, server: &str, e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let hint = match status.code {
                401 => {
                    "your credentials were refused; log in again or check the user in your kubeconfig"
                }
                403 => "ask a cluster administrator for the RBAC permission the message names",
                404 => {
                    "are the airssys-wasm CRDs installed in this cluster? (kubectl get crd | grep wasm.airssys.dev)"
                }
                409 => "someone else changed it at the same time; run the command again",
                422 => "the API server refused the object as invalid; fix what the message names",
                500..=599 => {
                    "the API server failed; try again, and check it with `kubectl get --raw /readyz`"
                }
                _ => "check the message above and try again",
            };
            let message = if status.message.is_empty() {
                status.reason.as_str()
            } else {
                status.message.as_str()
            };
            format!(
                "{action}: the API server answered {}: {message}; {hint}",
                status.code
            )
        }
        kube::Error::SerdeError(inner) => format!(
            "{action}: the API server's answer does not parse ({inner}); the plugin and the \
             CRDs installed in the cluster may be different versions"
        ),
        kube::Error::Auth(inner) => format!(
            "{action}: cannot get credentials for {server}: {}; check the user in your kubeconfig",
            root_cause(inner)
        ),
        other => format!(
            "{action}: cannot reach the API server at {server}: {}; check that the cluster is up \
             and your kubeconfig points at it (kubectl cluster-info)",
            root_cause(other)
        ),
    }
}

fn describe_load(what: &str, e: &LoadDataError) -> String {
    match e {
        LoadDataError::ReadFile(io, path) => {
            format!("cannot read the {what} {}: {io}", path.display())
        }
        other => format!("cannot load the {what}: {}", root_cause(other)),
    }
}

fn describe_kubeconfig(e: &KubeconfigError) -> String {
    let what = match e {
        KubeconfigError::ReadConfig(io, path) => {
            format!("cannot read the kubeconfig {}: {io}", path.display())
        }
        KubeconfigError::LoadCertificateAuthority(inner) => {
            describe_load("certificate authority the kubeconfig names", inner)
        }
        KubeconfigError::LoadClientCertificate(inner) => {
            describe_load("client certificate the kubeconfig names", inner)
        }
        KubeconfigError::LoadClientKey(inner) => {
            describe_load("client key the kubeconfig names", inner)
        }
        other => match other.source() {
            Some(cause) => format!(
                "the kubeconfig is not usable: {other} ({})",
                root_cause(cause)
            ),
            None => format!("the kubeconfig is not usable: {other}"),
        },
    };
    format!(
        "{what}; point KUBECONFIG at a working kubeconfig or pick a context with \
         `kubectl config use-context`"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn status(code: u16, message: &str) -> kube::Error {
        let mut s = kube::core::Status::failure(message, "Forbidden");
        s.code = code;
        kube::Error::Api(Box::new(s))
    }

    /// One row per kind of failure a person meets: the message names the cause and what to do,
    /// and stays on one line without Rust debug output.
    #[test]
    fn messages_say_the_cause_and_what_to_do() {
        let refused = kube::Error::ReadEvents(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        let rows: Vec<(&str, Error, &[&str])> = vec![
            (
                "a bad target names the expected shape",
                Error::Target("kv".into()),
                &["'kv' is not NAMESPACE/NAME", "e.g. wasm-demo/kv-counter"],
            ),
            (
                "a forbidden call says to ask for RBAC",
                Error::api(
                    "reading WasmComponent ns/kv",
                    "https://k:6443/",
                    status(403, "wasmcomponents is forbidden: User \"bob\" cannot get"),
                ),
                &[
                    "reading WasmComponent ns/kv",
                    "answered 403",
                    "User \"bob\"",
                    "RBAC",
                ],
            ),
            (
                "a missing resource type says to install the CRDs",
                Error::api("listing", "https://k:6443/", status(404, "not found")),
                &["CRDs installed"],
            ),
            (
                "an unreachable server names the server and the root cause",
                Error::api("listing", "https://k:6443/", refused),
                &[
                    "cannot reach the API server at https://k:6443/",
                    "Connection refused",
                    "kubectl cluster-info",
                ],
            ),
            (
                "an unreadable kubeconfig names the file and the variable to set",
                Error::Kubeconfig(KubeconfigError::ReadConfig(
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                    "/nowhere/config".into(),
                )),
                &["cannot read the kubeconfig /nowhere/config", "KUBECONFIG"],
            ),
        ];
        for (rule, error, wanted) in rows {
            let text = error.to_string();
            for w in wanted {
                assert!(text.contains(w), "{rule}: {w:?} missing from {text}");
            }
            assert!(!text.contains('\n'), "{rule}: more than one line: {text}");
            for dump in ["Status {", "ErrorResponse", "Some(", "\"/nowhere"] {
                assert!(!text.contains(dump), "{rule}: debug output in {text}");
            }
        }
    }
}
