//! `TrustSource`: what a platform team trusts, denies or approves, and up to which ceiling.
//!
//! A source applies to a component when its `namespaceSelector` (if any) selects the
//! component's namespace and the artifact meets the source's criteria: its repository matches
//! one of `registries` (if set), it carries at least `minimumSignatures` valid signatures from
//! `keys`/`identities` (if set), or its digest is listed in `digests`. The decision logic
//! itself lives in the operator (`operator/src/trust.rs`).

use std::collections::BTreeMap;
use std::fmt;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::artifact::{DIGEST_MESSAGE, DIGEST_RULE};
use crate::capability::Capabilities;
use crate::condition::Condition;

/// A platform team's statement of trust, cluster-wide.
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) group repeats the same keys by design"
)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "wasm.airssys.dev",
    version = "v1alpha1",
    kind = "TrustSource",
    plural = "trustsources",
    shortname = "ts",
    category = "airssys",
    status = "TrustSourceStatus",
    doc = "Which artifacts are trusted, denied or run in dev mode, and the most a trusted artifact may be granted without a person.",
    printcolumn(name = "Decision", type_ = "string", json_path = ".spec.decision"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Components",
        type_ = "integer",
        json_path = ".status.components"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("has(self.registries) || has(self.keys) || has(self.identities) || has(self.digests)").message("a TrustSource must match something: set registries, keys, identities or digests"))]
#[x_kube(validation = kube::core::Rule::new("self.decision != 'DevMode' || (has(self.namespaceSelector) && ((has(self.namespaceSelector.matchLabels) && size(self.namespaceSelector.matchLabels) > 0) || (has(self.namespaceSelector.matchExpressions) && self.namespaceSelector.matchExpressions.exists(e, e.operator == 'In' || e.operator == 'Exists'))))").message("a DevMode source must select namespaces with namespaceSelector: matchLabels, or an In or Exists expression (an empty or only-negative selector selects every namespace)"))]
#[x_kube(validation = kube::core::Rule::new("self.decision != 'Deny' || !has(self.capabilityCeiling)").message("a Deny source takes no capabilityCeiling"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.identities) || has(self.trustRoot)").message("certificate identities need a trustRoot to verify certificates against"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.minimumSignatures) || has(self.keys) || has(self.identities)").message("minimumSignatures needs keys or identities"))]
pub struct TrustSourceSpec {
    /// `Trust`, `Deny` or `DevMode`.
    pub decision: Decision,
    /// Repository globs such as `registry.example.com/team/*` (`*` one path segment, `**` any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub registries: Vec<RegistryPattern>,
    /// Cosign public keys (PEM, ECDSA P-256 or Ed25519).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub keys: Vec<CosignKey>,
    /// Keyless signer identities (Fulcio-style certificates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub identities: Vec<CertificateIdentity>,
    /// Offline roots for `identities`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_root: Option<TrustRoot>,
    /// Pinned digests; an entry naming components is a manual approval for exactly those.
    /// At most 128 per source (keep one approvals source per namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub digests: Vec<DigestEntry>,
    /// Namespaces the source applies to; all namespaces when unset (DevMode requires it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The most a `Trust` source approves without a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_ceiling: Option<Capabilities>,
    /// Signatures needed from this source's keys and identities together (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub minimum_signatures: Option<i32>,
}

/// What a matching source decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Decision {
    Trust,
    Deny,
    DevMode,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trust => "Trust",
            Self::Deny => "Deny",
            Self::DevMode => "DevMode",
        })
    }
}

/// A repository glob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryPattern {
    /// `host[:port]/path` where a path segment may be `*` (one segment) or a final `**` (any depth).
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-zA-Z0-9.-]+(:[0-9]{1,5})?(/([a-z0-9._-]+|[*]|[*][*]))+$')").message("registry pattern must look like host[:port]/path with '*' or a final '**' as whole segments"))]
    #[schemars(length(min = 1, max = 512))]
    pub repository: String,
}

/// A cosign public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CosignKey {
    /// A label for status and audit (`release-key`).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// PEM `PUBLIC KEY` block.
    #[x_kube(validation = kube::core::Rule::new("self.contains('-----BEGIN PUBLIC KEY-----')").message("publicKey must be a PEM PUBLIC KEY block"))]
    #[schemars(length(min = 1, max = 8192))]
    pub public_key: String,
}

/// A keyless signer: the certificate's OIDC issuer and subject, exact or by a prefix that ends
/// with `/` (so it matches whole path segments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("has(self.subject) != has(self.subjectPrefix)").message("an identity needs exactly one of subject or subjectPrefix"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.subjectPrefix) || self.subjectPrefix.endsWith('/')").message("subjectPrefix must end with '/': a prefix matches whole path segments only (https://git.example.com/acme/repo/ must not also match .../acme/repo-evil)"))]
pub struct CertificateIdentity {
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub subject_prefix: Option<String>,
}

/// Certificate authorities for keyless verification, so it works offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustRoot {
    /// PEM certificates of the issuing CAs.
    #[schemars(length(min = 1, max = 8))]
    pub certificate_authorities: Vec<PemCertificate>,
}

/// One PEM certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PemCertificate {
    #[x_kube(validation = kube::core::Rule::new("self.contains('-----BEGIN CERTIFICATE-----')").message("certificate must be a PEM CERTIFICATE block"))]
    #[schemars(length(min = 1, max = 16384))]
    pub pem: String,
}

/// A pinned digest. With `components` it is a manual approval, bound to those components and
/// to `capabilities`: it holds while a component's digest is this one and its request stays
/// within `capabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("!has(self.components) || has(self.capabilities)").message("an approval that names components must also record the capabilities it approves"))]
pub struct DigestEntry {
    #[x_kube(validation = kube::core::Rule::new(DIGEST_RULE).message(DIGEST_MESSAGE))]
    #[schemars(length(min = 71, max = 71))]
    pub digest: String,
    /// Components approved to run this digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub components: Vec<ComponentRef>,
    /// Capabilities approved with the digest; the source's ceiling when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// Who approved, for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub approved_by: Option<String>,
    /// Why, for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// `namespace/name` of a `WasmComponent`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentRef {
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A label selector, as in core Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement of a [`LabelSelector`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)").message("In and NotIn need values; Exists and DoesNotExist take none"))]
pub struct LabelSelectorRequirement {
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Whether the selector has a positive term (a `matchLabels` entry, an `In` or `Exists`
    /// expression), so it selects only namespaces labelled for it. An empty selector, or one
    /// of only `NotIn`/`DoesNotExist` terms, selects every namespace not labelled against it.
    pub fn names_namespaces(&self) -> bool {
        !self.match_labels.is_empty()
            || self
                .match_expressions
                .iter()
                .any(|e| matches!(e.operator, SelectorOperator::In | SelectorOperator::Exists))
    }

    /// Whether `labels` satisfy every term. An empty selector selects everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let labels_ok = self
            .match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v));
        labels_ok
            && self.match_expressions.iter().all(|req| {
                let value = labels.get(&req.key);
                match req.operator {
                    SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// Status of a `TrustSource`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustSourceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: whether the source parsed and is in use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Components this source currently decides for.
    #[serde(default)]
    pub components: i32,
}

/// A source that passed the schema but not the checks that need the grammar. The operator adds
/// the cryptographic checks (keys, certificates) and reports both as `Accepted=False`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("a TrustSource must match something: set registries, keys, identities or digests")]
    MatchesNothing,
    #[error(
        "a DevMode source must select namespaces with namespaceSelector: matchLabels, or an In or Exists expression (an empty or only-negative selector selects every namespace)"
    )]
    DevModeWithoutSelector,
    #[error(
        "identities[{index}]: subjectPrefix must end with '/': a prefix matches whole path segments only (https://git.example.com/acme/repo/ must not also match .../acme/repo-evil)"
    )]
    SubjectPrefixBoundary { index: usize },
    #[error("a Deny source takes no capabilityCeiling")]
    DenyWithCeiling,
    #[error("certificate identities need a trustRoot to verify certificates against")]
    IdentitiesWithoutRoot,
    #[error(
        "minimumSignatures is {minimum}, but the source lists only {signers} keys and identities"
    )]
    MinimumSignatures { minimum: i32, signers: usize },
    #[error(transparent)]
    Registry(#[from] RepositoryGlobError),
    #[error("capabilityCeiling: {0}")]
    Ceiling(crate::capability::CapabilityError),
    #[error("digests[{index}]: {source}")]
    Digest {
        index: usize,
        source: crate::artifact::DigestError,
    },
    #[error(
        "digests[{index}] names components but records no capabilities; an approval must say what it approves"
    )]
    ApprovalWithoutCapabilities { index: usize },
    #[error("digests[{index}].capabilities: {source}")]
    Approval {
        index: usize,
        source: crate::capability::CapabilityError,
    },
}

impl TrustSourceSpec {
    /// Checks everything but the cryptography (keys and certificates are parsed by the
    /// operator): the cross-field rules the CRD's CEL also states (checked again here so a
    /// decision never depends on admission having run them), the registry globs, the ceiling
    /// and every digest entry.
    pub fn validate(&self) -> Result<(), SourceError> {
        if self.registries.is_empty()
            && self.keys.is_empty()
            && self.identities.is_empty()
            && self.digests.is_empty()
        {
            return Err(SourceError::MatchesNothing);
        }
        if self.decision == Decision::DevMode
            && !self
                .namespace_selector
                .as_ref()
                .is_some_and(LabelSelector::names_namespaces)
        {
            return Err(SourceError::DevModeWithoutSelector);
        }
        for (index, id) in self.identities.iter().enumerate() {
            if id
                .subject_prefix
                .as_ref()
                .is_some_and(|p| !p.ends_with('/'))
            {
                return Err(SourceError::SubjectPrefixBoundary { index });
            }
        }
        if self.decision == Decision::Deny && self.capability_ceiling.is_some() {
            return Err(SourceError::DenyWithCeiling);
        }
        if !self.identities.is_empty() && self.trust_root.is_none() {
            return Err(SourceError::IdentitiesWithoutRoot);
        }
        let signers = self.keys.len() + self.identities.len();
        if let Some(minimum) = self.minimum_signatures
            && (minimum < 1 || usize::try_from(minimum).unwrap_or(usize::MAX) > signers)
        {
            return Err(SourceError::MinimumSignatures { minimum, signers });
        }
        for pattern in &self.registries {
            RepositoryGlob::parse(&pattern.repository)?;
        }
        if let Some(ceiling) = &self.capability_ceiling {
            crate::capability::CapabilitySet::parse(ceiling).map_err(SourceError::Ceiling)?;
        }
        for (index, entry) in self.digests.iter().enumerate() {
            crate::artifact::Digest::parse(&entry.digest)
                .map_err(|source| SourceError::Digest { index, source })?;
            if !entry.components.is_empty() && entry.capabilities.is_none() {
                return Err(SourceError::ApprovalWithoutCapabilities { index });
            }
            if let Some(caps) = &entry.capabilities {
                crate::capability::CapabilitySet::parse(caps)
                    .map_err(|source| SourceError::Approval { index, source })?;
            }
        }
        Ok(())
    }
}

/// A parsed repository glob (see [`RegistryPattern`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryGlob {
    host: String,
    segments: Vec<String>,
}

/// A repository glob that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry pattern {pattern:?} is invalid: {reason}")]
pub struct RepositoryGlobError {
    pub pattern: String,
    pub reason: &'static str,
}

impl RepositoryGlob {
    /// Parses `host[:port]/seg/*/**`.
    pub fn parse(raw: &str) -> Result<Self, RepositoryGlobError> {
        let err = |reason| RepositoryGlobError {
            pattern: raw.to_owned(),
            reason,
        };
        let (host, path) = raw
            .split_once('/')
            .ok_or_else(|| err("needs a host and a path"))?;
        if host.is_empty() || host.contains('*') {
            return Err(err("the host must be literal"));
        }
        let segments: Vec<String> = path.split('/').map(str::to_owned).collect();
        for (i, seg) in segments.iter().enumerate() {
            if seg.is_empty() {
                return Err(err("path segments may not be empty"));
            }
            if seg == "**" && i + 1 != segments.len() {
                return Err(err("'**' may only be the last segment"));
            }
            if seg.contains('*') && seg != "*" && seg != "**" {
                return Err(err("'*' and '**' must be whole segments"));
            }
        }
        Ok(Self {
            host: canonical_registry(host),
            segments,
        })
    }

    /// The registry (`host[:port]`, canonical) the glob names.
    pub fn registry(&self) -> &str {
        &self.host
    }

    /// Whether `repository` (`host/path`, without tag or digest) matches. Both sides are
    /// compared in canonical form ([`canonical_repository`]), so another spelling of the same
    /// registry matches the same globs.
    pub fn matches(&self, repository: &str) -> bool {
        let repository = canonical_repository(repository);
        let Some((host, path)) = repository.split_once('/') else {
            return false;
        };
        if host != self.host {
            return false;
        }
        let mut parts = path.split('/');
        for seg in &self.segments {
            match (seg.as_str(), parts.next()) {
                ("**", Some(part)) => return !part.is_empty(),
                ("*", Some(part)) if !part.is_empty() => {}
                (lit, Some(part)) if lit == part => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

/// The canonical spelling of a registry (`host[:port]`), so that every spelling a client would
/// connect to the same way compares equal: lower case, no trailing dot, the port as a plain
/// number (`:05000` is `:5000`), no default port (`:443`, `:80`), IPv6 literals in brackets
/// and compressed form, Docker Hub's aliases as `docker.io`. Names that resolve to the same
/// address through DNS stay different: no spelling rule can see those (see the operator's
/// `--require-listed-registry`).
pub fn canonical_registry(raw: &str) -> String {
    let raw = raw.trim();
    let (host, port) = match raw.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, tail)) => {
                let host = match v6.parse::<std::net::Ipv6Addr>() {
                    Ok(ip) => format!("[{ip}]"),
                    Err(_) => format!("[{}]", v6.to_ascii_lowercase()),
                };
                (host, tail.strip_prefix(':'))
            }
            None => (raw.to_ascii_lowercase(), None),
        },
        None => match raw.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                (canonical_host(h), Some(p))
            }
            _ => (canonical_host(raw), None),
        },
    };
    match port.map(|p| p.trim_start_matches('0')) {
        None => host,
        // All zeros: port 0.
        Some("") => format!("{host}:0"),
        Some("443" | "80") => host,
        Some(p) => format!("{host}:{p}"),
    }
}

fn canonical_host(host: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => host,
    }
}

/// `host[:port]/path` with the host in [`canonical_registry`] form and the path in lower case
/// (repository names are lower case; a registry that folds case must not fold past a glob).
pub fn canonical_repository(repository: &str) -> String {
    match repository.split_once('/') {
        Some((host, path)) => format!("{}/{}", canonical_registry(host), path.to_ascii_lowercase()),
        None => canonical_registry(repository),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_spellings_are_canonical() {
        let cases: &[(&str, &str, &str)] = &[
            ("case", "R.IO", "r.io"),
            ("trailing dot", "r.io.", "r.io"),
            ("trailing dot with port", "r.io.:5000", "r.io:5000"),
            ("zero-padded port", "r.io:05000", "r.io:5000"),
            ("https default port", "r.io:443", "r.io"),
            ("zero-padded default port", "r.io:0443", "r.io"),
            ("http default port", "r.io:80", "r.io"),
            ("port zero stays", "r.io:000", "r.io:0"),
            ("other ports stay", "r.io:8443", "r.io:8443"),
            ("ipv4 with port", "127.0.0.1:05000", "127.0.0.1:5000"),
            ("ipv6 compressed", "[0:0:0:0:0:0:0:1]:5000", "[::1]:5000"),
            ("ipv6 case", "[FE80::1]", "[fe80::1]"),
            ("ipv6 default port", "[::1]:443", "[::1]"),
            ("docker hub alias", "index.docker.io", "docker.io"),
            ("docker hub registry", "registry-1.docker.io", "docker.io"),
            ("localhost", "LocalHost:5000", "localhost:5000"),
        ];
        for (rule, raw, want) in cases {
            assert_eq!(canonical_registry(raw), *want, "{rule}: {raw}");
            assert_eq!(
                canonical_registry(want),
                *want,
                "{rule}: canonical is a fixed point"
            );
        }
        assert_eq!(
            canonical_repository("R.io.:0443/Acme/Evil"),
            "r.io/acme/evil"
        );
    }

    #[test]
    fn globs_match_every_spelling_of_their_registry() {
        let deny = RepositoryGlob::parse("r.io:5000/acme-evil/**").unwrap();
        for repo in [
            "r.io:5000/acme-evil/x",
            "r.io:05000/acme-evil/x",
            "R.IO:5000/acme-evil/x",
            "r.io.:5000/acme-evil/x",
            "r.io:5000/ACME-EVIL/x",
        ] {
            assert!(deny.matches(repo), "{repo}");
        }
        assert!(!deny.matches("r.io:5001/acme-evil/x"), "another port");
        let hub = RepositoryGlob::parse("docker.io/library/*").unwrap();
        assert!(hub.matches("index.docker.io/library/busybox"));
        let v6 = RepositoryGlob::parse("[::1]:5000/a/*").unwrap_or_else(|e| panic!("{e}"));
        assert!(v6.matches("[0::1]:05000/a/b"));
    }

    #[test]
    fn repository_globs() {
        let cases: &[(&str, &str, bool)] = &[
            ("ghcr.io/acme/echo", "ghcr.io/acme/echo", true),
            ("ghcr.io/acme/*", "ghcr.io/acme/echo", true),
            ("ghcr.io/acme/*", "ghcr.io/acme/team/echo", false),
            ("ghcr.io/acme/**", "ghcr.io/acme/team/echo", true),
            ("ghcr.io/acme/**", "ghcr.io/acme", false),
            ("ghcr.io/acme/*", "ghcr.io/acmecorp/echo", false),
            ("ghcr.io/acme/*", "evil.io/acme/echo", false),
            ("ghcr.io/acme/*", "GHCR.io/acme/echo", true),
            ("localhost:5000/**", "localhost:5000/x/y", true),
            ("localhost:5000/**", "localhost:5001/x", false),
        ];
        for (pattern, repo, want) in cases {
            let glob = RepositoryGlob::parse(pattern).expect("pattern parses");
            assert_eq!(glob.matches(repo), *want, "{pattern} vs {repo}");
        }
        for bad in [
            "ghcr.io",
            "*.io/acme",
            "ghcr.io/**/x",
            "ghcr.io/ac*",
            "ghcr.io//x",
        ] {
            assert!(RepositoryGlob::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_spec() {
        let key = "keys: [{ name: k, publicKey: \"-----BEGIN PUBLIC KEY-----\" }]";
        let digest = format!("sha256:{}", "a".repeat(64));
        let cases: Vec<(&str, String, Option<&str>)> = vec![
            ("registry source is valid", "decision: Trust\nregistries: [{ repository: r.io/a/** }]".into(), None),
            ("matches nothing", "decision: Trust".into(), Some("must match something")),
            ("dev mode needs a selector", "decision: DevMode\nregistries: [{ repository: r.io/** }]".into(), Some("namespaceSelector")),
            ("dev mode with a selector", "decision: DevMode\nregistries: [{ repository: r.io/** }]\nnamespaceSelector: { matchLabels: { a: b } }".into(), None),
            ("dev mode with an empty selector selects everything", "decision: DevMode\nregistries: [{ repository: r.io/** }]\nnamespaceSelector: {}".into(), Some("namespaceSelector")),
            ("dev mode with empty matchLabels selects everything", "decision: DevMode\nregistries: [{ repository: r.io/** }]\nnamespaceSelector: { matchLabels: {} }".into(), Some("namespaceSelector")),
            ("dev mode with only negative terms selects nearly everything", "decision: DevMode\nregistries: [{ repository: r.io/** }]\nnamespaceSelector: { matchExpressions: [{ key: prod, operator: DoesNotExist }] }".into(), Some("namespaceSelector")),
            ("dev mode with an Exists term", "decision: DevMode\nregistries: [{ repository: r.io/** }]\nnamespaceSelector: { matchExpressions: [{ key: dev, operator: Exists }] }".into(), None),
            ("subject prefix must end on a path boundary", "decision: Trust\nidentities: [{ issuer: i, subjectPrefix: 'https://github.com/acme/repo' }]\ntrustRoot: { certificateAuthorities: [{ pem: '-----BEGIN CERTIFICATE-----' }] }".into(), Some("must end with '/'")),
            ("subject prefix ending in a slash", "decision: Trust\nidentities: [{ issuer: i, subjectPrefix: 'https://github.com/acme/repo/' }]\ntrustRoot: { certificateAuthorities: [{ pem: '-----BEGIN CERTIFICATE-----' }] }".into(), None),
            ("deny takes no ceiling", "decision: Deny\nregistries: [{ repository: r.io/** }]\ncapabilityCeiling: {}".into(), Some("no capabilityCeiling")),
            ("identities need a root", "decision: Trust\nidentities: [{ issuer: i, subject: s }]".into(), Some("trustRoot")),
            ("minimum above signers", format!("decision: Trust\nminimumSignatures: 2\n{key}"), Some("lists only 1")),
            ("minimum within signers", format!("decision: Trust\nminimumSignatures: 1\n{key}"), None),
            ("bad glob", "decision: Trust\nregistries: [{ repository: 'r.io/**/x' }]".into(), Some("last segment")),
            ("bad digest", "decision: Trust\ndigests: [{ digest: sha256:x }]".into(), Some("digests[0]")),
            ("approval without capabilities", format!("decision: Trust\ndigests: [{{ digest: {digest}, components: [{{ namespace: n, name: c }}] }}]"), Some("records no capabilities")),
            ("approval with capabilities", format!("decision: Trust\ndigests: [{{ digest: {digest}, components: [{{ namespace: n, name: c }}], capabilities: {{}} }}]"), None),
            ("bad ceiling", "decision: Trust\nregistries: [{ repository: r.io/** }]\ncapabilityCeiling: { filesystem: [{ path: x, access: [read] }] }".into(), Some("capabilityCeiling")),
        ];
        for (rule, yaml, want) in cases {
            let spec: TrustSourceSpec =
                serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{rule}: {e}"));
            match (spec.validate(), want) {
                (Ok(()), None) => {}
                (Err(err), Some(needle)) => {
                    assert!(err.to_string().contains(needle), "{rule}: {err}")
                }
                (got, want) => panic!("{rule}: got {got:?}, want error containing {want:?}"),
            }
        }
    }

    #[test]
    fn label_selectors() {
        let labels: BTreeMap<String, String> = [
            ("env".to_owned(), "dev".to_owned()),
            ("team".to_owned(), "a".to_owned()),
        ]
        .into();
        let req = |key: &str, operator, values: &[&str]| LabelSelectorRequirement {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        };
        let cases: Vec<(&str, LabelSelector, bool)> = vec![
            ("empty selects all", LabelSelector::default(), true),
            (
                "match label",
                LabelSelector {
                    match_labels: [("env".into(), "dev".into())].into(),
                    ..Default::default()
                },
                true,
            ),
            (
                "mismatched label",
                LabelSelector {
                    match_labels: [("env".into(), "prod".into())].into(),
                    ..Default::default()
                },
                false,
            ),
            (
                "In",
                LabelSelector {
                    match_expressions: vec![req("env", SelectorOperator::In, &["dev", "test"])],
                    ..Default::default()
                },
                true,
            ),
            (
                "NotIn",
                LabelSelector {
                    match_expressions: vec![req("env", SelectorOperator::NotIn, &["dev"])],
                    ..Default::default()
                },
                false,
            ),
            (
                "NotIn on missing key",
                LabelSelector {
                    match_expressions: vec![req("x", SelectorOperator::NotIn, &["dev"])],
                    ..Default::default()
                },
                true,
            ),
            (
                "Exists",
                LabelSelector {
                    match_expressions: vec![req("team", SelectorOperator::Exists, &[])],
                    ..Default::default()
                },
                true,
            ),
            (
                "DoesNotExist",
                LabelSelector {
                    match_expressions: vec![req("team", SelectorOperator::DoesNotExist, &[])],
                    ..Default::default()
                },
                false,
            ),
        ];
        for (rule, selector, want) in cases {
            assert_eq!(selector.matches(&labels), want, "{rule}");
        }
    }
}
