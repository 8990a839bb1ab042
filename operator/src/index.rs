//! The in-memory `TrustSource` index the trust-source controller keeps.
//!
//! Sources are parsed once ([`crate::source`]) when they are applied, so a bad source shows up
//! as `Accepted=False` with the reason. The index also remembers, per component, the facts and
//! decision of its last evaluation, so a source change can name exactly the components whose
//! decision it changes, and a component whose registry is unreachable is decided on the facts
//! last resolved.

use std::collections::BTreeMap;

use airssys_crds::TrustSource;
use airssys_crds::trust_source::{Decision, TrustSourceSpec};

use crate::artifact::cosign::TrustMaterial;
use crate::artifact::{CaCertificate, PublicKey};
use crate::source::{IndexedSource, SourceError};
use crate::trust::{ComponentFacts, Policy, TrustDecision, decide};

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
    pub fn decide(&self, facts: &ComponentFacts, policy: Policy) -> TrustDecision {
        decide(facts, self.sources(), policy)
    }

    /// The facts of a component's last evaluation (what its artifact last resolved to).
    pub fn last_facts(&self, namespace: &str, name: &str) -> Option<&ComponentFacts> {
        self.components
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|(facts, _)| facts)
    }

    /// Remembers a component's last evaluation (facts and decision); returns the decision it
    /// replaces, so the caller can tell which sources' coverage changed.
    pub fn record(
        &mut self,
        facts: ComponentFacts,
        decision: TrustDecision,
    ) -> Option<TrustDecision> {
        self.components
            .insert(
                (facts.namespace.clone(), facts.name.clone()),
                (facts, decision),
            )
            .map(|(_, old)| old)
    }

    /// Forgets a deleted component; returns its last decision.
    pub fn forget(&mut self, namespace: &str, name: &str) -> Option<TrustDecision> {
        self.components
            .remove(&(namespace.to_owned(), name.to_owned()))
            .map(|(_, old)| old)
    }

    /// Components whose decision differs under the current sources from the recorded one:
    /// the ones to re-queue after a source changed or was deleted.
    pub fn affected(&self, policy: Policy) -> Vec<ComponentKey> {
        self.components
            .iter()
            .filter(|(_, (facts, old))| &self.decide(facts, policy) != old)
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
    use airssys_crds::capability::CapabilitySet;

    use super::*;
    use crate::artifact::keys::testkeys::{TestKey, indent_pem};
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
            let d = index.decide(&f, Policy::default());
            index.record(f, d);
        }
        assert!(
            index.affected(Policy::default()).is_empty(),
            "nothing changed"
        );
        assert_eq!(index.covered_by("platform"), 1);

        // A deny for the team repository changes only `other` (Pending -> Denied).
        index.apply_spec(
            "deny",
            Some(1),
            &spec("decision: Deny\nregistries: [{ repository: 'r.io/team/**' }]"),
        );
        assert_eq!(
            index.affected(Policy::default()),
            vec![("ns".to_owned(), "other".to_owned())]
        );

        // Deleting the platform source changes `echo` (Trusted -> Pending) as well.
        index.remove("platform");
        assert_eq!(index.affected(Policy::default()).len(), 2);
        index.forget("ns", "echo");
        assert_eq!(
            index.affected(Policy::default()),
            vec![("ns".to_owned(), "other".to_owned())]
        );
    }
}
