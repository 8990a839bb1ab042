//! Test harness for airssys-wasm: a real control plane (etcd, kube-apiserver with TLS and RBAC,
//! kube-controller-manager) on loopback ports, the harness-built `kubectl`, `helm`, `cosign`
//! and `oras`, a local OCI registry, and real nodes ([`Node`]: containerd, runc, a CNI bridge,
//! kubelet and kube-proxy on this machine).
//!
//! The Go binaries come from the pinned modules in `tests/cluster/`, built once by
//! `tests/cluster/build.sh` (a Node's: `tests/cluster/node.sh`) into a cache outside the
//! source tree (see [`tools`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), airssys_test_support::Error> {
//! use airssys_test_support::ControlPlane;
//! let cp = ControlPlane::shared().await?;
//! let ns = cp.create_namespace("demo").await?;
//! let out = cp.kubectl(["get", "namespace", ns.as_str()]).await?;
//! assert!(out.status.success());
//! # Ok(()) }
//! ```

pub mod chart;
mod control_plane;
pub mod dev;
mod error;
mod http;
pub mod image;
mod node;
mod node_config;
mod pki;
mod ports;
mod process;
mod registry;
pub mod tools;
mod wait;

pub use control_plane::{ControlPlane, ControlPlaneOptions, client_from, repo_root};
pub use error::Error;
pub use http::http_get;
pub use node::{Node, NodeOptions, SHARED_NODE_NAME};
pub use process::Supervised;
pub use registry::{Registry, RegistryAuth, RegistryOptions, docker_config};
pub use tools::{node_image, push_wasm, run_tool, tool_path};
pub use wait::{condition_status, wait_for};
