//! The in-memory `TrustSource` index the trust-source controller keeps.
//!
//! Sources are parsed and validated once here (globs, capability sets, digests, and the
//! cryptographic material: cosign keys and trust-root CAs), so the decision in [`crate::trust`]
//! only ever sees well-formed sources and a bad source shows up as `Accepted=False` with the
//! reason. The index also remembers, per component, the facts and decision of its last
//! evaluation, so a source change can name exactly the components whose decision it changes.

use std::collections::{BTreeMap, BTreeSet};

use airssys_crds::capability::CapabilitySet;
use airssys_crds::trust_source::{
    CertificateIdentity, ComponentRef, Decision, LabelSelector, RepositoryGlob,
    SourceError as SpecError, TrustSourceSpec,
};
use airssys_crds::{Digest, TrustSource};

use crate::artifact::cosign::TrustMaterial;
use crate::artifact::{CaCertificate, KeyError, PublicKey, Signer};
use crate::trust::{ComponentFacts, TrustDecision, decide};

/// Why a source is not accepted. The message is what `Accepted=False` says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("keys[{index}] ({name}): {source}")]
    Key {
        index: usize,
        name: String,
        source: KeyError,
    },
    #[error("keys[{index}]: the name {name:?} is used twice")]
    DuplicateKey { index: usize, name: String },
    #[error("trustRoot.certificateAuthorities[{index}]: {source}")]
    Root { index: usize, source: KeyError },
    #[error("identities[{index}]: {reason}")]
    Identity { index: usize, reason: &'static str },
}

/// A named cosign key of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedKey {
    pub name: String,
    pub key: PublicKey,
}

/// How a certificate subject must look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectMatch {
    Exact(String),
    Prefix(String),
}

/// A keyless signer the source trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub subject: SubjectMatch,
}

impl Identity {
    fn parse(index: usize, id: &CertificateIdentity) -> Result<Self, SourceError> {
        let subject = match (&id.subject, &id.subject_prefix) {
            (Some(s), None) if !s.is_empty() => SubjectMatch::Exact(s.clone()),
            (None, Some(p)) if !p.is_empty() => SubjectMatch::Prefix(p.clone()),
            _ => {
                return Err(SourceError::Identity {
                    index,
                    reason: "needs exactly one non-empty subject or subjectPrefix",
                });
            }
        };
        if id.issuer.is_empty() {
            return Err(SourceError::Identity {
                index,
                reason: "needs an issuer",
            });
        }
        Ok(Self {
            issuer: id.issuer.clone(),
            subject,
        })
    }

    pub fn matches(&self, issuer: &str, subject: &str) -> bool {
        issuer == self.issuer
            && match &self.subject {
                SubjectMatch::Exact(s) => subject == s,
                SubjectMatch::Prefix(p) => subject.starts_with(p.as_str()),
            }
    }
}

/// A pinned digest; with components, a manual approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedDigest {
    pub digest: Digest,
    pub components: Vec<ComponentRef>,
    pub capabilities: Option<CapabilitySet>,
    pub approved_by: Option<String>,
    pub reason: Option<String>,
}

impl PinnedDigest {
    /// Whether the entry names components (is a manual approval).
    pub fn is_approval(&self) -> bool {
        !self.components.is_empty()
    }

    pub fn names(&self, namespace: &str, name: &str) -> bool {
        self.components
            .iter()
            .any(|c| c.namespace == namespace && c.name == name)
    }
}

/// A validated source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedSource {
    pub name: String,
    pub generation: Option<i64>,
    pub decision: Decision,
    pub registries: Vec<RepositoryGlob>,
    pub keys: Vec<NamedKey>,
    pub identities: Vec<Identity>,
    pub roots: Vec<CaCertificate>,
    pub digests: Vec<PinnedDigest>,
    pub namespace_selector: Option<LabelSelector>,
    pub ceiling: Option<CapabilitySet>,
    pub minimum_signatures: usize,
}

impl IndexedSource {
    /// Validates `spec` completely, including keys and certificates.
    pub fn parse(
        name: &str,
        generation: Option<i64>,
        spec: &TrustSourceSpec,
    ) -> Result<Self, SourceError> {
        spec.validate()?;
        let minimum = spec.minimum_signatures.unwrap_or(1);
        let mut keys: Vec<NamedKey> = Vec::with_capacity(spec.keys.len());
        for (index, k) in spec.keys.iter().enumerate() {
            if keys.iter().any(|seen| seen.name == k.name) {
                return Err(SourceError::DuplicateKey {
                    index,
                    name: k.name.clone(),
                });
            }
            let key = PublicKey::from_pem(&k.public_key).map_err(|source| SourceError::Key {
                index,
                name: k.name.clone(),
                source,
            })?;
            keys.push(NamedKey {
                name: k.name.clone(),
                key,
            });
        }
        let identities = spec
            .identities
            .iter()
            .enumerate()
            .map(|(i, id)| Identity::parse(i, id))
            .collect::<Result<_, _>>()?;
        let roots = spec
            .trust_root
            .iter()
            .flat_map(|r| r.certificate_authorities.iter())
            .enumerate()
            .map(|(index, ca)| {
                CaCertificate::from_pem(&ca.pem)
                    .map_err(|source| SourceError::Root { index, source })
            })
            .collect::<Result<_, _>>()?;
        let mut digests = Vec::with_capacity(spec.digests.len());
        for (index, entry) in spec.digests.iter().enumerate() {
            // validate() above parsed these; parse again to keep the values.
            let digest = Digest::parse(&entry.digest)
                .map_err(|source| SpecError::Digest { index, source })?;
            let capabilities = entry
                .capabilities
                .as_ref()
                .map(|c| {
                    CapabilitySet::parse(c).map_err(|source| SpecError::Approval { index, source })
                })
                .transpose()?;
            digests.push(PinnedDigest {
                digest,
                components: entry.components.clone(),
                capabilities,
                approved_by: entry.approved_by.clone(),
                reason: entry.reason.clone(),
            });
        }
        let registries = spec
            .registries
            .iter()
            .map(|r| RepositoryGlob::parse(&r.repository))
            .collect::<Result<_, _>>()
            .map_err(SpecError::from)?;
        let ceiling = spec
            .capability_ceiling
            .as_ref()
            .map(CapabilitySet::parse)
            .transpose()
            .map_err(SpecError::Ceiling)?;
        Ok(Self {
            name: name.to_owned(),
            generation,
            decision: spec.decision,
            registries,
            keys,
            identities,
            roots,
            digests,
            namespace_selector: spec.namespace_selector.clone(),
            ceiling,
            minimum_signatures: usize::try_from(minimum).unwrap_or(1).max(1),
        })
    }

    /// Whether the source vouches by signer.
    pub fn has_signers(&self) -> bool {
        !self.keys.is_empty() || !self.identities.is_empty()
    }

    /// The verified signers this source counts, as labels (`key release-key`,
    /// `identity https://...`). One signer counts once however many signatures it made.
    pub fn matching_signers(&self, signers: &[Signer]) -> Vec<String> {
        let labels: BTreeSet<String> = signers
            .iter()
            .filter_map(|signer| match signer {
                Signer::Key { fingerprint } => self
                    .keys
                    .iter()
                    .find(|k| k.key.fingerprint() == fingerprint)
                    .map(|k| format!("key {}", k.name)),
                Signer::Certificate {
                    issuer,
                    subject,
                    roots,
                } => {
                    let rooted = roots
                        .iter()
                        .any(|fp| self.roots.iter().any(|ca| ca.fingerprint() == fp));
                    (rooted && self.identities.iter().any(|id| id.matches(issuer, subject)))
                        .then(|| format!("identity {subject}"))
                }
            })
            .collect();
        labels.into_iter().collect()
    }
}

/// `namespace/name` of a component.
pub type ComponentKey = (String, String);

/// What [`TrustIndex::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The source is in use.
    Accepted,
    /// The source is ignored; any earlier version is gone.
    Rejected(SourceError),
    /// The update is ignored, and the earlier accepted version of this `Deny` source stays in
    /// force: a typo must not lift a denial.
    RejectedKeptDeny(SourceError),
}

impl Applied {
    /// The error to show as `Accepted=False`, if any.
    pub fn error(&self) -> Option<&SourceError> {
        match self {
            Self::Accepted => None,
            Self::Rejected(e) | Self::RejectedKeptDeny(e) => Some(e),
        }
    }

    /// The `Accepted` condition message.
    pub fn message(&self) -> String {
        match self {
            Self::Accepted => "source is valid and in use".to_owned(),
            Self::Rejected(e) => format!("{e}; the source is ignored until it is fixed"),
            Self::RejectedKeptDeny(e) => {
                format!(
                    "{e}; the previous version of this Deny source stays in force until it is fixed"
                )
            }
        }
    }
}

/// Accepted sources by name, and the last evaluation of each component.
#[derive(Debug, Default)]
pub struct TrustIndex {
    sources: BTreeMap<String, IndexedSource>,
    rejected: BTreeMap<String, SourceError>,
    components: BTreeMap<ComponentKey, (ComponentFacts, TrustDecision)>,
}

impl TrustIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses and stores a source (created or updated).
    pub fn apply(&mut self, source: &TrustSource) -> Applied {
        let name = source.metadata.name.clone().unwrap_or_default();
        self.apply_spec(&name, source.metadata.generation, &source.spec)
    }

    /// [`TrustIndex::apply`] on the parts.
    pub fn apply_spec(
        &mut self,
        name: &str,
        generation: Option<i64>,
        spec: &TrustSourceSpec,
    ) -> Applied {
        match IndexedSource::parse(name, generation, spec) {
            Ok(parsed) => {
                self.rejected.remove(name);
                self.sources.insert(name.to_owned(), parsed);
                Applied::Accepted
            }
            Err(err) => {
                self.rejected.insert(name.to_owned(), err.clone());
                if self
                    .sources
                    .get(name)
                    .is_some_and(|old| old.decision == Decision::Deny)
                {
                    Applied::RejectedKeptDeny(err)
                } else {
                    self.sources.remove(name);
                    Applied::Rejected(err)
                }
            }
        }
    }

    /// Forgets a deleted source.
    pub fn remove(&mut self, name: &str) -> Option<IndexedSource> {
        self.rejected.remove(name);
        self.sources.remove(name)
    }

    pub fn get(&self, name: &str) -> Option<&IndexedSource> {
        self.sources.get(name)
    }

    /// Why a source was rejected, if it was.
    pub fn rejection(&self, name: &str) -> Option<&SourceError> {
        self.rejected.get(name)
    }

    /// Every accepted source, by name.
    pub fn sources(&self) -> impl Iterator<Item = &IndexedSource> {
        self.sources.values()
    }

    /// Every key and CA of every accepted source, for [`crate::artifact::cosign::verify`].
    pub fn material(&self) -> (Vec<&PublicKey>, Vec<&CaCertificate>) {
        let keys = self
            .sources()
            .flat_map(|s| s.keys.iter().map(|k| &k.key))
            .collect();
        let roots = self.sources().flat_map(|s| s.roots.iter()).collect();
        (keys, roots)
    }

    /// Runs the decision against the current sources.
    pub fn decide(&self, facts: &ComponentFacts, dev_mode_enabled: bool) -> TrustDecision {
        decide(facts, self.sources(), dev_mode_enabled)
    }

    /// Remembers a component's last evaluation (facts and decision).
    pub fn record(&mut self, facts: ComponentFacts, decision: TrustDecision) {
        self.components.insert(
            (facts.namespace.clone(), facts.name.clone()),
            (facts, decision),
        );
    }

    /// Forgets a deleted component.
    pub fn forget(&mut self, namespace: &str, name: &str) {
        self.components
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Components whose decision differs under the current sources from the recorded one:
    /// the ones to re-queue after a source changed or was deleted.
    pub fn affected(&self, dev_mode_enabled: bool) -> Vec<ComponentKey> {
        self.components
            .iter()
            .filter(|(_, (facts, old))| &self.decide(facts, dev_mode_enabled) != old)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// How many recorded components a source currently decides for (`status.components`).
    pub fn covered_by(&self, source: &str) -> usize {
        self.components
            .values()
            .filter(|(_, d)| d.matched_sources.iter().any(|m| m == source))
            .count()
    }

    /// Check material for verification, borrowed for the call.
    pub fn with_material<R>(&self, f: impl FnOnce(TrustMaterial<'_>) -> R) -> R {
        let (keys, roots) = self.material();
        f(TrustMaterial {
            keys: &keys,
            roots: &roots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::keys::testkeys::{TestKey, indent_pem, trust_keys_yaml};
    use crate::trust::tests::{facts, spec};

    fn caps(yaml: &str) -> CapabilitySet {
        CapabilitySet::parse(&serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    #[test]
    fn the_examples_are_accepted() {
        for file in [
            "trustsource-approvals.yaml",
            "trustsource-deny.yaml",
            "trustsource-dev-mode.yaml",
            "trustsource-platform-registry.yaml",
            "trustsource-release-signers.yaml",
        ] {
            let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
            let source: TrustSource =
                serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let mut index = TrustIndex::new();
            assert_eq!(index.apply(&source), Applied::Accepted, "{file}");
        }
    }

    #[test]
    fn validation_spec() {
        let key = TestKey::p256().public_pem();
        let indent = indent_pem;
        let cases: Vec<(&str, String, &str)> = vec![
            ("bad registry pattern", "decision: Trust\nregistries: [{ repository: 'ghcr.io/ac*' }]".into(), "'*' and '**' must be whole segments"),
            (
                "bad ceiling",
                "decision: Trust\nregistries: [{ repository: 'ghcr.io/a/*' }]\ncapabilityCeiling: { filesystem: [{ path: /a/../b, access: [read] }] }".into(),
                "capabilityCeiling",
            ),
            ("bad digest", "decision: Trust\ndigests: [{ digest: 'sha256:abc' }]".into(), "digests[0]"),
            (
                "garbage key",
                "decision: Trust\nkeys:\n  - name: k\n    publicKey: |\n      -----BEGIN PUBLIC KEY-----\n      AAAA\n      -----END PUBLIC KEY-----".into(),
                "keys[0] (k): public key does not parse",
            ),
            (
                "duplicate key name",
                format!("decision: Trust\nkeys:\n  - name: k\n    publicKey: |\n{}\n  - name: k\n    publicKey: |\n{}", indent(&key), indent(&key)),
                "used twice",
            ),
            (
                "minimum above the signers",
                format!("decision: Trust\nminimumSignatures: 2\nkeys:\n  - name: k\n    publicKey: |\n{}", indent(&key)),
                "minimumSignatures is 2",
            ),
            ("matches nothing", "decision: Trust".into(), "must match something"),
            ("dev mode without selector", "decision: DevMode\nregistries: [{ repository: 'localhost:5000/**' }]".into(), "namespaceSelector"),
            (
                "deny with ceiling",
                "decision: Deny\nregistries: [{ repository: 'r.io/**' }]\ncapabilityCeiling: { env: [{ name: A }] }".into(),
                "no capabilityCeiling",
            ),
            (
                "identity without root",
                "decision: Trust\nidentities: [{ issuer: 'https://i', subject: 'me' }]".into(),
                "need a trustRoot",
            ),
            (
                "approval without capabilities",
                format!("decision: Trust\ndigests: [{{ digest: 'sha256:{}', components: [{{ namespace: a, name: b }}] }}]", "a".repeat(64)),
                "records no capabilities",
            ),
        ];
        for (rule, yaml, want) in cases {
            let mut index = TrustIndex::new();
            let applied = index.apply_spec("s", Some(1), &spec(&yaml));
            let msg = applied.message();
            assert!(matches!(applied, Applied::Rejected(_)), "{rule}: {msg}");
            assert!(msg.contains(want), "{rule}: {msg}");
            assert!(
                index.get("s").is_none(),
                "{rule}: rejected sources are ignored"
            );
            assert!(index.rejection("s").is_some(), "{rule}");
        }
    }

    #[test]
    fn a_bad_update_drops_a_trust_source_but_keeps_a_deny_source() {
        let mut index = TrustIndex::new();
        let good_trust = spec("decision: Trust\nregistries: [{ repository: 'r.io/a/**' }]");
        let good_deny = spec("decision: Deny\nregistries: [{ repository: 'r.io/bad/**' }]");
        let bad = spec("decision: Trust\nregistries: [{ repository: 'r.io/a*' }]");
        assert_eq!(
            index.apply_spec("t", Some(1), &good_trust),
            Applied::Accepted
        );
        assert_eq!(
            index.apply_spec("d", Some(1), &good_deny),
            Applied::Accepted
        );
        assert!(matches!(
            index.apply_spec("t", Some(2), &bad),
            Applied::Rejected(_)
        ));
        assert!(index.get("t").is_none(), "trust lapses (fail closed)");
        let kept = index.apply_spec("d", Some(2), &bad);
        assert!(matches!(kept, Applied::RejectedKeptDeny(_)), "{kept:?}");
        assert!(kept.message().contains("stays in force"));
        assert_eq!(
            index.get("d").map(|s| s.decision),
            Some(Decision::Deny),
            "deny stays"
        );
        assert_eq!(
            index.apply_spec("t", Some(3), &good_trust),
            Applied::Accepted,
            "fixing it restores it"
        );
        assert!(index.rejection("t").is_none());
        assert!(index.remove("d").is_some());
        assert!(index.get("d").is_none() && index.rejection("d").is_none());
    }

    #[test]
    fn signers_are_counted_per_source() {
        let a = TestKey::p256();
        let b = TestKey::ed25519();
        let yaml = trust_keys_yaml(None, &[("a", &a), ("b", &b)]);
        let source = IndexedSource::parse("s", None, &spec(&yaml)).unwrap();
        let fp = |k: &TestKey| {
            PublicKey::from_pem(&k.public_pem())
                .unwrap()
                .fingerprint()
                .to_owned()
        };
        let stranger = Signer::Key {
            fingerprint: fp(&TestKey::p256()),
        };
        let signers = vec![
            Signer::Key {
                fingerprint: fp(&a),
            },
            Signer::Key {
                fingerprint: fp(&b),
            },
            stranger,
        ];
        assert_eq!(source.matching_signers(&signers), vec!["key a", "key b"]);
        let cert = |issuer: &str, subject: &str, root: &str| Signer::Certificate {
            issuer: issuer.into(),
            subject: subject.into(),
            roots: vec![root.into()],
        };
        let id = Identity {
            issuer: "https://i".into(),
            subject: SubjectMatch::Prefix("https://git/x@refs/tags/".into()),
        };
        assert!(id.matches("https://i", "https://git/x@refs/tags/v1"));
        assert!(
            !id.matches("https://i", "https://git/x@refs/heads/main"),
            "prefix"
        );
        assert!(
            !id.matches("https://other", "https://git/x@refs/tags/v1"),
            "issuer is exact"
        );
        assert!(
            source
                .matching_signers(&[cert("https://i", "https://git/x@refs/tags/v1", "sha256:x")])
                .is_empty(),
            "no identities, no roots"
        );
    }

    #[test]
    fn affected_components_are_those_whose_decision_changes() {
        let mut index = TrustIndex::new();
        let platform = spec(
            "decision: Trust\nregistries: [{ repository: 'r.io/platform/**' }]\ncapabilityCeiling: { env: [{ name: LOG_LEVEL }] }",
        );
        index.apply_spec("platform", Some(1), &platform);
        let mut trusted = facts("ns", "echo");
        trusted.repository = Some("r.io/platform/echo".into());
        trusted.request = caps("env: [{ name: LOG_LEVEL }]");
        let mut other = facts("ns", "other");
        other.repository = Some("r.io/team/other".into());
        for f in [trusted.clone(), other.clone()] {
            let d = index.decide(&f, false);
            index.record(f, d);
        }
        assert!(index.affected(false).is_empty(), "nothing changed");
        assert_eq!(index.covered_by("platform"), 1);

        // A deny for the team repository changes only `other` (Pending -> Denied).
        index.apply_spec(
            "deny",
            Some(1),
            &spec("decision: Deny\nregistries: [{ repository: 'r.io/team/**' }]"),
        );
        assert_eq!(
            index.affected(false),
            vec![("ns".to_owned(), "other".to_owned())]
        );

        // Deleting the platform source changes `echo` (Trusted -> Pending) as well.
        index.remove("platform");
        assert_eq!(index.affected(false).len(), 2);
        index.forget("ns", "echo");
        assert_eq!(
            index.affected(false),
            vec![("ns".to_owned(), "other".to_owned())]
        );
    }
}
