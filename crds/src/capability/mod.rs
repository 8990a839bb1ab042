//! The capability grammar of DESIGN §4.
//!
//! Two layers: the API shape users write in YAML ([`Capabilities`], validated by the schema and
//! its CEL rules), and the parsed, normalized [`CapabilitySet`] that every decision uses
//! (approval compares sets with [`CapabilitySet::is_within`]; the agent checks calls against
//! the grant). Parsing is where malformed input stops: nothing downstream sees a raw string.

mod network;
mod path;
mod set;
mod topic;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

pub use network::{
    AddrClass, Cidr, HostPattern, MAX_HOST_LEN, NetTarget, PortRange, classify, is_host_name,
    is_ip_literal, is_restricted,
};
pub use path::{AbsPath, MAX_PATH_LEN, covers_normalized, is_normalized};
pub use set::{BucketGrant, CapabilitySet, NetGrant, PathGrant, TopicGrant};
pub use topic::{
    MAX_TOPIC_LEN, TopicPattern, check_bucket, check_component_name, check_env_name, check_topic,
};

/// Why a capability did not parse. Messages name the offending value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error("filesystem path {path:?} {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("network host {host:?} {reason}")]
    InvalidHost { host: String, reason: &'static str },
    #[error("network port {port} is invalid: {reason}")]
    InvalidPort { port: i32, reason: &'static str },
    #[error("messaging topic {topic:?} is invalid: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
    #[error("storage bucket {bucket:?} {reason}")]
    InvalidBucket {
        bucket: String,
        reason: &'static str,
    },
    #[error("messaging component {component:?} {reason}")]
    InvalidComponent {
        component: String,
        reason: &'static str,
    },
    #[error("env name {name:?} {reason}")]
    InvalidEnv { name: String, reason: &'static str },
    #[error("messaging entry {entry}: {reason}")]
    InvalidMessaging { entry: String, reason: &'static str },
    #[error("{kind} entry {entry} grants no access: list at least one of {allowed}")]
    NoAccess {
        kind: &'static str,
        entry: String,
        allowed: &'static str,
    },
}

/// Filesystem access modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FsAccess {
    Read,
    Write,
}

/// Storage bucket access modes.
pub type StorageAccess = FsAccess;

/// Messaging access modes: `publish`/`subscribe` for topics, `send` for direct messages and
/// requests to a named component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessagingAccess {
    Publish,
    Subscribe,
    Send,
}

/// The capabilities a component requests, as written in `spec.capabilities`, and the same
/// shape for a `TrustSource` ceiling and a manual approval. Everything is denied unless listed.
///
/// List bounds are what keeps the API server's CEL cost estimate within budget where this type
/// is nested in a `TrustSource`'s approvals; raise them only with that test passing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    /// Directories the component may open, through WASI preopens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub filesystem: Vec<FilesystemCapability>,
    /// Outgoing connections (HTTP and sockets): names before DNS, addresses after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub network: Vec<NetworkCapability>,
    /// Key-value buckets in the node's store, private to the component.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub storage: Vec<StorageCapability>,
    /// Topics to publish or subscribe to, and components to send to directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub messaging: Vec<MessagingCapability>,
    /// Config keys (from `spec.config`) exposed to the guest as environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub env: Vec<EnvCapability>,
}

/// One directory and how it may be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesystemCapability {
    /// Absolute path as the guest sees it. Normalized; `..` is never allowed.
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/')").message("filesystem path must be absolute (start with '/')"))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("filesystem path must not contain a '..' component"))]
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// `read`, `write` or both.
    #[schemars(length(min = 1, max = 2))]
    pub access: Vec<FsAccess>,
}

/// One outgoing network destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("!has(self.endPort) || self.endPort >= self.port").message("endPort must be greater than or equal to port"))]
pub struct NetworkCapability {
    /// `api.example.com`, `*.example.com` (label boundary), an IP literal or a CIDR.
    /// A name is resolved only through a name grant: to reach a name, grant the name (an
    /// address grant reaches address literals). Loopback, private and link-local addresses
    /// are only reachable through an address grant, by name or not.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([*][.])?[a-zA-Z0-9.-]+[.]?$') || self.matches('^[0-9a-fA-F.:]+(/[0-9]{1,3})?$')").message("network host must be a host name, '*.' followed by a domain, an IP address or a CIDR"))]
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Destination port (1-65535).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Last port of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<i32>,
}

/// One key-value bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageCapability {
    /// Bucket name: 1-63 of `a-z`, `0-9`, `-`, `_`.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9][a-z0-9_-]*$')").message("storage bucket must be lower-case letters, digits, '-' or '_', starting with a letter or digit"))]
    #[schemars(length(min = 1, max = 63))]
    pub bucket: String,
    /// `read`, `write` or both.
    #[schemars(length(min = 1, max = 2))]
    pub access: Vec<StorageAccess>,
}

/// A topic pattern, or a component that may be sent to directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("has(self.topic) != has(self.component)").message("a messaging entry names exactly one of topic or component"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.topic) || self.access.all(a, a != 'send')").message("topics take publish and subscribe; send is for a component"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.component) || self.access.all(a, a == 'send')").message("a component entry only takes send"))]
pub struct MessagingCapability {
    /// `.`-separated topic; `*` matches one token, a final `>` one or more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub topic: Option<String>,
    /// Name of a component in the same namespace that may receive direct messages and requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub component: Option<String>,
    /// `publish`/`subscribe` for a topic, `send` for a component.
    #[schemars(length(min = 1, max = 3))]
    pub access: Vec<MessagingAccess>,
}

/// A config key exposed to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvCapability {
    /// Key name: a letter or `_`, then letters, digits or `_`.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("env name must be a letter or '_' followed by letters, digits or '_'"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}
