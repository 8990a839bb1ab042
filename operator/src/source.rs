//! The pure model of an accepted `TrustSource`: [`IndexedSource`] with its pinned digests,
//! keys and certificate identities, parsed and validated once (globs, capability sets, digests
//! and the cryptographic material), so the decision in [`crate::trust`] only ever sees
//! well-formed sources. The index ([`crate::index`]) stores them; the decision reads them.

use std::collections::BTreeSet;

use airssys_crds::Digest;
use airssys_crds::capability::CapabilitySet;
use airssys_crds::trust_source::{
    CertificateIdentity, ComponentRef, Decision, LabelSelector, RepositoryGlob,
    SourceError as SpecError, TrustSourceSpec,
};

use crate::artifact::{CaCertificate, KeyError, PublicKey, Signer};

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
            (None, Some(p)) if p.ends_with('/') => SubjectMatch::Prefix(p.clone()),
            (None, Some(_)) => {
                return Err(SourceError::Spec(SpecError::SubjectPrefixBoundary {
                    index,
                }));
            }
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

    /// Whether a certificate for `subject` from `issuer` is this signer. The issuer is exact;
    /// the subject is exact, or continues the prefix on a `/` boundary (the prefix ends with
    /// `/`, which validation requires, or the subject continues with `/`), never into a longer
    /// name (`.../acme/repo` does not admit `.../acme/repo-evil`), and never back out of it
    /// with a `..` segment.
    pub fn matches(&self, issuer: &str, subject: &str) -> bool {
        issuer == self.issuer
            && match &self.subject {
                SubjectMatch::Exact(s) => subject == s,
                SubjectMatch::Prefix(p) => subject.strip_prefix(p.as_str()).is_some_and(|rest| {
                    let on_boundary = p.ends_with('/') || rest.is_empty() || rest.starts_with('/');
                    on_boundary && !rest.split('/').any(|seg| seg == "..")
                }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::keys::testkeys::{TestKey, trust_keys_yaml};
    use crate::trust::tests::spec;

    #[test]
    fn identity_spec() {
        let prefix = |p: &str| Identity {
            issuer: "https://i".into(),
            subject: SubjectMatch::Prefix(p.into()),
        };
        let exact = Identity {
            issuer: "https://i".into(),
            subject: SubjectMatch::Exact("https://git/acme/repo".into()),
        };
        let repo = prefix("https://git/acme/repo/");
        let unbounded = prefix("https://git/acme/repo");
        let rows: &[(&str, &Identity, &str, &str, bool)] = &[
            (
                "exact matches itself",
                &exact,
                "https://i",
                "https://git/acme/repo",
                true,
            ),
            (
                "exact is not a prefix",
                &exact,
                "https://i",
                "https://git/acme/repo/x",
                false,
            ),
            (
                "prefix admits a path below it",
                &repo,
                "https://i",
                "https://git/acme/repo/.ci/release.yml@refs/tags/v1",
                true,
            ),
            (
                "prefix does not admit a longer name",
                &repo,
                "https://i",
                "https://git/acme/repo-evil/x",
                false,
            ),
            (
                "prefix does not admit a parent",
                &repo,
                "https://i",
                "https://git/acme/",
                false,
            ),
            (
                "prefix does not admit climbing out",
                &repo,
                "https://i",
                "https://git/acme/repo/../repo-evil/x",
                false,
            ),
            (
                "issuer is exact",
                &repo,
                "https://other",
                "https://git/acme/repo/x",
                false,
            ),
            // Sources indexed before the rule existed, or built in code: still only boundaries.
            (
                "an unbounded prefix stops at a boundary",
                &unbounded,
                "https://i",
                "https://git/acme/repo-evil/x",
                false,
            ),
            (
                "an unbounded prefix admits its own path",
                &unbounded,
                "https://i",
                "https://git/acme/repo/x",
                true,
            ),
            (
                "an unbounded prefix admits itself",
                &unbounded,
                "https://i",
                "https://git/acme/repo",
                true,
            ),
        ];
        for (rule, id, issuer, subject, want) in rows {
            assert_eq!(id.matches(issuer, subject), *want, "{rule}");
        }
    }

    #[test]
    fn a_prefix_off_a_boundary_is_rejected() {
        let yaml = "decision: Trust\nidentities: [{ issuer: i, subjectPrefix: 'https://git/acme/repo' }]\ntrustRoot: { certificateAuthorities: [{ pem: '-----BEGIN CERTIFICATE-----' }] }";
        let err = IndexedSource::parse("s", None, &spec(yaml)).unwrap_err();
        assert!(err.to_string().contains("must end with '/'"), "{err}");
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
        let cert = Signer::Certificate {
            issuer: "https://i".into(),
            subject: "https://git/x@refs/tags/v1".into(),
            roots: vec!["sha256:x".into()],
        };
        assert!(
            source.matching_signers(&[cert]).is_empty(),
            "no identities, no roots"
        );
    }
}
